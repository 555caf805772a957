//! The reference deployment of DESIGN.md as network namespaces on one machine, and the drill
//! that exercises it.
//!
//! ```text
//!             mgmt 192.168.50.0/24 (bridge)            VIP 192.168.50.50 (later issues)
//!   ┌──────────────┬──────────────┬────────────────┬──────────────┐
//!   main .10       backup .20     monitoring .30   client .100
//!   │              │
//!   └── repl 192.168.56.0/24 (bridge): main .10, backup .20
//! ```
//!
//! The drill is a list of [`Step`]s run in order on a fresh lab; each prints one line of the
//! report with what it measured. This issue's step proves every host reaches the others with a
//! real TCP exchange from inside the namespaces; failover, replication and backup steps plug in
//! after it. Nothing is ever added to the root namespace, and the lab is removed when the drill
//! ends, also on failure.

#![warn(missing_docs)]

use std::fmt;
use std::time::Instant;

use anyhow::Context as _;
pub use rempart_testkit::Lab;

pub mod glue;
pub mod monitor;
pub mod monitoring;
pub mod node;
pub mod node_column;
pub mod probe;
pub mod report;
pub mod steps;
pub mod vm;

/// The name of the lab `rempart-lab up` keeps between commands (namespaces `rempart-lab-<host>`).
pub const PERSISTENT_NAME: &str = "rempart-lab";

/// A host of the reference deployment: name and addresses per network.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    /// Host name, also the namespace suffix.
    pub name: &'static str,
    /// Address on the management network.
    pub mgmt: &'static str,
    /// Address on the replication network, if the host is on it.
    pub repl: Option<&'static str>,
}

/// The management network's prefix length.
pub const MGMT_PREFIX: u8 = 24;
/// The replication network's prefix length.
pub const REPL_PREFIX: u8 = 24;
/// The virtual IP that the failover part moves between main and backup.
pub const VIP: &str = "192.168.50.50";

/// The hosts, as in DESIGN.md.
pub const HOSTS: [Host; 4] = [
    Host { name: "main", mgmt: "192.168.50.10", repl: Some("192.168.56.10") },
    Host { name: "backup", mgmt: "192.168.50.20", repl: Some("192.168.56.20") },
    Host { name: "monitoring", mgmt: "192.168.50.30", repl: None },
    Host { name: "client", mgmt: "192.168.50.100", repl: None },
];

/// Looks a host up by name.
pub fn host(name: &str) -> Option<&'static Host> {
    HOSTS.iter().find(|h| h.name == name)
}

/// Builds the reference topology into an empty lab.
pub fn build(lab: &mut Lab) -> anyhow::Result<()> {
    lab.add_lan("mgmt")?;
    lab.add_lan("repl")?;
    for h in HOSTS {
        lab.add_host(h.name)?;
        lab.attach("mgmt", h.name, &format!("{}/{MGMT_PREFIX}", h.mgmt))?;
        if let Some(r) = h.repl {
            lab.attach("repl", h.name, &format!("{r}/{REPL_PREFIX}"))?;
        }
    }
    Ok(())
}

/// The reference lab, with per-process namespace names (removed when dropped).
pub fn reference() -> anyhow::Result<Lab> {
    let mut lab = Lab::new()?;
    build(&mut lab).context("building the reference lab")?;
    Ok(lab)
}

/// Whether a step passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what it claims.
    Ok,
    /// It failed; the line says why.
    Failed,
}

/// One line of the drill report.
#[derive(Debug, Clone)]
pub struct Line {
    /// Step name.
    pub step: String,
    /// Passed or failed.
    pub outcome: Outcome,
    /// What was measured (or the error).
    pub detail: String,
    /// How long the step took, in seconds.
    pub seconds: f64,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
        };
        write!(f, "[{tag:>6}] {:<14} {:>7.2}s  {}", self.step, self.seconds, self.detail)
    }
}

/// A step of the drill: does something to the lab and measures it.
pub trait Step {
    /// Short name shown in the report.
    fn name(&self) -> &'static str;
    /// Runs the step; the returned text is the report line's detail (measured numbers).
    fn run(&mut self, lab: &mut Lab) -> anyhow::Result<String>;
}

/// The drill's steps, in order.
pub fn default_steps() -> Vec<Box<dyn Step>> {
    vec![
        Box::new(steps::Reachability::default()),
        Box::new(steps::VrrpFailover),
        Box::new(steps::ReplicatedVolume::default()),
        Box::new(steps::BackupRestore::default()),
        Box::new(node_column::NodeDrill),
        Box::new(monitor::AlertDrill::default()),
    ]
}

/// Runs `steps` in order on `lab`, calling `report` with each line as it completes. Stops at the
/// first failure (later steps depend on earlier ones). Returns every line.
pub fn drill(lab: &mut Lab, steps: &mut [Box<dyn Step>], mut report: impl FnMut(&Line)) -> Vec<Line> {
    let mut lines = Vec::new();
    for step in steps.iter_mut() {
        let t = Instant::now();
        let r = step.run(lab);
        let line = Line {
            step: step.name().to_string(),
            outcome: if r.is_ok() { Outcome::Ok } else { Outcome::Failed },
            detail: match r {
                Ok(d) => d,
                Err(e) => format!("{e:#}"),
            },
            seconds: t.elapsed().as_secs_f64(),
        };
        report(&line);
        let failed = line.outcome == Outcome::Failed;
        lines.push(line);
        if failed {
            break;
        }
    }
    lines
}
