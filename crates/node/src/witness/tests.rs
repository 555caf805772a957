//! The lease server and clients together, over a simulated network: delays (FIFO per
//! direction, with spikes longer than the TTL), connection losses, frozen clients and clocks
//! that run at slightly different rates. The invariant, checked at every step: a client that
//! believes it holds the lease is the holder at the witness, and the witness's lease lasts at
//! least as long as the client's belief.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::client::{ClientConfig, Event, LeaseClient};
use super::server::{LeaseServer, ServerConfig};
use super::wire::{RefuseReason, Repr};

const TTL: Duration = Duration::from_secs(3);
const TICK: Duration = Duration::from_millis(5);
const R: &str = "r0";

struct SimNode {
    name: String,
    client: LeaseClient,
    /// Local clock rate relative to the witness's.
    rate: f64,
    up: bool,
    frozen_until: Duration,
    to_server: VecDeque<(Duration, Repr)>,
    to_client: VecDeque<(Duration, Repr)>,
    last_up: Duration,
    last_down: Duration,
    acquired: usize,
    /// The holder named in the last refusal.
    refused_holder: Option<String>,
}

struct Sim {
    t0: Instant,
    now: Duration,
    server: LeaseServer,
    nodes: Vec<SimNode>,
    rng: ChaCha8Rng,
    spike_prob: f64,
    held_ticks: usize,
}

impl Sim {
    fn new(seed: u64, rates: [f64; 2], spike_prob: f64) -> Sim {
        let t0 = Instant::now();
        let nodes = ["main", "backup"]
            .iter()
            .zip(rates)
            .map(|(n, rate)| SimNode {
                name: (*n).into(),
                client: LeaseClient::new(ClientConfig::new(*n, TTL)),
                rate,
                up: false,
                frozen_until: Duration::ZERO,
                to_server: VecDeque::new(),
                to_client: VecDeque::new(),
                last_up: Duration::ZERO,
                last_down: Duration::ZERO,
                acquired: 0,
                refused_holder: None,
            })
            .collect();
        Sim {
            t0,
            now: Duration::ZERO,
            server: LeaseServer::new(t0, ServerConfig { startup_grace: Duration::ZERO, ..ServerConfig::new(TTL) }),
            nodes,
            rng: ChaCha8Rng::seed_from_u64(seed),
            spike_prob,
            held_ticks: 0,
        }
    }

    fn local(&self, i: usize) -> Instant {
        self.t0 + self.now.mul_f64(self.nodes[i].rate)
    }

    fn delay(&mut self) -> Duration {
        if self.rng.gen_bool(self.spike_prob) {
            TTL.mul_f64(self.rng.gen_range(0.0..2.5))
        } else {
            Duration::from_millis(self.rng.gen_range(0..30))
        }
    }

    fn connect(&mut self, i: usize) {
        let l = self.local(i);
        let n = &mut self.nodes[i];
        n.up = true;
        n.client.handle_connected(l);
    }

    fn disconnect(&mut self, i: usize) {
        let l = self.local(i);
        let n = &mut self.nodes[i];
        n.up = false;
        n.to_server.clear();
        n.to_client.clear();
        n.client.handle_disconnected(l);
    }

    fn want(&mut self, i: usize, w: bool) {
        let l = self.local(i);
        self.nodes[i].client.want(l, R, w);
    }

    /// One tick: random faults (when `chaos`), delivery, timers, transmission, invariant.
    fn step(&mut self, chaos: bool) {
        self.now += TICK;
        let t = self.t0 + self.now;
        for i in 0..self.nodes.len() {
            if !chaos || self.nodes[i].frozen_until > self.now {
                continue;
            }
            if self.rng.gen_bool(0.002) {
                let w = !self.rng.gen_bool(0.3);
                self.want(i, w);
            }
            if self.nodes[i].up && self.rng.gen_bool(0.001) {
                self.disconnect(i);
            } else if !self.nodes[i].up && self.rng.gen_bool(0.01) {
                self.connect(i);
            }
            if self.rng.gen_bool(0.0005) {
                let d = TTL.mul_f64(self.rng.gen_range(0.1..2.0));
                self.nodes[i].frozen_until = self.now + d;
            }
        }
        // The witness answers what reached it.
        for i in 0..self.nodes.len() {
            while self.nodes[i].to_server.front().is_some_and(|(at, _)| *at <= self.now) {
                let Some((_, req)) = self.nodes[i].to_server.pop_front() else { break };
                if let Some((_, reply)) = self.server.answer(t, &req) {
                    let at = (self.now + self.delay()).max(self.nodes[i].last_down);
                    self.nodes[i].last_down = at;
                    self.nodes[i].to_client.push_back((at, reply));
                }
            }
        }
        // Clients that are not frozen take their replies, run their timers and send.
        for i in 0..self.nodes.len() {
            if self.nodes[i].frozen_until > self.now {
                continue;
            }
            let l = self.local(i);
            while self.nodes[i].to_client.front().is_some_and(|(at, _)| *at <= self.now) {
                let Some((_, reply)) = self.nodes[i].to_client.pop_front() else { break };
                self.nodes[i].client.handle_reply(l, &reply);
            }
            if self.nodes[i].client.poll_timeout().is_some_and(|d| d <= l) {
                self.nodes[i].client.handle_timeout(l);
            }
            while let Some(m) = self.nodes[i].client.poll_transmit() {
                let at = (self.now + self.delay()).max(self.nodes[i].last_up);
                self.nodes[i].last_up = at;
                self.nodes[i].to_server.push_back((at, m));
            }
            while let Some(e) = self.nodes[i].client.poll_event() {
                match e {
                    Event::Acquired { .. } => self.nodes[i].acquired += 1,
                    Event::Refused { holder, .. } => self.nodes[i].refused_holder = holder,
                    Event::Lost { .. } => {}
                }
            }
        }
        self.check();
    }

    /// The safety invariant, at this instant, for every node (frozen or not).
    fn check(&mut self) {
        let t = self.t0 + self.now;
        let mut holders = 0;
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            let Some(until) = n.client.lease_until(self.local(i), R) else { continue };
            holders += 1;
            let lease = self.server.lease(t, R);
            assert!(
                lease.is_some_and(|l| l.holder == n.name),
                "at {:?}: {} believes it holds {R} until {:?} but the witness says {lease:?}",
                self.now,
                n.name,
                until - self.t0
            );
            // The belief ends, in witness time, no later than the witness's lease.
            let until_witness_time = self.t0 + (until - self.t0).div_f64(n.rate);
            let expires = lease.map(|l| l.expires).unwrap_or(t);
            assert!(
                until_witness_time <= expires,
                "{}'s belief ends at {:?}, after the witness's lease ({:?})",
                n.name,
                until_witness_time - self.t0,
                expires - self.t0
            );
        }
        assert!(holders <= 1, "two nodes believe they hold {R} at {:?}", self.now);
        if holders == 1 {
            self.held_ticks += 1;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the delays (including replies delayed longer than the TTL), losses, freezes and
    /// clock-rate differences up to 3 %, no client ever believes it holds a lease that the
    /// witness has given away or let lapse.
    #[test]
    fn no_client_believes_in_a_lease_the_witness_does_not_hold_for_it(
        seed: u64,
        rate_a in 0.97f64..1.03,
        rate_b in 0.97f64..1.03,
        spike_prob in 0.0f64..0.3,
    ) {
        let mut sim = Sim::new(seed, [rate_a, rate_b], spike_prob);
        sim.connect(0);
        sim.connect(1);
        sim.want(0, true);
        sim.want(1, true);
        for _ in 0..(40_000 / 5) {
            sim.step(true);
        }
        prop_assert!(sim.held_ticks > 0, "someone held the lease at some point (the test is not vacuous)");
    }
}

/// Every reply delayed by more than the TTL: the client sends and renews, the witness grants,
/// and the client never once believes it holds the lease.
#[test]
fn replies_delayed_longer_than_the_ttl_never_give_a_lease() {
    // Every message takes 1.1 TTL each way.
    let t0 = Instant::now();
    let mut server = LeaseServer::new(t0, ServerConfig { startup_grace: Duration::ZERO, ..ServerConfig::new(TTL) });
    let mut c = LeaseClient::new(ClientConfig::new("main", TTL));
    c.handle_connected(t0);
    c.want(t0, R, true);
    let one_way = TTL.mul_f64(1.1);
    let mut now = t0;
    for _ in 0..20 {
        let reqs: Vec<Repr> = std::iter::from_fn(|| c.poll_transmit()).collect();
        let replies: Vec<Repr> = reqs.iter().filter_map(|q| server.answer(now + one_way, q).map(|(_, r)| r)).collect();
        assert!(server.lease(now + one_way, R).is_some_and(|l| l.holder == "main"));
        now += one_way * 2;
        for r in &replies {
            c.handle_reply(now, r);
        }
        assert_eq!(c.lease_until(now, R), None, "a grant that took longer than the ttl is worthless");
        c.handle_timeout(now);
    }
}

/// Two nodes race for one resource; the loser learns who holds it. The winner is then cut off
/// (and frozen): the loser gets the lease only after the winner's belief has ended.
#[test]
fn a_race_then_a_takeover_after_the_holder_goes_silent() {
    let mut sim = Sim::new(7, [1.0, 1.0], 0.0);
    sim.connect(0);
    sim.connect(1);
    sim.want(0, true);
    sim.want(1, true);
    for _ in 0..200 {
        sim.step(false);
    }
    let holder = (0..2).find(|&i| sim.nodes[i].client.lease_until(sim.local(i), R).is_some()).expect("one holds");
    let other = 1 - holder;
    assert_eq!(
        sim.nodes[other].refused_holder.as_deref(),
        Some(sim.nodes[holder].name.as_str()),
        "the loser was told the holder"
    );
    assert_eq!(sim.server.lease(sim.t0 + sim.now, R).unwrap().holder, sim.nodes[holder].name);
    // The holder goes silent: its link is cut and it is frozen for 2 TTL.
    sim.disconnect(holder);
    sim.nodes[holder].frozen_until = sim.now + TTL * 2;
    let cut = sim.now;
    let mut took_over = None;
    for _ in 0..2000 {
        sim.step(false);
        if took_over.is_none() && sim.nodes[other].client.lease_until(sim.local(other), R).is_some() {
            took_over = Some(sim.now - cut);
        }
    }
    let took = took_over.expect("the other node got the lease");
    assert!(took <= TTL + TTL / 3 + Duration::from_millis(100), "took over after {took:?}");
    // The frozen node woke at 2 TTL and believes nothing, before it learnt anything new.
    assert_eq!(sim.nodes[holder].client.lease_until(sim.local(holder), R), None);
}

/// The race's loser hears who holds the lease and for how long.
#[test]
fn the_loser_of_a_race_is_told_the_holder() {
    let t0 = Instant::now();
    let mut server = LeaseServer::new(t0, ServerConfig { startup_grace: Duration::ZERO, ..ServerConfig::new(TTL) });
    let mut a = LeaseClient::new(ClientConfig::new("main", TTL));
    let mut b = LeaseClient::new(ClientConfig::new("backup", TTL));
    for c in [&mut a, &mut b] {
        c.handle_connected(t0);
        c.want(t0, R, true);
    }
    let qa = a.poll_transmit().unwrap();
    let qb = b.poll_transmit().unwrap();
    let (_, ra) = server.answer(t0, &qa).unwrap();
    let (_, rb) = server.answer(t0 + Duration::from_millis(1), &qb).unwrap();
    a.handle_reply(t0, &ra);
    b.handle_reply(t0, &rb);
    assert!(a.lease_until(t0, R).is_some());
    assert!(b.lease_until(t0, R).is_none());
    assert_eq!(
        b.poll_event(),
        Some(Event::Refused {
            resource: R.into(),
            reason: RefuseReason::Held,
            holder: Some("main".into()),
            remaining: Duration::from_millis(2999)
        })
    );
}
