//! A normal run's report has every action asked for with its outcome, duration, archive and
//! stats (issue 15), and the hooks ran in borgmatic's order.

mod common;

use common::*;
use runner::{Action, ActionOutcome, Cancel, Outcome};

#[test]
fn every_action_with_its_outcome() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let src = source(root, 6, 20_000);
    let repo_path = init_repo(root);
    let log = root.join("hooks.log");
    let extra = format!(
        "retention:\n  keep_daily: 7\nconsistency:\n  checks: [repository, archives, extract]\n\
         hooks:\n  before_backup: ['echo before_backup {{repository}} >> {0}']\n\
         \x20 after_backup: ['echo after_backup >> {0}']\n  after_everything: ['echo after_everything >> {0}']\n",
        log.display()
    );
    let cfg = config(root, &src, &repo_path, &format!("  encryption_passphrase: {PASS}\n"), &extra);
    let mut opts = options(root);
    opts.actions = vec![Action::RestoreTest, Action::Check, Action::Compact, Action::Prune, Action::Create];
    let report = runner::run(&[cfg], &opts, &Cancel::new());

    assert_eq!((report.outcome, report.exit_reason.as_str()), (Outcome::Success, "success"), "{report:#?}");
    assert_eq!(report.exit_code(), 0);
    assert!(report.errors.is_empty(), "{report:#?}");
    let r = &report.repositories[0];
    assert_eq!((r.label.as_str(), r.exit_code, r.error.as_deref()), ("r", 0, None), "{r:#?}");
    // in borgmatic's order, whatever the order asked
    let order: Vec<Action> = r.actions.iter().map(|a| a.action).collect();
    assert_eq!(order, [Action::Create, Action::Prune, Action::Compact, Action::Check, Action::RestoreTest]);
    for a in &r.actions {
        assert_eq!(a.outcome, ActionOutcome::Ok, "{a:#?}");
        assert!(a.error.is_none() && a.duration.as_nanos() > 0, "{a:#?}");
    }
    let create = r.create.as_ref().unwrap();
    assert_eq!(r.action(Action::Create).unwrap().archive.as_deref(), Some(create.name.as_str()));
    assert!(create.name.starts_with("test-"), "{}", create.name);
    assert_eq!(create.stats.nfiles, 6);
    assert_eq!(create.stats.original_size, 6 * 20_000);
    assert_eq!(r.pruned, Some(0));
    assert_eq!((r.checks.clone(), r.check_success), (vec!["repository", "archives", "extract"], Some(true)));
    let rt = r.restore_test.as_ref().unwrap();
    assert!(rt.ok() && rt.files == 6, "{rt:#?}");
    assert_eq!(r.action(Action::RestoreTest).unwrap().archive.as_deref(), Some(create.name.as_str()));
    assert_eq!(r.archives, Some(1));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("before_backup {}\nafter_backup\nafter_everything\n", repo_path.display())
    );

    // serialized for a status page
    let v = serde_json::to_value(&report).unwrap();
    assert_eq!(v["outcome"], "success");
    let actions = v["repositories"][0]["actions"].as_array().unwrap();
    let names: Vec<&str> = actions.iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(names, ["create", "prune", "compact", "check", "restore-test"]);
    assert!(actions.iter().all(|a| a["result"] == "ok" && a["duration"].as_f64().unwrap() > 0.0), "{v:#}");
    assert_eq!(v["repositories"][0]["create"]["stats"]["nfiles"], 6);

    // the metrics textfile keeps the standalone runner's families
    let m = std::fs::read_to_string(root.join("rempart_backup.prom")).unwrap();
    for family in [
        "rempart_backup_last_success_timestamp_seconds",
        "rempart_backup_last_duration_seconds",
        "rempart_backup_last_exit_code",
        "rempart_backup_last_original_bytes",
        "rempart_backup_last_deduplicated_bytes",
        "rempart_backup_archives",
        "rempart_backup_last_check_success",
        "rempart_backup_last_restore_test_success",
        "rempart_backup_last_restore_test_timestamp_seconds",
        "rempart_backup_last_restore_test_duration_seconds",
        "rempart_backup_last_restore_test_files",
        "rempart_backup_repository_reachable",
    ] {
        assert!(m.contains(&format!("# TYPE {family} gauge\n{family}{{repository=\"r\"}} ")), "{family}: {m}");
    }
    assert!(m.contains("rempart_backup_last_restore_test_files{repository=\"r\"} 6\n"), "{m}");
    assert!(m.contains("rempart_backup_repository_reachable{repository=\"r\"} 1\n"), "{m}");
    let tested = metric(&m, "rempart_backup_last_restore_test_timestamp_seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 60.0..=now).contains(&tested), "restore test at {tested}, now {now}");
    assert_eq!(metric(&m, "rempart_backup_last_restore_test_duration_seconds"), rt.duration.as_secs_f64());

    // a second run: checks are due again (no frequency), nothing is pruned, a dry run of the
    // restore test says skipped
    let mut opts = options(root);
    opts.actions = vec![Action::RestoreTest];
    opts.dry_run = true;
    let cfg = runner::load(&root.join("borgmatic.yaml")).unwrap();
    let report = runner::run(&[cfg], &opts, &Cancel::new());
    assert_eq!(report.outcome, Outcome::Success);
    assert_eq!(
        report.repositories[0].action(Action::RestoreTest).unwrap().outcome,
        ActionOutcome::Skipped("dry run".into())
    );
}

/// A failing check is recorded on its action, and the repository and the run fail.
#[test]
fn a_failed_action_names_its_error() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let src = source(root, 2, 1000);
    let repo_path = init_repo(root);
    let cfg = config(
        root,
        &src,
        &repo_path,
        &format!("  encryption_passphrase: {PASS}\n"),
        "hooks:\n  before_check: ['exit 3']\n",
    );
    let mut opts = options(root);
    opts.actions = vec![Action::Create, Action::Check, Action::RestoreTest];
    let report = runner::run(&[cfg], &opts, &Cancel::new());
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    assert_eq!(report.exit_code(), 1);
    let r = &report.repositories[0];
    assert_eq!(r.exit_code, 2);
    assert_eq!(r.actions.len(), 2, "restore-test does not start after a failure: {r:#?}");
    assert_eq!(r.actions[0].outcome, ActionOutcome::Ok);
    let check = r.action(Action::Check).unwrap();
    assert_eq!(check.outcome, ActionOutcome::Failed);
    assert_eq!(check.error.as_deref(), Some("before_check hook \"exit 3\" failed with exit status: 3"));
    assert_eq!(r.error, check.error);
}

fn metric(text: &str, family: &str) -> f64 {
    let prefix = format!("{family}{{repository=\"r\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{family} not in {text}"))
}

/// A repository that cannot be opened (here its directory is gone, as when a mount or the
/// repository host is lost) is `rempart_backup_repository_reachable 0`, apart from a failure
/// of the repository itself; the restore test's time and files are carried over from the state
/// (issue 16).
#[test]
fn an_unreachable_repository_is_reported_and_the_restore_test_time_kept() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let src = source(root, 3, 1000);
    let repo_path = init_repo(root);
    let cfg = config(root, &src, &repo_path, &format!("  encryption_passphrase: {PASS}\n"), "");
    let mut opts = options(root);
    opts.actions = vec![Action::Create, Action::RestoreTest];
    let report = runner::run(&[cfg], &opts, &Cancel::new());
    assert_eq!(report.outcome, Outcome::Success, "{report:#?}");
    assert_eq!(report.repositories[0].reachable, Some(true));
    let m = std::fs::read_to_string(root.join("rempart_backup.prom")).unwrap();
    let tested = metric(&m, "rempart_backup_last_restore_test_timestamp_seconds");

    std::fs::rename(&repo_path, root.join("elsewhere")).unwrap();
    let cfg = runner::load(&root.join("borgmatic.yaml")).unwrap();
    opts.actions = vec![Action::Create];
    let report = runner::run(&[cfg], &opts, &Cancel::new());
    let r = &report.repositories[0];
    assert_eq!((r.exit_code, r.reachable), (2, Some(false)), "{r:#?}");
    let m = std::fs::read_to_string(root.join("rempart_backup.prom")).unwrap();
    assert_eq!(metric(&m, "rempart_backup_repository_reachable"), 0.0, "{m}");
    assert_eq!(metric(&m, "rempart_backup_last_exit_code"), 2.0, "{m}");
    assert_eq!(metric(&m, "rempart_backup_last_restore_test_timestamp_seconds"), tested, "{m}");
    assert_eq!(metric(&m, "rempart_backup_last_restore_test_files"), 3.0, "{m}");

    // Reachable but failing (a wrong passphrase): the repository answered.
    std::fs::rename(root.join("elsewhere"), &repo_path).unwrap();
    let cfg = config(root, &src, &repo_path, "  encryption_passphrase: not-the-passphrase\n", "");
    let report = runner::run(&[cfg], &opts, &Cancel::new());
    let r = &report.repositories[0];
    assert_eq!((r.exit_code, r.reachable), (2, Some(true)), "{r:#?}");
    let m = std::fs::read_to_string(root.join("rempart_backup.prom")).unwrap();
    assert_eq!(metric(&m, "rempart_backup_repository_reachable"), 1.0, "{m}");
}
