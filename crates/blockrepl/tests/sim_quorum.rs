//! The quorum gate (issue 15, section 3) in the sans-IO core: with `quorum` on, a Primary
//! whose peer is not connected acknowledges a write or flush only while the witness's lease is
//! valid at the moment of the acknowledgement; otherwise it holds the write (suspend-io) or
//! fails it (io-error); promotion without the peer needs the lease.
//!
//! These tests drive one replica by hand, in simulated time. (A seeded simulation of a pair
//! with link cuts, freezes and witness outages is still to come.)

use std::time::{Duration, Instant};

use blockrepl::meta::Meta;
use blockrepl::proto::{Action, Config, OnNoQuorum, ReplError, Replica, Role};

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
