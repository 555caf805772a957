//! The other commands as library functions: list, info, delete, prune, compact, check.
//! Destructive ones are plan + apply.

use crate::archive::{decode_items, ArchiveMeta, Extent, Item, ManifestEntry};
use crate::backend::FileType;
use crate::error::{Error, Result};
use crate::id::Id;
use crate::prune::{prune_plan, PruneArchive, PrunePlan, PruneRules};
use crate::repo::{BlobEntry, Index, IndexFile, PackBuilder, Repository};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

/// Converts stored ns to a UTC time.
pub fn time_of(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as u32).unwrap_or_default()
}

/// Matches an archive name against `--glob-archives` (shell glob: `*`, `?`, `[..]`).
pub fn glob_archives(pattern: &str, name: &str) -> bool {
    crate::pattern::Pattern::parse(&format!("sh:{pattern}")).map(|p| p.matches_exact(name.as_bytes())).unwrap_or(false)
}

/// Archives of the manifest, oldest first.
pub fn list_archives(repo: &Repository) -> Result<Vec<ManifestEntry>> {
    let _lock = repo.shared_lock()?;
    let mut a = repo.manifest()?.archives;
    a.sort_by_key(|e| e.time);
    Ok(a)
}

/// Repository-wide figures for `info`.
#[derive(Debug, Clone, Default)]
pub struct RepoInfo {
    /// Number of archives.
    pub archives: usize,
    /// Unique chunks.
    pub unique_chunks: usize,
    /// Sum of unique chunk plaintext sizes.
    pub unique_size: u64,
    /// Sum of unique chunk stored sizes.
    pub unique_stored: u64,
    /// Number of pack files.
    pub packs: usize,
}

/// `info REPO`.
pub fn repo_info(repo: &Repository) -> Result<RepoInfo> {
    let _lock = repo.shared_lock()?;
    let index = repo.load_index()?;
    Ok(RepoInfo {
        archives: repo.manifest()?.archives.len(),
        unique_chunks: index.chunks.len(),
        unique_size: index.chunks.values().map(|l| u64::from(l.ulen)).sum(),
        unique_stored: index.chunks.values().map(|l| u64::from(l.len)).sum(),
        packs: index.packs.len(),
    })
}

/// `info REPO::ARCHIVE`.
pub fn archive_info(repo: &Repository, name: &str) -> Result<(ManifestEntry, ArchiveMeta)> {
    let _lock = repo.shared_lock()?;
    let m = repo.manifest()?;
    let e = m.get(name).ok_or_else(|| Error::NoSuchArchive(name.into()))?;
    Ok((e.clone(), repo.archive(&e.id)?))
}

/// Deletes archives by name: the manifest is rewritten first (that is the commit), then the
/// archive objects are removed. Space is freed by `compact`.
pub fn delete_archives(repo: &Repository, names: &[&str]) -> Result<Vec<ManifestEntry>> {
    let _lock = repo.lock()?;
    let mut m = repo.manifest()?;
    for n in names {
        if m.get(n).is_none() {
            return Err(Error::NoSuchArchive(n.to_string()));
        }
    }
    let (gone, keep): (Vec<_>, Vec<_>) = m.archives.into_iter().partition(|a| names.contains(&a.name.as_str()));
    m.archives = keep;
    m.timestamp = Utc::now().timestamp_nanos_opt().unwrap_or(0);
    repo.write_manifest(&m)?;
    for a in &gone {
        repo.backend().remove(FileType::Archive, &a.id.to_hex())?;
    }
    Ok(gone)
}

/// `prune` plan: which archives the rules keep (`glob` = `--glob-archives`).
pub fn prune_repo_plan(
    repo: &Repository,
    rules: &PruneRules,
    glob: Option<&str>,
    now: DateTime<Utc>,
) -> Result<PrunePlan> {
    let archives: Vec<PruneArchive> = repo
        .manifest()?
        .archives
        .iter()
        .filter(|a| glob.is_none_or(|g| glob_archives(g, &a.name)))
        .map(|a| PruneArchive { name: a.name.clone(), time: time_of(a.time) })
        .collect();
    prune_plan(&archives, rules, now, &|t| t.with_timezone(&chrono::Local).naive_local())
}

/// Applies a prune plan.
pub fn prune_apply(repo: &Repository, plan: &PrunePlan) -> Result<usize> {
    let names = plan.to_delete();
    if names.is_empty() {
        return Ok(0);
    }
    Ok(delete_archives(repo, &names)?.len())
}

/// Every chunk id referenced by the archives (item streams and file content), with the
/// (archive, item path) users when `with_users`.
fn referenced(repo: &Repository, index: &Index, errors: &mut Vec<String>) -> Result<HashSet<Id>> {
    let mut used = HashSet::new();
    for a in repo.manifest()?.archives {
        let meta = match repo.archive(&a.id) {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("archive {}: {e}", a.name));
                continue;
            }
        };
        used.extend(meta.items.iter().copied());
        match load_items(repo, index, &meta) {
            Ok(items) => {
                for i in items {
                    for c in i.chunks {
                        if let Extent::Data { id, .. } = c {
                            used.insert(id);
                        }
                    }
                }
            }
            Err(e) => errors.push(format!("archive {}: item stream: {e}", a.name)),
        }
    }
    Ok(used)
}

fn load_items(repo: &Repository, index: &Index, meta: &ArchiveMeta) -> Result<Vec<Item>> {
    let mut stream = Vec::new();
    for id in &meta.items {
        stream.extend_from_slice(&repo.read_chunk(index, id)?);
    }
    decode_items(&stream)
}

/// What `compact` will do.
#[derive(Debug, Clone, Default)]
pub struct CompactPlan {
    /// Packs whose live blobs are copied to new packs, then deleted.
    pub repack: Vec<Id>,
    /// Packs with no live blob.
    pub delete: Vec<Id>,
    /// Packs no index refers to (left by interrupted commands).
    pub orphans: Vec<Id>,
    /// Bytes freed (approximately).
    pub freed: u64,
}

/// Plans `compact [--threshold PCT]`: packs with more than `threshold` % unused bytes are
/// rewritten.
pub fn compact_plan(repo: &Repository, threshold: u8) -> Result<CompactPlan> {
    let index = repo.load_index()?;
    let mut errors = vec![];
    let used = referenced(repo, &index, &mut errors)?;
    if !errors.is_empty() {
        return Err(Error::integrity(
            "repository",
            format!("refusing to compact a damaged repository (run check): {}", errors.join("; ")),
        ));
    }
    let mut plan = CompactPlan::default();
    let unindexed: HashSet<Id> = index.unindexed.iter().copied().collect();
    for (pack, blobs) in &index.packs {
        let total: u64 = blobs.iter().map(|b| u64::from(b.len)).sum();
        let live: u64 = blobs
            .iter()
            .filter(|b| used.contains(&b.id) && index.chunks.get(&b.id).map(|l| l.pack) == Some(*pack))
            .map(|b| u64::from(b.len))
            .sum();
        if live == 0 && unindexed.contains(pack) {
            // in no index file (indexed from its header): a leftover of an interrupted command
            plan.orphans.push(*pack);
            plan.freed += total;
        } else if live == 0 {
            plan.delete.push(*pack);
            plan.freed += total;
        } else if (total - live) * 100 > total * u64::from(threshold) {
            plan.repack.push(*pack);
            plan.freed += total - live;
        }
    }
    // A pack whose header cannot be read and that no index file names may hold a chunk an
    // archive uses that the index lacks: removed only when every used chunk is indexed.
    if used.iter().all(|id| index.contains(id)) {
        for (p, _) in &index.unreadable {
            plan.orphans.push(*p);
            plan.freed += repo.backend().size(FileType::Pack, &p.to_hex()).unwrap_or(0);
        }
    }
    plan.repack.sort();
    plan.delete.sort();
    plan.orphans.sort();
    Ok(plan)
}

/// Applies a compact plan. Crash-safe order: packs no index names go first (nothing can refer to
/// them, and on a full disk their space is what lets the rest be written), then new packs, then
/// one new index file that supersedes all old ones, then old index files are removed, then old
/// packs.
pub fn compact_apply(repo: &Repository, plan: &CompactPlan) -> Result<()> {
    let _lock = repo.lock()?;
    let index = repo.load_index()?;
    let mut errors = vec![];
    let used = referenced(repo, &index, &mut errors)?;
    if !errors.is_empty() {
        return Err(Error::integrity("repository", errors.join("; ")));
    }
    // Re-checked under the lock: an index written since the plan may name an orphan now, or an
    // archive use its chunks.
    let all_indexed = used.iter().all(|id| index.contains(id));
    let mut removed = HashSet::new();
    for p in &plan.orphans {
        let unnamed = match index.packs.get(p) {
            Some(blobs) => index.unindexed.contains(p) && !blobs.iter().any(|b| used.contains(&b.id)),
            None => all_indexed && index.unreadable.iter().any(|(u, _)| u == p),
        };
        if unnamed {
            repo.backend().remove(FileType::Pack, &p.to_hex())?;
            removed.insert(*p);
        }
    }
    // packs still named by no index file, or damaged index files: the new index covers them
    let stale_index = !index.damaged_files.is_empty() || index.unindexed.iter().any(|p| !removed.contains(p));
    if plan.repack.is_empty() && plan.delete.is_empty() && !stale_index {
        return Ok(());
    }
    let gone: HashSet<Id> = plan.repack.iter().chain(&plan.delete).chain(&removed).copied().collect();
    let mut new_packs: Vec<(Id, Vec<BlobEntry>)> = Vec::new();
    let mut pb = PackBuilder::new();
    let mut copied = HashSet::new();
    // A pack planned for deletion that an archive committed since the plan uses is copied like
    // a repacked one (the plan was made without the lock).
    for pack in plan.repack.iter().chain(&plan.delete) {
        let Some(blobs) = index.packs.get(pack) else { continue };
        for b in blobs {
            if !used.contains(&b.id) || copied.contains(&b.id) {
                continue;
            }
            if index.chunks.get(&b.id).map(|l| l.pack) != Some(*pack) {
                continue;
            }
            let raw =
                repo.backend().read_part(FileType::Pack, &pack.to_hex(), u64::from(b.offset), u64::from(b.len))?;
            // Verify before copying so compact never spreads damage.
            repo.open_chunk(&b.id, &raw, b.ulen)?;
            pb.add(b.id, &raw, b.ulen);
            copied.insert(b.id);
            if pb.len() >= repo.config().pack_size as usize {
                new_packs.push(std::mem::take(&mut pb).finish(repo)?);
            }
        }
    }
    if !pb.is_empty() {
        new_packs.push(pb.finish(repo)?);
    }
    let mut packs: Vec<(Id, Vec<BlobEntry>)> =
        index.packs.iter().filter(|(p, _)| !gone.contains(p)).map(|(p, b)| (*p, b.clone())).collect();
    packs.sort_by_key(|p| p.0);
    packs.extend(new_packs);
    let old_files = repo.backend().list(FileType::Index)?;
    let f = IndexFile { packs, supersedes: old_files.iter().filter_map(|n| Id::from_hex(n)).collect() };
    let new_id = repo.write_index_file(&f)?;
    for n in &old_files {
        if *n != new_id.to_hex() {
            repo.backend().remove(FileType::Index, n)?;
        }
    }
    for p in &gone {
        repo.backend().remove(FileType::Pack, &p.to_hex())?;
    }
    Ok(())
}

/// Options of `check`.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Decrypt and verify every chunk.
    pub verify_data: bool,
    /// Rebuild the index from pack headers (orphan packs are indexed again, missing packs are
    /// dropped from the index).
    pub repair: bool,
    /// `--repository-only`: packs and index only, no archive.
    pub repository_only: bool,
    /// `--archives-only`: archives only; packs are read only for `verify_data` (borg's rule).
    pub archives_only: bool,
    /// `--glob-archives`: check only the archives whose name matches this shell pattern.
    pub glob: Option<String>,
    /// `--last N`: check only the newest N (matching) archives.
    pub last: Option<usize>,
}

/// What `check` found. A check that could not run at all (no lock, the repository cannot be
/// listed) is an `Err` of [`check`] instead; borg exits 2 for that and 1 for what a report
/// holds ([`CheckReport::clean`]).
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Damage: data or metadata that is lost or unreadable (borg: exit code 1). After a repair,
    /// only what it could not fix.
    pub errors: Vec<String>,
    /// Problems that lose no data and that `check --repair` fixes: damaged, missing or stale
    /// index files (also exit code 1; a repair clears them).
    pub warnings: Vec<String>,
    /// Damaged or missing chunks.
    pub damaged_chunks: Vec<Id>,
    /// (archive, file) pairs whose content is affected, sorted.
    pub damaged_files: Vec<(String, String)>,
    /// Packs no index refers to (harmless leftovers of interrupted commands).
    pub orphan_packs: Vec<Id>,
    /// Packs checked.
    pub packs: usize,
    /// Chunks verified by decryption.
    pub chunks_verified: usize,
    /// Whether a repair was written.
    pub repaired: bool,
    /// What the repair did, one line per archive and file.
    pub repaired_notes: Vec<String>,
    /// Chunks no archive references (after a repair; `compact` removes them).
    pub orphan_chunks: usize,
    /// Archives holding zero-filled replacement chunks from an earlier repair, and how many.
    pub zero_filled: Vec<(String, usize)>,
}

impl CheckReport {
    /// No damage (there may be [`CheckReport::warnings`]).
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
    /// Nothing found: no damage and no warning (borg's exit code 0; else 1).
    pub fn clean(&self) -> bool {
        self.errors.is_empty() && self.warnings.is_empty()
    }
}

/// Progress of `check`: first every pack is read (and with `verify_data` every chunk
/// decrypted), then every archive's items are checked; the repair that may follow reports none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckProgress {
    /// Packs read so far.
    Packs {
        /// Packs done.
        done: u64,
        /// Packs the index names.
        total: u64,
        /// Bytes read so far.
        bytes: u64,
    },
    /// Archives checked so far.
    Archives {
        /// Archives done.
        done: u64,
        /// Archives in the manifest.
        total: u64,
    },
}

/// `check [--verify-data] [--repair]`, see [`check_with_progress`].
pub fn check(repo: &Repository, opts: CheckOptions) -> Result<CheckReport> {
    check_with_progress(repo, opts, &mut |_| {})
}

/// `check [--verify-data] [--repair]`, reporting [`CheckProgress`] to `on`.
///
/// `--repair` (borg semantics): the index is rebuilt from the packs on disk, leaving out every
/// damaged chunk; archive references to missing or damaged chunks are replaced with zero-filled
/// chunks of the same length and recorded in the archive ([`ArchiveMeta::broken`]), so the
/// rest of each file still restores; references healed if the original chunk is back; archives
/// whose metadata cannot be read are removed from the manifest; chunks no archive references
/// are reported (compact removes them).
pub fn check_with_progress(
    repo: &Repository,
    opts: CheckOptions,
    on: &mut dyn FnMut(CheckProgress),
) -> Result<CheckReport> {
    if opts.repository_only && opts.archives_only {
        return Err(Error::InvalidArgument("--repository-only and --archives-only exclude each other".into()));
    }
    if opts.repair && (opts.archives_only || opts.repository_only || opts.glob.is_some() || opts.last.is_some()) {
        return Err(Error::InvalidArgument(
            "--repair checks the whole repository: no archive or part selection".into(),
        ));
    }
    let _lock = if opts.repair { repo.lock()? } else { repo.shared_lock()? };
    let mut r = CheckReport::default();
    // A damaged manifest: the archives are found from their objects (what a repair writes).
    let manifest = match repo.manifest() {
        Ok(m) => m,
        Err(e @ (Error::Integrity { .. } | Error::NotFound(_))) => {
            let (m, notes) = manifest_from_archives(repo)?;
            r.errors.push(format!("{e}: {} archives found from their objects", m.archives.len()));
            r.errors.extend(notes);
            m
        }
        Err(e) => return Err(e),
    };
    // Index files only cache the packs' headers: damage to them loses nothing (issue 14).
    let index = repo.load_index()?;
    for (n, why) in &index.damaged_files {
        r.warnings.push(format!("index file {n}: {why} (its packs were indexed from their headers)"));
    }
    for (p, why) in &index.unreadable {
        r.warnings.push(format!("pack {}: in no index file, and its header cannot be read: {why}", p.to_hex()));
    }
    let on_disk: HashSet<Id> = repo.backend().list(FileType::Pack)?.iter().filter_map(|n| Id::from_hex(n)).collect();
    let mut damaged: HashSet<Id> = HashSet::new();
    let mut bad_packs = HashSet::new();
    let mut packs: Vec<(&Id, &Vec<BlobEntry>)> =
        if opts.archives_only && !opts.verify_data { Vec::new() } else { index.packs.iter().collect() };
    packs.sort_by_key(|p| *p.0);
    let total = packs.len() as u64;
    let mut bytes = 0u64;
    on(CheckProgress::Packs { done: 0, total, bytes });
    // Missing packs are not asked for; the others are read in order through `read_objects` (a
    // remote backend keeps several requests in flight) and verified on worker threads, so
    // reading the next packs overlaps with hashing and decrypting this one. The findings are
    // applied in pack order.
    let present: Vec<(&Id, &Vec<BlobEntry>)> = packs.iter().filter(|p| on_disk.contains(p.0)).copied().collect();
    let names: Vec<String> = present.iter().map(|p| p.0.to_hex()).collect();
    let mut packs = packs.into_iter().peekable();
    let mut apply = |r: &mut CheckReport, pack: &Id, blobs: &Vec<BlobEntry>, found: Option<PackFindings>| {
        if r.packs > 0 {
            on(CheckProgress::Packs { done: r.packs as u64, total, bytes });
        }
        r.packs += 1;
        let name = pack.to_hex();
        let Some(f) = found else {
            r.errors.push(format!("pack {name}: missing"));
            damaged.extend(blobs.iter().map(|b| b.id));
            return;
        };
        bytes += f.bytes;
        r.chunks_verified += f.verified;
        if let Some(e) = f.error {
            r.errors.push(format!("pack {name}: {e}"));
            bad_packs.insert(*pack);
        }
        if !f.damaged.is_empty() {
            damaged.extend(f.damaged);
            bad_packs.insert(*pack);
        }
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).clamp(1, 4);
    let verify_data = opts.verify_data;
    std::thread::scope(|sc| {
        // A rendezvous: a read pack waits for a free worker instead of in a queue. Each queued
        // pack is a whole pack in memory (8 MiB by default): with a queue as long as the worker
        // count, peak RSS was 78-86 MB against borg's 78; 61 MB this way, no slower (local and
        // ssh, the realistic 1 GiB corpus).
        let (jtx, jrx) = crossbeam_channel::bounded::<(usize, Result<Vec<u8>>)>(0);
        let (ftx, frx) = crossbeam_channel::unbounded::<(usize, PackFindings)>();
        for _ in 0..threads {
            let (jrx, ftx, present) = (jrx.clone(), ftx.clone(), &present);
            sc.spawn(move || {
                for (i, data) in jrx {
                    let (id, blobs) = present[i];
                    let f = check_pack(repo, id, blobs, data, verify_data);
                    if ftx.send((i, f)).is_err() {
                        return;
                    }
                }
            });
        }
        drop((jrx, ftx));
        // findings arrive in any order; apply them in pack order as they become complete
        let mut ready: HashMap<usize, PackFindings> = HashMap::new();
        let mut next = 0usize;
        let mut drain = |r: &mut CheckReport, ready: &mut HashMap<usize, PackFindings>, next: &mut usize| {
            while let Some(f) = ready.remove(next) {
                // the missing packs sorted before this one, then this one
                while let Some((pack, blobs)) = packs.next_if(|p| p.0 != present[*next].0) {
                    apply(r, pack, blobs, None);
                }
                if let Some((pack, blobs)) = packs.next() {
                    apply(r, pack, blobs, Some(f));
                }
                *next += 1;
            }
        };
        repo.backend().read_objects(FileType::Pack, &names, &mut |i, data| {
            if jtx.send((i, data)).is_err() {
                return false;
            }
            while let Ok((k, f)) = frx.try_recv() {
                ready.insert(k, f);
            }
            drain(&mut r, &mut ready, &mut next);
            true
        });
        drop(jtx);
        for (k, f) in frx.iter() {
            ready.insert(k, f);
            drain(&mut r, &mut ready, &mut next);
        }
        drain(&mut r, &mut ready, &mut next);
        for (pack, blobs) in packs {
            apply(&mut r, pack, blobs, None);
        }
    });
    on(CheckProgress::Packs { done: r.packs as u64, total, bytes });
    let unindexed: HashSet<Id> = index.unindexed.iter().copied().collect();
    // packs in no index file whose chunks a checked archive uses (a lost index file)
    let mut needed: BTreeMap<Id, String> = BTreeMap::new();
    let mut uses = |id: &Id, archive: &str| {
        if let Some(l) = index.chunks.get(id).filter(|l| unindexed.contains(&l.pack)) {
            needed.entry(l.pack).or_insert_with(|| archive.to_string());
        }
    };
    // Archives: every item stream and every referenced chunk (the selected ones, newest last).
    let mut archives: Vec<&ManifestEntry> = if opts.repository_only {
        Vec::new()
    } else {
        manifest.archives.iter().filter(|a| opts.glob.as_deref().is_none_or(|g| glob_archives(g, &a.name))).collect()
    };
    archives.sort_by_key(|a| a.time);
    if let Some(n) = opts.last {
        archives.drain(..archives.len().saturating_sub(n));
    }
    let mut users: BTreeMap<(String, String), ()> = BTreeMap::new();
    let total = archives.len() as u64;
    on(CheckProgress::Archives { done: 0, total });
    for (done, a) in archives.into_iter().enumerate() {
        if done > 0 {
            on(CheckProgress::Archives { done: done as u64, total });
        }
        let meta = match repo.archive(&a.id) {
            Ok(m) => m,
            Err(e) => {
                r.errors.push(format!("archive {}: {e}", a.name));
                continue;
            }
        };
        if !meta.broken.is_empty() {
            r.zero_filled.push((a.name.clone(), meta.broken.len()));
        }
        for id in &meta.items {
            uses(id, &a.name);
        }
        let items = match load_items(repo, &index, &meta) {
            Ok(i) => i,
            Err(e) => {
                r.errors.push(format!("archive {}: item stream: {e}", a.name));
                continue;
            }
        };
        for i in items {
            for c in &i.chunks {
                if let Extent::Data { id, .. } = c {
                    uses(id, &a.name);
                    if !index.contains(id) {
                        damaged.insert(*id);
                    }
                    if damaged.contains(id) {
                        users.insert((a.name.clone(), i.path_lossy()), ());
                    }
                }
            }
        }
    }
    on(CheckProgress::Archives { done: total, total });
    for (p, archive) in &needed {
        r.warnings.push(format!(
            "pack {}: in no index file, but archive {archive} uses its chunks (an index file is lost; \
             check --repair writes a new one)",
            p.to_hex()
        ));
    }
    // the others are leftovers of interrupted commands (compact removes them)
    r.orphan_packs = index.unindexed.iter().filter(|p| !needed.contains_key(p)).copied().collect();
    r.damaged_chunks = damaged.iter().copied().collect();
    r.damaged_chunks.sort();
    r.damaged_files = users.into_keys().collect();
    for (a, f) in &r.damaged_files {
        r.errors.push(format!("archive {a}: file {f}: damaged or missing data"));
    }
    if opts.repair {
        repair(repo, &mut r, &index, &on_disk, &bad_packs, &damaged)?;
    }
    Ok(r)
}

/// What checking one pack found (see [`check_pack`]).
#[derive(Debug, Default)]
struct PackFindings {
    /// Bytes read.
    bytes: u64,
    /// Chunks authenticated.
    verified: usize,
    /// The pack could not be read, or its content does not match its name.
    error: Option<String>,
    /// Chunks that failed authentication (all of them when the pack is unreadable).
    damaged: Vec<Id>,
}

/// Checks one pack read as `data`: its hash, and with `verify_data` (or a bad hash) every blob.
fn check_pack(
    repo: &Repository,
    id: &Id,
    blobs: &[BlobEntry],
    data: Result<Vec<u8>>,
    verify_data: bool,
) -> PackFindings {
    let data = match data {
        Ok(d) => d,
        Err(e) => {
            return PackFindings {
                error: Some(e.to_string()),
                damaged: blobs.iter().map(|b| b.id).collect(),
                ..PackFindings::default()
            }
        }
    };
    let mut f = PackFindings { bytes: data.len() as u64, ..PackFindings::default() };
    let hash_ok = Id::hash(&data) == *id;
    if !hash_ok {
        f.error = Some("content does not match its name (damaged)".into());
    }
    if verify_data || !hash_ok {
        let mut damaged = HashSet::new();
        f.verified = verify_blobs(repo, &data, blobs, &mut damaged);
        f.damaged = damaged.into_iter().collect();
        f.damaged.sort();
    }
    f
}

/// Authenticates every blob of a pack held in memory; returns how many were checked.
fn verify_blobs(repo: &Repository, data: &[u8], blobs: &[BlobEntry], damaged: &mut HashSet<Id>) -> usize {
    for b in blobs {
        let raw = data.get(b.offset as usize..(b.offset as usize).saturating_add(b.len as usize));
        let ok = raw.is_some_and(|raw| repo.open_chunk(&b.id, raw, b.ulen).is_ok());
        if !ok {
            damaged.insert(b.id);
        }
    }
    blobs.len()
}

fn repair(
    repo: &Repository,
    r: &mut CheckReport,
    old: &Index,
    on_disk: &HashSet<Id>,
    bad_packs: &HashSet<Id>,
    damaged: &HashSet<Id>,
) -> Result<()> {
    use crate::archive::{encode_item, BrokenChunk};
    use crate::writer::{ChunkWriter, WriterOptions};
    // 1. The index, rebuilt from the packs on disk, without damaged chunks.
    let mut index = Index::default();
    let mut disk: Vec<Id> = on_disk.iter().copied().collect();
    disk.sort();
    let mut bad_copy: HashSet<Id> = HashSet::new();
    let mut rewritten = Vec::new();
    for pack in &disk {
        // From the pack's own header, not from the index files (issue 14: they may be what is
        // damaged); an index file's list of a pack whose header is damaged is the fallback.
        let (blobs, bad_header) = match repo.pack_header(pack) {
            Ok(b) => (b, false),
            Err(e) => match old.packs.get(pack) {
                Some(b) => (b.clone(), true),
                None => {
                    r.errors.push(format!("pack {}: header unreadable, its chunks are lost: {e}", pack.to_hex()));
                    continue;
                }
            },
        };
        if bad_header || !old.packs.get(pack).is_some_and(|b| *b == blobs) {
            // not verified against this list of blobs: keep only good ones
            if let Ok(data) = repo.backend().read(FileType::Pack, &pack.to_hex()) {
                if bad_header || Id::hash(&data) != *pack {
                    r.chunks_verified += verify_blobs(repo, &data, &blobs, &mut bad_copy);
                }
            }
        }
        // A chunk damaged here may have a good copy in another pack: drop only bad copies.
        let (keep, lost): (Vec<BlobEntry>, Vec<BlobEntry>) = blobs
            .into_iter()
            .partition(|b| !(bad_copy.contains(&b.id) || (bad_packs.contains(pack) && damaged.contains(&b.id))));
        if lost.is_empty() && !bad_header {
            index.add_pack(*pack, keep);
            continue;
        }
        // A damaged pack is rewritten with its good chunks (verified again), then removed.
        let mut pb = PackBuilder::new();
        for b in keep {
            let raw = repo.backend().read_part(FileType::Pack, &pack.to_hex(), u64::from(b.offset), u64::from(b.len));
            if let Ok(raw) = raw {
                if repo.open_chunk(&b.id, &raw, b.ulen).is_ok() {
                    pb.add(b.id, &raw, b.ulen);
                }
            }
        }
        if !pb.is_empty() {
            let (np, nb) = pb.finish(repo)?;
            index.add_pack(np, nb);
        }
        rewritten.push(*pack);
    }
    // 2. Archives: zero-fill what is gone, heal what came back.
    let mut writer = ChunkWriter::new(repo, Arc::new(index.clone()), WriterOptions::default());
    // a damaged manifest is rebuilt from the archive objects (borg rebuilds it too)
    let mut manifest = match repo.manifest() {
        Ok(m) => m,
        Err(Error::Integrity { .. } | Error::NotFound(_)) => {
            let (m, _) = manifest_from_archives(repo)?;
            r.repaired_notes.push(format!("manifest: rebuilt from {} archive objects", m.archives.len()));
            m
        }
        Err(e) => return Err(e),
    };
    let mut replaced_archives = Vec::new();
    let mut referenced: HashSet<Id> = HashSet::new();
    let mut keep_archives = Vec::new();
    for a in std::mem::take(&mut manifest.archives) {
        let mut meta = match repo.archive(&a.id) {
            Ok(m) => m,
            Err(e) => {
                r.repaired_notes.push(format!("archive {}: metadata unreadable ({e}): removed", a.name));
                replaced_archives.push(a.id);
                continue;
            }
        };
        let mut items = match load_items(repo, &index, &meta) {
            Ok(i) => i,
            Err(e) => {
                r.repaired_notes.push(format!("archive {}: item list unreadable ({e}): removed", a.name));
                replaced_archives.push(a.id);
                continue;
            }
        };
        let mut changed = false;
        // heal
        let mut still_broken = Vec::new();
        for b in std::mem::take(&mut meta.broken) {
            let slot = items.iter_mut().find(|i| i.path == b.path).and_then(|i| i.chunks.get_mut(b.extent as usize));
            match slot {
                Some(e) if index.contains(&b.id) => {
                    *e = Extent::Data { id: b.id, len: b.len };
                    changed = true;
                    r.repaired_notes.push(format!(
                        "archive {}: file {}: chunk {} is back, healed",
                        a.name,
                        String::from_utf8_lossy(&b.path),
                        b.id
                    ));
                }
                _ => still_broken.push(b),
            }
        }
        meta.broken = still_broken;
        // zero-fill
        for item in &mut items {
            let mut n = 0;
            for (k, e) in item.chunks.iter_mut().enumerate() {
                let Extent::Data { id, len } = *e else { continue };
                if index.contains(&id) || writer.has(&id) {
                    continue;
                }
                let (zid, _) = writer.store(vec![0; len as usize])?;
                *e = Extent::Data { id: zid, len };
                meta.broken.push(BrokenChunk { path: item.path.clone(), extent: k as u32, id, len });
                changed = true;
                n += 1;
            }
            if n > 0 {
                r.repaired_notes.push(format!(
                    "archive {}: file {}: {n} missing or damaged chunks replaced with zeros",
                    a.name,
                    item.path_lossy()
                ));
            }
        }
        if changed {
            let mut stream = Vec::new();
            for i in &items {
                encode_item(i, &mut stream)?;
            }
            meta.items = repo
                .chunker()
                .split(&stream)
                .into_iter()
                .map(|c| writer.store(c.to_vec()).map(|x| x.0))
                .collect::<Result<_>>()?;
            let id = repo.write_archive(&meta)?;
            replaced_archives.push(a.id);
            keep_archives.push(crate::archive::ManifestEntry { id, ..a });
        } else {
            keep_archives.push(a);
        }
        referenced.extend(meta.items.iter().copied());
        for i in &items {
            for c in &i.chunks {
                if let Extent::Data { id, .. } = c {
                    referenced.insert(*id);
                }
            }
        }
    }
    let out = writer.finish()?;
    for (p, b) in out.packs {
        index.add_pack(p, b);
    }
    // 3. Commit: the new index (superseding every old one), then the manifest, then cleanup.
    let mut packs: Vec<(Id, Vec<BlobEntry>)> = index.packs.iter().map(|(p, b)| (*p, b.clone())).collect();
    packs.sort_by_key(|p| p.0);
    let old_files = repo.backend().list(FileType::Index)?;
    let new_id = repo.write_index_file(&IndexFile {
        packs,
        supersedes: old_files.iter().filter_map(|n| Id::from_hex(n)).collect(),
    })?;
    manifest.archives = keep_archives;
    manifest.timestamp = Utc::now().timestamp_nanos_opt().unwrap_or(0);
    repo.write_manifest(&manifest)?;
    for n in &old_files {
        if *n != new_id.to_hex() {
            repo.backend().remove(FileType::Index, n)?;
        }
    }
    for id in &replaced_archives {
        repo.backend().remove(FileType::Archive, &id.to_hex())?;
    }
    for p in &rewritten {
        repo.backend().remove(FileType::Pack, &p.to_hex())?;
        r.repaired_notes.push(format!("pack {}: damaged, rewritten without its bad chunks", p.to_hex()));
    }
    r.orphan_chunks = index.chunks.keys().filter(|id| !referenced.contains(id)).count();
    r.repaired = true;
    // What was found is now fixed (the index was rewritten from the packs); what could not be
    // is still an error.
    r.errors.retain(|e| e.contains("header unreadable"));
    r.warnings.clear();
    Ok(())
}

/// The archives a damaged manifest listed, found from the archive objects: every readable
/// archive object, by its own name and time (a name met twice gets `.1`, `.2`, ... as borg
/// does). Returns notes on the objects that cannot be read. An archive deleted just before a
/// crash, whose object was not removed yet, comes back.
pub fn manifest_from_archives(repo: &Repository) -> Result<(crate::archive::Manifest, Vec<String>)> {
    let mut found = Vec::new();
    let mut notes = Vec::new();
    for n in repo.backend().list(FileType::Archive)? {
        let Some(id) = Id::from_hex(&n) else { continue };
        match repo.archive(&id) {
            Ok(meta) => found.push(ManifestEntry { name: meta.name, id, time: meta.time }),
            Err(e) => notes.push(format!("archive object {n}: {e}")),
        }
    }
    found.sort_by(|a, b| (a.time, &a.name, a.id).cmp(&(b.time, &b.name, b.id)));
    let mut names = HashSet::new();
    for a in &mut found {
        let base = a.name.clone();
        let mut k = 0;
        while !names.insert(a.name.clone()) {
            k += 1;
            a.name = format!("{base}.{k}");
        }
    }
    let m = crate::archive::Manifest {
        version: 1,
        timestamp: Utc::now().timestamp_nanos_opt().unwrap_or(0),
        archives: found,
    };
    Ok((m, notes))
}

/// Summary of chunk usage, used by tests and the bench.
pub fn chunk_sizes(repo: &Repository) -> Result<HashMap<Id, (u32, u32)>> {
    let index = repo.load_index()?;
    Ok(index.chunks.iter().map(|(k, l)| (*k, (l.ulen, l.len))).collect())
}

/// One difference between two archives (`diff`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffEntry {
    /// Archive path.
    pub path: String,
    /// borg-style change descriptions, e.g. `added 1234 B`, `+10 -5`, `[-rw-r--r-- -> ...]`.
    pub changes: Vec<String>,
}

fn extent_bytes(item: &Item) -> HashMap<Id, u64> {
    let mut m = HashMap::new();
    for c in &item.chunks {
        if let Extent::Data { id, len } = c {
            *m.entry(*id).or_insert(0) += u64::from(*len);
        }
    }
    m
}

/// Compares two archives by path: added, removed, content (+added -removed bytes, by chunk),
/// mode, owner, symlink target, mtime.
pub fn diff_archives(repo: &Repository, a: &str, b: &str) -> Result<Vec<DiffEntry>> {
    let _lock = repo.shared_lock()?;
    let index = repo.load_index()?;
    let load = |n: &str| -> Result<BTreeMap<Vec<u8>, Item>> {
        Ok(crate::extract::archive_items(repo, &index, n)?.into_iter().map(|i| (i.path.clone(), i)).collect())
    };
    let (old, new) = (load(a)?, load(b)?);
    let mut out = Vec::new();
    let paths: std::collections::BTreeSet<&Vec<u8>> = old.keys().chain(new.keys()).collect();
    for p in paths {
        let mut changes = Vec::new();
        match (old.get(p), new.get(p)) {
            (None, Some(n)) => changes.push(format!("added {} B", n.size)),
            (Some(o), None) => changes.push(format!("removed {} B", o.size)),
            (Some(o), Some(n)) => {
                if o.chunks != n.chunks {
                    let (oc, nc) = (extent_bytes(o), extent_bytes(n));
                    let plus: u64 = nc.iter().filter(|(k, _)| !oc.contains_key(*k)).map(|(_, v)| v).sum();
                    let minus: u64 = oc.iter().filter(|(k, _)| !nc.contains_key(*k)).map(|(_, v)| v).sum();
                    changes.push(format!("+{plus} B -{minus} B"));
                }
                if o.kind != n.kind || o.mode != n.mode {
                    changes.push(format!("[{:?} {:o} -> {:?} {:o}]", o.kind, o.mode, n.kind, n.mode));
                }
                if (o.uid, o.gid, &o.user, &o.group) != (n.uid, n.gid, &n.user, &n.group) {
                    changes.push(format!(
                        "[{}:{} -> {}:{}]",
                        o.user.clone().unwrap_or_else(|| o.uid.to_string()),
                        o.group.clone().unwrap_or_else(|| o.gid.to_string()),
                        n.user.clone().unwrap_or_else(|| n.uid.to_string()),
                        n.group.clone().unwrap_or_else(|| n.gid.to_string())
                    ));
                }
                if o.target != n.target {
                    changes.push("changed link".into());
                }
                if o.mtime != n.mtime && changes.is_empty() {
                    changes.push(format!("[mtime: {} -> {}]", time_of(o.mtime), time_of(n.mtime)));
                }
            }
            (None, None) => {}
        }
        if !changes.is_empty() {
            out.push(DiffEntry { path: String::from_utf8_lossy(p).into_owned(), changes });
        }
    }
    Ok(out)
}

/// Selects archives as borg's `-a GLOB`, `--first N`, `--last N` do: the ones matching the
/// glob, by time (oldest first), then the first or last N of them. `archives` need not be
/// sorted.
pub fn select_archives(
    mut archives: Vec<ManifestEntry>,
    glob: Option<&str>,
    first: Option<usize>,
    last: Option<usize>,
) -> Vec<ManifestEntry> {
    archives.retain(|a| glob.is_none_or(|g| glob_archives(g, &a.name)));
    archives.sort_by_key(|a| a.time);
    if let Some(n) = first {
        archives.truncate(n);
    }
    if let Some(n) = last {
        let skip = archives.len().saturating_sub(n);
        archives.drain(..skip);
    }
    archives
}

/// `rename REPO::OLD NEW`: the archive object is written again under its new name (its id is
/// its content's), the manifest is switched to it in one write (the commit), then the old
/// object is removed. A crash before the manifest write leaves an unreferenced object and the
/// old name; after it, the new name (and at worst an old object `check` reports).
pub fn rename_archive(repo: &Repository, old: &str, new: &str) -> Result<ManifestEntry> {
    if new.is_empty() || new.contains('/') || new.contains("::") {
        return Err(Error::InvalidArgument(format!("{new:?}: not a valid archive name")));
    }
    let _lock = repo.lock()?;
    let mut m = repo.manifest()?;
    let pos = m.archives.iter().position(|a| a.name == old).ok_or_else(|| Error::NoSuchArchive(old.into()))?;
    if m.get(new).is_some() {
        return Err(Error::ArchiveExists(new.into()));
    }
    let old_id = m.archives[pos].id;
    let mut meta = repo.archive(&old_id)?;
    meta.name = new.to_string();
    let id = repo.write_archive(&meta)?;
    m.archives[pos].name = new.to_string();
    m.archives[pos].id = id;
    m.timestamp = Utc::now().timestamp_nanos_opt().unwrap_or(0);
    repo.write_manifest(&m)?;
    if id != old_id {
        repo.backend().remove(FileType::Archive, &old_id.to_hex())?;
    }
    Ok(m.archives[pos].clone())
}
