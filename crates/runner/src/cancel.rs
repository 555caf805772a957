//! Stopping a run from outside: a demotion (rempart-node), SIGINT/SIGTERM (rempart-backup).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A cancellation token a blocking run polls, with the reason the caller gave.
///
/// Cheap to clone; [`cancel`](Cancel::cancel) may be called from any thread or async task (it
/// never blocks on the run). It is the same flag `dedupstore`'s `create` polls between chunks
/// and items (`CreateOptions::cancel`), so a running `create` stops within one chunk, commits
/// what it has as the checkpoint archive `NAME.checkpoint` and releases the repository lock.
/// The runner also polls it before each action and each repository.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    flag: Arc<AtomicBool>,
    reason: Arc<Mutex<Option<String>>>,
}

impl Cancel {
    /// A token not cancelled yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the run to stop; the first reason is kept (a later call changes nothing).
    pub fn cancel(&self, reason: impl Into<String>) {
        // the reason first, so that whoever sees the flag finds it
        if let Ok(mut r) = self.reason.lock() {
            if r.is_none() {
                *r = Some(reason.into());
            }
        }
        self.flag.store(true, Ordering::SeqCst);
    }

    /// Whether [`cancel`](Cancel::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// The reason given to the first [`cancel`](Cancel::cancel).
    pub fn reason(&self) -> Option<String> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }

    /// The flag `dedupstore::create::CreateOptions::cancel` polls.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.flag.clone()
    }

    /// `cancelled: <reason>`, the exit reason the report records.
    pub(crate) fn exit_reason(&self) -> String {
        format!("cancelled: {}", self.reason().unwrap_or_else(|| "no reason given".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_clones_share_the_flag() {
        let c = Cancel::new();
        let d = c.clone();
        assert!(!d.is_cancelled() && d.reason().is_none());
        c.cancel("demoted");
        c.cancel("shutdown");
        assert!(d.is_cancelled() && d.flag().load(Ordering::SeqCst));
        assert_eq!(d.exit_reason(), "cancelled: demoted");
    }
}
