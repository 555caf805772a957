//! Replication metadata: generation identifiers, the dirty bitmap and the activity log, and their
//! on-disk encoding.
//!
//! # Generation identifiers (DRBD's scheme)
//!
//! Each node keeps `current`, `bitmap` and two `history` identifiers. While two nodes are
//! connected they share `current`. A Primary that loses its peer (or a disconnected node that is
//! promoted) moves `current` into `bitmap` and draws a new `current`: from then on its bitmap
//! records every block changed since the common generation; while it already does (a resync not
//! finished, an earlier disconnect), further disconnects keep the identifiers. The bitmap
//! generation goes to history only when a resync completes (see
//! [`GenIds::new_current_unconfirmed`] for a break just before the target confirms it). On
//! reconnect [`compare`] reads the four identifiers of both sides and decides who syncs from
//! whom and whether a bitmap is enough.
//!
//! # Activity log
//!
//! A Primary records the 4 MiB extents it is writing to ("hot extents") in the metadata *before*
//! writing to them. After a Primary crash only those extents can differ from the peer, so only
//! they are resynced instead of the whole disk.

use std::collections::VecDeque;

use thiserror::Error;

/// Bytes per bitmap bit.
pub const BLOCK: u64 = 4096;
/// Bytes per activity-log extent.
pub const EXTENT: u64 = 4 << 20;
/// `current` of freshly created metadata.
pub const UUID_JUST_CREATED: u64 = 4;

/// Generation identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenIds {
    /// Current data generation.
    pub current: u64,
    /// Generation at which the bitmap started tracking (0: not tracking).
    pub bitmap: u64,
    /// Older generations, newest first.
    pub history: [u64; 2],
}

impl GenIds {
    /// Identifiers of fresh metadata.
    pub fn fresh() -> Self {
        Self { current: UUID_JUST_CREATED, bitmap: 0, history: [0, 0] }
    }

    /// Starts a new generation, keeping the old one as the bitmap base (a disconnected node is
    /// promoted, or a Primary lost its in-sync peer). No-op when the bitmap already tracks
    /// changes: no peer shares the current generation then, and keeping it keeps the relation
    /// "my bitmap base = peer's current" that a bitmap resync needs.
    pub fn new_current(&mut self, fresh: u64) {
        if self.bitmap == 0 {
            self.bitmap = self.current;
            self.current = fresh;
        }
    }

    /// Forced promotion of a node: a brand new generation, the previous one goes to history.
    pub fn force_new(&mut self, fresh: u64) {
        if self.current != UUID_JUST_CREATED {
            self.push_history(self.current);
        }
        self.current = fresh;
    }

    /// A Primary lost a peer that had received every resync block but had not yet confirmed
    /// that it is UpToDate (the source keeps its bitmap generation until then). The peer is
    /// either still at the bitmap generation (it never made its data durable and UpToDate) or
    /// at `current` (it did). A new `current` is needed for the second case (the peer may be
    /// promoted and write in that generation), so the old one goes to history; the bitmap
    /// generation stays, so that a peer still at it resumes with a bitmap resync however often
    /// this repeats.
    pub fn new_current_unconfirmed(&mut self, fresh: u64) {
        if self.bitmap == 0 {
            self.new_current(fresh);
            return;
        }
        self.push_history(self.current);
        self.current = fresh;
    }

    /// What [`GenIds::sync_source_done`] will make of these identifiers.
    pub fn after_sync_source_done(&self) -> GenIds {
        let mut g = *self;
        g.sync_source_done();
        g
    }

    /// A resync finished on the source and the target confirmed it is UpToDate: the bitmap
    /// generation goes to history.
    pub fn sync_source_done(&mut self) {
        if self.bitmap != 0 {
            self.push_history(self.bitmap);
            self.bitmap = 0;
        }
    }

    /// A resync finished on the target: adopt the source's generation.
    pub fn sync_target_done(&mut self, source: &GenIds) {
        *self = GenIds { current: source.current, bitmap: 0, history: source.history };
    }

    fn push_history(&mut self, id: u64) {
        if self.history[0] != id {
            self.history = [id, self.history[0]];
        }
    }
}

/// Outcome of comparing the generation identifiers of two nodes (from "my" side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncDecision {
    /// Same data: no resync.
    NoSync,
    /// I am SyncSource; the union of both bitmaps is enough.
    BitmapSource,
    /// I am SyncTarget; the union of both bitmaps is enough.
    BitmapTarget,
    /// I am SyncSource; the whole device must be sent.
    FullSource,
    /// I am SyncTarget; the whole device must be received.
    FullTarget,
    /// Both sides changed since their common generation; the bitmaps cover the differences.
    SplitBrain,
    /// Both changed and no common bitmap generation: recovery needs a full sync.
    SplitBrainFull,
    /// No common history at all: refuse to connect.
    Unrelated,
}

/// Per-node facts [`compare`] needs besides the identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeFacts {
    /// Generation identifiers.
    pub gen: GenIds,
    /// The node was Primary when it went down (its activity log must be resynced).
    pub crashed_primary: bool,
}

/// Decides the resync direction. `tiebreak` is true on exactly one of the two nodes (the one
/// whose name sorts first) and settles symmetric cases.
///
/// Rules in order (DRBD's comparison table, simplified to two history slots):
///
/// | # | condition | result (mine) |
/// |---|---|---|
/// | 1 | both `current` = just created | NoSync |
/// | 2 | my `current` = just created | FullTarget |
/// | 3 | peer `current` = just created | FullSource |
/// | 4 | `current` equal, only I crashed as Primary | BitmapSource |
/// | 5 | `current` equal, only peer crashed as Primary | BitmapTarget |
/// | 6 | `current` equal, both crashed as Primary | tiebreak decides Bitmap Source/Target |
/// | 7 | `current` equal | NoSync |
/// | 8 | my `bitmap` = peer `current` | BitmapSource |
/// | 9 | peer `bitmap` = my `current` | BitmapTarget |
/// | 10 | my `bitmap` = peer `bitmap` | SplitBrain |
/// | 11 | peer `current` in my history | FullSource |
/// | 12 | my `current` in peer history | FullTarget |
/// | 13 | any shared id among bitmap/history | SplitBrainFull |
/// | 14 | otherwise | Unrelated |
pub fn compare(me: &NodeFacts, peer: &NodeFacts, tiebreak: bool) -> SyncDecision {
    let (a, b) = (&me.gen, &peer.gen);
    if a.current == UUID_JUST_CREATED && b.current == UUID_JUST_CREATED {
        return SyncDecision::NoSync;
    }
    if a.current == UUID_JUST_CREATED {
        return SyncDecision::FullTarget;
    }
    if b.current == UUID_JUST_CREATED {
        return SyncDecision::FullSource;
    }
    if a.current == b.current {
        return match (me.crashed_primary, peer.crashed_primary) {
            (true, false) => SyncDecision::BitmapSource,
            (false, true) => SyncDecision::BitmapTarget,
            (true, true) if tiebreak => SyncDecision::BitmapSource,
            (true, true) => SyncDecision::BitmapTarget,
            (false, false) => SyncDecision::NoSync,
        };
    }
    if a.bitmap != 0 && a.bitmap == b.current {
        return SyncDecision::BitmapSource;
    }
    if b.bitmap != 0 && b.bitmap == a.current {
        return SyncDecision::BitmapTarget;
    }
    if a.bitmap != 0 && a.bitmap == b.bitmap {
        return SyncDecision::SplitBrain;
    }
    if a.history.contains(&b.current) {
        return SyncDecision::FullSource;
    }
    if b.history.contains(&a.current) {
        return SyncDecision::FullTarget;
    }
    let mine = [a.bitmap, a.history[0], a.history[1]];
    let theirs = [b.bitmap, b.history[0], b.history[1]];
    if mine.iter().any(|x| *x != 0 && theirs.contains(x)) {
        return SyncDecision::SplitBrainFull;
    }
    SyncDecision::Unrelated
}

/// DRBD's `after-sb-0pri` policies: what to do on split brain when no node is Primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AfterSb0Pri {
    /// Go StandAlone; an operator decides.
    #[default]
    Disconnect,
    /// The side without changes becomes SyncTarget.
    DiscardZeroChanges,
    /// The side promoted most recently loses its changes.
    DiscardYoungerPrimary,
    /// The side promoted least recently loses its changes.
    DiscardOlderPrimary,
    /// The side with fewer changed blocks loses its changes.
    DiscardLeastChanges,
}

impl std::str::FromStr for AfterSb0Pri {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "disconnect" => Self::Disconnect,
            "discard-zero-changes" => Self::DiscardZeroChanges,
            "discard-younger-primary" => Self::DiscardYoungerPrimary,
            "discard-older-primary" => Self::DiscardOlderPrimary,
            "discard-least-changes" => Self::DiscardLeastChanges,
            other => return Err(format!("unknown after-sb-0pri policy {other:?}")),
        })
    }
}

/// What one side knows for split-brain resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SbFacts {
    /// Blocks marked in the bitmap.
    pub changed_blocks: u64,
    /// When the node was last promoted (wall-clock seconds; 0 = never).
    pub promoted_at: u64,
}

/// Applies an `after-sb-0pri` policy. `Some(true)`: I am the victim (SyncTarget);
/// `Some(false)`: I am the survivor; `None`: disconnect.
pub fn resolve_split_brain(policy: AfterSb0Pri, me: SbFacts, peer: SbFacts, tiebreak: bool) -> Option<bool> {
    use std::cmp::Ordering;
    let by = |o: Ordering| match o {
        Ordering::Less => Some(true),
        Ordering::Greater => Some(false),
        Ordering::Equal => None,
    };
    let _ = tiebreak;
    match policy {
        AfterSb0Pri::Disconnect => None,
        AfterSb0Pri::DiscardZeroChanges => match (me.changed_blocks, peer.changed_blocks) {
            (0, 0) => None,
            (0, _) => Some(true),
            (_, 0) => Some(false),
            _ => None,
        },
        AfterSb0Pri::DiscardYoungerPrimary => by(peer.promoted_at.cmp(&me.promoted_at)),
        AfterSb0Pri::DiscardOlderPrimary => by(me.promoted_at.cmp(&peer.promoted_at)),
        AfterSb0Pri::DiscardLeastChanges => by(me.changed_blocks.cmp(&peer.changed_blocks)),
    }
}

/// One bit per 4 KiB block.
#[derive(Debug, Clone)]
pub struct Bitmap {
    words: Vec<u64>,
    blocks: u64,
    /// Counts the bits that changed (see [`Bitmap::changes`]); not part of the value.
    changes: u64,
    /// Marked blocks, kept up to date so that [`Bitmap::count`] (every status, every
    /// published status change) does not scan the whole bitmap.
    ones: u64,
}

impl PartialEq for Bitmap {
    fn eq(&self, other: &Self) -> bool {
        self.blocks == other.blocks && self.words == other.words
    }
}

impl Eq for Bitmap {}

impl Bitmap {
    /// An empty bitmap for a device of `size` bytes.
    pub fn new(size: u64) -> Self {
        let blocks = size.div_ceil(BLOCK);
        Self { words: vec![0; blocks.div_ceil(64) as usize], blocks, changes: 0, ones: 0 }
    }
    /// A counter that moves whenever a bit flips: equal counts mean an unchanged bitmap (what
    /// the activity log's small transactions rely on, see `Replica::persist`).
    pub fn changes(&self) -> u64 {
        self.changes
    }
    /// Number of blocks covered.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
    /// The blocks touched by `[off, off+len)` (none when `len` is 0), clipped to the bitmap.
    fn span(&self, off: u64, len: u64) -> std::ops::RangeInclusive<u64> {
        if len == 0 {
            #[allow(clippy::reversed_empty_ranges)]
            return 1..=0;
        }
        off / BLOCK..=(off.saturating_add(len - 1) / BLOCK).min(self.blocks.saturating_sub(1))
    }
    /// Marks every block touched by `[off, off+len)`.
    pub fn set_range(&mut self, off: u64, len: u64) {
        for b in self.span(off, len) {
            self.set(b);
        }
    }
    /// Clears every block touched by `[off, off+len)`.
    pub fn clear_range(&mut self, off: u64, len: u64) {
        for b in self.span(off, len) {
            self.clear(b);
        }
    }
    /// Marks every block.
    pub fn set_all(&mut self) {
        for b in 0..self.blocks {
            self.set(b);
        }
    }
    /// Marks block `b`.
    pub fn set(&mut self, b: u64) {
        if b < self.blocks {
            let w = &mut self.words[(b / 64) as usize];
            if *w & (1 << (b % 64)) == 0 {
                *w |= 1 << (b % 64);
                self.changes += 1;
                self.ones += 1;
            }
        }
    }
    /// Clears block `b`.
    pub fn clear(&mut self, b: u64) {
        if b < self.blocks {
            let w = &mut self.words[(b / 64) as usize];
            if *w & (1 << (b % 64)) != 0 {
                *w &= !(1 << (b % 64));
                self.changes += 1;
                self.ones -= 1;
            }
        }
    }
    /// Clears everything.
    pub fn clear_all(&mut self) {
        self.words.fill(0);
        self.changes += 1;
        self.ones = 0;
    }
    /// Whether block `b` is marked.
    pub fn get(&self, b: u64) -> bool {
        b < self.blocks && self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }
    /// Number of marked blocks.
    pub fn count(&self) -> u64 {
        self.ones
    }
    fn recount(&mut self) {
        self.ones = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
    }
    /// First marked block at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        let mut b = from;
        while b < self.blocks {
            let w = self.words[(b / 64) as usize] >> (b % 64);
            if w != 0 {
                let n = b + u64::from(w.trailing_zeros());
                return (n < self.blocks).then_some(n);
            }
            b = (b / 64 + 1) * 64;
        }
        None
    }
    /// ORs `other` into `self` (the sizes must match; extra bits are ignored).
    pub fn union(&mut self, other: &Bitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
        self.changes += 1;
        self.recount();
    }
    /// Little-endian words.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
    /// Decodes [`Bitmap::to_bytes`] for a device of `size` bytes.
    pub fn from_bytes(size: u64, bytes: &[u8]) -> Option<Self> {
        let mut bm = Self::new(size);
        if bytes.len() != bm.words.len() * 8 {
            return None;
        }
        for (w, c) in bm.words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            *w = u64::from_le_bytes(a);
        }
        bm.recount();
        Some(bm)
    }
}

/// The activity log: the most recently written extents, least recent first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityLog {
    extents: VecDeque<u32>,
    capacity: usize,
}

impl ActivityLog {
    /// An empty log holding up to `capacity` extents.
    pub fn new(capacity: usize) -> Self {
        Self { extents: VecDeque::new(), capacity: capacity.max(1) }
    }
    /// Whether `extent` is hot.
    pub fn contains(&self, extent: u32) -> bool {
        self.extents.contains(&extent)
    }
    /// Makes `extent` hot. Returns `true` when the log changed (it must be persisted before the
    /// write goes to disk) and the evicted extent if any.
    pub fn touch(&mut self, extent: u32) -> (bool, Option<u32>) {
        self.touch_idle(extent, |_| false).unwrap_or((false, None))
    }
    /// [`ActivityLog::touch`] that never evicts an extent for which `busy` holds (writes to it
    /// still in flight: DRBD's reference count), the least recent idle one instead; `None`
    /// (nothing changed) when the log is full of busy extents.
    pub fn touch_idle(&mut self, extent: u32, busy: impl Fn(u32) -> bool) -> Option<(bool, Option<u32>)> {
        if let Some(i) = self.extents.iter().position(|e| *e == extent) {
            // Refresh its position: no persistence needed, the set is unchanged.
            self.extents.remove(i);
            self.extents.push_back(extent);
            return Some((false, None));
        }
        let evicted = if self.extents.len() >= self.capacity {
            let i = self.extents.iter().position(|e| !busy(*e))?;
            self.extents.remove(i)
        } else {
            None
        };
        self.extents.push_back(extent);
        Some((true, evicted))
    }
    /// How many extents the log holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Hot extents.
    pub fn extents(&self) -> impl Iterator<Item = u32> + '_ {
        self.extents.iter().copied()
    }
    /// Empties the log (after a clean demotion).
    pub fn clear(&mut self) {
        self.extents.clear();
    }
    /// Marks every block of every hot extent in `bm`.
    pub fn mark_into(&self, bm: &mut Bitmap) {
        for e in &self.extents {
            bm.set_range(u64::from(*e) * EXTENT, EXTENT);
        }
    }
}

/// Metadata decoding errors.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetaError {
    /// Not rempart metadata.
    #[error("bad metadata magic")]
    BadMagic,
    /// Checksum mismatch (torn or corrupted write).
    #[error("metadata checksum mismatch")]
    Checksum,
    /// Sizes do not match.
    #[error("metadata truncated or for another device size")]
    Size,
}

/// Everything persisted about a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Device size in bytes.
    pub size: u64,
    /// Generation identifiers.
    pub gen: GenIds,
    /// Local disk was UpToDate when last written.
    pub consistent: bool,
    /// The node is Primary (cleared on clean demotion; set after a crash means "crashed primary").
    pub primary: bool,
    /// The data was declared outdated.
    pub outdated: bool,
    /// Last promotion time (wall-clock seconds).
    pub promoted_at: u64,
    /// Out-of-sync blocks.
    pub bitmap: Bitmap,
    /// Hot extents.
    pub al: Vec<u32>,
}

const META_MAGIC: &[u8; 8] = b"RPRTMD01";

impl Meta {
    /// Fresh metadata for a device of `size` bytes.
    pub fn fresh(size: u64) -> Self {
        Self {
            size,
            gen: GenIds::fresh(),
            consistent: false,
            primary: false,
            outdated: false,
            promoted_at: 0,
            bitmap: Bitmap::new(size),
            al: Vec::new(),
        }
    }

    /// Encodes as: magic, size, ids, flags, promoted_at, AL, bitmap, blake3 of all before.
    /// Integers are little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(META_MAGIC);
        b.extend_from_slice(&self.size.to_le_bytes());
        for id in [self.gen.current, self.gen.bitmap, self.gen.history[0], self.gen.history[1]] {
            b.extend_from_slice(&id.to_le_bytes());
        }
        let flags = u32::from(self.consistent) | u32::from(self.primary) << 1 | u32::from(self.outdated) << 2;
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&self.promoted_at.to_le_bytes());
        b.extend_from_slice(&(self.al.len() as u32).to_le_bytes());
        for e in &self.al {
            b.extend_from_slice(&e.to_le_bytes());
        }
        b.extend_from_slice(&self.bitmap.to_bytes());
        let h = blake3::hash(&b);
        b.extend_from_slice(h.as_bytes());
        b
    }

    /// Decodes [`Meta::to_bytes`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, MetaError> {
        if b.len() < 8 + 8 + 32 + 4 + 8 + 4 + 32 || &b[..8] != META_MAGIC {
            return Err(MetaError::BadMagic);
        }
        let (body, sum) = b.split_at(b.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(MetaError::Checksum);
        }
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&body[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |o: usize| {
            let mut a = [0u8; 4];
            a.copy_from_slice(&body[o..o + 4]);
            u32::from_le_bytes(a)
        };
        let size = u64_at(8);
        let gen = GenIds { current: u64_at(16), bitmap: u64_at(24), history: [u64_at(32), u64_at(40)] };
        let flags = u32_at(48);
        let promoted_at = u64_at(52);
        let n = u32_at(60) as usize;
        let al_end = 64usize.checked_add(n.checked_mul(4).ok_or(MetaError::Size)?);
        let al_end = al_end.filter(|e| *e <= body.len()).ok_or(MetaError::Size)?;
        // Check the bitmap length before allocating anything sized by the (untrusted) size field.
        let want = size.div_ceil(BLOCK).div_ceil(64).checked_mul(8);
        if want != Some((body.len() - al_end) as u64) {
            return Err(MetaError::Size);
        }
        let al = (0..n).map(|i| u32_at(64 + 4 * i)).collect();
        let bitmap = Bitmap::from_bytes(size, &body[al_end..]).ok_or(MetaError::Size)?;
        Ok(Self {
            size,
            gen,
            consistent: flags & 1 != 0,
            primary: flags & 2 != 0,
            outdated: flags & 4 != 0,
            promoted_at,
            bitmap,
            al,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(current: u64, bitmap: u64, h0: u64, h1: u64) -> NodeFacts {
        NodeFacts { gen: GenIds { current, bitmap, history: [h0, h1] }, crashed_primary: false }
    }

    #[test]
    fn compare_every_row() {
        use SyncDecision::*;
        let fresh = NodeFacts { gen: GenIds::fresh(), crashed_primary: false };
        // 1-3
        assert_eq!(compare(&fresh, &fresh, true), NoSync);
        assert_eq!(compare(&fresh, &facts(10, 0, 0, 0), true), FullTarget);
        assert_eq!(compare(&facts(10, 0, 0, 0), &fresh, false), FullSource);
        // 4-7
        let mut crashed = facts(10, 0, 0, 0);
        crashed.crashed_primary = true;
        assert_eq!(compare(&crashed, &facts(10, 0, 0, 0), false), BitmapSource);
        assert_eq!(compare(&facts(10, 0, 0, 0), &crashed, true), BitmapTarget);
        assert_eq!(compare(&crashed, &crashed, true), BitmapSource);
        assert_eq!(compare(&crashed, &crashed, false), BitmapTarget);
        assert_eq!(compare(&facts(10, 0, 0, 0), &facts(10, 0, 0, 0), true), NoSync);
        // 8-9: I was promoted/kept writing while the peer stayed at 10.
        assert_eq!(compare(&facts(11, 10, 0, 0), &facts(10, 0, 0, 0), true), BitmapSource);
        assert_eq!(compare(&facts(10, 0, 0, 0), &facts(11, 10, 0, 0), true), BitmapTarget);
        // 10: both moved on from 10.
        assert_eq!(compare(&facts(11, 10, 0, 0), &facts(12, 10, 0, 0), true), SplitBrain);
        // 11-12: the peer is older than my bitmap generation.
        assert_eq!(compare(&facts(12, 11, 10, 0), &facts(10, 0, 0, 0), true), FullSource);
        assert_eq!(compare(&facts(10, 0, 0, 0), &facts(12, 11, 10, 0), true), FullTarget);
        // 13: related, but no usable bitmap.
        assert_eq!(compare(&facts(13, 11, 10, 0), &facts(12, 10, 9, 0), true), SplitBrainFull);
        // 14
        assert_eq!(compare(&facts(20, 0, 0, 0), &facts(30, 0, 0, 0), true), Unrelated);
    }

    #[test]
    fn generations_follow_disconnect_and_resync() {
        let mut p = GenIds::fresh();
        p.force_new(100);
        let mut s = GenIds::fresh();
        s.sync_target_done(&p);
        assert_eq!(s.current, 100);
        // Primary loses its peer and writes.
        p.new_current(101);
        assert_eq!((p.current, p.bitmap), (101, 100));
        let me = NodeFacts { gen: p, crashed_primary: false };
        let peer = NodeFacts { gen: s, crashed_primary: false };
        assert_eq!(compare(&me, &peer, false), SyncDecision::BitmapSource);
        p.sync_source_done();
        s.sync_target_done(&p);
        assert_eq!(p, s);
        assert_eq!(p.history[0], 100);
    }

    #[test]
    fn breaks_before_the_target_confirms_keep_the_bitmap_generation() {
        // Source {11, 10}: a bitmap resync to a peer at 10 finished on the source.
        let before = GenIds { current: 11, bitmap: 10, history: [9, 0] };
        let unfinished = NodeFacts { gen: GenIds { current: 10, bitmap: 0, history: [9, 0] }, crashed_primary: false };
        let mut done = before;
        done.sync_source_done();
        let finished = NodeFacts { gen: done, crashed_primary: false };
        // The link breaks before the target confirms, again and again.
        let mut g = before;
        for fresh in [20, 22, 24, 26] {
            g.new_current_unconfirmed(fresh);
            assert_eq!((g.current, g.bitmap), (fresh, 10));
            let me = NodeFacts { gen: g, crashed_primary: false };
            // A target that never became UpToDate resumes with a bitmap resync ...
            assert_eq!(compare(&me, &unfinished, false), SyncDecision::BitmapSource);
            // ... one that did is still related.
            if fresh == 20 {
                assert_eq!(compare(&me, &finished, false), SyncDecision::FullSource);
                // A finished target promoted on its own is a split brain, not "unrelated".
                let mut promoted = done;
                promoted.new_current(30);
                let peer = NodeFacts { gen: promoted, crashed_primary: false };
                assert_eq!(compare(&me, &peer, false), SyncDecision::SplitBrainFull);
            }
        }
        // Without a bitmap generation it is DRBD's plain rule.
        let mut plain = done;
        plain.new_current_unconfirmed(40);
        assert_eq!((plain.current, plain.bitmap), (40, 11));
    }

    #[test]
    fn split_brain_policies() {
        let a = SbFacts { changed_blocks: 0, promoted_at: 5 };
        let b = SbFacts { changed_blocks: 7, promoted_at: 9 };
        assert_eq!(resolve_split_brain(AfterSb0Pri::Disconnect, a, b, true), None);
        assert_eq!(resolve_split_brain(AfterSb0Pri::DiscardZeroChanges, a, b, true), Some(true));
        assert_eq!(resolve_split_brain(AfterSb0Pri::DiscardZeroChanges, b, a, true), Some(false));
        assert_eq!(resolve_split_brain(AfterSb0Pri::DiscardZeroChanges, b, b, true), None);
        assert_eq!(resolve_split_brain(AfterSb0Pri::DiscardLeastChanges, a, b, true), Some(true));
        assert_eq!(resolve_split_brain(AfterSb0Pri::DiscardYoungerPrimary, b, a, true), Some(true));
        assert_eq!(resolve_split_brain(AfterSb0Pri::DiscardYoungerPrimary, a, b, true), Some(false));
        assert_eq!(resolve_split_brain(AfterSb0Pri::DiscardOlderPrimary, a, b, true), Some(true));
        assert_eq!("discard-least-changes".parse(), Ok(AfterSb0Pri::DiscardLeastChanges));
        assert!("bogus".parse::<AfterSb0Pri>().is_err());
    }

    #[test]
    fn bitmap_ranges_and_iteration() {
        let mut bm = Bitmap::new(1 << 20); // 256 blocks
        bm.set_range(4095, 2); // blocks 0 and 1
        bm.set_range(200 * 4096, 4096);
        assert_eq!(bm.count(), 3);
        assert_eq!(bm.next_set(0), Some(0));
        assert_eq!(bm.next_set(2), Some(200));
        assert_eq!(bm.next_set(201), None);
        let mut other = Bitmap::new(1 << 20);
        other.set(255);
        bm.union(&other);
        assert_eq!(bm.count(), 4);
        let back = Bitmap::from_bytes(1 << 20, &bm.to_bytes()).unwrap();
        assert_eq!(back, bm);
        bm.set_range((1 << 20) - 1, 100); // clamped at the end
        assert_eq!(bm.count(), 4);
    }

    #[test]
    fn activity_log_lru() {
        let mut al = ActivityLog::new(2);
        assert_eq!(al.touch(1), (true, None));
        assert_eq!(al.touch(2), (true, None));
        assert_eq!(al.touch(1), (false, None));
        assert_eq!(al.touch(3), (true, Some(2)));
        let mut bm = Bitmap::new(32 << 20);
        al.mark_into(&mut bm);
        assert_eq!(bm.count(), 2 * (EXTENT / BLOCK));
        assert!(bm.get(EXTENT / BLOCK));
    }

    #[test]
    fn meta_round_trip_and_corruption() {
        let mut m = Meta::fresh(8 << 20);
        m.gen.force_new(0xdead_beef);
        m.consistent = true;
        m.primary = true;
        m.al = vec![1, 0];
        m.bitmap.set(17);
        let b = m.to_bytes();
        assert_eq!(Meta::from_bytes(&b), Ok(m));
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert_eq!(Meta::from_bytes(&bad), Err(MetaError::Checksum));
        assert_eq!(Meta::from_bytes(&b[..10]), Err(MetaError::BadMagic));
        // A huge size field with a valid checksum must not allocate or panic.
        let mut huge = b[..b.len() - 32].to_vec();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let sum = *blake3::hash(&huge).as_bytes();
        huge.extend_from_slice(&sum);
        assert_eq!(Meta::from_bytes(&huge), Err(MetaError::Size));
    }
}
