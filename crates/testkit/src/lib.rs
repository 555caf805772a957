//! rempart's test kit (a dev-dependency only): the base every multi-host test stands on.
//!
//! ```text
//!   sim     — SimClock, SimNet (seeded loss/delay/duplication/partitions), CrashDisk, run_seeds
//!             for sans-IO cores in simulated time
//!   netns   — Lab: hosts as network namespaces, veth links, bridged LANs, cut/heal, spawn/enter
//!             for real binaries and real peers (keepalived, qemu, borg) on one machine
//!   proxy   — FaultProxy: forward / delay / drop / blackhole / reset a TCP link while it runs
//!   wait    — poll a condition with a deadline instead of sleeping
//! ```
//!
//! **Network rule.** Every packet a test sends starts and ends on loopback or inside the test's
//! own namespaces: a [`Lab`] never adds an address or a route to the root namespace, links are
//! created inside the hosts' namespaces, and probes run inside a host ([`Lab::enter`],
//! [`Lab::cmd`]). Dropping a `Lab` removes everything it made, also on panic.
//!
//! A two-host test, as the crates' integration tests write them:
//!
//! ```no_run
//! use std::net::{TcpListener, TcpStream};
//! use rempart_testkit::{require_root, Lab};
//!
//! # fn main() -> anyhow::Result<()> {
//! if !require_root("network namespaces") {
//!     return Ok(());
//! }
//! let mut lab = Lab::new()?;
//! lab.add_host("a")?;
//! lab.add_host("b")?;
//! lab.link("a", "b", "10.9.0.1/24", "10.9.0.2/24")?;
//! let server = lab.enter("b", || TcpListener::bind("10.9.0.2:9000"))??;
//! assert!(lab.enter("a", || TcpStream::connect("10.9.0.2:9000").is_ok())?);
//! lab.cut("a", "b")?; // link down: the exchange now fails until `heal`
//! # drop(server);
//! # Ok(())
//! # }
//! // Dropping `lab` kills its processes and deletes its namespaces, also on panic.
//! ```
//!
//! **Root.** Tests that need namespaces or raw sockets start with [`require_root`]: without root
//! they print why and return early, except under CI (`CI` set), where they fail — CI never skips.

#![warn(missing_docs)]

pub mod netns;
pub mod proxy;
pub mod sim;
pub mod wait;

pub use netns::{Lab, Proc};
pub use proxy::{FaultProxy, Mode};

/// Whether this process may use namespaces and raw sockets (effective uid 0). Without root it
/// prints why the calling test returns early; under CI (`CI` set to anything but `false`/empty)
/// it panics instead, so that CI never skips a test silently.
pub fn require_root(why: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let ci = std::env::var("CI").map(|v| !v.is_empty() && v != "false").unwrap_or(false);
    if ci {
        panic!("this test needs root ({why}) and CI must not skip it: run the suite as root");
    }
    eprintln!("SKIPPED (not root): this test needs root for {why}; run as root to execute it");
    false
}
