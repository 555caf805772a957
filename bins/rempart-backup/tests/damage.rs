//! Damaged repositories through the binary (issue 14): a damaged index file stops no command,
//! `check` exits 1 for what it finds (2 only when it cannot run), and a file with chunks a
//! repair replaced with zeros is listed as not healthy, restored with a warning and exit code 1,
//! and healed by a later repair once its chunk is stored again.

use dedupstore::archive::Extent;
use dedupstore::backend::{Backend, FileType, LocalBackend};
use dedupstore::extract::archive_items;
use dedupstore::repo::{OpenOptions, Repository};
use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");
const PASS: &str = "test-pass";

fn ours(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("REMPART_PASSPHRASE", PASS)
        .env("REMPART_KEYS_DIR", home.join("keys"))
        .env("REMPART_CACHE_DIR", home.join("cache"))
        .env_remove("REMPART_PASSCOMMAND")
        .env_remove("REMPART_REPO")
        .env_remove("REMPART_LOG");
    c
}

/// Runs `rempart-backup ARGS` (in `cwd` if given).
fn rb(home: &Path, cwd: Option<&Path>, args: &[&str]) -> Output {
    let mut c = ours(home);
    c.args(args);
    if let Some(d) = cwd {
        c.current_dir(d);
    }
    c.output().expect("spawn rempart-backup")
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    r.fill(&mut v[..]);
    v
}

/// A repository (small packs) with archive `a` of `src` (`victim`: several chunks, `other`).
fn setup(home: &Path) -> (PathBuf, PathBuf) {
    let repo = home.join("repo");
    let src = home.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("victim"), random_bytes(3 << 20, 5)).unwrap();
    std::fs::write(src.join("other"), b"not damaged\n").unwrap();
    let r = rb(home, None, &["init", "-e", "repokey", "--pack-size", "262144", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    let r = rb(home, Some(&src), &["create", &format!("{}::a", repo.display()), "."]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    (repo, src)
}

fn open(repo: &Path) -> Repository {
    let o = OpenOptions { passphrase: Some(PASS.into()), keys_dir: None };
    Repository::open(Arc::new(LocalBackend::new(repo)), &o).unwrap()
}

/// `list --json-lines REPO::ARCHIVE`: path → healthy.
fn health(home: &Path, repo: &Path, archive: &str) -> Vec<(String, bool)> {
    let r = rb(home, None, &["list", "--json-lines", &format!("{}::{archive}", repo.display())]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    let mut v: Vec<(String, bool)> = String::from_utf8_lossy(&r.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|j| j["type"] == "-")
        .map(|j| (j["path"].as_str().unwrap().to_string(), j["healthy"].as_bool().unwrap()))
        .collect();
    v.sort();
    v
}

/// Issue 14: extract into a fresh directory; returns (exit code, stderr, the restored files).
fn extract(home: &Path, repo: &Path, archive: &str) -> (Option<i32>, String, PathBuf) {
    let dest = home.join(format!("out-{archive}-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&dest).unwrap();
    let r = rb(home, Some(&dest), &["extract", &format!("{}::{archive}", repo.display())]);
    (code(&r), stderr(&r), dest)
}

/// Issue 14: a truncated index file made create, extract, check and check --repair all fail.
/// Through the binary: create and extract succeed (exit 0) and restore byte-identical data,
/// check exits 1 (a warning, as borg for found-and-fixable problems) naming the file, check
/// --repair exits 0, and check is clean (exit 0) afterwards.
#[test]
fn a_truncated_index_file_stops_no_command_and_check_exits_1() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let (repo, src) = setup(home);
    let b = LocalBackend::new(&repo);
    let names = b.list(FileType::Index).unwrap();
    assert_eq!(names.len(), 1);
    let p = b.path(FileType::Index, &names[0]);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::File::options().write(true).open(&p).unwrap().set_len(len / 2).unwrap();

    let (c, err, dest) = extract(home, &repo, "a");
    assert_eq!(c, Some(0), "{err}");
    assert!(err.contains(&names[0]), "the damaged index file is named: {err}");
    for f in ["victim", "other"] {
        let got = walk(&dest).into_iter().find(|p| p.ends_with(f)).unwrap();
        assert_eq!(std::fs::read(got).unwrap(), std::fs::read(src.join(f)).unwrap(), "{f}");
    }
    let r = rb(home, None, &["check", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains(&format!("warning: index file {}", names[0])), "{}", stderr(&r));
    let r = rb(home, None, &["check", "--repair", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    let r = rb(home, None, &["check", "--verify-data", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));

    // create on a damaged index (a fresh files cache, so the index is read): exit 0
    let p = b.path(FileType::Index, &b.list(FileType::Index).unwrap()[0]);
    std::fs::write(&p, b"garbage").unwrap();
    let r = rb(home, Some(&src), &["create", "--no-files-cache", &format!("{}::b", repo.display()), "."]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    let r = rb(home, None, &["check", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(0), "create wrote a fresh index: {}", stderr(&r));
}

/// Issue 14: damage `check` finds is exit code 1 (borg's warning); 2 is only for a check that
/// could not run.
#[test]
fn check_exits_1_for_damage_and_2_when_it_cannot_run() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let (repo, _) = setup(home);
    let r = rb(home, None, &["check", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    // flip a byte in a pack: damaged data
    let b = LocalBackend::new(&repo);
    let pack = b.list(FileType::Pack).unwrap()[0].clone();
    let p = b.path(FileType::Pack, &pack);
    let mut data = std::fs::read(&p).unwrap();
    data[100] ^= 1;
    std::fs::write(&p, &data).unwrap();
    let r = rb(home, None, &["check", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains(&pack), "{}", stderr(&r));
    // cannot run: wrong passphrase, not a repository
    let mut c = ours(home);
    c.env("REMPART_PASSPHRASE", "wrong").arg("check").arg(&repo);
    assert_eq!(c.output().unwrap().status.code(), Some(2));
    let r = rb(home, None, &["check", home.join("nothing").to_str().unwrap()]);
    assert_eq!(code(&r), Some(2), "{}", stderr(&r));
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(x) = stack.pop() {
        if x.is_dir() {
            stack.extend(std::fs::read_dir(&x).unwrap().map(|e| e.unwrap().path()));
        } else {
            out.push(x);
        }
    }
    out
}

/// Issue 14: after check --repair replaced a lost chunk with zeros, extract wrote the file with
/// exit 0 and `list --json-lines` said it was healthy. Now: `"healthy": false`, extract writes
/// the file, names it and exits 1; the next create of the same data stores the chunk again and
/// check --repair heals the file: healthy, extract exit 0, byte-identical.
#[test]
fn a_file_with_a_lost_chunk_is_unhealthy_warned_about_on_extract_and_healed() {
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let (repo, src) = setup(home);
    let victim = std::fs::read(src.join("victim")).unwrap();
    // the pack holding the victim's second chunk (not the item stream's pack) goes missing
    let lib = open(&repo);
    let idx = lib.load_index().unwrap();
    let items = archive_items(&lib, &idx, "a").unwrap();
    let v = items.iter().find(|i| i.path.ends_with(b"victim")).unwrap();
    let (_, meta) = dedupstore::commands::archive_info(&lib, "a").unwrap();
    // spared: the item stream and `other`
    let o = items.iter().find(|i| i.path.ends_with(b"other")).unwrap();
    let mut spared: Vec<dedupstore::Id> = meta.items.clone();
    spared.extend(o.chunks.iter().filter_map(|c| match c {
        Extent::Data { id, .. } => Some(*id),
        Extent::Hole(_) => None,
    }));
    let in_stream_pack = |id: &dedupstore::Id| spared.iter().any(|i| idx.chunks[i].pack == idx.chunks[id].pack);
    let pack = v
        .chunks
        .iter()
        .find_map(|c| match c {
            Extent::Data { id, .. } if !in_stream_pack(id) => Some(idx.chunks[id].pack),
            _ => None,
        })
        .expect("a victim chunk outside the item stream's packs");
    std::fs::remove_file(LocalBackend::new(&repo).path(FileType::Pack, &pack.to_hex())).unwrap();

    let r = rb(home, None, &["check", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(1), "{}", stderr(&r));
    assert!(stderr(&r).contains("victim"), "{}", stderr(&r));
    let r = rb(home, None, &["check", "--repair", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    assert!(stderr(&r).contains("replaced with zeros"), "{}", stderr(&r));
    assert_eq!(health(home, &repo, "a"), [("other".to_string(), true), ("victim".to_string(), false)]);
    let (c, err, dest) = extract(home, &repo, "a");
    assert_eq!(c, Some(1), "{err}");
    assert!(err.lines().any(|l| l.starts_with("victim: ") && l.contains("damaged")), "{err}");
    assert!(!err.contains("other"), "{err}");
    let got = std::fs::read(dest.join("victim")).unwrap();
    assert!(got.len() == victim.len() && got != victim, "written, with zeros for the lost chunk");
    assert_eq!(std::fs::read(dest.join("other")).unwrap(), b"not damaged\n");
    // the runner's restore-and-verify does not pass it either
    let target = format!("{}::a", repo.display());
    let r = rb(home, None, &["restore-test", "--tmp-dir", home.to_str().unwrap(), &target]);
    assert_eq!(code(&r), Some(2), "{}", stderr(&r));
    assert!(stderr(&r).lines().any(|l| l.starts_with("victim: ") && l.contains("damaged")), "{}", stderr(&r));

    // the same file backed up again stores the lost chunk; the repair puts it back
    let r = rb(home, Some(&src), &["create", &format!("{}::b", repo.display()), "."]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    let r = rb(home, None, &["check", "--repair", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    assert!(stderr(&r).contains("healed"), "{}", stderr(&r));
    assert_eq!(health(home, &repo, "a"), [("other".to_string(), true), ("victim".to_string(), true)]);
    let (c, err, dest) = extract(home, &repo, "a");
    assert_eq!(c, Some(0), "{err}");
    assert_eq!(std::fs::read(dest.join("victim")).unwrap(), victim);
    let r = rb(home, None, &["restore-test", "--tmp-dir", home.to_str().unwrap(), &target]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
    let r = rb(home, None, &["check", "--verify-data", repo.to_str().unwrap()]);
    assert_eq!(code(&r), Some(0), "{}", stderr(&r));
}
