//! Errors, split by who is at fault.

use std::path::PathBuf;

/// What went wrong reading a borg repository.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The directory is not a borg repository (no `config` with a `[repository]` section, or
    /// no `BORG_SEG` segments).
    #[error("{path}: not a borg repository: {why}")]
    NotBorg {
        /// The directory.
        path: PathBuf,
        /// What is missing.
        why: String,
    },
    /// A repository format or key type this reader does not handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// The passphrase does not open the key.
    #[error("wrong passphrase for the borg key {0}")]
    WrongPassphrase(String),
    /// The key is encrypted and no passphrase was given.
    #[error("the borg key {0} is protected by a passphrase: set BORG_PASSPHRASE (or BORG_PASSCOMMAND)")]
    NoPassphrase(String),
    /// The key file was not found.
    #[error("no key file for repository {id} in {dir} (set BORG_KEY_FILE or BORG_KEYS_DIR)")]
    KeyNotFound {
        /// Repository id (hex).
        id: String,
        /// Keys directory searched.
        dir: PathBuf,
    },
    /// Damaged data: a segment checksum, a MAC, a chunk id, a decompression or a msgpack
    /// structure that does not verify.
    #[error("damaged borg repository: {what}: {why}")]
    Integrity {
        /// Which object (segment and offset, chunk id, ...).
        what: String,
        /// What failed.
        why: String,
    },
    /// An object the manifest or an archive names is not in the repository.
    #[error("borg object {0} is missing")]
    Missing(String),
    /// An operating-system error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn integrity(what: impl Into<String>, why: impl Into<String>) -> Error {
        Error::Integrity { what: what.into(), why: why.into() }
    }
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }
}

/// Result of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
