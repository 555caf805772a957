//! `rempart-node`: one daemon per host that fails a whole service over, and the quorum witness.
//!
//! ```text
//! rempart-node run -c /etc/rempart/node.toml [--run-dir /run/rempart-node] [--state-dir /var/lib/rempart-node]
//! rempart-node status [--json] [--run-dir /run/rempart-node]
//! rempart-node switchover [--run-dir …]
//! rempart-node maintenance on|off [--run-dir …]
//! rempart-node witness -c /etc/rempart/witness.toml [--run-dir /run/rempart-witness]
//! rempart-node witness --listen IP:PORT --secret-file FILE [--max-ttl SECS] [--metrics-listen IP:PORT]
//! rempart-node check-config -c /etc/rempart/node.toml
//! rempart-node check-config --witness -c /etc/rempart/witness.toml
//! ```
//!
//! Exit codes: 0 success (`check-config`: the file is valid, `OK` printed); 1 error (invalid
//! file — each problem printed as `FILE:LINE: KEY: what` —, unreadable secret, address in use,
//! another daemon already running with the same `--run-dir`, a command the node refused, no
//! daemon answering on the control socket).
//!
//! Signals (`run`, `witness`): TERM and INT stop it (`run` first takes the service down in
//! order if it runs here: VIP off, services stopped, unmount, demote, lease released). Under
//! systemd (`Type=notify`) each reports `READY=1` once running and, when the unit sets
//! `WatchdogSec=`, pings the watchdog at half that interval — `run` only while its
//! orchestration loop answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use node::config::{NodeConfig, WitnessFile};
use node::io::witness_server::{WitnessServer, WitnessServerConfig};
use node::witness::server::ServerConfig;
use prometheus_client::registry::Registry;
use tracing::info;

mod notify;
mod status;

const DEFAULT_RUN_DIR: &str = "/run/rempart-node";

#[derive(Debug, Parser)]
#[command(version, about = "rempart-node: whole-service failover for one host, and the quorum witness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the node daemon: VRRP, the replicated resources, the mount, the services, the backup.
    Run {
        /// node.toml.
        #[arg(short = 'c', long, default_value = "/etc/rempart/node.toml")]
        config: PathBuf,
        /// Directory for the pid file, the control socket and nbdfuse's mount points.
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
        /// Directory for persistent state (last backup, the runner's state).
        #[arg(long, default_value = "/var/lib/rempart-node")]
        state_dir: PathBuf,
    },
    /// Show the node's state: roles, disks and connection, quorum and lease, services, the last
    /// transition with each step's duration, backups.
    Status {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
        /// The daemon's run directory.
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Planned move of the service to the peer (this node steps down and lets the peer take it).
    Switchover {
        /// The daemon's run directory.
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Maintenance mode: no automatic failover while on.
    Maintenance {
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        /// The daemon's run directory.
        #[arg(long, default_value = DEFAULT_RUN_DIR)]
        run_dir: PathBuf,
    },
    /// Run the quorum witness (on the monitoring host).
    Witness {
        /// witness.toml (or give the settings as flags).
        #[arg(short = 'c', long, conflicts_with_all = ["listen", "secret_file"])]
        config: Option<PathBuf>,
        /// Listen here (IP:PORT).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// File holding the shared secret.
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Longest lease granted, in seconds.
        #[arg(long, default_value_t = 10.0)]
        max_ttl: f64,
        /// Serve Prometheus metrics here (IP:PORT).
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Directory for the pid file (one witness per directory).
        #[arg(long, default_value = "/run/rempart-witness")]
        run_dir: PathBuf,
    },
    /// Check a configuration file: prints OK, or every problem with file, line and key.
    CheckConfig {
        /// The file (node.toml, or witness.toml with --witness).
        #[arg(short = 'c', long)]
        config: PathBuf,
        /// The file is a witness.toml.
        #[arg(long)]
        witness: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rempart-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Run { config, run_dir, state_dir } => {
            let cfg = NodeConfig::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            rempart_daemon::init_logging("RUST_LOG", "info");
            node_run(cfg, run_dir, state_dir)
        }
        Cmd::Status { json, run_dir } => {
            let v = control(&run_dir, "status")?;
            if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
                bail!("{e}");
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", status::text(&v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Switchover { run_dir } => command(
            &run_dir,
            "switchover",
            "switchover started: this node steps down; follow it with `rempart-node status`",
        ),
        Cmd::Maintenance { mode, run_dir } => {
            let msg = if mode == "on" {
                "maintenance on: no automatic failover until `rempart-node maintenance off`"
            } else {
                "maintenance off: automatic failover again"
            };
            command(&run_dir, &format!("maintenance {mode}"), msg)
        }
        Cmd::CheckConfig { config, witness } => {
            let r =
                if witness { WitnessFile::load(&config).map(|_| ()) } else { NodeConfig::load(&config).map(|_| ()) };
            match r {
                Ok(()) => {
                    println!("OK");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Witness { config, listen, secret_file, max_ttl, metrics_listen, run_dir } => {
            let file = match config {
                Some(path) => WitnessFile::load(&path).map_err(|e| anyhow::anyhow!("{e}"))?,
                None => {
                    let (Some(listen), Some(secret_file)) = (listen, secret_file) else {
                        bail!("give -c witness.toml, or --listen and --secret-file");
                    };
                    let max_ttl = Duration::try_from_secs_f64(max_ttl)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .context("--max-ttl: a positive number of seconds")?;
                    WitnessFile {
                        path: PathBuf::from("(flags)"),
                        listen,
                        secret_file,
                        max_ttl,
                        startup_grace: max_ttl,
                        metrics_listen,
                    }
                }
            };
            rempart_daemon::init_logging("RUST_LOG", "info");
            witness(file, run_dir)
        }
    }
}

/// One request to the running daemon's control socket.
fn control(run_dir: &std::path::Path, req: &str) -> anyhow::Result<serde_json::Value> {
    let path = run_dir.join(node::io::control::SOCKET);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(node::io::control::request(&path, req))
        .with_context(|| format!("no rempart-node answers on {} (is it running? is --run-dir right?)", path.display()))
}

fn command(run_dir: &std::path::Path, req: &str, ok: &str) -> anyhow::Result<ExitCode> {
    let v = control(run_dir, req)?;
    match v.get("error").and_then(|e| e.as_str()) {
        Some(e) => {
            eprintln!("rempart-node: refused: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => {
            println!("{ok}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn node_run(cfg: NodeConfig, run_dir: PathBuf, state_dir: PathBuf) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let _pid = rempart_daemon::PidLock::acquire(run_dir.join("node.pid"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let mut registry = Registry::default();
        let metrics_listener = match cfg.metrics_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics on {addr}"))?,
            ),
            None => None,
        };
        let socket_path = run_dir.join(node::io::control::SOCKET);
        let control = node::io::control::bind(&socket_path)
            .with_context(|| format!("control socket {}", socket_path.display()))?;
        let name = cfg.node.clone();
        let opts = node::io::daemon::NodeOptions { run_dir: run_dir.clone(), state_dir };
        let node = node::io::daemon::start(cfg, opts, &mut registry).await.context("starting the node")?;
        if let Some(l) = metrics_listener {
            tokio::spawn(rempart_daemon::metrics::serve(l, Arc::new(registry)));
        }
        tokio::spawn(node::io::control::serve(control, node.clone()));
        info!(node = %name, "node running");
        notify::ready();
        let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stopped = node.stopped();
        tokio::pin!(stopped);
        let code = loop {
            tokio::select! {
                () = &mut stopped => break ExitCode::FAILURE,
                _ = tokio::signal::ctrl_c() => break ExitCode::SUCCESS,
                _ = term.recv() => break ExitCode::SUCCESS,
                _ = async { match &mut watchdog { Some(w) => { w.tick().await; } None => std::future::pending().await } } => {
                    // Alive means the orchestration loop answers, not just this task.
                    if tokio::time::timeout(Duration::from_secs(1), node.status()).await.is_ok_and(|s| s.is_some()) {
                        notify::watchdog();
                    }
                }
            }
        };
        notify::stopping();
        info!("stopping: taking the service down in order");
        node.shutdown().await;
        let _ = std::fs::remove_file(&socket_path);
        Ok::<ExitCode, anyhow::Error>(code)
    })
}

fn witness(file: WitnessFile, run_dir: PathBuf) -> anyhow::Result<ExitCode> {
    let key = node::io::witness_key(&file.secret_file)?;
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let _pid = rempart_daemon::PidLock::acquire(run_dir.join("witness.pid"))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let mut registry = Registry::default();
        let leases = ServerConfig { startup_grace: file.startup_grace, ..ServerConfig::new(file.max_ttl) };
        let server = WitnessServer::new(WitnessServerConfig::new(leases, key), &mut registry);
        let listener = tokio::net::TcpListener::bind(file.listen)
            .await
            .with_context(|| format!("listening on {}", file.listen))?;
        if let Some(addr) = file.metrics_listen {
            let l = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("metrics on {addr}"))?;
            tokio::spawn(rempart_daemon::metrics::serve(l, Arc::new(registry)));
        }
        info!(
            listen = %file.listen,
            max_ttl = ?file.max_ttl,
            grace = ?file.startup_grace,
            "witness: serving (nothing is granted during the start-up grace)"
        );
        let serve = server.serve(listener);
        tokio::pin!(serve);
        notify::ready();
        let mut watchdog = notify::watchdog_interval().map(tokio::time::interval);
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                () = &mut serve => bail!("the accept loop ended"),
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = async { match &mut watchdog { Some(w) => { w.tick().await; } None => std::future::pending().await } } => notify::watchdog(),
            }
        }
        notify::stopping();
        info!("witness: stopping");
        Ok::<ExitCode, anyhow::Error>(ExitCode::SUCCESS)
    })
}
