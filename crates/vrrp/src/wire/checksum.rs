//! Internet checksum (RFC 1071) as composable one's-complement sums.
//!
//! `data()` sums bytes, `combine()` folds partial sums, `pseudo_header_v4/v6()` give the sum of the
//! pseudo-header that VRRPv3 prepends (RFC 5798 §5.2.8). The final checksum is `!combine(&[..])`.

use std::net::{Ipv4Addr, Ipv6Addr};

/// One's-complement sum of `data` (big-endian 16-bit words, odd tail padded with zero), folded
/// to 16 bits.
#[must_use]
pub fn data(data: &[u8]) -> u16 {
    let mut acc: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(u16::from_be_bytes([*last, 0]));
    }
    fold(acc)
}

/// Folds several partial sums into one.
#[must_use]
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u32::from(s)).sum())
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    // The loop above leaves acc <= 0xffff.
    acc as u16
}

/// Sum of the IPv4 pseudo-header: source, destination, zero, protocol, length.
#[must_use]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u16 {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&src.octets());
    b[4..8].copy_from_slice(&dst.octets());
    b[9] = protocol;
    b[10..12].copy_from_slice(&length.to_be_bytes());
    data(&b)
}

/// Sum of the IPv6 pseudo-header (RFC 8200 §8.1): source, destination, upper-layer length, next
/// header.
#[must_use]
pub fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u16 {
    let mut b = [0u8; 40];
    b[0..16].copy_from_slice(&src.octets());
    b[16..32].copy_from_slice(&dst.octets());
    b[32..36].copy_from_slice(&length.to_be_bytes());
    b[39] = next_header;
    data(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example: 00 01 f2 03 f4 f5 f6 f7 sums to 0xddf2.
        assert_eq!(data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
    }

    #[test]
    fn odd_length_pads() {
        assert_eq!(data(&[0x12]), 0x1200);
        assert_eq!(combine(&[0xffff, 0x0001]), 0x0001);
    }
}
