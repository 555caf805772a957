//! Block stores: what the NBD frontend serves.
//!
//! [`BlockStore`] is the seam between the NBD server and whatever holds the bytes: a plain
//! file ([`FileStore`]), memory ([`MemStore`], for tests) or the replicated volume
//! ([`crate::io::Handle`]). Every operation is async so that a replicated write can wait
//! for the peer without blocking a thread.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Largest single request the stores and the NBD server accept (32 MiB, as qemu-nbd).
pub const MAX_REQUEST: u32 = 32 * 1024 * 1024;

/// A byte-addressed block device.
///
/// Completion semantics follow NBD: a completed `write` may still sit in a volatile cache until a
/// completed `flush`; a write with `fua` is durable when it completes.
pub trait BlockStore: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused (e.g. a Secondary).
    fn read_only(&self) -> bool {
        false
    }
    /// A client opened the store (an NBD client entered its transmission phase).
    fn opened(&self) {}
    /// A client that [`BlockStore::opened`] the store went away.
    fn closed(&self) {}
    /// Read `len` bytes at `off`.
    fn read(&self, off: u64, len: u32) -> impl Future<Output = io::Result<Vec<u8>>> + Send;
    /// Write `data` at `off`; durable on completion when `fua`.
    fn write(&self, off: u64, data: Bytes, fua: bool) -> impl Future<Output = io::Result<()>> + Send;
    /// Make every completed write durable.
    fn flush(&self) -> impl Future<Output = io::Result<()>> + Send;
    /// Discard a range. Stores here make it read back as zeroes so replicas stay identical.
    fn trim(&self, off: u64, len: u32) -> impl Future<Output = io::Result<()>> + Send;
    /// Write zeroes to a range.
    fn write_zeroes(&self, off: u64, len: u32, fua: bool) -> impl Future<Output = io::Result<()>> + Send;
}

/// Checks that `[off, off+len)` lies inside a store of `size` bytes.
pub fn check_range(size: u64, off: u64, len: u64) -> io::Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("range {off}+{len} beyond end of device ({size} bytes)"),
        )),
    }
}

/// A backing file (or block device) accessed with positioned reads and writes on the blocking
/// thread pool.
#[derive(Debug, Clone)]
pub struct FileStore {
    file: Arc<File>,
    size: u64,
    /// Held by bulk writes (resync), one at a time: buffered writes to one file serialise on
    /// the inode lock anyway, and the kernel's waiters for it spin while its owner copies,
    /// which kept a whole vCPU busy doing nothing during a resync (10 % of the profile). A
    /// waiter here sleeps instead.
    bulk: Arc<Mutex<()>>,
}

impl FileStore {
    /// Opens `path` read-write. The size is the file's size (or the device's size).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let size = device_size(&file)?;
        Ok(Self { file: Arc::new(file), size, bulk: Arc::default() })
    }

    /// Uses `size` bytes of an already-open file.
    pub fn from_file(file: File, size: u64) -> Self {
        Self { file: Arc::new(file), size, bulk: Arc::default() }
    }

    /// Blocking positioned read.
    pub fn read_blocking(&self, off: u64, len: u32) -> io::Result<Vec<u8>> {
        check_range(self.size, off, u64::from(len))?;
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, off)?;
        Ok(buf)
    }

    /// Blocking positioned read into a recycled buffer (see `crate::pool`).
    pub fn read_pooled_blocking(&self, off: u64, len: u32) -> io::Result<bytes::Bytes> {
        check_range(self.size, off, u64::from(len))?;
        let mut buf = crate::pool::take_filled(len as usize);
        self.file.read_exact_at(&mut buf, off)?;
        Ok(crate::pool::bytes(buf))
    }

    /// Blocking positioned write.
    pub fn write_blocking(&self, off: u64, data: &[u8], fua: bool) -> io::Result<()> {
        check_range(self.size, off, data.len() as u64)?;
        self.file.write_all_at(data, off)?;
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }

    /// A bulk write (resync data): one at a time (see `bulk`), then [`Self::start_writeback`].
    pub fn write_bulk_blocking(&self, off: u64, data: &[u8]) -> io::Result<()> {
        {
            let _one = self.bulk.lock().map_err(|_| io::Error::other("bulk write lock poisoned"))?;
            self.write_blocking(off, data, false)?;
        }
        self.start_writeback(off, data.len() as u64);
        Ok(())
    }

    /// Starts writing a range's dirty pages back to the disk without waiting for it, so that a
    /// later `fdatasync` finds less to do. Only a hint: errors are ignored (a failed writeback
    /// shows at the `fdatasync` that makes the range durable).
    ///
    /// `POSIX_FADV_DONTNEED` starts writeback of the range's dirty pages (`WB_SYNC_NONE`, the
    /// same as `sync_file_range(SYNC_FILE_RANGE_WRITE)`, which nix does not wrap) and drops
    /// its clean pages from the cache; pages still dirty or under writeback stay.
    pub fn start_writeback(&self, off: u64, len: u64) {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(len)) = (i64::try_from(off), i64::try_from(len)) else { return };
        let _ = posix_fadvise(self.file.as_raw_fd(), off, len, PosixFadviseAdvice::POSIX_FADV_DONTNEED);
    }

    /// Blocking fdatasync.
    pub fn flush_blocking(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Blocking zeroing of a range: punch a hole, or write zeroes where that is unsupported.
    pub fn zero_blocking(&self, off: u64, len: u32, fua: bool) -> io::Result<()> {
        check_range(self.size, off, u64::from(len))?;
        use nix::fcntl::{fallocate, FallocateFlags};
        use std::os::fd::AsRawFd;
        let punched = fallocate(
            self.file.as_raw_fd(),
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            off as i64,
            i64::from(len),
        );
        if punched.is_err() {
            let zeroes = vec![0u8; (len as usize).min(1 << 20)];
            let mut done = 0u64;
            while done < u64::from(len) {
                let n = (u64::from(len) - done).min(zeroes.len() as u64) as usize;
                self.file.write_all_at(&zeroes[..n], off + done)?;
                done += n as u64;
            }
        }
        if fua {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// Size of a regular file or a block device (seek to the end: works for both).
fn device_size(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> io::Result<T> + Send + 'static) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(format!("blocking task failed: {e}")))?
}

impl BlockStore for FileStore {
    fn size(&self) -> u64 {
        self.size
    }
    async fn read(&self, off: u64, len: u32) -> io::Result<Vec<u8>> {
        let s = self.clone();
        blocking(move || s.read_blocking(off, len)).await
    }
    async fn write(&self, off: u64, data: Bytes, fua: bool) -> io::Result<()> {
        let s = self.clone();
        blocking(move || s.write_blocking(off, &data, fua)).await
    }
    async fn flush(&self) -> io::Result<()> {
        let s = self.clone();
        blocking(move || s.flush_blocking()).await
    }
    async fn trim(&self, off: u64, len: u32) -> io::Result<()> {
        let s = self.clone();
        blocking(move || s.zero_blocking(off, len, false)).await
    }
    async fn write_zeroes(&self, off: u64, len: u32, fua: bool) -> io::Result<()> {
        let s = self.clone();
        blocking(move || s.zero_blocking(off, len, fua)).await
    }
}

/// An in-memory store, for tests.
#[derive(Debug, Clone)]
pub struct MemStore {
    bytes: Arc<Mutex<Vec<u8>>>,
}

impl MemStore {
    /// A zero-filled store of `size` bytes.
    pub fn new(size: usize) -> Self {
        Self { bytes: Arc::new(Mutex::new(vec![0; size])) }
    }
    /// A copy of the contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.lock().clone()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        // A poisoned lock only means another test thread panicked; the bytes are still valid.
        self.bytes.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn zero(&self, off: u64, len: u32) -> io::Result<()> {
        let mut b = self.lock();
        check_range(b.len() as u64, off, u64::from(len))?;
        b[off as usize..off as usize + len as usize].fill(0);
        Ok(())
    }
}

impl BlockStore for MemStore {
    fn size(&self) -> u64 {
        self.lock().len() as u64
    }
    async fn read(&self, off: u64, len: u32) -> io::Result<Vec<u8>> {
        let b = self.lock();
        check_range(b.len() as u64, off, u64::from(len))?;
        Ok(b[off as usize..off as usize + len as usize].to_vec())
    }
    async fn write(&self, off: u64, data: Bytes, _fua: bool) -> io::Result<()> {
        let mut b = self.lock();
        check_range(b.len() as u64, off, data.len() as u64)?;
        b[off as usize..off as usize + data.len()].copy_from_slice(&data);
        Ok(())
    }
    async fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    async fn trim(&self, off: u64, len: u32) -> io::Result<()> {
        self.zero(off, len)
    }
    async fn write_zeroes(&self, off: u64, len: u32, _fua: bool) -> io::Result<()> {
        self.zero(off, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_reject_overflow_and_past_end() {
        assert!(check_range(4096, 0, 4096).is_ok());
        assert!(check_range(4096, 1, 4096).is_err());
        assert!(check_range(4096, u64::MAX, 2).is_err());
    }

    #[tokio::test]
    async fn file_store_round_trip_and_zero() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let s = FileStore::open(f.path()).unwrap();
        assert_eq!(s.size(), 1 << 20);
        s.write(8192, Bytes::from(vec![0xa5; 8192]), true).await.unwrap();
        assert_eq!(s.read(8192, 8192).await.unwrap(), vec![0xa5; 8192]);
        s.write_zeroes(8192, 4096, false).await.unwrap();
        assert_eq!(s.read(8192, 4096).await.unwrap(), vec![0; 4096]);
        assert_eq!(s.read(12288, 4096).await.unwrap(), vec![0xa5; 4096]);
        assert!(s.read((1 << 20) - 1, 2).await.is_err());
    }
}
