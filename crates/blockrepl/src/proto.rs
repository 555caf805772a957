//! The sans-IO replication core: one [`Replica`] per node and resource.
//!
//! It never touches a clock, a socket or a disk. The IO shell (or a simulation) feeds it
//! `(now, input)` through the `handle_*` methods and executes what [`Replica::poll_action`]
//! returns: disk operations, metadata writes, frames to send, client completions.
//!
//! ```text
//!  client write ─▶ overlap check ─▶ activity log (persist meta first if the extent is new)
//!                                      │
//!                        ┌─────────────┴──────────────┐
//!                  Disk(Write)                   Send(Data seq)          (peer not there:
//!                        │                            │                   mark bitmap instead)
//!                  disk done ──┐          peer: Disk(Write) ─▶ WriteAck (C) / RecvAck (B)
//!                              ▼                            ▼
//!                Complete when local done AND peer acknowledged (A: when sent)
//!
//!  client flush ─▶ Send(Barrier e) + Disk(Flush); peer flushes once every write of epochs
//!                  ≤ e is complete, then BarrierAck e; Complete when both are done.
//! ```
//!
//! # Guarantees (protocol C)
//!
//! What an NBD client may depend on — a FUA write that completed, and every write that completed
//! before a FLUSH that completed — is durable on both disks. The "transfer log" keeps the ranges
//! written since the last acknowledged barrier: if the peer disappears they go into the bitmap,
//! because the peer may have lost them from its cache.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::meta::{
    compare, resolve_split_brain, ActivityLog, AfterSb0Pri, Bitmap, GenIds, Meta, NodeFacts, SbFacts, SyncDecision,
    BLOCK, EXTENT, UUID_JUST_CREATED,
};
use crate::wire::{
    Bytes, Msg, StateMsg, CHANGE_DEMOTE, CHANGE_INVALIDATE, CHANGE_PROMOTE, DATA_FUA, DATA_ZERO,
    REPLY_CONCURRENT_CHANGE, REPLY_GRANTED, REPLY_NOT_UP_TO_DATE, REPLY_PEER_PRIMARY, REPLY_PEER_PROMOTING,
    REPLY_UNKNOWN_CHANGE,
};

/// Node role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Serves I/O.
    Primary,
    /// Receives replicated writes.
    Secondary,
}

/// Local disk state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskState {
    /// No disk.
    Diskless,
    /// Being synced or never synced.
    Inconsistent,
    /// Consistent but known to be stale.
    Outdated,
    /// Current data.
    UpToDate,
}

/// Connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnState {
    /// Not trying to connect.
    StandAlone,
    /// Trying to connect (or handshaking).
    Connecting,
    /// Handshake done.
    Connected,
}

/// Replication state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplState {
    /// Not connected.
    Off,
    /// Replicating, in sync.
    Established,
    /// Sending a resync.
    SyncSource,
    /// Receiving a resync.
    SyncTarget,
    /// Verifying, as the initiator.
    VerifyS,
    /// Verifying, as the peer.
    VerifyT,
}

/// Replication protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// Complete when sent.
    A,
    /// Complete when the peer received it.
    B,
    /// Complete when the peer wrote it.
    #[default]
    C,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "A" | "a" => Ok(Self::A),
            "B" | "b" => Ok(Self::B),
            "C" | "c" => Ok(Self::C),
            o => Err(format!("unknown protocol {o:?} (expected A, B or C)")),
        }
    }
}

macro_rules! names {
    ($t:ty { $($v:ident),* }) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self { $(Self::$v => stringify!($v)),* })
            }
        }
    };
}
names!(Role { Primary, Secondary });
names!(DiskState { Diskless, Inconsistent, Outdated, UpToDate });
names!(ConnState { StandAlone, Connecting, Connected });
names!(ReplState { Off, Established, SyncSource, SyncTarget, VerifyS, VerifyT });

fn role_code(r: Role) -> u8 {
    u8::from(r == Role::Primary)
}
fn disk_code(d: DiskState) -> u8 {
    match d {
        DiskState::Diskless => 0,
        DiskState::Inconsistent => 1,
        DiskState::Outdated => 2,
        DiskState::UpToDate => 3,
    }
}
fn disk_from(c: u8) -> DiskState {
    match c {
        1 => DiskState::Inconsistent,
        2 => DiskState::Outdated,
        3 => DiskState::UpToDate,
        _ => DiskState::Diskless,
    }
}

/// Errors returned to callers (clients and the administrator).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplError {
    /// I/O refused: this node is not Primary.
    #[error("not Primary")]
    NotPrimary,
    /// Promotion refused: the local disk is not UpToDate (use --force).
    #[error("local disk is {0}, not UpToDate (use --force)")]
    DiskNotUpToDate(DiskState),
    /// Promotion refused: the peer is a connected Primary.
    #[error("the peer is Primary; two primaries are never allowed")]
    PeerIsPrimary,
    /// Promotion refused: the peer is being promoted at the same time and wins the tie-break
    /// (or granted the peer's promotion already).
    #[error("the peer is being promoted at the same time (it wins the tie-break); two primaries are never allowed")]
    ConcurrentPromotion,
    /// The connection broke before the peer answered a cluster-wide state change; nothing
    /// changed here. Retry: a disconnected node decides alone.
    #[error("the connection to the peer was lost during the state change; nothing changed, retry")]
    ConnectionLost,
    /// `invalidate` refused: the connected peer's disk is not UpToDate, so nothing could
    /// resync this node's data (both copies would be bad).
    #[error("the peer's disk is not UpToDate: invalidating would leave no good copy")]
    PeerNotUpToDate,
    /// The peer makes a conflicting state change at the same time and wins the tie-break (or
    /// this node granted it already).
    #[error("the peer is making the same state change at the same time (it wins the tie-break)")]
    ConcurrentChange,
    /// Another state change (promotion or demotion) is waiting for the peer.
    #[error("another state change is in progress")]
    ChangeInProgress,
    /// The peer refused a state change for a reason this node does not know (a newer peer).
    #[error("the peer refused the state change (code {0})")]
    PeerRefused(u8),
    /// Demotion refused while writes are in flight.
    #[error("writes in flight")]
    Busy,
    /// Local disk failed.
    #[error("local disk I/O error: {0}")]
    Io(String),
    /// A request is outside the device.
    #[error("request outside the device")]
    OutOfRange,
    /// Operation not allowed in the current state.
    #[error("{0}")]
    State(String),
    /// Quorum is on and neither the peer (connected) nor a valid witness lease backs this
    /// node: a promotion is refused, a write or flush fails (`on-no-quorum = io-error`).
    #[error("no quorum: the peer is not connected and no witness lease is held")]
    NoQuorum,
}

/// What a Primary without quorum does with a client write or flush that would be acknowledged
/// (DRBD's `on-no-quorum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnNoQuorum {
    /// Hold the acknowledgement until quorum is back (the peer connects or a lease arrives),
    /// then release every held one in order; a demotion fails them.
    #[default]
    SuspendIo,
    /// Fail it with [`ReplError::NoQuorum`] (EIO to the NBD client).
    IoError,
}

impl std::str::FromStr for OnNoQuorum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "suspend-io" => Ok(OnNoQuorum::SuspendIo),
            "io-error" => Ok(OnNoQuorum::IoError),
            o => Err(format!("{o:?} is not suspend-io or io-error")),
        }
    }
}

impl std::fmt::Display for OnNoQuorum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnNoQuorum::SuspendIo => "suspend-io",
            OnNoQuorum::IoError => "io-error",
        })
    }
}

/// The quorum gate, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuorumStatus {
    /// The `quorum` option is on.
    pub enabled: bool,
    /// Quorum is held now: the peer is connected and replicating, or the lease is valid (always
    /// true when not enabled).
    pub held: bool,
    /// Time left on the witness lease, if one is valid.
    pub lease_remaining: Option<Duration>,
    /// Acknowledgements held (suspend-io).
    pub suspended: usize,
}

/// A disk operation for the shell to execute.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskOp {
    /// Write bytes (durable on completion if `fua`).
    Write {
        /// Offset.
        off: u64,
        /// Bytes (the same buffer the peer is sent: no copy).
        data: Bytes,
        /// Force unit access.
        fua: bool,
        /// A hint, no promise: start writing the range back to the disk now rather than when
        /// the page cache decides, because a flush of it follows soon (a resync write: the
        /// target flushes everything at the end, and that flush then has little left to do).
        writeback: bool,
    },
    /// Make a range read back as zeroes.
    Zero {
        /// Offset.
        off: u64,
        /// Length.
        len: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Read bytes; completion carries them.
    Read {
        /// Offset.
        off: u64,
        /// Length.
        len: u32,
    },
    /// Flush the data device.
    Flush,
}

/// What the core asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Execute a disk operation; report with [`Replica::handle_disk_done`].
    Disk {
        /// Completion tag.
        io: u64,
        /// Operation.
        op: DiskOp,
    },
    /// Write the metadata durably (after flushing the data device if asked); report with
    /// [`Replica::handle_disk_done`].
    PersistMeta {
        /// Completion tag.
        io: u64,
        /// What to write.
        meta: Box<Meta>,
        /// Flush the data device before writing the metadata.
        flush_data_first: bool,
    },
    /// Write an activity-log transaction durably: the log's extents only, everything else
    /// as in the last [`Action::PersistMeta`] (which is durable by then); report with
    /// [`Replica::handle_disk_done`]. Its size does not grow with the device, where a full
    /// metadata write carries the whole bitmap (32 MiB for 1 TiB).
    PersistAl {
        /// Completion tag.
        io: u64,
        /// Every extent of the activity log.
        al: Vec<u32>,
    },
    /// Send a frame to the peer (dropped if there is no connection).
    Send(Msg),
    /// Complete a client request.
    Complete {
        /// The caller's request id.
        req: u64,
        /// Outcome.
        result: Result<(), ReplError>,
    },
    /// Close the current connection.
    CloseConnection,
    /// The state change for which [`Replica::promote`] or [`Replica::demote`] returned
    /// [`Change::Pending`] finished (at most one is pending at a time).
    StateChangeDone {
        /// Outcome.
        result: Result<(), ReplError>,
    },
}

/// Whether an administrative state change is done or waits for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// Done (or nothing to do).
    Done,
    /// Asked of the peer (or waiting for the handshake in progress to end); the outcome comes
    /// as [`Action::StateChangeDone`].
    Pending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChangeKind {
    Promote { force: bool, wall: u64 },
    Demote,
    Invalidate,
}

/// A state change waiting for the peer: DRBD's cluster-wide two-phase state change.
#[derive(Debug, Clone, Copy)]
struct PendingChange {
    seq: u64,
    kind: ChangeKind,
    /// Not sent yet: a handshake is in progress, and the change is asked of the peer once it is
    /// established (or made alone if the handshake fails).
    after_handshake: bool,
    /// When a promotion was asked of the peer: its grant counts only if it comes back within
    /// `peer_timeout` (see [`Replica::promote`]).
    asked: Option<Instant>,
}

/// Static configuration of a replica.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replication protocol.
    pub protocol: Protocol,
    /// Split-brain policy with no Primary.
    pub after_sb_0pri: AfterSb0Pri,
    /// This node's name sorts first: it settles symmetric decisions and dials the peer.
    pub tiebreak: bool,
    /// Shared-secret key for peer authentication (derived from the secret file).
    pub auth_key: [u8; 32],
    /// Resync rate limit in bytes per second.
    pub resync_rate: u64,
    /// Activity log extents.
    pub al_extents: usize,
    /// Peer silence after which the connection is declared dead.
    pub peer_timeout: Duration,
    /// Keepalive interval.
    pub ping_interval: Duration,
    /// Seed for identifiers and challenges.
    pub seed: u64,
    /// Checksum-based resync: send hashes first, data only for ranges that differ.
    pub checksum_resync: bool,
    /// Bytes per resync request (rounded down to whole 4 KiB blocks, at least one, at most
    /// 64 MiB).
    pub resync_request: u64,
    /// How the peer is named in logs (e.g. `backup (192.168.56.20:7789)`).
    pub peer_name: String,
    /// The quorum gate (`None`: off, as DRBD's `quorum off`). See the crate docs' quorum rule.
    pub quorum: Option<OnNoQuorum>,
}

impl Config {
    /// Reasonable defaults around an authentication key.
    pub fn new(auth_key: [u8; 32], tiebreak: bool, seed: u64) -> Self {
        Self {
            protocol: Protocol::C,
            after_sb_0pri: AfterSb0Pri::Disconnect,
            tiebreak,
            auth_key,
            resync_rate: 250 << 20,
            al_extents: 1237,
            peer_timeout: Duration::from_secs(4),
            ping_interval: Duration::from_millis(500),
            seed,
            checksum_resync: false,
            resync_request: 1 << 20,
            peer_name: "peer".into(),
            quorum: None,
        }
    }
}

/// Derives the authentication key from the shared secret.
pub fn auth_key(secret: &[u8]) -> [u8; 32] {
    blake3::derive_key("rempart-repl v1 peer authentication", secret)
}

fn auth_mac(key: &[u8; 32], dialer: bool, theirs: &[u8; 32], mine: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(if dialer { b"dialer" } else { b"listen" });
    h.update(theirs);
    h.update(mine);
    *h.finalize().as_bytes()
}

/// A snapshot for `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Role.
    pub role: Role,
    /// Disk state.
    pub disk: DiskState,
    /// Connection state.
    pub connection: ConnState,
    /// Replication state.
    pub replication: ReplState,
    /// Peer role, when connected.
    pub peer_role: Option<Role>,
    /// Peer disk, when connected.
    pub peer_disk: Option<DiskState>,
    /// Bytes marked out of sync.
    pub out_of_sync_bytes: u64,
    /// Resync progress (percent), while syncing.
    pub sync_done_percent: Option<f64>,
    /// Application bytes sent to the peer.
    pub replicated_bytes: u64,
    /// Resync bytes sent or received (zero ranges count their length).
    pub resync_bytes: u64,
    /// Resync payload bytes actually on the wire (all-zero ranges cost nothing).
    pub resync_wire_bytes: u64,
    /// Split brains detected.
    pub split_brains: u64,
    /// Authentication failures.
    pub auth_failures: u64,
    /// Blocks found different by the last verify.
    pub verify_mismatches: u64,
    /// Generation identifiers.
    pub gen: GenIds,
    /// The quorum gate.
    pub quorum: QuorumStatus,
}

#[derive(Debug)]
struct AppWrite {
    req: u64,
    off: u64,
    len: u32,
    data: Option<Bytes>, // None: zeroing
    fua: bool,
    local_done: bool,
    peer_done: bool,
    error: Option<ReplError>,
    /// When the frame went to the peer (for the peer latency).
    sent_at: Option<Instant>,
}

#[derive(Debug)]
struct AppFlush {
    req: u64,
    local_done: bool,
    peer_epoch: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
enum Io {
    AppWrite(u64),
    AppFlush(u64),
    PeerWrite {
        seq: u64,
        epoch: u64,
        conn: u64,
    },
    /// `mark`: number of the metadata write that records these blocks out of sync on this
    /// disk (0: they already were), which must be durable before the acknowledgement.
    PeerRs {
        off: u64,
        len: u32,
        conn: u64,
        mark: u64,
    },
    PeerFlush {
        epoch: u64,
        conn: u64,
    },
    RsRead {
        off: u64,
        len: u32,
        conn: u64,
        data: bool,
    },
    CsumRead {
        off: u64,
        len: u32,
        conn: u64,
        hash: [u8; 32],
    },
    VerifyRead {
        off: u64,
        len: u32,
        conn: u64,
        reply: bool,
    },
    TargetFinalFlush {
        conn: u64,
    },
    Meta(u64),
}

#[derive(Debug)]
enum MetaWaiter {
    Write(u64),
    /// The SyncTarget's Outdated state is durable: now record it Inconsistent.
    TargetOutdated(u64),
    TargetReady(u64),
    TargetDone(u64),
    /// A resync write whose out-of-sync mark is now durable: clear it and acknowledge.
    RsAck {
        off: u64,
        len: u32,
        conn: u64,
    },
}

/// A frame from the peer waiting for an overlapping peer write to finish.
#[derive(Debug)]
enum PeerOp {
    Write { seq: u64, epoch: u64, off: u64, len: u32, flags: u8, data: Bytes },
    Rs { off: u64, len: u32, flags: u8, data: Bytes, mark: u64 },
    Csum { off: u64, len: u32, hash: [u8; 32] },
}

impl PeerOp {
    fn range(&self) -> (u64, u64) {
        match self {
            PeerOp::Write { off, len, .. } | PeerOp::Rs { off, len, .. } | PeerOp::Csum { off, len, .. } => {
                (*off, u64::from(*len))
            }
        }
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// The metadata besides the bitmap's bits and the activity log, as of a full metadata write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MetaState {
    gen: GenIds,
    consistent: bool,
    primary: bool,
    outdated: bool,
    promoted_at: u64,
    bitmap_changes: u64,
}

/// The replication state machine of one node.
#[derive(Debug)]
pub struct Replica {
    cfg: Config,
    rng: ChaCha8Rng,
    size: u64,
    role: Role,
    disk: DiskState,
    conn: ConnState,
    repl: ReplState,
    gen: GenIds,
    bitmap: Bitmap,
    al: ActivityLog,
    /// Extents added to the activity log whose metadata write (this number) is not durable
    /// yet: a write to them waits for it, even though the in-memory log already has them.
    al_pending: HashMap<u32, u64>,
    /// Where the latest client writes ended: a write starting at one of them continues a
    /// sequential stream (requests in flight may arrive slightly out of order), whose next
    /// extents are logged ahead of it (see [`AL_AHEAD`]).
    recent_ends: [u64; 8],
    promoted_at: u64,
    crashed_primary: bool,
    discard_my_data: bool,
    /// The administrative state change waiting for the peer, if any.
    change: Option<PendingChange>,
    next_change_seq: u64,
    /// This node granted the peer's promotion and has not yet seen the peer's state after it:
    /// it must not become Primary itself meanwhile.
    peer_granted: bool,
    actions: VecDeque<Action>,
    next_io: u64,
    ios: HashMap<u64, Io>,
    // meta persistence
    meta_issued: u64,
    meta_done: u64,
    meta_in_flight: bool,
    meta_again: Option<bool>,
    /// What the last full metadata write held besides the activity log (see [`MetaState`]),
    /// and the log of the last metadata write of either kind.
    persisted: Option<MetaState>,
    persisted_al: Vec<u32>,
    meta_waiters: Vec<(u64, MetaWaiter)>,
    // application side (Primary)
    writes: BTreeMap<u64, AppWrite>,
    next_wid: u64,
    waiting: VecDeque<u64>,
    active: Vec<((u64, u64), u64)>, // range, owner (wid, or u64::MAX for resync)
    seq_to_wid: HashMap<u64, u64>,
    next_seq: u64,
    flushes: BTreeMap<u64, AppFlush>,
    next_fid: u64,
    epoch: u64,
    tlog: Vec<(u64, u64, u64)>, // epoch, off, len
    last_barrier: Option<Instant>,
    // connection
    conn_id: u64,
    authed: bool,
    my_chal: Option<[u8; 32]>,
    peer_chal: Option<[u8; 32]>,
    dialer: bool,
    peer_state: Option<StateMsg>,
    peer_role: Option<Role>,
    peer_disk: Option<DiskState>,
    established: bool,
    last_rx: Option<Instant>,
    close_at: Option<Instant>,
    next_ping: Option<Instant>,
    // peer side (Secondary)
    recv_epoch: u64,
    epoch_inflight: BTreeMap<u64, usize>,
    barriers: VecDeque<u64>,
    peer_active: Vec<(u64, u64)>,
    peer_waiting: VecDeque<PeerOp>,
    target_ready: bool,
    pending_target_gen: Option<GenIds>,
    /// SyncTarget: the source's identifiers, adopted when this disk becomes Inconsistent.
    target_sync_gen: Option<GenIds>,
    /// SyncSource: the identifiers before the last finished resync, until the target confirms
    /// it is UpToDate.
    unconfirmed_sync: Option<GenIds>,
    peer_write_ranges: HashMap<u64, (u64, u64)>,
    rs_deferred: VecDeque<Msg>,
    // resync source
    rs_cursor: u64,
    rs_inflight: usize,
    rs_total: u64,
    rs_tokens: f64,
    rs_last_refill: Option<Instant>,
    // verify
    verify_cursor: Option<u64>,
    verify_inflight: usize,
    pending_local_hash: HashMap<u64, [u8; 32]>,
    pending_peer_hash: HashMap<u64, [u8; 32]>,
    // counters
    replicated_bytes: u64,
    resync_bytes: u64,
    resync_wire_bytes: u64,
    split_brains: u64,
    auth_failures: u64,
    /// Authentication failures since the last success: only the first is a warning.
    auth_failed_streak: u64,
    verify_mismatches: u64,
    now: Option<Instant>,
    peer_latencies: Vec<Duration>,
    /// The witness lease: valid while `now < lease` (monotonic).
    lease: Option<Instant>,
    /// Client requests whose successful acknowledgement waits for quorum (suspend-io), oldest
    /// first.
    suspended: VecDeque<u64>,
}

const RS_MAX_INFLIGHT: usize = 8;
const VERIFY_CHUNK: u64 = 256 * 1024;
/// Extents a sequential stream logs ahead of the one it writes.
const AL_AHEAD: u64 = 2;
const AUTO_BARRIER: Duration = Duration::from_secs(1);

impl Replica {
    /// A replica over a device described by `meta` (as loaded from disk). A metadata set with
    /// `primary` means the node crashed while Primary: its activity-log extents go into the
    /// bitmap and it comes up Secondary.
    pub fn new(cfg: Config, meta: Meta, dialer: bool) -> Self {
        let mut bitmap = meta.bitmap.clone();
        let mut al = ActivityLog::new(cfg.al_extents);
        for e in &meta.al {
            al.touch(*e);
        }
        let crashed_primary = meta.primary;
        if crashed_primary {
            al.mark_into(&mut bitmap);
            info!(extents = meta.al.len(), "crashed Primary: activity log extents marked out of sync");
        }
        let disk = if meta.consistent {
            if meta.outdated {
                DiskState::Outdated
            } else {
                DiskState::UpToDate
            }
        } else {
            DiskState::Inconsistent
        };
        let rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let rs_tokens = cfg.resync_rate as f64 / 10.0;
        Self {
            rng,
            size: meta.size,
            role: Role::Secondary,
            disk,
            conn: ConnState::StandAlone,
            repl: ReplState::Off,
            gen: meta.gen,
            bitmap,
            al,
            promoted_at: meta.promoted_at,
            crashed_primary,
            discard_my_data: false,
            change: None,
            next_change_seq: 1,
            peer_granted: false,
            actions: VecDeque::new(),
            next_io: 1,
            ios: HashMap::new(),
            al_pending: HashMap::new(),
            recent_ends: [u64::MAX; 8],
            meta_issued: 0,
            meta_done: 0,
            meta_in_flight: false,
            meta_again: None,
            persisted: None,
            persisted_al: Vec::new(),
            meta_waiters: Vec::new(),
            writes: BTreeMap::new(),
            next_wid: 1,
            waiting: VecDeque::new(),
            active: Vec::new(),
            seq_to_wid: HashMap::new(),
            next_seq: 1,
            flushes: BTreeMap::new(),
            next_fid: 1,
            epoch: 1,
            tlog: Vec::new(),
            last_barrier: None,
            conn_id: 0,
            authed: false,
            my_chal: None,
            peer_chal: None,
            dialer,
            peer_state: None,
            peer_role: None,
            peer_disk: None,
            established: false,
            last_rx: None,
            close_at: None,
            next_ping: None,
            recv_epoch: 1,
            epoch_inflight: BTreeMap::new(),
            barriers: VecDeque::new(),
            peer_active: Vec::new(),
            peer_waiting: VecDeque::new(),
            target_ready: false,
            pending_target_gen: None,
            target_sync_gen: None,
            unconfirmed_sync: None,
            peer_write_ranges: HashMap::new(),
            rs_deferred: VecDeque::new(),
            rs_cursor: 0,
            rs_inflight: 0,
            rs_total: 0,
            rs_tokens,
            rs_last_refill: None,
            verify_cursor: None,
            verify_inflight: 0,
            pending_local_hash: HashMap::new(),
            pending_peer_hash: HashMap::new(),
            replicated_bytes: 0,
            resync_bytes: 0,
            resync_wire_bytes: 0,
            split_brains: 0,
            auth_failures: 0,
            auth_failed_streak: 0,
            verify_mismatches: 0,
            now: None,
            peer_latencies: Vec::new(),
            lease: None,
            suspended: VecDeque::new(),
            cfg,
        }
    }

    /// The next action to execute. Call after every `handle_*` until it returns `None`.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        if !self.suspended.is_empty() && !self.quorum_gated() {
            self.release_suspended();
        }
        self.actions.pop_front()
    }

    /// When [`Replica::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        min(self.close_at);
        if self.conn == ConnState::Connected || self.my_chal.is_some() {
            min(self.next_ping);
            min(self.last_rx.map(|r| r + self.cfg.peer_timeout));
        }
        if self.repl == ReplState::SyncSource && self.rs_inflight < RS_MAX_INFLIGHT {
            min(self.rs_last_refill.map(|r| r + Duration::from_millis(10)));
        }
        if !self.tlog.is_empty() {
            min(self.last_barrier.map(|b| b + AUTO_BARRIER));
        }
        // The lease's end changes the status (quorum lost): the shell calls back then.
        if self.cfg.quorum.is_some() && self.lease_valid() {
            min(self.lease);
        }
        t
    }

    // ---------------------------------------------------------------- quorum

    /// The witness lease changed: valid while `now < valid_until` on the monotonic clock
    /// (`None`: no lease). Held acknowledgements are released (in order) by the next
    /// [`Replica::poll_action`] if quorum is back.
    pub fn handle_lease(&mut self, now: Instant, valid_until: Option<Instant>) {
        self.now = Some(now);
        self.lease = valid_until;
    }

    /// The lease is valid at the time of the last input.
    fn lease_valid(&self) -> bool {
        matches!((self.lease, self.now), (Some(t), Some(n)) if n < t)
    }

    fn lease_valid_at(&self, now: Instant) -> bool {
        self.lease.is_some_and(|t| now < t)
    }

    /// Quorum is on, this node is Primary, and neither the peer (connected and replicating)
    /// nor the lease backs it now: a successful acknowledgement may not go out.
    fn quorum_gated(&self) -> bool {
        self.cfg.quorum.is_some() && self.role == Role::Primary && !self.replicating() && !self.lease_valid()
    }

    /// Completes a client request, through the quorum gate. Failures pass; a success waits
    /// (suspend-io) or fails (io-error) while gated, and goes out after every held one.
    fn ack(&mut self, req: u64, result: Result<(), ReplError>) {
        if result.is_ok() && self.quorum_gated() {
            match self.cfg.quorum.unwrap_or_default() {
                OnNoQuorum::SuspendIo => {
                    if self.suspended.is_empty() {
                        warn!("no quorum: acknowledgements suspended until the peer or a lease is back");
                    }
                    self.suspended.push_back(req);
                }
                OnNoQuorum::IoError => {
                    self.actions.push_back(Action::Complete { req, result: Err(ReplError::NoQuorum) });
                }
            }
            return;
        }
        if result.is_ok() {
            self.release_suspended();
        }
        self.actions.push_back(Action::Complete { req, result });
    }

    fn release_suspended(&mut self) {
        if self.suspended.is_empty() {
            return;
        }
        info!(writes = self.suspended.len(), "quorum back: held acknowledgements released");
        while let Some(req) = self.suspended.pop_front() {
            self.actions.push_back(Action::Complete { req, result: Ok(()) });
        }
    }

    fn fail_suspended(&mut self) {
        while let Some(req) = self.suspended.pop_front() {
            self.actions.push_back(Action::Complete { req, result: Err(ReplError::NoQuorum) });
        }
    }

    /// Peer round trips measured since the last call: from sending a write to its
    /// acknowledgement (protocol C: written on the peer; B: received). For the metrics.
    pub fn take_peer_latencies(&mut self) -> Vec<Duration> {
        std::mem::take(&mut self.peer_latencies)
    }

    /// Whether the shell should (re)establish a connection to the peer.
    pub fn wants_connection(&self) -> bool {
        self.conn != ConnState::StandAlone
    }

    /// Whether the connection is established (handshake done), cheaply (no status snapshot).
    pub fn is_connected(&self) -> bool {
        self.established
    }

    /// Whether client I/O is served.
    pub fn can_serve(&self) -> bool {
        self.role == Role::Primary && self.disk == DiskState::UpToDate
    }

    /// Device size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Current status.
    pub fn status(&self) -> Status {
        let oos = self.bitmap.count() * BLOCK;
        let syncing = matches!(self.repl, ReplState::SyncSource | ReplState::SyncTarget);
        let pct = (syncing && self.rs_total > 0).then(|| {
            let left = self.bitmap.count() as f64;
            (100.0 * (1.0 - left / self.rs_total as f64)).clamp(0.0, 100.0)
        });
        let connected = self.conn == ConnState::Connected;
        Status {
            role: self.role,
            disk: self.disk,
            connection: self.conn,
            replication: self.repl,
            peer_role: self.peer_role.filter(|_| connected),
            peer_disk: self.peer_disk.filter(|_| connected),
            out_of_sync_bytes: oos.min(self.size),
            sync_done_percent: pct,
            replicated_bytes: self.replicated_bytes,
            resync_bytes: self.resync_bytes,
            resync_wire_bytes: self.resync_wire_bytes,
            split_brains: self.split_brains,
            auth_failures: self.auth_failures,
            verify_mismatches: self.verify_mismatches,
            gen: self.gen,
            quorum: QuorumStatus {
                enabled: self.cfg.quorum.is_some(),
                held: self.cfg.quorum.is_none() || self.replicating() || self.lease_valid(),
                lease_remaining: match (self.lease, self.now) {
                    (Some(t), Some(n)) if n < t => Some(t - n),
                    _ => None,
                },
                suspended: self.suspended.len(),
            },
        }
    }

    fn io(&mut self, purpose: Io, op: DiskOp) {
        let io = self.next_io;
        self.next_io += 1;
        self.ios.insert(io, purpose);
        self.actions.push_back(Action::Disk { io, op });
    }

    fn send(&mut self, m: Msg) {
        self.actions.push_back(Action::Send(m));
    }

    fn meta_state(&self) -> MetaState {
        MetaState {
            gen: self.gen,
            consistent: matches!(self.disk, DiskState::UpToDate | DiskState::Outdated),
            primary: self.role == Role::Primary,
            outdated: self.disk == DiskState::Outdated,
            promoted_at: self.promoted_at,
            bitmap_changes: self.bitmap.changes(),
        }
    }

    fn meta_snapshot(&self) -> Meta {
        let st = self.meta_state();
        Meta {
            size: self.size,
            gen: st.gen,
            consistent: st.consistent,
            primary: st.primary,
            outdated: st.outdated,
            promoted_at: st.promoted_at,
            bitmap: self.bitmap.clone(),
            al: self.al.extents().collect(),
        }
    }

    /// Schedules a metadata write covering the current state; returns its number.
    fn persist(&mut self, flush_first: bool) -> u64 {
        // A SyncTarget's in-memory bitmap has bits cleared for resync writes that completed but
        // may not be durable yet: such a bitmap goes to disk only after the data it covers.
        let flush_first = flush_first || self.repl == ReplState::SyncTarget;
        if self.meta_in_flight {
            let f = self.meta_again.unwrap_or(false) || flush_first;
            self.meta_again = Some(f);
            return self.meta_issued + 1;
        }
        self.meta_issued += 1;
        self.meta_in_flight = true;
        let io = self.next_io;
        self.next_io += 1;
        self.ios.insert(io, Io::Meta(self.meta_issued));
        // DRBD's activity-log transaction: when nothing but new hot extents changed since the
        // last full write (same generation ids and flags, not one bitmap bit flipped, no extent
        // left the log), only the log is written. Anything else — an eviction, whose data must
        // be flushed first, a marked block, a state change — writes everything.
        let state = self.meta_state();
        let al: Vec<u32> = self.al.extents().collect();
        let only_added = || {
            let now: std::collections::HashSet<u32> = al.iter().copied().collect();
            self.persisted_al.iter().all(|e| now.contains(e))
        };
        if !flush_first && self.persisted == Some(state) && only_added() {
            self.persisted_al.clone_from(&al);
            self.actions.push_back(Action::PersistAl { io, al });
        } else {
            self.persisted = Some(state);
            self.persisted_al = al;
            self.actions.push_back(Action::PersistMeta {
                io,
                meta: Box::new(self.meta_snapshot()),
                flush_data_first: flush_first,
            });
        }
        self.meta_issued
    }

    /// A resync write is stable, or its blocks are durably marked on this disk: clear them and
    /// let the source clear them too.
    fn rs_acked(&mut self, off: u64, len: u32) {
        self.bitmap.clear_range(off, u64::from(len));
        self.resync_bytes += u64::from(len);
        self.send(Msg::RsAck { offset: off, len });
    }

    fn persist_then(&mut self, flush_first: bool, w: MetaWaiter) {
        let n = self.persist(flush_first);
        self.meta_waiters.push((n, w));
    }

    fn replicating(&self) -> bool {
        self.established
            && matches!(
                self.repl,
                ReplState::Established | ReplState::SyncSource | ReplState::VerifyS | ReplState::VerifyT
            )
            && self.peer_disk.is_some_and(|d| d != DiskState::Diskless)
    }

    // ---------------------------------------------------------------- client side

    /// A client write (`data: None` zeroes `len` bytes). Completion comes as
    /// [`Action::Complete`] with `req`.
    pub fn handle_write(&mut self, now: Instant, req: u64, off: u64, len: u32, data: Option<Vec<u8>>, fua: bool) {
        self.handle_write_bytes(now, req, off, len, data.map(Bytes::from), fua);
    }

    /// [`Self::handle_write`] with the payload already in a shared buffer (the NBD frontend's
    /// recycled one: no copy, no fresh allocation per write).
    pub fn handle_write_bytes(&mut self, now: Instant, req: u64, off: u64, len: u32, data: Option<Bytes>, fua: bool) {
        self.now = Some(now);
        if !self.can_serve() {
            self.actions.push_back(Action::Complete { req, result: Err(ReplError::NotPrimary) });
            return;
        }
        if off.checked_add(u64::from(len)).is_none_or(|e| e > self.size) {
            self.actions.push_back(Action::Complete { req, result: Err(ReplError::OutOfRange) });
            return;
        }
        let wid = self.next_wid;
        self.next_wid += 1;
        self.writes.insert(
            wid,
            AppWrite { req, off, len, data, fua, local_done: false, peer_done: false, error: None, sent_at: None },
        );
        self.waiting.push_back(wid);
        self.start_waiting();
    }

    /// A client flush.
    pub fn handle_flush(&mut self, now: Instant, req: u64) {
        self.now = Some(now);
        if self.role != Role::Primary {
            self.actions.push_back(Action::Complete { req, result: Err(ReplError::NotPrimary) });
            return;
        }
        let fid = self.next_fid;
        self.next_fid += 1;
        let peer_epoch = if self.replicating() { Some(self.send_barrier(now)) } else { None };
        self.flushes.insert(fid, AppFlush { req, local_done: false, peer_epoch });
        self.io(Io::AppFlush(fid), DiskOp::Flush);
    }

    fn send_barrier(&mut self, now: Instant) -> u64 {
        let e = self.epoch;
        self.epoch += 1;
        self.last_barrier = Some(now);
        self.send(Msg::Barrier { epoch: e });
        e
    }

    /// Starts waiting writes that overlap nothing in flight nor an earlier waiting write.
    fn start_waiting(&mut self) {
        let mut blocked: Vec<(u64, u64)> = Vec::new();
        let mut i = 0;
        while i < self.waiting.len() {
            let wid = self.waiting[i];
            let Some(w) = self.writes.get(&wid) else {
                self.waiting.remove(i);
                continue;
            };
            let r = (w.off, u64::from(w.len).max(1));
            if self.active.iter().any(|(a, _)| overlaps(*a, r)) || blocked.iter().any(|b| overlaps(*b, r)) {
                blocked.push(r);
                i += 1;
                continue;
            }
            self.waiting.remove(i);
            self.active.push((r, wid));
            if !self.start_write(wid) {
                // No room in the activity log: it waits for a write in flight to finish.
                self.waiting.insert(i, wid);
                blocked.push(r);
                i += 1;
            }
        }
    }

    /// Makes extent `e` hot in the activity log without evicting an extent that has writes in
    /// flight (the flush that precedes an eviction covers only completed writes); sets
    /// `evicted` when one went. `Some(true)`: newly added; `None`: no room.
    fn log_extent(&mut self, e: u32, evicted: &mut bool) -> Option<bool> {
        let active = &self.active;
        let busy = |x: u32| {
            let r = (u64::from(x) * EXTENT, EXTENT);
            active.iter().any(|(a, _)| overlaps(*a, r))
        };
        let (added, ev) = self.al.touch_idle(e, busy)?;
        if let Some(ev) = ev {
            *evicted = true;
            self.al_pending.remove(&ev);
        }
        Some(added)
    }

    /// Starts an active write; `false` (and no longer active) when the activity log is full of
    /// extents with writes in flight.
    fn start_write(&mut self, wid: u64) -> bool {
        let Some(w) = self.writes.get(&wid) else { return true };
        let (off, len) = (w.off, u64::from(w.len));
        // Activity log: the extents must be recorded before the data goes to disk.
        let mut added = Vec::new();
        let mut evicted = false;
        // The newest metadata write that records an extent of this write someone else added.
        let mut recorded_by = 0;
        let mut no_room = false;
        if len > 0 {
            for e in off / EXTENT..=(off + len - 1) / EXTENT {
                let e = e as u32;
                let Some(c) = self.log_extent(e, &mut evicted) else {
                    no_room = true;
                    break;
                };
                if c {
                    added.push(e);
                } else if let Some(n) = self.al_pending.get(&e) {
                    recorded_by = recorded_by.max(*n);
                }
            }
        }
        // A sequential stream logs the extents it is about to enter while it still writes this
        // one, so that its writes do not stop at every extent boundary for a metadata write. A
        // hot extent that is never written only costs a few MiB of resync after a crash.
        let sequential = !no_room && len > 0 && self.recent_ends.contains(&off);
        self.recent_ends.rotate_right(1);
        self.recent_ends[0] = off.saturating_add(len);
        let mut ahead = Vec::new();
        if sequential && self.al.capacity() > 4 * AL_AHEAD as usize {
            let last = (off + len - 1) / EXTENT;
            let extents = self.size.div_ceil(EXTENT);
            for e in (last + 1..=last + AL_AHEAD).filter(|e| *e < extents) {
                let e = e as u32;
                if !self.al.contains(e) {
                    if self.log_extent(e, &mut evicted).is_none() {
                        break;
                    }
                    ahead.push(e);
                }
            }
        }
        if !added.is_empty() || !ahead.is_empty() {
            // Evicting an extent: its data must be durable first, the persisted bitmap covers
            // the rest.
            let n = self.persist(evicted);
            for e in added.iter().chain(&ahead) {
                self.al_pending.insert(*e, n);
            }
            if !added.is_empty() {
                recorded_by = n;
            }
        }
        if no_room {
            // The extents it did add are on their way to the disk like any others.
            self.active.retain(|(_, o)| *o != wid);
            return false;
        }
        if recorded_by > self.meta_done {
            // This write's extents are recorded by a metadata write still on its way to the
            // disk (its own, or an earlier one: two writes to one new extent in flight, e.g. the
            // parts of a large write, or an extent logged ahead of a sequential stream).
            self.meta_waiters.push((recorded_by, MetaWaiter::Write(wid)));
        } else {
            self.dispatch_write(wid);
        }
        true
    }

    fn dispatch_write(&mut self, wid: u64) {
        let replicating = self.replicating();
        let protocol = self.cfg.protocol;
        let Some(w) = self.writes.get_mut(&wid) else { return };
        // The request no longer needs its bytes once dispatched: the disk write and the frame to
        // the peer share one reference-counted buffer.
        let data = w.data.take();
        let zero = data.is_none();
        let (off, len, fua) = (w.off, w.len, w.fua);
        let peer_data = if replicating { data.clone() } else { None };
        let op = match data {
            Some(d) => DiskOp::Write { off, data: d, fua, writeback: false },
            None => DiskOp::Zero { off, len, fua },
        };
        if replicating {
            let seq = self.next_seq;
            self.next_seq += 1;
            self.seq_to_wid.insert(seq, wid);
            let mut flags = if fua { DATA_FUA } else { 0 };
            if zero {
                flags |= DATA_ZERO;
            }
            if protocol == Protocol::A {
                w.peer_done = true;
            }
            w.sent_at = self.now;
            self.replicated_bytes += u64::from(len);
            self.tlog.push((self.epoch, off, u64::from(len)));
            self.send(Msg::Data { seq, offset: off, len, flags, data: peer_data.unwrap_or_default() });
        } else {
            w.peer_done = true;
            self.bitmap.set_range(off, u64::from(len));
        }
        self.io(Io::AppWrite(wid), op);
    }

    fn maybe_complete_write(&mut self, wid: u64) {
        let done = self.writes.get(&wid).is_some_and(|w| w.local_done && w.peer_done);
        if !done {
            return;
        }
        let Some(w) = self.writes.remove(&wid) else { return };
        self.active.retain(|(_, o)| *o != wid);
        let result = match w.error {
            Some(e) => Err(e),
            None => Ok(()),
        };
        self.ack(w.req, result);
        self.start_waiting();
        self.pump_resync();
    }

    fn maybe_complete_flush(&mut self, fid: u64) {
        let done = self.flushes.get(&fid).is_some_and(|f| f.local_done && f.peer_epoch.is_none());
        if done {
            if let Some(f) = self.flushes.remove(&fid) {
                self.ack(f.req, Ok(()));
            }
        }
    }

    // ---------------------------------------------------------------- disk completions

    /// A disk operation or metadata write finished. `data` carries what a read returned.
    pub fn handle_disk_done(&mut self, now: Instant, io: u64, result: Result<Option<Bytes>, String>) {
        self.now = Some(now);
        let Some(purpose) = self.ios.remove(&io) else { return };
        match purpose {
            Io::AppWrite(wid) => {
                if let Some(w) = self.writes.get_mut(&wid) {
                    w.local_done = true;
                    if let Err(e) = &result {
                        warn!(error = %e, "local write failed");
                        w.error = Some(ReplError::Io(e.clone()));
                    }
                }
                self.maybe_complete_write(wid);
            }
            Io::AppFlush(fid) => {
                if let Some(f) = self.flushes.get_mut(&fid) {
                    f.local_done = true;
                    if let Err(e) = result {
                        let req = f.req;
                        self.flushes.remove(&fid);
                        self.actions.push_back(Action::Complete { req, result: Err(ReplError::Io(e)) });
                        return;
                    }
                }
                self.maybe_complete_flush(fid);
            }
            Io::PeerWrite { seq, epoch, conn } => {
                if let Some((off, len)) = self.peer_write_ranges.remove(&seq) {
                    if let Some(i) = self.peer_active.iter().position(|r| *r == (off, len)) {
                        self.peer_active.swap_remove(i);
                    }
                }
                self.peer_op_done(now, epoch);
                if conn == self.conn_id && self.established && result.is_ok() && self.cfg.protocol == Protocol::C {
                    self.send(Msg::WriteAck { seq });
                }
            }
            Io::PeerRs { off, len, conn, mark } => {
                self.peer_active_remove(off, len);
                if conn == self.conn_id && self.established && result.is_ok() {
                    if mark > self.meta_done {
                        // The source clears its bit on our acknowledgement, while the data
                        // may still sit in a volatile cache: the acknowledgement waits until
                        // this disk's own bitmap durably marks the blocks.
                        self.meta_waiters.push((mark, MetaWaiter::RsAck { off, len, conn }));
                    } else {
                        self.rs_acked(off, len);
                    }
                }
                self.start_peer_waiting(now);
            }
            Io::PeerFlush { epoch, conn } => {
                if conn == self.conn_id && self.established && result.is_ok() {
                    self.send(Msg::BarrierAck { epoch });
                }
            }
            Io::RsRead { off, len, conn, data: send_data } => {
                if conn != self.conn_id || !self.established {
                    self.active.retain(|(r, o)| !(*o == u64::MAX && r.0 == off));
                    self.start_waiting();
                    return;
                }
                match result {
                    Ok(Some(data)) => {
                        if is_zero(&data) {
                            self.send(Msg::RsData { offset: off, len, flags: DATA_ZERO, data: Bytes::new() });
                        } else if self.cfg.checksum_resync && !send_data {
                            // Checksum-based resync: send the hash; the target asks for the data
                            // only if its copy differs.
                            let hash = *blake3::hash(&data).as_bytes();
                            self.send(Msg::RsCsum { offset: off, len, hash });
                        } else {
                            self.resync_wire_bytes += data.len() as u64;
                            self.send(Msg::RsData { offset: off, len, flags: 0, data });
                        }
                    }
                    _ => {
                        warn!(off, len, "resync read failed");
                        self.active.retain(|(r, o)| !(*o == u64::MAX && r.0 == off));
                        self.rs_inflight -= 1;
                        self.start_waiting();
                    }
                }
            }
            Io::CsumRead { off, len, conn, hash } => {
                self.peer_active_remove(off, len);
                if conn == self.conn_id && self.established {
                    let same = matches!(&result, Ok(Some(d)) if *blake3::hash(d).as_bytes() == hash);
                    if same {
                        self.rs_acked(off, len);
                    } else {
                        self.send(Msg::RsNeed { offset: off, len });
                    }
                }
                self.start_peer_waiting(now);
            }
            Io::VerifyRead { off, len, conn, reply } => {
                if conn != self.conn_id || !self.established {
                    return;
                }
                let hash = match result {
                    Ok(Some(d)) => *blake3::hash(&d).as_bytes(),
                    _ => [0; 32],
                };
                if reply {
                    self.send(Msg::VerifyReply { offset: off, len, hash });
                } else if let Some(peer) = self.pending_peer_hash.remove(&off) {
                    self.verify_compare(off, len, hash, peer);
                } else {
                    self.pending_local_hash.insert(off, hash);
                }
            }
            Io::TargetFinalFlush { conn } => {
                if conn == self.conn_id && self.established && result.is_ok() {
                    if let Some(src) = self.pending_target_gen.take() {
                        self.gen.sync_target_done(&src);
                        self.bitmap.clear_all();
                        self.crashed_primary = false;
                        self.disk = DiskState::UpToDate;
                        self.persist_then(false, MetaWaiter::TargetDone(conn));
                    }
                }
            }
            Io::Meta(n) => {
                self.meta_in_flight = false;
                self.meta_done = n;
                if let Err(e) = result {
                    // Fail-stop: without durable metadata nothing can be promised.
                    warn!(error = %e, "metadata write failed; disk marked Diskless");
                    self.disk = DiskState::Diskless;
                }
                if let Some(f) = self.meta_again.take() {
                    self.persist(f);
                }
                let done = self.meta_done;
                self.al_pending.retain(|_, n| *n > done);
                let (ready, rest): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.meta_waiters).into_iter().partition(|(k, _)| *k <= done);
                self.meta_waiters = rest;
                for (_, w) in ready {
                    match w {
                        MetaWaiter::Write(wid) => self.dispatch_write(wid),
                        MetaWaiter::TargetOutdated(c) if c == self.conn_id => {
                            self.disk = DiskState::Inconsistent;
                            self.adopt_sync_gen();
                            self.persist_then(false, MetaWaiter::TargetReady(c));
                        }
                        MetaWaiter::TargetReady(c) if c == self.conn_id => {
                            self.target_ready = true;
                            while let Some(m) = self.rs_deferred.pop_front() {
                                self.handle_frame_authed(now, m);
                            }
                        }
                        MetaWaiter::RsAck { off, len, conn } if conn == self.conn_id && self.established => {
                            self.rs_acked(off, len);
                        }
                        MetaWaiter::TargetDone(c) if c == self.conn_id => {
                            self.disk = DiskState::UpToDate;
                            self.repl = ReplState::Established;
                            self.rs_total = 0;
                            info!("resync finished: disk UpToDate");
                            self.announce(false);
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- connection

    /// A transport to the peer is up: start the authenticated handshake.
    pub fn handle_connected(&mut self, now: Instant) {
        self.now = Some(now);
        self.close_at = None;
        self.conn_id += 1;
        self.authed = false;
        self.established = false;
        self.peer_state = None;
        self.peer_chal = None;
        let mut c = [0u8; 32];
        self.rng.fill_bytes(&mut c);
        self.my_chal = Some(c);
        self.conn = ConnState::Connecting;
        self.last_rx = Some(now);
        self.next_ping = Some(now + self.ping_every());
        self.send(Msg::Hello { challenge: c });
    }

    /// The transport to the peer broke (or was closed).
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.now = Some(now);
        let was = self.established;
        self.established = false;
        self.authed = false;
        self.my_chal = None;
        self.peer_chal = None;
        self.conn_id += 1;
        if self.conn != ConnState::StandAlone {
            self.conn = ConnState::Connecting;
        }
        let prev_repl = self.repl;
        self.repl = ReplState::Off;
        self.peer_role = None;
        self.peer_disk = None;
        self.rs_deferred.clear();
        self.target_ready = false;
        self.verify_cursor = None;
        self.pending_local_hash.clear();
        self.pending_peer_hash.clear();
        // Resync source: forget reads in flight (their ranges stay marked).
        self.active.retain(|(_, o)| *o != u64::MAX);
        self.rs_inflight = 0;
        self.peer_granted = false;
        if !was {
            self.start_waiting();
            self.change_after_disconnect(now);
            return;
        }
        warn!(?prev_repl, "connection to peer lost");
        // Writes not acknowledged by the peer, and writes since the last acknowledged barrier,
        // may be missing on the peer.
        for (_, off, len) in std::mem::take(&mut self.tlog) {
            self.bitmap.set_range(off, len);
        }
        let wids: Vec<u64> = self.writes.keys().copied().collect();
        for wid in &wids {
            if let Some(w) = self.writes.get_mut(wid) {
                if !w.peer_done {
                    w.peer_done = true;
                    self.bitmap.set_range(w.off, u64::from(w.len));
                }
            }
        }
        self.seq_to_wid.clear();
        for wid in wids {
            self.maybe_complete_write(wid);
        }
        let fids: Vec<u64> = self.flushes.keys().copied().collect();
        for fid in fids {
            if let Some(f) = self.flushes.get_mut(&fid) {
                f.peer_epoch = None;
            }
            self.maybe_complete_flush(fid);
        }
        let peer_was_in_sync = matches!(prev_repl, ReplState::Established | ReplState::VerifyS | ReplState::VerifyT);
        let unconfirmed = self.unconfirmed_sync.take();
        self.target_sync_gen = None;
        if self.role == Role::Primary && self.disk == DiskState::UpToDate && peer_was_in_sync {
            let fresh = self.fresh_uuid();
            match unconfirmed {
                // The peer got every resync block but may not have made them durable and
                // itself UpToDate: it is at the old bitmap generation, or at `current`.
                Some(before) => {
                    self.gen = before;
                    self.gen.new_current_unconfirmed(fresh);
                }
                // DRBD's rule: a new generation only if the bitmap does not track one already.
                None => self.gen.new_current(fresh),
            }
            self.persist(false);
        } else if prev_repl == ReplState::SyncTarget || prev_repl == ReplState::SyncSource {
            // A SyncTarget cleared bits for resync writes that may still sit in the cache (the
            // source cleared them too, on our acknowledgement): the data must be durable before
            // a bitmap without those bits is.
            self.persist(prev_repl == ReplState::SyncTarget);
        }
        self.start_waiting();
        self.change_after_disconnect(now);
    }

    /// The connection is gone with a state change pending: a request the peer may have answered
    /// fails (the peer may have granted it, but nothing changed here; the operator retries and
    /// a disconnected node decides alone); a change waiting for a handshake that failed is made
    /// alone now; a demotion is done anyway (the peer learns it at the next handshake).
    fn change_after_disconnect(&mut self, now: Instant) {
        let Some(c) = self.change.take() else { return };
        let result = match (c.kind, c.after_handshake) {
            (ChangeKind::Demote, _) => Ok(()),
            (ChangeKind::Invalidate, false) => Err(ReplError::ConnectionLost),
            (ChangeKind::Invalidate, true) => {
                self.commit_invalidate(now);
                Ok(())
            }
            (ChangeKind::Promote { .. }, false) => {
                warn!("connection lost during a promotion: not promoted");
                Err(ReplError::ConnectionLost)
            }
            (ChangeKind::Promote { force, wall }, true) => self.commit_promote(now, force, wall),
        };
        self.actions.push_back(Action::StateChangeDone { result });
    }

    /// The handshake established the connection: ask the peer for a change that waited for it.
    fn change_after_handshake(&mut self, now: Instant) {
        let Some(c) = self.change.as_mut() else { return };
        if !c.after_handshake || !self.established {
            return;
        }
        c.after_handshake = false;
        c.asked = Some(now);
        let (seq, kind) = (c.seq, c.kind);
        match kind {
            ChangeKind::Promote { .. } => {
                if self.peer_role == Some(Role::Primary) {
                    self.change = None;
                    self.actions.push_back(Action::StateChangeDone { result: Err(ReplError::PeerIsPrimary) });
                    return;
                }
                self.send(Msg::StateChangeReq { seq, change: CHANGE_PROMOTE });
            }
            ChangeKind::Demote => {
                self.announce(false);
                self.send(Msg::StateChangeReq { seq, change: CHANGE_DEMOTE });
            }
            ChangeKind::Invalidate => {
                if self.peer_disk != Some(DiskState::UpToDate) {
                    self.change = None;
                    self.actions.push_back(Action::StateChangeDone { result: Err(ReplError::PeerNotUpToDate) });
                    return;
                }
                self.send(Msg::StateChangeReq { seq, change: CHANGE_INVALIDATE });
            }
        }
    }

    /// A handshake is under way: a state change now would not reach the peer's decision.
    fn handshaking(&self) -> bool {
        !self.established && self.my_chal.is_some() && self.close_at.is_none()
    }

    /// A SyncTarget's disk became Inconsistent: take the source's generation (see
    /// `apply_decision`).
    fn adopt_sync_gen(&mut self) {
        if let Some(g) = self.target_sync_gen.take() {
            if g.current != UUID_JUST_CREATED {
                self.gen = g;
            }
        }
    }

    fn fresh_uuid(&mut self) -> u64 {
        loop {
            let v: u64 = self.rng.gen();
            if v > 16 {
                return v & !1;
            }
        }
    }

    /// Marks an UpToDate Secondary's disk Outdated, durably: it is consistent but known to be
    /// stale, so promotion needs `--force`.
    fn outdate(&mut self, why: &str) {
        if self.role == Role::Secondary && self.disk == DiskState::UpToDate {
            warn!(why, "disk Outdated");
            self.disk = DiskState::Outdated;
            self.persist(false);
        }
    }

    /// Administrative `disconnect`: go StandAlone.
    pub fn disconnect(&mut self, now: Instant) {
        if self.role == Role::Primary && self.established && self.disk == DiskState::UpToDate {
            // As DRBD: a Primary that disconnects on purpose outdates its peer first (the frame
            // goes out before the connection closes), so the peer cannot be promoted with stale
            // data without --force.
            self.announce_with(false, true);
        }
        self.conn = ConnState::StandAlone;
        self.actions.push_back(Action::CloseConnection);
        self.handle_disconnected(now);
        self.conn = ConnState::StandAlone;
    }

    /// The shell is stopping: the connection closes (the peer sees it go as after a broken
    /// link) and the metadata is written a last time, after the data. Writes in flight finish;
    /// call [`Replica::is_idle`] after each input and drop the replica once it is true.
    pub fn shut_down(&mut self, now: Instant) {
        self.now = Some(now);
        self.fail_suspended();
        self.close_at = None;
        self.actions.push_back(Action::CloseConnection);
        self.handle_disconnected(now);
        self.conn = ConnState::StandAlone;
        self.persist(true);
    }

    /// Nothing in flight: no disk operation, no metadata write, no client request.
    pub fn is_idle(&self) -> bool {
        self.ios.is_empty()
            && !self.meta_in_flight
            && self.meta_again.is_none()
            && self.writes.is_empty()
            && self.flushes.is_empty()
    }

    /// Administrative `connect [--discard-my-data]`.
    pub fn connect(&mut self, discard_my_data: bool) -> Result<(), ReplError> {
        if discard_my_data && self.role == Role::Primary {
            return Err(ReplError::State("a Primary cannot discard its data".into()));
        }
        if discard_my_data && self.conn != ConnState::StandAlone {
            // The flag is used at the next handshake only: set now, it would linger until some
            // later reconnect (a network blip days later) and discard this node's data then.
            return Err(ReplError::State(format!(
                "--discard-my-data needs a StandAlone resource (it is {}): disconnect first",
                self.conn
            )));
        }
        self.discard_my_data = discard_my_data;
        if self.conn == ConnState::StandAlone {
            self.conn = ConnState::Connecting;
        }
        Ok(())
    }

    fn close(&mut self, now: Instant, why: &str) {
        warn!(why, "closing connection to peer; going StandAlone");
        self.actions.push_back(Action::CloseConnection);
        self.handle_disconnected(now);
        self.conn = ConnState::StandAlone;
    }

    /// Refuses the connection after a handshake decision, but keeps the transport open briefly
    /// so that the peer, which needs our state to reach the same verdict, gets it first.
    fn refuse(&mut self, now: Instant, why: &str) {
        warn!(why, "refusing the peer; going StandAlone");
        self.handle_disconnected(now);
        self.conn = ConnState::StandAlone;
        self.close_at = Some(now + Duration::from_millis(300));
    }

    /// The keepalive period: `ping_interval`, but at least three pings per peer timeout, so a
    /// short timeout (a fast failover setting) never fires on an idle, healthy link.
    fn ping_every(&self) -> Duration {
        self.cfg.ping_interval.min(self.cfg.peer_timeout / 3)
    }

    /// Time passed: keepalives, peer timeout, resync pacing, automatic barriers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = Some(now);
        if self.close_at.is_some_and(|t| now >= t) {
            self.close_at = None;
            self.actions.push_back(Action::CloseConnection);
        }
        if self.my_chal.is_some() || self.established {
            if self.last_rx.is_some_and(|r| now >= r + self.cfg.peer_timeout) {
                warn!("peer timed out");
                self.actions.push_back(Action::CloseConnection);
                self.handle_disconnected(now);
                return;
            }
            if self.next_ping.is_some_and(|p| now >= p) {
                self.next_ping = Some(now + self.ping_every());
                if self.authed {
                    self.send(Msg::Ping);
                }
            }
        }
        if self.established && !self.tlog.is_empty() && self.last_barrier.is_none_or(|b| now >= b + AUTO_BARRIER) {
            self.send_barrier(now);
        }
        self.refill(now);
        self.pump_resync();
        self.pump_verify();
    }

    /// A frame from the peer.
    pub fn handle_frame(&mut self, now: Instant, msg: Msg) {
        self.now = Some(now);
        if self.close_at.is_some() || (self.my_chal.is_none() && !self.established) {
            return; // refused, or no connection in progress
        }
        self.last_rx = Some(now);
        if !self.authed {
            match msg {
                Msg::Hello { challenge } => {
                    let Some(mine) = self.my_chal else { return };
                    if challenge == mine || self.peer_chal.is_some() {
                        self.auth_failures += 1;
                        self.close(now, "reflected or repeated challenge");
                        return;
                    }
                    self.peer_chal = Some(challenge);
                    let mac = auth_mac(&self.cfg.auth_key, self.dialer, &challenge, &mine);
                    self.send(Msg::Auth { mac });
                }
                Msg::Auth { mac } => {
                    let (Some(mine), Some(theirs)) = (self.my_chal, self.peer_chal) else {
                        self.auth_failures += 1;
                        self.close(now, "authentication out of order");
                        return;
                    };
                    let want = auth_mac(&self.cfg.auth_key, !self.dialer, &mine, &theirs);
                    if !constant_eq(&want, &mac) {
                        self.auth_failures += 1;
                        self.auth_failed_streak += 1;
                        if self.auth_failed_streak == 1 {
                            warn!(
                                peer = %self.cfg.peer_name,
                                "authentication with the peer failed: the shared secrets differ; \
                                 retrying with backoff, repeated failures are counted in status \
                                 (auth_failures) and logged at debug level"
                            );
                        } else {
                            debug!(peer = %self.cfg.peer_name, failures = self.auth_failed_streak, "authentication failed again");
                        }
                        self.actions.push_back(Action::CloseConnection);
                        self.handle_disconnected(now);
                        return;
                    }
                    self.authed = true;
                    if self.auth_failed_streak > 0 {
                        info!(peer = %self.cfg.peer_name, after = self.auth_failed_streak, "peer authenticated after failures");
                    }
                    self.auth_failed_streak = 0;
                    debug!("peer authenticated");
                    self.announce(false);
                }
                other => {
                    self.auth_failures += 1;
                    warn!(frame = ?std::mem::discriminant(&other), "frame before authentication");
                    self.actions.push_back(Action::CloseConnection);
                    self.handle_disconnected(now);
                }
            }
            return;
        }
        self.handle_frame_authed(now, msg);
    }

    fn announce(&mut self, changed_gens: bool) {
        self.announce_with(changed_gens, false);
    }

    fn announce_with(&mut self, changed_gens: bool, outdate_peer: bool) {
        let st = StateMsg {
            gen: [self.gen.current, self.gen.bitmap, self.gen.history[0], self.gen.history[1]],
            size: self.size,
            promoted_at: self.promoted_at,
            changed_blocks: self.bitmap.count(),
            role: role_code(self.role),
            disk: disk_code(self.disk),
            flags: u8::from(self.crashed_primary)
                | u8::from(self.discard_my_data) << 1
                | u8::from(changed_gens) << 2
                | u8::from(outdate_peer) << 3,
        };
        self.send(Msg::State(st));
        if !outdate_peer {
            self.send(Msg::Bitmap(self.bitmap.to_bytes()));
        }
    }

    fn handle_frame_authed(&mut self, now: Instant, msg: Msg) {
        match msg {
            Msg::Hello { .. } | Msg::Auth { .. } => {}
            Msg::Ping => self.send(Msg::PingAck),
            Msg::PingAck => {}
            Msg::State(s) => {
                // The peer's state after a promotion we granted: it is Primary now, or it is not
                // and will not become so without asking again.
                self.peer_granted = false;
                self.peer_role = Some(if s.role == 1 { Role::Primary } else { Role::Secondary });
                self.peer_disk = Some(disk_from(s.disk));
                if s.flags & 8 != 0 {
                    // The Primary is leaving on purpose and will write without us.
                    self.outdate("the Primary disconnected and goes on without this node");
                    return;
                }
                if s.disk == disk_code(DiskState::UpToDate) && s.gen[0] == self.gen.current {
                    // The last SyncTarget made the resync durable and adopted our identifiers.
                    self.unconfirmed_sync = None;
                }
                self.peer_state = Some(s);
            }
            Msg::Bitmap(bytes) => {
                let Some(ps) = self.peer_state else {
                    self.close(now, "bitmap before state");
                    return;
                };
                if ps.size != self.size {
                    let why =
                        format!("peer device size differs: this node has {} bytes, the peer {}", self.size, ps.size);
                    self.close(now, &why);
                    return;
                }
                let Some(peer_bm) = Bitmap::from_bytes(self.size, &bytes) else {
                    self.close(now, "peer sent a bitmap of the wrong length");
                    return;
                };
                if !self.established || ps.flags & 4 != 0 {
                    self.decide(now, ps, &peer_bm);
                    self.change_after_handshake(now);
                }
            }
            Msg::StateChangeReq { seq, change } => self.state_change_request(seq, change),
            Msg::StateChangeReply { seq, result } => self.state_change_reply(now, seq, result),
            Msg::Data { seq, offset, len, flags, data } => {
                if self.role == Role::Primary {
                    // Two Primaries on one connection: both may have written. Never expected
                    // (promotion is a two-phase change), but if it happens it is a split brain.
                    self.split_brains += 1;
                    warn!("split brain detected: the peer wrote to this Primary");
                    self.close(now, "peer sent data to a Primary");
                    return;
                }
                if offset.checked_add(u64::from(len)).is_none_or(|e| e > self.size) {
                    self.close(now, "peer wrote outside the device");
                    return;
                }
                if self.cfg.protocol == Protocol::B {
                    self.send(Msg::RecvAck { seq });
                }
                let epoch = self.recv_epoch;
                *self.epoch_inflight.entry(epoch).or_default() += 1;
                self.peer_waiting.push_back(PeerOp::Write { seq, epoch, off: offset, len, flags, data });
                self.start_peer_waiting(now);
            }
            Msg::Barrier { epoch } => {
                self.recv_epoch = epoch.saturating_add(1);
                self.barriers.push_back(epoch);
                self.check_barriers();
            }
            Msg::RecvAck { seq } => {
                if self.cfg.protocol == Protocol::B {
                    self.peer_ack(now, seq);
                }
            }
            Msg::WriteAck { seq } => self.peer_ack(now, seq),
            Msg::BarrierAck { epoch } => {
                self.tlog.retain(|(e, _, _)| *e > epoch);
                let fids: Vec<u64> = self.flushes.keys().copied().collect();
                for fid in fids {
                    if let Some(f) = self.flushes.get_mut(&fid) {
                        if f.peer_epoch.is_some_and(|e| e <= epoch) {
                            f.peer_epoch = None;
                        }
                    }
                    self.maybe_complete_flush(fid);
                }
            }
            Msg::RsData { offset, len, flags, data } => {
                if self.repl != ReplState::SyncTarget {
                    return;
                }
                if !self.target_ready {
                    self.rs_deferred.push_back(Msg::RsData { offset, len, flags, data });
                    return;
                }
                if offset.checked_add(u64::from(len)).is_none_or(|e| e > self.size) {
                    self.close(now, "resync data outside the device");
                    return;
                }
                // DRBD's rule: a SyncTarget's bitmap clears a bit only once the data is stable,
                // and a crashed SyncTarget resyncs again from its persisted bitmap. The source
                // may resync blocks this disk never marked (written on the Primary after it sent
                // its bitmap, before the handshake finished): mark them durably first, or a crash
                // before the data is flushed would leave them missing and unmarked on both sides.
                let first = offset / BLOCK;
                let last = (offset + u64::from(len)).div_ceil(BLOCK);
                let mut mark = 0;
                if (first..last).any(|b| !self.bitmap.get(b)) {
                    for b in first..last {
                        self.bitmap.set(b);
                    }
                    mark = self.persist(true);
                }
                self.peer_waiting.push_back(PeerOp::Rs { off: offset, len, flags, data, mark });
                self.start_peer_waiting(now);
            }
            Msg::RsCsum { offset, len, hash } => {
                if self.repl != ReplState::SyncTarget {
                    return;
                }
                if !self.target_ready {
                    self.rs_deferred.push_back(Msg::RsCsum { offset, len, hash });
                    return;
                }
                if offset.checked_add(u64::from(len)).is_none_or(|e| e > self.size) {
                    self.close(now, "resync checksum outside the device");
                    return;
                }
                self.peer_waiting.push_back(PeerOp::Csum { off: offset, len, hash });
                self.start_peer_waiting(now);
            }
            Msg::RsNeed { offset, len } => {
                // The range is still held active (until RsAck): read it again and send the data.
                if self.repl == ReplState::SyncSource
                    && offset.checked_add(u64::from(len)).is_some_and(|e| e <= self.size)
                {
                    let conn = self.conn_id;
                    self.io(Io::RsRead { off: offset, len, conn, data: true }, DiskOp::Read { off: offset, len });
                }
            }
            Msg::RsAck { offset, len } => {
                if self.repl != ReplState::SyncSource {
                    return;
                }
                self.active.retain(|(r, o)| !(*o == u64::MAX && r.0 == offset));
                self.bitmap.clear_range(offset, u64::from(len));
                self.resync_bytes += u64::from(len);
                self.rs_inflight = self.rs_inflight.saturating_sub(1);
                self.start_waiting();
                self.pump_resync();
            }
            Msg::SyncDone { gen } => {
                if self.repl != ReplState::SyncTarget {
                    return;
                }
                if !self.target_ready || !self.rs_deferred.is_empty() {
                    self.rs_deferred.push_back(Msg::SyncDone { gen });
                    return;
                }
                let src = GenIds { current: gen[0], bitmap: gen[1], history: [gen[2], gen[3]] };
                // Data first, then the metadata saying it is UpToDate.
                self.pending_target_gen = Some(src);
                let conn = self.conn_id;
                self.io(Io::TargetFinalFlush { conn }, DiskOp::Flush);
            }
            Msg::VerifyReq { offset, len } => {
                if offset.checked_add(u64::from(len)).is_none_or(|e| e > self.size) {
                    return;
                }
                if self.repl == ReplState::Established {
                    self.repl = ReplState::VerifyT;
                }
                let conn = self.conn_id;
                self.io(Io::VerifyRead { off: offset, len, conn, reply: true }, DiskOp::Read { off: offset, len });
                if offset + u64::from(len) >= self.size && self.repl == ReplState::VerifyT {
                    self.repl = ReplState::Established;
                }
            }
            Msg::VerifyReply { offset, len, hash } => {
                if let Some(local) = self.pending_local_hash.remove(&offset) {
                    self.verify_compare(offset, len, local, hash);
                } else {
                    self.pending_peer_hash.insert(offset, hash);
                }
            }
        }
    }

    fn peer_ack(&mut self, now: Instant, seq: u64) {
        if let Some(wid) = self.seq_to_wid.remove(&seq) {
            if let Some(w) = self.writes.get_mut(&wid) {
                w.peer_done = true;
                if let Some(t) = w.sent_at.take() {
                    if self.peer_latencies.len() < 4096 {
                        self.peer_latencies.push(now.saturating_duration_since(t));
                    }
                }
            }
            self.maybe_complete_write(wid);
        }
    }

    fn decide(&mut self, now: Instant, ps: StateMsg, peer_bm: &Bitmap) {
        if ps.size != self.size {
            let why = format!("peer device size differs: this node has {} bytes, the peer {}", self.size, ps.size);
            self.close(now, &why);
            return;
        }
        let peer_primary = ps.role == 1;
        let me = NodeFacts { gen: self.gen, crashed_primary: self.crashed_primary };
        let peer = NodeFacts {
            gen: GenIds { current: ps.gen[0], bitmap: ps.gen[1], history: [ps.gen[2], ps.gen[3]] },
            crashed_primary: ps.flags & 1 != 0,
        };
        let peer_discard = ps.flags & 2 != 0;
        let mut decision = compare(&me, &peer, self.cfg.tiebreak);
        info!(?decision, mine = ?self.gen, peer = ?peer.gen, "generation identifiers compared");
        if peer_primary && self.role == Role::Primary {
            // Both were promoted while apart. If both wrote since their common generation, that
            // is a split brain and counted as one, whatever happens next.
            if matches!(decision, SyncDecision::SplitBrain | SyncDecision::SplitBrainFull) {
                self.split_brains += 1;
                warn!(mine = ?self.gen, peer = ?peer.gen, "split brain detected: both nodes are Primary and both wrote since their common generation");
            }
            self.refuse(now, "both nodes are Primary");
            return;
        }
        if self.discard_my_data || peer_discard {
            if self.discard_my_data && peer_discard {
                self.refuse(now, "both sides asked to discard their data");
                return;
            }
            let full = matches!(decision, SyncDecision::SplitBrainFull | SyncDecision::Unrelated);
            decision = match (self.discard_my_data, full) {
                (true, false) => SyncDecision::BitmapTarget,
                (true, true) => SyncDecision::FullTarget,
                (false, false) => SyncDecision::BitmapSource,
                (false, true) => SyncDecision::FullSource,
            };
            self.discard_my_data = false;
        }
        if matches!(decision, SyncDecision::SplitBrain | SyncDecision::SplitBrainFull) {
            self.split_brains += 1;
            warn!(mine = ?self.gen, peer = ?peer.gen, "split brain detected: both nodes wrote since their common generation");
            let full = decision == SyncDecision::SplitBrainFull;
            let victim = if self.role == Role::Primary || peer_primary {
                None
            } else {
                resolve_split_brain(
                    self.cfg.after_sb_0pri,
                    SbFacts { changed_blocks: self.bitmap.count(), promoted_at: self.promoted_at },
                    SbFacts { changed_blocks: ps.changed_blocks, promoted_at: ps.promoted_at },
                    self.cfg.tiebreak,
                )
            };
            decision = match (victim, full) {
                (None, _) => {
                    self.refuse(now, "split brain: refusing to sync (after-sb-0pri policy)");
                    return;
                }
                (Some(true), false) => SyncDecision::BitmapTarget,
                (Some(true), true) => SyncDecision::FullTarget,
                (Some(false), false) => SyncDecision::BitmapSource,
                (Some(false), true) => SyncDecision::FullSource,
            };
            info!(?decision, "split brain resolved by policy");
        }
        self.apply_decision(now, decision, ps, peer_bm);
    }

    fn apply_decision(&mut self, now: Instant, decision: SyncDecision, ps: StateMsg, peer_bm: &Bitmap) {
        let peer_primary = ps.role == 1;
        let peer_disk = disk_from(ps.disk);
        self.established = true;
        self.conn = ConnState::Connected;
        match decision {
            SyncDecision::NoSync
                if matches!(
                    (self.disk, peer_disk),
                    (DiskState::Inconsistent, DiskState::UpToDate) | (DiskState::UpToDate, DiskState::Inconsistent)
                ) =>
            {
                // Same generation, but one side is still Inconsistent: a resync was cut short
                // after the source had sent everything (it finished, the target never got
                // SyncDone). The target's bitmap still marks whatever it may lack: resync it.
                let d = if self.disk == DiskState::UpToDate {
                    SyncDecision::BitmapSource
                } else {
                    SyncDecision::BitmapTarget
                };
                self.established = false;
                self.apply_decision(now, d, ps, peer_bm);
            }
            SyncDecision::NoSync
                if self.disk == DiskState::UpToDate && peer_disk == DiskState::UpToDate && {
                    let mut u = self.bitmap.clone();
                    u.union(peer_bm);
                    u.count() > 0
                } =>
            {
                // Same generation but blocks marked (e.g. by an online verify): resync them from
                // the Primary, or from the tiebreak node.
                let source = self.role == Role::Primary || (!peer_primary && self.cfg.tiebreak);
                let d = if source { SyncDecision::BitmapSource } else { SyncDecision::BitmapTarget };
                self.established = false;
                self.apply_decision(now, d, ps, peer_bm);
            }
            SyncDecision::NoSync => {
                self.repl = ReplState::Established;
                if self.disk == DiskState::Outdated && peer_disk == DiskState::UpToDate {
                    // Same data generation as an UpToDate peer: nothing was missed after all.
                    self.disk = DiskState::UpToDate;
                    self.persist(false);
                }
                info!("connected, in sync");
            }
            SyncDecision::BitmapSource | SyncDecision::FullSource => {
                if peer_primary || self.disk != DiskState::UpToDate {
                    self.refuse(now, "would have to overwrite a Primary, or my disk is not UpToDate");
                    return;
                }
                if decision == SyncDecision::FullSource {
                    self.bitmap.set_all();
                } else {
                    self.bitmap.union(peer_bm);
                }
                self.repl = ReplState::SyncSource;
                self.peer_disk = Some(DiskState::Inconsistent);
                self.rs_cursor = 0;
                self.rs_total = self.bitmap.count().max(1);
                info!(blocks = self.bitmap.count(), "resync started as SyncSource");
                self.persist(false);
                self.pump_resync();
                self.maybe_finish_resync();
            }
            SyncDecision::BitmapTarget | SyncDecision::FullTarget => {
                if self.role == Role::Primary {
                    self.refuse(now, "a Primary cannot become SyncTarget");
                    return;
                }
                if decision == SyncDecision::FullTarget {
                    self.bitmap.set_all();
                } else {
                    self.bitmap.union(peer_bm);
                }
                self.repl = ReplState::SyncTarget;
                // As DRBD's SyncTarget takes the source's sync UUID: once this disk is
                // Inconsistent, its generation is the one the source's bitmap counts from (or the
                // source's current when it has no bitmap generation). If the resync is cut short,
                // even after the source counted it finished and started a new generation, the
                // next comparison finds a bitmap resync instead of losing this node's generation.
                let sync_id = match ps.gen {
                    [c, ..] if c == self.gen.current => c,
                    [_, b, ..] if b != 0 => b,
                    [c, ..] => c,
                };
                self.target_sync_gen = Some(GenIds { current: sync_id, bitmap: 0, history: [ps.gen[2], ps.gen[3]] });
                self.rs_total = self.bitmap.count().max(1);
                self.target_ready = false;
                let conn = self.conn_id;
                info!(blocks = self.bitmap.count(), "resync started as SyncTarget");
                if self.disk == DiskState::UpToDate {
                    // The peer's generation identifiers show newer data: this disk is Outdated
                    // (durably, so that a crash now leaves it unpromotable without --force), and
                    // Inconsistent once the first resync write may land.
                    self.outdate("the peer has newer data");
                    self.persist_then(false, MetaWaiter::TargetOutdated(conn));
                } else {
                    self.disk = DiskState::Inconsistent;
                    self.adopt_sync_gen();
                    self.persist_then(false, MetaWaiter::TargetReady(conn));
                }
            }
            _ => {
                self.refuse(now, "unrelated data: refusing to connect");
            }
        }
    }

    // ---------------------------------------------------------------- peer writes

    fn peer_active_remove(&mut self, off: u64, len: u32) {
        if let Some(i) = self.peer_active.iter().position(|r| *r == (off, u64::from(len).max(1))) {
            self.peer_active.swap_remove(i);
        }
    }

    fn peer_op_done(&mut self, now: Instant, epoch: u64) {
        if let Some(c) = self.epoch_inflight.get_mut(&epoch) {
            *c -= 1;
            if *c == 0 {
                self.epoch_inflight.remove(&epoch);
            }
        }
        self.check_barriers();
        self.start_peer_waiting(now);
    }

    fn start_peer_waiting(&mut self, _now: Instant) {
        let mut blocked: Vec<(u64, u64)> = Vec::new();
        let mut i = 0;
        while i < self.peer_waiting.len() {
            let (off, len) = self.peer_waiting[i].range();
            let r = (off, len.max(1));
            if self.peer_active.iter().any(|a| overlaps(*a, r)) || blocked.iter().any(|b| overlaps(*b, r)) {
                blocked.push(r);
                i += 1;
                continue;
            }
            let Some(op) = self.peer_waiting.remove(i) else { break };
            self.peer_active.push(r);
            let conn = self.conn_id;
            match op {
                PeerOp::Write { seq, epoch, off, len, flags, data } => {
                    let fua = flags & DATA_FUA != 0;
                    let disk_op = if flags & DATA_ZERO != 0 {
                        DiskOp::Zero { off, len, fua }
                    } else {
                        DiskOp::Write { off, data, fua, writeback: false }
                    };
                    self.io(Io::PeerWrite { seq, epoch, conn }, disk_op);
                    self.peer_write_ranges.insert(seq, (off, u64::from(len).max(1)));
                }
                PeerOp::Csum { off, len, hash } => {
                    self.io(Io::CsumRead { off, len, conn, hash }, DiskOp::Read { off, len });
                }
                PeerOp::Rs { off, len, flags, data, mark } => {
                    let disk_op = if flags & DATA_ZERO != 0 {
                        DiskOp::Zero { off, len, fua: false }
                    } else {
                        DiskOp::Write { off, data, fua: false, writeback: true }
                    };
                    self.io(Io::PeerRs { off, len, conn, mark }, disk_op);
                }
            }
        }
    }

    fn check_barriers(&mut self) {
        while let Some(&e) = self.barriers.front() {
            if self.epoch_inflight.range(..=e).next().is_some() {
                break;
            }
            self.barriers.pop_front();
            let conn = self.conn_id;
            self.io(Io::PeerFlush { epoch: e, conn }, DiskOp::Flush);
        }
    }

    // ---------------------------------------------------------------- resync source

    fn refill(&mut self, now: Instant) {
        let burst = (self.cfg.resync_rate as f64 / 10.0).max((self.rs_chunk_blocks() * BLOCK) as f64);
        if let Some(last) = self.rs_last_refill {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            self.rs_tokens = (self.rs_tokens + dt * self.cfg.resync_rate as f64).min(burst);
        }
        self.rs_last_refill = Some(now);
    }

    fn rs_chunk_blocks(&self) -> u64 {
        (self.cfg.resync_request / BLOCK).clamp(1, (64 << 20) / BLOCK)
    }

    fn pump_resync(&mut self) {
        if self.repl != ReplState::SyncSource || !self.established {
            return;
        }
        let mut wrapped = false;
        while self.rs_inflight < RS_MAX_INFLIGHT && self.rs_tokens > 0.0 {
            let Some(b) = self.bitmap.next_set(self.rs_cursor) else {
                if wrapped || self.rs_cursor == 0 {
                    break;
                }
                wrapped = true;
                self.rs_cursor = 0;
                continue;
            };
            // Coalesce contiguous marked blocks.
            let mut n = 1;
            let chunk = self.rs_chunk_blocks();
            while n < chunk && b + n < self.bitmap.blocks() && self.bitmap.get(b + n) {
                n += 1;
            }
            let off = b * BLOCK;
            let len = (n * BLOCK).min(self.size - off);
            let r = (off, len);
            self.rs_cursor = b + n;
            if self.active.iter().any(|(a, _)| overlaps(*a, r)) {
                continue; // an application write owns it; come back later
            }
            self.active.push((r, u64::MAX));
            self.rs_inflight += 1;
            self.rs_tokens -= len as f64;
            let conn = self.conn_id;
            self.io(Io::RsRead { off, len: len as u32, conn, data: false }, DiskOp::Read { off, len: len as u32 });
        }
        self.maybe_finish_resync();
    }

    fn maybe_finish_resync(&mut self) {
        if self.repl != ReplState::SyncSource || self.rs_inflight > 0 || self.bitmap.count() > 0 {
            return;
        }
        self.unconfirmed_sync = Some(self.gen);
        self.gen.sync_source_done();
        self.crashed_primary = false;
        self.repl = ReplState::Established;
        self.peer_disk = Some(DiskState::UpToDate);
        self.rs_total = 0;
        info!("resync finished as SyncSource");
        self.persist(false);
        let g = self.gen;
        self.send(Msg::SyncDone { gen: [g.current, g.bitmap, g.history[0], g.history[1]] });
    }

    // ---------------------------------------------------------------- verify

    /// Starts an online verify (this node is VerifyS). Blocks that differ are marked out of sync
    /// so that the next resync (e.g. after `disconnect` + `connect`) repairs them.
    pub fn start_verify(&mut self) -> Result<(), ReplError> {
        if !self.established || self.repl != ReplState::Established {
            return Err(ReplError::State("verify needs an established connection".into()));
        }
        self.repl = ReplState::VerifyS;
        self.verify_cursor = Some(0);
        self.verify_mismatches = 0;
        self.pump_verify();
        Ok(())
    }

    fn pump_verify(&mut self) {
        if self.repl != ReplState::VerifyS {
            return;
        }
        while self.verify_inflight < 4 && self.rs_tokens > 0.0 {
            let Some(off) = self.verify_cursor else { break };
            if off >= self.size {
                self.verify_cursor = None;
                break;
            }
            let len = VERIFY_CHUNK.min(self.size - off) as u32;
            self.verify_cursor = Some(off + u64::from(len));
            self.verify_inflight += 1;
            self.rs_tokens -= f64::from(len);
            let conn = self.conn_id;
            self.send(Msg::VerifyReq { offset: off, len });
            self.io(Io::VerifyRead { off, len, conn, reply: false }, DiskOp::Read { off, len });
        }
        if self.verify_cursor.is_none() && self.verify_inflight == 0 {
            self.repl = ReplState::Established;
            info!(mismatched_blocks = self.verify_mismatches, "online verify finished");
            if self.verify_mismatches > 0 {
                self.persist(false);
            }
        }
    }

    fn verify_compare(&mut self, off: u64, len: u32, a: [u8; 32], b: [u8; 32]) {
        self.verify_inflight = self.verify_inflight.saturating_sub(1);
        if a != b {
            let blocks = u64::from(len).div_ceil(BLOCK);
            warn!(off, len, "online verify: range differs");
            self.verify_mismatches += blocks;
            self.bitmap.set_range(off, u64::from(len));
        }
        self.pump_verify();
    }

    // ---------------------------------------------------------------- roles

    /// `primary [--force]`. `wall` is the wall-clock time in seconds (for split-brain policies).
    ///
    /// While connected, promotion is DRBD's cluster-wide two-phase state change: this node asks
    /// the peer ([`Msg::StateChangeReq`]) and becomes Primary only once the peer granted it;
    /// the peer grants only if it is not Primary and not being promoted itself (two requests
    /// that cross: the node whose name sorts first wins, the other one's request fails with
    /// [`ReplError::ConcurrentPromotion`]). Then [`Change::Pending`] is returned and the outcome
    /// comes as [`Action::StateChangeDone`]. During a handshake the request waits for it to
    /// end. A grant that comes `peer_timeout` or more after the request is refused (a stalled
    /// node: the peer may have lost it and promoted alone meanwhile). A disconnected node is
    /// promoted at once, as DRBD does (that is what failover needs): if both nodes write while
    /// apart, the next handshake finds a split brain.
    pub fn promote(&mut self, now: Instant, force: bool, wall: u64) -> Result<Change, ReplError> {
        if self.role == Role::Primary {
            return Ok(Change::Done);
        }
        if self.change.is_some() {
            return Err(ReplError::ChangeInProgress);
        }
        if self.peer_granted {
            return Err(ReplError::ConcurrentPromotion);
        }
        if self.established && self.peer_role == Some(Role::Primary) {
            return Err(ReplError::PeerIsPrimary);
        }
        self.now = Some(now);
        // Alone (no connected peer, no handshake that could bring its grant): the lease.
        if self.cfg.quorum.is_some() && !self.established && !self.handshaking() && !self.lease_valid_at(now) {
            return Err(ReplError::NoQuorum);
        }
        self.check_promotable(force)?;
        // A handshake in progress could bring the peer's grant: wait for it — unless the quorum
        // gate's lease is valid, which lets this node write alone anyway. A peer frozen with its
        // kernel still accepting connections stalls the handshake a whole peer timeout; a peer
        // that completes it later finds this node Primary (two Primaries are refused; a
        // Secondary syncs from here).
        let alone_with_lease = self.cfg.quorum.is_some() && !self.established && self.lease_valid_at(now);
        if self.established || (self.handshaking() && !alone_with_lease) {
            let seq = self.next_change_seq;
            self.next_change_seq += 1;
            let after_handshake = !self.established;
            let asked = (!after_handshake).then_some(now);
            self.change =
                Some(PendingChange { seq, kind: ChangeKind::Promote { force, wall }, after_handshake, asked });
            if !after_handshake {
                self.send(Msg::StateChangeReq { seq, change: CHANGE_PROMOTE });
            }
            debug!(seq, after_handshake, "promotion asked of the peer");
            return Ok(Change::Pending);
        }
        self.commit_promote(now, force, wall).map(|()| Change::Done)
    }

    fn check_promotable(&self, force: bool) -> Result<(), ReplError> {
        if self.disk != DiskState::UpToDate {
            if !force {
                return Err(ReplError::DiskNotUpToDate(self.disk));
            }
            if self.repl == ReplState::SyncTarget {
                return Err(ReplError::State("cannot force a SyncTarget to Primary".into()));
            }
        }
        Ok(())
    }

    /// Becomes Primary: alone (disconnected), or with the peer's grant.
    fn commit_promote(&mut self, now: Instant, force: bool, wall: u64) -> Result<(), ReplError> {
        if self.role == Role::Primary {
            return Ok(());
        }
        if self.cfg.quorum.is_some() && !self.established && !self.lease_valid_at(now) {
            warn!("promotion refused: no peer and no valid lease (quorum)");
            return Err(ReplError::NoQuorum);
        }
        if let Err(e) = self.check_promotable(force) {
            if self.established {
                // The peer granted and waits for our state to clear its grant.
                self.announce(false);
            }
            return Err(e);
        }
        if self.disk != DiskState::UpToDate {
            let fresh = self.fresh_uuid();
            self.gen.force_new(fresh);
            self.disk = DiskState::UpToDate;
            self.role = Role::Primary;
            self.promoted_at = wall;
            self.persist(false);
            info!("forced to Primary with a new data generation");
            if self.established {
                // Both sides re-decide with the new identifiers.
                if let Some(ps) = self.peer_state {
                    let peer_bm = Bitmap::new(self.size);
                    self.announce(true);
                    self.decide(now, ps, &peer_bm);
                }
            }
            return Ok(());
        }
        if !self.replicating() {
            let fresh = self.fresh_uuid();
            self.gen.new_current(fresh);
        }
        self.role = Role::Primary;
        self.promoted_at = wall;
        self.persist(false);
        info!("promoted to Primary");
        if self.established {
            self.announce(false);
        }
        Ok(())
    }

    /// The peer asks for a state change: grant or refuse it (the first phase of its change).
    fn state_change_request(&mut self, seq: u64, change: u8) {
        let result = match change {
            CHANGE_PROMOTE => {
                let promoting = matches!(self.change, Some(PendingChange { kind: ChangeKind::Promote { .. }, .. }));
                if self.role == Role::Primary {
                    REPLY_PEER_PRIMARY
                } else if promoting && self.cfg.tiebreak {
                    info!("concurrent promotion requests: this node wins the tie-break, the peer's is refused");
                    REPLY_PEER_PROMOTING
                } else {
                    if promoting {
                        warn!("concurrent promotion requests: the peer wins the tie-break; this node stays Secondary");
                        self.change = None;
                        self.actions.push_back(Action::StateChangeDone { result: Err(ReplError::ConcurrentPromotion) });
                    }
                    self.peer_granted = true;
                    REPLY_GRANTED
                }
            }
            // Our view of the peer's role came with its `State` frame, just before.
            CHANGE_DEMOTE => REPLY_GRANTED,
            // The peer will resync everything from this node: it must be UpToDate and stay so
            // (not invalidated itself meanwhile).
            CHANGE_INVALIDATE => {
                let invalidating = matches!(self.change, Some(PendingChange { kind: ChangeKind::Invalidate, .. }));
                if self.disk != DiskState::UpToDate {
                    REPLY_NOT_UP_TO_DATE
                } else if self.peer_granted || (invalidating && self.cfg.tiebreak) {
                    REPLY_CONCURRENT_CHANGE
                } else {
                    if invalidating {
                        warn!("concurrent invalidate requests: the peer wins the tie-break; this node keeps its data");
                        self.change = None;
                        self.actions.push_back(Action::StateChangeDone { result: Err(ReplError::ConcurrentChange) });
                    }
                    self.peer_granted = true;
                    REPLY_GRANTED
                }
            }
            _ => REPLY_UNKNOWN_CHANGE,
        };
        debug!(seq, change, result, "state change asked by the peer");
        self.send(Msg::StateChangeReply { seq, result });
    }

    /// The peer answered our state change request (the second phase: commit or give up).
    fn state_change_reply(&mut self, now: Instant, seq: u64, result: u8) {
        let Some(c) = self.change.filter(|c| c.seq == seq && !c.after_handshake) else {
            return; // an answer to a request given up already
        };
        self.change = None;
        let outcome = match (c.kind, result) {
            (ChangeKind::Demote, _) => Ok(()),
            (ChangeKind::Invalidate, REPLY_GRANTED) => {
                self.commit_invalidate(now);
                Ok(())
            }
            (ChangeKind::Invalidate, REPLY_NOT_UP_TO_DATE) => Err(ReplError::PeerNotUpToDate),
            (ChangeKind::Invalidate, REPLY_CONCURRENT_CHANGE) => Err(ReplError::ConcurrentChange),
            (ChangeKind::Invalidate, code) => Err(ReplError::PeerRefused(code)),
            // A grant read `peer_timeout` or more after the request (this node was stopped, or
            // the link stalled) may be stale: the peer may have declared this node gone since,
            // and promoted alone (with the witness's lease) and written. Before that instant it
            // cannot have: it declares the connection dead only `peer_timeout` after the last
            // frame it received, which is no earlier than the request.
            (ChangeKind::Promote { .. }, REPLY_GRANTED)
                if c.asked.is_some_and(|t| now >= t + self.cfg.peer_timeout) =>
            {
                Err(ReplError::State(
                    "the peer's grant came a peer timeout or more after the request (this node was stalled): \
                     the peer may have promoted alone since; not promoted, retry"
                        .into(),
                ))
            }
            (ChangeKind::Promote { force, wall }, REPLY_GRANTED) => self.commit_promote(now, force, wall),
            (ChangeKind::Promote { .. }, REPLY_PEER_PRIMARY) => Err(ReplError::PeerIsPrimary),
            (ChangeKind::Promote { .. }, REPLY_PEER_PROMOTING) => Err(ReplError::ConcurrentPromotion),
            (ChangeKind::Promote { .. }, code) => Err(ReplError::PeerRefused(code)),
        };
        if let Err(e) = &outcome {
            info!(error = %e, "state change refused by the peer");
        }
        self.actions.push_back(Action::StateChangeDone { result: outcome });
    }

    /// `secondary`. While connected, the command is done once the peer has seen the new role
    /// ([`Change::Pending`], then [`Action::StateChangeDone`]), so that the peer can be
    /// promoted right after. Refused while writes are in flight. (Refusing while a client has
    /// the device open is the shell's business: the core does not know about clients.)
    pub fn demote(&mut self) -> Result<Change, ReplError> {
        if self.role == Role::Secondary {
            return Ok(Change::Done);
        }
        if self.change.is_some() {
            return Err(ReplError::ChangeInProgress);
        }
        if !self.writes.is_empty() || !self.flushes.is_empty() {
            return Err(ReplError::Busy);
        }
        // Held acknowledgements are never given by a Secondary: their writes fail (EIO).
        self.fail_suspended();
        self.role = Role::Secondary;
        self.al.clear();
        self.persist(true);
        info!("demoted to Secondary");
        if self.established || self.handshaking() {
            let seq = self.next_change_seq;
            self.next_change_seq += 1;
            let after_handshake = !self.established;
            self.change = Some(PendingChange { seq, kind: ChangeKind::Demote, after_handshake, asked: None });
            if !after_handshake {
                self.announce(false);
                self.send(Msg::StateChangeReq { seq, change: CHANGE_DEMOTE });
            }
            return Ok(Change::Pending);
        }
        Ok(Change::Done)
    }

    /// `invalidate`: declare the local data bad; a full resync from the peer follows on the next
    /// connection. While connected this is a two-phase change like a promotion: the peer must
    /// be UpToDate and not invalidating itself (two that cross: the node whose name sorts first
    /// wins), or both copies could end up bad; then [`Change::Pending`] and
    /// [`Action::StateChangeDone`]. Disconnected, it is done at once (as in DRBD).
    pub fn invalidate(&mut self, now: Instant) -> Result<Change, ReplError> {
        if self.role == Role::Primary {
            return Err(ReplError::State("cannot invalidate a Primary".into()));
        }
        if self.change.is_some() {
            return Err(ReplError::ChangeInProgress);
        }
        if self.peer_granted {
            return Err(ReplError::ConcurrentChange);
        }
        if self.established && self.peer_disk != Some(DiskState::UpToDate) {
            return Err(ReplError::PeerNotUpToDate);
        }
        if self.established || self.handshaking() {
            let seq = self.next_change_seq;
            self.next_change_seq += 1;
            let after_handshake = !self.established;
            self.change = Some(PendingChange { seq, kind: ChangeKind::Invalidate, after_handshake, asked: None });
            if !after_handshake {
                self.send(Msg::StateChangeReq { seq, change: CHANGE_INVALIDATE });
            }
            return Ok(Change::Pending);
        }
        self.commit_invalidate(now);
        Ok(Change::Done)
    }

    fn commit_invalidate(&mut self, now: Instant) {
        warn!("local data invalidated: a full resync from the peer follows");
        self.disk = DiskState::Inconsistent;
        self.gen = GenIds::fresh();
        self.bitmap.set_all();
        self.persist(false);
        if self.established {
            match self.peer_state {
                // As DRBD, the connection stays: both re-decide with the new identifiers and
                // this node becomes the SyncTarget of a full resync at once. (Dropping it left a
                // moment in which the peer, disconnected, could invalidate its own copy too.)
                Some(ps) => {
                    self.announce(true);
                    let peer_bm = Bitmap::new(self.size);
                    self.decide(now, ps, &peer_bm);
                }
                None => {
                    self.actions.push_back(Action::CloseConnection);
                    self.handle_disconnected(now);
                }
            }
        }
    }
}

/// Whether every byte is zero (compared a page at a time: `memcmp` is vectorised, a byte loop
/// is not, and the initial sync runs this over the whole device).
fn is_zero(data: &[u8]) -> bool {
    const ZERO: [u8; 4096] = [0; 4096];
    data.chunks(ZERO.len()).all(|c| c == &ZERO[..c.len()])
}

fn constant_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
