//! The units shipped in deploy/systemd: `systemd-analyze verify` passes, both are `Type=notify`
//! with a watchdog, their command lines are ones the binary accepts; and the binary speaks
//! sd_notify: READY=1 once serving, WATCHDOG=1 at half `WatchdogSec`, STOPPING=1 on SIGTERM
//! (the witness here, on loopback; `run` shares the same code and is started by tests/node_faults
//! in the lab).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rempart-node");

fn unit(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd").join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn key<'a>(unit: &'a str, k: &str) -> Vec<&'a str> {
    unit.lines().filter_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('='))).collect()
}

#[test]
fn units_verify_are_notify_with_a_watchdog_and_their_command_lines_parse() {
    let d = tempfile::tempdir().unwrap();
    for (name, sub) in [("rempart-node.service", "run"), ("rempart-witness.service", "witness")] {
        let text = unit(name);
        assert_eq!(key(&text, "Type"), ["notify"], "{name}");
        assert_eq!(key(&text, "WatchdogSec").len(), 1, "{name}");
        let exec = key(&text, "ExecStart");
        assert_eq!(exec.len(), 1, "{name}");
        let words: Vec<&str> = exec[0].split_whitespace().collect();
        assert_eq!(words[1], sub, "{name}");
        // The binary accepts the arguments: a missing configuration is exit 1 naming the file
        // (not clap's usage error, 2).
        let missing: PathBuf = d.path().join("missing.toml");
        let args: Vec<String> = words[1..]
            .iter()
            .map(|w| if w.ends_with(".toml") { missing.display().to_string() } else { (*w).to_string() })
            .map(|w| {
                if w.starts_with("/run/") || w.starts_with("/var/lib/") {
                    d.path().join("x").display().to_string()
                } else {
                    w
                }
            })
            .collect();
        let out = Command::new(BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {args:?}: {err}");
        assert!(err.contains("missing.toml"), "{name}: {err}");
        let f = d.path().join(name);
        std::fs::write(&f, text.replace(words[0], BIN)).unwrap();
        let out =
            Command::new("systemd-analyze").arg("verify").arg(&f).output().expect("systemd-analyze (package systemd)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify {name}: {}\n{err}", out.status);
    }
}

fn recv_until(sock: &UnixDatagram, want: &str, limit: Duration, seen: &mut Vec<String>) -> bool {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 512];
    while Instant::now() < end {
        sock.set_read_timeout(Some(end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        if let Ok(n) = sock.recv(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = m.lines().any(|l| l == want);
            seen.push(m);
            if hit {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_witness_notifies_ready_watchdog_and_stopping() {
    let d = tempfile::tempdir().unwrap();
    let secret = d.path().join("secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let sock_path = d.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = Command::new(BIN)
        .args(["witness", "--listen", &format!("127.0.0.1:{port}"), "--secret-file"])
        .arg(&secret)
        .arg("--run-dir")
        .arg(d.path().join("run"))
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "200000")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let ready = recv_until(&sock, "READY=1", Duration::from_secs(10), &mut seen);
    // Listening when READY=1 came.
    let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let watchdog = recv_until(&sock, "WATCHDOG=1", Duration::from_secs(5), &mut seen);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let stopping = recv_until(&sock, "STOPPING=1", Duration::from_secs(5), &mut seen);
    let status = child.wait().unwrap();
    assert!(
        ready && listening && watchdog && stopping,
        "ready {ready} listening {listening} watchdog {watchdog} stopping {stopping}: {seen:?}"
    );
    assert!(status.success(), "{status}");
}
