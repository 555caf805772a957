//! The repository: config, keys, manifest, index, packs and the lock.

use crate::archive::{ArchiveMeta, Manifest};
use crate::backend::{Backend, FileType};
use crate::chunker::{Chunker, ChunkerParams};
use crate::compress::decompress;
use crate::crypto::{Crypto, KdfParams, KeyFile, MasterKey, Mode};
use crate::error::{Error, Result};
use crate::id::Id;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

/// Current repository format version.
pub const FORMAT_VERSION: u32 = 1;
/// Default pack size target (8 MiB: two packs are in memory while the pipeline runs, one filling
/// and one being written; larger packs only raise the peak RSS).
pub const DEFAULT_PACK_SIZE: u32 = 8 << 20;
/// Largest single read [`Repository::fetch_sealed`] asks for.
pub const FETCH_MAX_RUN: u64 = 16 << 20;
/// Which occurrences of a chunk in `ids` (a restore's order) can reuse the plaintext of the
/// occurrence before instead of reading and opening it again, if at no point more than `cap`
/// is kept waiting for their next occurrence, a chunk weighing `weight(location)` (its plaintext
/// length `ulen` when kept in memory; the slot size when kept in slots of a file). Returns, for each occurrence,
/// the earlier one it reuses (`reuse_from`) and the later one its plaintext is kept for
/// (`keep_for`). Chunks missing from the index are never kept.
///
/// Greedy in order: an occurrence keeps its plaintext for the next occurrence if what is kept at
/// that moment leaves room; it is kept from its occurrence until the next one. Later decisions only
/// ever add to the total at their own moment, so the total never exceeds `cap`.
pub fn plan_reuse(
    index: &Index,
    ids: &[Id],
    cap: u64,
    weight: &dyn Fn(&Location) -> u64,
) -> (Vec<Option<usize>>, Vec<Option<usize>>) {
    let mut next_occ: Vec<Option<usize>> = vec![None; ids.len()];
    let mut seen: HashMap<Id, usize> = HashMap::new();
    for (n, id) in ids.iter().enumerate().rev() {
        next_occ[n] = seen.insert(*id, n);
    }
    let (mut reuse_from, mut keep_for) = (vec![None; ids.len()], vec![None; ids.len()]);
    // kept: (the occurrence that takes it, its length), earliest first
    let mut held: std::collections::BinaryHeap<std::cmp::Reverse<(usize, u64)>> = Default::default();
    let mut total = 0u64;
    for n in 0..ids.len() {
        while let Some(&std::cmp::Reverse((until, len))) = held.peek() {
            if until > n {
                break;
            }
            held.pop();
            total -= len;
        }
        let (Some(later), Some(loc)) = (next_occ[n], index.chunks.get(&ids[n])) else { continue };
        let len = weight(loc);
        if total + len <= cap {
            keep_for[n] = Some(later);
            reuse_from[later] = Some(n);
            held.push(std::cmp::Reverse((later, len)));
            total += len;
        }
    }
    (reuse_from, keep_for)
}

/// What the config authenticates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigBody {
    /// Format version.
    pub version: u32,
    /// Repository id (hex).
    pub id: String,
    /// Encryption mode.
    pub mode: Mode,
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// Pack size target.
    pub pack_size: u32,
}

/// The repository config file (JSON, readable without the key; its MAC is checked once the key
/// is open).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// The authenticated fields.
    #[serde(flatten)]
    pub body: ConfigBody,
    /// keyed blake3 (MAC key) over postcard(body), hex.
    pub mac: String,
}

/// Options for [`Repository::init`].
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Encryption mode.
    pub mode: Mode,
    /// Passphrase (required unless mode is `none`).
    pub passphrase: Option<String>,
    /// Chunker parameters.
    pub chunker: ChunkerParams,
    /// Directory for `keyfile` mode keys.
    pub keys_dir: Option<PathBuf>,
    /// Argon2id parameters.
    pub kdf: KdfParams,
    /// Pack size target in bytes.
    pub pack_size: u32,
}

impl InitOptions {
    /// Defaults for a mode.
    pub fn new(mode: Mode, passphrase: Option<String>) -> Self {
        InitOptions {
            mode,
            passphrase,
            chunker: ChunkerParams::default(),
            keys_dir: None,
            kdf: KdfParams::default(),
            pack_size: DEFAULT_PACK_SIZE,
        }
    }
}

/// Options for [`Repository::open`].
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Passphrase (required unless mode is `none`).
    pub passphrase: Option<String>,
    /// Directory for `keyfile` mode keys.
    pub keys_dir: Option<PathBuf>,
}

/// Where a blob lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobEntry {
    /// Chunk id.
    pub id: Id,
    /// Offset in the pack.
    pub offset: u32,
    /// Stored (sealed) length.
    pub len: u32,
    /// Plaintext length.
    pub ulen: u32,
}

/// Contents of one index file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    /// Packs and their blobs.
    pub packs: Vec<(Id, Vec<BlobEntry>)>,
    /// Index files this one replaces (written by `compact`); they are ignored if still present.
    pub supersedes: Vec<Id>,
}

/// A chunk's location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// Pack id.
    pub pack: Id,
    /// Offset.
    pub offset: u32,
    /// Stored length.
    pub len: u32,
    /// Plaintext length.
    pub ulen: u32,
}

/// The in-memory chunk index.
///
/// Index files are a cache of what the packs' own headers say. [`Repository::load_index`] builds
/// this from the readable index files and indexes every pack on disk that none of them names
/// from the pack's header, so a damaged, missing or stale index file never stops a backup or a
/// restore (issue 14); what it found is in [`Index::damaged_files`], [`Index::unindexed`] and
/// [`Index::unreadable`].
#[derive(Clone, Debug, Default)]
pub struct Index {
    /// Chunk id to location.
    pub chunks: HashMap<Id, Location>,
    /// Index files that make it up.
    pub files: Vec<Id>,
    /// Packs known to the index, with their blobs.
    pub packs: HashMap<Id, Vec<BlobEntry>>,
    /// Index files that could not be read (name, why); their packs are indexed from the packs'
    /// headers instead.
    pub damaged_files: Vec<(String, String)>,
    /// Packs on disk that no readable index file names, indexed from their own headers (sorted):
    /// a damaged or lost index file, or packs an interrupted command wrote after its last index
    /// file.
    pub unindexed: Vec<Id>,
    /// Packs on disk that no readable index file names and whose header cannot be read (pack,
    /// why): their chunks are not in the index.
    pub unreadable: Vec<(Id, String)>,
}

impl Index {
    /// Adds a pack's blobs (first location of a chunk wins).
    pub fn add_pack(&mut self, pack: Id, blobs: Vec<BlobEntry>) {
        for b in &blobs {
            self.chunks.entry(b.id).or_insert(Location { pack, offset: b.offset, len: b.len, ulen: b.ulen });
        }
        self.packs.insert(pack, blobs);
    }
    /// Whether a chunk is known.
    pub fn contains(&self, id: &Id) -> bool {
        self.chunks.contains_key(id)
    }
}

/// An open repository.
#[derive(Debug, Clone)]
pub struct Repository {
    backend: Arc<dyn Backend>,
    config: ConfigBody,
    crypto: Arc<Crypto>,
    chunker: Chunker,
    lock_wait: std::time::Duration,
    bypass_lock: bool,
}

/// How long to wait for a lock another process holds (borg's `--lock-wait` default: 1 s).
pub const DEFAULT_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

fn now_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

fn keyfile_path(dir: &Option<PathBuf>, id: &str) -> Result<PathBuf> {
    let dir = dir
        .clone()
        .ok_or_else(|| Error::InvalidArgument("keyfile mode needs a key directory (REMPART_KEYS_DIR)".into()))?;
    Ok(dir.join(id))
}

impl Repository {
    /// Creates a repository. Nothing is written if the target exists and is not empty.
    pub fn init(backend: Arc<dyn Backend>, opts: &InitOptions) -> Result<Repository> {
        opts.chunker.validate()?;
        if opts.pack_size < 4096 || opts.pack_size > 1 << 30 {
            return Err(Error::InvalidArgument("pack size".into()));
        }
        let pass = match (opts.mode.has_key(), &opts.passphrase) {
            (true, None) => return Err(Error::PassphraseRequired),
            (_, p) => p.clone().unwrap_or_default(),
        };
        let key = if opts.mode.has_key() { MasterKey::generate() } else { MasterKey::public() };
        let id = Id::random();
        let body = ConfigBody {
            version: FORMAT_VERSION,
            id: id.to_hex(),
            mode: opts.mode,
            chunker: opts.chunker,
            pack_size: opts.pack_size,
        };
        let keyfile_target =
            if opts.mode == Mode::Keyfile { Some(keyfile_path(&opts.keys_dir, &body.id)?) } else { None };
        backend.create()?;
        if opts.mode.has_key() {
            let kf = KeyFile::seal(&key, &pass, &id, opts.kdf.clone())?;
            let json = crate::encode::json_pretty("key file", &kf)?;
            match &keyfile_target {
                Some(p) => write_keyfile(p, &json)?,
                None => backend.write(FileType::Key, "repokey", &json)?,
            }
        }
        let repo = Repository {
            chunker: Chunker::new(body.chunker, key.chunker_seed()),
            crypto: Arc::new(Crypto::new(opts.mode, key)),
            config: body,
            backend,
            lock_wait: DEFAULT_LOCK_WAIT,
            bypass_lock: false,
        };
        repo.write_manifest(&Manifest { version: 1, timestamp: now_ns(), archives: vec![] })?;
        // The config is written last: its presence means "initialised".
        let cfg = Config {
            mac: hex::encode(repo.crypto.key().mac(&crate::encode::postcard("config", &repo.config)?)),
            body: repo.config.clone(),
        };
        repo.backend.write(FileType::Config, "config", &crate::encode::json_pretty("config", &cfg)?)?;
        Ok(repo)
    }

    /// Reads the config without any key (mode, id).
    pub fn read_config(backend: &dyn Backend) -> Result<Config> {
        let raw = match backend.read(FileType::Config, "config") {
            Ok(r) => r,
            Err(Error::NotFound(_)) => return Err(Error::NotARepository(PathBuf::from(backend.location()))),
            Err(e) => return Err(e),
        };
        let cfg: Config = serde_json::from_slice(&raw).map_err(|e| Error::integrity("config", e.to_string()))?;
        if cfg.body.version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion(cfg.body.version));
        }
        Ok(cfg)
    }

    /// Opens a repository (checks the key and the config's MAC).
    pub fn open(backend: Arc<dyn Backend>, opts: &OpenOptions) -> Result<Repository> {
        let cfg = Self::read_config(backend.as_ref())?;
        let key = Self::load_key(backend.as_ref(), &cfg.body, opts)?;
        let mac = hex::encode(key.mac(&crate::encode::postcard("config", &cfg.body)?));
        if mac != cfg.mac {
            return Err(Error::integrity("config", "MAC mismatch (config tampered with)"));
        }
        cfg.body.chunker.validate()?;
        Ok(Repository {
            chunker: Chunker::new(cfg.body.chunker, key.chunker_seed()),
            crypto: Arc::new(Crypto::new(cfg.body.mode, key)),
            config: cfg.body,
            backend,
            lock_wait: DEFAULT_LOCK_WAIT,
            bypass_lock: false,
        })
    }

    fn load_key(backend: &dyn Backend, cfg: &ConfigBody, opts: &OpenOptions) -> Result<MasterKey> {
        if !cfg.mode.has_key() {
            return Ok(MasterKey::public());
        }
        let (raw, what) = if cfg.mode == Mode::Keyfile {
            let p = keyfile_path(&opts.keys_dir, &cfg.id)?;
            let raw = std::fs::read(&p).map_err(|e| Error::KeyFile { path: p.clone(), reason: e.to_string() })?;
            (raw, p)
        } else {
            (backend.read(FileType::Key, "repokey")?, PathBuf::from(format!("{}/keys/repokey", backend.location())))
        };
        let kf: KeyFile =
            serde_json::from_slice(&raw).map_err(|e| Error::KeyFile { path: what.clone(), reason: e.to_string() })?;
        if kf.repository_id != cfg.id {
            return Err(Error::KeyFile { path: what, reason: "belongs to another repository".into() });
        }
        let pass = opts.passphrase.as_deref().ok_or(Error::PassphraseRequired)?;
        kf.open(pass)
    }

    /// Re-encrypts the master key under a new passphrase (`key change-passphrase`).
    pub fn change_passphrase(&self, new: &str, keys_dir: &Option<PathBuf>) -> Result<()> {
        if !self.config.mode.has_key() {
            return Err(Error::InvalidArgument("mode none has no key".into()));
        }
        let id = Id::from_hex(&self.config.id).unwrap_or(Id([0; 32]));
        let kf = KeyFile::seal(self.crypto.key(), new, &id, KdfParams::default())?;
        let json = crate::encode::json_pretty("key file", &kf)?;
        if self.config.mode == Mode::Keyfile {
            write_keyfile(&keyfile_path(keys_dir, &self.config.id)?, &json)
        } else {
            self.backend.write(FileType::Key, "repokey", &json)
        }
    }

    /// The stored key file (JSON) for `key export`.
    pub fn export_key(&self, keys_dir: &Option<PathBuf>) -> Result<Vec<u8>> {
        match self.config.mode {
            Mode::Keyfile => {
                let p = keyfile_path(keys_dir, &self.config.id)?;
                std::fs::read(&p).map_err(|e| Error::io(p, e))
            }
            Mode::None => Err(Error::InvalidArgument("mode none has no key".into())),
            _ => self.backend.read(FileType::Key, "repokey"),
        }
    }

    /// Installs an exported key file (`key import`) after checking it opens with `pass`.
    pub fn import_key(backend: &dyn Backend, data: &[u8], pass: &str, keys_dir: &Option<PathBuf>) -> Result<()> {
        let cfg = Self::read_config(backend)?;
        let kf: KeyFile = serde_json::from_slice(data).map_err(|e| Error::InvalidArgument(format!("key file: {e}")))?;
        if kf.repository_id != cfg.body.id {
            return Err(Error::InvalidArgument("key belongs to another repository".into()));
        }
        let key = kf.open(pass)?;
        let mac = hex::encode(key.mac(&crate::encode::postcard("config", &cfg.body)?));
        if mac != cfg.mac {
            return Err(Error::InvalidArgument("key does not match the repository".into()));
        }
        match cfg.body.mode {
            Mode::Keyfile => write_keyfile(&keyfile_path(keys_dir, &cfg.body.id)?, data),
            _ => backend.write(FileType::Key, "repokey", data),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    /// The config.
    pub fn config(&self) -> &ConfigBody {
        &self.config
    }
    /// The crypto session.
    pub fn crypto(&self) -> &Arc<Crypto> {
        &self.crypto
    }
    /// The chunker.
    pub fn chunker(&self) -> &Chunker {
        &self.chunker
    }

    /// Takes the exclusive writer lock (create, delete, prune, compact, check --repair): no
    /// other writer and no reader at the same time. Waits up to the lock wait.
    /// The writer also removes what writers killed mid-write left behind (hidden temporary
    /// files nobody holds; see [`Backend::remove_stale_temps`]), as a server does per session.
    pub fn lock(&self) -> Result<RepoLock> {
        let lock = RepoLock::acquire(self.backend.clone(), true, self.lock_wait)?;
        let freed = self.backend.remove_stale_temps();
        if freed > 0 {
            tracing::info!(freed, "removed temporary files left by an interrupted write");
        }
        Ok(lock)
    }

    /// Takes a shared reader lock (list, info, extract, check): any number of readers, no
    /// writer, so a concurrent prune or compact cannot remove what they read.
    pub fn shared_lock(&self) -> Result<RepoLock> {
        if self.bypass_lock {
            return Ok(RepoLock { backend: self.backend.clone(), name: String::new(), token: String::new() });
        }
        RepoLock::acquire(self.backend.clone(), false, self.lock_wait)
    }

    /// Reads without a shared lock (borg's `--bypass-lock`): for looking at a repository a
    /// writer is working on; what is read may be removed meanwhile by a prune or compact.
    pub fn set_bypass_lock(&mut self, bypass: bool) {
        self.bypass_lock = bypass;
    }

    /// Sets how long [`Repository::lock`] and [`Repository::shared_lock`] wait for a lock
    /// another process holds before failing with [`Error::Locked`] (borg's `--lock-wait`).
    pub fn set_lock_wait(&mut self, wait: std::time::Duration) {
        self.lock_wait = wait;
    }

    /// Reads and authenticates the manifest.
    pub fn manifest(&self) -> Result<Manifest> {
        // damaged or lost: the archives are still there (issue 14)
        let hint = |e: Error| match e {
            Error::Integrity { what, reason } => Error::Integrity {
                what,
                reason: format!("{reason} (check --repair rebuilds the manifest from the archive objects)"),
            },
            Error::NotFound(what) => Error::Integrity {
                what,
                reason: "missing (check --repair rebuilds the manifest from the archive objects)".into(),
            },
            e => e,
        };
        let raw = self.backend.read(FileType::Manifest, "manifest").map_err(hint)?;
        let pt = self.crypto.open("manifest", b"manifest", &raw).map_err(hint)?;
        let m: Manifest = postcard::from_bytes(&pt).map_err(|e| hint(Error::integrity("manifest", e.to_string())))?;
        if m.version != 1 {
            return Err(Error::UnsupportedVersion(m.version));
        }
        Ok(m)
    }

    /// Atomically replaces the manifest.
    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let pt = crate::encode::postcard("manifest", m)?;
        let blob = self.crypto.seal(b"manifest", &pt);
        self.backend.write(FileType::Manifest, "manifest", &blob)
    }

    /// Reads an archive object.
    pub fn archive(&self, id: &Id) -> Result<ArchiveMeta> {
        let raw = self.backend.read(FileType::Archive, &id.to_hex())?;
        let what = format!("archive object {}", id.to_hex());
        let pt = self.crypto.open(&what, &archive_aad(id), &raw)?;
        let (mut meta, rest) =
            postcard::take_from_bytes::<ArchiveMeta>(&pt).map_err(|e| Error::integrity(&what, e.to_string()))?;
        if !rest.is_empty() {
            meta.broken = postcard::from_bytes(rest).map_err(|e| Error::integrity(what, e.to_string()))?;
        }
        Ok(meta)
    }

    /// Writes an archive object; returns its id.
    pub fn write_archive(&self, meta: &ArchiveMeta) -> Result<Id> {
        let mut pt = crate::encode::postcard("archive", meta)?;
        if !meta.broken.is_empty() {
            pt.extend(crate::encode::postcard("archive", &meta.broken)?);
        }
        let id = self.crypto.key().chunk_id(&pt);
        let blob = self.crypto.seal(&archive_aad(&id), &pt);
        self.backend.write(FileType::Archive, &id.to_hex(), &blob)?;
        Ok(id)
    }

    /// Reads one index file.
    pub fn index_file(&self, name: &str) -> Result<IndexFile> {
        let raw = self.backend.read(FileType::Index, name)?;
        let what = format!("index file {name}");
        if Id::hash(&raw).to_hex() != name {
            return Err(Error::integrity(what, "content does not match its name"));
        }
        let pt = self.crypto.open(&what, b"index", &raw)?;
        postcard::from_bytes(&pt).map_err(|e| Error::integrity(what, e.to_string()))
    }

    /// Writes an index file; returns its name.
    pub fn write_index_file(&self, f: &IndexFile) -> Result<Id> {
        let pt = crate::encode::postcard("index", f)?;
        let blob = self.crypto.seal(b"index", &pt);
        let id = Id::hash(&blob);
        self.backend.write(FileType::Index, &id.to_hex(), &blob)?;
        Ok(id)
    }

    /// Loads the chunk index: every readable index file (skipping superseded ones), then every
    /// pack on disk that none of them names, from the pack's own header.
    ///
    /// Index files only cache what the packs' headers say, so a damaged or missing one is
    /// never fatal (issue 14): an index file that cannot be read is logged once, by name, and
    /// left out ([`Index::damaged_files`]); the packs it named are then found on disk and indexed
    /// from their headers ([`Index::unindexed`]). A chunk whose index entry names a pack that is
    /// gone is located in a pack on disk if one holds it. Only listing the index files or the
    /// packs can fail.
    pub fn load_index(&self) -> Result<Index> {
        let names = self.backend.list(FileType::Index)?;
        let mut files = Vec::new();
        let mut superseded = HashSet::new();
        let mut idx = Index::default();
        for n in &names {
            match self.index_file(n) {
                Ok(f) => {
                    superseded.extend(f.supersedes.iter().copied());
                    files.push((n.clone(), f));
                }
                // only the caller's own state is worth stopping for
                Err(e @ (Error::PreviousIo | Error::Locked { .. } | Error::InvalidArgument(_))) => return Err(e),
                Err(e) => {
                    tracing::warn!(
                        "index file {n}: {e}: ignored, its packs are indexed from their headers \
                         (check --repair writes a new index)"
                    );
                    idx.damaged_files.push((n.clone(), e.to_string()));
                }
            }
        }
        for (n, f) in files {
            let Some(id) = Id::from_hex(&n) else { continue };
            if superseded.contains(&id) {
                continue;
            }
            idx.files.push(id);
            for (pack, blobs) in f.packs {
                idx.add_pack(pack, blobs);
            }
        }
        let on_disk: HashSet<Id> = self.backend.list(FileType::Pack)?.iter().filter_map(|n| Id::from_hex(n)).collect();
        if idx.packs.keys().any(|p| !on_disk.contains(p)) {
            // packs an index names are gone (a damaged index superseding them, a crash in
            // compact): a chunk's location is one on disk when there is one
            let mut packs: Vec<(Id, Vec<BlobEntry>)> = idx.packs.drain().collect();
            packs.sort_by_key(|(p, _)| (!on_disk.contains(p), *p));
            idx.chunks.clear();
            for (p, b) in packs {
                idx.add_pack(p, b);
            }
        }
        let mut unindexed: Vec<Id> = on_disk.into_iter().filter(|p| !idx.packs.contains_key(p)).collect();
        unindexed.sort();
        for pack in unindexed {
            match self.pack_header(&pack) {
                Ok(blobs) => {
                    idx.add_pack(pack, blobs);
                    idx.unindexed.push(pack);
                }
                Err(e) => {
                    tracing::warn!("pack {}: in no index file and its header cannot be read: {e}", pack.to_hex());
                    idx.unreadable.push((pack, e.to_string()));
                }
            }
        }
        if !idx.unindexed.is_empty() {
            tracing::info!(packs = idx.unindexed.len(), "packs no index file names were indexed from their headers");
        }
        Ok(idx)
    }

    /// For a writer holding the lock: writes one index file naming the packs
    /// [`Repository::load_index`] had to index from their headers ([`Index::unindexed`]), which
    /// supersedes the damaged index files, then removes the damaged files whose content is
    /// proven bad (a failed authentication or a wrong hash, not a failed read; an append-only
    /// server keeps them, which only costs a warning on each load). The packs stay the truth: nothing is removed that the new index does not cover. Returns the new file's
    /// name, or `None` when there was nothing to do.
    pub fn write_recovered_index(&self, idx: &Index) -> Result<Option<Id>> {
        if idx.unindexed.is_empty() && idx.damaged_files.is_empty() {
            return Ok(None);
        }
        let packs = idx.unindexed.iter().filter_map(|p| idx.packs.get(p).map(|b| (*p, b.clone()))).collect();
        let supersedes = idx.damaged_files.iter().filter_map(|(n, _)| Id::from_hex(n)).collect();
        let id = self.write_index_file(&IndexFile { packs, supersedes })?;
        for (n, _) in &idx.damaged_files {
            if let Err(Error::Integrity { .. }) = self.index_file(n) {
                // superseded already; an append-only server refuses the removal
                match self.backend.remove(FileType::Index, n) {
                    Ok(()) => tracing::warn!("index file {n}: damaged, replaced by index file {}", id.to_hex()),
                    Err(e) => tracing::warn!("index file {n}: damaged, superseded but not removed: {e}"),
                }
            }
        }
        Ok(Some(id))
    }

    /// Reads a pack's header (its list of blobs) from the pack itself.
    pub fn pack_header(&self, pack: &Id) -> Result<Vec<BlobEntry>> {
        let name = pack.to_hex();
        let what = format!("pack {name}");
        let size = self.backend.size(FileType::Pack, &name)?;
        if size < 4 {
            return Err(Error::integrity(what, "too short"));
        }
        let t = self.backend.read_part(FileType::Pack, &name, size - 4, 4)?;
        let hlen = u64::from(u32::from_le_bytes([t[0], t[1], t[2], t[3]]));
        if hlen + 4 > size {
            return Err(Error::integrity(what, "bad header length"));
        }
        let h = self.backend.read_part(FileType::Pack, &name, size - 4 - hlen, hlen)?;
        let pt = self.crypto.open(&what, b"pack header", &h)?;
        postcard::from_bytes(&pt).map_err(|e| Error::integrity(what, e.to_string()))
    }

    /// Reads, authenticates, decompresses and verifies one chunk.
    pub fn read_chunk(&self, index: &Index, id: &Id) -> Result<Vec<u8>> {
        let loc = index
            .chunks
            .get(id)
            .ok_or_else(|| Error::integrity(format!("chunk {}", id.to_hex()), "missing from the index"))?;
        let blob =
            self.backend.read_part(FileType::Pack, &loc.pack.to_hex(), u64::from(loc.offset), u64::from(loc.len))?;
        self.open_chunk(id, &blob, loc.ulen)
    }

    /// Reads the sealed blobs of `ids` for a reader that needs them in this order (a restore),
    /// through [`Backend::read_parts`]: blobs that follow each other in one pack become one read of
    /// up to [`FETCH_MAX_RUN`] bytes, so a restore that needs most of a pack reads it in one go.
    /// Nothing is read that is not needed: over ssh every byte read costs ssh's cipher and copies
    /// on both hosts, while one more read costs a 40-byte request in a pipeline that hides the
    /// round trip (reading through gaps of up to 256 KiB, and reading duplicated chunks again,
    /// had made a restore of the realistic bench corpus move 848 MB for 527 MB of blobs; the
    /// restore reads a repeated chunk once, see [`plan_reuse`]).
    /// `each(n, blob)` receives blob `n` (open it with [`Repository::open_fetched`]), in order;
    /// fetching stops when it returns `false`.
    pub fn fetch_sealed(&self, index: &Index, ids: &[Id], each: &mut dyn FnMut(usize, Result<bytes::Bytes>) -> bool) {
        // One read run: pack, start, end, and its blobs (n, offset, len).
        struct Run {
            pack: Id,
            start: u64,
            end: u64,
            blobs: Vec<(usize, u64, u64)>,
        }
        // Runs in order; `Err(n)`: chunk n is not in the index.
        let mut runs: Vec<std::result::Result<Run, usize>> = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let Some(loc) = index.chunks.get(id) else {
                runs.push(Err(n));
                continue;
            };
            let (off, len) = (u64::from(loc.offset), u64::from(loc.len));
            if let Some(Ok(r)) = runs.last_mut() {
                if r.pack == loc.pack && off == r.end && off + len - r.start <= FETCH_MAX_RUN {
                    r.end = off + len;
                    r.blobs.push((n, off, len));
                    continue;
                }
            }
            runs.push(Ok(Run { pack: loc.pack, start: off, end: off + len, blobs: vec![(n, off, len)] }));
        }
        let missing = |n: usize| Error::integrity(format!("chunk {}", ids[n].to_hex()), "missing from the index");
        let parts: Vec<(String, u64, u64)> =
            runs.iter().filter_map(|r| r.as_ref().ok()).map(|r| (r.pack.to_hex(), r.start, r.end - r.start)).collect();
        let mut g = 0; // next run to hand on
        let mut go = true;
        self.backend.read_parts(FileType::Pack, &parts, &mut |_, data| {
            while let Some(Err(n)) = runs.get(g) {
                g += 1;
                if !each(*n, Err(missing(*n))) {
                    go = false;
                    return false;
                }
            }
            let Some(Ok(r)) = runs.get(g) else { return false };
            g += 1;
            match data {
                Ok(buf) => {
                    // each chunk is a view of the run's buffer, not a copy
                    let buf = bytes::Bytes::from(buf);
                    for &(n, off, len) in &r.blobs {
                        let at = (off - r.start) as usize;
                        if !each(n, Ok(buf.slice(at..at + len as usize))) {
                            go = false;
                            return false;
                        }
                    }
                }
                Err(e) => {
                    // the first chunk carries the cause, the others of the run a pointer to it
                    let mut e = Some(e);
                    for &(n, _, _) in &r.blobs {
                        let err = e.take().unwrap_or_else(|| {
                            Error::integrity(
                                format!("chunk {}", ids[n].to_hex()),
                                "its pack could not be read (see above)",
                            )
                        });
                        if !each(n, Err(err)) {
                            go = false;
                            return false;
                        }
                    }
                }
            }
            true
        });
        // chunks missing from the index after the last read run
        while go {
            match runs.get(g) {
                Some(Err(n)) => go = each(*n, Err(missing(*n))),
                _ => break,
            }
            g += 1;
        }
    }

    /// Opens a blob that [`Repository::fetch_sealed`] delivered for chunk `id`.
    pub fn open_fetched(&self, index: &Index, id: &Id, blob: &[u8]) -> Result<Vec<u8>> {
        let loc = index
            .chunks
            .get(id)
            .ok_or_else(|| Error::integrity(format!("chunk {}", id.to_hex()), "missing from the index"))?;
        self.open_chunk(id, blob, loc.ulen)
    }

    /// Authenticates, decompresses and verifies a sealed chunk.
    pub fn open_chunk(&self, id: &Id, blob: &[u8], ulen: u32) -> Result<Vec<u8>> {
        let what = format!("chunk {}", id.to_hex());
        let pt = self.crypto.open(&what, &id.0, blob)?;
        let data = decompress(&pt, ulen as usize)?;
        if self.crypto.key().chunk_id(&data) != *id {
            return Err(Error::integrity(what, "content does not match its id"));
        }
        Ok(data)
    }
}

fn archive_aad(id: &Id) -> Vec<u8> {
    let mut v = b"archive".to_vec();
    v.extend_from_slice(&id.0);
    v
}

/// Writes a key file 0600 in a 0700 directory (borg's modes; issue 14: they were 0644/0755),
/// through a fresh temporary file so a wider old file's mode is not inherited.
fn write_keyfile(p: &std::path::Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(d) = p.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d).map_err(|e| Error::io(d, e))?;
    }
    let tmp = p.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            f.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, p))
        .map_err(|e| Error::io(p, e))
}

/// Builds pack files from sealed blobs.
#[derive(Debug)]
pub struct PackBuilder {
    buf: Vec<u8>,
    blobs: Vec<BlobEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    /// An empty pack.
    pub fn new() -> Self {
        PackBuilder { buf: Vec::new(), blobs: Vec::new() }
    }
    /// An empty pack with room for `n` bytes (avoids doubling reallocations of big packs).
    pub fn with_capacity(n: usize) -> Self {
        PackBuilder { buf: Vec::with_capacity(n), blobs: Vec::new() }
    }
    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Whether no blob was added.
    pub fn is_empty(&self) -> bool {
        self.blobs.is_empty()
    }
    /// Appends a sealed blob.
    pub fn add(&mut self, id: Id, sealed: &[u8], ulen: u32) {
        self.blobs.push(BlobEntry { id, offset: self.buf.len() as u32, len: sealed.len() as u32, ulen });
        self.buf.extend_from_slice(sealed);
    }
    /// Seals the header, writes the pack, returns its id and blobs.
    pub fn finish(self, repo: &Repository) -> Result<(Id, Vec<BlobEntry>)> {
        let mut buf = self.buf;
        let header = repo.crypto.seal(b"pack header", &crate::encode::postcard("pack header", &self.blobs)?);
        buf.extend_from_slice(&header);
        buf.extend_from_slice(&(header.len() as u32).to_le_bytes());
        let id = Id::hash(&buf);
        repo.backend.write(FileType::Pack, &id.to_hex(), &buf)?;
        Ok((id, self.blobs))
    }
}

#[derive(Serialize, Deserialize)]
struct LockInfo {
    host: String,
    pid: i32,
    time: String,
}

impl LockInfo {
    fn holder(&self) -> String {
        format!("{}:{} since {}", self.host, self.pid, self.time)
    }
    /// Held by this process (a command nesting a shared lock in its exclusive one).
    fn is_ours(&self) -> bool {
        self.host == hostname() && self.pid == std::process::id() as i32
    }
    /// Same host, process gone.
    fn is_stale(&self) -> bool {
        self.host == hostname() && !pid_alive(self.pid)
    }
}

/// A repository lock, exclusive (writers) or shared (readers); released on drop.
///
/// The exclusive lock is the file `lock`; each reader holds its own file `locks/shared-…`.
/// A writer first takes `lock`, then looks for live readers and backs off if there are any; a
/// reader first creates its file, then looks at `lock` and backs off if a live writer holds it.
/// Either way, one of two racing processes sees the other's file, so a writer and a reader never
/// both proceed. Locks of dead processes on this host are removed; others need `break-lock`.
#[derive(Debug)]
pub struct RepoLock {
    backend: Arc<dyn Backend>,
    name: String,
    token: String,
}

/// This machine's host name.
pub fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

fn pid_alive(pid: i32) -> bool {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::ESRCH) => false,
        Err(_) => true,
    }
}

const EXCLUSIVE: &str = "lock";

enum Attempt {
    Got(RepoLock),
    /// Held by someone else (description).
    Busy(String),
}

impl RepoLock {
    fn acquire(backend: Arc<dyn Backend>, exclusive: bool, wait: std::time::Duration) -> Result<RepoLock> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let attempt = if exclusive { Self::try_exclusive(&backend)? } else { Self::try_shared(&backend)? };
            match attempt {
                Attempt::Got(l) => return Ok(l),
                Attempt::Busy(holder) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return Err(Error::Locked { holder });
                    }
                    // Polling another process's lock file: there is nothing to wait on.
                    std::thread::sleep((deadline - now).min(std::time::Duration::from_millis(50)));
                }
            }
        }
    }

    fn info() -> Result<(LockInfo, String)> {
        let info = LockInfo { host: hostname(), pid: std::process::id() as i32, time: chrono::Utc::now().to_rfc3339() };
        let token = crate::encode::json_string("lock", &info)?;
        Ok((info, token))
    }

    /// Reads a lock file: `Ok(None)` if it is gone or was stale (and is now removed).
    fn live(backend: &Arc<dyn Backend>, name: &str) -> Result<Option<LockInfo>> {
        let cur = match backend.read(FileType::Lock, name) {
            Ok(c) => c,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<LockInfo>(&cur) {
            Ok(other) if other.is_stale() => {
                tracing::warn!(pid = other.pid, lock = name, "removing stale lock of a dead process");
                backend.remove(FileType::Lock, name)?;
                Ok(None)
            }
            Ok(other) => Ok(Some(other)),
            // half-written by a process that died: a lock of unknown owner
            Err(_) => Ok(Some(LockInfo { host: "?".into(), pid: 0, time: "an unreadable lock file".into() })),
        }
    }

    fn readers(backend: &Arc<dyn Backend>) -> Result<Vec<String>> {
        Ok(backend.list(FileType::Lock)?.into_iter().filter(|n| n.starts_with("shared-")).collect())
    }

    fn try_exclusive(backend: &Arc<dyn Backend>) -> Result<Attempt> {
        let (_, token) = Self::info()?;
        if !backend.create_new(FileType::Lock, EXCLUSIVE, token.as_bytes())? {
            return Ok(match Self::live(backend, EXCLUSIVE)? {
                None => Attempt::Busy("a racing process".into()), // stale one removed: retry
                Some(other) => Attempt::Busy(other.holder()),
            });
        }
        let me = RepoLock { backend: backend.clone(), name: EXCLUSIVE.into(), token };
        for r in Self::readers(backend)? {
            if let Some(other) = Self::live(backend, &r)? {
                if !other.is_ours() {
                    drop(me); // back off: the reader was first
                    return Ok(Attempt::Busy(format!("a reader ({})", other.holder())));
                }
            }
        }
        Ok(Attempt::Got(me))
    }

    fn try_shared(backend: &Arc<dyn Backend>) -> Result<Attempt> {
        let writer = |b: &Arc<dyn Backend>| -> Result<Option<String>> {
            Ok(Self::live(b, EXCLUSIVE)?.filter(|w| !w.is_ours()).map(|w| w.holder()))
        };
        if let Some(h) = writer(backend)? {
            return Ok(Attempt::Busy(h));
        }
        let (info, token) = Self::info()?;
        let name = format!("shared-{}-{}-{:016x}", info.host, info.pid, rand::random::<u64>());
        match backend.create_new(FileType::Lock, &name, token.as_bytes()) {
            Ok(true) => {}
            Ok(false) => return Ok(Attempt::Busy("a racing process".into())),
            // A repository on read-only media can still be read (borg: --bypass-lock); nobody
            // can prune it under us either.
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                tracing::warn!("repository is read-only: reading without a lock ({source})");
                return Ok(Attempt::Got(RepoLock { backend: backend.clone(), name: String::new(), token }));
            }
            Err(e) => return Err(e),
        }
        let me = RepoLock { backend: backend.clone(), name, token };
        if let Some(h) = writer(backend)? {
            drop(me); // back off: the writer was first
            return Ok(Attempt::Busy(h));
        }
        Ok(Attempt::Got(me))
    }

    /// Removes every lock, exclusive and shared (`break-lock`).
    pub fn break_lock(backend: &dyn Backend) -> Result<()> {
        for n in backend.list(FileType::Lock)? {
            backend.remove(FileType::Lock, &n)?;
        }
        backend.remove(FileType::Lock, EXCLUSIVE)
    }
}

impl Drop for RepoLock {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return; // no lock was taken (read-only repository)
        }
        // Only remove the lock if it is still ours (break-lock may have handed it on).
        if let Ok(cur) = self.backend.read(FileType::Lock, &self.name) {
            if cur == self.token.as_bytes() {
                let _ = self.backend.remove(FileType::Lock, &self.name);
            }
        }
    }
}
