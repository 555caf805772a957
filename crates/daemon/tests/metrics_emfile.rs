//! The shared metrics server when every file descriptor is in use: accept fails with `EMFILE`,
//! the loop backs off instead of spinning, and serves again once descriptors are free. Its own
//! test binary (one test, one process) because it exhausts the process's descriptor table.

mod common;

use common::{registry, scrape};
use std::time::Duration;

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
    rt.block_on(async { tokio::time::sleep(window).await });
    let used = cpu_time() - before;
    assert!(used < window / 4, "accept loop used {used:?} of CPU in {window:?}: it spins on EMFILE");

    drop(hog);
    let resp = rt.block_on(async { tokio::task::spawn_blocking(move || client.join().unwrap()).await.unwrap() });
    assert!(resp.contains("rempart_test_answer 42"), "{resp}");
    server.abort();
}
