//! The schedule shipped in deploy/: the systemd service + timer pass `systemd-analyze verify`,
//! the timer is hourly and persistent, the cron.d lines are valid cron syntax (hourly run, weekly restore test), and the command
//! line both run is one the binary accepts.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy().join(rel)).unwrap_or_else(|e| panic!("deploy/{rel}: {e}"))
}

fn key<'a>(unit: &'a str, k: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('='))).collect()
}

/// The arguments after the program name of the runner's command in a shell line.
fn runner_args(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| w.ends_with("rempart-backup")).expect("rempart-backup in the command");
    words[at + 1..].iter().take_while(|w| !w.starts_with(">>") && !w.starts_with("2>")).map(|w| w.to_string()).collect()
}

/// The binary accepts the arguments: with a configuration file that does not exist it exits 1
/// (borgmatic's "failed") naming the file, not 2 (usage error).
fn binary_accepts(args: &[String], tmp: &Path) {
    let missing = tmp.join("no-such-config.yaml");
    let args: Vec<String> = args
        .iter()
        .map(|a| {
            if a == "/etc/rempart/borgmatic.yaml" {
                missing.display().to_string()
            } else if a.ends_with(".prom") {
                tmp.join("m.prom").display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let out = Command::new(BIN).args(&args).env("REMPART_STATE_DIR", tmp.join("state")).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains("no-such-config.yaml") && err.contains("nothing was run"), "{err}");
}

/// Writes `<name>.service` (its ExecStart program pointed at the built binary: systemd-analyze
/// checks that it exists) and `<name>.timer` into `dir`, and asserts `systemd-analyze verify`
/// passes on both without a word.
fn verify_units(dir: &Path, name: &str, service: &str, exec: &str, timer: &str) {
    let installed = exec.split_whitespace().next().unwrap();
    let (svc, tmr) = (dir.join(format!("{name}.service")), dir.join(format!("{name}.timer")));
    std::fs::write(&svc, service.replace(installed, BIN)).unwrap();
    std::fs::write(&tmr, timer).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&svc)
        .arg(&tmr)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify {name}: {}\n{err}", out.status);
}

#[test]
fn systemd_units_verify_and_the_timer_is_hourly_and_persistent() {
    let service = read("systemd/rempart-backup.service");
    let timer = read("systemd/rempart-backup.timer");
    assert_eq!(key(&timer, "OnCalendar"), ["hourly"]);
    assert_eq!(key(&timer, "Persistent"), ["true"]);
    assert_eq!(key(&service, "Type"), ["oneshot"]);
    let exec = key(&service, "ExecStart");
    assert_eq!(exec.len(), 1);
    let d = tempfile::tempdir().unwrap();
    binary_accepts(&runner_args(exec[0]), d.path());
    verify_units(d.path(), "rempart-backup", &service, exec[0], &timer);
    // and it does catch a broken timer
    std::fs::write(d.path().join("rempart-backup.timer"), timer.replace("OnCalendar=hourly", "OnCalendar=hourlyy"))
        .unwrap();
    let out =
        Command::new("systemd-analyze").arg("verify").arg(d.path().join("rempart-backup.timer")).output().unwrap();
    assert!(!out.status.success());
}

/// The weekly restore test (the restore-test alerts expect one at least every 8 days): the
/// service runs the restore-test action with the same configuration and metrics file as the
/// hourly run, the timer is weekly and persistent, and both pass `systemd-analyze verify`.
#[test]
fn the_restore_test_units_verify_and_run_weekly() {
    let hourly = read("systemd/rempart-backup.service");
    let service = read("systemd/rempart-backup-restore-test.service");
    let timer = read("systemd/rempart-backup-restore-test.timer");
    assert_eq!(key(&timer, "OnCalendar"), ["Sun *-*-* 04:00:00"]);
    assert_eq!(key(&timer, "Persistent"), ["true"]);
    let exec = key(&service, "ExecStart");
    assert_eq!(exec.len(), 1);
    let args = runner_args(exec[0]);
    assert_eq!(args.last().map(String::as_str), Some("restore-test"), "{args:?}");
    let hourly_args = runner_args(key(&hourly, "ExecStart")[0]);
    assert_eq!(args[..args.len() - 1], hourly_args[..], "same configuration, metrics file and verbosity");
    let d = tempfile::tempdir().unwrap();
    binary_accepts(&args, d.path());
    verify_units(d.path(), "rempart-backup-restore-test", &service, exec[0], &timer);
    // The calendar expression is one systemd understands, weekly.
    let out = Command::new("systemd-analyze")
        .args(["calendar", "--iterations=2", key(&timer, "OnCalendar")[0]])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("Sun"), "{text}");
}

/// One cron time field: `*`, `N`, `N-M`, lists, `/step`, within `lo..=hi`.
fn cron_field_ok(f: &str, lo: u32, hi: u32) -> bool {
    f.split(',').all(|part| {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (part, None),
        };
        if step.is_some_and(|s| s.parse::<u32>().map_or(true, |s| s == 0 || s > hi)) {
            return false;
        }
        let num = |s: &str| s.parse::<u32>().ok().filter(|n| (lo..=hi).contains(n));
        match range.split_once('-') {
            _ if range == "*" => true,
            Some((a, b)) => matches!((num(a), num(b)), (Some(a), Some(b)) if a <= b),
            None => num(range).is_some(),
        }
    })
}

#[test]
fn cron_d_lines_are_valid_hourly_and_weekly() {
    let text = read("cron.d/rempart-backup");
    let mut jobs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let first = line.split_whitespace().next().unwrap();
        if first.contains('=') {
            let (k, _) = first.split_once('=').unwrap();
            assert!(k.chars().all(|c| c.is_ascii_uppercase() || c == '_'), "bad variable line {line:?}");
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert!(f.len() > 6, "{line:?}: five time fields, a user and a command");
        for (v, lo, hi) in [(f[0], 0, 59), (f[1], 0, 23), (f[2], 1, 31), (f[3], 1, 12), (f[4], 0, 7)] {
            assert!(cron_field_ok(v, lo, hi), "{line:?}: bad field {v:?}");
        }
        assert_eq!(f[5], "root", "{line:?}: cron.d lines name the user");
        assert!(!line.contains('%'), "{line:?}: an unescaped % ends a cron command");
        jobs.push(line.to_string());
    }
    assert_eq!(jobs.len(), 2, "the hourly run and the weekly restore test: {jobs:?}");
    let f: Vec<&str> = jobs[0].split_whitespace().collect();
    assert!(f[0].parse::<u32>().is_ok() && f[1..5] == ["*", "*", "*", "*"], "hourly: {}", jobs[0]);
    let w: Vec<&str> = jobs[1].split_whitespace().collect();
    assert!(w[0].parse::<u32>().is_ok() && w[1].parse::<u32>().is_ok() && w[2..4] == ["*", "*"], "weekly: {}", jobs[1]);
    assert!(w[4].parse::<u32>().is_ok_and(|d| d <= 7), "weekly: {}", jobs[1]);
    let d = tempfile::tempdir().unwrap();
    binary_accepts(&runner_args(&jobs[0]), d.path());
    let weekly = runner_args(&jobs[1]);
    assert_eq!(weekly.last().map(String::as_str), Some("restore-test"), "{weekly:?}");
    binary_accepts(&weekly, d.path());
    // the checker itself rejects what cron rejects
    assert!(!cron_field_ok("60", 0, 59) && !cron_field_ok("*/0", 0, 59) && !cron_field_ok("5-2", 0, 59));
    assert!(cron_field_ok("*/15", 0, 59) && cron_field_ok("1,2,10-20/2", 0, 59));
}
