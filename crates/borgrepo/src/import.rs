//! Import: borg archives into a rempart repository.
//!
//! ```text
//!  BorgRepository::items ──► BorgItem ──► dedupstore Item (kind from S_IFMT, mode & 0o7777,
//!                                │         owner, ns times, xattrs, symlink target, hard link)
//!                                ▼
//!               borg chunks (read, MAC + id checked) ──► one Read per file ──► rempart's
//!               FastCDC chunker ──► ChunkWriter (rempart's key, compression, packs)
//!                                     all-zero chunks ──► Extent::Hole (sparse, as borg's
//!                                     `extract --sparse` recreates them)
//!  item stream (rempart's encoding, chunked and stored) ──► archive object ──► manifest
//! ```
//!
//! Content is re-chunked because rempart's chunk ids and boundaries come from its own secret
//! key: borg's chunks cannot be reused as they are. The archive's start and end times, host and
//! user are borg's; the command line records where it came from: `import-borg
//! borg-archive-id=<hex>`, then `comment=<text>` when borg had a comment, then `--` and borg's
//! own command line. An import is incremental by that id: [`imported_id`] reads it back.
//!
//! The borg side is checked before this runs ([`BorgRepository::open`] verifies every segment
//! entry's crc32, the key and the manifest). Packs are written as the archive is read and the
//! archive object and the manifest last, so damage found half-way (a MAC or an id that does not
//! verify) leaves only unreferenced packs that `compact` removes, never an archive in the
//! manifest.

use crate::error::Error as BorgError;
use crate::repo::{Archive, BorgItem, BorgRepository, ObjectId};
use dedupstore::archive::{encode_item, ArchiveMeta, ArchiveStats, Extent, Item, ItemKind, ManifestEntry};
use dedupstore::compress::Compression;
use dedupstore::repo::Repository;
use dedupstore::writer::{ChunkWriter, WriterOptions};
use dedupstore::Id;
use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;

/// Errors of an import: from either side.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// Reading the borg repository.
    #[error(transparent)]
    Borg(#[from] BorgError),
    /// Writing the rempart repository.
    #[error(transparent)]
    Rempart(#[from] dedupstore::Error),
    /// The rempart repository has an archive of that name that is not this borg archive.
    #[error("archive {0:?} already exists in the rempart repository and was not imported from this borg archive")]
    NameTaken(String),
    /// Storing a file's content failed (the rempart repository's writer stopped).
    #[error("{0}")]
    Write(String),
    /// The archive was imported before (same name, same borg archive id).
    #[error("archive {0:?} was already imported")]
    AlreadyImported(String),
}

/// Options of [`import_archive`].
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Compression of the new chunks.
    pub compression: Compression,
    /// Read and verify everything, write nothing.
    pub dry_run: bool,
    /// Writer threads (0 = all CPUs).
    pub threads: usize,
}

/// Progress of an import.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Files done.
    pub files: u64,
    /// Bytes of file content read from borg (its "original size").
    pub original: u64,
}

/// What one archive's import did.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The rempart archive (also on a dry run, then not stored).
    pub archive: ArchiveMeta,
    /// Its id (None on a dry run).
    pub id: Option<Id>,
    /// Items read.
    pub items: u64,
}

/// The `borg-archive-id=` an archive's command line records, if it was imported.
pub fn imported_id(meta: &ArchiveMeta) -> Option<ObjectId> {
    if meta.cmdline.first().map(String::as_str) != Some("import-borg") {
        return None;
    }
    let h = meta.cmdline.get(1)?.strip_prefix("borg-archive-id=")?;
    hex::decode(h).ok()?.try_into().ok()
}

/// The command line recorded with an imported archive.
fn cmdline(id: &ObjectId, a: &Archive) -> Vec<String> {
    let mut c = vec!["import-borg".to_string(), format!("borg-archive-id={}", hex::encode(id))];
    if !a.comment.is_empty() {
        c.push(format!("comment={}", a.comment));
    }
    c.push("--".into());
    c.extend(a.cmdline.iter().cloned());
    c
}

/// Whether the rempart repository already holds this borg archive (by name and borg id);
/// [`ImportError::NameTaken`] when the name is used by something else.
pub fn already_imported(repo: &Repository, name: &str, borg_id: &ObjectId) -> Result<bool, ImportError> {
    let m = repo.manifest()?;
    match m.get(name) {
        None => Ok(false),
        Some(e) => {
            let meta = repo.archive(&e.id)?;
            if imported_id(&meta) == Some(*borg_id) {
                Ok(true)
            } else {
                Err(ImportError::NameTaken(name.to_string()))
            }
        }
    }
}

/// The content of one borg file, chunk after chunk, as a `Read` for rempart's chunker; a borg
/// error is kept so the import reports it as it is.
struct BorgContent<'a> {
    repo: &'a BorgRepository,
    chunks: std::slice::Iter<'a, (ObjectId, u32)>,
    cur: Vec<u8>,
    pos: usize,
    error: &'a mut Option<BorgError>,
}

impl Read for BorgContent<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            let Some((id, size)) = self.chunks.next() else { return Ok(0) };
            match self.repo.chunk(id, *size) {
                Ok(d) => {
                    self.cur = d;
                    self.pos = 0;
                }
                Err(e) => {
                    let msg = e.to_string();
                    *self.error = Some(e);
                    return Err(std::io::Error::other(msg));
                }
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn kind_of(mode: u32) -> ItemKind {
    match mode & 0o170000 {
        0o040000 => ItemKind::Dir,
        0o120000 => ItemKind::Symlink,
        0o010000 => ItemKind::Fifo,
        0o020000 => ItemKind::CharDev,
        0o060000 => ItemKind::BlockDev,
        0o140000 => ItemKind::Socket,
        _ => ItemKind::File,
    }
}

struct Writer {
    chunker: dedupstore::chunker::Chunker,
    key: dedupstore::crypto::MasterKey,
    writer: Option<ChunkWriter>,
    items: Vec<u8>,
    item_ids: Vec<Id>,
    /// References per chunk id (for the compressed-size statistic).
    refs: HashMap<Id, u64>,
}

impl Writer {
    fn store(&mut self, data: Vec<u8>) -> Result<Id, ImportError> {
        let id = match &mut self.writer {
            Some(w) => w.store(data)?.0,
            None => self.key.chunk_id(&data),
        };
        Ok(id)
    }

    fn content(&mut self, r: impl Read, path: &[u8]) -> Result<Vec<Extent>, std::io::Error> {
        let chunker = self.chunker.clone();
        let mut s = chunker.stream(r);
        let mut out: Vec<Extent> = Vec::new();
        while let Some(c) = s.next_chunk()? {
            if c.len() >= 4096 && c.iter().all(|&b| b == 0) {
                match out.last_mut() {
                    Some(Extent::Hole(n)) => *n += c.len() as u64,
                    _ => out.push(Extent::Hole(c.len() as u64)),
                }
                continue;
            }
            let len = c.len() as u32;
            let id =
                self.store(c).map_err(|e| std::io::Error::other(format!("{}: {e}", String::from_utf8_lossy(path))))?;
            *self.refs.entry(id).or_default() += 1;
            out.push(Extent::Data { id, len });
        }
        Ok(out)
    }

    fn emit(&mut self, item: &Item) -> Result<(), ImportError> {
        encode_item(item, &mut self.items)?;
        let max = self.chunker.params().max as usize;
        if self.items.len() >= 2 * max {
            self.cut(false)?;
        }
        Ok(())
    }

    /// Stores the item-stream chunks whose boundaries are final (`Chunker::cut_final`).
    fn cut(&mut self, all: bool) -> Result<(), ImportError> {
        let (chunker, mut items) = (self.chunker.clone(), std::mem::take(&mut self.items));
        let done = chunker.cut_final(&mut items, all, |c| {
            let id = self.store(c.to_vec())?;
            self.item_ids.push(id);
            Ok(())
        });
        self.items = items;
        done
    }
}

/// Imports one borg archive as a rempart archive of the same name. The caller holds no lock:
/// this takes the repository's lock (shared on a dry run). `on` sees the progress after each
/// file.
pub fn import_archive(
    borg: &BorgRepository,
    borg_id: &ObjectId,
    repo: &Repository,
    opts: &ImportOptions,
    on: &mut dyn FnMut(Progress),
) -> Result<Imported, ImportError> {
    let archive = borg.archive(borg_id)?;
    let _lock = if opts.dry_run { repo.shared_lock()? } else { repo.lock()? };
    if already_imported(repo, &archive.name, borg_id)? {
        return Err(ImportError::AlreadyImported(archive.name.clone()));
    }
    let writer = if opts.dry_run {
        None
    } else {
        let index = Arc::new(repo.load_index()?);
        repo.write_recovered_index(&index)?;
        Some(ChunkWriter::new(
            repo,
            index,
            WriterOptions { compression: opts.compression, threads: opts.threads, ..WriterOptions::default() },
        ))
    };
    let mut w = Writer {
        chunker: repo.chunker().clone(),
        key: repo.crypto().key().clone(),
        writer,
        items: Vec::new(),
        item_ids: Vec::new(),
        refs: HashMap::new(),
    };
    let mut stats = ArchiveStats::default();
    let mut progress = Progress::default();
    // hard-link masters: path → (extents, size)
    let mut masters: HashMap<Vec<u8>, (Vec<Extent>, u64)> = HashMap::new();
    let mut nitems = 0u64;
    for bi in borg.items(&archive) {
        let bi: BorgItem = bi?;
        if bi.part {
            continue;
        }
        nitems += 1;
        let kind = kind_of(bi.mode);
        let mut item = Item {
            path: bi.path.clone(),
            kind,
            mode: bi.mode & 0o7777,
            uid: bi.uid,
            gid: bi.gid,
            user: bi.user.clone(),
            group: bi.group.clone(),
            mtime: bi.mtime,
            atime: bi.atime.unwrap_or(bi.mtime),
            ctime: bi.ctime.unwrap_or(bi.mtime),
            size: 0,
            xattrs: bi.xattrs.clone(),
            target: None,
            hardlink: None,
            rdev: bi.rdev,
            chunks: vec![],
        };
        match kind {
            ItemKind::Symlink => item.target = bi.source.clone(),
            ItemKind::File => {
                if let (Some(src), false) = (&bi.source, bi.hardlink_master) {
                    // a later name of a hard-linked inode: borg keeps the content with the first
                    let (chunks, size) = masters
                        .get(src)
                        .cloned()
                        .ok_or_else(|| BorgError::integrity("item stream", "hard link before its first name"))?;
                    for c in &chunks {
                        if let Extent::Data { id, .. } = c {
                            *w.refs.entry(*id).or_default() += 1;
                        }
                    }
                    item.hardlink = Some(src.clone());
                    item.chunks = chunks;
                    item.size = size;
                } else {
                    let mut err = None;
                    let content =
                        BorgContent { repo: borg, chunks: bi.chunks.iter(), cur: Vec::new(), pos: 0, error: &mut err };
                    let res = w.content(content, &bi.path);
                    if let Some(e) = err {
                        return Err(e.into());
                    }
                    item.chunks =
                        res.map_err(|e| ImportError::Write(format!("{}: {e}", String::from_utf8_lossy(&bi.path))))?;
                    item.size = bi.size();
                    if bi.hardlink_master {
                        masters.insert(bi.path.clone(), (item.chunks.clone(), item.size));
                    }
                }
                stats.nfiles += 1;
                stats.original_size += item.size;
                progress.files += 1;
                progress.original += item.size;
                on(progress);
            }
            _ => {}
        }
        w.emit(&item)?;
    }
    w.cut(true)?;
    // stored size of every reference: chunks the repository had, then (below) the new ones
    let mut compressed: u64 = match &w.writer {
        Some(wr) => w.refs.iter().filter_map(|(id, n)| wr.known().chunks.get(id).map(|l| u64::from(l.len) * n)).sum(),
        None => 0,
    };
    let out = match w.writer.take() {
        Some(wr) => Some(wr.finish()?),
        None => None,
    };
    if let Some(out) = &out {
        stats.deduplicated_size = out.stored;
        let sizes = dedupstore::writer::stored_sizes(out);
        compressed += w.refs.iter().map(|(id, n)| u64::from(sizes.get(id).copied().unwrap_or(0)) * n).sum::<u64>();
        stats.compressed_size = compressed;
    }
    let meta = ArchiveMeta {
        version: 1,
        name: archive.name.clone(),
        hostname: archive.hostname.clone(),
        username: archive.username.clone(),
        time: archive.time,
        time_end: archive.time_end,
        cmdline: cmdline(borg_id, &archive),
        items: std::mem::take(&mut w.item_ids),
        stats,
        broken: vec![],
    };
    if opts.dry_run {
        return Ok(Imported { archive: meta, id: None, items: nitems });
    }
    let id = repo.write_archive(&meta)?;
    let mut m = repo.manifest()?;
    m.archives.push(ManifestEntry { name: meta.name.clone(), id, time: meta.time });
    m.timestamp = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    repo.write_manifest(&m)?;
    Ok(Imported { archive: meta, id: Some(id), items: nitems })
}
