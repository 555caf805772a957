//! borg 1.2.4's everyday surface (issue 17): `rename`, `delete -a/--first/--last`,
//! `list --format`, `list`/`info --first/--last`, `diff --json-lines`, `extract --stdout`,
//! `extract --exclude`, `export-tar`/`import-tar`, compared with the real borg where the
//! output is borg's.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");

fn ours(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("REMPART_PASSPHRASE", "test-pass")
        .env("REMPART_KEYS_DIR", home.join("keys"))
        .env("REMPART_CACHE_DIR", home.join("cache"))
        .env("TZ", "Europe/Paris")
        .env_remove("REMPART_PASSCOMMAND")
        .env_remove("REMPART_REPO");
    c
}

fn borg(home: &Path) -> Command {
    let mut c = Command::new("borg");
    c.env("BORG_BASE_DIR", home.join("borg-base"))
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .env("TZ", "Europe/Paris");
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("spawn")
}

/// Runs `c` in `dir`, asserts success, returns stdout.
fn ok_in(mut c: Command, dir: &Path) -> String {
    c.current_dir(dir);
    let dbg = format!("{c:?}");
    let out = run(c);
    assert!(out.status.success(), "{dbg}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs the same arguments with borg and with us (in `home`, on `home/borg` and `home/ours`
/// for the `R` argument); returns (borg's, ours) outputs.
fn both(home: &Path, args: &[&str]) -> (Output, Output) {
    let subst = |repo: &str| -> Vec<String> { args.iter().map(|a| a.replace('R', repo)).collect() };
    let mut b = borg(home);
    b.current_dir(home).args(subst("borg"));
    let mut o = ours(home);
    o.current_dir(home).args(subst("ours"));
    (run(b), run(o))
}

/// Both succeed with the same standard output (lines compared sorted when `sorted`: borg walks
/// directories in inode order, we in name order).
fn same_stdout(home: &Path, args: &[&str], sorted: bool) -> String {
    let (b, o) = both(home, args);
    assert!(b.status.success(), "borg {args:?}: {}", String::from_utf8_lossy(&b.stderr));
    assert!(o.status.success(), "ours {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    let (mut bs, mut os): (Vec<String>, Vec<String>) = (
        String::from_utf8_lossy(&b.stdout).lines().map(String::from).collect(),
        String::from_utf8_lossy(&o.stdout).lines().map(String::from).collect(),
    );
    if sorted {
        bs.sort();
        os.sort();
    }
    assert_eq!(os, bs, "output of {args:?} differs from borg's");
    assert!(!os.is_empty(), "{args:?}: no output");
    os.join("\n")
}

/// A small tree: files, subdirectories, a symlink (no hard link: which of two links borg
/// records as the first depends on its inode-order walk).
fn tree(src: &Path) {
    std::fs::create_dir_all(src.join("d/e")).unwrap();
    std::fs::write(src.join("a.txt"), b"alpha\n").unwrap();
    std::fs::write(src.join("d/b.bin"), vec![7u8; 70_000]).unwrap();
    std::fs::write(src.join("d/e/c.txt"), b"gamma\n").unwrap();
    std::os::unix::fs::symlink("a.txt", src.join("l")).unwrap();
}

/// `home/borg` and `home/ours`, each with archives a1, a2, b1, b2 of `home/src` at fixed times.
fn two_repos(home: &Path) {
    tree(&home.join("src"));
    let mut b = borg(home);
    b.args(["init", "-e", "none", "borg"]);
    ok_in(b, home);
    let mut o = ours(home);
    o.args(["init", "-e", "none", "ours"]);
    ok_in(o, home);
    for (i, name) in ["a1", "b1", "a2", "b2"].iter().enumerate() {
        let ts = format!("2026-0{}-01T12:00:00", i + 1);
        if i == 2 {
            std::fs::write(home.join("src/d/e/c.txt"), b"gamma, changed\n").unwrap();
        }
        for (cmd, repo) in [(borg(home), "borg"), (ours(home), "ours")] {
            let mut c = cmd;
            c.args(["create", "--timestamp", &ts, &format!("{repo}::{name}"), "src"]);
            ok_in(c, home);
        }
    }
}

#[test]
fn rename_delete_and_list_selection_and_format_match_borg() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    two_repos(home);
    // the default formats are unchanged; selections as borg's
    same_stdout(home, &["list", "--short", "R"], false);
    same_stdout(home, &["list", "--short", "--last", "2", "R"], false);
    same_stdout(home, &["list", "--short", "--first", "1", "-a", "b*", "R"], false);
    same_stdout(home, &["list", "--short", "--last", "1", "--glob-archives", "a*", "R"], false);
    let (b, o) = both(home, &["list", "--first", "1", "--last", "1", "R"]);
    assert_eq!((b.status.code(), o.status.code()), (Some(2), Some(2)), "--first with --last is an error");
    // archive placeholders (the archive id differs: ours is not borg's)
    let out = same_stdout(
        home,
        &[
            "list",
            "--format",
            "{archive}|{name:>6}|{barchive:.1}|{time}|{start:%Y-%m}|{hostname}|{username}|{comment}{NL}",
            "R",
        ],
        false,
    );
    assert_eq!(out.lines().count(), 4);
    assert!(out.contains("a2|    a2|a|Sun, 2026-03-01 13:00:00|2026-03|"), "{out}");
    let (_, o) = both(home, &["list", "--format", "{archive} {id}{TAB}{{x}}{NL}", "R"]);
    let o = String::from_utf8(o.stdout).unwrap();
    assert!(o.lines().all(|l| l.len() == 2 + 1 + 64 + 1 + 3 && l.ends_with("\t{x}")), "{o:?}");
    // item placeholders
    let item_fmt = "{mode}|{type}|{user:>6}|{group:6}|{uid}|{gid}|{size:8}|{mtime}|{isomtime}|{path}|{bpath}|{source}|{linktarget}|{extra}|{health}|{archivename}{NL}";
    let out = same_stdout(home, &["list", "--format", item_fmt, "R::a2"], true);
    assert!(out.contains("|src/l|src/l|a.txt|a.txt| -> a.txt|healthy|a2"), "{out}");
    same_stdout(home, &["list", "--format", "{path}{NL}", "R::b2", "src/d"], true);
    // unknown keys are errors (borg: KeyError, 2)
    let (b, o) = both(home, &["list", "--format", "{bogus}", "R"]);
    assert_eq!((b.status.code(), o.status.code()), (Some(2), Some(2)));
    // info over a selection: one block per archive
    for args in [&["info", "--last", "2", "R"][..], &["info", "--first", "1", "-a", "b*", "R"]] {
        let (b, o) = both(home, args);
        let names = |out: &Output| -> Vec<String> {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("Archive name:"))
                .map(String::from)
                .collect()
        };
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(names(&o), names(&b), "{args:?}");
        assert!(!names(&o).is_empty());
    }
    // rename: the new name lists, the old is gone; bad renames fail as borg's
    let (b, o) = both(home, &["rename", "R::a1", "first"]);
    assert_eq!((b.status.code(), o.status.code()), (Some(0), Some(0)), "{}", String::from_utf8_lossy(&o.stderr));
    same_stdout(home, &["list", "--short", "R"], false);
    for args in [&["rename", "R::nope", "x"][..], &["rename", "R::first", "b1"]] {
        let (b, o) = both(home, args);
        assert_eq!((b.status.code(), o.status.code()), (Some(2), Some(2)), "{args:?}");
    }
    let (_, o) = both(home, &["list", "--format", "{path}{NL}", "R::first"]);
    assert!(o.status.success(), "a renamed archive keeps its items");
    let (_, o) = both(home, &["check", "R"]);
    assert!(o.status.success(), "check after rename: {}", String::from_utf8_lossy(&o.stderr));
    // delete -a / --last: the same archives go (dry run first: nothing goes)
    let (b, o) = both(home, &["delete", "-n", "--list", "-a", "b*", "R"]);
    let names = |out: &Output| -> Vec<String> {
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter_map(|l| l.strip_prefix("Would delete archive: "))
            .map(|l| format!("{} {}", l.split_whitespace().next().unwrap_or(""), l.rsplit(' ').next().unwrap_or("")))
            .collect()
    };
    assert_eq!(names(&o), names(&b));
    assert_eq!(names(&o), ["b1 (1/2)", "b2 (2/2)"]);
    same_stdout(home, &["list", "--short", "R"], false);
    let (_, o) = both(home, &["delete", "-a", "b*", "R"]);
    assert!(o.status.success());
    assert_eq!(same_stdout(home, &["list", "--short", "R"], false), "first\na2");
    let (b, o) = both(home, &["delete", "-a", "nomatch*", "R"]);
    assert_eq!((b.status.code(), o.status.code()), (Some(0), Some(0)));
    both(home, &["delete", "--last", "1", "R"]);
    assert_eq!(same_stdout(home, &["list", "--short", "R"], false), "first");
}

/// Creates `name` of `home/src` in both repositories.
fn create_both(home: &Path, name: &str) {
    for (cmd, repo) in [(borg(home), "borg"), (ours(home), "ours")] {
        let mut c = cmd;
        c.args(["create", &format!("{repo}::{name}"), "src"]);
        ok_in(c, home);
    }
}

fn init_both(home: &Path) {
    let mut b = borg(home);
    b.args(["init", "-e", "none", "borg"]);
    ok_in(b, home);
    let mut o = ours(home);
    o.args(["init", "-e", "none", "ours"]);
    ok_in(o, home);
}

#[test]
fn diff_text_json_lines_and_paths_match_borg() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let src = home.join("src");
    std::fs::create_dir_all(src.join("d/gone-dir")).unwrap();
    std::fs::write(src.join("same.txt"), b"unchanged\n").unwrap();
    std::fs::write(src.join("grow.txt"), b"short\n").unwrap();
    std::fs::write(src.join("d/removed.bin"), vec![1u8; 2500]).unwrap();
    std::fs::write(src.join("mode.txt"), b"m\n").unwrap();
    std::fs::write(src.join("owner.txt"), b"o\n").unwrap();
    std::fs::write(src.join("retyped"), b"file, then a directory\n").unwrap();
    std::os::unix::fs::symlink("same.txt", src.join("link")).unwrap();
    std::os::unix::fs::symlink("same.txt", src.join("old-link")).unwrap();
    nix::unistd::mkfifo(&src.join("pipe"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    init_both(home);
    create_both(home, "one");
    std::fs::write(src.join("grow.txt"), "longer, with non-ASCII: é\n".repeat(100)).unwrap();
    std::fs::remove_file(src.join("d/removed.bin")).unwrap();
    std::fs::remove_dir(src.join("d/gone-dir")).unwrap();
    std::fs::set_permissions(src.join("mode.txt"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(src.join("owner.txt"), Some(65534), Some(65534)).unwrap();
    std::fs::remove_file(src.join("retyped")).unwrap();
    std::fs::create_dir(src.join("retyped")).unwrap();
    std::fs::remove_file(src.join("link")).unwrap();
    std::os::unix::fs::symlink("grow.txt", src.join("link")).unwrap();
    std::fs::remove_file(src.join("old-link")).unwrap();
    std::fs::remove_file(src.join("pipe")).unwrap();
    std::fs::write(src.join("d/new.txt"), vec![b'n'; 1_234_567]).unwrap();
    std::fs::create_dir(src.join("new-dir")).unwrap();
    create_both(home, "two");
    let text = same_stdout(home, &["diff", "--sort", "R::one", "two"], false);
    for want in [
        "added       1.23 MB src/d/new.txt",
        "removed     2.50 kB src/d/removed.bin",
        "added directory     src/new-dir",
        "removed directory   src/d/gone-dir",
        "removed link        src/old-link",
        "removed fifo        src/pipe",
        "[-rw-r--r-- -> -rw-------]",
        "[root:root -> nobody:nogroup]",
        "[-rw-r--r-- -> drwxr-xr-x]",
    ] {
        assert!(text.contains(want), "{want:?} not in\n{text}");
    }
    assert!(!text.contains("same.txt"), "{text}");
    let json = same_stdout(home, &["diff", "--sort", "--json-lines", "R::one", "two"], false);
    for l in json.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(v["path"].is_string() && v["changes"].is_array(), "{l}");
    }
    assert!(json.contains(r#"{"changes": [{"type": "changed link"}, "#), "{json}");
    same_stdout(
        home,
        &["diff", "--sort", "--json-lines", "--numeric-ids", "R::one", "two", "src/owner.txt", "src/d"],
        false,
    );
    same_stdout(home, &["diff", "--sort", "--content-only", "R::one", "two"], false);
    let (b, o) = both(home, &["diff", "R::one", "two", "src/same.txt"]);
    assert_eq!((b.stdout.len(), o.stdout.len(), o.status.code()), (0, 0, Some(0)));
}

/// Relative paths of everything under `dir`, sorted ("d/" for directories).
fn listing(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if p.symlink_metadata().unwrap().is_dir() {
                out.push(format!("{rel}/"));
                stack.push(p);
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn extract_stdout_exclude_and_patterns_match_borg() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    two_repos(home);
    // one file, a directory's files, and a selection: the bytes borg writes
    for args in [
        &["extract", "--stdout", "R::a2", "src/d/b.bin"][..],
        &["extract", "--stdout", "R::b2", "src/d/e"],
        &["extract", "--stdout", "-e", "*.bin", "R::a2", "src/d"],
    ] {
        let (b, o) = both(home, args);
        assert!(b.status.success() && o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(o.stdout, b.stdout, "{args:?}");
        assert!(!o.stdout.is_empty(), "{args:?}");
    }
    // the whole archive: every file's content once (borg's order is its inode walk, ours the
    // names'; with one file per size both add up the same)
    let (b, o) = both(home, &["extract", "--stdout", "R::a1"]);
    assert_eq!((o.stdout.len(), b.stdout.len()), (6 + 70_000 + 6, 6 + 70_000 + 6));
    for (n, args) in [
        &["-e", "*.bin"][..],
        &["--exclude", "src/d/e"],
        &["-e", "sh:src/*/b.bin", "-e", "pp:src/l"],
        &["--pattern", "+ src/d/e/c.txt", "--pattern", "- src/d"],
        &["--pattern", "- fm:*.txt"],
    ]
    .iter()
    .enumerate()
    {
        let (bd, od) = (home.join(format!("x-borg-{n}")), home.join(format!("x-ours-{n}")));
        std::fs::create_dir_all(&bd).unwrap();
        std::fs::create_dir_all(&od).unwrap();
        let mut b = borg(home);
        b.arg("extract").args(*args).arg(home.join("borg::a2"));
        ok_in(b, &bd);
        let mut o = ours(home);
        o.arg("extract").args(*args).arg(home.join("ours::a2"));
        ok_in(o, &od);
        assert_eq!(listing(&od), listing(&bd), "extract {args:?}");
        assert_ne!(listing(&od).len(), 7, "extract {args:?} left nothing out");
    }
}

/// `tar tv` of a tar file (through `tar`'s own decompression), sorted.
fn tar_tv(home: &Path, file: &str) -> Vec<String> {
    let mut c = Command::new("tar");
    c.args(["-tvf", file]);
    let mut v: Vec<String> = ok_in(c, home).lines().map(String::from).collect();
    v.sort();
    v
}

#[test]
fn export_tar_matches_borg_and_round_trips_through_gnu_tar() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    two_repos(home);
    // the same entries (names, modes, owners, sizes, times, link targets) as borg's
    let (b, o) = both(home, &["export-tar", "R::a2", "R.tar"]);
    assert!(b.status.success() && o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed = tar_tv(home, "ours.tar");
    assert_eq!(listed, tar_tv(home, "borg.tar"));
    assert_eq!(listed.len(), 7, "{listed:?}");
    // compression by extension (gzip), a filter of one's own, standard output, paths
    let (b, o) = both(home, &["export-tar", "R::a2", "R.tar.gz", "src/d"]);
    assert!(b.status.success() && o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(home.join("ours.tar.gz")).unwrap()[..2], [0x1f, 0x8b], "gzip magic");
    assert_eq!(tar_tv(home, "ours.tar.gz"), tar_tv(home, "borg.tar.gz"));
    let mut o = ours(home);
    o.args(["export-tar", "--tar-filter", "gzip -1", "ours::a2", "filtered.tgz"]);
    ok_in(o, home);
    assert_eq!(tar_tv(home, "filtered.tgz"), listed);
    let mut o = ours(home);
    o.args(["export-tar", "ours::a2", "-"]);
    o.current_dir(home);
    let out = run(o);
    assert!(out.status.success());
    std::fs::write(home.join("stdout.tar"), &out.stdout).unwrap();
    assert_eq!(tar_tv(home, "stdout.tar"), listed);
    // GNU tar extracts the source tree back, content and all
    let x = home.join("x");
    std::fs::create_dir(&x).unwrap();
    let mut t = Command::new("tar");
    t.args(["-xpf", "../stdout.tar"]);
    ok_in(t, &x);
    let mut diff = Command::new("diff");
    diff.args(["-r", "--no-dereference", "src", "x/src"]);
    ok_in(diff, home);
}

#[test]
fn import_tar_of_a_gnu_tar_extracts_identical() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let src = home.join("src");
    tree(&src);
    std::fs::hard_link(src.join("a.txt"), src.join("h.txt")).unwrap();
    std::fs::write(src.join("d/big.bin"), (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let mut o = ours(home);
    o.args(["init", "-e", "repokey", "repo"]);
    ok_in(o, home);
    let mut t = Command::new("tar");
    t.args(["-cpf", "src.tar", "src"]);
    ok_in(t, home);
    let mut t = Command::new("tar");
    t.args(["-czpf", "src.tar.gz", "src"]);
    ok_in(t, home);
    for (name, file) in [("plain", "src.tar"), ("gz", "src.tar.gz")] {
        let mut o = ours(home);
        o.args(["import-tar", &format!("repo::{name}"), file]);
        ok_in(o, home);
        let x = home.join(format!("x-{name}"));
        std::fs::create_dir(&x).unwrap();
        let mut o = ours(home);
        o.arg("extract").arg(format!("{}::{name}", home.join("repo").display()));
        ok_in(o, &x);
        let mut diff = Command::new("diff");
        diff.args(["-r", "--no-dereference", "src"]).arg(x.join("src"));
        ok_in(diff, home);
        // modes, owners, times and the hard link as tar recorded them
        let mut l = ours(home);
        l.args([
            "list",
            "--format",
            "{mode} {user} {group} {size} {isomtime} {path}{extra}{NL}",
            &format!("repo::{name}"),
        ]);
        let listed = ok_in(l, home);
        // GNU tar's walk order decides which name is the first
        assert!(
            listed.contains("src/h.txt link to src/a.txt") || listed.contains("src/a.txt link to src/h.txt"),
            "{listed}"
        );
        assert!(listed.contains("lrwxrwxrwx root root 5"), "{listed}");
        let mtime = std::fs::metadata(src.join("d/big.bin")).unwrap().modified().unwrap();
        let secs = mtime.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let big = listed.lines().find(|l| l.ends_with("src/d/big.bin")).unwrap();
        let want = chrono::DateTime::from_timestamp(secs as i64, 0).unwrap();
        let local = want.with_timezone(&chrono::FixedOffset::east_opt(3600).unwrap());
        assert!(big.contains(&local.format("%Y-%m-%dT%H:%M:%S.000000").to_string()), "{big}");
    }
    // standard input
    let mut o = ours(home);
    o.args(["import-tar", "repo::stdin", "-"]).stdin(std::fs::File::open(home.join("src.tar")).unwrap());
    ok_in(o, home);
    let mut l = ours(home);
    l.args(["list", "--short", "repo::stdin"]);
    assert_eq!(ok_in(l, home).lines().count(), 9);
}

#[test]
fn recreate_excludes_after_the_fact_as_borg_and_keeps_the_rest_identical() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    two_repos(home);
    let extract = |archive: &str, dir: &str| {
        let x = home.join(dir);
        std::fs::create_dir(&x).unwrap();
        let mut o = ours(home);
        o.arg("extract").arg(format!("{}::{archive}", home.join("ours").display()));
        ok_in(o, &x);
        x
    };
    let before = extract("a2", "before");
    // the same items go as with borg's recreate
    let (b, o) = both(home, &["recreate", "-e", "src/d/e", "-e", "*.bin", "R::a2"]);
    assert!(b.status.success() && o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let kept = same_stdout(home, &["list", "--short", "R::a2"], true);
    assert_eq!(kept.lines().count(), 4, "{kept}");
    same_stdout(home, &["list", "--short", "R::b2"], true);
    same_stdout(home, &["list", "--format", "{archive} {time}{NL}", "R"], false);
    // what is left extracts identical to the original minus the excluded paths
    let after = extract("a2", "after");
    std::fs::remove_dir_all(before.join("src/d/e")).unwrap();
    std::fs::remove_file(before.join("src/d/b.bin")).unwrap();
    let mut diff = Command::new("diff");
    diff.args(["-r", "--no-dereference"]).arg(&before).arg(&after);
    ok_in(diff, home);
    let mut c = ours(home);
    c.args(["check", "--verify-data", "ours"]);
    ok_in(c, home);
    // nothing to exclude: nothing written (the archive id stays)
    let ids = |home: &Path| {
        let mut l = ours(home);
        l.args(["list", "--format", "{id}{NL}", "ours"]);
        ok_in(l, home)
    };
    let id_before = ids(home);
    let mut o = ours(home);
    o.args(["recreate", "-e", "nothing-matches", "ours::a2"]);
    ok_in(o, home);
    assert_eq!(ids(home), id_before);
}
