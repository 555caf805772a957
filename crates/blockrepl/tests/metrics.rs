//! The replication families the alerts of issue 16 read, scraped from a pair on loopback through
//! the states they report: the peer's disk, quorum lost with a write held (suspend-io), the lease
//! releasing it, a split brain pending, and its resolution.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blockrepl::io::Admin;
use blockrepl::metrics::ReplMetrics;
use blockrepl::proto::{ConnState, DiskState, OnNoQuorum, ReplState, Role};
use blockrepl::resource::{Resource, ResourceSpec};
use blockrepl::store::BlockStore;
use prometheus_client::registry::Registry;

mod common;
use common::until;

/// Node `who` of the pair, with the quorum gate `quorum`, no NBD endpoint.
fn spec(dir: &std::path::Path, who: &str, dial: Option<SocketAddr>, quorum: Option<OnNoQuorum>) -> ResourceSpec {
    let mut s = common::spec(dir, who, dial);
    s.replica.quorum = quorum;
    s.nbd = None;
    s
}

/// The samples of `r0` in one registry: family name → value.
fn scrape(registry: &Registry) -> BTreeMap<String, f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once("{resource=\"r0\"} ")?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn assert_samples(registry: &Registry, who: &str, want: &[(&str, f64)]) {
    let got = scrape(registry);
    for (name, v) in want {
        assert_eq!(got.get(*name), Some(v), "{who}: {name} in {got:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_disk_quorum_suspended_lease_and_split_brain_are_scraped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut reg_a, mut reg_b) = (Registry::default(), Registry::default());
    let (ma, mb) = (ReplMetrics::register(&mut reg_a), ReplMetrics::register(&mut reg_b));
    let b = Resource::start_with_metrics(spec(dir.path(), "b", None, None), &mb).await.unwrap();
    let a = Resource::start_with_metrics(
        spec(dir.path(), "a", Some(b.handle().replication_addr()), Some(OnNoQuorum::SuspendIo)),
        &ma,
    )
    .await
    .unwrap();
    let (ha, hb) = (a.handle().clone(), b.handle().clone());
    let (mut sa, mut sb) = (ha.watch_status(), hb.watch_status());
    until(&mut sa, "connection", |s| s.replica.connection == ConnState::Connected && s.replica.peer_disk.is_some())
        .await;
    // Fresh: each sees the other's disk Inconsistent.
    assert_samples(&reg_a, "a", &[("rempart_repl_peer_disk_state", 1.0), ("rempart_repl_split_brain", 0.0)]);
    ha.promote(true).await.unwrap();
    until(&mut sb, "the initial sync", |s| {
        s.replica.disk == DiskState::UpToDate && s.replica.replication == ReplState::Established
    })
    .await;
    until(&mut sa, "the peer UpToDate", |s| s.replica.peer_disk == Some(DiskState::UpToDate)).await;
    let healthy = [
        ("rempart_repl_peer_disk_state", 3.0),
        ("rempart_repl_quorum", 1.0),
        ("rempart_repl_suspended_requests", 0.0),
        ("rempart_repl_lease_remaining_seconds", 0.0),
        ("rempart_repl_split_brain", 0.0),
    ];
    assert_samples(&reg_a, "a", &healthy);
    assert_samples(&reg_b, "b", &healthy);

    // The link is cut (A disconnects): A, Primary without peer or lease, has no quorum and
    // holds a client write (suspend-io); B, with the quorum option off, keeps quorum 1.
    ha.admin(Admin::Disconnect).await.unwrap();
    until(&mut sa, "StandAlone", |s| s.replica.connection == ConnState::StandAlone).await;
    let w = {
        let ha = ha.clone();
        tokio::spawn(async move { ha.write(0, vec![0xa1; 4096].into(), true).await })
    };
    until(&mut sa, "the write held", |s| s.replica.quorum.suspended == 1).await;
    assert!(!w.is_finished(), "the write was acknowledged without quorum");
    assert_samples(
        &reg_a,
        "a",
        &[
            ("rempart_repl_peer_disk_state", -1.0),
            ("rempart_repl_quorum", 0.0),
            ("rempart_repl_suspended_requests", 1.0),
            ("rempart_repl_split_brain", 0.0),
        ],
    );
    assert_samples(&reg_b, "b", &[("rempart_repl_quorum", 1.0), ("rempart_repl_peer_disk_state", -1.0)]);

    // A witness lease: quorum back, the held write released, the lease's time left shown.
    ha.set_lease(Some(Instant::now() + Duration::from_secs(60)));
    tokio::time::timeout(Duration::from_secs(10), w).await.expect("released").unwrap().expect("write ok");
    until(&mut sa, "quorum by lease", |s| s.replica.quorum.held && s.replica.quorum.suspended == 0).await;
    let got = scrape(&reg_a);
    assert_eq!(got["rempart_repl_quorum"], 1.0, "{got:#?}");
    assert_eq!(got["rempart_repl_suspended_requests"], 0.0, "{got:#?}");
    let left = got["rempart_repl_lease_remaining_seconds"];
    assert!(left > 30.0 && left <= 60.0, "lease remaining {left}");

    // Split brain: B is promoted and writes while apart; when A reconnects both are Primary and
    // both wrote since their common generation.
    hb.promote(true).await.unwrap();
    hb.write(8192, vec![0xb2; 4096].into(), true).await.unwrap();
    ha.admin(Admin::Connect { discard_my_data: false }).await.unwrap();
    until(&mut sa, "the split brain", |s| s.replica.split_brains == 1 && s.replica.connection != ConnState::Connected)
        .await;
    assert_samples(&reg_a, "a", &[("rempart_repl_split_brain", 1.0), ("rempart_repl_split_brains_total", 1.0)]);
    // Still pending at the next scrape (a state, not an event).
    assert_samples(&reg_a, "a", &[("rempart_repl_split_brain", 1.0)]);

    // Resolved: B gives up its data (Secondary, reconnects with --discard-my-data).
    hb.demote(false).await.unwrap();
    until(&mut sb, "B Secondary", |s| s.replica.role == Role::Secondary).await;
    hb.admin(Admin::Disconnect).await.unwrap();
    ha.admin(Admin::Disconnect).await.unwrap();
    hb.admin(Admin::Connect { discard_my_data: true }).await.unwrap();
    ha.admin(Admin::Connect { discard_my_data: false }).await.unwrap();
    until(&mut sa, "reconnected", |s| s.replica.connection == ConnState::Connected).await;
    until(&mut sb, "B resynced", |s| {
        s.replica.disk == DiskState::UpToDate && s.replica.replication == ReplState::Established
    })
    .await;
    // The split brain is over; the counter keeps it.
    assert_samples(&reg_a, "a", &[("rempart_repl_split_brain", 0.0), ("rempart_repl_split_brains_total", 1.0)]);
    assert_samples(&reg_b, "b", &[("rempart_repl_split_brain", 0.0)]);

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
