#![no_main]
// The archive item stream decoder must never panic, whatever the bytes.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = dedupstore::archive::decode_items(data);
});
