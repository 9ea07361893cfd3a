//! The edge section (issue 18): the CPU per request of levee's edge features, side by
//! side with levee before them (levee-before, from `LEVEE_BEFORE`) on its single
//! upstream. The issue's target: with 10 upstreams routed by host and the PROXY
//! protocol on, CPU per request within 3 % of the single-upstream path before.
//!
//! wrk cannot send a PROXY header, so the rows that need one go through HAProxy in
//! TCP mode as a relay (`server … send-proxy-v2`); the baselines go through the same
//! relay without `send-proxy`, so every relayed row pays the same relay and only
//! levee's own CPU differs. levee's CPU is read from `/proc` (utime + stime) around
//! each wrk run and divided by the requests wrk completed; the relay's is shown apart.
//! The relay does the same work for every relayed row, so its CPU per request moves
//! only with the machine: levee's CPU over the relay's, compared within a repetition,
//! is the figure this shared machine's drift disturbs least. The direct rows (wrk to
//! levee, no relay) are there for reference.
//!
//! Every row sends the same `Host` (a name the wildcard matches, so the 10-upstream
//! configs take the longer lookup), except the exact-name row; a levee without `hosts`
//! never reads it. Each upstream has the fast backend; the rows run in the order of
//! [`Case::ALL`] in each repetition.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::proxies::{Kind, ReadyCheck, Running, Tools};
use crate::report::{median, ms, us_opt, Results, Target, Verdict};
use crate::{
    cpu_per_request, replica, wrk, Opts, Plan, FAST_WORKERS, THREADS, WRK_CONNECTIONS, WRK_THREADS,
};

/// The target: CPU per request of the 10-upstream, PROXY-protocol row at most this
/// multiple of levee-before's single upstream through the same relay.
pub const EDGE_CPU_RATIO: f64 = 1.03;
/// Upstreams of the virtual-host configs: `site0` … `site8.example.com` by exact name,
/// and the last one `*.example.com`.
const UPSTREAMS: usize = 10;
/// The host the rows send: not an exact name, so found through the wildcard (an exact
/// look-up that misses, then the suffix `.example.com`).
pub const WILDCARD_HOST: &str = "www.example.com";
/// The exact-name row's host.
pub const EXACT_HOST: &str = "site4.example.com";
/// wrk's warm-up before each measured run, through the same path.
const WARM_UP: Duration = Duration::from_secs(1);

/// One row of the section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    BeforeDirect,
    Direct,
    BeforeRelay,
    Relay,
    /// One upstream, the PROXY protocol on: what the header costs alone.
    ProxyOnly,
    /// 10 upstreams by host, no PROXY protocol: what routing by host costs alone.
    HostsOnly,
    /// The issue's case: 10 upstreams by host, the PROXY protocol, a wildcard host.
    Edge,
    /// The same with an exact host.
    EdgeExact,
}

impl Case {
    pub const ALL: [Case; 8] = [
        Case::BeforeDirect,
        Case::Direct,
        Case::BeforeRelay,
        Case::Relay,
        Case::ProxyOnly,
        Case::HostsOnly,
        Case::Edge,
        Case::EdgeExact,
    ];

    fn kind(self) -> Kind {
        match self {
            Case::BeforeDirect | Case::BeforeRelay => Kind::LeveeBefore,
            _ => Kind::Levee,
        }
    }

    fn relay(self) -> bool {
        !matches!(self, Case::BeforeDirect | Case::Direct)
    }

    fn hosts(self) -> bool {
        matches!(self, Case::HostsOnly | Case::Edge | Case::EdgeExact)
    }

    fn proxy_protocol(self) -> bool {
        matches!(self, Case::ProxyOnly | Case::Edge | Case::EdgeExact)
    }

    pub fn host(self) -> &'static str {
        match self {
            Case::EdgeExact => EXACT_HOST,
            _ => WILDCARD_HOST,
        }
    }

    /// The row this one is compared with: levee-before on the same path.
    fn before(self) -> Case {
        if self.relay() {
            Case::BeforeRelay
        } else {
            Case::BeforeDirect
        }
    }

    /// levee's single upstream on the same path.
    fn single(self) -> Case {
        if self.relay() {
            Case::Relay
        } else {
            Case::Direct
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Case::BeforeDirect => "before-direct",
            Case::Direct => "direct",
            Case::BeforeRelay => "before-relay",
            Case::Relay => "relay",
            Case::ProxyOnly => "proxy-only",
            Case::HostsOnly => "hosts-only",
            Case::Edge => "edge",
            Case::EdgeExact => "edge-exact",
        }
    }

    /// `levee-before, 1 upstream, via relay` and the like.
    pub fn label(self) -> String {
        let upstreams = if self.hosts() {
            format!("{UPSTREAMS} upstreams by host")
        } else {
            "1 upstream".into()
        };
        let path = match (self.relay(), self.proxy_protocol()) {
            (false, _) => "wrk direct",
            (true, false) => "via relay",
            (true, true) => "via relay, PROXY v2",
        };
        format!("{}, {upstreams}, {path}", self.kind().name())
    }
}

/// One measured run of a case.
#[derive(Debug, Clone)]
pub struct EdgeRun {
    pub rep: usize,
    pub rps: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub errors: u64,
    pub levee_cpu_us: Option<f64>,
    /// The user-time part of `levee_cpu_us`.
    pub levee_user_us: Option<f64>,
    pub relay_cpu_us: Option<f64>,
}

impl EdgeRun {
    /// levee's CPU per request over the relay's.
    fn over_relay(&self) -> Option<f64> {
        let (l, r) = (self.levee_cpu_us?, self.relay_cpu_us?);
        (r > 0.0).then(|| l / r)
    }
}

#[derive(Debug, Clone, Default)]
pub struct EdgeResults {
    pub runs: BTreeMap<Case, Vec<EdgeRun>>,
}

/// Medians of one case's runs.
#[derive(Debug, Clone, Copy)]
pub struct Medians {
    pub runs: usize,
    pub rps: f64,
    pub p99: Duration,
    pub errors: f64,
    pub levee_cpu_us: Option<f64>,
    pub levee_user_us: Option<f64>,
    pub relay_cpu_us: Option<f64>,
    /// Median of levee's CPU over the relay's.
    pub over_relay: Option<f64>,
}

impl EdgeResults {
    pub fn medians(&self, case: Case) -> Option<Medians> {
        let runs = self.runs.get(&case).filter(|r| !r.is_empty())?;
        let opt = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
        Some(Medians {
            runs: runs.len(),
            rps: median(runs.iter().map(|r| r.rps).collect()),
            p99: crate::report::median_d(runs.iter().map(|r| r.p99)),
            errors: median(runs.iter().map(|r| r.errors as f64).collect()),
            levee_cpu_us: opt(runs.iter().filter_map(|r| r.levee_cpu_us).collect()),
            levee_user_us: opt(runs.iter().filter_map(|r| r.levee_user_us).collect()),
            relay_cpu_us: opt(runs.iter().filter_map(|r| r.relay_cpu_us).collect()),
            over_relay: opt(runs.iter().filter_map(EdgeRun::over_relay).collect()),
        })
    }

    /// levee CPU/req of `case` over `base`'s (medians).
    pub fn ratio(&self, case: Case, base: Case) -> Option<f64> {
        let a = self.medians(case)?.levee_cpu_us?;
        let b = self.medians(base)?.levee_cpu_us?;
        (b > 0.0).then(|| a / b)
    }

    /// levee CPU/req of `case` over `base`'s within each repetition.
    pub fn paired(&self, case: Case, base: Case) -> Vec<f64> {
        self.paired_by(case, base, |r| r.levee_cpu_us)
    }

    /// The same with each run's levee CPU taken over its relay's: what is left when
    /// the machine's speed, which moves both, is divided out.
    pub fn paired_over_relay(&self, case: Case, base: Case) -> Vec<f64> {
        self.paired_by(case, base, EdgeRun::over_relay)
    }

    fn paired_by(&self, case: Case, base: Case, f: impl Fn(&EdgeRun) -> Option<f64>) -> Vec<f64> {
        let (Some(a), Some(b)) = (self.runs.get(&case), self.runs.get(&base)) else {
            return Vec::new();
        };
        a.iter()
            .filter_map(|x| {
                let y = b.iter().find(|y| y.rep == x.rep)?;
                let (x, y) = (f(x)?, f(y)?);
                (y > 0.0).then(|| x / y)
            })
            .collect()
    }

    /// Median of [`EdgeResults::paired_over_relay`].
    pub fn over_relay_ratio(&self, case: Case, base: Case) -> Option<f64> {
        let v = self.paired_over_relay(case, base);
        (!v.is_empty()).then(|| median(v))
    }

    pub fn targets(&self) -> Vec<Target> {
        let name = format!(
            "edge: {UPSTREAMS} upstreams by host + PROXY CPU/req <= {EDGE_CPU_RATIO}x levee-before, 1 upstream (relay)"
        );
        let verdict = match self.ratio(Case::Edge, Case::BeforeRelay) {
            Some(x) => Verdict::of(x <= EDGE_CPU_RATIO),
            None => Verdict::Skip,
        };
        let levee = match (
            self.medians(Case::Edge),
            self.medians(Case::BeforeRelay),
            self.ratio(Case::Edge, Case::BeforeRelay),
        ) {
            (Some(e), Some(b), Some(x)) => format!(
                "{} vs {} ({x:.3}x; by repetition {}; over the relay's CPU {})",
                us_opt(e.levee_cpu_us),
                us_opt(b.levee_cpu_us),
                ratios(&self.paired(Case::Edge, Case::BeforeRelay)),
                ratios(&self.paired_over_relay(Case::Edge, Case::BeforeRelay)),
            ),
            _ => "-".into(),
        };
        vec![Target {
            name,
            levee,
            verdict,
            others: Vec::new(),
        }]
    }

    pub fn render(&self, s: &mut String) {
        if self.runs.is_empty() {
            return;
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "### Edge: CPU per request with {UPSTREAMS} upstreams by host and the PROXY protocol (wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}, fast backend; relay: HAProxy in TCP mode, 1 thread)"
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| row | Host | wrk req/s | p99 | errors | levee CPU/req | of it user | relay CPU/req | levee / relay CPU | levee CPU vs levee-before, same path | the same over the relay's CPU | levee CPU vs levee 1 upstream, same path |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for case in Case::ALL {
            let Some(m) = self.medians(case) else {
                continue;
            };
            let x = |base: Case| {
                if base == case {
                    return "(baseline)".to_owned();
                }
                match self.ratio(case, base) {
                    Some(x) => format!("{x:.3}x"),
                    None => "-".into(),
                }
            };
            let vs_single = if case.kind() == Kind::LeveeBefore {
                String::new()
            } else {
                x(case.single())
            };
            let over_relay = match (case.relay(), self.over_relay_ratio(case, case.before())) {
                (true, _) if case == case.before() => "(baseline)".to_owned(),
                (true, Some(x)) => format!("{x:.3}x"),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {:.0} | {} | {} | {} | {} | {} | {over_relay} | {vs_single} |",
                case.label(),
                case.host(),
                m.rps,
                ms(m.p99),
                m.errors,
                us_opt_1(m.levee_cpu_us),
                us_opt_1(m.levee_user_us),
                us_opt_1(m.relay_cpu_us),
                m.over_relay.map_or("-".into(), |x| format!("{x:.3}")),
                x(case.before()),
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Medians of {} repetition(s), rows interleaved; \"over the relay's CPU\": the median over repetitions of (levee CPU / relay CPU) over levee-before's in the same repetition. By repetition, levee CPU/req over levee-before's through the relay:",
            self.runs.values().map(Vec::len).max().unwrap_or(0),
        );
        let _ = writeln!(s);
        for case in [
            Case::Relay,
            Case::ProxyOnly,
            Case::HostsOnly,
            Case::Edge,
            Case::EdgeExact,
        ] {
            if self.runs.contains_key(&case) {
                let _ = writeln!(
                    s,
                    "- {}, Host {}: {}; over the relay's CPU {}",
                    case.label(),
                    case.host(),
                    ratios(&self.paired(case, Case::BeforeRelay)),
                    ratios(&self.paired_over_relay(case, Case::BeforeRelay)),
                );
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{UPSTREAMS} upstreams: `site0` … `site{}.example.com` exact and `*.example.com`, each `routes = [\"/\"]`; Host `{WILDCARD_HOST}` takes the wildcard. Target: the edge row's CPU/req at most {EDGE_CPU_RATIO}x levee-before's through the relay.",
            UPSTREAMS - 2
        );
    }

    pub fn to_json(&self) -> Value {
        let d = |d: Duration| d.as_secs_f64() * 1e3;
        json!({
            "upstreams": UPSTREAMS,
            "wildcard_host": WILDCARD_HOST,
            "exact_host": EXACT_HOST,
            "target_cpu_ratio": EDGE_CPU_RATIO,
            "rows": Case::ALL.iter().filter_map(|&case| {
                let m = self.medians(case)?;
                Some(json!({
                    "case": case.name(), "label": case.label(), "levee": case.kind().name(),
                    "upstreams": if case.hosts() { UPSTREAMS } else { 1 },
                    "proxy_protocol": case.proxy_protocol(), "relay": case.relay(), "host": case.host(),
                    "runs": m.runs, "rps": m.rps, "p99_ms": d(m.p99), "errors": m.errors,
                    "levee_cpu_us": m.levee_cpu_us, "levee_user_us": m.levee_user_us,
                    "relay_cpu_us": m.relay_cpu_us, "levee_over_relay": m.over_relay,
                    "levee_cpu_vs_before": self.ratio(case, case.before()),
                    "levee_cpu_vs_before_by_rep": self.paired(case, case.before()),
                    "levee_over_relay_vs_before_by_rep": self.paired_over_relay(case, case.before()),
                    "levee_cpu_vs_single": self.ratio(case, case.single()),
                    "each": self.runs.get(&case).map(|runs| runs.iter().map(|r| json!({
                        "rep": r.rep, "rps": r.rps, "p50_ms": d(r.p50), "p99_ms": d(r.p99),
                        "errors": r.errors, "levee_cpu_us": r.levee_cpu_us,
                        "levee_user_us": r.levee_user_us, "relay_cpu_us": r.relay_cpu_us,
                    })).collect::<Vec<_>>()),
                }))
            }).collect::<Vec<_>>(),
        })
    }
}

fn us_opt_1(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}µs"))
}

/// `1.012x, 0.998x, 1.031x`, or `-`.
fn ratios(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(|x| format!("{x:.3}x"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// levee's config for `case`: the raw section's limits (no limit in the way), one
/// upstream on `backend` or [`UPSTREAMS`] by host, each on `backend`; the PROXY
/// protocol as the case says.
fn levee_config(
    case: Case,
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    backend: SocketAddr,
) -> String {
    let mut t = format!(
        "[server]\nlisten = [\"{addr}\"]\nthreads = {THREADS}\ngrace_period_ms = 200\nmax_connections = 4096\n"
    );
    if let Some(a) = admin {
        let _ = writeln!(t, "admin_listen = \"{a}\"");
    }
    if case.proxy_protocol() {
        t.push_str("proxy_protocol = true\n");
    }
    let upstream = |t: &mut String, name: &str, hosts: Option<&str>| {
        let hosts = hosts.map_or(String::new(), |h| format!("hosts = [\"{h}\"]\n"));
        let _ = write!(
            t,
            "\n[[upstream]]\nname = \"{name}\"\n{hosts}routes = [\"/\"]\nbalance = \"least_inflight\"\n\n[upstream.limits]\nmax_inflight = 100000\nqueue_depth = 1000\nqueue_timeout_ms = 1000\n\n[[upstream.backend]]\naddress = \"{backend}\"\n"
        );
    };
    if case.hosts() {
        for i in 0..UPSTREAMS - 1 {
            upstream(
                &mut t,
                &format!("site{i}"),
                Some(&format!("site{i}.example.com")),
            );
        }
        upstream(&mut t, "wildcard", Some("*.example.com"));
    } else {
        upstream(&mut t, "bench", None);
    }
    t
}

/// HAProxy as a TCP relay to `target`, one thread, with `send-proxy-v2` when asked.
fn relay_config(addr: SocketAddr, target: SocketAddr, send_proxy: bool) -> String {
    format!(
        r#"global
    nbthread 1
    maxconn 4096
    no strict-limits

defaults
    mode tcp
    maxconn 4096
    timeout connect 1s
    timeout client 60s
    timeout server 60s

frontend fe
    bind {addr}
    default_backend be

backend be
    server s {target}{}
"#,
        if send_proxy { " send-proxy-v2" } else { "" }
    )
}

/// Starts what `case` needs: levee (and the relay in front of it).
async fn start_case(
    case: Case,
    tools: &Tools,
    backend: SocketAddr,
) -> Result<(Running, Option<Running>), String> {
    let ready = ReadyCheck {
        host: case.host().to_owned(),
        proxy_protocol: case.proxy_protocol(),
        grpc: false,
    };
    let levee = Running::start_custom(
        case.kind(),
        tools,
        |addr, admin| levee_config(case, addr, admin, backend),
        &ready,
    )
    .await?;
    if !case.relay() {
        return Ok((levee, None));
    }
    let through = ReadyCheck {
        host: case.host().to_owned(),
        proxy_protocol: false,
        grpc: false,
    };
    let target = levee.addr;
    match Running::start_custom(
        Kind::Haproxy,
        tools,
        |addr, _| relay_config(addr, target, case.proxy_protocol()),
        &through,
    )
    .await
    {
        Ok(relay) => Ok((levee, Some(relay))),
        Err(e) => {
            levee.stop().await;
            Err(format!("relay: {e}"))
        }
    }
}

pub async fn section(plan: &Plan, opts: &Opts, tools: &Tools, kinds: &[Kind], res: &mut Results) {
    println!(
        "\n== edge: levee CPU per request with {UPSTREAMS} upstreams by host and the PROXY protocol, beside 1 upstream (levee and levee-before)"
    );
    let Some(wrk_bin) = &tools.wrk else {
        let msg = "edge section skipped: wrk not found (apt-get install wrk)".to_owned();
        println!("SKIP {msg}");
        res.notes.push(msg);
        return;
    };
    if tools.haproxy.is_none() {
        let msg = "edge: haproxy not found (the TCP relay): relayed rows skipped".to_owned();
        println!("SKIP {msg}");
        res.notes.push(msg);
    }
    let cases: Vec<Case> = Case::ALL
        .into_iter()
        .filter(|c| kinds.contains(&c.kind()))
        .filter(|c| !c.relay() || tools.haproxy.is_some())
        .collect();
    if cases.is_empty() {
        println!("SKIP edge: neither levee nor levee-before selected");
        return;
    }
    let fast = replica("fast", FAST_WORKERS, Duration::ZERO).await;
    let mut out = EdgeResults::default();
    for rep in 1..=opts.reps {
        for &case in &cases {
            let (levee, relay) = match start_case(case, tools, fast.addr()).await {
                Ok(started) => started,
                Err(e) => {
                    let msg = format!("edge {}: failed to start: {e}", case.label());
                    println!("SKIP {msg}");
                    res.notes.push(msg);
                    continue;
                }
            };
            let target = relay.as_ref().map_or(levee.addr, |r| r.addr);
            let url = format!("http://{target}/");
            let host = format!("Host: {}", case.host());
            let headers = [host.as_str()];
            let _ = wrk::run_with(
                wrk_bin,
                &url,
                WRK_THREADS,
                WRK_CONNECTIONS,
                WARM_UP,
                &headers,
            )
            .await;
            let served0 = levee
                .levee_counter("levee_requests_total", "upstream")
                .await;
            let (cpu0, relay0) = (
                levee.cpu_split(),
                relay.as_ref().and_then(Running::cpu_time),
            );
            let r = wrk::run_with(
                wrk_bin,
                &url,
                WRK_THREADS,
                WRK_CONNECTIONS,
                plan.wrk,
                &headers,
            )
            .await;
            let (cpu1, relay1) = (
                levee.cpu_split(),
                relay.as_ref().and_then(Running::cpu_time),
            );
            let served = crate::counter_delta(
                served0,
                levee
                    .levee_counter("levee_requests_total", "upstream")
                    .await,
            );
            let pp_errors = levee
                .levee_counter("levee_proxy_protocol_errors_total", "reason")
                .await
                .map_or(0.0, |m| m.values().sum());
            if let Some(relay) = relay {
                relay.stop().await;
            }
            levee.stop().await;
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    println!("  rep {rep} {:<13} wrk failed: {e}", case.name());
                    continue;
                }
            };
            let run = EdgeRun {
                rep,
                rps: r.rps,
                p50: r.p50,
                p99: r.p99,
                errors: r.non2xx + r.socket_errors,
                levee_cpu_us: cpu_per_request(
                    cpu0.map(|(u, s)| u + s),
                    cpu1.map(|(u, s)| u + s),
                    r.requests,
                ),
                levee_user_us: cpu_per_request(cpu0.map(|c| c.0), cpu1.map(|c| c.0), r.requests),
                relay_cpu_us: cpu_per_request(relay0, relay1, r.requests),
            };
            let upstreams: Vec<String> = served
                .iter()
                .filter(|(_, &n)| n > 0.0)
                .map(|(u, n)| format!("{u} {n:.0}"))
                .collect();
            println!(
                "  rep {rep} {:<13} wrk {:>8.0} req/s  p50 {}  p99 {}  errors {}  levee CPU/req {} (user {})  relay CPU/req {}  | served by {}{}",
                case.name(),
                run.rps,
                ms(run.p50),
                ms(run.p99),
                run.errors,
                us_opt_1(run.levee_cpu_us),
                us_opt_1(run.levee_user_us),
                us_opt_1(run.relay_cpu_us),
                if upstreams.is_empty() { "-".into() } else { upstreams.join(", ") },
                if pp_errors > 0.0 { format!("; PROXY protocol errors {pp_errors:.0}") } else { String::new() },
            );
            out.runs.entry(case).or_default().push(run);
        }
    }
    res.edge = Some(out);
}
