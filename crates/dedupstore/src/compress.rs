//! Compression of chunk payloads (zstd), with borg's `auto` heuristic.
//!
//! A stored chunk plaintext is `tag | payload` where tag 0 = stored, 1 = zstd.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Compression setting (`--compression`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Compression {
    /// Store as is.
    None,
    /// zstd at a level (1..=22).
    Zstd(i32),
    /// Try a cheap zstd level 1 on a sample first; store uncompressed if it does not shrink.
    Auto(i32),
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Auto(3)
    }
}

const STORED: u8 = 0;
const ZSTD: u8 = 1;
const SAMPLE: usize = 16 << 10;

impl Compression {
    /// Parses `none`, `zstd`, `zstd,N`, `auto,zstd,N` (`lz4` is taken as `zstd,1`).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("compression {s:?}"));
        let level = |x: Option<&str>| -> Result<i32> {
            match x {
                None => Ok(3),
                Some(l) => l.parse::<i32>().ok().filter(|l| (1..=22).contains(l)).ok_or_else(bad),
            }
        };
        let parts: Vec<&str> = s.split(',').collect();
        Ok(match parts.as_slice() {
            ["none"] => Compression::None,
            ["lz4"] => Compression::Zstd(1),
            ["zstd", rest @ ..] if rest.len() <= 1 => Compression::Zstd(level(rest.first().copied())?),
            ["auto", "zstd", rest @ ..] if rest.len() <= 1 => Compression::Auto(level(rest.first().copied())?),
            ["auto", "lz4"] => Compression::Auto(1),
            _ => return Err(bad()),
        })
    }

    /// Compresses into `tag | payload`.
    pub fn compress(self, data: &[u8]) -> Vec<u8> {
        let level = match self {
            Compression::None => return stored(data),
            Compression::Zstd(l) => l,
            Compression::Auto(l) => {
                let sample = &data[..data.len().min(SAMPLE)];
                match zstd::bulk::compress(sample, 1) {
                    Ok(c) if c.len() * 100 < sample.len() * 97 => l,
                    _ => return stored(data),
                }
            }
        };
        match zstd::bulk::compress(data, level) {
            Ok(c) if c.len() < data.len() => {
                let mut out = Vec::with_capacity(c.len() + 1);
                out.push(ZSTD);
                out.extend_from_slice(&c);
                out
            }
            _ => stored(data),
        }
    }
}

fn stored(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(STORED);
    out.extend_from_slice(data);
    out
}

/// Undoes [`Compression::compress`]; `max_len` bounds the output (decompression bombs).
pub fn decompress(data: &[u8], max_len: usize) -> Result<Vec<u8>> {
    match data.split_first() {
        Some((&STORED, rest)) => Ok(rest.to_vec()),
        Some((&ZSTD, rest)) => {
            zstd::bulk::decompress(rest, max_len).map_err(|e| Error::integrity("chunk", format!("zstd: {e}")))
        }
        _ => Err(Error::integrity("chunk", "unknown compression tag")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_auto_stores_random_data() {
        let text = b"hello hello hello hello hello hello hello hello".repeat(100);
        let random: Vec<u8> = (0..10000).map(|_| rand::random()).collect();
        for c in [Compression::None, Compression::Zstd(3), Compression::Auto(3)] {
            for d in [&text[..], &random[..], b""] {
                let z = c.compress(d);
                assert_eq!(decompress(&z, d.len()).unwrap(), d);
            }
        }
        assert_eq!(Compression::Auto(3).compress(&random)[0], STORED);
        assert_eq!(Compression::Auto(3).compress(&text)[0], ZSTD);
        assert_eq!(Compression::parse("auto,zstd,5").unwrap(), Compression::Auto(5));
        assert_eq!(Compression::parse("zstd,3").unwrap(), Compression::Zstd(3));
        assert_eq!(Compression::parse("none").unwrap(), Compression::None);
        assert!(Compression::parse("zstd,99").is_err());
        assert!(decompress(&[9, 1, 2], 10).is_err());
    }
}
