//! The sans-IO replication core: two replicas whose every input the fuzzer schedules — which
//! frame is delivered, dropped or replaced by arbitrary bytes (parsed by the real frame parser),
//! which disk operation completes (in any order, with success or an error), client writes and
//! flushes, admin commands (promote, demote, connect, disconnect, invalidate, verify), transport
//! up/down and time passing.
//!
//! Besides "never panics", it checks that a replica never acknowledges what it did not store:
//! - a `WriteAck` for `seq` goes out only after a disk write of that frame's range completed
//!   successfully on that replica, after the frame arrived;
//! - a client write completes `Ok` only after a local disk write of its range completed
//!   successfully, after the request.
#![no_main]
use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use blockrepl::meta::Meta;
use blockrepl::proto::{Action, Config, DiskOp, Protocol, Replica};
use blockrepl::wire::{Bytes, Msg};
use libfuzzer_sys::fuzz_target;

const SIZE: u64 = 256 * 1024;

#[derive(Arbitrary, Debug)]
struct Setup {
    protocol: u8,
    checksum_resync: bool,
    consistent: [bool; 2],
    seed: u64,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Time passes (microseconds), then both replicas get `handle_timeout`.
    Advance(u32),
    /// The transport comes up on both sides.
    Up,
    /// The transport breaks on both sides (queued frames are lost).
    Down,
    /// The next frame queued towards replica `to` arrives.
    Deliver {
        to: bool,
    },
    /// The next frame towards `to` is lost.
    Drop {
        to: bool,
    },
    /// Arbitrary bytes arrive at `to` as a frame.
    Raw {
        to: bool,
        bytes: Vec<u8>,
    },
    /// The next frame towards `to` arrives with its bytes XORed at one position.
    Flip {
        to: bool,
        pos: u16,
        xor: u8,
    },
    /// A pending disk operation or metadata write of `who` completes.
    Disk {
        who: bool,
        pick: u8,
        ok: bool,
    },
    Write {
        who: bool,
        off: u32,
        len: u16,
        fua: bool,
        zero: bool,
    },
    Flush {
        who: bool,
    },
    Promote {
        who: bool,
        force: bool,
    },
    Demote {
        who: bool,
    },
    Connect {
        who: bool,
        discard: bool,
    },
    Disconnect {
        who: bool,
    },
    Invalidate {
        who: bool,
    },
    Verify {
        who: bool,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

enum Pending {
    Disk(DiskOp),
    Meta,
}

struct Node {
    rep: Replica,
    disk: Vec<u8>,
    pending: Vec<(u64, Pending)>,
    /// Frames towards this node.
    inbox: Vec<Msg>,
    /// Successful data-disk writes: (off, len, step).
    stored: Vec<(u64, u64, usize)>,
    /// Data frames received: seq -> (off, len, step).
    received: HashMap<u64, (u64, u64, usize)>,
    /// Client writes: req -> (off, len, step).
    requests: HashMap<u64, (u64, u64, usize)>,
}

impl Node {
    fn stored_since(&self, off: u64, len: u64, since: usize) -> bool {
        self.stored.iter().any(|&(o, l, s)| o == off && l == len && s >= since)
    }
}

struct World {
    nodes: [Node; 2],
    link: bool,
    now: Instant,
    step: usize,
    next_req: u64,
}

impl World {
    fn pump(&mut self) {
        for _ in 0..64 {
            let mut any = false;
            for i in 0..2 {
                while let Some(a) = self.nodes[i].rep.poll_action() {
                    any = true;
                    self.act(i, a);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn act(&mut self, i: usize, a: Action) {
        let n = &mut self.nodes[i];
        match a {
            Action::Disk { io, op } => n.pending.push((io, Pending::Disk(op))),
            Action::PersistMeta { io, .. } | Action::PersistAl { io, .. } => n.pending.push((io, Pending::Meta)),
            Action::Send(m) => {
                if !self.link {
                    return; // no connection: the frame goes nowhere
                }
                if let Msg::WriteAck { seq } = &m {
                    let &(off, len, since) = n.received.get(seq).expect("WriteAck for a frame never received");
                    assert!(n.stored_since(off, len, since), "WriteAck {seq} for {off}+{len} before it was stored");
                }
                self.nodes[1 - i].inbox.push(m);
            }
            Action::Complete { req, result: Ok(()) } => {
                if let Some(&(off, len, since)) = n.requests.get(&req) {
                    assert!(n.stored_since(off, len, since), "write {req} {off}+{len} completed before it was stored");
                }
            }
            Action::CloseConnection => self.down(),
            _ => {}
        }
    }

    fn down(&mut self) {
        if self.link {
            self.link = false;
            for n in &mut self.nodes {
                n.inbox.clear();
                n.rep.handle_disconnected(self.now);
            }
        }
    }

    fn frame(&mut self, to: usize, m: Msg) {
        let step = self.step;
        if let Msg::Data { seq, offset, len, .. } = &m {
            self.nodes[to].received.insert(*seq, (*offset, u64::from(*len), step));
        }
        self.nodes[to].rep.handle_frame(self.now, m);
    }

    fn disk_done(&mut self, i: usize, pick: u8, ok: bool) {
        let step = self.step;
        let n = &mut self.nodes[i];
        if n.pending.is_empty() {
            return;
        }
        let (io, p) = n.pending.remove(usize::from(pick) % n.pending.len());
        let result = match (p, ok) {
            (_, false) => Err("fuzz: injected I/O error".to_string()),
            (Pending::Meta, true) | (Pending::Disk(DiskOp::Flush), true) => Ok(None),
            (Pending::Disk(DiskOp::Write { off, data, .. }), true) => {
                let range = usize::try_from(off).ok().and_then(|o| Some(o..o.checked_add(data.len())?));
                match range.and_then(|r| n.disk.get_mut(r)) {
                    Some(dst) => {
                        dst.copy_from_slice(&data);
                        n.stored.push((off, data.len() as u64, step));
                        Ok(None)
                    }
                    None => panic!("disk write {off}+{} beyond the device", data.len()),
                }
            }
            (Pending::Disk(DiskOp::Zero { off, len, .. }), true) => {
                let range = usize::try_from(off).ok().and_then(|o| Some(o..o.checked_add(len as usize)?));
                match range.and_then(|r| n.disk.get_mut(r)) {
                    Some(dst) => {
                        dst.fill(0);
                        n.stored.push((off, u64::from(len), step));
                        Ok(None)
                    }
                    None => panic!("disk zero {off}+{len} beyond the device"),
                }
            }
            (Pending::Disk(DiskOp::Read { off, len }), true) => {
                let range = usize::try_from(off).ok().and_then(|o| Some(o..o.checked_add(len as usize)?));
                match range.and_then(|r| n.disk.get(r)) {
                    Some(src) => Ok(Some(Bytes::from(src.to_vec()))),
                    None => panic!("disk read {off}+{len} beyond the device"),
                }
            }
            (Pending::Disk(_), true) => Ok(None),
        };
        n.rep.handle_disk_done(self.now, io, result);
    }
}

fn config(s: &Setup, node: usize) -> Config {
    let key = blockrepl::proto::auth_key(b"fuzz secret");
    let mut c = Config::new(key, node == 0, s.seed.wrapping_add(node as u64));
    c.protocol = match s.protocol % 3 {
        0 => Protocol::A,
        1 => Protocol::B,
        _ => Protocol::C,
    };
    c.checksum_resync = s.checksum_resync;
    c.resync_request = 64 * 1024;
    c.al_extents = 7;
    c
}

fn node(s: &Setup, i: usize) -> Node {
    let mut meta = Meta::fresh(SIZE);
    meta.consistent = s.consistent[i];
    Node {
        rep: Replica::new(config(s, i), meta, i == 0),
        disk: vec![0; SIZE as usize],
        pending: Vec::new(),
        inbox: Vec::new(),
        stored: Vec::new(),
        received: HashMap::new(),
        requests: HashMap::new(),
    }
}

fn who(b: bool) -> usize {
    usize::from(b)
}

fuzz_target!(|input: Input| {
    let mut w = World {
        nodes: [node(&input.setup, 0), node(&input.setup, 1)],
        link: false,
        now: Instant::now(),
        step: 0,
        next_req: 1,
    };
    let _ = w.nodes[0].rep.connect(false);
    let _ = w.nodes[1].rep.connect(false);
    for op in input.ops.into_iter().take(512) {
        w.step += 1;
        let now = w.now;
        match op {
            Op::Advance(us) => {
                w.now += Duration::from_micros(u64::from(us));
                for n in &mut w.nodes {
                    n.rep.handle_timeout(w.now);
                }
            }
            Op::Up => {
                if !w.link {
                    w.link = true;
                    for n in &mut w.nodes {
                        n.rep.handle_connected(now);
                    }
                }
            }
            Op::Down => w.down(),
            Op::Deliver { to } => {
                if !w.nodes[who(to)].inbox.is_empty() {
                    let m = w.nodes[who(to)].inbox.remove(0);
                    w.frame(who(to), m);
                }
            }
            Op::Drop { to } => {
                if !w.nodes[who(to)].inbox.is_empty() {
                    w.nodes[who(to)].inbox.remove(0);
                }
            }
            Op::Raw { to, bytes } => {
                if let Ok(m) = Msg::parse_bytes(&bytes) {
                    w.frame(who(to), m);
                }
            }
            Op::Flip { to, pos, xor } => {
                if !w.nodes[who(to)].inbox.is_empty() {
                    let mut b = w.nodes[who(to)].inbox.remove(0).to_vec();
                    let i = usize::from(pos) % b.len().max(1);
                    if let Some(x) = b.get_mut(i) {
                        *x ^= xor;
                    }
                    if let Ok(m) = Msg::parse_bytes(&b) {
                        w.frame(who(to), m);
                    }
                }
            }
            Op::Disk { who: i, pick, ok } => w.disk_done(who(i), pick, ok),
            Op::Write { who: i, off, len, fua, zero } => {
                let req = w.next_req;
                w.next_req += 1;
                let (off, len) = (u64::from(off) % (SIZE + 8192), u32::from(len));
                let n = &mut w.nodes[who(i)];
                n.requests.insert(req, (off, u64::from(len), w.step));
                let data = (!zero).then(|| Bytes::from(vec![req as u8; len as usize]));
                n.rep.handle_write_bytes(now, req, off, len, data, fua);
            }
            Op::Flush { who: i } => {
                let req = w.next_req;
                w.next_req += 1;
                w.nodes[who(i)].rep.handle_flush(now, req);
            }
            Op::Promote { who: i, force } => {
                let _ = w.nodes[who(i)].rep.promote(now, force, 1_700_000_000);
            }
            Op::Demote { who: i } => {
                let _ = w.nodes[who(i)].rep.demote();
            }
            Op::Connect { who: i, discard } => {
                let _ = w.nodes[who(i)].rep.connect(discard);
            }
            Op::Disconnect { who: i } => w.nodes[who(i)].rep.disconnect(now),
            Op::Invalidate { who: i } => {
                let _ = w.nodes[who(i)].rep.invalidate(now);
            }
            Op::Verify { who: i } => {
                let _ = w.nodes[who(i)].rep.start_verify();
            }
        }
        w.pump();
    }
});
