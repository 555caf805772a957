//! `export-tar REPO::ARCHIVE FILE [PATHS]` (borg 1.2.4's): the archive as a GNU tar stream to
//! FILE (`-`: standard output), through a filter program chosen by FILE's extension as borg
//! does (`.tar.gz`/`.tgz` gzip, `.tar.bz2`/`.tbz` bzip2, `.tar.xz`/`.txz` xz, `.tar.lz4` lz4,
//! `.tar.zstd`/`.tar.zst` zstd) or given with `--tar-filter CMD` (run with `sh -c`, the tar on
//! its standard input, FILE on its standard output).
//!
//! Content is read chunk by chunk as tar writes it (one chunk in memory per file being
//! written). Hard links whose first name is exported become tar hard links; the others carry
//! their content. Owners (names and ids), permission bits, mtime (seconds: GNU format),
//! symlinks, directories, fifos and devices are kept; xattrs are not (GNU tar format, as borg's
//! default `--tar-format GNU`).

use crate::extract_cmd::ExtractFlags;
use anyhow::{anyhow, bail, Context};
use dedupstore::archive::{Extent, Item, ItemKind};
use dedupstore::extract::archive_items;
use dedupstore::repo::{Index, Repository};
use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

/// Arguments of `export-tar`.
#[derive(clap::Args, Debug)]
pub(crate) struct ExportTarArgs {
    /// Filter program the tar goes through (sh -c); default: by FILE's extension.
    #[arg(long, value_name = "CMD")]
    tar_filter: Option<String>,
    /// List the exported items on standard error.
    #[arg(long)]
    list: bool,
    /// Remove N leading path components.
    #[arg(long, default_value_t = 0)]
    strip_components: usize,
    #[command(flatten)]
    patterns: ExtractFlags,
    /// REPO::ARCHIVE.
    target: String,
    /// Output tar file (`-`: standard output).
    file: String,
    /// Only these paths.
    paths: Vec<String>,
}

/// borg's filter for a tar file name, by extension.
pub(crate) fn filter_for(file: &str, decompress: bool) -> Option<&'static str> {
    let table: [(&[&str], &str, &str); 5] = [
        (&[".tar.gz", ".tgz"], "gzip", "gzip -d"),
        (&[".tar.bz2", ".tbz"], "bzip2", "bzip2 -d"),
        (&[".tar.xz", ".txz"], "xz", "xz -d"),
        (&[".tar.lz4"], "lz4", "lz4 -d"),
        (&[".tar.zstd", ".tar.zst"], "zstd", "zstd -d"),
    ];
    table
        .iter()
        .find(|(exts, _, _)| exts.iter().any(|e| file.ends_with(e)))
        .map(|(_, c, d)| if decompress { *d } else { *c })
}

/// A regular file's content, read chunk by chunk.
struct Content<'a> {
    repo: &'a Repository,
    index: &'a Index,
    extents: std::slice::Iter<'a, Extent>,
    buf: Vec<u8>,
    pos: usize,
    zeros: u64,
}

impl Read for Content<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.zeros > 0 {
                let n = (self.zeros.min(out.len() as u64)) as usize;
                out[..n].fill(0);
                self.zeros -= n as u64;
                return Ok(n);
            }
            if self.pos < self.buf.len() {
                let n = (self.buf.len() - self.pos).min(out.len());
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match self.extents.next() {
                None => return Ok(0),
                Some(Extent::Hole(n)) => self.zeros = *n,
                Some(Extent::Data { id, .. }) => {
                    self.buf = self.repo.read_chunk(self.index, id).map_err(std::io::Error::other)?;
                    self.pos = 0;
                }
            }
        }
    }
}

fn strip(path: &[u8], n: usize) -> Option<Vec<u8>> {
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').filter(|c| !c.is_empty()).collect();
    (parts.len() > n).then(|| parts[n..].join(&b'/'))
}

fn header_for(item: &Item, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(item.mode & 0o7777);
    h.set_uid(u64::from(item.uid));
    h.set_gid(u64::from(item.gid));
    if let Some(u) = &item.user {
        let _ = h.set_username(u);
    }
    if let Some(g) = &item.group {
        let _ = h.set_groupname(g);
    }
    h.set_mtime(u64::try_from(item.mtime.div_euclid(1_000_000_000)).unwrap_or(0));
    h.set_size(0);
    if matches!(item.kind, ItemKind::CharDev | ItemKind::BlockDev) {
        let (major, minor) = (nix::sys::stat::major(item.rdev), nix::sys::stat::minor(item.rdev));
        let _ = h.set_device_major(major as u32);
        let _ = h.set_device_minor(minor as u32);
    }
    h
}

/// Writes the selected items of `archive` as a tar stream to `out`; returns the items written.
fn write_tar(
    repo: &Repository,
    archive: &str,
    a: &ExportTarArgs,
    out: &mut dyn Write,
    list: &mut dyn FnMut(&str),
) -> anyhow::Result<u64> {
    let _lock = repo.shared_lock()?;
    let index = repo.load_index()?;
    let items = archive_items(repo, &index, archive)?;
    let m = a.patterns.matcher()?;
    let mut tar = tar::Builder::new(out);
    let mut written: HashSet<Vec<u8>> = HashSet::new();
    let mut n = 0;
    for item in &items {
        if !crate::extract_cmd::under(item, &a.paths) || !m.matches(&item.path).included {
            continue;
        }
        let Some(path) = strip(&item.path, a.strip_components) else { continue };
        let name = OsStr::from_bytes(&path);
        let ctx = || format!("{}", String::from_utf8_lossy(&path));
        match (item.kind, &item.hardlink) {
            (ItemKind::File, Some(first)) if written.contains(first) => {
                let target = strip(first, a.strip_components).ok_or_else(|| anyhow!("{}: link target", ctx()))?;
                let mut h = header_for(item, tar::EntryType::Link);
                tar.append_link(&mut h, name, OsStr::from_bytes(&target)).with_context(ctx)?;
            }
            (ItemKind::File, _) => {
                let mut h = header_for(item, tar::EntryType::Regular);
                h.set_size(item.size);
                let content =
                    Content { repo, index: &index, extents: item.chunks.iter(), buf: vec![], pos: 0, zeros: 0 };
                tar.append_data(&mut h, name, content).with_context(ctx)?;
            }
            (ItemKind::Symlink, _) => {
                let mut h = header_for(item, tar::EntryType::Symlink);
                let t = item.target.clone().unwrap_or_default();
                tar.append_link(&mut h, name, OsStr::from_bytes(&t)).with_context(ctx)?;
            }
            (kind, _) => {
                let t = match kind {
                    ItemKind::Dir => tar::EntryType::Directory,
                    ItemKind::Fifo => tar::EntryType::Fifo,
                    ItemKind::CharDev => tar::EntryType::Char,
                    ItemKind::BlockDev => tar::EntryType::Block,
                    _ => continue,
                };
                let mut h = header_for(item, t);
                // borg names directories with a trailing slash, as GNU tar does
                let mut dir_name = path.clone();
                if kind == ItemKind::Dir {
                    dir_name.push(b'/');
                }
                tar.append_data(&mut h, OsStr::from_bytes(&dir_name), std::io::empty()).with_context(ctx)?;
            }
        }
        written.insert(item.path.clone());
        list(&String::from_utf8_lossy(&path));
        n += 1;
    }
    tar.finish()?;
    Ok(n)
}

/// Runs `export-tar`.
pub(crate) fn export_tar(a: ExportTarArgs) -> anyhow::Result<ExitCode> {
    let (repo_path, archive) = crate::split_target(Some(&a.target))?;
    let archive = archive.ok_or_else(|| anyhow!("{}: expected REPO::ARCHIVE", a.target))?;
    let repo = crate::open(&repo_path)?;
    let filter = a.tar_filter.clone().or_else(|| filter_for(&a.file, false).map(String::from));
    let list_on = a.list;
    let mut list = |p: &str| {
        if list_on {
            eprintln!("{p}");
        }
    };
    let to_file = a.file != "-";
    let path = PathBuf::from(&a.file);
    match filter {
        None => {
            if to_file {
                let f = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
                let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
                write_tar(&repo, &archive, &a, &mut w, &mut list)?;
                w.flush()?;
            } else {
                let mut w = std::io::BufWriter::with_capacity(1 << 20, crate::Stdout);
                write_tar(&repo, &archive, &a, &mut w, &mut list)?;
                w.flush()?;
            }
        }
        Some(cmd) => {
            let stdout = if to_file {
                Stdio::from(std::fs::File::create(&path).with_context(|| path.display().to_string())?)
            } else {
                Stdio::inherit()
            };
            let mut child = Command::new("sh")
                .args(["-c", &cmd])
                .stdin(Stdio::piped())
                .stdout(stdout)
                .spawn()
                .with_context(|| format!("--tar-filter {cmd:?}"))?;
            let mut stdin = std::io::BufWriter::with_capacity(1 << 20, child.stdin.take().context("filter stdin")?);
            let res = write_tar(&repo, &archive, &a, &mut stdin, &mut list).and_then(|_| Ok(stdin.flush()?));
            drop(stdin);
            let status = child.wait()?;
            res?;
            if !status.success() {
                bail!("--tar-filter {cmd:?} failed: {status}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Arguments of `import-tar`.
#[derive(clap::Args, Debug)]
pub(crate) struct ImportTarArgs {
    /// Filter program the file goes through before it is read (sh -c); default: by FILE's
    /// extension (`gzip -d`, `bzip2 -d`, `xz -d`, `lz4 -d`, `zstd -d`).
    #[arg(long, value_name = "CMD")]
    tar_filter: Option<String>,
    /// Compression of the new chunks (as create's).
    #[arg(short = 'C', long, default_value = "auto,zstd,3")]
    compression: String,
    /// REPO::ARCHIVE to create.
    target: String,
    /// Tar file (`-`: standard input).
    file: String,
}

fn item_from(h: &tar::Header, path: Vec<u8>, kind: ItemKind) -> Item {
    let mtime = h.mtime().ok().and_then(|s| i64::try_from(s).ok()).unwrap_or(0).saturating_mul(1_000_000_000);
    let rdev = match kind {
        ItemKind::CharDev | ItemKind::BlockDev => nix::sys::stat::makedev(
            u64::from(h.device_major().ok().flatten().unwrap_or(0)),
            u64::from(h.device_minor().ok().flatten().unwrap_or(0)),
        ),
        _ => 0,
    };
    Item {
        path,
        kind,
        mode: h.mode().unwrap_or(0o644) & 0o7777,
        uid: h.uid().ok().and_then(|u| u32::try_from(u).ok()).unwrap_or(0),
        gid: h.gid().ok().and_then(|g| u32::try_from(g).ok()).unwrap_or(0),
        user: h.username().ok().flatten().filter(|s| !s.is_empty()).map(String::from),
        group: h.groupname().ok().flatten().filter(|s| !s.is_empty()).map(String::from),
        mtime,
        atime: mtime,
        ctime: mtime,
        size: 0,
        xattrs: vec![],
        target: None,
        hardlink: None,
        rdev,
        chunks: vec![],
    }
}

/// An archive path from a tar name: no leading `./` or `/`, no trailing `/`.
fn tar_path(raw: &[u8]) -> Vec<u8> {
    let mut p = raw;
    loop {
        if let Some(r) = p.strip_prefix(b"./") {
            p = r;
        } else if let Some(r) = p.strip_prefix(b"/") {
            p = r;
        } else {
            break;
        }
    }
    while let Some(r) = p.strip_suffix(b"/") {
        p = r;
    }
    p.to_vec()
}

fn import_from(b: &mut dedupstore::builder::ArchiveBuilder<'_>, input: impl Read) -> anyhow::Result<u64> {
    let mut ar = tar::Archive::new(input);
    let mut files: std::collections::HashMap<Vec<u8>, (u64, Vec<Extent>)> = Default::default();
    let mut n = 0;
    for entry in ar.entries().context("reading the tar")? {
        let mut entry = entry.context("reading the tar")?;
        let path = tar_path(&entry.path_bytes());
        if path.is_empty() {
            continue;
        }
        let what = String::from_utf8_lossy(&path).into_owned();
        let h = entry.header().clone();
        let t = h.entry_type();
        let mut item = match t {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let mut i = item_from(&h, path.clone(), ItemKind::File);
                let (chunks, size) = b.store_content(&mut entry).with_context(|| what.clone())?;
                i.chunks = chunks;
                i.size = size;
                files.insert(path.clone(), (size, i.chunks.clone()));
                i
            }
            tar::EntryType::Link => {
                let target = tar_path(&entry.link_name_bytes().unwrap_or_default());
                let (size, chunks) = files
                    .get(&target)
                    .cloned()
                    .ok_or_else(|| anyhow!("{what}: hard link to {:?} before it", target))?;
                let mut i = item_from(&h, path.clone(), ItemKind::File);
                i.size = size;
                i.chunks = chunks;
                i.hardlink = Some(target);
                i
            }
            tar::EntryType::Symlink => {
                let mut i = item_from(&h, path.clone(), ItemKind::Symlink);
                i.target = Some(entry.link_name_bytes().map(|c| c.into_owned()).unwrap_or_default());
                i
            }
            tar::EntryType::Directory => item_from(&h, path.clone(), ItemKind::Dir),
            tar::EntryType::Fifo => item_from(&h, path.clone(), ItemKind::Fifo),
            tar::EntryType::Char => item_from(&h, path.clone(), ItemKind::CharDev),
            tar::EntryType::Block => item_from(&h, path.clone(), ItemKind::BlockDev),
            _ => continue,
        };
        if let Ok(Some(exts)) = entry.pax_extensions() {
            for e in exts.flatten() {
                if let Some(name) = e.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    item.xattrs.push((name.to_vec(), e.value_bytes().to_vec()));
                }
            }
        }
        b.add_item(&item)?;
        n += 1;
    }
    // the record padding after the end marker: read, so a filter writing it does not die of
    // SIGPIPE
    std::io::copy(&mut ar.into_inner(), &mut std::io::sink()).context("reading the tar")?;
    Ok(n)
}

/// Runs `import-tar`.
pub(crate) fn import_tar(a: ImportTarArgs) -> anyhow::Result<ExitCode> {
    let (repo_path, name) = crate::split_target(Some(&a.target))?;
    let name = name.ok_or_else(|| anyhow!("{}: expected REPO::ARCHIVE", a.target))?;
    let compression = dedupstore::compress::Compression::parse(&a.compression)?;
    let repo = crate::open(&repo_path)?;
    let mut b = dedupstore::builder::ArchiveBuilder::new(&repo, &name, compression, None, std::env::args().collect())?;
    let filter = a.tar_filter.clone().or_else(|| filter_for(&a.file, true).map(String::from));
    let input: Box<dyn Read> = if a.file == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(&a.file).with_context(|| a.file.clone())?)
    };
    match filter {
        None => {
            import_from(&mut b, std::io::BufReader::with_capacity(1 << 20, input))?;
        }
        Some(cmd) => {
            let stdin = if a.file == "-" {
                Stdio::inherit()
            } else {
                Stdio::from(std::fs::File::open(&a.file).with_context(|| a.file.clone())?)
            };
            drop(input);
            let mut child = Command::new("sh")
                .args(["-c", &cmd])
                .stdin(stdin)
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("--tar-filter {cmd:?}"))?;
            let out = child.stdout.take().context("filter stdout")?;
            let res = import_from(&mut b, std::io::BufReader::with_capacity(1 << 20, out));
            let status = child.wait()?;
            res?;
            if !status.success() {
                bail!("--tar-filter {cmd:?} failed: {status}");
            }
        }
    }
    b.commit()?;
    Ok(ExitCode::SUCCESS)
}
