//! The one metrics stack: every engine registers its families into one
//! [`prometheus_client::registry::Registry`] owned by the binary (or by `rempart-node`, which
//! embeds several engines), and this module serves it over HTTP.
//!
//! ```text
//!  binary:  let mut reg = Registry::default();
//!           engine A ::start(.., &mut reg)   engine B ::start(.., &mut reg)   (families, collectors)
//!           tokio::spawn(metrics::serve(listener, Arc::new(reg)))
//!
//!  serve:   accept ──ok──► task: read the request head (≤ 8 KiB, ≤ READ_TIMEOUT)
//!             │                   ├─ GET /metrics, GET /  ─► 200 render(&reg)
//!             │                   ├─ other path            ─► 404
//!             │                   └─ other method / junk   ─► 400 / 405
//!             └─err──► warn (once per burst) + sleep ACCEPT_BACKOFF, then accept again
//! ```
//!
//! Why a small server of our own rather than a web framework: a scrape is one GET of one path;
//! what matters is that a slow or silent client cannot hold a task forever (the read has a
//! timeout, the request head a size limit), that a burst of connections under `EMFILE` does not
//! turn the accept loop into a busy spin (it backs off and says so once), and that every daemon
//! renders the same text the same way.
//!
//! The text is Prometheus' exposition format 0.0.4: prometheus-client writes OpenMetrics, whose
//! counter HELP/TYPE lines name the family without `_total` and which ends with `# EOF`;
//! [`render`] renames those lines to the sample name and drops `# EOF`, which every scraper and
//! `promtool check metrics` accept.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the accept loop sleeps after an accept error (e.g. `EMFILE`) before trying again.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Largest request head read; longer heads get `431`.
const MAX_HEAD: usize = 8192;

/// Renders the registry in the Prometheus text format (0.0.4).
#[must_use]
pub fn render(reg: &Registry) -> String {
    let mut s = String::new();
    // Writing into a String cannot fail; a collector that fails leaves what it wrote so far.
    let _ = prometheus_client::encoding::text::encode(&mut s, reg);
    let counters: std::collections::HashSet<&str> =
        s.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(s.len());
    for line in s.lines() {
        if line == "# EOF" {
            continue;
        }
        let mut fixed = None;
        for prefix in ["# HELP ", "# TYPE "] {
            if let Some(rest) = line.strip_prefix(prefix) {
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(name) {
                    fixed = Some(format!("{prefix}{name}_total{}", &rest[name.len()..]));
                }
            }
        }
        out.push_str(fixed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Serves `registry` on `listener` until the returned future is dropped (spawn it, abort the
/// task to stop). Each connection gets one response and is closed.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let mut failing = false;
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                failing = false;
                let registry = registry.clone();
                tokio::spawn(async move {
                    let _ = respond(sock, &registry).await;
                });
            }
            Err(e) => {
                if !failing {
                    tracing::warn!("metrics: accept failed: {e}; retrying every {ACCEPT_BACKOFF:?}");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn respond(mut sock: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        loop {
            let n = sock.read(&mut buf).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > MAX_HEAD {
                return Ok(true);
            }
        }
    })
    .await;
    let complete = match read {
        Ok(Ok(c)) => c,
        // Timed out or failed: close without a word.
        Ok(Err(_)) | Err(_) => return Ok(()),
    };
    if !complete && head.is_empty() {
        return Ok(());
    }
    let (status, body) = route(&head, registry);
    let content_type = if status == "200 OK" { CONTENT_TYPE } else { "text/plain; charset=utf-8" };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await?;
    sock.write_all(body.as_bytes()).await?;
    sock.shutdown().await
}

fn route(head: &[u8], registry: &Registry) -> (&'static str, String) {
    if head.len() > MAX_HEAD {
        return ("431 Request Header Fields Too Large", "request head too large\n".into());
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return ("400 Bad Request", "bad request\n".into());
    };
    if method != "GET" {
        return ("405 Method Not Allowed", "only GET\n".into());
    }
    let path = target.split('?').next().unwrap_or("");
    match path {
        "/metrics" | "/" => ("200 OK", render(registry)),
        _ => ("404 Not Found", "metrics are at /metrics\n".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;

    fn registry() -> Registry {
        let mut reg = Registry::default();
        let c: Counter = Counter::default();
        c.inc();
        reg.register("rempart_test_events", "Events seen", c);
        let g: Gauge = Gauge::default();
        g.set(7);
        reg.register("rempart_test_level", "A level", g);
        reg
    }

    #[test]
    fn render_names_counters_with_total_and_drops_eof() {
        let text = render(&registry());
        assert!(text.contains("# HELP rempart_test_events_total Events seen.\n"), "{text}");
        assert!(text.contains("# TYPE rempart_test_events_total counter\n"), "{text}");
        assert!(text.contains("rempart_test_events_total 1\n"), "{text}");
        assert!(text.contains("# TYPE rempart_test_level gauge\nrempart_test_level 7\n"), "{text}");
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn routes() {
        let reg = registry();
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n", &reg).0, "200 OK");
        assert_eq!(route(b"GET /?x=1 HTTP/1.0\r\n\r\n", &reg).0, "200 OK");
        assert_eq!(route(b"GET /other HTTP/1.1\r\n\r\n", &reg).0, "404 Not Found");
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n", &reg).0, "405 Method Not Allowed");
        assert_eq!(route(b"\r\n\r\n", &reg).0, "400 Bad Request");
        assert_eq!(route(&[b'a'; MAX_HEAD + 1], &reg).0, "431 Request Header Fields Too Large");
    }
}
