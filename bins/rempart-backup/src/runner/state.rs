//! What the runner remembers between runs, under the state directory (`--state-dir`,
//! `REMPART_STATE_DIR`, else `$XDG_STATE_HOME/rempart`, else `~/.local/state/rempart`):
//!
//! ```text
//! checks/<repository id>/<check name>   time of the last successful check (like borgmatic's
//!                                       ~/.borgmatic/checks), RFC 3339
//! repositories/<hash of location>.json  last success time, sizes, check and restore-test results
//!                                       (what the metrics carry over when a run fails)
//! ```

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The default state directory.
pub(crate) fn default_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("REMPART_STATE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("rempart"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/rempart"))
}

fn write(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = path.parent().context("state path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).and_then(|_| std::fs::rename(&tmp, path)).with_context(|| format!("{}", path.display()))
}

/// Time of the last successful `check` of this kind, if recorded.
pub(crate) fn last_check(dir: &Path, repo_id: &str, check: &str) -> Option<DateTime<Utc>> {
    let s = std::fs::read_to_string(dir.join("checks").join(repo_id).join(check)).ok()?;
    DateTime::parse_from_rfc3339(s.trim()).ok().map(|t| t.with_timezone(&Utc))
}

/// Records a successful check.
pub(crate) fn record_check(dir: &Path, repo_id: &str, check: &str, at: DateTime<Utc>) -> anyhow::Result<()> {
    write(&dir.join("checks").join(repo_id).join(check), at.to_rfc3339().as_bytes())
}

/// Carried-over figures of one repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RepoState {
    pub(crate) repository: String,
    pub(crate) last_success: Option<f64>,
    pub(crate) original_bytes: Option<u64>,
    pub(crate) deduplicated_bytes: Option<u64>,
    pub(crate) archives: Option<u64>,
    pub(crate) check_success: Option<bool>,
    pub(crate) restore_test_success: Option<bool>,
}

fn repo_file(dir: &Path, location: &str) -> PathBuf {
    let h = dedupstore::Id::hash(location.as_bytes()).to_hex();
    dir.join("repositories").join(format!("{}.json", &h[..16]))
}

/// The state of a repository (empty if none was recorded or the file is unreadable).
pub(crate) fn load_repo(dir: &Path, location: &str) -> RepoState {
    std::fs::read(repo_file(dir, location))
        .ok()
        .and_then(|d| serde_json::from_slice::<RepoState>(&d).ok())
        .filter(|s| s.repository == location)
        .unwrap_or_else(|| RepoState { repository: location.to_string(), ..Default::default() })
}

/// Saves the state of a repository.
pub(crate) fn save_repo(dir: &Path, s: &RepoState) -> anyhow::Result<()> {
    write(&repo_file(dir, &s.repository), &serde_json::to_vec_pretty(s)?)
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
