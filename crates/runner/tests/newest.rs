//! `newest_archives`: what `rempart-node` reads so that the next primary continues the backup
//! schedule (issue 15) — the newest complete archive whatever its name, never a checkpoint,
//! with the time its backup ended; an unreadable repository is an error, not "no archive".

mod common;

use chrono::{Duration as Days, Utc};
use common::*;
use runner::{Action, Cancel, Outcome};

#[test]
fn the_newest_complete_archive_with_its_end_time_and_never_a_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let src = source(root, 3, 10_000);
    let repo_path = init_repo(root);
    let cfg = config(root, &src, &repo_path, &format!("  encryption_passphrase: {PASS}\n"), "");

    // An empty repository: read, and nothing in it.
    let got = runner::newest_archives(std::slice::from_ref(&cfg), &options(root));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].label, "r");
    assert_eq!(got[0].newest.as_ref().unwrap(), &None);

    // A run: its archive, ended after it started and not in the future.
    let before = Utc::now();
    let mut opts = options(root);
    opts.actions = vec![Action::Create];
    let report = runner::run(std::slice::from_ref(&cfg), &opts, &Cancel::new());
    assert_eq!(report.outcome, Outcome::Success, "{report:#?}");
    let name = report.repositories[0].create.as_ref().unwrap().name.clone();
    let got = runner::newest_archives(std::slice::from_ref(&cfg), &options(root));
    let a = got[0].newest.as_ref().unwrap().clone().expect("the run's archive");
    assert_eq!(a.name, name);
    assert!(before - Days::seconds(1) <= a.start && a.start <= a.end && a.end <= Utc::now(), "{a:?}");

    // A checkpoint (a cancelled run's), even a later one, and an archive of another name
    // pattern (the peer's host): the checkpoint is never the newest, the peer's archive is.
    let repo = open_repo(&repo_path);
    let mk = |name: &str, at| {
        let mut o = dedupstore::create::CreateOptions::new(name.to_string(), vec![src.clone()]);
        o.timestamp = Some(at);
        dedupstore::create::create(&repo, &o, &mut |_| {}).unwrap();
    };
    mk("peer-host-archive", Utc::now() + Days::hours(1));
    mk("peer-host-archive-2.checkpoint", Utc::now() + Days::hours(2));
    let got = runner::newest_archives(std::slice::from_ref(&cfg), &options(root));
    let a = got[0].newest.as_ref().unwrap().clone().unwrap();
    assert_eq!(a.name, "peer-host-archive");

    // A wrong passphrase: an error, never "no archive".
    let bad = config(root, &src, &repo_path, "  encryption_passphrase: wrong\n", "");
    let got = runner::newest_archives(&[bad], &options(root));
    assert!(got[0].newest.is_err(), "{:?}", got[0].newest);
}
