//! A Debian 12 kernel under QEMU's software emulation (TCG), for what needs a kernel module this
//! machine lacks: the kernel NBD client (`nbd.ko`) under `rempart-node`'s `method = "kernel-nbd"`.
//!
//! ```text
//!   lab namespace "vmhost" (lo only)                     the guest (qemu-system-x86_64 -accel tcg)
//!   ┌──────────────────────────────────────────┐        ┌────────────────────────────────────────┐
//!   │ peer daemons on 127.0.0.1:PORT ◀─────────┼─slirp──┤ eth0 10.0.2.15, gateway 10.0.2.2       │
//!   │                                          │        │   (10.0.2.2:PORT = the host's 127.0.0.1)│
//!   │ qemu ── 9p "hostroot" = / (read-only) ───┼───────▶│ / : the host's files, tmpfs on /run    │
//!   │      ── 9p "work" = the test's directory ┼───────▶│     /var/lib /mnt; the work directory  │
//!   │      ── virtio-blk = a disk image ───────┼───────▶│ /dev/vda                  read-write   │
//!   └──────────────────────────────────────────┘        └────────────────────────────────────────┘
//! ```
//!
//! Why this shape:
//! - **The host's own files as the guest's root** (9p, read-only), as virtme does: the guest runs
//!   the very binaries the test built (`target/…/rempart-node`) and Debian's `nbd-client`, `mount`,
//!   `ip`, with no image to build or keep in sync. Only the kernel and its modules come from
//!   elsewhere: Debian's `linux-image-amd64` package, fetched by `scripts/deps install` into
//!   [`cache_dir`] (the host's own kernel may be anything, and has no `nbd` module here).
//! - **A tiny initramfs made here** (a `newc` cpio written by [`cpio_newc`]): static busybox, the
//!   modules the guest needs in dependency order (read from each module's `.modinfo`), and an
//!   `/init` that loads them, mounts the host root and the work directory, sets the network up
//!   and runs the test's script in a `chroot` of the host root, then powers the guest off.
//! - **Everything the guest sends stays in the test's namespace**: QEMU runs inside a lab
//!   namespace with only `lo`, and its user-mode network (slirp) turns the guest's connections to
//!   10.0.2.2 into connections to that namespace's loopback. Nothing reaches the root namespace.
//! - **The test talks to the guest through files** in the shared work directory (9p without
//!   cache: a file the host writes is seen by the guest at once, and the other way round): the
//!   guest's script writes what it saw, and waits for `go` files where the host checks something
//!   in between.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use rempart_testkit::{Lab, Proc};

/// Where `scripts/deps install` puts Debian's kernel package (`REMPART_VM_CACHE` overrides).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("REMPART_VM_CACHE").map_or_else(|| PathBuf::from("/var/cache/rempart-vm"), PathBuf::from)
}

/// A kernel and its modules, unpacked from Debian's `linux-image-*-amd64` package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The kernel image.
    pub vmlinuz: PathBuf,
    /// `lib/modules/VERSION`.
    pub modules: PathBuf,
}

impl Kernel {
    /// The kernel package in [`cache_dir`], unpacked next to it the first time (once: a second
    /// test finds the unpacked tree; concurrent unpackers each work in their own directory and
    /// the first rename wins).
    pub fn from_cache() -> anyhow::Result<Kernel> {
        let dir = cache_dir();
        let deb = std::fs::read_dir(&dir)
            .ok()
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("linux-image-") && n.ends_with("_amd64.deb"))
            })
            .max()
            .with_context(|| {
                format!(
                    "no linux-image-*_amd64.deb in {}: `scripts/deps install` fetches Debian's kernel package there",
                    dir.display()
                )
            })?;
        let stem = deb.file_stem().and_then(|s| s.to_str()).unwrap_or("kernel").to_string();
        let tree = dir.join(format!("{stem}.unpacked"));
        if !tree.is_dir() {
            let tmp = dir.join(format!("{stem}.unpacking-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&tmp);
            let out = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp).output().context("running dpkg-deb")?;
            ensure!(out.status.success(), "dpkg-deb -x {}: {}", deb.display(), String::from_utf8_lossy(&out.stderr));
            if std::fs::rename(&tmp, &tree).is_err() {
                // Another test unpacked it first.
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
        let first = |d: &Path, prefix: &str| -> anyhow::Result<PathBuf> {
            std::fs::read_dir(d)
                .with_context(|| format!("reading {}", d.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
                .with_context(|| format!("no {prefix}* in {}", d.display()))
        };
        let vmlinuz = first(&tree.join("boot"), "vmlinuz-")?;
        let modules = first(&tree.join("lib/modules"), "")?;
        Ok(Kernel { vmlinuz, modules })
    }

    /// Every module file under `modules/kernel`, by name (`nbd` → its path).
    fn module_files(&self) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        fn walk(d: &Path, out: &mut BTreeMap<String, PathBuf>) -> std::io::Result<()> {
            for e in std::fs::read_dir(d)? {
                let p = e?.path();
                if p.is_dir() {
                    walk(&p, out)?;
                } else if let Some(n) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                    out.insert(n.replace('-', "_"), p.clone());
                }
            }
            Ok(())
        }
        let mut out = BTreeMap::new();
        walk(&self.modules.join("kernel"), &mut out).with_context(|| format!("reading {}", self.modules.display()))?;
        Ok(out)
    }

    /// `wanted` and everything they depend on (`depends=` of `.modinfo`), dependencies first.
    pub fn modules_in_order(&self, wanted: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
        let files = self.module_files()?;
        let mut order = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        fn visit(
            name: &str,
            files: &BTreeMap<String, PathBuf>,
            seen: &mut std::collections::BTreeSet<String>,
            order: &mut Vec<PathBuf>,
            depth: usize,
        ) -> anyhow::Result<()> {
            let name = name.replace('-', "_");
            ensure!(depth < 64, "module dependencies nest too deep at {name}");
            if !seen.insert(name.clone()) {
                return Ok(());
            }
            let path = files.get(&name).with_context(|| format!("no module {name}.ko in the kernel package"))?;
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            for dep in modinfo(&bytes, "depends").split(',').filter(|d| !d.is_empty()) {
                visit(dep, files, seen, order, depth + 1)?;
            }
            order.push(path.clone());
            Ok(())
        }
        for w in wanted {
            visit(w, &files, &mut seen, &mut order, 0)?;
        }
        Ok(order)
    }
}

/// The value of `key=` in a module's `.modinfo` strings (empty when absent).
fn modinfo(ko: &[u8], key: &str) -> String {
    let needle = format!("{key}=");
    ko.split(|b| *b == 0)
        .find_map(|s| s.strip_prefix(needle.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// One entry of an initramfs.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory (0755).
    Dir(String),
    /// A regular file with its mode and contents.
    File(String, u32, Vec<u8>),
    /// A character device (major, minor), 0600.
    CharDev(String, u32, u32),
}

/// An uncompressed `newc` cpio archive (the initramfs format the kernel unpacks).
pub fn cpio_newc(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |ino: usize, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]| {
        let fields = [ino as u32, mode, 0, 0, 1, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while out.len() % 4 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        while out.len() % 4 != 0 {
            out.push(0);
        }
    };
    for (i, e) in entries.iter().enumerate() {
        match e {
            Entry::Dir(n) => put(i + 1, n, 0o040_755, (0, 0), &[]),
            Entry::File(n, mode, data) => put(i + 1, n, 0o100_000 | mode, (0, 0), data),
            Entry::CharDev(n, maj, min) => put(i + 1, n, 0o020_600, (*maj, *min), &[]),
        }
    }
    put(0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// The modules the guest loads: virtio (PCI, network, block), 9p, ext4 and its checksum, nbd.
pub const GUEST_MODULES: &[&str] =
    &["virtio_pci", "virtio_net", "virtio_blk", "9pnet_virtio", "9p", "crc32c_generic", "ext4", "nbd"];

/// The guest's `/init`: modules, the host root, the work directory, the network, then the
/// script `$WORK/guest.sh` in a chroot of the host root; the guest powers off when it ends.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /mods/order); do insmod /mods/$m || echo "rempart-vm: insmod $m failed"; done
work=$(sed -n 's/.*rempart\.work=\([^ ]*\).*/\1/p' /proc/cmdline)
R=/host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot $R || echo "rempart-vm: no host root"
mount -t proc proc $R/proc; mount -t sysfs sys $R/sys; mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm; mount -t devpts pts $R/dev/pts; mount -t tmpfs shm $R/dev/shm
# Writable places; not /tmp or /var/tmp, where the test's binaries may live (a clone under
# /var/tmp): those stay the host's, read-only, and TMPDIR points into /run.
for d in /run /var/lib /var/log /var/run /mnt /media; do
  [ -d $R$d ] && [ ! -L $R$d ] && mount -t tmpfs tmp $R$d
done
mkdir -p $R/run/tmp
mkdir -p $R$work && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 work $R$work || echo "rempart-vm: no work dir"
ip link set lo up; ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
echo "rempart-vm: running $work/guest.sh"
chroot $R /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TMPDIR=/run/tmp /bin/sh $work/guest.sh > $R$work/guest.out 2>&1
echo "rempart-vm: guest.sh exited $?" | tee $R$work/guest.rc
sync
poweroff -f
"#;

/// The initramfs of a guest: busybox, [`GUEST_MODULES`] in order, [`INIT`].
pub fn initramfs(kernel: &Kernel) -> anyhow::Result<Vec<u8>> {
    let busybox = which("busybox").context("busybox (Debian's busybox-static) is not installed")?;
    let mut entries = vec![
        Entry::Dir("bin".into()),
        Entry::Dir("dev".into()),
        Entry::CharDev("dev/console".into(), 5, 1),
        Entry::Dir("proc".into()),
        Entry::Dir("sys".into()),
        Entry::Dir("host".into()),
        Entry::Dir("mods".into()),
        Entry::File("bin/busybox".into(), 0o755, std::fs::read(&busybox)?),
        Entry::File("init".into(), 0o755, INIT.as_bytes().to_vec()),
    ];
    let mut order = String::new();
    for path in kernel.modules_in_order(GUEST_MODULES)? {
        let name = path.file_name().and_then(|n| n.to_str()).context("module name")?.to_string();
        order.push_str(&name);
        order.push('\n');
        entries.push(Entry::File(format!("mods/{name}"), 0o644, std::fs::read(&path)?));
    }
    entries.push(Entry::File("mods/order".into(), 0o644, order.into_bytes()));
    Ok(cpio_newc(&entries))
}

/// `program` on PATH (busybox lives in /usr/bin or /bin).
fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|c| c.is_file()))
        .unwrap_or(None)
        .or_else(|| ["/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(program)).find(|c| c.is_file()))
}

/// A guest to boot: its work directory (shared read-write, holding `guest.sh`), an optional
/// disk image as `/dev/vda`, and TCP ports of the guest forwarded to the namespace's loopback.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The shared directory; the guest runs `guest.sh` from it and writes `guest.out` (the
    /// script's output) and `guest.rc` into it.
    pub work: PathBuf,
    /// A raw image attached as `/dev/vda`.
    pub disk: Option<PathBuf>,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// (port on the namespace's 127.0.0.1, port in the guest).
    pub forwards: Vec<(u16, u16)>,
}

/// A running guest: QEMU in a lab namespace, killed (by pid) when dropped.
pub struct Vm {
    proc: Proc,
    work: PathBuf,
}

impl Vm {
    /// Boots `spec` with `kernel` inside `host`'s namespace of `lab`; the console goes to
    /// `console.log` in the work directory.
    pub fn boot(lab: &Lab, host: &str, kernel: &Kernel, spec: &GuestSpec) -> anyhow::Result<Vm> {
        let initrd = spec.work.join("initramfs.cpio");
        std::fs::File::create(&initrd)?.write_all(&initramfs(kernel)?)?;
        let _ = std::fs::remove_file(spec.work.join("guest.rc"));
        let mut net = "user,id=n0,net=10.0.2.0/24,host=10.0.2.2,restrict=off".to_string();
        for (h, g) in &spec.forwards {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-10.0.2.15:{g}"));
        }
        let mut c = lab.cmd(host, "qemu-system-x86_64");
        c.args(["-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m"])
            .arg(spec.memory_mib.to_string())
            .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-serial"])
            .arg(format!("file:{}", spec.work.join("console.log").display()))
            .arg("-kernel")
            .arg(&kernel.vmlinuz)
            .arg("-initrd")
            .arg(&initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 quiet rempart.work={}", spec.work.display()))
            .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"])
            .arg("-virtfs")
            .arg(format!("local,path={},mount_tag=work,security_model=none,multidevs=remap", spec.work.display()))
            .args(["-netdev", &net, "-device", "virtio-net-pci,netdev=n0"]);
        if let Some(d) = &spec.disk {
            c.arg("-drive").arg(format!("file={},format=raw,if=virtio,cache=writeback", d.display()));
        }
        c.stdin(Stdio::null()).stdout(Stdio::null());
        c.stderr(std::fs::File::create(spec.work.join("qemu.err"))?);
        let proc = lab.spawn(host, c)?;
        Ok(Vm { proc, work: spec.work.clone() })
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Waits up to `limit` for the guest to power off; its script's exit line (`guest.rc`).
    pub fn wait(&mut self, limit: Duration) -> anyhow::Result<(ExitStatus, String)> {
        let Some(st) = self.proc.wait_timeout(limit) else {
            self.proc.kill();
            bail!("the guest did not power off within {limit:?}\n{}", self.diagnostics());
        };
        let rc = std::fs::read_to_string(self.work.join("guest.rc")).unwrap_or_default();
        Ok((st, rc.trim().to_string()))
    }

    /// The guest's script output and console tail and QEMU's errors, for a failure message.
    pub fn diagnostics(&self) -> String {
        let tail = |name: &str| {
            let s = std::fs::read_to_string(self.work.join(name)).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "guest.out:\n{}\nconsole.log:\n{}\nqemu.err:\n{}",
            tail("guest.out"),
            tail("console.log"),
            tail("qemu.err")
        )
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("pid", &self.proc.pid()).field("work", &self.work).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_headers_and_padding() {
        let a = cpio_newc(&[Entry::Dir("d".into()), Entry::File("d/f".into(), 0o644, b"abc".to_vec())]);
        assert_eq!(&a[..6], b"070701");
        assert_eq!(a.len() % 4, 0);
        // The file entry: header (110) + "d/f\0" padded, then "abc" padded.
        let second = a.windows(6).enumerate().filter(|(_, w)| *w == b"070701").nth(1).map(|(i, _)| i).unwrap();
        let hdr = std::str::from_utf8(&a[second..second + 110]).unwrap();
        assert_eq!(&hdr[14..22], "000081a4", "mode of a regular 0644 file");
        assert_eq!(&hdr[54..62], "00000003", "file size");
        assert_eq!(&hdr[94..102], "00000004", "name size with its NUL");
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn modinfo_reads_depends() {
        let ko = b"\0\x7fELF junk\0license=GPL\0depends=jbd2,mbcache,crc16\0intree=Y\0";
        assert_eq!(modinfo(ko, "depends"), "jbd2,mbcache,crc16");
        assert_eq!(modinfo(ko, "softdep"), "");
    }
}
