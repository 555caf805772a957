//! The fault proxy's modes, on loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rempart_testkit::{FaultProxy, Mode};

/// An echo server on 127.0.0.1 that serves every connection on its own thread.
fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn proxy() -> FaultProxy {
    FaultProxy::start("127.0.0.1:0".parse().expect("addr"), echo()).expect("proxy")
}

fn connect(p: &FaultProxy) -> TcpStream {
    let s = TcpStream::connect(p.local_addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    s
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut b = vec![0u8; msg.len()];
    s.read_exact(&mut b)?;
    Ok(b)
}

#[test]
fn forward_passes_bytes_both_ways() {
    let p = proxy();
    let mut s = connect(&p);
    assert_eq!(roundtrip(&mut s, b"ping").expect("echo"), b"ping");
}

#[test]
fn delay_applies_to_open_connections() {
    let p = proxy();
    let mut s = connect(&p);
    assert_eq!(roundtrip(&mut s, b"a").expect("echo"), b"a");
    p.set_mode(Mode::Delay(Duration::from_millis(100)));
    let t = Instant::now();
    assert_eq!(roundtrip(&mut s, b"b").expect("echo"), b"b");
    // One-way delay in each direction: a round trip takes at least twice the delay.
    assert!(t.elapsed() >= Duration::from_millis(200), "{:?}", t.elapsed());
    p.set_mode(Mode::Forward);
    let t = Instant::now();
    assert_eq!(roundtrip(&mut s, b"c").expect("echo"), b"c");
    assert!(t.elapsed() < Duration::from_millis(150), "{:?}", t.elapsed());
}

#[test]
fn blackhole_keeps_the_connection_but_delivers_nothing() {
    let p = proxy();
    let mut s = connect(&p);
    assert_eq!(roundtrip(&mut s, b"x").expect("echo"), b"x");
    p.set_mode(Mode::Blackhole);
    let e = roundtrip(&mut s, b"lost").expect_err("blackholed bytes came back");
    assert!(matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut), "{e}");
    // New connections are accepted but stay silent too.
    let mut s2 = connect(&p);
    assert!(roundtrip(&mut s2, b"y").is_err());
    p.set_mode(Mode::Forward);
    // The connection was never closed: it works again, and what was lost stays lost.
    assert_eq!(roundtrip(&mut s, b"back").expect("echo after blackhole"), b"back");
}

#[test]
fn drop_closes_open_connections_and_refuses_new_ones() {
    let p = proxy();
    let mut s = connect(&p);
    assert_eq!(roundtrip(&mut s, b"x").expect("echo"), b"x");
    p.set_mode(Mode::Drop);
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).expect("orderly close"), 0, "expected EOF");
    let mut s2 = connect(&p);
    assert_eq!(s2.read(&mut b).expect("orderly close"), 0, "new connection not closed");
}

#[test]
fn reset_sends_rst() {
    let p = proxy();
    let mut s = connect(&p);
    assert_eq!(roundtrip(&mut s, b"x").expect("echo"), b"x");
    p.set_mode(Mode::Reset);
    let mut b = [0u8; 1];
    let e = s.read(&mut b).expect_err("expected a reset, got data or EOF");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    let mut s2 = connect(&p);
    let r = s2.read(&mut b);
    assert!(matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset), "{r:?}");
}
