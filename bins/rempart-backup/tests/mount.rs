//! `rempart-backup mount` / `umount` through the kernel's FUSE, checked with real tools against
//! the source tree: `cmp`, `tar --compare` of a `tar c` made through the mount, `rsync -a
//! --dry-run --itemize-changes` (nothing to transfer), `getfattr`, `stat` fields, a read in the
//! middle of a large file; the repository view and the one-archive view, local and over ssh.

use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

mod sshd;
use sshd::{output, Sshd, BIN};

fn ours(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("REMPART_PASSPHRASE", "test-pass")
        .env("REMPART_KEYS_DIR", home.join("keys"))
        .env("REMPART_CACHE_DIR", home.join("cache"))
        .env_remove("REMPART_PASSCOMMAND")
        .env_remove("REMPART_REPO")
        .current_dir(home);
    c
}

fn ok(mut c: Command) -> String {
    let dbg = format!("{c:?}");
    c.stdin(std::process::Stdio::null());
    let out = output(c);
    assert!(out.status.success(), "{dbg}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run(prog: &str, args: &[&str]) -> String {
    let mut c = Command::new(prog);
    c.args(args);
    ok(c)
}

/// Whether `dir` is a mount point now.
fn mounted(dir: &Path) -> bool {
    let want = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(want.to_str().unwrap()))
}

/// Unmounts on drop, also when an assertion failed (lazily, so a busy mount goes too).
struct Guard(PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let _ = Command::new("fusermount3").arg("-u").arg("-z").arg(&self.0).status();
        }
    }
}

/// `rempart-backup mount TARGET MNT` (it returns once the mount is up, the server in the
/// background).
fn mount(home: &Path, extra: &[&str], target: &str, mnt: &Path) -> Guard {
    std::fs::create_dir_all(mnt).unwrap();
    let mut c = ours(home);
    c.arg("mount").args(extra).arg(target).arg(mnt);
    mount_cmd(home, c);
    assert!(mounted(mnt), "{} is not mounted after `mount` returned", mnt.display());
    Guard(mnt.to_path_buf())
}

/// Runs a `mount` that goes to the background: its stderr to a file, not a pipe, since the
/// server's ssh client keeps the stderr it was started with (as with borg on a terminal), and
/// a pipe would never reach its end.
fn mount_cmd(home: &Path, mut c: Command) {
    let log = home.join("mount.stderr");
    c.stdin(std::process::Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
    let st = c.status().unwrap();
    assert!(st.success(), "{c:?}: {st}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
}

fn umount(home: &Path, g: Guard) {
    let mut c = ours(home);
    c.arg("umount").arg(&g.0);
    ok(c);
    assert!(!mounted(&g.0), "{} still mounted after umount", g.0.display());
}

fn set_times(p: &Path, sec: i64, nsec: i64) {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let t = TimeSpec::new(sec, nsec);
    let at = TimeSpec::new(sec - 1000, 7);
    utimensat(None, p, &at, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

/// A tree with what a mount must show faithfully.
fn make_tree(src: &Path) {
    let mut r = rand::rngs::StdRng::seed_from_u64(17);
    std::fs::create_dir_all(src.join("d/sub")).unwrap();
    std::fs::create_dir_all(src.join("sticky")).unwrap();
    let mut big = vec![0u8; 6 << 20];
    r.fill(&mut big[..]);
    std::fs::write(src.join("big"), &big).unwrap();
    std::fs::write(src.join("d/small"), b"small file\n").unwrap();
    std::fs::write(src.join("empty"), b"").unwrap();
    // sparse: 8 MiB with 64 KiB of data at 3 MiB
    let f = std::fs::File::create(src.join("sparse")).unwrap();
    f.set_len(8 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &big[..65536], 3 << 20).unwrap();
    drop(f);
    std::os::unix::fs::symlink("big", src.join("link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", src.join("d/dangling")).unwrap();
    std::fs::write(src.join("d/h1"), b"hard linked\n").unwrap();
    std::fs::hard_link(src.join("d/h1"), src.join("d/sub/h2")).unwrap();
    std::fs::hard_link(src.join("d/h1"), src.join("h3")).unwrap();
    nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    run("setfattr", &["-n", "user.color", "-v", "blue", src.join("d/small").to_str().unwrap()]);
    run("setfattr", &["-n", "user.bin", "-v", "0x00ff10", src.join("d/small").to_str().unwrap()]);
    run("setfattr", &["-n", "user.dir", "-v", "yes", src.join("d").to_str().unwrap()]);
    use std::os::unix::fs::{chown, lchown, PermissionsExt};
    let mode = |p: &str, m: u32| std::fs::set_permissions(src.join(p), std::fs::Permissions::from_mode(m)).unwrap();
    chown(src.join("d/small"), Some(1234), Some(5678)).unwrap();
    // a name that exists here (nobody / nogroup)
    chown(src.join("empty"), Some(65534), Some(65534)).unwrap();
    lchown(src.join("link"), Some(4321), Some(8765)).unwrap();
    mode("d/small", 0o4751);
    mode("empty", 0o600);
    mode("sticky", 0o1777);
    mode("d/h1", 0o640);
    let mut n = 0;
    for p in ["big", "d/small", "empty", "sparse", "link", "d/dangling", "d/h1", "fifo", "d/sub", "sticky", "d", "."] {
        n += 1;
        set_times(&src.join(p), 1_600_000_000 + n * 3600, 123_456_789 + n);
    }
}

/// Every regular file of `src` is byte-identical below `mnt`, found with `cmp`.
fn cmp_all(src: &Path, mnt: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(src.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() {
                run("cmp", &[src.join(&r).to_str().unwrap(), mnt.join(&r).to_str().unwrap()]);
                n += 1;
            }
        }
    }
    n
}

const STAT_PATHS: [&str; 11] =
    ["big", "d/small", "empty", "sparse", "link", "d/dangling", "d/h1", "fifo", "d", "d/sub", "sticky"];

/// The source's atimes now (what a backup made now records).
fn atimes(src: &Path) -> HashMap<&'static str, (i64, i64)> {
    STAT_PATHS
        .iter()
        .map(|&p| {
            let m = std::fs::symlink_metadata(src.join(p)).unwrap();
            (p, (m.atime(), m.atime_nsec()))
        })
        .collect()
}

/// The whole comparison of the archived tree `src` with its view at `view`.
fn compare(home: &Path, src: &Path, view: &Path, atimes: &HashMap<&str, (i64, i64)>) {
    assert_eq!(cmp_all(src, view), 7, "big, small, empty, sparse, h1, h2, h3");
    // tar c through the mount, compared with the source by tar itself (content, mode, owner,
    // mtime, size, link targets)
    let tarf = home.join("through-mount.tar");
    run("tar", &["--xattrs", "-C", view.to_str().unwrap(), "-cf", tarf.to_str().unwrap(), "."]);
    let diff = run("tar", &["--xattrs", "-C", src.to_str().unwrap(), "--compare", "-f", tarf.to_str().unwrap()]);
    assert_eq!(diff, "", "tar --compare found differences");
    let listing = run("tar", &["-tvf", tarf.to_str().unwrap()]);
    assert!(listing.contains("link to"), "hard links are hard links in the tar made through the mount:\n{listing}");
    // rsync: nothing to transfer (contents, times, modes, owners, links, hard links, xattrs)
    let items = run(
        "rsync",
        &[
            "-a",
            "-H",
            "-X",
            "--numeric-ids",
            "--dry-run",
            "--itemize-changes",
            &format!("{}/", view.display()),
            &format!("{}/", src.display()),
        ],
    );
    assert_eq!(items, "", "rsync would transfer:\n{items}");
    // stat: owners, modes, times (ns), link counts, sizes
    for p in STAT_PATHS {
        let (a, b) =
            (std::fs::symlink_metadata(src.join(p)).unwrap(), std::fs::symlink_metadata(view.join(p)).unwrap());
        assert_eq!(
            (a.mode(), a.uid(), a.gid(), a.mtime(), a.mtime_nsec(), a.nlink()),
            (b.mode(), b.uid(), b.gid(), b.mtime(), b.mtime_nsec(), b.nlink()),
            "{p}: mode, uid, gid, mtime, nlink"
        );
        // a directory's size is its file system's business
        if !a.is_dir() {
            assert_eq!(a.size(), b.size(), "{p}: size");
        }
        // the atime the source had when the archive was made (it has moved on since: create,
        // cmp, tar and rsync read the source)
        assert_eq!((b.atime(), b.atime_nsec()), atimes[p], "{p}: atime as stored");
    }
    let sp = std::fs::metadata(view.join("sparse")).unwrap();
    assert!(sp.blocks() * 512 < sp.size() / 4, "a sparse file's holes take no blocks: {}", sp.blocks());
    let h = |p: &str| std::fs::metadata(view.join(p)).unwrap().ino();
    assert!(h("d/h1") == h("d/sub/h2") && h("h3") == h("d/h1") && h("big") != h("d/h1"), "hard links: one inode");
    assert_eq!(std::fs::read_link(view.join("d/dangling")).unwrap(), Path::new("/nonexistent/target"));
    // xattrs, through getfattr
    let small = view.join("d/small");
    let color = run("getfattr", &["--only-values", "-n", "user.color", small.to_str().unwrap()]);
    assert_eq!(color, "blue");
    let dump = run("getfattr", &["-d", "-e", "hex", "--absolute-names", small.to_str().unwrap()]);
    assert!(dump.contains("user.bin=0x00ff10") && dump.contains("user.color=0x626c7565"), "{dump}");
    let dir = run("getfattr", &["--only-values", "-n", "user.dir", view.join("d").to_str().unwrap()]);
    assert_eq!(dir, "yes");
    // seek into the middle of the large file
    let want = std::fs::read(src.join("big")).unwrap();
    let mut f = std::fs::File::open(view.join("big")).unwrap();
    let at = 3 * 1024 * 1024 + 12345;
    f.seek(SeekFrom::Start(at as u64)).unwrap();
    let mut got = vec![0u8; 200_000];
    f.read_exact(&mut got).unwrap();
    assert!(got == want[at..at + got.len()], "bytes at {at}");
    let mut tail = Vec::new();
    f.seek(SeekFrom::End(-100)).unwrap();
    f.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, want[want.len() - 100..]);
    // read-only
    let err = std::fs::write(view.join("d/small"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(nix::libc::EROFS), "{err}");
}

#[test]
fn mount_repository_and_archive_compare_with_real_tools() {
    if !rempart_testkit::require_root("FUSE mounts, chown") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    make_tree(&home.join("src"));
    let mut c = ours(home);
    c.args(["init", "-e", "repokey", "repo"]);
    ok(c);
    let mut at = HashMap::new();
    for name in ["one", "two"] {
        at.insert(name, atimes(&home.join("src")));
        let mut c = ours(home);
        c.args(["create", &format!("repo::{name}"), "src"]);
        ok(c);
    }
    let src = home.join("src");
    // REPO: one directory per archive
    let mnt = home.join("mnt");
    let g = mount(home, &[], "repo", &mnt);
    let mut names: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["one", "two"]);
    compare(home, &src, &mnt.join("two/src"), &at["two"]);
    umount(home, g);
    // REPO::ARCHIVE: the archive at the root, with a small cache budget (chunks evicted and
    // fetched again) and numeric ids
    let g = mount(home, &["-o", "cache_mb=1,numeric_ids"], "repo::one", &mnt);
    assert!(mnt.join("src/big").is_file());
    compare(home, &src, &mnt.join("src"), &at["one"]);
    umount(home, g);
    // a mount that fails (no such archive) leaves nothing mounted and says why
    let mut c = ours(home);
    c.arg("mount").arg("repo::nope").arg(&mnt);
    let out = output(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!mounted(&mnt));
    // the mount held only a shared lock, and released it: a writer gets in now
    let mut c = ours(home);
    c.args(["delete", "repo::one"]);
    ok(c);
}

#[test]
fn mount_over_ssh() {
    if !rempart_testkit::require_root("sshd with its own config, FUSE mounts") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let home = d.path();
    let sshd = Sshd::start(&home.join("ssh"));
    let url = sshd.url("repo");
    let src = home.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut r = rand::rngs::StdRng::seed_from_u64(3);
    let mut big = vec![0u8; 3 << 20];
    r.fill(&mut big[..]);
    std::fs::write(src.join("big"), &big).unwrap();
    let ssh = |args: &[&str]| {
        let mut c = ours(home);
        c.env("REMPART_RSH", sshd.rsh()).args(args);
        c
    };
    ok(ssh(&["init", "-e", "repokey", &url]));
    ok(ssh(&["create", &format!("{url}::a"), "src"]));
    let mnt = home.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut c = ssh(&["mount", &format!("{url}::a")]);
    c.arg(&mnt);
    mount_cmd(home, c);
    let g = Guard(mnt.clone());
    assert!(mounted(&mnt), "mounted when `mount` returned");
    run("cmp", &[src.join("big").to_str().unwrap(), mnt.join("src/big").to_str().unwrap()]);
    umount(home, g);
}
