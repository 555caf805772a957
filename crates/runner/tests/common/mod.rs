//! Helpers shared by the runner's tests: a source tree, a repository, a configuration.

#![allow(dead_code, unreachable_pub)]

use dedupstore::backend::LocalBackend;
use dedupstore::crypto::Mode;
use dedupstore::repo::{InitOptions, OpenOptions, Repository};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const PASS: &str = "runner-test-pass";

/// `n` files of `size` pseudo-random bytes each under `root/src`, plus a symlink.
pub fn source(root: &Path, n: usize, size: usize) -> PathBuf {
    let src = root.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..n {
        let data: Vec<u8> =
            (0..size as u32).map(|j| ((j ^ (i as u32 * 7919)).wrapping_mul(2_654_435_761) >> 11) as u8).collect();
        std::fs::write(src.join(format!("sub/f{i:03}.bin")), data).unwrap();
    }
    std::os::unix::fs::symlink("sub/f000.bin", src.join("link")).unwrap();
    src
}

/// A new repokey repository at `root/repo`.
pub fn init_repo(root: &Path) -> PathBuf {
    let path = root.join("repo");
    Repository::init(Arc::new(LocalBackend::new(&path)), &InitOptions::new(Mode::Repokey, Some(PASS.into()))).unwrap();
    path
}

/// Opens the repository (no lock taken).
pub fn open_repo(path: &Path) -> Repository {
    Repository::open(Arc::new(LocalBackend::new(path)), &OpenOptions { passphrase: Some(PASS.into()), keys_dir: None })
        .unwrap()
}

/// A borgmatic file for `src` → `repo` with `storage` lines added (e.g. the passphrase) and
/// `extra` sections.
pub fn config(root: &Path, src: &Path, repo: &Path, storage: &str, extra: &str) -> runner::Loaded {
    let text = format!(
        "location:\n  source_directories: [{}]\n  repositories:\n    - path: {}\n      label: r\n\
         storage:\n  archive_name_format: 'test-{{now:%Y-%m-%dT%H:%M:%S.%f}}'\n{storage}{extra}",
        src.display(),
        repo.display()
    );
    let p = root.join("borgmatic.yaml");
    std::fs::write(&p, text).unwrap();
    runner::load(&p).unwrap_or_else(|e| panic!("{}", e))
}

/// Options for a test run: state and cache in `root`, no prompt, no fallback sources.
pub fn options(root: &Path) -> runner::RunOptions {
    runner::RunOptions {
        state_dir: Some(root.join("state")),
        cache_dir: Some(root.join("cache")),
        tmp_dir: Some(root.to_path_buf()),
        metrics_file: Some(root.join("rempart_backup.prom")),
        ..Default::default()
    }
}
