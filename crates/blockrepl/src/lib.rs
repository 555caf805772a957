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
//! | [`io`] | tokio shell: actor around the core, TCP link, NBD listener |
//! | [`resource`] | the embeddable resource: start, status channel, typed errors and refusals, shutdown |
//! | [`metrics`] | the replication families in a `prometheus-client` registry |
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
//! * **Quorum at the moment of the ack.** With the resource option `quorum = "majority"`
//!   (off by default), a Primary acknowledges a client write or flush only if, at that
//!   instant, its peer is connected and replicating, or it holds a witness lease
//!   ([`proto::Replica::handle_lease`], [`io::Handle::set_lease`]) with `now < valid_until`
//!   on the monotonic clock. The check is made when the acknowledgement is emitted, with the
//!   `now` of the input that produced it, never when the write started: a Primary frozen
//!   (SIGSTOP, VM pause) for longer than its lease wakes up with completions timestamped after
//!   the lease and acknowledges none of them. Without quorum, `on-no-quorum = suspend-io` holds
//!   the acknowledgements and releases them in order when the peer or a lease is back (a
//!   demotion fails them), `io-error` fails them (EIO). Promotion without a connected, granting
//!   peer needs a valid lease ([`resource::Refusal::NoQuorum`]).
//!
//!   The timing argument: the witness grants one holder per resource for a TTL, measured on
//!   its own clock from when it sends the grant; the node counts `valid_until` from *before*
//!   it asked (`asked_at + ttl`), so its lease ends no later than the witness's, whatever the
//!   network delay. The witness grants the other node only after the TTL (plus a margin for
//!   clock rate drift, e.g. 1 %) has passed since its last grant to this node. Hence at any
//!   instant at most one node has `now < valid_until`, and a write acknowledged without the
//!   peer was acknowledged by the one node that held the lease. With `renew` the renewal
//!   period: `renew + max round trip < ttl`, the Patroni-style budget, keeps a healthy node's
//!   lease from lapsing; a node that cannot renew for `ttl` stops acknowledging by itself.
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
