//! The monitoring host watching `rempart-node` (issue 16): `rempart-node run` on main and backup
//! (slapd on the replicated volume, [`NodeColumn`]), the witness on monitoring with its metrics on
//! :9106, Debian's Prometheus and Alertmanager with `deploy/`'s configuration as it is (the
//! `rempart-node` job on :9107; [`Daemons::Node`]), node_exporter on main and backup. Root
//! (network namespaces, mounts); fails without it.
//!
//! Faults, one after the other:
//! - maintenance on, on main: `rempart_node_maintenance` is 1 within two scrape intervals and
//!   `RempartNodeMaintenanceLeftOn` is pending in Prometheus (its `for:` is 4 h: the firing case is
//!   `deploy/prometheus/tests/node_test.yml`'s, run by `monitoring_config`); off again, it is gone;
//! - slapd broken on backup, then a planned switchover away from main: backup's take-over fails
//!   and it gives up, main takes the service back. `RempartNodeStuck` (backup, gave_up) reaches
//!   oncall within two scrape intervals + 2 s of the failure and resolves when the fault hold
//!   ends; `RempartNodeTransitionFailed` (backup, up) reaches oncall as fast (it looks back 15
//!   minutes, so it stays firing past the test). main, which handed the service over on the
//!   operator's order, shows `handing_over` and is not paged;
//! - the witness restarted with another secret (it answers, Prometheus scrapes it, no node can
//!   authenticate): `RempartNodeWitnessUnreachable` (main and backup) → ops after its `for: 1m`,
//!   `RempartNodeLeaseLost` (the serving node) → oncall after its `for: 15s` (plus the lease's
//!   remaining ttl); `RempartWitnessDown` must not fire. The right secret back: each resolves.
//!
//! Each notification must be routed as `deploy/alertmanager` says, with its runbook anchor, no
//! earlier than its `for:` and no later than `for:` + two scrape intervals + 2 s (+ the delay of
//! the condition itself). Then every dashboard query that reads `rempart_node_*` must return
//! data over the test's time range. The measured times are printed (`--no-capture`) for
//! docs/monitoring.md.
//!
//! `docs/emergency.md`'s rempart-node blocks ([`DOC_PHASES_NODE`]) run here, each at its
//! moment, through the runner `monitoring_lab` uses too: maintenance on (the blocks turn it
//! off), backup within its FAULT hold after the failed take-over, after the failure (main
//! serving, `RempartNodeTransitionFailed` firing), the witness with the wrong secret, and after
//! its recovery. Each must show what the document shows, and every such block must have run.

use std::time::Duration;

use rempart_lab::monitor::{
    find_notification, query, query_range, read_notifications, run_doc_phase, run_on_host, unix_now, wait_targets_up,
    AlertMatch, Daemons, Options, Stack as Monitoring, WITNESS_METRICS_PORT,
};
use rempart_lab::monitoring::{
    dashboard_queries, deploy_dir, emergency_path, metric_names, parse_emergency, DocCommand, DOC_PHASES_NODE,
};
use rempart_lab::node::{Failover as _, Stack, LEASE};
use rempart_lab::node_column::NodeColumn;
use rempart_lab::reference;
use rempart_testkit::{require_root, wait};

/// Prometheus's scrape and evaluation interval in this test.
const INTERVAL: Duration = Duration::from_secs(1);

/// (alertname, identifying labels, receiver, runbook anchor).
type Expected = (&'static str, &'static [(&'static str, &'static str)], &'static str, &'static str);

/// The first notification at or after `after` carrying `e` in `status`, to its receiver.
fn first_after<'a>(
    notes: &'a [(f64, serde_json::Value)],
    e: &Expected,
    status: &str,
    after: f64,
) -> Option<&'a (f64, serde_json::Value)> {
    find_notification(notes, &AlertMatch { alertname: e.0, labels: e.1, receiver: e.2 }, status, after)
}

/// Runs the commands of docs/emergency.md whose block names `phase` (one of rempart-node's) with
/// the shared runner, each in its host as an operator types it (`rempart-node` is the column's
/// binary with the host's `--run-dir`); prints what each showed and records its line in `ran`.
fn doc_phase(
    lab: &rempart_lab::Lab,
    stack: &Stack,
    col: &NodeColumn,
    commands: &[DocCommand],
    phase: &str,
    ran: &mut Vec<usize>,
) {
    assert!(DOC_PHASES_NODE.contains(&phase), "{phase:?} is not monitoring_node's");
    let done = run_doc_phase(commands, phase, Duration::from_secs(20), |c| {
        let prelude = if c.host == "monitoring" {
            String::new()
        } else {
            format!(
                "rempart-node() {{ '{}' \"$@\" --run-dir '{}'; }}\n",
                col.bin().display(),
                NodeColumn::run_dir_of(stack, &c.host).display()
            )
        };
        run_on_host(lab, &c.host, &prelude, &c.command)
    })
    .unwrap_or_else(|e| panic!("{e:#}\n{}", col.logs(stack)));
    for d in done {
        println!("ran docs/emergency.md:{} ({phase}) {}# {}\n{}", d.line, d.host, d.command, d.output);
        ran.push(d.line);
    }
}

/// Waits for each of `expected` in `status` at the webhook (after `since`), up to `limit` s
/// after `since` plus 20 s of patience; returns each one's arrival minus `since`, after
/// checking its route and runbook.
fn arrivals(log: &std::path::Path, expected: &[Expected], status: &str, since: f64, limit: f64) -> Vec<f64> {
    let left = limit + 20.0 - (unix_now() - since);
    let r = wait::until(Duration::from_secs_f64(left.max(1.0)), &format!("every alert {status}"), || {
        let notes = read_notifications(log).unwrap_or_default();
        expected.iter().all(|e| first_after(&notes, e, status, since).is_some())
    });
    let notes = read_notifications(log).unwrap();
    assert!(r.is_ok(), "{r:?}; notifications: {notes:#?}");
    expected
        .iter()
        .map(|e| {
            let (t, n) = first_after(&notes, e, status, since).unwrap();
            assert_eq!(n["receiver"], e.2, "{n}");
            let runbook = format!("file:///usr/share/doc/rempart/emergency.md#{}", e.3);
            assert_eq!(n["commonAnnotations"]["runbook_url"], runbook.as_str(), "{n}");
            t - since
        })
        .collect()
}

#[test]
fn node_alerts_reach_the_webhook_and_resolve() {
    assert!(require_root("network namespaces and mounts"), "this test needs root");
    let lab = reference().expect("lab");
    let test_start = unix_now();
    let mut stack = Stack::new(&lab).expect("stack");
    stack.prepare(&lab).expect("preparing the volume");
    let mut col = NodeColumn::new().unwrap();
    let mon_ip = rempart_lab::host("monitoring").unwrap().mgmt;
    col.witness_metrics = Some(format!("{mon_ip}:{WITNESS_METRICS_PORT}"));
    col.start(&lab, &mut stack).unwrap_or_else(|e| panic!("starting rempart-node: {e:#}\n{}", col.logs(&stack)));
    let tmp = tempfile::tempdir().unwrap();
    let opts = Options { dir: tmp.path().join("monitoring"), interval: INTERVAL };
    let mon = Monitoring::start_with(&lab, &opts, Daemons::Node).expect("monitoring host");
    let pids = mon.pids();
    let log = mon.notifications_path();

    // Every target of deploy/prometheus/prometheus.yml as it is, up.
    let r = wait_targets_up(
        &lab,
        &[
            ("node", "main"),
            ("node", "backup"),
            ("rempart-node", "main"),
            ("rempart-node", "backup"),
            ("rempart-witness", "monitoring"),
            ("prometheus", "monitoring"),
            ("alertmanager", "monitoring"),
        ],
        Duration::from_secs(30),
    );
    assert!(r.is_ok(), "{r:?}");
    // rempart-node's one /metrics carries its VRRP and replication families too, relabelled as
    // for the standalone daemons: the VRRP and replication rules run on them.
    wait::until(Duration::from_secs(20), "main serving, seen by Prometheus", || {
        query(&lab, r#"rempart_node_phase{phase="serving"} == 1"#)
            .is_ok_and(|v| v.len() == 1 && v[0]["metric"]["host"] == "main")
            && query(&lab, r#"vrid:rempart_vrrp_masters:sum{vrid="50"} == 1"#).is_ok_and(|v| v.len() == 1)
    })
    .unwrap();
    let s = query(&lab, "rempart_vrrp_state == 2").unwrap();
    assert_eq!(s.len(), 1, "{s:?}");
    assert_eq!(s[0]["metric"]["host"], "main");
    assert_eq!(s[0]["metric"]["vrrp_instance"], "VI_LDAP");
    assert!(s[0]["metric"].get("exported_instance").is_none(), "{s:?}");
    let p = query(&lab, "rempart_repl_primary == 1").unwrap();
    assert!(p.len() == 1 && p[0]["metric"]["host"] == "main", "{p:?}");
    let no_for_limit = 2.0 * INTERVAL.as_secs_f64() + 2.0;
    let doc = parse_emergency(&std::fs::read_to_string(emergency_path()).unwrap()).unwrap();
    let mut ran = Vec::new();

    // 1. Maintenance on main: the metric within two scrape intervals (+ 2 s), the alert pending.
    let on_at = unix_now();
    let (ok, text) = col.ctl(&stack, "main", &["maintenance", "on"]).unwrap();
    assert!(ok, "maintenance on: {text}");
    let pending = r#"ALERTS{alertname="RempartNodeMaintenanceLeftOn",alertstate="pending",host="main"}"#;
    wait::until(Duration::from_secs_f64(no_for_limit), "maintenance seen by Prometheus", || {
        query(&lab, r#"rempart_node_maintenance{host="main"} == 1"#).is_ok_and(|v| v.len() == 1)
    })
    .unwrap();
    let seen = unix_now() - on_at;
    wait::until(Duration::from_secs_f64(no_for_limit), "RempartNodeMaintenanceLeftOn pending", || {
        query(&lab, pending).is_ok_and(|v| v.len() == 1)
    })
    .unwrap();
    let is_pending = unix_now() - on_at;
    let status = col.status_of(&stack, "main").unwrap();
    assert_eq!(status["maintenance"], true, "{status}");
    // docs/emergency.md's "Maintenance left on": the status shows it, its blocks turn it off.
    doc_phase(&lab, &stack, &col, &doc.commands, "node-maintenance", &mut ran);
    let off_at = unix_now();
    wait::until(Duration::from_secs_f64(no_for_limit), "maintenance off and the alert gone", || {
        query(&lab, r#"rempart_node_maintenance{host="main"} == 0"#).is_ok_and(|v| v.len() == 1)
            && query(&lab, pending).is_ok_and(|v| v.is_empty())
    })
    .unwrap();
    println!(
        "measured: maintenance on → rempart_node_maintenance 1 after {seen:.1} s, RempartNodeMaintenanceLeftOn \
         pending after {is_pending:.1} s (for: 4h); off → gone after {:.1} s",
        unix_now() - off_at
    );

    // 2. A failed transition: slapd's configuration broken on backup (a typo on one host), then
    // a planned switchover away from main. backup promotes, mounts, slapd does not start: it
    // unwinds and gives the service up; main takes it back.
    let conf = stack.host("backup").slapd_conf();
    let good_conf = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(&conf, good_conf.replace("database mdb", "database mbd")).unwrap();
    let fault_at = unix_now();
    col.switchover(&lab, &stack, "main").expect("switchover");
    let r = wait::until(Duration::from_secs(60), "backup gave up", || {
        col.status_of(&stack, "backup").is_some_and(|s| !s["gave_up"].is_null() || s["phase"] == "gave_up")
    });
    assert!(r.is_ok(), "{r:?}\n{}", col.logs(&stack));
    let failed_at = unix_now();
    // docs/emergency.md's "Failover failed", within backup's FAULT hold (3 s in the lab).
    doc_phase(&lab, &stack, &col, &doc.commands, "node-gave-up", &mut ran);
    // The failed take-over is counted (the core counts an up order replaced by its unwinding
    // as failed) and RempartNodeTransitionFailed pages. It looks back 15 minutes (an event, not
    // a state), so it stays firing past this test: only its arrival is measured.
    let transition: [Expected; 1] =
        [("RempartNodeTransitionFailed", &[("host", "backup"), ("direction", "up")], "oncall", "failover-failed")];
    let t_fired = arrivals(&log, &transition, "firing", failed_at, no_for_limit);
    println!(
        "measured: RempartNodeTransitionFailed {{host=backup, direction=up}} firing {:.1} s after backup gave up",
        t_fired[0]
    );
    assert!(t_fired[0] <= no_for_limit, "RempartNodeTransitionFailed arrived {:.1} s after the failure", t_fired[0]);
    let failed: [Expected; 1] =
        [("RempartNodeStuck", &[("host", "backup"), ("phase", "gave_up")], "oncall", "failover-failed")];
    let fired = arrivals(&log, &failed, "firing", failed_at, no_for_limit);
    println!(
        "measured: RempartNodeStuck {{host=backup, phase=gave_up}} firing {:.1} s after backup gave up ({:.1} s after \
         the switchover)",
        fired[0],
        fired[0] + failed_at - fault_at
    );
    assert!(
        fired[0] <= no_for_limit,
        "RempartNodeStuck arrived {:.1} s after the failure (limit {no_for_limit} s)",
        fired[0]
    );
    // Recovery: main serves again, backup's fault hold ends (it is idle, Secondary), slapd's
    // configuration repaired: Stuck resolves.
    col.wait_phase(&stack, "main", "serving", Duration::from_secs(30)).unwrap();
    col.wait_phase(&stack, "backup", "idle", Duration::from_secs(30)).unwrap();
    let back_at = unix_now();
    std::fs::write(&conf, &good_conf).unwrap();
    let resolve_limit = 2.0 * INTERVAL.as_secs_f64() + 2.0 + 10.0;
    let resolved = arrivals(&log, &failed, "resolved", back_at, resolve_limit);
    println!("measured: RempartNodeStuck resolved {:.1} s after backup left gave_up", resolved[0]);
    assert!(resolved[0] <= resolve_limit, "RempartNodeStuck resolved {:.1} s after the recovery", resolved[0]);
    // docs/emergency.md after the failure: main serves again, backup idle with its failed
    // transition's steps, RempartNodeTransitionFailed still firing (it looks back 15 minutes).
    doc_phase(&lab, &stack, &col, &doc.commands, "node-failed", &mut ran);
    // The planned switchover's side is not paged: main showed handing_over, not gave_up.
    let main_stuck: Expected = ("RempartNodeStuck", &[("host", "main")], "oncall", "failover-failed");
    let notes = read_notifications(&log).unwrap();
    let main_fired = first_after(&notes, &main_stuck, "firing", fault_at).map(|(t, _)| t - fault_at);
    assert!(main_fired.is_none(), "the planned switchover paged: RempartNodeStuck {{host=main}} {main_fired:?}");
    let handing_over =
        query_range(&lab, r#"rempart_node_phase{host="main",phase="handing_over"} == 1"#, fault_at, unix_now(), 1.0)
            .unwrap();
    assert!(!handing_over.is_empty(), "main never showed handing_over after the switchover");

    // 3. The witness restarted with another secret: it answers (and is scraped), but neither
    // node can authenticate, so neither holds a connection or a lease.
    let wrong = tmp.path().join("wrong-witness.secret");
    std::fs::write(&wrong, "not the lab's witness secret\n").unwrap();
    let fault_at = unix_now();
    col.start_witness(&lab, &wrong).unwrap();
    let quorum: [Expected; 3] = [
        ("RempartNodeWitnessUnreachable", &[("host", "main")], "ops", "quorum-lost"),
        ("RempartNodeWitnessUnreachable", &[("host", "backup")], "ops", "quorum-lost"),
        ("RempartNodeLeaseLost", &[("host", "main")], "oncall", "quorum-lost"),
    ];
    // (for, extra delay of the condition): the lease runs out at most one ttl after the restart.
    let timing = [(60.0, 0.0), (60.0, 0.0), (15.0, LEASE.as_secs_f64())];
    let longest = 60.0 + 2.0 * INTERVAL.as_secs_f64() + 2.0;
    let fired = arrivals(&log, &quorum, "firing", fault_at, longest);
    for ((e, after), (for_, extra)) in quorum.iter().zip(&fired).zip(timing) {
        let limit = for_ + 2.0 * INTERVAL.as_secs_f64() + 2.0 + extra;
        println!("measured: {} {:?} firing {after:.1} s after the fault (for: {for_} s)", e.0, e.1);
        assert!(
            (for_..=limit).contains(after),
            "{} {:?} arrived {after:.1} s after the fault (for: {for_} s, limit {limit} s)",
            e.0,
            e.1
        );
    }
    let witness_down: Expected = ("RempartWitnessDown", &[("host", "monitoring")], "ops", "quorum-lost");
    assert!(
        first_after(&read_notifications(&log).unwrap(), &witness_down, "firing", fault_at).is_none(),
        "RempartWitnessDown fired: the witness was up, only its secret differed"
    );
    let st = col.status_of(&stack, "main").unwrap();
    assert_eq!(st["phase"], "serving", "main keeps serving with its peer: {st}");
    assert_eq!(st["quorum"]["witness_connected"], false, "{st}");
    doc_phase(&lab, &stack, &col, &doc.commands, "node-witness", &mut ran);
    // Recovery: the witness with the right secret (it grants leases after its start-up grace).
    let recovered_at = unix_now();
    col.start_witness(&lab, &stack.dir.path().join("witness.secret")).unwrap();
    let resolve_limit = 2.0 * INTERVAL.as_secs_f64() + 2.0 + 10.0 + LEASE.as_secs_f64();
    let resolved = arrivals(&log, &quorum, "resolved", recovered_at, resolve_limit);
    for (e, after) in quorum.iter().zip(&resolved) {
        println!("measured: {} {:?} resolved {after:.1} s after the recovery", e.0, e.1);
        assert!(*after <= resolve_limit, "{} {:?} resolved {after:.1} s after the recovery", e.0, e.1);
    }
    doc_phase(&lab, &stack, &col, &doc.commands, "node-recovered", &mut ran);
    // Every command of docs/emergency.md in rempart-node's phases ran here and showed what the
    // document shows (the standalone daemons' phases are monitoring_lab's).
    ran.sort_unstable();
    let mine: Vec<usize> =
        doc.commands.iter().filter(|c| DOC_PHASES_NODE.contains(&c.phase.as_str())).map(|c| c.line).collect();
    assert_eq!(ran, mine, "commands of docs/emergency.md not run here");

    // After the faults, every dashboard query over rempart-node's families returns data over the
    // test's time range (as Grafana would draw the panel).
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy_dir().join("grafana/dashboards/rempart.json")).unwrap())
            .unwrap();
    let mut checked = Vec::new();
    let mut empty = Vec::new();
    for (title, exprs) in dashboard_queries(&d) {
        for e in exprs {
            if !metric_names(&e).iter().any(|m| m.starts_with("rempart_node_")) {
                continue;
            }
            let r = query_range(&lab, &e, test_start, unix_now(), 2.0).unwrap();
            if r.is_empty() {
                empty.push(format!("{title}: {e}"));
            }
            checked.push(e);
        }
    }
    assert!(checked.len() >= 5, "the dashboard's rempart-node panels: {checked:?}");
    assert!(empty.is_empty(), "rempart-node dashboard queries without data: {empty:#?}");
    println!("dashboard: every rempart-node query returned data: {checked:?}");

    // Cleanup kills every process of the monitoring host by pid (the column and the stack tear
    // down the nodes, the mounts and the witness when dropped).
    drop(mon);
    for (h, what, pid) in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "{what} on {h} (pid {pid}) survived the stack");
    }
    drop(col);
}
