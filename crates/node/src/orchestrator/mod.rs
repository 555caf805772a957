//! The orchestration state machine: one [`Orchestrator`] per service on a host.
//!
//! It is driven by `(now, input)` and returns [`Action`]s; it never reads a clock, a socket or a
//! file. The IO shell calls:
//! - [`Orchestrator::start`] once (with the last successful backup time, for catch-up);
//! - [`Orchestrator::handle_vrrp`] on every VRRP state change of the service's instance,
//!   [`Orchestrator::handle_repl`] whenever the replicated resource's status changes,
//!   [`Orchestrator::handle_lease`] / [`Orchestrator::handle_fence`] when the witness client's view
//!   changes, [`Orchestrator::handle_step_done`] when a step it was asked to run finished,
//!   [`Orchestrator::handle_backup_done`] when a backup job ended,
//!   [`Orchestrator::handle_last_backup`] with the repository's newest archive time it was
//!   asked to read,
//!   [`Orchestrator::handle_command`] for the operator, and [`Orchestrator::handle_timeout`] when
//!   [`Orchestrator::poll_timeout`] is reached;
//! - then drains [`Orchestrator::poll_action`] and performs the actions in order.
//!
//! At most one step runs at a time. Each [`Action::Step`] carries a token; its outcome is
//! reported with that token (a late report of a step given up on is ignored).

mod backup;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use blockrepl::proto::{ConnState, DiskState, ReplState, Role};
use thiserror::Error;
use tracing::{debug, info, warn};
use vrrp::proto::State as VrrpState;

use backup::Backups;
pub use backup::{BackupState, LastBackupFrom};

/// Timeouts of the steps (each step, and the wait for quorum, has one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Waiting for quorum (peer or lease, local disk UpToDate) before promoting.
    pub quorum: Duration,
    /// Promote the replicated resource (two-phase with the peer when connected).
    pub promote: Duration,
    /// Mount the file system.
    pub mount: Duration,
    /// Start one service.
    pub start: Duration,
    /// The health check after the services started.
    pub health: Duration,
    /// Add the VIP (let the VRRP instance hold and announce it).
    pub vip: Duration,
    /// Remove the VIP.
    pub vip_off: Duration,
    /// A running backup to stop (checkpoint, lock released).
    pub cancel_backup: Duration,
    /// Stop one service.
    pub stop: Duration,
    /// Unmount.
    pub unmount: Duration,
    /// Demote (each attempt).
    pub demote: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            quorum: s(10),
            promote: s(5),
            mount: s(30),
            start: s(60),
            health: s(30),
            vip: s(5),
            vip_off: s(5),
            cancel_backup: s(30),
            stop: s(60),
            unmount: s(30),
            demote: s(10),
        }
    }
}

/// Static settings of one orchestrated service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Service names (systemd units or commands), in start order; stopped in reverse.
    pub services: Vec<String>,
    /// Step timeouts.
    pub timeouts: Timeouts,
    /// How long a node that gave the service up keeps its VRRP instance in FAULT (so the peer
    /// takes over) before it clears it; afterwards its priority stays lowered until it serves.
    pub fault_hold: Duration,
    /// A Primary without its peer starts stepping down at `lease_until − step_down_budget` when
    /// its lease was not renewed (see the crate docs' timing argument).
    pub step_down_budget: Duration,
    /// Backups: `None` disables them; otherwise the interval between successful runs.
    pub backup_interval: Option<Duration>,
    /// Delay before retrying a failed backup.
    pub backup_retry: Duration,
    /// How long a node serving alone (its peer not replicating, its lease valid) keeps serving
    /// when VRRP says BACKUP (a higher-priority advert) before it steps down: a peer frozen
    /// longer than the lease wakes up still advertising as master for a moment, then gives up
    /// (it cannot promote: no peer, no lease). Without the hold, that moment restarts the
    /// whole service here. A peer that really can serve must connect first, which ends the hold.
    pub vrrp_settle: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            services: Vec::new(),
            timeouts: Timeouts::default(),
            fault_hold: Duration::from_secs(10),
            step_down_budget: Duration::from_secs(2),
            backup_interval: Some(Duration::from_secs(3600)),
            backup_retry: Duration::from_secs(300),
            vrrp_settle: Duration::from_secs(2),
        }
    }
}

/// One step of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Waiting for quorum and an UpToDate local disk (no action: the orchestrator waits).
    Quorum,
    /// Promote the replicated resource.
    Promote,
    /// Mount the file system.
    Mount,
    /// Start service `i` (index into [`Config::services`]).
    Start(usize),
    /// Check that the services answer.
    Health,
    /// Let the VRRP instance hold and announce the VIP.
    AllowVip,
    /// Remove the VIP (stop announcing it).
    VipOff,
    /// Stop the running backup; done when it reports its end.
    CancelBackup,
    /// Stop service `i`.
    Stop(usize),
    /// Unmount the file system.
    Unmount,
    /// Demote; with `kill_openers`, as drbd-reactor's `secondary --force` (openers get errors).
    Demote {
        /// Kill (or fail) whatever holds the device open.
        kill_openers: bool,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Quorum => write!(f, "quorum"),
            Step::Promote => write!(f, "promote"),
            Step::Mount => write!(f, "mount"),
            Step::Start(i) => write!(f, "start service {i}"),
            Step::Health => write!(f, "health check"),
            Step::AllowVip => write!(f, "add VIP"),
            Step::VipOff => write!(f, "remove VIP"),
            Step::CancelBackup => write!(f, "cancel backup"),
            Step::Stop(i) => write!(f, "stop service {i}"),
            Step::Unmount => write!(f, "unmount"),
            Step::Demote { kill_openers: false } => write!(f, "demote"),
            Step::Demote { kill_openers: true } => write!(f, "demote, killing openers"),
        }
    }
}

/// What the IO shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Run a step; report its outcome with [`Orchestrator::handle_step_done`] and `token`.
    /// [`Step::CancelBackup`] is not sent this way: see [`Action::CancelBackup`].
    Step {
        /// Completion token.
        token: u64,
        /// What to do.
        step: Step,
    },
    /// Force the service's VRRP instance into FAULT (it sends priority 0 and drops the VIP):
    /// this node gives the service up.
    ForceFault {
        /// Why (shown by `status`).
        reason: String,
    },
    /// Clear the forced FAULT.
    ClearFault,
    /// Lower the VRRP priority below the peer's (keepalived `track_script` weight), so that an
    /// election prefers the peer.
    LowerPriority {
        /// Why.
        reason: String,
    },
    /// Restore the configured priority.
    RestorePriority,
    /// Start (`true`) or stop (`false`) acquiring and renewing the witness lease; report the
    /// client's view with [`Orchestrator::handle_lease`].
    WantLease(bool),
    /// Release the witness lease now.
    ReleaseLease,
    /// Acquire the witness's fence (the second, long-lived lease that says "the holder may have
    /// writes its peer lacks"); report with [`Orchestrator::handle_fence`].
    AcquireFence,
    /// Release the fence (the peer has every write again).
    ReleaseFence,
    /// Start a backup job; report with [`Orchestrator::handle_backup_done`].
    StartBackup {
        /// Job id.
        job: u64,
    },
    /// Cancel a running backup job (a checkpoint is written, the lock released); the job then
    /// reports its end with [`Orchestrator::handle_backup_done`].
    CancelBackup {
        /// Job id.
        job: u64,
        /// Why.
        reason: String,
    },
    /// Read the time of the newest archive in the backup repository (the peer may have made
    /// runs while it served), without blocking anything else; report with
    /// [`Orchestrator::handle_last_backup`] and this query id. Asked when an up order begins
    /// and again after a failed read; backups wait for the answer (at most the backup retry
    /// delay), the up order does not.
    ReadLastBackup {
        /// Query id.
        query: u64,
    },
    /// The shutdown command finished: everything is down and the lease released.
    Stopped,
}

/// The replicated resource as the orchestrator needs it (DRBD's names, as blockrepl has them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplView {
    /// Local role.
    pub role: Role,
    /// Local disk.
    pub disk: DiskState,
    /// Connection to the peer.
    pub connection: ConnState,
    /// Replication state.
    pub replication: ReplState,
    /// The peer's role, when connected.
    pub peer_role: Option<Role>,
    /// The peer's disk, when connected.
    pub peer_disk: Option<DiskState>,
}

impl ReplView {
    /// The view of a blockrepl status snapshot.
    #[must_use]
    pub fn from_status(s: &blockrepl::proto::Status) -> Self {
        Self {
            role: s.role,
            disk: s.disk,
            connection: s.connection,
            replication: s.replication,
            peer_role: s.peer_role,
            peer_disk: s.peer_disk,
        }
    }

    /// A Secondary with an UpToDate disk and no connection (what a node starts as).
    #[must_use]
    pub fn standalone_secondary() -> Self {
        Self {
            role: Role::Secondary,
            disk: DiskState::UpToDate,
            connection: ConnState::Connecting,
            replication: ReplState::Off,
            peer_role: None,
            peer_disk: None,
        }
    }

    fn connected(&self) -> bool {
        self.connection == ConnState::Connected
    }

    /// Writes reach the peer's disk (acknowledged with it).
    #[must_use]
    pub fn peer_replicating(&self) -> bool {
        self.connected()
            && matches!(
                self.replication,
                ReplState::Established | ReplState::SyncSource | ReplState::VerifyS | ReplState::VerifyT
            )
            && self.peer_disk.is_some_and(|d| d != DiskState::Diskless)
    }

    /// Both disks are UpToDate and connected: nobody has a write the other lacks.
    #[must_use]
    pub fn in_sync(&self) -> bool {
        self.connected()
            && self.replication == ReplState::Established
            && self.disk == DiskState::UpToDate
            && self.peer_disk == Some(DiskState::UpToDate)
    }
}

/// The witness client's view of the fence (see [`Action::AcquireFence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fence {
    /// Not held, not asked for (or released).
    Released,
    /// This node holds it.
    Held,
    /// Another node holds it: it may have writes this node lacks.
    Refused {
        /// The holder's node id.
        holder: String,
    },
}

/// Operator commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Planned move of the service to the peer.
    Switchover,
    /// Maintenance on: no automatic failover (VRRP changes start no transition).
    MaintenanceOn,
    /// Maintenance off.
    MaintenanceOff,
    /// Take everything down in order, release the lease, then report [`Action::Stopped`].
    Shutdown,
}

/// Why a command was refused (the caller's fault).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// Switchover needs a node that serves the service.
    #[error("this node does not serve the service (phase {0}); nothing to switch over")]
    NotServing(Phase),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Where the service is on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not serving and not trying to (VRRP Backup, or Master while the down order finished).
    Idle,
    /// VRRP Master: waiting for quorum and an UpToDate disk before promoting.
    WaitingQuorum,
    /// Running the up order.
    StartingUp,
    /// Everything is up and the VIP is held.
    Serving,
    /// Running the down order.
    SteppingDown,
    /// Gave the service up: FAULT is held until the time shown in [`Status::fault_until`].
    GaveUp,
    /// Handing the service to the peer on the operator's `switchover`: as [`Phase::GaveUp`]
    /// (FAULT held so that the peer takes over), but planned — nothing an operator must answer.
    HandingOver,
    /// A forced demote failed: the node keeps retrying it; an operator should look.
    Stuck,
    /// Shut down.
    Stopped,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Idle => "idle",
            Phase::WaitingQuorum => "waiting for quorum",
            Phase::StartingUp => "starting up",
            Phase::Serving => "serving",
            Phase::SteppingDown => "stepping down",
            Phase::GaveUp => "gave up",
            Phase::HandingOver => "handing over",
            Phase::Stuck => "stuck",
            Phase::Stopped => "stopped",
        })
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still running.
    Running,
    /// Done.
    Ok,
    /// Failed.
    Failed(String),
    /// Did not finish in time.
    TimedOut,
}

/// One step of the last transition, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    /// The step.
    pub step: Step,
    /// When it started.
    pub started: Instant,
    /// How long it took (`None` while running).
    pub duration: Option<Duration>,
    /// How it ended.
    pub outcome: Outcome,
}

/// Direction of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// quorum ⇒ promote ⇒ mount ⇒ services ⇒ health ⇒ VIP.
    Up,
    /// VIP off ⇒ backup cancelled ⇒ services (reverse) ⇒ unmount ⇒ demote.
    Down,
}

/// The last (or current) transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Up or down.
    pub direction: Direction,
    /// Why it started.
    pub reason: String,
    /// When it started.
    pub started: Instant,
    /// Its steps so far.
    pub steps: Vec<StepRecord>,
    /// When it ended (`None` while running).
    pub ended: Option<Instant>,
}

/// Ended transitions, by direction and result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransitionCounts {
    /// Up orders that ended with every step done.
    pub up_ok: u64,
    /// Up orders that failed (a step failed or timed out, or the order was unwound).
    pub up_failed: u64,
    /// Down orders that ended with every step done.
    pub down_ok: u64,
    /// Down orders that failed.
    pub down_failed: u64,
}

impl TransitionCounts {
    fn count(&mut self, t: &Transition, ok: bool) {
        let c = match (t.direction, ok) {
            (Direction::Up, true) => &mut self.up_ok,
            (Direction::Up, false) => &mut self.up_failed,
            (Direction::Down, true) => &mut self.down_ok,
            (Direction::Down, false) => &mut self.down_failed,
        };
        *c += 1;
    }
}

/// A snapshot for `rempart-node status`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// Phase.
    pub phase: Phase,
    /// The VRRP state last reported.
    pub vrrp: VrrpState,
    /// The replicated resource last reported.
    pub repl: ReplView,
    /// The lease, as the witness client sees it.
    pub lease_until: Option<Instant>,
    /// The fence, as the witness client sees it.
    pub fence: Fence,
    /// Maintenance mode.
    pub maintenance: bool,
    /// Why the node last gave the service up (kept until it serves again).
    pub gave_up: Option<String>,
    /// FAULT is held until then.
    pub fault_until: Option<Instant>,
    /// The VRRP priority is lowered (after giving up or a switchover) until this node serves.
    pub priority_lowered: bool,
    /// The current or last transition.
    pub last_transition: Option<Transition>,
    /// Ended transitions so far, by direction and result (a transition replaced before it
    /// ended — an up order unwound after a failed step — counts as failed).
    pub transitions: TransitionCounts,
    /// Backups.
    pub backup: BackupState,
    /// Services running (their count, from the first).
    pub services_started: usize,
    /// Mounted.
    pub mounted: bool,
    /// The VIP is allowed.
    pub vip: bool,
}

/// What a step was, while it runs.
#[derive(Debug, Clone, Copy)]
struct Running {
    token: u64,
    step: Step,
    deadline: Instant,
}

/// One orchestrated service.
#[derive(Debug)]
pub struct Orchestrator {
    cfg: Config,
    started: bool,
    vrrp: VrrpState,
    /// The VRRP state the target follows (frozen while in maintenance).
    vrrp_effective: VrrpState,
    /// VRRP said BACKUP while this node served alone: it keeps serving until then.
    vrrp_settle_until: Option<Instant>,
    repl: ReplView,
    lease_until: Option<Instant>,
    want_lease: bool,
    fence: Fence,
    fence_asked: bool,
    /// The fence was released in the current in-sync episode (released once per episode even
    /// when this node does not know it holds it: a restart forgets).
    released_in_sync: bool,
    maintenance: bool,
    shutdown: bool,
    stopped: bool,
    // what is done (an up step that failed or timed out counts as possibly done)
    promoted: bool,
    mounted: bool,
    services_started: usize,
    healthy: bool,
    vip: bool,
    /// A "remove VIP" step failed or timed out: the shell may still let the VRRP instance hold
    /// the VIP. The down order goes on, the node gives the service up (FAULT drops the VIP),
    /// and the step is run again (not before `vip_retry_at`) before the node counts as down or
    /// starts an up order, so that a later VRRP Master never announces the VIP of a node that
    /// is not serving.
    vip_unsure: bool,
    vip_retry_at: Option<Instant>,
    // give-up state
    gave_up: Option<String>,
    /// The give-up is the operator's switchover ([`Phase::HandingOver`]).
    handing_over: bool,
    /// Ended transitions so far.
    transitions: TransitionCounts,
    fault_until: Option<Instant>,
    fault_forced: bool,
    priority_lowered: bool,
    stuck: bool,
    /// A retry of a forced demote waits until then.
    retry_at: Option<Instant>,
    running: Option<Running>,
    quorum_deadline: Option<Instant>,
    transition: Option<Transition>,
    next_token: u64,
    backups: Backups,
    actions: VecDeque<Action>,
}

impl Orchestrator {
    /// A new orchestrator; call [`Orchestrator::start`] to run it.
    #[must_use]
    pub fn new(cfg: Config) -> Self {
        let backups = Backups::new(cfg.backup_interval, cfg.backup_retry);
        Self {
            cfg,
            started: false,
            vrrp: VrrpState::Initialize,
            vrrp_effective: VrrpState::Initialize,
            vrrp_settle_until: None,
            repl: ReplView::standalone_secondary(),
            lease_until: None,
            want_lease: false,
            fence: Fence::Released,
            fence_asked: false,
            released_in_sync: false,
            maintenance: false,
            shutdown: false,
            stopped: false,
            promoted: false,
            mounted: false,
            services_started: 0,
            healthy: false,
            vip: false,
            vip_unsure: false,
            vip_retry_at: None,
            gave_up: None,
            handing_over: false,
            transitions: TransitionCounts::default(),
            fault_until: None,
            fault_forced: false,
            priority_lowered: false,
            stuck: false,
            retry_at: None,
            running: None,
            quorum_deadline: None,
            transition: None,
            next_token: 1,
            backups,
            actions: VecDeque::new(),
        }
    }

    /// Starts the machine. `repl` is the resource's status now; `last_backup` the time of the
    /// last successful backup (from the repository), so that a missed run is caught up.
    pub fn start(&mut self, now: Instant, repl: ReplView, last_backup: Option<Instant>) {
        if self.started {
            return;
        }
        self.started = true;
        self.repl = repl;
        // A node that restarts as Primary (the daemon restarted, the resource did not) must
        // take it down unless it is asked to serve: the same path as any other transition.
        self.promoted = repl.role == Role::Primary;
        self.backups.start(now, last_backup);
        self.evaluate(now);
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Next action; call until `None` after every input.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Orchestrator::handle_timeout`] must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        min(self.running.map(|r| r.deadline));
        min(self.vrrp_settle_until);
        if self.running.is_none() {
            min(self.quorum_deadline);
            min(self.retry_at);
            if self.vip_unsure && self.retry_at.is_none() {
                min(self.vip_retry_at);
            }
        }
        // Only deadlines that an input other than time cannot move: a past one would be
        // returned again and again.
        if self.is_down() && self.running.is_none() {
            min(self.fault_until);
        }
        if self.promoted && !self.repl.peer_replicating() && self.gave_up.is_none() {
            min(self.step_down_at());
        }
        if self.phase() == Phase::Serving {
            min(self.backups.next_due());
        }
        min(self.backups.read_deadline());
        t
    }

    /// Whether a write may be acknowledged **without the peer** at `now`: this node is Primary,
    /// holds the lease at `now` (monotonic clock) and holds the fence. The replication core (or
    /// the shell in front of it) must fail or suspend a write that completed without the peer
    /// when this is false. Writes the peer acknowledged need no lease.
    #[must_use]
    pub fn may_ack_alone(&self, now: Instant) -> bool {
        self.repl.role == Role::Primary && self.lease_valid(now) && self.fence == Fence::Held
    }

    /// Until when the lease is valid (the client's conservative view), if held.
    #[must_use]
    pub fn lease_until(&self) -> Option<Instant> {
        self.lease_until
    }

    /// The current phase.
    #[must_use]
    pub fn phase(&self) -> Phase {
        if self.stopped {
            Phase::Stopped
        } else if self.stuck {
            Phase::Stuck
        } else if self.gave_up.is_some() && self.fault_until.is_some() {
            if self.handing_over {
                Phase::HandingOver
            } else {
                Phase::GaveUp
            }
        } else if let Some(r) = &self.running {
            match r.step {
                Step::Quorum | Step::Promote | Step::Mount | Step::Start(_) | Step::Health | Step::AllowVip => {
                    Phase::StartingUp
                }
                _ => Phase::SteppingDown,
            }
        } else if self.quorum_deadline.is_some() {
            Phase::WaitingQuorum
        } else if self.vip {
            Phase::Serving
        } else if self.promoted || self.mounted || self.services_started > 0 || self.vip_unsure {
            Phase::SteppingDown
        } else {
            Phase::Idle
        }
    }

    /// A snapshot for `status`.
    #[must_use]
    pub fn status(&self) -> Status {
        Status {
            phase: self.phase(),
            vrrp: self.vrrp,
            repl: self.repl,
            lease_until: self.lease_until,
            fence: self.fence.clone(),
            maintenance: self.maintenance,
            gave_up: self.gave_up.clone(),
            fault_until: self.fault_until,
            priority_lowered: self.priority_lowered,
            last_transition: self.transition.clone(),
            transitions: self.transitions,
            backup: self.backups.state(),
            services_started: self.services_started,
            mounted: self.mounted,
            vip: self.vip,
        }
    }

    // ------------------------------------------------------------------ inputs

    /// The VRRP state of the service's instance changed.
    pub fn handle_vrrp(&mut self, now: Instant, state: VrrpState) {
        self.vrrp = state;
        if !self.maintenance {
            if state == VrrpState::Backup && self.vrrp_effective == VrrpState::Master && self.serving_alone(now) {
                if self.vrrp_settle_until.is_none() {
                    info!("VRRP BACKUP while serving alone with the lease: holding on while the peer settles");
                    self.vrrp_settle_until = Some(now + self.cfg.vrrp_settle);
                }
            } else {
                self.vrrp_settle_until = None;
                self.vrrp_effective = state;
            }
        }
        self.evaluate(now);
    }

    /// Serving, Primary, the peer not even connected and the lease valid: the peer cannot promote.
    fn serving_alone(&self, now: Instant) -> bool {
        self.vip
            && self.running.is_none()
            && self.repl.role == Role::Primary
            && !self.repl.connected()
            && self.primary_has_quorum(now)
    }

    /// The replicated resource's status changed (call on every change; cheap when it did not).
    pub fn handle_repl(&mut self, now: Instant, repl: ReplView) {
        if repl == self.repl {
            return;
        }
        self.repl = repl;
        // Primary without a promotion counted: a promotion given up on (it timed out, and the
        // down order already demoted) completed late, when the peer's grant came. Count it, so
        // that the down order demotes it (or the up order goes on), as after a restart.
        if repl.role == Role::Primary && !self.promoted && self.running.is_none_or(|r| r.step != Step::Promote) {
            warn!("the resource became Primary without a promotion in progress: counted as promoted");
            self.promoted = true;
        }
        self.evaluate(now);
    }

    /// The witness client's view of the lease: valid until `until` (`None`: not held).
    pub fn handle_lease(&mut self, now: Instant, until: Option<Instant>) {
        self.lease_until = until;
        self.evaluate(now);
    }

    /// The witness client's view of the fence.
    pub fn handle_fence(&mut self, now: Instant, fence: Fence) {
        self.fence_asked = false;
        self.fence = fence;
        self.evaluate(now);
    }

    /// A step asked with [`Action::Step`] finished. Unknown or stale tokens are ignored.
    pub fn handle_step_done(&mut self, now: Instant, token: u64, result: Result<(), StepFailure>) {
        let Some(r) = self.running.filter(|r| r.token == token) else {
            debug!(token, "late or unknown step result ignored");
            return;
        };
        self.running = None;
        match result {
            Ok(()) => {
                self.record_end(now, Outcome::Ok);
                self.step_ok(now, r.step);
            }
            Err(e) => {
                self.record_end(now, Outcome::Failed(e.0.clone()));
                self.step_failed(now, r.step, &e.0);
            }
        }
        self.evaluate(now);
    }

    /// A backup job ended (successfully, failed, or cancelled).
    pub fn handle_backup_done(&mut self, now: Instant, job: u64, result: Result<(), StepFailure>) {
        if !self.backups.done(now, job, result.is_ok()) {
            return;
        }
        if let Some(r) = self.running.filter(|r| r.step == Step::CancelBackup) {
            self.running = None;
            self.record_end(now, Outcome::Ok);
            let _ = r;
        }
        self.evaluate(now);
    }

    /// The answer to [`Action::ReadLastBackup`] `query`: the newest archive's time in the
    /// repository (`Ok(None)`: it holds none), or why it could not be read. The later of it
    /// and what the node knew becomes the last success, and the next run is due an interval
    /// after it. A failed read leaves the schedule as it was and is asked again later. An
    /// answer to an older query is ignored.
    pub fn handle_last_backup(&mut self, now: Instant, query: u64, result: Result<Option<Instant>, StepFailure>) {
        let result = result.map_err(|e| {
            warn!(error = %e.0, "cannot read the newest archive from the backup repository: the schedule goes by this node's own record until a retry succeeds");
        });
        if self.backups.learned(now, query, result) {
            info!("the last backup is from the repository (made by the peer): the schedule continues from it");
        }
        self.evaluate(now);
    }

    /// An operator command.
    pub fn handle_command(&mut self, now: Instant, cmd: Command) -> Result<(), CommandError> {
        match cmd {
            Command::MaintenanceOn => {
                info!("maintenance on: no automatic failover");
                self.maintenance = true;
            }
            Command::MaintenanceOff => {
                info!("maintenance off");
                self.maintenance = false;
                self.vrrp_effective = self.vrrp;
                self.vrrp_settle_until = None;
            }
            Command::Shutdown => {
                info!("shutdown: taking the service down");
                self.shutdown = true;
            }
            Command::Switchover => {
                if self.shutdown {
                    return Err(CommandError::ShuttingDown);
                }
                let phase = self.phase();
                if phase != Phase::Serving {
                    return Err(CommandError::NotServing(phase));
                }
                info!("switchover: handing the service to the peer");
                self.give_up(now, "switchover requested by the operator".into());
                self.handing_over = true;
            }
        }
        self.evaluate(now);
        Ok(())
    }

    /// Time passed: step timeouts, the quorum wait, the FAULT hold, the lease step-down point,
    /// backups.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(r) = self.running.filter(|r| now >= r.deadline) {
            self.running = None;
            warn!(step = %r.step, "step timed out");
            self.record_end(now, Outcome::TimedOut);
            if r.step == Step::CancelBackup {
                // The job did not stop in time: go on; a forced demote deals with its files.
                self.backups.forget_running();
            } else {
                self.step_failed(now, r.step, "timed out");
            }
        }
        if self.retry_at.is_some_and(|t| now >= t) {
            self.retry_at = None;
        }
        self.evaluate(now);
    }

    /// The hold of [`Config::vrrp_settle`] ends when it runs out, or as soon as this node no
    /// longer serves alone (the peer connected, the lease ran short): VRRP's word counts again.
    fn end_vrrp_settle(&mut self, now: Instant) {
        if self.vrrp_settle_until.is_some_and(|t| now >= t || !self.serving_alone(now)) {
            self.vrrp_settle_until = None;
            if !self.maintenance {
                self.vrrp_effective = self.vrrp;
            }
        }
    }

    // ------------------------------------------------------------------ the machine

    fn lease_valid(&self, now: Instant) -> bool {
        self.lease_until.is_some_and(|t| now < t)
    }

    fn step_down_at(&self) -> Option<Instant> {
        self.lease_until.and_then(|t| t.checked_sub(self.cfg.step_down_budget))
    }

    /// Whether a Primary still has quorum at `now`: its writes reach the peer, or its lease is
    /// valid beyond the step-down budget.
    fn primary_has_quorum(&self, now: Instant) -> bool {
        self.repl.peer_replicating() || self.step_down_at().is_some_and(|t| now < t)
    }

    fn target_up(&self) -> bool {
        self.vrrp_effective == VrrpState::Master
            && !self.shutdown
            && !self.stuck
            && self.gave_up.is_none()
            && !self.fault_forced
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn begin_transition(&mut self, now: Instant, direction: Direction, reason: String) {
        if self.transition.as_ref().is_some_and(|t| t.direction == direction && t.ended.is_none()) {
            return;
        }
        info!(?direction, %reason, "transition");
        // One still running is replaced: it did not finish, so it failed.
        if let Some(t) = self.transition.as_ref().filter(|t| t.ended.is_none()) {
            self.transitions.count(t, false);
        }
        self.transition = Some(Transition { direction, reason, started: now, steps: Vec::new(), ended: None });
    }

    fn end_transition(&mut self, now: Instant) {
        if let Some(t) = self.transition.as_mut().filter(|t| t.ended.is_none()) {
            t.ended = Some(now);
            let ok = t.steps.iter().all(|r| matches!(r.outcome, Outcome::Ok));
            self.transitions.count(t, ok);
        }
    }

    fn record_start(&mut self, now: Instant, step: Step) {
        if let Some(t) = self.transition.as_mut() {
            t.steps.push(StepRecord { step, started: now, duration: None, outcome: Outcome::Running });
        }
    }

    fn record_end(&mut self, now: Instant, outcome: Outcome) {
        if let Some(s) = self.transition.as_mut().and_then(|t| t.steps.last_mut()) {
            if s.outcome == Outcome::Running {
                s.duration = Some(now.saturating_duration_since(s.started));
                s.outcome = outcome;
            }
        }
    }

    fn run(&mut self, now: Instant, step: Step) {
        let t = &self.cfg.timeouts;
        let timeout = match step {
            Step::Quorum => t.quorum,
            Step::Promote => t.promote,
            Step::Mount => t.mount,
            Step::Start(_) => t.start,
            Step::Health => t.health,
            Step::AllowVip => t.vip,
            Step::VipOff => t.vip_off,
            Step::CancelBackup => t.cancel_backup,
            Step::Stop(_) => t.stop,
            Step::Unmount => t.unmount,
            Step::Demote { .. } => t.demote,
        };
        let token = self.token();
        debug!(%step, token, "step");
        self.running = Some(Running { token, step, deadline: now + timeout });
        self.record_start(now, step);
        match step {
            Step::CancelBackup => {
                if let Some(job) = self.backups.running() {
                    self.backups.cancel();
                    self.actions.push_back(Action::CancelBackup { job, reason: "leaving Primary".into() });
                }
            }
            _ => self.actions.push_back(Action::Step { token, step }),
        }
    }

    fn step_ok(&mut self, now: Instant, step: Step) {
        match step {
            Step::Quorum | Step::CancelBackup => {}
            Step::Promote => self.promoted = true,
            Step::Mount => self.mounted = true,
            Step::Start(i) => self.services_started = self.services_started.max(i + 1),
            Step::Health => self.healthy = true,
            Step::AllowVip => {
                self.vip = true;
                self.vip_unsure = false;
                self.end_transition(now);
                info!("serving");
                // Serving again clears what an earlier give-up left.
                if self.priority_lowered {
                    self.priority_lowered = false;
                    self.actions.push_back(Action::RestorePriority);
                }
            }
            Step::VipOff => {
                self.vip = false;
                self.vip_unsure = false;
                self.vip_retry_at = None;
            }
            Step::Stop(i) => self.services_started = self.services_started.min(i),
            Step::Unmount => self.mounted = false,
            Step::Demote { .. } => {
                self.promoted = false;
                self.stuck = false;
            }
        }
    }

    fn step_failed(&mut self, now: Instant, step: Step, why: &str) {
        warn!(%step, why, "step failed");
        match step {
            // An up step that failed may have taken effect: count it as done so that the down
            // order undoes it (every down step is idempotent).
            Step::Promote => self.promoted = true,
            Step::Mount => self.mounted = true,
            Step::Start(i) => self.services_started = self.services_started.max(i + 1),
            Step::Health | Step::Quorum | Step::CancelBackup => {}
            Step::AllowVip => self.vip = true,
            // A down step that failed: go on with the next one (the demote that follows kills
            // what still holds the device open); never stop half way.
            // The VIP may still be allowed: retried before the node counts as down (see
            // `vip_unsure`), and FAULT below makes the VRRP instance drop it meanwhile.
            Step::VipOff => {
                self.vip = false;
                self.vip_unsure = true;
                self.vip_retry_at = Some(now + self.cfg.timeouts.vip_off);
            }
            Step::Stop(i) => self.services_started = self.services_started.min(i),
            Step::Unmount => self.mounted = false,
            Step::Demote { kill_openers: false } => {}
            Step::Demote { kill_openers: true } => {
                self.stuck = true;
                self.retry_at = Some(now + self.cfg.timeouts.demote);
            }
        }
        if matches!(step, Step::Quorum | Step::Promote | Step::Mount | Step::Start(_) | Step::Health | Step::AllowVip)
            || (step == Step::VipOff && self.gave_up.is_none())
        {
            self.give_up(now, format!("{step} failed: {why}"));
        }
    }

    /// Gives the service up: FAULT (the peer takes over), then the down order.
    fn give_up(&mut self, now: Instant, reason: String) {
        warn!(%reason, "giving the service up");
        self.handing_over = false;
        self.gave_up = Some(reason.clone());
        self.fault_until = Some(now + self.cfg.fault_hold);
        if !self.fault_forced {
            self.fault_forced = true;
            self.actions.push_back(Action::ForceFault { reason: reason.clone() });
        }
        if !self.priority_lowered {
            self.priority_lowered = true;
            self.actions.push_back(Action::LowerPriority { reason });
        }
        self.quorum_deadline = None;
    }

    /// Decides what to do next. Called after every input.
    fn evaluate(&mut self, now: Instant) {
        self.end_vrrp_settle(now);
        if !self.started || self.stopped {
            return;
        }
        if let Some(query) = self.backups.follow(now, self.target_up()) {
            self.actions.push_back(Action::ReadLastBackup { query });
        }
        self.lease_and_fence(now);
        // A Primary without peer whose lease is about to end gives the service up.
        if self.promoted && self.repl.role == Role::Primary && !self.primary_has_quorum(now) && self.gave_up.is_none() {
            self.give_up(now, "lost quorum: no peer and the witness lease is not renewed".into());
        }
        // A Primary whose peer is gone while the peer holds the fence: both may have written.
        if self.promoted
            && self.repl.role == Role::Primary
            && !self.repl.peer_replicating()
            && matches!(self.fence, Fence::Refused { .. })
            && self.gave_up.is_none()
        {
            self.give_up(now, "the peer holds the fence: this node must not write alone".into());
        }
        // The FAULT hold ends once the service is down here.
        if self.fault_until.is_some_and(|t| now >= t) && self.is_down() && self.running.is_none() {
            self.fault_until = None;
            self.gave_up = None;
            self.handing_over = false;
            if self.fault_forced {
                self.fault_forced = false;
                self.actions.push_back(Action::ClearFault);
            }
            if matches!(self.fence, Fence::Refused { .. }) {
                self.fence = Fence::Released;
            }
        }
        if self.running.is_some() {
            return;
        }
        if self.target_up() {
            self.step_up(now);
        } else {
            self.quorum_deadline = None;
            self.step_down(now);
        }
        // A give-up above may have changed what the lease is wanted for.
        self.lease_and_fence(now);
        // Backups follow the data: only while serving.
        if self.phase() == Phase::Serving {
            if let Some(job) = self.backups.maybe_start(now) {
                self.actions.push_back(Action::StartBackup { job });
            }
        }
    }

    fn is_down(&self) -> bool {
        !self.vip
            && !self.vip_unsure
            && self.services_started == 0
            && !self.mounted
            && !self.promoted
            && self.backups.running().is_none()
    }

    fn step_up(&mut self, now: Instant) {
        if self.vip_unsure && !self.vip {
            // The VIP must be known off before an up order: it is allowed only at its end.
            self.retry_vip_off(now);
            return;
        }
        if !self.promoted {
            self.begin_transition(now, Direction::Up, format!("VRRP {}", self.vrrp.keepalived_name()));
            if self.quorum_deadline.is_none() {
                self.quorum_deadline = Some(now + self.cfg.timeouts.quorum);
                self.record_start(now, Step::Quorum);
            }
            match self.quorum_for_promote(now) {
                Ok(()) => {
                    self.quorum_deadline = None;
                    self.record_end(now, Outcome::Ok);
                    self.run(now, Step::Promote);
                }
                Err(why) => {
                    let fenced = matches!(self.fence, Fence::Refused { .. }) && !self.repl.connected();
                    if fenced || self.quorum_deadline.is_some_and(|t| now >= t) {
                        self.quorum_deadline = None;
                        self.record_end(now, if fenced { Outcome::Failed(why.into()) } else { Outcome::TimedOut });
                        self.give_up(now, format!("no quorum to promote: {why}"));
                        self.step_down(now);
                    }
                }
            }
            return;
        }
        let step = if !self.mounted {
            Step::Mount
        } else if self.services_started < self.cfg.services.len() {
            Step::Start(self.services_started)
        } else if !self.healthy {
            Step::Health
        } else if !self.vip {
            Step::AllowVip
        } else {
            return;
        };
        self.begin_transition(now, Direction::Up, format!("VRRP {}", self.vrrp.keepalived_name()));
        self.run(now, step);
    }

    /// Why this node may not promote now, if it may not.
    fn quorum_for_promote(&mut self, now: Instant) -> Result<(), &'static str> {
        if self.repl.disk != DiskState::UpToDate {
            return Err("the local disk is not UpToDate");
        }
        if self.repl.connected() {
            // blockrepl's two-phase promote asks the peer; a Primary peer refuses.
            return match self.repl.peer_role {
                Some(Role::Secondary) => Ok(()),
                _ => Err("the connected peer is Primary"),
            };
        }
        if !self.lease_valid(now) {
            return Err("no peer and no witness lease");
        }
        match &self.fence {
            Fence::Held => Ok(()),
            Fence::Refused { .. } => Err("the fence is held by the peer: it may have writes this node lacks"),
            Fence::Released => Err("waiting for the fence"),
        }
    }

    fn step_down(&mut self, now: Instant) {
        if self.retry_at.is_some() {
            return;
        }
        let step = if self.vip {
            Step::VipOff
        } else if self.backups.running().is_some() {
            Step::CancelBackup
        } else if self.services_started > 0 {
            Step::Stop(self.services_started - 1)
        } else if self.mounted {
            Step::Unmount
        } else if self.promoted {
            let refused_before = self.transition.as_ref().is_some_and(|t| {
                t.direction == Direction::Down
                    && t.steps
                        .last()
                        .is_some_and(|s| matches!(s.step, Step::Demote { .. }) && !matches!(s.outcome, Outcome::Ok))
            });
            Step::Demote { kill_openers: refused_before || self.stuck }
        } else if self.vip_unsure {
            self.retry_vip_off(now);
            return;
        } else {
            self.healthy = false;
            self.end_transition(now);
            if self.shutdown && !self.stopped {
                self.stopped = true;
                self.actions.push_back(Action::Stopped);
            }
            return;
        };
        let why = if self.shutdown {
            "shutdown".to_string()
        } else if let Some(g) = &self.gave_up {
            g.clone()
        } else {
            format!("VRRP {}", self.vrrp.keepalived_name())
        };
        self.healthy = false;
        self.begin_transition(now, Direction::Down, why);
        self.run(now, step);
    }

    /// Runs the "remove VIP" step again once its retry time came.
    fn retry_vip_off(&mut self, now: Instant) {
        if self.vip_retry_at.is_some_and(|t| now < t) {
            return;
        }
        self.vip_retry_at = None;
        self.begin_transition(now, Direction::Down, "the VIP may still be allowed".into());
        self.run(now, Step::VipOff);
    }

    /// Keeps the lease and fence requests in line with the role.
    fn lease_and_fence(&mut self, now: Instant) {
        let primary = self.repl.role == Role::Primary || self.promoted;
        let trying = self.target_up() && !self.promoted && !self.repl.connected();
        let want = primary || trying;
        if want != self.want_lease {
            self.want_lease = want;
            self.actions.push_back(Action::WantLease(want));
            if !want {
                self.actions.push_back(Action::ReleaseLease);
                self.lease_until = None;
            }
        }
        // The fence: a Primary whose writes do not reach the peer takes it before it
        // acknowledges anything alone; a node about to promote without its peer takes it.
        let need_fence = (primary && !self.repl.peer_replicating())
            || (trying && self.lease_valid(now) && self.repl.disk == DiskState::UpToDate);
        if need_fence && self.fence == Fence::Released && !self.fence_asked {
            self.fence_asked = true;
            self.actions.push_back(Action::AcquireFence);
        }
        // Release it only when both disks are the same again (once per in-sync episode,
        // whatever this node believes: after a restart it does not know it holds it). Not
        // earlier, even when this node took it only to promote and never wrote: a node that
        // restarted cannot tell that from "it wrote alone before the crash" — it asks for the
        // fence again, the witness grants it (it is still its holder), and releasing it then
        // let the peer promote without those writes (simulation seed 238705).
        let in_sync = self.repl.in_sync();
        if !in_sync {
            self.released_in_sync = false;
        }
        if in_sync && !self.released_in_sync {
            self.released_in_sync = true;
            self.fence = Fence::Released;
            self.fence_asked = false;
            self.actions.push_back(Action::ReleaseFence);
        }
    }
}

/// Why a step (or a backup job) failed, as the shell reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure(pub String);

impl StepFailure {
    /// A failure with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
