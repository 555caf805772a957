use super::*;

/// A VRRPv3 advertisement captured from keepalived 2.2.7 with tshark inside a network namespace
/// (IPv4 header included: TTL 255, tos 0xc0). VRID 51, priority 150, 1 s, VIP 10.99.0.100.
const KEEPALIVED_V3_DATAGRAM: [u8; 32] = [
    0x45, 0xc0, 0x00, 0x20, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xd0, 0x36, 0x0a, 0x63, 0x00, 0x01, 0xe0, 0x00, 0x00,
    0x12, 0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x42, 0xad, 0x0a, 0x63, 0x00, 0x64,
];

/// A VRRPv2 `auth_type PASS` advertisement captured from keepalived 2.2.7 the same way.
/// VRID 52, priority 120, 1 s, VIP 10.99.0.101, password "secret42".
const KEEPALIVED_V2_PASS_DATAGRAM: [u8; 40] = [
    0x45, 0xc0, 0x00, 0x28, 0x00, 0x01, 0x00, 0x00, 0xff, 0x70, 0xd0, 0x2e, 0x0a, 0x63, 0x00, 0x01, 0xe0, 0x00, 0x00,
    0x12, 0x21, 0x34, 0x78, 0x01, 0x01, 0x01, 0xea, 0x82, 0x0a, 0x63, 0x00, 0x65, 0x73, 0x65, 0x63, 0x72, 0x65, 0x74,
    0x34, 0x32,
];

fn v4(a: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(a))
}

fn mcast() -> IpAddr {
    IpAddr::V4(MCAST_V4)
}

fn v3_repr() -> Repr {
    Repr {
        version: Version::V3,
        vrid: 51,
        priority: 150,
        interval: 100,
        auth: Auth::None,
        addrs: vec![v4([10, 99, 0, 100])],
    }
}

#[test]
fn parse_keepalived_v3_capture() {
    let (src, dst, ttl, msg) = split_ipv4(&KEEPALIVED_V3_DATAGRAM).unwrap();
    assert_eq!(src, Ipv4Addr::new(10, 99, 0, 1));
    assert_eq!(dst, MCAST_V4);
    assert_eq!(ttl, 255);
    let p = Packet::new_checked(msg).unwrap();
    assert_eq!(p.checksum(), 0x42ad);
    let (repr, kind) = Repr::parse(&p, src.into(), dst.into()).unwrap();
    assert_eq!(kind, ChecksumKind::PseudoHeader);
    assert_eq!(repr, v3_repr());
}

#[test]
fn emit_matches_keepalived_v3_capture() {
    let mut buf = [0xa5u8; 12];
    v3_repr()
        .emit(&mut Packet::new_unchecked(&mut buf[..]), v4([10, 99, 0, 1]), mcast(), ChecksumKind::PseudoHeader)
        .unwrap();
    assert_eq!(buf[..], KEEPALIVED_V3_DATAGRAM[20..]);
}

#[test]
fn anchor_capture_matches() {
    // The packet quoted in ANCHORS.md is the same advertisement.
    let anchor = [0x31, 0x33, 0x96, 0x01, 0x00, 0x64, 0x42, 0xad, 0x0a, 0x63, 0x00, 0x64];
    assert_eq!(anchor[..], KEEPALIVED_V3_DATAGRAM[20..]);
}

#[test]
fn message_only_checksum_accepted_and_reported() {
    let bytes = v3_repr().to_bytes(v4([10, 99, 0, 1]), mcast(), ChecksumKind::MessageOnly).unwrap();
    assert_ne!(bytes[..], KEEPALIVED_V3_DATAGRAM[20..]);
    assert_eq!(checksum::data(&bytes), 0xffff);
    let (repr, kind) = Repr::parse(&Packet::new_checked(&bytes[..]).unwrap(), v4([10, 99, 0, 1]), mcast()).unwrap();
    assert_eq!(kind, ChecksumKind::MessageOnly);
    assert_eq!(repr, v3_repr());
}

#[test]
fn v2_pass_capture_both_ways() {
    let (src, dst, ttl, msg) = split_ipv4(&KEEPALIVED_V2_PASS_DATAGRAM).unwrap();
    assert_eq!(ttl, 255);
    let (repr, kind) = Repr::parse(&Packet::new_checked(msg).unwrap(), src.into(), dst.into()).unwrap();
    assert_eq!(kind, ChecksumKind::MessageOnly);
    let want = Repr {
        version: Version::V2,
        vrid: 52,
        priority: 120,
        interval: 1,
        auth: Auth::pass("secret42"),
        addrs: vec![v4([10, 99, 0, 101])],
    };
    assert_eq!(repr, want);
    let mut buf = [0xa5u8; 20];
    want.emit(
        &mut Packet::new_unchecked(&mut buf[..]),
        src.into(),
        dst.into(),
        ChecksumKind::PseudoHeader, // ignored for v2
    )
    .unwrap();
    assert_eq!(buf[..], KEEPALIVED_V2_PASS_DATAGRAM[20..]);
}

#[test]
fn pass_truncates_to_eight_bytes() {
    assert_eq!(Auth::pass("secret42andmore"), Auth::pass("secret42"));
    assert_eq!(Auth::pass("ab"), Auth::Pass([b'a', b'b', 0, 0, 0, 0, 0, 0]));
}

#[test]
fn v3_ipv6_golden_both_ways() {
    let src: IpAddr = "fe80::1".parse().unwrap();
    let dst = IpAddr::V6(MCAST_V6);
    let repr = Repr {
        version: Version::V3,
        vrid: 7,
        priority: 100,
        interval: 10,
        auth: Auth::None,
        addrs: vec!["fe80::7".parse().unwrap(), "2001:db8::7".parse().unwrap()],
    };
    let mut buf = [0xa5u8; 8 + 32];
    repr.emit(&mut Packet::new_unchecked(&mut buf[..]), src, dst, ChecksumKind::PseudoHeader).unwrap();
    // Header bytes computed by hand; checksum verified independently below.
    assert_eq!(buf[..6], [0x31, 7, 100, 2, 0x00, 0x0a]);
    assert_eq!(buf[8..10], [0xfe, 0x80]);
    assert_eq!(buf[39], 7);
    let ph = checksum::pseudo_header_v6("fe80::1".parse().unwrap(), MCAST_V6, IP_PROTOCOL, buf.len() as u32);
    assert_eq!(checksum::combine(&[ph, checksum::data(&buf)]), 0xffff);
    let (back, kind) = Repr::parse(&Packet::new_checked(&buf[..]).unwrap(), src, dst).unwrap();
    assert_eq!(back, repr);
    assert_eq!(kind, ChecksumKind::PseudoHeader);
    // IPv6 has no message-only form.
    let mut bad = buf;
    bad[6] ^= 1;
    assert_eq!(Repr::parse(&Packet::new_checked(&bad[..]).unwrap(), src, dst), Err(DropReason::Checksum));
}

#[test]
fn split_ipv6_and_frames() {
    let src: Ipv6Addr = "fe80::1".parse().unwrap();
    let repr = Repr {
        version: Version::V3,
        vrid: 9,
        priority: 100,
        interval: 100,
        auth: Auth::None,
        addrs: vec!["fd00::50".parse().unwrap()],
    };
    let msg = repr.to_bytes(IpAddr::V6(src), IpAddr::V6(MCAST_V6), ChecksumKind::PseudoHeader).unwrap();
    let mut frame = vec![0x33, 0x33, 0, 0, 0, 0x12, 2, 0, 0, 0, 0, 1, 0x86, 0xdd];
    frame.extend_from_slice(&[0x60, 0, 0, 0]);
    frame.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[112, 255]);
    frame.extend_from_slice(&src.octets());
    frame.extend_from_slice(&MCAST_V6.octets());
    frame.extend_from_slice(&msg);
    frame.extend_from_slice(&[0, 0, 0, 0]); // Ethernet padding is ignored
    let pkt = ipv6_from_frame(&frame, Some([2, 0, 0, 0, 0, 2])).unwrap();
    let (s, d, hop, m) = split_ipv6(pkt).unwrap();
    assert_eq!((s, d, hop), (src, MCAST_V6, 255));
    let (back, _) = Repr::parse(&Packet::new_checked(m).unwrap(), IpAddr::V6(s), IpAddr::V6(d)).unwrap();
    assert_eq!(back, repr);
    // Our own frames and non-IPv6 frames are skipped.
    assert!(ipv6_from_frame(&frame, Some([2, 0, 0, 0, 0, 1])).is_none());
    let mut arp = frame.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    assert!(ipv6_from_frame(&arp, None).is_none());
    let mut other = pkt.to_vec();
    other[6] = 58;
    assert_eq!(split_ipv6(&other).unwrap_err(), DropReason::Type(58));
    assert!(split_ipv6(&pkt[..39]).is_err());
}

#[test]
fn every_validation_rule() {
    let src = v4([10, 99, 0, 1]);
    let good = KEEPALIVED_V3_DATAGRAM[20..].to_vec();
    let parse = |b: &[u8]| -> Result<(Repr, ChecksumKind), DropReason> {
        let p = Packet::new_checked(b)?;
        Repr::parse(&p, src, mcast())
    };
    assert!(parse(&good).is_ok());
    assert_eq!(parse(&good[..7]).unwrap_err(), DropReason::Truncated);
    assert_eq!(parse(&good[..11]).unwrap_err(), DropReason::Truncated);
    let mut long = good.clone();
    long.extend_from_slice(&[0, 0, 0, 0]);
    assert_eq!(parse(&long).unwrap_err(), DropReason::Length);
    let mut b = good.clone();
    b[0] = 0x41;
    assert_eq!(parse(&b).unwrap_err(), DropReason::Version(4));
    let mut b = good.clone();
    b[0] = 0x32;
    assert_eq!(parse(&b).unwrap_err(), DropReason::Type(2));
    let mut b = good.clone();
    b[3] = 2;
    assert_eq!(parse(&b).unwrap_err(), DropReason::Truncated);
    let mut b = good.clone();
    b[2] = 151;
    assert_eq!(parse(&b).unwrap_err(), DropReason::Checksum);
    // A pseudo-header checksum computed for another source fails.
    assert_eq!(
        Repr::parse(&Packet::new_checked(&good[..]).unwrap(), v4([10, 99, 0, 2]), mcast()).unwrap_err(),
        DropReason::Checksum
    );
    // VRRPv2 over IPv6 does not exist.
    let v2 = KEEPALIVED_V2_PASS_DATAGRAM[20..].to_vec();
    assert_eq!(
        Repr::parse(&Packet::new_checked(&v2[..]).unwrap(), "fe80::1".parse().unwrap(), IpAddr::V6(MCAST_V6))
            .unwrap_err(),
        DropReason::Family
    );
    // v2 checksum covers the auth data.
    let mut b = v2.clone();
    b[19] ^= 0x20;
    assert_eq!(parse(&b).unwrap_err(), DropReason::Checksum);
}

#[test]
fn emit_errors() {
    let r = v3_repr();
    let mut small = [0u8; 8];
    assert_eq!(
        r.emit(&mut Packet::new_unchecked(&mut small[..]), v4([1, 1, 1, 1]), mcast(), ChecksumKind::PseudoHeader),
        Err(EmitError::BufferLength)
    );
    let mut big = r.clone();
    big.interval = 4096;
    assert_eq!(big.to_bytes(v4([1, 1, 1, 1]), mcast(), ChecksumKind::PseudoHeader), Err(EmitError::Interval));
}

#[test]
fn split_ipv4_rejects_garbage() {
    assert!(split_ipv4(&[]).is_err());
    assert!(split_ipv4(&[0x60; 40]).is_err());
    let mut d = KEEPALIVED_V3_DATAGRAM;
    d[0] = 0x4f; // ihl 60 > len
    assert!(split_ipv4(&d).is_err());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trip_v3_v4(vrid in 1u8.., prio in any::<u8>(), int in 1u16..4096,
                            addrs in proptest::collection::vec(any::<[u8; 4]>(), 0..20),
                            src in any::<[u8; 4]>(), msg_only in any::<bool>()) {
            let r = Repr { version: Version::V3, vrid, priority: prio, interval: int, auth: Auth::None,
                           addrs: addrs.into_iter().map(v4).collect() };
            let kind = if msg_only { ChecksumKind::MessageOnly } else { ChecksumKind::PseudoHeader };
            let b = r.to_bytes(v4(src), mcast(), kind).unwrap();
            let (back, k) = Repr::parse(&Packet::new_checked(&b[..]).unwrap(), v4(src), mcast()).unwrap();
            prop_assert_eq!(back, r);
            // A message-only checksum can coincide with the pseudo-header form only if the
            // pseudo-header sums to zero (mod 0xffff); otherwise the kind is reported faithfully.
            if !msg_only { prop_assert_eq!(k, ChecksumKind::PseudoHeader); }
        }

        #[test]
        fn round_trip_v2(vrid in 1u8.., prio in any::<u8>(), int in 1u16..256,
                         addrs in proptest::collection::vec(any::<[u8; 4]>(), 0..20),
                         pass in "[a-z0-9]{0,8}") {
            let r = Repr { version: Version::V2, vrid, priority: prio, interval: int, auth: Auth::pass(&pass),
                           addrs: addrs.into_iter().map(v4).collect() };
            let b = r.to_bytes(v4([10, 0, 0, 1]), mcast(), ChecksumKind::PseudoHeader).unwrap();
            let (back, _) = Repr::parse(&Packet::new_checked(&b[..]).unwrap(), v4([10, 0, 0, 1]), mcast()).unwrap();
            prop_assert_eq!(back, r);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(p) = Packet::new_checked(&data[..]) {
                let _ = Repr::parse(&p, v4([1, 2, 3, 4]), mcast());
                let _ = Repr::parse(&p, "fe80::1".parse().unwrap(), IpAddr::V6(MCAST_V6));
            }
            let _ = split_ipv4(&data);
        }
    }
}

mod fuzz_entry {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fuzz_packet_entry_point(mut data in proptest::collection::vec(any::<u8>(), 0..80)) {
            // Make a share of inputs look like IPv4 + VRRP so the round trip runs.
            if data.len() > 28 {
                data[0] = 0x45;
                data[20] = 0x31;
            }
            crate::fuzz_packet(&data);
            crate::fuzz_packet(&super::KEEPALIVED_V3_DATAGRAM);
            crate::fuzz_packet(&super::KEEPALIVED_V2_PASS_DATAGRAM);
        }

        #[test]
        fn fuzz_conf_entry_point(text in "[a-z_{} \\n\"#0-9./]{0,200}") {
            crate::fuzz_keepalived_conf(&text);
        }
    }
}
