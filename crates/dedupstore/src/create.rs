//! `create`: walk the given paths, store new content, write the archive, commit the manifest.

use crate::archive::{encode_item, ArchiveMeta, ArchiveStats, Extent, Item, ItemKind, ManifestEntry};
use crate::cache::{FileEntry, FilesCache, RACY_WINDOW_NS};
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::pattern::{Matcher, Pattern};
use crate::repo::{hostname, Repository};
use crate::writer::{ChunkWriter, WriterOptions};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What `create REPO::A -` stores for standard input (borg's `--stdin-name`, `--stdin-mode`,
/// `--stdin-user`, `--stdin-group`): one regular file item.
#[derive(Debug, Clone)]
pub struct StdinSource {
    /// Archive path of the item (borg's default `stdin`).
    pub name: String,
    /// Permission bits (borg's default 0660).
    pub mode: u32,
    /// Owner uid and name.
    pub uid: u32,
    /// Owner name recorded with the item.
    pub user: Option<String>,
    /// Group gid.
    pub gid: u32,
    /// Group name recorded with the item.
    pub group: Option<String>,
}

/// Options of `create`.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// Archive name (placeholders already expanded).
    pub name: String,
    /// Paths to back up.
    pub paths: Vec<PathBuf>,
    /// Compression.
    pub compression: Compression,
    /// Archive time instead of now (`--timestamp`).
    pub timestamp: Option<DateTime<Utc>>,
    /// Exclude patterns (`--exclude`: excluded and not walked into), after `patterns`.
    pub excludes: Vec<Pattern>,
    /// borg's ordered include/exclude patterns (`--pattern`, `--patterns-from`,
    /// `--exclude-from`); the first that matches a path decides.
    pub patterns: Matcher,
    /// `--exclude-caches`: skip directories holding a `CACHEDIR.TAG` with the signature.
    pub exclude_caches: bool,
    /// `--exclude-if-present NAME`: skip directories holding an entry of one of these names.
    pub exclude_if_present: Vec<String>,
    /// `--keep-exclude-tags`: archive a skipped directory itself and its tag files.
    pub keep_exclude_tags: bool,
    /// What the files cache compares to trust a file unchanged (`--files-cache`).
    pub files_cache: FilesCacheMode,
    /// Store atime (`--noatime` clears it: the item's atime is then its mtime, which extract
    /// restores).
    pub store_atime: bool,
    /// Store ctime (`--noctime` clears it: stored as 0; the files cache still uses the real one).
    pub store_ctime: bool,
    /// Read and store extended attributes (`--noxattrs` clears it).
    pub store_xattrs: bool,
    /// Stay on the file system of each given path.
    pub one_file_system: bool,
    /// Read and chunk everything but write nothing.
    pub dry_run: bool,
    /// Worker threads (0 = all CPUs).
    pub threads: usize,
    /// Files cache directory (None = no files cache).
    pub cache_dir: Option<PathBuf>,
    /// Write a checkpoint archive (`NAME.checkpoint`) this often (borg's `--checkpoint-interval`,
    /// default 30 min); index files that make stored chunks reusable are written more often.
    pub checkpoint_interval: Duration,
    /// ... or after this many bytes of file content (0 = only by time).
    pub checkpoint_volume: u64,
    /// Command line recorded in the archive.
    pub cmdline: Vec<String>,
    /// With `Some`, a path given exactly as `-` means standard input, stored as one file item
    /// (borg's `create REPO::A -`); with `None` it is a file named `-`.
    pub stdin: Option<StdinSource>,
    /// Set (the binary does it on SIGINT/SIGTERM) to stop: the items done so far are committed
    /// as the checkpoint archive and [`Error::Interrupted`] is returned; the lock is released.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl CreateOptions {
    /// Defaults for an archive name and paths.
    pub fn new(name: impl Into<String>, paths: Vec<PathBuf>) -> Self {
        CreateOptions {
            name: name.into(),
            paths,
            compression: Compression::default(),
            timestamp: None,
            excludes: vec![],
            patterns: Matcher::new(),
            exclude_caches: false,
            exclude_if_present: vec![],
            keep_exclude_tags: false,
            files_cache: FilesCacheMode::default(),
            store_atime: true,
            store_ctime: true,
            store_xattrs: true,
            one_file_system: false,
            dry_run: false,
            threads: 0,
            cache_dir: None,
            checkpoint_interval: Duration::from_secs(1800),
            checkpoint_volume: 0,
            cmdline: vec![],
            stdin: None,
            cancel: None,
        }
    }
}

/// borg's `--files-cache MODE`: which of a file's attributes must be unchanged for the files
/// cache to reuse its chunks without reading it, and `rechunk` (read every file anyway, keep
/// the cache up to date). `disabled` uses no cache (as [`CreateOptions::cache_dir`] `None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilesCacheMode {
    /// Compare the change time.
    pub ctime: bool,
    /// Compare the modification time.
    pub mtime: bool,
    /// Compare the size.
    pub size: bool,
    /// Compare the inode number.
    pub inode: bool,
    /// Never trust the cache (read and chunk every file), still update it.
    pub rechunk: bool,
    /// No files cache at all.
    pub disabled: bool,
}

impl Default for FilesCacheMode {
    /// ctime, mtime, size and inode: borg's default (`ctime,size,inode`) and the mtime too.
    fn default() -> Self {
        FilesCacheMode { ctime: true, mtime: true, size: true, inode: true, rechunk: false, disabled: false }
    }
}

impl FilesCacheMode {
    /// Parses borg's mode: a comma list of `ctime`, `mtime`, `size`, `inode`, `rechunk`
    /// (`ctime,size,inode`, `mtime,size`, `rechunk,ctime`, ...), or `disabled`.
    pub fn parse(s: &str) -> Result<Self> {
        let mut m =
            FilesCacheMode { ctime: false, mtime: false, size: false, inode: false, rechunk: false, disabled: false };
        if s == "disabled" {
            m.disabled = true;
            return Ok(m);
        }
        for w in s.split(',') {
            let f = match w {
                "ctime" => &mut m.ctime,
                "mtime" => &mut m.mtime,
                "size" => &mut m.size,
                "inode" => &mut m.inode,
                "rechunk" => &mut m.rechunk,
                _ => {
                    return Err(Error::InvalidArgument(format!(
                        "--files-cache {s:?}: {w:?} is not one of ctime, mtime, size, inode, rechunk, disabled"
                    )))
                }
            };
            *f = true;
        }
        Ok(m)
    }
}

/// Progress events of a long command.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event<'a> {
    /// An item was processed (`status` is borg's letter: A added, M modified, U unchanged, d dir...).
    Item {
        /// Status letter.
        status: char,
        /// Archive path.
        path: &'a [u8],
    },
    /// Running totals.
    Progress {
        /// Bytes of file content seen.
        original: u64,
        /// Files seen.
        files: u64,
    },
    /// Something the user should know; the command will exit with a warning.
    Warning(&'a str),
    /// A checkpoint archive was committed.
    Checkpoint {
        /// Its name (`NAME.checkpoint`, or `NAME.checkpoint.N` if that existed).
        name: &'a str,
    },
}

/// Result of `create`.
#[derive(Debug, Clone)]
pub struct CreateResult {
    /// The archive (not stored on dry run).
    pub archive: ArchiveMeta,
    /// Its id.
    pub id: Id,
    /// Warnings (files that vanished or could not be read): borg's exit code 1.
    pub warnings: Vec<String>,
    /// Files whose content was taken from the files cache.
    pub cached_files: u64,
}

/// Borg's path normalisation: strip leading `/` and `./`, collapse `//` and `/./`.
pub fn archive_path(p: &Path) -> Vec<u8> {
    let mut parts: Vec<&[u8]> = Vec::new();
    for c in p.as_os_str().as_bytes().split(|&b| b == b'/') {
        if c.is_empty() || c == b"." {
            continue;
        }
        parts.push(c);
    }
    if parts.is_empty() {
        return b".".to_vec();
    }
    parts.join(&b'/')
}

/// Files up to this size are read in one call rather than streamed.
const SMALL_FILE: u64 = 1 << 20;

pub(crate) fn ns(sec: i64, nsec: i64) -> i64 {
    sec.saturating_mul(1_000_000_000).saturating_add(nsec)
}

struct Walker<'a> {
    repo: &'a Repository,
    opts: &'a CreateOptions,
    /// Archive time.
    time: DateTime<Utc>,
    /// Name of this run's checkpoint archive, and its id once written.
    checkpoint_name: String,
    checkpoint: Option<Id>,
    last_checkpoint: std::time::Instant,
    checkpoint_original: u64,
    writer: Option<ChunkWriter>,
    cache: Option<FilesCache>,
    /// The item stream not yet cut into chunks: under twice the chunker's `max` plus one item
    /// (see [`Walker::emit`]), so memory does not grow with the number of files.
    items: Vec<u8>,
    /// Chunks of the item stream stored so far, in order.
    item_ids: Vec<Id>,
    hardlinks: HashMap<(u64, u64), Vec<u8>>,
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
    warnings: Vec<String>,
    stats: ArchiveStats,
    /// Stored bytes of referenced chunks that were already in the repository.
    refs_known: u64,
    /// Second and later references to chunks new in this run (their stored size is known at
    /// the end; a first reference counts once, from the writer's output). Memory: one entry
    /// per duplicated new chunk, not per file.
    refs_new: HashMap<Id, u64>,
    /// Item-stream chunks new in this run (not references of file content).
    items_new: std::collections::HashSet<Id>,
    /// A repository error seen while reading a file.
    fatal: Option<Error>,
    cached_files: u64,
    chunker: Arc<crate::chunker::Chunker>,
    key: crate::crypto::MasterKey,
    on: &'a mut dyn FnMut(Event<'_>),
}

fn user_name(cache: &mut HashMap<u32, Option<String>>, uid: u32) -> Option<String> {
    cache
        .entry(uid)
        .or_insert_with(|| nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name))
        .clone()
}

fn group_name(cache: &mut HashMap<u32, Option<String>>, gid: u32) -> Option<String> {
    cache
        .entry(gid)
        .or_insert_with(|| nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)).ok().flatten().map(|g| g.name))
        .clone()
}

fn read_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(names) = xattr::list(p) {
        for n in names {
            if let Ok(Some(v)) = xattr::get(p, &n) {
                out.push((n.as_bytes().to_vec(), v));
            }
        }
    }
    out.sort();
    out
}

/// Data regions `(start, end)` of a file, using SEEK_DATA/SEEK_HOLE.
fn data_regions(f: &File, size: u64) -> Vec<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let size = size as i64;
    while pos < size {
        let Ok(data) = lseek(fd, pos, Whence::SeekData) else {
            break;
        };
        let hole = lseek(fd, data, Whence::SeekHole).unwrap_or(size).min(size);
        if hole <= data {
            break;
        }
        out.push((data as u64, hole as u64));
        pos = hole;
    }
    out
}

impl Walker<'_> {
    fn cancelled(&self) -> bool {
        self.opts.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn warn(&mut self, msg: String) {
        (self.on)(Event::Warning(&msg));
        // the caller shows the event; a log line at the default level would print it twice
        tracing::debug!("{msg}");
        self.warnings.push(msg);
    }

    /// Records a repository error (fatal, unlike a source file that cannot be read).
    fn fail(&mut self, e: Error) -> std::io::Error {
        let msg = e.to_string();
        self.fatal = Some(e);
        std::io::Error::other(msg)
    }

    /// Counts a chunk reference for the compressed-size statistic; `first` when this very
    /// reference stored the chunk.
    fn reference(&mut self, id: Id, first: bool) {
        if let Some(c) = &self.cache {
            c.add_ref(&id);
        }
        if let Some(w) = &self.writer {
            match w.known().chunks.get(&id) {
                Some(l) => self.refs_known += u64::from(l.len),
                None if first => {}
                None => *self.refs_new.entry(id).or_insert(0) += 1,
            }
        }
    }

    /// borg's verdict on a path: the patterns in order, then `--exclude` (never walked into).
    fn verdict(&self, ap: &[u8]) -> crate::pattern::Match {
        let m = self.opts.patterns.matches(ap);
        if m.included && self.opts.excludes.iter().any(|p| p.matches(ap)) {
            return crate::pattern::Match { included: false, recurse: false };
        }
        m
    }

    fn base_item(&mut self, ap: Vec<u8>, md: &fs::Metadata, kind: ItemKind, p: &Path) -> Item {
        Item {
            path: ap,
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            user: user_name(&mut self.users, md.uid()),
            group: group_name(&mut self.groups, md.gid()),
            mtime: ns(md.mtime(), md.mtime_nsec()),
            atime: if self.opts.store_atime {
                ns(md.atime(), md.atime_nsec())
            } else {
                ns(md.mtime(), md.mtime_nsec())
            },
            ctime: if self.opts.store_ctime { ns(md.ctime(), md.ctime_nsec()) } else { 0 },
            size: if kind == ItemKind::File { md.size() } else { 0 },
            xattrs: if self.opts.store_xattrs { read_xattrs(p) } else { vec![] },
            target: None,
            hardlink: None,
            rdev: md.rdev(),
            chunks: vec![],
        }
    }

    fn emit(&mut self, item: &Item, status: char) -> Result<()> {
        (self.on)(Event::Item { status, path: &item.path });
        encode_item(item, &mut self.items)?;
        // Amortised: cut once twice `max` is buffered, keep less than `max`.
        if self.items.len() >= 2 * self.chunker.params().max as usize {
            self.cut_items(false)?;
        }
        Ok(())
    }

    /// Stores the chunks of the buffered item stream whose end is final (see
    /// [`crate::chunker::Chunker::cut_final`]) — or, with `all`, every chunk.
    fn cut_items(&mut self, all: bool) -> Result<()> {
        let (writer, key, new, ids) = (&mut self.writer, &self.key, &mut self.items_new, &mut self.item_ids);
        self.chunker.cut_final(&mut self.items, all, |c| {
            let id = match writer {
                Some(w) => match w.store(c.to_vec())? {
                    (id, true) => {
                        new.insert(id);
                        id
                    }
                    (id, false) => id,
                },
                None => key.chunk_id(c),
            };
            ids.push(id);
            Ok(())
        })
    }

    fn walk(&mut self, p: &Path, ap: Vec<u8>, root_dev: u64) -> Result<()> {
        if self.cancelled() {
            return Err(Error::Interrupted { checkpoint: None });
        }
        // borg 1.2's `_rec_walk`: an excluded path is not even stat'ed unless its pattern lets
        // us walk into an excluded directory (a `-` line), to find included paths below it
        let verdict = self.verdict(&ap);
        if !verdict.included && !verdict.recurse {
            return Ok(());
        }
        let md = match fs::symlink_metadata(p) {
            Ok(m) => m,
            Err(e) => {
                self.warn(format!("{}: {e}", p.display()));
                return Ok(());
            }
        };
        let ft = md.file_type();
        if !verdict.included && !ft.is_dir() {
            return Ok(());
        }
        if ft.is_dir() {
            let recurse = !(self.opts.one_file_system && md.dev() != root_dev);
            if recurse && (self.opts.exclude_caches || !self.opts.exclude_if_present.is_empty()) {
                let tags = crate::pattern::dir_tags(p, self.opts.exclude_caches, &self.opts.exclude_if_present);
                if !tags.is_empty() {
                    // tagged: skipped; with --keep-exclude-tags the directory and its tags stay
                    if verdict.included && self.opts.keep_exclude_tags {
                        let item = self.base_item(ap.clone(), &md, ItemKind::Dir, p);
                        self.emit(&item, 'd')?;
                        for t in tags {
                            let mut cap = if ap == b"." { Vec::new() } else { ap.clone() };
                            if !cap.is_empty() {
                                cap.push(b'/');
                            }
                            cap.extend_from_slice(t.as_bytes());
                            self.walk(&p.join(&t), cap, root_dev)?;
                        }
                    }
                    return Ok(());
                }
            }
            if verdict.included {
                let item = self.base_item(ap.clone(), &md, ItemKind::Dir, p);
                self.emit(&item, 'd')?;
            }
            if !recurse {
                return Ok(());
            }
            let mut entries: Vec<_> = match fs::read_dir(p) {
                Ok(rd) => rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect(),
                Err(e) => {
                    self.warn(format!("{}: {e}", p.display()));
                    return Ok(());
                }
            };
            entries.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in entries {
                let mut cap = if ap == b"." { Vec::new() } else { ap.clone() };
                if !cap.is_empty() {
                    cap.push(b'/');
                }
                cap.extend_from_slice(name.as_bytes());
                self.walk(&p.join(&name), cap, root_dev)?;
            }
        } else if ft.is_file() {
            self.file(p, ap, &md)?;
        } else if ft.is_symlink() {
            let mut item = self.base_item(ap, &md, ItemKind::Symlink, p);
            match fs::read_link(p) {
                Ok(t) => item.target = Some(t.as_os_str().as_bytes().to_vec()),
                Err(e) => {
                    self.warn(format!("{}: {e}", p.display()));
                    return Ok(());
                }
            }
            self.emit(&item, 's')?;
        } else {
            let kind = ItemKind::of(ft).unwrap_or(ItemKind::Socket);
            let item = self.base_item(ap, &md, kind, p);
            self.emit(&item, if kind == ItemKind::Fifo { 'f' } else { 'c' })?;
        }
        Ok(())
    }

    fn file(&mut self, p: &Path, ap: Vec<u8>, md: &fs::Metadata) -> Result<()> {
        let mut item = self.base_item(ap, md, ItemKind::File, p);
        // the real change time, for the files cache (the item's may be cleared by --noctime)
        let ctime = ns(md.ctime(), md.ctime_nsec());
        self.stats.nfiles += 1;
        self.stats.original_size += md.size();
        if md.nlink() > 1 {
            if let Some(first) = self.hardlinks.get(&(md.dev(), md.ino())) {
                item.hardlink = Some(first.clone());
            } else {
                self.hardlinks.insert((md.dev(), md.ino()), item.path.clone());
            }
        }
        // `p` is absolute (see `create`): the files cache is keyed by its keyed hash.
        let key = crate::cache::path_key(&self.key, p.as_os_str().as_bytes());
        // Files cache: unchanged inode/size/times and every chunk still in the repository.
        if let (Some(cache), Some(w)) = (&self.cache, &self.writer) {
            if let Ok(Some(e)) = cache.get(&key) {
                let m = self.opts.files_cache;
                let same = !e.racy
                    && !m.rechunk
                    && (!m.inode || e.ino == md.ino())
                    && (!m.size || e.size == md.size())
                    && (!m.mtime || e.mtime == item.mtime)
                    && (!m.ctime || e.ctime == ctime);
                let present = e.chunks.iter().all(|c| match c {
                    Extent::Data { id, .. } => w.has(id),
                    Extent::Hole(_) => true,
                });
                if same && present {
                    item.chunks = e.chunks;
                    for c in &item.chunks {
                        if let Extent::Data { id, .. } = c {
                            self.reference(*id, false);
                        }
                    }
                    self.cached_files += 1;
                    self.emit(&item, 'U')?;
                    return Ok(());
                }
            }
        }
        let read_start = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
        match self.read_content(p, md.size()) {
            Ok(chunks) => {
                item.size = chunks
                    .iter()
                    .map(|c| match c {
                        Extent::Data { len, .. } => u64::from(*len),
                        Extent::Hole(n) => *n,
                    })
                    .sum();
                item.chunks = chunks;
            }
            Err(e) => {
                self.stats.nfiles -= 1;
                self.stats.original_size -= md.size();
                if let Some(fatal) = self.fatal.take() {
                    return Err(fatal);
                }
                self.warn(format!("{}: {e}", p.display()));
                return Ok(());
            }
        }
        // The file changed while we read it?
        if let Ok(after) = fs::symlink_metadata(p) {
            if after.size() != md.size() || ns(after.mtime(), after.mtime_nsec()) != item.mtime {
                self.warn(format!("{}: file changed while we backed it up", p.display()));
            }
        }
        if let Some(cache) = &self.cache {
            let racy = ctime >= read_start - RACY_WINDOW_NS || item.mtime >= read_start - RACY_WINDOW_NS;
            cache.put(
                &key,
                &FileEntry {
                    ino: md.ino(),
                    size: md.size(),
                    mtime: item.mtime,
                    ctime,
                    chunks: item.chunks.clone(),
                    racy,
                },
            )?;
        }
        self.emit(&item, 'A')?;
        (self.on)(Event::Progress { original: self.stats.original_size, files: self.stats.nfiles });
        self.maybe_checkpoint()
    }

    fn maybe_checkpoint(&mut self) -> Result<()> {
        if self.writer.is_none() {
            return Ok(());
        }
        let by_volume = self.opts.checkpoint_volume > 0
            && self.stats.original_size - self.checkpoint_original >= self.opts.checkpoint_volume;
        if by_volume || self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    /// Commits `NAME.checkpoint`: an archive of every item so far (borg 1.2's checkpoint), so
    /// an interrupted run leaves its work restorable and its chunks referenced; the next
    /// `create` reuses them and its success removes the checkpoint.
    fn write_checkpoint(&mut self) -> Result<()> {
        let Some(w) = self.writer.as_mut() else { return Ok(()) };
        // The stored chunks, then the buffered tail (kept: its last chunk is cut differently
        // once more items follow).
        let mut item_ids = self.item_ids.clone();
        for c in self.chunker.split(&self.items) {
            item_ids.push(w.store(c.to_vec())?.0);
        }
        w.flush()?;
        let mut stats = self.stats;
        stats.deduplicated_size = w.flushed_stored();
        let meta = ArchiveMeta {
            version: 1,
            name: self.checkpoint_name.clone(),
            hostname: hostname(),
            username: user_name(&mut self.users, nix::unistd::getuid().as_raw()).unwrap_or_default(),
            time: self.time.timestamp_nanos_opt().unwrap_or(0),
            time_end: Utc::now().timestamp_nanos_opt().unwrap_or(0),
            cmdline: self.opts.cmdline.clone(),
            items: item_ids,
            stats,
            broken: vec![],
        };
        let id = self.repo.write_archive(&meta)?;
        let mut m = self.repo.manifest()?;
        m.archives.retain(|a| a.name != self.checkpoint_name);
        m.archives.push(ManifestEntry { name: meta.name.clone(), id, time: meta.time });
        m.timestamp = Utc::now().timestamp_nanos_opt().unwrap_or(0);
        self.repo.write_manifest(&m)?;
        if let Some(old) = self.checkpoint.replace(id) {
            if old != id {
                self.repo.backend().remove(crate::backend::FileType::Archive, &old.to_hex())?;
            }
        }
        if let Some(c) = &self.cache {
            c.commit()?;
        }
        self.last_checkpoint = std::time::Instant::now();
        self.checkpoint_original = self.stats.original_size;
        tracing::info!(name = %self.checkpoint_name, "checkpoint archive written");
        (self.on)(Event::Checkpoint { name: &self.checkpoint_name });
        Ok(())
    }

    /// Chunks and stores everything `reader` gives, appending the extents to `out`; returns the
    /// bytes read. Stops with [`Error::Interrupted`] (through [`Walker::fail`]) when cancelled.
    fn store_stream(&mut self, reader: impl Read, out: &mut Vec<Extent>) -> std::io::Result<u64> {
        let chunker = self.chunker.clone();
        let mut s = chunker.stream(reader);
        let mut got = 0u64;
        while let Some(c) = s.next_chunk()? {
            if self.cancelled() {
                return Err(self.fail(Error::Interrupted { checkpoint: None }));
            }
            got += c.len() as u64;
            let len = c.len() as u32;
            let (id, first) = match &mut self.writer {
                Some(w) => match w.store(c) {
                    Ok(r) => r,
                    Err(e) => return Err(self.fail(e)),
                },
                None => (self.key.chunk_id(&c), false),
            };
            self.reference(id, first);
            out.push(Extent::Data { id, len });
        }
        Ok(got)
    }

    /// `create REPO::A -`: standard input as one regular file item (borg's, times = now).
    fn stdin_item(&mut self, s: &StdinSource) -> Result<()> {
        let now = Utc::now().timestamp_nanos_opt().unwrap_or(0);
        let mut item = Item {
            path: archive_path(Path::new(&s.name)),
            kind: ItemKind::File,
            mode: s.mode & 0o7777,
            uid: s.uid,
            gid: s.gid,
            user: s.user.clone(),
            group: s.group.clone(),
            mtime: now,
            atime: now,
            ctime: now,
            size: 0,
            xattrs: vec![],
            target: None,
            hardlink: None,
            rdev: 0,
            chunks: vec![],
        };
        let mut chunks = Vec::new();
        match self.store_stream(std::io::stdin().lock(), &mut chunks) {
            Ok(n) => item.size = n,
            Err(e) => return Err(self.fatal.take().unwrap_or_else(|| Error::io("<stdin>", e))),
        }
        item.chunks = chunks;
        self.stats.nfiles += 1;
        self.stats.original_size += item.size;
        self.emit(&item, 'A')?;
        (self.on)(Event::Progress { original: self.stats.original_size, files: self.stats.nfiles });
        Ok(())
    }

    fn read_content(&mut self, p: &Path, size: u64) -> std::io::Result<Vec<Extent>> {
        let mut f = File::open(p)?;
        let md = f.metadata()?;
        let regions = if md.blocks() * 512 < size { data_regions(&f, size) } else { vec![(0, u64::MAX)] };
        let mut out = Vec::new();
        let mut pos = 0u64;
        for (start, end) in regions {
            if start > pos {
                out.push(Extent::Hole(start - pos));
            }
            if start == 0 && end == u64::MAX && size <= SMALL_FILE {
                // Small file: one read, no streaming buffer.
                let mut data = Vec::with_capacity(size as usize);
                (&mut f).take(SMALL_FILE + 1).read_to_end(&mut data)?;
                let chunker = self.chunker.clone();
                for c in chunker.split(&data) {
                    if self.cancelled() {
                        return Err(self.fail(Error::Interrupted { checkpoint: None }));
                    }
                    pos += c.len() as u64;
                    let len = c.len() as u32;
                    let (id, first) = match &mut self.writer {
                        Some(w) => match w.store(c.to_vec()) {
                            Ok(r) => r,
                            Err(e) => return Err(self.fail(e)),
                        },
                        None => (self.key.chunk_id(c), false),
                    };
                    self.reference(id, first);
                    out.push(Extent::Data { id, len });
                }
                continue;
            }
            f.seek(SeekFrom::Start(start))?;
            let reader = (&mut f).take(end.saturating_sub(start));
            pos = start + self.store_stream(reader, &mut out)?;
        }
        if pos < size {
            // trailing hole (or the file shrank while we read it)
            out.push(Extent::Hole(size - pos));
        }
        Ok(out)
    }
}

/// Whether `name` is `base.checkpoint` or `base.checkpoint.N`.
pub fn is_checkpoint_of(name: &str, base: &str) -> bool {
    name.strip_prefix(base).and_then(|r| r.strip_prefix(".checkpoint")).is_some_and(|r| {
        r.is_empty() || r.strip_prefix('.').is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    })
}

/// Backs up `opts.paths` into a new archive. Takes the lock; commits the manifest last.
pub fn create(repo: &Repository, opts: &CreateOptions, on: &mut dyn FnMut(Event<'_>)) -> Result<CreateResult> {
    if opts.paths.is_empty() {
        return Err(Error::InvalidArgument("no paths to back up".into()));
    }
    if opts.name.is_empty() || opts.name.contains('/') {
        return Err(Error::InvalidArgument(format!("archive name {:?}", opts.name)));
    }
    let _lock = if opts.dry_run { repo.shared_lock()? } else { repo.lock()? };
    let manifest = repo.manifest()?;
    if manifest.get(&opts.name).is_some() {
        return Err(Error::ArchiveExists(opts.name.clone()));
    }
    let start = Utc::now();
    let cache = match (&opts.cache_dir, opts.dry_run || opts.files_cache.disabled) {
        (Some(d), false) => Some(FilesCache::open(d, &repo.config().id)?),
        _ => None,
    };
    let index = Arc::new(match &cache {
        Some(c) => c.load_index(repo)?.0,
        None => repo.load_index()?,
    });
    if !opts.dry_run {
        // packs that a damaged or lost index file named are indexed again (issue 14)
        repo.write_recovered_index(&index)?;
    }
    let writer = if opts.dry_run {
        None
    } else {
        Some(ChunkWriter::new(
            repo,
            index.clone(),
            WriterOptions {
                compression: opts.compression,
                threads: opts.threads,
                // index files (chunks reusable after a crash) at least every minute
                checkpoint_interval: opts.checkpoint_interval.min(Duration::from_secs(60)),
                ..WriterOptions::default()
            },
        ))
    };
    let checkpoint_name = (0..)
        .map(|n| if n == 0 { format!("{}.checkpoint", opts.name) } else { format!("{}.checkpoint.{n}", opts.name) })
        .find(|n| manifest.get(n).is_none())
        .unwrap_or_default();
    let mut w = Walker {
        repo,
        opts,
        time: opts.timestamp.unwrap_or(start),
        checkpoint_name,
        checkpoint: None,
        last_checkpoint: std::time::Instant::now(),
        checkpoint_original: 0,
        writer,
        cache,
        items: Vec::new(),
        item_ids: Vec::new(),
        hardlinks: HashMap::new(),
        users: HashMap::new(),
        groups: HashMap::new(),
        warnings: vec![],
        stats: ArchiveStats::default(),
        refs_known: 0,
        refs_new: HashMap::new(),
        items_new: Default::default(),
        fatal: None,
        cached_files: 0,
        chunker: Arc::new(repo.chunker().clone()),
        key: repo.crypto().key().clone(),
        on,
    };
    let walked = (|| -> Result<()> {
        for p in &opts.paths {
            if let (Some(s), true) = (&opts.stdin, p.as_os_str() == "-") {
                w.stdin_item(s)?;
                continue;
            }
            let dev = match fs::symlink_metadata(p) {
                Ok(m) => m.dev(),
                Err(e) => {
                    w.warn(format!("{}: {e}", p.display()));
                    continue;
                }
            };
            let abs = std::path::absolute(p).map_err(|e| Error::io(p, e))?;
            w.walk(&abs, archive_path(p), dev)?;
        }
        Ok(())
    })();
    match walked {
        Ok(()) => {}
        Err(Error::Interrupted { .. }) => {
            // Interrupted (borg 1.2: the first Ctrl-C writes a checkpoint, then stops): commit
            // what was done as NAME.checkpoint; the lock is released when we return.
            if w.writer.is_none() {
                return Err(Error::Interrupted { checkpoint: None });
            }
            w.write_checkpoint()?;
            if let Some(wr) = w.writer.take() {
                wr.finish()?;
            }
            return Err(Error::Interrupted { checkpoint: Some(w.checkpoint_name.clone()) });
        }
        Err(e) => return Err(e),
    }
    // The rest of the item stream (stored like file content as it grew).
    w.cut_items(true)?;
    let item_ids = std::mem::take(&mut w.item_ids);
    let out = match w.writer.take() {
        Some(wr) => Some(wr.finish()?),
        None => None,
    };
    let mut stats = w.stats;
    if let Some(out) = &out {
        stats.deduplicated_size = out.stored;
        // every new chunk once (unless only the item stream uses it), plus repeated references
        let first = |id: &Id| u64::from(!w.items_new.contains(id));
        stats.compressed_size = w.refs_known
            + out
                .packs
                .iter()
                .flat_map(|(_, b)| b)
                .map(|b| u64::from(b.len) * (first(&b.id) + w.refs_new.get(&b.id).copied().unwrap_or(0)))
                .sum::<u64>();
    }
    let time = w.time;
    let meta = ArchiveMeta {
        version: 1,
        name: opts.name.clone(),
        hostname: hostname(),
        username: user_name(&mut w.users, nix::unistd::getuid().as_raw()).unwrap_or_default(),
        time: time.timestamp_nanos_opt().unwrap_or(0),
        time_end: Utc::now().timestamp_nanos_opt().unwrap_or(0),
        cmdline: opts.cmdline.clone(),
        items: item_ids,
        stats,
        broken: vec![],
    };
    let id = if opts.dry_run {
        repo.crypto().key().chunk_id(&crate::encode::postcard("archive", &meta)?)
    } else {
        let id = repo.write_archive(&meta)?;
        // Checkpoints wrote the manifest since we read it; we hold the lock, nobody else did.
        let mut m = if w.checkpoint.is_some() { repo.manifest()? } else { manifest.clone() };
        // Success supersedes every checkpoint of this name (this run's and earlier ones).
        let (old_checkpoints, keep): (Vec<_>, Vec<_>) =
            m.archives.into_iter().partition(|a| is_checkpoint_of(&a.name, &opts.name));
        m.archives = keep;
        m.archives.push(ManifestEntry { name: meta.name.clone(), id, time: meta.time });
        m.timestamp = Utc::now().timestamp_nanos_opt().unwrap_or(0);
        repo.write_manifest(&m)?;
        for a in &old_checkpoints {
            repo.backend().remove(crate::backend::FileType::Archive, &a.id.to_hex())?;
        }
        if let Some(c) = &w.cache {
            if let Some(out) = &out {
                c.add_to_index(&out.packs, &out.index_files)?;
            }
            c.add_archive(&manifest, &m, &meta.items)?;
            c.commit()?;
        }
        id
    };
    Ok(CreateResult { archive: meta, id, warnings: w.warnings, cached_files: w.cached_files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_cache_modes() {
        let m = FilesCacheMode::parse("ctime,size,inode").unwrap();
        assert!(m.ctime && m.size && m.inode && !m.mtime && !m.rechunk && !m.disabled);
        let m = FilesCacheMode::parse("rechunk,mtime").unwrap();
        assert!(m.rechunk && m.mtime && !m.size);
        assert!(FilesCacheMode::parse("disabled").unwrap().disabled);
        assert!(FilesCacheMode::parse("ctime,sise").unwrap_err().to_string().contains("\"sise\""));
    }

    #[test]
    fn borg_path_normalisation() {
        assert_eq!(archive_path(Path::new("/etc/ssl")), b"etc/ssl");
        assert_eq!(archive_path(Path::new("./x")), b"x");
        assert_eq!(archive_path(Path::new("a//b/./c/")), b"a/b/c");
        assert_eq!(archive_path(Path::new(".")), b".");
        assert_eq!(archive_path(Path::new("/")), b".");
    }
}
