//! The `rempart-node` column of issue 15's comparison: `rempart-node run` on main and backup
//! (VRRP, the replicated volume, the nbdfuse mount and slapd, all from one node.toml per host),
//! and `rempart-node witness` on the monitoring host.
//!
//! ```text
//!   monitoring: rempart-node witness :7790 (max ttl = LEASE)
//!        ▲ lease + fence                       ▲
//!   main: rempart-node run ── VRRP (mgmt) ── backup: rempart-node run
//!     r0 (repl link) ⇄ r0,  nbdfuse → loop → ext4 → slapd,  VIP added last
//! ```
//!
//! The daemons run in their host's network namespace and the test's mount namespace, like the
//! glue column, so that the mounts they make are the ones the test sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use rempart_testkit::{wait, Proc};
use serde_json::Value;

use crate::node::{alive, in_our_mounts, signal, Failover, HostFiles, Stack, LEASE, SERVERS};
use crate::steps::sibling_binary;
use crate::{host, Lab, VIP};

/// The witness's address (on the monitoring host).
pub const WITNESS: &str = "192.168.50.30:7790";

/// `rempart-node` on main and backup, the witness on monitoring.
#[derive(Debug)]
pub struct NodeColumn {
    bin: PathBuf,
    /// VRRP advertisement interval, seconds.
    pub advert: f64,
    /// The witness lease's TTL (and the witness's longest).
    pub ttl: Duration,
    /// The replication link's peer timeout (`peer-timeout-ms`): how long a frozen or
    /// unreachable peer still holds the connection. 1 s; ttl / 2 for leases under 2 s.
    pub peer_timeout: Duration,
    /// Back the volume up (`[backup]`, hourly) into a repository shared by both hosts.
    pub backup: bool,
    /// The `[backup]` schedule (`hourly`, or an interval such as `20s`).
    pub backup_schedule: String,
    /// Each node's status document as [`Failover::describe`] last saw it (the bench reads the
    /// take-over's steps from it after `run_fault` dropped the column).
    pub last_status: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Value>>>,
    /// Where the witness serves its metrics (`--metrics-listen`), if anywhere (the monitoring
    /// lab scrapes it on the monitoring host's :9106).
    pub witness_metrics: Option<String>,
    nodes: std::collections::BTreeMap<String, Proc>,
    witness: Option<Proc>,
    dir: PathBuf,
}

impl NodeColumn {
    /// A column with 1 s adverts (the reference's keepalived.conf).
    pub fn new() -> anyhow::Result<NodeColumn> {
        Ok(NodeColumn {
            bin: sibling_binary("rempart-node")?,
            advert: 1.0,
            ttl: LEASE,
            peer_timeout: Duration::from_secs(1),
            backup: false,
            backup_schedule: "hourly".into(),
            last_status: Default::default(),
            witness_metrics: None,
            nodes: Default::default(),
            witness: None,
            dir: PathBuf::new(),
        })
    }

    /// A column with `advert` seconds between VRRP adverts and a lease of `ttl`.
    pub fn with_timing(advert: f64, ttl: Duration) -> anyhow::Result<NodeColumn> {
        let mut c = NodeColumn::new()?;
        c.advert = advert;
        c.ttl = ttl;
        c.peer_timeout = (ttl / 2).min(Duration::from_secs(1));
        Ok(c)
    }

    fn run_dir(h: &HostFiles) -> PathBuf {
        h.dir.join("node-run")
    }

    /// The keepalived.conf `rempart-node` reads on `host` (main 150, backup 100, nopreempt so
    /// that a returning main does not take the service back by itself).
    pub fn keepalived_conf(&self, name: &str) -> String {
        let prio = if name == "main" { 150 } else { 100 };
        // Below 1 s, adverts need VRRPv3 (centiseconds), which has no authentication.
        let (version, auth) = if self.advert < 1.0 {
            (3, String::new())
        } else {
            (2, "  authentication {\n    auth_type PASS\n    auth_pass iris-lab\n  }\n".to_string())
        };
        format!(
            "global_defs {{\n  router_id {name}\n  vrrp_version {version}\n}}\n\
             vrrp_instance VI_LDAP {{\n  state BACKUP\n  nopreempt\n  interface mgmt\n  virtual_router_id 50\n  \
             priority {prio}\n  advert_int {adv}\n{auth}  virtual_ipaddress {{\n    {VIP}/24\n  }}\n}}\n",
            adv = self.advert,
        )
    }

    /// The node.toml of `host`.
    pub fn node_toml(&self, stack: &Stack, name: &str) -> String {
        let h = stack.host(name);
        let argv = h.slapd_argv().iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ");
        let pid = h.slapd_pid().display().to_string();
        let stop = format!(
            "p=$(cat {pid} 2>/dev/null) || exit 0; kill $p 2>/dev/null || exit 0; \
             i=0; while kill -0 $p 2>/dev/null; do i=$((i+1)); [ $i -gt 200 ] && kill -9 $p; sleep 0.05; done"
        );
        let check = format!("ldapsearch -x -H '{}' -b '' -s base -LLL >/dev/null 2>&1", h.ldapi());
        format!(
            "node = \"{name}\"\nmetrics-listen = \"{metrics}\"\n\
             [vrrp]\nkeepalived-conf = \"{kc}\"\n\
             [[resource]]\nconfig = \"{rc}\"\n\
             [[mount]]\nresource = \"r0\"\ndevice = \"/dev/null\"\nfs-type = \"ext4\"\nmount-point = \"{mp}\"\n\
             options = \"noatime\"\nmethod = \"nbdfuse\"\n\
             [[service]]\nname = \"slapd\"\nstart = \"mkdir -p {db} && {argv}\"\nstop = '''{stop}'''\ncheck = \"{check}\"\ntimeout = 10.0\n\
             {backup}\
             [witness]\naddress = \"{WITNESS}\"\nsecret-file = \"{sec}\"\nttl = {ttl}\n\
             [timeouts]\nstep-down = {step_down:.3}\nfault-hold = 3.0\n",
            metrics = self.metrics_addr(name),
            backup = if self.backup {
                format!(
                    "[backup]\nborgmatic = \"{}\"\nschedule = \"{}\"\n",
                    h.dir.join("borgmatic.yaml").display(),
                    self.backup_schedule
                )
            } else {
                String::new()
            },
            kc = h.dir.join("keepalived-node.conf").display(),
            rc = h.repl_conf().display(),
            mp = h.mount_point().display(),
            db = h.db_dir().display(),
            check = check.replace('"', "\\\""),
            sec = stack.dir.path().join("witness.secret").display(),
            ttl = self.ttl.as_secs_f64(),
            step_down = step_down_for(self.ttl).as_secs_f64(),
        )
    }

    /// Where `name`'s node serves /metrics (its management address, port 9107: 9100 is node_exporter's).
    pub fn metrics_addr(&self, name: &str) -> String {
        format!("{}:9107", host(name).map_or("127.0.0.1", |h| h.mgmt))
    }

    /// One scrape of `name`'s /metrics, from inside its namespace.
    pub fn scrape(&self, lab: &Lab, name: &str) -> anyhow::Result<String> {
        use std::io::{Read as _, Write as _};
        let addr: std::net::SocketAddr = self.metrics_addr(name).parse()?;
        lab.enter(name, || -> anyhow::Result<String> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })?
    }

    /// The repository the hosts back their volume up into (with [`NodeColumn::backup`]).
    pub fn repository(stack: &Stack) -> PathBuf {
        stack.dir.path().join("repo")
    }

    /// The borgmatic file of `name`: its mount point into [`NodeColumn::repository`].
    pub fn borgmatic(stack: &Stack, name: &str) -> String {
        let h = stack.host(name);
        format!(
            "location:\n    source_directories:\n        - {}\n    repositories:\n        - path: {}\n          label: shared\n\
             storage:\n    encryption_passphrase: lab backup passphrase\n    archive_name_format: '{name}-{{now:%Y-%m-%dT%H:%M:%S.%f}}'\n\
             retention:\n    keep_hourly: 24\n",
            h.mount_point().display(),
            Self::repository(stack).display()
        )
    }

    /// Starts `rempart-node run` on `name` (after a kill, too).
    pub fn start_node(&mut self, lab: &Lab, stack: &Stack, name: &str) -> anyhow::Result<()> {
        let h = stack.host(name);
        let mut c = in_our_mounts(lab, name, &self.bin.to_string_lossy());
        c.args(["run", "-c"]).arg(h.dir.join("node.toml")).arg("--run-dir").arg(Self::run_dir(&h));
        c.arg("--state-dir").arg(h.dir.join("node-state"));
        c.env("RUST_LOG", "info,node=debug").stdout(Stdio::null());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(h.dir.join("node.log"))?;
        match std::env::var_os("REMPART_NODE_LOG_DIR") {
            // Kept after the stack's directory is removed (for looking into a failed run).
            Some(d) => c.stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(PathBuf::from(d).join(format!("{name}.log")))?,
            ),
            None => c.stderr(log),
        };
        self.nodes.insert(name.to_string(), lab.spawn(name, c)?);
        let sock = Self::run_dir(&h).join("node.sock");
        wait::until(Duration::from_secs(20), "rempart-node control socket", || self.status_of(stack, name).is_some())
            .with_context(|| format!("{} never answered; log:\n{}", sock.display(), tail(&h.dir.join("node.log"))))?;
        Ok(())
    }

    /// The `--run-dir` of `name`'s `rempart-node` (its control socket), for commands run as an
    /// operator would run them (`rempart-node status --run-dir ...`).
    #[must_use]
    pub fn run_dir_of(stack: &Stack, name: &str) -> PathBuf {
        Self::run_dir(&stack.host(name))
    }

    /// The `rempart-node` binary the column runs.
    #[must_use]
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `rempart-node status --json` of `name`, if it answers.
    pub fn status_of(&self, stack: &Stack, name: &str) -> Option<Value> {
        let out = Command::new(&self.bin)
            .args(["status", "--json", "--run-dir"])
            .arg(Self::run_dir(&stack.host(name)))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A control command (`switchover`, `maintenance on`...) on `name`: (exit 0, output).
    pub fn ctl(&self, stack: &Stack, name: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--run-dir")
            .arg(Self::run_dir(&stack.host(name)))
            .stdin(Stdio::null())
            .output()?;
        Ok((
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        ))
    }

    /// Waits until `name` reports `phase`.
    pub fn wait_phase(&self, stack: &Stack, name: &str, phase: &str, limit: Duration) -> anyhow::Result<Duration> {
        wait::until(limit, &format!("{name} {phase}"), || {
            self.status_of(stack, name).is_some_and(|s| s["phase"] == phase)
        })
        .with_context(|| {
            format!(
                "{name} never reached {phase}: {}\nlog:\n{}",
                self.status_of(stack, name).map(|s| s.to_string()).unwrap_or_default(),
                tail(&stack.host(name).dir.join("node.log"))
            )
        })
    }

    /// Stops every daemon of the column gracefully (the serving node takes the service down in
    /// order), then kills what is left.
    pub fn stop(&mut self) {
        for (_, p) in self.nodes.iter_mut() {
            p.term();
        }
        for (_, mut p) in std::mem::take(&mut self.nodes) {
            if p.wait_timeout(Duration::from_secs(20)).is_none() {
                p.kill();
            }
        }
        if let Some(mut w) = self.witness.take() {
            w.kill();
        }
    }

    /// Starts the witness on the monitoring host with `secret_file` (after killing the one that
    /// runs, if any): the column's own `witness.secret`, or another one so that the nodes cannot
    /// authenticate (a witness that answers but that no node can use).
    pub fn start_witness(&mut self, lab: &Lab, secret_file: &std::path::Path) -> anyhow::Result<()> {
        if let Some(mut w) = self.witness.take() {
            w.kill();
        }
        let mut c = lab.cmd("monitoring", &self.bin.to_string_lossy());
        c.args(["witness", "--listen", WITNESS, "--secret-file"]).arg(secret_file);
        c.args(["--max-ttl", &self.ttl.as_secs_f64().to_string(), "--run-dir"]).arg(self.dir.join("witness-run"));
        if let Some(m) = &self.witness_metrics {
            c.args(["--metrics-listen", m]);
        }
        c.env("RUST_LOG", "info").stdout(Stdio::null());
        c.stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("witness.log"))?);
        self.witness = Some(lab.spawn("monitoring", c)?);
        Ok(())
    }

    /// The logs of the column, for failure messages.
    pub fn logs(&self, stack: &Stack) -> String {
        let mut s = String::new();
        for n in SERVERS {
            s.push_str(&format!("--- {n}/node.log\n{}\n", tail(&stack.host(n).dir.join("node.log"))));
        }
        s.push_str(&format!("--- witness.log\n{}\n", tail(&self.dir.join("witness.log"))));
        s
    }
}

/// The step-down budget `rempart-node check-config` accepts for a lease of `ttl` (the node
/// crate's `step_down_budget`: ttl − margin − renewal interval − request timeout), less 10 %.
fn step_down_for(ttl: Duration) -> Duration {
    let margin = (ttl / 10).max(Duration::from_millis(50)).min(ttl / 2);
    let request = (ttl / 6).max(Duration::from_millis(100));
    ttl.saturating_sub(margin).saturating_sub(ttl / 3).saturating_sub(request).mul_f64(0.9)
}

fn tail(p: &std::path::Path) -> String {
    let l = std::fs::read_to_string(p).unwrap_or_default();
    let v: Vec<&str> = l.lines().collect();
    v[v.len().saturating_sub(25)..].join("\n")
}

/// The pids of `pid`'s children (nbdfuse and the services' shells), from /proc.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return out };
    for t in tasks.flatten() {
        if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
        }
    }
    out
}

impl Failover for NodeColumn {
    fn peer_timeout(&self) -> Duration {
        self.peer_timeout
    }

    fn name(&self) -> &'static str {
        "rempart-node"
    }

    fn start(&mut self, lab: &Lab, stack: &mut Stack) -> anyhow::Result<()> {
        // rempart-node embeds the replication: the stack's own daemons stop first.
        for n in SERVERS {
            stack.stop_repl(n);
        }
        self.dir = stack.dir.path().to_path_buf();
        std::fs::write(self.dir.join("witness.secret"), "iris lab witness secret\n")?;
        if self.backup {
            let out = Command::new(sibling_binary("rempart-backup")?)
                .args(["init", "-e", "repokey"])
                .arg(Self::repository(stack))
                .env("REMPART_PASSPHRASE", "lab backup passphrase")
                .output()?;
            ensure!(out.status.success(), "rempart-backup init: {}", String::from_utf8_lossy(&out.stderr));
        }
        for n in SERVERS {
            let h = stack.host(n);
            if self.backup {
                std::fs::write(h.dir.join("borgmatic.yaml"), Self::borgmatic(stack, n))?;
            }
            std::fs::write(h.dir.join("keepalived-node.conf"), self.keepalived_conf(n))?;
            std::fs::write(h.dir.join("node.toml"), self.node_toml(stack, n))?;
            let out = Command::new(&self.bin).args(["check-config", "-c"]).arg(h.dir.join("node.toml")).output()?;
            ensure!(out.status.success(), "check-config {n}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let secret = self.dir.join("witness.secret");
        self.start_witness(lab, &secret)?;
        self.start_node(lab, stack, "main")?;
        self.start_node(lab, stack, "backup")?;
        // The witness grants nothing during its start-up grace (one max ttl); main then takes
        // the service through the peer path (both connected, main Master by priority).
        self.wait_phase(stack, "main", "serving", Duration::from_secs(30)).with_context(|| self.logs(stack))?;
        Ok(())
    }

    fn pids(&self, host: &str) -> Vec<i32> {
        let Some(p) = self.nodes.get(host) else { return Vec::new() };
        let pid = i32::try_from(p.pid()).unwrap_or(0);
        let mut v: Vec<i32> = vec![pid];
        v.extend(children(pid).into_iter().filter(|c| alive(*c)));
        v
    }

    fn kill9(&mut self, host: &str) -> anyhow::Result<()> {
        let p = self.nodes.get(host).context("no rempart-node there")?;
        signal(&[i32::try_from(p.pid())?], "KILL");
        Ok(())
    }

    fn stop_witness(&mut self) -> anyhow::Result<bool> {
        if let Some(mut w) = self.witness.take() {
            w.kill();
        }
        Ok(true)
    }

    fn switchover(&mut self, _lab: &Lab, stack: &Stack, host: &str) -> anyhow::Result<()> {
        let (ok, text) = self.ctl(stack, host, &["switchover"])?;
        ensure!(ok, "switchover on {host}: {text}");
        Ok(())
    }

    fn describe(&self, _lab: &Lab, stack: &Stack) -> String {
        SERVERS
            .iter()
            .map(|n| match self.status_of(stack, n) {
                Some(s) => {
                    if let Ok(mut m) = self.last_status.lock() {
                        m.insert((*n).to_string(), s.clone());
                    }
                    format!(
                        "{n}: {} {} {}",
                        s["phase"].as_str().unwrap_or("?"),
                        s["vrrp_state"].as_str().unwrap_or("?"),
                        s["resources"][0]["role"].as_str().unwrap_or("?")
                    )
                }
                None => format!("{n}: not answering"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Drop for NodeColumn {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The drill's node step: `rempart-node` on main and backup, the witness on monitoring, slapd
/// on the replicated volume, the client writing entries through the VIP. main's daemon is
/// killed (kill -9); the step reports the RTO the client saw (fault → its first write
/// acknowledged through the VIP again), the acknowledged entries lost (must be 0) and each step
/// of backup's take-over with its duration. Then main's daemon comes back (as Secondary), and
/// backup — now the primary — is isolated: the step shows that no second primary acknowledged
/// writes, and that exactly one node serves once the network is back. Its checks (report lines
/// of their own): the directory — base `dc=iris,dc=local` and its `ou`s — answering the client
/// through the VIP before the fault (main serving) and after it (backup serving), and the
/// client-visible RTO against the reference's 6 s.
#[derive(Debug, Default)]
pub struct NodeDrill;

impl crate::Step for NodeDrill {
    fn name(&self) -> &'static str {
        "node-failover"
    }

    fn run(&mut self, lab: &mut Lab) -> anyhow::Result<String> {
        use crate::node::{two_writers, Endpoint, Traffic};
        let mut stack = Stack::new(lab)?;
        stack.prepare(lab).context("preparing the volume")?;
        let mut col = NodeColumn::new()?;
        col.start(lab, &mut stack)?;
        let traffic = Traffic::start(lab, &stack);
        traffic.wait_client_acks(5, Duration::from_secs(15)).with_context(|| col.logs(&stack))?;
        let dir_main = directory_through_vip(lab);
        let fault = traffic.t0.elapsed();
        col.kill9("main")?;
        col.wait_phase(&stack, "backup", "serving", Duration::from_secs(30))?;
        wait::until(Duration::from_secs(15), "a client write acknowledged after the fault", || {
            traffic.client_acks().iter().any(|a| a.sent > fault)
        })?;
        let rto = traffic.client_acks().iter().find(|a| a.sent > fault).map(|a| a.at - fault).unwrap_or_default();
        let dir_backup = directory_through_vip(lab);
        let st = col.status_of(&stack, "backup").context("backup's status")?;
        let steps: Vec<String> = st["last_transition"]["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{} {:.3} s", s["step"].as_str().unwrap_or("?"), s["duration_s"].as_f64().unwrap_or(0.0)))
            .collect();
        // Main's daemon back: it cleans up what the killed one left, and becomes Secondary.
        col.start_node(lab, &stack, "main")?;
        col.wait_phase(&stack, "main", "idle", Duration::from_secs(30))?;
        // What the killed daemon left on main is gone: the VIP (else two hosts answer ARP for
        // it) and slapd on the dead volume.
        ensure!(!crate::steps::has_addr(lab, "main", "mgmt", VIP), "main still has the VIP after its daemon restarted");
        ensure!(stack.host("main").slapd_running().is_none(), "main's slapd still runs after its daemon restarted");
        wait::until(Duration::from_secs(30), "main's disk UpToDate again", || {
            col.status_of(&stack, "main").is_some_and(|s| {
                s["resources"][0]["disk"] == "UpToDate" && s["resources"][0]["replication"] == "Established"
            })
        })?;
        // The partition: backup (the primary now) cut off from everything.
        let before_cut = traffic.client_acks().len();
        lab.isolate("backup")?;
        col.wait_phase(&stack, "main", "serving", Duration::from_secs(30))?;
        wait::until(Duration::from_secs(15), "client writes through main", || {
            traffic.client_acks().len() > before_cut + 3
        })?;
        lab.rejoin("backup")?;
        wait::until(Duration::from_secs(30), "backup back as Secondary", || {
            col.status_of(&stack, "backup")
                .is_some_and(|s| s["phase"] == "idle" && s["resources"][0]["role"] == "Secondary")
        })?;
        let (client, probes) = traffic.finish();
        let present = Endpoint::Vip.list(lab).context("the VIP does not answer")?;
        let lost: Vec<&str> = client.iter().filter(|a| !present.contains(&a.cn)).map(|a| a.cn.as_str()).collect();
        let empty = Vec::new();
        let two = two_writers(
            probes.get("main").unwrap_or(&empty),
            probes.get("backup").unwrap_or(&empty),
            Duration::from_millis(300),
        );
        let serving =
            SERVERS.iter().filter(|n| col.status_of(&stack, n).is_some_and(|s| s["phase"] == "serving")).count();
        drop(col);
        for n in ["backup", "main"] {
            stack.teardown(n);
        }
        ensure!(lost.is_empty(), "acknowledged entries lost: {lost:?}");
        ensure!(two.is_empty(), "two primaries acknowledged writes: {two:?}");
        ensure!(serving == 1, "{serving} nodes serve after the partition healed");
        use crate::node::BASE_DN;
        use crate::report::{finish, Check};
        let limit = crate::steps::FAILOVER_LIMIT;
        let expected_dns = [BASE_DN.to_string(), format!("ou=groups,{BASE_DN}"), format!("ou=people,{BASE_DN}")];
        let directory = |name: &str, who: &str, r: &anyhow::Result<Vec<String>>| {
            let (measured, pass) = match r {
                Ok(dns) => (format!("{} through ldap://{VIP}/", dns.join("; ")), *dns == expected_dns),
                Err(e) => (format!("{e:#}"), false),
            };
            Check::new(
                name,
                format!(
                    "ldapsearch from the client through ldap://{VIP}/ ({who} serving) returns {BASE_DN} and its \
                     ous (groups, people)"
                ),
                measured,
                pass,
            )
        };
        let checks = [
            directory("directory through the VIP", "main", &dir_main),
            directory("directory through the VIP after failover", "backup", &dir_backup),
            Check::new(
                "client-visible RTO (rempart-node)",
                format!(
                    "kill -9 of main's rempart-node: the client's first LDAP write acknowledged through the VIP < {} s \
                     after the fault",
                    limit.as_secs_f64()
                ),
                format!("{:.2} s", rto.as_secs_f64()),
                rto < limit,
            ),
        ];
        finish(
            &format!(
                "kill -9 of main's rempart-node: client RTO {:.2} s, {} acknowledged entries, 0 lost; backup's steps: {}; \
                 backup isolated: no second primary, 1 node serving after the heal",
                rto.as_secs_f64(),
                client.len(),
                steps.join(", ")
            ),
            &checks,
        )
    }
}

/// The directory as the client sees it through the VIP: the DNs of the base and its
/// organisational units (`ldapsearch -x -H ldap://VIP/ -b dc=iris,dc=local`), sorted.
pub fn directory_through_vip(lab: &Lab) -> anyhow::Result<Vec<String>> {
    use crate::node::{run_limited, BASE_DN};
    let mut c = lab.cmd("client", "ldapsearch");
    c.args(["-x", "-LLL", "-o", "nettimeout=2", "-o", "ldif-wrap=no", "-H", &format!("ldap://{VIP}/"), "-b", BASE_DN]);
    c.args(["-s", "sub", "(|(objectClass=organization)(objectClass=organizationalUnit))", "dn"]);
    match run_limited(c, b"", Duration::from_secs(5))? {
        Some((st, out)) if st.success() => {
            let mut dns: Vec<String> = out.lines().filter_map(|l| l.strip_prefix("dn: ")).map(str::to_string).collect();
            dns.sort();
            Ok(dns)
        }
        Some((st, out)) => anyhow::bail!("ldapsearch through the VIP: {st}: {}", out.trim()),
        None => anyhow::bail!("ldapsearch through the VIP: no answer within 5 s"),
    }
}
