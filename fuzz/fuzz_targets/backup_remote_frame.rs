#![no_main]
// The remote protocol's parsers and the server's request handler must never panic on client bytes.
// (A fresh server handles one request, so no object can be written: Hello comes first.)
use dedupstore::remote::{RepoLocation, RequestPacket, RequestRepr, ResponseRepr, ServeOptions, Server};
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(p) = RequestPacket::new_checked(data) {
        let _ = RequestRepr::parse(&p);
    }
    let _ = ResponseRepr::parse(data);
    let _ = RepoLocation::parse(&String::from_utf8_lossy(data));
    let opts = ServeOptions {
        restrict_to_paths: vec!["/nonexistent-fuzz-root".into()],
        append_only: true,
        storage_quota: Some(1),
    };
    let _ = Server::new(opts).handle(data);
});
