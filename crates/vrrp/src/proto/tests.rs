use super::*;
use std::net::Ipv4Addr;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn cfg(prio: u8, last: u8) -> Config {
    Config {
        vrid: 51,
        version: Version::V3,
        priority: prio,
        adver_int: Duration::from_secs(1),
        preempt: true,
        preempt_delay: Duration::ZERO,
        primary: ip(last),
        auth: Auth::None,
    }
}

fn adv(prio: u8, cs: u16) -> Repr {
    Repr { version: Version::V3, vrid: 51, priority: prio, interval: cs, auth: Auth::None, addrs: vec![ip(100)] }
}

fn drain(i: &mut Instance) -> Vec<Action> {
    std::iter::from_fn(|| i.poll_action()).collect()
}

#[test]
fn timer_maths_matches_keepalived() {
    // ANCHORS: priority 100, 1 s adverts => 3.609375 s; 0.1 s => 0.3609375 s; skew 0.609375 s.
    assert_eq!(master_down_interval(100, Duration::from_secs(1)), Duration::from_micros(3_609_375));
    assert_eq!(master_down_interval(100, Duration::from_millis(100)), Duration::from_micros(360_937));
    assert_eq!(skew_time(100, Duration::from_secs(1)), Duration::from_micros(609_375));
    assert_eq!(skew_time(255, Duration::from_secs(1)), Duration::from_micros(3906));
    // Centisecond intervals down to 10 ms.
    assert_eq!(master_down_interval(254, Duration::from_millis(10)), Duration::from_micros(30_078));
}

#[test]
fn owner_starts_master_others_backup() {
    let t0 = Instant::now();
    let mut o = Instance::new(cfg(255, 1));
    o.start(t0);
    assert_eq!(o.state(), State::Master);
    let a = drain(&mut o);
    assert_eq!(a[0], Action::SendAdvert { priority: 255 });
    assert!(a.contains(&Action::AddVips));
    assert!(a.contains(&Action::Announce));
    assert_eq!(o.poll_timeout(), Some(t0 + Duration::from_secs(1)));

    let mut b = Instance::new(cfg(100, 2));
    b.start(t0);
    assert_eq!(b.state(), State::Backup);
    assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_micros(3_609_375)));
    assert!(!drain(&mut b).contains(&Action::AddVips));
}

#[test]
fn backup_becomes_master_after_master_down() {
    let t0 = Instant::now();
    let mut b = Instance::new(cfg(100, 2));
    b.start(t0);
    drain(&mut b);
    // Advert at 1 s resets the timer.
    b.handle_packet(t0 + Duration::from_secs(1), ip(1), 255, &adv(150, 100)).unwrap();
    assert_eq!(b.master(), Some(ip(1)));
    let deadline = t0 + Duration::from_secs(1) + Duration::from_micros(3_609_375);
    assert_eq!(b.poll_timeout(), Some(deadline));
    b.handle_timeout(deadline - Duration::from_micros(1));
    assert_eq!(b.state(), State::Backup);
    b.handle_timeout(deadline);
    assert_eq!(b.state(), State::Master);
    let a = drain(&mut b);
    assert_eq!(
        a,
        vec![
            Action::SendAdvert { priority: 100 },
            Action::AddVips,
            Action::Announce,
            Action::StateChange { from: State::Backup, to: State::Master, reason: Reason::MasterDown }
        ]
    );
    assert_eq!(b.stats().become_master, 1);
}

#[test]
fn backup_adopts_master_interval() {
    let t0 = Instant::now();
    let mut b = Instance::new(cfg(100, 2));
    b.start(t0);
    b.handle_packet(t0, ip(1), 255, &adv(150, 10)).unwrap();
    assert_eq!(b.master_adver_int(), Duration::from_millis(100));
    assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_micros(360_937)));
}

#[test]
fn priority_zero_means_takeover_after_skew() {
    let t0 = Instant::now();
    let mut b = Instance::new(cfg(100, 2));
    b.start(t0);
    b.handle_packet(t0, ip(1), 255, &adv(150, 100)).unwrap();
    b.handle_packet(t0 + Duration::from_millis(500), ip(1), 255, &adv(0, 100)).unwrap();
    let t = t0 + Duration::from_millis(500) + Duration::from_micros(609_375);
    assert_eq!(b.poll_timeout(), Some(t));
    b.handle_timeout(t);
    assert_eq!(b.state(), State::Master);
    assert_eq!(b.last_transition().unwrap().1, Reason::MasterStopped);
}

#[test]
fn shutdown_sends_priority_zero_and_removes_vips() {
    let t0 = Instant::now();
    let mut o = Instance::new(cfg(255, 1));
    o.start(t0);
    drain(&mut o);
    o.shutdown(t0 + Duration::from_secs(2));
    let a = drain(&mut o);
    assert_eq!(a[0], Action::SendAdvert { priority: 0 });
    assert_eq!(a[1], Action::RemoveVips);
    assert_eq!(o.state(), State::Initialize);
    assert_eq!(o.poll_timeout(), None);
}

#[test]
fn master_yields_to_higher_and_tie_break_on_address() {
    let t0 = Instant::now();
    let mut m = Instance::new(cfg(100, 5));
    m.start(t0);
    m.handle_timeout(t0 + Duration::from_secs(4));
    assert_eq!(m.state(), State::Master);
    drain(&mut m);
    // Lower priority: ignored.
    m.handle_packet(t0 + Duration::from_secs(5), ip(9), 255, &adv(99, 100)).unwrap();
    assert_eq!(m.state(), State::Master);
    // Equal priority, lower address: ignored.
    m.handle_packet(t0 + Duration::from_secs(5), ip(4), 255, &adv(100, 100)).unwrap();
    assert_eq!(m.state(), State::Master);
    // Equal priority, higher address: yield.
    m.handle_packet(t0 + Duration::from_secs(5), ip(6), 255, &adv(100, 100)).unwrap();
    assert_eq!(m.state(), State::Backup);
    let a = drain(&mut m);
    assert_eq!(a[0], Action::RemoveVips);
    assert_eq!(m.master(), Some(ip(6)));
}

#[test]
fn master_answers_priority_zero_with_advert() {
    let t0 = Instant::now();
    let mut m = Instance::new(cfg(255, 5));
    m.start(t0);
    drain(&mut m);
    m.handle_packet(t0 + Duration::from_millis(300), ip(6), 255, &adv(0, 100)).unwrap();
    assert_eq!(drain(&mut m), vec![Action::SendAdvert { priority: 255 }]);
    assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_millis(1300)));
}

#[test]
fn preempt_and_nopreempt() {
    let t0 = Instant::now();
    // Preempt on: a lower-priority master's adverts do not reset the timer.
    let mut b = Instance::new(cfg(200, 2));
    b.start(t0);
    let first = b.poll_timeout().unwrap();
    b.handle_packet(t0 + Duration::from_secs(1), ip(1), 255, &adv(100, 100)).unwrap();
    assert_eq!(b.poll_timeout(), Some(first));
    // nopreempt: they do.
    let mut c = cfg(200, 2);
    c.preempt = false;
    let mut b = Instance::new(c);
    b.start(t0);
    b.handle_packet(t0 + Duration::from_secs(1), ip(1), 255, &adv(100, 100)).unwrap();
    assert!(b.poll_timeout().unwrap() > first);
}

#[test]
fn preempt_delay_holds_preemption_after_start() {
    let t0 = Instant::now();
    let mut c = cfg(200, 2);
    c.preempt_delay = Duration::from_secs(10);
    let mut b = Instance::new(c);
    b.start(t0);
    let mut t = t0;
    for _ in 0..9 {
        t += Duration::from_secs(1);
        b.handle_packet(t, ip(1), 255, &adv(100, 100)).unwrap();
        b.handle_timeout(t);
        assert_eq!(b.state(), State::Backup, "preempted during the delay");
    }
    // After the delay the lower master's adverts are ignored and we take over.
    for _ in 0..6 {
        t += Duration::from_secs(1);
        b.handle_packet(t, ip(1), 255, &adv(100, 100)).unwrap();
        b.handle_timeout(t);
    }
    assert_eq!(b.state(), State::Master);
}

/// keepalived: the delay also starts at the first advert of a lower-priority master seen after a
/// better master (which stopped it), and is counted from that advert, not from startup.
#[test]
fn preempt_delay_starts_when_a_lower_priority_master_appears() {
    let t0 = Instant::now();
    let mut c = cfg(200, 2);
    c.preempt_delay = Duration::from_secs(10);
    let mut b = Instance::new(c);
    b.start(t0);
    assert_eq!(b.preempt_delay_until(), Some(t0 + Duration::from_secs(10)));
    // A better master for 20 s: the startup delay is stopped.
    let mut t = t0;
    for _ in 0..20 {
        t += Duration::from_secs(1);
        b.handle_packet(t, ip(3), 255, &adv(250, 100)).unwrap();
        b.handle_timeout(t);
    }
    assert_eq!(b.state(), State::Backup);
    assert_eq!(b.preempt_delay_until(), None);
    // It hands over to a lower-priority master (100) at t0+21 s: the delay starts there.
    t += Duration::from_secs(1);
    let seen = t;
    b.handle_packet(t, ip(1), 255, &adv(100, 100)).unwrap();
    assert_eq!(b.preempt_delay_until(), Some(seen + Duration::from_secs(10)));
    // Accepted for the whole delay although startup was long ago.
    for _ in 0..9 {
        t += Duration::from_secs(1);
        b.handle_packet(t, ip(1), 255, &adv(100, 100)).unwrap();
        b.handle_timeout(t);
        assert_eq!(b.state(), State::Backup, "preempted before the delay ran out");
    }
    // Then ignored: takeover after the last accepted advert + Master_Down_Interval.
    let mut step = 0u32;
    loop {
        t += Duration::from_millis(100);
        step += 1;
        if step == 10 {
            step = 0;
            b.handle_packet(t, ip(1), 255, &adv(100, 100)).unwrap();
        }
        b.handle_timeout(t);
        if b.state() == State::Master {
            break;
        }
        assert!(t < seen + Duration::from_secs(20), "never preempted");
    }
    let mdi = master_down_interval(200, Duration::from_secs(1));
    assert!(t >= seen + Duration::from_secs(10), "preempted at {:?}", t - seen);
    assert!(t <= seen + Duration::from_secs(10) + mdi + Duration::from_millis(100), "late: {:?}", t - seen);
}

/// keepalived restarts the delay when an instance leaves Fault.
#[test]
fn preempt_delay_restarts_after_fault() {
    let t0 = Instant::now();
    let mut c = cfg(200, 2);
    c.preempt_delay = Duration::from_secs(5);
    let mut b = Instance::new(c);
    b.start(t0);
    let t1 = t0 + Duration::from_secs(60);
    b.set_fault(t1, true);
    assert_eq!(b.state(), State::Fault);
    let t2 = t1 + Duration::from_secs(1);
    b.set_fault(t2, false);
    assert_eq!(b.state(), State::Backup);
    assert_eq!(b.preempt_delay_until(), Some(t2 + Duration::from_secs(5)));
    // Within the delay a lower master is accepted (timer pushed out).
    b.handle_packet(t2 + Duration::from_secs(1), ip(1), 255, &adv(100, 100)).unwrap();
    assert!(b.poll_timeout().unwrap() > t2 + Duration::from_secs(4));
    // Without preempt_delay nothing is armed.
    let mut n = Instance::new(cfg(200, 2));
    n.start(t0);
    assert_eq!(n.preempt_delay_until(), None);
}

#[test]
fn receive_validation_rules() {
    let t0 = Instant::now();
    let mut b = Instance::new(cfg(100, 2));
    b.start(t0);
    assert_eq!(b.handle_packet(t0, ip(1), 64, &adv(150, 100)), Err(DropReason::Ttl(64)));
    let mut other = adv(150, 100);
    other.vrid = 52;
    assert_eq!(b.handle_packet(t0, ip(1), 255, &other), Err(DropReason::UnknownVrid));
    let mut v2 = adv(150, 1);
    v2.version = Version::V2;
    assert_eq!(b.handle_packet(t0, ip(1), 255, &v2), Err(DropReason::VersionMismatch));
    assert_eq!(b.handle_packet(t0, ip(2), 255, &adv(150, 100)), Err(DropReason::Own));
    assert_eq!(b.handle_packet(t0, ip(1), 255, &adv(150, 0)), Err(DropReason::Interval));
    assert_eq!(b.stats().adverts_received, 0);

    let mut c2 = cfg(100, 2);
    c2.version = Version::V2;
    c2.auth = Auth::pass("secret");
    let mut b2 = Instance::new(c2);
    b2.start(t0);
    let mut good = adv(150, 1);
    good.version = Version::V2;
    good.auth = Auth::pass("secret");
    assert_eq!(b2.handle_packet(t0, ip(1), 255, &good), Ok(()));
    let mut bad = good.clone();
    bad.auth = Auth::pass("wrong");
    assert_eq!(b2.handle_packet(t0, ip(1), 255, &bad), Err(DropReason::Auth));
    let mut bad = good.clone();
    bad.interval = 2;
    assert_eq!(b2.handle_packet(t0, ip(1), 255, &bad), Err(DropReason::Interval));

    let mut o = Instance::new(cfg(255, 2));
    o.start(t0);
    assert_eq!(o.handle_packet(t0, ip(1), 255, &adv(255, 100)), Err(DropReason::Owner));
}

#[test]
fn effective_priority_from_weights() {
    let t0 = Instant::now();
    let mut m = Instance::new(cfg(150, 1));
    m.start(t0);
    m.handle_timeout(t0 + Duration::from_secs(5));
    drain(&mut m);
    m.set_priority_offset(t0, -60);
    assert_eq!(m.effective_priority(), 90);
    m.handle_timeout(t0 + Duration::from_secs(6));
    assert_eq!(drain(&mut m), vec![Action::SendAdvert { priority: 90 }]);
    // A backup at 100 now preempts (it ignores the 90 adverts).
    m.set_priority_offset(t0, -500);
    assert_eq!(m.effective_priority(), 1);
    m.set_priority_offset(t0, 500);
    assert_eq!(m.effective_priority(), 254);
    let mut o = Instance::new(cfg(255, 1));
    o.set_priority_offset(t0, -100);
    assert_eq!(o.effective_priority(), 255);
}

#[test]
fn fault_state() {
    let t0 = Instant::now();
    let mut m = Instance::new(cfg(255, 1));
    m.start(t0);
    drain(&mut m);
    m.set_fault(t0, true);
    assert_eq!(m.state(), State::Fault);
    let a = drain(&mut m);
    assert_eq!(a[0], Action::SendAdvert { priority: 0 });
    assert_eq!(a[1], Action::RemoveVips);
    m.set_fault(t0, false);
    assert_eq!(m.state(), State::Master);
    // Fault before start: start enters Fault.
    let mut f = Instance::new(cfg(100, 2));
    f.set_fault(t0, true);
    f.start(t0);
    assert_eq!(f.state(), State::Fault);
    assert!(f.handle_packet(t0, ip(1), 255, &adv(150, 100)).is_ok());
    assert_eq!(f.state(), State::Fault);
}

#[test]
fn sync_group_moves_together() {
    let t0 = Instant::now();
    let mut a = cfg(100, 2);
    a.vrid = 1;
    let mut b = cfg(100, 2);
    b.vrid = 2;
    let mut v = vec![Instance::new(a), Instance::new(b)];
    for i in &mut v {
        i.start(t0);
    }
    // Instance 0 times out first (instance 1 keeps hearing a master).
    let t = v[0].poll_timeout().unwrap();
    v[0].handle_timeout(t);
    assert_eq!(v[0].state(), State::Master);
    group::propagate(t, &mut v, &[0, 1], 0);
    assert_eq!(v[1].state(), State::Master);
    assert_eq!(v[1].last_transition().unwrap().1, Reason::SyncGroup);
    v[1].set_fault(t, true);
    group::propagate(t, &mut v, &[0, 1], 1);
    assert_eq!(v[0].state(), State::Fault);
    let acts = drain(&mut v[0]);
    assert!(acts.contains(&Action::RemoveVips));
    v[1].set_fault(t, false);
    group::propagate(t, &mut v, &[0, 1], 1);
    assert_eq!(v[0].state(), State::Backup);
}
