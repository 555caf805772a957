//! The engine embedded in a test program (issue 15): two engines, each on its own tokio runtime
//! in its own network namespace (hosts a and b on LAN `lan0`, client c), driven through their
//! handles; the test reads their typed events. Needs root (namespaces, raw sockets): fails
//! without it.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use rempart_testkit::{wait, Lab};
use vrrp::io::engine::{self, EngineError, Event, Events, Handle, Options, StateChange, VipControl};
use vrrp::proto::{Reason, State};

const LAN: &str = "lan0";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 50);

fn lab() -> Lab {
    assert!(rempart_testkit::require_root("network namespaces and raw sockets"), "this test needs root");
    let mut lab = Lab::new().expect("lab");
    for h in ["a", "b", "c"] {
        lab.add_host(h).expect("host");
        assert!(lab.run(h, &["ip", "link", "set", "lo", "up"]).expect("lo").status.success());
    }
    lab.add_lan(LAN).expect("lan");
    lab.attach(LAN, "a", "10.77.0.1/24").expect("attach a");
    lab.attach(LAN, "b", "10.77.0.2/24").expect("attach b");
    lab.attach(LAN, "c", "10.77.0.3/24").expect("attach c");
    lab
}

fn conf(priority: u8, advert_int: &str, vip: &str) -> vrrp::config::Config {
    let text = format!(
        "global_defs {{\n  vrrp_version 3\n}}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface {LAN}\n  \
         virtual_router_id 77\n  priority {priority}\n  advert_int {advert_int}\n  virtual_ipaddress {{\n    \
         {vip}/24\n  }}\n}}\n"
    );
    let (cfg, warnings) = vrrp::config::keepalived::parse(&text, std::path::Path::new("/test/keepalived.conf"))
        .expect("test configuration parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    cfg
}

/// An engine running on its own current-thread runtime, on a thread inside a lab host.
struct Embedded {
    handle: Handle,
    events: Events,
    /// Asks the engine's thread to report its runtime's alive tasks (before start, now).
    measure: Option<tokio::sync::oneshot::Sender<()>>,
    counts: std::sync::mpsc::Receiver<(usize, usize)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn embed(lab: &Lab, host: &str, cfg: vrrp::config::Config, vips: VipControl) -> Embedded {
    let path = format!("/run/netns/{}", lab.netns(host));
    let (htx, hrx) = std::sync::mpsc::channel();
    let (mtx, mrx) = tokio::sync::oneshot::channel::<()>();
    let (ctx, counts) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let ns = File::open(&path).expect("open netns");
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let base = tokio::runtime::Handle::current().metrics().num_alive_tasks();
            let mut reg = Registry::default();
            let opts = Options { vips, ..Options::default() };
            let started = engine::start(cfg, opts, &mut reg).await;
            let ok = started.is_ok();
            let _ = htx.send(started.map_err(|e| engine::chain(&e)));
            if !ok {
                return;
            }
            // Until the test asks (or gives up: then the runtime is dropped with the engine).
            if mrx.await.is_ok() {
                let now = tokio::runtime::Handle::current().metrics().num_alive_tasks();
                let _ = ctx.send((base, now));
            }
        });
    });
    let (handle, events) = hrx.recv().expect("engine thread").expect("engine starts");
    Embedded { handle, events, measure: Some(mtx), counts, thread: Some(thread) }
}

impl Embedded {
    /// (alive tasks on the engine's runtime before start, now).
    fn alive_tasks(&mut self) -> (usize, usize) {
        let _ = self.measure.take().expect("measured once").send(());
        self.counts.recv_timeout(Duration::from_secs(5)).expect("task counts")
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        self.measure.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits for `instance`'s transition `from` → `to`, skipping other events.
async fn transition(ev: &mut Events, from: State, to: State, within: Duration) -> StateChange {
    let mut seen = Vec::new();
    let r = tokio::time::timeout(within, async {
        loop {
            match ev.recv().await {
                Ok(Event::StateChanged(c)) if c.instance == "VI_1" && c.from == from && c.to == to => return c,
                Ok(e) => seen.push(format!("{e:?}")),
                Err(e) => panic!("events: {e}; seen {seen:#?}"),
            }
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("no VI_1 {from:?} -> {to:?} within {within:?}; seen {seen:#?}"))
}

/// Forgets the events already received (so that the next wait sees only what follows).
fn drain(ev: &mut Events) {
    while ev.try_recv().is_ok() {}
}

/// Waits until `h`'s VI_1 is in `state`.
async fn wait_state(h: &Handle, state: &str, within: Duration) {
    tokio::time::timeout(within, async {
        while h.status().await.expect("status")[0].state != state {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("VI_1 not {state} within {within:?}"));
}

/// Waits for a `VipsChanged` of VI_1.
async fn vips_changed(ev: &mut Events, within: Duration) -> bool {
    tokio::time::timeout(within, async {
        loop {
            match ev.recv().await {
                Ok(Event::VipsChanged { instance, held }) if instance == "VI_1" => return held,
                Ok(_) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .expect("a VipsChanged event")
}

fn addrs(lab: &Lab, host: &str) -> Vec<IpAddr> {
    lab.enter(host, || {
        nix::ifaddrs::getifaddrs()
            .map(|it| {
                it.filter(|i| i.interface_name == LAN)
                    .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip()))))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    })
    .expect("enter")
}

fn has(lab: &Lab, host: &str, ip: Ipv4Addr) -> bool {
    addrs(lab, host).contains(&IpAddr::V4(ip))
}

fn wait_has(lab: &Lab, host: &str, ip: Ipv4Addr, within: Duration) {
    wait::until(within, &format!("{ip} on {host}"), || has(lab, host, ip)).expect("VIP");
}

/// (a)–(e): typed events for Backup → Master; a forced fault hands the VIP to the peer (events
/// on both sides) and clearing it takes it back; a lowered priority lets a preempting peer win;
/// a reload with another VIP moves the address.
#[tokio::test]
async fn embedded_events_fault_priority_and_reload() {
    let lab = lab();
    let mut b = embed(&lab, "b", conf(100, "0.1", "10.77.0.50"), VipControl::Managed);
    let mut a = embed(&lab, "a", conf(150, "0.1", "10.77.0.50"), VipControl::Managed);
    let t = Duration::from_secs(5);

    // (a) a: Initialize -> Backup at start, then Backup -> Master (b, lower, stays backup).
    let c = transition(&mut a.events, State::Initialize, State::Backup, t).await;
    assert_eq!(c.reason, Reason::Startup);
    let c = transition(&mut a.events, State::Backup, State::Master, t).await;
    assert!(matches!(c.reason, Reason::MasterDown), "{c:?}");
    assert!(c.vips_held, "{c:?}");
    assert!(has(&lab, "a", VIP), "VIP not on a after its Master event");
    // (b may have been master for a moment if a started late: it yields to a's first advert.)
    wait_state(&b.handle, "BACKUP", t).await;
    wait::until(t, "VIP off b", || !has(&lab, "b", VIP)).expect("b without the VIP");
    drain(&mut a.events);
    drain(&mut b.events);

    // (b) Forced FAULT on the master: the call returns after the priority-0 advert and the VIP
    // removal; b takes over; events on both sides.
    a.handle.force_fault("VI_1", "volume degraded").await.expect("force_fault");
    assert!(!has(&lab, "a", VIP), "VIP still on a when force_fault returned");
    let c = transition(&mut a.events, State::Master, State::Fault, t).await;
    assert_eq!(c.reason, Reason::Fault);
    assert_eq!(c.detail.as_deref(), Some("forced by the embedder: volume degraded"));
    assert!(!c.vips_held);
    let c = transition(&mut b.events, State::Backup, State::Master, t).await;
    assert_eq!(c.reason, Reason::MasterStopped, "a's fault sends priority 0: b waits only Skew_Time");
    wait_has(&lab, "b", VIP, t);
    let st = a.handle.status().await.expect("status");
    assert_eq!(st[0].state, "FAULT");
    assert_eq!(st[0].forced_fault.as_deref(), Some("volume degraded"));
    assert_eq!(st[0].last_reason.as_deref(), Some("fault: forced by the embedder: volume degraded"));
    assert!(!st[0].vips_held);

    // (c) Cleared: a leaves FAULT and, higher and preempting, takes the VIP back.
    a.handle.clear_fault("VI_1").await.expect("clear_fault");
    let c = transition(&mut a.events, State::Fault, State::Backup, t).await;
    assert_eq!(c.reason, Reason::FaultCleared);
    transition(&mut a.events, State::Backup, State::Master, t).await;
    transition(&mut b.events, State::Master, State::Backup, t).await;
    wait_has(&lab, "a", VIP, t);
    wait::until(t, "VIP off b", || !has(&lab, "b", VIP)).expect("b released the VIP");
    assert_eq!(a.handle.status().await.expect("status")[0].forced_fault, None);

    // (d) Lowered priority (150 - 60 = 90 < 100): b preempts.
    drain(&mut a.events);
    drain(&mut b.events);
    a.handle.lower_priority("VI_1", 60, "service slow").await.expect("lower_priority");
    let st = a.handle.status().await.expect("status");
    assert_eq!(st[0].effective_priority, 90);
    assert_eq!(st[0].priority_lowered_by, 60);
    assert_eq!(st[0].priority_lowered_why.as_deref(), Some("service slow"));
    transition(&mut b.events, State::Backup, State::Master, t).await;
    let c = transition(&mut a.events, State::Master, State::Backup, t).await;
    assert!(matches!(c.reason, Reason::HigherPriority { priority: 100, .. }), "{c:?}");
    wait_has(&lab, "b", VIP, t);
    wait::until(t, "VIP off a", || !has(&lab, "a", VIP)).expect("a released the VIP");
    // Restored: a preempts back.
    drain(&mut a.events);
    a.handle.restore_priority("VI_1").await.expect("restore_priority");
    transition(&mut a.events, State::Backup, State::Master, t).await;
    wait_has(&lab, "a", VIP, t);
    assert_eq!(a.handle.status().await.expect("status")[0].effective_priority, 150);

    // Unknown instance: the caller's error.
    let e = a.handle.force_fault("VI_9", "x").await.expect_err("unknown instance");
    assert!(matches!(e, EngineError::UnknownInstance(ref n) if n == "VI_9"), "{e:?}");

    // (e) Reload: the same configuration keeps the instance; another VIP restarts it and the
    // address moves (b first, so that whoever is master next has the new VIP).
    let same = a.handle.reload(conf(150, "0.1", "10.77.0.50")).await.expect("reload");
    assert_eq!(same.kept, ["VI_1"]);
    assert!(same.started.is_empty());
    let new_vip = Ipv4Addr::new(10, 77, 0, 51);
    let rb = b.handle.reload(conf(100, "0.1", "10.77.0.51")).await.expect("reload b");
    assert_eq!(rb.started, ["VI_1"]);
    let ra = a.handle.reload(conf(150, "0.1", "10.77.0.51")).await.expect("reload a");
    assert_eq!(ra.started, ["VI_1"]);
    wait_has(&lab, "a", new_vip, t);
    wait::until(t, "old VIP gone everywhere", || !has(&lab, "a", VIP) && !has(&lab, "b", VIP))
        .expect("old VIP removed");
    let st = a.handle.status().await.expect("status");
    assert_eq!(st[0].state, "MASTER");
    assert_eq!(st[0].vips, ["10.77.0.51/24"]);
    // An invalid configuration is refused and changes nothing.
    let mut bad = conf(150, "0.1", "10.77.0.51");
    bad.instances.clear();
    assert!(matches!(a.handle.reload(bad).await, Err(EngineError::Config(_))));
    assert_eq!(a.handle.status().await.expect("status")[0].state, "MASTER");

    a.handle.shutdown().await;
    b.handle.shutdown().await;
}

/// (f) `shutdown().await`: the master sends priority 0 (the peer takes over after Skew_Time,
/// 0.61 s at a 1 s interval, not Master_Down_Interval, 3.61 s), its VIP is gone when the call
/// returns, the events end, and no task of the engine is left on its runtime.
#[tokio::test]
async fn embedded_shutdown_is_graceful_and_ends_every_task() {
    let lab = lab();
    let mut b = embed(&lab, "b", conf(100, "1", "10.77.0.50"), VipControl::Managed);
    let mut a = embed(&lab, "a", conf(150, "1", "10.77.0.50"), VipControl::Managed);
    transition(&mut a.events, State::Backup, State::Master, Duration::from_secs(8)).await;
    assert!(has(&lab, "a", VIP));
    wait_state(&b.handle, "BACKUP", Duration::from_secs(5)).await;
    drain(&mut b.events);
    // b has heard a (it knows the master) before a stops.
    let a_addr = Some(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)));
    tokio::time::timeout(Duration::from_secs(3), async {
        while b.handle.status().await.expect("status")[0].master != a_addr {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("b hears a");

    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), a.handle.shutdown()).await.expect("shutdown returns");
    assert!(!has(&lab, "a", VIP), "VIP still on a when shutdown() returned");
    let c = transition(&mut a.events, State::Master, State::Initialize, Duration::from_secs(1)).await;
    assert_eq!(c.reason, Reason::Shutdown);
    match tokio::time::timeout(Duration::from_secs(1), a.events.recv()).await {
        Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => {}
        other => panic!("events not closed after shutdown: {other:?}"),
    }
    let (before, after) = a.alive_tasks();
    assert_eq!(after, before, "engine tasks left on the runtime after shutdown() returned");
    assert!(matches!(a.handle.status().await, Err(EngineError::Stopped)));
    assert!(a.handle.is_stopped());
    a.handle.shutdown().await; // idempotent

    let c = transition(&mut b.events, State::Backup, State::Master, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert_eq!(c.reason, Reason::MasterStopped);
    assert!(took < Duration::from_millis(1800), "takeover {took:?} after shutdown: no priority-0 advert?");
    wait_has(&lab, "b", VIP, Duration::from_secs(2));
    b.handle.shutdown().await;
    let (before, after) = b.alive_tasks();
    assert_eq!(after, before);
}

/// The VIP gate: a gated master holds no VIP; `allow_vips(true)` adds it within milliseconds
/// and a peer sees the gratuitous ARP; `allow_vips(false)` removes it and the instance stays
/// master (b stays backup).
#[tokio::test]
async fn gated_vips_follow_allow_vips() {
    let lab = lab();
    let mut b = embed(&lab, "b", conf(100, "0.1", "10.77.0.50"), VipControl::Managed);
    let mut a = embed(&lab, "a", conf(150, "0.1", "10.77.0.50"), VipControl::Gated);
    let t = Duration::from_secs(5);
    let c = transition(&mut a.events, State::Backup, State::Master, t).await;
    assert!(!c.vips_held, "{c:?}");
    let st = a.handle.status().await.expect("status");
    assert_eq!(st[0].state, "MASTER");
    assert!(!st[0].vips_held && !st[0].vips_allowed);
    assert!(!has(&lab, "a", VIP), "a gated master added its VIP");
    wait_state(&b.handle, "BACKUP", t).await;
    wait::until(t, "VIP off b", || !has(&lab, "b", VIP)).expect("b without the VIP");
    drain(&mut b.events);

    // Listen for ARP on c before the gate opens.
    let mac_out = lab.run("a", &["cat", &format!("/sys/class/net/{LAN}/address")]).expect("mac");
    let a_mac: Vec<u8> = String::from_utf8_lossy(&mac_out.stdout)
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).expect("mac hex"))
        .collect();
    let mut rx = lab
        .enter("c", || {
            let ni = pnet_datalink::interfaces().into_iter().find(|i| i.name == LAN).expect("lan0 in c");
            let cfg = pnet_datalink::Config { read_timeout: Some(Duration::from_millis(100)), ..Default::default() };
            match pnet_datalink::channel(&ni, cfg).expect("AF_PACKET") {
                pnet_datalink::Channel::Ethernet(_, rx) => rx,
                _ => panic!("channel type"),
            }
        })
        .expect("enter c");
    let sniffer = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let Ok(f) = rx.next() else { continue };
            // Ethernet ARP (0x0806), sender protocol address = the VIP.
            if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[28..32] == VIP.octets() {
                return Some((Instant::now(), f[22..28].to_vec()));
            }
        }
        None
    });

    let t0 = Instant::now();
    a.handle.allow_vips("VI_1", true).await.expect("allow");
    let took = t0.elapsed();
    assert!(has(&lab, "a", VIP), "VIP not on a when allow_vips(true) returned");
    assert!(took < Duration::from_millis(500), "allow_vips took {took:?}");
    assert!(vips_changed(&mut a.events, t).await);
    let (seen, sender) = sniffer.join().expect("sniffer").expect("no gratuitous ARP for the VIP seen on c");
    assert_eq!(sender, a_mac, "GARP not from a");
    assert!(seen.duration_since(t0) < Duration::from_secs(1), "GARP {:?} after allow_vips", seen.duration_since(t0));
    let st = a.handle.status().await.expect("status");
    assert!(st[0].vips_held && st[0].vips_allowed);

    a.handle.allow_vips("VI_1", false).await.expect("disallow");
    assert!(!has(&lab, "a", VIP), "VIP still on a when allow_vips(false) returned");
    assert!(!vips_changed(&mut a.events, t).await);
    let st = a.handle.status().await.expect("status");
    assert_eq!(st[0].state, "MASTER", "the gate alone does not give mastership up");
    assert!(!st[0].vips_held);
    assert_eq!(b.handle.status().await.expect("status")[0].state, "BACKUP");
    assert!(!has(&lab, "b", VIP));
    // Stepping down is the embedder's other call: b takes over and adds the VIP (not gated).
    a.handle.lower_priority("VI_1", 100, "maintenance").await.expect("lower");
    transition(&mut b.events, State::Backup, State::Master, t).await;
    wait_has(&lab, "b", VIP, t);
    a.handle.shutdown().await;
    b.handle.shutdown().await;
}
