//! The lab's monitoring host with the real servers (issue 16): Debian's Prometheus and
//! Alertmanager on `monitoring` with the rules and routes of `deploy/`, node_exporter and the
//! daemons on main and backup. Root (network namespaces); fails without it under CI.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rempart_lab::monitor::{query, read_notifications, Options, Stack};
use rempart_lab::monitoring::{dashboard_queries, deploy_dir};
use rempart_lab::reference;
use rempart_testkit::{require_root, wait};

fn up_targets(lab: &rempart_lab::Lab) -> BTreeSet<(String, String, String)> {
    query(lab, "up")
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let m = &s["metric"];
            let l = |k: &str| m[k].as_str().unwrap_or("").to_string();
            (l("job"), l("host"), s["value"][1].as_str().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn prometheus_scrapes_every_target_and_an_alert_reaches_the_webhook() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = reference().expect("lab");
    let tmp = tempfile::tempdir().unwrap();
    let interval = Duration::from_secs(1);
    let mut stack = Stack::start(&lab, &Options { dir: tmp.path().join("monitoring"), interval }).expect("stack");
    let pids = stack.pids();

    // Every target of deploy/prometheus/prometheus.yml is scraped, up == 1.
    let expected: BTreeSet<(String, String, String)> = [
        ("node", "main"),
        ("node", "backup"),
        ("rempart-vrrp", "main"),
        ("rempart-vrrp", "backup"),
        ("rempart-repl", "main"),
        ("rempart-repl", "backup"),
        ("prometheus", "monitoring"),
        ("alertmanager", "monitoring"),
    ]
    .iter()
    .map(|(j, h)| ((*j).to_string(), (*h).to_string(), "1".to_string()))
    .collect();
    let r = wait::until(Duration::from_secs(30), "every target up", || up_targets(&lab) == expected);
    assert!(r.is_ok(), "{r:?}: {:?}", up_targets(&lab));

    // The rules run on the daemons' real series: main is the one VRRP master of VRID 50, the
    // `instance` label of rempart-vrrp arrives as `vrrp_instance`, both replicas report r0.
    wait::until(Duration::from_secs(30), "one VRRP master", || {
        query(&lab, r#"vrid:rempart_vrrp_masters:sum{vrid="50"} == 1"#).is_ok_and(|v| v.len() == 1)
    })
    .unwrap();
    let s = query(&lab, "rempart_vrrp_state == 2").unwrap();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["metric"]["host"], "main");
    assert_eq!(s[0]["metric"]["vrrp_instance"], "VI_MGMT");
    assert!(s[0]["metric"].get("exported_instance").is_none(), "{s:?}");
    assert_eq!(query(&lab, "rempart_repl_disk_state").unwrap().len(), 2);
    assert!(!query(&lab, "node_filesystem_avail_bytes").unwrap().is_empty());

    // Every dashboard query runs on the real Prometheus (whether it returns data depends on what
    // happened: backup series appear once the runner has run, which the drill does).
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_dir().join("grafana/dashboards/rempart.json")).unwrap())
            .unwrap();
    for (title, exprs) in dashboard_queries(&d) {
        for e in exprs {
            assert!(query(&lab, &e).is_ok(), "panel {title:?}: {e}: {:?}", query(&lab, &e));
        }
    }
    assert!(!query(&lab, "rempart_vrrp_effective_priority").unwrap().is_empty());

    // A fault: main's rempart-vrrp killed. InstanceDown (for: 1m) must reach the webhook within
    // its `for` plus two scrape intervals, plus Alertmanager's group_wait (1 s in the lab) and a
    // second of evaluation slack.
    let killed = Instant::now();
    let killed_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    stack.kill("main", "rempart-vrrp").unwrap();
    let log = stack.notifications_path();
    let arrived = |n: &serde_json::Value| {
        n["status"] == "firing"
            && n["alerts"].as_array().into_iter().flatten().any(|a| {
                a["labels"]["alertname"] == "InstanceDown"
                    && a["labels"]["job"] == "rempart-vrrp"
                    && a["labels"]["host"] == "main"
                    && a["status"] == "firing"
            })
    };
    let limit = Duration::from_secs(60) + 2 * interval + Duration::from_secs(2);
    let r = wait::until(limit + Duration::from_secs(20), "InstanceDown at the webhook", || {
        read_notifications(&log).unwrap_or_default().iter().any(|(_, n)| arrived(n))
    });
    let notes = read_notifications(&log).unwrap();
    assert!(r.is_ok(), "{r:?}; notifications: {notes:#?}");
    let (received, n) = notes.iter().find(|(_, n)| arrived(n)).unwrap();
    let after = received - killed_unix;
    assert!(
        after >= 60.0 && after <= limit.as_secs_f64(),
        "InstanceDown arrived {after:.1} s after the kill (for: 1m, limit {limit:?}); {:?} elapsed",
        killed.elapsed()
    );
    // Routed as deploy/alertmanager says: critical → oncall.
    assert_eq!(n["receiver"], "oncall", "{n}");
    assert_eq!(n["commonAnnotations"]["runbook_url"], "file:///usr/share/doc/rempart/emergency.md#main-down", "{n}");

    // Cleanup kills every process by pid.
    drop(stack);
    for (h, what, pid) in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "{what} on {h} (pid {pid}) survived the stack");
    }
}
