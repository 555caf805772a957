//! `rempart-backup run -c FILE` and `rempart-backup restore-test`: the command line over the
//! `runner` crate (which holds borgmatic's configuration, the run and the restore test).
//!
//! Exit codes of `run` are borgmatic's: 0 when every repository succeeded (borg warnings
//! included), 1 when anything failed (a repository, a hook, a configuration file), 2 for a
//! usage error. SIGINT or SIGTERM cancels the run: a running create commits its checkpoint
//! archive and releases the lock, the hooks `on_error` and `after_everything` run, the metrics
//! are written, and the exit code is borg's for the signal (2 for SIGINT, 143 for SIGTERM); a
//! second signal ends the process at once.

use runner::{Action as RunAction, Cancel, Level, Observer, Outcome, PassphraseSource, RepoReport, RunOptions};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// What a run does (borgmatic's action names), always in this order.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Action {
    Create,
    Prune,
    Compact,
    Check,
    /// Restore the newest archive into a temporary directory and verify every file.
    RestoreTest,
}

impl From<Action> for RunAction {
    fn from(a: Action) -> Self {
        match a {
            Action::Create => RunAction::Create,
            Action::Prune => RunAction::Prune,
            Action::Compact => RunAction::Compact,
            Action::Check => RunAction::Check,
            Action::RestoreTest => RunAction::RestoreTest,
        }
    }
}

/// `run` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// borgmatic 1.7 configuration file (repeatable).
    #[arg(short = 'c', long = "config", required = true, action = clap::ArgAction::Append)]
    config: Vec<PathBuf>,
    /// Actions (default: create prune compact check).
    #[arg(value_enum)]
    actions: Vec<Action>,
    /// Change nothing: no repository writes, no hooks, no state or metrics.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Print statistics of create and prune.
    #[arg(long)]
    stats: bool,
    /// JSON report on standard output (one object per repository).
    #[arg(long)]
    json: bool,
    /// -1 errors only, 0 warnings and summary, 1 info, 2 debug.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true, value_parser = clap::value_parser!(i8).range(-1..=2))]
    verbosity: i8,
    /// Only this repository (path or label).
    #[arg(long)]
    repository: Option<String>,
    /// Run every configured check, whatever its frequency.
    #[arg(long)]
    force: bool,
    /// node_exporter textfile to write after the run (e.g.
    /// /var/lib/prometheus/node-exporter/rempart_backup.prom).
    #[arg(long, env = "REMPART_METRICS_FILE")]
    metrics_file: Option<PathBuf>,
    /// Where check times and carried-over metrics are kept.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where the restore test restores (default: the system temporary directory).
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
}

/// `restore-test` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct RestoreTestArgs {
    /// Where to restore (a temporary directory is made below it and removed).
    #[arg(long)]
    tmp_dir: Option<PathBuf>,
    /// JSON report.
    #[arg(long)]
    json: bool,
    /// REPO or REPO::ARCHIVE (default: the newest archive).
    target: String,
}

/// `rempart-backup restore-test REPO[::ARCHIVE]`: exit 0 when every file matches, 2 otherwise.
pub(crate) fn restore_test_cmd(a: RestoreTestArgs) -> anyhow::Result<ExitCode> {
    let (repo_path, archive) = crate::split_target(Some(&a.target))?;
    let repo = crate::open(&repo_path)?;
    let tmp = a.tmp_dir.unwrap_or_else(std::env::temp_dir);
    let r = runner::restore_test(&repo, archive.as_deref(), &tmp)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r.json())?);
    }
    for e in &r.errors {
        eprintln!("{e}");
    }
    eprintln!(
        "restore test of {}: {} files, {} items, {} restored and verified in {:.2} s, {} errors",
        r.archive,
        r.files,
        r.items,
        crate::size(r.bytes),
        r.duration.as_secs_f64(),
        r.errors.len()
    );
    Ok(if r.ok() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}

/// borgmatic's exit code for "something failed".
const FAILED: u8 = 1;

/// Log lines on standard error, as borgmatic prints them at `--verbosity`.
struct Stderr {
    verbosity: i8,
}

impl Observer for Stderr {
    fn log(&self, level: Level, message: &str) {
        if level as i8 <= self.verbosity {
            eprintln!("{message}");
        }
    }
}

/// The passphrase sources of the binary for `var` (`REMPART_PASSPHRASE` or
/// `REMPART_NEW_PASSPHRASE`), in order: `var`, `REMPART_PASSCOMMAND`, then borg's `BORG_*`
/// pair (runner::environment). The terminal prompt comes after them, from [`prompt`].
pub(crate) fn passphrase_sources(var: &str) -> Vec<PassphraseSource> {
    runner::environment::passphrase_sources(var.strip_prefix("REMPART_").unwrap_or(var))
}

/// The last resort: a prompt, only on a terminal.
pub(crate) fn prompt(text: &str) -> std::io::Result<Option<String>> {
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(text).map(Some);
    }
    Ok(None)
}

fn run_json(r: &RepoReport) -> serde_json::Value {
    serde_json::json!({
        "configuration_filename": r.configuration_filename,
        "repository": { "label": r.label, "location": r.location },
        "exit_code": r.exit_code,
        "error": r.error,
        "skipped": r.skipped,
        "duration": r.duration.as_secs_f64(),
        "warnings": r.warnings,
        "create": r.create,
        "prune": r.pruned.map(|n| serde_json::json!({ "deleted": n })),
        "compact": r.compact_freed.map(|n| serde_json::json!({ "freed": n })),
        "check": serde_json::json!({ "ran": r.checks, "success": r.check_success }),
        "restore_test": r.restore_test.as_ref().map(runner::RestoreTestReport::json),
        "archives": r.archives,
        "actions": r.actions,
    })
}

/// `rempart-backup run`.
pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let out = Stderr { verbosity: args.verbosity };
    // Every file is read and validated before anything runs.
    let mut configs = Vec::new();
    let mut bad = false;
    for p in &args.config {
        match runner::load(p) {
            Ok(c) => {
                for w in &c.warnings {
                    out.log(Level::Warning, &format!("warning: {w}"));
                }
                configs.push(c);
            }
            Err(errs) => {
                bad = true;
                for e in errs.lines() {
                    out.log(Level::Error, &format!("error: {e}"));
                }
            }
        }
    }
    if bad {
        out.log(Level::Error, "error: invalid configuration, nothing was run");
        return Ok(ExitCode::from(FAILED));
    }
    let cancel = Cancel::new();
    crate::cancel_on_signals(&cancel)?;
    let opts = RunOptions {
        actions: args.actions.iter().map(|&a| a.into()).collect(),
        dry_run: args.dry_run,
        stats: args.stats,
        repository: args.repository.clone(),
        force: args.force,
        metrics_file: args.metrics_file.clone(),
        state_dir: args.state_dir.clone().or_else(runner::state::default_dir),
        tmp_dir: args.tmp_dir.clone(),
        cache_dir: crate::env_dir("REMPART_CACHE_DIR", ".cache/rempart"),
        keys_dir: crate::keys_dir(),
        ssh: crate::SSH.get().cloned().unwrap_or_default(),
        passphrase: passphrase_sources("REMPART_PASSPHRASE"),
        prompt: Some(Arc::new(prompt)),
        cmdline: std::env::args().collect(),
        observer: Arc::new(Stderr { verbosity: args.verbosity }),
    };
    let report = runner::run(&configs, &opts, &cancel);
    if args.json {
        let v: Vec<serde_json::Value> = report.repositories.iter().map(run_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(match report.outcome {
        Outcome::Cancelled => {
            out.log(Level::Error, &report.exit_reason);
            ExitCode::from(crate::signal_exit_code(crate::SIGNAL.load(std::sync::atomic::Ordering::Relaxed)))
        }
        Outcome::Failed => ExitCode::from(FAILED),
        _ => ExitCode::SUCCESS,
    })
}
