//! The lab's monitoring host, running the configuration of `deploy/` on Debian's own servers.
//!
//! ```text
//!   main / backup                                    monitoring
//!   rempart-vrrp  :9650  (VRRP, the drill's conf)    prometheus :9090  (deploy/prometheus, faster intervals)
//!   rempart-repl  :9810  (r0, Secondary, sparse)  ◄──  │ rules/*.yml
//!   node_exporter :9100  (textfile dir per host)       ▼
//!                                                    prometheus-alertmanager :9093 (deploy/alertmanager)
//!                                                      │ webhook
//!                                                      ▼
//!                                                    rempart-lab webhook 127.0.0.1:9095 → notifications.jsonl
//!                                                    rempart-node witness :7790, metrics :9106
//! ```
//!
//! Everything lives in one directory (configs, TSDB, Alertmanager's state, the daemons' files,
//! the webhook log) and every process is spawned inside its host's namespace through
//! [`Lab::spawn`], so dropping the [`Stack`] (or the lab) kills them by process group, on
//! success and on failure alike. `rempart-lab up` leaves them running ([`Stack::keep`]);
//! `rempart-lab down` kills every pid inside the lab's namespaces and removes the directory.
//!
//! That is the standalone stack ([`Daemons::Standalone`], `rempart-lab up`, the drill's alert
//! step, `monitoring_lab`). With [`Daemons::Node`] the stack starts only node_exporter and the
//! monitoring host; `rempart-node run` on main and backup (:9107) and its witness (:9106) are the
//! caller's (`monitoring_node` runs them with [`crate::node_column::NodeColumn`]).
//!
//! The configuration files are the ones in `deploy/`, changed only where the lab differs from a
//! deployment (and, for the standalone daemons, their commented scrape jobs in place of the
//! `rempart-node` job): the scrape and evaluation intervals (seconds instead of 15 s, so a test sees an
//! alert quickly) and, for Alertmanager, the grouping waits. Addresses are the lab's own, which
//! are the reference deployment's.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use rempart_testkit::netns::Proc;

use crate::monitoring::{deploy_dir, DocCommand};
use crate::steps::{sibling_binary, vrrp_drill_conf};
use crate::{host, Lab, Step};

/// Prometheus's port on the monitoring host.
pub const PROMETHEUS_PORT: u16 = 9090;
/// Alertmanager's port on the monitoring host.
pub const ALERTMANAGER_PORT: u16 = 9093;
/// The webhook receiver's port (on the monitoring host's loopback, as in `deploy/alertmanager`).
pub const WEBHOOK_PORT: u16 = 9095;
/// The quorum witness's port on the monitoring host (`docs/examples/witness.toml`).
pub const WITNESS_PORT: u16 = 7790;
/// The witness's metrics port (`deploy/prometheus/prometheus.yml`).
pub const WITNESS_METRICS_PORT: u16 = 9106;

/// How the stack runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The directory for everything (created; removed when the stack is dropped, unless kept).
    pub dir: PathBuf,
    /// Prometheus's scrape and rule evaluation interval.
    pub interval: Duration,
}

/// The monitoring host and the exporters it scrapes. See the module docs.
#[derive(Debug)]
pub struct Stack {
    dir: PathBuf,
    procs: Vec<(String, &'static str, Proc)>,
    /// How each process was started (host, what, program, arguments), for [`Stack::restart`].
    specs: Vec<(String, &'static str, String, Vec<String>)>,
    backup: Option<Backups>,
    keep: bool,
}

/// The runner's setup of [`Stack::start_backups`].
#[derive(Debug)]
struct Backups {
    bin: PathBuf,
    dir: PathBuf,
    rsh: String,
}

fn d_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn mgmt(h: &str) -> anyhow::Result<&'static str> {
    Ok(host(h).with_context(|| format!("no host {h}"))?.mgmt)
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Which daemons serve the VRRP and replication metrics on main and backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemons {
    /// The standalone `rempart-vrrp` and `rempart-repl`, started by the [`Stack`] itself; the
    /// scrape configuration's commented standalone jobs replace its `rempart-node` job.
    Standalone,
    /// `rempart-node` (and its witness), started by the caller (e.g.
    /// [`crate::node_column::NodeColumn`] with `witness_metrics` on :9106); the stack starts
    /// only node_exporter and the monitoring host, and scrapes `deploy/`'s configuration as it is.
    Node,
}

/// The scrape configuration for `daemons`: `deploy/`'s as it is for [`Daemons::Node`]; for
/// [`Daemons::Standalone`], without the `rempart-node` job (its block, up to the next blank
/// line) and with the lines between `# BEGIN standalone daemons` and `# END standalone daemons`
/// uncommented.
fn scrape_jobs_for(text: &str, daemons: Daemons) -> anyhow::Result<String> {
    if daemons == Daemons::Node {
        return Ok(text.to_string());
    }
    let (begin, end) = ("  # BEGIN standalone daemons", "  # END standalone daemons");
    anyhow::ensure!(
        text.contains("  - job_name: rempart-node\n") && text.contains(begin) && text.contains(end),
        "deploy/prometheus/prometheus.yml: the rempart-node job or the standalone daemons' markers not found"
    );
    let mut out = String::new();
    let (mut in_node, mut in_standalone) = (false, false);
    for line in text.lines() {
        if line == "  - job_name: rempart-node" {
            in_node = true;
        } else if in_node && line.trim().is_empty() {
            in_node = false;
        } else if line == begin {
            in_standalone = true;
            continue;
        } else if line == end {
            in_standalone = false;
            continue;
        }
        if in_node {
            continue;
        }
        if in_standalone {
            let l =
                line.strip_prefix("  #").with_context(|| format!("not a comment in the standalone jobs: {line}"))?;
            out.push_str(&format!("  {}\n", l.strip_prefix(' ').unwrap_or(l)).replace("  \n", "\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// `deploy/prometheus/prometheus.yml` with the lab's intervals, the scrape jobs of `daemons`
/// ([`scrape_jobs_for`]) and the rules copied beside it.
fn prometheus_config(dir: &Path, interval: Duration, daemons: Daemons) -> anyhow::Result<PathBuf> {
    let src = deploy_dir().join("prometheus");
    let text =
        std::fs::read_to_string(src.join("prometheus.yml")).context("reading deploy/prometheus/prometheus.yml")?;
    let want = ["  scrape_interval: 15s\n", "  evaluation_interval: 15s\n"];
    anyhow::ensure!(want.iter().all(|w| text.contains(w)), "deploy/prometheus/prometheus.yml: intervals not found");
    let text = text
        .replace(want[0], &format!("  scrape_interval: {}\n  scrape_timeout: {}\n", secs(interval), secs(interval)))
        .replace(want[1], &format!("  evaluation_interval: {}\n", secs(interval)));
    let text = scrape_jobs_for(&text, daemons)?;
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules)?;
    for e in std::fs::read_dir(src.join("rules"))? {
        let p = e?.path();
        if let Some(name) = p.file_name() {
            std::fs::copy(&p, rules.join(name))?;
        }
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The drill's keepalived.conf plus a track script `chk_service` (weight -60) that fails while
/// the file `check-fail-<host>` exists in `dir` ([`Stack::fail_check`]): the VRRP check and
/// priority alerts then have real series, and a fault to fire on.
fn vrrp_conf_with_check(h: &str, prio: u8, dir: &Path) -> anyhow::Result<String> {
    let conf = vrrp_drill_conf(h, prio);
    let flag = dir.join(format!("check-fail-{h}"));
    let script = format!(
        "vrrp_script chk_service {{\n  script \"/usr/bin/test ! -e {}\"\n  interval 1\n  weight -60\n}}\n",
        flag.display()
    );
    let at = conf.find("vrrp_instance").context("the drill's keepalived.conf has no vrrp_instance")?;
    let track = "  track_script {\n    chk_service\n  }\n  virtual_ipaddress";
    anyhow::ensure!(conf.contains("  virtual_ipaddress"), "the drill's keepalived.conf has no virtual_ipaddress");
    Ok(format!("{}{script}{}", &conf[..at], conf[at..].replacen("  virtual_ipaddress", track, 1)))
}

/// `deploy/alertmanager/alertmanager.yml` with short grouping waits (a notification within a
/// second of the alert, not after 10–30 s).
fn alertmanager_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(deploy_dir().join("alertmanager/alertmanager.yml"))
        .context("reading deploy/alertmanager/alertmanager.yml")?;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        let indent = &line[..line.len() - t.len()];
        if t.starts_with("group_wait:") {
            out.push_str(&format!("{indent}group_wait: 1s\n"));
        } else if t.starts_with("group_interval:") {
            out.push_str(&format!("{indent}group_interval: 2s\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    let path = dir.join("alertmanager.yml");
    std::fs::write(&path, out)?;
    Ok(path)
}

impl Stack {
    /// Starts, in `lab` (built by [`crate::build`]): rempart-vrrp and rempart-repl (Secondary) on
    /// main and backup, serving metrics on their management address; node_exporter there;
    /// Prometheus, Alertmanager and the webhook receiver on monitoring. Returns once Prometheus
    /// and Alertmanager answer `/-/ready` and the webhook listens.
    pub fn start(lab: &Lab, opts: &Options) -> anyhow::Result<Stack> {
        Self::start_with(lab, opts, Daemons::Standalone)
    }

    /// [`Stack::start`] for `daemons`: with [`Daemons::Node`], only node_exporter on main and
    /// backup and the monitoring host (Prometheus scraping `rempart-node` on :9107 and the
    /// witness on :9106, which the caller runs).
    pub fn start_with(lab: &Lab, opts: &Options, daemons: Daemons) -> anyhow::Result<Stack> {
        std::fs::create_dir_all(&opts.dir).with_context(|| format!("creating {}", opts.dir.display()))?;
        let mut s = Stack { dir: opts.dir.clone(), procs: Vec::new(), specs: Vec::new(), backup: None, keep: false };
        s.start_inner(lab, opts, daemons)?;
        Ok(s)
    }

    fn spawn(&mut self, lab: &Lab, host: &str, what: &'static str, args: &[String], prog: &str) -> anyhow::Result<()> {
        let p = self.spawn_proc(lab, host, what, args, prog)?;
        self.procs.push((host.to_string(), what, p));
        self.specs.push((host.to_string(), what, prog.to_string(), args.to_vec()));
        Ok(())
    }

    fn spawn_proc(&self, lab: &Lab, host: &str, what: &str, args: &[String], prog: &str) -> anyhow::Result<Proc> {
        // Appended: a restarted process keeps its first run's log.
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{what}-{host}.log")))?;
        let mut c = lab.cmd(host, prog);
        c.args(args).stdout(Stdio::null()).stderr(log);
        lab.spawn(host, c).with_context(|| format!("starting {what} on {host}"))
    }

    /// Starts `what` on `host` again, as it was started first (after [`Stack::kill`]: the
    /// recovery after a fault). Kills it first if it still runs.
    pub fn restart(&mut self, lab: &Lab, host: &str, what: &str) -> anyhow::Result<()> {
        let i = self
            .procs
            .iter()
            .position(|(h, w, _)| h == host && *w == what)
            .with_context(|| format!("no {what} on {host} in the stack"))?;
        let (_, _, prog, args) = self.specs[i].clone();
        self.procs[i].2.kill();
        let p = self.spawn_proc(lab, host, what, &args, &prog)?;
        self.procs[i].2 = p;
        Ok(())
    }

    fn start_inner(&mut self, lab: &Lab, opts: &Options, daemons: Daemons) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
        if daemons == Daemons::Standalone {
            self.start_standalone(lab)?;
        }
        for h in ["main", "backup"] {
            let ip = mgmt(h)?;
            let textfile = dir.join(format!("textfile-{h}"));
            std::fs::create_dir_all(&textfile)?;
            let args = vec![
                format!("--web.listen-address={ip}:9100"),
                format!("--collector.textfile.directory={}", textfile.display()),
            ];
            self.spawn(lab, h, "node-exporter", &args, "prometheus-node-exporter")?;
        }

        // The monitoring host.
        let mon = mgmt("monitoring")?;
        let webhook_log = d("notifications.jsonl");
        let lab_bin = sibling_binary("rempart-lab")?;
        let args =
            vec!["webhook".into(), "--listen".into(), format!("127.0.0.1:{WEBHOOK_PORT}"), "--log".into(), webhook_log];
        self.spawn(lab, "monitoring", "webhook", &args, &lab_bin.to_string_lossy())?;

        if daemons == Daemons::Standalone {
            // The quorum witness (no node asks it for a lease: its own metrics are scraped).
            let node_bin = sibling_binary("rempart-node")?;
            std::fs::write(dir.join("witness.secret"), "lab witness secret\n")?;
            let args = vec![
                "witness".into(),
                "--listen".into(),
                format!("{mon}:{WITNESS_PORT}"),
                "--secret-file".into(),
                d("witness.secret"),
                "--metrics-listen".into(),
                format!("{mon}:{WITNESS_METRICS_PORT}"),
                "--run-dir".into(),
                d("witness-run"),
            ];
            self.spawn(lab, "monitoring", "witness", &args, &node_bin.to_string_lossy())?;
        }
        self.start_monitoring_host(lab, opts, daemons)
    }

    /// rempart-vrrp and rempart-repl (Secondary, r0 on sparse files) on main and backup.
    fn start_standalone(&mut self, lab: &Lab) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
        let vrrp = sibling_binary("rempart-vrrp")?;
        let repl = sibling_binary("rempart-repl")?;
        std::fs::write(dir.join("r0.secret"), "lab monitoring secret\n")?;
        let repl_conf = format!(
            "[resource]\nname = \"r0\"\nprotocol = \"C\"\nsecret-file = \"r0.secret\"\npeer-timeout-ms = 1000\n\n\
             [[node]]\nname = \"main\"\naddress = \"{}:7789\"\ndisk = \"r0-main.img\"\nnbd = \"127.0.0.1:10809\"\n\n\
             [[node]]\nname = \"backup\"\naddress = \"{}:7789\"\ndisk = \"r0-backup.img\"\nnbd = \"127.0.0.1:10809\"\n",
            host("main").and_then(|h| h.repl).context("main repl")?,
            host("backup").and_then(|h| h.repl).context("backup repl")?,
        );
        std::fs::write(dir.join("r0.toml"), repl_conf)?;
        for (h, prio) in [("main", 150u8), ("backup", 100u8)] {
            let ip = mgmt(h)?;
            std::fs::write(dir.join(format!("vrrp-{h}.conf")), vrrp_conf_with_check(h, prio, &dir)?)?;
            let args = ["--run-dir", &d(&format!("vrrp-run-{h}")), "run", "-f", &d(&format!("vrrp-{h}.conf"))]
                .map(String::from)
                .into_iter()
                .chain(["--metrics-listen".into(), format!("{ip}:9650")])
                .collect::<Vec<_>>();
            self.spawn(lab, h, "rempart-vrrp", &args, &vrrp.to_string_lossy())?;

            let img = std::fs::File::create(dir.join(format!("r0-{h}.img")))?;
            img.set_len(64 << 20)?;
            let out = lab
                .cmd(h, &repl.to_string_lossy())
                .args(["create-md", "-c", &d("r0.toml"), "--node", h])
                .output()
                .context("rempart-repl create-md")?;
            if !out.status.success() {
                bail!("rempart-repl create-md on {h}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            let args = ["run", "-c", &d("r0.toml"), "--node", h, "--run-dir", &d(&format!("repl-run-{h}"))]
                .map(String::from)
                .into_iter()
                .chain(["--metrics-listen".into(), format!("{ip}:9810")])
                .collect::<Vec<_>>();
            self.spawn(lab, h, "rempart-repl", &args, &repl.to_string_lossy())?;
        }
        Ok(())
    }

    /// Alertmanager and Prometheus on monitoring; waits until they and the webhook answer.
    fn start_monitoring_host(&mut self, lab: &Lab, opts: &Options, daemons: Daemons) -> anyhow::Result<()> {
        let dir = self.dir.clone();
        let d = |p: &str| dir.join(p).to_string_lossy().into_owned();
        let mon = mgmt("monitoring")?;
        let am_conf = alertmanager_config(&dir)?;
        let args = vec![
            format!("--config.file={}", am_conf.display()),
            format!("--storage.path={}", d("alertmanager-data")),
            format!("--web.listen-address={mon}:{ALERTMANAGER_PORT}"),
            "--cluster.listen-address=".into(),
        ];
        self.spawn(lab, "monitoring", "alertmanager", &args, "prometheus-alertmanager")?;

        let prom_conf = prometheus_config(&dir, opts.interval, daemons)?;
        let args = vec![
            format!("--config.file={}", prom_conf.display()),
            format!("--storage.tsdb.path={}", d("prometheus-data")),
            format!("--web.listen-address=0.0.0.0:{PROMETHEUS_PORT}"),
        ];
        self.spawn(lab, "monitoring", "prometheus", &args, "prometheus")?;

        let ready = |port: u16| {
            let addr = SocketAddr::new(mon.parse().expect("constant address"), port);
            move |lab: &Lab| http_get(lab, "monitoring", addr, "/-/ready").is_ok_and(|(code, _)| code == 200)
        };
        for (port, what) in [(PROMETHEUS_PORT, "Prometheus"), (ALERTMANAGER_PORT, "Alertmanager")] {
            let ok = ready(port);
            rempart_testkit::wait::until(Duration::from_secs(30), &format!("{what} ready"), || {
                self.check_running().is_ok() && ok(lab)
            })
            .with_context(|| self.logs_tail())?;
        }
        let hook = SocketAddr::from(([127, 0, 0, 1], WEBHOOK_PORT));
        rempart_testkit::wait::until(Duration::from_secs(10), "webhook receiver listening", || {
            lab.enter("monitoring", || TcpStream::connect(hook).is_ok()).unwrap_or(false)
        })?;
        self.check_running()
    }

    /// Fails naming the first process that exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for (h, what, p) in &mut self.procs {
            if let Some(st) = p.wait_timeout(Duration::ZERO) {
                bail!("{what} on {h} exited ({st}); see {}", self.dir.join(format!("{what}-{h}.log")).display());
            }
        }
        Ok(())
    }

    fn logs_tail(&self) -> String {
        let mut s = String::new();
        for (h, what, _) in &self.procs {
            let text = std::fs::read_to_string(self.dir.join(format!("{what}-{h}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            s.push_str(&format!("\n{what} on {h}: {}", tail.into_iter().rev().collect::<Vec<_>>().join(" | ")));
        }
        s
    }

    /// Kills `what` (e.g. `rempart-vrrp`, `witness`) on `host` with SIGKILL, as a fault to alert on.
    pub fn kill(&mut self, host: &str, what: &str) -> anyhow::Result<()> {
        let (_, _, p) = self
            .procs
            .iter_mut()
            .find(|(h, w, _)| h == host && *w == what)
            .with_context(|| format!("no {what} on {host} in the stack"))?;
        p.kill();
        Ok(())
    }

    /// Runs a command of `docs/emergency.md` inside its host, as `bash -c` runs it for an
    /// operator, and returns its exit status and its output (stdout then stderr). The one
    /// adaptation to the lab: `rempart-repl` and `rempart-vrrp` are shell functions that call the
    /// binaries built next to this one with this stack's run directories (a deployment's are the
    /// defaults, `/run/rempart-repl` and `/run/rempart-vrrp`).
    pub fn run_doc_command(&self, lab: &Lab, c: &DocCommand) -> anyhow::Result<(i32, String)> {
        let repl = sibling_binary("rempart-repl")?;
        let vrrp = sibling_binary("rempart-vrrp")?;
        let h = &c.host;
        let prelude = format!(
            "rempart-repl() {{ '{}' \"$@\" --run-dir '{}'; }}\n\
             rempart-vrrp() {{ REMPART_VRRP_RUN_DIR='{}' '{}' \"$@\"; }}\n",
            repl.display(),
            self.dir.join(format!("repl-run-{h}")).display(),
            self.dir.join(format!("vrrp-run-{h}")).display(),
            vrrp.display(),
        );
        let out = lab
            .cmd(h, "bash")
            .args(["-c", &format!("{prelude}{}", c.command)])
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {:?} on {h}", c.command))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text))
    }

    /// Adds backups to the stack, as the drill's backup step sets them up: an OpenSSH server on
    /// backup (process `sshd`, its key forced to `rempart-backup serve --restrict-to-path`), a
    /// repository there (label `backup`), and on main a small generated tree and a runner
    /// configuration whose `--metrics-file` is main's node_exporter textfile, so that the backup
    /// alerts run on real series. Then runs the runner once (create, check, restore-test) and
    /// returns its report.
    pub fn start_backups(&mut self, lab: &Lab) -> anyhow::Result<serde_json::Value> {
        let bin = sibling_binary("rempart-backup")?;
        let dir = self.dir.join("backup");
        let (ssh, srv, source) = (dir.join("ssh"), dir.join("srv"), dir.join("main-data"));
        crate::steps::generate_tree(&source, 2)?;
        let backup_ip = mgmt("backup")?;
        crate::steps::backup_sshd_files(&ssh, &srv, &bin, backup_ip)?;
        let args = ["-D", "-e", "-f"]
            .map(String::from)
            .into_iter()
            .chain([d_str(&ssh.join("sshd_config"))])
            .collect::<Vec<_>>();
        self.spawn(lab, "backup", "sshd", &args, "/usr/sbin/sshd")?;
        self.wait_sshd(lab)?;
        let rsh = format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=5",
            ssh.join("main_key").display()
        );
        let url = format!("ssh://root@{backup_ip}{}/repo", srv.display());
        std::fs::write(dir.join("passphrase"), "lab passphrase\n")?;
        let cfg = format!(
            "location:\n    source_directories:\n        - {}\n    repositories:\n        - path: {url}\n          label: backup\n\
             storage:\n    encryption_passcommand: cat {}\n    compression: auto,zstd,3\n    \
             archive_name_format: '{{hostname}}-{{now:%Y-%m-%dT%H:%M:%S.%f}}'\n    ssh_command: {rsh}\n\
             retention:\n    keep_hourly: 24\n\
             consistency:\n    checks:\n        - name: repository\n        - name: archives\n",
            source.display(),
            dir.join("passphrase").display()
        );
        std::fs::write(dir.join("borgmatic.yaml"), cfg)?;
        self.backup = Some(Backups { bin, dir: dir.clone(), rsh });
        let out = self.backup_cmd(lab, &["init", "-e", "repokey", &url])?.output().context("rempart-backup init")?;
        anyhow::ensure!(out.status.success(), "init over ssh: {}", String::from_utf8_lossy(&out.stderr));
        let r = self.backup_run(lab, &["create", "check", "restore-test"])?;
        anyhow::ensure!(r["exit_code"] == 0, "the first run failed: {r}");
        Ok(r)
    }

    fn wait_sshd(&self, lab: &Lab) -> anyhow::Result<()> {
        let addr = SocketAddr::new(mgmt("backup")?.parse()?, 22);
        rempart_testkit::wait::until(Duration::from_secs(10), "sshd on backup", || {
            lab.enter("main", || TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()).unwrap_or(false)
        })?;
        Ok(())
    }

    /// Starts sshd on backup again after [`Stack::kill`], once it accepts connections.
    pub fn restart_sshd(&mut self, lab: &Lab) -> anyhow::Result<()> {
        self.restart(lab, "backup", "sshd")?;
        self.wait_sshd(lab)
    }

    fn backup_cmd(&self, lab: &Lab, args: &[&str]) -> anyhow::Result<std::process::Command> {
        let b = self.backup.as_ref().context("start_backups first")?;
        let mut c = lab.cmd("main", &b.bin.to_string_lossy());
        c.args(args)
            .env("REMPART_KEYS_DIR", b.dir.join("keys"))
            .env("REMPART_CACHE_DIR", b.dir.join("cache"))
            .env("REMPART_PASSPHRASE", "lab passphrase")
            .env("REMPART_RSH", &b.rsh)
            .env_remove("REMPART_PASSCOMMAND")
            .stdin(Stdio::null());
        Ok(c)
    }

    /// Runs the runner on main with `actions`, its metrics into main's textfile directory;
    /// returns its report for the repository (whatever its exit code).
    pub fn backup_run(&self, lab: &Lab, actions: &[&str]) -> anyhow::Result<serde_json::Value> {
        let b = self.backup.as_ref().context("start_backups first")?;
        let cfg = d_str(&b.dir.join("borgmatic.yaml"));
        let state = d_str(&b.dir.join("state"));
        let metrics = d_str(&self.dir.join("textfile-main").join("rempart_backup.prom"));
        let mut args = vec!["run", "-c", &cfg, "--json", "--state-dir", &state, "--metrics-file", &metrics];
        args.extend_from_slice(actions);
        let out = self.backup_cmd(lab, &args)?.output().context("rempart-backup run")?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("runner --json output: {}", String::from_utf8_lossy(&out.stderr)))?;
        v.get(0).cloned().with_context(|| format!("no repository in the runner's report: {v}"))
    }

    /// The repository's directory on backup (to damage a pack).
    pub fn repository_dir(&self) -> anyhow::Result<PathBuf> {
        Ok(self.backup.as_ref().context("start_backups first")?.dir.join("srv").join("repo"))
    }

    /// Makes `host`'s track script fail (`failing`) or pass again: its VRRP priority drops by 60
    /// while it fails.
    pub fn fail_check(&self, host: &str, failing: bool) -> anyhow::Result<()> {
        let flag = self.dir.join(format!("check-fail-{host}"));
        if failing {
            std::fs::write(&flag, "")?;
        } else if flag.exists() {
            std::fs::remove_file(&flag)?;
        }
        Ok(())
    }

    /// Every process: (host, what, pid).
    #[must_use]
    pub fn pids(&self) -> Vec<(String, &'static str, u32)> {
        self.procs.iter().map(|(h, w, p)| (h.clone(), *w, p.pid())).collect()
    }

    /// The stack's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The webhook receiver's log: one JSON object per notification.
    #[must_use]
    pub fn notifications_path(&self) -> PathBuf {
        self.dir.join("notifications.jsonl")
    }

    /// Leaves every process and the directory in place (for `rempart-lab up`; `down` removes them).
    pub fn keep(mut self) {
        self.keep = true;
        for (_, _, p) in std::mem::take(&mut self.procs) {
            // A `Proc` kills its process group when dropped: forget it so the process outlives us.
            std::mem::forget(p);
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Processes first (their `Proc`s kill them by process group), then their files.
        self.procs.clear();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A plain HTTP/1.1 GET from inside `host` (no proxy, no TLS): returns the status code and the
/// body (chunked transfer decoded).
pub fn http_get(lab: &Lab, host: &str, addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    let raw = lab.enter(host, move || -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(req.as_bytes())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf)?;
        Ok(buf)
    })??;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").context("HTTP response without header end")?;
    let code =
        head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("HTTP response without status code")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((code, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").context("truncated chunk")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).context("bad chunk size")?;
        if n == 0 {
            break;
        }
        let chunk = after.get(..n).context("truncated chunk")?;
        out.push_str(chunk);
        rest = after.get(n + 2..).context("truncated chunk")?;
    }
    Ok((code, out))
}

/// Runs an instant query on the lab's Prometheus; returns `data.result`.
pub fn query(lab: &Lab, promql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let addr = SocketAddr::new(mgmt("monitoring")?.parse()?, PROMETHEUS_PORT);
    let path = format!("/api/v1/query?query={}", percent_encode(promql));
    let (code, body) = http_get(lab, "monitoring", addr, &path)?;
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("query {promql:?}: HTTP {code}: {body}"))?;
    if v["status"] != "success" {
        bail!("query {promql:?}: {}", v["error"]);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Runs a range query on the lab's Prometheus from `start` to `end` (Unix seconds) every
/// `step` seconds, as Grafana does for a panel; returns `data.result` (one entry per series with
/// at least one point).
pub fn query_range(lab: &Lab, promql: &str, start: f64, end: f64, step: f64) -> anyhow::Result<Vec<serde_json::Value>> {
    let addr = SocketAddr::new(mgmt("monitoring")?.parse()?, PROMETHEUS_PORT);
    let path =
        format!("/api/v1/query_range?query={}&start={start:.3}&end={end:.3}&step={step}", percent_encode(promql));
    let (code, body) = http_get(lab, "monitoring", addr, &path)?;
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("query_range {promql:?}: HTTP {code}: {body}"))?;
    if v["status"] != "success" {
        bail!("query_range {promql:?}: {}", v["error"]);
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The webhook receiver (`rempart-lab webhook`): accepts Alertmanager's POSTs on `listen` and
/// appends one line per notification to `log`: `{"received": <Unix seconds>, "notification":
/// <the body>}`, flushed before answering 200. Runs until killed.
pub fn serve_webhook(listen: SocketAddr, log: &Path) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let (status, body) = match read_post(&mut conn) {
            Ok(b) => match serde_json::from_slice::<serde_json::Value>(&b) {
                Ok(n) => {
                    let received = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64();
                    // One write of the whole line: a reader never sees half of it (`writeln!`
                    // would write it in pieces).
                    let line = format!("{}\n", serde_json::json!({ "received": received, "notification": n }));
                    file.write_all(line.as_bytes()).and_then(|()| file.sync_data()).context("writing the log")?;
                    ("200 OK", "")
                }
                Err(_) => ("400 Bad Request", "not JSON\n"),
            },
            Err(_) => ("400 Bad Request", "bad request\n"),
        };
        let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }
    Ok(())
}

fn read_post(conn: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut r = BufReader::new(conn);
    let mut len = None;
    let mut line = String::new();
    r.read_line(&mut line)?;
    anyhow::ensure!(line.starts_with("POST "), "not a POST");
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = Some(v.trim().parse::<usize>()?);
            }
        }
    }
    let len = len.context("no Content-Length")?;
    anyhow::ensure!(len <= 16 << 20, "body too large");
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// Reads the webhook log: (received Unix seconds, notification) per complete line.
pub fn read_notifications(path: &Path) -> anyhow::Result<Vec<(f64, serde_json::Value)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    // A line still being written (no newline yet) is left for the next read.
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    complete
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).with_context(|| format!("{}: {l}", path.display()))?;
            Ok((v["received"].as_f64().unwrap_or(0.0), v["notification"].clone()))
        })
        .collect()
}

/// An alert as the webhook receives it: its name, labels that identify it, and the receiver
/// Alertmanager must route it to.
#[derive(Debug, Clone, Copy)]
pub struct AlertMatch<'a> {
    /// `alertname`.
    pub alertname: &'a str,
    /// Labels the alert must carry.
    pub labels: &'a [(&'a str, &'a str)],
    /// The receiver of the notification.
    pub receiver: &'a str,
}

/// The first notification of the webhook log (time received, body) received at or after
/// `after` (Unix seconds), sent to `m.receiver`, carrying the alert `m` with `status`
/// (`firing` or `resolved`).
#[must_use]
pub fn find_notification<'n>(
    notes: &'n [(f64, serde_json::Value)],
    m: &AlertMatch<'_>,
    status: &str,
    after: f64,
) -> Option<&'n (f64, serde_json::Value)> {
    notes.iter().find(|(t, n)| {
        *t >= after
            && n["receiver"] == m.receiver
            && n["alerts"].as_array().into_iter().flatten().any(|a| {
                a["labels"]["alertname"] == m.alertname
                    && a["status"] == status
                    && m.labels.iter().all(|(k, v)| a["labels"][*k] == *v)
            })
    })
}

/// Runs `command` with bash in `host`'s namespaces after `prelude` (shell functions that give
/// the lab's binaries the names and options an operator types): (exit code, stdout + stderr).
pub fn run_on_host(lab: &Lab, host: &str, prelude: &str, command: &str) -> anyhow::Result<(i32, String)> {
    let out = lab
        .cmd(host, "bash")
        .args(["-c", &format!("{prelude}{command}")])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?} on {host}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.code().unwrap_or(-1), text))
}

/// One command of `docs/emergency.md` as [`run_doc_phase`] ran it.
#[derive(Debug, Clone)]
pub struct DocRun {
    /// Its line in the file.
    pub line: usize,
    /// The host of its prompt.
    pub host: String,
    /// The command line.
    pub command: String,
    /// What it printed the time it showed the documented lines.
    pub output: String,
}

/// Runs, in their order, the commands of `docs/emergency.md` whose block names `phase`, each
/// through `run` (which runs it in its host and returns its exit code and output) until its
/// output shows the documented lines ([`crate::monitoring::doc_output_matches`]); a command
/// documented without output is an action and must exit 0. Each command has `patience` to get
/// there (the lab converges within seconds: main taking the VIP back after its restart, an
/// alert reaching Alertmanager). The one runner of both monitoring tests (`monitoring_lab` for
/// the standalone daemons' phases, `monitoring_node` for rempart-node's): each asserts at its
/// end that it ran every command of its phases.
///
/// The error names the file's line, the command and what it printed last.
pub fn run_doc_phase(
    commands: &[DocCommand],
    phase: &str,
    patience: Duration,
    mut run: impl FnMut(&DocCommand) -> anyhow::Result<(i32, String)>,
) -> anyhow::Result<Vec<DocRun>> {
    anyhow::ensure!(crate::monitoring::DOC_PHASES.contains(&phase), "{phase:?} is not a phase of docs/emergency.md");
    let mut done = Vec::new();
    for c in commands.iter().filter(|c| c.phase == phase) {
        let mut last = String::new();
        let mut shown = String::new();
        let r = rempart_testkit::wait::until(patience, &format!("docs/emergency.md:{}", c.line), || match run(c) {
            Ok((code, out)) => {
                let ok = if c.output.is_empty() && code != 0 {
                    Err(format!("exit code {code}: {out}"))
                } else {
                    crate::monitoring::doc_output_matches(c, &out)
                };
                match ok {
                    Ok(()) => {
                        shown = out;
                        true
                    }
                    Err(e) => {
                        last = e;
                        false
                    }
                }
            }
            Err(e) => {
                last = format!("{e:#}");
                false
            }
        });
        if r.is_err() {
            bail!("docs/emergency.md:{} ({phase}) {}# {}: {last}", c.line, c.host, c.command);
        }
        done.push(DocRun { line: c.line, host: c.host.clone(), command: c.command.clone(), output: shown });
    }
    Ok(done)
}

/// Now, as Unix seconds (the webhook log's and Prometheus's time).
#[must_use]
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// Every scrape target Prometheus knows, as (job, host, value of `up`).
#[must_use]
pub fn up_targets(lab: &Lab) -> std::collections::BTreeSet<(String, String, String)> {
    query(lab, "up")
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let m = &s["metric"];
            let l = |k: &str| m[k].as_str().unwrap_or("").to_string();
            (l("job"), l("host"), s["value"][1].as_str().unwrap_or("").to_string())
        })
        .collect()
}

/// Waits until the targets Prometheus scrapes are exactly `expected` (job, host), each up.
pub fn wait_targets_up(lab: &Lab, expected: &[(&str, &str)], timeout: Duration) -> anyhow::Result<()> {
    let want: std::collections::BTreeSet<(String, String, String)> =
        expected.iter().map(|(j, h)| ((*j).to_string(), (*h).to_string(), "1".to_string())).collect();
    rempart_testkit::wait::until(timeout, "every target up", || up_targets(lab) == want)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{e}: targets {:?}, expected {want:?}", up_targets(lab)))
}

/// The drill's alert step: the monitoring host started on the drill's lab ([`Stack`], scrape and
/// evaluation every `interval`), then three faults at once — main's rempart-vrrp killed, the
/// replication link cut, the witness killed. Each alert (`InstanceDown`, `RempartReplDisconnected`
/// on main, `RempartWitnessDown`, all `for: 1m`) must reach the webhook, routed to its receiver,
/// no earlier than its `for` and no later than `for` + two intervals + 3 s; after the recovery
/// (the daemons started again, the link healed) each must be resolved within 15 s. Reports every
/// time; a missing or late alert fails the step and says which.
#[derive(Debug)]
pub struct AlertDrill {
    /// Prometheus's scrape and evaluation interval.
    pub interval: Duration,
}

impl Default for AlertDrill {
    fn default() -> Self {
        Self { interval: Duration::from_secs(1) }
    }
}

impl Step for AlertDrill {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn run(&mut self, lab: &mut Lab) -> anyhow::Result<String> {
        let dir = std::env::temp_dir().join(format!("rempart-drill-monitoring-{}", lab.id()));
        let mut stack = Stack::start(lab, &Options { dir, interval: self.interval })?;
        let targets = 9;
        rempart_testkit::wait::until(Duration::from_secs(30), "every target up", || {
            query(lab, "up == 1").is_ok_and(|v| v.len() == targets)
        })?;
        rempart_testkit::wait::until(Duration::from_secs(30), "r0 connected", || {
            query(lab, "rempart_repl_connection_state == 2").is_ok_and(|v| v.len() == 2)
        })?;
        let alerts = [
            AlertMatch {
                alertname: "InstanceDown",
                labels: &[("host", "main"), ("job", "rempart-vrrp")],
                receiver: "oncall",
            },
            AlertMatch {
                alertname: "RempartReplDisconnected",
                labels: &[("host", "main"), ("resource", "r0")],
                receiver: "oncall",
            },
            AlertMatch {
                alertname: "RempartWitnessDown",
                labels: &[("host", "monitoring"), ("job", "rempart-witness")],
                receiver: "ops",
            },
        ];
        let fault_at = unix_now();
        stack.kill("main", "rempart-vrrp")?;
        lab.cut("main", "repl")?;
        stack.kill("monitoring", "witness")?;
        let for_ = 60.0;
        let limit = for_ + 2.0 * self.interval.as_secs_f64() + 3.0;
        let log = stack.notifications_path();
        let all = |status: &str, after: f64| {
            let notes = read_notifications(&log).unwrap_or_default();
            alerts.iter().all(|m| find_notification(&notes, m, status, after).is_some())
        };
        let _ = rempart_testkit::wait::until(Duration::from_secs_f64(limit + 5.0), "every alert", || {
            all("firing", fault_at)
        });
        let notes = read_notifications(&log)?;
        let mut fired = Vec::new();
        for m in &alerts {
            let Some((t, _)) = find_notification(&notes, m, "firing", fault_at) else {
                bail!("{} {:?} did not reach {} within {limit:.0} s of the fault", m.alertname, m.labels, m.receiver);
            };
            let after = t - fault_at;
            anyhow::ensure!(
                (for_..=limit).contains(&after),
                "{} arrived {after:.1} s after the fault (for: 1m, limit {limit:.0} s)",
                m.alertname
            );
            fired.push(after);
        }
        let recovering = unix_now();
        stack.restart(lab, "main", "rempart-vrrp")?;
        lab.heal("main", "repl")?;
        stack.restart(lab, "monitoring", "witness")?;
        let recovered = unix_now();
        let _ = rempart_testkit::wait::until(Duration::from_secs(20), "every alert resolved", || {
            all("resolved", recovering)
        });
        let notes = read_notifications(&log)?;
        let mut out = Vec::new();
        for (m, fired) in alerts.iter().zip(fired) {
            let Some((t, _)) = find_notification(&notes, m, "resolved", recovering) else {
                bail!("{} {:?} not resolved within 20 s of the recovery", m.alertname, m.labels);
            };
            let resolved = t - recovered;
            anyhow::ensure!(resolved <= 15.0, "{} resolved {resolved:.1} s after the recovery", m.alertname);
            out.push(format!(
                "{} → {} {fired:.1} s after the fault (for 1m), resolved {resolved:.1} s after the recovery",
                m.alertname, m.receiver
            ));
        }
        stack.check_running()?;
        Ok(out.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap(), (200, "ok".to_string()));
        let chunked =
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), (503, "abcde".to_string()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\nab").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn a_notification_still_being_written_is_not_read() {
        let d = std::env::temp_dir().join(format!("rempart-lab-notes-unit-{}", std::process::id()));
        std::fs::write(&d, "{\"received\": 1.5, \"notification\": {\"receiver\": \"ops\"}}\n{\"received\": 2, \"notif")
            .unwrap();
        let notes = read_notifications(&d).unwrap();
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].0, 1.5);
        assert_eq!(notes[0].1["receiver"], "ops");
        std::fs::write(&d, "{\"received\": 2}\nnot json\n").unwrap();
        assert!(read_notifications(&d).is_err());
        std::fs::remove_file(&d).unwrap();
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(percent_encode(r#"up{job="a b"} == 1"#), "up%7Bjob%3D%22a%20b%22%7D%20%3D%3D%201");
    }

    #[test]
    fn lab_configs_change_only_intervals_and_waits() {
        let d = std::env::temp_dir().join(format!("rempart-lab-monitor-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = std::fs::read_to_string(prometheus_config(&d, Duration::from_secs(2), Daemons::Node).unwrap()).unwrap();
        assert!(p.contains("  scrape_interval: 2000ms\n  scrape_timeout: 2000ms\n") && !p.contains("15s"), "{p}");
        let deploy = std::fs::read_to_string(deploy_dir().join("prometheus/prometheus.yml")).unwrap();
        assert_eq!(p.lines().skip(16).collect::<Vec<_>>(), deploy.lines().skip(15).collect::<Vec<_>>());
        assert!(p.contains("  - job_name: rempart-node\n") && !p.contains("\n  - job_name: rempart-vrrp"));
        // Standalone: the rempart-node job gone, the commented jobs of the two daemons in.
        let p = std::fs::read_to_string(prometheus_config(&d, Duration::from_secs(2), Daemons::Standalone).unwrap())
            .unwrap();
        assert!(!p.contains("job_name: rempart-node") && !p.contains("# BEGIN"), "{p}");
        for job in ["rempart-vrrp", "rempart-repl", "rempart-witness", "node"] {
            assert!(p.contains(&format!("\n  - job_name: {job}\n")), "{job}: {p}");
        }
        assert!(p.contains("\n      - targets: ['192.168.50.10:9650']\n        labels: {host: main}\n"), "{p}");
        assert!(p.contains("\n    metric_relabel_configs:\n      - source_labels: [exported_instance]\n"), "{p}");
        assert!(d.join("rules/vrrp.yml").is_file());
        let a = std::fs::read_to_string(alertmanager_config(&d).unwrap()).unwrap();
        assert!(a.contains("  group_wait: 1s\n") && a.contains("      group_wait: 1s\n") && !a.contains("30s"), "{a}");
        assert!(a.contains("url: 'http://127.0.0.1:9095/alerts'"));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
