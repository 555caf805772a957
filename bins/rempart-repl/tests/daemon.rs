//! One real `rempart-repl run` daemon alone on loopback (its peer never comes): what an operator
//! does to the process itself — signals, a second daemon on the same run directory, logs in a
//! file (issue 14).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rempart_testkit::wait;

mod util;

use util::{BIN, SIZE};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A daemon for resource `name` (node "main"), killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes the resource file, disk and metadata of `name` in `dir`.
fn resource(dir: &Path, name: &str) -> PathBuf {
    let (me, peer) = (free_port(), free_port());
    std::fs::write(dir.join(format!("{name}.secret")), "correct horse battery staple\n").unwrap();
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[resource]\nname = \"{name}\"\nsecret-file = \"{name}.secret\"\n\n\
             [[node]]\nname = \"main\"\naddress = \"127.0.0.1:{me}\"\ndisk = \"{name}.img\"\nnbd = \"unix:{d}/{name}.nbd\"\n\n\
             [[node]]\nname = \"backup\"\naddress = \"127.0.0.1:{peer}\"\ndisk = \"{name}-b.img\"\nnbd = \"unix:{d}/{name}-b.nbd\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::File::create(dir.join(format!("{name}.img"))).unwrap().set_len(SIZE).unwrap();
    let out = Command::new(BIN).args(["create-md", "-c"]).arg(&cfg).args(["--node", "main"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    cfg
}

fn spawn(cfg: &Path, run_dir: &Path, log: &Path) -> Child {
    Command::new(BIN)
        .args(["run", "-c"])
        .arg(cfg)
        .args(["--node", "main", "--run-dir"])
        .arg(run_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn start(dir: &Path, name: &str, run_dir: &Path) -> Daemon {
    let cfg = resource(dir, name);
    let log = dir.join(format!("{name}.log"));
    let child = spawn(&cfg, run_dir, &log);
    let d = Daemon { child, log };
    let sock = run_dir.join("repl.ctl");
    if let Err(e) = wait::until(Duration::from_secs(10), "control socket", || ctl(run_dir, &["status"]).0) {
        panic!("{e}: {} {}", sock.display(), d.log());
    }
    d
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn signal(&self, sig: &str) {
        let out = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).output().unwrap();
        assert!(out.status.success(), "kill -{sig}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn ctl(run_dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).arg("--run-dir").arg(run_dir).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Issue 14: HUP (a reload, for keepalived users), USR1 and USR2 (keepalived's dumps) used to
/// kill the daemon. Each is now logged and the daemon keeps answering.
#[test]
fn hup_usr1_and_usr2_leave_the_daemon_running_and_answering_issue_14() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut d = start(dir.path(), "r0", &run_dir);
    for (sig, logged) in [
        ("HUP", "SIGHUP: reload is not supported, ignored"),
        ("USR1", "SIGUSR1: status"),
        ("USR2", "SIGUSR2: status {"),
    ] {
        d.signal(sig);
        let r = wait::until(Duration::from_secs(10), logged, || d.log().contains(logged) || !d.alive());
        assert!(d.alive(), "SIG{sig} killed the daemon: {}", d.log());
        r.unwrap_or_else(|e| panic!("{e}: {}", d.log()));
        let (ok, text) = ctl(&run_dir, &["status"]);
        assert!(ok && text.starts_with("r0 role:Secondary"), "after SIG{sig}: {text}");
    }
    // USR1's dump is the status as `status` prints it.
    assert!(d.log().contains("r0 role:Secondary\n  disk:"), "{}", d.log());
    // Logs written to a file carry no colour codes.
    assert!(!d.log().contains('\u{1b}'), "ANSI escape in a log file: {:?}", d.log());
}

/// Issue 14: a second daemon (here another resource, the easy mistake with the default
/// `--run-dir`) pointed at a run directory in use used to replace the first one's control
/// socket. It now fails at start, says who holds the directory, and the first one is untouched.
#[test]
fn a_second_daemon_on_the_same_run_directory_fails_and_steals_nothing_issue_14() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let mut first = start(dir.path(), "r0", &run_dir);
    let cfg = resource(dir.path(), "r1");
    let log = dir.path().join("r1.log");
    let mut second = Daemon { child: spawn(&cfg, &run_dir, &log), log: log.clone() };
    let exited = wait::until(Duration::from_secs(10), "the second daemon exits", || !second.alive());
    let text = second.log();
    assert!(exited.is_ok(), "the second daemon runs: {text}");
    let status = second.child.wait().unwrap();
    assert!(!status.success(), "{text}");
    let pid = first.child.id().to_string();
    assert!(text.contains("already running") && text.contains(&pid), "unclear refusal: {text}");
    assert!(text.contains(&run_dir.display().to_string()), "the message names no run directory: {text}");
    assert!(first.alive());
    let (ok, out) = ctl(&run_dir, &["status"]);
    assert!(ok && out.starts_with("r0 role:"), "the first daemon lost its control socket: {out}");
    assert_eq!(std::fs::read_to_string(run_dir.join("repl.pid")).unwrap().trim(), pid);
    // Once the first one is gone, the directory is free again (even after SIGKILL).
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let mut third = Daemon { child: spawn(&cfg, &run_dir, &log), log: log.clone() };
    let r = wait::until(Duration::from_secs(10), "r1 answers", || {
        ctl(&run_dir, &["status"]).1.starts_with("r1 role:") || !third.alive()
    });
    r.unwrap_or_else(|e| panic!("{e}: {}", third.log()));
    assert!(third.alive(), "{}", third.log());
}
