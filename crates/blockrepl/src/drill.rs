//! The replication step of `rempart-lab drill`: a replicated volume between `main` and `backup`,
//! acknowledged writes on main, `kill -9` of main, promotion of backup, and a read-back that
//! counts lost writes (which must be zero under protocol C).
//!
//! It drives the real `rempart-repl` binary and `qemu-io`. Where each command runs is up to the
//! caller's `wrap`: identity on loopback, or `ip netns exec NS …` in a lab.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Inputs of [`drill_step`].
pub struct DrillHosts<'a> {
    /// Path of the `rempart-repl` binary.
    pub bin: PathBuf,
    /// Working directory (images, config, logs), visible from both hosts.
    pub dir: PathBuf,
    /// Replication endpoint of main (also where main serves NBD, port + 1000).
    pub main_addr: SocketAddr,
    /// Replication endpoint of backup (NBD on port + 1000).
    pub backup_addr: SocketAddr,
    /// Turns a command into one that runs on host `"main"` or `"backup"`.
    pub wrap: &'a dyn Fn(&str, Command) -> Command,
    /// How many 4 KiB FUA writes to make on main before killing it.
    pub writes: u32,
}

impl std::fmt::Debug for DrillHosts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrillHosts")
            .field("bin", &self.bin)
            .field("dir", &self.dir)
            .field("main_addr", &self.main_addr)
            .field("backup_addr", &self.backup_addr)
            .field("writes", &self.writes)
            .finish()
    }
}

/// What the drill measured.
#[derive(Debug, Clone, PartialEq)]
pub struct DrillReport {
    /// Writes acknowledged to the client on main.
    pub acknowledged: u32,
    /// Acknowledged writes that did not read back on backup after failover.
    pub lost: u32,
    /// From `kill -9` of main to backup serving as Primary.
    pub failover: Duration,
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const SIZE: u64 = 64 << 20;

fn nbd_of(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip(), a.port().wrapping_add(1000))
}

fn run(h: &DrillHosts<'_>, host: &str, mut cmd: Command) -> Result<Output, String> {
    cmd.stdin(Stdio::null());
    let desc = format!("{cmd:?}");
    (h.wrap)(host, cmd).output().map_err(|e| format!("{host}: {desc}: {e}"))
}

fn ctl(h: &DrillHosts<'_>, host: &str, args: &[&str]) -> Result<String, String> {
    let mut c = Command::new(&h.bin);
    c.args(args).arg("--run-dir").arg(h.dir.join(format!("run-{host}")));
    let out = run(h, host, c)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("{host}: rempart-repl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(text)
}

fn status(h: &DrillHosts<'_>, host: &str) -> Result<serde_json::Value, String> {
    let s = ctl(h, host, &["status", "--json"])?;
    serde_json::from_str(&s).map_err(|e| format!("{host}: status: {e}"))
}

fn wait_for(
    h: &DrillHosts<'_>,
    host: &str,
    what: &str,
    timeout: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if let Ok(s) = status(h, host) {
            if f(&s) {
                return Ok(());
            }
        }
        if start.elapsed() > timeout {
            return Err(format!("{host}: timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_config(dir: &Path, main: SocketAddr, backup: SocketAddr) -> std::io::Result<PathBuf> {
    std::fs::write(dir.join("drill.secret"), "drill shared secret\n")?;
    let cfg = format!(
        "[resource]\nname = \"r0\"\nprotocol = \"C\"\nsecret-file = \"drill.secret\"\npeer-timeout-ms = 1000\n\n\
         [[node]]\nname = \"main\"\naddress = \"{main}\"\ndisk = \"main.img\"\nnbd = \"{}\"\n\n\
         [[node]]\nname = \"backup\"\naddress = \"{backup}\"\ndisk = \"backup.img\"\nnbd = \"{}\"\n",
        nbd_of(main),
        nbd_of(backup)
    );
    let p = dir.join("drill.toml");
    std::fs::write(&p, cfg)?;
    Ok(p)
}

/// Runs the drill. See the module docs.
pub fn drill_step(h: &DrillHosts<'_>) -> Result<DrillReport, String> {
    let io = |e: std::io::Error| e.to_string();
    std::fs::create_dir_all(&h.dir).map_err(io)?;
    for n in ["main", "backup"] {
        let f = std::fs::File::create(h.dir.join(format!("{n}.img"))).map_err(io)?;
        f.set_len(SIZE).map_err(io)?;
        let _ = std::fs::remove_file(h.dir.join(format!("{n}.img.md")));
    }
    let cfg = write_config(&h.dir, h.main_addr, h.backup_addr).map_err(io)?;
    let mut procs = Kill(Vec::new());
    for n in ["main", "backup"] {
        let mut c = Command::new(&h.bin);
        c.args(["create-md", "-c"]).arg(&cfg).args(["--node", n]);
        let out = run(h, n, c)?;
        if !out.status.success() {
            return Err(format!("{n}: create-md: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let log = std::fs::File::create(h.dir.join(format!("{n}.log"))).map_err(io)?;
        let mut c = Command::new(&h.bin);
        c.args(["run", "-c"]).arg(&cfg).args(["--node", n, "--run-dir"]).arg(h.dir.join(format!("run-{n}")));
        let _ = std::fs::remove_file(h.dir.join(format!("run-{n}")).join("repl.ctl"));
        let child = (h.wrap)(n, c)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{n}: spawn: {e}"))?;
        procs.0.push(child);
    }
    wait_for(h, "main", "connection", Duration::from_secs(15), |s| s["connection"] == "Connected")?;
    ctl(h, "main", &["primary", "--force"])?;
    wait_for(h, "main", "initial sync", Duration::from_secs(60), |s| {
        s["replication"] == "Established" && s["peer"]["disk"] == "UpToDate"
    })?;
    // Acknowledged writes: qemu-io's default cache mode sets FUA on every write.
    let url = |a: SocketAddr| format!("nbd://{}/r0", nbd_of(a));
    let mut q = Command::new("qemu-io");
    q.args(["-f", "raw"]);
    for i in 0..h.writes {
        q.args(["-c", &format!("write -P {} {} 4k", i % 251 + 1, u64::from(i) * 4096)]);
    }
    q.arg(url(h.main_addr));
    let out = run(h, "main", q)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let acknowledged = text.matches("wrote 4096/4096 bytes").count() as u32;
    if !out.status.success() {
        return Err(format!("qemu-io on main: {}", String::from_utf8_lossy(&out.stderr)));
    }
    // kill -9 main, promote backup.
    let start = Instant::now();
    if let Some(main) = procs.0.first_mut() {
        main.kill().map_err(io)?;
        let _ = main.wait();
    }
    wait_for(h, "backup", "loss of main", Duration::from_secs(10), |s| s["connection"] != "Connected")?;
    ctl(h, "backup", &["primary"])?;
    let failover = start.elapsed();
    let mut q = Command::new("qemu-io");
    q.args(["-f", "raw"]);
    for i in 0..h.writes {
        q.args(["-c", &format!("read -P {} {} 4k", i % 251 + 1, u64::from(i) * 4096)]);
    }
    q.arg(url(h.backup_addr));
    let out = run(h, "backup", q)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let failed = text.matches("Pattern verification failed").count() as u32;
    let read = text.matches("read 4096/4096 bytes").count() as u32;
    let lost = failed + acknowledged.saturating_sub(read);
    Ok(DrillReport { acknowledged, lost, failover })
}
