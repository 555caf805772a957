//! borg 1.2's compression envelope: a two-byte type header, then the compressed data.
//!
//! `00 00` none, `01 00` lz4 (a raw LZ4 block, no length), `02 00` lzma (an xz stream),
//! `03 00` zstd (a frame), `04 00` obfuscate (a big-endian u32 length, the inner envelope,
//! padding); zlib has no header of its own: a zlib stream starts with CMF/FLG bytes whose
//! low nibble is 8 and whose 16-bit value is a multiple of 31.

use crate::error::{Error, Result};
use std::io::Read;

/// Largest plaintext we accept from one object (borg's chunker max is 8 MiB; its own limit is
/// 128 MiB): a bound against decompression bombs.
const MAX_PLAIN: usize = 128 << 20;

/// Decompresses one borg object payload (after decryption). `hint` is the expected size when
/// known (the chunk list records it), used to size the lz4 buffer.
pub fn decompress(data: &[u8], hint: Option<usize>) -> Result<Vec<u8>> {
    let bad = |why: String| Error::integrity("compressed object", why);
    let (a, b) = match data {
        [a, b, ..] => (*a, *b),
        _ => return Err(bad("shorter than the compression header".into())),
    };
    let body = &data[2..];
    match (a, b) {
        (0x00, 0x00) => Ok(body.to_vec()),
        (0x01, 0x00) => lz4(body, hint).map_err(bad),
        (0x02, 0x00) => read_all(liblzma::read::XzDecoder::new(body)).map_err(|e| bad(format!("lzma: {e}"))),
        (0x03, 0x00) => {
            let dec = zstd::stream::read::Decoder::new(body).map_err(|e| bad(format!("zstd: {e}")))?;
            read_all(dec).map_err(|e| bad(format!("zstd: {e}")))
        }
        (0x04, 0x00) => {
            let n = body.get(..4).ok_or_else(|| bad("obfuscated object: truncated".into()))?;
            let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
            let inner =
                body.get(4..4usize.saturating_add(n)).ok_or_else(|| bad("obfuscated object: truncated".into()))?;
            decompress(inner, hint)
        }
        (cmf, flg) if cmf & 0x0f == 8 && (u16::from(cmf) * 256 + u16::from(flg)) % 31 == 0 => {
            read_all(flate2::read::ZlibDecoder::new(data)).map_err(|e| bad(format!("zlib: {e}")))
        }
        (a, b) => Err(bad(format!("unknown compression header {a:02x} {b:02x}"))),
    }
}

fn read_all(r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let n = r.take(MAX_PLAIN as u64 + 1).read_to_end(&mut out)?;
    if n > MAX_PLAIN {
        return Err(std::io::Error::other("decompressed object larger than 128 MiB"));
    }
    Ok(out)
}

/// A raw LZ4 block carries no length: try the hint, then grow like borg does.
fn lz4(body: &[u8], hint: Option<usize>) -> std::result::Result<Vec<u8>, String> {
    let mut size = hint.unwrap_or(0).max(body.len().saturating_mul(4)).clamp(64, MAX_PLAIN);
    loop {
        let mut out = vec![0u8; size];
        match lz4_flex::block::decompress_into(body, &mut out) {
            Ok(n) => {
                out.truncate(n);
                return Ok(out);
            }
            Err(lz4_flex::block::DecompressError::OutputTooSmall { .. }) if size < MAX_PLAIN => {
                size = size.saturating_mul(2).min(MAX_PLAIN);
            }
            Err(e) => return Err(format!("lz4: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_header() {
        let plain = b"hello hello hello hello hello hello".to_vec();
        let mut none = vec![0, 0];
        none.extend_from_slice(&plain);
        assert_eq!(decompress(&none, None).unwrap(), plain);
        let mut lz = vec![1, 0];
        lz.extend(lz4_flex::block::compress(&plain));
        assert_eq!(decompress(&lz, None).unwrap(), plain);
        let mut zs = vec![3, 0];
        zs.extend(zstd::bulk::compress(&plain, 3).unwrap());
        assert_eq!(decompress(&zs, None).unwrap(), plain);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut z, &plain).unwrap();
        let z = z.finish().unwrap();
        assert_eq!(decompress(&z, None).unwrap(), plain);
        assert!(decompress(&[0x7f, 0x00, 1], None).is_err());
        assert!(decompress(&[1, 0, 0xff, 0xff], None).is_err());
        assert!(decompress(&[1], None).is_err());
    }
}
