//! NBD request headers and INFO/GO option bodies: parsing never panics; requests round-trip.
#![no_main]
use blockrepl::nbd::wire::{InfoRequest, Request, RequestPacket};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = InfoRequest::parse(data);
    if let Ok(r) = Request::parse_bytes(data) {
        let mut buf = [0u8; 28];
        if let Ok(mut p) = RequestPacket::new_checked(&mut buf[..]) {
            r.emit(&mut p);
        }
        assert_eq!(Request::parse_bytes(&buf), Ok(r));
    }
});
