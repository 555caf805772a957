//! Step order and failure handling of the orchestrator, driven by hand.

use std::time::{Duration, Instant};

use blockrepl::proto::{ConnState, DiskState, ReplState, Role};
use vrrp::proto::State as VrrpState;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn cfg() -> Config {
    Config {
        services: vec!["slapd".into(), "nginx".into()],
        timeouts: Timeouts {
            quorum: 500 * MS,
            promote: 100 * MS,
            mount: 100 * MS,
            start: 100 * MS,
            health: 100 * MS,
            vip: 100 * MS,
            vip_off: 100 * MS,
            cancel_backup: 100 * MS,
            stop: 100 * MS,
            unmount: 100 * MS,
            demote: 100 * MS,
        },
        fault_hold: Duration::from_secs(1),
        step_down_budget: 300 * MS,
        // No hold: VRRP's BACKUP is obeyed at once (the hold has its own test).
        vrrp_settle: Duration::ZERO,
        backup_interval: None,
        backup_retry: Duration::from_secs(60),
    }
}

fn connected(role: Role, peer_role: Role) -> ReplView {
    ReplView {
        role,
        disk: DiskState::UpToDate,
        connection: ConnState::Connected,
        replication: ReplState::Established,
        peer_role: Some(peer_role),
        peer_disk: Some(DiskState::UpToDate),
    }
}

fn alone(role: Role) -> ReplView {
    ReplView { role, ..ReplView::standalone_secondary() }
}

/// The orchestrator with a shell that records actions and answers steps as told.
struct T {
    o: Orchestrator,
    now: Instant,
    log: Vec<Action>,
    repl: ReplView,
}

impl T {
    fn new(c: Config, repl: ReplView) -> Self {
        let now = Instant::now();
        let mut o = Orchestrator::new(c);
        o.start(now, repl, None);
        let mut t = T { o, now, log: Vec::new(), repl };
        t.drain();
        t
    }

    fn drain(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        while let Some(a) = self.o.poll_action() {
            out.push(a);
        }
        self.log.extend(out.iter().cloned());
        out
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.o.handle_timeout(self.now);
        self.drain();
    }

    fn running(&self) -> Option<(u64, Step)> {
        self.log.iter().rev().find_map(|a| match a {
            Action::Step { token, step } => Some((*token, *step)),
            _ => None,
        })
    }

    /// Answers the running step; promote and demote also change the resource's role, as the
    /// shell would report it.
    fn answer(&mut self, ok: bool) -> Step {
        let (token, step) = self.running().expect("a step runs");
        self.now += 2 * MS;
        let r = if ok { Ok(()) } else { Err(StepFailure::new("boom")) };
        self.o.handle_step_done(self.now, token, r);
        self.drain();
        if ok {
            match step {
                Step::Promote => self.set_role(Role::Primary),
                Step::Demote { .. } => self.set_role(Role::Secondary),
                _ => {}
            }
        }
        step
    }

    fn set_role(&mut self, role: Role) {
        self.repl.role = role;
        self.o.handle_repl(self.now, self.repl);
        self.drain();
    }

    /// Answers every step with success until none is asked; returns them in order.
    fn run_all(&mut self) -> Vec<Step> {
        let mut steps = Vec::new();
        loop {
            let before = self.log.len();
            let Some((token, step)) = self.running() else { break };
            if steps.last().is_some_and(|(t, _)| *t == token) {
                break;
            }
            steps.push((token, step));
            self.answer(true);
            if self.log.len() == before {
                break;
            }
        }
        steps.into_iter().map(|(_, s)| s).collect()
    }

    fn vrrp(&mut self, s: VrrpState) {
        self.o.handle_vrrp(self.now, s);
        self.drain();
    }

    fn serving(c: Config) -> Self {
        let mut t = T::new(c, connected(Role::Secondary, Role::Secondary));
        t.vrrp(VrrpState::Master);
        t.run_all();
        assert_eq!(t.o.phase(), Phase::Serving);
        t.log.clear();
        t
    }

    /// The id of the last read of the repository asked.
    fn read_query(&self) -> u64 {
        self.log
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::ReadLastBackup { query } => Some(*query),
                _ => None,
            })
            .expect("a read of the repository was asked")
    }

    fn backup_starts(&self) -> usize {
        self.log.iter().filter(|a| matches!(a, Action::StartBackup { .. })).count()
    }

    fn steps_since(&self, from: usize) -> Vec<Step> {
        self.log[from..]
            .iter()
            .filter_map(|a| match a {
                Action::Step { step, .. } => Some(*step),
                _ => None,
            })
            .collect()
    }
}

const UP: [Step; 6] = [Step::Promote, Step::Mount, Step::Start(0), Step::Start(1), Step::Health, Step::AllowVip];

#[test]
fn master_runs_the_up_order_then_serves() {
    let mut t = T::new(cfg(), connected(Role::Secondary, Role::Secondary));
    assert_eq!(t.o.phase(), Phase::Idle);
    assert!(t.running().is_none(), "nothing runs as VRRP Backup/Init");
    t.vrrp(VrrpState::Master);
    let steps = t.run_all();
    assert_eq!(steps, UP);
    assert_eq!(t.o.phase(), Phase::Serving);
    // A Primary holds the lease continuously.
    assert!(t.log.contains(&Action::WantLease(true)));
    let tr = t.o.status().last_transition.unwrap();
    assert_eq!(tr.direction, Direction::Up);
    let names: Vec<Step> = tr.steps.iter().map(|s| s.step).collect();
    assert_eq!(names[0], Step::Quorum);
    assert_eq!(&names[1..], &UP);
    assert!(tr.steps.iter().all(|s| s.outcome == Outcome::Ok && s.duration.is_some()));
    assert!(tr.ended.is_some());
}

#[test]
fn leaving_master_runs_the_down_order_in_reverse() {
    let mut t = T::serving(cfg());
    t.vrrp(VrrpState::Backup);
    let steps = t.run_all();
    assert_eq!(
        steps,
        [Step::VipOff, Step::Stop(1), Step::Stop(0), Step::Unmount, Step::Demote { kill_openers: false }]
    );
    assert_eq!(t.o.phase(), Phase::Idle);
    assert!(t.log.contains(&Action::WantLease(false)));
    assert!(t.log.contains(&Action::ReleaseLease));
    // The lease is released only after the demotion.
    let demote = t.log.iter().position(|a| matches!(a, Action::Step { step: Step::Demote { .. }, .. })).unwrap();
    let release = t.log.iter().position(|a| *a == Action::ReleaseLease).unwrap();
    assert!(release > demote);
}

#[test]
fn no_promotion_without_an_up_to_date_disk_then_gives_up() {
    let mut repl = connected(Role::Secondary, Role::Secondary);
    repl.disk = DiskState::Inconsistent;
    let mut t = T::new(cfg(), repl);
    t.vrrp(VrrpState::Master);
    assert_eq!(t.o.phase(), Phase::WaitingQuorum);
    assert!(t.running().is_none(), "promote must wait for UpToDate");
    t.advance(400 * MS);
    assert!(t.running().is_none());
    t.advance(200 * MS);
    assert!(t.running().is_none(), "never promoted");
    assert!(t.log.iter().any(|a| matches!(a, Action::ForceFault { reason } if reason.contains("not UpToDate"))));
    assert!(t.log.iter().any(|a| matches!(a, Action::LowerPriority { .. })));
    assert_eq!(t.o.phase(), Phase::GaveUp);
    assert!(t.o.status().gave_up.unwrap().contains("quorum"));
}

#[test]
fn no_promotion_while_the_connected_peer_is_primary() {
    let mut t = T::new(cfg(), connected(Role::Secondary, Role::Primary));
    t.vrrp(VrrpState::Master);
    t.advance(100 * MS);
    assert!(t.running().is_none());
    assert!(!t.log.contains(&Action::WantLease(true)), "a connected Secondary does not ask for the lease");
    t.repl.peer_role = Some(Role::Secondary);
    t.set_role(Role::Secondary);
    assert_eq!(t.running().map(|r| r.1), Some(Step::Promote));
}

#[test]
fn a_failed_service_start_unwinds_everything_and_gives_up() {
    let mut t = T::new(cfg(), connected(Role::Secondary, Role::Secondary));
    t.vrrp(VrrpState::Master);
    assert_eq!(t.answer(true), Step::Promote);
    assert_eq!(t.answer(true), Step::Mount);
    assert_eq!(t.answer(true), Step::Start(0));
    assert_eq!(t.answer(false), Step::Start(1));
    assert!(t.log.iter().any(|a| matches!(a, Action::ForceFault { reason } if reason.contains("start service 1"))));
    // The VRRP instance goes to FAULT as asked.
    t.vrrp(VrrpState::Fault);
    let from = t.log.len();
    let steps = t.run_all();
    let all: Vec<Step> = t.steps_since(from.saturating_sub(1));
    assert!(!all.contains(&Step::AllowVip));
    // Service 1 may have half started: it is stopped too; no VIP was ever allowed.
    assert_eq!(steps, [Step::Stop(1), Step::Stop(0), Step::Unmount, Step::Demote { kill_openers: false }]);
    assert!(!t.log.iter().any(|a| matches!(a, Action::Step { step: Step::AllowVip, .. })));
    let st = t.o.status();
    assert_eq!(st.phase, Phase::GaveUp);
    assert!(st.gave_up.unwrap().contains("boom"));
    // The hold ends: FAULT cleared, priority stays lowered until this node serves again.
    t.advance(Duration::from_secs(1));
    assert!(t.log.contains(&Action::ClearFault));
    assert!(!t.log.contains(&Action::RestorePriority));
    assert!(t.o.status().priority_lowered);
    t.vrrp(VrrpState::Master);
    t.run_all();
    assert_eq!(t.o.phase(), Phase::Serving);
    assert!(t.log.contains(&Action::RestorePriority));
}

#[test]
fn a_step_that_times_out_gives_up_and_unwinds() {
    let mut t = T::new(cfg(), connected(Role::Secondary, Role::Secondary));
    t.vrrp(VrrpState::Master);
    assert_eq!(t.answer(true), Step::Promote);
    assert_eq!(t.running().unwrap().1, Step::Mount);
    let (mount_token, _) = t.running().unwrap();
    t.advance(99 * MS);
    assert_eq!(t.running().unwrap().1, Step::Mount, "not before the timeout");
    t.advance(2 * MS);
    assert!(t
        .log
        .iter()
        .any(|a| matches!(a, Action::ForceFault { reason } if reason.contains("mount failed: timed out"))));
    // A mount that timed out may have happened: it is undone.
    assert_eq!(t.running().unwrap().1, Step::Unmount);
    // The late answer of the mount is ignored.
    t.o.handle_step_done(t.now, mount_token, Ok(()));
    assert!(t.o.poll_action().is_none());
    let steps = t.run_all();
    assert_eq!(steps, [Step::Unmount, Step::Demote { kill_openers: false }]);
    let tr = t.o.status().last_transition.unwrap();
    assert_eq!(tr.direction, Direction::Down);
}

#[test]
fn a_refused_demote_is_retried_killing_openers() {
    let mut t = T::serving(cfg());
    t.vrrp(VrrpState::Backup);
    for _ in 0..4 {
        t.answer(true);
    }
    assert_eq!(t.answer(false), Step::Demote { kill_openers: false });
    assert_eq!(t.running().unwrap().1, Step::Demote { kill_openers: true });
    // Even that fails: stuck, retried after a pause, shown in status.
    t.answer(false);
    assert_eq!(t.o.phase(), Phase::Stuck);
    let n = t.log.len();
    t.advance(50 * MS);
    assert_eq!(t.log.len(), n, "no retry before the pause");
    t.advance(60 * MS);
    assert_eq!(t.running().unwrap().1, Step::Demote { kill_openers: true });
    t.answer(true);
    assert_eq!(t.o.phase(), Phase::Idle);
}

#[test]
fn promotion_without_the_peer_needs_the_lease_and_the_fence() {
    let mut t = T::new(cfg(), alone(Role::Secondary));
    t.vrrp(VrrpState::Master);
    assert!(t.log.contains(&Action::WantLease(true)));
    assert!(t.running().is_none());
    assert!(!t.log.contains(&Action::AcquireFence), "the fence only with the lease");
    let until = t.now + Duration::from_secs(2);
    t.o.handle_lease(t.now, Some(until));
    t.drain();
    assert!(t.log.contains(&Action::AcquireFence));
    assert!(t.running().is_none());
    t.o.handle_fence(t.now, Fence::Held);
    t.drain();
    assert_eq!(t.running().unwrap().1, Step::Promote);
    t.answer(true);
    assert!(t.o.may_ack_alone(t.now));
    assert!(!t.o.may_ack_alone(until));
}

#[test]
fn a_fence_held_by_the_peer_forbids_promotion_without_it() {
    let mut t = T::new(cfg(), alone(Role::Secondary));
    t.vrrp(VrrpState::Master);
    t.o.handle_lease(t.now, Some(t.now + Duration::from_secs(2)));
    t.drain();
    t.o.handle_fence(t.now, Fence::Refused { holder: "main".into() });
    t.drain();
    assert!(t.running().is_none());
    assert!(t.log.iter().any(|a| matches!(a, Action::ForceFault { reason } if reason.contains("fence"))));
    assert!(t.log.contains(&Action::ReleaseLease));
}

#[test]
fn a_primary_that_loses_peer_and_lease_steps_down_before_the_lease_ends() {
    let mut t = T::serving(cfg());
    let until = t.now + Duration::from_secs(2);
    t.o.handle_lease(t.now, Some(until));
    t.drain();
    // The peer goes away: the fence is taken before acknowledging alone.
    t.repl = alone(Role::Primary);
    t.o.handle_repl(t.now, t.repl);
    t.drain();
    assert!(t.log.contains(&Action::AcquireFence));
    assert!(!t.o.may_ack_alone(t.now), "not before the fence is held");
    t.o.handle_fence(t.now, Fence::Held);
    t.drain();
    assert!(t.o.may_ack_alone(t.now));
    assert_eq!(t.o.poll_timeout(), Some(until - 300 * MS));
    t.now = until - 301 * MS;
    t.o.handle_timeout(t.now);
    t.drain();
    assert!(t.running().is_none(), "still serving before lease_until − budget");
    t.advance(MS);
    assert!(t.log.iter().any(|a| matches!(a, Action::ForceFault { reason } if reason.contains("lost quorum"))));
    assert_eq!(t.running().unwrap().1, Step::VipOff);
    let steps = t.run_all();
    assert_eq!(steps.last(), Some(&Step::Demote { kill_openers: false }));
    // It wrote alone: it keeps the fence after the demotion (the peer lacks its writes).
    assert!(!t.log.contains(&Action::ReleaseFence));
    // Once the peer has resynced, the fence goes.
    t.repl = connected(Role::Secondary, Role::Secondary);
    t.o.handle_repl(t.now, t.repl);
    t.drain();
    assert!(t.log.contains(&Action::ReleaseFence));
}

#[test]
fn a_primary_with_its_peer_needs_no_lease() {
    let mut t = T::serving(cfg());
    t.advance(Duration::from_secs(30));
    assert_eq!(t.o.phase(), Phase::Serving);
    assert!(!t.o.may_ack_alone(t.now));
}

#[test]
fn maintenance_stops_automatic_failover_but_not_safety() {
    let mut t = T::serving(cfg());
    t.o.handle_command(t.now, Command::MaintenanceOn).unwrap();
    t.vrrp(VrrpState::Backup);
    assert!(t.running().is_none(), "no automatic step down in maintenance");
    assert!(t.o.status().maintenance);
    t.o.handle_command(t.now, Command::MaintenanceOff).unwrap();
    t.drain();
    assert_eq!(t.running().unwrap().1, Step::VipOff);
}

#[test]
fn switchover_hands_over_and_is_refused_when_not_serving() {
    let mut idle = T::new(cfg(), connected(Role::Secondary, Role::Primary));
    assert_eq!(idle.o.handle_command(idle.now, Command::Switchover), Err(CommandError::NotServing(Phase::Idle)));
    let mut t = T::serving(cfg());
    t.o.handle_command(t.now, Command::Switchover).unwrap();
    t.drain();
    assert!(t.log.iter().any(|a| matches!(a, Action::ForceFault { reason } if reason.contains("switchover"))));
    let steps = t.run_all();
    assert_eq!(
        steps,
        [Step::VipOff, Step::Stop(1), Step::Stop(0), Step::Unmount, Step::Demote { kill_openers: false }]
    );
    // Planned: the phase says so (monitoring pages for gave_up, not for this), and the
    // hand-over's down order counts as a good one.
    let st = t.o.status();
    assert_eq!(st.phase, Phase::HandingOver);
    assert_eq!((st.transitions.down_ok, st.transitions.down_failed, st.transitions.up_failed), (1, 0, 0));
}

#[test]
fn a_failed_take_over_counts_as_a_failed_up_order() {
    let mut t = T::new(cfg(), connected(Role::Secondary, Role::Secondary));
    t.vrrp(VrrpState::Master);
    assert_eq!(t.answer(true), Step::Promote);
    assert_eq!(t.answer(true), Step::Mount);
    assert_eq!(t.answer(false), Step::Start(0));
    t.vrrp(VrrpState::Fault);
    t.run_all();
    let st = t.o.status();
    assert_eq!(st.phase, Phase::GaveUp, "a failure is not a hand-over");
    // The up order was replaced by its unwinding before it ended: still counted, as failed.
    assert_eq!(st.transitions.up_failed, 1, "{:?}", st.transitions);
    assert_eq!(st.transitions.up_ok, 0);
}

#[test]
fn shutdown_takes_everything_down_then_stops() {
    let mut t = T::serving(cfg());
    t.o.handle_command(t.now, Command::Shutdown).unwrap();
    t.drain();
    t.run_all();
    assert_eq!(t.log.last(), Some(&Action::Stopped));
    assert_eq!(t.o.phase(), Phase::Stopped);
}

#[test]
fn backups_run_on_the_serving_node_only_and_never_overlap() {
    let mut c = cfg();
    c.backup_interval = Some(Duration::from_secs(3600));
    let mut t = T::new(c.clone(), connected(Role::Secondary, Role::Secondary));
    t.advance(Duration::from_secs(1));
    assert!(!t.log.iter().any(|a| matches!(a, Action::StartBackup { .. })), "not on a Secondary");
    t.vrrp(VrrpState::Master);
    t.run_all();
    // Catch-up: no known last success (the repository has no archive either), so a run
    // starts as soon as the node serves.
    let starts = |t: &T| t.log.iter().filter(|a| matches!(a, Action::StartBackup { .. })).count();
    t.o.handle_last_backup(t.now, t.read_query(), Ok(None));
    t.drain();
    assert_eq!(starts(&t), 1);
    t.advance(Duration::from_secs(7200));
    assert_eq!(starts(&t), 1, "never two at a time");
    t.o.handle_backup_done(t.now, 1, Ok(()));
    t.drain();
    assert_eq!(starts(&t), 1);
    t.advance(Duration::from_secs(3599));
    assert_eq!(starts(&t), 1, "hourly");
    t.advance(Duration::from_secs(1));
    assert_eq!(starts(&t), 2);
    // A demotion cancels the running job first and waits for it before stopping services.
    t.vrrp(VrrpState::Backup);
    assert_eq!(t.answer(true), Step::VipOff);
    assert!(t.log.iter().any(|a| matches!(a, Action::CancelBackup { job: 2, .. })));
    assert!(t.running().unwrap().1 == Step::VipOff, "no further step before the job ends");
    t.o.handle_backup_done(t.now, 2, Err(StepFailure::new("cancelled")));
    t.drain();
    assert_eq!(t.running().unwrap().1, Step::Stop(1));
    assert_eq!(t.o.status().backup.cancelled, 1);
}

#[test]
fn a_backup_overdue_at_start_runs_at_once_and_one_not_due_waits() {
    let mut c = cfg();
    c.backup_interval = Some(Duration::from_secs(3600));
    let now = Instant::now();
    let mut o = Orchestrator::new(c.clone());
    o.start(now + Duration::from_secs(7200), connected(Role::Secondary, Role::Secondary), Some(now));
    assert_eq!(o.status().backup.next_due, Some(now + Duration::from_secs(3600)));
    let mut o2 = Orchestrator::new(c);
    o2.start(now, connected(Role::Secondary, Role::Secondary), Some(now));
    assert_eq!(o2.status().backup.next_due, Some(now + Duration::from_secs(3600)));
}

/// Found by the simulation (seed 67): a "remove VIP" step that failed was counted as done, the
/// shell still let the VRRP instance hold the VIP, and when the node became VRRP Master again
/// it announced the VIP while Secondary and unmounted.
#[test]
fn a_failed_vip_removal_gives_up_and_is_retried_before_the_node_counts_as_down() {
    let mut t = T::serving(cfg());
    t.vrrp(VrrpState::Backup);
    assert_eq!(t.answer(false), Step::VipOff);
    // FAULT makes the VRRP instance drop the VIP meanwhile.
    assert!(t.log.iter().any(|a| matches!(a, Action::ForceFault { reason } if reason.contains("remove VIP"))));
    // The down order goes on (the demote is not delayed)...
    for want in [Step::Stop(1), Step::Stop(0), Step::Unmount, Step::Demote { kill_openers: false }] {
        assert_eq!(t.answer(true), want);
    }
    // ... then the removal is tried again, not before its pause, and fails once more.
    let (tok, step) = t.running().unwrap();
    assert!(matches!(step, Step::Demote { .. }), "nothing new before the pause: {step:?}");
    t.advance(100 * MS);
    let (tok2, step) = t.running().unwrap();
    assert_ne!(tok2, tok);
    assert_eq!(step, Step::VipOff);
    assert_eq!(t.o.phase(), Phase::GaveUp);
    t.answer(false);
    // The FAULT hold ends, but the node is not down while the VIP may be allowed.
    t.advance(Duration::from_secs(1));
    assert!(!t.log.contains(&Action::ClearFault), "FAULT cleared while the VIP may still be allowed");
    assert_eq!(t.running().unwrap().1, Step::VipOff);
    t.answer(true);
    t.advance(MS);
    assert!(t.log.contains(&Action::ClearFault));
    assert_eq!(t.o.phase(), Phase::Idle);
    // Master again: a normal up order, the VIP allowed last.
    t.vrrp(VrrpState::Master);
    assert_eq!(t.run_all(), UP);
    assert_eq!(t.o.phase(), Phase::Serving);
}

/// Found by the simulation (seed 18985): a promotion timed out (the peer was stopped), the
/// down order "demoted" the still-Secondary resource, then the peer's grant arrived and the
/// resource became Primary — with nothing left to demote it, a Primary nobody served.
#[test]
fn a_promotion_that_completes_after_its_timeout_is_demoted() {
    let mut t = T::new(cfg(), connected(Role::Secondary, Role::Secondary));
    t.vrrp(VrrpState::Master);
    assert_eq!(t.running().unwrap().1, Step::Promote);
    t.advance(101 * MS);
    assert!(t.log.iter().any(|a| matches!(a, Action::ForceFault { reason } if reason.contains("promote"))));
    // The timed-out promotion counts as possibly done: the down order demotes (a no-op here).
    assert_eq!(t.answer(true), Step::Demote { kill_openers: false });
    t.vrrp(VrrpState::Fault);
    assert_eq!(t.o.phase(), Phase::GaveUp);
    let before = t.log.len();
    // The peer's grant arrives: the resource is Primary now.
    t.set_role(Role::Primary);
    assert_eq!(t.steps_since(before), [Step::Demote { kill_openers: false }]);
    t.answer(true);
    assert_eq!(t.o.status().repl.role, Role::Secondary);
}

/// Found by the simulation (seed 238705): a Primary wrote alone under the fence and crashed;
/// restarted, it wanted to promote alone, asked for the fence and got it (the witness still
/// had it as the holder), then gave up — and released it as "taken to promote, never written
/// with", which let the peer promote without the writes. The fence goes only when both disks
/// are equal again.
#[test]
fn a_fence_got_back_after_a_restart_is_kept_until_the_disks_are_equal() {
    let mut t = T::new(cfg(), alone(Role::Secondary));
    t.vrrp(VrrpState::Master);
    t.o.handle_lease(t.now, Some(t.now + Duration::from_secs(2)));
    t.drain();
    assert!(t.log.contains(&Action::AcquireFence));
    // The witness answers after the quorum wait ended: the node gave up meanwhile.
    t.advance(501 * MS);
    assert!(t.log.iter().any(|a| matches!(a, Action::ForceFault { reason } if reason.contains("no quorum"))));
    t.vrrp(VrrpState::Fault);
    t.o.handle_fence(t.now, Fence::Held);
    t.drain();
    t.advance(Duration::from_secs(2));
    assert!(!t.log.contains(&Action::ReleaseFence), "released while this node may have writes the peer lacks");
    // The peer is back and both disks are equal: now it goes.
    t.repl = connected(Role::Secondary, Role::Secondary);
    t.o.handle_repl(t.now, t.repl);
    t.drain();
    assert!(t.log.contains(&Action::ReleaseFence));
}

const HOUR: Duration = Duration::from_secs(3600);

/// A node told to serve, backups hourly, this node's own record `local` (given at start).
fn backing_up(local_ago: Option<Duration>) -> T {
    let mut c = cfg();
    c.backup_interval = Some(HOUR);
    let now = Instant::now() + 10 * HOUR;
    let repl = connected(Role::Secondary, Role::Secondary);
    let mut o = Orchestrator::new(c);
    o.start(now, repl, local_ago.map(|d| now - d));
    let mut t = T { o, now, log: Vec::new(), repl };
    t.drain();
    assert!(!t.log.iter().any(|a| matches!(a, Action::ReadLastBackup { .. })), "no read on a Secondary");
    t.vrrp(VrrpState::Master);
    assert!(t.log.iter().any(|a| matches!(a, Action::ReadLastBackup { .. })), "read as the up order begins");
    // The read runs beside the up order: it does not wait for the answer.
    assert_eq!(t.run_all(), UP);
    assert_eq!(t.o.phase(), Phase::Serving);
    t
}

/// Issue 15, "the next primary continues the schedule": the peer made a backup 10 minutes ago
/// (this node has none recorded); this node's first run comes an interval after the peer's, not
/// at once, then hourly, never two at a time.
#[test]
fn the_next_primary_continues_the_schedule_from_the_repository() {
    let mut t = backing_up(None);
    // Waiting for the repository's answer: nothing starts, however long the up order took.
    t.advance(Duration::from_secs(5));
    assert_eq!(t.backup_starts(), 0, "a backup started before the repository answered");
    assert!(t.o.status().backup.reading_repository);
    let peer_last = t.now - Duration::from_secs(600);
    t.o.handle_last_backup(t.now, t.read_query(), Ok(Some(peer_last)));
    t.drain();
    let b = t.o.status().backup;
    assert_eq!((b.last_success, b.last_success_from), (Some(peer_last), Some(LastBackupFrom::Repository)));
    assert_eq!(b.next_due, Some(peer_last + HOUR));
    assert_eq!(t.o.poll_timeout(), Some(peer_last + HOUR), "the shell is woken when it is due");
    t.advance(peer_last + HOUR - t.now - MS);
    assert_eq!(t.backup_starts(), 0, "started before the peer's schedule");
    t.advance(MS);
    assert_eq!(t.backup_starts(), 1, "due an interval after the peer's last archive");
    // Never overlapping: the run lasts longer than the interval.
    t.advance(2 * HOUR);
    assert_eq!(t.backup_starts(), 1);
    t.o.handle_backup_done(t.now, 1, Ok(()));
    t.drain();
    assert_eq!(t.o.status().backup.last_success_from, Some(LastBackupFrom::Local));
    t.advance(HOUR - MS);
    assert_eq!(t.backup_starts(), 1);
    t.advance(MS);
    assert_eq!(t.backup_starts(), 2);
}

/// Catching up after downtime: the repository's newest archive is older than the interval
/// (both nodes were down), so a run starts as soon as the answer comes.
#[test]
fn an_overdue_schedule_from_the_repository_runs_at_once() {
    let mut t = backing_up(Some(3 * HOUR));
    assert_eq!(t.backup_starts(), 0);
    let repo_last = t.now - 2 * HOUR;
    t.o.handle_last_backup(t.now, t.read_query(), Ok(Some(repo_last)));
    t.drain();
    assert_eq!(t.backup_starts(), 1, "overdue: runs at once");
    assert_eq!(t.o.status().backup.last_success, Some(repo_last), "the later of the two");
}

/// This node's own record is newer than the repository's archive (the repository answered
/// with an older one, e.g. pruned): the schedule keeps the node's own.
#[test]
fn the_later_of_the_local_record_and_the_repository_wins() {
    let mut t = backing_up(Some(Duration::from_secs(60)));
    let local = t.o.status().backup.last_success.unwrap();
    t.o.handle_last_backup(t.now, t.read_query(), Ok(Some(local - HOUR)));
    t.drain();
    let b = t.o.status().backup;
    assert_eq!((b.last_success, b.last_success_from), (Some(local), Some(LastBackupFrom::Local)));
    assert_eq!(b.next_due, Some(local + HOUR));
    assert_eq!(t.backup_starts(), 0);
}

/// An unreachable repository never blocks the promotion (the up order above went on without
/// the answer); the schedule falls back to the node's own record and the repository is read
/// again after the retry delay; an answer to an older read is ignored.
#[test]
fn an_unreachable_repository_falls_back_to_the_local_record_and_is_read_again() {
    let mut t = backing_up(Some(Duration::from_secs(600)));
    let local = t.o.status().backup.last_success.unwrap();
    let q1 = t.read_query();
    t.o.handle_last_backup(t.now, q1, Err(StepFailure::new("ssh: connection refused")));
    t.drain();
    let b = t.o.status().backup;
    assert_eq!((b.next_due, b.read_failures, b.reading_repository), (Some(local + HOUR), 1, false));
    assert_eq!(t.backup_starts(), 0, "the local record says not due yet");
    // Asked again after the retry delay (60 s here).
    t.advance(Duration::from_secs(59));
    assert_eq!(t.read_query(), q1);
    t.advance(Duration::from_secs(1));
    let q2 = t.read_query();
    assert!(q2 > q1, "read again after the retry delay");
    // A late answer to the first read is ignored; the second one moves the schedule.
    t.o.handle_last_backup(t.now, q1, Ok(Some(t.now)));
    t.drain();
    assert_eq!(t.o.status().backup.last_success, Some(local));
    let peer_last = local + Duration::from_secs(300);
    t.o.handle_last_backup(t.now, q2, Ok(Some(peer_last)));
    t.drain();
    assert_eq!(t.o.status().backup.next_due, Some(peer_last + HOUR));
}

/// A repository that does not answer at all delays a backup by at most the retry delay: then
/// the node's own record decides (none here: catch up at once), and the read is asked again.
#[test]
fn a_repository_that_never_answers_delays_a_backup_by_the_retry_delay_at_most() {
    let mut t = backing_up(None);
    let q1 = t.read_query();
    let asked = t.now;
    t.advance(Duration::from_secs(59));
    assert_eq!(t.backup_starts(), 0);
    t.advance(asked + Duration::from_secs(60) - t.now);
    assert_eq!(t.backup_starts(), 1, "no answer within the retry delay: the local record decides");
    assert_eq!(t.o.status().backup.read_failures, 1);
    // No second read while the job runs; one after it ended and the retry delay passed.
    t.advance(Duration::from_secs(120));
    assert_eq!(t.read_query(), q1);
    t.o.handle_backup_done(t.now, 1, Ok(()));
    t.drain();
    assert!(t.read_query() > q1);
}

/// Each up order reads the repository again: the peer may have backed up while it served.
#[test]
fn every_up_order_reads_the_repository_again() {
    let mut t = backing_up(None);
    let q1 = t.read_query();
    t.o.handle_last_backup(t.now, q1, Ok(Some(t.now)));
    t.drain();
    t.o.handle_command(t.now, Command::Switchover).unwrap();
    t.drain();
    t.run_all();
    t.vrrp(VrrpState::Backup);
    t.advance(Duration::from_secs(2));
    assert_eq!(t.o.phase(), Phase::Idle);
    assert_eq!(t.read_query(), q1, "no read while not told to serve");
    t.vrrp(VrrpState::Master);
    assert!(t.read_query() > q1);
}

/// A peer frozen longer than the lease wakes up still advertising as VRRP master for a moment,
/// then gives up (no peer, no lease: it cannot promote). The node serving alone holds on through
/// that moment instead of restarting the whole service; a BACKUP that lasts steps down.
#[test]
fn a_node_serving_alone_holds_on_through_a_woken_peers_stale_advert() {
    let mut c = cfg();
    c.vrrp_settle = Duration::from_secs(1);
    let mut t = T::serving(c);
    t.o.handle_lease(t.now, Some(t.now + Duration::from_secs(10)));
    t.repl = alone(Role::Primary);
    t.o.handle_repl(t.now, t.repl);
    t.o.handle_fence(t.now, Fence::Held);
    t.drain();
    t.log.clear();
    // The woken peer's advert, then its priority 0 advert 60 ms later.
    t.vrrp(VrrpState::Backup);
    assert_eq!(t.o.poll_timeout(), Some(t.now + Duration::from_secs(1)));
    t.advance(60 * MS);
    t.vrrp(VrrpState::Master);
    t.advance(Duration::from_secs(2));
    assert!(t.running().is_none(), "no step: {:?}", t.log);
    assert_eq!(t.o.phase(), Phase::Serving);

    // A BACKUP that outlasts the hold: the node steps down.
    t.vrrp(VrrpState::Backup);
    t.advance(999 * MS);
    assert!(t.running().is_none());
    t.advance(MS);
    assert_eq!(t.running().map(|r| r.1), Some(Step::VipOff));
}

/// With the peer connected, VRRP's BACKUP is obeyed at once (the peer may promote).
#[test]
fn a_node_with_its_peer_connected_steps_down_on_backup_at_once() {
    let mut t = T::serving(cfg());
    t.vrrp(VrrpState::Backup);
    assert_eq!(t.running().map(|r| r.1), Some(Step::VipOff));
}
