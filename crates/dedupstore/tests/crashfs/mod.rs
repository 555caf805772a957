//! A model file system for crash-consistency tests of `LocalBackend` (issue 14): it keeps what
//! was written (live) apart from what is durable, like testkit's `CrashDisk` but with files and
//! directories.
//!
//! - File data is durable after `FsFile::sync`; writes since the last sync are pending.
//! - A directory entry (a file or directory created, renamed, linked or removed in it) is
//!   durable only after `Fs::sync_dir` of that directory.
//! - Every mutating call is one *step*. `crash_after(n)` lets `n` steps succeed; the next call,
//!   and every call after it (reads included), fails as if the process had died there.
//! - `crash_image` is what a power cut at that moment could leave: the durable directory tree;
//!   for each directory entry whose live and durable versions differ, either one (a POSIX file
//!   system promises nothing more without a directory fsync); for each file, its durable bytes
//!   plus each pending write applied or not, one of them possibly torn at a sector boundary
//!   (512 B or 4 KiB), the unwritten rest of a torn write reading as zeros.
//!
//! ```text
//!   LocalBackend<CrashFs> ──► steps (create, write, fsync, rename, link, unlink, fsync dir)
//!        live tree ── sync/sync_dir ──► durable tree ── crash_image(rng) ──► new CrashFs
//! ```

use dedupstore::backend::{Fs, FsFile};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    File(u64),
    Dir,
}

#[derive(Debug, Clone, Default)]
struct Dir {
    live: BTreeMap<String, Entry>,
    durable: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, Default)]
struct Inode {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Writes since the last sync: (offset, bytes).
    pending: Vec<(usize, Vec<u8>)>,
}

#[derive(Debug, Clone, Default)]
struct State {
    /// Directories by absolute path; "/" always exists.
    dirs: BTreeMap<PathBuf, Dir>,
    inodes: BTreeMap<u64, Inode>,
    next_ino: u64,
    /// Inodes with a live write handle (what `flock` tells the real backend).
    locked: BTreeSet<u64>,
    steps: u64,
    crash_after: Option<u64>,
    crashed: bool,
    /// The steps taken, for the replay message.
    log: Vec<String>,
}

/// How a crash image treats what is not durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Image {
    /// Only what was synced survives.
    DurableOnly,
    /// Everything survives (a process crash without a power cut).
    Everything,
    /// A random mix from the seed, with torn writes.
    Random,
}

/// The model; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct CrashFs {
    s: Arc<Mutex<State>>,
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash")
}

fn split(p: &Path) -> io::Result<(PathBuf, String)> {
    let parent = p.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent"))?;
    let name = p.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no name"))?;
    Ok((parent.to_path_buf(), name.to_string_lossy().into_owned()))
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file (model)", p.display()))
}

impl State {
    fn lookup(&self, p: &Path) -> Option<Entry> {
        if p == Path::new("/") {
            return Some(Entry::Dir);
        }
        let (parent, name) = split(p).ok()?;
        self.dirs.get(&parent)?.live.get(&name).copied()
    }
    fn file(&self, p: &Path) -> io::Result<&Inode> {
        match self.lookup(p) {
            Some(Entry::File(ino)) => self.inodes.get(&ino).ok_or_else(|| not_found(p)),
            Some(Entry::Dir) => Err(io::Error::new(io::ErrorKind::IsADirectory, p.display().to_string())),
            None => Err(not_found(p)),
        }
    }
    fn dir_mut(&mut self, p: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(p).ok_or_else(|| not_found(p))
    }
    /// One mutating call: fails once the crash point is reached.
    fn step(&mut self, what: impl FnOnce() -> String) -> io::Result<()> {
        if self.crashed {
            return Err(crashed());
        }
        if self.crash_after == Some(self.steps) {
            self.crashed = true;
            self.log.push(format!("CRASH before: {}", what()));
            return Err(crashed());
        }
        self.steps += 1;
        self.log.push(what());
        Ok(())
    }
    fn read_check(&self) -> io::Result<()> {
        if self.crashed {
            return Err(crashed());
        }
        Ok(())
    }
}

impl CrashFs {
    /// An empty file system (only `/`).
    pub(crate) fn new() -> Self {
        let fs = CrashFs::default();
        fs.lock().dirs.insert(PathBuf::from("/"), Dir::default());
        fs
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // a panic while holding it (a failed assertion elsewhere) leaves the model usable
        self.s.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An independent copy (clones share; this does not).
    pub(crate) fn fork(&self) -> CrashFs {
        CrashFs { s: Arc::new(Mutex::new(self.lock().clone())) }
    }

    /// Lets `n` more mutating calls succeed, then crashes (`None`: never).
    pub(crate) fn crash_after(&self, n: Option<u64>) {
        let mut s = self.lock();
        s.crash_after = n.map(|n| s.steps + n);
    }

    /// Mutating calls made so far.
    pub(crate) fn steps(&self) -> u64 {
        self.lock().steps
    }

    /// Whether the crash point was reached.
    pub(crate) fn has_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// The last `n` steps (and the crash), for a failure message.
    pub(crate) fn last_steps(&self, n: usize) -> String {
        let s = self.lock();
        let from = s.log.len().saturating_sub(n);
        s.log[from..].join("\n    ")
    }

    /// Makes everything durable (a clean shutdown) and forgets the step log.
    pub(crate) fn settle(&self) {
        let mut s = self.lock();
        for d in s.dirs.values_mut() {
            d.durable = d.live.clone();
        }
        for i in s.inodes.values_mut() {
            i.durable = i.live.clone();
            i.pending.clear();
        }
        s.log.clear();
    }

    /// What a power cut now could leave, as a new file system (all of it durable, no process
    /// alive: no file locked, no crash pending).
    pub(crate) fn crash_image(&self, how: Image, rng: &mut impl Rng) -> CrashFs {
        let s = self.lock();
        let mut out = State { next_ino: s.next_ino, ..State::default() };
        // per inode, decided once (hard links share it)
        let mut contents: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut content = |ino: u64, rng: &mut dyn rand::RngCore| -> Vec<u8> {
            contents
                .entry(ino)
                .or_insert_with(|| {
                    let Some(i) = s.inodes.get(&ino) else { return Vec::new() };
                    match how {
                        Image::DurableOnly => i.durable.clone(),
                        Image::Everything => i.live.clone(),
                        Image::Random => file_image(i, rng),
                    }
                })
                .clone()
        };
        let mut todo = vec![PathBuf::from("/")];
        while let Some(d) = todo.pop() {
            let Some(dir) = s.dirs.get(&d) else { continue };
            let names: BTreeSet<&String> = dir.live.keys().chain(dir.durable.keys()).collect();
            let mut entries = BTreeMap::new();
            for name in names {
                let (live, durable) = (dir.live.get(name), dir.durable.get(name));
                let pick = match how {
                    Image::DurableOnly => durable,
                    Image::Everything => live,
                    Image::Random if live == durable => live,
                    Image::Random => {
                        if rng.gen_bool(0.5) {
                            live
                        } else {
                            durable
                        }
                    }
                };
                let Some(e) = pick else { continue };
                match *e {
                    Entry::Dir => {
                        if !s.dirs.contains_key(&d.join(name)) {
                            continue;
                        }
                        todo.push(d.join(name));
                    }
                    Entry::File(ino) => {
                        let bytes = content(ino, rng);
                        out.inodes.insert(ino, Inode { live: bytes.clone(), durable: bytes, pending: vec![] });
                    }
                }
                entries.insert(name.clone(), *e);
            }
            out.dirs.insert(d, Dir { live: entries.clone(), durable: entries });
        }
        CrashFs { s: Arc::new(Mutex::new(out)) }
    }

    /// Every file's path and bytes (for comparing two states).
    pub(crate) fn files(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let s = self.lock();
        let mut out = BTreeMap::new();
        for (d, dir) in &s.dirs {
            for (name, e) in &dir.live {
                if let Entry::File(ino) = e {
                    out.insert(d.join(name), s.inodes.get(ino).map(|i| i.live.clone()).unwrap_or_default());
                }
            }
        }
        out
    }
}

/// A file's bytes after a power cut: durable bytes plus each pending write or not, one of them
/// possibly torn at a sector boundary.
fn file_image(i: &Inode, rng: &mut dyn rand::RngCore) -> Vec<u8> {
    let mut img = i.durable.clone();
    if i.pending.is_empty() {
        return img;
    }
    let torn = rng.gen_range(0..i.pending.len());
    let sector = if rng.gen_bool(0.5) { 512 } else { 4096 };
    for (k, (off, data)) in i.pending.iter().enumerate() {
        if !rng.gen_bool(0.5) {
            continue;
        }
        let keep = if k == torn {
            (rng.gen_range(0..=data.len().div_ceil(sector)) * sector).min(data.len())
        } else {
            data.len()
        };
        if img.len() < off + data.len() {
            // the size reached the disk; unwritten sectors read as zeros
            img.resize(off + data.len(), 0);
        }
        img[*off..off + keep].copy_from_slice(&data[..keep]);
    }
    img
}

/// A file being written in the model.
#[derive(Debug)]
pub(crate) struct ModelFile {
    fs: CrashFs,
    ino: u64,
    path: PathBuf,
}

impl FsFile for ModelFile {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let mut s = self.fs.lock();
        let (ino, path) = (self.ino, &self.path);
        s.step(|| format!("write {} bytes to {}", data.len(), path.display()))?;
        let i = s.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        let off = i.live.len();
        i.live.extend_from_slice(data);
        i.pending.push((off, data.to_vec()));
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut s = self.fs.lock();
        let (ino, path) = (self.ino, &self.path);
        s.step(|| format!("fsync {}", path.display()))?;
        let i = s.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        i.durable = i.live.clone();
        i.pending.clear();
        Ok(())
    }
}

impl Drop for ModelFile {
    fn drop(&mut self) {
        let ino = self.ino;
        self.fs.lock().locked.remove(&ino);
    }
}

impl Fs for CrashFs {
    type File = ModelFile;
    type Reader = Cursor<Vec<u8>>;

    fn exists(&self, p: &Path) -> bool {
        let s = self.lock();
        !s.crashed && s.lookup(p).is_some()
    }
    fn read_dir(&self, p: &Path) -> io::Result<Vec<(String, bool)>> {
        let s = self.lock();
        s.read_check()?;
        let d = s.dirs.get(p).ok_or_else(|| not_found(p))?;
        Ok(d.live.iter().map(|(n, e)| (n.clone(), *e == Entry::Dir)).collect())
    }
    fn create_dir_all(&self, p: &Path) -> io::Result<()> {
        let mut s = self.lock();
        let mut cur = PathBuf::from("/");
        for c in p.components().skip(1) {
            let next = cur.join(c);
            match s.lookup(&next) {
                Some(Entry::Dir) => {}
                Some(Entry::File(_)) => {
                    return Err(io::Error::new(io::ErrorKind::AlreadyExists, next.display().to_string()))
                }
                None => {
                    s.step(|| format!("mkdir {}", next.display()))?;
                    let name = c.as_os_str().to_string_lossy().into_owned();
                    s.dir_mut(&cur)?.live.insert(name, Entry::Dir);
                    s.dirs.entry(next.clone()).or_default();
                }
            }
            cur = next;
        }
        Ok(())
    }
    fn create_new(&self, p: &Path) -> io::Result<ModelFile> {
        let mut s = self.lock();
        s.step(|| format!("create {}", p.display()))?;
        if s.lookup(p).is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, p.display().to_string()));
        }
        let (parent, name) = split(p)?;
        let ino = s.next_ino;
        s.dir_mut(&parent)?.live.insert(name, Entry::File(ino));
        s.next_ino += 1;
        s.inodes.insert(ino, Inode::default());
        s.locked.insert(ino);
        Ok(ModelFile { fs: self.clone(), ino, path: p.to_path_buf() })
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.step(|| format!("rename {} -> {}", from.display(), to.display()))?;
        let e = s.lookup(from).ok_or_else(|| not_found(from))?;
        let ((fp, fname), (tp, tname)) = (split(from)?, split(to)?);
        s.dir_mut(&tp)?;
        s.dir_mut(&fp)?.live.remove(&fname);
        s.dir_mut(&tp)?.live.insert(tname, e);
        Ok(())
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.step(|| format!("link {} -> {}", from.display(), to.display()))?;
        let e = s.lookup(from).ok_or_else(|| not_found(from))?;
        if s.lookup(to).is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, to.display().to_string()));
        }
        let (tp, tname) = split(to)?;
        s.dir_mut(&tp)?.live.insert(tname, e);
        Ok(())
    }
    fn remove_file(&self, p: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.step(|| format!("unlink {}", p.display()))?;
        match s.lookup(p) {
            Some(Entry::File(_)) => {}
            Some(Entry::Dir) => return Err(io::Error::new(io::ErrorKind::IsADirectory, p.display().to_string())),
            None => return Err(not_found(p)),
        }
        let (parent, name) = split(p)?;
        s.dir_mut(&parent)?.live.remove(&name);
        Ok(())
    }
    fn sync_dir(&self, p: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.step(|| format!("fsync dir {}", p.display()))?;
        let d = s.dir_mut(p)?;
        d.durable = d.live.clone();
        Ok(())
    }
    fn read(&self, p: &Path) -> io::Result<Vec<u8>> {
        let s = self.lock();
        s.read_check()?;
        Ok(s.file(p)?.live.clone())
    }
    fn open(&self, p: &Path) -> io::Result<(Cursor<Vec<u8>>, u64)> {
        let s = self.lock();
        s.read_check()?;
        let data = s.file(p)?.live.clone();
        let len = data.len() as u64;
        Ok((Cursor::new(data), len))
    }
    fn size(&self, p: &Path) -> io::Result<u64> {
        let s = self.lock();
        s.read_check()?;
        Ok(s.file(p)?.live.len() as u64)
    }
    /// A temporary file no live handle holds is stale (the model has no clock: the real file
    /// system's one-minute grace is for a writer that has not locked its file yet, which cannot
    /// happen here).
    fn remove_if_stale(&self, p: &Path) -> Option<u64> {
        let len = {
            let s = self.lock();
            let Some(Entry::File(ino)) = s.lookup(p) else { return None };
            if s.locked.contains(&ino) {
                return None;
            }
            s.inodes.get(&ino).map_or(0, |i| i.live.len() as u64)
        };
        self.remove_file(p).ok().map(|()| len)
    }
}
