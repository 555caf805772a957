//! rempart-backup vs borg 1.2.4 vs restic 0.14 on the same generated corpus, same machine, same run.
//!
//! ```text
//! cargo build --release -p rempart-backup
//! cargo bench -p rempart-benches --bench backup_compare
//! ```
//! Environment: `REMPART_BENCH_MB` (corpus size, default 1100), `REMPART_BENCH_DIR` (scratch
//! directory, default /tmp/rempart-backup-bench), `REMPART_BACKUP_BIN` (our binary; default
//! `$CARGO_TARGET_DIR/release/rempart-backup` or `target/release/rempart-backup`).
//!
//! Measures: first backup, unchanged second backup, backup after modifying 5 % of the files, full
//! restore, `check --verify-data` (restic: `check --read-data`): wall time, MB/s, repository size,
//! peak RSS (GNU time). Then, in-process, what each chunk size trades on the file with shifted
//! duplicates: stored bytes, number of chunks (index size) and chunking speed.

use dedupstore::chunker::{Chunker, ChunkerParams};
use rand::{Rng, SeedableRng};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PASS: &str = "bench-passphrase";

fn words(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    const W: &[&str] = &[
        "the",
        "backup",
        "server",
        "of",
        "a",
        "small",
        "organisation",
        "keeps",
        "running",
        "when",
        "disk",
        "dies",
        "and",
        "brings",
        "it",
        "back",
        "configuration",
        "file",
        "network",
        "user",
        "home",
        "directory",
        "log",
        "entry",
        "error",
        "warning",
        "info",
        "debug",
        "request",
        "time",
    ];
    let mut out = Vec::with_capacity(n + 16);
    while out.len() < n {
        out.extend_from_slice(W[rng.gen_range(0..W.len())].as_bytes());
        out.push(if rng.gen_bool(0.1) { b'\n' } else { b' ' });
        if rng.gen_bool(0.02) {
            out.extend_from_slice(format!("{} ", rng.gen::<u32>()).as_bytes());
        }
    }
    out.truncate(n);
    out
}

fn random(rng: &mut impl Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v[..]);
    v
}

/// The file with shifted duplicates: 1 MiB blocks, ~45 % of them repeats of earlier blocks,
/// separated by a few random bytes so that repeats are not aligned.
fn shifted_file(rng: &mut impl Rng, size: usize) -> Vec<u8> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    let mut out = Vec::with_capacity(size + (1 << 20));
    while out.len() < size {
        if !blocks.is_empty() && rng.gen_bool(0.45) {
            let b = blocks[rng.gen_range(0..blocks.len())].clone();
            out.extend_from_slice(&b);
        } else {
            let b = random(rng, 1 << 20);
            out.extend_from_slice(&b);
            blocks.push(b);
        }
        let junk = rng.gen_range(1..4096);
        out.extend(random(rng, junk));
    }
    out.truncate(size);
    out
}

fn generate(root: &Path, total_mb: usize) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2024);
    std::fs::create_dir_all(root).unwrap();
    let mb = 1usize << 20;
    let big = total_mb * 47 / 100;
    let text = total_mb * 20 / 100;
    let bin = total_mb * 20 / 100;
    let small = total_mb - big - text - bin;
    std::fs::write(root.join("large-with-shifted-duplicates.img"), shifted_file(&mut rng, big * mb)).unwrap();
    let d = root.join("text");
    std::fs::create_dir_all(&d).unwrap();
    let mut n = 0;
    let mut left = text * mb;
    while left > 0 {
        let sz = rng.gen_range(50_000..2_000_000).min(left);
        std::fs::write(d.join(format!("doc{n:05}.txt")), words(&mut rng, sz)).unwrap();
        left -= sz;
        n += 1;
    }
    // binaries: real ones from /usr/lib first, then random (incompressible) data
    let d = root.join("bin");
    std::fs::create_dir_all(&d).unwrap();
    let mut left = bin * mb;
    let mut libs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/x86_64-linux-gnu")
        .map(|r| r.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    libs.sort();
    for (i, l) in libs.iter().enumerate() {
        if left < bin * mb / 2 {
            break;
        }
        if let Ok(md) = std::fs::metadata(l) {
            if md.is_file() && md.len() > 10_000 && (md.len() as usize) < left {
                if let Ok(data) = std::fs::read(l) {
                    std::fs::write(d.join(format!("lib{i:04}")), &data).unwrap();
                    left -= data.len();
                }
            }
        }
    }
    let mut i = 0;
    while left > 0 {
        let sz = rng.gen_range(100_000..8_000_000).min(left);
        std::fs::write(d.join(format!("blob{i:04}.bin")), random(&mut rng, sz)).unwrap();
        left -= sz;
        i += 1;
    }
    let d = root.join("small");
    let mut left = small * mb;
    let mut i = 0;
    while left > 0 {
        let sub = d.join(format!("dir{:03}", i / 200));
        if i % 200 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        let sz = rng.gen_range(100..10_000).min(left);
        std::fs::write(sub.join(format!("f{i:06}.conf")), words(&mut rng, sz)).unwrap();
        left -= sz;
        i += 1;
    }
    du(root)
}

/// Modifies 5 % of the files (a few bytes rewritten in the middle).
fn modify(root: &Path, seed: u64) -> usize {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut files = Vec::new();
    walk(root, &mut files);
    files.sort();
    let mut n = 0;
    for f in &files {
        if rng.gen_bool(0.05) {
            let mut d = std::fs::read(f).unwrap();
            if d.is_empty() {
                continue;
            }
            let at = rng.gen_range(0..d.len());
            let end = (at + 64).min(d.len());
            rng.fill(&mut d[at..end]);
            std::fs::write(f, d).unwrap();
            n += 1;
        }
    }
    n
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(p).unwrap() {
        let e = e.unwrap().path();
        if e.is_dir() {
            walk(&e, out);
        } else {
            out.push(e);
        }
    }
}

fn du(p: &Path) -> u64 {
    let mut files = Vec::new();
    walk(p, &mut files);
    files.iter().map(|f| std::fs::symlink_metadata(f).map(|m| m.len()).unwrap_or(0)).sum()
}

/// What one command cost.
#[derive(Clone, Copy)]
struct Cost {
    wall: f64,
    rss_mb: f64,
    cpu: f64,
}

/// Runs a command under GNU time.
fn timed(c: Command, what: &str) -> Cost {
    let stats = std::env::temp_dir().join(format!("rempart-bench-time-{}", std::process::id()));
    let prog = c.get_program().to_owned();
    let args: Vec<_> = c.get_args().map(|a| a.to_owned()).collect();
    let mut t = Command::new("/usr/bin/time");
    t.arg("-f").arg("%M %U %S").arg("-o").arg(&stats).arg(prog).args(args);
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    if let Some(d) = c.get_current_dir() {
        t.current_dir(d);
    }
    let start = Instant::now();
    let out = t.output().unwrap();
    let wall = start.elapsed().as_secs_f64();
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = std::fs::read_to_string(&stats).unwrap();
    let f: Vec<f64> = line.lines().last().unwrap().split_whitespace().map(|x| x.parse().unwrap()).collect();
    Cost { wall, rss_mb: f[0] / 1024.0, cpu: f[1] + f[2] }
}

struct Tool {
    name: &'static str,
    repo: PathBuf,
}

impl Tool {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match self.name {
            "rempart" => {
                let bin = std::env::var("REMPART_BACKUP_BIN").map(PathBuf::from).unwrap_or_else(|_| {
                    let t = std::env::var("CARGO_TARGET_DIR")
                        .unwrap_or_else(|_| format!("{}/../target", env!("CARGO_MANIFEST_DIR")));
                    PathBuf::from(t).join("release/rempart-backup")
                });
                assert!(bin.exists(), "{} missing: cargo build --release -p rempart-backup", bin.display());
                let mut c = Command::new(bin);
                c.env("REMPART_PASSPHRASE", PASS);
                c
            }
            "borg" => {
                let mut c = Command::new("borg");
                c.env("BORG_PASSPHRASE", PASS);
                c
            }
            _ => {
                let mut c = Command::new("restic");
                c.env("RESTIC_PASSWORD", PASS);
                c
            }
        };
        c.args(args);
        c
    }

    fn home(&self) -> PathBuf {
        self.repo.parent().unwrap().join(format!("{}-home", self.name))
    }

    fn prep(&self, c: &mut Command) {
        let h = self.home();
        c.env("HOME", &h)
            .env("BORG_BASE_DIR", &h)
            .env("REMPART_CACHE_DIR", h.join("cache"))
            .env("REMPART_KEYS_DIR", h.join("keys"))
            .env("XDG_CACHE_HOME", h.join("cache"));
    }

    fn init(&self) {
        let r = self.repo.to_str().unwrap();
        let mut c = match self.name {
            "restic" => self.cmd(&["init", "--repo", r]),
            _ => self.cmd(&["init", "--encryption", "repokey", r]),
        };
        self.prep(&mut c);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{} init: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    fn backup(&self, name: &str, src: &Path) -> Cost {
        let r = self.repo.to_str().unwrap();
        let s = src.to_str().unwrap();
        let target = format!("{r}::{name}");
        let mut c = match self.name {
            "restic" => self.cmd(&["backup", "--repo", r, "--compression", "auto", s]),
            "borg" => self.cmd(&["create", "--compression", "zstd,3", &target, s]),
            _ => self.cmd(&["create", "--compression", "auto,zstd,3", &target, s]),
        };
        self.prep(&mut c);
        timed(c, &format!("{} backup {name}", self.name))
    }

    fn restore(&self, name: &str, dest: &Path) -> Cost {
        std::fs::create_dir_all(dest).unwrap();
        let r = self.repo.to_str().unwrap();
        let target = format!("{r}::{name}");
        let mut c = match self.name {
            "restic" => self.cmd(&["restore", "latest", "--repo", r, "--target", dest.to_str().unwrap()]),
            _ => self.cmd(&["extract", &target]),
        };
        c.current_dir(dest);
        self.prep(&mut c);
        timed(c, &format!("{} restore", self.name))
    }

    fn check(&self) -> Cost {
        let r = self.repo.to_str().unwrap();
        let mut c = match self.name {
            "restic" => self.cmd(&["check", "--read-data", "--repo", r]),
            _ => self.cmd(&["check", "--verify-data", r]),
        };
        self.prep(&mut c);
        timed(c, &format!("{} check", self.name))
    }
}

fn chunk_table(file: &Path) -> String {
    let data = std::fs::read(file).unwrap();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| chunker (min/avg/max) | stored of the shifted-duplicates file | chunks (index entries) | chunking speed |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (label, p) in [
        ("16K/64K/256K (default)", ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 }),
        ("64K/256K/1M", ChunkerParams { min: 64 << 10, avg: 256 << 10, max: 1 << 20 }),
        ("512K/2M/8M (borg's size)", ChunkerParams { min: 512 << 10, avg: 2 << 20, max: 8 << 20 }),
    ] {
        let c = Chunker::new(p, &[3; 32]);
        let t = Instant::now();
        let parts = c.split(&data);
        let secs = t.elapsed().as_secs_f64();
        let mut seen = HashSet::new();
        let mut stored = 0usize;
        for part in &parts {
            if seen.insert(*blake3::hash(part).as_bytes()) {
                stored += part.len();
            }
        }
        let _ = writeln!(
            out,
            "| {label} | {:.1} % | {} | {:.0} MB/s |",
            stored as f64 * 100.0 / data.len() as f64,
            parts.len(),
            data.len() as f64 / secs / 1e6
        );
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mb: usize = std::env::var("REMPART_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(1100);
    if let Ok(only) = std::env::var("REMPART_BENCH_GENERATE_ONLY") {
        // For profiling one tool by hand: write the corpus and stop.
        let size = generate(Path::new(&only), mb);
        println!("{only}: {:.0} MB", size as f64 / 1e6);
        return;
    }
    let dir = PathBuf::from(std::env::var("REMPART_BENCH_DIR").unwrap_or_else(|_| "/tmp/rempart-backup-bench".into()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("corpus");
    eprintln!("generating a {mb} MB corpus in {}", src.display());
    let size = generate(&src, mb) as f64;
    let tools: Vec<Tool> =
        ["rempart", "borg", "restic"].iter().map(|n| Tool { name: n, repo: dir.join(format!("{n}-repo")) }).collect();
    for t in &tools {
        std::fs::create_dir_all(t.home()).unwrap();
        t.init();
    }
    // Drop the page cache influence as far as we can without root tricks: every tool reads the
    // same corpus, in rotating order, and the first pass warms the cache for everyone.
    let _ = Command::new("cat").arg(src.join("large-with-shifted-duplicates.img")).output();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut push = |metric: &str, vals: Vec<String>| rows.push((metric.to_string(), vals));
    // Every operation: wall time, throughput over the corpus size, peak RSS, CPU time (user +
    // sys: what the machine spent, independent of how busy it was with other work).
    let mut op = |label: &str, costs: &[Cost]| {
        push(&format!("{label}: wall (s)"), costs.iter().map(|c| format!("{:.2}", c.wall)).collect());
        push(&format!("{label}: MB/s"), costs.iter().map(|c| format!("{:.0}", size / 1e6 / c.wall)).collect());
        push(&format!("{label}: peak RSS (MB)"), costs.iter().map(|c| format!("{:.0}", c.rss_mb)).collect());
        push(&format!("{label}: CPU (s)"), costs.iter().map(|c| format!("{:.2}", c.cpu)).collect());
    };
    let first: Vec<_> = tools.iter().map(|t| t.backup("first", &src)).collect();
    op("first backup", &first);
    let repo_first: Vec<String> = tools.iter().map(|t| format!("{:.0}", du(&t.repo) as f64 / 1e6)).collect();
    let second: Vec<_> = tools.iter().map(|t| t.backup("second", &src)).collect();
    op("unchanged backup", &second);
    let changed = modify(&src, 77);
    let third: Vec<_> = tools.iter().map(|t| t.backup("third", &src)).collect();
    op(&format!("backup after modifying 5 % ({changed} files)"), &third);
    let restore: Vec<_> = tools
        .iter()
        .map(|t| {
            let dest = dir.join(format!("{}-restore", t.name));
            let r = t.restore("third", &dest);
            std::fs::remove_dir_all(&dest).unwrap();
            r
        })
        .collect();
    op("full restore", &restore);
    let check: Vec<_> = tools.iter().map(|t| t.check()).collect();
    op("check --verify-data", &check);
    push("repository size after the first backup (MB)", repo_first);
    push(
        "repository size after three backups (MB)",
        tools.iter().map(|t| format!("{:.0}", du(&t.repo) as f64 / 1e6)).collect(),
    );
    let mut out = String::new();
    let _ = writeln!(
        out,
        "corpus: {:.0} MB; {} cores",
        size / 1e6,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let _ = writeln!(
        out,
        "| metric | rempart-backup | borg 1.2.4 (zstd,3) | restic 0.14 | rempart/borg | rempart/restic |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (m, v) in &rows {
        let ratio = |i: usize| -> String {
            match (v[0].parse::<f64>(), v[i].parse::<f64>()) {
                (Ok(a), Ok(b)) if b != 0.0 => format!("{:.2}", a / b),
                _ => "n/a".into(),
            }
        };
        let _ = writeln!(out, "| {m} | {} | {} | {} | {} | {} |", v[0], v[1], v[2], ratio(1), ratio(2));
    }
    let _ = writeln!(out);
    out.push_str(&chunk_table(&src.join("large-with-shifted-duplicates.img")));
    let _ = writeln!(
        out,
        "\nThe default (16K/64K/256K) finds duplicates shifted inside large files that borg's ~2 MiB \
         chunks miss, at the price of ~30x more index entries (about 80 bytes each: ~1.3 MB of \
         index per GB of unique data) and a little chunking speed; per-chunk costs (hashing, \
         envelope, a zstd frame) stay small next to compression at this size."
    );
    println!("{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
