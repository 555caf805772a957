//! Issue 17: borg 1.2's pattern switches of `create` — the same tree and the same patterns given
//! to borg 1.2.4 and to rempart-backup archive the same set of paths, for every style (`fm:`,
//! `sh:`, `re:`, `pp:`, `pf:`), `+ - !` lines, `R` roots, `P` default styles, tags.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");

fn ok(mut c: Command) -> String {
    let dbg = format!("{c:?}");
    let out = c.output().expect("spawn");
    assert!(out.status.success(), "{dbg}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ours(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(home)
        .env("REMPART_KEYS_DIR", home.join("keys"))
        .env("REMPART_CACHE_DIR", home.join("cache"))
        .env_remove("REMPART_PASSPHRASE")
        .env_remove("REMPART_PASSCOMMAND")
        .env_remove("REMPART_REPO");
    c
}

fn borg(home: &Path) -> Command {
    let mut c = Command::new("borg");
    c.current_dir(home)
        .env("BORG_BASE_DIR", home.join("borgbase"))
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
    c
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn sorted(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().filter(|l| !l.is_empty()).map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn create_patterns_archive_the_same_paths_as_borg_1_2_4() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    let t = h.join("tree");
    for f in [
        "a.txt",
        "a.tmp",
        "sub/x.o",
        "sub/keep/k.txt",
        "sub/keep/k.o",
        "sub/deep/y.txt",
        "sub/deep/z/w.tmp",
        "home/u/junk/j",
        "home/u/keep/doc",
        "home/u/.cache/c",
        "home/v/file",
        "home/v/keep/n",
        "odd[x]/f",
        "other/f",
        "cache/data",
        "cache2/data",
        "tagged/f",
        "tagged/inner/g",
    ] {
        write(&t.join(f), b"x");
    }
    write(&t.join("cache/CACHEDIR.TAG"), b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n");
    write(&t.join("cache2/CACHEDIR.TAG"), b"Signature: not the one\n");
    write(&t.join("tagged/.nobackup"), b"");
    write(&t.join("tagged/inner/.nobackup"), b"");
    write(
        &h.join("excludes"),
        b"# comments and blank lines are ignored\n\n  *.tmp  \ntree/home/u/\nsh:tree/**/*.o\nre:^tree/odd\\[\npf:tree/other/f\n",
    );
    write(&h.join("p-sh"), b"P sh\n+ tree/home/*/keep\n- tree/home\n! tree/sub/deep\n- re:\\.tmp$\n");
    write(&h.join("p-fm"), b"P fm\n- tree/*.txt\n+ tree/sub/keep\n- tree/sub\nP pp\n! tree/odd[x]\n");
    write(&h.join("p-roots"), b"R tree/home\nr tree/other\n- **/junk\nP re\n! /\\.cache$\n");
    write(&h.join("p-pf"), b"- tree/home\n+ pf:tree/home/u/keep/doc\n+ pf:tree/home/v\n");

    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--exclude", "*.tmp", "-e", "sh:tree/sub/**/*.o"], vec!["tree"]),
        (vec!["--exclude-from", "excludes"], vec!["tree"]),
        (vec!["--patterns-from", "p-sh"], vec!["tree"]),
        (vec!["--patterns-from", "p-fm"], vec!["tree"]),
        (vec!["--patterns-from", "p-roots"], vec![]),
        (vec!["--patterns-from", "p-pf"], vec!["tree"]),
        (
            vec!["--pattern", "+ pp:tree/sub/keep", "--pattern", "- tree/sub", "--pattern", "- pf:tree/a.txt"],
            vec!["tree"],
        ),
        // order across options: the first matching line decides
        (vec!["--pattern", "- tree/sub", "--exclude", "*.o", "--pattern", "+ tree/sub/keep"], vec!["tree"]),
        (vec!["--pattern", "+ tree/sub/keep", "--exclude", "*.o", "--pattern", "- tree/sub"], vec!["tree"]),
        (vec!["--pattern", "+ fm:tree/home/u*", "--exclude", "tree/home"], vec!["tree"]),
        (vec!["--exclude-caches", "--exclude-if-present", ".nobackup"], vec!["tree"]),
        (vec!["--exclude-caches", "--exclude-if-present", ".nobackup", "--keep-exclude-tags"], vec!["tree"]),
        (
            vec!["--keep-exclude-tags", "--exclude-if-present", ".nobackup", "--exclude", "tree/tagged/.nobackup"],
            vec!["tree"],
        ),
    ];
    ok({
        let mut c = borg(h);
        c.args(["init", "-e", "none", "borg-repo"]);
        c
    });
    ok({
        let mut c = ours(h);
        c.args(["init", "-e", "none", "ours-repo"]);
        c
    });
    for (i, (args, paths)) in cases.iter().enumerate() {
        let name = format!("case{i}");
        ok({
            let mut c = borg(h);
            c.arg("create").args(args).arg(format!("borg-repo::{name}")).args(paths);
            c
        });
        ok({
            let mut c = ours(h);
            c.arg("create").args(args).arg(format!("ours-repo::{name}")).args(paths);
            c
        });
        let theirs = sorted(&ok({
            let mut c = borg(h);
            c.args(["list", "--format", "{path}{NL}"]).arg(format!("borg-repo::{name}"));
            c
        }));
        let mine = sorted(&ok({
            let mut c = ours(h);
            c.args(["list", "--short"]).arg(format!("ours-repo::{name}"));
            c
        }));
        assert!(!theirs.is_empty(), "case {i} {args:?}: borg archived nothing");
        assert_eq!(mine, theirs, "case {i}: {args:?}");
    }
}

/// A patterns line or file borg refuses is refused, naming the line; no paths at all is an error.
#[test]
fn bad_patterns_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    write(&h.join("tree/f"), b"x");
    write(&h.join("bad"), b"+ tree\nX tree\n");
    ok({
        let mut c = ours(h);
        c.args(["init", "-e", "none", "r"]);
        c
    });
    for (args, want) in [
        (vec!["--patterns-from", "bad", "tree"], "\"X tree\""),
        (vec!["--pattern", "+ zz:x", "tree"], "zz"),
        (vec!["--patterns-from", "missing", "tree"], "missing"),
        (vec!["--pattern", "- x"], "no paths"),
    ] {
        let out = ours(h).arg("create").arg("r::a").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `--noatime` stores the mtime as atime (what extract then restores), the default keeps the
/// atime; `--files-cache disabled` writes no files cache; an unknown mode is refused; borg's
/// switches for fields rempart does not store are accepted.
#[test]
fn time_and_files_cache_switches() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let h = d.path();
    write(&h.join("tree/f"), b"x");
    let (atime, mtime) = (nix::sys::time::TimeSpec::new(1_000, 0), nix::sys::time::TimeSpec::new(2_000, 0));
    nix::sys::stat::utimensat(None, &h.join("tree/f"), &atime, &mtime, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
        .unwrap();
    ok({
        let mut c = ours(h);
        c.args(["init", "-e", "none", "r"]);
        c
    });
    let mut c = ours(h);
    c.env("REMPART_CACHE_DIR", h.join("nocache")).args(["create", "--files-cache", "disabled", "r::keep", "tree"]);
    ok(c);
    assert!(!h.join("nocache").exists(), "--files-cache disabled wrote a cache");
    ok({
        let mut c = ours(h);
        c.args(["create", "--noatime", "--noctime", "--noflags", "--nobirthtime", "--noacls", "--noxattrs"]);
        c.args(["--files-cache", "mtime,size", "r::noatime", "tree"]);
        c
    });
    for (name, want) in [("keep", 1_000), ("noatime", 2_000)] {
        let dest = h.join(format!("out-{name}"));
        std::fs::create_dir(&dest).unwrap();
        let mut c = ours(h);
        c.current_dir(&dest).arg("extract").arg(format!("{}::{name}", h.join("r").display()));
        ok(c);
        let md = std::fs::metadata(dest.join("tree/f")).unwrap();
        assert_eq!((md.atime(), md.mtime()), (want, 2_000), "{name}");
    }
    let out = ours(h).args(["create", "--files-cache", "ctime,sise", "r::bad", "tree"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sise"));
}
