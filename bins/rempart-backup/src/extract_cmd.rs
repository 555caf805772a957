//! `extract`'s borg flags (issue 17): `--stdout`, `-e/--exclude`, `--exclude-from`,
//! `--pattern`, `--patterns-from` (dedupstore's borg patterns: `fm:` default for excludes,
//! `sh:` for pattern lines).

use anyhow::Context;
use dedupstore::archive::{Item, ItemKind};
use dedupstore::pattern::Matcher;
use dedupstore::repo::Repository;
use dedupstore::stream::{stream_items, StreamEvent};
use std::io::Write;
use std::path::PathBuf;

/// The flags `extract` adds to its own.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct ExtractFlags {
    /// Write the content of the selected files to standard output, one after the other.
    #[arg(long)]
    pub(crate) stdout: bool,
    /// Exclude paths matching PATTERN (fm: style unless given).
    #[arg(short = 'e', long, value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Read exclude patterns from FILE, one per line.
    #[arg(long, value_name = "FILE")]
    exclude_from: Vec<PathBuf>,
    /// Include/exclude pattern line (`+ PAT`, `- PAT`, `! PAT`; sh: style unless given).
    #[arg(long, value_name = "PATTERN", allow_hyphen_values = true)]
    pattern: Vec<String>,
    /// Read pattern lines from FILE.
    #[arg(long, value_name = "FILE")]
    patterns_from: Vec<PathBuf>,
}

impl ExtractFlags {
    /// The patterns, in borg's order: `--pattern`/`--patterns-from` as given, then excludes.
    pub(crate) fn matcher(&self) -> anyhow::Result<Matcher> {
        let mut m = Matcher::new();
        for p in &self.pattern {
            m.add_pattern(p)?;
        }
        for f in &self.patterns_from {
            let text = std::fs::read_to_string(f).with_context(|| format!("--patterns-from {}", f.display()))?;
            m.add_pattern_lines(&text)?;
        }
        for e in &self.exclude {
            m.add_exclude(e)?;
        }
        for f in &self.exclude_from {
            let text = std::fs::read_to_string(f).with_context(|| format!("--exclude-from {}", f.display()))?;
            m.add_exclude_lines(&text)?;
        }
        Ok(m)
    }
}

/// Whether `item` is `path` or below it (borg's PATH arguments).
pub(crate) fn under(item: &Item, paths: &[String]) -> bool {
    paths.is_empty()
        || paths.iter().any(|p| {
            let p = p.trim_start_matches('/').trim_end_matches('/').as_bytes();
            item.path == p || (item.path.starts_with(p) && item.path.get(p.len()) == Some(&b'/'))
        })
}

/// `extract --stdout`: the content of every selected regular file, in archive order, to
/// standard output (as borg). Returns how many files were written.
pub(crate) fn to_stdout(repo: &Repository, archive: &str, paths: &[String], m: &Matcher) -> anyhow::Result<u64> {
    let select = |i: &Item| i.kind == ItemKind::File && under(i, paths) && m.matches(&i.path).included;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, crate::Stdout);
    let mut files = 0;
    let mut io_err: Option<std::io::Error> = None;
    let res = stream_items(repo, archive, &select, &mut |e| {
        match e {
            StreamEvent::Item(_) => files += 1,
            StreamEvent::Data(d) => {
                if let Err(e) = out.write_all(d) {
                    let msg = e.to_string();
                    io_err = Some(e);
                    return Err(dedupstore::Error::InvalidArgument(format!("standard output: {msg}")));
                }
            }
            _ => {}
        }
        Ok(())
    });
    if let Some(e) = io_err {
        return Err(e).context("writing to standard output");
    }
    res?;
    out.flush()?;
    Ok(files)
}
