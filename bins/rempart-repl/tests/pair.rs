//! Two real `rempart-repl` processes on loopback with the testkit `FaultProxy` on the replication
//! link (drop, blackhole, forward), and qemu-io / qemu-img as the NBD client. The scenarios that
//! only need a link to pull run in network namespaces, in `ns.rs`.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rempart_testkit::proxy::{FaultProxy, Mode};
use rempart_testkit::wait;
use serde_json::Value;

mod util;

use util::{images_identical, qemu_io, u, BIN, SIZE};

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
        if let Err(text) = qemu_io(&self.url(n), cmds) {
            panic!("qemu-io {cmds:?} on {n}: {text}\n{}", self.logs());
        }
    }

    fn images_identical(&self) -> bool {
        images_identical(&self.main.img, &self.backup.img)
    }
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
fn documented_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/repl-r0.toml");
    let out = Command::new(BIN).args(["create-md", "-c"]).arg(&path).args(["--node", "nobody"]).output().unwrap();
    // The file parses (the error is about the node name, not the file).
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no [[node]] named \"nobody\""), "{err}");
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
    assert!(body.contains("rempart_repl_peer_write_latency_seconds_count{resource=\"r0\"} 1"), "{body}");
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
