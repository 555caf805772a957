//! Issue 17: borg's environment variables (`BORG_PASSPHRASE`, `BORG_PASSCOMMAND`, `BORG_REPO`,
//! `BORG_RSH`, `BORG_KEYS_DIR`, `BORG_CACHE_DIR`, `BORG_BASE_DIR`) work when the `REMPART_*` one
//! is not set, and the `REMPART_*` one wins when both are.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");

/// The binary with nothing of either family in its environment.
fn bare(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir);
    for n in ["PASSPHRASE", "PASSCOMMAND", "NEW_PASSPHRASE", "REPO", "RSH", "KEYS_DIR", "CACHE_DIR", "BASE_DIR"] {
        c.env_remove(format!("REMPART_{n}")).env_remove(format!("BORG_{n}"));
    }
    c
}

fn run(mut c: Command) -> (Output, String) {
    let dbg = format!("{c:?}");
    (c.output().expect("spawn"), dbg)
}

fn ok(c: Command) -> String {
    let (out, dbg) = run(c);
    assert!(out.status.success(), "{dbg}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn files_under(p: &Path) -> usize {
    std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| 1 + files_under(&e.path())).sum()).unwrap_or(0)
}

#[test]
fn a_repository_created_and_read_with_only_borg_variables() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    std::fs::create_dir_all(h.join("tree")).unwrap();
    std::fs::write(h.join("tree/f"), b"hello").unwrap();
    let repo = h.join("repo");
    let borg_env = |c: &mut Command| {
        c.env("BORG_PASSPHRASE", "borg-secret")
            .env("BORG_REPO", &repo)
            .env("BORG_KEYS_DIR", h.join("bkeys"))
            .env("BORG_CACHE_DIR", h.join("bcache"));
    };
    let mut c = bare(h);
    borg_env(&mut c);
    c.args(["init", "-e", "keyfile"]);
    ok(c);
    assert_eq!(std::fs::read_dir(h.join("bkeys")).unwrap().count(), 1, "the key file went to BORG_KEYS_DIR");
    let mut c = bare(h);
    borg_env(&mut c);
    c.args(["create", "::a1", "tree"]);
    ok(c);
    assert!(files_under(&h.join("bcache")) > 0, "the files cache went to BORG_CACHE_DIR");
    let mut c = bare(h);
    borg_env(&mut c);
    c.args(["list", "--short"]);
    assert_eq!(ok(c).trim(), "a1");

    // BORG_PASSCOMMAND instead of BORG_PASSPHRASE
    let mut c = bare(h);
    borg_env(&mut c);
    c.env_remove("BORG_PASSPHRASE").env("BORG_PASSCOMMAND", "echo borg-secret").args(["list", "--short"]);
    assert_eq!(ok(c).trim(), "a1");

    // precedence: a wrong REMPART_PASSPHRASE wins over the right BORG_PASSPHRASE, and the
    // other way round; REMPART_REPO wins over BORG_REPO
    let mut c = bare(h);
    borg_env(&mut c);
    c.env("REMPART_PASSPHRASE", "wrong").args(["list", "--short"]);
    let (out, dbg) = run(c);
    assert_eq!(out.status.code(), Some(2), "{dbg}: {}", String::from_utf8_lossy(&out.stderr));
    let mut c = bare(h);
    borg_env(&mut c);
    c.env("BORG_PASSPHRASE", "wrong").env("REMPART_PASSPHRASE", "borg-secret").args(["list", "--short"]);
    assert_eq!(ok(c).trim(), "a1");
    let mut c = bare(h);
    borg_env(&mut c);
    c.env("BORG_REPO", h.join("nowhere")).env("REMPART_REPO", &repo).args(["list", "--short"]);
    assert_eq!(ok(c).trim(), "a1");
    // and REMPART_KEYS_DIR over BORG_KEYS_DIR: an empty directory has no key
    let mut c = bare(h);
    borg_env(&mut c);
    c.env("REMPART_KEYS_DIR", h.join("tree")).args(["list", "--short"]);
    let (out, dbg) = run(c);
    assert_eq!(out.status.code(), Some(2), "{dbg}: {}", String::from_utf8_lossy(&out.stderr));

    // a cron line: the variables on the command line of sh, nothing else in the environment
    let line = format!(
        "BORG_PASSPHRASE=borg-secret BORG_REPO={} BORG_KEYS_DIR={} HOME={} {BIN} list --short",
        repo.display(),
        h.join("bkeys").display(),
        h.display()
    );
    let out = Command::new("sh").arg("-c").arg(&line).env_clear().env("PATH", "/usr/bin:/bin").output().unwrap();
    assert!(out.status.success(), "{line}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "a1");
}

/// `BORG_BASE_DIR` replaces HOME for the default key and cache directories; `BORG_RSH` is the
/// ssh command of a remote repository.
#[test]
fn borg_base_dir_and_borg_rsh() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    std::fs::create_dir_all(h.join("tree")).unwrap();
    std::fs::write(h.join("tree/f"), b"hello").unwrap();
    let base = h.join("base");
    let mut c = bare(h);
    c.env("BORG_BASE_DIR", &base).env("BORG_PASSPHRASE", "p").args(["init", "-e", "keyfile"]).arg(h.join("r1"));
    ok(c);
    assert_eq!(std::fs::read_dir(base.join(".config/rempart/keys")).unwrap().count(), 1);
    let mut c = bare(h);
    c.env("BORG_BASE_DIR", &base)
        .env("BORG_PASSPHRASE", "p")
        .arg("create")
        .arg(format!("{}::a", h.join("r1").display()));
    c.arg("tree");
    ok(c);
    assert!(files_under(&base.join(".cache/rempart")) > 0);

    // a fake ssh that records its arguments and runs the server here
    let log = h.join("rsh.log");
    let rsh = h.join("fake-ssh");
    std::fs::write(&rsh, format!("#!/bin/sh\necho \"$*\" >> {}\nexec {BIN} serve\n", log.display())).unwrap();
    std::fs::set_permissions(&rsh, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let remote = format!("ssh://somehost{}", h.join("r2").display());
    let mut c = bare(h);
    c.env("BORG_RSH", format!("{} -o Opt=1", rsh.display())).args(["init", "-e", "none"]).arg(&remote);
    ok(c);
    let mut c = bare(h);
    c.env("BORG_RSH", format!("{} -o Opt=1", rsh.display())).arg("create").arg(format!("{remote}::x")).arg("tree");
    ok(c);
    assert!(h.join("r2").is_dir(), "the repository was created through BORG_RSH");
    let log = std::fs::read_to_string(&log).unwrap();
    assert_eq!(log.lines().count(), 2, "{log}");
    assert!(log.lines().all(|l| l.starts_with("-o Opt=1 somehost ")), "{log}");
    // --rsh on the command line wins over BORG_RSH
    let mut c = bare(h);
    c.env("BORG_RSH", "/nonexistent-ssh").arg("--rsh").arg(&rsh).args(["list", "--short"]).arg(&remote);
    assert_eq!(ok(c).trim(), "x");
}
