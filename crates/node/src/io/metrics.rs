//! The node's own metric families, computed at scrape time from the daemon's last snapshot
//! (the engines register theirs — `rempart_vrrp_*`, `rempart_repl_*` — into the same registry).
//!
//! | family | type | labels |
//! |---|---|---|
//! | `rempart_node_phase` | gauge, 1 for the current phase | `phase` (`idle`, `waiting_quorum`, `starting_up`, `serving`, `stepping_down`, `gave_up`, `handing_over`, `stuck`, `stopped`) |
//! | `rempart_node_maintenance` | gauge 0/1 | |
//! | `rempart_node_transitions_total` | counter | `direction` (`up`, `down`), `result` (`ok`, `failed`) |
//! | `rempart_node_last_transition_duration_seconds` | gauge | `direction` |
//! | `rempart_node_step_duration_seconds` | gauge (last run of each step) | `step` |
//! | `rempart_node_lease_valid` | gauge 0/1 | |
//! | `rempart_node_lease_remaining_seconds` | gauge | |
//! | `rempart_node_fence_held` | gauge 0/1 | |
//! | `rempart_node_witness_connected` | gauge 0/1 | |
//! | `rempart_node_backup_last_success_timestamp_seconds` | gauge (0: never) | |
//! | `rempart_node_backup_running` | gauge 0/1 | |

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::orchestrator::{Direction, Phase, Step};

/// Every phase, with its label value.
pub const PHASES: [(Phase, &str); 9] = [
    (Phase::Idle, "idle"),
    (Phase::WaitingQuorum, "waiting_quorum"),
    (Phase::StartingUp, "starting_up"),
    (Phase::Serving, "serving"),
    (Phase::SteppingDown, "stepping_down"),
    (Phase::GaveUp, "gave_up"),
    (Phase::HandingOver, "handing_over"),
    (Phase::Stuck, "stuck"),
    (Phase::Stopped, "stopped"),
];

/// The label value of a phase.
#[must_use]
pub fn phase_label(p: Phase) -> &'static str {
    PHASES.iter().find(|(q, _)| *q == p).map_or("idle", |(_, l)| l)
}

/// The label value of a step (every service's start is `start`, its stop `stop`).
#[must_use]
pub fn step_label(s: Step) -> &'static str {
    match s {
        Step::Quorum => "quorum",
        Step::Promote => "promote",
        Step::Mount => "mount",
        Step::Start(_) => "start",
        Step::Health => "health",
        Step::AllowVip => "vip",
        Step::VipOff => "vip_off",
        Step::CancelBackup => "cancel_backup",
        Step::Stop(_) => "stop",
        Step::Unmount => "unmount",
        Step::Demote { .. } => "demote",
    }
}

/// The label value of a direction.
#[must_use]
pub fn direction_label(d: Direction) -> &'static str {
    match d {
        Direction::Up => "up",
        Direction::Down => "down",
    }
}

/// What the daemon publishes for a scrape.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Current phase.
    pub phase: Option<Phase>,
    /// Maintenance mode.
    pub maintenance: bool,
    /// Ended transitions by (direction, ok).
    pub transitions: BTreeMap<(&'static str, bool), u64>,
    /// Duration of the last ended transition, by direction.
    pub last_transition: BTreeMap<&'static str, f64>,
    /// Last duration of each step.
    pub steps: BTreeMap<&'static str, f64>,
    /// Until when the lease may be relied on.
    pub lease_until: Option<Instant>,
    /// The fence is held.
    pub fence_held: bool,
    /// The witness connection is up.
    pub witness_connected: bool,
    /// Unix time of the last successful backup.
    pub backup_last_success: Option<f64>,
    /// A backup is running.
    pub backup_running: bool,
    /// The last ended transition already counted (its start and direction).
    pub last_transition_key: Option<(Instant, &'static str)>,
}

/// The shared snapshot the collector reads.
pub type Shared = Arc<Mutex<Snapshot>>;

#[derive(Debug)]
struct NodeCollector(Shared);

/// Registers the node families into `registry`; the daemon updates the returned snapshot.
pub fn register(registry: &mut Registry) -> Shared {
    let shared: Shared = Arc::default();
    registry.register_collector(Box::new(NodeCollector(shared.clone())));
    shared
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: f64) -> std::fmt::Result {
    let m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

fn b(x: bool) -> f64 {
    if x {
        1.0
    } else {
        0.0
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> std::fmt::Result {
        let s = match self.0.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        {
            let mut fam = enc.encode_descriptor(
                "rempart_node_phase",
                "1 for the node's current phase.",
                None,
                MetricType::Gauge,
            )?;
            for (p, label) in PHASES {
                let labels = [("phase", label)];
                ConstGauge::new(b(s.phase == Some(p))).encode(fam.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut enc,
            "rempart_node_maintenance",
            "1 while maintenance mode is on (no automatic failover).",
            b(s.maintenance),
        )?;
        {
            let mut fam = enc.encode_descriptor(
                "rempart_node_transitions",
                "Ended transitions, by direction and result.",
                None,
                MetricType::Counter,
            )?;
            for d in ["up", "down"] {
                for (ok, r) in [(true, "ok"), (false, "failed")] {
                    let n = s.transitions.get(&(d, ok)).copied().unwrap_or(0);
                    let labels = [("direction", d), ("result", r)];
                    ConstCounter::new(n).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
        {
            let mut fam = enc.encode_descriptor(
                "rempart_node_last_transition_duration_seconds",
                "Duration of the last ended transition, by direction.",
                None,
                MetricType::Gauge,
            )?;
            for (d, v) in &s.last_transition {
                let labels = [("direction", *d)];
                ConstGauge::new(*v).encode(fam.encode_family(&labels)?)?;
            }
        }
        {
            let mut fam = enc.encode_descriptor(
                "rempart_node_step_duration_seconds",
                "Duration of the last run of each step.",
                None,
                MetricType::Gauge,
            )?;
            for (st, v) in &s.steps {
                let labels = [("step", *st)];
                ConstGauge::new(*v).encode(fam.encode_family(&labels)?)?;
            }
        }
        let now = Instant::now();
        let remaining = s.lease_until.map_or(0.0, |u| u.saturating_duration_since(now).as_secs_f64());
        gauge(
            &mut enc,
            "rempart_node_lease_valid",
            "1 while the witness's lease may be relied on.",
            b(remaining > 0.0),
        )?;
        gauge(&mut enc, "rempart_node_lease_remaining_seconds", "Time left on the witness's lease.", remaining)?;
        gauge(
            &mut enc,
            "rempart_node_fence_held",
            "1 while this node holds the fence (it may have writes its peer lacks).",
            b(s.fence_held),
        )?;
        gauge(
            &mut enc,
            "rempart_node_witness_connected",
            "1 while an authenticated connection to the witness is up.",
            b(s.witness_connected),
        )?;
        gauge(
            &mut enc,
            "rempart_node_backup_last_success_timestamp_seconds",
            "Unix time of the last successful backup, this node's or the repository's newest (0: none known).",
            s.backup_last_success.unwrap_or(0.0),
        )?;
        gauge(&mut enc, "rempart_node_backup_running", "1 while a backup runs on this node.", b(s.backup_running))?;
        Ok(())
    }
}
