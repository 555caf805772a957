//! Rate-limited warnings about dropped adverts (issue 14): a peer configured differently from us
//! (a wrong `auth_pass` leaves two masters) or malformed VRRP packets on an interface.

use std::net::IpAddr;

use tracing::warn;

use super::actor::Inst;
use super::loglimit;
use crate::config;
use crate::wire;

/// What a drop reason says about the peer's configuration, for the log; `None` for drops that
/// are not a peer's misconfiguration (our own adverts looped back).
pub(super) fn peer_fault(r: wire::DropReason) -> Option<&'static str> {
    Some(match r {
        wire::DropReason::Auth => {
            "authentication failed: its auth_pass differs from ours (keepalived: received an invalid passwd), \
             so both routers may be master"
        }
        wire::DropReason::Interval => "its advert_int differs from ours",
        wire::DropReason::VersionMismatch => "its VRRP version differs from ours",
        wire::DropReason::Ttl(_) => "its TTL / hop limit is not 255 (routed, or not a conforming VRRP router)",
        wire::DropReason::Owner => "it also claims to own the virtual addresses (priority 255)",
        _ => return None,
    })
}

/// Issue 14: an advert dropped because the peer is configured differently (a wrong `auth_pass`
/// leaves two masters) is logged, rate-limited: the first in full with the peer, interface and
/// VRID, then a count at most once per [`loglimit::SUMMARY_EVERY`].
pub(super) fn log_peer_fault(inst: &mut Inst, r: wire::DropReason, peer: IpAddr, now: std::time::Instant) {
    let Some(what) = peer_fault(r) else { return };
    let (_, lim) = inst.fault_logs.entry(r.label()).or_insert_with(|| (what, loglimit::Limiter::default()));
    if let Some(line) = lim.event(now, peer) {
        log_fault_line(&inst.cfg, what, &line);
    }
}

/// The summaries due on the 1 s tick.
pub(super) fn flush_peer_faults(inst: &mut Inst, now: std::time::Instant) {
    for (what, lim) in inst.fault_logs.values_mut() {
        if let Some(line) = lim.flush(now) {
            log_fault_line(&inst.cfg, what, &line);
        }
    }
}

/// Malformed packets worth an operator's attention (before the VRID is known).
pub(super) fn packet_fault(r: wire::DropReason) -> Option<&'static str> {
    Some(match r {
        wire::DropReason::Checksum => "bad checksum (keepalived: Invalid VRRPv3 checksum)",
        wire::DropReason::Version(_) => "unsupported VRRP version",
        _ => return None,
    })
}

pub(super) fn log_iface_fault_line(ifname: &str, what: &str, line: &loglimit::Line) {
    match line {
        loglimit::Line::First { peer } => warn!(
            interface = %ifname, %peer,
            "VRRP packet from {peer} on {ifname} dropped: {what}; further ones are counted and summed up every {} s",
            loglimit::SUMMARY_EVERY.as_secs()
        ),
        loglimit::Line::Summary { count, over, last_peer } => warn!(
            interface = %ifname, peer = %last_peer,
            "{count} more VRRP packets on {ifname} dropped in the last {} s: {what} (last from {last_peer})",
            over.as_secs()
        ),
    }
}

pub(super) fn log_fault_line(c: &config::Instance, what: &str, line: &loglimit::Line) {
    let (name, ifname, vrid) = (&c.name, &c.interface, c.vrid);
    match line {
        loglimit::Line::First { peer } => warn!(
            instance = %name, interface = %ifname, vrid, %peer,
            "({name}) advert from {peer} on {ifname} for VRID {vrid} dropped: {what}; \
             further ones are counted and summed up every {} s",
            loglimit::SUMMARY_EVERY.as_secs()
        ),
        loglimit::Line::Summary { count, over, last_peer } => warn!(
            instance = %name, interface = %ifname, vrid, peer = %last_peer,
            "({name}) {count} more adverts on {ifname} for VRID {vrid} dropped in the last {} s: {what} \
             (last from {last_peer})",
            over.as_secs()
        ),
    }
}
