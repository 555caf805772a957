//! Remote repositories through the real OpenSSH client and a real `sshd` on 127.0.0.1 with
//! forced commands (`command="rempart-backup serve --restrict-to-path … [--append-only]",restrict`).

use rand::{Rng, SeedableRng};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod sshd;
use sshd::{output, Sshd, BIN};

fn ours(home: &Path, rsh: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("REMPART_PASSPHRASE", "test-pass")
        .env("REMPART_KEYS_DIR", home.join("keys"))
        .env("REMPART_CACHE_DIR", home.join("cache"))
        .env("REMPART_RSH", rsh)
        .env_remove("REMPART_PASSCOMMAND")
        .env_remove("REMPART_REPO");
    c
}

fn ok(c: Command) -> String {
    let dbg = format!("{c:?}");
    let out = output(c);
    assert!(out.status.success(), "{dbg}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs, expects exit code 2 (an error that stopped the command), returns stderr.
fn fails(c: Command) -> String {
    exits_with(c, 2)
}

/// Runs, expects exit code `code`, returns stderr.
fn exits_with(c: Command, code: i32) -> String {
    let dbg = format!("{c:?}");
    let out = output(c);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{dbg}: expected exit {code}\n{err}");
    err
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

/// Extracts `archive` into a fresh directory and compares every file with `src`.
fn extract_and_compare(home: &Path, rsh: &str, url: &str, archive: &str, src: &Path, into: &str) {
    let dest = home.join(into);
    std::fs::create_dir_all(&dest).unwrap();
    let mut c = ours(home, rsh);
    c.current_dir(&dest).arg("extract").arg(format!("{url}::{archive}"));
    ok(c);
    let got = dest.join(src.strip_prefix("/").unwrap());
    let mut n = 0;
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let a = std::fs::read(e.path()).unwrap();
        let b = std::fs::read(got.join(e.file_name())).unwrap();
        assert!(a == b, "{archive}: {:?} differs after extract over ssh", e.file_name());
        n += 1;
    }
    assert!(n > 0);
}

fn list(home: &Path, rsh: &str, url: &str) -> Vec<String> {
    let mut c = ours(home, rsh);
    c.args(["list", "--short", url]);
    let mut v: Vec<String> = ok(c).lines().map(str::to_string).collect();
    v.sort();
    v
}

#[test]
fn create_list_extract_check_over_real_ssh_and_restrict_to_path() {
    if !rempart_testkit::require_root("sshd needs root to start with its own config") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let sshd = Sshd::start(&home.join("ssh"));
    let rsh = sshd.rsh();
    let url = sshd.url("repo");
    let src = home.join("src");
    write_tree(&src, 1, 4, 300_000);
    let mut c = ours(home, &rsh);
    c.args(["init", "-e", "repokey", url.as_str()]);
    ok(c);
    // the server stores only ciphertext, in the restricted directory
    assert!(sshd.base.join("srv/repo/config").exists());
    let mut c = ours(home, &rsh);
    c.args(["create", "--json"]).arg(format!("{url}::first")).arg(&src);
    let v: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    assert_eq!(v["archive"]["stats"]["nfiles"].as_u64(), Some(4));
    // the scp-like form (borg's user@host:path) through --rsh with a port option
    let scp = format!("root@127.0.0.1:{}", sshd.base.join("srv/repo").display());
    let mut c = ours(home, "unused-env");
    c.arg("--rsh").arg(format!("{rsh} -p {}", sshd.port)).args(["create"]).arg(format!("{scp}::second")).arg(&src);
    ok(c);
    assert_eq!(list(home, &rsh, &url), vec!["first", "second"]);
    extract_and_compare(home, &rsh, &url, "first", &src, "out1");
    let mut c = ours(home, &rsh);
    c.args(["check", "--verify-data", url.as_str()]);
    ok(c);
    // without --append-only, prune works over ssh
    let mut c = ours(home, &rsh);
    c.args(["prune", "--keep-last", "1", url.as_str()]);
    ok(c);
    assert_eq!(list(home, &rsh, &url), vec!["second"]);
    // --restrict-to-path: a path outside (also through ..) is refused
    for other in [
        format!("ssh://root@127.0.0.1:{}{}/elsewhere", sshd.port, home.display()),
        format!("ssh://root@127.0.0.1:{}{}/srv/../../elsewhere", sshd.port, sshd.base.display()),
    ] {
        let mut c = ours(home, &rsh);
        c.args(["init", "-e", "repokey", other.as_str()]);
        let err = fails(c);
        assert!(err.contains("outside the allowed paths"), "{err}");
    }
    assert!(!home.join("elsewhere").exists());
}

#[test]
fn append_only_refuses_delete_prune_compact_and_rollback_restores() {
    if !rempart_testkit::require_root("sshd needs root to start with its own config") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let sshd = Sshd::start(&home.join("ssh"));
    let rsh = sshd.rsh_with("ao");
    let url = sshd.url("repo");
    let server_repo = sshd.base.join("srv/repo");
    let src1 = home.join("src1");
    let src2 = home.join("src2");
    write_tree(&src1, 1, 3, 200_000);
    write_tree(&src2, 2, 3, 200_000);
    let mut c = ours(home, &rsh);
    c.args(["init", "-e", "repokey", "--pack-size", "65536", url.as_str()]);
    ok(c);
    for (name, src) in [("a1", &src1), ("a2", &src2)] {
        let mut c = ours(home, &rsh);
        c.arg("create").arg(format!("{url}::{name}")).arg(src);
        ok(c);
    }
    let good = dedupstore::remote::manifest_versions(&server_repo).unwrap().last().unwrap().0;
    let packs_before = count_files(&server_repo.join("data"));
    // the client tries to destroy history: every attempt fails with exit 2
    let mut c = ours(home, &rsh);
    c.args(["prune", "--keep-last", "1", url.as_str()]);
    let err = fails(c);
    assert!(err.contains("append-only"), "{err}");
    let mut c = ours(home, &rsh);
    c.arg("delete").arg(format!("{url}::a2"));
    let err = fails(c);
    assert!(err.contains("append-only"), "{err}");
    let mut c = ours(home, &rsh);
    c.args(["compact", "--threshold", "0", url.as_str()]);
    let err = fails(c);
    assert!(err.contains("append-only"), "{err}");
    // nothing was removed on the server
    assert!(count_files(&server_repo.join("data")) >= packs_before);
    assert_eq!(std::fs::read_dir(server_repo.join("archives")).unwrap().count(), 2);
    // the operator rolls back on the server
    let out = output({
        let mut c = Command::new(BIN);
        c.arg("rollback").arg(&server_repo);
        c
    });
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listing.lines().count() as u64 > good, "{listing}");
    ok({
        let mut c = Command::new(BIN);
        c.args(["rollback", "--to", &good.to_string()]).arg(&server_repo);
        c
    });
    assert_eq!(list(home, &rsh, &url), vec!["a1", "a2"]);
    extract_and_compare(home, &rsh, &url, "a1", &src1, "out1");
    extract_and_compare(home, &rsh, &url, "a2", &src2, "out2");
    let mut c = ours(home, &rsh);
    c.args(["check", "--verify-data", url.as_str()]);
    ok(c);
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().is_some_and(|f| f.to_string_lossy().starts_with('.')) {
            continue; // a temporary file being written
        }
        n += if p.is_dir() { count_files(&p) } else { 1 };
    }
    n
}

#[test]
fn broken_connection_is_exit_2_and_leaves_the_repository_consistent() {
    if !rempart_testkit::require_root("sshd needs root to start with its own config") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    // a bogus ssh command: clear error, exit 2
    let mut c = ours(home, "false");
    c.args(["list", "ssh://root@127.0.0.1:9/nowhere"]);
    let err = fails(c);
    assert!(err.contains("connection to the server lost"), "{err}");
    let mut c = ours(home, "/nonexistent/ssh");
    c.args(["list", "ssh://root@127.0.0.1:9/nowhere"]);
    let err = fails(c);
    assert!(err.contains("cannot start ssh command"), "{err}");

    let sshd = Sshd::start(&home.join("ssh"));
    let rsh = sshd.rsh_with("ao");
    let url = sshd.url("repo");
    let server_repo = sshd.base.join("srv/repo");
    let small = home.join("small");
    write_tree(&small, 3, 2, 100_000);
    let big = home.join("big");
    write_tree(&big, 4, 12, 1 << 20);
    let mut c = ours(home, &rsh);
    c.args(["init", "-e", "repokey", "--pack-size", "65536", url.as_str()]);
    ok(c);
    let mut c = ours(home, &rsh);
    c.arg("create").arg(format!("{url}::small")).arg(&small);
    ok(c);
    let indexes0 = count_files(&server_repo.join("index"));
    let mut c = ours(home, &rsh);
    c.args(["create", "-c", "1"]).arg(format!("{url}::big")).arg(&big);
    let child = std::thread::spawn(move || output(c));
    // kill the ssh session right after the first checkpoint (index file) of this run reached the server
    rempart_testkit::wait::until(Duration::from_secs(30), "a checkpoint on the server", || {
        count_files(&server_repo.join("index")) > indexes0
    })
    .unwrap();
    assert!(sshd.kill_sessions() > 0);
    let out = child.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("connection to the server lost"), "{err}");
    // consistent: check passes, only the complete archive is listed, and it extracts
    let mut c = ours(home, &rsh);
    c.args(["check", url.as_str()]);
    ok(c);
    assert_eq!(list(home, &rsh, &url), vec!["small"]);
    extract_and_compare(home, &rsh, &url, "small", &small, "out");
    // the next run completes (the stale lock of the dead client is taken over)
    let mut c = ours(home, &rsh);
    c.args(["create", "--json"]).arg(format!("{url}::big")).arg(&big);
    let v: serde_json::Value = serde_json::from_str(&ok(c)).unwrap();
    assert_eq!(v["archive"]["stats"]["nfiles"].as_u64(), Some(12));
    // ... and reuses what the interrupted run sent before its checkpoint
    let dedup = v["archive"]["stats"]["deduplicated_size"].as_u64().unwrap();
    let orig = v["archive"]["stats"]["original_size"].as_u64().unwrap();
    assert!(dedup + 500_000 < orig, "nothing reused: {dedup} of {orig}");
    assert_eq!(list(home, &rsh, &url), vec!["big", "small"]);
}

/// The restore path over ssh: `read_parts` keeps many `ReadPart` requests in flight on the one
/// connection and hands each answer to the part that asked for it — also when a part fails in
/// the middle (a missing pack), and when the reader stops early (the answers still due are read,
/// so the next call on the connection gets its own answer, not a stale one).
#[test]
fn pipelined_reads_over_ssh_match_answers_to_requests() {
    use dedupstore::backend::{Backend, FileType};
    use dedupstore::remote::{RepoLocation, SshBackend, SshOptions};
    if !rempart_testkit::require_root("sshd needs root to start with its own config") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&d.path().join("ssh"));
    let loc = RepoLocation::parse(&sshd.url("raw")).unwrap();
    let opts = SshOptions { rsh: sshd.rsh(), remote_path: BIN.to_string(), ..SshOptions::default() };
    let b = SshBackend::connect(&loc, &opts).unwrap();
    b.create().unwrap();
    let mut r = rand::rngs::StdRng::seed_from_u64(11);
    let mut packs: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..12 {
        let mut v = vec![0u8; r.gen_range(1000..3_000_000)];
        r.fill(&mut v[..]);
        let name = format!("{i:02x}{:062x}", r.gen::<u64>());
        b.write(FileType::Pack, &name, &v).unwrap();
        packs.push((name, v));
    }
    // 300 parts, more bytes than one read window holds; part 150 names a pack that is not there
    let mut parts = Vec::new();
    for i in 0..300 {
        if i == 150 {
            parts.push(("ff".repeat(32), 0, 10));
            continue;
        }
        let (name, v) = &packs[r.gen_range(0..packs.len())];
        let off = r.gen_range(0..v.len() as u64);
        let len = r.gen_range(0..=(v.len() as u64 - off).min(1 << 20));
        parts.push((name.clone(), off, len));
    }
    let mut seen = Vec::new();
    b.read_parts(FileType::Pack, &parts, &mut |i, data| {
        let (name, off, len) = &parts[i];
        if i == 150 {
            assert!(data.is_err(), "the missing pack's part reports an error");
        } else {
            let want = &packs.iter().find(|p| &p.0 == name).unwrap().1[*off as usize..(*off + *len) as usize];
            assert!(data.unwrap() == want, "part {i}: bytes of another request");
        }
        seen.push(i);
        true
    });
    assert_eq!(seen, (0..300).collect::<Vec<_>>(), "every part once, in order");
    // stop after 5 parts: the next call still gets its own answer
    let mut n = 0;
    b.read_parts(FileType::Pack, &parts[..200], &mut |_, _| {
        n += 1;
        n < 5
    });
    assert_eq!(n, 5);
    assert_eq!(b.read(FileType::Pack, &packs[3].0).unwrap(), packs[3].1);
    assert_eq!(b.size(FileType::Pack, &packs[7].0).unwrap(), packs[7].1.len() as u64);
    // whole objects pipelined (check's reads), a missing one in the middle; the server's files
    // (payloads spliced from sshd's pipe) are the bytes sent
    let mut names: Vec<String> = packs.iter().map(|p| p.0.clone()).collect();
    names.insert(6, "ee".repeat(32));
    let mut seen = Vec::new();
    b.read_objects(FileType::Pack, &names, &mut |i, data| {
        match packs.iter().find(|p| p.0 == names[i]) {
            Some((_, v)) => assert!(data.unwrap() == *v, "object {i}: bytes of another request"),
            None => assert!(data.is_err(), "the missing object reports an error"),
        }
        seen.push(i);
        true
    });
    assert_eq!(seen, (0..names.len()).collect::<Vec<_>>());
    for (name, v) in &packs {
        let on_server = std::fs::read(sshd.base.join("srv/raw/data").join(&name[..2]).join(name)).unwrap();
        assert!(on_server == *v, "{name} stored differently");
    }
}

#[test]
fn check_over_ssh_finds_a_damaged_pack_as_a_local_check_does() {
    if !rempart_testkit::require_root("sshd needs root to start with its own config") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let sshd = Sshd::start(&home.join("ssh"));
    let rsh = sshd.rsh();
    let url = sshd.url("repo");
    let src = home.join("src");
    // random data: several packs, one of which gets damaged
    write_tree(&src, 5, 6, 3_000_000);
    let mut c = ours(home, &rsh);
    c.args(["init", "-e", "repokey", url.as_str()]);
    ok(c);
    let mut c = ours(home, &rsh);
    c.arg("create").arg(format!("{url}::a")).arg(&src);
    ok(c);
    let server_repo = sshd.base.join("srv/repo");
    let mut c = ours(home, &rsh);
    c.args(["check", "--verify-data", url.as_str()]);
    ok(c);
    let mut packs: Vec<_> = std::fs::read_dir(server_repo.join("data"))
        .unwrap()
        .flat_map(|f| std::fs::read_dir(f.unwrap().path()).unwrap())
        .map(|e| e.unwrap().path())
        .collect();
    packs.sort();
    assert!(packs.len() >= 2, "{packs:?}");
    let victim = &packs[packs.len() / 2];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[1000] ^= 0x40;
    std::fs::write(victim, bytes).unwrap();
    let problems = |err: &str| -> Vec<String> {
        let mut v: Vec<String> =
            err.lines().filter(|l| l.starts_with("pack ") || l.contains("damaged")).map(String::from).collect();
        v.sort();
        v
    };
    let mut c = ours(home, &rsh);
    c.args(["check", "--verify-data", url.as_str()]);
    // damage found is a warning (1) as in borg; 2 is for a check that could not run (issue 14)
    let remote = problems(&exits_with(c, 1));
    let mut c = ours(home, &rsh);
    c.args(["check", "--verify-data"]).arg(&server_repo);
    let local = problems(&exits_with(c, 1));
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    assert!(remote.iter().any(|l| l.contains(&name)), "the damaged pack is named: {remote:?}");
    assert_eq!(remote, local, "over ssh and locally, the same findings");
}
