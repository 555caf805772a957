//! The lab binary and the drill, end to end (root; CI runs them).

use std::process::Command;

use rempart_lab::{default_steps, drill, reference, Outcome, PERSISTENT_NAME};
use rempart_testkit::netns::list_namespaces;
use rempart_testkit::require_root;

#[test]
fn drill_reaches_every_host_and_cleans_up() {
    if !require_root("network namespaces") {
        return;
    }
    let mut lab = reference().expect("lab");
    let id = lab.id().to_string();
    let mut steps = default_steps();
    let lines = drill(&mut lab, &mut steps, |_| {});
    drop(lab);
    assert_eq!(lines.len(), steps.len());
    assert!(lines.iter().all(|l| l.outcome == Outcome::Ok), "{lines:#?}");
    // 4 hosts on mgmt (12 ordered pairs) + 2 on repl (2 pairs).
    assert!(lines[0].detail.starts_with("14 host pairs"), "{}", lines[0].detail);
    let failover = lines.iter().find(|l| l.step == "vrrp-failover").expect("failover step");
    assert!(failover.detail.contains("main → backup"), "{}", failover.detail);
    let backup = lines.iter().find(|l| l.step == "backup-restore").expect("backup step");
    assert!(
        backup.detail.starts_with("runner main → backup over ssh")
            && backup.detail.contains(" verified in ")
            && backup.detail.contains(", 0 errors;"),
        "{}",
        backup.detail
    );
    let node = lines.iter().find(|l| l.step == "node-failover").expect("node step");
    assert!(
        node.detail.starts_with("kill -9 of main's rempart-node: client RTO ")
            && node.detail.contains(" acknowledged entries, 0 lost; backup's steps: quorum ")
            && node.detail.ends_with("backup isolated: no second primary, 1 node serving after the heal"),
        "{}",
        node.detail
    );
    let left: Vec<_> = list_namespaces().expect("list").into_iter().filter(|n| n.starts_with(&id)).collect();
    assert!(left.is_empty(), "drill left namespaces: {left:?}");
}

#[test]
fn up_exec_down() {
    if !require_root("network namespaces") {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_rempart-lab");
    // A lab left over by an interrupted run of this test is removed first.
    let _ = Command::new(bin).arg("down").output();
    let up = Command::new(bin).arg("up").output().expect("up");
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    // `up` starts the monitoring host and the exporters (issue 16) and lists their pids.
    let up_out = String::from_utf8_lossy(&up.stdout).into_owned();
    let pids: Vec<u32> =
        up_out.lines().filter_map(|l| l.rsplit_once(" pid ").and_then(|(_, p)| p.trim().parse().ok())).collect();
    for what in
        ["prometheus ", "alertmanager ", "node-exporter ", "webhook ", "rempart-vrrp ", "rempart-repl ", "witness "]
    {
        assert!(up_out.lines().any(|l| l.trim_start().starts_with(what) && l.contains(" pid ")), "{what}: {up_out}");
    }
    assert_eq!(pids.len(), 10, "{up_out}");
    let again = Command::new(bin).arg("up").output().expect("up twice");
    assert_eq!(again.status.code(), Some(2), "a second `up` must refuse");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let ex = Command::new(bin).args(["exec", "backup", "--", "ip", "-4", "-o", "addr", "show"]).output().expect("exec");
    let out = String::from_utf8_lossy(&ex.stdout);
    assert!(ex.status.success() && out.contains("192.168.50.20/24") && out.contains("192.168.56.20/24"), "{out}");
    let ex = Command::new(bin).args(["exec", "client", "--", "ip", "-4", "-o", "addr", "show"]).output().expect("exec");
    assert!(!String::from_utf8_lossy(&ex.stdout).contains("192.168.56."), "client is not on the repl network");
    let bad = Command::new(bin).args(["exec", "nohost", "--", "true"]).output().expect("exec");
    assert_eq!(bad.status.code(), Some(2));

    let down = Command::new(bin).arg("down").output().expect("down");
    assert!(down.status.success());
    assert!(String::from_utf8_lossy(&down.stdout).contains("removed 6 namespaces"));
    for pid in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "pid {pid} survived `down`: {up_out}");
    }
    assert!(!std::env::temp_dir().join(format!("{PERSISTENT_NAME}-monitoring")).exists());
    let left: Vec<_> = list_namespaces()
        .expect("list")
        .into_iter()
        .filter(|n| n.starts_with(&format!("{PERSISTENT_NAME}-")))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
