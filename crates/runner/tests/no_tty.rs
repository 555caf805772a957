//! The passphrase source never needs a terminal (issue 15): in a new session (`setsid`: no
//! controlling terminal) with standard input closed, a run opens an encrypted repository with
//! `encryption_passcommand`, and a passcommand that asks the terminal fails at once with an error
//! naming the key, instead of waiting for a person.

mod common;

use common::*;
use runner::{Action, Cancel, Outcome};
use std::io::IsTerminal;
use std::process::{Command, Stdio};

const CHILD: &str = "RUNNER_TEST_NO_TTY_CHILD";

/// Runs itself again in a new session without standard input (the child is this same test, told
/// by the environment that it is the child: no ignored test for nextest to count as skipped).
#[test]
fn passcommand_without_a_terminal() {
    if std::env::var(CHILD).as_deref() == Ok("1") {
        in_a_new_session_without_stdin();
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("setsid")
        .arg("--wait")
        .arg(&exe)
        .args(["--exact", "passcommand_without_a_terminal", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .stdin(Stdio::null())
        .output()
        .expect("setsid (util-linux)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    // the child did run its test, and it passed
    assert!(text.contains("test passcommand_without_a_terminal ... ok") && text.contains("1 passed"), "{text}");
}

/// The child's work: in a new session, without standard input.
fn in_a_new_session_without_stdin() {
    // no terminal at all: not on stdin, and no controlling terminal to open
    assert!(!std::io::stdin().is_terminal());
    let tty = std::fs::File::open("/dev/tty");
    assert!(tty.is_err(), "a controlling terminal is still there");

    let d = tempfile::tempdir().unwrap();
    let root = d.path();
    let src = source(root, 3, 5000);
    let repo_path = init_repo(root);
    let passfile = root.join("passphrase");
    std::fs::write(&passfile, format!("{PASS}\n")).unwrap();
    let cfg = config(root, &src, &repo_path, &format!("  encryption_passcommand: cat {}\n", passfile.display()), "");
    let mut opts = options(root);
    opts.actions = vec![Action::Create];
    let report = runner::run(&[cfg], &opts, &Cancel::new());
    assert_eq!(report.outcome, Outcome::Success, "{report:#?}");
    assert_eq!(report.repositories[0].create.as_ref().unwrap().stats.nfiles, 3);

    // a passcommand that would ask a person: fails, naming the key (no prompt, no hang)
    let cfg = config(root, &src, &repo_path, "  encryption_passcommand: 'cat /dev/tty'\n", "");
    let report = runner::run(&[cfg], &opts, &Cancel::new());
    assert_eq!(report.outcome, Outcome::Failed, "{report:#?}");
    let e = report.repositories[0].error.clone().unwrap();
    assert!(e.starts_with("storage.encryption_passcommand: passcommand \"cat /dev/tty\" failed"), "{e}");

    // the same source type on its own: a passcommand reading standard input gets end of file
    let p = runner::PassphraseSource::Command("read x || echo stdin-closed".into()).resolve().unwrap();
    assert_eq!(p.as_deref(), Some("stdin-closed"));
}
