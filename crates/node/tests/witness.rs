//! The witness server and the node's client task over loopback (127.0.0.1, ephemeral ports):
//! grant, refuse, renew, release, expire; a wrong secret; a replayed handshake; a client frozen
//! past its TTL.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use node::io::witness_client::{WitnessClient, WitnessClientConfig};
use node::io::witness_server::{WitnessServer, WitnessServerConfig};
use node::witness::auth::{auth_key, Incoming, Role, Session};
use node::witness::client::ClientConfig;
use node::witness::server::ServerConfig;
use node::witness::wire::{Repr, RequestKind};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TTL: Duration = Duration::from_millis(600);
const R: &str = "r0";

struct Witness {
    server: WitnessServer,
    registry: Registry,
    addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn witness(secret: &[u8]) -> Witness {
    let mut registry = Registry::default();
    let cfg = WitnessServerConfig::new(
        ServerConfig { startup_grace: Duration::ZERO, ..ServerConfig::new(Duration::from_secs(5)) },
        auth_key(secret),
    );
    let server = WitnessServer::new(cfg, &mut registry);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let s = server.clone();
    let task = tokio::spawn(async move { s.serve(listener).await });
    Witness { server, registry, addr, task }
}

fn client_cfg(w: &Witness, node: &str, secret: &[u8]) -> WitnessClientConfig {
    WitnessClientConfig::new(w.addr.clone(), auth_key(secret), ClientConfig::new(node, TTL), vec![R.into()])
}

/// Polls `cond` every 5 ms until it holds; fails after `limit`.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn metric(reg: &Registry, line_prefix: &str) -> f64 {
    let text = rempart_daemon_render(reg);
    text.lines().find_map(|l| l.strip_prefix(line_prefix).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

fn rempart_daemon_render(reg: &Registry) -> String {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, reg).unwrap();
    s
}

#[tokio::test]
async fn grant_refuse_renew_release_and_expire() {
    let w = witness(b"secret").await;
    let a = WitnessClient::spawn(client_cfg(&w, "main", b"secret"));
    let (b, b_driver) = WitnessClient::new(client_cfg(&w, "backup", b"secret"));
    let b_task = tokio::spawn(b_driver);

    // Grant.
    a.want(R, true);
    wait_for("main holds the lease", Duration::from_secs(5), || a.lease_until(R).is_some()).await;
    assert_eq!(w.server.holder(R).as_deref(), Some("main"));

    // Refuse: backup asks and is told no.
    b.want(R, true);
    wait_for("backup refused", Duration::from_secs(5), || {
        metric(&w.registry, "rempart_witness_refusals_total{resource=\"r0\",reason=\"held\"}") >= 1.0
    })
    .await;
    assert!(b.lease_until(R).is_none());
    wait_for("backup is told who holds it", Duration::from_secs(5), || b.refused_by(R).as_deref() == Some("main"))
        .await;

    // Renew: main keeps it over several TTLs (renewals every TTL/3).
    let grants_before = metric(&w.registry, "rempart_witness_grants_total{resource=\"r0\"}");
    let until_before = a.lease_until(R).unwrap();
    let end = Instant::now() + TTL * 3;
    while Instant::now() < end {
        assert!(a.lease_until(R).is_some(), "main lost its lease while renewing");
        assert!(b.lease_until(R).is_none(), "backup got a lease main holds");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.lease_until(R).unwrap() > until_before + TTL * 2);
    assert!(metric(&w.registry, "rempart_witness_grants_total{resource=\"r0\"}") >= grants_before + 6.0);

    // Release: main drops it at once, and backup gets it well before main's TTL would have run.
    a.want(R, false);
    wait_for("main dropped its lease", Duration::from_secs(1), || a.lease_until(R).is_none()).await;
    let took = wait_for("backup holds the lease", Duration::from_secs(5), || b.lease_until(R).is_some()).await;
    assert!(took < TTL, "after a release the lease moved in {took:?}");
    assert_eq!(w.server.holder(R).as_deref(), Some("backup"));
    assert_eq!(metric(&w.registry, "rempart_witness_releases_total{resource=\"r0\"}"), 1.0);

    // Expire: backup's task dies without releasing. The witness keeps the lease until its TTL
    // runs out (a closed connection releases nothing), then main gets it.
    a.want(R, true);
    b_task.abort();
    let _ = b_task.await;
    let killed = Instant::now();
    assert_eq!(w.server.holder(R).as_deref(), Some("backup"));
    wait_for("main holds the lease again", Duration::from_secs(5), || a.lease_until(R).is_some()).await;
    assert!(killed.elapsed() > TTL / 3, "the lease moved only after backup's lease ran out");
    assert_eq!(w.server.holder(R).as_deref(), Some("main"));
    assert_eq!(metric(&w.registry, "rempart_witness_leases_held"), 1.0);
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A node without the secret gets nothing; the witness says why in one warning, however often
/// the node retries, and so does the node.
#[tokio::test(flavor = "current_thread")]
async fn a_wrong_secret_gets_nothing_and_one_clear_log_line() {
    let logs = Captured::default();
    let sink = logs.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(sub);

    let w = witness(b"secret").await;
    let c = WitnessClient::spawn(client_cfg(&w, "intruder", b"wrong"));
    c.want(R, true);
    wait_for("three refused attempts", Duration::from_secs(10), || {
        metric(&w.registry, "rempart_witness_auth_failures_total") >= 3.0
    })
    .await;
    assert!(c.lease_until(R).is_none());
    assert!(!*c.connected().borrow());
    assert_eq!(w.server.holder(R), None);
    assert_eq!(metric(&w.registry, "rempart_witness_grants_total{resource=\"r0\"}"), 0.0);
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let server_lines: Vec<&str> = text.lines().filter(|l| l.contains("does not know the shared secret")).collect();
    assert_eq!(server_lines.len(), 1, "one line from the witness:\n{text}");
    assert!(server_lines[0].contains("WARN") && server_lines[0].contains("127.0.0.1"), "{}", server_lines[0]);
    let client_lines: Vec<&str> = text.lines().filter(|l| l.contains("shared secrets differ")).collect();
    assert_eq!(client_lines.len(), 1, "one line from the node:\n{text}");
}

async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut h = [0u8; 8];
    s.read_exact(&mut h).await.ok()?;
    let len = usize::from(u16::from_be_bytes([h[6], h[7]]));
    let mut v = h.to_vec();
    v.resize(8 + len, 0);
    s.read_exact(&mut v[8..]).await.ok()?;
    Some(v)
}

/// A recorded session (handshake and a sealed request) replayed on a new connection gets no
/// lease: the witness's challenge is new, so the recorded answer is wrong.
#[tokio::test]
async fn a_replayed_session_fails() {
    let w = witness(b"secret").await;
    let mut s = TcpStream::connect(&w.addr).await.unwrap();
    let mut session = Session::new(Role::Client, auth_key(b"secret"), [7; 32]);
    let hello = session.hello();
    s.write_all(&hello).await.unwrap();
    let server_hello = read_frame(&mut s).await.unwrap();
    let Incoming::Send(auth) = session.receive(&server_hello).unwrap() else { panic!("no auth") };
    s.write_all(&auth).await.unwrap();
    let server_auth = read_frame(&mut s).await.unwrap();
    assert_eq!(session.receive(&server_auth), Ok(Incoming::Established));
    let req =
        Repr::Request { kind: RequestKind::Acquire, seq: 1, ttl_ms: 600, resource: R.into(), node: "main".into() };
    let sealed = session.seal(&req).unwrap();
    s.write_all(&sealed).await.unwrap();
    let reply = read_frame(&mut s).await.unwrap();
    assert!(matches!(session.receive(&reply), Ok(Incoming::Message(Repr::Granted { seq: 1, .. }))));
    drop(s);

    // The same bytes again, on a new connection, after the lease has been released by time.
    wait_for("the first lease ends", Duration::from_secs(5), || w.server.holder(R).is_none()).await;
    let mut s = TcpStream::connect(&w.addr).await.unwrap();
    s.write_all(&hello).await.unwrap();
    let _new_server_hello = read_frame(&mut s).await.unwrap();
    s.write_all(&auth).await.unwrap();
    s.write_all(&sealed).await.unwrap();
    // The witness answered our hello with its own auth, then closes: nothing else comes.
    let mut frames = 0;
    while read_frame(&mut s).await.is_some() {
        frames += 1;
    }
    assert!(frames <= 1, "only the witness's handshake answer, no reply to the request");
    assert_eq!(w.server.holder(R), None);
    assert_eq!(metric(&w.registry, "rempart_witness_auth_failures_total"), 1.0);
}

/// A client whose task is not polled (frozen: SIGSTOP, VM pause) for longer than its TTL
/// reports no lease the moment it resumes, before it has processed anything, and the other
/// node has taken the lease meanwhile.
#[tokio::test]
async fn a_client_frozen_past_its_ttl_reports_no_lease_on_resume() {
    let w = witness(b"secret").await;
    let (a, a_driver) = WitnessClient::new(client_cfg(&w, "main", b"secret"));
    let mut a_driver = Box::pin(a_driver);
    let b = WitnessClient::spawn(client_cfg(&w, "backup", b"secret"));
    a.want(R, true);
    tokio::select! {
        () = &mut a_driver => panic!("driver ended"),
        _ = wait_for("main holds", Duration::from_secs(5), || a.lease_until(R).is_some()) => {}
    }
    let watch = a.subscribe(R).unwrap();
    // Freeze main: its driver is no longer polled. Backup wants the lease and gets it once
    // main's lease has run out at the witness.
    b.want(R, true);
    wait_for("backup holds", Duration::from_secs(5), || b.lease_until(R).is_some()).await;
    // Resume: before main's driver runs again, main reports no lease, although the last value
    // it published is still a lease end (now in the past).
    let published = (*watch.borrow()).expect("the frozen driver never withdrew its lease");
    assert!(published <= Instant::now());
    assert_eq!(a.lease_until(R), None);
    // Let it run: it learns it lost the lease and never claims it while backup holds it.
    let end = Instant::now() + TTL * 2;
    loop {
        tokio::select! {
            () = &mut a_driver => panic!("driver ended"),
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        assert_eq!(a.lease_until(R), None);
        assert!(b.lease_until(R).is_some());
        if Instant::now() > end {
            break;
        }
    }
    assert_eq!(*watch.borrow(), None, "the resumed driver withdrew its stale lease");
}

#[tokio::test]
async fn metric_families_are_registered_with_their_names() {
    let w = witness(b"s").await;
    let text = rempart_daemon_render(&w.registry);
    for family in [
        "rempart_witness_leases_held",
        "rempart_witness_lease_remaining_seconds",
        "rempart_witness_grants",
        "rempart_witness_refusals",
        "rempart_witness_releases",
        "rempart_witness_auth_failures",
        "rempart_witness_connections",
    ] {
        assert!(text.contains(&format!("# TYPE {family} ")), "{family} missing:\n{text}");
    }
}
