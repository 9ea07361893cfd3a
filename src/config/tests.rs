//! Tests of parsing and validation: the typed result of a full file, defaults, one
//! test per kind of error (exact key path and part of the message), and robustness.

use super::*;

/// Every key of the schema, none at its default.
const FULL: &str = r#"
[server]
listen = ["0.0.0.0:8080", "[::1]:8443"]
threads = 4
runtime = "multi_thread"
zone = "a"
admin_listen = "127.0.0.1:9901"
grace_period_ms = 5000
max_request_body_bytes = 0
retry_after_max_secs = 10

[server.timeouts]
connect_ms = 500
read_ms = 20000
write_ms = 21000
response_ms = 40000
stream_idle_ms = 100000
client_header_ms = 5000
client_idle_ms = 30000
upstream_idle_ms = 45000

[[upstream]]
name = "mcp"
routes = ["/", "/mcp/"]
balance = "consistent_hash"
affinity = "header:Mcp-Session-Id"
retry_on_connect_failure = 2
retry_on_status = [500, 502, 503, 504]
idempotency_header = "Idempotency-Key"

[upstream.limits]
max_inflight = 150
queue_depth = 200
queue_timeout_ms = 300

[upstream.levels]
caution = { utilization = 0.80, queue = 10, queue_wait_ms = 20, p95_ms = 150, error_rate = 0.001 }
danger  = { queue = 50, queue_wait_ms = 50, p95_ms = 250, error_rate = 0.005 }
cooldown_ms = 2000
window_ms = 10000
min_samples = 50

[upstream.health]
path = "/health"
interval_ms = 2000
timeout_ms = 700
rise = 3
fall = 4
eject_after_failures = 0
eject_ms = 20000
slow_start_ms = 0

[upstream.fairness]
key = "header:X-Tenant-Id"
[upstream.adaptive]
target_p95_ms = 85
min_inflight = 4
load_target = 0.9

[[upstream.backend]]
address = "10.0.1.1:3000"
zone = "a"
max_inflight = 100

[[upstream.backend]]
address = "10.0.2.1:3000"
zone = "b"

[[upstream]]
name = "api.v2"
routes = ["/api/"]
balance = "round_robin"
affinity = "cookie:sid"
retry_on_connect_failure = 0

[upstream.limits]
queue_depth = 0
queue_timeout_ms = 0

[[upstream.backend]]
address = "[fd00::1]:80"

[[priority]]
match = { path_prefix = "/admin/" }
class = "critical"

[[priority]]
match = { header = "X-Priority: low" }
class = "low"
"#;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[test]
fn full_example_parses_to_typed_values() {
    let config = parse(FULL).expect("FULL is valid");
    let expected = Config {
        server: Server {
            listen: vec![addr("0.0.0.0:8080"), addr("[::1]:8443")],
            tls: None,
            threads: 4,
            runtime: RuntimeLayout::MultiThread,
            zone: Some("a".into()),
            admin_listen: Some(addr("127.0.0.1:9901")),
            grace_period: ms(5000),
            timeouts: Timeouts {
                connect: ms(500),
                read: ms(20_000),
                write: ms(21_000),
                response: ms(40_000),
                stream_idle: ms(100_000),
                client_header: ms(5000),
                client_idle: ms(30_000),
                upstream_idle: ms(45_000),
            },
            max_request_body_bytes: 0,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            retry_after_max_secs: 10,
            upgrade_sock: DEFAULT_UPGRADE_SOCK.into(),
            max_connections: 0,
            max_connections_per_ip: 0,
            access_log: false,
            proxy_protocol: false,
            trusted_proxies: Default::default(),
            dns: Default::default(),
            tracing: None,
        },
        upstreams: vec![
            Upstream {
                name: "mcp".into(),
                hosts: Vec::new(),
                routes: vec!["/".into(), "/mcp/".into()],
                protocol: Protocol::H1,
                balance: Balance::ConsistentHash,
                affinity: Some(Affinity::Header("mcp-session-id".into())),
                retry_on_connect_failure: 2,
                retry_budget: DEFAULT_RETRY_BUDGET,
                retry_on_status: vec![500, 502, 503, 504],
                idempotency_header: Some("idempotency-key".into()),
                limits: Limits {
                    max_inflight: 150,
                    queue_depth: 200,
                    queue_timeout: ms(300),
                    queue_target: ms(5),
                    queue_interval: ms(100),
                    mode: Mode::Enforce,
                },
                levels: Levels {
                    caution: Thresholds {
                        utilization: Some(0.80),
                        queue: Some(10),
                        queue_wait: Some(ms(20)),
                        p95: Some(ms(150)),
                        error_rate: Some(0.001),
                    },
                    danger: Thresholds {
                        utilization: None,
                        queue: Some(50),
                        queue_wait: Some(ms(50)),
                        p95: Some(ms(250)),
                        error_rate: Some(0.005),
                    },
                    cooldown: ms(2000),
                    window: ms(10_000),
                    min_samples: 50,
                },
                health: Health {
                    path: Some("/health".into()),
                    interval: ms(2000),
                    timeout: ms(700),
                    rise: 3,
                    fall: 4,
                    eject_after_failures: 0,
                    eject: ms(20_000),
                    slow_start: ms(0),
                    check: Check::Http,
                    eject_max: ms(300_000),
                    ..Health::DEFAULT
                },
                fairness: Some(Fairness {
                    key: ClientKey::Header("x-tenant-id".into()),
                }),
                scaling: Default::default(),
                adaptive: Some(Adaptive {
                    target_p95: ms(85),
                    min_inflight: 4,
                    load_target: Some(0.9),
                }),
                named: Vec::new(),
                backends: vec![
                    Backend {
                        address: addr("10.0.1.1:3000"),
                        zone: "a".into(),
                        max_inflight: 100,
                        from: None,
                    },
                    Backend {
                        address: addr("10.0.2.1:3000"),
                        zone: "b".into(),
                        max_inflight: 150,
                        from: None,
                    },
                ],
            },
            Upstream {
                name: "api.v2".into(),
                hosts: Vec::new(),
                routes: vec!["/api/".into()],
                protocol: Protocol::H1,
                balance: Balance::RoundRobin,
                affinity: Some(Affinity::Cookie("sid".into())),
                retry_on_connect_failure: 0,
                retry_budget: DEFAULT_RETRY_BUDGET,
                retry_on_status: DEFAULT_RETRY_ON_STATUS.to_vec(),
                idempotency_header: None,
                limits: Limits {
                    max_inflight: 100,
                    queue_depth: 0,
                    queue_timeout: ms(0),
                    queue_target: ms(0),
                    queue_interval: ms(100),
                    mode: Mode::Enforce,
                },
                levels: Levels::defaults(0),
                health: Health::DEFAULT,
                fairness: None,
                scaling: Default::default(),
                adaptive: None,
                named: Vec::new(),
                backends: vec![Backend {
                    address: addr("[fd00::1]:80"),
                    zone: DEFAULT_ZONE.into(),
                    max_inflight: 100,
                    from: None,
                }],
            },
        ],
        priorities: vec![
            PriorityRule {
                matcher: PriorityMatch::PathPrefix("/admin/".into()),
                class: Class::Critical,
            },
            PriorityRule {
                matcher: PriorityMatch::Header("x-priority".into(), "low".into()),
                class: Class::Low,
            },
        ],
    };
    assert_eq!(config, expected);
}

/// The smallest valid file, with `extra` appended (more tables or upstreams).
fn minimal(extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n\n\
         [[upstream]]\nname = \"api\"\nroutes = [\"/\"]\n\
         [[upstream.backend]]\naddress = \"10.0.0.1:80\"\n{extra}"
    )
}

/// A file with one upstream whose body (keys and sub-tables) is `upstream`, and a
/// `[server]` table whose body is `server` after `listen`.
fn doc(server: &str, upstream: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:8080\"]\n{server}\n\n\
         [[upstream]]\nname = \"api\"\nroutes = [\"/\"]\n{upstream}\n\n\
         [[upstream.backend]]\naddress = \"10.0.0.1:80\"\n"
    )
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(_) => panic!("expected errors, the file is valid:\n{text}"),
        Err(ConfigErrors(errors)) => {
            assert!(!errors.is_empty(), "Err with no errors");
            errors
        }
    }
}

/// Asserts that parsing `text` reports an error at exactly `path` whose message
/// contains `needle`.
#[track_caller]
fn assert_error(text: &str, path: &str, needle: &str) {
    let errors = errors(text);
    assert!(
        errors
            .iter()
            .any(|e| e.path == path && e.message.contains(needle)),
        "no error at {path:?} containing {needle:?}; got:\n{}\nin:\n{text}",
        ConfigErrors(errors.clone())
    );
}

#[test]
fn defaults_fill_every_absent_key() {
    let config = parse(&minimal("")).expect("minimal is valid");
    let s = &config.server;
    assert_eq!(s.listen, vec![addr("127.0.0.1:8080")]);
    assert_eq!(s.threads, 2);
    assert_eq!(s.zone, None);
    assert_eq!(s.admin_listen, None);
    assert_eq!(s.grace_period, ms(10_000));
    assert_eq!(s.max_request_body_bytes, 10 * 1024 * 1024);
    assert_eq!(s.retry_after_max_secs, 30);
    assert_eq!(
        s.timeouts,
        Timeouts {
            connect: ms(1000),
            read: ms(30_000),
            write: ms(30_000),
            response: ms(60_000),
            stream_idle: ms(300_000),
            client_header: ms(10_000),
            client_idle: ms(60_000),
            upstream_idle: ms(60_000),
        }
    );

    let u = &config.upstreams[0];
    assert_eq!(u.balance, Balance::LeastInflight);
    assert_eq!(u.affinity, None);
    assert_eq!(u.retry_on_connect_failure, 1);
    assert_eq!(
        u.limits,
        Limits {
            max_inflight: 100,
            queue_depth: 100,
            queue_timeout: ms(250),
            queue_target: ms(5),
            queue_interval: ms(100),
            mode: Mode::Enforce,
        }
    );
    assert_eq!(
        u.levels.caution,
        Thresholds {
            utilization: Some(0.85),
            queue: Some(10),
            ..Thresholds::default()
        }
    );
    assert_eq!(
        u.levels.danger,
        Thresholds {
            queue: Some(50),
            ..Thresholds::default()
        }
    );
    assert_eq!(u.levels.cooldown, ms(1000));
    assert_eq!(u.levels.window, ms(5000));
    assert_eq!(u.levels.min_samples, 20);
    assert_eq!(
        u.health,
        Health {
            path: None,
            interval: ms(1000),
            timeout: ms(500),
            rise: 2,
            fall: 2,
            eject_after_failures: 5,
            eject: ms(10_000),
            slow_start: ms(10_000),
            check: Check::None,
            eject_max: ms(300_000),
            eject_on_5xx: true,
            max_ejected_share: 0.5,
            panic_threshold: 0.25,
            local_zone_min_healthy: 0.5,
        }
    );
    assert_eq!(
        u.backends,
        vec![Backend {
            address: addr("10.0.0.1:80"),
            zone: "default".into(),
            max_inflight: 100,
            from: None,
        }]
    );
    assert!(config.priorities.is_empty());
}

#[test]
fn default_queue_thresholds_follow_queue_depth() {
    let level = |depth: &str| {
        let config = parse(&doc("", &format!("[upstream.limits]\n{depth}"))).expect("valid");
        let levels = config.upstreams[0].levels;
        (levels.caution.queue, levels.danger.queue)
    };
    assert_eq!(level("queue_depth = 200"), (Some(20), Some(100)));
    assert_eq!(level("queue_depth = 5"), (Some(1), Some(2)));
    assert_eq!(level("queue_depth = 1"), (Some(1), Some(1)));
    // No queue: no queue signal (it could never be reached).
    assert_eq!(level("queue_depth = 0"), (None, None));
}

#[test]
fn an_explicit_level_table_uses_only_its_own_signals() {
    let config = parse(&doc(
        "",
        "[upstream.levels]\ncaution = { p95_ms = 100 }\ndanger = {}",
    ))
    .expect("valid");
    let levels = config.upstreams[0].levels;
    assert_eq!(
        levels.caution,
        Thresholds {
            p95: Some(ms(100)),
            ..Thresholds::default()
        }
    );
    assert!(levels.danger.is_empty());
    // Integers are accepted where a share is expected.
    let config =
        parse(&doc("", "[upstream.levels]\ncaution = { utilization = 1 }")).expect("valid");
    assert_eq!(config.upstreams[0].levels.caution.utilization, Some(1.0));
}

// ---- [server] ---------------------------------------------------------------

#[test]
fn server_table_and_listen_are_required() {
    assert_error(
        "[[upstream]]\nname = \"a\"\nroutes = [\"/\"]\n[[upstream.backend]]\naddress = \"10.0.0.1:80\"",
        "server",
        "required",
    );
    assert_error(
        &minimal("").replace("listen = [\"127.0.0.1:8080\"]", ""),
        "server.listen",
        "required",
    );
    assert_error(
        &minimal("").replace("\"127.0.0.1:8080\"", ""),
        "server.listen",
        "at least one",
    );
}

#[test]
fn listen_addresses_must_be_literal_and_distinct() {
    let text = minimal("").replace(
        "\"127.0.0.1:8080\"",
        "\"127.0.0.1:8080\", \"localhost:8080\", \"127.0.0.1:8080\"",
    );
    assert_error(
        &text,
        "server.listen[1]",
        "\"localhost:8080\" is not a literal IP:port",
    );
    assert_error(
        &text,
        "server.listen[2]",
        "duplicate listen address 127.0.0.1:8080 (also listen[0])",
    );
}

#[test]
fn server_values_are_range_checked() {
    assert_error(
        &doc("threads = 0", ""),
        "server.threads",
        "must be at least 1 (got 0)",
    );
    assert_error(
        &doc("threads = 2000", ""),
        "server.threads",
        "must be at most 1024 (got 2000)",
    );
    assert_error(
        &doc("runtime = \"work_stealing\"", ""),
        "server.runtime",
        "unknown runtime \"work_stealing\" (expected per_thread or multi_thread)",
    );
    assert_error(
        &doc("zone = \"a b\"", ""),
        "server.zone",
        "invalid zone \"a b\"",
    );
    assert_error(
        &doc("admin_listen = \"admin:9901\"", ""),
        "server.admin_listen",
        "not a literal IP:port",
    );
    assert_error(
        &doc("admin_listen = \"127.0.0.1:8080\"", ""),
        "server.admin_listen",
        "is also listen[0]",
    );
    assert_error(
        &doc("grace_period_ms = -1", ""),
        "server.grace_period_ms",
        "at least 0 (got -1)",
    );
    assert_error(
        &doc("grace_period_ms = 100000000", ""),
        "server.grace_period_ms",
        "at most 86400000",
    );
    assert_error(
        &doc("max_request_body_bytes = -5", ""),
        "server.max_request_body_bytes",
        "at least 0",
    );
    assert_error(
        &doc("retry_after_max_secs = 0", ""),
        "server.retry_after_max_secs",
        "at least 1",
    );
}

#[test]
fn timeouts_must_be_positive_and_client_idle_whole_seconds() {
    for key in [
        "connect_ms",
        "read_ms",
        "write_ms",
        "response_ms",
        "stream_idle_ms",
        "client_header_ms",
        "upstream_idle_ms",
    ] {
        let text = doc(&format!("[server.timeouts]\n{key} = 0"), "");
        assert_error(
            &text,
            &format!("server.timeouts.{key}"),
            "must be at least 1 (got 0)",
        );
    }
    assert_error(
        &doc("[server.timeouts]\nclient_idle_ms = 500", ""),
        "server.timeouts.client_idle_ms",
        "must be at least 1000 (got 500)",
    );
}

// ---- [[upstream]] -----------------------------------------------------------

#[test]
fn at_least_one_upstream() {
    assert_error(
        "[server]\nlisten = [\"127.0.0.1:80\"]\n",
        "upstream",
        "at least one",
    );
}

#[test]
fn upstream_names_are_required_valid_and_unique() {
    assert_error(
        &minimal("").replace("name = \"api\"", ""),
        "upstream[0].name",
        "required",
    );
    assert_error(
        &minimal("").replace("name = \"api\"", "name = \"my api\""),
        "upstream[0].name",
        "invalid upstream name \"my api\"",
    );
    let text = minimal(
        "[[upstream]]\nname = \"api\"\nroutes = [\"/b\"]\n[[upstream.backend]]\naddress = \"10.0.0.2:80\"",
    );
    assert_error(
        &text,
        "upstream[1].name",
        "duplicate upstream name \"api\" (also upstream[0])",
    );
}

#[test]
fn routes_are_required_paths() {
    assert_error(
        &minimal("").replace("routes = [\"/\"]", ""),
        "upstream[0].routes",
        "required",
    );
    assert_error(
        &minimal("").replace("routes = [\"/\"]", "routes = []"),
        "upstream[0].routes",
        "at least one",
    );
    let text = minimal("").replace("[\"/\"]", "[\"/\", \"api\", \"/a?b\", \"/\"]");
    assert_error(
        &text,
        "upstream[0].routes[1]",
        "\"api\" must start with '/'",
    );
    assert_error(
        &text,
        "upstream[0].routes[2]",
        "no spaces, query or fragment",
    );
    assert_error(
        &text,
        "upstream[0].routes[3]",
        "duplicate route \"/\" (also routes[0])",
    );
}

#[test]
fn a_route_is_served_by_one_upstream() {
    let text = minimal(
        "[[upstream]]\nname = \"x\"\nroutes = [\"/api\"]\n[[upstream.backend]]\naddress = \"10.0.0.2:80\"\n\
         [[upstream]]\nname = \"y\"\nroutes = [\"/api\", \"/api/\"]\n[[upstream.backend]]\naddress = \"10.0.0.3:80\"",
    );
    assert_error(
        &text,
        "upstream[2].routes[0]",
        "route \"/api\" is already served by upstream \"x\"",
    );
    assert_eq!(errors(&text).len(), 1, "/api/ is a different prefix");
}

#[test]
fn routes_are_unique_per_host() {
    let up = |name: &str, hosts: &str, routes: &str, n: u8| {
        format!(
            "[[upstream]]\nname = \"{name}\"\n{hosts}\nroutes = {routes}\n[[upstream.backend]]\naddress = \"10.0.0.{n}:80\"\n"
        )
    };
    // The same prefix on different hosts (and on the hostless "api") is fine.
    let ok = minimal(&format!(
        "{}{}{}",
        up(
            "a",
            "hosts = [\"api.example.com\", \"*.api.example.com\"]",
            "[\"/\"]",
            2
        ),
        up(
            "b",
            "hosts = [\"WWW.example.com\"]",
            "[\"/\", \"/static/\"]",
            3
        ),
        up("c", "hosts = [\"api.example.com\"]", "[\"/v2/\"]", 4),
    ));
    let config = parse(&ok).unwrap();
    assert_eq!(
        config.upstreams[1].hosts,
        ["api.example.com", "*.api.example.com"]
    );
    assert_eq!(
        config.upstreams[2].hosts,
        ["www.example.com"],
        "lower-cased"
    );
    assert!(config.upstreams[0].hosts.is_empty());
    assert!(config
        .explain()
        .contains("upstream \"a\": hosts api.example.com, *.api.example.com; routes /"));

    let text = minimal(&format!(
        "{}{}",
        up("a", "hosts = [\"api.example.com\"]", "[\"/\"]", 2),
        up(
            "b",
            "hosts = [\"x.test\", \"Api.Example.com\"]",
            "[\"/\"]",
            3
        ),
    ));
    assert_error(
        &text,
        "upstream[2].routes[0]",
        "route \"/\" for host \"api.example.com\" is already served by upstream \"a\"",
    );
    assert_eq!(errors(&text).len(), 1, "x.test's / is free");
}

#[test]
fn hosts_are_host_names() {
    let text = doc(
        "",
        "hosts = [\"ok.test\", \"a.test:80\", \"*.\", \"a..b\", \"*.ok.test\", \"ok.test\", \"a*.b\", \"a_b.test\"]",
    );
    assert_error(
        &text,
        "upstream[0].hosts[1]",
        "\"a.test:80\" is not a host name",
    );
    assert_error(&text, "upstream[0].hosts[2]", "is not a host name");
    assert_error(&text, "upstream[0].hosts[3]", "is not a host name");
    assert_error(
        &text,
        "upstream[0].hosts[5]",
        "duplicate host \"ok.test\" (also hosts[0])",
    );
    assert_error(&text, "upstream[0].hosts[6]", "is not a host name");
    assert_error(&text, "upstream[0].hosts[7]", "is not a host name");
    assert_eq!(errors(&text).len(), 6, "*.ok.test is fine");
    assert_error(&doc("", "hosts = []"), "upstream[0].hosts", "at least one");
}

#[test]
fn proxy_protocol_and_trusted_proxies() {
    let config = parse(&doc(
        "proxy_protocol = true\ntrusted_proxies = [\"10.1.2.3/8\", \"::1/128\", \"192.0.2.7\"]",
        "",
    ))
    .unwrap();
    let s = &config.server;
    assert!(s.proxy_protocol);
    let nets: Vec<String> = s
        .trusted_proxies
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "::1/128", "192.0.2.7/32"]);
    assert!(s.trusted_proxies.contains("10.200.0.1".parse().unwrap()));
    assert!(s
        .trusted_proxies
        .contains("::ffff:10.0.0.1".parse().unwrap()));
    assert!(!s.trusted_proxies.contains("11.0.0.1".parse().unwrap()));
    let explained = config.explain();
    assert!(explained.contains("PROXY protocol"), "{explained}");
    assert!(explained.contains("trusted proxies 10.0.0.0/8, ::1/128, 192.0.2.7/32"));

    let defaults = parse(&doc("", "")).unwrap();
    assert!(!defaults.server.proxy_protocol);
    assert!(defaults.server.trusted_proxies.is_empty());

    let text = doc(
        "trusted_proxies = [\"10.0.0.0/33\", \"lb.internal\", \"10.0.0.0/8\", \"10.9.0.0/8\"]",
        "",
    );
    assert_error(&text, "server.trusted_proxies[0]", "not an address or CIDR");
    assert_error(&text, "server.trusted_proxies[1]", "not an address or CIDR");
    assert_error(
        &text,
        "server.trusted_proxies[3]",
        "duplicate network 10.0.0.0/8",
    );
    assert_error(&doc("proxy_protocol = 1", ""), "server.proxy_protocol", "");
}

#[test]
fn balance_and_affinity() {
    assert_error(
        &doc("", "balance = \"random\""),
        "upstream[0].balance",
        "unknown balance \"random\"",
    );
    assert_error(
        &doc("", "balance = \"consistent_hash\""),
        "upstream[0].affinity",
        "required with balance = \"consistent_hash\"",
    );
    assert_error(
        &doc("", "affinity = \"mcp-session-id\""),
        "upstream[0].affinity",
        "\"mcp-session-id\" must be \"header:NAME\" or \"cookie:NAME\"",
    );
    assert_error(
        &doc("", "affinity = \"query:id\""),
        "upstream[0].affinity",
        "must be \"header:NAME\" or \"cookie:NAME\"",
    );
    assert_error(
        &doc("", "affinity = \"header:bad name\""),
        "upstream[0].affinity",
        "\"bad name\" is not a valid name",
    );
    assert_error(
        &doc("", "affinity = \"cookie:\""),
        "upstream[0].affinity",
        "is not a valid name",
    );
    assert_error(
        &doc("", "retry_on_connect_failure = -1"),
        "upstream[0].retry_on_connect_failure",
        "at least 0",
    );
}

#[test]
fn limits_are_range_checked() {
    let limits = |body: &str| doc("", &format!("[upstream.limits]\n{body}"));
    assert_error(
        &limits("max_inflight = 0"),
        "upstream[0].limits.max_inflight",
        "must be at least 1",
    );
    assert_error(
        &limits("max_inflight = 1000001"),
        "upstream[0].limits.max_inflight",
        "must be at most 1000000",
    );
    assert_error(
        &limits("queue_depth = -1"),
        "upstream[0].limits.queue_depth",
        "at least 0",
    );
    assert_error(
        &limits("queue_timeout_ms = 0"),
        "upstream[0].limits.queue_timeout_ms",
        "must be at least 1 (got 0)",
    );
    parse(&limits("queue_depth = 0\nqueue_timeout_ms = 0")).expect("no queue needs no timeout");
}

#[test]
fn limits_mode_is_enforce_or_shadow() {
    let limits = |body: &str| doc("", &format!("[upstream.limits]\n{body}"));
    let mode = |body: &str| {
        parse(&limits(body)).expect("valid").upstreams[0]
            .limits
            .mode
    };
    assert_eq!(mode(""), Mode::Enforce);
    assert_eq!(mode("mode = \"enforce\""), Mode::Enforce);
    assert_eq!(mode("mode = \"shadow\""), Mode::Shadow);
    for bad in ["\"Shadow\"", "\"off\"", "\"\""] {
        assert_error(
            &limits(&format!("mode = {bad}")),
            "upstream[0].limits.mode",
            "must be \"enforce\" or \"shadow\"",
        );
    }
    assert_error(
        &limits("mode = true"),
        "upstream[0].limits.mode",
        "invalid type",
    );
    let shadow = parse(&limits("mode = \"shadow\"")).expect("valid");
    assert!(
        shadow.explain().contains("shadow mode"),
        "{}",
        shadow.explain()
    );
    assert!(!parse(&limits(""))
        .expect("valid")
        .explain()
        .contains("shadow"));
}

#[test]
fn fairness_key_is_a_header_or_the_client_ip() {
    let fair = |body: &str| doc("", &format!("[upstream.fairness]\n{body}"));
    let key = |body: &str| {
        parse(&fair(body)).expect("valid").upstreams[0]
            .fairness
            .clone()
            .map(|f| f.key)
    };
    assert_eq!(key("key = \"client_ip\""), Some(ClientKey::ClientIp));
    assert_eq!(
        key("key = \"header:X-Tenant\""),
        Some(ClientKey::Header("x-tenant".into()))
    );
    assert_eq!(
        parse(&doc("", "")).expect("valid").upstreams[0].fairness,
        None
    );
    assert_error(&fair(""), "upstream[0].fairness.key", "required");
    for bad in [
        "\"tenant\"",
        "\"header:\"",
        "\"header:a b\"",
        "\"cookie:sid\"",
        "\"client_ip:x\"",
    ] {
        assert_error(
            &fair(&format!("key = {bad}")),
            "upstream[0].fairness.key",
            "",
        );
    }
    assert_error(&fair("key = 1"), "upstream[0].fairness.key", "invalid type");
    assert_error(
        &fair("keys = \"client_ip\""),
        "upstream[0].fairness.keys",
        "unknown field",
    );
    let text = parse(&fair("key = \"client_ip\""))
        .expect("valid")
        .explain();
    assert!(text.contains("fairness by client_ip"), "{text}");
}

#[test]
fn standing_queue_keys_are_checked_against_the_timeout() {
    let limits = |body: &str| doc("", &format!("[upstream.limits]\n{body}"));
    let parsed = parse(&limits(
        "queue_timeout_ms = 100\nqueue_target_ms = 10\nqueue_interval_ms = 200",
    ))
    .expect("valid");
    let l = parsed.upstreams[0].limits;
    assert_eq!(
        (l.queue_timeout, l.queue_target, l.queue_interval),
        (ms(100), ms(10), ms(200))
    );
    assert_error(
        &limits("queue_timeout_ms = 100\nqueue_target_ms = 100"),
        "upstream[0].limits.queue_target_ms",
        "100 must be less than queue_timeout_ms (100)",
    );
    assert_error(
        &limits("queue_target_ms = 300"),
        "upstream[0].limits.queue_target_ms",
        "300 must be less than queue_timeout_ms (250)",
    );
    assert_error(
        &limits("queue_target_ms = 0"),
        "upstream[0].limits.queue_target_ms",
        "must be at least 1 (got 0)",
    );
    assert_error(
        &limits("queue_interval_ms = 0"),
        "upstream[0].limits.queue_interval_ms",
        "must be at least 1 (got 0)",
    );
    assert_error(
        &limits("queue_interval_ms = -5"),
        "upstream[0].limits.queue_interval_ms",
        "must be at least 1 (got -5)",
    );
    assert_error(
        &limits("queue_interval_ms = 86400001"),
        "upstream[0].limits.queue_interval_ms",
        "must be at most 86400000",
    );
    assert_error(
        &limits("queue_target_ms = \"5ms\""),
        "upstream[0].limits.queue_target_ms",
        "invalid type",
    );
    // Every problem at once.
    assert_eq!(
        errors(&limits("queue_target_ms = 0\nqueue_interval_ms = 0")).len(),
        2
    );
    // A file written before these keys keeps its meaning: a timeout at or below the
    // default target gets the timeout as its target (standing changes no wait).
    let short = parse(&limits("queue_timeout_ms = 3")).expect("valid without a target");
    assert_eq!(short.upstreams[0].limits.queue_target, ms(3));
    // Without a queue, the target is not compared with a timeout it does not need.
    parse(&limits(
        "queue_depth = 0\nqueue_timeout_ms = 0\nqueue_target_ms = 5",
    ))
    .expect("no queue, nothing to compare");
}

// ---- [upstream.levels] ------------------------------------------------------

fn levels(body: &str) -> String {
    doc("", &format!("[upstream.levels]\n{body}"))
}

#[test]
fn danger_must_be_at_least_caution() {
    let text = levels(
        "caution = { queue = 20, queue_wait_ms = 40, p95_ms = 150, error_rate = 0.01 }\n\
         danger = { queue = 10, queue_wait_ms = 30, p95_ms = 100, error_rate = 0.005 }",
    );
    let base = "upstream[0].levels.danger";
    assert_error(
        &text,
        &format!("{base}.queue"),
        "danger must be at least caution (20), got 10",
    );
    assert_error(
        &text,
        &format!("{base}.queue_wait_ms"),
        "danger must be at least caution (40)",
    );
    assert_error(
        &text,
        &format!("{base}.p95_ms"),
        "danger must be at least caution (150)",
    );
    assert_error(
        &text,
        &format!("{base}.error_rate"),
        "danger must be at least caution (0.01)",
    );
    assert_eq!(errors(&text).len(), 4);
    // Equal is fine.
    parse(&levels(
        "caution = { p95_ms = 150 }\ndanger = { p95_ms = 150 }",
    ))
    .expect("valid");
}

#[test]
fn danger_is_compared_with_default_caution() {
    assert_error(
        &levels("danger = { queue = 5 }"),
        "upstream[0].levels.danger.queue",
        "danger must be at least caution (10 by default), got 5",
    );
    assert_error(
        &levels("caution = { queue = 80 }"),
        "upstream[0].levels.danger.queue",
        "danger must be at least caution (80), got 50 by default",
    );
}

#[test]
fn danger_utilization_is_rejected() {
    assert_error(
        &levels("danger = { utilization = 0.95 }"),
        "upstream[0].levels.danger.utilization",
        "utilization only raises the level to caution: busy is not overloaded",
    );
}

#[test]
fn shares_are_range_checked() {
    let path = "upstream[0].levels.caution.utilization";
    assert_error(
        &levels("caution = { utilization = 0.0 }"),
        path,
        "must be in (0, 1] (got 0)",
    );
    assert_error(
        &levels("caution = { utilization = 1.5 }"),
        path,
        "must be in (0, 1] (got 1.5)",
    );
    assert_error(
        &levels("caution = { utilization = nan }"),
        path,
        "must be in (0, 1]",
    );
    assert_error(
        &levels("caution = { error_rate = -0.1 }"),
        "upstream[0].levels.caution.error_rate",
        "must be in (0, 1] (got -0.1)",
    );
    assert_error(
        &levels("danger = { error_rate = inf }"),
        "upstream[0].levels.danger.error_rate",
        "must be in (0, 1]",
    );
    assert_error(
        &levels("caution = { error_rate = 0.0 }"),
        "upstream[0].levels.caution.error_rate",
        "leave the key out",
    );
}

#[test]
fn unreachable_queue_thresholds() {
    assert_error(
        &levels("caution = { queue = 150 }\ndanger = { queue = 200 }"),
        "upstream[0].levels.caution.queue",
        "150 can never be reached: queue_depth is 100",
    );
    assert_error(
        &levels("caution = { queue = 150 }\ndanger = { queue = 200 }"),
        "upstream[0].levels.danger.queue",
        "200 can never be reached: queue_depth is 100",
    );
    assert_error(
        &levels("caution = { queue = 0 }"),
        "upstream[0].levels.caution.queue",
        "must be at least 1",
    );
    assert_error(
        &levels("danger = { queue_wait_ms = 300 }"),
        "upstream[0].levels.danger.queue_wait_ms",
        "300 can never be reached: queue_timeout_ms is 250",
    );
    assert_error(
        &doc("", "[upstream.limits]\nqueue_depth = 0\n[upstream.levels]\ncaution = { queue_wait_ms = 10 }"),
        "upstream[0].levels.caution.queue_wait_ms",
        "can never be reached: queue_depth is 0",
    );
}

#[test]
fn level_timing_is_range_checked() {
    assert_error(
        &levels("window_ms = 500"),
        "upstream[0].levels.window_ms",
        "at least 1000 (got 500)",
    );
    assert_error(
        &levels("min_samples = 0"),
        "upstream[0].levels.min_samples",
        "at least 1",
    );
    assert_error(
        &levels("cooldown_ms = -1"),
        "upstream[0].levels.cooldown_ms",
        "at least 0",
    );
    assert_error(
        &levels("caution = { p95_ms = 0 }"),
        "upstream[0].levels.caution.p95_ms",
        "at least 1",
    );
}

// ---- [upstream.health] ------------------------------------------------------

#[test]
fn health_is_range_checked() {
    let health = |body: &str| doc("", &format!("[upstream.health]\n{body}"));
    assert_error(
        &health("path = \"health\""),
        "upstream[0].health.path",
        "must start with '/'",
    );
    assert_error(
        &health("interval_ms = 1000\ntimeout_ms = 2000"),
        "upstream[0].health.timeout_ms",
        "must be at most interval_ms (1000), got 2000",
    );
    assert_error(
        &health("interval_ms = 0"),
        "upstream[0].health.interval_ms",
        "at least 1",
    );
    assert_error(&health("rise = 0"), "upstream[0].health.rise", "at least 1");
    assert_error(&health("fall = 0"), "upstream[0].health.fall", "at least 1");
    assert_error(
        &health("eject_ms = 0"),
        "upstream[0].health.eject_ms",
        "at least 1",
    );
    assert_error(
        &health("eject_after_failures = -1"),
        "upstream[0].health.eject_after_failures",
        "at least 0",
    );
    parse(&health("eject_after_failures = 0\nslow_start_ms = 0")).expect("0 disables");
}

// ---- [[upstream.backend]] ---------------------------------------------------

#[test]
fn an_upstream_needs_backends() {
    let text =
        "[server]\nlisten = [\"127.0.0.1:80\"]\n[[upstream]]\nname = \"a\"\nroutes = [\"/\"]\n";
    assert_error(text, "upstream[0].backend", "at least one");
}

#[test]
fn backend_addresses_are_ip_or_name_distinct_and_required() {
    let text = minimal(
        "[[upstream.backend]]\naddress = \"local host:3000\"\n\
         [[upstream.backend]]\naddress = \"10.0.0.1:80\"\n\
         [[upstream.backend]]\naddress = \"10.0.0.2:0\"\n\
         [[upstream.backend]]\nzone = \"a\"\n\
         [[upstream.backend]]\naddress = \"10.0.0.3\"\n\
         [[upstream.backend]]\naddress = \"App.Svc.Cluster.Local.:8080\"\n\
         [[upstream.backend]]\naddress = \"app.svc.cluster.local:8080\"\n\
         [[upstream.backend]]\naddress = \"app.svc:0\"\n\
         [[upstream.backend]]\naddress = \"app.svc:http\"",
    );
    assert_error(
        &text,
        "upstream[0].backend[1].address",
        "\"local host:3000\" is neither IP:port nor name:port",
    );
    assert_error(
        &text,
        "upstream[0].backend[2].address",
        "duplicate backend address 10.0.0.1:80 (also backend[0])",
    );
    assert_error(&text, "upstream[0].backend[3].address", "port 0");
    assert_error(&text, "upstream[0].backend[4].address", "required");
    assert_error(
        &text,
        "upstream[0].backend[5].address",
        "\"10.0.0.3\" is neither IP:port nor name:port",
    );
    assert_error(
        &text,
        "upstream[0].backend[7].address",
        "duplicate backend name app.svc.cluster.local:8080 (also backend[6])",
    );
    assert_error(&text, "upstream[0].backend[8].address", "port 0");
    assert_error(&text, "upstream[0].backend[9].address", "neither");
    assert_eq!(errors(&text).len(), 8);
}

#[test]
fn backends_by_name_and_the_resolver() {
    let config = parse(
        &doc(
            "[server.dns]\nnameservers = [\"10.0.0.2:53\"]\nrefresh_ms = 1000",
            "",
        )
        .replace(
            "address = \"10.0.0.1:80\"",
            "address = \"app.default.svc.cluster.local:8080\"\nzone = \"b\"\nmax_inflight = 7",
        ),
    )
    .unwrap();
    let up = &config.upstreams[0];
    assert!(up.backends.is_empty());
    assert_eq!(
        up.named,
        [NamedBackend {
            host: "app.default.svc.cluster.local".into(),
            port: 8080,
            zone: "b".into(),
            max_inflight: 7,
        }]
    );
    assert_eq!(config.server.dns.nameservers, [addr("10.0.0.2:53")]);
    assert_eq!(config.server.dns.refresh, ms(1000));
    assert_eq!(config.server.dns.timeout, ms(1000), "at most the refresh");
    let explained = config.explain();
    assert!(
        explained.contains("name app.default.svc.cluster.local:8080"),
        "{explained}"
    );
    // Expanded: every address, in order, once, with the entry's zone and limit.
    let expanded = config.expand(&|host| {
        assert_eq!(host, "app.default.svc.cluster.local");
        vec![
            "10.1.0.9".parse().unwrap(),
            "10.1.0.3".parse().unwrap(),
            "10.1.0.9".parse().unwrap(),
        ]
    });
    let got: Vec<(SocketAddr, &str, u32, Option<&str>)> = expanded.upstreams[0]
        .backends
        .iter()
        .map(|b| {
            (
                b.address,
                b.zone.as_str(),
                b.max_inflight,
                b.from.as_deref(),
            )
        })
        .collect();
    let from = Some("app.default.svc.cluster.local:8080");
    assert_eq!(
        got,
        [
            (addr("10.1.0.3:8080"), "b", 7, from),
            (addr("10.1.0.9:8080"), "b", 7, from)
        ]
    );
    // Expanding again replaces, never accumulates.
    assert_eq!(expanded.expand(&|_| Vec::new()).upstreams[0].backends, []);

    let defaults = parse(&doc("", "")).unwrap().server.dns;
    assert_eq!(defaults, Dns::default());
    let text = doc(
        "[server.dns]\nnameservers = [\"ns1:53\", \"10.0.0.2:53\", \"10.0.0.2:53\"]\nrefresh_ms = 50\ntimeout_ms = 9000",
        "",
    );
    assert_error(&text, "server.dns.nameservers[0]", "not a literal IP:port");
    assert_error(&text, "server.dns.nameservers[2]", "duplicate nameserver");
    assert_error(&text, "server.dns.refresh_ms", "at least 100");
}

#[test]
fn backend_zone_and_override() {
    let text = minimal("zone = \"rack 1\"\nmax_inflight = 0");
    assert_error(
        &text,
        "upstream[0].backend[0].zone",
        "invalid zone \"rack 1\"",
    );
    assert_error(
        &text,
        "upstream[0].backend[0].max_inflight",
        "at least 1 (got 0)",
    );
}

// ---- [[priority]] -----------------------------------------------------------

fn priority(body: &str) -> String {
    minimal(&format!("[[priority]]\n{body}"))
}

#[test]
fn priority_match_needs_exactly_one_condition() {
    assert_error(
        &priority("class = \"low\""),
        "priority[0].match",
        "required",
    );
    assert_error(
        &priority("match = {}\nclass = \"low\""),
        "priority[0].match",
        "exactly one",
    );
    assert_error(
        &priority("match = { path_prefix = \"/a\", header = \"a:b\" }\nclass = \"low\""),
        "priority[0].match",
        "exactly one of path_prefix",
    );
    assert_error(
        &priority("match = { path_prefix = \"admin\" }\nclass = \"low\""),
        "priority[0].match.path_prefix",
        "\"admin\" must start with '/'",
    );
}

#[test]
fn priority_header_must_be_name_value() {
    for bad in ["x-priority", "x-priority:", ":low", "x priority:low"] {
        assert_error(
            &priority(&format!(
                "match = {{ header = \"{bad}\" }}\nclass = \"low\""
            )),
            "priority[0].match.header",
            &format!("{bad:?} must be name:value"),
        );
    }
}

#[test]
fn priority_class_must_be_known() {
    assert_error(
        &priority("match = { path_prefix = \"/\" }\nclass = \"urgent\""),
        "priority[0].class",
        "unknown class \"urgent\"",
    );
    assert_error(
        &priority("match = { path_prefix = \"/\" }"),
        "priority[0].class",
        "required",
    );
}

// ---- all together -----------------------------------------------------------

#[test]
fn every_error_is_reported_at_once() {
    let text = r#"
[server]
listen = ["nowhere"]
threads = 0

[[upstream]]
name = "a"
routes = ["/x"]
balance = "consistent_hash"
[upstream.limits]
max_inflight = 0
[upstream.levels]
danger = { utilization = 0.9 }
[[upstream.backend]]
address = "10.0.0.1:80"
[[upstream.backend]]
address = "10.0.0.1:80"

[[upstream]]
name = "a"
routes = ["/x"]

[[priority]]
match = { header = "x" }
class = "soon"
"#;
    let paths: Vec<String> = errors(text).into_iter().map(|e| e.path).collect();
    assert_eq!(
        paths,
        [
            "server.listen[0]",
            "server.threads",
            "upstream[0].affinity",
            "upstream[0].limits.max_inflight",
            "upstream[0].levels.danger.utilization",
            "upstream[0].backend[1].address",
            "upstream[1].name",
            "upstream[1].routes[0]",
            "upstream[1].backend",
            "priority[0].match.header",
            "priority[0].class",
        ]
    );
}

// ---- TOML syntax, types and unknown keys -------------------------------------

#[test]
fn unknown_keys_are_errors_at_every_depth() {
    let cases = [
        ("bogus = 1\n", "bogus"),
        // Spans are byte offsets: multi-byte text before the key must not shift them.
        (
            "# café, naïve ☕\n[server]\nlisten = [\"127.0.0.1:80\"] # ☕\nthread = 2\n",
            "server.thread",
        ),
        (
            "[server]\nlisten = [\"127.0.0.1:80\"]\nthread = 2\n",
            "server.thread",
        ),
        (
            &doc("[server.timeouts]\nconnect = 1", ""),
            "server.timeouts.connect",
        ),
        (&doc("", "routs = [\"/\"]"), "upstream[0].routs"),
        (
            &doc("", "[upstream.limits]\nmax_inflite = 3"),
            "upstream[0].limits.max_inflite",
        ),
        (
            &levels("caution = { utilisation = 0.8 }"),
            "upstream[0].levels.caution.utilisation",
        ),
        (
            &levels("critical = { queue = 1 }"),
            "upstream[0].levels.critical",
        ),
        (
            &doc("", "[upstream.health]\nurl = \"/\""),
            "upstream[0].health.url",
        ),
        (&minimal("weight = 2"), "upstream[0].backend[0].weight"),
        (
            &priority("match = { method = \"GET\" }"),
            "priority[0].match.method",
        ),
    ];
    for (text, path) in cases {
        let key = path.rsplit(['.', ']']).next().unwrap_or_default();
        assert_error(text, path, &format!("unknown field `{key}`"));
    }
    // With its expected keys, and its line and column.
    let text = doc("", "[upstream.limits]\nmax_inflite = 3");
    let error = &errors(&text)[0];
    assert!(
        error.message.contains("expected one of `max_inflight`"),
        "{error}"
    );
    assert!(error.message.ends_with("(line 9 column 1)"), "{error}");
}

#[test]
fn wrong_types_name_their_key() {
    assert_error(
        &doc("threads = \"2\"", ""),
        "server.threads",
        "invalid type: string \"2\"",
    );
    assert_error(
        &minimal("").replace("[\"/\"]", "\"/\""),
        "upstream[0].routes",
        "invalid type",
    );
    assert_error(
        &minimal("").replace("[\"/\"]", "[\"/\", 2]"),
        "upstream[0].routes[1]",
        "invalid type",
    );
    assert_error(
        &doc("", "[upstream.levels]\ndanger = { p95_ms = 1.5 }"),
        "upstream[0].levels.danger.p95_ms",
        "invalid type: floating point",
    );
    assert_error(
        &doc("threads = 99999999999999999999", ""),
        "",
        "line 3 column 11",
    );
    // A single [upstream] table where an array of tables is expected.
    let text = "[server]\nlisten = [\"127.0.0.1:80\"]\n[upstream]\nname = \"a\"\n";
    assert_error(
        text,
        "upstream",
        "invalid type: map, expected an array of tables",
    );
}

#[test]
fn an_array_where_a_table_belongs_is_refused_at_its_key() {
    // serde's structs would read an array's elements as their fields, in order.
    assert_error(
        &doc("", "fairness = [\"client_ip\"]"),
        "upstream[0].fairness",
        "invalid type: sequence, expected a table",
    );
    assert_error(
        &doc("", "limits = [1, 2]"),
        "upstream[0].limits",
        "invalid type: sequence, expected a table",
    );
    assert_error(
        &doc("timeouts = [1000]", ""),
        "server.timeouts",
        "invalid type: sequence, expected a table",
    );
    let text = "upstream = [[\"a\", [\"/\"]]]\n[server]\nlisten = [\"127.0.0.1:80\"]\n";
    assert_error(
        text,
        "upstream[0]",
        "invalid type: sequence, expected a table",
    );
}

#[test]
fn toml_syntax_errors_give_line_and_column() {
    let text = doc("threads = ", "");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "");
    assert!(
        errors[0].message.starts_with("line 3 column 11: "),
        "{}",
        errors[0]
    );
    assert!(!errors[0].message.contains('\n'), "one line: {}", errors[0]);
    // Displayed without a leading ": ".
    assert!(errors[0].to_string().starts_with("line 3"), "{}", errors[0]);

    let errors = self::errors("[server]\nlisten = [\"127.0.0.1:80\"]\n[server]\n");
    assert!(
        errors[0].message.starts_with("line 3 column 1: "),
        "{}",
        errors[0]
    );
}

#[test]
fn parsing_never_panics() {
    let mut variants: Vec<String> = Vec::new();
    // Truncations (on character boundaries), about 40 of them.
    let step = FULL.len() / 40 + 1;
    variants.extend(
        (0..FULL.len())
            .step_by(step)
            .filter(|&i| FULL.is_char_boundary(i))
            .map(|i| FULL[..i].to_owned()),
    );
    // Each line removed in turn.
    let lines: Vec<&str> = FULL.lines().collect();
    for skip in 0..lines.len() {
        let mut text: Vec<&str> = lines.clone();
        text.remove(skip);
        variants.push(text.join("\n"));
    }
    // Hostile values in place of some typical ones.
    for (from, to) in [
        ("150", "-1"),
        ("150", "0"),
        ("150", "4294967296"),
        ("150", "9223372036854775807"),
        ("0.80", "nan"),
        ("0.80", "-inf"),
        ("\"/\"", "\"\""),
        ("\"10.0.1.1:3000\"", "\"\""),
        ("\"10.0.1.1:3000\"", "\"[::1\""),
        ("\"mcp\"", "\"\u{e9}\u{301}\""),
        ("\"critical\"", "\"CRITICAL\""),
        ("header:Mcp-Session-Id", "header:"),
        ("X-Priority: low", ":"),
        ("[[upstream]]", "[upstream]"),
        ("[[upstream.backend]]", "[upstream.backend]"),
        ("[server]", "[[server]]"),
        ("= ", "== "),
        ("\"", "'"),
        ("{", "["),
    ] {
        variants.push(FULL.replacen(from, to, 1));
        variants.push(FULL.replace(from, to));
    }
    // Deep nesting, under a known key and an unknown one.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    variants.push(format!("[server]\nlisten = {deep}\n"));
    variants.push(format!("x = {deep}\n"));
    assert!(variants.len() > 100);
    for text in &variants {
        if let Err(ConfigErrors(errors)) = parse(text) {
            assert!(!errors.is_empty());
            assert!(errors.iter().all(|e| !e.message.is_empty()));
        }
    }
}

// ---- files and output ---------------------------------------------------------

#[test]
fn shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/levee.toml");
    let config = load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mcp = &config.upstreams[0];
    assert_eq!(mcp.backends.len(), 8);
    assert_eq!(
        mcp.capacity(),
        144,
        "inside the benchmark's safe band (< 150)"
    );
    let zones: Vec<&str> = mcp.backends.iter().map(|b| b.zone.as_str()).collect();
    assert_eq!(zones, ["a", "a", "a", "a", "b", "b", "b", "b"]);
    assert_eq!(mcp.levels.caution.p95, Some(ms(150)));
    assert_eq!(mcp.levels.danger.p95, Some(ms(200)));
    assert_eq!(mcp.levels.caution.error_rate, Some(0.001));
    assert_eq!(mcp.levels.danger.error_rate, Some(0.005));
}

#[test]
fn load_names_an_unreadable_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing.toml");
    let ConfigErrors(errors) = load(&missing).expect_err("no such file");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].path, "");
    assert!(errors[0].message.contains("missing.toml"), "{}", errors[0]);

    let file = dir.path().join("levee.toml");
    std::fs::write(&file, minimal("")).expect("write");
    load(&file).expect("valid file");
}

#[test]
fn errors_display_one_per_line() {
    let errors = ConfigErrors(vec![
        ConfigError::new("server.threads", "must be at least 1 (got 0)"),
        ConfigError::new("", "line 1 column 1: bad"),
    ]);
    assert_eq!(
        errors.to_string(),
        "server.threads: must be at least 1 (got 0)\nline 1 column 1: bad"
    );
}

#[test]
fn names_round_trip() {
    for class in Class::ALL {
        assert_eq!(Class::parse(class.as_str()), Some(class));
        assert_eq!(class.to_string(), class.as_str());
    }
    assert_eq!(Class::parse("Critical"), None);
    for balance in [
        Balance::LeastInflight,
        Balance::RoundRobin,
        Balance::ConsistentHash,
    ] {
        assert_eq!(Balance::parse(balance.as_str()), Some(balance));
    }
    assert_eq!(Affinity::Header("a".into()).to_string(), "header:a");
    assert!(Class::Low < Class::Normal && Class::High < Class::Critical);
}

#[test]
fn explain_summarizes_the_config() {
    let config = parse(FULL).expect("valid");
    let text = config.explain();
    for needle in [
        "listen 0.0.0.0:8080, [::1]:8443 (4 threads, multi_thread runtime, zone a)",
        "admin 127.0.0.1:9901",
        "upstream \"mcp\": routes /, /mcp/",
        "balance consistent_hash on header:mcp-session-id, 2 retries on connect failure",
        "limits 150 in flight per backend, queue 200 (timeout 300 ms; 5 ms once standing for 100 ms)",
        "caution at utilization 80% or queue 10 or queue wait p95 20 ms or p95 150 ms or errors 0.1%",
        "danger  at queue 50 or queue wait p95 50 ms or p95 250 ms or errors 0.5%",
        "critical when the queue is full; at least caution while it stands",
        "health GET /health every 2 s (timeout 700 ms, rise 3, fall 4); no passive ejection",
        "adaptive limit between 4 and max_inflight (150) per backend: down while its p95 > 85 ms or its reported load (endpoint-load-metrics) > 0.9; up while below and busy",
        "zone a: 1 backend, 100 in flight: 10.0.1.1:3000 (max 100)",
        "zone b: 1 backend, 150 in flight: 10.0.2.1:3000",
        "capacity 250 in flight + 200 queued",
        "upstream \"api.v2\": routes /api/",
        "limits 100 in flight per backend, no queue",
        "danger  at no signal (never)",
        "path /admin/* -> critical",
        "header x-priority: low -> low",
        "total 2 upstreams, 3 backends: 350 in flight + 200 queued",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

// ---- adaptive limits ----------------------------------------------------------

#[test]
fn adaptive_table_is_optional_and_validated_whole() {
    assert_eq!(
        parse(&minimal("")).expect("valid").upstreams[0].adaptive,
        None
    );
    let ok = doc(
        "",
        "[upstream.limits]\nmax_inflight = 64\n[upstream.adaptive]\ntarget_p95_ms = 30\nmin_inflight = 4",
    );
    assert_eq!(
        parse(&ok).expect("valid").upstreams[0].adaptive,
        Some(Adaptive {
            target_p95: ms(30),
            min_inflight: 4,
            load_target: None,
        })
    );
    let adaptive = |body: &str| doc("", &format!("[upstream.adaptive]\n{body}"));
    assert_error(
        &adaptive("min_inflight = 4"),
        "upstream[0].adaptive.target_p95_ms",
        "required",
    );
    assert_error(
        &adaptive("target_p95_ms = 30"),
        "upstream[0].adaptive.min_inflight",
        "required",
    );
    assert_error(
        &adaptive("target_p95_ms = 0\nmin_inflight = 1"),
        "upstream[0].adaptive.target_p95_ms",
        "at least 1",
    );
    assert_error(
        &adaptive("target_p95_ms = 30\nmin_inflight = 0"),
        "upstream[0].adaptive.min_inflight",
        "at least 1",
    );
    // The default max_inflight is 100.
    assert_error(
        &adaptive("target_p95_ms = 30\nmin_inflight = 101"),
        "upstream[0].adaptive.min_inflight",
        "at most limits.max_inflight (100)",
    );
    for bad in ["0", "-1", "10.5", "nan", "inf"] {
        assert_error(
            &adaptive(&format!(
                "target_p95_ms = 30\nmin_inflight = 1\nload_target = {bad}"
            )),
            "upstream[0].adaptive.load_target",
            "must be in (0, 10]",
        );
    }
    assert_error(
        &adaptive("target_p95_ms = 30\nmin_inflight = 1\nloadtarget = 1"),
        "upstream[0].adaptive.loadtarget",
        "unknown field",
    );
    // A backend whose own cap is below the floor.
    let text = format!(
        "{}\n[[upstream.backend]]\naddress = \"10.0.0.2:80\"\nmax_inflight = 2\n",
        adaptive("target_p95_ms = 30\nmin_inflight = 3\nload_target = 10")
    );
    assert_error(
        &text,
        "upstream[0].backend[1].max_inflight",
        "below adaptive.min_inflight (3)",
    );
}

#[test]
fn tracing_is_off_by_default_and_its_keys_are_checked() {
    let config = parse(&doc("", "")).unwrap();
    assert_eq!(config.server.tracing, None);
    assert_eq!(
        config.upstreams[0].scaling.target_utilization,
        crate::scaling::DEFAULT_TARGET_UTILIZATION
    );

    let on = parse(&doc(
        "[server.tracing]\notlp_endpoint = \"http://collector.local:4318\"",
        "",
    ))
    .unwrap()
    .server
    .tracing
    .unwrap();
    assert_eq!(on.sample_ratio, DEFAULT_SAMPLE_RATIO);
    assert_eq!(on.service_name, "levee");
    assert_eq!(on.otlp_endpoint.host, "collector.local");
    assert_eq!(on.otlp_endpoint.port, 4318);
    assert_eq!(on.otlp_endpoint.authority, "collector.local:4318");
    assert_eq!(on.otlp_endpoint.path, "/v1/traces");
    let explained = parse(&doc(
        "[server.tracing]\notlp_endpoint = \"http://collector.local:4318\"",
        "[upstream.scaling]\ntarget_utilization = 0.7",
    ))
    .unwrap()
    .explain();
    for needle in [
        "tracing: spans of 1% of new traces (a caller's traceparent decides for its own) to http://collector.local:4318/v1/traces as service levee",
        "desired backends sized for 70% of each backend's capacity",
    ] {
        assert!(explained.contains(needle), "{needle:?} not in:\n{explained}");
    }

    let text = doc(
        "[server.tracing]\notlp_endpoint = \"https://c:4318\"\nsample_ratio = 1.5\nservice_name = \"\"",
        "[upstream.scaling]\ntarget_utilization = 0",
    );
    assert_error(
        &text,
        "server.tracing.otlp_endpoint",
        "https is not supported",
    );
    assert_error(&text, "server.tracing.sample_ratio", "must be in [0, 1]");
    assert_error(&text, "server.tracing.service_name", "non-empty");
    assert_error(
        &text,
        "upstream[0].scaling.target_utilization",
        "must be in (0, 1]",
    );
    assert_error(
        &doc("[server.tracing]\nsample_ratio = 0.5", ""),
        "server.tracing.otlp_endpoint",
        "required",
    );
    assert_error(
        &doc("[server.tracing]\notlp_endpoint = \"c:4318\"", ""),
        "server.tracing.otlp_endpoint",
        "http://",
    );
    assert_error(
        &doc(
            "[server.tracing]\notlp_endpoint = \"http://c\"\nratio = 1",
            "",
        ),
        "server.tracing.ratio",
        "unknown field",
    );
    assert_error(
        &doc("", "[upstream.scaling]\ntarget = 0.5"),
        "upstream[0].scaling.target",
        "unknown field",
    );
}

#[test]
fn the_otlp_path_is_appended_unless_given() {
    let path = |url: &str| OtlpEndpoint::parse(url).unwrap().path;
    assert_eq!(path("http://127.0.0.1:4318"), "/v1/traces");
    assert_eq!(path("http://127.0.0.1:4318/"), "/v1/traces");
    assert_eq!(path("http://127.0.0.1:4318/v1/traces"), "/v1/traces");
    assert_eq!(path("http://127.0.0.1:4318/otlp"), "/otlp/v1/traces");
    assert_eq!(
        path("http://127.0.0.1:4318/otlp/v1/traces/"),
        "/otlp/v1/traces"
    );
    let e = OtlpEndpoint::parse("http://[::1]/").unwrap();
    assert_eq!((e.host.as_str(), e.port), ("::1", 80));
    assert_eq!(e.authority, "[::1]:80");
    assert_eq!(e.to_string(), "http://[::1]:80/v1/traces");
    assert!(OtlpEndpoint::parse("http://c:4318/?x=1").is_err());
    assert!(OtlpEndpoint::parse("http://u@c:4318").is_err());
}
