//! The config file exactly as written: a serde mirror of levee's TOML schema.
//!
//! Every table denies unknown keys, so a typo is an error rather than a silently
//! ignored setting. Every key is an `Option`, required ones included: serde stops at
//! the first problem, so presence, ranges and cross-references are checked by
//! validation in the parent module, which reports all of them at once. Numbers keep
//! TOML's own types (`i64`, `f64`) and addresses stay strings for the same reason: a
//! negative count or a host name becomes a specific error with its key path instead
//! of a generic type error. Durations are integers of milliseconds in keys ending in
//! `_ms`.
//!
//! A table is read only from a TOML table: serde's derived structs would also take an
//! array, its elements as the fields in order (`fairness = ["client_ip"]`), which no
//! operator means and whose errors would name keys the file does not have.
//!
//! Nothing here holds defaults or meaning; see [`super::Config`] for both.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Reads a `T` from a table only.
struct Table<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Table<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Only<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Only(PhantomData)).map(Table)
    }
}

/// A key whose value is a table.
fn table<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    Table::deserialize(d).map(|t| Some(t.0))
}

/// A key whose value is an array of tables.
fn tables<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    struct Each<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for Each<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of tables")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut all = Vec::new();
            while let Some(Table(t)) = seq.next_element::<Table<T>>()? {
                all.push(t);
            }
            Ok(all)
        }
    }
    d.deserialize_seq(Each(PhantomData)).map(Some)
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    /// `[server]`; required.
    #[serde(default, deserialize_with = "table")]
    pub server: Option<Server>,
    /// `[[upstream]]`; at least one.
    #[serde(default, deserialize_with = "tables")]
    pub upstream: Option<Vec<Upstream>>,
    /// `[[priority]]`; optional, in order of precedence.
    #[serde(default, deserialize_with = "tables")]
    pub priority: Option<Vec<Priority>>,
}

/// `[server]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Socket addresses to accept clients on; required, at least one.
    pub listen: Option<Vec<String>>,
    /// Worker threads.
    pub threads: Option<i64>,
    /// `per_thread` or `multi_thread`.
    pub runtime: Option<String>,
    /// This instance's zone.
    pub zone: Option<String>,
    /// Admin listener address.
    pub admin_listen: Option<String>,
    /// Drain time on SIGTERM.
    pub grace_period_ms: Option<i64>,
    /// Largest request body; 0 = no limit.
    pub max_request_body_bytes: Option<i64>,
    /// Largest request head (request line and header fields).
    pub max_header_bytes: Option<i64>,
    /// Upper bound of `Retry-After`.
    pub retry_after_max_secs: Option<i64>,
    /// Unix socket where a new levee (`run --upgrade`) takes over the listeners.
    pub upgrade_sock: Option<String>,
    /// Most client connections open at once; 0 = no cap.
    pub max_connections: Option<i64>,
    /// Most client connections open at once from one IP address; 0 = no cap.
    pub max_connections_per_ip: Option<i64>,
    /// One info line per request (target `levee::access`).
    pub access_log: Option<bool>,
    /// Every listener expects a PROXY protocol (v1 or v2) header first.
    pub proxy_protocol: Option<bool>,
    /// CIDRs of peers whose `X-Forwarded-For` and `X-Request-Id` are believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// `[server.timeouts]`
    #[serde(default, deserialize_with = "table")]
    pub timeouts: Option<Timeouts>,
    /// `[server.tls]`
    #[serde(default, deserialize_with = "table")]
    pub tls: Option<Tls>,
    /// `[server.dns]`
    #[serde(default, deserialize_with = "table")]
    pub dns: Option<Dns>,
    /// `[server.tracing]`
    #[serde(default, deserialize_with = "table")]
    pub tracing: Option<Tracing>,
}

/// `[server.tracing]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// OTLP/HTTP collector URL (`http://host:port`, `/v1/traces` appended unless given).
    pub otlp_endpoint: Option<String>,
    /// Share of requests without a trace context that start a sampled trace.
    pub sample_ratio: Option<f64>,
    /// The spans' `service.name`.
    pub service_name: Option<String>,
}

/// `[server.dns]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// `IP:port` of the nameservers; none: the system's (resolv.conf).
    pub nameservers: Option<Vec<String>>,
    /// How often names are looked up again.
    pub refresh_ms: Option<i64>,
    /// Longest wait for one lookup.
    pub timeout_ms: Option<i64>,
}

/// `[server.timeouts]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Backend connect.
    pub connect_ms: Option<i64>,
    /// Each read from a backend.
    pub read_ms: Option<i64>,
    /// Each write to a backend.
    pub write_ms: Option<i64>,
    /// Whole non-streaming response.
    pub response_ms: Option<i64>,
    /// Gap inside a streaming response.
    pub stream_idle_ms: Option<i64>,
    /// Each read of a client's request header.
    pub client_header_ms: Option<i64>,
    /// Client keep-alive; whole seconds.
    pub client_idle_ms: Option<i64>,
    /// Pooled backend connection idle time.
    pub upstream_idle_ms: Option<i64>,
}

/// One `[[upstream]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Required.
    pub name: Option<String>,
    /// Host names (`api.example.com`, `*.example.com`); none: any host.
    pub hosts: Option<Vec<String>>,
    /// Path prefixes; required, at least one.
    pub routes: Option<Vec<String>>,
    /// `h1` or `h2`.
    pub protocol: Option<String>,
    /// `least_inflight`, `round_robin` or `consistent_hash`.
    pub balance: Option<String>,
    /// `header:NAME` or `cookie:NAME`.
    pub affinity: Option<String>,
    /// Other backends tried when connecting fails.
    pub retry_on_connect_failure: Option<i64>,
    /// Share of recent requests that may be retries after reaching a backend.
    pub retry_budget: Option<f64>,
    /// Backend statuses that send an idempotent request to another backend.
    pub retry_on_status: Option<Vec<i64>>,
    /// A request header that makes any method idempotent (e.g. `idempotency-key`).
    pub idempotency_header: Option<String>,
    /// `[upstream.limits]`
    #[serde(default, deserialize_with = "table")]
    pub limits: Option<Limits>,
    /// `[upstream.levels]`
    #[serde(default, deserialize_with = "table")]
    pub levels: Option<Levels>,
    /// `[upstream.health]`
    #[serde(default, deserialize_with = "table")]
    pub health: Option<Health>,
    /// `[upstream.fairness]`
    #[serde(default, deserialize_with = "table")]
    pub fairness: Option<Fairness>,
    /// `[upstream.adaptive]`
    #[serde(default, deserialize_with = "table")]
    pub adaptive: Option<Adaptive>,
    /// `[upstream.scaling]`
    #[serde(default, deserialize_with = "table")]
    pub scaling: Option<Scaling>,
    /// `[[upstream.backend]]`; at least one.
    #[serde(default, deserialize_with = "tables")]
    pub backend: Option<Vec<Backend>>,
}

/// `[upstream.limits]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Per-backend in-flight cap.
    pub max_inflight: Option<i64>,
    /// Per-upstream queue size; 0 = no queue.
    pub queue_depth: Option<i64>,
    /// Longest wait in the queue.
    pub queue_timeout_ms: Option<i64>,
    /// Allowed wait once the queue stands.
    pub queue_target_ms: Option<i64>,
    /// How long waits must stay above the target before the queue stands.
    pub queue_interval_ms: Option<i64>,
    /// `enforce` or `shadow`.
    pub mode: Option<String>,
}

/// `[upstream.fairness]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fairness {
    /// `header:NAME` or `client_ip`; required.
    pub key: Option<String>,
}

/// `[upstream.scaling]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scaling {
    /// Utilization each backend should run at; sizes the desired-backends figure.
    pub target_utilization: Option<f64>,
}

/// `[upstream.adaptive]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adaptive {
    /// The p95 each backend's limit is held under; required.
    pub target_p95_ms: Option<i64>,
    /// The lowest limit; required.
    pub min_inflight: Option<i64>,
    /// Utilization a backend may report before its limit falls.
    pub load_target: Option<f64>,
}

/// `[upstream.levels]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Levels {
    /// When present, only the signals it names are used at caution.
    #[serde(default, deserialize_with = "table")]
    pub caution: Option<Thresholds>,
    /// When present, only the signals it names are used at danger.
    #[serde(default, deserialize_with = "table")]
    pub danger: Option<Thresholds>,
    /// Time below a level before it is left.
    pub cooldown_ms: Option<i64>,
    /// Window of the p95 and error rate.
    pub window_ms: Option<i64>,
    /// Requests in the window before p95 and error rate count.
    pub min_samples: Option<i64>,
}

/// `caution = { … }` or `danger = { … }`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// In-flight / capacity, in (0, 1]; caution only.
    pub utilization: Option<f64>,
    /// Requests waiting.
    pub queue: Option<i64>,
    /// p95 of the queue wait.
    pub queue_wait_ms: Option<i64>,
    /// p95 of the backend response time.
    pub p95_ms: Option<i64>,
    /// Share of failed requests, in [0, 1].
    pub error_rate: Option<f64>,
}

/// `[upstream.health]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Probe path; no active checks when absent.
    pub path: Option<String>,
    /// Time between probes.
    pub interval_ms: Option<i64>,
    /// Probe timeout; at most the interval.
    pub timeout_ms: Option<i64>,
    /// Good probes in a row to become healthy.
    pub rise: Option<i64>,
    /// Failed probes in a row to become unhealthy.
    pub fall: Option<i64>,
    /// Failed requests in a row before ejection; 0 disables.
    pub eject_after_failures: Option<i64>,
    /// First ejection time.
    pub eject_ms: Option<i64>,
    /// Ramp-up time of a recovered backend.
    pub slow_start_ms: Option<i64>,
    /// `http` (needs `path`), `tcp` or `none`.
    pub check: Option<String>,
    /// Longest ejection, however often a backend is ejected.
    pub eject_max_ms: Option<i64>,
    /// Whether 5xx responses count as failures for passive ejection.
    pub eject_on_5xx: Option<bool>,
    /// Largest share of an upstream's backends ejected at once.
    pub max_ejected_share: Option<f64>,
    /// Below this share of healthy backends, route to all of them.
    pub panic_threshold: Option<f64>,
    /// Below this healthy share, the local zone stops being preferred.
    pub local_zone_min_healthy: Option<f64>,
}

/// One `[[upstream.backend]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Literal `IP:port`; required.
    pub address: Option<String>,
    /// Failure domain; `default` when absent.
    pub zone: Option<String>,
    /// Override of `limits.max_inflight`.
    pub max_inflight: Option<i64>,
}

/// One `[[priority]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Priority {
    /// `match = { … }`; required.
    #[serde(rename = "match")]
    #[serde(default, deserialize_with = "table")]
    pub matcher: Option<Match>,
    /// `critical`, `high`, `normal` or `low`; required.
    pub class: Option<String>,
}

/// `match = { path_prefix = "…" }` or `match = { header = "name:value" }`: exactly one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Request path prefix, starting with `/`.
    pub path_prefix: Option<String>,
    /// `name:value`, value matched exactly.
    pub header: Option<String>,
}

/// `[server.tls]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Socket addresses of the TLS listeners; required, at least one.
    pub listen: Option<Vec<String>>,
    /// PEM certificate chain served when no `sni` entry matches; required.
    pub cert: Option<String>,
    /// PEM private key of `cert`; required.
    pub key: Option<String>,
    /// `[[server.tls.sni]]`: certificates chosen by the client's server name.
    pub sni: Option<Vec<Sni>>,
}

/// One `[[server.tls.sni]]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sni {
    /// Server names (`api.example.com`, `*.example.com`); required, at least one.
    pub names: Option<Vec<String>>,
    /// PEM certificate chain; required.
    pub cert: Option<String>,
    /// PEM private key of `cert`; required.
    pub key: Option<String>,
}
