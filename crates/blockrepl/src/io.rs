//! The tokio shell around [`Replica`]: disk and metadata files, the TCP replication link, the
//! NBD frontend, the control socket and the metrics endpoint.
//!
//! ```text
//!  NBD server ─▶ ReplicatedStore ─┐                     ┌─▶ spawn_blocking: pread/pwrite/fdatasync
//!  control socket (status, …) ────┼─▶ actor (owns the ─┼─▶ meta file (write tmp, fsync, rename)
//!  link reader (frames) ──────────┘   Replica)          └─▶ link writer (frames)
//! ```
//!
//! One task (the actor) owns the sans-IO core; everything else talks to it through a channel,
//! so the core sees a single ordered stream of inputs.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::config::NbdEndpoint;
use crate::meta::Meta;
use crate::proto::{Action, Change, Config, DiskOp, ReplError, Replica, Role, Status};
use crate::resource::{Error, Refusal, ResourceSpec, ResourceStatus};
use crate::store::{BlockStore, FileStore};
use crate::tasks::Tasks;
use crate::wire::{Bytes, FramePacket, Msg, HEADER_LEN};

/// Administrative commands.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Admin {
    /// Become Primary.
    Primary {
        /// Even if the disk is not UpToDate.
        force: bool,
    },
    /// Become Secondary. Refused while an NBD client has the device open, as DRBD refuses
    /// ("Device is held open by someone"), unless `force`: then the open clients' requests fail
    /// with EIO from now on, as after DRBD's `secondary --force`.
    Secondary {
        /// Even while clients have the device open.
        force: bool,
    },
    /// Connect to the peer.
    Connect {
        /// Become SyncTarget of the union of both bitmaps.
        discard_my_data: bool,
    },
    /// Go StandAlone.
    Disconnect,
    /// Online verify.
    Verify,
    /// Declare local data bad.
    Invalidate,
}

type Reply = oneshot::Sender<Result<(), ReplError>>;
type AdminReply = oneshot::Sender<Result<(), Error>>;

enum Cmd {
    Write {
        off: u64,
        len: u32,
        data: Option<Bytes>,
        fua: bool,
        reply: Reply,
    },
    Flush {
        reply: Reply,
    },
    Admin {
        cmd: Admin,
        reply: AdminReply,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    /// The number of openers changed: publish it.
    Openers,
    /// The witness lease changed.
    Lease {
        valid_until: Option<Instant>,
    },
    /// Stop: finish what is in flight, write the metadata, end.
    Shutdown {
        reply: AdminReply,
    },
    DiskDone {
        io: u64,
        result: Result<Option<Bytes>, String>,
    },
    Connected {
        id: u64,
        tx: mpsc::UnboundedSender<Bytes>,
    },
    Frame {
        id: u64,
        msg: Msg,
    },
    Lost {
        id: u64,
    },
}

/// A handle to a running replica: the NBD store, the administrative interface, the status
/// channel (see [`crate::resource`]).
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Cmd>,
    status_rx: watch::Receiver<ResourceStatus>,
    tasks: Tasks,
    /// Bumped by [`Handle::drop_openers`]: the NBD connections served by the resource end.
    drop_gen: Arc<watch::Sender<u64>>,
    /// Where the replication listener and the NBD TCP listener are bound.
    addrs: (SocketAddr, Option<SocketAddr>),
    data: FileStore,
    can_serve: Arc<AtomicBool>,
    pub(crate) wants_conn: Arc<AtomicBool>,
    /// NBD clients in their transmission phase (DRBD's "openers").
    open_clients: Arc<std::sync::atomic::AtomicUsize>,
    latency: Arc<Mutex<Histogram>>,
    local_latency: Arc<Mutex<Histogram>>,
    peer_latency: Arc<Mutex<Histogram>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

/// Write-latency histogram (seconds), Prometheus style cumulative buckets.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Counts per bucket (upper bounds in [`BUCKETS`]).
    pub counts: [u64; 12],
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// Bucket upper bounds in seconds.
pub const BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0];

impl Histogram {
    pub(crate) fn observe(&mut self, s: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += s;
        self.count += 1;
    }
}

impl Handle {
    async fn call(&self, make: impl FnOnce(Reply) -> Cmd) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| io::Error::other("replica stopped"))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(e.to_string())),
            Err(_) => Err(io::Error::other("replica stopped")),
        }
    }

    /// Runs an administrative command. A refusal says why ([`Error::refusal`]); every error
    /// says who is at fault ([`Error::culprit`]).
    pub async fn admin(&self, cmd: Admin) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Admin { cmd, reply: tx }).map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// `primary [--force]`.
    pub async fn promote(&self, force: bool) -> Result<(), Error> {
        self.admin(Admin::Primary { force }).await
    }

    /// `secondary [--force]`. Refused with [`Refusal::OpenersPresent`] while NBD clients have
    /// the device open (unless `force`): [`Handle::drop_openers`] ends the connections the
    /// resource serves, as drbd-reactor's `secondary-force` kills the openers.
    pub async fn demote(&self, force: bool) -> Result<(), Error> {
        self.admin(Admin::Secondary { force }).await
    }

    /// Every status change, as it happens (the current value at once).
    pub fn watch_status(&self) -> watch::Receiver<ResourceStatus> {
        self.status_rx.clone()
    }

    /// Ends every NBD connection the resource serves now (their requests in flight finish or
    /// fail; the clients see the connection close). Connections the embedder serves itself
    /// over this handle are its own business.
    pub fn drop_openers(&self) {
        self.drop_gen.send_modify(|g| *g += 1);
    }

    /// Feeds the witness lease: valid while `Instant::now() < valid_until` (monotonic clock);
    /// `None` withdraws it. With the `quorum` option on, a Primary without its peer
    /// acknowledges writes only while the lease is valid (see the crate docs).
    pub fn set_lease(&self, valid_until: Option<Instant>) {
        let _ = self.tx.send(Cmd::Lease { valid_until });
    }

    /// Where the resource listens for its peer (the bound address: useful with port 0).
    pub fn replication_addr(&self) -> SocketAddr {
        self.addrs.0
    }

    /// Where the resource serves NBD over TCP, if it does.
    pub fn nbd_addr(&self) -> Option<SocketAddr> {
        self.addrs.1
    }

    /// Tasks of the resource alive now (0 after [`crate::resource::Resource::shutdown`]).
    pub fn tasks_alive(&self) -> usize {
        self.tasks.alive()
    }

    pub(crate) async fn shutdown_inner(&self) -> Result<(), Error> {
        self.tasks.stop();
        let (tx, rx) = oneshot::channel();
        let r = match self.tx.send(Cmd::Shutdown { reply: tx }) {
            Ok(()) => rx.await.unwrap_or(Err(Error::Stopped)),
            Err(_) => Err(Error::Stopped),
        };
        self.tasks.wait().await;
        r
    }

    /// Current status.
    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Status { reply: tx }).ok()?;
        rx.await.ok()
    }

    /// NBD clients that have the device open now.
    pub fn open_clients(&self) -> usize {
        self.open_clients.load(Ordering::Acquire)
    }

    /// Local disk write latency so far.
    pub fn local_latency(&self) -> Histogram {
        self.local_latency.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Peer round trip of replicated writes so far (send to acknowledgement).
    pub fn peer_latency(&self) -> Histogram {
        self.peer_latency.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// Client write latency so far.
    pub fn latency(&self) -> Histogram {
        self.latency.lock().map(|h| h.clone()).unwrap_or_default()
    }

    fn not_primary() -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, "this node is not Primary")
    }
}

impl BlockStore for Handle {
    fn size(&self) -> u64 {
        self.data.size()
    }
    fn opened(&self) {
        self.open_clients.fetch_add(1, Ordering::AcqRel);
        let _ = self.tx.send(Cmd::Openers);
    }
    fn closed(&self) {
        self.open_clients.fetch_sub(1, Ordering::AcqRel);
        let _ = self.tx.send(Cmd::Openers);
    }
    async fn read(&self, off: u64, len: u32) -> io::Result<Vec<u8>> {
        if !self.can_serve.load(Ordering::Acquire) {
            return Err(Self::not_primary());
        }
        self.data.read(off, len).await
    }
    async fn write(&self, off: u64, data: Bytes, fua: bool) -> io::Result<()> {
        let start = Instant::now();
        let len = data.len() as u32;
        let r = self.call(|reply| Cmd::Write { off, len, data: Some(data), fua, reply }).await;
        if r.is_ok() {
            if let Ok(mut h) = self.latency.lock() {
                h.observe(start.elapsed().as_secs_f64());
            }
        }
        r
    }
    async fn flush(&self) -> io::Result<()> {
        self.call(|reply| Cmd::Flush { reply }).await
    }
    async fn trim(&self, off: u64, len: u32) -> io::Result<()> {
        self.call(|reply| Cmd::Write { off, len, data: None, fua: false, reply }).await
    }
    async fn write_zeroes(&self, off: u64, len: u32, fua: bool) -> io::Result<()> {
        self.call(|reply| Cmd::Write { off, len, data: None, fua, reply }).await
    }
}

/// Largest activity log a metadata slot has room for.
const AL_ROOM: u64 = 65536;

/// The metadata file: two full slots written alternately, each `seq | len | meta | blake3`,
/// so that an update is one positioned write and one `fdatasync` (no rename, no directory
/// sync), and a torn update leaves the other slot intact; then two activity-log slots, each
/// `seq | n | n extents | blake3`, written alternately the same way for the log's small
/// transactions ([`Action::PersistAl`]). On open, the newest valid full slot is the
/// metadata, and an activity-log record newer than it replaces its log: such a record was
/// written only while nothing else differed from that full slot.
///
/// ```text
///  | full slot 0 | full slot 1 | log slot 0 | log slot 1 |
///    bitmap: 32 MiB for 1 TiB   ≤ 260 KiB, ~5 KiB for DRBD's default 1237 extents
/// ```
#[derive(Debug)]
pub struct MetaFile {
    file: std::fs::File,
    slot: u64,
    seq: u64,
    /// The full slot holding the newest valid copy (the next full write goes to the other).
    full: u64,
    /// The activity-log slot the next record goes to.
    al_next: u64,
    /// Set when the newest full slot was damaged and the older one was used.
    fallback: Option<SlotFallback>,
}

/// A damaged newest metadata slot, and the older one used instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotFallback {
    /// The damaged slot (0 or 1) and the counter its header still shows.
    pub damaged: (u64, u64),
    /// The slot used and its counter.
    pub used: (u64, u64),
}

fn slot_size(size: u64) -> u64 {
    let bitmap = size.div_ceil(crate::meta::BLOCK).div_ceil(64) * 8;
    (8 + 4 + 128 + 4 * AL_ROOM + bitmap + 32).div_ceil(4096) * 4096
}

/// Room of an activity-log slot: the largest log with its framing.
const AL_SLOT: u64 = (8 + 4 + 4 * AL_ROOM + 32).div_ceil(4096) * 4096;

/// `seq | len | body | blake3(seq | len | body)`: how both kinds of slot are written.
fn framed(seq: u64, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(body.len() + 44);
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(body.len() as u32).to_le_bytes());
    b.extend_from_slice(body);
    let h = *blake3::hash(&b).as_bytes();
    b.extend_from_slice(&h);
    b
}

fn encode_slot(seq: u64, meta: &Meta) -> Vec<u8> {
    framed(seq, &meta.to_bytes())
}

/// The body of a [`framed`] slot, if the checksum holds.
fn checked_body(b: &[u8]) -> Option<(u64, &[u8])> {
    let seq = u64::from_le_bytes(b.get(0..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(b.get(8..12)?.try_into().ok()?) as usize;
    let end = 12usize.checked_add(len)?;
    let body = b.get(..end)?;
    let sum = b.get(end..end.checked_add(32)?)?;
    (blake3::hash(body).as_bytes() == sum).then(|| (seq, &body[12..]))
}

fn decode_slot(b: &[u8]) -> Option<(u64, Meta)> {
    let (seq, body) = checked_body(b)?;
    Some((seq, Meta::from_bytes(body).ok()?))
}

fn encode_al(seq: u64, al: &[u32]) -> Vec<u8> {
    framed(seq, &al.iter().flat_map(|e| e.to_le_bytes()).collect::<Vec<u8>>())
}

fn decode_al(b: &[u8]) -> Option<(u64, Vec<u32>)> {
    let (seq, body) = checked_body(b)?;
    if body.len() % 4 != 0 || body.len() as u64 > 4 * AL_ROOM {
        return None;
    }
    Some((seq, body.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
}

impl MetaFile {
    /// Creates (or overwrites) a metadata file holding `meta`.
    pub fn create(path: &Path, meta: &Meta) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let slot = slot_size(meta.size);
        let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(path)?;
        f.set_len(2 * slot + 2 * AL_SLOT)?;
        f.write_all_at(&encode_slot(1, meta), 0)?;
        f.sync_all()?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Opens a metadata file and returns the newest valid copy. A file of an earlier version
    /// (two full slots, no activity-log slots) gets its activity-log slots added.
    pub fn open(path: &Path) -> io::Result<(MetaFile, Meta)> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
        // The counter in the header of a slot that failed its checksum (a torn write).
        let mut damaged: Vec<(u64, u64)> = Vec::new();
        // The newest valid full slot, if the file has slots of `slot` bytes.
        let mut full = |slot: u64| -> io::Result<Option<(u64, u64, Meta)>> {
            if slot == 0 || slot > 1 << 32 {
                return Ok(None);
            }
            let mut best: Option<(u64, u64, Meta)> = None;
            damaged.clear();
            for i in 0..2 {
                let mut b = vec![0u8; slot as usize];
                file.read_exact_at(&mut b, i * slot)?;
                match decode_slot(&b) {
                    Some((seq, m)) if slot_size(m.size) == slot => {
                        if best.as_ref().is_none_or(|(s, _, _)| seq > *s) {
                            best = Some((seq, i, m));
                        }
                    }
                    _ => damaged.push((i, u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))),
                }
            }
            Ok(best)
        };
        let with_log = len.checked_sub(2 * AL_SLOT).filter(|l| l % 2 == 0).map(|l| l / 2);
        let (slot, (seq, full_slot, mut meta)) = match with_log.map(&mut full).transpose()?.flatten() {
            Some(found) => (with_log.unwrap_or_default(), found),
            None => match full(len / 2)? {
                Some(found) => {
                    // Earlier layout: add the (invalid, zero) activity-log slots.
                    file.set_len(len + 2 * AL_SLOT)?;
                    file.sync_all()?;
                    (len / 2, found)
                }
                None if len / 2 == 0 || len / 2 > 1 << 32 => {
                    return Err(bad("not rempart-repl metadata (run create-md)"))
                }
                None => return Err(bad("no valid metadata slot (corrupted?)")),
            },
        };
        // A log record newer than the full slot replaces its log; the next record never
        // overwrites the newest valid one.
        let mut newest = seq;
        let mut newest_al: Option<(u64, u64)> = None;
        for i in 0..2 {
            let mut b = vec![0u8; AL_SLOT as usize];
            file.read_exact_at(&mut b, 2 * slot + i * AL_SLOT)?;
            if let Some((s, al)) = decode_al(&b) {
                if s > newest {
                    newest = s;
                    meta.al = al;
                }
                if newest_al.is_none_or(|(n, _)| s > n) {
                    newest_al = Some((s, i));
                }
            }
        }
        let al_next = newest_al.map_or(0, |(_, i)| 1 - i);
        // A slot that fails its checksum but shows a newer counter than the one used: the
        // last metadata write was torn (a crash during it) and the state before it is used.
        let fallback = damaged
            .iter()
            .filter(|(_, s)| *s > seq)
            .map(|&(i, s)| SlotFallback { damaged: (i, s), used: (full_slot, seq) })
            .next();
        if let Some(f) = fallback {
            warn!(
                path = %path.display(),
                damaged_slot = f.damaged.0,
                damaged_counter = f.damaged.1,
                used_slot = f.used.0,
                used_counter = f.used.1,
                "metadata: the newest slot is damaged (torn write?); fell back to the older slot"
            );
        }
        Ok((MetaFile { file, slot, seq: newest, full: full_slot, al_next, fallback }, meta))
    }

    /// Whether opening fell back to the older full slot (the newest was damaged).
    pub fn fallback(&self) -> Option<SlotFallback> {
        self.fallback
    }

    /// Durably replaces the metadata (writes the full slot not holding the newest copy, then
    /// `fdatasync`).
    pub fn write(&mut self, meta: &Meta) -> io::Result<()> {
        let target = 1 - self.full;
        self.put(encode_slot(self.seq + 1, meta), target * self.slot, self.slot, "metadata")?;
        self.full = target;
        Ok(())
    }

    /// Durably records the activity log `al` (everything else as in the last full write).
    pub fn write_al(&mut self, al: &[u32]) -> io::Result<()> {
        self.put(encode_al(self.seq + 1, al), 2 * self.slot + self.al_next * AL_SLOT, AL_SLOT, "activity log")?;
        self.al_next = 1 - self.al_next;
        Ok(())
    }

    /// Writes the next record (`self.seq + 1`) at `at` in a slot of `room` bytes, `fdatasync`.
    fn put(&mut self, b: Vec<u8>, at: u64, room: u64, what: &str) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if b.len() as u64 > room {
            return Err(io::Error::other(format!("{what} larger than its slot")));
        }
        self.file.write_all_at(&b, at)?;
        self.file.sync_data()?;
        self.seq += 1;
        Ok(())
    }
}

/// Reads the metadata file.
pub fn load_meta(path: &Path) -> io::Result<Meta> {
    MetaFile::open(path).map(|(_, m)| m)
}

/// Creates a metadata file (what `create-md` does).
pub fn store_meta(path: &Path, meta: &Meta) -> io::Result<()> {
    MetaFile::create(path, meta)
}

/// How the link is established.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Where to listen for the peer.
    pub listen: SocketAddr,
    /// Where to dial the peer (`None`: only listen).
    pub dial: Option<SocketAddr>,
}

/// Starts a replica: the actor, the link manager. Returns the handle; the replica runs until
/// the runtime ends (no metrics, no NBD listener: the caller serves the handle). An embedder
/// that must stop it uses [`crate::resource::Resource`].
pub async fn start(cfg: Config, data_path: &Path, meta_path: &Path, link: LinkConfig) -> io::Result<Handle> {
    let name = data_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let spec =
        ResourceSpec { name, replica: cfg, disk: data_path.to_owned(), meta: meta_path.to_owned(), link, nbd: None };
    launch(spec).await.map_err(|e| match e {
        Error::Caller(m) | Error::Config(m) => io::Error::new(io::ErrorKind::InvalidInput, m),
        e => io::Error::other(e.to_string()),
    })
}

/// Opens the disk and metadata, binds the listeners, spawns every task.
pub(crate) async fn launch(spec: ResourceSpec) -> Result<Handle, Error> {
    let ResourceSpec { name, replica: cfg, disk: data_path, meta: meta_path, link, nbd } = spec;
    let named = |what: &str, p: &Path, e: io::Error| {
        let hint = if e.kind() == io::ErrorKind::NotFound && what == "metadata file" { " (run create-md)" } else { "" };
        Error::LocalDisk(format!("{what} {}: {e}{hint}", p.display()))
    };
    let data = FileStore::open(&data_path).map_err(|e| named("disk", &data_path, e))?;
    let (meta_file, meta) = MetaFile::open(&meta_path).map_err(|e| match e.kind() {
        // Already names the file.
        io::ErrorKind::InvalidData => Error::LocalDisk(e.to_string()),
        _ => named("metadata file", &meta_path, e),
    })?;
    if meta.size != data.size() {
        return Err(Error::LocalDisk(format!(
            "{}: metadata is for {} bytes but the disk has {} (run create-md again?)",
            meta_path.display(),
            meta.size,
            data.size()
        )));
    }
    let listener = TcpListener::bind(link.listen)
        .await
        .map_err(|e| Error::Config(format!("replication listen {}: {e}", link.listen)))?;
    let nbd_listener = match &nbd {
        None => None,
        Some(NbdEndpoint::Tcp(a)) => Some(NbdListener::Tcp(
            TcpListener::bind(a).await.map_err(|e| Error::Config(format!("nbd listen {a}: {e}")))?,
        )),
        Some(NbdEndpoint::Unix(p)) => {
            let _ = std::fs::remove_file(p);
            Some(NbdListener::Unix(
                tokio::net::UnixListener::bind(p)
                    .map_err(|e| Error::Config(format!("nbd listen {}: {e}", p.display())))?,
                p.clone(),
            ))
        }
    };
    let addrs = (
        listener.local_addr().map_err(|e| Error::Config(format!("replication listen {}: {e}", link.listen)))?,
        match &nbd_listener {
            Some(NbdListener::Tcp(l)) => l.local_addr().ok(),
            _ => None,
        },
    );
    let dialer = link.dial.is_some();
    let mut replica = Replica::new(cfg, meta, dialer);
    // `run` is DRBD's `up`: attach the disk and start connecting.
    replica.connect(false).map_err(Error::from)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let tasks = Tasks::new();
    let (status_tx, status_rx) =
        watch::channel(ResourceStatus { replica: replica.status(), open_clients: 0, running: true });
    let handle = Handle {
        tx: tx.clone(),
        status_rx,
        tasks: tasks.clone(),
        drop_gen: Arc::new(watch::channel(0).0),
        addrs,
        data: data.clone(),
        can_serve: Arc::new(AtomicBool::new(false)),
        wants_conn: Arc::new(AtomicBool::new(true)),
        open_clients: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        latency: Arc::new(Mutex::new(Histogram::default())),
        local_latency: Arc::new(Mutex::new(Histogram::default())),
        peer_latency: Arc::new(Mutex::new(Histogram::default())),
    };
    let conn_wake = Arc::new(tokio::sync::Notify::new());
    let dial_backoff = Arc::new(Mutex::new(None));
    let actor = Actor {
        rep: replica,
        rx,
        tx: tx.clone(),
        data,
        meta_file: Arc::new(Mutex::new(meta_file)),
        pending: HashMap::new(),
        next_req: 1,
        link: None,
        admin_waiting: Vec::new(),
        admin_pending: None,
        open_clients: handle.open_clients.clone(),
        can_serve: handle.can_serve.clone(),
        wants_conn: handle.wants_conn.clone(),
        conn_wake: conn_wake.clone(),
        link_established: false,
        failed_sessions: 0,
        dial_backoff: dial_backoff.clone(),
        local_latency: handle.local_latency.clone(),
        peer_latency: handle.peer_latency.clone(),
        status_tx,
        tasks: tasks.clone(),
        meta_ios: std::collections::HashSet::new(),
        meta_error: None,
        stopping: None,
    };
    tasks.spawn(actor.run());
    tasks.spawn(link_manager(
        listener,
        link.dial,
        tx,
        handle.wants_conn.clone(),
        conn_wake,
        dial_backoff,
        tasks.clone(),
    ));
    if let Some(l) = nbd_listener {
        tasks.spawn(serve_nbd(l, name, handle.clone()));
    }
    info!(disk = %data_path.display(), "resource started");
    Ok(handle)
}

enum NbdListener {
    Tcp(TcpListener),
    /// The socket file is removed when the listener closes.
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

/// Accepts NBD clients until the resource stops; each connection ends when the client leaves,
/// when the resource stops, or at [`Handle::drop_openers`].
async fn serve_nbd(listener: NbdListener, name: String, handle: Handle) {
    let tasks = handle.tasks.clone();
    let server = crate::nbd::NbdServer::new(name, Arc::new(handle.clone())).with_tasks(tasks.clone());
    let stop = tasks.stopped();
    tokio::pin!(stop);
    loop {
        let conn = async {
            match &listener {
                NbdListener::Tcp(l) => l.accept().await.map(|(s, _)| {
                    let _ = s.set_nodelay(true);
                    NbdConn::Tcp(s)
                }),
                NbdListener::Unix(l, _) => l.accept().await.map(|(s, _)| NbdConn::Unix(s)),
            }
        };
        let conn = tokio::select! {
            c = conn => c,
            _ = &mut stop => break,
        };
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "nbd accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let server = server.clone();
        let mut drop_rx = handle.drop_gen.subscribe();
        let stopped = tasks.stopped();
        tasks.spawn(async move {
            let served = async {
                match conn {
                    NbdConn::Tcp(s) => server.serve_conn(s).await,
                    NbdConn::Unix(s) => server.serve_conn(s).await,
                }
            };
            tokio::select! {
                r = served => if let Err(e) = r { debug!(error = %e, "nbd connection ended") },
                _ = stopped => debug!("nbd connection closed: the resource stops"),
                _ = drop_rx.changed() => info!("nbd connection dropped (openers dropped)"),
            }
        });
    }
    if let NbdListener::Unix(_, p) = &listener {
        let _ = std::fs::remove_file(p);
    }
}

enum NbdConn {
    Tcp(TcpStream),
    Unix(tokio::net::UnixStream),
}

struct Actor {
    rep: Replica,
    rx: mpsc::UnboundedReceiver<Cmd>,
    tx: mpsc::UnboundedSender<Cmd>,
    data: FileStore,
    meta_file: Arc<Mutex<MetaFile>>,
    pending: HashMap<u64, Reply>,
    next_req: u64,
    link: Option<(u64, mpsc::UnboundedSender<Bytes>)>,
    admin_waiting: Vec<AdminReply>,
    /// The command whose state change waits for the peer (the core keeps at most one).
    admin_pending: Option<AdminReply>,
    open_clients: Arc<std::sync::atomic::AtomicUsize>,
    can_serve: Arc<AtomicBool>,
    wants_conn: Arc<AtomicBool>,
    /// Wakes the dialer at once when the replica starts wanting a connection (`connect`).
    conn_wake: Arc<tokio::sync::Notify>,
    /// The current link reached an established connection.
    link_established: bool,
    /// Links in a row that ended before the handshake was done (e.g. a wrong shared secret).
    failed_sessions: u32,
    /// When the dialer may dial again (exponential backoff after failed sessions).
    dial_backoff: Arc<Mutex<Option<Instant>>>,
    local_latency: Arc<Mutex<Histogram>>,
    peer_latency: Arc<Mutex<Histogram>>,
    status_tx: watch::Sender<ResourceStatus>,
    tasks: Tasks,
    /// Metadata writes in flight (their completion tags).
    meta_ios: std::collections::HashSet<u64>,
    /// The last metadata write failed (reported by the shutdown).
    meta_error: Option<String>,
    /// Shutting down: answered once the core is idle and its metadata written.
    stopping: Option<AdminReply>,
}

impl Actor {
    async fn run(mut self) {
        loop {
            if self.stopping.is_some() && self.rep.is_idle() {
                let r = match self.meta_error.take() {
                    Some(e) => Err(Error::LocalDisk(format!("metadata write failed at shutdown: {e}"))),
                    None => Ok(()),
                };
                self.status_tx.send_modify(|s| s.running = false);
                info!("resource stopped");
                if let Some(reply) = self.stopping.take() {
                    let _ = reply.send(r);
                }
                return;
            }
            let deadline = self.rep.poll_timeout();
            let cmd = match deadline {
                Some(d) => {
                    let d = tokio::time::Instant::from_std(d);
                    tokio::select! {
                        c = self.rx.recv() => c,
                        _ = tokio::time::sleep_until(d) => {
                            self.rep.handle_timeout(Instant::now());
                            self.drain();
                            continue;
                        }
                    }
                }
                None => self.rx.recv().await,
            };
            let Some(cmd) = cmd else { return };
            self.handle(cmd);
            // Take everything already queued before acting, so actions batch up.
            while let Ok(c) = self.rx.try_recv() {
                self.handle(c);
                self.drain();
            }
            self.drain();
        }
    }

    fn handle(&mut self, cmd: Cmd) {
        let now = Instant::now();
        if self.stopping.is_some() {
            match cmd {
                Cmd::Write { reply, .. } | Cmd::Flush { reply } => {
                    let _ = reply.send(Err(ReplError::State("the resource is stopping".into())));
                    return;
                }
                Cmd::Admin { reply, .. } | Cmd::Shutdown { reply } => {
                    let _ = reply.send(Err(Error::Stopped));
                    return;
                }
                Cmd::Connected { .. } => return,
                _ => {}
            }
        }
        match cmd {
            Cmd::Shutdown { reply } => {
                info!("stopping the resource");
                self.link = None;
                self.rep.shut_down(now);
                self.stopping = Some(reply);
            }
            Cmd::Openers => {}
            Cmd::Lease { valid_until } => self.rep.handle_lease(now, valid_until),
            Cmd::Write { off, len, data, fua, reply } => {
                let req = self.next_req;
                self.next_req += 1;
                self.pending.insert(req, reply);
                self.rep.handle_write_bytes(now, req, off, len, data, fua);
            }
            Cmd::Flush { reply } => {
                let req = self.next_req;
                self.next_req += 1;
                self.pending.insert(req, reply);
                self.rep.handle_flush(now, req);
            }
            Cmd::Admin { cmd, reply } => {
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let open = self.open_clients.load(Ordering::Acquire);
                let r: Result<Change, Error> = match cmd {
                    Admin::Primary { force } => self.rep.promote(now, force, wall).map_err(Error::from),
                    Admin::Secondary { force: false } if open > 0 && self.rep.status().role == Role::Primary => {
                        Err(Refusal::OpenersPresent { count: open }.into())
                    }
                    Admin::Secondary { force } => {
                        if force && open > 0 {
                            warn!(open, "forced to Secondary while held open: the clients' I/O fails from now on");
                        }
                        self.rep.demote().map_err(Error::from)
                    }
                    Admin::Connect { discard_my_data } => {
                        self.rep.connect(discard_my_data).map(|()| Change::Done).map_err(Error::from)
                    }
                    Admin::Disconnect => {
                        self.rep.disconnect(now);
                        Ok(Change::Done)
                    }
                    Admin::Verify => self.rep.start_verify().map(|()| Change::Done).map_err(Error::from),
                    Admin::Invalidate => self.rep.invalidate(now).map_err(Error::from),
                };
                if let Err(e) = &r {
                    info!(command = ?cmd, error = %e, culprit = ?e.culprit(), "state change refused");
                }
                match r {
                    Ok(Change::Pending) => self.admin_pending = Some(reply),
                    Ok(_) => self.admin_waiting.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Cmd::Status { reply } => {
                let _ = reply.send(self.rep.status());
            }
            Cmd::DiskDone { io, result } => {
                if self.meta_ios.remove(&io) {
                    if let Err(e) = &result {
                        self.meta_error = Some(e.clone());
                    }
                }
                self.rep.handle_disk_done(now, io, result)
            }
            Cmd::Connected { id, tx } => {
                if self.link.take().is_some() {
                    self.rep.handle_disconnected(now);
                    self.link_ended(now);
                }
                if !self.rep.wants_connection() {
                    return; // StandAlone: drop the new connection
                }
                self.link = Some((id, tx));
                self.rep.handle_connected(now);
            }
            Cmd::Frame { id, msg } => {
                if self.link.as_ref().is_some_and(|(l, _)| *l == id) {
                    self.rep.handle_frame(now, msg);
                }
            }
            Cmd::Lost { id } => {
                if self.link.as_ref().is_some_and(|(l, _)| *l == id) {
                    self.link = None;
                    self.rep.handle_disconnected(now);
                    self.link_ended(now);
                }
            }
        }
    }

    /// The current link is gone. One that never got established (the peer refused our
    /// secret, or closed during the handshake) delays the next dial: 0.2 s, doubling up to
    /// [`MAX_DIAL_BACKOFF`], so that a misconfigured pair retries calmly instead of several
    /// times a second. An established link resets it.
    fn link_ended(&mut self, now: Instant) {
        if std::mem::take(&mut self.link_established) {
            self.failed_sessions = 0;
        } else {
            self.failed_sessions = self.failed_sessions.saturating_add(1);
        }
        let delay = match self.failed_sessions {
            0 => None,
            n => Some(Duration::from_millis(200).saturating_mul(1 << (n - 1).min(16)).min(MAX_DIAL_BACKOFF)),
        };
        if let Some(d) = delay {
            debug!(failed_sessions = self.failed_sessions, delay = ?d, "next dial delayed");
        }
        if let Ok(mut b) = self.dial_backoff.lock() {
            *b = delay.map(|d| now + d);
        }
    }

    /// Runs a metadata write on the blocking pool and reports it as `io` (one in flight at a
    /// time: the core guarantees it).
    fn spawn_meta(&mut self, io: u64, f: impl FnOnce(&mut MetaFile) -> io::Result<()> + Send + 'static) {
        let tx = self.tx.clone();
        let mf = self.meta_file.clone();
        self.meta_ios.insert(io);
        self.tasks.spawn_blocking(move || {
            let r = mf.lock().map_err(|_| io::Error::other("metadata lock poisoned")).and_then(|mut m| f(&mut m));
            let _ = tx.send(Cmd::DiskDone { io, result: r.map(|()| None).map_err(|e| e.to_string()) });
        });
    }

    fn drain(&mut self) {
        while let Some(a) = self.rep.poll_action() {
            match a {
                Action::Disk { io, op } => {
                    let data = self.data.clone();
                    let tx = self.tx.clone();
                    let hist = self.local_latency.clone();
                    self.tasks.spawn_blocking(move || {
                        let start = Instant::now();
                        let is_write = matches!(op, DiskOp::Write { .. } | DiskOp::Zero { .. });
                        let r = match op {
                            DiskOp::Write { off, data: d, fua, writeback } => if writeback && !fua {
                                data.write_bulk_blocking(off, &d)
                            } else {
                                data.write_blocking(off, &d, fua)
                            }
                            .map(|()| None),
                            DiskOp::Zero { off, len, fua } => data.zero_blocking(off, len, fua).map(|()| None),
                            DiskOp::Read { off, len } => data.read_pooled_blocking(off, len).map(Some),
                            DiskOp::Flush => data.flush_blocking().map(|()| None),
                        };
                        if is_write {
                            if let Ok(mut h) = hist.lock() {
                                h.observe(start.elapsed().as_secs_f64());
                            }
                        }
                        let _ = tx.send(Cmd::DiskDone { io, result: r.map_err(|e| e.to_string()) });
                    });
                }
                Action::PersistMeta { io, meta, flush_data_first } => {
                    let data = self.data.clone();
                    self.spawn_meta(io, move |mf| {
                        if flush_data_first {
                            data.flush_blocking()?;
                        }
                        mf.write(&meta)
                    });
                }
                Action::PersistAl { io, al } => self.spawn_meta(io, move |mf| mf.write_al(&al)),
                Action::Send(m) => {
                    if let Some((_, tx)) = &self.link {
                        match m {
                            // Large payloads go to the socket from their own buffer, uncopied.
                            Msg::Data { seq, offset, len, flags, data } if !data.is_empty() => {
                                let _ = tx.send(crate::wire::data_prefix(seq, offset, len, flags, data.len()).into());
                                let _ = tx.send(data);
                            }
                            Msg::RsData { offset, len, flags, data } if !data.is_empty() => {
                                let _ = tx.send(crate::wire::rs_data_prefix(offset, len, flags, data.len()).into());
                                let _ = tx.send(data);
                            }
                            m => {
                                let _ = tx.send(m.to_vec().into());
                            }
                        }
                    }
                }
                Action::Complete { req, result } => {
                    if let Some(r) = self.pending.remove(&req) {
                        let _ = r.send(result);
                    }
                }
                Action::CloseConnection => {
                    // Dropping the sender ends the writer task, which closes the socket.
                    if self.link.take().is_some() {
                        self.link_ended(Instant::now());
                    }
                }
                Action::StateChangeDone { result } => {
                    if let Some(r) = self.admin_pending.take() {
                        let _ = r.send(result.map_err(Error::from));
                    }
                }
            }
        }
        let peer = self.rep.take_peer_latencies();
        if !peer.is_empty() {
            if let Ok(mut h) = self.peer_latency.lock() {
                for d in peer {
                    h.observe(d.as_secs_f64());
                }
            }
        }
        for r in self.admin_waiting.drain(..) {
            let _ = r.send(Ok(()));
        }
        if self.link.is_some() && self.rep.is_connected() {
            self.link_established = true;
        }
        self.can_serve.store(self.rep.can_serve(), Ordering::Release);
        let wants = self.rep.wants_connection();
        if !self.wants_conn.swap(wants, Ordering::AcqRel) && wants {
            self.conn_wake.notify_one();
        }
        let open = self.open_clients.load(Ordering::Acquire);
        let replica = self.rep.status();
        self.status_tx.send_if_modified(|s| {
            if s.replica == replica && s.open_clients == open {
                return false;
            }
            s.replica = replica;
            s.open_clients = open;
            true
        });
    }
}

/// Longest wait between two dials after failed sessions (DRBD's `connect-int` is 10 s).
const MAX_DIAL_BACKOFF: Duration = Duration::from_secs(10);

async fn link_manager(
    listener: TcpListener,
    dial: Option<SocketAddr>,
    tx: mpsc::UnboundedSender<Cmd>,
    wants: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    backoff: Arc<Mutex<Option<Instant>>>,
    tasks: Tasks,
) {
    let next_id = Arc::new(std::sync::atomic::AtomicU64::new(1));
    // Accept loop: the peer dials us (or re-dials after a failure). It owns the listener: the
    // port is free once it ended.
    {
        let tx = tx.clone();
        let next_id = next_id.clone();
        let wants = wants.clone();
        let t = tasks.clone();
        let stop = tasks.stopped();
        tasks.spawn(async move {
            tokio::pin!(stop);
            loop {
                let r = tokio::select! {
                    r = listener.accept() => r,
                    _ = &mut stop => return,
                };
                let (sock, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: do not spin.
                        debug!(error = %e, "replication accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if !wants.load(Ordering::Acquire) {
                    continue;
                }
                debug!(%peer, "replication connection accepted");
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                spawn_link(sock, id, tx.clone(), &t);
            }
        });
    }
    let Some(addr) = dial else { return };
    let stop = tasks.stopped();
    tokio::select! {
        () = dial_loop(addr, tx, wants, wake, backoff, next_id, tasks) => {}
        () = stop => {}
    }
}

async fn dial_loop(
    addr: SocketAddr,
    tx: mpsc::UnboundedSender<Cmd>,
    wants: Arc<AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
    backoff: Arc<Mutex<Option<Instant>>>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
    tasks: Tasks,
) {
    let mut current: Option<u64> = None;
    let (lost_tx, mut lost_rx) = mpsc::unbounded_channel::<u64>();
    loop {
        let not_before = backoff.lock().ok().and_then(|b| *b);
        if current.is_none() && not_before.is_some_and(|t| Instant::now() < t) {
            if let Some(t) = not_before {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(t)) => {}
                    _ = wake.notified() => {}
                }
            }
            continue;
        }
        if current.is_none() && wants.load(Ordering::Acquire) {
            match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
                Ok(Ok(sock)) => {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    debug!(%addr, "replication link connected");
                    let done = spawn_link(sock, id, tx.clone(), &tasks);
                    let lost_tx = lost_tx.clone();
                    tasks.spawn(async move {
                        let _ = done.await;
                        let _ = lost_tx.send(id);
                    });
                    current = Some(id);
                }
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            Some(id) = lost_rx.recv() => {
                if current == Some(id) {
                    current = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = wake.notified() => {}
        }
    }
}

/// Runs reader and writer tasks for one connection; the returned receiver fires when it ends.
fn spawn_link(sock: TcpStream, id: u64, tx: mpsc::UnboundedSender<Cmd>, tasks: &Tasks) -> oneshot::Receiver<()> {
    let _ = sock.set_nodelay(true);
    let (mut rd, wr) = sock.into_split();
    let (ftx, mut frx) = mpsc::unbounded_channel::<Bytes>();
    let (done_tx, done_rx) = oneshot::channel();
    let _ = tx.send(Cmd::Connected { id, tx: ftx });
    let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
    let resource_stop = tasks.stopped();
    tasks.spawn(async move {
        let mut w = wr;
        let mut batch: Vec<Bytes> = Vec::new();
        tokio::pin!(resource_stop);
        loop {
            let f = tokio::select! {
                f = frx.recv() => f,
                _ = &mut resource_stop => None,
            };
            let Some(f) = f else { break };
            // Everything already queued goes out in one `writev`: no copy into a staging
            // buffer, no small write per frame.
            batch.push(f);
            while batch.len() < MAX_IOV {
                match frx.try_recv() {
                    Ok(f) => batch.push(f),
                    Err(_) => break,
                }
            }
            if write_all_vectored(&mut w, &mut batch).await.is_err() {
                break;
            }
        }
        // Sender dropped (the actor closed this connection) or the socket failed: stop the
        // reader too, even if the peer went silent (blackhole).
        let _ = w.shutdown().await;
        let _ = stop_tx.send(());
    });
    tasks.spawn(async move {
        let result: Result<(), String> = tokio::select! {
            r = read_frames(&mut rd, id, &tx) => r,
            _ = &mut stop_rx => Ok(()),
        };
        if let Err(e) = result {
            // The core reports what matters (peer lost, timed out, refused) once, at its level.
            debug!(error = %e, "replication link closed");
        }
        let _ = tx.send(Cmd::Lost { id });
        let _ = done_tx.send(());
    });
    done_rx
}

/// Frames per `writev` (well under `IOV_MAX`).
const MAX_IOV: usize = 256;

/// Writes every buffer with as few `writev` calls as the socket allows; empties `bufs`.
async fn write_all_vectored<W: AsyncWrite + Unpin>(w: &mut W, bufs: &mut Vec<Bytes>) -> io::Result<()> {
    use bytes::Buf as _;
    bufs.retain(|b| !b.is_empty());
    let mut first = 0;
    while first < bufs.len() {
        let slices: Vec<io::IoSlice<'_>> = bufs[first..].iter().map(|b| io::IoSlice::new(b)).collect();
        let mut n = w.write_vectored(&slices).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 && first < bufs.len() {
            let l = bufs[first].len();
            if n >= l {
                n -= l;
                first += 1;
            } else {
                bufs[first].advance(n);
                n = 0;
            }
        }
    }
    bufs.clear();
    Ok(())
}

/// Reads exactly `n` bytes into a recycled buffer (see `crate::pool`) without zero-filling it.
pub(crate) async fn read_payload_pooled<R: AsyncRead + Unpin>(rd: &mut R, n: usize) -> io::Result<Bytes> {
    let mut v = crate::pool::take(n);
    v.clear();
    while v.len() < n {
        let want = (n - v.len()) as u64;
        if (&mut *rd).take(want).read_buf(&mut v).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(crate::pool::bytes(v))
}

async fn read_frames(
    rd: &mut tokio::net::tcp::OwnedReadHalf,
    id: u64,
    tx: &mpsc::UnboundedSender<Cmd>,
) -> Result<(), String> {
    // Small frames (acks, barriers) come many to a `read`; payloads bypass the buffer.
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let mut hdr = [0u8; HEADER_LEN];
    loop {
        rd.read_exact(&mut hdr).await.map_err(|e| e.to_string())?;
        let p = FramePacket::new_checked(&hdr[..]).map_err(|e| e.to_string())?;
        let len = p.check_header().map_err(|e| e.to_string())?;
        if p.frame_type() == crate::wire::FrameType::Data && len >= crate::wire::DATA_FIXED {
            // Read the payload straight into the buffer that goes to the disk.
            let mut fixed = [0u8; crate::wire::DATA_FIXED];
            rd.read_exact(&mut fixed).await.map_err(|e| e.to_string())?;
            let payload =
                read_payload_pooled(&mut rd, len - crate::wire::DATA_FIXED).await.map_err(|e| e.to_string())?;
            let msg = crate::wire::data_from_parts(p.flags(), &fixed, payload).map_err(|e| e.to_string())?;
            if tx.send(Cmd::Frame { id, msg }).is_err() {
                return Ok(());
            }
            continue;
        }
        if p.frame_type() == crate::wire::FrameType::RsData && len >= crate::wire::RS_DATA_FIXED {
            let mut fixed = [0u8; crate::wire::RS_DATA_FIXED];
            rd.read_exact(&mut fixed).await.map_err(|e| e.to_string())?;
            let payload =
                read_payload_pooled(&mut rd, len - crate::wire::RS_DATA_FIXED).await.map_err(|e| e.to_string())?;
            let msg = crate::wire::rs_data_from_parts(p.flags(), &fixed, payload).map_err(|e| e.to_string())?;
            if tx.send(Cmd::Frame { id, msg }).is_err() {
                return Ok(());
            }
            continue;
        }
        let mut frame = vec![0u8; HEADER_LEN + len];
        frame[..HEADER_LEN].copy_from_slice(&hdr);
        rd.read_exact(&mut frame[HEADER_LEN..]).await.map_err(|e| e.to_string())?;
        let msg = Msg::parse_bytes(&frame).map_err(|e| e.to_string())?;
        if tx.send(Cmd::Frame { id, msg }).is_err() {
            return Ok(());
        }
    }
}

/// `drbdadm status` layout.
pub fn status_text(name: &str, s: &Status) -> String {
    let mut out = format!("{name} role:{}\n  disk:{}\n", s.role, s.disk);
    match (s.connection, s.peer_role) {
        (crate::proto::ConnState::Connected, Some(pr)) => {
            out.push_str(&format!("  peer role:{pr}\n    replication:{}", s.replication));
            if let Some(d) = s.peer_disk {
                out.push_str(&format!(" peer-disk:{d}"));
            }
            if let Some(p) = s.sync_done_percent {
                out.push_str(&format!(" done:{p:.2}"));
            }
            out.push('\n');
        }
        (c, _) => out.push_str(&format!("  peer connection:{c}\n")),
    }
    if s.quorum.enabled {
        out.push_str(&format!("  quorum:{}", if s.quorum.held { "yes" } else { "no" }));
        if let Some(l) = s.quorum.lease_remaining {
            out.push_str(&format!(" lease-remaining:{}ms", l.as_millis()));
        }
        if s.quorum.suspended > 0 {
            out.push_str(&format!(" suspended-writes:{}", s.quorum.suspended));
        }
        out.push('\n');
    }
    out
}

/// `status --json`.
pub fn status_json(name: &str, s: &Status) -> String {
    let peer = match (s.peer_role, s.peer_disk) {
        (Some(r), Some(d)) => serde_json::json!({"role": r.to_string(), "disk": d.to_string()}),
        _ => serde_json::Value::Null,
    };
    serde_json::json!({
        "name": name,
        "role": s.role.to_string(),
        "disk": s.disk.to_string(),
        "connection": s.connection.to_string(),
        "replication": s.replication.to_string(),
        "out_of_sync_bytes": s.out_of_sync_bytes,
        "sync_done_percent": s.sync_done_percent,
        "peer": peer,
        "replicated_bytes": s.replicated_bytes,
        "resync_bytes": s.resync_bytes,
        "resync_wire_bytes": s.resync_wire_bytes,
        "split_brains": s.split_brains,
        "auth_failures": s.auth_failures,
        "verify_mismatched_blocks": s.verify_mismatches,
        "quorum": {
            "enabled": s.quorum.enabled,
            "held": s.quorum.held,
            "lease_remaining_ms": s.quorum.lease_remaining.map(|d| d.as_millis() as u64),
            "suspended_writes": s.quorum.suspended,
        },
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_file_alternates_slots_and_survives_a_torn_update() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.md");
        let mut m = Meta::fresh(64 << 20);
        MetaFile::create(&path, &m).unwrap();
        let (mut f, got) = MetaFile::open(&path).unwrap();
        assert_eq!(got, m);
        m.gen.current = 77;
        f.write(&m).unwrap(); // seq 2 -> slot 1 (slot 0 holds seq 1)
        m.gen.current = 78;
        f.write(&m).unwrap(); // seq 3 -> slot 0
        assert_eq!(load_meta(&path).unwrap().gen.current, 78);
        assert_eq!(MetaFile::open(&path).unwrap().0.fallback(), None);
        // Tear the newest slot: the previous state comes back, and it says so (issue 14).
        let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        raw.write_all_at(&[0xff; 64], 20).unwrap();
        assert_eq!(load_meta(&path).unwrap().gen.current, 77);
        let (f, _) = MetaFile::open(&path).unwrap();
        assert_eq!(f.fallback(), Some(SlotFallback { damaged: (0, 3), used: (1, 2) }));
        // Both slots torn: a clear error, no panic.
        raw.write_all_at(&[0xff; 64], slot_size(m.size) + 20).unwrap();
        let e = load_meta(&path).unwrap_err().to_string();
        assert!(e.contains("no valid metadata slot"), "{e}");
    }

    /// Activity-log records: a record newer than the newest full slot replaces its log, a
    /// torn record leaves the previous one, a full write makes older records irrelevant, and
    /// a torn full write after a record leaves the older full slot with that record's log.
    #[test]
    fn activity_log_records_apply_over_the_full_slot_and_survive_torn_writes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r0.md");
        let mut m = Meta::fresh(64 << 20);
        MetaFile::create(&path, &m).unwrap();
        let (mut f, _) = MetaFile::open(&path).unwrap();
        m.gen.current = 77;
        m.al = vec![1];
        f.write(&m).unwrap();
        f.write_al(&[1, 2]).unwrap();
        f.write_al(&[1, 2, 3]).unwrap();
        let got = load_meta(&path).unwrap();
        assert_eq!((got.gen.current, got.al.clone()), (77, vec![1, 2, 3]));
        assert_eq!(got.bitmap, m.bitmap);
        // The newest record (log slot 1) torn: the one before it.
        let slot = slot_size(m.size);
        let raw = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        raw.write_all_at(&[0xff; 16], 2 * slot + AL_SLOT + 4).unwrap();
        assert_eq!(load_meta(&path).unwrap().al, vec![1, 2]);
        // Reopened: the next record must not overwrite the newest valid one (log slot 0).
        let (mut f, _) = MetaFile::open(&path).unwrap();
        f.write_al(&[1, 2, 4]).unwrap();
        assert_eq!(load_meta(&path).unwrap().al, vec![1, 2, 4]);
        raw.write_all_at(&[0xff; 16], 2 * slot + AL_SLOT + 4).unwrap();
        assert_eq!(load_meta(&path).unwrap().al, vec![1, 2], "the record before survived");
        let (mut f, _) = MetaFile::open(&path).unwrap();
        f.write_al(&[1, 2, 4]).unwrap();
        // A full write supersedes every earlier record.
        m.gen.current = 78;
        m.al = vec![9];
        f.write(&m).unwrap();
        let got = load_meta(&path).unwrap();
        assert_eq!((got.gen.current, got.al), (78, vec![9]));
        // A record, then a full write torn half-way: the older full slot and the record's log.
        f.write_al(&[9, 10]).unwrap();
        m.gen.current = 79;
        f.write(&m).unwrap();
        let newest = f.full;
        raw.write_all_at(&[0xff; 16], newest * slot + 4).unwrap();
        let got = load_meta(&path).unwrap();
        assert_eq!((got.gen.current, got.al), (78, vec![9, 10]));
    }

    /// A metadata file of the earlier layout (two full slots only) opens, gains its
    /// activity-log slots and takes records.
    #[test]
    fn metadata_of_the_earlier_layout_is_upgraded_in_place() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.md");
        let mut m = Meta::fresh(64 << 20);
        m.gen.current = 5;
        m.al = vec![3];
        let slot = slot_size(m.size);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(2 * slot).unwrap();
        f.write_all_at(&encode_slot(1, &m), 0).unwrap();
        drop(f);
        let (mut mf, got) = MetaFile::open(&path).unwrap();
        assert_eq!(got, m);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * slot + 2 * AL_SLOT);
        mf.write_al(&[3, 4]).unwrap();
        let got = load_meta(&path).unwrap();
        assert_eq!((got.gen.current, got.al), (5, vec![3, 4]));
    }

    #[test]
    fn status_text_has_drbdadm_layout() {
        let s = Status {
            role: crate::proto::Role::Primary,
            disk: crate::proto::DiskState::UpToDate,
            connection: crate::proto::ConnState::Connected,
            replication: crate::proto::ReplState::SyncSource,
            peer_role: Some(crate::proto::Role::Secondary),
            peer_disk: Some(crate::proto::DiskState::Inconsistent),
            out_of_sync_bytes: 1,
            sync_done_percent: Some(42.1666),
            replicated_bytes: 0,
            resync_bytes: 0,
            resync_wire_bytes: 0,
            split_brains: 0,
            auth_failures: 0,
            verify_mismatches: 0,
            gen: crate::meta::GenIds::fresh(),
            quorum: Default::default(),
        };
        assert_eq!(
            status_text("r0", &s),
            "r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n    replication:SyncSource peer-disk:Inconsistent done:42.17\n"
        );
        let j: serde_json::Value = serde_json::from_str(&status_json("r0", &s)).unwrap();
        assert_eq!(j["peer"]["disk"], "Inconsistent");
        assert_eq!(j["sync_done_percent"], 42.1666);
    }
}

#[cfg(test)]
mod start_tests {
    use super::*;

    /// Issue 14: a missing metadata file is reported with its path (and what to run).
    #[tokio::test]
    async fn a_missing_metadata_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("r0.img");
        std::fs::File::create(&disk).unwrap().set_len(1 << 20).unwrap();
        let md = dir.path().join("r0.img.md");
        let link = LinkConfig { listen: "127.0.0.1:0".parse().unwrap(), dial: None };
        let e = start(Config::new([0; 32], false, 1), &disk, &md, link).await.unwrap_err().to_string();
        assert!(e.contains(&md.display().to_string()) && e.contains("create-md"), "{e}");
        let link = LinkConfig { listen: "127.0.0.1:0".parse().unwrap(), dial: None };
        let e = start(Config::new([0; 32], false, 1), &dir.path().join("nope.img"), &md, link).await.unwrap_err();
        assert!(e.to_string().contains("nope.img"), "{e}");
    }
}
