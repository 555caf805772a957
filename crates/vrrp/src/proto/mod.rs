//! Sans-IO VRRP election (RFC 5798 §6, with keepalived's Fault state).
//!
//! ```text
//!               start (priority 255)            master-down timer / priority-0 advert + skew
//!  Initialize ───────────────────────▶ Master ◀───────────────────────────────────── Backup
//!      │  start (priority < 255)         │  advert with higher priority (ties: higher    ▲
//!      └───────────────────────────────▶─┼─ primary address) ─────────────────────────▶─┘
//!                                        │
//!   any state ── set_fault(true) ──▶ Fault ── set_fault(false) ──▶ Backup (or Master if owner)
//!   any state ── shutdown() ──▶ Initialize (a master first sends priority 0 and drops its VIPs)
//! ```
//!
//! The machine never reads a clock or a socket. The IO layer calls:
//! - [`Instance::start`] once, [`Instance::handle_packet`] for every parsed advertisement,
//!   [`Instance::handle_timeout`] when [`Instance::poll_timeout`] is reached,
//!   [`Instance::set_priority_offset`] / [`Instance::set_fault`] when tracked scripts or interfaces
//!   change, [`Instance::shutdown`] on SIGTERM;
//! - then drains [`Instance::poll_action`] after each call and performs the actions in order.
//!
//! # Timing (RFC 5798 §6.1)
//! All intervals are kept in microseconds, as keepalived does:
//! `Skew_Time = (256 − Priority) × Master_Adver_Interval / 256` and
//! `Master_Down_Interval = 3 × Master_Adver_Interval + Skew_Time`. A backup adopts the master's
//! advertised interval (VRRPv3). With a 1 s interval and priority 100 this gives 3.609375 s, the
//! figure measured for keepalived 2.2.7. A master that stops sends priority 0; backups then wait
//! only `Skew_Time`, so the highest-priority backup (smallest skew) takes over first.

pub mod group;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::wire::{Auth, DropReason, Repr, Version};

/// Election state. The discriminants are the values of the `rempart_vrrp_state` metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Not started or stopped.
    Initialize = 0,
    /// Listening to a master.
    Backup = 1,
    /// Holding the virtual addresses and advertising.
    Master = 2,
    /// A tracked interface or script with weight 0 failed (keepalived's FAULT).
    Fault = 3,
}

impl State {
    /// keepalived's upper-case name (`MASTER`, `BACKUP`, `FAULT`, `INIT`), as passed to notify
    /// scripts.
    #[must_use]
    pub fn keepalived_name(&self) -> &'static str {
        match self {
            State::Initialize => "INIT",
            State::Backup => "BACKUP",
            State::Master => "MASTER",
            State::Fault => "FAULT",
        }
    }
}

/// Why a transition happened (shown by `status` and logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Instance started.
    Startup,
    /// We own the addresses (priority 255).
    Owner,
    /// No advertisement for Master_Down_Interval.
    MasterDown,
    /// The master sent priority 0 and Skew_Time passed.
    MasterStopped,
    /// An advertisement with a higher priority (or equal with a higher address) arrived.
    HigherPriority {
        /// Sender.
        from: IpAddr,
        /// Its priority.
        priority: u8,
    },
    /// A tracked interface or script put us in fault.
    Fault,
    /// The fault cleared.
    FaultCleared,
    /// Shut down by the operator.
    Shutdown,
    /// Another member of the sync group changed state.
    SyncGroup,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Startup => write!(f, "startup"),
            Reason::Owner => write!(f, "address owner"),
            Reason::MasterDown => write!(f, "master down interval expired"),
            Reason::MasterStopped => write!(f, "master sent priority 0"),
            Reason::HigherPriority { from, priority } => {
                write!(f, "higher priority advert from {from} (priority {priority})")
            }
            Reason::Fault => write!(f, "fault"),
            Reason::FaultCleared => write!(f, "fault cleared"),
            Reason::Shutdown => write!(f, "shutdown"),
            Reason::SyncGroup => write!(f, "sync group"),
        }
    }
}

/// What the IO layer must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Send an advertisement now with this priority (0 when stopping).
    SendAdvert {
        /// Priority field.
        priority: u8,
    },
    /// Add the virtual addresses.
    AddVips,
    /// Remove the virtual addresses.
    RemoveVips,
    /// Send gratuitous ARPs / unsolicited neighbour advertisements for the VIPs.
    Announce,
    /// The state changed: log, notify scripts, update metrics and sync group.
    StateChange {
        /// Previous state.
        from: State,
        /// New state.
        to: State,
        /// Why.
        reason: Reason,
    },
}

/// Static settings of one virtual router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Virtual router id.
    pub vrid: u8,
    /// [`Version::V2`] or [`Version::V3`].
    pub version: Version,
    /// Base priority (1..=255; 255 = address owner).
    pub priority: u8,
    /// Advertisement interval (VRRPv3: multiple of 10 ms, up to 40.95 s; VRRPv2: whole seconds).
    pub adver_int: Duration,
    /// Preempt a lower-priority master (keepalived default true; `nopreempt` sets false).
    pub preempt: bool,
    /// keepalived `preempt_delay`: after startup, after leaving Fault, and from the first
    /// advertisement of a lower-priority master, keep accepting that master for this long
    /// before preempting it (the takeover then still waits Master_Down_Interval).
    pub preempt_delay: Duration,
    /// Our primary address on the interface (tie-break, and own-packet filter).
    pub primary: IpAddr,
    /// VRRPv2 authentication expected and sent.
    pub auth: Auth,
}

impl Config {
    /// The interval in the unit the wire carries (centiseconds for v3, seconds for v2).
    #[must_use]
    pub fn wire_interval(&self) -> u16 {
        wire_interval(self.version, self.adver_int)
    }
}

fn wire_interval(version: Version, d: Duration) -> u16 {
    match version {
        Version::V2 => d.as_secs().clamp(1, 255) as u16,
        _ => (d.as_millis() / 10).clamp(1, 4095) as u16,
    }
}

/// Counters kept by the machine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transitions to Master.
    pub become_master: u64,
    /// Advertisements accepted.
    pub adverts_received: u64,
    /// Advertisements requested (SendAdvert actions).
    pub adverts_sent: u64,
    /// Transitions out of Master.
    pub released_master: u64,
    /// Advertisements with priority 0 (a master stopping) accepted.
    pub priority_zero_received: u64,
    /// Advertisements with priority 0 requested (we stopped as master).
    pub priority_zero_sent: u64,
    /// Dropped: VRRPv2 authentication differs from ours (keepalived: "invalid passwd").
    pub auth_failures: u64,
    /// Dropped: advertisement interval differs (VRRPv2) or is 0.
    pub interval_errors: u64,
    /// Dropped: VRRP version differs from the instance's.
    pub version_errors: u64,
    /// Dropped: TTL / hop limit not 255.
    pub ttl_errors: u64,
    /// Dropped: another owner (priority 255) of our addresses.
    pub owner_conflicts: u64,
}

impl Stats {
    fn count_drop(&mut self, r: DropReason) {
        let c = match r {
            DropReason::Auth => &mut self.auth_failures,
            DropReason::Interval => &mut self.interval_errors,
            DropReason::VersionMismatch => &mut self.version_errors,
            DropReason::Ttl(_) => &mut self.ttl_errors,
            DropReason::Owner => &mut self.owner_conflicts,
            _ => return,
        };
        *c += 1;
    }
}

/// Skew_Time for `priority` and an interval, in microseconds precision.
#[must_use]
pub fn skew_time(priority: u8, master_adver_int: Duration) -> Duration {
    let us = master_adver_int.as_micros() as u64;
    Duration::from_micros((256 - u64::from(priority)) * us / 256)
}

/// Master_Down_Interval for `priority` and an interval.
#[must_use]
pub fn master_down_interval(priority: u8, master_adver_int: Duration) -> Duration {
    master_adver_int * 3 + skew_time(priority, master_adver_int)
}

/// One virtual router (one `vrrp_instance`).
#[derive(Debug)]
pub struct Instance {
    cfg: Config,
    state: State,
    offset: i32,
    fault: bool,
    master_adver_int: Duration,
    timer: Option<Instant>,
    started: Option<Instant>,
    /// keepalived's `preempt_time`: until when a lower-priority master is still accepted.
    preempt_until: Option<Instant>,
    master: Option<IpAddr>,
    master_stopped: bool,
    last_transition: Option<(Instant, Reason)>,
    actions: VecDeque<Action>,
    stats: Stats,
}

impl Instance {
    /// A new instance in [`State::Initialize`]. Call [`Instance::start`] to run it.
    #[must_use]
    pub fn new(cfg: Config) -> Instance {
        let master_adver_int = cfg.adver_int;
        Instance {
            cfg,
            state: State::Initialize,
            offset: 0,
            fault: false,
            master_adver_int,
            timer: None,
            started: None,
            preempt_until: None,
            master: None,
            master_stopped: false,
            last_transition: None,
            actions: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// Current state.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }
    /// Counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.stats
    }
    /// Address of the current master (ourselves when master), if known.
    #[must_use]
    pub fn master(&self) -> Option<IpAddr> {
        self.master
    }
    /// Time and reason of the last transition.
    #[must_use]
    pub fn last_transition(&self) -> Option<(Instant, Reason)> {
        self.last_transition
    }
    /// Interval currently used to compute Master_Down_Interval.
    #[must_use]
    pub fn master_adver_int(&self) -> Duration {
        self.master_adver_int
    }

    /// Effective priority: base plus tracked weights, kept in 1..=254; an owner (255) stays 255.
    #[must_use]
    pub fn effective_priority(&self) -> u8 {
        if self.cfg.priority == 255 {
            255
        } else {
            (i32::from(self.cfg.priority) + self.offset).clamp(1, 254) as u8
        }
    }

    /// Master_Down_Interval as this instance computes it now.
    #[must_use]
    pub fn master_down_interval(&self) -> Duration {
        master_down_interval(self.effective_priority(), self.master_adver_int)
    }

    /// When to call [`Instance::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timer
    }

    /// Next action to perform; call until `None` after every input.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    fn transition(&mut self, now: Instant, to: State, reason: Reason) {
        let from = self.state;
        if from == to {
            return;
        }
        if from == State::Master {
            self.stats.released_master += 1;
            self.actions.push_back(Action::RemoveVips);
        }
        self.state = to;
        self.last_transition = Some((now, reason));
        match to {
            State::Master => {
                self.stats.become_master += 1;
                self.master_stopped = false;
                self.master = Some(self.cfg.primary);
                self.send(self.effective_priority());
                self.actions.push_back(Action::AddVips);
                self.actions.push_back(Action::Announce);
                self.timer = Some(now + self.cfg.adver_int);
            }
            State::Backup => {
                if from == State::Master {
                    // We just heard from the new master (or were forced); wait a full interval.
                } else {
                    self.master = None;
                    self.master_adver_int = self.cfg.adver_int;
                }
                self.timer = Some(now + self.master_down_interval());
            }
            State::Fault | State::Initialize => {
                self.master = None;
                self.timer = None;
            }
        }
        self.actions.push_back(Action::StateChange { from, to, reason });
    }

    fn send(&mut self, priority: u8) {
        self.stats.adverts_sent += 1;
        if priority == 0 {
            self.stats.priority_zero_sent += 1;
        }
        self.actions.push_back(Action::SendAdvert { priority });
    }

    /// Starts the instance (RFC 5798 §6.4.1): the owner becomes Master at once, others Backup.
    pub fn start(&mut self, now: Instant) {
        if self.state != State::Initialize {
            return;
        }
        self.started = Some(now);
        self.arm_preempt_delay(now);
        if self.fault {
            self.transition(now, State::Fault, Reason::Fault);
        } else if self.cfg.priority == 255 {
            self.transition(now, State::Master, Reason::Owner);
        } else {
            self.transition(now, State::Backup, Reason::Startup);
        }
    }

    /// Stops the instance: a master sends priority 0 and removes its VIPs (RFC 5798 §6.4.3).
    pub fn shutdown(&mut self, now: Instant) {
        if self.state == State::Master {
            self.send(0);
        }
        self.transition(now, State::Initialize, Reason::Shutdown);
        self.started = None;
    }

    /// Call when the adver/master-down timer from [`Instance::poll_timeout`] is reached.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(t) = self.timer else { return };
        if now < t {
            return;
        }
        match self.state {
            State::Master => {
                self.send(self.effective_priority());
                self.timer = Some(now + self.cfg.adver_int);
            }
            State::Backup => {
                let reason = if self.master_stopped { Reason::MasterStopped } else { Reason::MasterDown };
                self.transition(now, State::Master, reason);
            }
            State::Fault | State::Initialize => self.timer = None,
        }
    }

    /// Handles an advertisement for this VRID received from `src` with IP TTL/hop limit `ttl`.
    /// Returns why it was dropped, if it was (RFC 5798 §7.1 rules that need instance config).
    /// Drops are counted in [`Instance::stats`] by reason.
    pub fn handle_packet(&mut self, now: Instant, src: IpAddr, ttl: u8, adv: &Repr) -> Result<(), DropReason> {
        let r = self.accept_packet(now, src, ttl, adv);
        if let Err(e) = r {
            self.stats.count_drop(e);
        }
        r
    }

    fn accept_packet(&mut self, now: Instant, src: IpAddr, ttl: u8, adv: &Repr) -> Result<(), DropReason> {
        if ttl != crate::wire::TTL {
            return Err(DropReason::Ttl(ttl));
        }
        if adv.vrid != self.cfg.vrid {
            return Err(DropReason::UnknownVrid);
        }
        if adv.version != self.cfg.version {
            return Err(DropReason::VersionMismatch);
        }
        if src == self.cfg.primary {
            return Err(DropReason::Own);
        }
        if self.cfg.version == Version::V2 {
            if adv.auth != self.cfg.auth {
                return Err(DropReason::Auth);
            }
            if adv.interval != self.cfg.wire_interval() {
                return Err(DropReason::Interval);
            }
        } else if adv.interval == 0 {
            return Err(DropReason::Interval);
        }
        if self.cfg.priority == 255 && adv.priority == 255 {
            // Two owners of the same addresses: a configuration error on the LAN.
            return Err(DropReason::Owner);
        }
        self.stats.adverts_received += 1;
        if adv.priority == 0 {
            self.stats.priority_zero_received += 1;
        }
        let adv_int = match self.cfg.version {
            Version::V2 => self.cfg.adver_int,
            _ => Duration::from_millis(u64::from(adv.interval) * 10),
        };
        let local = self.effective_priority();
        match self.state {
            State::Backup => {
                if adv.priority == 0 {
                    self.timer = Some(now + skew_time(local, self.master_adver_int));
                    self.master = None;
                    self.master_stopped = true;
                } else if !self.cfg.preempt || adv.priority >= local || self.preempt_delayed(now) {
                    self.master_adver_int = adv_int;
                    self.master = Some(src);
                    self.master_stopped = false;
                    self.timer = Some(now + self.master_down_interval());
                    if !self.cfg.preempt_delay.is_zero() {
                        // keepalived: a master at least as good as us stops the delay; the first
                        // advert of a lower-priority master starts it.
                        if adv.priority >= local {
                            self.preempt_until = None;
                        } else if self.preempt_until.is_none() {
                            self.preempt_until = Some(now + self.cfg.preempt_delay);
                        }
                    }
                }
                // else: preempting a lower-priority master; let the timer run out.
            }
            State::Master => {
                if adv.priority == 0 {
                    self.send(local);
                    self.timer = Some(now + self.cfg.adver_int);
                } else if adv.priority > local || (adv.priority == local && addr_gt(src, self.cfg.primary)) {
                    self.master_adver_int = adv_int;
                    self.master = Some(src);
                    self.timer = Some(now + self.master_down_interval());
                    self.transition(now, State::Backup, Reason::HigherPriority { from: src, priority: adv.priority });
                    // transition() set the timer from the adopted interval already.
                }
            }
            State::Fault | State::Initialize => {}
        }
        Ok(())
    }

    /// Whether a lower-priority master must still be accepted (keepalived: `preempt_delay` set
    /// and its timer either not started yet or not expired).
    fn preempt_delayed(&self, now: Instant) -> bool {
        !self.cfg.preempt_delay.is_zero() && self.preempt_until.is_none_or(|t| now < t)
    }

    fn arm_preempt_delay(&mut self, now: Instant) {
        self.preempt_until = (!self.cfg.preempt_delay.is_zero()).then(|| now + self.cfg.preempt_delay);
    }

    /// When the running preemption delay ends, if one runs (for `status` and tests).
    #[must_use]
    pub fn preempt_delay_until(&self) -> Option<Instant> {
        self.preempt_until.filter(|_| !self.cfg.preempt_delay.is_zero())
    }

    /// Sets the sum of the weights of failing (negative) or succeeding (positive) tracked
    /// scripts and interfaces. A backup whose priority rises above a master's preempts it after
    /// Master_Down_Interval; a master whose priority falls advertises it at the next interval.
    pub fn set_priority_offset(&mut self, _now: Instant, offset: i32) {
        self.offset = offset;
    }

    /// Enters or leaves Fault (a tracked interface down, or a weight-0 script failing).
    pub fn set_fault(&mut self, now: Instant, fault: bool) {
        if self.fault == fault {
            return;
        }
        self.fault = fault;
        if self.state == State::Initialize && self.started.is_none() {
            return;
        }
        if fault {
            if self.state == State::Master {
                self.send(0);
            }
            self.transition(now, State::Fault, Reason::Fault);
        } else if self.cfg.priority == 255 {
            self.transition(now, State::Master, Reason::FaultCleared);
        } else {
            // keepalived restarts the preemption delay when leaving Fault.
            self.arm_preempt_delay(now);
            self.transition(now, State::Backup, Reason::FaultCleared);
        }
    }

    /// Forces a state because another member of a sync group changed (see [`group`]).
    /// Only Master ↔ Backup and → Fault are forced; a faulty instance stays in Fault.
    pub fn sync_to(&mut self, now: Instant, to: State) {
        if self.state == to || self.state == State::Initialize {
            return;
        }
        match to {
            State::Master if self.state == State::Backup => self.transition(now, State::Master, Reason::SyncGroup),
            State::Backup if self.state == State::Master => self.transition(now, State::Backup, Reason::SyncGroup),
            State::Fault => {
                if self.state == State::Master {
                    self.send(0);
                }
                self.transition(now, State::Fault, Reason::SyncGroup)
            }
            State::Backup if self.state == State::Fault && !self.fault => {
                self.transition(now, State::Backup, Reason::SyncGroup)
            }
            _ => {}
        }
    }
}

fn addr_gt(a: IpAddr, b: IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a > b,
        (IpAddr::V6(a), IpAddr::V6(b)) => a > b,
        (a, b) => a > b,
    }
}

#[cfg(test)]
mod tests;
