//! The witness protocol's frames (smoltcp's `Packet`/`Repr` pattern).
//!
//! Every frame is an 8-byte header and `length` bytes of body, all big-endian:
//!
//! ```text
//!  0       4         5      6           8
//!  +-------+---------+------+-----------+---------------------------+----------------+
//!  | magic | version | type | length    | fields of the type ...    | tag (16 bytes) |
//!  +-------+---------+------+-----------+---------------------------+----------------+
//!  "RPWT"     1                (body bytes, tag included)              all but Hello/Auth
//! ```
//!
//! | type | frame | fields |
//! |---|---|---|
//! | 1 | `Hello` | challenge (32) |
//! | 2 | `Auth` | mac (32) |
//! | 3 / 4 / 5 | `Acquire` / `Renew` / `Release` | seq (8), ttl ms (4), resource (1 + n), node (1 + n) |
//! | 6 | `Granted` | seq (8), ttl ms (4) |
//! | 7 | `Refused` | seq (8), reason (1), remaining ms (4), holder (1 + n) |
//! | 8 | `Released` | seq (8), was holder (1) |
//! | 9 / 10 | `Ping` / `Pong` | seq (8) (a client that wants nothing keeps the connection alive) |
//!
//! Names are 1 to [`MAX_NAME`] bytes of UTF-8, prefixed by their length. Every frame after the
//! handshake ends with a 16-byte tag (a keyed MAC over the frame and its position in the
//! session, see [`super::auth`]); [`Packet::body`] excludes it and [`Repr::emit`] leaves it zero
//! for the session to fill.

use std::fmt;

/// `RPWT`.
pub const MAGIC: u32 = 0x5250_5754;
/// The protocol version this code speaks.
pub const VERSION: u8 = 1;
/// Header length.
pub const HEADER_LEN: usize = 8;
/// Length of the tag that ends every frame after the handshake.
pub const TAG_LEN: usize = 16;
/// Longest resource or node name, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest body accepted (the largest frame is well under it).
pub const MAX_BODY: usize = 512;

mod field {
    use std::ops::Range;
    pub(super) const MAGIC: Range<usize> = 0..4;
    pub(super) const VERSION: usize = 4;
    pub(super) const TYPE: usize = 5;
    pub(super) const LENGTH: Range<usize> = 6..8;
}

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// Challenge (both sides, first frame).
    Hello,
    /// Answer to the peer's challenge.
    Auth,
    /// Take a lease.
    Acquire,
    /// Extend a lease (the same contract as `Acquire`).
    Renew,
    /// End a lease.
    Release,
    /// A lease was granted or extended.
    Granted,
    /// A lease was refused.
    Refused,
    /// Answer to `Release`.
    Released,
    /// Keepalive.
    Ping,
    /// Keepalive answer.
    Pong,
    /// Any other code.
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(v: u8) -> Self {
        match v {
            1 => FrameType::Hello,
            2 => FrameType::Auth,
            3 => FrameType::Acquire,
            4 => FrameType::Renew,
            5 => FrameType::Release,
            6 => FrameType::Granted,
            7 => FrameType::Refused,
            8 => FrameType::Released,
            9 => FrameType::Ping,
            10 => FrameType::Pong,
            x => FrameType::Unknown(x),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(t: FrameType) -> u8 {
        match t {
            FrameType::Hello => 1,
            FrameType::Auth => 2,
            FrameType::Acquire => 3,
            FrameType::Renew => 4,
            FrameType::Release => 5,
            FrameType::Granted => 6,
            FrameType::Refused => 7,
            FrameType::Released => 8,
            FrameType::Ping => 9,
            FrameType::Pong => 10,
            FrameType::Unknown(x) => x,
        }
    }
}

impl FrameType {
    /// Whether frames of this type end with a session tag (every type but the handshake's).
    #[must_use]
    pub fn tagged(self) -> bool {
        !matches!(self, FrameType::Hello | FrameType::Auth)
    }
}

/// Why a refusal was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// Another node holds a live lease.
    Held,
    /// The witness started less than its longest TTL ago: a lease granted before the restart
    /// may still be live, so it grants nothing yet.
    Starting,
    /// The request was invalid (TTL of zero).
    BadRequest,
    /// Any other code.
    Unknown(u8),
}

impl From<u8> for RefuseReason {
    fn from(v: u8) -> Self {
        match v {
            1 => RefuseReason::Held,
            2 => RefuseReason::Starting,
            3 => RefuseReason::BadRequest,
            x => RefuseReason::Unknown(x),
        }
    }
}

impl From<RefuseReason> for u8 {
    fn from(r: RefuseReason) -> u8 {
        match r {
            RefuseReason::Held => 1,
            RefuseReason::Starting => 2,
            RefuseReason::BadRequest => 3,
            RefuseReason::Unknown(x) => x,
        }
    }
}

impl fmt::Display for RefuseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefuseReason::Held => f.write_str("held by another node"),
            RefuseReason::Starting => f.write_str("the witness restarted less than its longest ttl ago"),
            RefuseReason::BadRequest => f.write_str("invalid request"),
            RefuseReason::Unknown(x) => write!(f, "reason {x}"),
        }
    }
}

/// Decoding errors: the peer sent something malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the header or its length says.
    #[error("truncated frame")]
    Truncated,
    /// Not a witness frame.
    #[error("bad magic {0:#010x} (not a witness frame)")]
    BadMagic(u32),
    /// A version this code does not speak.
    #[error("protocol version {0} (this witness speaks {VERSION})")]
    BadVersion(u8),
    /// Body longer than [`MAX_BODY`].
    #[error("frame body of {0} bytes is too large")]
    TooLarge(usize),
    /// A frame type this code does not know.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// The body does not have the layout of its type.
    #[error("malformed {0:?} frame")]
    Malformed(FrameType),
    /// A name is empty, too long or not UTF-8.
    #[error("bad name in {0:?} frame")]
    BadName(FrameType),
}

/// A length-checked view of one frame.
#[derive(Debug, Clone)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps `buffer` without checks (getters may panic on a short buffer; use
    /// [`Packet::new_checked`] for input).
    pub fn new_unchecked(buffer: T) -> Self {
        Packet { buffer }
    }

    /// Checks that the buffer holds the header and the whole body it announces (at most
    /// [`MAX_BODY`], a tag where the type needs one); no getter panics afterwards. Magic and
    /// version are not checked here ([`Repr::parse`] does).
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let p = Packet { buffer };
        let b = p.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        let len = p.length();
        if len > MAX_BODY {
            return Err(WireError::TooLarge(len));
        }
        if b.len() < HEADER_LEN + len {
            return Err(WireError::Truncated);
        }
        if p.frame_type().tagged() && len < TAG_LEN {
            return Err(WireError::Malformed(p.frame_type()));
        }
        Ok(p)
    }

    /// Magic.
    pub fn magic(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::MAGIC];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }
    /// Version.
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }
    /// Frame type.
    pub fn frame_type(&self) -> FrameType {
        self.buffer.as_ref()[field::TYPE].into()
    }
    /// Body length (tag included).
    pub fn length(&self) -> usize {
        let b = &self.buffer.as_ref()[field::LENGTH];
        usize::from(u16::from_be_bytes([b[0], b[1]]))
    }
    /// Header and body (the tag excluded): what the tag authenticates.
    pub fn authenticated(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + self.body_len()]
    }
    /// The body without its tag.
    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.body_len()]
    }
    /// The tag (empty for the handshake's frames).
    pub fn tag(&self) -> &[u8] {
        let start = HEADER_LEN + self.body_len();
        &self.buffer.as_ref()[start..HEADER_LEN + self.length()]
    }
    /// The whole frame (header, body, tag); the buffer may be longer.
    pub fn frame(&self) -> &[u8] {
        &self.buffer.as_ref()[..HEADER_LEN + self.length()]
    }
    fn body_len(&self) -> usize {
        if self.frame_type().tagged() {
            self.length() - TAG_LEN
        } else {
            self.length()
        }
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Writes the header.
    pub fn set_header(&mut self, t: FrameType, length: usize) {
        let b = self.buffer.as_mut();
        b[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
        b[field::VERSION] = VERSION;
        b[field::TYPE] = t.into();
        // Callers pass the length of a frame they built, bounded by MAX_BODY.
        let len = u16::try_from(length).unwrap_or(u16::MAX);
        b[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }
    /// The tag bytes, to fill.
    pub fn tag_mut(&mut self) -> &mut [u8] {
        let start = HEADER_LEN + self.body_len();
        let end = HEADER_LEN + self.length();
        &mut self.buffer.as_mut()[start..end]
    }
    fn body_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + self.body_len();
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// Take the lease.
    Acquire,
    /// Extend it (same contract as acquire).
    Renew,
    /// End it.
    Release,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repr {
    /// A challenge.
    Hello {
        /// Random bytes.
        challenge: [u8; 32],
    },
    /// The answer to the peer's challenge.
    Auth {
        /// Keyed MAC.
        mac: [u8; 32],
    },
    /// A node asks about a lease.
    Request {
        /// Acquire, renew or release.
        kind: RequestKind,
        /// Echoed in the reply.
        seq: u64,
        /// Wanted time to live in milliseconds (0 for a release).
        ttl_ms: u32,
        /// The resource.
        resource: String,
        /// The requesting node.
        node: String,
    },
    /// The lease is the requester's for `ttl_ms` from when the witness received the request.
    Granted {
        /// The request's sequence number.
        seq: u64,
        /// The time to live granted (at most the one asked).
        ttl_ms: u32,
    },
    /// The lease was refused.
    Refused {
        /// The request's sequence number.
        seq: u64,
        /// Why.
        reason: RefuseReason,
        /// How long the current lease (or the start-up wait) still runs, in milliseconds.
        remaining_ms: u32,
        /// The holder (empty when none).
        holder: String,
    },
    /// Answer to a release.
    Released {
        /// The request's sequence number.
        seq: u64,
        /// Whether the requester held the lease (and no longer does).
        was_holder: bool,
    },
    /// Keepalive (the witness answers `Pong` with the same number).
    Ping {
        /// Echoed.
        seq: u64,
    },
    /// Keepalive answer.
    Pong {
        /// The ping's number.
        seq: u64,
    },
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Reads fields in order; every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
    t: FrameType,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Malformed(self.t));
        }
        let (h, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.take(4).map(be32)
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.take(8).map(be64)
    }
    fn arr32(&mut self) -> Result<[u8; 32], WireError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn name(&mut self, allow_empty: bool) -> Result<String, WireError> {
        let n = usize::from(self.u8()?);
        let b = self.take(n)?;
        if (n == 0 && !allow_empty) || n > MAX_NAME {
            return Err(WireError::BadName(self.t));
        }
        std::str::from_utf8(b).map(str::to_owned).map_err(|_| WireError::BadName(self.t))
    }
    fn end(&self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed(self.t))
        }
    }
}

struct Writer<'a> {
    b: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, v: &[u8]) {
        self.b[self.at..self.at + v.len()].copy_from_slice(v);
        self.at += v.len();
    }
    fn name(&mut self, s: &str) {
        let b = &s.as_bytes()[..s.len().min(MAX_NAME)];
        // At most MAX_NAME (64) bytes: fits a u8.
        self.bytes(&[b.len() as u8]);
        self.bytes(b);
    }
}

fn name_len(s: &str) -> usize {
    1 + s.len().min(MAX_NAME)
}

impl Repr {
    /// The frame type.
    #[must_use]
    pub fn frame_type(&self) -> FrameType {
        match self {
            Repr::Hello { .. } => FrameType::Hello,
            Repr::Auth { .. } => FrameType::Auth,
            Repr::Request { kind: RequestKind::Acquire, .. } => FrameType::Acquire,
            Repr::Request { kind: RequestKind::Renew, .. } => FrameType::Renew,
            Repr::Request { kind: RequestKind::Release, .. } => FrameType::Release,
            Repr::Granted { .. } => FrameType::Granted,
            Repr::Refused { .. } => FrameType::Refused,
            Repr::Released { .. } => FrameType::Released,
            Repr::Ping { .. } => FrameType::Ping,
            Repr::Pong { .. } => FrameType::Pong,
        }
    }

    fn body_len(&self) -> usize {
        match self {
            Repr::Hello { .. } | Repr::Auth { .. } => 32,
            Repr::Request { resource, node, .. } => 12 + name_len(resource) + name_len(node),
            Repr::Granted { .. } => 12,
            Repr::Refused { holder, .. } => 13 + name_len(holder),
            Repr::Released { .. } => 9,
            Repr::Ping { .. } | Repr::Pong { .. } => 8,
        }
    }

    /// Bytes needed to emit this frame (tag included). Names longer than [`MAX_NAME`] bytes are
    /// cut there: check them first with [`valid_name`].
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        let tag = if self.frame_type().tagged() { TAG_LEN } else { 0 };
        HEADER_LEN + self.body_len() + tag
    }

    /// Encodes into `p`, whose buffer holds at least [`Repr::buffer_len`] bytes. The tag is left
    /// zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Packet<T>) {
        let t = self.frame_type();
        p.set_header(t, self.buffer_len() - HEADER_LEN);
        let mut w = Writer { b: p.body_mut(), at: 0 };
        match self {
            Repr::Hello { challenge: a } | Repr::Auth { mac: a } => w.bytes(a),
            Repr::Request { seq, ttl_ms, resource, node, .. } => {
                w.bytes(&seq.to_be_bytes());
                w.bytes(&ttl_ms.to_be_bytes());
                w.name(resource);
                w.name(node);
            }
            Repr::Granted { seq, ttl_ms } => {
                w.bytes(&seq.to_be_bytes());
                w.bytes(&ttl_ms.to_be_bytes());
            }
            Repr::Refused { seq, reason, remaining_ms, holder } => {
                w.bytes(&seq.to_be_bytes());
                w.bytes(&[u8::from(*reason)]);
                w.bytes(&remaining_ms.to_be_bytes());
                w.name(holder);
            }
            Repr::Released { seq, was_holder } => {
                w.bytes(&seq.to_be_bytes());
                w.bytes(&[u8::from(*was_holder)]);
            }
            Repr::Ping { seq } | Repr::Pong { seq } => w.bytes(&seq.to_be_bytes()),
        }
        p.tag_mut().fill(0);
    }

    /// Encodes into a new vector (tag zero).
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.buffer_len()];
        self.emit(&mut Packet::new_unchecked(&mut v[..]));
        v
    }

    /// Decodes a checked packet (the tag is not verified here: see [`super::auth`]).
    pub fn parse<T: AsRef<[u8]>>(p: &Packet<T>) -> Result<Repr, WireError> {
        if p.magic() != MAGIC {
            return Err(WireError::BadMagic(p.magic()));
        }
        if p.version() != VERSION {
            return Err(WireError::BadVersion(p.version()));
        }
        let t = p.frame_type();
        let mut r = Reader { b: p.body(), t };
        let request = |kind, r: &mut Reader<'_>| -> Result<Repr, WireError> {
            Ok(Repr::Request { kind, seq: r.u64()?, ttl_ms: r.u32()?, resource: r.name(false)?, node: r.name(false)? })
        };
        let repr = match t {
            FrameType::Hello => Repr::Hello { challenge: r.arr32()? },
            FrameType::Auth => Repr::Auth { mac: r.arr32()? },
            FrameType::Acquire => request(RequestKind::Acquire, &mut r)?,
            FrameType::Renew => request(RequestKind::Renew, &mut r)?,
            FrameType::Release => request(RequestKind::Release, &mut r)?,
            FrameType::Granted => Repr::Granted { seq: r.u64()?, ttl_ms: r.u32()? },
            FrameType::Refused => {
                Repr::Refused { seq: r.u64()?, reason: r.u8()?.into(), remaining_ms: r.u32()?, holder: r.name(true)? }
            }
            FrameType::Released => {
                let seq = r.u64()?;
                let was_holder = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(WireError::Malformed(t)),
                };
                Repr::Released { seq, was_holder }
            }
            FrameType::Ping => Repr::Ping { seq: r.u64()? },
            FrameType::Pong => Repr::Pong { seq: r.u64()? },
            FrameType::Unknown(x) => return Err(WireError::UnknownType(x)),
        };
        r.end()?;
        Ok(repr)
    }

    /// Checks and decodes one whole frame.
    pub fn parse_bytes(b: &[u8]) -> Result<Repr, WireError> {
        Repr::parse(&Packet::new_checked(b)?)
    }
}

/// Whether `s` can be sent as a resource or node name (1 to [`MAX_NAME`] bytes).
#[must_use]
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_NAME
}

/// How many bytes the frame starting in `b` takes, once its header is there (for reading a
/// stream): `None` while fewer than [`HEADER_LEN`] bytes are buffered.
#[must_use]
pub fn frame_len(b: &[u8]) -> Option<usize> {
    (b.len() >= HEADER_LEN).then(|| HEADER_LEN + usize::from(u16::from_be_bytes([b[6], b[7]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_ACQUIRE: [u8; 44] = [
        0x52, 0x50, 0x57, 0x54, 1, 3, 0, 36, // header: Acquire, 36 body bytes
        0, 0, 0, 0, 0, 0, 0, 7, // seq 7
        0, 0, 0x0b, 0xb8, // ttl 3000 ms
        2, b'r', b'0', // resource "r0"
        4, b'm', b'a', b'i', b'n', // node "main"
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // tag (left zero by emit)
    ];

    fn golden_acquire() -> Repr {
        Repr::Request { kind: RequestKind::Acquire, seq: 7, ttl_ms: 3000, resource: "r0".into(), node: "main".into() }
    }

    #[test]
    fn acquire_golden_both_ways() {
        assert_eq!(Repr::parse_bytes(&GOLDEN_ACQUIRE), Ok(golden_acquire()));
        let mut buf = [0xa5u8; 44];
        golden_acquire().emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, GOLDEN_ACQUIRE);
        assert_eq!(golden_acquire().buffer_len(), 44);
    }

    #[test]
    fn refused_golden_both_ways() {
        let golden = [
            0x52, 0x50, 0x57, 0x54, 1, 7, 0, 35, // header: Refused, 35 body bytes
            0, 0, 0, 0, 0, 0, 1, 0, // seq 256
            1, // held
            0, 0, 0x03, 0xe8, // 1000 ms left
            5, b'b', b'a', b'c', b'k', b'u', // holder "backu"
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let m = Repr::Refused { seq: 256, reason: RefuseReason::Held, remaining_ms: 1000, holder: "backu".into() };
        let mut buf = [0xa5u8; 43];
        m.emit(&mut Packet::new_unchecked(&mut buf[..]));
        assert_eq!(buf, golden);
        assert_eq!(Repr::parse_bytes(&golden), Ok(m));
        let p = Packet::new_checked(&golden[..]).unwrap();
        assert_eq!(p.tag().len(), TAG_LEN);
        assert_eq!(p.authenticated(), &golden[..27]);
    }

    #[test]
    fn hello_golden_has_no_tag() {
        let mut golden = vec![0x52, 0x50, 0x57, 0x54, 1, 1, 0, 32];
        golden.extend_from_slice(&[9; 32]);
        let m = Repr::Hello { challenge: [9; 32] };
        assert_eq!(m.to_vec(), golden);
        assert_eq!(Repr::parse_bytes(&golden), Ok(m));
        assert!(Packet::new_checked(&golden[..]).unwrap().tag().is_empty());
    }

    fn all_kinds() -> Vec<Repr> {
        vec![
            Repr::Hello { challenge: [1; 32] },
            Repr::Auth { mac: [2; 32] },
            golden_acquire(),
            Repr::Request {
                kind: RequestKind::Renew,
                seq: u64::MAX,
                ttl_ms: u32::MAX,
                resource: "x".into(),
                node: "é".into(),
            },
            Repr::Request { kind: RequestKind::Release, seq: 0, ttl_ms: 0, resource: "r".repeat(64), node: "n".into() },
            Repr::Granted { seq: 3, ttl_ms: 2500 },
            Repr::Refused { seq: 4, reason: RefuseReason::Starting, remaining_ms: 9, holder: String::new() },
            Repr::Refused { seq: 4, reason: RefuseReason::Unknown(77), remaining_ms: 9, holder: "h".into() },
            Repr::Released { seq: 5, was_holder: true },
            Repr::Released { seq: 6, was_holder: false },
            Repr::Ping { seq: 7 },
            Repr::Pong { seq: 7 },
        ]
    }

    #[test]
    fn round_trips() {
        for m in all_kinds() {
            let v = m.to_vec();
            assert_eq!(frame_len(&v), Some(v.len()));
            assert_eq!(Repr::parse_bytes(&v), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert_eq!(Repr::parse_bytes(&GOLDEN_ACQUIRE[..7]), Err(WireError::Truncated));
        assert_eq!(Repr::parse_bytes(&GOLDEN_ACQUIRE[..43]), Err(WireError::Truncated));
        let mut b = GOLDEN_ACQUIRE;
        b[0] = 0;
        assert!(matches!(Repr::parse_bytes(&b), Err(WireError::BadMagic(_))));
        let mut b = GOLDEN_ACQUIRE;
        b[4] = 2;
        assert_eq!(Repr::parse_bytes(&b), Err(WireError::BadVersion(2)));
        let mut b = GOLDEN_ACQUIRE;
        b[5] = 99;
        assert_eq!(Repr::parse_bytes(&b), Err(WireError::UnknownType(99)));
        let mut b = GOLDEN_ACQUIRE;
        b[20] = 3; // resource length 3 runs into the node name
        assert!(Repr::parse_bytes(&b).is_err());
        let mut b = GOLDEN_ACQUIRE;
        b[20] = 0; // empty resource
        assert!(Repr::parse_bytes(&b).is_err());
        let mut b = GOLDEN_ACQUIRE;
        b[21] = 0xff; // not UTF-8
        assert_eq!(Repr::parse_bytes(&b), Err(WireError::BadName(FrameType::Acquire)));
        let mut b = GOLDEN_ACQUIRE.to_vec();
        b[6..8].copy_from_slice(&600u16.to_be_bytes());
        assert_eq!(Repr::parse_bytes(&b), Err(WireError::TooLarge(600)));
        // A tagged type shorter than its tag.
        assert_eq!(
            Repr::parse_bytes(&[0x52, 0x50, 0x57, 0x54, 1, 6, 0, 4, 0, 0, 0, 0]),
            Err(WireError::Malformed(FrameType::Granted))
        );
        // Trailing bytes inside the body.
        let mut v = Repr::Granted { seq: 1, ttl_ms: 1 }.to_vec();
        v.insert(20, 0);
        v[7] += 1;
        assert_eq!(Repr::parse_bytes(&v), Err(WireError::Malformed(FrameType::Granted)));
        let mut v = Repr::Released { seq: 1, was_holder: true }.to_vec();
        v[16] = 2;
        assert_eq!(Repr::parse_bytes(&v), Err(WireError::Malformed(FrameType::Released)));
    }

    use proptest::prelude::*;
    proptest! {
        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Repr::parse_bytes(&b);
        }

        #[test]
        fn parse_never_panics_on_valid_headers(t in 0u8..12, body in proptest::collection::vec(any::<u8>(), 0..120)) {
            let mut b = vec![0x52, 0x50, 0x57, 0x54, 1, t];
            b.extend_from_slice(&(body.len() as u16).to_be_bytes());
            b.extend_from_slice(&body);
            if let Ok(m) = Repr::parse_bytes(&b) {
                // Whatever parses emits back to the same bytes (tag aside).
                let v = m.to_vec();
                let n = v.len() - if m.frame_type().tagged() { TAG_LEN } else { 0 };
                prop_assert_eq!(&v[..n], &b[..n]);
            }
        }

        #[test]
        fn requests_round_trip(seq: u64, ttl: u32, r in "[a-z0-9_-]{1,64}", n in "\\PC{1,16}") {
            prop_assume!(n.len() <= MAX_NAME);
            let m = Repr::Request { kind: RequestKind::Renew, seq, ttl_ms: ttl, resource: r, node: n };
            prop_assert_eq!(Repr::parse_bytes(&m.to_vec()), Ok(m));
        }
    }
}
