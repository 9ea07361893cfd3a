//! levee's configuration: the TOML file model ([`file`]) validated *whole* into the
//! typed [`Config`] the rest of the proxy uses.
//!
//! Validation never stops at the first problem: [`parse`] collects every error, each
//! naming the key path it is about (`upstream[0].limits.max_inflight: must be at least 1`),
//! so an operator fixes a broken file in one pass. Nothing here panics on user input.

pub mod file;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// One problem in a config file, tied to the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// Dotted key path, with indexes for arrays of tables: `upstream[1].backend[0].address`.
    /// Empty for whole-file problems (unreadable file, TOML syntax error without a key).
    pub path: String,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_errors(.0))]
pub struct ConfigErrors(pub Vec<ConfigError>);

fn display_errors(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub server: Server,
    /// In file order. Names are unique.
    pub upstreams: Vec<Upstream>,
    /// In file order; the first rule that matches a request sets its class.
    pub priorities: Vec<PriorityRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// At least one.
    pub listen: Vec<SocketAddr>,
    /// Worker threads, at least 1.
    pub threads: usize,
    /// This instance's zone; routing prefers backends in it. `None`: no preference.
    pub zone: Option<String>,
    /// Admin listener (/metrics, /status, /healthz, /readyz, dashboard). `None`: disabled.
    pub admin_listen: Option<SocketAddr>,
    pub grace_period: Duration,
    pub timeouts: Timeouts,
    /// Largest request body accepted, in bytes (413 beyond). 0 means no limit.
    pub max_request_body_bytes: u64,
    /// Upper bound of the `Retry-After` levee computes, in seconds (at least 1).
    pub retry_after_max_secs: u64,
}

/// Every wait levee makes is bounded by one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a backend.
    pub connect: Duration,
    /// Longest wait for any single read from a backend (headers or a body chunk).
    pub read: Duration,
    /// Longest wait for any single write to a backend.
    pub write: Duration,
    /// Whole-response deadline for responses that are not streams (not `text/event-stream`).
    pub response: Duration,
    /// Longest gap between two chunks of a streaming response (`text/event-stream`).
    pub stream_idle: Duration,
    /// Longest wait for each read of a client's request header.
    pub client_header: Duration,
    /// Idle keep-alive time of a client connection between requests.
    pub client_idle: Duration,
    /// Idle time of a pooled backend connection before it is closed.
    pub upstream_idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balance {
    LeastInflight,
    RoundRobin,
    ConsistentHash,
}

/// Where the affinity key of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affinity {
    /// Header name, lower case.
    Header(String),
    /// Cookie name.
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    /// Path prefixes, each starting with `/`. Unique across all upstreams.
    pub routes: Vec<String>,
    pub balance: Balance,
    /// Required when `balance` is `ConsistentHash`; optional otherwise (ignored).
    pub affinity: Option<Affinity>,
    /// Other backends to try when connecting fails.
    pub retry_on_connect_failure: u32,
    pub limits: Limits,
    pub levels: Levels,
    pub health: Health,
    /// At least one; addresses unique within the upstream.
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Default per-backend hard cap of in-flight requests (at least 1).
    pub max_inflight: u32,
    /// Most requests that may wait in the upstream's queue (0 = no queue).
    pub queue_depth: u32,
    /// Longest a request waits in the queue before it is shed.
    pub queue_timeout: Duration,
}

/// Thresholds of one level; any signal at or above its threshold raises the level.
/// `None` means the signal is not used at this level.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Thresholds {
    /// in-flight / sum of eligible backends' limits, in (0, 1]. Only meaningful for caution.
    pub utilization: Option<f64>,
    /// Requests waiting in the queue.
    pub queue: Option<u32>,
    /// p95 of time spent in the queue over the window.
    pub queue_wait: Option<Duration>,
    /// p95 of backend response time over the window.
    pub p95: Option<Duration>,
    /// Share of failed requests (5xx from the backend, connect and read errors) over the window, in [0, 1].
    pub error_rate: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    pub caution: Thresholds,
    /// `utilization` is always `None` here (validation rejects it: busy is not overloaded).
    pub danger: Thresholds,
    /// A level is left only after its signals stay below it this long.
    pub cooldown: Duration,
    /// Length of the sliding window the p95 and error rate are computed over.
    pub window: Duration,
    /// Fewest requests in the window before p95 and error rate count.
    pub min_samples: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `None`: no active checks (backends are taken as healthy).
    pub path: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Consecutive failed requests before passive ejection; 0 disables it.
    pub eject_after_failures: u32,
    pub eject: Duration,
    pub slow_start: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub address: SocketAddr,
    pub zone: String,
    /// Per-backend cap: the override, or the upstream's `limits.max_inflight`.
    pub max_inflight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    Low = 0,
    Normal = 1,
    High = 2,
    Critical = 3,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorityMatch {
    PathPrefix(String),
    /// Header name (lower case) and exact value.
    Header(String, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityRule {
    pub matcher: PriorityMatch,
    pub class: Class,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Low => "low",
            Class::Normal => "normal",
            Class::High => "high",
            Class::Critical => "critical",
        }
    }
}
