//! The shared metrics server over loopback: a scrape gets the registry's text, and a client that
//! sends nothing is closed after the read timeout without holding up other scrapes. (Accept
//! errors are tested in `metrics_emfile.rs`, a process of its own: it exhausts descriptors.)

mod common;

use common::{registry, scrape};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_gets_the_registry_and_a_silent_client_does_not_block_it() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(rempart_daemon::metrics::serve(l, registry()));

    // A client that connects and says nothing.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();

    let resp = tokio::task::spawn_blocking(move || scrape(addr, "/metrics")).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("content-type: text/plain; version=0.0.4"), "{resp}");
    assert!(resp.contains("\r\n\r\n# HELP rempart_test_answer The answer.\n"), "{resp}");
    assert!(resp.contains("rempart_test_answer 42\n"), "{resp}");
    let resp = tokio::task::spawn_blocking(move || scrape(addr, "/nope")).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 404 "), "{resp}");

    // The silent client is closed by the server (EOF) once the read timeout has passed, and
    // not before it (the read is still pending just under the timeout).
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 16];
    let early = rempart_daemon::metrics::READ_TIMEOUT - Duration::from_secs(1);
    assert!(tokio::time::timeout(early, silent.read(&mut b)).await.is_err(), "closed before the read timeout");
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut b)).await.expect("server never closed");
    assert_eq!(n.unwrap(), 0, "the server sent bytes to a client that asked nothing");
    server.abort();
}
