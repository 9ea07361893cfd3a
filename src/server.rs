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

use pingora::apps::ServerApp;
use std::os::unix::io::AsRawFd;

use pingora::protocols::l4::stream::Stream;
use pingora::protocols::{GetSocketDigest, SocketDigest};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::proxy::Levee;
use crate::state::SharedSnapshot;

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

/// Open client connections, and a way to wait until there are none.
#[derive(Default)]
pub struct Connections {
    open: AtomicUsize,
    idle: Notify,
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
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

struct ConnectionGuard(Arc<Connections>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Accepts connections on `listener` until `shutdown` turns true, serving each on its
/// own task. Connections already open finish their current request; pingora stops
/// keeping them alive once shutdown is set.
pub async fn serve(
    listener: TcpListener,
    app: Arc<ProxyApp>,
    connections: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
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
            Err(e) => {
                // Out of descriptors and the like: back off briefly rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        connections.open.fetch_add(1, Ordering::SeqCst);
        let guard = ConnectionGuard(connections.clone());
        let app = app.clone();
        let watch: ShutdownWatch = shutdown.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let mut stream = Stream::from(tcp);
            // The digest is where pingora (and X-Forwarded-For) finds the client address.
            let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
            let _ = digest.peer_addr.set(Some(peer.into()));
            stream.set_socket_digest(digest);
            let mut next = app.process_new(Box::new(stream), &watch).await;
            while let Some(stream) = next {
                next = app.process_new(stream, &watch).await;
            }
        });
    }
}
