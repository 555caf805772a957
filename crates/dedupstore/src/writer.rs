//! The parallel write pipeline: new chunks are compressed and encrypted on worker threads and
//! packed by one packer thread. All channels are bounded, so a slow disk slows the reader down
//! instead of filling memory.
//!
//! ```text
//!  reader+chunker+hasher ──(new chunks, bounded)──► N workers: compress, seal ──(bounded)──► packer
//!   (caller's thread)         dedup against index                                 packs, index files
//! ```

use crate::compress::Compression;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{BlobEntry, Index, IndexFile, PackBuilder, Repository};
use crossbeam_channel::{bounded, Receiver, Sender};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the packer did.
#[derive(Debug, Default)]
pub struct WriterOutput {
    /// New packs and their blobs.
    pub packs: Vec<(Id, Vec<BlobEntry>)>,
    /// Index files written.
    pub index_files: Vec<Id>,
    /// Stored bytes of new chunks.
    pub stored: u64,
}

/// A session that stores chunks into a repository.
#[derive(Debug)]
pub struct ChunkWriter {
    repo: Repository,
    known: Arc<Index>,
    new: HashSet<Id>,
    opts: WriterOptions,
    tx: Option<Sender<(Id, Vec<u8>)>>,
    workers: Vec<JoinHandle<()>>,
    packer: Option<JoinHandle<Result<WriterOutput>>>,
    /// What earlier [`ChunkWriter::flush`]es made durable.
    flushed: WriterOutput,
}

/// Tuning of a [`ChunkWriter`].
#[derive(Clone, Copy, Debug)]
pub struct WriterOptions {
    /// Compression of new chunks.
    pub compression: Compression,
    /// Worker threads (0 = number of CPUs).
    pub threads: usize,
    /// Write an index file (a checkpoint the next run reuses) at least this often.
    pub checkpoint_interval: Duration,
    /// ... or after this many packs.
    pub checkpoint_packs: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            compression: Compression::default(),
            threads: 0,
            checkpoint_interval: Duration::from_secs(60),
            checkpoint_packs: 16,
        }
    }
}

impl ChunkWriter {
    /// Starts the worker and packer threads.
    pub fn new(repo: &Repository, known: Arc<Index>, opts: WriterOptions) -> ChunkWriter {
        let mut w = ChunkWriter {
            repo: repo.clone(),
            known,
            new: HashSet::new(),
            opts,
            tx: None,
            workers: vec![],
            packer: None,
            flushed: WriterOutput::default(),
        };
        w.start();
        w
    }

    fn start(&mut self) {
        let (repo, opts) = (&self.repo, self.opts);
        let threads = if opts.threads == 0 {
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)
        } else {
            opts.threads
        };
        let (tx, rx) = bounded::<(Id, Vec<u8>)>(threads * 4);
        let (ptx, prx) = bounded::<(Id, Vec<u8>, u32)>(threads * 4);
        let workers = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                let ptx = ptx.clone();
                let crypto = repo.crypto().clone();
                let comp = opts.compression;
                std::thread::spawn(move || {
                    let header = crypto.header_len();
                    for (id, data) in rx {
                        // envelope header, then `tag | payload`, sealed in place: no copies
                        let mut sealed = Vec::with_capacity(header + data.len() + data.len() / 128 + 1024);
                        sealed.resize(header, 0);
                        comp.compress_into(&data, &mut sealed);
                        crypto.seal_in_place(&id.0, &mut sealed);
                        if ptx.send((id, sealed, data.len() as u32)).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        drop(ptx);
        let prepo = repo.clone();
        self.packer = Some(std::thread::spawn(move || packer(prepo, prx, opts)));
        self.tx = Some(tx);
        self.workers = workers;
    }

    /// Makes every chunk stored so far durable (packs written, an index file naming them) —
    /// what a checkpoint archive needs before it can refer to them — then carries on.
    pub fn flush(&mut self) -> Result<()> {
        let out = self.finish_inner()?;
        self.flushed.packs.extend(out.packs);
        self.flushed.index_files.extend(out.index_files);
        self.flushed.stored += out.stored;
        self.start();
        Ok(())
    }

    /// Stored bytes of the new chunks made durable by [`ChunkWriter::flush`] so far.
    pub fn flushed_stored(&self) -> u64 {
        self.flushed.stored
    }

    /// Whether a chunk is already stored (or queued).
    pub fn has(&self, id: &Id) -> bool {
        self.known.contains(id) || self.new.contains(id)
    }

    /// The index this session started from.
    pub fn known(&self) -> &Index {
        &self.known
    }

    /// Stores a chunk unless known; returns its id and whether it was new.
    pub fn store(&mut self, data: Vec<u8>) -> Result<(Id, bool)> {
        let id = self.repo.crypto().key().chunk_id(&data);
        if self.has(&id) {
            return Ok((id, false));
        }
        self.new.insert(id);
        let sent = self.tx.as_ref().map(|tx| tx.send((id, data)).is_ok());
        if sent != Some(true) {
            // The packer stopped (an IO error): surface its error.
            return Err(self.finish_inner().err().unwrap_or(Error::PreviousIo));
        }
        Ok((id, true))
    }

    fn finish_inner(&mut self) -> Result<WriterOutput> {
        self.tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.packer.take() {
            Some(p) => p.join().unwrap_or(Err(Error::PreviousIo)),
            None => Err(Error::PreviousIo),
        }
    }

    /// Flushes everything (last pack, index file) and stops the threads.
    pub fn finish(mut self) -> Result<WriterOutput> {
        let mut out = self.finish_inner()?;
        let mut all = std::mem::take(&mut self.flushed);
        all.packs.append(&mut out.packs);
        all.index_files.append(&mut out.index_files);
        all.stored += out.stored;
        Ok(all)
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        if self.packer.is_some() {
            let _ = self.finish_inner();
        }
    }
}

/// A pack being written on its own thread.
type Upload = JoinHandle<Result<(Id, Vec<BlobEntry>)>>;

/// Packs being written concurrently.
const UPLOADS: usize = 1;

/// Runs the packer; when it fails (a full disk, a dead link), the packs it wrote that no index
/// file names yet are removed again, so a failed session leaves the repository as it found it
/// (apart from index files already written, which later sessions reuse).
fn packer(repo: Repository, rx: Receiver<(Id, Vec<u8>, u32)>, opts: WriterOptions) -> Result<WriterOutput> {
    let mut pending = Vec::new();
    let mut uploads = VecDeque::new();
    let r = pack_loop(&repo, rx, opts, &mut pending, &mut uploads);
    if r.is_err() {
        while let Some(h) = uploads.pop_front() {
            if let Ok(Ok(p)) = h.join() {
                pending.push(p);
            }
        }
        for (id, _) in &pending {
            // best effort: an append-only server refuses, and the pack stays an orphan
            let _ = repo.backend().remove(crate::backend::FileType::Pack, &id.to_hex());
        }
    }
    r
}

fn pack_loop(
    repo: &Repository,
    rx: Receiver<(Id, Vec<u8>, u32)>,
    opts: WriterOptions,
    pending: &mut Vec<(Id, Vec<BlobEntry>)>,
    uploads: &mut VecDeque<Upload>,
) -> Result<WriterOutput> {
    let pack_size = repo.config().pack_size as usize;
    let mut out = WriterOutput::default();
    // room for a full pack, its last chunk and the header: no doubling reallocation
    let cap = pack_size + (repo.chunker().params().max as usize) * 2 + (1 << 20);
    let mut pack = PackBuilder::with_capacity(cap);
    let mut last_index = Instant::now();
    let write_index = |pending: &mut Vec<(Id, Vec<BlobEntry>)>, out: &mut WriterOutput| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        // taken only once the index file is durable: until then a failure removes these packs
        let f = IndexFile { packs: pending.clone(), supersedes: vec![] };
        let id = repo.write_index_file(&f)?;
        pending.clear();
        out.index_files.push(id);
        out.packs.extend(f.packs);
        Ok(())
    };
    // Packs are written (and fsynced) on their own threads, at most UPLOADS at a time, so the
    // pipeline keeps going during an fsync. An index file only names packs already durable.
    let join = |h: Upload| h.join().unwrap_or(Err(Error::PreviousIo));
    for (id, sealed, ulen) in rx {
        out.stored += sealed.len() as u64;
        pack.add(id, &sealed, ulen);
        if pack.len() >= pack_size {
            let full = std::mem::replace(&mut pack, PackBuilder::with_capacity(cap));
            let r = repo.clone();
            uploads.push_back(std::thread::spawn(move || full.finish(&r)));
            while uploads.len() > UPLOADS {
                if let Some(h) = uploads.pop_front() {
                    pending.push(join(h)?);
                }
            }
            if pending.len() >= opts.checkpoint_packs || last_index.elapsed() >= opts.checkpoint_interval {
                while let Some(h) = uploads.pop_front() {
                    pending.push(join(h)?);
                }
                write_index(pending, &mut out)?;
                last_index = Instant::now();
            }
        }
    }
    if !pack.is_empty() {
        let r = repo.clone();
        uploads.push_back(std::thread::spawn(move || pack.finish(&r)));
    }
    while let Some(h) = uploads.pop_front() {
        pending.push(join(h)?);
    }
    write_index(pending, &mut out)?;
    Ok(out)
}

/// Stored sizes of the chunks a writer session produced.
pub fn stored_sizes(out: &WriterOutput) -> HashMap<Id, u32> {
    out.packs.iter().flat_map(|(_, b)| b.iter().map(|b| (b.id, b.len))).collect()
}
