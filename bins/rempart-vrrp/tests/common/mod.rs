//! Helpers for namespace tests: a LAN with hosts a, b (routers) and c (client), configs, daemons.
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rempart_testkit::{wait, Lab, Proc};

pub const LAN: &str = "lan0";
pub const VIP: &str = "10.77.0.50";

/// A lab: hosts a (10.77.0.1), b (10.77.0.2), c (10.77.0.3, client) on LAN `lan0`.
pub fn lab() -> Lab {
    let mut lab = Lab::new().expect("lab");
    for h in ["a", "b", "c"] {
        lab.add_host(h).expect("host");
        let o = lab.run(h, &["ip", "link", "set", "lo", "up"]).expect("lo");
        assert!(o.status.success());
    }
    lab.add_lan(LAN).expect("lan");
    lab.attach(LAN, "a", "10.77.0.1/24").expect("attach a");
    lab.attach(LAN, "b", "10.77.0.2/24").expect("attach b");
    lab.attach(LAN, "c", "10.77.0.3/24").expect("attach c");
    lab
}

/// Settings of one router's keepalived.conf.
#[derive(Clone, Debug)]
pub struct Conf {
    pub version: u8,
    pub priority: u8,
    pub advert_int: &'static str,
    pub auth_pass: Option<&'static str>,
    pub extra: String,
    pub top: String,
    pub vrid: u8,
    pub vip: &'static str,
}

impl Conf {
    pub fn v3(priority: u8, advert_int: &'static str) -> Conf {
        Conf {
            version: 3,
            priority,
            advert_int,
            auth_pass: None,
            extra: String::new(),
            top: String::new(),
            vrid: 77,
            vip: "10.77.0.50/24",
        }
    }
    pub fn v2_pass(priority: u8) -> Conf {
        Conf {
            version: 2,
            priority,
            advert_int: "1",
            auth_pass: Some("rempart1"),
            extra: String::new(),
            top: String::new(),
            vrid: 78,
            vip: "10.77.0.50/24",
        }
    }
    /// The keepalived.conf text (read by both implementations).
    pub fn text(&self, router_id: &str) -> String {
        let auth = self
            .auth_pass
            .map(|p| format!("  authentication {{\n    auth_type PASS\n    auth_pass {p}\n  }}\n"))
            .unwrap_or_default();
        format!(
            "global_defs {{\n  router_id {router_id}\n  vrrp_version {v}\n}}\n{top}\nvrrp_instance VI_1 {{\n  state BACKUP\n  interface {LAN}\n  virtual_router_id {vrid}\n  priority {p}\n  advert_int {i}\n{auth}  virtual_ipaddress {{\n    {vip}\n  }}\n{extra}}}\n",
            v = self.version,
            top = self.top,
            vrid = self.vrid,
            p = self.priority,
            i = self.advert_int,
            extra = self.extra,
            vip = self.vip,
        )
    }
}

/// A router daemon and its files.
pub struct Router {
    pub proc: Proc,
    pub dir: PathBuf,
    pub conf: PathBuf,
}

pub fn write_conf(dir: &Path, c: &Conf, id: &str) -> PathBuf {
    let p = dir.join("keepalived.conf");
    std::fs::write(&p, c.text(id)).expect("write conf");
    p
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rempart-vrrp")
}

/// Starts rempart-vrrp in `host` with run dir `dir/run`, logging to `dir/log`.
pub fn start_ours(lab: &Lab, host: &str, dir: &Path, c: &Conf, extra_args: &[&str]) -> Router {
    let conf = write_conf(dir, c, host);
    spawn_ours(lab, host, dir, conf, extra_args)
}

/// Starts rempart-vrrp in `host` with a keepalived.conf given as text.
pub fn start_ours_text(lab: &Lab, host: &str, dir: &Path, text: &str) -> Router {
    let conf = dir.join("keepalived.conf");
    std::fs::write(&conf, text).expect("write conf");
    spawn_ours(lab, host, dir, conf, &[])
}

fn spawn_ours(lab: &Lab, host: &str, dir: &Path, conf: PathBuf, extra_args: &[&str]) -> Router {
    let log = std::fs::File::create(dir.join("log")).expect("log");
    let mut cmd = lab.cmd(host, bin());
    cmd.args(["--run-dir", &dir.join("run").to_string_lossy(), "run", "-f", &conf.to_string_lossy()])
        .args(extra_args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log);
    let proc = lab.spawn(host, cmd).expect("spawn rempart-vrrp");
    Router { proc, dir: dir.to_path_buf(), conf }
}

/// Starts keepalived 2.2.7 in `host` with its own pid files (see ANCHORS: shared pid file trap).
pub fn start_keepalived(lab: &Lab, host: &str, dir: &Path, c: &Conf) -> Router {
    let conf = write_conf(dir, c, host);
    let log = std::fs::File::create(dir.join("log")).expect("log");
    let mut cmd = lab.cmd(host, "keepalived");
    cmd.args([
        "-n",
        "-l",
        "-D",
        "-f",
        &conf.to_string_lossy(),
        "-p",
        &dir.join("keepalived.pid").to_string_lossy(),
        "-r",
        &dir.join("vrrp.pid").to_string_lossy(),
    ])
    .stdout(log.try_clone().expect("log"))
    .stderr(log);
    let proc = lab.spawn(host, cmd).expect("spawn keepalived");
    Router { proc, dir: dir.to_path_buf(), conf }
}

/// Addresses on `lan0` in `host`, read in-process inside the namespace.
pub fn addrs(lab: &Lab, host: &str) -> Vec<IpAddr> {
    lab.enter(host, || {
        nix::ifaddrs::getifaddrs()
            .map(|it| {
                it.filter(|i| i.interface_name == LAN)
                    .filter_map(|i| {
                        i.address.and_then(|a| {
                            a.as_sockaddr_in()
                                .map(|s| IpAddr::V4(s.ip()))
                                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    })
    .expect("enter")
}

pub const VIP6: &str = "fd00:77::50";

/// VRRPv3 over IPv6 with a VIP in fd00:77::/64.
pub fn v6(priority: u8, advert_int: &'static str) -> Conf {
    let mut c = Conf::v3(priority, advert_int);
    c.vip = "fd00:77::50/64";
    c.vrid = 76;
    c
}

pub fn has_vip6(lab: &Lab, host: &str) -> bool {
    let vip: IpAddr = VIP6.parse().expect("vip6");
    addrs(lab, host).contains(&vip)
}

pub fn wait_vip6(lab: &Lab, host: &str, within: Duration) -> Duration {
    wait::until(within, &format!("IPv6 VIP on {host}"), || has_vip6(lab, host)).expect("VIP6")
}

pub fn has_vip(lab: &Lab, host: &str) -> bool {
    let vip: Ipv4Addr = VIP.parse().expect("vip");
    addrs(lab, host).contains(&IpAddr::V4(vip))
}

/// Waits until `host` holds the VIP; returns the time waited.
pub fn wait_vip(lab: &Lab, host: &str, within: Duration) -> Duration {
    wait::until(within, &format!("VIP on {host}"), || has_vip(lab, host)).expect("VIP")
}

pub fn wait_no_vip(lab: &Lab, host: &str, within: Duration) -> Duration {
    wait::until(within, &format!("no VIP on {host}"), || !has_vip(lab, host)).expect("VIP gone")
}

pub fn mac(lab: &Lab, host: &str) -> String {
    let out = lab.run(host, &["cat", &format!("/sys/class/net/{LAN}/address")]).expect("mac");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn neigh(lab: &Lab, host: &str) -> String {
    let out = lab.run(host, &["ip", "neigh", "show", VIP, "dev", LAN]).expect("neigh");
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn log(r: &Router) -> String {
    std::fs::read_to_string(r.dir.join("log")).unwrap_or_default()
}

/// Runs `rempart-vrrp status --json` against a router's run dir, inside its host.
pub fn status_json(lab: &Lab, host: &str, r: &Router) -> serde_json::Value {
    let out = lab
        .cmd(host, bin())
        .args(["--run-dir", &r.dir.join("run").to_string_lossy(), "status", "--json"])
        .output()
        .expect("status");
    assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// Like [`status_json`] but `Null` while the daemon is not answering yet (for wait loops).
pub fn try_status(lab: &Lab, host: &str, r: &Router) -> serde_json::Value {
    let out = lab
        .cmd(host, bin())
        .args(["--run-dir", &r.dir.join("run").to_string_lossy(), "status", "--json"])
        .output()
        .expect("status");
    if !out.status.success() {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn elapsed_since(t: Instant) -> Duration {
    t.elapsed()
}

/// `cmd` helper for processes outside the lab.
pub fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").args(["-c", cmd]).output().expect("sh")
}
