//! The node's witness client task: keeps a connection to the witness, asks for, renews and
//! releases leases as the owner wants them, and publishes until when each may be relied on.
//!
//! ```text
//!  owner ── want(r, bool) ──▶ ┌──────────── driver task ─────────────┐ ── watch: Option<Instant> ──▶ owner,
//!                             │ LeaseClient (sans-IO) ⇄ Session ⇄ TCP │    replication core (ack gate)
//!                             └───────────────────────────────────────┘
//!  dial (timeout) ─ fail ─▶ back off 0.2 s … min(5 s, retry interval); a wrong secret is logged once, then counted at debug
//!  a request unanswered for `request_timeout` ─▶ the connection is dropped and dialled again
//! ```
//!
//! The published value is the lease's end on this host's monotonic clock. Readers must compare
//! it with `Instant::now()` at the moment they rely on it ([`WitnessClient::lease_until`] does):
//! a task that was frozen past the end sees no lease, whatever was published before.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::frame::{read_frame, write_frame};
use crate::witness::auth::{AuthError, Incoming, Role, Session};
use crate::witness::client::{ClientConfig, Event, LeaseClient, LostReason};
use crate::witness::wire::Repr;

/// A client that wants no lease pings this often, so that the witness keeps the connection.
pub const PING_INTERVAL: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Settings of the client task.
#[derive(Debug, Clone)]
pub struct WitnessClientConfig {
    /// The witness, `HOST:PORT` (resolved at every dial).
    pub address: String,
    /// The authentication key ([`crate::witness::auth::auth_key`] of the shared secret).
    pub key: [u8; 32],
    /// Node name, TTL, margin and intervals.
    pub lease: ClientConfig,
    /// The resources whose leases this node may want.
    pub resources: Vec<String>,
    /// Time allowed to connect and authenticate.
    pub connect_timeout: Duration,
    /// A request unanswered for this long means the connection is dead (`N` in the timing
    /// argument of [`crate::witness`]).
    pub request_timeout: Duration,
}

impl WitnessClientConfig {
    /// Defaults: connect within 1 s, requests answered within max(ttl/6, 100 ms).
    #[must_use]
    pub fn new(address: impl Into<String>, key: [u8; 32], lease: ClientConfig, resources: Vec<String>) -> Self {
        let request_timeout = (lease.ttl / 6).max(Duration::from_millis(100));
        WitnessClientConfig {
            address: address.into(),
            key,
            lease,
            resources,
            connect_timeout: Duration::from_secs(1),
            request_timeout,
        }
    }
}

#[derive(Debug)]
enum Cmd {
    Want(String, bool),
    Shutdown(oneshot::Sender<()>),
}

/// The owner's handle on the client task. Dropping every handle stops the task (the witness's
/// leases then run out by themselves).
#[derive(Debug, Clone)]
pub struct WitnessClient {
    cmds: mpsc::UnboundedSender<Cmd>,
    leases: BTreeMap<String, watch::Receiver<Option<Instant>>>,
    refused: BTreeMap<String, watch::Receiver<Option<String>>>,
    connected: watch::Receiver<bool>,
}

impl WitnessClient {
    /// The handle and the driver future (spawn it, or poll it yourself: tests freeze a client by
    /// not polling it).
    pub fn new(cfg: WitnessClientConfig) -> (WitnessClient, impl Future<Output = ()> + Send + 'static) {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (conn_tx, conn_rx) = watch::channel(false);
        let mut pubs = BTreeMap::new();
        let mut leases = BTreeMap::new();
        let mut refused = BTreeMap::new();
        for r in &cfg.resources {
            let (tx, rx) = watch::channel(None);
            let (rtx, rrx) = watch::channel(None);
            pubs.insert(r.clone(), (tx, rtx));
            leases.insert(r.clone(), rx);
            refused.insert(r.clone(), rrx);
        }
        let handle = WitnessClient { cmds: cmd_tx, leases, refused, connected: conn_rx };
        (handle, drive(cfg, cmd_rx, pubs, conn_tx))
    }

    /// Starts the task on the current runtime.
    #[must_use]
    pub fn spawn(cfg: WitnessClientConfig) -> WitnessClient {
        let (h, f) = WitnessClient::new(cfg);
        tokio::spawn(f);
        h
    }

    /// Start (`true`) or stop wanting the lease on `resource`. Stopping drops it at once and
    /// releases it at the witness.
    pub fn want(&self, resource: &str, want: bool) {
        let _ = self.cmds.send(Cmd::Want(resource.to_owned(), want));
    }

    /// Until when the lease on `resource` may be relied on, now; `None` if not held (or not a
    /// configured resource).
    #[must_use]
    pub fn lease_until(&self, resource: &str) -> Option<Instant> {
        let until = (*self.leases.get(resource)?.borrow())?;
        (until > Instant::now()).then_some(until)
    }

    /// The published end of the lease on `resource` (compare with the clock when you use it).
    #[must_use]
    pub fn subscribe(&self, resource: &str) -> Option<watch::Receiver<Option<Instant>>> {
        self.leases.get(resource).cloned()
    }

    /// The node the witness named when it last refused `resource` to us (cleared when we get it
    /// or stop wanting it). For a fence (see [`crate::witness::server::FENCE_SUFFIX`]): the
    /// node that may have writes we lack.
    #[must_use]
    pub fn refused_by(&self, resource: &str) -> Option<String> {
        self.refused.get(resource)?.borrow().clone()
    }

    /// Every change of [`WitnessClient::refused_by`] for `resource`.
    #[must_use]
    pub fn subscribe_refused(&self, resource: &str) -> Option<watch::Receiver<Option<String>>> {
        self.refused.get(resource).cloned()
    }

    /// Whether an authenticated connection to the witness is up.
    #[must_use]
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Releases every lease, closes the connection and ends the task.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmds.send(Cmd::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Conn {
    peer: SocketAddr,
    session: Session,
    write: OwnedWriteHalf,
    frames: mpsc::Receiver<io::Result<Option<Vec<u8>>>>,
    reader: JoinHandle<()>,
    /// Since when something (the handshake, a request, a ping) has waited for an answer.
    awaiting_since: Option<Instant>,
    outstanding: usize,
    last_sent: Instant,
    next_ping: u64,
    /// Frames sealed but not yet written (sealing fixes their position in the session).
    pending: Vec<Vec<u8>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn dial(cfg: &WitnessClientConfig) -> io::Result<Conn> {
    let stream = tokio::time::timeout(cfg.connect_timeout, TcpStream::connect(cfg.address.as_str()))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr()?;
    let (mut read, mut write) = stream.into_split();
    let session = Session::new(Role::Client, cfg.key, super::challenge());
    write_frame(&mut write, &session.hello(), cfg.connect_timeout).await?;
    let (tx, frames) = mpsc::channel(16);
    let reader = tokio::spawn(async move {
        loop {
            let r = read_frame(&mut read, PING_INTERVAL * 3).await;
            let end = !matches!(r, Ok(Some(_)));
            if tx.send(r).await.is_err() || end {
                return;
            }
        }
    });
    let now = Instant::now();
    Ok(Conn {
        peer,
        session,
        write,
        frames,
        reader,
        awaiting_since: Some(now),
        outstanding: 0,
        last_sent: now,
        next_ping: 1,
        pending: Vec::new(),
    })
}

async fn next_frame(conn: &mut Option<Conn>) -> Option<io::Result<Option<Vec<u8>>>> {
    match conn {
        Some(c) => c.frames.recv().await,
        None => std::future::pending().await,
    }
}

/// Per resource: the lease's end, and who the witness last named in a refusal.
type Pubs = BTreeMap<String, (watch::Sender<Option<Instant>>, watch::Sender<Option<String>>)>;

struct Driver {
    cfg: WitnessClientConfig,
    core: LeaseClient,
    conn: Option<Conn>,
    pubs: Pubs,
    connected: watch::Sender<bool>,
    next_dial: Instant,
    backoff: Duration,
    auth_failures: u64,
    refused_by: BTreeMap<String, Option<String>>,
}

async fn drive(
    cfg: WitnessClientConfig,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    pubs: Pubs,
    connected: watch::Sender<bool>,
) {
    let core = LeaseClient::new(cfg.lease.clone());
    let mut d = Driver {
        cfg,
        core,
        conn: None,
        pubs,
        connected,
        next_dial: Instant::now(),
        backoff: BACKOFF_MIN,
        auth_failures: 0,
        refused_by: BTreeMap::new(),
    };
    loop {
        let now = Instant::now();
        if d.conn.is_none() && now >= d.next_dial {
            match dial(&d.cfg).await {
                Ok(c) => {
                    debug!(witness = %c.peer, "witness: connected, authenticating");
                    d.conn = Some(c);
                }
                Err(e) => d.failed(&format!("cannot reach the witness at {}: {e}", d.cfg.address), false),
            }
        }
        let deadline = d.deadline();
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::Want(r, w)) => {
                    if d.pubs.contains_key(&r) {
                        d.core.want(Instant::now(), &r, w);
                    } else {
                        warn!(resource = %r, "witness: not a configured resource; ignored");
                    }
                }
                Some(Cmd::Shutdown(done)) => {
                    let now = Instant::now();
                    for r in d.pubs.keys().cloned().collect::<Vec<_>>() {
                        d.core.want(now, &r, false);
                    }
                    d.flush().await;
                    d.publish();
                    let _ = done.send(());
                    return;
                }
                None => return,
            },
            f = next_frame(&mut d.conn) => d.frame(f).await,
            () = sleep_until(deadline) => {}
        }
        d.tick();
        d.flush().await;
        d.events();
        d.publish();
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn deadline(&self) -> Option<Instant> {
        let conn = match &self.conn {
            None => Some(self.next_dial),
            Some(c) => {
                let answer = c.awaiting_since.map(|t| t + self.timeout_for(c));
                let ping = c.session.is_established().then_some(c.last_sent + PING_INTERVAL);
                [answer, ping].into_iter().flatten().min()
            }
        };
        [self.core.poll_timeout(), conn].into_iter().flatten().min()
    }

    fn timeout_for(&self, c: &Conn) -> Duration {
        if c.session.is_established() {
            self.cfg.request_timeout
        } else {
            self.cfg.connect_timeout
        }
    }

    /// Timers: the core's, the answer deadline, the keepalive.
    fn tick(&mut self) {
        let now = Instant::now();
        self.core.handle_timeout(now);
        let Some(c) = &mut self.conn else { return };
        if let Some(since) = c.awaiting_since {
            let limit = if c.session.is_established() { self.cfg.request_timeout } else { self.cfg.connect_timeout };
            if now >= since + limit {
                let what = if c.session.is_established() { "answered nothing" } else { "did not authenticate" };
                let msg = format!("the witness at {} {what} for {limit:?}; reconnecting", c.peer);
                self.failed(&msg, false);
                return;
            }
        }
        if c.session.is_established() && c.outstanding == 0 && now >= c.last_sent + PING_INTERVAL {
            let seq = c.next_ping;
            c.next_ping += 1;
            self.send_now(Repr::Ping { seq });
        }
    }

    fn send_now(&mut self, m: Repr) {
        // Written by flush().
        if let Some(c) = &mut self.conn {
            if let Ok(v) = c.session.seal(&m) {
                c.outstanding += 1;
                c.awaiting_since.get_or_insert(Instant::now());
                c.last_sent = Instant::now();
                c.pending.push(v);
            }
        }
    }

    /// Sends what the core queued (and any ping). A write error drops the connection.
    async fn flush(&mut self) {
        while let Some(m) = self.core.poll_transmit() {
            if self.conn.as_ref().is_some_and(|c| c.session.is_established()) {
                self.send_now(m);
            }
        }
        let Some(c) = &mut self.conn else { return };
        for f in std::mem::take(&mut c.pending) {
            if let Err(e) = write_frame(&mut c.write, &f, self.cfg.request_timeout).await {
                let msg = format!("lost the connection to the witness at {}: {e}", c.peer);
                self.failed(&msg, false);
                return;
            }
        }
    }

    async fn frame(&mut self, f: Option<io::Result<Option<Vec<u8>>>>) {
        let now = Instant::now();
        let Some(c) = &mut self.conn else { return };
        let frame = match f {
            Some(Ok(Some(f))) => f,
            Some(Ok(None)) | None => {
                let msg = format!("the witness at {} closed the connection", c.peer);
                self.failed(&msg, false);
                return;
            }
            Some(Err(e)) => {
                let msg = format!("lost the connection to the witness at {}: {e}", c.peer);
                self.failed(&msg, false);
                return;
            }
        };
        match c.session.receive(&frame) {
            Ok(Incoming::Send(v)) => c.pending.push(v),
            Ok(Incoming::Established) => {
                c.awaiting_since = None;
                c.outstanding = 0;
                if self.auth_failures > 0 {
                    info!(witness = %c.peer, after = self.auth_failures, "witness: authenticated after failures");
                } else {
                    info!(witness = %c.peer, "witness: connected");
                }
                self.auth_failures = 0;
                self.backoff = BACKOFF_MIN;
                self.connected.send_replace(true);
                self.core.handle_connected(now);
            }
            Ok(Incoming::Message(m)) => {
                c.outstanding = c.outstanding.saturating_sub(1);
                c.awaiting_since = (c.outstanding > 0).then_some(now);
                match m {
                    Repr::Pong { .. } => {}
                    Repr::Granted { .. } | Repr::Refused { .. } | Repr::Released { .. } => {
                        self.core.handle_reply(now, &m);
                    }
                    other => {
                        let msg =
                            format!("the witness at {} sent an unexpected {:?} frame", c.peer, other.frame_type());
                        self.failed(&msg, false);
                    }
                }
            }
            Err(AuthError::BadMac) => {
                let msg = format!(
                    "the witness at {} failed authentication: the shared secrets differ (check the witness secret file on both hosts)",
                    c.peer
                );
                self.failed(&msg, true);
            }
            Err(e) => {
                let msg = format!("the witness at {}: {e}", c.peer);
                self.failed(&msg, false);
            }
        }
    }

    /// Drops the connection and schedules the next dial with backoff. The first failure of a
    /// kind is a warning, repeats are at debug level.
    fn failed(&mut self, msg: &str, auth: bool) {
        let now = Instant::now();
        let was_connected = self.conn.as_ref().is_some_and(|c| c.session.is_established());
        self.conn = None;
        self.core.handle_disconnected(now);
        self.connected.send_replace(false);
        if auth {
            self.auth_failures += 1;
        }
        if was_connected || (auth && self.auth_failures == 1) || (!auth && self.backoff == BACKOFF_MIN) {
            warn!("witness: {msg}");
        } else {
            debug!(failures = self.auth_failures, "witness: {msg}");
        }
        self.next_dial = now + self.backoff;
        // Never slower than the lease's retry interval: a restarted witness gives the holders
        // of leases and fences one ttl (its start-up grace) to renew them back.
        let max = BACKOFF_MAX.min(self.cfg.lease.retry_interval).max(BACKOFF_MIN);
        self.backoff = (self.backoff * 2).min(max);
    }

    fn events(&mut self) {
        while let Some(e) = self.core.poll_event() {
            match e {
                Event::Acquired { resource, until } => {
                    self.refused_by.remove(&resource);
                    if let Some((_, r)) = self.pubs.get(&resource) {
                        r.send_replace(None);
                    }
                    info!(%resource, valid_for = ?until.saturating_duration_since(Instant::now()), "witness: lease acquired");
                }
                Event::Lost { resource, reason: LostReason::Released } => {
                    if let Some((_, r)) = self.pubs.get(&resource) {
                        r.send_replace(None);
                    }
                    info!(%resource, "witness: lease released");
                }
                Event::Lost { resource, reason } => warn!(%resource, ?reason, "witness: lease lost"),
                Event::Refused { resource, reason, holder, remaining } => {
                    if let Some((_, r)) = self.pubs.get(&resource) {
                        r.send_replace(holder.clone());
                    }
                    if self.refused_by.get(&resource) != Some(&holder) {
                        info!(%resource, %reason, holder = holder.as_deref().unwrap_or(""), ?remaining, "witness: lease refused");
                        self.refused_by.insert(resource, holder);
                    } else {
                        debug!(%resource, %reason, ?remaining, "witness: lease refused again");
                    }
                }
            }
        }
    }

    fn publish(&self) {
        let now = Instant::now();
        for (r, (tx, _)) in &self.pubs {
            let v = self.core.lease_until(now, r);
            tx.send_if_modified(|old| {
                let changed = *old != v;
                *old = v;
                changed
            });
        }
    }
}
