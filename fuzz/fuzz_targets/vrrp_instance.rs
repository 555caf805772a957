//! The sans-IO VRRP instance fed an arbitrary sequence of time steps, received packets (raw
//! VRRP messages through the real parser, and well-formed adverts with arbitrary fields), timer
//! ticks and admin events (priority offset, fault, sync-group forcing, start, shutdown).
//!
//! Besides "never panics", after every input it checks what the IO layer relies on:
//! - VIPs are added only when not held and removed only when held, and held exactly in Master;
//! - every `StateChange` starts from the state the previous one ended in and ends in `state()`;
//! - an advert with priority > 0 is only requested by a Master, priority 0 only by one leaving
//!   Master;
//! - a deadline `poll_timeout()` newly returns is never in the past; there is one in Master and
//!   Backup and none otherwise (a Master always advertises again, a Backup always takes over
//!   eventually);
//! - the effective priority stays in 1..=254 (255 only for the owner).
#![no_main]
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vrrp::proto::{Action, Config, Instance, State};
use vrrp::wire::{Auth, Packet, Repr, Version};

#[derive(Arbitrary, Debug)]
struct Setup {
    v3: bool,
    priority: u8,
    /// VRRPv3: centiseconds; VRRPv2: seconds (taken modulo the legal range).
    interval: u16,
    preempt: bool,
    preempt_delay_ms: u16,
    pass: Option<[u8; 8]>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Time passes (microseconds).
    Advance(u32),
    /// Jump to the deadline `poll_timeout()` asked for and call `handle_timeout` there.
    Timer,
    /// `handle_timeout(now)` whether or not a deadline is due (the IO layer may wake early).
    TickNow,
    /// A raw VRRP message from 10.0.0.`src` through the real parser (checksums pass under
    /// `cfg(fuzzing)`).
    Raw {
        src: u8,
        ttl: u8,
        msg: Vec<u8>,
    },
    /// A well-formed advert with arbitrary fields, for depth.
    Advert {
        src: u8,
        ttl_ok: bool,
        same_vrid: bool,
        same_version: bool,
        priority: u8,
        interval: u16,
        auth_ok: bool,
    },
    Offset(i16),
    Fault(bool),
    Start,
    Shutdown,
    Sync(u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

const VRID: u8 = 51;
const PRIMARY: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100));
const GROUP: IpAddr = IpAddr::V4(Ipv4Addr::new(224, 0, 0, 18));

fn peer(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

fn config(s: &Setup) -> Config {
    let (version, adver_int) = if s.v3 {
        (Version::V3, Duration::from_millis(10 * u64::from(s.interval % 4095 + 1)))
    } else {
        (Version::V2, Duration::from_secs(u64::from(s.interval % 255 + 1)))
    };
    Config {
        vrid: VRID,
        version,
        priority: s.priority.max(1),
        adver_int,
        preempt: s.preempt,
        preempt_delay: Duration::from_millis(u64::from(s.preempt_delay_ms)),
        primary: PRIMARY,
        auth: match (s.v3, s.pass) {
            (false, Some(p)) => Auth::Pass(p),
            _ => Auth::None,
        },
    }
}

/// What the IO layer would track while performing the actions.
struct Shell {
    vips: bool,
    state: State,
}

impl Shell {
    fn drain(&mut self, inst: &mut Instance, before: State, deadline_before: Option<Instant>, now: Instant) {
        while let Some(a) = inst.poll_action() {
            match a {
                Action::AddVips => {
                    assert!(!self.vips, "AddVips while the VIPs are held");
                    self.vips = true;
                }
                Action::RemoveVips => {
                    assert!(self.vips, "RemoveVips while the VIPs are not held");
                    self.vips = false;
                }
                Action::SendAdvert { priority: 0 } => {
                    assert_eq!(before, State::Master, "priority-0 advert from a non-master");
                }
                Action::SendAdvert { .. } => {
                    assert_eq!(inst.state(), State::Master, "advert from a non-master");
                }
                Action::StateChange { from, to, .. } => {
                    assert_eq!(from, self.state, "StateChange from a state we were not in");
                    assert_ne!(from, to, "StateChange to the same state");
                    self.state = to;
                }
                Action::Announce => assert!(self.vips, "Announce without the VIPs"),
                _ => {}
            }
        }
        assert_eq!(self.state, inst.state(), "state changed without a StateChange action");
        assert_eq!(self.vips, inst.state() == State::Master, "VIPs held iff Master");
        match (inst.state(), inst.poll_timeout()) {
            // A deadline may fall behind while time passes without a tick; a new one never does.
            (State::Master | State::Backup, Some(t)) => {
                assert!(Some(t) == deadline_before || t >= now, "new deadline in the past")
            }
            (State::Master | State::Backup, None) => panic!("{:?} without a deadline", inst.state()),
            (State::Fault | State::Initialize, t) => assert_eq!(t, None, "deadline while idle"),
        }
        if inst.state() == State::Master {
            assert_eq!(inst.master(), Some(PRIMARY));
        }
        let p = inst.effective_priority();
        assert!(p >= 1 && (p < 255 || inst.config().priority == 255), "effective priority {p}");
    }
}

fuzz_target!(|input: Input| {
    let cfg = config(&input.setup);
    let mut inst = Instance::new(cfg.clone());
    let mut now = Instant::now();
    let mut shell = Shell { vips: false, state: State::Initialize };
    for op in input.ops.into_iter().take(256) {
        let before = inst.state();
        let deadline_before = inst.poll_timeout();
        match op {
            Op::Advance(us) => now += Duration::from_micros(u64::from(us)),
            Op::Timer => {
                if let Some(t) = inst.poll_timeout() {
                    now = now.max(t);
                    inst.handle_timeout(now);
                }
            }
            Op::TickNow => inst.handle_timeout(now),
            Op::Raw { src, ttl, msg } => {
                if let Ok(p) = Packet::new_checked(&msg[..]) {
                    if let Ok((repr, _)) = Repr::parse(&p, peer(src), GROUP) {
                        let _ = inst.handle_packet(now, peer(src), ttl, &repr);
                    }
                }
            }
            Op::Advert { src, ttl_ok, same_vrid, same_version, priority, interval, auth_ok } => {
                let version = if same_version == (cfg.version == Version::V3) { Version::V3 } else { Version::V2 };
                let repr = Repr {
                    version,
                    vrid: if same_vrid { VRID } else { VRID.wrapping_add(1) },
                    priority,
                    interval: if auth_ok && version == Version::V2 { cfg.wire_interval() } else { interval },
                    auth: if auth_ok { cfg.auth } else { Auth::pass("wrong") },
                    addrs: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
                };
                let ttl = if ttl_ok { vrrp::wire::TTL } else { 64 };
                let _ = inst.handle_packet(now, peer(src), ttl, &repr);
            }
            Op::Offset(o) => inst.set_priority_offset(now, i32::from(o)),
            Op::Fault(f) => inst.set_fault(now, f),
            Op::Start => inst.start(now),
            Op::Shutdown => inst.shutdown(now),
            Op::Sync(s) => {
                let to = match s % 4 {
                    0 => State::Initialize,
                    1 => State::Backup,
                    2 => State::Master,
                    _ => State::Fault,
                };
                inst.sync_to(now, to);
            }
        }
        shell.drain(&mut inst, before, deadline_before, now);
    }
});
