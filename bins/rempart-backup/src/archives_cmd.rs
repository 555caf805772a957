//! borg's archive-selection commands and flags (issue 17): `rename`, `delete -a/--first/--last`,
//! `list --format`, `list`/`info --first/--last`.

use crate::list_format::{self, ItemCtx};
use anyhow::anyhow;
use dedupstore::archive::ManifestEntry;
use dedupstore::commands;
use dedupstore::extract::archive_meta_items;
use dedupstore::repo::Repository;
use std::io::Write;
use std::process::ExitCode;

/// `-a GLOB`, `--first N`, `--last N` (borg: `--first` and `--last` exclude each other).
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct Selection {
    /// Only archives matching this glob.
    #[arg(short = 'a', long = "glob-archives", value_name = "GLOB")]
    pub(crate) glob: Option<String>,
    /// Only the oldest N (matching) archives.
    #[arg(long, value_name = "N", conflicts_with = "last")]
    pub(crate) first: Option<usize>,
    /// Only the newest N (matching) archives.
    #[arg(long, value_name = "N")]
    pub(crate) last: Option<usize>,
}

impl Selection {
    /// Whether any of the flags was given.
    pub(crate) fn any(&self) -> bool {
        self.glob.is_some() || self.first.is_some() || self.last.is_some()
    }

    /// The selected archives of `repo`, oldest first.
    pub(crate) fn select(&self, repo: &Repository) -> anyhow::Result<Vec<ManifestEntry>> {
        Ok(commands::select_archives(commands::list_archives(repo)?, self.glob.as_deref(), self.first, self.last))
    }
}

/// `rename REPO::OLD NEW`.
pub(crate) fn rename(target: &str, new: &str) -> anyhow::Result<ExitCode> {
    let (repo_path, old) = crate::split_target(Some(target))?;
    let old = old.ok_or_else(|| anyhow!("{target}: expected REPO::ARCHIVE"))?;
    let repo = crate::open(&repo_path)?;
    commands::rename_archive(&repo, &old, new)?;
    Ok(ExitCode::SUCCESS)
}

/// borg's archive line in `delete --list` and `list`: `NAME<36> TIME [ID]`.
fn archive_line(a: &ManifestEntry) -> String {
    format!("{:<36} {} [{}]", a.name, crate::fmt_time(commands::time_of(a.time)), a.id.to_hex())
}

/// `delete [-n] [--list] REPO -a GLOB | --first N | --last N`: with `--list`, borg's lines on
/// stderr (`Would delete archive: …`, `Deleting archive: … (i/n)`); no match deletes nothing
/// and is no error (as borg).
pub(crate) fn delete_selected(repo: &Repository, sel: &Selection, dry_run: bool, list: bool) -> anyhow::Result<()> {
    let chosen = sel.select(repo)?;
    let n = chosen.len();
    for (i, a) in chosen.iter().enumerate() {
        if dry_run && list {
            eprintln!("Would delete archive: {} ({}/{n})", archive_line(a), i + 1);
        } else if list {
            eprintln!("Deleting archive: {} ({}/{n})", archive_line(a), i + 1);
        }
    }
    if !dry_run && n > 0 {
        let names: Vec<&str> = chosen.iter().map(|a| a.name.as_str()).collect();
        commands::delete_archives(repo, &names)?;
    }
    Ok(())
}

/// `list REPO --format FMT` over the selected archives.
pub(crate) fn list_repo_formatted(repo: &Repository, archives: &[ManifestEntry], fmt: &str) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(crate::Stdout);
    let need_meta = list_format::needs_archive_meta(fmt);
    for a in archives {
        let meta = if need_meta { Some(repo.archive(&a.id)?) } else { None };
        let line = list_format::render(fmt, &|k| list_format::archive_value(a, meta.as_ref(), k))?;
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// `list REPO::ARCHIVE --format FMT [PATHS]`.
pub(crate) fn list_archive_formatted(repo: &Repository, name: &str, fmt: &str, paths: &[String]) -> anyhow::Result<()> {
    let entry = repo.manifest()?.get(name).cloned().ok_or_else(|| anyhow!("Archive {name} does not exist"))?;
    let index = repo.load_index()?;
    let (meta, items) = archive_meta_items(repo, &index, name)?;
    let ctx = ItemCtx { archive: &entry, meta: &meta, index: &index };
    let mut out = std::io::BufWriter::new(crate::Stdout);
    for i in &items {
        let p = i.path_lossy();
        if !paths.is_empty() && !paths.iter().any(|q| p == *q || p.starts_with(&format!("{q}/"))) {
            continue;
        }
        let line = list_format::render(fmt, &|k| list_format::item_value(&ctx, i, k))?;
        out.write_all(line.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}
