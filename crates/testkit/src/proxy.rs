//! A userspace TCP fault proxy for replication tests: it sits between two peers on loopback (or
//! inside a lab host) and forwards, delays, drops, blackholes or resets their connections, with
//! the mode switchable while connections are open.
//!
//! ```text
//!   client ──► FaultProxy(listen) ──[mode]──► upstream
//!              Forward | Delay(d) | Drop | Blackhole | Reset
//! ```
//!
//! The proxy runs on its own tokio runtime on a background thread, so synchronous tests and async
//! tests use it alike. Dropping it closes the listener and every connection.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// What the proxy does to traffic. Applies to open connections at once, and to new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pass bytes through unchanged.
    Forward,
    /// Deliver every chunk after this one-way delay, in order.
    Delay(Duration),
    /// A dead peer process: close open connections (FIN) and close new ones on accept.
    Drop,
    /// A cut cable TCP does not notice: keep connections open, accept new ones, deliver nothing.
    Blackhole,
    /// Reset (RST) every open connection and every new one.
    Reset,
}

/// A running fault proxy. See the module docs.
#[derive(Debug)]
pub struct FaultProxy {
    local: SocketAddr,
    mode: watch::Sender<Mode>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on `listen` (port 0 picks one) and forwards to `upstream`, starting in
    /// [`Mode::Forward`].
    pub fn start(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let listener = rt.block_on(TcpListener::bind(listen))?;
        let local = listener.local_addr()?;
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let (stop, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new().name(format!("fault-proxy-{local}")).spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    _ = accept_loop(listener, upstream, mode_rx) => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime cancels every connection task, closing their sockets.
        })?;
        Ok(Self { local, mode, stop: Some(stop), thread: Some(thread) })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Switches the mode; open connections follow at once.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        let current = *mode.borrow();
        match current {
            Mode::Drop => drop(client),
            Mode::Reset => reset(client),
            _ => {
                let mode = mode.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        pump(client, server, mode).await;
                    }
                });
            }
        }
    }
}

fn reset(s: TcpStream) {
    // SO_LINGER with a zero timeout makes close() send RST instead of FIN (and never blocks).
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// Chunks waiting for their delivery time, per direction.
#[derive(Default)]
struct Pending {
    q: VecDeque<(Instant, Vec<u8>)>,
}

impl Pending {
    fn next_due(&self) -> Option<Instant> {
        self.q.front().map(|(t, _)| *t)
    }
}

/// When bytes read now are to be delivered under the current mode.
fn due(mode: &watch::Receiver<Mode>) -> Instant {
    match *mode.borrow() {
        Mode::Delay(d) => Instant::now() + d,
        _ => Instant::now(),
    }
}

async fn pump(mut client: TcpStream, mut server: TcpStream, mut mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let end = {
        let (mut cr, mut cw) = client.split();
        let (mut sr, mut sw) = server.split();
        let mut up = Pending::default();
        let mut down = Pending::default();
        let mut b1 = vec![0u8; 64 * 1024];
        let mut b2 = vec![0u8; 64 * 1024];
        let far = Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let m = *mode.borrow();
            if matches!(m, Mode::Drop | Mode::Reset) {
                break m;
            }
            let up_due = up.next_due().unwrap_or(far);
            let down_due = down.next_due().unwrap_or(far);
            tokio::select! {
                // The mode is read again when bytes arrive: a switch made just before they were
                // sent applies to them.
                r = cr.read(&mut b1) => match r {
                    Ok(0) | Err(_) => break Mode::Drop,
                    Ok(n) if *mode.borrow() != Mode::Blackhole => up.q.push_back((due(&mode), b1[..n].to_vec())),
                    Ok(_) => {}
                },
                r = sr.read(&mut b2) => match r {
                    Ok(0) | Err(_) => break Mode::Drop,
                    Ok(n) if *mode.borrow() != Mode::Blackhole => down.q.push_back((due(&mode), b2[..n].to_vec())),
                    Ok(_) => {}
                },
                _ = tokio::time::sleep_until(up_due), if up_due != far => {
                    if let Some((_, c)) = up.q.pop_front() {
                        if sw.write_all(&c).await.is_err() { break Mode::Drop; }
                    }
                },
                _ = tokio::time::sleep_until(down_due), if down_due != far => {
                    if let Some((_, c)) = down.q.pop_front() {
                        if cw.write_all(&c).await.is_err() { break Mode::Drop; }
                    }
                },
                r = mode.changed() => {
                    if r.is_err() { break Mode::Drop; }
                    if *mode.borrow() == Mode::Blackhole {
                        // A cut cable also loses what was in flight.
                        up.q.clear();
                        down.q.clear();
                    }
                },
            }
        }
    };
    if end == Mode::Reset {
        reset(client);
        reset(server);
    }
}
