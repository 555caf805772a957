//! `rempart-lab`: the reference deployment in network namespaces.
//!
//! Exit codes: 0 success, 1 a drill step failed, 2 usage or setup error.

use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use rempart_lab::{build, default_steps, drill, Lab, Outcome, HOSTS, PERSISTENT_NAME, VIP};

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
    Drill,
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
    if !nix_is_root() {
        bail!("rempart-lab needs root (network namespaces)");
    }
    match cli.cmd {
        Cmd::Up => {
            let mut lab = Lab::named(PERSISTENT_NAME)?;
            build(&mut lab)?;
            lab.keep();
            println!("lab {PERSISTENT_NAME} is up (remove it with `rempart-lab down`):");
            for h in HOSTS {
                let repl = h.repl.map(|r| format!(", repl {r}")).unwrap_or_default();
                println!("  {:<11} netns {PERSISTENT_NAME}-{:<11} mgmt {}{repl}", h.name, h.name, h.mgmt);
            }
            println!("  virtual IP {VIP} (held by whichever of main/backup is VRRP master)");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => {
            let gone = rempart_testkit::netns::destroy(PERSISTENT_NAME)?;
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
        Cmd::Drill => {
            let mut lab = rempart_lab::reference()?;
            println!("rempart drill — lab {} (main, backup, monitoring, client)", lab.id());
            let mut steps = default_steps();
            let lines = drill(&mut lab, &mut steps, |l| println!("{l}"));
            drop(lab);
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
