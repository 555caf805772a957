//! Writing an archive from items that do not come from a directory walk (`import-tar`): the
//! caller hands over items and their content, the builder chunks, stores and commits.
//!
//! ```text
//!  caller ──store_content(reader)──► chunker ──► ChunkWriter (workers, packer) ──► packs
//!     │                                 extents
//!     └──add_item(item + extents)──► item stream (chunked and stored as it grows)
//!  commit(): rest of the item stream ─► archive object ─► manifest (the commit, written last)
//! ```
//!
//! Crash guarantees are create's: the exclusive lock is held from [`ArchiveBuilder::new`] to
//! the end, and nothing names the new chunks until the manifest is written, so a builder
//! dropped without [`ArchiveBuilder::commit`] (or a crash) leaves only unreferenced packs that
//! `compact` removes.

use crate::archive::{encode_item, ArchiveMeta, ArchiveStats, Extent, Item, ItemKind, ManifestEntry};
use crate::chunker::Chunker;
use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{RepoLock, Repository};
use crate::writer::{stored_sizes, ChunkWriter, WriterOptions};
use chrono::{DateTime, Utc};
use std::io::Read;
use std::sync::Arc;

/// An archive being written; see the module docs.
#[derive(Debug)]
pub struct ArchiveBuilder<'r> {
    repo: &'r Repository,
    _lock: RepoLock,
    name: String,
    time: DateTime<Utc>,
    cmdline: Vec<String>,
    writer: ChunkWriter,
    chunker: Chunker,
    items: Vec<u8>,
    item_ids: Vec<Id>,
    data_refs: Vec<Id>,
    stats: ArchiveStats,
    /// `recreate`: the archive this one replaces (same name, time, host, user, command line).
    replaces: Option<(ManifestEntry, ArchiveMeta)>,
}

impl<'r> ArchiveBuilder<'r> {
    /// Takes the exclusive lock and starts archive `name` (which must not exist) at `time`
    /// (default: now).
    pub fn new(
        repo: &'r Repository,
        name: &str,
        compression: Compression,
        time: Option<DateTime<Utc>>,
        cmdline: Vec<String>,
    ) -> Result<Self> {
        if name.is_empty() || name.contains('/') {
            return Err(Error::InvalidArgument(format!("archive name {name:?}")));
        }
        let lock = repo.lock()?;
        if repo.manifest()?.get(name).is_some() {
            return Err(Error::ArchiveExists(name.into()));
        }
        let index = Arc::new(repo.load_index()?);
        let writer = ChunkWriter::new(repo, index, WriterOptions { compression, ..WriterOptions::default() });
        Ok(ArchiveBuilder {
            repo,
            _lock: lock,
            name: name.into(),
            time: time.unwrap_or_else(Utc::now),
            cmdline,
            writer,
            chunker: repo.chunker().clone(),
            items: Vec::new(),
            item_ids: Vec::new(),
            data_refs: Vec::new(),
            stats: ArchiveStats::default(),
            replaces: None,
        })
    }

    /// `recreate`: takes the exclusive lock and starts a new version of the existing archive
    /// `name`. [`ArchiveBuilder::commit`] switches the manifest entry to it in one write (the
    /// old version stays whole until then) and only then removes the old archive object.
    pub fn replacing(repo: &'r Repository, name: &str, compression: Compression) -> Result<Self> {
        let lock = repo.lock()?;
        let entry = repo.manifest()?.get(name).cloned().ok_or_else(|| Error::NoSuchArchive(name.into()))?;
        let old = repo.archive(&entry.id)?;
        let index = Arc::new(repo.load_index()?);
        let writer = ChunkWriter::new(repo, index, WriterOptions { compression, ..WriterOptions::default() });
        Ok(ArchiveBuilder {
            repo,
            _lock: lock,
            name: name.into(),
            time: crate::commands::time_of(entry.time),
            cmdline: old.cmdline.clone(),
            writer,
            chunker: repo.chunker().clone(),
            items: Vec::new(),
            item_ids: Vec::new(),
            data_refs: Vec::new(),
            stats: ArchiveStats::default(),
            replaces: Some((entry, old)),
        })
    }

    /// Chunks and stores what `reader` gives; returns the extents and the byte count.
    pub fn store_content(&mut self, reader: impl Read) -> Result<(Vec<Extent>, u64)> {
        let chunker = self.chunker.clone();
        let mut s = chunker.stream(reader);
        let (mut out, mut n) = (Vec::new(), 0u64);
        while let Some(c) = s.next_chunk().map_err(|e| Error::io("content", e))? {
            n += c.len() as u64;
            let len = c.len() as u32;
            let (id, _) = self.writer.store(c)?;
            out.push(Extent::Data { id, len });
        }
        Ok((out, n))
    }

    /// Adds an item (its `chunks` from [`ArchiveBuilder::store_content`], or chunks already in
    /// the repository, as `recreate` keeps them).
    pub fn add_item(&mut self, item: &Item) -> Result<()> {
        if item.kind == ItemKind::File {
            self.stats.nfiles += 1;
            self.stats.original_size += item.size;
            for c in &item.chunks {
                if let Extent::Data { id, .. } = c {
                    self.data_refs.push(*id);
                }
            }
        }
        encode_item(item, &mut self.items)?;
        if self.items.len() >= 2 * self.chunker.params().max as usize {
            self.cut_items(false)?;
        }
        Ok(())
    }

    fn cut_items(&mut self, all: bool) -> Result<()> {
        let (writer, ids) = (&mut self.writer, &mut self.item_ids);
        self.chunker.cut_final(&mut self.items, all, |c| {
            ids.push(writer.store(c.to_vec())?.0);
            Ok(())
        })
    }

    /// Stores the rest, writes the archive object, then the manifest naming it (the commit).
    pub fn commit(mut self) -> Result<(Id, ArchiveMeta)> {
        self.cut_items(true)?;
        let known: std::collections::HashMap<Id, u32> =
            self.data_refs.iter().filter_map(|id| self.writer.known().chunks.get(id).map(|l| (*id, l.len))).collect();
        let out = self.writer.finish()?;
        let new = stored_sizes(&out);
        self.stats.compressed_size = self
            .data_refs
            .iter()
            .map(|id| u64::from(known.get(id).or_else(|| new.get(id)).copied().unwrap_or(0)))
            .sum();
        self.stats.deduplicated_size = out.stored;
        let meta = ArchiveMeta {
            version: 1,
            name: self.name.clone(),
            hostname: crate::repo::hostname(),
            username: nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_default(),
            time: self.time.timestamp_nanos_opt().unwrap_or(0),
            time_end: Utc::now().timestamp_nanos_opt().unwrap_or(0),
            cmdline: self.cmdline.clone(),
            items: std::mem::take(&mut self.item_ids),
            stats: self.stats,
            broken: vec![],
        };
        let mut meta = meta;
        if let Some((_, old)) = &self.replaces {
            meta.hostname = old.hostname.clone();
            meta.username = old.username.clone();
            meta.time_end = old.time_end;
        }
        let id = self.repo.write_archive(&meta)?;
        let mut m = self.repo.manifest()?;
        let entry = ManifestEntry { name: meta.name.clone(), id, time: meta.time };
        match &self.replaces {
            Some((old, _)) => {
                let slot = m.archives.iter_mut().find(|a| a.id == old.id).ok_or_else(|| {
                    Error::integrity("manifest", format!("archive {} changed while it was recreated", old.name))
                })?;
                *slot = entry;
            }
            None => m.archives.push(entry),
        }
        m.timestamp = Utc::now().timestamp_nanos_opt().unwrap_or(0);
        self.repo.write_manifest(&m)?;
        if let Some((old, _)) = &self.replaces {
            if old.id != id {
                self.repo.backend().remove(crate::backend::FileType::Archive, &old.id.to_hex())?;
            }
        }
        Ok((id, meta))
    }
}
