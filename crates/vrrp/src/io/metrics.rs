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
    /// `rempart_vrrp_configured_priority`: the `priority` of the configuration, so that an alert
    /// sees the effective priority fall below it (a failing track script or interface, a
    /// `lower_priority`).
    pub configured_priority: Family<InstanceLabels, Gauge>,
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
    /// Registers every family in `r` (once, at start: the families carry the instance in their
    /// labels, so a reload that adds an instance needs no new registration).
    pub fn register(&self, r: &mut Registry) {
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
        r.register(
            "rempart_vrrp_configured_priority",
            "Priority of the configuration, before tracked weights",
            self.configured_priority.clone(),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The family names, types and labels dashboards depend on (the HTTP text, with `_total`
    /// on counters' HELP/TYPE, is `rempart_daemon::metrics::render`'s, tested there and in the
    /// binary's tests).
    #[test]
    fn families_names_types_labels() {
        let m = Metrics::default();
        let mut reg = Registry::default();
        m.register(&mut reg);
        let l = InstanceLabels { instance: "VI_1".into(), interface: "eth0".into(), vrid: 51 };
        m.become_master.get_or_create(&l).inc();
        m.state.get_or_create(&l).set(2);
        m.configured_priority.get_or_create(&l).set(150);
        m.effective_priority.get_or_create(&l).set(100);
        m.script_status.get_or_create(&ScriptLabels { script: "chk".into() }).set(-1);
        m.invalid_packets.get_or_create(&DropLabels { interface: "eth0".into(), reason: "ttl".into() }).inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for want in [
            "# TYPE rempart_vrrp_become_master counter\n",
            "rempart_vrrp_become_master_total{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\"} 1\n",
            "# HELP rempart_vrrp_state VRRP instance state: 0 init, 1 backup, 2 master, 3 fault.\n",
            "# TYPE rempart_vrrp_state gauge\n",
            "rempart_vrrp_state{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\"} 2\n",
            "rempart_vrrp_script_status{script=\"chk\"} -1\n",
            "rempart_vrrp_invalid_packets_total{interface=\"eth0\",reason=\"ttl\"} 1\n",
            "# TYPE rempart_vrrp_effective_priority gauge\n",
            "rempart_vrrp_effective_priority{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\"} 100\n",
            "# TYPE rempart_vrrp_configured_priority gauge\n",
            "rempart_vrrp_configured_priority{instance=\"VI_1\",interface=\"eth0\",vrid=\"51\"} 150\n",
            "# TYPE rempart_vrrp_adverts_sent counter\n",
            "# TYPE rempart_vrrp_adverts_received counter\n",
            "# TYPE rempart_vrrp_message_only_checksum counter\n",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
