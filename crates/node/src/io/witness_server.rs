//! The witness server: the [`LeaseServer`] table behind a TCP listener.
//!
//! ```text
//!  accept ──ok──▶ task per connection: Hello ⇄ Hello, Auth ⇄ Auth (≤ handshake timeout)
//!    │                 └─ requests ──▶ table (one lock, the witness's Instant::now()) ──▶ replies
//!    │                    (a connection silent for idle_timeout is closed)
//!    └─err──▶ warn once per burst, back off, accept again (no spin on EMFILE)
//! ```
//!
//! Metrics (into the registry given to [`WitnessServer::new`]):
//!
//! | family | type | labels |
//! |---|---|---|
//! | `rempart_witness_leases_held` | gauge (at scrape time) | |
//! | `rempart_witness_lease_remaining_seconds` | gauge (at scrape time) | `resource`, `holder` |
//! | `rempart_witness_grants_total` | counter | `resource` |
//! | `rempart_witness_refusals_total` | counter | `resource`, `reason` |
//! | `rempart_witness_releases_total` | counter | `resource` |
//! | `rempart_witness_auth_failures_total` | counter | |
//! | `rempart_witness_connections` | gauge | |

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::frame::{read_frame, write_frame};
use crate::witness::auth::{AuthError, Incoming, Role, Session};
use crate::witness::server::{Decision, LeaseServer, ServerConfig};
use crate::witness::wire::{RefuseReason, Repr, RequestKind};

/// How long the accept loop waits after an accept error (e.g. `EMFILE`).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Settings of the witness server.
#[derive(Debug, Clone)]
pub struct WitnessServerConfig {
    /// The lease table's settings (longest TTL, start-up grace).
    pub leases: ServerConfig,
    /// The authentication key ([`crate::witness::auth::auth_key`] of the shared secret).
    pub key: [u8; 32],
    /// Time allowed for the handshake.
    pub handshake_timeout: Duration,
    /// An authenticated connection silent for this long is closed (clients ping every
    /// [`super::witness_client::PING_INTERVAL`] when they want nothing).
    pub idle_timeout: Duration,
    /// Time allowed to send one reply.
    pub write_timeout: Duration,
}

impl WitnessServerConfig {
    /// Defaults: handshake 5 s, idle 30 s (or 3 × max TTL if longer), write 5 s.
    #[must_use]
    pub fn new(leases: ServerConfig, key: [u8; 32]) -> WitnessServerConfig {
        let idle_timeout = (leases.max_ttl * 3).max(Duration::from_secs(30));
        WitnessServerConfig {
            leases,
            key,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout,
            write_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct ResourceLabel {
    resource: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct RefusalLabels {
    resource: String,
    reason: String,
}

#[derive(Debug, Default)]
struct Metrics {
    grants: Family<ResourceLabel, Counter>,
    refusals: Family<RefusalLabels, Counter>,
    releases: Family<ResourceLabel, Counter>,
    auth_failures: AtomicU64,
    connections: AtomicI64,
}

/// A client that keeps failing authentication is named in a warning at most this often.
pub const AUTH_WARN_EVERY: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Shared {
    cfg: WitnessServerConfig,
    table: Mutex<LeaseServer>,
    metrics: Metrics,
    /// When each address was last warned about a failed authentication.
    warned: Mutex<HashMap<IpAddr, Instant>>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, LeaseServer> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters (every update is one insert or remove): keep serving.
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a failed authentication; true when it should be logged as a warning (the first
    /// from this address, or the first for [`AUTH_WARN_EVERY`]).
    fn auth_failed(&self, peer: IpAddr) -> bool {
        self.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut w = self.warned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        w.retain(|_, t| now.duration_since(*t) < AUTH_WARN_EVERY);
        match w.entry(peer) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
                true
            }
        }
    }
}

#[derive(Debug)]
struct WitnessCollector(Arc<Shared>);

impl Collector for WitnessCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let now = Instant::now();
        let (held, rows) = {
            let t = self.0.table();
            let rows: Vec<(String, String, f64)> =
                t.leases(now).map(|(r, l)| (r.to_owned(), l.holder.clone(), (l.expires - now).as_secs_f64())).collect();
            (rows.len(), rows)
        };
        let m = enc.encode_descriptor("rempart_witness_leases_held", "Live leases.", None, MetricType::Gauge)?;
        ConstGauge::new(i64::try_from(held).unwrap_or(i64::MAX)).encode(m)?;
        let mut m = enc.encode_descriptor(
            "rempart_witness_lease_remaining_seconds",
            "Time left on each live lease.",
            None,
            MetricType::Gauge,
        )?;
        for (resource, holder, left) in rows {
            let labels = vec![("resource".to_owned(), resource), ("holder".to_owned(), holder)];
            ConstGauge::new(left).encode(m.encode_family(&labels)?)?;
        }
        // Counters are named without `_total`: the encoder adds it to the sample.
        let m = enc.encode_descriptor(
            "rempart_witness_auth_failures",
            "Connections refused because the peer did not know the shared secret.",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(self.0.metrics.auth_failures.load(Ordering::Relaxed)).encode(m)?;
        let m = enc.encode_descriptor(
            "rempart_witness_connections",
            "Open authenticated connections.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.0.metrics.connections.load(Ordering::Relaxed)).encode(m)?;
        Ok(())
    }
}

/// The witness: a lease table and its metrics, served on any number of listeners.
#[derive(Debug, Clone)]
pub struct WitnessServer {
    shared: Arc<Shared>,
}

impl WitnessServer {
    /// A witness whose table starts now (its start-up grace runs from here), with its metric
    /// families registered into `registry`.
    pub fn new(cfg: WitnessServerConfig, registry: &mut Registry) -> WitnessServer {
        let table = Mutex::new(LeaseServer::new(Instant::now(), cfg.leases.clone()));
        let shared = Arc::new(Shared { cfg, table, metrics: Metrics::default(), warned: Mutex::default() });
        let m = &shared.metrics;
        registry.register("rempart_witness_grants", "Leases granted or renewed", m.grants.clone());
        registry.register("rempart_witness_refusals", "Lease requests refused", m.refusals.clone());
        registry.register("rempart_witness_releases", "Leases released by their holder", m.releases.clone());
        registry.register_collector(Box::new(WitnessCollector(shared.clone())));
        WitnessServer { shared }
    }

    /// How many leases are live now.
    #[must_use]
    pub fn leases_held(&self) -> usize {
        self.shared.table().leases_held(Instant::now())
    }

    /// The holder of `resource`'s live lease, if any.
    #[must_use]
    pub fn holder(&self, resource: &str) -> Option<String> {
        self.shared.table().lease(Instant::now(), resource).map(|l| l.holder.clone())
    }

    /// Accepts connections on `listener` until the future is dropped (spawn it; abort the task
    /// to stop). Accept errors are logged once per burst and followed by [`ACCEPT_BACKOFF`].
    pub async fn serve(&self, listener: TcpListener) {
        let mut failing = false;
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    failing = false;
                    let shared = self.shared.clone();
                    tokio::spawn(async move { connection(shared, stream, peer).await });
                }
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "witness: accept failed; retrying every {ACCEPT_BACKOFF:?}");
                    }
                    failing = true;
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }
}

struct ConnGuard<'a>(&'a Metrics, bool);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

async fn connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let cfg = &shared.cfg;
    let mut session = Session::new(Role::Server, cfg.key, super::challenge());
    let mut guard = ConnGuard(&shared.metrics, false);
    if let Err(e) = write_frame(&mut stream, &session.hello(), cfg.write_timeout).await {
        debug!(%peer, error = %e, "witness: connection lost before the handshake");
        return;
    }
    loop {
        let timeout = if session.is_established() { cfg.idle_timeout } else { cfg.handshake_timeout };
        let frame = match read_frame(&mut stream, timeout).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                debug!(%peer, "witness: connection closed by the peer");
                return;
            }
            Err(e) => {
                debug!(%peer, error = %e, "witness: closing the connection");
                return;
            }
        };
        let out = match session.receive(&frame) {
            Ok(Incoming::Send(v)) => v,
            Ok(Incoming::Established) => {
                shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
                guard.1 = true;
                debug!(%peer, "witness: client authenticated");
                continue;
            }
            Ok(Incoming::Message(Repr::Ping { seq })) => match session.seal(&Repr::Pong { seq }) {
                Ok(v) => v,
                Err(_) => return,
            },
            Ok(Incoming::Message(req)) => {
                let Some(reply) = decide(&shared, peer, &req) else {
                    warn!(%peer, frame = ?req.frame_type(), "witness: unexpected frame from a client; closing");
                    return;
                };
                match session.seal(&reply) {
                    Ok(v) => v,
                    Err(_) => return,
                }
            }
            Err(AuthError::BadMac) => {
                if shared.auth_failed(peer.ip()) {
                    warn!(
                        %peer,
                        "witness: refused a client that does not know the shared secret (the secret files \
                         differ); repeats from this address are counted in rempart_witness_auth_failures_total"
                    );
                } else {
                    debug!(%peer, "witness: authentication failed again");
                }
                return;
            }
            Err(e) => {
                if !session.is_established() {
                    let _ = shared.auth_failed(peer.ip());
                }
                warn!(%peer, error = %e, "witness: closing the connection");
                return;
            }
        };
        if let Err(e) = write_frame(&mut stream, &out, cfg.write_timeout).await {
            debug!(%peer, error = %e, "witness: could not answer; closing");
            return;
        }
    }
}

fn decide(shared: &Shared, peer: SocketAddr, req: &Repr) -> Option<Repr> {
    let Repr::Request { kind, resource, node, .. } = req else { return None };
    let (d, reply) = shared.table().answer(Instant::now(), req)?;
    let m = &shared.metrics;
    let label = ResourceLabel { resource: resource.clone() };
    match &d {
        Decision::Granted { ttl, new } => {
            m.grants.get_or_create(&label).inc();
            if *new {
                info!(%peer, %resource, %node, ?ttl, "witness: lease granted");
            } else {
                debug!(%peer, %resource, %node, ?ttl, "witness: lease renewed");
            }
        }
        Decision::Refused { reason, holder, remaining } => {
            let reason_label = match reason {
                RefuseReason::Held => "held",
                RefuseReason::Starting => "starting",
                RefuseReason::BadRequest => "bad_request",
                RefuseReason::Unknown(_) => "other",
            };
            m.refusals.get_or_create(&RefusalLabels { resource: resource.clone(), reason: reason_label.into() }).inc();
            let level_info = *kind == RequestKind::Acquire;
            if level_info {
                info!(%peer, %resource, %node, holder = holder.as_deref().unwrap_or(""), ?remaining, %reason, "witness: lease refused");
            } else {
                debug!(%peer, %resource, %node, holder = holder.as_deref().unwrap_or(""), ?remaining, %reason, "witness: lease refused");
            }
        }
        Decision::Released { was_holder } => {
            if *was_holder {
                m.releases.get_or_create(&label).inc();
                info!(%peer, %resource, %node, "witness: lease released");
            }
        }
    }
    Some(reply)
}
