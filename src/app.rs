//! Assembly: one [`App`] holds the published snapshot, the metrics, the proxy app and
//! the shutdown signal; [`start`] binds the configured listeners and runs everything on
//! the current tokio runtime. `main`, `levee demo` and the integration tests all start
//! levee through here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::{proxy_app, serve, Connections, ProxyApp};
use crate::state::{spawn_level_ticker, SharedSnapshot, Snapshot};

pub struct App {
    pub shared: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub proxy: Arc<ProxyApp>,
    pub connections: Arc<Connections>,
    shutdown: watch::Sender<bool>,
    /// False once draining: `/readyz` answers 503.
    ready: AtomicBool,
}

impl App {
    pub fn new(config: Config) -> Arc<App> {
        let metrics = Arc::new(Metrics::new());
        let threads = config.server.threads;
        let snapshot = Snapshot::build(config, &metrics);
        let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        metrics.config_reloads.with_label_values(&["success"]).inc();
        metrics.config_last_reload_success.set(unix_now());
        let (shutdown, _) = watch::channel(false);
        Arc::new(App {
            proxy: proxy_app(shared.clone(), threads),
            shared,
            metrics,
            connections: Arc::new(Connections::default()),
            shutdown,
            ready: AtomicBool::new(true),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.load_full()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stops accepting, lets open requests finish, and returns once no connection is
    /// left or `grace` has passed (true when everything drained in time).
    pub async fn drain(&self, grace: Duration) -> bool {
        self.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        tokio::time::timeout(grace, self.connections.drained())
            .await
            .is_ok()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A started levee: where it listens, and its tasks.
pub struct Running {
    pub app: Arc<App>,
    /// The proxy listeners' bound addresses, in `server.listen` order.
    pub addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// The first proxy address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Waits until every backend with active checks had its first probe (bounded by the
    /// longest probe timeout), so levee does not answer its first requests with
    /// "no healthy backend" only because it has not looked yet.
    pub async fn wait_for_first_probes(&self) {
        let snapshot = self.app.snapshot();
        let longest = snapshot
            .upstreams
            .iter()
            .map(|u| u.health.timeout)
            .max()
            .unwrap_or_default();
        let deadline = tokio::time::Instant::now() + longest + Duration::from_millis(100);
        while !snapshot.upstreams.iter().all(|u| u.probed())
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Drains (see [`App::drain`]) and stops every task.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let drained = self.app.drain(grace).await;
        for t in &self.tasks {
            t.abort();
        }
        drained
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds `server.listen` and `server.admin_listen` (port 0 picks a free port) and
/// starts serving on the current runtime.
pub async fn start(config: Config) -> std::io::Result<Running> {
    let mut listeners = Vec::new();
    for addr in &config.server.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        listeners.push(l);
    }
    let admin = match config.server.admin_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on admin {addr}: {e}"))
        })?),
        None => None,
    };
    let app = App::new(config);
    let running = start_with(app, listeners, admin)?;
    running.wait_for_first_probes().await;
    Ok(running)
}

/// Starts serving on listeners the caller bound.
pub fn start_with(
    app: Arc<App>,
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
) -> std::io::Result<Running> {
    let mut addrs = Vec::new();
    let mut tasks = vec![spawn_level_ticker(app.shared.clone())];
    for up in &app.snapshot().upstreams {
        crate::health::probe::spawn_probes(up);
    }
    for l in listeners {
        addrs.push(l.local_addr()?);
        tasks.push(tokio::spawn(serve(
            l,
            app.proxy.clone(),
            app.shared.clone(),
            app.connections.clone(),
            app.shutdown_signal(),
        )));
    }
    let admin_addr = match admin {
        Some(l) => {
            let addr = l.local_addr()?;
            tasks.push(tokio::spawn(crate::admin::serve(l, app.clone())));
            Some(addr)
        }
        None => None,
    };
    Ok(Running {
        app,
        addrs,
        admin_addr,
        tasks,
    })
}

/// Re-reads `path` and publishes it if it is valid; an invalid file keeps the current
/// config serving. Upstreams whose config did not change keep their state (counters,
/// queue, level, health); a changed upstream starts fresh, and requests admitted under
/// the old one release their slots into it as they finish.
pub fn reload(app: &App, path: &std::path::Path) -> Result<(), crate::config::ConfigErrors> {
    match crate::config::load(path) {
        Ok(config) => {
            let previous = app.shared.load_full();
            let next = Snapshot::build_from(config, Some(&previous), &app.metrics);
            for up in &next.upstreams {
                if !previous.upstreams.iter().any(|p| Arc::ptr_eq(p, up)) {
                    crate::health::probe::spawn_probes(up);
                }
            }
            app.shared.store(Arc::new(next));
            app.metrics
                .config_reloads
                .with_label_values(&["success"])
                .inc();
            app.metrics.config_last_reload_success.set(unix_now());
            tracing::info!(file = %path.display(), "config reloaded");
            Ok(())
        }
        Err(errors) => {
            app.metrics
                .config_reloads
                .with_label_values(&["failure"])
                .inc();
            for e in &errors.0 {
                tracing::error!(file = %path.display(), error = %e, "config reload failed; keeping the current config");
            }
            Err(errors)
        }
    }
}

/// `levee run`: serve until SIGTERM (drain, then exit), SIGINT (exit now); SIGHUP
/// reloads the config file.
pub async fn run_until_signal(config: Config, path: std::path::PathBuf) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let grace = config.server.grace_period;
    let running = start(config).await?;
    for addr in &running.addrs {
        tracing::info!(%addr, "proxy listening");
    }
    if let Some(addr) = running.admin_addr {
        tracing::info!(%addr, "admin listening");
    }
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!(open = running.app.connections.open(), grace_ms = grace.as_millis() as u64, "SIGTERM: draining");
                let drained = running.shutdown(grace).await;
                tracing::info!(drained, "stopped");
                return Ok(());
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: stopping now");
                return Ok(());
            }
            _ = hup.recv() => {
                let _ = reload(&running.app, &path);
            }
        }
    }
}
