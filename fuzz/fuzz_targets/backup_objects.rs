#![no_main]
// Object envelopes (all modes) and chunk decompression must never panic on stored bytes.
use dedupstore::crypto::{Crypto, MasterKey, Mode};
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for mode in [Mode::Repokey, Mode::Authenticated, Mode::None] {
        let _ = Crypto::new(mode, MasterKey::public()).open("fuzz", b"aad", data);
    }
    let _ = dedupstore::compress::decompress(data, 1 << 20);
});
