//! The crate's error type, split by who is at fault.

use std::path::PathBuf;

/// Everything that can go wrong in a repository operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An object the repository needs does not exist.
    #[error("{0}: not found")]
    NotFound(String),
    /// The path is not a repository (no `config`).
    #[error("{0}: not a rempart repository (no config file)")]
    NotARepository(PathBuf),
    /// `init` on a path that already holds a repository or other files.
    #[error("{0}: already exists and is not empty")]
    AlreadyExists(PathBuf),
    /// The passphrase does not decrypt the key.
    #[error("wrong passphrase: the repository key could not be decrypted")]
    WrongPassphrase,
    /// A passphrase is needed and none was given.
    #[error("a passphrase is needed (set REMPART_PASSPHRASE or REMPART_PASSCOMMAND)")]
    PassphraseRequired,
    /// The key file is missing or belongs to another repository.
    #[error("key file {path}: {reason}")]
    KeyFile {
        /// Where the key file was looked for.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Stored data failed authentication or decoding: the repository was damaged or tampered with.
    #[error("integrity error in {what}: {reason}")]
    Integrity {
        /// The object (kind and name).
        what: String,
        /// What failed.
        reason: String,
    },
    /// Another process holds the repository lock.
    #[error("repository is locked by {holder} (use break-lock if that process is gone)")]
    Locked {
        /// `host:pid` of the holder.
        holder: String,
    },
    /// An archive name does not exist.
    #[error("archive {0:?} does not exist")]
    NoSuchArchive(String),
    /// An archive name is already used.
    #[error("archive {0:?} already exists")]
    ArchiveExists(String),
    /// The caller passed invalid options.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The repository was written by a newer, unknown format.
    #[error("unsupported repository format version {0}")]
    UnsupportedVersion(u32),
    /// An earlier IO error left the writer in an unknown state; reopen the repository.
    #[error("an earlier write failed; reopen the repository")]
    PreviousIo,
    /// The caller stopped a `create` (the binary does on SIGINT/SIGTERM). The items done so far
    /// were committed as the named checkpoint archive (none on a dry run).
    #[error("interrupted{}", checkpoint.as_ref().map(|c| format!(": checkpoint archive {c} written")).unwrap_or_default())]
    Interrupted {
        /// The checkpoint archive's name.
        checkpoint: Option<String>,
    },
    /// An object could not be serialized (a bug in this program, not in the repository or the
    /// caller's input); nothing was written for it.
    #[error("could not serialize the {what}: {source}")]
    Serialize {
        /// The kind of object ("manifest", "archive", "index", "pack header", ...).
        what: &'static str,
        /// The serializer's error.
        #[source]
        source: SerializeError,
    },
}

/// The serializer behind an [`Error::Serialize`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SerializeError {
    /// postcard (manifest, archives, index, pack headers, items).
    #[error(transparent)]
    Postcard(postcard::Error),
    /// serde_json (config, key files, lock tokens).
    #[error(transparent)]
    Json(serde_json::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub(crate) fn integrity(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Integrity { what: what.into(), reason: reason.into() }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
