//! Sans-IO orchestration of one rempart host (`rempart-node`): which role the host plays for a
//! service, the ordered steps that move the service (promote ⇒ mount ⇒ services ⇒ health ⇒ VIP,
//! and back), and the witness's quorum lease.
//!
//! One [`Orchestrator`] runs per service. It takes `(now, input)` — the VRRP state of the
//! service's instance, the replicated resource's status, the witness client's view of the lease
//! and of the fence, step results, backup results, operator commands, timers — and returns
//! [`Action`]s for the IO shell. It never reads a clock, a socket or a file; the simulation in
//! `tests/sim.rs` drives it, with the real `vrrp`, `blockrepl` and witness cores, through 10,000
//! seeds.
//!
//! # Phases and steps
//!
//! ```text
//!                  VRRP MASTER                     quorum: peer connected and Secondary
//!   Idle ─────────────────────────▶ WaitingQuorum  (blockrepl's two-phase promote), or no peer
//!    ▲                                   │          and lease valid and fence held; disk UpToDate
//!    │                                   ▼
//!    │                 StartingUp: promote ⇒ mount ⇒ start 0..n ⇒ health ⇒ add VIP
//!    │                                   │ (each step has a timeout)
//!    │                                   ▼
//!    │                                Serving ──── backups run here (hourly, never two,
//!    │                                   │         catch up after downtime; the schedule
//!    │                                   │         continues from the repository's newest
//!    │                                   │         archive, read as the up order begins)
//!    │   VRRP BACKUP/FAULT, switchover,  │
//!    │   shutdown, lost quorum, failure  ▼
//!    └──── SteppingDown: VIP off ⇒ backup cancelled ⇒ stop n..0 ⇒ unmount ⇒ demote
//!                                        (⇒ demote killing openers if refused ⇒ Stuck, retried)
//!
//!   any failed or timed-out step of the up order, no quorum in time, a Primary losing quorum:
//!     GaveUp: FAULT forced (the VRRP instance sends priority 0, the peer takes over), the down
//!     order unwinds what was done (a step that failed or timed out counts as done: every down
//!     step is idempotent), FAULT is held for `fault_hold`, then cleared with the priority
//!     lowered below the peer's until this node serves again.
//!
//!   a "remove VIP" that failed or timed out: give-up, the down order goes on, and the step is
//!     retried until it succeeds before the node counts as down (the VIP must never outlive
//!     the service); a resource that turns Primary with no promotion running (one that timed
//!     out completed late) counts as promoted and is taken down the same way.
//! ```
//!
//! At most one step runs at a time and every decision is taken again after every input, so a
//! change of mind (VRRP back to Backup during the up order) waits for the running step and then
//! unwinds: the service is never left half up. The VIP is added last, after the health check, so
//! a client never reaches a half-started service, and removed first.
//!
//! Maintenance mode freezes the VRRP state the machine follows (no automatic failover); safety
//! still acts: a lost quorum or a failed step still takes the service down. A switchover is a
//! give-up without a failure: down order here, FAULT so that the peer takes over at once
//! (Skew_Time), priority lowered so that this node does not take the service back; its phase is
//! `HandingOver`, not `GaveUp`, so that monitoring pages for failures only.
//!
//! A node serving alone (Primary, the peer not even connected, its lease valid) does not step
//! down the moment VRRP says BACKUP: it holds on for `vrrp_settle` (2 s). The case is a peer that
//! was frozen longer than the lease (SIGSTOP, a paused VM): it wakes up still VRRP master, sends
//! one advert at its old priority, then learns it has no lease and gives up (priority 0). The
//! peer cannot write meanwhile (no connection, no lease: it cannot promote), so obeying that
//! advert would only restart the whole service here. The hold ends early when the peer connects
//! or the lease runs short; a BACKUP that outlasts it is obeyed.
//!
//! # Quorum: the lease and the fence
//!
//! The witness (`rempart-node witness`, on the monitoring host) holds, per resource name, at most
//! one lease: a holder and an expiry on the witness's monotonic clock. `Acquire/Renew` is granted
//! when the resource has no live lease or the requester holds it (expiry = receive time + ttl);
//! `Release` ends the holder's lease. The client counts its lease as valid until **the time the
//! request was sent + ttl − margin**, never from the reply, so its view always ends before the
//! witness's; it renews every ttl/3.
//!
//! - A Primary holds the lease continuously ([`Action::WantLease`]); a Secondary asks for it only
//!   when it wants to promote without its peer; a node releases it after it demoted.
//! - **Promote** needs the peer (connected, and its grant in blockrepl's two-phase promote) or
//!   the lease **and the fence**.
//! - **The fence** is a second lease (another resource name, a ttl longer than any run) that
//!   says "the holder may have writes its peer lacks". A Primary whose writes no longer reach
//!   its peer takes it before acknowledging anything alone; a node promoting without its peer
//!   takes it too; it is released once both disks are UpToDate and connected again. Without it,
//!   a replication-only cut (the primary keeps writing with its lease), followed by the
//!   primary's crash, would let the backup promote with stale data and lose acknowledged
//!   writes: with it, the backup is refused and waits for the primary's data (RPO 0 before
//!   availability, as DRBD's fencing). The shell renews it like the lease (every ttl/3, as the
//!   witness client does for any resource it wants) and resends a release until the witness
//!   answered it. The witness is stateless, so a restart forgets the fence; the holder's next
//!   renewal teaches it back, because a restarted witness grants renewals (only a node that
//!   held the resource before sends one) while it refuses every new acquisition for its
//!   start-up grace (its longest lease ttl). What remains: a witness restart while the fence's
//!   holder cannot renew it for the whole grace (crashed, or restarted and forgot it, frozen,
//!   cut from the witness) forgets it, and the node with stale data could then promote. That
//!   needs three faults (writes alone, the holder gone, the witness restarting) and is the
//!   one case the simulation does not inject; a witness that kept fences on disk would close
//!   it.
//! - **A write is acknowledged without the peer only while** [`Orchestrator::may_ack_alone`]: the
//!   node is Primary, holds the fence, and `now < lease_until` on the monotonic clock at the
//!   instant of the acknowledgement. The replication core (or the shell in front of it) fails
//!   or suspends such a write otherwise.
//! - A Primary that lost its peer starts stepping down at `lease_until − step_down_budget`
//!   when the lease was not renewed.
//!
//! ## The timing argument
//!
//! Let the primary P send its last successful renewal at `s` (P's clock); the witness received
//! it at `r ≥ s` and keeps the lease until `r + ttl`. P counts it valid until
//! `s + ttl − margin`, the margin covering the clocks' rate difference over one ttl (at least
//! ttl/10 and 50 ms). So **P's view of its lease always ends before the witness's**, whatever the
//! delays, because it starts counting before the witness does.
//!
//! - *Two writers never overlap.* A second node Q acknowledges alone only while it holds the
//!   lease, which the witness grants only after P's expired: at witness time `≥ r + ttl`, so at
//!   a real time after P's view ended. Writes acknowledged with the peer need no lease: Q's
//!   promotion through the peer is refused while P is a connected Primary (two-phase), and once
//!   the connection broke, P's writes can no longer be acknowledged by Q's disk.
//! - *A restarted witness changes nothing.* It grants no new lease for its grace (≥ ttl): any
//!   view of a lease the previous run granted has ended by then, unless its holder renewed it
//!   — a renewal is granted during the grace, and only a node whose view is valid sends one,
//!   so at most one node (the one the previous run granted) keeps or regains it.
//! - *A frozen primary acknowledges nothing.* If P is stopped (SIGSTOP, VM pause) longer than
//!   ttl, when it resumes `now ≥ lease_until`, and the check is made at the acknowledgement, on
//!   the monotonic clock (which counted the pause). Nothing P held in memory can be
//!   acknowledged alone; what its peer acknowledged before the pause is on the peer's disk.
//! - *The primary steps down in time.* With renewals every `renew = ttl/3`, a network timeout
//!   `net` per request and a step-down budget `down` (VIP off + services stopped + unmount +
//!   demote), P keeps quorum while `renew + net + down ≤ ttl − margin` — the Patroni rule
//!   `loop_wait + 2 × retry_timeout ≤ ttl` in this form. With ttl = 10 s, margin = 1 s,
//!   renewals every 3.3 s and a 2 s timeout, 3.7 s remain for the down order. The demote is
//!   not what makes it safe (the acknowledgement check is); it makes the hand-over clean.
//! - *Failover time.* When the primary dies, the backup has no peer either, so it needs the
//!   lease: Master_Down_Interval (detection) + what remains of the old lease on the witness
//!   (at most ttl) + the up order. A planned switchover is faster: the old primary demotes and
//!   releases the lease first, so the backup promotes through the peer path at once. Keep ttl
//!   small where failover time matters (the simulation uses 1.5 s).

pub mod config;
pub mod io;
pub mod orchestrator;
pub mod witness;

pub use orchestrator::{
    Action, BackupState, Command, CommandError, Config, Direction, Fence, LastBackupFrom, Orchestrator, Outcome, Phase,
    ReplView, Status, Step, StepFailure, StepRecord, Timeouts, Transition,
};
