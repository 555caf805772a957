//! The engine's one task (an actor): it owns every [`proto::Instance`], feeds them packets, timers,
//! tracking changes and the handle's commands, and performs their actions (adverts, VIPs, GARPs,
//! notify scripts, events, metrics). See the module docs of [`super`] for the picture.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use socket2::Socket;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::faultlog::{flush_peer_faults, log_iface_fault_line, log_peer_fault, packet_fault};
use super::scripts::{notify, script_loop, NotifyEnv};
use super::{chain, io_err, EngineError, Event, InstanceStatus, Options, ReloadReport, StateChange, VipControl};
use crate::config::{self, ChecksumForm, Config, Script, Vip};
use crate::io::metrics::{DropLabels, InstanceLabels, Metrics, ScriptLabels};
use crate::io::net::{self, IfInfo, Netlink};
use crate::io::nft::{self, Firewall};
use crate::io::script;
use crate::proto::{self, Action, Reason, State};
use crate::wire::{self, Auth, ChecksumKind, Packet, Repr, Version};

use super::loglimit;

/// How long the engine's threads (link events, IPv6 frames) block before checking whether the
/// engine is still running: they end at most this long after it stopped.
pub const THREAD_POLL: Duration = Duration::from_secs(1);

pub(super) struct Inst {
    pub(super) cfg: config::Instance,
    version: Version,
    pub(super) m: proto::Instance,
    pub(super) ifc: IfInfo,
    /// The interface of each VIP (`dev`, else the instance's), in `cfg.virtual_ipaddress` order.
    vip_ifs: Vec<IfInfo>,
    pub(super) src: IpAddr,
    send: Socket,
    dsts: Vec<IpAddr>,
    form: ChecksumKind,
    labels: InstanceLabels,
    garp_next: Option<Instant>,
    /// The VIPs are on the interfaces (and in the no_accept set) now.
    pub(super) holds: bool,
    /// The election wants them (Master: between AddVips and RemoveVips).
    wants: bool,
    /// The embedder allows them ([`VipControl`], [`super::Handle::allow_vips`]).
    allowed: bool,
    /// Why the instance is (or would be) in Fault, from the last tracking pass.
    fault_causes: Vec<String>,
    /// Handles on this instance's advert counters (a label lookup per advert showed in profiles).
    sent_ctr: prometheus_client::metrics::counter::Counter,
    recv_ctr: prometheus_client::metrics::counter::Counter,
    /// The last advertisements built: priority and one datagram per destination.
    advert_cache: Option<(u8, Vec<Vec<u8>>)>,
    /// Time, reason and detail (the fault causes) of the last transition.
    pub(super) last: Option<(SystemTime, Reason, Option<String>)>,
    /// Rate-limited logging of adverts dropped for a peer's misconfiguration, by reason.
    pub(super) fault_logs: HashMap<&'static str, (&'static str, loglimit::Limiter)>,
}

/// What the embedder set on an instance, by name (kept across reloads of that instance).
#[derive(Debug, Clone, Default)]
pub(super) struct External {
    /// Priority lowered by this much, and why.
    pub(super) penalty: Option<(u8, String)>,
    /// Forced into Fault, and why.
    pub(super) fault: Option<String>,
    /// [`super::Handle::allow_vips`]; `None`: as [`VipControl`] says.
    pub(super) vips: Option<bool>,
}

/// Inputs from the engine's own sources (sockets, threads, script tasks, the tick).
#[derive(Clone)]
pub(super) enum Ev {
    /// Interface, IPv6 packet (else IPv4 datagram), bytes.
    Packet(Arc<str>, bool, Vec<u8>),
    Script(String, bool),
    /// The kernel reported a link change.
    Link,
    /// The 1 s housekeeping tick.
    Tick,
}

/// A request from a [`super::Handle`].
pub(super) enum Cmd {
    Reload(Box<Config>, oneshot::Sender<Result<ReloadReport, EngineError>>),
    Status(oneshot::Sender<Vec<InstanceStatus>>),
    DataDump(oneshot::Sender<String>),
    StatsDump(oneshot::Sender<String>),
    Penalty(String, Option<(u8, String)>, oneshot::Sender<Result<(), EngineError>>),
    Fault(String, Option<String>, oneshot::Sender<Result<(), EngineError>>),
    AllowVips(String, bool, oneshot::Sender<Result<(), EngineError>>),
    Shutdown,
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

pub(super) struct ScriptTask {
    def: Script,
    task: JoinHandle<()>,
}

pub(super) struct Core {
    pub(super) opts: Options,
    pub(super) cfg: Config,
    pub(super) insts: Vec<Inst>,
    readers: HashSet<(String, bool)>,
    /// IPv4 receive sockets, polled by the main loop.
    v4_readers: Vec<Reader>,
    pub(super) scripts: HashMap<String, ScriptTask>,
    pub(super) script_ok: HashMap<String, Option<bool>>,
    /// Track scripts refused (not found, or insecure): removed from tracking, like keepalived.
    pub(super) script_disabled: HashSet<String>,
    /// Who runs notify scripts, and whether `enable_script_security` is on.
    notify_env: NotifyEnv,
    nl: Netlink,
    /// The rtnetlink connection task behind `nl`.
    nl_task: Option<JoinHandle<()>>,
    /// The 1 s tick task.
    tick_task: Option<JoinHandle<()>>,
    fw: Firewall,
    tx: mpsc::UnboundedSender<Ev>,
    metrics: Arc<Metrics>,
    events: broadcast::Sender<Event>,
    ext: HashMap<String, External>,
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

/// RFC 5798 Accept_Mode: only a non-owner in `no_accept` mode drops traffic to its VIPs.
fn no_accept(c: &config::Instance) -> bool {
    !c.accept && c.priority != 255
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        opts: Options,
        cfg: Config,
        notify_env: NotifyEnv,
        (nl, nl_task): (Netlink, JoinHandle<()>),
        fw: Firewall,
        tx: mpsc::UnboundedSender<Ev>,
        metrics: Arc<Metrics>,
        events: broadcast::Sender<Event>,
    ) -> Core {
        Core {
            opts,
            cfg,
            insts: Vec::new(),
            readers: HashSet::new(),
            v4_readers: Vec::new(),
            scripts: HashMap::new(),
            script_ok: HashMap::new(),
            script_disabled: HashSet::new(),
            notify_env,
            nl,
            nl_task: Some(nl_task),
            tick_task: None,
            fw,
            tx,
            metrics,
            events,
            ext: HashMap::new(),
            iface_fault_logs: HashMap::new(),
        }
    }

    /// Removes a predecessor's leftovers, opens every instance's sockets and starts them,
    /// starts the track scripts, the link watcher and the tick, and performs the first actions.
    pub(super) async fn open(&mut self, config: &Config) -> Result<(), EngineError> {
        // A crashed predecessor's no_accept table would keep dropping traffic to the VIPs.
        if let Err(e) = nft::remove_tables() {
            debug!("nftables: {e}");
        }
        let mut built = Vec::new();
        for c in &config.instances {
            built.push(self.build_inst(c)?);
        }
        for inst in built {
            self.start_instance(inst).await?;
        }
        self.sync_scripts();
        let env = self.notify_env;
        let has_scripts = !self.cfg.scripts.is_empty()
            || self.cfg.instances.iter().any(|i| {
                i.notify.is_some()
                    || i.notify_master.is_some()
                    || i.notify_backup.is_some()
                    || i.notify_fault.is_some()
                    || i.notify_stop.is_some()
            });
        if has_scripts && !env.security && env.run_as.map_or(env.daemon_uid, |r| r.uid) == 0 {
            warn!("scripts run as root but enable_script_security is not set (keepalived: SECURITY VIOLATION)");
        }
        // Link state comes from rtnetlink events; a 1 s tick updates the gauges, and every 10th
        // tick re-reads the links in case an event was lost. Set up before the first actions are
        // performed, so that failing here cannot leave an owner's VIPs behind.
        let link_tx = self.tx.clone();
        let alive_tx = self.tx.clone();
        net::watch_links(move || link_tx.send(Ev::Link).is_ok(), move || !alive_tx.is_closed(), THREAD_POLL)
            .map_err(io_err("rtnetlink link events"))?;
        let tick_tx = self.tx.clone();
        self.tick_task = Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tick_tx.send(Ev::Tick).is_err() {
                    return;
                }
            }
        }));
        self.recompute_tracking(Instant::now());
        self.process().await;
        self.publish();
        Ok(())
    }

    fn build_inst(&self, c: &config::Instance) -> Result<Inst, EngineError> {
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
                EngineError::Unsupported(format!("instance {}: interface {} has no IPv4 address", c.name, c.interface))
            })?),
            (None, true) => IpAddr::V6(ifc.link_local_v6.ok_or_else(|| {
                EngineError::Unsupported(format!(
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
            wants: false,
            allowed: self.vips_allowed(&c.name),
            fault_causes: Vec::new(),
            sent_ctr: self.metrics.adverts_sent.get_or_create(&labels).clone(),
            recv_ctr: self.metrics.adverts_received.get_or_create(&labels).clone(),
            advert_cache: None,
            last: None,
            fault_logs: HashMap::new(),
        })
    }

    fn ensure_reader(&mut self, ifc: &IfInfo, v6: bool) -> Result<(), EngineError> {
        let key = (ifc.name.clone(), v6);
        if self.readers.contains(&key) {
            return Ok(());
        }
        let tx = self.tx.clone();
        let name: Arc<str> = Arc::from(ifc.name.as_str());
        if v6 {
            // IPv6 raw sockets hide the hop limit (reading it needs ancillary data, hence unsafe
            // code); AF_PACKET frames carry the whole IPv6 header.
            let mut rx = net::frame_receiver(&ifc.name, Some(THREAD_POLL))
                .map_err(io_err(format!("AF_PACKET on {}", ifc.name)))?;
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
                        // The engine stopped: end the thread.
                        Err(_) if tx.is_closed() => return,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
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

    /// Recomputes fault and priority offsets from links, scripts and the embedder, and feeds
    /// them to the machines (the same path for all three: [`proto::Instance::set_priority_offset`]
    /// and [`proto::Instance::set_fault`]).
    fn recompute_tracking(&mut self, now: Instant) {
        let ifs = pnet_datalink::interfaces();
        let running = |name: &str| ifs.iter().find(|i| i.name == name).is_some_and(|i| i.is_up() && i.is_running());
        for inst in &mut self.insts {
            let mut causes = Vec::new();
            if !running(&inst.cfg.interface) {
                causes.push(format!("interface {} down", inst.cfg.interface));
            }
            let mut offset = 0i32;
            for t in &inst.cfg.track_interface {
                let up = running(&t.name);
                match t.weight.unwrap_or(0) {
                    0 if !up => causes.push(format!("track_interface {} down", t.name)),
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
                    (0, Some(false)) => causes.push(format!("track_script {} failed", t.name)),
                    (w, Some(false)) if w < 0 => offset += w,
                    (w, Some(true)) if w > 0 => offset += w,
                    _ => {}
                }
            }
            if let Some(e) = self.ext.get(&inst.cfg.name) {
                if let Some((by, _)) = &e.penalty {
                    offset -= i32::from(*by);
                }
                if let Some(r) = &e.fault {
                    causes.push(format!("forced by the embedder: {r}"));
                }
            }
            let fault = !causes.is_empty();
            inst.fault_causes = causes;
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
        let Core { insts, fw, nl, events, metrics, cfg, notify_env, .. } = self;
        let inst = &mut insts[idx];
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
                inst.wants = true;
                if inst.allowed {
                    add_vips(inst, fw, nl, events).await;
                } else {
                    debug!(instance = %inst.cfg.name, "master, VIPs held back until the embedder allows them");
                }
            }
            Action::RemoveVips => {
                inst.wants = false;
                remove_vips(inst, fw, nl, events).await;
            }
            Action::Announce => {
                if inst.holds {
                    announce(inst, now);
                }
            }
            Action::StateChange { from, to, reason } => {
                let detail = (to == State::Fault && reason == Reason::Fault && !inst.fault_causes.is_empty())
                    .then(|| inst.fault_causes.join("; "));
                debug!(instance = %inst.cfg.name, "{} -> {} ({reason})", from.keepalived_name(), to.keepalived_name());
                let at = SystemTime::now();
                inst.last = Some((at, reason, detail.clone()));
                if to == State::Master {
                    metrics.become_master.get_or_create(&inst.labels).inc();
                }
                notify(inst, to, reason, *notify_env);
                let _ = events.send(Event::StateChanged(StateChange {
                    instance: inst.cfg.name.clone(),
                    from,
                    to,
                    reason,
                    detail,
                    vips_held: inst.holds,
                    at,
                }));
                if reason != Reason::SyncGroup {
                    let name = inst.cfg.name.clone();
                    let members: Vec<String> = cfg
                        .sync_groups
                        .iter()
                        .filter(|g| g.group.contains(&name))
                        .flat_map(|g| g.group.clone())
                        .filter(|m| *m != name)
                        .collect();
                    for other in insts.iter_mut().filter(|i| members.contains(&i.cfg.name)) {
                        other.m.sync_to(std_now(now), to);
                    }
                }
            }
        }
    }

    /// Updates the gauges (on every state change, tracking change and on the 1 s tick; not on
    /// every advert: at 10 ms adverts that would dominate the engine's CPU time).
    fn publish(&self) {
        for i in &self.insts {
            self.metrics.state.get_or_create(&i.labels).set(i.m.state() as i64);
            self.metrics.effective_priority.get_or_create(&i.labels).set(i64::from(i.m.effective_priority()));
            self.metrics.configured_priority.get_or_create(&i.labels).set(i64::from(i.cfg.priority));
        }
    }

    pub(super) fn status(&self) -> Vec<InstanceStatus> {
        let mut v = Vec::new();
        for i in &self.insts {
            let ext = self.ext.get(&i.cfg.name);
            v.push(InstanceStatus {
                name: i.cfg.name.clone(),
                interface: i.cfg.interface.clone(),
                vrid: i.cfg.vrid,
                state: i.m.state().keepalived_name().to_string(),
                priority: i.cfg.priority,
                effective_priority: i.m.effective_priority(),
                master: i.m.master(),
                vips: i.cfg.virtual_ipaddress.iter().map(ToString::to_string).collect(),
                last_transition_unix: i
                    .last
                    .as_ref()
                    .and_then(|(t, _, _)| t.duration_since(SystemTime::UNIX_EPOCH).ok().map(|d| d.as_secs_f64())),
                last_reason: i.last.as_ref().map(|(_, r, d)| match d {
                    Some(d) => format!("{r}: {d}"),
                    None => r.to_string(),
                }),
                vips_held: i.holds,
                vips_allowed: i.allowed,
                fault_causes: i.fault_causes.clone(),
                priority_lowered_by: ext.and_then(|e| e.penalty.as_ref()).map_or(0, |(b, _)| *b),
                priority_lowered_why: ext.and_then(|e| e.penalty.as_ref()).map(|(_, r)| r.clone()),
                forced_fault: ext.and_then(|e| e.fault.clone()),
            });
        }
        v
    }

    fn vips_allowed(&self, name: &str) -> bool {
        self.ext.get(name).and_then(|e| e.vips).unwrap_or(self.opts.vips == VipControl::Managed)
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

    async fn start_instance(&mut self, mut inst: Inst) -> Result<(), EngineError> {
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

    /// Applies a new configuration: instances whose settings (or the global ones) changed are
    /// stopped (priority 0 if master) and started again; unchanged ones keep their state, so a
    /// reload never causes a failover by itself. On an error nothing changes.
    async fn reload(&mut self, new: Config) -> Result<ReloadReport, EngineError> {
        let problems = new.validate();
        if !problems.is_empty() {
            return Err(EngineError::Config(config::ConfigError::Invalid(problems)));
        }
        let env = NotifyEnv::new(&new.global)?;
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
        let mut report = ReloadReport::default();
        for i in old_insts {
            let same = global_same && new.instances.iter().any(|n| n.name == i.cfg.name && same_instance(n, &i.cfg));
            if same {
                report.kept.push(i.cfg.name.clone());
                kept.push(i);
            } else {
                if !new.instances.iter().any(|n| n.name == i.cfg.name) {
                    report.removed.push(i.cfg.name.clone());
                }
                stopped.push(i);
            }
        }
        // Stop what changed or disappeared.
        self.insts = stopped;
        self.shutdown_all().await;
        self.insts = kept;
        self.cfg = new.clone();
        // What the embedder set on an instance that no longer exists goes with it.
        self.ext.retain(|name, _| new.instances.iter().any(|c| c.name == *name));
        for c in &new.instances {
            if self.insts.iter().any(|i| i.cfg.name == c.name) {
                continue;
            }
            let started = match self.build_inst(c) {
                Ok(inst) => self.start_instance(inst).await,
                Err(e) => Err(e),
            };
            match started {
                Ok(()) => report.started.push(c.name.clone()),
                Err(e) => {
                    warn!(instance = %c.name, "cannot start: {}", chain(&e));
                    report.failed.push((c.name.clone(), chain(&e)));
                }
            }
        }
        // Keep config order.
        self.insts.sort_by_key(|i| new.instances.iter().position(|c| c.name == i.cfg.name).unwrap_or(usize::MAX));
        self.sync_scripts();
        self.recompute_tracking(Instant::now());
        info!(
            "configuration reloaded ({} instances kept, {} (re)started, {} removed, {} failed)",
            report.kept.len(),
            report.started.len(),
            report.removed.len(),
            report.failed.len()
        );
        self.process().await;
        self.publish();
        Ok(report)
    }

    fn knows(&self, instance: &str) -> Result<(), EngineError> {
        if self.cfg.instances.iter().any(|c| c.name == instance) {
            Ok(())
        } else {
            Err(EngineError::UnknownInstance(instance.to_string()))
        }
    }

    /// Handles one request of a handle; `false` when it asks the engine to stop.
    async fn command(&mut self, cmd: Cmd) -> bool {
        match cmd {
            Cmd::Shutdown => return false,
            Cmd::Reload(cfg, reply) => {
                let r = self.reload(*cfg).await;
                if let Err(e) = &r {
                    warn!("reload refused, keeping the running configuration: {}", chain(e));
                }
                let _ = reply.send(r);
            }
            Cmd::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Cmd::DataDump(reply) => {
                let _ = reply.send(self.data_dump());
            }
            Cmd::StatsDump(reply) => {
                let _ = reply.send(self.stats_dump());
            }
            Cmd::Penalty(name, penalty, reply) => {
                let r = self.knows(&name);
                if r.is_ok() {
                    match &penalty {
                        Some((by, why)) => {
                            warn!(instance = %name, "priority lowered by {by} by the embedder: {why}")
                        }
                        None => info!(instance = %name, "priority no longer lowered by the embedder"),
                    }
                    self.ext.entry(name).or_default().penalty = penalty;
                    self.retrack().await;
                }
                let _ = reply.send(r);
            }
            Cmd::Fault(name, fault, reply) => {
                let r = self.knows(&name);
                if r.is_ok() {
                    match &fault {
                        Some(why) => warn!(instance = %name, "fault forced by the embedder: {why}"),
                        None => info!(instance = %name, "fault forced by the embedder cleared"),
                    }
                    self.ext.entry(name).or_default().fault = fault;
                    self.retrack().await;
                }
                let _ = reply.send(r);
            }
            Cmd::AllowVips(name, allow, reply) => {
                let r = self.knows(&name);
                if r.is_ok() {
                    self.ext.entry(name.clone()).or_default().vips = Some(allow);
                    self.allow_vips(&name, allow).await;
                }
                let _ = reply.send(r);
            }
        }
        true
    }

    /// After the embedder changed a priority or fault: recompute and perform at once, so that
    /// when its call returns the adverts went out and the VIPs moved.
    async fn retrack(&mut self) {
        self.recompute_tracking(Instant::now());
        self.process().await;
        self.publish();
    }

    async fn allow_vips(&mut self, name: &str, allow: bool) {
        let now = Instant::now();
        let Core { insts, fw, nl, events, .. } = self;
        for inst in insts.iter_mut().filter(|i| i.cfg.name == name) {
            if inst.allowed != allow {
                info!(instance = %name, "VIPs {} by the embedder", if allow { "allowed" } else { "held back" });
            }
            inst.allowed = allow;
            if allow && inst.wants && !inst.holds {
                add_vips(inst, fw, nl, events).await;
                announce(inst, now);
            } else if !allow && inst.holds {
                remove_vips(inst, fw, nl, events).await;
            }
        }
    }

    /// The main loop, until a handle asks to stop (or every handle is gone); then the graceful
    /// stop (priority 0, VIPs removed) and every task ended.
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Ev>,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        done: watch::Sender<bool>,
    ) {
        let mut ticks = 0u64;
        let far = || Instant::now() + Duration::from_secs(3600);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        let mut rbuf = vec![0u8; 2048];
        'main: loop {
            let deadline = self.next_deadline().unwrap_or_else(far);
            if sleep.deadline() != deadline {
                sleep.as_mut().reset(deadline);
            }
            let first = tokio::select! {
                ev = rx.recv() => ev,
                cmd = cmds.recv() => {
                    // None: every handle was dropped, which stops the engine as shutdown() does.
                    let Some(cmd) = cmd else { break 'main };
                    if !self.command(cmd).await {
                        break 'main;
                    }
                    None
                }
                (i, r) = recv_any(&self.v4_readers, &mut rbuf) => {
                    match r {
                        Ok(n) => {
                            let name = self.v4_readers[i].name.clone();
                            self.handle_packet(&name, false, &rbuf[..n]);
                            // Drain what else is queued on that socket (one wake-up, several adverts).
                            while let Ok(n) = self.v4_readers[i].sock.try_recv(&mut rbuf) {
                                self.handle_packet(&name, false, &rbuf[..n]);
                            }
                        }
                        Err(e) => warn!(interface = %self.v4_readers[i].name, "receive failed: {e}"),
                    }
                    rx.try_recv().ok()
                }
                () = &mut sleep => None,
            };
            // Handle everything already queued before the timers and actions run.
            let mut next = first;
            while let Some(ev) = next {
                match ev {
                    Ev::Packet(ifname, v6, data) => self.handle_packet(&ifname, v6, &data),
                    Ev::Script(name, ok) => {
                        info!(script = %name, "track script now {}", if ok { "OK" } else { "KO" });
                        self.script_ok.insert(name.clone(), Some(ok));
                        self.metrics.script_status.get_or_create(&ScriptLabels { script: name }).set(i64::from(ok));
                        self.recompute_tracking(Instant::now());
                        self.publish();
                    }
                    Ev::Link => {
                        self.recompute_tracking(Instant::now());
                        self.publish();
                    }
                    Ev::Tick => {
                        let now = std_now(Instant::now());
                        for inst in &mut self.insts {
                            flush_peer_faults(inst, now);
                        }
                        for ((ifname, _), (what, lim)) in &mut self.iface_fault_logs {
                            if let Some(line) = lim.flush(now) {
                                log_iface_fault_line(ifname, what, &line);
                            }
                        }
                        ticks += 1;
                        if ticks == 10 {
                            ticks = 0;
                            self.recompute_tracking(Instant::now());
                        }
                        self.publish();
                    }
                }
                next = rx.try_recv().ok();
            }
            self.fire_timers();
            self.process().await;
        }
        self.shutdown_all().await;
        self.publish();
        self.teardown().await;
        // The events channel closes with this (receivers see `Closed` after the last events).
        drop(self);
        drop(rx);
        let _ = done.send(true);
    }

    /// Removes the no_accept table and ends every task the engine started (each awaited, so
    /// none is left when this returns). The threads (link events, IPv6 frames) see the closed
    /// channel and end within [`THREAD_POLL`].
    pub(super) async fn teardown(&mut self) {
        if self.fw.installed() {
            if let Err(e) = self.fw.remove() {
                warn!("no_accept: cannot remove the nftables table: {e}");
            }
        }
        let mut tasks: Vec<JoinHandle<()>> = self.scripts.drain().map(|(_, t)| t.task).collect();
        tasks.extend(self.tick_task.take());
        tasks.extend(self.nl_task.take());
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        self.v4_readers.clear();
    }
}

/// Adds the VIPs (no_accept drop rule first, like keepalived) and says so.
async fn add_vips(inst: &mut Inst, fw: &mut Firewall, nl: &Netlink, events: &broadcast::Sender<Event>) {
    if no_accept(&inst.cfg) {
        let addrs: Vec<IpAddr> = inst.cfg.virtual_ipaddress.iter().map(|v| v.addr).collect();
        match fw.block(&addrs) {
            Ok(()) => debug!(instance = %inst.cfg.name, "no_accept: firewall drop rule set"),
            Err(e) => warn!(instance = %inst.cfg.name, "no_accept: cannot set the drop rule: {e}"),
        }
    }
    for (v, ifc) in inst.cfg.virtual_ipaddress.iter().zip(&inst.vip_ifs) {
        if let Err(e) = nl.add(ifc.index, v).await {
            warn!(instance = %inst.cfg.name, "{e}");
        }
    }
    if !inst.holds {
        inst.holds = true;
        let _ = events.send(Event::VipsChanged { instance: inst.cfg.name.clone(), held: true });
    }
}

/// Removes the VIPs (then the no_accept drop rule) if they are held, and says so.
async fn remove_vips(inst: &mut Inst, fw: &mut Firewall, nl: &Netlink, events: &broadcast::Sender<Event>) {
    inst.garp_next = None;
    if !inst.holds {
        return;
    }
    for (v, ifc) in inst.cfg.virtual_ipaddress.iter().zip(&inst.vip_ifs) {
        if let Err(e) = nl.del(ifc.index, v).await {
            warn!(instance = %inst.cfg.name, "{e}");
        }
    }
    if no_accept(&inst.cfg) {
        let addrs: Vec<IpAddr> = inst.cfg.virtual_ipaddress.iter().map(|v| v.addr).collect();
        if let Err(e) = fw.unblock(&addrs) {
            warn!(instance = %inst.cfg.name, "no_accept: cannot remove the drop rule: {e}");
        }
    }
    inst.holds = false;
    let _ = events.send(Event::VipsChanged { instance: inst.cfg.name.clone(), held: false });
}

/// Gratuitous ARPs / unsolicited NAs now, and the `garp_master_delay` repeat.
fn announce(inst: &mut Inst, now: Instant) {
    garp(inst);
    inst.garp_next = (!inst.cfg.garp_master_delay.is_zero()).then(|| now + inst.cfg.garp_master_delay);
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
