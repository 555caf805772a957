//! What the runner remembers between runs, under the state directory (`--state-dir`,
//! `REMPART_STATE_DIR`, else `$XDG_STATE_HOME/rempart`, else `~/.local/state/rempart`):
//!
//! ```text
//! checks/<repository id>/<check name>   time of the last successful check (like borgmatic's
//!                                       ~/.borgmatic/checks), RFC 3339
//! repositories/<hash of location>.json  last success time, sizes, check and restore-test results
//!                                       (restore test: result, end time, duration, files)
//!                                       (what the metrics carry over when a run fails)
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default state directory.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("REMPART_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("rempart"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/rempart"))
}

/// The state directory could not be written (the local disk or its permissions are at fault).
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct StateError {
    /// The file or directory.
    pub path: PathBuf,
    /// The error.
    pub source: std::io::Error,
}

fn write(path: &Path, data: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|source| StateError { path: dir.to_path_buf(), source })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|source| StateError { path: path.to_path_buf(), source })
}

/// Time of the last successful `check` of this kind, if recorded.
pub fn last_check(dir: &Path, repo_id: &str, check: &str) -> Option<DateTime<Utc>> {
    let s = std::fs::read_to_string(dir.join("checks").join(repo_id).join(check)).ok()?;
    DateTime::parse_from_rfc3339(s.trim()).ok().map(|t| t.with_timezone(&Utc))
}

/// Records a successful check.
pub fn record_check(dir: &Path, repo_id: &str, check: &str, at: DateTime<Utc>) -> Result<(), StateError> {
    write(&dir.join("checks").join(repo_id).join(check), at.to_rfc3339().as_bytes())
}

/// Carried-over figures of one repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RepoState {
    pub repository: String,
    pub last_success: Option<f64>,
    pub original_bytes: Option<u64>,
    pub deduplicated_bytes: Option<u64>,
    pub archives: Option<u64>,
    pub check_success: Option<bool>,
    pub restore_test_success: Option<bool>,
    /// Unix time the last restore test ended.
    pub restore_test_time: Option<f64>,
    /// Its duration, seconds.
    pub restore_test_duration: Option<f64>,
    /// The regular files it verified.
    pub restore_test_files: Option<u64>,
}

fn repo_file(dir: &Path, location: &str) -> PathBuf {
    let h = dedupstore::Id::hash(location.as_bytes()).to_hex();
    dir.join("repositories").join(format!("{}.json", &h[..16]))
}

/// The state of a repository (empty if none was recorded or the file is unreadable).
pub fn load_repo(dir: &Path, location: &str) -> RepoState {
    std::fs::read(repo_file(dir, location))
        .ok()
        .and_then(|d| serde_json::from_slice::<RepoState>(&d).ok())
        .filter(|s| s.repository == location)
        .unwrap_or_else(|| RepoState { repository: location.to_string(), ..Default::default() })
}

/// Saves the state of a repository.
pub fn save_repo(dir: &Path, s: &RepoState) -> Result<(), StateError> {
    let path = repo_file(dir, &s.repository);
    // (plain numbers and strings: serialization cannot fail; reported as an IO error if it did)
    let data = serde_json::to_vec_pretty(s).map_err(|e| StateError { path: path.clone(), source: e.into() })?;
    write(&path, &data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let d = tempfile::tempdir().unwrap();
        assert!(last_check(d.path(), "abc", "repository").is_none());
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap().with_timezone(&Utc);
        record_check(d.path(), "abc", "repository", t).unwrap();
        assert_eq!(last_check(d.path(), "abc", "repository"), Some(t));
        let mut s = load_repo(d.path(), "ssh://h/x");
        assert!(s.last_success.is_none());
        s.archives = Some(4);
        save_repo(d.path(), &s).unwrap();
        assert_eq!(load_repo(d.path(), "ssh://h/x").archives, Some(4));
        assert_eq!(load_repo(d.path(), "/other").archives, None);
    }
}
