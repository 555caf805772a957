//! NBD codec: handshake constants, option headers, transmission requests and simple replies.
//!
//! All integers are big-endian. Only the fixed-newstyle negotiation is supported (as every
//! current client uses it).

use thiserror::Error;

/// `NBDMAGIC`: first 8 bytes the server sends.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: second greeting word, and the magic of every option request.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of an option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;

/// Transmission flags (sent with the export size).
pub mod tflags {
    /// The other flags are valid.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Export is read-only.
    pub const READ_ONLY: u16 = 1 << 1;
    /// FLUSH supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// FUA supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// TRIM supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// WRITE_ZEROES supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
}

/// Option codes.
pub mod opt {
    /// Old-style select export (no reply; straight to transmission).
    pub const EXPORT_NAME: u32 = 1;
    /// Client gives up.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Ask about an export.
    pub const INFO: u32 = 6;
    /// Select an export.
    pub const GO: u32 = 7;
}

/// Option reply types.
pub mod rep {
    /// Done.
    pub const ACK: u32 = 1;
    /// One export in a LIST reply.
    pub const SERVER: u32 = 2;
    /// One information item in an INFO/GO reply.
    pub const INFO: u32 = 3;
    /// Option not supported.
    pub const ERR_UNSUP: u32 = 0x8000_0001;
    /// Malformed option.
    pub const ERR_INVALID: u32 = 0x8000_0003;
    /// Export not found.
    pub const ERR_UNKNOWN: u32 = 0x8000_0006;
}

/// Information types in INFO/GO.
pub mod info {
    /// Size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// Block size constraints.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// NBD_CMD_READ.
    Read,
    /// NBD_CMD_WRITE (data follows).
    Write,
    /// NBD_CMD_DISC.
    Disc,
    /// NBD_CMD_FLUSH.
    Flush,
    /// NBD_CMD_TRIM.
    Trim,
    /// NBD_CMD_WRITE_ZEROES.
    WriteZeroes,
    /// Anything else: answered EINVAL.
    Unknown(u16),
}

impl From<u16> for Command {
    fn from(v: u16) -> Self {
        match v {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Disc,
            3 => Self::Flush,
            4 => Self::Trim,
            6 => Self::WriteZeroes,
            x => Self::Unknown(x),
        }
    }
}

impl From<Command> for u16 {
    fn from(c: Command) -> u16 {
        match c {
            Command::Read => 0,
            Command::Write => 1,
            Command::Disc => 2,
            Command::Flush => 3,
            Command::Trim => 4,
            Command::WriteZeroes => 6,
            Command::Unknown(x) => x,
        }
    }
}

/// Command flag: force unit access.
pub const CMD_FLAG_FUA: u16 = 1;

/// Error numbers carried in replies (NBD's own values).
pub mod errno {
    /// Operation not permitted (e.g. write to a read-only export).
    pub const EPERM: u32 = 1;
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Invalid argument.
    pub const EINVAL: u32 = 22;
    /// No space (out of range write).
    pub const ENOSPC: u32 = 28;
    /// Server shutting down.
    pub const ESHUTDOWN: u32 = 108;
}

/// Decoding errors.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the fixed header.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// Wrong magic number.
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
}

mod field {
    use std::ops::Range;
    pub(super) const MAGIC: Range<usize> = 0..4;
    pub(super) const FLAGS: Range<usize> = 4..6;
    pub(super) const TYPE: Range<usize> = 6..8;
    pub(super) const COOKIE: Range<usize> = 8..16;
    pub(super) const OFFSET: Range<usize> = 16..24;
    pub(super) const LENGTH: Range<usize> = 24..28;
}

/// Length of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header.
pub const SIMPLE_REPLY_LEN: usize = 16;

use crate::wire::{be16, be32, be64};

/// A transmission request header, smoltcp style: length-checked view over a buffer.
#[derive(Debug, Clone)]
pub struct RequestPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RequestPacket<T> {
    /// Wraps `buffer` after checking its length; getters never panic afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let have = buffer.as_ref().len();
        if have < REQUEST_LEN {
            return Err(WireError::Truncated { need: REQUEST_LEN, have });
        }
        Ok(Self { buffer })
    }
    /// Magic word.
    pub fn magic(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::MAGIC])
    }
    /// Command flags.
    pub fn flags(&self) -> u16 {
        be16(&self.buffer.as_ref()[field::FLAGS])
    }
    /// Command.
    pub fn command(&self) -> Command {
        be16(&self.buffer.as_ref()[field::TYPE]).into()
    }
    /// Cookie (handle) echoed in the reply.
    pub fn cookie(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::COOKIE])
    }
    /// Byte offset.
    pub fn offset(&self) -> u64 {
        be64(&self.buffer.as_ref()[field::OFFSET])
    }
    /// Length in bytes.
    pub fn length(&self) -> u32 {
        be32(&self.buffer.as_ref()[field::LENGTH])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> RequestPacket<T> {
    fn set(&mut self, r: std::ops::Range<usize>, v: &[u8]) {
        self.buffer.as_mut()[r].copy_from_slice(v);
    }
}

/// A decoded request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (FUA, …).
    pub flags: u16,
    /// Command.
    pub command: Command,
    /// Cookie.
    pub cookie: u64,
    /// Offset.
    pub offset: u64,
    /// Length.
    pub length: u32,
}

impl Request {
    /// Decodes a request header.
    pub fn parse<T: AsRef<[u8]>>(p: &RequestPacket<T>) -> Result<Self, WireError> {
        if p.magic() != REQUEST_MAGIC {
            return Err(WireError::BadMagic(u64::from(p.magic())));
        }
        Ok(Self { flags: p.flags(), command: p.command(), cookie: p.cookie(), offset: p.offset(), length: p.length() })
    }
    /// Parses a header from raw bytes.
    pub fn parse_bytes(b: &[u8]) -> Result<Self, WireError> {
        Self::parse(&RequestPacket::new_checked(b)?)
    }
    /// Header length.
    pub fn buffer_len(&self) -> usize {
        REQUEST_LEN
    }
    /// Encodes into `p`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut RequestPacket<T>) {
        p.set(field::MAGIC, &REQUEST_MAGIC.to_be_bytes());
        p.set(field::FLAGS, &self.flags.to_be_bytes());
        p.set(field::TYPE, &u16::from(self.command).to_be_bytes());
        p.set(field::COOKIE, &self.cookie.to_be_bytes());
        p.set(field::OFFSET, &self.offset.to_be_bytes());
        p.set(field::LENGTH, &self.length.to_be_bytes());
    }
    /// Whether FUA is set.
    pub fn fua(&self) -> bool {
        self.flags & CMD_FLAG_FUA != 0
    }
}

/// Encodes a simple reply header.
pub fn simple_reply(error: u32, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// Encodes an option reply header followed by `data`.
pub fn option_reply(option: u32, reply: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(20 + data.len());
    b.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    b.extend_from_slice(&option.to_be_bytes());
    b.extend_from_slice(&reply.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    b
}

/// The body of `NBD_OPT_INFO` / `NBD_OPT_GO`: export name and requested information types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name (may be empty: the default export).
    pub name: String,
    /// Requested information items.
    pub requests: Vec<u16>,
}

impl InfoRequest {
    /// Decodes the option data; `None` when malformed.
    pub fn parse(data: &[u8]) -> Option<Self> {
        let name_len = be32(data.get(0..4)?) as usize;
        let name = data.get(4..4usize.checked_add(name_len)?)?;
        let rest = &data[4 + name_len..];
        let n = be16(rest.get(0..2)?) as usize;
        let items = rest.get(2..2 + 2 * n)?;
        if rest.len() != 2 + 2 * n {
            return None;
        }
        Some(Self {
            name: String::from_utf8_lossy(name).into_owned(),
            requests: items.chunks_exact(2).map(be16).collect(),
        })
    }
}

/// The `NBD_INFO_EXPORT` item.
pub fn info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut b = Vec::with_capacity(12);
    b.extend_from_slice(&info::EXPORT.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b.extend_from_slice(&flags.to_be_bytes());
    b
}

/// The `NBD_INFO_BLOCK_SIZE` item.
pub fn info_block_size(min: u32, preferred: u32, max: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(14);
    b.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
    b.extend_from_slice(&min.to_be_bytes());
    b.extend_from_slice(&preferred.to_be_bytes());
    b.extend_from_slice(&max.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    // A qemu-io style FUA write of 4 KiB at 1 MiB, cookie 7.
    const GOLDEN_WRITE: [u8; 28] = [
        0x25, 0x60, 0x95, 0x13, 0x00, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0x10,
        0,
    ];

    #[test]
    fn parse_golden_request() {
        let r = Request::parse_bytes(&GOLDEN_WRITE).unwrap();
        assert_eq!(r.command, Command::Write);
        assert!(r.fua());
        assert_eq!(r.cookie, 7);
        assert_eq!(r.offset, 1 << 20);
        assert_eq!(r.length, 4096);
    }

    #[test]
    fn emit_golden_request() {
        let r = Request { flags: CMD_FLAG_FUA, command: Command::Write, cookie: 7, offset: 1 << 20, length: 4096 };
        let mut buf = [0xa5u8; 28];
        r.emit(&mut RequestPacket::new_checked(&mut buf[..]).unwrap());
        assert_eq!(buf, GOLDEN_WRITE);
    }

    #[test]
    fn rejects_short_and_bad_magic() {
        assert_eq!(Request::parse_bytes(&GOLDEN_WRITE[..27]), Err(WireError::Truncated { need: 28, have: 27 }));
        let mut b = GOLDEN_WRITE;
        b[0] = 0;
        assert!(matches!(Request::parse_bytes(&b), Err(WireError::BadMagic(_))));
    }

    #[test]
    fn unknown_command_is_kept() {
        let mut b = GOLDEN_WRITE;
        b[7] = 7; // BLOCK_STATUS
        assert_eq!(Request::parse_bytes(&b).unwrap().command, Command::Unknown(7));
    }

    #[test]
    fn simple_reply_golden() {
        assert_eq!(simple_reply(5, 0x0102), [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1, 2]);
    }

    #[test]
    fn info_request_parse() {
        let data = [0, 0, 0, 2, b'r', b'0', 0, 2, 0, 0, 0, 3];
        let r = InfoRequest::parse(&data).unwrap();
        assert_eq!(r.name, "r0");
        assert_eq!(r.requests, vec![0, 3]);
        assert!(InfoRequest::parse(&data[..11]).is_none());
        assert!(InfoRequest::parse(&[0xff, 0xff, 0xff, 0xff]).is_none());
    }
}
