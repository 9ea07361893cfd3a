//! levee's configuration: the TOML file model ([`file`](mod@file)) validated *whole* into the
//! typed [`Config`] the rest of the proxy uses.
//!
//! Validation never stops at the first problem: [`parse`] collects every error, each
//! naming the key path it is about (`upstream[0].limits.max_inflight: must be at least 1`),
//! so an operator fixes a broken file in one pass. Nothing here panics on user input.
//!
//! TOML syntax errors are the one exception to "every error": the file cannot be
//! read further, so they come alone, with their line and column. A key of the wrong
//! type or an unknown key is reported alone too (serde stops there), but with its key
//! path as well as its line and column.
//!
//! Layout: [`file`](mod@file) mirrors the TOML, `validate` turns it into [`Config`], and
//! `locate` maps the byte spans of serde's errors to key paths.

pub mod file;
mod locate;
pub mod tls;
mod validate;

pub use tls::{CertPair, SniCert, Tls};

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Worker threads when `server.threads` is absent.
pub const DEFAULT_THREADS: usize = 2;
/// How long in-flight requests may take to finish on SIGTERM (`server.grace_period_ms`).
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_millis(10_000);
/// Largest request body accepted by default (`server.max_request_body_bytes`): 10 MiB.
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: u64 = 10 * 1024 * 1024;
/// Default upper bound of a computed `Retry-After` (`server.retry_after_max_secs`).
pub const DEFAULT_RETRY_AFTER_MAX_SECS: u64 = 30;
/// Default `upstream.retry_on_status`: the statuses a gateway or an overloaded backend
/// answers.
pub const DEFAULT_RETRY_ON_STATUS: [u16; 3] = [502, 503, 504];
/// Default `upstream.retry_budget`: retries may add at most a fifth to the load.
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;

/// Other backends tried when connecting fails (`upstream.retry_on_connect_failure`).
pub const DEFAULT_RETRY_ON_CONNECT_FAILURE: u32 = 1;
/// Zone of a backend that names none.
pub const DEFAULT_ZONE: &str = "default";

/// Reads and validates the config file at `path`.
///
/// A file that cannot be read gives one [`ConfigError`] with an empty path and a
/// message naming the file; otherwise see [`parse`].
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("cannot read {}: {e}", path.display()),
        )])
    })?;
    let mut config = parse(&text)?;
    if let Some(tls) = &mut config.server.tls {
        // From the file's absolute directory, so the paths still hold (and logs name
        // them fully) whatever the working directory is.
        let file = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        tls.resolve_paths(file.parent().unwrap_or(Path::new(".")));
    }
    Ok(config)
}

/// Parses and validates a whole config file.
///
/// `Err` holds every validation problem of the file, table by table in schema order. A TOML syntax
/// error, a value of the wrong type or an unknown key stops parsing, so it comes
/// alone: with its key path when one can be found, and its line and column.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let root: file::Root =
        toml::from_str(text).map_err(|e| ConfigErrors(vec![toml_error(text, &e)]))?;
    validate::validate(&root)
}

/// Turns a `toml` error into a [`ConfigError`] naming the key path at the error's
/// span when the document is well-formed TOML, and its line and column always.
fn toml_error(text: &str, error: &toml::de::Error) -> ConfigError {
    // toml's messages can span several lines ("invalid table header\nexpected …").
    let message = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let Some(span) = error.span() else {
        return ConfigError::new("", message);
    };
    let (line, column) = locate::line_column(text, span.start);
    // A key path is only trustworthy when the document itself is valid TOML: then
    // the error is about types or keys, and the span points at the key or value.
    let well_formed = text.parse::<toml::Table>().is_ok();
    match well_formed
        .then(|| locate::key_path_at(text, span.start))
        .flatten()
    {
        Some(path) => ConfigError::new(path, format!("{message} (line {line} column {column})")),
        None => ConfigError::new("", format!("line {line} column {column}: {message}")),
    }
}

/// One problem in a config file, tied to the key path it is about.
///
/// Displays as `path: message`, or just `message` when the path is empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}{}{message}", if .path.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    /// Dotted key path, with indexes for arrays of tables: `upstream[1].backend[0].address`.
    /// Empty for whole-file problems (unreadable file, TOML syntax error without a key).
    pub path: String,
    /// What is wrong, lower case, quoting the offending value.
    pub message: String,
}

impl ConfigError {
    /// An error about the key at `path` (empty: the whole file).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one config file; never empty when returned by [`parse`].
/// Displays one error per line.
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
    /// `[server]`.
    pub server: Server,
    /// In file order. Names are unique.
    pub upstreams: Vec<Upstream>,
    /// In file order; the first rule that matches a request sets its class.
    pub priorities: Vec<PriorityRule>,
}

/// `[server]`: listeners and process-wide settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Plain HTTP listeners; no duplicates. At least one unless `tls` has some.
    pub listen: Vec<SocketAddr>,
    /// `[server.tls]`: TLS listeners and their certificates.
    pub tls: Option<Tls>,
    /// Worker threads, 1 to 1024.
    pub threads: usize,
    /// How the worker threads serve client connections.
    pub runtime: RuntimeLayout,
    /// This instance's zone; routing prefers backends in it. `None`: no preference.
    pub zone: Option<String>,
    /// Admin listener (/metrics, /status, /healthz, /readyz, dashboard). `None`: disabled.
    /// Never one of `listen`.
    pub admin_listen: Option<SocketAddr>,
    /// How long in-flight requests may take to finish on SIGTERM.
    pub grace_period: Duration,
    /// `[server.timeouts]`.
    pub timeouts: Timeouts,
    /// Largest request body accepted, in bytes (413 beyond). 0 means no limit.
    pub max_request_body_bytes: u64,
    /// Largest request head (request line and header fields) in bytes: 431 beyond,
    /// and 431 for more than [`MAX_HEADER_FIELDS`] fields.
    pub max_header_bytes: usize,
    /// Upper bound of the `Retry-After` levee computes, in seconds (at least 1).
    pub retry_after_max_secs: u64,
    /// Unix socket of the listener handover: `levee run --upgrade` waits there for the
    /// running levee's sockets, which it sends on SIGQUIT.
    pub upgrade_sock: std::path::PathBuf,
    /// Most client connections open at once; past it levee stops accepting (the kernel
    /// backlog holds the rest) until one closes. 0: no cap but the descriptor limit.
    pub max_connections: u32,
    /// Most client connections from one IP address; more are closed at once. 0: no cap.
    pub max_connections_per_ip: u32,
    /// Log one info line per request (target `levee::access`).
    pub access_log: bool,
    /// Every listener (plain and TLS) expects a PROXY protocol v1 or v2 header before
    /// anything else, and the source address it carries is the connection's peer.
    pub proxy_protocol: bool,
    /// Peers whose `X-Forwarded-For` names the client and whose `X-Request-Id` is kept.
    pub trusted_proxies: TrustedProxies,
    /// `[server.dns]`: how backends given by name are looked up.
    pub dns: Dns,
    /// `[server.tracing]`: OTLP spans of sampled requests. `None`: tracing is off (the
    /// request path then pays one branch for it).
    pub tracing: Option<Tracing>,
}

/// `[server.tracing]`: one OTLP/HTTP SERVER span per sampled request, W3C trace
/// context continued from the caller and passed on to the backend.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// Where spans are POSTed (OTLP/HTTP, protobuf).
    pub otlp_endpoint: OtlpEndpoint,
    /// Share of requests without a trace context that start a sampled trace, in
    /// [0, 1]. A caller's `traceparent` decides for its own requests.
    pub sample_ratio: f64,
    /// The spans' resource `service.name`.
    pub service_name: String,
}

/// Default `server.tracing.sample_ratio`.
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.01;
/// Default `server.tracing.service_name`.
pub const DEFAULT_SERVICE_NAME: &str = "levee";

/// `server.tracing.otlp_endpoint`, split for the exporter's HTTP client. The rule of
/// OpenTelemetry's `OTEL_EXPORTER_OTLP_ENDPOINT`: a URL whose path ends in
/// `/v1/traces` is used as given; otherwise `/v1/traces` is appended to its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    /// The URL as written.
    pub url: String,
    /// `host:port` as the `Host` header gives it (IPv6 in brackets).
    pub authority: String,
    /// Host to connect to (no brackets; a name is looked up when connecting).
    pub host: String,
    pub port: u16,
    /// Path the spans are POSTed to, ending in `/v1/traces`.
    pub path: String,
}

impl OtlpEndpoint {
    /// The path OTLP/HTTP trace exports go to.
    pub const TRACES_PATH: &'static str = "/v1/traces";

    /// Parses an `http://host[:port][/path]` URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<OtlpEndpoint, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{url:?}: https is not supported; send to a local collector or agent over http"
                ))
            }
            _ => return Err(format!("{url:?} must start with http://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: user info is not supported"));
        }
        if uri.query().is_some() {
            return Err(format!("{url:?}: a query is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let port = authority.port_u16().unwrap_or(80);
        let given = uri.path().trim_end_matches('/');
        let path = if given.ends_with(Self::TRACES_PATH) {
            given.to_string()
        } else {
            format!("{given}{}", Self::TRACES_PATH)
        };
        let authority = if authority.port().is_some() {
            authority.as_str().to_string()
        } else {
            format!("{}:{port}", authority.host())
        };
        Ok(OtlpEndpoint {
            url: url.to_string(),
            authority,
            host: host.to_string(),
            port,
            path,
        })
    }
}

impl std::fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.path)
    }
}

/// `[server.dns]`: the resolver of backends given by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Nameservers to ask (UDP, then TCP for long answers); empty: the system's
    /// (`/etc/resolv.conf`, with its search domains and options, and `/etc/hosts`).
    pub nameservers: Vec<SocketAddr>,
    /// How often every name is looked up again.
    pub refresh: Duration,
    /// Longest wait for one lookup (each nameserver is tried in turn within it).
    pub timeout: Duration,
}

/// Default `server.dns.refresh_ms`.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_millis(5_000);
/// Default `server.dns.timeout_ms`.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_millis(2_000);

impl Default for Dns {
    fn default() -> Self {
        Dns {
            nameservers: Vec::new(),
            refresh: DEFAULT_DNS_REFRESH,
            timeout: DEFAULT_DNS_TIMEOUT,
        }
    }
}

/// `server.trusted_proxies`: the networks of forwarders whose word about the client is
/// believed. Empty: none is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Whether `ip` is in one of the networks. An IPv4-mapped IPv6 address (a dual-stack
    /// listener's view of an IPv4 peer) is matched as the IPv4 address it is.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Default `server.max_header_bytes`: 16 KiB, as HAProxy's `tune.bufsize` allows.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
/// Smallest `server.max_header_bytes`: hyper's read buffer never goes below 8 KiB.
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Largest `server.max_header_bytes`.
pub const MAX_MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Most header fields in a request head; more get 431.
pub const MAX_HEADER_FIELDS: usize = 100;

/// Default `server.upgrade_sock`.
pub const DEFAULT_UPGRADE_SOCK: &str = "/tmp/levee_upgrade.sock";

/// Every wait levee makes is bounded by one of these. Each is at least 1 ms and at
/// most one day.
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
    /// Idle keep-alive time of a client connection between requests. At least one
    /// second; applied in whole seconds (rounded down).
    pub client_idle: Duration,
    /// Idle time of a pooled backend connection before it is closed.
    pub upstream_idle: Duration,
}

impl Timeouts {
    /// The values used for absent `[server.timeouts]` keys.
    pub const DEFAULT: Self = Self {
        connect: Duration::from_millis(1_000),
        read: Duration::from_millis(30_000),
        write: Duration::from_millis(30_000),
        response: Duration::from_millis(60_000),
        stream_idle: Duration::from_millis(300_000),
        client_header: Duration::from_millis(10_000),
        client_idle: Duration::from_millis(60_000),
        upstream_idle: Duration::from_millis(60_000),
    };
}

impl Default for Timeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How levee's worker threads serve client connections (`server.runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeLayout {
    /// One single-threaded runtime per worker thread, each accepting on its own
    /// `SO_REUSEPORT` listener and serving its connections start to end: no work
    /// stealing, no cross-thread wake-ups on the request path. Measured the faster
    /// (benches/README.md).
    #[default]
    PerThread,
    /// One work-stealing runtime with `threads` workers sharing every connection.
    MultiThread,
}

impl RuntimeLayout {
    /// The name used in the config file and in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::PerThread => "per_thread",
            Self::MultiThread => "multi_thread",
        }
    }

    /// Parses a config-file name (exact, lower case).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "per_thread" => Some(Self::PerThread),
            "multi_thread" => Some(Self::MultiThread),
            _ => None,
        }
    }
}

/// What levee speaks to an upstream's backends (`upstream.protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// HTTP/1.1, a request per connection at a time (levee's pool).
    #[default]
    H1,
    /// HTTP/2 over cleartext with prior knowledge (h2c): a few connections per
    /// backend, many streams on each; what gRPC servers speak.
    H2,
}

impl Protocol {
    /// The name used in the config file and in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::H1 => "h1",
            Self::H2 => "h2",
        }
    }

    /// Parses a config-file name (exact, lower case).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "h1" => Some(Self::H1),
            "h2" => Some(Self::H2),
            _ => None,
        }
    }
}

/// How an upstream spreads requests over its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Balance {
    /// The less loaded of two random backends (power of two choices).
    LeastInflight,
    /// Each backend in turn.
    RoundRobin,
    /// A consistent hash of the request's [`Affinity`] key: sticky sessions.
    ConsistentHash,
}

impl Balance {
    /// The name used in the config file and in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::LeastInflight => "least_inflight",
            Self::RoundRobin => "round_robin",
            Self::ConsistentHash => "consistent_hash",
        }
    }

    /// Parses a config-file name (exact, lower case).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "least_inflight" => Some(Self::LeastInflight),
            "round_robin" => Some(Self::RoundRobin),
            "consistent_hash" => Some(Self::ConsistentHash),
            _ => None,
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the affinity key of a request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Affinity {
    /// Header name, lower case.
    Header(String),
    /// Cookie name.
    Cookie(String),
}

impl fmt::Display for Affinity {
    /// As written in the config file: `header:NAME` or `cookie:NAME`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::Cookie(name) => write!(f, "cookie:{name}"),
        }
    }
}

/// One `[[upstream]]`: a named pool of backends serving some routes.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// `[A-Za-z0-9_.-]+`, unique.
    pub name: String,
    /// Host names this upstream serves, lower case, without port: exact names
    /// (`api.example.com`) and wildcards (`*.example.com`: any name under it). Empty:
    /// any host that no other upstream claims.
    pub hosts: Vec<String>,
    /// Path prefixes, each starting with `/`. Unique per host across all upstreams.
    pub routes: Vec<String>,
    /// How levee speaks to the backends.
    pub protocol: Protocol,
    /// How requests are spread over the backends.
    pub balance: Balance,
    /// Required when `balance` is `ConsistentHash`; optional otherwise (ignored).
    pub affinity: Option<Affinity>,
    /// Other backends to try when connecting fails.
    pub retry_on_connect_failure: u32,
    /// Share of recent requests that may be retried after reaching a backend
    /// (idempotent requests only); 0 disables those retries.
    pub retry_budget: f64,
    /// Backend statuses (400-599) after which an idempotent request goes to another
    /// backend, within `retry_budget`, if no byte of the answer reached the client.
    pub retry_on_status: Vec<u16>,
    /// Requests carrying this header (lower case) count as idempotent whatever their
    /// method. `None`: only the idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT,
    /// DELETE).
    pub idempotency_header: Option<String>,
    /// `[upstream.limits]`.
    pub limits: Limits,
    /// `[upstream.levels]`.
    pub levels: Levels,
    /// `[upstream.health]`.
    pub health: Health,
    /// `[upstream.fairness]`; `None`: no fairness between clients.
    pub fairness: Option<Fairness>,
    /// `[upstream.adaptive]`: each backend's limit in force moves between
    /// `min_inflight` and its `max_inflight`. `None`: the limit is `max_inflight`.
    pub adaptive: Option<Adaptive>,
    /// `[upstream.scaling]`: how the desired-backends figure is sized.
    pub scaling: Scaling,
    /// Backends by address, unique within the upstream; with `named`, at least one
    /// entry. A running snapshot's config also holds here every address the names of
    /// `named` resolved to (see [`Config::expand`]).
    pub backends: Vec<Backend>,
    /// Backends given by name (`name:port`): every address the name resolves to is a
    /// backend with the entry's zone and limit.
    pub named: Vec<NamedBackend>,
}

/// A `[[upstream.backend]]` whose address is `name:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedBackend {
    /// The host name, lower case, without a trailing dot.
    pub host: String,
    pub port: u16,
    pub zone: String,
    pub max_inflight: u32,
}

impl NamedBackend {
    /// `name:port`, as written.
    pub fn label(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl Upstream {
    /// Sum of the backends' in-flight caps: the most requests this upstream ever has
    /// in flight, health and slow start aside.
    pub fn capacity(&self) -> u64 {
        self.backends
            .iter()
            .map(|b| u64::from(b.max_inflight))
            .sum()
    }
}

/// `[upstream.fairness]`: when requests must wait or be shed, the client holding the
/// most slots and queue places is shed first (see [`crate::admission::fairness`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fairness {
    /// Who a request is for.
    pub key: ClientKey,
}

/// Where a request's client key comes from (`fairness.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// A request header's value (name lower case); requests without it share one key.
    Header(String),
    /// The address of the client connection's peer.
    ClientIp,
}

impl fmt::Display for ClientKey {
    /// As written in the config file: `header:NAME` or `client_ip`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => write!(f, "header:{name}"),
            Self::ClientIp => f.write_str("client_ip"),
        }
    }
}

/// `[upstream.limits]`
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Default per-backend hard cap of in-flight requests (1 to 1,000,000).
    pub max_inflight: u32,
    /// Most requests that may wait in the upstream's queue (0 = no queue; at most 1,000,000).
    pub queue_depth: u32,
    /// Longest a request waits in the queue before it is shed (at least 1 ms when
    /// there is a queue): the wait a burst may take.
    pub queue_timeout: Duration,
    /// The allowed wait once the queue stands (see [`crate::admission::codel`]): less
    /// than `queue_timeout` when there is a queue (at least 1 ms when written).
    pub queue_target: Duration,
    /// The queue stands once every wait over this long stayed above `queue_target`,
    /// and drains once nobody was shed for want of capacity for this long (at least 1 ms).
    pub queue_interval: Duration,
    /// Whether the limits are applied or only evaluated (`limits.mode`).
    pub mode: Mode,
}

impl Limits {
    /// The values used for absent `[upstream.limits]` keys. An absent
    /// `queue_target_ms` is also never more than `queue_timeout_ms`.
    pub const DEFAULT: Self = Self {
        max_inflight: 100,
        queue_depth: 100,
        queue_timeout: Duration::from_millis(250),
        queue_target: Duration::from_millis(5),
        queue_interval: Duration::from_millis(100),
        mode: Mode::Enforce,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How an upstream applies its limits (`limits.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Requests past the limits wait or get 503.
    #[default]
    Enforce,
    /// Every admission decision is made and counted (`levee_would_shed_total`), but
    /// nothing is shed or queued: a request that would wait or be shed goes to a
    /// backend at once, past `max_inflight` if need be. For trying limits on
    /// production traffic before they act on it.
    Shadow,
}

impl Mode {
    /// The name used in the config file and in output.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }

    /// Parses a config-file name (exact, lower case).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "enforce" => Some(Self::Enforce),
            "shadow" => Some(Self::Shadow),
            _ => None,
        }
    }
}

/// `[upstream.adaptive]`: limits that find themselves (see [`crate::limits`]). Each
/// backend's limit moves between `min_inflight` and its `max_inflight`: down while its
/// recent p95 is above `target_p95` or the load it reports is above `load_target`, up
/// while both are below and it used most of its limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptive {
    /// The backend's own p95 (send to end of response) the limit is held under; at
    /// least 1 ms.
    pub target_p95: Duration,
    /// The lowest limit, in [1, every backend's `max_inflight`].
    pub min_inflight: u32,
    /// Utilization the backend may report (ORCA `endpoint-load-metrics`, 1.0 = at
    /// capacity), in (0, 10]. `None`: reports are not read (and not stripped).
    pub load_target: Option<f64>,
}

/// `[upstream.scaling]`: the desired-backends signal (see [`crate::scaling`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    /// Utilization each backend should run at, in (0, 1]: desired backends =
    /// ceil(demand / (capacity per backend × target_utilization)).
    pub target_utilization: f64,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            target_utilization: crate::scaling::DEFAULT_TARGET_UTILIZATION,
        }
    }
}

impl Adaptive {
    /// Largest `load_target`: a backend ten times over its capacity is queueing far
    /// past any useful target.
    pub const MAX_LOAD_TARGET: f64 = 10.0;
}

/// Thresholds of one level; any signal at or above its threshold raises the level.
/// `None` means the signal is not used at this level.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Thresholds {
    /// in-flight / sum of eligible backends' limits, in (0, 1]. Only meaningful for caution.
    pub utilization: Option<f64>,
    /// Requests waiting in the queue; at least 1 and at most `queue_depth`.
    pub queue: Option<u32>,
    /// p95 of time spent in the queue over the window; at most `queue_timeout`.
    pub queue_wait: Option<Duration>,
    /// p95 of backend response time over the window.
    pub p95: Option<Duration>,
    /// Share of failed requests (5xx from the backend, connect and read errors) over the window, in [0, 1].
    pub error_rate: Option<f64>,
}

impl Thresholds {
    /// Caution when `[upstream.levels]` has no `caution` table: utilization 0.85 and a
    /// tenth of the queue (at least 1; no queue signal without a queue).
    pub fn default_caution(queue_depth: u32) -> Self {
        Self {
            utilization: Some(Levels::DEFAULT_CAUTION_UTILIZATION),
            queue: (queue_depth > 0).then(|| (queue_depth / 10).max(1)),
            ..Self::default()
        }
    }

    /// Danger when `[upstream.levels]` has no `danger` table: half the queue (at
    /// least 1; no signal at all without a queue).
    pub fn default_danger(queue_depth: u32) -> Self {
        Self {
            queue: (queue_depth > 0).then(|| (queue_depth / 2).max(1)),
            ..Self::default()
        }
    }

    /// True when no signal is set: this level is never entered by signals.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `[upstream.levels]`: when an upstream is at caution or danger. Critical is not
/// configured: it is the queue being full.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    /// Signals that raise the level to caution.
    pub caution: Thresholds,
    /// `utilization` is always `None` here (validation rejects it: busy is not overloaded).
    /// Every signal set at both levels is at least as high here as at caution.
    pub danger: Thresholds,
    /// A level is left only after its signals stay below it this long.
    pub cooldown: Duration,
    /// Length of the sliding window the p95 and error rate are computed over (at least 1 s).
    pub window: Duration,
    /// Fewest requests in the window before p95 and error rate count (at least 1).
    pub min_samples: u32,
}

impl Levels {
    /// Default `cooldown_ms`.
    pub const DEFAULT_COOLDOWN: Duration = Duration::from_millis(1_000);
    /// Default `window_ms`.
    pub const DEFAULT_WINDOW: Duration = Duration::from_millis(5_000);
    /// Default `min_samples`.
    pub const DEFAULT_MIN_SAMPLES: u32 = 20;
    /// `caution.utilization` when there is no `caution` table.
    pub const DEFAULT_CAUTION_UTILIZATION: f64 = 0.85;

    /// The levels of an upstream whose `[upstream.levels]` table is absent.
    pub fn defaults(queue_depth: u32) -> Self {
        Self {
            caution: Thresholds::default_caution(queue_depth),
            danger: Thresholds::default_danger(queue_depth),
            cooldown: Self::DEFAULT_COOLDOWN,
            window: Self::DEFAULT_WINDOW,
            min_samples: Self::DEFAULT_MIN_SAMPLES,
        }
    }
}

/// `[upstream.health]`: active probes and passive ejection.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// `None`: no active checks (backends are taken as healthy).
    pub path: Option<String>,
    /// Time between two probes of a backend (at least 1 ms).
    pub interval: Duration,
    /// Longest a probe may take; at most `interval`.
    pub timeout: Duration,
    /// Consecutive successful probes that make a backend healthy (at least 1).
    pub rise: u32,
    /// Consecutive failed probes that make a backend unhealthy (at least 1).
    pub fall: u32,
    /// Consecutive failed requests before passive ejection; 0 disables it.
    pub eject_after_failures: u32,
    /// First ejection time (at least 1 ms); grows with repeated ejections.
    pub eject: Duration,
    /// Time over which a backend back from failure (or added by a reload to a running
    /// upstream) ramps its limit up; 0: at once. Never at process start.
    pub slow_start: Duration,
    /// How backends are probed.
    pub check: Check,
    /// Cap of the ejection time, which doubles with each ejection in a row.
    pub eject_max: Duration,
    /// Whether 5xx responses count as failed requests for passive ejection.
    pub eject_on_5xx: bool,
    /// Largest share of an upstream's backends ejected passively at once, in [0, 1].
    pub max_ejected_share: f64,
    /// When fewer than this share of backends are healthy, route to all of them
    /// (panic mode) rather than overload the few, in [0, 1).
    pub panic_threshold: f64,
    /// When the local zone's healthy share falls below this, it is no longer preferred.
    pub local_zone_min_healthy: f64,
}

/// The active health check of an upstream's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No probes: backends are up unless passively ejected.
    None,
    /// `GET path`, healthy on 2xx.
    Http,
    /// A TCP connect.
    Tcp,
    /// The standard gRPC health check, `grpc.health.v1.Health/Check` for the whole
    /// server (service `""`), healthy when it answers `SERVING` (h2 upstreams).
    Grpc,
}

impl Health {
    /// The values used for absent `[upstream.health]` keys.
    pub const DEFAULT: Self = Self {
        path: None,
        interval: Duration::from_millis(1_000),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 2,
        eject_after_failures: 5,
        eject: Duration::from_millis(10_000),
        slow_start: Duration::from_millis(10_000),
        check: Check::None,
        eject_max: Duration::from_millis(300_000),
        eject_on_5xx: true,
        max_ejected_share: 0.5,
        panic_threshold: 0.25,
        local_zone_min_healthy: 0.5,
    };
}

impl Default for Health {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// One `[[upstream.backend]]`: a replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    /// A literal IP and a non-zero port.
    pub address: SocketAddr,
    /// Failure domain, `[A-Za-z0-9_.-]+`; [`DEFAULT_ZONE`] when not given.
    pub zone: String,
    /// Per-backend cap: the override, or the upstream's `limits.max_inflight`.
    pub max_inflight: u32,
    /// The `name:port` entry this address was resolved from; `None`: written as an
    /// address.
    pub from: Option<String>,
}

/// A request's priority; the order is `Low < Normal < High < Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// Shed first: from caution up.
    Low = 0,
    /// The class of requests no rule matches.
    Normal = 1,
    /// May wait in the queue at every level below critical.
    High = 2,
    /// Queued even at critical, where it may displace a lower class.
    Critical = 3,
}

impl Class {
    /// Every class, lowest first.
    pub const ALL: [Self; 4] = [Self::Low, Self::Normal, Self::High, Self::Critical];

    /// The name used in the config file and as a metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// Parses a config-file name (exact, lower case).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|class| class.as_str() == name)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a [`PriorityRule`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PriorityMatch {
    /// The request path starts with this (which starts with `/`).
    PathPrefix(String),
    /// Header name (lower case) and exact value.
    Header(String, String),
}

impl fmt::Display for PriorityMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::PathPrefix(prefix) => write!(f, "path {prefix}*"),
            Self::Header(name, value) => write!(f, "header {name}: {value}"),
        }
    }
}

/// One `[[priority]]`: requests it matches get its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityRule {
    /// What the rule looks at.
    pub matcher: PriorityMatch,
    /// The class of the requests it matches.
    pub class: Class,
}

impl Config {
    /// Every host name a backend entry gives, once each.
    pub fn backend_names(&self) -> std::collections::BTreeSet<&str> {
        self.upstreams
            .iter()
            .flat_map(|u| u.named.iter().map(|n| n.host.as_str()))
            .collect()
    }

    /// This config with every named backend replaced by the addresses its name resolves
    /// to now (`resolved`; a name without an entry there has none yet), each with the
    /// entry's zone and limit. An address an upstream already lists is not added twice.
    /// Addresses come in a stable order, so an unchanged answer builds an equal config.
    pub fn expand(&self, resolved: &dyn Fn(&str) -> Vec<std::net::IpAddr>) -> Config {
        let mut out = self.clone();
        for up in &mut out.upstreams {
            up.backends.retain(|b| b.from.is_none());
            for named in &up.named {
                let mut ips = resolved(&named.host);
                ips.sort_unstable();
                ips.dedup();
                for ip in ips {
                    let address = SocketAddr::new(ip, named.port);
                    if up.backends.iter().any(|b| b.address == address) {
                        continue;
                    }
                    up.backends.push(Backend {
                        address,
                        zone: named.zone.clone(),
                        max_inflight: named.max_inflight,
                        from: Some(named.label()),
                    });
                }
            }
        }
        out
    }

    /// A short human summary of what this config does, for `levee check`: listeners,
    /// each upstream with its routes, balance, limits, level thresholds and backends by
    /// zone, the priority rules, and the total capacity. Ends with a newline.
    pub fn explain(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_explanation(&mut out);
        out
    }

    fn write_explanation(&self, out: &mut String) -> fmt::Result {
        let s = &self.server;
        let listen: Vec<String> = s.listen.iter().map(ToString::to_string).collect();
        write!(
            out,
            "listen {} ({} threads, {} runtime",
            if listen.is_empty() {
                "none but TLS".to_owned()
            } else {
                listen.join(", ")
            },
            s.threads,
            s.runtime.as_str()
        )?;
        if let Some(zone) = &s.zone {
            write!(out, ", zone {zone}")?;
        }
        writeln!(out, ")")?;
        if let Some(tls) = &s.tls {
            write!(out, "{tls}")?;
        }
        match s.admin_listen {
            Some(admin) => writeln!(out, "admin {admin}")?,
            None => writeln!(out, "admin off")?,
        }
        if s.proxy_protocol {
            writeln!(
                out,
                "PROXY protocol (v1 or v2) expected first on every listener"
            )?;
        }
        if !s.trusted_proxies.is_empty() {
            let nets: Vec<String> = s
                .trusted_proxies
                .0
                .iter()
                .map(ToString::to_string)
                .collect();
            writeln!(
                out,
                "trusted proxies {} (their X-Forwarded-For and X-Request-Id are believed)",
                nets.join(", ")
            )?;
        }
        if let Some(t) = &s.tracing {
            writeln!(
                out,
                "tracing: spans of {}% of new traces (a caller's traceparent decides for its own) to {} as service {}",
                percent(t.sample_ratio),
                t.otlp_endpoint,
                t.service_name
            )?;
        }

        for u in &self.upstreams {
            let hosts = if u.hosts.is_empty() {
                String::new()
            } else {
                format!("hosts {}; ", u.hosts.join(", "))
            };
            writeln!(
                out,
                "\nupstream {:?}: {hosts}routes {}",
                u.name,
                u.routes.join(", ")
            )?;
            if u.protocol == Protocol::H2 {
                write!(out, "  h2c to backends, ")?;
            } else {
                write!(out, "  ")?;
            }
            write!(out, "balance {}", u.balance)?;
            if let (Balance::ConsistentHash, Some(affinity)) = (u.balance, &u.affinity) {
                write!(out, " on {affinity}")?;
            }
            let statuses: Vec<String> = u.retry_on_status.iter().map(u16::to_string).collect();
            writeln!(
                out,
                ", {} retries on connect failure, retry on status {}",
                u.retry_on_connect_failure,
                if statuses.is_empty() {
                    "none".to_owned()
                } else {
                    statuses.join("/")
                }
            )?;
            let l = &u.limits;
            if l.mode == Mode::Shadow {
                writeln!(
                    out,
                    "  shadow mode: every decision below is counted, nothing is shed or queued"
                )?;
            }
            write!(out, "  limits {} in flight per backend, ", l.max_inflight)?;
            if l.queue_depth == 0 {
                writeln!(out, "no queue")?;
            } else {
                writeln!(
                    out,
                    "queue {} (timeout {}; {} once standing for {})",
                    l.queue_depth,
                    human_duration(l.queue_timeout),
                    human_duration(l.queue_target),
                    human_duration(l.queue_interval)
                )?;
            }
            if let Some(a) = &u.adaptive {
                write!(
                    out,
                    "  adaptive limit between {} and max_inflight ({}) per backend: down while its p95 > {}",
                    a.min_inflight,
                    l.max_inflight,
                    human_duration(a.target_p95)
                )?;
                match a.load_target {
                    Some(t) => writeln!(
                        out,
                        " or its reported load (endpoint-load-metrics) > {t}; up while below and busy"
                    )?,
                    None => writeln!(out, " or it queues; up while below and busy")?,
                }
            }
            writeln!(
                out,
                "  desired backends sized for {}% of each backend's capacity",
                percent(u.scaling.target_utilization)
            )?;
            writeln!(out, "  caution at {}", human_thresholds(&u.levels.caution))?;
            writeln!(out, "  danger  at {}", human_thresholds(&u.levels.danger))?;
            if l.queue_depth > 0 {
                writeln!(
                    out,
                    "  critical when the queue is full; at least caution while it stands"
                )?;
            }
            if let Some(f) = &u.fairness {
                writeln!(
                    out,
                    "  fairness by {}: the client holding the most slots and queue places is shed first",
                    f.key
                )?;
            }
            let h = &u.health;
            match &h.path {
                Some(path) => write!(
                    out,
                    "  health GET {path} every {} (timeout {}, rise {}, fall {})",
                    human_duration(h.interval),
                    human_duration(h.timeout),
                    h.rise,
                    h.fall
                )?,
                None => write!(out, "  health no active checks")?,
            }
            if h.eject_after_failures == 0 {
                writeln!(out, "; no passive ejection")?;
            } else {
                writeln!(
                    out,
                    "; eject for {} after {} failures",
                    human_duration(h.eject),
                    h.eject_after_failures
                )?;
            }
            let mut zones: BTreeMap<&str, Vec<&Backend>> = BTreeMap::new();
            for b in &u.backends {
                zones.entry(b.zone.as_str()).or_default().push(b);
            }
            for (zone, backends) in &zones {
                let capacity: u64 = backends.iter().map(|b| u64::from(b.max_inflight)).sum();
                let addresses: Vec<String> = backends
                    .iter()
                    .map(|b| {
                        if b.max_inflight == l.max_inflight {
                            b.address.to_string()
                        } else {
                            format!("{} (max {})", b.address, b.max_inflight)
                        }
                    })
                    .collect();
                writeln!(
                    out,
                    "  zone {zone}: {}, {capacity} in flight: {}",
                    count(backends.len(), "backend"),
                    addresses.join(", ")
                )?;
            }
            for n in &u.named {
                writeln!(
                    out,
                    "  name {} (zone {}, {} in flight each): every address it resolves to, looked up every {}",
                    n.label(),
                    n.zone,
                    n.max_inflight,
                    human_duration(self.server.dns.refresh)
                )?;
            }
            writeln!(
                out,
                "  capacity {} in flight + {} queued",
                u.capacity(),
                l.queue_depth
            )?;
        }

        if !self.priorities.is_empty() {
            writeln!(out, "\npriority (first match wins; otherwise normal)")?;
            for rule in &self.priorities {
                writeln!(out, "  {} -> {}", rule.matcher, rule.class)?;
            }
        }

        let in_flight: u64 = self.upstreams.iter().map(Upstream::capacity).sum();
        let queued: u64 = self
            .upstreams
            .iter()
            .map(|u| u64::from(u.limits.queue_depth))
            .sum();
        let backends: usize = self.upstreams.iter().map(|u| u.backends.len()).sum();
        writeln!(
            out,
            "\ntotal {}, {}: {in_flight} in flight + {queued} queued",
            count(self.upstreams.len(), "upstream"),
            count(backends, "backend")
        )
    }
}

/// `1 backend`, `8 backends`.
fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `250 ms`, `10 s`: whole seconds when exact.
fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{ms} ms")
    }
}

fn human_thresholds(t: &Thresholds) -> String {
    let mut signals = Vec::new();
    if let Some(u) = t.utilization {
        signals.push(format!("utilization {}%", percent(u)));
    }
    if let Some(q) = t.queue {
        signals.push(format!("queue {q}"));
    }
    if let Some(w) = t.queue_wait {
        signals.push(format!("queue wait p95 {}", human_duration(w)));
    }
    if let Some(p) = t.p95 {
        signals.push(format!("p95 {}", human_duration(p)));
    }
    if let Some(e) = t.error_rate {
        signals.push(format!("errors {}%", percent(e)));
    }
    if signals.is_empty() {
        "no signal (never)".to_owned()
    } else {
        signals.join(" or ")
    }
}

/// A share as a percentage without float noise: 0.001 → "0.1", 0.85 → "85".
fn percent(share: f64) -> String {
    let text = format!("{:.4}", share * 100.0);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests;
