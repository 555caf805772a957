//! VRRP failover for rempart: a keepalived replacement.
#![warn(missing_docs)]

pub mod config;
pub mod io;
pub mod proto;
pub mod wire;

/// Fuzz entry point for the packet parser: splits an IPv4 datagram, parses the VRRP message and,
/// when it parses, checks that emitting it again parses back to the same value.
#[doc(hidden)]
pub fn fuzz_packet(data: &[u8]) {
    use std::net::IpAddr;
    let Ok((src, dst, _ttl, msg)) = wire::split_ipv4(data) else {
        return;
    };
    let (src, dst) = (IpAddr::V4(src), IpAddr::V4(dst));
    let Ok(p) = wire::Packet::new_checked(msg) else {
        return;
    };
    if let Ok((repr, kind)) = wire::Repr::parse(&p, src, dst) {
        if let Ok(bytes) = repr.to_bytes(src, dst, kind) {
            if let Ok(p2) = wire::Packet::new_checked(&bytes[..]) {
                let back = wire::Repr::parse(&p2, src, dst).map(|(r, _)| r);
                assert_eq!(back, Ok(repr), "emit/parse round trip");
            }
        }
    }
}

/// Fuzz entry point for the keepalived.conf parser: parse, interpret and validate arbitrary text.
#[doc(hidden)]
pub fn fuzz_keepalived_conf(text: &str) {
    if let Ok((cfg, _warnings)) =
        config::keepalived::parse(text, std::path::Path::new("/nonexistent/fuzz.conf"))
    {
        let _ = cfg.validate();
    }
}
