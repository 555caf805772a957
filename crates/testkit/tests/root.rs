//! `require_root` skips loudly for a developer without root and fails under CI, where a skip
//! would hide a test. Checked by re-running this test binary as the unprivileged user `nobody`.

use std::process::Command;

use rempart_testkit::require_root;

/// Not a test of its own: run by `nobody_*` below in a child process as user nobody.
#[test]
fn probe_require_root() {
    if std::env::var_os("REMPART_ROOT_PROBE").is_none() {
        return; // only meaningful in the child process started below
    }
    if !require_root("the probe") {
        println!("PROBE-RETURNED-EARLY");
        return;
    }
    println!("PROBE-RAN-AS-ROOT");
}

fn run_as_nobody(ci: Option<&str>) -> std::process::Output {
    use std::os::unix::fs::PermissionsExt as _;
    // The checkout may sit under a directory that nobody cannot enter: run a copy from a
    // world-readable directory of our own.
    let dir = std::env::temp_dir().join(format!("rempart-root-probe-{}-{}", std::process::id(), ci.is_some()));
    std::fs::create_dir_all(&dir).expect("probe dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let exe = dir.join("probe");
    std::fs::copy(std::env::current_exe().expect("test binary path"), &exe).expect("copy test binary");
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = nobody(&exe, ci);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn nobody(exe: &std::path::Path, ci: Option<&str>) -> std::process::Output {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(exe)
        .current_dir("/")
        .args(["--exact", "probe_require_root", "--nocapture", "--test-threads=1"])
        .env("REMPART_ROOT_PROBE", "1")
        .env_remove("CI");
    if let Some(v) = ci {
        c.env("CI", v);
    }
    c.output().expect("setpriv (util-linux)")
}

#[test]
fn without_root_a_test_returns_early_and_says_why() {
    if !require_root("switching to user nobody") {
        return;
    }
    let out = run_as_nobody(None);
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{so}{se}");
    assert!(so.contains("PROBE-RETURNED-EARLY"), "{so}");
    assert!(se.contains("SKIPPED (not root)") && se.contains("the probe"), "{se}");
}

#[test]
fn under_ci_a_test_without_root_fails() {
    if !require_root("switching to user nobody") {
        return;
    }
    let out = run_as_nobody(Some("true"));
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "a non-root run under CI must fail: {so}{se}");
    assert!(!so.contains("PROBE-RETURNED-EARLY"));
    assert!(format!("{so}{se}").contains("CI must not skip"), "{so}{se}");
}
