//! Two real `rempart-repl` processes on loopback with the testkit `FaultProxy` on the replication
//! link, and qemu-io / qemu-img as the NBD client.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rempart_testkit::proxy::{FaultProxy, Mode};
use rempart_testkit::wait;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rempart-repl");
const SIZE: u64 = 32 << 20;

/// A free port below the ephemeral range (32768+), so that no outgoing connection (e.g. the proxy
/// retrying towards a daemon that is down) can take it as its source port, or self-connect on it.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20000 + (std::process::id() % 500) as u16 * 20;
    loop {
        let p = base + NEXT.fetch_add(1, Ordering::Relaxed) % 10000;
        let p = 20000 + (p - 20000) % 11000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 1000)).is_ok() {
            return p;
        }
    }
}

struct Node {
    name: &'static str,
    run_dir: PathBuf,
    img: PathBuf,
    nbd: u16,
    metrics: u16,
    child: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Pair {
    dir: tempfile::TempDir,
    cfg: PathBuf,
    main: Node,
    backup: Node,
    proxy: FaultProxy,
}

impl Pair {
    /// `backup_secret` differs from main's to test authentication.
    fn new(backup_secret: &str, policy: &str) -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let (pm, pb) = (free_port(), free_port());
        let main_addr: SocketAddr = format!("127.0.0.1:{pm}").parse().unwrap();
        // "backup" sorts first, so backup dials main: through the proxy.
        let proxy = FaultProxy::start("127.0.0.1:0".parse().unwrap(), main_addr).unwrap();
        let mk = |name: &'static str| {
            let img = dir.path().join(format!("{name}.img"));
            std::fs::File::create(&img).unwrap().set_len(SIZE).unwrap();
            Node {
                name,
                run_dir: dir.path().join(format!("run-{name}")),
                img,
                nbd: free_port(),
                metrics: free_port(),
                child: None,
            }
        };
        let main = mk("main");
        let backup = mk("backup");
        let cfg_text = format!(
            r#"
[resource]
name = "r0"
protocol = "C"
secret-file = "SECRET"
after-sb-0pri = "{policy}"
peer-timeout-ms = 1000
checksum-resync = true

[[node]]
name = "main"
address = "127.0.0.1:{pm}"
disk = "main.img"
nbd = "127.0.0.1:{}"

[[node]]
name = "backup"
address = "127.0.0.1:{pb}"
disk = "backup.img"
nbd = "127.0.0.1:{}"
"#,
            main.nbd, backup.nbd
        );
        // One config per node, differing only by the secret file.
        std::fs::write(dir.path().join("main.secret"), "correct horse battery staple\n").unwrap();
        std::fs::write(dir.path().join("backup.secret"), backup_secret).unwrap();
        std::fs::write(dir.path().join("main.toml"), cfg_text.replace("SECRET", "main.secret")).unwrap();
        std::fs::write(dir.path().join("backup.toml"), cfg_text.replace("SECRET", "backup.secret")).unwrap();
        let cfg = dir.path().join("main.toml");
        let mut p = Pair { dir, cfg, main, backup, proxy };
        for n in ["main", "backup"] {
            let out = Command::new(BIN)
                .args(["create-md", "-c"])
                .arg(p.dir.path().join(format!("{n}.toml")))
                .args(["--node", n])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        p.start("main");
        p.start("backup");
        p
    }

    fn node(&mut self, n: &str) -> &mut Node {
        if n == "main" {
            &mut self.main
        } else {
            &mut self.backup
        }
    }

    fn start(&mut self, n: &str) {
        let cfg = self.dir.path().join(format!("{n}.toml"));
        let log = std::fs::File::create(self.dir.path().join(format!("{n}.log"))).unwrap();
        let proxy = self.proxy.local_addr().to_string();
        let node = self.node(n);
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "-c"]).arg(&cfg).args(["--node", node.name, "--run-dir"]).arg(&node.run_dir);
        if node.name == "backup" {
            cmd.args(["--peer-address", &proxy]);
        }
        cmd.args(["--metrics-listen", &format!("127.0.0.1:{}", node.metrics)]);
        cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log);
        let sock = node.run_dir.join("repl.ctl");
        let _ = std::fs::remove_file(&sock); // stale after a kill -9
        node.child = Some(cmd.spawn().unwrap());
        if let Err(e) = wait::until(Duration::from_secs(10), "control socket", || sock.exists()) {
            panic!("{n}: {e}\n{}", self.logs());
        }
    }

    fn kill9(&mut self, n: &str) {
        let node = self.node(n);
        if let Some(mut c) = node.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn ctl(&self, n: &str, args: &[&str]) -> (bool, String) {
        let node = if n == "main" { &self.main } else { &self.backup };
        let out = Command::new(BIN).args(args).arg("--run-dir").arg(&node.run_dir).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    fn ok(&self, n: &str, args: &[&str]) -> String {
        let (ok, text) = self.ctl(n, args);
        assert!(ok, "{n} {args:?} failed: {text}\n{}", self.logs());
        text
    }

    fn status(&self, n: &str) -> Value {
        serde_json::from_str(&self.ok(n, &["status", "--json"])).unwrap()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for n in ["main", "backup"] {
            let l = std::fs::read_to_string(self.dir.path().join(format!("{n}.log"))).unwrap_or_default();
            let tail: Vec<&str> = l.lines().rev().take(15).collect();
            s.push_str(&format!("--- {n}.log (last lines, newest first)\n{}\n", tail.join("\n")));
        }
        s
    }

    fn wait(&self, n: &str, what: &str, secs: u64, f: impl Fn(&Value) -> bool) {
        let r = wait::until(Duration::from_secs(secs), what, || f(&self.status(n)));
        if let Err(e) = r {
            panic!("{e}: main={} backup={}\n{}", self.status("main"), self.status("backup"), self.logs());
        }
    }

    fn wait_synced(&self) {
        for n in ["main", "backup"] {
            self.wait(n, "in sync", 30, |s| {
                s["replication"] == "Established"
                    && s["disk"] == "UpToDate"
                    && s["peer"]["disk"] == "UpToDate"
                    && s["out_of_sync_bytes"] == 0
            });
        }
    }

    fn url(&self, n: &str) -> String {
        let node = if n == "main" { &self.main } else { &self.backup };
        format!("nbd://127.0.0.1:{}/r0", node.nbd)
    }

    fn qemu_io(&self, n: &str, cmds: &[&str]) {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for x in cmds {
            c.args(["-c", x]);
        }
        let out = c.arg(self.url(n)).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success() && !text.contains("Pattern verification failed") && !text.contains("error"),
            "qemu-io {cmds:?} on {n}: {text}\n{}",
            self.logs()
        );
    }

    fn images_identical(&self) -> bool {
        let out = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&self.main.img)
            .arg(&self.backup.img)
            .output()
            .unwrap();
        out.status.success()
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn initial_sync_degraded_writes_bitmap_resync_and_failover() {
    let mut p = Pair::new("correct horse battery staple", "disconnect");
    let _ = &p.cfg;
    // A fresh pair: both Inconsistent, nobody may serve.
    p.wait("main", "connected", 10, |s| s["connection"] == "Connected");
    let (ok, text) = p.ctl("main", &["primary"]);
    assert!(!ok && text.contains("not UpToDate"), "{text}");
    p.ok("main", &["primary", "--force"]);
    p.wait_synced();
    let st = p.ok("main", &["status"]);
    assert_eq!(
        st,
        "r0 role:Primary\n  disk:UpToDate\n  peer role:Secondary\n    replication:Established peer-disk:UpToDate\n"
    );
    // Two primaries are never allowed.
    let (ok, text) = p.ctl("backup", &["primary"]);
    assert!(!ok && text.contains("two primaries"), "{text}");

    p.qemu_io("main", &["write -P 0x11 0 4M", "write -P 0x12 6M 64k", "aio_write -P 0x13 10M 4k", "aio_flush"]);
    p.qemu_io("main", &["read -P 0x11 0 4M", "read -P 0x12 6M 64k"]);
    assert!(p.images_identical(), "replicas differ after replicated writes");

    // Cut the link (peer process looks dead): the Primary keeps serving, degraded.
    p.proxy.set_mode(Mode::Drop);
    p.wait("main", "degraded", 10, |s| s["connection"] != "Connected");
    p.qemu_io("main", &["write -P 0x22 8M 1M", "write -P 0x23 20M 4k"]);
    let before = p.status("main");
    assert_eq!(u(&before, "out_of_sync_bytes"), (1 << 20) + 4096, "{before}");
    let resync_before = u(&before, "resync_bytes");
    assert!(!p.images_identical());
    p.proxy.set_mode(Mode::Forward);
    p.wait_synced();
    let after = p.status("main");
    assert_eq!(
        u(&after, "resync_bytes") - resync_before,
        (1 << 20) + 4096,
        "the resync must move exactly the dirty blocks: {after}"
    );
    assert!(p.images_identical(), "replicas differ after resync");

    // A blackholed link: writes stall at most one peer timeout, then go on degraded.
    p.proxy.set_mode(Mode::Blackhole);
    p.qemu_io("main", &["write -P 0x33 12M 128k"]);
    p.wait("main", "degraded after blackhole", 10, |s| s["connection"] != "Connected");
    p.proxy.set_mode(Mode::Forward);
    p.wait_synced();
    assert!(p.images_identical());

    // Failover: kill -9 the Primary, promote the backup, every acknowledged write reads back.
    p.kill9("main");
    p.wait("backup", "peer gone", 10, |s| s["connection"] != "Connected");
    p.ok("backup", &["primary"]);
    p.qemu_io(
        "backup",
        &[
            "read -P 0x11 0 4M",
            "read -P 0x12 6M 64k",
            "read -P 0x13 10M 4k",
            "read -P 0x22 8M 1M",
            "read -P 0x23 20M 4k",
            "read -P 0x33 12M 128k",
        ],
    );
    p.qemu_io("backup", &["write -P 0x44 16M 256k"]);
    // The old Primary comes back as Secondary and catches up from the backup.
    p.start("main");
    p.wait_synced();
    let m = p.status("main");
    assert_eq!(m["role"], "Secondary", "{m}");
    assert!(p.images_identical(), "replicas differ after failback resync");
}

#[test]
fn wrong_secret_is_refused() {
    let p = Pair::new("not the secret", "disconnect");
    p.wait("main", "authentication failures", 10, |s| s["auth_failures"].as_u64().unwrap_or(0) > 0);
    let s = p.status("main");
    assert_ne!(s["connection"], "Connected", "{s}");
    assert!(p.status("backup")["peer"].is_null());
}

#[test]
fn split_brain_detected_then_repaired_with_discard_my_data() {
    let p = Pair::new("correct horse battery staple", "disconnect");
    p.wait("main", "connected", 10, |s| s["connection"] == "Connected");
    p.ok("main", &["primary", "--force"]);
    p.wait_synced();
    p.qemu_io("main", &["write -P 0x01 0 1M"]);
    p.proxy.set_mode(Mode::Drop);
    p.wait("backup", "disconnected", 10, |s| s["connection"] != "Connected");
    // Both sides write while apart.
    p.ok("backup", &["primary"]);
    p.qemu_io("backup", &["write -P 0x0b 2M 64k"]);
    p.qemu_io("main", &["write -P 0x0a 4M 64k"]);
    p.ok("backup", &["secondary"]);
    p.ok("main", &["secondary"]);
    p.proxy.set_mode(Mode::Forward);
    for n in ["main", "backup"] {
        p.wait(n, "split brain", 10, |s| {
            s["split_brains"].as_u64().unwrap_or(0) >= 1 && s["connection"] == "StandAlone"
        });
    }
    assert!(!p.images_identical());
    // DRBD's manual recovery: the victim discards its data, the survivor reconnects.
    p.ok("backup", &["connect", "--discard-my-data"]);
    p.ok("main", &["connect"]);
    p.wait_synced();
    assert!(p.images_identical(), "replicas differ after split-brain recovery");
    p.ok("main", &["primary"]);
    // The survivor's writes are there, the victim's are gone.
    p.qemu_io("main", &["read -P 0x0a 4M 64k", "read -P 0x01 0 1M", "read -P 0 2M 64k"]);
}

#[test]
fn verify_finds_a_block_corrupted_behind_the_daemon() {
    let p = Pair::new("correct horse battery staple", "disconnect");
    p.wait("main", "connected", 10, |s| s["connection"] == "Connected");
    p.ok("main", &["primary", "--force"]);
    p.wait_synced();
    p.qemu_io("main", &["write -P 0x5a 0 2M"]);
    // Corrupt one 4 KiB block of the backup's disk behind its daemon.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p.backup.img).unwrap();
        f.write_all_at(&[0xff; 4096], 1 << 20).unwrap();
        f.sync_all().unwrap();
    }
    p.ok("main", &["verify"]);
    p.wait("main", "verify done", 30, |s| s["replication"] == "Established" && u(s, "verify_mismatched_blocks") > 0);
    let s = p.status("main");
    assert!(u(&s, "out_of_sync_bytes") > 0, "{s}");
    // The next resync repairs it.
    p.ok("main", &["disconnect"]);
    p.ok("main", &["connect"]);
    p.wait_synced();
    assert!(p.images_identical(), "verify + resync did not repair the block");
}

#[test]
fn documented_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/repl-r0.toml");
    let out = Command::new(BIN).args(["create-md", "-c"]).arg(&path).args(["--node", "nobody"]).output().unwrap();
    // The file parses (the error is about the node name, not the file).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no [[node]] named \"nobody\""), "{err}");
}

/// Undo list for mounts, loop devices and FUSE mounts, run in reverse on drop (also on panic).
struct Cleanup(Vec<Vec<String>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for argv in self.0.iter().rev() {
            let _ = Command::new(&argv[0]).args(&argv[1..]).output();
        }
    }
}

/// nbdfuse serving an export as a file; unmounted and stopped on drop, also on panic. `losetup -d`
/// releases the loop device asynchronously, so the first `fusermount3 -u` can fail with EBUSY (a
/// single attempt once left nbdfuse running and the test waiting on it forever): retry until the
/// mount is gone, then kill nbdfuse by pid and unmount lazily if it still is not.
struct NbdFuse {
    child: Child,
    dir: PathBuf,
}

fn is_mounted(dir: &Path) -> bool {
    let dir = dir.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(&*dir)))
        .unwrap_or(false)
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

fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{argv:?}: {text}");
    text
}

#[test]
fn ext4_made_through_nbdfuse_on_the_primary_checks_clean_on_the_backup_after_failover() {
    if !rempart_testkit::require_root("loop devices, mount and FUSE") {
        return;
    }
    let mut p = Pair::new("correct horse battery staple", "disconnect");
    p.wait("main", "connected", 10, |s| s["connection"] == "Connected");
    p.ok("main", &["primary", "--force"]);
    p.wait_synced();
    let fuse_dir = p.dir.path().join("fuse");
    let mnt = p.dir.path().join("mnt");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let mut undo = Cleanup(Vec::new());
    {
        let fuse = NbdFuse {
            child: Command::new("nbdfuse")
                .arg(&fuse_dir)
                .arg(p.url("main"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            dir: fuse_dir.clone(),
        };
        let dev_file = fuse_dir.join("nbd");
        wait::until(Duration::from_secs(10), "nbdfuse file", || {
            std::fs::metadata(&dev_file).map(|m| m.len() == SIZE).unwrap_or(false)
        })
        .unwrap();
        let loopdev = sh(&["losetup", "-f", "--show", &dev_file.to_string_lossy()]).trim().to_string();
        undo.0.push(vec!["losetup".into(), "-d".into(), loopdev.clone()]);
        sh(&["mkfs.ext4", "-q", "-F", &loopdev]);
        sh(&["mount", &loopdev, &mnt.to_string_lossy()]);
        undo.0.push(vec!["umount".into(), mnt.to_string_lossy().into()]);
        let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        std::fs::write(mnt.join("payload.bin"), &payload).unwrap();
        sh(&["sync"]);
        // Tear down in order: unmount, detach, unmount FUSE.
        drop(std::mem::replace(&mut undo, Cleanup(Vec::new())));
        drop(fuse);
    }
    // Fail over: kill -9 main, promote backup; the filesystem on the backup is clean.
    p.kill9("main");
    p.wait("backup", "peer gone", 10, |s| s["connection"] != "Connected");
    p.ok("backup", &["primary"]);
    sh(&["e2fsck", "-fn", &p.backup.img.to_string_lossy()]);
    sh(&["mount", "-o", "ro,loop", &p.backup.img.to_string_lossy(), &mnt.to_string_lossy()]);
    undo.0.push(vec!["umount".into(), mnt.to_string_lossy().into()]);
    let got = std::fs::read(mnt.join("payload.bin")).unwrap();
    assert_eq!(got.len(), 3_000_000);
    assert!(got.iter().enumerate().all(|(i, b)| *b == ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8));
}

#[test]
fn drill_step_loses_no_acknowledged_write_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let wrap = |_host: &str, c: Command| c;
    let hosts = blockrepl::drill::DrillHosts {
        bin: PathBuf::from(BIN),
        dir: dir.path().to_path_buf(),
        main_addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        backup_addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        wrap: &wrap,
        writes: 200,
    };
    let r = blockrepl::drill::drill_step(&hosts).unwrap();
    assert_eq!(r.acknowledged, 200, "{r:?}");
    assert_eq!(r.lost, 0, "{r:?}");
}

#[test]
fn metrics_endpoint_passes_promtool() {
    use std::io::{Read, Write};
    let p = Pair::new("correct horse battery staple", "disconnect");
    p.wait("main", "connected", 10, |s| s["connection"] == "Connected");
    p.ok("main", &["primary", "--force"]);
    p.wait_synced();
    p.qemu_io("main", &["write -P 0x01 0 64k"]);
    let mut s = std::net::TcpStream::connect(("127.0.0.1", p.main.metrics)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap().to_string();
    assert!(body.contains("rempart_repl_primary{resource=\"r0\"} 1"), "{body}");
    assert!(body.contains("rempart_repl_replicated_bytes_total{resource=\"r0\"} 65536"), "{body}");
    assert!(body.contains("rempart_repl_write_latency_seconds_count{resource=\"r0\"} 1"), "{body}");
    assert!(body.contains("rempart_repl_local_write_latency_seconds_count"), "{body}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "promtool: {text}");
}

#[test]
fn drill_step_in_network_namespaces() {
    if !rempart_testkit::require_root("network namespaces") {
        return;
    }
    let mut lab = rempart_testkit::Lab::new().unwrap();
    lab.add_host("main").unwrap();
    lab.add_host("backup").unwrap();
    lab.link("main", "backup", "192.168.56.10/24", "192.168.56.20/24").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let wrap = |host: &str, c: Command| {
        let mut w = lab.cmd(host, &c.get_program().to_string_lossy());
        w.args(c.get_args());
        w
    };
    let hosts = blockrepl::drill::DrillHosts {
        bin: PathBuf::from(BIN),
        dir: dir.path().to_path_buf(),
        main_addr: "192.168.56.10:7789".parse().unwrap(),
        backup_addr: "192.168.56.20:7789".parse().unwrap(),
        wrap: &wrap,
        writes: 100,
    };
    let r = blockrepl::drill::drill_step(&hosts).unwrap();
    assert_eq!((r.acknowledged, r.lost), (100, 0), "{r:?}");
}

#[test]
fn invalidate_then_checksum_resync_sends_only_what_differs() {
    let p = Pair::new("correct horse battery staple", "disconnect");
    p.wait("main", "connected", 10, |s| s["connection"] == "Connected");
    p.ok("main", &["primary", "--force"]);
    p.wait_synced();
    p.qemu_io("main", &["write -P 0x77 0 8M"]);
    let before = p.status("main");
    // The backup declares its data bad: a full resync follows, but its data is in fact right.
    p.ok("backup", &["invalidate"]);
    p.wait("backup", "full resync done", 30, |s| {
        s["disk"] == "UpToDate" && s["replication"] == "Established" && s["out_of_sync_bytes"] == 0
    });
    p.wait_synced();
    let after = p.status("main");
    assert_eq!(u(&after, "resync_bytes") - u(&before, "resync_bytes"), SIZE, "{after}");
    assert_eq!(u(&after, "resync_wire_bytes"), u(&before, "resync_wire_bytes"), "data was sent: {after}");
    assert!(p.images_identical());
}

#[test]
fn link_cut_in_network_namespaces_resyncs_only_dirty_blocks() {
    if !rempart_testkit::require_root("network namespaces") {
        return;
    }
    let mut lab = rempart_testkit::Lab::new().unwrap();
    lab.add_host("main").unwrap();
    lab.add_host("backup").unwrap();
    lab.link("main", "backup", "192.168.56.10/24", "192.168.56.20/24").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("r0.secret"), "namespace secret\n").unwrap();
    std::fs::write(
        d.join("r0.toml"),
        "[resource]\nname = \"r0\"\nsecret-file = \"r0.secret\"\npeer-timeout-ms = 1000\n\n\
         [[node]]\nname = \"main\"\naddress = \"192.168.56.10:7789\"\ndisk = \"main.img\"\nnbd = \"192.168.56.10:10809\"\n\n\
         [[node]]\nname = \"backup\"\naddress = \"192.168.56.20:7789\"\ndisk = \"backup.img\"\nnbd = \"192.168.56.20:10809\"\n",
    )
    .unwrap();
    let cfg = d.join("r0.toml");
    let mut procs = Vec::new();
    for n in ["main", "backup"] {
        std::fs::File::create(d.join(format!("{n}.img"))).unwrap().set_len(SIZE).unwrap();
        let out = lab.cmd(n, BIN).args(["create-md", "-c"]).arg(&cfg).args(["--node", n]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut c = lab.cmd(n, BIN);
        c.args(["run", "-c"]).arg(&cfg).args(["--node", n, "--run-dir"]).arg(d.join(format!("run-{n}")));
        c.stdout(Stdio::null()).stderr(std::fs::File::create(d.join(format!("{n}.log"))).unwrap());
        procs.push(lab.spawn(n, c).unwrap());
    }
    let ctl = |n: &str, args: &[&str]| -> String {
        let out = lab.cmd(n, BIN).args(args).arg("--run-dir").arg(d.join(format!("run-{n}"))).output().unwrap();
        assert!(out.status.success(), "{n} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = |n: &str| -> Value {
        let out =
            lab.cmd(n, BIN).args(["status", "--json", "--run-dir"]).arg(d.join(format!("run-{n}"))).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let wait = |n: &str, what: &str, f: &dyn Fn(&Value) -> bool| {
        wait::until(Duration::from_secs(30), what, || f(&status(n))).unwrap_or_else(|e| panic!("{n}: {e}"));
    };
    let synced =
        |s: &Value| s["replication"] == "Established" && s["peer"]["disk"] == "UpToDate" && s["out_of_sync_bytes"] == 0;
    let qemu_io = |cmds: &[&str]| {
        let mut c = lab.cmd("main", "qemu-io");
        c.args(["-f", "raw"]);
        for x in cmds {
            c.args(["-c", x]);
        }
        let out = c.arg("nbd://192.168.56.10:10809/r0").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && !text.contains("Pattern verification failed"), "{text}");
    };
    wait("main", "connected", &|s| s["connection"] == "Connected");
    ctl("main", &["primary", "--force"]);
    wait("main", "initial sync", &synced);
    qemu_io(&["write -P 0x31 0 2M"]);
    // Pull the cable: the Primary notices after the peer timeout and carries on degraded.
    lab.cut("main", "backup").unwrap();
    wait("main", "degraded", &|s| s["connection"] != "Connected");
    qemu_io(&["write -P 0x32 4M 256k", "write -P 0x33 9M 4k"]);
    let before = status("main");
    assert_eq!(before["out_of_sync_bytes"], (256 << 10) + 4096, "{before}");
    lab.heal("main", "backup").unwrap();
    wait("main", "resync after heal", &synced);
    let after = status("main");
    let moved = after["resync_bytes"].as_u64().unwrap() - before["resync_bytes"].as_u64().unwrap();
    assert_eq!(moved, (256 << 10) + 4096, "{after}");
    let a = std::fs::read(d.join("main.img")).unwrap();
    let b = std::fs::read(d.join("backup.img")).unwrap();
    assert!(a == b, "replicas differ after resync");
}
