//! VRRP advertisement codec: VRRPv3 (RFC 5798) for IPv4 and IPv6, VRRPv2 (RFC 3768) for IPv4
//! with the simple-password authentication keepalived calls `auth_type PASS`.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Version| Type  |    VRID       |   Priority    | Count IP Addrs|
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! v3: |(rsvd)|  Max Adver Int (cs)  |          Checksum             |
//! v2: |  Auth Type    | Adver Int (s) |          Checksum             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 IPvX Address(es) (4 or 16 bytes each)         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! v2 only: |         Authentication Data (8 bytes)                |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Checksums: VRRPv2 sums the message only. VRRPv3 sums a pseudo-header plus the message; for
//! IPv4 keepalived 2.2.7 and Wireshark include the IPv4 pseudo-header, while a literal reading of
//! RFC 9568 allows the message-only form. [`Repr::parse`] accepts both for VRRPv3/IPv4 and reports
//! which one matched ([`ChecksumKind`]); [`Repr::emit`] writes the form chosen by the caller.

pub mod checksum;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of VRRP.
pub const IP_PROTOCOL: u8 = 112;
/// IPv4 multicast group of VRRP (224.0.0.18).
pub const MCAST_V4: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// IPv6 multicast group of VRRP (ff02::12).
pub const MCAST_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x12);
/// TTL / hop limit every advertisement must carry.
pub const TTL: u8 = 255;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 8;
/// Length of the VRRPv2 authentication data.
pub const AUTH_LEN: usize = 8;

mod field {
    use std::ops::Range;
    pub(super) const VER_TYPE: usize = 0;
    pub(super) const VRID: usize = 1;
    pub(super) const PRIORITY: usize = 2;
    pub(super) const COUNT: usize = 3;
    pub(super) const MAX_ADVER: Range<usize> = 4..6;
    pub(super) const AUTH_TYPE: usize = 4;
    pub(super) const ADVER_INT: usize = 5;
    pub(super) const CHECKSUM: Range<usize> = 6..8;
    pub(super) const ADDRS: usize = 8;
}

/// VRRP version field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// RFC 3768.
    V2,
    /// RFC 5798.
    V3,
    /// Anything else.
    Unknown(u8),
}

impl From<u8> for Version {
    fn from(v: u8) -> Self {
        match v {
            2 => Version::V2,
            3 => Version::V3,
            x => Version::Unknown(x),
        }
    }
}

impl From<Version> for u8 {
    fn from(v: Version) -> u8 {
        match v {
            Version::V2 => 2,
            Version::V3 => 3,
            Version::Unknown(x) => x,
        }
    }
}

/// VRRPv2 authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Auth {
    /// Auth type 0 (also what VRRPv3 uses: it has no auth field).
    None,
    /// Auth type 1, simple text password, zero padded to 8 bytes.
    Pass([u8; 8]),
    /// Any other auth type (2 = IP AH, deprecated) with its data.
    Other {
        /// Auth type field.
        kind: u8,
        /// Authentication data.
        data: [u8; 8],
    },
}

impl Auth {
    /// A `PASS` authentication from a keepalived `auth_pass` (truncated to 8 bytes, like keepalived).
    #[must_use]
    pub fn pass(password: &str) -> Auth {
        let mut d = [0u8; 8];
        let b = password.as_bytes();
        let n = b.len().min(8);
        d[..n].copy_from_slice(&b[..n]);
        Auth::Pass(d)
    }

    fn kind(&self) -> u8 {
        match self {
            Auth::None => 0,
            Auth::Pass(_) => 1,
            Auth::Other { kind, .. } => *kind,
        }
    }

    fn data(&self) -> [u8; 8] {
        match self {
            Auth::None => [0; 8],
            Auth::Pass(d) | Auth::Other { data: d, .. } => *d,
        }
    }
}

/// Which checksum form a VRRPv3 packet carried, or should carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChecksumKind {
    /// Pseudo-header + message (keepalived, Wireshark, RFC 5798 errata). The default.
    #[default]
    PseudoHeader,
    /// Message only (VRRPv2 always; VRRPv3/IPv4 per a reading of RFC 9568).
    MessageOnly,
}

/// Why a received packet was dropped (RFC 5798 §7.1 plus VRRPv2 checks). Each reason is a
/// metrics label ([`DropReason::label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// Shorter than the fixed header or than the address count implies.
    #[error("packet too short")]
    Truncated,
    /// TTL / hop limit is not 255.
    #[error("ttl/hop limit {0} is not 255")]
    Ttl(u8),
    /// Unsupported version.
    #[error("unsupported version {0}")]
    Version(u8),
    /// Version does not match the instance.
    #[error("version does not match the instance")]
    VersionMismatch,
    /// Type is not 1 (advertisement).
    #[error("unknown type {0}")]
    Type(u8),
    /// Length and address count disagree.
    #[error("length does not match address count")]
    Length,
    /// Bad checksum.
    #[error("bad checksum")]
    Checksum,
    /// No instance with this VRID on the interface.
    #[error("vrid not configured")]
    UnknownVrid,
    /// Owner rules: advert for an address we own with priority 255.
    #[error("owner conflict")]
    Owner,
    /// VRRPv2 authentication mismatch.
    #[error("authentication mismatch")]
    Auth,
    /// VRRPv2 advertisement interval differs from ours.
    #[error("advertisement interval mismatch")]
    Interval,
    /// The address list differs from ours (logged, as keepalived does).
    #[error("address list mismatch")]
    Addresses,
    /// VRRPv2 over IPv6 does not exist.
    #[error("address family not supported for this version")]
    Family,
    /// The packet came from one of our own addresses.
    #[error("own packet looped back")]
    Own,
}

impl DropReason {
    /// Short stable name, used as the `reason` metrics label.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::Ttl(_) => "ttl",
            DropReason::Version(_) => "version",
            DropReason::VersionMismatch => "version_mismatch",
            DropReason::Type(_) => "type",
            DropReason::Length => "length",
            DropReason::Checksum => "checksum",
            DropReason::UnknownVrid => "vrid",
            DropReason::Owner => "owner",
            DropReason::Auth => "auth",
            DropReason::Interval => "interval",
            DropReason::Addresses => "addresses",
            DropReason::Family => "family",
            DropReason::Own => "own",
        }
    }

    /// Every label, for pre-registering metrics.
    pub const ALL_LABELS: &'static [&'static str] = &[
        "truncated",
        "ttl",
        "version",
        "version_mismatch",
        "type",
        "length",
        "checksum",
        "vrid",
        "owner",
        "auth",
        "interval",
        "addresses",
        "family",
        "own",
    ];
}

/// A read/write view of a VRRP message (without the IP header).
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checking its length.
    pub fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer, checking it is at least [`HEADER_LEN`] long; after this no getter panics.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, DropReason> {
        let p = Packet::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the buffer holds the fixed header.
    pub fn check_len(&self) -> Result<(), DropReason> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(DropReason::Truncated)
        } else {
            Ok(())
        }
    }

    /// Returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Version field.
    pub fn version(&self) -> Version {
        Version::from(self.buffer.as_ref()[field::VER_TYPE] >> 4)
    }
    /// Type field (1 = advertisement).
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::VER_TYPE] & 0x0f
    }
    /// Virtual router id.
    pub fn vrid(&self) -> u8 {
        self.buffer.as_ref()[field::VRID]
    }
    /// Priority (0 = master is stopping, 255 = address owner).
    pub fn priority(&self) -> u8 {
        self.buffer.as_ref()[field::PRIORITY]
    }
    /// Count of addresses.
    pub fn addr_count(&self) -> u8 {
        self.buffer.as_ref()[field::COUNT]
    }
    /// VRRPv3 max advertisement interval in centiseconds (12 bits).
    pub fn max_adver_int(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::MAX_ADVER];
        u16::from_be_bytes([b[0], b[1]]) & 0x0fff
    }
    /// VRRPv2 auth type.
    pub fn auth_type(&self) -> u8 {
        self.buffer.as_ref()[field::AUTH_TYPE]
    }
    /// VRRPv2 advertisement interval in seconds.
    pub fn adver_int(&self) -> u8 {
        self.buffer.as_ref()[field::ADVER_INT]
    }
    /// Checksum field.
    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }
    /// Everything after the fixed header (addresses, then v2 auth data).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::ADDRS..]
    }
    /// The whole message.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version and type.
    pub fn set_version_type(&mut self, version: Version, msg_type: u8) {
        self.buffer.as_mut()[field::VER_TYPE] = (u8::from(version) << 4) | (msg_type & 0x0f);
    }
    /// Sets the VRID.
    pub fn set_vrid(&mut self, v: u8) {
        self.buffer.as_mut()[field::VRID] = v;
    }
    /// Sets the priority.
    pub fn set_priority(&mut self, v: u8) {
        self.buffer.as_mut()[field::PRIORITY] = v;
    }
    /// Sets the address count.
    pub fn set_addr_count(&mut self, v: u8) {
        self.buffer.as_mut()[field::COUNT] = v;
    }
    /// Sets the VRRPv3 interval (reserved bits cleared).
    pub fn set_max_adver_int(&mut self, cs: u16) {
        self.buffer.as_mut()[field::MAX_ADVER].copy_from_slice(&(cs & 0x0fff).to_be_bytes());
    }
    /// Sets the VRRPv2 auth type.
    pub fn set_auth_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::AUTH_TYPE] = v;
    }
    /// Sets the VRRPv2 interval.
    pub fn set_adver_int(&mut self, v: u8) {
        self.buffer.as_mut()[field::ADVER_INT] = v;
    }
    /// Sets the checksum field.
    pub fn set_checksum(&mut self, v: u16) {
        self.buffer.as_mut()[field::CHECKSUM].copy_from_slice(&v.to_be_bytes());
    }
    /// Mutable payload.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::ADDRS..]
    }
}

/// High-level representation of an advertisement.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repr {
    /// [`Version::V2`] or [`Version::V3`].
    pub version: Version,
    /// Virtual router id (1..=255).
    pub vrid: u8,
    /// Priority.
    pub priority: u8,
    /// VRRPv3: centiseconds (at most 4095). VRRPv2: seconds (at most 255).
    pub interval: u16,
    /// VRRPv2 authentication ([`Auth::None`] for VRRPv3).
    pub auth: Auth,
    /// Virtual addresses, all of the family of the IP header.
    pub addrs: Vec<IpAddr>,
}

fn family_len(src: IpAddr) -> usize {
    if src.is_ipv4() {
        4
    } else {
        16
    }
}

fn message_sum_ok(bytes: &[u8]) -> bool {
    checksum::data(bytes) == 0xffff
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, len: usize) -> Option<u16> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(checksum::pseudo_header_v4(s, d, IP_PROTOCOL, u16::try_from(len).ok()?)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(checksum::pseudo_header_v6(s, d, IP_PROTOCOL, u32::try_from(len).ok()?)),
        _ => None,
    }
}

impl Repr {
    /// Parses and validates a message received from `src` to `dst` (the IP header's addresses,
    /// needed for the pseudo-header). Checks version, type, length vs count and checksum; TTL and
    /// per-instance rules are the caller's (see [`crate::proto`]).
    pub fn parse<T: AsRef<[u8]>>(
        packet: &Packet<T>,
        src: IpAddr,
        dst: IpAddr,
    ) -> Result<(Repr, ChecksumKind), DropReason> {
        packet.check_len()?;
        let version = packet.version();
        match version {
            Version::V2 | Version::V3 => {}
            Version::Unknown(v) => return Err(DropReason::Version(v)),
        }
        if packet.msg_type() != 1 {
            return Err(DropReason::Type(packet.msg_type()));
        }
        if version == Version::V2 && src.is_ipv6() {
            return Err(DropReason::Family);
        }
        let alen = family_len(src);
        let count = usize::from(packet.addr_count());
        let auth_len = if version == Version::V2 { AUTH_LEN } else { 0 };
        let expect = HEADER_LEN + count * alen + auth_len;
        let bytes = packet.as_bytes();
        if bytes.len() < expect {
            return Err(DropReason::Truncated);
        }
        if bytes.len() != expect {
            return Err(DropReason::Length);
        }
        let kind = match version {
            Version::V2 => {
                if !(cfg!(fuzzing) || message_sum_ok(bytes)) {
                    return Err(DropReason::Checksum);
                }
                ChecksumKind::MessageOnly
            }
            _ => {
                let ph = pseudo_sum(src, dst, bytes.len()).ok_or(DropReason::Family)?;
                if cfg!(fuzzing) || checksum::combine(&[ph, checksum::data(bytes)]) == 0xffff {
                    ChecksumKind::PseudoHeader
                } else if src.is_ipv4() && message_sum_ok(bytes) {
                    ChecksumKind::MessageOnly
                } else {
                    return Err(DropReason::Checksum);
                }
            }
        };
        let payload = packet.payload();
        let addrs = payload[..count * alen]
            .chunks_exact(alen)
            .map(|c| {
                if alen == 4 {
                    IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3]))
                } else {
                    let mut o = [0u8; 16];
                    o.copy_from_slice(c);
                    IpAddr::V6(Ipv6Addr::from(o))
                }
            })
            .collect();
        let (interval, auth) = if version == Version::V2 {
            let mut data = [0u8; 8];
            data.copy_from_slice(&payload[count * alen..count * alen + AUTH_LEN]);
            let auth = match packet.auth_type() {
                0 => Auth::None,
                1 => Auth::Pass(data),
                kind => Auth::Other { kind, data },
            };
            (u16::from(packet.adver_int()), auth)
        } else {
            (packet.max_adver_int(), Auth::None)
        };
        Ok((Repr { version, vrid: packet.vrid(), priority: packet.priority(), interval, auth, addrs }, kind))
    }

    /// Length of the emitted message for addresses of `src`'s family.
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        let alen = self.addrs.first().map_or(4, |a| family_len(*a));
        HEADER_LEN + self.addrs.len() * alen + if self.version == Version::V2 { AUTH_LEN } else { 0 }
    }

    /// Writes the message into `packet` (which must be exactly [`Repr::buffer_len`] long) with the
    /// checksum for a packet from `src` to `dst`. `kind` matters only for VRRPv3 over IPv4.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Packet<T>,
        src: IpAddr,
        dst: IpAddr,
        kind: ChecksumKind,
    ) -> Result<(), EmitError> {
        if packet.as_bytes().len() != self.buffer_len() {
            return Err(EmitError::BufferLength);
        }
        if self.addrs.len() > 255 || self.addrs.iter().any(|a| a.is_ipv4() != src.is_ipv4()) {
            return Err(EmitError::Addresses);
        }
        packet.set_version_type(self.version, 1);
        packet.set_vrid(self.vrid);
        packet.set_priority(self.priority);
        // Checked above: at most 255 addresses.
        packet.set_addr_count(self.addrs.len() as u8);
        match self.version {
            Version::V2 => {
                packet.set_auth_type(self.auth.kind());
                packet.set_adver_int(u8::try_from(self.interval).map_err(|_| EmitError::Interval)?);
            }
            Version::V3 => {
                if self.interval > 0x0fff {
                    return Err(EmitError::Interval);
                }
                packet.set_max_adver_int(self.interval);
            }
            Version::Unknown(_) => return Err(EmitError::Version),
        }
        packet.set_checksum(0);
        let mut off = 0;
        let payload = packet.payload_mut();
        for a in &self.addrs {
            match a {
                IpAddr::V4(a) => {
                    payload[off..off + 4].copy_from_slice(&a.octets());
                    off += 4;
                }
                IpAddr::V6(a) => {
                    payload[off..off + 16].copy_from_slice(&a.octets());
                    off += 16;
                }
            }
        }
        if self.version == Version::V2 {
            payload[off..off + AUTH_LEN].copy_from_slice(&self.auth.data());
        }
        let len = packet.as_bytes().len();
        let body = checksum::data(packet.as_bytes());
        let sum = match (self.version, kind, src) {
            (Version::V2, _, _) | (Version::V3, ChecksumKind::MessageOnly, IpAddr::V4(_)) => body,
            _ => checksum::combine(&[pseudo_sum(src, dst, len).ok_or(EmitError::Addresses)?, body]),
        };
        packet.set_checksum(!sum);
        Ok(())
    }

    /// Convenience: emits into a new vector.
    pub fn to_bytes(&self, src: IpAddr, dst: IpAddr, kind: ChecksumKind) -> Result<Vec<u8>, EmitError> {
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut v[..]), src, dst, kind)?;
        Ok(v)
    }
}

/// Why a [`Repr`] could not be emitted (caller misuse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// Buffer is not exactly `buffer_len()` long.
    #[error("buffer length does not match")]
    BufferLength,
    /// Mixed families or more than 255 addresses.
    #[error("addresses do not fit")]
    Addresses,
    /// Interval out of range for the version.
    #[error("interval out of range")]
    Interval,
    /// Unknown version.
    #[error("cannot emit an unknown version")]
    Version,
}

impl fmt::Display for Repr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "VRRP{:?} vrid={} prio={} int={} addrs={:?}",
            self.version, self.vrid, self.priority, self.interval, self.addrs
        )
    }
}

/// Parses a raw IPv4 datagram as read from a raw socket (IP header included): returns source,
/// destination, TTL and the VRRP message bytes. Used by the IO layer and the fuzz target.
pub fn split_ipv4(datagram: &[u8]) -> Result<(Ipv4Addr, Ipv4Addr, u8, &[u8]), DropReason> {
    if datagram.len() < 20 || datagram[0] >> 4 != 4 {
        return Err(DropReason::Truncated);
    }
    let ihl = usize::from(datagram[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
    if ihl < 20 || datagram.len() < ihl || total < ihl {
        return Err(DropReason::Truncated);
    }
    let end = total.min(datagram.len());
    let src = Ipv4Addr::new(datagram[12], datagram[13], datagram[14], datagram[15]);
    let dst = Ipv4Addr::new(datagram[16], datagram[17], datagram[18], datagram[19]);
    Ok((src, dst, datagram[8], &datagram[ihl..end]))
}

/// Parses an IPv6 packet carrying VRRP directly after the fixed header (as VRRP packets are
/// sent: no extension headers): returns source, destination, hop limit and the VRRP message.
pub fn split_ipv6(packet: &[u8]) -> Result<(Ipv6Addr, Ipv6Addr, u8, &[u8]), DropReason> {
    if packet.len() < 40 || packet[0] >> 4 != 6 {
        return Err(DropReason::Truncated);
    }
    if packet[6] != IP_PROTOCOL {
        return Err(DropReason::Type(packet[6]));
    }
    let plen = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
    let end = (40 + plen).min(packet.len());
    let mut s = [0u8; 16];
    s.copy_from_slice(&packet[8..24]);
    let mut d = [0u8; 16];
    d.copy_from_slice(&packet[24..40]);
    Ok((Ipv6Addr::from(s), Ipv6Addr::from(d), packet[7], &packet[40..end]))
}

/// Strips an untagged Ethernet header from a frame, returning the IPv6 packet if the frame
/// carries IPv6 (ethertype 0x86dd) and comes from another station than `own_mac`.
#[must_use]
pub fn ipv6_from_frame(frame: &[u8], own_mac: Option<[u8; 6]>) -> Option<&[u8]> {
    if frame.len() < 14 || frame[12..14] != [0x86, 0xdd] {
        return None;
    }
    if own_mac.is_some_and(|m| frame[6..12] == m) {
        return None;
    }
    Some(&frame[14..])
}

#[cfg(test)]
mod tests;
