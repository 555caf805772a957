//! Issue 14 ("trust"), VRRP part: signals operators send, the single-instance lock, failed
//! authentication in the log, check-config on misspelt / unsupported keywords and missing
//! interfaces, no colour codes in logs that are not a terminal.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use rempart_testkit::{require_root, wait};

fn run_dir(r: &Router) -> std::path::PathBuf {
    r.dir.join("run")
}

/// Issue 14: `kill -USR1` (keepalived's data dump) killed the daemon, leaving VIP, pid file and
/// socket. USR1 / USR2 / RTMIN+2 write dumps into the run directory, HUP reloads without a
/// transition, and the master stays master through all of them; TERM then hands over and removes
/// the VIP, the pid file and the socket.
#[test]
fn dump_signals_and_hup_keep_the_master_and_term_cleans_up() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let mut a = start_ours(&lab, "a", da.path(), &Conf::v3(150, "0.1"), &[]);
    let b = start_ours(&lab, "b", db.path(), &Conf::v3(100, "0.1"), &[]);
    wait_vip(&lab, "a", Duration::from_secs(5));
    wait::until(Duration::from_secs(3), "b BACKUP", || try_status(&lab, "b", &b)[0]["state"] == "BACKUP")
        .expect("b backup");
    let before = status_json(&lab, "a", &a);
    assert_eq!(before[0]["state"], "MASTER");
    let run = run_dir(&a);
    let pid_file = run.join("rempart-vrrp.pid");
    assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file").trim(), a.proc.pid().to_string());

    a.proc.signal(Signal::SIGUSR1);
    let data = run.join("rempart-vrrp.data");
    wait::until(Duration::from_secs(3), "data dump", || {
        std::fs::read_to_string(&data).is_ok_and(|d| d.contains("VRRP Instance = VI_1"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log(&a)));
    let d = std::fs::read_to_string(&data).expect("data");
    assert!(d.contains("   State = MASTER\n"), "{d}");
    assert!(d.contains("   Virtual Router ID = 77\n"), "{d}");
    assert!(d.contains("     10.77.0.50/24 (added)\n"), "{d}");
    assert!(log(&a).contains(&format!("SIGUSR1: data dump written to {}", data.display())), "{}", log(&a));

    a.proc.signal(Signal::SIGUSR2);
    let stats = run.join("rempart-vrrp.stats");
    wait::until(Duration::from_secs(3), "stats dump", || {
        std::fs::read_to_string(&stats).is_ok_and(|d| d.contains("VRRP Instance: VI_1"))
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log(&a)));
    let s = std::fs::read_to_string(&stats).expect("stats");
    assert!(s.contains("  Became master: 1\n"), "{s}");

    // keepalived's JSON signal (`keepalived --signum=JSON` = SIGRTMIN+2).
    let rt = nix::libc::SIGRTMIN() + 2;
    let k = sh(&format!("kill -s {rt} {}", a.proc.pid()));
    assert!(k.status.success(), "{}", String::from_utf8_lossy(&k.stderr));
    let json = run.join("rempart-vrrp.json");
    wait::until(Duration::from_secs(3), "JSON dump", || {
        std::fs::read(&json)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v[0]["state"] == "MASTER")
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log(&a)));
    // keepalived's "clear stats" (SIGRTMAX): logged, nothing else.
    let k = sh(&format!("kill -s {} {}", nix::libc::SIGRTMAX(), a.proc.pid()));
    assert!(k.status.success());
    wait::until(Duration::from_secs(3), "clear-stats logged", || log(&a).contains("SIGRTMAX")).expect("logged");

    a.proc.signal(Signal::SIGHUP);
    wait::until(Duration::from_secs(3), "reload logged", || log(&a).contains("configuration reloaded"))
        .unwrap_or_else(|e| panic!("{e}\n{}", log(&a)));

    assert!(a.proc.wait_timeout(Duration::ZERO).is_none(), "a died on a signal:\n{}", log(&a));
    let after = status_json(&lab, "a", &a);
    assert_eq!(after[0]["state"], "MASTER");
    assert_eq!(after[0]["last_transition_unix"], before[0]["last_transition_unix"], "a transition happened");
    assert_eq!(status_json(&lab, "b", &b)[0]["state"], "BACKUP");
    assert!(has_vip(&lab, "a") && !has_vip(&lab, "b"));

    a.proc.term();
    let st = a.proc.wait_timeout(Duration::from_secs(5)).expect("a did not exit on SIGTERM");
    assert!(st.success(), "exit status {st:?}\n{}", log(&a));
    assert!(!has_vip(&lab, "a"), "a kept its VIP after SIGTERM");
    assert!(!pid_file.exists(), "pid file left behind");
    assert!(!run.join("rempart-vrrp.sock").exists(), "control socket left behind");
    wait_vip(&lab, "b", Duration::from_secs(3));
    assert_eq!(status_json(&lab, "b", &b)[0]["last_reason"], "master sent priority 0");
    // Issue 14: a log written to a file carries no colour codes.
    assert!(!log(&a).contains("\x1b["), "ANSI codes in the log file:\n{}", log(&a));
}

/// Issue 14: a second daemon with the same run directory started and took over the pid file and
/// the control socket. It must refuse, naming the running pid, and leave both alone.
#[test]
fn a_second_daemon_on_the_same_run_dir_refuses_and_leaves_the_first_alone() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let da = tempdir();
    let a = start_ours(&lab, "a", da.path(), &Conf::v3(150, "0.1"), &[]);
    wait_vip(&lab, "a", Duration::from_secs(5));
    let run = run_dir(&a);
    let sock = run.join("rempart-vrrp.sock");
    wait::until(Duration::from_secs(3), "control socket", || sock.exists()).expect("socket");
    let sock_ino = std::fs::metadata(&sock).expect("socket").ino();
    let pid_file = run.join("rempart-vrrp.pid");
    let pid_before = std::fs::read_to_string(&pid_file).expect("pid file");

    let mut cmd = lab.cmd("a", bin());
    cmd.args(["--run-dir", &run.to_string_lossy(), "run", "-f", &a.conf.to_string_lossy()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut second = lab.spawn("a", cmd).expect("spawn");
    let st = second.wait_timeout(Duration::from_secs(10));
    let mut err = String::new();
    if st.is_some() {
        use std::io::Read;
        if let Some(mut e) = second.child_mut().stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
    }
    let st = st.expect("the second daemon kept running");
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("rempart-vrrp: error: already running (pid {}) with run directory", a.proc.pid())),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&pid_file).expect("pid file"), pid_before);
    assert_eq!(std::fs::metadata(&sock).expect("socket").ino(), sock_ino, "socket replaced");
    assert_eq!(status_json(&lab, "a", &a)[0]["state"], "MASTER");
    assert!(has_vip(&lab, "a"));
}

/// Issue 14: a wrong `auth_pass` makes two masters and was only counted. The first failure is
/// logged with peer, interface and VRID; the following ones are not logged one by one.
#[test]
fn wrong_auth_pass_is_logged_once_with_peer_interface_and_vrid() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let a = start_ours(&lab, "a", da.path(), &Conf::v2_pass(150), &[]);
    let mut cb = Conf::v2_pass(100);
    cb.auth_pass = Some("wrongpw");
    let _b = start_ours(&lab, "b", db.path(), &cb, &[]);
    // Both become master: that is what a wrong password does.
    wait_vip(&lab, "a", Duration::from_secs(6));
    wait_vip(&lab, "b", Duration::from_secs(6));
    // Until a has dropped at least 5 of b's adverts (the stats dump counts them).
    let stats = run_dir(&a).join("rempart-vrrp.stats");
    let failures = || {
        a.proc.signal(Signal::SIGUSR2);
        std::fs::read_to_string(&stats)
            .ok()
            .and_then(|s| {
                let i = s.find("Authentication Errors:")?;
                s[i..].lines().nth(1)?.trim().strip_prefix("Failure: ")?.parse::<u64>().ok()
            })
            .unwrap_or(0)
    };
    wait::until(Duration::from_secs(15), "5 authentication failures counted", || failures() >= 5)
        .unwrap_or_else(|e| panic!("{e}\n{}", log(&a)));
    let l = log(&a);
    let lines: Vec<&str> = l.lines().filter(|x| x.contains("authentication failed")).collect();
    assert_eq!(lines.len(), 1, "not logged once:\n{l}");
    assert!(lines[0].contains(" WARN "), "{}", lines[0]);
    assert!(lines[0].contains("advert from 10.77.0.2 on lan0 for VRID 78 dropped"), "{}", lines[0]);
}

fn check_config(text: &str, extra: &[&str]) -> (Option<i32>, String, String, std::path::PathBuf, tempfile::TempDir) {
    let d = tempdir();
    let p = d.path().join("keepalived.conf");
    std::fs::write(&p, text).expect("write");
    let out = Command::new(bin())
        .arg("check-config")
        .args(extra)
        .arg("-f")
        .arg(&p)
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into(), p, d)
}

const INSTANCE: &str =
    "vrrp_instance VI_1 {\n  interface lo\n  virtual_router_id 51\n  virtual_ipaddress {\n    10.9.9.9\n  }\n";

/// Issue 14: `check-config` exited 0 on `priorty`, on `vrrp_instanse` ("0 instances") and on
/// keywords it ignores that change failover. Each is an error naming file, line and keyword,
/// printed once; `--lenient` turns them into warnings.
#[test]
fn check_config_refuses_misspelt_and_unsupported_keywords() {
    let (code, _, err, p, _d) = check_config(&format!("{INSTANCE}  priorty 150\n}}\n"), &[]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "rempart-vrrp: error: 1 problem(s):\n  {}:7: priorty: unknown keyword in vrrp_instance (did you mean \
             priority?) (--lenient ignores it)\n",
            p.display()
        )
    );

    let (code, out, err, _, _d) =
        check_config(&format!("{}}}\n", INSTANCE.replace("vrrp_instance", "vrrp_instanse")), &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains(":1: vrrp_instanse: unknown keyword in the top level (did you mean vrrp_instance?)"), "{err}");
    assert!(err.contains("configuration: no vrrp_instance: nothing to run"), "{err}");

    for kw in [
        "use_vmac",
        "track_file {\n    f\n  }",
        "track_process {\n    p\n  }",
        "virtual_routes {\n    10.1.0.0/16 via 10.9.9.1\n  }",
    ] {
        let (code, _, err, _, _d) = check_config(&format!("{INSTANCE}  {kw}\n}}\n"), &[]);
        let word = kw.split_whitespace().next().unwrap_or_default();
        assert_eq!(code, Some(1), "{kw}: {err}");
        assert!(
            err.contains(&format!(":7: {word}: keepalived feature not supported by rempart-vrrp in vrrp_instance")),
            "{err}"
        );
    }

    // --lenient: exit 0, the same remark as a warning.
    let (code, out, err, p, _d) = check_config(&format!("{INSTANCE}  use_vmac\n}}\n"), &["--lenient"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("OK (1 instance(s)"), "{out}");
    assert!(err.contains(&format!("rempart-vrrp: warning: {}:7: use_vmac: keepalived feature", p.display())), "{err}");
    assert!(err.ends_with("(ignored: --lenient)\n"), "{err}");

    // Harmless keepalived keywords stay warnings.
    let (code, _, err, _, _d) =
        check_config(&format!("global_defs {{\n  notification_email {{\n    a@b\n  }}\n}}\n{INSTANCE}}}\n"), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains(":2: notification_email: not supported in global_defs, ignored"), "{err}");
}

/// Issue 14: a missing interface passed `check-config`; `run` refuses it with the same message.
#[test]
fn check_config_and_run_report_a_missing_interface_with_its_instance() {
    let text = format!("{}}}\n", INSTANCE.replace("interface lo", "interface nosuch0"));
    let (code, _, err, p, _d) = check_config(&text, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err,
        format!(
            "rempart-vrrp: error: 1 problem(s):\n  {}:1 (vrrp_instance VI_1): interface nosuch0 does not exist here\n",
            p.display()
        )
    );
    let d = tempdir();
    let out = Command::new(bin())
        .args(["--run-dir", &d.path().join("run").to_string_lossy(), "run", "-f", &p.to_string_lossy()])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("interface nosuch0 does not exist here"));
    assert!(!d.path().join("run/rempart-vrrp.pid").exists(), "pid file written for a refused config");
}

/// Issue 14: anyhow's `{:#}` printed a cause twice ("X: No such file ...: No such file ...").
#[test]
fn an_error_is_printed_once() {
    let d = tempdir();
    let p = d.path().join("none.conf");
    let out = Command::new(bin()).args(["check-config", "-f", &p.to_string_lossy()]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("rempart-vrrp: error: cannot read {}: No such file or directory (os error 2)\n", p.display())
    );
}

/// Issue 14: logs carried ANSI colour codes when stderr was a file or a pipe (the journal).
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let d = tempdir();
    let p = d.path().join("k.conf");
    // A harmless keyword (logged as a warning by `run`) and an interface that does not exist (so
    // that `run` stops before it needs root).
    std::fs::write(
        &p,
        format!(
            "global_defs {{\n  smtp_server 10.0.0.1\n}}\n{}}}\n",
            INSTANCE.replace("interface lo", "interface nosuch0")
        ),
    )
    .expect("write");
    let out = Command::new(bin())
        .args(["--run-dir", &d.path().join("run").to_string_lossy(), "run", "-f", &p.to_string_lossy()])
        .env("RUST_LOG", "info")
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("smtp_server: not supported in global_defs"), "{err}");
    assert!(!err.contains('\x1b'), "colour codes in a pipe: {err:?}");
}
