//! Assembly: one [`App`] holds the published snapshot, the metrics, the proxy app and
//! the shutdown signal; [`start`] binds the configured listeners and runs everything on
//! the current tokio runtime. `main`, `levee demo` and the integration tests all start
//! levee through here.

use std::net::SocketAddr;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, RuntimeLayout};
use crate::handover::Fds;
use crate::http::forward::Proxy;
use crate::http::pool::Pools;
use crate::listen::{serve, Connections};
use crate::metrics::Metrics;
use crate::state::{spawn_level_ticker, SharedSnapshot, Snapshot};
use crate::workers::Workers;

pub struct App {
    pub shared: SharedSnapshot,
    pub metrics: Arc<Metrics>,
    pub proxy: Arc<Proxy>,
    pub connections: Arc<Connections>,
    shutdown: watch::Sender<bool>,
    /// False once draining: `/readyz` answers 503.
    ready: AtomicBool,
    /// One reload at a time (SIGHUP and the file watcher may both ask).
    reload_lock: parking_lot::Mutex<()>,
    /// The TLS listeners' settings and certificates, when the config at start had
    /// `[server.tls]`.
    pub tls: Option<Arc<crate::tls::Acceptor>>,
    /// The config in force as written, backend names unexpanded; the snapshot's config
    /// is this with every name expanded by discovery's answers.
    base: parking_lot::Mutex<Arc<Config>>,
    /// Backend names and what they resolve to.
    pub discovery: Arc<crate::discovery::Discovery>,
    /// Wakes the discovery loop to look up names a reload added.
    names_added: tokio::sync::Notify,
    /// The span exporter's queue, until [`start_with`] starts the exporter on it.
    spans: parking_lot::Mutex<Option<crate::trace::Queue>>,
}

impl App {
    /// The app of `config`; `Err` when a TLS certificate pair cannot be loaded (every
    /// problem, each naming its config key and file).
    pub fn new(config: Config) -> Result<Arc<App>, Vec<crate::tls::CertError>> {
        let metrics = Arc::new(Metrics::new());
        let tls = match &config.server.tls {
            Some(tls) => Some(Arc::new(crate::tls::Acceptor::new(tls, &metrics)?)),
            None => None,
        };
        let discovery = Arc::new(crate::discovery::Discovery::new(&metrics));
        // Names have no address until their first lookup (at start, before serving).
        let snapshot = Snapshot::build(discovery.expand(&config), &metrics);
        let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        metrics.config_reloads.with_label_values(&["success"]).inc();
        metrics.config_last_reload_success.set(unix_now());
        let (shutdown, _) = watch::channel(false);
        let (tracer, spans) = crate::trace::Tracer::new(
            metrics.trace_spans_dropped.clone(),
            metrics.trace_spans_exported.clone(),
        );
        Ok(Arc::new(App {
            proxy: Arc::new(Proxy {
                shared: shared.clone(),
                pools: Arc::new(Pools::default()),
                tracer,
            }),
            spans: parking_lot::Mutex::new(Some(spans)),
            shared,
            connections: Arc::new(Connections::new(&metrics)),
            metrics,
            shutdown,
            ready: AtomicBool::new(true),
            reload_lock: parking_lot::Mutex::new(()),
            tls,
            base: parking_lot::Mutex::new(Arc::new(config)),
            discovery,
            names_added: tokio::sync::Notify::new(),
        }))
    }

    /// Looks up the backend names of the config in force (only names never looked up
    /// when `new_only`) and publishes a new snapshot if an answer changed. Names that
    /// appear keep a backend's state where its address stays (see
    /// [`crate::discovery`]).
    pub async fn refresh_names(&self, new_only: bool) {
        let base = self.base.lock().clone();
        if base.backend_names().is_empty() {
            return;
        }
        if self.discovery.refresh(&base, new_only).await {
            let _one_at_a_time = self.reload_lock.lock();
            // The config may have been reloaded during the lookups: expand the latest.
            let base = self.base.lock().clone();
            self.publish(self.discovery.expand(&base));
        }
    }

    /// The first lookup of every backend name, before levee serves: its addresses are
    /// backends from the first request, at full capacity (no slow start at start).
    async fn resolve_at_start(&self) {
        let base = self.base.lock().clone();
        if base.backend_names().is_empty() {
            return;
        }
        self.discovery.refresh(&base, false).await;
        let _one_at_a_time = self.reload_lock.lock();
        let snapshot = Snapshot::build(self.discovery.expand(&base), &self.metrics);
        self.shared.store(Arc::new(snapshot));
    }

    /// Builds and publishes the snapshot of `config` (names expanded), keeping the
    /// state of unchanged upstreams and backends, and starts the probes of every
    /// upstream version that is new. The caller holds `reload_lock`.
    fn publish(&self, config: Config) {
        let previous = self.shared.load_full();
        let next = Arc::new(Snapshot::build_from(config, Some(&previous), &self.metrics));
        self.shared.store(next.clone());
        for up in &next.upstreams {
            if !previous.upstreams.iter().any(|p| Arc::ptr_eq(p, up)) {
                crate::health::probe::spawn_probes(up, &self.shared);
            }
        }
        // Backends that left: their counter series go with them.
        for old in &previous.upstreams {
            let kept = next.upstreams.iter().find(|u| u.name == old.name);
            for b in &old.backends {
                if !kept.is_some_and(|u| u.backends.iter().any(|n| n.label == b.label)) {
                    self.metrics.forget_backend(&old.name, &b.label);
                }
            }
        }
    }

    /// Waits until every backend with active checks had its first probe (bounded by the
    /// longest probe timeout), so levee does not answer its first requests with
    /// "no healthy backend" only because it has not looked yet.
    pub async fn wait_for_first_probes(&self) {
        let snapshot = self.snapshot();
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
        // Idle keep-alive connections waiting for their next request see it and close
        // now; busy ones finish their request in progress and close.
        let _ = self.shutdown.send(true);
        crate::http1::idle::wake_all();
        tokio::time::timeout(grace, self.connections.drained())
            .await
            .is_ok()
    }
}

impl crate::admin::Source for App {
    fn snapshot(&self) -> Arc<Snapshot> {
        App::snapshot(self)
    }

    fn is_ready(&self) -> bool {
        App::is_ready(self)
    }

    fn open_connections(&self) -> usize {
        self.connections.open()
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
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
    /// The TLS listeners' bound addresses, in `server.tls.listen` order.
    pub tls_addrs: Vec<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    /// Listening sockets by handover key, for a binary upgrade.
    handover: Vec<(String, std::os::unix::io::RawFd)>,
    /// The per-thread workers serving client connections (`server.runtime =
    /// "per_thread"`); dropped last, after the tasks are aborted.
    _workers: Option<Workers>,
}

impl Running {
    /// The first proxy address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Sends the listening sockets to a new levee waiting on `sock` (`run --upgrade`).
    /// Both processes then share them; this one should drain and exit next.
    pub async fn hand_over(&self, sock: &std::path::Path) -> std::io::Result<usize> {
        let mut fds = Fds::default();
        for (key, fd) in &self.handover {
            fds.add(key.clone(), *fd);
        }
        let path = sock.to_path_buf();
        tokio::task::spawn_blocking(move || fds.send_to(&path))
            .await
            .map_err(std::io::Error::other)?
            .map_err(|e| std::io::Error::other(format!("handover to {}: {e}", sock.display())))
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
    start_inheriting(config, None).await
}

/// What a listening socket serves, for its handover key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Plain,
    Tls,
    Admin,
}

/// The key of a listening socket in the handover table: the address for the first
/// socket of a proxy address, `address#i` for its `SO_REUSEPORT` siblings,
/// `tls:address` (and `tls:address#i`) for TLS listeners, and `admin:address` for the
/// admin listener.
fn handover_key(addr: &SocketAddr, kind: Listener, index: usize) -> String {
    let prefix = match kind {
        Listener::Admin => return format!("admin:{addr}"),
        Listener::Plain => "",
        Listener::Tls => "tls:",
    };
    match index {
        0 => format!("{prefix}{addr}"),
        i => format!("{prefix}{addr}#{i}"),
    }
}

/// Wraps a descriptor that arrived over the handover socket.
fn adopt(fd: std::os::unix::io::RawFd) -> std::io::Result<std::net::TcpListener> {
    use std::os::unix::io::FromRawFd;
    // SAFETY: the descriptor arrived over the handover socket for this process alone,
    // and each key's descriptor is wrapped exactly once, here.
    let l = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The admin listener: taken over from the previous levee, or bound.
async fn admin_listener(addr: SocketAddr, inherited: Option<&Fds>) -> std::io::Result<TcpListener> {
    if let Some(fd) = inherited.and_then(|f| f.get(&handover_key(&addr, Listener::Admin, 0))) {
        tracing::info!(%addr, "admin listener taken over from the previous levee");
        return TcpListener::from_std(adopt(*fd)?);
    }
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on admin {addr}: {e}")))
}

/// The sockets of one proxy address: every one the previous levee handed over (its
/// first and its siblings), or one bound now with `SO_REUSEPORT`.
fn proxy_sockets(
    addr: SocketAddr,
    kind: Listener,
    inherited: Option<&Fds>,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut sockets = Vec::new();
    while let Some(fd) = inherited.and_then(|f| f.get(&handover_key(&addr, kind, sockets.len()))) {
        sockets.push(adopt(*fd)?);
    }
    if !sockets.is_empty() {
        tracing::info!(%addr, sockets = sockets.len(), "listener taken over from the previous levee");
        return Ok(sockets);
    }
    let l = crate::workers::bind_reuseport(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    Ok(vec![l])
}

/// Like [`start`], but takes the listeners a previous levee handed over where their
/// addresses match, and binds the rest.
pub async fn start_inheriting(config: Config, inherited: Option<Fds>) -> std::io::Result<Running> {
    presize_descriptors(config.server.max_connections);
    let mut listeners = Vec::new();
    for addr in &config.server.listen {
        listeners.push(proxy_sockets(*addr, Listener::Plain, inherited.as_ref())?);
    }
    let mut tls_listeners = Vec::new();
    for addr in config.server.tls.iter().flat_map(|t| &t.listen) {
        tls_listeners.push(proxy_sockets(*addr, Listener::Tls, inherited.as_ref())?);
    }
    let admin = match config.server.admin_listen {
        Some(addr) => Some(admin_listener(addr, inherited.as_ref()).await?),
        None => None,
    };
    let app = App::new(config).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        std::io::Error::other(format!(
            "invalid TLS certificates:\n  {}",
            lines.join("\n  ")
        ))
    })?;
    app.resolve_at_start().await;
    // The first probe round before the listeners serve: backends found healthy take
    // their full share from the first request (no slow start at process start), and
    // none is routed to before it was seen up.
    for up in &app.snapshot().upstreams {
        crate::health::probe::spawn_probes(up, &app.shared);
    }
    app.wait_for_first_probes().await;
    start_with(app, listeners, tls_listeners, admin)
}

/// Looks up backend names every `server.dns.refresh_ms` of the config in force, and at
/// once when a reload added names, until aborted.
async fn discover(app: Arc<App>) {
    loop {
        let refresh = app.base.lock().server.dns.refresh;
        tokio::select! {
            _ = tokio::time::sleep(refresh) => app.refresh_names(false).await,
            _ = app.names_added.notified() => app.refresh_names(true).await,
        }
    }
}

/// Accepts on one listening socket, registered with the runtime it runs on.
async fn accept_on(
    socket: std::net::TcpListener,
    proxy: Arc<Proxy>,
    connections: Arc<crate::listen::Connections>,
    shutdown: watch::Receiver<bool>,
    tls: Option<Arc<crate::tls::Acceptor>>,
) {
    match TcpListener::from_std(socket) {
        Ok(l) => serve(l, proxy, connections, shutdown, tls).await,
        Err(e) => {
            tracing::error!(error = %e, "cannot register a listening socket; it is not served")
        }
    }
}

/// Starts serving on listening sockets the caller bound (each address's sockets in
/// one group; `tls_listeners` in `server.tls.listen` order), in the runtime layout of
/// the config. The caller has started the health probes.
pub fn start_with(
    app: Arc<App>,
    listeners: Vec<Vec<std::net::TcpListener>>,
    tls_listeners: Vec<Vec<std::net::TcpListener>>,
    admin: Option<TcpListener>,
) -> std::io::Result<Running> {
    let server = app.snapshot().config.server.clone();
    let workers = match server.runtime {
        RuntimeLayout::PerThread => Some(Workers::start(server.threads)?),
        RuntimeLayout::MultiThread => None,
    };
    let mut addrs = Vec::new();
    let mut handover = Vec::new();
    let mut tasks = vec![
        spawn_level_ticker(app.shared.clone()),
        tokio::spawn(discover(app.clone())),
    ];
    if let Some(queue) = app.spans.lock().take() {
        let shared = app.shared.clone();
        tasks.push(crate::trace::export::spawn(queue, move || {
            shared.load().config.server.tracing.clone()
        }));
    }
    let shared = app.shared.clone();
    tasks.push(
        app.proxy
            .pools
            .spawn_sweeper(move || shared.load().config.server.timeouts.upstream_idle),
    );
    // Handover keys name the configured address (port 0 included), so that the next
    // levee, reading the same config, finds its sockets.
    let tls_listen = server.tls.as_ref().map_or(&[][..], |t| &t.listen[..]);
    let plain = server
        .listen
        .iter()
        .zip(listeners)
        .map(|g| (g, Listener::Plain));
    let tls = tls_listen
        .iter()
        .zip(tls_listeners)
        .map(|g| (g, Listener::Tls));
    let mut tls_addrs = Vec::new();
    for ((configured, group), kind) in plain.chain(tls) {
        let group = match &workers {
            Some(w) => crate::workers::siblings(group, w.handles().len())?,
            None => group,
        };
        let Some(first) = group.first() else { continue };
        let acceptor = match kind {
            Listener::Tls => {
                tls_addrs.push(first.local_addr()?);
                let Some(acceptor) = app.tls.clone() else {
                    return Err(std::io::Error::other(
                        "TLS listeners without TLS certificates loaded",
                    ));
                };
                Some(acceptor)
            }
            _ => {
                addrs.push(first.local_addr()?);
                None
            }
        };
        for (i, socket) in group.into_iter().enumerate() {
            handover.push((handover_key(configured, kind, i), socket.as_raw_fd()));
            let accept = accept_on(
                socket,
                app.proxy.clone(),
                app.connections.clone(),
                app.shutdown_signal(),
                acceptor.clone(),
            );
            tasks.push(match &workers {
                Some(w) => w.handles()[i % w.handles().len()].spawn(accept),
                None => tokio::spawn(accept),
            });
        }
    }
    let admin_addr = match (admin, server.admin_listen) {
        (Some(l), Some(configured)) => {
            let addr = l.local_addr()?;
            handover.push((handover_key(&configured, Listener::Admin, 0), l.as_raw_fd()));
            tasks.push(tokio::spawn(crate::admin::serve(l, app.clone())));
            Some(addr)
        }
        _ => None,
    };
    Ok(Running {
        app,
        addrs,
        tls_addrs,
        admin_addr,
        tasks,
        handover,
        _workers: workers,
    })
}

/// Re-reads `path` and publishes it if it is valid; an invalid file keeps the current
/// config serving. Upstreams whose config did not change keep their state (counters,
/// queue, level, health); a changed upstream starts fresh, and requests admitted under
/// the old one release their slots into it as they finish.
///
/// Then re-reads the TLS certificates the config in force names (see
/// [`reload_certs`]): a broken certificate does not hold a config change back, nor
/// the other way round.
pub fn reload(app: &App, path: &std::path::Path) -> Result<(), crate::config::ConfigErrors> {
    let _one_at_a_time = app.reload_lock.lock();
    let result = match crate::config::load(path) {
        Ok(config) => {
            // A raised cap: the table grows now, not on the accept path.
            presize_descriptors(config.server.max_connections);
            let expanded = app.discovery.expand(&config);
            *app.base.lock() = Arc::new(config);
            app.publish(expanded);
            // Names this config adds are looked up at once, not at the next refresh.
            app.names_added.notify_one();
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
    };
    reload_certs_locked(app);
    result
}

/// Re-reads the TLS certificates and keys the config in force names, and swaps them
/// in for new connections if every pair loads; otherwise the certificates in force
/// stay, and each problem is logged with its file and counted
/// (`levee_tls_reload_errors_total`). `None` when levee serves no TLS. TLS listeners
/// themselves (`server.tls.listen`, or adding `[server.tls]`) change only with a
/// restart or a binary upgrade.
pub fn reload_certs(app: &App) -> Option<crate::tls::Reload> {
    let _one_at_a_time = app.reload_lock.lock();
    reload_certs_locked(app)
}

fn reload_certs_locked(app: &App) -> Option<crate::tls::Reload> {
    let snapshot = app.snapshot();
    match (&app.tls, &snapshot.config.server.tls) {
        (Some(acceptor), Some(tls)) => Some(acceptor.store.reload(tls)),
        (None, Some(_)) => {
            tracing::warn!(
                "[server.tls] was added: TLS listeners start with a restart or a binary upgrade"
            );
            None
        }
        (Some(_), None) => {
            tracing::warn!("[server.tls] was removed: the TLS listeners keep serving their certificates until a restart or a binary upgrade");
            None
        }
        (None, None) => None,
    }
}

/// How long the watcher waits after a change of the config file for more changes
/// before reloading: editors and config managers write in several steps.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(250);

/// Reloads when the config file or a TLS certificate or key changes. Watches the
/// directories (so a file replaced by a rename, as editors, config managers and
/// Kubernetes' secret volumes do, is seen too): a change of the config file reloads
/// everything ([`reload`]); any other change in a directory holding a certificate or
/// key re-reads the certificates ([`reload_certs`]; an unchanged set is left alone).
/// The returned [`ConfigWatch`] stops watching when dropped.
pub fn watch_config(
    app: Arc<App>,
    path: std::path::PathBuf,
) -> notify::Result<(ConfigWatch, JoinHandle<()>)> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let changed = Arc::new(Changed::default());
    let cert_files: Arc<parking_lot::RwLock<Vec<std::path::PathBuf>>> = Arc::default();
    let name = path.file_name().map(|n| n.to_os_string());
    let (seen, files) = (changed.clone(), cert_files.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        for p in &event.paths {
            if p.file_name() == name.as_deref() {
                seen.config.store(true, Ordering::Relaxed);
            } else if files.read().iter().any(|f| is_cert_change(f, p)) {
                seen.certs.store(true, Ordering::Relaxed);
            } else {
                continue;
            }
            let _ = tx.try_send(()); // a full channel already means "reload"
        }
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    watcher.watch(&dir, notify::RecursiveMode::NonRecursive)?;
    let watch = ConfigWatch(Arc::new(Watched {
        watcher: parking_lot::Mutex::new(watcher),
        config_dir: dir,
        cert_files,
    }));
    watch.follow_certs(&app);
    let weak = Arc::downgrade(&watch.0);
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            tokio::time::sleep(RELOAD_DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let config = changed.config.swap(false, Ordering::Relaxed);
            let certs = changed.certs.swap(false, Ordering::Relaxed);
            if config {
                let _ = reload(&app, &path);
            } else if certs {
                reload_certs(&app);
            }
            if let Some(watched) = weak.upgrade() {
                ConfigWatch(watched).follow_certs(&app);
            }
        }
    });
    Ok((watch, task))
}

/// Whether a change of `changed` may change the certificate or key file `file`: the
/// file itself (written in place or renamed over), or, in its directory, a name
/// starting with `..` (Kubernetes swaps a secret volume's files by renaming its
/// `..data` link).
fn is_cert_change(file: &std::path::Path, changed: &std::path::Path) -> bool {
    let in_dir = changed.parent() == file.parent().filter(|d| !d.as_os_str().is_empty());
    in_dir
        && (changed.file_name() == file.file_name()
            || changed
                .file_name()
                .is_some_and(|n| n.as_encoded_bytes().starts_with(b"..")))
}

/// What the watcher saw change since the last reload.
#[derive(Default)]
struct Changed {
    config: AtomicBool,
    certs: AtomicBool,
}

/// The file watcher of [`watch_config`]; dropping it stops the watching.
pub struct ConfigWatch(Arc<Watched>);

struct Watched {
    watcher: parking_lot::Mutex<notify::RecommendedWatcher>,
    config_dir: std::path::PathBuf,
    /// The certificate and key files watched so far (the watcher's callback reads
    /// them to tell a certificate change).
    cert_files: Arc<parking_lot::RwLock<Vec<std::path::PathBuf>>>,
}

impl ConfigWatch {
    /// Watches the certificate and key files the config in force names, through
    /// their directories (call after a reload that may name new ones). Files no longer
    /// named stay watched; a change of one only re-reads certificates that did not
    /// change.
    pub fn follow_certs(&self, app: &App) {
        use notify::Watcher;
        let snapshot = app.snapshot();
        let Some(tls) = &snapshot.config.server.tls else {
            return;
        };
        for (_, pair) in tls.pairs() {
            for file in [&pair.cert, &pair.key] {
                if self.0.cert_files.read().iter().any(|f| f == file) {
                    continue;
                }
                let dir = match file.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d,
                    _ => std::path::Path::new("."),
                };
                let watched = self
                    .0
                    .cert_files
                    .read()
                    .iter()
                    .any(|f| f.parent() == Some(dir));
                // The config's own directory is watched already.
                if !watched && dir != self.0.config_dir {
                    if let Err(e) = self
                        .0
                        .watcher
                        .lock()
                        .watch(dir, notify::RecursiveMode::NonRecursive)
                    {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a certificate directory; reload certificates with SIGHUP");
                        continue;
                    }
                }
                self.0.cert_files.write().push(file.clone());
            }
        }
    }
}

/// Grows the descriptor table for the client cap before clients come
/// ([`crate::fds::presize_table`]); a failure only means the table grows under load.
fn presize_descriptors(max_connections: u32) {
    match crate::fds::presize_table(max_connections) {
        Ok(0) => {}
        Ok(slots) => tracing::debug!(slots, "descriptor table sized for the client cap"),
        Err(e) => {
            tracing::debug!(error = %e, "cannot size the descriptor table; it grows under load")
        }
    }
}

/// Says how many client connections levee will take, and warns when the configured
/// cap is more than the open-files limit can hold.
fn log_connection_cap(server: &crate::config::Server) {
    let Some(limit) = crate::fds::open_files_limit() else {
        return;
    };
    let fits = crate::fds::connections_for(limit);
    if server.max_connections == 0 {
        tracing::info!(
            open_files_limit = limit,
            max_connections = fits,
            "client connections capped from the open-files limit (server.max_connections = 0)"
        );
    } else if server.max_connections as usize > fits {
        tracing::warn!(
            open_files_limit = limit,
            max_connections = server.max_connections,
            fits,
            "server.max_connections is more than the open-files limit can hold; past it clients are refused through a reserved descriptor"
        );
    }
}

/// Receives the listening sockets of the running levee (which sends them on SIGQUIT)
/// over `sock`. Blocks until they arrive.
pub async fn receive_listeners(sock: &std::path::Path) -> std::io::Result<Fds> {
    let path = sock.to_path_buf();
    let parent_ok = path.parent().is_some_and(|p| p.is_dir());
    if !parent_ok {
        return Err(std::io::Error::other(format!(
            "server.upgrade_sock {}: its directory does not exist",
            path.display()
        )));
    }
    tokio::task::spawn_blocking(move || Fds::receive_on(&path))
        .await
        .map_err(std::io::Error::other)?
        .map_err(|e| {
            std::io::Error::other(format!("receiving listeners on {}: {e}", sock.display()))
        })
}

/// `levee run`: serve until SIGTERM (drain, then exit), SIGINT (exit now) or SIGQUIT
/// (hand the listeners to a new levee started with `--upgrade`, then drain and exit);
/// SIGHUP and changes of the file reload the config.
pub async fn run_until_signal(
    config: Config,
    path: std::path::PathBuf,
    upgrade: bool,
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let grace = config.server.grace_period;
    let sock = config.server.upgrade_sock.clone();
    let inherited = if upgrade {
        tracing::info!(sock = %sock.display(), "waiting for the running levee's listeners (send it SIGQUIT)");
        Some(receive_listeners(&sock).await?)
    } else {
        None
    };
    let running = start_inheriting(config, inherited).await?;
    // Before the listeners are logged: whoever waits for that line (scripts, tests)
    // and then signals must find the handlers, not the default action, which for
    // SIGHUP and SIGQUIT ends the process.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut quit = signal(SignalKind::quit())?;
    for addr in &running.addrs {
        tracing::info!(%addr, "proxy listening");
    }
    for addr in &running.tls_addrs {
        tracing::info!(%addr, "tls listening");
    }
    if let Some(addr) = running.admin_addr {
        tracing::info!(%addr, "admin listening");
    }
    log_connection_cap(&running.app.snapshot().config.server);
    let _watch = match watch_config(running.app.clone(), path.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot watch the config file; reload with SIGHUP");
            None
        }
    };
    loop {
        tokio::select! {
            _ = quit.recv() => {
                match running.hand_over(&sock).await {
                    Ok(_) => {
                        tracing::info!(sock = %sock.display(), "listeners handed over; draining");
                        let drained = running.shutdown(grace).await;
                        tracing::info!(drained, "stopped after the upgrade");
                        return Ok(());
                    }
                    Err(e) => tracing::error!(error = %e, "binary upgrade failed; still serving"),
                }
            }
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
                if let Some((watch, _)) = &_watch {
                    watch.follow_certs(&running.app);
                }
            }
        }
    }
}
