//! The Linux IO shell around [`crate::proto`]: raw sockets, netlink, gratuitous ARP, scripts,
//! control socket and metrics. Only this module touches the OS or reads the clock.

pub mod daemon;
pub mod metrics;
pub mod net;
pub mod nft;
pub mod script;
