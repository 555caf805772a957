//! Notify scripts (`notify`, `notify_master`, …) and the track-script loops (`vrrp_script`).

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::actor::{Ev, Inst};
use super::EngineError;
use crate::config::{self, Script};
use crate::io::script::{self, RunAs};
use crate::proto::{Reason, State};

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Who runs notify scripts (keepalived: `script_user`), and the security setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NotifyEnv {
    pub(super) run_as: Option<RunAs>,
    pub(super) daemon_uid: u32,
    pub(super) security: bool,
}

impl NotifyEnv {
    pub(super) fn new(g: &config::Global) -> Result<NotifyEnv, EngineError> {
        Ok(NotifyEnv {
            run_as: script::default_run_as(g).map_err(|e| EngineError::Unsupported(format!("global_defs: {e}")))?,
            daemon_uid: nix::unistd::getuid().as_raw(),
            security: g.enable_script_security,
        })
    }
}

pub(super) fn notify(inst: &Inst, to: State, reason: Reason, env: NotifyEnv) {
    let stop = to == State::Initialize && reason == Reason::Shutdown;
    let specific = match to {
        State::Master => inst.cfg.notify_master.as_ref(),
        State::Backup => inst.cfg.notify_backup.as_ref(),
        State::Fault => inst.cfg.notify_fault.as_ref(),
        State::Initialize if stop => inst.cfg.notify_stop.as_ref(),
        State::Initialize => None,
    };
    let mut cmds: Vec<String> = specific.cloned().into_iter().collect();
    if let Some(n) = &inst.cfg.notify {
        let st = if stop { "STOP" } else { to.keepalived_name() };
        cmds.push(format!("{n} INSTANCE {} {st} {}", shell_quote(&inst.cfg.name), inst.m.effective_priority()));
    }
    for c in cmds {
        let name = inst.cfg.name.clone();
        if let Err(r) = script::check(&c, env.run_as, env.daemon_uid, env.security) {
            warn!(instance = %name, "notify {c:?} not run: {r}");
            continue;
        }
        // A plain child process, reaped by a small thread: it starts at once and survives our
        // exit, so notify_stop runs even though the daemon is going away.
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(&c).stdin(std::process::Stdio::null());
        if let Some(r) = env.run_as {
            use std::os::unix::process::CommandExt;
            cmd.uid(r.uid).gid(r.gid);
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = std::thread::Builder::new().name("vrrp-notify".into()).spawn(move || match child.wait() {
                    Ok(s) if s.success() => debug!(instance = %name, "notify {c:?}: ok"),
                    Ok(s) => warn!(instance = %name, "notify {c:?}: {s}"),
                    Err(e) => warn!(instance = %name, "notify {c:?}: {e}"),
                });
            }
            Err(e) => warn!(instance = %name, "notify {c:?}: {e}"),
        }
    }
}

pub(super) async fn script_loop(def: Script, run_as: Option<RunAs>, tx: mpsc::UnboundedSender<Ev>) {
    let timeout = def.timeout.unwrap_or(def.interval);
    let mut status: Option<bool> = None;
    let (mut ok_run, mut ko_run) = (0u32, 0u32);
    loop {
        let started = Instant::now();
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&def.script)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(r) = run_as {
            // std drops root's supplementary groups (setgroups(0)) before setgid/setuid.
            cmd.uid(r.uid).gid(r.gid);
        }
        let child = cmd.status();
        let ok = matches!(tokio::time::timeout(timeout, child).await, Ok(Ok(s)) if s.success());
        if ok {
            ok_run += 1;
            ko_run = 0;
        } else {
            ko_run += 1;
            ok_run = 0;
        }
        let new = if ok && ok_run >= def.rise && status != Some(true) {
            Some(true)
        } else if !ok && ko_run >= def.fall && status != Some(false) {
            Some(false)
        } else {
            None
        };
        if let Some(n) = new {
            status = Some(n);
            if tx.send(Ev::Script(def.name.clone(), n)).is_err() {
                return;
            }
        }
        tokio::time::sleep_until(started + def.interval).await;
    }
}
