//! rempart-backup vs borg 1.2.4 vs restic 0.14 on the same generated corpus, same machine, same run.
//!
//! ```text
//! cargo build --release -p rempart-backup
//! cargo bench -p rempart-benches --bench backup_compare
//! ```
//! Environment: `REMPART_BENCH_MB` (corpus size, default 1100), `REMPART_BENCH_MOUNT_ONLY=1` (only
//! the `mount` vs `borg mount` rows, after one backup by each), `REMPART_BENCH_REPS` (runs of
//! each repeated operation, default 3), `REMPART_BENCH_DIR` (scratch directory, default
//! /tmp/rempart-backup-bench), `REMPART_BACKUP_BIN` (our binary; default
//! `$CARGO_TARGET_DIR/release/rempart-backup` or `target/release/rempart-backup`).
//!
//! Measures: first backup, unchanged second backup, backup after modifying 5 % of the files, full
//! restore, `check --verify-data` (restic: `check --read-data`): wall time, MB/s, repository size,
//! peak RSS (GNU time); `mount` against `borg mount` of the same archive: the large file read
//! through the mount against `extract` of that file, and `tar c` of the archive through the mount.
//! Each restore goes to a freshly made ext4 file system on a loop device (needs
//! root; `REMPART_BENCH_HOST_FS=1`: a directory on the host's). The first backup (each run into fresh repositories), the unchanged
//! backup, the restore and the check run `REMPART_BENCH_REPS` times, the three tools interleaved
//! (rempart, borg, restic, then borg, restic, rempart, ...), and the table shows the median of
//! each figure; the backup after modifying files runs once. Then, in-process, what each chunk
//! size trades on the file with shifted duplicates: stored bytes, number of chunks (index size)
//! and chunking speed.
//!
//! borg and restic, the anchors, are checked against references measured in the same run
//! (issue 14, `rempart_benches::physical`) before the table: raw `pwrite` + `fdatasync` on the
//! scratch directory's file system, and one core doing the least a backup (keyed blake3 + zstd,3)
//! or a restore / verifying check (zstd decompress + keyed blake3) must do, on a sample of the
//! corpus, measured before the first backup and after the checks (the faster of the two counts).
//! Both tools are CPU-bound, so an anchor's throughput below 10 % of min(disk, that one-core
//! pipeline), or its CPU time above 10× the pipeline's, marks it implausible. Incremental
//! backups (bounded by metadata work), peak RSS and repository sizes are not checked.

use dedupstore::chunker::{Chunker, ChunkerParams};
use rand::{Rng, SeedableRng};
use rempart_benches::corpus::generate;
use rempart_benches::physical::{self, Bound, MIN_FRACTION_CPU};
use rempart_benches::AnchorCheck;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const PASS: &str = "bench-passphrase";

// The corpus generator is shared with the ssh bench: rempart_benches::corpus::generate.

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

/// The median of each figure over runs.
fn median(costs: &[Cost]) -> Cost {
    let med = |f: fn(&Cost) -> f64| {
        let mut v: Vec<f64> = costs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    Cost { wall: med(|c| c.wall), rss_mb: med(|c| c.rss_mb), cpu: med(|c| c.cpu) }
}

/// Runs `f` `reps` times for every tool, interleaved and in rotating order (no tool always runs
/// first, on the coldest cache); returns each tool's medians.
fn repeated(tools: &[Tool], reps: usize, mut f: impl FnMut(&Tool, usize) -> Cost) -> Vec<Cost> {
    let mut all: Vec<Vec<Cost>> = vec![Vec::new(); tools.len()];
    for rep in 0..reps {
        for k in 0..tools.len() {
            let i = (k + rep) % tools.len();
            all[i].push(f(&tools[i], rep));
        }
    }
    all.iter().map(|c| median(c)).collect()
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

    /// A fresh, empty repository (and an empty cache).
    fn fresh(&self) {
        let _ = std::fs::remove_dir_all(&self.repo);
        let _ = std::fs::remove_dir_all(self.home());
        std::fs::create_dir_all(self.home()).unwrap();
        self.init();
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

/// `mount` against `borg mount` of the same archive (issue 17), each measurement on a fresh mount
/// (an empty chunk cache and page cache of the mount): reading the large file through the mount
/// against `extract` of that file alone, and `tar c` of the whole archive through the mount.
/// Rows: (metric, [rempart, borg, restic = n/a]).
fn mount_rows(tools: &[Tool], dir: &Path, src: &Path, archive: &str, reps: usize) -> Vec<(String, Vec<String>)> {
    let large = src.join("large-with-shifted-duplicates.img");
    let large_mb = std::fs::metadata(&large).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    // archive paths have no leading '/'
    let rel = |p: &Path| p.strip_prefix("/").unwrap_or(p).to_path_buf();
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let pair = &tools[..2];
    let through_mount = |t: &Tool, shell: &str| -> Cost {
        let target = format!("{}::{archive}", t.repo.display());
        let mut c = t.cmd(&["mount", &target, mnt.to_str().unwrap()]);
        t.prep(&mut c);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{} mount: {}", t.name, String::from_utf8_lossy(&out.stderr));
        nix::unistd::sync();
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(shell.replace("MNT", mnt.to_str().unwrap()));
        let cost = timed(sh, &format!("{} through the mount", t.name));
        let mut u = t.cmd(&["umount", mnt.to_str().unwrap()]);
        t.prep(&mut u);
        let out = u.output().unwrap();
        assert!(out.status.success(), "{} umount: {}", t.name, String::from_utf8_lossy(&out.stderr));
        cost
    };
    let large_in = rel(&large);
    let read = repeated(pair, reps, |t, _| through_mount(t, &format!("cat 'MNT/{}' >/dev/null", large_in.display())));
    let extract = repeated(pair, reps, |t, rep| {
        let dest = dir.join(format!("{}-extract-one-{rep}", t.name));
        std::fs::create_dir_all(&dest).unwrap();
        let target = format!("{}::{archive}", t.repo.display());
        let mut c = t.cmd(&["extract", &target, large_in.to_str().unwrap()]);
        c.current_dir(&dest);
        t.prep(&mut c);
        nix::unistd::sync();
        let cost = timed(c, &format!("{} extract of one file", t.name));
        let _ = std::fs::remove_dir_all(&dest);
        cost
    });
    let tar = repeated(pair, reps, |t, _| {
        through_mount(t, &format!("tar -C 'MNT/{}' -cf - . | cat >/dev/null", rel(src).display()))
    });
    let size = rempart_benches::corpus::du(src) as f64;
    let row = |label: String, v: [f64; 2], digits: usize| {
        (label, vec![format!("{:.*}", digits, v[0]), format!("{:.*}", digits, v[1]), "n/a".into()])
    };
    vec![
        row(
            format!("mount: read the large file ({large_mb:.0} MB) through the mount: wall (s)"),
            [read[0].wall, read[1].wall],
            2,
        ),
        row(
            "mount: read the large file through the mount: MB/s".into(),
            [large_mb / read[0].wall, large_mb / read[1].wall],
            0,
        ),
        row("mount: extract of the same file alone: wall (s)".into(), [extract[0].wall, extract[1].wall], 2),
        row(
            "mount: read through the mount / extract (wall, each tool its own)".into(),
            [read[0].wall / extract[0].wall, read[1].wall / extract[1].wall],
            2,
        ),
        row("mount: tar c of the archive through the mount: wall (s)".into(), [tar[0].wall, tar[1].wall], 2),
        row("mount: tar c through the mount: MB/s".into(), [size / 1e6 / tar[0].wall, size / 1e6 / tar[1].wall], 0),
        row("mount: tar c through the mount: CPU of tar and cat (s)".into(), [tar[0].cpu, tar[1].cpu], 2),
    ]
}

/// `rempart-backup import-borg -a first` of borg's repository into a fresh rempart repository:
/// wall time and MB/s of the archive's original data (the corpus). rempart only: the other
/// tools have no such command.
fn import_borg_rows(borg: &Tool, dir: &Path, size: f64) -> Vec<(String, Vec<String>)> {
    let rempart = Tool { name: "rempart", repo: dir.join("import-repo") };
    // not fresh(): the home (cache, keys) is the main rempart repository's too
    let _ = std::fs::remove_dir_all(&rempart.repo);
    rempart.init();
    let mut c =
        rempart.cmd(&["import-borg", "-a", "first", borg.repo.to_str().unwrap(), rempart.repo.to_str().unwrap()]);
    rempart.prep(&mut c);
    c.env("BORG_PASSPHRASE", PASS).env("BORG_BASE_DIR", borg.home());
    let cost = timed(c, "rempart import-borg");
    let _ = std::fs::remove_dir_all(&rempart.repo);
    let na = || "n/a".to_string();
    vec![
        ("import-borg of borg's first archive: wall (s)".into(), vec![format!("{:.2}", cost.wall), na(), na()]),
        (
            "import-borg: MB/s of borg's original data".into(),
            vec![format!("{:.0}", size / 1e6 / cost.wall), na(), na()],
        ),
        ("import-borg: CPU (s)".into(), vec![format!("{:.2}", cost.cpu), na(), na()]),
        ("import-borg: peak RSS (MB)".into(), vec![format!("{:.0}", cost.rss_mb), na(), na()]),
    ]
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

/// The same-run references of this bench: the disk and the one-core pipeline, each measured
/// twice (before the first backup, after the checks).
struct Refs {
    disk: Vec<physical::Disk>,
    pipeline: Vec<physical::Pipeline>,
}

impl Refs {
    fn measure(&mut self, dir: &Path, src: &Path) {
        let d = physical::disk(dir).expect("disk reference");
        let p = physical::pipeline(&rempart_benches::corpus::sample(src, 64 << 20));
        eprintln!("physical references: {d}; {p}");
        self.disk.push(d);
        self.pipeline.push(p);
    }

    /// MB/s (10^6) of the disk's 1 MiB pwrite stream + fdatasync, the better of the runs.
    fn disk_mbs(&self) -> f64 {
        self.disk.iter().map(|d| d.stream_mibs * 1.048576).fold(f64::NAN, f64::max)
    }

    fn best(&self, f: fn(&physical::Pipeline) -> f64) -> f64 {
        self.pipeline.iter().map(f).fold(f64::NAN, f64::max)
    }

    /// How an anchor's figures for one operation over `bytes` are checked: its MB/s against
    /// `MIN_FRACTION_CPU` of min(disk, pipeline), its CPU seconds against 10× the pipeline's.
    fn op(&self, bytes: f64, restore: bool, with_disk: bool) -> OpCheck {
        let (pipe, what) = if restore {
            (self.best(|p| p.restore_mbs), "zstd decompress + keyed blake3")
        } else {
            (self.best(|p| p.create_mbs), "keyed blake3 + zstd,3")
        };
        let (rate, reference) = if with_disk {
            let disk = self.disk_mbs();
            (pipe.min(disk), format!("min(disk pwrite stream {disk:.0} MB/s, one core {what} {pipe:.0} MB/s)"))
        } else {
            (pipe, format!("one core {what} {pipe:.0} MB/s"))
        };
        let cpu_s = bytes / 1e6 / pipe;
        OpCheck {
            rate: AnchorCheck::Against {
                reference: format!("{reference} = {rate:.0} MB/s"),
                bound: Bound::Rate { reference: rate, min_fraction: MIN_FRACTION_CPU },
            },
            cpu: AnchorCheck::Against {
                reference: format!("one core {what} over the corpus: {cpu_s:.2} s"),
                bound: Bound::Cost { reference: cpu_s, max_factor: 1.0 / MIN_FRACTION_CPU },
            },
        }
    }
}

/// One measured operation: its label, each tool's median costs, and how its anchors are
/// bounded: `Some((with_disk, restore_pipeline))`, or `None` when not checked.
type Op = (String, Vec<Cost>, Option<(bool, bool)>);

/// The checks of one operation's rows (wall and MB/s share the rate check).
struct OpCheck {
    rate: AnchorCheck,
    cpu: AnchorCheck,
}

impl OpCheck {
    fn not_checked(why: &'static str) -> OpCheck {
        OpCheck { rate: AnchorCheck::NotChecked(why), cpu: AnchorCheck::NotChecked(why) }
    }
}

/// One row of the table: the figures as printed, each anchor's value (borg, restic) in the
/// unit `check` expects, and the check.
struct TableRow {
    metric: String,
    vals: Vec<String>,
    anchors: [f64; 2],
    check: AnchorCheck,
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
    let reps: usize = std::env::var("REMPART_BENCH_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    let tools: Vec<Tool> =
        ["rempart", "borg", "restic"].iter().map(|n| Tool { name: n, repo: dir.join(format!("{n}-repo")) }).collect();
    if std::env::var_os("REMPART_BENCH_MOUNT_ONLY").is_some() {
        // only the mount rows: one backup by rempart and borg, then the mounts
        for t in &tools[..2] {
            t.fresh();
            t.backup("third", &src);
        }
        println!("corpus: {:.0} MB; medians of {reps} runs\n", size / 1e6);
        println!("| metric | rempart-backup | borg 1.2.4 | rempart/borg |\n|---|---:|---:|---:|");
        for (m, v) in mount_rows(&tools, &dir, &src, "third", reps) {
            let ratio = match (v[0].parse::<f64>(), v[1].parse::<f64>()) {
                (Ok(a), Ok(b)) if b != 0.0 => format!("{:.2}", a / b),
                _ => "n/a".into(),
            };
            println!("| {m} | {} | {} | {ratio} |", v[0], v[1]);
        }
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    // Drop the page cache influence as far as we can without root tricks: every tool reads the
    // same corpus, in rotating order, and the first pass warms the cache for everyone.
    let _ = Command::new("cat").arg(src.join("large-with-shifted-duplicates.img")).output();
    let mut refs = Refs { disk: Vec::new(), pipeline: Vec::new() };
    refs.measure(&dir, &src);
    // Checks are made once both reference runs are in.
    let mut ops: Vec<Op> = Vec::new();
    let mut extra: Vec<(String, Vec<String>)> = Vec::new();
    let first = repeated(&tools, reps, |t, _| {
        t.fresh();
        t.backup("first", &src)
    });
    ops.push(("first backup".into(), first, Some((true, false))));
    let repo_first: Vec<String> =
        tools.iter().map(|t| format!("{:.0}", rempart_benches::corpus::du(&t.repo) as f64 / 1e6)).collect();
    let second = repeated(&tools, reps, |t, rep| t.backup(&format!("second-{rep}"), &src));
    ops.push(("unchanged backup".into(), second, None));
    let changed = modify(&src, 77);
    let third: Vec<_> = tools.iter().map(|t| t.backup("third", &src)).collect();
    ops.push((format!("backup after modifying 5 % ({changed} files)"), third, None));
    // Every restore goes to a freshly made ext4 (a loop device, `rempart_benches::FreshFs`): on
    // the host's file system each restore ran slower than the one before, whichever tool it was
    // (ext4 scans its inode bitmap for files created soon after thousands were deleted; perf:
    // `recently_deleted`, up to 37 % of a restore's CPU). `REMPART_BENCH_HOST_FS=1` restores on the
    // host's file system (each restore into its own directory, all removed afterwards).
    let host_fs = std::env::var_os("REMPART_BENCH_HOST_FS").is_some();
    let restore = repeated(&tools, reps, |t, rep| {
        let dest = dir.join(format!("{}-restore-{rep}", t.name));
        let fresh = (!host_fs).then(|| rempart_benches::FreshFs::new(&dest, size as u64));
        // the previous restore's dirty pages are written back before the clock starts
        nix::unistd::sync();
        let cost = t.restore("third", &dest);
        drop(fresh);
        cost
    });
    for t in &tools {
        for rep in 0..reps {
            let _ = std::fs::remove_dir_all(dir.join(format!("{}-restore-{rep}", t.name)));
        }
    }
    ops.push(("full restore".into(), restore, Some((true, true))));
    let check = repeated(&tools, reps, |t, _| t.check());
    // A check reads the repository (page cache) and writes nothing: the pipeline alone bounds it.
    ops.push(("check --verify-data".into(), check, Some((false, true))));
    // import-borg (issue 17): borg's archive "first" (the corpus) into a fresh rempart repository
    extra.extend(import_borg_rows(&tools[1], &dir, size));
    // rempart-backup mount vs borg mount (restic: not measured)
    extra.extend(mount_rows(&tools, &dir, &src, "third", reps));
    extra.push(("repository size after the first backup (MB)".into(), repo_first));
    extra.push((
        "repository size after three backups (MB)".into(),
        tools.iter().map(|t| format!("{:.0}", rempart_benches::corpus::du(&t.repo) as f64 / 1e6)).collect(),
    ));
    refs.measure(&dir, &src);
    // Every operation: wall time, throughput over the corpus size, peak RSS, CPU time (user +
    // sys: what the machine spent, independent of how busy it was with other work).
    let mut rows: Vec<TableRow> = Vec::new();
    for (label, costs, how) in &ops {
        let c = match how {
            Some((with_disk, restore)) => refs.op(size, *restore, *with_disk),
            None => OpCheck::not_checked(
                "an incremental backup is bounded by metadata work (stat, cache and repository, archive), \
                 which no same-run reference measures",
            ),
        };
        let anchors = |f: &dyn Fn(&Cost) -> f64| [f(&costs[1]), f(&costs[2])];
        let mbs = |c: &Cost| size / 1e6 / c.wall;
        rows.push(TableRow {
            metric: format!("{label}: wall (s)"),
            vals: costs.iter().map(|c| format!("{:.2}", c.wall)).collect(),
            anchors: anchors(&mbs),
            check: c.rate.clone(),
        });
        rows.push(TableRow {
            metric: format!("{label}: MB/s"),
            vals: costs.iter().map(|c| format!("{:.0}", mbs(c))).collect(),
            anchors: anchors(&mbs),
            check: c.rate,
        });
        rows.push(TableRow {
            metric: format!("{label}: peak RSS (MB)"),
            vals: costs.iter().map(|c| format!("{:.0}", c.rss_mb)).collect(),
            anchors: anchors(&|c| c.rss_mb),
            check: AnchorCheck::NotChecked("a size"),
        });
        rows.push(TableRow {
            metric: format!("{label}: CPU (s)"),
            vals: costs.iter().map(|c| format!("{:.2}", c.cpu)).collect(),
            anchors: anchors(&|c| c.cpu),
            check: c.cpu,
        });
    }
    for (metric, vals) in extra {
        rows.push(TableRow { metric, vals, anchors: [f64::NAN; 2], check: AnchorCheck::NotChecked("a size") });
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "corpus: {:.0} MB; {} cores; medians of {reps} runs (first backup into fresh repositories, \
         unchanged backup, restore, check; the backup after modifying files runs once)",
        size / 1e6,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    let _ = writeln!(out, "physical references (issue 14), before the first backup and after the checks:");
    for (d, p) in refs.disk.iter().zip(&refs.pipeline) {
        let _ = writeln!(out, "- {d}; {p}");
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| metric | rempart-backup | borg 1.2.4 (zstd,3) | restic 0.14 | rempart/borg | rempart/restic | borg, restic vs physical reference |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    let mut details = Vec::new();
    for r in &rows {
        let v = &r.vals;
        let ratio = |i: usize| -> String {
            match (v[0].parse::<f64>(), v[i].parse::<f64>()) {
                (Ok(a), Ok(b)) if b != 0.0 => format!("{:.2}", a / b),
                _ => "n/a".into(),
            }
        };
        let short = |i: usize| match r.check.judge(r.anchors[i]) {
            Some(p) if p.is_plausible() => "plausible".to_string(),
            Some(_) => "IMPLAUSIBLE".to_string(),
            None => "not checked".to_string(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {}, {} |",
            r.metric,
            v[0],
            v[1],
            v[2],
            ratio(1),
            ratio(2),
            short(0),
            short(1)
        );
        if matches!(r.check, AnchorCheck::Against { .. }) && !r.metric.ends_with("wall (s)") {
            for (i, name) in [(0, "borg"), (1, "restic")] {
                details.push(format!("- {}, {name}: {}", r.metric, r.check.cell(r.anchors[i])));
            }
        }
    }
    let _ = writeln!(out, "\nanchor checks (a ratio against an IMPLAUSIBLE anchor is no evidence either way):");
    for d in details {
        let _ = writeln!(out, "{d}");
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
