//! The proxy's state: one immutable [`Snapshot`] of routes, upstreams and backends,
//! published through a single `ArcSwap`. Requests `load()` it once and keep it in their
//! context; the only writer builds a whole new value and stores it.
//!
//! Live counters (in-flight per backend, the queue, the level, the window) sit inside
//! the snapshot's [`Upstream`] and [`Backend`] values behind atomics, where admission,
//! the level ticker and metrics all read them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::admission::fairness::{Charge, Fairness};
use crate::admission::level::{queue_level, raw_level, Level, LevelState, Signals, Window};
use crate::admission::queue::WaitQueue;
use crate::config::{self, Affinity, Balance, Class, Config, PriorityMatch};
use crate::health::{BackendHealth, State as HealthState};
use crate::limits::adaptive::{AdaptiveLimit, Cause, Params};
use crate::metrics::{BackendMetrics, Metrics, UpstreamMetrics};
use crate::scaling::{self, Scaling};

/// How often the level ticker samples each upstream.
pub const LEVEL_TICK: Duration = Duration::from_millis(100);

/// One replica, as admission sees it.
pub struct Backend {
    pub address: SocketAddr,
    /// `address` as text, for metric labels and logs.
    pub label: String,
    pub zone: String,
    /// The configured cap (a reload may change it).
    max_inflight: AtomicU32,
    /// Requests holding a slot of this backend. Never above `limit` (see `try_acquire`).
    inflight: AtomicU32,
    /// The limit in force: the lower of the slow-start ramp (`max_inflight` once it is
    /// over) and the adaptive limit.
    limit: AtomicU32,
    /// Most requests in flight since the control tick last read it: whether the
    /// backend used its limit.
    peak: AtomicU32,
    /// The adaptive limit (`max_inflight` without `[upstream.adaptive]`); kept across
    /// reloads with the backend.
    pub adaptive: AdaptiveLimit,
    /// May this backend take traffic now? Written by [`Upstream::refresh_health`] only:
    /// healthy and not ejected, or any backend while the upstream is in panic mode.
    healthy: AtomicBool,
    /// Seed of this backend in rendezvous hashing (from its address, so it is stable).
    pub hash_seed: u64,
    /// In this instance's own zone (`server.zone`)?
    pub local: bool,
    pub health: BackendHealth,
    pub metrics: BackendMetrics,
}

impl Backend {
    pub fn new(cfg: &config::Backend, check: config::Check, metrics: BackendMetrics) -> Backend {
        let label = cfg.address.to_string();
        let health = BackendHealth::new(check, Instant::now());
        let up = health.state() == HealthState::Healthy;
        Backend {
            address: cfg.address,
            hash_seed: crate::hash::hash_str(&label),
            label,
            zone: cfg.zone.clone(),
            max_inflight: AtomicU32::new(cfg.max_inflight),
            inflight: AtomicU32::new(0),
            limit: AtomicU32::new(cfg.max_inflight),
            peak: AtomicU32::new(0),
            adaptive: AdaptiveLimit::new(cfg.max_inflight),
            healthy: AtomicBool::new(up),
            local: false,
            health,
            metrics,
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::SeqCst)
    }

    pub fn max_inflight(&self) -> u32 {
        self.max_inflight.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> u32 {
        self.limit.load(Ordering::Relaxed)
    }

    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Overrides the routing flag until the next health evaluation (tests, tools).
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn has_free_slot(&self) -> bool {
        self.is_healthy() && self.inflight() < self.limit()
    }

    /// Takes one slot if the count is below the limit. The compare-and-swap makes the
    /// cap hard: concurrent callers can never push the count past `limit`.
    pub fn try_acquire(&self) -> bool {
        if !self.is_healthy() {
            return false;
        }
        let limit = self.limit();
        let Ok(n) = self
            .inflight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
        else {
            return false;
        };
        // Mostly one relaxed load: the peak is written only when it grows.
        if n + 1 > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(n + 1, Ordering::Relaxed);
        }
        true
    }

    /// The most requests in flight since the previous call (the control tick's).
    fn take_peak(&self) -> u32 {
        self.peak.swap(self.inflight(), Ordering::Relaxed)
    }

    /// Takes one slot whatever the limit: shadow mode only, which never enforces it
    /// (the count still says what the backend holds).
    pub(crate) fn acquire_over_limit(&self) {
        self.inflight.fetch_add(1, Ordering::SeqCst);
    }

    /// Gives one slot back. Only [`crate::admission::Permit`] calls this.
    pub(crate) fn release_slot(&self) {
        self.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A pool of backends serving some routes, with its queue and load level.
pub struct Upstream {
    pub name: String,
    /// What levee speaks to the backends.
    pub protocol: config::Protocol,
    pub balance: Balance,
    pub affinity: Option<Affinity>,
    pub retry_on_connect_failure: u32,
    pub retry_on_status: Vec<u16>,
    pub idempotency_header: Option<http::HeaderName>,
    pub limits: config::Limits,
    pub levels: config::Levels,
    pub backends: Vec<Arc<Backend>>,
    /// The queue, level, window and retry budget carry over when a reload changes the
    /// upstream's config, so waiting requests and the level survive it.
    pub queue: Arc<WaitQueue<Upstream, Permit>>,
    pub level_state: Arc<LevelState>,
    pub window: Arc<Window>,
    pub metrics: UpstreamMetrics,
    /// Upper bound of `Retry-After`, from `server.retry_after_max_secs`.
    pub retry_after_max: u32,
    /// Requests finished per second over the window (f64 bits), as of the last tick:
    /// read by every shed, so it is computed once per tick, not per shed.
    drain_rate: AtomicU64,
    /// Requests per second the backends that may take traffic finish when all their
    /// slots are busy (capacity / median latency, f64 bits), as of the last tick; 0
    /// until the window holds `min_samples` requests.
    service_rate: AtomicU64,
    /// Round-robin cursor.
    pub(crate) cursor: AtomicUsize,
    /// Start of the current window slot (ticker only).
    slot_started: parking_lot::Mutex<Instant>,
    pub health: config::Health,
    /// `[upstream.adaptive]`: each backend's limit finds itself between `min_inflight`
    /// and its `max_inflight`.
    pub adaptive: Option<config::Adaptive>,
    /// Fewer than `panic_threshold` of the backends are healthy: route to all.
    panic: AtomicBool,
    /// The local zone is healthy enough to be preferred.
    prefer_local: AtomicBool,
    /// Indexes of the local zone's backends, and of the others. Both empty-local when
    /// `server.zone` is unset or no backend is in it (then there is no preference).
    pub local: Vec<usize>,
    pub remote: Vec<usize>,
    /// Every backend index.
    pub all: Vec<usize>,
    pub retry_budget: Arc<RetryBudget>,
    /// `[upstream.fairness]`: client keys and what each holds (carried over reloads).
    pub fairness: Option<Fairness>,
    /// Serializes health re-evaluation (probe tasks, ejections and the tick).
    health_lock: parking_lot::Mutex<()>,
    /// `[upstream.scaling]`.
    pub scaling_config: config::Scaling,
    /// The desired-backends signal; carried over reloads like the level.
    pub scaling: Arc<Scaling>,
}

/// Retries after a request may have reached a backend are paid from this budget:
/// each admitted request deposits `share` of a token, each retry takes one, and a
/// trickle of one token a second keeps low-traffic upstreams able to retry. So retries
/// add at most `share` to the load, and never multiply an overload.
pub struct RetryBudget {
    /// Thousandths of a token.
    milli: std::sync::atomic::AtomicI64,
    deposit: i64,
}

impl RetryBudget {
    /// Most tokens saved up.
    const CAP_MILLI: i64 = 100_000;
    /// Tokens added per control tick (one a second).
    const TRICKLE_MILLI: i64 = 100;

    pub fn new(share: f64) -> RetryBudget {
        RetryBudget {
            milli: std::sync::atomic::AtomicI64::new(10_000),
            deposit: (share * 1000.0).round() as i64,
        }
    }

    pub fn deposit(&self) {
        if self.deposit > 0 && self.milli.load(Ordering::Relaxed) < Self::CAP_MILLI {
            self.milli.fetch_add(self.deposit, Ordering::Relaxed);
        }
    }

    fn trickle(&self) {
        if self.deposit > 0 && self.milli.load(Ordering::Relaxed) < Self::CAP_MILLI {
            self.milli.fetch_add(Self::TRICKLE_MILLI, Ordering::Relaxed);
        }
    }

    /// Takes one token if there is one.
    pub fn try_withdraw(&self) -> bool {
        self.deposit > 0
            && self
                .milli
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                    (m >= 1000).then_some(m - 1000)
                })
                .is_ok()
    }
}

impl Upstream {
    pub fn new(cfg: &config::Upstream, server: &config::Server, metrics: &Metrics) -> Upstream {
        let backends: Vec<Arc<Backend>> = cfg
            .backends
            .iter()
            .map(|b| {
                let mut backend = Backend::new(
                    b,
                    cfg.health.check,
                    metrics.backend(&cfg.name, &b.address.to_string()),
                );
                backend.local = server.zone.as_deref() == Some(b.zone.as_str());
                Arc::new(backend)
            })
            .collect();
        let (mut local, mut remote) = (Vec::new(), Vec::new());
        for (i, b) in backends.iter().enumerate() {
            if b.local {
                local.push(i);
            } else {
                remote.push(i);
            }
        }
        if local.is_empty() || remote.is_empty() {
            // No zone preference to apply.
            local.clear();
            remote = (0..backends.len()).collect();
        }
        Upstream {
            backends,
            name: cfg.name.clone(),
            protocol: cfg.protocol,
            balance: cfg.balance,
            affinity: cfg.affinity.clone(),
            retry_on_connect_failure: cfg.retry_on_connect_failure,
            retry_on_status: cfg.retry_on_status.clone(),
            idempotency_header: cfg
                .idempotency_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            limits: cfg.limits,
            levels: cfg.levels,
            health: cfg.health.clone(),
            adaptive: cfg.adaptive,
            panic: AtomicBool::new(false),
            prefer_local: AtomicBool::new(!local.is_empty()),
            all: (0..cfg.backends.len()).collect(),
            local,
            remote,
            retry_budget: Arc::new(RetryBudget::new(cfg.retry_budget)),
            fairness: cfg.fairness.as_ref().map(Fairness::new),
            health_lock: parking_lot::Mutex::new(()),
            scaling_config: cfg.scaling,
            scaling: Arc::new(Scaling::default()),
            queue: Arc::new(WaitQueue::default()),
            level_state: Arc::new(LevelState::default()),
            window: Arc::new(Window::new(cfg.levels.window)),
            metrics: metrics.upstream(&cfg.name),
            retry_after_max: u32::try_from(server.retry_after_max_secs).unwrap_or(u32::MAX),
            drain_rate: AtomicU64::new(0),
            service_rate: AtomicU64::new(0),
            cursor: AtomicUsize::new(0),
            slot_started: parking_lot::Mutex::new(Instant::now()),
        }
    }

    /// The next version of `previous` for a changed config: backends with the same
    /// address and zone keep their object (in-flight count, health, ejections; their
    /// limit follows the new config), and the queue, level, window and retry budget
    /// carry over. Requests admitted under `previous` finish there and release their
    /// slots into the shared backends; a removed backend finishes its requests and then
    /// goes away with the old version.
    pub fn renew(
        cfg: &config::Upstream,
        server: &config::Server,
        metrics: &Metrics,
        previous: &Upstream,
    ) -> Upstream {
        let mut next = Upstream::new(cfg, server, metrics);
        for (i, b) in cfg.backends.iter().enumerate() {
            let same = previous
                .backends
                .iter()
                .find(|p| p.address == b.address && p.zone == b.zone);
            match same {
                Some(p) => {
                    // The limit follows at the `refresh_health` below (ramp-up included);
                    // the adaptive limit keeps what it learned, within the new bounds.
                    p.max_inflight.store(b.max_inflight, Ordering::Relaxed);
                    p.adaptive
                        .configure(next.adaptive_params(p).as_ref(), b.max_inflight);
                    next.backends[i] = p.clone();
                }
                // New to a running upstream: it ramps up once healthy (slow start).
                None => next.backends[i].health.join_running(),
            }
        }
        next.queue = previous.queue.clone();
        next.level_state = previous.level_state.clone();
        if previous.levels.window == cfg.levels.window {
            next.window = previous.window.clone();
        }
        next.retry_budget = previous.retry_budget.clone();
        next.scaling = previous.scaling.clone();
        Fairness::carry(&mut next.fairness, &previous.fairness);
        next.refresh_health(Instant::now());
        next
    }

    /// The level admission acts on: the published level, raised at once when the queue
    /// now calls for a higher one, so that a burst does not wait for the next tick. The
    /// raise is published (and then held like any level, see [`LevelState::raise`]),
    /// so the level does not follow each request in and out of the queue.
    pub fn level(&self) -> Level {
        let published = self.level_state.get();
        let instant = queue_level(
            &self.levels,
            self.limits.queue_depth,
            self.waiting(),
            self.queue.is_standing(),
        );
        if instant <= published {
            return published;
        }
        if let Some((from, to)) = self.level_state.raise(instant) {
            self.metrics.level_changes.inc();
            tracing::info!(
                upstream = %self.name,
                from = %from,
                to = %to,
                queue = self.queue.len(),
                standing = self.queue.is_standing(),
                "load level changed"
            );
        }
        instant
    }

    /// The queue's drain rate as of the last tick, in requests per second.
    pub fn drain_per_sec(&self) -> f64 {
        f64::from_bits(self.drain_rate.load(Ordering::Relaxed))
    }

    /// How fast the backends finish requests when busy, as of the last tick, in
    /// requests per second (0: not known yet). A request at position `n` in the queue
    /// can expect to wait about `n / service_rate`.
    pub fn service_rate(&self) -> f64 {
        f64::from_bits(self.service_rate.load(Ordering::Relaxed))
    }

    pub fn inflight(&self) -> u32 {
        self.backends.iter().map(|b| b.inflight()).sum()
    }

    /// Sum of the current limits of the backends that may take traffic.
    pub fn capacity(&self) -> u32 {
        self.backends
            .iter()
            .filter(|b| b.is_healthy())
            .map(|b| b.limit())
            .sum()
    }

    /// In panic mode: too few healthy backends, so all of them take traffic.
    pub fn in_panic(&self) -> bool {
        self.panic.load(Ordering::Relaxed)
    }

    /// Whether requests go to the local zone first.
    pub fn prefers_local(&self) -> bool {
        !self.local.is_empty() && self.prefer_local.load(Ordering::Relaxed)
    }

    /// Records a request's outcome for passive health: a streak of failures ejects the
    /// backend, unless `max_ejected_share` of the upstream is ejected already.
    pub fn record_outcome(&self, backend: usize, failed: bool) {
        let b = &self.backends[backend];
        if !b.health.record_request(failed, &self.health) {
            return;
        }
        let ejected = self
            .backends
            .iter()
            .filter(|b| b.health.is_ejected())
            .count();
        let allowed = (self.health.max_ejected_share * self.backends.len() as f64).floor() as usize;
        if ejected >= allowed {
            tracing::warn!(upstream = %self.name, backend = %b.label, ejected, allowed,
                "backend keeps failing but is not ejected: max_ejected_share reached");
            return;
        }
        let now = Instant::now();
        if let Some(time) = b.health.eject(now, &self.health) {
            tracing::warn!(upstream = %self.name, backend = %b.label, zone = %b.zone,
                eject_ms = time.as_millis() as u64, ejections = b.health.ejections(),
                "backend ejected after failed requests");
            self.refresh_health(now);
        }
    }

    /// Re-evaluates every backend's health and publishes the routing flags, limits,
    /// panic mode and zone preference. Called by probes, ejections and every tick.
    pub fn refresh_health(&self, now: Instant) {
        let _serial = self.health_lock.lock();
        let mut up = 0usize;
        let mut local_up = 0usize;
        for b in &self.backends {
            let (change, ramp) = b.health.evaluate(now, &self.health, b.max_inflight());
            b.set_limit(ramp.min(b.adaptive.limit()));
            if let Some(c) = change {
                if c.to == HealthState::Healthy {
                    tracing::info!(upstream = %self.name, backend = %b.label, zone = %b.zone,
                        from = c.from.as_str(), "backend healthy");
                } else {
                    tracing::warn!(upstream = %self.name, backend = %b.label, zone = %b.zone,
                        from = c.from.as_str(), to = c.to.as_str(), "backend not taking traffic");
                }
            }
            if b.health.state() == HealthState::Healthy {
                up += 1;
                local_up += usize::from(b.local);
            }
        }
        let n = self.backends.len();
        // Before the first probe of any of them (a new upstream, just loaded) nothing
        // is known: they are routable until a probe says otherwise, and that is not
        // panic mode. levee's start waits for this first round before it serves.
        let unprobed = self.backends.iter().all(|b| !b.health.probed());
        let panic = !unprobed && n > 0 && (up as f64) < self.health.panic_threshold * n as f64;
        if panic != self.panic.swap(panic, Ordering::Relaxed) {
            if panic {
                tracing::error!(upstream = %self.name, healthy = up, backends = n,
                    "panic mode: too few healthy backends, routing to all");
            } else {
                tracing::info!(upstream = %self.name, healthy = up, backends = n, "panic mode over");
            }
        }
        for b in &self.backends {
            b.healthy.store(
                unprobed || panic || b.health.state() == HealthState::Healthy,
                Ordering::Relaxed,
            );
        }
        if !self.local.is_empty() {
            let share = local_up as f64 / self.local.len() as f64;
            let prefer = share >= self.health.local_zone_min_healthy && local_up > 0;
            if prefer != self.prefer_local.swap(prefer, Ordering::Relaxed) {
                tracing::warn!(upstream = %self.name, local_healthy = local_up,
                    local_backends = self.local.len(), prefer_local = prefer,
                    "local zone preference changed");
            }
        }
    }

    /// The adaptive controller's bounds for backend `b`; `None` without `[upstream.adaptive]`.
    pub fn adaptive_params(&self, b: &Backend) -> Option<Params> {
        self.adaptive.map(|a| Params {
            target_p95: a.target_p95,
            min: a.min_inflight.min(b.max_inflight()),
            max: b.max_inflight(),
            load_target: a.load_target,
        })
    }

    /// One control tick of every backend's adaptive limit; the limit in force follows
    /// at the next [`Self::refresh_health`]. Each decrease is counted by its signal.
    fn adapt(&self, now: Instant) {
        for b in &self.backends {
            let peak = b.take_peak();
            let Some(params) = self.adaptive_params(b) else {
                if b.adaptive.limit() != b.max_inflight() {
                    b.adaptive.configure(None, b.max_inflight());
                }
                continue;
            };
            let Some(change) = b.adaptive.tick(now, &params, peak, b.limit()) else {
                continue;
            };
            if let Cause::Down(signal) = change.cause {
                b.metrics.limit_decreases[signal as usize].inc();
            }
            let reading = b.adaptive.reading();
            tracing::debug!(upstream = %self.name, backend = %b.label, from = change.from,
                to = change.to, cause = ?change.cause,
                p95_ms = reading.p95.map(|d| d.as_secs_f64() * 1000.0),
                floor_ms = reading.floor.map(|d| d.as_secs_f64() * 1000.0),
                queue = reading.queue, load = reading.load, "adaptive limit changed");
            if change.to == params.min
                && change.from > params.min
                && change.cause == Cause::Down(crate::limits::adaptive::Signal::Latency)
            {
                tracing::warn!(upstream = %self.name, backend = %b.label,
                    min_inflight = params.min,
                    p95_ms = reading.p95.map(|d| d.as_secs_f64() * 1000.0),
                    target_p95_ms = params.target_p95.as_secs_f64() * 1000.0,
                    "adaptive limit at min_inflight: the backend's p95 stays above target_p95_ms");
            }
        }
    }

    /// Whether responses' load reports are read (and stripped): `load_target` is set.
    pub fn reads_load_reports(&self) -> bool {
        self.adaptive.is_some_and(|a| a.load_target.is_some())
    }

    /// Takes the load report (`endpoint-load-metrics`) out of a response of backend
    /// `backend`: the header never reaches the client; a report levee can use feeds the
    /// backend's adaptive limit, and every one is counted by its result.
    pub fn take_load_report(&self, backend: usize, headers: &mut http::HeaderMap) {
        let Some(report) = crate::limits::orca::take(headers) else {
            return;
        };
        self.metrics.load_reports[crate::limits::orca::result_index(&report)].inc();
        if let (Ok(utilization), Some(b)) = (report, self.backends.get(backend)) {
            b.adaptive.record_load(utilization);
        }
    }

    /// Requests offered since start, from the counters the request path keeps anyway:
    /// sent to a backend less retries (each counted again as a request), plus shed.
    /// Drops when a reload removes a backend (its count goes with it): the scaling
    /// signal reads that as a reset.
    fn offered(&self) -> u64 {
        let sent: u64 = self
            .backends
            .iter()
            .map(|b| b.metrics.requests_total())
            .sum();
        (sent + self.metrics.shed_total()).saturating_sub(self.metrics.retries_total())
    }

    /// Whether every backend has had its first probe (true without checks).
    pub fn probed(&self) -> bool {
        self.backends.iter().all(|b| b.health.probed())
    }

    /// One tick of the level controller: rotate the window when a slot has passed,
    /// end the queue's standing state if it has drained, read the signals, update the
    /// level. Returns the change, if any.
    pub fn tick(&self, now: Instant) -> Option<(Level, Level)> {
        self.adapt(now);
        self.refresh_health(now);
        self.retry_budget.trickle();
        {
            let mut started = self.slot_started.lock();
            if now.duration_since(*started) >= self.window.slot_len() {
                self.window.rotate();
                *started = now;
            }
        }
        let capacity = self.capacity();
        let window = self.window.stats();
        self.drain_rate
            .store(window.drain_per_sec.to_bits(), Ordering::Relaxed);
        let service_rate = match window.p50 {
            Some(p50) if capacity > 0 && window.done >= u64::from(self.levels.min_samples) => {
                f64::from(capacity) / p50.as_secs_f64().max(1e-6)
            }
            _ => 0.0,
        };
        self.service_rate
            .store(service_rate.to_bits(), Ordering::Relaxed);
        self.scaling.update(
            now,
            scaling::Sample {
                offered: self.offered(),
                capacity_rps: service_rate,
                healthy: self.backends.iter().filter(|b| b.is_healthy()).count(),
                configured: self.backends.len(),
                target_utilization: self.scaling_config.target_utilization,
            },
        );
        self.settle_queue(now);
        let signals = Signals {
            utilization: if capacity == 0 {
                0.0
            } else {
                f64::from(self.inflight()) / f64::from(capacity)
            },
            queue: self.queue.take_peak().max(self.waiting()),
            queue_depth: self.limits.queue_depth,
            standing: self.queue.is_standing(),
            turned_away: self.queue.take_turned_away(),
            window,
        };
        let raw = raw_level(&self.levels, &signals);
        let change = self.level_state.update(raw, now, self.levels.cooldown);
        if change.is_some() {
            self.metrics.level_changes.inc();
        }
        change
    }
}

/// Everything a request needs, built whole from one [`Config`].
pub struct Snapshot {
    pub config: Arc<Config>,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Host and path to upstream index.
    router: crate::route::Router,
    /// `levee_unrouted_total`: requests no upstream serves.
    pub unrouted: prometheus::IntCounter,
}

/// One slot of one backend, held from admission until the response ends. Dropping it
/// gives the slot back, or hands it straight to the oldest waiter that can use it
/// (its methods and release are `admission`'s).
pub struct Permit {
    pub(crate) upstream: std::mem::ManuallyDrop<Arc<Upstream>>,
    pub(crate) backend: usize,
    /// How long the request waited in the queue (zero when a slot was free).
    pub queued: Duration,
    /// Shadow mode: why enforcing the limits would have shed this request.
    pub would_shed: Option<crate::metrics::ShedReason>,
    /// Fairness: the request's hold on its client key's count, released with the slot.
    pub(crate) charge: Option<Charge>,
}

impl Snapshot {
    /// Copies live state into `m`'s gauges; called before each scrape. The gauges are
    /// cleared first, so backends and zones a reload removed do not linger.
    pub fn refresh_metrics(&self, m: &Metrics, ready: bool, open_connections: usize) {
        m.ready.set(i64::from(ready));
        m.connections_open.set(open_connections as i64);
        for g in [
            &m.inflight,
            &m.limit,
            &m.max_inflight,
            &m.queue_depth,
            &m.queue_standing,
            &m.level,
            &m.healthy,
            &m.panic,
            &m.zone_healthy,
            &m.ejections,
            &m.prefer_local,
            &m.desired_backends,
        ] {
            g.reset();
        }
        m.demand_rps.reset();
        m.capacity_rps.reset();
        for up in &self.upstreams {
            let name = up.name.as_str();
            m.queue_depth
                .with_label_values(&[name])
                .set(i64::from(up.queue.len()));
            m.queue_standing
                .with_label_values(&[name])
                .set(i64::from(up.queue.is_standing()));
            m.level.with_label_values(&[name]).set(up.level() as i64);
            m.panic
                .with_label_values(&[name])
                .set(i64::from(up.in_panic()));
            m.prefer_local
                .with_label_values(&[name])
                .set(i64::from(up.prefers_local()));
            let signal = up.scaling.reading();
            m.demand_rps
                .with_label_values(&[name])
                .set(signal.demand_rps);
            m.capacity_rps
                .with_label_values(&[name])
                .set(signal.capacity_rps);
            m.desired_backends
                .with_label_values(&[name])
                .set(i64::from(signal.desired_backends));
            let mut zones: Vec<(&str, i64)> = Vec::new();
            for b in &up.backends {
                let healthy = i64::from(b.health.state() == crate::health::State::Healthy);
                match zones.iter_mut().find(|(z, _)| *z == b.zone.as_str()) {
                    Some((_, n)) => *n += healthy,
                    None => zones.push((b.zone.as_str(), healthy)),
                }
            }
            for (zone, n) in zones {
                m.zone_healthy.with_label_values(&[name, zone]).set(n);
            }
            for b in &up.backends {
                let addr = b.label.as_str();
                m.ejections
                    .with_label_values(&[name, addr])
                    .set(i64::from(b.health.is_ejected()));
                m.inflight
                    .with_label_values(&[name, addr])
                    .set(i64::from(b.inflight()));
                m.limit
                    .with_label_values(&[name, addr])
                    .set(i64::from(b.limit()));
                m.max_inflight
                    .with_label_values(&[name, addr])
                    .set(i64::from(b.max_inflight()));
                m.healthy
                    .with_label_values(&[name, addr, b.zone.as_str()])
                    .set(i64::from(b.health.state() == crate::health::State::Healthy));
            }
        }
    }

    pub fn build(config: Config, metrics: &Metrics) -> Snapshot {
        Snapshot::build_from(config, None, metrics)
    }

    /// Builds a snapshot, reusing the live state of every upstream of `previous` whose
    /// config is unchanged.
    pub fn build_from(config: Config, previous: Option<&Snapshot>, metrics: &Metrics) -> Snapshot {
        let server_same = |prev: &Snapshot| {
            prev.config.server.retry_after_max_secs == config.server.retry_after_max_secs
                && prev.config.server.zone == config.server.zone
        };
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                let prev = previous.and_then(|p| {
                    let i = p.config.upstreams.iter().position(|o| o.name == u.name)?;
                    Some((p, i))
                });
                match prev {
                    // Unchanged: the very same object, probes and all.
                    Some((p, i)) if p.config.upstreams[i] == *u && server_same(p) => {
                        p.upstreams[i].clone()
                    }
                    Some((p, i)) => {
                        Arc::new(Upstream::renew(u, &config.server, metrics, &p.upstreams[i]))
                    }
                    None => Arc::new(Upstream::new(u, &config.server, metrics)),
                }
            })
            .collect();
        let router = crate::route::Router::new(
            config
                .upstreams
                .iter()
                .map(|u| (u.hosts.as_slice(), u.routes.as_slice())),
        );
        Snapshot {
            config: Arc::new(config),
            upstreams,
            router,
            unrouted: metrics.unrouted.clone(),
        }
    }

    /// Whether routing reads the request's host (some upstream names hosts).
    pub fn routes_by_host(&self) -> bool {
        self.router.by_host()
    }

    /// The upstream that serves `path` on `host` (as the request gave it, port and
    /// case included; `None`: the request named none).
    pub fn route(&self, host: Option<&[u8]>, path: &str) -> Option<&Arc<Upstream>> {
        self.router
            .route(host, path)
            .and_then(|i| self.upstreams.get(i))
    }

    /// The request's class: the first `[[priority]]` rule that matches, else `normal`.
    pub fn classify(&self, path: &str, headers: &http::HeaderMap) -> Class {
        for rule in &self.config.priorities {
            let hit = match &rule.matcher {
                PriorityMatch::PathPrefix(p) => path.starts_with(p.as_str()),
                PriorityMatch::Header(name, value) => headers
                    .get_all(name.as_str())
                    .iter()
                    .any(|v| v.as_bytes() == value.as_bytes()),
            };
            if hit {
                return rule.class;
            }
        }
        Class::Normal
    }
}

/// The one place the live snapshot is published.
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Runs the level controller of every upstream of the current snapshot every
/// [`LEVEL_TICK`], logging each change, until the returned handle is aborted.
pub fn spawn_level_ticker(shared: SharedSnapshot) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(LEVEL_TICK);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let snapshot = shared.load();
            let now = Instant::now();
            for up in &snapshot.upstreams {
                if let Some((from, to)) = up.tick(now) {
                    let stats = up.window.stats();
                    tracing::info!(
                        upstream = %up.name,
                        from = %from,
                        to = %to,
                        inflight = up.inflight(),
                        capacity = up.capacity(),
                        queue = up.queue.len(),
                        p95_ms = stats.p95.map(|d| d.as_secs_f64() * 1000.0),
                        errors = stats.errors,
                        requests = stats.done,
                        "load level changed"
                    );
                }
            }
        }
    })
}
