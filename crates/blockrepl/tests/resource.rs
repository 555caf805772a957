//! The embeddable resource (issue 15): a pair on loopback, status through the watch channel,
//! typed refusals (openers, peer Primary), dropping the openers, metrics in a registry, and a
//! shutdown after which no task is alive, both ports can be bound again and the metadata
//! reopens with what the shutdown wrote.

use std::net::SocketAddr;
use std::time::Duration;

use blockrepl::io::load_meta;
use blockrepl::nbd::wire::{opt, FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES, IHAVEOPT};
use blockrepl::proto::{ConnState, DiskState, ReplState, Role};
use blockrepl::resource::{Culprit, Error, Refusal, Resource};
use blockrepl::store::BlockStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;
use common::{spec, until, SIZE};

/// An NBD client that enters its transmission phase (and so opens the device).
async fn nbd_open(addr: SocketAddr) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut greet = [0u8; 18];
    s.read_exact(&mut greet).await.unwrap();
    s.write_all(&u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes()).await.unwrap();
    let mut o = Vec::new();
    o.extend_from_slice(&IHAVEOPT.to_be_bytes());
    o.extend_from_slice(&opt::EXPORT_NAME.to_be_bytes());
    o.extend_from_slice(&2u32.to_be_bytes());
    o.extend_from_slice(b"r0");
    s.write_all(&o).await.unwrap();
    let mut info = [0u8; 10];
    s.read_exact(&mut info).await.unwrap();
    assert_eq!(u64::from_be_bytes(info[..8].try_into().unwrap()), SIZE);
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_refuses_with_reasons_drops_openers_and_shuts_down_completely() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = blockrepl::metrics::ReplMetrics::register(&mut registry);
    let b = Resource::start_with_metrics(spec(dir.path(), "b", None), &metrics).await.unwrap();
    let a = Resource::start_with_metrics(spec(dir.path(), "a", Some(b.handle().replication_addr())), &metrics)
        .await
        .unwrap();
    let (ha, hb) = (a.handle().clone(), b.handle().clone());
    let (mut sa, mut sb) = (ha.watch_status(), hb.watch_status());
    until(&mut sa, "connection", |s| s.replica.connection == ConnState::Connected && s.replica.peer_disk.is_some())
        .await;
    // A fresh pair: promotion needs --force, and says the local disk is why.
    let e = ha.promote(false).await.unwrap_err();
    assert_eq!(e, Error::Refused(Refusal::DiskNotUpToDate(DiskState::Inconsistent)));
    assert_eq!(e.culprit(), Culprit::LocalDisk);
    ha.promote(true).await.unwrap();
    until(&mut sb, "the initial sync", |s| {
        s.replica.disk == DiskState::UpToDate && s.replica.replication == ReplState::Established
    })
    .await;
    // The peer is Primary: B's promotion is refused for that reason, blamed on the peer.
    let e = hb.promote(false).await.unwrap_err();
    assert_eq!(e.refusal(), Some(&Refusal::PeerIsPrimary));
    assert_eq!(e.culprit(), Culprit::Peer);
    ha.write(0, vec![7u8; 65536].into(), true).await.unwrap();
    until(&mut sa, "the replicated write", |s| s.replica.replicated_bytes == 65536).await;

    // An opener: the demotion is refused with the count, until the openers are dropped.
    let mut client = nbd_open(ha.nbd_addr().unwrap()).await;
    until(&mut sa, "one opener", |s| s.open_clients == 1).await;
    assert_eq!(ha.open_clients(), 1);
    let e = ha.demote(false).await.unwrap_err();
    assert_eq!(e, Error::Refused(Refusal::OpenersPresent { count: 1 }));
    assert_eq!(e.culprit(), Culprit::Caller);
    assert!(e.to_string().contains("held open by 1 NBD client"), "{e}");
    ha.drop_openers();
    until(&mut sa, "no opener", |s| s.open_clients == 0).await;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "the dropped client's connection is closed");
    ha.demote(false).await.unwrap();
    until(&mut sa, "Secondary", |s| s.replica.role == Role::Secondary).await;

    // The metrics of both resources, computed from their status at scrape time.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for family in [
        "rempart_repl_primary gauge",
        "rempart_repl_disk_state gauge",
        "rempart_repl_connection_state gauge",
        "rempart_repl_out_of_sync_bytes gauge",
        "rempart_repl_sync_done_percent gauge",
        "rempart_repl_replicated_bytes counter",
        "rempart_repl_resync_bytes counter",
        "rempart_repl_split_brains counter",
        "rempart_repl_auth_failures counter",
        "rempart_repl_write_latency_seconds histogram",
        "rempart_repl_local_write_latency_seconds histogram",
        "rempart_repl_peer_write_latency_seconds histogram",
    ] {
        assert_eq!(text.matches(&format!("# TYPE {family}\n")).count(), 1, "{family} once in\n{text}");
    }
    assert_eq!(text.matches("rempart_repl_disk_state{resource=\"r0\"} 3").count(), 2, "{text}");
    assert!(text.contains("rempart_repl_replicated_bytes_total{resource=\"r0\"} 65536"), "{text}");
    assert!(text.contains("rempart_repl_write_latency_seconds_count{resource=\"r0\"} 1"), "{text}");
    assert!(text.contains("rempart_repl_write_latency_seconds_bucket{le=\"+Inf\",resource=\"r0\"} 1"), "{text}");

    // Shutdown: nothing of either resource runs, the ports are free, the metadata reopens.
    let addrs = [ha.replication_addr(), ha.nbd_addr().unwrap(), hb.replication_addr(), hb.nbd_addr().unwrap()];
    assert!(ha.tasks_alive() > 0);
    a.shutdown().await.unwrap();
    assert_eq!(ha.tasks_alive(), 0, "a task of A outlived its shutdown");
    assert!(!sa.borrow().running);
    b.shutdown().await.unwrap();
    assert_eq!(hb.tasks_alive(), 0, "a task of B outlived its shutdown");
    for addr in addrs {
        std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr} still bound: {e}"));
    }
    for who in ["a", "b"] {
        let m = load_meta(&dir.path().join(format!("{who}.md"))).unwrap();
        assert!(m.consistent && !m.outdated && !m.primary, "{who}: {m:?}");
    }
    assert!(ha.write(0, vec![1u8; 4096].into(), false).await.is_err());
    assert_eq!(ha.admin(blockrepl::io::Admin::Disconnect).await, Err(Error::Stopped));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(!text.contains("resource=\"r0\""), "a stopped resource left its samples: {text}");
}

/// Shutting down a Primary with writes in flight: they finish, and the metadata written last
/// still says Primary (the next start treats it as a crashed Primary, which is safe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_shut_down_mid_write_finishes_its_writes_and_records_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let mut s = spec(dir.path(), "solo", None);
    s.nbd = None;
    let r = Resource::start(s, &mut registry).await.unwrap();
    let h = r.handle().clone();
    h.promote(true).await.unwrap();
    let writes: Vec<_> = (0..32u64)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move { h.write(i * 4096, vec![i as u8; 4096].into(), false).await })
        })
        .collect();
    r.shutdown().await.unwrap();
    assert_eq!(h.tasks_alive(), 0);
    let mut ok = 0;
    for w in writes {
        if w.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    let m = load_meta(&dir.path().join("solo.md")).unwrap();
    assert!(m.primary, "the last metadata write records the role");
    // Writes acknowledged before the stop are on the disk.
    let disk = std::fs::read(dir.path().join("solo.img")).unwrap();
    let on_disk = (0..32usize).filter(|i| disk[i * 4096..(i + 1) * 4096].iter().all(|b| *b == *i as u8)).count();
    assert!(on_disk >= ok, "{ok} acknowledged, {on_disk} on disk");
}

/// A fast failover setting shortens the peer timeout below the default keepalive period (0.5 s):
/// the keepalives follow it (three per timeout), so an idle, healthy link stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_peer_timeout_keeps_an_idle_link_connected() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = blockrepl::metrics::ReplMetrics::register(&mut registry);
    let short = |mut s: blockrepl::resource::ResourceSpec| {
        s.replica.peer_timeout = Duration::from_millis(150);
        s
    };
    let b = Resource::start_with_metrics(short(spec(dir.path(), "b", None)), &metrics).await.unwrap();
    let a = Resource::start_with_metrics(short(spec(dir.path(), "a", Some(b.handle().replication_addr()))), &metrics)
        .await
        .unwrap();
    let mut sa = a.handle().watch_status();
    until(&mut sa, "connection", |s| s.replica.connection == ConnState::Connected).await;
    // Idle for ten peer timeouts: any status other than Connected fails the test.
    let dropped = tokio::time::timeout(
        Duration::from_millis(1500),
        sa.wait_for(|s| s.replica.connection != ConnState::Connected),
    )
    .await
    .map(|r| r.map(|s| s.replica.connection));
    assert!(dropped.is_err(), "the idle link dropped: {dropped:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
