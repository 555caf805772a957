//! `rempart-vrrp`: VRRP failover daemon, a keepalived replacement that reads keepalived.conf.
//!
//! ```text
//! rempart-vrrp run -f /etc/keepalived/keepalived.conf [--run-dir DIR] [--metrics-listen ADDR]
//! rempart-vrrp check-config -f FILE
//! rempart-vrrp status [--json] [--run-dir DIR]
//! ```
//!
//! Exit codes: 0 success; 1 error (bad configuration, daemon not reachable, runtime failure);
//! 2 command-line usage error (from clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vrrp::io::daemon::{self, InstanceStatus, Options};

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
    },
    /// Parse and validate a configuration, print warnings, exit 0 if it would run.
    CheckConfig {
        /// keepalived.conf, or a `.toml` file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Show the state of each instance of the daemon running with this --run-dir.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rempart-vrrp: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &std::path::Path) -> anyhow::Result<vrrp::config::Config> {
    let loaded = vrrp::config::load(file).with_context(|| format!("configuration {}", file.display()))?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded.config)
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        Cmd::CheckConfig { file } => {
            let cfg = load(&file)?;
            println!(
                "{}: OK ({} instance(s), {} script(s), {} sync group(s))",
                file.display(),
                cfg.instances.len(),
                cfg.scripts.len(),
                cfg.sync_groups.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { file, metrics_listen } => {
            let cfg = load(&file)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            rt.block_on(daemon::run(Options { config_path: file, run_dir: cli.run_dir, metrics_listen }, cfg))?;
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
