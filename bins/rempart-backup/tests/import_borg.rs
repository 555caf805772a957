//! Issue 17, "Importing borg repositories": `import-borg` against repositories real borg 1.2
//! writes in this test. For every archive, `borg extract` and `rempart-backup extract` of the
//! imported archive must give the same tree: `diff -r`, then modes, mtimes, owners, hard-link
//! groups, xattrs (`getfattr`) compared. Re-imports skip; errors write nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");
const BORG_PASS: &str = "borg secret";
const REMPART_PASS: &str = "rempart secret";

struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        Lab { dir: tempfile::tempdir().unwrap() }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn env(&self, c: &mut Command) {
        for n in ["PASSPHRASE", "PASSCOMMAND", "REPO", "KEYS_DIR", "CACHE_DIR", "BASE_DIR", "KEY_FILE", "CONFIG_DIR"] {
            c.env_remove(format!("REMPART_{n}")).env_remove(format!("BORG_{n}"));
        }
        c.env("BORG_PASSPHRASE", BORG_PASS)
            .env("REMPART_PASSPHRASE", REMPART_PASS)
            .env("BORG_BASE_DIR", self.p("home"))
            .env("BORG_KEYS_DIR", self.p("borgkeys"))
            .env("REMPART_KEYS_DIR", self.p("rempartkeys"))
            .env("REMPART_CACHE_DIR", self.p("rempartcache"))
            .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
            .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes");
    }
    fn borg(&self, cwd: &Path, args: &[&str]) -> String {
        let mut c = Command::new("borg");
        c.current_dir(cwd).args(args);
        self.env(&mut c);
        ok(c)
    }
    fn rempart(&self, cwd: &Path, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.current_dir(cwd).args(args);
        self.env(&mut c);
        c.output().expect("spawn rempart-backup")
    }
}

fn ok(mut c: Command) -> String {
    let dbg = format!("{c:?}");
    let out = c.output().expect("spawn");
    assert!(
        out.status.success(),
        "{dbg}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn okr(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small tree with everything the import must carry: hard links, a sparse file, xattrs,
/// symlinks, odd modes, a foreign owner, a fifo, a non-UTF-8 name.
fn make_tree(root: &Path, round: u32) {
    use std::os::unix::ffi::OsStrExt;
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    let big: Vec<u8> = (0..400_000u32).flat_map(|i| (i.wrapping_mul(2654435761) ^ round).to_le_bytes()).collect();
    std::fs::write(root.join("dir/big.bin"), &big).unwrap();
    std::fs::write(root.join("small.txt"), format!("round {round}\n")).unwrap();
    std::fs::write(root.join("dir/sub/empty"), b"").unwrap();
    std::fs::write(root.join("linked"), b"hard linked content\n").unwrap();
    let _ = std::fs::remove_file(root.join("dir/linked2"));
    std::fs::hard_link(root.join("linked"), root.join("dir/linked2")).unwrap();
    let _ = std::fs::remove_file(root.join("symlink"));
    std::os::unix::fs::symlink("dir/big.bin", root.join("symlink")).unwrap();
    let _ = std::fs::remove_file(root.join("dangling"));
    std::os::unix::fs::symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    // sparse: 3 MiB hole, some data, 1 MiB hole at the end
    let f = std::fs::File::create(root.join("sparse")).unwrap();
    f.set_len(4 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"data in the middle", 3 << 20).unwrap();
    drop(f);
    std::fs::write(root.join("odd"), b"setuid\n").unwrap();
    std::fs::set_permissions(root.join("odd"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    std::fs::write(root.join("private"), b"secret\n").unwrap();
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(root.join("dir/sub"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::chown(root.join("small.txt"), Some(1234), Some(5678)).unwrap();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9-latin1");
    std::fs::write(root.join(name), b"not utf-8 name\n").unwrap();
    let fifo = root.join("fifo");
    if !fifo.exists() {
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    }
    let out = Command::new("setfattr")
        .args(["-n", "user.origin", "-v", "borg"])
        .arg(root.join("small.txt"))
        .output()
        .unwrap();
    assert!(out.status.success(), "setfattr: {}", String::from_utf8_lossy(&out.stderr));
    let out = Command::new("setfattr").args(["-n", "user.empty"]).arg(root.join("dir")).output().unwrap();
    assert!(out.status.success());
}

/// Path → (mode, mtime ns, uid, gid, size, symlink target) of every entry, and the hard-link
/// groups (paths sharing an inode).
type Meta = (BTreeMap<Vec<u8>, (u32, i64, u32, u32, u64, Option<PathBuf>)>, Vec<Vec<Vec<u8>>>);

fn metadata(root: &Path) -> Meta {
    use std::os::unix::ffi::OsStrExt;
    let mut m = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let md = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().as_os_str().as_bytes().to_vec();
            let target = md.file_type().is_symlink().then(|| std::fs::read_link(&path).unwrap());
            let size = if md.is_file() { md.len() } else { 0 };
            // a symlink's own mtime is restored by both; compare it as well
            m.insert(
                rel.clone(),
                (md.mode(), md.mtime() * 1_000_000_000 + md.mtime_nsec(), md.uid(), md.gid(), size, target),
            );
            if md.is_file() && md.nlink() > 1 {
                inodes.entry(md.ino()).or_default().push(rel);
            }
            if md.is_dir() {
                stack.push(path);
            }
        }
    }
    let mut groups: Vec<Vec<Vec<u8>>> = inodes
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    groups.sort();
    (m, groups)
}

fn xattrs(root: &Path) -> String {
    let mut c = Command::new("getfattr");
    c.current_dir(root).args(["-R", "-d", "-m", "-", "-h", "."]);
    ok(c)
}

/// Extracts `archive` with borg and the imported one with rempart-backup and compares.
fn compare(lab: &Lab, borg_repo: &Path, rempart_repo: &Path, archive: &str) {
    let d1 = lab.p(&format!("x-borg-{archive}"));
    let d2 = lab.p(&format!("x-rempart-{archive}"));
    std::fs::create_dir_all(&d1).unwrap();
    std::fs::create_dir_all(&d2).unwrap();
    lab.borg(&d1, &["extract", &format!("{}::{archive}", borg_repo.display())]);
    okr(lab.rempart(&d2, &["extract", &format!("{}::{archive}", rempart_repo.display())]), "rempart extract");
    let out = Command::new("diff").args(["-r", "--no-dereference"]).arg(&d1).arg(&d2).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // diff reports two fifos as different whatever they are (their type and mode are compared
    // below); anything else is a difference
    let real: Vec<&str> = text.lines().filter(|l| !(l.starts_with("File ") && l.ends_with(" is a fifo"))).collect();
    assert!(
        real.is_empty() && matches!(out.status.code(), Some(0 | 1)),
        "{archive}: diff -r: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (m1, g1) = metadata(&d1);
    let (m2, g2) = metadata(&d2);
    assert_eq!(m1.len(), m2.len(), "{archive}: entries");
    for (k, v) in &m1 {
        assert_eq!(Some(v), m2.get(k), "{archive}: {}", String::from_utf8_lossy(k));
    }
    assert_eq!(g1, g2, "{archive}: hard-link groups");
    assert!(!g1.is_empty(), "the tree has hard links");
    assert_eq!(xattrs(&d1), xattrs(&d2), "{archive}: xattrs");
    assert!(xattrs(&d2).contains("user.origin=\"borg\""));
    // the zero runs came back as holes
    let sparse = std::fs::metadata(d2.join("sparse")).unwrap();
    assert!(sparse.blocks() * 512 < sparse.len() / 2, "sparse file extracted with {} blocks", sparse.blocks());
    std::fs::remove_dir_all(&d1).unwrap();
    std::fs::remove_dir_all(&d2).unwrap();
}

/// Two archives (the tree changes between them) in a borg repository of `mode` with
/// `compression`, imported and compared.
fn roundtrip(mode: &str, compression: &str) {
    let lab = Lab::new();
    let src = lab.p("src");
    let borg_repo = lab.p("borg");
    let rem = lab.p("rempart");
    lab.borg(lab.dir.path(), &["init", "-e", mode, borg_repo.to_str().unwrap()]);
    for (round, name) in [(1, "first"), (2, "second")] {
        make_tree(&src, round);
        let target = format!("{}::{name}", borg_repo.display());
        lab.borg(&src, &["create", "-C", compression, "--comment", &format!("round {round}"), &target, "."]);
    }
    okr(lab.rempart(lab.dir.path(), &["init", "-e", "repokey", rem.to_str().unwrap()]), "init");
    let out = okr(
        lab.rempart(lab.dir.path(), &["import-borg", borg_repo.to_str().unwrap(), rem.to_str().unwrap()]),
        "import",
    );
    assert!(out.contains("Imported archive first") && out.contains("Imported archive second"), "{out}");
    for a in ["first", "second"] {
        compare(&lab, &borg_repo, &rem, a);
    }
    // the comment and borg's id travel with the archive
    let info = okr(lab.rempart(lab.dir.path(), &["info", &format!("{}::second", rem.display())]), "info");
    assert!(info.contains("comment=round 2") && info.contains("borg-archive-id="), "{info}");
}

#[test]
fn repokey_lz4() {
    roundtrip("repokey", "lz4");
}

#[test]
fn repokey_blake2_zstd() {
    roundtrip("repokey-blake2", "zstd,3");
}

#[test]
fn keyfile_zlib() {
    roundtrip("keyfile", "zlib,6");
}

#[test]
fn keyfile_blake2_lzma() {
    roundtrip("keyfile-blake2", "lzma,1");
}

#[test]
fn authenticated_none() {
    roundtrip("authenticated", "none");
}

#[test]
fn unencrypted_auto() {
    roundtrip("none", "auto,zlib");
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut m = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
                m.insert(path, vec![]);
            } else {
                m.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    m
}

/// A pruned and compacted repository imports (only what is left), a re-import skips, a new
/// borg archive is imported alone, `--archive` selects, `--dry-run` writes nothing.
#[test]
fn pruned_compacted_incremental() {
    let lab = Lab::new();
    let src = lab.p("src");
    let borg_repo = lab.p("borg");
    let rem = lab.p("rempart");
    let b = borg_repo.to_str().unwrap();
    let r = rem.to_str().unwrap();
    lab.borg(lab.dir.path(), &["init", "-e", "repokey", b]);
    for (round, name) in [(1, "host-1"), (2, "host-2"), (3, "host-3")] {
        make_tree(&src, round);
        // Distinct times: archives made within one second tie, and prune's pick among them varies.
        let at = format!("2026-01-0{round}T12:00:00");
        lab.borg(&src, &["create", "--timestamp", &at, &format!("{b}::{name}"), "."]);
    }
    lab.borg(lab.dir.path(), &["prune", "--keep-last", "2", b]);
    lab.borg(lab.dir.path(), &["compact", b]);
    okr(lab.rempart(lab.dir.path(), &["init", "-e", "repokey", r]), "init");
    let before = snapshot(&rem);
    let out = okr(lab.rempart(lab.dir.path(), &["import-borg", "--dry-run", b, r]), "dry run");
    assert!(out.contains("Would import archive host-2") && out.contains("Would import archive host-3"), "{out}");
    let after = snapshot(&rem);
    let changed: Vec<_> = before.keys().chain(after.keys()).filter(|k| before.get(*k) != after.get(*k)).collect();
    assert!(changed.is_empty(), "--dry-run wrote to the rempart repository: {changed:?}");
    let out = okr(lab.rempart(lab.dir.path(), &["import-borg", "-a", "host-[2]", b, r]), "import host-2");
    assert!(out.contains("Imported archive host-2") && !out.contains("host-3"), "{out}");
    let out = okr(lab.rempart(lab.dir.path(), &["import-borg", b, r]), "import the rest");
    assert!(
        out.contains("Skipping archive host-2: already imported") && out.contains("Imported archive host-3"),
        "{out}"
    );
    let list = okr(lab.rempart(lab.dir.path(), &["list", "--short", r]), "list");
    assert_eq!(list.lines().collect::<Vec<_>>(), ["host-2", "host-3"]);
    for a in ["host-2", "host-3"] {
        compare(&lab, &borg_repo, &rem, a);
    }
    // nothing new: every archive skipped, the repository untouched
    let before = snapshot(&rem);
    let out = okr(lab.rempart(lab.dir.path(), &["import-borg", "--json", b, r]), "re-import");
    assert_eq!(out.matches("already imported").count(), 2, "{out}");
    assert_eq!(before, snapshot(&rem), "a re-import changed the rempart repository");
    // a new borg archive: only it is imported
    make_tree(&src, 4);
    lab.borg(&src, &["create", &format!("{b}::host-4"), "."]);
    let out = okr(lab.rempart(lab.dir.path(), &["import-borg", b, r]), "import host-4");
    assert!(out.contains("Imported archive host-4") && out.matches("Skipping").count() == 2, "{out}");
    compare(&lab, &borg_repo, &rem, "host-4");
}

fn fails_cleanly(lab: &Lab, args: &[&str], rem: &Path, want: &str) {
    let before = snapshot(rem);
    let out = lab.rempart(lab.dir.path(), args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: wanted {want:?} in: {err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("Error")).count(), 1, "one error line: {err}");
    assert_eq!(before, snapshot(rem), "{args:?} changed the rempart repository");
}

/// Not borg, a wrong passphrase, a damaged segment: one clear error, exit 2, nothing written.
#[test]
fn errors_write_nothing() {
    let lab = Lab::new();
    let src = lab.p("src");
    let borg_repo = lab.p("borg");
    let rem = lab.p("rempart");
    let b = borg_repo.to_str().unwrap();
    let r = rem.to_str().unwrap();
    lab.borg(lab.dir.path(), &["init", "-e", "repokey", b]);
    make_tree(&src, 1);
    lab.borg(&src, &["create", &format!("{b}::a"), "."]);
    okr(lab.rempart(lab.dir.path(), &["init", "-e", "repokey", r]), "init");
    std::fs::create_dir_all(lab.p("plain")).unwrap();
    std::fs::write(lab.p("plain/config"), b"not an ini file\n").unwrap();
    fails_cleanly(&lab, &["import-borg", lab.p("plain").to_str().unwrap(), r], &rem, "not a borg repository");
    fails_cleanly(&lab, &["import-borg", r, r], &rem, "not a borg repository");
    let mut c = Command::new(BIN);
    c.current_dir(lab.dir.path()).args(["import-borg", b, r]);
    lab.env(&mut c);
    c.env("BORG_PASSPHRASE", "not the passphrase");
    let before = snapshot(&rem);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(before, snapshot(&rem));
    // flip bytes in the middle of the largest segment
    let mut segs: Vec<PathBuf> =
        std::fs::read_dir(borg_repo.join("data/0")).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    let seg = segs.last().unwrap();
    let mut data = std::fs::read(seg).unwrap();
    let mid = data.len() / 2;
    for x in &mut data[mid..mid + 4] {
        *x ^= 0x5a;
    }
    std::fs::write(seg, &data).unwrap();
    fails_cleanly(&lab, &["import-borg", b, r], &rem, "damaged borg repository");
}
