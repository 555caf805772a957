//! `rempart-backup run -c FILE` on the borgmatic 1.7 file kept in docs/examples/borgmatic.yaml,
//! with its hooks and two repositories (a local one and one behind a real sshd with a forced
//! command), then the same file once the ssh repository is unreachable: the local one completes,
//! the exit code is borgmatic's 1, and the metrics textfile (checked by `promtool check metrics`)
//! says which repository failed. Also the restore test, check frequencies and --dry-run.

mod sshd;

use sshd::{output, Sshd, BIN};
use std::path::Path;
use std::process::{Command, Output};

const DOC: &str = include_str!("../../../docs/examples/borgmatic.yaml");

fn ours(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("REMPART_KEYS_DIR", home.join("keys"))
        .env("REMPART_CACHE_DIR", home.join("cache"))
        .env_remove("REMPART_PASSPHRASE")
        .env_remove("REMPART_PASSCOMMAND")
        .env_remove("REMPART_RSH")
        .env_remove("REMPART_METRICS_FILE")
        .env_remove("REMPART_REPO");
    c
}

fn ok(c: Command) -> Output {
    let dbg = format!("{c:?}");
    let out = output(c);
    assert!(out.status.success(), "{dbg}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

/// Replaces `from` (which must occur in the documented file) by `to`.
fn subst(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "docs/examples/borgmatic.yaml no longer contains {from:?}");
    text.replace(from, to)
}

/// The value of `name{repository="repo"}` in a textfile.
fn metric(text: &str, name: &str, repo: &str) -> Option<f64> {
    let prefix = format!("{name}{{repository=\"{repo}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse().unwrap())
}

fn promtool_check(path: &Path) {
    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(path).unwrap())
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("cache")).unwrap();
    for i in 0..20 {
        std::fs::write(root.join(format!("etc/f{i}.conf")), format!("key{i} = {}\n", "v".repeat(i * 100))).unwrap();
    }
    let big: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(root.join("data.bin"), big).unwrap();
    std::fs::write(root.join("cache/skip.bin"), b"excluded by exclude_patterns").unwrap();
    std::fs::write(root.join("notes.tmp"), b"excluded too").unwrap();
    std::os::unix::fs::symlink("etc/f1.conf", root.join("link")).unwrap();
}

#[test]
fn runner_on_the_documented_borgmatic_file_two_repositories_one_unreachable() {
    if !rempart_testkit::require_root("sshd needs root to start with its own config") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let sshd = Sshd::start(&home.join("ssh"));
    let src = home.join("src");
    write_tree(&src);
    let local = home.join("local-repo");
    let remote = sshd.url("repo");
    for repo in [local.to_str().unwrap(), remote.as_str()] {
        let mut c = ours(home);
        c.env("REMPART_PASSPHRASE", "runner-pass").env("REMPART_RSH", sshd.rsh()).args(["init", "-e", "repokey", repo]);
        ok(c);
    }
    let passfile = home.join("passphrase");
    std::fs::write(&passfile, "runner-pass\n").unwrap();
    let hooks = home.join("hooks.log");
    let mut cfg = subst(DOC, "        - /srv\n        - /etc\n", &format!("        - {}\n", src.display()));
    cfg = subst(&cfg, "/var/backups/rempart/mediaschool", local.to_str().unwrap());
    cfg = subst(&cfg, "ssh://borguser@192.168.50.20/srv/borg/mediaschool", &remote);
    cfg = subst(&cfg, "- /srv/cache", &format!("- {}", src.join("cache").display()));
    cfg = subst(&cfg, "cat /etc/rempart/passphrase", &format!("cat {}", passfile.display()));
    cfg = subst(&cfg, "ssh -i /etc/rempart/id_ed25519 -o BatchMode=yes", &sshd.rsh());
    cfg = subst(&cfg, "/var/log/rempart/hooks.log", hooks.to_str().unwrap());
    // two runs may fall in the same second
    cfg = subst(&cfg, "%H:%M:%S}'", "%H:%M:%S.%f}'");
    let cfg_path = home.join("borgmatic.yaml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    let metrics = home.join("textfile/rempart_backup.prom");
    std::fs::create_dir_all(metrics.parent().unwrap()).unwrap();
    let state = home.join("state");
    let run = |extra: &[&str]| {
        let mut c = ours(home);
        c.arg("run").arg("-c").arg(&cfg_path).arg("--metrics-file").arg(&metrics).arg("--state-dir").arg(&state);
        c.args(extra);
        c
    };

    // 1. Both repositories reachable: create, prune, compact, check and the restore test.
    let t0 = chrono::Utc::now().timestamp() as f64;
    let out = ok(run(&["--json", "--stats", "create", "prune", "compact", "check", "restore-test"]));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("unsupported key"), "the documented file must have no unsupported key: {err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let runs = v.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{v:#}");
    for (r, label) in runs.iter().zip(["local", "backup"]) {
        assert_eq!(r["repository"]["label"], label);
        assert_eq!(r["exit_code"], 0, "{r:#}");
        // 20 conf files and data.bin; cache/ and *.tmp excluded
        assert_eq!(r["create"]["stats"]["nfiles"], 21, "{r:#}");
        assert_eq!(r["check"]["success"], true, "{r:#}");
        assert_eq!(r["restore_test"]["success"], true, "{r:#}");
        assert_eq!(r["restore_test"]["files"], 21, "{r:#}");
        // the files, the symlink, the two directories
        assert_eq!(r["restore_test"]["items"], 24, "{r:#}");
        assert!(r["restore_test"]["bytes"].as_u64().unwrap() > 600_000, "{r:#}");
        assert_eq!(r["archives"], 1);
    }
    let log = std::fs::read_to_string(&hooks).unwrap();
    let events: Vec<String> = log.lines().map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(
        events,
        [
            "before_everything".to_string(),
            format!("before_backup {}", local.display()),
            format!("after_backup {}", local.display()),
            format!("before_backup {remote}"),
            format!("after_backup {remote}"),
            "after_everything".to_string(),
        ]
    );
    promtool_check(&metrics);
    let m = std::fs::read_to_string(&metrics).unwrap();
    for label in ["local", "backup"] {
        assert_eq!(metric(&m, "rempart_backup_last_exit_code", label), Some(0.0), "{m}");
        assert!(metric(&m, "rempart_backup_last_success_timestamp_seconds", label).unwrap() >= t0, "{m}");
        assert!(metric(&m, "rempart_backup_last_duration_seconds", label).unwrap() > 0.0, "{m}");
        assert!(metric(&m, "rempart_backup_last_original_bytes", label).unwrap() > 600_000.0, "{m}");
        assert!(metric(&m, "rempart_backup_last_deduplicated_bytes", label).unwrap() > 0.0, "{m}");
        assert_eq!(metric(&m, "rempart_backup_archives", label), Some(1.0), "{m}");
        assert_eq!(metric(&m, "rempart_backup_last_check_success", label), Some(1.0), "{m}");
        assert_eq!(metric(&m, "rempart_backup_last_restore_test_success", label), Some(1.0), "{m}");
    }
    let remote_success = metric(&m, "rempart_backup_last_success_timestamp_seconds", "backup").unwrap();

    // 2. A dry run changes nothing (no archive, no hook, no metrics).
    let before = std::fs::read(&metrics).unwrap();
    ok(run(&["--dry-run", "--repository", "local"]));
    assert_eq!(std::fs::read(&metrics).unwrap(), before);
    assert_eq!(std::fs::read_to_string(&hooks).unwrap(), log);

    // 2b. Through the append-only key, prune and compact are skipped with a warning (the server
    // would refuse the removals), not failed.
    let ao_cfg = home.join("borgmatic-ao.yaml");
    std::fs::write(&ao_cfg, cfg.replace(&sshd.rsh(), &sshd.rsh_with("ao"))).unwrap();
    let mut c = ours(home);
    c.arg("run").arg("-c").arg(&ao_cfg).args(["--repository", "backup", "--json", "prune", "compact"]);
    let out = ok(c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("append-only: prune skipped") && err.contains("append-only: compact skipped"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v[0]["exit_code"].as_u64(), v[0]["archives"].as_u64()), (Some(0), Some(1)), "{v:#}");

    // 3. The backup host is gone: the local repository still completes, exit code 1.
    drop(sshd);
    let out = output(run(&["--json"]));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (l, b) = (&v[0], &v[1]);
    assert_eq!(l["exit_code"], 0, "{v:#}");
    assert!(l["create"]["name"].is_string(), "{v:#}");
    // prune with keep_hourly etc.: the two archives are kept unless both fall in one hour
    let deleted = l["prune"]["deleted"].as_u64().unwrap();
    assert_eq!(deleted + l["archives"].as_u64().unwrap(), 2, "{v:#}");
    // checks have a frequency of 1 day: not due again
    assert_eq!(l["check"]["ran"], serde_json::json!([]), "{v:#}");
    assert_eq!(b["exit_code"], 2, "{v:#}");
    assert!(b["error"].as_str().unwrap().contains("connection to the server lost"), "{v:#}");
    assert!(err.contains("backup") && err.contains("FAILED"), "{err}");
    let log2 = std::fs::read_to_string(&hooks).unwrap();
    let new: Vec<&str> = log2[log.len()..].lines().map(|l| l.split_once(' ').unwrap().1).collect();
    // borgmatic's order: before_backup runs, then the connection fails, then on_error
    assert_eq!(new.len(), 6, "{new:?}");
    assert_eq!(
        new[..5],
        [
            "before_everything".to_string(),
            format!("before_backup {}", local.display()),
            format!("after_backup {}", local.display()),
            format!("before_backup {remote}"),
            new[4].to_string(),
        ]
    );
    assert!(
        new[4].starts_with(&format!("on_error {remote} ")) && new[4].contains("connection to the server lost"),
        "{new:?}"
    );
    assert_eq!(new[5], "after_everything");
    promtool_check(&metrics);
    let m = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(metric(&m, "rempart_backup_last_exit_code", "local"), Some(0.0), "{m}");
    assert_eq!(metric(&m, "rempart_backup_last_exit_code", "backup"), Some(2.0), "{m}");
    // the failed repository keeps its last success time; the local one moves on
    assert_eq!(metric(&m, "rempart_backup_last_success_timestamp_seconds", "backup"), Some(remote_success));
    assert!(metric(&m, "rempart_backup_last_success_timestamp_seconds", "local").unwrap() >= remote_success);
    assert_eq!(metric(&m, "rempart_backup_last_check_success", "local"), Some(1.0), "carried over: {m}");
    assert_eq!(metric(&m, "rempart_backup_archives", "local"), Some(2.0 - deleted as f64), "{m}");

    // 4. An invalid file: error naming the key, exit 1, nothing run.
    std::fs::write(&cfg_path, subst(&cfg, "keep_daily: 7", "keep_daily: seven")).unwrap();
    let out = output(run(&[]));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("retention.keep_daily"), "{err}");
    assert_eq!(std::fs::read_to_string(&hooks).unwrap(), log2, "hooks ran for an invalid file");

    // 5. The standalone restore test on the local repository.
    let mut c = ours(home);
    c.env("REMPART_PASSPHRASE", "runner-pass").args(["restore-test", "--json", local.to_str().unwrap()]);
    let out = ok(c);
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["success"].as_bool(), r["files"].as_u64(), r["errors"].as_array().map(Vec::len)),
        (Some(true), Some(21), Some(0))
    );
}

/// `consistency.check_last` with the `archives` check: only the newest N archives are checked.
/// The older of two archives gets a damaged metadata object: `check_last: 1` passes (it is not
/// looked at), `check_last: 2` finds it (exit 1, the check metric says failed).
#[test]
fn check_last_limits_the_archives_check_to_the_newest() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let src = home.join("src");
    write_tree(&src);
    let repo = home.join("repo");
    let mut c = ours(home);
    c.env("REMPART_PASSPHRASE", "p").args(["init", "-e", "repokey", repo.to_str().unwrap()]);
    ok(c);
    let metrics = home.join("m.prom");
    let cfg_checks = |last: u32, checks: &str| {
        let p = home.join(format!("c{last}-{}.yaml", checks.len()));
        std::fs::write(
            &p,
            format!(
                "location:\n  source_directories: [{}]\n  repositories: [{{path: {}, label: r}}]\n\
                 storage:\n  encryption_passphrase: p\n  archive_name_format: 'a-{{now:%H%M%S.%f}}'\n\
                 consistency:\n  checks: {checks}\n  check_last: {last}\n",
                src.display(),
                repo.display()
            ),
        )
        .unwrap();
        p
    };
    let cfg = |last: u32| cfg_checks(last, "[archives]");
    let run = |cfg: &Path, action: &str| {
        let mut c = ours(home);
        c.arg("run").arg("-c").arg(cfg).arg("--metrics-file").arg(&metrics).args(["--json", action]);
        output(c)
    };
    for _ in 0..2 {
        let out = run(&cfg(1), "create");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // the second archive gets a different tree, so their metadata objects differ
        std::fs::write(src.join("etc/f0.conf"), b"changed").unwrap();
    }
    // the older archive's metadata object: the first one written
    let mut objs: Vec<_> = std::fs::read_dir(repo.join("archives"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (std::fs::metadata(&p).unwrap().modified().unwrap(), p))
        .collect();
    objs.sort();
    assert_eq!(objs.len(), 2, "{objs:?}");
    let mut bytes = std::fs::read(&objs[0].1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&objs[0].1, bytes).unwrap();

    let out = run(&cfg(1), "check");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "check_last 1 must not read the damaged older archive: {v:#}");
    assert_eq!(v[0]["check"]["success"], true, "{v:#}");
    assert_eq!(
        metric(&std::fs::read_to_string(&metrics).unwrap(), "rempart_backup_last_check_success", "r"),
        Some(1.0)
    );

    // with the repository check due in the same run, the archives part still honours check_last
    let out = run(&cfg_checks(1, "[repository, archives]"), "check");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(0), "repository + archives with check_last 1: {v:#}");
    // ... and the repository check alone reads no archive at all
    let out = run(&cfg_checks(2, "[repository]"), "check");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));

    let out = run(&cfg(2), "check");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "check_last 2 reads the damaged archive: {v:#}\n{err}");
    assert_eq!(v[0]["check"]["success"], false, "{v:#}");
    assert_eq!(
        metric(&std::fs::read_to_string(&metrics).unwrap(), "rempart_backup_last_check_success", "r"),
        Some(0.0)
    );
}
