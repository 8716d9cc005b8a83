//! `/metrics` and `/healthz` over HTTP/1 with hyper, on watch's tokio runtime.
//!
//! Issue 19: the hand-written server before this one took 16 connections, so any local process
//! holding 16 idle ones made every scrape fail until they timed out. Here:
//! - one request per connection (`Connection: close`): no idle keep-alive connection lingers;
//! - a request head must arrive within [`HEADER_TIMEOUT`] (hyper's `header_read_timeout`, whose
//!   clock starts when the connection is accepted, so a connection that never sends a byte is
//!   closed too), and be at most 8 KiB (else `431`);
//! - a connection lives at most [`CONNECTION_LIFETIME`] in all, so a client that never takes
//!   its answer does not hold its place for ever;
//! - at most [`MAX_CONNECTIONS`] connections at once (fewer when the open-files limit is low:
//!   [`connection_cap`]). A connection accepted past the cap closes the oldest connection that
//!   has not yet sent a complete request head, so idle or half-sent connections, however many,
//!   cannot keep a scrape out; only when every connection is busy answering is the new one
//!   closed at once.
//!
//! Issue 20: nothing but `/metrics` and `/healthz` is served. Another path is `404` whatever
//! the method; `/metrics` or `/healthz` with a method other than `GET` or `HEAD` is `405` with
//! `Allow: GET, HEAD`. The query string is ignored.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// Concurrent connections at most (when the open-files limit allows: [`connection_cap`]).
pub const MAX_CONNECTIONS: usize = 4096;
/// Time a client gets to send its request head, from the moment it is accepted.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a connection lives at most: its request head, then taking the answer.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(15);
/// Largest request head (request line and headers); a larger one is answered `431`.
const MAX_HEAD: usize = 8192;
/// Descriptors kept for everything else watch opens (eBPF links, programs and maps, one TC
/// link per tap and direction for up to 256 VMs, netlink sockets, the recorder's pipes).
const RESERVED_FDS: usize = 1024;

/// The listening socket's accept queue, clamped by the kernel to `net.core.somaxconn` (4096
/// since Linux 5.4). tokio's `TcpListener::bind` asks for 128: a burst of connections (1000
/// opened at once in the test) overflowed it while the accept loop caught up, and every SYN
/// dropped then, a scrape's included, waited a second for its retransmission.
pub const BACKLOG: u32 = 4096;

/// Binds the metrics address with a [`BACKLOG`]-long accept queue.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restart binds while the last run's connections linger in
    // TIME_WAIT (a second listener on the port is still refused).
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// What the server answers with: the exposition text, rendered at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The server's bounds. [`Limits::new`] gives watch's; tests shrink them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub lifetime: Duration,
}

impl Limits {
    /// watch's bounds for a process allowed `open_files` descriptors.
    pub fn new(open_files: u64) -> Limits {
        Limits {
            max_connections: connection_cap(open_files),
            header_timeout: HEADER_TIMEOUT,
            lifetime: CONNECTION_LIFETIME,
        }
    }
}

/// [`MAX_CONNECTIONS`], or fewer when the open-files limit would run out first: the limit
/// less [`RESERVED_FDS`], and never less than half of it (accepting past the limit would fail
/// with `EMFILE` and leave connections waiting in the kernel's backlog).
pub fn connection_cap(open_files: u64) -> usize {
    let files = usize::try_from(open_files).unwrap_or(usize::MAX);
    MAX_CONNECTIONS.min(files.saturating_sub(RESERVED_FDS).max(files / 2))
}

/// The connections open now, by the order they were accepted in.
#[derive(Default)]
struct Table {
    next: u64,
    conns: BTreeMap<u64, Conn>,
    /// Whether the cap was reached once (said once at warn level, then at debug).
    capped: bool,
}

struct Conn {
    abort: tokio::task::AbortHandle,
    /// Its request head arrived: it is being answered and is never the one closed.
    answering: bool,
}

type Shared = Arc<Mutex<Table>>;

fn lock(t: &Shared) -> std::sync::MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves until the task is aborted. `health`: the `/healthz` text (`ok`, then anything the
/// operator should know, such as VMs that cannot be watched).
pub async fn serve(listener: TcpListener, render: Render, health: Render, limits: Limits) {
    let table: Shared = Arc::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                log::debug!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut t = lock(&table);
        if t.conns.len() >= limits.max_connections {
            let oldest = t
                .conns
                .iter()
                .find(|(_, c)| !c.answering)
                .map(|(id, _)| *id);
            let first = !std::mem::replace(&mut t.capped, true);
            let level = if first {
                log::Level::Warn
            } else {
                log::Level::Debug
            };
            match oldest.and_then(|id| t.conns.remove(&id)) {
                Some(c) => {
                    // The task is cancelled when next polled: its socket closes then.
                    c.abort.abort();
                    log::log!(
                        level,
                        "metrics: {} connections open at once: closing the oldest one without a \
                         complete request for the one from {peer}",
                        limits.max_connections
                    );
                }
                None => {
                    log::log!(
                        level,
                        "metrics: {} connections open at once, all being answered: closing the \
                         one from {peer}",
                        limits.max_connections
                    );
                    continue;
                }
            }
        }
        let id = t.next;
        t.next += 1;
        // Spawned and entered under the lock, so its end (which removes the entry) comes
        // after the entry, whichever thread runs it.
        let task = tokio::spawn(connection(
            stream,
            id,
            table.clone(),
            render.clone(),
            health.clone(),
            limits,
        ));
        t.conns.insert(
            id,
            Conn {
                abort: task.abort_handle(),
                answering: false,
            },
        );
    }
}

/// Removes a connection from the table when its task ends, however it ends.
struct Entry {
    id: u64,
    table: Shared,
}

impl Drop for Entry {
    fn drop(&mut self) {
        lock(&self.table).conns.remove(&self.id);
    }
}

async fn connection(
    stream: TcpStream,
    id: u64,
    table: Shared,
    render: Render,
    health: Render,
    limits: Limits,
) {
    let entry = Entry { id, table };
    let peer = stream.peer_addr().ok();
    let service = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
        if let Some(c) = lock(&entry.table).conns.get_mut(&entry.id) {
            c.answering = true;
        }
        let resp = answer(req.method(), req.uri().path(), &render, &health);
        async move { Ok::<_, Infallible>(resp) }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(MAX_HEAD)
        .keep_alive(false)
        // The header names as the server before hyper wrote them (`Content-Type`).
        .title_case_headers(true);
    let conn = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.lifetime, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("metrics: {peer:?}: {e}"),
        Err(_) => log::debug!(
            "metrics: {peer:?}: closed after {:?} without being done",
            limits.lifetime
        ),
    }
}

/// The answer to `method path` (issue 20: only `/metrics` and `/healthz`).
fn answer(method: &Method, path: &str, render: &Render, health: &Render) -> Response<Full<Bytes>> {
    let page: Option<(&str, &Render)> = match path {
        "/metrics" => Some((super::metrics::CONTENT_TYPE, render)),
        "/healthz" => Some(("text/plain", health)),
        _ => None,
    };
    let (status, ctype, body) = match page {
        None => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: kvmtrace watch serves /metrics and /healthz\n".to_string(),
        ),
        Some((ctype, f)) if method == Method::GET || method == Method::HEAD => {
            (StatusCode::OK, ctype, f())
        }
        Some(_) => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed: GET or HEAD\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        h.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Write as _};
    use std::time::Instant;

    /// A server on a free localhost port, on a runtime of its own thread.
    fn server(limits: Limits) -> std::net::SocketAddr {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                let render: Render = Arc::new(|| "# EOF\n".to_string());
                let health: Render = Arc::new(|| "ok\n".to_string());
                // Ends with the test process.
                serve(l, render, health, limits).await;
            });
        });
        rx.recv().unwrap()
    }

    /// The whole answer to `req`, with the `Date` header's value blanked.
    fn ask(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        // The server may stop reading an oversized request; its answer still comes.
        let _ = s.write_all(req);
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.lines()
            .map(|l| {
                if l.starts_with("Date: ") {
                    "Date: -"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn answers_metrics_and_healthz_and_nothing_else() {
        let addr = server(Limits::new(65536));
        assert_eq!(
            ask(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            "HTTP/1.1 200 OK\nContent-Type: application/openmetrics-text; version=1.0.0; \
             charset=utf-8\nConnection: close\nContent-Length: 6\nDate: -\n\n# EOF"
        );
        assert_eq!(
            ask(addr, b"HEAD /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n"),
            "HTTP/1.1 200 OK\nContent-Type: application/openmetrics-text; version=1.0.0; \
             charset=utf-8\nConnection: close\nContent-Length: 6\nDate: -\n"
        );
        assert_eq!(
            ask(addr, b"GET /healthz HTTP/1.0\r\n\r\n"),
            "HTTP/1.0 200 OK\nContent-Type: text/plain\nConnection: close\nContent-Length: 3\n\
             Date: -\n\nok"
        );
        let not_found = "HTTP/1.1 404 Not Found\nContent-Type: text/plain\nConnection: close\n\
                         Content-Length: 55\nDate: -\n\n\
                         not found: kvmtrace watch serves /metrics and /healthz";
        for req in [
            "GET / HTTP/1.1",
            "GET /nope HTTP/1.1",
            "GET /metrics/ HTTP/1.1",
            "GET /metricsx HTTP/1.1",
            "POST /nope HTTP/1.1",
            "DELETE /healthz/x HTTP/1.1",
        ] {
            assert_eq!(ask(addr, format!("{req}\r\n\r\n").as_bytes()), not_found);
        }
        let not_allowed = "HTTP/1.1 405 Method Not Allowed\nContent-Type: text/plain\n\
                           Connection: close\nAllow: GET, HEAD\nContent-Length: 32\nDate: -\n\n\
                           method not allowed: GET or HEAD";
        for req in [
            "POST /metrics HTTP/1.1\r\nContent-Length: 0",
            "PUT /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
            "DELETE /metrics HTTP/1.1",
            "OPTIONS /healthz HTTP/1.1",
            "POST /healthz HTTP/1.1",
        ] {
            assert_eq!(ask(addr, format!("{req}\r\n\r\n").as_bytes()), not_allowed);
        }
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20000));
        let r = ask(addr, huge.as_bytes());
        assert!(
            r.starts_with("HTTP/1.1 431 Request Header Fields Too Large\n"),
            "{r}"
        );
    }

    /// Past the cap, the oldest connection without a request goes, not the new one: idle
    /// clients cannot keep a scrape out. Then the header timeout closes the others.
    #[test]
    fn idle_clients_cannot_keep_a_scrape_out() {
        let limits = Limits {
            max_connections: 8,
            header_timeout: Duration::from_secs(2),
            lifetime: Duration::from_secs(15),
        };
        let addr = server(limits);
        let mut idle: Vec<std::net::TcpStream> = (0..8)
            .map(|i| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                if i % 2 == 1 {
                    s.write_all(b"GET /metr").unwrap();
                }
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        let r = ask(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.1 200 OK\n") && r.ends_with("\n\nok"),
            "{r}"
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        // The first one was closed for it; the others are still open.
        let open = |s: &mut std::net::TcpStream| {
            s.set_nonblocking(true).unwrap();
            let mut b = [0u8; 16];
            let r = s.read(&mut b);
            matches!(r, Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
        };
        let states: Vec<bool> = idle.iter_mut().map(open).collect();
        assert_eq!(states, [false, true, true, true, true, true, true, true]);
        // Every one of them is closed once its time to send a head is over.
        std::thread::sleep(limits.header_timeout + Duration::from_millis(500));
        let states: Vec<bool> = idle.iter_mut().map(open).collect();
        assert_eq!(states, [false; 8]);
    }

    /// SO_REUSEADDR lets a restart bind past TIME_WAIT, never beside a running watch.
    #[test]
    fn a_port_in_use_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let e = bind(first.local_addr().unwrap()).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        });
    }

    #[test]
    fn the_cap_follows_the_open_files_limit() {
        assert_eq!(connection_cap(65536), 4096);
        assert_eq!(connection_cap(20000), 4096);
        assert_eq!(connection_cap(4096), 3072);
        assert_eq!(connection_cap(1024), 512);
        assert_eq!(connection_cap(u64::MAX), 4096);
    }
}
