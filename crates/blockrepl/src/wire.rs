//! Replication frames between two nodes.
//!
//! Every frame is a 12-byte header followed by `length` payload bytes, all big-endian:
//!
//! ```text
//!  0      4     5      6        8            12
//!  +------+-----+------+--------+------------+--------------
//!  | magic| type| flags| zero   | length     | payload ...
//!  +------+-----+------+--------+------------+--------------
//! ```
//!
//! [`FramePacket`] is the length-checked view (unknown types survive as [`FrameType::Unknown`]);
//! [`Msg`] is the decoded form with `parse`, `buffer_len` and `emit`.

pub use bytes::Bytes;
use thiserror::Error;

/// `RPRL`.
pub const MAGIC: u32 = 0x5250_524c;
/// Header length.
pub const HEADER_LEN: usize = 12;
/// Largest payload accepted (a bitmap of a 2 TiB device, or a 32 MiB write, fit).
pub const MAX_PAYLOAD: u32 = 80 << 20;

/// Data flag: FUA.
pub const DATA_FUA: u8 = 1;
/// Data flag: the range reads as zeroes (no payload bytes).
pub const DATA_ZERO: u8 = 2;

/// [`Msg::StateChangeReq`] change: the sender wants to become Primary.
pub const CHANGE_PROMOTE: u8 = 1;
/// [`Msg::StateChangeReq`] change: the sender became Secondary (its `State` frame went first);
/// the reply tells it the peer has seen that.
pub const CHANGE_DEMOTE: u8 = 2;
/// [`Msg::StateChangeReq`] change: the sender wants to declare its data bad and resync it all
/// from the replier (`invalidate`).
pub const CHANGE_INVALIDATE: u8 = 3;

/// [`Msg::StateChangeReply`] result: granted.
pub const REPLY_GRANTED: u8 = 0;
/// [`Msg::StateChangeReply`] result: refused, the replier is Primary.
pub const REPLY_PEER_PRIMARY: u8 = 1;
/// [`Msg::StateChangeReply`] result: refused, the replier is being promoted itself and wins
/// the tie-break.
pub const REPLY_PEER_PROMOTING: u8 = 2;
/// [`Msg::StateChangeReply`] result: refused, a change the replier does not know.
pub const REPLY_UNKNOWN_CHANGE: u8 = 3;
/// [`Msg::StateChangeReply`] result: refused, the replier's disk is not UpToDate (it cannot be
/// the source of a full resync).
pub const REPLY_NOT_UP_TO_DATE: u8 = 4;
/// [`Msg::StateChangeReply`] result: refused, the replier makes the same change at the same
/// time and wins the tie-break.
pub const REPLY_CONCURRENT_CHANGE: u8 = 5;

/// Frame types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameType {
    /// Challenge.
    Hello,
    /// Challenge response.
    Auth,
    /// Role, disk and generation identifiers.
    State,
    /// Out-of-sync bitmap.
    Bitmap,
    /// Application write.
    Data,
    /// Protocol B acknowledgement: received.
    RecvAck,
    /// Protocol C acknowledgement: written.
    WriteAck,
    /// End of a write epoch.
    Barrier,
    /// Epoch written and flushed.
    BarrierAck,
    /// Resync block.
    RsData,
    /// Resync block written.
    RsAck,
    /// Resync finished; carries the source's identifiers.
    SyncDone,
    /// Keepalive.
    Ping,
    /// Keepalive answer.
    PingAck,
    /// Verify: hash of a range.
    VerifyReq,
    /// Verify: peer's hash of a range.
    VerifyReply,
    /// Checksum resync: the source's hash of a range.
    RsCsum,
    /// Checksum resync: the range differs, send the data.
    RsNeed,
    /// A cluster-wide state change asked of the peer (two-phase: nothing changes before the
    /// reply).
    StateChangeReq,
    /// The peer's answer to a [`FrameType::StateChangeReq`].
    StateChangeReply,
    /// Unknown code.
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(v: u8) -> Self {
        use FrameType::*;
        match v {
            1 => Hello,
            2 => Auth,
            3 => State,
            4 => Bitmap,
            5 => Data,
            6 => RecvAck,
            7 => WriteAck,
            8 => Barrier,
            9 => BarrierAck,
            10 => RsData,
            11 => RsAck,
            12 => SyncDone,
            13 => Ping,
            14 => PingAck,
            15 => VerifyReq,
            16 => VerifyReply,
            17 => RsCsum,
            18 => RsNeed,
            19 => StateChangeReq,
            20 => StateChangeReply,
            x => Unknown(x),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(t: FrameType) -> u8 {
        use FrameType::*;
        match t {
            Hello => 1,
            Auth => 2,
            State => 3,
            Bitmap => 4,
            Data => 5,
            RecvAck => 6,
            WriteAck => 7,
            Barrier => 8,
            BarrierAck => 9,
            RsData => 10,
            RsAck => 11,
            SyncDone => 12,
            Ping => 13,
            PingAck => 14,
            VerifyReq => 15,
            VerifyReply => 16,
            RsCsum => 17,
            RsNeed => 18,
            StateChangeReq => 19,
            StateChangeReply => 20,
            Unknown(x) => x,
        }
    }
}

/// Decoding errors (the peer sent something malformed).
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Not enough bytes.
    #[error("truncated frame")]
    Truncated,
    /// Wrong magic.
    #[error("bad frame magic {0:#x}")]
    BadMagic(u32),
    /// Payload longer than allowed.
    #[error("frame payload of {0} bytes is too large")]
    TooLarge(u32),
    /// Unknown frame type.
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    /// Payload has the wrong length for its type.
    #[error("bad payload length for {0:?}")]
    BadLength(FrameType),
}

mod field {
    use std::ops::Range;
    pub(super) const MAGIC: Range<usize> = 0..4;
    pub(super) const TYPE: usize = 4;
    pub(super) const FLAGS: usize = 5;
    pub(super) const ZERO: Range<usize> = 6..8;
    pub(super) const LENGTH: Range<usize> = 8..12;
}

/// Big-endian field readers shared by both codecs (replication frames and NBD). Callers pass a
/// slice already length-checked by their `new_checked`.
pub(crate) fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
pub(crate) fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
pub(crate) fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// A frame header view.
#[derive(Debug, Clone)]
pub struct FramePacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> FramePacket<T> {
    /// Checks the header length; getters never panic afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Self { buffer })
    }
    /// Magic.
    pub fn magic(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::MAGIC])
    }
    /// Frame type.
    pub fn frame_type(&self) -> FrameType {
        self.buffer.as_ref()[field::TYPE].into()
    }
    /// Flags.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    /// Payload length.
    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::LENGTH])
    }
    /// Checks magic and length limit; returns the payload length.
    pub fn check_header(&self) -> Result<usize, WireError> {
        if self.magic() != MAGIC {
            return Err(WireError::BadMagic(self.magic()));
        }
        if self.length() > MAX_PAYLOAD {
            return Err(WireError::TooLarge(self.length()));
        }
        Ok(self.length() as usize)
    }
    /// Payload (may be shorter than `length` if the buffer is).
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = (HEADER_LEN + self.length() as usize).min(b.len());
        &b[HEADER_LEN..end]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> FramePacket<T> {
    fn set_header(&mut self, t: FrameType, flags: u8, len: u32) {
        let b = self.buffer.as_mut();
        b[field::MAGIC].copy_from_slice(&MAGIC.to_be_bytes());
        b[field::TYPE] = t.into();
        b[field::FLAGS] = flags;
        b[field::ZERO].copy_from_slice(&[0, 0]);
        b[field::LENGTH].copy_from_slice(&len.to_be_bytes());
    }
    fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

/// A node's state as announced to the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMsg {
    /// Generation identifiers: current, bitmap, history 0, history 1.
    pub gen: [u64; 4],
    /// Device size.
    pub size: u64,
    /// When last promoted (wall-clock seconds).
    pub promoted_at: u64,
    /// Changed blocks in its bitmap.
    pub changed_blocks: u64,
    /// Role code (0 Secondary, 1 Primary).
    pub role: u8,
    /// Disk state code.
    pub disk: u8,
    /// Bit 0: crashed primary; bit 1: discard my data; bit 2: this is a re-announcement; bit 3:
    /// the sender (a Primary disconnecting on purpose) tells the receiver its disk is Outdated.
    pub flags: u8,
}

const STATE_LEN: usize = 4 * 8 + 8 * 3 + 3;

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Msg {
    /// Challenge (32 random bytes).
    Hello {
        /// Challenge.
        challenge: [u8; 32],
    },
    /// Keyed MAC over (peer challenge, own challenge).
    Auth {
        /// MAC.
        mac: [u8; 32],
    },
    /// Announced state.
    State(StateMsg),
    /// Out-of-sync bitmap (little-endian words, as on disk).
    Bitmap(Vec<u8>),
    /// Application write (or zeroing with [`DATA_ZERO`]).
    Data {
        /// Sequence number.
        seq: u64,
        /// Byte offset.
        offset: u64,
        /// Length (equals `data.len()` unless zeroing).
        len: u32,
        /// [`DATA_FUA`], [`DATA_ZERO`].
        flags: u8,
        /// Bytes (shared with the local disk write, never copied).
        data: Bytes,
    },
    /// Received (protocol B).
    RecvAck {
        /// Sequence number.
        seq: u64,
    },
    /// Written (protocol C).
    WriteAck {
        /// Sequence number.
        seq: u64,
    },
    /// End of epoch.
    Barrier {
        /// Epoch number.
        epoch: u64,
    },
    /// Epoch durable.
    BarrierAck {
        /// Epoch number.
        epoch: u64,
    },
    /// Resync data (with [`DATA_ZERO`] for an all-zero range).
    RsData {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
        /// Flags.
        flags: u8,
        /// Bytes.
        data: Bytes,
    },
    /// Resync range written.
    RsAck {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Resync complete: the source's identifiers.
    SyncDone {
        /// current, bitmap, history 0, history 1.
        gen: [u64; 4],
    },
    /// Keepalive.
    Ping,
    /// Keepalive answer.
    PingAck,
    /// Verify request for a range.
    VerifyReq {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Checksum resync: hash of a range on the source.
    RsCsum {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
        /// blake3 of the range.
        hash: [u8; 32],
    },
    /// Checksum resync: the target's range differs; send it.
    RsNeed {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
    },
    /// Hash of a range on the replier.
    VerifyReply {
        /// Byte offset.
        offset: u64,
        /// Length.
        len: u32,
        /// blake3 of the range.
        hash: [u8; 32],
    },
    /// Two-phase state change, first phase: the sender asks before it changes (DRBD's
    /// cluster-wide state change).
    StateChangeReq {
        /// Sequence number, echoed in the reply.
        seq: u64,
        /// [`CHANGE_PROMOTE`], [`CHANGE_DEMOTE`] or [`CHANGE_INVALIDATE`] (others are refused).
        change: u8,
    },
    /// The answer to a [`Msg::StateChangeReq`].
    StateChangeReply {
        /// The request's sequence number.
        seq: u64,
        /// [`REPLY_GRANTED`] or a refusal code.
        result: u8,
    },
}

impl Msg {
    fn kind(&self) -> (FrameType, u8) {
        match self {
            Msg::Hello { .. } => (FrameType::Hello, 0),
            Msg::Auth { .. } => (FrameType::Auth, 0),
            Msg::State(_) => (FrameType::State, 0),
            Msg::Bitmap(_) => (FrameType::Bitmap, 0),
            Msg::Data { flags, .. } => (FrameType::Data, *flags),
            Msg::RecvAck { .. } => (FrameType::RecvAck, 0),
            Msg::WriteAck { .. } => (FrameType::WriteAck, 0),
            Msg::Barrier { .. } => (FrameType::Barrier, 0),
            Msg::BarrierAck { .. } => (FrameType::BarrierAck, 0),
            Msg::RsData { flags, .. } => (FrameType::RsData, *flags),
            Msg::RsAck { .. } => (FrameType::RsAck, 0),
            Msg::SyncDone { .. } => (FrameType::SyncDone, 0),
            Msg::Ping => (FrameType::Ping, 0),
            Msg::PingAck => (FrameType::PingAck, 0),
            Msg::VerifyReq { .. } => (FrameType::VerifyReq, 0),
            Msg::VerifyReply { .. } => (FrameType::VerifyReply, 0),
            Msg::RsCsum { .. } => (FrameType::RsCsum, 0),
            Msg::RsNeed { .. } => (FrameType::RsNeed, 0),
            Msg::StateChangeReq { .. } => (FrameType::StateChangeReq, 0),
            Msg::StateChangeReply { .. } => (FrameType::StateChangeReply, 0),
        }
    }

    fn payload_len(&self) -> usize {
        match self {
            Msg::Hello { .. } | Msg::Auth { .. } => 32,
            Msg::State(_) => STATE_LEN,
            Msg::Bitmap(b) => b.len(),
            Msg::Data { data, .. } => 20 + data.len(),
            Msg::RecvAck { .. } | Msg::WriteAck { .. } | Msg::Barrier { .. } | Msg::BarrierAck { .. } => 8,
            Msg::RsData { data, .. } => 12 + data.len(),
            Msg::RsAck { .. } | Msg::VerifyReq { .. } => 12,
            Msg::SyncDone { .. } => 32,
            Msg::Ping | Msg::PingAck => 0,
            Msg::VerifyReply { .. } | Msg::RsCsum { .. } => 44,
            Msg::RsNeed { .. } => 12,
            Msg::StateChangeReq { .. } | Msg::StateChangeReply { .. } => 9,
        }
    }

    /// Bytes needed to emit this frame.
    pub fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// Encodes into `p` (whose buffer holds at least [`Msg::buffer_len`] bytes).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut FramePacket<T>) {
        let (t, flags) = self.kind();
        p.set_header(t, flags, self.payload_len() as u32);
        let b = p.payload_mut();
        let mut w = Writer { b, at: 0 };
        match self {
            Msg::Hello { challenge } => w.bytes(challenge),
            Msg::Auth { mac } => w.bytes(mac),
            Msg::State(s) => {
                for g in s.gen {
                    w.u64(g);
                }
                w.u64(s.size);
                w.u64(s.promoted_at);
                w.u64(s.changed_blocks);
                w.bytes(&[s.role, s.disk, s.flags]);
            }
            Msg::Bitmap(bm) => w.bytes(bm),
            Msg::Data { seq, offset, len, data, .. } => {
                w.u64(*seq);
                w.u64(*offset);
                w.u32(*len);
                w.bytes(data);
            }
            Msg::RecvAck { seq } | Msg::WriteAck { seq } => w.u64(*seq),
            Msg::Barrier { epoch } | Msg::BarrierAck { epoch } => w.u64(*epoch),
            Msg::RsData { offset, len, data, .. } => {
                w.u64(*offset);
                w.u32(*len);
                w.bytes(data);
            }
            Msg::RsAck { offset, len } | Msg::VerifyReq { offset, len } | Msg::RsNeed { offset, len } => {
                w.u64(*offset);
                w.u32(*len);
            }
            Msg::SyncDone { gen } => {
                for g in gen {
                    w.u64(*g);
                }
            }
            Msg::Ping | Msg::PingAck => {}
            Msg::VerifyReply { offset, len, hash } | Msg::RsCsum { offset, len, hash } => {
                w.u64(*offset);
                w.u32(*len);
                w.bytes(hash);
            }
            Msg::StateChangeReq { seq, change: b } | Msg::StateChangeReply { seq, result: b } => {
                w.u64(*seq);
                w.bytes(&[*b]);
            }
        }
    }

    /// Encodes into a new vector.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.buffer_len()];
        // The buffer is exactly buffer_len() >= HEADER_LEN bytes long.
        if let Ok(mut p) = FramePacket::new_checked(&mut v[..]) {
            self.emit(&mut p);
        }
        v
    }

    /// Decodes a whole frame (header and payload).
    pub fn parse<T: AsRef<[u8]>>(p: &FramePacket<T>) -> Result<Self, WireError> {
        let len = p.check_header()?;
        let pl = p.payload();
        if pl.len() < len {
            return Err(WireError::Truncated);
        }
        let t = p.frame_type();
        let bad = || WireError::BadLength(t);
        let fixed = |n: usize| if pl.len() == n { Ok(()) } else { Err(bad()) };
        let arr32 = |b: &[u8]| {
            let mut a = [0u8; 32];
            a.copy_from_slice(&b[..32]);
            a
        };
        Ok(match t {
            FrameType::Hello => {
                fixed(32)?;
                Msg::Hello { challenge: arr32(pl) }
            }
            FrameType::Auth => {
                fixed(32)?;
                Msg::Auth { mac: arr32(pl) }
            }
            FrameType::State => {
                fixed(STATE_LEN)?;
                Msg::State(StateMsg {
                    gen: [be64(pl), be64(&pl[8..]), be64(&pl[16..]), be64(&pl[24..])],
                    size: be64(&pl[32..]),
                    promoted_at: be64(&pl[40..]),
                    changed_blocks: be64(&pl[48..]),
                    role: pl[56],
                    disk: pl[57],
                    flags: pl[58],
                })
            }
            FrameType::Bitmap => Msg::Bitmap(pl.to_vec()),
            FrameType::Data => {
                if pl.len() < 20 {
                    return Err(bad());
                }
                let len = be32(&pl[16..]);
                let data = Bytes::copy_from_slice(&pl[20..]);
                let zero = p.flags() & DATA_ZERO != 0;
                if (zero && !data.is_empty()) || (!zero && data.len() != len as usize) {
                    return Err(bad());
                }
                Msg::Data { seq: be64(pl), offset: be64(&pl[8..]), len, flags: p.flags(), data }
            }
            FrameType::RecvAck => {
                fixed(8)?;
                Msg::RecvAck { seq: be64(pl) }
            }
            FrameType::WriteAck => {
                fixed(8)?;
                Msg::WriteAck { seq: be64(pl) }
            }
            FrameType::Barrier => {
                fixed(8)?;
                Msg::Barrier { epoch: be64(pl) }
            }
            FrameType::BarrierAck => {
                fixed(8)?;
                Msg::BarrierAck { epoch: be64(pl) }
            }
            FrameType::RsData => {
                if pl.len() < 12 {
                    return Err(bad());
                }
                let len = be32(&pl[8..]);
                let data = Bytes::copy_from_slice(&pl[12..]);
                let zero = p.flags() & DATA_ZERO != 0;
                if (zero && !data.is_empty()) || (!zero && data.len() != len as usize) {
                    return Err(bad());
                }
                Msg::RsData { offset: be64(pl), len, flags: p.flags(), data }
            }
            FrameType::RsAck => {
                fixed(12)?;
                Msg::RsAck { offset: be64(pl), len: be32(&pl[8..]) }
            }
            FrameType::VerifyReq => {
                fixed(12)?;
                Msg::VerifyReq { offset: be64(pl), len: be32(&pl[8..]) }
            }
            FrameType::SyncDone => {
                fixed(32)?;
                Msg::SyncDone { gen: [be64(pl), be64(&pl[8..]), be64(&pl[16..]), be64(&pl[24..])] }
            }
            FrameType::Ping => {
                fixed(0)?;
                Msg::Ping
            }
            FrameType::PingAck => {
                fixed(0)?;
                Msg::PingAck
            }
            FrameType::RsCsum => {
                fixed(44)?;
                Msg::RsCsum { offset: be64(pl), len: be32(&pl[8..]), hash: arr32(&pl[12..]) }
            }
            FrameType::RsNeed => {
                fixed(12)?;
                Msg::RsNeed { offset: be64(pl), len: be32(&pl[8..]) }
            }
            FrameType::VerifyReply => {
                fixed(44)?;
                Msg::VerifyReply { offset: be64(pl), len: be32(&pl[8..]), hash: arr32(&pl[12..]) }
            }
            FrameType::StateChangeReq => {
                fixed(9)?;
                Msg::StateChangeReq { seq: be64(pl), change: pl[8] }
            }
            FrameType::StateChangeReply => {
                fixed(9)?;
                Msg::StateChangeReply { seq: be64(pl), result: pl[8] }
            }
            FrameType::Unknown(x) => return Err(WireError::UnknownType(x)),
        })
    }

    /// Decodes a whole frame from bytes.
    pub fn parse_bytes(b: &[u8]) -> Result<Self, WireError> {
        Self::parse(&FramePacket::new_checked(b)?)
    }
}

/// Fixed part of a `Data` payload (seq, offset, len) before the bytes.
pub const DATA_FIXED: usize = 20;

/// Header and fixed fields of a `Data` frame carrying `payload_len` bytes, so that a sender can
/// write the payload from its own buffer without copying it into a frame.
pub fn data_prefix(seq: u64, offset: u64, len: u32, flags: u8, payload_len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + DATA_FIXED);
    b.extend_from_slice(&MAGIC.to_be_bytes());
    b.push(FrameType::Data.into());
    b.push(flags);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&((DATA_FIXED + payload_len) as u32).to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// Builds a `Data` message from its header flags, fixed fields and separately read payload,
/// with the same checks as [`Msg::parse`].
pub fn data_from_parts(flags: u8, fixed: &[u8; DATA_FIXED], payload: Bytes) -> Result<Msg, WireError> {
    let len = be32(&fixed[16..]);
    let zero = flags & DATA_ZERO != 0;
    if (zero && !payload.is_empty()) || (!zero && payload.len() != len as usize) {
        return Err(WireError::BadLength(FrameType::Data));
    }
    Ok(Msg::Data { seq: be64(fixed), offset: be64(&fixed[8..]), len, flags, data: payload })
}

/// Fixed part of an `RsData` payload (offset, len) before the bytes.
pub const RS_DATA_FIXED: usize = 12;

/// Header and fixed fields of an `RsData` frame carrying `payload_len` bytes (see
/// [`data_prefix`]).
pub fn rs_data_prefix(offset: u64, len: u32, flags: u8, payload_len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN + RS_DATA_FIXED);
    b.extend_from_slice(&MAGIC.to_be_bytes());
    b.push(FrameType::RsData.into());
    b.push(flags);
    b.extend_from_slice(&[0, 0]);
    b.extend_from_slice(&((RS_DATA_FIXED + payload_len) as u32).to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b
}

/// Builds an `RsData` message from its header flags, fixed fields and separately read payload,
/// with the same checks as [`Msg::parse`].
pub fn rs_data_from_parts(flags: u8, fixed: &[u8; RS_DATA_FIXED], payload: Bytes) -> Result<Msg, WireError> {
    let len = be32(&fixed[8..]);
    let zero = flags & DATA_ZERO != 0;
    if (zero && !payload.is_empty()) || (!zero && payload.len() != len as usize) {
        return Err(WireError::BadLength(FrameType::RsData));
    }
    Ok(Msg::RsData { offset: be64(fixed), len, flags, data: payload })
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
    fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLDEN_DATA: [u8; 36] = [
        0x52, 0x50, 0x52, 0x4c, 5, 1, 0, 0, 0, 0, 0, 24, // header: Data, FUA, 24 bytes
        0, 0, 0, 0, 0, 0, 0, 9, // seq 9
        0, 0, 0, 0, 0, 0, 0x10, 0, // offset 4096
        0, 0, 0, 4, // len 4
        0xde, 0xad, 0xbe, 0xef,
    ];

    fn golden_msg() -> Msg {
        Msg::Data { seq: 9, offset: 4096, len: 4, flags: DATA_FUA, data: Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]) }
    }

    #[test]
    fn data_golden_both_ways() {
        assert_eq!(Msg::parse_bytes(&GOLDEN_DATA), Ok(golden_msg()));
        let mut buf = [0xa5u8; 36];
        golden_msg().emit(&mut FramePacket::new_checked(&mut buf[..]).unwrap());
        assert_eq!(buf, GOLDEN_DATA);
    }

    #[test]
    fn barrier_ack_golden() {
        let golden = [0x52, 0x50, 0x52, 0x4c, 9, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 1, 2];
        let m = Msg::BarrierAck { epoch: 0x102 };
        let mut buf = [0xa5u8; 20];
        m.emit(&mut FramePacket::new_checked(&mut buf[..]).unwrap());
        assert_eq!(buf, golden);
        assert_eq!(Msg::parse_bytes(&golden), Ok(m));
    }

    /// Issue 14: the two-phase promotion frames, golden both ways.
    #[test]
    fn state_change_frames_golden() {
        let req = [0x52, 0x50, 0x52, 0x4c, 19, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 7, 1];
        let rep = [0x52, 0x50, 0x52, 0x4c, 20, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 7, 2];
        for (golden, m) in [
            (req, Msg::StateChangeReq { seq: 7, change: CHANGE_PROMOTE }),
            (rep, Msg::StateChangeReply { seq: 7, result: REPLY_PEER_PROMOTING }),
        ] {
            let mut buf = [0xa5u8; 21];
            m.emit(&mut FramePacket::new_checked(&mut buf[..]).unwrap());
            assert_eq!(buf, golden);
            assert_eq!(Msg::parse_bytes(&golden), Ok(m));
        }
        let mut short = req.to_vec();
        short[11] = 8;
        short.pop();
        assert_eq!(Msg::parse_bytes(&short), Err(WireError::BadLength(FrameType::StateChangeReq)));
    }

    #[test]
    fn round_trips() {
        let msgs = vec![
            Msg::Hello { challenge: [7; 32] },
            Msg::Auth { mac: [9; 32] },
            Msg::State(StateMsg {
                gen: [1, 2, 3, 4],
                size: 5,
                promoted_at: 6,
                changed_blocks: 7,
                role: 1,
                disk: 2,
                flags: 3,
            }),
            Msg::Bitmap(vec![1, 2, 3]),
            Msg::Data { seq: 1, offset: 0, len: 8192, flags: DATA_ZERO, data: Bytes::new() },
            Msg::RecvAck { seq: 3 },
            Msg::WriteAck { seq: 4 },
            Msg::Barrier { epoch: 5 },
            Msg::RsData { offset: 8, len: 2, flags: 0, data: Bytes::from_static(&[1, 2]) },
            Msg::RsAck { offset: 8, len: 2 },
            Msg::SyncDone { gen: [4, 3, 2, 1] },
            Msg::Ping,
            Msg::PingAck,
            Msg::VerifyReq { offset: 1, len: 2 },
            Msg::VerifyReply { offset: 1, len: 2, hash: [3; 32] },
            Msg::RsCsum { offset: 4, len: 5, hash: [6; 32] },
            Msg::RsNeed { offset: 7, len: 8 },
            Msg::StateChangeReq { seq: 9, change: CHANGE_PROMOTE },
            Msg::StateChangeReply { seq: 9, result: REPLY_PEER_PROMOTING },
        ];
        for m in msgs {
            assert_eq!(Msg::parse_bytes(&m.to_vec()), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn rs_data_in_parts_matches_whole_frame() {
        let m = Msg::RsData { offset: 8, len: 2, flags: 0, data: Bytes::from_static(&[1, 2]) };
        let mut v = rs_data_prefix(8, 2, 0, 2);
        v.extend_from_slice(&[1, 2]);
        assert_eq!(v, m.to_vec());
        let mut fixed = [0u8; RS_DATA_FIXED];
        fixed.copy_from_slice(&v[HEADER_LEN..HEADER_LEN + RS_DATA_FIXED]);
        assert_eq!(rs_data_from_parts(0, &fixed, Bytes::from_static(&[1, 2])), Ok(m));
        assert!(rs_data_from_parts(0, &fixed, Bytes::from_static(&[1])).is_err());
        assert!(rs_data_from_parts(DATA_ZERO, &fixed, Bytes::from_static(&[1, 2])).is_err());
    }

    #[test]
    fn data_in_parts_matches_whole_frame() {
        let m = golden_msg();
        let mut v = data_prefix(9, 4096, 4, DATA_FUA, 4);
        v.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(v, GOLDEN_DATA);
        let fixed: [u8; DATA_FIXED] = GOLDEN_DATA[12..32].try_into().unwrap();
        assert_eq!(data_from_parts(DATA_FUA, &fixed, Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef])), Ok(m));
        assert!(data_from_parts(DATA_FUA, &fixed, Bytes::from_static(&[1])).is_err());
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert_eq!(Msg::parse_bytes(&GOLDEN_DATA[..11]), Err(WireError::Truncated));
        assert_eq!(Msg::parse_bytes(&GOLDEN_DATA[..35]), Err(WireError::Truncated));
        let mut b = GOLDEN_DATA;
        b[0] = 0;
        assert!(matches!(Msg::parse_bytes(&b), Err(WireError::BadMagic(_))));
        let mut b = GOLDEN_DATA;
        b[4] = 99;
        assert_eq!(Msg::parse_bytes(&b), Err(WireError::UnknownType(99)));
        let mut b = GOLDEN_DATA;
        b[31] = 5; // len 5 but 4 data bytes
        assert_eq!(Msg::parse_bytes(&b), Err(WireError::BadLength(FrameType::Data)));
        let mut b = GOLDEN_DATA.to_vec();
        b[8..12].copy_from_slice(&(MAX_PAYLOAD + 1).to_be_bytes());
        assert_eq!(Msg::parse_bytes(&b), Err(WireError::TooLarge(MAX_PAYLOAD + 1)));
    }
}
