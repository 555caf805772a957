//! The lab's monitoring host with the real servers (issue 16): Debian's Prometheus and
//! Alertmanager on `monitoring` with the rules and routes of `deploy/`, node_exporter and the
//! daemons on main and backup, the quorum witness. Root (network namespaces); fails without it
//! under CI.
//!
//! Faults (main's rempart-vrrp killed, the replication link cut, the witness killed, backup's
//! track script failing, at once; a damaged pack and backup's sshd stopped before; a split
//! brain after): each alert must reach the webhook no earlier than its `for:` and within `for:` plus
//! two scrape intervals (plus Alertmanager's group wait and a little slack), and a `resolved`
//! notification must follow each recovery. The measured times are printed (`--nocapture`) for
//! the table in docs/monitoring.md.
//!
//! Every command of `docs/emergency.md` in the standalone daemons' phases
//! ([`DOC_PHASES_STANDALONE`]: healthy, fault, recovered, split-brain) runs here, in the lab
//! state its block names, and must show the output the document shows; rempart-node's phases
//! run in `monitoring_node`.

use std::time::Duration;

use rempart_lab::monitor::{
    self, find_notification, query, query_range, read_notifications, unix_now, wait_targets_up, AlertMatch, Options,
    Stack,
};
use rempart_lab::monitoring::{
    dashboard_queries, deploy_dir, emergency_path, metric_names, parse_emergency, DocCommand, DOC_PHASES_STANDALONE,
};
use rempart_lab::reference;
use rempart_lab::steps::sibling_binary;
use rempart_testkit::{require_root, wait};

#[test]
fn prometheus_scrapes_every_target_and_an_alert_reaches_the_webhook() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = reference().expect("lab");
    let tmp = tempfile::tempdir().unwrap();
    let interval = Duration::from_secs(1);
    let test_start = unix_now();
    let mut stack = Stack::start(&lab, &Options { dir: tmp.path().join("monitoring"), interval }).expect("stack");
    let pids = stack.pids();

    // Every target of deploy/prometheus/prometheus.yml is scraped, up == 1.
    let r = wait_targets_up(
        &lab,
        &[
            ("node", "main"),
            ("node", "backup"),
            ("rempart-vrrp", "main"),
            ("rempart-vrrp", "backup"),
            ("rempart-repl", "main"),
            ("rempart-repl", "backup"),
            ("prometheus", "monitoring"),
            ("alertmanager", "monitoring"),
            ("rempart-witness", "monitoring"),
        ],
        Duration::from_secs(30),
    );
    assert!(r.is_ok(), "{r:?}");

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

    // The pair as in production: main Primary (its first promotion forced: fresh disks), both
    // disks UpToDate and connected, main VRRP master.
    let doc = parse_emergency(&std::fs::read_to_string(emergency_path()).unwrap()).unwrap();
    let mut ran = Vec::new();
    let repl = sibling_binary("rempart-repl").unwrap();
    let run_dir = stack.dir().join("repl-run-main");
    let o = lab
        .run("main", &[&repl.to_string_lossy(), "primary", "--force", "--run-dir", &run_dir.to_string_lossy()])
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    wait::until(Duration::from_secs(60), "r0 in sync", || {
        query(&lab, "rempart_repl_peer_disk_state == 3").is_ok_and(|v| v.len() == 2)
            && query(&lab, "rempart_repl_primary == 1").is_ok_and(|v| v.len() == 1)
    })
    .unwrap();
    run_doc_phase(&stack, &lab, &doc.commands, "healthy", &mut ran);

    // Backups: the runner on main to a repository on backup over ssh, its metrics in main's
    // node_exporter textfile; Prometheus sees the good run.
    let first_run = stack.start_backups(&lab).expect("backups");
    assert_eq!(first_run["exit_code"], 0, "{first_run}");
    wait::until(Duration::from_secs(20), "backup metrics scraped", || {
        query(&lab, r#"rempart_backup_last_exit_code{repository="backup",host="main"} == 0"#)
            .is_ok_and(|v| v.len() == 1)
            && query(&lab, "rempart_backup_last_check_success == 1").is_ok_and(|v| v.len() == 1)
    })
    .unwrap();

    // The faults, at once: main's rempart-vrrp killed, the replication link cut, the witness
    // killed. Each alert has `for: 1m`.
    let fault_at = unix_now();
    stack.kill("main", "rempart-vrrp").unwrap();
    lab.cut("main", "repl").unwrap();
    stack.kill("monitoring", "witness").unwrap();
    stack.fail_check("backup", true).unwrap();
    let log = stack.notifications_path();

    // While those wait out their `for: 1m`, the backup faults, one after the other (their
    // alerts have no `for`: they fire at the evaluation after the scrape of the run's metrics).
    let no_for_limit = 2.0 * interval.as_secs_f64() + 2.0;
    // A pack of the repository damaged on backup's disk: the next check fails.
    let pack = largest_file(&stack.repository_dir().unwrap().join("data"));
    let good = std::fs::read(&pack).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&pack, &bad).unwrap();
    let run_start = unix_now();
    let r = stack.backup_run(&lab, &["check"]).unwrap();
    let run = (run_start, unix_now());
    assert_ne!(r["exit_code"], 0, "check passed on a damaged pack: {r}");
    let check_failed: Expected = (
        "RempartBackupCheckFailed",
        &[("repository", "backup"), ("host", "main")],
        "backup-admins",
        "backup-failed-or-too-old",
        0.0,
    );
    let check_times = measure(&log, &check_failed, run, no_for_limit, || {
        std::fs::write(&pack, &good).unwrap();
        let r = stack.backup_run(&lab, &["check"]).unwrap();
        assert_eq!(r["exit_code"], 0, "check of the repaired pack: {r}");
    });
    // backup's sshd stopped: the next run cannot reach the repository.
    stack.kill("backup", "sshd").unwrap();
    let run_start = unix_now();
    let r = stack.backup_run(&lab, &["create"]).unwrap();
    let run = (run_start, unix_now());
    assert_eq!(r["exit_code"], 2, "a run without the repository host: {r}");
    let unreachable: Expected = (
        "RempartBackupRepositoryUnreachable",
        &[("repository", "backup"), ("host", "main")],
        "backup-admins",
        "repository-unreachable",
        0.0,
    );
    let unreachable_times = measure(&log, &unreachable, run, no_for_limit, || {
        stack.restart_sshd(&lab).unwrap();
        let r = stack.backup_run(&lab, &["create"]).unwrap();
        assert_eq!(r["exit_code"], 0, "a run with sshd back: {r}");
    });
    // One cause, one alert: RempartBackupFailed leaves an unreachable repository to it.
    let failed: Expected = ("RempartBackupFailed", &[("repository", "backup")], "backup-admins", "", 0.0);
    let notes = read_notifications(&log).unwrap();
    assert!(
        first_after(&notes, &failed, "firing", run.0).is_none(),
        "RempartBackupFailed fired for sshd stopped: {notes:#?}"
    );
    for (name, (fired, resolved)) in
        [("RempartBackupCheckFailed", check_times), ("RempartBackupRepositoryUnreachable", unreachable_times)]
    {
        println!(
            "measured: {name} firing {fired:.1} s after the failed run, resolved {resolved:.1} s after the good run"
        );
    }

    // (alert, labels that identify it, receiver, runbook anchor, extra delay before the condition holds)
    let expected: [Expected; 6] = [
        ("InstanceDown", &[("job", "rempart-vrrp"), ("host", "main")], "oncall", "main-down", 0.0),
        // The replicas notice the cut after their peer timeout (1 s).
        ("RempartReplDisconnected", &[("host", "main"), ("resource", "r0")], "oncall", "replication-link-down", 1.0),
        ("RempartReplDisconnected", &[("host", "backup"), ("resource", "r0")], "oncall", "replication-link-down", 1.0),
        ("RempartWitnessDown", &[("job", "rempart-witness"), ("host", "monitoring")], "ops", "quorum-lost", 0.0),
        // backup's track script fails: its priority drops by the script's weight.
        (
            "RempartVrrpPriorityBelowConfigured",
            &[("host", "backup"), ("vrrp_instance", "VI_MGMT")],
            "ops",
            "backup-down",
            0.0,
        ),
        ("RempartVrrpCheckFailing", &[("host", "backup"), ("script", "chk_service")], "ops", "backup-down", 0.0),
    ];
    let for_ = 60.0;
    // for + two scrape intervals + group_wait (1 s in the lab) + one second of evaluation slack.
    let limit = for_ + 2.0 * interval.as_secs_f64() + 2.0;
    let left = limit + 20.0 - (unix_now() - fault_at);
    let r = wait::until(Duration::from_secs_f64(left.max(1.0)), "every alert at the webhook", || {
        let notes = read_notifications(&log).unwrap_or_default();
        expected.iter().all(|e| first(&notes, e, "firing").is_some())
    });
    let notes = read_notifications(&log).unwrap();
    assert!(r.is_ok(), "{r:?}; notifications: {notes:#?}");
    let mut fired = Vec::new();
    for e in &expected {
        let (received, n) = first(&notes, e, "firing").unwrap();
        let after = received - fault_at;
        println!("measured: {} {:?} firing {after:.1} s after the fault (for: 1m)", e.0, e.1);
        assert!(
            after >= for_ && after <= limit + e.4,
            "{} {:?} arrived {after:.1} s after the fault (for: 1m, limit {limit} s)",
            e.0,
            e.1
        );
        // Routed as deploy/alertmanager says, with the runbook of docs/emergency.md.
        assert_eq!(n["receiver"], e.2, "{n}");
        let runbook = format!("file:///usr/share/doc/rempart/emergency.md#{}", e.3);
        assert_eq!(n["commonAnnotations"]["runbook_url"], runbook.as_str(), "{n}");
        fired.push(after);
    }

    // docs/emergency.md's diagnosis, with the faults in place.
    run_doc_phase(&stack, &lab, &doc.commands, "fault", &mut ran);

    // Recovery: each alert is resolved at the webhook (Prometheus sends the resolution at the
    // first evaluation without the condition; Alertmanager after its group interval, 2 s here).
    let recovered_at = unix_now();
    stack.restart(&lab, "main", "rempart-vrrp").unwrap();
    lab.heal("main", "repl").unwrap();
    stack.restart(&lab, "monitoring", "witness").unwrap();
    stack.fail_check("backup", false).unwrap();
    let resolve_limit = 2.0 * interval.as_secs_f64() + 2.0 + 10.0;
    let r = wait::until(Duration::from_secs_f64(resolve_limit + 20.0), "every alert resolved", || {
        let notes = read_notifications(&log).unwrap_or_default();
        expected.iter().all(|e| first(&notes, e, "resolved").is_some())
    });
    let notes = read_notifications(&log).unwrap();
    assert!(r.is_ok(), "{r:?}; notifications: {notes:#?}");
    for (e, fired) in expected.iter().zip(fired) {
        let (received, _) = first(&notes, e, "resolved").unwrap();
        let after = received - recovered_at;
        println!("measured: {} {:?} fired after {fired:.1} s, resolved {after:.1} s after the recovery", e.0, e.1);
        assert!(after <= resolve_limit, "{} {:?} resolved {after:.1} s after the recovery", e.0, e.1);
    }
    stack.check_running().unwrap();
    run_doc_phase(&stack, &lab, &doc.commands, "recovered", &mut ran);

    // A split brain: the link cut again, backup promoted while apart, the link healed. The
    // alert (no `for`) must reach oncall within two scrape intervals + 2 s of the detection,
    // and resolve once docs/emergency.md's split-brain blocks (diagnosis, repair, verification)
    // have run.
    lab.cut("main", "repl").unwrap();
    let repl_cmd = |host: &str, args: &[&str]| {
        let run_dir = stack.dir().join(format!("repl-run-{host}"));
        let mut argv = vec![repl.to_string_lossy().into_owned()];
        argv.extend(args.iter().map(|a| (*a).to_string()));
        argv.extend(["--run-dir".to_string(), run_dir.to_string_lossy().into_owned()]);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        lab.run(host, &argv).unwrap()
    };
    wait::until(Duration::from_secs(20), "backup sees the cut", || {
        String::from_utf8_lossy(&repl_cmd("backup", &["status"]).stdout).contains("peer connection:")
    })
    .unwrap();
    let o = repl_cmd("backup", &["primary"]);
    assert!(o.status.success(), "{o:?}");
    let heal_start = unix_now();
    lab.heal("main", "repl").unwrap();
    wait::until(Duration::from_secs(60), "the split brain detected", || {
        String::from_utf8_lossy(&repl_cmd("main", &["status", "--json"]).stdout).contains("\"split_brains\":1")
    })
    .unwrap();
    let detected = unix_now();
    let split_brain: Expected =
        ("RempartReplSplitBrain", &[("host", "main"), ("resource", "r0")], "oncall", "split-brain", 0.0);
    let (fired, resolved) = measure(&log, &split_brain, (heal_start, detected), no_for_limit, || {
        run_doc_phase(&stack, &lab, &doc.commands, "split-brain", &mut ran);
    });
    println!("measured: RempartReplSplitBrain firing {fired:.1} s after the detection, resolved {resolved:.1} s after the repair");

    // Every command of docs/emergency.md in the standalone daemons' phases ran, and showed what
    // the document shows (rempart-node's phases are monitoring_node's).
    let mine: Vec<usize> =
        doc.commands.iter().filter(|c| DOC_PHASES_STANDALONE.contains(&c.phase.as_str())).map(|c| c.line).collect();
    ran.sort_unstable();
    assert_eq!(ran, mine, "commands of docs/emergency.md not run here: {:?}", doc.commands);

    // After this drill, every dashboard query returns data over the test's time range (as the
    // panel would show it), except those that read only rempart-node's families: this lab runs
    // the standalone daemons; monitoring_node checks those panels with rempart-node.
    let mut empty = Vec::new();
    let mut node_only = Vec::new();
    for (title, exprs) in dashboard_queries(&d) {
        for e in exprs {
            let names = metric_names(&e);
            if !names.is_empty() && names.iter().all(|m| m.starts_with("rempart_node_")) {
                node_only.push(e);
                continue;
            }
            let r = query_range(&lab, &e, test_start, unix_now(), 2.0).unwrap();
            if r.is_empty() {
                empty.push(format!("{title}: {e}"));
            }
        }
    }
    assert!(empty.is_empty(), "dashboard queries without data after the drill: {empty:#?}");
    println!("dashboard: every query returned data, except rempart-node's (monitoring_node's): {node_only:?}");

    // Cleanup kills every process by pid.
    drop(stack);
    for (h, what, pid) in pids {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "));
        assert!(!alive, "{what} on {h} (pid {pid}) survived the stack");
    }
}

/// (alertname, identifying labels, receiver, runbook anchor, extra delay of the condition in s).
type Expected = (&'static str, &'static [(&'static str, &'static str)], &'static str, &'static str, f64);

/// The first notification (time received, body) to the receiver of `e` carrying the alert `e`
/// in `status`.
fn first<'a>(
    notes: &'a [(f64, serde_json::Value)],
    e: &Expected,
    status: &str,
) -> Option<&'a (f64, serde_json::Value)> {
    first_after(notes, e, status, 0.0)
}

/// [`first`] among the notifications received at or after `after` (Unix time).
fn first_after<'a>(
    notes: &'a [(f64, serde_json::Value)],
    e: &Expected,
    status: &str,
    after: f64,
) -> Option<&'a (f64, serde_json::Value)> {
    find_notification(notes, &AlertMatch { alertname: e.0, labels: e.1, receiver: e.2 }, status, after)
}

/// Runs the commands of docs/emergency.md whose block names `phase` (one of the standalone
/// daemons' phases) with the shared runner ([`monitor::run_doc_phase`]), each in its host through
/// [`Stack::run_doc_command`], and records their lines in `ran`.
fn run_doc_phase(stack: &Stack, lab: &rempart_lab::Lab, commands: &[DocCommand], phase: &str, ran: &mut Vec<usize>) {
    assert!(DOC_PHASES_STANDALONE.contains(&phase), "{phase:?} is not monitoring_lab's");
    let done = monitor::run_doc_phase(commands, phase, Duration::from_secs(20), |c| stack.run_doc_command(lab, c))
        .unwrap_or_else(|e| panic!("{e:#}"));
    for d in done {
        println!("ran docs/emergency.md:{} ({phase}) {}# {}", d.line, d.host, d.command);
        ran.push(d.line);
    }
}

/// Waits for `e` firing at the webhook after the run that failed (`run`: its start and end,
/// Unix time) and within `limit` s of its end; checks its runbook; runs `recover`; waits for `e`
/// resolved (within 15 s). Returns (firing after the failed run's end, resolved after the
/// recovery ended).
fn measure(log: &std::path::Path, e: &Expected, run: (f64, f64), limit: f64, recover: impl FnOnce()) -> (f64, f64) {
    let r = wait::until(Duration::from_secs_f64(limit + 20.0), &format!("{} firing", e.0), || {
        first_after(&read_notifications(log).unwrap_or_default(), e, "firing", run.0).is_some()
    });
    let notes = read_notifications(log).unwrap();
    assert!(r.is_ok(), "{r:?}; notifications: {notes:#?}");
    let (received, n) = first_after(&notes, e, "firing", run.0).unwrap();
    let fired = received - run.1;
    assert!(fired <= limit, "{} {:?} arrived {fired:.1} s after its cause (limit {limit} s)", e.0, e.1);
    let runbook = format!("file:///usr/share/doc/rempart/emergency.md#{}", e.3);
    assert_eq!(n["commonAnnotations"]["runbook_url"], runbook.as_str(), "{n}");
    let recovering = unix_now();
    recover();
    let recovered = unix_now();
    let r = wait::until(Duration::from_secs(35), &format!("{} resolved", e.0), || {
        first_after(&read_notifications(log).unwrap_or_default(), e, "resolved", recovering).is_some()
    });
    let notes = read_notifications(log).unwrap();
    assert!(r.is_ok(), "{r:?}; notifications: {notes:#?}");
    let resolved = first_after(&notes, e, "resolved", recovering).unwrap().0 - recovered;
    assert!(resolved <= 15.0, "{} resolved {resolved:.1} s after the recovery", e.0);
    (fired, resolved)
}

fn largest_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(e.path());
            } else if best.as_ref().is_none_or(|(n, _)| m.len() > *n) {
                best = Some((m.len(), e.path()));
            }
        }
    }
    best.expect("a pack in the repository").1
}
