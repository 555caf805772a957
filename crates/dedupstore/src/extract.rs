//! `extract`: restore an archive's items with all their metadata.
//!
//! Chunks are fetched, authenticated and decompressed by worker threads in archive order (a
//! bounded window), while the caller's thread writes files.

use crate::archive::{decode_items, ArchiveMeta, Extent, Item, ItemKind};
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{plan_reuse, Index, Repository};
use crossbeam_channel::bounded;
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How many bytes of fetched, not yet opened blobs a pipelined (remote) restore holds.
const FETCH_AHEAD: u64 = 48 << 20;
/// Most bytes of restored chunks kept in memory at any time for a later occurrence of the same
/// chunk (a file stored twice, a duplicated block, a hard link's content), instead of reading and
/// opening it again, when they cannot go to a spill file (a dry run); see [`plan_reuse`].
pub const RESTORE_KEEP: u64 = 16 << 20;
/// Most room kept chunks may take in the spill file at any time: slots of the largest chunk of
/// the restore, written sparse, so the disk holds only the chunks themselves (page cache, not
/// the process's memory; gone when the restore ends).
pub const SPILL_KEEP: u64 = 512 << 20;

/// Restored chunks kept for a later occurrence ([`plan_reuse`]), by that occurrence: in slots of
/// an unlinked temporary file on the destination's file system, or in memory when there is none.
/// A chunk that is not there when its occurrence comes (its write failed) is read again.
enum Kept {
    Mem(HashMap<usize, Vec<u8>>),
    Spill(Spill),
}

/// An unlinked file (`O_TMPFILE`) of fixed-size slots.
struct Spill {
    file: fs::File,
    slot: u64,
    /// free slots, and the first never used
    free: Vec<u64>,
    unused: u64,
    /// by the occurrence that takes it: (slot, length)
    at: HashMap<usize, (u64, usize)>,
}

impl Spill {
    fn new(dir: &Path, slot: u64) -> Option<Spill> {
        use std::os::unix::fs::OpenOptionsExt;
        let file =
            OpenOptions::new().read(true).write(true).mode(0o600).custom_flags(nix::libc::O_TMPFILE).open(dir).ok()?;
        Some(Spill { file, slot: slot.max(1), free: Vec::new(), unused: 0, at: HashMap::new() })
    }
}

impl Kept {
    fn put(&mut self, later: usize, data: &[u8]) {
        use std::os::unix::fs::FileExt;
        let sp = match self {
            Kept::Mem(m) => {
                m.insert(later, data.to_vec());
                return;
            }
            Kept::Spill(sp) => sp,
        };
        let slot = sp.free.pop().unwrap_or_else(|| {
            sp.unused += 1;
            sp.unused - 1
        });
        // a failed write (a full disk) keeps nothing: the occurrence reads the chunk again
        match sp.file.write_all_at(data, slot * sp.slot) {
            Ok(()) => {
                sp.at.insert(later, (slot, data.len()));
            }
            Err(_) => sp.free.push(slot),
        }
    }
    /// The chunk kept for occurrence `n`, if it was kept and can be read back.
    fn take(&mut self, n: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let sp = match self {
            Kept::Mem(m) => return m.remove(&n),
            Kept::Spill(sp) => sp,
        };
        let (slot, len) = sp.at.remove(&n)?;
        let mut buf = vec![0u8; len];
        let r = sp.file.read_exact_at(&mut buf, slot * sp.slot);
        sp.free.push(slot);
        r.ok().map(|()| buf)
    }
}

/// Bytes allowed in a queue: the producer waits while more than the limit is queued (a single
/// item larger than the limit still passes when the queue is empty). For results consumed in
/// order ([`ByteBudget::take_for`], [`ByteBudget::give_next`]), the result the consumer needs next
/// never waits (or the consumer and that worker would wait for each other).
/// Once a consumer stops ([`ByteBudget::close`]), nobody waits any more.
struct ByteBudget {
    /// (bytes queued, the consumer's next result, closed)
    state: std::sync::Mutex<(u64, usize, bool)>,
    room: std::sync::Condvar,
    limit: u64,
}

impl ByteBudget {
    fn new(limit: u64) -> Self {
        ByteBudget { state: std::sync::Mutex::new((0, 0, false)), room: std::sync::Condvar::new(), limit }
    }
    /// Room for `len` bytes.
    fn take(&self, len: u64) {
        self.take_for(usize::MAX, len);
    }
    /// Room for result `n` of `len` bytes.
    fn take_for(&self, n: usize, len: u64) {
        let mut q = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while !q.2 && n != q.1 && q.0 > 0 && q.0 + len > self.limit {
            q = self.room.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        q.0 += len;
    }
    /// The consumer took `len` bytes.
    fn give(&self, len: u64) {
        let mut q = self.state.lock().unwrap_or_else(|p| p.into_inner());
        q.0 = q.0.saturating_sub(len);
        self.room.notify_all();
    }
    /// The consumer took a result of `len` bytes and needs result `next` now.
    fn give_next(&self, len: u64, next: usize) {
        let mut q = self.state.lock().unwrap_or_else(|p| p.into_inner());
        q.0 = q.0.saturating_sub(len);
        q.1 = next;
        self.room.notify_all();
    }
    fn close(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).2 = true;
        self.room.notify_all();
    }
}

/// How many bytes of opened (decrypted, decompressed) chunks the workers may hold ahead of the
/// thread that writes files. With a handful of chunks (the earlier bound), a worker that finished
/// the chunks after a slow one waited for the writer, and the writer then waited for the slow one
/// alone: over ssh the writer waited ~1.5 s of a 4.5 s restore for chunks whose blobs had long
/// arrived; ~1 s with this bound.
const DECODE_AHEAD: u64 = 8 << 20;

/// Options of `extract`.
#[derive(Debug, Clone, Default)]
pub struct ExtractOptions {
    /// Destination directory (borg: the current directory).
    pub dest: PathBuf,
    /// Only these archive paths (and what is below them); empty = everything.
    pub paths: Vec<Vec<u8>>,
    /// Remove this many leading path components.
    pub strip_components: usize,
    /// Read and verify everything, write nothing.
    pub dry_run: bool,
    /// Use stored uid/gid, not the user/group names.
    pub numeric_ids: bool,
    /// Also make holes for all-zero chunks (holes recorded at backup are always restored).
    pub sparse: bool,
    /// Worker threads (0 = all CPUs).
    pub threads: usize,
    /// `--exclude`/`--pattern`: an item the patterns do not include is skipped (as is what
    /// is below an excluded directory: borg's patterns match parents too).
    pub patterns: crate::pattern::Matcher,
}

/// Result of `extract`.
#[derive(Debug, Clone, Default)]
pub struct ExtractResult {
    /// Items restored.
    pub items: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Per-item errors (the command exits 2 if any).
    pub errors: Vec<String>,
    /// Paths asked for that matched no item of the archive (borg: "Include pattern 'x' never
    /// matched.", exit code 1).
    pub unmatched: Vec<Vec<u8>>,
    /// Files restored with chunks an earlier `check --repair` replaced with zeros, one line
    /// each naming the file (borg: a warning, exit code 1). A later `check --repair` heals them
    /// if the lost chunks turn up again.
    pub warnings: Vec<String>,
}

/// Progress of `extract`, reported at the start, after every chunk and after every item.
/// `bytes` counts the file content (data, not holes) fetched so far, also of files that failed;
/// at the end `items == items_total` and `bytes == bytes_total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExtractProgress {
    /// Items done.
    pub items: u64,
    /// Items to restore.
    pub items_total: u64,
    /// Content bytes done.
    pub bytes: u64,
    /// Content bytes to restore.
    pub bytes_total: u64,
}

fn data_lens(item: &Item) -> impl Iterator<Item = u32> + '_ {
    item.chunks.iter().filter_map(|c| match c {
        Extent::Data { len, .. } => Some(*len),
        Extent::Hole(_) => None,
    })
}

/// Loads an archive's items.
pub fn archive_items(repo: &Repository, index: &Index, archive: &str) -> Result<Vec<Item>> {
    Ok(archive_meta_items(repo, index, archive)?.1)
}

/// Loads an archive's metadata (which tells which items are damaged:
/// [`ArchiveMeta::is_healthy`]) and its items.
pub fn archive_meta_items(repo: &Repository, index: &Index, archive: &str) -> Result<(ArchiveMeta, Vec<Item>)> {
    let m = repo.manifest()?;
    let e = m.get(archive).ok_or_else(|| Error::NoSuchArchive(archive.into()))?;
    let meta = repo.archive(&e.id)?;
    let mut stream = Vec::new();
    for id in &meta.items {
        stream.extend_from_slice(&repo.read_chunk(index, id)?);
    }
    let items = decode_items(&stream)?;
    Ok((meta, items))
}

fn selected(item: &Item, paths: &[Vec<u8>]) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| {
            let p = p.strip_prefix(b"/").unwrap_or(p);
            let p = p.strip_suffix(b"/").unwrap_or(p);
            item.path == p || (item.path.starts_with(p) && item.path.get(p.len()) == Some(&b'/'))
        })
}

/// The destination-relative path: strip components, drop `..`, `.` and leading `/`.
fn target_path(item_path: &[u8], strip: usize) -> Option<PathBuf> {
    let parts: Vec<&[u8]> =
        item_path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b"." && *c != b"..").collect();
    if parts.len() <= strip {
        return None;
    }
    let mut p = PathBuf::new();
    for c in &parts[strip..] {
        p.push(OsStr::from_bytes(c));
    }
    Some(p)
}

/// Makes the directories above `rel` inside `root`, refusing to go through a symlink: an archive
/// whose item `a` is a symlink to `/etc` and whose next item is `a/passwd` must not write
/// `/etc/passwd` (`..` and absolute paths are already removed by [`target_path`]). A
/// non-directory in the way is replaced by a directory, as borg does.
fn safe_parents(root: &Path, rel: &Path) -> Result<()> {
    let Some(parent) = rel.parent() else { return Ok(()) };
    let mut cur = root.to_path_buf();
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(Error::integrity(
                    format!("archive path {}", rel.display()),
                    format!("it leads through the symlink {}; refusing to write through it", cur.display()),
                ));
            }
            Ok(_) => {
                fs::remove_file(&cur).map_err(|e| Error::io(&cur, e))?;
                fs::create_dir(&cur).map_err(|e| Error::io(&cur, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir(&cur).map_err(|e| Error::io(&cur, e))?;
            }
            Err(e) => return Err(Error::io(&cur, e)),
        }
    }
    Ok(())
}

type Fetched = (usize, Result<Vec<u8>>);

/// Extracts an archive.
pub fn extract(repo: &Repository, archive: &str, opts: &ExtractOptions) -> Result<ExtractResult> {
    extract_with_progress(repo, archive, opts, &mut |_| {})
}

/// Extracts an archive, reporting [`ExtractProgress`] to `on`.
pub fn extract_with_progress(
    repo: &Repository,
    archive: &str,
    opts: &ExtractOptions,
    on: &mut dyn FnMut(ExtractProgress),
) -> Result<ExtractResult> {
    let _lock = repo.shared_lock()?;
    let index = Arc::new(repo.load_index()?);
    let (meta, items) = archive_meta_items(repo, &index, archive)?;
    let unmatched: Vec<Vec<u8>> =
        opts.paths.iter().filter(|p| !items.iter().any(|i| selected(i, std::slice::from_ref(p)))).cloned().collect();
    let damaged = meta.damaged_items();
    let todo: Vec<(Item, Option<PathBuf>)> = items
        .into_iter()
        .filter(|i| selected(i, &opts.paths) && opts.patterns.matches(&i.path).included)
        .filter_map(|i| {
            let t = target_path(&i.path, opts.strip_components);
            if t.is_none() && i.kind != ItemKind::Dir {
                return None;
            }
            Some((i, t))
        })
        .collect();
    // Every chunk to fetch, in order.
    let ids: Vec<Id> = todo
        .iter()
        .filter(|(i, _)| i.kind == ItemKind::File)
        .flat_map(|(i, _)| {
            i.chunks.iter().filter_map(|c| match c {
                Extent::Data { id, .. } => Some(*id),
                Extent::Hole(_) => None,
            })
        })
        .collect();
    if !opts.dry_run {
        fs::create_dir_all(&opts.dest).map_err(|e| Error::io(&opts.dest, e))?;
    }
    // A chunk that occurs again is read and opened once (over ssh: its bytes cross the link
    // once), kept in the spill file until then; `wanted`: the occurrences that are read.
    let slot = ids.iter().filter_map(|id| index.chunks.get(id)).map(|l| u64::from(l.ulen)).max().unwrap_or(0);
    let kept = match (!opts.dry_run).then(|| Spill::new(&opts.dest, slot)).flatten() {
        Some(sp) => Kept::Spill(sp),
        None => Kept::Mem(HashMap::new()),
    };
    let (reuse_from, keep_for) = match kept {
        Kept::Spill(_) => plan_reuse(&index, &ids, SPILL_KEEP, &|_| slot.max(1)),
        Kept::Mem(_) => plan_reuse(&index, &ids, RESTORE_KEEP, &|l| u64::from(l.ulen)),
    };
    let wanted: Vec<usize> = (0..ids.len()).filter(|&n| reuse_from[n].is_none()).collect();
    let progress = ExtractProgress {
        items_total: todo.iter().filter(|(_, t)| t.is_some()).count() as u64,
        bytes_total: todo
            .iter()
            .filter(|(i, _)| i.kind == ItemKind::File)
            .flat_map(|(i, _)| data_lens(i))
            .map(u64::from)
            .sum(),
        ..ExtractProgress::default()
    };
    on(progress);
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
    } else {
        opts.threads
    };
    // A job: chunk n, and its sealed blob when a pipelined fetch (remote backend) read it.
    // Over ssh the fetcher must go back to reading the link at once, or the link idles while
    // the workers open a whole read run: its queue is bounded by bytes (the blobs are views of
    // the runs read, no copies), not by a handful of chunks.
    let pipelined = repo.backend().pipelines_reads();
    let (jtx, jrx) =
        bounded::<(usize, Id, Option<Result<bytes::Bytes>>)>(if pipelined { 1 << 16 } else { threads * 4 });
    let budget = ByteBudget::new(FETCH_AHEAD);
    // results: bounded by bytes, not count (see DECODE_AHEAD)
    let (rtx, rrx) = crossbeam_channel::unbounded::<Fetched>();
    let decoded = ByteBudget::new(DECODE_AHEAD);
    let mut res = ExtractResult { unmatched, ..ExtractResult::default() };
    std::thread::scope(|s| -> Result<()> {
        let ids = &ids;
        let wanted = &wanted;
        let fetch_index = index.clone();
        let budget = &budget;
        let decoded = &decoded;
        s.spawn(move || {
            if pipelined {
                // over ssh: many reads in flight on the one connection, neighbouring chunks of a
                // pack in one read; the workers only open the blobs
                let wanted_ids: Vec<Id> = wanted.iter().map(|&n| ids[n]).collect();
                repo.fetch_sealed(&fetch_index, &wanted_ids, &mut |k, blob| {
                    budget.take(blob.as_ref().map_or(0, |b| b.len() as u64));
                    jtx.send((wanted[k], wanted_ids[k], Some(blob))).is_ok()
                });
                return;
            }
            for &n in wanted {
                if jtx.send((n, ids[n], None)).is_err() {
                    return;
                }
            }
        });
        for _ in 0..threads {
            let jrx = jrx.clone();
            let rtx = rtx.clone();
            let index = index.clone();
            s.spawn(move || {
                for (n, id, blob) in jrx {
                    let chunk = match blob {
                        Some(b) => b.and_then(|b| {
                            let r = repo.open_fetched(&index, &id, &b);
                            budget.give(b.len() as u64);
                            r
                        }),
                        None => repo.read_chunk(&index, &id),
                    };
                    decoded.take_for(n, chunk.as_ref().map_or(0, |c| c.len() as u64));
                    if rtx.send((n, chunk)).is_err() {
                        // the restore stopped: a fetcher or worker waiting for room must not
                        // wait forever
                        budget.close();
                        decoded.close();
                        return;
                    }
                }
            });
        }
        drop(rtx);
        drop(jrx);
        let mut fetcher = Fetcher {
            next: 0,
            pending: BTreeMap::new(),
            rrx,
            decoded,
            ids,
            reuse_from: &reuse_from,
            keep_for: &keep_for,
            kept,
            repo,
            index: &index,
            consumed: 0,
            progress,
            on,
        };
        let mut extracted: HashMap<Vec<u8>, PathBuf> = HashMap::new();
        let mut dirs: Vec<(PathBuf, Item)> = Vec::new();
        for (item, target) in &todo {
            let Some(rel) = target else { continue };
            let dest = opts.dest.join(rel);
            fetcher.consumed = 0;
            let r = match opts.dry_run {
                false => safe_parents(&opts.dest, rel),
                true => Ok(()),
            }
            .and_then(|()| restore_item(item, &dest, opts, &mut fetcher, &extracted, &mut res));
            if r.is_err() && item.kind == ItemKind::File {
                // Keep the chunk stream in step: skip this file's remaining chunks.
                for len in data_lens(item).skip(fetcher.consumed) {
                    let _ = fetcher.fetch(len);
                }
            }
            fetcher.progress.items += 1;
            (fetcher.on)(fetcher.progress);
            match r {
                Ok(()) => {
                    if let Some((n, bytes)) = damaged.get(item.path.as_slice()).filter(|_| item.kind == ItemKind::File)
                    {
                        res.warnings.push(format!(
                            "{}: file has damaged chunks: {n} chunks ({bytes} bytes) lost and restored as zeros \
                             (check --repair heals the file if they turn up again)",
                            item.path_lossy()
                        ));
                    }
                    res.items += 1;
                    if item.kind == ItemKind::Dir {
                        dirs.push((dest.clone(), item.clone()));
                    }
                    extracted.insert(item.path.clone(), dest);
                }
                // The destination itself fails (read-only, full, no permission): stop at once
                // with one clear error instead of one per item.
                Err(e @ Error::Io { .. }) => return Err(e),
                Err(e) => {
                    res.errors.push(format!("{}: {e}", item.path_lossy()));
                }
            }
        }
        // Directory metadata last (children changed their mtime), deepest first.
        if !opts.dry_run {
            for (dest, item) in dirs.iter().rev() {
                // A later item may have replaced the directory (by a symlink): never follow it.
                if !fs::symlink_metadata(dest).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                if let Err(e) = set_metadata(item, dest, None, opts) {
                    res.errors.push(format!("{}: {e}", item.path_lossy()));
                }
            }
        }
        Ok(())
    })?;
    Ok(res)
}

struct Fetcher<'a> {
    next: usize,
    pending: BTreeMap<usize, Result<Vec<u8>>>,
    rrx: crossbeam_channel::Receiver<Fetched>,
    decoded: &'a ByteBudget,
    /// Every chunk occurrence, and the reuse plan over them ([`plan_reuse`]).
    ids: &'a [Id],
    reuse_from: &'a [Option<usize>],
    keep_for: &'a [Option<usize>],
    /// Chunks kept for a later occurrence, by that occurrence.
    kept: Kept,
    repo: &'a Repository,
    index: &'a Index,
    consumed: usize,
    progress: ExtractProgress,
    on: &'a mut dyn FnMut(ExtractProgress),
}

impl Drop for Fetcher<'_> {
    fn drop(&mut self) {
        // the restore stopped (or ended): no worker may wait for room any more
        self.decoded.close();
    }
}

impl Fetcher<'_> {
    /// The next chunk in archive order (`len`: its length as the archive records it).
    fn fetch(&mut self, len: u32) -> Result<Vec<u8>> {
        self.consumed += 1;
        self.progress.bytes += u64::from(len);
        (self.on)(self.progress);
        let n = self.next;
        let reused = self.reuse_from.get(n).copied().flatten().is_some();
        let r = if reused {
            // not kept after all (its earlier occurrence failed, or the spill file did): read
            // it here, which also reports its own error
            match self.kept.take(n) {
                Some(d) => Ok(d),
                None => match self.ids.get(n) {
                    Some(id) => self.repo.read_chunk(self.index, id),
                    None => Err(Error::PreviousIo),
                },
            }
        } else {
            loop {
                if let Some(r) = self.pending.remove(&n) {
                    break r;
                }
                match self.rrx.recv() {
                    Ok((k, r)) => {
                        self.pending.insert(k, r);
                    }
                    Err(_) => return Err(Error::PreviousIo),
                }
            }
        };
        self.next += 1;
        // a reused chunk never went through the workers' budget
        let took = if reused { 0 } else { r.as_ref().map_or(0, |c| c.len() as u64) };
        self.decoded.give_next(took, self.next);
        if let (Some(later), Ok(data)) = (self.keep_for.get(n).copied().flatten(), &r) {
            self.kept.put(later, data);
        }
        r
    }
}

fn restore_item(
    item: &Item,
    dest: &Path,
    opts: &ExtractOptions,
    fetcher: &mut Fetcher<'_>,
    extracted: &HashMap<Vec<u8>, PathBuf>,
    res: &mut ExtractResult,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io(dest, e);
    if opts.dry_run {
        // Read and verify the content anyway; the first error is reported after all chunks
        // of the item were consumed, so the stream stays in step.
        let mut first_err = None;
        if item.kind == ItemKind::File {
            for len in data_lens(item) {
                match fetcher.fetch(len) {
                    Ok(d) => res.bytes += d.len() as u64,
                    Err(e) => first_err = first_err.or(Some(e)),
                }
            }
        }
        return first_err.map_or(Ok(()), Err);
    }
    if item.kind != ItemKind::Dir {
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(dest).map_err(io)?,
            Ok(_) => fs::remove_file(dest).map_err(io)?,
            Err(_) => {}
        }
    }
    match item.kind {
        ItemKind::Dir => {
            match fs::symlink_metadata(dest) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => fs::remove_file(dest).map_err(io)?,
                Err(_) => {}
            }
            fs::create_dir_all(dest).map_err(io)?;
            return Ok(());
        }
        ItemKind::File => {
            if let Some(src) = item.hardlink.as_ref().and_then(|h| extracted.get(h)) {
                // Consume this item's chunks (they are the link target's content).
                for len in data_lens(item) {
                    let _ = fetcher.fetch(len);
                }
                fs::hard_link(src, dest).map_err(io)?;
                return Ok(());
            }
            let mut f = OpenOptions::new().write(true).create_new(true).open(dest).map_err(io)?;
            let mut first_err = None;
            // where the file offset is, and where the file ends (a seek does not extend it)
            let (mut pos, mut end) = (0u64, 0u64);
            for c in &item.chunks {
                match c {
                    Extent::Hole(n) => {
                        f.seek(SeekFrom::Current(*n as i64)).map_err(io)?;
                        pos += n;
                    }
                    Extent::Data { len, .. } => match fetcher.fetch(*len) {
                        Ok(d) => {
                            res.bytes += d.len() as u64;
                            if first_err.is_some() {
                                continue;
                            }
                            if opts.sparse && d.iter().all(|&b| b == 0) {
                                f.seek(SeekFrom::Current(d.len() as i64)).map_err(io)?;
                            } else {
                                f.write_all(&d).map_err(io)?;
                                end = pos + d.len() as u64;
                            }
                            pos += d.len() as u64;
                        }
                        Err(e) => first_err = first_err.or(Some(e)),
                    },
                }
            }
            if let Some(e) = first_err {
                drop(f);
                let _ = fs::remove_file(dest);
                return Err(e);
            }
            // only a file that ends in a hole needs it (6 % of the writer thread's time when
            // every file paid for it)
            if end != item.size {
                f.set_len(item.size).map_err(io)?;
            }
            // metadata through the open file: no path walk for each of chown, xattrs, chmod
            // and the times
            return set_metadata(item, dest, Some(&f), opts);
        }
        ItemKind::Symlink => {
            let t = item.target.clone().unwrap_or_default();
            std::os::unix::fs::symlink(OsStr::from_bytes(&t), dest).map_err(io)?;
        }
        ItemKind::Fifo => {
            nix::unistd::mkfifo(dest, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| io(e.into()))?;
        }
        ItemKind::CharDev | ItemKind::BlockDev => {
            let kind = if item.kind == ItemKind::CharDev {
                nix::sys::stat::SFlag::S_IFCHR
            } else {
                nix::sys::stat::SFlag::S_IFBLK
            };
            nix::sys::stat::mknod(
                dest,
                kind,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                item.rdev as nix::libc::dev_t,
            )
            .map_err(|e| io(e.into()))?;
        }
        ItemKind::Socket => return Ok(()),
    }
    set_metadata(item, dest, None, opts)
}

/// Owner, extended attributes, mode and times of `dest`, through `file` when the item is a
/// regular file just written (no path lookups), else by path without following a symlink.
fn set_metadata(item: &Item, dest: &Path, file: Option<&fs::File>, opts: &ExtractOptions) -> Result<()> {
    use nix::sys::stat::{futimens, utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use std::os::fd::AsRawFd;
    let io = |e: std::io::Error| Error::io(dest, e);
    if nix::unistd::geteuid().is_root() {
        let uid = (!opts.numeric_ids)
            .then_some(item.user.as_deref())
            .flatten()
            .and_then(|n| nix::unistd::User::from_name(n).ok().flatten())
            .map(|u| u.uid.as_raw())
            .unwrap_or(item.uid);
        let gid = (!opts.numeric_ids)
            .then_some(item.group.as_deref())
            .flatten()
            .and_then(|n| nix::unistd::Group::from_name(n).ok().flatten())
            .map(|g| g.gid.as_raw())
            .unwrap_or(item.gid);
        let (uid, gid) = (Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
        match file {
            Some(f) => nix::unistd::fchown(f.as_raw_fd(), uid, gid),
            None => nix::unistd::fchownat(None, dest, uid, gid, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW),
        }
        .map_err(|e| io(e.into()))?;
    }
    for (k, v) in &item.xattrs {
        let set = match file {
            Some(f) => xattr::FileExt::set_xattr(f, OsStr::from_bytes(k), v),
            None => xattr::set(dest, OsStr::from_bytes(k), v),
        };
        if let Err(e) = set {
            // Like borg: a file system without xattr support is a warning, not a failure.
            tracing::warn!("{}: xattr {}: {e}", dest.display(), String::from_utf8_lossy(k));
        }
    }
    if item.kind != ItemKind::Symlink {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::Permissions::from_mode(item.mode);
        match file {
            Some(f) => f.set_permissions(mode),
            None => fs::set_permissions(dest, mode),
        }
        .map_err(io)?;
    }
    let ts = |n: i64| TimeSpec::new(n.div_euclid(1_000_000_000), n.rem_euclid(1_000_000_000));
    match file {
        Some(f) => futimens(f.as_raw_fd(), &ts(item.atime), &ts(item.mtime)),
        None => utimensat(None, dest, &ts(item.atime), &ts(item.mtime), UtimensatFlags::NoFollowSymlink),
    }
    .map_err(|e| io(e.into()))?;
    Ok(())
}

/// Opens a file for verification in tests and `check`: content of an item as bytes.
pub fn item_content(repo: &Repository, index: &Index, item: &Item) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(item.size.min(1 << 26) as usize);
    for c in &item.chunks {
        match c {
            Extent::Data { id, .. } => out.extend_from_slice(&repo.read_chunk(index, id)?),
            Extent::Hole(n) => {
                if out.len() as u64 + n > 1 << 30 {
                    return Err(Error::InvalidArgument("item_content is for items up to 1 GiB".into()));
                }
                out.resize(out.len() + *n as usize, 0)
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::ByteBudget;
    use std::sync::mpsc;

    /// The fetcher waits while its queue is over the byte limit and goes on when a worker
    /// hands bytes back; a blob larger than the limit still passes an empty queue.
    #[test]
    fn byte_budget_waits_for_room() {
        let b = ByteBudget::new(100);
        b.take(250); // empty queue: passes
        b.give(250);
        b.take(60);
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                b.take(60); // 120 > 100: waits for the give below
                tx.send(()).unwrap();
            });
            assert!(rx.try_recv().is_err());
            b.give(60);
            rx.recv().unwrap();
        });
        assert_eq!(b.state.lock().unwrap().0, 60);
    }

    /// A restore that stopped (its workers gone, nobody hands bytes back) must not leave the
    /// fetcher waiting for room forever.
    #[test]
    fn byte_budget_never_waits_after_close() {
        let b = ByteBudget::new(100);
        b.take(100);
        std::thread::scope(|s| {
            let t = s.spawn(|| b.take(50));
            b.close();
            t.join().unwrap();
        });
        b.take(1000); // closed: never waits
    }

    /// Opened chunks ahead of the writer are bounded by bytes, but the chunk the writer needs
    /// next always passes (or the writer and its worker would wait for each other); a later one
    /// waits until the writer takes something; after close nobody waits.
    #[test]
    fn byte_budget_lets_the_next_result_through_and_holds_later_ones() {
        let b = ByteBudget::new(100);
        b.take_for(3, 100); // results 3..: the queue is full
        b.take_for(0, 40); // the writer needs 0 next: passes although full
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                b.take_for(5, 10); // full, and not the next one: waits
                tx.send(()).unwrap();
            });
            assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "result 5 did not wait");
            b.give_next(40, 3); // the writer took result 0 (40 bytes): still full
            assert!(rx.recv_timeout(std::time::Duration::from_millis(200)).is_err(), "result 5 did not wait");
            b.give_next(100, 4); // and result 3: room again (5 is still not the next one)
            rx.recv().unwrap();
        });
        assert_eq!(b.state.lock().unwrap().0, 10);
        b.close();
        b.take_for(9, 1000); // closed: never waits
    }
}
