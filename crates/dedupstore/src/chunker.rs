//! Content-defined chunking: FastCDC (normalised chunking) with a per-repository secret gear
//! table.
//!
//! The gear table is derived from the repository's secret chunker seed, so chunk boundaries (and
//! hence chunk sizes, which an observer of the repository sees) do not fingerprint known files.
//! A boundary is declared where the top bits of the rolling gear hash are zero: a stricter mask
//! (two more bits) below the average size and a looser one above it, which concentrates sizes
//! around the average (FastCDC's "normalised chunking", level 2).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;

/// Chunk size limits in bytes. `avg` must be a power of two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    /// Smallest chunk (except a file's last one).
    pub min: u32,
    /// Target average.
    pub avg: u32,
    /// Largest chunk.
    pub max: u32,
}

impl Default for ChunkerParams {
    /// 16 KiB / 64 KiB / 256 KiB: small enough to find duplicates shifted inside big files (see
    /// the bench), large enough that the index stays around 1.3 MB per GB of unique data.
    fn default() -> Self {
        ChunkerParams { min: 16 << 10, avg: 64 << 10, max: 256 << 10 }
    }
}

fn parse_size(s: &str) -> Option<u32> {
    let s = s.trim();
    let (num, mult) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 1u64 << 10),
        b'M' | b'm' => (&s[..s.len() - 1], 1u64 << 20),
        _ => (s, 1),
    };
    u32::try_from(num.parse::<u64>().ok()?.checked_mul(mult)?).ok()
}

impl ChunkerParams {
    /// Parses `fastcdc,MIN,AVG,MAX` (sizes in bytes or with K/M suffix) or borg's
    /// `[buzhash,]MINEXP,MAXEXP,AVGEXP,WINDOW` (powers of two; the window is ignored).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("chunker params {s:?}"));
        let parts: Vec<&str> = s.split(',').collect();
        let p = match parts.as_slice() {
            ["fastcdc", min, avg, max] => ChunkerParams {
                min: parse_size(min).ok_or_else(bad)?,
                avg: parse_size(avg).ok_or_else(bad)?,
                max: parse_size(max).ok_or_else(bad)?,
            },
            ["buzhash", rest @ ..] | rest @ [_, _, _, _] if rest.len() == 4 => {
                let e: Vec<u32> = rest[..3]
                    .iter()
                    .map(|x| x.parse::<u32>().ok().filter(|&e| (6..=26).contains(&e)))
                    .collect::<Option<_>>()
                    .ok_or_else(bad)?;
                ChunkerParams { min: 1 << e[0], max: 1 << e[1], avg: 1 << e[2] }
            }
            _ => return Err(bad()),
        };
        p.validate()?;
        Ok(p)
    }

    /// Checks `64 <= min < avg < max <= 64 MiB` and `avg` a power of two.
    pub fn validate(&self) -> Result<()> {
        if !(self.min >= 64
            && self.min < self.avg
            && self.avg < self.max
            && self.max <= 64 << 20
            && self.avg.is_power_of_two())
        {
            return Err(Error::InvalidArgument(format!(
                "chunker params need 64 <= min < avg < max <= 64M, avg a power of two: {self:?}"
            )));
        }
        Ok(())
    }
}

/// A seeded FastCDC chunker.
#[derive(Clone)]
pub struct Chunker {
    gear: Box<[u64; 256]>,
    params: ChunkerParams,
    mask_s: u64,
    mask_l: u64,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker").field("params", &self.params).finish_non_exhaustive()
    }
}

impl Chunker {
    /// A chunker whose gear table is derived from `seed`.
    pub fn new(params: ChunkerParams, seed: &[u8; 32]) -> Self {
        let mut gear = Box::new([0u64; 256]);
        let mut xof = blake3::Hasher::new_keyed(seed).update(b"rempart dedupstore gear table v1").finalize_xof();
        let mut buf = [0u8; 8];
        for g in gear.iter_mut() {
            xof.fill(&mut buf);
            *g = u64::from_le_bytes(buf);
        }
        let bits = params.avg.trailing_zeros();
        let top = |n: u32| -> u64 {
            let n = n.clamp(1, 63);
            (!0u64) << (64 - n)
        };
        Chunker { gear, params, mask_s: top(bits + 2), mask_l: top(bits.saturating_sub(2)) }
    }

    /// The parameters.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Chunks a buffered stream that grows at its end (an archive's item stream): stores every
    /// chunk whose end is final — every chunk with `max` bytes after its start, so boundaries
    /// are exactly those of chunking the whole stream at once (FastCDC looks at most `max`
    /// bytes ahead) — or, with `all`, every chunk; `store` gets each chunk in order. The stored
    /// bytes leave `buf`.
    pub fn cut_final<E>(
        &self,
        buf: &mut Vec<u8>,
        all: bool,
        mut store: impl FnMut(&[u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let max = self.params().max as usize;
        let mut pos = 0;
        while pos < buf.len() && (all || buf.len() - pos >= max) {
            let n = self.cut(&buf[pos..]);
            store(&buf[pos..pos + n])?;
            pos += n;
        }
        buf.drain(..pos);
        Ok(())
    }

    /// Length of the first chunk of `data`. The caller passes at least `max` bytes unless `data`
    /// is the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        let min = self.params.min as usize;
        let max = (self.params.max as usize).min(data.len());
        if data.len() <= min {
            return data.len();
        }
        let normal = (self.params.avg as usize).min(max);
        let mut h: u64 = 0;
        let gear = &*self.gear;
        for (i, &b) in data[min..normal].iter().enumerate() {
            h = (h << 1).wrapping_add(gear[b as usize]);
            if h & self.mask_s == 0 {
                return min + i + 1;
            }
        }
        for (i, &b) in data[normal..max].iter().enumerate() {
            h = (h << 1).wrapping_add(gear[b as usize]);
            if h & self.mask_l == 0 {
                return normal + i + 1;
            }
        }
        max
    }

    /// Splits a whole buffer into chunk lengths.
    pub fn split<'a>(&self, mut data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        while !data.is_empty() {
            let n = self.cut(data);
            out.push(&data[..n]);
            data = &data[n..];
        }
        out
    }

    /// A streaming chunker over a reader: memory stays at about `max(2 * max, 1 MiB)` bytes.
    pub fn stream<R: Read>(&self, reader: R) -> ChunkStream<'_, R> {
        ChunkStream { chunker: self, reader, buf: Vec::new(), pos: 0, end: 0, eof: false }
    }
}

/// Read-ahead of [`Chunker::stream`].
const STREAM_BUF: usize = 1 << 20;

/// Iterator-like streaming chunker, see [`Chunker::stream`].
#[derive(Debug)]
pub struct ChunkStream<'a, R> {
    chunker: &'a Chunker,
    reader: R,
    /// Allocated once; `pos..end` is read but not yet chunked.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> ChunkStream<'_, R> {
    /// The next chunk, or `None` at the end of the stream.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let max = self.chunker.params.max as usize;
        if self.end - self.pos < max && !self.eof {
            if self.buf.is_empty() {
                // Read ahead well past `max`: the unconsumed tail moved to the front on each
                // refill is then a small fraction of what is read.
                self.buf = vec![0; (2 * max).max(STREAM_BUF)];
            }
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
            while self.end < self.buf.len() {
                match self.reader.read(&mut self.buf[self.end..]) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => self.end += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let rest = &self.buf[self.pos..self.end];
        if rest.is_empty() {
            return Ok(None);
        }
        let n = self.chunker.cut(rest);
        let out = rest[..n].to_vec();
        self.pos += n;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn data(n: usize, seed: u64) -> Vec<u8> {
        let mut r = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| r.gen()).collect()
    }

    #[test]
    fn sizes_within_bounds_and_stream_matches_split() {
        let p = ChunkerParams { min: 2048, avg: 8192, max: 32768 };
        let c = Chunker::new(p, &[7; 32]);
        let d = data(1 << 20, 1);
        let parts = c.split(&d);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), d.len());
        for p in &parts[..parts.len() - 1] {
            assert!(p.len() >= 2048 && p.len() <= 32768, "{}", p.len());
        }
        let avg = d.len() / parts.len();
        assert!((4096..=16384).contains(&avg), "avg {avg}");
        let mut s = c.stream(&d[..]);
        let mut streamed = Vec::new();
        while let Some(ch) = s.next_chunk().unwrap() {
            streamed.push(ch);
        }
        assert_eq!(streamed.len(), parts.len());
        assert!(streamed.iter().zip(&parts).all(|(a, b)| a == b));
    }

    #[test]
    fn boundaries_resynchronise_after_a_shift_and_depend_on_the_seed() {
        let p = ChunkerParams { min: 2048, avg: 8192, max: 32768 };
        let c = Chunker::new(p, &[1; 32]);
        let d = data(1 << 20, 2);
        let mut shifted = data(1000, 3);
        shifted.extend_from_slice(&d);
        let a: std::collections::HashSet<&[u8]> = c.split(&d).into_iter().collect();
        let b = c.split(&shifted);
        let common = b.iter().filter(|x| a.contains(*x)).count();
        assert!(common * 10 >= b.len() * 9, "{common} of {}", b.len());
        let other = Chunker::new(p, &[2; 32]);
        assert_ne!(
            c.split(&d).iter().map(|x| x.len()).collect::<Vec<_>>(),
            other.split(&d).iter().map(|x| x.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn parse_params() {
        assert_eq!(ChunkerParams::parse("fastcdc,16K,64K,256K").unwrap(), ChunkerParams::default());
        assert_eq!(
            ChunkerParams::parse("19,23,21,4095").unwrap(),
            ChunkerParams { min: 1 << 19, avg: 1 << 21, max: 1 << 23 }
        );
        assert!(ChunkerParams::parse("fastcdc,64K,16K,256K").is_err());
        assert!(ChunkerParams::parse("fastcdc,1K,3000,256K").is_err());
        assert!(ChunkerParams::parse("nonsense").is_err());
    }
}
