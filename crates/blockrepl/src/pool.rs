//! Recycled buffers for large payloads (resync ranges, replicated writes).
//!
//! A fresh 1 MiB `Vec` per payload is a fresh `mmap` from the allocator: the kernel faults in
//! and zeroes 256 pages when the socket or the disk fills it, and the `munmap` after the write
//! shoots down the TLBs of every CPU running a thread of the process. On the 2-vCPU bench VM
//! that made a resync's `pwrite` of received data several times slower than the same `pwrite`
//! from a reused buffer (the profile was dominated by the kernel's copy into the page cache and
//! page faults). Buffers taken here come back when the last [`Bytes`] referring to them drops.

use std::sync::Mutex;

use bytes::Bytes;

/// Payloads smaller than this are allocated as usual.
const MIN: usize = 64 << 10;
/// Every pooled buffer has at least this capacity (one resync request).
const UNIT: usize = 1 << 20;
/// Larger buffers are not kept.
const MAX: usize = 4 << 20;
/// At most this many idle buffers are kept (64 MiB of 1 MiB buffers).
const KEEP: usize = 64;

static FREE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// A buffer with room for `n` bytes, from the pool when `n` is large. Its length is whatever
/// was initialised before (bytes the caller overwrites), never more than its capacity.
pub(crate) fn take(n: usize) -> Vec<u8> {
    if !(MIN..=MAX).contains(&n) {
        return Vec::with_capacity(n);
    }
    if let Ok(mut free) = FREE.lock() {
        // The most recently returned buffer first: its lines are the likeliest to be cached.
        if let Some(i) = free.iter().rposition(|v| v.capacity() >= n) {
            return free.remove(i);
        }
    }
    Vec::with_capacity(n.max(UNIT))
}

/// A buffer of exactly `n` initialised bytes (contents unspecified: the caller overwrites them),
/// zero-filled only where a recycled buffer had not been initialised yet.
pub(crate) fn take_filled(n: usize) -> Vec<u8> {
    let mut v = take(n);
    v.resize(n, 0);
    v
}

/// Wraps `v` so that its allocation returns to the pool when the last clone of the [`Bytes`]
/// drops.
pub(crate) fn bytes(v: Vec<u8>) -> Bytes {
    if (MIN..=MAX).contains(&v.capacity()) {
        Bytes::from_owner(Pooled(v))
    } else {
        Bytes::from(v)
    }
}

struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if let Ok(mut free) = FREE.lock() {
            if free.len() < KEEP {
                free.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_payload_buffer_is_reused_with_its_initialised_bytes() {
        let mut v = take_filled(UNIT);
        v[0] = 7;
        let p = v.as_ptr();
        let b = bytes(v);
        let c = b.clone();
        drop(b);
        assert_eq!(c[0], 7, "a clone keeps the buffer alive");
        drop(c);
        // Other tests may take buffers concurrently: look for ours among a few.
        let taken: Vec<Vec<u8>> = (0..KEEP).map(|_| take(UNIT)).collect();
        let ours = taken.iter().find(|v| v.as_ptr() == p).expect("the buffer came back to the pool");
        assert_eq!(ours.len(), UNIT, "its bytes are still initialised: no zero-fill next time");
        for v in taken {
            drop(bytes(v));
        }
        assert_eq!(take_filled(100).len(), 100);
        assert!(take(100).capacity() >= 100);
    }
}
