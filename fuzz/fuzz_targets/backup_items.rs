#![no_main]
// The archive item stream decoder must never panic, whatever the bytes; whatever it accepts
// re-encodes to a stream that decodes to the same items (parse → emit round trip).
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(items) = dedupstore::archive::decode_items(data) {
        let mut again = Vec::new();
        for it in &items {
            // An item that decoded must encode again; a failure shows as a mismatch below.
            let _ = dedupstore::archive::encode_item(it, &mut again);
        }
        assert_eq!(dedupstore::archive::decode_items(&again).ok().as_ref(), Some(&items));
    }
});
