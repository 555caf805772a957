//! Crash consistency of every mutating command (issue 14), over a model file system that keeps
//! live and durable state apart (`crashfs`): unsynced file data and unsynced directory entries
//! (create, rename, link, unlink) can be lost, and unsynced writes can tear at 512 B / 4 KiB
//! sector boundaries.
//!
//! For `create`, `prune`, `compact`, `check` and `check --repair`, the command is run once per
//! crash point: after 0, 1, 2, ... file-system steps (every call `LocalBackend` makes that
//! changes something) the process "dies". From each crash point several images are taken —
//! only the durable state, everything written, and random mixes with torn writes — and each
//! must: open normally (after breaking the dead process's lock), list every archive the crash
//! cannot have removed and none it durably deleted, restore every listed archive
//! byte-identically, pass `check --verify-data` without errors, and take a new `create`.
//!
//! `cargo test` runs seed 1 (two random images per crash point); `CRASH_SEEDS=N` runs seeds
//! 1..=N, `SIM_SEED=S` only seed S, `CRASH_POINT=P` only crash point P. A failure prints the
//! seed, the crash point, the image, the last file-system steps and the replay command.

mod crashfs;

use crashfs::{CrashFs, Image};
use dedupstore::backend::{Backend, LocalBackend};
use dedupstore::commands::{self, CheckOptions};
use dedupstore::create::{create, CreateOptions};
use dedupstore::crypto::{KdfParams, Mode};
use dedupstore::extract::{archive_items, item_content};
use dedupstore::prune::PruneRules;
use dedupstore::repo::{InitOptions, OpenOptions, RepoLock, Repository};
use dedupstore::Result;
use rand::SeedableRng;
use rempart_testkit::sim::{run_seeds, ChaCha8Rng};
use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

const ROOT: &str = "/repo";
/// Random images per crash point and seed (besides the durable-only and everything images).
const RANDOM_IMAGES: u64 = 2;

fn backend(fs: &CrashFs) -> Arc<dyn Backend> {
    Arc::new(LocalBackend::with_fs(ROOT, fs.clone()))
}

fn open(fs: &CrashFs) -> Result<Repository> {
    Repository::open(backend(fs), &OpenOptions { passphrase: Some("pw".into()), keys_dir: None })
}

fn bytes(seed: u8, n: usize) -> Vec<u8> {
    let mut x = (seed as u64).wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Content of archive `seed`'s file: a part shared by every archive and a part of its own.
fn content(seed: u8) -> Vec<u8> {
    let mut c = bytes(1, 20_000);
    c.extend(bytes(seed, 30_000));
    c
}

/// The source tree (real files: only the repository is on the model) and what each archive holds.
struct World {
    src: tempfile::TempDir,
    expect: BTreeMap<String, Vec<u8>>,
}

impl World {
    fn backup(&mut self, repo: &Repository, name: &str, seed: u8) -> Result<()> {
        let data = content(seed);
        std::fs::write(self.src.path().join("data"), &data).expect("write the source file");
        self.expect.insert(name.to_string(), data);
        let mut o = CreateOptions::new(name, vec![self.src.path().join("data")]);
        // one compression worker: chunks reach the packer in a fixed order
        o.threads = 1;
        // distinct seconds, for prune's rules
        o.timestamp = chrono::DateTime::from_timestamp(1_700_000_000 + 3600 * i64::from(seed), 0);
        create(repo, &o, &mut |_| {}).map(|_| ())
    }
}

/// A repository with archives a, b, c on a settled (all durable) model.
fn base(world: &mut World) -> CrashFs {
    let fs = CrashFs::new();
    let mut o = InitOptions::new(Mode::Repokey, Some("pw".into()));
    o.kdf = KdfParams { m_cost: 1024, t_cost: 1, p_cost: 1 };
    o.pack_size = 16 << 10;
    o.chunker = dedupstore::chunker::ChunkerParams { min: 2 << 10, avg: 8 << 10, max: 32 << 10 };
    let repo = Repository::init(backend(&fs), &o).expect("init on the model");
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        world.backup(&repo, name, i as u8 + 2).expect("base archive");
    }
    fs.settle();
    fs
}

type Op = fn(&Repository, &mut World) -> Result<()>;

struct Scenario {
    /// Test name (for the replay command).
    test: &'static str,
    op: Op,
    /// Archives the command may delete.
    deletes: &'static [&'static str],
    /// The archive the command adds.
    adds: Option<&'static str>,
    /// Prepares the base (after a, b, c exist).
    prepare: fn(&Repository),
}

fn no_prep(_: &Repository) {}

/// Runs `s` against a crash at every step, for every seed; returns (crash points, images).
fn explore(s: &Scenario) -> (u64, u64) {
    let t0 = Instant::now();
    let seeds: Vec<u64> = match std::env::var("CRASH_SEEDS").ok().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(n) => (1..=n.max(1)).collect(),
        None => vec![1],
    };
    let only_point: Option<u64> = std::env::var("CRASH_POINT").ok().and_then(|v| v.trim().parse().ok());
    let counts = std::sync::Mutex::new((0u64, 0u64));
    run_seeds(s.test, seeds, |seed| {
        let mut world = World { src: tempfile::tempdir().expect("tempdir"), expect: BTreeMap::new() };
        let base_fs = base(&mut world);
        (s.prepare)(&open(&base_fs).expect("open the base"));
        base_fs.settle();
        let base_names = names(&open(&base_fs).expect("open the base"));
        let base_expect = world.expect.clone();
        let mut point = only_point.unwrap_or(0);
        loop {
            world.expect = base_expect.clone();
            let fs = base_fs.fork();
            fs.crash_after(Some(point));
            let repo = open(&fs).expect("open before the crash");
            let res = (s.op)(&repo, &mut world);
            drop(repo);
            if !fs.has_crashed() {
                // The command ran to its end: it succeeded, and its result is all there.
                let ctx = Ctx { s, seed, point, image: "completed (no crash)", steps: fs.last_steps(12) };
                ctx.check(res.is_ok(), &format!("the command failed without a crash: {res:?}"));
                let done = fs.fork();
                done.crash_after(None);
                let mut want: BTreeSet<String> =
                    base_names.iter().filter(|n| !s.deletes.contains(&n.as_str())).cloned().collect();
                want.extend(s.adds.map(str::to_string));
                let got = names(&open(&done).unwrap_or_else(|e| ctx.fail(&format!("open: {e}"))));
                ctx.check(got == want, &format!("archives {got:?}, expected {want:?}"));
                verify_image(&ctx, &done, &world, &got);
                let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                c.0 += 1;
                c.1 += 1;
                break;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(point));
            let mut images = vec![
                ("durable only", fs.crash_image(Image::DurableOnly, &mut rng)),
                ("everything", fs.crash_image(Image::Everything, &mut rng)),
            ];
            for _ in 0..RANDOM_IMAGES {
                images.push(("random", fs.crash_image(Image::Random, &mut rng)));
            }
            // what had to survive the crash: the state that was durable when it came
            let durable_ctx = Ctx { s, seed, point, image: "durable only", steps: fs.last_steps(12) };
            let durable_names = {
                let img = images[0].1.fork();
                RepoLock::break_lock(backend(&img).as_ref()).expect("break lock");
                names(&open(&img).unwrap_or_else(|e| durable_ctx.fail(&format!("open: {e}"))))
            };
            for (k, (what, img)) in images.iter().enumerate() {
                let ctx = Ctx { s, seed, point, image: what, steps: fs.last_steps(12) };
                let r = catch_unwind(AssertUnwindSafe(|| {
                    let mut w = World { src: tempfile::tempdir().expect("tempdir"), expect: world.expect.clone() };
                    verify_after_crash(&ctx, img, &mut w, &base_names, &durable_names, k);
                }));
                if let Err(p) = r {
                    let why = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|m| m.to_string()))
                        .unwrap_or_default();
                    if why.contains("replay:") {
                        std::panic::resume_unwind(p);
                    }
                    ctx.fail(&why);
                }
            }
            {
                let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                c.0 += 1;
                c.1 += images.len() as u64;
            }
            if only_point.is_some() {
                break;
            }
            point += 1;
        }
    });
    let (points, images) = counts.into_inner().unwrap_or_else(|e| e.into_inner());
    eprintln!(
        "{}: {points} crash points, {images} crash images explored in {:.1} s",
        s.test,
        t0.elapsed().as_secs_f64()
    );
    (points, images)
}

struct Ctx<'a> {
    s: &'a Scenario,
    seed: u64,
    point: u64,
    image: &'a str,
    steps: String,
}

impl Ctx<'_> {
    fn fail(&self, msg: &str) -> ! {
        panic!(
            "{test}: seed={seed} crash point {point} ({image} image): {msg}\n  last file-system steps:\n    {steps}\n  \
             replay: SIM_SEED={seed} CRASH_POINT={point} cargo nextest run -p dedupstore --test crash -E 'test(={test})'",
            test = self.s.test,
            seed = self.seed,
            point = self.point,
            image = self.image,
            steps = self.steps,
        )
    }
    fn check(&self, ok: bool, msg: &str) {
        if !ok {
            self.fail(msg);
        }
    }
}

fn names(repo: &Repository) -> BTreeSet<String> {
    commands::list_archives(repo).expect("list archives").into_iter().map(|a| a.name).collect()
}

fn verify_after_crash(
    ctx: &Ctx<'_>,
    img: &CrashFs,
    world: &mut World,
    base_names: &BTreeSet<String>,
    durable_names: &BTreeSet<String>,
    k: usize,
) {
    // The dead process's lock (on a real machine its pid is gone and the lock is stale).
    RepoLock::break_lock(backend(img).as_ref()).unwrap_or_else(|e| ctx.fail(&format!("break-lock: {e}")));
    let repo = open(img).unwrap_or_else(|e| ctx.fail(&format!("open after the crash: {e}")));
    let listed = names(&repo);
    drop(repo);
    // Every archive the command does not delete is still there; an added one is there if it
    // was durable at the crash; a durably deleted one does not come back.
    let mut required: BTreeSet<String> =
        base_names.iter().filter(|n| !ctx.s.deletes.contains(&n.as_str())).cloned().collect();
    if let Some(a) = ctx.s.adds {
        if durable_names.contains(a) {
            required.insert(a.to_string());
        }
    }
    let missing: Vec<&String> = required.difference(&listed).collect();
    ctx.check(missing.is_empty(), &format!("archives lost: {missing:?} (listed {listed:?})"));
    let back: Vec<&&str> =
        ctx.s.deletes.iter().filter(|d| !durable_names.contains(**d) && listed.contains(**d)).collect();
    ctx.check(back.is_empty(), &format!("durably deleted archives came back: {back:?}"));
    let unknown: Vec<&String> =
        listed.iter().filter(|n| !base_names.contains(*n) && ctx.s.adds != Some(n.as_str())).collect();
    ctx.check(unknown.is_empty(), &format!("unexpected archives: {unknown:?}"));
    verify_image(ctx, img, world, &listed);
    // The next create works and is restorable, on some of the images (it is the slow part).
    if k != 1 {
        let repo = open(img).unwrap_or_else(|e| ctx.fail(&format!("reopen: {e}")));
        world.backup(&repo, "next", 42).unwrap_or_else(|e| ctx.fail(&format!("create after the crash: {e}")));
        drop(repo);
        let mut listed = listed;
        listed.insert("next".into());
        verify_image(ctx, img, world, &listed);
    }
}

/// The archives `listed` restore byte-identically, and `check --verify-data` finds no damage.
fn verify_image(ctx: &Ctx<'_>, img: &CrashFs, world: &World, listed: &BTreeSet<String>) {
    let repo = open(img).unwrap_or_else(|e| ctx.fail(&format!("open: {e}")));
    let idx = repo.load_index().unwrap_or_else(|e| ctx.fail(&format!("load index: {e}")));
    for a in listed {
        let items = archive_items(&repo, &idx, a).unwrap_or_else(|e| ctx.fail(&format!("archive {a}: items: {e}")));
        let Some(file) = items.iter().find(|i| i.path.ends_with(b"/data")) else {
            ctx.fail(&format!("archive {a}: no data file"))
        };
        let got = item_content(&repo, &idx, file).unwrap_or_else(|e| ctx.fail(&format!("archive {a}: restore: {e}")));
        let want = world.expect.get(a).unwrap_or_else(|| ctx.fail(&format!("archive {a}: not expected")));
        ctx.check(&got == want, &format!("archive {a}: restored content differs"));
    }
    let r = commands::check(&repo, CheckOptions { verify_data: true, ..Default::default() })
        .unwrap_or_else(|e| ctx.fail(&format!("check: {e}")));
    ctx.check(r.ok(), &format!("check found damage: {:?}", r.errors));
    ctx.check(r.warnings.is_empty(), &format!("check warnings: {:?}", r.warnings));
}

fn delete_a(repo: &Repository) {
    commands::delete_archives(repo, &["a"]).expect("delete a");
}

#[test]
fn crash_during_create() {
    let (points, _) = explore(&Scenario {
        test: "crash_during_create",
        op: |r, w| w.backup(r, "d", 5),
        deletes: &[],
        adds: Some("d"),
        prepare: no_prep,
    });
    assert!(points > 20, "{points} crash points: the model saw too few steps");
}

#[test]
fn crash_during_prune() {
    let (points, _) = explore(&Scenario {
        test: "crash_during_prune",
        op: |r, _| {
            let rules = PruneRules { secondly: Some(1), ..Default::default() };
            let plan = commands::prune_repo_plan(r, &rules, None, chrono::Utc::now())?;
            commands::prune_apply(r, &plan).map(|_| ())
        },
        deletes: &["a", "b"],
        adds: None,
        prepare: no_prep,
    });
    assert!(points > 5, "{points} crash points");
}

#[test]
fn crash_during_compact() {
    let (points, _) = explore(&Scenario {
        test: "crash_during_compact",
        op: |r, _| {
            let plan = commands::compact_plan(r, 0)?;
            commands::compact_apply(r, &plan)
        },
        deletes: &[],
        adds: None,
        prepare: delete_a,
    });
    assert!(points > 5, "{points} crash points");
}

#[test]
fn crash_during_check() {
    let (points, _) = explore(&Scenario {
        test: "crash_during_check",
        op: |r, _| {
            let rep = commands::check(r, CheckOptions { verify_data: true, ..Default::default() })?;
            assert!(rep.ok(), "{:?}", rep.errors);
            Ok(())
        },
        deletes: &[],
        adds: None,
        prepare: no_prep,
    });
    assert!(points > 2, "{points} crash points");
}

#[test]
fn crash_during_check_repair() {
    let (points, _) = explore(&Scenario {
        test: "crash_during_check_repair",
        op: |r, _| {
            let rep = commands::check(r, CheckOptions { verify_data: true, repair: true, ..Default::default() })?;
            assert!(rep.ok(), "{:?}", rep.errors);
            Ok(())
        },
        deletes: &[],
        adds: None,
        prepare: delete_a,
    });
    assert!(points > 5, "{points} crash points");
}

/// The model itself: what a crash keeps and loses.
mod model {
    use super::*;
    use dedupstore::backend::{Fs, FsFile};

    #[test]
    fn unsynced_data_and_entries_can_be_lost_synced_ones_cannot() {
        let fs = CrashFs::new();
        let p = Path::new("/d/f");
        fs.create_dir_all(Path::new("/d")).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let mut f = fs.create_new(p).unwrap();
        f.write_all(&[1; 8192]).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // neither data nor name synced: the durable image has no file
        assert!(fs.crash_image(Image::DurableOnly, &mut rng).files().is_empty());
        f.sync().unwrap();
        // data synced, name not: still gone without the directory fsync
        assert!(fs.crash_image(Image::DurableOnly, &mut rng).files().is_empty());
        fs.sync_dir(Path::new("/d")).unwrap();
        assert_eq!(fs.crash_image(Image::DurableOnly, &mut rng).files()[p], vec![1; 8192]);
        // an unsynced rename over it: old or new, and the old one for sure in the durable image
        let mut g = fs.create_new(Path::new("/d/g")).unwrap();
        g.write_all(&[2; 8192]).unwrap();
        fs.rename(Path::new("/d/g"), p).unwrap();
        assert_eq!(fs.crash_image(Image::DurableOnly, &mut rng).files()[p], vec![1; 8192]);
        assert_eq!(fs.crash_image(Image::Everything, &mut rng).files()[p], vec![2; 8192]);
        let (mut torn, mut old) = (false, false);
        for _ in 0..200 {
            let img = fs.crash_image(Image::Random, &mut rng);
            let got = &img.files()[p];
            if got == &vec![1; 8192] {
                old = true;
                continue;
            }
            // the new file: nothing, or its write in whole sectors, the rest zeros
            let n = got.iter().take_while(|b| **b == 2).count();
            assert_eq!(n % 512, 0, "tears only at sector boundaries");
            assert!(got[n..].iter().all(|b| *b == 0), "the rest of a torn write reads as zeros");
            torn |= n > 0 && n < 8192;
        }
        assert!(torn && old, "random images show torn and old versions");
    }

    #[test]
    fn a_crash_stops_every_later_call() {
        let fs = CrashFs::new();
        fs.crash_after(Some(1));
        fs.create_dir_all(Path::new("/a")).unwrap();
        assert!(fs.create_dir_all(Path::new("/b")).is_err());
        assert!(fs.read_dir(Path::new("/")).is_err(), "a dead process reads nothing either");
        assert!(fs.has_crashed());
        assert_eq!(fs.steps(), 1);
    }
}
