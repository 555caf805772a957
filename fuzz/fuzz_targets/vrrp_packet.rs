//! VRRP packet parser: raw IPv4 datagram -> Repr, then emit -> parse round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vrrp::fuzz_packet(data);
});
