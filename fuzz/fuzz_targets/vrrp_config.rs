//! keepalived.conf parser: arbitrary text must parse or fail with an error, never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        vrrp::fuzz_keepalived_conf(text);
    }
});
