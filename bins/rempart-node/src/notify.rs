//! systemd's notification protocol (`sd_notify(3)`): a datagram to `$NOTIFY_SOCKET`. Outside
//! systemd (no variable) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn send(msg: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = UnixDatagram::unbound() else { return };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// `READY=1`: the service is up.
pub(crate) fn ready() {
    send("READY=1");
}

/// `STOPPING=1`.
pub(crate) fn stopping() {
    send("STOPPING=1");
}

/// `WATCHDOG=1`: still alive.
pub(crate) fn watchdog() {
    send("WATCHDOG=1");
}

/// Half the watchdog interval systemd asked for (`$WATCHDOG_USEC`, for this pid), if any.
pub(crate) fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Some(pid) = std::env::var("WATCHDOG_PID").ok().and_then(|p| p.parse::<u32>().ok()) {
        if pid != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
