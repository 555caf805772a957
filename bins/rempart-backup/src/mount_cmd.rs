//! `mount` and `umount`: the repository (one directory per archive) or one archive as a
//! read-only FUSE file system ([`backupfs`]).
//!
//! Like borg, `mount` goes to the background once the mount is up: it starts itself again with
//! `--foreground --ready-fd N` (no fork: the workspace forbids `unsafe`), the child opens the
//! repository (prompting on the terminal if a passphrase is needed), mounts, writes one byte to
//! the pipe, leaves the terminal's session and serves; the parent exits 0 on that byte, or with
//! the child's exit status when the child ends without it (its error is on the same stderr).

use anyhow::{anyhow, bail, Context};
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

/// `rempart-backup mount`.
#[derive(clap::Args, Debug)]
pub(crate) struct MountArgs {
    /// Mount options, comma separated: allow_other, allow_root, numeric_ids (stored uid/gid, not
    /// the local ids of the stored names), cache_mb=N (decrypted chunks kept in memory, default
    /// 256), threads=N (requests served at once, default 4). The mount is always read-only.
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground (default: go to the background once mounted, like borg).
    #[arg(short, long)]
    foreground: bool,
    /// Internal: the file descriptor to tell the waiting parent the mount is up.
    #[arg(long, hide = true)]
    ready_fd: Option<i32>,
    /// REPO (one directory per archive) or REPO::ARCHIVE (that archive at the root).
    target: String,
    /// Where to mount.
    mountpoint: PathBuf,
}

/// `rempart-backup umount`.
#[derive(clap::Args, Debug)]
pub(crate) struct UmountArgs {
    /// A mount point of `rempart-backup mount`.
    mountpoint: PathBuf,
}

fn parse_options(list: &[String]) -> anyhow::Result<backupfs::MountOptions> {
    let mut o = backupfs::MountOptions::default();
    for opt in list.iter().flat_map(|s| s.split(',')).filter(|s| !s.is_empty()) {
        let (k, v) = opt.split_once('=').map_or((opt, None), |(k, v)| (k, Some(v)));
        let num = |v: Option<&str>| -> anyhow::Result<u64> {
            v.ok_or_else(|| anyhow!("-o {k} needs a value"))?.parse().with_context(|| format!("-o {opt}"))
        };
        match k {
            "allow_other" => o.allow_other = true,
            "allow_root" => o.allow_root = true,
            "numeric_ids" => o.numeric_ids = true,
            "cache_mb" => o.cache_bytes = num(v)?.saturating_mul(1 << 20),
            "threads" => o.threads = usize::try_from(num(v)?.clamp(1, 64)).unwrap_or(4),
            "ro" | "default_permissions" => {}
            "versions" => bail!("-o versions is not supported"),
            _ => bail!("unknown mount option {opt:?} (allow_other, allow_root, numeric_ids, cache_mb=N, threads=N)"),
        }
    }
    Ok(o)
}

pub(crate) fn mount(a: MountArgs) -> anyhow::Result<ExitCode> {
    let mut opts = parse_options(&a.options)?;
    if !a.mountpoint.is_dir() {
        bail!("{}: not a directory", a.mountpoint.display());
    }
    if !a.foreground {
        return daemonise();
    }
    let (repo_path, archive) = crate::split_target(Some(&a.target))?;
    let view = match archive {
        Some(name) => backupfs::View::Archive(name),
        None => backupfs::View::Repository,
    };
    opts.fsname = format!("rempart-backup:{}", a.target);
    let repo = crate::open(&repo_path)?;
    // signals go to the thread that unmounts (blocked here before any thread starts, so every
    // later thread inherits the mask)
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    let mut mounted = backupfs::mount(repo, &view, &a.mountpoint, &opts)?;
    let mut unmounter = mounted.unmounter();
    let mp = a.mountpoint.clone();
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::info!("{sig}: unmounting {}", mp.display());
            if let Err(e) = unmounter.unmount() {
                tracing::error!("unmounting {}: {e}", mp.display());
            }
        }
    })?;
    tracing::info!("mounted at {}", a.mountpoint.display());
    if let Some(fd) = a.ready_fd {
        // tell the parent, then leave its terminal and session
        std::fs::write(format!("/proc/self/fd/{fd}"), b"1").context("telling the parent the mount is up")?;
        let _ = nix::unistd::close(fd);
        let _ = nix::unistd::setsid();
        let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?;
        for n in 0..3 {
            nix::unistd::dup2(null.as_raw_fd(), n)?;
        }
    }
    mounted.serve()?;
    Ok(ExitCode::SUCCESS)
}

/// Starts this command again in the foreground and waits until its mount is up (or it failed).
fn daemonise() -> anyhow::Result<ExitCode> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    // the child inherits the write end only
    fcntl(w.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty()))?;
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    args.extend(["--foreground".into(), "--ready-fd".into(), w.as_raw_fd().to_string().into()]);
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args(&args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting the mount in the background")?;
    drop(w);
    let mut byte = [0u8; 1];
    let mut r = std::fs::File::from(r);
    loop {
        match r.read(&mut byte) {
            Ok(1) => return Ok(ExitCode::SUCCESS),
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("waiting for the mount"),
        }
    }
    // the child ended (or closed the pipe) without mounting: its error is on stderr
    let status = child.wait()?;
    Ok(ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).filter(|&c| c != 0).unwrap_or(crate::ERROR)))
}

pub(crate) fn umount(a: UmountArgs) -> anyhow::Result<ExitCode> {
    let status = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&a.mountpoint)
        .status()
        .context("running fusermount3 (Debian package fuse3)")?;
    if !status.success() {
        bail!("fusermount3 -u {} failed ({status})", a.mountpoint.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options() {
        let o = parse_options(&["allow_other,cache_mb=64".into(), "numeric_ids".into()]).unwrap();
        assert!(o.allow_other && o.numeric_ids && !o.allow_root);
        assert_eq!(o.cache_bytes, 64 << 20);
        assert_eq!(parse_options(&[]).unwrap().cache_bytes, backupfs::DEFAULT_CACHE_BYTES);
        assert!(parse_options(&["cache_mb".into()]).is_err());
        assert!(parse_options(&["cache_mb=x".into()]).is_err());
        assert!(parse_options(&["versions".into()]).is_err());
        assert!(parse_options(&["rw".into()]).is_err());
    }
}
