//! Validation of the file model ([`super::file`]) into the typed [`Config`].
//!
//! Every check runs, whatever failed before it: a bad value is reported and
//! replaced by its default so that the checks depending on it still run, and the
//! caller gets every problem of the file in one [`ConfigErrors`]. Each error names
//! the key path it is about and quotes the offending value.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::file;
use super::*;

mod tls;

/// Largest `*_ms` duration accepted, one day: far beyond any sane timeout, and small
/// enough that adding it to an `Instant` can never overflow.
const MAX_DURATION_MS: i64 = 86_400_000;
/// Largest count accepted (in-flight limits, queue depths, probe counts).
const MAX_COUNT: i64 = 1_000_000;
/// Largest `server.threads`.
const MAX_THREADS: i64 = 1024;
/// Largest `server.retry_after_max_secs`, one day.
const MAX_RETRY_AFTER_SECS: i64 = 86_400;

/// Validates the whole file; `Err` holds every problem found, table by table.
pub(super) fn validate(root: &file::Root) -> Result<Config, ConfigErrors> {
    let mut v = Validator::default();
    let server = v.server(root.server.as_ref());
    let upstreams = v.upstreams(root.upstream.as_deref());
    let priorities = v.priorities(root.priority.as_deref());
    if v.errors.is_empty() {
        Ok(Config {
            server,
            upstreams,
            priorities,
        })
    } else {
        Err(ConfigErrors(v.errors))
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<ConfigError>,
}

impl Validator {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    /// An integer in `[min, max]`, `default` when absent. Out of range: an error, and
    /// the default is used so dependent checks can go on.
    fn int(&mut self, path: &str, value: Option<i64>, default: i64, min: i64, max: i64) -> i64 {
        match value {
            None => default,
            Some(v) if v < min => {
                self.error(path, format!("must be at least {min} (got {v})"));
                default
            }
            Some(v) if v > max => {
                self.error(path, format!("must be at most {max} (got {v})"));
                default
            }
            Some(v) => v,
        }
    }

    /// A count in `[min, MAX_COUNT]`.
    fn count(&mut self, path: &str, value: Option<i64>, default: u32, min: u32) -> u32 {
        let v = self.int(path, value, default.into(), min.into(), MAX_COUNT);
        u32::try_from(v).unwrap_or(default)
    }

    /// A `*_ms` duration in `[min_ms, MAX_DURATION_MS]`.
    fn millis(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: Duration,
        min_ms: i64,
    ) -> Duration {
        let default_ms = i64::try_from(default.as_millis()).unwrap_or(MAX_DURATION_MS);
        let v = self.int(path, value, default_ms, min_ms, MAX_DURATION_MS);
        u64::try_from(v).map_or(default, Duration::from_millis)
    }

    /// A name usable in metric labels and logs: `[A-Za-z0-9_.-]+`.
    fn name(&mut self, path: &str, what: &str, value: &str) -> bool {
        if is_name(value) {
            true
        } else {
            self.error(
                path,
                format!("invalid {what} {value:?}: use letters, digits, '_', '.' and '-'"),
            );
            false
        }
    }

    fn socket_addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.error(
                    path,
                    format!("{value:?} is not a literal IP:port (host names are not resolved)"),
                );
                None
            }
        }
    }

    fn server(&mut self, server: Option<&file::Server>) -> Server {
        let default = file::Server::default();
        let s = server.unwrap_or_else(|| {
            self.error("server", "required: a [server] table with listen addresses");
            &default
        });

        let mut listen: Vec<SocketAddr> = Vec::new();
        let mut first_index: HashMap<SocketAddr, usize> = HashMap::new();
        let tls_listens = s
            .tls
            .as_ref()
            .is_some_and(|t| t.listen.as_ref().is_some_and(|l| !l.is_empty()));
        if server.is_some() && s.listen.as_ref().is_none_or(Vec::is_empty) && !tls_listens {
            self.error(
                "server.listen",
                "required: at least one address to listen on (here or in server.tls.listen)",
            );
        }
        for (i, text) in s.listen.iter().flatten().enumerate() {
            let path = format!("server.listen[{i}]");
            let Some(addr) = self.socket_addr(&path, text) else {
                continue;
            };
            // Port 0 asks the kernel for a free port, so two of them never clash.
            if let Some(first) = first_index.get(&addr).filter(|_| addr.port() != 0) {
                self.error(
                    path,
                    format!("duplicate listen address {addr} (also listen[{first}])"),
                );
                continue;
            }
            first_index.insert(addr, i);
            listen.push(addr);
        }

        let threads = self.int(
            "server.threads",
            s.threads,
            DEFAULT_THREADS as i64,
            1,
            MAX_THREADS,
        );
        let runtime = match s.runtime.as_deref() {
            None => RuntimeLayout::default(),
            Some(text) => RuntimeLayout::parse(text).unwrap_or_else(|| {
                self.error(
                    "server.runtime",
                    format!("unknown runtime {text:?} (expected per_thread or multi_thread)"),
                );
                RuntimeLayout::default()
            }),
        };
        let zone = s
            .zone
            .as_deref()
            .filter(|zone| self.name("server.zone", "zone", zone))
            .map(str::to_owned);
        let admin_listen = s
            .admin_listen
            .as_deref()
            .and_then(|text| self.socket_addr("server.admin_listen", text));
        if let Some(admin) = admin_listen {
            if let Some(i) = first_index.get(&admin).filter(|_| admin.port() != 0) {
                self.error(
                    "server.admin_listen",
                    format!(
                        "{admin} is also listen[{i}]: the admin listener needs its own address"
                    ),
                );
            }
        }
        let tls = s
            .tls
            .as_ref()
            .map(|t| self.tls(t, &first_index, admin_listen));
        let grace_period = self.millis(
            "server.grace_period_ms",
            s.grace_period_ms,
            DEFAULT_GRACE_PERIOD,
            0,
        );
        let max_request_body_bytes = self.int(
            "server.max_request_body_bytes",
            s.max_request_body_bytes,
            DEFAULT_MAX_REQUEST_BODY_BYTES as i64,
            0,
            i64::MAX,
        );
        let max_header_bytes = self.int(
            "server.max_header_bytes",
            s.max_header_bytes,
            DEFAULT_MAX_HEADER_BYTES as i64,
            MIN_MAX_HEADER_BYTES as i64,
            MAX_MAX_HEADER_BYTES as i64,
        );
        let retry_after_max_secs = self.int(
            "server.retry_after_max_secs",
            s.retry_after_max_secs,
            DEFAULT_RETRY_AFTER_MAX_SECS as i64,
            1,
            MAX_RETRY_AFTER_SECS,
        );
        let timeouts = self.timeouts(s.timeouts.as_ref());
        let upgrade_sock = match s.upgrade_sock.as_deref() {
            None => std::path::PathBuf::from(DEFAULT_UPGRADE_SOCK),
            Some(p) if p.starts_with('/') && p.len() < 100 && !p.contains('\0') => {
                std::path::PathBuf::from(p)
            }
            Some(p) => {
                self.error(
                    "server.upgrade_sock",
                    format!("must be an absolute path under 100 bytes (got {p:?})"),
                );
                std::path::PathBuf::from(DEFAULT_UPGRADE_SOCK)
            }
        };

        let max_connections = self.int(
            "server.max_connections",
            s.max_connections,
            0,
            0,
            i64::from(u32::MAX),
        );
        let max_connections_per_ip = self.int(
            "server.max_connections_per_ip",
            s.max_connections_per_ip,
            0,
            0,
            i64::from(u32::MAX),
        );
        let trusted_proxies = self.trusted_proxies(s.trusted_proxies.as_deref());
        let dns = self.dns(s.dns.as_ref());
        let tracing = s.tracing.as_ref().and_then(|t| self.tracing(t));
        Server {
            dns,
            tracing,
            proxy_protocol: s.proxy_protocol.unwrap_or(false),
            trusted_proxies,
            max_connections: u32::try_from(max_connections).unwrap_or(0),
            max_connections_per_ip: u32::try_from(max_connections_per_ip).unwrap_or(0),
            access_log: s.access_log.unwrap_or(false),
            upgrade_sock,
            listen,
            tls,
            threads: usize::try_from(threads).unwrap_or(DEFAULT_THREADS),
            runtime,
            zone,
            admin_listen,
            grace_period,
            timeouts,
            max_request_body_bytes: u64::try_from(max_request_body_bytes)
                .unwrap_or(DEFAULT_MAX_REQUEST_BODY_BYTES),
            max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(DEFAULT_MAX_HEADER_BYTES),
            retry_after_max_secs: u64::try_from(retry_after_max_secs)
                .unwrap_or(DEFAULT_RETRY_AFTER_MAX_SECS),
        }
    }

    /// `[server.tracing]`: `otlp_endpoint` required (an `http://` URL),
    /// `sample_ratio` in [0, 1], `service_name` not empty.
    fn tracing(&mut self, t: &file::Tracing) -> Option<Tracing> {
        let errors = self.errors.len();
        let otlp_endpoint = match t.otlp_endpoint.as_deref() {
            None => {
                self.error(
                    "server.tracing.otlp_endpoint",
                    "required: the OTLP/HTTP collector, e.g. \"http://127.0.0.1:4318\" (/v1/traces is appended unless the path ends with it)",
                );
                None
            }
            Some(url) => match OtlpEndpoint::parse(url) {
                Ok(e) => Some(e),
                Err(message) => {
                    self.error("server.tracing.otlp_endpoint", message);
                    None
                }
            },
        };
        let sample_ratio = match t.sample_ratio {
            None => DEFAULT_SAMPLE_RATIO,
            Some(r) if (0.0..=1.0).contains(&r) => r,
            Some(r) => {
                self.error(
                    "server.tracing.sample_ratio",
                    format!("must be in [0, 1] (got {r}): the share of requests without a traceparent that start a sampled trace"),
                );
                DEFAULT_SAMPLE_RATIO
            }
        };
        let service_name = match t.service_name.as_deref() {
            None => DEFAULT_SERVICE_NAME.to_string(),
            Some(n) if !n.trim().is_empty() && !n.chars().any(char::is_control) => n.to_string(),
            Some(n) => {
                self.error(
                    "server.tracing.service_name",
                    format!("{n:?} must be a non-empty name without control characters"),
                );
                DEFAULT_SERVICE_NAME.to_string()
            }
        };
        let otlp_endpoint = otlp_endpoint?;
        (self.errors.len() == errors).then_some(Tracing {
            otlp_endpoint,
            sample_ratio,
            service_name,
        })
    }

    /// `[server.dns]`.
    fn dns(&mut self, d: Option<&file::Dns>) -> Dns {
        let default = file::Dns::default();
        let d = d.unwrap_or(&default);
        let mut nameservers = Vec::new();
        for (i, text) in d.nameservers.iter().flatten().enumerate() {
            let path = format!("server.dns.nameservers[{i}]");
            let Some(addr) = self.socket_addr(&path, text) else {
                continue;
            };
            if nameservers.contains(&addr) {
                self.error(path, format!("duplicate nameserver {addr}"));
            } else {
                nameservers.push(addr);
            }
        }
        let refresh = self.millis(
            "server.dns.refresh_ms",
            d.refresh_ms,
            DEFAULT_DNS_REFRESH,
            100,
        );
        let mut timeout = self.millis(
            "server.dns.timeout_ms",
            d.timeout_ms,
            DEFAULT_DNS_TIMEOUT.min(refresh),
            1,
        );
        if timeout > refresh {
            self.error(
                "server.dns.timeout_ms",
                format!(
                    "must be at most refresh_ms ({}), got {}",
                    millis_of(refresh),
                    millis_of(timeout)
                ),
            );
            timeout = refresh;
        }
        Dns {
            nameservers,
            refresh,
            timeout,
        }
    }

    /// `server.trusted_proxies`: CIDRs (`10.0.0.0/8`, `::1/128`) or single addresses.
    fn trusted_proxies(&mut self, list: Option<&[String]>) -> TrustedProxies {
        let mut nets: Vec<ipnet::IpNet> = Vec::new();
        for (i, text) in list.unwrap_or_default().iter().enumerate() {
            let path = format!("server.trusted_proxies[{i}]");
            let net = text
                .parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match net {
                // The network itself, so `10.1.2.3/8` means what it says: 10.0.0.0/8.
                Ok(net) => {
                    let net = net.trunc();
                    if nets.contains(&net) {
                        self.error(path, format!("duplicate network {net}"));
                    } else {
                        nets.push(net);
                    }
                }
                Err(_) => self.error(
                    path,
                    format!(
                        "{text:?} is not an address or CIDR network (e.g. \"10.0.0.0/8\", \"::1/128\")"
                    ),
                ),
            }
        }
        TrustedProxies(nets)
    }

    fn timeouts(&mut self, t: Option<&file::Timeouts>) -> Timeouts {
        let default = file::Timeouts::default();
        let t = t.unwrap_or(&default);
        let d = Timeouts::DEFAULT;
        let mut ms = |key: &str, value: Option<i64>, default: Duration, min: i64| {
            self.millis(&format!("server.timeouts.{key}"), value, default, min)
        };
        Timeouts {
            connect: ms("connect_ms", t.connect_ms, d.connect, 1),
            read: ms("read_ms", t.read_ms, d.read, 1),
            write: ms("write_ms", t.write_ms, d.write, 1),
            response: ms("response_ms", t.response_ms, d.response, 1),
            stream_idle: ms("stream_idle_ms", t.stream_idle_ms, d.stream_idle, 1),
            client_header: ms("client_header_ms", t.client_header_ms, d.client_header, 1),
            // Client keep-alive is set in whole seconds.
            client_idle: ms("client_idle_ms", t.client_idle_ms, d.client_idle, 1000),
            upstream_idle: ms("upstream_idle_ms", t.upstream_idle_ms, d.upstream_idle, 1),
        }
    }

    fn upstreams(&mut self, upstreams: Option<&[file::Upstream]>) -> Vec<Upstream> {
        let upstreams = upstreams.unwrap_or_default();
        if upstreams.is_empty() {
            self.error("upstream", "required: at least one [[upstream]]");
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        // (host, route) → (upstream index, route index); host "" for upstreams that
        // name no host (they serve every host nobody claims).
        let mut routes: HashMap<(String, &str), (usize, usize)> = HashMap::new();
        let mut out = Vec::with_capacity(upstreams.len());
        for (i, u) in upstreams.iter().enumerate() {
            let prefix = format!("upstream[{i}]");
            match u.name.as_deref() {
                None => self.error(format!("{prefix}.name"), "required"),
                Some(name) => {
                    if self.name(&format!("{prefix}.name"), "upstream name", name) {
                        if let Some(first) = names.get(name) {
                            self.error(
                                format!("{prefix}.name"),
                                format!(
                                    "duplicate upstream name {name:?} (also upstream[{first}])"
                                ),
                            );
                        } else {
                            names.insert(name, i);
                        }
                    }
                }
            }
            let hosts = self.hosts(&prefix, u.hosts.as_deref());
            let keys: Vec<String> = if hosts.is_empty() {
                vec![String::new()]
            } else {
                hosts.clone()
            };
            for (j, route) in u.routes.iter().flatten().enumerate() {
                let path = format!("{prefix}.routes[{j}]");
                if !self.route(&path, route) {
                    continue;
                }
                for host in &keys {
                    let for_host = if host.is_empty() {
                        String::new()
                    } else {
                        format!(" for host {host:?}")
                    };
                    match routes.get(&(host.clone(), route.as_str())) {
                        Some(&(other, k)) if other == i => {
                            // Reported once, not once per host.
                            if host == &keys[0] {
                                self.error(
                                    path.clone(),
                                    format!("duplicate route {route:?} (also routes[{k}])"),
                                );
                            }
                        }
                        Some(&(other, _)) => {
                            let by = upstreams
                                .get(other)
                                .and_then(|o| o.name.as_deref())
                                .map_or_else(|| format!("upstream[{other}]"), |n| format!("{n:?}"));
                            self.error(
                                path.clone(),
                                format!(
                                    "route {route:?}{for_host} is already served by upstream {by}"
                                ),
                            );
                        }
                        None => {
                            routes.insert((host.clone(), route.as_str()), (i, j));
                        }
                    }
                }
            }
            let mut upstream = self.upstream(&prefix, u);
            upstream.hosts = hosts;
            out.push(upstream);
        }
        out
    }

    /// A route or path prefix: starts with `/`, no query, fragment, space or control.
    fn route(&mut self, path: &str, route: &str) -> bool {
        if !route.starts_with('/') {
            self.error(path, format!("{route:?} must start with '/'"));
            false
        } else if route
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
        {
            self.error(
                path,
                format!("{route:?} must be a plain path (no spaces, query or fragment)"),
            );
            false
        } else {
            true
        }
    }

    /// `upstream.hosts`: each a host name (letters, digits, '-' and '.'; no port),
    /// or `*.` and one; lower-cased; no name twice in one upstream.
    fn hosts(&mut self, prefix: &str, hosts: Option<&[String]>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let Some(hosts) = hosts else {
            return out;
        };
        if hosts.is_empty() {
            self.error(
                format!("{prefix}.hosts"),
                "must list at least one host name; leave the key out to serve any host",
            );
        }
        for (i, text) in hosts.iter().enumerate() {
            let path = format!("{prefix}.hosts[{i}]");
            let name = text.to_ascii_lowercase();
            let bare = name.strip_prefix("*.").unwrap_or(&name);
            if !is_host_name(bare) {
                self.error(
                    path,
                    format!(
                        "{text:?} is not a host name (letters, digits, '-' and '.', no port; a wildcard is \"*.\" and a name)"
                    ),
                );
                continue;
            }
            if let Some(first) = out.iter().position(|h| *h == name) {
                self.error(
                    path,
                    format!("duplicate host {text:?} (also hosts[{first}])"),
                );
                continue;
            }
            out.push(name);
        }
        out
    }

    fn upstream(&mut self, prefix: &str, u: &file::Upstream) -> Upstream {
        if u.routes.as_ref().is_none_or(Vec::is_empty) {
            self.error(
                format!("{prefix}.routes"),
                "required: at least one path prefix, e.g. [\"/\"]",
            );
        }
        let balance = match u.balance.as_deref() {
            None => Balance::LeastInflight,
            Some(text) => Balance::parse(text).unwrap_or_else(|| {
                self.error(
                    format!("{prefix}.balance"),
                    format!(
                        "unknown balance {text:?} (expected least_inflight, round_robin or consistent_hash)"
                    ),
                );
                Balance::LeastInflight
            }),
        };
        let protocol = match u.protocol.as_deref() {
            None => Protocol::H1,
            Some(text) => Protocol::parse(text).unwrap_or_else(|| {
                self.error(
                    format!("{prefix}.protocol"),
                    format!("unknown protocol {text:?} (expected h1 or h2)"),
                );
                Protocol::H1
            }),
        };
        let affinity = u
            .affinity
            .as_deref()
            .and_then(|text| self.affinity(&format!("{prefix}.affinity"), text));
        if balance == Balance::ConsistentHash && u.affinity.is_none() {
            self.error(
                format!("{prefix}.affinity"),
                "required with balance = \"consistent_hash\": \"header:NAME\" or \"cookie:NAME\"",
            );
        }
        let retry_on_connect_failure = self.count(
            &format!("{prefix}.retry_on_connect_failure"),
            u.retry_on_connect_failure,
            DEFAULT_RETRY_ON_CONNECT_FAILURE,
            0,
        );
        let retry_budget = self.share(
            &format!("{prefix}.retry_budget"),
            u.retry_budget,
            DEFAULT_RETRY_BUDGET,
            true,
        );
        let retry_on_status = match &u.retry_on_status {
            None => DEFAULT_RETRY_ON_STATUS.to_vec(),
            Some(list) => {
                let mut statuses = Vec::new();
                for (i, &code) in list.iter().enumerate() {
                    match u16::try_from(code).ok().filter(|c| (400..=599).contains(c)) {
                        Some(c) if !statuses.contains(&c) => statuses.push(c),
                        Some(c) => self.error(
                            format!("{prefix}.retry_on_status[{i}]"),
                            format!("duplicate status {c}"),
                        ),
                        None => self.error(
                            format!("{prefix}.retry_on_status[{i}]"),
                            format!("must be a status from 400 to 599 (got {code})"),
                        ),
                    }
                }
                statuses
            }
        };
        let idempotency_header = match u.idempotency_header.as_deref() {
            None => None,
            Some(name) if is_token(name) => Some(name.to_ascii_lowercase()),
            Some(name) => {
                self.error(
                    format!("{prefix}.idempotency_header"),
                    format!("{name:?} is not a header name"),
                );
                None
            }
        };
        let limits = self.limits(prefix, u.limits.as_ref());
        let levels = self.levels(prefix, u.levels.as_ref(), &limits);
        let health = self.health(prefix, u.health.as_ref());
        if health.check == Check::Grpc && protocol != Protocol::H2 {
            self.error(
                format!("{prefix}.health.check"),
                "check = \"grpc\" needs protocol = \"h2\" (gRPC runs over HTTP/2)",
            );
        }
        let fairness = u.fairness.as_ref().and_then(|f| self.fairness(prefix, f));
        let (backends, named) = self.backends(prefix, u.backend.as_deref(), &limits);
        let adaptive = u
            .adaptive
            .as_ref()
            .and_then(|a| self.adaptive(prefix, a, &limits, u.backend.as_deref()));
        let scaling = self.scaling(prefix, u.scaling.as_ref());
        Upstream {
            scaling,
            name: u.name.clone().unwrap_or_default(),
            hosts: Vec::new(),
            routes: u.routes.clone().unwrap_or_default(),
            protocol,
            balance,
            affinity,
            retry_on_connect_failure,
            retry_budget,
            retry_on_status,
            idempotency_header,
            limits,
            levels,
            health,
            fairness,
            adaptive,
            backends,
            named,
        }
    }

    fn fairness(&mut self, prefix: &str, f: &file::Fairness) -> Option<Fairness> {
        let path = format!("{prefix}.fairness.key");
        let Some(text) = f.key.as_deref() else {
            self.error(path, "required: \"header:NAME\" or \"client_ip\"");
            return None;
        };
        let key = match text.split_once(':') {
            _ if text == "client_ip" => Some(ClientKey::ClientIp),
            Some(("header", name)) if is_token(name) => {
                Some(ClientKey::Header(name.to_ascii_lowercase()))
            }
            Some(("header", name)) => {
                self.error(&path, format!("{text:?}: {name:?} is not a header name"));
                return None;
            }
            _ => None,
        };
        if key.is_none() {
            self.error(
                &path,
                format!("{text:?} must be \"header:NAME\" or \"client_ip\""),
            );
        }
        key.map(|key| Fairness { key })
    }

    /// `[upstream.adaptive]`: both keys required, `min_inflight` at most every
    /// backend's `max_inflight`, `load_target` in (0, 10].
    fn adaptive(
        &mut self,
        prefix: &str,
        a: &file::Adaptive,
        limits: &Limits,
        backends: Option<&[file::Backend]>,
    ) -> Option<Adaptive> {
        let path = format!("{prefix}.adaptive");
        let errors = self.errors.len();
        let target_p95 = match a.target_p95_ms {
            None => {
                self.error(
                    format!("{path}.target_p95_ms"),
                    "required: the p95 (ms) each backend's limit is held under",
                );
                Duration::ZERO
            }
            Some(ms) => self.millis(
                &format!("{path}.target_p95_ms"),
                Some(ms),
                Duration::ZERO,
                1,
            ),
        };
        let min_path = format!("{path}.min_inflight");
        let min_inflight = match a.min_inflight {
            None => {
                self.error(
                    &min_path,
                    "required: the lowest limit a backend may be given (at least 1)",
                );
                1
            }
            Some(n) => self.count(&min_path, Some(n), 1, 1),
        };
        if min_inflight > limits.max_inflight {
            self.error(
                &min_path,
                format!(
                    "{min_inflight} must be at most limits.max_inflight ({})",
                    limits.max_inflight
                ),
            );
        } else {
            // Overrides in range (others have their own error already) below the floor.
            let low = backends
                .unwrap_or_default()
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let max = b.max_inflight?;
                    (1..i64::from(min_inflight))
                        .contains(&max)
                        .then_some((i, max))
                });
            for (i, max) in low.collect::<Vec<_>>() {
                self.error(
                    format!("{prefix}.backend[{i}].max_inflight"),
                    format!(
                        "{max} is below adaptive.min_inflight ({min_inflight}): a backend's limit must be able to stay at min_inflight"
                    ),
                );
            }
        }
        let load_target = a.load_target.and_then(|t| {
            if t > 0.0 && t <= Adaptive::MAX_LOAD_TARGET {
                Some(t)
            } else {
                self.error(
                    format!("{path}.load_target"),
                    format!(
                        "must be in (0, {}] (got {t}): the utilization a backend may report, 1.0 = at capacity",
                        Adaptive::MAX_LOAD_TARGET
                    ),
                );
                None
            }
        });
        (self.errors.len() == errors).then_some(Adaptive {
            target_p95,
            min_inflight,
            load_target,
        })
    }

    /// `[upstream.scaling]`: `target_utilization` in (0, 1].
    fn scaling(&mut self, prefix: &str, s: Option<&file::Scaling>) -> Scaling {
        let default = Scaling::default();
        match s.and_then(|s| s.target_utilization) {
            None => default,
            Some(t) if t > 0.0 && t <= 1.0 => Scaling {
                target_utilization: t,
            },
            Some(t) => {
                self.error(
                    format!("{prefix}.scaling.target_utilization"),
                    format!("must be in (0, 1] (got {t}): the share of each backend's capacity the desired-backends figure plans to use"),
                );
                default
            }
        }
    }

    /// A share in `[0, 1]` (or `[0, 1)` when `one_ok` is false).
    fn share(&mut self, path: &str, value: Option<f64>, default: f64, one_ok: bool) -> f64 {
        match value {
            None => default,
            Some(v) if v >= 0.0 && (v < 1.0 || (one_ok && v == 1.0)) => v,
            Some(v) => {
                let range = if one_ok { "[0, 1]" } else { "[0, 1)" };
                self.error(path, format!("must be in {range} (got {v})"));
                default
            }
        }
    }

    fn affinity(&mut self, path: &str, text: &str) -> Option<Affinity> {
        let parsed = match text.split_once(':') {
            Some(("header", name)) if is_token(name) => {
                Some(Affinity::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if is_token(name) => Some(Affinity::Cookie(name.to_owned())),
            Some(("header" | "cookie", name)) => {
                self.error(path, format!("{text:?}: {name:?} is not a valid name"));
                return None;
            }
            _ => None,
        };
        if parsed.is_none() {
            self.error(
                path,
                format!("{text:?} must be \"header:NAME\" or \"cookie:NAME\""),
            );
        }
        parsed
    }

    fn limits(&mut self, prefix: &str, l: Option<&file::Limits>) -> Limits {
        let default = file::Limits::default();
        let l = l.unwrap_or(&default);
        let d = Limits::DEFAULT;
        let max_inflight = self.count(
            &format!("{prefix}.limits.max_inflight"),
            l.max_inflight,
            d.max_inflight,
            1,
        );
        let queue_depth = self.count(
            &format!("{prefix}.limits.queue_depth"),
            l.queue_depth,
            d.queue_depth,
            0,
        );
        // Without a queue nothing waits, so no timeout is needed.
        let min_timeout = i64::from(queue_depth > 0);
        let queue_timeout = self.millis(
            &format!("{prefix}.limits.queue_timeout_ms"),
            l.queue_timeout_ms,
            d.queue_timeout,
            min_timeout,
        );
        let target_path = format!("{prefix}.limits.queue_target_ms");
        let queue_target = match l.queue_target_ms {
            // A file written before the key existed keeps validating: the default
            // target never exceeds the timeout (equal, standing changes no wait).
            None => d.queue_target.min(queue_timeout),
            Some(ms) => {
                let target = self.millis(&target_path, Some(ms), d.queue_target, 1);
                if queue_depth > 0 && target >= queue_timeout {
                    self.error(
                        &target_path,
                        format!(
                            "{ms} must be less than queue_timeout_ms ({}): it is the shorter \
                             wait a standing queue allows",
                            millis_of(queue_timeout)
                        ),
                    );
                }
                target
            }
        };
        let queue_interval = self.millis(
            &format!("{prefix}.limits.queue_interval_ms"),
            l.queue_interval_ms,
            d.queue_interval,
            1,
        );
        let mode = match l.mode.as_deref() {
            None => d.mode,
            Some(text) => Mode::parse(text).unwrap_or_else(|| {
                self.error(
                    format!("{prefix}.limits.mode"),
                    format!("{text:?} must be \"enforce\" or \"shadow\""),
                );
                d.mode
            }),
        };
        Limits {
            max_inflight,
            queue_depth,
            queue_timeout,
            queue_target,
            queue_interval,
            mode,
        }
    }

    fn levels(&mut self, prefix: &str, l: Option<&file::Levels>, limits: &Limits) -> Levels {
        let default = file::Levels::default();
        let l = l.unwrap_or(&default);
        let path = format!("{prefix}.levels");
        let caution = match &l.caution {
            Some(t) => self.thresholds(&format!("{path}.caution"), t, limits, false),
            None => Thresholds::default_caution(limits.queue_depth),
        };
        let danger = match &l.danger {
            Some(t) => self.thresholds(&format!("{path}.danger"), t, limits, true),
            None => Thresholds::default_danger(limits.queue_depth),
        };
        let danger_path = format!("{path}.danger");
        let note = |written: bool| if written { "" } else { " by default" };
        let notes = (note(l.caution.is_some()), note(l.danger.is_some()));
        self.ordered(&danger_path, "queue", caution.queue, danger.queue, notes);
        self.ordered(
            &danger_path,
            "queue_wait_ms",
            caution.queue_wait.map(millis_of),
            danger.queue_wait.map(millis_of),
            notes,
        );
        self.ordered(
            &danger_path,
            "p95_ms",
            caution.p95.map(millis_of),
            danger.p95.map(millis_of),
            notes,
        );
        self.ordered(
            &danger_path,
            "error_rate",
            caution.error_rate,
            danger.error_rate,
            notes,
        );
        Levels {
            caution,
            danger,
            cooldown: self.millis(
                &format!("{path}.cooldown_ms"),
                l.cooldown_ms,
                Levels::DEFAULT_COOLDOWN,
                0,
            ),
            window: self.millis(
                &format!("{path}.window_ms"),
                l.window_ms,
                Levels::DEFAULT_WINDOW,
                1000,
            ),
            min_samples: self.count(
                &format!("{path}.min_samples"),
                l.min_samples,
                Levels::DEFAULT_MIN_SAMPLES,
                1,
            ),
        }
    }

    /// Danger must not trigger before caution on the same signal.
    fn ordered<T: PartialOrd + std::fmt::Display>(
        &mut self,
        danger_path: &str,
        key: &str,
        caution: Option<T>,
        danger: Option<T>,
        (caution_note, danger_note): (&str, &str),
    ) {
        if let (Some(c), Some(d)) = (caution, danger) {
            if d < c {
                self.error(
                    format!("{danger_path}.{key}"),
                    format!(
                        "danger must be at least caution ({c}{caution_note}), got {d}{danger_note}"
                    ),
                );
            }
        }
    }

    fn thresholds(
        &mut self,
        path: &str,
        t: &file::Thresholds,
        limits: &Limits,
        danger: bool,
    ) -> Thresholds {
        let utilization = t.utilization.and_then(|u| {
            let key = format!("{path}.utilization");
            if danger {
                self.error(
                    key,
                    "utilization only raises the level to caution: busy is not overloaded",
                );
                None
            } else if u > 0.0 && u <= 1.0 {
                Some(u)
            } else {
                self.error(key, format!("must be in (0, 1] (got {u})"));
                None
            }
        });
        let queue = t.queue.and_then(|q| {
            let key = format!("{path}.queue");
            let q = self.int(&key, Some(q), 0, 1, MAX_COUNT);
            let q = u32::try_from(q).ok().filter(|&q| q > 0)?;
            if q > limits.queue_depth {
                self.error(
                    key,
                    format!(
                        "{q} can never be reached: queue_depth is {}",
                        limits.queue_depth
                    ),
                );
                return None;
            }
            Some(q)
        });
        let queue_wait = t.queue_wait_ms.and_then(|ms| {
            let key = format!("{path}.queue_wait_ms");
            let wait = self.millis(&key, Some(ms), Duration::ZERO, 1);
            if wait.is_zero() {
                return None;
            }
            if limits.queue_depth == 0 {
                self.error(key, format!("{ms} can never be reached: queue_depth is 0"));
                return None;
            }
            if wait > limits.queue_timeout {
                self.error(
                    key,
                    format!(
                        "{ms} can never be reached: queue_timeout_ms is {}",
                        millis_of(limits.queue_timeout)
                    ),
                );
                return None;
            }
            Some(wait)
        });
        let p95 = t.p95_ms.and_then(|ms| {
            let p95 = self.millis(&format!("{path}.p95_ms"), Some(ms), Duration::ZERO, 1);
            (!p95.is_zero()).then_some(p95)
        });
        let error_rate = t.error_rate.and_then(|r| {
            if r > 0.0 && r <= 1.0 {
                Some(r)
            } else {
                self.error(
                    format!("{path}.error_rate"),
                    format!(
                        "must be in (0, 1] (got {r}); 0 would hold the level forever, leave the key out instead"
                    ),
                );
                None
            }
        });
        Thresholds {
            utilization,
            queue,
            queue_wait,
            p95,
            error_rate,
        }
    }

    fn health(&mut self, prefix: &str, h: Option<&file::Health>) -> Health {
        let default = file::Health::default();
        let h = h.unwrap_or(&default);
        let d = Health::DEFAULT;
        let path = format!("{prefix}.health");
        let probe = h
            .path
            .as_deref()
            .and_then(|p| self.route(&format!("{path}.path"), p).then(|| p.to_owned()));
        let interval = self.millis(&format!("{path}.interval_ms"), h.interval_ms, d.interval, 1);
        // Without its own timeout, a probe gets the default or the interval, whichever is
        // shorter, so a short interval alone is valid.
        let mut timeout = self.millis(
            &format!("{path}.timeout_ms"),
            h.timeout_ms,
            d.timeout.min(interval),
            1,
        );
        if timeout > interval {
            self.error(
                format!("{path}.timeout_ms"),
                format!(
                    "must be at most interval_ms ({}), got {}",
                    millis_of(interval),
                    millis_of(timeout)
                ),
            );
            timeout = interval;
        }
        let check = match h.check.as_deref() {
            None if probe.is_some() => Check::Http,
            None => Check::None,
            Some("http") => {
                if h.path.is_none() {
                    self.error(format!("{path}.path"), "required with check = \"http\"");
                }
                Check::Http
            }
            Some("tcp") => Check::Tcp,
            Some("grpc") => Check::Grpc,
            Some("none") => Check::None,
            Some(other) => {
                self.error(
                    format!("{path}.check"),
                    format!("unknown check {other:?}: use \"http\", \"grpc\", \"tcp\" or \"none\""),
                );
                Check::None
            }
        };
        let eject = self.millis(&format!("{path}.eject_ms"), h.eject_ms, d.eject, 1);
        let mut eject_max = self.millis(
            &format!("{path}.eject_max_ms"),
            h.eject_max_ms,
            d.eject_max.max(eject),
            1,
        );
        if eject_max < eject {
            self.error(
                format!("{path}.eject_max_ms"),
                format!(
                    "must be at least eject_ms ({}), got {}",
                    millis_of(eject),
                    millis_of(eject_max)
                ),
            );
            eject_max = eject;
        }
        Health {
            check,
            eject_max,
            eject_on_5xx: h.eject_on_5xx.unwrap_or(d.eject_on_5xx),
            max_ejected_share: self.share(
                &format!("{path}.max_ejected_share"),
                h.max_ejected_share,
                d.max_ejected_share,
                true,
            ),
            panic_threshold: self.share(
                &format!("{path}.panic_threshold"),
                h.panic_threshold,
                d.panic_threshold,
                false,
            ),
            local_zone_min_healthy: self.share(
                &format!("{path}.local_zone_min_healthy"),
                h.local_zone_min_healthy,
                d.local_zone_min_healthy,
                true,
            ),
            path: probe,
            interval,
            timeout,
            rise: self.count(&format!("{path}.rise"), h.rise, d.rise, 1),
            fall: self.count(&format!("{path}.fall"), h.fall, d.fall, 1),
            eject_after_failures: self.count(
                &format!("{path}.eject_after_failures"),
                h.eject_after_failures,
                d.eject_after_failures,
                0,
            ),
            eject,
            slow_start: self.millis(
                &format!("{path}.slow_start_ms"),
                h.slow_start_ms,
                d.slow_start,
                0,
            ),
        }
    }

    fn backends(
        &mut self,
        prefix: &str,
        backends: Option<&[file::Backend]>,
        limits: &Limits,
    ) -> (Vec<Backend>, Vec<NamedBackend>) {
        let backends = backends.unwrap_or_default();
        if backends.is_empty() {
            self.error(
                format!("{prefix}.backend"),
                "required: at least one [[upstream.backend]]",
            );
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(backends.len());
        let mut named = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let path = format!("{prefix}.backend[{i}]");
            let address = match b.address.as_deref() {
                None => {
                    self.error(format!("{path}.address"), "required: IP:port or name:port");
                    None
                }
                Some(text) => self.backend_address(&format!("{path}.address"), text),
            };
            let address = address.filter(|addr| {
                let key = match addr {
                    Ok(a) => a.to_string(),
                    Err((host, port)) => format!("{host}:{port}"),
                };
                if let Some(first) = seen.get(&key) {
                    let what = if addr.is_ok() { "address" } else { "name" };
                    self.error(
                        format!("{path}.address"),
                        format!("duplicate backend {what} {key} (also backend[{first}])"),
                    );
                    return false;
                }
                seen.insert(key, i);
                true
            });
            let zone = match b.zone.as_deref() {
                Some(zone) if self.name(&format!("{path}.zone"), "zone", zone) => zone.to_owned(),
                _ => DEFAULT_ZONE.to_owned(),
            };
            let max_inflight = self.count(
                &format!("{path}.max_inflight"),
                b.max_inflight,
                limits.max_inflight,
                1,
            );
            match address {
                Some(Ok(address)) => out.push(Backend {
                    address,
                    zone,
                    max_inflight,
                    from: None,
                }),
                Some(Err((host, port))) => named.push(NamedBackend {
                    host,
                    port,
                    zone,
                    max_inflight,
                }),
                None => {}
            }
        }
        (out, named)
    }

    /// A backend's address: a literal `IP:port`, or `name:port` (a host name to look
    /// up, lower-cased, without a trailing dot). The port is never 0.
    #[allow(clippy::type_complexity)]
    fn backend_address(
        &mut self,
        path: &str,
        text: &str,
    ) -> Option<Result<SocketAddr, (String, u16)>> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            if addr.port() == 0 {
                self.error(path, format!("{addr}: port 0 is not a port"));
                return None;
            }
            return Some(Ok(addr));
        }
        let named = text.rsplit_once(':').and_then(|(host, port)| {
            let host = host.to_ascii_lowercase();
            let host = host.strip_suffix('.').unwrap_or(&host).to_owned();
            let port = port.parse::<u16>().ok()?;
            // A bare IPv6 address without brackets, or an IP with a bad port, is no name.
            let is_ip = host.parse::<std::net::IpAddr>().is_ok() || host.contains(':');
            (is_host_name(&host) && !is_ip && host.contains(|c: char| c.is_ascii_alphabetic()))
                .then_some((host, port))
        });
        match named {
            Some((_, 0)) => {
                self.error(path, format!("{text}: port 0 is not a port"));
                None
            }
            Some((host, port)) => Some(Err((host, port))),
            None => {
                self.error(
                    path,
                    format!(
                        "{text:?} is neither IP:port nor name:port (e.g. \"10.0.1.1:3000\", \"[2001:db8::1]:3000\", \"app.default.svc.cluster.local:8080\")"
                    ),
                );
                None
            }
        }
    }

    fn priorities(&mut self, rules: Option<&[file::Priority]>) -> Vec<PriorityRule> {
        let mut out = Vec::new();
        for (i, rule) in rules.unwrap_or_default().iter().enumerate() {
            let path = format!("priority[{i}]");
            let matcher = self.matcher(&format!("{path}.match"), rule.matcher.as_ref());
            let class = match rule.class.as_deref() {
                None => {
                    self.error(
                        format!("{path}.class"),
                        "required: critical, high, normal or low",
                    );
                    None
                }
                Some(text) => Class::parse(text).or_else(|| {
                    self.error(
                        format!("{path}.class"),
                        format!("unknown class {text:?} (expected critical, high, normal or low)"),
                    );
                    None
                }),
            };
            if let (Some(matcher), Some(class)) = (matcher, class) {
                out.push(PriorityRule { matcher, class });
            }
        }
        out
    }

    fn matcher(&mut self, path: &str, m: Option<&file::Match>) -> Option<PriorityMatch> {
        let exactly_one = "give exactly one of path_prefix = \"/…\" or header = \"name:value\"";
        let Some(m) = m else {
            self.error(path, format!("required: {exactly_one}"));
            return None;
        };
        match (m.path_prefix.as_deref(), m.header.as_deref()) {
            (Some(prefix), None) => self
                .route(&format!("{path}.path_prefix"), prefix)
                .then(|| PriorityMatch::PathPrefix(prefix.to_owned())),
            (None, Some(header)) => {
                let parsed = header
                    .split_once(':')
                    .map(|(name, value)| (name.trim(), value.trim()))
                    .filter(|(name, value)| {
                        is_token(name) && !value.is_empty() && is_header_value(value)
                    });
                match parsed {
                    Some((name, value)) => Some(PriorityMatch::Header(
                        name.to_ascii_lowercase(),
                        value.to_owned(),
                    )),
                    None => {
                        self.error(
                            format!("{path}.header"),
                            format!("{header:?} must be name:value, e.g. \"x-priority:high\""),
                        );
                        None
                    }
                }
            }
            _ => {
                self.error(path, exactly_one);
                None
            }
        }
    }
}

/// A DNS host name as a `Host` header carries it (lower case here): dot-separated
/// labels of letters, digits and '-', each 1 to 63 bytes, 253 bytes in all. IPv4
/// literals pass as such names.
fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// An HTTP token (RFC 9110 §5.6.2): what header and cookie names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Visible ASCII, spaces and tabs: what a header value can be compared against.
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Whole milliseconds of `d`, saturating.
pub(super) fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
