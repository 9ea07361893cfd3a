//! levee's accept loop: it owns the listening sockets and feeds each connection to
//! pingora's HTTP proxy app, one request after another while the connection is kept
//! alive.
//!
//! levee runs its own loop instead of pingora's `Server` so that it can take an
//! already-bound listener (tests bind `127.0.0.1:0`), count open connections, and
//! drain on shutdown and exit as soon as the last request is done, where pingora's
//! server sleeps out its whole grace period.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;

use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::proxy::Levee;
use crate::state::SharedSnapshot;
use crate::stream::{header_complete, ClientStream, WHOLE_HEADER_MAX};

/// The proxy app pingora drives, shared by every connection.
pub type ProxyApp = HttpProxy<Levee>;

/// Builds pingora's HTTP proxy around levee's `ProxyHttp`.
pub fn proxy_app(shared: SharedSnapshot, threads: usize) -> Arc<ProxyApp> {
    let conf = ServerConf {
        threads,
        // levee decides retries itself (connect failures only); this is pingora's cap.
        max_retries: 8,
        ..ServerConf::default()
    };
    let mut app = HttpProxy::new(Levee::new(shared), Arc::new(conf));
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = true;
    app.server_options = Some(options);
    app.handle_init_modules();
    Arc::new(app)
}

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
/// to tell the HTTP/2 preface from HTTP/1.x. (pingora's own check reads exactly 24
/// bytes, which makes a shorter complete HTTP/1.0 request wait for the timeout.)
async fn opening(tcp: &tokio::net::TcpStream, header_timeout: Duration) -> Opening {
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

/// Waits, peeking, until the first request header has fully arrived (an empty line is
/// in the peeked bytes, or `WHOLE_HEADER_MAX` bytes are there), at most until
/// `deadline`: false if it did not, so a header dripped byte by byte cannot hold the
/// connection past `client_header`.
async fn whole_header(tcp: &tokio::net::TcpStream, deadline: tokio::time::Instant) -> bool {
    let mut buf = vec![0u8; WHOLE_HEADER_MAX];
    loop {
        let n = match tokio::time::timeout_at(deadline, tcp.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        if n == buf.len() || header_complete(&buf[..n]) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // peek returns at once while unread bytes wait: poll gently.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves one client connection: HTTP/2 (h2c, prior knowledge) through pingora's own
/// path; HTTP/1.x request after request while the connection is kept alive.
///
/// pingora reads a new connection's first request header with a fixed 60 s per read;
/// levee uses `client_header` instead, and a client that never sends anything is closed
/// after it too. Between two requests the connection waits here, holding no request
/// buffers, for at most `client_idle` (or until shutdown), which keeps idle keep-alive
/// connections cheap.
async fn handle(
    app: Arc<ProxyApp>,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    watch: ShutdownWatch,
    timeouts: crate::config::Timeouts,
) {
    let accepted = tokio::time::Instant::now();
    let mut opening = opening(&tcp, timeouts.client_header).await;
    if matches!(opening, Opening::H1)
        && !whole_header(&tcp, accepted + timeouts.client_header).await
    {
        opening = Opening::Silent;
    }
    let stream: pingora::protocols::Stream = Box::new(ClientStream::new(tcp, peer));
    match opening {
        Opening::Silent => return,
        Opening::H2 => {
            app.process_new(stream, &watch).await;
            return;
        }
        Opening::H1 => {}
    }
    let mut session = ServerSession::new_http1(stream);
    if *watch.borrow() {
        session.set_keepalive(None);
    } else {
        session.set_keepalive(Some(timeouts.client_header.as_secs().max(1)));
    }
    let mut result = app.process_new_http(session, &watch).await;
    while let Some((stream, settings)) = result.map(|r| r.consume()) {
        let Some(stream) = next_request(stream, timeouts, watch.clone()).await else {
            return;
        };
        let mut session = ServerSession::new_http1(stream);
        if let Some(settings) = settings {
            settings.apply_to_session(&mut session);
        }
        result = app.process_new_http(session, &watch).await;
    }
}

/// Waits for the next request on a kept-alive connection: the stream back once its
/// header has arrived, `None` when the client stays idle past `client_idle`, drips the
/// header past `client_header`, leaves, or levee shuts down.
async fn next_request(
    stream: pingora::protocols::Stream,
    timeouts: crate::config::Timeouts,
    mut watch: ShutdownWatch,
) -> Option<pingora::protocols::Stream> {
    if *watch.borrow() {
        return None;
    }
    // Always levee's own stream (see `handle`); anything else is closed.
    let mut client = stream.into_any().downcast::<ClientStream>().ok()?;
    tokio::select! {
        more = client.next_request(timeouts.client_idle, timeouts.client_header) => {
            more.then_some(client as pingora::protocols::Stream)
        }
        _ = watch.changed() => None,
    }
}

/// Open client connections: counts, per-IP counts, and ways to wait for fewer.
pub struct Connections {
    open: AtomicUsize,
    idle: Notify,
    per_ip: dashmap::DashMap<std::net::IpAddr, u32>,
    /// Connections closed at once because their IP had `max_connections_per_ip` open.
    rejected_per_ip: prometheus::IntCounter,
    /// Connections answered 503 and closed at `max_connections`.
    refused_at_max: prometheus::IntCounter,
    /// Connections answered 503 through the reserved descriptor after `EMFILE`.
    refused_no_descriptors: prometheus::IntCounter,
    /// Refusals in progress (each waits briefly for the request before answering).
    refusing: AtomicUsize,
}

/// Most refusals that wait for their request at once; past this they are answered
/// without waiting, so a flood cannot hold descriptors through them.
const MAX_REFUSING: usize = 8;
/// How long a refusal waits for the request header before answering anyway.
const REFUSE_WAIT: Duration = Duration::from_millis(100);

impl Connections {
    pub fn new(metrics: &crate::metrics::Metrics) -> Connections {
        Connections {
            open: AtomicUsize::new(0),
            idle: Notify::new(),
            per_ip: dashmap::DashMap::new(),
            rejected_per_ip: metrics.connections_refused("per_ip"),
            refused_at_max: metrics.connections_refused("max_connections"),
            refused_no_descriptors: metrics.connections_refused("no_descriptors"),
            refusing: AtomicUsize::new(0),
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Counts a new connection from `ip`, unless that IP is at `per_ip_cap` (0: none).
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr, per_ip_cap: u32) -> Option<ConnectionGuard> {
        if per_ip_cap > 0 {
            let mut n = self.per_ip.entry(ip).or_insert(0);
            if *n >= per_ip_cap {
                return None;
            }
            *n += 1;
        }
        self.open.fetch_add(1, Ordering::SeqCst);
        Some(ConnectionGuard {
            connections: self.clone(),
            ip: (per_ip_cap > 0).then_some(ip),
        })
    }

    /// Resolves once no connection is open.
    pub async fn drained(&self) {
        loop {
            let notified = self.idle.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct ConnectionGuard {
    connections: Arc<Connections>,
    /// Set when the connection was counted per IP.
    ip: Option<std::net::IpAddr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let c = &self.connections;
        if let Some(ip) = self.ip {
            // Drop the entry at zero so the map holds only IPs with open connections.
            c.per_ip.remove_if_mut(&ip, |_, n| {
                *n = n.saturating_sub(1);
                *n == 0
            });
        }
        if c.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            c.idle.notify_waiters();
        }
    }
}

/// Accepts connections on `listener` until `shutdown` turns true, serving each on its
/// own task. Connections already open finish their current request; pingora stops
/// keeping them alive once shutdown is set.
pub async fn serve(
    listener: TcpListener,
    app: Arc<ProxyApp>,
    shared: SharedSnapshot,
    connections: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut reserve = crate::fds::Reserve::default();
    let mut out_of_fds = crate::fds::Throttled::new(Duration::from_secs(1));
    let mut other_errors = crate::fds::Throttled::new(Duration::from_secs(1));
    loop {
        let (cap, per_ip_cap, timeouts) = {
            let snapshot = shared.load();
            let s = &snapshot.config.server;
            (
                crate::fds::max_connections(s.max_connections),
                s.max_connections_per_ip,
                s.timeouts,
            )
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) if crate::fds::out_of_descriptors(&e) => {
                // Out of descriptors despite the cap (backend connections, probes):
                // answer one waiting client with a 503 through the reserved descriptor
                // rather than leave the queue unanswered, and pause briefly so the loop
                // cannot spin while nothing frees.
                if reserve.refuse_one(&listener).await {
                    connections.refused_no_descriptors.inc();
                }
                if let Some(left_out) = out_of_fds.check() {
                    tracing::warn!(
                        error = %e,
                        left_out,
                        open = connections.open(),
                        "accept failed: out of file descriptors; refusing new clients with 503 until some close"
                    );
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            Err(e) => {
                if let Some(left_out) = other_errors.check() {
                    tracing::warn!(error = %e, left_out, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        if cap > 0 && connections.open() >= cap {
            // At the cap: a 503 with Retry-After and a close, not a wait in the
            // kernel's queue that the client cannot tell from a dead proxy.
            connections.refused_at_max.inc();
            if connections.refusing.load(Ordering::Relaxed) < MAX_REFUSING {
                connections.refusing.fetch_add(1, Ordering::Relaxed);
                let connections = connections.clone();
                tokio::spawn(async move {
                    crate::fds::refuse(tcp, "max_connections", REFUSE_WAIT).await;
                    connections.refusing.fetch_sub(1, Ordering::Relaxed);
                });
            } else {
                crate::fds::refuse_now(&tcp, "max_connections");
            }
            continue;
        }
        let Some(guard) = connections.admit(peer.ip(), per_ip_cap) else {
            connections.rejected_per_ip.inc();
            tracing::debug!(%peer, "closed: too many connections from this address");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let watch: ShutdownWatch = shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            handle(app, tcp, peer, watch, timeouts).await;
        });
    }
}
