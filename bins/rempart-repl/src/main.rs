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
use blockrepl::config::{parse_nbd, NbdEndpoint, ResourceConfig};
use blockrepl::io::{self, LinkConfig};
use blockrepl::meta::Meta;
use blockrepl::nbd::NbdServer;
use blockrepl::proto::{auth_key, Config};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

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
    let peer = c.node[1 - i].clone();
    let meta_path = c.checked_meta_path(&me)?;
    let secret_path = c.resolve(&c.resource.secret_file);
    let secret = std::fs::read(&secret_path).with_context(|| format!("reading secret {}", secret_path.display()))?;
    let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
    if secret.is_empty() {
        bail!("{}: the shared secret is empty", secret_path.display());
    }
    let tiebreak = me.name < peer.name;
    let seed: u64 = rand_seed();
    let mut cfg = Config::new(auth_key(&secret), tiebreak, seed);
    cfg.protocol = c.protocol();
    cfg.after_sb_0pri = c.after_sb_0pri();
    cfg.resync_rate = c.resource.resync_rate_mib << 20;
    cfg.peer_timeout = std::time::Duration::from_millis(c.resource.peer_timeout_ms);
    cfg.al_extents = c.resource.al_extents;
    cfg.checksum_resync = c.resource.checksum_resync;
    cfg.peer_name = format!("{} ({})", peer.name, peer.address);
    let listen: SocketAddr = me.address.parse().context("node address")?;
    let dial = if tiebreak {
        Some(match peer_address {
            Some(a) => a,
            None => peer.address.parse().context("peer address")?,
        })
    } else {
        None
    };
    let nbd = parse_nbd(&me.nbd).map_err(anyhow::Error::msg)?;
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
        let handle = io::start(cfg, &c.resolve(&me.disk), &meta_path, LinkConfig { listen, dial })
            .await
            .with_context(|| format!("starting resource {} on node {}", c.resource.name, me.name))?;
        let name = c.resource.name.clone();
        let sock = socket_path(run_dir);
        let _ = std::fs::remove_file(&sock);
        let ctl = tokio::net::UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()))?;
        tokio::spawn(io::serve_control(ctl, handle.clone(), name.clone()));
        if let Some(m) = metrics {
            let l = tokio::net::TcpListener::bind(m).await.with_context(|| format!("metrics listen {m}"))?;
            tokio::spawn(io::serve_metrics(l, handle.clone(), name.clone()));
        }
        let server = NbdServer::new(name.clone(), Arc::new(handle.clone()));
        match nbd {
            NbdEndpoint::Tcp(a) => {
                let l = tokio::net::TcpListener::bind(a).await.with_context(|| format!("nbd listen {a}"))?;
                tokio::spawn(server.serve_tcp(l));
            }
            NbdEndpoint::Unix(p) => {
                let _ = std::fs::remove_file(&p);
                let l = tokio::net::UnixListener::bind(&p).with_context(|| format!("nbd listen {}", p.display()))?;
                tokio::spawn(server.serve_unix(l));
            }
            _ => bail!("unsupported nbd endpoint"),
        }
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
        let demote = handle.admin(io::Admin::Secondary { force: true });
        match tokio::time::timeout(std::time::Duration::from_secs(10), demote).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not demote before stopping"),
            Err(_) => tracing::warn!("could not demote before stopping: no answer from the replica"),
        }
        info!("stopping");
        Ok(ExitCode::SUCCESS)
    })
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish()
}
