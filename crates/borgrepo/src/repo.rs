//! The repository: config, segments, the object index, the manifest, archives and items.

use crate::error::{Error, Result};
use crate::key::{Key, KeySource, Mode};
use crate::msgpack::{self, DecodeError, Value};
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// An object id.
pub type ObjectId = [u8; 32];

/// Segment entry tags.
const TAG_PUT: u8 = 0;
const TAG_DELETE: u8 = 1;
const TAG_COMMIT: u8 = 2;
/// `crc32 | size | tag` (little-endian u32s).
const HEADER: usize = 9;
/// `crc32 | size | tag | id`.
const PUT_HEADER: usize = 41;
const MAGIC: &[u8; 8] = b"BORG_SEG";

/// Where a live object is.
#[derive(Clone, Copy, Debug)]
struct Loc {
    segment: u64,
    offset: u64,
    size: u32,
}

/// What a segment scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    /// Segment files read.
    pub segments: u64,
    /// Bytes of segment files read (each entry's crc32 checked).
    pub bytes: u64,
    /// Live objects after replaying every committed transaction.
    pub objects: u64,
}

/// An opened borg repository (read only: nothing is ever written to it, not even a lock).
#[derive(Debug)]
pub struct BorgRepository {
    path: PathBuf,
    id: ObjectId,
    segments_per_dir: u64,
    index: HashMap<ObjectId, Loc>,
    key: Key,
    scan: ScanStats,
}

/// One archive of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveRef {
    /// Name.
    pub name: String,
    /// Archive object id.
    pub id: ObjectId,
    /// Time as the manifest records it (ISO 8601, UTC).
    pub time: String,
}

/// An archive object.
#[derive(Clone, Debug)]
pub struct Archive {
    /// Name.
    pub name: String,
    /// Start, ns since the epoch (UTC).
    pub time: i64,
    /// End, ns since the epoch (UTC; `time` when not recorded).
    pub time_end: i64,
    /// `--comment`.
    pub comment: String,
    /// Host.
    pub hostname: String,
    /// User.
    pub username: String,
    /// Command line.
    pub cmdline: Vec<String>,
    /// Chunks of the item stream.
    pub items: Vec<ObjectId>,
}

/// One file-system object of an archive, as borg stored it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BorgItem {
    /// Path (no leading `/`), exact bytes.
    pub path: Vec<u8>,
    /// Full `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name.
    pub user: Option<String>,
    /// Group name.
    pub group: Option<String>,
    /// Times, ns since the epoch.
    pub mtime: i64,
    /// Access time (ns; `None` with `--noatime`).
    pub atime: Option<i64>,
    /// Change time (ns; `None` with `--noctime`).
    pub ctime: Option<i64>,
    /// Symlink target, or for a hard link the path of the item holding the content.
    pub source: Option<Vec<u8>>,
    /// The first item of a hard-linked inode (holds the chunks).
    pub hardlink_master: bool,
    /// Device number.
    pub rdev: u64,
    /// Content: chunk id and plaintext size.
    pub chunks: Vec<(ObjectId, u32)>,
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A part file of a checkpoint (`part` key).
    pub part: bool,
}

impl BorgItem {
    /// `S_IFMT` bits.
    pub fn file_type(&self) -> u32 {
        self.mode & 0o170000
    }
    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type() == 0o100000
    }
    /// Whether this is a symlink.
    pub fn is_symlink(&self) -> bool {
        self.file_type() == 0o120000
    }
    /// Content size from the chunk list.
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.1)).sum()
    }
}

/// Reads the `[repository]` section of borg's INI config (continuation lines joined).
fn parse_config(text: &str) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    let mut in_repo = false;
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.starts_with([' ', '\t']) && !line.trim().is_empty() {
            if let (true, Some(k)) = (in_repo, &last) {
                if let Some(v) = out.get_mut(k) {
                    let v: &mut String = v;
                    v.push('\n');
                    v.push_str(line.trim());
                }
            }
            continue;
        }
        let t = line.trim();
        if t.starts_with('[') {
            in_repo = t == "[repository]";
            last = None;
        } else if let (true, Some((k, v))) = (in_repo, t.split_once('=')) {
            let k = k.trim().to_string();
            out.insert(k.clone(), v.trim().to_string());
            last = Some(k);
        }
    }
    out.contains_key("version").then_some(out)
}

fn u32le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Segment files `data/D/N`, by number.
fn list_segments(path: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let data = path.join("data");
    let mut out = Vec::new();
    let rd = std::fs::read_dir(&data).map_err(|e| Error::io(&data, e))?;
    for d in rd {
        let d = d.map_err(|e| Error::io(&data, e))?.path();
        if !d.is_dir() || d.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok()).is_none() {
            continue;
        }
        for f in std::fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let f = f.map_err(|e| Error::io(&d, e))?.path();
            if let Some(n) = f.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok()) {
                out.push((n, f));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The stored (encrypted) bytes of an object, its entry's crc32 checked again.
fn read_object(path: &Path, segments_per_dir: u64, index: &HashMap<ObjectId, Loc>, id: &ObjectId) -> Result<Vec<u8>> {
    let loc = index.get(id).ok_or_else(|| Error::Missing(hex::encode(id)))?;
    let file =
        path.join("data").join((loc.segment / segments_per_dir.max(1)).to_string()).join(loc.segment.to_string());
    let mut f = File::open(&file).map_err(|e| Error::io(&file, e))?;
    f.seek(SeekFrom::Start(loc.offset)).map_err(|e| Error::io(&file, e))?;
    let mut buf = vec![0u8; loc.size as usize];
    f.read_exact(&mut buf).map_err(|e| Error::io(&file, e))?;
    if buf.len() < PUT_HEADER || crc32fast::hash(&buf[4..]) != u32le(&buf[0..4]) || buf[9..PUT_HEADER] != id[..] {
        return Err(Error::integrity(format!("segment {} at offset {}", file.display(), loc.offset), "crc32 mismatch"));
    }
    buf.drain(..PUT_HEADER);
    Ok(buf)
}

fn iso_to_ns(s: &str) -> Option<i64> {
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok()?;
    t.and_utc().timestamp_nanos_opt()
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_bytes).map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default()
}

fn id_of(v: &Value) -> Option<ObjectId> {
    v.as_bytes()?.try_into().ok()
}

impl BorgRepository {
    /// Opens the repository at `path`: reads the config, replays every segment (checking each
    /// entry's crc32), opens the key and checks that the manifest decrypts.
    pub fn open(path: &Path, keys: &KeySource) -> Result<BorgRepository> {
        let not_borg = |why: &str| Error::NotBorg { path: path.to_path_buf(), why: why.to_string() };
        let cfg_path = path.join("config");
        let text = match std::fs::read(&cfg_path) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_borg("no config file")),
            Err(e) => return Err(Error::io(&cfg_path, e)),
        };
        let cfg = parse_config(&text).ok_or_else(|| not_borg("config has no [repository] section with a version"))?;
        if cfg.get("version").map(String::as_str) != Some("1") {
            return Err(Error::Unsupported(format!("borg repository version {:?}", cfg.get("version"))));
        }
        let id: ObjectId = cfg
            .get("id")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| not_borg("config has no 32-byte hex id"))?;
        let segments_per_dir = cfg.get("segments_per_dir").and_then(|s| s.parse().ok()).unwrap_or(1000);
        if !path.join("data").is_dir() {
            return Err(not_borg("no data directory"));
        }
        let (index, scan) = Self::replay(path)?;
        // The key type is the manifest's first byte.
        let manifest = read_object(path, segments_per_dir, &index, &[0; 32])?;
        let t = *manifest.first().ok_or_else(|| Error::integrity("manifest", "empty"))?;
        let key = Key::open(t, cfg.get("key").map(String::as_str).unwrap_or(""), &id, keys)?;
        Ok(BorgRepository { path: path.to_path_buf(), id, segments_per_dir, index, key, scan })
    }

    /// Replays the segments: PUT and DELETE entries take effect at their transaction's COMMIT;
    /// entries after the last COMMIT are an unfinished transaction and ignored (as borg does).
    fn replay(path: &Path) -> Result<(HashMap<ObjectId, Loc>, ScanStats)> {
        let mut index = HashMap::new();
        let mut scan = ScanStats::default();
        let segments = list_segments(path)?;
        if segments.is_empty() {
            return Err(Error::NotBorg { path: path.to_path_buf(), why: "no segment files".into() });
        }
        let mut pending: Vec<(u8, ObjectId, Loc)> = Vec::new();
        for (n, file) in segments {
            // Entry by entry through a buffer: memory stays one entry (a chunk, at most a few
            // MiB), not one segment (borg's default limit is 500 MB).
            let f = File::open(&file).map_err(|e| Error::io(&file, e))?;
            let len = f.metadata().map_err(|e| Error::io(&file, e))?.len();
            let mut r = std::io::BufReader::with_capacity(1 << 20, f);
            scan.segments += 1;
            scan.bytes += len;
            let what = |off: u64| format!("segment {} at offset {off}", file.display());
            let mut magic = [0u8; 8];
            if r.read_exact(&mut magic).is_err() || &magic != MAGIC {
                return Err(Error::integrity(what(0), "no BORG_SEG magic"));
            }
            let mut off = 8u64;
            let mut body = Vec::new();
            while off < len {
                let mut h = [0u8; HEADER];
                r.read_exact(&mut h).map_err(|_| Error::integrity(what(off), "truncated entry header"))?;
                let (crc, size, tag) = (u32le(&h[0..4]), u32le(&h[4..8]) as usize, h[8]);
                if size < HEADER || off + size as u64 > len {
                    return Err(Error::integrity(what(off), format!("entry size {size} out of bounds")));
                }
                body.resize(size - HEADER, 0);
                r.read_exact(&mut body).map_err(|e| Error::io(&file, e))?;
                let mut hasher = crc32fast::Hasher::new();
                hasher.update(&h[4..]);
                hasher.update(&body);
                if hasher.finalize() != crc {
                    return Err(Error::integrity(what(off), "crc32 mismatch"));
                }
                let entry_id = || -> Result<ObjectId> {
                    body.get(..32)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| Error::integrity(what(off), "entry shorter than its id"))
                };
                match tag {
                    TAG_PUT | TAG_DELETE => {
                        let id = entry_id()?;
                        pending.push((tag, id, Loc { segment: n, offset: off, size: size as u32 }));
                    }
                    TAG_COMMIT => {
                        for (tag, id, loc) in pending.drain(..) {
                            if tag == TAG_PUT {
                                index.insert(id, loc);
                            } else {
                                index.remove(&id);
                            }
                        }
                    }
                    t => return Err(Error::integrity(what(off), format!("unknown tag {t}"))),
                }
                off += size as u64;
            }
        }
        if !pending.is_empty() {
            tracing::warn!(entries = pending.len(), "borg repository ends in an uncommitted transaction: ignored");
        }
        scan.objects = index.len() as u64;
        Ok((index, scan))
    }

    /// The repository id.
    pub fn id(&self) -> &ObjectId {
        &self.id
    }
    /// The encryption mode.
    pub fn mode(&self) -> Mode {
        self.key.mode()
    }
    /// What the segment scan read.
    pub fn scan_stats(&self) -> ScanStats {
        self.scan
    }

    /// An object's plaintext, authenticated and its id checked; `hint`: expected size.
    pub fn get(&self, id: &ObjectId, hint: Option<usize>) -> Result<Vec<u8>> {
        let raw = read_object(&self.path, self.segments_per_dir, &self.index, id)?;
        let check = if *id == [0; 32] { None } else { Some(id) };
        self.key.decrypt(check, &raw, hint)
    }

    fn get_msgpack(&self, id: &ObjectId, what: &str) -> Result<Value> {
        let plain = self.get(id, None)?;
        msgpack::decode(&plain).map_err(|e| Error::integrity(what, format!("msgpack: {e:?}")))
    }

    /// The manifest's archives, oldest first.
    pub fn archives(&self) -> Result<Vec<ArchiveRef>> {
        let m = self.get_msgpack(&[0; 32], "manifest")?;
        if m.get("version").and_then(Value::as_int) != Some(1) {
            return Err(Error::Unsupported("manifest version".into()));
        }
        let archives =
            m.get("archives").and_then(Value::as_map).ok_or_else(|| Error::integrity("manifest", "no archives"))?;
        let mut out = Vec::new();
        for (k, v) in archives {
            let name = k.as_bytes().ok_or_else(|| Error::integrity("manifest", "archive name is not text"))?;
            let id = v.get("id").and_then(id_of).ok_or_else(|| Error::integrity("manifest", "archive without id"))?;
            out.push(ArchiveRef { name: String::from_utf8_lossy(name).into_owned(), id, time: text(v.get("time")) });
        }
        out.sort_by(|a, b| a.time.cmp(&b.time).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// Reads an archive object.
    pub fn archive(&self, id: &ObjectId) -> Result<Archive> {
        let what = format!("archive {}", hex::encode(id));
        let a = self.get_msgpack(id, &what)?;
        let time = iso_to_ns(&text(a.get("time"))).ok_or_else(|| Error::integrity(&what, "bad time"))?;
        let items = a
            .get("items")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::integrity(&what, "no items"))?
            .iter()
            .map(|v| id_of(v).ok_or_else(|| Error::integrity(&what, "bad item chunk id")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Archive {
            name: text(a.get("name")),
            time,
            time_end: iso_to_ns(&text(a.get("time_end"))).unwrap_or(time),
            comment: text(a.get("comment")),
            hostname: text(a.get("hostname")),
            username: text(a.get("username")),
            cmdline: a.get("cmdline").and_then(Value::as_array).unwrap_or(&[]).iter().map(|v| text(Some(v))).collect(),
            items,
        })
    }

    /// The items of an archive, decoded as the item stream is read chunk by chunk.
    pub fn items<'a>(&'a self, archive: &'a Archive) -> Items<'a> {
        Items { repo: self, ids: archive.items.iter(), buf: Vec::new(), pos: 0 }
    }

    /// A file's content chunk: plaintext, authenticated and id-checked.
    pub fn chunk(&self, id: &ObjectId, size: u32) -> Result<Vec<u8>> {
        let data = self.get(id, Some(size as usize))?;
        if data.len() != size as usize {
            return Err(Error::integrity(
                format!("chunk {}", hex::encode(id)),
                format!("{} bytes, the item says {size}", data.len()),
            ));
        }
        Ok(data)
    }
}

/// Iterator over the items of an archive.
#[derive(Debug)]
pub struct Items<'a> {
    repo: &'a BorgRepository,
    ids: std::slice::Iter<'a, ObjectId>,
    buf: Vec<u8>,
    pos: usize,
}

impl Iterator for Items<'_> {
    type Item = Result<BorgItem>;
    fn next(&mut self) -> Option<Result<BorgItem>> {
        loop {
            match msgpack::decode_prefix(&self.buf[self.pos..]) {
                Ok((v, n)) => {
                    self.pos += n;
                    return Some(parse_item(&v));
                }
                Err(DecodeError::Malformed) => return Some(Err(Error::integrity("item stream", "malformed msgpack"))),
                Err(DecodeError::Incomplete) => match self.ids.next() {
                    Some(id) => {
                        self.buf.drain(..self.pos);
                        self.pos = 0;
                        match self.repo.get(id, None) {
                            Ok(d) => self.buf.extend_from_slice(&d),
                            Err(e) => return Some(Err(e)),
                        }
                    }
                    None if self.pos == self.buf.len() => return None,
                    None => {
                        self.pos = self.buf.len();
                        return Some(Err(Error::integrity("item stream", "truncated item")));
                    }
                },
            }
        }
    }
}

fn parse_item(v: &Value) -> Result<BorgItem> {
    let bad = |why: &str| Error::integrity("item", why.to_string());
    let int = |k: &str| v.get(k).and_then(Value::as_int);
    let path = v.get("path").and_then(Value::as_bytes).ok_or_else(|| bad("no path"))?.to_vec();
    let name = |k: &str| v.get(k).and_then(Value::as_bytes).map(|b| String::from_utf8_lossy(b).into_owned());
    let mut chunks = Vec::new();
    if let Some(list) = v.get("chunks").and_then(Value::as_array) {
        for c in list {
            let c = c.as_array().ok_or_else(|| bad("chunk entry is not a list"))?;
            let id = c.first().and_then(id_of).ok_or_else(|| bad("chunk entry without id"))?;
            let size = c
                .get(1)
                .and_then(Value::as_int)
                .and_then(|s| u32::try_from(s).ok())
                .ok_or_else(|| bad("chunk size"))?;
            chunks.push((id, size));
        }
    }
    let mut xattrs = Vec::new();
    if let Some(m) = v.get("xattrs").and_then(Value::as_map) {
        for (k, val) in m {
            let k = k.as_bytes().ok_or_else(|| bad("xattr name"))?;
            // borg stores an xattr without a value as nil
            xattrs.push((k.to_vec(), val.as_bytes().unwrap_or_default().to_vec()));
        }
    }
    xattrs.sort();
    let ns = |k: &str| int(k).and_then(|t| i64::try_from(t).ok());
    Ok(BorgItem {
        path,
        mode: int("mode").and_then(|m| u32::try_from(m).ok()).ok_or_else(|| bad("no mode"))?,
        uid: int("uid").and_then(|m| u32::try_from(m).ok()).unwrap_or(0),
        gid: int("gid").and_then(|m| u32::try_from(m).ok()).unwrap_or(0),
        user: name("user"),
        group: name("group"),
        mtime: ns("mtime").ok_or_else(|| bad("no mtime"))?,
        atime: ns("atime"),
        ctime: ns("ctime"),
        source: v.get("source").and_then(Value::as_bytes).map(<[u8]>::to_vec),
        hardlink_master: v.get("hardlink_master").and_then(Value::as_bool).unwrap_or(false),
        rdev: int("rdev").and_then(|m| u64::try_from(m).ok()).unwrap_or(0),
        chunks,
        xattrs,
        part: v.get("part").is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parsing() {
        let c = parse_config("[repository]\nversion = 1\nid = ab\nkey = aGVs\n\tbG8=\n\n[other]\nx = 1\n").unwrap();
        assert_eq!(c["key"], "aGVs\nbG8=");
        assert_eq!(c["id"], "ab");
        assert!(!c.contains_key("x"));
        assert!(parse_config("hello").is_none());
        assert_eq!(iso_to_ns("1970-01-01T00:00:01.000002"), Some(1_000_002_000));
    }
}
