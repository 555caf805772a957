//! The drill's steps. Each later part (failover, replication, backup) adds its own here.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;

use crate::probe::{tcp_ping, EchoServer, ECHO_PORT};
use crate::report::{finish, Check};
use crate::{Lab, Step, HOSTS};

/// Every host reaches every other on each network they share, by a real TCP exchange from
/// inside the namespaces. Reports the number of pairs and the round-trip median and maximum.
#[derive(Debug)]
pub struct Reachability {
    /// Echo round trips per pair.
    pub round_trips: usize,
}

impl Default for Reachability {
    fn default() -> Self {
        Self { round_trips: 10 }
    }
}

fn sock(ip: &str) -> anyhow::Result<SocketAddr> {
    let ip: IpAddr = ip.parse().with_context(|| format!("bad address {ip}"))?;
    Ok(SocketAddr::new(ip, ECHO_PORT))
}

impl Step for Reachability {
    fn name(&self) -> &'static str {
        "reachability"
    }

    fn run(&mut self, lab: &mut Lab) -> anyhow::Result<String> {
        let mut servers = Vec::new();
        // (network, host, address) of every attachment.
        let mut ends = Vec::new();
        for h in HOSTS {
            ends.push(("mgmt", h.name, sock(h.mgmt)?));
            if let Some(r) = h.repl {
                ends.push(("repl", h.name, sock(r)?));
            }
        }
        for (_, host, addr) in &ends {
            servers.push(EchoServer::start(lab, host, *addr)?);
        }
        let mut rtts: Vec<Duration> = Vec::new();
        let mut pairs = 0;
        for (net_a, a, _) in &ends {
            for (net_b, b, addr) in &ends {
                if net_a != net_b || a == b {
                    continue;
                }
                let (_, r) = tcp_ping(lab, a, *addr, self.round_trips)?;
                rtts.extend(r);
                pairs += 1;
            }
        }
        drop(servers);
        rtts.sort();
        let median = rtts.get(rtts.len() / 2).copied().unwrap_or_default();
        let max = rtts.last().copied().unwrap_or_default();
        Ok(format!(
            "{pairs} host pairs over mgmt and repl, TCP echo RTT median {:.0} µs, max {:.0} µs",
            median.as_secs_f64() * 1e6,
            max.as_secs_f64() * 1e6
        ))
    }
}

/// The backup host's sshd files for a client restricted to `rempart-backup serve` under `srv`:
/// a host key and the client's key in `ssh`, `authorized_keys` with the forced command, and an
/// `sshd_config` listening on `listen` (port 22) with nothing but that key. Used by the drill's
/// backup step and the monitoring lab.
pub fn backup_sshd_files(
    ssh: &std::path::Path,
    srv: &std::path::Path,
    bin: &std::path::Path,
    listen: &str,
) -> anyhow::Result<()> {
    use std::process::Command;
    std::fs::create_dir_all(ssh)?;
    std::fs::create_dir_all(srv)?;
    std::fs::create_dir_all("/run/sshd")?;
    for k in ["hostkey", "main_key"] {
        let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(ssh.join(k)).output()?;
        anyhow::ensure!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    let pubkey = std::fs::read_to_string(ssh.join("main_key.pub"))?;
    std::fs::write(
        ssh.join("authorized_keys"),
        format!(
            "command=\"{} serve --restrict-to-path {}\",restrict {}\n",
            bin.display(),
            srv.display(),
            pubkey.trim()
        ),
    )?;
    std::fs::write(
        ssh.join("sshd_config"),
        format!(
            "Port 22\nListenAddress {listen}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             LogLevel ERROR\n",
            ssh.join("hostkey").display(),
            ssh.join("authorized_keys").display()
        ),
    )?;
    Ok(())
}

/// Finds a binary built alongside this one (`target/<profile>/NAME`), also from a test binary in
/// `target/<profile>/deps/`.
pub fn sibling_binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let exe = std::env::current_exe().context("locating the running binary")?;
    let mut dir = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n != "deps") {
            break;
        }
        dir = d.parent();
    }
    anyhow::bail!("{name} is not built next to {} (run `cargo build --workspace --bins`)", exe.display())
}

/// Whether `host` holds `addr` on interface `dev`.
pub fn has_addr(lab: &Lab, host: &str, dev: &str, addr: &str) -> bool {
    lab.run(host, &["ip", "-o", "addr", "show", "dev", dev])
        .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().any(|w| w.split('/').next() == Some(addr)))
        .unwrap_or(false)
}

/// VRRP failover of the reference VIP: main (priority 150) and backup (priority 100) run
/// `rempart-vrrp` on the management LAN with the same keepalived.conf (VRRPv2, PASS, advert 1 s);
/// the drill checks the VIP is on main only, kills main's daemon with SIGKILL, and measures the
/// time until the VIP is on backup and until the client's first TCP connect to a service on the
/// VIP succeeds (the client-visible RTO). Then main's daemon starts again: with the higher
/// priority it preempts, and the step measures the failback — the VIP back on main only and the
/// client served by main through it. One [`Check`] each, against [`FAILOVER_LIMIT`].
#[derive(Debug, Default)]
pub struct VrrpFailover;

/// The reference deployment's claim for a failover ("< 6 s"), applied to the VIP's move, the
/// client's RTO and the failback alike.
pub const FAILOVER_LIMIT: Duration = Duration::from_secs(6);

fn within(d: Option<Duration>, limit: Duration) -> (String, bool) {
    match d {
        Some(d) => (format!("{:.3} s", d.as_secs_f64()), d < limit),
        None => ("not within 15 s".to_string(), false),
    }
}

/// The keepalived.conf both nodes run in the drill (priority differs).
pub fn vrrp_drill_conf(router: &str, priority: u8) -> String {
    format!(
        "global_defs {{\n  router_id {router}\n  vrrp_version 2\n}}\n\
         vrrp_instance VI_MGMT {{\n  state BACKUP\n  interface mgmt\n  virtual_router_id 50\n  priority {priority}\n  \
         advert_int 1\n  authentication {{\n    auth_type PASS\n    auth_pass rempart1\n  }}\n  \
         virtual_ipaddress {{\n    {}/24\n  }}\n}}\n",
        crate::VIP
    )
}

impl Step for VrrpFailover {
    fn name(&self) -> &'static str {
        "vrrp-failover"
    }

    fn run(&mut self, lab: &mut Lab) -> anyhow::Result<String> {
        use rempart_testkit::wait;
        use std::time::Instant;

        let bin = sibling_binary("rempart-vrrp")?;
        let dir = std::env::temp_dir().join(format!("rempart-drill-vrrp-{}", lab.id()));
        std::fs::create_dir_all(&dir)?;
        let _cleanup = RemoveDir(dir.clone());
        let mut daemons = Vec::new();
        for (host, prio) in [("main", 150u8), ("backup", 100u8)] {
            let conf = dir.join(format!("{host}.conf"));
            std::fs::write(&conf, vrrp_drill_conf(host, prio))?;
            let run_dir = dir.join(format!("run-{host}"));
            let mut c = lab.cmd(host, &bin.to_string_lossy());
            c.arg("--run-dir").arg(&run_dir).arg("run").arg("-f").arg(&conf);
            c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
            daemons.push(lab.spawn(host, c)?);
        }
        let vip = crate::VIP;
        wait::until(Duration::from_secs(15), "VIP on main", || has_addr(lab, "main", "mgmt", vip))?;
        anyhow::ensure!(!has_addr(lab, "backup", "mgmt", vip), "VIP on both main and backup");
        let mut checks = vec![Check::new(
            "VIP on main",
            "before the fault, the VIP on main (priority 150) only",
            format!("{vip} on main, not on backup"),
            true,
        )];

        // A service on the VIP, as the client sees it: an echo server on backup's wildcard address.
        let service = EchoServer::start(lab, "backup", SocketAddr::from(([0, 0, 0, 0], ECHO_PORT)))?;
        let target = SocketAddr::new(vip.parse()?, ECHO_PORT);

        // The client talks to the VIP first, so its neighbour table points the VIP at main's MAC
        // (main has no listener: the connect is refused). After the kill, main keeps the address
        // (SIGKILL leaves it, as with keepalived): only backup's gratuitous ARP moves the client.
        let probe = |lab: &Lab| {
            lab.enter("client", || std::net::TcpStream::connect_timeout(&target, Duration::from_millis(100)).is_ok())
                .unwrap_or(false)
        };
        anyhow::ensure!(!probe(lab), "the service answered on main, which has none");
        let killed = Instant::now();
        daemons[0].kill();
        let moved = wait::until(Duration::from_secs(15), "VIP on backup after kill -9 of main", || {
            has_addr(lab, "backup", "mgmt", vip)
        })?;
        wait::until(Duration::from_secs(15), "client TCP connect to the VIP", || probe(lab))?;
        let served = killed.elapsed();
        drop(service);
        let limit = FAILOVER_LIMIT.as_secs_f64();
        let (m, ok) = within(Some(moved), FAILOVER_LIMIT);
        checks.push(Check::new(
            "failover",
            format!("main's daemon killed (kill -9): the VIP on backup in < {limit} s (the reference's claim)"),
            format!("VIP on backup {m} after the kill"),
            ok,
        ));
        let (m, ok) = within(Some(served), FAILOVER_LIMIT);
        checks.push(Check::new(
            "client-visible RTO",
            format!("the client's first TCP connect through the VIP succeeds < {limit} s after the kill"),
            format!("client connected through the VIP {m} after the kill"),
            ok,
        ));

        // Failback: the service now on main only, main's daemon started again; its priority (150)
        // preempts backup's. The client is served again once main holds the VIP and has
        // announced it (backup's gratuitous ARP pointed the client at backup).
        let service = EchoServer::start(lab, "main", SocketAddr::from(([0, 0, 0, 0], ECHO_PORT)))?;
        anyhow::ensure!(!probe(lab), "the client reached main's service before the failback");
        let restarted = Instant::now();
        let conf = dir.join("main.conf");
        let mut c = lab.cmd("main", &bin.to_string_lossy());
        c.arg("--run-dir").arg(dir.join("run-main")).arg("run").arg("-f").arg(&conf);
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        daemons.push(lab.spawn("main", c)?);
        let back = wait::until(Duration::from_secs(15), "VIP back on main only", || {
            has_addr(lab, "main", "mgmt", vip) && !has_addr(lab, "backup", "mgmt", vip)
        })
        .ok();
        let client_back =
            wait::until(Duration::from_secs(15), "client served by main through the VIP", || probe(lab)).ok();
        let client_back = client_back.map(|_| restarted.elapsed());
        drop(service);
        let (m, ok) = within(back, FAILOVER_LIMIT);
        let (mc, okc) = within(client_back, FAILOVER_LIMIT);
        checks.push(Check::new(
            "failback to main",
            format!(
                "main's daemon started again: the VIP back on main only, and the client served by main through \
                 it, < {limit} s after the start"
            ),
            format!("VIP on main only {m}, client served by main {mc} after the start"),
            ok && okc,
        ));
        finish(
            &format!(
                "VIP {vip} main → backup {:.3} s after kill -9 (advert 1 s, expect ≈ 3.61 s); client connects after \
                 {:.3} s; failback to main: {mc}",
                moved.as_secs_f64(),
                served.as_secs_f64()
            ),
            &checks,
        )
    }
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A replicated volume (protocol C) between main and backup over the replication network:
/// qemu-io makes acknowledged (FUA) 4 KiB writes through main's NBD export, main's `rempart-repl`
/// is killed with SIGKILL, backup is promoted, and qemu-io reads every write back on backup.
/// Reports the writes lost (RPO; must be 0) and the time to promotion.
#[derive(Debug)]
pub struct ReplicatedVolume {
    /// Acknowledged writes before the kill.
    pub writes: u32,
}

impl Default for ReplicatedVolume {
    fn default() -> Self {
        Self { writes: 256 }
    }
}

impl Step for ReplicatedVolume {
    fn name(&self) -> &'static str {
        "replication"
    }

    fn run(&mut self, lab: &mut Lab) -> anyhow::Result<String> {
        let dir = std::env::temp_dir().join(format!("rempart-drill-repl-{}", lab.id()));
        let _cleanup = RemoveDir(dir.clone());
        let ns = |h: &str| lab.netns(h).to_string();
        let (ns_main, ns_backup) = (ns("main"), ns("backup"));
        let wrap = move |host: &str, cmd: std::process::Command| {
            let ns = if host == "main" { &ns_main } else { &ns_backup };
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns]).arg(cmd.get_program()).args(cmd.get_args());
            if let Some(d) = cmd.get_current_dir() {
                c.current_dir(d);
            }
            c
        };
        let repl = |h: &str| -> anyhow::Result<SocketAddr> {
            let ip = crate::host(h).and_then(|h| h.repl).context("host not on the replication network")?;
            Ok(SocketAddr::new(ip.parse()?, 7789))
        };
        let hosts = blockrepl::drill::DrillHosts {
            bin: sibling_binary("rempart-repl")?,
            dir: dir.clone(),
            main_addr: repl("main")?,
            backup_addr: repl("backup")?,
            wrap: &wrap,
            writes: self.writes,
        };
        let r = blockrepl::drill::drill_step(&hosts).map_err(|e| anyhow::anyhow!(e))?;
        anyhow::ensure!(
            r.acknowledged == self.writes,
            "only {} of {} writes acknowledged",
            r.acknowledged,
            self.writes
        );
        anyhow::ensure!(r.lost == 0, "{} of {} acknowledged writes lost after failover", r.lost, r.acknowledged);
        Ok(format!(
            "{} acknowledged 4 KiB writes on main, kill -9, backup promoted in {:.3} s, {} lost (RPO 0)",
            r.acknowledged,
            r.failover.as_secs_f64(),
            r.lost
        ))
    }
}

/// Backup and restore of a service's data, as the reference deployment does it: main runs
/// `rempart-backup run` (the borgmatic-style runner) with the reference retention (24 hourly, 7
/// daily, 4 weekly, 6 monthly) against a repository on backup over ssh — an OpenSSH server started
/// inside backup's namespace, keys generated for the drill, `authorized_keys` forcing
/// `rempart-backup serve --restrict-to-path`. A generated tree (text, incompressible binaries, a
/// file with repeated blocks, a symlink) is backed up twice (the second run shows deduplication
/// and the files cache, then prune applies the retention), checked, restore-tested (restored into
/// a temporary directory and every file verified against the archive), then deleted on main and
/// restored in place over ssh and compared item by item with what was there. Reports the times,
/// and as [`Check`]s: the age of the newest good backup when the data is lost (the backups' RPO,
/// against [`BACKUP_RPO_LIMIT`], read from the runner's metrics as Prometheus would), the restore
/// test's files verified and duration, and the restore in place.
#[derive(Debug)]
pub struct BackupRestore {
    /// Approximate size of the generated tree, in MiB.
    pub mib: usize,
}

impl Default for BackupRestore {
    fn default() -> Self {
        Self { mib: 32 }
    }
}

/// The backups' RPO (1 h) plus the 15 min margin of `RempartBackupTooOld`, in seconds.
pub const BACKUP_RPO_LIMIT: f64 = 4500.0;

/// Regular files below `root` (symbolic links not followed).
fn regular_files(root: &std::path::Path) -> anyhow::Result<u64> {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// The value of `family{repository="LABEL"}` in a textfile.
fn textfile_value(text: &str, family: &str, label: &str) -> Option<f64> {
    let prefix = format!("{family}{{repository=\"{label}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).and_then(|v| v.trim().parse().ok())
}

/// Writes a deterministic tree of about `mib` MiB below `root`.
pub fn generate_tree(root: &std::path::Path, mib: usize) -> anyhow::Result<()> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    };
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::create_dir_all(root.join("home/alice"))?;
    std::fs::create_dir_all(root.join("srv/db"))?;
    for i in 0..64 {
        let text = format!("setting_{i} = value {i}\n").repeat(200);
        std::fs::write(root.join(format!("etc/conf{i}.cfg")), text)?;
    }
    let half = (mib.max(2) / 2) << 20;
    std::fs::write(root.join("home/alice/photos.bin"), noise(half))?;
    // A database file whose 1 MiB blocks repeat: what deduplication is for.
    let block = noise(1 << 20);
    let mut db = Vec::with_capacity(half);
    while db.len() < half {
        db.extend_from_slice(&block);
    }
    std::fs::write(root.join("srv/db/data.db"), db)?;
    std::os::unix::fs::symlink("../../etc/conf0.cfg", root.join("home/alice/link.cfg"))?;
    Ok(())
}

/// Runs `cmd` (made with [`Lab::cmd`]) to completion with a deadline; kills it on timeout.
fn run_with_deadline(lab: &Lab, host: &str, mut cmd: std::process::Command, what: &str) -> anyhow::Result<String> {
    use std::io::Read as _;
    use std::process::Stdio;
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut p = lab.spawn(host, cmd)?;
    let mut so = p.child_mut().stdout.take().context("stdout")?;
    let mut se = p.child_mut().stderr.take().context("stderr")?;
    let to = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = so.read_to_string(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = String::new();
        let _ = se.read_to_string(&mut v);
        v
    });
    let status = p.wait_timeout(Duration::from_secs(240));
    if status.is_none() {
        p.kill();
    }
    let (out, err) = (to.join().unwrap_or_default(), te.join().unwrap_or_default());
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => anyhow::bail!("{what}: {s}: {}", err.trim()),
        None => anyhow::bail!("{what}: still running after 240 s (killed)"),
    }
}

impl Step for BackupRestore {
    fn name(&self) -> &'static str {
        "backup-restore"
    }

    fn run(&mut self, lab: &mut Lab) -> anyhow::Result<String> {
        use std::time::Instant;

        let bin = sibling_binary("rempart-backup")?;
        let dir = std::env::temp_dir().join(format!("rempart-drill-backup-{}", lab.id()));
        let _cleanup = RemoveDir(dir.clone());
        let source = dir.join("main-data");
        generate_tree(&source, self.mib)?;
        let fingerprint = |p: &std::path::Path| dedupstore::drill::fingerprint(p).map_err(|e| anyhow::anyhow!("{e}"));
        let before = fingerprint(&source)?;
        let files = regular_files(&source)?;

        // backup: sshd on its management address, the client key forced to `serve`.
        let ssh = dir.join("ssh");
        let srv = dir.join("backup-srv");
        let backup_ip = crate::host("backup").context("backup host")?.mgmt;
        backup_sshd_files(&ssh, &srv, &bin, backup_ip)?;
        let mut c = lab.cmd("backup", "/usr/sbin/sshd");
        // (-e: errors to stderr, silenced: the readiness probe's bare connects are "errors")
        c.args(["-D", "-e", "-f"]).arg(ssh.join("sshd_config")).stderr(std::process::Stdio::null());
        let _sshd = lab.spawn("backup", c)?;
        let addr = SocketAddr::new(backup_ip.parse()?, 22);
        rempart_testkit::wait::until(Duration::from_secs(10), "sshd on backup", || {
            lab.enter("main", || std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok())
                .unwrap_or(false)
        })?;
        let rsh = format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            ssh.join("main_key").display()
        );
        let url = format!("ssh://root@{backup_ip}{}/mediaschool", srv.display());
        let passfile = dir.join("passphrase");
        std::fs::write(&passfile, "drill passphrase\n")?;
        let ours = |args: &[&str]| {
            let mut c = lab.cmd("main", &bin.to_string_lossy());
            c.args(args)
                .env("REMPART_KEYS_DIR", dir.join("keys"))
                .env("REMPART_CACHE_DIR", dir.join("cache"))
                .env("REMPART_PASSPHRASE", "drill passphrase")
                .env("REMPART_RSH", &rsh)
                .env_remove("REMPART_PASSCOMMAND");
            c
        };
        run_with_deadline(lab, "main", ours(&["init", "-e", "repokey", &url]), "init over ssh")?;

        // main: the runner, with the reference retention.
        let cfg = format!(
            "location:\n    source_directories:\n        - {}\n    repositories:\n        - path: {url}\n          label: backup\n\
             storage:\n    encryption_passcommand: cat {}\n    compression: auto,zstd,3\n    \
             archive_name_format: '{{hostname}}-{{now:%Y-%m-%dT%H:%M:%S.%f}}'\n    ssh_command: {rsh}\n\
             retention:\n    keep_hourly: 24\n    keep_daily: 7\n    keep_weekly: 4\n    keep_monthly: 6\n\
             consistency:\n    checks:\n        - name: repository\n          frequency: 1 day\n        - name: archives\n",
            source.display(),
            passfile.display()
        );
        let cfg_path = dir.join("borgmatic.yaml");
        std::fs::write(&cfg_path, cfg)?;
        let state = dir.join("state").display().to_string();
        let metrics = dir.join("rempart_backup.prom").display().to_string();
        let cfg_arg = cfg_path.display().to_string();
        let runner = |actions: &[&str]| -> anyhow::Result<(f64, serde_json::Value)> {
            let mut args = vec!["run", "-c", &cfg_arg, "--json", "--state-dir", &state, "--metrics-file", &metrics];
            args.extend_from_slice(actions);
            let t = Instant::now();
            let out = run_with_deadline(lab, "main", ours(&args), "rempart-backup run")?;
            let v: serde_json::Value = serde_json::from_str(&out).context("runner --json output")?;
            let r = v.get(0).cloned().context("no repository in the runner's report")?;
            anyhow::ensure!(r["exit_code"] == 0, "runner: {r}");
            Ok((t.elapsed().as_secs_f64(), r))
        };
        let (t1, r1) = runner(&["create", "prune", "compact", "check"])?;
        let (t2, r2) = runner(&["create", "prune", "compact", "check", "restore-test"])?;
        let stats = |r: &serde_json::Value, k: &str| r["create"]["stats"][k].as_u64().unwrap_or(0);
        let secs = |r: &serde_json::Value| r["create"]["duration"].as_f64().unwrap_or(0.0);
        let rt = &r2["restore_test"];
        anyhow::ensure!(rt["success"] == true, "restore test: {rt}");
        let m = std::fs::read_to_string(&metrics)?;
        anyhow::ensure!(
            m.contains("rempart_backup_last_restore_test_success{repository=\"backup\"} 1"),
            "metrics: {m}"
        );

        // Disaster on main: the data is gone; restore it in place over ssh and compare. The age
        // of the newest good backup at that moment is what was lost (the backups' RPO), as the
        // runner's metrics tell Prometheus.
        let archive = r2["create"]["name"].as_str().context("archive name")?.to_string();
        let m = std::fs::read_to_string(&metrics)?;
        let last_success = textfile_value(&m, "rempart_backup_last_success_timestamp_seconds", "backup");
        std::fs::remove_dir_all(&source)?;
        let fault = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64();
        let age = last_success.filter(|t| *t > 0.0).map(|t| fault - t);
        let t = Instant::now();
        let mut c = ours(&["extract", &format!("{url}::{archive}")]);
        c.current_dir("/");
        run_with_deadline(lab, "main", c, "extract over ssh")?;
        let restore = t.elapsed().as_secs_f64();
        let after = fingerprint(&source)?;

        let rt_files = rt["files"].as_u64().unwrap_or(0);
        let rt_errors = rt["errors"].as_array().map(Vec::len).unwrap_or(usize::MAX);
        let checks = [
            Check::new(
                "backup age at the fault (RPO of the backups)",
                format!(
                    "the newest good backup, as rempart_backup_last_success_timestamp_seconds says, at most \
                     {BACKUP_RPO_LIMIT} s old when the data is lost (1 h RPO + 15 min, RempartBackupTooOld's threshold)"
                ),
                age.map_or_else(
                    || format!("no last success in the metrics: {m}"),
                    |a| format!("{a:.3} s (the data lost right after the drill's second run)"),
                ),
                age.is_some_and(|a| (0.0..=BACKUP_RPO_LIMIT).contains(&a)),
            ),
            Check::new(
                "restore test",
                format!(
                    "the newest archive restored into a temporary directory and every one of its {files} regular \
                     files verified, 0 errors"
                ),
                format!(
                    "{rt_files} files ({:.0} MB) verified in {:.2} s, {rt_errors} errors",
                    rt["bytes"].as_f64().unwrap_or(0.0) / 1e6,
                    rt["duration"].as_f64().unwrap_or(0.0)
                ),
                rt_files == files && rt_errors == 0,
            ),
            Check::new(
                "restore in place over ssh (RTO of the data)",
                "the data deleted on main, restored from backup over ssh: equal to the original, item by item",
                format!(
                    "{} items restored in {restore:.2} s, {}",
                    after.len(),
                    if before == after { "equal to the original" } else { "DIFFERENT from the original" }
                ),
                before == after,
            ),
        ];

        let mb = stats(&r1, "original_size") as f64 / 1e6;
        let summary = format!(
            "runner main → backup over ssh: run 1 {t1:.2} s (create {:.2} s, {mb:.0} MB, {:.0} MB/s), run 2 {t2:.2} s \
             (create {:.2} s, {} kB new; prune 24h/7d/4w/6m deleted {}; checks {}); restore test {} files, {:.0} MB \
             verified in {:.2} s, {} errors; {} items restored in place over ssh in {restore:.2} s ({:.0} MB/s, RTO of the data)",
            secs(&r1),
            mb / secs(&r1).max(1e-9),
            secs(&r2),
            stats(&r2, "deduplicated_size") / 1000,
            r2["prune"]["deleted"],
            r1["check"]["ran"].as_array().map(|a| a.iter().filter_map(|c| c.as_str()).collect::<Vec<_>>().join("+")).unwrap_or_default(),
            rt["files"],
            rt["bytes"].as_f64().unwrap_or(0.0) / 1e6,
            rt["duration"].as_f64().unwrap_or(0.0),
            rt["errors"].as_array().map(Vec::len).unwrap_or(0),
            after.len(),
            mb / restore.max(1e-9)
        );
        finish(&summary, &checks)
    }
}
