//! What the resource-level tests share: a one-node spec on loopback over a fresh sparse disk, and
//! a bounded wait on the published status.
#![allow(dead_code)] // each test binary uses its own subset

use std::net::SocketAddr;
use std::time::Duration;

use blockrepl::io::{store_meta, LinkConfig};
use blockrepl::meta::Meta;
use blockrepl::proto::{auth_key, Config};
use blockrepl::resource::{ResourceSpec, ResourceStatus};
use tokio::sync::watch;

/// Size of every test disk.
pub(crate) const SIZE: u64 = 1 << 20;

/// Node `who` of a pair in `dir` (disk and metadata created fresh): it dials `dial` when given,
/// listens on 127.0.0.1 (any port), serves NBD on 127.0.0.1 (any port), peer timeout 2 s.
pub(crate) fn spec(dir: &std::path::Path, who: &str, dial: Option<SocketAddr>) -> ResourceSpec {
    let disk = dir.join(format!("{who}.img"));
    std::fs::File::create(&disk).unwrap().set_len(SIZE).unwrap();
    let meta = dir.join(format!("{who}.md"));
    store_meta(&meta, &Meta::fresh(SIZE)).unwrap();
    let mut cfg = Config::new(auth_key(b"resource test"), dial.is_some(), if dial.is_some() { 7 } else { 8 });
    cfg.peer_timeout = Duration::from_secs(2);
    ResourceSpec {
        name: "r0".into(),
        replica: cfg,
        disk,
        meta,
        link: LinkConfig { listen: "127.0.0.1:0".parse().unwrap(), dial },
        nbd: Some(blockrepl::config::NbdEndpoint::Tcp("127.0.0.1:0".parse().unwrap())),
    }
}

/// Waits (bounded) until the published status satisfies `f`.
pub(crate) async fn until(rx: &mut watch::Receiver<ResourceStatus>, what: &str, f: impl Fn(&ResourceStatus) -> bool) {
    let ok = matches!(tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| f(s))).await, Ok(Ok(_)));
    assert!(ok, "timed out waiting for {what}: {:?}", *rx.borrow());
}
