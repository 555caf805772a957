//! The NBD server (negotiation, then transmission) fed an arbitrary client byte stream over an
//! in-memory duplex, on a current-thread runtime, against an in-memory store.
//!
//! The stream is built from structured pieces (options with arbitrary codes and bodies, the
//! export-name option that enters transmission, request headers with arbitrary fields and write
//! payloads, raw bytes), so the fuzzer reaches the transmission phase. The server must end (the
//! client closes its side) and never panic. When the stream is well formed (no raw bytes, no
//! option before the export name, every write carrying its payload, unique cookies), the replies
//! are checked: each is a simple reply to a request that was sent, answered once, a successful
//! read carries exactly the bytes asked for, and every request before `DISC` (or the end) is
//! answered.
#![no_main]
use std::collections::HashMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use blockrepl::nbd::wire::{self, opt, Command, Request, RequestPacket};
use blockrepl::nbd::NbdServer;
use blockrepl::store::MemStore;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 64 * 1024;

#[derive(Arbitrary, Debug)]
enum Piece {
    /// An option header (the magic, then `option`, then `data`'s length) and its body.
    Option {
        option: u32,
        data: Vec<u8>,
    },
    /// A request header; a write's payload follows (`payload` repeated or cut to `length`
    /// bytes when `whole`, else `payload` as is).
    Request {
        flags: u16,
        command: u16,
        cookie: u64,
        offset: u32,
        length: u16,
        whole: bool,
        payload: Vec<u8>,
    },
    /// A request with a 64-bit offset and a 32-bit length (no payload).
    Far {
        command: u16,
        cookie: u64,
        offset: u64,
        length: u32,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    no_zeroes: bool,
    /// Send `EXPORT_NAME ""` after the pieces of `options`.
    enter: bool,
    options: Vec<Piece>,
    pieces: Vec<Piece>,
}

fn header(command: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> [u8; wire::REQUEST_LEN] {
    let mut b = [0u8; wire::REQUEST_LEN];
    let r = Request { flags, command: Command::from(command), cookie, offset, length };
    if let Ok(mut p) = RequestPacket::new_checked(&mut b[..]) {
        r.emit(&mut p);
    }
    b
}

/// Appends `p`; returns the request it sent, if it is one, and whether the stream stays in step.
fn encode(p: &Piece, out: &mut Vec<u8>) -> (Option<Request>, bool) {
    match p {
        Piece::Option { option, data } => {
            out.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
            out.extend_from_slice(&option.to_be_bytes());
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            (None, false)
        }
        Piece::Request { flags, command, cookie, offset, length, whole, payload } => {
            let (offset, length) = (u64::from(*offset), u32::from(*length));
            out.extend_from_slice(&header(*command, *flags, *cookie, offset, length));
            let mut in_step = true;
            if Command::from(*command) == Command::Write {
                if *whole {
                    let fill = if payload.is_empty() { &[0xa5u8][..] } else { &payload[..] };
                    out.extend(fill.iter().copied().cycle().take(length as usize));
                } else {
                    out.extend_from_slice(payload);
                    in_step = payload.len() == length as usize;
                }
            }
            let r = Request { flags: *flags, command: Command::from(*command), cookie: *cookie, offset, length };
            (Some(r), in_step)
        }
        Piece::Far { command, cookie, offset, length } => {
            out.extend_from_slice(&header(*command, 0, *cookie, *offset, *length));
            let r = Request {
                flags: 0,
                command: Command::from(*command),
                cookie: *cookie,
                offset: *offset,
                length: *length,
            };
            (Some(r), Command::from(*command) != Command::Write || *length == 0)
        }
        Piece::Raw(b) => {
            out.extend_from_slice(b);
            (None, false)
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Checks the transmission-phase replies in `out` against the requests sent (unique cookies).
fn check_replies(mut out: &[u8], sent: &[Request]) {
    let mut outstanding: HashMap<u64, Request> = HashMap::new();
    for r in sent {
        if r.command == Command::Disc {
            break;
        }
        outstanding.insert(r.cookie, *r);
    }
    let expected = outstanding.len();
    let mut got = 0usize;
    while !out.is_empty() {
        assert_eq!(u32_at(out, 0), Some(wire::SIMPLE_REPLY_MAGIC), "reply magic");
        let err = u32_at(out, 4).expect("reply error field");
        let cookie = u64_at(out, 8).expect("reply cookie");
        out = &out[wire::SIMPLE_REPLY_LEN..];
        let r = outstanding.remove(&cookie).expect("reply to a cookie never sent, or answered twice");
        if err == 0 && r.command == Command::Read {
            assert!(out.len() >= r.length as usize, "read reply shorter than the read");
            out = &out[r.length as usize..];
        }
        got += 1;
    }
    assert_eq!(got, expected, "every request before DISC or the end is answered");
}

fuzz_target!(|input: Input| {
    let rt = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(_) => return,
    };
    let mut bytes = Vec::new();
    let flags = wire::FLAG_FIXED_NEWSTYLE | if input.no_zeroes { wire::FLAG_NO_ZEROES } else { 0 };
    bytes.extend_from_slice(&u32::from(flags).to_be_bytes());
    let mut in_step = input.options.is_empty() && input.enter;
    for p in &input.options {
        encode(p, &mut bytes);
    }
    if input.enter {
        encode(&Piece::Option { option: opt::EXPORT_NAME, data: vec![] }, &mut bytes);
    }
    let mut sent = Vec::new();
    for p in &input.pieces {
        let (r, ok) = encode(p, &mut bytes);
        sent.extend(r);
        in_step &= ok;
    }
    let mut cookies: Vec<u64> = sent.iter().map(|r: &Request| r.cookie).collect();
    cookies.sort_unstable();
    cookies.dedup();
    in_step &= cookies.len() == sent.len();
    let out = rt.block_on(async move {
        let store = Arc::new(MemStore::new(SIZE));
        let server = NbdServer::new("fuzz", store);
        let (client, conn) = tokio::io::duplex(64 * 1024);
        let task = tokio::spawn(async move { server.serve_conn(conn).await });
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async move {
            let _ = wr.write_all(&bytes).await;
            let _ = wr.shutdown().await;
        };
        let read = async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let ((), out) = tokio::join!(write, read);
        let _ = task.await.expect("server task panicked");
        out
    });
    if in_step {
        // Greeting (18 bytes), then the EXPORT_NAME answer: size, flags and 124 zeroes unless
        // the client asked for none.
        let hello = 18 + 10 + if input.no_zeroes { 0 } else { 124 };
        assert!(out.len() >= hello, "no EXPORT_NAME answer");
        assert_eq!(u64_at(&out, 18), Some(SIZE as u64), "export size");
        check_replies(&out[hello..], &sent);
    }
});
