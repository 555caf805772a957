//! # borgrepo — read BorgBackup 1.2 repositories directly
//!
//! The reader behind `rempart-backup import-borg`: it opens a local borg 1.2 repository
//! without running borg, authenticates and decrypts every object it hands out, and decodes the
//! manifest, archives and items. It never writes to the repository (no lock, no index).
//!
//! ```text
//!  config (INI: id, segments_per_dir, repokey)      key file (keyfile modes: BORG_KEY_FILE,
//!        │                                           BORG_KEYS_DIR, ~/.config/borg/keys)
//!        ▼                                                  │
//!  data/D/N segments ──replay──► index id → (segment, offset)   passphrase ─► PBKDF2 ─► key
//!  BORG_SEG | crc32 size tag [id data]…                  │                        │
//!  PUT / DELETE apply at COMMIT                          ▼                        ▼
//!                                   object bytes ──► type byte ─► MAC check ─► AES-CTR ─►
//!                                   decompress (lz4 | zstd | zlib | lzma | none) ─► id check
//!                                                        │
//!  manifest (id 0…0) ─► archives {name: id} ─► archive {name, time, comment, items: [ids]}
//!                                                        ▼
//!                         item stream (msgpack maps across chunks) ─► BorgItem {path, mode,
//!                         owner, ns times, xattrs, source, hardlink_master, chunks [(id, size)]}
//! ```
//!
//! ## Why it is built this way
//!
//! * **Scan, not `index.N`.** The object index is rebuilt by replaying every segment, which
//!   also checks every entry's crc32 before anything is imported: a damaged segment is
//!   reported up front, so an import that would fail half-way fails before it writes. borg's
//!   hints and index files are caches of the same information and may be stale after a crash;
//!   the replay is what borg itself falls back to. Entries of a transaction without a COMMIT
//!   are ignored, as borg does.
//! * **Every object verified twice**: the envelope's MAC (encrypted modes), then the id
//!   recomputed from the plaintext (all modes; the id is a keyed hash except in mode none).
//! * **Small own msgpack decoder** ([`msgpack`]): borg 1.x stores text and bytes alike as raw
//!   strings and needs bytes back (paths need not be UTF-8); the decoder is panic-free, bounds
//!   its nesting and never trusts a length for an allocation.
//! * **Streaming items**: [`BorgRepository::items`] decodes the item stream as its chunks are
//!   read, so memory does not grow with the number of files.
//!
//! Not handled: borg 1.0's legacy `passphrase` mode, the manifest's TAM (the MAC of the
//! envelope already authenticates it in the encrypted modes), borg 2 repositories, remote
//! (`ssh://`) repositories, ACLs and BSD flags (not part of rempart's items).
//!
//! ## Example
//!
//! ```no_run
//! use borgrepo::{BorgRepository, KeySource};
//! let repo = BorgRepository::open("/srv/borg".as_ref(), &KeySource {
//!     passphrase: Some("secret".into()),
//!     ..KeySource::default()
//! })?;
//! for a in repo.archives()? {
//!     let archive = repo.archive(&a.id)?;
//!     for item in repo.items(&archive) {
//!         let item = item?;
//!         println!("{}", String::from_utf8_lossy(&item.path));
//!     }
//! }
//! # Ok::<(), borgrepo::Error>(())
//! ```
#![warn(missing_docs)]

pub mod compress;
pub mod error;
pub mod import;
pub mod key;
pub mod msgpack;
pub mod repo;

pub use error::{Error, Result};
pub use key::{KeySource, Mode};
pub use repo::{Archive, ArchiveRef, BorgItem, BorgRepository, ObjectId, ScanStats};
