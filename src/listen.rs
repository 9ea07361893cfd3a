//! levee's accept loop: it owns the listening sockets, applies the connection caps
//! (total, per IP, and the descriptor reserve), and hands each connection to
//! [`crate::http::server`] on its own task.
//!
//! It takes an already-bound listener (tests bind `127.0.0.1:0`; a binary upgrade
//! passes them over), counts open connections, and on shutdown stops accepting while
//! open connections finish their request in progress.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use crate::http::forward::Proxy;
use crate::http::server::{serve_connection, Accepted, Settings, Start};
use crate::proxy_protocol::Source;

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
    /// Connections closed for their PROXY protocol header, by
    /// [`crate::proxy_protocol::ProxyProtocolError::index`].
    proxy_protocol_errors: [prometheus::IntCounter; 4],
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
            proxy_protocol_errors: metrics.proxy_protocol_errors(),
        }
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Counts a new connection from `ip`, unless that IP is at `per_ip_cap` (0: none).
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr, per_ip_cap: u32) -> Option<ConnectionGuard> {
        let mut guard = self.count();
        guard.count_ip(ip, per_ip_cap).then_some(guard)
    }

    /// Counts a new connection whose client is not known yet (its PROXY header is
    /// still to be read); [`ConnectionGuard::count_ip`] adds the client once it is.
    fn count(self: &Arc<Self>) -> ConnectionGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        ConnectionGuard {
            connections: self.clone(),
            ip: None,
        }
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

impl ConnectionGuard {
    /// Counts this connection against `ip`; false (and not counted) when that IP
    /// already has `per_ip_cap` open (0: no cap).
    fn count_ip(&mut self, ip: std::net::IpAddr, per_ip_cap: u32) -> bool {
        if per_ip_cap == 0 {
            return true;
        }
        let mut n = self.connections.per_ip.entry(ip).or_insert(0);
        if *n >= per_ip_cap {
            return false;
        }
        *n += 1;
        self.ip = Some(ip);
        true
    }
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
/// own task (after a TLS handshake when `tls` is given). Connections already open
/// finish their current request and close.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    connections: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
    tls: Option<Arc<crate::tls::Acceptor>>,
) {
    let mut reserve = crate::fds::Reserve::default();
    loop {
        let (cap, per_ip_cap, settings, proxy_protocol) = {
            let snapshot = proxy.shared.load();
            let s = &snapshot.config.server;
            (
                crate::fds::max_connections(s.max_connections),
                s.max_connections_per_ip,
                Settings::new(&s.timeouts, s.max_header_bytes),
                s.proxy_protocol,
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
                // answer the waiting clients with a 503 through the reserved
                // descriptor rather than leave the queue unanswered, and pause briefly
                // so the loop cannot spin while nothing frees.
                let refused = reserve.refuse_waiting(&listener).await;
                connections.refused_no_descriptors.inc_by(refused);
                let logged = crate::fds::accept_warnings().check();
                if let Some(left_out) = logged {
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
                let logged = crate::fds::accept_warnings().check();
                if let Some(left_out) = logged {
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
            if tls.is_some() {
                // A TLS client would read a plain-text 503 as a broken handshake; a
                // close says as much, without a handshake's cost.
                drop(tcp);
            } else if connections.refusing.load(Ordering::Relaxed) < MAX_REFUSING {
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
        let _ = tcp.set_nodelay(true);
        let watch = shutdown.clone();
        if proxy_protocol {
            // The client is known once the header is read: the per-IP cap waits for it.
            let guard = connections.count();
            tokio::spawn(serve_proxied(Box::new(Proxied {
                tcp,
                tls: tls.clone(),
                per_ip_cap,
                start: Start {
                    proxy: proxy.clone(),
                    accepted: None,
                    peer,
                    settings,
                    shutdown: watch,
                    guard,
                },
            })));
            continue;
        }
        let Some(guard) = connections.admit(peer.ip(), per_ip_cap) else {
            connections.rejected_per_ip.inc();
            tracing::debug!(%peer, "closed: too many connections from this address");
            drop(tcp);
            continue;
        };
        let accepted = to_accepted(tcp, &tls);
        tokio::spawn(serve_connection(Box::new(Start {
            proxy: proxy.clone(),
            accepted: Some(accepted),
            peer,
            settings,
            shutdown: watch,
            guard,
        })));
    }
}

fn to_accepted(tcp: TcpStream, tls: &Option<Arc<crate::tls::Acceptor>>) -> Accepted {
    match tls {
        None => Accepted::Plain(tcp),
        Some(acceptor) => Accepted::Tls(tcp, acceptor.clone()),
    }
}

/// Serves a connection that starts with a PROXY protocol header: the header is read
/// (within `client_header`) and its source address is the connection's peer from then
/// on, for the per-IP cap and everything after it. A missing, malformed or slow header
/// closes the connection without a word, before any backend is involved.
///
/// Boxed, as [`serve_connection`]'s start is: a future keeps its arguments for as long
/// as it lives.
async fn serve_proxied(start: Box<Proxied>) {
    // The header's read is boxed and over before the connection is served, so the
    // connection's future does not keep what only the read needed.
    if let Some(start) = Box::pin(read_proxied(start)).await {
        serve_connection(start).await;
    }
}

/// The PROXY protocol header and the per-IP cap: the connection's start as
/// [`serve_connection`] takes it, or `None` when it is closed here.
async fn read_proxied(proxied: Box<Proxied>) -> Option<Box<Start<ConnectionGuard>>> {
    let Proxied {
        mut tcp,
        tls,
        per_ip_cap,
        mut start,
    } = *proxied;
    let peer = start.peer;
    let header = crate::proxy_protocol::read_header(&mut tcp, start.settings.client_header());
    let client = match header.await {
        Ok(Source::Address(client)) => client,
        Ok(Source::Local) => peer,
        Err(e) => {
            start.guard.connections.proxy_protocol_errors[e.index()].inc();
            tracing::debug!(%peer, error = %e, "closed: PROXY protocol header refused");
            return None;
        }
    };
    if !start.guard.count_ip(client.ip(), per_ip_cap) {
        start.guard.connections.rejected_per_ip.inc();
        tracing::debug!(%peer, %client, "closed: too many connections from this address");
        return None;
    }
    start.peer = client;
    start.accepted = Some(to_accepted(tcp, &tls));
    Some(Box::new(start))
}

/// A connection that starts with a PROXY protocol header, as the accept loop hands it
/// to [`serve_proxied`].
struct Proxied {
    tcp: TcpStream,
    tls: Option<Arc<crate::tls::Acceptor>>,
    per_ip_cap: u32,
    /// The connection's start, its peer the sender of the header until the header
    /// names the client, nothing accepted yet.
    start: Start<ConnectionGuard>,
}
