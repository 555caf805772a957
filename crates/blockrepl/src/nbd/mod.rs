//! NBD frontend: lets real clients (qemu, nbdfuse, the kernel's nbd-client) use a [`BlockStore`].
//!
//! [`BlockStore`]: crate::store::BlockStore

mod server;
pub mod wire;

pub use server::{Export, NbdServer};
