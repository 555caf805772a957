//! `rempart-vrrp`: VRRP failover daemon, a keepalived replacement that reads keepalived.conf.
//!
//! ```text
//! rempart-vrrp run -f /etc/keepalived/keepalived.conf [--lenient] [--run-dir DIR] [--metrics-listen ADDR]
//! rempart-vrrp check-config -f FILE [--lenient]
//! rempart-vrrp status [--json] [--run-dir DIR]
//! ```
//!
//! The binary owns the pid file (`RUN_DIR/rempart-vrrp.pid`, held under a lock for the daemon's
//! life: a second daemon with the same run directory refuses to start) and the logging set-up
//! (colour only on a terminal); signals are handled as keepalived does (see
//! [`vrrp::io::daemon`]: TERM/INT stop, HUP reloads, USR1/USR2 write dumps into the run
//! directory).
//!
//! Exit codes: 0 success; 1 error (bad configuration, already running, daemon not reachable,
//! runtime failure); 2 command-line usage error (from clap).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rempart_daemon::{PidLock, PidLockError};
use vrrp::config::{ConfigError, Keywords};
use vrrp::io::daemon::{self, InstanceStatus, Options};

/// File name of the pid file inside the run directory.
const PID_FILE: &str = "rempart-vrrp.pid";

#[derive(Debug, Parser)]
#[command(name = "rempart-vrrp", version, about = "VRRP failover daemon (keepalived replacement)")]
struct Cli {
    /// Directory for the pid file and the control socket (one per daemon, so several can run
    /// side by side in different network namespaces).
    #[arg(long, global = true, default_value = "/run/rempart-vrrp", env = "REMPART_VRRP_RUN_DIR")]
    run_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground.
    Run {
        /// keepalived.conf, or a `.toml` file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9650).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Accept unknown keywords and keepalived features rempart-vrrp does not implement
        /// (warnings instead of errors), for a migration. Failover may then differ from keepalived.
        #[arg(long)]
        lenient: bool,
    },
    /// Parse and validate a configuration and check its interfaces exist here; print warnings;
    /// exit 0 if it would run.
    CheckConfig {
        /// keepalived.conf, or a `.toml` file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Report unknown and unsupported keywords as warnings, not errors (see `run --lenient`).
        #[arg(long)]
        lenient: bool,
    },
    /// Show the state of each instance of the daemon running with this --run-dir.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Colour only when stderr is a terminal: a journal or a log file gets plain text (issue 14).
    rempart_daemon::init_logging("RUST_LOG", "info");
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // Each layer of the error adds information, so the chain prints each cause once.
            eprintln!("rempart-vrrp: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keywords(lenient: bool) -> Keywords {
    if lenient {
        Keywords::Lenient
    } else {
        Keywords::Strict
    }
}

/// Loads and validates `file` and checks that every interface it names exists here. Errors name
/// the file (and line) themselves, so no context is added.
fn load(file: &Path, kw: Keywords, warn: impl Fn(&vrrp::config::Warning)) -> anyhow::Result<vrrp::config::Config> {
    let loaded = vrrp::config::load_with(file, kw)?;
    for w in &loaded.warnings {
        warn(w);
    }
    let missing = vrrp::io::net::missing_interfaces(&loaded.config);
    if !missing.is_empty() {
        return Err(ConfigError::Invalid(missing).into());
    }
    Ok(loaded.config)
}

fn lock_error(e: PidLockError, run_dir: &Path) -> anyhow::Error {
    match e {
        PidLockError::AlreadyRunning { path, pid } => anyhow::anyhow!(
            "already running (pid {}) with run directory {}: {} is locked; stop it first or use another --run-dir",
            pid.map_or("unknown".to_string(), |p| p.to_string()),
            run_dir.display(),
            path.display()
        ),
        e => anyhow::Error::new(e),
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::CheckConfig { file, lenient } => {
            let cfg = load(&file, keywords(lenient), |w| eprintln!("rempart-vrrp: warning: {w}"))?;
            println!(
                "{}: OK ({} instance(s), {} script(s), {} sync group(s))",
                file.display(),
                cfg.instances.len(),
                cfg.scripts.len(),
                cfg.sync_groups.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { file, metrics_listen, lenient } => {
            let kw = keywords(lenient);
            let cfg = load(&file, kw, |w| tracing::warn!("{w}"))?;
            std::fs::create_dir_all(&cli.run_dir)
                .with_context(|| format!("cannot create the run directory {}", cli.run_dir.display()))?;
            // Before any socket or address is touched: a second daemon on the same run directory
            // would otherwise take over the control socket (issue 14). Dropped (pid file removed)
            // after the daemon has stopped.
            let _pid = PidLock::acquire(cli.run_dir.join(PID_FILE)).map_err(|e| lock_error(e, &cli.run_dir))?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let opts = Options { config_path: file, run_dir: cli.run_dir.clone(), metrics_listen, keywords: kw };
            rt.block_on(daemon::run(opts, cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let st = rt
                .block_on(daemon::query_status(&cli.run_dir))
                .context("is rempart-vrrp running with this --run-dir?")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                print_status(&st);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_status(st: &[InstanceStatus]) {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    for i in st {
        println!(
            "{} vrid:{} {} state:{} priority:{}/{}",
            i.name, i.vrid, i.interface, i.state, i.effective_priority, i.priority
        );
        println!("  master:{} vips:{}", i.master.map_or("-".to_string(), |m| m.to_string()), i.vips.join(","));
        if let (Some(t), Some(r)) = (i.last_transition_unix, &i.last_reason) {
            println!("  last transition: {:.1}s ago ({r})", (now - t).max(0.0));
        }
    }
}
