//! Labs of hosts as Linux network namespaces, for multi-host tests on one machine.
//!
//! ```text
//!   host "main" (netns) ── veth "to-backup" ══ veth "to-main" ── host "backup" (netns)
//!        │ "mgmt"                                                   │ "mgmt"
//!        └──────── veth ── bridge "br0" in switch netns "sw-mgmt" ───┘
//! ```
//!
//! Every name carries the creating process id and a per-process counter, so tests run in
//! parallel (and several test binaries at once) without clashing. A `Lab` owns what it made:
//! dropping it — on success, failure or panic — kills every process it spawned (by process group
//! id, then every pid still inside its namespaces) and deletes its namespaces, which removes their
//! links. Nothing is ever added to the root namespace: links are created directly inside the
//! hosts' namespaces, and probes run inside a host through [`Lab::enter`] or [`Lab::cmd`].

use std::collections::BTreeMap;
use std::fs::File;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The prefix of every namespace a lab creates: `rp<pid>-<n>-<name>`.
pub const NS_PREFIX: &str = "rp";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, Clone)]
enum Port {
    /// One end of a point-to-point link: the interface `ifname` in `host`.
    P2p { host: String, ifname: String },
    /// A host's port on a LAN: the port `port` in the switch namespace `sw`.
    Lan { sw: String, port: String },
}

/// A set of hosts (network namespaces) and the links between them. See the module docs.
#[derive(Debug)]
pub struct Lab {
    id: String,
    hosts: BTreeMap<String, String>,
    switches: BTreeMap<String, String>,
    /// (host, peer host or lan) → the ports to set down to cut that attachment.
    ports: BTreeMap<(String, String), Vec<Port>>,
    /// Every namespace created, in creation order.
    created: Vec<String>,
    procs: Arc<Mutex<Vec<i32>>>,
    /// When false, dropping the lab leaves everything in place (see [`Lab::keep`]).
    owned: bool,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run `ip` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Linux interface names are at most 15 bytes.
fn ifname(s: &str) -> String {
    s.chars().take(15).collect()
}

/// Names of the namespaces that exist now (`ip netns list`).
pub fn list_namespaces() -> anyhow::Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output().context("cannot run `ip netns list`")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Pids of the processes inside namespace `ns` (`ip netns pids`).
fn pids_in(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn kill_and_delete(ns: &str) {
    for _ in 0..50 {
        let pids = pids_in(ns);
        if pids.is_empty() {
            break;
        }
        for p in pids {
            let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Deletes namespaces left by labs whose process died without cleaning up (killed by SIGKILL,
/// say). Only names of the form `rp<pid>-…` whose `<pid>` no longer runs are touched.
pub fn remove_stale() -> usize {
    let mut n = 0;
    for ns in list_namespaces().unwrap_or_default() {
        let Some(rest) = ns.strip_prefix(NS_PREFIX) else { continue };
        let Some((pid, _)) = rest.split_once('-') else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_and_delete(&ns);
            n += 1;
        }
    }
    n
}

impl Lab {
    /// An empty lab. Needs root (see [`crate::require_root`]).
    pub fn new() -> anyhow::Result<Lab> {
        remove_stale();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        Ok(Self::with_id(format!("{NS_PREFIX}{}-{n}", std::process::id())))
    }

    /// A lab whose namespaces are named `<name>-<host>`, for a lab that outlives its process
    /// (`rempart-lab up`). `name` must not look like `rp<digits>-…` (those are per-process labs,
    /// removed as stale once their process is gone). Fails if namespaces of that name exist.
    pub fn named(name: &str) -> anyhow::Result<Lab> {
        if let Some(rest) = name.strip_prefix(NS_PREFIX) {
            if rest.split('-').next().is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
                bail!("lab name {name:?} is reserved for per-process labs");
            }
        }
        let taken: Vec<String> =
            list_namespaces()?.into_iter().filter(|n| n.starts_with(&format!("{name}-"))).collect();
        if !taken.is_empty() {
            bail!("lab {name:?} already exists (namespaces {}); remove it first", taken.join(", "));
        }
        Ok(Self::with_id(name.to_string()))
    }

    fn with_id(id: String) -> Lab {
        Lab {
            id,
            hosts: BTreeMap::new(),
            switches: BTreeMap::new(),
            ports: BTreeMap::new(),
            created: Vec::new(),
            procs: Arc::new(Mutex::new(Vec::new())),
            owned: true,
        }
    }

    /// Leaves the lab in place when it is dropped (its namespaces and processes stay); remove it
    /// later with [`destroy`].
    pub fn keep(mut self) {
        self.owned = false;
    }

    /// This lab's unique prefix, `rp<pid>-<n>`; every namespace name starts with it.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn new_ns(&mut self, name: &str) -> anyhow::Result<String> {
        let ns = format!("{}-{name}", self.id);
        ip(&["netns", "add", &ns])?;
        self.created.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "dev", "lo", "up"])?;
        Ok(ns)
    }

    fn sysctl(&self, ns: &str, kv: &[&str]) -> anyhow::Result<()> {
        let mut args = vec!["netns", "exec", ns, "sysctl", "-q", "-w"];
        args.extend_from_slice(kv);
        ip(&args)
    }

    /// Adds a host. IPv6 duplicate address detection is off and addresses survive link down, so
    /// that cut/heal leaves addressing as it was.
    pub fn add_host(&mut self, name: &str) -> anyhow::Result<()> {
        if self.hosts.contains_key(name) || self.switches.contains_key(name) {
            bail!("lab already has a host or LAN named {name:?}");
        }
        let ns = self.new_ns(name)?;
        self.sysctl(
            &ns,
            &[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
                "net.ipv6.conf.all.keep_addr_on_down=1",
                "net.ipv6.conf.default.keep_addr_on_down=1",
            ],
        )?;
        self.hosts.insert(name.to_string(), ns);
        Ok(())
    }

    /// The namespace of `host`, for `ip netns exec` or `ip -n`.
    pub fn netns(&self, host: &str) -> &str {
        self.hosts.get(host).map_or("", String::as_str)
    }

    fn ns(&self, host: &str) -> anyhow::Result<&str> {
        self.hosts.get(host).map(String::as_str).with_context(|| format!("no host {host:?} in this lab"))
    }

    /// The host names, sorted.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// The name of `host`'s interface towards `peer_or_lan`: `to-<peer>` for a point-to-point
    /// link, the LAN's name for a LAN (truncated to 15 bytes).
    pub fn ifname(&self, _host: &str, peer_or_lan: &str) -> String {
        if self.switches.contains_key(peer_or_lan) {
            ifname(peer_or_lan)
        } else {
            ifname(&format!("to-{peer_or_lan}"))
        }
    }

    fn addr_up(&self, ns: &str, dev: &str, addr: &str) -> anyhow::Result<()> {
        if !addr.is_empty() {
            let fam = if addr.contains(':') { "-6" } else { "-4" };
            ip(&["-n", ns, fam, "addr", "add", addr, "dev", dev])?;
        }
        ip(&["-n", ns, "link", "set", "dev", dev, "up"])
    }

    /// A point-to-point veth link between hosts `a` and `b` with the given addresses (CIDR, e.g.
    /// `10.9.0.1/24`; empty for none).
    pub fn link(&mut self, a: &str, b: &str, addr_a: &str, addr_b: &str) -> anyhow::Result<()> {
        let (na, nb) = (self.ns(a)?.to_string(), self.ns(b)?.to_string());
        let (ia, ib) = (self.ifname(a, b), self.ifname(b, a));
        ip(&["-n", &na, "link", "add", "name", &ia, "type", "veth", "peer", "name", &ib, "netns", &nb])?;
        self.addr_up(&na, &ia, addr_a)?;
        self.addr_up(&nb, &ib, addr_b)?;
        let ports = vec![Port::P2p { host: a.into(), ifname: ia }, Port::P2p { host: b.into(), ifname: ib }];
        self.ports.insert((a.into(), b.into()), ports.clone());
        self.ports.insert((b.into(), a.into()), ports);
        Ok(())
    }

    /// A LAN: a bridge `br0` in its own switch namespace. Multicast snooping is off so that
    /// VRRP advertisements reach every port.
    pub fn add_lan(&mut self, lan: &str) -> anyhow::Result<()> {
        if self.hosts.contains_key(lan) || self.switches.contains_key(lan) {
            bail!("lab already has a host or LAN named {lan:?}");
        }
        let sw = self.new_ns(&format!("sw-{lan}"))?;
        ip(&["-n", &sw, "link", "add", "name", "br0", "type", "bridge", "mcast_snooping", "0", "stp_state", "0"])?;
        ip(&["-n", &sw, "link", "set", "dev", "br0", "up"])?;
        self.switches.insert(lan.to_string(), sw);
        Ok(())
    }

    /// Plugs `host` into `lan` with address `addr` (CIDR; empty for none). The host's interface
    /// is named after the LAN.
    pub fn attach(&mut self, lan: &str, host: &str, addr: &str) -> anyhow::Result<()> {
        let hns = self.ns(host)?.to_string();
        let sw = self.switches.get(lan).with_context(|| format!("no LAN {lan:?} in this lab"))?.clone();
        let (hif, port) = (ifname(lan), ifname(host));
        ip(&["-n", &hns, "link", "add", "name", &hif, "type", "veth", "peer", "name", &port, "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", "dev", &port, "master", "br0", "up"])?;
        self.addr_up(&hns, &hif, addr)?;
        self.ports.insert((host.into(), lan.into()), vec![Port::Lan { sw, port }]);
        Ok(())
    }

    fn set_ports(&self, a: &str, b: &str, state: &str) -> anyhow::Result<()> {
        let ports = self.ports.get(&(a.to_string(), b.to_string())).with_context(|| format!("no link {a} — {b}"))?;
        for p in ports {
            match p {
                Port::P2p { host, ifname } => ip(&["-n", self.ns(host)?, "link", "set", "dev", ifname, state])?,
                Port::Lan { sw, port } => ip(&["-n", sw, "link", "set", "dev", port, state])?,
            }
        }
        Ok(())
    }

    /// Cuts the link between `a` and `b` (a host or a LAN `a` is attached to) by setting it down.
    /// Addresses stay; the host sees its carrier go.
    pub fn cut(&self, a: &str, b: &str) -> anyhow::Result<()> {
        self.set_ports(a, b, "down")
    }

    /// Heals what [`Lab::cut`] cut.
    pub fn heal(&self, a: &str, b: &str) -> anyhow::Result<()> {
        self.set_ports(a, b, "up")
    }

    fn attachments(&self, host: &str) -> Vec<String> {
        self.ports.keys().filter(|(h, _)| h == host).map(|(_, b)| b.clone()).collect()
    }

    /// Cuts every link and LAN port of `host`.
    pub fn isolate(&self, host: &str) -> anyhow::Result<()> {
        for b in self.attachments(host) {
            self.cut(host, &b)?;
        }
        Ok(())
    }

    /// Heals every link and LAN port of `host`.
    pub fn rejoin(&self, host: &str) -> anyhow::Result<()> {
        for b in self.attachments(host) {
            self.heal(host, &b)?;
        }
        Ok(())
    }

    /// A command that runs `program` inside `host` (`ip netns exec NS program`). Add arguments
    /// and stdio, then [`Lab::spawn`] it or call `output()`.
    pub fn cmd(&self, host: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.netns(host), program]).stdin(Stdio::null());
        c
    }

    /// Runs `argv` inside `host` and waits for it. Does not fail on a non-zero exit: check
    /// `status`.
    pub fn run(&self, host: &str, argv: &[&str]) -> anyhow::Result<Output> {
        let (prog, args) = argv.split_first().context("run needs a program")?;
        self.ns(host)?;
        self.cmd(host, prog).args(args).output().with_context(|| format!("running {argv:?} in {host}"))
    }

    /// Starts `cmd` inside `host` in its own process group. Build it with [`Lab::cmd`] to keep
    /// stdio settings; any other command is rebuilt under `ip netns exec` with its program,
    /// arguments, environment and directory (stdin null, stdout/stderr inherited). The process
    /// group is killed when the returned [`Proc`] or the lab is dropped.
    pub fn spawn(&self, host: &str, mut cmd: Command) -> anyhow::Result<Proc> {
        use std::os::unix::process::CommandExt as _;
        let ns = self.ns(host)?.to_string();
        let prefixed = cmd.get_program() == "ip"
            && cmd.get_args().take(3).map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>()
                == ["netns", "exec", ns.as_str()];
        if !prefixed {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns]).arg(cmd.get_program()).args(cmd.get_args()).stdin(Stdio::null());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => c.env(k, v),
                    None => c.env_remove(k),
                };
            }
            if let Some(d) = cmd.get_current_dir() {
                c.current_dir(d);
            }
            cmd = c;
        }
        cmd.process_group(0);
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?} in {host}"))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        self.procs.lock().map_err(|_| anyhow::anyhow!("lab process list poisoned"))?.push(pid);
        Ok(Proc { child, pgid: pid, procs: Arc::clone(&self.procs), done: None })
    }

    /// Runs `f` on a thread that has entered `host`'s network namespace: sockets it opens, and
    /// threads it starts (a tokio runtime's, say), live in that namespace.
    pub fn enter<T: Send>(&self, host: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        let path = format!("/run/netns/{}", self.ns(host)?);
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {path}"))?;
                Ok(f())
            })
            .join()
            .map_err(|p| {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                anyhow::anyhow!("thread inside {host} panicked: {msg}")
            })?
        })
    }
}

/// Removes a lab made by [`Lab::named`] and kept: kills every process inside its namespaces (by
/// pid) and deletes them. Returns the namespaces removed.
pub fn destroy(name: &str) -> anyhow::Result<Vec<String>> {
    let ours: Vec<String> = list_namespaces()?.into_iter().filter(|n| n.starts_with(&format!("{name}-"))).collect();
    for ns in &ours {
        kill_and_delete(ns);
    }
    Ok(ours)
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let pgids: Vec<i32> = self.procs.lock().map(|mut p| std::mem::take(&mut *p)).unwrap_or_default();
        for pg in pgids {
            let _ = killpg(Pid::from_raw(pg), Signal::SIGKILL);
        }
        for ns in self.created.iter().rev() {
            kill_and_delete(ns);
        }
    }
}

/// A process spawned in a lab host. Dropping it kills its process group (by pgid).
#[derive(Debug)]
pub struct Proc {
    child: Child,
    pgid: i32,
    procs: Arc<Mutex<Vec<i32>>>,
    done: Option<ExitStatus>,
}

impl Proc {
    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child, for its stdout/stderr pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// SIGKILL to the whole process group, then reaps the process.
    pub fn kill(&mut self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        if let Ok(st) = self.child.wait() {
            self.done = Some(st);
        }
    }

    /// SIGTERM to the process only (graceful stop); wait with [`Proc::wait_timeout`].
    pub fn term(&self) {
        let _ = kill(Pid::from_raw(self.pgid), Signal::SIGTERM);
    }

    /// Sends `sig` to the process only.
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pgid), sig);
    }

    /// Waits up to `d` for the process to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, d: Duration) -> Option<ExitStatus> {
        if self.done.is_some() {
            return self.done;
        }
        let deadline = Instant::now() + d;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.done = Some(st);
                return self.done;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        let _ = self.child.wait();
        if let Ok(mut p) = self.procs.lock() {
            p.retain(|x| *x != self.pgid);
        }
    }
}
