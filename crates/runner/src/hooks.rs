//! borgmatic's command hooks: each entry is run with `sh -c`, in order; `{name}` placeholders
//! (`configuration_filename`, `repository`, and for `on_error` also `error` and `output`) are
//! replaced by the shell-quoted value. Exit code 75 from a `before_*` hook is borgmatic's "soft
//! failure": the rest of that repository's actions are skipped and it does not count as an error.

use crate::observe::Level;
use std::process::{Command, ExitStatus, Stdio};

/// A hook command that failed (the configuration or the host is at fault).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// `sh` could not be started.
    #[error("{what} hook {command:?}: cannot run sh: {source}")]
    Spawn {
        /// The hook (`before_backup`...).
        what: String,
        /// The command as configured.
        command: String,
        /// The error from exec.
        source: std::io::Error,
    },
    /// The command exited unsuccessfully.
    #[error("{what} hook {command:?} failed with {status}")]
    Failed {
        /// The hook (`before_backup`...).
        what: String,
        /// The command as configured.
        command: String,
        /// Its exit status.
        status: ExitStatus,
    },
}

/// borgmatic's soft-failure exit code.
pub const SOFT_FAILURE: i32 = 75;

/// How a hook list ended.
#[derive(Debug, PartialEq, Eq)]
pub enum HookOutcome {
    /// Every command succeeded (or there were none).
    Ok,
    /// A command exited 75.
    SoftFailure(String),
}

/// Quotes for `sh`.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Replaces the `{name}` placeholders the context knows; leaves the others as they are.
pub fn interpolate(command: &str, context: &[(&str, &str)]) -> String {
    let mut out = command.to_string();
    for (k, v) in context {
        out = out.replace(&format!("{{{k}}}"), &shell_quote(v));
    }
    out
}

/// Runs one hook list. The commands' standard output goes to standard error, so that `--json`
/// output stays clean. In a dry run nothing is run.
pub fn run_hooks(
    what: &str,
    commands: &[String],
    context: &[(&str, &str)],
    dry_run: bool,
    log: &dyn Fn(Level, String),
) -> Result<HookOutcome, HookError> {
    if commands.is_empty() {
        return Ok(HookOutcome::Ok);
    }
    let label = if dry_run { " (dry run; not actually running hooks)" } else { "" };
    log(Level::Info, format!("running {} command(s) for {what} hook{label}", commands.len()));
    if dry_run {
        return Ok(HookOutcome::Ok);
    }
    for c in commands {
        let cmd = interpolate(c, context);
        log(Level::Debug, format!("{what} hook: {cmd}"));
        let status = Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::io::stderr()))
            .status()
            .map_err(|source| HookError::Spawn { what: what.to_string(), command: c.clone(), source })?;
        match status.code() {
            Some(0) => {}
            Some(SOFT_FAILURE) if what.starts_with("before") => {
                return Ok(HookOutcome::SoftFailure(format!("{what} hook {c:?} exited with 75 (soft failure)")))
            }
            _ => return Err(HookError::Failed { what: what.to_string(), command: c.clone(), status }),
        }
    }
    Ok(HookOutcome::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_quoted() {
        assert_eq!(
            interpolate("echo {repository} {error} {unknown}", &[("repository", "/srv/a b"), ("error", "it's")]),
            "echo '/srv/a b' 'it'\\''s' {unknown}"
        );
        assert_eq!(shell_quote("ssh://u@h:22/p"), "ssh://u@h:22/p");
    }

    #[test]
    fn failures_and_soft_failures() {
        let log = |_: Level, _: String| {};
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("ran");
        let touch = format!("echo {{repository}} >> {}", f.display());
        assert_eq!(
            run_hooks("before_backup", std::slice::from_ref(&touch), &[("repository", "r1")], false, &log).unwrap(),
            HookOutcome::Ok
        );
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "r1\n");
        // dry run: nothing runs
        run_hooks("before_backup", &[touch], &[("repository", "r2")], true, &log).unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "r1\n");
        assert!(matches!(
            run_hooks("before_backup", &["exit 75".into(), "exit 1".into()], &[], false, &log).unwrap(),
            HookOutcome::SoftFailure(_)
        ));
        let e = run_hooks("after_backup", &["exit 75".into()], &[], false, &log).unwrap_err();
        assert!(e.to_string().contains("after_backup hook \"exit 75\" failed"), "{e}");
    }
}
