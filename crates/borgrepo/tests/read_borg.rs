//! Reads repositories that real borg 1.2 wrote: every mode and compression, every item's
//! metadata and content against the source tree.

use borgrepo::{BorgRepository, Error, KeySource, Mode};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

const PASS: &str = "correct horse";

fn borg(repo: &Path, keys: &Path, args: &[&str]) {
    let out = Command::new("borg")
        .args(args)
        .env("BORG_PASSPHRASE", PASS)
        .env("BORG_KEYS_DIR", keys)
        .env("BORG_BASE_DIR", keys.parent().unwrap_or(keys))
        .env("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "yes")
        .env("BORG_REPO", repo)
        .output()
        .expect("run borg");
    assert!(out.status.success(), "borg {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn tree(root: &Path) -> HashMap<Vec<u8>, Vec<u8>> {
    std::fs::create_dir_all(root.join("d/e")).unwrap();
    let mut files = HashMap::new();
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| (i.wrapping_mul(2654435761)).to_le_bytes()).collect();
    for (p, d) in [("a.txt", b"hello borg\n".to_vec()), ("d/big.bin", big), ("d/e/empty", vec![])] {
        std::fs::write(root.join(p), &d).unwrap();
        files.insert(p.as_bytes().to_vec(), d);
    }
    std::os::unix::fs::symlink("../a.txt", root.join("d/link")).unwrap();
    files
}

fn check(mode: &str, compression: &str, want: Mode) {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    let files = tree(&src);
    let repo = t.path().join("repo");
    let keys = t.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    borg(&repo, &keys, &["init", "-e", mode, repo.to_str().unwrap()]);
    let arch = "::a1".to_string();
    let out = Command::new("borg")
        .current_dir(&src)
        .args(["create", "-C", compression, &arch, "."])
        .env("BORG_PASSPHRASE", PASS)
        .env("BORG_KEYS_DIR", &keys)
        .env("BORG_BASE_DIR", t.path())
        .env("BORG_REPO", &repo)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ks = KeySource { passphrase: Some(PASS.into()), keys_dir: Some(keys.clone()), ..KeySource::default() };
    let r = BorgRepository::open(&repo, &ks).unwrap();
    assert_eq!(r.mode(), want);
    let archives = r.archives().unwrap();
    assert_eq!(archives.len(), 1);
    let a = r.archive(&archives[0].id).unwrap();
    assert_eq!(a.name, "a1");
    let mut seen = 0;
    for item in r.items(&a) {
        let item = item.unwrap();
        let md = std::fs::symlink_metadata(src.join(String::from_utf8_lossy(&item.path).as_ref())).unwrap();
        assert_eq!(item.mode, md.mode(), "{:?}", item.path);
        assert_eq!(item.mtime, md.mtime() * 1_000_000_000 + md.mtime_nsec());
        if item.is_symlink() {
            assert_eq!(item.source.as_deref(), Some(&b"../a.txt"[..]));
        }
        if let Some(want) = files.get(&item.path) {
            let mut got = Vec::new();
            for (id, size) in &item.chunks {
                got.extend(r.chunk(id, *size).unwrap());
            }
            assert!(&got == want, "content of {:?}", item.path);
            seen += 1;
        }
    }
    assert_eq!(seen, files.len());
    if want != Mode::None {
        let bad = KeySource { passphrase: Some("wrong".into()), keys_dir: Some(keys), ..KeySource::default() };
        assert!(matches!(BorgRepository::open(&repo, &bad), Err(Error::WrongPassphrase(_))));
    }
}

#[test]
fn repokey_lz4() {
    check("repokey", "lz4", Mode::Repokey);
}
#[test]
fn repokey_blake2_zstd() {
    check("repokey-blake2", "zstd,3", Mode::RepokeyBlake2);
}
#[test]
fn keyfile_zlib() {
    check("keyfile", "zlib,6", Mode::Keyfile);
}
#[test]
fn keyfile_blake2_lzma() {
    check("keyfile-blake2", "lzma,1", Mode::KeyfileBlake2);
}
#[test]
fn authenticated_none() {
    check("authenticated", "none", Mode::Authenticated);
}
#[test]
fn authenticated_blake2_auto() {
    check("authenticated-blake2", "auto,zstd", Mode::AuthenticatedBlake2);
}
#[test]
fn none_obfuscated() {
    check("none", "obfuscate,3,lz4", Mode::None);
}

#[test]
fn not_a_borg_repository() {
    let t = tempfile::tempdir().unwrap();
    assert!(matches!(BorgRepository::open(t.path(), &KeySource::default()), Err(Error::NotBorg { .. })));
}
