//! A private OpenSSH server on 127.0.0.1 for the runner tests, with forced commands
//! (`command="rempart-backup serve --restrict-to-path …",restrict`), killed with every session
//! it spawned on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_rempart-backup");

pub(crate) struct Sshd {
    child: Child,
    pub(crate) port: u16,
    pub(crate) base: PathBuf,
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    for k in kids.split_whitespace().filter_map(|k| k.parse::<u32>().ok()) {
        out.extend(descendants(k));
        out.push(k);
    }
    out
}

pub(crate) fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
}

impl Sshd {
    /// Starts sshd with two client keys whose forced command serves `base/srv`: `plain`, and
    /// `ao` (`--append-only`).
    pub(crate) fn start(base: &Path) -> Sshd {
        std::fs::create_dir_all("/run/sshd").unwrap();
        std::fs::create_dir_all(base.join("srv")).unwrap();
        for k in ["hostkey", "plain", "ao"] {
            sh(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(base.join(k)));
        }
        let mut auth = String::new();
        for (k, extra) in [("plain", ""), ("ao", " --append-only")] {
            let pubkey = std::fs::read_to_string(base.join(format!("{k}.pub"))).unwrap();
            auth.push_str(&format!(
                "command=\"{BIN} serve --restrict-to-path {}{extra}\",restrict {}\n",
                base.join("srv").display(),
                pubkey.trim()
            ));
        }
        std::fs::write(base.join("authorized_keys"), auth).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\nPidFile none\n\
             LogLevel ERROR\n",
            base.join("hostkey").display(),
            base.join("authorized_keys").display()
        );
        std::fs::write(base.join("sshd_config"), cfg).unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(base.join("sshd_config"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let d = Sshd { child, port, base: base.to_path_buf() };
        rempart_testkit::wait::until(Duration::from_secs(10), "sshd listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        })
        .unwrap();
        d
    }

    pub(crate) fn rsh(&self) -> String {
        self.rsh_with("plain")
    }

    pub(crate) fn rsh_with(&self, key: &str) -> String {
        format!(
            "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
            self.base.join(key).display()
        )
    }

    pub(crate) fn url(&self, repo: &str) -> String {
        format!("ssh://root@127.0.0.1:{}{}/{repo}", self.port, self.base.join("srv").display())
    }

    /// Kills every running ssh session (not the listener); returns how many processes.
    #[allow(dead_code)] // tests/ssh.rs only
    pub(crate) fn kill_sessions(&self) -> usize {
        let d = descendants(self.child.id());
        for &p in &d {
            kill(p);
        }
        d.len()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        for p in descendants(self.child.id()) {
            kill(p);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs with a deadline (a protocol hang must fail the test, not stall CI): on timeout the
/// command and its ssh are killed by pid and the test panics.
pub(crate) fn output(mut c: Command) -> Output {
    let dbg = format!("{c:?}");
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut so, &mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut se, &mut v);
        v
    });
    let done = rempart_testkit::wait::until(Duration::from_secs(120), "the command to finish", || {
        child.try_wait().unwrap().is_some()
    });
    if done.is_err() {
        for p in descendants(child.id()) {
            kill(p);
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("{dbg}: still running after 120 s (killed)");
    }
    let status = child.wait().unwrap();
    Output { status, stdout: to.join().unwrap(), stderr: te.join().unwrap() }
}
