//! Prometheus metrics: one registry for the life of the process, and the per-upstream
//! and per-backend handles resolved when a [`crate::state::Snapshot`] is built, so the
//! hot path never looks a label up.
//!
//! Gauges that mirror live state (in-flight, queue depth, level, health) are not
//! updated per request: [`Metrics::refresh`] copies them from the snapshot's atomics
//! when `/metrics` is scraped.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Class;

/// Request duration buckets, in seconds: 1 ms to 30 s.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.085, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];
/// Queue wait buckets, in seconds: 100 µs to 5 s.
const WAIT_BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// `code` labels of `levee_responses_total`, in [`BackendMetrics::responses`] order.
const RESPONSE_CODES: [&str; 7] = ["error", "1xx", "2xx", "3xx", "4xx", "5xx", "aborted"];

pub const CLASSES: [Class; 4] = [Class::Low, Class::Normal, Class::High, Class::Critical];

pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    responses: IntCounterVec,
    shed: IntCounterVec,
    would_shed: IntCounterVec,
    pub(crate) inflight: IntGaugeVec,
    pub(crate) limit: IntGaugeVec,
    pub(crate) max_inflight: IntGaugeVec,
    limit_decreases: IntCounterVec,
    load_reports: IntCounterVec,
    pub(crate) queue_depth: IntGaugeVec,
    pub(crate) queue_standing: IntGaugeVec,
    queue_standing_started: IntCounterVec,
    pub(crate) level: IntGaugeVec,
    pub(crate) healthy: IntGaugeVec,
    duration: HistogramVec,
    queue_wait: HistogramVec,
    upstream_errors: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_success: IntGauge,
    level_changes: IntCounterVec,
    spill: IntCounterVec,
    pub(crate) panic: IntGaugeVec,
    pub(crate) zone_healthy: IntGaugeVec,
    pub(crate) ejections: IntGaugeVec,
    pub(crate) prefer_local: IntGaugeVec,
    retries: IntCounterVec,
    pub(crate) ready: IntGauge,
    pub(crate) connections_open: IntGauge,
    connections_refused: IntCounterVec,
    proxy_protocol_errors: IntCounterVec,
    /// `levee_dns_lookups_total{upstream,result}`.
    pub dns_lookups: IntCounterVec,
    /// Requests no upstream serves (unknown host, or no route for the path): 404.
    pub unrouted: IntCounter,
    tls_handshakes: IntCounterVec,
    /// Certificate reloads that failed (the certificates in force stayed).
    pub tls_reload_errors: IntCounter,
    /// notAfter of each certificate pair in force, in Unix seconds, by `name`.
    pub tls_cert_expiry: IntGaugeVec,
    /// Finished spans that never reached a collector (a full queue, a failed export).
    pub trace_spans_dropped: IntCounter,
    /// Spans a collector accepted.
    pub trace_spans_exported: IntCounter,
    /// The scaling signal per upstream (see [`crate::scaling`]), set at each scrape.
    pub(crate) demand_rps: GaugeVec,
    pub(crate) capacity_rps: GaugeVec,
    pub(crate) desired_backends: IntGaugeVec,
}

/// Handles of one upstream, resolved once per snapshot.
pub struct UpstreamMetrics {
    /// Indexed `[ShedReason as usize][Class as usize]`.
    shed: Vec<[IntCounter; 4]>,
    /// Indexed `[ShedReason as usize]`: decisions to shed in shadow mode.
    would_shed: Vec<IntCounter>,
    pub duration: Histogram,
    /// Indexed by `Class as usize`.
    pub queue_wait: [Histogram; 4],
    /// Times the queue began standing.
    pub queue_standing_started: IntCounter,
    pub level_changes: IntCounter,
    /// Requests sent outside the local zone because it was full or down.
    pub spill: IntCounter,
    /// Retries on another backend after a failed connect.
    pub connect_retries: IntCounter,
    /// Retries of idempotent requests that may have reached a backend (budgeted).
    pub replays: IntCounter,
    /// Retries after a status in `retry_on_status` (`kind="status"`).
    pub status_retries: IntCounter,
    /// Backend load reports read, indexed like [`crate::limits::orca::RESULTS`].
    pub load_reports: [IntCounter; 4],
}

impl UpstreamMetrics {
    pub fn shed(&self, reason: ShedReason, class: Class) -> &IntCounter {
        &self.shed[reason as usize][class as usize]
    }

    /// Requests shadow mode sent on that enforcing would have shed for `reason`.
    pub fn would_shed(&self, reason: ShedReason) -> &IntCounter {
        &self.would_shed[reason as usize]
    }

    /// Requests shed, every reason and class (the scaling signal's demand).
    pub fn shed_total(&self) -> u64 {
        self.shed.iter().flatten().map(IntCounter::get).sum()
    }

    /// Retries of every kind: each took another slot and counted as a request again.
    pub fn retries_total(&self) -> u64 {
        self.connect_retries.get() + self.replays.get() + self.status_retries.get()
    }
}

/// Handles of one backend, resolved once per snapshot.
pub struct BackendMetrics {
    /// Indexed by `Class as usize`.
    requests: [IntCounter; 4],
    /// Responses by status class: 1xx..5xx at 1..=5, 0 for no response because the
    /// backend failed (`error`), 6 for no response because the client left (`aborted`).
    pub responses: [IntCounter; 7],
    pub connect_errors: IntCounter,
    pub timeouts: IntCounter,
    /// Decreases of the adaptive limit, indexed by [`crate::limits::adaptive::Signal`].
    pub limit_decreases: [IntCounter; 3],
}

impl BackendMetrics {
    pub fn requests(&self, class: Class) -> &IntCounter {
        &self.requests[class as usize]
    }

    /// Requests sent to this backend, every class (retries included).
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().map(IntCounter::get).sum()
    }
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Only reachable with a malformed metric definition in this file, which the unit
    // test below catches; never with user input.
    r.expect("static metric definition is valid")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let float_gauge = |name: &str, help: &str| {
            let g = must(GaugeVec::new(Opts::new(name, help), &["upstream"]));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let plain_counter = |name: &str, help: &str| {
            let c = must(IntCounter::new(name, help));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = must(HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &["upstream"],
            ));
            must(registry.register(Box::new(h.clone())));
            h
        };
        let build = must(IntGaugeVec::new(
            Opts::new("levee_build_info", "levee's version, as a label; always 1."),
            &["version"],
        ));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        must(registry.register(Box::new(build)));
        let last_success = must(IntGauge::new(
            "levee_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that succeeded.",
        ));
        must(registry.register(Box::new(last_success.clone())));
        let metrics = Metrics {
            requests: counter(
                "levee_requests_total",
                "Requests admitted and sent to a backend.",
                &["upstream", "backend", "class"],
            ),
            responses: counter(
                "levee_responses_total",
                "Backend responses by status class (code=\"error\": the backend failed; code=\"aborted\": the client left first).",
                &["upstream", "backend", "code"],
            ),
            shed: counter(
                "levee_shed_total",
                "Requests answered 503 without reaching a backend.",
                &["upstream", "reason", "priority"],
            ),
            would_shed: counter(
                "levee_would_shed_total",
                "Requests an upstream in shadow mode (limits.mode = \"shadow\") sent to a backend although enforcing its limits would have answered them 503, by the reason it would have given.",
                &["upstream", "reason"],
            ),
            upstream_errors: counter(
                "levee_upstream_errors_total",
                "Failed attempts to reach a backend, by kind.",
                &["upstream", "backend", "kind"],
            ),
            inflight: gauge(
                "levee_inflight",
                "Requests holding a slot of this backend.",
                &["upstream", "backend"],
            ),
            limit: gauge(
                "levee_backend_limit",
                "In-flight limit in force for this backend: its max_inflight, or less while it ramps up (slow start) or while [upstream.adaptive] holds it lower (the lower of the two).",
                &["upstream", "backend"],
            ),
            max_inflight: gauge(
                "levee_backend_max_inflight",
                "The backend's configured ceiling (max_inflight): the limit in force never exceeds it.",
                &["upstream", "backend"],
            ),
            limit_decreases: counter(
                "levee_backend_limit_decreases_total",
                "Decreases of the backend's adaptive limit, by the signal that called for it: latency (p95 above target_p95_ms), queue (the estimated queue inside the backend), load (its reported utilization above load_target).",
                &["upstream", "backend", "signal"],
            ),
            load_reports: counter(
                "levee_load_reports_total",
                "Backend load reports (endpoint-load-metrics) read, by result: accepted, or ignored as malformed, out_of_range (negative, NaN, above 100) or unsupported (not TEXT, or no utilization).",
                &["upstream", "result"],
            ),
            queue_depth: gauge(
                "levee_queue_depth",
                "Requests waiting for a slot.",
                &["upstream"],
            ),
            queue_standing: gauge(
                "levee_queue_standing",
                "1 while the queue stands (waits stayed above queue_target_ms for queue_interval_ms): requests may wait queue_target_ms, not queue_timeout_ms, until it drains.",
                &["upstream"],
            ),
            queue_standing_started: counter(
                "levee_queue_standing_started_total",
                "Times the queue began standing.",
                &["upstream"],
            ),
            level: gauge(
                "levee_load_level",
                "Load level: 0 safe, 1 caution, 2 danger, 3 critical.",
                &["upstream"],
            ),
            healthy: gauge(
                "levee_backend_healthy",
                "1 when the backend may take traffic.",
                &["upstream", "backend", "zone"],
            ),
            level_changes: counter(
                "levee_load_level_changes_total",
                "Changes of the load level.",
                &["upstream"],
            ),
            spill: counter(
                "levee_zone_spill_total",
                "Requests sent outside the local zone because it was full or down.",
                &["upstream"],
            ),
            panic: gauge(
                "levee_panic_mode",
                "1 while too few backends are healthy and all of them take traffic.",
                &["upstream"],
            ),
            zone_healthy: gauge(
                "levee_zone_healthy_backends",
                "Healthy backends per zone.",
                &["upstream", "zone"],
            ),
            prefer_local: gauge(
                "levee_zone_local_preferred",
                "1 while the local zone is healthy enough to be preferred.",
                &["upstream"],
            ),
            retries: counter(
                "levee_retries_total",
                "Requests sent again to another backend: kind=connect (nothing reached the first), replay (idempotent, the first failed before answering) or status (idempotent, the first answered a status in retry_on_status); replay and status within the retry budget.",
                &["upstream", "kind"],
            ),
            ready: {
                let g = must(IntGauge::new(
                    "levee_ready",
                    "1 while levee accepts traffic, 0 while it drains.",
                ));
                must(registry.register(Box::new(g.clone())));
                g
            },
            connections_open: {
                let g = must(IntGauge::new(
                    "levee_connections_open",
                    "Client connections open now.",
                ));
                must(registry.register(Box::new(g.clone())));
                g
            },
            connections_refused: counter(
                "levee_connections_refused_total",
                "Client connections levee did not serve: closed at once (reason=per_ip), or answered 503 and closed at server.max_connections (reason=max_connections) or when out of file descriptors (reason=no_descriptors).",
                &["reason"],
            ),
            proxy_protocol_errors: counter(
                "levee_proxy_protocol_errors_total",
                "Connections closed without an answer because their PROXY protocol header was missing, malformed, not complete within client_header_ms (timeout), or cut short (closed).",
                &["reason"],
            ),
            dns_lookups: counter(
                "levee_dns_lookups_total",
                "Lookups of backend names (address = \"name:port\") by upstream and result: ok, nxdomain, no_records, servfail, timeout, error. A failed lookup keeps the name's last addresses.",
                &["upstream", "result"],
            ),
            unrouted: {
                let c = must(IntCounter::new(
                    "levee_unrouted_total",
                    "Requests answered 404 because no upstream serves their host and path.",
                ));
                must(registry.register(Box::new(c.clone())));
                c
            },
            ejections: gauge(
                "levee_backend_ejected",
                "1 while the backend is ejected after failed requests.",
                &["upstream", "backend"],
            ),
            duration: histogram(
                "levee_request_duration_seconds",
                "Time from admission to the end of the response, admitted requests only.",
                DURATION_BUCKETS,
            ),
            queue_wait: {
                // By class too: waiters are served in class order, so each class waits
                // differently (four values, bounded).
                let h = must(HistogramVec::new(
                    HistogramOpts::new(
                        "levee_queue_wait_seconds",
                        "Time admitted requests spent waiting in the queue, by class (waiters are served in class order).",
                    )
                    .buckets(WAIT_BUCKETS.to_vec()),
                    &["upstream", "class"],
                ));
                must(registry.register(Box::new(h.clone())));
                h
            },
            config_reloads: counter(
                "levee_config_reloads_total",
                "Config loads by result (success, failure).",
                &["result"],
            ),
            config_last_reload_success: last_success,
            tls_handshakes: counter(
                "levee_tls_handshakes_total",
                "TLS handshakes on the TLS listeners by result: ok, timeout (not finished within client_header_ms), closed (the client left first), plain_http (answered 400), error (not TLS, nothing in common, a client alert).",
                &["result"],
            ),
            tls_reload_errors: {
                let c = must(IntCounter::new(
                    "levee_tls_reload_errors_total",
                    "Certificate reloads (SIGHUP, a changed file) that failed; the certificates in force stayed.",
                ));
                must(registry.register(Box::new(c.clone())));
                c
            },
            tls_cert_expiry: gauge(
                "levee_tls_cert_expiry_seconds",
                "When each certificate in force expires (its notAfter), in Unix seconds; name is default or an SNI entry's names joined with \",\". Alert on levee_tls_cert_expiry_seconds - time().",
                &["name"],
            ),
            trace_spans_dropped: plain_counter(
                "levee_trace_spans_dropped_total",
                "Spans of sampled requests that never reached the collector: the export queue was full, or an export failed or was not accepted within 1 s (collector down or slow). Requests are never delayed for tracing.",
            ),
            trace_spans_exported: plain_counter(
                "levee_trace_spans_exported_total",
                "Spans of sampled requests the OTLP collector accepted.",
            ),
            demand_rps: float_gauge(
                "levee_upstream_demand_rps",
                "Requests per second offered to the upstream, shed ones included (admitted less retries, plus sheds), averaged with a 1 s time constant.",
            ),
            capacity_rps: float_gauge(
                "levee_upstream_capacity_rps",
                "Requests per second the backends taking traffic serve with every slot busy: the sum of their limits in force over the upstream's recent median latency (0 until enough requests were seen).",
            ),
            desired_backends: gauge(
                "levee_upstream_desired_backends",
                "Backends the upstream needs: ceil(demand / (capacity per backend * scaling.target_utilization)), at least 1; rises at once, falls only after 5 minutes below (scale-down stabilization). For an HPA or KEDA.",
                &["upstream"],
            ),
            registry,
        };
        // Both results exist from the start, so `increase()` sees the first failure.
        for result in ["success", "failure"] {
            metrics.config_reloads.with_label_values(&[result]);
        }
        for result in TlsHandshake::ALL {
            metrics.tls_handshakes.with_label_values(&[result.as_str()]);
        }
        for reason in crate::proxy_protocol::ProxyProtocolError::ALL {
            metrics
                .proxy_protocol_errors
                .with_label_values(&[reason.as_str()]);
        }
        metrics
    }

    /// The counter of TLS handshakes that ended with `result`.
    pub fn tls_handshakes(&self, result: &str) -> IntCounter {
        self.tls_handshakes.with_label_values(&[result])
    }

    /// The counter of connections refused for `reason` (`per_ip`, `max_connections`,
    /// `no_descriptors`).
    pub fn connections_refused(&self, reason: &str) -> IntCounter {
        self.connections_refused.with_label_values(&[reason])
    }

    /// The counters of `levee_proxy_protocol_errors_total`, indexed like
    /// [`crate::proxy_protocol::ProxyProtocolError::ALL`].
    pub fn proxy_protocol_errors(&self) -> [IntCounter; 4] {
        crate::proxy_protocol::ProxyProtocolError::ALL
            .map(|r| self.proxy_protocol_errors.with_label_values(&[r.as_str()]))
    }

    pub fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let shed = ShedReason::ALL
            .iter()
            .map(|r| {
                CLASSES.map(|c| {
                    self.shed
                        .with_label_values(&[upstream, r.as_str(), c.as_str()])
                })
            })
            .collect();
        let would_shed = ShedReason::ALL
            .iter()
            .map(|r| self.would_shed.with_label_values(&[upstream, r.as_str()]))
            .collect();
        UpstreamMetrics {
            shed,
            would_shed,
            duration: self.duration.with_label_values(&[upstream]),
            queue_wait: CLASSES.map(|c| self.queue_wait.with_label_values(&[upstream, c.as_str()])),
            queue_standing_started: self.queue_standing_started.with_label_values(&[upstream]),
            level_changes: self.level_changes.with_label_values(&[upstream]),
            spill: self.spill.with_label_values(&[upstream]),
            connect_retries: self.retries.with_label_values(&[upstream, "connect"]),
            replays: self.retries.with_label_values(&[upstream, "replay"]),
            status_retries: self.retries.with_label_values(&[upstream, "status"]),
            load_reports: crate::limits::orca::RESULTS
                .map(|r| self.load_reports.with_label_values(&[upstream, r])),
        }
    }

    /// Removes the counter series of a backend that left its upstream (a reload
    /// dropped it, or its name no longer resolves to it), so that backends coming and
    /// going (pods rescheduled under one name) do not grow `/metrics` without bound.
    /// Requests still in flight on it count into handles no longer exported.
    pub fn forget_backend(&self, upstream: &str, backend: &str) {
        for c in CLASSES {
            let _ = self
                .requests
                .remove_label_values(&[upstream, backend, c.as_str()]);
        }
        for code in RESPONSE_CODES {
            let _ = self
                .responses
                .remove_label_values(&[upstream, backend, code]);
        }
        for kind in ["connect", "timeout"] {
            let _ = self
                .upstream_errors
                .remove_label_values(&[upstream, backend, kind]);
        }
        for s in crate::limits::adaptive::Signal::ALL {
            let _ = self
                .limit_decreases
                .remove_label_values(&[upstream, backend, s.as_str()]);
        }
    }

    pub fn backend(&self, upstream: &str, backend: &str) -> BackendMetrics {
        let code = |c: &str| self.responses.with_label_values(&[upstream, backend, c]);
        let err = |k: &str| {
            self.upstream_errors
                .with_label_values(&[upstream, backend, k])
        };
        BackendMetrics {
            requests: CLASSES.map(|c| {
                self.requests
                    .with_label_values(&[upstream, backend, c.as_str()])
            }),
            responses: RESPONSE_CODES.map(code),
            connect_errors: err("connect"),
            timeouts: err("timeout"),
            limit_decreases: crate::limits::adaptive::Signal::ALL.map(|s| {
                self.limit_decreases
                    .with_label_values(&[upstream, backend, s.as_str()])
            }),
        }
    }

    /// The registry in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Why a request was shed. Each is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShedReason {
    /// `low` at caution or above.
    LowPriority = 0,
    /// No free slot, and the level does not let this class wait.
    LevelNoQueue = 1,
    /// No free slot, and the queue is full.
    QueueFull = 2,
    /// Waited `queue_timeout` without getting a slot, or would have: the queue ahead
    /// of it drains slower than that at the rate the backends finish requests.
    QueueTimeout = 3,
    /// A `critical` request took its place in a full queue.
    Displaced = 4,
    /// No backend of the upstream may take traffic.
    NoHealthyBackend = 5,
    /// The queue stands, and the request waited `queue_target` without getting a
    /// slot, or would have: the queue ahead of it drains slower than that. (While the
    /// queue absorbs a burst, the same case is `QueueTimeout`.)
    QueueStanding = 6,
    /// Fairness: shed for want of capacity while its client key held more slots and
    /// queue places than the mean of the keys present, or its place in a full queue
    /// went to a lighter key's request.
    FairShare = 7,
}

impl ShedReason {
    pub const ALL: [ShedReason; 8] = [
        ShedReason::LowPriority,
        ShedReason::LevelNoQueue,
        ShedReason::QueueFull,
        ShedReason::QueueTimeout,
        ShedReason::Displaced,
        ShedReason::NoHealthyBackend,
        ShedReason::QueueStanding,
        ShedReason::FairShare,
    ];

    /// Shed because no backend slot could be had in time, as opposed to for its
    /// priority or for want of healthy backends. Only these keep a standing queue
    /// standing: counting `low_priority` too would let the caution a standing queue
    /// raises keep it standing.
    pub fn is_capacity(self) -> bool {
        match self {
            ShedReason::LevelNoQueue
            | ShedReason::QueueFull
            | ShedReason::QueueTimeout
            | ShedReason::Displaced
            | ShedReason::QueueStanding
            | ShedReason::FairShare => true,
            ShedReason::LowPriority | ShedReason::NoHealthyBackend => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ShedReason::LowPriority => "low_priority",
            ShedReason::LevelNoQueue => "level_no_queue",
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::Displaced => "displaced",
            ShedReason::NoHealthyBackend => "no_healthy_backend",
            ShedReason::QueueStanding => "queue_standing",
            ShedReason::FairShare => "fair_share",
        }
    }
}

/// How a TLS handshake ended; each is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsHandshake {
    /// The session is up.
    Ok = 0,
    /// Not finished within `client_header_ms`.
    Timeout = 1,
    /// The client closed or reset the connection first.
    Closed = 2,
    /// Plain HTTP on a TLS port: answered `400` and closed.
    PlainHttp = 3,
    /// Anything else: not TLS, no protocol or cipher in common, a client alert.
    Error = 4,
}

impl TlsHandshake {
    pub const ALL: [TlsHandshake; 5] = [
        TlsHandshake::Ok,
        TlsHandshake::Timeout,
        TlsHandshake::Closed,
        TlsHandshake::PlainHttp,
        TlsHandshake::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TlsHandshake::Ok => "ok",
            TlsHandshake::Timeout => "timeout",
            TlsHandshake::Closed => "closed",
            TlsHandshake::PlainHttp => "plain_http",
            TlsHandshake::Error => "error",
        }
    }
}

/// `levee_tls_handshakes_total` by result, resolved once.
pub struct TlsHandshakes {
    by_result: [IntCounter; 5],
}

impl TlsHandshakes {
    pub fn new(metrics: &Metrics) -> TlsHandshakes {
        TlsHandshakes {
            by_result: TlsHandshake::ALL.map(|r| metrics.tls_handshakes(r.as_str())),
        }
    }

    pub fn count(&self, result: TlsHandshake) {
        self.by_result[result as usize].inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_of_the_design_is_registered() {
        let m = Metrics::new();
        let _ = m.upstream("u");
        let b = m.backend("u", "127.0.0.1:1");
        b.requests(Class::Normal).inc();
        let text = m.encode();
        for name in [
            "levee_requests_total",
            "levee_build_info",
            "levee_request_duration_seconds",
            "levee_queue_standing_started_total",
            "levee_would_shed_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
