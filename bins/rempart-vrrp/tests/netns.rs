//! Real binaries in network namespaces: VIP placement, kill -9 failover with gratuitous ARP,
//! graceful stop, track scripts, unicast mode, status, metrics, SIGHUP reload, check-config.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rempart_testkit::{require_root, wait};

#[test]
fn vip_on_master_only_then_kill9_moves_it_and_client_follows_garp() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let mut a = start_ours(&lab, "a", da.path(), &Conf::v3(150, "0.1"), &[]);
    let _b = start_ours(&lab, "b", db.path(), &Conf::v3(100, "0.1"), &[]);
    wait_vip(&lab, "a", Duration::from_secs(5));
    // b has heard a for a while: it must not hold the VIP.
    wait::until(Duration::from_secs(2), "b reports BACKUP", || try_status(&lab, "b", &_b)[0]["state"] == "BACKUP")
        .expect("b backup");
    assert!(!has_vip(&lab, "b"), "VIP on both routers");
    // The client resolves the VIP to a's MAC.
    let ping = lab.run("c", &["ping", "-c", "1", "-W", "2", VIP]).expect("ping");
    assert!(ping.status.success(), "client cannot reach the VIP on a");
    assert!(neigh(&lab, "c").contains(&mac(&lab, "a")), "neigh: {}", neigh(&lab, "c"));

    let t = Instant::now();
    a.proc.kill();
    wait_vip(&lab, "b", Duration::from_secs(3));
    let took = t.elapsed();
    // Master_Down_Interval for priority 100 at 0.1 s is 0.361 s.
    assert!(took < Duration::from_millis(1500), "takeover took {took:?}");
    let bmac = mac(&lab, "b");
    wait::until(Duration::from_secs(2), "client neighbour entry points at b", || neigh(&lab, "c").contains(&bmac))
        .expect("GARP updated the client");
    let st = status_json(&lab, "b", &_b);
    assert_eq!(st[0]["state"], "MASTER");
    assert_eq!(st[0]["last_reason"], "master down interval expired");

    // kill -9 left a's VIP behind; a restarted daemon (now a lower priority, so it stays backup)
    // removes it at startup.
    assert!(has_vip(&lab, "a"), "expected a stale VIP after kill -9");
    let da2 = tempdir();
    let _a2 = start_ours(&lab, "a", da2.path(), &Conf::v3(50, "0.1"), &[]);
    wait_no_vip(&lab, "a", Duration::from_secs(3));
    assert!(has_vip(&lab, "b"));
}

#[test]
fn interface_down_means_fault_and_takeover() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let a = start_ours(&lab, "a", da.path(), &Conf::v3(150, "0.1"), &[]);
    let _b = start_ours(&lab, "b", db.path(), &Conf::v3(100, "0.1"), &[]);
    wait_vip(&lab, "a", Duration::from_secs(5));
    // Unplug a's cable at the switch: a loses carrier, enters FAULT and drops the VIP. The
    // carrier loss reaches the daemon as an rtnetlink link event (issue 3: no polling; the
    // fallback re-read runs only every 10 s), so FAULT comes well within a second.
    let t = Instant::now();
    lab.cut("a", LAN).expect("cut");
    wait::until(Duration::from_secs(3), "a in FAULT", || try_status(&lab, "a", &a)[0]["state"] == "FAULT")
        .expect("fault");
    let took = t.elapsed();
    assert!(took < Duration::from_millis(1500), "FAULT {took:?} after carrier loss: link events not watched?");
    wait_vip(&lab, "b", Duration::from_secs(3));
    assert!(!has_vip(&lab, "a"), "a kept the VIP in FAULT");
    // Plug it back: a leaves FAULT and, with the higher priority, preempts.
    lab.heal("a", LAN).expect("heal");
    wait_vip(&lab, "a", Duration::from_secs(5));
    wait_no_vip(&lab, "b", Duration::from_secs(3));
}

#[test]
fn graceful_stop_hands_over_after_skew_time() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let mut a = start_ours(&lab, "a", da.path(), &Conf::v3(150, "1"), &[]);
    let b = start_ours(&lab, "b", db.path(), &Conf::v3(100, "1"), &[]);
    wait_vip(&lab, "a", Duration::from_secs(6));
    let t = Instant::now();
    a.proc.term();
    wait_vip(&lab, "b", Duration::from_secs(5));
    let took = t.elapsed();
    // Skew_Time for priority 100 at 1 s is 0.609 s; a crash would take 3.609 s.
    assert!(took < Duration::from_millis(1800), "graceful takeover took {took:?}");
    assert!(a.proc.wait_timeout(Duration::from_secs(5)).is_some(), "a did not exit on SIGTERM");
    assert!(!has_vip(&lab, "a"), "a kept its VIP after SIGTERM");
    assert_eq!(status_json(&lab, "b", &b)[0]["last_reason"], "master sent priority 0");
}

#[test]
fn failing_track_script_lowers_priority_and_moves_vip() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let flag = da.path().join("ok");
    std::fs::write(&flag, "").expect("flag");
    let mut ca = Conf::v3(150, "0.1");
    ca.top = format!(
        "vrrp_script chk {{\n  script \"/usr/bin/test -e {}\"\n  interval 0.1\n  weight -60\n}}\n",
        flag.display()
    );
    ca.extra = "  track_script {\n    chk\n  }\n".into();
    let a = start_ours(&lab, "a", da.path(), &ca, &[]);
    let _b = start_ours(&lab, "b", db.path(), &Conf::v3(100, "0.1"), &[]);
    wait_vip(&lab, "a", Duration::from_secs(5));
    std::fs::remove_file(&flag).expect("rm flag");
    wait_vip(&lab, "b", Duration::from_secs(5));
    wait_no_vip(&lab, "a", Duration::from_secs(2));
    let st = status_json(&lab, "a", &a);
    assert_eq!(st[0]["effective_priority"], 90);
    assert_eq!(st[0]["state"], "BACKUP");
    // Script healthy again: a preempts back.
    std::fs::write(&flag, "").expect("flag");
    wait_vip(&lab, "a", Duration::from_secs(5));
}

#[test]
fn unicast_mode_without_multicast() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    for h in ["a", "b"] {
        let o = lab.run(h, &["ip", "link", "set", LAN, "multicast", "off"]).expect("ip");
        assert!(o.status.success());
    }
    let (da, db) = (tempdir(), tempdir());
    let mut ca = Conf::v3(150, "0.1");
    ca.extra = "  unicast_src_ip 10.77.0.1\n  unicast_peer {\n    10.77.0.2\n  }\n".into();
    let mut cb = Conf::v3(100, "0.1");
    cb.extra = "  unicast_src_ip 10.77.0.2\n  unicast_peer {\n    10.77.0.1\n  }\n".into();
    let mut a = start_ours(&lab, "a", da.path(), &ca, &[]);
    let b = start_ours(&lab, "b", db.path(), &cb, &[]);
    wait_vip(&lab, "a", Duration::from_secs(5));
    wait::until(Duration::from_secs(2), "b hears a by unicast", || {
        try_status(&lab, "b", &b)[0]["master"] == "10.77.0.1"
    })
    .expect("b learns the master");
    assert!(!has_vip(&lab, "b"));
    a.proc.kill();
    wait_vip(&lab, "b", Duration::from_secs(3));
}

#[test]
fn status_metrics_and_reload_keep_state() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let a = start_ours(&lab, "a", da.path(), &Conf::v3(150, "0.1"), &["--metrics-listen", "127.0.0.1:9650"]);
    let b = start_ours(&lab, "b", db.path(), &Conf::v3(100, "0.1"), &[]);
    wait_vip(&lab, "a", Duration::from_secs(5));
    let before = status_json(&lab, "a", &a);
    assert_eq!(before[0]["state"], "MASTER");
    assert_eq!(before[0]["vips"][0], "10.77.0.50/24");
    assert!(da.path().join("run/rempart-vrrp.pid").exists());

    // Text status.
    let out = lab
        .cmd("a", bin())
        .args(["--run-dir", &da.path().join("run").to_string_lossy(), "status"])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("VI_1 vrid:77 lan0 state:MASTER priority:150/150"), "{text}");

    // Metrics, checked by promtool.
    let metrics = lab
        .run(
            "a",
            &["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9650; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"],
        )
        .expect("curl");
    let body = String::from_utf8_lossy(&metrics.stdout);
    let body = body.split("\r\n\r\n").nth(1).expect("http body").to_string();
    assert!(body.contains("rempart_vrrp_state{instance=\"VI_1\",interface=\"lan0\",vrid=\"77\"} 2"), "{body}");
    assert!(body.contains("rempart_vrrp_become_master_total{"), "{body}");
    // The configured priority beside the effective one (the alert "priority below its configured value").
    assert!(
        body.contains("rempart_vrrp_configured_priority{instance=\"VI_1\",interface=\"lan0\",vrid=\"77\"} 150"),
        "{body}"
    );
    assert!(
        body.contains("rempart_vrrp_effective_priority{instance=\"VI_1\",interface=\"lan0\",vrid=\"77\"} 150"),
        "{body}"
    );
    assert!(body.contains("rempart_vrrp_adverts_sent_total{"), "{body}");
    assert!(body.contains("# HELP rempart_vrrp_state VRRP instance state: 0 init, 1 backup, 2 master, 3 fault"));
    let prom = da.path().join("metrics.txt");
    std::fs::write(&prom, &body).expect("write metrics");
    let check = sh(&format!("promtool check metrics < {}", prom.display()));
    assert!(
        check.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );

    // SIGHUP with the same config: no transition, no failover.
    a.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait::until(Duration::from_secs(3), "reload logged", || log(&a).contains("configuration reloaded"))
        .expect("reload");
    let after = status_json(&lab, "a", &a);
    assert_eq!(after[0]["state"], "MASTER");
    assert_eq!(after[0]["last_transition_unix"], before[0]["last_transition_unix"]);
    assert_eq!(status_json(&lab, "b", &b)[0]["state"], "BACKUP");
    assert!(has_vip(&lab, "a") && !has_vip(&lab, "b"));
    // SIGHUP with a changed priority: the instance restarts with the new settings.
    let mut c = Conf::v3(90, "0.1");
    c.vrid = 77;
    write_conf(da.path(), &c, "a");
    a.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait_vip(&lab, "b", Duration::from_secs(3));
    wait::until(Duration::from_secs(2), "a backup at 90", || {
        let s = try_status(&lab, "a", &a);
        s[0]["state"] == "BACKUP" && s[0]["priority"] == 90
    })
    .expect("a reloaded");
}

#[test]
fn check_config_reports_errors_with_location() {
    let d = tempdir();
    let p = d.path().join("bad.conf");
    std::fs::write(&p, "vrrp_instance X {\n  priority high\n}\n").expect("write");
    let out =
        std::process::Command::new(bin()).args(["check-config", "-f", &p.to_string_lossy()]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.conf:2:12: invalid priority \"high\""), "{err}");

    std::fs::write(&p, "vrrp_instance X {\n  interface eth0\n  virtual_router_id 300\n}\n").expect("write");
    let out =
        std::process::Command::new(bin()).args(["check-config", "-f", &p.to_string_lossy()]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":3:21: invalid virtual_router_id"));

    // The example names interface `mgmt`: check-config checks it exists (issue 14), so it passes
    // only where there is one (below, in a lab with a LAN named mgmt).
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/examples/vrrp-keepalived.conf");
    let out = std::process::Command::new(bin()).args(["check-config", "-f", example]).output().expect("run");
    if !std::path::Path::new("/sys/class/net/mgmt").exists() {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("(vrrp_instance VI_MGMT): interface mgmt does not exist here"), "{err}");
    }
    if !require_root("network namespaces") {
        return;
    }
    let mut lab = rempart_testkit::Lab::new().expect("lab");
    lab.add_host("a").expect("host");
    lab.add_lan("mgmt").expect("lan");
    lab.attach("mgmt", "a", "192.168.50.1/24").expect("attach");
    let ok = lab.cmd("a", bin()).args(["check-config", "-f", example]).output().expect("run");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
}

fn two_instances(prio: u8, script: Option<&std::path::Path>) -> String {
    let (top, track) = match script {
        Some(f) => (
            format!(
                "vrrp_script chk {{\n  script \"/usr/bin/test -e {}\"\n  interval 0.1\n  weight 0\n}}\n",
                f.display()
            ),
            "  track_script {\n    chk\n  }\n".to_string(),
        ),
        None => (String::new(), String::new()),
    };
    let inst = |name: &str, vrid: u8, vip: &str, track: &str| {
        format!(
            "vrrp_instance {name} {{\n  interface {LAN}\n  virtual_router_id {vrid}\n  priority {prio}\n  advert_int 0.1\n  virtual_ipaddress {{\n    {vip}/24\n  }}\n{track}}}\n"
        )
    };
    format!(
        "global_defs {{\n  vrrp_version 3\n}}\n{top}{}{}vrrp_sync_group G {{\n  group {{\n    VI_1\n    VI_2\n  }}\n}}\n",
        inst("VI_1", 81, "10.77.0.61", &track),
        inst("VI_2", 82, "10.77.0.62", ""),
    )
}

#[test]
fn sync_group_fails_over_together() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let flag = da.path().join("ok");
    std::fs::write(&flag, "").expect("flag");
    let _a = start_ours_text(&lab, "a", da.path(), &two_instances(150, Some(&flag)));
    let _b = start_ours_text(&lab, "b", db.path(), &two_instances(100, None));
    let v61: std::net::IpAddr = "10.77.0.61".parse().expect("ip");
    let v62: std::net::IpAddr = "10.77.0.62".parse().expect("ip");
    wait::until(Duration::from_secs(5), "both VIPs on a", || {
        let x = addrs(&lab, "a");
        x.contains(&v61) && x.contains(&v62)
    })
    .expect("a master of both");
    // Only VI_1 tracks the script; its fault takes VI_2 along through the sync group.
    std::fs::remove_file(&flag).expect("rm");
    wait::until(Duration::from_secs(5), "both VIPs on b", || {
        let x = addrs(&lab, "b");
        x.contains(&v61) && x.contains(&v62)
    })
    .expect("b master of both");
    // a sent priority 0 before it removed its VIPs (RFC 5798 §6.4.3's order); under a loaded
    // CI b can finish its skew time first, so a's removal is awaited, briefly.
    wait::until(Duration::from_secs(1), "a dropped both VIPs", || {
        let x = addrs(&lab, "a");
        !x.contains(&v61) && !x.contains(&v62)
    })
    .unwrap_or_else(|e| panic!("a kept a VIP: {e}: {:?}", addrs(&lab, "a")));
}

#[test]
fn ipv6_vip_on_master_only_then_kill9_moves_it_with_unsolicited_na() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let mut a = start_ours(&lab, "a", da.path(), &v6(150, "0.1"), &[]);
    let b = start_ours(&lab, "b", db.path(), &v6(100, "0.1"), &[]);
    wait_vip6(&lab, "a", Duration::from_secs(5));
    wait::until(Duration::from_secs(3), "b hears a over IPv6", || {
        try_status(&lab, "b", &b)[0]["master"].as_str().is_some_and(|m| m.starts_with("fe80::"))
    })
    .unwrap_or_else(|e| panic!("{e}\na:\n{}\nb:\n{}", log(&a), log(&b)));
    assert!(!has_vip6(&lab, "b"));
    let shown = lab.run("a", &["ip", "-6", "addr", "show", "dev", LAN]).expect("ip");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("inet6 fd00:77::50/64 scope global nodad"), "{shown}");
    let o = lab.run("c", &["ip", "-6", "addr", "add", "fd00:77::3/64", "dev", LAN]).expect("ip");
    assert!(o.status.success());
    let ping = lab.run("c", &["ping", "-6", "-c", "1", "-W", "2", VIP6]).expect("ping");
    assert!(ping.status.success(), "client cannot reach the IPv6 VIP on a");
    a.proc.kill();
    wait_vip6(&lab, "b", Duration::from_secs(3));
    let bmac = mac(&lab, "b");
    wait::until(Duration::from_secs(2), "client neighbour entry points at b", || {
        let out = lab.run("c", &["ip", "-6", "neigh", "show", VIP6, "dev", LAN]).expect("neigh");
        String::from_utf8_lossy(&out.stdout).contains(&bmac)
    })
    .expect("unsolicited NA updated the client");
}

#[test]
fn notify_scripts_get_keepalived_arguments() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let out = da.path().join("notify.log");
    let script = da.path().join("notify.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$*\" >> {}\n", out.display())).expect("script");
    let master_flag = da.path().join("became-master");
    let mut c = Conf::v3(150, "0.1");
    c.extra = format!("  notify {}\n  notify_master \"/usr/bin/touch {}\"\n", script.display(), master_flag.display());
    let o = std::process::Command::new("chmod").arg("+x").arg(&script).output().expect("chmod");
    assert!(o.status.success());
    let a = start_ours(&lab, "a", da.path(), &c, &[]);
    let _b = start_ours(&lab, "b", db.path(), &Conf::v3(100, "0.1"), &[]);
    let read = || std::fs::read_to_string(&out).unwrap_or_default();
    wait::until(Duration::from_secs(5), "notify MASTER", || read().contains("INSTANCE VI_1 MASTER 150"))
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", read(), log(&a)));
    assert!(read().starts_with("INSTANCE VI_1 BACKUP 150\n"), "{:?}", read());
    wait::until(Duration::from_secs(2), "notify_master ran", || master_flag.exists()).expect("notify_master");
    a.proc.term();
    wait::until(Duration::from_secs(5), "notify STOP", || read().contains("INSTANCE VI_1 STOP 150")).expect("stop");
}

/// Issue 3, accept mode: a non-owner master with `no_accept` drops what is addressed to its VIPs
/// (nftables, as keepalived does) while its own address keeps working; with `accept` (the
/// default) the same service answers on the VIP.
#[test]
fn no_accept_drops_traffic_to_the_vip_and_accept_lets_it_through() {
    if !require_root("network namespaces") {
        return;
    }
    let lab = lab();
    let (da, db) = (tempdir(), tempdir());
    let mut ca = Conf::v3(150, "0.1");
    ca.extra = "  no_accept\n".into();
    let a = start_ours(&lab, "a", da.path(), &ca, &[]);
    let _b = start_ours(&lab, "b", db.path(), &Conf::v3(100, "0.1"), &[]);
    wait_vip(&lab, "a", Duration::from_secs(5));
    // A TCP service on every address of a (the kernel completes handshakes into the backlog).
    let listener = lab.enter("a", || std::net::TcpListener::bind("0.0.0.0:8080")).expect("enter").expect("listen");
    let connect = |addr: &str| {
        let sa: std::net::SocketAddr = format!("{addr}:8080").parse().expect("addr");
        lab.enter("c", move || std::net::TcpStream::connect_timeout(&sa, Duration::from_millis(700)).is_ok())
            .expect("enter")
    };
    assert!(connect("10.77.0.1"), "the service does not answer on a's own address");
    assert!(!connect(VIP), "no_accept: a non-owner master accepted a TCP connection to the VIP");
    let ping = lab.run("c", &["ping", "-c", "1", "-W", "1", VIP]).expect("ping");
    assert!(!ping.status.success(), "no_accept: the VIP answered a ping");
    // ARP still resolves the VIP to a (only IP traffic to the VIP is dropped).
    assert!(neigh(&lab, "c").contains(&mac(&lab, "a")), "neigh: {}", neigh(&lab, "c"));

    // Same router, `accept`: SIGHUP restarts the instance (it hands over, then preempts back).
    let mut c = Conf::v3(150, "0.1");
    c.extra = "  accept\n".into();
    write_conf(da.path(), &c, "a");
    a.proc.signal(nix::sys::signal::Signal::SIGHUP);
    wait::until(Duration::from_secs(5), "a reloaded and master again", || {
        log(&a).contains("configuration reloaded") && try_status(&lab, "a", &a)[0]["state"] == "MASTER"
    })
    .expect("a master");
    wait::until(Duration::from_secs(3), "TCP connect to the VIP on a", || connect(VIP))
        .unwrap_or_else(|e| panic!("{e}\n{}", log(&a)));
    let ping = lab.run("c", &["ping", "-c", "1", "-W", "2", VIP]).expect("ping");
    assert!(ping.status.success(), "accept: the VIP does not answer a ping");
    drop(listener);
}

/// Issue 3: `virtual_ipaddress` options `dev`, `label`, `brd` and `scope` are honoured, on the
/// master and on the backup that takes over.
#[test]
fn vip_dev_label_brd_scope_are_applied() {
    if !require_root("network namespaces") {
        return;
    }
    let mut lab = lab();
    lab.add_lan("lan1").expect("lan1");
    lab.attach("lan1", "a", "10.78.0.1/24").expect("attach a");
    lab.attach("lan1", "b", "10.78.0.2/24").expect("attach b");
    let (da, db) = (tempdir(), tempdir());
    let vips = "10.77.0.50/24\n    10.78.0.50/24 dev lan1 label lan1:vip brd 10.78.0.255\n    10.77.0.52 scope link";
    let mut ca = Conf::v3(150, "0.1");
    ca.vip = vips;
    let mut cb = Conf::v3(100, "0.1");
    cb.vip = vips;
    let mut a = start_ours(&lab, "a", da.path(), &ca, &[]);
    let _b = start_ours(&lab, "b", db.path(), &cb, &[]);
    wait_vip(&lab, "a", Duration::from_secs(5));
    let show = |host: &str, dev: &str| {
        let o = lab.run(host, &["ip", "-4", "addr", "show", "dev", dev]).expect("ip");
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let check = |host: &str| {
        let lan1 = show(host, "lan1");
        assert!(lan1.contains("inet 10.78.0.50/24 brd 10.78.0.255 scope global secondary lan1:vip"), "{lan1}");
        let lan0 = show(host, LAN);
        assert!(lan0.contains("inet 10.77.0.52/32 scope link lan0"), "{lan0}");
        assert!(!lan0.contains("10.78.0.50"), "dev ignored: {lan0}");
        // No `brd` configured: none set (keepalived's behaviour).
        assert!(lan0.contains("inet 10.77.0.50/24 scope global secondary lan0"), "{lan0}");
    };
    check("a");
    a.proc.kill();
    wait_vip(&lab, "b", Duration::from_secs(3));
    wait::until(Duration::from_secs(2), "VIP on b's lan1", || show("b", "lan1").contains("10.78.0.50/24"))
        .expect("lan1 VIP on b");
    check("b");
}

/// Issue 3: `script_user` runs track and notify scripts as that user and group, and
/// `enable_script_security` refuses a script that would run as root from a path writable by
/// others (keepalived: "Disabling track script ... due to insecure"; it no longer counts).
#[test]
fn script_user_and_script_security() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root("network namespaces and setuid") {
        return;
    }
    let lab = lab();
    let d = tempdir();
    let root = d.path();
    let chmod = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
    };
    chmod(root, 0o755);
    let (bin, out) = (root.join("bin"), root.join("out"));
    std::fs::create_dir(&bin).expect("mkdir");
    std::fs::create_dir(&out).expect("mkdir");
    chmod(&bin, 0o755);
    chmod(&out, 0o777);
    let who = bin.join("who.sh");
    std::fs::write(&who, "#!/bin/sh\necho \"$(id -u):$(id -g)\" > \"$1\"\n").expect("write");
    chmod(&who, 0o755);
    let evil = bin.join("evil.sh");
    std::fs::write(&evil, format!("#!/bin/sh\ntouch {}/evil\nexit 1\n", out.display())).expect("write");
    chmod(&evil, 0o757); // writable by anyone: must not run as root
    let text = format!(
        "global_defs {{\n  vrrp_version 3\n  script_user nobody\n  enable_script_security\n}}\n\
         vrrp_script who {{\n  script \"{who} {out}/track\"\n  interval 0.1\n}}\n\
         vrrp_script evil {{\n  script \"{evil}\"\n  interval 0.1\n  user root\n}}\n\
         vrrp_instance VI_1 {{\n  interface {LAN}\n  virtual_router_id 77\n  priority 150\n  advert_int 0.1\n\
         \x20 virtual_ipaddress {{\n    {VIP}/24\n  }}\n  track_script {{\n    who\n    evil\n  }}\n\
         \x20 notify_master \"{who} {out}/notify\"\n}}\n",
        who = who.display(),
        evil = evil.display(),
        out = out.display(),
    );
    let a = start_ours_text(&lab, "a", root, &text);
    let nobody = nix::unistd::User::from_name("nobody").expect("getpwnam").expect("user nobody");
    let want = format!("{}:{}\n", nobody.uid, nobody.gid);
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    wait::until(Duration::from_secs(5), "track script ran as nobody", || read("track") == want)
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", read("track"), log(&a)));
    // The insecure weight-0 script would have put the instance in FAULT had it run.
    wait::until(Duration::from_secs(5), "a master", || try_status(&lab, "a", &a)[0]["state"] == "MASTER")
        .unwrap_or_else(|e| panic!("{e}\n{}", log(&a)));
    wait::until(Duration::from_secs(3), "notify_master ran as nobody", || read("notify") == want)
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{}", read("notify"), log(&a)));
    assert!(log(&a).contains("Disabling track script evil due to insecure"), "{}", log(&a));
    assert!(!out.join("evil").exists(), "the insecure script ran");
}
