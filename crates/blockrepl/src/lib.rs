//! Synchronous block replication in userspace: DRBD's protocol C (and B, A) with an NBD frontend.
//!
//! ```text
//!   NBD client (qemu, nbdfuse+loop, nbd-client)
//!        │  nbd/ (fixed newstyle, many requests in flight)
//!        ▼
//!   BlockStore ── FileStore (standalone)
//!        │
//!        └─ ReplicatedStore (io/) ──▶ proto::Replica (sans-IO) ──▶ local disk
//!                                          │  wire/ frames over TCP
//!                                          ▼
//!                                    peer Replica ──▶ peer disk
//! ```
//!
//! Layers follow the house style: `wire` codecs, a sans-IO `proto` core driven by
//! `(now, input)`, and an `io` shell on tokio that owns sockets, files and the clock.
//!
//! | module | what |
//! |---|---|
//! | [`nbd`] | NBD server (fixed newstyle, GO/INFO/LIST/EXPORT_NAME, READ/WRITE+FUA/FLUSH/TRIM/WRITE_ZEROES) |
//! | [`store`] | the [`store::BlockStore`] seam, a file store, a memory store |
//! | [`wire`] | replication frames (`FramePacket` + `Msg`) |
//! | [`meta`] | generation identifiers and their comparison, bitmap, activity log, on-disk metadata |
//! | [`proto`] | the sans-IO replica: roles, states, protocols A/B/C, barriers, resync, split brain, verify |
//! | [`io`] | tokio shell: actor around the core, TCP link, control socket, metrics |
//! | [`config`] | the TOML resource file |
//! | [`drill`] | the failover drill step for `rempart-lab drill` |
//!
//! Serving a plain file over NBD (what `rempart-repl` does with the replicated volume):
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use blockrepl::{nbd::NbdServer, store::FileStore};
//! let store = Arc::new(FileStore::open(std::path::Path::new("r0.img"))?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:10809").await?;
//! NbdServer::new("r0", store).serve_tcp(listener).await // qemu-io -f raw nbd://127.0.0.1:10809/r0
//! # }
//! ```
//!
//! # Why these choices
//!
//! * **One actor owns the core.** Client writes, peer frames, disk completions and timers reach
//!   the [`proto::Replica`] as one ordered stream, so the state machine needs no locks and the
//!   simulation (`tests/sim_repl.rs`) drives exactly the code that runs in production.
//! * **Completion, not durability, unless asked.** Like a disk with a write cache, a completed
//!   write is durable only after FUA or FLUSH; the peer honours the same contract through
//!   barriers. Flushing every write on the peer would double the latency for nothing the
//!   client was promised.
//! * **Transfer log.** Writes since the last acknowledged barrier may still sit in the peer's
//!   cache; if the peer goes away they are marked out of sync, so a Secondary crash cannot leave
//!   silently missing blocks.
//! * **Refuse rather than guess.** Split brain, unrelated data, two Primaries, a Primary asked to
//!   become SyncTarget: the node goes StandAlone and says why; the operator (or an explicit
//!   `after-sb-0pri` policy) decides.
#![warn(missing_docs)]

pub mod config;
pub mod drill;
pub mod io;
pub mod meta;
pub mod metrics;
pub mod nbd;
mod pool;
pub mod proto;
pub mod resource;
pub mod store;
mod tasks;
pub mod wire;
