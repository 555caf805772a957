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

#[test]
fn both_accept_the_example_configs() {
    if !require_root("network namespaces") {
        return;
    }
    // keepalived -t checks interfaces, so run it in a host that has the "mgmt" LAN.
    let mut lab = Lab::new().expect("lab");
    lab.add_host("main").expect("host");
    lab.add_lan("mgmt").expect("lan");
    lab.attach("mgmt", "main", "192.168.50.10/24").expect("attach");
    let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/examples/");
    for f in ["vrrp-keepalived.conf", "vrrp-lab-main.conf", "vrrp-lab-backup.conf"] {
        let path = format!("{ex}{f}");
        let k = lab.run("main", &["keepalived", "-t", "-f", &path]).expect("keepalived -t");
        assert!(
            k.status.success(),
            "keepalived rejects {f}: {}{}",
            String::from_utf8_lossy(&k.stdout),
            String::from_utf8_lossy(&k.stderr)
        );
        let o = lab.run("main", &[bin(), "check-config", "-f", &path]).expect("check-config");
        assert!(o.status.success(), "rempart-vrrp rejects {f}: {}", String::from_utf8_lossy(&o.stderr));
    }
    // And a file keepalived rejects, we reject too.
    let d = tempdir();
    let bad = d.path().join("bad.conf");
    std::fs::write(&bad, "vrrp_instance X {\n  interface mgmt\n  virtual_router_id 300\n  virtual_ipaddress {\n    192.168.50.50\n  }\n}\n")
        .expect("write");
    let k = lab.run("main", &["keepalived", "-t", "-f", &bad.to_string_lossy()]).expect("keepalived -t");
    assert!(!k.status.success(), "keepalived accepted a VRID of 300");
    let o = lab.run("main", &[bin(), "check-config", "-f", &bad.to_string_lossy()]).expect("check-config");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.conf:3:21: invalid virtual_router_id"));
}

#[test]
fn v3_ipv6_mixed_pair_both_directions() {
    if !require_root("network namespaces") {
        return;
    }
    let within = Duration::from_secs(5);
    let lab = lab();
    let (da, db, dc) = (tempdir(), tempdir(), tempdir());
    // rempart master, keepalived backup.
    let mut o = start_ours(&lab, "a", da.path(), &v6(150, "0.1"), &[]);
    wait_vip6(&lab, "a", within);
    let k = start_keepalived(&lab, "b", db.path(), &v6(100, "0.1"));
    wait::until(within, "keepalived starts as backup", || keepalived_state(&k) == Some("BACKUP"))
        .unwrap_or_else(|e| panic!("{e}\nkeepalived:\n{}", log(&k)));
    let pcap = dc.path().join("v6.pcap");
    let cap = lab
        .run(
            "c",
            &["tshark", "-q", "-i", LAN, "-f", "ip6 proto 112", "-a", "duration:2", "-w", &pcap.to_string_lossy()],
        )
        .expect("tshark capture");
    assert!(cap.status.success(), "tshark: {}", String::from_utf8_lossy(&cap.stderr));
    assert_eq!(keepalived_state(&k), Some("BACKUP"), "keepalived:\n{}", log(&k));
    assert!(!has_vip6(&lab, "b"));
    assert!(!log(&k).contains("nvalid"), "keepalived complained:\n{}", log(&k));
    let dec = lab.run("c", &["tshark", "-r", &pcap.to_string_lossy(), "-V"]).expect("tshark decode");
    let text = String::from_utf8_lossy(&dec.stdout);
    let n = text.matches("Virtual Router Redundancy Protocol").count();
    assert!(n >= 2, "too few adverts ({n}):\n{text}");
    assert_eq!(text.matches("[correct]").count(), n, "{text}");
    assert!(!text.contains("Malformed") && !text.contains("incorrect"), "{text}");
    assert!(text.contains("Hop Limit: 255"), "{text}");
    let t = Instant::now();
    o.proc.kill();
    wait_vip6(&lab, "b", within);
    eprintln!("IPv6: rempart killed -> keepalived took over in {:?}", t.elapsed());

    // keepalived (now master on b) and a restarted rempart at a lower priority on a: rempart
    // follows keepalived, then takes over when keepalived is killed.
    let da2 = tempdir();
    let o2 = start_ours(&lab, "a", da2.path(), &v6(50, "0.1"), &[]);
    wait::until(within, "rempart follows keepalived over IPv6", || {
        let s = try_status(&lab, "a", &o2);
        s[0]["state"] == "BACKUP" && s[0]["master"].as_str().is_some_and(|m| m.starts_with("fe80::"))
    })
    .unwrap_or_else(|e| panic!("{e}\nours:\n{}", log(&o2)));
    assert!(!has_vip6(&lab, "a"), "stale VIP not removed or VIP on both");
    let mut k = k;
    k.proc.kill();
    wait_vip6(&lab, "a", within);
}
