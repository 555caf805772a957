//! The node's control socket: `rempart-node status`, `switchover` and `maintenance` talk to the
//! running daemon through a Unix stream socket in its run directory (root only, mode 0600).
//!
//! One request line, one JSON answer line:
//!
//! | request | answer |
//! |---|---|
//! | `status` | the status document |
//! | `switchover` | `{"ok":true}` or `{"error":"…"}` |
//! | `maintenance on` / `maintenance off` | `{"ok":true}` or `{"error":"…"}` |

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::warn;

use super::daemon::Node;
use crate::orchestrator::Command;

/// The socket's file name in the run directory.
pub const SOCKET: &str = "node.sock";

/// Longest request line.
const MAX_LINE: usize = 256;

/// Binds the control socket at `path` (a stale socket file is replaced), mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves requests until the listener fails.
pub async fn serve(listener: UnixListener, node: Node) {
    loop {
        match listener.accept().await {
            Ok((s, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(s, node).await {
                        warn!(error = %e, "control socket");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "control socket: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(s: UnixStream, node: Node) -> std::io::Result<()> {
    let (r, mut w) = s.into_split();
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(5), BufReader::new(r.take(MAX_LINE as u64)).read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request"))??;
    let _ = n;
    let reply = match line.trim() {
        "status" => node.status().await.unwrap_or_else(|| json!({"error": "the node has stopped"})),
        "switchover" => result(node.command(Command::Switchover).await),
        "maintenance on" => result(node.command(Command::MaintenanceOn).await),
        "maintenance off" => result(node.command(Command::MaintenanceOff).await),
        other => json!({"error": format!("unknown request {other:?}")}),
    };
    let mut out = reply.to_string();
    out.push('\n');
    w.write_all(out.as_bytes()).await?;
    w.shutdown().await
}

fn result(r: Result<(), String>) -> Value {
    match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"error": e}),
    }
}

/// Sends one request to the daemon whose socket is `path` and returns its answer.
pub async fn request(path: &Path, req: &str) -> std::io::Result<Value> {
    let mut s = UnixStream::connect(path).await?;
    s.write_all(format!("{req}\n").as_bytes()).await?;
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), BufReader::new(s).read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer from the node"))??;
    serde_json::from_str(&line).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
