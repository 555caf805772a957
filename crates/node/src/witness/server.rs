//! The witness's lease table (sans-IO): at most one lease per resource.
//!
//! ```text
//!  Request{Acquire|Renew, r, node, ttl} ──▶ no live lease on r, or node holds it?
//!        │ yes: lease(r) = (node, now + min(ttl, max_ttl)) ──▶ Granted{ttl granted}
//!        └ no: ──▶ Refused{Held, holder, remaining}
//!  Request{Release, r, node} ──▶ node holds r? end it now ──▶ Released{was_holder}
//! ```
//!
//! Time is the caller's `now` (the witness's monotonic clock). An expired lease is as good as
//! none; [`LeaseServer::expire`] only tidies the table. The witness keeps nothing on disk, so
//! after a restart it grants no new lease for `startup_grace` (default: its longest TTL): a
//! lease it granted before the restart has run out by then. A **renewal** is granted during the
//! grace (when nobody renewed first): it comes from the node that held the lease before the
//! restart — a client renews only while its own view of the lease is valid, and that view ends
//! before the witness's — so at most one node can send it. That is how a holder keeps its lease,
//! and a fence holder its fence, across a witness restart (the node simulation found a
//! restarted witness handing a forgotten fence to the node with stale data).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::wire::{RefuseReason, Repr, RequestKind};

/// A resource whose name ends with this is a **fence**: a lease that says "the holder may have
/// writes its peer lacks", taken once and held until released, so its TTL is bounded by
/// [`ServerConfig::max_fence_ttl`] instead of [`ServerConfig::max_ttl`]. (The witness keeps
/// nothing on disk: a restart forgets fences too.)
pub const FENCE_SUFFIX: &str = ".fence";

/// Settings of the lease table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Longest TTL granted; longer requests get this.
    pub max_ttl: Duration,
    /// After start, nothing is granted for this long (covers leases of a previous run).
    pub startup_grace: Duration,
    /// Longest TTL granted for a fence (a resource named `….fence`).
    pub max_fence_ttl: Duration,
}

/// Default [`ServerConfig::max_fence_ttl`]: 30 days.
pub const DEFAULT_MAX_FENCE_TTL: Duration = Duration::from_secs(30 * 86_400);

impl ServerConfig {
    /// `max_ttl` with a start-up grace of the same length; fences up to 30 days.
    #[must_use]
    pub fn new(max_ttl: Duration) -> ServerConfig {
        ServerConfig { max_ttl, startup_grace: max_ttl, max_fence_ttl: DEFAULT_MAX_FENCE_TTL }
    }
}

/// One live lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The holder's node name.
    pub holder: String,
    /// When it ends (witness clock).
    pub expires: Instant,
}

/// What the table decided about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// The lease is the requester's until `now + ttl`.
    Granted {
        /// TTL granted.
        ttl: Duration,
        /// Whether the requester did not hold it before (a new lease, not a renewal).
        new: bool,
    },
    /// Refused.
    Refused {
        /// Why.
        reason: RefuseReason,
        /// The holder, when one.
        holder: Option<String>,
        /// How long the lease (or the start-up grace) still runs.
        remaining: Duration,
    },
    /// Answer to a release.
    Released {
        /// Whether the requester held the lease (and no longer does).
        was_holder: bool,
    },
}

/// The lease table.
#[derive(Debug)]
pub struct LeaseServer {
    cfg: ServerConfig,
    grace_until: Instant,
    leases: BTreeMap<String, Lease>,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl LeaseServer {
    /// A table that starts empty at `now`.
    #[must_use]
    pub fn new(now: Instant, cfg: ServerConfig) -> LeaseServer {
        LeaseServer { grace_until: now + cfg.startup_grace, cfg, leases: BTreeMap::new() }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Decides one request received at `now`.
    pub fn decide(&mut self, now: Instant, kind: RequestKind, resource: &str, node: &str, ttl: Duration) -> Decision {
        let live = self.leases.get(resource).filter(|l| l.expires > now);
        let held_by_me = live.is_some_and(|l| l.holder == node);
        match kind {
            RequestKind::Release => {
                if held_by_me {
                    self.leases.remove(resource);
                }
                Decision::Released { was_holder: held_by_me }
            }
            RequestKind::Acquire | RequestKind::Renew => {
                if ttl.is_zero() {
                    return Decision::Refused {
                        reason: RefuseReason::BadRequest,
                        holder: None,
                        remaining: Duration::ZERO,
                    };
                }
                if now < self.grace_until && live.is_none() && kind != RequestKind::Renew {
                    return Decision::Refused {
                        reason: RefuseReason::Starting,
                        holder: None,
                        remaining: self.grace_until - now,
                    };
                }
                if let Some(l) = live.filter(|_| !held_by_me) {
                    return Decision::Refused {
                        reason: RefuseReason::Held,
                        holder: Some(l.holder.clone()),
                        remaining: l.expires - now,
                    };
                }
                let max = if resource.ends_with(FENCE_SUFFIX) { self.cfg.max_fence_ttl } else { self.cfg.max_ttl };
                let ttl = ttl.min(max);
                self.leases.insert(resource.to_owned(), Lease { holder: node.to_owned(), expires: now + ttl });
                Decision::Granted { ttl, new: !held_by_me }
            }
        }
    }

    /// Answers a request frame received at `now` (`None` for frames that are not requests).
    pub fn answer(&mut self, now: Instant, request: &Repr) -> Option<(Decision, Repr)> {
        let Repr::Request { kind, seq, ttl_ms, resource, node } = request else {
            return None;
        };
        let seq = *seq;
        let d = self.decide(now, *kind, resource, node, Duration::from_millis(u64::from(*ttl_ms)));
        let reply = match &d {
            Decision::Granted { ttl, .. } => Repr::Granted { seq, ttl_ms: millis(*ttl) },
            Decision::Refused { reason, holder, remaining } => Repr::Refused {
                seq,
                reason: *reason,
                remaining_ms: millis(*remaining),
                holder: holder.clone().unwrap_or_default(),
            },
            Decision::Released { was_holder } => Repr::Released { seq, was_holder: *was_holder },
        };
        Some((d, reply))
    }

    /// The live lease on `resource` at `now`.
    #[must_use]
    pub fn lease(&self, now: Instant, resource: &str) -> Option<&Lease> {
        self.leases.get(resource).filter(|l| l.expires > now)
    }

    /// The live leases at `now`, by resource.
    pub fn leases(&self, now: Instant) -> impl Iterator<Item = (&str, &Lease)> + '_ {
        self.leases.iter().filter(move |(_, l)| l.expires > now).map(|(r, l)| (r.as_str(), l))
    }

    /// How many leases are live at `now`.
    #[must_use]
    pub fn leases_held(&self, now: Instant) -> usize {
        self.leases.values().filter(|l| l.expires > now).count()
    }

    /// Removes the leases that ended by `now` and returns them (resource, lease), for logs.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, Lease)> {
        let gone: Vec<String> = self.leases.iter().filter(|(_, l)| l.expires <= now).map(|(r, _)| r.clone()).collect();
        gone.into_iter().filter_map(|r| self.leases.remove(&r).map(|l| (r, l))).collect()
    }

    /// When the next lease ends (call [`LeaseServer::expire`] then), if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.leases.values().map(|l| l.expires).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    fn server(t0: Instant) -> LeaseServer {
        LeaseServer::new(
            t0,
            ServerConfig { startup_grace: Duration::ZERO, ..ServerConfig::new(Duration::from_secs(10)) },
        )
    }

    fn granted(d: &Decision) -> bool {
        matches!(d, Decision::Granted { .. })
    }

    #[test]
    fn two_nodes_racing_one_wins_the_other_learns_who_and_how_long() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let a = s.decide(t0, RequestKind::Acquire, "r0", "main", TTL);
        assert_eq!(a, Decision::Granted { ttl: TTL, new: true });
        let t1 = t0 + Duration::from_millis(500);
        let b = s.decide(t1, RequestKind::Acquire, "r0", "backup", TTL);
        assert_eq!(
            b,
            Decision::Refused {
                reason: RefuseReason::Held,
                holder: Some("main".into()),
                remaining: Duration::from_millis(2500)
            }
        );
        // Another resource is independent.
        assert!(granted(&s.decide(t1, RequestKind::Acquire, "r1", "backup", TTL)));
        assert_eq!(s.leases_held(t1), 2);
    }

    #[test]
    fn the_holder_renews_from_the_receive_time() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let _ = s.decide(t0, RequestKind::Acquire, "r0", "main", TTL);
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(s.decide(t1, RequestKind::Renew, "r0", "main", TTL), Decision::Granted { ttl: TTL, new: false });
        assert_eq!(s.lease(t1, "r0").unwrap().expires, t1 + TTL);
        // Still refused to the other at t0 + 4 s (past the first expiry).
        let t2 = t0 + Duration::from_secs(4);
        assert!(!granted(&s.decide(t2, RequestKind::Acquire, "r0", "backup", TTL)));
    }

    #[test]
    fn an_expired_lease_goes_to_the_next_asker() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let _ = s.decide(t0, RequestKind::Acquire, "r0", "main", TTL);
        assert_eq!(s.poll_timeout(), Some(t0 + TTL));
        let just_before = t0 + TTL - Duration::from_millis(1);
        assert!(!granted(&s.decide(just_before, RequestKind::Acquire, "r0", "backup", TTL)));
        assert!(granted(&s.decide(t0 + TTL, RequestKind::Acquire, "r0", "backup", TTL)));
        assert_eq!(s.lease(t0 + TTL, "r0").unwrap().holder, "backup");
        // The old holder's late renewal is refused: it does not hold it any more.
        assert!(!granted(&s.decide(t0 + TTL, RequestKind::Renew, "r0", "main", TTL)));
        assert!(s.expire(t0 + TTL).is_empty());
        let gone = s.expire(t0 + TTL * 2);
        assert_eq!(gone.len(), 1);
        assert_eq!(s.leases_held(t0 + TTL * 2), 0);
    }

    #[test]
    fn release_ends_the_lease_at_once_and_only_for_the_holder() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let _ = s.decide(t0, RequestKind::Acquire, "r0", "main", TTL);
        assert_eq!(s.decide(t0, RequestKind::Release, "r0", "backup", TTL), Decision::Released { was_holder: false });
        assert_eq!(s.lease(t0, "r0").unwrap().holder, "main");
        assert_eq!(
            s.decide(t0, RequestKind::Release, "r0", "main", Duration::ZERO),
            Decision::Released { was_holder: true }
        );
        assert!(s.lease(t0, "r0").is_none());
        assert!(granted(&s.decide(t0, RequestKind::Acquire, "r0", "backup", TTL)));
    }

    #[test]
    fn ttl_is_bounded_by_the_server_and_zero_is_refused() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let d = s.decide(t0, RequestKind::Acquire, "r0", "main", Duration::from_secs(3600));
        assert_eq!(d, Decision::Granted { ttl: Duration::from_secs(10), new: true });
        assert_eq!(s.lease(t0, "r0").unwrap().expires, t0 + Duration::from_secs(10));
        let d = s.decide(t0, RequestKind::Acquire, "r1", "main", Duration::ZERO);
        assert!(matches!(d, Decision::Refused { reason: RefuseReason::BadRequest, .. }));
        let (_, reply) = s
            .answer(
                t0,
                &Repr::Request {
                    kind: RequestKind::Renew,
                    seq: 9,
                    ttl_ms: 60_000,
                    resource: "r0".into(),
                    node: "main".into(),
                },
            )
            .unwrap();
        assert_eq!(reply, Repr::Granted { seq: 9, ttl_ms: 10_000 });
    }

    #[test]
    fn a_fence_is_bounded_by_the_fence_ttl_not_the_lease_ttl() {
        let t0 = Instant::now();
        let mut s = server(t0);
        let day = Duration::from_secs(86_400);
        let d = s.decide(t0, RequestKind::Acquire, "r0.fence", "main", day);
        assert_eq!(d, Decision::Granted { ttl: day, new: true });
        let d = s.decide(t0, RequestKind::Acquire, "r0.fence", "backup", TTL);
        assert!(matches!(d, Decision::Refused { reason: RefuseReason::Held, holder: Some(ref h), .. } if h == "main"));
        let d = s.decide(t0, RequestKind::Acquire, "r1.fence", "main", day * 365);
        assert_eq!(d, Decision::Granted { ttl: DEFAULT_MAX_FENCE_TTL, new: true });
        assert_eq!(
            s.decide(t0, RequestKind::Release, "r0.fence", "main", TTL),
            Decision::Released { was_holder: true }
        );
    }

    #[test]
    fn a_restarted_witness_grants_nothing_during_its_grace() {
        let t0 = Instant::now();
        let mut s = LeaseServer::new(t0, ServerConfig::new(TTL));
        let (_, reply) = s
            .answer(
                t0 + Duration::from_secs(1),
                &Repr::Request {
                    kind: RequestKind::Acquire,
                    seq: 1,
                    ttl_ms: 3000,
                    resource: "r0".into(),
                    node: "main".into(),
                },
            )
            .unwrap();
        assert_eq!(
            reply,
            Repr::Refused { seq: 1, reason: RefuseReason::Starting, remaining_ms: 2000, holder: String::new() }
        );
        assert!(granted(&s.decide(t0 + TTL, RequestKind::Acquire, "r0", "main", TTL)));
    }

    #[test]
    fn the_holder_renews_during_the_grace_and_nobody_else_gets_it() {
        let t0 = Instant::now();
        let mut s = LeaseServer::new(t0, ServerConfig::new(TTL));
        let t = t0 + Duration::from_secs(1);
        assert!(granted(&s.decide(t, RequestKind::Renew, "r0.fence", "main", TTL)));
        let d = s.decide(t, RequestKind::Acquire, "r0.fence", "backup", TTL);
        assert!(matches!(d, Decision::Refused { reason: RefuseReason::Held, .. }), "{d:?}");
        let d = s.decide(t, RequestKind::Renew, "r0.fence", "backup", TTL);
        assert!(matches!(d, Decision::Refused { reason: RefuseReason::Held, .. }), "{d:?}");
        let d = s.decide(t0 + TTL, RequestKind::Acquire, "r0.fence", "backup", TTL);
        assert!(matches!(d, Decision::Refused { reason: RefuseReason::Held, .. }), "{d:?}");
        // A new lease (acquire) still waits for the end of the grace.
        let d = s.decide(t, RequestKind::Acquire, "r0", "main", TTL);
        assert!(matches!(d, Decision::Refused { reason: RefuseReason::Starting, .. }), "{d:?}");
    }
}
