//! The borgmatic-style backup runner as a library: read a borgmatic 1.7 configuration file as
//! it is, run it once — hooks, create, prune, compact, check, restore test, for each repository —
//! with a cancellation token, and get a structured [`Report`] back.
//!
//! Two programs use it: `rempart-backup run` (a thin command line: clap, a terminal prompt,
//! SIGINT/SIGTERM turned into [`Cancel::cancel`], exit codes) and `rempart-node`, which runs the
//! backup of a replicated service on the current primary only, from inside its tokio program, and
//! must stop it cleanly when the node is demoted.
//!
//! ```text
//!            load(path) ──► Loaded (validated; every problem with file, key path, line)
//!                               │
//!  caller ── Cancel ──┐         ▼
//!   (demotion,        │   run(&[Loaded], &RunOptions, &Cancel) ─────────────► Report (Serialize)
//!    SIGTERM)         │     before_everything (each file, if create runs)      outcome, exit_reason
//!                     │     for each file, for each repository:                per repository:
//!                     ├──►    poll ─ open (local path or ssh; passphrase:        each action's
//!                     │              config literal → passcommand →              result, duration,
//!                     │              caller's sources → caller's prompt)         archive, error;
//!                     ├──►    poll ─ before_backup ─► create ─► after_backup     create stats,
//!                     │         (create polls the same flag between chunks:      checks, restore
//!                     │          cancelled → NAME.checkpoint committed,          test, archives
//!                     │          lock released, "cancelled: <reason>")
//!                     ├──►    poll ─ prune ─► compact ─► check (due ones) ─► restore-test
//!                     │     on_error (a failed or cancelled repository)
//!                     │     after_everything (each file, if create runs)
//!                     │     state dir (check times, carried-over figures), metrics textfile
//!  Observer ◄─────────┴──── log lines (levels as borgmatic's --verbosity) and progress events
//! ```
//!
//! # Example
//!
//! ```no_run
//! use runner::{load, run, Cancel, RunOptions, Outcome};
//! let config = load(std::path::Path::new("/etc/rempart/borgmatic.yaml")).map_err(|e| e.lines())?;
//! let cancel = Cancel::new();
//! // elsewhere, on demotion: cancel.cancel("demoted: VRRP master → backup");
//! let report = run(&[config], &RunOptions::default(), &cancel);
//! if report.outcome == Outcome::Cancelled {
//!     eprintln!("{}", report.exit_reason); // "cancelled: demoted: VRRP master → backup"
//! }
//! # Ok::<(), Vec<String>>(())
//! ```
//!
//! # Why it is built this way
//!
//! - **A blocking run with a polled token**, not an async one: the repository code (chunking,
//!   crypto, packs, ssh pipes) is synchronous and CPU-bound; `dedupstore::create` already polls
//!   an `AtomicBool` between chunks and items (the flag `rempart-backup create` sets on SIGINT),
//!   and on it commits the items done so far as the checkpoint archive `NAME.checkpoint` (as borg
//!   1.2 does) and drops its lock. [`Cancel`] *is* that flag plus the caller's reason, so a
//!   demotion reaches the chunk loop without a bridge thread, and the report can say why the run
//!   stopped. A tokio program uses [`run_async`] (the blocking pool) and calls
//!   [`Cancel::cancel`] from any task; awaiting the run then means the checkpoint is written and
//!   the lock released. Prune, compact and check have no cancellation point inside dedupstore:
//!   a running one finishes (they are short next to create, except `check` with `data`), the
//!   run stops before the next action. A running hook command is not killed.
//! - **Cancelled is a failure of that repository** (exit code 2 in the report and the metrics,
//!   `on_error` and `after_everything` run, the last-success time is not moved): the backup did
//!   not complete, and the next primary must catch up. The repositories not started yet are
//!   reported as cancelled too, so that a status page shows each one.
//! - **No terminal, no globals, no process exit**: the passphrase comes from a
//!   [`PassphraseSource`] list (literal, passcommand with stdin closed, environment); only the
//!   caller may add a prompt ([`RunOptions::prompt`]). ssh options, key and cache directories
//!   are options, not the binary's globals. Log lines go to an [`Observer`] (the binary prints
//!   them as borgmatic does; the default sends them to `tracing`).
//! - **One of each**: the placeholder expander ([`placeholders`]), the passcommand runner
//!   ([`passphrase::run_passcommand`]) and the restore-and-verify ([`restore_test()`]) live here
//!   once and the binary's borg-style commands use them too.
//! - The metrics textfile keeps the families of the standalone runner
//!   (`rempart_backup_last_success_timestamp_seconds`, ...; see [`metrics`]).

mod cancel;
pub mod config;
pub mod discover;
pub mod environment;
pub mod hooks;
pub mod metrics;
mod observe;
pub mod passphrase;
pub mod placeholders;
mod report;
pub mod restore_test;
mod run;
pub mod state;

pub use cancel::Cancel;
pub use config::{load, parse, ConfigErrors, ConfigProblem, Loaded};
pub use observe::{Event, Level, Observer, Tracing};
pub use passphrase::{PassphraseError, PassphraseSource};
pub use report::{ActionOutcome, ActionReport, CreateReport, CreateStats, Outcome, RepoReport, Report};
pub use restore_test::{restore_test, RestoreTestError, RestoreTestReport};
pub use run::{format_size, newest_archives, run, run_async, NewestArchive, Prompt, RepoNewest, RunError, RunOptions};

/// What a run does (borgmatic's action names), always in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Make an archive of the source directories.
    Create,
    /// Delete the archives the retention rules do not keep.
    Prune,
    /// Free the space of deleted archives.
    Compact,
    /// The configured consistency checks that are due.
    Check,
    /// Restore the newest archive into a temporary directory and verify every file.
    RestoreTest,
}
