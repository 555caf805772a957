//! `diff REPO::A B [PATHS]` with borg 1.2.4's semantics: which items differ and how.
//!
//! ```text
//!  items of A ─┐                      ┌─► equal? (mode, link source, owner, [ctime, mtime],
//!              ├─ union of paths ─────┤            content: the chunk id lists, devices)
//!  items of B ─┘  (filtered by PATHS) └─► changes in borg's order: link, content,
//!                                          presence (directory, fifo, devices), owner, mode,
//!                                          ctime, mtime
//! ```
//!
//! borg compares an item that exists on one side only against a deleted placeholder that has
//! an empty chunk list: a file that appears is `added SIZE`, a directory `added directory`, a
//! symlink `added link`. A file present on both sides that differs in anything always carries a
//! `modified` change, with the bytes of the chunks only one side has (`+0 B -0 B` when only its
//! metadata changed), exactly as borg prints it. `content_only` leaves owner, mode and times
//! out (borg's `--content-only`, which still lists an item whose type changed, with no
//! change). The result is sorted by path (borg's `--sort`).

use crate::archive::{Extent, Item, ItemKind};
use crate::error::Result;
use crate::pattern::Pattern;
use crate::repo::Repository;
use std::collections::{BTreeMap, HashMap};

/// Who owns an item, as `diff` compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name, if the archive has one.
    pub user: Option<String>,
    /// Group name, if the archive has one.
    pub group: Option<String>,
}

impl Owner {
    fn of(i: &Item) -> Owner {
        Owner { uid: i.uid, gid: i.gid, user: i.user.clone(), group: i.group.clone() }
    }
}

/// One change of an item (borg's change types).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A file on both sides: bytes of the chunks only the new one has, and only the old one has.
    Modified {
        /// Bytes added.
        added: u64,
        /// Bytes removed.
        removed: u64,
    },
    /// A file that appeared, its size.
    Added(u64),
    /// A file that went away, its size.
    Removed(u64),
    /// Something else appeared: `directory`, `link`, `fifo`, `chrdev`, `blkdev`.
    AddedKind(&'static str),
    /// Something else went away.
    RemovedKind(&'static str),
    /// A symlink's target changed.
    ChangedLink,
    /// Owner or group changed.
    Owner {
        /// Before.
        old: Owner,
        /// After.
        new: Owner,
    },
    /// Type or permission bits changed.
    Mode {
        /// Before.
        old: (ItemKind, u32),
        /// After.
        new: (ItemKind, u32),
    },
    /// Status change time, ns.
    Ctime {
        /// Before.
        old: i64,
        /// After.
        new: i64,
    },
    /// Modification time, ns.
    Mtime {
        /// Before.
        old: i64,
        /// After.
        new: i64,
    },
}

/// One path that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemDiff {
    /// Archive path.
    pub path: Vec<u8>,
    /// Its changes, in borg's order (may be empty with `content_only`, as in borg).
    pub changes: Vec<Change>,
}

/// Options of [`diff`].
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Compare owners by uid/gid rather than by name.
    pub numeric_ids: bool,
    /// Only content (borg's `--content-only`).
    pub content_only: bool,
    /// Only items under these (borg's PATH arguments: path prefixes unless a style is given).
    pub paths: Vec<Pattern>,
}

fn data_bytes(item: &Item, only: &dyn Fn(&crate::Id) -> bool) -> u64 {
    item.chunks
        .iter()
        .map(|c| match c {
            Extent::Data { id, len } if only(id) => u64::from(*len),
            _ => 0,
        })
        .sum()
}

fn ids(item: &Item) -> Vec<crate::Id> {
    item.chunks
        .iter()
        .filter_map(|c| match c {
            Extent::Data { id, .. } => Some(*id),
            Extent::Hole(_) => None,
        })
        .collect()
}

fn source(i: &Item) -> Option<&Vec<u8>> {
    i.target.as_ref().or(i.hardlink.as_ref())
}

fn kind_name(k: ItemKind) -> Option<&'static str> {
    Some(match k {
        ItemKind::Dir => "directory",
        ItemKind::Fifo => "fifo",
        ItemKind::CharDev => "chrdev",
        ItemKind::BlockDev => "blkdev",
        _ => return None,
    })
}

/// Whether borg would call the two sides equal (`None` = absent).
fn equal(o: Option<&Item>, n: Option<&Item>, opts: &DiffOptions) -> bool {
    let (o, n) = match (o, n) {
        (Some(o), Some(n)) => (o, n),
        (None, None) => return true,
        _ => return false,
    };
    let owner_eq =
        if opts.numeric_ids { (o.uid, o.gid) == (n.uid, n.gid) } else { (&o.user, &o.group) == (&n.user, &n.group) };
    if source(o) != source(n) {
        return false;
    }
    // borg's --content-only compares only presence, link sources and chunk lists
    if !opts.content_only
        && (o.kind != n.kind || o.mode != n.mode || !owner_eq || o.ctime != n.ctime || o.mtime != n.mtime)
    {
        return false;
    }
    match (o.kind, n.kind) {
        (ItemKind::File, ItemKind::File) => ids(o) == ids(n) && o.size == n.size,
        (ItemKind::CharDev | ItemKind::BlockDev, ItemKind::CharDev | ItemKind::BlockDev) => o.rdev == n.rdev,
        _ => true,
    }
}

/// The changes of one path, in borg's order.
fn changes(o: Option<&Item>, n: Option<&Item>, opts: &DiffOptions) -> Vec<Change> {
    let mut out = Vec::new();
    let is = |i: Option<&Item>, k: ItemKind| i.is_some_and(|i| i.kind == k);
    if is(o, ItemKind::Symlink) || is(n, ItemKind::Symlink) {
        match (o, n) {
            (None, Some(_)) => out.push(Change::AddedKind("link")),
            (Some(_), None) => out.push(Change::RemovedKind("link")),
            (Some(a), Some(b)) if a.target.is_some() && b.target.is_some() && a.target != b.target => {
                out.push(Change::ChangedLink)
            }
            _ => {}
        }
    }
    // a file's chunk list against another file's, or the deleted placeholder's empty one
    let chunked = |i: Option<&Item>| i.is_none_or(|i| i.kind == ItemKind::File);
    if chunked(o) && chunked(n) {
        match (o, n) {
            (None, Some(b)) => out.push(Change::Added(b.size)),
            (Some(a), None) => out.push(Change::Removed(a.size)),
            (Some(a), Some(b)) => {
                let (ia, ib): (HashMap<_, ()>, HashMap<_, ()>) =
                    (ids(a).into_iter().map(|i| (i, ())).collect(), ids(b).into_iter().map(|i| (i, ())).collect());
                let added = data_bytes(b, &|id| !ia.contains_key(id));
                let removed = data_bytes(a, &|id| !ib.contains_key(id));
                out.push(Change::Modified { added, removed });
            }
            (None, None) => {}
        }
    }
    for k in [ItemKind::Dir, ItemKind::BlockDev, ItemKind::CharDev, ItemKind::Fifo] {
        if is(o, k) || is(n, k) {
            let name = kind_name(k).unwrap_or("item");
            match (o, n) {
                (None, Some(_)) => out.push(Change::AddedKind(name)),
                (Some(_), None) => out.push(Change::RemovedKind(name)),
                _ => {}
            }
        }
    }
    if let (Some(a), Some(b), false) = (o, n, opts.content_only) {
        let (oa, ob) = (Owner::of(a), Owner::of(b));
        let differs = if opts.numeric_ids {
            (oa.uid, oa.gid) != (ob.uid, ob.gid)
        } else {
            (&oa.user, &oa.group) != (&ob.user, &ob.group)
        };
        if differs {
            out.push(Change::Owner { old: oa, new: ob });
        }
        if (a.kind, a.mode) != (b.kind, b.mode) {
            out.push(Change::Mode { old: (a.kind, a.mode), new: (b.kind, b.mode) });
        }
        if a.ctime != b.ctime {
            out.push(Change::Ctime { old: a.ctime, new: b.ctime });
        }
        if a.mtime != b.mtime {
            out.push(Change::Mtime { old: a.mtime, new: b.mtime });
        }
    }
    out
}

/// Compares archive `a` with archive `b`; see the module docs.
pub fn diff(repo: &Repository, a: &str, b: &str, opts: &DiffOptions) -> Result<Vec<ItemDiff>> {
    let _lock = repo.shared_lock()?;
    let index = repo.load_index()?;
    let wanted = |p: &[u8]| opts.paths.is_empty() || opts.paths.iter().any(|q| q.matches(p));
    let load = |n: &str| -> Result<BTreeMap<Vec<u8>, Item>> {
        Ok(crate::extract::archive_items(repo, &index, n)?
            .into_iter()
            .filter(|i| wanted(&i.path))
            .map(|i| (i.path.clone(), i))
            .collect())
    };
    let (old, new) = (load(a)?, load(b)?);
    let mut paths: Vec<&Vec<u8>> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    let mut out = Vec::new();
    for p in paths {
        let (o, n) = (old.get(p), new.get(p));
        if equal(o, n, opts) {
            continue;
        }
        out.push(ItemDiff { path: p.clone(), changes: changes(o, n, opts) });
    }
    Ok(out)
}
