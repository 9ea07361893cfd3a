//! One client connection: the opening (the HTTP/2 preface, or the TLS handshake and
//! its ALPN), then HTTP/1.x on levee's own codec ([`crate::http1::conn`]) or HTTP/2 on
//! hyper (h2c with prior knowledge; h2 by ALPN on TLS), over plain TCP or a TLS
//! session ([`Accepted`]).
//!
//! An accepted HTTP/1 upgrade (101) makes the connection a tunnel: the socket and the
//! backend's upgraded connection are spliced ([`splice`]) until either side closes.
//!
//! TLS connections are served the same way once their handshake is done (bounded by
//! `client_header`). The session itself stays while the connection is idle (rustls
//! keeps its keys and a 4 KiB read buffer per connection), so an idle TLS connection
//! costs more than a plain one; levee's own buffers are released all the same.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::forward::{self, Conn, Proxy, Tunnel};
use super::io::{ClientIo, ClientStream, ConnShared};
use crate::config::Timeouts;

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
/// in force): it is stored in every connection's task, so its durations are kept as
/// milliseconds in 32 bits (a longer one, past 49 days, is cut to that).
#[derive(Clone, Copy)]
pub struct Settings {
    client_header_ms: u32,
    client_idle_ms: u32,
    write_ms: u32,
    pub max_header_bytes: u32,
}

impl Settings {
    pub fn new(timeouts: &Timeouts, max_header_bytes: usize) -> Settings {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        Settings {
            client_header_ms: ms(timeouts.client_header),
            client_idle_ms: ms(timeouts.client_idle),
            write_ms: ms(timeouts.write),
            max_header_bytes: u32::try_from(max_header_bytes).unwrap_or(u32::MAX),
        }
    }

    /// The longest wait for a request's head once its first byte came.
    pub fn client_header(&self) -> Duration {
        Duration::from_millis(self.client_header_ms.into())
    }

    /// The longest wait for the next request on a keep-alive connection.
    pub fn client_idle(&self) -> Duration {
        Duration::from_millis(self.client_idle_ms.into())
    }

    /// The longest a write to the client may make no progress.
    pub fn write(&self) -> Duration {
        Duration::from_millis(self.write_ms.into())
    }
}

/// A connection as the accept loop hands it over.
pub enum Accepted {
    Plain(TcpStream),
    /// The TLS handshake is still to run, with these settings and certificates.
    Tls(TcpStream, Arc<crate::tls::Acceptor>),
}

/// What a client connection is served with: the accept loop's hand-over to
/// [`serve_connection`].
pub struct Start<G> {
    pub proxy: Arc<Proxy>,
    /// Taken by the opening.
    pub accepted: Option<Accepted>,
    pub peer: SocketAddr,
    pub settings: Settings,
    pub shutdown: watch::Receiver<bool>,
    /// Held until the connection ends (the accept loop's count of open connections).
    pub guard: G,
}

/// Serves one client connection until it closes, idles out, or `shutdown` turns true
/// (then the request in progress finishes and the connection closes).
///
/// This future is what a connection costs while it waits between requests, so it
/// holds little: its start stays boxed until the connection is open (a future keeps
/// whatever lives across two of its waits for as long as it lives), the opening and
/// HTTP/2 are boxed, and HTTP/1's driver is inline.
pub async fn serve_connection<G: Send>(mut start: Box<Start<G>>) {
    let Some((stream, h2)) = Box::pin(open(&mut start)).await else {
        return;
    };
    let Start {
        proxy,
        peer,
        settings,
        shutdown,
        guard,
        ..
    } = *start;
    let _guard = guard;
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
    crate::http1::conn::serve(proxy, conn, stream, settings, shutdown).await
}

/// The opening of a connection: its first bytes (plain) or its TLS handshake, and
/// whether it speaks HTTP/2. `None`: it closed, stayed silent, or failed its handshake.
async fn open<G>(start: &mut Start<G>) -> Option<(ClientStream, bool)> {
    let header = start.settings.client_header();
    match start.accepted.take()? {
        Accepted::Plain(tcp) => match opening(&tcp, header).await {
            Opening::Silent => None,
            Opening::H2 => Some((ClientStream::Plain(tcp), true)),
            Opening::H1 => Some((ClientStream::Plain(tcp), false)),
        },
        Accepted::Tls(tcp, acceptor) => {
            // Boxed: a handshake's future is kilobytes, and a plain connection's
            // opening should not carry its size.
            let handshake = crate::tls::handshake::accept(&acceptor, tcp, start.peer, header);
            let tls = Box::pin(handshake).await?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            Some((ClientStream::Tls(Box::new(tls)), h2))
        }
    }
}

/// Copies between the client and the backend's upgraded connection until either ends;
/// the slot is held until then.
pub async fn splice(mut client: ClientIo, tunnel: Box<Tunnel>) {
    use tokio::io::AsyncWriteExt;
    let Tunnel {
        mut backend,
        mut exchange,
    } = *tunnel;
    let Some((tcp, read_ahead)) = backend.io() else {
        exchange.finish(Some(crate::error::Failure::UpstreamError));
        return;
    };
    // What the backend sent right after its 101 goes first.
    if !read_ahead.is_empty() && client.write_all(read_ahead).await.is_err() {
        exchange.finish(Some(crate::error::Failure::ClientGone));
        return;
    }
    read_ahead.clear();
    let _ = tokio::io::copy_bidirectional(&mut client, tcp).await;
    exchange.finish(None);
}

async fn serve_h2(
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    stream: ClientStream,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) {
    let shared = conn.shared.clone();
    let io = ClientIo::new(stream, settings.write());
    let svc = {
        let conn = conn.clone();
        service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            forward::serve(
                proxy.clone(),
                conn.clone(),
                req.map(http_body_util::Either::Right),
            )
        })
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
            _ = tokio::time::sleep(settings.client_idle()), if !closing => {
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
