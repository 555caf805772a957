//! What a run tells its caller while it runs: log lines (the binary prints them on standard
//! error as borgmatic does, a daemon sends them to `tracing`) and progress events (a status page,
//! or a test that cancels at a known point).

use crate::Action;

/// borgmatic's verbosity levels: a line is shown when its level ≤ the chosen verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Errors (`--verbosity -1` shows only these).
    Error = -1,
    /// Warnings and the summary (the default, `--verbosity 0`).
    Warning = 0,
    /// What each step does (`--verbosity 1`).
    Info = 1,
    /// Every detail (`--verbosity 2`).
    Debug = 2,
}

/// Progress of a run.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// An action starts on a repository (after its `before_*` hook).
    ActionStarted {
        /// The repository's label (or location).
        repository: &'a str,
        /// The action.
        action: Action,
    },
    /// `create` stored an item.
    CreateItem {
        /// The repository's label (or location).
        repository: &'a str,
        /// borg's status letter.
        status: char,
        /// The archive path.
        path: &'a [u8],
    },
    /// `create` committed a checkpoint archive.
    Checkpoint {
        /// The repository's label (or location).
        repository: &'a str,
        /// The checkpoint archive.
        name: &'a str,
    },
}

/// Receives a run's log lines and events. Called from the thread that runs; keep it short.
pub trait Observer: Send + Sync {
    /// A log line (default: to `tracing`, errors as `error!`, warnings as `warn!`...).
    fn log(&self, level: Level, message: &str) {
        match level {
            Level::Error => tracing::error!("{message}"),
            Level::Warning => tracing::warn!("{message}"),
            Level::Info => tracing::info!("{message}"),
            Level::Debug => tracing::debug!("{message}"),
        }
    }

    /// A progress event (default: ignored).
    fn event(&self, event: &Event<'_>) {
        let _ = event;
    }
}

/// The default observer: log lines to `tracing`, events ignored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing;

impl Observer for Tracing {}
