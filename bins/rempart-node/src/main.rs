//! `rempart-node`: one daemon per host that fails a whole service over, and the quorum witness.
//!
//! ```text
//! rempart-node witness -c /etc/rempart/witness.toml [--run-dir /run/rempart-witness]
//! rempart-node witness --listen IP:PORT --secret-file FILE [--max-ttl SECS] [--metrics-listen IP:PORT]
//! rempart-node check-config -c /etc/rempart/node.toml
//! rempart-node check-config --witness -c /etc/rempart/witness.toml
//! ```
//!
//! Exit codes: 0 success (`check-config`: the file is valid, `OK` printed); 1 error (invalid
//! file — each problem printed as `FILE:LINE: KEY: what` —, unreadable secret, address in use,
//! another witness already running with the same `--run-dir`).
//!
//! Signals (`witness`): TERM and INT stop it. Under systemd (`Type=notify`) it reports
//! `READY=1` once listening and, when the unit sets `WatchdogSec=`, pings the watchdog at half
//! that interval.
//!
//! `rempart-node run` (the node daemon itself) is not here yet (issue 15).

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

#[derive(Debug, Parser)]
#[command(version, about = "rempart-node: whole-service failover for one host, and the quorum witness")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
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
