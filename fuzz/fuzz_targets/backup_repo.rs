//! A repository opened over arbitrary object bytes: a real repository (mode `none`, so no MAC
//! stops the bytes at the door; two archives of a small tree) is made once in memory, then each
//! input damages its objects — replaces, truncates, flips bytes in, removes, adds or copies
//! objects of any kind — and the read paths run over the result: open, list, info, load the
//! index, `check --verify-data`, `extract --dry-run` of every archive, `check --repair`, then
//! list and extract again. Each must return (an error is fine); none may panic or loop.
#![no_main]
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use arbitrary::Arbitrary;
use dedupstore::backend::{Backend, FileType};
use dedupstore::commands::{self, CheckOptions};
use dedupstore::create::{create, CreateOptions};
use dedupstore::crypto::Mode;
use dedupstore::extract::{extract, ExtractOptions};
use dedupstore::repo::{InitOptions, OpenOptions, Repository};
use dedupstore::{Error, Result};
use libfuzzer_sys::fuzz_target;

type Objects = BTreeMap<(u8, String), Vec<u8>>;

const KINDS: [FileType; 7] = [
    FileType::Config,
    FileType::Key,
    FileType::Manifest,
    FileType::Index,
    FileType::Pack,
    FileType::Archive,
    FileType::Lock,
];

fn code(t: FileType) -> u8 {
    KINDS.iter().position(|k| *k == t).unwrap_or(0) as u8
}

/// Every object in a map, behind the [`Backend`] trait.
#[derive(Debug, Default)]
struct MemBackend {
    objects: Mutex<Objects>,
}

impl MemBackend {
    fn map(&self) -> std::sync::MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Backend for MemBackend {
    fn location(&self) -> String {
        "mem:fuzz".into()
    }
    fn exists(&self) -> Result<bool> {
        Ok(self.map().contains_key(&(code(FileType::Config), "config".into())))
    }
    fn create(&self) -> Result<()> {
        Ok(())
    }
    fn list(&self, t: FileType) -> Result<Vec<String>> {
        Ok(self.map().keys().filter(|(k, _)| *k == code(t)).map(|(_, n)| n.clone()).collect())
    }
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        self.map().get(&(code(t), name.to_string())).cloned().ok_or_else(|| Error::NotFound(name.into()))
    }
    fn read_part(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let m = self.map();
        let b = m.get(&(code(t), name.to_string())).ok_or_else(|| Error::NotFound(name.into()))?;
        let r = usize::try_from(offset).ok().and_then(|o| Some(o..o.checked_add(usize::try_from(len).ok()?)?));
        r.and_then(|r| b.get(r))
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Integrity { what: name.into(), reason: "short object".into() })
    }
    fn size(&self, t: FileType, name: &str) -> Result<u64> {
        self.map().get(&(code(t), name.to_string())).map(|b| b.len() as u64).ok_or_else(|| Error::NotFound(name.into()))
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        self.map().insert((code(t), name.to_string()), data.to_vec());
        Ok(())
    }
    fn create_new(&self, t: FileType, name: &str, data: &[u8]) -> Result<bool> {
        let mut m = self.map();
        let k = (code(t), name.to_string());
        if m.contains_key(&k) {
            return Ok(false);
        }
        m.insert(k, data.to_vec());
        Ok(true)
    }
    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        self.map().remove(&(code(t), name.to_string()));
        Ok(())
    }
}

/// The undamaged repository, made once per process.
fn seed() -> &'static Objects {
    static SEED: OnceLock<Objects> = OnceLock::new();
    SEED.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("rempart-fuzz-backup-repo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).expect("seed dir");
        std::fs::write(dir.join("a.txt"), b"hello, repository\n").expect("seed file");
        let mut x: u32 = 12345;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 16) as u8
            })
            .collect();
        std::fs::write(dir.join("sub/noise"), &noise).expect("seed file");
        std::fs::write(dir.join("sparse"), vec![0u8; 70_000]).expect("seed file");
        std::fs::write(dir.join("empty"), b"").expect("seed file");
        let _ = std::os::unix::fs::symlink("a.txt", dir.join("link"));
        let backend = Arc::new(MemBackend::default());
        let mut init = InitOptions::new(Mode::None, None);
        init.pack_size = 64 * 1024;
        let repo = Repository::init(backend.clone(), &init).expect("init");
        for name in ["one", "two"] {
            let mut opts = CreateOptions::new(name, vec![dir.clone()]);
            opts.threads = 1;
            create(&repo, &opts, &mut |_| {}).expect("create");
            std::fs::write(dir.join("a.txt"), b"changed between archives\n").expect("seed file");
        }
        let _ = std::fs::remove_dir_all(&dir);
        let objects = backend.map().clone();
        objects
    })
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Replace { kind: u8, pick: u8, bytes: Vec<u8> },
    Truncate { kind: u8, pick: u8, len: u16 },
    Flip { kind: u8, pick: u8, pos: u32, xor: u8 },
    Remove { kind: u8, pick: u8 },
    Add { kind: u8, name: u8, bytes: Vec<u8> },
    Copy { from_kind: u8, from: u8, kind: u8, pick: u8 },
}

fn pick(m: &Objects, kind: u8, pick: u8) -> Option<(u8, String)> {
    let kind = kind % KINDS.len() as u8;
    let keys: Vec<_> = m.keys().filter(|(k, _)| *k == kind).cloned().collect();
    if keys.is_empty() {
        return None;
    }
    Some(keys[usize::from(pick) % keys.len()].clone())
}

fn damage(m: &mut Objects, d: Damage) {
    match d {
        Damage::Replace { kind, pick: p, bytes } => {
            if let Some(k) = pick(m, kind, p) {
                m.insert(k, bytes);
            }
        }
        Damage::Truncate { kind, pick: p, len } => {
            if let Some(b) = pick(m, kind, p).and_then(|k| m.get_mut(&k)) {
                b.truncate(usize::from(len));
            }
        }
        Damage::Flip { kind, pick: p, pos, xor } => {
            if let Some(b) = pick(m, kind, p).and_then(|k| m.get_mut(&k)) {
                if !b.is_empty() {
                    let i = pos as usize % b.len();
                    b[i] ^= xor;
                }
            }
        }
        Damage::Remove { kind, pick: p } => {
            if let Some(k) = pick(m, kind, p) {
                m.remove(&k);
            }
        }
        Damage::Add { kind, name, bytes } => {
            // A name like the repository's own (64 hex digits), or a short odd one.
            let name = if name % 2 == 0 { format!("{:064x}", name) } else { format!("x{name}") };
            m.insert((kind % KINDS.len() as u8, name), bytes);
        }
        Damage::Copy { from_kind, from, kind, pick: p } => {
            if let (Some(src), Some(dst)) = (pick(m, from_kind, from), pick(m, kind, p)) {
                let b = m[&src].clone();
                m.insert(dst, b);
            }
        }
    }
}

fn read_everything(repo: &Repository) {
    let _ = commands::list_archives(repo);
    let _ = commands::repo_info(repo);
    let _ = repo.load_index();
    let names: Vec<String> = match repo.manifest() {
        Ok(m) => m.archives.iter().take(4).map(|a| a.name.clone()).collect(),
        Err(_) => vec![],
    };
    for name in names.iter().chain(std::iter::once(&"missing".to_string())) {
        let _ = commands::archive_info(repo, name);
        let opts =
            ExtractOptions { dest: PathBuf::from("/nonexistent"), dry_run: true, threads: 1, ..Default::default() };
        let _ = extract(repo, name, &opts);
    }
}

fuzz_target!(|input: Vec<Damage>| {
    let mut objects = seed().clone();
    for d in input.into_iter().take(16) {
        damage(&mut objects, d);
    }
    let backend = Arc::new(MemBackend { objects: Mutex::new(objects) });
    let Ok(mut repo) = Repository::open(backend, &OpenOptions::default()) else {
        return;
    };
    repo.set_bypass_lock(true);
    repo.set_lock_wait(std::time::Duration::ZERO);
    read_everything(&repo);
    let _ = commands::check(&repo, CheckOptions { verify_data: true, ..Default::default() });
    let _ = commands::check(&repo, CheckOptions { repair: true, ..Default::default() });
    read_everything(&repo);
});
