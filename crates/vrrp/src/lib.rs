//! VRRP failover for rempart: a keepalived replacement that reads keepalived.conf and
//! interoperates with keepalived 2.2.7 on the same LAN (VRRPv3, and VRRPv2 with `auth_type PASS`).
//!
//! ```text
//!   keepalived.conf / .toml ──▶ config ──▶ validate() (every problem, with file:line)
//!                                  │
//!   raw socket (proto 112) ──▶ wire::Repr::parse ──▶ proto::Instance ──▶ poll_action()
//!          ▲                     (checksum, length)   (sans-IO election)    │
//!          │                                                               ▼
//!          └──────── adverts ◀── io::engine ──▶ netlink VIPs, GARP, notify scripts, metrics
//!                                      │  ▲
//!                 Handle (Clone) ◀─────┘  └── reload / status / lower_priority / force_fault /
//!                 + typed Events              allow_vips / shutdown().await   (the embedder:
//!                                              rempart-vrrp, rempart-node)
//! ```
//!
//! - [`wire`] — `Packet`/`Repr` codec, both checksum forms, golden bytes captured from keepalived.
//! - [`proto`] — the RFC 5798 state machine driven by `(now, input)`; no clock, no sockets, so the
//!   simulation in `tests/sim.rs` runs 10,000 seeded scenarios in seconds.
//! - [`config`] — keepalived.conf (warnings for unsupported keywords, errors with line:column)
//!   and native TOML.
//! - [`io`] — the Linux shell (raw sockets, rtnetlink, AF_PACKET GARP, tokio), and
//!   [`io::engine`]: the election as an embeddable handle with typed events, reload, embedder
//!   health (priority, fault), a VIP gate and an awaitable graceful shutdown. The `rempart-vrrp`
//!   binary is a thin user of it (signals, pid file, control socket, `/metrics`).
//!
//! # Embedding
//! ```no_run
//! # async fn demo(cfg: vrrp::config::Config) -> Result<(), vrrp::io::engine::EngineError> {
//! use vrrp::io::engine::{self, Event, Options, VipControl};
//! let mut registry = prometheus_client::registry::Registry::default();
//! let opts = Options { vips: VipControl::Gated, ..Options::default() };
//! let (vrrp, mut events) = engine::start(cfg, opts, &mut registry).await?;
//! while let Ok(ev) = events.recv().await {
//!     if let Event::StateChanged(c) = ev {
//!         if c.to == vrrp::proto::State::Master {
//!             // promote, mount, start the services, check them … then:
//!             vrrp.allow_vips(&c.instance, true).await?;
//!         }
//!     }
//! #   break;
//! }
//! vrrp.lower_priority("VI_1", 60, "slapd not answering").await?;
//! vrrp.shutdown().await; // priority 0 sent, VIPs removed, every task ended
//! # Ok(()) }
//! ```
//!
//! # Example
//! ```
//! use std::net::{IpAddr, Ipv4Addr};
//! use std::time::{Duration, Instant};
//! use vrrp::proto::{Action, Config, Instance, State};
//! use vrrp::wire::{Auth, Version};
//!
//! let mut r = Instance::new(Config {
//!     vrid: 51,
//!     version: Version::V3,
//!     priority: 100,
//!     adver_int: Duration::from_secs(1),
//!     preempt: true,
//!     preempt_delay: Duration::ZERO,
//!     primary: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
//!     auth: Auth::None,
//! });
//! let t0 = Instant::now();
//! r.start(t0);
//! assert_eq!(r.state(), State::Backup);
//! while r.poll_action().is_some() {} // the StateChange to Backup
//! // Nobody advertises: after Master_Down_Interval (3 x 1 s + 156/256 s) we take over.
//! let t = r.poll_timeout().unwrap();
//! assert_eq!(t - t0, Duration::from_micros(3_609_375));
//! r.handle_timeout(t);
//! assert_eq!(r.poll_action(), Some(Action::SendAdvert { priority: 100 }));
//! assert_eq!(r.poll_action(), Some(Action::AddVips));
//! ```
//!
//! # Design notes
//! - **Timing.** keepalived computes timers in microseconds; so do we, which is why a backup
//!   with priority 100 takes over 3.609375 s after the last advert at 1 s, the figure measured for
//!   keepalived. A stopping master sends priority 0 and backups wait only Skew_Time.
//! - **Checksums.** keepalived and Wireshark put the IPv4 pseudo-header in the VRRPv3 checksum;
//!   a message-only checksum makes keepalived drop the packet. We send the pseudo-header form by
//!   default and accept both (counted in `rempart_vrrp_message_only_checksum_total`).
//! - **Reload.** [`io::engine::Handle::reload`] (SIGHUP in the binary) restarts only instances
//!   whose settings changed; an unchanged instance keeps its state, so a reload never causes a
//!   failover.
//! - **One writer.** The engine is one tokio task that owns every state machine; the handle talks
//!   to it by messages with replies, so the sans-IO core is driven the same way in production and
//!   in the simulation, and nothing needs a lock.
#![warn(missing_docs)]

pub mod config;
pub mod io;
pub mod proto;
pub mod wire;

/// Fuzz entry point for the packet parser: splits an IPv4 datagram, parses the VRRP message and,
/// when it parses, checks that emitting it again parses back to the same value.
#[doc(hidden)]
pub fn fuzz_packet(data: &[u8]) {
    use std::net::IpAddr;
    let Ok((src, dst, _ttl, msg)) = wire::split_ipv4(data) else {
        return;
    };
    let (src, dst) = (IpAddr::V4(src), IpAddr::V4(dst));
    let Ok(p) = wire::Packet::new_checked(msg) else {
        return;
    };
    if let Ok((repr, kind)) = wire::Repr::parse(&p, src, dst) {
        if let Ok(bytes) = repr.to_bytes(src, dst, kind) {
            if let Ok(p2) = wire::Packet::new_checked(&bytes[..]) {
                let back = wire::Repr::parse(&p2, src, dst).map(|(r, _)| r);
                assert_eq!(back, Ok(repr), "emit/parse round trip");
            }
        }
    }
}

/// Fuzz entry point for the keepalived.conf parser: parse, interpret and validate arbitrary text.
#[doc(hidden)]
pub fn fuzz_keepalived_conf(text: &str) {
    if let Ok((cfg, _warnings)) = config::keepalived::parse(text, std::path::Path::new("/nonexistent/fuzz.conf")) {
        let _ = cfg.validate();
        // A virtual address prints in the TOML form, which parses back to the same value.
        for v in cfg.instances.iter().flat_map(|i| &i.virtual_ipaddress) {
            let back: Result<config::Vip, String> = v.to_string().parse();
            assert_eq!(back.as_ref(), Ok(v), "virtual_ipaddress display/parse round trip of {v}");
        }
    }
}
