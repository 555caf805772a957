//! The quorum gate (issue 15, section 3) in the sans-IO core: with `quorum` on, a Primary
//! whose peer is not connected acknowledges a write or flush only while the witness's lease is
//! valid at the moment of the acknowledgement; otherwise it holds the write (suspend-io) or
//! fails it (io-error); promotion without the peer needs the lease.
//!
//! Targeted tests drive one replica by hand; a seeded simulation of a pair (link cuts, freezes
//! of the Primary longer than the lease, witness outages) checks after every acknowledgement
//! that it had the lease, or the peer's acknowledgement of that very write, or a live
//! connection. Replay a failure with `SIM_SEED=N cargo test -p blockrepl --test sim_quorum`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use blockrepl::meta::Meta;
use blockrepl::proto::{Action, Config, DiskOp, OnNoQuorum, ReplError, Replica, Role};
use blockrepl::wire::{Bytes, Msg};
use rand::{Rng, SeedableRng};
use rempart_testkit::sim::{run_seeds, ChaCha8Rng};

const SIZE: u64 = 1 << 20;
const TTL: Duration = Duration::from_millis(500);

fn cfg(node: usize, mode: OnNoQuorum, seed: u64) -> Config {
    let mut c = Config::new(blockrepl::proto::auth_key(b"quorum"), node == 0, seed * 2 + node as u64);
    c.peer_timeout = Duration::from_millis(300);
    c.ping_interval = Duration::from_millis(60);
    c.quorum = Some(mode);
    c
}

/// One replica, no peer: what it asks of the disk is done at once by the test.
struct Solo {
    rep: Replica,
    now: Instant,
    /// Disk operations and metadata writes not completed yet.
    ios: Vec<u64>,
    completed: Vec<(u64, Result<(), ReplError>)>,
}

impl Solo {
    fn new(mode: OnNoQuorum) -> Self {
        let mut meta = Meta::fresh(SIZE);
        meta.consistent = true;
        Solo {
            rep: Replica::new(cfg(0, mode, 1), meta, true),
            now: Instant::now(),
            ios: Vec::new(),
            completed: Vec::new(),
        }
    }

    fn pump(&mut self) {
        while let Some(a) = self.rep.poll_action() {
            match a {
                Action::Disk { io, .. } | Action::PersistMeta { io, .. } | Action::PersistAl { io, .. } => {
                    self.ios.push(io)
                }
                Action::Complete { req, result } => self.completed.push((req, result)),
                _ => {}
            }
        }
    }

    /// Completes every disk operation in flight (metadata first, as they were issued).
    fn disk_done(&mut self) {
        for _ in 0..8 {
            for io in std::mem::take(&mut self.ios) {
                self.rep.handle_disk_done(self.now, io, Ok(None));
                self.pump();
            }
        }
    }

    fn write(&mut self, req: u64) {
        self.rep.handle_write(self.now, req, req * 4096, 4096, Some(vec![req as u8; 4096]), false);
        self.pump();
    }

    fn lease(&mut self, until: Option<Instant>) {
        self.rep.handle_lease(self.now, until);
        self.pump();
    }

    fn promote(&mut self) -> Result<(), ReplError> {
        let r = self.rep.promote(self.now, false, 0).map(|_| ());
        self.pump();
        self.disk_done();
        r
    }
}

#[test]
fn promotion_without_peer_needs_a_lease() {
    let mut s = Solo::new(OnNoQuorum::SuspendIo);
    assert_eq!(s.promote(), Err(ReplError::NoQuorum));
    assert_eq!(s.rep.status().role, Role::Secondary);
    // An expired lease is no lease.
    s.lease(Some(s.now));
    assert_eq!(s.promote(), Err(ReplError::NoQuorum));
    s.lease(Some(s.now + TTL));
    assert_eq!(s.promote(), Ok(()));
    assert_eq!(s.rep.status().role, Role::Primary);
    let q = s.rep.status().quorum;
    assert!(q.enabled && q.held && q.lease_remaining == Some(TTL), "{q:?}");
}

/// A peer frozen with its kernel still accepting connections: the transport comes up, the
/// handshake never answers. Without a lease the promotion waits for the handshake (it could bring
/// the peer's grant); with a valid lease the node may write alone anyway and promotes at once
/// instead of a peer timeout later.
#[test]
fn a_stalled_handshake_does_not_delay_a_promotion_with_the_lease() {
    let mut s = Solo::new(OnNoQuorum::SuspendIo);
    s.rep.handle_connected(s.now);
    s.pump();
    assert_eq!(s.rep.promote(s.now, false, 0).map(|_| ()), Ok(()), "asked after the handshake: pending");
    s.pump();
    assert_eq!(s.rep.status().role, Role::Secondary, "no lease: waits for the handshake");

    let mut s = Solo::new(OnNoQuorum::SuspendIo);
    s.rep.handle_connected(s.now);
    s.pump();
    s.lease(Some(s.now + TTL));
    assert_eq!(s.promote(), Ok(()));
    assert_eq!(s.rep.status().role, Role::Primary, "the lease lets it promote during the handshake");
}

#[test]
fn without_the_quorum_option_nothing_changes() {
    let mut meta = Meta::fresh(SIZE);
    meta.consistent = true;
    let mut c = cfg(0, OnNoQuorum::IoError, 1);
    c.quorum = None;
    let mut s = Solo { rep: Replica::new(c, meta, true), now: Instant::now(), ios: Vec::new(), completed: Vec::new() };
    assert_eq!(s.promote(), Ok(()));
    s.write(1);
    s.disk_done();
    assert_eq!(s.completed, vec![(1, Ok(()))]);
}

/// A Primary frozen longer than its lease (SIGSTOP, a VM pause) resumes with writes whose disk
/// completions arrive after the lease ended: none is acknowledged; then they are released in
/// order when a new lease arrives.
#[test]
fn a_frozen_primary_acknowledges_nothing_after_its_lease_and_releases_in_order() {
    let mut s = Solo::new(OnNoQuorum::SuspendIo);
    s.lease(Some(s.now + TTL));
    s.promote().unwrap();
    s.write(1);
    s.disk_done();
    assert_eq!(s.completed, vec![(1, Ok(()))], "acknowledged inside the lease");
    // Writes start inside the lease; the process freezes before their completions.
    s.now += Duration::from_millis(100);
    for req in 2..=5 {
        s.write(req);
    }
    s.now += TTL * 3;
    s.disk_done();
    assert_eq!(s.completed.len(), 1, "acknowledged after the lease expired: {:?}", s.completed);
    let q = s.rep.status().quorum;
    assert!(!q.held && q.suspended == 4 && q.lease_remaining.is_none(), "{q:?}");
    // More writes while suspended are held behind the first ones.
    s.write(6);
    s.disk_done();
    assert_eq!(s.completed.len(), 1);
    s.now += Duration::from_millis(10);
    s.lease(Some(s.now + TTL));
    let order: Vec<u64> = s.completed.iter().map(|c| c.0).collect();
    assert_eq!(order, vec![1, 2, 3, 4, 5, 6], "released in order");
    assert!(s.completed.iter().all(|c| c.1.is_ok()));
    assert_eq!(s.rep.status().quorum.suspended, 0);
}

#[test]
fn io_error_fails_writes_and_flushes_without_quorum() {
    let mut s = Solo::new(OnNoQuorum::IoError);
    s.lease(Some(s.now + TTL));
    s.promote().unwrap();
    s.write(1);
    s.now += TTL;
    s.disk_done();
    s.rep.handle_flush(s.now, 2);
    s.pump();
    s.disk_done();
    assert_eq!(s.completed, vec![(1, Err(ReplError::NoQuorum)), (2, Err(ReplError::NoQuorum))]);
    s.lease(Some(s.now + TTL));
    s.write(3);
    s.disk_done();
    assert_eq!(s.completed[2], (3, Ok(())));
}

/// Held writes are failed when the node is demoted (the node demotes before its lease could
/// expire elsewhere; nothing held is ever acknowledged afterwards).
#[test]
fn demotion_fails_held_writes() {
    let mut s = Solo::new(OnNoQuorum::SuspendIo);
    s.lease(Some(s.now + TTL));
    s.promote().unwrap();
    s.write(1);
    s.now += TTL;
    s.disk_done();
    assert!(s.completed.is_empty());
    s.rep.demote().unwrap();
    s.pump();
    s.disk_done();
    assert_eq!(s.completed, vec![(1, Err(ReplError::NoQuorum))]);
    s.lease(Some(s.now + TTL));
    assert_eq!(s.completed.len(), 1);
}

// ------------------------------------------------------------------ seeded pair simulation

#[derive(Debug)]
enum Ev {
    Disk { node: usize, io: u64, op: Option<DiskOp> },
    Frame { to: usize, conn: u64, msg: Msg },
    Fin { to: usize, conn: u64 },
    Connect,
}

struct Pair {
    rng: ChaCha8Rng,
    now: Instant,
    reps: [Replica; 2],
    disks: [Vec<u8>; 2],
    events: BTreeMap<(Instant, u64), Ev>,
    evseq: u64,
    link_up: bool,
    link_down_at: Option<Instant>,
    sock_open: [bool; 2],
    conn: u64,
    connect_scheduled: bool,
    frozen_until: Option<Instant>,
    witness_up: bool,
    /// The lease node 0 was given (what the invariant is checked against).
    lease: Option<Instant>,
    /// Replicated writes: sequence number → request (from the payload), and the requests whose
    /// peer acknowledgement reached node 0.
    seq_req: HashMap<u64, u64>,
    peer_acked: HashSet<u64>,
    next_req: u64,
    ticks: u64,
    /// Per direction (by sender): when its last frame arrives.
    last_arrival: [Instant; 2],
    stats: Stats,
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    acked_on_lease_alone: u64,
    refused: u64,
    acked: u64,
}

impl Pair {
    fn new(seed: u64, mode: OnNoQuorum) -> Self {
        let reps = [0, 1].map(|i| {
            let mut r = Replica::new(cfg(i, mode, seed), Meta::fresh(SIZE), i == 0);
            // DRBD's `up`: start connecting.
            r.connect(false).expect("a fresh Secondary connects");
            r
        });
        let now = Instant::now();
        Pair {
            rng: ChaCha8Rng::seed_from_u64(seed),
            now,
            reps,
            disks: [vec![0; SIZE as usize], vec![0; SIZE as usize]],
            events: BTreeMap::new(),
            evseq: 0,
            link_up: true,
            link_down_at: None,
            sock_open: [false; 2],
            conn: 0,
            connect_scheduled: false,
            frozen_until: None,
            witness_up: true,
            lease: None,
            seq_req: HashMap::new(),
            peer_acked: HashSet::new(),
            next_req: 1,
            ticks: 0,
            last_arrival: [now; 2],
            stats: Stats::default(),
        }
    }

    fn at(&mut self, after: Duration, ev: Ev) {
        self.evseq += 1;
        self.events.insert((self.now + after, self.evseq), ev);
    }

    fn frozen(&self, node: usize) -> bool {
        node == 0 && self.frozen_until.is_some_and(|t| self.now < t)
    }

    fn pump(&mut self, node: usize) {
        while let Some(a) = self.reps[node].poll_action() {
            match a {
                Action::Disk { io, op } => {
                    let d = Duration::from_micros(self.rng.gen_range(100..2000));
                    self.at(d, Ev::Disk { node, io, op: Some(op) });
                }
                Action::PersistMeta { io, .. } | Action::PersistAl { io, .. } => {
                    let d = Duration::from_micros(self.rng.gen_range(100..2000));
                    self.at(d, Ev::Disk { node, io, op: None });
                }
                Action::Send(msg) => {
                    if let (0, Msg::Data { seq, data, .. }) = (node, &msg) {
                        if data.len() >= 8 {
                            let req = u64::from_le_bytes(data[..8].try_into().unwrap_or([0; 8]));
                            self.seq_req.insert(*seq, req);
                        }
                    }
                    if self.link_up && self.sock_open[node] && self.sock_open[1 - node] {
                        // In order, as on one TCP connection.
                        let d = Duration::from_micros(self.rng.gen_range(100..1000));
                        let at = (self.now + d).max(self.last_arrival[node]);
                        self.last_arrival[node] = at;
                        let conn = self.conn;
                        self.evseq += 1;
                        self.events.insert((at, self.evseq), Ev::Frame { to: 1 - node, conn, msg });
                    }
                }
                Action::CloseConnection if self.sock_open[node] => {
                    self.sock_open[node] = false;
                    if self.link_up && self.sock_open[1 - node] {
                        let conn = self.conn;
                        self.at(Duration::from_millis(1), Ev::Fin { to: 1 - node, conn });
                    }
                }
                Action::Complete { req, result } if node == 0 => self.check_ack(req, &result),
                _ => {}
            }
        }
    }

    /// The invariant: an acknowledged write had the lease at this instant, or the peer's
    /// acknowledgement of that write, or a connection that node 0 holds and that was alive
    /// within the peer timeout.
    fn check_ack(&mut self, req: u64, result: &Result<(), ReplError>) {
        if result.is_err() {
            if *result == Err(ReplError::NoQuorum) {
                self.stats.refused += 1;
            }
            return;
        }
        self.stats.acked += 1;
        let lease = self.lease.is_some_and(|t| self.now < t);
        let peer = self.peer_acked.contains(&req);
        let recent_link = self.link_up || self.link_down_at.is_some_and(|t| self.now < t + Duration::from_millis(300));
        let connected = self.reps[0].is_connected() && recent_link;
        assert!(
            lease || peer || connected,
            "request {req} acknowledged at +{:?} without lease (until {:?}), peer ack or connection",
            self.now,
            self.lease
        );
        if lease && !peer && !connected {
            self.stats.acked_on_lease_alone += 1;
        }
    }

    fn event(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Disk { node, io, op } => {
                let result = match op {
                    Some(DiskOp::Write { off, data, .. }) => {
                        self.disks[node][off as usize..off as usize + data.len()].copy_from_slice(&data);
                        Ok(None)
                    }
                    Some(DiskOp::Zero { off, len, .. }) => {
                        self.disks[node][off as usize..off as usize + len as usize].fill(0);
                        Ok(None)
                    }
                    Some(DiskOp::Read { off, len }) => {
                        Ok(Some(Bytes::from(self.disks[node][off as usize..off as usize + len as usize].to_vec())))
                    }
                    _ => Ok(None),
                };
                self.reps[node].handle_disk_done(now, io, result);
                self.pump(node);
            }
            Ev::Frame { to, conn, msg } => {
                if conn != self.conn || !self.sock_open[to] {
                    return;
                }
                if let (0, Msg::WriteAck { seq }) = (to, &msg) {
                    if let Some(req) = self.seq_req.get(seq) {
                        self.peer_acked.insert(*req);
                    }
                }
                self.reps[to].handle_frame(now, msg);
                self.pump(to);
            }
            Ev::Fin { to, conn } => {
                if conn == self.conn && self.sock_open[to] {
                    self.sock_open[to] = false;
                    self.reps[to].handle_disconnected(now);
                    self.pump(to);
                }
            }
            Ev::Connect => {
                self.connect_scheduled = false;
                if self.link_up && !self.sock_open[0] && !self.sock_open[1] && !self.frozen(0) {
                    self.conn += 1;
                    self.sock_open = [true, true];
                    for i in 0..2 {
                        self.reps[i].handle_connected(now);
                        self.pump(i);
                    }
                }
            }
        }
    }

    /// One millisecond: events due, timers, the client, the witness, faults.
    fn tick(&mut self) {
        self.now += Duration::from_millis(1);
        self.ticks += 1;
        let due: Vec<(Instant, u64)> = self.events.range(..=(self.now, u64::MAX)).map(|(k, _)| *k).collect();
        for k in due {
            let node = match self.events.get(&k) {
                Some(Ev::Disk { node, .. }) => Some(*node),
                Some(Ev::Frame { to, .. }) | Some(Ev::Fin { to, .. }) => Some(*to),
                _ => None,
            };
            if node.is_some_and(|n| self.frozen(n)) {
                continue; // a frozen process handles nothing: it sees it all when it resumes
            }
            if let Some(ev) = self.events.remove(&k) {
                self.event(ev);
            }
        }
        for i in 0..2 {
            if !self.frozen(i) && self.reps[i].poll_timeout().is_some_and(|t| t <= self.now) {
                self.reps[i].handle_timeout(self.now);
                self.pump(i);
            }
        }
        let both_closed = !self.sock_open[0] && !self.sock_open[1];
        if self.link_up && both_closed && !self.connect_scheduled && self.reps.iter().all(|r| r.wants_connection()) {
            self.connect_scheduled = true;
            let d = Duration::from_millis(self.rng.gen_range(5..50));
            self.at(d, Ev::Connect);
        }
        if self.frozen(0) {
            return;
        }
        // The witness renews node 0's lease every 100 ms while it is reachable.
        if self.witness_up && self.ticks % 100 == 0 {
            self.lease = Some(self.now + TTL);
            self.reps[0].handle_lease(self.now, self.lease);
            self.pump(0);
        }
        if self.reps[0].status().role == Role::Primary && self.rng.gen_bool(0.3) {
            let req = self.next_req;
            self.next_req += 1;
            let mut data = vec![0u8; 4096];
            data[..8].copy_from_slice(&req.to_le_bytes());
            let off = self.rng.gen_range(0..SIZE / 4096) * 4096;
            self.reps[0].handle_write(self.now, req, off, 4096, Some(data), self.rng.gen_bool(0.2));
            self.pump(0);
        }
    }

    fn faults(&mut self) {
        let r: f64 = self.rng.gen();
        if r < 0.002 {
            // Cut the link: what is in flight is lost, nobody is told.
            self.link_up = false;
            self.link_down_at = Some(self.now);
            self.events.retain(|_, e| !matches!(e, Ev::Frame { .. } | Ev::Fin { .. }));
        } else if r < 0.006 && !self.link_up {
            self.link_up = true;
        } else if r < 0.007 && !self.frozen(0) {
            // SIGSTOP of node 0, sometimes longer than its lease.
            self.frozen_until = Some(self.now + Duration::from_millis(self.rng.gen_range(50..1500)));
        } else if r < 0.009 {
            self.witness_up = !self.witness_up;
        }
    }
}

fn pair_run(seed: u64) -> Stats {
    let mode = if seed % 2 == 0 { OnNoQuorum::SuspendIo } else { OnNoQuorum::IoError };
    let mut p = Pair::new(seed, mode);
    // A fresh pair: node 0 is forced Primary alone, on a lease, then connects and syncs its
    // peer.
    p.lease = Some(p.now + TTL);
    p.reps[0].handle_lease(p.now, p.lease);
    let r = p.reps[0].promote(p.now, true, 0);
    assert!(r.is_ok(), "seed {seed}: {r:?}");
    p.pump(0);
    for _ in 0..300 {
        p.tick();
        if p.reps[0].is_connected() {
            break;
        }
    }
    assert!(p.reps[0].is_connected(), "seed {seed}: never connected: {:?}", p.reps[0].status());
    for _ in 0..4000 {
        p.tick();
        p.faults();
    }
    p.stats
}

#[test]
fn no_write_is_acknowledged_without_peer_or_lease_over_many_seeds() {
    let n: u64 = std::env::var("SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(500);
    let totals = std::sync::Mutex::new(Stats::default());
    run_seeds("no_write_is_acknowledged_without_peer_or_lease_over_many_seeds", 1..=n, |seed| {
        let s = pair_run(seed);
        if let Ok(mut t) = totals.lock() {
            t.acked += s.acked;
            t.acked_on_lease_alone += s.acked_on_lease_alone;
            t.refused += s.refused;
        }
    });
    let t = *totals.lock().unwrap();
    // Not vacuous: writes were acknowledged on the lease alone, and some were refused.
    assert!(t.acked > 1000 && t.acked_on_lease_alone > 0 && t.refused > 0, "{t:?}");
}
