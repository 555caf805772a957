//! Issue 15's fault list against `rempart-node` (the node column): real daemons in namespaces,
//! slapd with its database on the replicated volume, a client writing entries through the VIP,
//! a probe writing through each server's own slapd. Root only (namespaces, loop devices, FUSE):
//! without root it fails, it does not skip.
//!
//! Each fault asserts what issue 15 makes the contract: never two servers acknowledging writes
//! in the same period, no acknowledged entry lost, and — where a server can serve — the client
//! reads its last acknowledged entry through the VIP at the end. The table it prints is the
//! rempart-node column of docs/node.md.

use rempart_lab::node::{run_fault, Failover, Fault, TABLE_HEADER};
use rempart_lab::node_column::NodeColumn;

#[test]
fn node_fault_list() {
    let mut rows = vec![TABLE_HEADER.to_string()];
    let mut failures = Vec::new();
    for f in Fault::ALL {
        let mut make =
            || Box::new(NodeColumn::new().expect("rempart-node built next to this test")) as Box<dyn Failover>;
        let o = match run_fault(f, &mut make) {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{f:?}: {e:#}"));
                continue;
            }
        };
        rows.push(o.row());
        let mut bad = Vec::new();
        if !o.two_writers.is_empty() {
            bad.push(format!("two writers: {:?}", o.two_writers));
        }
        match &o.lost {
            Some(l) if !l.is_empty() => bad.push(format!("lost acknowledged entries: {l:?}")),
            None if f != Fault::WitnessDownIsolate => bad.push("the VIP does not answer at the end".into()),
            _ => {}
        }
        if f != Fault::WitnessDownIsolate && !o.reads_last {
            bad.push("the client does not read its last acknowledged entry through the VIP".into());
        }
        let expected_server = match f {
            Fault::ReplCut | Fault::ServiceFailsOnBackup => Some("main"),
            Fault::WitnessDownIsolate => None,
            _ => Some("backup"),
        };
        if let Some(s) = expected_server {
            if o.served_by.as_deref() != Some(s) {
                bad.push(format!("served by {:?}, expected {s}", o.served_by));
            }
        }
        if !bad.is_empty() {
            failures.push(format!("{f:?}: {}\nstate: {}\n{}", bad.join("; "), o.state, o.logs));
        }
    }
    println!("{}", rows.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
