//! What keepalived writes on its dump signals: the "data" dump (SIGUSR1, keepalived's
//! /tmp/keepalived.data) and the "stats" dump (SIGUSR2, /tmp/keepalived.stats), as text. The
//! handle returns them ([`super::Handle::data_dump`], [`super::Handle::stats_dump`]); the binary
//! owns the signals and writes them into its run directory.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::actor::Core;

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

impl Core {
    /// keepalived's "data" dump: configuration and state of every instance and script.
    pub(super) fn data_dump(&self) -> String {
        let mut o = String::new();
        let g = &self.cfg.global;
        // Writing to a String cannot fail.
        let _ = writeln!(o, "------< rempart-vrrp data dump >------");
        let _ = writeln!(o, " Time = {:.3} (seconds since the Unix epoch)", unix_now());
        let _ = writeln!(o, " Pid = {}", std::process::id());
        let source = self.opts.config_path.as_ref().map_or("-".to_string(), |p| p.display().to_string());
        let _ = writeln!(o, " Configuration file = {source}");
        let _ = writeln!(o, "------< Global definitions >------");
        let _ = writeln!(o, " Router ID = {}", g.router_id.as_deref().unwrap_or("-"));
        let _ = writeln!(o, " Default VRRP version = {}", g.vrrp_version);
        let _ = writeln!(o, " Script user = {}", g.script_user.as_deref().unwrap_or("-"));
        let _ = writeln!(o, " Script security = {}", yes_no(g.enable_script_security));
        let _ = writeln!(o, "------< VRRP Topology >------");
        for i in &self.insts {
            let c = &i.cfg;
            let _ = writeln!(o, " VRRP Instance = {}", c.name);
            let _ = writeln!(o, "   State = {}", i.m.state().keepalived_name());
            if let Some((t, r, detail)) = &i.last {
                let t = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
                match detail {
                    Some(d) => writeln!(o, "   Last transition = {t:.3} ({r}: {d})"),
                    None => writeln!(o, "   Last transition = {t:.3} ({r})"),
                }
                .ok();
            }
            let master = match i.m.master() {
                Some(m) if m == i.src => format!("{m} (this router)"),
                Some(m) => m.to_string(),
                None => "-".into(),
            };
            let _ = writeln!(o, "   Master = {master}");
            let _ = writeln!(o, "   Interface = {} (index {})", c.interface, i.ifc.index);
            let _ = writeln!(o, "   Using src_ip = {}", i.src);
            let _ = writeln!(o, "   Virtual Router ID = {}", c.vrid);
            let _ = writeln!(o, "   VRRP version = {}", c.effective_version(&self.cfg.global));
            let _ = writeln!(o, "   Priority = {} (effective {})", c.priority, i.m.effective_priority());
            let _ = writeln!(o, "   Advert interval = {} s", c.advert_int.as_secs_f64());
            let _ = writeln!(o, "   Preempt = {}", yes_no(c.preempt));
            let _ = writeln!(o, "   Preempt delay = {} s", c.preempt_delay.as_secs_f64());
            let _ = writeln!(o, "   Accept = {}", yes_no(c.accept));
            let _ = writeln!(o, "   Authentication = {}", if c.auth_pass.is_some() { "PASS" } else { "none" });
            let _ = writeln!(o, "   Gratuitous ARP delay = {} s", c.garp_master_delay.as_secs_f64());
            let _ = writeln!(o, "   Gratuitous ARP repeat = {}", c.garp_master_repeat);
            if !c.unicast_peer.is_empty() {
                let _ = writeln!(o, "   Unicast peers = {}", c.unicast_peer.len());
                for p in &c.unicast_peer {
                    let _ = writeln!(o, "     {p}");
                }
            }
            let _ = writeln!(o, "   Virtual IP = {}", c.virtual_ipaddress.len());
            for v in &c.virtual_ipaddress {
                let _ = writeln!(o, "     {v}{}", if i.holds { " (added)" } else { "" });
            }
            if !c.track_interface.is_empty() {
                let _ = writeln!(o, "   Tracked interfaces = {}", c.track_interface.len());
                for t in &c.track_interface {
                    let _ = writeln!(o, "     {} weight {}", t.name, t.weight.unwrap_or(0));
                }
            }
            if !c.track_script.is_empty() {
                let _ = writeln!(o, "   Tracked scripts = {}", c.track_script.len());
                for t in &c.track_script {
                    let _ = writeln!(o, "     {} ({})", t.name, self.script_state(&t.name));
                }
            }
        }
        for g in &self.cfg.sync_groups {
            let _ = writeln!(o, " VRRP Sync Group = {}", g.name);
            for m in &g.group {
                let _ = writeln!(o, "   {m}");
            }
        }
        if !self.cfg.scripts.is_empty() {
            let _ = writeln!(o, "------< VRRP Scripts >------");
            for s in &self.cfg.scripts {
                let _ = writeln!(o, " VRRP Script = {}", s.name);
                let _ = writeln!(o, "   Command = {}", s.script);
                let _ = writeln!(o, "   Interval = {} s", s.interval.as_secs_f64());
                let _ = writeln!(o, "   Weight = {}", s.weight);
                let _ = writeln!(o, "   Rise = {}, Fall = {}", s.rise, s.fall);
                let _ = writeln!(o, "   Status = {}", self.script_state(&s.name));
            }
        }
        o
    }

    fn script_state(&self, name: &str) -> &'static str {
        if self.script_disabled.contains(name) {
            return "DISABLED";
        }
        match self.script_ok.get(name).copied().flatten() {
            Some(true) => "OK",
            Some(false) => "KO",
            None if self.scripts.contains_key(name) => "INIT",
            None => "NOT RUNNING",
        }
    }

    /// keepalived's "stats" dump: the counters of every instance.
    pub(super) fn stats_dump(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "------< rempart-vrrp statistics >------");
        let _ = writeln!(o, " Time = {:.3} (seconds since the Unix epoch)", unix_now());
        for i in &self.insts {
            let s = i.m.stats();
            let _ = writeln!(o, "VRRP Instance: {}", i.cfg.name);
            let _ = writeln!(o, "  Advertisements:");
            let _ = writeln!(o, "    Received: {}", s.adverts_received);
            let _ = writeln!(o, "    Sent: {}", s.adverts_sent);
            let _ = writeln!(o, "  Became master: {}", s.become_master);
            let _ = writeln!(o, "  Released master: {}", s.released_master);
            let _ = writeln!(o, "  Packet Errors:");
            let _ = writeln!(o, "    TTL: {}", s.ttl_errors);
            let _ = writeln!(o, "    Version mismatch: {}", s.version_errors);
            let _ = writeln!(o, "    Advertisement Interval: {}", s.interval_errors);
            let _ = writeln!(o, "    Owner conflict: {}", s.owner_conflicts);
            let _ = writeln!(o, "  Authentication Errors:");
            let _ = writeln!(o, "    Failure: {}", s.auth_failures);
            let _ = writeln!(o, "  Priority Zero:");
            let _ = writeln!(o, "    Received: {}", s.priority_zero_received);
            let _ = writeln!(o, "    Sent: {}", s.priority_zero_sent);
        }
        o
    }
}
