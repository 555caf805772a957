//! Interoperation with real keepalived 2.2.7 in network namespaces: mixed pairs elect the right
//! master and fail over both ways, in VRRPv3 and in VRRPv2 with PASS; tshark decodes our
//! advertisements with no malformed or bad-checksum flags. Both daemons read the same
//! keepalived.conf text (only router_id and priority differ).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rempart_testkit::{require_root, wait, Lab};

fn keepalived_state(r: &Router) -> Option<&'static str> {
    let l = log(r);
    let m = l.rfind("Entering MASTER STATE");
    let b = l.rfind("Entering BACKUP STATE");
    match (m, b) {
        (Some(m), Some(b)) => Some(if m > b { "MASTER" } else { "BACKUP" }),
        (Some(_), None) => Some("MASTER"),
        (None, Some(_)) => Some("BACKUP"),
        (None, None) => None,
    }
}

/// keepalived master, rempart backup: rempart follows it, then takes over after kill -9.
fn keepalived_master_then_ours(conf_k: Conf, conf_o: Conf, within: Duration) {
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let mut k = start_keepalived(&lab, "a", da.path(), &conf_k);
    wait_vip(&lab, "a", within);
    let o = start_ours(&lab, "b", db.path(), &conf_o, &[]);
    wait::until(within, "rempart hears keepalived", || try_status(&lab, "b", &o)[0]["master"] == "10.77.0.1")
        .unwrap_or_else(|e| panic!("{e}\nours:\n{}", log(&o)));
    assert!(!has_vip(&lab, "b"));
    assert_eq!(status_json(&lab, "b", &o)[0]["state"], "BACKUP");
    let t = Instant::now();
    k.proc.kill();
    wait_vip(&lab, "b", within);
    eprintln!("keepalived killed -> rempart took over in {:?}", t.elapsed());
    assert_eq!(status_json(&lab, "b", &o)[0]["state"], "MASTER");
}

/// rempart master, keepalived backup: keepalived stays backup (it accepts our adverts), tshark
/// decodes them cleanly, then keepalived takes over after kill -9 of rempart.
fn ours_master_then_keepalived(conf_o: Conf, conf_k: Conf, within: Duration, v2: bool) {
    let lab = lab();
    let (da, db, dc) = (tempdir(), tempdir(), tempdir());
    let mut o = start_ours(&lab, "a", da.path(), &conf_o, &[]);
    wait_vip(&lab, "a", within);
    let k = start_keepalived(&lab, "b", db.path(), &conf_k);
    wait::until(within, "keepalived starts as backup", || keepalived_state(&k) == Some("BACKUP"))
        .unwrap_or_else(|e| panic!("{e}\nkeepalived:\n{}", log(&k)));
    // Capture our adverts from the client while keepalived runs a full Master_Down_Interval
    // (plus margin): if it rejected our packets it would become master during that time.
    let pcap = dc.path().join("adverts.pcap");
    let secs = format!("duration:{}", (within.as_secs() / 2).max(2));
    let cap = lab
        .run("c", &["tshark", "-q", "-i", LAN, "-f", "ip proto 112", "-a", &secs, "-w", &pcap.to_string_lossy()])
        .expect("tshark capture");
    assert!(cap.status.success(), "tshark: {}", String::from_utf8_lossy(&cap.stderr));
    assert_eq!(keepalived_state(&k), Some("BACKUP"), "keepalived:\n{}", log(&k));
    assert!(!has_vip(&lab, "b"), "keepalived took the VIP from a higher-priority rempart");
    let kl = log(&k);
    assert!(!kl.contains("nvalid"), "keepalived complained:\n{kl}");
    let dec = lab
        .run("c", &["tshark", "-r", &pcap.to_string_lossy(), "-V", "-Y", "ip.src == 10.77.0.1"])
        .expect("tshark decode");
    let text = String::from_utf8_lossy(&dec.stdout);
    let n = text.matches("Virtual Router Redundancy Protocol").count();
    assert!(n >= 2, "too few adverts captured ({n}):\n{text}");
    assert_eq!(text.matches("[correct]").count(), n, "not every checksum is correct:\n{text}");
    assert!(!text.contains("Malformed") && !text.contains("incorrect"), "{text}");
    if v2 {
        assert!(text.contains("Version 2, Packet type 1 (Advertisement)"), "{text}");
        assert!(text.contains("Authentication String: rempart1"), "{text}");
    } else {
        assert!(text.contains("Version 3, Packet type 1 (Advertisement)"), "{text}");
    }
    assert!(text.contains("Differentiated Services Codepoint: Class Selector 6"), "{text}");
    assert!(text.contains("Time to Live: 255"), "{text}");

    let t = Instant::now();
    o.proc.kill();
    wait_vip(&lab, "b", within);
    eprintln!("rempart killed -> keepalived took over in {:?}", t.elapsed());
    drop(lab_guard(lab));
}

fn lab_guard(l: Lab) -> Lab {
    l
}

#[test]
fn v3_keepalived_master_rempart_backup_failover() {
    if !require_root("network namespaces") {
        return;
    }
    keepalived_master_then_ours(Conf::v3(150, "0.1"), Conf::v3(100, "0.1"), Duration::from_secs(5));
}

#[test]
fn v3_rempart_master_keepalived_backup_failover() {
    if !require_root("network namespaces") {
        return;
    }
    ours_master_then_keepalived(Conf::v3(150, "0.1"), Conf::v3(100, "0.1"), Duration::from_secs(5), false);
}

#[test]
fn v2_pass_keepalived_master_rempart_backup_failover() {
    if !require_root("network namespaces") {
        return;
    }
    keepalived_master_then_ours(Conf::v2_pass(150), Conf::v2_pass(100), Duration::from_secs(8));
}

#[test]
fn v2_pass_rempart_master_keepalived_backup_failover() {
    if !require_root("network namespaces") {
        return;
    }
    ours_master_then_keepalived(Conf::v2_pass(150), Conf::v2_pass(100), Duration::from_secs(8), true);
}
