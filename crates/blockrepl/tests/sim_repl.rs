//! Seeded simulation of two replicas: live-versus-durable disks, a TCP-like link that breaks and
//! heals, crashes of either node at any point, failover, and a convergence phase.
//!
//! Invariants checked after every event:
//! - everything a client may depend on under protocol C (FUA writes that completed, writes that
//!   completed before a flush that completed) is in the durable image of both disks;
//! - two connected nodes are never both Primary;
//! - after healing, both replicas end byte-identical.
//!
//! Replay a failure with `SIM_SEED=N cargo test -p blockrepl --test sim_repl`.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use blockrepl::meta::{Meta, BLOCK};
use blockrepl::proto::{Action, Config, DiskOp, DiskState, ReplState, Replica, Role};
use blockrepl::wire::Msg;
use rand::Rng;
use rempart_testkit::sim::{run_seeds, ChaCha8Rng, CrashDisk, NetConfig, SimClock, SimNet};

const SIZE: usize = 1 << 20;
const BLOCKS: u64 = SIZE as u64 / BLOCK;

#[derive(Debug)]
enum Ev {
    Disk { node: usize, io: u64, op: DiskOp, incarnation: u64 },
    Meta { node: usize, io: u64, meta: Box<Meta>, flush: bool, incarnation: u64 },
}

struct Node {
    rep: Option<Replica>,
    disk: CrashDisk,
    meta: Meta,
    incarnation: u64,
    down_until: Option<Instant>,
}

/// A completed write: (node that acknowledged it, (id, first block, blocks, link epoch if
/// replicated)).
type Done = (usize, (u64, u64, u64, Option<u64>));

#[derive(Debug, Clone)]
enum Req {
    Write { id: u64, first: u64, n: u64, fua: bool, replicated_epoch: Option<u64> },
    Flush { covers: Vec<Done>, epoch: u64 },
}

struct World {
    clock: SimClock,
    net: SimNet<Msg>,
    nodes: Vec<Node>,
    events: BTreeMap<(Instant, u64), Ev>,
    evseq: u64,
    link_up: bool,
    link_cut: bool,
    link_epoch: u64,
    reconnect_at: Option<Instant>,
    reqs: HashMap<u64, (usize, Req)>,
    next_req: u64,
    next_write_id: u64,
    /// Completed writes: (id, first block, blocks, replicated while the link stayed up).
    completed: Vec<Done>,
    /// Per block: highest write id that must be durable locally on whichever node holds it.
    must_primary: Vec<u64>,
    /// Per block: highest replicated write id that must be durable on both nodes.
    must_both: Vec<u64>,
    key: [u8; 32],
    seed: u64,
    /// Protocol A or B: an acknowledgement promises nothing about the peer's disk.
    weak: bool,
}

fn cfg(key: [u8; 32], node: usize, seed: u64) -> Config {
    let mut c = Config::new(key, node == 0, seed.wrapping_mul(31).wrapping_add(node as u64));
    c.resync_rate = 64 << 20;
    c
}

fn block_id(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl World {
    fn with(seed: u64, tweak: impl Fn(usize, &mut Config)) -> Self {
        let d = Duration::from_micros(300);
        let key = blockrepl::proto::auth_key(b"sim secret");
        let mut nodes = Vec::new();
        for i in 0..2 {
            let meta = Meta::fresh(SIZE as u64);
            let mut c = cfg(key, i, seed);
            tweak(i, &mut c);
            nodes.push(Node {
                rep: Some(Replica::new(c, meta, i == 0)),
                disk: CrashDisk::new(SIZE),
                meta: Meta::fresh(SIZE as u64),
                incarnation: 0,
                down_until: None,
            });
        }
        Self {
            clock: SimClock::new(),
            net: SimNet::new(seed, 2, NetConfig::lossy(0.0, d, d)),
            nodes,
            events: BTreeMap::new(),
            evseq: 0,
            link_up: false,
            link_cut: false,
            link_epoch: 0,
            reconnect_at: None,
            reqs: HashMap::new(),
            next_req: 1,
            next_write_id: 1,
            completed: Vec::new(),
            must_primary: vec![0; BLOCKS as usize],
            must_both: vec![0; BLOCKS as usize],
            key,
            seed,
            weak: false,
        }
    }

    fn rng(&mut self) -> &mut ChaCha8Rng {
        self.net.rng()
    }

    fn rep(&mut self, i: usize) -> Option<&mut Replica> {
        self.nodes[i].rep.as_mut()
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.evseq += 1;
        self.events.insert((at, self.evseq), ev);
    }

    fn pump(&mut self) {
        loop {
            let mut any = false;
            for i in 0..2 {
                while let Some(a) = self.nodes[i].rep.as_mut().and_then(|r| r.poll_action()) {
                    any = true;
                    self.act(i, a);
                }
            }
            if !any {
                break;
            }
        }
    }

    fn act(&mut self, i: usize, a: Action) {
        let now = self.clock.now();
        let inc = self.nodes[i].incarnation;
        match a {
            Action::Disk { io, op } => {
                if let DiskOp::Write { off, data, .. } = &op {
                    self.nodes[i].disk.write(*off, data).unwrap();
                }
                if let DiskOp::Zero { off, len, .. } = &op {
                    self.nodes[i].disk.write(*off, &vec![0; *len as usize]).unwrap();
                }
                let d = Duration::from_micros(self.rng().gen_range(20..800));
                self.schedule(now + d, Ev::Disk { node: i, io, op, incarnation: inc });
            }
            Action::PersistMeta { io, meta, flush_data_first } => {
                let d = Duration::from_micros(self.rng().gen_range(50..500));
                self.schedule(now + d, Ev::Meta { node: i, io, meta, flush: flush_data_first, incarnation: inc });
            }
            Action::Send(m) if self.link_up => self.net.send(now, i, 1 - i, m),
            Action::Send(_) => {}
            Action::Complete { req, result } => self.complete(req, result.is_ok()),
            Action::CloseConnection => self.link_down(),
            _ => {}
        }
    }

    fn trace(&self, what: &str) {
        if std::env::var_os("SIM_TRACE").is_some() {
            let st: Vec<String> = self
                .nodes
                .iter()
                .map(|n| match &n.rep {
                    Some(r) => {
                        let s = r.status();
                        format!(
                            "{}/{}/{}/{} oos={} gen={:x?}",
                            s.role, s.disk, s.connection, s.replication, s.out_of_sync_bytes, s.gen
                        )
                    }
                    None => "down".into(),
                })
                .collect();
            eprintln!("[{:?}] {what} :: {st:?}", self.clock.now());
        }
    }

    fn link_down(&mut self) {
        self.trace("link down");
        if !self.link_up {
            return;
        }
        self.link_up = false;
        self.link_epoch += 1;
        self.net.drop_in_flight(0);
        self.net.drop_in_flight(1);
        let now = self.clock.now();
        for i in 0..2 {
            if let Some(r) = self.rep(i) {
                r.handle_disconnected(now);
            }
        }
        self.reconnect_at = Some(now + Duration::from_millis(50));
    }

    fn complete(&mut self, req: u64, ok: bool) {
        let Some((node, r)) = self.reqs.remove(&req) else { return };
        if !ok {
            return;
        }
        match r {
            Req::Write { id, first, n, fua, replicated_epoch } => {
                self.trace(&format!("ack write {id} blocks {first}+{n} fua={fua} repl={replicated_epoch:?}"));
                let replicated = replicated_epoch == Some(self.link_epoch);
                self.completed.push((node, (id, first, n, replicated.then_some(self.link_epoch))));
                if fua {
                    self.depend(id, first, n, replicated);
                }
            }
            Req::Flush { covers, epoch } => {
                self.trace(&format!("ack flush covering {}", covers.len()));
                for (_, (id, first, n, wepoch)) in covers {
                    // On the peer only if written and flushed over one unbroken connection.
                    let replicated = wepoch == Some(epoch) && epoch == self.link_epoch;
                    self.depend(id, first, n, replicated);
                }
            }
        }
    }

    fn depend(&mut self, id: u64, first: u64, n: u64, replicated: bool) {
        for b in first..first + n {
            let b = b as usize;
            self.must_primary[b] = self.must_primary[b].max(id);
            if replicated && !self.weak {
                self.must_both[b] = self.must_both[b].max(id);
            }
        }
    }

    fn primary(&self) -> Option<usize> {
        (0..2).find(|i| self.nodes[*i].rep.as_ref().is_some_and(|r| r.status().role == Role::Primary))
    }

    fn check(&self) {
        let both_primary = (0..2).all(|i| self.nodes[i].rep.as_ref().is_some_and(|r| r.status().role == Role::Primary));
        assert!(!(both_primary && self.link_up), "two connected Primaries");
        for (i, n) in self.nodes.iter().enumerate() {
            let dur = n.disk.durable();
            for b in 0..BLOCKS as usize {
                let have = block_id(&dur[b * BLOCK as usize..]);
                assert!(
                    have >= self.must_both[b],
                    "node {i} block {b}: durable write id {have} < acknowledged replicated id {}",
                    self.must_both[b]
                );
            }
        }
        // What depends only on the node that acknowledged it: at least one node holds it durably.
        for b in 0..BLOCKS as usize {
            let best = (0..2).map(|i| block_id(&self.nodes[i].disk.durable()[b * BLOCK as usize..])).max().unwrap_or(0);
            assert!(
                best >= self.must_primary[b],
                "block {b}: acknowledged write {} lost on both nodes",
                self.must_primary[b]
            );
        }
    }

    fn client_write(&mut self, p: usize) {
        let n = self.rng().gen_range(1..=4u64);
        let first = self.rng().gen_range(0..BLOCKS - n);
        let fua = self.rng().gen_bool(0.2);
        let id = self.next_write_id;
        self.next_write_id += 1;
        let mut data = Vec::with_capacity((n * BLOCK) as usize);
        for _ in 0..n {
            for _ in 0..BLOCK / 8 {
                data.extend_from_slice(&id.to_le_bytes());
            }
        }
        let req = self.next_req;
        self.next_req += 1;
        let replicated = self.link_up
            && self.nodes[p].rep.as_ref().is_some_and(|r| r.status().replication == ReplState::Established);
        self.reqs.insert(
            req,
            (p, Req::Write { id, first, n, fua, replicated_epoch: replicated.then_some(self.link_epoch) }),
        );
        let now = self.clock.now();
        if let Some(r) = self.rep(p) {
            r.handle_write(now, req, first * BLOCK, (n * BLOCK) as u32, Some(data), fua);
        }
    }

    fn client_flush(&mut self, p: usize) {
        let req = self.next_req;
        self.next_req += 1;
        let covers: Vec<_> = self.completed.iter().filter(|(n, _)| *n == p).cloned().collect();
        self.reqs.insert(req, (p, Req::Flush { covers, epoch: self.link_epoch }));
        let now = self.clock.now();
        if let Some(r) = self.rep(p) {
            r.handle_flush(now, req);
        }
    }

    fn crash(&mut self, i: usize, down_for: Duration) {
        self.trace(&format!("crash {i}"));
        let img = {
            let n = &self.nodes[i];
            let mut rng = self.net.rng().clone();
            let img = n.disk.crash_image(&mut rng);
            let _: u64 = self.net.rng().gen();
            img
        };
        let n = &mut self.nodes[i];
        n.disk.restart_from(img);
        n.rep = None;
        n.incarnation += 1;
        n.down_until = Some(self.clock.now() + down_for);
        // Completed but unflushed writes of the crashed node may be lost: a later flush elsewhere
        // does not cover them.
        self.completed.retain(|(node, _)| *node != i);
        // Requests in flight on the crashed node are never acknowledged.
        self.reqs.retain(|_, (node, _)| *node != i);
        self.link_down();
    }

    fn restart(&mut self, i: usize) {
        let meta = self.nodes[i].meta.clone();
        let inc = self.nodes[i].incarnation;
        let mut rep = Replica::new(cfg(self.key, i, self.seed ^ inc), meta, i == 0);
        rep.connect(false).unwrap();
        self.nodes[i].rep = Some(rep);
        self.nodes[i].down_until = None;
        self.reconnect_at = Some(self.clock.now() + Duration::from_millis(20));
    }

    fn next_time(&self) -> Option<Instant> {
        let mut t = self.events.keys().next().map(|k| k.0);
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Instant| t.min(x)));
            }
        };
        min(self.net.next_delivery());
        for n in &self.nodes {
            min(n.rep.as_ref().and_then(|r| r.poll_timeout()));
            min(n.down_until);
        }
        min(self.reconnect_at);
        t
    }

    /// Advances to the next event (at most `max`) and handles everything due.
    fn step(&mut self, max: Duration) {
        self.pump();
        let limit = self.clock.now() + max;
        let t = self.next_time().map_or(limit, |t| t.min(limit));
        self.clock.advance_to(t);
        let now = self.clock.now();
        while let Some((&k, _)) = self.events.iter().next() {
            if k.0 > now {
                break;
            }
            let Some(ev) = self.events.remove(&k) else { break };
            match ev {
                Ev::Disk { node, io, op, incarnation } => {
                    if incarnation != self.nodes[node].incarnation {
                        continue;
                    }
                    let n = &mut self.nodes[node];
                    let res = match op {
                        DiskOp::Read { off, len } => {
                            let mut b = vec![0; len as usize];
                            n.disk.read(off, &mut b).unwrap();
                            Some(b)
                        }
                        DiskOp::Flush | DiskOp::Write { fua: true, .. } | DiskOp::Zero { fua: true, .. } => {
                            n.disk.sync();
                            None
                        }
                        _ => None,
                    };
                    if let Some(r) = n.rep.as_mut() {
                        r.handle_disk_done(now, io, Ok(res));
                    }
                }
                Ev::Meta { node, io, meta, flush, incarnation } => {
                    if incarnation != self.nodes[node].incarnation {
                        continue;
                    }
                    let n = &mut self.nodes[node];
                    if flush {
                        n.disk.sync();
                    }
                    n.meta = *meta;
                    if let Some(r) = n.rep.as_mut() {
                        r.handle_disk_done(now, io, Ok(None));
                    }
                }
            }
            self.pump();
        }
        for d in self.net.deliver(now) {
            if let Some(r) = self.nodes[d.to].rep.as_mut() {
                r.handle_frame(now, d.msg);
            }
            self.pump();
        }
        for i in 0..2 {
            if self.nodes[i].down_until.is_some_and(|t| t <= now) {
                self.restart(i);
            }
            if let Some(r) = self.nodes[i].rep.as_mut() {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
            }
        }
        self.pump();
        if self.reconnect_at.is_some_and(|t| t <= now) {
            self.reconnect_at = None;
            let ready = !self.link_up
                && !self.link_cut
                && self.nodes.iter().all(|n| n.rep.as_ref().is_some_and(|r| r.wants_connection()));
            if ready {
                self.trace("link up");
                self.link_up = true;
                for i in 0..2 {
                    if let Some(r) = self.rep(i) {
                        r.handle_connected(now);
                    }
                }
            } else if !self.link_up {
                self.reconnect_at = Some(now + Duration::from_millis(50));
            }
        }
        self.pump();
        self.check();
    }

    fn synced(&self) -> bool {
        self.link_up
            && self.nodes.iter().all(|n| {
                n.rep.as_ref().is_some_and(|r| {
                    let s = r.status();
                    s.replication == ReplState::Established && s.disk == DiskState::UpToDate && s.out_of_sync_bytes == 0
                })
            })
    }

    fn run_until(&mut self, limit: Duration, what: &str, f: impl Fn(&World) -> bool) {
        let end = self.clock.now() + limit;
        while !f(self) {
            assert!(self.clock.now() < end, "timed out waiting for {what}");
            self.step(Duration::from_millis(5));
        }
    }
}

fn scenario(seed: u64) {
    scenario_with(seed, false);
}

fn scenario_with(seed: u64, checksum_resync: bool) {
    let mut w = World::with(seed, |_, c| c.checksum_resync = checksum_resync);
    let now = w.clock.now();
    w.rep(0).unwrap().promote(now, true, 1).unwrap();
    w.rep(0).unwrap().connect(false).unwrap();
    w.rep(1).unwrap().connect(false).unwrap();
    w.reconnect_at = Some(now);
    w.run_until(Duration::from_secs(5), "initial full sync", World::synced);
    // A connected Secondary cannot be promoted while the peer is Primary.
    let now = w.clock.now();
    assert!(w.rep(1).unwrap().promote(now, false, 2).is_err());

    let steps = 2500;
    for _ in 0..steps {
        let p = w.primary();
        let roll: f64 = w.rng().gen();
        if let Some(p) = p {
            let outstanding = w.reqs.values().filter(|(n, _)| *n == p).count();
            if roll < 0.35 && outstanding < 8 {
                w.client_write(p);
            } else if roll < 0.40 {
                w.client_flush(p);
            }
        }
        let fault: f64 = w.rng().gen();
        if fault < 0.002 {
            // Cut the replication link for a while.
            w.link_cut = true;
            w.link_down();
        } else if fault < 0.006 && w.link_cut {
            w.link_cut = false;
            w.reconnect_at = Some(w.clock.now());
        } else if fault < 0.0075 {
            // Crash the Secondary.
            if let Some(p) = p {
                if w.nodes[1 - p].rep.is_some() {
                    w.crash(1 - p, Duration::from_millis(100));
                }
            }
        } else if fault < 0.009 {
            // Crash the Primary; fail over if the other node is UpToDate.
            if let Some(p) = p {
                // Like DRBD without fencing, only a Secondary that was connected and in sync
                // may take over (a disconnected one may be stale).
                let other_ok = w.link_up
                    && w.nodes[1 - p].rep.as_ref().is_some_and(|r| {
                        let s = r.status();
                        s.disk == DiskState::UpToDate && s.replication == ReplState::Established
                    });
                w.crash(p, Duration::from_millis(300));
                if other_ok {
                    let now = w.clock.now();
                    w.rep(1 - p).unwrap().promote(now, false, 10).unwrap();
                }
            }
        }
        w.step(Duration::from_millis(2));
    }
    // Convergence: heal, restart everything, stop the client.
    w.link_cut = false;
    w.reconnect_at = Some(w.clock.now());
    w.run_until(Duration::from_secs(5), "all client requests answered", |w| w.reqs.is_empty());
    if w.primary().is_none() {
        // Both came back Secondary (the Primary crashed when nobody could take over).
        w.run_until(Duration::from_secs(5), "restart", |w| w.nodes.iter().all(|n| n.rep.is_some()));
        let now = w.clock.now();
        let _ = w.rep(0).unwrap().promote(now, false, 20);
    }
    for i in 0..2 {
        let _ = w.rep(i).map(|r| r.connect(false));
    }
    w.reconnect_at = Some(w.clock.now());
    w.run_until(Duration::from_secs(20), "resync convergence", World::synced);
    assert!(w.nodes[0].disk.live() == w.nodes[1].disk.live(), "replicas differ after resync");
    // Flush both: the durable images are identical too.
    let p = w.primary().unwrap_or(0);
    w.client_flush(p);
    w.run_until(Duration::from_secs(5), "final flush", |w| w.reqs.is_empty());
    assert!(w.nodes[0].disk.durable() == w.nodes[1].disk.durable(), "durable images differ");
}

#[test]
fn replication_survives_crashes_and_partitions() {
    run_seeds("replication_survives_crashes_and_partitions", seeds(), scenario);
}

#[test]
fn checksum_resync_survives_crashes_and_partitions() {
    run_seeds("checksum_resync_survives_crashes_and_partitions", 101..=104, |seed| scenario_with(seed, true));
}

/// A fixed list for `cargo test`; `SIM_SEEDS=N` runs seeds 1..=N (for nightly/bench runs).
fn seeds() -> std::ops::RangeInclusive<u64> {
    let n = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(12);
    1..=n
}

/// Brings up a fresh pair with node 0 Primary and fully synced.
fn synced_pair(w: &mut World) {
    let now = w.clock.now();
    w.rep(0).unwrap().promote(now, true, 1).unwrap();
    w.rep(0).unwrap().connect(false).unwrap();
    w.rep(1).unwrap().connect(false).unwrap();
    w.reconnect_at = Some(now);
    w.run_until(Duration::from_secs(5), "initial full sync", World::synced);
}

fn write_blocks(w: &mut World, p: usize, blocks: &[u64]) {
    for b in blocks {
        let id = w.next_write_id;
        w.next_write_id += 1;
        let req = w.next_req;
        w.next_req += 1;
        // Not FUA: a split-brain victim's writes are discarded by design, nothing may depend on them.
        w.reqs.insert(req, (p, Req::Write { id, first: *b, n: 1, fua: false, replicated_epoch: None }));
        let data: Vec<u8> = (0..BLOCK / 8).flat_map(|_| id.to_le_bytes()).collect();
        let now = w.clock.now();
        w.rep(p).unwrap().handle_write(now, req, b * BLOCK, BLOCK as u32, Some(data), false);
    }
    w.run_until(Duration::from_secs(2), "writes acknowledged", |w| w.reqs.is_empty());
}

/// Split brain: both nodes write while apart, then both are demoted and the link heals.
fn split_brain(policy: blockrepl::meta::AfterSb0Pri, n0: &[u64], n1: &[u64], seed: u64) -> World {
    let mut w = World::with(seed, |_, c| c.after_sb_0pri = policy);
    synced_pair(&mut w);
    w.client_flush(0);
    w.run_until(Duration::from_secs(2), "flush", |w| w.reqs.is_empty());
    w.link_cut = true;
    w.link_down();
    let now = w.clock.now();
    w.rep(1).unwrap().promote(now, false, 10).unwrap();
    write_blocks(&mut w, 0, n0);
    write_blocks(&mut w, 1, n1);
    w.rep(0).unwrap().demote().unwrap();
    w.rep(1).unwrap().demote().unwrap();
    w.link_cut = false;
    w.reconnect_at = Some(w.clock.now());
    w
}

#[test]
fn split_brain_with_disconnect_policy_goes_standalone() {
    let mut w = split_brain(blockrepl::meta::AfterSb0Pri::Disconnect, &[1, 2], &[3], 7);
    w.run_until(Duration::from_secs(3), "split brain on both", |w| {
        w.nodes.iter().all(|n| n.rep.as_ref().is_some_and(|r| r.status().split_brains == 1))
    });
    w.run_until(Duration::from_secs(1), "StandAlone", |w| {
        w.nodes
            .iter()
            .all(|n| n.rep.as_ref().is_some_and(|r| r.status().connection == blockrepl::proto::ConnState::StandAlone))
    });
    assert!(w.nodes[0].disk.live() != w.nodes[1].disk.live());
    // Manual recovery: node 1 discards its data, then both connect.
    w.rep(1).unwrap().connect(true).unwrap();
    w.rep(0).unwrap().connect(false).unwrap();
    w.reconnect_at = Some(w.clock.now());
    w.run_until(Duration::from_secs(5), "recovery resync", World::synced);
    assert!(w.nodes[0].disk.live() == w.nodes[1].disk.live());
    // The survivor's writes won: block 1 holds node 0's data.
    assert_ne!(block_id(&w.nodes[1].disk.live()[BLOCK as usize..]), 0);
    assert_eq!(block_id(&w.nodes[1].disk.live()[3 * BLOCK as usize..]), 0, "victim's write survived");
}

fn policy_victim(policy: blockrepl::meta::AfterSb0Pri, n0: &[u64], n1: &[u64]) -> usize {
    let mut w = split_brain(policy, n0, n1, 11);
    w.run_until(Duration::from_secs(5), "automatic recovery", World::synced);
    assert!(w.nodes[0].disk.live() == w.nodes[1].disk.live());
    assert!(w.nodes.iter().all(|n| n.rep.as_ref().is_some_and(|r| r.status().split_brains == 1)));
    // Whose write to its first block survived tells who lost.
    let b0 = n0.first().copied();
    match b0 {
        Some(b) if block_id(&w.nodes[0].disk.live()[(b * BLOCK) as usize..]) != 0 => 1,
        _ => 0,
    }
}

#[test]
fn split_brain_auto_recovery_policies() {
    use blockrepl::meta::AfterSb0Pri::*;
    // Node 0 changed nothing: it is the victim.
    assert_eq!(policy_victim(DiscardZeroChanges, &[], &[5, 6]), 0);
    // Node 0 changed fewer blocks.
    assert_eq!(policy_victim(DiscardLeastChanges, &[1], &[5, 6, 7]), 0);
    assert_eq!(policy_victim(DiscardLeastChanges, &[1, 2, 3], &[5]), 1);
    // Node 1 was promoted last (younger primary).
    assert_eq!(policy_victim(DiscardYoungerPrimary, &[1], &[5]), 1);
    assert_eq!(policy_victim(DiscardOlderPrimary, &[1], &[5]), 0);
}

#[test]
fn wrong_secret_never_connects() {
    let mut w = World::with(3, |i, c| {
        if i == 1 {
            c.auth_key = blockrepl::proto::auth_key(b"another secret");
        }
    });
    let now = w.clock.now();
    w.rep(0).unwrap().promote(now, true, 1).unwrap();
    for i in 0..2 {
        w.rep(i).unwrap().connect(false).unwrap();
    }
    w.reconnect_at = Some(now);
    let end = w.clock.now() + Duration::from_secs(2);
    while w.clock.now() < end {
        w.step(Duration::from_millis(5));
        for n in &w.nodes {
            let s = n.rep.as_ref().unwrap().status();
            assert_ne!(s.connection, blockrepl::proto::ConnState::Connected);
            assert_eq!(s.resync_bytes, 0);
        }
    }
    assert!(w.nodes.iter().any(|n| n.rep.as_ref().unwrap().status().auth_failures > 0));
}

#[test]
fn protocols_a_and_b_replicate_and_converge() {
    for proto in [blockrepl::proto::Protocol::A, blockrepl::proto::Protocol::B] {
        let mut w = World::with(5, |_, c| c.protocol = proto);
        w.weak = true;
        synced_pair(&mut w);
        for _ in 0..300 {
            if w.reqs.len() < 8 {
                w.client_write(0);
            }
            w.step(Duration::from_millis(1));
        }
        w.client_flush(0);
        w.run_until(Duration::from_secs(5), "drain", |w| w.reqs.is_empty());
        w.run_until(Duration::from_secs(5), "sync", World::synced);
        assert!(w.nodes[0].disk.durable() == w.nodes[1].disk.durable(), "{proto:?}: replicas differ after flush");
    }
}
