//! Bounded property test of `levee::config::parse` over generated and mutated config
//! files.
//!
//! Two sources of input, both from one seeded `StdRng`:
//! - a structured generator that builds plausible levee configs (every table and key of
//!   the schema, each present or missing at random) with, at a per-document "chaos"
//!   rate, values of the wrong type, negative and huge numbers, NaN and infinities,
//!   unicode, unknown keys at every level, duplicate names and addresses, deep nesting,
//!   rendered as canonical TOML, as hand-written TOML in mixed styles (headers, inline
//!   tables, dotted keys), or with a line duplicated or a header repeated;
//! - byte-level mutations (truncate, flip a bit, insert, delete, duplicate or swap
//!   lines) of the shipped `conf/levee.toml`.
//!
//! Properties, for every case: `parse` never panics (run under `catch_unwind`); a
//! rejection holds at least one error, and each error carries a non-empty key path
//! whose first segment is in the document, or — only when the text is not TOML at all —
//! a message with `line N column M`; an accepted config satisfies every rule `levee
//! check` enforces (re-checked here independently of the validator), parses the same
//! way twice, and explains itself. A sample is also run through the real `levee check`
//! binary, whose exit status and error lines must agree with `parse`.
//!
//! Separately, deep nesting (arrays, inline tables, dotted keys, table headers) is
//! parsed in a child process, so a stack overflow shows as a finding instead of taking
//! the whole test binary down.
//!
//! Seed: `LEVEE_FUZZ_SEED=N` replays a run (the seed is printed first); `LEVEE_FUZZ_CASES`
//! changes the number of cases (default 3,000 generated + 1,500 mutated). Whatever the
//! count, generation stops after 8 s of parsing so the test stays under 10 s
//! (`LEVEE_FUZZ_BUDGET_SECS` changes that, for long exploratory runs).

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::{Duration, Instant};

use levee::config::{self, Balance, Check, Config, ConfigErrors, PriorityMatch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use toml::value::{Datetime, Table, Value};

const DEFAULT_GENERATED: usize = 3_000;
const DEFAULT_MUTATED: usize = 1_500;
/// Parsing stops starting new cases after this, whatever the count.
const BUDGET: Duration = Duration::from_secs(8);
/// Cases also run through the real `levee check`.
const CLI_SAMPLE: usize = 24;

// ---------------------------------------------------------------- the schema

/// What a key holds. Each kind has a pool of valid values and a pool of edge values
/// (out of range, wrong shape) that the generator draws from at the document's rate.
#[derive(Clone, Copy)]
enum Kind {
    Addr,
    Addrs,
    Threads,
    Count,
    /// Queue depth and friends: large enough for the queue thresholds below.
    Depth,
    Ms,
    /// Long `*_ms`: probe intervals, queue timeouts (at least the short ones).
    LongMs,
    Bytes,
    Secs,
    Share,
    /// Caution-side thresholds, each below its danger-side counterpart.
    LowCount,
    HighCount,
    LowMs,
    HighMs,
    LowShare,
    HighShare,
    Name,
    UpstreamName,
    Route,
    Routes,
    Balance,
    Affinity,
    Check,
    /// `limits.mode`.
    Mode,
    /// `fairness.key`.
    ClientKey,
    Class,
    Header,
    Bool,
    FilePath,
    Table(&'static [Field]),
    Tables(&'static [Field]),
    /// `match = { … }`: exactly one of `path_prefix` and `header` when valid.
    Match,
}

struct Field {
    key: &'static str,
    kind: Kind,
    /// How often a document has this key; 1.0 marks a required key, which documents
    /// without chaos always have and others may lack.
    presence: f64,
}

const fn f(key: &'static str, kind: Kind, presence: f64) -> Field {
    Field {
        key,
        kind,
        presence,
    }
}

const TIMEOUTS: &[Field] = &[
    f("connect_ms", Kind::Ms, 0.5),
    f("read_ms", Kind::Ms, 0.5),
    f("write_ms", Kind::Ms, 0.3),
    f("response_ms", Kind::Ms, 0.3),
    f("stream_idle_ms", Kind::Ms, 0.3),
    f("client_header_ms", Kind::Ms, 0.3),
    f("client_idle_ms", Kind::LongMs, 0.3),
    f("upstream_idle_ms", Kind::Ms, 0.3),
];

const SERVER: &[Field] = &[
    f("listen", Kind::Addrs, 1.0),
    f("threads", Kind::Threads, 0.5),
    f("zone", Kind::Name, 0.5),
    f("admin_listen", Kind::Addr, 0.6),
    f("grace_period_ms", Kind::Ms, 0.3),
    f("max_request_body_bytes", Kind::Bytes, 0.3),
    f("retry_after_max_secs", Kind::Secs, 0.3),
    // Keys being added to the schema; unknown-key errors until they land.
    f("upgrade_sock", Kind::FilePath, 0.03),
    f("max_connections", Kind::Count, 0.03),
    f("max_connections_per_ip", Kind::Count, 0.03),
    f("timeouts", Kind::Table(TIMEOUTS), 0.4),
];

const CAUTION: &[Field] = &[
    f("utilization", Kind::Share, 0.5),
    f("queue", Kind::LowCount, 0.5),
    f("queue_wait_ms", Kind::LowMs, 0.3),
    f("p95_ms", Kind::LowMs, 0.5),
    f("error_rate", Kind::LowShare, 0.4),
];

const DANGER: &[Field] = &[
    f("utilization", Kind::Share, 0.0),
    f("queue", Kind::HighCount, 0.5),
    f("queue_wait_ms", Kind::HighMs, 0.3),
    f("p95_ms", Kind::HighMs, 0.5),
    f("error_rate", Kind::HighShare, 0.4),
];

const LEVELS: &[Field] = &[
    f("caution", Kind::Table(CAUTION), 0.6),
    f("danger", Kind::Table(DANGER), 0.6),
    f("cooldown_ms", Kind::Ms, 0.4),
    f("window_ms", Kind::LongMs, 0.3),
    f("min_samples", Kind::Count, 0.3),
];

const LIMITS: &[Field] = &[
    f("max_inflight", Kind::Count, 0.8),
    f("queue_depth", Kind::Depth, 0.7),
    f("queue_timeout_ms", Kind::LongMs, 0.6),
    f("queue_target_ms", Kind::LowMs, 0.3),
    f("queue_interval_ms", Kind::Ms, 0.3),
    f("mode", Kind::Mode, 0.2),
];

const HEALTH: &[Field] = &[
    f("path", Kind::Route, 0.7),
    f("interval_ms", Kind::LongMs, 0.6),
    f("timeout_ms", Kind::LowMs, 0.6),
    f("rise", Kind::Count, 0.4),
    f("fall", Kind::Count, 0.4),
    f("eject_after_failures", Kind::Count, 0.4),
    f("eject_ms", Kind::Ms, 0.4),
    f("slow_start_ms", Kind::Ms, 0.4),
    f("check", Kind::Check, 0.2),
    f("eject_max_ms", Kind::LongMs, 0.1),
    f("eject_on_5xx", Kind::Bool, 0.2),
    f("max_ejected_share", Kind::Share, 0.2),
    f("panic_threshold", Kind::Share, 0.2),
    f("local_zone_min_healthy", Kind::Share, 0.2),
];

const FAIRNESS: &[Field] = &[f("key", Kind::ClientKey, 1.0)];
const ADAPTIVE: &[Field] = &[
    f("target_p95_ms", Kind::LowMs, 0.9),
    f("min_inflight", Kind::LowCount, 0.9),
    f("load_target", Kind::Share, 0.5),
];

const BACKEND: &[Field] = &[
    f("address", Kind::Addr, 1.0),
    f("zone", Kind::Name, 0.7),
    f("max_inflight", Kind::Count, 0.2),
];

const UPSTREAM: &[Field] = &[
    f("name", Kind::UpstreamName, 1.0),
    f("routes", Kind::Routes, 1.0),
    f("balance", Kind::Balance, 0.5),
    f("affinity", Kind::Affinity, 0.3),
    f("retry_on_connect_failure", Kind::Count, 0.3),
    f("retry_budget", Kind::Share, 0.2),
    f("limits", Kind::Table(LIMITS), 0.7),
    f("levels", Kind::Table(LEVELS), 0.5),
    f("health", Kind::Table(HEALTH), 0.5),
    f("fairness", Kind::Table(FAIRNESS), 0.2),
    f("adaptive", Kind::Table(ADAPTIVE), 0.3),
    f("backend", Kind::Tables(BACKEND), 1.0),
];

const PRIORITY: &[Field] = &[f("match", Kind::Match, 1.0), f("class", Kind::Class, 1.0)];

const ROOT: &[Field] = &[
    f("server", Kind::Table(SERVER), 1.0),
    f("upstream", Kind::Tables(UPSTREAM), 1.0),
    f("priority", Kind::Tables(PRIORITY), 0.4),
];

// ---------------------------------------------------------------- values

/// One document's generator: `chaos` is the chance that a value is an edge value or
/// one of a random type, that a required key is missing, that a table gets an unknown
/// key.
struct Gen<'r> {
    rng: &'r mut StdRng,
    chaos: f64,
}

const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "é",
    "日本語",
    "zone a",
    "a\u{0}b",
    "\u{feff}",
    "🦀",
    "\u{202e}evil",
    "a\nb",
    "../../etc/passwd",
    "%00",
    "\\",
    "\"",
    "'",
    "header:",
    ":",
    "x-priority:",
    "/",
    "//",
    "/a?b",
    "/a#b",
    "/ a",
    "localhost:80",
    "127.0.0.1",
    "127.0.0.1:99999",
    "[::1]:80",
    "::1:80",
    "0.0.0.0:0",
    "300.1.1.1:80",
];

const UNKNOWN_KEYS: &[&str] = &[
    "foo",
    "thread",
    "maxInflight",
    "max-inflight",
    "listen2",
    "ünïcödé",
    "日本",
    "",
    "a.b",
    " ",
    "__proto__",
    "backends",
    "Name",
    "zone ",
    "🦀",
];

/// Addresses that collide: with each other, between listeners, and port 0.
const CLASHING_ADDRS: &[&str] = &[
    "127.0.0.1:8080",
    "127.0.0.1:8080",
    "0.0.0.0:8080",
    "127.0.0.1:0",
    "127.0.0.1:9901",
    "[::1]:8443",
    "10.0.1.1:3000",
    "10.0.1.1:3000",
    "10.0.1.1:0",
];

impl Gen<'_> {
    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p.clamp(0.0, 1.0))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())]
    }

    /// A valid value from `valid`, or at the chaos rate one from `edge`.
    fn either<T: Copy>(&mut self, valid: &[T], edge: &[T]) -> T {
        if self.chance(self.chaos) {
            self.pick(edge)
        } else {
            self.pick(valid)
        }
    }

    fn int(&mut self, valid: &[i64], edge: &[i64]) -> Value {
        if self.chance(self.chaos * 0.3) {
            Value::Integer(self.odd_int())
        } else {
            Value::Integer(self.either(valid, edge))
        }
    }

    fn float(&mut self, valid: &[f64], edge: &[f64]) -> Value {
        if self.chance(self.chaos * 0.3) {
            Value::Float(self.odd_float())
        } else {
            Value::Float(self.either(valid, edge))
        }
    }

    fn string(&mut self, valid: &[&str], edge: &[&str]) -> Value {
        if self.chance(self.chaos * 0.3) {
            Value::String(self.odd_string())
        } else {
            Value::String(self.either(valid, edge).to_owned())
        }
    }

    fn odd_string(&mut self) -> String {
        match self.rng.random_range(0..4) {
            0 => self.pick(ODD_STRINGS).to_owned(),
            1 => {
                // Random unicode scalar values, any plane.
                let n = self.rng.random_range(0..12);
                (0..n)
                    .map(|_| char::from_u32(self.rng.random_range(0..0x11_0000)).unwrap_or('?'))
                    .collect()
            }
            2 => "x".repeat(self.rng.random_range(100..600)),
            _ => format!("{}{}", self.pick(ODD_STRINGS), self.pick(ODD_STRINGS)),
        }
    }

    fn odd_int(&mut self) -> i64 {
        match self.rng.random_range(0..6) {
            0 => self.pick(&[0, -1, 1, i64::MIN, i64::MAX, i64::MAX - 1, i64::MIN + 1]),
            1 => self.pick(&[
                86_400_000,
                86_400_001,
                1_000_000,
                1_000_001,
                1024,
                1025,
                u32::MAX as i64,
                u32::MAX as i64 + 1,
                i32::MAX as i64,
            ]),
            2 => -self.rng.random_range(1..1_000_000),
            3 => self.rng.random(),
            _ => self.rng.random_range(0..100),
        }
    }

    fn odd_float(&mut self) -> f64 {
        self.pick(&[
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.0,
            1.0,
            1.0000001,
            -0.5,
            1e308,
            -1e308,
            5e-324,
            f64::MIN_POSITIVE,
            0.999_999_999,
            2.0,
        ])
    }

    fn datetime(&mut self) -> Value {
        let text = self.pick(&[
            "1979-05-27T07:32:00Z",
            "1979-05-27",
            "07:32:00",
            "1979-05-27T00:32:00.999999-07:00",
        ]);
        Value::Datetime(text.parse::<Datetime>().expect("valid datetime"))
    }

    /// A value of any type, nested up to `depth`.
    fn any(&mut self, depth: usize) -> Value {
        let top = if depth == 0 { 5 } else { 7 };
        match self.rng.random_range(0..top) {
            0 => Value::Integer(self.odd_int()),
            1 => Value::Float(self.odd_float()),
            2 => Value::String(self.odd_string()),
            3 => Value::Boolean(self.rng.random()),
            4 => self.datetime(),
            5 => {
                let n = self.rng.random_range(0..4);
                Value::Array((0..n).map(|_| self.any(depth - 1)).collect())
            }
            _ => {
                let n = self.rng.random_range(0..4);
                let mut t = Table::new();
                for _ in 0..n {
                    let key = self.key();
                    let v = self.any(depth - 1);
                    t.insert(key, v);
                }
                Value::Table(t)
            }
        }
    }

    fn key(&mut self) -> String {
        if self.chance(0.5) {
            self.pick(UNKNOWN_KEYS).to_owned()
        } else {
            self.odd_string()
        }
    }

    fn addr(&mut self) -> Value {
        if self.chance(self.chaos) {
            return self.string(CLASHING_ADDRS, ODD_STRINGS);
        }
        let port = self.rng.random_range(1..=65535);
        Value::String(match self.rng.random_range(0..4) {
            0 => format!("127.0.0.1:{port}"),
            1 => format!("[::1]:{port}"),
            _ => format!(
                "10.{}.{}.{}:{port}",
                self.rng.random_range(0..=255),
                self.rng.random_range(0..=255),
                self.rng.random_range(1..=254)
            ),
        })
    }

    fn route(&mut self) -> Value {
        if self.chance(self.chaos) {
            self.string(&["/", "/api/"], &["api", "/a b", "/?q", "", "/#x"])
        } else {
            Value::String(format!("/r{}/", self.rng.random_range(0..100_000)))
        }
    }

    fn plausible(&mut self, kind: Kind, depth: usize) -> Value {
        let dup_or_bad = [0, 1_000_001, -1];
        match kind {
            Kind::Addr => self.addr(),
            Kind::Addrs => {
                let n = self.either(&[1, 1, 2], &[0, 3]);
                Value::Array((0..n).map(|_| self.addr()).collect())
            }
            Kind::Threads => self.int(&[1, 2, 4, 16], &[0, 1025, -2]),
            Kind::Count => self.int(&[1, 2, 3, 5, 18, 100], &dup_or_bad),
            Kind::Depth => self.int(&[50, 100, 200, 1000], &[0, 1, 1_000_001]),
            Kind::LowCount => self.int(&[1, 5, 10], &[0, 60, 5000]),
            Kind::HighCount => self.int(&[10, 20, 50], &[0, 5, 100_000]),
            Kind::Ms => self.int(&[50, 100, 250, 1000, 5000, 60_000], &[0, 86_400_001, -1]),
            Kind::LongMs => self.int(&[1_000, 2_000, 5_000, 86_400_000], &[0, 999, -5]),
            Kind::LowMs => self.int(&[5, 10, 25, 50], &[0, 500, 86_400_001]),
            Kind::HighMs => self.int(&[50, 100, 200, 500], &[0, 1, 100_000]),
            Kind::Bytes => self.int(&[0, 1024, 10_485_760, i64::MAX], &[-1, i64::MIN]),
            Kind::Secs => self.int(&[1, 10, 30, 86_400], &[0, 86_401, -30]),
            Kind::Share => self.float(&[0.001, 0.25, 0.5, 0.85], &[0.0, 1.0, 1.5, -0.1]),
            Kind::LowShare => self.float(&[0.001, 0.002, 0.005], &[0.0, 0.9, 1.1]),
            Kind::HighShare => self.float(&[0.005, 0.01, 0.5, 1.0], &[0.0, 0.0001, 2.0]),
            Kind::Name => self.string(&["a", "b", "zone-1", "eu.west_1"], &["a b", "", "zöne"]),
            Kind::UpstreamName => {
                if self.chance(self.chaos) {
                    self.string(&["app", "app"], &["", "x/y", "app "])
                } else {
                    Value::String(format!("up-{}", self.rng.random_range(0..100_000)))
                }
            }
            Kind::Route => self.route(),
            Kind::Routes => {
                let n = self.either(&[1, 1, 2], &[0, 3]);
                Value::Array((0..n).map(|_| self.route()).collect())
            }
            Kind::Balance => self.string(
                &["least_inflight", "round_robin", "least_inflight"],
                &["consistent_hash", "random", "LEAST_INFLIGHT"],
            ),
            Kind::Affinity => self.string(
                &["header:mcp-session-id", "cookie:sid", "header:X-Session"],
                &["header:", "header:a b", "query:x", "header"],
            ),
            Kind::Check => self.string(&["tcp", "none"], &["http", "grpc", ""]),
            Kind::Mode => self.string(&["enforce", "shadow"], &["Shadow", "off", ""]),
            Kind::ClientKey => self.string(
                &["client_ip", "header:x-tenant-id", "header:X-Api-Key"],
                &["header:", "cookie:sid", "ip", "header:a b"],
            ),
            Kind::Class => self.string(
                &["critical", "high", "normal", "low"],
                &["urgent", "High", ""],
            ),
            Kind::Header => self.string(
                &["x-priority:high", "X-Priority:Low", "x-tenant: gold "],
                &["x-priority", "x priority:high", "x-priority: ", ":v"],
            ),
            Kind::Bool => Value::Boolean(self.rng.random()),
            Kind::FilePath => self.string(&["/tmp/levee-fuzz.sock"], &["relative.sock", ""]),
            Kind::Table(fields) => Value::Table(self.table(fields, depth + 1)),
            Kind::Tables(fields) => {
                let n = self.either(&[1, 1, 2], &[0, 3]);
                Value::Array(
                    (0..n)
                        .map(|_| Value::Table(self.table(fields, depth + 1)))
                        .collect(),
                )
            }
            Kind::Match => {
                let mut t = Table::new();
                let (prefix, header) = match self.either(&[0, 1], &[2, 3]) {
                    0 => (true, false),
                    1 => (false, true),
                    2 => (true, true),
                    _ => (false, false),
                };
                if prefix {
                    let v = self.route();
                    t.insert("path_prefix".into(), v);
                }
                if header {
                    let v = self.plausible(Kind::Header, depth);
                    t.insert("header".into(), v);
                }
                Value::Table(t)
            }
        }
    }

    fn value(&mut self, kind: Kind, depth: usize) -> Value {
        if self.chance(self.chaos * 0.3) {
            if self.chance(0.05) {
                return deep_value(self.rng.random_range(10..60), self.rng.random());
            }
            self.any(3)
        } else {
            self.plausible(kind, depth)
        }
    }

    fn table(&mut self, fields: &[Field], depth: usize) -> Table {
        let mut t = Table::new();
        for field in fields {
            let presence = if field.presence >= 1.0 {
                1.0 - self.chaos * 0.3
            } else {
                field.presence
            };
            if self.chance(presence) || self.chance(self.chaos * 0.1) {
                let v = self.value(field.kind, depth);
                t.insert(field.key.to_owned(), v);
            }
        }
        if self.chance(self.chaos * 0.5) {
            let key = self.key();
            let v = self.any(2);
            t.insert(key, v);
        }
        t
    }
}

/// `[[[…1…]]]` or `{ a = { a = … } }`, `depth` levels.
fn deep_value(depth: usize, tables: bool) -> Value {
    let mut v = Value::Integer(1);
    for _ in 0..depth {
        v = if tables {
            let mut t = Table::new();
            t.insert("a".into(), v);
            Value::Table(t)
        } else {
            Value::Array(vec![v])
        };
    }
    v
}

// ---------------------------------------------------------------- rendering

fn render_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        Value::String(key.to_owned()).to_string()
    }
}

fn render_path(path: &[String]) -> String {
    path.iter()
        .map(|k| render_key(k))
        .collect::<Vec<_>>()
        .join(".")
}

fn render_inline(v: &Value) -> String {
    match v {
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(render_inline)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Table(t) => format!(
            "{{ {} }}",
            t.iter()
                .map(|(k, v)| format!("{} = {}", render_key(k), render_inline(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Datetime(d) => d.to_string(),
        other => other.to_string(),
    }
}

fn is_table_array(v: &Value) -> bool {
    matches!(v, Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_table))
}

/// Hand-written TOML in mixed styles: each sub-table is a `[header]`, an inline table
/// or dotted keys, each array of tables `[[headers]]` or an inline array, at random.
fn render_mixed(rng: &mut StdRng, root: &Table) -> String {
    let mut out = String::new();
    section(rng, &mut out, &[], root);
    out
}

fn section(rng: &mut StdRng, out: &mut String, path: &[String], t: &Table) {
    let mut deferred: Vec<(String, &Value)> = Vec::new();
    for (k, v) in t {
        match v {
            Value::Table(sub) => match rng.random_range(0..3) {
                0 => deferred.push((k.clone(), v)),
                1 if !sub.is_empty() => {
                    for (sk, sv) in sub {
                        out.push_str(&format!(
                            "{}.{} = {}\n",
                            render_key(k),
                            render_key(sk),
                            render_inline(sv)
                        ));
                    }
                }
                _ => out.push_str(&format!("{} = {}\n", render_key(k), render_inline(v))),
            },
            _ if is_table_array(v) && rng.random_bool(0.7) => deferred.push((k.clone(), v)),
            _ => out.push_str(&format!("{} = {}\n", render_key(k), render_inline(v))),
        }
    }
    for (k, v) in deferred {
        let mut sub_path = path.to_vec();
        sub_path.push(k);
        match v {
            Value::Table(sub) => {
                out.push_str(&format!("\n[{}]\n", render_path(&sub_path)));
                section(rng, out, &sub_path, sub);
            }
            Value::Array(items) => {
                for item in items {
                    if let Value::Table(sub) = item {
                        out.push_str(&format!("\n[[{}]]\n", render_path(&sub_path)));
                        section(rng, out, &sub_path, sub);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Breaks a rendered document the way hand edits do: a duplicated line (duplicate
/// key), a repeated `[server]`, a table header nested hundreds of keys deep, a stray
/// NUL or BOM.
fn vandalize(rng: &mut StdRng, text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    match rng.random_range(0..6) {
        0 if !lines.is_empty() => {
            let i = rng.random_range(0..lines.len());
            let line = lines[i].clone();
            lines.insert(i, line);
        }
        1 => lines.push("[server]\nthreads = 2".into()),
        2 => {
            let depth = rng.random_range(10..400);
            lines.push(format!("[{}]\nx = 1", vec!["a"; depth].join(".")));
        }
        3 => {
            let depth = rng.random_range(10..400);
            lines.push(format!("server.{} = 1", vec!["b"; depth].join(".")));
        }
        4 => lines.insert(0, "\u{feff}".into()),
        _ => lines.push("listen = [\"\u{0}\"]".into()),
    }
    lines.join("\n")
}

fn generated(rng: &mut StdRng) -> (String, &'static str) {
    let chaos = [0.0, 0.0, 0.02, 0.05, 0.15, 0.4][rng.random_range(0..6)];
    let root = Gen { rng, chaos }.table(ROOT, 0);
    match rng.random_range(0..10) {
        0..=3 => match toml::to_string(&root) {
            Ok(text) => (text, "canonical"),
            // The serializer refuses some shapes (e.g. mixed arrays of tables); fall back.
            Err(_) => (render_mixed(rng, &root), "mixed"),
        },
        4..=8 => (render_mixed(rng, &root), "mixed"),
        _ => {
            let text = render_mixed(rng, &root);
            (vandalize(rng, &text), "vandalized")
        }
    }
}

// ---------------------------------------------------------------- mutations

const INSERTS: &[&[u8]] = &[
    b"[",
    b"]",
    b"[[",
    b"\"",
    b"'",
    b"=",
    b"\n",
    b"#",
    b"{",
    b"}",
    b".",
    b",",
    b"-",
    b"9999999999999999999999",
    b"nan",
    b"-inf",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    b"\\u0000",
    b"\"\"\"",
    b"'''",
    b"\r",
    b"\t",
    b"0x",
    b"1979-05-27",
];

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut bytes = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = bytes.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..=len)
        };
        match rng.random_range(0..7) {
            0 => bytes.truncate(at),
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            2 => {
                let ins = INSERTS[rng.random_range(0..INSERTS.len())];
                bytes.splice(at..at, ins.iter().copied());
            }
            3 if len > 0 => {
                let end = (at + rng.random_range(1..64)).min(len);
                bytes.drain(at.min(end)..end);
            }
            4 | 5 => {
                // Line-level: duplicate or swap two lines.
                let text = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = text.lines().collect();
                if lines.len() > 1 {
                    let i = rng.random_range(0..lines.len());
                    let j = rng.random_range(0..lines.len());
                    if rng.random_bool(0.5) {
                        lines.insert(j, lines[i]);
                    } else {
                        lines.swap(i, j);
                    }
                    bytes = lines.join("\n").into_bytes();
                }
            }
            _ => {
                let i = if len == 0 {
                    0
                } else {
                    rng.random_range(0..len)
                };
                bytes.insert(i, rng.random());
            }
        }
    }
    bytes
}

// ---------------------------------------------------------------- properties

#[derive(Default)]
struct Tally {
    cases: usize,
    ok: usize,
    syntax: usize,
    rejected: usize,
    errors: usize,
    by_source: std::collections::BTreeMap<&'static str, usize>,
    violations: Vec<String>,
    out_of_time: bool,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.cases += other.cases;
        self.ok += other.ok;
        self.syntax += other.syntax;
        self.rejected += other.rejected;
        self.errors += other.errors;
        for (k, v) in other.by_source {
            *self.by_source.entry(k).or_default() += v;
        }
        self.violations.extend(other.violations);
        self.out_of_time |= other.out_of_time;
    }
}

/// `line N column M` somewhere in `message`.
fn has_line_column(message: &str) -> bool {
    let words: Vec<&str> = message
        .split(|c: char| c.is_whitespace() || c == ':' || c == '(' || c == ')' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    words.windows(4).any(|w| {
        w[0] == "line"
            && w[1].parse::<usize>().is_ok()
            && w[2] == "column"
            && w[3].parse::<usize>().is_ok()
    })
}

/// The first segment of a key path: `upstream` of `upstream[0].name`.
fn first_segment(path: &str) -> &str {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    &path[..end]
}

/// Checks every property on one document; `Some(Ok)` accepted, `Some(Err)` rejected,
/// `None` panicked. `thorough` adds the (slow) determinism check of accepted files.
fn check_case(
    text: &str,
    source: &'static str,
    tally: &mut Tally,
    thorough: bool,
) -> Option<Result<(), ()>> {
    tally.cases += 1;
    *tally.by_source.entry(source).or_default() += 1;
    let result = catch_unwind(AssertUnwindSafe(|| config::parse(text)));
    let result = match result {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            tally.violations.push(format!(
                "[{source}] parse panicked: {msg}\n---\n{text}\n---"
            ));
            return None;
        }
    };
    // Whether the text is TOML at all (only asked when it matters: parsing is slow).
    let parsed_cell = std::cell::OnceCell::new();
    let parsed = || {
        parsed_cell
            .get_or_init(|| text.parse::<toml::Table>().ok().map(Value::Table))
            .as_ref()
    };
    let toml_ok = || parsed().is_some();
    match result {
        Ok(config) => {
            tally.ok += 1;
            if let Err(why) = revalidate(&config) {
                tally.violations.push(format!(
                    "[{source}] accepted config breaks a rule: {why}\n---\n{text}\n---"
                ));
            }
            match thorough.then(|| catch_unwind(AssertUnwindSafe(|| config::parse(text)))) {
                None => {}
                Some(Ok(Ok(again))) if again == config => {}
                _ => tally.violations.push(format!(
                    "[{source}] parse is not deterministic\n---\n{text}\n---"
                )),
            }
            match catch_unwind(AssertUnwindSafe(|| config.explain())) {
                Ok(s) if s.contains("total ") => {}
                _ => tally.violations.push(format!(
                    "[{source}] explain() panicked or is empty\n---\n{text}\n---"
                )),
            }
            Some(Ok(()))
        }
        Err(ConfigErrors(errors)) => {
            tally.rejected += 1;
            if errors.len() == 1 && errors[0].path.is_empty() && !toml_ok() {
                tally.syntax += 1;
            }
            tally.errors += errors.len();
            if errors.is_empty() {
                tally
                    .violations
                    .push(format!("[{source}] Err with no error\n---\n{text}\n---"));
            }
            for e in &errors {
                let problem = if e.message.trim().is_empty() {
                    Some("empty message")
                } else if e.path.is_empty() {
                    if toml_ok() {
                        Some("no key path, although the document is valid TOML")
                    } else if !has_line_column(&e.message) {
                        Some("syntax error without `line N column M`")
                    } else {
                        None
                    }
                } else if !ROOT.iter().any(|f| f.key == first_segment(&e.path))
                    && !text.contains(first_segment(&e.path))
                    && !text.contains(&render_key(first_segment(&e.path)))
                {
                    Some("key path names a key the document does not have")
                } else if !e.message.contains("required")
                    && !e.message.contains("by default")
                    && toml_ok()
                    && !parsed().is_some_and(|doc| resolves(doc, &e.path))
                {
                    // Only a missing key (`required`) or a default value (`by default`)
                    // may be named by a path that is not in the document.
                    Some("key path does not resolve in the document")
                } else {
                    None
                };
                if let Some(problem) = problem {
                    tally.violations.push(format!(
                        "[{source}] {problem}: path {:?} message {:?}\n---\n{text}\n---",
                        e.path, e.message
                    ));
                }
            }
            Some(Err(()))
        }
    }
}

/// Splits `a."b.c"[2].d` into keys and indexes (quotes kept off).
fn path_segments(path: &str) -> Option<Vec<Result<String, usize>>> {
    let mut out = Vec::new();
    let mut chars = path.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            '.' => {
                chars.next();
            }
            '[' => {
                chars.next();
                let digits: String = chars.by_ref().take_while(|&c| c != ']').collect();
                out.push(Err(digits.parse().ok()?));
            }
            '"' | '\'' => {
                // A quoted key as written, escapes included: let TOML itself unquote it.
                let quote = c;
                let mut raw = String::new();
                raw.push(quote);
                chars.next();
                while let Some(c) = chars.next() {
                    raw.push(c);
                    if c == '\\' && quote == '"' {
                        raw.push(chars.next()?);
                    } else if c == quote {
                        break;
                    }
                }
                let parsed = format!("k = {raw}").parse::<toml::Table>().ok()?;
                let key = parsed.get("k")?.as_str()?.to_owned();
                out.push(Ok(key));
            }
            _ => {
                let mut key = String::new();
                while let Some(&c) = chars.peek() {
                    if c == '.' || c == '[' {
                        break;
                    }
                    key.push(c);
                    chars.next();
                }
                out.push(Ok(key.trim().to_owned()));
            }
        }
    }
    Some(out)
}

/// Whether `path` names a value of the TOML document `doc`.
fn resolves(doc: &Value, path: &str) -> bool {
    let Some(segments) = path_segments(path) else {
        return false;
    };
    let mut at = doc;
    for segment in segments {
        let next = match (segment, at) {
            (Ok(key), Value::Table(t)) => t.get(&key),
            (Err(i), Value::Array(a)) => a.get(i),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    true
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn plain_path(p: &str) -> bool {
    p.starts_with('/')
        && !p
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#')
}

fn ensure(cond: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(why())
    }
}

/// The rules `levee check` promises for an accepted file, re-checked on the typed
/// config without the validator's code.
fn revalidate(c: &Config) -> Result<(), String> {
    const DAY: Duration = Duration::from_millis(86_400_000);
    const MS: Duration = Duration::from_millis(1);
    const MAX_COUNT: u32 = 1_000_000;
    let s = &c.server;
    ensure(!s.listen.is_empty(), || "server.listen is empty".into())?;
    for (i, a) in s.listen.iter().enumerate() {
        ensure(a.port() == 0 || !s.listen[..i].contains(a), || {
            format!("duplicate listen address {a}")
        })?;
    }
    ensure((1..=1024).contains(&s.threads), || {
        format!("threads {}", s.threads)
    })?;
    if let Some(z) = &s.zone {
        ensure(is_name(z), || format!("server.zone {z:?}"))?;
    }
    if let Some(admin) = s.admin_listen {
        ensure(admin.port() == 0 || !s.listen.contains(&admin), || {
            format!("admin_listen {admin} is a proxy listener")
        })?;
    }
    ensure(s.grace_period <= DAY, || "grace_period over a day".into())?;
    ensure((1..=86_400).contains(&s.retry_after_max_secs), || {
        format!("retry_after_max_secs {}", s.retry_after_max_secs)
    })?;
    let t = &s.timeouts;
    for (name, d) in [
        ("connect", t.connect),
        ("read", t.read),
        ("write", t.write),
        ("response", t.response),
        ("stream_idle", t.stream_idle),
        ("client_header", t.client_header),
        ("client_idle", t.client_idle),
        ("upstream_idle", t.upstream_idle),
    ] {
        ensure((MS..=DAY).contains(&d), || {
            format!("timeouts.{name} = {d:?}")
        })?;
    }
    ensure(t.client_idle >= Duration::from_secs(1), || {
        "client_idle under 1 s".into()
    })?;

    ensure(!c.upstreams.is_empty(), || "no upstream".into())?;
    let mut routes: Vec<&str> = Vec::new();
    for (i, u) in c.upstreams.iter().enumerate() {
        let at = |what: &str| format!("upstream[{i}] ({:?}): {what}", u.name);
        ensure(is_name(&u.name), || at("bad name"))?;
        ensure(!c.upstreams[..i].iter().any(|o| o.name == u.name), || {
            at("duplicate name")
        })?;
        ensure(!u.routes.is_empty(), || at("no routes"))?;
        for r in &u.routes {
            ensure(plain_path(r), || at(&format!("route {r:?}")))?;
            ensure(!routes.contains(&r.as_str()), || {
                at(&format!("duplicate route {r:?}"))
            })?;
            routes.push(r);
        }
        if u.balance == Balance::ConsistentHash {
            ensure(u.affinity.is_some(), || {
                at("consistent_hash without affinity")
            })?;
        }
        ensure((0.0..=1.0).contains(&u.retry_budget), || {
            at(&format!("retry_budget {}", u.retry_budget))
        })?;
        ensure(u.retry_on_connect_failure <= MAX_COUNT, || at("retries"))?;
        let l = &u.limits;
        ensure((1..=MAX_COUNT).contains(&l.max_inflight), || {
            at(&format!("limits.max_inflight {}", l.max_inflight))
        })?;
        ensure(l.queue_depth <= MAX_COUNT, || at("queue_depth"))?;
        ensure(l.queue_timeout <= DAY, || at("queue_timeout"))?;
        if l.queue_depth > 0 {
            ensure(l.queue_timeout >= MS, || at("queue without timeout"))?;
            ensure(l.queue_target >= MS, || at("queue without target"))?;
            // Below the timeout, or equal to it only by default (a short timeout).
            ensure(
                l.queue_target < l.queue_timeout
                    || (l.queue_target == l.queue_timeout && l.queue_target <= 5 * MS),
                || at(&format!("queue_target {:?}", l.queue_target)),
            )?;
        }
        ensure(l.queue_target <= DAY, || at("queue_target"))?;
        ensure((MS..=DAY).contains(&l.queue_interval), || {
            at(&format!("queue_interval {:?}", l.queue_interval))
        })?;
        if let Some(a) = &u.adaptive {
            ensure((MS..=DAY).contains(&a.target_p95), || {
                at(&format!("adaptive.target_p95 {:?}", a.target_p95))
            })?;
            ensure(
                a.min_inflight >= 1
                    && a.min_inflight <= l.max_inflight
                    && u.backends.iter().all(|b| a.min_inflight <= b.max_inflight),
                || at(&format!("adaptive.min_inflight {}", a.min_inflight)),
            )?;
            if let Some(t) = a.load_target {
                ensure(t > 0.0 && t <= 10.0, || {
                    at(&format!("adaptive.load_target {t}"))
                })?;
            }
        }
        let lv = &u.levels;
        for (level, th) in [("caution", &lv.caution), ("danger", &lv.danger)] {
            if let Some(x) = th.utilization {
                ensure(level == "caution" && x > 0.0 && x <= 1.0, || {
                    at(&format!("{level}.utilization {x}"))
                })?;
            }
            if let Some(q) = th.queue {
                ensure(q >= 1 && q <= l.queue_depth, || {
                    at(&format!("{level}.queue {q} (depth {})", l.queue_depth))
                })?;
            }
            if let Some(w) = th.queue_wait {
                ensure(w >= MS && w <= l.queue_timeout && l.queue_depth > 0, || {
                    at(&format!("{level}.queue_wait {w:?}"))
                })?;
            }
            if let Some(p) = th.p95 {
                ensure((MS..=DAY).contains(&p), || {
                    at(&format!("{level}.p95 {p:?}"))
                })?;
            }
            if let Some(e) = th.error_rate {
                ensure(e > 0.0 && e <= 1.0, || {
                    at(&format!("{level}.error_rate {e}"))
                })?;
            }
        }
        let (ca, da) = (&lv.caution, &lv.danger);
        let ordered = |c: Option<f64>, d: Option<f64>| match (c, d) {
            (Some(c), Some(d)) => d >= c,
            _ => true,
        };
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64());
        ensure(
            ordered(ca.queue.map(f64::from), da.queue.map(f64::from))
                && ordered(ms(ca.queue_wait), ms(da.queue_wait))
                && ordered(ms(ca.p95), ms(da.p95))
                && ordered(ca.error_rate, da.error_rate),
            || at("danger below caution"),
        )?;
        ensure(
            lv.window >= Duration::from_secs(1) && lv.window <= DAY,
            || at("window"),
        )?;
        ensure(lv.cooldown <= DAY, || at("cooldown"))?;
        ensure(lv.min_samples >= 1, || at("min_samples"))?;
        let h = &u.health;
        ensure(h.interval >= MS && h.timeout >= MS, || at("health times"))?;
        ensure(h.timeout <= h.interval, || {
            at("probe timeout over interval")
        })?;
        ensure(h.rise >= 1 && h.fall >= 1, || at("rise/fall"))?;
        ensure(h.eject >= MS && h.eject_max >= h.eject, || {
            at("eject times")
        })?;
        if let Some(p) = &h.path {
            ensure(plain_path(p), || at(&format!("health.path {p:?}")))?;
        }
        if h.check == Check::Http {
            ensure(h.path.is_some(), || at("http check without path"))?;
        }
        ensure(
            (0.0..=1.0).contains(&h.max_ejected_share)
                && (0.0..1.0).contains(&h.panic_threshold)
                && (0.0..=1.0).contains(&h.local_zone_min_healthy),
            || at("health shares"),
        )?;
        ensure(!u.backends.is_empty(), || at("no backend"))?;
        let mut seen: Vec<SocketAddr> = Vec::new();
        for b in &u.backends {
            ensure(b.address.port() != 0, || at("backend port 0"))?;
            ensure(!seen.contains(&b.address), || {
                at(&format!("duplicate backend {}", b.address))
            })?;
            seen.push(b.address);
            ensure(is_name(&b.zone), || at(&format!("zone {:?}", b.zone)))?;
            ensure((1..=MAX_COUNT).contains(&b.max_inflight), || {
                at(&format!("backend max_inflight {}", b.max_inflight))
            })?;
        }
    }
    for (i, p) in c.priorities.iter().enumerate() {
        match &p.matcher {
            PriorityMatch::PathPrefix(prefix) => ensure(plain_path(prefix), || {
                format!("priority[{i}] prefix {prefix:?}")
            })?,
            PriorityMatch::Header(name, value) => ensure(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| !b.is_ascii_uppercase() && b.is_ascii_graphic())
                    && !value.is_empty(),
                || format!("priority[{i}] header {name:?}: {value:?}"),
            )?,
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- the tests

fn seed() -> u64 {
    std::env::var("LEVEE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x1e7ee)
        })
}

fn case_counts() -> (usize, usize) {
    match std::env::var("LEVEE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
    {
        Some(n) => (n * 2 / 3, n - n * 2 / 3),
        None => (DEFAULT_GENERATED, DEFAULT_MUTATED),
    }
}

/// Runs `levee check --offline -c FILE` on `text`: exit status and stderr. Offline:
/// generated backend names (`localhost:80`) are not looked up, so no test traffic
/// leaves loopback.
fn levee_check(text: &str) -> (bool, String) {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["check", "--offline", "-c"])
        .arg(file.path())
        .env("LEVEE_LOG", "off")
        .output()
        .expect("run levee check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Comments and blank lines removed: a third of the size, so three times the cases.
fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| match l.find(" #") {
            Some(i) if !l[..i].contains('"') || l[..i].matches('"').count() % 2 == 0 => {
                l[..i].trim_end()
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One worker's share of the cases, from its own `StdRng` seeded with `seed + worker`.
fn fuzz_worker(
    seed: u64,
    worker: u64,
    (generated_n, mutated_n): (usize, usize),
    deadline: Instant,
) -> (Tally, Vec<(String, bool)>) {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(worker));
    let full = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/levee.toml"))
        .expect("conf/levee.toml");
    let stripped = strip_comments(&String::from_utf8_lossy(&full)).into_bytes();
    let mut tally = Tally::default();
    let mut cli_sample: Vec<(String, bool)> = Vec::new();
    let total = generated_n + mutated_n;
    let (mut generated_left, mut mutated_left) = (generated_n, mutated_n);
    for i in 0..total {
        if Instant::now() > deadline {
            tally.out_of_time = true;
            break;
        }
        // Interleaved, so a run cut short by the time budget still has both kinds.
        let mutate_now =
            mutated_left > 0 && (generated_left == 0 || rng.random_range(0..total) < mutated_n);
        if mutate_now {
            mutated_left -= 1;
        } else {
            generated_left -= 1;
        }
        let (text, source) = if !mutate_now {
            generated(&mut rng)
        } else if rng.random_bool(0.1) {
            let bytes = mutate(&mut rng, &full);
            (String::from_utf8_lossy(&bytes).into_owned(), "mutated")
        } else {
            let bytes = mutate(&mut rng, &stripped);
            (String::from_utf8_lossy(&bytes).into_owned(), "mutated")
        };
        let outcome = check_case(&text, source, &mut tally, i % 8 == 0);
        // Keep an even sample of accepted and rejected files for the CLI check.
        if let Some(outcome) = outcome {
            let want_ok = cli_sample.len().is_multiple_of(2);
            if cli_sample.len() < CLI_SAMPLE / 2
                && outcome.is_ok() == want_ok
                && rng.random_bool(0.2)
            {
                cli_sample.push((text, outcome.is_ok()));
            }
        }
    }
    (tally, cli_sample)
}

#[test]
fn parse_never_panics_and_every_rejection_names_its_key() {
    let seed = seed();
    let (generated_n, mutated_n) = case_counts();
    println!("config fuzz seed: {seed} (replay with LEVEE_FUZZ_SEED={seed})");
    let started = Instant::now();
    let mut tally = Tally::default();

    // The shipped example must be accepted and sane.
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/levee.toml"))
        .expect("conf/levee.toml");
    assert!(
        matches!(
            check_case(&example, "example", &mut tally, true),
            Some(Ok(()))
        ),
        "conf/levee.toml is rejected"
    );
    assert!(
        matches!(
            check_case(&strip_comments(&example), "example", &mut tally, true),
            Some(Ok(()))
        ),
        "conf/levee.toml without comments is rejected"
    );

    // Two workers (the machine has two cores), each with its own seeded generator.
    let budget = std::env::var("LEVEE_FUZZ_BUDGET_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(BUDGET, Duration::from_secs);
    let deadline = started + budget;
    let shares = [
        (generated_n.div_ceil(2), mutated_n.div_ceil(2)),
        (generated_n / 2, mutated_n / 2),
    ];
    let results: Vec<(Tally, Vec<(String, bool)>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2u64)
            .map(|w| scope.spawn(move || fuzz_worker(seed, w, shares[w as usize], deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("fuzz worker"))
            .collect()
    });
    let mut cli_sample = Vec::new();
    for (t, sample) in results {
        tally.merge(t);
        cli_sample.extend(sample);
    }
    let parse_time = started.elapsed();
    if tally.out_of_time {
        println!("time budget of {budget:?} reached: stopped early");
    }

    // `levee check` agrees: exit 0 exactly when parse accepts, and prints every error.
    for (text, ok) in &cli_sample {
        let (status, stderr) = levee_check(text);
        if status != *ok {
            tally.violations.push(format!(
                "levee check exit {} but parse {}\n---\n{text}\n---",
                if status { 0 } else { 1 },
                if *ok { "accepts" } else { "rejects" }
            ));
        }
        if let Err(errors) = config::parse(text) {
            for e in &errors.0 {
                if !stderr.contains(&e.to_string()) {
                    tally.violations.push(format!(
                        "levee check does not print {:?}; stderr:\n{stderr}",
                        e.to_string()
                    ));
                }
            }
        }
    }

    println!(
        "config fuzz: {} cases in {:.1} s ({:?}): {} accepted, {} rejected ({} TOML syntax, {} errors in all); {} run through `levee check`",
        tally.cases,
        parse_time.as_secs_f64(),
        tally.by_source,
        tally.ok,
        tally.rejected,
        tally.syntax,
        tally.errors,
        cli_sample.len()
    );
    let shown: Vec<&String> = tally.violations.iter().take(5).collect();
    assert!(
        tally.violations.is_empty(),
        "seed {seed}: {} violation(s); first ones:\n{}",
        tally.violations.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    assert!(
        tally.ok > tally.cases / 20,
        "too few accepted configs: the generator is off"
    );
    assert!(
        tally.rejected > tally.cases / 5,
        "too few rejected configs: the generator is off"
    );
}

/// Environment variable that makes `deep_nesting_child` parse one deep document.
const DEEP_ENV: &str = "LEVEE_FUZZ_DEEP";

/// A document nested `depth` levels deep, in one of four shapes.
fn deep_document(shape: &str, depth: usize) -> String {
    let head = "[server]\nlisten = [\"127.0.0.1:0\"]\n";
    match shape {
        "array" => format!(
            "{head}threads = {}1{}\n",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
        "inline" => format!(
            "{head}threads = {}1{}\n",
            "{ a = ".repeat(depth),
            " }".repeat(depth)
        ),
        "dotted" => format!("{head}{} = 1\n", vec!["a"; depth].join(".")),
        _ => format!("{head}[{}]\nx = 1\n", vec!["a"; depth].join(".")),
    }
}

/// Child side of `deep_nesting_is_rejected_without_overflowing_the_stack`: parses the
/// document named by `LEVEE_FUZZ_DEEP=shape:depth` on a thread with the main thread's
/// usual 8 MiB stack, and prints how it ended. Does nothing in a normal run.
#[test]
fn deep_nesting_child() {
    let Ok(spec) = std::env::var(DEEP_ENV) else {
        return;
    };
    let (shape, depth) = spec.split_once(':').expect("shape:depth");
    let text = deep_document(shape, depth.parse().expect("depth"));
    let outcome = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || match config::parse(&text) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => format!("rejected: {}", e.0[0]),
        })
        .expect("thread")
        .join()
        .unwrap_or_else(|_| "panicked".to_owned());
    println!("DEEP-OUTCOME {outcome}");
}

#[test]
fn deep_nesting_is_rejected_without_overflowing_the_stack() {
    let exe = std::env::current_exe().expect("test binary");
    let mut findings = Vec::new();
    for shape in ["array", "inline", "dotted", "header"] {
        for depth in [100, 20_000] {
            let out = Command::new(&exe)
                .args([
                    "--exact",
                    "deep_nesting_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(DEEP_ENV, format!("{shape}:{depth}"))
                .output()
                .expect("re-run the test binary");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let outcome = stdout
                .lines()
                .find_map(|l| l.split_once("DEEP-OUTCOME ").map(|(_, o)| o.to_owned()));
            let shown = outcome.clone().unwrap_or_else(|| {
                format!(
                    "child died ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .rev()
                        .take(2)
                        .collect::<Vec<_>>()
                        .join(" | ")
                )
            });
            println!(
                "deep {shape} x{depth}: {}",
                shown.chars().take(160).collect::<String>()
            );
            match outcome.as_deref() {
                Some(o) if o.starts_with("rejected") => {}
                _ => findings.push(format!("{shape} x{depth}: {shown}")),
            }
        }
    }
    assert!(
        findings.is_empty(),
        "deep documents must be rejected cleanly:\n{}",
        findings.join("\n")
    );
}
