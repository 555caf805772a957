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

/// What a run does (borgmatic's action names). `init` runs first; create, prune, compact,
/// check and restore-test (the runner's engine) always in that order; then `list`, `info`,
/// `extract` and `mount`, which run the matching `rempart-backup` command on each repository.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Action {
    Create,
    Prune,
    Compact,
    Check,
    /// Restore the newest archive into a temporary directory and verify every file.
    RestoreTest,
    /// Create each repository (`--encryption` is required).
    Init,
    /// List archives, or an archive's contents with `--archive`.
    List,
    /// Show repository or archive (`--archive`) information.
    Info,
    /// Extract `--archive` (`latest`: the newest) into `--destination` (default: here).
    Extract,
    /// Mount the repository or `--archive` on `--mount-point`.
    Mount,
}

impl Action {
    /// The runner's engine action, `None` for the actions the binary runs itself.
    fn engine(self) -> Option<RunAction> {
        Some(match self {
            Action::Create => RunAction::Create,
            Action::Prune => RunAction::Prune,
            Action::Compact => RunAction::Compact,
            Action::Check => RunAction::Check,
            Action::RestoreTest => RunAction::RestoreTest,
            Action::Init | Action::List | Action::Info | Action::Extract | Action::Mount => return None,
        })
    }
}

/// `run` arguments.
#[derive(clap::Args, Debug)]
pub(crate) struct RunArgs {
    /// borgmatic 1.7 configuration file or directory (repeatable; default: borgmatic's
    /// /etc/borgmatic/config.yaml, /etc/borgmatic.d/*.yaml, ~/.config/borgmatic/config.yaml).
    #[arg(short = 'c', long = "config", action = clap::ArgAction::Append)]
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
    #[command(flatten)]
    one_shot: OneShotArgs,
}

/// borgmatic's flags of `init`, `list`, `info`, `extract` and `mount`.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct OneShotArgs {
    /// init: repokey, keyfile, authenticated or none.
    #[arg(short = 'e', long)]
    encryption: Option<String>,
    /// list, info, extract, mount: this archive (`latest`: the newest).
    #[arg(long)]
    archive: Option<String>,
    /// list, extract: only these paths (repeatable).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// extract: where to extract (default: the current directory).
    #[arg(long)]
    destination: Option<PathBuf>,
    /// extract: remove N leading path components.
    #[arg(long)]
    strip_components: Option<usize>,
    /// list: names or paths only.
    #[arg(long)]
    short: bool,
    /// mount: the mount point.
    #[arg(long)]
    mount_point: Option<PathBuf>,
    /// mount: stay in the foreground until unmounted.
    #[arg(long)]
    foreground: bool,
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
    let defaults = runner::discover::default_config_paths();
    let paths = if args.config.is_empty() { defaults.clone() } else { args.config.clone() };
    let files = runner::discover::collect_config_files(&paths, &defaults);
    if files.is_empty() {
        let looked: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        out.log(Level::Error, &format!("error: no configuration files found (looked at {})", looked.join(", ")));
        return Ok(ExitCode::from(FAILED));
    }
    let mut configs = Vec::new();
    let mut bad = false;
    for p in &files {
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
    let one_shot = |a: Action| args.actions.contains(&a);
    let mut failed = false;
    if one_shot(Action::Init) {
        failed |= !one_shot_action(&args, &configs, Action::Init, &out)?;
    }
    let engine: Vec<RunAction> = args.actions.iter().filter_map(|a| a.engine()).collect();
    if !args.actions.is_empty() && engine.is_empty() {
        for a in [Action::List, Action::Info, Action::Extract, Action::Mount] {
            if one_shot(a) {
                failed |= !one_shot_action(&args, &configs, a, &out)?;
            }
        }
        return Ok(if failed { ExitCode::from(FAILED) } else { ExitCode::SUCCESS });
    }
    let cancel = Cancel::new();
    crate::cancel_on_signals(&cancel)?;
    let opts = RunOptions {
        actions: engine,
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
    if report.outcome != Outcome::Cancelled {
        for a in [Action::List, Action::Info, Action::Extract, Action::Mount] {
            if one_shot(a) {
                failed |= !one_shot_action(&args, &configs, a, &out)?;
            }
        }
    }
    if failed && report.outcome != Outcome::Cancelled {
        return Ok(ExitCode::from(FAILED));
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

/// Runs `init`, `list`, `info`, `extract` or `mount` on every repository of every
/// configuration (or only `--repository`) as the matching `rempart-backup` command, with the
/// configuration's passphrase. Returns whether every repository succeeded.
fn one_shot_action(args: &RunArgs, configs: &[runner::Loaded], action: Action, out: &Stderr) -> anyhow::Result<bool> {
    let o = &args.one_shot;
    let mut all_ok = true;
    for c in configs {
        for (spec, _) in &c.repositories {
            if args.repository.as_ref().is_some_and(|r| *r != spec.path && r != spec.name()) {
                continue;
            }
            let tag = format!("{}: {}", c.path, spec.name());
            // a local repository path stays valid after extract changes the directory
            let repo = if spec.path.contains(':') {
                spec.path.clone()
            } else {
                std::path::absolute(&spec.path).map_or(spec.path.clone(), |p| p.display().to_string())
            };
            // the configuration's passphrase wins, as borgmatic hands it to borg
            if let Some(p) = &c.storage.encryption_passphrase {
                std::env::set_var("REMPART_PASSPHRASE", p);
            } else if let Some(cmd) = &c.storage.encryption_passcommand {
                std::env::remove_var("REMPART_PASSPHRASE");
                std::env::set_var("REMPART_PASSCOMMAND", cmd);
            }
            let res = (|| -> anyhow::Result<ExitCode> {
                let archive = match o.archive.as_deref() {
                    Some("latest") => {
                        let r = crate::open(&repo)?;
                        let newest = dedupstore::commands::list_archives(&r)?.pop();
                        Some(newest.ok_or_else(|| anyhow::anyhow!("no archive in the repository"))?.name)
                    }
                    a => a.map(str::to_string),
                };
                let target = match &archive {
                    Some(a) => format!("{repo}::{a}"),
                    None => repo.clone(),
                };
                let mut argv: Vec<String> = vec!["rempart-backup".into()];
                match action {
                    Action::Init => {
                        let e = o.encryption.clone().ok_or_else(|| anyhow::anyhow!("init needs --encryption"))?;
                        argv.extend(["init".into(), "-e".into(), e, repo.clone()]);
                    }
                    Action::List => {
                        argv.push("list".into());
                        if o.short {
                            argv.push("--short".into());
                        }
                        if args.json {
                            argv.push("--json".into());
                        }
                        argv.push(target);
                        argv.extend(o.paths.iter().cloned());
                    }
                    Action::Info => {
                        argv.push("info".into());
                        if args.json {
                            argv.push("--json".into());
                        }
                        argv.push(target);
                    }
                    Action::Extract => {
                        if archive.is_none() {
                            anyhow::bail!("extract needs --archive NAME (or latest)");
                        }
                        argv.push("extract".into());
                        if let Some(n) = o.strip_components {
                            argv.extend(["--strip-components".into(), n.to_string()]);
                        }
                        if args.dry_run {
                            argv.push("--dry-run".into());
                        }
                        argv.push(target);
                        argv.extend(o.paths.iter().cloned());
                        if let Some(d) = &o.destination {
                            std::env::set_current_dir(d)
                                .map_err(|e| anyhow::anyhow!("destination {}: {e}", d.display()))?;
                        }
                    }
                    Action::Mount => {
                        let mp = o.mount_point.clone().ok_or_else(|| anyhow::anyhow!("mount needs --mount-point"))?;
                        argv.push("mount".into());
                        if o.foreground {
                            argv.push("--foreground".into());
                        }
                        argv.extend([target, mp.display().to_string()]);
                        // a process of its own: mount goes to the background by starting its own
                        // command line again
                        let st = std::process::Command::new(std::env::current_exe()?).args(&argv[1..]).status()?;
                        return Ok(if st.success() { ExitCode::SUCCESS } else { ExitCode::from(2) });
                    }
                    _ => return Ok(ExitCode::SUCCESS),
                }
                let cli = <crate::Cli as clap::Parser>::try_parse_from(&argv)
                    .map_err(|e| anyhow::anyhow!("{}", e.to_string().lines().next().unwrap_or_default()))?;
                crate::run(cli)
            })();
            match res {
                Ok(code) if code == ExitCode::SUCCESS || code == ExitCode::from(crate::WARNING) => {}
                Ok(_) => {
                    out.log(Level::Error, &format!("error: {tag}: {action:?} failed"));
                    all_ok = false;
                }
                Err(e) => {
                    out.log(Level::Error, &format!("error: {tag}: {e:#}"));
                    all_ok = false;
                }
            }
        }
    }
    Ok(all_ok)
}
