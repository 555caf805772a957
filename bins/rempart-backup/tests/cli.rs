//! Tests of the binary: prune against the real borg 1.2.4, kill -9 during create, exit codes.

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");

fn ours(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("REMPART_PASSPHRASE", "test-pass")
        .env("REMPART_KEYS_DIR", home.join("keys"))
        .env("REMPART_CACHE_DIR", home.join("cache"))
        .env_remove("REMPART_PASSCOMMAND")
        .env_remove("REMPART_REPO");
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("spawn")
}

fn ok(c: Command) -> String {
    let dbg = format!("{c:?}");
    let out = run(c);
    assert!(out.status.success(), "{dbg}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn borg(base: &Path) -> Command {
    let mut c = Command::new("borg");
    c.env("BORG_BASE_DIR", base)
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .env("TZ", "Europe/Paris");
    c
}

/// `Keeping archive (rule: R #N): NAME ...` lines → sorted (name, rule) pairs.
fn kept(listing: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = listing
        .lines()
        .filter_map(|l| {
            if let Some(rest) = l.strip_prefix("Keeping checkpoint archive:") {
                return Some((rest.split_whitespace().next()?.to_string(), "checkpoint".into()));
            }
            let rest = l.strip_prefix("Keeping archive (rule: ")?;
            let (rule, after) = rest.split_once("):")?;
            let name = after.split_whitespace().next()?.to_string();
            Some((name, rule.to_string()))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn prune_matches_borg_1_2_4_on_random_timestamps_and_rules() {
    if Command::new("borg").arg("--version").output().is_err() {
        panic!("borg 1.2.4 is needed for this test (Debian package borgbackup)");
    }
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let now = chrono::Utc::now().timestamp();
    let mut compared = 0;
    for set in 0..2u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed + set);
        let breg = d.path().join(format!("borg{set}"));
        let oreg = d.path().join(format!("ours{set}"));
        ok({
            let mut c = borg(d.path());
            c.args(["init", "-e", "none"]).arg(&breg);
            c
        });
        ok({
            let mut c = ours(d.path());
            c.args(["init", "-e", "none"]).arg(&oreg);
            c
        });
        // Timestamps going back from about now with log-uniform gaps (1 s .. 60 days): every
        // rule granularity is exercised, including DST changes in Europe/Paris.
        let mut t = now - rng.gen_range(0..3600);
        let mut times = Vec::new();
        for i in 0..14 {
            let gap = (rng.gen_range(0.0f64..15.5)).exp() as i64 + 1;
            t -= gap;
            let name = if i == 0 && set == 1 {
                format!("a{i:02}.checkpoint")
            } else if i == 5 {
                format!("a{i:02}.checkpoint.1")
            } else {
                format!("a{i:02}")
            };
            times.push((name, t));
        }
        for (name, t) in &times {
            let ts = chrono::DateTime::from_timestamp(*t, 0).unwrap().format("%Y-%m-%dT%H:%M:%S").to_string();
            let mut c = borg(d.path());
            c.args(["create", "--timestamp", &ts]).arg(format!("{}::{name}", breg.display())).arg(&empty);
            ok(c);
            let mut c = ours(d.path());
            c.env("TZ", "Europe/Paris")
                .args(["create", "--timestamp", &ts])
                .arg(format!("{}::{name}", oreg.display()))
                .arg(&empty);
            ok(c);
        }
        let rules = [
            "--keep-last",
            "--keep-minutely",
            "--keep-hourly",
            "--keep-daily",
            "--keep-weekly",
            "--keep-monthly",
            "--keep-yearly",
        ];
        let mut n_sets = 0;
        while n_sets < 12 {
            let mut args: Vec<String> = Vec::new();
            for r in rules {
                if rng.gen_bool(0.35) {
                    let n: i64 = [-1, 0, 1, 1, 2, 2, 3, 4, 6][rng.gen_range(0..9)];
                    args.push(format!("{r}={n}"));
                }
            }
            if rng.gen_bool(0.3) {
                let w = ["1H", "12H", "2d", "1w", "1m", "1y"][rng.gen_range(0..6)];
                // skip a within boundary that falls within 10 minutes of an archive: the two
                // tools' "now" differ by a few seconds
                let secs = dedupstore::prune::parse_interval(w).unwrap().num_seconds();
                let boundary = chrono::Utc::now().timestamp() - secs;
                if times.iter().any(|(_, t)| (t - boundary).abs() < 600) {
                    continue;
                }
                args.push(format!("--keep-within={w}"));
            }
            if args.is_empty() {
                continue;
            }
            if rng.gen_bool(0.2) {
                args.push("--glob-archives=a0*".into());
            }
            n_sets += 1;
            let mut c = borg(d.path());
            c.args(["prune", "--dry-run", "--list"]).args(&args).arg(&breg);
            let out = run(c);
            assert!(out.status.success(), "borg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
            let b = kept(&String::from_utf8_lossy(&out.stderr));
            let mut c = ours(d.path());
            c.env("TZ", "Europe/Paris").args(["prune", "--dry-run", "--list"]).args(&args).arg(&oreg);
            let o = kept(&ok(c));
            let names = |v: &[(String, String)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
            assert_eq!(
                names(&o),
                names(&b),
                "kept sets differ for {args:?}\nborg: {b:?}\nours: {o:?}\ntimes: {times:?}"
            );
            assert_eq!(o, b, "rule labels differ for {args:?}");
            compared += 1;
        }
    }
    assert_eq!(compared, 24);
}

/// Every regular file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn write_tree(root: &Path, seed: u64, files: usize, size: usize) {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    std::fs::create_dir_all(root).unwrap();
    for i in 0..files {
        let mut v = vec![0u8; size];
        r.fill(&mut v[..]);
        std::fs::write(root.join(format!("f{i:03}")), v).unwrap();
    }
}

fn create_json(home: &Path, repo: &Path, name: &str, src: &Path) -> serde_json::Value {
    let mut c = ours(home);
    c.args(["create", "--json", "-c", "1"]).arg(format!("{}::{name}", repo.display())).arg(src);
    serde_json::from_str(&ok(c)).unwrap()
}

/// `original_size` of an archive, 0 if it does not exist.
fn checkpoint_size(home: &Path, repo: &Path, name: &str) -> u64 {
    let mut c = ours(home);
    // the create holds the exclusive lock: look without the shared one
    c.args(["--bypass-lock", "info", "--json"]).arg(format!("{}::{name}", repo.display()));
    let out = run(c);
    if !out.status.success() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["archives"][0]["stats"]["original_size"].as_u64().unwrap()
}

fn list_short(home: &Path, repo: &Path) -> Vec<String> {
    let mut c = ours(home);
    c.arg("list").arg("--short").arg(repo);
    ok(c).lines().map(str::to_string).collect()
}

#[test]
fn kill_9_during_create_leaves_a_clean_repository_and_the_next_create_reuses_chunks() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let src = home.join("src");
    write_tree(&src, 1, 32, 1 << 20);
    let repo = home.join("repo");
    let mut c = ours(home);
    c.args(["init", "-e", "repokey", "--pack-size", "262144"]).arg(&repo);
    ok(c);
    create_json(home, &repo, "base", &src.join("f000"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut reused_after_checkpoint = 0;
    for round in 0..4 {
        let name = format!("run{round}");
        let checkpoint = format!("{name}.checkpoint");
        let mut c = ours(home);
        // a checkpoint archive after every 3 MiB of the 32 MiB tree
        c.args(["create", "--checkpoint-volume", "3145728", "--no-files-cache", "--compression", "zstd,3"])
            .arg(format!("{}::{name}", repo.display()))
            .arg(&src)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        let mut finished = false;
        if round % 2 == 0 {
            // a random moment
            let delay = Duration::from_millis(rng.gen_range(50..1500));
            let t0 = std::time::Instant::now();
            while t0.elapsed() < delay {
                if child.try_wait().unwrap().is_some() {
                    finished = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            // right after a checkpoint archive covering at least 12 MiB is committed (zstd on
            // random data keeps the rest of the run long enough to be killed on a busy machine)
            rempart_testkit::wait::until(Duration::from_secs(60), "a checkpoint archive", || {
                checkpoint_size(home, &repo, &checkpoint) >= 12 << 20 || child.try_wait().unwrap().is_some()
            })
            .unwrap();
            finished = child.try_wait().unwrap().is_some();
            assert!(!finished, "create finished before it could be killed after a checkpoint");
        }
        if !finished {
            child.kill().unwrap(); // SIGKILL
        }
        child.wait().unwrap();
        // check --verify-data is clean (leftover packs of the interrupted run are not errors),
        // and a killed create leaves at most its checkpoint, never the archive itself
        let mut c = ours(home);
        c.args(["check", "--verify-data"]).arg(&repo);
        let out = run(c);
        assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        let names = list_short(home, &repo);
        if names.contains(&name) {
            // the create committed before the kill landed (or finished first, on a fast
            // machine): a committed create leaves its archive and no checkpoint behind
            assert!(round % 2 == 0, "round {round}: killed after a checkpoint, yet committed: {names:?}");
            assert!(!names.iter().any(|n| n.starts_with(&checkpoint)), "commit left a checkpoint: {names:?}");
            let mut c = ours(home);
            c.arg("delete").arg(format!("{}::{name}", repo.display()));
            ok(c);
            continue;
        }
        let saved = if names.contains(&checkpoint) {
            // the checkpoint is a readable archive of what was backed up before the kill
            let mut c = ours(home);
            c.args(["extract", "--dry-run"]).arg(format!("{}::{checkpoint}", repo.display()));
            ok(c);
            checkpoint_size(home, &repo, &checkpoint)
        } else {
            assert!(round % 2 == 0, "round {round}: no checkpoint archive: {names:?}");
            0
        };
        // the next create of the same name completes (the dead process's lock is removed as
        // stale), stores again only what the checkpoint did not cover, and removes it
        let v = create_json(home, &repo, &name, &src);
        let dedup = v["archive"]["stats"]["deduplicated_size"].as_u64().unwrap();
        let orig = v["archive"]["stats"]["original_size"].as_u64().unwrap();
        assert_eq!(orig, 32 << 20);
        // new bytes stored ≤ what the checkpoint did not cover (+ envelopes and item metadata)
        assert!(dedup <= orig - saved + 100_000, "round {round}: stored {dedup} of {orig}, checkpoint had {saved}");
        if round % 2 == 1 {
            // far less than a full second copy: at most 20 of the 32 MiB
            assert!(saved >= 12 << 20, "round {round}: checkpoint covered only {saved}");
            assert!(dedup < (20 << 20) + 100_000, "round {round}: stored {dedup} of {orig}");
            reused_after_checkpoint += 1;
        }
        let names = list_short(home, &repo);
        assert!(!names.iter().any(|n| n.starts_with(&checkpoint)), "checkpoint not removed: {names:?}");
        // everything committed is readable; remove the archive for the next round
        let mut c = ours(home);
        c.args(["check", "--verify-data"]).arg(&repo);
        ok(c);
        let mut c = ours(home);
        c.arg("delete").arg(format!("{}::{name}", repo.display()));
        ok(c);
        let mut c = ours(home);
        c.arg("compact").arg(&repo);
        ok(c);
    }
    assert_eq!(reused_after_checkpoint, 2);
}

#[test]
fn errors_are_one_clear_line_with_exit_code_2() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let repo = init(home, "repokey");
    let snapshot = |p: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v = Vec::new();
        let mut stack = vec![p.to_path_buf()];
        while let Some(x) = stack.pop() {
            if x.is_dir() {
                stack.extend(std::fs::read_dir(&x).unwrap().map(|e| e.unwrap().path()));
            } else {
                v.push((x.clone(), std::fs::read(&x).unwrap()));
            }
        }
        v.sort();
        v
    };
    let before = snapshot(&repo);
    let mut c = ours(home);
    c.env("REMPART_PASSPHRASE", "wrong").arg("create").arg(format!("{}::x", repo.display())).arg(home.join("keys"));
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(before, snapshot(&repo));
    let mut c = ours(home);
    c.arg("list").arg(home.join("missing"));
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a rempart repository") && err.lines().count() == 1, "{err}");
    // break-lock of a mistyped path too (it used to succeed silently)
    let mut c = ours(home);
    c.arg("break-lock").arg(home.join("missing"));
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a rempart repository") && err.lines().count() == 1, "{err}");
    // a vanished source path is a warning: exit 1, the archive is still written
    let mut c = ours(home);
    c.arg("create").arg(format!("{}::w", repo.display())).arg(home.join("keys")).arg(home.join("nonexistent"));
    let out = run(c);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    // one line for each missing path (`keys` does not exist either in repokey mode), not the
    // warning again as a log line
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 2, "{err}");
    assert!(err.lines().all(|l| l.ends_with(": No such file or directory (os error 2)")), "{err}");
    assert!(err.contains("nonexistent"), "{err}");
    let mut c = ours(home);
    c.args(["list", "--short"]).arg(&repo);
    assert_eq!(ok(c).trim(), "w");
    // PASSCOMMAND works
    let mut c = ours(home);
    c.env_remove("REMPART_PASSPHRASE").env("REMPART_PASSCOMMAND", "echo test-pass").args(["list"]).arg(&repo);
    ok(c);
}

/// Unmounts on drop (also when the test panics).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn full_disk_is_one_clear_error_and_leaves_the_repository_consistent() {
    if !rempart_testkit::require_root("mounting a small tmpfs to fill it up") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let small = home.join("small");
    std::fs::create_dir(&small).unwrap();
    let st = Command::new("mount").args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"]).arg(&small).status().unwrap();
    assert!(st.success());
    let _m = Mount(small.clone());
    let repo = small.join("repo");
    let mut c = ours(home);
    c.args(["init", "-e", "repokey", "--pack-size", "262144"]).arg(&repo);
    ok(c);
    let src = home.join("src");
    write_tree(&src, 3, 1, 600_000);
    create_json(home, &repo, "fits", &src);
    write_tree(&src, 4, 8, 1 << 20);
    let files = |dir: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<_> = walk(dir).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
        v.sort();
        v
    };
    let before = files(&repo);
    let mut c = ours(home);
    c.arg("create").arg(format!("{}::too-big", repo.display())).arg(&src);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("No space left").count(), 1, "{err}");
    // the packs it managed to write are gone again: every file as it was
    let after = files(&repo);
    let names = |v: &[(PathBuf, Vec<u8>)]| v.iter().map(|f| f.0.display().to_string()).collect::<Vec<_>>();
    assert_eq!(names(&after), names(&before));
    assert!(after == before, "a repository file changed");
    let mut c = ours(home);
    c.args(["list", "--short"]).arg(&repo);
    assert_eq!(ok(c).trim(), "fits");
    let mut c = ours(home);
    c.args(["check", "--verify-data"]).arg(&repo);
    ok(c);
    // --one-file-system: the tmpfs mount point is stored, its content is not
    let repo2 = home.join("repo2");
    let mut c = ours(home);
    c.args(["init", "-e", "none"]).arg(&repo2);
    ok(c);
    for (name, flag) in [("x", true), ("all", false)] {
        let mut c = ours(home);
        c.arg("create").arg("-e").arg(&repo2).arg("-e").arg(home.join("cache"));
        if flag {
            c.arg("--one-file-system");
        }
        c.arg(format!("{}::{name}", repo2.display())).arg(home);
        ok(c);
    }
    let list = |name: &str| {
        let mut c = ours(home);
        c.args(["list", "--short"]).arg(format!("{}::{name}", repo2.display()));
        ok(c)
    };
    let small_ap = small.strip_prefix("/").unwrap().display().to_string();
    let (x, all) = (list("x"), list("all"));
    assert!(x.lines().any(|l| l == small_ap), "{x}");
    assert!(!x.lines().any(|l| l.starts_with(&format!("{small_ap}/"))), "{x}");
    assert!(all.lines().any(|l| l.starts_with(&format!("{small_ap}/repo"))), "{all}");
    let mut c = ours(home);
    c.args(["compact"]).arg(&repo);
    ok(c);
    // extracting into a full file system: one line, exit 2
    let fill = small.join("fill");
    let _ = std::fs::write(&fill, vec![1u8; 3 << 20]);
    let dest = small.join("dest");
    std::fs::create_dir_all(&dest).ok();
    let mut c = ours(home);
    c.arg("extract").arg(format!("{}::fits", repo.display())).current_dir(&dest);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn key_export_import_and_change_passphrase() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let repo = init(home, "keyfile");
    let exported = home.join("key.json");
    let mut c = ours(home);
    c.args(["key", "export"]).arg(&repo).arg(&exported);
    ok(c);
    // losing the key directory makes the repository unusable…
    std::fs::remove_dir_all(home.join("keys")).unwrap();
    let mut c = ours(home);
    c.arg("list").arg(&repo);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("key file"));
    // …until the exported key is imported
    let mut c = ours(home);
    c.args(["key", "import"]).arg(&repo).arg(&exported);
    ok(c);
    let mut c = ours(home);
    c.arg("list").arg(&repo);
    ok(c);
    // change the passphrase: the old one stops working, the new one works
    let mut c = ours(home);
    c.env("REMPART_NEW_PASSPHRASE", "new-pass").args(["key", "change-passphrase"]).arg(&repo);
    ok(c);
    let mut c = ours(home);
    c.arg("list").arg(&repo);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    let mut c = ours(home);
    c.env("REMPART_PASSPHRASE", "new-pass").arg("list").arg(&repo);
    ok(c);
    // a key of another repository is refused
    let other = home.join("other");
    let mut c = ours(home);
    c.args(["init", "-e", "repokey"]).arg(&other);
    ok(c);
    let mut c = ours(home);
    c.args(["key", "import"]).arg(&other).arg(&exported);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another repository"));
}

/// A new repository `home/repo` in encryption mode `mode`.
fn init(home: &Path, mode: &str) -> PathBuf {
    let repo = home.join("repo");
    let mut c = ours(home);
    c.args(["init", "-e", mode]).arg(&repo);
    ok(c);
    repo
}

/// A source tree (`write_tree(seed, files, size)`) and an unencrypted repository for it.
fn tree_and_repo(home: &Path, seed: u64, files: usize, size: usize) -> (PathBuf, PathBuf) {
    let src = home.join("src");
    write_tree(&src, seed, files, size);
    let repo = init(home, "none");
    (src, repo)
}

/// Runs `cmd` through sh on a pseudo-terminal (script(1)); returns its success and what the
/// terminal showed.
fn on_tty(home: &Path, cmd: &str) -> (bool, String) {
    let mut c = Command::new("script");
    c.args(["-qfec", cmd, "/dev/null"])
        .env("REMPART_CACHE_DIR", home.join("cache"))
        .env("REMPART_KEYS_DIR", home.join("keys"))
        .env_remove("REMPART_REPO");
    let out = run(c);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn progress_bar_only_on_a_terminal_and_never_with_json() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let (src, repo) = tree_and_repo(home, 3, 8, 1 << 20);
    // not a terminal: nothing but the JSON document
    let mut c = ours(home);
    c.args(["create", "--progress", "--json"]).arg(format!("{}::piped", repo.display())).arg(&src);
    let out = run(c);
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["archive"]["stats"]["nfiles"], 8);
    // a terminal (script(1) gives it a pty): the bar draws its counters
    let (done, shown) = on_tty(home, &format!("{BIN} create --progress {}::tty {}", repo.display(), src.display()));
    assert!(done, "{shown}");
    assert!(shown.contains(" files"), "no progress drawn: {shown:?}");
    // and with --json on a terminal: no bar either
    let (done, shown) =
        on_tty(home, &format!("{BIN} create --progress --json {}::tty-json {}", repo.display(), src.display()));
    assert!(done, "{shown}");
    assert!(!shown.contains(" files"));
}

/// Peak RSS (KiB) of the largest child this process waited for so far.
fn children_peak_rss_kib() -> i64 {
    let ru = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    ru.max_rss()
}

#[test]
fn create_memory_does_not_grow_with_the_item_metadata() {
    // 24 000 empty files whose paths are ~2.8 KB long: ~70 MB of item metadata, which create
    // must store as it walks instead of holding it until the end.
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let mut deep = home.join("src");
    for i in 0..13 {
        deep.push(format!("{i:02}").repeat(100));
    }
    let (dirs, per_dir) = (120, 200);
    let mut stream_bytes = 0usize;
    for k in 0..dirs {
        let dir = deep.join(format!("{k:03}{}", "x".repeat(196)));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..per_dir {
            let p = dir.join(format!("{f:04}{}", "y".repeat(195)));
            std::fs::File::create(&p).unwrap();
            stream_bytes += p.strip_prefix("/").unwrap().as_os_str().len();
        }
    }
    assert!(stream_bytes > 60 << 20, "{stream_bytes}");
    let repo = init(home, "repokey");
    let mut c = ours(home);
    c.args(["create", "--json"]).arg(format!("{}::many", repo.display())).arg(home.join("src"));
    let v: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    assert_eq!(v["archive"]["stats"]["nfiles"], dirs * per_dir);
    let peak_mib = children_peak_rss_kib() / 1024;
    // the paths alone are ~70 MB; the whole create (threads, pack buffers, SQLite) stays far below
    assert!(peak_mib < 40, "create peaked at {peak_mib} MiB for {} MiB of item paths", stream_bytes >> 20);
    // and the archive lists every item, in walk order
    let mut c = ours(home);
    c.args(["list", "--short"]).arg(format!("{}::many", repo.display()));
    let listed = ok(c);
    let files: Vec<&str> = listed.lines().filter(|l| l.contains("yyyy")).collect();
    assert_eq!(files.len(), dirs * per_dir);
    assert!(files.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn extract_and_check_progress_only_on_a_terminal() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let (src, repo) = tree_and_repo(home, 5, 8, 1 << 20);
    let mut c = ours(home);
    c.arg("create").arg(format!("{}::a", repo.display())).arg(&src);
    ok(c);
    // not a terminal: --progress draws nothing
    let plain = home.join("plain");
    std::fs::create_dir(&plain).unwrap();
    let mut c = ours(home);
    c.args(["extract", "--progress"]).arg(format!("{}::a", repo.display())).current_dir(&plain);
    let out = run(c);
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(walk(&plain).len(), 8);
    let mut c = ours(home);
    c.args(["check", "--progress", "--verify-data"]).arg(&repo);
    let out = run(c);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("check: ") && !err.contains("packs ("), "{err}");
    // a terminal (script(1) gives it a pty): both draw their bars
    let tty = home.join("tty");
    std::fs::create_dir(&tty).unwrap();
    let on_tty = |cmd: String| {
        let (done, shown) = on_tty(home, &cmd);
        assert!(done, "{cmd}: {shown}");
        shown
    };
    let shown = on_tty(format!("cd {} && {BIN} extract --progress {}::a", tty.display(), repo.display()));
    assert!(shown.contains("/9 items"), "no extract progress drawn: {shown:?}");
    assert_eq!(walk(&tty).len(), 8);
    let shown = on_tty(format!("{BIN} check --progress --verify-data {}", repo.display()));
    assert!(shown.contains("packs ("), "no check progress drawn: {shown:?}");
    assert!(shown.contains("no problems found"), "{shown:?}");
    // without --progress, a terminal gets no bar either
    let shown = on_tty(format!("{BIN} check {}", repo.display()));
    assert!(!shown.contains("packs ("), "{shown:?}");
}

#[test]
fn check_selects_archives_and_parts_as_borg_does() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let repo = init(home, "repokey");
    let src = home.join("src");
    for (i, name) in ["old-1", "new-1"].iter().enumerate() {
        write_tree(&src, 20 + i as u64, 2, 10_000);
        let mut c = ours(home);
        c.args(["create", "--timestamp", &format!("2026-01-0{}T00:00:00", i + 1)])
            .arg(format!("{}::{name}", repo.display()))
            .arg(&src);
        ok(c);
    }
    // damage the older archive's metadata object (written first)
    let mut objs: Vec<_> = walk(&repo.join("archives"))
        .into_iter()
        .map(|p| (std::fs::metadata(&p).unwrap().modified().unwrap(), p))
        .collect();
    objs.sort();
    assert_eq!(objs.len(), 2);
    let mut bytes = std::fs::read(&objs[0].1).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&objs[0].1, bytes).unwrap();
    let check = |args: &[&str]| {
        let mut c = ours(home);
        c.arg("check").args(args).arg(&repo);
        let out = run(c);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, err) = check(&[]);
    assert_ne!(code, Some(0), "a full check must see the damaged archive");
    assert!(err.contains("archive old-1"), "{err}");
    for args in [&["--last", "1"][..], &["-a", "new-*"], &["--repository-only"], &["--archives-only", "--last", "1"]] {
        let (code, err) = check(args);
        assert_eq!(code, Some(0), "check {args:?}: {err}");
    }
    let (code, err) = check(&["--archives-only", "--glob-archives", "old-*"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("archive old-1"), "{err}");
    let (code, err) = check(&["--repair", "--last", "1"]);
    assert_eq!(code, Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
}
