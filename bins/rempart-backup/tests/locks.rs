//! Reader and writer locks between processes: `list`, `extract` and `check` share the
//! repository; `delete`, `compact` and `create` exclude readers and each other, wait up to
//! `--lock-wait`, then fail with one clear line; a lock of a killed process is removed.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");

fn ours(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("REMPART_CACHE_DIR", home.join("cache")).env_remove("REMPART_PASSCOMMAND").env_remove("REMPART_REPO");
    c
}

fn status(mut c: Command) -> (i32, String) {
    let out = c.output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `with-lock [--shared] REPO sh -c 'echo locked; read x'`, returned once the lock is held;
/// the lock is released when the child's stdin is closed.
fn hold(home: &Path, repo: &Path, shared: bool) -> Child {
    let mut c = ours(home);
    c.arg("with-lock");
    if shared {
        c.arg("--shared");
    }
    c.arg(repo).args(["sh", "-c", "echo locked; read x"]).stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    assert_eq!(line, "locked\n");
    child
}

fn release(mut child: Child) {
    child.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn readers_share_writers_exclude_wait_or_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let repo = home.join("repo");
    std::fs::create_dir(home.join("src")).unwrap();
    std::fs::write(home.join("src/file"), b"content").unwrap();
    let mut c = ours(home);
    c.args(["init", "-e", "none"]).arg(&repo);
    assert_eq!(status(c).0, 0);
    for name in ["a", "b"] {
        let mut c = ours(home);
        c.arg("create").arg(format!("{}::{name}", repo.display())).arg(home.join("src"));
        assert_eq!(status(c).0, 0);
    }

    // A reader holds the repository: other readers go ahead, writers fail clearly.
    let reader = hold(home, &repo, true);
    let mut c = ours(home);
    c.arg("list").arg("--short").arg(&repo);
    let out = c.output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\n");
    let mut c = ours(home);
    c.args(["extract", "--dry-run"]).arg(format!("{}::a", repo.display()));
    assert_eq!(status(c).0, 0);
    let mut c = ours(home);
    c.arg("check").arg(&repo);
    assert_eq!(status(c).0, 0);
    let second = hold(home, &repo, true);
    release(second);
    for args in [
        vec!["delete".to_string(), format!("{}::a", repo.display())],
        vec!["compact".into(), repo.display().to_string()],
    ] {
        let mut c = ours(home);
        c.args(["--lock-wait", "0"]).args(&args);
        let (code, err) = status(c);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("locked by a reader"), "{err}");
    }
    // A writer given time waits for the reader to finish, then proceeds.
    let mut c = ours(home);
    c.args(["--lock-wait", "60", "delete"]).arg(format!("{}::a", repo.display()));
    let mut writer = c.stderr(Stdio::piped()).spawn().unwrap();
    // it is blocked as long as the reader holds the lock
    let mut c = ours(home);
    c.arg("check").arg(&repo);
    assert_eq!(status(c).0, 0);
    assert!(writer.try_wait().unwrap().is_none(), "the writer did not wait for the reader");
    release(reader);
    assert!(writer.wait().unwrap().success());
    let mut c = ours(home);
    c.arg("list").arg("--short").arg(&repo);
    assert_eq!(String::from_utf8_lossy(&c.output().unwrap().stdout), "b\n");

    // A writer holds the repository: readers and other writers fail clearly.
    let w = hold(home, &repo, false);
    for args in
        [vec!["list".to_string(), repo.display().to_string()], vec!["extract".into(), format!("{}::b", repo.display())]]
    {
        let mut c = ours(home);
        c.args(["--lock-wait", "0"]).args(&args).current_dir(home);
        let (code, err) = status(c);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("locked by") && !err.contains("reader"), "{err}");
    }
    release(w);

    // A reader killed with -9 leaves its lock file; a writer removes it as stale.
    let mut r = hold(home, &repo, true);
    r.kill().unwrap();
    r.wait().unwrap();
    drop(r.stdin.take()); // let the orphaned `sh` finish
    assert!(std::fs::read_dir(repo.join("locks")).unwrap().count() > 0);
    let mut c = ours(home);
    c.args(["--lock-wait", "0", "compact"]).arg(&repo);
    let (code, err) = status(c);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::read_dir(repo.join("locks")).unwrap().count(), 0);
}
