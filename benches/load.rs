//! Load benchmark: levee against HAProxy, nginx and a direct connection, on the same
//! machine, in one run. See `benches/README.md`.
//!
//! ```text
//! cargo bench --bench load               # full run, ~25 minutes
//! cargo bench --bench load -- --quick    # CI smoke, < 2 minutes
//! scripts/bench.sh [--quick]             # the same, after raising `ulimit -n`
//! ```
//!
//! Options (after `--`): `--quick`, `--reps N`,
//! `--only levee,levee-mt,levee-before,haproxy,nginx,hyper-floor,httparse-floor,direct`,
//! `--sections raw,overload,memory,shed,fresh,zonefail,tls,shadow,fairness,adaptive,edge,grpc,priority`,
//! `--json PATH`, `--ticks`.
//!
//! Before and after: `LEVEE_BEFORE` names an older levee binary (same CLI and config
//! format, e.g. a release build of an earlier commit in another worktree), run as the
//! extra target "levee-before" with exactly levee's config and threads:
//!
//! ```text
//! LEVEE_BEFORE=/tmp/levee-before/target/release/levee scripts/bench.sh
//! ```
//!
//! It then has its own row in every table (the shed section runs it too), and a last
//! table sets levee beside it; the targets stay judged on levee (this checkout). Without
//! `LEVEE_BEFORE` it is not in the default set, and `--only levee-before` skips it with
//! a message, as a missing haproxy is skipped.
//!
//! Runtime layout: "levee-mt" is this checkout's levee with `server.runtime =
//! "multi_thread"` (one work-stealing runtime) beside "levee" (the default, one
//! single-threaded runtime per worker with its own `SO_REUSEPORT` listener).
//!
//! Sections:
//! - raw: a fast backend; wrk's closed-loop requests/s per target, then the open-loop
//!   generator at half the slowest proxy's rate for latency (added p99 over direct);
//! - overload: 4 capacity-limited replicas; C measured first; 1x, 2x, 5x, 10x C offered
//!   open loop through each proxy: goodput, admitted and 503 latency, replica peak;
//! - memory: RSS of each proxy holding 10,000 idle keep-alive client connections;
//! - shed: 503s per second, and CPU per 503, of each proxy on one thread when every
//!   slot is held;
//! - fresh: 4 replicas in 2 zones (16 workers x 20 ms each), health checks on; each
//!   proxy started anew for every run, open-loop load from 1.2 s after its start at 1x,
//!   2x, 5x, 10x C: goodput, admitted p99 against the replicas' unloaded p99, 503 p99;
//!   and a 10x C burst of 50 ms on an idle upstream: how many were shed;
//! - zonefail: the same replicas at 1,000 req/s; zone a's two start answering 500 and
//!   failing their health check: the requests the client saw fail, per proxy, with
//!   each proxy's retries on 5xx configured;
//! - tls: levee and nginx with a TLS listener (the same certificate; nginx TLS 1.3
//!   only): HTTPS keep-alive req/s, new connections (one handshake each) per second,
//!   and RSS per idle connection plain and over TLS (see `load/tls.rs`).
//! - shadow (levee only): one replica of 16 workers x 20 ms behind levee with
//!   `limits.mode = "shadow"`, 2x its capacity offered open loop: levee must answer
//!   no 503 and count what it would have shed (`levee_would_shed_total`);
//! - fairness (levee only): the same replica behind levee with `[upstream.fairness]`
//!   on a tenant header; tenant a offers 3x its capacity and tenant b a quarter of it,
//!   together: how much of b is served and the total goodput (levee without fairness
//!   beside it for reference); then 100,000 distinct keys in 10 s (10,000 a second in
//!   `--quick`, for 2 s): how much levee's RSS grows.
//! - adaptive (levee only): limits that find themselves. One replica of 16 workers x
//!   20 ms behind `max_inflight = 64` at 2x, static then adaptive (`target_p95_ms =
//!   30`): the replica's own queue, goodput and admitted p99 in the second half; two
//!   replicas reporting their load behind three levee instances at 1.9x; and how fast
//!   the limit recovers after the replica was slow for a while.
//! - edge (levee and levee-before): levee's CPU per request with 10 upstreams routed
//!   by host and the PROXY protocol on, beside one upstream (levee and levee-before),
//!   through HAProxy as a TCP relay that sends the PROXY header (see `load/edge.rs`).
//! - grpc: gRPC unary calls per second (h2load, `grpc.health.v1.Health/Check`) through
//!   levee (`protocol = "h2"`), nginx (`grpc_pass`) and straight to the backend
//!   (`examples/grpc_backend`, tonic), with CPU per call (see `load/grpc.rs`).
//! - priority (levee and levee-before): one replica of 16 workers x 20 ms; `normal` at
//!   5x its capacity with a trickle of `critical`, then all four classes at 5x in equal
//!   shares: the share of each class served, critical's p99, goodput (see
//!   `load/priority.rs`).
//!
//! Everything runs on 127.0.0.1; every loop is bounded in count and time; proxies
//! run one at a time, with the same thread count ([`THREADS`]).

#[path = "load/adaptive.rs"]
mod adaptive;
#[path = "load/edge.rs"]
mod edge;
#[path = "load/flood.rs"]
mod flood;
#[path = "load/grpc.rs"]
mod grpc;
#[path = "load/idle.rs"]
mod idle;
#[path = "load/priority.rs"]
mod priority;
#[path = "load/probe.rs"]
mod probe;
#[path = "load/proxies.rs"]
mod proxies;
#[path = "load/report.rs"]
mod report;
#[path = "load/tls.rs"]
mod tls;
#[path = "load/wrk.rs"]
mod wrk;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use levee::demo::load::{self, LoadConfig, Report, Tick};
use levee::demo::replica::{Fault, Replica, ReplicaConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use probe::{Probe, ProbeStats};
use proxies::{HealthChecks, Kind, Running, Setup, Tools};
use report::{
    median, median_d, BurstRow, FairRow, FloodRow, FreshBase, FreshRow, MemRow, OverRow, RawRow,
    Results, ShadowRow, ShedRow, ZoneRow,
};

/// levee's allocator here too: the generator and the replicas share the machine with
/// the proxy under test, and under glibc's malloc a fifth of their CPU was the allocator.
#[global_allocator]
static ALLOCATOR: levee::alloc::MiMalloc = levee::alloc::MiMalloc;

/// Worker threads of every proxy (nginx: worker processes): one each, as the data-path
/// targets are set, so that on this 2-core machine wrk and the backend have the other
/// core and the proxies are compared at equal parallelism.
const THREADS: usize = 1;
/// Threads of the runtime the replicas run on (the generator has its own 2).
const BACKEND_THREADS: usize = 1;
/// wrk's threads and connections.
const WRK_THREADS: usize = 2;
const WRK_CONNECTIONS: usize = 64;
/// The overload replicas: 4 of them, each 8 workers x 50 ms, so C is about 620 req/s
/// and 10x C about 6,200 req/s: what one open-loop generator sustains on 2 shared
/// cores next to the proxy (with 20 ms, 10x C would be 16,000 req/s and the bench
/// would measure its own generator).
const REPLICAS: usize = 4;
const WORKERS: usize = 8;
const SERVICE_TIME: Duration = Duration::from_millis(50);
/// Offered load in multiples of the measured capacity C.
const FACTORS: [f64; 4] = [1.0, 2.0, 5.0, 10.0];
/// levee's queue under overload: small, and short (half a service time); HAProxy
/// gets the same `timeout queue`.
const QUEUE_DEPTH: u32 = 8;
const QUEUE_TIMEOUT: Duration = Duration::from_millis(10);
/// Workers of the "fast" backend: more than any concurrency the bench creates.
const FAST_WORKERS: usize = 4096;
/// Idle keep-alive connections held in the memory section.
const IDLE_CONNECTIONS: usize = 10_000;
/// Slots of the shed section's backend, each held by one long request.
const SHED_SLOTS: usize = 4;
const HOLD: Duration = Duration::from_secs(20);
/// Highest open-loop rate used for the half-load latency: above it the generator's
/// own queueing (on this 2-core machine) would dominate what it measures.
const GENERATOR_MAX_RATE: f64 = 5000.0;
/// Open-loop request deadline (from the scheduled send time).
const LOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// The fresh and zonefail sections' replicas (issue 10's setup): 2 zones x 2, named
/// by zone. levee runs in zone a (the first backend's), so it prefers a1 and a2.
const ZONE_REPLICAS: [(&str, &str); 4] = [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")];
/// Each 16 workers x 20 ms: 800 req/s a replica, 3,200 req/s in all (nominal).
const ZONE_WORKERS: usize = 16;
const ZONE_SERVICE_TIME: Duration = Duration::from_millis(20);
/// levee `max_inflight` is [`ZONE_WORKERS`]; the queue holds 5 service times of the
/// whole pool (320 = 5 x 64) and a request waits at most 5 service times (HAProxy
/// gets the same `timeout queue`).
const ZONE_QUEUE_DEPTH: u32 = 320;
const ZONE_QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
/// Active checks of levee and HAProxy (nginx has none): every 500 ms, 2 in a row to
/// go down or up.
const ZONE_CHECKS: HealthChecks = HealthChecks {
    interval: Duration::from_millis(500),
    timeout: Duration::from_millis(250),
    rise: 2,
    fall: 2,
};
/// Fresh runs: the load starts this long after the proxy's process is spawned.
const FRESH_DELAY: Duration = Duration::from_millis(1200);
/// The replicas' unloaded latency is measured at this rate, directly on one replica:
/// a quarter of its nominal rate, so nothing waits for a worker.
const UNLOADED_RATE: f64 = 200.0;
/// The burst on an idle upstream: 10x C for 50 ms.
const BURST_FACTOR: f64 = 10.0;
const BURST: Duration = Duration::from_millis(50);
/// Zonefail: steady load, well inside what zone b alone serves (1,600 req/s).
const ZONEFAIL_RATE: f64 = 1000.0;
/// How often the zonefail section looks at zone a's counters, and how long past the
/// end of the load (for the last answers).
const WATCH_EVERY: Duration = Duration::from_millis(10);
const WATCH_SLACK: Duration = Duration::from_millis(250);
/// The shadow section's replica (issue 12's measured setup): one of 16 workers x 20 ms,
/// about 800 req/s; levee's `max_inflight` is its workers, its queue 5 service times
/// of them (80) for at most 5 service times.
const SOLO_WORKERS: usize = 16;
const SOLO_SERVICE_TIME: Duration = Duration::from_millis(20);
const SOLO_QUEUE_DEPTH: u32 = 80;
const SOLO_QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
/// Shadow mode is measured at this multiple of the replica's capacity.
const SHADOW_FACTOR: f64 = 2.0;
/// The fairness section's tenants, in multiples of the replica's capacity (issue 12's
/// measured problem: 2,400 and 200 req/s on 800).
const HEAVY_FACTOR: f64 = 3.0;
const LIGHT_FACTOR: f64 = 0.25;
/// The tenant header levee keys fairness on.
const TENANT_HEADER: &str = "x-tenant";
/// The key flood: distinct keys per second, and the connections that send them.
const FLOOD_RATE: f64 = 10_000.0;
const FLOOD_CONNECTIONS: u64 = 256;
/// The sections of a run without `--sections`, in the order they run.
const SECTIONS: [&str; 13] = [
    "raw", "overload", "memory", "shed", "fresh", "zonefail", "tls", "shadow", "fairness",
    "adaptive", "edge", "grpc", "priority",
];

#[derive(Debug, Clone)]
struct Opts {
    quick: bool,
    reps: usize,
    kinds: Vec<Kind>,
    sections: Vec<String>,
    json: Option<PathBuf>,
    /// Print the generator's per-second ticks (with levee's level) in overload steps.
    ticks: bool,
}

impl Opts {
    fn parse() -> Result<Opts, String> {
        let mut opts = Opts {
            quick: false,
            reps: 0,
            kinds: Kind::defaults(),
            sections: SECTIONS.map(String::from).to_vec(),
            json: None,
            ticks: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--quick" => opts.quick = true,
                "--ticks" => opts.ticks = true,
                "--reps" => {
                    opts.reps = value("--reps")?
                        .parse()
                        .map_err(|e| format!("--reps: {e}"))?
                }
                "--only" => {
                    opts.kinds = value("--only")?
                        .split(',')
                        .map(|k| Kind::parse(k.trim()).ok_or(format!("unknown target {k:?}")))
                        .collect::<Result<_, _>>()?
                }
                "--sections" | "--section" => {
                    opts.sections = value("--sections")?
                        .split(',')
                        .map(|s| s.trim().to_owned())
                        .collect()
                }
                "--json" => opts.json = Some(PathBuf::from(value("--json")?)),
                "-h" | "--help" => {
                    println!("{}", USAGE);
                    std::process::exit(0);
                }
                // `cargo bench` passes `--bench`; filters and other flags do not apply.
                "--bench" => {}
                other => eprintln!("load bench: ignoring argument {other:?}"),
            }
        }
        if opts.reps == 0 {
            opts.reps = if opts.quick { 1 } else { 3 };
        }
        Ok(opts)
    }

    fn has(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

const USAGE: &str = "[LEVEE_BEFORE=OLDER_LEVEE_BINARY] cargo bench --bench load -- [--quick] [--reps N] [--only levee,levee-mt,levee-before,haproxy,nginx,hyper-floor,httparse-floor,direct] [--sections raw,overload,memory,shed,fresh,zonefail,tls,shadow,fairness,adaptive,edge,grpc,priority] [--json PATH] [--ticks]";

/// How long each measurement lasts.
#[derive(Debug, Clone, Copy)]
struct Plan {
    wrk: Duration,
    half_load: Duration,
    capacity_probe: Duration,
    step: Duration,
    idle: usize,
    shed: Duration,
    /// One fresh run's load (after [`FRESH_DELAY`]).
    fresh_step: Duration,
    /// The replicas' unloaded latency measurement.
    unloaded: Duration,
    /// One zonefail run, and when in it zone a fails.
    zonefail: Duration,
    zonefail_at: Duration,
    /// Idle connections held in the tls section (plain, then TLS).
    tls_idle: usize,
    /// One shadow-mode run's load.
    shadow: Duration,
    /// One run of the two tenants, and the key flood.
    tenants: Duration,
    flood: Duration,
    /// One measured h2load run of the grpc section, and the warm-up run before it.
    grpc: Duration,
    grpc_warm: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                wrk: Duration::from_secs(1),
                half_load: Duration::from_secs(1),
                capacity_probe: Duration::from_secs(1),
                step: Duration::from_secs(1),
                idle: IDLE_CONNECTIONS,
                shed: Duration::from_secs(1),
                fresh_step: Duration::from_millis(500),
                unloaded: Duration::from_secs(1),
                zonefail: Duration::from_millis(2500),
                zonefail_at: Duration::from_secs(1),
                tls_idle: 2000,
                shadow: Duration::from_secs(1),
                tenants: Duration::from_secs(2),
                flood: Duration::from_secs(2),
                grpc: Duration::from_secs(2),
                grpc_warm: Duration::from_secs(1),
            }
        } else {
            Plan {
                wrk: Duration::from_secs(5),
                half_load: Duration::from_secs(3),
                capacity_probe: Duration::from_secs(3),
                step: Duration::from_secs(4),
                idle: IDLE_CONNECTIONS,
                shed: Duration::from_secs(5),
                fresh_step: Duration::from_secs(15),
                unloaded: Duration::from_secs(3),
                zonefail: Duration::from_secs(15),
                zonefail_at: Duration::from_secs(5),
                tls_idle: 5000,
                shadow: Duration::from_secs(3),
                tenants: Duration::from_secs(10),
                flood: Duration::from_secs(10),
                grpc: Duration::from_secs(10),
                grpc_warm: Duration::from_secs(1),
            }
        }
    }
}

fn main() {
    let opts = match Opts::parse() {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("load bench: {e}\nusage: {USAGE}");
            std::process::exit(2);
        }
    };
    // The generator's and the replicas' sockets share this process's descriptor
    // table. Sized once here, before any thread starts, so that it never grows under
    // load: in a process with threads each growth waits for an RCU grace period, and
    // the first proxy measured would pay for the generator's growth.
    let _ = levee::fds::presize_table(0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("load")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let backends = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(BACKEND_THREADS)
        .thread_name("replica")
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _ = BACKEND_RUNTIME.set(backends.handle().clone());
    // Ctrl-C drops the run, and with it every running proxy (their `Drop` kills them).
    let results = rt.block_on(async {
        tokio::select! {
            results = run(opts.clone()) => Some(results),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let Some(results) = results else {
        eprintln!("load bench: interrupted; proxies stopped");
        rt.shutdown_timeout(Duration::from_secs(1));
        backends.shutdown_timeout(Duration::from_secs(1));
        std::process::exit(130);
    };
    let text = results.render();
    println!("\n{text}");
    if let Some(path) = &opts.json {
        let json = serde_json::to_string_pretty(&results.to_json()).unwrap_or_default();
        match std::fs::write(path, json) {
            Ok(()) => println!("results written to {}", path.display()),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        }
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    backends.shutdown_timeout(Duration::from_secs(1));
}

async fn run(opts: Opts) -> Results {
    let start = Instant::now();
    let plan = Plan::new(opts.quick);
    let tools = Tools::find();
    let mut res = Results {
        command: command_line(&opts, &tools),
        quick: opts.quick,
        reps: opts.reps,
        machine: machine(&tools),
        idle_target: plan.idle,
        ..Results::default()
    };
    println!(
        "levee load bench: {} mode, {} rep(s); {} CPUs ({}); proxies run one at a time with {THREADS} threads",
        if opts.quick { "quick" } else { "full" },
        opts.reps,
        res.machine.cpus,
        res.machine.cpu_model
    );
    let mut kinds = Vec::new();
    for &kind in &opts.kinds {
        match tools.binary(kind) {
            Ok(_) => kinds.push(kind),
            Err(why) => {
                println!("SKIP {why}");
                res.notes.push(why);
            }
        }
    }
    if res.machine.cpus <= 2 {
        res.notes.push(format!(
            "{} CPUs shared by the load generator (or wrk), the backends and the proxy: absolute numbers are low and noisy; compare within a run",
            res.machine.cpus
        ));
    }
    if opts.has("raw") {
        raw_section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("overload") {
        overload_section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("memory") {
        memory_section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("shed") {
        shed_section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("fresh") {
        fresh_section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("zonefail") {
        zonefail_section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("tls") {
        tls::section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("shadow") {
        shadow_section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("fairness") {
        fairness_section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("adaptive") {
        adaptive::section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("edge") {
        edge::section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("grpc") {
        grpc::section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    if opts.has("priority") {
        priority::section(&plan, &opts, &tools, &kinds, &mut res).await;
    }
    res.elapsed = start.elapsed();
    res
}

fn command_line(opts: &Opts, tools: &Tools) -> String {
    let mut cmd = match &tools.levee_before_var {
        Some(v) if opts.kinds.contains(&Kind::LeveeBefore) => format!(
            "{}={} cargo bench --bench load",
            proxies::LEVEE_BEFORE,
            std::path::Path::new(v).display()
        ),
        _ => "cargo bench --bench load".to_owned(),
    };
    let mut extra = Vec::new();
    if opts.quick {
        extra.push("--quick".to_owned());
    }
    let default_reps = if opts.quick { 1 } else { 3 };
    if opts.reps != default_reps {
        extra.push(format!("--reps {}", opts.reps));
    }
    if opts.kinds != Kind::defaults() {
        let names: Vec<_> = opts.kinds.iter().map(|k| k.name()).collect();
        extra.push(format!("--only {}", names.join(",")));
    }
    if opts.sections != SECTIONS {
        extra.push(format!("--sections {}", opts.sections.join(",")));
    }
    if !extra.is_empty() {
        cmd.push_str(" -- ");
        cmd.push_str(&extra.join(" "));
    }
    cmd
}

fn machine(tools: &Tools) -> report::Machine {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu_model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let loadavg = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let output = |cmd: &std::path::Path, arg: &str| {
        std::process::Command::new(cmd)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                text.lines().next().unwrap_or_default().trim().to_owned()
            })
            .unwrap_or_default()
    };
    let mut versions = Vec::new();
    for (name, path, arg) in [
        ("haproxy", &tools.haproxy, "-v"),
        ("nginx", &tools.nginx, "-v"),
        ("wrk", &tools.wrk, "-v"),
        ("h2load", &tools.h2load, "--version"),
    ] {
        if let Some(p) = path {
            versions.push((name.to_owned(), output(p, arg)));
        }
    }
    if let Some(p) = &tools.levee_before {
        // The checkout the binary sits in (`…/target/release/levee`), if it is one: its
        // commit now, which is the build's unless it was rebuilt from elsewhere.
        let checkout = p
            .ancestors()
            .skip(1)
            .find(|d| d.join(".git").exists())
            .map(git_describe)
            .filter(|c| !c.is_empty())
            .map_or(String::new(), |c| format!(", its checkout at {c}"));
        versions.push((
            "levee-before".to_owned(),
            format!("{} ({}{checkout})", output(p, "--version"), p.display()),
        ));
    }
    let commit = git_describe(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    report::Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
        loadavg,
        nofile: proxies::nofile_limit().map_or("?".into(), |n| n.to_string()),
        versions,
        commit,
    }
}

/// `git describe --always --dirty` of the checkout at `dir`; empty when git fails.
fn git_describe(dir: &std::path::Path) -> String {
    std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The runtime the replicas run on: their own threads, apart from the load generator's,
/// so neither delays the other's tasks (on one runtime, a generator talking to an
/// in-process replica queues behind it and reports latency neither side caused).
static BACKEND_RUNTIME: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();

async fn replica(name: &str, workers: usize, service_time: Duration) -> Replica {
    replica_in(name, "a", workers, service_time).await
}

async fn replica_in(name: &str, zone: &str, workers: usize, service_time: Duration) -> Replica {
    let cfg = ReplicaConfig {
        name: name.into(),
        zone: zone.into(),
        workers,
        service_time,
    };
    let handle = BACKEND_RUNTIME.get().expect("backend runtime").clone();
    handle
        .spawn(Replica::start(cfg))
        .await
        .expect("replica start task")
        .expect("start a replica on 127.0.0.1:0")
}

fn open_loop(target: SocketAddr, path: &str, rate: f64, duration: Duration) -> LoadConfig {
    LoadConfig {
        target,
        path: path.into(),
        rate,
        duration,
        connections: 4096,
        timeout: LOAD_TIMEOUT,
        headers: Vec::new(),
    }
}

/// A few hundred requests so connections, pools and caches exist before measuring.
async fn warm_up(addr: SocketAddr) {
    let cfg = open_loop(addr, "/warm", 1000.0, Duration::from_millis(300));
    load::run(cfg, |_| {}).await;
}

async fn start(kind: Kind, setup: &Setup, tools: &Tools, res: &mut Results) -> Option<Running> {
    match Running::start(kind, setup, tools).await {
        Ok(running) => Some(running),
        Err(e) => {
            let msg = format!("{} failed to start: {e}", kind.name());
            println!("SKIP {msg}");
            res.notes.push(msg);
            None
        }
    }
}

fn fast_setup(backend: SocketAddr, threads: usize, max_clients: u32) -> Setup {
    Setup {
        backends: vec![backend],
        threads,
        max_conns: None,
        queue_depth: 1000,
        queue_timeout: Duration::from_secs(1),
        max_clients,
        zones: Vec::new(),
        health: None,
        retry_5xx: false,
        early_levels: false,
        tls: None,
        levee_extra: String::new(),
        levee_upstream: String::new(),
        grpc: false,
    }
}

async fn raw_section(plan: &Plan, opts: &Opts, tools: &Tools, kinds: &[Kind], res: &mut Results) {
    println!("\n== raw cost: fast backend, keep-alive, small responses");
    let fast = replica("fast", FAST_WORKERS, Duration::ZERO).await;
    let setup = fast_setup(fast.addr(), THREADS, 4096);
    let mut wrk_runs: BTreeMap<Kind, Vec<WrkRun>> = BTreeMap::new();
    let mut open_runs: BTreeMap<Kind, Vec<(Report, ProbeStats, Option<f64>)>> = BTreeMap::new();
    match &tools.wrk {
        None => {
            let msg = "wrk not found (apt-get install wrk): no closed-loop requests/s".to_owned();
            println!("SKIP {msg}");
            res.notes.push(msg);
        }
        Some(wrk_bin) => {
            for rep in 1..=opts.reps {
                for &kind in kinds {
                    let Some(p) = start(kind, &setup, tools, res).await else {
                        continue;
                    };
                    warm_up(p.addr).await;
                    let url = format!("http://{}/", p.addr);
                    let cpu0 = p.cpu_split();
                    let r = wrk::run(wrk_bin, &url, WRK_THREADS, WRK_CONNECTIONS, plan.wrk).await;
                    let done = r.as_ref().map_or(0, |r| r.requests);
                    let (cpu, cpu_user) = cpu_and_user_per_request(cpu0, p.cpu_split(), done);
                    p.stop().await;
                    match r {
                        Ok(r) => {
                            println!(
                                "  rep {rep} {:<12} wrk {:>8.0} req/s  p50 {}  p99 {}  errors {}  CPU/req {} (user {})",
                                kind.name(),
                                r.rps,
                                report::ms(r.p50),
                                report::ms(r.p99),
                                r.non2xx + r.socket_errors,
                                report::us_opt(cpu),
                                report::us_opt(cpu_user)
                            );
                            wrk_runs.entry(kind).or_default().push((r, cpu, cpu_user));
                        }
                        Err(e) => println!("  rep {rep} {:<12} wrk failed: {e}", kind.name()),
                    }
                }
            }
        }
    }
    let medians: BTreeMap<Kind, f64> = wrk_runs
        .iter()
        .map(|(k, runs)| (*k, median(runs.iter().map(|(r, _, _)| r.rps).collect())))
        .collect();
    let slowest = medians
        .iter()
        .filter(|(k, _)| k.is_proxy())
        .map(|(_, &rps)| rps)
        .fold(f64::INFINITY, f64::min);
    let rate = if slowest.is_finite() {
        (0.5 * slowest).max(100.0)
    } else {
        res.notes.push(format!(
            "open-loop half load at a fixed {GENERATOR_MAX_RATE:.0} req/s (no wrk rates)"
        ));
        GENERATOR_MAX_RATE
    };
    let rate = if rate > GENERATOR_MAX_RATE {
        res.notes.push(format!(
            "half load capped at {GENERATOR_MAX_RATE:.0} req/s (half the slowest proxy is {rate:.0}): the generator's own limit on this machine"
        ));
        GENERATOR_MAX_RATE
    } else {
        rate
    };
    res.half_rate = Some(rate);
    println!(
        "  open loop at {rate:.0} req/s (half the slowest proxy's wrk rate), plus a 50 req/s probe"
    );
    for rep in 1..=opts.reps {
        for &kind in kinds {
            let Some(p) = start(kind, &setup, tools, res).await else {
                continue;
            };
            warm_up(p.addr).await;
            let probe = Probe::start(p.addr, "/", plan.half_load + Duration::from_secs(1));
            let cpu0 = p.cpu_time();
            let r = load::run(open_loop(p.addr, "/", rate, plan.half_load), |_| {}).await;
            let probed = probe.finish();
            let cpu = cpu_per_request(cpu0, p.cpu_time(), r.ok + probed.ok.len() as u64);
            p.stop().await;
            let q = |v: &[Duration], x| ProbeStats::quantile(v, x).unwrap_or_default();
            println!(
                "  rep {rep} {:<12} open loop p50 {}  p99 {}  2xx {}  other {}  CPU/req {}  | probe p50 {} p99 {} {}",
                kind.name(),
                report::ms(r.ok_p50),
                report::ms(r.ok_p99),
                r.ok,
                r.other,
                report::us_opt(cpu),
                report::ms(q(&probed.ok, 0.5)),
                report::ms(q(&probed.ok, 0.99)),
                r.errors_sample.join("; ")
            );
            open_runs.entry(kind).or_default().push((r, probed, cpu));
        }
    }
    for &kind in kinds {
        let w = wrk_runs.get(&kind).map(Vec::as_slice).unwrap_or_default();
        let o = open_runs.get(&kind).map(Vec::as_slice).unwrap_or_default();
        if w.is_empty() && o.is_empty() {
            continue;
        }
        let opt_median = |v: Vec<f64>| (!v.is_empty()).then(|| median(v));
        res.raw.push(RawRow {
            kind,
            runs: w.len(),
            rps: median(w.iter().map(|(r, _, _)| r.rps).collect()),
            wrk_p50: median_d(w.iter().map(|(r, _, _)| r.p50)),
            wrk_p99: median_d(w.iter().map(|(r, _, _)| r.p99)),
            wrk_errors: median(
                w.iter()
                    .map(|(r, _, _)| (r.non2xx + r.socket_errors) as f64)
                    .collect(),
            ),
            wrk_cpu_us: opt_median(w.iter().filter_map(|(_, c, _)| *c).collect()),
            wrk_user_us: opt_median(w.iter().filter_map(|(_, _, u)| *u).collect()),
            open_runs: o.len(),
            open_p50: median_d(o.iter().map(|(r, _, _)| r.ok_p50)),
            open_p99: median_d(o.iter().map(|(r, _, _)| r.ok_p99)),
            open_failed: median(
                o.iter()
                    .map(|(r, _, _)| (r.other + r.shed) as f64)
                    .collect(),
            ),
            open_cpu_us: opt_median(o.iter().filter_map(|(_, _, c)| *c).collect()),
            // Paired by repetition: each repetition runs every target back to back, so
            // slow drifts in the machine's other load cancel out of the difference.
            added_p99: (kind != Kind::Direct)
                .then(|| {
                    let direct = open_runs.get(&Kind::Direct)?;
                    let diffs: Vec<f64> = o
                        .iter()
                        .zip(direct)
                        .map(|((p, _, _), (d, _, _))| {
                            p.ok_p99.as_secs_f64() - d.ok_p99.as_secs_f64()
                        })
                        .collect();
                    opt_median(diffs)
                })
                .flatten(),
            probe_p50: median_d(
                o.iter()
                    .filter_map(|(_, p, _)| ProbeStats::quantile(&p.ok, 0.5)),
            ),
            probe_p99: median_d(
                o.iter()
                    .filter_map(|(_, p, _)| ProbeStats::quantile(&p.ok, 0.99)),
            ),
        });
    }
}

/// `queue_timeout 120, level_no_queue 2300` (counts divided by `runs`).
fn fmt_reasons(reasons: &BTreeMap<String, f64>, runs: f64) -> String {
    reasons
        .iter()
        .map(|(k, v)| format!("{k} {:.0}", v / runs))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One wrk run of the raw section, with the proxy's CPU per request (µs): all of it,
/// and its user-space part.
type WrkRun = (wrk::WrkResult, Option<f64>, Option<f64>);

/// CPU microseconds per request between two [`Running::cpu_time`] readings.
fn cpu_per_request(
    before: Option<Duration>,
    after: Option<Duration>,
    requests: u64,
) -> Option<f64> {
    let (before, after) = (before?, after?);
    (requests > 0).then(|| after.saturating_sub(before).as_secs_f64() * 1e6 / requests as f64)
}

/// [`cpu_per_request`] from two [`proxies::Running::cpu_split`] readings: all of it,
/// and its user-space part.
fn cpu_and_user_per_request(
    before: Option<(Duration, Duration)>,
    after: Option<(Duration, Duration)>,
    requests: u64,
) -> (Option<f64>, Option<f64>) {
    let total = |c: Option<(Duration, Duration)>| c.map(|(u, s)| u + s);
    let user = |c: Option<(Duration, Duration)>| c.map(|(u, _)| u);
    (
        cpu_per_request(total(before), total(after), requests),
        cpu_per_request(user(before), user(after), requests),
    )
}

/// One open-loop step of one proxy (overload and fresh sections).
struct StepRun {
    report: Report,
    /// The generator's seconds (outcomes counted in the second they completed).
    ticks: Vec<Tick>,
    /// Highest in-flight count any replica saw during the step.
    peak: usize,
    probe: ProbeStats,
    /// CPU the proxy used, in cores.
    cores: Option<f64>,
}

/// One memory measurement of one proxy.
struct MemRun {
    base_kib: f64,
    idle_kib: f64,
    conns: f64,
    failed: f64,
    closed: f64,
}

/// Waits (at most 5 s) until no replica has a request in flight, then resets peaks.
async fn settle(replicas: &[Replica]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while replicas.iter().any(|r| r.stats().inflight > 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for r in replicas {
        r.reset_peak();
    }
}

async fn overload_section(
    plan: &Plan,
    opts: &Opts,
    tools: &Tools,
    kinds: &[Kind],
    res: &mut Results,
) {
    println!(
        "\n== overload: {REPLICAS} replicas x {WORKERS} workers x {} ms",
        SERVICE_TIME.as_millis()
    );
    let mut replicas = Vec::new();
    for i in 0..REPLICAS {
        replicas.push(replica(&format!("r{i}"), WORKERS, SERVICE_TIME).await);
    }
    // Capacity: slots / real service time, the service time being the median latency
    // of one replica at half its nominal rate (timers and sockets add a little).
    let nominal_one = WORKERS as f64 / SERVICE_TIME.as_secs_f64();
    let probe = load::run(
        open_loop(
            replicas[0].addr(),
            "/work",
            0.5 * nominal_one,
            plan.capacity_probe,
        ),
        |_| {},
    )
    .await;
    let slots = REPLICAS * WORKERS;
    let p50 = if probe.ok_p50.is_zero() {
        SERVICE_TIME
    } else {
        probe.ok_p50
    };
    let cap = slots as f64 / p50.as_secs_f64();
    res.capacity = Some((slots, p50, cap));
    res.step_secs = plan.step.as_secs();
    res.overload_shape = format!(
        "{REPLICAS} replicas x {WORKERS} workers x {} ms",
        SERVICE_TIME.as_millis()
    );
    println!(
        "  C = {slots} slots / {} = {cap:.0} req/s (nominal {:.0})",
        report::ms(p50),
        nominal_one * REPLICAS as f64
    );
    let setup = Setup {
        backends: replicas.iter().map(Replica::addr).collect(),
        threads: THREADS,
        max_conns: Some(WORKERS as u32),
        queue_depth: QUEUE_DEPTH,
        queue_timeout: QUEUE_TIMEOUT,
        max_clients: 8192,
        zones: Vec::new(),
        health: None,
        retry_5xx: false,
        early_levels: true,
        tls: None,
        levee_extra: String::new(),
        levee_upstream: String::new(),
        grpc: false,
    };
    let fast = replica("fast", FAST_WORKERS, Duration::ZERO).await;
    let mut runs: BTreeMap<(Kind, usize), Vec<StepRun>> = BTreeMap::new();
    let mut floor = Vec::new();
    let mut shed_reasons: BTreeMap<(Kind, usize), BTreeMap<String, f64>> = BTreeMap::new();
    for rep in 1..=opts.reps {
        for &kind in kinds.iter().filter(|k| k.is_proxy()) {
            let Some(p) = start(kind, &setup, tools, res).await else {
                continue;
            };
            let warm = open_loop(p.addr, "/work", 0.25 * cap, Duration::from_millis(400));
            load::run(warm, |_| {}).await;
            for (fi, factor) in FACTORS.iter().enumerate() {
                settle(&replicas).await;
                let rate = factor * cap;
                let (run, reasons) = measure_step(&p, &replicas, rate, plan.step, opts.ticks).await;
                print_step(
                    &format!("rep {rep}"),
                    kind,
                    (*factor, rate),
                    plan.step,
                    &run,
                    &reasons,
                );
                for (k, v) in reasons {
                    *shed_reasons
                        .entry((kind, fi))
                        .or_default()
                        .entry(k)
                        .or_default() += v;
                }
                runs.entry((kind, fi)).or_default().push(run);
            }
            p.stop().await;
        }
        // The generator's own floor at the highest rate: no proxy, a backend that
        // answers at once.
        let rate = FACTORS[FACTORS.len() - 1] * cap;
        let r = load::run(open_loop(fast.addr(), "/", rate, plan.step), |_| {}).await;
        println!(
            "  rep {rep} floor        direct fast backend at {rate:.0}/s: p50 {} p99 {}",
            report::ms(r.ok_p50),
            report::ms(r.ok_p99)
        );
        floor.push(r);
    }
    if !floor.is_empty() {
        res.floor = Some((
            FACTORS[FACTORS.len() - 1] * cap,
            median_d(floor.iter().map(|r| r.ok_p50)),
            median_d(floor.iter().map(|r| r.ok_p99)),
        ));
    }
    for ((kind, fi), v) in runs {
        let reasons = shed_reasons.get(&(kind, fi));
        res.overload
            .push(over_row(kind, FACTORS[fi], cap, plan.step, &v, reasons));
    }
}

/// One open-loop step of `GET /work` through `p` at `rate` for `duration`, with the
/// probe beside it: what both saw, the replicas' peak in flight (reset by [`settle`]
/// before), the proxy's CPU, and levee's 503s by reason over the step (empty for other
/// proxies).
async fn measure_step(
    p: &Running,
    replicas: &[Replica],
    rate: f64,
    duration: Duration,
    ticks: bool,
) -> (StepRun, BTreeMap<String, f64>) {
    let probe = Probe::start(p.addr, "/work", duration);
    let sheds0 = p.levee_sheds().await;
    let cpu0 = p.cpu_time();
    let mut seconds = Vec::new();
    let report = load::run(open_loop(p.addr, "/work", rate, duration), |t| {
        if ticks {
            println!("      {}", load::format_tick(t));
        }
        seconds.push(t.clone());
    })
    .await;
    let probed = probe.finish();
    let cores = p
        .cpu_time()
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a).as_secs_f64() / duration.as_secs_f64());
    let peak = replicas
        .iter()
        .map(|r| r.stats().peak_inflight)
        .max()
        .unwrap_or(0);
    let reasons = counter_delta(sheds0, p.levee_sheds().await);
    let run = StepRun {
        report,
        ticks: seconds,
        peak,
        probe: probed,
        cores,
    };
    (run, reasons)
}

/// What a counter gained between two readings of [`Running::levee_counter`], by label
/// value; only the values that grew. Empty when either reading is missing.
fn counter_delta(
    before: Option<BTreeMap<String, f64>>,
    after: Option<BTreeMap<String, f64>>,
) -> BTreeMap<String, f64> {
    gained(before, after).unwrap_or_default()
}

/// [`counter_delta`], `None` when either reading is missing.
fn gained(
    before: Option<BTreeMap<String, f64>>,
    after: Option<BTreeMap<String, f64>>,
) -> Option<BTreeMap<String, f64>> {
    let (before, after) = (before?, after?);
    Some(
        after
            .into_iter()
            .map(|(k, v)| {
                let d = v - before.get(&k).copied().unwrap_or(0.0);
                (k, d)
            })
            .filter(|(_, d)| *d > 0.0)
            .collect(),
    )
}

/// The line printed after each step (and levee's sheds by reason under it).
fn print_step(
    label: &str,
    kind: Kind,
    (factor, rate): (f64, f64),
    duration: Duration,
    run: &StepRun,
    reasons: &BTreeMap<String, f64>,
) {
    let r = &run.report;
    let secs = duration.as_secs_f64();
    println!(
        "  {label} {:<12} {factor:>4.0}x {rate:>6.0}/s  2xx {:>6.0}/s p99 {:<8} 503 {:>6.0}/s p99 {:<8} probe 503 p99 {:<8} other {:<5} peak {} CPU {:.2} {}",
        kind.name(),
        r.ok as f64 / secs,
        report::ms(r.ok_p99),
        r.shed as f64 / secs,
        report::ms(r.shed_p99),
        ProbeStats::quantile(&run.probe.shed, 0.99).map_or("-".into(), report::ms),
        r.other,
        run.peak,
        run.cores.unwrap_or(0.0),
        r.errors_sample.join("; ")
    );
    if !reasons.is_empty() {
        println!("      levee sheds by reason: {}", fmt_reasons(reasons, 1.0));
    }
}

/// The medians of one proxy's runs at one load factor.
fn over_row(
    kind: Kind,
    factor: f64,
    cap: f64,
    step: Duration,
    v: &[StepRun],
    reasons: Option<&BTreeMap<String, f64>>,
) -> OverRow {
    let secs = step.as_secs_f64();
    let f = |g: &dyn Fn(&Report) -> f64| median(v.iter().map(|s| g(&s.report)).collect());
    let shed_probes: Vec<Duration> = v
        .iter()
        .filter_map(|s| ProbeStats::quantile(&s.probe.shed, 0.99))
        .collect();
    OverRow {
        kind,
        factor,
        runs: v.len(),
        offered: factor * cap,
        goodput: f(&|r| r.ok as f64 / secs),
        ok_p50: median_d(v.iter().map(|s| s.report.ok_p50)),
        ok_p99: median_d(v.iter().map(|s| s.report.ok_p99)),
        shed: f(&|r| r.shed as f64),
        shed_rate: f(&|r| r.shed as f64 / secs),
        shed_p99: median_d(v.iter().map(|s| s.report.shed_p99)),
        probe_shed_p99: (!shed_probes.is_empty()).then(|| median_d(shed_probes)),
        other: f(&|r| r.other as f64),
        peak: v.iter().map(|s| s.peak).max().unwrap_or(0),
        shed_reasons: reasons.map_or(String::new(), |r| fmt_reasons(r, v.len() as f64)),
        cpu_cores: {
            let c: Vec<f64> = v.iter().filter_map(|s| s.cores).collect();
            (!c.is_empty()).then(|| median(c))
        },
    }
}

async fn memory_section(
    plan: &Plan,
    opts: &Opts,
    tools: &Tools,
    kinds: &[Kind],
    res: &mut Results,
) {
    println!(
        "\n== memory: {} idle keep-alive client connections",
        report::thousands(plan.idle)
    );
    let need = plan.idle as u64 + 1024;
    match proxies::nofile_limit() {
        Some(limit) if limit >= need => {}
        limit => {
            let msg = format!(
                "memory section skipped: open files limit {} < {need}; run `ulimit -n {need}` first (scripts/bench.sh does)",
                limit.map_or("?".into(), |l| l.to_string())
            );
            println!("SKIP {msg}");
            res.notes.push(msg);
            return;
        }
    }
    let fast = replica("fast", FAST_WORKERS, Duration::ZERO).await;
    let setup = fast_setup(fast.addr(), THREADS, plan.idle as u32 + 1000);
    let mut runs: BTreeMap<Kind, Vec<MemRun>> = BTreeMap::new();
    for rep in 1..=opts.reps {
        for &kind in kinds.iter().filter(|k| k.is_proxy()) {
            let Some(p) = start(kind, &setup, tools, res).await else {
                continue;
            };
            warm_up(p.addr).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let base = p.rss_kib().unwrap_or(0) as f64;
            let conns = idle::open(p.addr, plan.idle, 256, Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let with = p.rss_kib().unwrap_or(0) as f64;
            let closed = conns.closed();
            println!(
                "  rep {rep} {:<12} RSS {:.1} MiB -> {:.1} MiB with {} conns (opened in {:.1} s, {} failed{}, {closed} closed by the proxy)",
                kind.name(),
                base / 1024.0,
                with / 1024.0,
                conns.streams.len(),
                conns.took.as_secs_f64(),
                conns.failed,
                conns
                    .first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(": {e}")),
            );
            runs.entry(kind).or_default().push(MemRun {
                base_kib: base,
                idle_kib: with,
                conns: conns.streams.len() as f64,
                failed: conns.failed as f64,
                closed: closed as f64,
            });
            drop(conns);
            p.stop().await;
        }
    }
    for (kind, v) in runs {
        let f = |g: fn(&MemRun) -> f64| median(v.iter().map(g).collect());
        res.memory.push(MemRow {
            kind,
            runs: v.len(),
            base_kib: f(|r| r.base_kib),
            idle_kib: f(|r| r.idle_kib),
            conns: f(|r| r.conns),
            failed: f(|r| r.failed),
            closed: f(|r| r.closed),
        });
    }
}

/// Holds `n` slots of levee at `addr`: `n` requests that the backend answers after
/// [`HOLD`]; the connections are closed when the returned streams drop.
async fn hold_slots(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    let req = format!(
        "GET /hold?ms={} HTTP/1.1\r\nhost: bench\r\n\r\n",
        HOLD.as_millis()
    );
    for _ in 0..n {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            if s.write_all(req.as_bytes()).await.is_ok() {
                held.push(s);
            }
        }
    }
    held
}

/// The shed section's measurements of one proxy, over repetitions.
#[derive(Default)]
struct ShedRuns {
    /// wrk with free slots, and the CPU per request.
    proxied: Vec<(wrk::WrkResult, Option<f64>)>,
    /// wrk with every slot held, and the CPU per 503 (all of it, and its user part).
    shed: Vec<(wrk::WrkResult, Option<f64>, Option<f64>)>,
    /// Per shed run: did the held slots stay held?
    held: Vec<bool>,
}

async fn shed_section(plan: &Plan, opts: &Opts, tools: &Tools, kinds: &[Kind], res: &mut Results) {
    println!("\n== shed cost: one thread, every slot held");
    // HAProxy and nginx shed too, each by its own means (see `ShedRow`), so a 503's
    // cost compares side by side.
    let proxies: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| k.is_levee() || matches!(k, Kind::Haproxy | Kind::Nginx))
        .collect();
    if !proxies.iter().any(|k| k.is_levee()) {
        println!("SKIP shed: levee not selected");
        return;
    }
    let Some(wrk_bin) = &tools.wrk else {
        let msg = "shed section skipped: wrk not found".to_owned();
        println!("SKIP {msg}");
        res.notes.push(msg);
        return;
    };
    let fast = replica("fast", FAST_WORKERS, Duration::ZERO).await;
    let proxied_setup = fast_setup(fast.addr(), 1, 4096);
    // No queue: levee's `queue_depth = 0`; nginx has none; HAProxy always queues past
    // `maxconn`, for `timeout queue`, here its least (1 ms).
    let shed_setup = Setup {
        max_conns: Some(SHED_SLOTS as u32),
        queue_depth: 0,
        queue_timeout: Duration::from_millis(1),
        ..proxied_setup.clone()
    };
    let mut runs: BTreeMap<Kind, ShedRuns> = BTreeMap::new();
    for rep in 1..=opts.reps {
        for &kind in &proxies {
            let runs = runs.entry(kind).or_default();
            if let Some(p) = start(kind, &proxied_setup, tools, res).await {
                warm_up(p.addr).await;
                let url = format!("http://{}/", p.addr);
                let cpu0 = p.cpu_time();
                let r = wrk::run(wrk_bin, &url, WRK_THREADS, WRK_CONNECTIONS, plan.shed).await;
                let done = r.as_ref().map_or(0, |r| r.requests);
                let cpu = cpu_per_request(cpu0, p.cpu_time(), done);
                match r {
                    Ok(r) => {
                        println!(
                            "  rep {rep} {:<12} proxied  {:>8.0} req/s  p99 {}  CPU/req {}",
                            kind.name(),
                            r.rps,
                            report::ms(r.p99),
                            report::us_opt(cpu)
                        );
                        runs.proxied.push((r, cpu));
                    }
                    Err(e) => println!("  rep {rep} {:<12} proxied: wrk failed: {e}", kind.name()),
                }
                p.stop().await;
            }
            let Some(p) = start(kind, &shed_setup, tools, res).await else {
                continue;
            };
            // The previous run's held requests end with their connections; wait for
            // that, so the check below sees this run's holders, not old ones.
            settle(std::slice::from_ref(&fast)).await;
            let holders = hold_slots(p.addr, SHED_SLOTS).await;
            let deadline = Instant::now() + Duration::from_secs(2);
            while fast.stats().inflight < SHED_SLOTS && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let held_before = fast.stats().inflight;
            let url = format!("http://{}/", p.addr);
            let cpu0 = p.cpu_split();
            let r = wrk::run(wrk_bin, &url, WRK_THREADS, WRK_CONNECTIONS, plan.shed).await;
            let done = r.as_ref().map_or(0, |r| r.requests);
            let (cpu, cpu_user) = cpu_and_user_per_request(cpu0, p.cpu_split(), done);
            let held = held_before >= SHED_SLOTS && fast.stats().inflight >= SHED_SLOTS;
            runs.held.push(held);
            drop(holders);
            p.stop().await;
            match r {
                Ok(r) => {
                    println!(
                        "  rep {rep} {:<12} shed     {:>8.0} req/s  p50 {}  p99 {}  non-2xx {} of {}  slots held: {held}  CPU/503 {} (user {})",
                        kind.name(),
                        r.rps,
                        report::ms(r.p50),
                        report::ms(r.p99),
                        r.non2xx,
                        r.requests,
                        report::us_opt(cpu),
                        report::us_opt(cpu_user)
                    );
                    runs.shed.push((r, cpu, cpu_user));
                }
                Err(e) => println!("  rep {rep} {:<12} shed: wrk failed: {e}", kind.name()),
            }
        }
    }
    let cpu = |c: Vec<f64>| (!c.is_empty()).then(|| median(c));
    for (kind, r) in runs {
        let ShedRuns {
            proxied,
            shed,
            held,
        } = r;
        if shed.is_empty() {
            continue;
        }
        res.shed.push(ShedRow {
            kind,
            runs: shed.len(),
            proxied_rps: median(proxied.iter().map(|(r, _)| r.rps).collect()),
            proxied_p99: median_d(proxied.iter().map(|(r, _)| r.p99)),
            proxied_cpu_us: cpu(proxied.iter().filter_map(|(_, c)| *c).collect()),
            shed_rps: median(
                shed.iter()
                    .map(|(r, _, _)| r.non2xx as f64 / r.seconds.max(1e-3))
                    .collect(),
            ),
            shed_p50: median_d(shed.iter().map(|(r, _, _)| r.p50)),
            shed_p99: median_d(shed.iter().map(|(r, _, _)| r.p99)),
            shed_cpu_us: cpu(shed.iter().filter_map(|(_, c, _)| *c).collect()),
            shed_user_us: cpu(shed.iter().filter_map(|(_, _, u)| *u).collect()),
            non2xx_share: median(
                shed.iter()
                    .map(|(r, _, _)| r.non2xx as f64 / r.requests.max(1) as f64)
                    .collect(),
            ),
            held: held.iter().all(|&h| h),
        });
    }
}

/// The fresh and zonefail sections' replicas, in the order of [`ZONE_REPLICAS`].
async fn zone_replicas() -> Vec<Replica> {
    let mut replicas = Vec::new();
    for (name, zone) in ZONE_REPLICAS {
        replicas.push(replica_in(name, zone, ZONE_WORKERS, ZONE_SERVICE_TIME).await);
    }
    replicas
}

/// Issue 10's proxy setup over [`zone_replicas`]: `max_inflight` = the replicas'
/// workers, a queue of [`ZONE_QUEUE_DEPTH`] for [`ZONE_QUEUE_TIMEOUT`], active checks,
/// zones; levee's levels at its defaults.
fn zone_setup(replicas: &[Replica], retry_5xx: bool) -> Setup {
    Setup {
        backends: replicas.iter().map(Replica::addr).collect(),
        threads: THREADS,
        max_conns: Some(ZONE_WORKERS as u32),
        queue_depth: ZONE_QUEUE_DEPTH,
        queue_timeout: ZONE_QUEUE_TIMEOUT,
        max_clients: 8192,
        zones: ZONE_REPLICAS.iter().map(|(_, z)| (*z).to_owned()).collect(),
        health: Some(ZONE_CHECKS),
        retry_5xx,
        early_levels: false,
        tls: None,
        levee_extra: String::new(),
        levee_upstream: String::new(),
        grpc: false,
    }
}

fn zone_shape() -> String {
    format!(
        "{} replicas in 2 zones x {ZONE_WORKERS} workers x {} ms; max_inflight {ZONE_WORKERS}, queue {ZONE_QUEUE_DEPTH} for {} ms, checks every {} ms (rise {}, fall {})",
        ZONE_REPLICAS.len(),
        ZONE_SERVICE_TIME.as_millis(),
        ZONE_QUEUE_TIMEOUT.as_millis(),
        ZONE_CHECKS.interval.as_millis(),
        ZONE_CHECKS.rise,
        ZONE_CHECKS.fall,
    )
}

/// Starts `kind` as a new process and returns [`FRESH_DELAY`] after its spawn (at once
/// when it took longer than that to answer).
async fn start_fresh(
    kind: Kind,
    setup: &Setup,
    tools: &Tools,
    res: &mut Results,
) -> Option<Running> {
    let p = start(kind, setup, tools, res).await?;
    tokio::time::sleep_until(tokio::time::Instant::from_std(p.started + FRESH_DELAY)).await;
    Some(p)
}

/// `count` per second while the load was on: the mean over the generator's seconds from
/// the 2nd to the last of the step (a second counts what completed in it), so neither
/// the first second's ramp nor the answers that complete after the step (from a
/// proxy's queue, or a generator that fell behind) count. `None` for steps shorter
/// than 2 s.
fn steady_rate(ticks: &[Tick], step: Duration, count: fn(&Tick) -> u64) -> Option<f64> {
    let last = step.as_secs();
    let inside: Vec<f64> = ticks
        .iter()
        .filter(|t| (2..=last).contains(&t.second))
        .map(|t| count(t) as f64)
        .collect();
    (!inside.is_empty()).then(|| inside.iter().sum::<f64>() / inside.len() as f64)
}

/// How long `r`'s generator was sending: the step, or longer when it fell behind
/// (from its 2xx count over its 2xx rate, both per second of sending).
fn sending_secs(r: &Report, step: Duration) -> f64 {
    if r.ok > 0 && r.ok_rate > 0.0 {
        (r.ok as f64 / r.ok_rate).max(step.as_secs_f64())
    } else {
        step.as_secs_f64()
    }
}

/// One fresh run: the step, and how long the proxy took to answer its first request.
struct FreshRun {
    step: StepRun,
    ready: Duration,
}

/// One burst on a fresh, idle proxy.
struct BurstRun {
    report: Report,
    reasons: BTreeMap<String, f64>,
}

async fn fresh_section(plan: &Plan, opts: &Opts, tools: &Tools, kinds: &[Kind], res: &mut Results) {
    println!(
        "\n== fresh: a new proxy process per run, load from {} ms after its start; {}",
        FRESH_DELAY.as_millis(),
        zone_shape()
    );
    let replicas = zone_replicas().await;
    // Measured once, directly on one replica at a low rate: its latency with nothing
    // waiting for a worker (p99, the reference for admitted latency) and the real
    // service time (p50, from which C follows, as in the overload section).
    let unloaded = load::run(
        open_loop(replicas[0].addr(), "/work", UNLOADED_RATE, plan.unloaded),
        |_| {},
    )
    .await;
    let slots = ZONE_REPLICAS.len() * ZONE_WORKERS;
    let p50 = if unloaded.ok_p50.is_zero() {
        ZONE_SERVICE_TIME
    } else {
        unloaded.ok_p50
    };
    let cap = slots as f64 / p50.as_secs_f64();
    let base = FreshBase {
        slots,
        nominal: slots as f64 / ZONE_SERVICE_TIME.as_secs_f64(),
        rate: UNLOADED_RATE,
        samples: unloaded.ok,
        p50,
        p99: unloaded.ok_p99,
        cap,
    };
    println!(
        "  unloaded (direct, {UNLOADED_RATE:.0} req/s, {} answers): p50 {} p99 {}; C = {slots} slots / {} = {cap:.0} req/s (nominal {:.0})",
        unloaded.ok,
        report::ms(p50),
        report::ms(base.p99),
        report::ms(p50),
        base.nominal
    );
    res.fresh_base = Some(base);
    res.fresh_shape = zone_shape();
    res.fresh_step = plan.fresh_step;
    let setup = zone_setup(&replicas, false);
    let mut runs: BTreeMap<(Kind, usize), Vec<FreshRun>> = BTreeMap::new();
    let mut reasons: BTreeMap<(Kind, usize), BTreeMap<String, f64>> = BTreeMap::new();
    let mut bursts: BTreeMap<Kind, Vec<BurstRun>> = BTreeMap::new();
    for rep in 1..=opts.reps {
        'kinds: for &kind in kinds.iter().filter(|k| k.is_proxy()) {
            for (fi, factor) in FACTORS.iter().enumerate() {
                settle(&replicas).await;
                let Some(p) = start_fresh(kind, &setup, tools, res).await else {
                    continue 'kinds;
                };
                let rate = factor * cap;
                let (run, why) =
                    measure_step(&p, &replicas, rate, plan.fresh_step, opts.ticks).await;
                let ready = p.ready_after;
                p.stop().await;
                print_step(
                    &format!("rep {rep} ready {:>5}", report::ms(ready)),
                    kind,
                    (*factor, rate),
                    Duration::from_secs_f64(sending_secs(&run.report, plan.fresh_step)),
                    &run,
                    &why,
                );
                for (k, v) in why {
                    *reasons.entry((kind, fi)).or_default().entry(k).or_default() += v;
                }
                runs.entry((kind, fi))
                    .or_default()
                    .push(FreshRun { step: run, ready });
            }
            settle(&replicas).await;
            let Some(p) = start_fresh(kind, &setup, tools, res).await else {
                continue;
            };
            let rate = BURST_FACTOR * cap;
            let sheds0 = p.levee_sheds().await;
            let r = load::run(open_loop(p.addr, "/work", rate, BURST), |_| {}).await;
            let why = counter_delta(sheds0, p.levee_sheds().await);
            p.stop().await;
            println!(
                "  rep {rep} burst {:<12} {BURST_FACTOR:.0}x C for {} ms: sent {} 2xx {} (p99 {}) 503 {} other {} {}{}",
                kind.name(),
                BURST.as_millis(),
                r.sent,
                r.ok,
                report::ms(r.ok_p99),
                r.shed,
                r.other,
                r.errors_sample.join("; "),
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" | levee sheds by reason: {}", fmt_reasons(&why, 1.0))
                }
            );
            bursts.entry(kind).or_default().push(BurstRun {
                report: r,
                reasons: why,
            });
        }
    }
    if runs.is_empty() {
        return;
    }
    // The generator's own floor at the highest rate: no proxy, a backend that answers
    // at once (once, not per repetition).
    let fast = replica("fast", FAST_WORKERS, Duration::ZERO).await;
    let rate = FACTORS[FACTORS.len() - 1] * cap;
    let floor = load::run(open_loop(fast.addr(), "/", rate, plan.fresh_step), |_| {}).await;
    println!(
        "  floor: direct fast backend at {rate:.0}/s: sent {:.0}/s p50 {} p99 {} other {}",
        floor.achieved_rate,
        report::ms(floor.ok_p50),
        report::ms(floor.ok_p99),
        floor.other
    );
    res.fresh_floor = Some((rate, floor.achieved_rate, floor.ok_p50, floor.ok_p99));
    let behind: Vec<String> = runs
        .iter()
        .filter_map(|((kind, fi), v)| {
            let sent = median(v.iter().map(|r| r.step.report.achieved_rate).collect());
            let offered = FACTORS[*fi] * cap;
            (sent < report::GENERATOR_KEPT_UP * offered).then(|| {
                format!(
                    "{} {:.0}x ({sent:.0}/s of {offered:.0}/s)",
                    kind.name(),
                    FACTORS[*fi]
                )
            })
        })
        .collect();
    if !behind.is_empty() {
        res.notes.push(format!(
            "fresh: the open-loop generator could not send the offered rate at {}; the latencies and goodput of those rows are bounded by the generator on this machine, not by the proxy",
            behind.join(", ")
        ));
    }
    for ((kind, fi), v) in runs {
        let (steps, ready): (Vec<StepRun>, Vec<Duration>) =
            v.into_iter().map(|r| (r.step, r.ready)).unzip();
        let mut over = over_row(
            kind,
            FACTORS[fi],
            cap,
            plan.fresh_step,
            &steps,
            reasons.get(&(kind, fi)),
        );
        // Rates while the load was on (see `steady_rate`): answers a proxy's queue or a
        // late generator delivers after the step must not count as goodput.
        let rate_of = |tick: fn(&Tick) -> u64, total: fn(&Report) -> u64| {
            median(
                steps
                    .iter()
                    .map(|s| {
                        steady_rate(&s.ticks, plan.fresh_step, tick).unwrap_or_else(|| {
                            total(&s.report) as f64 / sending_secs(&s.report, plan.fresh_step)
                        })
                    })
                    .collect(),
            )
        };
        over.goodput = rate_of(|t| t.ok, |r| r.ok);
        over.shed_rate = rate_of(|t| t.shed, |r| r.shed);
        res.fresh.push(FreshRow {
            over,
            sent_rate: median(steps.iter().map(|r| r.report.achieved_rate).collect()),
            ready: median_d(ready),
        });
    }
    for (kind, v) in bursts {
        let f = |g: fn(&Report) -> u64| median(v.iter().map(|b| g(&b.report) as f64).collect());
        let mut why: BTreeMap<String, f64> = BTreeMap::new();
        for b in &v {
            for (k, n) in &b.reasons {
                *why.entry(k.clone()).or_default() += n;
            }
        }
        res.burst.push(BurstRow {
            kind,
            runs: v.len(),
            rate: BURST_FACTOR * cap,
            millis: BURST.as_millis() as u64,
            admit_max: slots as f64
                * ((BURST + ZONE_QUEUE_TIMEOUT).as_secs_f64() / p50.as_secs_f64() + 1.0),
            sent: f(|r| r.sent),
            ok: f(|r| r.ok),
            shed: f(|r| r.shed),
            shed_each: v.iter().map(|b| b.report.shed).collect(),
            other: f(|r| r.other),
            ok_p99: median_d(v.iter().map(|b| b.report.ok_p99)),
            shed_reasons: fmt_reasons(&why, v.len() as f64),
        });
    }
}

/// One zonefail run of one proxy.
struct ZoneRun {
    report: Report,
    ticks: Vec<Tick>,
    /// Requests zone a answered (with 500) from the fault on.
    zone_a_hits: u64,
    /// The last time, after the fault, that zone a answered a request.
    last_hit: Option<Duration>,
    /// levee's `levee_retries_total` by kind, and its 503s by reason, over the run;
    /// `None` when `/metrics` could not be read (and for other proxies).
    retries: Option<BTreeMap<String, f64>>,
    sheds: Option<BTreeMap<String, f64>>,
}

impl ZoneRun {
    /// Requests the client saw fail: every error and non-2xx answer, except levee's
    /// own 503 sheds (the replicas never answer 503 here, so every 503 through levee is
    /// levee's). HAProxy's and nginx's 503s ("no server available", a queue timeout,
    /// nginx's "no live upstreams") are failures.
    fn failed(kind: Kind, other: u64, shed: u64) -> u64 {
        if kind.is_levee() {
            other
        } else {
            other + shed
        }
    }
}

/// Sets zone a failing (`/health` and every request answer 500) `at` into the run,
/// then watches until `end` (plus [`WATCH_SLACK`]) how many requests zone a still
/// answers: the count from the fault on, and when the last one came (polled every
/// [`WATCH_EVERY`]).
async fn fail_zone_a(zone_a: &[&Replica], at: Duration, end: Duration) -> (u64, Option<Duration>) {
    tokio::time::sleep(at).await;
    let served = || zone_a.iter().map(|r| r.stats().served).sum::<u64>();
    for r in zone_a {
        r.set_fault(Fault::Failing);
    }
    let fault = Instant::now();
    let base = served();
    let (mut seen, mut last) = (base, None);
    while fault.elapsed() < end.saturating_sub(at) + WATCH_SLACK {
        tokio::time::sleep(WATCH_EVERY).await;
        let now = served();
        if now > seen {
            (seen, last) = (now, Some(fault.elapsed()));
        }
    }
    (seen - base, last)
}

async fn zonefail_section(
    plan: &Plan,
    opts: &Opts,
    tools: &Tools,
    kinds: &[Kind],
    res: &mut Results,
) {
    let shape = format!(
        "{ZONEFAIL_RATE:.0} req/s for {} s, zone a's 2 replicas fail at {} s (500 on every request and on /health)",
        plan.zonefail.as_secs_f64(),
        plan.zonefail_at.as_secs_f64()
    );
    println!("\n== zonefail: {shape}; {}", zone_shape());
    res.zonefail_shape = format!("{}; {shape}", zone_shape());
    let replicas = zone_replicas().await;
    let zone_a: Vec<&Replica> = replicas
        .iter()
        .zip(ZONE_REPLICAS)
        .filter(|(_, (_, zone))| *zone == "a")
        .map(|(r, _)| r)
        .collect();
    let setup = zone_setup(&replicas, true);
    let mut runs: BTreeMap<Kind, Vec<ZoneRun>> = BTreeMap::new();
    for rep in 1..=opts.reps {
        for &kind in kinds.iter().filter(|k| k.is_proxy()) {
            for r in &replicas {
                r.set_fault(Fault::None);
            }
            settle(&replicas).await;
            let Some(p) = start(kind, &setup, tools, res).await else {
                continue;
            };
            let retries0 = p.levee_counter("levee_retries_total", "kind").await;
            let sheds0 = p.levee_sheds().await;
            let mut ticks = Vec::new();
            let load = load::run(
                open_loop(p.addr, "/work", ZONEFAIL_RATE, plan.zonefail),
                |t| {
                    if opts.ticks {
                        println!("      {}", load::format_tick(t));
                    }
                    ticks.push(t.clone());
                },
            );
            let (report, (zone_a_hits, last_hit)) =
                tokio::join!(load, fail_zone_a(&zone_a, plan.zonefail_at, plan.zonefail));
            let retries = gained(
                retries0,
                p.levee_counter("levee_retries_total", "kind").await,
            );
            let sheds = gained(sheds0, p.levee_sheds().await);
            p.stop().await;
            for r in &replicas {
                r.set_fault(Fault::None);
            }
            let run = ZoneRun {
                report,
                ticks,
                zone_a_hits,
                last_hit,
                retries,
                sheds,
            };
            let r = &run.report;
            println!(
                "  rep {rep} {:<12} sent {} 2xx {} 503 {} other {} -> failed {} (by second: {}); zone a answered {} after the fault, the last at {}{}{} {}",
                kind.name(),
                r.sent,
                r.ok,
                r.shed,
                r.other,
                ZoneRun::failed(kind, r.other, r.shed),
                fail_seconds(kind, &run.ticks),
                run.zone_a_hits,
                run.last_hit.map_or("-".into(), report::ms),
                levee_counts("; levee retries", kind, run.retries.as_ref()),
                levee_counts("; levee sheds", kind, run.sheds.as_ref()),
                r.errors_sample.join("; ")
            );
            runs.entry(kind).or_default().push(run);
        }
    }
    for (kind, v) in runs {
        let f = |g: &dyn Fn(&ZoneRun) -> f64| median(v.iter().map(g).collect());
        let sum = |pick: fn(&ZoneRun) -> Option<&BTreeMap<String, f64>>| {
            if !kind.is_levee() {
                return String::new();
            }
            let mut all: BTreeMap<String, f64> = BTreeMap::new();
            let mut read = 0;
            for counts in v.iter().filter_map(pick) {
                read += 1;
                for (k, n) in counts {
                    *all.entry(k.clone()).or_default() += n;
                }
            }
            match read {
                0 => "unreadable".into(),
                _ if all.is_empty() => "none".into(),
                n => fmt_reasons(&all, f64::from(n)),
            }
        };
        let lasts: Vec<Duration> = v.iter().filter_map(|r| r.last_hit).collect();
        res.zonefail.push(ZoneRow {
            kind,
            runs: v.len(),
            sent: f(&|r| r.report.sent as f64),
            ok: f(&|r| r.report.ok as f64),
            shed: f(&|r| r.report.shed as f64),
            other: f(&|r| r.report.other as f64),
            failed: f(&|r| ZoneRun::failed(kind, r.report.other, r.report.shed) as f64),
            failed_each: v
                .iter()
                .map(|r| ZoneRun::failed(kind, r.report.other, r.report.shed))
                .collect(),
            ok_p99: median_d(v.iter().map(|r| r.report.ok_p99)),
            zone_a_hits: f(&|r| r.zone_a_hits as f64),
            last_hit: (!lasts.is_empty()).then(|| median_d(lasts)),
            retries: sum(|r| r.retries.as_ref()),
            sheds: sum(|r| r.sheds.as_ref()),
            when: v
                .iter()
                .map(|r| fail_seconds(kind, &r.ticks))
                .collect::<Vec<_>>()
                .join(" / "),
        });
    }
}

/// `; levee retries status 21` (`none` when nothing was counted, `unreadable` when
/// `/metrics` could not be read); empty for other proxies.
fn levee_counts(label: &str, kind: Kind, counts: Option<&BTreeMap<String, f64>>) -> String {
    if !kind.is_levee() {
        return String::new();
    }
    match counts {
        None => format!("{label} unreadable"),
        Some(c) if c.is_empty() => format!("{label} none"),
        Some(c) => format!("{label} {}", fmt_reasons(c, 1.0)),
    }
}

/// The seconds of a run in which requests failed, e.g. `s6 12, s7 3` (`s6`: the sixth
/// second of the load; a request counts in the second it ended); `none` when none did.
fn fail_seconds(kind: Kind, ticks: &[Tick]) -> String {
    let parts: Vec<String> = ticks
        .iter()
        .filter_map(|t| {
            let n = ZoneRun::failed(kind, t.other, t.shed);
            (n > 0).then(|| format!("s{} {n}", t.second))
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The shadow section's replica and its capacity: 16 slots over the median latency of
/// the replica alone at a low rate (as the fresh section measures C).
async fn solo_replica(plan: &Plan) -> (Replica, f64) {
    let r = replica("solo", SOLO_WORKERS, SOLO_SERVICE_TIME).await;
    let unloaded = load::run(
        open_loop(r.addr(), "/work", UNLOADED_RATE, plan.unloaded),
        |_| {},
    )
    .await;
    let p50 = if unloaded.ok_p50.is_zero() {
        SOLO_SERVICE_TIME
    } else {
        unloaded.ok_p50
    };
    let cap = SOLO_WORKERS as f64 / p50.as_secs_f64();
    println!(
        "  1 replica x {SOLO_WORKERS} workers x {} ms: C = {SOLO_WORKERS} slots / {} = {cap:.0} req/s",
        SOLO_SERVICE_TIME.as_millis(),
        report::ms(p50)
    );
    (r, cap)
}

/// levee in front of [`solo_replica`]: `max_inflight` its workers, a queue of
/// [`SOLO_QUEUE_DEPTH`] for [`SOLO_QUEUE_TIMEOUT`], default levels; `levee_extra` as
/// given.
fn solo_setup(replica: &Replica, levee_extra: &str) -> Setup {
    Setup {
        backends: vec![replica.addr()],
        threads: THREADS,
        max_conns: Some(SOLO_WORKERS as u32),
        queue_depth: SOLO_QUEUE_DEPTH,
        queue_timeout: SOLO_QUEUE_TIMEOUT,
        max_clients: 8192,
        zones: Vec::new(),
        health: None,
        retry_5xx: false,
        early_levels: false,
        tls: None,
        levee_extra: levee_extra.to_owned(),
        levee_upstream: String::new(),
        grpc: false,
    }
}

/// Shadow mode (issue 11): levee with `limits.mode = "shadow"` at [`SHADOW_FACTOR`]
/// times the replica's capacity must answer no 503 of its own (every request goes to
/// the replica, which queues the excess itself) and count what enforcing would have
/// shed. Only this checkout's levee runs it (an older build may not know the key).
async fn shadow_section(
    plan: &Plan,
    opts: &Opts,
    tools: &Tools,
    kinds: &[Kind],
    res: &mut Results,
) {
    println!(
        "\n== shadow: limits.mode = \"shadow\", {SHADOW_FACTOR:.0}x capacity for {} ms",
        plan.shadow.as_millis()
    );
    if !kinds.contains(&Kind::Levee) {
        println!("SKIP shadow: levee not selected");
        return;
    }
    let (replica, cap) = solo_replica(plan).await;
    let setup = solo_setup(&replica, "mode = \"shadow\"\n");
    let rate = SHADOW_FACTOR * cap;
    for rep in 1..=opts.reps {
        settle(std::slice::from_ref(&replica)).await;
        let Some(p) = start(Kind::Levee, &setup, tools, res).await else {
            return;
        };
        let would0 = p.levee_counter("levee_would_shed_total", "reason").await;
        let sheds0 = p.levee_sheds().await;
        // The replica queues what levee sends past its workers, so latency grows
        // through the run: the deadline covers the backlog draining after it.
        let mut cfg = open_loop(p.addr, "/work", rate, plan.shadow);
        cfg.timeout = plan.shadow * 2 + Duration::from_secs(5);
        let r = load::run(cfg, |t| {
            if opts.ticks {
                println!("      {}", load::format_tick(t));
            }
        })
        .await;
        let would = gained(
            would0,
            p.levee_counter("levee_would_shed_total", "reason").await,
        );
        let sheds = gained(sheds0, p.levee_sheds().await);
        let peak = replica.stats().peak_inflight;
        p.stop().await;
        let row = ShadowRow {
            rate,
            sent: r.sent as f64,
            ok: r.ok as f64,
            shed: r.shed as f64,
            other: r.other as f64,
            ok_p99: r.ok_p99,
            would_shed: would.as_ref().map(|w| w.values().sum()),
            would_reasons: would
                .as_ref()
                .map_or("unreadable".into(), |w| fmt_reasons(w, 1.0)),
            levee_sheds: sheds.as_ref().map(|s| s.values().sum()),
            peak,
            max_inflight: SOLO_WORKERS,
        };
        println!(
            "  rep {rep} levee shadow {SHADOW_FACTOR:.0}x {rate:.0}/s: sent {} 2xx {} (p99 {}) 503 {} other {}; would shed {} ({}); replica peak in flight {peak} (max_inflight {SOLO_WORKERS}) -> {} {}",
            r.sent,
            r.ok,
            report::ms(r.ok_p99),
            r.shed,
            r.other,
            row.would_shed.map_or("?".into(), |w| format!("{w:.0}")),
            row.would_reasons,
            row.verdict().as_str(),
            r.errors_sample.join("; ")
        );
        res.shadow.push(row);
    }
}

/// Fairness (issue 12): tenant a at [`HEAVY_FACTOR`] times the replica's capacity and
/// tenant b at [`LIGHT_FACTOR`] of it, together, open loop, through levee with
/// `[upstream.fairness] key = "header:x-tenant"` and, for reference, without it; then
/// a flood of distinct keys through levee with fairness, and its RSS before and after.
/// Only this checkout's levee runs it.
async fn fairness_section(
    plan: &Plan,
    opts: &Opts,
    tools: &Tools,
    kinds: &[Kind],
    res: &mut Results,
) {
    println!(
        "\n== fairness: tenant a at {HEAVY_FACTOR}x C, tenant b at {LIGHT_FACTOR}x C, for {} ms; then {FLOOD_RATE:.0} distinct keys a second for {} ms",
        plan.tenants.as_millis(),
        plan.flood.as_millis()
    );
    if !kinds.contains(&Kind::Levee) {
        println!("SKIP fairness: levee not selected");
        return;
    }
    let (replica, cap) = solo_replica(plan).await;
    let fair = format!("\n[upstream.fairness]\nkey = \"header:{TENANT_HEADER}\"\n");
    let tenant = |p: &Running, name: &str, rate: f64| {
        let mut cfg = open_loop(p.addr, "/work", rate, plan.tenants);
        cfg.headers = vec![(TENANT_HEADER.to_owned(), name.to_owned())];
        cfg
    };
    for rep in 1..=opts.reps {
        for fairness in [true, false] {
            settle(std::slice::from_ref(&replica)).await;
            let setup = solo_setup(&replica, if fairness { &fair } else { "" });
            let Some(p) = start(Kind::Levee, &setup, tools, res).await else {
                return;
            };
            let sheds0 = p.levee_sheds().await;
            let (a, b) = tokio::join!(
                load::run(tenant(&p, "a", HEAVY_FACTOR * cap), |_| {}),
                load::run(tenant(&p, "b", LIGHT_FACTOR * cap), |_| {}),
            );
            let sheds = counter_delta(sheds0, p.levee_sheds().await);
            p.stop().await;
            let row = FairRow {
                fairness,
                cap,
                secs: plan.tenants.as_secs_f64(),
                a_rate: HEAVY_FACTOR * cap,
                b_rate: LIGHT_FACTOR * cap,
                a_sent: a.sent as f64,
                a_ok: a.ok as f64,
                a_p99: a.ok_p99,
                b_sent: b.sent as f64,
                b_ok: b.ok as f64,
                b_p99: b.ok_p99,
                other: (a.other + b.other) as f64,
                reasons: fmt_reasons(&sheds, 1.0),
            };
            println!(
                "  rep {rep} levee{} a: sent {} 2xx {} (p99 {}) | b: sent {} 2xx {} = {:.1} % (p99 {}) | goodput {:.0}/s = {:.1} % of C | other {} | sheds: {} -> {}",
                if fairness { " with fairness   " } else { " without fairness" },
                a.sent,
                a.ok,
                report::ms(a.ok_p99),
                b.sent,
                b.ok,
                row.b_share() * 100.0,
                report::ms(b.ok_p99),
                row.goodput(),
                row.goodput() / cap * 100.0,
                row.other,
                row.reasons,
                if fairness { row.verdict().as_str() } else { "(reference)" },
            );
            res.fairness.push(row);
        }
        settle(std::slice::from_ref(&replica)).await;
        let setup = solo_setup(&replica, &fair);
        let Some(p) = start(Kind::Levee, &setup, tools, res).await else {
            return;
        };
        warm_up(p.addr).await;
        let before = p.rss_kib().unwrap_or(0) as f64;
        let keys = (FLOOD_RATE * plan.flood.as_secs_f64()) as u64;
        let f = flood::run(
            p.addr,
            "/work",
            TENANT_HEADER,
            keys,
            plan.flood,
            FLOOD_CONNECTIONS,
        )
        .await;
        let after = p.rss_kib().unwrap_or(0) as f64;
        p.stop().await;
        let row = FloodRow {
            keys,
            secs: plan.flood.as_secs_f64(),
            took: f.took,
            sent: f.sent,
            ok: f.ok,
            shed: f.shed,
            other: f.other,
            rss_before_kib: before,
            rss_after_kib: after,
        };
        println!(
            "  rep {rep} key flood: {} distinct keys over {} ms (took {}): 2xx {} 503 {} other {}; levee RSS {:.1} -> {:.1} MiB (+{:.1} MiB) -> {}",
            f.sent,
            plan.flood.as_millis(),
            report::ms(f.took),
            f.ok,
            f.shed,
            f.other,
            before / 1024.0,
            after / 1024.0,
            row.growth_mib(),
            row.verdict().as_str()
        );
        res.flood.push(row);
    }
}
