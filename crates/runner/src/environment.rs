//! The environment variables of `rempart-backup`, with borg's names as fallbacks, so borg's
//! scripts and cron lines (`BORG_PASSPHRASE=... BORG_REPO=... borg list`) keep working.
//!
//! ```text
//!   REMPART_X set? ──yes──▶ REMPART_X
//!        │ no
//!   BORG_X set? ────yes──▶ BORG_X
//!        │ no
//!   default (HOME-relative dirs under REMPART_BASE_DIR / BORG_BASE_DIR / HOME, "ssh", ...)
//! ```
//!
//! | what               | first              | then                | default                                  |
//! |--------------------|--------------------|---------------------|------------------------------------------|
//! | passphrase         | REMPART_PASSPHRASE, REMPART_PASSCOMMAND | BORG_PASSPHRASE, BORG_PASSCOMMAND | a prompt on a terminal (binary only) |
//! | new passphrase     | REMPART_NEW_PASSPHRASE | BORG_NEW_PASSPHRASE | a prompt                             |
//! | repository         | REMPART_REPO       | BORG_REPO           | none: the command needs one              |
//! | ssh command        | `--rsh`, REMPART_RSH | BORG_RSH          | `ssh`                                    |
//! | key files          | REMPART_KEYS_DIR   | BORG_KEYS_DIR       | BASE/.config/rempart/keys                |
//! | cache              | REMPART_CACHE_DIR  | BORG_CACHE_DIR      | BASE/.cache/rempart                      |
//! | BASE               | REMPART_BASE_DIR   | BORG_BASE_DIR       | HOME                                     |
//!
//! A variable set to the empty string counts as unset, except the passphrases (borg accepts
//! an empty passphrase). Rempart's own variables always win, so one can be set beside a borg
//! setup without touching it.

use crate::passphrase::PassphraseSource;
use std::ffi::OsString;
use std::path::PathBuf;

/// `REMPART_{name}`, else `BORG_{name}`; empty values count as unset.
pub fn var_os(name: &str) -> Option<OsString> {
    ["REMPART_", "BORG_"].iter().find_map(|p| std::env::var_os(format!("{p}{name}")).filter(|v| !v.is_empty()))
}

/// [`var_os`] as UTF-8 (a value that is not UTF-8 counts as unset).
pub fn var(name: &str) -> Option<String> {
    var_os(name).and_then(|v| v.into_string().ok())
}

/// The repository location when the command line has none.
pub fn repo() -> Option<String> {
    var("REPO")
}

/// The ssh command (the command line's `--rsh` wins over both).
pub fn rsh() -> String {
    var("RSH").unwrap_or_else(|| "ssh".into())
}

/// The base of the default directories: REMPART_BASE_DIR, BORG_BASE_DIR, HOME.
pub fn base_dir() -> Option<PathBuf> {
    var_os("BASE_DIR").or_else(|| std::env::var_os("HOME").filter(|h| !h.is_empty())).map(PathBuf::from)
}

/// Where key files are kept.
pub fn keys_dir() -> Option<PathBuf> {
    var_os("KEYS_DIR").map(PathBuf::from).or_else(|| base_dir().map(|b| b.join(".config/rempart/keys")))
}

/// Where the files cache and the chunk index cache are kept.
pub fn cache_dir() -> Option<PathBuf> {
    var_os("CACHE_DIR").map(PathBuf::from).or_else(|| base_dir().map(|b| b.join(".cache/rempart")))
}

/// The passphrase sources of the environment, in precedence order, for `REMPART_{name}`
/// (`PASSPHRASE` or `NEW_PASSPHRASE`): the rempart variable, the rempart passcommand, then
/// borg's two (passcommands only for `PASSPHRASE`, as borg).
pub fn passphrase_sources(name: &str) -> Vec<PassphraseSource> {
    let mut s = Vec::new();
    for prefix in ["REMPART_", "BORG_"] {
        s.push(PassphraseSource::Env(format!("{prefix}{name}")));
        if name == "PASSPHRASE" {
            if let Some(cmd) = std::env::var(format!("{prefix}PASSCOMMAND")).ok().filter(|c| !c.is_empty()) {
                s.push(PassphraseSource::Command(cmd));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test that changes the process environment (tests run in threads).
    #[test]
    fn rempart_wins_then_borg_then_defaults() {
        let names = ["REPO", "RSH", "KEYS_DIR", "CACHE_DIR", "BASE_DIR", "PASSPHRASE", "PASSCOMMAND"];
        let clear = || {
            for n in names {
                std::env::remove_var(format!("REMPART_{n}"));
                std::env::remove_var(format!("BORG_{n}"));
            }
        };
        clear();
        assert_eq!(repo(), None);
        assert_eq!(rsh(), "ssh");
        let home = std::env::var_os("HOME").map(PathBuf::from);
        assert_eq!(keys_dir(), home.map(|h| h.join(".config/rempart/keys")));
        std::env::set_var("BORG_BASE_DIR", "/b");
        assert_eq!(cache_dir(), Some(PathBuf::from("/b/.cache/rempart")));
        std::env::set_var("REMPART_BASE_DIR", "/r");
        assert_eq!(cache_dir(), Some(PathBuf::from("/r/.cache/rempart")));
        std::env::set_var("BORG_CACHE_DIR", "/bc");
        std::env::set_var("BORG_KEYS_DIR", "/bk");
        std::env::set_var("BORG_REPO", "/borg/repo");
        std::env::set_var("BORG_RSH", "ssh -i k");
        assert_eq!(cache_dir(), Some(PathBuf::from("/bc")));
        assert_eq!(keys_dir(), Some(PathBuf::from("/bk")));
        assert_eq!(repo().as_deref(), Some("/borg/repo"));
        assert_eq!(rsh(), "ssh -i k");
        std::env::set_var("REMPART_REPO", "");
        assert_eq!(repo().as_deref(), Some("/borg/repo"), "empty counts as unset");
        std::env::set_var("REMPART_REPO", "/r/repo");
        std::env::set_var("REMPART_CACHE_DIR", "/rc");
        assert_eq!(repo().as_deref(), Some("/r/repo"));
        assert_eq!(cache_dir(), Some(PathBuf::from("/rc")));
        // passphrases: REMPART_PASSPHRASE, REMPART_PASSCOMMAND, BORG_PASSPHRASE, BORG_PASSCOMMAND
        let first = || crate::passphrase::resolve_first(&passphrase_sources("PASSPHRASE")).unwrap();
        std::env::set_var("BORG_PASSCOMMAND", "echo borg-cmd");
        assert_eq!(first().as_deref(), Some("borg-cmd"));
        std::env::set_var("BORG_PASSPHRASE", "");
        assert_eq!(first().as_deref(), Some(""), "an empty BORG_PASSPHRASE is a passphrase, as in borg");
        std::env::set_var("REMPART_PASSCOMMAND", "echo rempart-cmd");
        assert_eq!(first().as_deref(), Some("rempart-cmd"));
        std::env::set_var("REMPART_PASSPHRASE", "rempart");
        assert_eq!(first().as_deref(), Some("rempart"));
        assert_eq!(
            passphrase_sources("NEW_PASSPHRASE"),
            [
                PassphraseSource::Env("REMPART_NEW_PASSPHRASE".into()),
                PassphraseSource::Env("BORG_NEW_PASSPHRASE".into())
            ]
        );
        clear();
    }
}
