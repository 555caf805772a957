//! The backup step of `rempart-lab drill`: back up a directory, delete it, restore it, verify it.

use crate::backend::LocalBackend;
use crate::create::{create, CreateOptions};
use crate::crypto::Mode;
use crate::error::{Error, Result};
use crate::extract::{extract, ExtractOptions};
use crate::repo::{InitOptions, OpenOptions, Repository};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Measured figures of one drill step.
#[derive(Debug, Clone)]
pub struct DrillReport {
    /// Time of the backup (`create`).
    pub backup: Duration,
    /// Time of the restore (`extract`).
    pub restore: Duration,
    /// Items verified.
    pub items: usize,
    /// Bytes of file content restored.
    pub bytes: u64,
}

type Fingerprint = BTreeMap<PathBuf, (u32, u32, u32, i64, u64, Option<[u8; 32]>, Option<PathBuf>)>;

/// Content and metadata of every item below `root` (mode, uid, gid, mtime, size, blake3, link).
pub fn fingerprint(root: &Path) -> Result<Fingerprint> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).map_err(|e| Error::io(&p, e))?;
        let ft = md.file_type();
        let hash = if ft.is_file() {
            let d = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            Some(*blake3::hash(&d).as_bytes())
        } else {
            None
        };
        let link = if ft.is_symlink() { Some(std::fs::read_link(&p).map_err(|e| Error::io(&p, e))?) } else { None };
        let mtime = if ft.is_dir() { 0 } else { md.mtime() };
        out.insert(
            p.clone(),
            (md.mode(), md.uid(), md.gid(), mtime, if ft.is_file() { md.size() } else { 0 }, hash, link),
        );
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).map_err(|e| Error::io(&p, e))? {
                stack.push(e.map_err(|e| Error::io(&p, e))?.path());
            }
        }
    }
    Ok(out)
}

/// Backs up `source` (an absolute path) into the repository at `repo_dir` (created with repokey
/// encryption if absent), deletes `source`, restores it in place and verifies every item's content
/// and metadata against what was there before.
pub fn drill_step(source: &Path, repo_dir: &Path, passphrase: &str) -> Result<DrillReport> {
    if !source.is_absolute() {
        return Err(Error::InvalidArgument("drill source must be an absolute path".into()));
    }
    let backend = Arc::new(LocalBackend::new(repo_dir));
    let repo = if repo_dir.join("config").exists() {
        Repository::open(backend, &OpenOptions { passphrase: Some(passphrase.into()), keys_dir: None })?
    } else {
        Repository::init(backend, &InitOptions::new(Mode::Repokey, Some(passphrase.into())))?
    };
    let before = fingerprint(source)?;
    let name = format!("drill-{}", chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.f"));
    let t = Instant::now();
    let res = create(&repo, &CreateOptions::new(name.clone(), vec![source.to_path_buf()]), &mut |_| {})?;
    let backup = t.elapsed();
    std::fs::remove_dir_all(source).map_err(|e| Error::io(source, e))?;
    let t = Instant::now();
    let x = extract(&repo, &name, &ExtractOptions { dest: PathBuf::from("/"), ..Default::default() })?;
    let restore = t.elapsed();
    if !x.errors.is_empty() {
        return Err(Error::integrity("restore", x.errors.join("; ")));
    }
    let after = fingerprint(source)?;
    if before != after {
        let diff: Vec<_> = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(v))
            .map(|(k, _)| k.display().to_string())
            .take(5)
            .collect();
        return Err(Error::integrity("restore", format!("restored tree differs: {diff:?}")));
    }
    Ok(DrillReport { backup, restore, items: after.len(), bytes: res.archive.stats.original_size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drill_step_restores_an_identical_tree() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("data");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/f"), b"content".repeat(1000)).unwrap();
        std::os::unix::fs::symlink("sub/f", src.join("l")).unwrap();
        let r = drill_step(&src, &d.path().join("repo"), "pw").unwrap();
        assert_eq!(r.items, 4);
        assert_eq!(r.bytes, 7000);
        assert_eq!(std::fs::read(src.join("sub/f")).unwrap(), b"content".repeat(1000));
        // a second drill into the same repository works too
        drill_step(&src, &d.path().join("repo"), "pw").unwrap();
    }
}
