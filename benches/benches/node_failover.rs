//! Whole-service failover side by side: `rempart-node` (with the witness) against the glue it
//! replaces — keepalived 2.2.7 whose notify scripts promote with `rempart-repl`, mount through
//! nbdfuse and start slapd (`deploy/glue/`) — on the same lab, with slapd's database on the
//! replicated volume and a client writing entries through the VIP. Trials are interleaved.
//!
//! Per trial (`rempart_lab::node::run_fault`): main serves; the fault hits main (kill -9 of the
//! failover daemon; main isolated for 6 s; main's whole stack SIGSTOPped for 6 s, longer than
//! the lease). Measured from the fault: the client's first read, through the VIP and served by
//! backup, of its last entry acknowledged before the fault; the longest stretch without an acknowledged client write
//! (the outage as writers see it); acknowledged entries lost (must be 0) and spans where both
//! servers acknowledged writes (must be none).
//!
//! Run (root; the lab binaries are found next to the bench binary):
//! ```text
//! cargo build --release -p rempart-node -p rempart-repl
//! cargo bench -p rempart-benches --bench node_failover
//! ```
//! Env: `NODE_BENCH_TRIALS` (default 20), `NODE_BENCH_FAULTS` (default `kill9,isolate,freeze`),
//! `NODE_BENCH_ADVERTS` (default `1,0.1`: rempart-node at 1 s adverts with a 3 s lease and a 1 s
//! replication peer timeout, and at 0.1 s with a 0.6 s lease and a 0.3 s peer timeout; the glue
//! at the same advert interval and peer timeout, without a lease: it has none).

use std::time::Duration;

use rempart_benches::{markdown_table, AnchorCheck, Row};
use rempart_lab::glue::Glue;
use rempart_lab::node::{run_fault, Failover, Fault, Outcome};
use rempart_lab::node_column::NodeColumn;
use rempart_testkit::require_root;

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name).unwrap_or_else(|_| default.into()).split(',').map(|s| s.trim().to_string()).collect()
}

fn fault(name: &str) -> Option<Fault> {
    Some(match name {
        "kill9" => Fault::Kill9,
        "isolate" => Fault::Isolate,
        "freeze" => Fault::Freeze,
        _ => return None,
    })
}

#[derive(Default)]
struct Samples {
    first_read: Vec<f64>,
    outage: Vec<f64>,
    lost: usize,
    unknown: usize,
    two_writers: usize,
    errors: Vec<String>,
    /// The serving node's take-over, in order: detection, each step, the client's side (name →
    /// durations), rempart-node only.
    steps: Vec<(String, Vec<f64>)>,
}

impl Samples {
    fn step(&mut self, name: &str, d: f64) {
        match self.steps.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => v.push(d),
            None => self.steps.push((name.to_string(), vec![d])),
        }
    }

    /// The serving node's last transition: detection (fault → the take-over began, on the
    /// same clock: the lab and the daemons share the machine), each step, and the client's side
    /// (the transition's end → the client's first read through the VIP: gratuitous ARP, the
    /// client's neighbour entry and one LDAP round trip).
    fn add_steps(
        &mut self,
        statuses: &std::collections::BTreeMap<String, serde_json::Value>,
        fault: Option<(f64, Option<f64>)>,
    ) {
        let Some(s) = statuses.values().find(|s| s["phase"] == "serving") else { return };
        let t = &s["last_transition"];
        let (Some((fault_unix, first_read)), Some(started)) = (fault, t["started_unix"].as_f64()) else { return };
        if started < fault_unix {
            return; // not the take-over this fault caused
        }
        self.step("detection", started - fault_unix);
        for st in t["steps"].as_array().into_iter().flatten() {
            if let (Some(name), Some(d)) = (st["step"].as_str(), st["duration_s"].as_f64()) {
                self.step(name, d);
            }
        }
        if let (Some(read), Some(d)) = (first_read, t["duration_s"].as_f64()) {
            self.step(
                "end of take-over → client's read (GARP, neighbour entry, one search)",
                read - (started - fault_unix) - d,
            );
        }
    }

    fn add(&mut self, r: anyhow::Result<Outcome>) {
        match r {
            Ok(o) => {
                if let Some(d) = o.first_read {
                    self.first_read.push(d.as_secs_f64());
                }
                self.outage.push(o.longest_write_gap.as_secs_f64());
                match &o.lost {
                    Some(l) => self.lost += l.len(),
                    None => self.unknown += 1,
                }
                if !o.two_writers.is_empty() {
                    self.two_writers += 1;
                }
            }
            Err(e) => {
                eprintln!("trial failed: {e:#}");
                self.errors.push(format!("{e:#}"));
            }
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !require_root("network namespaces, loop devices, FUSE") {
        return;
    }
    let trials: usize = std::env::var("NODE_BENCH_TRIALS").ok().and_then(|t| t.parse().ok()).unwrap_or(20);
    let faults: Vec<Fault> =
        env_list("NODE_BENCH_FAULTS", "kill9,isolate,freeze").iter().filter_map(|f| fault(f)).collect();
    let adverts: Vec<f64> = env_list("NODE_BENCH_ADVERTS", "1,0.1").iter().filter_map(|a| a.parse().ok()).collect();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for &f in &faults {
        for &adv in &adverts {
            let ttl = if adv >= 1.0 { Duration::from_secs(3) } else { Duration::from_millis(600) };
            let (mut ours, mut glue) = (Samples::default(), Samples::default());
            for t in 0..trials {
                let seen = std::sync::Arc::new(std::sync::Mutex::new(Default::default()));
                let mut make = || {
                    let mut c = NodeColumn::with_timing(adv, ttl).expect("rempart-node built");
                    c.last_status = seen.clone();
                    Box::new(c) as Box<dyn Failover>
                };
                let r = run_fault(f, &mut make);
                let fault_times = r.as_ref().ok().map(|o| (o.fault_unix, o.first_read.map(|d| d.as_secs_f64())));
                ours.add(r);
                if let Ok(m) = seen.lock() {
                    ours.add_steps(&m, fault_times);
                }
                let mut make = || Box::new(Glue::with_advert(adv)) as Box<dyn Failover>;
                glue.add(run_fault(f, &mut make));
                eprintln!("{f:?} advert {adv} s: trial {}/{trials} done", t + 1);
            }
            let case = format!("{}, advert {adv} s (rempart lease {:.1} s)", f.label(), ttl.as_secs_f64());
            let check = AnchorCheck::NotChecked("end to end; keepalived's own detection is checked by vrrp_failover");
            rows.push(Row {
                metric: format!("{case}: fault → first read of the last entry through the VIP (s)"),
                ours: ours.first_read.clone(),
                anchor: glue.first_read.clone(),
                check: check.clone(),
            });
            rows.push(Row {
                metric: format!("{case}: longest time without an acknowledged write (s)"),
                ours: ours.outage.clone(),
                anchor: glue.outage.clone(),
                check,
            });
            let breakdown: Vec<String> = ours
                .steps
                .iter()
                .map(|(k, v)| format!("{k} {:.3} s", rempart_benches::median(v).unwrap_or(f64::NAN)))
                .collect();
            notes.push(format!("{case}, rempart-node take-over steps (medians): {}", breakdown.join(", ")));
            for (who, s) in [("rempart-node", &ours), ("glue", &glue)] {
                notes.push(format!(
                    "{case}, {who}: {} trials, {} with a read in the window, {} acknowledged entries lost, {} trials with the VIP silent at the end, {} trials with two writers, {} errors{}",
                    trials,
                    s.first_read.len(),
                    s.lost,
                    s.unknown,
                    s.two_writers,
                    s.errors.len(),
                    s.errors.first().map(|e| format!(" (first: {})", e.lines().next().unwrap_or(""))).unwrap_or_default()
                ));
            }
        }
    }
    println!("{}", markdown_table("glue (keepalived + notify scripts)", &rows));
    for n in notes {
        println!("- {n}");
    }
}
