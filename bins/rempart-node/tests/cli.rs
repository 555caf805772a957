//! `rempart-node check-config`: OK and exit 0 on the documented examples; every problem with
//! file, line and key, and exit 1, otherwise.

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples")
}

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rempart-node")).arg("check-config").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_documented_examples_are_ok() {
    let node = examples().join("node.toml");
    assert_eq!(check(&["-c", node.to_str().unwrap()]), (0, "OK\n".into(), String::new()));
    let w = examples().join("witness.toml");
    assert_eq!(check(&["--witness", "-c", w.to_str().unwrap()]), (0, "OK\n".into(), String::new()));
}

#[test]
fn a_bad_file_exits_1_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(examples().join("node.toml"))
        .unwrap()
        .replace(
            "keepalived-conf = \"vrrp-lab-main.conf\"",
            &format!("keepalived-conf = \"{}\"", examples().join("vrrp-lab-main.conf").display()),
        )
        .replace("config = \"repl-r0.toml\"", &format!("config = \"{}\"", examples().join("repl-r0.toml").display()))
        .replace("on-no-quorum = \"suspend-io\"", "on-no-quorum = \"hope\"");
    let f = dir.path().join("node.toml");
    std::fs::write(&f, &text).unwrap();
    let line = text.lines().position(|l| l.starts_with("on-no-quorum")).unwrap() + 1;
    let (code, out, err) = check(&["-c", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.is_empty());
    assert!(err.starts_with(&format!("{}:{line}: witness.on-no-quorum: \"hope\"", f.display())), "{err}");
    let (code, _, err) = check(&["-c", dir.path().join("missing.toml").to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.toml") && err.contains("cannot read"), "{err}");
}
