//! The lab's own tests: namespaces are removed on drop and on panic, cut/heal really cut, spawned
//! processes die with the lab. They need root (CI runs as root and fails rather than skip).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use rempart_testkit::netns::list_namespaces;
use rempart_testkit::{require_root, wait, Lab};

fn ours(lab_id: &str) -> Vec<String> {
    list_namespaces().expect("ip netns list").into_iter().filter(|n| n.starts_with(lab_id)).collect()
}

/// A TCP echo server in `host` on `addr`; returns after it is listening.
fn echo_server(lab: &Lab, host: &str, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let listener = lab.enter(host, move || TcpListener::bind(addr)).expect("enter").expect("bind");
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            let mut b = [0u8; 64];
            if let Ok(n) = s.read(&mut b) {
                let _ = s.write_all(&b[..n]);
            }
        }
    })
}

/// One TCP exchange from `host` to `addr`, with a short timeout.
fn exchange(lab: &Lab, host: &str, addr: SocketAddr) -> bool {
    lab.enter(host, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
        let mut b = [0u8; 5];
        s.write_all(b"hello").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"hello"
    })
    .expect("enter")
}

#[test]
fn namespaces_and_processes_are_removed_on_drop() {
    if !require_root("network namespaces") {
        return;
    }
    let before = list_namespaces().expect("list");
    let (id, pid) = {
        let mut lab = Lab::new().expect("lab");
        lab.add_host("a").expect("host a");
        lab.add_host("b").expect("host b");
        lab.add_lan("lan").expect("lan");
        lab.attach("lan", "a", "10.77.0.1/24").expect("attach");
        lab.link("a", "b", "10.78.0.1/24", "10.78.0.2/24").expect("link");
        assert_eq!(ours(lab.id()).len(), 3, "two hosts and one switch");
        let mut c = lab.cmd("b", "sleep");
        c.arg("600");
        let p = lab.spawn("b", c).expect("spawn");
        let pid = p.pid();
        std::mem::forget(p); // the lab, not the guard, must clean this one up
        (lab.id().to_string(), pid)
    };
    assert!(ours(&id).is_empty(), "namespaces left behind: {:?}", ours(&id));
    // The process is gone (reaped or a zombie no longer in any namespace's pid list).
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(status.is_empty() || status.contains("State:\tZ"), "sleep {pid} still runs: {status}");
    let after: Vec<String> = list_namespaces().expect("list").into_iter().filter(|n| !before.contains(n)).collect();
    assert!(after.iter().all(|n| !n.starts_with(&id)), "{after:?}");
}

#[test]
fn namespaces_are_removed_when_a_test_panics() {
    if !require_root("network namespaces") {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::panic::catch_unwind(move || {
        let mut lab = Lab::new().expect("lab");
        lab.add_host("x").expect("host");
        let mut c = lab.cmd("x", "sleep");
        c.arg("600");
        let p = lab.spawn("x", c).expect("spawn");
        tx.send((lab.id().to_string(), p.pid())).expect("send");
        std::mem::forget(p);
        panic!("test failure inside a lab");
    });
    assert!(r.is_err());
    let (id, pid) = rx.recv().expect("lab id");
    assert!(ours(&id).is_empty(), "namespaces left behind after panic: {:?}", ours(&id));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(status.is_empty() || status.contains("State:\tZ"), "process survived the panic: {status}");
}

#[test]
fn cut_and_heal_a_point_to_point_link_and_a_lan_port() {
    if !require_root("network namespaces") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    for h in ["a", "b", "c"] {
        lab.add_host(h).expect("host");
    }
    lab.link("a", "b", "10.80.0.1/24", "10.80.0.2/24").expect("link");
    lab.add_lan("mgmt").expect("lan");
    lab.attach("mgmt", "a", "10.81.0.1/24").expect("attach a");
    lab.attach("mgmt", "c", "10.81.0.3/24").expect("attach c");
    assert_eq!(lab.ifname("a", "b"), "to-b");
    assert_eq!(lab.ifname("a", "mgmt"), "mgmt");

    let b_addr = SocketAddr::from((Ipv4Addr::new(10, 80, 0, 2), 7000));
    let c_addr = SocketAddr::from((Ipv4Addr::new(10, 81, 0, 3), 7000));
    let _sb = echo_server(&lab, "b", b_addr);
    let _sc = echo_server(&lab, "c", c_addr);
    assert!(exchange(&lab, "a", b_addr), "a reaches b over the link");
    assert!(exchange(&lab, "a", c_addr), "a reaches c over the LAN");
    // The root namespace got no lab address and no lab link (nothing is ever sent from it).
    let root = std::process::Command::new("ip").args(["-o", "addr"]).output().expect("ip addr");
    let root = String::from_utf8_lossy(&root.stdout);
    assert!(!root.contains("10.80.0.") && !root.contains("10.81.0.") && !root.contains("to-b"), "{root}");

    lab.cut("a", "b").expect("cut");
    assert!(!exchange(&lab, "a", b_addr), "exchange works while the link is cut");
    assert!(exchange(&lab, "a", c_addr), "cutting a—b must not cut the LAN");
    lab.heal("a", "b").expect("heal");
    wait::until(Duration::from_secs(5), "a reaches b after heal", || exchange(&lab, "a", b_addr)).expect("heal");

    lab.cut("c", "mgmt").expect("cut lan port");
    assert!(!exchange(&lab, "a", c_addr), "exchange works while c's LAN port is cut");
    lab.heal("c", "mgmt").expect("heal lan port");
    wait::until(Duration::from_secs(5), "a reaches c after heal", || exchange(&lab, "a", c_addr)).expect("heal");

    lab.isolate("a").expect("isolate");
    assert!(!exchange(&lab, "a", b_addr) && !exchange(&lab, "a", c_addr), "isolated host still talks");
    lab.rejoin("a").expect("rejoin");
    wait::until(Duration::from_secs(5), "a rejoined", || exchange(&lab, "a", b_addr) && exchange(&lab, "a", c_addr))
        .expect("rejoin");
}

#[test]
fn run_and_spawn_execute_inside_the_host() {
    if !require_root("network namespaces") {
        return;
    }
    let mut lab = Lab::new().expect("lab");
    lab.add_host("h").expect("host");
    lab.add_lan("mgmt").expect("lan");
    lab.attach("mgmt", "h", "10.82.0.7/24").expect("attach");
    let out = lab.run("h", &["ip", "-4", "-o", "addr", "show", "dev", "mgmt"]).expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.82.0.7/24"));
    // The root namespace got nothing.
    let root = std::process::Command::new("ip").args(["-4", "-o", "addr"]).output().expect("ip addr");
    assert!(!String::from_utf8_lossy(&root.stdout).contains("10.82.0.7"));

    let mut p = lab.spawn("h", std::process::Command::new("sleep").tap_arg("600")).expect("spawn");
    assert!(p.wait_timeout(Duration::from_millis(50)).is_none(), "sleep exited early");
    let pid = p.pid().to_string();
    let pids = lab.run("h", &["ip", "netns", "pids", lab.netns("h")]).expect("pids");
    assert!(String::from_utf8_lossy(&pids.stdout).lines().any(|l| l.trim() == pid), "spawned outside the host");
    p.kill();
    assert!(p.wait_timeout(Duration::from_secs(1)).is_some());
}

trait TapArg {
    fn tap_arg(self, a: &str) -> Self;
}
impl TapArg for std::process::Command {
    fn tap_arg(mut self, a: &str) -> Self {
        self.arg(a);
        self
    }
}
