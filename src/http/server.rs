//! One client connection on hyper: HTTP/2 (h2c, prior knowledge; h2 by ALPN on TLS) or
//! HTTP/1.x, over plain TCP or a TLS session ([`Accepted`]).
//!
//! An HTTP/1 connection is served by a hyper connection while it is busy. Once it has
//! been idle for [`IDLE_RELEASE`] (no request in progress, everything written, nothing
//! read since the last request began), levee takes the socket back from hyper with
//! the bytes hyper had read ahead, and waits for the next request holding no buffer:
//! hyper keeps an 8 KiB read buffer per connection, which is most of what 10,000 idle
//! keep-alive connections would cost. The next bytes get a new hyper connection. The
//! wait between requests is bounded by `client_idle`, each request head by
//! `client_header` (checked on the busy period's tick), each stalled write by `write`.
//!
//! An accepted upgrade (101) ends the hyper connection the same way; the socket and
//! the backend's upgraded connection are then spliced until either side closes.
//!
//! TLS connections are served the same way once their handshake is done (bounded by
//! `client_header`): the socket hyper gets is the TLS session, and an idle one is taken
//! back from hyper like a plain one. The session itself stays (rustls keeps its keys
//! and a 4 KiB read buffer per connection), so an idle TLS connection costs more than
//! a plain one; hyper's buffers are released all the same.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::forward::{self, Conn, Proxy, Tunnel};
use super::io::{ClientIo, ClientStream, ConnShared};
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

/// The settings a connection is served with, read from the snapshot at accept. Only
/// what the connection's driver uses (each request reads the rest from the snapshot
/// in force): it is stored in every connection's task.
#[derive(Clone, Copy)]
pub struct Settings {
    pub client_header: Duration,
    pub client_idle: Duration,
    pub write: Duration,
    pub max_header_bytes: u32,
}

impl Settings {
    pub fn new(timeouts: &Timeouts, max_header_bytes: usize) -> Settings {
        Settings {
            client_header: timeouts.client_header,
            client_idle: timeouts.client_idle,
            write: timeouts.write,
            max_header_bytes: u32::try_from(max_header_bytes).unwrap_or(u32::MAX),
        }
    }
}

/// A connection as the accept loop hands it over.
pub enum Accepted {
    Plain(TcpStream),
    /// The TLS handshake is still to run, with these settings and certificates.
    Tls(TcpStream, Arc<crate::tls::Acceptor>),
}

/// Serves one client connection until it closes, idles out, or `shutdown` turns true
/// (then the request in progress finishes and the connection closes). `guard` is held
/// until then (the accept loop's count of open connections).
///
/// This future is what a connection costs while it waits between requests, so it
/// holds little: the opening, the hyper connection of a busy period and HTTP/2 are
/// boxed, and the HTTP/1 loop is inline rather than a nested `async fn` whose
/// arguments would be stored twice.
pub async fn serve_connection(
    proxy: Arc<Proxy>,
    accepted: Accepted,
    peer: SocketAddr,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
    guard: impl Send,
) {
    let _guard = guard;
    let (stream, h2) = match accepted {
        Accepted::Plain(tcp) => match Box::pin(opening(&tcp, settings.client_header)).await {
            Opening::Silent => return,
            Opening::H2 => (ClientStream::Plain(tcp), true),
            Opening::H1 => (ClientStream::Plain(tcp), false),
        },
        Accepted::Tls(tcp, acceptor) => {
            let handshake =
                crate::tls::handshake::accept(&acceptor, tcp, peer, settings.client_header);
            let Some(tls) = Box::pin(handshake).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            (ClientStream::Tls(Box::new(tls)), h2)
        }
    };
    let tls = matches!(stream, ClientStream::Tls(_));
    let scheme = if tls { "https" } else { "http" };
    let conn = Arc::new(Conn::new(
        peer,
        Arc::new(ConnShared::default()),
        scheme,
        !h2,
    ));
    if h2 {
        return Box::pin(serve_h2(proxy, conn, stream, settings, shutdown)).await;
    }
    let mut io = ClientIo::new(stream, settings.write, conn.shared.clone());
    io.scan_framing();
    if tls {
        // A TLS session cannot be peeked for the first bytes: the first head is taken
        // as begun now, so the busy period bounds it by `client_header` as the opening
        // wait does on a plain connection.
        conn.shared
            .read_since_request
            .store(true, Ordering::Relaxed);
    }
    let mut first = true;
    loop {
        if !first && !io.has_unread() {
            // Between requests: no buffer held, only the socket. Its readiness is
            // polled directly (a `readable()` future would add its waiter here).
            let idle = tokio::time::sleep(settings.client_idle);
            let changed = shutdown.changed();
            tokio::pin!(idle, changed);
            let next_request = std::future::poll_fn(|cx| {
                if let Poll::Ready(ready) = io.tcp().poll_read_ready(cx) {
                    return Poll::Ready(ready.is_ok());
                }
                if idle.as_mut().poll(cx).is_ready() || changed.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                Poll::Pending
            })
            .await;
            if !next_request {
                return;
            }
        }
        // Shutting down: a connection accepted before the listeners stopped still gets
        // its first request answered (with `Connection: close`), never a reset; a
        // kept-alive one that is between requests is closed.
        if !first && *shutdown.borrow() {
            return;
        }
        first = false;
        match Box::pin(busy(&settings, io, &proxy, &conn, &mut shutdown)).await {
            Busy::Released(next) => io = next,
            Busy::Upgraded(next, tunnel) => return Box::pin(splice(next, tunnel)).await,
            Busy::Closed => return,
        }
    }
}

/// The HTTP/1 server settings of a busy period; `keep_alive` false answers with
/// `Connection: close` and ends the connection after the response.
fn h1_builder(settings: &Settings, keep_alive: bool) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    // hyper's header timeout stays: without it, under descriptor exhaustion clients
    // were left unanswered (tests/resources.rs); the busy period's tick
    // ([`HeadWatch`]) bounds heads as well.
    builder
        .keep_alive(keep_alive)
        .timer(TokioTimer::new())
        .header_read_timeout(settings.client_header)
        .max_buf_size((settings.max_header_bytes as usize).max(8192))
        .max_header_size(settings.max_header_bytes as usize)
        .max_headers(MAX_HEADER_FIELDS)
        .half_close(false);
    builder
}

/// How a busy period of an HTTP/1 connection ended.
enum Busy {
    /// Idle for [`IDLE_RELEASE`]: the socket is back, with what hyper read ahead.
    Released(ClientIo),
    /// An accepted upgrade: the socket and the backend's side, to splice.
    Upgraded(ClientIo, Tunnel),
    /// The client left, an error ended the connection, or levee is shutting down.
    Closed,
}

/// Serves requests on `io` with a hyper connection until it goes idle, upgrades or
/// ends.
async fn busy(
    settings: &Settings,
    io: ClientIo,
    proxy: &Arc<Proxy>,
    conn: &Arc<Conn>,
    shutdown: &mut watch::Receiver<bool>,
) -> Busy {
    let shared = &conn.shared;
    let svc = {
        let proxy = proxy.clone();
        let conn = conn.clone();
        service_fn(move |req| Box::pin(forward::serve(proxy.clone(), conn.clone(), req)))
    };
    // Already shutting down: hyper ends the connection after this response, so the
    // shutdown check below (which would end it before its request is read) is off.
    let keep_alive = !*shutdown.borrow_and_update();
    let mut hc = h1_builder(settings, keep_alive).serve_connection(TokioIo::new(io), svc);
    let mut released = false;
    let mut closing = !keep_alive;
    let mut head = HeadWatch::default();
    // The connection is polled first and alone on most wake-ups; the tick (and with it
    // the head bound, the idle release and the shutdown check) comes every
    // `IDLE_RELEASE`, so a busy period costs one timer, not one per request.
    let result = loop {
        tokio::select! {
            biased;
            r = std::future::poll_fn(|cx| hc.poll_without_shutdown(cx)) => break r,
            _ = tokio::time::sleep(IDLE_RELEASE) => {
                if head.overdue(shared, settings.client_header) {
                    tracing::debug!(peer = %conn.peer, "request header not complete within client_header");
                    return Busy::Closed;
                }
                if closing {
                    continue;
                }
                // Shutting down: the request in progress finishes, then the connection
                // closes.
                let stop = *shutdown.borrow();
                let idle = shared.active.load(Ordering::Acquire) == 0
                    && !shared.unflushed.load(Ordering::Relaxed)
                    && !shared.read_since_request.load(Ordering::Relaxed);
                if stop || idle {
                    std::pin::Pin::new(&mut hc).graceful_shutdown();
                    released = idle;
                    closing = true;
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(peer = %conn.peer, error = %e, "client connection ended");
        return Busy::Closed;
    }
    let parts = hc.into_parts();
    let mut next = parts.io.into_inner();
    let tunnel = conn.upgrade.lock().take();
    if let Some(tunnel) = tunnel {
        next.stop_scan();
        next.unread(parts.read_buf);
        return Busy::Upgraded(next, tunnel);
    }
    if !released || *shutdown.borrow() {
        return Busy::Closed;
    }
    next.unread(detach(parts.read_buf));
    Busy::Released(next)
}

/// Bounds each request head by `client_header`, checked every [`IDLE_RELEASE`] of a
/// busy period: a head is in progress while bytes have come from the client since the
/// last request began and no request is in progress (its head is not complete). One
/// seen in progress, with no request begun since, for `client_header` is overdue: the
/// connection closes (slowloris), within `client_header` plus two ticks. hyper's own
/// header timeout would do the same with a timer armed for every request.
#[derive(Default)]
struct HeadWatch {
    /// Since when, and at which request count, a head was first seen in progress.
    seen: Option<(Instant, u64)>,
}

impl HeadWatch {
    fn overdue(&mut self, shared: &ConnShared, limit: Duration) -> bool {
        let in_progress = shared.read_since_request.load(Ordering::Relaxed)
            && shared.active.load(Ordering::Acquire) == 0;
        if !in_progress {
            self.seen = None;
            return false;
        }
        let requests = shared.requests.load(Ordering::Relaxed);
        match self.seen {
            Some((since, at)) if at == requests => since.elapsed() >= limit,
            _ => {
                self.seen = Some((Instant::now(), requests));
                false
            }
        }
    }
}

/// The bytes hyper read ahead, without hyper's read buffer: the `Bytes` it hands back
/// shares that buffer's whole allocation (8 KiB or more) even when it is empty, and an
/// idle connection must not keep it.
fn detach(read_ahead: bytes::Bytes) -> bytes::Bytes {
    if read_ahead.is_empty() {
        bytes::Bytes::new()
    } else {
        bytes::Bytes::copy_from_slice(&read_ahead)
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
    stream: ClientStream,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = conn.shared.clone();
    let io = ClientIo::new(stream, settings.write, shared.clone());
    let svc = {
        let conn = conn.clone();
        service_fn(move |req| forward::serve(proxy.clone(), conn.clone(), req))
    };
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes);
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
            _ = tokio::time::sleep(settings.client_idle), if !closing => {
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
