//! Shared helpers for rempart's benches: order statistics and the side-by-side table that every
//! comparison with an anchor (keepalived, qemu-nbd, borg, restic) prints.
//!
//! The machines these run on are shared and noisy, so a bench reports medians and ratios, never a
//! single absolute time. An anchor can collapse too (issue 14: qemu-nbd at 103 MiB/s where the
//! machine allowed ~1.8 GiB/s): every row names how its anchor was checked against a physical
//! reference measured in the same run ([`physical`]), and a verdict is printed only when the
//! anchor is plausible.

use std::fmt::Write as _;
use std::time::Duration;

pub mod physical;

pub use physical::{AnchorCheck, Plausibility};

/// The `p`-th percentile (0.0..=100.0) of `samples`, by nearest rank. `None` when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut v: Vec<f64> = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

/// The median of `samples` (the 50th percentile by nearest rank).
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// Durations as seconds, for the functions above.
pub fn secs(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(Duration::as_secs_f64).collect()
}

/// One row of a comparison: a metric measured for rempart and for its anchor.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured, e.g. "failover, advert 1 s: VIP on backup (s)".
    pub metric: String,
    /// rempart's samples.
    pub ours: Vec<f64>,
    /// The anchor's samples, measured in the same run on the same data.
    pub anchor: Vec<f64>,
    /// How the anchor's median is checked against a physical reference of the same run.
    pub check: AnchorCheck,
}

impl Row {
    /// Whether the anchor's median is plausible; `None` when the row is not checked (or has no
    /// anchor samples: then nothing vouches for it and the caller prints no verdict).
    pub fn plausibility(&self) -> Option<Plausibility> {
        self.check.judge(median(&self.anchor).unwrap_or(f64::NAN))
    }
}

/// Renders rows as a Markdown table: median and p95 for both, the ratio of the medians
/// (ours / anchor; below 1.0 means rempart is faster when the metric is a time), and the check
/// of the anchor against its physical reference.
pub fn markdown_table(anchor_name: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| metric | rempart median | rempart p95 | {anchor_name} median | {anchor_name} p95 | ratio | {anchor_name} vs physical reference |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let (om, op) = (median(&r.ours), percentile(&r.ours, 95.0));
        let (am, ap) = (median(&r.anchor), percentile(&r.anchor, 95.0));
        let ratio = match (om, am) {
            (Some(o), Some(a)) if a != 0.0 => format!("{:.2}", o / a),
            _ => "n/a".to_string(),
        };
        let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.4}"));
        let check = r.check.cell(am.unwrap_or(f64::NAN));
        let _ = writeln!(out, "| {} | {} | {} | {} | {} | {} | {check} |", r.metric, f(om), f(op), f(am), f(ap), ratio);
    }
    out
}

/// The realistic backup corpus of `backup_compare` (also used by `backup_ssh`).
/// A fresh ext4 file system (a sparse image on a loop device) mounted on `dir` for one restore,
/// unmounted and deleted on drop (needs root). Each restore gets one: on the host's file system a
/// restore creates ~27,000 files, and ext4 scans its inode bitmap for every file created within
/// ~30 s of thousands of deletions (`recently_deleted` in perf), so the same restore took 3.4 s or
/// 7-10 s depending on what earlier runs had deleted.
#[derive(Debug)]
pub struct FreshFs {
    image: std::path::PathBuf,
    mnt: std::path::PathBuf,
}

impl FreshFs {
    /// Room for a restore of `bytes`, its metadata and ext4's own.
    pub fn new(dir: &std::path::Path, bytes: u64) -> FreshFs {
        let image = dir.with_extension("img");
        std::fs::create_dir_all(dir).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(bytes * 3 / 2 + (256 << 20)).unwrap();
        drop(f);
        let fs = FreshFs { image, mnt: dir.to_path_buf() };
        for c in [
            std::process::Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&fs.image),
            std::process::Command::new("mount").args(["-o", "loop"]).arg(&fs.image).arg(dir),
        ] {
            let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert!(out.status.success(), "{c:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        fs
    }
}

impl Drop for FreshFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

pub mod corpus {
    use rand::{Rng, SeedableRng};
    use std::path::{Path, PathBuf};

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

    /// Writes the realistic corpus under `root` (about `total_mb` MiB, seed fixed): 47 % one large
    /// image with shifted duplicates, 20 % text documents, 20 % binaries (real libraries from
    /// /usr/lib first, then random data), 13 % small configuration files in directories of 200.
    /// Returns the bytes written.
    pub fn generate(root: &Path, total_mb: usize) -> u64 {
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

    /// About `budget` bytes taken from every regular file under `root` in proportion to its
    /// size (a prefix of each), in path order: the corpus's mix of text, binaries and
    /// incompressible data in small, for a same-run CPU reference (`physical::pipeline`).
    pub fn sample(root: &Path, budget: usize) -> Vec<u8> {
        fn files(p: &Path, out: &mut Vec<(PathBuf, u64)>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => files(&e.path(), out),
                    Ok(t) if t.is_file() => out.push((e.path(), e.metadata().map(|m| m.len()).unwrap_or(0))),
                    _ => {}
                }
            }
        }
        let mut all = Vec::new();
        files(root, &mut all);
        all.sort();
        let total: u64 = all.iter().map(|f| f.1).sum();
        let share = if total == 0 { 0.0 } else { (budget as f64 / total as f64).min(1.0) };
        let mut out = Vec::with_capacity(budget + 4096);
        for (p, len) in all {
            let want = ((len as f64 * share).ceil() as usize).min(len as usize);
            if let Ok(mut f) = std::fs::File::open(&p) {
                use std::io::Read;
                let mut v = Vec::with_capacity(want);
                if (&mut f).take(want as u64).read_to_end(&mut v).is_ok() {
                    out.extend_from_slice(&v);
                }
            }
        }
        out
    }

    /// Bytes of the regular files (and other non-directories) under `p`, recursively.
    pub fn du(p: &Path) -> u64 {
        let mut total = 0;
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => total += du(&e.path()),
                _ => total += e.metadata().map(|m| m.len()).unwrap_or(0),
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(median(&s), Some(3.0));
        assert_eq!(percentile(&s, 95.0), Some(5.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&s, 101.0), None);
    }

    #[test]
    fn table_has_ratio_of_medians() {
        let t = markdown_table(
            "keepalived",
            &[Row {
                metric: "x".into(),
                ours: vec![1.0, 1.0, 1.0],
                anchor: vec![2.0, 2.0, 2.0],
                check: AnchorCheck::NotChecked("a test"),
            }],
        );
        assert!(t.contains("| x | 1.0000 | 1.0000 | 2.0000 | 2.0000 | 0.50 | not checked: a test |"), "{t}");
    }

    // Issue 14: a row whose anchor collapsed still shows its ratio, and says the anchor is
    // implausible next to it.
    #[test]
    fn table_flags_an_implausible_anchor() {
        use physical::{Bound, MIN_FRACTION};
        let row = Row {
            metric: "1 MiB QD4 (MiB/s)".into(),
            ours: vec![1843.0],
            anchor: vec![103.0],
            check: AnchorCheck::Against {
                reference: "min(disk, loopback) 1843 MiB/s".into(),
                bound: Bound::Rate { reference: 1843.0, min_fraction: MIN_FRACTION },
            },
        };
        assert!(!row.plausibility().unwrap().is_plausible());
        let t = markdown_table("qemu-nbd", &[row]);
        assert!(t.contains("| 17.89 | IMPLAUSIBLE: 103.0 is 5.6 % of the 1843.0"), "{t}");
    }
}
