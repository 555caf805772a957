//! Replication frames: parsing never panics, and whatever parses re-emits to the same frame.
#![no_main]
use blockrepl::wire::Msg;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::parse_bytes(data) {
        assert_eq!(Msg::parse_bytes(&m.to_vec()), Ok(m));
    }
});
