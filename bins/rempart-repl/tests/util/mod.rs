//! Shared setup for the `rempart-repl` integration tests: a pair of real daemons in network
//! namespaces ([`NsPair`]), qemu-io / qemu-img as the NBD client, nbdfuse and mount helpers
//! that clean up after themselves.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rempart_testkit::{wait, Lab, Proc};
use serde_json::Value;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_rempart-repl");
pub(crate) const SIZE: u64 = 32 << 20;
pub(crate) const SECRET: &str = "correct horse battery staple";

/// Runs `argv`, asserts success, returns stdout + stderr.
pub(crate) fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{argv:?}: {text}");
    text
}

/// Runs qemu-io against `url` with the given commands; `Err(output)` if it failed or a pattern
/// did not verify.
pub(crate) fn qemu_io(url: &str, cmds: &[&str]) -> Result<String, String> {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for x in cmds {
        c.args(["-c", x]);
    }
    let out = c.arg(url).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && !text.contains("Pattern verification failed") && !text.contains("error") {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Whether two raw images have the same contents (`qemu-img compare`).
pub(crate) fn images_identical(a: &Path, b: &Path) -> bool {
    Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap()
        .status
        .success()
}

/// Undo list for mounts and loop devices, run in reverse on drop (also on panic).
pub(crate) struct Cleanup(pub Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for argv in self.0.iter().rev() {
            let _ = Command::new(&argv[0]).args(&argv[1..]).output();
        }
    }
}

pub(crate) fn is_mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*dir)))
        .unwrap_or(false)
}

/// nbdfuse serving an export as a file; unmounted and stopped on drop, also on panic.
/// `losetup -d` releases the loop device asynchronously, so the first `fusermount3 -u` can fail
/// with EBUSY (a single attempt once left nbdfuse running and the test waiting on it forever):
/// retry until the mount is gone, then kill nbdfuse by pid and unmount lazily if it still is not.
pub(crate) struct NbdFuse {
    pub(crate) child: Child,
    pub(crate) dir: PathBuf,
}

impl NbdFuse {
    /// Exposes `url` as `dir/nbd` and waits until the file has the volume's size.
    pub(crate) fn start(dir: &Path, url: &str) -> NbdFuse {
        std::fs::create_dir_all(dir).unwrap();
        let child =
            Command::new("nbdfuse").arg(dir).arg(url).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let f = NbdFuse { child, dir: dir.to_path_buf() };
        let dev = f.file();
        wait::until(Duration::from_secs(10), "nbdfuse file", || {
            std::fs::metadata(&dev).map(|m| m.len() == SIZE).unwrap_or(false)
        })
        .unwrap();
        f
    }

    pub(crate) fn file(&self) -> PathBuf {
        self.dir.join("nbd")
    }
}

impl Drop for NbdFuse {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        let _ = wait::until(Duration::from_secs(10), "FUSE unmount", || {
            let _ = Command::new("fusermount3").args(["-u", &dir]).output();
            !is_mounted(&self.dir)
        });
        let _ = wait::until(Duration::from_secs(5), "nbdfuse exit", || matches!(self.child.try_wait(), Ok(Some(_))));
        let _ = self.child.kill();
        let _ = self.child.wait();
        if is_mounted(&self.dir) {
            let _ = Command::new("fusermount3").args(["-u", "-z", &dir]).output();
        }
    }
}

/// Two `rempart-repl` daemons, `main` (192.168.56.10) and `backup` (192.168.56.20), in their own
/// network namespaces joined by a veth link that [`NsPair::cut`] pulls. Each serves NBD on a
/// unix socket in the test directory (reachable from the test, which stays in the root
/// namespace). Dropping the pair kills the daemons and removes the namespaces.
pub(crate) struct NsPair {
    pub(crate) dir: tempfile::TempDir,
    lab: Lab,
    procs: [Option<Proc>; 2],
}

pub(crate) const HOSTS: [&str; 2] = ["main", "backup"];

fn idx(n: &str) -> usize {
    usize::from(n == "backup")
}

impl NsPair {
    /// A fresh pair (metadata created, daemons running). `backup_secret` differs from main's
    /// to test authentication; `extra` goes into `[resource]`.
    pub(crate) fn new(backup_secret: &str, extra: &str) -> NsPair {
        let mut lab = Lab::new().unwrap();
        lab.add_host("main").unwrap();
        lab.add_host("backup").unwrap();
        lab.link("main", "backup", "192.168.56.10/24", "192.168.56.20/24").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("main.secret"), format!("{SECRET}\n")).unwrap();
        std::fs::write(d.join("backup.secret"), backup_secret).unwrap();
        for n in HOSTS {
            let cfg = format!(
                "[resource]\nname = \"r0\"\nprotocol = \"C\"\nsecret-file = \"{n}.secret\"\n\
                 after-sb-0pri = \"disconnect\"\npeer-timeout-ms = 1000\n{extra}\n\n\
                 [[node]]\nname = \"main\"\naddress = \"192.168.56.10:7789\"\ndisk = \"main.img\"\nnbd = \"unix:{m}\"\n\n\
                 [[node]]\nname = \"backup\"\naddress = \"192.168.56.20:7789\"\ndisk = \"backup.img\"\nnbd = \"unix:{b}\"\n",
                m = d.join("main.nbd").display(),
                b = d.join("backup.nbd").display(),
            );
            std::fs::write(d.join(format!("{n}.toml")), cfg).unwrap();
            std::fs::File::create(d.join(format!("{n}.img"))).unwrap().set_len(SIZE).unwrap();
            let out = lab
                .cmd(n, BIN)
                .args(["create-md", "-c"])
                .arg(d.join(format!("{n}.toml")))
                .args(["--node", n])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        let mut p = NsPair { dir, lab, procs: [None, None] };
        p.start("main");
        p.start("backup");
        p
    }

    pub(crate) fn img(&self, n: &str) -> PathBuf {
        self.dir.path().join(format!("{n}.img"))
    }

    pub(crate) fn run_dir(&self, n: &str) -> PathBuf {
        self.dir.path().join(format!("run-{n}"))
    }

    /// NBD URL of node `n` (a unix socket).
    pub(crate) fn url(&self, n: &str) -> String {
        format!("nbd+unix:///r0?socket={}", self.dir.path().join(format!("{n}.nbd")).display())
    }

    /// Starts (or restarts) the daemon of `n` in its namespace and waits for its control socket.
    pub(crate) fn start(&mut self, n: &str) {
        let d = self.dir.path();
        let sock = self.run_dir(n).join("repl.ctl");
        let _ = std::fs::remove_file(&sock); // stale after a kill -9
        let mut c = self.lab.cmd(n, BIN);
        c.args(["run", "-c"]).arg(d.join(format!("{n}.toml"))).args(["--node", n, "--run-dir"]).arg(self.run_dir(n));
        c.env("RUST_LOG", "info").stdout(Stdio::null());
        c.stderr(std::fs::OpenOptions::new().create(true).append(true).open(d.join(format!("{n}.log"))).unwrap());
        self.procs[idx(n)] = Some(self.lab.spawn(n, c).unwrap());
        if let Err(e) = wait::until(Duration::from_secs(10), "control socket", || sock.exists()) {
            panic!("{n}: {e}\n{}", self.logs());
        }
    }

    /// `kill -9` of the daemon of `n` (by pid).
    pub(crate) fn kill9(&mut self, n: &str) {
        if let Some(mut p) = self.procs[idx(n)].take() {
            p.kill();
        }
    }

    /// Runs a control command on `n`: (success, output).
    pub(crate) fn ctl(&self, n: &str, args: &[&str]) -> (bool, String) {
        let out = self.lab.cmd(n, BIN).args(args).arg("--run-dir").arg(self.run_dir(n)).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    pub(crate) fn ok(&self, n: &str, args: &[&str]) -> String {
        let (ok, text) = self.ctl(n, args);
        assert!(ok, "{n} {args:?} failed: {text}\n{}", self.logs());
        text
    }

    pub(crate) fn status(&self, n: &str) -> Value {
        let (ok, text) = self.ctl(n, &["status", "--json"]);
        if !ok {
            return Value::Null;
        }
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    pub(crate) fn logs(&self) -> String {
        let mut s = String::new();
        for n in HOSTS {
            let l = std::fs::read_to_string(self.dir.path().join(format!("{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = l.lines().rev().take(15).collect();
            s.push_str(&format!("--- {n}.log (last lines, newest first)\n{}\n", tail.join("\n")));
        }
        s
    }

    pub(crate) fn wait(&self, n: &str, what: &str, secs: u64, f: impl Fn(&Value) -> bool) {
        if let Err(e) = wait::until(Duration::from_secs(secs), what, || f(&self.status(n))) {
            panic!("{n}: {e}: main={} backup={}\n{}", self.status("main"), self.status("backup"), self.logs());
        }
    }

    pub(crate) fn wait_synced(&self) {
        for n in HOSTS {
            self.wait(n, "in sync", 30, |s| {
                s["replication"] == "Established"
                    && s["disk"] == "UpToDate"
                    && s["peer"]["disk"] == "UpToDate"
                    && s["out_of_sync_bytes"] == 0
            });
        }
    }

    /// Connected, `main` forced Primary, initial sync done.
    pub(crate) fn primary_synced(&self) {
        self.wait("main", "connected", 10, |s| s["connection"] == "Connected");
        self.ok("main", &["primary", "--force"]);
        self.wait_synced();
    }

    pub(crate) fn io(&self, n: &str, cmds: &[&str]) -> String {
        qemu_io(&self.url(n), cmds).unwrap_or_else(|e| panic!("qemu-io {cmds:?} on {n}: {e}\n{}", self.logs()))
    }

    pub(crate) fn identical(&self) -> bool {
        images_identical(&self.img("main"), &self.img("backup"))
    }

    /// Pulls the replication cable (both directions), or plugs it back.
    pub(crate) fn cut(&self) {
        self.lab.cut("main", "backup").unwrap();
    }

    pub(crate) fn heal(&self) {
        self.lab.heal("main", "backup").unwrap();
    }
}

pub(crate) fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// An interactive `qemu-io` session: one NBD connection held open (DRBD's "opener") while the
/// test sends commands one at a time. Killed on drop.
pub(crate) struct QemuIo {
    child: Child,
    stdin: std::process::ChildStdin,
    out: std::sync::Arc<std::sync::Mutex<String>>,
}

impl QemuIo {
    /// Connects to `url` and waits until a first read went through (the client is in its
    /// transmission phase).
    pub(crate) fn open(url: &str) -> QemuIo {
        use std::io::Read;
        let mut child = Command::new("qemu-io")
            .args(["-f", "raw", url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for mut r in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = r.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let mut q = QemuIo { child, stdin, out };
        let got = q.run("read 0 4k", "read 4096/4096 bytes");
        assert!(got, "qemu-io could not read through {url}: {}", q.output());
        q
    }

    /// Sends one command; `true` once `expect` appears in the output, `false` if the output
    /// shows an error (or nothing came within 10 s).
    pub(crate) fn run(&mut self, cmd: &str, expect: &str) -> bool {
        use std::io::Write;
        let start = self.output().len();
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
        let mut ok = false;
        let _ = wait::until(Duration::from_secs(10), cmd, || {
            let o = self.output();
            let new = &o[start..];
            ok = new.contains(expect);
            ok || new.contains("error") || new.contains("failed")
        });
        ok
    }

    pub(crate) fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
