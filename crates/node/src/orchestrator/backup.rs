//! Backups follow the data: the schedule of backup jobs on the node that serves.
//!
//! A job starts only while the service is served here (Primary, mounted, services up), never
//! two at a time; the next run is due `interval` after the last success (a node that starts
//! with an overdue or unknown last success runs at once: catch-up after downtime); a failed run
//! is retried after `retry`. A demotion cancels a running job first (the orchestrator's
//! [`super::Step::CancelBackup`]).
//!
//! **The next primary continues the schedule.** What a node knows by itself (the shell's
//! state file) says nothing of the runs its peer made while it served. So each time the node
//! is told to serve (an up order begins), the orchestrator asks the shell to read the newest
//! archive's time from the repository ([`super::Action::ReadLastBackup`]); the later of that
//! and what it knew is the last success. The read runs beside the up order and never delays
//! it; only a backup waits for the answer, at most `retry`. A read that fails (the repository
//! is unreachable) leaves the schedule on what is known and is asked again after `retry`.
//!
//! ```text
//!  up order begins ──▶ ReadLastBackup{query} ──▶ shell lists the archives (blocking pool)
//!                           │ backups wait (≤ retry)          │
//!                           ▼                                 ▼
//!  next_due = max(local, repository) + interval ◀── handle_last_backup(query, Ok(t) | Err)
//!                                                   Err: retried after `retry`
//! ```

use std::time::{Duration, Instant};

/// Where the last successful backup's time came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastBackupFrom {
    /// This node's own record (given at start, or a run it made).
    Local,
    /// The repository's newest archive (a run made by the peer while it served).
    Repository,
}

/// The backup schedule as `status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupState {
    /// Backups are configured.
    pub enabled: bool,
    /// The running job, if any.
    pub running: Option<u64>,
    /// Last successful run (as reported at start, learned from the repository, or since).
    pub last_success: Option<Instant>,
    /// Where [`BackupState::last_success`] came from.
    pub last_success_from: Option<LastBackupFrom>,
    /// When the next run is due.
    pub next_due: Option<Instant>,
    /// A read of the repository's newest archive is awaited (backups wait for it).
    pub reading_repository: bool,
    /// Failed reads of the repository's newest archive in this term.
    pub read_failures: u32,
    /// Failed runs since the last success.
    pub failures: u32,
    /// Jobs cancelled by a demotion.
    pub cancelled: u32,
}

/// Learning the last success from the repository, for the current up term.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Learn {
    /// Not asked (not told to serve).
    Idle,
    /// Asked; backups wait for the answer until `until`.
    Asking { until: Instant },
    /// The last read failed or did not answer in time: asked again at `retry_at`; backups go
    /// by what is known meanwhile.
    Failed { retry_at: Instant },
    /// Answered for this term.
    Done,
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
    last_success_from: Option<LastBackupFrom>,
    next_due: Option<Instant>,
    failures: u32,
    cancelled: u32,
    /// The node is told to serve (an up term runs).
    term: bool,
    learn: Learn,
    /// The id of the last read asked; answers to older ones are ignored.
    query: u64,
    read_failures: u32,
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
            last_success_from: None,
            next_due: None,
            failures: 0,
            cancelled: 0,
            term: false,
            learn: Learn::Idle,
            query: 0,
            read_failures: 0,
        }
    }

    pub(super) fn start(&mut self, now: Instant, last_success: Option<Instant>) {
        self.last_success = last_success;
        self.last_success_from = last_success.map(|_| LastBackupFrom::Local);
        self.next_due = self.interval.map(|i| last_success.map_or(now, |t| t + i));
    }

    /// Follows the up order: `up` says whether the node is told to serve. Returns the id of a
    /// read of the repository to ask for (at the start of each up term, and again after a
    /// failed one).
    pub(super) fn follow(&mut self, now: Instant, up: bool) -> Option<u64> {
        self.interval?;
        if !up {
            self.term = false;
            self.learn = Learn::Idle;
            return None;
        }
        if !self.term {
            self.term = true;
            self.read_failures = 0;
            return Some(self.ask(now));
        }
        match self.learn {
            Learn::Asking { until } if now >= until => {
                self.read_failures += 1;
                self.learn = Learn::Failed { retry_at: now + self.retry };
                None
            }
            Learn::Failed { retry_at } if now >= retry_at && self.running.is_none() => Some(self.ask(now)),
            _ => None,
        }
    }

    fn ask(&mut self, now: Instant) -> u64 {
        self.query += 1;
        self.learn = Learn::Asking { until: now + self.retry };
        self.query
    }

    /// The answer to read `query`: the repository's newest archive time (`Ok(None)`: it has
    /// none). Returns whether the schedule moved to it.
    pub(super) fn learned(&mut self, now: Instant, query: u64, result: Result<Option<Instant>, ()>) -> bool {
        if query != self.query || !self.term {
            return false;
        }
        let t = match result {
            Ok(t) => {
                self.learn = Learn::Done;
                t
            }
            Err(()) => {
                self.read_failures += 1;
                self.learn = Learn::Failed { retry_at: now + self.retry };
                return false;
            }
        };
        let (Some(t), Some(interval)) = (t, self.interval) else { return false };
        if self.last_success.is_some_and(|l| l >= t) {
            return false;
        }
        self.last_success = Some(t);
        self.last_success_from = Some(LastBackupFrom::Repository);
        self.failures = 0;
        if self.running.is_none() {
            self.next_due = Some(t + interval);
        }
        true
    }

    /// When [`Backups::follow`] must be called again (a read's deadline or its retry).
    pub(super) fn read_deadline(&self) -> Option<Instant> {
        match self.learn {
            Learn::Asking { until } if self.term => Some(until),
            Learn::Failed { retry_at } if self.term && self.running.is_none() => Some(retry_at),
            _ => None,
        }
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        if self.running.is_some() || matches!(self.learn, Learn::Asking { .. }) {
            None
        } else {
            self.next_due
        }
    }

    pub(super) fn running(&self) -> Option<u64> {
        self.running
    }

    /// A job to start now, if one is due and none runs (and no read of the repository is
    /// awaited: its answer may move the schedule).
    pub(super) fn maybe_start(&mut self, now: Instant) -> Option<u64> {
        if self.running.is_some() || matches!(self.learn, Learn::Asking { .. }) || self.next_due.is_none_or(|t| now < t)
        {
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
            self.last_success_from = Some(LastBackupFrom::Local);
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
            last_success_from: self.last_success_from,
            next_due: self.next_due,
            reading_repository: matches!(self.learn, Learn::Asking { .. }),
            read_failures: self.read_failures,
            failures: self.failures,
            cancelled: self.cancelled,
        }
    }
}
