//! `rempart-node run`: the tokio shell around one [`Orchestrator`], which owns the three
//! engines as libraries — the VRRP engine (VIPs gated: added only when the orchestrator allows
//! them), the replicated resources (quorum gate on, fed the witness's lease), the witness
//! clients (the lease, and the fence) — and performs the orchestrator's actions.
//!
//! ```text
//!  vrrp::io::engine ── StateChanged(instance 0) ──┐
//!  blockrepl Resource ── watch status (first) ────┤                     ┌─▶ Executor (one step at a time:
//!  WitnessClient(lease) ── watch lease_until ─────┤                     │     promote, mount, services, VIP…)
//!  WitnessClient(fence) ── watch held / refused ──┼──▶ Orchestrator ──┤─▶ vrrp: force/clear FAULT, priority
//!  step / backup results ─────────────────────────┤   (now, input)     ├─▶ witness: want lease / fence
//!  control socket: status, switchover, maint. ────┤                     ├─▶ runner::run_async (backup, Cancel)
//!  timer (poll_timeout) ──────────────────────────┘                     └─▶ Resource::set_lease(lease if fence held)
//! ```
//!
//! The acknowledgement gate lives in the replication core: the daemon feeds it the lease's end
//! **only while this node holds the fence** ([`crate::Orchestrator::may_ack_alone`]'s rule), so a
//! Primary whose peer vanished acknowledges alone only with both. The service follows the first
//! VRRP instance of the configuration; FAULT, priority and the VIP gate apply to every instance
//! (a sync group moves together). Every resource is promoted and demoted together; the status of
//! the first one drives the orchestrator.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blockrepl::metrics::ReplMetrics;
use blockrepl::resource::{Resource, ResourceSpec, ResourceStatus};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};
use vrrp::io::engine::{self, Event, Options, VipControl};

use super::metrics::{self as node_metrics, direction_label, phase_label, step_label};
use super::steps::{is_mounted, Executor, Parts};
use super::witness_client::{WitnessClient, WitnessClientConfig};
use crate::config::{NodeConfig, OnNoQuorum};
use crate::orchestrator::{
    Action, Command, Config as OrchConfig, Fence, LastBackupFrom, Orchestrator, Outcome, ReplView, Status, StepFailure,
    Timeouts,
};
use crate::witness::client::ClientConfig;

/// The fence's TTL asked of the witness (it grants at most its `max_fence_ttl`).
pub const FENCE_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Where the daemon keeps its files.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Runtime files (nbdfuse directories).
    pub run_dir: PathBuf,
    /// Persistent state (the last successful backup, the runner's state).
    pub state_dir: PathBuf,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The configuration does not fit this host (a resource without this node...).
    #[error("{0}")]
    Config(String),
    /// A replicated resource could not start.
    #[error("resource {name}: {source}")]
    Resource {
        /// Resource name.
        name: String,
        /// Cause.
        source: blockrepl::resource::Error,
    },
    /// The VRRP engine could not start.
    #[error("vrrp: {0}")]
    Vrrp(#[from] engine::EngineError),
    /// The witness secret could not be used.
    #[error(transparent)]
    Secret(#[from] super::SecretError),
    /// A directory could not be created.
    #[error("creating {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

enum Request {
    Status(oneshot::Sender<Value>),
    Command(Command, oneshot::Sender<Result<(), String>>),
}

/// The running daemon: cheap to clone.
#[derive(Clone)]
pub struct Node {
    requests: mpsc::UnboundedSender<Request>,
    done: watch::Receiver<bool>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("stopped", &*self.done.borrow()).finish_non_exhaustive()
    }
}

impl Node {
    /// The status document (`rempart-node status --json`); `None` once stopped.
    pub async fn status(&self) -> Option<Value> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Status(tx)).ok()?;
        rx.await.ok()
    }

    /// An operator command; `Err` with the reason when refused.
    pub async fn command(&self, cmd: Command) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Command(cmd, tx)).map_err(|_| "the node has stopped".to_owned())?;
        rx.await.map_err(|_| "the node has stopped".to_owned())?
    }

    /// Takes the service down in order (if it runs here), releases the lease, stops the
    /// engines; returns once everything has stopped.
    pub async fn shutdown(&self) {
        let _ = self.command(Command::Shutdown).await;
        self.stopped().await;
    }

    /// Waits until the daemon has stopped (after a shutdown, or an engine that died).
    pub async fn stopped(&self) {
        let mut d = self.done.clone();
        let _ = d.wait_for(|x| *x).await;
    }
}

fn dir(p: &Path) -> Result<(), NodeError> {
    std::fs::create_dir_all(p).map_err(|source| NodeError::Dir { path: p.display().to_string(), source })
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The orchestrator's settings from node.toml.
#[must_use]
pub fn orchestrator_config(cfg: &NodeConfig) -> OrchConfig {
    let t = &cfg.timeouts;
    let svc = cfg.services.iter().map(|s| s.timeout).max().unwrap_or(Duration::from_secs(60));
    OrchConfig {
        services: cfg.services.iter().map(|s| s.name.clone()).collect(),
        timeouts: Timeouts {
            // Without the peer, the lease can only come once the old holder's ran out.
            quorum: t.quorum.max(cfg.witness.ttl * 2),
            promote: t.promote,
            mount: t.mount,
            start: svc,
            health: t.health,
            vip: t.vip,
            vip_off: t.vip,
            cancel_backup: Duration::from_secs(30),
            stop: svc,
            unmount: t.unmount,
            demote: t.demote,
        },
        step_down_budget: t.step_down,
        fault_hold: t.fault_hold,
        backup_interval: cfg.backup.as_ref().map(|b| b.every),
        ..OrchConfig::default()
    }
}

/// Starts the daemon on the current runtime: the replicated resources, the VRRP engine, the
/// witness clients; cleans up what a killed predecessor left; then runs the orchestrator until
/// a shutdown. Metrics of every engine go into `registry`.
pub async fn start(cfg: NodeConfig, opts: NodeOptions, registry: &mut Registry) -> Result<Node, NodeError> {
    dir(&opts.run_dir)?;
    dir(&opts.state_dir)?;
    let key = super::witness_key(&cfg.witness.secret_file)?;
    let first_instance = cfg
        .vrrp
        .instances
        .first()
        .map(|i| i.name.clone())
        .ok_or_else(|| NodeError::Config("no vrrp_instance configured".into()))?;
    if cfg.resources.is_empty() {
        return Err(NodeError::Config("no replicated resource configured".into()));
    }

    // The replicated resources, quorum gate on.
    let repl_metrics = ReplMetrics::register(registry);
    let mut resources: Vec<Resource> = Vec::new();
    let mut nbd_sockets = Vec::new();
    for rc in &cfg.resources {
        let mut rc = rc.clone();
        rc.resource.quorum = "majority".into();
        rc.resource.on_no_quorum = match cfg.witness.on_no_quorum {
            OnNoQuorum::SuspendIo => "suspend-io",
            OnNoQuorum::IoError => "io-error",
        }
        .into();
        let name = rc.resource.name.clone();
        let started = async {
            let spec = ResourceSpec::from_config(&rc, &cfg.node, None)?;
            if let Some(blockrepl::config::NbdEndpoint::Unix(p)) = &spec.nbd {
                nbd_sockets.push((spec.name.clone(), p.clone()));
            }
            Resource::start_with_metrics(spec, &repl_metrics).await
        }
        .await;
        match started {
            Ok(r) => resources.push(r),
            Err(source) => {
                for r in resources {
                    let _ = r.shutdown().await;
                }
                return Err(NodeError::Resource { name, source });
            }
        }
    }
    let handles: Vec<(String, blockrepl::io::Handle)> =
        cfg.resources.iter().zip(&resources).map(|(c, r)| (c.resource.name.clone(), r.handle().clone())).collect();

    // The VRRP engine, VIPs gated.
    let vopts = Options {
        vips: VipControl::Gated,
        config_path: match &cfg.vrrp_source {
            crate::config::VrrpSource::File(p) => Some(p.clone()),
            crate::config::VrrpSource::Inline => Some(cfg.path.clone()),
        },
        ..Options::default()
    };
    let (vrrp, vrrp_events) = match engine::start(cfg.vrrp.clone(), vopts, registry).await {
        Ok(x) => x,
        Err(e) => {
            for r in resources {
                let _ = r.shutdown().await;
            }
            return Err(e.into());
        }
    };
    let instances: Vec<String> = cfg.vrrp.instances.iter().map(|i| i.name.clone()).collect();

    // The witness: one client for the leases, one for the fences (a TTL of days, renewed and
    // asked again as often as the lease).
    let names: Vec<String> = cfg.resources.iter().map(|c| c.resource.name.clone()).collect();
    let lease_name = names[0].clone();
    let fence_name = format!("{lease_name}{}", crate::witness::server::FENCE_SUFFIX);
    let lease_cfg = ClientConfig::new(cfg.node.clone(), cfg.witness.ttl);
    let lease = WitnessClient::spawn(WitnessClientConfig::new(
        cfg.witness.address.clone(),
        key,
        lease_cfg.clone(),
        vec![lease_name.clone()],
    ));
    let fence_client_cfg = ClientConfig {
        ttl: FENCE_TTL,
        margin: FENCE_TTL / 10,
        // Renewed as often as the lease: a restarted witness learns the fence back from its
        // holder's renewals during its start-up grace (see the crate docs).
        renew_interval: lease_cfg.renew_interval,
        retry_interval: lease_cfg.retry_interval,
        node: cfg.node.clone(),
    };
    let mut fence_wcfg =
        WitnessClientConfig::new(cfg.witness.address.clone(), key, fence_client_cfg, vec![fence_name.clone()]);
    fence_wcfg.request_timeout = (cfg.witness.ttl / 6).max(Duration::from_millis(100));
    let fence = WitnessClient::spawn(fence_wcfg);

    let exec = Executor::new(Parts {
        vrrp: vrrp.clone(),
        instances: instances.clone(),
        resources: handles.clone(),
        nbd_sockets,
        mounts: cfg.mounts.clone(),
        services: cfg.services.clone(),
        run_dir: opts.run_dir.clone(),
    });
    let cleaned = exec.cleanup_leftovers().await;
    if !cleaned.is_empty() {
        warn!(done = ?cleaned, "cleaned up what a previous run left behind");
    }

    let snapshot = node_metrics::register(registry);
    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = watch::channel(false);
    let last_backup = read_last_backup(&opts.state_dir);
    if let Ok(mut s) = snapshot.lock() {
        s.backup_last_success = last_backup;
    }
    let mut orch = Orchestrator::new(orchestrator_config(&cfg));
    let repl_rx = resources[0].handle().watch_status();
    let now = Instant::now();
    let first = repl_rx.borrow().clone();
    orch.start(now, ReplView::from_status(&first.replica), last_backup.map(|t| instant_of(now, t)));
    // The VRRP state as it is now (events before the subscription are not replayed).
    if let Ok(st) = vrrp.status().await {
        if let Some(i) = st.iter().find(|i| i.name == first_instance) {
            if let Some(s) = parse_state(&i.state) {
                orch.handle_vrrp(Instant::now(), s);
            }
        }
    }
    let shell = Shell {
        cfg,
        opts,
        orch,
        vrrp,
        vrrp_events,
        first_instance,
        instances,
        resources,
        handles,
        repl_rx,
        lease,
        lease_name,
        fence,
        fence_name,
        exec,
        snapshot,
        running_step: None,
        backups: Vec::new(),
        backup_last_result: None,
        gate: None,
        fence_held: false,
        split_brains_handled: first.replica.split_brains,
        steps_seen: 0,
    };
    tokio::spawn(shell.run(req_rx, done_tx));
    Ok(Node { requests: req_tx, done: done_rx })
}

fn parse_state(s: &str) -> Option<vrrp::proto::State> {
    use vrrp::proto::State;
    Some(match s {
        "MASTER" => State::Master,
        "BACKUP" => State::Backup,
        "FAULT" => State::Fault,
        "INIT" => State::Initialize,
        _ => return None,
    })
}

const LAST_BACKUP_FILE: &str = "last-backup";

/// How long a read of the repository's newest archive may take before it counts as failed.
const REPOSITORY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The monotonic instant of Unix time `t` (`now` is the instant of the wall clock's now).
fn instant_of(now: Instant, t: f64) -> Instant {
    let ago = Duration::from_secs_f64((unix_now() - t).max(0.0));
    now.checked_sub(ago).unwrap_or(now)
}

/// The time (Unix) of the last complete backup in the repositories of `borgmatic`: the
/// oldest of each repository's newest complete archive's end (a run succeeds only when every
/// repository got its archive), `None` when one holds none. Blocking.
fn newest_in_repositories(borgmatic: &Path) -> Result<Option<f64>, String> {
    let loaded = runner::load(borgmatic).map_err(|e| e.lines().join("; "))?;
    let mut last: Option<f64> = None;
    for r in runner::newest_archives(&[loaded], &runner::RunOptions::default()) {
        match r.newest {
            Err(e) => return Err(format!("repository {}: {e}", r.label)),
            Ok(None) => return Ok(None),
            Ok(Some(a)) => {
                let t = a.end.timestamp_millis() as f64 / 1000.0;
                last = Some(last.map_or(t, |l| l.min(t)));
            }
        }
    }
    Ok(last)
}

fn read_last_backup(state_dir: &Path) -> Option<f64> {
    std::fs::read_to_string(state_dir.join(LAST_BACKUP_FILE)).ok()?.trim().parse().ok()
}

fn write_last_backup(state_dir: &Path, t: f64) {
    let tmp = state_dir.join(format!("{LAST_BACKUP_FILE}.tmp"));
    let r = std::fs::write(&tmp, format!("{t:.3}\n"))
        .and_then(|()| std::fs::rename(&tmp, state_dir.join(LAST_BACKUP_FILE)));
    if let Err(e) = r {
        warn!(error = %e, "cannot record the last successful backup");
    }
}

struct Shell {
    cfg: NodeConfig,
    opts: NodeOptions,
    orch: Orchestrator,
    vrrp: engine::Handle,
    vrrp_events: engine::Events,
    first_instance: String,
    instances: Vec<String>,
    resources: Vec<Resource>,
    handles: Vec<(String, blockrepl::io::Handle)>,
    repl_rx: watch::Receiver<ResourceStatus>,
    lease: WitnessClient,
    lease_name: String,
    fence: WitnessClient,
    fence_name: String,
    exec: Executor,
    snapshot: node_metrics::Shared,
    running_step: Option<JoinHandle<()>>,
    backups: Vec<(u64, runner::Cancel)>,
    /// How the last backup run ended (the runner's exit reason: `success`, `cancelled: …`).
    backup_last_result: Option<String>,
    /// What the replication cores were last fed.
    gate: Option<Instant>,
    fence_held: bool,
    /// Split brains already acted on (blockrepl's counter).
    split_brains_handled: u64,
    /// Steps of the current transition already counted in the metrics.
    steps_seen: usize,
}

type StepDone = (u64, Result<(), StepFailure>);
/// A read of the repository's newest archive: query id, Unix time of the newest.
type ReadDone = (u64, Result<Option<f64>, String>);

impl Shell {
    async fn run(mut self, mut requests: mpsc::UnboundedReceiver<Request>, done: watch::Sender<bool>) {
        let (step_tx, mut step_rx) = mpsc::unbounded_channel::<StepDone>();
        let (backup_tx, mut backup_rx) = mpsc::unbounded_channel::<StepDone>();
        let (read_tx, mut read_rx) = mpsc::unbounded_channel::<ReadDone>();
        let mut lease_rx = self.lease.subscribe(&self.lease_name).unwrap_or_else(|| watch::channel(None).1);
        let mut fence_rx = self.fence.subscribe(&self.fence_name).unwrap_or_else(|| watch::channel(None).1);
        let mut refused_rx = self.fence.subscribe_refused(&self.fence_name).unwrap_or_else(|| watch::channel(None).1);
        let mut connected = self.lease.connected();
        let mut stopped = false;
        // A watch whose sender is gone answers `changed()` at once, forever: stop polling it.
        let (mut repl_alive, mut lease_alive, mut fence_alive, mut refused_alive, mut conn_alive) =
            (true, true, true, true, true);
        self.perform(&step_tx, &backup_tx, &read_tx).await;
        while !stopped {
            let deadline = self.orch.poll_timeout();
            let now = tokio::select! {
                ev = self.vrrp_events.recv() => {
                    let now = Instant::now();
                    match ev {
                        Ok(Event::StateChanged(c)) if c.instance == self.first_instance => {
                            info!(instance = %c.instance, change = %c, "vrrp");
                            self.orch.handle_vrrp(now, c.to);
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => self.resync_vrrp(now).await,
                        Err(broadcast::error::RecvError::Closed) => {
                            error!("the VRRP engine stopped; shutting the node down");
                            let _ = self.orch.handle_command(now, Command::Shutdown);
                            self.vrrp_events = self.vrrp.subscribe();
                        }
                    }
                    now
                }
                r = self.repl_rx.changed(), if repl_alive => {
                    let now = Instant::now();
                    if r.is_ok() {
                        let s = self.repl_rx.borrow_and_update().clone();
                        self.orch.handle_repl(now, ReplView::from_status(&s.replica));
                        self.after_split_brain(&s.replica);
                    } else {
                        // The resource stopped: nothing more will come; keep the last view.
                        repl_alive = false;
                    }
                    now
                }
                r = lease_rx.changed(), if lease_alive => {
                    lease_alive = r.is_ok();
                    let now = Instant::now();
                    let until = *lease_rx.borrow_and_update();
                    self.orch.handle_lease(now, until);
                    now
                }
                r = fence_rx.changed(), if fence_alive => {
                    fence_alive = r.is_ok();
                    fence_rx.borrow_and_update();
                    self.fence_changed()
                }
                r = refused_rx.changed(), if refused_alive => {
                    refused_alive = r.is_ok();
                    refused_rx.borrow_and_update();
                    self.fence_changed()
                }
                r = connected.changed(), if conn_alive => {
                    conn_alive = r.is_ok();
                    let c = *connected.borrow_and_update();
                    if let Ok(mut s) = self.snapshot.lock() { s.witness_connected = c; }
                    Instant::now()
                }
                Some((token, r)) = step_rx.recv() => {
                    let now = Instant::now();
                    self.orch.handle_step_done(now, token, r);
                    now
                }
                Some((job, r)) = backup_rx.recv() => {
                    let now = Instant::now();
                    self.backups.retain(|(j, _)| *j != job);
                    self.backup_last_result = Some(match &r {
                        Ok(()) => "success".to_owned(),
                        Err(e) => e.0.clone(),
                    });
                    if r.is_ok() {
                        let t = unix_now();
                        write_last_backup(&self.opts.state_dir, t);
                        if let Ok(mut s) = self.snapshot.lock() { s.backup_last_success = Some(t); }
                    }
                    self.orch.handle_backup_done(now, job, r);
                    now
                }
                Some((query, r)) = read_rx.recv() => {
                    let now = Instant::now();
                    self.repository_read(now, query, r);
                    now
                }
                Some(req) = requests.recv() => {
                    let now = Instant::now();
                    match req {
                        Request::Status(tx) => { let _ = tx.send(self.status_json(now).await); }
                        Request::Command(c, tx) => {
                            let r = self.orch.handle_command(now, c).map_err(|e| e.to_string());
                            if r.is_ok() { info!(command = ?c, "operator command"); }
                            let _ = tx.send(r);
                        }
                    }
                    now
                }
                () = sleep_until(deadline) => {
                    let now = Instant::now();
                    self.orch.handle_timeout(now);
                    now
                }
            };
            let _ = now;
            stopped = self.perform(&step_tx, &backup_tx, &read_tx).await;
        }
        self.teardown().await;
        let _ = done.send(true);
        // Answer what still comes: the node has stopped.
        while let Ok(req) = requests.try_recv() {
            if let Request::Command(_, tx) = req {
                let _ = tx.send(Err("the node has stopped".into()));
            }
        }
    }

    /// After a split brain (both sides wrote since they parted; blockrepl went StandAlone), the
    /// fence says whose writes may have been acknowledged: only a node holding it acknowledges
    /// without its peer. So a Secondary that does not hold it wrote nothing anybody was told
    /// about (writes held by the quorum gate, then failed by its demotion): it reconnects
    /// discarding its changes (`connect --discard-my-data`), and the fence holder reconnects
    /// as the source (a Primary without the fence waits until its down order demoted it).
    fn after_split_brain(&mut self, r: &blockrepl::proto::Status) {
        use blockrepl::proto::{ConnState, Role};
        if r.connection != ConnState::StandAlone || r.split_brains <= self.split_brains_handled {
            return;
        }
        let fence = self.orch.status().fence;
        let discard = match (r.role, &fence) {
            // The fence holder's writes may have been acknowledged alone: it is the source,
            // Primary or not (a Secondary that demoted after writing alone keeps the fence).
            (_, Fence::Held) => false,
            // The witness named the peer as the fence holder: discard, once demoted (the down
            // order is on its way). Without that answer (a restarted daemon that never asked)
            // nobody can tell: the operator decides, as DRBD leaves it.
            (Role::Secondary, Fence::Refused { .. }) => true,
            (Role::Secondary, Fence::Released) => {
                warn!("split brain, and this node does not know who holds the fence: resolve it by hand (docs/emergency.md)");
                self.split_brains_handled = r.split_brains;
                return;
            }
            _ => return,
        };
        self.split_brains_handled = r.split_brains;
        if discard {
            warn!("split brain: this node did not hold the fence, so none of its writes since the disconnect was acknowledged; reconnecting as the sync target (discarding them)");
        } else {
            warn!("split brain: this node holds the fence (its writes were acknowledged); reconnecting as the sync source");
        }
        for (name, h) in &self.handles {
            let h = h.clone();
            let name = name.clone();
            tokio::spawn(async move {
                if let Err(e) = h.admin(blockrepl::io::Admin::Connect { discard_my_data: discard }).await {
                    warn!(resource = %name, error = %e, "reconnecting after the split brain");
                }
            });
        }
    }

    fn fence_changed(&mut self) -> Instant {
        let now = Instant::now();
        let held = self.fence.lease_until(&self.fence_name).is_some();
        let refused = self.fence.refused_by(&self.fence_name);
        let f = if held {
            Fence::Held
        } else if let Some(holder) = refused {
            Fence::Refused { holder }
        } else {
            Fence::Released
        };
        let was = self.orch.status().fence;
        // Released after being asked means "no answer yet": wait for one.
        if f != was && (f != Fence::Released || was == Fence::Held) {
            self.orch.handle_fence(now, f);
        }
        now
    }

    async fn resync_vrrp(&mut self, now: Instant) {
        if let Ok(st) = self.vrrp.status().await {
            if let Some(s) = st.iter().find(|i| i.name == self.first_instance).and_then(|i| parse_state(&i.state)) {
                self.orch.handle_vrrp(now, s);
            }
        }
    }

    /// Performs every pending action; true once the orchestrator reported it stopped.
    async fn perform(
        &mut self,
        step_tx: &mpsc::UnboundedSender<StepDone>,
        backup_tx: &mpsc::UnboundedSender<StepDone>,
        read_tx: &mpsc::UnboundedSender<ReadDone>,
    ) -> bool {
        let mut stopped = false;
        while let Some(a) = self.orch.poll_action() {
            match a {
                Action::Step { token, step } => {
                    if let Some(h) = self.running_step.take() {
                        h.abort();
                    }
                    info!(%step, "step");
                    let exec = self.exec.clone();
                    let tx = step_tx.clone();
                    self.running_step = Some(tokio::spawn(async move {
                        let r = exec.run(step).await;
                        let _ = tx.send((token, r));
                    }));
                }
                Action::ForceFault { reason } => {
                    warn!(%reason, "giving the service up: FAULT");
                    for i in &self.instances {
                        if let Err(e) = self.vrrp.force_fault(i, reason.clone()).await {
                            warn!(instance = %i, error = %e, "force FAULT");
                        }
                    }
                }
                Action::ClearFault => {
                    for i in &self.instances {
                        if let Err(e) = self.vrrp.clear_fault(i).await {
                            warn!(instance = %i, error = %e, "clear FAULT");
                        }
                    }
                }
                Action::LowerPriority { reason } => {
                    for inst in &self.cfg.vrrp.instances {
                        let by = inst.priority.saturating_sub(1);
                        if let Err(e) = self.vrrp.lower_priority(&inst.name, by, reason.clone()).await {
                            warn!(instance = %inst.name, error = %e, "lower priority");
                        }
                    }
                }
                Action::RestorePriority => {
                    for i in &self.instances {
                        if let Err(e) = self.vrrp.restore_priority(i).await {
                            warn!(instance = %i, error = %e, "restore priority");
                        }
                    }
                }
                Action::WantLease(w) => self.lease.want(&self.lease_name, w),
                Action::ReleaseLease => self.lease.want(&self.lease_name, false),
                Action::AcquireFence => {
                    info!("taking the fence (this node may get writes its peer lacks)");
                    self.fence.want(&self.fence_name, true);
                }
                Action::ReleaseFence => {
                    info!("releasing the fence (the peer has every write)");
                    self.fence.want(&self.fence_name, false);
                }
                Action::StartBackup { job } => self.start_backup(job, backup_tx.clone()),
                Action::CancelBackup { job, reason } => {
                    for (j, c) in &self.backups {
                        if *j == job {
                            info!(job, %reason, "cancelling the backup");
                            c.cancel(reason.clone());
                        }
                    }
                }
                Action::ReadLastBackup { query } => self.read_repository(query, read_tx.clone()),
                Action::Stopped => stopped = true,
            }
        }
        self.feed_gate();
        self.publish();
        stopped
    }

    /// The replication cores acknowledge alone only until the lease's end, and only while the
    /// fence is held.
    fn feed_gate(&mut self) {
        self.fence_held = self.orch.status().fence == Fence::Held;
        let gate = if self.fence_held { self.orch.lease_until() } else { None };
        if gate != self.gate {
            self.gate = gate;
            for (_, h) in &self.handles {
                h.set_lease(gate);
            }
        }
    }

    fn start_backup(&mut self, job: u64, tx: mpsc::UnboundedSender<StepDone>) {
        let Some(b) = self.cfg.backup.clone() else {
            let _ = tx.send((job, Err(StepFailure::new("no backup configured"))));
            return;
        };
        let cancel = runner::Cancel::new();
        self.backups.push((job, cancel.clone()));
        let state_dir = self.opts.state_dir.join("backup");
        info!(job, file = %b.borgmatic.display(), "backup starting");
        tokio::spawn(async move {
            let loaded = match runner::load(&b.borgmatic) {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send((job, Err(StepFailure::new(e.lines().join("; ")))));
                    return;
                }
            };
            let opts = runner::RunOptions { state_dir: Some(state_dir), ..runner::RunOptions::default() };
            let report = runner::run_async(Arc::new(vec![loaded]), opts, cancel).await;
            info!(job, outcome = %report.exit_reason, "backup ended");
            let r = match report.outcome {
                runner::Outcome::Success | runner::Outcome::Warning => Ok(()),
                _ => {
                    // The reason, then each repository's error (a cancelled create names its
                    // checkpoint archive there).
                    let why: Vec<String> = report
                        .repositories
                        .iter()
                        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.label)))
                        .chain(report.errors.iter().cloned())
                        .collect();
                    Err(StepFailure::new(if why.is_empty() {
                        report.exit_reason
                    } else {
                        format!("{} ({})", report.exit_reason, why.join("; "))
                    }))
                }
            };
            let _ = tx.send((job, r));
        });
    }

    /// Reads the newest archive's time from the backup repository on the blocking pool (the
    /// orchestrator goes on meanwhile); the answer comes back through `tx`, within
    /// [`REPOSITORY_READ_TIMEOUT`].
    fn read_repository(&self, query: u64, tx: mpsc::UnboundedSender<ReadDone>) {
        let Some(b) = self.cfg.backup.clone() else {
            let _ = tx.send((query, Err("no backup configured".into())));
            return;
        };
        info!(query, file = %b.borgmatic.display(), "reading the last backup's time from the repository");
        tokio::spawn(async move {
            let read = tokio::task::spawn_blocking(move || newest_in_repositories(&b.borgmatic));
            let r = match tokio::time::timeout(REPOSITORY_READ_TIMEOUT, read).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("the read ended abnormally: {e}")),
                Err(_) => Err(format!("no answer within {} s", REPOSITORY_READ_TIMEOUT.as_secs())),
            };
            let _ = tx.send((query, r));
        });
    }

    /// The answer of [`Shell::read_repository`]: fed to the orchestrator, which keeps the later
    /// of it and this node's own record.
    fn repository_read(&mut self, now: Instant, query: u64, r: Result<Option<f64>, String>) {
        match r {
            Ok(t) => {
                let at = t.map(|t| instant_of(now, t));
                self.orch.handle_last_backup(now, query, Ok(at));
                let b = self.orch.status().backup;
                if let (Some(t), Some(at)) = (t, at) {
                    if b.last_success == Some(at) && b.last_success_from == Some(LastBackupFrom::Repository) {
                        info!(last_success_unix = t, "the schedule continues from the repository's newest archive");
                        if let Ok(mut s) = self.snapshot.lock() {
                            s.backup_last_success = Some(t);
                        }
                    }
                }
            }
            Err(e) => self.orch.handle_last_backup(now, query, Err(StepFailure::new(e))),
        }
    }

    fn publish(&mut self) {
        let st = self.orch.status();
        let Ok(mut s) = self.snapshot.lock() else { return };
        s.phase = Some(st.phase);
        s.maintenance = st.maintenance;
        s.lease_until = st.lease_until;
        s.fence_held = st.fence == Fence::Held;
        s.backup_running = st.backup.running.is_some();
        if let Some(t) = &st.last_transition {
            // Count each step once, when it ended; the transition once, when it ended.
            let ended: Vec<_> = t.steps.iter().filter(|r| r.duration.is_some()).collect();
            if ended.len() < self.steps_seen {
                self.steps_seen = 0;
            }
            for r in &ended[self.steps_seen..] {
                if let Some(d) = r.duration {
                    s.steps.insert(step_label(r.step), d.as_secs_f64());
                }
            }
            self.steps_seen = ended.len();
            if let Some(end) = t.ended {
                let d = direction_label(t.direction);
                let key = (t.started, d);
                if s.last_transition_key != Some(key) {
                    s.last_transition_key = Some(key);
                    s.last_transition.insert(d, end.saturating_duration_since(t.started).as_secs_f64());
                    self.steps_seen = 0;
                }
            }
        }
        // The core counts them: a failed up order is replaced by its unwinding within one input,
        // before a snapshot could see it end.
        let c = st.transitions;
        s.transitions = [
            (("up", true), c.up_ok),
            (("up", false), c.up_failed),
            (("down", true), c.down_ok),
            (("down", false), c.down_failed),
        ]
        .into_iter()
        .collect();
    }

    async fn status_json(&mut self, now: Instant) -> Value {
        let st: Status = self.orch.status();
        let vrrp = match self.vrrp.status().await {
            Ok(v) => serde_json::to_value(v).unwrap_or(Value::Null),
            Err(e) => json!({"error": e.to_string()}),
        };
        let mut resources = Vec::new();
        for (name, h) in &self.handles {
            let s = h.watch_status().borrow().clone();
            let mut v: Value =
                serde_json::from_str(&blockrepl::io::status_json(name, &s.replica)).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("open_clients".into(), json!(s.open_clients));
            }
            resources.push(v);
        }
        let secs = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
        let lease = st.lease_until.filter(|u| *u > now).map(|u| secs(u - now));
        let fence = match &st.fence {
            Fence::Released => json!("released"),
            Fence::Held => json!("held"),
            Fence::Refused { holder } => json!(format!("refused: held by {holder}")),
        };
        let transition = st.last_transition.as_ref().map(|t| {
            json!({
                "direction": direction_label(t.direction),
                "reason": t.reason,
                "started_ago_s": secs(now.saturating_duration_since(t.started)),
                // Wall clock, for comparing with other hosts' logs and a lab's fault time.
                "started_unix": unix_now() - now.saturating_duration_since(t.started).as_secs_f64(),
                "duration_s": t.ended.map(|e| secs(e.saturating_duration_since(t.started))),
                "steps": t.steps.iter().map(|r| json!({
                    "step": r.step.to_string(),
                    "duration_s": r.duration.map(secs),
                    "outcome": match &r.outcome {
                        Outcome::Running => "running".to_owned(),
                        Outcome::Ok => "ok".to_owned(),
                        Outcome::Failed(e) => format!("failed: {e}"),
                        Outcome::TimedOut => "timed out".to_owned(),
                    },
                })).collect::<Vec<_>>(),
            })
        });
        let services: Vec<Value> = self
            .cfg
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"name": s.name, "started": i < st.services_started}))
            .collect();
        let mounts: Vec<Value> = self
            .cfg
            .mounts
            .iter()
            .map(|m| json!({"resource": m.resource, "mount_point": m.mount_point, "mounted": is_mounted(&m.mount_point)}))
            .collect();
        let b = &st.backup;
        let last_success = self.snapshot.lock().ok().and_then(|s| s.backup_last_success);
        json!({
            "node": self.cfg.node,
            "phase": phase_label(st.phase),
            "maintenance": st.maintenance,
            "gave_up": st.gave_up,
            "fault_hold_remaining_s": st.fault_until.map(|u| secs(u.saturating_duration_since(now))),
            "priority_lowered": st.priority_lowered,
            "vrrp_followed": self.first_instance,
            "vrrp_state": st.vrrp.keepalived_name(),
            "vrrp": vrrp,
            "resources": resources,
            "quorum": {
                "witness": self.cfg.witness.address,
                "witness_connected": *self.lease.connected().borrow(),
                "lease_remaining_s": lease,
                "fence": fence,
                "may_ack_alone": self.orch.may_ack_alone(now),
            },
            "services": services,
            "mounts": mounts,
            "vip_allowed": st.vip,
            "last_transition": transition,
            "backup": {
                "enabled": b.enabled,
                "running": b.running.is_some(),
                "last_success_unix": last_success,
                "last_success_from": b.last_success_from.map(|f| match f {
                    LastBackupFrom::Local => "local",
                    LastBackupFrom::Repository => "repository",
                }),
                "last_result": self.backup_last_result,
                "reading_repository": b.reading_repository,
                "repository_read_failures": b.read_failures,
                "next_due_in_s": b.next_due.map(|d| secs(d.saturating_duration_since(now))),
                "failures": b.failures,
                "cancelled": b.cancelled,
            },
        })
    }

    async fn teardown(mut self) {
        if let Some(h) = self.running_step.take() {
            h.abort();
        }
        for (_, c) in &self.backups {
            c.cancel("the node is stopping");
        }
        self.vrrp.shutdown().await;
        self.lease.shutdown().await;
        // The fence is not released: held, it says this node may have writes its peer lacks,
        // and that stays true after a stop. Dropping the client just closes the connection.
        for r in std::mem::take(&mut self.resources) {
            if let Err(e) = r.shutdown().await {
                warn!(error = %e, "stopping a resource");
            }
        }
        if let Ok(mut s) = self.snapshot.lock() {
            s.phase = Some(crate::Phase::Stopped);
        }
        info!("node stopped");
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
