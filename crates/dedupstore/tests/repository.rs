//! End-to-end tests of the library: round trips with full metadata, dedup, tamper detection,
//! key and cache failures, compact and the files cache.

use dedupstore::archive::Extent;
use dedupstore::backend::{Backend, FileType, LocalBackend};
use dedupstore::chunker::ChunkerParams;
use dedupstore::commands::{self, CheckOptions};
use dedupstore::compress::Compression;
use dedupstore::create::{create, CreateOptions};
use dedupstore::crypto::{KdfParams, Mode};
use dedupstore::extract::{archive_items, extract, ExtractOptions};
use dedupstore::repo::{InitOptions, OpenOptions, Repository};
use dedupstore::Error;
use rand::{Rng, SeedableRng};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; n];
    r.fill(&mut v[..]);
    v
}

fn fast_kdf() -> KdfParams {
    KdfParams { m_cost: 1024, t_cost: 1, p_cost: 1 }
}

fn init(dir: &Path, mode: Mode) -> Repository {
    let mut o = InitOptions::new(mode, Some("pw".into()));
    o.kdf = fast_kdf();
    o.keys_dir = Some(dir.join("keys"));
    o.pack_size = 256 << 10;
    o.chunker = ChunkerParams { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };
    Repository::init(Arc::new(LocalBackend::new(dir.join("repo"))), &o).unwrap()
}

fn reopen(dir: &Path, pass: &str) -> Result<Repository, Error> {
    Repository::open(
        Arc::new(LocalBackend::new(dir.join("repo"))),
        &OpenOptions { passphrase: Some(pass.into()), keys_dir: Some(dir.join("keys")) },
    )
}

fn backup(
    repo: &Repository,
    name: &str,
    paths: Vec<PathBuf>,
    cache: Option<&Path>,
) -> dedupstore::create::CreateResult {
    let mut o = CreateOptions::new(name, paths);
    o.compression = Compression::Auto(3);
    o.cache_dir = cache.map(Path::to_path_buf);
    create(repo, &o, &mut |_| {}).unwrap()
}

/// Builds a tree with every kind of item and attribute.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("dir/sub")).unwrap();
    fs::write(root.join("dir/text.txt"), b"hello world\n".repeat(1000)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("random.bin"), random_bytes(300_000, 1)).unwrap();
    // sparse: 1 MiB hole, 4 KiB data, 2 MiB hole, data, trailing hole
    let f = fs::File::create(root.join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[7u8; 4096], 1 << 20).unwrap();
    f.write_all_at(&[9u8; 4096], 3 << 20).unwrap();
    f.set_len(5 << 20).unwrap();
    drop(f);
    // non-UTF-8 name
    fs::write(root.join(OsStr::from_bytes(b"caf\xe9-\xff.txt")), b"latin1").unwrap();
    std::os::unix::fs::symlink("dir/text.txt", root.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    fs::hard_link(root.join("dir/text.txt"), root.join("dir/sub/hardlink")).unwrap();
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    fs::set_permissions(root.join("random.bin"), fs::Permissions::from_mode(0o4751)).unwrap();
    xattr::set(root.join("dir/text.txt"), "user.comment", b"some \x00 value").unwrap();
    if rempart_testkit::require_root("mknod and chown in the round trip") {
        nix::sys::stat::mknod(
            &root.join("chardev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        nix::unistd::chown(
            &root.join("empty"),
            Some(nix::unistd::Uid::from_raw(4242)),
            Some(nix::unistd::Gid::from_raw(4343)),
        )
        .unwrap();
    }
    // ns timestamps, including one before the epoch
    let set = |p: &Path, sec: i64, nsec: i64| {
        nix::sys::stat::utimensat(
            None,
            p,
            &nix::sys::time::TimeSpec::new(sec, nsec),
            &nix::sys::time::TimeSpec::new(sec, nsec),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    };
    set(&root.join("empty"), -86_400 * 400, 123_456_789);
    set(&root.join("link"), 1_600_000_000, 5);
    set(&root.join("dir/sub"), 1_500_000_000, 999_999_999);
}

#[derive(Debug, PartialEq)]
struct Meta {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    rdev: u64,
    nlink: u64,
    content: Option<Vec<u8>>,
    target: Option<PathBuf>,
    xattrs: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn snapshot(root: &Path) -> Vec<(PathBuf, Meta)> {
    let mut out = Vec::new();
    fn walk(root: &Path, p: &Path, out: &mut Vec<(PathBuf, Meta)>) {
        let md = fs::symlink_metadata(p).unwrap();
        let ft = md.file_type();
        let mut xattrs: Vec<_> = xattr::list(p)
            .map(|l| l.map(|n| (n.as_bytes().to_vec(), xattr::get(p, &n).ok().flatten())).collect())
            .unwrap_or_default();
        xattrs.sort();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        out.push((
            rel,
            Meta {
                kind: md.mode() & 0o170000,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if ft.is_file() { md.size() } else { 0 },
                mtime: (md.mtime(), md.mtime_nsec()),
                rdev: md.rdev(),
                nlink: if ft.is_dir() { 0 } else { md.nlink() },
                content: ft.is_file().then(|| fs::read(p).unwrap()),
                target: ft.is_symlink().then(|| fs::read_link(p).unwrap()),
                xattrs,
            },
        ));
        if ft.is_dir() {
            let mut names: Vec<_> = fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect();
            names.sort();
            for n in names {
                walk(root, &n, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn round_trip_restores_content_and_metadata() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src);
    let repo = init(d.path(), Mode::Repokey);
    let before = snapshot(&src);
    let res = backup(&repo, "a", vec![src.clone()], None);
    assert!(res.warnings.is_empty(), "{:?}", res.warnings);
    let dest = d.path().join("out");
    fs::create_dir(&dest).unwrap();
    let r =
        extract(&reopen(d.path(), "pw").unwrap(), "a", &ExtractOptions { dest: dest.clone(), ..Default::default() })
            .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // archive paths are stored as borg stores them: absolute without the leading '/'
    let restored_root = dest.join(src.strip_prefix("/").unwrap());
    let after = snapshot(&restored_root);
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(&after) {
        assert_eq!(b, a, "{}", b.0.display());
    }
    // holes restored as holes (not allocated)
    let sp = fs::metadata(restored_root.join("sparse")).unwrap();
    assert!(sp.blocks() * 512 < 1 << 20, "sparse file allocated {} blocks", sp.blocks());
    // hard link restored as a link
    assert_eq!(
        fs::metadata(restored_root.join("dir/text.txt")).unwrap().ino(),
        fs::metadata(restored_root.join("dir/sub/hardlink")).unwrap().ino()
    );
    // the sparse file was stored with hole extents
    let idx = repo.load_index().unwrap();
    let items = archive_items(&repo, &idx, "a").unwrap();
    let sparse = items.iter().find(|i| i.path.ends_with(b"/sparse")).unwrap();
    assert!(sparse.chunks.iter().any(|c| matches!(c, Extent::Hole(n) if *n >= 1 << 20)));
}

#[test]
fn partial_extract_strip_components_and_hardlink_outside_selection() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    make_tree(&src);
    let repo = init(d.path(), Mode::None);
    // relative paths are stored as given
    let cwd = std::env::current_dir().unwrap();
    let _ = cwd;
    backup(&repo, "a", vec![src.clone()], None);
    let dest = d.path().join("out");
    fs::create_dir(&dest).unwrap();
    let ap = src.strip_prefix("/").unwrap().as_os_str().as_bytes().to_vec();
    let mut sub = ap.clone();
    sub.extend_from_slice(b"/dir/sub");
    let r = extract(
        &repo,
        "a",
        &ExtractOptions {
            dest: dest.clone(),
            paths: vec![sub],
            strip_components: ap.split(|&b| b == b'/').count(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // the hard link's first name was not selected: its content is restored anyway
    assert_eq!(fs::read(dest.join("dir/sub/hardlink")).unwrap(), b"hello world\n".repeat(1000));
    assert!(!dest.join("random.bin").exists());
}

#[test]
fn shifted_copy_of_a_large_file_deduplicates() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    let big = random_bytes(4 << 20, 5);
    fs::write(src.join("big"), &big).unwrap();
    let repo = init(d.path(), Mode::Repokey);
    let first = backup(&repo, "a", vec![src.clone()], None);
    // a copy shifted by 1000 bytes, and an exact copy
    let mut shifted = random_bytes(1000, 6);
    shifted.extend_from_slice(&big);
    fs::write(src.join("shifted"), &shifted).unwrap();
    let second = backup(&repo, "b", vec![src.clone()], None);
    let added = second.archive.stats.deduplicated_size;
    assert!(
        added * 10 < first.archive.stats.deduplicated_size,
        "shifted copy added {added} bytes vs {} for the original",
        first.archive.stats.deduplicated_size
    );
}

#[test]
fn tampered_pack_is_named_by_check_and_extract_fails_only_for_the_damaged_file() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("victim"), random_bytes(100_000, 7)).unwrap();
    let repo = init(d.path(), Mode::Repokey);
    backup(&repo, "a", vec![src.join("victim")], None);
    // the healthy file goes into another pack (a second backup)
    fs::write(src.join("healthy"), random_bytes(50_000, 8)).unwrap();
    backup(&repo, "b", vec![src.join("healthy")], None);
    let idx = repo.load_index().unwrap();
    let items = archive_items(&repo, &idx, "a").unwrap();
    let Extent::Data { id, .. } = items[0].chunks[0] else { panic!() };
    let loc = idx.chunks[&id];
    let b = LocalBackend::new(d.path().join("repo"));
    let path = b.path(FileType::Pack, &loc.pack.to_hex());
    let mut data = fs::read(&path).unwrap();
    data[loc.offset as usize + 40] ^= 1;
    fs::write(&path, &data).unwrap();

    let r = commands::check(&repo, CheckOptions { verify_data: true, repair: false, ..Default::default() }).unwrap();
    assert!(!r.ok());
    assert_eq!(r.damaged_chunks, vec![id]);
    assert_eq!(r.damaged_files.len(), 1, "{:?}", r.damaged_files);
    assert_eq!(r.damaged_files[0].0, "a");
    assert!(r.damaged_files[0].1.ends_with("victim"));

    let dest = d.path().join("out");
    fs::create_dir(&dest).unwrap();
    let ok = extract(&repo, "b", &ExtractOptions { dest: dest.clone(), ..Default::default() }).unwrap();
    assert!(ok.errors.is_empty());
    let bad = extract(&repo, "a", &ExtractOptions { dest: dest.clone(), ..Default::default() }).unwrap();
    assert_eq!(bad.errors.len(), 1);
    assert!(bad.errors[0].contains("victim") && bad.errors[0].contains("authentication failed"), "{}", bad.errors[0]);
}

#[test]
fn wrong_passphrase_wrong_keyfile_truncated_pack_missing_index() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), random_bytes(200_000, 9)).unwrap();
    let repo = init(d.path(), Mode::Keyfile);
    backup(&repo, "a", vec![src.clone()], None);
    let listing = |p: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v = vec![];
        for e in walkdir(p) {
            if e.is_file() {
                v.push((e.clone(), fs::read(&e).unwrap()));
            }
        }
        v
    };
    let before = listing(&d.path().join("repo"));
    assert!(matches!(reopen(d.path(), "nope"), Err(Error::WrongPassphrase)));
    // a key file of another repository
    let other = tempfile::tempdir().unwrap();
    let _o = init(other.path(), Mode::Keyfile);
    let key_name = fs::read_dir(d.path().join("keys")).unwrap().next().unwrap().unwrap().file_name();
    let other_key = fs::read_dir(other.path().join("keys")).unwrap().next().unwrap().unwrap().path();
    fs::copy(&other_key, d.path().join("keys").join(&key_name)).unwrap();
    let e = reopen(d.path(), "pw").unwrap_err();
    assert!(matches!(e, Error::KeyFile { .. }), "{e}");
    assert!(e.to_string().contains("another repository"));
    assert_eq!(before, listing(&d.path().join("repo")), "nothing in the repository changed");
    fs::remove_dir_all(d.path().join("keys")).unwrap();
    assert!(matches!(reopen(d.path(), "pw"), Err(Error::KeyFile { .. })));

    // truncated pack and missing index: clear errors
    let d = tempfile::tempdir().unwrap();
    let repo = init(d.path(), Mode::Repokey);
    backup(&repo, "a", vec![src.clone()], None);
    let b = LocalBackend::new(d.path().join("repo"));
    let pack = b.list(FileType::Pack).unwrap()[0].clone();
    let p = b.path(FileType::Pack, &pack);
    let len = fs::metadata(&p).unwrap().len();
    let original = fs::read(&p).unwrap();
    fs::File::options().write(true).open(&p).unwrap().set_len(len / 2).unwrap();
    let r = commands::check(&repo, CheckOptions::default()).unwrap();
    assert!(r.errors.iter().any(|e| e.contains(&pack)), "{:?}", r.errors);
    assert!(r.errors.iter().any(|e| e.contains("archive a")), "{:?}", r.errors);
    let dest = d.path().join("out");
    fs::create_dir(&dest).unwrap();
    // the item stream lives in the truncated pack: one clear error
    let x = extract(&repo, "a", &ExtractOptions { dest, ..Default::default() }).unwrap_err();
    assert!(x.to_string().contains("truncated"), "{x}");
    fs::write(&p, &original).unwrap();
    for i in b.list(FileType::Index).unwrap() {
        b.remove(FileType::Index, &i).unwrap();
    }
    // index files only cache the packs' headers: without them the restore still works (issue 14)
    let x = extract(&repo, "a", &ExtractOptions { dest: d.path().join("out2"), ..Default::default() }).unwrap();
    assert!(x.errors.is_empty(), "{:?}", x.errors);
    // check --repair rebuilds the index from the pack headers
    let r = commands::check(&repo, CheckOptions { verify_data: false, repair: true, ..Default::default() }).unwrap();
    assert!(r.repaired);
    assert!(repo.load_index().unwrap().chunks.len() > 1);
    let r = commands::check(&repo, CheckOptions { verify_data: true, repair: false, ..Default::default() }).unwrap();
    assert!(r.ok(), "{:?}", r.errors);
}

fn walkdir(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        let mut e: Vec<_> = fs::read_dir(p).unwrap().map(|e| e.unwrap().path()).collect();
        e.sort();
        for x in e {
            out.extend(walkdir(&x));
        }
    }
    out
}

#[test]
fn tampered_manifest_and_config_are_detected() {
    let d = tempfile::tempdir().unwrap();
    let repo = init(d.path(), Mode::Authenticated);
    let src = d.path().join("f");
    fs::write(&src, b"data").unwrap();
    backup(&repo, "a", vec![src], None);
    let b = LocalBackend::new(d.path().join("repo"));
    let m = b.path(FileType::Manifest, "manifest");
    let mut data = fs::read(&m).unwrap();
    data[3] ^= 0x20;
    fs::write(&m, &data).unwrap();
    let e = repo.manifest().unwrap_err();
    assert!(matches!(e, Error::Integrity { .. }), "{e}");
    data[3] ^= 0x20;
    fs::write(&m, &data).unwrap();
    // config downgrade: switch the chunker params
    let c = b.path(FileType::Config, "config");
    let s = fs::read_to_string(&c).unwrap().replace("\"max\": 65536", "\"max\": 131072");
    fs::write(&c, s).unwrap();
    assert!(matches!(reopen(d.path(), "pw"), Err(Error::Integrity { .. })));
}

#[test]
fn files_cache_skips_unchanged_files_including_the_newest_and_survives_deletion() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..5 {
        fs::write(src.join(format!("f{i}")), random_bytes(10_000, i)).unwrap();
    }
    // all files were written "a while ago" (3 s in the past: outside the racy window)
    let old = chrono::Utc::now().timestamp() - 10;
    for i in 0..5 {
        nix::sys::stat::utimensat(
            None,
            &src.join(format!("f{i}")),
            &nix::sys::time::TimeSpec::new(old, 0),
            &nix::sys::time::TimeSpec::new(old + i as i64, 0),
            nix::sys::stat::UtimensatFlags::FollowSymlink,
        )
        .unwrap();
    }
    let cache = d.path().join("cache");
    let repo = init(d.path(), Mode::Repokey);
    let a = backup(&repo, "a", vec![src.clone()], Some(&cache));
    assert_eq!(a.cached_files, 0);
    // Regression test for borg #5992: the newest file of the previous run (f4) is not re-read.
    // (ctime is "now" for all files, since utimensat changes it; wait until it leaves the window)
    let b = backup(&repo, "b", vec![src.clone()], Some(&cache));
    let racy = b.cached_files;
    assert!(racy == 0 || racy == 5);
    // after the racy window, every file is trusted, including the newest one
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let c = backup(&repo, "c", vec![src.clone()], Some(&cache));
    let c2 = backup(&repo, "c2", vec![src.clone()], Some(&cache));
    assert_eq!(c2.cached_files, 5, "all five unchanged files, the newest included, come from the cache");
    let _ = c;
    // a modified file is re-read
    fs::write(src.join("f0"), b"changed").unwrap();
    let e = backup(&repo, "e", vec![src.clone()], Some(&cache));
    assert_eq!(e.cached_files, 4);
    let diff = commands::diff_archives(&repo, "c2", "e").unwrap();
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(diff[0].path.ends_with("/f0") && diff[0].changes[0] == "+7 B -10000 B", "{diff:?}");
    // delete the cache: the next run rebuilds it and the archive is identical in content
    fs::remove_dir_all(&cache).unwrap();
    let f = backup(&repo, "f", vec![src.clone()], Some(&cache));
    assert_eq!(f.cached_files, 0);
    // only the item stream (atimes changed by reading) is new; no file content
    assert!(f.archive.stats.deduplicated_size < 2000, "{}", f.archive.stats.deduplicated_size);
    let idx = repo.load_index().unwrap();
    let fe: Vec<_> = archive_items(&repo, &idx, "e").unwrap().into_iter().map(|i| i.chunks).collect();
    let ff: Vec<_> = archive_items(&repo, &idx, "f").unwrap().into_iter().map(|i| i.chunks).collect();
    assert_eq!(fe, ff);
}

#[test]
fn delete_then_compact_frees_space_and_keeps_other_archives_intact() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("keep"), random_bytes(300_000, 1)).unwrap();
    let repo = init(d.path(), Mode::Repokey);
    backup(&repo, "a", vec![src.clone()], None);
    fs::write(src.join("gone"), random_bytes(600_000, 2)).unwrap();
    backup(&repo, "b", vec![src.clone()], None);
    fs::remove_file(src.join("gone")).unwrap();
    backup(&repo, "c", vec![src.clone()], None);
    let size =
        |p: &Path| walkdir(p).iter().filter(|f| f.is_file()).map(|f| fs::metadata(f).unwrap().len()).sum::<u64>();
    let before = size(&d.path().join("repo"));
    commands::delete_archives(&repo, &["b"]).unwrap();
    assert!(size(&d.path().join("repo")) + 1000 > before, "delete frees nothing by itself");
    let plan = commands::compact_plan(&repo, 10).unwrap();
    assert!(plan.freed >= 500_000, "{plan:?}");
    commands::compact_apply(&repo, &plan).unwrap();
    let after = size(&d.path().join("repo"));
    assert!(after + 500_000 < before, "{after} vs {before}");
    let r = commands::check(&repo, CheckOptions { verify_data: true, repair: false, ..Default::default() }).unwrap();
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(r.orphan_packs.len(), 0);
    let names: Vec<_> = commands::list_archives(&repo).unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, vec!["a", "c"]);
    let dest = d.path().join("out");
    fs::create_dir(&dest).unwrap();
    let x = extract(&repo, "c", &ExtractOptions { dest: dest.clone(), ..Default::default() }).unwrap();
    assert!(x.errors.is_empty());
    assert_eq!(fs::read(dest.join(src.strip_prefix("/").unwrap()).join("keep")).unwrap(), random_bytes(300_000, 1));
}

#[test]
fn lock_is_exclusive_and_stale_locks_of_dead_processes_are_removed() {
    let d = tempfile::tempdir().unwrap();
    let repo = init(d.path(), Mode::None);
    let l = repo.lock().unwrap();
    assert!(matches!(repo.lock(), Err(Error::Locked { .. })));
    drop(l);
    let l2 = repo.lock().unwrap();
    drop(l2);
    // a lock left by a dead process on this host
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let b = LocalBackend::new(d.path().join("repo"));
    let info = format!(r#"{{"host":"{}","pid":{pid},"time":"x"}}"#, dedupstore::repo::hostname());
    assert!(b.create_new(FileType::Lock, "lock", info.as_bytes()).unwrap());
    let l3 = repo.lock().unwrap();
    drop(l3);
    // a lock of another host is not removed
    let info = r#"{"host":"elsewhere","pid":1,"time":"x"}"#;
    assert!(b.create_new(FileType::Lock, "lock", info.as_bytes()).unwrap());
    let e = repo.lock().unwrap_err();
    assert!(e.to_string().contains("elsewhere"), "{e}");
    dedupstore::repo::RepoLock::break_lock(&b).unwrap();
    repo.lock().unwrap();
}

#[test]
fn excludes_and_relative_paths() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("cache/x"), b"x").unwrap();
    fs::write(src.join("a.tmp"), b"x").unwrap();
    fs::write(src.join("keep"), b"x").unwrap();
    let repo = init(d.path(), Mode::None);
    let mut o = CreateOptions::new("a", vec![src.clone()]);
    o.excludes = vec![
        dedupstore::pattern::Pattern::parse("*.tmp").unwrap(),
        dedupstore::pattern::Pattern::parse("sh:**/cache").unwrap(),
    ];
    create(&repo, &o, &mut |_| {}).unwrap();
    let idx = repo.load_index().unwrap();
    let paths: Vec<String> = archive_items(&repo, &idx, "a").unwrap().iter().map(|i| i.path_lossy()).collect();
    let base = src.strip_prefix("/").unwrap().to_string_lossy().into_owned();
    assert_eq!(paths, vec![base.clone(), format!("{base}/keep")]);
}

/// Writes an archive whose items were edited by hand (what a malicious repository could hold).
fn write_crafted_archive(repo: &Repository, name: &str, items: &[dedupstore::archive::Item]) {
    use dedupstore::archive::{encode_item, ManifestEntry};
    use dedupstore::writer::{ChunkWriter, WriterOptions};
    let _lock = repo.lock().unwrap();
    let mut stream = Vec::new();
    for it in items {
        encode_item(it, &mut stream).unwrap();
    }
    let mut w = ChunkWriter::new(repo, Arc::new(repo.load_index().unwrap()), WriterOptions::default());
    let ids: Vec<_> = repo.chunker().split(&stream).into_iter().map(|c| w.store(c.to_vec()).unwrap().0).collect();
    w.finish().unwrap();
    let mut m = repo.manifest().unwrap();
    let mut meta = repo.archive(&m.archives[0].id).unwrap();
    meta.name = name.into();
    meta.items = ids;
    let id = repo.write_archive(&meta).unwrap();
    m.archives.push(ManifestEntry { name: name.into(), id, time: meta.time + 1 });
    repo.write_manifest(&m).unwrap();
}

#[test]
fn extract_never_writes_outside_the_destination() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let outside = d.path().join("outside");
    fs::create_dir_all(src.join("b")).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(src.join("b/passwd"), b"owned\n").unwrap();
    std::os::unix::fs::symlink(&outside, src.join("a")).unwrap();
    let repo = init(d.path(), Mode::None);
    let res = backup(&repo, "honest", vec![src.clone()], None);
    assert!(res.warnings.is_empty(), "{:?}", res.warnings);
    let pre = src.strip_prefix("/").unwrap().to_str().unwrap().to_string();
    let idx = repo.load_index().unwrap();
    let items = archive_items(&repo, &idx, "honest").unwrap();
    let file = items.iter().find(|i| i.path == format!("{pre}/b/passwd").as_bytes()).unwrap().clone();
    // The symlink `src/a` comes first (sorted), then files through it, `..` and absolute paths.
    let mut crafted = items.clone();
    for p in [format!("{pre}/a/passwd"), format!("{pre}/a/../../../escaped"), "/abs-escaped".into(), "../dotdot".into()]
    {
        let mut f = file.clone();
        f.path = p.into_bytes();
        crafted.push(f);
    }
    write_crafted_archive(&repo, "evil", &crafted);
    let dest = d.path().join("dest");
    fs::create_dir(&dest).unwrap();
    let r = extract(&repo, "evil", &ExtractOptions { dest: dest.clone(), ..Default::default() }).unwrap();
    // nothing outside the destination
    assert!(!outside.join("passwd").exists(), "wrote through the symlink");
    assert!(!d.path().join("escaped").exists() && !d.path().join("dotdot").exists());
    assert!(!Path::new("/abs-escaped").exists());
    // the items through the symlink (`a/../../../escaped` is `a/escaped` once `..` is dropped)
    // are refused by name; the others land inside
    assert_eq!(r.errors.len(), 2, "{:?}", r.errors);
    for (e, p) in r.errors.iter().zip(["a/passwd", "a/../../../escaped"]) {
        assert!(e.contains(&format!("{pre}/{p}:")) && e.contains("through the symlink"), "{e}");
    }
    assert!(fs::symlink_metadata(dest.join(&pre).join("a")).unwrap().file_type().is_symlink());
    assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
    assert_eq!(fs::read(dest.join("abs-escaped")).unwrap(), b"owned\n");
    assert_eq!(fs::read(dest.join("dotdot")).unwrap(), b"owned\n");
    assert_eq!(fs::read(dest.join(&pre).join("b/passwd")).unwrap(), b"owned\n");
}

/// Content of `name`'s item ending in `suffix`, extracted into a fresh directory.
fn extracted(repo: &Repository, d: &Path, name: &str, suffix: &str) -> Vec<u8> {
    let dest = d.join(format!("x-{name}-{}", rand::random::<u32>()));
    let r = extract(repo, name, &ExtractOptions { dest: dest.clone(), ..Default::default() }).unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let f = walkdir(&dest).into_iter().find(|p| p.to_string_lossy().ends_with(suffix)).unwrap();
    fs::read(f).unwrap()
}

#[test]
fn check_repair_zero_fills_damaged_chunks_rebuilds_the_index_and_heals() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    let victim = random_bytes(100_000, 7);
    fs::write(src.join("victim"), &victim).unwrap();
    let repo = init(d.path(), Mode::Repokey);
    backup(&repo, "a", vec![src.join("victim")], None);
    backup(&repo, "c", vec![src.join("victim")], None);
    // big enough to span several packs, so that its first pack holds none of the item stream
    fs::write(src.join("healthy"), random_bytes(600_000, 8)).unwrap();
    backup(&repo, "b", vec![src.join("healthy")], None);
    let idx = repo.load_index().unwrap();
    let items = archive_items(&repo, &idx, "a").unwrap();
    let Extent::Data { id, len } = items[0].chunks[1] else { panic!() };
    let Extent::Data { len: first, .. } = items[0].chunks[0] else { panic!() };
    let loc = idx.chunks[&id];
    let b = LocalBackend::new(d.path().join("repo"));
    let path = b.path(FileType::Pack, &loc.pack.to_hex());
    let mut data = fs::read(&path).unwrap();
    data[loc.offset as usize + 40] ^= 1;
    fs::write(&path, &data).unwrap();

    // no --verify-data: the pack's hash gives the damage away, its chunks are then verified
    let r = commands::check(&repo, CheckOptions { verify_data: false, repair: true, ..Default::default() }).unwrap();
    assert!(r.repaired && r.ok(), "{:?}", r.errors);
    let zeroed: Vec<_> = r.repaired_notes.iter().filter(|n| n.contains("replaced with zeros")).collect();
    assert_eq!(zeroed.len(), 2, "{:?}", r.repaired_notes);
    assert!(zeroed[0].starts_with("archive a: file ") && zeroed[0].contains("victim: 1 missing"), "{zeroed:?}");
    assert!(zeroed[1].starts_with("archive c: file "), "{zeroed:?}");
    assert!(r.orphan_chunks > 0, "the replaced item streams are orphans now");
    assert_eq!(b.list(FileType::Index).unwrap().len(), 1, "one rebuilt index supersedes the old ones");
    // the repository is clean now; the zero-filled chunks are on record
    let r = commands::check(&repo, CheckOptions { verify_data: true, repair: false, ..Default::default() }).unwrap();
    assert!(r.ok(), "{:?}", r.errors);
    assert_eq!(r.zero_filled, vec![("a".to_string(), 1), ("c".to_string(), 1)]);
    // the file restores with zeros where the damaged chunk was, the rest intact
    let mut want = victim.clone();
    want[first as usize..(first + len) as usize].fill(0);
    assert_eq!(extracted(&repo, d.path(), "a", "victim"), want);
    assert_eq!(extracted(&repo, d.path(), "b", "healthy"), random_bytes(600_000, 8));

    // a missing pack: its chunks are dropped from the rebuilt index and zero-filled too
    let idx = repo.load_index().unwrap();
    let hb = archive_items(&repo, &idx, "b").unwrap();
    let Extent::Data { id: hid, .. } = hb[0].chunks[0] else { panic!() };
    let lost = idx.chunks[&hid].pack;
    let (_, meta_b) = commands::archive_info(&repo, "b").unwrap();
    assert!(meta_b.items.iter().all(|i| idx.chunks[i].pack != lost));
    fs::remove_file(b.path(FileType::Pack, &lost.to_hex())).unwrap();
    let r = commands::check(&repo, CheckOptions { verify_data: false, repair: false, ..Default::default() }).unwrap();
    assert!(r.errors.iter().any(|e| e.starts_with("archive b: file ") && e.contains("healthy")), "{:?}", r.errors);
    let r = commands::check(&repo, CheckOptions { verify_data: false, repair: true, ..Default::default() }).unwrap();
    assert!(r.ok(), "{:?}", r.errors);
    assert!(r.repaired_notes.iter().any(|n| n.starts_with("archive b: file ") && n.contains("healthy")));
    assert!(commands::check(&repo, CheckOptions { verify_data: true, repair: false, ..Default::default() })
        .unwrap()
        .ok());

    // the lost chunk comes back with a new backup of the same file: repair heals the archives
    backup(&repo, "d", vec![src.join("victim")], None);
    let r = commands::check(&repo, CheckOptions { verify_data: false, repair: true, ..Default::default() }).unwrap();
    assert_eq!(r.repaired_notes.iter().filter(|n| n.contains("is back, healed")).count(), 2, "{:?}", r.repaired_notes);
    assert_eq!(extracted(&repo, d.path(), "a", "victim"), victim);
    let r = commands::check(&repo, CheckOptions { verify_data: true, repair: false, ..Default::default() }).unwrap();
    assert!(r.ok(), "{:?}", r.errors);
    assert!(r.zero_filled.iter().all(|(a, _)| a == "b"), "{:?}", r.zero_filled);
}

/// The cached chunk index equals the repository's (same chunks, locations and sizes, same packs).
fn assert_cached_index_matches(repo: &Repository, cache: &Path, expect_used: bool) {
    let c = dedupstore::cache::FilesCache::open(cache, &repo.config().id).unwrap();
    let (idx, used) = c.load_index(repo).unwrap();
    assert_eq!(used, expect_used, "cache used");
    let real = repo.load_index().unwrap();
    assert!(!real.chunks.is_empty());
    let sizes = |i: &dedupstore::repo::Index| {
        let mut v: Vec<_> = i.chunks.iter().map(|(id, l)| (*id, l.len, l.ulen)).collect();
        v.sort();
        v
    };
    assert_eq!(sizes(&idx), sizes(&real));
    assert_eq!(idx.packs, real.packs);
    let mut f1 = idx.files.clone();
    let mut f2 = real.files.clone();
    f1.sort();
    f2.sort();
    assert_eq!(f1, f2);
    assert_eq!(c.index_len().unwrap(), real.packs.values().map(|b| b.len() as u64).sum::<u64>());
    // reference counts: every chunk reference of every archive in the manifest
    let mut refs = std::collections::HashMap::new();
    for a in repo.manifest().unwrap().archives {
        for id in repo.archive(&a.id).unwrap().items {
            *refs.entry(id).or_insert(0u64) += 1;
        }
        for item in archive_items(repo, &real, &a.name).unwrap() {
            for e in item.chunks {
                if let Extent::Data { id, .. } = e {
                    *refs.entry(id).or_insert(0u64) += 1;
                }
            }
        }
    }
    assert_eq!(c.refcounts().unwrap(), refs);
    assert!(refs.values().any(|n| *n > 1) || repo.manifest().unwrap().archives.len() < 2);
}

#[test]
fn chunk_index_cache_mirrors_the_repository_and_is_rebuilt_when_deleted_or_stale() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    for i in 0..3 {
        fs::write(src.join(format!("f{i}")), random_bytes(200_000, 40 + i)).unwrap();
    }
    let cache = d.path().join("cache");
    let repo = init(d.path(), Mode::Repokey);
    let a = backup(&repo, "a", vec![src.clone()], Some(&cache));
    assert!(a.archive.stats.deduplicated_size > 500_000);
    // (a) after a create, the cache holds the repository's chunk index and is used as is
    assert_cached_index_matches(&repo, &cache, true);
    // (b) delete the cache: the next create rebuilds it and still deduplicates everything
    fs::remove_dir_all(&cache).unwrap();
    let b = backup(&repo, "b", vec![src.clone()], Some(&cache));
    assert_eq!(b.cached_files, 0);
    assert!(b.archive.stats.deduplicated_size < 2000, "{}", b.archive.stats.deduplicated_size);
    assert_cached_index_matches(&repo, &cache, true);
    // (c) another client (own cache) adds data: our cache is stale, detected and rebuilt
    let other = d.path().join("src2");
    fs::create_dir(&other).unwrap();
    fs::write(other.join("g"), random_bytes(300_000, 99)).unwrap();
    let c = backup(&repo, "c", vec![other.clone()], Some(&d.path().join("cache-other")));
    assert!(c.archive.stats.deduplicated_size > 250_000);
    assert_cached_index_matches(&repo, &cache, false);
    assert_cached_index_matches(&repo, &cache, true);
    // the rebuilt cache knows the other client's chunks: backing them up here stores ~nothing
    let e = backup(&repo, "e", vec![other], Some(&cache));
    assert!(e.archive.stats.deduplicated_size < 2000, "{}", e.archive.stats.deduplicated_size);
    assert_cached_index_matches(&repo, &cache, true);
    // a run that writes checkpoints (committing the files cache midway) keeps the counts exact
    let mut o = CreateOptions::new("k", vec![src.clone(), d.path().join("src2")]);
    o.cache_dir = Some(cache.clone());
    o.checkpoint_volume = 100_000;
    let mut checkpoints = 0;
    create(&repo, &o, &mut |ev| checkpoints += matches!(ev, dedupstore::create::Event::Checkpoint { .. }) as u32)
        .unwrap();
    assert!(checkpoints >= 2, "{checkpoints}");
    assert_cached_index_matches(&repo, &cache, true);
    // a compact (index files replaced) is also detected
    commands::delete_archives(&repo, &["c", "e"]).unwrap();
    assert_cached_index_matches(&repo, &cache, false);
    let plan = commands::compact_plan(&repo, 0).unwrap();
    commands::compact_apply(&repo, &plan).unwrap();
    assert_cached_index_matches(&repo, &cache, false);
    // a damaged repository (an archive object gone) does not break `create` through the cache;
    // the counts are then never marked valid, so the cache is rebuilt on every open
    let b_id = repo.manifest().unwrap().get("b").unwrap().id;
    repo.backend().remove(FileType::Archive, &b_id.to_hex()).unwrap();
    fs::remove_dir_all(&cache).unwrap();
    let z = backup(&repo, "z", vec![src.clone()], Some(&cache));
    assert!(z.archive.stats.deduplicated_size < 2000, "{}", z.archive.stats.deduplicated_size);
    let c = dedupstore::cache::FilesCache::open(&cache, &repo.config().id).unwrap();
    assert!(!c.load_index(&repo).unwrap().1);
    assert!(!c.load_index(&repo).unwrap().1);
}

#[test]
fn round_trip_of_a_1_gib_file() {
    use std::io::{Read, Write};
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    fs::create_dir(&src).unwrap();
    // 1 GiB: 1024 blocks of the same 1 MiB of text-like bytes, each with its own first line, so
    // the content is distinct per block, compressible, and mostly deduplicated (fast to store)
    let mut r = rand::rngs::StdRng::seed_from_u64(77);
    let base: Vec<u8> = (0..1 << 20).map(|_| b"abcdefgh ijklmnop\n"[r.gen_range(0..18)]).collect();
    let big = src.join("big.img");
    let mut f = std::io::BufWriter::new(fs::File::create(&big).unwrap());
    let mut want = blake3::Hasher::new();
    for block in 0..1024u32 {
        let mut b = base.clone();
        b[..15].copy_from_slice(format!("block {block:08}\n").as_bytes());
        f.write_all(&b).unwrap();
        want.update(&b);
    }
    f.into_inner().unwrap().sync_all().unwrap();
    let mut o = InitOptions::new(Mode::Repokey, Some("pw".into()));
    o.kdf = fast_kdf();
    o.keys_dir = Some(d.path().join("keys"));
    let repo = Repository::init(Arc::new(LocalBackend::new(d.path().join("repo"))), &o).unwrap();
    let res = backup(&repo, "big", vec![src.clone()], None);
    assert!(res.warnings.is_empty(), "{:?}", res.warnings);
    // drop the source before restoring: nothing can come from it
    fs::remove_file(&big).unwrap();
    let dest = d.path().join("out");
    fs::create_dir(&dest).unwrap();
    let x = extract(&repo, "big", &ExtractOptions { dest: dest.clone(), ..Default::default() }).unwrap();
    assert!(x.errors.is_empty(), "{:?}", x.errors);
    let restored = dest.join(src.strip_prefix("/").unwrap()).join("big.img");
    assert_eq!(fs::metadata(&restored).unwrap().len(), 1 << 30);
    let mut got = blake3::Hasher::new();
    let mut rd = fs::File::open(&restored).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = rd.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.update(&buf[..n]);
    }
    assert_eq!(got.finalize(), want.finalize(), "restored content differs");
    // stored far less than the file (dedup + compression), and check is clean
    let stored: u64 = walk_sizes(&d.path().join("repo"));
    assert!(stored < 200 << 20, "stored {stored} bytes for 1 GiB");
    assert!(commands::check(&repo, CheckOptions { verify_data: true, ..Default::default() }).unwrap().ok());
}

fn walk_sizes(p: &Path) -> u64 {
    fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk_sizes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

/// A backend whose reads are pipelined like ssh's ([`Backend::pipelines_reads`], so a restore
/// plans its reads with `fetch_sealed`), counting the bytes it is asked for.
#[derive(Debug)]
struct PipelinedReads {
    inner: LocalBackend,
    asked: std::sync::atomic::AtomicU64,
}

impl Backend for PipelinedReads {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn exists(&self) -> dedupstore::Result<bool> {
        self.inner.exists()
    }
    fn create(&self) -> dedupstore::Result<()> {
        self.inner.create()
    }
    fn list(&self, t: FileType) -> dedupstore::Result<Vec<String>> {
        self.inner.list(t)
    }
    fn read(&self, t: FileType, name: &str) -> dedupstore::Result<Vec<u8>> {
        self.inner.read(t, name)
    }
    fn read_part(&self, t: FileType, name: &str, offset: u64, len: u64) -> dedupstore::Result<Vec<u8>> {
        self.inner.read_part(t, name, offset, len)
    }
    fn size(&self, t: FileType, name: &str) -> dedupstore::Result<u64> {
        self.inner.size(t, name)
    }
    fn write(&self, t: FileType, name: &str, data: &[u8]) -> dedupstore::Result<()> {
        self.inner.write(t, name, data)
    }
    fn create_new(&self, t: FileType, name: &str, data: &[u8]) -> dedupstore::Result<bool> {
        self.inner.create_new(t, name, data)
    }
    fn remove(&self, t: FileType, name: &str) -> dedupstore::Result<()> {
        self.inner.remove(t, name)
    }
    fn read_parts(
        &self,
        t: FileType,
        parts: &[(String, u64, u64)],
        each: &mut dyn FnMut(usize, dedupstore::Result<Vec<u8>>) -> bool,
    ) {
        let n: u64 = parts.iter().map(|p| p.2).sum();
        self.asked.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        self.inner.read_parts(t, parts, each)
    }
    fn pipelines_reads(&self) -> bool {
        true
    }
}

/// Over ssh every byte read costs ssh's cipher and copies on both hosts: a restore through a
/// pipelined backend asks for exactly the blobs it needs, each once — not the gaps between them
/// in a pack (chunks of files not restored), not a duplicated chunk again (a file stored twice, a
/// shifted copy: the restored chunk is kept for its next occurrence) — and still restores every
/// byte. The reuse plan keeps at most its budget at any moment.
#[test]
fn a_pipelined_restore_reads_each_needed_blob_once_and_nothing_between() {
    use dedupstore::repo::plan_reuse;
    let d = tempfile::tempdir().unwrap();
    let repo = init(d.path(), Mode::Repokey);
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let a = random_bytes(1_500_000, 41);
    fs::write(src.join("a.bin"), &a).unwrap();
    fs::write(src.join("b-skipped.bin"), random_bytes(700_000, 42)).unwrap();
    fs::write(src.join("c-copy-of-a.bin"), &a).unwrap();
    let mut shifted = random_bytes(300_000, 43);
    shifted.extend_from_slice(&a[..900_000]);
    fs::write(src.join("d-shifted.bin"), &shifted).unwrap();
    backup(&repo, "one", vec![src.clone()], None);
    drop(repo);
    let backend = Arc::new(PipelinedReads {
        inner: LocalBackend::new(d.path().join("repo")),
        asked: std::sync::atomic::AtomicU64::new(0),
    });
    let repo = Repository::open(
        backend.clone(),
        &OpenOptions { passphrase: Some("pw".into()), keys_dir: Some(d.path().join("keys")) },
    )
    .unwrap();
    let index = repo.load_index().unwrap();
    let rel = src.strip_prefix("/").unwrap();
    let wanted = ["a.bin", "c-copy-of-a.bin", "d-shifted.bin"];
    let paths: Vec<Vec<u8>> = wanted.iter().map(|w| rel.join(w).as_os_str().as_bytes().to_vec()).collect();
    // what the restore needs: every chunk of the wanted files, in order
    let ids: Vec<_> = archive_items(&repo, &index, "one")
        .unwrap()
        .into_iter()
        .filter(|i| paths.contains(&i.path))
        .flat_map(|i| i.chunks)
        .filter_map(|c| match c {
            Extent::Data { id, .. } => Some(id),
            Extent::Hole(_) => None,
        })
        .collect();
    let unique: std::collections::HashSet<_> = ids.iter().copied().collect();
    assert!(unique.len() + 20 < ids.len(), "the corpus must repeat chunks: {} of {}", unique.len(), ids.len());
    let need: u64 = unique.iter().map(|id| u64::from(index.chunks[id].len)).sum();
    let dest = d.path().join("out");
    let r = extract(&repo, "one", &ExtractOptions { dest: dest.clone(), paths: paths.clone(), ..Default::default() })
        .unwrap();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let asked = backend.asked.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(asked, need, "bytes read through the link vs the unique blobs the files need");
    for w in wanted {
        assert!(fs::read(dest.join(rel).join(w)).unwrap() == fs::read(src.join(w)).unwrap(), "{w} restored wrong");
    }
    assert!(!dest.join(rel).join("b-skipped.bin").exists());

    // the plan: every reuse takes an earlier occurrence of the same chunk, and the chunks kept
    // waiting never add up to more than the budget at any point
    for cap in [0, 40_000, 200_000, u64::MAX] {
        let (from, keep) = plan_reuse(&index, &ids, cap, &|l| u64::from(l.ulen));
        let mut held: u64 = 0;
        let mut peak = 0;
        for n in 0..ids.len() {
            if let Some(m) = from[n] {
                assert!(m < n && ids[m] == ids[n] && keep[m] == Some(n), "cap {cap}: occurrence {n}");
                held -= u64::from(index.chunks[&ids[n]].ulen);
            }
            if keep[n].is_some() {
                held += u64::from(index.chunks[&ids[n]].ulen);
            }
            peak = peak.max(held);
        }
        assert!(peak <= cap, "cap {cap}: {peak} bytes kept at once");
        let reused = from.iter().filter(|f| f.is_some()).count();
        match cap {
            0 => assert_eq!(reused, 0),
            u64::MAX => assert_eq!(reused, ids.len() - unique.len(), "every repeat reused"),
            _ => assert!(reused > 0 && reused < ids.len() - unique.len(), "cap {cap}: {reused} reused"),
        }
    }
}

/// A writer killed mid-write leaves a hidden temporary file in a local repository; the next
/// writer (the exclusive lock: create, prune, compact) removes it, as a server does per session.
/// A reader leaves it alone, and the archives are untouched.
#[test]
fn the_next_writer_removes_what_a_killed_writer_left() {
    let dir = tempfile::tempdir().unwrap();
    let repo = init(dir.path(), Mode::Repokey);
    let src = dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(100_000, 5)).unwrap();
    backup(&repo, "a1", vec![src.clone()], None);
    let fan = dir.path().join("repo/data/00");
    fs::create_dir_all(&fan).unwrap();
    let stale = fan.join(".tmp-00dead-0000000000000009");
    fs::write(&stale, vec![1u8; 4096]).unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    fs::File::options().write(true).open(&stale).unwrap().set_modified(old).unwrap();
    drop(repo.shared_lock().unwrap());
    assert!(stale.exists(), "a reader must not clean up");
    drop(repo.lock().unwrap());
    assert!(!stale.exists(), "the writer removes the stale temporary file");
    let report = commands::check(&repo, CheckOptions { verify_data: true, ..Default::default() }).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}

/// How an index file is damaged in the tests of issue 14.
#[derive(Clone, Copy, Debug)]
enum IndexDamage {
    Truncated,
    Garbage,
    Deleted,
}

/// A repository of two archives (each create writes its own index file) whose first index file
/// (naming the packs of archive `a`) is damaged as `how`; returns the repository, the source
/// tree and the name of the damaged index file.
fn repo_with_damaged_index(d: &Path, how: IndexDamage) -> (Repository, PathBuf, String) {
    let repo = init(d, Mode::Repokey);
    let src = d.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("big"), random_bytes(700_000, 21)).unwrap();
    fs::write(src.join("small"), b"small file\n").unwrap();
    let b = LocalBackend::new(d.join("repo"));
    backup(&repo, "a", vec![src.clone()], None);
    let first = b.list(FileType::Index).unwrap();
    assert_eq!(first.len(), 1, "{first:?}");
    fs::write(src.join("later"), random_bytes(50_000, 22)).unwrap();
    backup(&repo, "b", vec![src.clone()], None);
    assert_eq!(b.list(FileType::Index).unwrap().len(), 2);
    let name = first[0].clone();
    let p = b.path(FileType::Index, &name);
    match how {
        IndexDamage::Truncated => {
            let len = fs::metadata(&p).unwrap().len();
            fs::File::options().write(true).open(&p).unwrap().set_len(len / 2).unwrap();
        }
        IndexDamage::Garbage => fs::write(&p, random_bytes(3000, 23)).unwrap(),
        IndexDamage::Deleted => fs::remove_file(&p).unwrap(),
    }
    (repo, src, name)
}

/// Every file of `archive` restores byte-identical to `src` (as it is now).
fn assert_restores(repo: &Repository, d: &Path, archive: &str, src: &Path, files: &[&str]) {
    let dest = d.join(format!("restore-{archive}-{}", rand::random::<u32>()));
    let r = extract(repo, archive, &ExtractOptions { dest: dest.clone(), ..Default::default() }).unwrap();
    assert!(r.errors.is_empty() && r.warnings.is_empty(), "{:?} {:?}", r.errors, r.warnings);
    for f in files {
        let got = walkdir(&dest).into_iter().find(|p| p.file_name() == Some(OsStr::new(f))).unwrap();
        assert_eq!(fs::read(got).unwrap(), fs::read(src.join(f)).unwrap(), "{archive}: {f}");
    }
}

fn index_warning_named(r: &commands::CheckReport, how: IndexDamage, name: &str) -> bool {
    match how {
        // a lost file cannot be named: the packs it named are
        IndexDamage::Deleted => r.warnings.iter().any(|w| w.contains("in no index file") && w.contains("archive a")),
        _ => r.warnings.iter().any(|w| w.contains(&format!("index file {name}"))),
    }
}

/// Issue 14: a truncated, garbage or deleted index file made create, extract, check and check
/// --repair fail. Index files only cache the packs' headers: each command succeeds on such a
/// repository, restores are byte-identical, check reports the damage as a warning (no data is
/// damaged), check --repair rewrites the index from the packs (after it, check is clean), and
/// create writes a fresh index so that the next check is clean too.
#[test]
fn a_damaged_or_lost_index_file_stops_no_command() {
    for how in [IndexDamage::Truncated, IndexDamage::Garbage, IndexDamage::Deleted] {
        // extract
        let d = tempfile::tempdir().unwrap();
        let (repo, src, _) = repo_with_damaged_index(d.path(), how);
        assert_restores(&repo, d.path(), "a", &src, &["big", "small"]);
        assert_restores(&repo, d.path(), "b", &src, &["big", "small", "later"]);

        // check: no damage, a warning naming the index file
        let d = tempfile::tempdir().unwrap();
        let (repo, _, name) = repo_with_damaged_index(d.path(), how);
        for verify_data in [false, true] {
            let r = commands::check(&repo, CheckOptions { verify_data, ..Default::default() }).unwrap();
            assert!(r.ok(), "{how:?}: {:?}", r.errors);
            assert!(!r.clean() && index_warning_named(&r, how, &name), "{how:?}: {:?}", r.warnings);
            assert!(r.damaged_files.is_empty() && r.damaged_chunks.is_empty(), "{how:?}");
        }

        // check --repair: the index is rewritten from the packs; check is clean afterwards
        let d = tempfile::tempdir().unwrap();
        let (repo, src, name) = repo_with_damaged_index(d.path(), how);
        let r = commands::check(&repo, CheckOptions { repair: true, ..Default::default() }).unwrap();
        assert!(r.repaired && r.clean(), "{how:?}: {:?} {:?}", r.errors, r.warnings);
        assert!(r.repaired_notes.iter().all(|n| !n.contains("zeros")), "{how:?}: {:?}", r.repaired_notes);
        let b = LocalBackend::new(d.path().join("repo"));
        let files = b.list(FileType::Index).unwrap();
        assert!(files.len() == 1 && files[0] != name, "{how:?}: {files:?}");
        let r = commands::check(&repo, CheckOptions { verify_data: true, ..Default::default() }).unwrap();
        assert!(r.clean(), "{how:?}: {:?} {:?}", r.errors, r.warnings);
        assert_restores(&repo, d.path(), "a", &src, &["big", "small"]);

        // create: succeeds, deduplicates against the packs the damaged file named, and writes
        // an index that names them
        let d = tempfile::tempdir().unwrap();
        let (repo, src, _) = repo_with_damaged_index(d.path(), how);
        let c = backup(&repo, "c", vec![src.clone()], Some(&d.path().join("cache")));
        assert!(c.archive.stats.deduplicated_size < 20_000, "{how:?}: stored again: {:?}", c.archive.stats);
        let r = commands::check(&repo, CheckOptions { verify_data: true, ..Default::default() }).unwrap();
        assert!(r.clean(), "{how:?}: {:?} {:?}", r.errors, r.warnings);
        for a in ["a", "c"] {
            assert_restores(&repo, d.path(), a, &src, &["big", "small", "later"][..if a == "a" { 2 } else { 3 }]);
        }
    }
}

/// Issue 14, next to the index: a damaged or lost manifest stopped everything with no way back.
/// Commands name it and say what to do; check reports it (exit 1, not "could not run") with
/// the archives found from their objects; check --repair rebuilds it from them.
#[test]
fn a_damaged_manifest_is_named_and_rebuilt_from_the_archive_objects() {
    for lost in [false, true] {
        let d = tempfile::tempdir().unwrap();
        let repo = init(d.path(), Mode::Repokey);
        let src = d.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), random_bytes(100_000, 31)).unwrap();
        backup(&repo, "one", vec![src.clone()], None);
        backup(&repo, "two", vec![src.clone()], None);
        let b = LocalBackend::new(d.path().join("repo"));
        let m = b.path(FileType::Manifest, "manifest");
        if lost {
            fs::remove_file(&m).unwrap();
        } else {
            let len = fs::metadata(&m).unwrap().len();
            fs::File::options().write(true).open(&m).unwrap().set_len(len - 5).unwrap();
        }
        let e = commands::list_archives(&repo).unwrap_err();
        assert!(e.to_string().contains("manifest") && e.to_string().contains("check --repair"), "{e}");
        let r = commands::check(&repo, CheckOptions::default()).unwrap();
        assert!(r.errors.iter().any(|e| e.contains("manifest") && e.contains("2 archives found")), "{:?}", r.errors);
        let r = commands::check(&repo, CheckOptions { repair: true, ..Default::default() }).unwrap();
        assert!(r.repaired && r.clean(), "{:?} {:?}", r.errors, r.warnings);
        let names: Vec<String> = commands::list_archives(&repo).unwrap().into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["one", "two"]);
        assert_restores(&repo, d.path(), "two", &src, &["f"]);
        let r = commands::check(&repo, CheckOptions { verify_data: true, ..Default::default() }).unwrap();
        assert!(r.clean(), "{:?} {:?}", r.errors, r.warnings);
    }
}

/// Issue 14: after check --repair replaced a lost chunk with zeros, extract wrote the file with
/// no word and list said it was healthy. As borg: the file is marked (not healthy), extract
/// restores it with a warning naming it, and once the chunk is stored again (the next backup of
/// the same file) check --repair heals it: healthy again, restored byte-identical, no warning.
#[test]
fn a_file_with_zero_filled_chunks_is_marked_warned_about_and_healed() {
    let d = tempfile::tempdir().unwrap();
    let repo = init(d.path(), Mode::Repokey);
    let src = d.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let victim = random_bytes(900_000, 41);
    fs::write(src.join("victim"), &victim).unwrap();
    fs::write(src.join("other"), b"not damaged\n").unwrap();
    let cache = d.path().join("cache");
    backup(&repo, "a", vec![src.clone()], Some(&cache));
    // lose the pack of the victim's second chunk, then let a repair zero-fill it
    let idx = repo.load_index().unwrap();
    let items = archive_items(&repo, &idx, "a").unwrap();
    let v = items.iter().find(|i| i.path.ends_with(b"/victim")).unwrap();
    // a chunk of the victim in a pack that holds none of the item stream and not `other`
    let (_, meta) = commands::archive_info(&repo, "a").unwrap();
    let o = items.iter().find(|i| i.path.ends_with(b"/other")).unwrap();
    let mut spared: Vec<dedupstore::Id> = meta.items.clone();
    spared.extend(o.chunks.iter().filter_map(|c| match c {
        Extent::Data { id, .. } => Some(*id),
        Extent::Hole(_) => None,
    }));
    let (lost, len) = v
        .chunks
        .iter()
        .find_map(|c| match *c {
            Extent::Data { id, len } if spared.iter().all(|i| idx.chunks[i].pack != idx.chunks[&id].pack) => {
                Some((id, len))
            }
            _ => None,
        })
        .expect("a victim chunk outside the item stream's packs");
    let pack = idx.chunks[&lost].pack;
    let b = LocalBackend::new(d.path().join("repo"));
    fs::remove_file(b.path(FileType::Pack, &pack.to_hex())).unwrap();
    let r = commands::check(&repo, CheckOptions { repair: true, ..Default::default() }).unwrap();
    assert!(r.repaired, "{:?}", r.errors);
    let idx = repo.load_index().unwrap();
    let (meta, items) = dedupstore::extract::archive_meta_items(&repo, &idx, "a").unwrap();
    let vpath = items.iter().find(|i| i.path.ends_with(b"/victim")).unwrap().path.clone();
    let opath = items.iter().find(|i| i.path.ends_with(b"/other")).unwrap().path.clone();
    assert!(!meta.is_healthy(&vpath) && meta.is_healthy(&opath));
    let damaged: Vec<_> = meta.damaged_items().into_iter().map(|(p, n)| (p.to_vec(), n)).collect();
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].0, vpath);
    // extract: written (with zeros), one warning naming the file; the rest intact
    let dest = d.path().join("out1");
    let x = extract(&repo, "a", &ExtractOptions { dest: dest.clone(), ..Default::default() }).unwrap();
    assert!(x.errors.is_empty(), "{:?}", x.errors);
    assert_eq!(x.warnings.len(), 1, "{:?}", x.warnings);
    assert!(x.warnings[0].contains(&String::from_utf8_lossy(&vpath).into_owned()), "{:?}", x.warnings);
    let got = walkdir(&dest).into_iter().find(|p| p.ends_with("victim")).unwrap();
    let got = fs::read(got).unwrap();
    assert_eq!(got.len(), victim.len());
    assert_ne!(got, victim);
    assert!(got.windows(len as usize).any(|w| w.iter().all(|&b| b == 0)), "the lost chunk reads as zeros");
    // a dry run warns too
    let x = extract(&repo, "a", &ExtractOptions { dest: d.path().join("dry"), dry_run: true, ..Default::default() })
        .unwrap();
    assert_eq!(x.warnings.len(), 1, "{:?}", x.warnings);

    // the chunk turns up again: the next backup of the same file stores it (the files cache
    // does not vouch for a file whose chunk is gone)
    backup(&repo, "b", vec![src.clone()], Some(&cache));
    assert!(repo.load_index().unwrap().contains(&lost));
    let r = commands::check(&repo, CheckOptions { repair: true, ..Default::default() }).unwrap();
    assert!(r.repaired && r.clean(), "{:?} {:?}", r.errors, r.warnings);
    assert!(r.repaired_notes.iter().any(|n| n.contains("victim") && n.contains("healed")), "{:?}", r.repaired_notes);
    let idx = repo.load_index().unwrap();
    let (meta, _) = dedupstore::extract::archive_meta_items(&repo, &idx, "a").unwrap();
    assert!(meta.is_healthy(&vpath) && meta.broken.is_empty());
    let r = commands::check(&repo, CheckOptions { verify_data: true, ..Default::default() }).unwrap();
    assert!(r.clean() && r.zero_filled.is_empty(), "{:?} {:?} {:?}", r.errors, r.warnings, r.zero_filled);
    assert_restores(&repo, d.path(), "a", &src, &["victim", "other"]);
}
