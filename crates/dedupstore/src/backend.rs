//! Storage backends: where a repository's files live.
//!
//! The [`Backend`] trait is deliberately small (rustic_core's shape): list, read, read a part,
//! write, create-if-absent and remove, by [`FileType`] and name. Everything above it (packs,
//! index, manifest, locks) is expressed with these calls, so a remote backend (SSH, object store)
//! only implements this trait. Every `write` must be atomic and durable when it returns: a reader
//! sees either the old object or the complete new one, never a prefix, even after a crash.

use crate::error::{Error, Result};
use nix::fcntl::{Flock, FlockArg};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The kinds of objects a repository stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FileType {
    /// The repository config (format version, id, mode, chunker parameters).
    Config,
    /// Key files (`repokey` mode keeps the passphrase-encrypted master key here).
    Key,
    /// The manifest: the list of archives. Replaced atomically, written last.
    Manifest,
    /// Index files: chunk id to pack location.
    Index,
    /// Pack files: many encrypted chunks, never rewritten in place.
    Pack,
    /// Archive metadata objects.
    Archive,
    /// The writer lock.
    Lock,
}

impl FileType {
    /// Directory (relative to the repository root) of this type.
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Config | FileType::Manifest | FileType::Lock => "",
            FileType::Key => "keys",
            FileType::Index => "index",
            FileType::Pack => "data",
            FileType::Archive => "archives",
        }
    }
}

/// A place that stores a repository's objects.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Human-readable location (for messages).
    fn location(&self) -> String;
    /// Whether the repository root exists and holds a config.
    fn exists(&self) -> Result<bool>;
    /// Creates the repository's directory structure; fails if it exists and is not empty.
    fn create(&self) -> Result<()>;
    /// Names of all objects of a type.
    fn list(&self, t: FileType) -> Result<Vec<String>>;
    /// Whole object.
    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>>;
    /// `len` bytes at `offset`; fails if the object is shorter.
    fn read_part(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>>;
    /// Size in bytes.
    fn size(&self, t: FileType, name: &str) -> Result<u64>;
    /// Writes (or atomically replaces) an object; durable on return.
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()>;
    /// Creates an object only if absent (returns `false` if it exists); durable on return.
    fn create_new(&self, t: FileType, name: &str, data: &[u8]) -> Result<bool>;
    /// Removes an object (missing is not an error).
    fn remove(&self, t: FileType, name: &str) -> Result<()>;
    /// Reads many parts `(name, offset, len)` of objects of type `t`, handing each to `each`
    /// (its position in `parts`, its bytes) in order; stops early when `each` returns `false`.
    /// A remote backend keeps many requests in flight on its one connection. The default reads
    /// one part after the other with [`Backend::read_part`].
    fn read_parts(
        &self,
        t: FileType,
        parts: &[(String, u64, u64)],
        each: &mut dyn FnMut(usize, Result<Vec<u8>>) -> bool,
    ) {
        for (i, (name, offset, len)) in parts.iter().enumerate() {
            if !each(i, self.read_part(t, name, *offset, *len)) {
                return;
            }
        }
    }
    /// Reads whole objects of type `t`, handing each to `each` (its position in `names`, its
    /// bytes) in order; stops early when `each` returns `false`. A remote backend keeps several
    /// requests in flight (`check` reads every pack this way). The default reads one object
    /// after the other with [`Backend::read`].
    fn read_objects(&self, t: FileType, names: &[String], each: &mut dyn FnMut(usize, Result<Vec<u8>>) -> bool) {
        for (i, name) in names.iter().enumerate() {
            if !each(i, self.read(t, name)) {
                return;
            }
        }
    }
    /// Whether [`Backend::read_parts`] beats parallel [`Backend::read_part`] calls (a remote
    /// backend, where each call is a round trip). Readers use it to pick their strategy.
    fn pipelines_reads(&self) -> bool {
        false
    }
    /// Removes the temporary files of writes no process is making any more (a writer killed
    /// mid-write), never a visible object; returns the bytes freed. A remote backend returns 0:
    /// its server does this when a session opens the repository.
    fn remove_stale_temps(&self) -> u64 {
        0
    }
}

/// The file-system calls [`LocalBackend`] makes, and nothing else: what a crash-consistency test
/// replaces by a model that keeps live and durable state apart (unsynced file data and
/// unsynced directory entries can be lost at a crash). [`RealFs`] is the operating system.
///
/// Durability contract, as on Linux file systems: file data is durable after [`FsFile::sync`];
/// a directory entry (a file or directory created, renamed, linked or removed in it) is durable
/// only after [`Fs::sync_dir`] of that directory.
pub trait Fs: Clone + Send + Sync + fmt::Debug + 'static {
    /// A file being written.
    type File: FsFile;
    /// A file opened for reading.
    type Reader: Read + Seek;
    /// Whether anything exists at `p`.
    fn exists(&self, p: &Path) -> bool;
    /// Entries of a directory: name and whether it is a directory.
    fn read_dir(&self, p: &Path) -> io::Result<Vec<(String, bool)>>;
    /// `mkdir -p` (not durable until the parent directory is synced).
    fn create_dir_all(&self, p: &Path) -> io::Result<()>;
    /// Creates a new file (fails if `p` exists), exclusively locked while the handle lives.
    fn create_new(&self, p: &Path) -> io::Result<Self::File>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Hard-links `from` at `to`; fails with `AlreadyExists` if `to` exists.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, p: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (fsync of the directory).
    fn sync_dir(&self, p: &Path) -> io::Result<()>;
    /// A whole file.
    fn read(&self, p: &Path) -> io::Result<Vec<u8>>;
    /// A file opened for reading, and its size.
    fn open(&self, p: &Path) -> io::Result<(Self::Reader, u64)>;
    /// Size of a file.
    fn size(&self, p: &Path) -> io::Result<u64>;
    /// Removes the temporary file `p` if no live write holds it and it is old enough to be
    /// stale (see [`Backend::remove_stale_temps`]); the bytes freed.
    fn remove_if_stale(&self, p: &Path) -> Option<u64>;
}

/// A file being written through an [`Fs`].
pub trait FsFile: Send + fmt::Debug {
    /// Appends `data`.
    fn write_all(&mut self, data: &[u8]) -> io::Result<()>;
    /// Makes the data written so far durable (fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// The operating system's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl FsFile for Flock<File> {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        Write::write_all(&mut **self, data)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.sync_all()
    }
}

impl Fs for RealFs {
    type File = Flock<File>;
    type Reader = File;
    fn exists(&self, p: &Path) -> bool {
        p.exists()
    }
    fn read_dir(&self, p: &Path) -> io::Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for e in fs::read_dir(p)? {
            let e = e?;
            // `file_type` does not follow symlinks; a symlinked fan directory still counts
            let is_dir = e.file_type()?.is_dir() || (e.file_type()?.is_symlink() && e.path().is_dir());
            out.push((e.file_name().to_string_lossy().into_owned(), is_dir));
        }
        Ok(out)
    }
    fn create_dir_all(&self, p: &Path) -> io::Result<()> {
        // owner only, as borg (issue 14): a repository's names and sizes are not for others
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700).create(p)
    }
    fn create_new(&self, p: &Path) -> io::Result<Self::File> {
        let file =
            std::os::unix::fs::OpenOptionsExt::mode(OpenOptions::new().write(true).create_new(true), 0o600).open(p)?;
        // Held while the write is alive, released by the kernel if its process dies: what tells
        // a live temporary file from a stale one (`remove_stale_temps`).
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e.into())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(from, to)
    }
    fn remove_file(&self, p: &Path) -> io::Result<()> {
        fs::remove_file(p)
    }
    fn sync_dir(&self, p: &Path) -> io::Result<()> {
        File::open(p).and_then(|d| d.sync_all())
    }
    fn read(&self, p: &Path) -> io::Result<Vec<u8>> {
        fs::read(p)
    }
    fn open(&self, p: &Path) -> io::Result<(File, u64)> {
        let f = File::open(p)?;
        let size = f.metadata()?.len();
        Ok((f, size))
    }
    fn size(&self, p: &Path) -> io::Result<u64> {
        fs::metadata(p).map(|m| m.len())
    }
    fn remove_if_stale(&self, p: &Path) -> Option<u64> {
        let f = File::open(p).ok()?;
        let young = |m: fs::Metadata| {
            m.modified().ok().and_then(|t| t.elapsed().ok()).is_none_or(|a| a < LocalBackend::STALE_AGE)
        };
        if f.metadata().map_or(true, young) {
            return None;
        }
        let f = Flock::lock(f, FlockArg::LockExclusiveNonblock).ok()?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        fs::remove_file(p).ok().map(|()| len)
    }
}

/// A repository in a local directory, through the file system `F` (the real one unless a test
/// gives a model, [`LocalBackend::with_fs`]).
///
/// Layout: `config`, `manifest`, `lock`, `keys/`, `index/`, `archives/`, `data/XX/` (packs
/// fanned out by the first two hex digits of their name).
///
/// Durability points: a write is a temporary file, written, fsynced, renamed (or hard-linked)
/// into place, then its directory fsynced; a directory created on the way is made durable by an
/// fsync of its parent before anything is put in it; a removal fsyncs the directory. So every
/// [`Backend::write`], [`Backend::create_new`] and [`Backend::remove`] is durable on return, and
/// calls are durable in the order they return.
#[derive(Debug, Clone)]
pub struct LocalBackend<F: Fs = RealFs> {
    root: PathBuf,
    fs: F,
}

impl LocalBackend {
    /// A backend rooted at `root` (nothing is touched until a call).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBackend { root: root.into(), fs: RealFs }
    }

    /// Rejects names that could leave the object's directory (`/`, a leading `.`), NUL, and
    /// names over 200 bytes.
    pub(crate) fn check_name(name: &str) -> Result<()> {
        check_name(name)
    }

    /// How old an unlocked temporary file must be to count as stale.
    const STALE_AGE: std::time::Duration = std::time::Duration::from_secs(60);
}

impl<F: Fs> LocalBackend<F> {
    /// A backend rooted at `root` on the file system `fs` (a crash-consistency model in tests).
    pub fn with_fs(root: impl Into<PathBuf>, fs: F) -> Self {
        LocalBackend { root: root.into(), fs }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of an object.
    pub fn path(&self, t: FileType, name: &str) -> PathBuf {
        match t {
            FileType::Config => self.root.join("config"),
            FileType::Manifest => self.root.join("manifest"),
            // the exclusive lock; shared (reader) locks live in `locks/`
            FileType::Lock if name.is_empty() || name == "lock" => self.root.join("lock"),
            FileType::Lock => self.root.join("locks").join(name),
            FileType::Pack => {
                let fan = name.get(..2).unwrap_or("00");
                self.root.join("data").join(fan).join(name)
            }
            _ => self.root.join(t.dir()).join(name),
        }
    }

    /// Starts writing object `name` of type `t`: a hidden temporary file in the object's
    /// directory, to be filled through [`Staged::file`] and made visible by [`Staged::commit`]
    /// (fsync, rename, fsync of the directory). Dropped uncommitted, the temporary file is
    /// removed: no reader ever sees a partial object. [`Backend::write`] is `stage`, one
    /// `write_all`, `commit`; the ssh server fills it straight from its input pipe instead.
    pub fn stage(&self, t: FileType, name: &str) -> Result<Staged<F>> {
        check_name(name)?;
        let path = self.path(t, name);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        if !self.fs.exists(&dir) {
            self.fs.create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            // the new directory's entry in its parent, durable before the object's entry in it
            if let Some(pp) = dir.parent() {
                self.sync_dir(pp)?;
            }
        }
        let tmp = dir.join(format!(".tmp-{name}-{:016x}", rand::random::<u64>()));
        let file = self.fs.create_new(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Staged { fs: self.fs.clone(), file, tmp: Some(tmp), path, dir })
    }

    fn sync_dir(&self, dir: &Path) -> Result<()> {
        self.fs.sync_dir(dir).map_err(|e| Error::io(dir, e))
    }
}

fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') || name.contains('\0') || name.len() > 200 {
        return Err(Error::InvalidArgument(format!("bad object name {name:?}")));
    }
    Ok(())
}

/// An object being written (see [`LocalBackend::stage`]).
#[derive(Debug)]
pub struct Staged<F: Fs = RealFs> {
    fs: F,
    file: F::File,
    /// The temporary file, until committed.
    tmp: Option<PathBuf>,
    path: PathBuf,
    dir: PathBuf,
}

impl Staged<RealFs> {
    /// The temporary file to fill.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Whether the staged bytes are those of the object already at [`Staged::path`].
    pub fn same_as_existing(&self) -> Result<bool> {
        let Some(tmp) = &self.tmp else { return Ok(true) };
        let open = |p: &Path| File::open(p).map_err(|e| not_found_or(p, e));
        let (mut a, mut b) = (open(tmp)?, open(&self.path)?);
        let len = |f: &File, p: &Path| f.metadata().map(|m| m.len()).map_err(|e| Error::io(p, e));
        if len(&a, tmp)? != len(&b, &self.path)? {
            return Ok(false);
        }
        let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
        loop {
            let n = read_up_to(&mut a, &mut ba).map_err(|e| Error::io(tmp, e))?;
            let m = read_up_to(&mut b, &mut bb).map_err(|e| Error::io(&self.path, e))?;
            if ba[..n] != bb[..m] {
                return Ok(false);
            }
            if n == 0 {
                return Ok(true);
            }
        }
    }
}

impl<F: Fs> Staged<F> {
    /// Where the object will be once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the object visible, durably: fsync, rename into place, fsync the directory.
    pub fn commit(mut self) -> Result<()> {
        let Some(tmp) = self.tmp.take() else { return Ok(()) };
        if let Err(e) = self.file.sync().and_then(|()| self.fs.rename(&tmp, &self.path)) {
            let _ = self.fs.remove_file(&tmp);
            return Err(Error::io(&self.path, e));
        }
        self.fs.sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))
    }

    /// Like [`Staged::commit`], but never replaces an object (the append-only server): the
    /// temporary file is hard-linked into place, which fails if an object already exists there.
    /// `Ok(None)`: committed. `Ok(Some(self))`: an object was there and is left alone; the staged
    /// bytes are still there to compare ([`Staged::same_as_existing`]) until this is dropped.
    pub fn commit_new(mut self) -> Result<Option<Staged<F>>> {
        let Some(tmp) = self.tmp.clone() else { return Ok(None) };
        match self.file.sync().and_then(|()| self.fs.hard_link(&tmp, &self.path)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(Some(self)),
            Err(e) => return Err(Error::io(&self.path, e)),
        }
        self.tmp = None;
        let _ = self.fs.remove_file(&tmp);
        self.fs.sync_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        Ok(None)
    }
}

/// Fills `buf` as far as the file goes; the number of bytes read.
fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

impl<F: Fs> Drop for Staged<F> {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = self.fs.remove_file(&tmp);
        }
    }
}

fn not_found_or(path: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::NotFound {
        Error::NotFound(path.display().to_string())
    } else {
        Error::io(path, e)
    }
}

impl<F: Fs> Backend for LocalBackend<F> {
    /// Removes the hidden temporary files of writes no process is making any more (a server or
    /// client killed mid-write): a live write holds a lock on its file, and one created in the
    /// last minute is left alone (it may not be locked yet). Never touches a visible object.
    /// Returns the bytes freed.
    fn remove_stale_temps(&self) -> u64 {
        fn walk<F: Fs>(fs: &F, dir: &Path, depth: u32, freed: &mut u64) {
            let Ok(entries) = fs.read_dir(dir) else { return };
            for (name, is_dir) in entries {
                let p = dir.join(&name);
                if is_dir && depth > 0 {
                    walk(fs, &p, depth - 1, freed);
                } else if !is_dir && name.starts_with(".tmp-") {
                    *freed += fs.remove_if_stale(&p).unwrap_or(0);
                }
            }
        }
        let mut freed = 0;
        // data/xx/ is the deepest object directory
        walk(&self.fs, &self.root, 2, &mut freed);
        freed
    }
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn exists(&self) -> Result<bool> {
        Ok(self.fs.exists(&self.root.join("config")))
    }

    fn create(&self) -> Result<()> {
        if self.fs.exists(&self.root) {
            let entries = self.fs.read_dir(&self.root).map_err(|e| Error::io(&self.root, e))?;
            if !entries.is_empty() {
                return Err(Error::AlreadyExists(self.root.clone()));
            }
        }
        for d in ["", "keys", "index", "archives", "data"] {
            let p = self.root.join(d);
            self.fs.create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        if let Some(parent) = self.root.parent() {
            if !parent.as_os_str().is_empty() {
                self.sync_dir(parent)?;
            }
        }
        self.sync_dir(&self.root)
    }

    fn list(&self, t: FileType) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let visible = |entries: Vec<(String, bool)>| {
            entries.into_iter().filter(|(n, is_dir)| !is_dir && !n.starts_with('.')).map(|(n, _)| n)
        };
        match t {
            FileType::Config | FileType::Manifest | FileType::Lock => {
                let p = self.path(t, "");
                if self.fs.exists(&p) {
                    out.push(p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
                }
                if t == FileType::Lock {
                    let dir = self.root.join("locks");
                    match self.fs.read_dir(&dir) {
                        Ok(entries) => out.extend(visible(entries)),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(&dir, e)),
                    }
                }
            }
            FileType::Pack => {
                let dir = self.root.join("data");
                let fans = self.fs.read_dir(&dir).map_err(|e| not_found_or(&dir, e))?;
                for (fan, is_dir) in fans {
                    if !is_dir {
                        continue;
                    }
                    let fp = dir.join(fan);
                    out.extend(visible(self.fs.read_dir(&fp).map_err(|e| Error::io(&fp, e))?));
                }
            }
            _ => {
                let dir = self.root.join(t.dir());
                out.extend(visible(self.fs.read_dir(&dir).map_err(|e| not_found_or(&dir, e))?));
            }
        }
        out.sort();
        Ok(out)
    }

    fn read(&self, t: FileType, name: &str) -> Result<Vec<u8>> {
        let p = self.path(t, name);
        self.fs.read(&p).map_err(|e| not_found_or(&p, e))
    }

    fn read_part(&self, t: FileType, name: &str, offset: u64, len: u64) -> Result<Vec<u8>> {
        let p = self.path(t, name);
        // before allocating: `len` may come from a hostile client (the ssh server)
        let (mut f, size) = self.fs.open(&p).map_err(|e| not_found_or(&p, e))?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::integrity(
                p.display().to_string(),
                format!("read of {len} bytes at {offset} is past the end ({size} bytes): file is truncated"),
            ));
        }
        f.seek(SeekFrom::Start(offset)).map_err(|e| Error::io(&p, e))?;
        let len = usize::try_from(len).map_err(|_| Error::InvalidArgument(format!("read of {len} bytes")))?;
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                Error::integrity(p.display().to_string(), "file is truncated")
            } else {
                Error::io(&p, e)
            }
        })?;
        Ok(buf)
    }

    fn size(&self, t: FileType, name: &str) -> Result<u64> {
        let p = self.path(t, name);
        self.fs.size(&p).map_err(|e| not_found_or(&p, e))
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> Result<()> {
        let mut s = self.stage(t, name)?;
        s.file.write_all(data).map_err(|e| Error::io(&s.path, e))?;
        s.commit()
    }

    fn create_new(&self, t: FileType, name: &str, data: &[u8]) -> Result<bool> {
        // A complete temporary file, hard-linked into place: the link fails if the target
        // exists, so readers never see a partially written lock.
        let mut s = self.stage(t, name)?;
        s.file.write_all(data).map_err(|e| Error::io(&s.path, e))?;
        Ok(s.commit_new()?.is_none())
    }

    fn remove(&self, t: FileType, name: &str) -> Result<()> {
        let p = self.path(t, name);
        match self.fs.remove_file(&p) {
            Ok(()) => self.sync_dir(p.parent().unwrap_or(&self.root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(&p, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary file left by a killed writer (no lock on it) is removed; one a live write is
    /// still filling is not, and that write still commits.
    #[test]
    fn stale_temporary_files_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().to_path_buf());
        b.create().unwrap();
        let mut live = b.stage(FileType::Pack, "abcdef").unwrap();
        live.file().write_all(b"live bytes").unwrap();
        let fan = dir.path().join("data/ab");
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        let stale = |p: PathBuf, n: usize| {
            std::fs::write(&p, vec![7u8; n]).unwrap();
            File::options().write(true).open(&p).unwrap().set_modified(old).unwrap();
        };
        stale(fan.join(".tmp-abcdff-0000000000000001"), 1000);
        std::fs::create_dir_all(dir.path().join("index")).unwrap();
        stale(dir.path().join("index/.tmp-dead-0000000000000002"), 24);
        // unlocked but just created (its writer may not have locked it yet): kept
        std::fs::write(dir.path().join("index/.tmp-young-0000000000000003"), b"y").unwrap();
        // the live write's file, even when old
        File::options().write(true).open(live.tmp.as_ref().unwrap()).unwrap().set_modified(old).unwrap();
        assert_eq!(b.remove_stale_temps(), 1024);
        assert!(dir.path().join("index/.tmp-young-0000000000000003").exists());
        let left: Vec<String> =
            std::fs::read_dir(&fan).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
        assert!(left[0].starts_with(".tmp-abcdef-"), "{left:?}");
        assert!(!dir.path().join("index/.tmp-dead-0000000000000002").exists());
        live.commit().unwrap();
        assert_eq!(b.read(FileType::Pack, "abcdef").unwrap(), b"live bytes");
        assert_eq!(b.remove_stale_temps(), 0);
    }

    #[test]
    fn write_read_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path().join("repo"));
        b.create().unwrap();
        assert!(matches!(b.create(), Err(Error::AlreadyExists(_))) || b.list(FileType::Pack).is_ok());
        b.write(FileType::Pack, "abcdef", b"hello world").unwrap();
        assert_eq!(b.list(FileType::Pack).unwrap(), vec!["abcdef".to_string()]);
        assert_eq!(b.read_part(FileType::Pack, "abcdef", 6, 5).unwrap(), b"world");
        assert!(matches!(b.read_part(FileType::Pack, "abcdef", 6, 50), Err(Error::Integrity { .. })));
        assert!(b.create_new(FileType::Lock, "lock", b"a").unwrap());
        assert!(!b.create_new(FileType::Lock, "lock", b"b").unwrap());
        assert_eq!(b.read(FileType::Lock, "lock").unwrap(), b"a");
        b.remove(FileType::Pack, "abcdef").unwrap();
        assert!(b.list(FileType::Pack).unwrap().is_empty());
        assert!(matches!(b.read(FileType::Pack, "abcdef"), Err(Error::NotFound(_))));
        // no temp files left behind
        let leftovers: Vec<_> = fs::read_dir(b.root().join("data/ab")).unwrap().collect();
        assert!(leftovers.is_empty());
    }
}
