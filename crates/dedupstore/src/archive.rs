//! Archive metadata: items, the item stream codec, archive objects and the manifest.
//!
//! The item stream is a sequence of `u32 little-endian length | postcard(Item)` records. It is
//! chunked and stored like file content, so unchanged metadata deduplicates across archives.

use crate::error::{Error, Result};
use crate::id::Id;
use serde::{Deserialize, Serialize};

/// What an item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ItemKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// Named pipe.
    Fifo,
    /// Character device.
    CharDev,
    /// Block device.
    BlockDev,
    /// Unix socket (stored for the record; not recreated).
    Socket,
}

impl ItemKind {
    /// The kind of a file as the filesystem reports it (`symlink_metadata`); `None` for a type
    /// the archive format has no kind for.
    pub fn of(ft: std::fs::FileType) -> Option<ItemKind> {
        use std::os::unix::fs::FileTypeExt;
        Some(if ft.is_file() {
            ItemKind::File
        } else if ft.is_dir() {
            ItemKind::Dir
        } else if ft.is_symlink() {
            ItemKind::Symlink
        } else if ft.is_fifo() {
            ItemKind::Fifo
        } else if ft.is_char_device() {
            ItemKind::CharDev
        } else if ft.is_block_device() {
            ItemKind::BlockDev
        } else if ft.is_socket() {
            ItemKind::Socket
        } else {
            return None;
        })
    }
}

/// A piece of a regular file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Extent {
    /// A stored chunk and its plaintext length.
    Data {
        /// Chunk id.
        id: Id,
        /// Plaintext length.
        len: u32,
    },
    /// A hole of this many bytes (reads as zeros; not allocated on extract).
    Hole(u64),
}

/// One file-system object in an archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Path as stored (borg's form: no leading `/`), exact bytes (not necessarily UTF-8).
    pub path: Vec<u8>,
    /// Type.
    pub kind: ItemKind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name, if known.
    pub user: Option<String>,
    /// Group name, if known.
    pub group: Option<String>,
    /// Modification time, ns since the epoch.
    pub mtime: i64,
    /// Access time, ns since the epoch.
    pub atime: i64,
    /// Status change time, ns since the epoch (recorded, cannot be restored).
    pub ctime: i64,
    /// Size in bytes (regular files).
    pub size: u64,
    /// Extended attributes (name, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// For a hard link: path of the first item of the same inode (its content is also in
    /// `chunks`, so a partial extract still restores it).
    pub hardlink: Option<Vec<u8>>,
    /// Device number (devices).
    pub rdev: u64,
    /// Content (regular files).
    pub chunks: Vec<Extent>,
}

impl Item {
    /// The path for display (lossy UTF-8).
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// Appends one item to an item stream; on a serialization error `out` is left as it was.
pub fn encode_item(item: &Item, out: &mut Vec<u8>) -> Result<()> {
    let body = crate::encode::postcard("item", item)?;
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Decodes a whole item stream. Never panics on malformed input.
pub fn decode_items(mut data: &[u8]) -> Result<Vec<Item>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.len() < 4 {
            return Err(Error::integrity("item stream", "truncated length"));
        }
        let len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let body =
            data.get(4..4usize.saturating_add(len)).ok_or_else(|| Error::integrity("item stream", "truncated item"))?;
        let item: Item = postcard::from_bytes(body).map_err(|e| Error::integrity("item stream", e.to_string()))?;
        out.push(item);
        data = &data[4 + len..];
    }
    Ok(out)
}

/// Statistics of one archive (borg's names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveStats {
    /// Number of regular files.
    pub nfiles: u64,
    /// Sum of file sizes.
    pub original_size: u64,
    /// Sum of the stored (compressed, encrypted) sizes of the referenced chunks.
    pub compressed_size: u64,
    /// Stored size of the chunks this archive added to the repository.
    pub deduplicated_size: u64,
}

/// An archive object (stored under `archives/`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveMeta {
    /// Format version (1).
    pub version: u32,
    /// Name.
    pub name: String,
    /// Host that created it.
    pub hostname: String,
    /// User that created it.
    pub username: String,
    /// Archive time (start, or `--timestamp`), ns since the epoch, UTC.
    pub time: i64,
    /// End of the backup, ns since the epoch.
    pub time_end: i64,
    /// Command line.
    pub cmdline: Vec<String>,
    /// Chunks of the item stream.
    pub items: Vec<Id>,
    /// Statistics.
    pub stats: ArchiveStats,
    /// Chunks `check --repair` found missing or damaged and replaced with zeros of the same
    /// length (borg's all-zero replacement chunks). Not part of the postcard body: stored as a
    /// trailer after it, only in repaired archives, so older archives decode unchanged.
    #[serde(skip)]
    pub broken: Vec<BrokenChunk>,
}

impl ArchiveMeta {
    /// The items holding chunks an earlier `check --repair` replaced with zeros, by path: how
    /// many chunks and bytes (borg: an item with `chunks_healthy`, listed `"healthy": false`).
    pub fn damaged_items(&self) -> std::collections::HashMap<&[u8], (usize, u64)> {
        let mut m = std::collections::HashMap::new();
        for b in &self.broken {
            let e: &mut (usize, u64) = m.entry(b.path.as_slice()).or_default();
            e.0 += 1;
            e.1 += u64::from(b.len);
        }
        m
    }
    /// Whether the item at `path` has all its original chunks (borg's `healthy`).
    pub fn is_healthy(&self, path: &[u8]) -> bool {
        !self.broken.iter().any(|b| b.path == path)
    }
}

/// A chunk reference `check --repair` replaced with a zero-filled chunk; a later repair puts
/// the original back if the chunk reappears (e.g. from another client's backup).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokenChunk {
    /// Item path.
    pub path: Vec<u8>,
    /// Position in the item's extents.
    pub extent: u32,
    /// The original chunk.
    pub id: Id,
    /// Its length.
    pub len: u32,
}

/// One archive in the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Name.
    pub name: String,
    /// Archive object id.
    pub id: Id,
    /// Archive time, ns since the epoch, UTC.
    pub time: i64,
}

/// The manifest: the list of archives. The only mutable object of a repository; it is replaced
/// atomically and written last, so it only ever names complete archives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version (1).
    pub version: u32,
    /// Last write, ns since the epoch.
    pub timestamp: i64,
    /// Archives, oldest first.
    pub archives: Vec<ManifestEntry>,
}

impl Manifest {
    /// Finds an archive by name.
    pub fn get(&self, name: &str) -> Option<&ManifestEntry> {
        self.archives.iter().find(|a| a.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(path: &[u8]) -> Item {
        Item {
            path: path.to_vec(),
            kind: ItemKind::File,
            mode: 0o644,
            uid: 1,
            gid: 2,
            user: Some("u".into()),
            group: None,
            mtime: -5,
            atime: 1,
            ctime: 2,
            size: 3,
            xattrs: vec![(b"user.a".to_vec(), vec![0, 1])],
            target: None,
            hardlink: None,
            rdev: 0,
            chunks: vec![Extent::Data { id: Id([9; 32]), len: 3 }, Extent::Hole(4096)],
        }
    }

    #[test]
    fn item_stream_roundtrip_and_truncation() {
        let items = vec![item(b"a/b"), item(b"\xff\xfe-not-utf8")];
        let mut buf = Vec::new();
        for i in &items {
            encode_item(i, &mut buf).unwrap();
        }
        assert_eq!(decode_items(&buf).unwrap(), items);
        for cut in 0..buf.len() {
            let r = decode_items(&buf[..cut]);
            if cut != 0 && cut != buf.len() / 2 {
                assert!(r.is_err() || r.unwrap().len() < 2, "cut {cut}");
            }
        }
        assert!(decode_items(&[0xff, 0xff, 0xff, 0xff, 1]).is_err());
    }
}
