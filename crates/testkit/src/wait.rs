//! Waiting for a condition without fixed sleeps: poll it until it holds or a deadline passes.

use std::time::{Duration, Instant};

/// Polls `f` every 2 ms until it returns true; returns how long that took. Fails naming `what`
/// when `timeout` passes first.
pub fn until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
