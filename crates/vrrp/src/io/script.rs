//! Who runs track and notify scripts, and whether they may run at all (keepalived's
//! `script_user` and `enable_script_security`).
//!
//! keepalived 2.2.7 runs scripts as `script_user [group]` from `global_defs` (or a
//! `vrrp_script`'s own `user`); without one, as `keepalived_script` when that user exists,
//! else as itself. Before running anything it checks each script's program:
//! - not found or not executable: a track script is disabled (removed from the instances that
//!   track it: it no longer changes their priority) and a notify script is not run;
//! - with `enable_script_security`, a script that would run as root while any part of its path
//!   (the file or a directory above it) is owned by a non-root user or writable by group or
//!   others (a directory with the sticky bit, like `/tmp`, is fine) is disabled the same way.
//!
//! The program is the first word of the command line, looked up in `PATH` when it has no `/`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::config::{Global, Script};

/// The user and group a script runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

const DEFAULT_SCRIPT_USER: &str = "keepalived_script";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Looks `user` and `group` (default: the user's primary group) up.
pub fn resolve(user: &str, group: Option<&str>) -> Result<RunAs, String> {
    let u = match nix::unistd::User::from_name(user) {
        Ok(Some(u)) => u,
        Ok(None) => return Err(format!("script user {user:?} does not exist")),
        Err(e) => return Err(format!("script user {user:?}: {e}")),
    };
    let gid = match group {
        None => u.gid.as_raw(),
        Some(g) => match nix::unistd::Group::from_name(g) {
            Ok(Some(g)) => g.gid.as_raw(),
            Ok(None) => return Err(format!("script group {g:?} does not exist")),
            Err(e) => return Err(format!("script group {g:?}: {e}")),
        },
    };
    Ok(RunAs { uid: u.uid.as_raw(), gid })
}

/// The identity scripts run as by default: `script_user`, else `keepalived_script` if it
/// exists, else the daemon's own (`None`: no change).
pub fn default_run_as(global: &Global) -> Result<Option<RunAs>, String> {
    match &global.script_user {
        Some(u) => resolve(u, global.script_group.as_deref()).map(Some),
        None => Ok(resolve(DEFAULT_SCRIPT_USER, None).ok()),
    }
}

/// The identity one `vrrp_script` runs as (its own `user`, else the default).
pub fn script_run_as(s: &Script, default: Option<RunAs>) -> Result<Option<RunAs>, String> {
    match &s.user {
        Some(u) => resolve(u, s.group.as_deref()).map(Some),
        None => Ok(default),
    }
}

/// Why a script may not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The program does not exist or is not executable.
    NotFound(String),
    /// It would run as root and this path is writable by (or belongs to) a non-root user.
    Insecure(PathBuf),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotFound(p) => write!(f, "{p} not found or not executable"),
            Refusal::Insecure(p) => write!(f, "unsafe permissions on {} (writable by non-root)", p.display()),
        }
    }
}

/// The program of a command line: its first word, looked up in `PATH` without a `/`.
fn program(cmdline: &str) -> Option<PathBuf> {
    let first = cmdline.split_whitespace().next()?.trim_matches(|c| c == '"' || c == '\'');
    if first.contains('/') {
        return Some(PathBuf::from(first));
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_string());
    path.split(':').map(|d| Path::new(d).join(first)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The first component of `p` (after resolving symlinks), from `/` down, that a non-root user
/// owns or may write to.
#[must_use]
pub fn insecure_component(p: &Path) -> Option<PathBuf> {
    let real = match std::fs::canonicalize(p) {
        Ok(r) => r,
        Err(_) => return Some(p.to_path_buf()),
    };
    let mut parts: Vec<&Path> = real.ancestors().collect();
    parts.reverse();
    for c in parts {
        let Ok(m) = std::fs::metadata(c) else {
            return Some(c.to_path_buf());
        };
        let mode = m.permissions().mode();
        let sticky_dir = m.is_dir() && mode & 0o1000 != 0;
        if m.uid() != 0 || (!sticky_dir && mode & 0o022 != 0) {
            return Some(c.to_path_buf());
        }
    }
    None
}

/// Whether `cmdline` may run as `run_as` (`None`: as the daemon, i.e. `daemon_uid`).
pub fn check(cmdline: &str, run_as: Option<RunAs>, daemon_uid: u32, security: bool) -> Result<(), Refusal> {
    let first = cmdline.split_whitespace().next().unwrap_or_default().to_string();
    let Some(prog) = program(cmdline).filter(|p| is_executable(p)) else {
        return Err(Refusal::NotFound(first));
    };
    let as_root = run_as.map_or(daemon_uid, |r| r.uid) == 0;
    if security && as_root {
        if let Some(bad) = insecure_component(&prog) {
            return Err(Refusal::Insecure(bad));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn security_check_follows_keepalived() {
        if !nix::unistd::getuid().is_root() {
            // Ownership by root is part of the rule; as another user every file is "insecure".
            return;
        }
        let d = tempfile::tempdir().unwrap();
        chmod(d.path(), 0o755);
        let ok = d.path().join("ok.sh");
        std::fs::write(&ok, "#!/bin/sh\nexit 0\n").unwrap();
        chmod(&ok, 0o755);
        let cmd = format!("{} arg", ok.display());
        assert_eq!(check(&cmd, None, 0, true), Ok(()));
        // World-writable file: refused as root with security on, allowed otherwise.
        chmod(&ok, 0o757);
        assert_eq!(check(&cmd, None, 0, true), Err(Refusal::Insecure(ok.clone())));
        assert_eq!(check(&cmd, None, 0, false), Ok(()));
        assert_eq!(check(&cmd, Some(RunAs { uid: 65534, gid: 65534 }), 0, true), Ok(()));
        chmod(&ok, 0o755);
        // Group-writable directory above it, without the sticky bit: refused.
        chmod(d.path(), 0o775);
        assert_eq!(check(&cmd, None, 0, true), Err(Refusal::Insecure(d.path().canonicalize().unwrap())));
        // With the sticky bit (like /tmp): fine.
        chmod(d.path(), 0o1777);
        assert_eq!(check(&cmd, None, 0, true), Ok(()));
        // Not found / not executable.
        assert!(matches!(check("/nonexistent/x", None, 0, false), Err(Refusal::NotFound(_))));
        chmod(&ok, 0o644);
        assert!(matches!(check(&cmd, None, 0, false), Err(Refusal::NotFound(_))));
        // PATH lookup for a bare name.
        assert_eq!(check("test -e /", None, 0, true), Ok(()));
    }

    #[test]
    fn users_resolve() {
        let r = resolve("root", None).unwrap();
        assert_eq!(r, RunAs { uid: 0, gid: 0 });
        assert!(resolve("no-such-user-rempart", None).unwrap_err().contains("does not exist"));
        assert!(resolve("root", Some("no-such-group-rempart")).unwrap_err().contains("does not exist"));
    }
}
