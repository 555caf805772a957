//! `rempart-node`'s controls on the lab with slapd on the volume: the backup that follows the
//! primary, `status` (text and the same
//! facts in /metrics), a planned `switchover` measured with the client writing through the VIP
//! (0 acknowledged entries lost, never two writers), and `maintenance on` (no automatic
//! failover: the standby does not take over when the primary's daemon dies; `off` lets it).
//! Root (namespaces, loop devices, FUSE).

use std::time::{Duration, Instant};

use rempart_lab::node::{two_writers, Endpoint, Failover, Stack, Traffic};
use rempart_lab::node_column::NodeColumn;
use rempart_testkit::wait;

fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name_and_labels).and_then(|r| r.trim().parse().ok()))
}

#[test]
fn status_switchover_and_maintenance() {
    let lab = rempart_lab::reference().unwrap();
    let mut stack = Stack::new(&lab).unwrap();
    stack.prepare(&lab).unwrap();
    let mut col = NodeColumn::new().unwrap();
    col.backup = true;
    col.start(&lab, &mut stack).unwrap();
    let archives = |prefix: &str| -> usize {
        let out = std::process::Command::new(rempart_lab::steps::sibling_binary("rempart-backup").unwrap())
            .args(["list", "--short"])
            .arg(NodeColumn::repository(&stack))
            .env("REMPART_PASSPHRASE", "lab backup passphrase")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with(prefix)).count()
    };
    let backed_up = |col: &NodeColumn, host: &str| {
        col.status_of(&stack, host).is_some_and(|s| s["backup"]["last_success_unix"].is_number())
    };

    // The backup follows the data: the serving node backs the volume up at once (nothing
    // recorded yet: catching up), the standby does not.
    wait::until(Duration::from_secs(60), "main's first backup", || backed_up(&col, "main")).unwrap();
    assert_eq!(archives("main-"), 1);
    assert!(!backed_up(&col, "backup"));

    // status, as text: DRBD's and keepalived's words, the quorum, the steps of the transition.
    let (ok, text) = col.ctl(&stack, "main", &["status"]).unwrap();
    assert!(ok, "{text}");
    for want in [
        "main phase:serving",
        "vrrp VI_LDAP state:MASTER priority:150",
        "(held)",
        "r0 role:Primary",
        "disk:UpToDate",
        "peer connection:Connected role:Secondary peer-disk:UpToDate replication:Established",
        "witness 192.168.50.30:7790 connected:true lease:",
        "service slapd started:true",
        "last transition: up (VRRP MASTER)",
        "promote",
        "mount",
        "start service 0",
        "health check",
        "add VIP",
    ] {
        assert!(text.contains(want), "status lacks {want:?}:\n{text}");
    }
    let (ok, text) = col.ctl(&stack, "backup", &["status"]).unwrap();
    assert!(ok && text.contains("backup phase:idle") && text.contains("r0 role:Secondary"), "{text}");
    let m = col.scrape(&lab, "main").unwrap();
    assert_eq!(metric(&m, "rempart_node_phase{phase=\"serving\"}"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "rempart_node_lease_valid"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "rempart_node_witness_connected"), Some(1.0), "{m}");
    assert_eq!(metric(&m, "rempart_node_transitions_total{direction=\"up\",result=\"ok\"}"), Some(1.0), "{m}");
    assert!(metric(&m, "rempart_node_step_duration_seconds{step=\"mount\"}").is_some(), "{m}");
    assert!(metric(&m, "rempart_node_backup_last_success_timestamp_seconds").is_some_and(|t| t > 1.7e9), "{m}");
    assert!(m.contains("rempart_vrrp_") && m.contains("rempart_repl_"), "one registry for every engine: {m}");

    // A planned switchover under load.
    let traffic = Traffic::start(&lab, &stack);
    traffic.wait_client_acks(5, Duration::from_secs(15)).unwrap();
    col.switchover(&lab, &stack, "main").unwrap();
    let moved = col.wait_phase(&stack, "backup", "serving", Duration::from_secs(20)).unwrap();
    let before = traffic.client_acks().len();
    traffic.wait_client_acks(before + 5, Duration::from_secs(15)).unwrap();
    let (client, probes) = traffic.finish();
    let present = Endpoint::Vip.list(&lab).expect("the VIP answers after the switchover");
    let lost: Vec<&str> = client.iter().filter(|a| !present.contains(&a.cn)).map(|a| a.cn.as_str()).collect();
    assert!(lost.is_empty(), "switchover lost acknowledged entries: {lost:?}");
    let empty = Vec::new();
    let two = two_writers(
        probes.get("main").unwrap_or(&empty),
        probes.get("backup").unwrap_or(&empty),
        Duration::from_millis(300),
    );
    assert!(two.is_empty(), "two writers during the switchover: {two:?}");
    println!(
        "switchover: backup serving {:.2} s after the command; {} entries acknowledged, 0 lost",
        moved.as_secs_f64(),
        client.len()
    );
    col.wait_phase(&stack, "main", "idle", Duration::from_secs(20)).unwrap();
    // The next primary continues the backups (it has none recorded: it runs one now).
    wait::until(Duration::from_secs(60), "backup's first backup", || backed_up(&col, "backup")).unwrap();
    assert_eq!(archives("backup-"), 1);
    assert_eq!(archives("main-"), 1, "main runs no backup once it stepped down");

    // Maintenance on the standby: its primary's daemon dies, it does not take over.
    let (ok, out) = col.ctl(&stack, "main", &["maintenance", "on"]).unwrap();
    assert!(ok, "{out}");
    let (_, text) = col.ctl(&stack, "main", &["status"]).unwrap();
    assert!(text.contains("MAINTENANCE"), "{text}");
    assert_eq!(metric(&col.scrape(&lab, "main").unwrap(), "rempart_node_maintenance"), Some(1.0));
    col.kill9("backup").unwrap();
    // Longer than VRRP's Master_Down_Interval (3.4 s at 1 s adverts) plus the lease (3 s): the
    // window in which an automatic failover would have happened.
    let window = Instant::now() + Duration::from_secs(9);
    while Instant::now() < window {
        let s = col.status_of(&stack, "main").expect("main answers");
        assert_eq!(s["phase"], "idle", "main moved while in maintenance: {s}");
        assert_eq!(s["resources"][0]["role"], "Secondary", "{s}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out) = col.ctl(&stack, "main", &["maintenance", "off"]).unwrap();
    assert!(ok, "{out}");
    col.wait_phase(&stack, "main", "serving", Duration::from_secs(20)).unwrap();
    let last = client.last().unwrap().cn.clone();
    wait::until(Duration::from_secs(10), "the last entry through the VIP", || Endpoint::Vip.has(&lab, &last)).unwrap();
    // Refused commands say why and exit 1.
    let (ok, out) = col.ctl(&stack, "backup", &["switchover"]).unwrap_or((true, String::new()));
    assert!(!ok, "switchover on a dead node must fail: {out}");
    drop(col);
    for n in ["backup", "main"] {
        stack.teardown(n);
    }
}
