//! What every rempart daemon binary shares, so that it is done one way:
//!
//! - [`PidLock`]: a pid file held under an exclusive `flock(2)` for the daemon's life. A second
//!   daemon pointed at the same run directory fails at start with [`PidLockError::AlreadyRunning`]
//!   (naming the pid of the running one) instead of stealing its pid file and control socket.
//!   The kernel drops the lock when the process dies, even by SIGKILL, so a stale pid file never
//!   blocks a restart.
//! - [`init_logging`]: `tracing` to stderr, with ANSI colour only when stderr is a terminal (a
//!   journal or a log file gets plain text).
//!
//! ```text
//!  daemon start ──► PidLock::acquire(run_dir/NAME.pid) ──► flock(LOCK_EX|LOCK_NB)
//!                          │ held ─► write our pid, keep the fd open until drop
//!                          └ busy ─► AlreadyRunning { path, pid }  (nothing written)
//! ```
//!
//! - [`metrics`]: the one metrics HTTP server; engines register into one
//!   `prometheus_client` registry that the binary serves with [`metrics::serve`].
//!
//! Only binaries use this crate: libraries (the engines) never own a pid file or the terminal.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

pub mod metrics;

/// Why a [`PidLock`] could not be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PidLockError {
    /// Another live process holds the lock on this pid file.
    #[error("another instance is already running (pid file {path} held{})", pid.map(|p| format!(" by pid {p}")).unwrap_or_default())]
    AlreadyRunning {
        /// The pid file.
        path: PathBuf,
        /// The pid written in it, if it could be read.
        pid: Option<u32>,
    },
    /// The pid file could not be created, locked or written.
    #[error("pid file {path}: {source}")]
    Io {
        /// The pid file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A pid file held under an exclusive lock until this value is dropped (then it is removed).
#[derive(Debug)]
pub struct PidLock {
    path: PathBuf,
    // Held for the lock; never read after `acquire`.
    _file: Flock<File>,
}

impl PidLock {
    /// Creates (mode 0644) or opens `path`, takes an exclusive non-blocking `flock` on it and
    /// writes this process's pid. Fails with [`PidLockError::AlreadyRunning`] if a live process
    /// holds it; the file is then left untouched.
    pub fn acquire(path: impl Into<PathBuf>) -> Result<PidLock, PidLockError> {
        let path = path.into();
        let io = |source: std::io::Error| PidLockError::Io { path: path.clone(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(&path)
            .map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut s = String::new();
                let pid = f.read_to_string(&mut s).ok().and_then(|_| s.trim().parse().ok());
                return Err(PidLockError::AlreadyRunning { path, pid });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(PidLock { path, _file: file })
    }

    /// The pid file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        // Removed while still locked: a starting daemon that opened the old file fails its
        // non-blocking lock and reports "already running" rather than sharing it with us.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sets up `tracing` to stderr with `filter` (an `EnvFilter` directive) unless the environment
/// variable `env` holds one. ANSI colour only when stderr is a terminal.
pub fn init_logging(env: &str, filter: &str) {
    use std::io::IsTerminal;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env(env).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_fails_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.pid");
        let held = PidLock::acquire(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), std::process::id().to_string());
        match PidLock::acquire(&p) {
            Err(PidLockError::AlreadyRunning { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        // The failed attempt left the holder's pid in place.
        assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), std::process::id().to_string());
        drop(held);
        assert!(!p.exists(), "dropping the lock removes the pid file");
        let again = PidLock::acquire(&p).unwrap();
        assert_eq!(again.path(), p);
    }

    #[test]
    fn a_stale_pid_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.pid");
        std::fs::write(&p, "999999\n").unwrap();
        let _l = PidLock::acquire(&p).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap().trim(), std::process::id().to_string());
    }
}
