//! The quorum witness: one small authenticated TCP protocol by which a node holds a **lease**
//! on a replicated resource, granted by the witness on the monitoring host. A node may promote,
//! or keep acknowledging writes, without its peer only while it holds that lease.
//!
//! ```text
//!   main (rempart-node)                monitoring (rempart-node witness)           backup
//!   LeaseClient ── Acquire/Renew ─────▶ LeaseServer: per resource at most  ◀──── LeaseClient
//!     │   ◀──────── Granted{ttl} ────── one (holder, expiry) on its clock  ──── Refused{main, 1.2 s}
//!     ▼
//!   lease_until = send time + ttl − margin ──▶ replication core: ack without peer only if now < lease_until
//!                                          └─▶ orchestrator: step down from lease_until − step-down budget
//! ```
//!
//! - [`wire`]: the frames (`Packet`/`Repr`, never panics on input).
//! - [`auth`]: challenge/response with a shared secret, then a tag on every frame.
//! - [`server`]: the lease table, driven by `(now, request)`.
//! - [`client`]: when a node asks, renews and releases, and until when it may rely on a lease,
//!   driven by `(now, input)`.
//!
//! The tokio shells (the witness's TCP server and the node's client task) are in
//! [`crate::io`].
//!
//! # The lease contract
//! - The witness holds, per resource, at most one lease: (holder, expiry on its monotonic
//!   clock). `Acquire` / `Renew { resource, node, ttl }` is granted when the resource has no live
//!   lease or the requester holds it, with expiry = receive time + min(ttl, max ttl); otherwise it
//!   is refused with the holder and its remaining time. `Release` ends the holder's lease at once.
//! - The client counts its lease as valid until **send time + ttl − margin** (margin =
//!   max(ttl/10, 50 ms)), never from the reply's arrival, and renews every ttl/3 while it wants
//!   the lease. A node that releases stops believing at once, before the release is sent.
//! - The witness keeps nothing on disk. After a restart it grants nothing for its longest TTL,
//!   so a lease it granted before the restart has ended before anyone else can get one.
//!
//! # Timing argument
//!
//! Write `T` for the TTL, `m` for the margin, `R` for the renew interval (T/3), `N` for the
//! network timeout of one request (the client task's), and `S` for the step-down budget (the
//! time the orchestrator needs to take the VIP off, stop the services, unmount and demote).
//!
//! **No two nodes acknowledge writes in the same period.** A node acknowledges a write without
//! its peer only if `now < lease_until` at the moment of the acknowledgement (the replication
//! core checks it per write). Let a request be sent at `s` on the node's clock and received at
//! `r ≥ s` by the witness. The node relies on the lease until `s + T − m`; the witness holds it
//! for this node until `r + T`, and grants it to no one else before then. The other node can
//! only acknowledge after it was granted the lease, that is after `r + T` on the witness's
//! clock, so the two periods are disjoint as long as the clocks' rates differ by less than
//! `m / T` (10 % at the defaults; real monotonic clocks differ by parts per million). Delay
//! only helps: a reply that comes late shortens the node's belief, never the witness's lease.
//! With the peer connected, the replication link's two-phase promotion already refuses a second
//! primary; the lease matters when the link is cut, and the primary holds it continuously (it
//! renews while primary), so it wins any race on a replication-only cut.
//!
//! **A frozen primary acknowledges nothing when it wakes.** SIGSTOP or a VM pause longer than
//! `T`: `lease_until` is on the monotonic clock, which kept running, so at wake-up
//! `now ≥ lease_until` and the very first write finds no lease — before the node has received
//! or processed anything ([`client::LeaseClient::lease_until`] compares with `now`, not with the
//! last message). Meanwhile the witness's lease ended at `r + T` and the peer may have taken it.
//! (Assumption: `Instant` is `CLOCK_MONOTONIC`, which runs through SIGSTOP and, with kvmclock,
//! through a VM pause; it does not run through a suspend to RAM of the node itself.)
//!
//! **The primary steps down before its lease ends** (Patroni's `loop_wait + 2 × retry_timeout
//! ≤ ttl`, here): after a renewal sent at `s` is granted, `lease_until = s + T − m`. The next
//! renewal goes out at `s + R` and is answered by `s + R + N` or counted lost. The orchestrator
//! starts stepping down at `lease_until − S` if no renewal has been granted by then. So that one
//! lost renewal does not cause a step-down, but a dead witness does, in time:
//!
//! ```text
//!     R + N + S ≤ T − m          (e.g. T = 3 s, m = 0.3 s, R = 1 s, N = 0.5 s ⇒ S ≤ 1.2 s)
//! ```
//!
//! Even if the step-down overruns `S`, no write is acknowledged past `lease_until`: the budget
//! buys a clean stop (services down before the peer's VIP comes up), not safety.
//!
//! **What it costs.** A secondary whose peer vanished (killed, isolated) must wait until the
//! primary's lease has ended at the witness before it can get it: up to `T` after the primary's
//! last renewal. The TTL is therefore the price of safety in failover time when the replication
//! link is gone; a shorter TTL means more frequent renewals.

pub mod auth;
pub mod client;
pub mod server;
pub mod wire;

#[cfg(test)]
mod tests;
