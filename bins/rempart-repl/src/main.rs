//! `rempart-repl`: userspace DRBD-like replicated block device, served over NBD.
//!
//! ```text
//! rempart-repl create-md -c r0.toml --node main
//! rempart-repl run -c r0.toml --node main --run-dir /run/rempart-r0 [--metrics-listen ADDR]
//! rempart-repl status [--json] --run-dir /run/rempart-r0
//! rempart-repl primary [--force] | secondary | connect [--discard-my-data] | disconnect
//!              | verify | invalidate   --run-dir /run/rempart-r0
//! ```
//!
//! Exit codes: 0 success; 1 error (bad config, refused state change, daemon unreachable,
//! another daemon already running with the same `--run-dir`).
//!
//! Signals (`run`): TERM and INT stop the daemon (after demoting it if nothing is in flight);
//! HUP is a logged no-op (no reload: restart to apply a changed resource file); USR1 logs the
//! status (`drbdadm status` layout), USR2 the status as JSON with its counters. No other
//! signal is caught.
//!
//! One daemon per run directory: `run` holds `RUN_DIR/repl.pid` under a lock for its whole
//! life; a second `run` with the same directory fails at start and touches nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use blockrepl::config::ResourceConfig;
use blockrepl::io;
use blockrepl::meta::Meta;
use blockrepl::resource::{Resource, ResourceSpec};
use clap::{Parser, Subcommand};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

mod control;

#[derive(Debug, Parser)]
#[command(version, about = "Synchronous block replication (DRBD protocol C) with an NBD frontend")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write fresh metadata for this node's disk.
    CreateMd {
        /// Resource file.
        #[arg(short = 'c', long)]
        config: PathBuf,
        /// This node's name in the file.
        #[arg(long)]
        node: String,
        /// Overwrite existing metadata.
        #[arg(long)]
        force: bool,
    },
    /// Run the replica daemon.
    Run {
        /// Resource file.
        #[arg(short = 'c', long)]
        config: PathBuf,
        /// This node's name in the file.
        #[arg(long)]
        node: String,
        /// Directory for the control socket.
        #[arg(long, default_value = "/run/rempart-repl")]
        run_dir: PathBuf,
        /// Serve Prometheus metrics here.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Dial the peer here instead of its configured address (e.g. through a proxy).
        #[arg(long)]
        peer_address: Option<SocketAddr>,
    },
    /// Show the resource state (drbdadm status layout).
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        ctl: Ctl,
    },
    /// Become Primary.
    Primary {
        /// Even if the local disk is not UpToDate (starts the initial sync of a fresh pair).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        ctl: Ctl,
    },
    /// Become Secondary (refused while an NBD client has the device open).
    Secondary {
        /// Even while NBD clients have the device open: their I/O fails from then on.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        ctl: Ctl,
    },
    /// Connect to the peer.
    Connect {
        /// Split-brain victim: resync from the peer.
        #[arg(long)]
        discard_my_data: bool,
        #[command(flatten)]
        ctl: Ctl,
    },
    /// Disconnect from the peer (StandAlone).
    Disconnect {
        #[command(flatten)]
        ctl: Ctl,
    },
    /// Online verify against the peer.
    Verify {
        #[command(flatten)]
        ctl: Ctl,
    },
    /// Declare the local data bad (full resync from the peer).
    Invalidate {
        #[command(flatten)]
        ctl: Ctl,
    },
}

#[derive(Debug, clap::Args)]
struct Ctl {
    /// Directory of the running daemon's control socket.
    #[arg(long, default_value = "/run/rempart-repl")]
    run_dir: PathBuf,
}

fn main() -> ExitCode {
    rempart_daemon::init_logging("RUST_LOG", "info");
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rempart-repl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("repl.ctl")
}

fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let (ctl, line) = match cli.cmd {
        Cmd::CreateMd { config, node, force } => return create_md(&config, &node, force),
        Cmd::Run { config, node, run_dir, metrics_listen, peer_address } => {
            return daemon(&config, &node, &run_dir, metrics_listen, peer_address)
        }
        Cmd::Status { json, ctl } => (ctl, if json { "status --json" } else { "status" }.to_string()),
        Cmd::Primary { force, ctl } => (ctl, if force { "primary --force" } else { "primary" }.to_string()),
        Cmd::Secondary { force, ctl } => (ctl, if force { "secondary --force" } else { "secondary" }.to_string()),
        Cmd::Connect { discard_my_data, ctl } => {
            (ctl, if discard_my_data { "connect --discard-my-data" } else { "connect" }.to_string())
        }
        Cmd::Disconnect { ctl } => (ctl, "disconnect".into()),
        Cmd::Verify { ctl } => (ctl, "verify".into()),
        Cmd::Invalidate { ctl } => (ctl, "invalidate".into()),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let path = socket_path(&ctl.run_dir);
    let reply = rt.block_on(async {
        let mut s = tokio::net::UnixStream::connect(&path)
            .await
            .with_context(|| format!("cannot reach the daemon at {}", path.display()))?;
        s.write_all(format!("{line}\n").as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        anyhow::Ok(out)
    })?;
    match reply.split_once('\n') {
        Some(("ok", rest)) => {
            print!("{rest}");
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("{}", reply.trim().trim_start_matches("error: ")),
    }
}

fn load(config: &Path, node: &str) -> anyhow::Result<(ResourceConfig, usize)> {
    let c = ResourceConfig::load(config)?;
    let i = c
        .node
        .iter()
        .position(|n| n.name == node)
        .with_context(|| format!("{}: no [[node]] named {node:?}", config.display()))?;
    Ok((c, i))
}

fn create_md(config: &Path, node: &str, force: bool) -> anyhow::Result<ExitCode> {
    let (c, i) = load(config, node)?;
    let n = &c.node[i];
    let disk = c.resolve(&n.disk);
    let meta = c.checked_meta_path(n)?;
    if meta.exists() && !force {
        bail!("{}: metadata exists (use --force to overwrite)", meta.display());
    }
    let size = blockrepl::store::FileStore::open(&disk)
        .with_context(|| format!("opening disk {}", disk.display()))
        .map(|s| blockrepl::store::BlockStore::size(&s))?;
    io::store_meta(&meta, &Meta::fresh(size)).with_context(|| format!("writing {}", meta.display()))?;
    println!("{}: metadata for {size} bytes written to {}", c.resource.name, meta.display());
    Ok(ExitCode::SUCCESS)
}

fn daemon(
    config: &Path,
    node: &str,
    run_dir: &Path,
    metrics: Option<SocketAddr>,
    peer_address: Option<SocketAddr>,
) -> anyhow::Result<ExitCode> {
    let (c, i) = load(config, node)?;
    let me = c.node[i].clone();
    let spec = ResourceSpec::from_config(&c, node, peer_address)
        .with_context(|| format!("{}: resource {} on node {}", config.display(), c.resource.name, me.name))?;
    std::fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    // Before anything is bound or removed: a second daemon on this run directory stops here,
    // leaving the first one's control socket alone.
    let _pid = rempart_daemon::PidLock::acquire(run_dir.join("repl.pid"))
        .with_context(|| format!("cannot run resource {} with run directory {}", c.resource.name, run_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        // Caught from the start: an operator's `kill -HUP` or `kill -USR1` must never kill it.
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let mut usr2 = signal(SignalKind::user_defined2())?;
        let mut registry = Registry::default();
        let resource = Resource::start(spec, &mut registry)
            .await
            .with_context(|| format!("starting resource {} on node {}", c.resource.name, me.name))?;
        let handle = resource.handle().clone();
        let name = c.resource.name.clone();
        let sock = socket_path(run_dir);
        let _ = std::fs::remove_file(&sock);
        let ctl = tokio::net::UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
        let ctl = tokio::spawn(control::serve(ctl, handle.clone(), name.clone()));
        let metrics = match metrics {
            Some(m) => {
                let l = tokio::net::TcpListener::bind(m).await.with_context(|| format!("metrics listen {m}"))?;
                Some(tokio::spawn(rempart_daemon::metrics::serve(l, Arc::new(registry))))
            }
            None => None,
        };
        info!(resource = %name, node = %me.name, "running");
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP: reload is not supported, ignored (restart the daemon to apply a changed resource file)");
                }
                _ = usr1.recv() => match handle.status().await {
                    Some(s) => info!("SIGUSR1: status\n{}", io::status_text(&name, &s).trim_end()),
                    None => tracing::warn!("SIGUSR1: the replica has stopped"),
                },
                _ = usr2.recv() => match handle.status().await {
                    Some(s) => info!("SIGUSR2: status {}", io::status_json(&name, &s)),
                    None => tracing::warn!("SIGUSR2: the replica has stopped"),
                },
            }
        }
        // A clean stop demotes first, so the next start is not treated as a crashed Primary
        // (which would resync the activity log). Refused while writes are in flight: then the
        // activity log covers them.
        // The peer is told (it answers within its timeout, or the connection is declared lost).
        let demote = handle.demote(true);
        match tokio::time::timeout(std::time::Duration::from_secs(10), demote).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not demote before stopping"),
            Err(_) => tracing::warn!("could not demote before stopping: no answer from the replica"),
        }
        info!("stopping");
        ctl.abort();
        let _ = std::fs::remove_file(&sock);
        if let Some(m) = metrics {
            m.abort();
        }
        match tokio::time::timeout(std::time::Duration::from_secs(30), resource.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "stopping the resource"),
            Err(_) => tracing::warn!("the resource did not stop within 30 s"),
        }
        Ok(ExitCode::SUCCESS)
    })
}
