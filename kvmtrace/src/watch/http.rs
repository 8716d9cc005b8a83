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

/// Serves until the task is aborted. `health`: the `/healthz` text (`ok`, then anything the
/// operator should know, such as VMs that cannot be watched).
pub async fn serve(listener: TcpListener, render: Render, health: Render) {
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
        let health = health.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(stream, &render, &health).await {
                log::debug!("metrics: {peer}: {e}");
            }
        });
    }
}

async fn handle(mut s: TcpStream, render: &Render, health: &Render) -> std::io::Result<()> {
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
            ("GET" | "HEAD", "/healthz") => ("200 OK", "text/plain", health()),
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
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client too slow to read",
            ))
        }
    }
    // Whatever the client still sends (an oversized head) is read and dropped for a moment:
    // closing with unread input would reset the connection and lose the answer.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let mut sink = [0u8; 4096];
        let mut total = 0usize;
        while total < 64 * 1024 {
            match s.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};

    /// A server on a free localhost port, on a runtime of its own thread.
    fn server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                let render: Render = Arc::new(|| "# EOF\n".to_string());
                let health: Render = Arc::new(|| "ok\n".to_string());
                // Ends with the test process.
                serve(l, render, health).await;
            });
        });
        (rx.recv().unwrap(), h)
    }

    fn get(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        // The server may stop reading an oversized request; its answer still comes.
        let _ = s.write_all(req);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn answers_metrics_healthz_and_refuses_the_rest() {
        let (addr, _h) = server();
        let m = get(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(m.starts_with("HTTP/1.1 200 OK\r\n"), "{m}");
        assert!(
            m.contains("Content-Type: application/openmetrics-text"),
            "{m}"
        );
        assert!(m.ends_with("\r\n\r\n# EOF\n"), "{m}");
        assert!(get(addr, b"GET /healthz HTTP/1.0\r\n\r\n").ends_with("ok\n"));
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20000));
        assert!(get(addr, huge.as_bytes()).starts_with("HTTP/1.1 431"));
    }

    #[test]
    fn idle_clients_cannot_pin_the_server() {
        let (addr, _h) = server();
        // Every slot taken by a client that never sends a request.
        let idle: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // One more is closed at once, not left hanging.
        let t = std::time::Instant::now();
        let r = get(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(r.is_empty(), "{r}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // The idle ones time out and free their slots.
        std::thread::sleep(READ_TIMEOUT + Duration::from_millis(500));
        assert!(get(addr, b"GET /healthz HTTP/1.1\r\n\r\n").ends_with("ok\n"));
        drop(idle);
    }
}
