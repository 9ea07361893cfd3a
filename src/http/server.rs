//! One client connection on hyper: HTTP/2 (h2c, prior knowledge) or HTTP/1.x.
//!
//! An HTTP/1 connection is served by a hyper connection while it is busy. Once it has
//! been idle for [`IDLE_RELEASE`] (no request in progress, everything written, nothing
//! read since the last request began), levee takes the socket back from hyper with
//! the bytes hyper had read ahead, and waits for the next request holding no buffer:
//! hyper keeps an 8 KiB read buffer per connection, which is most of what 10,000 idle
//! keep-alive connections would cost. The next bytes get a new hyper connection. The
//! wait between requests is bounded by `client_idle`, each request head by
//! `client_header` (hyper's header timeout), each stalled write by `write`.
//!
//! An accepted upgrade (101) ends the hyper connection the same way; the socket and
//! the backend's upgraded connection are then spliced until either side closes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::forward::{self, Conn, Proxy, Tunnel};
use super::io::{ClientIo, ConnShared};
use crate::config::{Timeouts, MAX_HEADER_FIELDS};

/// How long an HTTP/1 connection stays idle with its hyper connection (and buffers)
/// before levee takes it back to wait for the next request without them.
pub const IDLE_RELEASE: Duration = Duration::from_millis(100);

/// The first bytes of an HTTP/2 connection (prior knowledge, h2c).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say.
enum Opening {
    H2,
    H1,
    /// Nothing arrived within the header timeout, or the client left.
    Silent,
}

/// Waits for the first bytes of a connection, peeking without consuming them: enough
/// to tell the HTTP/2 preface from HTTP/1.x.
async fn opening(tcp: &TcpStream, header_timeout: Duration) -> Opening {
    let deadline = tokio::time::Instant::now() + header_timeout;
    let mut buf = [0u8; H2_PREFACE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Opening::Silent,
        };
        if buf[..n] != H2_PREFACE[..n] {
            return Opening::H1;
        }
        if n == H2_PREFACE.len() {
            return Opening::H2;
        }
        // Part of the preface so far (rare): give the rest a moment.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The settings a connection is served with, read from the snapshot at accept.
#[derive(Clone, Copy)]
pub struct Settings {
    pub timeouts: Timeouts,
    pub max_header_bytes: usize,
}

/// Serves one client connection until it closes, idles out, or `shutdown` turns true
/// (then the request in progress finishes and the connection closes).
pub async fn serve_connection(
    proxy: Arc<Proxy>,
    tcp: TcpStream,
    peer: SocketAddr,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) {
    let shared = Arc::new(ConnShared::default());
    let conn = Arc::new(Conn {
        peer,
        shared: shared.clone(),
        scheme: "http",
        upgrade: parking_lot::Mutex::new(None),
    });
    match opening(&tcp, settings.timeouts.client_header).await {
        Opening::Silent => {}
        Opening::H2 => serve_h2(proxy, conn, tcp, settings, shutdown).await,
        Opening::H1 => serve_h1(proxy, conn, tcp, settings, shutdown).await,
    }
}

async fn serve_h1(
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    tcp: TcpStream,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    let t = settings.timeouts;
    let shared = conn.shared.clone();
    let mut io = ClientIo::new(tcp, t.write, shared.clone());
    io.scan_framing();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(t.client_header)
        .max_buf_size(settings.max_header_bytes.max(8192))
        .max_header_size(settings.max_header_bytes)
        .max_headers(MAX_HEADER_FIELDS)
        .half_close(false);
    let mut first = true;
    loop {
        if !first && !io.has_unread() {
            // Between requests: no buffer held, only the socket.
            tokio::select! {
                ready = tokio::time::timeout(t.client_idle, io.tcp().readable()) => {
                    if !matches!(ready, Ok(Ok(()))) {
                        return;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
        first = false;
        if *shutdown.borrow() {
            return;
        }
        let svc = {
            let proxy = proxy.clone();
            let conn = conn.clone();
            service_fn(move |req| Box::pin(forward::serve(proxy.clone(), conn.clone(), req)))
        };
        let mut hc = builder.serve_connection(TokioIo::new(io), svc);
        let mut released = false;
        let mut closing = false;
        let result = loop {
            tokio::select! {
                r = std::future::poll_fn(|cx| hc.poll_without_shutdown(cx)) => break r,
                _ = tokio::time::sleep(IDLE_RELEASE), if !closing => {
                    let idle = shared.active.load(Ordering::Acquire) == 0
                        && !shared.unflushed.load(Ordering::Relaxed)
                        && !shared.read_since_request.load(Ordering::Relaxed);
                    if idle {
                        std::pin::Pin::new(&mut hc).graceful_shutdown();
                        released = true;
                        closing = true;
                    }
                }
                _ = shutdown.changed(), if !closing => {
                    std::pin::Pin::new(&mut hc).graceful_shutdown();
                    closing = true;
                }
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %conn.peer, error = %e, "client connection ended");
            return;
        }
        let parts = hc.into_parts();
        let mut next = parts.io.into_inner();
        let tunnel = conn.upgrade.lock().take();
        if let Some(tunnel) = tunnel {
            next.stop_scan();
            next.unread(parts.read_buf);
            splice(next, tunnel).await;
            return;
        }
        if !released || *shutdown.borrow() {
            return;
        }
        next.unread(parts.read_buf);
        io = next;
    }
}

/// Copies between the client and the backend's upgraded connection until either ends;
/// the slot is held until then.
async fn splice(mut client: ClientIo, tunnel: Tunnel) {
    let Tunnel {
        backend,
        mut exchange,
    } = tunnel;
    match backend.await {
        Ok(upgraded) => {
            let mut backend = TokioIo::new(upgraded);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
            exchange.finish(None);
        }
        Err(e) => {
            tracing::debug!(error = %e, "backend upgrade failed");
            exchange.finish(Some(crate::error::Failure::UpstreamError));
        }
    }
}

async fn serve_h2(
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    tcp: TcpStream,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    let t = settings.timeouts;
    let shared = conn.shared.clone();
    let io = ClientIo::new(tcp, t.write, shared.clone());
    let svc = {
        let conn = conn.clone();
        service_fn(move |req| forward::serve(proxy.clone(), conn.clone(), req))
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes as u32);
    let hc = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(hc);
    let mut closing = false;
    let mut seen = 0;
    loop {
        tokio::select! {
            r = hc.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(peer = %conn.peer, error = %e, "h2 client connection ended");
                }
                return;
            }
            _ = tokio::time::sleep(t.client_idle), if !closing => {
                // Idle for `client_idle`: no request in progress and none started.
                let started = shared.requests.load(Ordering::Relaxed);
                if shared.active.load(Ordering::Acquire) == 0 && started == seen {
                    hc.as_mut().graceful_shutdown();
                    closing = true;
                }
                seen = started;
            }
            _ = shutdown.changed(), if !closing => {
                hc.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
