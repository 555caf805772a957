//! An archive as a stream: its items in archive order, each regular file followed by its
//! content, for `extract --stdout` and `export-tar`.
//!
//! ```text
//!  items ──select──► Item(i) ──► Data(..) Data(..) … ──► Item(i+1) …
//!                       │            ▲
//!                       └─ chunk ids ┘ fetch_sealed (pipelined, in order) + holes as zeros
//! ```
//!
//! Nothing is buffered beyond one chunk and the fetch pipeline, whatever the file sizes: a
//! hole is handed on as zero blocks of at most 1 MiB.

use crate::archive::{ArchiveMeta, Extent, Item, ItemKind};
use crate::error::{Error, Result};
use crate::extract::archive_meta_items;
use crate::repo::Repository;

/// One step of [`stream_items`].
#[derive(Debug)]
#[non_exhaustive]
pub enum StreamEvent<'a> {
    /// The next selected item; a regular file's content follows as [`StreamEvent::Data`].
    Item(&'a Item),
    /// The next bytes of the current file.
    Data(&'a [u8]),
}

const ZEROS: usize = 1 << 20;

/// Streams the items of `archive` that `select` accepts to `sink`, in archive order; returns
/// the archive's metadata. A sink error or a chunk that cannot be read ends the stream with
/// that error.
pub fn stream_items(
    repo: &Repository,
    archive: &str,
    select: &dyn Fn(&Item) -> bool,
    sink: &mut dyn FnMut(StreamEvent<'_>) -> Result<()>,
) -> Result<ArchiveMeta> {
    let _lock = repo.shared_lock()?;
    let index = repo.load_index()?;
    let (meta, items) = archive_meta_items(repo, &index, archive)?;
    let zeros = vec![0u8; ZEROS];
    let holes = |sink: &mut dyn FnMut(StreamEvent<'_>) -> Result<()>, mut n: u64| -> Result<()> {
        while n > 0 {
            let k = n.min(ZEROS as u64) as usize;
            sink(StreamEvent::Data(&zeros[..k]))?;
            n -= k as u64;
        }
        Ok(())
    };
    for item in items.iter().filter(|i| select(i)) {
        sink(StreamEvent::Item(item))?;
        if item.kind != ItemKind::File {
            continue;
        }
        let ids: Vec<crate::Id> = item
            .chunks
            .iter()
            .filter_map(|c| match c {
                Extent::Data { id, .. } => Some(*id),
                Extent::Hole(_) => None,
            })
            .collect();
        // extent position of each data chunk, to hand on the holes before it
        let mut ext = 0usize;
        let mut failed: Option<Error> = None;
        repo.fetch_sealed(&index, &ids, &mut |n, blob| {
            let step = (|| -> Result<()> {
                while let Some(Extent::Hole(h)) = item.chunks.get(ext) {
                    holes(sink, *h)?;
                    ext += 1;
                }
                let data = repo.open_fetched(&index, &ids[n], &blob?)?;
                ext += 1;
                sink(StreamEvent::Data(&data))
            })();
            match step {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        while let Some(Extent::Hole(h)) = item.chunks.get(ext) {
            holes(sink, *h)?;
            ext += 1;
        }
    }
    Ok(meta)
}
