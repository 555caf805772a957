//! Rate-limited logging of repeated peer faults (issue 14): a peer with a different `auth_pass`,
//! advert interval or version sends one bad advert per interval for as long as it runs, so the
//! first one is logged in full and the rest are summed up at most once per [`SUMMARY_EVERY`].
//! keepalived logs each one ("received an invalid passwd!"); a summary keeps the trace without
//! flooding the journal at 10 ms adverts.
//!
//! Sans-IO: the caller passes `now` and logs what comes back.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// At most one summary line per kind of fault and instance in this period.
pub(super) const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// What to log for one fault event or tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Line {
    /// The first fault (or the first after a quiet period): log it in full.
    First { peer: IpAddr },
    /// `count` faults since the last line, over `over`; the last one came from `last_peer`.
    Summary { count: u64, over: Duration, last_peer: IpAddr },
}

/// One limiter per (instance, kind of fault).
#[derive(Debug, Clone, Default)]
pub(super) struct Limiter {
    /// When the last line was logged.
    last_line: Option<Instant>,
    /// Faults since then, not logged yet.
    pending: u64,
    last_peer: Option<IpAddr>,
}

impl Limiter {
    /// A fault from `peer` at `now`: the line to log, if any.
    pub(super) fn event(&mut self, now: Instant, peer: IpAddr) -> Option<Line> {
        self.last_peer = Some(peer);
        match self.last_line {
            // Quiet since the last line for a whole period and nothing pending: a new episode.
            Some(t) if now.saturating_duration_since(t) < SUMMARY_EVERY || self.pending > 0 => {
                self.pending += 1;
                self.flush(now)
            }
            _ => {
                self.last_line = Some(now);
                self.pending = 0;
                Some(Line::First { peer })
            }
        }
    }

    /// Called periodically (the daemon's 1 s tick): the summary that is due, if any.
    pub(super) fn flush(&mut self, now: Instant) -> Option<Line> {
        let t = self.last_line?;
        let over = now.saturating_duration_since(t);
        if self.pending == 0 || over < SUMMARY_EVERY {
            return None;
        }
        let count = std::mem::take(&mut self.pending);
        self.last_line = Some(now);
        Some(Line::Summary { count, over, last_peer: self.last_peer? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> IpAddr {
        IpAddr::from([10, 0, 0, 2])
    }

    /// Issue 14: a peer with a wrong auth_pass sends one advert per interval forever; the log gets
    /// one full line, then at most one summary per period with the exact count.
    #[test]
    fn first_fault_in_full_then_one_summary_per_period() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        assert_eq!(l.event(t0, peer()), Some(Line::First { peer: peer() }));
        let mut lines = Vec::new();
        // 10 ms adverts for 150 s, with a tick every second.
        for ms in (10..150_000u64).step_by(10) {
            let now = t0 + Duration::from_millis(ms);
            lines.extend(l.event(now, peer()));
            if ms % 1000 == 0 {
                lines.extend(l.flush(now));
            }
        }
        assert_eq!(lines.len(), 2, "{lines:?}");
        let mut total = 1;
        for line in &lines {
            match line {
                Line::Summary { count, over, last_peer } => {
                    assert!(*over >= SUMMARY_EVERY && *over < SUMMARY_EVERY + Duration::from_secs(1), "{over:?}");
                    assert_eq!(*last_peer, peer());
                    total += count;
                }
                Line::First { .. } => panic!("second full line: {lines:?}"),
            }
        }
        // The faults after the last summary are still pending.
        assert_eq!(total + l.pending, 14_999 + 1);
    }

    #[test]
    fn a_lone_fault_after_a_quiet_period_is_logged_in_full_again() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        assert!(matches!(l.event(t0, peer()), Some(Line::First { .. })));
        assert_eq!(l.event(t0 + Duration::from_secs(1), peer()), None);
        // The pending one is summed up on a tick once the period is over.
        let t1 = t0 + SUMMARY_EVERY + Duration::from_secs(1);
        assert!(matches!(l.flush(t1), Some(Line::Summary { count: 1, .. })));
        assert_eq!(l.flush(t1 + Duration::from_secs(1)), None);
        // Quiet for a whole period: the next one is a new episode.
        let t2 = t1 + SUMMARY_EVERY;
        assert!(matches!(l.event(t2, peer()), Some(Line::First { .. })));
    }
}
