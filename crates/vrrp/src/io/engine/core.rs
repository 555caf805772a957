//! The daemon: one tokio task drives every [`proto::Instance`] from packets, timers, tracked
//! scripts and interfaces, and signals; performs their actions (adverts, VIPs, GARPs, notify
//! scripts); publishes status on a control socket and metrics over HTTP.
//!
//! ```text
//!  raw socket per interface ──▶ reader task ──┐
//!  vrrp_script tasks ─────────────────────────┼──▶ mpsc ──▶ main loop ──▶ proto::Instance
//!  signals / link events / timers ───────────┘                │ poll_action()
//!                 netlink (VIPs) ◀── adverts (raw socket) ◀────┘ ──▶ GARP, notify, status, metrics
//! ```
//!
//! Signals, as keepalived handles them: SIGTERM and SIGINT stop (priority 0 advert, VIPs
//! removed), SIGHUP reloads, SIGUSR1 / SIGUSR2 / SIGRTMIN+2 write the data / stats / JSON dumps
//! ([`DATA_FILE`], [`STATS_FILE`], [`JSON_FILE`]) into the run directory, SIGRTMAX (keepalived's
//! "clear stats") is logged and ignored. The pid file is the binary's: it holds the
//! single-instance lock before calling [`run`].

mod dump;
mod loglimit;

pub use dump::{DATA_FILE, JSON_FILE, STATS_FILE};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use socket2::Socket;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::metrics::{DropLabels, InstanceLabels, Metrics, ScriptLabels};
use super::net::{self, IfInfo, Netlink};
use super::nft::{self, Firewall};
use super::script::{self, RunAs};
use crate::config::{self, ChecksumForm, Config, Script, Vip};
use crate::proto::{self, Action, Reason, State};
use crate::wire::{self, Auth, ChecksumKind, Packet, Repr, Version};

/// File name of the control socket inside the run directory.
pub const CONTROL_SOCKET: &str = "rempart-vrrp.sock";

/// Daemon settings from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// keepalived.conf or `.toml`.
    pub config_path: PathBuf,
    /// Directory for the control socket and the dumps (the binary keeps its pid file there).
    pub run_dir: PathBuf,
    /// Where to serve `/metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How a reload (SIGHUP) treats unknown and unsupported keywords: as the start did.
    pub keywords: config::Keywords,
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The configuration did not load.
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
    /// A configuration the IO layer cannot run (yet).
    #[error("{0}")]
    Unsupported(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
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
    /// Why.
    pub last_reason: Option<String>,
}

struct Inst {
    cfg: config::Instance,
    version: Version,
    m: proto::Instance,
    ifc: IfInfo,
    /// The interface of each VIP (`dev`, else the instance's), in `cfg.virtual_ipaddress` order.
    vip_ifs: Vec<IfInfo>,
    src: IpAddr,
    send: Socket,
    dsts: Vec<IpAddr>,
    form: ChecksumKind,
    labels: InstanceLabels,
    garp_next: Option<Instant>,
    holds: bool,
    /// Handles on this instance's advert counters (a label lookup per advert showed in profiles).
    sent_ctr: prometheus_client::metrics::counter::Counter,
    recv_ctr: prometheus_client::metrics::counter::Counter,
    /// The last advertisements built: priority and one datagram per destination.
    advert_cache: Option<(u8, Vec<Vec<u8>>)>,
    last: Option<(SystemTime, Reason)>,
    /// Rate-limited logging of adverts dropped for a peer's misconfiguration, by reason.
    fault_logs: HashMap<&'static str, (&'static str, loglimit::Limiter)>,
}

#[derive(Clone)]
enum Ev {
    /// Interface, IPv6 packet (else IPv4 datagram), bytes.
    Packet(Arc<str>, bool, Vec<u8>),
    Script(String, bool),
    /// The kernel reported a link change.
    Link,
    /// The 1 s housekeeping tick.
    Tick,
    /// SIGTERM.
    Term,
    /// SIGINT.
    Int,
    /// SIGHUP.
    Hup,
    /// SIGUSR1: data dump.
    Usr1,
    /// SIGUSR2: stats dump.
    Usr2,
    /// SIGRTMIN+2 (keepalived's JSON signal).
    Json,
    /// SIGRTMAX (keepalived's "clear stats").
    StatsClear,
}

struct Reader {
    name: Arc<str>,
    sock: tokio::net::UdpSocket,
}

/// Waits until one of `readers` has a datagram; returns its index and the result of reading it
/// into `buf`. Pending forever when there are none.
fn recv_any<'a>(
    readers: &'a [Reader],
    buf: &'a mut [u8],
) -> impl std::future::Future<Output = (usize, std::io::Result<usize>)> + 'a {
    std::future::poll_fn(move |cx| {
        for (i, r) in readers.iter().enumerate() {
            let mut rb = tokio::io::ReadBuf::new(buf);
            match r.sock.poll_recv(cx, &mut rb) {
                std::task::Poll::Ready(Ok(())) => return std::task::Poll::Ready((i, Ok(rb.filled().len()))),
                std::task::Poll::Ready(Err(e)) => return std::task::Poll::Ready((i, Err(e))),
                std::task::Poll::Pending => {}
            }
        }
        std::task::Poll::Pending
    })
}

struct ScriptTask {
    def: Script,
    task: JoinHandle<()>,
}

struct Daemon {
    opts: Options,
    cfg: Config,
    insts: Vec<Inst>,
    readers: std::collections::HashSet<(String, bool)>,
    /// IPv4 receive sockets, polled by the main loop.
    v4_readers: Vec<Reader>,
    scripts: HashMap<String, ScriptTask>,
    script_ok: HashMap<String, Option<bool>>,
    /// Track scripts refused (not found, or insecure): removed from tracking, like keepalived.
    script_disabled: std::collections::HashSet<String>,
    /// Who runs notify scripts, and whether `enable_script_security` is on.
    notify_env: NotifyEnv,
    nl: Netlink,
    fw: Firewall,
    tx: mpsc::UnboundedSender<Ev>,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<Vec<InstanceStatus>>>,
    /// Rate-limited logging of malformed VRRP packets, by interface and reason.
    iface_fault_logs: HashMap<(String, &'static str), (&'static str, loglimit::Limiter)>,
}

fn same_instance(a: &config::Instance, b: &config::Instance) -> bool {
    let mut a = a.clone();
    let mut b = b.clone();
    a.loc = None;
    b.loc = None;
    a == b
}

fn std_now(t: Instant) -> std::time::Instant {
    t.into_std()
}

impl Daemon {
    fn build_inst(&self, c: &config::Instance) -> Result<Inst, DaemonError> {
        let vip_addrs: Vec<IpAddr> = c.virtual_ipaddress.iter().map(|v| v.addr).collect();
        let v6 = vip_addrs.first().is_some_and(IpAddr::is_ipv6);
        let ifc = net::if_info(&c.interface, &vip_addrs)
            .map_err(io_err(format!("instance {}: interface {}", c.name, c.interface)))?;
        let mut vip_ifs = Vec::new();
        for v in &c.virtual_ipaddress {
            vip_ifs.push(match &v.dev {
                Some(d) if *d != c.interface => net::if_info(d, &vip_addrs)
                    .map_err(io_err(format!("instance {}: virtual_ipaddress {v}: interface {d}", c.name)))?,
                _ => ifc.clone(),
            });
        }
        let src: IpAddr = match (c.unicast_src_ip, v6) {
            (Some(a), _) => a,
            (None, false) => IpAddr::V4(ifc.primary_v4.ok_or_else(|| {
                DaemonError::Unsupported(format!("instance {}: interface {} has no IPv4 address", c.name, c.interface))
            })?),
            (None, true) => IpAddr::V6(ifc.link_local_v6.ok_or_else(|| {
                DaemonError::Unsupported(format!(
                    "instance {}: interface {} has no IPv6 link-local address",
                    c.name, c.interface
                ))
            })?),
        };
        let ver = c.effective_version(&self.cfg.global);
        let version = if ver == 2 { Version::V2 } else { Version::V3 };
        let auth = match (&c.auth_pass, version) {
            (Some(p), Version::V2) => Auth::pass(p),
            _ => Auth::None,
        };
        let pcfg = proto::Config {
            vrid: c.vrid,
            version,
            priority: c.priority,
            adver_int: c.advert_int,
            preempt: c.preempt,
            preempt_delay: c.preempt_delay,
            primary: src,
            auth,
        };
        let send = match src {
            IpAddr::V4(a) => net::send_socket_v4(&ifc, a),
            IpAddr::V6(a) => net::send_socket_v6(&ifc, a),
        }
        .map_err(io_err(format!("instance {}: send socket", c.name)))?;
        let dsts = if !c.unicast_peer.is_empty() {
            c.unicast_peer.clone()
        } else if v6 {
            vec![IpAddr::V6(wire::MCAST_V6)]
        } else {
            vec![IpAddr::V4(wire::MCAST_V4)]
        };
        let labels =
            InstanceLabels { instance: c.name.clone(), interface: c.interface.clone(), vrid: u32::from(c.vrid) };
        Ok(Inst {
            labels: labels.clone(),
            cfg: c.clone(),
            version,
            m: proto::Instance::new(pcfg),
            ifc,
            vip_ifs,
            src,
            send,
            dsts,
            form: match self.cfg.global.checksum {
                ChecksumForm::PseudoHeader => ChecksumKind::PseudoHeader,
                ChecksumForm::MessageOnly => ChecksumKind::MessageOnly,
            },
            garp_next: None,
            holds: false,
            sent_ctr: self.metrics.adverts_sent.get_or_create(&labels).clone(),
            recv_ctr: self.metrics.adverts_received.get_or_create(&labels).clone(),
            advert_cache: None,
            last: None,
            fault_logs: HashMap::new(),
        })
    }

    fn ensure_reader(&mut self, ifc: &IfInfo, v6: bool) -> Result<(), DaemonError> {
        let key = (ifc.name.clone(), v6);
        if self.readers.contains(&key) {
            return Ok(());
        }
        let tx = self.tx.clone();
        let name: Arc<str> = Arc::from(ifc.name.as_str());
        if v6 {
            // IPv6 raw sockets hide the hop limit (reading it needs ancillary data, hence unsafe
            // code); AF_PACKET frames carry the whole IPv6 header.
            let mut rx = net::frame_receiver(&ifc.name).map_err(io_err(format!("AF_PACKET on {}", ifc.name)))?;
            let own = ifc.mac;
            std::thread::Builder::new()
                .name(format!("vrrp-rx6-{name}"))
                .spawn(move || loop {
                    match rx.next() {
                        Ok(frame) => {
                            let Some(pkt) = wire::ipv6_from_frame(frame, own) else { continue };
                            if pkt.len() > 6
                                && pkt[6] == wire::IP_PROTOCOL
                                && tx.send(Ev::Packet(name.clone(), true, pkt.to_vec())).is_err()
                            {
                                return;
                            }
                        }
                        Err(e) => {
                            warn!(interface = %name, "receive failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                })
                .map_err(io_err("spawn receive thread"))?;
            self.readers.insert(key);
            return Ok(());
        }
        let fd = net::recv_socket_v4(ifc).map_err(io_err(format!("receive socket on {}", ifc.name)))?;
        // A raw IP socket is a datagram socket, so tokio's UdpSocket drives it (recv() is the same
        // syscall). The main loop polls these sockets itself: no task and no channel hop per
        // advert (at 10 ms adverts those showed in the profile).
        fd.set_nonblocking(true).map_err(io_err("nonblocking receive socket"))?;
        let sock = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd))
            .map_err(io_err(format!("register receive socket on {}", ifc.name)))?;
        self.v4_readers.push(Reader { name, sock });
        self.readers.insert(key);
        Ok(())
    }

    fn sync_scripts(&mut self) {
        let wanted: HashMap<String, Script> = self
            .cfg
            .scripts
            .iter()
            .filter(|s| self.cfg.instances.iter().any(|i| i.track_script.iter().any(|t| t.name == s.name)))
            .map(|s| (s.name.clone(), s.clone()))
            .collect();
        self.scripts.retain(|name, t| {
            let keep = wanted.get(name).is_some_and(|w| {
                let mut a = w.clone();
                a.loc = None;
                let mut b = t.def.clone();
                b.loc = None;
                a == b
            });
            if !keep {
                t.task.abort();
            }
            keep
        });
        self.script_ok.retain(|k, _| self.scripts.contains_key(k));
        self.script_disabled.clear();
        for (name, def) in wanted {
            if self.scripts.contains_key(&name) {
                continue;
            }
            let run_as = match script::script_run_as(&def, self.notify_env.run_as) {
                Ok(r) => r,
                Err(e) => {
                    warn!(script = %name, "disabling track script {name}: {e}");
                    self.script_disabled.insert(name);
                    continue;
                }
            };
            if let Err(r) = script::check(&def.script, run_as, self.notify_env.daemon_uid, self.notify_env.security) {
                let why = match r {
                    script::Refusal::Insecure(_) => "due to insecure",
                    script::Refusal::NotFound(_) => "since not found/accessible",
                };
                warn!(script = %name, "Disabling track script {name} {why}: {r}");
                self.script_disabled.insert(name);
                continue;
            }
            self.script_ok.insert(name.clone(), None);
            self.metrics.script_status.get_or_create(&ScriptLabels { script: name.clone() }).set(-1);
            let tx = self.tx.clone();
            let d = def.clone();
            let task = tokio::spawn(async move { script_loop(d, run_as, tx).await });
            self.scripts.insert(name, ScriptTask { def, task });
        }
    }

    /// Recomputes fault and priority offsets from links and scripts.
    fn recompute_tracking(&mut self, now: Instant) {
        let ifs = pnet_datalink::interfaces();
        let running = |name: &str| ifs.iter().find(|i| i.name == name).is_some_and(|i| i.is_up() && i.is_running());
        for inst in &mut self.insts {
            let mut fault = !running(&inst.cfg.interface);
            let mut offset = 0i32;
            for t in &inst.cfg.track_interface {
                let up = running(&t.name);
                match t.weight.unwrap_or(0) {
                    0 => fault |= !up,
                    w if w < 0 && !up => offset += w,
                    w if w > 0 && up => offset += w,
                    _ => {}
                }
            }
            for t in &inst.cfg.track_script {
                let Some(def) = self.cfg.scripts.iter().find(|s| s.name == t.name) else {
                    continue;
                };
                if self.script_disabled.contains(&t.name) {
                    continue;
                }
                let st = self.script_ok.get(&t.name).copied().flatten();
                match (t.weight.unwrap_or(def.weight), st) {
                    (0, Some(false)) => fault = true,
                    (w, Some(false)) if w < 0 => offset += w,
                    (w, Some(true)) if w > 0 => offset += w,
                    _ => {}
                }
            }
            inst.m.set_priority_offset(std_now(now), offset);
            inst.m.set_fault(std_now(now), fault);
        }
    }

    fn handle_packet(&mut self, ifname: &str, v6: bool, data: &[u8]) {
        let now = std_now(Instant::now());
        let drop = |m: &Metrics, r: wire::DropReason| {
            debug!(interface = %ifname, "dropped VRRP packet: {r}");
            m.invalid_packets
                .get_or_create(&DropLabels { interface: ifname.to_string(), reason: r.label().to_string() })
                .inc();
        };
        let split = if v6 {
            wire::split_ipv6(data).map(|(s, d, t, m)| (IpAddr::V6(s), IpAddr::V6(d), t, m))
        } else {
            wire::split_ipv4(data).map(|(s, d, t, m)| (IpAddr::V4(s), IpAddr::V4(d), t, m))
        };
        let (src, dst, ttl, msg) = match split {
            Ok(x) => x,
            Err(r) => return drop(&self.metrics, r),
        };
        let parsed = Packet::new_checked(msg).and_then(|p| Repr::parse(&p, src, dst));
        let (repr, kind) = match parsed {
            Ok(x) => x,
            Err(r) => {
                // keepalived logs these ("Invalid VRRPv3 checksum"): a peer we cannot hear is
                // a second master. Rate-limited per interface, like the per-instance faults.
                if let Some(what) = packet_fault(r) {
                    let (_, lim) = self
                        .iface_fault_logs
                        .entry((ifname.to_string(), r.label()))
                        .or_insert_with(|| (what, loglimit::Limiter::default()));
                    if let Some(line) = lim.event(now, src) {
                        log_iface_fault_line(ifname, what, &line);
                    }
                }
                return drop(&self.metrics, r);
            }
        };
        let Some(inst) = self
            .insts
            .iter_mut()
            .find(|i| i.cfg.interface == ifname && i.cfg.vrid == repr.vrid && i.src.is_ipv6() == v6)
        else {
            return drop(&self.metrics, wire::DropReason::UnknownVrid);
        };
        if inst.version == Version::V3 && kind == ChecksumKind::MessageOnly && !v6 {
            self.metrics.message_only_checksum.get_or_create(&inst.labels).inc();
        }
        let before = inst.m.master();
        match inst.m.handle_packet(now, src, ttl, &repr) {
            Ok(()) => {
                inst.recv_ctr.inc();
            }
            Err(r) => {
                drop(&self.metrics, r);
                log_peer_fault(inst, r, src, now);
            }
        }
        if inst.m.master() != before {
            self.publish();
        }
    }

    /// Performs every queued action of every instance, propagating sync groups.
    /// Status and gauges are republished on every state change, tracking change and on a 1 s tick
    /// (not on every advert: at 10 ms adverts that would dominate the daemon's CPU time).
    async fn process(&mut self) {
        let mut changed = false;
        loop {
            let mut any = false;
            for idx in 0..self.insts.len() {
                while let Some(a) = self.insts[idx].m.poll_action() {
                    any = true;
                    changed |= matches!(a, Action::StateChange { .. });
                    self.perform(idx, a).await;
                }
            }
            if !any {
                break;
            }
        }
        if changed {
            self.publish();
        }
    }

    async fn perform(&mut self, idx: usize, a: Action) {
        let now = Instant::now();
        let inst = &mut self.insts[idx];
        match a {
            Action::SendAdvert { priority } => {
                if inst.advert_cache.as_ref().is_none_or(|(p, _)| *p != priority) {
                    let repr = Repr {
                        version: inst.version,
                        vrid: inst.cfg.vrid,
                        priority,
                        interval: inst.m.config().wire_interval(),
                        auth: inst.m.config().auth,
                        addrs: inst.cfg.virtual_ipaddress.iter().map(|v| v.addr).collect(),
                    };
                    let mut all = Vec::new();
                    for dst in &inst.dsts {
                        match repr.to_bytes(inst.src, *dst, inst.form) {
                            Ok(b) => all.push(b),
                            Err(e) => {
                                warn!(instance = %inst.cfg.name, "cannot build advert: {e}");
                                all.push(Vec::new());
                            }
                        }
                    }
                    inst.advert_cache = Some((priority, all));
                }
                let Some((_, msgs)) = &inst.advert_cache else { return };
                for (dst, b) in inst.dsts.iter().zip(msgs) {
                    if b.is_empty() {
                        continue;
                    }
                    let sent = match dst {
                        IpAddr::V4(d) => net::send(&inst.send, b, *d),
                        IpAddr::V6(d) => net::send_v6(&inst.send, b, *d, inst.ifc.index),
                    };
                    if let Err(e) = sent {
                        warn!(instance = %inst.cfg.name, "send advert to {dst}: {e}");
                    } else {
                        inst.sent_ctr.inc();
                    }
                }
            }
            Action::AddVips => {
                inst.holds = true;
                if no_accept(&inst.cfg) {
                    // Like keepalived: the drop rule goes in before the addresses.
                    let addrs: Vec<IpAddr> = inst.cfg.virtual_ipaddress.iter().map(|v| v.addr).collect();
                    match self.fw.block(&addrs) {
                        Ok(()) => debug!(instance = %inst.cfg.name, "no_accept: firewall drop rule set"),
                        Err(e) => warn!(instance = %inst.cfg.name, "no_accept: cannot set the drop rule: {e}"),
                    }
                }
                for (v, ifc) in inst.cfg.virtual_ipaddress.iter().zip(&inst.vip_ifs) {
                    if let Err(e) = self.nl.add(ifc.index, v).await {
                        warn!(instance = %inst.cfg.name, "{e}");
                    }
                }
            }
            Action::RemoveVips => {
                inst.holds = false;
                inst.garp_next = None;
                for (v, ifc) in inst.cfg.virtual_ipaddress.iter().zip(&inst.vip_ifs) {
                    if let Err(e) = self.nl.del(ifc.index, v).await {
                        warn!(instance = %inst.cfg.name, "{e}");
                    }
                }
                if no_accept(&inst.cfg) {
                    let addrs: Vec<IpAddr> = inst.cfg.virtual_ipaddress.iter().map(|v| v.addr).collect();
                    if let Err(e) = self.fw.unblock(&addrs) {
                        warn!(instance = %inst.cfg.name, "no_accept: cannot remove the drop rule: {e}");
                    }
                }
            }
            Action::Announce => {
                garp(inst);
                inst.garp_next = (!inst.cfg.garp_master_delay.is_zero()).then(|| now + inst.cfg.garp_master_delay);
            }
            Action::StateChange { from, to, reason } => {
                info!(
                    instance = %inst.cfg.name,
                    "{} -> {} ({reason})",
                    from.keepalived_name(),
                    to.keepalived_name()
                );
                inst.last = Some((SystemTime::now(), reason));
                if to == State::Master {
                    self.metrics.become_master.get_or_create(&inst.labels).inc();
                }
                notify(inst, to, reason, self.notify_env);
                if reason != Reason::SyncGroup {
                    let name = inst.cfg.name.clone();
                    let members: Vec<String> = self
                        .cfg
                        .sync_groups
                        .iter()
                        .filter(|g| g.group.contains(&name))
                        .flat_map(|g| g.group.clone())
                        .filter(|m| *m != name)
                        .collect();
                    for other in self.insts.iter_mut().filter(|i| members.contains(&i.cfg.name)) {
                        other.m.sync_to(std_now(now), to);
                    }
                }
            }
        }
    }

    fn publish(&self) {
        let mut v = Vec::new();
        for i in &self.insts {
            let st = i.m.state();
            self.metrics.state.get_or_create(&i.labels).set(st as i64);
            self.metrics.effective_priority.get_or_create(&i.labels).set(i64::from(i.m.effective_priority()));
            v.push(InstanceStatus {
                name: i.cfg.name.clone(),
                interface: i.cfg.interface.clone(),
                vrid: i.cfg.vrid,
                state: st.keepalived_name().to_string(),
                priority: i.cfg.priority,
                effective_priority: i.m.effective_priority(),
                master: i.m.master(),
                vips: i.cfg.virtual_ipaddress.iter().map(ToString::to_string).collect(),
                last_transition_unix: i
                    .last
                    .and_then(|(t, _)| t.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs_f64())),
                last_reason: i.last.map(|(_, r)| r.to_string()),
            });
        }
        if let Ok(mut s) = self.status.lock() {
            *s = v;
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.insts.iter().flat_map(|i| [i.m.poll_timeout().map(Instant::from_std), i.garp_next]).flatten().min()
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        for inst in &mut self.insts {
            if inst.m.poll_timeout().is_some_and(|t| Instant::from_std(t) <= now) {
                inst.m.handle_timeout(std_now(now));
            }
            if inst.garp_next.is_some_and(|t| t <= now) {
                garp(inst);
                inst.garp_next = inst.cfg.garp_master_refresh.map(|r| now + r);
            }
        }
    }

    async fn start_instance(&mut self, mut inst: Inst) -> Result<(), DaemonError> {
        self.ensure_reader(&inst.ifc.clone(), inst.src.is_ipv6())?;
        // VIPs of ours left by a crashed predecessor: we are not master yet.
        for (v, ifc) in inst.cfg.virtual_ipaddress.iter().zip(&inst.vip_ifs) {
            if ifc.addrs.contains(&v.addr) {
                info!(instance = %inst.cfg.name, "removing stale VIP {v}");
                if let Err(e) = self.nl.del(ifc.index, v).await {
                    warn!(instance = %inst.cfg.name, "{e}");
                }
            }
        }
        inst.m.start(std_now(Instant::now()));
        self.insts.push(inst);
        Ok(())
    }

    async fn shutdown_all(&mut self) {
        let now = std_now(Instant::now());
        for i in &mut self.insts {
            i.m.shutdown(now);
        }
        self.process().await;
    }

    async fn reload(&mut self) {
        let loaded = match config::load_with(&self.opts.config_path, self.opts.keywords) {
            Ok(l) => l,
            Err(e) => {
                warn!("reload failed, keeping the running configuration: {}", chain(&e));
                return;
            }
        };
        for w in &loaded.warnings {
            warn!("{w}");
        }
        let new = loaded.config;
        let env = match NotifyEnv::new(&new.global) {
            Ok(e) => e,
            Err(e) => {
                warn!("reload failed, keeping the running configuration: {}", chain(&e));
                return;
            }
        };
        if env != self.notify_env {
            // Scripts run as someone else now: restart every track script.
            for (_, t) in self.scripts.drain() {
                t.task.abort();
            }
        }
        self.notify_env = env;
        let global_same = new.global == self.cfg.global;
        let old_insts = std::mem::take(&mut self.insts);
        let mut kept = Vec::new();
        let mut stopped = Vec::new();
        for i in old_insts {
            let same = global_same && new.instances.iter().any(|n| n.name == i.cfg.name && same_instance(n, &i.cfg));
            if same {
                kept.push(i);
            } else {
                stopped.push(i);
            }
        }
        // Stop what changed or disappeared.
        self.insts = stopped;
        self.shutdown_all().await;
        self.insts = kept;
        self.cfg = new.clone();
        for c in &new.instances {
            if self.insts.iter().any(|i| i.cfg.name == c.name) {
                continue;
            }
            match self.build_inst(c) {
                Ok(inst) => {
                    if let Err(e) = self.start_instance(inst).await {
                        warn!(instance = %c.name, "cannot start: {}", chain(&e));
                    }
                }
                Err(e) => warn!(instance = %c.name, "cannot start: {}", chain(&e)),
            }
        }
        // Keep config order.
        self.insts.sort_by_key(|i| new.instances.iter().position(|c| c.name == i.cfg.name).unwrap_or(usize::MAX));
        self.sync_scripts();
        self.recompute_tracking(Instant::now());
        info!("configuration reloaded ({} instances kept)", self.insts.len());
        self.process().await;
    }
}

/// What a drop reason says about the peer's configuration, for the log; `None` for drops that
/// are not a peer's misconfiguration (our own adverts looped back).
fn peer_fault(r: wire::DropReason) -> Option<&'static str> {
    Some(match r {
        wire::DropReason::Auth => {
            "authentication failed: its auth_pass differs from ours (keepalived: received an invalid passwd), \
             so both routers may be master"
        }
        wire::DropReason::Interval => "its advert_int differs from ours",
        wire::DropReason::VersionMismatch => "its VRRP version differs from ours",
        wire::DropReason::Ttl(_) => "its TTL / hop limit is not 255 (routed, or not a conforming VRRP router)",
        wire::DropReason::Owner => "it also claims to own the virtual addresses (priority 255)",
        _ => return None,
    })
}

/// Issue 14: an advert dropped because the peer is configured differently (a wrong `auth_pass`
/// leaves two masters) is logged, rate-limited: the first in full with the peer, interface and
/// VRID, then a count at most once per [`loglimit::SUMMARY_EVERY`].
fn log_peer_fault(inst: &mut Inst, r: wire::DropReason, peer: IpAddr, now: std::time::Instant) {
    let Some(what) = peer_fault(r) else { return };
    let (_, lim) = inst.fault_logs.entry(r.label()).or_insert_with(|| (what, loglimit::Limiter::default()));
    if let Some(line) = lim.event(now, peer) {
        log_fault_line(&inst.cfg, what, &line);
    }
}

/// The summaries due on the 1 s tick.
fn flush_peer_faults(inst: &mut Inst, now: std::time::Instant) {
    for (what, lim) in inst.fault_logs.values_mut() {
        if let Some(line) = lim.flush(now) {
            log_fault_line(&inst.cfg, what, &line);
        }
    }
}

/// Malformed packets worth an operator's attention (before the VRID is known).
fn packet_fault(r: wire::DropReason) -> Option<&'static str> {
    Some(match r {
        wire::DropReason::Checksum => "bad checksum (keepalived: Invalid VRRPv3 checksum)",
        wire::DropReason::Version(_) => "unsupported VRRP version",
        _ => return None,
    })
}

fn log_iface_fault_line(ifname: &str, what: &str, line: &loglimit::Line) {
    match line {
        loglimit::Line::First { peer } => warn!(
            interface = %ifname, %peer,
            "VRRP packet from {peer} on {ifname} dropped: {what}; further ones are counted and summed up every {} s",
            loglimit::SUMMARY_EVERY.as_secs()
        ),
        loglimit::Line::Summary { count, over, last_peer } => warn!(
            interface = %ifname, peer = %last_peer,
            "{count} more VRRP packets on {ifname} dropped in the last {} s: {what} (last from {last_peer})",
            over.as_secs()
        ),
    }
}

fn log_fault_line(c: &config::Instance, what: &str, line: &loglimit::Line) {
    let (name, ifname, vrid) = (&c.name, &c.interface, c.vrid);
    match line {
        loglimit::Line::First { peer } => warn!(
            instance = %name, interface = %ifname, vrid, %peer,
            "({name}) advert from {peer} on {ifname} for VRID {vrid} dropped: {what}; \
             further ones are counted and summed up every {} s",
            loglimit::SUMMARY_EVERY.as_secs()
        ),
        loglimit::Line::Summary { count, over, last_peer } => warn!(
            instance = %name, interface = %ifname, vrid, peer = %last_peer,
            "({name}) {count} more adverts on {ifname} for VRID {vrid} dropped in the last {} s: {what} \
             (last from {last_peer})",
            over.as_secs()
        ),
    }
}

/// RFC 5798 Accept_Mode: only a non-owner in `no_accept` mode drops traffic to its VIPs.
fn no_accept(c: &config::Instance) -> bool {
    !c.accept && c.priority != 255
}

fn garp(inst: &Inst) {
    let repeat = inst.cfg.garp_master_repeat.max(1);
    // One burst per interface, for the VIPs that live on it.
    let mut done: Vec<&str> = Vec::new();
    for ifc in &inst.vip_ifs {
        if done.contains(&ifc.name.as_str()) {
            continue;
        }
        done.push(&ifc.name);
        let vips: Vec<Vip> = inst
            .cfg
            .virtual_ipaddress
            .iter()
            .zip(&inst.vip_ifs)
            .filter(|(_, i)| i.name == ifc.name)
            .map(|(v, _)| v.clone())
            .collect();
        let r = if inst.src.is_ipv6() {
            net::send_unsolicited_nas(ifc, &vips, repeat)
        } else {
            net::send_garps(&ifc.name, &vips, repeat)
        };
        if let Err(e) = r {
            warn!(instance = %inst.cfg.name, interface = %ifc.name, "gratuitous ARP / unsolicited NA: {e}");
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Who runs notify scripts (keepalived: `script_user`), and the security setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NotifyEnv {
    run_as: Option<RunAs>,
    daemon_uid: u32,
    security: bool,
}

impl NotifyEnv {
    fn new(g: &config::Global) -> Result<NotifyEnv, DaemonError> {
        Ok(NotifyEnv {
            run_as: script::default_run_as(g).map_err(|e| DaemonError::Unsupported(format!("global_defs: {e}")))?,
            daemon_uid: nix::unistd::getuid().as_raw(),
            security: g.enable_script_security,
        })
    }
}

fn notify(inst: &Inst, to: State, reason: Reason, env: NotifyEnv) {
    let stop = to == State::Initialize && reason == Reason::Shutdown;
    let specific = match to {
        State::Master => inst.cfg.notify_master.as_ref(),
        State::Backup => inst.cfg.notify_backup.as_ref(),
        State::Fault => inst.cfg.notify_fault.as_ref(),
        State::Initialize if stop => inst.cfg.notify_stop.as_ref(),
        State::Initialize => None,
    };
    let mut cmds: Vec<String> = specific.cloned().into_iter().collect();
    if let Some(n) = &inst.cfg.notify {
        let st = if stop { "STOP" } else { to.keepalived_name() };
        cmds.push(format!("{n} INSTANCE {} {st} {}", shell_quote(&inst.cfg.name), inst.m.effective_priority()));
    }
    for c in cmds {
        let name = inst.cfg.name.clone();
        if let Err(r) = script::check(&c, env.run_as, env.daemon_uid, env.security) {
            warn!(instance = %name, "notify {c:?} not run: {r}");
            continue;
        }
        // A plain child process, reaped by a small thread: it starts at once and survives our
        // exit, so notify_stop runs even though the daemon is going away.
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(&c).stdin(std::process::Stdio::null());
        if let Some(r) = env.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(r.uid).gid(r.gid);
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = std::thread::Builder::new().name("vrrp-notify".into()).spawn(move || match child.wait() {
                    Ok(s) if s.success() => debug!(instance = %name, "notify {c:?}: ok"),
                    Ok(s) => warn!(instance = %name, "notify {c:?}: {s}"),
                    Err(e) => warn!(instance = %name, "notify {c:?}: {e}"),
                });
            }
            Err(e) => warn!(instance = %name, "notify {c:?}: {e}"),
        }
    }
}

async fn script_loop(def: Script, run_as: Option<RunAs>, tx: mpsc::UnboundedSender<Ev>) {
    let timeout = def.timeout.unwrap_or(def.interval);
    let mut status: Option<bool> = None;
    let (mut ok_run, mut ko_run) = (0u32, 0u32);
    loop {
        let started = Instant::now();
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&def.script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(r) = run_as {
            // std drops root's supplementary groups (setgroups(0)) before setgid/setuid.
            cmd.uid(r.uid).gid(r.gid);
        }
        let child = cmd.status();
        let ok = matches!(tokio::time::timeout(timeout, child).await, Ok(Ok(s)) if s.success());
        if ok {
            ok_run += 1;
            ko_run = 0;
        } else {
            ko_run += 1;
            ok_run = 0;
        }
        let new = if ok && ok_run >= def.rise && status != Some(true) {
            Some(true)
        } else if !ok && ko_run >= def.fall && status != Some(false) {
            Some(false)
        } else {
            None
        };
        if let Some(n) = new {
            status = Some(n);
            if tx.send(Ev::Script(def.name.clone(), n)).is_err() {
                return;
            }
        }
        tokio::time::sleep_until(started + def.interval).await;
    }
}

async fn serve_control(path: PathBuf, status: Arc<Mutex<Vec<InstanceStatus>>>) {
    let _ = std::fs::remove_file(&path);
    let l = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!("control socket {}: {e}", path.display());
            return;
        }
    };
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let body = status.lock().map(|v| serde_json::to_string(&*v).unwrap_or_default()).unwrap_or_default();
        tokio::spawn(async move {
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

async fn serve_metrics(l: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let reg = Arc::new(metrics.registry());
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let reg = reg.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            let body = super::metrics::render(&reg);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                super::metrics::CONTENT_TYPE,
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Reads the status from a running daemon's control socket in `run_dir`.
pub async fn query_status(run_dir: &Path) -> Result<Vec<InstanceStatus>, DaemonError> {
    let path = run_dir.join(CONTROL_SOCKET);
    let mut s = tokio::net::UnixStream::connect(&path).await.map_err(io_err(format!("connect {}", path.display())))?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.map_err(io_err("read status"))?;
    serde_json::from_str(&body)
        .map_err(|e| DaemonError::Io { what: "parse status".into(), source: std::io::Error::other(e) })
}

/// Runs the daemon until SIGTERM/SIGINT. `config` is already loaded and validated.
pub async fn run(opts: Options, config: Config) -> Result<(), DaemonError> {
    std::fs::create_dir_all(&opts.run_dir).map_err(io_err(format!("create {}", opts.run_dir.display())))?;
    // Every signal an operator of keepalived sends (issue 14: SIGUSR1, whose default action is to
    // terminate, killed the daemon and left its VIPs, pid file and socket behind).
    let handlers = [
        (SignalKind::terminate(), Ev::Term, "SIGTERM"),
        (SignalKind::interrupt(), Ev::Int, "SIGINT"),
        (SignalKind::hangup(), Ev::Hup, "SIGHUP"),
        (SignalKind::user_defined1(), Ev::Usr1, "SIGUSR1"),
        (SignalKind::user_defined2(), Ev::Usr2, "SIGUSR2"),
        (SignalKind::from_raw(nix::libc::SIGRTMIN() + 2), Ev::Json, "SIGRTMIN+2"),
        (SignalKind::from_raw(nix::libc::SIGRTMAX()), Ev::StatsClear, "SIGRTMAX"),
    ];
    let mut sigs = Vec::new();
    for (kind, ev, name) in handlers {
        sigs.push((signal(kind).map_err(io_err(format!("{name} handler")))?, ev));
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Signals and the slow tick arrive as events on the one channel, so that the main loop waits
    // on two things only (the channel and the protocol timer): at 10 ms adverts the loop runs
    // 100 times a second and re-arming half a dozen futures each time showed in the profile.
    for (mut sig, ev) in sigs {
        let tx = tx.clone();
        tokio::spawn(async move {
            while sig.recv().await.is_some() {
                if tx.send(ev.clone()).is_err() {
                    return;
                }
            }
        });
    }
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tx.send(Ev::Tick).is_err() {
                    return;
                }
            }
        });
    }
    let metrics = Arc::new(Metrics::default());
    let status = Arc::new(Mutex::new(Vec::new()));
    // Removed however run() ends (an instance that cannot start returns an error below).
    let _socket = RemoveOnDrop(opts.run_dir.join(CONTROL_SOCKET));
    let control = tokio::spawn(serve_control(opts.run_dir.join(CONTROL_SOCKET), status.clone()));
    let metrics_task = match opts.metrics_listen {
        Some(a) => {
            let l = tokio::net::TcpListener::bind(a).await.map_err(io_err(format!("metrics listen {a}")))?;
            Some(tokio::spawn(serve_metrics(l, metrics.clone())))
        }
        None => None,
    };
    let mut d = Daemon {
        opts: opts.clone(),
        cfg: config.clone(),
        insts: Vec::new(),
        readers: std::collections::HashSet::new(),
        v4_readers: Vec::new(),
        scripts: HashMap::new(),
        script_ok: HashMap::new(),
        script_disabled: std::collections::HashSet::new(),
        notify_env: NotifyEnv::new(&config.global)?,
        nl: Netlink::new().map_err(io_err("netlink"))?,
        fw: Firewall::new(),
        tx,
        metrics,
        status,
        iface_fault_logs: HashMap::new(),
    };
    // A crashed predecessor's no_accept table would keep dropping traffic to the VIPs.
    if let Err(e) = nft::remove_tables() {
        debug!("nftables: {e}");
    }
    let mut built = Vec::new();
    for c in &config.instances {
        built.push(d.build_inst(c)?);
    }
    for inst in built {
        d.start_instance(inst).await?;
    }
    d.sync_scripts();
    let env = d.notify_env;
    let has_scripts = !d.cfg.scripts.is_empty()
        || d.cfg.instances.iter().any(|i| {
            i.notify.is_some()
                || i.notify_master.is_some()
                || i.notify_backup.is_some()
                || i.notify_fault.is_some()
                || i.notify_stop.is_some()
        });
    if has_scripts && !env.security && env.run_as.map_or(env.daemon_uid, |r| r.uid) == 0 {
        warn!("scripts run as root but enable_script_security is not set (keepalived: SECURITY VIOLATION)");
    }
    // Link state comes from rtnetlink events; a 1 s tick republishes status and gauges, and every
    // 10th tick re-reads the links in case an event was lost. Set up before the first actions are
    // performed, so that failing here cannot leave an owner's VIPs behind.
    let link_tx = d.tx.clone();
    net::watch_links(move || link_tx.send(Ev::Link).is_ok()).map_err(io_err("rtnetlink link events"))?;
    d.recompute_tracking(Instant::now());
    d.process().await;
    let mut ticks = 0u64;
    let far = || Instant::now() + Duration::from_secs(3600);
    let sleep = tokio::time::sleep_until(far());
    tokio::pin!(sleep);
    let mut rbuf = vec![0u8; 2048];
    'main: loop {
        let deadline = d.next_deadline().unwrap_or_else(far);
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        let first = tokio::select! {
            ev = rx.recv() => ev,
            (i, r) = recv_any(&d.v4_readers, &mut rbuf) => {
                match r {
                    Ok(n) => {
                        let name = d.v4_readers[i].name.clone();
                        d.handle_packet(&name, false, &rbuf[..n]);
                        // Drain what else is queued on that socket (one wake-up, several adverts).
                        while let Ok(n) = d.v4_readers[i].sock.try_recv(&mut rbuf) {
                            d.handle_packet(&name, false, &rbuf[..n]);
                        }
                    }
                    Err(e) => warn!(interface = %d.v4_readers[i].name, "receive failed: {e}"),
                }
                rx.try_recv().ok()
            }
            () = &mut sleep => None,
        };
        // Handle everything already queued before the timers and actions run.
        let mut next = first;
        while let Some(ev) = next {
            match ev {
                Ev::Packet(ifname, v6, data) => d.handle_packet(&ifname, v6, &data),
                Ev::Script(name, ok) => {
                    info!(script = %name, "track script now {}", if ok { "OK" } else { "KO" });
                    d.script_ok.insert(name.clone(), Some(ok));
                    d.metrics.script_status.get_or_create(&ScriptLabels { script: name }).set(i64::from(ok));
                    d.recompute_tracking(Instant::now());
                    d.publish();
                }
                Ev::Link => {
                    d.recompute_tracking(Instant::now());
                    d.publish();
                }
                Ev::Tick => {
                    let now = std_now(Instant::now());
                    for inst in &mut d.insts {
                        flush_peer_faults(inst, now);
                    }
                    for ((ifname, _), (what, lim)) in &mut d.iface_fault_logs {
                        if let Some(line) = lim.flush(now) {
                            log_iface_fault_line(ifname, what, &line);
                        }
                    }
                    ticks += 1;
                    if ticks == 10 {
                        ticks = 0;
                        d.recompute_tracking(Instant::now());
                    }
                    d.publish();
                }
                Ev::Term => {
                    info!("SIGTERM: stopping");
                    break 'main;
                }
                Ev::Int => {
                    info!("SIGINT: stopping");
                    break 'main;
                }
                Ev::Hup => {
                    info!("SIGHUP: reloading");
                    d.reload().await;
                }
                Ev::Usr1 => {
                    d.publish();
                    let r = dump::write(&d.opts.run_dir, DATA_FILE, &d.data_dump());
                    log_dump("SIGUSR1", "data", r);
                }
                Ev::Usr2 => {
                    let r = dump::write(&d.opts.run_dir, STATS_FILE, &d.stats_dump());
                    log_dump("SIGUSR2", "stats", r);
                }
                Ev::Json => {
                    d.publish();
                    let st = d.status.lock().map(|v| v.clone()).unwrap_or_default();
                    let r = dump::json_dump(&st)
                        .map_err(std::io::Error::other)
                        .and_then(|j| dump::write(&d.opts.run_dir, JSON_FILE, &j));
                    log_dump("SIGRTMIN+2", "JSON", r);
                }
                Ev::StatsClear => {
                    info!("SIGRTMAX (keepalived: clear stats): ignored, counters are never reset (Prometheus)");
                }
            }
            next = rx.try_recv().ok();
        }
        d.fire_timers();
        d.process().await;
    }
    d.shutdown_all().await;
    if d.fw.installed() {
        if let Err(e) = d.fw.remove() {
            warn!("no_accept: cannot remove the nftables table: {e}");
        }
    }
    for (_, t) in d.scripts.drain() {
        t.task.abort();
    }
    control.abort();
    if let Some(m) = metrics_task {
        m.abort();
    }
    Ok(())
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

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn log_dump(signal: &str, what: &str, r: std::io::Result<PathBuf>) {
    match r {
        Ok(p) => info!("{signal}: {what} dump written to {}", p.display()),
        Err(e) => warn!("{signal}: cannot write the {what} dump into the run directory: {e}"),
    }
}
