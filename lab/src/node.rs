//! The service stack of issue 15's namespace tests: OpenLDAP's `slapd` with its database on the
//! replicated volume, the client that writes and reads through the VIP, the two-writers probe, and
//! the fault list — shared by the two columns of the comparison (the keepalived glue of
//! [`crate::glue`], and `rempart-node`).
//!
//! ```text
//!   client .100 ── writer: ldapadd cn=cN (every 200 ms) ──▶ VIP 192.168.50.50 ──┐
//!              └── reader: ldapsearch the last acknowledged cN ──▶ VIP ─────────┤
//!                                                                               ▼
//!   main .10                                           backup .20
//!   slapd (mdb in <dir>/main/mnt/ldap)                 slapd (mdb in <dir>/backup/mnt/ldap)
//!     ▲ probe: ldapadd over ldapi (own slapd)            ▲ probe: ldapadd over ldapi
//!   ext4 on /dev/loopN on <dir>/main/fuse/nbd          ext4 on /dev/loopM on <dir>/backup/fuse/nbd
//!   nbdfuse ── NBD (unix socket) ──▶ rempart-repl r0 ◀══ repl 192.168.56.0/24 ══▶ rempart-repl r0
//!                                    <dir>/main/r0.img                           <dir>/backup/r0.img
//! ```
//!
//! A [`Stack`] owns a temporary directory with each host's disk image, resource file, `slapd.conf`
//! and run files (pid files, the loop device's name). Mount points and FUSE directories differ per
//! host because the network namespaces share the mount namespace; processes that mount are started
//! in the test's own mount namespace ([`in_our_mounts`]) since `ip netns exec` gives every command
//! a private one, where a mount would be invisible to the teardown. The directory is a shared
//! mount of itself, so that the mount-table copies every `ip netns exec` makes follow the unmounts
//! instead of pinning the volume. [`Stack`]'s drop tears every host down in reverse (slapd
//! stopped, umount, `losetup -d`, `fusermount3 -u`, nbdfuse killed by pid), also after a failed
//! test. slapd listens on `ldap:///` (every address of its host, the VIP included once it is
//! there: Debian's default, and no bind failure when slapd starts before the VIP) and on its
//! `ldapi://` socket.
//!
//! Two writers: each probe's acknowledgements closer than [`PERIOD_GAP`] form a serving period;
//! a period of main overlapping one of backup is two writers ([`two_writers`]). A clean handover
//! (main stops, backup starts later) is not; a split brain where both serve is.
//!
//! A [`Failover`] is one column: it starts the failover daemon(s) on main and backup, kills or
//! freezes them, switches over. [`run_fault`] builds a fresh lab and stack, lets a column bring
//! the service up on main, starts the [`Traffic`] (client writer and reader, the probe on each
//! server), applies a [`Fault`], heals it, and returns an [`Outcome`]: what happened, whether the
//! two servers ever acknowledged writes in the same period, the acknowledged entries lost, and the
//! time from the fault to the client's first successful read of its last acknowledged entry.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use rempart_testkit::{wait, Proc};

use crate::steps::sibling_binary;
use crate::{host, Lab, VIP};

/// The directory's base, as in the reference deployment.
pub const BASE_DN: &str = "dc=iris,dc=local";
/// Where the client and the probes add their entries.
pub const PEOPLE_DN: &str = "ou=people,dc=iris,dc=local";
/// The rootdn the writers bind as.
pub const ROOT_DN: &str = "cn=admin,dc=iris,dc=local";
/// The rootdn's password (plain in `slapd.conf`: a test directory).
pub const ROOT_PW: &str = "iris-lab";
/// Size of the replicated volume.
pub const VOLUME_SIZE: u64 = 32 << 20;
/// The servers of the resource (main, backup).
pub const SERVERS: [&str; 2] = ["main", "backup"];
/// The witness's lease in the node column; SIGSTOP lasts longer than this.
pub const LEASE: Duration = Duration::from_secs(3);

/// The entries `slapd` starts with: the base and two organisational units, as the reference
/// deployment's directory.
pub const BASE_LDIF: &str =
    "dn: dc=iris,dc=local\nobjectClass: dcObject\nobjectClass: organization\no: iris\ndc: iris\n\n\
dn: ou=people,dc=iris,dc=local\nobjectClass: organizationalUnit\nou: people\n\n\
dn: ou=groups,dc=iris,dc=local\nobjectClass: organizationalUnit\nou: groups\n";

/// A command that runs `program` inside `host`'s network namespace but in the test's own mount
/// namespace (`ip netns exec` alone gives the command a private one: a mount made there would be
/// invisible to the teardown and to the other host's processes). The root and working directory
/// are the test's too: entering a mount namespace resets both to the namespace's, which is not
/// the test's when it runs under chroot (scripts/fresh-root).
pub fn in_our_mounts(lab: &Lab, host: &str, program: &str) -> Command {
    let me = std::process::id();
    let mut c = lab.cmd(host, "nsenter");
    c.arg(format!("--mount=/proc/{me}/ns/mnt"))
        .arg(format!("--root=/proc/{me}/root"))
        .arg(format!("--wd=/proc/{me}/cwd"))
        .arg("--")
        .arg(program);
    c
}

/// Runs `cmd` with `input` on stdin; kills it after `limit`. `None` on timeout.
pub fn run_limited(mut cmd: Command, input: &[u8], limit: Duration) -> anyhow::Result<Option<(ExitStatus, String)>> {
    use std::io::Read as _;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(input);
    }
    let mut out = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let text = reader.join().unwrap_or_default();
    Ok(status.map(|s| (s, text)))
}

/// The files of one server host of the stack.
#[derive(Debug, Clone)]
pub struct HostFiles {
    /// `main` or `backup`.
    pub name: String,
    /// `<dir>/<host>`: everything below is this host's.
    pub dir: PathBuf,
}

/// Percent-encodes a path for an `ldapi://` URL.
fn ldapi_url(path: &Path) -> String {
    let mut s = String::from("ldapi://");
    for b in path.to_string_lossy().bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl HostFiles {
    /// The disk image of the replicated resource.
    pub fn img(&self) -> PathBuf {
        self.dir.join("r0.img")
    }
    /// The rempart-repl resource file (the same sections on both hosts).
    pub fn repl_conf(&self) -> PathBuf {
        self.dir.join("r0.toml")
    }
    /// rempart-repl's run directory (control socket).
    pub fn repl_run(&self) -> PathBuf {
        self.dir.join("repl-run")
    }
    /// The NBD export's unix socket.
    pub fn nbd_socket(&self) -> PathBuf {
        self.dir.join("r0.nbd")
    }
    /// The NBD URL nbdfuse connects to.
    pub fn nbd_url(&self) -> String {
        format!("nbd+unix:///r0?socket={}", self.nbd_socket().display())
    }
    /// nbdfuse's directory (the export appears as `nbd` in it).
    pub fn fuse_dir(&self) -> PathBuf {
        self.dir.join("fuse")
    }
    /// nbdfuse's pid file.
    pub fn nbdfuse_pid(&self) -> PathBuf {
        self.dir.join("nbdfuse.pid")
    }
    /// The file holding the loop device's name (`/dev/loopN`).
    pub fn loop_file(&self) -> PathBuf {
        self.dir.join("loop")
    }
    /// The mount point of the volume.
    pub fn mount_point(&self) -> PathBuf {
        self.dir.join("mnt")
    }
    /// slapd's database directory, on the volume.
    pub fn db_dir(&self) -> PathBuf {
        self.mount_point().join("ldap")
    }
    /// slapd's configuration file.
    pub fn slapd_conf(&self) -> PathBuf {
        self.dir.join("slapd.conf")
    }
    /// slapd's pid file.
    pub fn slapd_pid(&self) -> PathBuf {
        self.dir.join("slapd.pid")
    }
    /// slapd's local socket path.
    pub fn ldapi_path(&self) -> PathBuf {
        self.dir.join("ldapi")
    }
    /// slapd's local socket, as a URL.
    pub fn ldapi(&self) -> String {
        ldapi_url(&self.ldapi_path())
    }
    /// The URLs slapd listens on: every address of its host (its own and the VIP when it holds
    /// it: `ldap:///`, Debian's default, so slapd need not wait for the VIP) and its local socket.
    pub fn slapd_urls(&self) -> String {
        format!("ldap:/// {}", self.ldapi())
    }
    /// The command line that starts slapd (it daemonises; the pid file says when it runs).
    pub fn slapd_argv(&self) -> Vec<String> {
        vec![
            "/usr/sbin/slapd".into(),
            "-f".into(),
            self.slapd_conf().display().to_string(),
            "-h".into(),
            self.slapd_urls(),
        ]
    }
    /// The log of this host's stack (glue scripts, nbdfuse).
    pub fn log(&self) -> PathBuf {
        self.dir.join("stack.log")
    }

    fn read_pid(path: &Path) -> Option<i32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    /// slapd's pid, if its pid file names a live process.
    pub fn slapd_running(&self) -> Option<i32> {
        Self::read_pid(&self.slapd_pid()).filter(|p| alive(*p))
    }

    /// nbdfuse's pid, if its pid file names a live process.
    pub fn nbdfuse_running(&self) -> Option<i32> {
        Self::read_pid(&self.nbdfuse_pid()).filter(|p| alive(*p))
    }
}

/// Whether process `pid` exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().next()).is_some_and(|st| st != "Z"))
        .unwrap_or(false)
}

/// Processes (pid, command) in whose mount namespace `dir` is a mount point.
pub fn mounted_elsewhere(dir: &Path) -> Vec<(i32, String)> {
    let dir = dir.to_string_lossy();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let m = std::fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        if m.lines().any(|l| l.split(' ').nth(4) == Some(&*dir)) {
            let cmd = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default().replace('\0', " ");
            out.push((pid, cmd));
        }
    }
    out
}

/// Whether `dir` is a mount point now (in the test's mount namespace).
pub fn is_mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*dir)))
        .unwrap_or(false)
}

/// The slapd.conf of a host: the reference directory's schema, one mdb database on the volume.
pub fn slapd_conf(h: &HostFiles) -> String {
    format!(
        "# slapd for the rempart lab ({host}): the database lives on the replicated volume\n\
         include /etc/ldap/schema/core.schema\n\
         include /etc/ldap/schema/cosine.schema\n\
         include /etc/ldap/schema/inetorgperson.schema\n\
         pidfile {pid}\n\
         argsfile {args}\n\
         modulepath /usr/lib/ldap\n\
         moduleload back_mdb\n\
         database mdb\n\
         suffix \"{BASE_DN}\"\n\
         rootdn \"{ROOT_DN}\"\n\
         rootpw {ROOT_PW}\n\
         directory {db}\n\
         maxsize 8388608\n",
        host = h.name,
        pid = h.slapd_pid().display(),
        args = h.dir.join("slapd.args").display(),
        db = h.db_dir().display(),
    )
}

/// Runs `argv` in the test's namespaces; fails with its output unless it exits 0.
fn sh(argv: &[&str]) -> anyhow::Result<String> {
    let out =
        Command::new(argv[0]).args(&argv[1..]).stdin(Stdio::null()).output().with_context(|| format!("{argv:?}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "{argv:?}: {}: {}", out.status, text.trim());
    Ok(text)
}

/// Sends signal `sig` (`TERM`, `KILL`, `STOP`, `CONT`) to each of `pids` with kill(1).
pub fn signal(pids: &[i32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let mut c = Command::new("kill");
    c.arg(format!("-{sig}")).arg("--").args(pids.iter().map(i32::to_string));
    let _ = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Sends SIGTERM to `pid` and waits up to `limit` for it to go; SIGKILL after that.
pub fn stop_pid(pid: i32, limit: Duration) {
    signal(&[pid], "TERM");
    if wait::until(limit, "process exit", || !alive(pid)).is_err() {
        signal(&[pid], "KILL");
        let _ = wait::until(Duration::from_secs(2), "process exit after SIGKILL", || !alive(pid));
    }
}

/// A directory, a shared mount of itself, removed when dropped: `<tmp>/rempart-node-<lab id>`.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    fn new(lab: &Lab) -> anyhow::Result<TempDir> {
        let d = std::env::temp_dir().join(format!("rempart-node-{}", lab.id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        // A shared mount of its own: every `ip netns exec` (this lab's or anyone's) copies the
        // mount table into a new namespace, and when the tree is private a copy taken while the
        // volume is mounted pins its ext4 — and so the loop device and nbdfuse — until that
        // process exits. Under a shared mount the copies are slaves and see the unmount.
        let d2 = d.to_string_lossy().into_owned();
        sh(&["mount", "--bind", &d2, &d2])?;
        let dir = TempDir(d);
        sh(&["mount", "--make-rshared", &d2])?;
        Ok(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if Command::new("umount").arg(&self.0).output().map(|o| !o.status.success()).unwrap_or(true) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).output();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The replicated volume, slapd and their files on main and backup. See the module docs.
#[derive(Debug)]
pub struct Stack {
    /// The temporary directory holding everything (removed on drop).
    pub dir: TempDir,
    /// `rempart-repl`, built next to this binary.
    pub repl_bin: PathBuf,
    repl: BTreeMap<String, Proc>,
    /// `peer-timeout-ms` of the resource file (see [`Stack::set_peer_timeout`]).
    peer_timeout: Duration,
}

impl Stack {
    /// Writes each server's files (disk image, resource file, metadata, slapd.conf). Starts
    /// nothing.
    pub fn new(lab: &Lab) -> anyhow::Result<Stack> {
        let dir = TempDir::new(lab)?;
        let s = Stack {
            dir,
            repl_bin: sibling_binary("rempart-repl")?,
            repl: BTreeMap::new(),
            peer_timeout: Duration::from_secs(1),
        };
        std::fs::write(s.dir.path().join("r0.secret"), "iris lab replication secret\n")?;
        for n in SERVERS {
            let h = s.host(n);
            std::fs::create_dir_all(&h.dir)?;
            std::fs::create_dir_all(h.fuse_dir())?;
            std::fs::create_dir_all(h.mount_point())?;
            std::fs::write(h.repl_conf(), s.resource_file())?;
            std::fs::File::create(h.img())?.set_len(VOLUME_SIZE)?;
            std::fs::write(h.slapd_conf(), slapd_conf(&h))?;
            let out = lab
                .cmd(n, &s.repl_bin.to_string_lossy())
                .args(["create-md", "-c"])
                .arg(h.repl_conf())
                .args(["--node", n])
                .output()?;
            ensure!(out.status.success(), "create-md on {n}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(s)
    }

    /// The files of server `name` (`main` or `backup`).
    pub fn host(&self, name: &str) -> HostFiles {
        HostFiles { name: name.to_string(), dir: self.dir.path().join(name) }
    }

    /// The resource file both hosts use (protocol C, the replication network, DRBD's default
    /// split-brain policy).
    pub fn resource_file(&self) -> String {
        let d = self.dir.path();
        let mut s = format!(
            "[resource]\nname = \"r0\"\nprotocol = \"C\"\nsecret-file = \"{}\"\nafter-sb-0pri = \"disconnect\"\n\
             peer-timeout-ms = {}\n",
            d.join("r0.secret").display(),
            self.peer_timeout.as_millis()
        );
        for n in SERVERS {
            let repl = host(n).and_then(|h| h.repl).unwrap_or_default();
            s.push_str(&format!(
                "\n[[node]]\nname = \"{n}\"\naddress = \"{repl}:7789\"\ndisk = \"{}\"\nnbd = \"unix:{}\"\n",
                self.host(n).img().display(),
                self.host(n).nbd_socket().display()
            ));
        }
        s
    }

    /// Sets the replication link's peer timeout and rewrites both servers' resource files; call
    /// it before anything started (a fast failover setting shortens it with the lease).
    pub fn set_peer_timeout(&mut self, timeout: Duration) -> anyhow::Result<()> {
        self.peer_timeout = timeout;
        for n in SERVERS {
            std::fs::write(self.host(n).repl_conf(), self.resource_file())?;
        }
        Ok(())
    }

    /// Starts `rempart-repl run` on `host` and waits for its control socket.
    pub fn start_repl(&mut self, lab: &Lab, name: &str) -> anyhow::Result<()> {
        let h = self.host(name);
        let sock = h.repl_run().join("repl.ctl");
        let _ = std::fs::remove_file(&sock);
        let mut c = lab.cmd(name, &self.repl_bin.to_string_lossy());
        c.args(["run", "-c"]).arg(h.repl_conf()).args(["--node", name, "--run-dir"]).arg(h.repl_run());
        c.env("RUST_LOG", "info").stdout(Stdio::null());
        c.stderr(std::fs::OpenOptions::new().create(true).append(true).open(h.dir.join("repl.log"))?);
        self.repl.insert(name.to_string(), lab.spawn(name, c)?);
        wait::until(Duration::from_secs(10), "rempart-repl control socket", || sock.exists())?;
        Ok(())
    }

    /// Stops `rempart-repl` on `host` gracefully (it writes its metadata), for a column that
    /// embeds the replication itself.
    pub fn stop_repl(&mut self, name: &str) {
        if let Some(mut p) = self.repl.remove(name) {
            p.term();
            if p.wait_timeout(Duration::from_secs(10)).is_none() {
                p.kill();
            }
        }
    }

    /// The pid of `rempart-repl` on `host`, if started here.
    pub fn repl_pid(&self, name: &str) -> Option<i32> {
        self.repl.get(name).and_then(|p| i32::try_from(p.pid()).ok())
    }

    /// A `rempart-repl` control command on `host`: (exit 0, output).
    pub fn repl_ctl(&self, name: &str, args: &[&str]) -> anyhow::Result<(bool, String)> {
        let out = Command::new(&self.repl_bin)
            .args(args)
            .arg("--run-dir")
            .arg(self.host(name).repl_run())
            .stdin(Stdio::null())
            .output()?;
        Ok((
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        ))
    }

    /// `rempart-repl status --json` of `host` (`Null` if it does not answer).
    pub fn repl_status(&self, name: &str) -> serde_json::Value {
        match self.repl_ctl(name, &["status", "--json"]) {
            Ok((true, text)) => serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
            _ => serde_json::Value::Null,
        }
    }

    /// Mounts the volume on `host` as the glue does (nbdfuse, loop device, ext4), `mkfs` first if
    /// asked. The host must be Primary.
    pub fn mount(&self, name: &str, mkfs: bool) -> anyhow::Result<()> {
        let h = self.host(name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(h.log())?;
        let mut c = Command::new("nbdfuse");
        c.arg("-P").arg(h.nbdfuse_pid()).arg(h.fuse_dir()).arg(h.nbd_url());
        c.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let mut child = c.spawn().context("nbdfuse")?;
        let file = h.fuse_dir().join("nbd");
        let ready = wait::until(Duration::from_secs(10), "nbdfuse file", || {
            std::fs::metadata(&file).map(|m| m.len() == VOLUME_SIZE).unwrap_or(false)
        });
        // nbdfuse is stopped by pid (its pid file) in the teardown; reap it then.
        std::thread::spawn(move || child.wait());
        ready?;
        let dev = sh(&["losetup", "-f", "--show", &file.to_string_lossy()])?.trim().to_string();
        std::fs::write(h.loop_file(), format!("{dev}\n"))?;
        if mkfs {
            sh(&["mkfs.ext4", "-q", "-F", &dev])?;
        }
        sh(&["mount", "-o", "noatime", &dev, &h.mount_point().to_string_lossy()])?;
        Ok(())
    }

    /// Starts slapd for `host` on its local socket only (it daemonises) and waits until it
    /// answers. The test runs it in its own network namespace, where it must not listen on any
    /// address; the columns start slapd inside the host with [`HostFiles::slapd_argv`].
    pub fn start_slapd_local(&self, name: &str) -> anyhow::Result<()> {
        let h = self.host(name);
        std::fs::create_dir_all(h.db_dir())?;
        let conf = h.slapd_conf().display().to_string();
        sh(&["/usr/sbin/slapd", "-f", &conf, "-h", &h.ldapi()])?;
        // The root DSE answers before the database holds anything.
        wait::until(Duration::from_secs(10), "slapd answers", || ldap_search_local(&h, "").unwrap_or(false))?;
        Ok(())
    }

    /// Tears `host`'s stack down in reverse: slapd stopped (by its pid file), umount, `losetup -d`,
    /// `fusermount3 -u`, nbdfuse killed by pid. Best effort; reports what it could not undo.
    pub fn teardown(&self, name: &str) -> Vec<String> {
        let h = self.host(name);
        let mut left = Vec::new();
        if let Some(p) = h.slapd_running() {
            stop_pid(p, Duration::from_secs(10));
        }
        let mnt = h.mount_point();
        if is_mounted(&mnt) {
            let _ = wait::until(Duration::from_secs(10), "umount", || {
                let _ = Command::new("umount").arg(&mnt).output();
                !is_mounted(&mnt)
            });
            if is_mounted(&mnt) {
                let _ = Command::new("umount").arg("-l").arg(&mnt).output();
                left.push(format!("{} unmounted lazily", mnt.display()));
            }
        }
        if let Ok(dev) = std::fs::read_to_string(h.loop_file()) {
            let dev = dev.trim();
            if !dev.is_empty() {
                let out = Command::new("losetup").args(["-d", dev]).output();
                // The kernel lets go of the backing file asynchronously (autoclear when busy).
                let backing = format!("/sys/block/{}/loop/backing_file", dev.trim_start_matches("/dev/"));
                if wait::until(Duration::from_secs(10), "loop device detached", || !Path::new(&backing).exists())
                    .is_err()
                {
                    let err = out.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_default();
                    left.push(format!("{dev} still attached ({err}); mounted in {:?}", mounted_elsewhere(&mnt)));
                }
            }
            let _ = std::fs::remove_file(h.loop_file());
        }
        // Loop devices the failover daemon attached itself (rempart-node's mount step, the glue's
        // script) over this host's files: a killed daemon leaves them behind.
        for dev in loops_backed_under(&h.dir) {
            let out = Command::new("losetup").args(["-d", &dev]).output();
            let backing = format!("/sys/block/{}/loop/backing_file", dev.trim_start_matches("/dev/"));
            if wait::until(Duration::from_secs(10), "loop device detached", || !Path::new(&backing).exists()).is_err() {
                let err = out.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string()).unwrap_or_default();
                left.push(format!("{dev} still attached ({err})"));
            }
        }
        let fuse = h.fuse_dir();
        if is_mounted(&fuse) {
            let mut err = String::new();
            let gone = wait::until(Duration::from_secs(10), "FUSE unmount", || {
                if let Ok(o) = Command::new("fusermount3").arg("-u").arg(&fuse).output() {
                    err = String::from_utf8_lossy(&o.stderr).trim().to_string();
                }
                !is_mounted(&fuse)
            });
            if gone.is_err() {
                left.push(format!("fusermount3 -u: {err}"));
            }
        }
        if let Some(p) = h.nbdfuse_running() {
            // It exits by itself once its FUSE mount is gone; SIGKILL if it does not.
            if wait::until(Duration::from_secs(5), "nbdfuse exit", || !alive(p)).is_err() {
                signal(&[p], "KILL");
                let _ = wait::until(Duration::from_secs(2), "nbdfuse exit after SIGKILL", || !alive(p));
                left.push(format!("nbdfuse {p} killed"));
            }
        }
        if is_mounted(&fuse) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&fuse).output();
            left.push(format!("{} unmounted lazily", fuse.display()));
        }
        left
    }

    /// Makes the volume ready for a column: main forced Primary, initial sync, ext4, slapd's
    /// database with [`BASE_LDIF`], then everything stopped and main Secondary again. Leaves the
    /// two `rempart-repl` daemons running and connected.
    pub fn prepare(&mut self, lab: &Lab) -> anyhow::Result<()> {
        for n in SERVERS {
            self.start_repl(lab, n)?;
        }
        wait::until(Duration::from_secs(15), "main connected", || {
            self.repl_status("main")["connection"] == "Connected"
        })?;
        let (ok, text) = self.repl_ctl("main", &["primary", "--force"])?;
        ensure!(ok, "primary --force on main: {text}");
        self.wait_synced(Duration::from_secs(30))?;
        self.mount("main", true)?;
        self.start_slapd_local("main")?;
        let h = self.host("main");
        let mut c = Command::new("ldapadd");
        c.args(["-x", "-H", &h.ldapi(), "-D", ROOT_DN, "-w", ROOT_PW]);
        match run_limited(c, BASE_LDIF.as_bytes(), Duration::from_secs(10))? {
            Some((st, _)) if st.success() => {}
            other => bail!("adding the base entries: {other:?}"),
        }
        let left = self.teardown("main");
        ensure!(left.is_empty(), "teardown of main: {left:?}");
        // The daemon sees nbdfuse's connection close a moment after the process is gone.
        let mut refused = String::new();
        let demoted =
            wait::until(Duration::from_secs(5), "main demoted", || match self.repl_ctl("main", &["secondary"]) {
                Ok((true, _)) => true,
                Ok((false, text)) => {
                    refused = text;
                    false
                }
                Err(e) => {
                    refused = format!("{e:#}");
                    false
                }
            });
        ensure!(demoted.is_ok(), "secondary on main: {refused}");
        Ok(())
    }

    /// Waits until both disks are UpToDate and connected with nothing out of sync.
    pub fn wait_synced(&self, limit: Duration) -> anyhow::Result<()> {
        wait::until(limit, "both disks UpToDate and in sync", || {
            SERVERS.iter().all(|n| {
                let s = self.repl_status(n);
                s["replication"] == "Established" && s["disk"] == "UpToDate" && s["out_of_sync_bytes"] == 0
            })
        })?;
        Ok(())
    }

    /// Pids of the stack's own processes on `host` (slapd, nbdfuse, rempart-repl when started
    /// here), for SIGSTOP.
    pub fn pids(&self, name: &str) -> Vec<i32> {
        let h = self.host(name);
        [h.slapd_running(), h.nbdfuse_running(), self.repl_pid(name)].into_iter().flatten().collect()
    }

    /// Whether any `*.log` file of a server contains `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        SERVERS.iter().any(|n| {
            std::fs::read_dir(self.host(n).dir).into_iter().flatten().flatten().any(|e| {
                e.path().extension().is_some_and(|x| x == "log")
                    && std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains(needle))
            })
        })
    }

    /// The last lines of each host's logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in SERVERS {
            for f in ["stack.log", "repl.log", "keepalived.log"] {
                let l = std::fs::read_to_string(self.host(n).dir.join(f)).unwrap_or_default();
                let tail: Vec<&str> = l.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect();
                if !tail.is_empty() {
                    s.push_str(&format!("--- {n}/{f}\n{}\n", tail.join("\n")));
                }
            }
        }
        s
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for n in SERVERS.iter().rev() {
            let _ = self.teardown(n);
        }
        let names: Vec<String> = self.repl.keys().cloned().collect();
        for n in names {
            self.stop_repl(&n);
        }
    }
}

/// Whether `dn` exists, asked on `h`'s local socket (`Ok(false)` when slapd does not answer).
pub fn ldap_search_local(h: &HostFiles, dn: &str) -> anyhow::Result<bool> {
    let mut c = Command::new("ldapsearch");
    c.args(["-x", "-LLL", "-H", &h.ldapi(), "-b", dn, "-s", "base", "dn"]);
    Ok(matches!(run_limited(c, b"", Duration::from_secs(2))?, Some((st, _)) if st.success()))
}

fn entry_ldif(cn: &str) -> String {
    format!("dn: cn={cn},{PEOPLE_DN}\nobjectClass: person\ncn: {cn}\nsn: lab\n")
}

/// An LDAP endpoint the traffic talks to.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// `ldap://VIP/` from the client host.
    Vip,
    /// A server's own slapd, on its local socket.
    Local(HostFiles),
}

impl Endpoint {
    fn command(&self, lab: &Lab, program: &str) -> Command {
        match self {
            Endpoint::Vip => {
                let mut c = lab.cmd("client", program);
                c.args(["-H", &format!("ldap://{VIP}/"), "-o", "nettimeout=1"]);
                c
            }
            Endpoint::Local(h) => {
                let mut c = Command::new(program);
                c.args(["-H", &h.ldapi()]);
                c
            }
        }
    }

    /// Adds entry `cn`; `true` when ldapadd exits 0 (the server acknowledged it).
    pub fn add(&self, lab: &Lab, cn: &str) -> bool {
        let mut c = self.command(lab, "ldapadd");
        c.args(["-x", "-D", ROOT_DN, "-w", ROOT_PW]);
        matches!(run_limited(c, entry_ldif(cn).as_bytes(), Duration::from_secs(2)), Ok(Some((st, _))) if st.success())
    }

    /// Whether entry `cn` can be read.
    pub fn has(&self, lab: &Lab, cn: &str) -> bool {
        let mut c = self.command(lab, "ldapsearch");
        c.args(["-x", "-LLL", "-b", &format!("cn={cn},{PEOPLE_DN}"), "-s", "base", "dn"]);
        matches!(run_limited(c, b"", Duration::from_secs(2)), Ok(Some((st, _))) if st.success())
    }

    /// Every `cn` under `ou=people`, or `None` if the server does not answer.
    pub fn list(&self, lab: &Lab) -> Option<BTreeSet<String>> {
        let mut c = self.command(lab, "ldapsearch");
        c.args(["-x", "-LLL", "-b", PEOPLE_DN, "-s", "one", "cn"]);
        match run_limited(c, b"", Duration::from_secs(3)) {
            Ok(Some((st, out))) if st.success() => {
                Some(out.lines().filter_map(|l| l.strip_prefix("cn: ")).map(str::to_string).collect())
            }
            _ => None,
        }
    }
}

/// An acknowledged write: the entry and when ldapadd returned 0.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The entry's `cn`.
    pub cn: String,
    /// When it was sent (since the traffic started).
    pub sent: Duration,
    /// When the acknowledgement came back.
    pub at: Duration,
}

/// A writer loop: adds `<prefix><n>` through `endpoint` every `period` and records each
/// acknowledgement.
#[derive(Debug)]
struct Loop {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Ack>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    fn start(lab: &Lab, endpoint: Endpoint, prefix: String, period: Duration, t0: Instant) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        // The closure needs the lab only to build `ip netns exec <client ns>` commands.
        let ns = lab.netns("client").to_string();
        let (stop2, acks2) = (Arc::clone(&stop), Arc::clone(&acks));
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let next = Instant::now() + period;
                n += 1;
                let cn = format!("{prefix}{n}");
                let sent = t0.elapsed();
                let ok = match &endpoint {
                    Endpoint::Vip => add_in_ns(&ns, &cn),
                    Endpoint::Local(h) => {
                        let mut c = Command::new("ldapadd");
                        c.args(["-H", &h.ldapi(), "-x", "-D", ROOT_DN, "-w", ROOT_PW]);
                        matches!(run_limited(c, entry_ldif(&cn).as_bytes(), Duration::from_secs(2)), Ok(Some((st, _))) if st.success())
                    }
                };
                if ok {
                    if let Ok(mut a) = acks2.lock() {
                        a.push(Ack { cn, sent, at: t0.elapsed() });
                    }
                }
                if let Some(rest) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(rest); // pacing of the load, not synchronisation
                }
            }
        });
        Loop { stop, acks, handle: Some(handle) }
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().map(|a| a.clone()).unwrap_or_default()
    }

    fn finish(&mut self) -> Vec<Ack> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        self.acks()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        self.finish();
    }
}

fn add_in_ns(ns: &str, cn: &str) -> bool {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "ldapadd", "-H", &format!("ldap://{VIP}/"), "-o", "nettimeout=1"]);
    c.args(["-x", "-D", ROOT_DN, "-w", ROOT_PW]);
    matches!(run_limited(c, entry_ldif(cn).as_bytes(), Duration::from_secs(2)), Ok(Some((st, _))) if st.success())
}

/// The load during a fault: the client's writer through the VIP and the two-writers probe on
/// each server (through its own slapd's local socket).
#[derive(Debug)]
pub struct Traffic {
    /// Time zero of every [`Ack`].
    pub t0: Instant,
    client: Loop,
    probes: BTreeMap<String, Loop>,
}

/// The client's writes come every this long; the probes' every [`PROBE_PERIOD`].
pub const CLIENT_PERIOD: Duration = Duration::from_millis(200);
/// The probe's period on each server.
pub const PROBE_PERIOD: Duration = Duration::from_millis(100);

impl Traffic {
    /// Starts the writer and the probes.
    pub fn start(lab: &Lab, stack: &Stack) -> Traffic {
        let t0 = Instant::now();
        let client = Loop::start(lab, Endpoint::Vip, "c".into(), CLIENT_PERIOD, t0);
        let probes = SERVERS
            .iter()
            .map(|n| {
                let l = Loop::start(lab, Endpoint::Local(stack.host(n)), format!("p-{n}-"), PROBE_PERIOD, t0);
                (n.to_string(), l)
            })
            .collect();
        Traffic { t0, client, probes }
    }

    /// The client's acknowledged writes so far.
    pub fn client_acks(&self) -> Vec<Ack> {
        self.client.acks()
    }

    /// Waits until the client has `n` more acknowledgements than now.
    pub fn wait_client_acks(&self, n: usize, limit: Duration) -> anyhow::Result<()> {
        let have = self.client.acks().len();
        wait::until(limit, "client writes acknowledged through the VIP", || self.client.acks().len() >= have + n)?;
        Ok(())
    }

    /// Stops everything; returns the client's acks and each probe's.
    pub fn finish(mut self) -> (Vec<Ack>, BTreeMap<String, Vec<Ack>>) {
        let c = self.client.finish();
        let p = self.probes.iter_mut().map(|(n, l)| (n.clone(), l.finish())).collect();
        (c, p)
    }
}

/// Runs of acknowledgements: consecutive acks closer than `gap` form one period of serving,
/// `[first, last]`.
pub fn serving_periods(acks: &[Ack], gap: Duration) -> Vec<(Duration, Duration)> {
    let mut at: Vec<Duration> = acks.iter().map(|a| a.at).collect();
    at.sort();
    let mut out: Vec<(Duration, Duration)> = Vec::new();
    for t in at {
        match out.last_mut() {
            Some((_, end)) if t.saturating_sub(*end) < gap => *end = t,
            _ => out.push((t, t)),
        }
    }
    out
}

/// Two writers: a period in which `a` acknowledged writes overlaps one in which `b` did (each
/// ack was sent after the previous one of its loop returned, so a server's periods are when it
/// was taking writes). Returns the overlapping spans.
pub fn two_writers(a: &[Ack], b: &[Ack], gap: Duration) -> Vec<(Duration, Duration)> {
    let (pa, pb) = (serving_periods(a, gap), serving_periods(b, gap));
    let mut out = Vec::new();
    for (s1, e1) in &pa {
        for (s2, e2) in &pb {
            let (s, e) = ((*s1).max(*s2), (*e1).min(*e2));
            if s <= e {
                out.push((s, e));
            }
        }
    }
    out
}

/// One column of the comparison: the failover machinery on main and backup.
pub trait Failover {
    /// Short name for the results table.
    fn name(&self) -> &'static str;
    /// Starts the column's daemons (main first, then backup; and a witness if it has one) on a
    /// prepared stack, and waits until main serves.
    fn start(&mut self, lab: &Lab, stack: &mut Stack) -> anyhow::Result<()>;
    /// Pids of the failover daemon's processes on `host` (for kill -9 and SIGSTOP).
    fn pids(&self, host: &str) -> Vec<i32>;
    /// kill -9 of the failover daemon on `host`, by pid.
    fn kill9(&mut self, host: &str) -> anyhow::Result<()>;
    /// Stops the witness; `false` if the column has none.
    fn stop_witness(&mut self) -> anyhow::Result<bool>;
    /// A planned move of the service away from `host`, the column's way.
    fn switchover(&mut self, lab: &Lab, stack: &Stack, host: &str) -> anyhow::Result<()>;
    /// A short description of the column's state (roles, VIP, services), for the table.
    fn describe(&self, lab: &Lab, stack: &Stack) -> String;
    /// The replication link's peer timeout this column's timing wants (1 s by default).
    fn peer_timeout(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// The faults of issue 15, applicable to either column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of the failover daemon on main.
    Kill9,
    /// SIGSTOP of every process of the stack on main for longer than the lease, then SIGCONT.
    Freeze,
    /// main isolated (all links down), then rejoined.
    Isolate,
    /// main cut off with its links up (a switch fault: its ports leave the bridges, so packets
    /// are lost and the carrier stays), then reconnected.
    Partition,
    /// only the replication link cut, then healed.
    ReplCut,
    /// only the management link cut, then healed.
    MgmtCut,
    /// the witness stopped, then main isolated, then rejoined.
    WitnessDownIsolate,
    /// slapd cannot start on backup (its configuration broken), then a planned switchover away
    /// from main.
    ServiceFailsOnBackup,
}

impl Fault {
    /// Every fault, in the order of the results table.
    pub const ALL: [Fault; 8] = [
        Fault::Kill9,
        Fault::Freeze,
        Fault::Isolate,
        Fault::Partition,
        Fault::ReplCut,
        Fault::MgmtCut,
        Fault::WitnessDownIsolate,
        Fault::ServiceFailsOnBackup,
    ];

    /// The table's wording.
    pub fn label(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9 of the failover daemon on main",
            Fault::Freeze => "SIGSTOP of main's stack for 6 s (> lease 3 s), then SIGCONT",
            Fault::Isolate => "main isolated (all links down) 6 s, then rejoined",
            Fault::Partition => "main partitioned 6 s with its links up (switch fault), then reconnected",
            Fault::ReplCut => "only the replication link cut 6 s",
            Fault::MgmtCut => "only the management link cut 6 s",
            Fault::WitnessDownIsolate => "witness down, then main isolated 6 s",
            Fault::ServiceFailsOnBackup => "slapd fails to start on backup; planned switchover from main",
        }
    }
}

/// How long a cut or isolation lasts.
pub const CUT: Duration = Duration::from_secs(6);
/// How long main stays frozen (longer than [`LEASE`]).
pub const FREEZE: Duration = Duration::from_secs(6);
/// How long the traffic keeps running after the fault is healed.
pub const AFTER_HEAL: Duration = Duration::from_secs(7);
/// Gap between acks that ends a serving period (a few probe periods).
pub const PERIOD_GAP: Duration = Duration::from_millis(450);

/// What one fault did to one column.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The fault.
    pub fault: Fault,
    /// The column's state after the fault was healed ([`Failover::describe`]).
    pub state: String,
    /// The server the client's neighbour entry for the VIP points at, at the end.
    pub served_by: Option<String>,
    /// Spans in which both servers acknowledged probe writes.
    pub two_writers: Vec<(Duration, Duration)>,
    /// Probe writes each server acknowledged.
    pub probe_acks: BTreeMap<String, usize>,
    /// Client entries acknowledged in total.
    pub acknowledged: usize,
    /// Acknowledged client entries missing through the VIP at the end; `None` if the VIP did not
    /// answer.
    pub lost: Option<Vec<String>>,
    /// From the fault to the client's first successful read (through the VIP) of its last entry
    /// acknowledged before the fault, if any within the window; after a fault that must move the
    /// service (kill -9, freeze, isolation, partition), served by backup.
    pub first_read: Option<Duration>,
    /// The fault's wall-clock time (Unix seconds), to compare with the daemons' status.
    pub fault_unix: f64,
    /// How long the lab and the volume took to prepare, and until the traffic ran (the column
    /// started).
    pub setup: (Duration, Duration),
    /// A replication log said "split brain detected".
    pub split_brain: bool,
    /// A promotion was refused because the peer was Primary (a log said so).
    pub promote_refused: bool,
    /// How long the teardown took, and what it could not undo cleanly.
    pub teardown: (Duration, Vec<String>),
    /// The tail of each server's logs at the end (glue scripts, replication, failover daemon).
    pub logs: String,
    /// Whether the client read its last acknowledged entry (of the whole run) through the VIP at
    /// the end.
    pub reads_last: bool,
    /// The longest stretch without an acknowledged client write, from the fault to the end.
    pub longest_write_gap: Duration,
    /// Client writes acknowledged after the heal (the service works at the end).
    pub acks_after_heal: usize,
}

impl Outcome {
    /// One row of the Markdown table: fault, what the column did, two writers, lost, first read,
    /// longest write gap.
    pub fn row(&self) -> String {
        let tw = if self.two_writers.is_empty() {
            "no".to_string()
        } else {
            let total: f64 = self.two_writers.iter().map(|(s, e)| (*e - *s).as_secs_f64()).sum();
            format!("**yes** ({} span(s), {total:.1} s)", self.two_writers.len())
        };
        let lost = match &self.lost {
            Some(l) if l.is_empty() => format!("0 of {}", self.acknowledged),
            Some(l) => format!("**{} of {}**", l.len(), self.acknowledged),
            None => format!("? (VIP does not answer; {} acknowledged)", self.acknowledged),
        };
        let read = match self.first_read {
            Some(d) => format!("{:.2} s", d.as_secs_f64()),
            None => "never (in the window)".into(),
        };
        let by = self.served_by.as_deref().unwrap_or("nobody");
        let last = if self.reads_last { "yes" } else { "**no**" };
        let mut events = String::new();
        if self.promote_refused {
            events.push_str("; a promote refused (peer Primary)");
        }
        if self.split_brain {
            events.push_str("; split brain detected");
        }
        format!(
            "| {} | {}; client's VIP → {by}{events} | {tw} | {lost} | {read} | {last} | {:.1} s; {} after heal |",
            self.fault.label(),
            self.state.replace('|', "/"),
            self.longest_write_gap.as_secs_f64(),
            self.acks_after_heal
        )
    }
}

/// What the columns of [`TABLE_HEADER`] mean, for under the table.
pub const TABLE_LEGEND: &str = "State at the end: each server's replication role/connection, whether it holds the VIP \
and runs slapd, after the fault was healed and the traffic stopped; \"client's VIP →\" is the server the client's \
neighbour entry for the VIP points at. Two writers: the probes on main and backup (writes through each server's own \
slapd every 100 ms) acknowledged writes in overlapping periods. Lost: client entries acknowledged (ldapadd exit 0) but \
missing when the client lists them through the VIP at the end (\"?\" when nothing answers there). Fault → first read: \
until the client first reads, through the VIP, the last entry acknowledged before the fault (a few ms: the fault did \
not interrupt the server it was on). Longest gap: the longest time without an acknowledged client write from the fault \
to the end of the window, i.e. the outage the client saw; \"after heal\" counts client writes acknowledged after the \
heal (for kill -9 and the switchover: after the fault).";

/// The server whose MAC the client's neighbour entry for the VIP holds.
pub fn vip_holder(lab: &Lab) -> Option<String> {
    let mac = |host: &str| -> Option<String> {
        let o = lab.run(host, &["ip", "-o", "link", "show", "dev", "mgmt"]).ok()?;
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let mut words = text.split_whitespace();
        words.find(|w| *w == "link/ether")?;
        words.next().map(str::to_string)
    };
    let o = lab.run("client", &["ip", "neigh", "show", VIP, "dev", "mgmt"]).ok()?;
    let neigh = String::from_utf8_lossy(&o.stdout).into_owned();
    SERVERS.iter().find(|n| mac(n).is_some_and(|m| neigh.contains(&m))).map(|n| n.to_string())
}

/// The header of [`Outcome::row`]'s table.
pub const TABLE_HEADER: &str = "| fault | state at the end | two writers | lost acknowledged entries | fault → first read of the last entry acknowledged before it | client reads its last acknowledged entry at the end | longest gap in client writes; client writes acknowledged after the heal |\n|---|---|---|---|---|---|---|";

/// The loop devices (`/dev/loopN`) whose backing file lies under `dir`.
pub fn loops_backed_under(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else { return Vec::new() };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = std::fs::read_to_string(e.path().join("loop").join("backing_file")) else { continue };
        if Path::new(backing.trim()).starts_with(dir) {
            found.push(format!("/dev/{name}"));
        }
    }
    found.sort();
    found
}

/// Takes `host`'s ports out of the LANs' bridges (`cut`) or puts them back. The links stay up on
/// both ends, so the host sees no carrier change (unlike [`Lab::isolate`]): what a switch fault or
/// a firewall mistake does. Relies on the lab's naming (`<lab id>-sw-<lan>`, bridge `br0`, port
/// named after the host) and fails if that changes.
pub fn partition(lab: &Lab, host_name: &str, cut: bool) -> anyhow::Result<()> {
    let lans: &[&str] = if host(host_name).and_then(|h| h.repl).is_some() { &["mgmt", "repl"] } else { &["mgmt"] };
    for lan in lans {
        let sw = format!("{}-sw-{lan}", lab.id());
        let port: String = host_name.chars().take(15).collect();
        let mut argv = vec!["-n", sw.as_str(), "link", "set", "dev", port.as_str()];
        argv.extend_from_slice(if cut { &["nomaster"][..] } else { &["master", "br0"][..] });
        let out = Command::new("ip").args(&argv).stdin(Stdio::null()).output().context("running ip")?;
        ensure!(out.status.success(), "ip {}: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Runs `fault` against a fresh lab and stack with the column `make()` builds, and measures it.
/// The column is dropped (its daemons stopped) before the stack is torn down and the lab removed.
pub fn run_fault(fault: Fault, make: &mut dyn FnMut() -> Box<dyn Failover>) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let lab = crate::reference()?;
    let mut column = make();
    let mut stack = Stack::new(&lab)?;
    stack.set_peer_timeout(column.peer_timeout())?;
    stack.prepare(&lab).context("preparing the volume")?;
    if fault == Fault::ServiceFailsOnBackup {
        // A typo an admin could make on one host only: slapd refuses the file.
        let conf = stack.host("backup").slapd_conf();
        let text = std::fs::read_to_string(&conf)?;
        std::fs::write(&conf, text.replace("database mdb", "database mbd"))?;
    }
    let prepared = started.elapsed();
    column.start(&lab, &mut stack).with_context(|| format!("starting {}\n{}", column.name(), stack.logs()))?;
    let traffic = Traffic::start(&lab, &stack);
    traffic
        .wait_client_acks(5, Duration::from_secs(15))
        .with_context(|| format!("before the fault\n{}", stack.logs()))?;
    let setup = started.elapsed();
    let last_before = traffic.client_acks().last().map(|a| a.cn.clone()).context("no acknowledged entry")?;
    let fault_at = traffic.t0.elapsed();
    let t_fault = Instant::now();
    let fault_unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let moves = matches!(fault, Fault::Kill9 | Fault::Freeze | Fault::Isolate | Fault::Partition);
    let mut frozen = Vec::new();
    match fault {
        Fault::Kill9 => column.kill9("main")?,
        Fault::Freeze => {
            frozen = column.pids("main");
            frozen.extend(stack.pids("main"));
            signal(&frozen, "STOP");
        }
        Fault::Isolate => lab.isolate("main")?,
        Fault::Partition => partition(&lab, "main", true)?,
        Fault::ReplCut => lab.cut("main", "repl")?,
        Fault::MgmtCut => lab.cut("main", "mgmt")?,
        Fault::WitnessDownIsolate => {
            column.stop_witness()?;
            lab.isolate("main")?;
        }
        Fault::ServiceFailsOnBackup => column.switchover(&lab, &stack, "main")?,
    }
    // The reader: the client's last entry acknowledged before the fault, through the VIP.
    let hold = match fault {
        Fault::Freeze => FREEZE,
        Fault::Kill9 | Fault::ServiceFailsOnBackup => Duration::ZERO,
        _ => CUT,
    };
    let mut first_read = None;
    let heal_at = t_fault + hold;
    let mut healed = hold.is_zero();
    let end = t_fault + hold + AFTER_HEAL;
    while Instant::now() < end {
        if !healed && Instant::now() >= heal_at {
            match fault {
                Fault::Freeze => signal(&frozen, "CONT"),
                Fault::Isolate | Fault::WitnessDownIsolate => lab.rejoin("main")?,
                Fault::Partition => partition(&lab, "main", false)?,
                Fault::ReplCut => lab.heal("main", "repl")?,
                Fault::MgmtCut => lab.heal("main", "mgmt")?,
                _ => {}
            }
            healed = true;
        }
        // After a fault that must move the service, a read counts once the client's neighbour
        // entry points at backup: main's slapd may still answer reads from its cache after
        // its failover daemon was killed, which is no recovery.
        if first_read.is_none()
            && (!moves || vip_holder(&lab).as_deref() == Some("backup"))
            && Endpoint::Vip.has(&lab, &last_before)
        {
            first_read = Some(t_fault.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20)); // the reader's pace
    }
    if !healed {
        signal(&frozen, "CONT");
    }
    let heal_time = fault_at + hold;
    let end_at = traffic.t0.elapsed();
    let (client, probes) = traffic.finish();
    let state = column.describe(&lab, &stack);
    let served_by = vip_holder(&lab);
    // The client's last acknowledged entry of the whole run, read back through the VIP.
    let last_entry = client.last().map(|a| a.cn.clone());
    let reads_last = last_entry.as_ref().is_some_and(|cn| {
        wait::until(Duration::from_secs(3), "the last acknowledged entry through the VIP", || {
            Endpoint::Vip.has(&lab, cn)
        })
        .is_ok()
    });
    let present = Endpoint::Vip.list(&lab);
    let lost = present.map(|p| client.iter().filter(|a| !p.contains(&a.cn)).map(|a| a.cn.clone()).collect());
    let empty = Vec::new();
    let two = two_writers(probes.get("main").unwrap_or(&empty), probes.get("backup").unwrap_or(&empty), PERIOD_GAP);
    let mut last = fault_at;
    let mut gap = Duration::ZERO;
    for a in client.iter().filter(|a| a.at >= fault_at) {
        gap = gap.max(a.at - last);
        last = a.at;
    }
    gap = gap.max(end_at.saturating_sub(last));
    let acks_after_heal = client.iter().filter(|a| a.sent >= heal_time).count();
    let probe_acks = probes.iter().map(|(n, a)| (n.clone(), a.len())).collect();
    let logs = stack.logs();
    let split_brain = stack.log_contains("split brain detected");
    let promote_refused = stack.log_contains("two primaries are never allowed");
    // Stop the column's daemons first, so that nothing restarts the stack during the teardown.
    drop(column);
    let t = Instant::now();
    let mut left: Vec<String> = Vec::new();
    for n in SERVERS.iter().rev() {
        left.extend(stack.teardown(n).into_iter().map(|l| format!("{n}: {l}")));
        stack.stop_repl(n);
    }
    let teardown = (t.elapsed(), left);
    Ok(Outcome {
        fault,
        teardown,
        state,
        served_by,
        two_writers: two,
        probe_acks,
        acknowledged: client.len(),
        lost,
        first_read,
        fault_unix,
        reads_last,
        logs,
        split_brain,
        promote_refused,
        setup: (prepared, setup),
        longest_write_gap: gap,
        acks_after_heal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acks(times: &[u64]) -> Vec<Ack> {
        times
            .iter()
            .map(|t| Ack { cn: format!("x{t}"), sent: Duration::from_millis(*t), at: Duration::from_millis(*t) })
            .collect()
    }

    #[test]
    fn a_clean_handover_is_not_two_writers() {
        let main = acks(&[0, 100, 200, 300]);
        let backup = acks(&[900, 1000, 1100]);
        assert!(two_writers(&main, &backup, PERIOD_GAP).is_empty());
    }

    #[test]
    fn interleaved_acks_are_two_writers() {
        let main = acks(&[0, 100, 200, 300, 400, 500]);
        let backup = acks(&[250, 350]);
        assert_eq!(
            two_writers(&main, &backup, PERIOD_GAP),
            vec![(Duration::from_millis(250), Duration::from_millis(350))]
        );
        // A single ack of the other side inside a serving period counts too.
        assert_eq!(two_writers(&main, &acks(&[210]), PERIOD_GAP).len(), 1);
    }

    #[test]
    fn ldapi_urls_are_percent_encoded() {
        assert_eq!(ldapi_url(Path::new("/tmp/a b/ldapi")), "ldapi://%2Ftmp%2Fa%20b%2Fldapi");
    }
}
