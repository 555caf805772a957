//! Deterministic simulation of VRRP routers on a simulated LAN (testkit `SimNet`): seeded loss,
//! delay, reordering, duplication, partitions (also one-directional), crashes and restarts,
//! graceful stops and priority changes; then a stable phase.
//!
//! Invariants:
//! - at every step, a router holds its VIPs if and only if it is Master;
//! - once the network is stable (no loss, no more faults), within Master_Down_Interval (the
//!   largest any live router uses) plus two one-way delays, there is exactly one master among the
//!   live routers, and it stays so;
//! - with preemption on everywhere, that master has the highest effective priority (ties: any of
//!   the tied routers; when two of them are master at once, the higher address wins).
//!
//! Replay one seed: `SIM_SEED=N cargo test -p vrrp --test sim`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use rand::Rng;
use rempart_testkit::sim::{run_seeds, NetConfig, SimClock, SimNet};
use vrrp::proto::{master_down_interval, Action, Config, Instance, State};
use vrrp::wire::{Auth, Repr, Version};

#[derive(Clone, Debug)]
struct Msg {
    src: IpAddr,
    repr: Repr,
}

struct Node {
    cfg: Config,
    inst: Option<Instance>,
    holds_vips: bool,
}

struct World {
    clock: SimClock,
    net: SimNet<Msg>,
    nodes: Vec<Node>,
    vrid: u8,
}

impl World {
    fn drain(&mut self, i: usize) {
        let now = self.clock.now();
        let Some(inst) = self.nodes[i].inst.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        let mut vips = None;
        while let Some(a) = inst.poll_action() {
            match a {
                Action::SendAdvert { priority } => out.push(Repr {
                    version: inst.config().version,
                    vrid: self.vrid,
                    priority,
                    interval: inst.config().wire_interval(),
                    auth: inst.config().auth,
                    addrs: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100))],
                }),
                Action::AddVips => vips = Some(true),
                Action::RemoveVips => vips = Some(false),
                _ => {}
            }
        }
        if let Some(v) = vips {
            self.nodes[i].holds_vips = v;
        }
        let src = self.nodes[i].cfg.primary;
        for repr in out {
            self.net.broadcast(now, i, Msg { src, repr });
        }
    }

    fn check_vips(&self, seed: u64) {
        for (i, n) in self.nodes.iter().enumerate() {
            let master = n.inst.as_ref().is_some_and(|x| x.state() == State::Master);
            assert_eq!(n.holds_vips, master, "seed {seed}: node {i} holds_vips={} but master={master}", n.holds_vips);
        }
    }

    /// Runs every due timer and delivery up to `until`, calling `each` after every step.
    fn run_until(&mut self, until: Instant, seed: u64) {
        loop {
            let next_timer = self.nodes.iter().filter_map(|n| n.inst.as_ref().and_then(Instance::poll_timeout)).min();
            let next = [next_timer, self.net.next_delivery()].into_iter().flatten().min();
            let Some(next) = next.filter(|t| *t <= until) else {
                self.clock.advance_to(until.max(self.clock.now()));
                return;
            };
            self.clock.advance_to(next.max(self.clock.now()));
            let now = self.clock.now();
            for d in self.net.deliver(now) {
                if let Some(inst) = self.nodes[d.to].inst.as_mut() {
                    let _ = inst.handle_packet(now, d.msg.src, 255, &d.msg.repr);
                    self.drain(d.to);
                }
            }
            for i in 0..self.nodes.len() {
                if let Some(inst) = self.nodes[i].inst.as_mut() {
                    if inst.poll_timeout().is_some_and(|t| t <= now) {
                        inst.handle_timeout(now);
                        self.drain(i);
                    }
                }
            }
            self.check_vips(seed);
        }
    }

    fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].inst.as_ref().is_some_and(|x| x.state() == State::Master))
            .collect()
    }
}

fn one_seed(seed: u64) {
    let mut net: SimNet<Msg> = SimNet::new(seed, 1, NetConfig::default());
    let rng = net.rng();
    let n = rng.gen_range(2..=4usize);
    let version = if rng.gen_bool(0.3) { Version::V2 } else { Version::V3 };
    let adver_int = match version {
        Version::V2 => Duration::from_secs(rng.gen_range(1..=2)),
        _ => Duration::from_millis([10, 100, 1000][rng.gen_range(0..3)]),
    };
    let all_preempt = rng.gen_bool(0.8);
    let owner = rng.gen_bool(0.2).then(|| rng.gen_range(0..n));
    let auth = if version == Version::V2 { Auth::pass("pw") } else { Auth::None };
    // Some seeds run keepalived's preempt_delay (from startup, after Fault, and from the first
    // advert of a lower-priority master).
    let preempt_delay = if rng.gen_bool(0.3) { adver_int * rng.gen_range(1..=5u32) } else { Duration::ZERO };
    let mut cfgs = Vec::new();
    for i in 0..n {
        let priority = if owner == Some(i) { 255 } else { rng.gen_range(1..=254u8) };
        cfgs.push(Config {
            vrid: 7,
            version,
            priority,
            adver_int,
            preempt: all_preempt || rng.gen_bool(0.5),
            preempt_delay,
            primary: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1 + i as u8)),
            auth,
        });
    }
    let mut net = SimNet::new(seed, n, NetConfig::default());
    let max_delay = adver_int / 4;
    let loss = 0.3 * net.rng().gen::<f64>();
    net.set_config(NetConfig { loss, duplicate: 0.05, min_delay: Duration::ZERO, max_delay });
    let clock = SimClock::new();
    let mut w = World {
        clock,
        net,
        nodes: cfgs.into_iter().map(|cfg| Node { cfg, inst: None, holds_vips: false }).collect(),
        vrid: 7,
    };
    let t0 = w.clock.now();
    for i in 0..n {
        let mut inst = Instance::new(w.nodes[i].cfg.clone());
        inst.start(t0);
        w.nodes[i].inst = Some(inst);
        w.drain(i);
    }
    // Chaos phase: one fault event every 0..3 intervals, for 20 intervals.
    let chaos_end = t0 + adver_int * 20;
    while w.clock.now() < chaos_end {
        let step = adver_int.mul_f64(w.net.rng().gen_range(0.0..3.0));
        let at = w.clock.now() + step;
        w.run_until(at, seed);
        let now = w.clock.now();
        let node = w.net.rng().gen_range(0..n);
        match w.net.rng().gen_range(0..8) {
            0 => {
                // Host crash: its VIPs vanish with it.
                w.nodes[node].inst = None;
                w.nodes[node].holds_vips = false;
                w.net.drop_in_flight(node);
            }
            1 => {
                if w.nodes[node].inst.is_none() {
                    let mut inst = Instance::new(w.nodes[node].cfg.clone());
                    inst.start(now);
                    w.nodes[node].inst = Some(inst);
                    w.drain(node);
                }
            }
            2 => {
                // Graceful stop (SIGTERM): priority 0, VIPs removed, then down.
                if let Some(inst) = w.nodes[node].inst.as_mut() {
                    inst.shutdown(now);
                    w.drain(node);
                    w.nodes[node].inst = None;
                }
            }
            3 => w.net.isolate(node),
            4 => {
                let other = w.net.rng().gen_range(0..n);
                if other != node {
                    w.net.cut(node, other); // one direction only
                }
            }
            5 => {
                let split = w.net.rng().gen_range(1..n);
                let a: Vec<usize> = (0..split).collect();
                let b: Vec<usize> = (split..n).collect();
                w.net.partition(&[&a, &b]);
            }
            6 => w.net.heal_all(),
            _ => {
                let off = w.net.rng().gen_range(-60..=60);
                if let Some(inst) = w.nodes[node].inst.as_mut() {
                    inst.set_priority_offset(now, off);
                    w.drain(node);
                }
            }
        }
        w.check_vips(seed);
    }
    // Stable phase: heal everything, restart at least one router if all are down.
    w.net.heal_all();
    w.net.set_config(NetConfig { loss: 0.0, duplicate: 0.0, min_delay: Duration::ZERO, max_delay });
    let now = w.clock.now();
    if w.nodes.iter().all(|x| x.inst.is_none()) {
        let mut inst = Instance::new(w.nodes[0].cfg.clone());
        inst.start(now);
        w.nodes[0].inst = Some(inst);
        w.drain(0);
    }
    // Messages sent during the chaos phase may still be in flight; they arrive within max_delay.
    let stable = now + max_delay;
    let mdi = w
        .nodes
        .iter()
        .filter_map(|x| x.inst.as_ref())
        .map(|i| master_down_interval(i.effective_priority(), i.master_adver_int()))
        .max()
        .unwrap_or_default();
    let deadline = stable + mdi + max_delay * 2;
    w.run_until(deadline, seed);
    if !preempt_delay.is_zero() {
        // The best router preempts only after its delay (which may start as late as the first
        // advert of the lower master) plus Master_Down_Interval; that late preemption briefly
        // shows two masters (until the old one hears the new one), so check after it.
        let later = w.clock.now() + (preempt_delay + mdi + max_delay * 2) * 2;
        w.run_until(later, seed);
    }
    for k in 0..10 {
        let m = w.masters();
        assert_eq!(m.len(), 1, "seed {seed}: {} masters {m:?} at stable+MDI (+{k} intervals)", m.len());
        if all_preempt {
            let best =
                w.nodes.iter().filter_map(|x| x.inst.as_ref()).map(Instance::effective_priority).max().unwrap_or(0);
            let mp = w.nodes[m[0]].inst.as_ref().map(Instance::effective_priority);
            assert_eq!(mp, Some(best), "seed {seed}: master {} is not the highest", m[0]);
        }
        let next = w.clock.now() + adver_int;
        w.run_until(next, seed);
    }
}

#[test]
fn election_simulation_10k_seeds() {
    let started = std::time::Instant::now();
    run_seeds("election_simulation_10k_seeds", 0..10_000u64, one_seed);
    eprintln!("10000 seeds in {:?}", started.elapsed());
}
