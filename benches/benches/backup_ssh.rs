//! `create` and `extract` over ssh (a real OpenSSH server on 127.0.0.1 with the forced command
//! `rempart-backup serve`) against the same commands on a local path, same data, same run.
//! The issue's target: throughput over ssh at least 0.8× the local-path case on loopback.
//!
//! ```text
//! cargo build --release -p rempart-backup
//! REMPART_BENCH_SSH_OPTS="-o KexAlgorithms=curve25519-sha256 -c aes128-gcm@openssh.com" \
//!     cargo bench -p rempart-benches --bench backup_ssh
//! ```
//! Two corpora: the worst case, `REMPART_BENCH_MB` MiB (default 256) of which two thirds are
//! random (incompressible, every byte crosses the link), and the realistic corpus of
//! `backup_compare` (`rempart_benches::corpus`), `REMPART_BENCH_REAL_MB` MiB (default 1024; 0
//! skips it). Other environment: `REMPART_BENCH_REPS` (default 4; keep it even: each side goes
//! first in half the repetitions, and every restore leaves its files on the disk, which makes
//! the later one of a pair slower), `REMPART_BENCH_SSH_OPTS`
//! (extra ssh options), `REMPART_BACKUP_BIN` (default `$CARGO_TARGET_DIR/release/rempart-backup`
//! or `target/release/rempart-backup`). Needs root (sshd with its own configuration).
//!
//! Each repetition backs up into a fresh repository (first backup: every new chunk crosses the
//! link) without the files cache, restores it into a freshly made ext4 file system (a loop
//! device; `REMPART_BENCH_HOST_FS=1`: a fresh directory on the host's), lists it and runs
//! `check --verify-data` (every pack read and every chunk authenticated); the local path and ssh
//! take turns going first, and each timed command starts after a `sync`. The anchor column is
//! the local path; the ratio is ssh time / local time (at most 1.25 meets the 0.8× throughput
//! target). The bench also measures what ssh alone costs on the same sshd with the same options:
//! the connection setup (`ssh … true`) and raw streams of the repository's byte count (what
//! crossed the link) both ways
//! (`ssh … cat >/dev/null`, `ssh … head -c N /dev/zero`), so a reader sees the ceiling, and the
//! busy CPU time of the whole machine during each create and extract (/proc/stat): on a machine
//! with few cores, ssh's and sshd's work takes cores from the client's rather than overlapping.
//!
//! The anchor, the local path, is checked against references measured in the same run (issue
//! 14, `rempart_benches::physical`) before a verdict is printed: raw `pwrite` + `fdatasync` on
//! the scratch file system and, per corpus, one core doing keyed blake3 + zstd,3 (create) or zstd
//! decompress + keyed blake3 (extract, check) on a sample of it. A local create or extract slower
//! than 10× the time min(disk, that pipeline) allows is implausible (it would flatter the ssh
//! ratio): its verdict is withheld. Loopback TCP (where ssh runs) is printed next to ssh's own
//! streams.

use rand::{Rng, SeedableRng};
use rempart_benches::physical::{self, Bound, MIN_FRACTION_CPU};
use rempart_benches::{markdown_table, median, AnchorCheck, Plausibility, Row};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PASS: &str = "bench-passphrase";

fn bin() -> PathBuf {
    if let Some(b) = std::env::var_os("REMPART_BACKUP_BIN") {
        return PathBuf::from(b);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("release/rempart-backup")
}

fn must(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn corpus(root: &Path, mb: usize) {
    let mut r = rand::rngs::StdRng::seed_from_u64(6);
    std::fs::create_dir_all(root.join("text")).unwrap();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    // a third text-like (compressible), two thirds random (incompressible), files of 64 KiB–8 MiB
    let mut left = mb << 20;
    let mut i = 0;
    while left > 0 {
        let n = r.gen_range(64 << 10..8 << 20).min(left);
        let mut v = vec![0u8; n];
        if i % 3 == 0 {
            for (k, b) in v.iter_mut().enumerate() {
                *b = b"abcdefgh ijklmnop\n"[(k * 7 + (k >> 9)) % 18];
            }
            for _ in 0..n / 4096 {
                let at = r.gen_range(0..n);
                v[at] = r.gen();
            }
            std::fs::write(root.join(format!("text/f{i:04}")), v).unwrap();
        } else {
            r.fill(&mut v[..]);
            std::fs::write(root.join(format!("bin/f{i:04}")), v).unwrap();
        }
        left -= n;
        i += 1;
    }
}

struct Sshd {
    child: Child,
    port: u16,
    base: PathBuf,
}

impl Sshd {
    fn start(base: &Path, bin: &Path) -> Sshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        std::fs::create_dir_all(base.join("srv")).unwrap();
        for k in ["hostkey", "client", "raw"] {
            must(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(base.join(k)));
        }
        let pubkey = std::fs::read_to_string(base.join("client.pub")).unwrap();
        // a second key without the forced command, for the raw-ssh ceiling only
        let raw = std::fs::read_to_string(base.join("raw.pub")).unwrap();
        std::fs::write(
            base.join("authorized_keys"),
            format!(
                "command=\"{} serve --restrict-to-path {}\",restrict {}\nrestrict {}\n",
                bin.display(),
                base.join("srv").display(),
                pubkey.trim(),
                raw.trim()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(
            base.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPidFile none\nLogLevel ERROR\nUseDNS no\nGSSAPIAuthentication no\n\
                 PrintMotd no\nPrintLastLog no\nX11Forwarding no\nPermitUserEnvironment no\nCompression no\n",
                base.join("hostkey").display(),
                base.join("authorized_keys").display()
            ),
        )
        .unwrap();
        // sshd runs even a forced command through the account's shell, and Debian's bash then
        // reads ~/.bashrc (built with SSH_SOURCE_BASHRC): root's here may run slow things (pyenv
        // init: 0.15 s per connection on this machine). A backup account has a plain shell
        // setup; to measure as one, sshd runs in a private mount namespace where ~/.bashrc is an
        // empty file. REMPART_BENCH_KEEP_BASHRC=1 measures with it.
        let bashrc = Path::new("/root/.bashrc");
        let hide = bashrc.is_file() && std::env::var_os("REMPART_BENCH_KEEP_BASHRC").is_none();
        let mut cmd = if hide {
            std::fs::write(base.join("empty-bashrc"), "").unwrap();
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"]).arg(format!(
                "mount --bind {} {} && exec /usr/sbin/sshd -D -e -f {}",
                base.join("empty-bashrc").display(),
                bashrc.display(),
                base.join("sshd_config").display()
            ));
            c
        } else {
            let mut c = Command::new("/usr/sbin/sshd");
            c.args(["-D", "-e", "-f"]).arg(base.join("sshd_config"));
            c
        };
        eprintln!(
            "sshd: {}",
            if hide { "root's ~/.bashrc hidden (a plain backup account)" } else { "with the account's ~/.bashrc" }
        );
        let child = cmd
            .stdin(Stdio::null())
            .stderr(Stdio::null()) // the readiness probe's bare connect is logged as an error
            .spawn()
            .unwrap();
        rempart_testkit::wait::until(Duration::from_secs(10), "sshd listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .unwrap();
        Sshd { child, port, base: base.to_path_buf() }
    }

    fn rsh(&self) -> String {
        self.rsh_with("client")
    }

    fn rsh_with(&self, key: &str) -> String {
        format!(
            "ssh -F none -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o GlobalKnownHostsFile=/dev/null -o LogLevel=ERROR \
             -o Compression=no -o GSSAPIAuthentication=no {}",
            self.base.join(key).display(),
            std::env::var("REMPART_BENCH_SSH_OPTS").unwrap_or_default()
        )
    }

    /// `ssh … root@127.0.0.1 <remote>` with the raw (not forced-command) key.
    fn raw(&self, remote: &str) -> Command {
        let rsh = self.rsh_with("raw");
        let mut w = rsh.split_whitespace();
        let mut c = Command::new(w.next().unwrap_or("ssh"));
        c.args(w).args(["-p", &self.port.to_string(), "root@127.0.0.1", remote]);
        c
    }

    /// What ssh alone costs: median connection setup (`true`), and seconds to stream `bytes`
    /// to the server (`cat >/dev/null`) and from it (`head -c`), medians of `reps`.
    fn ceiling(&self, bytes: u64, reps: usize) -> (f64, f64, f64) {
        let mut setup = vec![];
        for _ in 0..5 {
            let t = Instant::now();
            must(self.raw("true").stdin(Stdio::null()));
            setup.push(t.elapsed().as_secs_f64());
        }
        let (mut up, mut down) = (vec![], vec![]);
        let buf: Vec<u8> = {
            let mut r = rand::rngs::StdRng::seed_from_u64(9);
            let mut v = vec![0u8; 1 << 20];
            r.fill(&mut v[..]);
            v
        };
        for _ in 0..reps {
            let t = Instant::now();
            let mut c = self.raw("cat >/dev/null").stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
            let mut sin = c.stdin.take().unwrap();
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                sin.write_all(&buf[..n]).unwrap();
                left -= n as u64;
            }
            drop(sin);
            assert!(c.wait().unwrap().success());
            up.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let mut c = self
                .raw(&format!("head -c {bytes} /dev/zero"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let mut out = c.stdout.take().unwrap();
            let (mut got, mut b) = (0u64, vec![0u8; 1 << 20]);
            loop {
                let n = out.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            assert!(c.wait().unwrap().success());
            assert_eq!(got, bytes);
            down.push(t.elapsed().as_secs_f64());
        }
        let m = |v: &[f64]| median(v).unwrap_or(f64::NAN);
        (m(&setup), m(&up), m(&down))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Samples of one corpus, (local, ssh) for each command.
#[derive(Default)]
struct Samples {
    create: (Vec<f64>, Vec<f64>),
    extract: (Vec<f64>, Vec<f64>),
    list: (Vec<f64>, Vec<f64>),
    check: (Vec<f64>, Vec<f64>),
    /// Repository bytes after the ssh create: what crossed the link.
    stored: Vec<u64>,
    /// Busy CPU-seconds of the whole machine during create and extract, (local, ssh): over ssh
    /// this includes ssh, sshd and the server, which share the cores with the client here.
    create_cpu: (Vec<f64>, Vec<f64>),
    extract_cpu: (Vec<f64>, Vec<f64>),
}

/// Busy CPU-seconds of the whole machine so far (/proc/stat: user, nice, system, irq, softirq;
/// not idle, iowait or steal).
fn busy_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let busy: u64 = [0, 1, 2, 5, 6].iter().filter_map(|&i| ticks.get(i)).sum();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100);
    busy as f64 / hz as f64
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("backup_ssh: needs root (sshd with its own configuration); not run");
        return;
    }
    let env = |k: &str, d: usize| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let mb = env("REMPART_BENCH_MB", 256);
    let real_mb = env("REMPART_BENCH_REAL_MB", 1024);
    let reps = env("REMPART_BENCH_REPS", 4).max(1);
    let bin = bin();
    assert!(bin.is_file(), "{} missing: cargo build --release -p rempart-backup", bin.display());
    let d = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(&d.path().join("ssh"), &bin);
    let rsh = sshd.rsh();
    let ours = |rsh: &str| {
        let mut c = Command::new(&bin);
        c.env("REMPART_PASSPHRASE", PASS)
            .env("REMPART_KEYS_DIR", d.path().join("keys"))
            .env("REMPART_CACHE_DIR", d.path().join("cache"))
            .env("REMPART_RSH", rsh)
            .env_remove("REMPART_PASSCOMMAND")
            .env_remove("REMPART_REPO");
        c
    };
    let mut corpora: Vec<(String, PathBuf)> = vec![];
    let src = d.path().join("corpus-random");
    corpus(&src, mb);
    corpora.push((format!("{mb} MiB, two thirds random (worst case)"), src));
    if real_mb > 0 {
        let src = d.path().join("corpus-real");
        eprintln!("generating the realistic {real_mb} MiB corpus");
        rempart_benches::corpus::generate(&src, real_mb);
        corpora.push((format!("{real_mb} MiB realistic corpus (backup_compare's)"), src));
    }
    let mut tables = String::new();
    let mut verdicts = String::new();
    let disk = physical::disk(d.path()).expect("disk reference");
    let lo = physical::loopback().expect("loopback reference");
    let mut refs = format!("physical references (issue 14): {disk}; {lo}\n");
    for (ci, (label, src)) in corpora.iter().enumerate() {
        let bytes = rempart_benches::corpus::du(src);
        let pipe = physical::pipeline(&rempart_benches::corpus::sample(src, 64 << 20));
        refs.push_str(&format!("{label}: {pipe}\n"));
        let mut sm = Samples::default();
        // On the host's file system (REMPART_BENCH_HOST_FS=1), extract directories are removed
        // only after the last repetition: ext4 does not hand out an inode freed in the last ~30 s,
        // so creating files right after deleting thousands scans the inode bitmap (perf:
        // `recently_deleted`) and the extracts measure that.
        let host_fs = std::env::var_os("REMPART_BENCH_HOST_FS").is_some();
        let mut outs = Vec::new();
        for rep in 0..reps {
            // Which side goes first alternates, and every timed command starts with the page
            // cache written back (`sync`, untimed): a restore leaves ~1 GiB dirty, and whichever
            // command came next paid for its writeback.
            let order = if rep % 2 == 0 { [false, true] } else { [true, false] };
            for remote in order {
                let repo = if remote {
                    format!("ssh://root@127.0.0.1:{}{}/c{ci}r{rep}", sshd.port, sshd.base.join("srv").display())
                } else {
                    d.path().join(format!("local-c{ci}r{rep}")).display().to_string()
                };
                must(ours(&rsh).args(["init", "-e", "repokey", &repo]));
                nix::unistd::sync();
                let (t, cpu) = (Instant::now(), busy_cpu());
                must(ours(&rsh).args(["create", "--no-files-cache"]).arg(format!("{repo}::a")).arg(src));
                let (c, c_cpu) = (t.elapsed().as_secs_f64(), busy_cpu() - cpu);
                let out = d.path().join(format!("out-{ci}-{rep}-{remote}"));
                let fresh = (!host_fs).then(|| rempart_benches::FreshFs::new(&out, bytes));
                std::fs::create_dir_all(&out).unwrap();
                nix::unistd::sync();
                let (t, cpu) = (Instant::now(), busy_cpu());
                must(ours(&rsh).current_dir(&out).arg("extract").arg(format!("{repo}::a")));
                let (x, x_cpu) = (t.elapsed().as_secs_f64(), busy_cpu() - cpu);
                nix::unistd::sync();
                let t = Instant::now();
                must(ours(&rsh).arg("list").arg(&repo));
                let l = t.elapsed().as_secs_f64();
                let t = Instant::now();
                must(ours(&rsh).args(["check", "--verify-data"]).arg(&repo));
                let k = t.elapsed().as_secs_f64();
                match fresh {
                    Some(fs) => drop(fs),
                    None => outs.push(out),
                }
                let stored = if remote {
                    let p = sshd.base.join("srv").join(format!("c{ci}r{rep}"));
                    let n = rempart_benches::corpus::du(&p);
                    let _ = std::fs::remove_dir_all(p);
                    sm.create.1.push(c);
                    sm.extract.1.push(x);
                    sm.create_cpu.1.push(c_cpu);
                    sm.extract_cpu.1.push(x_cpu);
                    sm.list.1.push(l);
                    sm.check.1.push(k);
                    sm.stored.push(n);
                    n
                } else {
                    let n = rempart_benches::corpus::du(Path::new(&repo));
                    let _ = std::fs::remove_dir_all(&repo);
                    sm.create.0.push(c);
                    sm.extract.0.push(x);
                    sm.create_cpu.0.push(c_cpu);
                    sm.extract_cpu.0.push(x_cpu);
                    sm.list.0.push(l);
                    sm.check.0.push(k);
                    n
                };
                eprintln!(
                    "{label}, rep {rep} {}: create {c:.2} s ({:.0} MB/s), extract {x:.2} s ({:.0} MB/s), list {l:.3} s, \
                     check --verify-data {k:.2} s, repository {:.0} MB",
                    if remote { "ssh  " } else { "local" },
                    bytes as f64 / 1e6 / c,
                    bytes as f64 / 1e6 / x,
                    stored as f64 / 1e6
                );
            }
        }
        for out in &outs {
            let _ = std::fs::remove_dir_all(out);
        }
        // The local run's seconds against what the disk and one core allow for these bytes.
        let allow = |mbs: f64, what: &str, with_disk: bool| {
            let disk_mbs = disk.stream_mibs * 1.048576;
            let (rate, reference) = if with_disk {
                (
                    mbs.min(disk_mbs),
                    format!("min(disk pwrite stream {disk_mbs:.0} MB/s, one core {what} {mbs:.0} MB/s)"),
                )
            } else {
                (mbs, format!("one core {what} {mbs:.0} MB/s"))
            };
            let secs = bytes as f64 / 1e6 / rate;
            AnchorCheck::Against {
                reference: format!("{reference}: {secs:.2} s for {:.0} MB", bytes as f64 / 1e6),
                bound: Bound::Cost { reference: secs, max_factor: 1.0 / MIN_FRACTION_CPU },
            }
        };
        let rows = vec![
            Row {
                metric: format!("create, {label} (s)"),
                ours: sm.create.1.clone(),
                anchor: sm.create.0.clone(),
                check: allow(pipe.create_mbs, "keyed blake3 + zstd,3", true),
            },
            Row {
                metric: format!("extract, {label} (s)"),
                ours: sm.extract.1.clone(),
                anchor: sm.extract.0.clone(),
                check: allow(pipe.restore_mbs, "zstd decompress + keyed blake3", true),
            },
            Row {
                metric: format!("list, {label} (s)"),
                ours: sm.list.1.clone(),
                anchor: sm.list.0.clone(),
                check: AnchorCheck::NotChecked("bounded by reading archive metadata, no same-run reference"),
            },
            Row {
                metric: format!("check --verify-data, {label} (s)"),
                ours: sm.check.1.clone(),
                anchor: sm.check.0.clone(),
                check: allow(pipe.restore_mbs, "zstd decompress + keyed blake3", false),
            },
        ];
        let gate = |r: &Row| r.plausibility().unwrap_or_else(|| Plausibility::Implausible("not checked".into()));
        let (create_ok, extract_ok) = (gate(&rows[0]), gate(&rows[1]));
        tables.push_str(
            &markdown_table("local path", &rows)
                .replace("rempart median", "ssh median")
                .replace("rempart p95", "ssh p95"),
        );
        let tp = |s: &[f64]| median(s).map(|m| 1.0 / m).unwrap_or(0.0);
        let cr = tp(&sm.create.1) / tp(&sm.create.0);
        let xr = tp(&sm.extract.1) / tp(&sm.extract.0);
        let kr = tp(&sm.check.1) / tp(&sm.check.0);
        let verdict = |r: f64| if r >= 0.8 { "met" } else { "NOT met" };
        verdicts.push_str(&format!(
            "{label}: throughput over ssh / local: create {cr:.2}× ({}), extract {xr:.2}× ({}), \
             check --verify-data {kr:.2}×\n",
            create_ok.gate(verdict(cr)),
            extract_ok.gate(verdict(xr))
        ));
        // ssh alone moving what crossed the link (the repository's bytes)
        let linked = sm.stored.iter().copied().max().unwrap_or(bytes);
        let (setup, up, down) = sshd.ceiling(linked, reps);
        verdicts.push_str(&format!(
            "  ssh alone, same sshd and options: connection setup {setup:.3} s; {:.0} MB to the server {up:.2} s \
             ({:.0} MB/s), from the server {down:.2} s ({:.0} MB/s)\n",
            linked as f64 / 1e6,
            linked as f64 / 1e6 / up,
            linked as f64 / 1e6 / down
        ));
        // Even if rempart's work and ssh's overlapped perfectly, a run cannot be shorter than
        // ssh moving the bytes that cross the link.
        let m = |v: &[f64]| median(v).unwrap_or(f64::NAN);
        let (lc, lx) = (m(&sm.create.0), m(&sm.extract.0));
        verdicts.push_str(&format!(
            "  best ratio ssh's own streaming allows (local time / max(local time, raw ssh stream)): \
             create {:.2}×, extract {:.2}×\n",
            lc / lc.max(up),
            lx / lx.max(down)
        ));
        // On a small machine ssh's work cannot overlap with rempart's: it takes cores the local
        // run had. If the ssh run kept the cores as busy as the local run did, its throughput
        // ratio would be local CPU / ssh CPU.
        let (cl, cs, xl, xs) = (m(&sm.create_cpu.0), m(&sm.create_cpu.1), m(&sm.extract_cpu.0), m(&sm.extract_cpu.1));
        verdicts.push_str(&format!(
            "  CPU of the whole machine (median busy CPU-s; over ssh with ssh, sshd and the server): create \
             local {cl:.2} / ssh {cs:.2}, extract local {xl:.2} / ssh {xs:.2}; ratio at the local run's \
             utilisation (local CPU / ssh CPU): create {:.2}×, extract {:.2}×\n",
            cl / cs,
            xl / xs
        ));
    }
    println!("\nrempart-backup over ssh (loopback, forced command) vs local path, {reps} repetitions\n");
    println!("{refs}");
    println!("{tables}");
    println!("target: throughput over ssh ≥ 0.80× the local path\n{verdicts}");
}
