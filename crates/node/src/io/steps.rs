//! What each [`Step`] does on a real host: the replicated resources through their handles,
//! the file system (the kernel's NBD client, or nbdfuse and a loop device where the module is
//! missing), the services (systemd units or commands), the VIP through the VRRP engine.
//!
//! ```text
//!  up:    promote (each resource)  ⇒ attach + mount (each mount)  ⇒ start service i
//!         ⇒ health (every service's check, polled until it answers)  ⇒ allow the VIPs
//!  down:  VIPs off ⇒ stop service i ⇒ umount + detach ⇒ demote (drop openers first if forced)
//! ```
//!
//! Every down step is idempotent (a step that failed or timed out counts as done, and the
//! orchestrator runs the down order over it): stopping a stopped service, unmounting what is
//! not mounted and demoting a Secondary succeed. [`Executor::cleanup_leftovers`] runs the same
//! down steps at start-up, for what a killed daemon left behind.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use blockrepl::io::Handle as ReplHandle;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::config::{Mount, MountMethod, Service, ServiceKind};
use crate::orchestrator::{Step, StepFailure};

/// How often a health check is repeated until it answers.
const HEALTH_POLL: Duration = Duration::from_millis(100);

/// One attached volume (nbdfuse method).
#[derive(Debug)]
struct Attached {
    nbdfuse: Option<Child>,
    loop_dev: Option<String>,
}

/// Performs the steps of one host. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

/// What an [`Executor`] acts on: the engines and this host's part of the configuration.
#[derive(Debug)]
pub struct Parts {
    /// The VRRP engine.
    pub vrrp: vrrp::io::engine::Handle,
    /// Its instances (FAULT, priority and the VIP gate apply to each).
    pub instances: Vec<String>,
    /// The replicated resources, by name.
    pub resources: Vec<(String, ReplHandle)>,
    /// The resources served on a Unix socket rather than TCP, and the socket.
    pub nbd_sockets: Vec<(String, PathBuf)>,
    /// The file systems.
    pub mounts: Vec<Mount>,
    /// The services, in start order.
    pub services: Vec<Service>,
    /// Where nbdfuse's directories go.
    pub run_dir: PathBuf,
}

struct Inner {
    parts: Parts,
    attached: Mutex<Vec<Option<Attached>>>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor").field("instances", &self.inner.parts.instances).finish_non_exhaustive()
    }
}

fn fail(s: impl Into<String>) -> StepFailure {
    StepFailure::new(s)
}

impl Executor {
    /// An executor for these engines and this part of the configuration.
    #[must_use]
    pub fn new(parts: Parts) -> Self {
        let n = parts.mounts.len();
        Executor { inner: Arc::new(Inner { parts, attached: Mutex::new((0..n).map(|_| None).collect()) }) }
    }

    /// Runs one step to its end.
    pub async fn run(&self, step: Step) -> Result<(), StepFailure> {
        match step {
            Step::Quorum | Step::CancelBackup => Ok(()),
            Step::Promote => self.promote().await,
            Step::Mount => self.mount_all().await,
            Step::Start(i) => self.service(i, "start").await,
            Step::Health => self.health().await,
            Step::AllowVip => self.vips(true).await,
            Step::VipOff => self.vips(false).await,
            Step::Stop(i) => self.service(i, "stop").await,
            Step::Unmount => self.unmount_all().await,
            Step::Demote { kill_openers } => self.demote(kill_openers).await,
        }
    }

    async fn promote(&self) -> Result<(), StepFailure> {
        for (name, h) in &self.inner.parts.resources {
            h.promote(false).await.map_err(|e| fail(format!("{name}: {e}")))?;
        }
        Ok(())
    }

    async fn demote(&self, kill_openers: bool) -> Result<(), StepFailure> {
        let mut errors = Vec::new();
        for (name, h) in &self.inner.parts.resources {
            if kill_openers {
                h.drop_openers();
            }
            if let Err(e) = h.demote(kill_openers).await {
                errors.push(format!("{name}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(fail(errors.join("; ")))
        }
    }

    async fn vips(&self, allow: bool) -> Result<(), StepFailure> {
        for i in &self.inner.parts.instances {
            self.inner.parts.vrrp.allow_vips(i, allow).await.map_err(|e| fail(format!("vrrp_instance {i}: {e}")))?;
        }
        Ok(())
    }

    fn nbd_url(&self, resource: &str) -> Result<String, StepFailure> {
        let (_, h) = self
            .inner
            .parts
            .resources
            .iter()
            .find(|(n, _)| n == resource)
            .ok_or_else(|| fail(format!("mount: no resource {resource}")))?;
        if let Some(addr) = h.nbd_addr() {
            return Ok(format!("nbd://{addr}/{resource}"));
        }
        match self.inner.parts.nbd_sockets.iter().find(|(n, _)| n == resource) {
            Some((_, path)) => Ok(format!("nbd+unix:///{resource}?socket={}", path.display())),
            None => Err(fail(format!("{resource}: no NBD endpoint"))),
        }
    }

    fn fuse_dir(&self, i: usize) -> PathBuf {
        self.inner.parts.run_dir.join(format!("nbdfuse-{i}"))
    }

    async fn mount_all(&self) -> Result<(), StepFailure> {
        for i in 0..self.inner.parts.mounts.len() {
            self.mount(i).await?;
        }
        Ok(())
    }

    async fn mount(&self, i: usize) -> Result<(), StepFailure> {
        let m = &self.inner.parts.mounts[i];
        if is_mounted(&m.mount_point) {
            return Ok(());
        }
        std::fs::create_dir_all(&m.mount_point)
            .map_err(|e| fail(format!("creating {}: {e}", m.mount_point.display())))?;
        let url = self.nbd_url(&m.resource)?;
        let (device, attached) = match m.method {
            MountMethod::KernelNbd => {
                let dev = m.device.display().to_string();
                if let Some((_, sock)) = self.inner.parts.nbd_sockets.iter().find(|(n, _)| *n == m.resource) {
                    let sock = sock.display().to_string();
                    run(&["nbd-client", "-unix", &sock, &dev, "-N", &m.resource]).await?;
                } else {
                    let (host, port) = url
                        .trim_start_matches("nbd://")
                        .split('/')
                        .next()
                        .and_then(|hp| hp.rsplit_once(':'))
                        .map(|(h, p)| (h.to_owned(), p.to_owned()))
                        .ok_or_else(|| fail(format!("bad NBD address {url}")))?;
                    run(&["nbd-client", &host, &port, &dev, "-N", &m.resource]).await?;
                }
                (dev, Attached { nbdfuse: None, loop_dev: None })
            }
            MountMethod::Nbdfuse => {
                let dir = self.fuse_dir(i);
                if is_mounted(&dir) {
                    stop_fuse(&dir, None).await?;
                }
                std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
                let child = Command::new("nbdfuse")
                    .arg(&dir)
                    .arg(&url)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| fail(format!("nbdfuse: {e}")))?;
                let mut att = Attached { nbdfuse: Some(child), loop_dev: None };
                let file = dir.join("nbd");
                // nbdfuse mounts, then answers: the file has the volume's size once it is up.
                loop {
                    if std::fs::metadata(&file).map(|md| md.len() > 0).unwrap_or(false) {
                        break;
                    }
                    if let Some(c) = att.nbdfuse.as_mut() {
                        if let Ok(Some(st)) = c.try_wait() {
                            let mut err = String::new();
                            if let Some(mut e) = c.stderr.take() {
                                use tokio::io::AsyncReadExt;
                                let _ = e.read_to_string(&mut err).await;
                            }
                            return Err(fail(format!("nbdfuse {url} exited ({st}): {}", err.trim())));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let out = run(&["losetup", "--find", "--show", &file.display().to_string()]).await;
                match out {
                    Ok(dev) => {
                        let dev = dev.trim().to_owned();
                        att.loop_dev = Some(dev.clone());
                        (dev, att)
                    }
                    Err(e) => {
                        self.inner.attached.lock().await[i] = Some(att);
                        return Err(e);
                    }
                }
            }
        };
        self.inner.attached.lock().await[i] = Some(attached);
        let mp = m.mount_point.display().to_string();
        let mut argv = vec!["mount", "-t", &m.fs_type];
        let opts = m.options.join(",");
        if !opts.is_empty() {
            argv.extend(["-o", &opts]);
        }
        argv.extend([device.as_str(), mp.as_str()]);
        run(&argv).await.map(drop)
    }

    async fn unmount_all(&self) -> Result<(), StepFailure> {
        let mut errors = Vec::new();
        for i in (0..self.inner.parts.mounts.len()).rev() {
            if let Err(e) = self.unmount(i).await {
                errors.push(e.0);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(fail(errors.join("; ")))
        }
    }

    async fn unmount(&self, i: usize) -> Result<(), StepFailure> {
        let m = &self.inner.parts.mounts[i];
        if is_mounted(&m.mount_point) {
            run(&["umount", &m.mount_point.display().to_string()]).await?;
        }
        let att = self.inner.attached.lock().await[i].take();
        match m.method {
            MountMethod::KernelNbd => {
                if att.is_some() {
                    run(&["nbd-client", "-d", &m.device.display().to_string()]).await?;
                }
            }
            MountMethod::Nbdfuse => {
                let dir = self.fuse_dir(i);
                let mut att = att.unwrap_or(Attached { nbdfuse: None, loop_dev: None });
                let file = dir.join("nbd").display().to_string();
                // Loop devices on our file: the one we made, and any a killed predecessor left.
                let mut loops: Vec<String> = att.loop_dev.take().into_iter().collect();
                loops.extend(loops_backed_by(&file).await);
                loops.sort();
                loops.dedup();
                for l in loops {
                    run(&["losetup", "-d", &l]).await?;
                }
                stop_fuse(&dir, att.nbdfuse.take()).await?;
            }
        }
        // The client is gone (nbdfuse exited, or `nbd-client -d` returned); the resource sees
        // its connection close a moment later. Waiting for that (briefly) lets the demote go
        // through without killing openers, which it did in CI right after a clean unmount.
        if let Some((_, h)) = self.inner.parts.resources.iter().find(|(n, _)| *n == m.resource) {
            let until = tokio::time::Instant::now() + OPENERS_GONE;
            while h.open_clients() > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// A Primary without quorum holds its writes (suspend-io): a service blocked in one cannot
    /// stop, and the node is stepping down anyway. Those writes were never acknowledged, so
    /// demoting at once (their I/O fails) loses nothing and lets the down order run.
    fn fail_suspended_writes(&self) -> bool {
        let mut dropped = false;
        for (name, h) in &self.inner.parts.resources {
            let st = h.watch_status().borrow().clone();
            let q = &st.replica.quorum;
            if q.enabled && !q.held && st.replica.role == blockrepl::proto::Role::Primary && st.open_clients > 0 {
                warn!(resource = %name, suspended = q.suspended, "no quorum while stepping down: demoting now (the held writes fail) so that the services can stop");
                // The held writes are answered only by a role change: demote at once, as
                // drbd-reactor does on a quorum loss; the demote step later finds it done.
                h.drop_openers();
                let h = h.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    if let Err(e) = h.demote(true).await {
                        warn!(resource = %name, error = %e, "forced demote without quorum");
                    }
                });
                dropped = true;
            }
        }
        dropped
    }

    async fn service(&self, i: usize, what: &str) -> Result<(), StepFailure> {
        let s = self.inner.parts.services.get(i).ok_or_else(|| fail(format!("no service {i}")))?;
        if what == "stop" {
            // Quorum can go while the service stops (its last writes then hang): keep watching.
            let stop = self.service_cmd(s, what);
            tokio::pin!(stop);
            loop {
                if self.fail_suspended_writes() {
                    return stop.await;
                }
                tokio::select! {
                    r = &mut stop => return r,
                    () = tokio::time::sleep(HEALTH_POLL) => {}
                }
            }
        }
        self.service_cmd(s, what).await
    }

    async fn service_cmd(&self, s: &Service, what: &str) -> Result<(), StepFailure> {
        match &s.kind {
            ServiceKind::Unit(u) => run(&["systemctl", what, u]).await.map(drop),
            ServiceKind::Commands { start, stop, .. } => {
                let cmd = if what == "start" { start } else { stop };
                shell(cmd).await.map_err(|e| fail(format!("{}: {what}: {}", s.name, e.0)))
            }
        }
    }

    async fn health(&self) -> Result<(), StepFailure> {
        for s in &self.inner.parts.services {
            loop {
                let r = match &s.kind {
                    ServiceKind::Unit(u) => run(&["systemctl", "is-active", "--quiet", u]).await.map(drop),
                    ServiceKind::Commands { check: Some(c), .. } => shell(c).await,
                    ServiceKind::Commands { check: None, .. } => Ok(()),
                };
                match r {
                    Ok(()) => break,
                    Err(_) => tokio::time::sleep(HEALTH_POLL).await,
                }
            }
        }
        Ok(())
    }

    /// At start-up, before anything runs: takes down what a previous, killed daemon left
    /// behind on this host (services stopped in reverse, file systems unmounted, loop devices
    /// and nbdfuse detached). Returns what it did.
    pub async fn cleanup_leftovers(&self) -> Vec<String> {
        let mut done = Vec::new();
        let leftover = self.inner.parts.mounts.iter().enumerate().any(|(i, m)| {
            is_mounted(&m.mount_point) || (m.method == MountMethod::Nbdfuse && is_mounted(&self.fuse_dir(i)))
        });
        if !leftover {
            return done;
        }
        for i in (0..self.inner.parts.services.len()).rev() {
            match self.service(i, "stop").await {
                Ok(()) => done.push(format!("stopped {}", self.inner.parts.services[i].name)),
                Err(e) => warn!(error = %e.0, "clean-up: stopping a service"),
            }
        }
        for i in (0..self.inner.parts.mounts.len()).rev() {
            let mp = self.inner.parts.mounts[i].mount_point.clone();
            match self.unmount(i).await {
                Ok(()) => done.push(format!("unmounted {}", mp.display())),
                Err(e) => {
                    // What a killed daemon left is a file system on a volume that is gone:
                    // nothing can be flushed to it any more; detach it lazily.
                    warn!(error = %e.0, "clean-up: unmounting; detaching lazily");
                    if is_mounted(&mp) {
                        let _ = run(&["umount", "-l", &mp.display().to_string()]).await;
                    }
                    match self.unmount(i).await {
                        Ok(()) => done.push(format!("detached {} lazily", mp.display())),
                        Err(e) => warn!(error = %e.0, "clean-up: still mounted"),
                    }
                }
            }
        }
        done
    }
}

/// How long the unmount step waits for the resource to see its NBD client leave.
const OPENERS_GONE: Duration = Duration::from_secs(1);

/// Runs a program; its stdout on success, a failure naming it and its stderr otherwise.
async fn run(argv: &[&str]) -> Result<String, StepFailure> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| fail(format!("{}: {e}", argv[0])))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(fail(format!("`{}` failed ({}): {}", argv.join(" "), out.status, last_lines(&err))))
    }
}

/// Runs a command line with `sh -c`.
async fn shell(cmd: &str) -> Result<(), StepFailure> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| fail(format!("sh: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(format!("`{cmd}` failed ({}): {}", out.status, last_lines(&String::from_utf8_lossy(&out.stderr)))))
    }
}

fn last_lines(s: &str) -> String {
    let v: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    v[v.len().saturating_sub(3)..].join(" / ")
}

/// Whether `path` is a mount point now (from /proc/self/mountinfo).
#[must_use]
pub fn is_mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let want = want.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4).map(unescape).as_deref() == Some(&*want))
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

async fn loops_backed_by(file: &str) -> Vec<String> {
    match run(&["losetup", "--noheadings", "--output", "NAME", "--associated", file]).await {
        Ok(out) => out.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect(),
        Err(_) => Vec::new(),
    }
}

/// Unmounts the nbdfuse directory and ends nbdfuse. `losetup -d` lets go of the file
/// asynchronously, so the first `fusermount3 -u` may find it busy: retry for a while; then end
/// nbdfuse, and detach what is left lazily (a FUSE mount whose nbdfuse died with a killed
/// predecessor cannot be unmounted any other way).
async fn stop_fuse(dir: &Path, child: Option<Child>) -> Result<(), StepFailure> {
    let d = dir.display().to_string();
    for _ in 0..40 {
        if !is_mounted(dir) || run(&["fusermount3", "-u", &d]).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Some(mut c) = child {
        if tokio::time::timeout(Duration::from_secs(2), c.wait()).await.is_err() {
            let _ = c.kill().await;
        }
    }
    if is_mounted(dir) {
        warn!(dir = %d, "nbdfuse's mount did not go: detaching it lazily");
        run(&["fusermount3", "-u", "-z", &d]).await?;
    }
    info!(dir = %d, "nbdfuse detached");
    Ok(())
}
