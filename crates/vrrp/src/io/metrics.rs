//! Prometheus metrics, named so that an operator of keepalived_exporter recognises them. State is
//! a gauge, never a label on a counter.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of per-instance series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// `vrrp_instance` name.
    pub instance: String,
    /// Interface.
    pub interface: String,
    /// Virtual router id.
    pub vrid: u32,
}

/// Labels of dropped-packet counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// Interface the packet arrived on.
    pub interface: String,
    /// [`crate::wire::DropReason::label`].
    pub reason: String,
}

/// Labels of script series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScriptLabels {
    /// `vrrp_script` name.
    pub script: String,
}

/// Every metric of the daemon.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `rempart_vrrp_state`.
    pub state: Family<InstanceLabels, Gauge>,
    /// `rempart_vrrp_effective_priority`.
    pub effective_priority: Family<InstanceLabels, Gauge>,
    /// `rempart_vrrp_become_master_total`.
    pub become_master: Family<InstanceLabels, Counter>,
    /// `rempart_vrrp_adverts_sent_total`.
    pub adverts_sent: Family<InstanceLabels, Counter>,
    /// `rempart_vrrp_adverts_received_total`.
    pub adverts_received: Family<InstanceLabels, Counter>,
    /// `rempart_vrrp_invalid_packets_total{reason}`.
    pub invalid_packets: Family<DropLabels, Counter>,
    /// `rempart_vrrp_message_only_checksum_total`: VRRPv3/IPv4 adverts accepted with the
    /// message-only checksum form.
    pub message_only_checksum: Family<InstanceLabels, Counter>,
    /// `rempart_vrrp_script_status`.
    pub script_status: Family<ScriptLabels, Gauge>,
}

impl Metrics {
    /// Registers everything in a new registry.
    #[must_use]
    pub fn registry(&self) -> Registry {
        let mut r = Registry::default();
        r.register(
            "rempart_vrrp_state",
            "VRRP instance state: 0 init, 1 backup, 2 master, 3 fault",
            self.state.clone(),
        );
        r.register(
            "rempart_vrrp_effective_priority",
            "Priority advertised: base priority plus tracked weights",
            self.effective_priority.clone(),
        );
        r.register("rempart_vrrp_become_master", "Transitions to master", self.become_master.clone());
        r.register("rempart_vrrp_adverts_sent", "Advertisements sent", self.adverts_sent.clone());
        r.register("rempart_vrrp_adverts_received", "Valid advertisements received", self.adverts_received.clone());
        r.register(
            "rempart_vrrp_invalid_packets",
            "Received VRRP packets dropped, by reason",
            self.invalid_packets.clone(),
        );
        r.register(
            "rempart_vrrp_message_only_checksum",
            "VRRPv3 IPv4 adverts accepted with a message-only checksum",
            self.message_only_checksum.clone(),
        );
        r.register(
            "rempart_vrrp_script_status",
            "Track script status: 1 ok, 0 failing, -1 not yet known",
            self.script_status.clone(),
        );
        r
    }
}

/// Renders the registry in the Prometheus text format (0.0.4).
///
/// prometheus-client writes OpenMetrics, where a counter's HELP and TYPE name the family without
/// `_total`; promtool's `check metrics` then reports "no help text" for `foo_total`. We rename
/// them to the sample name and drop `# EOF`, which gives plain Prometheus text that every
/// scraper and promtool accept.
#[must_use]
pub fn render(reg: &Registry) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut s, reg);
    let counters: std::collections::HashSet<String> = s
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .map(str::to_string)
        .collect();
    let mut out = String::with_capacity(s.len());
    for line in s.lines() {
        if line == "# EOF" {
            continue;
        }
        let mut fixed = None;
        for prefix in ["# HELP ", "# TYPE "] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(name) {
                    fixed = Some(format!("{prefix}{name}_total{}", &rest[name.len()..]));
                }
            }
        }
        out.push_str(fixed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_help() {
        let m = Metrics::default();
        let l = InstanceLabels { instance: "VI_1".into(), interface: "eth0".into(), vrid: 51 };
        m.become_master.get_or_create(&l).inc();
        m.state.get_or_create(&l).set(2);
        let text = render(&m.registry());
        assert!(text.contains("# HELP rempart_vrrp_become_master_total Transitions to master.\n"));
        assert!(text.contains("# TYPE rempart_vrrp_become_master_total counter\n"));
        assert!(text.contains("rempart_vrrp_become_master_total{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\"} 1\n"));
        assert!(text.contains("# TYPE rempart_vrrp_state gauge\n"));
        assert!(!text.contains("# EOF"));
    }
}
