//! Issue 17: `rempart-backup run` as borgmatic 1.7 is used — the default configuration paths
//! when `-c` is absent (a temporary HOME and REMPART_SYSCONF_DIR instead of /etc), and the
//! actions `init`, `list`, `info`, `extract` with borgmatic's flags.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");

fn ours(home: &Path, etc: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(home).env("HOME", home).env("REMPART_SYSCONF_DIR", etc).env_remove("XDG_CONFIG_HOME");
    for n in ["PASSPHRASE", "PASSCOMMAND", "REPO", "RSH", "KEYS_DIR", "CACHE_DIR", "BASE_DIR", "STATE_DIR"] {
        c.env_remove(format!("REMPART_{n}")).env_remove(format!("BORG_{n}"));
    }
    c
}

fn out(mut c: Command) -> (Output, String) {
    let dbg = format!("{c:?}");
    (c.output().expect("spawn"), dbg)
}

fn ok(c: Command) -> String {
    let (o, dbg) = out(c);
    assert!(o.status.success(), "{dbg}: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn config(src: &Path, repo: &Path, label: &str) -> String {
    format!(
        "location:\n  source_directories: [{}]\n  repositories: [{{path: {}, label: {label}}}]\n\
         storage:\n  encryption_passphrase: secret-{label}\n  archive_name_format: '{label}-{{now:%Y%m%d%H%M%S%f}}'\n",
        src.display(),
        repo.display()
    )
}

#[test]
fn default_config_paths_and_one_shot_actions() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let etc = h.join("etc");
    let src = h.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(src.join("sub/file"), b"content one").unwrap();
    std::fs::write(src.join("other"), b"two").unwrap();

    // nothing anywhere: borgmatic's "no configuration files" error, exit 1
    let (o, dbg) = out({
        let mut c = ours(h, &etc);
        c.args(["run", "list"]);
        c
    });
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{dbg}: {err}");
    assert!(err.contains("no configuration files found") && err.contains("borgmatic.d"), "{err}");

    // ~/.config/borgmatic/config.yaml and /etc/borgmatic.d/*.yaml, found without -c
    std::fs::create_dir_all(h.join(".config/borgmatic")).unwrap();
    std::fs::create_dir_all(etc.join("borgmatic.d")).unwrap();
    std::fs::write(h.join(".config/borgmatic/config.yaml"), config(&src, &h.join("repo-user"), "user")).unwrap();
    std::fs::write(etc.join("borgmatic.d/sys.yaml"), config(&src, &h.join("repo-sys"), "sys")).unwrap();
    std::fs::write(etc.join("borgmatic.d/README"), "not a configuration").unwrap();

    // init needs --encryption, as borgmatic's
    let (o, _) = out({
        let mut c = ours(h, &etc);
        c.args(["run", "init"]);
        c
    });
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--encryption"));
    ok({
        let mut c = ours(h, &etc);
        c.args(["run", "init", "--encryption", "repokey"]);
        c
    });
    assert!(h.join("repo-user").is_dir() && h.join("repo-sys").is_dir());
    ok({
        let mut c = ours(h, &etc);
        c.args(["run", "create"]);
        c
    });
    // list: both repositories, /etc's first (borgmatic's order), each with its passphrase
    let names: Vec<String> = ok({
        let mut c = ours(h, &etc);
        c.args(["run", "list", "--short"]);
        c
    })
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with("sys-") && names[1].starts_with("user-"), "{names:?}");
    // --repository by label, --archive latest, --path
    let base = src.strip_prefix("/").unwrap().display().to_string();
    let paths = ok({
        let mut c = ours(h, &etc);
        c.args(["run", "list", "--repository", "user", "--archive", "latest", "--short", "--path"]);
        c.arg(format!("{base}/sub"));
        c
    });
    assert_eq!(paths.lines().collect::<Vec<_>>(), [format!("{base}/sub"), format!("{base}/sub/file")], "{paths}");
    // info --archive NAME --json
    let info = ok({
        let mut c = ours(h, &etc);
        c.args(["run", "info", "--json", "--repository", "sys", "--archive", &names[0]]);
        c
    });
    assert!(info.contains(&names[0]), "{info}");
    // extract --archive latest --path P --destination D
    let dest = h.join("restore");
    std::fs::create_dir_all(&dest).unwrap();
    ok({
        let mut c = ours(h, &etc);
        c.args(["run", "extract", "--repository", "user", "--archive", "latest", "--path"]);
        c.arg(format!("{base}/sub")).arg("--destination").arg(&dest);
        c
    });
    assert_eq!(std::fs::read(dest.join(&base).join("sub/file")).unwrap(), b"content one");
    assert!(!dest.join(&base).join("other").exists(), "only --path was extracted");
    // -c still works, and a directory given with -c is read like /etc/borgmatic.d
    let one = ok({
        let mut c = ours(h, &etc);
        c.args(["run", "list", "--short", "-c"]).arg(etc.join("borgmatic.d"));
        c
    });
    assert_eq!(one.lines().collect::<Vec<_>>(), [names[0].as_str()]);
}

/// borgmatic's pattern keys reach create: `patterns` (with an `R` root), `exclude_caches`.
#[test]
fn pattern_keys_reach_create() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let etc = h.join("etc");
    for f in ["src/keep", "src/x.tmp", "src/cache/data", "extra/e"] {
        std::fs::create_dir_all(h.join(f).parent().unwrap()).unwrap();
        std::fs::write(h.join(f), b"x").unwrap();
    }
    std::fs::write(h.join("src/cache/CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55").unwrap();
    let cfg = h.join("c.yaml");
    let text = config(&h.join("src"), &h.join("repo"), "p").replace(
        "storage:",
        &format!("  patterns: ['- sh:**/*.tmp', 'R {}']\n  exclude_caches: true\nstorage:", h.join("extra").display()),
    );
    std::fs::write(&cfg, text).unwrap();
    let run = |args: &[&str]| {
        let mut c = ours(h, &etc);
        c.arg("run").arg("-c").arg(&cfg).args(args);
        ok(c)
    };
    run(&["init", "--encryption", "none"]);
    run(&["create"]);
    let mut paths: Vec<String> = run(&["list", "--archive", "latest", "--short"]).lines().map(str::to_string).collect();
    paths.sort();
    let s = h.join("src").strip_prefix("/").unwrap().display().to_string();
    let e = h.join("extra").strip_prefix("/").unwrap().display().to_string();
    assert_eq!(paths, [e.clone(), format!("{e}/e"), s.clone(), format!("{s}/keep")]);
}

/// `run mount --mount-point DIR [--archive NAME]`: the archive readable through the mount
/// (rempart-backup mount, which goes to the background), then `umount`.
#[test]
fn mount_action() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let etc = h.join("etc");
    std::fs::create_dir_all(h.join("src")).unwrap();
    std::fs::create_dir_all(h.join("mnt")).unwrap();
    std::fs::write(h.join("src/f"), b"through the mount").unwrap();
    let cfg = h.join("c.yaml");
    std::fs::write(&cfg, config(&h.join("src"), &h.join("repo"), "m")).unwrap();
    let run = |args: &[&str]| {
        let mut c = ours(h, &etc);
        c.arg("run").arg("-c").arg(&cfg).args(args);
        ok(c)
    };
    run(&["init", "--encryption", "repokey"]);
    run(&["create"]);
    let mnt = h.join("mnt");
    run(&["mount", "--archive", "latest", "--mount-point", mnt.to_str().unwrap()]);
    // unmount whatever happens below
    struct Unmount<'a>(&'a Path, &'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = ours(self.0, self.0).arg("umount").arg(self.1).output();
        }
    }
    let guard = Unmount(h, &mnt);
    let base = h.join("src").strip_prefix("/").unwrap().join("f");
    assert_eq!(std::fs::read(mnt.join(&base)).unwrap(), b"through the mount");
    drop(guard);
    assert!(!mnt.join(&base).exists(), "unmounted");
}
