//! `import-borg BORG_REPO REMPART_REPO`: copies the archives of a BorgBackup 1.2 repository
//! into a rempart repository ([`borgrepo`] reads borg's format directly; borg is not run).
//!
//! Order: the borg repository is opened and checked first (config, every segment's crc32, the
//! key, the manifest and each selected archive's metadata), so a repository that is not borg,
//! a wrong passphrase or a damaged segment stops the command before the rempart repository is
//! even opened. Then each archive not imported yet is imported (`borgrepo::import`).
//!
//! Passphrase of the borg key: `BORG_PASSPHRASE`, else `BORG_PASSCOMMAND` (run by `sh -c`),
//! else a prompt on a terminal, else the empty passphrase (as borg tries). Key files of the
//! keyfile modes: `BORG_KEY_FILE`, else the keys directory (`BORG_KEYS_DIR`, else
//! `$BORG_CONFIG_DIR/keys`, else `~/.config/borg/keys`). The rempart repository's passphrase
//! comes from `REMPART_PASSPHRASE` / `REMPART_PASSCOMMAND` as for every other command.

use anyhow::{bail, Context};
use borgrepo::import::{already_imported, import_archive, ImportError, ImportOptions};
use borgrepo::{BorgRepository, KeySource};
use runner::passphrase::PassphraseSource;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `rempart-backup import-borg`.
#[derive(clap::Args, Debug)]
pub(crate) struct ImportBorgArgs {
    /// Only archives whose name matches this shell-style pattern (`*`, `?`, `[...]`).
    #[arg(short = 'a', long = "archive", value_name = "GLOB")]
    archive: Option<String>,
    /// Read and verify everything (keys, MACs, chunk ids), write nothing.
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Show progress on a terminal.
    #[arg(short, long)]
    progress: bool,
    /// One JSON document on standard output instead of text.
    #[arg(long)]
    json: bool,
    /// Compression of the imported chunks in the rempart repository.
    #[arg(short = 'C', long, default_value = "lz4")]
    compression: String,
    /// The borg repository (a local directory).
    borg_repo: PathBuf,
    /// The rempart repository (default: REMPART_REPO).
    rempart_repo: Option<String>,
}

/// fnmatch-style matching of `*`, `?` and `[...]` (`[!...]` negates).
fn glob_match(pat: &[u8], name: &[u8]) -> bool {
    match pat.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|i| glob_match(rest, &name[i..])),
        Some((b'?', rest)) => !name.is_empty() && glob_match(rest, &name[1..]),
        Some((b'[', rest)) if rest.contains(&b']') => {
            let Some((&c, tail)) = name.split_first() else { return false };
            let (neg, body) = match rest.first() {
                Some(b'!') => (true, &rest[1..]),
                _ => (false, rest),
            };
            // a `]` right after `[` or `[!` is literal
            let end = body.iter().skip(1).position(|&b| b == b']').map(|p| p + 1);
            let Some(end) = end.filter(|_| !body.is_empty()) else { return glob_match(&pat[1..], name) && c == b'[' };
            let set = &body[..end];
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == b'-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != neg && glob_match(&body[end + 1..], tail)
        }
        Some((&p, rest)) => name.first() == Some(&p) && glob_match(rest, &name[1..]),
    }
}

fn open_borg(path: &std::path::Path) -> anyhow::Result<BorgRepository> {
    let sources = [PassphraseSource::Env("BORG_PASSPHRASE".into())]
        .into_iter()
        .chain(std::env::var("BORG_PASSCOMMAND").ok().map(PassphraseSource::Command))
        .collect::<Vec<_>>();
    let mut keys = KeySource {
        passphrase: runner::passphrase::resolve_first(&sources)?,
        key_file: std::env::var_os("BORG_KEY_FILE").map(PathBuf::from),
        keys_dir: borgrepo::key::default_keys_dir(),
    };
    let ctx = || format!("borg repository {}", path.display());
    match BorgRepository::open(path, &keys) {
        Err(borgrepo::Error::NoPassphrase(_)) => {
            if let Some(p) = crate::run_cmd::prompt("Enter passphrase for the borg key: ")? {
                keys.passphrase = Some(p);
                return BorgRepository::open(path, &keys).with_context(ctx);
            }
            BorgRepository::open(path, &keys).with_context(ctx)
        }
        r => r.with_context(ctx),
    }
}

/// Runs `import-borg`; exit 0, or 1 when an archive was skipped because its name is taken.
pub(crate) fn import_borg(a: ImportBorgArgs) -> anyhow::Result<ExitCode> {
    let compression = dedupstore::compress::Compression::parse(&a.compression)?;
    let borg = open_borg(&a.borg_repo)?;
    let selected: Vec<_> = borg
        .archives()
        .context("borg manifest")?
        .into_iter()
        .filter(|r| a.archive.as_deref().is_none_or(|g| glob_match(g.as_bytes(), r.name.as_bytes())))
        .collect();
    // every selected archive's metadata, before anything is written
    for r in &selected {
        borg.archive(&r.id).with_context(|| format!("borg archive {}", r.name))?;
    }
    let (repo_name, archive) = crate::split_target(a.rempart_repo.as_deref())?;
    if archive.is_some() {
        bail!("give the rempart repository without ::ARCHIVE (archives keep their borg names)");
    }
    let mut repo = crate::open(&repo_name)?;
    if a.dry_run {
        // reads only (the manifest, to skip what was imported): not even a lock file is written
        repo.set_bypass_lock(true);
    }
    let opts = ImportOptions { compression, dry_run: a.dry_run, threads: 0 };
    let mut warnings = 0;
    let mut report = Vec::new();
    let mut out = std::io::stdout().lock();
    for r in &selected {
        let id_hex = hex_of(&r.id);
        match already_imported(&repo, &r.name, &r.id) {
            Ok(true) => {
                if !a.json {
                    writeln!(out, "Skipping archive {}: already imported", r.name)?;
                }
                report.push(serde_json::json!({"name": r.name, "borg_id": id_hex, "skipped": "already imported"}));
                continue;
            }
            Ok(false) => {}
            Err(ImportError::NameTaken(n)) => {
                eprintln!("Warning: skipping archive {n}: the rempart repository has another archive of that name");
                warnings += 1;
                report.push(serde_json::json!({"name": r.name, "borg_id": id_hex, "skipped": "name taken"}));
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let bar = crate::progress_bar(a.progress && !a.json, "{spinner} {elapsed_precise} {bytes:>10} {msg}");
        let name = r.name.clone();
        let mut on = |p: borgrepo::import::Progress| {
            if let Some(b) = &bar {
                b.set_position(p.original);
                b.set_message(format!("{name}: {} files", p.files));
            }
        };
        let t0 = std::time::Instant::now();
        let res = import_archive(&borg, &r.id, &repo, &opts, &mut on).with_context(|| format!("archive {}", r.name));
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let done = res?;
        let secs = t0.elapsed().as_secs_f64();
        let st = done.archive.stats;
        if !a.json {
            writeln!(
                out,
                "{} archive {}: {} items, {} files, {} original, {} added ({:.1} MB/s)",
                if a.dry_run { "Would import" } else { "Imported" },
                r.name,
                done.items,
                st.nfiles,
                crate::size(st.original_size),
                crate::size(st.deduplicated_size),
                st.original_size as f64 / 1e6 / secs.max(1e-9),
            )?;
        }
        report.push(serde_json::json!({
            "name": r.name,
            "borg_id": id_hex,
            "id": done.id.map(|i| i.to_hex()),
            "items": done.items,
            "nfiles": st.nfiles,
            "original_size": st.original_size,
            "deduplicated_size": st.deduplicated_size,
            "duration": secs,
            "dry_run": a.dry_run,
        }));
    }
    if a.json {
        writeln!(out, "{}", serde_json::json!({ "archives": report }))?;
    }
    Ok(if warnings > 0 { ExitCode::from(crate::WARNING) } else { ExitCode::SUCCESS })
}

fn hex_of(id: &[u8; 32]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match(b"host-*", b"host-2024"));
        assert!(!glob_match(b"host-*", b"other"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(glob_match(b"[ab]x", b"bx"));
        assert!(!glob_match(b"[!ab]x", b"bx"));
        assert!(glob_match(b"[0-9]*", b"7z"));
        assert!(glob_match(b"*", b""));
    }
}
