//! Where a repository passphrase comes from, without a terminal.
//!
//! One type for every user: the runner (the configuration's `encryption_passphrase` /
//! `encryption_passcommand`, then the caller's fallbacks) and the `rempart-backup` binary
//! (`REMPART_PASSPHRASE`, `REMPART_PASSCOMMAND`, then — in the binary only — a prompt on a
//! terminal). A daemon such as `rempart-node` has no terminal: nothing here reads one.
//!
//! A passcommand is run with `sh -c`, standard input closed (`/dev/null`, so a command that
//! would ask on a terminal fails instead of hanging a daemon), its standard output is the
//! passphrase with the trailing newlines removed (as borg), its standard error is kept for the
//! error message when it fails.

use std::fmt;
use std::process::{Command, ExitStatus, Stdio};

/// One place a passphrase may come from.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PassphraseSource {
    /// The passphrase itself (a configuration's `encryption_passphrase`).
    Literal(String),
    /// A shell command that prints it (`encryption_passcommand`, `REMPART_PASSCOMMAND`).
    Command(String),
    /// An environment variable that holds it (`REMPART_PASSPHRASE`); unset yields nothing.
    Env(String),
}

// The secret stays out of logs and `{:?}`.
impl fmt::Debug for PassphraseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PassphraseSource::Literal(_) => f.write_str("Literal(***)"),
            PassphraseSource::Command(c) => f.debug_tuple("Command").field(c).finish(),
            PassphraseSource::Env(v) => f.debug_tuple("Env").field(v).finish(),
        }
    }
}

/// A passcommand that failed (the command or its environment is at fault).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PassphraseError {
    /// `sh` could not be started.
    #[error("passcommand {command:?}: cannot run sh")]
    Spawn {
        /// The command.
        command: String,
        /// The error from exec.
        #[source]
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("passcommand {command:?} failed with {status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Failed {
        /// The command.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// The end of its standard error.
        stderr: String,
    },
    /// The command printed something that is not UTF-8.
    #[error("passcommand {command:?}: its output is not UTF-8")]
    NotUtf8 {
        /// The command.
        command: String,
    },
}

impl PassphraseSource {
    /// The passphrase this source gives, `None` when it has none (an unset variable).
    pub fn resolve(&self) -> Result<Option<String>, PassphraseError> {
        match self {
            PassphraseSource::Literal(p) => Ok(Some(p.clone())),
            PassphraseSource::Env(var) => Ok(std::env::var(var).ok()),
            PassphraseSource::Command(cmd) => run_passcommand(cmd).map(Some),
        }
    }
}

/// The first passphrase the sources give, in order.
pub fn resolve_first(sources: &[PassphraseSource]) -> Result<Option<String>, PassphraseError> {
    for s in sources {
        if let Some(p) = s.resolve()? {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Runs a passcommand (see the module docs) and returns what it printed.
pub fn run_passcommand(cmd: &str) -> Result<String, PassphraseError> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| PassphraseError::Spawn { command: cmd.to_string(), source })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        let stderr = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
        return Err(PassphraseError::Failed { command: cmd.to_string(), status: out.status, stderr });
    }
    let s = String::from_utf8(out.stdout).map_err(|_| PassphraseError::NotUtf8 { command: cmd.to_string() })?;
    Ok(s.trim_end_matches('\n').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_in_order() {
        assert_eq!(PassphraseSource::Literal("x".into()).resolve().unwrap().as_deref(), Some("x"));
        assert_eq!(format!("{:?}", PassphraseSource::Literal("secret".into())), "Literal(***)");
        let unset = PassphraseSource::Env("REMPART_TEST_SURELY_UNSET_VARIABLE".into());
        assert_eq!(unset.resolve().unwrap(), None);
        let cmd = PassphraseSource::Command("printf 'from-cmd\\n\\n'".into());
        assert_eq!(resolve_first(&[unset.clone(), cmd]).unwrap().as_deref(), Some("from-cmd"));
        assert_eq!(resolve_first(&[unset]).unwrap(), None);
        let e = run_passcommand("echo nope >&2; exit 3").unwrap_err().to_string();
        assert!(e.contains("failed with exit status: 3: nope"), "{e}");
    }
}
