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
    /// One reload at a time (SIGHUP and the file watcher may both ask).
    reload_lock: parking_lot::Mutex<()>,
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
            reload_lock: parking_lot::Mutex::new(()),
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
        // Wakes idle keep-alive connections waiting for their next request, so they
        // close now instead of at their idle timeout.
        pingora::apps::ServerApp::cleanup(&*self.proxy).await;
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
        crate::health::probe::spawn_probes(up, &app.shared);
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
    let _one_at_a_time = app.reload_lock.lock();
    match crate::config::load(path) {
        Ok(config) => {
            let previous = app.shared.load_full();
            let next = Arc::new(Snapshot::build_from(config, Some(&previous), &app.metrics));
            app.shared.store(next.clone());
            for up in &next.upstreams {
                if !previous.upstreams.iter().any(|p| Arc::ptr_eq(p, up)) {
                    crate::health::probe::spawn_probes(up, &app.shared);
                }
            }
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

/// How long the watcher waits after a change of the config file for more changes
/// before reloading: editors and config managers write in several steps.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(250);

/// Reloads when the config file changes. Watches the file's directory, so a file
/// replaced by a rename (as editors and config managers do) is seen too. The returned
/// watcher stops watching when dropped.
pub fn watch_config(
    app: Arc<App>,
    path: std::path::PathBuf,
) -> notify::Result<(notify::RecommendedWatcher, JoinHandle<()>)> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let name = path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
            let _ = tx.try_send(()); // a full channel already means "reload"
        }
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(RELOAD_DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let _ = reload(&app, &path);
        }
    });
    Ok((watcher, task))
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
    let _watch = match watch_config(running.app.clone(), path.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            None
        }
    };
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
