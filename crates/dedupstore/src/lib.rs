//! # dedupstore — deduplicated, encrypted, authenticated backups
//!
//! The library behind `rempart-backup`, a BorgBackup replacement with borg's command set and
//! semantics. Commands are functions taking option structs and returning results; destructive
//! ones are plan + apply ([`commands::prune_repo_plan`] / [`commands::prune_apply`],
//! [`commands::compact_plan`] / [`commands::compact_apply`]).
//!
//! ```text
//!  files ──► walker ──► FastCDC (secret gear table) ──► keyed blake3 id ──► known? ─yes─► reference
//!             │                                                             │no
//!             │ items (path, mode, owner, ns times, xattrs,                 ▼
//!             │ links, devices, holes, chunk ids)                 workers: zstd (auto) + AES-256-GCM
//!             ▼                                                             ▼
//!      item stream ──(chunked and stored like data)──►          packer: packs (data/XX/<blake3>)
//!             ▼                                                   + index files (checkpoints)
//!      archive object (archives/<id>) ──► manifest (atomic replace, written LAST = commit)
//! ```
//!
//! ## Repository layout (local backend)
//!
//! ```text
//! config            JSON: format version, repository id, mode, chunker params, MAC
//! keys/repokey      argon2id-protected master key (repokey, authenticated modes)
//! manifest          sealed: list of archives (name, id, time)
//! archives/<id>     sealed: archive metadata + item-stream chunk ids
//! index/<blake3>    sealed: chunk id -> (pack, offset, length)
//! data/XX/<blake3>  pack: sealed chunks..., sealed header, u32 LE header length
//! lock              JSON: host, pid, time (exclusive writer lock)
//! ```
//!
//! ## Why it is crash safe
//!
//! Every file is written to a temporary name, fsynced, renamed into place and its directory
//! fsynced ([`backend::LocalBackend`]). Nothing is ever modified in place. A `create` writes
//! packs, then index files (every few packs: these are the checkpoints a later `create` reuses),
//! then the archive object, and only then the manifest. A crash before the manifest leaves
//! unreferenced packs and index entries, which `check` reports as harmless and `compact`
//! removes; the manifest still names only complete archives. `delete` rewrites the manifest
//! first, `compact` writes its new packs and a superseding index before it removes anything.
//!
//! ## Remote repositories
//!
//! [`remote`] holds the SSH backend (`ssh://user@host:port/path`, `user@host:path`), its framed,
//! pipelined protocol and the server behind `rempart-backup serve` (`--restrict-to-path`,
//! `--append-only` with manifest history and [`remote::rollback`], `--storage-quota`).
//!
//! ## Memory and parallelism
//!
//! `create` reads, chunks and hashes on the caller's thread; new chunks go through bounded
//! channels to one worker per core (zstd, AES-GCM) and to a packer that writes each pack on a
//! helper thread while the next one fills ([`writer`]). `extract` fetches, authenticates and
//! decompresses chunks on worker threads in archive order within a bounded window
//! ([`extract`]). Memory is bounded by about three packs (8 MiB each) plus the channels, whatever
//! the file sizes, and does not grow with the number of files: the archive's item metadata is
//! cut into chunks and stored while the walk goes on (less than one maximum chunk of it is
//! buffered). What grows is per new chunk (the in-run dedup set, the pack entries for the cache:
//! the same order as the repository's chunk index) and per hard-linked inode.
//!
//! ## Crypto
//!
//! See [`crypto`] for the envelope format and the argument for why AES-GCM nonces never repeat.
//! Every object — chunks, pack headers, index files, archives, the manifest, the config (MAC) —
//! is authenticated, so a tampered repository is detected, never silently used.
//!
//! ## Example
//!
//! ```
//! use dedupstore::{backend::LocalBackend, crypto::Mode, repo::{InitOptions, Repository}};
//! use dedupstore::create::{create, CreateOptions};
//! use std::sync::Arc;
//! let dir = tempfile::tempdir().unwrap();
//! std::fs::write(dir.path().join("hello.txt"), b"hello").unwrap();
//! let backend = Arc::new(LocalBackend::new(dir.path().join("repo")));
//! let repo = Repository::init(backend, &InitOptions::new(Mode::None, None)).unwrap();
//! let opts = CreateOptions::new("first", vec![dir.path().join("hello.txt")]);
//! let res = create(&repo, &opts, &mut |_| {}).unwrap();
//! assert_eq!(res.archive.stats.nfiles, 1);
//! ```
#![warn(missing_docs)]

pub mod archive;
pub mod backend;
pub mod builder;
pub mod cache;
pub mod chunker;
pub mod commands;
pub mod compress;
pub mod create;
pub mod crypto;
pub mod diff;
pub mod drill;
mod encode;
pub mod error;
pub mod extract;
pub mod id;
pub mod pattern;
pub mod prune;
pub mod remote;
pub mod repo;
pub mod stream;
pub mod writer;

pub use error::{Error, Result};
pub use id::Id;
