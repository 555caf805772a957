//! A replicated resource as an embeddable engine: started from its configuration into a
//! [`Resource`] that a tokio program owns, with its status as a `watch` channel, typed errors
//! that say who is at fault, refusals that say why, metrics registered into the caller's
//! registry, and an awaitable [`Resource::shutdown`] after which nothing of it runs.
//!
//! ```text
//!  ResourceSpec ──Resource::start(spec, &mut Registry)──▶ Resource (owner)
//!                                                          │ handle(): Handle (clone freely)
//!                                                          │   ├ admin(Admin) -> Result<(), Error>
//!                                                          │   ├ watch_status() -> watch::Receiver<ResourceStatus>
//!                                                          │   ├ open_clients(), drop_openers()
//!                                                          │   └ BlockStore (NBD)
//!                                                          └ shutdown().await: every task ended,
//!                                                            ports free, metadata written
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), blockrepl::resource::Error> {
//! use blockrepl::config::ResourceConfig;
//! use blockrepl::resource::{Resource, ResourceSpec};
//! let cfg = ResourceConfig::load(std::path::Path::new("/etc/rempart/r0.toml"))
//!     .map_err(|e| blockrepl::resource::Error::Config(e.to_string()))?;
//! let mut registry = prometheus_client::registry::Registry::default();
//! let r0 = Resource::start(ResourceSpec::from_config(&cfg, "main", None)?, &mut registry).await?;
//! let mut status = r0.handle().watch_status();
//! status.changed().await.ok();
//! r0.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Why an owner and a handle: the handle is what clients (NBD, the control socket, the node's
//! orchestration) share; only the owner can end the resource, and ending it is awaited, so an
//! embedder that reloads or demotes knows when the port and the metadata are free again.

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

use crate::config::{parse_nbd, NbdEndpoint, ResourceConfig};
use crate::io::{Handle, LinkConfig};
use crate::metrics::ReplMetrics;
use crate::proto::{auth_key, Config, DiskState, ReplError, Status};

/// Who is at fault for an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Culprit {
    /// The peer (its role, its disk, its answers, the link to it) or the missing quorum.
    Peer,
    /// This node's disk or metadata.
    LocalDisk,
    /// The caller: a command that does not fit the current state, or clients holding the device.
    Caller,
    /// The configuration.
    Config,
}

/// Why a state change (promote, demote, connect, invalidate, …) was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The connected peer is Primary.
    #[error("the peer is Primary; two primaries are never allowed")]
    PeerIsPrimary,
    /// The peer is being promoted at the same time and wins the tie-break.
    #[error("the peer is being promoted at the same time (it wins the tie-break); two primaries are never allowed")]
    ConcurrentPromotion,
    /// The peer makes the same kind of change at the same time and wins the tie-break.
    #[error("the peer is making the same state change at the same time (it wins the tie-break)")]
    ConcurrentChange,
    /// The connection broke before the peer answered; retry.
    #[error("the connection to the peer was lost during the state change; nothing changed, retry")]
    ConnectionLost,
    /// The peer refused for a reason this node does not know.
    #[error("the peer refused the state change (code {0})")]
    PeerRefused(u8),
    /// The connected peer's disk is not UpToDate (invalidate would leave no good copy).
    #[error("the peer's disk is not UpToDate: invalidating would leave no good copy")]
    PeerNotUpToDate,
    /// The local disk is not UpToDate (promotion needs `force`).
    #[error("local disk is {0}, not UpToDate (use --force)")]
    DiskNotUpToDate(DiskState),
    /// NBD clients have the device open (demotion needs `force`, or
    /// [`Handle::drop_openers`] first).
    #[error(
        "state change failed: device is held open by {count} NBD client{} \
         (disconnect them first, or use --force: their I/O then fails)",
        if *count == 1 { "" } else { "s" }
    )]
    OpenersPresent {
        /// How many.
        count: usize,
    },
    /// Writes are in flight (demotion waits for them).
    #[error("writes in flight")]
    WritesInFlight,
    /// Another state change waits for the peer.
    #[error("another state change is in progress")]
    ChangeInProgress,
    /// No quorum: the peer is not connected and agreeing, and no valid lease is held.
    #[error("no quorum: the peer is not connected and no witness lease is held")]
    NoQuorum,
    /// The command does not fit the current state (the detail says why).
    #[error("{0}")]
    State(String),
}

impl Refusal {
    /// Who is at fault.
    pub fn culprit(&self) -> Culprit {
        match self {
            Refusal::PeerIsPrimary
            | Refusal::ConcurrentPromotion
            | Refusal::ConcurrentChange
            | Refusal::ConnectionLost
            | Refusal::PeerRefused(_)
            | Refusal::PeerNotUpToDate
            | Refusal::NoQuorum => Culprit::Peer,
            Refusal::DiskNotUpToDate(_) => Culprit::LocalDisk,
            Refusal::OpenersPresent { .. }
            | Refusal::WritesInFlight
            | Refusal::ChangeInProgress
            | Refusal::State(_) => Culprit::Caller,
        }
    }
}

/// Errors of a resource, split by culprit ([`Error::culprit`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Error {
    /// A state change was refused; nothing changed.
    #[error("{0}")]
    Refused(Refusal),
    /// The peer broke the protocol or is unreachable.
    #[error("peer: {0}")]
    Peer(String),
    /// The local disk or metadata failed (the message names the file).
    #[error("{0}")]
    LocalDisk(String),
    /// The caller asked for something impossible (out of range, not Primary, …).
    #[error("{0}")]
    Caller(String),
    /// The configuration is unusable (the message names the file and field).
    #[error("{0}")]
    Config(String),
    /// The resource has stopped.
    #[error("the resource has stopped")]
    Stopped,
}

impl Error {
    /// Who is at fault.
    pub fn culprit(&self) -> Culprit {
        match self {
            Error::Refused(r) => r.culprit(),
            Error::Peer(_) => Culprit::Peer,
            Error::LocalDisk(_) => Culprit::LocalDisk,
            Error::Caller(_) | Error::Stopped => Culprit::Caller,
            Error::Config(_) => Culprit::Config,
        }
    }

    /// The refusal, if this is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(r) => Some(r),
            _ => None,
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::Refused(r)
    }
}

impl From<ReplError> for Error {
    fn from(e: ReplError) -> Self {
        match e {
            ReplError::NotPrimary => Error::Caller(e.to_string()),
            ReplError::OutOfRange => Error::Caller(e.to_string()),
            ReplError::DiskNotUpToDate(d) => Refusal::DiskNotUpToDate(d).into(),
            ReplError::PeerIsPrimary => Refusal::PeerIsPrimary.into(),
            ReplError::ConcurrentPromotion => Refusal::ConcurrentPromotion.into(),
            ReplError::ConnectionLost => Refusal::ConnectionLost.into(),
            ReplError::PeerNotUpToDate => Refusal::PeerNotUpToDate.into(),
            ReplError::ConcurrentChange => Refusal::ConcurrentChange.into(),
            ReplError::ChangeInProgress => Refusal::ChangeInProgress.into(),
            ReplError::PeerRefused(c) => Refusal::PeerRefused(c).into(),
            ReplError::Busy => Refusal::WritesInFlight.into(),
            ReplError::NoQuorum => Refusal::NoQuorum.into(),
            ReplError::Io(s) => Error::LocalDisk(format!("local disk I/O error: {s}")),
            ReplError::State(s) => Refusal::State(s).into(),
            // `ReplError` is non-exhaustive for other crates only; a new variant lands here
            // until it gets its own class.
            #[allow(unreachable_patterns)]
            other => Error::Caller(other.to_string()),
        }
    }
}

/// What [`Handle::watch_status`] publishes: every change of the replica's state, the openers
/// and the quorum.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceStatus {
    /// The replica (`drbdadm status`).
    pub replica: Status,
    /// NBD clients in their transmission phase (DRBD's openers).
    pub open_clients: usize,
    /// False once the resource has stopped (the last value published).
    pub running: bool,
}

/// Everything [`Resource::start`] needs.
#[derive(Debug, Clone)]
pub struct ResourceSpec {
    /// Resource name (NBD export name, `resource` label of the metrics).
    pub name: String,
    /// The replica's configuration.
    pub replica: Config,
    /// Backing file or block device.
    pub disk: PathBuf,
    /// Metadata file.
    pub meta: PathBuf,
    /// Replication link.
    pub link: LinkConfig,
    /// Where to serve NBD (`None`: the embedder serves the handle itself).
    pub nbd: Option<NbdEndpoint>,
}

impl ResourceSpec {
    /// The spec of node `node` of a resource file: reads the shared secret, settles which side
    /// dials (the name that sorts first), and takes every option of the file. `dial_override`
    /// dials the peer there instead of its configured address (e.g. through a proxy).
    pub fn from_config(c: &ResourceConfig, node: &str, dial_override: Option<SocketAddr>) -> Result<Self, Error> {
        let file = c.base.display().to_string();
        let (me, peer) = c.nodes(node).ok_or_else(|| Error::Config(format!("{file}: no [[node]] named {node:?}")))?;
        let meta = c.checked_meta_path(me).map_err(|e| Error::Config(e.to_string()))?;
        let secret_path = c.resolve(&c.resource.secret_file);
        let secret = std::fs::read(&secret_path)
            .map_err(|e| Error::Config(format!("reading secret {}: {e}", secret_path.display())))?;
        let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
        if secret.is_empty() {
            return Err(Error::Config(format!("{}: the shared secret is empty", secret_path.display())));
        }
        let tiebreak = me.name < peer.name;
        let mut cfg = Config::new(auth_key(&secret), tiebreak, rand::random());
        cfg.protocol = c.protocol();
        cfg.after_sb_0pri = c.after_sb_0pri();
        cfg.resync_rate = c.resource.resync_rate_mib << 20;
        cfg.peer_timeout = std::time::Duration::from_millis(c.resource.peer_timeout_ms);
        cfg.al_extents = c.resource.al_extents;
        cfg.checksum_resync = c.resource.checksum_resync;
        cfg.quorum = c.quorum();
        cfg.peer_name = format!("{} ({})", peer.name, peer.address);
        let addr = |who: &str, a: &str| {
            a.parse::<SocketAddr>().map_err(|_| Error::Config(format!("node {who}: address {a:?} is not HOST:PORT")))
        };
        let listen = addr(&me.name, &me.address)?;
        let dial = if tiebreak {
            Some(match dial_override {
                Some(a) => a,
                None => addr(&peer.name, &peer.address)?,
            })
        } else {
            None
        };
        let nbd = parse_nbd(&me.nbd).map_err(|e| Error::Config(format!("node {}: nbd: {e}", me.name)))?;
        Ok(ResourceSpec {
            name: c.resource.name.clone(),
            replica: cfg,
            disk: c.resolve(&me.disk),
            meta,
            link: LinkConfig { listen, dial },
            nbd: Some(nbd),
        })
    }
}

/// A running resource (the owner); see the module docs.
#[derive(Debug)]
pub struct Resource {
    handle: Handle,
    metrics: ReplMetrics,
    metrics_id: u64,
}

impl Resource {
    /// Starts a resource and registers its metrics into `registry` (a fresh set of families:
    /// use [`Resource::start_with_metrics`] for a second resource in the same registry).
    pub async fn start(
        spec: ResourceSpec,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Resource, Error> {
        let metrics = ReplMetrics::register(registry);
        Self::start_with_metrics(spec, &metrics).await
    }

    /// Starts a resource whose metrics go into families registered once with
    /// [`ReplMetrics::register`].
    pub async fn start_with_metrics(spec: ResourceSpec, metrics: &ReplMetrics) -> Result<Resource, Error> {
        let name = spec.name.clone();
        let handle = crate::io::launch(spec).await?;
        let metrics_id = metrics.add(&name, &handle);
        Ok(Resource { handle, metrics: metrics.clone(), metrics_id })
    }

    /// The handle (clone it freely).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Gives up ownership: the resource runs until the runtime ends (what `io::start` did).
    pub fn detach(self) -> Handle {
        self.handle
    }

    /// Stops the resource: the listeners close, the link and every NBD connection end, the
    /// writes in flight finish (new ones fail), the metadata is written a last time, and once
    /// this returns no task of the resource is alive. A Primary stays Primary on disk (the next
    /// start treats it as a crashed Primary): demote first for a clean stop.
    pub async fn shutdown(self) -> Result<(), Error> {
        let r = self.handle.shutdown_inner().await;
        self.metrics.remove(self.metrics_id);
        r
    }
}
