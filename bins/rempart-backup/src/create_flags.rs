//! borg 1.2's pattern and tag switches of `create` (`--exclude-from`, `--pattern`,
//! `--patterns-from`, `--exclude-caches`, `--exclude-if-present`, `--keep-exclude-tags`,
//! `--files-cache`), turned into [`CreateOptions`].
//!
//! borg puts `--exclude`, `--exclude-from`, `--pattern` and `--patterns-from` into one list in
//! command-line order, and the first pattern that matches a path decides. clap keeps the order
//! within one option only, so the order across them is read back from the raw arguments.

use anyhow::{bail, Context};
use dedupstore::create::CreateOptions;
use dedupstore::pattern::Matcher;
use std::path::PathBuf;

/// The switches (flattened into `create`).
#[derive(clap::Args, Debug, Default)]
pub(crate) struct CreateFlags {
    /// Read exclude patterns from FILE, one per line (`fm:` by default).
    #[arg(long, value_name = "FILE")]
    exclude_from: Vec<PathBuf>,
    /// An include/exclude line: `+ PAT`, `- PAT`, `! PAT`, `R PATH` (`sh:` by default).
    #[arg(long, value_name = "PATTERN", allow_hyphen_values = true)]
    pattern: Vec<String>,
    /// Read include/exclude lines (`+ - ! R P`) from FILE.
    #[arg(long, value_name = "FILE")]
    patterns_from: Vec<PathBuf>,
    /// Exclude directories holding a CACHEDIR.TAG with the standard signature.
    #[arg(long)]
    exclude_caches: bool,
    /// Exclude directories holding an entry named NAME.
    #[arg(long, value_name = "NAME")]
    exclude_if_present: Vec<String>,
    /// Keep the excluded directories themselves and their tag files.
    #[arg(long)]
    keep_exclude_tags: bool,
    /// Files cache mode: what must be unchanged to trust a file without reading it
    /// (ctime,size,inode; mtime,size; rechunk,ctime; disabled; ...).
    #[arg(long, value_name = "MODE", default_value = "ctime,size,inode")]
    files_cache: String,
    /// Do not store atime (the item gets its mtime as atime).
    #[arg(long, conflicts_with = "atime")]
    noatime: bool,
    /// Store atime (rempart's default, unlike borg 1.2's).
    #[arg(long)]
    atime: bool,
    /// Do not store ctime.
    #[arg(long)]
    noctime: bool,
    /// Do not read and store extended attributes.
    #[arg(long)]
    noxattrs: bool,
    /// Accepted for borg's scripts: rempart stores no birth time.
    #[arg(long)]
    nobirthtime: bool,
    /// Accepted for borg's scripts: rempart stores no file flags.
    #[arg(long, alias = "nobsdflags")]
    noflags: bool,
    /// Accepted for borg's scripts: rempart stores no ACLs.
    #[arg(long)]
    noacls: bool,
}

/// Which pattern option a raw argument is, and whether its value is glued to it.
fn pattern_option(arg: &str) -> Option<(u8, bool)> {
    let kinds: [(&str, u8); 4] =
        [("--exclude-from", b'f'), ("--exclude", b'e'), ("--patterns-from", b'F'), ("--pattern", b'p')];
    for (name, k) in kinds {
        if arg == name {
            return Some((k, false));
        }
        if arg.strip_prefix(name).is_some_and(|r| r.starts_with('=')) {
            return Some((k, true));
        }
    }
    if arg == "-e" {
        return Some((b'e', false));
    }
    // `-eX`, or `-e` last in a group of short flags without values (`-se`, `-xe`)
    if let Some(rest) = arg.strip_prefix('-').filter(|r| !r.starts_with('-')) {
        for (i, c) in rest.char_indices() {
            match c {
                'e' => return Some((b'e', i + 1 < rest.len())),
                // the other short options of create that take a value: the rest is it
                'C' | 'c' => return None,
                _ => {}
            }
        }
    }
    None
}

/// The sequence of pattern options in `args` (`e` exclude, `f` exclude-from, `p` pattern,
/// `F` patterns-from), in order.
fn option_order(args: &[String]) -> Vec<u8> {
    let mut order = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if args[i] == "--" {
            break;
        }
        match pattern_option(&args[i]) {
            Some((k, glued)) => {
                order.push(k);
                i += if glued { 1 } else { 2 };
            }
            None => i += 1,
        }
    }
    order
}

impl CreateFlags {
    /// Fills `opts`: the ordered patterns (with `excludes`, the `--exclude` values, and the
    /// raw command line `args` for their order), the `R` roots after the given paths, the tags.
    pub(crate) fn apply(&self, opts: &mut CreateOptions, excludes: &[String], args: &[String]) -> anyhow::Result<()> {
        let mut m = Matcher::new();
        let (mut e, mut f, mut p, mut pf) =
            (excludes.iter(), self.exclude_from.iter(), self.pattern.iter(), self.patterns_from.iter());
        let read =
            |path: &PathBuf| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
        let mut order = option_order(args);
        let expected = excludes.len() + self.exclude_from.len() + self.pattern.len() + self.patterns_from.len();
        if order.len() != expected {
            // an unusual spelling: fall back to grouping by option
            order = [
                (b'p', self.pattern.len()),
                (b'F', self.patterns_from.len()),
                (b'f', self.exclude_from.len()),
                (b'e', excludes.len()),
            ]
            .iter()
            .flat_map(|&(k, n)| std::iter::repeat_n(k, n))
            .collect();
        }
        for k in order {
            match k {
                b'e' => {
                    if let Some(x) = e.next() {
                        m.add_exclude(x).with_context(|| format!("--exclude {x:?}"))?;
                    }
                }
                b'f' => {
                    if let Some(path) = f.next() {
                        m.add_exclude_lines(&read(path)?)
                            .with_context(|| format!("--exclude-from {}", path.display()))?;
                    }
                }
                b'p' => {
                    if let Some(x) = p.next() {
                        m.add_pattern(x).with_context(|| format!("--pattern {x:?}"))?;
                    }
                }
                _ => {
                    if let Some(path) = pf.next() {
                        m.add_pattern_lines(&read(path)?)
                            .with_context(|| format!("--patterns-from {}", path.display()))?;
                    }
                }
            }
        }
        opts.paths.extend(m.roots().iter().map(PathBuf::from));
        if opts.paths.is_empty() {
            bail!("no paths to back up: give PATH arguments or R lines in --pattern/--patterns-from");
        }
        opts.excludes.clear();
        opts.patterns = m;
        opts.exclude_caches = self.exclude_caches;
        opts.exclude_if_present = self.exclude_if_present.clone();
        opts.keep_exclude_tags = self.keep_exclude_tags;
        opts.files_cache = dedupstore::create::FilesCacheMode::parse(&self.files_cache)?;
        opts.store_atime = !self.noatime;
        opts.store_ctime = !self.noctime;
        opts.store_xattrs = !self.noxattrs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_across_options() {
        let a: Vec<String> = [
            "rempart-backup",
            "create",
            "-s",
            "--pattern",
            "+ a",
            "-ex",
            "--exclude-from=f",
            "-se",
            "y",
            "-Cnone",
            "-c",
            "5",
            "--patterns-from",
            "g",
            "--",
            "-e",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(option_order(&a), b"pefeF");
    }
}
