//! One run: hooks, actions per repository, state, metrics, the report.

use crate::cancel::Cancel;
use crate::config::{CheckName, Loaded, DEFAULT_ARCHIVE_NAME_FORMAT};
use crate::hooks::{run_hooks, HookError, HookOutcome};
use crate::observe::{Event, Level, Observer, Tracing};
use crate::passphrase::{PassphraseError, PassphraseSource};
use crate::placeholders::{self, PlaceholderError};
use crate::report::{ActionOutcome, ActionReport, CreateReport, CreateStats, Outcome, RepoReport, Report};
use crate::restore_test::{restore_test, RestoreTestError, RestoreTestReport};
use crate::{metrics, state, Action};
use chrono::{DateTime, Local, Utc};
use dedupstore::backend::{Backend, LocalBackend};
use dedupstore::commands::{self, CheckOptions};
use dedupstore::create::{create, CreateOptions};
use dedupstore::extract::{extract, ExtractOptions};
use dedupstore::prune::PruneRules;
use dedupstore::remote::{RepoLocation, SshBackend, SshOptions};
use dedupstore::repo::{OpenOptions, Repository};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A prompt the caller offers as the last passphrase source (the binary's terminal prompt); it
/// gets the prompt text and returns `None` when it cannot ask.
pub type Prompt = Arc<dyn Fn(&str) -> std::io::Result<Option<String>> + Send + Sync>;

/// How to run (everything `rempart-backup run` takes on its command line, and what it took from
/// its environment).
#[derive(Clone)]
pub struct RunOptions {
    /// The actions (empty: borgmatic's default create, prune, compact, check); always run in
    /// [`Action`] order.
    pub actions: Vec<Action>,
    /// Change nothing: no repository writes, no hooks, no state or metrics.
    pub dry_run: bool,
    /// Log the statistics of create and prune (at the warning level, as `--stats`).
    pub stats: bool,
    /// Only this repository (location or label).
    pub repository: Option<String>,
    /// Run every configured check, whatever its frequency.
    pub force: bool,
    /// node_exporter textfile written after the run.
    pub metrics_file: Option<PathBuf>,
    /// Check times and carried-over metrics (see [`crate::state`]); `None`: nothing kept.
    pub state_dir: Option<PathBuf>,
    /// Where the restore test restores (default: the system temporary directory).
    pub tmp_dir: Option<PathBuf>,
    /// The files cache of create.
    pub cache_dir: Option<PathBuf>,
    /// Key files of keyfile-mode repositories.
    pub keys_dir: Option<PathBuf>,
    /// ssh for remote repositories (a configuration's `ssh_command` and `remote_path` win).
    pub ssh: SshOptions,
    /// Passphrase sources tried after the configuration's own (`encryption_passphrase`, then
    /// `encryption_passcommand`).
    pub passphrase: Vec<PassphraseSource>,
    /// The last resort when no source gave a passphrase (`None` in a daemon: no terminal).
    pub prompt: Option<Prompt>,
    /// The command line recorded in the archives.
    pub cmdline: Vec<String>,
    /// Log lines and progress events.
    pub observer: Arc<dyn Observer>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            actions: Vec::new(),
            dry_run: false,
            stats: false,
            repository: None,
            force: false,
            metrics_file: None,
            state_dir: None,
            tmp_dir: None,
            cache_dir: None,
            keys_dir: None,
            ssh: SshOptions::default(),
            passphrase: Vec::new(),
            prompt: None,
            cmdline: vec!["rempart-runner".into()],
            observer: Arc::new(Tracing),
        }
    }
}

impl fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunOptions")
            .field("actions", &self.actions)
            .field("dry_run", &self.dry_run)
            .field("repository", &self.repository)
            .field("force", &self.force)
            .field("metrics_file", &self.metrics_file)
            .field("state_dir", &self.state_dir)
            .field("passphrase", &self.passphrase)
            .field("prompt", &self.prompt.is_some())
            .finish_non_exhaustive()
    }
}

/// Why an action or a repository failed (kept as text in the report, with its causes).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The repository, its server or its data.
    #[error(transparent)]
    Repository(#[from] dedupstore::Error),
    /// A hook.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// The passcommand.
    #[error("storage.encryption_passcommand: {0}")]
    Passcommand(#[source] PassphraseError),
    /// A fallback passphrase source.
    #[error(transparent)]
    Passphrase(#[from] PassphraseError),
    /// The prompt the caller gave.
    #[error("passphrase prompt: {0}")]
    Prompt(#[source] std::io::Error),
    /// An archive name format or prefix.
    #[error(transparent)]
    Placeholder(#[from] PlaceholderError),
    /// The restore test could not run.
    #[error(transparent)]
    RestoreTest(#[from] RestoreTestError),
    /// The state directory.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// check or the restore test found damage.
    #[error("{what} found {count} {kind} (first: {first})")]
    Found {
        /// `check`, `restore test`.
        what: &'static str,
        /// How many.
        count: usize,
        /// `problems`, `mismatches`.
        kind: &'static str,
        /// The first one.
        first: String,
    },
    /// The caller cancelled the run.
    #[error("{0}")]
    Cancelled(String),
}

/// An error and its causes on one line, each cause once (`anyhow`'s `{:#}`, without repeating
/// a cause that the line already holds).
pub(crate) fn error_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        let text = c.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        cur = c.source();
    }
    line
}

/// Decimal size with borg's units (`1.50 MB`).
pub fn format_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", units[u])
    }
}

struct Ctx<'a> {
    opts: &'a RunOptions,
    actions: Vec<Action>,
    cancel: &'a Cancel,
}

impl Ctx<'_> {
    fn log(&self, level: Level, msg: impl AsRef<str>) {
        self.opts.observer.log(level, msg.as_ref());
    }
    fn has(&self, a: Action) -> bool {
        self.actions.contains(&a)
    }
    fn check_cancel(&self) -> Result<(), RunError> {
        if self.cancel.is_cancelled() {
            return Err(RunError::Cancelled(self.cancel.exit_reason()));
        }
        Ok(())
    }
}

/// Runs the configurations once (see the crate docs for the order), blocking; polls `cancel`.
///
/// The configurations are loaded and validated by the caller first ([`crate::load`]), so a bad
/// file runs nothing. Never fails as a whole: every failure is in the [`Report`].
pub fn run(configs: &[Loaded], opts: &RunOptions, cancel: &Cancel) -> Report {
    let started = Instant::now();
    let mut actions = if opts.actions.is_empty() {
        vec![Action::Create, Action::Prune, Action::Compact, Action::Check]
    } else {
        opts.actions.clone()
    };
    actions.sort();
    actions.dedup();
    let ctx = Ctx { opts, actions, cancel };
    let mut report = Report {
        outcome: Outcome::Success,
        exit_reason: String::new(),
        duration: Default::default(),
        dry_run: opts.dry_run,
        repositories: Vec::new(),
        errors: Vec::new(),
    };
    let finish = |mut r: Report| {
        r.duration = started.elapsed();
        let failed = r.errors.len() + r.repositories.iter().filter(|x| x.error.is_some()).count();
        (r.outcome, r.exit_reason) = if cancel.is_cancelled() {
            (Outcome::Cancelled, cancel.exit_reason())
        } else if failed > 0 {
            (Outcome::Failed, format!("failed: {failed} error(s)"))
        } else if r.repositories.iter().any(|x| x.exit_code == 1) {
            (Outcome::Warning, "warning".into())
        } else {
            (Outcome::Success, "success".into())
        };
        r
    };
    if let Some(r) = &opts.repository {
        if !configs.iter().any(|c| c.repositories.iter().any(|(s, _)| s.path == *r || s.name() == r)) {
            let e = format!("repository {r} is not in the configuration");
            ctx.log(Level::Error, format!("error: {e}"));
            report.errors.push(e);
            return finish(report);
        }
    }
    if ctx.has(Action::Create) {
        for c in configs {
            let vars = [("configuration_filename", c.path.as_str())];
            let log = |l: Level, m: String| ctx.log(l, format!("{}: {m}", c.path));
            if let Err(e) = run_hooks("before_everything", &c.hooks.before_everything, &vars, opts.dry_run, &log) {
                let e = format!("{}: {}", c.path, error_line(&e));
                ctx.log(Level::Error, format!("error: {e}"));
                ctx.log(Level::Error, "error: a before_everything hook failed, nothing was run");
                report.errors.push(e);
                return finish(report);
            }
        }
    }
    for c in configs {
        let start = report.repositories.len();
        for (spec, loc) in &c.repositories {
            if opts.repository.as_ref().is_some_and(|r| *r != spec.path && r != spec.name()) {
                continue;
            }
            let t = Instant::now();
            let mut r = RepoReport {
                configuration_filename: c.path.clone(),
                label: spec.name().to_string(),
                location: spec.path.clone(),
                ..Default::default()
            };
            if let Err(e) = ctx.check_cancel().and_then(|_| run_repository(&ctx, c, loc, &mut r)) {
                // the report line says the label: a message that starts with it says it once
                let line = error_line(&e);
                let label = format!("{}: ", r.label);
                r.error = Some(line.strip_prefix(&label).map(str::to_string).unwrap_or(line));
                r.exit_code = 2;
            }
            r.duration = t.elapsed();
            match &r.error {
                Some(e) => ctx.log(Level::Error, format!("error: {}: {}: {e}", c.path, r.label)),
                None => {
                    ctx.log(Level::Info, format!("{}: {}: done in {:.2} s", c.path, r.label, r.duration.as_secs_f64()))
                }
            }
            save_state(&ctx, &r);
            report.repositories.push(r);
        }
        if let Some(bad) = report.repositories[start..].iter().rev().find(|r| r.error.is_some()) {
            let err = bad.error.clone().unwrap_or_default();
            let vars = [
                ("configuration_filename", c.path.as_str()),
                ("repository", bad.location.as_str()),
                ("error", err.as_str()),
                ("output", err.as_str()),
            ];
            let log = |l: Level, m: String| ctx.log(l, format!("{}: {m}", c.path));
            if let Err(e) = run_hooks("on_error", &c.hooks.on_error, &vars, opts.dry_run, &log) {
                let e = format!("{}: {}", c.path, error_line(&e));
                ctx.log(Level::Error, format!("error: {e}"));
                report.errors.push(e);
            }
        }
    }
    if ctx.has(Action::Create) {
        for c in configs {
            let vars = [("configuration_filename", c.path.as_str())];
            let log = |l: Level, m: String| ctx.log(l, format!("{}: {m}", c.path));
            if let Err(e) = run_hooks("after_everything", &c.hooks.after_everything, &vars, opts.dry_run, &log) {
                let e = format!("{}: {}", c.path, error_line(&e));
                ctx.log(Level::Error, format!("error: {e}"));
                report.errors.push(e);
            }
        }
    }
    if let (Some(path), false) = (&opts.metrics_file, opts.dry_run) {
        let m: Vec<metrics::RepoMetrics> = report.repositories.iter().map(|r| repo_metrics(&ctx, r)).collect();
        if let Err(e) = metrics::write_atomic(path, &metrics::render(&m)) {
            let e = error_line(&e);
            ctx.log(Level::Error, format!("error: {e}"));
            report.errors.push(e);
        }
    }
    ctx.log(Level::Warning, "summary:");
    for r in &report.repositories {
        let what = match (&r.error, &r.skipped) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, Some(s)) => format!("skipped: {s}"),
            (None, None) if r.exit_code == 1 => format!("ok with {} warning(s)", r.warnings.len()),
            (None, None) => "ok".to_string(),
        };
        ctx.log(
            Level::Warning,
            format!("{}: {}: {what} ({:.2} s)", r.configuration_filename, r.label, r.duration.as_secs_f64()),
        );
    }
    finish(report)
}

/// [`run`] on tokio's blocking pool, for a tokio program (`rempart-node`): cancel with
/// `cancel.cancel(reason)` from any task, then await this for the report (the checkpoint is
/// written and the lock released by then).
pub async fn run_async(configs: Arc<Vec<Loaded>>, opts: RunOptions, cancel: Cancel) -> Report {
    let dry_run = opts.dry_run;
    let started = Instant::now();
    match tokio::task::spawn_blocking(move || run(&configs, &opts, &cancel)).await {
        Ok(r) => r,
        Err(e) => Report {
            outcome: Outcome::Failed,
            exit_reason: format!("failed: the run ended abnormally: {e}"),
            duration: started.elapsed(),
            dry_run,
            repositories: Vec::new(),
            errors: vec![format!("the run ended abnormally: {e}")],
        },
    }
}

/// The newest complete archive of a repository (see [`newest_archives`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewestArchive {
    /// Its name.
    pub name: String,
    /// When its backup started (the archive time).
    pub start: DateTime<Utc>,
    /// When its backup ended.
    pub end: DateTime<Utc>,
}

/// One repository's answer in [`newest_archives`].
#[derive(Debug)]
pub struct RepoNewest {
    /// The configuration file naming the repository.
    pub configuration_filename: String,
    /// Its label (or location).
    pub label: String,
    /// Its location.
    pub location: String,
    /// The newest complete archive (`None`: the repository holds none), or why the repository
    /// could not be read.
    pub newest: Result<Option<NewestArchive>, RunError>,
}

/// For each repository of `configs` (only `opts.repository` if set): its newest complete
/// archive, whatever its name, checkpoints (`NAME.checkpoint`) left out. Blocking; runs no
/// hook and writes nothing; the passphrase comes from the same sources as [`run`]'s.
///
/// `rempart-node` reads it when a node is told to serve, so that the next primary continues
/// the schedule of the runs its peer made (their archives may be named after the peer's host,
/// hence no name filter).
pub fn newest_archives(configs: &[Loaded], opts: &RunOptions) -> Vec<RepoNewest> {
    let cancel = Cancel::new();
    let ctx = Ctx { opts, actions: Vec::new(), cancel: &cancel };
    let mut out = Vec::new();
    for c in configs {
        for (spec, loc) in &c.repositories {
            if opts.repository.as_ref().is_some_and(|r| *r != spec.path && r != spec.name()) {
                continue;
            }
            let newest = (|| -> Result<Option<NewestArchive>, RunError> {
                let (repo, _) = open(&ctx, c, loc)?;
                let Some(e) =
                    commands::list_archives(&repo)?.into_iter().rfind(|a| !dedupstore::prune::is_checkpoint(&a.name))
                else {
                    return Ok(None);
                };
                let (e, meta) = commands::archive_info(&repo, &e.name)?;
                Ok(Some(NewestArchive {
                    name: e.name,
                    start: commands::time_of(e.time),
                    end: commands::time_of(meta.time_end.max(e.time)),
                }))
            })();
            out.push(RepoNewest {
                configuration_filename: c.path.clone(),
                label: spec.name().to_string(),
                location: spec.path.clone(),
                newest,
            });
        }
    }
    out
}

fn repo_metrics(ctx: &Ctx<'_>, r: &RepoReport) -> metrics::RepoMetrics {
    let s = ctx.opts.state_dir.as_deref().map(|d| state::load_repo(d, &r.location)).unwrap_or_default();
    metrics::RepoMetrics {
        repository: r.label.clone(),
        last_success: s.last_success.unwrap_or(0.0),
        duration: r.duration.as_secs_f64(),
        exit_code: r.exit_code,
        original_bytes: r.original_bytes.or(s.original_bytes),
        deduplicated_bytes: r.deduplicated_bytes.or(s.deduplicated_bytes),
        archives: r.archives.or(s.archives),
        check_success: r.check_success.or(s.check_success),
        restore_test_success: r.restore_test.as_ref().map(RestoreTestReport::ok).or(s.restore_test_success),
        restore_test_timestamp: r.restore_test_time.or(s.restore_test_time),
        restore_test_duration: r.restore_test.as_ref().map(|t| t.duration.as_secs_f64()).or(s.restore_test_duration),
        restore_test_files: r.restore_test.as_ref().map(|t| t.files).or(s.restore_test_files),
        reachable: r.reachable,
    }
}

/// Whether opening the repository failed because it could not be reached: its server refused
/// or did not answer (ssh exits, the connection drops), its path is missing, or another process
/// holds its lock. A wrong passphrase, a bad key or damaged data are not this: the repository
/// answered.
fn cannot_reach(e: &RunError) -> bool {
    matches!(
        e,
        RunError::Repository(
            dedupstore::Error::Io { .. } | dedupstore::Error::NotARepository(_) | dedupstore::Error::Locked { .. }
        )
    )
}

fn save_state(ctx: &Ctx<'_>, r: &RepoReport) {
    let Some(dir) = ctx.opts.state_dir.as_deref().filter(|_| !ctx.opts.dry_run) else { return };
    let mut s = state::load_repo(dir, &r.location);
    if r.error.is_none() && r.skipped.is_none() {
        s.last_success = Some(Utc::now().timestamp_millis() as f64 / 1000.0);
    }
    s.original_bytes = r.original_bytes.or(s.original_bytes);
    s.deduplicated_bytes = r.deduplicated_bytes.or(s.deduplicated_bytes);
    s.archives = r.archives.or(s.archives);
    s.check_success = r.check_success.or(s.check_success);
    s.restore_test_success = r.restore_test.as_ref().map(RestoreTestReport::ok).or(s.restore_test_success);
    s.restore_test_time = r.restore_test_time.or(s.restore_test_time);
    s.restore_test_duration = r.restore_test.as_ref().map(|t| t.duration.as_secs_f64()).or(s.restore_test_duration);
    s.restore_test_files = r.restore_test.as_ref().map(|t| t.files).or(s.restore_test_files);
    if let Err(e) = state::save_repo(dir, &s) {
        ctx.log(Level::Warning, format!("warning: state of {}: {}", r.label, error_line(&e)));
    }
}

fn passphrase(ctx: &Ctx<'_>, c: &Loaded) -> Result<Option<String>, RunError> {
    if let Some(p) = &c.storage.encryption_passphrase {
        return Ok(Some(p.clone()));
    }
    if let Some(cmd) = &c.storage.encryption_passcommand {
        return PassphraseSource::Command(cmd.clone()).resolve().map_err(RunError::Passcommand);
    }
    if let Some(p) = crate::passphrase::resolve_first(&ctx.opts.passphrase)? {
        return Ok(Some(p));
    }
    match &ctx.opts.prompt {
        Some(prompt) => prompt("Enter passphrase: ").map_err(RunError::Prompt),
        None => Ok(None),
    }
}

/// Opens a repository; also says whether its server is append-only.
fn open(ctx: &Ctx<'_>, c: &Loaded, loc: &RepoLocation) -> Result<(Repository, bool), RunError> {
    let (backend, append_only): (Arc<dyn Backend>, bool) = match loc {
        RepoLocation::Local(p) => (Arc::new(LocalBackend::new(p)), false),
        _ => {
            let mut opts = ctx.opts.ssh.clone();
            if let Some(cmd) = &c.storage.ssh_command {
                opts.rsh = cmd.clone();
            }
            if let Some(rp) = &c.location.remote_path {
                opts.remote_path = rp.clone();
            }
            let b = SshBackend::connect(loc, &opts)?;
            let ao = b.append_only();
            (Arc::new(b), ao)
        }
    };
    let cfg = Repository::read_config(backend.as_ref())?;
    let pass = if cfg.body.mode.has_key() { passphrase(ctx, c)? } else { None };
    let repo = Repository::open(backend, &OpenOptions { passphrase: pass, keys_dir: ctx.opts.keys_dir.clone() })?;
    Ok((repo, append_only))
}

/// borgmatic's archive filter for prune and check: the prefix if given, else the archive name
/// format with its time and pid placeholders as `*`.
fn archive_glob(c: &Loaded, prefix: Option<&str>) -> Result<String, PlaceholderError> {
    let now = Local::now();
    if let Some(p) = prefix {
        return Ok(format!("{}*", placeholders::expand(p, now)?));
    }
    placeholders::glob(c.storage.archive_name_format.as_deref().unwrap_or(DEFAULT_ARCHIVE_NAME_FORMAT), now)
}

type Step<'a> = (&'a str, &'a [String], &'a [String]);

/// What one action did, for its [`ActionReport`].
#[derive(Default)]
struct Done {
    skipped: Option<String>,
    archive: Option<String>,
    warning: bool,
}

fn run_repository(ctx: &Ctx<'_>, c: &Loaded, loc: &RepoLocation, r: &mut RepoReport) -> Result<(), RunError> {
    let dry = ctx.opts.dry_run;
    let tag = format!("{}: {}", c.path, r.label);
    let log = |l: Level, m: String| ctx.log(l, format!("{tag}: {m}"));
    let repo_path = r.location.clone();
    let vars = [("configuration_filename", c.path.as_str()), ("repository", repo_path.as_str())];
    let h = &c.hooks;
    let steps: [(Action, Step<'_>); 5] = [
        (Action::Create, ("backup", &h.before_backup, &h.after_backup)),
        (Action::Prune, ("prune", &h.before_prune, &h.after_prune)),
        (Action::Compact, ("compact", &h.before_compact, &h.after_compact)),
        (Action::Check, ("check", &h.before_check, &h.after_check)),
        (Action::RestoreTest, ("restore_test", &[], &[])),
    ];
    // Opened after the first before_* hook, as borgmatic runs the hook before borg connects.
    let mut opened: Option<(Repository, bool)> = None;
    for (action, (hook, before, after)) in steps {
        if !ctx.has(action) {
            continue;
        }
        let t = Instant::now();
        let mut done = Done::default();
        let res = (|| -> Result<bool, RunError> {
            ctx.check_cancel()?;
            if let HookOutcome::SoftFailure(why) = run_hooks(&format!("before_{hook}"), before, &vars, dry, &log)? {
                log(Level::Warning, format!("{why}: skipping the remaining actions"));
                r.skipped = Some(why.clone());
                done.skipped = Some(why);
                return Ok(false);
            }
            if opened.is_none() {
                ctx.log(Level::Info, format!("{tag}: opening repository {}", r.location));
                let o = open(ctx, c, loc);
                r.reachable = Some(!matches!(&o, Err(e) if cannot_reach(e)));
                opened = Some(o?);
            }
            let Some((repo, append_only)) = &opened else { return Ok(true) };
            let (repo, append_only) = (repo, *append_only);
            ctx.check_cancel()?;
            ctx.opts.observer.event(&Event::ActionStarted { repository: &r.label, action });
            match action {
                Action::Create => do_create(ctx, c, repo, r, &mut done, &log)?,
                Action::Prune => do_prune(ctx, c, repo, append_only, r, &mut done, &log)?,
                Action::Compact => do_compact(ctx, repo, append_only, r, &mut done, &log)?,
                Action::Check => do_check(ctx, c, repo, r, &mut done, &log)?,
                Action::RestoreTest => do_restore_test(ctx, repo, r, &mut done, &log)?,
            }
            run_hooks(&format!("after_{hook}"), after, &vars, dry, &log)?;
            Ok(true)
        })();
        let (outcome, error, go_on) = match &res {
            Ok(go_on) => (
                match (&done.skipped, done.warning) {
                    (Some(why), _) => ActionOutcome::Skipped(why.clone()),
                    (None, true) => ActionOutcome::Warning,
                    (None, false) => ActionOutcome::Ok,
                },
                None,
                *go_on,
            ),
            Err(RunError::Cancelled(_)) => (ActionOutcome::Cancelled, None, false),
            Err(e @ RunError::Repository(dedupstore::Error::Locked { .. })) => {
                // The lock wait ran out: the repository is as unusable as an unreachable one.
                r.reachable = Some(false);
                (ActionOutcome::Failed, Some(error_line(e)), false)
            }
            Err(e) => (ActionOutcome::Failed, Some(error_line(e)), false),
        };
        r.actions.push(ActionReport { action, outcome, duration: t.elapsed(), archive: done.archive, error });
        res?;
        if !go_on {
            break;
        }
    }
    if let (Some((repo, _)), false) = (&opened, dry) {
        r.archives = commands::list_archives(repo).ok().map(|a| a.len() as u64);
    }
    Ok(())
}

fn do_create(
    ctx: &Ctx<'_>,
    c: &Loaded,
    repo: &Repository,
    r: &mut RepoReport,
    done: &mut Done,
    log: &dyn Fn(Level, String),
) -> Result<(), RunError> {
    let dry = ctx.opts.dry_run;
    let format = c.storage.archive_name_format.as_deref().unwrap_or(DEFAULT_ARCHIVE_NAME_FORMAT);
    let name = placeholders::expand(format, Local::now())?;
    log(Level::Info, format!("creating archive {name}{}", if dry { " (dry run)" } else { "" }));
    let mut opts =
        CreateOptions::new(name, c.location.source_directories.iter().map(PathBuf::from).collect::<Vec<_>>());
    opts.compression = c.compression;
    opts.excludes = c.excludes.clone();
    opts.paths.extend(c.patterns.roots().iter().map(PathBuf::from));
    opts.patterns = c.patterns.clone();
    opts.exclude_caches = c.location.exclude_caches;
    opts.exclude_if_present = c.location.exclude_if_present.clone();
    opts.keep_exclude_tags = c.location.keep_exclude_tags;
    opts.files_cache = c.files_cache;
    opts.one_file_system = c.location.one_file_system;
    opts.dry_run = dry;
    opts.cache_dir = ctx.opts.cache_dir.clone();
    opts.cmdline = ctx.opts.cmdline.clone();
    // the caller's token is the flag create polls: it stops within a chunk, commits the
    // checkpoint archive and releases the lock before returning Interrupted
    opts.cancel = Some(ctx.cancel.flag());
    let t = Instant::now();
    let mut warnings = Vec::new();
    let observer = &ctx.opts.observer;
    let label = r.label.clone();
    let res = create(repo, &opts, &mut |e| match e {
        dedupstore::create::Event::Warning(w) => warnings.push(w.to_string()),
        dedupstore::create::Event::Item { status, path } => {
            observer.event(&Event::CreateItem { repository: &label, status, path })
        }
        dedupstore::create::Event::Checkpoint { name } => {
            observer.event(&Event::Checkpoint { repository: &label, name })
        }
        _ => {}
    });
    let res = match res {
        Ok(res) => res,
        Err(dedupstore::Error::Interrupted { checkpoint }) => {
            let what = match &checkpoint {
                Some(cp) => format!("checkpoint archive {cp} written"),
                None => "no checkpoint (dry run)".into(),
            };
            log(Level::Warning, format!("{}: create stopped, {what}", ctx.cancel.exit_reason()));
            done.archive = checkpoint;
            return Err(RunError::Cancelled(format!("{} ({what})", ctx.cancel.exit_reason())));
        }
        Err(e) => return Err(e.into()),
    };
    let dur = t.elapsed().as_secs_f64();
    for w in &warnings {
        log(Level::Warning, format!("warning: {w}"));
    }
    if !warnings.is_empty() {
        r.exit_code = r.exit_code.max(1);
        done.warning = true;
    }
    r.warnings.extend(warnings);
    let a = &res.archive;
    if ctx.opts.stats {
        log(
            Level::Warning,
            format!(
                "archive {}: {} files, original {}, compressed {}, deduplicated {}, {dur:.2} s",
                a.name,
                a.stats.nfiles,
                format_size(a.stats.original_size),
                format_size(a.stats.compressed_size),
                format_size(a.stats.deduplicated_size)
            ),
        );
    }
    if !dry {
        r.original_bytes = Some(a.stats.original_size);
        r.deduplicated_bytes = Some(a.stats.deduplicated_size);
    }
    done.archive = Some(a.name.clone());
    r.create = Some(CreateReport {
        name: a.name.clone(),
        id: res.id.to_hex(),
        duration: dur,
        stats: CreateStats {
            original_size: a.stats.original_size,
            compressed_size: a.stats.compressed_size,
            deduplicated_size: a.stats.deduplicated_size,
            nfiles: a.stats.nfiles,
        },
    });
    Ok(())
}

fn do_prune(
    ctx: &Ctx<'_>,
    c: &Loaded,
    repo: &Repository,
    append_only: bool,
    r: &mut RepoReport,
    done: &mut Done,
    log: &dyn Fn(Level, String),
) -> Result<(), RunError> {
    let k = &c.retention;
    let rules = PruneRules {
        within: k.keep_within.clone(),
        secondly: k.keep_secondly,
        minutely: k.keep_minutely,
        hourly: k.keep_hourly,
        daily: k.keep_daily,
        weekly: k.keep_weekly,
        monthly: k.keep_monthly,
        yearly: k.keep_yearly,
    };
    if !rules.any() {
        log(Level::Warning, "warning: no retention rules (retention.keep_*): prune skipped".into());
        done.skipped = Some("no retention rules".into());
        return Ok(());
    }
    if append_only {
        log(
            Level::Warning,
            "warning: the server is append-only: prune skipped (the operator prunes on the backup \
             host, see docs/backup-remote.md)"
                .into(),
        );
        done.skipped = Some("append-only server".into());
        return Ok(());
    }
    let dry = ctx.opts.dry_run;
    let glob = archive_glob(c, k.prefix.as_deref())?;
    let plan = commands::prune_repo_plan(repo, &rules, Some(&glob), Utc::now())?;
    let doomed = plan.to_delete();
    for (a, keep) in &plan.decisions {
        let line = format!("{:<40} {}", a.name, a.time.with_timezone(&Local).format("%a, %Y-%m-%d %H:%M:%S"));
        match keep {
            Some(k) => log(Level::Debug, format!("keeping archive (rule: {} #{}): {line}", k.rule, k.n)),
            None if dry => log(Level::Info, format!("would prune: {line}")),
            None => log(Level::Info, format!("pruning archive: {line}")),
        }
    }
    let n = if dry { doomed.len() } else { commands::prune_apply(repo, &plan)? };
    if ctx.opts.stats {
        log(Level::Warning, format!("prune ({glob}): {} archives kept, {n} deleted", plan.kept().len()));
    }
    r.pruned = Some(n);
    Ok(())
}

fn do_compact(
    ctx: &Ctx<'_>,
    repo: &Repository,
    append_only: bool,
    r: &mut RepoReport,
    done: &mut Done,
    log: &dyn Fn(Level, String),
) -> Result<(), RunError> {
    if append_only {
        log(Level::Warning, "warning: the server is append-only: compact skipped".into());
        done.skipped = Some("append-only server".into());
        return Ok(());
    }
    let plan = commands::compact_plan(repo, 10)?;
    if !ctx.opts.dry_run {
        commands::compact_apply(repo, &plan)?;
    }
    log(
        Level::Info,
        format!(
            "compact: {} packs rewritten, {} deleted, about {} freed{}",
            plan.repack.len(),
            plan.delete.len() + plan.orphans.len(),
            format_size(plan.freed),
            if ctx.opts.dry_run { " (dry run)" } else { "" }
        ),
    );
    r.compact_freed = Some(plan.freed);
    Ok(())
}

/// Which configured checks are due now.
fn due_checks(ctx: &Ctx<'_>, c: &Loaded, repo_id: &str, now: DateTime<Utc>) -> Vec<CheckName> {
    c.checks
        .iter()
        .filter(|(name, freq)| {
            let Some(freq) = freq else { return true };
            if ctx.opts.force {
                return true;
            }
            let last = ctx.opts.state_dir.as_deref().and_then(|d| state::last_check(d, repo_id, name.as_str()));
            last.is_none_or(|t| (now - t).to_std().unwrap_or_default() >= *freq)
        })
        .map(|(n, _)| *n)
        .collect()
}

fn do_check(
    ctx: &Ctx<'_>,
    c: &Loaded,
    repo: &Repository,
    r: &mut RepoReport,
    done: &mut Done,
    log: &dyn Fn(Level, String),
) -> Result<(), RunError> {
    let now = Utc::now();
    let repo_id = repo.config().id.clone();
    let due = due_checks(ctx, c, &repo_id, now);
    let skipped: Vec<&str> = c.checks.iter().filter(|(n, _)| !due.contains(n)).map(|(n, _)| n.as_str()).collect();
    if !skipped.is_empty() {
        log(Level::Info, format!("checks not due yet (frequency): {}", skipped.join(", ")));
    }
    if due.is_empty() {
        done.skipped = Some("no check due".into());
        return Ok(());
    }
    if ctx.opts.dry_run {
        let names: Vec<&str> = due.iter().map(|n| n.as_str()).collect();
        log(Level::Info, format!("dry run: skipping checks {}", names.join(", ")));
        done.skipped = Some("dry run".into());
        return Ok(());
    }
    let mut errors = Vec::new();
    let has = |n: CheckName| due.contains(&n);
    // borgmatic 1.7's mapping: repository alone => --repository-only, archives alone =>
    // --archives-only, data => --verify-data (implies the archives check); check_last and the
    // prefix select archives.
    let (repo_check, archives_check) = (has(CheckName::Repository), has(CheckName::Archives) || has(CheckName::Data));
    if repo_check || archives_check {
        let opts = CheckOptions {
            verify_data: has(CheckName::Data),
            repository_only: !archives_check,
            archives_only: !repo_check,
            glob: archives_check.then(|| archive_glob(c, c.consistency.prefix.as_deref())).transpose()?,
            last: c.consistency.check_last.filter(|_| archives_check).map(|n| n as usize),
            ..Default::default()
        };
        log(
            Level::Info,
            format!(
                "checking{}{}{}",
                if repo_check { " the repository" } else { "" },
                match (archives_check, opts.last) {
                    (false, _) => String::new(),
                    (true, Some(n)) => format!(" the newest {n} archives"),
                    (true, None) => " the archives".into(),
                },
                if opts.verify_data { " and every chunk they use (data)" } else { "" }
            ),
        );
        errors.extend(commands::check(repo, opts)?.errors);
    }
    if has(CheckName::Extract) {
        ctx.check_cancel()?;
        let newest = commands::list_archives(repo)?.into_iter().rfind(|a| !dedupstore::prune::is_checkpoint(&a.name));
        if let Some(a) = newest {
            log(Level::Info, format!("extract check: reading and verifying archive {}", a.name));
            let x = extract(repo, &a.name, &ExtractOptions { dry_run: true, ..Default::default() })?;
            errors.extend(x.errors);
        }
    }
    r.checks = due.iter().map(|n| n.as_str()).collect();
    r.check_success = Some(errors.is_empty());
    if let Some(first) = errors.first() {
        for e in &errors {
            log(Level::Error, format!("check: {e}"));
        }
        return Err(RunError::Found { what: "check", count: errors.len(), kind: "problems", first: first.clone() });
    }
    if let Some(dir) = &ctx.opts.state_dir {
        for n in &due {
            state::record_check(dir, &repo_id, n.as_str(), now)?;
        }
    }
    log(Level::Info, format!("checks passed: {}", r.checks.join(", ")));
    Ok(())
}

fn do_restore_test(
    ctx: &Ctx<'_>,
    repo: &Repository,
    r: &mut RepoReport,
    done: &mut Done,
    log: &dyn Fn(Level, String),
) -> Result<(), RunError> {
    if ctx.opts.dry_run {
        log(Level::Info, "dry run: restore test skipped".into());
        done.skipped = Some("dry run".into());
        return Ok(());
    }
    let tmp = ctx.opts.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let rep = restore_test(repo, None, &tmp)?;
    log(
        Level::Warning,
        format!(
            "restore test of {}: {} files, {} verified in {:.2} s, {} errors",
            rep.archive,
            rep.files,
            format_size(rep.bytes),
            rep.duration.as_secs_f64(),
            rep.errors.len()
        ),
    );
    let errs = rep.errors.clone();
    done.archive = Some(rep.archive.clone());
    r.restore_test = Some(rep);
    r.restore_test_time = Some(Utc::now().timestamp_millis() as f64 / 1000.0);
    if let Some(first) = errs.first() {
        for e in &errs {
            log(Level::Error, format!("restore test: {e}"));
        }
        return Err(RunError::Found {
            what: "restore test",
            count: errs.len(),
            kind: "mismatches",
            first: first.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_glob_follows_borgmatic() {
        let c = crate::config::parse("c", "location:\n  source_directories: [/x]\n  repositories: [/r]\n").unwrap();
        let host = dedupstore::repo::hostname();
        let short = host.split('.').next().unwrap().to_string();
        assert_eq!(archive_glob(&c, None).unwrap(), format!("{short}-*"));
        assert_eq!(archive_glob(&c, Some("db-")).unwrap(), "db-*");
        let c = crate::config::parse(
            "c",
            "location:\n  source_directories: [/x]\n  repositories: [/r]\nstorage:\n  archive_name_format: 'x-{now:%Y}-{pid}'\n",
        )
        .unwrap();
        assert_eq!(archive_glob(&c, None).unwrap(), "x-*-*");
    }

    #[test]
    fn error_line_keeps_each_cause_once() {
        let e = RunError::Passcommand(crate::passphrase::run_passcommand("exit 4").unwrap_err());
        // (starts_with: sh may add a getcwd warning when another test removed the directory)
        let line = error_line(&e);
        assert!(
            line.starts_with("storage.encryption_passcommand: passcommand \"exit 4\" failed with exit status: 4"),
            "{line}"
        );
        assert_eq!(line.matches("passcommand \"exit 4\"").count(), 1, "{line}");
        assert_eq!(format_size(999), "999 B");
        assert_eq!(format_size(1_500_000), "1.50 MB");
    }
}
