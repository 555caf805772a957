//! The inode table: archives' items turned into directories, files, links with their
//! metadata. Pure data, no IO: built from item lists, read by the FUSE handlers.

use dedupstore::archive::{Extent, Item, ItemKind};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Inode number of the mount's root.
pub const ROOT: u64 = 1;

/// A regular file's content: its extents and where each starts, so a read at offset X finds the
/// extents covering it by binary search and fetches only those chunks.
#[derive(Debug)]
pub struct Content {
    /// Extents in file order.
    pub extents: Vec<Extent>,
    /// Offset of each extent in the file.
    pub starts: Vec<u64>,
    /// Total length.
    pub size: u64,
}

impl Content {
    /// Lays out `extents`.
    pub fn new(extents: Vec<Extent>) -> Content {
        let mut starts = Vec::with_capacity(extents.len());
        let mut at = 0u64;
        for e in &extents {
            starts.push(at);
            at += match e {
                Extent::Data { len, .. } => u64::from(*len),
                Extent::Hole(n) => *n,
            };
        }
        Content { extents, starts, size: at }
    }

    /// The pieces of `[offset, offset + size)` (clipped to the file): `(extent index, offset
    /// within the extent, length)`, in order.
    pub fn pieces(&self, offset: u64, size: u64) -> Vec<(usize, u64, u64)> {
        let end = offset.saturating_add(size).min(self.size);
        let mut out = Vec::new();
        if offset >= end {
            return out;
        }
        let mut i = self.starts.partition_point(|&s| s <= offset).saturating_sub(1);
        let mut at = offset;
        while at < end && i < self.extents.len() {
            let start = self.starts[i];
            let len = match self.extents[i] {
                Extent::Data { len, .. } => u64::from(len),
                Extent::Hole(n) => n,
            };
            let stop = (start + len).min(end);
            if stop > at {
                out.push((i, at - start, stop - at));
                at = stop;
            }
            i += 1;
        }
        out
    }
}

/// What an inode is.
#[derive(Debug)]
pub enum Body {
    /// A directory: its entries by name. `archive`: an archive whose items are not loaded yet
    /// (the repository view loads an archive when its directory is first looked into).
    Dir {
        /// Entries by name.
        entries: BTreeMap<Vec<u8>, u64>,
        /// The archive still to load into it.
        archive: Option<String>,
    },
    /// A regular file.
    File(Arc<Content>),
    /// A symbolic link and its target.
    Symlink(Vec<u8>),
    /// A fifo, device or socket.
    Special(ItemKind),
}

/// One inode.
#[derive(Debug)]
pub struct Node {
    /// Parent directory (the root is its own parent).
    pub parent: u64,
    /// What it is.
    pub body: Body,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Times.
    pub atime: SystemTime,
    /// Modification time.
    pub mtime: SystemTime,
    /// Status change time.
    pub ctime: SystemTime,
    /// Hard links (files); directories: 2 + subdirectories.
    pub nlink: u32,
    /// Device number.
    pub rdev: u64,
    /// Stored bytes (not holes).
    pub stored: u64,
    /// Extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Node {
    /// A directory with no item of its own (the root, an archive, a parent the archive lacks).
    pub fn dir(parent: u64, time: SystemTime, archive: Option<String>) -> Node {
        Node {
            parent,
            body: Body::Dir { entries: BTreeMap::new(), archive },
            mode: 0o755,
            uid: 0,
            gid: 0,
            atime: time,
            mtime: time,
            ctime: time,
            nlink: 2,
            rdev: 0,
            stored: 0,
            xattrs: Vec::new(),
        }
    }
    /// Size as `stat` shows it.
    pub fn size(&self) -> u64 {
        match &self.body {
            Body::File(c) => c.size,
            Body::Symlink(t) => t.len() as u64,
            _ => 0,
        }
    }
}

/// ns since the epoch as a time.
pub fn time_of(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Maps stored owners to the ids shown: the local id of the stored user/group name when it
/// exists (borg's default), else the stored number.
#[derive(Debug, Default)]
pub struct Owners {
    /// Show the stored numbers only (`-o numeric_ids`).
    pub numeric: bool,
    users: HashMap<String, Option<u32>>,
    groups: HashMap<String, Option<u32>>,
}

impl Owners {
    /// An owner mapper.
    pub fn new(numeric: bool) -> Owners {
        Owners { numeric, ..Owners::default() }
    }
    fn ids(&mut self, item: &Item) -> (u32, u32) {
        if self.numeric {
            return (item.uid, item.gid);
        }
        let uid = item
            .user
            .as_ref()
            .and_then(|u| {
                *self
                    .users
                    .entry(u.clone())
                    .or_insert_with(|| nix::unistd::User::from_name(u).ok().flatten().map(|u| u.uid.as_raw()))
            })
            .unwrap_or(item.uid);
        let gid = item
            .group
            .as_ref()
            .and_then(|g| {
                *self
                    .groups
                    .entry(g.clone())
                    .or_insert_with(|| nix::unistd::Group::from_name(g).ok().flatten().map(|g| g.gid.as_raw()))
            })
            .unwrap_or(item.gid);
        (uid, gid)
    }
}

/// The inode table. Inode `n` is `nodes[n - 1]`.
#[derive(Debug)]
pub struct Tree {
    /// Every inode.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// A tree with only its root directory.
    pub fn new(root_time: SystemTime) -> Tree {
        Tree { nodes: vec![Node::dir(ROOT, root_time, None)] }
    }

    /// The inode `ino`.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(usize::try_from(ino.checked_sub(1)?).ok()?)
    }

    fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.nodes.get_mut(usize::try_from(ino.checked_sub(1)?).ok()?)
    }

    fn push(&mut self, n: Node) -> u64 {
        self.nodes.push(n);
        self.nodes.len() as u64
    }

    fn entries_mut(&mut self, dir: u64) -> Option<&mut BTreeMap<Vec<u8>, u64>> {
        match &mut self.get_mut(dir)?.body {
            Body::Dir { entries, .. } => Some(entries),
            _ => None,
        }
    }

    /// Adds a directory `name` in `parent` for an archive whose items load later.
    pub fn add_archive_dir(&mut self, parent: u64, name: &str, time: SystemTime) -> u64 {
        let ino = self.push(Node::dir(parent, time, Some(name.to_string())));
        if let Some(e) = self.entries_mut(parent) {
            e.insert(name.as_bytes().to_vec(), ino);
        }
        self.count_subdirs(parent);
        ino
    }

    /// The archive a directory still has to load, if any.
    pub fn pending_archive(&self, ino: u64) -> Option<&str> {
        match &self.get(ino)?.body {
            Body::Dir { archive: Some(a), .. } => Some(a),
            _ => None,
        }
    }

    /// Puts an archive's items below directory `base` (and marks it loaded). Items whose path
    /// has no usable component are skipped; parents the archive lacks become plain directories;
    /// a hard link becomes one more name of its first item's inode.
    pub fn load_items(&mut self, base: u64, items: Vec<Item>, owners: &mut Owners) {
        let time = self.get(base).map_or(UNIX_EPOCH, |n| n.mtime);
        if let Some(Node { body: Body::Dir { archive, .. }, .. }) = self.get_mut(base) {
            *archive = None;
        }
        // archive path -> inode, for hard links
        let mut by_path: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut touched_dirs = vec![base];
        for item in items {
            let parts: Vec<&[u8]> =
                item.path.split(|&b| b == b'/').filter(|c| !c.is_empty() && *c != b"." && *c != b"..").collect();
            let Some((name, dirs)) = parts.split_last() else { continue };
            let mut parent = base;
            for d in dirs {
                let existing = self.entries_mut(parent).and_then(|e| e.get(*d).copied());
                parent = match existing {
                    Some(ino) if matches!(self.get(ino).map(|n| &n.body), Some(Body::Dir { .. })) => ino,
                    _ => {
                        let ino = self.push(Node::dir(parent, time, None));
                        if let Some(e) = self.entries_mut(parent) {
                            e.insert(d.to_vec(), ino);
                        }
                        touched_dirs.push(parent);
                        ino
                    }
                };
            }
            let name = name.to_vec();
            if let Some(first) = item.hardlink.as_ref().and_then(|h| by_path.get(h.as_slice())).copied() {
                if let Some(n) = self.get_mut(first) {
                    n.nlink += 1;
                }
                if let Some(e) = self.entries_mut(parent) {
                    e.insert(name, first);
                }
                continue;
            }
            let (uid, gid) = owners.ids(&item);
            let existing = self.entries_mut(parent).and_then(|e| e.get(&name).copied());
            let body = match item.kind {
                ItemKind::Dir => {
                    // a directory that was made as a parent before its own item came
                    if let Some(ino) =
                        existing.filter(|&i| matches!(self.get(i).map(|n| &n.body), Some(Body::Dir { .. })))
                    {
                        if let Some(n) = self.get_mut(ino) {
                            set_meta(n, &item, uid, gid);
                        }
                        by_path.insert(item.path.clone(), ino);
                        continue;
                    }
                    Body::Dir { entries: BTreeMap::new(), archive: None }
                }
                ItemKind::File => Body::File(Arc::new(Content::new(item.chunks.clone()))),
                ItemKind::Symlink => Body::Symlink(item.target.clone().unwrap_or_default()),
                k => Body::Special(k),
            };
            let is_dir = matches!(body, Body::Dir { .. });
            let mut node = Node::dir(parent, time, None);
            node.body = body;
            node.nlink = if is_dir { 2 } else { 1 };
            set_meta(&mut node, &item, uid, gid);
            let ino = self.push(node);
            if let Some(e) = self.entries_mut(parent) {
                e.insert(name, ino);
            }
            if is_dir {
                touched_dirs.push(parent);
            }
            by_path.insert(item.path, ino);
        }
        touched_dirs.sort_unstable();
        touched_dirs.dedup();
        for d in touched_dirs {
            self.count_subdirs(d);
        }
    }

    /// Sets a directory's link count: 2 + its subdirectories.
    fn count_subdirs(&mut self, dir: u64) {
        let Some(Node { body: Body::Dir { entries, .. }, .. }) = self.get(dir) else { return };
        let subdirs = entries
            .values()
            .filter(|&&i| i != dir && matches!(self.get(i).map(|n| &n.body), Some(Body::Dir { .. })))
            .count();
        if let Some(n) = self.get_mut(dir) {
            n.nlink = 2 + subdirs as u32;
        }
    }
}

fn set_meta(n: &mut Node, item: &Item, uid: u32, gid: u32) {
    n.mode = item.mode & 0o7777;
    n.uid = uid;
    n.gid = gid;
    n.mtime = time_of(item.mtime);
    n.atime = time_of(item.atime);
    n.ctime = time_of(item.ctime);
    n.rdev = item.rdev;
    n.xattrs = item.xattrs.clone();
    n.stored = item
        .chunks
        .iter()
        .map(|c| match c {
            Extent::Data { len, .. } => u64::from(*len),
            Extent::Hole(_) => 0,
        })
        .sum();
}

#[cfg(test)]
mod tests {
    use super::*;
    use dedupstore::Id;

    fn item(path: &str, kind: ItemKind) -> Item {
        Item {
            path: path.as_bytes().to_vec(),
            kind,
            mode: 0o640,
            uid: 12345,
            gid: 54321,
            user: None,
            group: None,
            mtime: 1_000_000_123,
            atime: 5,
            ctime: -7,
            size: 0,
            xattrs: vec![],
            target: None,
            hardlink: None,
            rdev: 0,
            chunks: vec![],
        }
    }

    fn lookup(t: &Tree, dir: u64, name: &str) -> u64 {
        match &t.get(dir).unwrap().body {
            Body::Dir { entries, .. } => *entries.get(name.as_bytes()).unwrap_or_else(|| panic!("{name}")),
            _ => panic!("not a dir"),
        }
    }

    #[test]
    fn pieces_cover_exactly_the_range() {
        let c = Content::new(vec![
            Extent::Data { id: Id([1; 32]), len: 10 },
            Extent::Hole(5),
            Extent::Data { id: Id([2; 32]), len: 10 },
        ]);
        assert_eq!(c.size, 25);
        assert_eq!(c.pieces(0, 3), vec![(0, 0, 3)]);
        assert_eq!(c.pieces(8, 10), vec![(0, 8, 2), (1, 0, 5), (2, 0, 3)]);
        assert_eq!(c.pieces(15, 100), vec![(2, 0, 10)]);
        assert_eq!(c.pieces(25, 1), vec![]);
        assert_eq!(c.pieces(u64::MAX, 10), vec![]);
        assert_eq!(Content::new(vec![]).pieces(0, 10), vec![]);
    }

    #[test]
    fn items_become_inodes_with_links_and_missing_parents() {
        let mut t = Tree::new(UNIX_EPOCH);
        let a = t.add_archive_dir(ROOT, "arch", UNIX_EPOCH);
        assert_eq!(t.pending_archive(a), Some("arch"));
        let mut f = item("d/f", ItemKind::File);
        f.chunks = vec![Extent::Data { id: Id([1; 32]), len: 3 }, Extent::Hole(4096)];
        let mut h = item("d/e/h", ItemKind::File);
        h.hardlink = Some(b"d/f".to_vec());
        let mut l = item("/d/../l", ItemKind::Symlink);
        l.target = Some(b"d/f".to_vec());
        let mut d = item("d", ItemKind::Dir);
        d.mode = 0o1777;
        t.load_items(a, vec![f, h, l, d, item("", ItemKind::File)], &mut Owners::new(true));
        assert_eq!(t.pending_archive(a), None);
        let dd = lookup(&t, a, "d");
        let fi = lookup(&t, dd, "f");
        let e = lookup(&t, dd, "e");
        assert_eq!(lookup(&t, e, "h"), fi, "a hard link is the same inode");
        let n = t.get(fi).unwrap();
        assert_eq!((n.nlink, n.size(), n.stored, n.uid, n.gid, n.mode), (2, 4099, 3, 12345, 54321, 0o640));
        assert_eq!(n.ctime, UNIX_EPOCH - Duration::from_nanos(7));
        assert_eq!(n.mtime, UNIX_EPOCH + Duration::from_nanos(1_000_000_123));
        let dn = t.get(dd).unwrap();
        assert_eq!((dn.mode, dn.nlink), (0o1777, 3), "the directory item's metadata, one subdirectory");
        assert!(matches!(&t.get(lookup(&t, dd, "l")).unwrap().body, Body::Symlink(x) if x == b"d/f"), "`..` dropped");
        assert_eq!(t.get(a).unwrap().nlink, 3);
        assert_eq!(t.get(e).unwrap().parent, dd);
    }
}
