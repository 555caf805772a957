//! Linux networking for VRRP: interface facts, raw protocol-112 sockets, VIPs through netlink,
//! gratuitous ARP through AF_PACKET. No `unsafe`: socket2, rtnetlink and pnet_datalink do it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockAddr, Socket, Type};

use crate::config::{Config, Problem, Vip};
use crate::wire::{IP_PROTOCOL, MCAST_V4, MCAST_V6, TTL};

/// Facts about one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfInfo {
    /// Name.
    pub name: String,
    /// Index.
    pub index: u32,
    /// MAC address.
    pub mac: Option<[u8; 6]>,
    /// First IPv4 address that is not one of `exclude` (the VIPs).
    pub primary_v4: Option<Ipv4Addr>,
    /// First IPv6 link-local address (the source of VRRPv3/IPv6 adverts).
    pub link_local_v6: Option<Ipv6Addr>,
    /// Administratively up and carrier present.
    pub running: bool,
    /// Every address on the interface.
    pub addrs: Vec<IpAddr>,
}

/// Looks an interface up; `exclude` are addresses not to take as primary (our VIPs).
pub fn if_info(name: &str, exclude: &[IpAddr]) -> io::Result<IfInfo> {
    let ifs = pnet_datalink::interfaces();
    let i = ifs
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no interface {name}")))?;
    let primary_v4 = i.ips.iter().find_map(|n| match n.ip() {
        IpAddr::V4(a) if !exclude.contains(&IpAddr::V4(a)) => Some(a),
        _ => None,
    });
    let link_local_v6 = i.ips.iter().find_map(|n| match n.ip() {
        IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => Some(a),
        _ => None,
    });
    Ok(IfInfo {
        name: i.name.clone(),
        index: i.index,
        mac: i.mac.map(|m| m.octets()),
        primary_v4,
        link_local_v6,
        running: i.is_up() && i.is_running(),
        addrs: i.ips.iter().map(|n| n.ip()).collect(),
    })
}

/// Every interface the configuration names (an instance's `interface`, a VIP's `dev`, a
/// `track_interface`) that does not exist in this network namespace, one problem each, naming
/// the interface and the instance (keepalived -t checks them too; issue 14).
#[must_use]
pub fn missing_interfaces(cfg: &Config) -> Vec<Problem> {
    let have: Vec<String> = pnet_datalink::interfaces().into_iter().map(|i| i.name).collect();
    missing_among(cfg, &have)
}

fn missing_among(cfg: &Config, have: &[String]) -> Vec<Problem> {
    let mut out = Vec::new();
    for i in &cfg.instances {
        let at = match &i.loc {
            Some(l) => format!("{l} (vrrp_instance {})", i.name),
            None => format!("instance {}", i.name),
        };
        let mut check = |name: &str, role: &str| {
            if !name.is_empty() && !have.iter().any(|h| h == name) {
                out.push(Problem { at: at.clone(), msg: format!("{role} {name} does not exist here") });
            }
        };
        check(&i.interface, "interface");
        for v in &i.virtual_ipaddress {
            if let Some(d) = &v.dev {
                check(d, &format!("virtual_ipaddress {} dev", v.addr));
            }
        }
        for t in &i.track_interface {
            check(&t.name, "track_interface");
        }
    }
    out
}

/// The receiving socket of an interface: every protocol-112 packet that reaches it, IP header
/// included, multicast group 224.0.0.18 joined. Blocking; the daemon makes it non-blocking and
/// hands it to tokio.
pub fn recv_socket_v4(ifc: &IfInfo) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(IP_PROTOCOL))))?;
    s.bind_device(Some(ifc.name.as_bytes()))?;
    s.join_multicast_v4_n(&MCAST_V4, &InterfaceIndexOrAddress::Index(ifc.index))?;
    s.set_multicast_loop_v4(false)?;
    Ok(s)
}

/// The sending socket of an instance: bound to its source address and interface, TTL 255,
/// DSCP CS6 (tos 0xc0) like keepalived.
pub fn send_socket_v4(ifc: &IfInfo, src: Ipv4Addr) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(i32::from(IP_PROTOCOL))))?;
    s.bind_device(Some(ifc.name.as_bytes()))?;
    s.bind(&SockAddr::from(SocketAddrV4::new(src, 0)))?;
    s.set_multicast_if_v4(&src)?;
    s.set_multicast_ttl_v4(u32::from(TTL))?;
    s.set_ttl(u32::from(TTL))?;
    s.set_multicast_loop_v4(false)?;
    s.set_tos(0xc0)?;
    // This socket only sends; keep what the kernel queues for it small.
    s.set_recv_buffer_size(256)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Sends a VRRP message to `dst`.
pub fn send(s: &Socket, msg: &[u8], dst: Ipv4Addr) -> io::Result<()> {
    s.send_to(msg, &SockAddr::from(SocketAddr::new(IpAddr::V4(dst), 0)))?;
    Ok(())
}

/// The sending socket of a VRRPv3/IPv6 instance: bound to its link-local source and interface,
/// hop limit 255; it also joins ff02::12 so that the interface accepts the group's frames, which
/// the IPv6 receive path reads through AF_PACKET (it needs the hop limit from the IPv6 header).
pub fn send_socket_v6(ifc: &IfInfo, src: Ipv6Addr) -> io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::from(i32::from(IP_PROTOCOL))))?;
    s.bind_device(Some(ifc.name.as_bytes()))?;
    s.bind(&SockAddr::from(SocketAddrV6::new(src, 0, 0, ifc.index)))?;
    s.set_multicast_if_v6(ifc.index)?;
    s.set_multicast_hops_v6(u32::from(TTL))?;
    s.set_unicast_hops_v6(u32::from(TTL))?;
    s.set_multicast_loop_v6(false)?;
    s.join_multicast_v6(&MCAST_V6, ifc.index)?;
    s.set_recv_buffer_size(256)?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Sends a VRRP message to an IPv6 destination (scope: the interface index).
pub fn send_v6(s: &Socket, msg: &[u8], dst: Ipv6Addr, scope: u32) -> io::Result<()> {
    s.send_to(msg, &SockAddr::from(SocketAddrV6::new(dst, 0, 0, scope)))?;
    Ok(())
}

/// Reads Ethernet frames of an interface (AF_PACKET through pnet), for the IPv6 receive path.
/// With a `read_timeout`, `next()` returns an error of kind [`io::ErrorKind::TimedOut`] after
/// that long without a frame (so that the reading thread can notice it should end).
pub fn frame_receiver(
    ifname: &str,
    read_timeout: Option<std::time::Duration>,
) -> io::Result<Box<dyn pnet_datalink::DataLinkReceiver>> {
    let ni = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == ifname)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, ifname.to_string()))?;
    let cfg = pnet_datalink::Config { read_timeout, ..pnet_datalink::Config::default() };
    match pnet_datalink::channel(&ni, cfg)? {
        pnet_datalink::Channel::Ethernet(_tx, rx) => Ok(rx),
        _ => Err(io::Error::other("unexpected datalink channel type")),
    }
}

/// Builds an unsolicited neighbour advertisement (ICMPv6 type 136, O=1, S=0) for `target`, with
/// the target link-layer address option. The kernel fills in the ICMPv6 checksum.
#[must_use]
pub fn unsolicited_na(mac: [u8; 6], target: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136;
    m[4] = 0x20; // Override
    m[8..24].copy_from_slice(&target.octets());
    m[24] = 2; // target link-layer address
    m[25] = 1; // 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

/// Sends `repeat` unsolicited NAs to ff02::1 (hop limit 255) for every IPv6 VIP on `ifc`.
pub fn send_unsolicited_nas(ifc: &IfInfo, vips: &[Vip], repeat: u32) -> io::Result<()> {
    let Some(mac) = ifc.mac else {
        return Ok(());
    };
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(ifc.name.as_bytes()))?;
    s.set_multicast_if_v6(ifc.index)?;
    s.set_multicast_hops_v6(255)?;
    let all_nodes = SockAddr::from(SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, ifc.index));
    for _ in 0..repeat {
        for v in vips {
            if let IpAddr::V6(a) = v.addr {
                s.send_to(&unsolicited_na(mac, a), &all_nodes)?;
            }
        }
    }
    Ok(())
}

/// Builds a gratuitous ARP: a broadcast ARP request whose sender and target IP are the VIP.
#[must_use]
pub fn garp_frame(mac: [u8; 6], vip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&vip.octets());
    f[32..38].copy_from_slice(&[0xff; 6]);
    f[38..42].copy_from_slice(&vip.octets());
    f
}

/// Sends `repeat` gratuitous ARPs for every IPv4 VIP on `ifname`.
pub fn send_garps(ifname: &str, vips: &[Vip], repeat: u32) -> io::Result<()> {
    let ifs = pnet_datalink::interfaces();
    let Some(ni) = ifs.into_iter().find(|i| i.name == ifname) else {
        return Err(io::Error::new(io::ErrorKind::NotFound, ifname.to_string()));
    };
    let Some(mac) = ni.mac.map(|m| m.octets()) else {
        return Ok(());
    };
    let ch = pnet_datalink::channel(&ni, pnet_datalink::Config::default())?;
    let pnet_datalink::Channel::Ethernet(mut tx, _rx) = ch else {
        return Err(io::Error::other("unexpected datalink channel type"));
    };
    for _ in 0..repeat {
        for v in vips {
            if let IpAddr::V4(a) = v.addr {
                if let Some(r) = tx.send_to(&garp_frame(mac, a), None) {
                    r?;
                }
            }
        }
    }
    Ok(())
}

/// Calls `on_event` whenever the kernel reports a link change (RTM_NEWLINK / RTM_DELLINK on
/// the rtnetlink link multicast group: carrier, admin state, new or removed interfaces), from a
/// thread blocked in `recv` (no polling). The thread ends when `on_event` returns false, or when
/// `alive` returns false: it is asked every `check_every` while no event comes.
pub fn watch_links(
    mut on_event: impl FnMut() -> bool + Send + 'static,
    alive: impl Fn() -> bool + Send + 'static,
    check_every: std::time::Duration,
) -> io::Result<()> {
    const RTNLGRP_LINK: u32 = 1;
    let mut s = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
    s.bind_auto()?;
    s.add_membership(RTNLGRP_LINK)?;
    socket2::SockRef::from(&s).set_read_timeout(Some(check_every))?;
    std::thread::Builder::new().name("vrrp-link-watch".into()).spawn(move || {
        loop {
            if !alive() {
                return;
            }
            match s.recv_from_full() {
                // One datagram may carry several messages; one re-read of the links covers all.
                Ok(_) => {
                    if !on_event() {
                        return;
                    }
                }
                Err(e) if e.raw_os_error() == Some(105) => {
                    // ENOBUFS: events were lost; re-read anyway.
                    if !on_event() {
                        return;
                    }
                }
                // EINTR (a SIGSTOP/SIGCONT of the process, a signal to another thread): the
                // queued datagrams are still there; read again.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    tracing::warn!("link events: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                    if !on_event() {
                        return;
                    }
                }
            }
        }
    })?;
    Ok(())
}

/// Adds and removes VIPs through rtnetlink.
#[derive(Debug, Clone)]
pub struct Netlink {
    handle: rtnetlink::Handle,
}

const EEXIST: i32 = 17;
const EADDRNOTAVAIL: i32 = 99;
const ENOENT: i32 = 2;

fn nl_code(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

impl Netlink {
    /// Opens a netlink connection, spawned on the current tokio runtime; the task is returned
    /// so that its owner can end it (abort) when it stops.
    pub fn new() -> io::Result<(Netlink, tokio::task::JoinHandle<()>)> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let task = tokio::spawn(conn);
        Ok((Netlink { handle }, task))
    }

    /// Adds `vip` to interface `index` (already present is fine), with its label, broadcast
    /// address and scope.
    pub async fn add(&self, index: u32, vip: &Vip) -> io::Result<()> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
        let mut req = self.handle.address().add(index, vip.addr, vip.prefix);
        let msg = req.message_mut();
        if vip.addr.is_ipv6() {
            // Like keepalived: a VIP moves between routers, duplicate address detection would
            // only delay it.
            msg.header.flags |= rtnetlink::packet_route::address::AddressHeaderFlags::Nodad;
        }
        // keepalived sets a broadcast address only when `brd` is given.
        msg.attributes.retain(|a| !matches!(a, AddressAttribute::Broadcast(_)));
        if let Some(b) = vip.brd {
            msg.attributes.push(AddressAttribute::Broadcast(b));
        }
        if let Some(l) = &vip.label {
            msg.attributes.push(AddressAttribute::Label(l.clone()));
        }
        msg.header.scope = AddressScope::from(vip.scope);
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(e) if nl_code(&e) == Some(EEXIST) => Ok(()),
            Err(e) => Err(io::Error::other(format!("add {vip}: {e}"))),
        }
    }

    /// Removes `vip` from interface `index` (absent is fine).
    pub async fn del(&self, index: u32, vip: &Vip) -> io::Result<()> {
        let mut req = self.handle.address().add(index, vip.addr, vip.prefix);
        let msg = req.message_mut().clone();
        match self.handle.address().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(e) if matches!(nl_code(&e), Some(EADDRNOTAVAIL | ENOENT)) => Ok(()),
            Err(e) => Err(io::Error::other(format!("remove {vip}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_golden() {
        let f = garp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 168, 50, 50));
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0,
            1, 192, 168, 50, 50, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 192, 168, 50, 50,
        ];
        assert_eq!(f, want);
    }

    /// Issue 14: check-config exited 0 on an interface that does not exist.
    #[test]
    fn missing_interfaces_are_named_with_their_instance() {
        let text = "vrrp_instance VI_1 {\n  interface eth9\n  virtual_router_id 1\n  virtual_ipaddress {\n    \
                    10.0.0.9/24 dev eth7\n    10.0.0.10/24 dev eth0\n  }\n  track_interface {\n    eth8\n    lo\n  }\n}\n";
        let (cfg, _) = crate::config::keepalived::parse(text, std::path::Path::new("/k.conf")).unwrap();
        let have = ["lo".to_string(), "eth0".to_string()];
        let p: Vec<String> = missing_among(&cfg, &have).iter().map(ToString::to_string).collect();
        assert_eq!(
            p,
            [
                "/k.conf:1 (vrrp_instance VI_1): interface eth9 does not exist here",
                "/k.conf:1 (vrrp_instance VI_1): virtual_ipaddress 10.0.0.9 dev eth7 does not exist here",
                "/k.conf:1 (vrrp_instance VI_1): track_interface eth8 does not exist here",
            ]
        );
        let have = ["lo", "eth0", "eth7", "eth8", "eth9"].map(String::from);
        assert!(missing_among(&cfg, &have).is_empty());
    }
}
