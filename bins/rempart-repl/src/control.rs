//! The control socket: one command line per connection, answered by `ok` or `error: …` on the
//! first line, then the output. What `rempart-repl status|primary|…` talks to.

use blockrepl::io::{status_json, status_text, Admin, Handle};
use tokio::io::AsyncWriteExt;

/// Serves `listener` until the task is aborted.
pub(crate) async fn serve(listener: tokio::net::UnixListener, handle: Handle, name: String) {
    loop {
        let sock = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: do not spin.
                tracing::debug!(error = %e, "control accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = sock.into_split();
            let mut line = String::new();
            let mut rd = tokio::io::BufReader::new(rd);
            let read = tokio::io::AsyncBufReadExt::read_line(&mut rd, &mut line);
            match tokio::time::timeout(std::time::Duration::from_secs(10), read).await {
                Ok(Ok(_)) => {}
                _ => return,
            }
            let text = match command(&handle, &name, line.trim()).await {
                Ok(out) => format!("ok\n{out}"),
                Err(e) => format!("error: {e}\n"),
            };
            let _ = wr.write_all(text.as_bytes()).await;
            let _ = wr.shutdown().await;
        });
    }
}

async fn command(handle: &Handle, name: &str, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let admin = |c| async move { handle.admin(c).await.map(|()| String::new()).map_err(|e| e.to_string()) };
    match words.as_slice() {
        ["status"] => handle.status().await.map(|s| status_text(name, &s)).ok_or_else(|| "stopped".into()),
        ["status", "--json"] => {
            handle.status().await.map(|s| status_json(name, &s) + "\n").ok_or_else(|| "stopped".into())
        }
        ["primary"] => admin(Admin::Primary { force: false }).await,
        ["primary", "--force"] => admin(Admin::Primary { force: true }).await,
        ["secondary"] => admin(Admin::Secondary { force: false }).await,
        ["secondary", "--force"] => admin(Admin::Secondary { force: true }).await,
        ["connect"] => admin(Admin::Connect { discard_my_data: false }).await,
        ["connect", "--discard-my-data"] => admin(Admin::Connect { discard_my_data: true }).await,
        ["disconnect"] => admin(Admin::Disconnect).await,
        ["verify"] => admin(Admin::Verify).await,
        ["invalidate"] => admin(Admin::Invalidate).await,
        _ => Err(format!("unknown command {line:?}")),
    }
}
