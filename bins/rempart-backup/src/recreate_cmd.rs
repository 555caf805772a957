//! `recreate [--exclude/--pattern ...] [-n] [--list] REPO[::ARCHIVE]` (borg 1.2.4's, for
//! excluding after the fact): each selected archive is written again without the items the
//! patterns exclude, reusing its chunks, and the manifest is switched to the new version in
//! one write (dedupstore::builder::ArchiveBuilder::replacing): a crash leaves the old archive
//! whole, never a half state. Space is freed by `compact`, as after `delete`.
//! Re-chunking (`--chunker-params`) and re-compressing (`--recompress`) are not implemented.

use crate::extract_cmd::ExtractFlags;
use anyhow::bail;
use dedupstore::builder::ArchiveBuilder;
use dedupstore::extract::archive_items;
use std::process::ExitCode;

/// Arguments of `recreate`.
#[derive(clap::Args, Debug)]
pub(crate) struct RecreateArgs {
    /// Show what would change, change nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// List the items left out (`- PATH`) on standard error.
    #[arg(long)]
    list: bool,
    /// Compression of the chunks written (the item stream).
    #[arg(short = 'C', long, default_value = "auto,zstd,3")]
    compression: String,
    #[command(flatten)]
    patterns: ExtractFlags,
    #[command(flatten)]
    sel: crate::archives_cmd::Selection,
    /// REPO or REPO::ARCHIVE.
    target: String,
}

/// Runs `recreate`.
pub(crate) fn run(a: RecreateArgs) -> anyhow::Result<ExitCode> {
    if a.patterns.stdout {
        bail!("recreate has no --stdout");
    }
    let (repo_path, archive) = crate::split_target(Some(&a.target))?;
    let repo = crate::open(&repo_path)?;
    let m = a.patterns.matcher()?;
    let compression = dedupstore::compress::Compression::parse(&a.compression)?;
    let names: Vec<String> = match archive {
        Some(n) => vec![n],
        None => a.sel.select(&repo)?.into_iter().map(|e| e.name).collect(),
    };
    if m.is_empty() {
        // borg: nothing to change, nothing written
        return Ok(ExitCode::SUCCESS);
    }
    for name in names {
        let index = repo.load_index()?;
        let items = archive_items(&repo, &index, &name)?;
        drop(index);
        let (keep, gone): (Vec<_>, Vec<_>) = items.into_iter().partition(|i| m.matches(&i.path).included);
        if a.list {
            for i in &gone {
                eprintln!("- {}", i.path_lossy());
            }
        }
        if gone.is_empty() || a.dry_run {
            continue;
        }
        let mut b = ArchiveBuilder::replacing(&repo, &name, compression)?;
        let dropped: std::collections::HashSet<&[u8]> = gone.iter().map(|i| i.path.as_slice()).collect();
        for mut i in keep {
            // a hard link whose first name is gone keeps its content (every link carries it)
            if i.hardlink.as_deref().is_some_and(|h| dropped.contains(h)) {
                i.hardlink = None;
            }
            b.add_item(&i)?;
        }
        b.commit()?;
    }
    Ok(ExitCode::SUCCESS)
}
