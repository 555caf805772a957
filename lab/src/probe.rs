//! Probes that run inside lab hosts: a TCP echo server and a client that measures round trips.
//! They run on threads that entered a host's namespace ([`Lab::enter`]), never in the root
//! namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::Lab;

/// The port the echo servers listen on inside the lab.
pub const ECHO_PORT: u16 = 7007;

/// A TCP echo server running inside a lab host; stops when dropped.
#[derive(Debug)]
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Starts an echo server in `host` listening on `addr`.
    pub fn start(lab: &Lab, host: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = lab
            .enter(host, move || TcpListener::bind(addr))?
            .with_context(|| format!("echo server cannot listen on {addr} in {host}"))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        std::thread::spawn(move || {
                            let mut b = [0u8; 1024];
                            while let Ok(n) = s.read(&mut b) {
                                if n == 0 || s.write_all(&b[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        });
        Ok(Self { stop, addr, thread: Some(thread) })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from inside `host` to `addr` and does `count` 64-byte echo round trips on one
/// connection. Returns the connect time and each round-trip time.
pub fn tcp_ping(lab: &Lab, host: &str, addr: SocketAddr, count: usize) -> anyhow::Result<(Duration, Vec<Duration>)> {
    lab.enter(host, move || -> anyhow::Result<(Duration, Vec<Duration>)> {
        let t = Instant::now();
        let mut s =
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| format!("connect to {addr}"))?;
        let connect = t.elapsed();
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let msg = [0x5au8; 64];
        let mut back = [0u8; 64];
        let mut rtts = Vec::with_capacity(count);
        for _ in 0..count {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut back).with_context(|| format!("echo from {addr}"))?;
            anyhow::ensure!(back == msg, "echo from {addr} returned other bytes");
            rtts.push(t.elapsed());
        }
        Ok((connect, rtts))
    })?
    .with_context(|| format!("TCP exchange {host} → {addr}"))
}
