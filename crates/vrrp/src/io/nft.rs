//! `no_accept` mode (RFC 5798 Accept_Mode = False) with nftables, as keepalived 2.2.7 does it.
//!
//! A master that does not own the addresses must not accept packets addressed to the VIPs.
//! keepalived enforces that with an nftables table of its own (`table ip keepalived`, and `ip6`):
//! a set `vips` and two base chains at priority `filter - 1` that drop what is addressed to
//! (input) or sent from (output) an address in the set; IPv6 lets neighbour solicitations and
//! advertisements through so that the VIP still resolves. The VIPs enter the set just before
//! they are added to the interface and leave it after they are removed. We build the same
//! ruleset, in a table named [`TABLE`], by speaking nfnetlink directly (no `nft` binary):
//!
//! ```text
//! table ip rempart_vrrp {
//!     set vips { type ipv4_addr }
//!     chain in  { type filter hook input  priority filter - 1; policy accept; ip daddr @vips drop }
//!     chain out { type filter hook output priority filter - 1; policy accept; ip saddr @vips drop }
//! }
//! table ip6 rempart_vrrp {
//!     set vips { type ipv6_addr }
//!     chain in  { ...; icmpv6 type 135-136 accept; ip6 daddr @vips drop }
//!     chain out { ...; icmpv6 type 135-136 accept; ip6 saddr @vips drop }
//! }
//! ```
//!
//! Each change is one nfnetlink batch (one transaction) on a fresh `NETLINK_NETFILTER` socket,
//! with an acknowledgement requested for every message, so an error names what failed.

use std::collections::HashSet;
use std::io::{self, Read};
use std::net::IpAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// Name of our nftables table (in families `ip` and `ip6`).
pub const TABLE: &str = "rempart_vrrp";
const SET: &str = "vips";

const AF_NETLINK: i32 = 16;
const NETLINK_NETFILTER: i32 = 12;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NLMSG_ERROR: u16 = 2;

const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_LTE: u32 = 3;
const NFT_CMP_GTE: u32 = 5;
/// nft's data type numbers, so that `nft list ruleset` shows `ipv4_addr` / `ipv6_addr`.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const SET_ID: u32 = 1;

const ENOENT: i32 = 2;

/// An attribute buffer (netlink TLVs, 4-byte aligned).
#[derive(Default)]
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.0.extend_from_slice(&host_u16(len as u16));
        self.0.extend_from_slice(&host_u16(ty));
        self.0.extend_from_slice(data);
        self.pad();
        self
    }
    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.put(ty, &v)
    }
    /// nftables carries integers in network byte order.
    fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }
    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::default();
        f(&mut inner);
        self.put(ty | NLA_F_NESTED, &inner.0)
    }
    fn pad(&mut self) {
        while self.0.len() & 3 != 0 {
            self.0.push(0);
        }
    }
}

// Netlink headers and attribute headers are in host byte order by definition (unlike the
// nftables payloads, which `Attrs::be32` writes big-endian).
#[allow(clippy::host_endian_bytes)]
fn host_u16(v: u16) -> [u8; 2] {
    v.to_ne_bytes()
}
#[allow(clippy::host_endian_bytes)]
fn host_u32(v: u32) -> [u8; 4] {
    v.to_ne_bytes()
}
#[allow(clippy::host_endian_bytes)]
fn read_host_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}
#[allow(clippy::host_endian_bytes)]
fn read_host_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// One nfnetlink transaction.
struct Batch {
    buf: Vec<u8>,
    seq: u32,
    /// Sequence numbers of the messages that asked for an acknowledgement, with a description.
    acked: Vec<(u32, String)>,
}

impl Batch {
    fn new() -> Batch {
        let mut b = Batch { buf: Vec::new(), seq: 1, acked: Vec::new() };
        b.header(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, &[]);
        b
    }

    fn header(&mut self, ty: u16, flags: u16, family: u8, attrs: &[u8]) -> u32 {
        let seq = self.seq;
        self.seq += 1;
        let len = 16 + 4 + attrs.len();
        self.buf.extend_from_slice(&host_u32(len as u32));
        self.buf.extend_from_slice(&host_u16(ty));
        self.buf.extend_from_slice(&host_u16(flags));
        self.buf.extend_from_slice(&host_u32(seq));
        self.buf.extend_from_slice(&host_u32(0));
        // nfgenmsg: family, version 0, resource id (big-endian): the subsystem for batches.
        self.buf.push(family);
        self.buf.push(0);
        let res = if ty == NFNL_MSG_BATCH_BEGIN || ty == NFNL_MSG_BATCH_END { NFNL_SUBSYS_NFTABLES } else { 0 };
        self.buf.extend_from_slice(&res.to_be_bytes());
        self.buf.extend_from_slice(attrs);
        seq
    }

    fn msg(&mut self, what: &str, ty: u16, flags: u16, family: u8, attrs: &Attrs) {
        let seq = self.header((NFNL_SUBSYS_NFTABLES << 8) | ty, NLM_F_REQUEST | NLM_F_ACK | flags, family, &attrs.0);
        self.acked.push((seq, what.to_string()));
    }

    /// Sends the batch and waits for every acknowledgement; the first error is returned.
    fn commit(mut self) -> io::Result<()> {
        self.header(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, &[]);
        let s = Socket::new(Domain::from(AF_NETLINK), Type::RAW, Some(Protocol::from(NETLINK_NETFILTER)))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        // An unbound netlink socket is bound by the kernel on first send; with no address the
        // message goes to the kernel (port 0).
        s.send(&self.buf)?;
        let mut pending: HashSet<u32> = self.acked.iter().map(|(s, _)| *s).collect();
        let mut first_err: Option<io::Error> = None;
        let mut buf = vec![0u8; 65536];
        while !pending.is_empty() {
            let n = (&s).read(&mut buf)?;
            let mut off = 0;
            while off + 16 <= n {
                let len = read_host_u32(&buf[off..]) as usize;
                let ty = read_host_u16(&buf[off + 4..]);
                let seq = read_host_u32(&buf[off + 8..]);
                if len < 16 || off + len > n {
                    break;
                }
                if ty == NLMSG_ERROR && len >= 20 {
                    pending.remove(&seq);
                    let code = read_host_u32(&buf[off + 16..]) as i32;
                    if code != 0 && first_err.is_none() {
                        let what = self.acked.iter().find(|(s, _)| *s == seq).map_or("?", |(_, w)| w.as_str());
                        let e = io::Error::from_raw_os_error(-code);
                        first_err = Some(io::Error::new(e.kind(), format!("nftables {what}: {e}")));
                    }
                }
                off += (len + 3) & !3;
            }
            if first_err.is_some() {
                // A fresh socket per batch: what the kernel still sends about the aborted
                // transaction does not matter.
                break;
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn family_of(a: &IpAddr) -> u8 {
    if a.is_ipv4() {
        NFPROTO_IPV4
    } else {
        NFPROTO_IPV6
    }
}

fn addr_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn expr(list: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    list.nest(1, |e| {
        e.str(1, name);
        e.nest(2, data);
    });
}

fn payload(l: &mut Attrs, base: u32, offset: u32, len: u32) {
    expr(l, "payload", |d| {
        d.be32(1, NFT_REG_1).be32(2, base).be32(3, offset).be32(4, len);
    });
}

fn cmp(l: &mut Attrs, op: u32, value: &[u8]) {
    expr(l, "cmp", |d| {
        d.be32(1, NFT_REG_1).be32(2, op).nest(3, |v| {
            v.put(1, value);
        });
    });
}

fn verdict(l: &mut Attrs, code: u32) {
    expr(l, "immediate", |d| {
        d.be32(1, NFT_REG_VERDICT).nest(2, |v| {
            v.nest(2, |c| {
                c.be32(1, code);
            });
        });
    });
}

fn rule(b: &mut Batch, family: u8, chain: &str, exprs: impl FnOnce(&mut Attrs)) {
    let mut a = Attrs::default();
    a.str(1, TABLE).str(2, chain).nest(4, exprs);
    b.msg(&format!("add rule to chain {chain}"), NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, &a);
}

fn delete_table(b: &mut Batch, family: u8) {
    let mut a = Attrs::default();
    a.str(1, TABLE);
    b.msg(&format!("delete table {TABLE}"), NFT_MSG_DELTABLE, 0, family, &a);
}

/// Builds the table of one family, replacing any earlier one (a crashed predecessor's).
fn create_table(family: u8) -> io::Result<()> {
    let v6 = family == NFPROTO_IPV6;
    let mut b = Batch::new();
    // `add table; delete table; add table`: the first makes sure the delete finds something.
    let mut t = Attrs::default();
    t.str(1, TABLE);
    b.msg(&format!("add table {TABLE}"), NFT_MSG_NEWTABLE, NLM_F_CREATE, family, &t);
    delete_table(&mut b, family);
    b.msg(&format!("add table {TABLE}"), NFT_MSG_NEWTABLE, NLM_F_CREATE, family, &t);
    let mut s = Attrs::default();
    s.str(1, TABLE)
        .str(2, SET)
        .be32(3, 0)
        .be32(4, if v6 { TYPE_IP6ADDR } else { TYPE_IPADDR })
        .be32(5, if v6 { 16 } else { 4 })
        .be32(10, SET_ID);
    b.msg("add set vips", NFT_MSG_NEWSET, NLM_F_CREATE, family, &s);
    for (chain, hook, addr_off) in
        [("in", NF_INET_LOCAL_IN, if v6 { 24 } else { 16 }), ("out", NF_INET_LOCAL_OUT, if v6 { 8 } else { 12 })]
    {
        let mut c = Attrs::default();
        c.str(1, TABLE)
            .str(3, chain)
            .nest(4, |h| {
                h.be32(1, hook).be32(2, (-1i32) as u32);
            })
            .be32(5, NF_ACCEPT)
            .str(7, "filter");
        b.msg(&format!("add chain {chain}"), NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, &c);
        if v6 {
            // Neighbour solicitations and advertisements for the VIP must pass, or it would not
            // resolve (keepalived's `icmpv6 type @neighbor-discovery accept`).
            rule(&mut b, family, chain, |l| {
                expr(l, "meta", |d| {
                    d.be32(1, NFT_REG_1).be32(2, NFT_META_L4PROTO);
                });
                cmp(l, NFT_CMP_EQ, &[58]);
                payload(l, NFT_PAYLOAD_TRANSPORT_HEADER, 0, 1);
                cmp(l, NFT_CMP_GTE, &[135]);
                cmp(l, NFT_CMP_LTE, &[136]);
                verdict(l, NF_ACCEPT);
            });
        }
        rule(&mut b, family, chain, |l| {
            payload(l, NFT_PAYLOAD_NETWORK_HEADER, addr_off, if v6 { 16 } else { 4 });
            expr(l, "lookup", |d| {
                d.str(1, SET).be32(2, NFT_REG_1).be32(4, SET_ID);
            });
            verdict(l, NF_DROP);
        });
    }
    b.commit()
}

fn set_elems(add: bool, family: u8, addrs: &[IpAddr]) -> io::Result<()> {
    let mut b = Batch::new();
    let mut a = Attrs::default();
    a.str(1, TABLE).str(2, SET).nest(3, |l| {
        for x in addrs {
            l.nest(1, |e| {
                e.nest(1, |k| {
                    k.put(1, &addr_bytes(x));
                });
            });
        }
    });
    let (what, ty) =
        if add { ("add to set vips", NFT_MSG_NEWSETELEM) } else { ("delete from set vips", NFT_MSG_DELSETELEM) };
    b.msg(what, ty, if add { NLM_F_CREATE } else { 0 }, family, &a);
    b.commit()
}

/// Removes our tables (left by a crashed predecessor, or ours at exit). Absent is fine.
pub fn remove_tables() -> io::Result<()> {
    for family in [NFPROTO_IPV4, NFPROTO_IPV6] {
        let mut b = Batch::new();
        delete_table(&mut b, family);
        match b.commit() {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(ENOENT) || e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The drop rules of the daemon: which families have their table, which VIPs are blocked.
#[derive(Debug, Default)]
pub struct Firewall {
    tables: HashSet<u8>,
    blocked: HashSet<IpAddr>,
}

impl Firewall {
    /// A firewall with nothing installed yet (tables are created on first use).
    #[must_use]
    pub fn new() -> Firewall {
        Firewall::default()
    }

    /// Drops traffic to and from `addrs` (a non-owner master in no_accept mode).
    pub fn block(&mut self, addrs: &[IpAddr]) -> io::Result<()> {
        for family in [NFPROTO_IPV4, NFPROTO_IPV6] {
            let new: Vec<IpAddr> =
                addrs.iter().filter(|a| family_of(a) == family && !self.blocked.contains(a)).copied().collect();
            if new.is_empty() {
                continue;
            }
            if !self.tables.contains(&family) {
                create_table(family)?;
                self.tables.insert(family);
            }
            set_elems(true, family, &new)?;
            self.blocked.extend(new);
        }
        Ok(())
    }

    /// Lets traffic to and from `addrs` through again.
    pub fn unblock(&mut self, addrs: &[IpAddr]) -> io::Result<()> {
        for family in [NFPROTO_IPV4, NFPROTO_IPV6] {
            let old: Vec<IpAddr> =
                addrs.iter().filter(|a| family_of(a) == family && self.blocked.contains(a)).copied().collect();
            if old.is_empty() {
                continue;
            }
            for a in &old {
                self.blocked.remove(a);
            }
            set_elems(false, family, &old)?;
        }
        Ok(())
    }

    /// Whether any table was created (and must be removed at exit).
    #[must_use]
    pub fn installed(&self) -> bool {
        !self.tables.is_empty()
    }

    /// Removes our tables.
    pub fn remove(&mut self) -> io::Result<()> {
        self.tables.clear();
        self.blocked.clear();
        remove_tables()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attribute layout libnftnl produces: length includes the 4-byte header, payload
    /// padded to 4, nested attributes flagged.
    #[test]
    fn attribute_encoding() {
        let mut a = Attrs::default();
        a.str(1, "ab").be32(2, 0x0102_0304).nest(3, |n| {
            n.put(1, &[9]);
        });
        let mut want = Vec::new();
        want.extend_from_slice(&host_u16(7));
        want.extend_from_slice(&host_u16(1));
        want.extend_from_slice(b"ab\0\0");
        want.extend_from_slice(&host_u16(8));
        want.extend_from_slice(&host_u16(2));
        want.extend_from_slice(&[1, 2, 3, 4]);
        want.extend_from_slice(&host_u16(12));
        want.extend_from_slice(&host_u16(3 | NLA_F_NESTED));
        want.extend_from_slice(&host_u16(5));
        want.extend_from_slice(&host_u16(1));
        want.extend_from_slice(&[9, 0, 0, 0]);
        assert_eq!(a.0, want);
    }

    #[test]
    fn batch_is_framed_by_begin_and_end() {
        let mut b = Batch::new();
        let mut t = Attrs::default();
        t.str(1, TABLE);
        b.msg("x", NFT_MSG_NEWTABLE, NLM_F_CREATE, NFPROTO_IPV4, &t);
        // begin (20 bytes), then the message: type (10 << 8) | 0, flags request|ack|create.
        assert_eq!(read_host_u32(&b.buf[0..]), 20);
        assert_eq!(read_host_u16(&b.buf[4..]), NFNL_MSG_BATCH_BEGIN);
        assert_eq!(&b.buf[18..20], &NFNL_SUBSYS_NFTABLES.to_be_bytes());
        assert_eq!(read_host_u16(&b.buf[24..]), NFNL_SUBSYS_NFTABLES << 8);
        assert_eq!(read_host_u16(&b.buf[26..]), NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(b.buf[36], NFPROTO_IPV4);
        assert_eq!(b.acked.len(), 1);
    }
}
