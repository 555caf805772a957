//! `create` and `extract` over ssh (a real OpenSSH server on 127.0.0.1 with the forced command
//! `rempart-backup serve`) against the same commands on a local path, same data, same run.
//! The issue's target: throughput over ssh at least 0.8× the local-path case on loopback.
//!
//! ```text
//! cargo build --release -p rempart-backup
//! cargo bench -p rempart-benches --bench backup_ssh
//! ```
//! Environment: `REMPART_BENCH_MB` (corpus size, default 256), `REMPART_BENCH_REPS` (default 3),
//! `REMPART_BENCH_SSH_OPTS` (extra ssh options, e.g. `-c aes128-gcm@openssh.com`),
//! `REMPART_BACKUP_BIN` (default `$CARGO_TARGET_DIR/release/rempart-backup` or
//! `target/release/rempart-backup`). Needs root (sshd with its own configuration).
//!
//! Each repetition backs up into a fresh repository (first backup: every chunk crosses the
//! link) without the files cache, then restores it into a fresh directory. The anchor column is
//! the local path; the ratio is ssh time / local time (below 1.25 meets the 0.8× throughput
//! target).

use rand::{Rng, SeedableRng};
use rempart_benches::{markdown_table, median, Row};
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
        for k in ["hostkey", "client"] {
            must(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(base.join(k)));
        }
        let pubkey = std::fs::read_to_string(base.join("client.pub")).unwrap();
        std::fs::write(
            base.join("authorized_keys"),
            format!(
                "command=\"{} serve --restrict-to-path {}\",restrict {}\n",
                bin.display(),
                base.join("srv").display(),
                pubkey.trim()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        std::fs::write(
            base.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 UsePAM no\nStrictModes no\nPidFile none\nLogLevel ERROR\n",
                base.join("hostkey").display(),
                base.join("authorized_keys").display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(base.join("sshd_config"))
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
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o Compression=no {}",
            self.base.join("client").display(),
            std::env::var("REMPART_BENCH_SSH_OPTS").unwrap_or_default()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("backup_ssh: needs root (sshd with its own configuration); not run");
        return;
    }
    let mb: usize = std::env::var("REMPART_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
    let reps: usize = std::env::var("REMPART_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let bin = bin();
    assert!(bin.is_file(), "{} missing: cargo build --release -p rempart-backup", bin.display());
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("corpus");
    corpus(&src, mb);
    let sshd = Sshd::start(&d.path().join("ssh"), &bin);
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
    let rsh = sshd.rsh();
    let (mut create_local, mut create_ssh, mut extract_local, mut extract_ssh) = (vec![], vec![], vec![], vec![]);
    for rep in 0..reps {
        for remote in [false, true] {
            let repo = if remote {
                format!("ssh://root@127.0.0.1:{}{}/r{rep}", sshd.port, sshd.base.join("srv").display())
            } else {
                d.path().join(format!("local-r{rep}")).display().to_string()
            };
            must(ours(&rsh).args(["init", "-e", "repokey", &repo]));
            let t = Instant::now();
            must(ours(&rsh).args(["create", "--no-files-cache"]).arg(format!("{repo}::a")).arg(&src));
            let c = t.elapsed().as_secs_f64();
            let out = d.path().join(format!("out-{rep}-{remote}"));
            std::fs::create_dir_all(&out).unwrap();
            let t = Instant::now();
            must(ours(&rsh).current_dir(&out).arg("extract").arg(format!("{repo}::a")));
            let x = t.elapsed().as_secs_f64();
            let t = Instant::now();
            must(ours(&rsh).arg("list").arg(&repo));
            let l = t.elapsed().as_secs_f64();
            std::fs::remove_dir_all(&out).unwrap();
            if remote {
                let _ = std::fs::remove_dir_all(sshd.base.join("srv").join(format!("r{rep}")));
                create_ssh.push(c);
                extract_ssh.push(x);
            } else {
                let _ = std::fs::remove_dir_all(&repo);
                create_local.push(c);
                extract_local.push(x);
            }
            eprintln!(
                "rep {rep} {}: create {c:.2} s ({:.0} MB/s), extract {x:.2} s ({:.0} MB/s), list {l:.3} s",
                if remote { "ssh  " } else { "local" },
                mb as f64 * 1.048_576 / c,
                mb as f64 * 1.048_576 / x
            );
        }
    }
    let rows = vec![
        Row {
            metric: format!("create {mb} MiB, first backup (s)"),
            ours: create_ssh.clone(),
            anchor: create_local.clone(),
        },
        Row { metric: format!("extract {mb} MiB (s)"), ours: extract_ssh.clone(), anchor: extract_local.clone() },
    ];
    println!("\nrempart-backup over ssh (loopback, forced command) vs local path, {reps} repetitions\n");
    println!(
        "{}",
        markdown_table("local path", &rows).replace("rempart median", "ssh median").replace("rempart p95", "ssh p95")
    );
    let tp = |s: &[f64]| median(s).map(|m| 1.0 / m).unwrap_or(0.0);
    let cr = tp(&create_ssh) / tp(&create_local);
    let xr = tp(&extract_ssh) / tp(&extract_local);
    println!(
        "throughput over ssh / local: create {cr:.2}×, extract {xr:.2}× (target ≥ 0.80×: create {}, extract {})",
        if cr >= 0.8 { "met" } else { "NOT met" },
        if xr >= 0.8 { "met" } else { "NOT met" }
    );
}
