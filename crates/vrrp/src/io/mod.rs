//! The Linux IO shell around [`crate::proto`]: raw sockets, netlink, gratuitous ARP, scripts and
//! metrics, and the [`engine`] that runs the election as an embeddable handle. Only this module
//! touches the OS or reads the clock.

pub mod engine;
pub mod metrics;
pub mod net;
pub mod nft;
pub mod script;
