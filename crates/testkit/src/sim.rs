//! Simulation helpers for sans-IO protocol cores: a simulated clock, a seeded simulated network,
//! a live-versus-durable disk, and a seed runner that prints how to replay a failure.
//!
//! ```text
//!   seed ──► ChaCha8Rng ──┬──► SimNet (loss, delay, duplication, cuts)
//!                         └──► CrashDisk::crash_image (which unsynced writes survive)
//!   SimClock.now() ──► core.handle_*(now, ..) ──► actions ──► SimNet.send/broadcast
//! ```
//!
//! Everything random in a run comes from one seed, so a failing seed replays exactly:
//! `SIM_SEED=N cargo test -p CRATE TEST`.

use std::collections::{BTreeMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe, RefUnwindSafe};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
pub use rand_chacha::ChaCha8Rng;

/// A clock that only moves when told to. Cores read time from `now()` of this clock in tests.
#[derive(Debug, Clone)]
pub struct SimClock {
    now: Instant,
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl SimClock {
    /// A clock starting at an arbitrary instant.
    pub fn new() -> Self {
        Self { now: Instant::now() }
    }
    /// The current simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }
    /// Moves the clock forward by `d`.
    pub fn advance(&mut self, d: Duration) {
        self.now += d;
    }
    /// Moves the clock to `t`; a `t` in the past leaves the clock where it is (time never goes back).
    pub fn advance_to(&mut self, t: Instant) {
        if t > self.now {
            self.now = t;
        }
    }
}

/// Faults of a simulated network. Probabilities are in 0.0..=1.0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetConfig {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a delivered message is delivered twice.
    pub duplicate: f64,
    /// Smallest one-way delay.
    pub min_delay: Duration,
    /// Largest one-way delay (uniform between min and max; reordering follows from it).
    pub max_delay: Duration,
}

impl Default for NetConfig {
    /// A perfect network: no loss, no duplication, no delay.
    fn default() -> Self {
        Self { loss: 0.0, duplicate: 0.0, min_delay: Duration::ZERO, max_delay: Duration::ZERO }
    }
}

impl NetConfig {
    /// A network losing `loss` of messages with delays uniform in `min..=max`.
    pub fn lossy(loss: f64, min: Duration, max: Duration) -> Self {
        Self { loss, duplicate: 0.0, min_delay: min, max_delay: max.max(min) }
    }
}

/// A message that the network delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<M> {
    /// When it arrives.
    pub at: Instant,
    /// Sender node index.
    pub from: usize,
    /// Receiver node index.
    pub to: usize,
    /// The message.
    pub msg: M,
}

/// A seeded network between nodes `0..n`: loss, delay, duplication, and cuts that may be
/// one-directional (asymmetric partitions).
#[derive(Debug)]
pub struct SimNet<M> {
    rng: ChaCha8Rng,
    nodes: usize,
    cfg: NetConfig,
    cut: HashSet<(usize, usize)>,
    // (arrival time, sequence number) keeps delivery order deterministic for equal times.
    queue: BTreeMap<(Instant, u64), Delivery<M>>,
    seq: u64,
    sent: u64,
    dropped: u64,
}

impl<M: Clone> SimNet<M> {
    /// A network of `nodes` nodes whose every random choice comes from `seed`.
    pub fn new(seed: u64, nodes: usize, cfg: NetConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes,
            cfg,
            cut: HashSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            sent: 0,
            dropped: 0,
        }
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// Replaces the fault configuration for messages sent from now on.
    pub fn set_config(&mut self, cfg: NetConfig) {
        self.cfg = cfg;
    }

    /// The run's random generator, for the test's own choices (crashes, workloads), so that one
    /// seed drives everything.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Sends `msg` from `from` to `to`, subject to cuts, loss, delay and duplication.
    pub fn send(&mut self, now: Instant, from: usize, to: usize, msg: M) {
        self.sent += 1;
        if from == to || to >= self.nodes || self.cut.contains(&(from, to)) {
            self.dropped += 1;
            return;
        }
        if self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss.clamp(0.0, 1.0)) {
            self.dropped += 1;
            return;
        }
        let copies =
            if self.cfg.duplicate > 0.0 && self.rng.gen_bool(self.cfg.duplicate.clamp(0.0, 1.0)) { 2 } else { 1 };
        for _ in 0..copies {
            let delay = self.delay();
            self.seq += 1;
            self.queue.insert((now + delay, self.seq), Delivery { at: now + delay, from, to, msg: msg.clone() });
        }
    }

    /// Sends `msg` from `from` to every other node (a LAN multicast).
    pub fn broadcast(&mut self, now: Instant, from: usize, msg: M) {
        for to in 0..self.nodes {
            if to != from {
                self.send(now, from, to, msg.clone());
            }
        }
    }

    fn delay(&mut self) -> Duration {
        let (min, max) = (self.cfg.min_delay, self.cfg.max_delay);
        if max <= min {
            return min;
        }
        let span = (max - min).as_nanos() as u64;
        min + Duration::from_nanos(self.rng.gen_range(0..=span))
    }

    /// Cuts the direction `from → to` only; messages already in flight still arrive.
    pub fn cut(&mut self, from: usize, to: usize) {
        self.cut.insert((from, to));
    }

    /// Heals the direction `from → to`.
    pub fn heal(&mut self, from: usize, to: usize) {
        self.cut.remove(&(from, to));
    }

    /// Cuts both directions between every pair of nodes in different groups. Nodes in no group
    /// are isolated from everyone.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        let group_of = |n: usize| groups.iter().position(|g| g.contains(&n));
        for a in 0..self.nodes {
            for b in 0..self.nodes {
                if a != b && (group_of(a).is_none() || group_of(a) != group_of(b)) {
                    self.cut.insert((a, b));
                }
            }
        }
    }

    /// Cuts `node` from every other node in both directions.
    pub fn isolate(&mut self, node: usize) {
        for other in 0..self.nodes {
            if other != node {
                self.cut.insert((node, other));
                self.cut.insert((other, node));
            }
        }
    }

    /// Removes every cut.
    pub fn heal_all(&mut self) {
        self.cut.clear();
    }

    /// Whether `from → to` is currently cut.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.cut.contains(&(from, to))
    }

    /// Drops every message in flight to or from `node` (a crash loses its socket buffers).
    pub fn drop_in_flight(&mut self, node: usize) {
        self.queue.retain(|_, d| d.to != node && d.from != node);
    }

    /// When the next message arrives, if any is in flight.
    pub fn next_delivery(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(t, _)| *t)
    }

    /// Every message due at or before `now`, in arrival order.
    pub fn deliver(&mut self, now: Instant) -> Vec<Delivery<M>> {
        let mut out = Vec::new();
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            out.push(entry.remove());
        }
        out
    }

    /// Messages sent and messages dropped (by cut or loss) so far.
    pub fn counters(&self) -> (u64, u64) {
        (self.sent, self.dropped)
    }
}

/// Runs `f` once per seed. `SIM_SEED=N` in the environment runs only seed `N`. On the first
/// failing seed, prints `seed=N` and the command that replays it, then panics with the same
/// message.
pub fn run_seeds(test_name: &str, seeds: impl IntoIterator<Item = u64>, f: impl Fn(u64) + RefUnwindSafe) {
    let only: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|s| s.trim().parse().ok());
    let seeds: Vec<u64> = match only {
        Some(s) => vec![s],
        None => seeds.into_iter().collect(),
    };
    for seed in seeds {
        let result = catch_unwind(AssertUnwindSafe(|| f(seed)));
        if let Err(cause) = result {
            let why = cause
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| cause.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            let msg = format!(
                "simulation {test_name} failed: seed={seed}: {why}\n  replay: SIM_SEED={seed} cargo test {test_name}"
            );
            eprintln!("{msg}");
            panic!("{msg}");
        }
    }
}

/// The sector size at which a write may tear in a crash.
pub const SECTOR: usize = 512;

/// A byte store that keeps what was written (live) apart from what was synced (durable), like a
/// disk with a volatile write cache. `crash_image` is what a power cut could leave behind.
#[derive(Debug, Clone)]
pub struct CrashDisk {
    durable: Vec<u8>,
    live: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
}

impl CrashDisk {
    /// A zero-filled disk of `len` bytes.
    pub fn new(len: usize) -> Self {
        Self { durable: vec![0; len], live: vec![0; len], pending: Vec::new() }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether the disk has zero bytes.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Writes into the live bytes; durable only after `sync`. Out-of-range writes are an error.
    pub fn write(&mut self, off: u64, data: &[u8]) -> Result<(), OutOfRange> {
        let r = self.range(off, data.len())?;
        self.live[r].copy_from_slice(data);
        self.pending.push((off, data.to_vec()));
        Ok(())
    }

    /// Reads the live bytes (what a reader sees before any crash).
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        let r = self.range(off, buf.len())?;
        buf.copy_from_slice(&self.live[r]);
        Ok(())
    }

    /// Makes every write so far durable (fsync).
    pub fn sync(&mut self) {
        self.durable.copy_from_slice(&self.live);
        self.pending.clear();
    }

    /// The live bytes.
    pub fn live(&self) -> &[u8] {
        &self.live
    }

    /// The durable bytes (what survives a crash for sure).
    pub fn durable(&self) -> &[u8] {
        &self.durable
    }

    /// Number of writes since the last sync.
    pub fn unsynced_writes(&self) -> usize {
        self.pending.len()
    }

    /// What a crash now could leave: the durable bytes, plus each unsynced write applied or not
    /// at random (in any order the cache might have flushed them — here in issue order, each
    /// independently), one of them possibly torn at sector granularity.
    pub fn crash_image(&self, rng: &mut impl Rng) -> Vec<u8> {
        let mut img = self.durable.clone();
        let torn = if self.pending.is_empty() { None } else { Some(rng.gen_range(0..self.pending.len())) };
        for (i, (off, data)) in self.pending.iter().enumerate() {
            if !rng.gen_bool(0.5) {
                continue;
            }
            let start = *off as usize;
            let keep = if Some(i) == torn {
                let sectors = data.len().div_ceil(SECTOR);
                (rng.gen_range(0..=sectors) * SECTOR).min(data.len())
            } else {
                data.len()
            };
            img[start..start + keep].copy_from_slice(&data[..keep]);
        }
        img
    }

    /// Replaces the disk by a crash image: both live and durable become `image`.
    pub fn restart_from(&mut self, image: Vec<u8>) {
        self.live = image.clone();
        self.durable = image;
        self.pending.clear();
    }

    fn range(&self, off: u64, len: usize) -> Result<std::ops::Range<usize>, OutOfRange> {
        let start = usize::try_from(off).map_err(|_| OutOfRange)?;
        let end = start.checked_add(len).ok_or(OutOfRange)?;
        if end > self.live.len() {
            return Err(OutOfRange);
        }
        Ok(start..end)
    }
}

/// A read or write past the end of a [`CrashDisk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfRange;

impl std::fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("access past the end of the simulated disk")
    }
}

impl std::error::Error for OutOfRange {}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(seed: u64) -> Vec<(usize, usize, u32, Duration)> {
        let clock = SimClock::new();
        let mut net = SimNet::new(
            seed,
            3,
            NetConfig {
                loss: 0.3,
                duplicate: 0.2,
                min_delay: Duration::from_millis(1),
                max_delay: Duration::from_millis(20),
            },
        );
        for i in 0..50 {
            net.broadcast(clock.now(), (i % 3) as usize, i);
        }
        net.deliver(clock.now() + Duration::from_secs(1))
            .into_iter()
            .map(|d| (d.from, d.to, d.msg, d.at - clock.now()))
            .collect()
    }

    #[test]
    fn one_seed_one_run() {
        assert_eq!(trace(7), trace(7));
        assert_ne!(trace(7), trace(8));
    }

    #[test]
    fn loss_duplication_and_delay_are_applied() {
        let t = trace(1);
        // 50 broadcasts to 2 peers = 100 sends; 30 % loss and 20 % duplication.
        assert!(t.len() > 50 && t.len() < 110, "{}", t.len());
        assert!(t.iter().all(|(_, _, _, d)| *d >= Duration::from_millis(1) && *d <= Duration::from_millis(20)));
        let mut seen = HashSet::new();
        assert!(t.iter().any(|(f, to, m, _)| !seen.insert((*f, *to, *m))), "no duplicate delivered");
        // arrival order
        assert!(t.windows(2).all(|w| w[0].3 <= w[1].3));
    }

    #[test]
    fn asymmetric_cut_and_partition() {
        let now = Instant::now();
        let mut net = SimNet::new(0, 3, NetConfig::default());
        net.cut(0, 1);
        net.send(now, 0, 1, "a");
        net.send(now, 1, 0, "b");
        let got: Vec<_> = net.deliver(now).into_iter().map(|d| d.msg).collect();
        assert_eq!(got, vec!["b"]);
        net.heal_all();
        net.partition(&[&[0, 1], &[2]]);
        net.broadcast(now, 0, "c");
        net.broadcast(now, 2, "d");
        let got: Vec<_> = net.deliver(now).into_iter().map(|d| (d.to, d.msg)).collect();
        assert_eq!(got, vec![(1, "c")]);
        net.isolate(1);
        net.broadcast(now, 0, "e");
        assert!(net.deliver(now).is_empty());
        net.heal_all();
        net.broadcast(now, 0, "f");
        assert_eq!(net.deliver(now).len(), 2);
    }

    #[test]
    fn delivery_waits_for_its_time() {
        let mut clock = SimClock::new();
        let mut net = SimNet::new(3, 2, NetConfig::lossy(0.0, Duration::from_millis(5), Duration::from_millis(5)));
        net.send(clock.now(), 0, 1, 1u8);
        assert!(net.deliver(clock.now()).is_empty());
        assert_eq!(net.next_delivery(), Some(clock.now() + Duration::from_millis(5)));
        clock.advance(Duration::from_millis(5));
        assert_eq!(net.deliver(clock.now()).len(), 1);
        let before = clock.now();
        clock.advance_to(before - Duration::from_millis(1));
        assert_eq!(clock.now(), before, "time never goes back");
    }

    #[test]
    fn run_seeds_reports_the_failing_seed() {
        let r = catch_unwind(|| run_seeds("demo", 0..10, |s| assert!(s != 4, "boom")));
        let err = r.expect_err("seed 4 fails");
        let msg = err.downcast_ref::<String>().expect("string panic");
        assert!(msg.contains("seed=4") && msg.contains("SIM_SEED=4"), "{msg}");
    }

    #[test]
    fn crash_disk_keeps_durable_and_tears_unsynced() {
        let mut d = CrashDisk::new(4096);
        d.write(0, &[1; 1024]).expect("in range");
        d.sync();
        d.write(1024, &[2; 2048]).expect("in range");
        assert_eq!(d.unsynced_writes(), 1);
        assert!(d.write(4000, &[0; 200]).is_err());
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut saw_torn = false;
        let mut saw_full = false;
        let mut saw_none = false;
        for _ in 0..200 {
            let img = d.crash_image(&mut rng);
            assert!(img[..1024].iter().all(|b| *b == 1), "synced data survives");
            let n = img[1024..3072].iter().take_while(|b| **b == 2).count();
            assert_eq!(n % SECTOR, 0, "tears only at sector boundaries");
            assert!(img[1024 + n..3072].iter().all(|b| *b == 0));
            saw_full |= n == 2048;
            saw_none |= n == 0;
            saw_torn |= n > 0 && n < 2048;
        }
        assert!(saw_torn && saw_full && saw_none);
        let img = d.crash_image(&mut rng);
        d.restart_from(img.clone());
        assert_eq!(d.live(), &img[..]);
        assert_eq!(d.durable(), &img[..]);
    }
}
