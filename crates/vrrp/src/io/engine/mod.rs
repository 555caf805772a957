//! The VRRP engine as a library: [`start`] returns a cheap, cloneable [`Handle`] and a stream of
//! typed [`Event`]s; the embedder (the `rempart-vrrp` binary, or `rempart-node`) owns the tokio
//! runtime, the signals, the pid file, the control socket and the metrics HTTP server.
//!
//! ```text
//!  embedder (tokio)                         engine (spawned on the embedder's runtime)
//!  ────────────────                         ───────────────────────────────────────────
//!  Handle ─┬─ reload(Config) ──┐            raw socket per interface ─┐ (polled by the task)
//!   (Clone)├─ status()         │  mpsc      vrrp_script tasks ────────┤
//!          ├─ lower_priority() ├─ Cmd ──▶   link-event thread ────────┼─ mpsc Ev ─▶ ┌───────────┐
//!          ├─ force_fault()    │  +oneshot  IPv6 frame thread ────────┤             │ main task │
//!          ├─ allow_vips()     │  reply     1 s tick task ────────────┘             │ proto::   │
//!          └─ shutdown().await ┘                                                    │ Instance× │
//!                                                                                   └─────┬─────┘
//!  Events (broadcast::Receiver) ◀── StateChanged / VipsChanged ◀──────────────────────────┤
//!  Registry (prometheus-client) ◀── families registered once at start, updated by the task┤
//!                              netlink VIPs, GARP/NA, adverts, notify scripts, nftables ◀─┘
//! ```
//!
//! # Handle and tasks
//! One task owns every [`crate::proto::Instance`]: it is the only writer, so there are no locks
//! and the sans-IO machines are driven exactly as in the simulation. A [`Handle`] sends it
//! commands on an unbounded channel, each with a oneshot reply; a reply is sent after the
//! command's consequences were performed (a [`Handle::force_fault`] returns once the priority-0
//! advert went out and the VIPs were removed). Dropping every handle stops the engine as
//! [`Handle::shutdown`] does (graceful: a detached election that nobody can stop would keep
//! VIPs after its owner is gone).
//!
//! # Events
//! A `tokio::sync::broadcast` channel of capacity [`Options::event_capacity`]: every receiver
//! sees every event in order. A receiver that falls more than that many events behind gets
//! `RecvError::Lagged(n)` once (the oldest `n` events are lost for it) and then continues with
//! the oldest still kept; it can re-read the whole picture with [`Handle::status`]. The engine
//! never waits for a reader. The channel closes (`RecvError::Closed`) after the engine stopped
//! and the last events (the transitions to `INIT` of the shutdown) were read.
//!
//! # Embedder health: priority and fault
//! [`Handle::lower_priority`] works like a failing `track_script` with a negative weight and
//! [`Handle::force_fault`] like a failing `track_script` with weight 0: both go into the same sum
//! the engine computes from tracked interfaces and scripts, and through the same two calls into
//! the core ([`crate::proto::Instance::set_priority_offset`], [`crate::proto::Instance::set_fault`]),
//! so they interact with the other trackers and with sync groups exactly as scripts do. The
//! reason string is logged, shown in [`InstanceStatus`] and carried by the Fault transition's
//! [`StateChange::detail`].
//!
//! # The VIP gate
//! With [`VipControl::Gated`], an instance elects and advertises as usual but, as Master, does
//! not add its VIPs (nor send GARPs/NAs) until [`Handle::allow_vips`]`(name, true)`: then they
//! are added and announced at once. `allow_vips(name, false)` removes them at once; the instance
//! stays Master (advertising) until the embedder also lowers its priority, forces a fault or
//! shuts down. This gives `rempart-node` its order: promote ⇒ mount ⇒ services ⇒ health ⇒ VIP,
//! and VIP off first on the way down. [`Event::VipsChanged`] and [`InstanceStatus::vips_held`]
//! say whether the addresses are on the interface.
//!
//! # nftables (`no_accept`)
//! The engine owns the `rempart_vrrp` table ([`crate::io::nft`]): it removes a stale one when
//! it starts (left by a predecessor killed with SIGKILL, it would keep dropping traffic to the
//! VIPs) and removes its own when it stops. It belongs to the engine, not the binary, because the
//! engine is what adds the rules (just before adding a VIP) and what knows when none is needed
//! any more; an embedder would otherwise have to know our table's name. The consequence: run one
//! engine per network namespace (two would also fight over the same VIPs).
//!
//! # Shutdown
//! [`Handle::shutdown`] makes every master send priority 0 (backups take over after Skew_Time,
//! not Master_Down_Interval) and remove its VIPs, runs `notify_stop`, removes the nftables
//! table, aborts and awaits every task it spawned (track scripts, the tick, the rtnetlink
//! connection) and returns when the main task has ended. Two threads block in system calls (link
//! events, IPv6 frames); they notice within [`THREAD_POLL`] that the engine is gone and end.

mod actor;
mod dump;
mod faultlog;
mod loglimit;
mod scripts;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::warn;

pub use self::actor::THREAD_POLL;
use self::actor::{Cmd, Core};
use self::scripts::NotifyEnv;
use crate::config::{self, Config};
use crate::io::metrics::Metrics;
use crate::io::net::Netlink;
use crate::io::nft::Firewall;
use crate::proto::{Reason, State};

/// Whether masters add their VIPs by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VipControl {
    /// A master adds its VIPs at once (keepalived's behaviour; the binary's).
    #[default]
    Managed,
    /// A master adds its VIPs only once [`Handle::allow_vips`] allowed them (see the module docs).
    Gated,
}

/// How the engine runs (besides its [`Config`]).
#[derive(Debug, Clone)]
pub struct Options {
    /// Whether masters add their VIPs by themselves.
    pub vips: VipControl,
    /// Events kept for a slow reader before it lags (see the module docs).
    pub event_capacity: usize,
    /// Where the configuration came from, shown in the data dump (none: `-`).
    pub config_path: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options { vips: VipControl::Managed, event_capacity: 1024, config_path: None }
    }
}

/// Errors of the engine and its handle, by culprit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The configuration is invalid (the caller's).
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// An OS operation failed. (Its display names the operation; the cause is the source, so
    /// that `{:#}` prints each once.)
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A configuration the IO layer cannot run here (no address on the interface, say).
    #[error("{0}")]
    Unsupported(String),
    /// The caller named an instance the running configuration does not have.
    #[error("no vrrp_instance {0} in the running configuration")]
    UnknownInstance(String),
    /// The engine has stopped (after [`Handle::shutdown`]).
    #[error("the VRRP engine has stopped")]
    Stopped,
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let what = what.into();
    move |source| EngineError::Io { what, source }
}

/// Status of one instance, as `rempart-vrrp status --json` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// Instance name.
    pub name: String,
    /// Interface.
    pub interface: String,
    /// VRID.
    pub vrid: u8,
    /// `MASTER`, `BACKUP`, `FAULT`, `INIT`.
    pub state: String,
    /// Base priority.
    pub priority: u8,
    /// Effective priority.
    pub effective_priority: u8,
    /// Current master's address, if known.
    pub master: Option<IpAddr>,
    /// Virtual addresses.
    pub vips: Vec<String>,
    /// Seconds since the Unix epoch of the last transition.
    pub last_transition_unix: Option<f64>,
    /// Why (for a fault: what failed, e.g. `fault: track_script chk failed`).
    pub last_reason: Option<String>,
    /// The VIPs are on the interfaces now.
    #[serde(default)]
    pub vips_held: bool,
    /// The embedder allows the VIPs ([`VipControl::Managed`]: always, unless it said otherwise).
    #[serde(default = "yes")]
    pub vips_allowed: bool,
    /// What keeps (or would keep) the instance in Fault now.
    #[serde(default)]
    pub fault_causes: Vec<String>,
    /// Priority lowered by the embedder by this much ([`Handle::lower_priority`]).
    #[serde(default)]
    pub priority_lowered_by: u8,
    /// Why the embedder lowered it.
    #[serde(default)]
    pub priority_lowered_why: Option<String>,
    /// Why the embedder forced a fault ([`Handle::force_fault`]).
    #[serde(default)]
    pub forced_fault: Option<String>,
}

fn yes() -> bool {
    true
}

/// A state transition of one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct StateChange {
    /// `vrrp_instance` name.
    pub instance: String,
    /// Previous state.
    pub from: State,
    /// New state.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// For [`Reason::Fault`]: what failed (`interface lan0 down`, `track_script chk failed`,
    /// `forced by the embedder: <its reason>`), joined by `; `.
    pub detail: Option<String>,
    /// Whether the VIPs are on the interfaces after the transition.
    pub vips_held: bool,
    /// When.
    pub at: SystemTime,
}

impl std::fmt::Display for StateChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} ({}", self.from.keepalived_name(), self.to.keepalived_name(), self.reason)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        write!(f, ")")
    }
}

/// What the engine tells its embedder.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// An instance changed state.
    StateChanged(StateChange),
    /// An instance's VIPs were added to (`held`) or removed from the interfaces. Comes before
    /// the [`Event::StateChanged`] of the transition that caused it, if any.
    VipsChanged {
        /// `vrrp_instance` name.
        instance: String,
        /// Whether they are on the interfaces now.
        held: bool,
    },
}

/// The receiving end of the engine's events (see the module docs for a slow reader).
pub type Events = broadcast::Receiver<Event>;

/// What a [`Handle::reload`] did, by instance name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Unchanged: still running in the same state.
    pub kept: Vec<String>,
    /// New or changed: (re)started.
    pub started: Vec<String>,
    /// No longer in the configuration: stopped.
    pub removed: Vec<String>,
    /// Could not be started (the instance and why); the others run.
    pub failed: Vec<(String, String)>,
}

/// The engine's handle: cheap to clone, usable from any task.
#[derive(Clone)]
pub struct Handle {
    cmds: mpsc::UnboundedSender<Cmd>,
    events: broadcast::WeakSender<Event>,
    done: watch::Receiver<bool>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("stopped", &self.is_stopped()).finish_non_exhaustive()
    }
}

/// Starts the engine on the current tokio runtime: validates `config`, opens the sockets, starts
/// every instance (Backup, or Master for an address owner) and registers the metric families
/// (`rempart_vrrp_*`) in `registry`. Errors leave nothing running.
pub async fn start(config: Config, opts: Options, registry: &mut Registry) -> Result<(Handle, Events), EngineError> {
    let problems = config.validate();
    if !problems.is_empty() {
        return Err(EngineError::Config(config::ConfigError::Invalid(problems)));
    }
    let metrics = Arc::new(Metrics::default());
    metrics.register(registry);
    let notify_env = NotifyEnv::new(&config.global)?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (events, events_rx) = broadcast::channel(opts.event_capacity.max(1));
    let (nl, nl_task) = Netlink::new().map_err(io_err("netlink"))?;
    let mut core =
        Core::new(opts, config.clone(), notify_env, (nl, nl_task), Firewall::new(), tx, metrics, events.clone());
    if let Err(e) = core.open(&config).await {
        core.teardown().await;
        return Err(e);
    }
    let (done_tx, done) = watch::channel(false);
    let task = tokio::spawn(core.run(rx, cmd_rx, done_tx));
    let handle = Handle { cmds: cmd_tx, events: events.downgrade(), done, task: Arc::new(Mutex::new(Some(task))) };
    Ok((handle, events_rx))
}

impl Handle {
    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.cmds.send(cmd(tx)).map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Applies a new configuration (what SIGHUP does): changed or new instances restart,
    /// unchanged ones keep their state. An invalid configuration changes nothing.
    pub async fn reload(&self, config: Config) -> Result<ReloadReport, EngineError> {
        self.ask(|r| Cmd::Reload(Box::new(config), r)).await?
    }

    /// The state of every instance, in configuration order.
    pub async fn status(&self) -> Result<Vec<InstanceStatus>, EngineError> {
        self.ask(Cmd::Status).await
    }

    /// keepalived's data dump (its SIGUSR1 file) as text.
    pub async fn data_dump(&self) -> Result<String, EngineError> {
        self.ask(Cmd::DataDump).await
    }

    /// keepalived's stats dump (its SIGUSR2 file) as text.
    pub async fn stats_dump(&self) -> Result<String, EngineError> {
        self.ask(Cmd::StatsDump).await
    }

    /// Lowers `instance`'s priority by `by` (like a failing `track_script` with weight `-by`),
    /// replacing what an earlier call set; `by = 0` is [`Handle::restore_priority`]. A master
    /// advertises the new priority at its next interval; a peer with `preempt` and a higher
    /// priority then takes over.
    pub async fn lower_priority(&self, instance: &str, by: u8, reason: impl Into<String>) -> Result<(), EngineError> {
        let p = (by > 0).then(|| (by, reason.into()));
        self.ask(|r| Cmd::Penalty(instance.to_string(), p, r)).await?
    }

    /// Undoes [`Handle::lower_priority`].
    pub async fn restore_priority(&self, instance: &str) -> Result<(), EngineError> {
        self.ask(|r| Cmd::Penalty(instance.to_string(), None, r)).await?
    }

    /// Forces `instance` into Fault (like a failing `track_script` with weight 0): a master sends
    /// priority 0 and removes its VIPs before this returns. Replaces an earlier reason.
    pub async fn force_fault(&self, instance: &str, reason: impl Into<String>) -> Result<(), EngineError> {
        self.ask(|r| Cmd::Fault(instance.to_string(), Some(reason.into()), r)).await?
    }

    /// Clears [`Handle::force_fault`]: the instance leaves Fault (to Backup) unless something
    /// else (an interface, a script) still keeps it there.
    pub async fn clear_fault(&self, instance: &str) -> Result<(), EngineError> {
        self.ask(|r| Cmd::Fault(instance.to_string(), None, r)).await?
    }

    /// The VIP gate (see the module docs): `true` adds the VIPs and sends GARPs/NAs at once if
    /// the instance is Master, and lets it add them whenever it becomes Master; `false` removes
    /// them at once and keeps them off. Kept across reloads while the instance exists.
    pub async fn allow_vips(&self, instance: &str, allow: bool) -> Result<(), EngineError> {
        self.ask(|r| Cmd::AllowVips(instance.to_string(), allow, r)).await?
    }

    /// Another receiver of the events, from now on (closed at once if the engine has stopped).
    #[must_use]
    pub fn subscribe(&self) -> Events {
        match self.events.upgrade() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Stops the engine gracefully (see the module docs) and returns when it has stopped: every
    /// master sent priority 0 and removed its VIPs, and every task of the engine has ended.
    /// Idempotent; concurrent callers all return once it has stopped.
    pub async fn shutdown(&self) {
        let _ = self.cmds.send(Cmd::Shutdown);
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            if let Err(e) = t.await {
                warn!("the VRRP engine task failed: {e}");
            }
        }
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    /// Whether the engine has stopped.
    #[must_use]
    pub fn is_stopped(&self) -> bool {
        self.cmds.is_closed()
    }
}

/// An error and its causes on one line, each once (`a: b: c`), for logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
