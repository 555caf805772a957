//! The local files cache (SQLite): path → (inode, size, mtime, ctime, chunks), so unchanged files
//! are not read again. It is an accelerator only: every entry is checked against the repository
//! index before use, and deleting the cache just means the next `create` reads every file.
//!
//! # Fixing borg #5992
//!
//! A file modified twice within one tick of the file system's timestamp clock can keep the same
//! mtime/ctime/size while its content changed. Borg guards against that by not trusting entries
//! whose times are at or above the newest time seen in the run, so the newest files of every run
//! are re-read, every time. Here an entry is marked *racy* only if the file's ctime or mtime was
//! within [`RACY_WINDOW_NS`] of the moment we started reading it (or in the future); only racy
//! entries are re-read. A file written an hour before the backup is trusted on the next run.

use crate::archive::Extent;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

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
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::io(path, std::io::Error::other(e.to_string()))
}

impl FilesCache {
    /// Opens (creating if needed) `dir/<repo id>/cache.sqlite`.
    pub fn open(dir: &Path, repo_id: &str) -> Result<FilesCache> {
        let d = dir.join(repo_id);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        let path = d.join("cache.sqlite");
        let conn = rusqlite::Connection::open(&path).map_err(|e| db_err(&path, e))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS files (
                path BLOB PRIMARY KEY, ino INTEGER, size INTEGER, mtime INTEGER, ctime INTEGER,
                chunks BLOB, racy INTEGER);
             BEGIN;",
        )
        .map_err(|e| db_err(&path, e))?;
        Ok(FilesCache { conn, path })
    }

    /// The cached entry of a path.
    pub fn get(&self, path: &[u8]) -> Result<Option<FileEntry>> {
        let mut st = self
            .conn
            .prepare_cached("SELECT ino, size, mtime, ctime, chunks, racy FROM files WHERE path = ?1")
            .map_err(|e| db_err(&self.path, e))?;
        let mut rows = st.query([path]).map_err(|e| db_err(&self.path, e))?;
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

    /// Records a file (committed by [`FilesCache::commit`]).
    pub fn put(&self, path: &[u8], e: &FileEntry) -> Result<()> {
        let chunks = postcard::to_stdvec(&e.chunks).unwrap_or_default();
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO files VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
            .and_then(|mut st| {
                st.execute(rusqlite::params![
                    path,
                    e.ino as i64,
                    e.size as i64,
                    e.mtime,
                    e.ctime,
                    chunks,
                    e.racy as i64
                ])
            })
            .map_err(|e| db_err(&self.path, e))?;
        Ok(())
    }

    /// Commits what was recorded.
    pub fn commit(&self) -> Result<()> {
        self.conn.execute_batch("COMMIT; BEGIN;").map_err(|e| db_err(&self.path, e))
    }

    /// Number of entries.
    pub fn len(&self) -> Result<u64> {
        self.conn
            .query_row("SELECT count(*) FROM files", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(|e| db_err(&self.path, e))
    }

    /// Whether empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }
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
}
