//! The replication metrics, computed at scrape time from each resource's status: one
//! [`prometheus_client`] collector per registry, every family labelled `resource`, so that a
//! resource added later (a reload of `rempart-node`) needs no new registration.
//!
//! The families, their types and labels are those `rempart-repl` has always served:
//!
//! | family | type |
//! |---|---|
//! | `rempart_repl_primary` | gauge (1 when Primary) |
//! | `rempart_repl_disk_state` | gauge (0 Diskless, 1 Inconsistent, 2 Outdated, 3 UpToDate) |
//! | `rempart_repl_connection_state` | gauge (0 StandAlone, 1 Connecting, 2 Connected) |
//! | `rempart_repl_out_of_sync_bytes` | gauge |
//! | `rempart_repl_sync_done_percent` | gauge |
//! | `rempart_repl_replicated_bytes_total`, `_resync_bytes_total`, `_split_brains_total`, `_auth_failures_total` | counter |
//! | `rempart_repl_write_latency_seconds`, `_local_write_latency_seconds`, `_peer_write_latency_seconds` | histogram |
//!
//! and, for the alerts of `deploy/prometheus/rules/replication.yml` (issue 16):
//!
//! | family | type |
//! |---|---|
//! | `rempart_repl_peer_disk_state` | gauge (the peer's disk as this node last heard it, codes as above; -1 when not connected) |
//! | `rempart_repl_quorum` | gauge (1 while quorum is held: the peer replicating or a valid witness lease; always 1 with the quorum option off) |
//! | `rempart_repl_suspended_requests` | gauge (client acknowledgements held until quorum is back, `on-no-quorum = suspend-io`) |
//! | `rempart_repl_lease_remaining_seconds` | gauge (time left on the witness lease; 0 without one) |
//! | `rempart_repl_split_brain` | gauge (1 from a split brain's detection until the resource is next seen connected) |
//!
//! The replica keeps no "split brain pending" state: a split brain leaves the node StandAlone
//! until an operator reconnects one side with `--discard-my-data`. So the collector derives the
//! gauge from what it sees at each scrape: the split brain counter has grown since the last
//! scrape that found the resource connected, and the resource is not connected now. (A split
//! brain resolved and followed by an ordinary disconnection, both between two scrapes, reads as
//! still pending until the next connection: the gauge errs towards the alert.)

use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::io::{Handle, Histogram, BUCKETS};
use crate::proto::{ConnState, DiskState, Role};
use crate::resource::ResourceStatus;

/// One resource's sources.
#[derive(Debug)]
struct Source {
    id: u64,
    name: String,
    status: watch::Receiver<ResourceStatus>,
    handle: Handle,
    /// The split brain counter at the last scrape that found the resource connected.
    split_brains_when_connected: u64,
}

#[derive(Debug, Default)]
struct Sources {
    next: u64,
    list: Vec<Source>,
}

/// The replication families in one registry; resources add themselves (see the module docs).
#[derive(Debug, Clone)]
pub struct ReplMetrics {
    sources: Arc<Mutex<Sources>>,
}

#[derive(Debug)]
struct ReplCollector(Arc<Mutex<Sources>>);

impl ReplMetrics {
    /// Registers the families into `registry`; call once per registry.
    pub fn register(registry: &mut Registry) -> ReplMetrics {
        let sources = Arc::new(Mutex::new(Sources::default()));
        registry.register_collector(Box::new(ReplCollector(sources.clone())));
        ReplMetrics { sources }
    }

    /// Adds a resource; returns its id for [`ReplMetrics::remove`].
    pub(crate) fn add(&self, name: &str, handle: &Handle) -> u64 {
        let Ok(mut s) = self.sources.lock() else { return 0 };
        s.next += 1;
        let id = s.next;
        s.list.push(Source {
            id,
            name: name.to_owned(),
            status: handle.watch_status(),
            handle: handle.clone(),
            split_brains_when_connected: 0,
        });
        id
    }

    /// Removes a resource (it stopped).
    pub(crate) fn remove(&self, id: u64) {
        if let Ok(mut s) = self.sources.lock() {
            s.list.retain(|x| x.id != id);
        }
    }
}

fn disk_code(d: DiskState) -> i64 {
    match d {
        DiskState::Diskless => 0,
        DiskState::Inconsistent => 1,
        DiskState::Outdated => 2,
        DiskState::UpToDate => 3,
    }
}

fn conn_code(c: ConnState) -> i64 {
    match c {
        ConnState::StandAlone => 0,
        ConnState::Connecting => 1,
        ConnState::Connected => 2,
    }
}

/// A histogram in the per-bucket form the encoder takes (it accumulates them again).
fn buckets(h: &Histogram) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(BUCKETS.len() + 1);
    let mut below = 0;
    for (b, c) in BUCKETS.iter().zip(h.counts) {
        out.push((*b, c.saturating_sub(below)));
        below = c;
    }
    out.push((f64::MAX, h.count.saturating_sub(below)));
    out
}

/// One resource at scrape time: its labels, its status, its three latency histograms, and
/// whether a split brain is pending (see the module docs).
type Row = (Vec<(String, String)>, ResourceStatus, [Histogram; 3], bool);

/// Whether a split brain is pending, updating what `source` remembers (see the module docs).
fn split_brain_pending(source: &mut Source, s: &ResourceStatus) -> bool {
    if s.replica.connection == ConnState::Connected {
        source.split_brains_when_connected = s.replica.split_brains;
        false
    } else {
        s.replica.split_brains > source.split_brains_when_connected
    }
}

impl Collector for ReplCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Ok(mut sources) = self.0.lock() else { return Ok(()) };
        let rows: Vec<Row> = sources
            .list
            .iter_mut()
            .map(|s| {
                let status = s.status.borrow().clone();
                let sb = split_brain_pending(s, &status);
                let h = &s.handle;
                (
                    vec![("resource".to_string(), s.name.clone())],
                    status,
                    [h.latency(), h.local_latency(), h.peer_latency()],
                    sb,
                )
            })
            .collect();
        drop(sources);
        type Gauge = fn(&ResourceStatus) -> i64;
        let gauges: [(&str, &str, Gauge); 7] = [
            ("rempart_repl_primary", "1 when this node is Primary.", |s| i64::from(s.replica.role == Role::Primary)),
            ("rempart_repl_disk_state", "0 Diskless, 1 Inconsistent, 2 Outdated, 3 UpToDate.", |s| {
                disk_code(s.replica.disk)
            }),
            ("rempart_repl_connection_state", "0 StandAlone, 1 Connecting, 2 Connected.", |s| {
                conn_code(s.replica.connection)
            }),
            ("rempart_repl_out_of_sync_bytes", "Bytes marked out of sync.", |s| {
                i64::try_from(s.replica.out_of_sync_bytes).unwrap_or(i64::MAX)
            }),
            (
                "rempart_repl_peer_disk_state",
                "The peer's disk as last heard: 0 Diskless, 1 Inconsistent, 2 Outdated, 3 UpToDate, -1 not connected.",
                |s| s.replica.peer_disk.map_or(-1, disk_code),
            ),
            (
                "rempart_repl_quorum",
                "1 while quorum is held (peer replicating or a valid witness lease; 1 with quorum off).",
                |s| i64::from(s.replica.quorum.held),
            ),
            (
                "rempart_repl_suspended_requests",
                "Client acknowledgements held until quorum is back (on-no-quorum suspend-io).",
                |s| i64::try_from(s.replica.quorum.suspended).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, f) in gauges {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (labels, s, _, _) in &rows {
                ConstGauge::new(f(s)).encode(m.encode_family(labels)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "rempart_repl_split_brain",
            "1 from a split brain's detection until the resource is next seen connected.",
            None,
            MetricType::Gauge,
        )?;
        for (labels, _, _, sb) in &rows {
            ConstGauge::new(i64::from(*sb)).encode(m.encode_family(labels)?)?;
        }
        let mut m =
            enc.encode_descriptor("rempart_repl_sync_done_percent", "Resync progress.", None, MetricType::Gauge)?;
        for (labels, s, _, _) in &rows {
            ConstGauge::new(s.replica.sync_done_percent.unwrap_or(100.0)).encode(m.encode_family(labels)?)?;
        }
        let mut m = enc.encode_descriptor(
            "rempart_repl_lease_remaining_seconds",
            "Time left on the witness lease (0 without one).",
            None,
            MetricType::Gauge,
        )?;
        for (labels, s, _, _) in &rows {
            let left = s.replica.quorum.lease_remaining.map_or(0.0, |d| d.as_secs_f64());
            ConstGauge::new(left).encode(m.encode_family(labels)?)?;
        }
        // Counters are named without `_total`: the encoder adds it to the sample.
        type Count = fn(&ResourceStatus) -> u64;
        let counters: [(&str, &str, Count); 4] = [
            ("rempart_repl_replicated_bytes", "Application bytes sent to the peer.", |s| s.replica.replicated_bytes),
            ("rempart_repl_resync_bytes", "Bytes resynced.", |s| s.replica.resync_bytes),
            ("rempart_repl_split_brains", "Split brains detected.", |s| s.replica.split_brains),
            ("rempart_repl_auth_failures", "Failed peer authentications.", |s| s.replica.auth_failures),
        ];
        for (name, help, f) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, s, _, _) in &rows {
                ConstCounter::new(f(s)).encode(m.encode_family(labels)?)?;
            }
        }
        let hists = [
            ("rempart_repl_write_latency_seconds", "Client write latency (local and peer)."),
            ("rempart_repl_local_write_latency_seconds", "Local disk write latency."),
            (
                "rempart_repl_peer_write_latency_seconds",
                "Peer round trip of a replicated write (send to acknowledgement).",
            ),
        ];
        for (i, (name, help)) in hists.into_iter().enumerate() {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
            for (labels, _, h, _) in &rows {
                m.encode_family(labels)?.encode_histogram::<()>(h[i].sum, h[i].count, &buckets(&h[i]), None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_buckets_become_per_bucket_counts() {
        let mut h = Histogram::default();
        for s in [0.00005, 0.0003, 0.0003, 2.0] {
            h.observe(s);
        }
        let b = buckets(&h);
        assert_eq!(b[0], (0.0001, 1));
        assert_eq!(b[2], (0.0005, 2));
        assert_eq!(b.iter().map(|x| x.1).sum::<u64>(), 4);
        assert_eq!(b.last(), Some(&(f64::MAX, 1)));
    }
}
