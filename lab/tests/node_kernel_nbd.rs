//! `rempart-node` with `method = "kernel-nbd"`: the kernel's NBD client (`nbd.ko`, `nbd-client`)
//! under the mount step, in a Debian 12 kernel under QEMU (this machine has no nbd module; see
//! `rempart_lab::vm`), replicating to a `rempart-repl` peer on the host side.
//!
//! ```text
//!   namespace vmhost                          guest (TCG)
//!   rempart-repl "host" 127.0.0.1:7789 ◀───── rempart-node "guest": VRRP on eth0 (alone: MASTER),
//!   rempart-node witness 127.0.0.1:7790 ◀──── r0 on /dev/vda ── NBD (unix) ── nbd-client /dev/nbd0
//!                                             ── ext4 on /mnt/r0 ── service "app" ── VIP 10.0.2.100
//! ```
//!
//! Two cycles in the guest: start → serving (the device, the mount, the VIP) → write 4 MiB →
//! the host checks its peer is connected and in sync → stop (VIP off, service stopped, unmount,
//! `nbd-client -d`, demote) → start again on the same `/dev/nbd0` → the data is there → stop.
//! Then the host's own copy is read with debugfs: the guest's writes reached it through the
//! kernel client and the replication, and the file system is clean.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use rempart_lab::steps::sibling_binary;
use rempart_lab::vm::{GuestSpec, Kernel, Vm};
use rempart_testkit::{wait, Lab};

const VOLUME: u64 = 64 << 20;

fn sh(argv: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(argv[0]).args(&argv[1..]).stdin(Stdio::null()).output()?;
    ensure!(
        out.status.success(),
        "{argv:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// The resource file: `guest` and `host` with the addresses and disk of one side's view.
fn resource_file(w: &Path, guest_addr: &str, guest_disk: &str, host_addr: &str) -> String {
    format!(
        "[resource]\nname = \"r0\"\nprotocol = \"C\"\nsecret-file = \"{w}/r0.secret\"\npeer-timeout-ms = 10000\n\
         \n[[node]]\nname = \"guest\"\naddress = \"{guest_addr}\"\ndisk = \"{guest_disk}\"\nmeta = \"{w}/guest.md\"\n\
         nbd = \"unix:/run/rempart-r0-guest.sock\"\n\
         \n[[node]]\nname = \"host\"\naddress = \"{host_addr}\"\ndisk = \"{w}/host.img\"\nmeta = \"{w}/host.md\"\n\
         nbd = \"unix:{w}/host-nbd.sock\"\n",
        w = w.display()
    )
}

fn node_toml(w: &Path) -> String {
    format!(
        "node = \"guest\"\nmetrics-listen = \"10.0.2.15:9107\"\n\
         [[vrrp.instance]]\nname = \"VI_1\"\ninterface = \"eth0\"\nvrid = 51\npriority = 150\nadvert-int = 1.0\n\
         virtual-ipaddress = [\"10.0.2.100/24\"]\n\
         [[resource]]\nconfig = \"{w}/repl-guest.toml\"\n\
         [[mount]]\nresource = \"r0\"\ndevice = \"/dev/nbd0\"\nfs-type = \"ext4\"\nmount-point = \"/mnt/r0\"\n\
         options = \"noatime\"\nmethod = \"kernel-nbd\"\n\
         [[service]]\nname = \"app\"\nstart = \"echo started >> /mnt/r0/app.log && sync\"\n\
         stop = \"echo stopped >> /mnt/r0/app.log && sync\"\ncheck = \"test -s /mnt/r0/app.log\"\ntimeout = 60.0\n\
         [witness]\naddress = \"10.0.2.2:7790\"\nsecret-file = \"{w}/witness.secret\"\nttl = 3.0\n\
         [timeouts]\npromote = 60.0\nmount = 60.0\nhealth = 60.0\nvip = 20.0\nunmount = 60.0\ndemote = 60.0\n\
         quorum = 60.0\n",
        w = w.display()
    )
}

/// The guest's script: two start/stop cycles of rempart-node, writing what it saw into the work
/// directory; between the first start and stop it waits for the host's `go1`.
fn guest_script(w: &Path, node_bin: &Path) -> String {
    format!(
        r#"set -u
W={w}
RN={rn}
wait_phase() {{
  i=0
  until $RN status --json 2>/dev/null | grep -q "\"phase\": \"$1\""; do
    kill -0 $pid 2>/dev/null || return 1
    i=$((i+1)); [ $i -ge $(($2 * 5)) ] && return 1; sleep 0.2
  done
}}
wait_file() {{ i=0; until [ -e "$1" ]; do i=$((i+1)); [ $i -ge 3000 ] && return 1; sleep 0.2; done; }}
observe() {{
  grep ' /mnt/r0 ' /proc/mounts > $W/mounts$1.txt
  ip -o addr show dev eth0 > $W/addr$1.txt
  cat /sys/block/nbd0/pid > $W/nbdpid$1.txt 2>/dev/null
}}
cycle() {{
  $RN run -c $W/node.toml > $W/node$1.log 2>&1 &
  pid=$!
  ok=0; wait_phase serving 300 && ok=1
  $RN status --json > $W/status$1.json 2>&1
  observe $1
  if [ $ok = 1 ]; then echo serving > $W/phase$1; else echo never > $W/phase$1; exit 1; fi
}}
stop() {{
  kill -TERM $pid; wait $pid; echo $? > $W/node$1.rc
  observe -after$1
}}
cycle 1
dd if=/dev/urandom of=/mnt/r0/blob bs=1M count=4 conv=fsync 2>> $W/dd.err
sha256sum /mnt/r0/blob | cut -d' ' -f1 > $W/blob1.sha
touch $W/ready1
wait_file $W/go1
stop 1
cycle 2
sha256sum /mnt/r0/blob | cut -d' ' -f1 > $W/blob2.sha
stop 2
echo done > $W/done
"#,
        w = w.display(),
        rn = node_bin.display()
    )
}

#[test]
fn kernel_nbd_mount_in_a_vm() {
    if !rempart_testkit::require_root("network namespaces, QEMU with a kernel of Debian's") {
        return;
    }
    if let Err(e) = run() {
        panic!("{e:#}");
    }
}

fn run() -> anyhow::Result<()> {
    let kernel = Kernel::from_cache()?;
    let repl = sibling_binary("rempart-repl")?;
    let node = sibling_binary("rempart-node")?;
    let mut lab = Lab::new()?;
    lab.add_host("vmhost")?;
    let tmp = tempfile::Builder::new().prefix("rempart-vm-").tempdir_in("/var/tmp")?;
    let w: PathBuf = tmp.path().to_path_buf();
    std::fs::write(w.join("r0.secret"), "vm replication secret\n")?;
    std::fs::write(w.join("witness.secret"), "vm witness secret\n")?;
    std::fs::write(
        w.join("repl-host.toml"),
        resource_file(&w, "127.0.0.1:7788", &format!("{}/guest.img", w.display()), "127.0.0.1:7789"),
    )?;
    std::fs::write(w.join("repl-guest.toml"), resource_file(&w, "10.0.2.15:7789", "/dev/vda", "10.0.2.2:7789"))?;
    std::fs::write(w.join("node.toml"), node_toml(&w))?;
    std::fs::write(w.join("guest.sh"), guest_script(&w, &node))?;
    for side in ["guest", "host"] {
        std::fs::File::create(w.join(format!("{side}.img")))?.set_len(VOLUME)?;
    }
    // The host's disk gets the file system; the initial sync copies it to the guest's.
    let host_img = w.join("host.img").display().to_string();
    sh(&["mkfs.ext4", "-q", "-F", &host_img])?;
    let conf = w.join("repl-host.toml");
    for side in ["guest", "host"] {
        let out = Command::new(&repl).args(["create-md", "-c"]).arg(&conf).args(["--node", side]).output()?;
        ensure!(out.status.success(), "create-md {side}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let start_repl = |side: &str| -> anyhow::Result<rempart_testkit::Proc> {
        let mut c = lab.cmd("vmhost", &repl.to_string_lossy());
        c.args(["run", "-c"]).arg(&conf).args(["--node", side, "--run-dir"]).arg(w.join(format!("run-{side}")));
        c.env("RUST_LOG", "info").stdout(Stdio::null());
        c.stderr(std::fs::File::create(w.join(format!("repl-{side}.log")))?);
        let p = lab.spawn("vmhost", c)?;
        let sock = w.join(format!("run-{side}/repl.ctl"));
        wait::until(Duration::from_secs(10), "rempart-repl control socket", || sock.exists())?;
        Ok(p)
    };
    let ctl = |side: &str, args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&repl).args(args).arg("--run-dir").arg(w.join(format!("run-{side}"))).output()?;
        ensure!(out.status.success(), "rempart-repl {args:?} on {side}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let status = |side: &str| -> serde_json::Value {
        ctl(side, &["status", "--json"]).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
    };

    // Initial sync on the host side (both daemons on loopback), then the guest's daemon stops.
    let _host = start_repl("host")?;
    let mut prep = start_repl("guest")?;
    ctl("host", &["primary", "--force"])?;
    wait::until(Duration::from_secs(60), "initial sync", || {
        let (g, h) = (status("guest"), status("host"));
        g["disk"] == "UpToDate" && h["disk"] == "UpToDate" && h["out_of_sync_bytes"] == 0
    })?;
    ctl("host", &["secondary"])?;
    prep.term();
    ensure!(prep.wait_timeout(Duration::from_secs(20)).is_some(), "the prep daemon did not stop");

    let mut witness = lab.cmd("vmhost", &node.to_string_lossy());
    witness.args(["witness", "--listen", "127.0.0.1:7790", "--secret-file"]).arg(w.join("witness.secret"));
    witness.args(["--max-ttl", "3", "--run-dir"]).arg(w.join("witness-run")).stdout(Stdio::null());
    witness.stderr(std::fs::File::create(w.join("witness.log"))?);
    let _witness = lab.spawn("vmhost", witness)?;

    let spec = GuestSpec { work: w.clone(), disk: Some(w.join("guest.img")), memory_mib: 768, forwards: vec![] };
    let mut vm = Vm::boot(&lab, "vmhost", &kernel, &spec)?;
    let diag = |vm: &Vm| {
        format!("{}\nnode1.log:\n{}\nnode2.log:\n{}", vm.diagnostics(), read(&w, "node1.log"), read(&w, "node2.log"))
    };

    // First start: serving on the kernel's /dev/nbd0, with the VIP; the host's peer in sync.
    wait::until(Duration::from_secs(420), "the guest's first cycle", || {
        w.join("ready1").exists() || w.join("guest.rc").exists()
    })
    .with_context(|| diag(&vm))?;
    ensure!(
        read(&w, "phase1").trim() == "serving",
        "rempart-node never reached serving in the guest: {}\n{}",
        read(&w, "status1.json"),
        diag(&vm)
    );
    let mounts = read(&w, "mounts1.txt");
    ensure!(
        mounts.starts_with("/dev/nbd0 /mnt/r0 ext4 "),
        "the volume is not mounted from /dev/nbd0: {mounts:?}\n{}",
        diag(&vm)
    );
    ensure!(
        read(&w, "nbdpid1.txt").trim().parse::<u32>().is_ok(),
        "/dev/nbd0 has no client connected: {:?}",
        read(&w, "nbdpid1.txt")
    );
    ensure!(read(&w, "addr1.txt").contains("10.0.2.100/24"), "no VIP while serving: {}", read(&w, "addr1.txt"));
    let st: serde_json::Value = serde_json::from_str(&read(&w, "status1.json")).unwrap_or_default();
    ensure!(st["phase"] == "serving", "status: {st}");
    let h = status("host");
    ensure!(
        h["connection"] == "Connected"
            && h["peer"]["role"] == "Primary"
            && h["disk"] == "UpToDate"
            && h["out_of_sync_bytes"] == 0,
        "the host's peer while the guest serves: {h}"
    );
    std::fs::write(w.join("go1"), "")?;

    let (qemu, rc) = vm.wait(Duration::from_secs(420)).with_context(|| diag(&vm))?;
    ensure!(qemu.success() || qemu.code().is_some(), "qemu: {qemu}");
    ensure!(rc.ends_with("exited 0") && read(&w, "done").trim() == "done", "guest script: {rc}\n{}", diag(&vm));

    // Each stop took everything down in order: no mount, no NBD client, no VIP, exit 0.
    for n in ["1", "2"] {
        ensure!(
            read(&w, &format!("node{n}.rc")).trim() == "0",
            "rempart-node run #{n} exited {:?}\n{}",
            read(&w, &format!("node{n}.rc")),
            diag(&vm)
        );
        ensure!(read(&w, &format!("mounts-after{n}.txt")).trim().is_empty(), "still mounted after stop #{n}");
        ensure!(
            read(&w, &format!("nbdpid-after{n}.txt")).trim().is_empty(),
            "/dev/nbd0 still connected after stop #{n}"
        );
        ensure!(!read(&w, &format!("addr-after{n}.txt")).contains("10.0.2.100"), "VIP left after stop #{n}");
    }
    // The second start reused /dev/nbd0 and found the data.
    ensure!(read(&w, "phase2").trim() == "serving", "second start: {}", read(&w, "status2.json"));
    ensure!(
        read(&w, "mounts2.txt").starts_with("/dev/nbd0 /mnt/r0 ext4 "),
        "second mount: {}",
        read(&w, "mounts2.txt")
    );
    let sha = read(&w, "blob1.sha").trim().to_string();
    ensure!(
        sha.len() == 64 && read(&w, "blob2.sha").trim() == sha,
        "the data after a restart: {sha} vs {}",
        read(&w, "blob2.sha")
    );

    // The host's copy: the same bytes, the service's log of both cycles, a clean file system.
    let h = status("host");
    ensure!(h["disk"] == "UpToDate" && h["role"] == "Secondary", "the host's peer after the guest left: {h}");
    drop(_host);
    let dump = w.join("blob.host").display().to_string();
    sh(&["debugfs", "-R", &format!("dump /blob {dump}"), &host_img])?;
    let host_sha = sh(&["sha256sum", &dump])?;
    ensure!(host_sha.starts_with(&sha), "the host's copy differs: {host_sha} vs {sha}");
    let log = sh(&["debugfs", "-R", "cat /app.log", &host_img])?;
    ensure!(log == "started\nstopped\nstarted\nstopped\n", "the service's log on the host's copy: {log:?}");
    sh(&["e2fsck", "-fn", &host_img]).context("the host's copy after two clean stops")?;
    Ok(())
}
