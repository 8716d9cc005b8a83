//! A small HTTP/1.x server on tokio for `/metrics` and `/healthz`: one request per
//! connection (`Connection: close`), bounded concurrent connections (others are closed at
//! once), a read timeout for the request head and a write timeout for the answer, and a cap
//! on the request head's size, so a slow or abusive client cannot pin the service.

use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Concurrent connections served; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client gets to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client gets to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD: usize = 8192;

/// What the server answers with: the exposition text, rendered at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, render: Render) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            log::debug!("metrics: too many connections, closing one from {peer}");
            drop(stream);
            continue;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(stream, &render).await {
                log::debug!("metrics: {peer}: {e}");
            }
        });
    }
}

async fn handle(mut s: TcpStream, render: &Render) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        let mut chunk = [0u8; 1024];
        loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok::<bool, std::io::Error>(false);
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if buf.len() > MAX_HEAD {
                return Ok(false);
            }
        }
    })
    .await;
    let complete = matches!(head, Ok(Ok(true)));
    let (status, ctype, body) = if !complete {
        if buf.len() > MAX_HEAD {
            (
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n".to_string(),
            )
        } else {
            // Timed out or closed before a full request: nothing to answer.
            return Ok(());
        }
    } else {
        let line = String::from_utf8_lossy(&buf);
        let first = line.lines().next().unwrap_or("");
        let mut parts = first.split_whitespace();
        let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let path = target.split('?').next().unwrap_or("");
        match (method, path) {
            ("GET" | "HEAD", "/metrics") => ("200 OK", super::metrics::CONTENT_TYPE, render()),
            ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", "ok\n".to_string()),
            ("GET" | "HEAD", "/") => (
                "200 OK",
                "text/plain",
                "kvmtrace watch: /metrics (Prometheus), /healthz\n".to_string(),
            ),
            ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
            _ => (
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n".to_string(),
            ),
        }
    };
    let head_only = buf.starts_with(b"HEAD ");
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    match tokio::time::timeout(WRITE_TIMEOUT, async {
        s.write_all(&out).await?;
        s.shutdown().await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client too slow to read",
        )),
    }
}
