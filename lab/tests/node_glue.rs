//! Issue 15, "The glue it replaces, side by side": the fault list of the namespace tests against
//! keepalived 2.2.7 with the notify scripts of `deploy/glue/` (promote with `rempart-repl`, mount
//! through nbdfuse + loop, start slapd; and the reverse), slapd's database on the replicated
//! volume, a client writing and reading through the VIP, a probe writing through each server's
//! own slapd.
//!
//! It asserts what is true of that glue — including what it gets wrong, since that is what the
//! comparison with `rempart-node` is about — and writes the results table (Markdown) to
//! `$CARGO_TARGET_TMPDIR/node_glue.md` for `docs/node.md`. Needs root (network namespaces, loop
//! devices, FUSE); fails without it. About 3 minutes.
//!
//! Run: `cargo build -p rempart-repl && cargo test -p rempart-lab --test node_glue -- --nocapture`

use rempart_lab::glue::Glue;
use rempart_lab::node::{run_fault, Failover, Fault, Outcome, TABLE_HEADER, TABLE_LEGEND};

fn lost(o: &Outcome) -> Option<usize> {
    o.lost.as_ref().map(Vec::len)
}

/// The client reads every entry it was told was written, its last one included.
fn all_back(o: &Outcome) -> bool {
    lost(o) == Some(0) && o.reads_last
}

#[test]
fn the_glue_against_the_fault_list() {
    let mut outcomes = Vec::new();
    for fault in Fault::ALL {
        let mut make = || Box::new(Glue::new()) as Box<dyn Failover>;
        let t = std::time::Instant::now();
        let o = run_fault(fault, &mut make).unwrap_or_else(|e| panic!("{fault:?}: {e:#}"));
        println!("{}", o.row());
        println!(
            "({fault:?}: volume ready after {:.1} s, service up after {:.1} s, teardown {:.1} s {:?}, total {:.1} s)",
            o.setup.0.as_secs_f64(),
            o.setup.1.as_secs_f64(),
            o.teardown.0.as_secs_f64(),
            o.teardown.1,
            t.elapsed().as_secs_f64()
        );
        outcomes.push(o);
    }
    let mut table = format!(
        "Glue column: keepalived 2.2.7 (advert 1 s, main 150 / backup 100, preemption) with deploy/glue's \
         notify_master / notify_backup / notify_fault scripts; rempart-repl r0 (protocol C, peer timeout 1 s, \
         after-sb-0pri disconnect); slapd (mdb) on ext4 on the volume. Client writes every 200 ms through the VIP; \
         probes write every 100 ms through each server's own slapd.\n\n{TABLE_HEADER}\n"
    );
    for o in &outcomes {
        table.push_str(&o.row());
        table.push('\n');
    }
    table.push_str(&format!("\n{TABLE_LEGEND}\n"));
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("node_glue.md");
    std::fs::write(&path, &table).expect("writing the table");
    println!("\n{table}\n(written to {})", path.display());

    let get = |f: Fault| outcomes.iter().find(|o| o.fault == f).expect("every fault ran");
    let why = |o: &Outcome| format!("{}\n{:?}\n{}", o.row(), o, o.logs);
    for o in &outcomes {
        assert!(o.acknowledged >= 5, "the client's writes went through before the fault: {}", why(o));
    }

    // kill -9 of keepalived on main: backup's keepalived takes the VIP, but its notify_master's
    // promote is refused (main is still Primary and connected: its notify_backup never ran), so
    // the client, moved to backup by the gratuitous ARP, finds no slapd.
    let o = get(Fault::Kill9);
    assert_eq!(o.served_by.as_deref(), Some("backup"), "{}", why(o));
    assert!(!o.reads_last, "the glue served after kill -9 of keepalived: {}", why(o));
    assert!(o.promote_refused, "backup's promote was refused: {}", why(o));
    assert!(o.two_writers.is_empty(), "{}", why(o));

    // SIGSTOP of main longer than the peer timeout: backup promotes (its peer is gone) and takes
    // writes; main wakes up still Primary, preempts the VIP, and the entries backup acknowledged
    // are not on main's copy (split brain, both StandAlone).
    // (Which copy the client ends on depends on the scripts' race: either entries are lost or
    // the VIP leads to a server without slapd.)
    let o = get(Fault::Freeze);
    assert!(!all_back(o), "the client got everything back after the freeze: {}", why(o));

    // main isolated: main's interfaces lose their carrier, keepalived goes FAULT and
    // notify_fault stops slapd and demotes main before backup takes over (no two writers); on
    // rejoin main preempts and serves its older copy: what backup acknowledged is lost.
    for f in [Fault::Isolate, Fault::WitnessDownIsolate] {
        let o = get(f);
        assert!(o.two_writers.is_empty(), "{}", why(o));
        assert!(!all_back(o), "the client got everything back after the isolation: {}", why(o));
        assert!(o.first_read.is_some(), "the client read its entry again: {}", why(o));
    }

    // main partitioned with its links up: nothing tells main's keepalived, main keeps slapd and
    // Primary, backup promotes too: two writers, seen by the probe, and a split brain.
    // After the heal the client ends up on either side (whichever gratuitous ARP it saw last):
    // either entries are lost, or the VIP leads to a server without slapd.
    let o = get(Fault::Partition);
    assert!(!o.two_writers.is_empty(), "the probe saw both servers acknowledge writes: {}", why(o));
    assert!(!all_back(o), "the client got everything back after the partition: {}", why(o));
    assert!(o.split_brain, "{}", why(o));

    // Only the replication link: VRRP does not notice; main goes on alone after the peer timeout.
    let o = get(Fault::ReplCut);
    assert!(o.two_writers.is_empty(), "{}", why(o));
    assert!(all_back(o), "{}", why(o));
    assert!(o.longest_write_gap.as_secs_f64() < 3.0, "{}", why(o));

    // Only the management link: main goes FAULT and its notify_fault demotes it (when nbdfuse is
    // gone in time), backup takes over; on the heal main preempts, and its notify_master's
    // promote races backup's notify_backup (keepalived runs them unordered): some runs end with
    // nobody serving. Never two writers; the client reads again at some point.
    let o = get(Fault::MgmtCut);
    assert!(o.two_writers.is_empty(), "{}", why(o));
    assert!(o.first_read.is_some(), "{}", why(o));

    // A planned switchover as admins do it (stop keepalived on main) with slapd broken on
    // backup: keepalived runs no notify script when it stops, main keeps Primary and slapd
    // without the VIP, backup takes the VIP and cannot promote; nobody serves the client.
    let o = get(Fault::ServiceFailsOnBackup);
    assert_eq!(o.served_by.as_deref(), Some("backup"), "{}", why(o));
    assert!(!o.reads_last, "{}", why(o));
    assert!(o.two_writers.is_empty(), "{}", why(o));
}
