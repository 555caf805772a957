//! The lab binary and the drill, end to end (root; CI runs them).

use std::process::Command;

use rempart_lab::report::split;
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
    // Each step's checks, by name, all passed (issue 16: the reference table's lines).
    let checks = |step: &str| {
        let l = lines.iter().find(|l| l.step == step).unwrap_or_else(|| panic!("no {step} step"));
        let (summary, checks) = split(&l.detail);
        assert!(checks.iter().all(|c| c.pass), "{step}: {checks:#?}");
        (summary.to_string(), checks.iter().map(|c| (c.name.clone(), c.measured.clone())).collect::<Vec<_>>())
    };
    let names = |c: &[(String, String)]| c.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    let (failover, fc) = checks("vrrp-failover");
    assert!(failover.contains("main → backup") && failover.contains("failback to main"), "{failover}");
    assert_eq!(names(&fc), ["VIP on main", "failover", "client-visible RTO", "failback to main"]);
    assert!(fc[3].1.starts_with("VIP on main only ") && fc[3].1.contains(", client served by main "), "{fc:?}");
    let (backup, bc) = checks("backup-restore");
    assert!(
        backup.starts_with("runner main → backup over ssh")
            && backup.contains(" verified in ")
            && backup.contains(", 0 errors;"),
        "{backup}"
    );
    assert_eq!(
        names(&bc),
        ["backup age at the fault (RPO of the backups)", "restore test", "restore in place over ssh (RTO of the data)"]
    );
    // The generated tree: 64 configuration files, photos.bin and data.db.
    assert!(bc[1].1.starts_with("66 files (") && bc[1].1.ends_with(", 0 errors"), "{bc:?}");
    let (node, nc) = checks("node-failover");
    assert!(
        node.starts_with("kill -9 of main's rempart-node: client RTO ")
            && node.contains(" acknowledged entries, 0 lost; backup's steps: quorum ")
            && node.ends_with("backup isolated: no second primary, 1 node serving after the heal"),
        "{node}"
    );
    assert_eq!(
        names(&nc),
        ["directory through the VIP", "directory through the VIP after failover", "client-visible RTO (rempart-node)"]
    );
    assert!(
        nc[0].1.starts_with("dc=iris,dc=local; ou=groups,dc=iris,dc=local; ou=people,dc=iris,dc=local through"),
        "{nc:?}"
    );
    // The report has a row per check.
    let dir = tempfile::tempdir().unwrap();
    let step_names: Vec<String> = steps.iter().map(|s| s.name().to_string()).collect();
    let (md, json) = rempart_lab::report::write(&dir.path().join("r.md"), &lines, &step_names, &id).unwrap();
    let md = std::fs::read_to_string(md).unwrap();
    for row in [
        "| ↳ failback to main |",
        "| ↳ client-visible RTO |",
        "| ↳ backup age at the fault",
        "| ↳ directory through the VIP |",
    ] {
        assert!(md.lines().any(|l| l.starts_with(row) && l.ends_with("| pass | |")), "{row}: {md}");
    }
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(j["passed"], j["total"], "{j:#}");
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
