//! `rempart-backup run -c FILE`: borgmatic 1.7's runner, reading its YAML as it is.
//!
//! ```text
//!  before_everything (each file, if create runs)
//!  for each file, for each repository (a failure stops that repository only):
//!      open (local path or ssh) ─► before_backup ─► create ─► after_backup
//!        ─► before_prune ─► prune (retention, prefix) ─► after_prune
//!        ─► before_compact ─► compact ─► after_compact
//!        ─► before_check ─► check (due checks only: frequency + state file) ─► after_check
//!        ─► restore-test (when asked)
//!  on_error (each file with a failed repository: {repository} {error} {output})
//!  after_everything (each file, if create runs, also after failures)
//!  metrics textfile (atomically), --json report, summary
//! ```
//!
//! Exit codes are borgmatic's: 0 when every repository succeeded (borg warnings included), 1
//! when anything failed (a repository, a hook, a configuration file), 2 for a usage error.
//! Against an append-only server, prune and compact are skipped with a warning: the operator
//! runs them on the backup host (see docs/backup-remote.md).

mod config;
mod hooks;
mod metrics;
mod restore_test;
mod state;

use anyhow::{anyhow, Context};
use chrono::{DateTime, Local, Utc};
use config::{CheckName, Loaded, DEFAULT_ARCHIVE_NAME_FORMAT};
use dedupstore::backend::{Backend, LocalBackend};
use dedupstore::commands::{self, CheckOptions};
use dedupstore::create::{create, CreateOptions, Event};
use dedupstore::extract::{extract, ExtractOptions};
use dedupstore::prune::PruneRules;
use dedupstore::remote::{RepoLocation, SshBackend};
use dedupstore::repo::{OpenOptions, Repository};
use hooks::{run_hooks, HookOutcome};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(crate) use restore_test::{restore_test, RestoreTestReport};

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

fn report_json(r: &RestoreTestReport) -> serde_json::Value {
    serde_json::json!({
        "archive": r.archive, "duration": r.duration.as_secs_f64(), "items": r.items,
        "files": r.files, "bytes": r.bytes, "errors": r.errors, "success": r.ok(),
    })
}

/// `rempart-backup restore-test REPO[::ARCHIVE]`: exit 0 when every file matches, 2 otherwise.
pub(crate) fn restore_test_cmd(a: RestoreTestArgs) -> anyhow::Result<ExitCode> {
    let (repo_path, archive) = crate::split_target(Some(&a.target))?;
    let repo = crate::open(&repo_path)?;
    let tmp = a.tmp_dir.unwrap_or_else(std::env::temp_dir);
    let r = restore_test(&repo, archive.as_deref(), &tmp)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report_json(&r))?);
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

/// The result of one repository in one run.
#[derive(Debug, Default)]
struct RepoRun {
    config: String,
    name: String,
    path: String,
    /// borg's code: 0 ok, 1 warning, 2 error.
    code: u8,
    error: Option<String>,
    skipped: Option<String>,
    duration: Duration,
    warnings: Vec<String>,
    created: Option<serde_json::Value>,
    original_bytes: Option<u64>,
    deduplicated_bytes: Option<u64>,
    pruned: Option<usize>,
    compact_freed: Option<u64>,
    checks: Vec<&'static str>,
    check_success: Option<bool>,
    restore: Option<RestoreTestReport>,
    archives: Option<u64>,
}

struct Ctx<'a> {
    args: &'a RunArgs,
    actions: Vec<Action>,
    state_dir: Option<PathBuf>,
}

impl Ctx<'_> {
    fn log(&self, level: i8, msg: impl AsRef<str>) {
        if level <= self.args.verbosity {
            eprintln!("{}", msg.as_ref());
        }
    }
    fn has(&self, a: Action) -> bool {
        self.actions.contains(&a)
    }
}

/// `rempart-backup run`.
pub(crate) fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut actions = if args.actions.is_empty() {
        vec![Action::Create, Action::Prune, Action::Compact, Action::Check]
    } else {
        args.actions.clone()
    };
    actions.sort();
    actions.dedup();
    let ctx = Ctx { args: &args, actions, state_dir: args.state_dir.clone().or_else(state::default_dir) };
    // Every file is read and validated before anything runs.
    let mut configs = Vec::new();
    let mut bad = false;
    for p in &args.config {
        match config::load(p) {
            Ok(c) => {
                for w in &c.warnings {
                    ctx.log(0, format!("warning: {w}"));
                }
                configs.push(c);
            }
            Err(errs) => {
                bad = true;
                for e in errs {
                    ctx.log(-1, format!("error: {e}"));
                }
            }
        }
    }
    if bad {
        ctx.log(-1, "error: invalid configuration, nothing was run");
        return Ok(ExitCode::from(FAILED));
    }
    if let Some(r) = &args.repository {
        if !configs.iter().any(|c| c.repositories.iter().any(|(s, _)| s.path == *r || s.name() == r)) {
            ctx.log(-1, format!("error: repository {r} is not in the configuration"));
            return Ok(ExitCode::from(FAILED));
        }
    }
    let mut failed = false;
    if ctx.has(Action::Create) {
        for c in &configs {
            let ctx_vars = [("configuration_filename", c.path.as_str())];
            let log = |l: i8, m: String| ctx.log(l, format!("{}: {m}", c.path));
            if let Err(e) = run_hooks("before_everything", &c.hooks.before_everything, &ctx_vars, args.dry_run, &log) {
                ctx.log(-1, format!("error: {}: {e:#}", c.path));
                ctx.log(-1, "error: a before_everything hook failed, nothing was run");
                return Ok(ExitCode::from(FAILED));
            }
        }
    }
    let mut runs: Vec<RepoRun> = Vec::new();
    for c in &configs {
        let start = runs.len();
        for (spec, loc) in &c.repositories {
            if args.repository.as_ref().is_some_and(|r| *r != spec.path && r != spec.name()) {
                continue;
            }
            let t = Instant::now();
            let mut r = RepoRun {
                config: c.path.clone(),
                name: spec.name().to_string(),
                path: spec.path.clone(),
                ..Default::default()
            };
            if let Err(e) = run_repository(&ctx, c, loc, &mut r) {
                r.error = Some(format!("{e:#}"));
                r.code = 2;
            }
            r.duration = t.elapsed();
            match &r.error {
                Some(e) => ctx.log(-1, format!("error: {}: {}: {e}", c.path, r.name)),
                None => ctx.log(1, format!("{}: {}: done in {:.2} s", c.path, r.name, r.duration.as_secs_f64())),
            }
            save_state(&ctx, &r);
            runs.push(r);
        }
        if let Some(bad) = runs[start..].iter().rev().find(|r| r.error.is_some()) {
            failed = true;
            let err = bad.error.clone().unwrap_or_default();
            let vars = [
                ("configuration_filename", c.path.as_str()),
                ("repository", bad.path.as_str()),
                ("error", err.as_str()),
                ("output", err.as_str()),
            ];
            let log = |l: i8, m: String| ctx.log(l, format!("{}: {m}", c.path));
            if let Err(e) = run_hooks("on_error", &c.hooks.on_error, &vars, args.dry_run, &log) {
                ctx.log(-1, format!("error: {}: {e:#}", c.path));
            }
        }
    }
    if ctx.has(Action::Create) {
        for c in &configs {
            let vars = [("configuration_filename", c.path.as_str())];
            let log = |l: i8, m: String| ctx.log(l, format!("{}: {m}", c.path));
            if let Err(e) = run_hooks("after_everything", &c.hooks.after_everything, &vars, args.dry_run, &log) {
                failed = true;
                ctx.log(-1, format!("error: {}: {e:#}", c.path));
            }
        }
    }
    if let (Some(path), false) = (&args.metrics_file, args.dry_run) {
        let m: Vec<metrics::RepoMetrics> = runs.iter().map(|r| repo_metrics(&ctx, r)).collect();
        if let Err(e) = metrics::write_atomic(path, &metrics::render(&m)) {
            failed = true;
            ctx.log(-1, format!("error: {e:#}"));
        }
    }
    if args.json {
        let v: Vec<serde_json::Value> = runs.iter().map(run_json).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    ctx.log(0, "summary:");
    for r in &runs {
        let what = match (&r.error, &r.skipped) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, Some(s)) => format!("skipped: {s}"),
            (None, None) if r.code == 1 => format!("ok with {} warning(s)", r.warnings.len()),
            (None, None) => "ok".to_string(),
        };
        ctx.log(0, format!("{}: {}: {what} ({:.2} s)", r.config, r.name, r.duration.as_secs_f64()));
    }
    Ok(if failed { ExitCode::from(FAILED) } else { ExitCode::SUCCESS })
}

fn run_json(r: &RepoRun) -> serde_json::Value {
    serde_json::json!({
        "configuration_filename": r.config,
        "repository": { "label": r.name, "location": r.path },
        "exit_code": r.code,
        "error": r.error,
        "skipped": r.skipped,
        "duration": r.duration.as_secs_f64(),
        "warnings": r.warnings,
        "create": r.created,
        "prune": r.pruned.map(|n| serde_json::json!({ "deleted": n })),
        "compact": r.compact_freed.map(|n| serde_json::json!({ "freed": n })),
        "check": serde_json::json!({ "ran": r.checks, "success": r.check_success }),
        "restore_test": r.restore.as_ref().map(report_json),
        "archives": r.archives,
    })
}

fn repo_metrics(ctx: &Ctx<'_>, r: &RepoRun) -> metrics::RepoMetrics {
    let s = ctx.state_dir.as_deref().map(|d| state::load_repo(d, &r.path)).unwrap_or_default();
    metrics::RepoMetrics {
        repository: r.name.clone(),
        last_success: s.last_success.unwrap_or(0.0),
        duration: r.duration.as_secs_f64(),
        exit_code: r.code,
        original_bytes: r.original_bytes.or(s.original_bytes),
        deduplicated_bytes: r.deduplicated_bytes.or(s.deduplicated_bytes),
        archives: r.archives.or(s.archives),
        check_success: r.check_success.or(s.check_success),
        restore_test_success: r.restore.as_ref().map(RestoreTestReport::ok).or(s.restore_test_success),
    }
}

fn save_state(ctx: &Ctx<'_>, r: &RepoRun) {
    let Some(dir) = ctx.state_dir.as_deref().filter(|_| !ctx.args.dry_run) else { return };
    let mut s = state::load_repo(dir, &r.path);
    if r.error.is_none() && r.skipped.is_none() {
        s.last_success = Some(Utc::now().timestamp_millis() as f64 / 1000.0);
    }
    s.original_bytes = r.original_bytes.or(s.original_bytes);
    s.deduplicated_bytes = r.deduplicated_bytes.or(s.deduplicated_bytes);
    s.archives = r.archives.or(s.archives);
    s.check_success = r.check_success.or(s.check_success);
    s.restore_test_success = r.restore.as_ref().map(RestoreTestReport::ok).or(s.restore_test_success);
    if let Err(e) = state::save_repo(dir, &s) {
        ctx.log(0, format!("warning: state of {}: {e:#}", r.name));
    }
}

fn passphrase(c: &Loaded) -> anyhow::Result<Option<String>> {
    if let Some(p) = &c.storage.encryption_passphrase {
        return Ok(Some(p.clone()));
    }
    if let Some(cmd) = &c.storage.encryption_passcommand {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("storage.encryption_passcommand")?;
        anyhow::ensure!(out.status.success(), "storage.encryption_passcommand failed with {}", out.status);
        let s = String::from_utf8(out.stdout).context("storage.encryption_passcommand output")?;
        return Ok(Some(s.trim_end_matches('\n').to_string()));
    }
    crate::passphrase("Enter passphrase: ", "REMPART_PASSPHRASE")
}

/// Opens a repository; also says whether its server is append-only.
fn open(c: &Loaded, loc: &RepoLocation) -> anyhow::Result<(Repository, bool)> {
    let (backend, append_only): (Arc<dyn Backend>, bool) = match loc {
        RepoLocation::Local(p) => (Arc::new(LocalBackend::new(p)), false),
        _ => {
            let mut opts = crate::SSH.get().cloned().unwrap_or_default();
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
    let pass = if cfg.body.mode.has_key() { passphrase(c)? } else { None };
    let repo = Repository::open(backend, &OpenOptions { passphrase: pass, keys_dir: crate::keys_dir() })?;
    Ok((repo, append_only))
}

/// borgmatic's archive filter for prune and check: the prefix if given, else the archive name
/// format with its time and pid placeholders as `*`.
fn archive_glob(c: &Loaded, prefix: Option<&str>) -> anyhow::Result<String> {
    let now = Local::now();
    if let Some(p) = prefix {
        return Ok(format!("{}*", crate::placeholders(p, now)?));
    }
    let f = c.storage.archive_name_format.as_deref().unwrap_or(DEFAULT_ARCHIVE_NAME_FORMAT);
    let mut out = String::new();
    let mut rest = f;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}').map(|j| j + i).ok_or_else(|| anyhow!("unclosed placeholder in {f:?}"))?;
        let ph = &rest[i..=j];
        let key = ph[1..ph.len() - 1].split(':').next().unwrap_or("");
        if matches!(key, "now" | "utcnow" | "pid") {
            out.push('*');
        } else {
            out.push_str(&crate::placeholders(ph, now)?);
        }
        rest = &rest[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

type Step<'a> = (&'a str, &'a [String], &'a [String]);

fn run_repository(ctx: &Ctx<'_>, c: &Loaded, loc: &RepoLocation, r: &mut RepoRun) -> anyhow::Result<()> {
    let dry = ctx.args.dry_run;
    let tag = format!("{}: {}", c.path, r.name);
    let log = |l: i8, m: String| ctx.log(l, format!("{tag}: {m}"));
    let repo_path = r.path.clone();
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
        if let HookOutcome::SoftFailure(why) = run_hooks(&format!("before_{hook}"), before, &vars, dry, &log)? {
            log(0, format!("{why}: skipping the remaining actions"));
            r.skipped = Some(why);
            break;
        }
        if opened.is_none() {
            ctx.log(1, format!("{tag}: opening repository {}", r.path));
            opened = Some(open(c, loc)?);
        }
        let Some((repo, append_only)) = &opened else { continue };
        let (repo, append_only) = (repo, *append_only);
        match action {
            Action::Create => do_create(ctx, c, repo, r, &log)?,
            Action::Prune => do_prune(ctx, c, repo, append_only, r, &log)?,
            Action::Compact => do_compact(ctx, repo, append_only, r, &log)?,
            Action::Check => do_check(ctx, c, repo, r, &log)?,
            Action::RestoreTest => do_restore_test(ctx, repo, r, &log)?,
        }
        run_hooks(&format!("after_{hook}"), after, &vars, dry, &log)?;
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
    r: &mut RepoRun,
    log: &dyn Fn(i8, String),
) -> anyhow::Result<()> {
    let format = c.storage.archive_name_format.as_deref().unwrap_or(DEFAULT_ARCHIVE_NAME_FORMAT);
    let name = crate::placeholders(format, Local::now())?;
    log(1, format!("creating archive {name}{}", if ctx.args.dry_run { " (dry run)" } else { "" }));
    let mut opts =
        CreateOptions::new(name, c.location.source_directories.iter().map(PathBuf::from).collect::<Vec<_>>());
    opts.compression = c.compression;
    opts.excludes = c.excludes.clone();
    opts.one_file_system = c.location.one_file_system;
    opts.dry_run = ctx.args.dry_run;
    opts.cache_dir = crate::env_dir("REMPART_CACHE_DIR", ".cache/rempart");
    opts.cmdline = std::env::args().collect();
    let t = Instant::now();
    let mut warnings = Vec::new();
    let res = create(repo, &opts, &mut |e| {
        if let Event::Warning(w) = e {
            warnings.push(w.to_string());
        }
    })?;
    let dur = t.elapsed().as_secs_f64();
    for w in &warnings {
        log(0, format!("warning: {w}"));
    }
    if !warnings.is_empty() {
        r.code = r.code.max(1);
    }
    r.warnings.extend(warnings);
    let a = &res.archive;
    if ctx.args.stats {
        log(
            0,
            format!(
                "archive {}: {} files, original {}, compressed {}, deduplicated {}, {dur:.2} s",
                a.name,
                a.stats.nfiles,
                crate::size(a.stats.original_size),
                crate::size(a.stats.compressed_size),
                crate::size(a.stats.deduplicated_size)
            ),
        );
    }
    if !ctx.args.dry_run {
        r.original_bytes = Some(a.stats.original_size);
        r.deduplicated_bytes = Some(a.stats.deduplicated_size);
    }
    r.created = Some(serde_json::json!({
        "name": a.name, "id": res.id.to_hex(), "duration": dur,
        "stats": {
            "original_size": a.stats.original_size, "compressed_size": a.stats.compressed_size,
            "deduplicated_size": a.stats.deduplicated_size, "nfiles": a.stats.nfiles,
        },
    }));
    Ok(())
}

fn do_prune(
    ctx: &Ctx<'_>,
    c: &Loaded,
    repo: &Repository,
    append_only: bool,
    r: &mut RepoRun,
    log: &dyn Fn(i8, String),
) -> anyhow::Result<()> {
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
        log(0, "warning: no retention rules (retention.keep_*): prune skipped".into());
        return Ok(());
    }
    if append_only {
        log(
            0,
            "warning: the server is append-only: prune skipped (the operator prunes on the backup \
             host, see docs/backup-remote.md)"
                .into(),
        );
        return Ok(());
    }
    let glob = archive_glob(c, k.prefix.as_deref())?;
    let plan = commands::prune_repo_plan(repo, &rules, Some(&glob), Utc::now())?;
    let doomed = plan.to_delete();
    for (a, keep) in &plan.decisions {
        let line = format!("{:<40} {}", a.name, a.time.with_timezone(&Local).format("%a, %Y-%m-%d %H:%M:%S"));
        match keep {
            Some(k) => log(2, format!("keeping archive (rule: {} #{}): {line}", k.rule, k.n)),
            None if ctx.args.dry_run => log(1, format!("would prune: {line}")),
            None => log(1, format!("pruning archive: {line}")),
        }
    }
    let n = if ctx.args.dry_run { doomed.len() } else { commands::prune_apply(repo, &plan)? };
    if ctx.args.stats {
        log(0, format!("prune ({glob}): {} archives kept, {n} deleted", plan.kept().len()));
    }
    r.pruned = Some(n);
    Ok(())
}

fn do_compact(
    ctx: &Ctx<'_>,
    repo: &Repository,
    append_only: bool,
    r: &mut RepoRun,
    log: &dyn Fn(i8, String),
) -> anyhow::Result<()> {
    if append_only {
        log(0, "warning: the server is append-only: compact skipped".into());
        return Ok(());
    }
    let plan = commands::compact_plan(repo, 10)?;
    if !ctx.args.dry_run {
        commands::compact_apply(repo, &plan)?;
    }
    log(
        1,
        format!(
            "compact: {} packs rewritten, {} deleted, about {} freed{}",
            plan.repack.len(),
            plan.delete.len() + plan.orphans.len(),
            crate::size(plan.freed),
            if ctx.args.dry_run { " (dry run)" } else { "" }
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
            if ctx.args.force {
                return true;
            }
            let last = ctx.state_dir.as_deref().and_then(|d| state::last_check(d, repo_id, name.as_str()));
            last.is_none_or(|t| (now - t).to_std().unwrap_or_default() >= *freq)
        })
        .map(|(n, _)| *n)
        .collect()
}

fn do_check(
    ctx: &Ctx<'_>,
    c: &Loaded,
    repo: &Repository,
    r: &mut RepoRun,
    log: &dyn Fn(i8, String),
) -> anyhow::Result<()> {
    let now = Utc::now();
    let repo_id = repo.config().id.clone();
    let due = due_checks(ctx, c, &repo_id, now);
    let skipped: Vec<&str> = c.checks.iter().filter(|(n, _)| !due.contains(n)).map(|(n, _)| n.as_str()).collect();
    if !skipped.is_empty() {
        log(1, format!("checks not due yet (frequency): {}", skipped.join(", ")));
    }
    if due.is_empty() {
        return Ok(());
    }
    if ctx.args.dry_run {
        log(1, format!("dry run: skipping checks {}", due.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")));
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
            1,
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
        let newest = commands::list_archives(repo)?.into_iter().rfind(|a| !dedupstore::prune::is_checkpoint(&a.name));
        if let Some(a) = newest {
            log(1, format!("extract check: reading and verifying archive {}", a.name));
            let x = extract(repo, &a.name, &ExtractOptions { dry_run: true, ..Default::default() })?;
            errors.extend(x.errors);
        }
    }
    r.checks = due.iter().map(|n| n.as_str()).collect();
    r.check_success = Some(errors.is_empty());
    if !errors.is_empty() {
        for e in &errors {
            log(-1, format!("check: {e}"));
        }
        anyhow::bail!("check found {} problems (first: {})", errors.len(), errors[0]);
    }
    if let Some(dir) = &ctx.state_dir {
        for n in &due {
            state::record_check(dir, &repo_id, n.as_str(), now)?;
        }
    }
    log(1, format!("checks passed: {}", r.checks.join(", ")));
    Ok(())
}

fn do_restore_test(ctx: &Ctx<'_>, repo: &Repository, r: &mut RepoRun, log: &dyn Fn(i8, String)) -> anyhow::Result<()> {
    if ctx.args.dry_run {
        log(1, "dry run: restore test skipped".into());
        return Ok(());
    }
    let tmp = ctx.args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);
    let rep = restore_test(repo, None, Path::new(&tmp))?;
    log(
        0,
        format!(
            "restore test of {}: {} files, {} verified in {:.2} s, {} errors",
            rep.archive,
            rep.files,
            crate::size(rep.bytes),
            rep.duration.as_secs_f64(),
            rep.errors.len()
        ),
    );
    let errs = rep.errors.clone();
    r.restore = Some(rep);
    if let Some(first) = errs.first() {
        for e in &errs {
            log(-1, format!("restore test: {e}"));
        }
        anyhow::bail!("restore test found {} mismatches (first: {first})", errs.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_glob_follows_borgmatic() {
        let c = config::parse("c", "location:\n  source_directories: [/x]\n  repositories: [/r]\n").unwrap();
        let host = dedupstore::repo::hostname();
        let short = host.split('.').next().unwrap().to_string();
        assert_eq!(archive_glob(&c, None).unwrap(), format!("{short}-*"));
        assert_eq!(archive_glob(&c, Some("db-")).unwrap(), "db-*");
        let c = config::parse(
            "c",
            "location:\n  source_directories: [/x]\n  repositories: [/r]\nstorage:\n  archive_name_format: 'x-{now:%Y}-{pid}'\n",
        )
        .unwrap();
        assert_eq!(archive_glob(&c, None).unwrap(), "x-*-*");
    }
}
