//! # backupfs — a dedupstore repository or archive as a read-only FUSE file system
//!
//! The engine behind `rempart-backup mount`: the repository as one directory per archive, or
//! one archive at the root, with every file's owner, mode, times, links and extended attributes
//! as stored, and file content read on demand.
//!
//! ```text
//!  kernel (FUSE, /dev/fuse) ── n session threads (fuser) ──► BackupFs
//!        lookup / getattr / readdir / readlink / *xattr ──► Tree (inodes; RwLock)
//!                                    │ first look into an archive's directory:
//!                                    └──► load its item stream (once) ──► more inodes
//!        read(ino, offset, size) ──► Content::pieces ──► only the chunks covering it
//!                                         │                 │ holes: zeros, nothing fetched
//!                                         ▼                 ▼
//!                            ChunkCache (decrypted, LRU, byte budget, one fetch per chunk)
//!                                         │ miss             ▲ next chunks of a sequential read
//!                                         ▼                  │ (prefetch threads)
//!                         Repository::read_chunk (local pack file or ssh) → open + verify
//! ```
//!
//! ## Why it is built this way
//!
//! * **Chunks on demand.** A file's extents carry their plaintext lengths, so the offset of every
//!   extent is known without reading anything; a read at offset X binary-searches them and
//!   fetches only the chunks covering `[X, X + size)`. Opening a 1 GiB file and reading 4 KiB in
//!   its middle costs one chunk.
//! * **A budget, not a growing cache.** Decrypted chunks are kept in an LRU bounded by bytes
//!   ([`MountOptions::cache_bytes`]): the kernel asks for 128 KiB–1 MiB at a time and a chunk is
//!   ~1 MiB or more, so without a cache every chunk would be fetched and decrypted many times.
//!   Readers that want a chunk already being fetched wait for that fetch instead of starting
//!   another.
//! * **Parallel reads.** fuser runs `n` session threads, each handling a request to the end, so
//!   reads of different files (or of different places of one file, as `tar` and the kernel's
//!   read-ahead issue them) proceed at once; a sequential read also starts fetching the next
//!   chunks on prefetch threads, so decryption and the ssh round trip overlap the reader.
//! * **Archives load lazily.** In the repository view an archive's items (the one costly
//!   metadata read) are loaded the first time its directory is looked into; `ls` of the root
//!   reads nothing but the manifest.
//! * **Read-only, immutable.** Archives never change, so attributes and entries are given long
//!   TTLs and the page cache is kept across opens; the mount is `ro`, and the repository's
//!   shared lock is held while mounted, so `prune`/`compact` cannot remove packs being read.
//! * **Owners.** As borg: the local id of the stored user/group name when it exists, else the
//!   stored number (`numeric_ids`: always the number). Hard links are one inode with its link
//!   count; directories count their subdirectories.
#![warn(missing_docs)]

pub mod cache;
pub mod tree;

use cache::ChunkCache;
use dedupstore::archive::{Extent, ItemKind};
use dedupstore::repo::{Index, Repository};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, KernelConfig, LockOwner, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tree::{Body, Content, Owners, Tree, ROOT};

/// Default budget of decrypted chunks kept in memory.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

/// Errors of [`mount`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository could not be read.
    #[error(transparent)]
    Repo(#[from] dedupstore::Error),
    /// Mounting or serving failed.
    #[error("{what}: {source}")]
    Fuse {
        /// What was done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// What the mount shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum View {
    /// One directory per archive.
    Repository,
    /// This archive at the root.
    Archive(String),
}

/// Options of [`mount`].
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Most bytes of decrypted chunks kept ([`DEFAULT_CACHE_BYTES`]).
    pub cache_bytes: u64,
    /// FUSE session threads (parallel requests); 0 = 4.
    pub threads: usize,
    /// Let other users in (`allow_other`; the kernel then checks the modes shown).
    pub allow_other: bool,
    /// Let root in (`allow_root`).
    pub allow_root: bool,
    /// Show the stored uid/gid, not the local ids of the stored names.
    pub numeric_ids: bool,
    /// Source name shown in the mount table.
    pub fsname: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            cache_bytes: DEFAULT_CACHE_BYTES,
            threads: 0,
            allow_other: false,
            allow_root: false,
            numeric_ids: false,
            fsname: "rempart-backup".into(),
        }
    }
}

/// Attributes and entries never change (archives are immutable).
const TTL: Duration = Duration::from_secs(3600);
/// How many chunks after the one read a sequential read fetches ahead.
const PREFETCH_CHUNKS: usize = 4;

/// The file system. Built by [`mount`]; public for embedding (with `fuser::Session`).
pub struct BackupFs {
    tree: RwLock<Tree>,
    repo: Arc<Repository>,
    index: Arc<Index>,
    cache: Arc<ChunkCache>,
    owners: Mutex<Owners>,
    /// serialises the loading of archives (two threads never load the same one)
    loading: Mutex<()>,
    prefetch: crossbeam_channel::Sender<dedupstore::Id>,
}

impl std::fmt::Debug for BackupFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupFs").field("cache", &self.cache).finish_non_exhaustive()
    }
}

impl BackupFs {
    /// Reads the manifest (and, for one archive, its items) and prepares the inode table.
    /// The caller holds the repository's shared lock while the file system is in use.
    pub fn new(repo: Arc<Repository>, index: Arc<Index>, view: &View, opts: &MountOptions) -> Result<BackupFs, Error> {
        let manifest = repo.manifest()?;
        let mut owners = Owners::new(opts.numeric_ids);
        let mut tree;
        match view {
            View::Repository => {
                tree = Tree::new(tree::time_of(manifest.timestamp));
                for a in &manifest.archives {
                    // a '/' cannot be in a file name
                    tree.add_archive_dir(ROOT, &a.name.replace('/', "_"), tree::time_of(a.time));
                }
            }
            View::Archive(name) => {
                let e = manifest.get(name).ok_or_else(|| dedupstore::Error::NoSuchArchive(name.clone()))?;
                tree = Tree::new(tree::time_of(e.time));
                let items = dedupstore::extract::archive_items(&repo, &index, name)?;
                tree.load_items(ROOT, items, &mut owners);
            }
        }
        let (r, i) = (repo.clone(), index.clone());
        let fetch: cache::Fetch = Box::new(move |id| r.read_chunk(&i, id).map_err(|e| e.to_string()));
        let cache = Arc::new(ChunkCache::new(opts.cache_bytes, fetch));
        let (tx, rx) = crossbeam_channel::bounded::<dedupstore::Id>(64);
        for n in 0..2 {
            let (rx, cache) = (rx.clone(), cache.clone());
            std::thread::Builder::new()
                .name(format!("prefetch-{n}"))
                .spawn(move || {
                    for id in rx {
                        if !cache.has(&id) {
                            let _ = cache.get(&id);
                        }
                    }
                })
                .map_err(|e| Error::Fuse { what: "starting the prefetch threads".into(), source: e })?;
        }
        Ok(BackupFs {
            tree: RwLock::new(tree),
            repo,
            index,
            cache,
            owners: Mutex::new(owners),
            loading: Mutex::new(()),
            prefetch: tx,
        })
    }

    fn tree(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the archive of directory `ino` if it is not loaded yet.
    fn ensure_loaded(&self, ino: u64) -> Result<(), Errno> {
        if self.tree().pending_archive(ino).is_none() {
            return Ok(());
        }
        let _one = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        let Some(name) = self.tree().pending_archive(ino).map(str::to_string) else { return Ok(()) };
        let items = dedupstore::extract::archive_items(&self.repo, &self.index, &name).map_err(|e| {
            tracing::error!(archive = %name, "cannot load the archive: {e}");
            Errno::EIO
        })?;
        let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
        self.tree.write().unwrap_or_else(|p| p.into_inner()).load_items(ino, items, &mut owners);
        tracing::debug!(archive = %name, "loaded");
        Ok(())
    }

    fn attr(tree: &Tree, ino: u64) -> Option<FileAttr> {
        let n = tree.get(ino)?;
        Some(FileAttr {
            ino: INodeNo(ino),
            size: n.size(),
            blocks: n.stored.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.mtime,
            kind: kind_of(&n.body),
            perm: (n.mode & 0o7777) as u16,
            // an archive not loaded yet: 1, "subdirectories not counted" (find's convention)
            nlink: if tree.pending_archive(ino).is_some() { 1 } else { n.nlink },
            uid: n.uid,
            gid: n.gid,
            rdev: u32::try_from(n.rdev).unwrap_or(0),
            blksize: 4096,
            flags: 0,
        })
    }

    /// Bytes `[offset, offset + size)` of a file (short at its end).
    fn read_content(&self, content: &Content, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let pieces = content.pieces(offset, u64::from(size));
        let mut out = Vec::with_capacity(pieces.iter().map(|p| p.2 as usize).sum());
        let mut last = None;
        for (i, at, len) in pieces {
            match &content.extents[i] {
                Extent::Hole(_) => out.resize(out.len() + len as usize, 0),
                Extent::Data { id, len: clen } => {
                    let data = self.cache.get(id).map_err(|e| {
                        tracing::error!(chunk = %id.to_hex(), "read failed: {e}");
                        Errno::EIO
                    })?;
                    if data.len() != *clen as usize {
                        tracing::error!(chunk = %id.to_hex(), "chunk length differs from the item's");
                        return Err(Errno::EIO);
                    }
                    out.extend_from_slice(&data[at as usize..(at + len) as usize]);
                }
            }
            last = Some(i);
        }
        if let Some(i) = last {
            content
                .extents
                .iter()
                .skip(i + 1)
                .filter_map(|e| match e {
                    Extent::Data { id, .. } => Some(*id),
                    Extent::Hole(_) => None,
                })
                .take(PREFETCH_CHUNKS)
                .filter(|id| !self.cache.has(id))
                .for_each(|id| {
                    let _ = self.prefetch.try_send(id);
                });
        }
        Ok(out)
    }
}

fn kind_of(b: &Body) -> FileType {
    match b {
        Body::Dir { .. } => FileType::Directory,
        Body::File(_) => FileType::RegularFile,
        Body::Symlink(_) => FileType::Symlink,
        Body::Special(ItemKind::Fifo) => FileType::NamedPipe,
        Body::Special(ItemKind::CharDev) => FileType::CharDevice,
        Body::Special(ItemKind::BlockDev) => FileType::BlockDevice,
        Body::Special(ItemKind::Socket) => FileType::Socket,
        Body::Special(_) => FileType::RegularFile,
    }
}

impl fuser::Filesystem for BackupFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // larger sequential reads: fewer requests per chunk
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if let Err(e) = self.ensure_loaded(parent.0) {
            return reply.error(e);
        }
        let tree = self.tree();
        let ino = match tree.get(parent.0).map(|n| &n.body) {
            Some(Body::Dir { entries, .. }) => entries.get(name.as_bytes()).copied(),
            Some(_) => return reply.error(Errno::ENOTDIR),
            None => None,
        };
        match ino.and_then(|i| Self::attr(&tree, i)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match Self::attr(&self.tree(), ino.0) {
            // an archive's directory may load later and change its link count
            Some(a) if a.nlink == 1 && a.kind == FileType::Directory => reply.attr(&Duration::ZERO, &a),
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.tree().get(ino.0).map(|n| &n.body) {
            Some(Body::Symlink(t)) => reply.data(t),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.tree().get(ino.0).map(|n| &n.body) {
            Some(Body::File(_)) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Some(Body::Dir { .. }) => reply.error(Errno::EISDIR),
            Some(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let content = match self.tree().get(ino.0).map(|n| &n.body) {
            Some(Body::File(c)) => c.clone(),
            Some(Body::Dir { .. }) => return reply.error(Errno::EISDIR),
            Some(_) => return reply.error(Errno::EINVAL),
            None => return reply.error(Errno::ENOENT),
        };
        match self.read_content(&content, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if let Err(e) = self.ensure_loaded(ino.0) {
            return reply.error(e);
        }
        let tree = self.tree();
        let Some(node) = tree.get(ino.0) else { return reply.error(Errno::ENOENT) };
        let Body::Dir { entries, .. } = &node.body else { return reply.error(Errno::ENOTDIR) };
        let dots = [(ino.0, FileType::Directory, &b"."[..]), (node.parent, FileType::Directory, &b".."[..])];
        let all = dots.into_iter().chain(
            entries
                .iter()
                .map(|(name, &i)| (i, tree.get(i).map_or(FileType::RegularFile, |n| kind_of(&n.body)), &name[..])),
        );
        for (n, (i, kind, name)) in all.enumerate().skip(usize::try_from(offset).unwrap_or(usize::MAX)) {
            if reply.add(INodeNo(i), n as u64 + 1, kind, OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let tree = self.tree();
        let Some(node) = tree.get(ino.0) else { return reply.error(Errno::ENOENT) };
        match node.xattrs.iter().find(|(n, _)| n == name.as_bytes()) {
            None => reply.error(Errno::NO_XATTR),
            Some((_, v)) if size == 0 => reply.size(v.len() as u32),
            Some((_, v)) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some((_, v)) => reply.data(v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let tree = self.tree();
        let Some(node) = tree.get(ino.0) else { return reply.error(Errno::ENOENT) };
        let mut names = Vec::new();
        for (n, _) in &node.xattrs {
            names.extend_from_slice(n);
            names.push(0);
        }
        if size == 0 {
            reply.size(names.len() as u32);
        } else if names.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&names);
        }
    }
}

/// A mounted file system about to serve: [`Mounted::unmount`] from another thread (a signal)
/// ends [`Mounted::serve`].
pub struct Mounted {
    session: fuser::Session<BackupFs>,
    _lock: dedupstore::repo::RepoLock,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted").finish_non_exhaustive()
    }
}

/// Unmounts a [`Mounted`] from another thread.
pub struct Unmounter(fuser::SessionUnmounter);

impl std::fmt::Debug for Unmounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unmounter").finish_non_exhaustive()
    }
}

impl Unmounter {
    /// Unmounts (the serving loop then returns).
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

impl Mounted {
    /// A handle that unmounts.
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.session.unmount_callable())
    }

    /// Serves requests until the file system is unmounted (`fusermount3 -u`, `umount`, or
    /// [`Unmounter::unmount`]).
    pub fn serve(self) -> Result<(), Error> {
        let Mounted { session, _lock } = self;
        session.run().map_err(|e| Error::Fuse { what: "serving the mount".into(), source: e })
    }
}

/// Takes the repository's shared lock, reads what the view needs and mounts it at
/// `mountpoint` (read-only). The mount is up when this returns; [`Mounted::serve`] then serves it.
pub fn mount(repo: Repository, view: &View, mountpoint: &Path, opts: &MountOptions) -> Result<Mounted, Error> {
    let lock = repo.shared_lock()?;
    let index = Arc::new(repo.load_index()?);
    let fs = BackupFs::new(Arc::new(repo), index, view, opts)?;
    let mut options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::FSName(opts.fsname.clone()),
        fuser::MountOption::Subtype("rempart-backup".into()),
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    options.retain(|o| !matches!(o, fuser::MountOption::FSName(n) if n.is_empty()));
    let mut config = fuser::Config::default();
    config.mount_options = options;
    config.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else if opts.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(if opts.threads == 0 { 4 } else { opts.threads });
    config.clone_fd = true;
    let session = fuser::Session::new(fs, mountpoint, &config)
        .map_err(|e| Error::Fuse { what: format!("mounting at {}", mountpoint.display()), source: e })?;
    Ok(Mounted { session, _lock: lock })
}
