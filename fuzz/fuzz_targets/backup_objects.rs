#![no_main]
// Object envelopes (all modes), chunk decompression and every stored object's decoder (manifest,
// archive, index file, pack header) must never panic on stored bytes.
use dedupstore::archive::{ArchiveMeta, Manifest};
use dedupstore::crypto::{Crypto, MasterKey, Mode};
use dedupstore::repo::{BlobEntry, IndexFile};
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for mode in [Mode::Repokey, Mode::Authenticated, Mode::None] {
        let _ = Crypto::new(mode, MasterKey::public()).open("fuzz", b"aad", data);
    }
    let _ = dedupstore::compress::decompress(data, 1 << 20);
    // What the envelope protects, decoded as if the MAC had passed.
    let _ = postcard::from_bytes::<Manifest>(data);
    let _ = postcard::from_bytes::<ArchiveMeta>(data);
    let _ = postcard::from_bytes::<IndexFile>(data);
    let _ = postcard::from_bytes::<Vec<BlobEntry>>(data);
});
