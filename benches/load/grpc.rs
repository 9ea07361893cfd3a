//! The grpc section: gRPC unary calls per second through levee (an upstream with
//! `protocol = "h2"`) and nginx (`grpc_pass` in a server listening with `http2`), side
//! by side with the same backend and the same client, and straight to the backend
//! ("direct").
//!
//! - backend: `examples/grpc_backend` (tonic, the standard health service) as a process
//!   of its own on [`BACKEND_WORKERS`] runtime threads (or `GRPC_BACKEND_WORKERS`),
//!   started once for the section;
//! - client: h2load (nghttp2), [`CONNECTIONS`] h2c connections with [`STREAMS`] calls
//!   in flight on each, every call `POST /grpc.health.v1.Health/Check` with
//!   `content-type: application/grpc`, `te: trailers` and an empty
//!   `HealthCheckRequest` framed (the 5 bytes `00 00 00 00 00`);
//! - each run: a tonic health check through the target (SERVING, so `grpc-status: 0`),
//!   a short h2load warm-up, the measured h2load run with the proxy's and the
//!   backend's CPU read around it, and a tonic check again;
//! - h2load counts HTTP statuses only, and a gRPC failure is a 200 too (levee's shed is
//!   a trailers-only 200 with `grpc-status: 14`). Every successful answer carries one
//!   `HealthCheckResponse { status: SERVING }`, 7 bytes of DATA (the 5-byte frame
//!   header and 2 bytes of message) while a trailers-only failure has none, so h2load's
//!   DATA bytes over its 2xx must be exactly [`DATA_PER_CALL`]: the table shows it.
//!
//! Each repetition runs the targets in a rotated order (levee nginx direct, then
//! nginx direct levee, ...), so no target always runs first or last.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;

use crate::proxies::{process_cpu, Kind, Running, Tools};
use crate::report::{median, median_d, ms, ratio, us_opt, Results, Target, Verdict};
use crate::{cpu_per_request, fast_setup, start, Opts, Plan, THREADS};

/// h2load's connections, calls in flight per connection, and threads.
pub const CONNECTIONS: usize = 16;
pub const STREAMS: usize = 10;
pub const H2LOAD_THREADS: usize = 1;
/// The backend's tokio worker threads, unless [`WORKERS_VAR`] says otherwise. On these
/// 2 cores h2load, the proxy and the backend each want one: more backend threads only
/// take turns with the others.
pub const BACKEND_WORKERS: usize = 1;
/// The environment variable that sets the backend's worker threads.
pub const WORKERS_VAR: &str = "GRPC_BACKEND_WORKERS";

/// [`BACKEND_WORKERS`], or the positive number in [`WORKERS_VAR`].
fn backend_workers() -> usize {
    std::env::var(WORKERS_VAR)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(BACKEND_WORKERS)
}
/// The called method, and its request: an empty `HealthCheckRequest` (service `""`,
/// the whole server) in gRPC's framing (not compressed, length 0).
pub const METHOD: &str = "/grpc.health.v1.Health/Check";
const REQUEST: [u8; 5] = [0, 0, 0, 0, 0];
/// DATA bytes of one successful answer: the frame header and `08 01` (status SERVING).
pub const DATA_PER_CALL: f64 = 7.0;
/// The target: levee's calls/s at least this share of nginx's.
pub const VS_NGINX: f64 = 1.0;

/// One target's figures (medians over repetitions).
#[derive(Debug, Clone)]
pub struct GrpcRow {
    pub kind: Kind,
    pub runs: usize,
    pub calls_per_s: f64,
    /// h2load's mean time per call (it reports no percentiles).
    pub mean: Duration,
    /// CPU of the proxy per call (user + system), in µs.
    pub cpu_us: Option<f64>,
    /// CPU of the backend per call, in µs.
    pub backend_cpu_us: Option<f64>,
    /// Calls not answered 2xx, or failed in h2load (errors, timeouts), per run.
    pub failed: f64,
    /// DATA bytes received per 2xx answer, the lowest over the runs
    /// ([`DATA_PER_CALL`] when every answer carried its message).
    pub data_per_call: f64,
    /// The tonic health checks before and after every run were all SERVING.
    pub checked: bool,
    /// Connections open to the backend halfway through a run (the proxy's, or h2load's
    /// for direct), the fewest and the most over the runs.
    pub backend_conns: (usize, usize),
}

/// One h2load run's summary.
#[derive(Debug, Clone, Default)]
pub struct H2load {
    pub seconds: f64,
    pub rps: f64,
    pub done: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    pub status_2xx: u64,
    pub status_other: u64,
    /// DATA frame payload received.
    pub data_bytes: u64,
    pub mean: Duration,
}

impl H2load {
    fn problems(&self) -> u64 {
        self.failed + self.errored + self.timeout + self.status_other
    }

    fn data_per_call(&self) -> f64 {
        self.data_bytes as f64 / self.status_2xx.max(1) as f64
    }
}

/// One tonic `grpc.health.v1.Health/Check` for the whole server through `addr` (h2c):
/// `Ok` when answered SERVING (so with `grpc-status: 0`).
pub async fn check(addr: SocketAddr) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    match answer.get_ref().status {
        s if s == ServingStatus::Serving as i32 => Ok(()),
        s => Err(format!("health status {s}, not SERVING")),
    }
}

/// The backend process; killed when dropped.
struct Backend {
    child: tokio::process::Child,
    addr: SocketAddr,
}

impl Backend {
    /// Starts `examples/grpc_backend` on a free port and reads the address it prints.
    async fn start(binary: &Path) -> Result<Backend, String> {
        let mut child = tokio::process::Command::new(binary)
            .arg("127.0.0.1:0")
            .arg(backend_workers().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .map_err(|_| "grpc_backend printed no address within 10 s".to_owned())?
            .map_err(|e| format!("grpc_backend: {e}"))?
            .unwrap_or_default();
        let addr = line
            .strip_prefix("listening ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| format!("grpc_backend printed {line:?}"))?;
        Ok(Backend { child, addr })
    }

    fn cpu_time(&self) -> Option<Duration> {
        process_cpu(self.child.id()?)
    }
}

/// `h2load` with the gRPC call against `addr` for `duration`, killed 15 s past it.
async fn h2load(
    bin: &Path,
    body: &Path,
    addr: SocketAddr,
    duration: Duration,
) -> Result<H2load, String> {
    let secs = duration.as_secs().max(1);
    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg(format!("-c{CONNECTIONS}"))
        .arg(format!("-m{STREAMS}"))
        .arg(format!("-t{H2LOAD_THREADS}"))
        .arg(format!("-D{secs}"))
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg("-d")
        .arg(body)
        .arg(format!("http://{addr}{METHOD}"));
    let text = crate::wrk::run_tool("h2load", cmd, Duration::from_secs(secs + 15)).await?;
    parse(&text).ok_or_else(|| format!("cannot parse h2load output:\n{text}"))
}

/// Parses h2load's summary:
///
/// ```text
/// finished in 10.00s, 23456.70 req/s, 1.05MB/s
/// requests: 234567 total, 234727 started, 234567 done, 234567 succeeded, 0 failed, 0 errored, 0 timeout
/// status codes: 234567 2xx, 0 3xx, 0 4xx, 0 5xx
/// traffic: 10.47MB (10983297) total, 4.08MB (4278960) headers (space savings 93.63%), 1.57MB (1641969) data
///                      min         max         mean         sd        +/- sd
/// time for request:      192us     28.64ms      6.79ms      1.44ms    76.12%
/// ```
pub fn parse(text: &str) -> Option<H2load> {
    let mut r = H2load::default();
    // "N word" pairs of a comma-separated line, as (word, N).
    let counts = |rest: &str| -> BTreeMap<String, u64> {
        rest.split(',')
            .filter_map(|part| {
                let mut words = part.split_whitespace();
                let n = words.next()?.parse().ok()?;
                Some((words.next()?.to_owned(), n))
            })
            .collect()
    };
    let mut seen = false;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("finished in ") {
            let mut parts = rest.split(',');
            r.seconds = parse_duration(parts.next()?.trim())?.as_secs_f64();
            r.rps = parts.next()?.trim().strip_suffix(" req/s")?.parse().ok()?;
            seen = true;
        } else if let Some(rest) = line.strip_prefix("requests:") {
            let c = counts(rest);
            r.done = *c.get("done")?;
            r.failed = *c.get("failed")?;
            r.errored = *c.get("errored")?;
            r.timeout = c.get("timeout").copied().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("status codes:") {
            let c = counts(rest);
            r.status_2xx = *c.get("2xx")?;
            r.status_other = ["3xx", "4xx", "5xx"].iter().filter_map(|k| c.get(*k)).sum();
        } else if let Some(rest) = line.strip_prefix("traffic:") {
            // "... 1.57MB (1641969) data": the exact count is in the parentheses.
            let data = rest.split(',').find(|p| p.trim_end().ends_with(" data"))?;
            let exact = data.split('(').nth(1)?.split(')').next()?;
            r.data_bytes = exact.trim().parse().ok()?;
        } else if let Some(rest) = line.strip_prefix("time for request:") {
            // min, max, mean, sd, +/- sd
            r.mean = parse_duration(rest.split_whitespace().nth(2)?)?;
        }
    }
    seen.then_some(r)
}

/// `192us`, `6.79ms`, `10.00s`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let value: f64 = num.parse().ok()?;
    let secs = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// One measured run's figures.
struct Run {
    h2: H2load,
    cpu_us: Option<f64>,
    backend_cpu_us: Option<f64>,
    checked: bool,
    backend_conns: usize,
}

/// Established TCP connections to `addr`'s port on 127.0.0.1, from `/proc/net/tcp`:
/// how many connections the proxy keeps to the backend (levee multiplexes calls on a
/// few HTTP/2 connections; nginx's `grpc_pass` carries one call per connection).
fn connections_to(addr: SocketAddr) -> usize {
    let Ok(text) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    // "  sl  local_address rem_address   st ...": 0100007F:1F90 0100007F:A2B4 01
    let remote = format!("0100007F:{:04X}", addr.port());
    text.lines()
        .skip(1)
        .filter(|l| {
            let mut f = l.split_whitespace().skip(2);
            f.next() == Some(remote.as_str()) && f.next() == Some("01")
        })
        .count()
}

/// A tonic check through `addr` within 5 s; prints and returns whether it passed.
async fn checked(label: &str, addr: SocketAddr) -> bool {
    match tokio::time::timeout(Duration::from_secs(5), check(addr)).await {
        Ok(Ok(())) => true,
        Ok(Err(e)) => {
            println!("    {label}: gRPC health check failed: {e}");
            false
        }
        Err(_) => {
            println!("    {label}: gRPC health check timed out");
            false
        }
    }
}

pub async fn section(plan: &Plan, opts: &Opts, tools: &Tools, kinds: &[Kind], res: &mut Results) {
    println!(
        "\n== grpc: unary calls ({METHOD}) through levee (protocol = \"h2\"), nginx (grpc_pass) and direct"
    );
    let skip = |res: &mut Results, msg: String| {
        println!("SKIP {msg}");
        res.notes.push(msg);
    };
    let Some(h2load_bin) = &tools.h2load else {
        return skip(
            res,
            "grpc section skipped: h2load not found (apt-get install nghttp2-client)".into(),
        );
    };
    let Some(backend_bin) = &tools.grpc_backend else {
        return skip(
            res,
            "grpc section skipped: examples/grpc_backend not built (cargo build --release --example grpc_backend)".into(),
        );
    };
    let mut targets: Vec<Kind> = Vec::new();
    for &kind in kinds {
        if kind == Kind::Haproxy || kind.is_floor() {
            println!(
                "  {} is not set up for gRPC: not in this section",
                kind.name()
            );
        } else {
            targets.push(kind);
        }
    }
    let dir = match tempfile::Builder::new()
        .prefix("levee-bench-grpc-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => return skip(res, format!("grpc section skipped: temp dir: {e}")),
    };
    let body: PathBuf = dir.path().join("check.bin");
    if let Err(e) = std::fs::write(&body, REQUEST) {
        return skip(res, format!("grpc section skipped: {e}"));
    }
    let backend = match Backend::start(backend_bin).await {
        Ok(b) => b,
        Err(e) => return skip(res, format!("grpc section skipped: {e}")),
    };
    if !checked("backend", backend.addr).await {
        return skip(
            res,
            "grpc section skipped: the backend does not answer the health check".into(),
        );
    }
    let mut setup = fast_setup(backend.addr, THREADS, 4096);
    setup.grpc = true;
    let workers = backend_workers();
    res.grpc_shape = format!(
        "h2load -c{CONNECTIONS} -m{STREAMS} -t{H2LOAD_THREADS} -D{} -H 'content-type: application/grpc' -H 'te: trailers' -d <5 zero bytes>, after a {} s warm-up run; backend examples/grpc_backend ({workers} worker thread{}); proxies with {THREADS} worker",
        plan.grpc.as_secs(),
        plan.grpc_warm.as_secs(),
        if workers == 1 { "" } else { "s" },
    );
    let mut runs: BTreeMap<Kind, Vec<Run>> = BTreeMap::new();
    for rep in 1..=opts.reps {
        let mut order = targets.clone();
        if !order.is_empty() {
            let n = order.len();
            order.rotate_left((rep - 1) % n);
        }
        for kind in order {
            let proxy: Option<Running> = if kind.is_proxy() {
                match start(kind, &setup, tools, res).await {
                    Some(p) => Some(p),
                    None => continue,
                }
            } else {
                None
            };
            let addr = proxy.as_ref().map_or(backend.addr, |p| p.addr);
            let label = format!("rep {rep} {}", kind.name());
            let mut ok = checked(&label, addr).await;
            if let Err(e) = h2load(h2load_bin, &body, addr, plan.grpc_warm).await {
                println!("    {label}: warm-up failed: {e}");
            }
            let sheds0 = match &proxy {
                Some(p) => p.levee_sheds().await,
                None => None,
            };
            let cpu0 = proxy.as_ref().and_then(Running::cpu_time);
            let bcpu0 = backend.cpu_time();
            // The backend's connections are counted halfway through the run (nginx
            // closes some when h2load leaves with calls in flight).
            let (r, conns) = tokio::join!(h2load(h2load_bin, &body, addr, plan.grpc), async {
                tokio::time::sleep(plan.grpc / 2).await;
                connections_to(backend.addr)
            });
            let cpu1 = proxy.as_ref().and_then(Running::cpu_time);
            let bcpu1 = backend.cpu_time();
            ok &= checked(&label, addr).await;
            let sheds = match &proxy {
                Some(p) => crate::counter_delta(sheds0, p.levee_sheds().await),
                None => BTreeMap::new(),
            };
            if let Some(p) = proxy {
                p.stop().await;
            }
            match r {
                Ok(h2) => {
                    let cpu = cpu_per_request(cpu0, cpu1, h2.status_2xx);
                    let bcpu = cpu_per_request(bcpu0, bcpu1, h2.status_2xx);
                    println!(
                        "  {label:<18} {:>8.0} calls/s  mean {}  2xx {}  failed {}  DATA/2xx {:.2}  CPU/call {} (backend {})  backend conns {conns}  checks {}",
                        h2.rps,
                        ms(h2.mean),
                        h2.status_2xx,
                        h2.problems(),
                        h2.data_per_call(),
                        us_opt(cpu),
                        us_opt(bcpu),
                        if ok { "SERVING" } else { "FAILED" },
                    );
                    if !sheds.is_empty() {
                        println!("      levee shed: {}", crate::fmt_reasons(&sheds, 1.0));
                    }
                    runs.entry(kind).or_default().push(Run {
                        h2,
                        cpu_us: cpu,
                        backend_cpu_us: bcpu,
                        checked: ok,
                        backend_conns: conns,
                    });
                }
                Err(e) => println!("  {label}: h2load failed: {e}"),
            }
        }
    }
    drop(backend);
    for &kind in &targets {
        let Some(v) = runs.get(&kind).filter(|v| !v.is_empty()) else {
            continue;
        };
        let opt_median = |c: Vec<f64>| (!c.is_empty()).then(|| median(c));
        let row = GrpcRow {
            kind,
            runs: v.len(),
            calls_per_s: median(v.iter().map(|r| r.h2.rps).collect()),
            mean: median_d(v.iter().map(|r| r.h2.mean)),
            cpu_us: opt_median(v.iter().filter_map(|r| r.cpu_us).collect()),
            backend_cpu_us: opt_median(v.iter().filter_map(|r| r.backend_cpu_us).collect()),
            failed: median(v.iter().map(|r| r.h2.problems() as f64).collect()),
            data_per_call: v
                .iter()
                .map(|r| r.h2.data_per_call())
                .fold(f64::INFINITY, f64::min),
            checked: v.iter().all(|r| r.checked),
            backend_conns: (
                v.iter().map(|r| r.backend_conns).min().unwrap_or(0),
                v.iter().map(|r| r.backend_conns).max().unwrap_or(0),
            ),
        };
        if !row.checked || (row.data_per_call - DATA_PER_CALL).abs() > 1e-9 {
            res.notes.push(format!(
                "grpc: {} answered calls without their message (DATA/2xx {:.3}, health checks {})",
                kind.name(),
                row.data_per_call,
                if row.checked { "SERVING" } else { "FAILED" }
            ));
        }
        res.grpc.push(row);
    }
}

fn row(res: &Results, kind: Kind) -> Option<&GrpcRow> {
    res.grpc.iter().find(|r| r.kind == kind && r.runs > 0)
}

/// The grpc target: levee's unary calls/s against nginx's.
pub fn targets(res: &Results, out: &mut Vec<Target>) {
    if res.grpc.is_empty() {
        return;
    }
    let name = format!("gRPC unary calls/s >= {VS_NGINX}x nginx's grpc_pass");
    match (row(res, Kind::Levee), row(res, Kind::Nginx)) {
        (Some(l), Some(n)) if n.calls_per_s > 0.0 => {
            let x = l.calls_per_s / n.calls_per_s;
            let sound = l.checked && (l.data_per_call - DATA_PER_CALL).abs() < 1e-9;
            out.push(Target {
                name,
                levee: format!("{:.0} vs {:.0} ({x:.2}x)", l.calls_per_s, n.calls_per_s),
                verdict: Verdict::of(sound && x >= VS_NGINX),
                others: Vec::new(),
            });
        }
        _ => out.push(Target {
            name,
            levee: "-".into(),
            verdict: Verdict::Skip,
            others: Vec::new(),
        }),
    }
}

/// The section's table, with levee over nginx where both ran.
pub fn render(res: &Results, s: &mut String) {
    if res.grpc.is_empty() {
        return;
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "### gRPC: unary `{METHOD}` calls over h2c; {}",
        res.grpc_shape
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| target | calls/s | mean per call | failed | DATA bytes / 2xx | health checks | CPU/call | backend CPU/call | backend connections |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---:|---:|---:|");
    for r in &res.grpc {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {} | {:.0} | {:.2} | {} | {} | {} | {} |",
            r.kind.name(),
            r.calls_per_s,
            ms(r.mean),
            r.failed,
            r.data_per_call,
            if r.checked { "SERVING" } else { "FAILED" },
            us_opt(r.cpu_us),
            us_opt(r.backend_cpu_us),
            match r.backend_conns {
                (a, b) if a == b => a.to_string(),
                (a, b) => format!("{a}-{b}"),
            },
        );
    }
    if let (Some(l), Some(n)) = (row(res, Kind::Levee), row(res, Kind::Nginx)) {
        let x = |a: f64, b: f64| ratio(Some(a), Some(b));
        let xo = ratio;
        let _ = writeln!(
            s,
            "| levee / nginx | {} | {} | | | | {} | {} | |",
            x(l.calls_per_s, n.calls_per_s),
            x(l.mean.as_secs_f64(), n.mean.as_secs_f64()),
            xo(l.cpu_us, n.cpu_us),
            xo(l.backend_cpu_us, n.backend_cpu_us),
        );
    }
    let _ = writeln!(
        s,
        "\nA gRPC failure is a 200 too: every successful answer carries {DATA_PER_CALL:.0} bytes of DATA (a trailers-only error none), and a tonic health check before and after each run must answer SERVING. Backend connections: open halfway through each run (fewest-most over the runs); direct's are h2load's {CONNECTIONS}. Target: levee's calls/s at least {VS_NGINX}x nginx's."
    );
}

pub fn to_json(res: &Results) -> Value {
    json!(res
        .grpc
        .iter()
        .map(|r| json!({
            "target": r.kind.name(), "runs": r.runs, "calls_per_s": r.calls_per_s,
            "mean_ms": r.mean.as_secs_f64() * 1e3, "failed": r.failed,
            "data_per_call": r.data_per_call, "checked": r.checked,
            "cpu_us": r.cpu_us, "backend_cpu_us": r.backend_cpu_us,
            "backend_conns_min": r.backend_conns.0, "backend_conns_max": r.backend_conns.1,
        }))
        .collect::<Vec<_>>())
}
