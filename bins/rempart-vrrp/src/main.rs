//! `rempart-vrrp`: VRRP failover daemon, a keepalived replacement that reads keepalived.conf.
//!
//! ```text
//! rempart-vrrp run -f /etc/keepalived/keepalived.conf [--lenient] [--run-dir DIR] [--metrics-listen ADDR]
//! rempart-vrrp check-config -f FILE [--lenient]
//! rempart-vrrp status [--json] [--run-dir DIR]
//! ```
//!
//! A thin user of the engine ([`vrrp::io::engine`]): the binary owns the pid file
//! (`RUN_DIR/rempart-vrrp.pid`, held under a lock for the daemon's life: a second daemon with the
//! same run directory refuses to start), the logging set-up (colour only on a terminal), the
//! control socket (`RUN_DIR/rempart-vrrp.sock`, what `status` reads), the metrics HTTP server
//! (`rempart_daemon::metrics::serve`) and the signals, handled as keepalived does: SIGTERM and
//! SIGINT stop (priority 0 advert, VIPs removed), SIGHUP reloads the file, SIGUSR1 / SIGUSR2 /
//! SIGRTMIN+2 write the data / stats / JSON dumps into the run directory (not /tmp, issue 14),
//! SIGRTMAX (keepalived's "clear stats") is logged and ignored. The engine's events become the
//! log lines of the state changes.
//!
//! Exit codes: 0 success; 1 error (bad configuration, already running, daemon not reachable,
//! runtime failure); 2 command-line usage error (from clap).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rempart_daemon::{PidLock, PidLockError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};
use vrrp::config::{ConfigError, Keywords};
use vrrp::io::engine::{self, Event, Handle, InstanceStatus, Options};

/// File name of the control socket inside the run directory.
const CONTROL_SOCKET: &str = "rempart-vrrp.sock";
/// SIGUSR1's dump (keepalived: /tmp/keepalived.data), in the run directory.
const DATA_FILE: &str = "rempart-vrrp.data";
/// SIGUSR2's dump (keepalived: /tmp/keepalived.stats), in the run directory.
const STATS_FILE: &str = "rempart-vrrp.stats";
/// The JSON signal's dump (SIGRTMIN+2, `keepalived --signum=JSON`; the `status --json`
/// document), in the run directory.
const JSON_FILE: &str = "rempart-vrrp.json";

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
            rt.block_on(daemon(file, kw, cli.run_dir.clone(), metrics_listen, cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
            let st = rt.block_on(query_status(&cli.run_dir)).context("is rempart-vrrp running with this --run-dir?")?;
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

/// The signals an operator of keepalived sends (issue 14: SIGUSR1, whose default action is to
/// terminate, killed the daemon and left its VIPs, pid file and socket behind).
#[derive(Debug, Clone, Copy)]
enum Sig {
    Term,
    Int,
    Hup,
    Usr1,
    Usr2,
    Json,
    StatsClear,
}

/// Runs the engine until SIGTERM/SIGINT.
async fn daemon(
    file: PathBuf,
    kw: Keywords,
    run_dir: PathBuf,
    metrics_listen: Option<SocketAddr>,
    cfg: vrrp::config::Config,
) -> anyhow::Result<()> {
    // Handlers first: a signal during start-up must not kill the process with its default action.
    let handlers = [
        (SignalKind::terminate(), Sig::Term, "SIGTERM"),
        (SignalKind::interrupt(), Sig::Int, "SIGINT"),
        (SignalKind::hangup(), Sig::Hup, "SIGHUP"),
        (SignalKind::user_defined1(), Sig::Usr1, "SIGUSR1"),
        (SignalKind::user_defined2(), Sig::Usr2, "SIGUSR2"),
        (SignalKind::from_raw(nix::libc::SIGRTMIN() + 2), Sig::Json, "SIGRTMIN+2"),
        (SignalKind::from_raw(nix::libc::SIGRTMAX()), Sig::StatsClear, "SIGRTMAX"),
    ];
    let (sig_tx, mut sigs) = tokio::sync::mpsc::unbounded_channel();
    let mut sig_tasks = Vec::new();
    for (kind, which, name) in handlers {
        let mut s = signal(kind).with_context(|| format!("{name} handler"))?;
        let tx = sig_tx.clone();
        sig_tasks.push(tokio::spawn(async move {
            while s.recv().await.is_some() {
                if tx.send(which).is_err() {
                    return;
                }
            }
        }));
    }
    // Bound before the engine starts: a busy port must not leave an owner's VIPs behind.
    let metrics_listener = match metrics_listen {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await.with_context(|| format!("metrics listen {a}"))?),
        None => None,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let opts = Options { config_path: Some(file.clone()), ..Options::default() };
    let (handle, events) = engine::start(cfg, opts, &mut registry).await?;
    let logger = tokio::spawn(log_events(events));
    let registry = Arc::new(registry);
    let metrics_task = metrics_listener.map(|l| tokio::spawn(rempart_daemon::metrics::serve(l, registry)));
    // Removed however this ends.
    let socket_path = run_dir.join(CONTROL_SOCKET);
    let _socket = RemoveOnDrop(socket_path.clone());
    let control = tokio::spawn(serve_control(socket_path, handle.clone()));
    while let Some(sig) = sigs.recv().await {
        match sig {
            Sig::Term => {
                info!("SIGTERM: stopping");
                break;
            }
            Sig::Int => {
                info!("SIGINT: stopping");
                break;
            }
            Sig::Hup => {
                info!("SIGHUP: reloading");
                reload(&handle, &file, kw).await;
            }
            Sig::Usr1 => {
                let r = match handle.data_dump().await {
                    Ok(text) => write_dump(&run_dir, DATA_FILE, &text),
                    Err(e) => Err(std::io::Error::other(e)),
                };
                log_dump("SIGUSR1", "data", r);
            }
            Sig::Usr2 => {
                let r = match handle.stats_dump().await {
                    Ok(text) => write_dump(&run_dir, STATS_FILE, &text),
                    Err(e) => Err(std::io::Error::other(e)),
                };
                log_dump("SIGUSR2", "stats", r);
            }
            Sig::Json => {
                let r = match handle.status().await {
                    Ok(st) => serde_json::to_string_pretty(&st)
                        .map_err(std::io::Error::other)
                        .and_then(|j| write_dump(&run_dir, JSON_FILE, &j)),
                    Err(e) => Err(std::io::Error::other(e)),
                };
                log_dump("SIGRTMIN+2", "JSON", r);
            }
            Sig::StatsClear => {
                info!("SIGRTMAX (keepalived: clear stats): ignored, counters are never reset (Prometheus)");
            }
        }
    }
    control.abort();
    handle.shutdown().await;
    // The last events (the transitions to INIT) are logged before we exit.
    let _ = logger.await;
    if let Some(m) = metrics_task {
        m.abort();
    }
    for t in sig_tasks {
        t.abort();
    }
    Ok(())
}

/// SIGHUP: reads the file again (with the keyword handling of the start); a file that does not
/// load leaves the running configuration as it is.
async fn reload(handle: &Handle, file: &Path, kw: Keywords) {
    let loaded = match vrrp::config::load_with(file, kw) {
        Ok(l) => l,
        Err(e) => {
            warn!("reload failed, keeping the running configuration: {}", engine::chain(&e));
            return;
        }
    };
    for w in &loaded.warnings {
        warn!("{w}");
    }
    // The engine logs "configuration reloaded", or why it refused.
    let _ = handle.reload(loaded.config).await;
}

/// The engine's events as log lines (state changes at info, as keepalived logs them).
async fn log_events(mut events: engine::Events) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        match events.recv().await {
            Ok(Event::StateChanged(c)) => info!(instance = %c.instance, "{c}"),
            Ok(Event::VipsChanged { instance, held }) => {
                tracing::debug!(instance = %instance, "VIPs {}", if held { "added" } else { "removed" })
            }
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => warn!("{n} engine events not logged (the logger fell behind)"),
            Err(RecvError::Closed) => return,
        }
    }
}

/// Answers every connection on the control socket with the status as JSON.
async fn serve_control(path: PathBuf, handle: Handle) {
    let _ = std::fs::remove_file(&path);
    let l = match tokio::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            warn!("control socket {}: {e}", path.display());
            return;
        }
    };
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let body = match handle.status().await {
                Ok(st) => serde_json::to_string(&st).unwrap_or_default(),
                Err(_) => return,
            };
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Reads the status from a running daemon's control socket in `run_dir`.
async fn query_status(run_dir: &Path) -> anyhow::Result<Vec<InstanceStatus>> {
    let path = run_dir.join(CONTROL_SOCKET);
    let mut s = tokio::net::UnixStream::connect(&path).await.with_context(|| format!("connect {}", path.display()))?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.context("read status")?;
    serde_json::from_str(&body).context("parse status")
}

/// Removes a file when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes `text` to `dir/name` through a temporary file and a rename (a reader never sees half
/// a dump); returns the path.
fn write_dump(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    use std::io::Write as _;
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn log_dump(signal: &str, what: &str, r: std::io::Result<PathBuf>) {
    match r {
        Ok(p) => info!("{signal}: {what} dump written to {}", p.display()),
        Err(e) => warn!("{signal}: cannot write the {what} dump into the run directory: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_dump_replaces_the_file_whole() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(DATA_FILE), "old and much longer content\n").unwrap();
        let p = write_dump(d.path(), DATA_FILE, "new\n").unwrap();
        assert_eq!(p, d.path().join(DATA_FILE));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new\n");
        assert!(!d.path().join(format!(".{DATA_FILE}.tmp")).exists());
    }
}
