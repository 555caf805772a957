//! The glue column of issue 15's comparison: keepalived 2.2.7 on main and backup, whose
//! `notify_master` / `notify_backup` / `notify_fault` scripts (`deploy/glue/`) promote the
//! replicated volume with `rempart-repl`, mount it through nbdfuse and a loop device and start
//! slapd — and the reverse — as admins glue DRBD and keepalived together today.
//!
//! ```text
//!   keepalived (main, prio 150) ── VRRP on mgmt ── keepalived (backup, prio 100)
//!     │ MASTER: notify-master.sh <host>/glue.env      │ BACKUP/FAULT: notify-backup.sh <host>/glue.env
//!     ▼                                               ▼
//!   rempart-repl primary → nbdfuse → losetup → mount → slapd      slapd stop → umount → … → secondary
//! ```
//!
//! Each keepalived runs in its host's network namespace but in the test's mount namespace (so the
//! scripts' mounts are the ones [`crate::node::Stack`] tears down), with its own configuration,
//! pid files and log in the host's directory of the stack. Nothing in the scripts checks quorum,
//! waits for the peer, or reports failure to keepalived: that is what is being measured.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rempart_testkit::{wait, Proc};

use crate::node::{alive, signal, Failover, HostFiles, Stack, SERVERS};
use crate::steps::{has_addr, sibling_binary};
use crate::{Lab, VIP};

/// The directory of the glue scripts in this source tree.
pub fn scripts_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/glue"))
}

/// The VRRP instance's name in the glue's keepalived.conf.
pub const INSTANCE: &str = "VI_LDAP";

/// The keepalived.conf of `host` (main: MASTER 150, backup: BACKUP 100; the VIP on the
/// management LAN), with the notify scripts given `env`. At 1 s adverts and more: VRRPv2 with
/// PASS authentication (the reference deployment's file); below 1 s keepalived needs VRRPv3
/// (centisecond intervals), which has no authentication.
pub fn keepalived_conf(host: &str, env: &std::path::Path, advert: f64) -> String {
    let (state, prio) = if host == "main" { ("MASTER", 150) } else { ("BACKUP", 100) };
    let s = scripts_dir();
    let (m, b) = (s.join("notify-master.sh"), s.join("notify-backup.sh"));
    let env = env.display();
    let (version, auth) = if advert < 1.0 {
        ("  vrrp_version 3\n", String::new())
    } else {
        ("", "  authentication {\n    auth_type PASS\n    auth_pass iris-lab\n  }\n".to_string())
    };
    format!(
        "global_defs {{\n  router_id {host}\n  script_user root\n{version}}}\n\n\
         vrrp_instance {INSTANCE} {{\n  state {state}\n  interface mgmt\n  virtual_router_id 50\n  priority {prio}\n  \
         advert_int {advert}\n{auth}  \
         virtual_ipaddress {{\n    {VIP}/24\n  }}\n  \
         notify_master \"{m} {env}\"\n  notify_backup \"{b} {env}\"\n  notify_fault \"{b} {env}\"\n}}\n",
        m = m.display(),
        b = b.display(),
    )
}

/// The settings file the glue scripts source on `h` (the keys of `deploy/glue/glue.env.example`).
pub fn glue_env(h: &HostFiles, bin_dir: &std::path::Path) -> String {
    format!(
        "PATH={bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nexport PATH\n\
         REPL_RUN={run}\nNBD_URL='{url}'\nFUSE_DIR={fuse}\nNBDFUSE_PID={nfpid}\nLOOP_FILE={lf}\n\
         MOUNT_POINT={mnt}\nSLAPD_CONF={conf}\nSLAPD_URLS='{urls}'\nSLAPD_PID={spid}\nLOG={log}\n",
        bin = bin_dir.display(),
        run = h.repl_run().display(),
        url = h.nbd_url(),
        fuse = h.fuse_dir().display(),
        nfpid = h.nbdfuse_pid().display(),
        lf = h.loop_file().display(),
        mnt = h.mount_point().display(),
        conf = h.slapd_conf().display(),
        urls = h.slapd_urls(),
        spid = h.slapd_pid().display(),
        log = h.log().display(),
    )
}

/// keepalived with the glue scripts on main and backup. See the module docs.
#[derive(Debug, Default)]
pub struct Glue {
    /// VRRP advertisement interval, seconds (1 s unless [`Glue::with_advert`]).
    advert: Option<f64>,
    keepalived: Vec<(String, Proc)>,
    files: Vec<HostFiles>,
}

impl Glue {
    /// A column with nothing started.
    pub fn new() -> Glue {
        Glue::default()
    }

    /// A column whose keepalived advertises every `advert` seconds.
    pub fn with_advert(advert: f64) -> Glue {
        let mut g = Glue::default();
        g.advert = Some(advert);
        g
    }

    /// The replication link's peer timeout, as rempart-node's column at the same advert
    /// interval (0.3 s below 1 s adverts, else 1 s), so both columns detect a dead link alike.
    fn link_timeout(&self) -> Duration {
        if self.advert.is_some_and(|a| a < 1.0) {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(1)
        }
    }

    fn files(&self, host: &str) -> Option<&HostFiles> {
        self.files.iter().find(|h| h.name == host)
    }

    fn vrrp_pid_file(h: &HostFiles) -> PathBuf {
        h.dir.join("keepalived-vrrp.pid")
    }

    fn spawn(&mut self, lab: &Lab, stack: &Stack, host: &str) -> anyhow::Result<()> {
        let h = stack.host(host);
        let bin_dir = sibling_binary("rempart-repl")?.parent().map(PathBuf::from).context("binary directory")?;
        let env = h.dir.join("glue.env");
        std::fs::write(&env, glue_env(&h, &bin_dir))?;
        let conf = h.dir.join("keepalived.conf");
        std::fs::write(&conf, keepalived_conf(host, &env, self.advert.unwrap_or(1.0)))?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(h.dir.join("keepalived.log"))?;
        let mut c = crate::node::in_our_mounts(lab, host, "keepalived");
        c.args(["-P", "-n", "-l", "-D", "-f"])
            .arg(&conf)
            .arg("-p")
            .arg(h.dir.join("keepalived.pid"))
            .arg("-r")
            .arg(Self::vrrp_pid_file(&h));
        c.stdout(log.try_clone()?).stderr(log);
        let p = lab.spawn(host, c)?;
        self.keepalived.push((host.to_string(), p));
        self.files.push(h);
        Ok(())
    }

    fn keepalived_log(&self, host: &str) -> String {
        self.files(host).and_then(|h| std::fs::read_to_string(h.dir.join("keepalived.log")).ok()).unwrap_or_default()
    }
}

impl Failover for Glue {
    fn peer_timeout(&self) -> Duration {
        self.link_timeout()
    }

    fn name(&self) -> &'static str {
        "keepalived + notify scripts"
    }

    fn start(&mut self, lab: &Lab, stack: &mut Stack) -> anyhow::Result<()> {
        self.spawn(lab, stack, "main")?;
        let main = stack.host("main");
        wait::until(Duration::from_secs(20), "main serves (VIP and slapd)", || {
            has_addr(lab, "main", "mgmt", VIP) && main.slapd_running().is_some()
        })?;
        self.spawn(lab, stack, "backup")?;
        let entered = format!("({INSTANCE}) Entering BACKUP STATE");
        wait::until(Duration::from_secs(10), "backup's keepalived in BACKUP", || {
            self.keepalived_log("backup").contains(&entered)
        })?;
        // notify_backup runs on backup's start (it has nothing to stop): wait for it to finish.
        let backup_log = stack.host("backup").log();
        wait::until(Duration::from_secs(10), "backup's notify_backup done", || {
            std::fs::read_to_string(&backup_log).unwrap_or_default().contains("notify_backup/fault: done")
        })?;
        Ok(())
    }

    fn pids(&self, host: &str) -> Vec<i32> {
        let mut out = Vec::new();
        for (h, p) in &self.keepalived {
            if h == host {
                out.extend(i32::try_from(p.pid()).ok());
            }
        }
        if let Some(f) = self.files(host) {
            let child = std::fs::read_to_string(Self::vrrp_pid_file(f)).ok().and_then(|s| s.trim().parse().ok());
            out.extend(child.filter(|p| alive(*p)));
        }
        out
    }

    fn kill9(&mut self, host: &str) -> anyhow::Result<()> {
        let pids = self.pids(host);
        anyhow::ensure!(pids.len() == 2, "keepalived on {host}: expected parent and VRRP child, found {pids:?}");
        signal(&pids, "KILL");
        Ok(())
    }

    fn stop_witness(&mut self) -> anyhow::Result<bool> {
        Ok(false)
    }

    /// What admins do for maintenance: stop keepalived on `host` (SIGTERM, as `systemctl stop
    /// keepalived`): it sends a priority-0 advert and removes the VIP.
    fn switchover(&mut self, _lab: &Lab, _stack: &Stack, host: &str) -> anyhow::Result<()> {
        for (h, p) in &mut self.keepalived {
            if h == host {
                p.term();
                p.wait_timeout(Duration::from_secs(10)).context("keepalived did not stop on SIGTERM")?;
            }
        }
        Ok(())
    }

    fn describe(&self, lab: &Lab, stack: &Stack) -> String {
        let mut parts = Vec::new();
        for n in SERVERS {
            let h = stack.host(n);
            let role = stack.repl_status(n)["role"].as_str().unwrap_or("?").to_string();
            let conn = stack.repl_status(n)["connection"].as_str().unwrap_or("?").to_string();
            let vip = if has_addr(lab, n, "mgmt", VIP) { "VIP" } else { "no VIP" };
            let slapd = if h.slapd_running().is_some() { "slapd" } else { "no slapd" };
            parts.push(format!("{n}: {role}/{conn}, {vip}, {slapd}"));
        }
        parts.join("; ")
    }
}

impl Drop for Glue {
    fn drop(&mut self) {
        // Stop keepalived first (by pid), so that no notify script runs during the teardown.
        let hosts: Vec<String> = self.keepalived.iter().map(|(h, _)| h.clone()).collect();
        for h in hosts {
            signal(&self.pids(&h), "KILL");
        }
        for (_, p) in &mut self.keepalived {
            p.kill();
        }
    }
}
