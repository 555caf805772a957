//! The item stream is stored while `create` walks (bounded memory), with the chunk boundaries
//! of the whole stream; checkpoints name the items so far; extract and check report progress.

use dedupstore::archive::encode_item;
use dedupstore::backend::LocalBackend;
use dedupstore::chunker::ChunkerParams;
use dedupstore::create::{create, CreateOptions, Event};
use dedupstore::crypto::Mode;
use dedupstore::extract::archive_items;
use dedupstore::repo::{InitOptions, Repository};
use std::fs;
use std::path::Path;
use std::sync::Arc;

fn init(dir: &Path) -> Repository {
    let mut o = InitOptions::new(Mode::None, None);
    o.pack_size = 256 << 10;
    o.chunker = ChunkerParams { min: 4 << 10, avg: 16 << 10, max: 64 << 10 };
    Repository::init(Arc::new(LocalBackend::new(dir.join("repo"))), &o).unwrap()
}

/// `n` files with long names (about 300 bytes of item metadata each) and small contents.
fn tree(root: &Path, n: usize) {
    for i in 0..n {
        let d = root.join(format!("dir{:02}-{}", i % 10, "d".repeat(60)));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("{i:05}-{}", "n".repeat(120))), format!("file {i}\n").repeat(10)).unwrap();
    }
}

#[test]
fn item_stream_is_stored_as_it_grows_with_the_boundaries_of_the_whole_stream() {
    let d = tempfile::tempdir().unwrap();
    let repo = init(d.path());
    let src = d.path().join("src");
    tree(&src, 3000);
    let mut opts = CreateOptions::new("a", vec![src]);
    // a checkpoint every ~300 files
    opts.checkpoint_volume = 300 * 70;
    let mut seen = 0usize;
    let mut checkpoints: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
    let mut on = |e: Event<'_>| match e {
        Event::Item { .. } => seen += 1,
        Event::Checkpoint { name } => {
            let index = repo.load_index().unwrap();
            let items = archive_items(&repo, &index, name).unwrap();
            checkpoints.push((seen, items.into_iter().map(|i| i.path).collect()));
        }
        _ => {}
    };
    let res = create(&repo, &opts, &mut on).unwrap();
    let index = repo.load_index().unwrap();
    let items = archive_items(&repo, &index, "a").unwrap();
    assert_eq!(items.len(), seen);
    assert_eq!(res.archive.stats.nfiles, 3000);
    // the stored chunks are those of chunking the whole stream at once
    let mut whole = Vec::new();
    for i in &items {
        encode_item(i, &mut whole).unwrap();
    }
    assert!(whole.len() > 10 * (64 << 10), "stream of {} bytes: too small to be cut while growing", whole.len());
    let ids: Vec<_> = repo.chunker().split(&whole).into_iter().map(|c| repo.crypto().key().chunk_id(c)).collect();
    assert_eq!(res.archive.items, ids);
    // every checkpoint named exactly the items emitted before it
    assert!(checkpoints.len() >= 5, "{} checkpoints", checkpoints.len());
    let paths: Vec<Vec<u8>> = items.iter().map(|i| i.path.clone()).collect();
    for (n, cp) in &checkpoints {
        assert_eq!(cp.as_slice(), &paths[..*n]);
    }
    // the committed archive replaced its checkpoints; the repository checks clean
    let names: Vec<String> = repo.manifest().unwrap().archives.into_iter().map(|a| a.name).collect();
    assert_eq!(names, ["a"]);
    let r = dedupstore::commands::check(
        &repo,
        dedupstore::commands::CheckOptions { verify_data: true, repair: false, ..Default::default() },
    )
    .unwrap();
    assert!(r.ok(), "{:?}", r.errors);
}

#[test]
fn extract_and_check_progress_add_up_to_their_totals() {
    use dedupstore::commands::{check_with_progress, CheckOptions, CheckProgress};
    use dedupstore::extract::{extract_with_progress, ExtractOptions, ExtractProgress};
    let d = tempfile::tempdir().unwrap();
    let repo = init(d.path());
    let src = d.path().join("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    let mut total = 0u64;
    for i in 0..20u64 {
        let data: Vec<u8> = (0..i * 20_000).map(|k| (k * 7 + i) as u8 ^ (k >> 9) as u8).collect();
        total += data.len() as u64;
        fs::write(src.join("sub").join(format!("f{i}")), data).unwrap();
    }
    create(&repo, &CreateOptions::new("one", vec![src.clone()]), &mut |_| {}).unwrap();
    create(&repo, &CreateOptions::new("two", vec![src.join("sub")]), &mut |_| {}).unwrap();
    // extract: starts at zero with the totals, never goes back, ends at the totals
    let mut seen: Vec<ExtractProgress> = Vec::new();
    let opts = ExtractOptions { dest: d.path().join("out"), ..ExtractOptions::default() };
    let res = extract_with_progress(&repo, "one", &opts, &mut |p| seen.push(p)).unwrap();
    assert!(res.errors.is_empty(), "{:?}", res.errors);
    let first = seen[0];
    assert_eq!((first.items, first.bytes), (0, 0));
    assert_eq!(first.bytes_total, total);
    assert_eq!(first.items_total, 22); // src, src/sub, 20 files
    assert!(seen.windows(2).all(|w| w[0].items <= w[1].items && w[0].bytes <= w[1].bytes));
    assert!(seen.iter().all(|p| p.items_total == first.items_total && p.bytes_total == total));
    let last = *seen.last().unwrap();
    assert_eq!((last.items, last.bytes), (22, total));
    assert_eq!(res.items, 22);
    assert_eq!(res.bytes, total);
    // more than one event per file: a large file moves the bar while it is written
    assert!(seen.len() > 22 + 20, "{} events", seen.len());
    // check: packs, then archives, each from 0 to its total
    let mut events: Vec<CheckProgress> = Vec::new();
    let r =
        check_with_progress(&repo, CheckOptions { verify_data: true, repair: false, ..Default::default() }, &mut |p| {
            events.push(p)
        })
        .unwrap();
    assert!(r.ok(), "{:?}", r.errors);
    let packs: Vec<(u64, u64, u64)> = events
        .iter()
        .filter_map(|e| match *e {
            CheckProgress::Packs { done, total, bytes } => Some((done, total, bytes)),
            _ => None,
        })
        .collect();
    let archives: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match *e {
            CheckProgress::Archives { done, total } => Some((done, total)),
            _ => None,
        })
        .collect();
    let n = r.packs as u64;
    assert!(n > 2, "{n} packs");
    assert_eq!(packs.iter().map(|p| p.0).collect::<Vec<_>>(), (0..=n).collect::<Vec<_>>());
    assert!(packs.iter().all(|p| p.1 == n));
    let pack_bytes: u64 = walk_size(&d.path().join("repo/data"));
    assert_eq!(packs.last().unwrap().2, pack_bytes);
    assert_eq!(archives, [(0, 2), (1, 2), (2, 2)]);
    // packs first, then archives
    let split = events.iter().position(|e| matches!(e, CheckProgress::Archives { .. })).unwrap();
    assert!(events[split..].iter().all(|e| matches!(e, CheckProgress::Archives { .. })));
}

fn walk_size(dir: &Path) -> u64 {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() { walk_size(&e.path()) } else { m.len() };
    }
    n
}
