//! The shared metrics server over loopback: a scrape gets the registry's text, a client that
//! sends nothing is closed after the read timeout without holding up other scrapes, and accept
//! errors (`EMFILE`) make the loop back off instead of spinning.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

fn registry() -> Arc<Registry> {
    let mut reg = Registry::default();
    let g: Gauge = Gauge::default();
    g.set(42);
    reg.register("rempart_test_answer", "The answer", g);
    Arc::new(reg)
}

fn scrape(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

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

fn cpu_time() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000);
    t(u.user_time()) + t(u.system_time())
}

/// With every file descriptor in use, accept fails with EMFILE while a connection waits in the
/// backlog. A loop that retries at once spins a core; ours backs off. Once descriptors are free
/// again the waiting client is served.
#[test]
fn accept_errors_back_off_and_recover() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();
    let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = l.local_addr().unwrap();
    let server = rt.spawn(rempart_daemon::metrics::serve(l, registry()));
    rt.block_on(tokio::task::yield_now());

    // Fill the table, then free one descriptor for the client's own socket.
    let mut hog = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hog.push(f);
    }
    hog.pop();
    let client = std::thread::spawn(move || scrape(addr, "/metrics"));
    // Let the connection reach the backlog and the server's accept fail repeatedly; measure the
    // CPU this process uses meanwhile.
    let before = cpu_time();
    let window = Duration::from_millis(600);
    rt.block_on(tokio::time::sleep(window));
    let used = cpu_time() - before;
    assert!(used < window / 4, "accept loop used {used:?} of CPU in {window:?}: it spins on EMFILE");

    drop(hog);
    let resp = rt.block_on(async { tokio::task::spawn_blocking(move || client.join().unwrap()).await.unwrap() });
    assert!(resp.contains("rempart_test_answer 42"), "{resp}");
    server.abort();
}
