//! Backups follow the data: the schedule of backup jobs on the node that serves.
//!
//! A job starts only while the service is served here (Primary, mounted, services up), never
//! two at a time; the next run is due `interval` after the last success (a node that starts
//! with an overdue or unknown last success runs at once: catch-up after downtime); a failed run
//! is retried after `retry`. A demotion cancels a running job first (the orchestrator's
//! [`super::Step::CancelBackup`]).

use std::time::{Duration, Instant};

/// The backup schedule as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupState {
    /// Backups are configured.
    pub enabled: bool,
    /// The running job, if any.
    pub running: Option<u64>,
    /// Last successful run (as reported at start, or since).
    pub last_success: Option<Instant>,
    /// When the next run is due.
    pub next_due: Option<Instant>,
    /// Failed runs since the last success.
    pub failures: u32,
    /// Jobs cancelled by a demotion.
    pub cancelled: u32,
}

#[derive(Debug)]
pub(super) struct Backups {
    interval: Option<Duration>,
    retry: Duration,
    running: Option<u64>,
    /// The running job was asked to stop.
    cancelling: bool,
    next_job: u64,
    last_success: Option<Instant>,
    next_due: Option<Instant>,
    failures: u32,
    cancelled: u32,
}

impl Backups {
    pub(super) fn new(interval: Option<Duration>, retry: Duration) -> Self {
        Self {
            interval,
            retry,
            running: None,
            cancelling: false,
            next_job: 1,
            last_success: None,
            next_due: None,
            failures: 0,
            cancelled: 0,
        }
    }

    pub(super) fn start(&mut self, now: Instant, last_success: Option<Instant>) {
        self.last_success = last_success;
        self.next_due = self.interval.map(|i| last_success.map_or(now, |t| t + i));
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        if self.running.is_some() {
            None
        } else {
            self.next_due
        }
    }

    pub(super) fn running(&self) -> Option<u64> {
        self.running
    }

    /// A job to start now, if one is due and none runs.
    pub(super) fn maybe_start(&mut self, now: Instant) -> Option<u64> {
        if self.running.is_some() || self.next_due.is_none_or(|t| now < t) {
            return None;
        }
        let job = self.next_job;
        self.next_job += 1;
        self.running = Some(job);
        self.cancelling = false;
        Some(job)
    }

    /// The orchestrator asks the running job to stop.
    pub(super) fn cancel(&mut self) {
        self.cancelling = self.running.is_some();
    }

    /// A job ended. Returns whether it was the running one.
    pub(super) fn done(&mut self, now: Instant, job: u64, ok: bool) -> bool {
        if self.running != Some(job) {
            return false;
        }
        self.running = None;
        let interval = self.interval.unwrap_or(self.retry);
        if ok && !self.cancelling {
            self.last_success = Some(now);
            self.failures = 0;
            self.next_due = Some(now + interval);
        } else if self.cancelling {
            // Cancelled by a demotion: still due; whoever serves next runs it.
            self.cancelled += 1;
        } else {
            self.failures += 1;
            self.next_due = Some(now + self.retry.min(interval));
        }
        self.cancelling = false;
        true
    }

    /// The running job did not report its end in time: stop waiting for it.
    pub(super) fn forget_running(&mut self) {
        if self.running.take().is_some() {
            self.cancelled += 1;
        }
        self.cancelling = false;
    }

    pub(super) fn state(&self) -> BackupState {
        BackupState {
            enabled: self.interval.is_some(),
            running: self.running,
            last_success: self.last_success,
            next_due: self.next_due,
            failures: self.failures,
            cancelled: self.cancelled,
        }
    }
}
