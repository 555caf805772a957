//! Crash safety of every mutating command, deterministically: a backend that "crashes" (stops
//! accepting writes and removes) after N mutating operations, for every N. Each backend write
//! is atomic (temp file + fsync + rename, see `LocalBackend`), so a crash can only fall between
//! two operations; this test visits every such point. After each crash the repository, opened
//! normally, must pass `check --verify-data`, every committed archive must read back intact,
//! and the next run of the command must complete.

use dedupstore::backend::{Backend, FileType, LocalBackend};
use dedupstore::commands::{self, CheckOptions};
use dedupstore::create::{create, CreateOptions};
use dedupstore::crypto::{KdfParams, Mode};
use dedupstore::extract::{archive_items, item_content};
use dedupstore::repo::{InitOptions, OpenOptions, RepoLock, Repository};
use dedupstore::{Error, Result};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct CrashingBackend {
    inner: LocalBackend,
    budget: AtomicUsize,
}

impl CrashingBackend {
    fn spend(&self) -> Result<()> {
        let left = self.budget.load(Ordering::SeqCst);
        if left == 0 {
            return Err(Error::Io { path: "crash".into(), source: std::io::Error::other("simulated crash") });
        }
        self.budget.store(left - 1, Ordering::SeqCst);
        Ok(())
    }
}

impl Backend for CrashingBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn exists(&self) -> Result<bool> {
        self.inner.exists()
    }
    fn create(&self) -> Result<()> {
        self.spend()?;
        self.inner.create()
    }
    fn list(&self, t: FileType) -> Result<Vec<String>> {
        self.inner.list(t)
    }
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        self.inner.read(t, name)
    }
    fn read_part(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.read_part(t, name, offset, len)
    }
    fn size(&self, t: FileType, name: &str) -> Result<u64> {
        self.inner.size(t, name)
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        self.spend()?;
        self.inner.write(t, name, data)
    }
    fn create_new(&self, t: FileType, name: &str, data: &[u8]) -> Result<bool> {
        self.spend()?;
        self.inner.create_new(t, name, data)
    }
    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        self.spend()?;
        self.inner.remove(t, name)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn open(backend: Arc<dyn Backend>) -> Repository {
    Repository::open(backend, &OpenOptions { passphrase: Some("pw".into()), keys_dir: None }).unwrap()
}

/// Every archive in the manifest reads back with the expected content; check is clean.
fn verify(repo: &Repository, expect: &[(&str, Vec<u8>)]) {
    let r = commands::check(repo, CheckOptions { verify_data: true, repair: false, ..Default::default() }).unwrap();
    assert!(r.ok(), "{:?}", r.errors);
    let idx = repo.load_index().unwrap();
    for a in commands::list_archives(repo).unwrap() {
        let items = archive_items(repo, &idx, &a.name).unwrap();
        let file = items.iter().find(|i| i.path.ends_with(b"/data")).unwrap();
        let content = item_content(repo, &idx, file).unwrap();
        let want = &expect.iter().find(|(n, _)| *n == a.name).unwrap().1;
        assert_eq!(&content, want, "archive {}", a.name);
    }
}

fn bytes(seed: u8, n: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_crash_between_any_two_writes_of_create_delete_and_compact_loses_nothing_committed() {
    let d = tempfile::tempdir().unwrap();
    let base = d.path().join("base");
    let mut o = InitOptions::new(Mode::Repokey, Some("pw".into()));
    o.kdf = KdfParams { m_cost: 1024, t_cost: 1, p_cost: 1 };
    o.pack_size = 64 << 10;
    o.chunker = dedupstore::chunker::ChunkerParams { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };
    let repo = Repository::init(Arc::new(LocalBackend::new(&base)), &o).unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut expect = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let mut content = bytes(1, 100_000);
        content.extend(bytes(i as u8 + 2, 150_000));
        std::fs::write(src.join("data"), &content).unwrap();
        create(&repo, &CreateOptions::new(*name, vec![src.join("data")]), &mut |_| {}).unwrap();
        expect.push((*name, content));
    }
    let next = {
        let mut c = bytes(1, 100_000);
        c.extend(bytes(9, 150_000));
        c
    };
    expect.push(("d", next.clone()));
    std::fs::write(src.join("data"), &next).unwrap();

    type Op = fn(&Repository, &Path) -> Result<()>;
    let ops: [(&str, Op); 3] = [
        ("create", |r, src| create(r, &CreateOptions::new("d", vec![src.join("data")]), &mut |_| {}).map(|_| ())),
        ("delete", |r, _| commands::delete_archives(r, &["b"]).map(|_| ())),
        ("compact", |r, _| {
            commands::delete_archives(r, &["a"])?;
            let plan = commands::compact_plan(r, 0)?;
            commands::compact_apply(r, &plan)
        }),
    ];
    for (what, op) in ops {
        let mut completed = false;
        for budget in 0..200 {
            let dir = d.path().join(format!("{what}-{budget}"));
            copy_dir(&base, &dir);
            let crashing =
                Arc::new(CrashingBackend { inner: LocalBackend::new(&dir), budget: AtomicUsize::new(budget) });
            let res = op(&open(crashing), &src);
            let repo = open(Arc::new(LocalBackend::new(&dir)));
            verify(&repo, &expect);
            // the next run completes (after removing the lock our "dead" process left)
            RepoLock::break_lock(&LocalBackend::new(&dir)).unwrap();
            if res.is_ok() {
                completed = true;
                std::fs::remove_dir_all(&dir).unwrap();
                break;
            }
            let again = op(&repo, &src);
            assert!(
                again.is_ok() || matches!(again, Err(Error::NoSuchArchive(_)) | Err(Error::ArchiveExists(_))),
                "{what} after a crash at write {budget}: {again:?}"
            );
            verify(&repo, &expect);
            std::fs::remove_dir_all(&dir).unwrap();
        }
        assert!(completed, "{what} never completed within the write budget");
    }
}
