//! Helpers shared by the metrics server tests.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A registry with one gauge, `rempart_test_answer 42`.
pub(crate) fn registry() -> Arc<Registry> {
    let mut reg = Registry::default();
    let g: Gauge = Gauge::default();
    g.set(42);
    reg.register("rempart_test_answer", "The answer", g);
    Arc::new(reg)
}

/// A blocking HTTP GET of `path`; the whole response, head and body.
pub(crate) fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
