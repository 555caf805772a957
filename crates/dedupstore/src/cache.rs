//! The local files cache (SQLite): keyed hash of the path → (inode, size, mtime, ctime, chunks),
//! so unchanged files are not read again. It is an accelerator only: every entry is checked against the repository
//! index before use, and deleting the cache just means the next `create` reads every file.
//!
//! The same database holds the chunk index (every blob location of every pack, in load order)
//! and each chunk's reference count over all archives. It is tagged with the sorted names of
//! the repository's index files and the sorted ids of its archives; when either differs from
//! the repository (another client wrote, a compact or delete ran, a run crashed), the cache is
//! rebuilt from the repository. `create` adds its packs and references in the files-cache
//! transaction, committed only after the repository committed the manifest.
//!
//! # Fixing borg #5992
//!
//! A file modified twice within one tick of the file system's timestamp clock can keep the same
//! mtime/ctime/size while its content changed. Borg guards against that by not trusting entries
//! whose times are at or above the newest time seen in the run, so the newest files of every run
//! are re-read, every time. Here an entry is marked *racy* only if the file's ctime or mtime was
//! within [`RACY_WINDOW_NS`] of the moment we started reading it (or in the future); only racy
//! entries are re-read. A file written an hour before the backup is trusted on the next run.
//!
//! # No clear paths, owner-only modes
//!
//! The cache is not encrypted, so it holds no path in clear: files are looked up by
//! [`path_key`], a hash of the path keyed with the repository's MAC key (someone who reads the
//! cache cannot even confirm a guessed path). Its directories are created 0700 and its database
//! 0600 (SQLite gives its `-wal`/`-shm` files the database's mode), as borg does; an older cache
//! with a `files` table keyed by clear paths is dropped and the file vacuumed on open (the next
//! `create` reads every file once).

use crate::archive::{Extent, Manifest};
use crate::crypto::MasterKey;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::repo::{BlobEntry, Index, Repository};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The files cache's key for a source path: blake3 keyed with the repository's MAC key over a
/// domain tag and the path (the cache never stores the path itself).
pub fn path_key(key: &MasterKey, path: &[u8]) -> [u8; 32] {
    let mut m = Vec::with_capacity(path.len() + 24);
    m.extend_from_slice(b"rempart files cache v2\0");
    m.extend_from_slice(path);
    key.mac(&m)
}

/// Creates `d` (and missing parents) 0700 and narrows it to 0700 if it existed.
fn private_dir(d: &Path) -> Result<()> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(d).map_err(|e| Error::io(d, e))?;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).map_err(|e| Error::io(d, e))
}

/// Margin covering coarse file-system timestamps (FAT: 2 s; ext4/xfs/tmpfs: a jiffy).
pub const RACY_WINDOW_NS: i64 = 2_000_000_000;

/// One cached file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// Inode number.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// mtime, ns.
    pub mtime: i64,
    /// ctime, ns.
    pub ctime: i64,
    /// Content.
    pub chunks: Vec<Extent>,
    /// Whether the file changed too close to its read to be trusted.
    pub racy: bool,
}

/// The files cache of one repository.
#[derive(Debug)]
pub struct FilesCache {
    conn: rusqlite::Connection,
    path: PathBuf,
    refs_failed: std::cell::Cell<bool>,
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

impl FilesCache {
    /// Opens (creating if needed) `dir/<repo id>/cache.sqlite`: directories 0700, files 0600
    /// (also narrowed if an older version created them wider).
    pub fn open(dir: &Path, repo_id: &str) -> Result<FilesCache> {
        private_dir(dir)?;
        let d = dir.join(repo_id);
        private_dir(&d)?;
        let path = d.join("cache.sqlite");
        for p in [path.clone(), d.join("cache.sqlite-wal"), d.join("cache.sqlite-shm")] {
            if p == path {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(&p)
                    .map_err(|e| Error::io(&p, e))?;
            }
            match std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&p, e)),
                _ => {}
            }
        }
        let conn = rusqlite::Connection::open(&path).map_err(|e| db_err(&path, e))?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA secure_delete=ON;")
            .map_err(|e| db_err(&path, e))?;
        // Before v2 the files table was keyed by the clear path: drop it and rewrite the file so
        // no freed page keeps a path (issue 14).
        let old: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'files'", [], |r| r.get(0))
            .map_err(|e| db_err(&path, e))?;
        if old > 0 {
            tracing::info!(path = %path.display(), "files cache: dropping the old table keyed by clear paths");
            conn.execute_batch("DROP TABLE files; VACUUM; PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(|e| db_err(&path, e))?;
        }
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS files_v2 (
                key BLOB PRIMARY KEY, ino INTEGER, size INTEGER, mtime INTEGER, ctime INTEGER,
                chunks BLOB, racy INTEGER);
             CREATE TABLE IF NOT EXISTS chunk_index (
                seq INTEGER PRIMARY KEY, pack BLOB, id BLOB, offset INTEGER, len INTEGER,
                ulen INTEGER);
             CREATE TABLE IF NOT EXISTS refcounts (id BLOB PRIMARY KEY, n INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB);
             BEGIN;",
        )
        .map_err(|e| db_err(&path, e))?;
        Ok(FilesCache { conn, path, refs_failed: std::cell::Cell::new(false) })
    }

    /// The cached entry of a file; `key` is its [`path_key`] (never a clear path).
    pub fn get(&self, key: &[u8]) -> Result<Option<FileEntry>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT ino, size, mtime, ctime, chunks, racy FROM files_v2 WHERE key = ?1")
            .map_err(|e| db_err(&self.path, e))?;
        let mut rows = st.query([key]).map_err(|e| db_err(&self.path, e))?;
        let Some(r) = rows.next().map_err(|e| db_err(&self.path, e))? else {
            return Ok(None);
        };
        let get = |r: &rusqlite::Row<'_>| -> rusqlite::Result<FileEntry> {
            let blob: Vec<u8> = r.get(4)?;
            Ok(FileEntry {
                ino: r.get::<_, i64>(0)? as u64,
                size: r.get::<_, i64>(1)? as u64,
                mtime: r.get(2)?,
                ctime: r.get(3)?,
                chunks: postcard::from_bytes(&blob).unwrap_or_default(),
                racy: r.get::<_, i64>(5)? != 0,
            })
        };
        Ok(Some(get(r).map_err(|e| db_err(&self.path, e))?))
    }

    /// Records a file under its [`path_key`] (committed by [`FilesCache::commit`]).
    pub fn put(&self, key: &[u8], e: &FileEntry) -> Result<()> {
        let chunks = crate::encode::postcard("files cache entry", &e.chunks)?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO files_v2 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
            .and_then(|mut st| {
                st.execute(rusqlite::params![key, e.ino as i64, e.size as i64, e.mtime, e.ctime, chunks, e.racy as i64])
            })
            .map_err(|e| db_err(&self.path, e))?;
        Ok(())
    }

    /// Commits what was recorded.
    pub fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT; BEGIN;").map_err(|e| db_err(&self.path, e))
    }

    /// The repository's chunk index, from the cache if the cache was built from exactly the
    /// index files the repository lists now and the archives its manifest names, else rebuilt
    /// from the repository with the chunk reference counts (and stored, committed at once: it
    /// only mirrors what the repository has committed). Returns whether the cache was used.
    pub fn load_index(&self, repo: &Repository) -> Result<(Index, bool)> {
        let r = |e| db_err(&self.path, e);
        let gen = generation(repo.backend().list(crate::backend::FileType::Index)?);
        let mgen = manifest_generation(&repo.manifest()?);
        if self.meta("index_generation")?.as_deref() == Some(gen.as_slice())
            && self.meta("manifest_generation")?.as_deref() == Some(mgen.as_slice())
        {
            if let Some(files) = self.meta("index_files")? {
                let mut idx = Index { files: ids(&files), ..Index::default() };
                let mut st =
                    self.conn.prepare("SELECT pack, id, offset, len, ulen FROM chunk_index ORDER BY seq").map_err(r)?;
                let mut rows = st.query([]).map_err(r)?;
                let mut cur: Option<(Id, Vec<BlobEntry>)> = None;
                while let Some(row) = rows.next().map_err(r)? {
                    let pack: Vec<u8> = row.get(0).map_err(r)?;
                    let id: Vec<u8> = row.get(1).map_err(r)?;
                    let (Ok(pack), Ok(id)) = (<[u8; 32]>::try_from(pack), <[u8; 32]>::try_from(id)) else {
                        return self.rebuild(repo, gen);
                    };
                    let b = BlobEntry {
                        id: Id(id),
                        offset: row.get(2).map_err(r)?,
                        len: row.get(3).map_err(r)?,
                        ulen: row.get(4).map_err(r)?,
                    };
                    match &mut cur {
                        Some((p, v)) if p.0 == pack => v.push(b),
                        _ => {
                            if let Some((p, v)) = cur.take() {
                                idx.add_pack(p, v);
                            }
                            cur = Some((Id(pack), vec![b]));
                        }
                    }
                }
                if let Some((p, v)) = cur {
                    idx.add_pack(p, v);
                }
                return Ok((idx, true));
            }
        }
        self.rebuild(repo, gen)
    }

    fn rebuild(&self, repo: &Repository, gen: Vec<u8>) -> Result<(Index, bool)> {
        let idx = repo.load_index()?;
        let r = |e| db_err(&self.path, e);
        self.conn.execute("DELETE FROM chunk_index", []).map_err(r)?;
        // Packs no index file names (indexed from their headers) are not cached: a later run
        // that finds the same index files would take them for indexed, while compact may remove
        // them as orphans meanwhile (issue 14).
        let mut packs: Vec<_> = idx.packs.iter().filter(|(p, _)| !idx.unindexed.contains(p)).collect();
        packs.sort_by_key(|(p, _)| **p);
        for (p, blobs) in packs {
            self.add_blobs(p, blobs)?;
        }
        self.set_meta("index_files", &idx.files.iter().flat_map(|i| i.0).collect::<Vec<u8>>())?;
        self.set_meta("index_generation", &gen)?;
        // reference counts: every chunk of every archive (item stream and file contents). An
        // archive that cannot be read (damaged repository) leaves the counts unmarked, so they
        // are never trusted, but the index is still served: the cache must not break `create`.
        self.conn.execute("DELETE FROM refcounts", []).map_err(r)?;
        self.conn.execute("DELETE FROM meta WHERE key = 'manifest_generation'", []).map_err(r)?;
        let count = || -> Result<Manifest> {
            let m = repo.manifest()?;
            for a in &m.archives {
                for id in &repo.archive(&a.id)?.items {
                    self.add_ref(id);
                }
                for item in crate::extract::archive_items(repo, &idx, &a.name)? {
                    for c in &item.chunks {
                        if let Extent::Data { id, .. } = c {
                            self.add_ref(id);
                        }
                    }
                }
            }
            Ok(m)
        };
        match count() {
            Ok(m) if !self.refs_failed.get() => self.set_meta("manifest_generation", &manifest_generation(&m))?,
            Ok(_) => {}
            Err(e) => tracing::warn!("chunk reference counts not cached: {e}"),
        }
        self.commit()?;
        Ok((idx, false))
    }

    /// Counts one more reference to a chunk (committed by [`FilesCache::commit`]). A failure is
    /// remembered: the counts are then not marked valid for the new manifest.
    pub fn add_ref(&self, id: &Id) {
        let res = self
            .conn
            .prepare_cached("INSERT INTO refcounts VALUES (?1, 1) ON CONFLICT(id) DO UPDATE SET n = n + 1")
            .and_then(|mut st| st.execute([&id.0[..]]));
        if res.is_err() {
            self.refs_failed.set(true);
        }
    }

    /// Reference counts of all chunks.
    pub fn refcounts(&self) -> Result<std::collections::HashMap<Id, u64>> {
        let r = |e| db_err(&self.path, e);
        let mut st = self.conn.prepare("SELECT id, n FROM refcounts").map_err(r)?;
        let mut rows = st.query([]).map_err(r)?;
        let mut out = std::collections::HashMap::new();
        while let Some(row) = rows.next().map_err(r)? {
            let id: Vec<u8> = row.get(0).map_err(r)?;
            let n: i64 = row.get(1).map_err(r)?;
            if let Ok(id) = <[u8; 32]>::try_from(id) {
                out.insert(Id(id), n as u64);
            }
        }
        Ok(out)
    }

    /// After a `create` committed its archive: the manifest went from `before` to `after`,
    /// adding one archive whose item stream is `items` (its file chunks were counted with
    /// [`FilesCache::add_ref`]). If the cached counts matched `before` and nothing else changed,
    /// they now match `after`; otherwise they are marked stale (rebuilt on the next open).
    pub fn add_archive(&self, before: &Manifest, after: &Manifest, items: &[Id]) -> Result<()> {
        for id in items {
            self.add_ref(id);
        }
        let only_added = after.archives.len() == before.archives.len() + 1
            && before.archives.iter().all(|a| after.archives.iter().any(|b| b.id == a.id));
        let was_valid = self.meta("manifest_generation")?.as_deref() == Some(manifest_generation(before).as_slice());
        if only_added && was_valid && !self.refs_failed.get() {
            self.set_meta("manifest_generation", &manifest_generation(after))
        } else {
            self.conn
                .execute("DELETE FROM meta WHERE key = 'manifest_generation'", [])
                .map(|_| ())
                .map_err(|e| db_err(&self.path, e))
        }
    }

    fn add_blobs(&self, pack: &Id, blobs: &[BlobEntry]) -> Result<()> {
        let mut st = self
            .conn
            .prepare_cached("INSERT INTO chunk_index (pack, id, offset, len, ulen) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(|e| db_err(&self.path, e))?;
        for b in blobs {
            st.execute(rusqlite::params![&pack.0[..], &b.id.0[..], b.offset, b.len, b.ulen])
                .map_err(|e| db_err(&self.path, e))?;
        }
        Ok(())
    }

    /// Records packs and index files a `create` wrote (committed by [`FilesCache::commit`],
    /// which the caller runs after the repository committed them).
    pub fn add_to_index(&self, packs: &[(Id, Vec<BlobEntry>)], index_files: &[Id]) -> Result<()> {
        let Some(mut files) = self.meta("index_files")? else { return Ok(()) };
        let Some(gen) = self.meta("index_generation")? else { return Ok(()) };
        let mut names: Vec<String> =
            String::from_utf8_lossy(&gen).split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        for p in packs {
            self.add_blobs(&p.0, &p.1)?;
        }
        for f in index_files {
            files.extend_from_slice(&f.0);
            names.push(f.to_hex());
        }
        self.set_meta("index_files", &files)?;
        self.set_meta("index_generation", &generation(names))
    }

    /// Number of chunk locations in the cached index.
    pub fn index_len(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM chunk_index", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| db_err(&self.path, e))
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut st =
            self.conn.prepare_cached("SELECT value FROM meta WHERE key = ?1").map_err(|e| db_err(&self.path, e))?;
        let mut rows = st.query([key]).map_err(|e| db_err(&self.path, e))?;
        match rows.next().map_err(|e| db_err(&self.path, e))? {
            Some(r) => Ok(Some(r.get(0).map_err(|e| db_err(&self.path, e))?)),
            None => Ok(None),
        }
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO meta VALUES (?1, ?2)", rusqlite::params![key, value])
            .map(|_| ())
            .map_err(|e| db_err(&self.path, e))
    }

    /// Number of entries.
    pub fn len(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM files_v2", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| db_err(&self.path, e))
    }

    /// Whether empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
}

/// The identity of an index state: its sorted index file names.
fn generation(mut names: Vec<String>) -> Vec<u8> {
    names.sort();
    names.join(",").into_bytes()
}

/// The identity of a manifest state: its sorted archive ids.
fn manifest_generation(m: &Manifest) -> Vec<u8> {
    generation(m.archives.iter().map(|a| a.id.to_hex()).collect())
}

fn ids(b: &[u8]) -> Vec<Id> {
    b.chunks_exact(32).filter_map(|c| <[u8; 32]>::try_from(c).ok()).map(Id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;

    #[test]
    fn put_get_commit_reopen() {
        let d = tempfile::tempdir().unwrap();
        let c = FilesCache::open(d.path(), "r1").unwrap();
        let e = FileEntry {
            ino: 5,
            size: 10,
            mtime: 1,
            ctime: 2,
            chunks: vec![Extent::Data { id: Id([1; 32]), len: 10 }],
            racy: false,
        };
        c.put(b"/a\xff", &e).unwrap();
        assert_eq!(c.get(b"/a\xff").unwrap(), Some(e.clone()));
        c.commit().unwrap();
        drop(c);
        let c = FilesCache::open(d.path(), "r1").unwrap();
        assert_eq!(c.get(b"/a\xff").unwrap(), Some(e));
        assert_eq!(c.get(b"/b").unwrap(), None);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Issue 14: the cache held every backed-up path in clear, 0644 in 0755 directories.
    #[test]
    fn owner_only_modes_no_clear_paths_and_an_old_clear_path_table_is_dropped() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("cache");
        let db = dir.join("r1/cache.sqlite");
        std::fs::create_dir_all(dir.join("r1")).unwrap();
        {
            // a cache as the previous version left it
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch(
                "PRAGMA journal_mode=WAL;
                 CREATE TABLE files (path BLOB PRIMARY KEY, ino INTEGER, size INTEGER, mtime INTEGER,
                    ctime INTEGER, chunks BLOB, racy INTEGER);
                 INSERT INTO files VALUES (CAST('/srv/secret-old-name.txt' AS BLOB), 1, 1, 1, 1, X'', 0);",
            )
            .unwrap();
        }
        for (p, m) in [(&dir, 0o755), (&dir.join("r1"), 0o755), (&db, 0o644)] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        }
        let key = MasterKey::generate();
        let c = FilesCache::open(&dir, "r1").unwrap();
        let e = FileEntry { ino: 1, size: 2, mtime: 3, ctime: 4, chunks: vec![], racy: false };
        c.put(&path_key(&key, b"/srv/secret-new-name.txt"), &e).unwrap();
        c.commit().unwrap();
        assert_eq!(c.get(&path_key(&key, b"/srv/secret-new-name.txt")).unwrap(), Some(e));
        assert_eq!(c.len().unwrap(), 1, "the old entries are gone");
        assert_ne!(path_key(&key, b"/a"), path_key(&MasterKey::generate(), b"/a"), "keyed");
        for p in [&dir, &dir.join("r1")] {
            assert_eq!(mode(p), 0o700, "{}", p.display());
        }
        let mut files = 0;
        for f in std::fs::read_dir(dir.join("r1")).unwrap() {
            let f = f.unwrap().path();
            assert_eq!(mode(&f), 0o600, "{}", f.display());
            let bytes = std::fs::read(&f).unwrap();
            for needle in [&b"secret-old-name"[..], b"secret-new-name"] {
                assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} holds a clear path", f.display());
            }
            files += 1;
        }
        assert!(files >= 2, "the database and its WAL were checked");
        // a fresh cache: the same modes
        let fresh = d.path().join("fresh/deeper");
        drop(FilesCache::open(&fresh, "r2").unwrap());
        assert_eq!(
            (mode(&fresh), mode(&fresh.join("r2")), mode(&fresh.join("r2/cache.sqlite"))),
            (0o700, 0o700, 0o600)
        );
    }
}
