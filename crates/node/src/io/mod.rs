//! The tokio shells around the sans-IO cores: the only part of this crate that reads the
//! clock, draws random bytes or touches sockets.
//!
//! - [`witness_server`]: `rempart-node witness` — the lease table behind a TCP listener, one
//!   task per connection, metrics into a given registry.
//! - [`witness_client`]: the node's task that keeps (or does not want) the lease and publishes
//!   until when it may be relied on.
//! - [`daemon`]: `rempart-node run` — the engines, the orchestrator and the witness clients in
//!   one task; [`steps`] performs the steps on the host, [`control`] is its control socket,
//!   [`metrics`] its own families.

pub mod control;
pub mod daemon;
mod frame;
pub mod metrics;
pub mod steps;
pub mod witness_client;
pub mod witness_server;

/// 32 random bytes from the OS, for a challenge.
fn challenge() -> [u8; 32] {
    use rand::RngCore;
    let mut c = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut c);
    c
}

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// It could not be read.
    #[error("cannot read the secret file {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// It holds nothing but white space.
    #[error("the secret file {} is empty", path.display())]
    Empty {
        /// The file.
        path: std::path::PathBuf,
    },
}

/// Reads a shared-secret file (surrounding white space ignored, as for the replication link)
/// and derives the witness's authentication key from it.
pub fn witness_key(path: &std::path::Path) -> Result<[u8; 32], SecretError> {
    let raw = std::fs::read(path).map_err(|source| SecretError::Read { path: path.to_owned(), source })?;
    let s = String::from_utf8_lossy(&raw);
    let secret = s.trim();
    if secret.is_empty() {
        return Err(SecretError::Empty { path: path.to_owned() });
    }
    Ok(crate::witness::auth::auth_key(secret.as_bytes()))
}
