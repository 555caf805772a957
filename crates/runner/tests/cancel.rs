//! A demotion stops a running backup cleanly (issue 15): the run is cancelled from a tokio task
//! while `create` is in the middle of the source tree (at a known point: the observer hands the
//! 5th item to the test and waits until the test has cancelled), and the report says
//! `cancelled: <reason>`, the checkpoint archive `NAME.checkpoint` is in the repository, and the
//! lock is free (taken again at once, with no wait, and a second run succeeds).

mod common;

use common::*;
use runner::{Action, ActionOutcome, Cancel, Event, Observer, Outcome};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Hands the 5th item to the test, then waits for the test to say it has cancelled.
struct PauseAtItem {
    items: AtomicUsize,
    reached: Mutex<mpsc::Sender<String>>,
    resume: Mutex<mpsc::Receiver<()>>,
}

impl Observer for PauseAtItem {
    fn event(&self, e: &Event<'_>) {
        if let Event::CreateItem { path, .. } = e {
            if self.items.fetch_add(1, Ordering::SeqCst) + 1 == 5 {
                let _ = self.reached.lock().unwrap().send(String::from_utf8_lossy(path).into_owned());
                let _ = self.resume.lock().unwrap().recv();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demotion_mid_create_writes_the_checkpoint_releases_the_lock_and_says_why() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    // 40 files: the cancellation at the 5th item leaves most of the tree undone
    let src = source(root, 40, 64 * 1024);
    let repo_path = init_repo(root);
    let cfg = config(root, &src, &repo_path, &format!("  encryption_passphrase: {PASS}\n"), "");
    let (reached_tx, reached_rx) = mpsc::channel();
    let (resume_tx, resume_rx) = mpsc::channel();
    let mut opts = options(root);
    opts.actions = vec![Action::Create, Action::Prune, Action::Check];
    opts.observer = Arc::new(PauseAtItem {
        items: AtomicUsize::new(0),
        reached: Mutex::new(reached_tx),
        resume: Mutex::new(resume_rx),
    });
    let cancel = Cancel::new();
    let configs = Arc::new(vec![cfg]);
    let run = tokio::spawn(runner::run_async(configs.clone(), opts, cancel.clone()));

    // the node's side: create is at its 5th item; the VRRP instance leaves MASTER
    let at = tokio::task::spawn_blocking(move || reached_rx.recv().unwrap()).await.unwrap();
    assert!(!at.is_empty());
    cancel.cancel("demoted: VRRP MASTER -> BACKUP");
    resume_tx.send(()).unwrap();
    let report = run.await.unwrap();

    assert_eq!(report.outcome, Outcome::Cancelled, "{report:#?}");
    assert_eq!(report.exit_reason, "cancelled: demoted: VRRP MASTER -> BACKUP");
    assert_eq!(report.exit_code(), 1);
    let r = &report.repositories[0];
    assert_eq!(r.exit_code, 2, "{r:#?}");
    assert!(r.error.as_deref().unwrap().starts_with("cancelled: demoted"), "{r:#?}");
    // create was cancelled with its checkpoint; prune and check never started
    assert_eq!(r.actions.len(), 1, "{r:#?}");
    let create = r.action(Action::Create).unwrap();
    assert_eq!(create.outcome, ActionOutcome::Cancelled);
    let checkpoint = create.archive.clone().expect("the checkpoint archive's name");
    assert!(checkpoint.starts_with("test-") && checkpoint.ends_with(".checkpoint"), "{checkpoint}");
    assert!(r.error.as_deref().unwrap().contains(&checkpoint), "{r:#?}");
    // the report serializes with the reason
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["outcome"], "cancelled");
    assert_eq!(json["repositories"][0]["actions"][0]["result"], "cancelled");

    // the checkpoint archive is in the repository and holds the items done before the stop
    let mut repo = open_repo(&repo_path);
    let names: Vec<String> = dedupstore::commands::list_archives(&repo).unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, std::slice::from_ref(&checkpoint));
    let index = repo.load_index().unwrap();
    let items = dedupstore::extract::archive_items(&repo, &index, &checkpoint).unwrap();
    assert!(!items.is_empty() && items.len() < 40, "{} items in the checkpoint", items.len());
    // the lock is free: taken at once without waiting
    repo.set_lock_wait(Duration::ZERO);
    drop(repo.lock().expect("the exclusive lock right after the cancelled run"));

    // the metrics say it failed, and the last success time was not moved
    let m = std::fs::read_to_string(root.join("rempart_backup.prom")).unwrap();
    assert!(m.contains("rempart_backup_last_exit_code{repository=\"r\"} 2\n"), "{m}");
    assert!(m.contains("rempart_backup_last_success_timestamp_seconds{repository=\"r\"} 0\n"), "{m}");

    // the next primary's run completes on the same repository
    let mut opts = options(root);
    opts.actions = vec![Action::Create];
    let report = runner::run_async(configs, opts, Cancel::new()).await;
    assert_eq!(report.outcome, Outcome::Success, "{report:#?}");
    assert_eq!(report.repositories[0].create.as_ref().unwrap().stats.nfiles, 40);
}

/// A token cancelled before the run starts: nothing is opened, every repository says why.
#[test]
fn cancelled_before_the_start_runs_nothing() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let src = source(root, 2, 1000);
    let repo_path = init_repo(root);
    let cfg = config(root, &src, &repo_path, &format!("  encryption_passphrase: {PASS}\n"), "");
    let cancel = Cancel::new();
    cancel.cancel("shutdown");
    let report = runner::run(&[cfg], &options(root), &cancel);
    assert_eq!((report.outcome, report.exit_reason.as_str()), (Outcome::Cancelled, "cancelled: shutdown"));
    assert_eq!(report.repositories[0].error.as_deref(), Some("cancelled: shutdown"));
    assert!(report.repositories[0].actions.is_empty());
    assert!(dedupstore::commands::list_archives(&open_repo(&repo_path)).unwrap().is_empty());
}
