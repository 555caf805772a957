//! 32-byte object identifiers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A 32-byte identifier: keyed blake3 of a chunk's plaintext, or blake3 of a file's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id(pub [u8; 32]);

impl Id {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// Parses 64 hex characters.
    pub fn from_hex(s: &str) -> Option<Id> {
        let v = hex::decode(s).ok()?;
        Some(Id(v.try_into().ok()?))
    }
    /// Unkeyed blake3 of `data` (used to name pack and index files).
    pub fn hash(data: &[u8]) -> Id {
        Id(*blake3::hash(data).as_bytes())
    }
    /// A random id.
    pub fn random() -> Id {
        Id(rand::random())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", &self.to_hex()[..16])
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}
