//! The monitoring configuration in `deploy/` checked with the real tools (issue 16): promtool
//! validates the Prometheus config and rules and runs the rule unit tests, amtool validates the
//! Alertmanager config and resolves where each alert goes. No skip: without promtool or amtool
//! (`scripts/deps install` brings them) these tests fail.
//!
//! Cross-checks the tools cannot do: every alert has a promtool case showing it firing and one
//! showing it not firing, every alert has a route case, the annotations every alert must carry,
//! and every metric a rule reads is one the daemons define.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rempart_lab::monitoring::{
    dashboard_queries, deploy_dir, emergency_path, exported_names, is_exported, load_rule_tests, load_rules,
    metric_names, parse_emergency, parse_route_tests, EmergencyDoc, Rules, DOC_PHASES_NODE, RUNBOOK_BASE,
};

fn run(prog: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(prog)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} ({e}); `scripts/deps install` brings it"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn prometheus_dir() -> PathBuf {
    deploy_dir().join("prometheus")
}

fn emergency() -> EmergencyDoc {
    let text = std::fs::read_to_string(emergency_path()).expect("docs/emergency.md");
    parse_emergency(&text).unwrap_or_else(|e| panic!("{e:#}"))
}

fn rules() -> Rules {
    load_rules(&prometheus_dir().join("rules")).expect("rule files")
}

#[test]
fn promtool_accepts_the_config_and_every_rule_file() {
    let dir = prometheus_dir();
    let o = run("promtool", &["check", "config", "prometheus.yml"], &dir);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // The config's rule_files glob finds every rule file (a file outside the glob would never load).
    let files = std::fs::read_dir(dir.join("rules")).unwrap().count();
    assert!(out.contains(&format!("SUCCESS: {files} rule files found")), "{out}");
    let r = rules();
    let n = r.alerts.len() + r.recorded.len();
    let counted: usize = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("SUCCESS: ")?.strip_suffix(" rules found")?.parse::<usize>().ok())
        .sum();
    assert_eq!(counted, n, "promtool and rempart_lab::monitoring read different rules: {out}");
}

#[test]
fn promtool_rule_unit_tests_pass() {
    let dir = prometheus_dir().join("tests");
    let tests = load_rule_tests(&dir).expect("test files");
    assert!(!tests.is_empty());
    let mut args = vec!["test", "rules"];
    let names: Vec<String> = tests.iter().map(|t| t.file.file_name().unwrap().to_string_lossy().into_owned()).collect();
    args.extend(names.iter().map(String::as_str));
    let o = run("promtool", &args, &dir);
    let out = text(&o);
    assert!(o.status.success() && !out.contains("FAILED"), "{out}");
    assert_eq!(out.matches("SUCCESS").count(), tests.len(), "{out}");
}

#[test]
fn every_alert_has_promtool_cases_firing_and_not_firing() {
    let dir = prometheus_dir();
    let rules = rules();
    let tests = load_rule_tests(&dir.join("tests")).expect("test files");
    // Every rule file is loaded by some test file.
    let loaded: BTreeSet<PathBuf> = tests
        .iter()
        .flat_map(|t| t.rule_files.iter().map(|p| p.canonicalize().expect("rule file of a test")))
        .collect();
    for a in &rules.alerts {
        assert!(loaded.contains(&a.file.canonicalize().unwrap()), "{} is in no test's rule_files", a.file.display());
    }
    let mut seen: BTreeMap<&str, (usize, usize)> = rules.alerts.iter().map(|a| (a.name.as_str(), (0, 0))).collect();
    for t in &tests {
        for c in &t.cases {
            let e = seen.get_mut(c.alertname.as_str()).unwrap_or_else(|| {
                panic!("{}: test {:?} names unknown alert {}", t.file.display(), c.test, c.alertname)
            });
            if c.firing {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
    }
    let missing: Vec<String> = seen
        .iter()
        .filter(|(_, (f, n))| *f == 0 || *n == 0)
        .map(|(a, (f, n))| format!("{a}: {f} firing, {n} not firing"))
        .collect();
    assert!(missing.is_empty(), "alerts without both cases: {missing:#?}");
}

#[test]
fn every_alert_is_documented_labelled_and_unique() {
    let rules = rules();
    let doc = emergency();
    assert!(rules.alerts.len() >= 29, "{}", rules.alerts.len());
    let mut names = BTreeSet::new();
    for a in &rules.alerts {
        assert!(names.insert(a.name.clone()), "alert {} defined twice", a.name);
        assert!(a.name.chars().next().is_some_and(|c| c.is_ascii_uppercase()), "{}: not CamelCase", a.name);
        assert!(
            matches!(a.labels.get("severity").map(String::as_str), Some("critical" | "warning")),
            "{}: severity {:?}",
            a.name,
            a.labels.get("severity")
        );
        assert!(a.labels.contains_key("component"), "{}: no component label", a.name);
        for k in ["summary", "description", "runbook_url"] {
            assert!(a.annotations.get(k).is_some_and(|v| !v.trim().is_empty()), "{}: no {k}", a.name);
        }
        let url = &a.annotations["runbook_url"];
        let anchor = url.strip_prefix(RUNBOOK_BASE).unwrap_or_else(|| panic!("{}: runbook_url {url}", a.name));
        // `{{ $labels.host }}-down` becomes main-down or backup-down: the rule must only match
        // those hosts (its expression says so, or it reads rempart-vrrp, which runs only there).
        let anchors: Vec<String> = if anchor == "{{ $labels.host }}-down" {
            assert!(
                a.expr.contains(r#"host=~"main|backup""#) || a.expr.contains("rempart_vrrp_"),
                "{}: {anchor} on a rule that may match another host",
                a.name
            );
            vec!["main-down".into(), "backup-down".into()]
        } else {
            vec![anchor.to_string()]
        };
        for anchor in anchors {
            assert!(
                doc.anchors.contains(&anchor),
                "{}: runbook anchor {anchor:?} is not a section of docs/emergency.md ({:?})",
                a.name,
                doc.anchors
            );
        }
    }
}

#[test]
fn every_metric_a_rule_reads_is_defined() {
    let root = deploy_dir().join("..");
    let families = exported_names(&[root.join("crates"), root.join("bins")]).expect("sources");
    for f in ["rempart_vrrp_state", "rempart_repl_out_of_sync_bytes", "rempart_backup_last_exit_code"] {
        assert!(families.contains(f), "the source scan misses {f}: {families:?}");
    }
    let rules = rules();
    let recorded: BTreeSet<&str> = rules.recorded.iter().map(|r| r.name.as_str()).collect();
    let mut unknown = Vec::new();
    let exprs =
        rules.alerts.iter().map(|a| (&a.name, &a.expr)).chain(rules.recorded.iter().map(|r| (&r.name, &r.expr)));
    for (name, expr) in exprs {
        for m in metric_names(expr) {
            let known = recorded.contains(m.as_str())
                || is_exported(&m, &families)
                // node_exporter's and Prometheus's own (checked against the real exporters in the lab).
                || ["node_filesystem_avail_bytes", "node_filesystem_size_bytes", "node_filesystem_readonly", "up"]
                    .contains(&m.as_str());
            if !known {
                unknown.push(format!("{name}: {m}"));
            }
        }
    }
    assert!(unknown.is_empty(), "rules read metrics nobody exports: {unknown:#?}");
}

#[test]
fn amtool_accepts_the_alertmanager_config() {
    let dir = deploy_dir().join("alertmanager");
    let o = run("amtool", &["check-config", "alertmanager.yml"], &dir);
    let out = text(&o);
    assert!(o.status.success() && out.contains("SUCCESS"), "{out}");
    assert!(out.contains("3 receivers") && out.contains("5 inhibit rules"), "{out}");
}

#[test]
fn every_alert_routes_to_its_receivers() {
    let dir = deploy_dir().join("alertmanager");
    let cases = parse_route_tests(&std::fs::read_to_string(dir.join("routes.tests")).unwrap()).expect("routes.tests");
    let rules = rules();
    let alerts: BTreeSet<&str> = rules.alerts.iter().map(|a| a.name.as_str()).collect();
    let listed: BTreeSet<&str> = cases.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(listed, alerts, "routes.tests and the rules name different alerts");
    for (alert, receivers) in &cases {
        let rule = rules.alerts.iter().find(|a| &a.name == alert).unwrap();
        let mut args = vec![
            "config".to_string(),
            "routes".into(),
            "test".into(),
            "--config.file=alertmanager.yml".into(),
            format!("--verify.receivers={}", receivers.join(",")),
            format!("alertname={alert}"),
            "host=main".into(),
        ];
        args.extend(rule.labels.iter().map(|(k, v)| format!("{k}={v}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run("amtool", &args, &dir);
        let out = text(&o);
        assert!(o.status.success(), "{alert} does not go to {receivers:?}: {out}");
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), receivers.join(","), "{alert}");
    }
    // The verification itself fails on a wrong receiver (so the loop above can fail).
    let o = run(
        "amtool",
        &["config", "routes", "test", "--config.file=alertmanager.yml", "--verify.receivers=ops", "severity=critical"],
        &dir,
    );
    assert!(!o.status.success(), "{}", text(&o));
}

fn dashboard() -> serde_json::Value {
    let path = deploy_dir().join("grafana/dashboards/rempart.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_dashboard_panel_queries_metrics_that_exist() {
    let d = dashboard();
    assert_eq!(d["uid"], "rempart-overview");
    let panels = dashboard_queries(&d);
    assert!(panels.len() >= 12, "{panels:?}");
    let root = deploy_dir().join("..");
    let families = exported_names(&[root.join("crates"), root.join("bins")]).expect("sources");
    let recorded: BTreeSet<String> = rules().recorded.into_iter().map(|r| r.name).collect();
    let mut unknown = Vec::new();
    for (title, exprs) in &panels {
        assert!(!exprs.is_empty() && exprs.iter().all(|e| !e.trim().is_empty()), "panel {title:?} has no query");
        for e in exprs {
            // Grafana's variables ($__rate_interval, ...) would not run against Prometheus as is.
            assert!(!e.contains('$'), "panel {title:?}: {e}");
            for m in metric_names(e) {
                if !(recorded.contains(&m) || is_exported(&m, &families) || m == "up" || m == "ALERTS") {
                    unknown.push(format!("{title}: {m}"));
                }
            }
        }
    }
    assert!(unknown.is_empty(), "dashboard queries read metrics nobody exports: {unknown:#?}");
    // The issue's views are there.
    for f in [
        "rempart_vrrp_state",
        "vrid:rempart_vrrp_become_master:increase15m",
        "rempart_repl_out_of_sync_bytes",
        "host_resource:rempart_repl_write_latency_seconds:p99_5m",
        "repository:rempart_backup_last_success_age:seconds",
        "rempart_backup_last_deduplicated_bytes",
        "rempart_backup_last_restore_test_success",
        "rempart_vrrp_configured_priority",
        "rempart_repl_split_brain",
        "rempart_repl_quorum",
        "rempart_node_step_duration_seconds",
        "rempart_node_phase",
    ] {
        assert!(panels.iter().flat_map(|(_, e)| e).any(|e| metric_names(e).contains(f)), "no panel shows {f}");
    }
}

/// promtool parses every dashboard query with Prometheus's own PromQL parser (each becomes a
/// recording rule of a temporary rule file).
#[test]
fn promtool_parses_every_dashboard_query() {
    let d = dashboard();
    let exprs: Vec<String> = dashboard_queries(&d).into_iter().flat_map(|(_, e)| e).collect();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        file.push_str(&format!(
            "      - record: dashboard:query:{i}\n        expr: {}\n",
            serde_json::to_string(e).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dashboard.yml"), file).unwrap();
    let o = run("promtool", &["check", "rules", "dashboard.yml"], dir.path());
    let out = text(&o);
    assert!(o.status.success() && out.contains(&format!("SUCCESS: {} rules found", exprs.len())), "{out}");
}

#[test]
fn dashboard_and_provisioning_agree() {
    let d = dashboard();
    let ds = std::fs::read_to_string(deploy_dir().join("grafana/provisioning/datasources/rempart.yml")).unwrap();
    let uid = ds.lines().find_map(|l| l.trim().strip_prefix("uid: ")).expect("data source uid");
    let mut ids = BTreeSet::new();
    fn walk(v: &serde_json::Value, uid: &str, ids: &mut BTreeSet<i64>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            assert!(ids.insert(p["id"].as_i64().expect("panel id")), "duplicate panel id {}", p["id"]);
            if p["type"] != "row" {
                assert_eq!(p["datasource"]["uid"], uid, "panel {}", p["title"]);
            }
            walk(p, uid, ids);
        }
    }
    walk(&d, uid, &mut ids);
    let prov = std::fs::read_to_string(deploy_dir().join("grafana/provisioning/dashboards/rempart.yml")).unwrap();
    assert!(prov.contains("path: /var/lib/grafana/dashboards/rempart"), "{prov}");
}

/// docs/emergency.md: one section per situation of issue 16, each naming the alerts that lead
/// to it; its commands are all in console blocks with a phase, which
/// `lab/tests/monitoring_lab.rs` runs (the parser refuses any other shell block).
#[test]
fn the_emergency_procedure_has_every_situation_and_only_runnable_commands() {
    let doc = emergency();
    for s in [
        "main-down",
        "backup-down",
        "replication-link-down",
        "split-brain",
        "quorum-lost",
        "failover-failed",
        "maintenance-left-on",
        "backup-failed-or-too-old",
        "repository-host-lost",
        "both-servers-lost",
        "ransomware",
    ] {
        assert!(doc.anchors.iter().any(|a| a == s), "no section {s} in docs/emergency.md: {:?}", doc.anchors);
    }
    let mut unique = BTreeSet::new();
    for a in &doc.anchors {
        assert!(unique.insert(a), "section {a} twice");
    }
    // Every alert is named in the section its runbook_url points to.
    let text = std::fs::read_to_string(emergency_path()).unwrap();
    for a in rules().alerts {
        let anchor =
            a.annotations["runbook_url"].strip_prefix(RUNBOOK_BASE).unwrap().replace("{{ $labels.host }}", "main");
        let section = text
            .split("\n## ")
            .find(|s| rempart_lab::monitoring::slug(s.lines().next().unwrap_or("")) == anchor)
            .unwrap_or_else(|| panic!("{}: no section {anchor}", a.name));
        assert!(section.contains(&format!("`{}`", a.name)), "{} is not named in section {anchor}", a.name);
    }
    assert!(doc.commands.len() >= 10, "{:?}", doc.commands);
    // Diagnosis shows what to look at: a command without output is an action (it must succeed).
    let diagnosis = doc.commands.iter().filter(|c| !c.output.is_empty()).count();
    assert!(diagnosis >= 10, "{:?}", doc.commands);
    // The sections of the situations rempart-node handles have commands monitoring_node runs
    // (the unit tests of rempart_lab::monitoring check every block's phase is run by one test).
    for s in ["main-down", "quorum-lost", "failover-failed", "maintenance-left-on"] {
        assert!(
            doc.commands.iter().any(|c| c.section == s && DOC_PHASES_NODE.contains(&c.phase.as_str())),
            "section {s} has no rempart-node command: {:?}",
            doc.commands
        );
    }
}
