//! The drill's steps. Each later part (failover, replication, backup) adds its own here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;

use crate::probe::{tcp_ping, EchoServer, ECHO_PORT};
use crate::{Lab, Step, HOSTS};

/// Every host reaches every other on each network they share, by a real TCP exchange from
/// inside the namespaces. Reports the number of pairs and the round-trip median and maximum.
#[derive(Debug)]
pub struct Reachability {
    /// Echo round trips per pair.
    pub round_trips: usize,
}

impl Default for Reachability {
    fn default() -> Self {
        Self { round_trips: 10 }
    }
}

fn sock(ip: &str) -> anyhow::Result<SocketAddr> {
    let ip: IpAddr = ip.parse().with_context(|| format!("bad address {ip}"))?;
    Ok(SocketAddr::new(ip, ECHO_PORT))
}

impl Step for Reachability {
    fn name(&self) -> &'static str {
        "reachability"
    }

    fn run(&mut self, lab: &mut Lab) -> anyhow::Result<String> {
        let mut servers = Vec::new();
        // (network, host, address) of every attachment.
        let mut ends = Vec::new();
        for h in HOSTS {
            ends.push(("mgmt", h.name, sock(h.mgmt)?));
            if let Some(r) = h.repl {
                ends.push(("repl", h.name, sock(r)?));
            }
        }
        for (_, host, addr) in &ends {
            servers.push(EchoServer::start(lab, host, *addr)?);
        }
        let mut rtts: Vec<Duration> = Vec::new();
        let mut pairs = 0;
        for (net_a, a, _) in &ends {
            for (net_b, b, addr) in &ends {
                if net_a != net_b || a == b {
                    continue;
                }
                let (_, r) = tcp_ping(lab, a, *addr, self.round_trips)?;
                rtts.extend(r);
                pairs += 1;
            }
        }
        drop(servers);
        rtts.sort();
        let median = rtts.get(rtts.len() / 2).copied().unwrap_or_default();
        let max = rtts.last().copied().unwrap_or_default();
        Ok(format!(
            "{pairs} host pairs over mgmt and repl, TCP echo RTT median {:.0} µs, max {:.0} µs",
            median.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6
        ))
    }
}
