//! `rempart-backup`: deduplicated, encrypted backups with BorgBackup's command set.
//!
//! Exit codes (borg 1.2.4's): 0 success, 1 warning (e.g. a file vanished while it was read, an
//! `extract` path that matched nothing), 2 error (nothing in the repository was changed by a
//! failed command). Signals during `create`: the first SIGINT (Ctrl-C) or SIGTERM commits the
//! items done so far as the checkpoint archive `NAME.checkpoint`, releases the lock and ends
//! with one line and borg's code — 2 for SIGINT ("Got Ctrl-C / SIGINT."), 143 = 128 + 15 for
//! SIGTERM ("Received SIGTERM"; borg 1.2.4 writes no checkpoint on SIGTERM, we do); a second one
//! ends the process at once with the same code. Other commands die by the signal as usual (a
//! lock they leave is stale and taken over). A reader that closes our standard output early
//! (`list | head`) ends the command quietly with 0, as borg.
//!
//! Environment: `REMPART_PASSPHRASE`, `REMPART_PASSCOMMAND` (run with `sh -c`), else a prompt on
//! a terminal; `REMPART_REPO` (default repository), `REMPART_KEYS_DIR` (default
//! `~/.config/rempart/keys`), `REMPART_CACHE_DIR` (default `~/.cache/rempart`).

use anyhow::{anyhow, bail, Context};
use chrono::{DateTime, Local, NaiveDateTime, Utc};
use clap::{Parser, Subcommand};
use dedupstore::backend::{Backend, LocalBackend};
use dedupstore::chunker::ChunkerParams;
use dedupstore::commands::{self, time_of, CheckOptions, CheckProgress};
use dedupstore::compress::Compression;
use dedupstore::create::{create, CreateOptions, Event};
use dedupstore::crypto::Mode;
use dedupstore::extract::{archive_meta_items, extract_with_progress, ExtractOptions};
use dedupstore::pattern::Pattern;
use dedupstore::prune::PruneRules;
use dedupstore::remote::{RepoLocation, ServeOptions, SshBackend, SshOptions};
use dedupstore::repo::{InitOptions, OpenOptions, RepoLock, Repository};
use std::io::{IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

mod archives_cmd;
mod create_flags;
mod diff_cmd;
mod extract_cmd;
mod import_borg;
mod list_format;
mod mount_cmd;
mod recreate_cmd;
mod run_cmd;
mod tar_cmd;

#[derive(Parser, Debug)]
#[command(name = "rempart-backup", version, about = "Deduplicated, encrypted backups (borg's command set)")]
struct Cli {
    /// More logging (repeat for debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// ssh command for remote repositories (default: REMPART_RSH, else BORG_RSH, else "ssh").
    #[arg(long, global = true)]
    rsh: Option<String>,
    /// Path of rempart-backup on the remote host.
    #[arg(long, global = true, default_value = "rempart-backup")]
    remote_path: String,
    /// Seconds to wait for a lock another process holds (readers and writers exclude each other).
    #[arg(long, global = true, default_value_t = 1)]
    lock_wait: u64,
    /// Read without taking the shared lock (a writer may be working on the repository).
    #[arg(long, global = true)]
    bypass_lock: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a repository.
    Init {
        /// repokey, keyfile, authenticated or none.
        #[arg(short, long)]
        encryption: String,
        /// fastcdc,MIN,AVG,MAX or borg's MINEXP,MAXEXP,AVGEXP,WINDOW.
        #[arg(long)]
        chunker_params: Option<String>,
        /// Target pack file size in bytes (default 8 MiB).
        #[arg(long)]
        pack_size: Option<u32>,
        /// Repository path.
        repo: Option<String>,
    },
    /// Create an archive.
    Create {
        /// none, lz4, zstd[,N], zlib[,N], lzma[,N], and each as auto,ALG (obfuscate is refused).
        #[arg(short = 'C', long, default_value = "auto,zstd,3")]
        compression: String,
        /// Archive path of standard input for the path `-` (borg's default `stdin`).
        #[arg(long, default_value = "stdin")]
        stdin_name: String,
        /// Owner recorded for `-` (default: the current user).
        #[arg(long)]
        stdin_user: Option<String>,
        /// Group recorded for `-` (default: the current group).
        #[arg(long)]
        stdin_group: Option<String>,
        /// Permission bits recorded for `-`, octal (borg's default 0660).
        #[arg(long, default_value = "0660")]
        stdin_mode: String,
        /// Archive time (UTC, yyyy-mm-ddThh:mm:ss) or a reference file.
        #[arg(long)]
        timestamp: Option<String>,
        /// Exclude paths matching PATTERN.
        #[arg(short = 'e', long)]
        exclude: Vec<String>,
        /// Stay in the same file system.
        #[arg(short = 'x', long)]
        one_file_system: bool,
        /// Print statistics.
        #[arg(short, long)]
        stats: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Show progress.
        #[arg(short, long)]
        progress: bool,
        /// Do not change the repository.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// List items with their status.
        #[arg(long)]
        list: bool,
        /// Write a checkpoint archive (NAME.checkpoint) every this many seconds.
        #[arg(short = 'c', long, default_value_t = 1800)]
        checkpoint_interval: u64,
        /// ... or after every this many bytes of file content (0 = by time only).
        #[arg(long, default_value_t = 0)]
        checkpoint_volume: u64,
        /// Do not use the files cache.
        #[arg(long)]
        no_files_cache: bool,
        #[command(flatten)]
        borg: create_flags::CreateFlags,
        /// REPO::ARCHIVE.
        target: String,
        /// Paths to back up (`-`: standard input, stored as one file); `R` pattern lines add more.
        paths: Vec<PathBuf>,
    },
    /// List archives, or an archive's contents.
    List {
        /// Only names / paths.
        #[arg(long)]
        short: bool,
        /// JSON output (archives).
        #[arg(long)]
        json: bool,
        /// JSON lines (archive contents).
        #[arg(long)]
        json_lines: bool,
        /// borg's placeholders, e.g. "{archive}{NL}" or "{mode} {path}{NL}" (list_format.rs).
        #[arg(long)]
        format: Option<String>,
        #[command(flatten)]
        sel: archives_cmd::Selection,
        /// REPO or REPO::ARCHIVE.
        target: Option<String>,
        /// Only these paths.
        paths: Vec<String>,
    },
    /// Show repository or archive information.
    Info {
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        sel: archives_cmd::Selection,
        /// REPO or REPO::ARCHIVE.
        target: Option<String>,
    },
    /// Extract an archive into the current directory.
    Extract {
        /// Remove N leading path components.
        #[arg(long, default_value_t = 0)]
        strip_components: usize,
        /// Do not write anything (still reads and verifies).
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Use numeric uid/gid only.
        #[arg(long)]
        numeric_ids: bool,
        /// Make holes for all-zero chunks.
        #[arg(long)]
        sparse: bool,
        /// List extracted items.
        #[arg(long)]
        list: bool,
        /// Show progress (on a terminal).
        #[arg(short, long)]
        progress: bool,
        #[command(flatten)]
        borg: extract_cmd::ExtractFlags,
        /// REPO::ARCHIVE.
        target: String,
        /// Only these paths.
        paths: Vec<String>,
    },
    /// Show differences between two archives.
    Diff(diff_cmd::DiffArgs),
    /// Delete archives.
    Delete {
        /// Do not change the repository.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// List the archives deleted.
        #[arg(long)]
        list: bool,
        #[command(flatten)]
        sel: archives_cmd::Selection,
        /// REPO::ARCHIVE or REPO.
        target: String,
        /// More archive names.
        archives: Vec<String>,
    },
    /// Write an archive as a tar file (borg's export-tar: filters by extension or --tar-filter).
    ExportTar(tar_cmd::ExportTarArgs),
    /// Create an archive from a tar file (borg's import-tar: filters by extension or --tar-filter).
    ImportTar(tar_cmd::ImportTarArgs),
    /// Write archives again without the items the patterns exclude (borg's recreate).
    Recreate(recreate_cmd::RecreateArgs),
    /// Rename an archive.
    Rename {
        /// REPO::ARCHIVE.
        target: String,
        /// New name.
        new_name: String,
    },
    /// Delete archives not kept by the rules.
    Prune(PruneArgs),
    /// Free space of deleted archives.
    Compact {
        /// Rewrite packs with more than PCT % unused space.
        #[arg(long, default_value_t = 10)]
        threshold: u8,
        /// Repository.
        repo: Option<String>,
    },
    /// Verify the repository and archives.
    Check {
        /// Decrypt and verify every chunk.
        #[arg(long)]
        verify_data: bool,
        /// Rebuild the index from the packs.
        #[arg(long)]
        repair: bool,
        /// Check only the packs and the index.
        #[arg(long, conflicts_with = "archives_only")]
        repository_only: bool,
        /// Check only the archives (packs are read only with --verify-data).
        #[arg(long)]
        archives_only: bool,
        /// Check only archives whose name matches this shell pattern.
        #[arg(short = 'a', long = "glob-archives", value_name = "GLOB")]
        glob: Option<String>,
        /// Check only the newest N (matching) archives.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// Show progress (on a terminal).
        #[arg(short, long)]
        progress: bool,
        /// Repository.
        repo: Option<String>,
    },
    /// Key management.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Serve a repository over stdin/stdout (run by ssh on the backup host; see docs/backup-remote.md).
    Serve {
        /// Only allow repositories under PATH (repeatable).
        #[arg(long = "restrict-to-path", value_name = "PATH")]
        restrict_to_paths: Vec<PathBuf>,
        /// Refuse every removal and overwrite; keep every manifest version.
        #[arg(long)]
        append_only: bool,
        /// Refuse writes past SIZE (e.g. 500G; units K, M, G, T, powers of 1000).
        #[arg(long, value_name = "SIZE")]
        storage_quota: Option<String>,
    },
    /// Operator, on the backup host: list manifest versions kept by an append-only server, or
    /// make one current again.
    Rollback {
        /// Make this manifest version current (without it: list the versions).
        #[arg(long)]
        to: Option<u64>,
        /// Local repository path.
        repo: PathBuf,
    },
    /// Run borgmatic 1.7's configuration: create, prune, compact, check for each repository,
    /// with hooks, check frequencies and a metrics textfile (docs/borgmatic.md). Exit codes are
    /// borgmatic's: 0 ok, 1 something failed.
    Run(run_cmd::RunArgs),
    /// Restore an archive (default: the newest) into a temporary directory and verify every file
    /// against the archive.
    RestoreTest(run_cmd::RestoreTestArgs),
    /// Mount the repository (one directory per archive) or an archive as a read-only FUSE file
    /// system (docs/backup.md, "Mounting").
    Mount(mount_cmd::MountArgs),
    /// Unmount a `mount` (fusermount3 -u).
    Umount(mount_cmd::UmountArgs),
    /// Copy the archives of a BorgBackup 1.2 repository into a rempart repository, re-chunked
    /// and re-encrypted (docs/backup.md, "Importing from borg").
    ImportBorg(import_borg::ImportBorgArgs),
    /// Remove a stale lock.
    BreakLock {
        /// Repository.
        repo: Option<String>,
    },
    /// Run a command with the repository lock held (exclusive, or shared with --shared).
    WithLock {
        /// Take a shared (reader) lock instead of the exclusive one.
        #[arg(long)]
        shared: bool,
        /// Repository.
        repo: String,
        /// Command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
struct PruneArgs {
    /// Do not change the repository.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// List archives kept and pruned.
    #[arg(long)]
    list: bool,
    /// Print statistics.
    #[arg(short, long)]
    stats: bool,
    /// Keep all archives within this interval (e.g. 2d).
    #[arg(long)]
    keep_within: Option<String>,
    /// Keep the last N archives.
    #[arg(long, alias = "keep-secondly")]
    keep_last: Option<i64>,
    /// Number of minutely archives.
    #[arg(long)]
    keep_minutely: Option<i64>,
    /// Number of hourly archives.
    #[arg(short = 'H', long)]
    keep_hourly: Option<i64>,
    /// Number of daily archives.
    #[arg(short = 'd', long)]
    keep_daily: Option<i64>,
    /// Number of weekly archives.
    #[arg(short = 'w', long)]
    keep_weekly: Option<i64>,
    /// Number of monthly archives.
    #[arg(short = 'm', long)]
    keep_monthly: Option<i64>,
    /// Number of yearly archives.
    #[arg(short = 'y', long)]
    keep_yearly: Option<i64>,
    /// Only consider archives matching this glob.
    #[arg(short = 'a', long)]
    glob_archives: Option<String>,
    /// Only consider archives starting with this prefix (deprecated in borg).
    #[arg(short = 'P', long)]
    prefix: Option<String>,
    /// Repository.
    repo: Option<String>,
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Write the (passphrase-protected) key to a file or stdout.
    Export {
        /// Repository.
        repo: String,
        /// Output file (stdout if absent).
        path: Option<PathBuf>,
    },
    /// Install an exported key.
    Import {
        /// Repository.
        repo: String,
        /// Key file.
        path: PathBuf,
    },
    /// Change the passphrase (new one from REMPART_NEW_PASSPHRASE or a prompt).
    ChangePassphrase {
        /// Repository.
        repo: String,
    },
}

const WARNING: u8 = 1;
const ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // tracing to stderr, colour only on a terminal (issue 14); REMPART_LOG overrides -v
    rempart_daemon::init_logging("REMPART_LOG", level);
    match run(cli) {
        Ok(code) => code,
        // `list | head`: the reader has what it wanted (borg exits 0, silently)
        Err(_) if STDOUT_CLOSED.load(Ordering::Relaxed) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<dedupstore::Error>() {
            Some(dedupstore::Error::Interrupted { checkpoint }) => {
                let sig = SIGNAL.load(Ordering::Relaxed);
                eprintln!(
                    "{}{}",
                    if sig == nix::sys::signal::Signal::SIGTERM as i32 {
                        "Received SIGTERM"
                    } else {
                        "Got Ctrl-C / SIGINT."
                    },
                    checkpoint.as_ref().map(|c| format!(" Checkpoint archive {c} written.")).unwrap_or_default()
                );
                ExitCode::from(signal_exit_code(sig))
            }
            _ => {
                eprintln!("Error: {}", error_line(&e));
                ExitCode::from(ERROR)
            }
        },
    }
}

/// Set when a write to standard output failed with EPIPE (the reader went away).
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// The signal that interrupted `create` (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);

/// borg 1.2.4's exit code after a signal: 2 for SIGINT (KeyboardInterrupt is an error),
/// 128 + N for the others (SIGTERM: 143).
fn signal_exit_code(sig: i32) -> u8 {
    if sig == nix::sys::signal::Signal::SIGINT as i32 {
        ERROR
    } else {
        u8::try_from(128 + sig).unwrap_or(ERROR)
    }
}

/// For `create` and `run`: SIGINT and SIGTERM are blocked in every thread and waited for by one
/// thread, which cancels `cancel` on the first (create then writes its checkpoint and returns)
/// and ends the process on the second. Safe code only: `sigwait`, no handler. Child processes
/// (ssh, the passcommand, hooks) get the default mask back from `std::process::Command`.
fn cancel_on_signals(cancel: &runner::Cancel) -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    let cancel = cancel.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || loop {
        let Ok(sig) = set.wait() else { return };
        if cancel.is_cancelled() {
            eprintln!("{sig} again: stopping now");
            std::process::exit(i32::from(signal_exit_code(sig as i32)));
        }
        SIGNAL.store(sig as i32, Ordering::SeqCst);
        cancel.cancel(format!("{sig} received"));
        tracing::info!("{sig}: writing a checkpoint, then stopping");
    })?;
    Ok(())
}

/// Standard output for command results: an EPIPE is remembered (see [`STDOUT_CLOSED`]) so the
/// command ends quietly with 0, as borg's `list | head` does.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write(buf).inspect_err(closed)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        std::io::stdout().lock().write_all(buf).inspect_err(closed)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush().inspect_err(closed)
    }
}

fn closed(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// `println!` that returns EPIPE as an error (via [`Stdout`]) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        writeln!(Stdout, $($arg)*)?
    };
}

/// The error and its causes on one line, leaving out a cause whose text the line already holds
/// (library errors print their source themselves).
fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The item `create REPO::A -` records for standard input (borg's `--stdin-*` options).
fn stdin_source(
    name: &str,
    user: Option<String>,
    group: Option<String>,
    mode: &str,
) -> anyhow::Result<dedupstore::create::StdinSource> {
    use nix::unistd::{Group, User};
    let mode = u32::from_str_radix(mode, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| anyhow!("--stdin-mode {mode:?}: expected octal permission bits such as 0660"))?;
    if dedupstore::create::archive_path(std::path::Path::new(name)) == b"." {
        bail!("--stdin-name {name:?}: not a file name");
    }
    let (uid, user) = match user {
        Some(u) => {
            let found =
                User::from_name(&u).ok().flatten().ok_or_else(|| anyhow!("--stdin-user {u:?}: no such user"))?;
            (found.uid.as_raw(), Some(u))
        }
        None => {
            let uid = nix::unistd::getuid();
            (uid.as_raw(), User::from_uid(uid).ok().flatten().map(|u| u.name))
        }
    };
    let (gid, group) = match group {
        Some(g) => {
            let found =
                Group::from_name(&g).ok().flatten().ok_or_else(|| anyhow!("--stdin-group {g:?}: no such group"))?;
            (found.gid.as_raw(), Some(g))
        }
        None => {
            let gid = nix::unistd::getgid();
            (gid.as_raw(), Group::from_gid(gid).ok().flatten().map(|g| g.name))
        }
    };
    Ok(dedupstore::create::StdinSource { name: name.to_string(), mode, uid, user, gid, group })
}

/// `var` (REMPART_X), else BORG_X, else `home_rel` under the base directory
/// (runner::environment has the precedence table).
fn env_dir(var: &str, home_rel: &str) -> Option<PathBuf> {
    runner::environment::var_os(var.strip_prefix("REMPART_").unwrap_or(var))
        .map(PathBuf::from)
        .or_else(|| runner::environment::base_dir().map(|b| b.join(home_rel)))
}

fn keys_dir() -> Option<PathBuf> {
    env_dir("REMPART_KEYS_DIR", ".config/rempart/keys")
}

/// The passphrase from `var` (and `REMPART_PASSCOMMAND` for the repository's), else a prompt
/// on a terminal (the runner crate's sources; the prompt is the binary's).
fn passphrase(prompt: &str, var: &str) -> anyhow::Result<Option<String>> {
    if let Some(p) = runner::passphrase::resolve_first(&run_cmd::passphrase_sources(var))? {
        return Ok(Some(p));
    }
    Ok(run_cmd::prompt(prompt)?)
}

/// Splits `REPO::ARCHIVE` (REPO defaults to REMPART_REPO, then BORG_REPO).
fn split_target(t: Option<&str>) -> anyhow::Result<(String, Option<String>)> {
    let t = t.map(str::to_string).unwrap_or_default();
    let (repo, archive) = match t.split_once("::") {
        Some((r, a)) => (r.to_string(), Some(a.to_string())),
        None => (t, None),
    };
    let repo = if repo.is_empty() {
        runner::environment::repo()
            .ok_or_else(|| anyhow!("no repository given (and neither REMPART_REPO nor BORG_REPO is set)"))?
    } else {
        repo
    };
    Ok((repo, archive.filter(|a| !a.is_empty())))
}

static SSH: OnceLock<SshOptions> = OnceLock::new();
static LOCK_WAIT: OnceLock<u64> = OnceLock::new();
static BYPASS_LOCK: OnceLock<bool> = OnceLock::new();

/// The backend for a repository location: a local directory or `ssh://` / `user@host:path`.
fn backend(repo: &str) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match RepoLocation::parse(repo)? {
        RepoLocation::Local(p) => Arc::new(LocalBackend::new(p)),
        loc => {
            let opts = SSH.get().cloned().unwrap_or_default();
            Arc::new(SshBackend::connect(&loc, &opts).with_context(|| format!("repository {repo}"))?)
        }
    })
}

fn open(repo: &str) -> anyhow::Result<Repository> {
    let backend = backend(repo)?;
    let cfg = Repository::read_config(backend.as_ref()).with_context(|| format!("repository {repo}"))?;
    let pass = if cfg.body.mode.has_key() { passphrase("Enter passphrase: ", "REMPART_PASSPHRASE")? } else { None };
    let mut r = Repository::open(backend, &OpenOptions { passphrase: pass, keys_dir: keys_dir() })
        .with_context(|| format!("repository {repo}"))?;
    r.set_lock_wait(std::time::Duration::from_secs(LOCK_WAIT.get().copied().unwrap_or(1)));
    r.set_bypass_lock(BYPASS_LOCK.get().copied().unwrap_or(false));
    Ok(r)
}

fn parse_timestamp(s: &str) -> anyhow::Result<DateTime<Utc>> {
    for f in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let md = std::fs::metadata(s)
        .with_context(|| format!("--timestamp {s:?}: not a date (yyyy-mm-ddThh:mm:ss) nor a file"))?;
    Ok(DateTime::<Utc>::from(md.modified()?))
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local).format("%a, %Y-%m-%d %H:%M:%S").to_string()
}

fn iso(t: DateTime<Utc>) -> String {
    t.with_timezone(&Local).format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

fn size(n: u64) -> String {
    runner::format_size(n)
}

fn mode_string(kind: dedupstore::archive::ItemKind, mode: u32) -> String {
    use dedupstore::archive::ItemKind as K;
    let t = match kind {
        K::File => '-',
        K::Dir => 'd',
        K::Symlink => 'l',
        K::Fifo => 'p',
        K::CharDev => 'c',
        K::BlockDev => 'b',
        _ => 's',
    };
    let mut s = String::from(t);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        s.push(if mode & (1 << (8 - i)) != 0 { c } else { '-' });
    }
    s
}

/// A progress bar with `template` when asked for and stderr is a terminal (a person watching):
/// never in logs, pipes or `--json` output.
fn progress_bar(wanted: bool, template: &str) -> Option<indicatif::ProgressBar> {
    (wanted && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(std::time::Duration::from_millis(200));
        b
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let rsh = cli.rsh.unwrap_or_else(runner::environment::rsh);
    let _ = SSH.set(SshOptions { rsh, remote_path: cli.remote_path, ..SshOptions::default() });
    let _ = LOCK_WAIT.set(cli.lock_wait);
    let _ = BYPASS_LOCK.set(cli.bypass_lock);
    match cli.cmd {
        Cmd::Serve { restrict_to_paths, append_only, storage_quota } => {
            let storage_quota = storage_quota.as_deref().map(dedupstore::remote::parse_size).transpose()?;
            let opts = ServeOptions { restrict_to_paths, append_only, storage_quota };
            dedupstore::remote::widen_stdio_pipes();
            // stdin and stdout as plain files (pipes from sshd): `serve` reads exact frames and
            // splices pack payloads between them and the repository's files; Stdout's line
            // buffering would also split binary frames at '\n'
            let stdin = std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned()?;
            let stdout = std::os::fd::AsFd::as_fd(&std::io::stdout()).try_clone_to_owned()?;
            let (mut input, mut output) = (std::fs::File::from(stdin), std::fs::File::from(stdout));
            dedupstore::remote::serve(opts, &mut input, &mut output)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Rollback { to, repo } => {
            let versions = dedupstore::remote::manifest_versions(&repo)
                .with_context(|| format!("{}: no manifest history (not served with --append-only?)", repo.display()))?;
            match to {
                None => {
                    for (seq, p) in versions {
                        let t = std::fs::metadata(&p)?.modified()?;
                        outln!("{seq:>8}  {}", fmt_time(DateTime::<Utc>::from(t)));
                    }
                }
                Some(seq) => {
                    let moved = dedupstore::remote::rollback(&repo, seq)?;
                    eprintln!(
                        "manifest version {seq} is current again ({moved} later index files moved to rolled-back/index/)"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Init { encryption, chunker_params, pack_size, repo } => {
            let (repo, _) = split_target(repo.as_deref())?;
            let mode = Mode::parse(&encryption)?;
            let pass = if mode.has_key() {
                let p = passphrase("Enter new passphrase: ", "REMPART_PASSPHRASE")?
                    .ok_or_else(|| anyhow!("a passphrase is needed: set REMPART_PASSPHRASE or REMPART_PASSCOMMAND"))?;
                Some(p)
            } else {
                None
            };
            let mut opts = InitOptions::new(mode, pass);
            opts.keys_dir = keys_dir();
            if let Some(p) = pack_size {
                opts.pack_size = p;
            }
            if let Some(c) = chunker_params {
                opts.chunker = ChunkerParams::parse(&c)?;
            }
            let r = Repository::init(backend(&repo)?, &opts).with_context(|| format!("repository {repo}"))?;
            if mode.has_key() {
                eprintln!(
                    "Repository {repo} created ({}). Keep a copy of the key: rempart-backup key export {repo} FILE",
                    mode.name()
                );
            }
            drop(r);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Create {
            compression,
            stdin_name,
            stdin_user,
            stdin_group,
            stdin_mode,
            timestamp,
            exclude,
            one_file_system,
            stats,
            json,
            progress,
            dry_run,
            list,
            checkpoint_interval,
            checkpoint_volume,
            no_files_cache,
            borg,
            target,
            paths,
        } => {
            let (repo_path, name) = split_target(Some(&target))?;
            let name = name.ok_or_else(|| anyhow!("{target}: expected REPO::ARCHIVE"))?;
            let name = runner::placeholders::expand(&name, Local::now())?;
            let mut opts = CreateOptions::new(name, paths);
            opts.compression = Compression::parse(&compression)?;
            opts.timestamp = timestamp.as_deref().map(parse_timestamp).transpose()?;
            opts.excludes = exclude.iter().map(|p| Pattern::parse(p)).collect::<Result<_, _>>()?;
            borg.apply(&mut opts, &exclude, &std::env::args().collect::<Vec<_>>())?;
            opts.one_file_system = one_file_system;
            opts.dry_run = dry_run;
            opts.checkpoint_interval = std::time::Duration::from_secs(checkpoint_interval.max(1));
            opts.checkpoint_volume = checkpoint_volume;
            opts.cache_dir = if no_files_cache { None } else { env_dir("REMPART_CACHE_DIR", ".cache/rempart") };
            opts.cmdline = std::env::args().collect();
            opts.stdin = Some(stdin_source(&stdin_name, stdin_user, stdin_group, &stdin_mode)?);
            if !dry_run {
                let cancel = runner::Cancel::new();
                cancel_on_signals(&cancel)?;
                opts.cancel = Some(cancel.flag());
            }
            let repo = open(&repo_path)?;
            let started = std::time::Instant::now();
            // A progress bar only for a person at a terminal: never in --json output or logs.
            let bar = (progress && !json && std::io::stderr().is_terminal()).then(|| {
                let b = indicatif::ProgressBar::new_spinner();
                b.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {bytes:>10} {msg}")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                b.enable_steady_tick(std::time::Duration::from_millis(200));
                b
            });
            let mut on = |e: Event<'_>| match e {
                Event::Item { status, path } => {
                    let p = String::from_utf8_lossy(path);
                    match &bar {
                        Some(b) if list => b.println(format!("{status} {p}")),
                        None if list => eprintln!("{status} {p}"),
                        _ => {}
                    }
                }
                Event::Progress { original, files } => {
                    if let Some(b) = &bar {
                        b.set_position(original);
                        b.set_message(format!("{files} files"));
                    }
                }
                Event::Checkpoint { name } => match &bar {
                    Some(b) => b.println(format!("checkpoint {name}")),
                    None => tracing::info!("checkpoint {name}"),
                },
                Event::Warning(w) => match &bar {
                    Some(b) => b.println(w),
                    None => eprintln!("{w}"),
                },
                _ => {}
            };
            let res = create(&repo, &opts, &mut on);
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let res = res?;
            let a = &res.archive;
            let dur = started.elapsed().as_secs_f64();
            if json {
                let v = serde_json::json!({
                    "archive": {
                        "name": a.name, "id": res.id.to_hex(),
                        "start": iso(time_of(a.time)), "end": iso(time_of(a.time_end)),
                        "duration": dur, "command_line": a.cmdline,
                        "stats": {
                            "original_size": a.stats.original_size,
                            "compressed_size": a.stats.compressed_size,
                            "deduplicated_size": a.stats.deduplicated_size,
                            "nfiles": a.stats.nfiles,
                        },
                    },
                    "repository": { "id": repo.config().id, "location": repo_path },
                    "encryption": { "mode": repo.config().mode.name() },
                    "cache": { "files_cache_hits": res.cached_files },
                });
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else if stats {
                let line = "-".repeat(78);
                eprintln!("{line}");
                eprintln!("Repository: {repo_path}");
                eprintln!("Archive name: {}", a.name);
                eprintln!("Archive fingerprint: {}", res.id.to_hex());
                eprintln!("Time (start): {}", fmt_time(time_of(a.time)));
                eprintln!("Time (end):   {}", fmt_time(time_of(a.time_end)));
                eprintln!("Duration: {dur:.2} seconds");
                eprintln!("Number of files: {}", a.stats.nfiles);
                eprintln!("{line}");
                eprintln!("{:>41}{:>19}{:>19}", "Original size", "Compressed size", "Deduplicated size");
                eprintln!(
                    "This archive: {:>27}{:>19}{:>19}",
                    size(a.stats.original_size),
                    size(a.stats.compressed_size),
                    size(a.stats.deduplicated_size)
                );
                eprintln!("{line}");
            }
            Ok(if res.warnings.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(WARNING) })
        }
        Cmd::List { short, json, json_lines, format, sel, target, paths } => {
            let (repo_path, archive) = split_target(target.as_deref())?;
            let repo = open(&repo_path)?;
            match archive {
                None => {
                    let archives = sel.select(&repo)?;
                    if let Some(f) = format.as_deref().filter(|_| !json) {
                        archives_cmd::list_repo_formatted(&repo, &archives, f)?;
                    } else if json {
                        let list: Vec<_> = archives
                            .iter()
                            .map(|a| {
                                serde_json::json!({
                                    "archive": a.name, "name": a.name, "id": a.id.to_hex(),
                                    "start": iso(time_of(a.time)), "time": iso(time_of(a.time)),
                                })
                            })
                            .collect();
                        let v = serde_json::json!({
                            "archives": list,
                            "repository": { "id": repo.config().id, "location": repo_path },
                            "encryption": { "mode": repo.config().mode.name() },
                        });
                        outln!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        let mut out = std::io::BufWriter::new(Stdout);
                        for a in archives {
                            if short {
                                writeln!(out, "{}", a.name)?;
                            } else {
                                writeln!(out, "{:<36} {} [{}]", a.name, fmt_time(time_of(a.time)), a.id.to_hex())?;
                            }
                        }
                        out.flush()?;
                    }
                }
                Some(name) if format.is_some() && !json_lines => {
                    archives_cmd::list_archive_formatted(&repo, &name, format.as_deref().unwrap_or_default(), &paths)?;
                }
                Some(name) => {
                    let index = repo.load_index()?;
                    let (meta, items) = archive_meta_items(&repo, &index, &name)?;
                    let mut out = std::io::BufWriter::new(Stdout);
                    for i in items {
                        let p = i.path_lossy();
                        if !paths.is_empty() && !paths.iter().any(|q| p == *q || p.starts_with(&format!("{q}/"))) {
                            continue;
                        }
                        let mtime = time_of(i.mtime);
                        if json_lines {
                            let v = serde_json::json!({
                                "type": mode_string(i.kind, 0).chars().next().map(String::from),
                                "mode": mode_string(i.kind, i.mode),
                                "user": i.user.clone().unwrap_or_else(|| i.uid.to_string()),
                                "group": i.group.clone().unwrap_or_else(|| i.gid.to_string()),
                                "uid": i.uid, "gid": i.gid, "path": p,
                                // false: chunks a repair replaced with zeros (issue 14)
                                "healthy": meta.is_healthy(&i.path),
                                "source": i.hardlink.as_ref().map(|h| String::from_utf8_lossy(h).into_owned()).unwrap_or_default(),
                                "linktarget": i.target.as_ref().map(|h| String::from_utf8_lossy(h).into_owned()).unwrap_or_default(),
                                "flags": null,
                                "mtime": iso(mtime), "size": i.size,
                            });
                            writeln!(out, "{v}")?;
                        } else if short {
                            writeln!(out, "{p}")?;
                        } else {
                            let extra = match (&i.target, &i.hardlink) {
                                (Some(t), _) => format!(" -> {}", String::from_utf8_lossy(t)),
                                (_, Some(h)) => format!(" link to {}", String::from_utf8_lossy(h)),
                                _ => String::new(),
                            };
                            writeln!(
                                out,
                                "{} {:<6} {:<6} {:>8} {} {p}{extra}",
                                mode_string(i.kind, i.mode),
                                i.user.clone().unwrap_or_else(|| i.uid.to_string()),
                                i.group.clone().unwrap_or_else(|| i.gid.to_string()),
                                i.size,
                                fmt_time(mtime)
                            )?;
                        }
                    }
                    out.flush()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Info { json, sel, target } => {
            let (repo_path, archive) = split_target(target.as_deref())?;
            let repo = open(&repo_path)?;
            // borg: -a/--first/--last on a repository shows each selected archive
            let names = match archive {
                Some(n) => Some(vec![n]),
                None if sel.any() => Some(sel.select(&repo)?.into_iter().map(|a| a.name).collect::<Vec<_>>()),
                None => None,
            };
            match names {
                None => {
                    let i = commands::repo_info(&repo)?;
                    if json {
                        outln!(
                            "{}",
                            serde_json::to_string_pretty(&serde_json::json!({
                                "repository": { "id": repo.config().id, "location": repo_path },
                                "encryption": { "mode": repo.config().mode.name() },
                                "cache": { "stats": {
                                    "total_unique_chunks": i.unique_chunks,
                                    "unique_size": i.unique_size,
                                    "unique_csize": i.unique_stored,
                                }},
                                "archives": i.archives, "packs": i.packs,
                            }))?
                        );
                    } else {
                        outln!("Repository ID: {}", repo.config().id);
                        outln!("Location: {repo_path}");
                        outln!("Encrypted: {}", matches!(repo.config().mode, Mode::Repokey | Mode::Keyfile));
                        outln!("Mode: {}", repo.config().mode.name());
                        outln!("Archives: {}", i.archives);
                        outln!("Unique chunks: {}", i.unique_chunks);
                        outln!("Unique size: {} (stored {})", size(i.unique_size), size(i.unique_stored));
                        outln!("Packs: {}", i.packs);
                    }
                }
                Some(names) => {
                    let mut listed = Vec::new();
                    for (k, name) in names.iter().enumerate() {
                        let (e, a) = commands::archive_info(&repo, name)?;
                        if json {
                            listed.push(serde_json::json!({
                                        "name": a.name, "id": e.id.to_hex(), "hostname": a.hostname,
                                        "username": a.username, "start": iso(time_of(a.time)),
                                        "end": iso(time_of(a.time_end)), "command_line": a.cmdline,
                                        "stats": {
                                            "original_size": a.stats.original_size,
                                            "compressed_size": a.stats.compressed_size,
                                            "deduplicated_size": a.stats.deduplicated_size,
                                            "nfiles": a.stats.nfiles,
                                        },
                            }));
                            continue;
                        }
                        if k > 0 {
                            outln!();
                        }
                        {
                            outln!("Archive name: {}", a.name);
                            outln!("Archive fingerprint: {}", e.id.to_hex());
                            outln!("Hostname: {}", a.hostname);
                            outln!("Username: {}", a.username);
                            outln!("Time (start): {}", fmt_time(time_of(a.time)));
                            outln!("Time (end): {}", fmt_time(time_of(a.time_end)));
                            outln!("Command line: {}", a.cmdline.join(" "));
                            outln!("Number of files: {}", a.stats.nfiles);
                            outln!("Original size: {}", size(a.stats.original_size));
                            outln!("Compressed size: {}", size(a.stats.compressed_size));
                            outln!("Deduplicated size: {}", size(a.stats.deduplicated_size));
                        }
                    }
                    if json {
                        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({ "archives": listed }))?);
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Extract { strip_components, dry_run, numeric_ids, sparse, list, progress, borg, target, paths } => {
            let (repo_path, archive) = split_target(Some(&target))?;
            let archive = archive.ok_or_else(|| anyhow!("{target}: expected REPO::ARCHIVE"))?;
            let repo = open(&repo_path)?;
            let patterns = borg.matcher()?;
            if borg.stdout {
                extract_cmd::to_stdout(&repo, &archive, &paths, &patterns)?;
                return Ok(ExitCode::SUCCESS);
            }
            let opts = ExtractOptions {
                dest: std::env::current_dir()?,
                paths: paths.iter().map(|p| p.as_bytes().to_vec()).collect(),
                strip_components,
                dry_run,
                numeric_ids,
                sparse,
                threads: 0,
                patterns,
            };
            let bar = progress_bar(
                progress,
                "{spinner} {elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} {msg} ETA {eta}",
            );
            let mut on = |p: dedupstore::extract::ExtractProgress| {
                if let Some(b) = &bar {
                    b.set_length(p.bytes_total);
                    b.set_position(p.bytes);
                    b.set_message(format!("{}/{} items", p.items, p.items_total));
                }
            };
            let res = extract_with_progress(&repo, &archive, &opts, &mut on);
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let mut res = res?;
            // borg: a path that matched nothing is a warning, not a silent success (issue 14)
            for p in &res.unmatched {
                res.warnings.push(format!("Include pattern '{}' never matched.", String::from_utf8_lossy(p)));
            }
            if list {
                eprintln!("{} items, {}", res.items, size(res.bytes));
            }
            for e in &res.errors {
                eprintln!("{e}");
            }
            // files with damaged (zero-filled) chunks: a warning, as in borg (issue 14)
            for w in &res.warnings {
                eprintln!("{w}");
            }
            Ok(match (res.errors.is_empty(), res.warnings.is_empty() && res.unmatched.is_empty()) {
                (false, _) => ExitCode::from(ERROR),
                (true, false) => ExitCode::from(WARNING),
                (true, true) => ExitCode::SUCCESS,
            })
        }
        Cmd::Diff(a) => diff_cmd::run(a),
        Cmd::Delete { dry_run, list, sel, target, archives } => {
            let (repo_path, archive) = split_target(Some(&target))?;
            let mut names: Vec<String> = archive.into_iter().collect();
            names.extend(archives);
            if names.is_empty() && sel.any() {
                archives_cmd::delete_selected(&open(&repo_path)?, &sel, dry_run, list)?;
                return Ok(ExitCode::SUCCESS);
            }
            if names.is_empty() {
                bail!("deleting a whole repository is not supported: remove its directory, or name archives");
            }
            let repo = open(&repo_path)?;
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            if dry_run {
                let m = repo.manifest()?;
                for n in &refs {
                    if m.get(n).is_none() {
                        bail!("archive {n:?} does not exist");
                    }
                    outln!("Would delete archive: {n}");
                }
            } else {
                commands::delete_archives(&repo, &refs)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::ExportTar(a) => tar_cmd::export_tar(a),
        Cmd::ImportTar(a) => tar_cmd::import_tar(a),
        Cmd::Recreate(a) => recreate_cmd::run(a),
        Cmd::Rename { target, new_name } => archives_cmd::rename(&target, &new_name),
        Cmd::Prune(a) => {
            let (repo_path, _) = split_target(a.repo.as_deref())?;
            let rules = PruneRules {
                within: a.keep_within,
                secondly: a.keep_last,
                minutely: a.keep_minutely,
                hourly: a.keep_hourly,
                daily: a.keep_daily,
                weekly: a.keep_weekly,
                monthly: a.keep_monthly,
                yearly: a.keep_yearly,
            };
            if a.prefix.is_some() && a.glob_archives.is_some() {
                bail!("--prefix and --glob-archives are mutually exclusive");
            }
            let glob = a.glob_archives.or(a.prefix.map(|p| format!("{p}*")));
            let repo = open(&repo_path)?;
            let plan = commands::prune_repo_plan(&repo, &rules, glob.as_deref(), Utc::now())?;
            if a.list {
                let mut n_del = 0;
                for (arch, keep) in &plan.decisions {
                    let line = format!("{:<36} {}", arch.name, fmt_time(arch.time));
                    match keep {
                        Some(k) if k.rule == "checkpoint" => outln!("Keeping checkpoint archive:      {line}"),
                        Some(k) => outln!("Keeping archive (rule: {} #{}): {line}", k.rule, k.n),
                        None => {
                            n_del += 1;
                            if a.dry_run {
                                outln!("Would prune:                     {line}");
                            } else {
                                outln!("Pruning archive ({n_del}/{}):  {line}", plan.to_delete().len());
                            }
                        }
                    }
                }
            }
            if !a.dry_run {
                commands::prune_apply(&repo, &plan)?;
            }
            if a.stats {
                eprintln!("Deleted {} archives", plan.to_delete().len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compact { threshold, repo } => {
            let (repo_path, _) = split_target(repo.as_deref())?;
            let repo = open(&repo_path)?;
            let plan = commands::compact_plan(&repo, threshold)?;
            commands::compact_apply(&repo, &plan)?;
            eprintln!(
                "compaction freed about {} ({} packs rewritten, {} deleted, {} orphans)",
                size(plan.freed),
                plan.repack.len(),
                plan.delete.len(),
                plan.orphans.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Check { verify_data, repair, repository_only, archives_only, glob, last, progress, repo } => {
            let (repo_path, _) = split_target(repo.as_deref())?;
            let repo = open(&repo_path)?;
            let bar = progress_bar(progress, "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} {msg}");
            let mut on = |p: CheckProgress| {
                let Some(b) = &bar else { return };
                match p {
                    CheckProgress::Packs { done, total, bytes } => {
                        b.set_length(total);
                        b.set_position(done);
                        b.set_message(format!("packs ({})", size(bytes)));
                    }
                    CheckProgress::Archives { done, total } => {
                        b.set_length(total);
                        b.set_position(done);
                        b.set_message("archives");
                    }
                    _ => {}
                }
            };
            let r = commands::check_with_progress(
                &repo,
                CheckOptions { verify_data, repair, repository_only, archives_only, glob, last },
                &mut on,
            );
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let r = r?;
            for e in &r.errors {
                eprintln!("{e}");
            }
            for w in &r.warnings {
                eprintln!("warning: {w}");
            }
            for c in &r.damaged_chunks {
                eprintln!("damaged chunk {}", c.to_hex());
            }
            if !r.orphan_packs.is_empty() {
                eprintln!(
                    "{} orphan packs (left by an interrupted command; compact removes them)",
                    r.orphan_packs.len()
                );
            }
            for n in &r.repaired_notes {
                eprintln!("repaired: {n}");
            }
            if r.repaired && r.orphan_chunks > 0 {
                eprintln!("{} orphaned chunks no archive references (compact removes them)", r.orphan_chunks);
            }
            for (a, n) in &r.zero_filled {
                eprintln!("archive {a}: {n} chunks were replaced with zeros by an earlier repair");
            }
            // borg: what check finds is a warning (1); 2 only when it could not run (the `?`s
            // above) (issue 14)
            if r.clean() {
                eprintln!("check: {} packs, {} chunks verified, no problems found", r.packs, r.chunks_verified);
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("check: {} problems found", r.errors.len() + r.warnings.len());
                Ok(ExitCode::from(WARNING))
            }
        }
        Cmd::Key { cmd } => match cmd {
            KeyCmd::Export { repo, path } => {
                let r = open(&repo)?;
                let data = r.export_key(&keys_dir())?;
                match path {
                    // owner only (issue 14): the key is only as strong as its passphrase
                    Some(p) => std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(0o600)
                        .open(&p)
                        .and_then(|mut f| {
                            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
                            f.write_all(&data)
                        })
                        .with_context(|| format!("{}", p.display()))?,
                    None => std::io::stdout().write_all(&data)?,
                }
                Ok(ExitCode::SUCCESS)
            }
            KeyCmd::Import { repo, path } => {
                let data = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
                let pass = passphrase("Enter passphrase: ", "REMPART_PASSPHRASE")?
                    .ok_or_else(|| anyhow!("a passphrase is needed"))?;
                Repository::import_key(backend(&repo)?.as_ref(), &data, &pass, &keys_dir())?;
                Ok(ExitCode::SUCCESS)
            }
            KeyCmd::ChangePassphrase { repo } => {
                let r = open(&repo)?;
                let new = passphrase("Enter new passphrase: ", "REMPART_NEW_PASSPHRASE")?
                    .ok_or_else(|| anyhow!("set REMPART_NEW_PASSPHRASE"))?;
                let _lock = r.lock()?;
                r.change_passphrase(&new, &keys_dir())?;
                Ok(ExitCode::SUCCESS)
            }
        },
        Cmd::Run(a) => run_cmd::run(a),
        Cmd::RestoreTest(a) => run_cmd::restore_test_cmd(a),
        Cmd::Mount(a) => mount_cmd::mount(a),
        Cmd::Umount(a) => mount_cmd::umount(a),
        Cmd::ImportBorg(a) => import_borg::import_borg(a),
        Cmd::BreakLock { repo } => {
            let (repo_path, _) = split_target(repo.as_deref())?;
            let backend = backend(&repo_path)?;
            // a mistyped path is an error (borg's too), not a silent success
            Repository::read_config(backend.as_ref()).with_context(|| format!("repository {repo_path}"))?;
            RepoLock::break_lock(backend.as_ref())?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::WithLock { shared, repo, command } => {
            let (repo_path, _) = split_target(Some(&repo))?;
            let repo = open(&repo_path)?;
            let _lock = if shared { repo.shared_lock()? } else { repo.lock()? };
            let status = std::process::Command::new(&command[0])
                .args(&command[1..])
                .status()
                .with_context(|| format!("running {}", command[0]))?;
            // borg: the command's exit code, 2 if it was killed by a signal
            Ok(ExitCode::from(status.code().map_or(2, |c| c.clamp(0, 255) as u8)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_timestamps() {
        let now = Local::now();
        let s = runner::placeholders::expand("{hostname}-{now:%Y}", now).unwrap();
        assert!(s.ends_with(&now.format("-%Y").to_string()));
        assert!(runner::placeholders::expand("{bogus}", now).is_err());
        assert_eq!(parse_timestamp("2024-01-02T03:04:05").unwrap().to_rfc3339(), "2024-01-02T03:04:05+00:00");
        assert_eq!(split_target(Some("r::a")).unwrap(), ("r".into(), Some("a".into())));
    }
}
