//! The structured report of one run, returned to the caller (serde `Serialize`: a daemon shows
//! it in its status, the binary prints its `--json` and summary from it).

use crate::restore_test::RestoreTestReport;
use crate::Action;
use serde::{Serialize, Serializer};
use std::time::Duration;

pub(crate) fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// How a whole run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Every repository and hook succeeded, without warnings.
    Success,
    /// Everything succeeded, some with borg warnings (a file vanished while read...).
    Warning,
    /// A repository, a hook or the metrics file failed (borgmatic's exit code 1).
    Failed,
    /// The caller cancelled the run (see [`Report::exit_reason`]).
    Cancelled,
}

/// How one action on one repository ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "result", content = "reason")]
pub enum ActionOutcome {
    /// Done.
    Ok,
    /// Done, with warnings (in the repository's `warnings`).
    Warning,
    /// Not done, on purpose: nothing was due, a dry run, an append-only server, no retention
    /// rules, or a `before_*` hook's soft failure.
    Skipped(String),
    /// Failed (the error is in the action's `error`).
    Failed,
    /// Stopped by the caller's cancellation.
    Cancelled,
}

/// One action on one repository.
#[derive(Debug, Clone, Serialize)]
pub struct ActionReport {
    /// Which action.
    pub action: Action,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: ActionOutcome,
    /// How long it took (its hooks included).
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// The archive it made or read (create: the archive, or the checkpoint archive when
    /// cancelled; restore-test: the archive restored).
    pub archive: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
}

/// What `create` stored: borgmatic's `--json` `create` object.
#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// The archive's name.
    pub name: String,
    /// Its id (hex).
    pub id: String,
    /// Seconds.
    pub duration: f64,
    /// Sizes and file count.
    pub stats: CreateStats,
}

/// Sizes of one archive, as borg prints them.
#[derive(Debug, Clone, Serialize)]
pub struct CreateStats {
    /// Bytes of file content.
    pub original_size: u64,
    /// After compression.
    pub compressed_size: u64,
    /// What this archive added to the repository.
    pub deduplicated_size: u64,
    /// Regular files.
    pub nfiles: u64,
}

/// One repository in one run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RepoReport {
    /// The configuration file.
    pub configuration_filename: String,
    /// The label (or the location when it has none).
    pub label: String,
    /// The location as configured.
    pub location: String,
    /// borg's code: 0 ok, 1 warning, 2 error (cancelled counts as an error).
    pub exit_code: u8,
    /// Why the repository failed (the first error; the actions say which).
    pub error: Option<String>,
    /// Why the rest of its actions were skipped (a `before_*` hook exited 75).
    pub skipped: Option<String>,
    /// How long its actions took.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// borg warnings (files that vanished or could not be read).
    pub warnings: Vec<String>,
    /// Each action asked for, in order, with its result (an action after a failure or a
    /// cancellation is absent: it did not start).
    pub actions: Vec<ActionReport>,
    /// What create stored.
    pub create: Option<CreateReport>,
    /// Archives prune deleted (or would delete, in a dry run).
    pub pruned: Option<usize>,
    /// Bytes compact freed (about).
    pub compact_freed: Option<u64>,
    /// The checks that ran.
    pub checks: Vec<&'static str>,
    /// Whether they passed.
    pub check_success: Option<bool>,
    /// The restore test.
    pub restore_test: Option<RestoreTestReport>,
    /// Unix time the restore test ended, if it ran.
    pub restore_test_time: Option<f64>,
    /// Whether the repository could be opened (`false`: its server refused or did not answer,
    /// its path is missing, or its lock was not obtained; `None`: not tried).
    pub reachable: Option<bool>,
    /// Archives in the repository after the run.
    pub archives: Option<u64>,
    /// The new archive's original size (not in a dry run).
    pub original_bytes: Option<u64>,
    /// What it added (not in a dry run).
    pub deduplicated_bytes: Option<u64>,
}

impl RepoReport {
    /// The result of `action`, if it ran.
    pub fn action(&self, action: Action) -> Option<&ActionReport> {
        self.actions.iter().find(|a| a.action == action)
    }
}

/// One run: every repository of every configuration file, and how it ended.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How the run ended.
    pub outcome: Outcome,
    /// `success`, `warning`, `failed: <what>` or `cancelled: <the caller's reason>`.
    pub exit_reason: String,
    /// Wall time of the whole run.
    #[serde(serialize_with = "seconds")]
    pub duration: Duration,
    /// Whether it was a dry run.
    pub dry_run: bool,
    /// Each repository, in configuration order.
    pub repositories: Vec<RepoReport>,
    /// Failures outside a repository: `before_everything`, `on_error`, `after_everything`
    /// hooks, the metrics file, an unknown `--repository`.
    pub errors: Vec<String>,
}

impl Report {
    /// borgmatic's exit code: 0 when everything succeeded (warnings included), 1 otherwise.
    /// (The binary exits with the signal's code instead when cancelled by a signal.)
    pub fn exit_code(&self) -> u8 {
        match self.outcome {
            Outcome::Success | Outcome::Warning => 0,
            Outcome::Failed | Outcome::Cancelled => 1,
        }
    }
}
