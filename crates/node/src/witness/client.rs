//! A node's side of the lease (sans-IO): when to ask, renew and release, and until when the
//! lease may be relied on.
//!
//! ```text
//!  want(r, true) ──▶ Acquire{seq} sent at s ─┬─▶ Granted{seq, ttl} ──▶ valid until s + ttl − margin
//!                                            │      └─▶ Renew at s + renew_interval, and so on
//!                                            └─▶ Refused{holder, remaining} ──▶ retry later
//!  no Granted in time ──▶ valid-until passes ──▶ Lost{Expired}       (the clock decides, not a reply)
//!  want(r, false) ──▶ belief dropped at once, Release sent
//! ```
//!
//! The lease is dated from the moment the request was **sent** (the `now` given when it was
//! queued, which is no later than the moment it leaves), never from the reply's arrival. The
//! witness dates the same lease from its receipt, which is later, so the client's view always
//! ends `margin` or more before the witness's, however long the request or the reply took. The
//! margin absorbs a difference in clock rates.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::wire::{RefuseReason, Repr, RequestKind};

/// After a refusal naming how long the holder's lease still runs, the next request goes this
/// long after that (the witness's clock and the request's way there).
pub const RETRY_AFTER_EXPIRY: Duration = Duration::from_millis(10);

/// Settings of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// This node's name.
    pub node: String,
    /// TTL asked of the witness.
    pub ttl: Duration,
    /// Cut from the end of every lease (clock-rate difference).
    pub margin: Duration,
    /// Time between renewals while the lease is held.
    pub renew_interval: Duration,
    /// Time between attempts while the lease is wanted but not held.
    pub retry_interval: Duration,
}

impl ClientConfig {
    /// Defaults from the TTL: margin max(ttl/10, 50 ms) (at most ttl/2), renew and retry every
    /// ttl/3.
    #[must_use]
    pub fn new(node: impl Into<String>, ttl: Duration) -> ClientConfig {
        let margin = (ttl / 10).max(Duration::from_millis(50)).min(ttl / 2);
        ClientConfig { node: node.into(), ttl, margin, renew_interval: ttl / 3, retry_interval: ttl / 3 }
    }

    fn margin_for(&self, ttl: Duration) -> Duration {
        // A shorter grant than asked keeps at least the configured margin.
        self.margin.max(ttl / 10)
    }
}

/// Why a lease was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// No renewal was granted in time: its validity ran out.
    Expired,
    /// The witness refused the renewal (another holder, or it restarted).
    Refused {
        /// Why.
        reason: RefuseReason,
        /// The holder the witness named, if any.
        holder: Option<String>,
    },
    /// This node gave it up.
    Released,
}

/// What the client tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The lease is held (it was not before).
    Acquired {
        /// Resource.
        resource: String,
        /// Valid until (client clock).
        until: Instant,
    },
    /// The lease is no longer held.
    Lost {
        /// Resource.
        resource: String,
        /// Why.
        reason: LostReason,
    },
    /// A request was refused while the lease was not held.
    Refused {
        /// Resource.
        resource: String,
        /// Why.
        reason: RefuseReason,
        /// The holder the witness named, if any.
        holder: Option<String>,
        /// How long its lease (or the witness's start-up wait) still runs.
        remaining: Duration,
    },
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    seq: u64,
    sent: Instant,
    kind: RequestKind,
}

/// At most this many unanswered requests are remembered per resource; a reply to a forgotten
/// one is ignored (which only makes the client believe less).
const MAX_IN_FLIGHT: usize = 16;

#[derive(Debug, Default)]
struct Res {
    want: bool,
    until: Option<Instant>,
    in_flight: VecDeque<InFlight>,
    next_send: Option<Instant>,
    /// A release not yet answered: sent again every retry interval and after a reconnection,
    /// so that a release lost with a connection does not leave the resource held (a fence for
    /// 30 days) at the witness.
    releasing: bool,
}

/// The client of one node, for any number of resources.
#[derive(Debug)]
pub struct LeaseClient {
    cfg: ClientConfig,
    res: BTreeMap<String, Res>,
    connected: bool,
    next_seq: u64,
    out: VecDeque<Repr>,
    events: VecDeque<Event>,
}

impl LeaseClient {
    /// A client that wants nothing and is not connected.
    #[must_use]
    pub fn new(cfg: ClientConfig) -> LeaseClient {
        LeaseClient {
            cfg,
            res: BTreeMap::new(),
            connected: false,
            next_seq: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    /// Whether a connection to the witness is established (authenticated).
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Call when the owner starts or stops wanting the lease on `resource` (a primary wants it
    /// all the time; a secondary only to promote without its peer). Stopping drops the belief
    /// at once and sends a release.
    pub fn want(&mut self, now: Instant, resource: &str, want: bool) {
        let r = self.res.entry(resource.to_owned()).or_default();
        if want == r.want {
            return;
        }
        r.want = want;
        if want {
            r.releasing = false;
            r.next_send = Some(now);
        } else {
            r.next_send = Some(now);
            r.releasing = true;
            r.in_flight.clear();
            if r.until.take().is_some() {
                self.events.push_back(Event::Lost { resource: resource.to_owned(), reason: LostReason::Released });
            }
        }
        self.handle_timeout(now);
    }

    /// Call when an authenticated connection to the witness is up.
    pub fn handle_connected(&mut self, now: Instant) {
        self.connected = true;
        for r in self.res.values_mut().filter(|r| r.want || r.releasing) {
            r.next_send = Some(now);
        }
        self.handle_timeout(now);
    }

    /// Call when the connection is gone. Replies to what was sent on it can no longer come;
    /// a lease already granted stays valid until its end (the witness still counts it).
    pub fn handle_disconnected(&mut self, now: Instant) {
        self.connected = false;
        self.out.clear();
        for r in self.res.values_mut() {
            r.in_flight.clear();
        }
        self.handle_timeout(now);
    }

    /// Call with every authenticated reply from the witness.
    pub fn handle_reply(&mut self, now: Instant, reply: &Repr) {
        let seq = match reply {
            Repr::Granted { seq, .. } | Repr::Refused { seq, .. } | Repr::Released { seq, .. } => *seq,
            _ => return,
        };
        let Some((name, r)) = self.res.iter_mut().find(|(_, r)| r.in_flight.iter().any(|f| f.seq == seq)) else {
            return; // not ours, forgotten, or sent on an earlier connection
        };
        // Replies come in order: anything sent before this one that is still unanswered was lost.
        let mut req = None;
        while let Some(f) = r.in_flight.pop_front() {
            if f.seq == seq {
                req = Some(f);
                break;
            }
        }
        let Some(req) = req else { return };
        if req.kind == RequestKind::Release {
            if !r.want {
                r.releasing = false;
                r.next_send = None;
            }
            return;
        }
        if !r.want {
            return;
        }
        match reply {
            Repr::Granted { ttl_ms, .. } => {
                let ttl = Duration::from_millis(u64::from(*ttl_ms)).min(self.cfg.ttl);
                let until = req.sent + ttl.saturating_sub(self.cfg.margin_for(ttl));
                let was = r.until.filter(|u| *u > now);
                if until > now {
                    r.until = Some(until);
                    if was.is_none() {
                        self.events.push_back(Event::Acquired { resource: name.clone(), until });
                    }
                } else {
                    // Granted, but too late to rely on: the witness's lease is at its end too.
                    r.until = None;
                    if was.is_some() {
                        self.events.push_back(Event::Lost { resource: name.clone(), reason: LostReason::Expired });
                    }
                }
                r.next_send = Some((req.sent + self.cfg.renew_interval).max(now));
            }
            Repr::Refused { reason, holder, remaining_ms, .. } => {
                let holder = (!holder.is_empty()).then(|| holder.clone());
                if r.until.take().is_some_and(|u| u > now) {
                    self.events.push_back(Event::Lost {
                        resource: name.clone(),
                        reason: LostReason::Refused { reason: *reason, holder: holder.clone() },
                    });
                }
                self.events.push_back(Event::Refused {
                    resource: name.clone(),
                    reason: *reason,
                    holder,
                    remaining: Duration::from_millis(u64::from(*remaining_ms)),
                });
                // Held by another: ask again just after it runs out (a take-over waits for that
                // moment, not up to a retry interval beyond it); never later than the interval.
                let held_for = Duration::from_millis(u64::from(*remaining_ms));
                let wait = if held_for.is_zero() {
                    self.cfg.retry_interval
                } else {
                    self.cfg.retry_interval.min(held_for + RETRY_AFTER_EXPIRY)
                };
                r.next_send = Some(now + wait);
            }
            _ => {}
        }
        self.handle_timeout(now);
    }

    /// Call at [`LeaseClient::poll_timeout`] (and whenever convenient): ends leases whose
    /// validity ran out and queues the requests that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for (name, r) in &mut self.res {
            if r.until.is_some_and(|u| u <= now) {
                r.until = None;
                self.events.push_back(Event::Lost { resource: name.clone(), reason: LostReason::Expired });
            }
            if !(self.connected && (r.want || r.releasing) && r.next_send.is_some_and(|t| t <= now)) {
                continue;
            }
            let kind = if !r.want {
                RequestKind::Release
            } else if r.until.is_some() {
                RequestKind::Renew
            } else {
                RequestKind::Acquire
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            if r.in_flight.len() == MAX_IN_FLIGHT {
                r.in_flight.pop_front();
            }
            r.in_flight.push_back(InFlight { seq, sent: now, kind });
            let ttl_ms = if kind == RequestKind::Release {
                0
            } else {
                u32::try_from(self.cfg.ttl.as_millis()).unwrap_or(u32::MAX)
            };
            self.out.push_back(Repr::Request {
                kind,
                seq,
                ttl_ms,
                resource: name.clone(),
                node: self.cfg.node.clone(),
            });
            let every = if r.want && r.until.is_some() { self.cfg.renew_interval } else { self.cfg.retry_interval };
            r.next_send = Some(now + every.max(Duration::from_millis(1)));
        }
    }

    /// The next request to send. Send it right away: its lease is dated from when it was queued.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Repr> {
        self.out.pop_front()
    }

    /// The next event for the owner.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call [`LeaseClient::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.res
            .values()
            .flat_map(|r| [r.until, r.next_send.filter(|_| self.connected && (r.want || r.releasing))])
            .flatten()
            .min()
    }

    /// Until when the lease on `resource` may be relied on, if it is held at `now`. This looks
    /// at the clock, not only at what was received: a client that was frozen past the end
    /// answers `None` before it has processed anything.
    #[must_use]
    pub fn lease_until(&self, now: Instant, resource: &str) -> Option<Instant> {
        self.res.get(resource)?.until.filter(|u| *u > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(3);

    fn client(node: &str) -> LeaseClient {
        LeaseClient::new(ClientConfig::new(node, TTL))
    }

    fn sent(c: &mut LeaseClient) -> Vec<Repr> {
        std::iter::from_fn(|| c.poll_transmit()).collect()
    }

    fn seq_of(m: &Repr) -> u64 {
        match m {
            Repr::Request { seq, .. } => *seq,
            other => panic!("not a request: {other:?}"),
        }
    }

    #[test]
    fn a_refused_acquire_asks_again_just_after_the_holders_lease_runs_out() {
        let t0 = Instant::now();
        let mut c = client("backup");
        c.handle_connected(t0);
        c.want(t0, "r0", true);
        let out = sent(&mut c);
        let refuse =
            |seq, remaining_ms| Repr::Refused { seq, reason: RefuseReason::Held, remaining_ms, holder: "main".into() };
        c.handle_reply(t0, &refuse(seq_of(&out[0]), 120));
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(120) + RETRY_AFTER_EXPIRY));
        // Held for longer than the retry interval: the interval.
        let t1 = c.poll_timeout().unwrap();
        c.handle_timeout(t1);
        let out = sent(&mut c);
        c.handle_reply(t1, &refuse(seq_of(&out[0]), 60_000));
        assert_eq!(c.poll_timeout(), Some(t1 + c.config().retry_interval));
    }

    #[test]
    fn defaults_follow_the_ttl() {
        let c = ClientConfig::new("n", TTL);
        assert_eq!((c.margin, c.renew_interval), (Duration::from_millis(300), Duration::from_secs(1)));
        let c = ClientConfig::new("n", Duration::from_millis(200));
        assert_eq!(c.margin, Duration::from_millis(50));
    }

    #[test]
    fn nothing_is_sent_before_the_connection_and_the_lease_dates_from_the_send() {
        let t0 = Instant::now();
        let mut c = client("main");
        c.want(t0, "r0", true);
        assert!(sent(&mut c).is_empty());
        let t1 = t0 + Duration::from_millis(10);
        c.handle_connected(t1);
        let out = sent(&mut c);
        assert_eq!(out.len(), 1);
        assert!(
            matches!(&out[0], Repr::Request { kind: RequestKind::Acquire, ttl_ms: 3000, node, resource, .. } if node == "main" && resource == "r0")
        );
        // The reply takes 1 s: the lease still counts from t1.
        let t2 = t1 + Duration::from_secs(1);
        c.handle_reply(t2, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 3000 });
        let until = t1 + TTL - Duration::from_millis(300);
        assert_eq!(c.lease_until(t2, "r0"), Some(until));
        assert_eq!(c.poll_event(), Some(Event::Acquired { resource: "r0".into(), until }));
        // Renewal due at t1 + 1 s, which has passed: sent at once.
        let out = sent(&mut c);
        assert!(matches!(&out[..], [Repr::Request { kind: RequestKind::Renew, .. }]), "{out:?}");
    }

    #[test]
    fn the_holder_renews_every_third_of_the_ttl_and_keeps_the_lease() {
        let t0 = Instant::now();
        let mut c = client("main");
        c.handle_connected(t0);
        c.want(t0, "r0", true);
        let mut now = t0;
        for _ in 0..10 {
            let out = sent(&mut c);
            assert_eq!(out.len(), 1, "one request per interval");
            let rtt = Duration::from_millis(20);
            c.handle_reply(now + rtt, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 3000 });
            assert_eq!(c.lease_until(now + rtt, "r0"), Some(now + Duration::from_millis(2700)));
            let next = c.poll_timeout().unwrap();
            assert_eq!(next, now + Duration::from_secs(1));
            now = next;
            c.handle_timeout(now);
        }
        assert_eq!(c.poll_event().map(|e| matches!(e, Event::Acquired { .. })), Some(true));
        assert_eq!(c.poll_event(), None, "acquired once, never lost");
    }

    #[test]
    fn unanswered_renewals_let_the_lease_expire_on_the_clock() {
        let t0 = Instant::now();
        let mut c = client("main");
        c.handle_connected(t0);
        c.want(t0, "r0", true);
        let out = sent(&mut c);
        c.handle_reply(t0, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 3000 });
        let _ = c.poll_event();
        // The witness goes silent; renewals keep going out, nothing comes back.
        let end = t0 + Duration::from_millis(2700);
        let mut now = t0;
        while let Some(t) = c.poll_timeout() {
            if t > end {
                break;
            }
            now = t;
            c.handle_timeout(now);
            let _ = sent(&mut c);
        }
        assert_eq!(now, end);
        assert_eq!(c.lease_until(now, "r0"), None);
        assert_eq!(c.poll_event(), Some(Event::Lost { resource: "r0".into(), reason: LostReason::Expired }));
    }

    #[test]
    fn a_refused_renewal_drops_the_lease_and_names_the_holder() {
        let t0 = Instant::now();
        let mut c = client("main");
        c.handle_connected(t0);
        c.want(t0, "r0", true);
        let out = sent(&mut c);
        c.handle_reply(t0, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 3000 });
        let _ = c.poll_event();
        let t1 = t0 + Duration::from_secs(1);
        c.handle_timeout(t1);
        let out = sent(&mut c);
        c.handle_reply(
            t1,
            &Repr::Refused {
                seq: seq_of(&out[0]),
                reason: RefuseReason::Held,
                remaining_ms: 2000,
                holder: "backup".into(),
            },
        );
        assert_eq!(c.lease_until(t1, "r0"), None);
        assert_eq!(
            c.poll_event(),
            Some(Event::Lost {
                resource: "r0".into(),
                reason: LostReason::Refused { reason: RefuseReason::Held, holder: Some("backup".into()) }
            })
        );
        assert!(
            matches!(c.poll_event(), Some(Event::Refused { remaining, .. }) if remaining == Duration::from_secs(2))
        );
    }

    #[test]
    fn release_drops_the_belief_at_once_and_a_late_grant_does_not_revive_it() {
        let t0 = Instant::now();
        let mut c = client("main");
        c.handle_connected(t0);
        c.want(t0, "r0", true);
        let out = sent(&mut c);
        c.handle_reply(t0, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 3000 });
        let t1 = t0 + Duration::from_secs(1);
        c.handle_timeout(t1);
        let renew = sent(&mut c);
        c.want(t1, "r0", false);
        assert_eq!(c.lease_until(t1, "r0"), None);
        let out = sent(&mut c);
        assert!(matches!(&out[..], [Repr::Request { kind: RequestKind::Release, .. }]), "{out:?}");
        // The renewal's grant arrives after the release went out: ignored.
        c.handle_reply(t1, &Repr::Granted { seq: seq_of(&renew[0]), ttl_ms: 3000 });
        c.handle_reply(t1, &Repr::Released { seq: seq_of(&out[0]), was_holder: true });
        assert_eq!(c.lease_until(t1, "r0"), None);
        assert_eq!(c.poll_timeout(), None, "nothing more to do");
    }

    #[test]
    fn a_release_is_sent_again_until_answered_also_after_a_reconnection() {
        let t0 = Instant::now();
        let mut c = client("main");
        c.handle_connected(t0);
        c.want(t0, "r0.fence", true);
        let out = sent(&mut c);
        c.handle_reply(t0, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 3000 });
        c.want(t0, "r0.fence", false);
        let first = sent(&mut c);
        assert!(matches!(&first[..], [Repr::Request { kind: RequestKind::Release, ttl_ms: 0, .. }]), "{first:?}");
        // The connection breaks before the answer: the release goes again on the next one.
        c.handle_disconnected(t0);
        let t1 = t0 + Duration::from_secs(5);
        c.handle_timeout(t1);
        assert!(sent(&mut c).is_empty(), "nothing is sent while disconnected");
        c.handle_connected(t1);
        let again = sent(&mut c);
        assert!(matches!(&again[..], [Repr::Request { kind: RequestKind::Release, .. }]), "{again:?}");
        // Unanswered: sent again after the retry interval (the shell wakes for it).
        let t2 = t1 + c.config().retry_interval;
        assert_eq!(c.poll_timeout(), Some(t2));
        c.handle_timeout(t2);
        let third = sent(&mut c);
        assert!(matches!(&third[..], [Repr::Request { kind: RequestKind::Release, .. }]), "{third:?}");
        // Answered: done, nothing more to send.
        c.handle_reply(t2, &Repr::Released { seq: seq_of(&third[0]), was_holder: true });
        assert_eq!(c.poll_timeout(), None);
        c.handle_timeout(t2 + Duration::from_secs(60));
        assert!(sent(&mut c).is_empty());
        // Wanting it again starts an acquisition, not a release.
        c.want(t2, "r0.fence", true);
        let acq = sent(&mut c);
        assert!(matches!(&acq[..], [Repr::Request { kind: RequestKind::Acquire, .. }]), "{acq:?}");
    }

    #[test]
    fn a_grant_arriving_after_the_ttl_gives_nothing() {
        let t0 = Instant::now();
        let mut c = client("backup");
        c.handle_connected(t0);
        c.want(t0, "r0", true);
        let out = sent(&mut c);
        let late = t0 + Duration::from_millis(2700);
        c.handle_reply(late, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 3000 });
        assert_eq!(c.lease_until(late, "r0"), None);
        assert!(std::iter::from_fn(|| c.poll_event()).all(|e| !matches!(e, Event::Acquired { .. })));
    }

    #[test]
    fn replies_from_an_old_connection_or_unknown_seqs_are_ignored() {
        let t0 = Instant::now();
        let mut c = client("main");
        c.handle_connected(t0);
        c.want(t0, "r0", true);
        let out = sent(&mut c);
        c.handle_disconnected(t0);
        c.handle_reply(t0, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 3000 });
        c.handle_reply(t0, &Repr::Granted { seq: 999, ttl_ms: 3000 });
        assert_eq!(c.lease_until(t0, "r0"), None);
    }

    #[test]
    fn a_shorter_grant_than_asked_is_used_as_granted() {
        let t0 = Instant::now();
        let mut c = client("main");
        c.handle_connected(t0);
        c.want(t0, "r0", true);
        let out = sent(&mut c);
        c.handle_reply(t0, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 1000 });
        assert_eq!(c.lease_until(t0, "r0"), Some(t0 + Duration::from_millis(700)));
        // And a longer one than asked is cut to what was asked.
        let mut c = client("main");
        c.handle_connected(t0);
        c.want(t0, "r0", true);
        let out = sent(&mut c);
        c.handle_reply(t0, &Repr::Granted { seq: seq_of(&out[0]), ttl_ms: 60_000 });
        assert_eq!(c.lease_until(t0, "r0"), Some(t0 + Duration::from_millis(2700)));
    }
}
