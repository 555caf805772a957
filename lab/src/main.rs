//! `rempart-lab`: the reference deployment in network namespaces.
//!
//! Exit codes: 0 success, 1 a drill step failed, 2 usage or setup error.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use std::time::Duration;

use rempart_lab::{build, default_steps, drill, monitor, Lab, Outcome, HOSTS, PERSISTENT_NAME, VIP};

/// The reference three-host deployment (main, backup, monitoring, client) in network namespaces.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build the lab and leave it running (namespaces rempart-lab-<host>).
    Up,
    /// Remove the lab built by `up`: kill its processes (by pid) and delete its namespaces.
    Down,
    /// Run a command inside a host of the lab built by `up`.
    Exec {
        /// main, backup, monitoring or client.
        host: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Build a fresh lab, run every drill step, print the report, tear everything down.
    Drill {
        /// Also write the test report: Markdown to FILE, JSON to FILE with `.json`.
        #[arg(long, value_name = "FILE")]
        report: Option<std::path::PathBuf>,
    },
    /// The monitoring host's webhook receiver: records each Alertmanager notification, with the
    /// time it arrived, as one JSON line of LOG (started by `up` inside the monitoring host).
    Webhook {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// The file to append notifications to.
        #[arg(long)]
        log: std::path::PathBuf,
    },
}

/// Where `up` keeps the monitoring stack's files (configs, TSDB, logs); `down` removes it.
fn monitoring_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{PERSISTENT_NAME}-monitoring"))
}

fn main() -> ExitCode {
    rempart_daemon::init_logging("RUST_LOG", "warn");
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rempart-lab: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // The webhook receiver runs inside a lab host and needs nothing more.
    if !matches!(cli.cmd, Cmd::Webhook { .. }) && !nix_is_root() {
        bail!("rempart-lab needs root (network namespaces)");
    }
    match cli.cmd {
        Cmd::Up => {
            let mut lab = Lab::named(PERSISTENT_NAME)?;
            build(&mut lab)?;
            // No lab of this name exists, so a directory left here is from a crashed run.
            let dir = monitoring_dir();
            let _ = std::fs::remove_dir_all(&dir);
            // On failure the stack kills what it started and the lab removes its namespaces.
            let stack = monitor::Stack::start(&lab, &monitor::Options { dir, interval: Duration::from_secs(5) })
                .context("starting the monitoring host")?;
            let pids = stack.pids();
            let dir = stack.dir().to_path_buf();
            stack.keep();
            lab.keep();
            println!("lab {PERSISTENT_NAME} is up (remove it with `rempart-lab down`):");
            for h in HOSTS {
                let repl = h.repl.map(|r| format!(", repl {r}")).unwrap_or_default();
                println!("  {:<11} netns {PERSISTENT_NAME}-{:<11} mgmt {}{repl}", h.name, h.name, h.mgmt);
            }
            println!("  virtual IP {VIP} (held by whichever of main/backup is VRRP master)");
            let mon = rempart_lab::host("monitoring").map_or("", |h| h.mgmt);
            println!(
                "monitoring: Prometheus http://{mon}:{}, Alertmanager http://{mon}:{} (rules and routes from deploy/), \
                 notifications in {}",
                monitor::PROMETHEUS_PORT,
                monitor::ALERTMANAGER_PORT,
                dir.join("notifications.jsonl").display()
            );
            for (h, what, pid) in pids {
                println!("  {what:<13} on {h:<10} pid {pid}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => {
            // Kills every process inside the namespaces (by pid), then deletes them.
            let gone = rempart_testkit::netns::destroy(PERSISTENT_NAME)?;
            let dir = monitoring_dir();
            if dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
            println!("removed {} namespaces", gone.len());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { host, cmd } => {
            if rempart_lab::host(&host).is_none() {
                bail!("unknown host {host:?} (main, backup, monitoring, client)");
            }
            let ns = format!("{PERSISTENT_NAME}-{host}");
            if !rempart_testkit::netns::list_namespaces()?.contains(&ns) {
                bail!("the lab is not up (no namespace {ns}); run `rempart-lab up` first");
            }
            let err = Command::new("ip").args(["netns", "exec", &ns]).args(&cmd).exec();
            Err(err).context("exec ip netns exec")
        }
        Cmd::Webhook { listen, log } => {
            monitor::serve_webhook(listen, &log)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Drill { report } => {
            let mut lab = rempart_lab::reference()?;
            let id = lab.id().to_string();
            println!("rempart drill — lab {id} (main, backup, monitoring, client)");
            let mut steps = default_steps();
            let lines = drill(&mut lab, &mut steps, |l| println!("{l}"));
            drop(lab);
            if let Some(path) = report {
                let names: Vec<String> = steps.iter().map(|s| s.name().to_string()).collect();
                let (md, json) = rempart_lab::report::write(&path, &lines, &names, &id)?;
                println!("report: {} and {}", md.display(), json.display());
            }
            let failed = lines.iter().any(|l| l.outcome == Outcome::Failed);
            println!(
                "{} of {} steps passed; lab removed",
                lines.iter().filter(|l| l.outcome == Outcome::Ok).count(),
                steps.len()
            );
            Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}
