//! On-disk replication metadata: decoding never panics; what decodes re-encodes identically.
#![no_main]
use blockrepl::meta::Meta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Meta::from_bytes(data) {
        assert_eq!(Meta::from_bytes(&m.to_bytes()), Ok(m));
    }
});
