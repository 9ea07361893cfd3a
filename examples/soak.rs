//! A bounded soak of the real `levee` binary: open-loop overload, flapping backends, a
//! zone failure and recovery, and config reloads, all at once; then checks that nothing
//! was lost, that levee is idle again and that its memory did not grow.
//!
//! Run it through `scripts/soak.sh` (builds the release binary first), or:
//!
//! ```sh
//! cargo build --release --bin levee
//! SOAK_SECS=60 cargo run --release --example soak
//! ```
//!
//! Environment:
//! - `SOAK_SECS` (default 600): how long the load runs;
//! - `SOAK_FACTOR` (default 1.5): offered load as a multiple of the replicas' capacity;
//! - `LEVEE_BIN` (default `target/release/levee`): the binary under test.
//!
//! The setup: four in-process replicas (`levee::demo::replica`), two in zone `a` (local
//! to levee) and two in zone `b`, each with 4 workers and a 20 ms service time, so 800
//! requests/s together; levee with `max_inflight` equal to the workers, a bounded queue,
//! active health checks and passive ejection. Every request is scheduled open-loop at
//! `SOAK_FACTOR` × capacity and classified: 2xx, 503 (shed), another 5xx (a clean error:
//! injected 500s, 502, 504), another status, a transport error, or no answer within 15 s
//! (hung). Meanwhile:
//! - every 2 s a backend flaps: a random replica gets a fault (`Error500`, `Health500`,
//!   `Hang`, `Failing`) and the next flap clears it;
//! - from 40 % to 55 % of the run zone `a` is down (its replicas killed), then restarted
//!   on the same ports;
//! - every 4 s the config file is rewritten with alternating limits (written beside and
//!   renamed) and levee gets SIGHUP; once, at 70 %, an invalid file is written first;
//! - every 10 s levee's VmRSS and open descriptors are sampled.
//!
//! At the end: every request got an answer (2xx, 503 or a clean 5xx; none lost or
//! hung), levee's in-flight count and queue are back to 0 (`/status` on the admin
//! listener), reloads succeeded, RSS did not grow beyond noise (last sample under load
//! at most 20 % + 8 MiB above the first one under load), and SIGTERM ends levee cleanly.
//! Exit status 0 when every check passed, 1 otherwise.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use levee::demo::replica::{Fault, Replica, ReplicaConfig};
use rand::Rng;
use tokio::net::TcpListener;

const WORKERS: usize = 4;
const SERVICE: Duration = Duration::from_millis(20);
const REQUEST_DEADLINE: Duration = Duration::from_secs(15);
/// Most requests outstanding at once; beyond, the generator counts itself saturated.
const MAX_OUTSTANDING: usize = 8192;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Counters of the whole run, shared by the request tasks.
#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    done: AtomicU64,
    ok: AtomicU64,
    shed: AtomicU64,
    clean_5xx: AtomicU64,
    other_status: AtomicU64,
    transport: AtomicU64,
    hung: AtomicU64,
    saturated: AtomicU64,
}

struct Latencies {
    ok: Histogram<u64>,
    shed: Histogram<u64>,
    by_status: BTreeMap<u16, u64>,
    errors: Vec<String>,
    /// Failures (5xx other than 503, transport errors, hangs) by second of completion.
    failures_by_second: BTreeMap<u64, u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// The levee process, killed by its id on drop.
struct Levee {
    child: Child,
    proxy: SocketAddr,
    admin: SocketAddr,
    panics: Arc<AtomicU64>,
    errors_logged: Arc<AtomicU64>,
}

impl Drop for Levee {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Levee {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) -> bool {
        Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn spawn_levee(bin: &Path, config: &Path) -> Result<Levee, String> {
    let mut child = Command::new(bin)
        .args(["--log-format", "json", "run", "-c"])
        .arg(config)
        .env("LEVEE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let (tx, rx) = mpsc::channel();
    let panics = Arc::new(AtomicU64::new(0));
    let errors_logged = Arc::new(AtomicU64::new(0));
    let (p, e) = (panics.clone(), errors_logged.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("panicked") {
                p.fetch_add(1, Ordering::Relaxed);
                eprintln!("levee: {line}");
            }
            if line.contains("\"level\":\"ERROR\"") {
                e.fetch_add(1, Ordering::Relaxed);
            }
            let _ = tx.send(line);
        }
    });
    let (mut proxy, mut admin) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proxy.is_none() || admin.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| "levee did not log its listeners within 10 s".to_owned())?;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let addr = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
        match v["fields"]["message"].as_str() {
            Some("proxy listening") => proxy = addr,
            Some("admin listening") => admin = addr,
            _ => {}
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Ok(Levee {
        child,
        proxy: proxy.ok_or("no proxy address")?,
        admin: admin.ok_or("no admin address")?,
        panics,
        errors_logged,
    })
}

fn config_text(
    backends: &[(SocketAddr, &str)],
    max_inflight: usize,
    queue_timeout_ms: u64,
) -> String {
    let mut s = format!(
        "# levee soak config (rewritten during the run)\n\
         [server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\nzone = \"a\"\n\
         grace_period_ms = 5000\n\
         [server.timeouts]\nconnect_ms = 500\nread_ms = 1000\nresponse_ms = 5000\n\n\
         [[upstream]]\nname = \"soak\"\nroutes = [\"/\"]\nretry_on_connect_failure = 2\nretry_budget = 0.2\n\
         [upstream.limits]\nmax_inflight = {max_inflight}\nqueue_depth = 64\nqueue_timeout_ms = {queue_timeout_ms}\n\
         [upstream.levels]\ncaution = {{ utilization = 0.9, queue = 8 }}\ndanger = {{ queue = 32 }}\ncooldown_ms = 1000\n\
         [upstream.health]\npath = \"/health\"\ninterval_ms = 500\ntimeout_ms = 250\nrise = 2\nfall = 2\n\
         eject_after_failures = 5\neject_ms = 2000\neject_max_ms = 8000\nslow_start_ms = 2000\n"
    );
    for (addr, zone) in backends {
        s.push_str(&format!(
            "\n[[upstream.backend]]\naddress = \"{addr}\"\nzone = \"{zone}\"\n"
        ));
    }
    s
}

/// Writes beside and renames, as config managers do.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

async fn start_replica(name: &str, zone: &str, at: Option<SocketAddr>) -> std::io::Result<Replica> {
    let cfg = ReplicaConfig {
        name: name.into(),
        zone: zone.into(),
        workers: WORKERS,
        service_time: SERVICE,
    };
    match at {
        Some(addr) => {
            // The port was just freed by the killed replica; retry briefly.
            let mut last = None;
            for _ in 0..50 {
                match TcpListener::bind(addr).await {
                    Ok(l) => return Replica::start_on(cfg, l).await,
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("bind failed")))
        }
        None => Replica::start(cfg).await,
    }
}

/// `GET path` on the admin listener, as text.
async fn admin_get(client: &HttpClient, admin: SocketAddr, path: &str) -> Option<String> {
    let uri: http::Uri = format!("http://{admin}{path}").parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(3), client.get(uri))
        .await
        .ok()?
        .ok()?;
    let body = tokio::time::timeout(Duration::from_secs(3), resp.into_body().collect())
        .await
        .ok()?
        .ok()?;
    String::from_utf8(body.to_bytes().to_vec()).ok()
}

/// `(in flight, queued, level)` summed over upstreams, from `/status`.
async fn status(client: &HttpClient, admin: SocketAddr) -> Option<(u64, u64, String)> {
    let text = admin_get(client, admin, "/status").await?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let ups = v["upstreams"].as_array()?;
    let inflight = ups
        .iter()
        .map(|u| u["inflight"].as_u64().unwrap_or(0))
        .sum();
    let queued = ups.iter().map(|u| u["queue"].as_u64().unwrap_or(0)).sum();
    let level = ups
        .first()
        .and_then(|u| u["level"].as_str())
        .unwrap_or("?")
        .to_owned();
    Some((inflight, queued, level))
}

/// A counter of the Prometheus text, e.g. `levee_config_reloads_total{result="success"}`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends one request and classifies its answer.
async fn one_request(
    client: HttpClient,
    uri: http::Uri,
    (start, scheduled): (Instant, Instant),
    counts: Arc<Counts>,
    lat: Arc<Mutex<Latencies>>,
) {
    let outcome = tokio::time::timeout(REQUEST_DEADLINE, async {
        let resp = client.get(uri).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            msg
        })?;
        let status = resp.status().as_u16();
        resp.into_body()
            .collect()
            .await
            .map_err(|e| format!("body of a {status}: {e}"))?;
        Ok::<u16, String>(status)
    })
    .await;
    let micros = scheduled.elapsed().as_micros() as u64;
    let second = start.elapsed().as_secs();
    let mut l = lat.lock().unwrap();
    if !matches!(outcome, Ok(Ok(status)) if status < 500 || status == 503) {
        *l.failures_by_second.entry(second).or_default() += 1;
    }
    match outcome {
        Ok(Ok(status)) => {
            *l.by_status.entry(status).or_default() += 1;
            match status {
                200..=299 => {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                    l.ok.saturating_record(micros);
                }
                503 => {
                    counts.shed.fetch_add(1, Ordering::Relaxed);
                    l.shed.saturating_record(micros);
                }
                500..=599 => {
                    counts.clean_5xx.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    counts.other_status.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok(Err(e)) => {
            counts.transport.fetch_add(1, Ordering::Relaxed);
            if l.errors.len() < 10 && !l.errors.contains(&e) {
                l.errors.push(e);
            }
        }
        Err(_) => {
            counts.hung.fetch_add(1, Ordering::Relaxed);
        }
    }
    counts.done.fetch_add(1, Ordering::Relaxed);
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match soak().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn soak() -> Result<bool, String> {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let factor: f64 = std::env::var("SOAK_FACTOR")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    let bin = std::env::var_os("LEVEE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/levee"));
    let duration = Duration::from_secs(secs.max(10));

    // Replicas in two zones.
    let mut replicas: Vec<(Option<Replica>, String, &str, SocketAddr)> = Vec::new();
    for (name, zone) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")] {
        let r = start_replica(name, zone, None)
            .await
            .map_err(|e| format!("replica {name}: {e}"))?;
        let addr = r.addr();
        replicas.push((Some(r), name.to_owned(), zone, addr));
    }
    let backends: Vec<(SocketAddr, &str)> = replicas.iter().map(|r| (r.3, r.2)).collect();
    let capacity = (replicas.len() * WORKERS) as f64 / SERVICE.as_secs_f64();
    let rate = capacity * factor;

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("levee.toml");
    write_config(&path, &config_text(&backends, WORKERS, 100));
    let mut levee = spawn_levee(&bin, &path)?;
    println!(
        "soak: {} for {secs} s: 4 replicas in zones a and b, capacity {capacity:.0} req/s, offering {rate:.0} req/s ({factor}x); proxy {}, admin {}",
        bin.display(),
        levee.proxy,
        levee.admin
    );

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2048)
        .pool_timer(TokioTimer::new())
        .build(connector);
    let admin_client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    // Give the first probes a moment.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let counts = Arc::new(Counts::default());
    let lat = Arc::new(Mutex::new(Latencies {
        ok: histogram(),
        shed: histogram(),
        by_status: BTreeMap::new(),
        errors: Vec::new(),
        failures_by_second: BTreeMap::new(),
    }));
    let uri: http::Uri = format!("http://{}/soak", levee.proxy)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let outstanding = Arc::new(tokio::sync::Semaphore::new(MAX_OUTSTANDING));

    let start = Instant::now();
    let zone_down_at = duration.mul_f64(0.40);
    let zone_up_at = duration.mul_f64(0.55);
    let bad_reload_at = duration.mul_f64(0.70);
    let (mut zone_down, mut zone_restored, mut bad_reload_done) = (false, false, false);
    let mut next_flap = Duration::from_secs(2);
    let mut next_reload = Duration::from_secs(4);
    let mut next_report = Duration::from_secs(10);
    let mut flapped: Option<usize> = None;
    let (mut flaps, mut reloads_sent) = (0u64, 0u64);
    let mut reload_limit = WORKERS;
    let mut rss: Vec<(u64, u64, usize)> = vec![(0, levee.rss_kib(), levee.fds())];
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent: u64 = 0;
    let mut rng = rand::rng();
    let mut last_counts = (0u64, 0u64, 0u64);

    while start.elapsed() < duration {
        let now = start.elapsed();
        // Open loop: everything due by now goes out now.
        let due = (now.as_secs_f64() * rate) as u64;
        while sent < due {
            let scheduled = start + Duration::from_secs_f64(sent as f64 / rate);
            sent += 1;
            counts.sent.fetch_add(1, Ordering::Relaxed);
            match outstanding.clone().try_acquire_owned() {
                Ok(permit) => {
                    let (c, u, k, l) = (client.clone(), uri.clone(), counts.clone(), lat.clone());
                    tasks.spawn(async move {
                        one_request(c, u, (start, scheduled), k, l).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    counts.saturated.fetch_add(1, Ordering::Relaxed);
                    counts.done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        while tasks.try_join_next().is_some() {}

        // Backend flaps (replicas of a downed zone are left alone).
        if now >= next_flap {
            next_flap += Duration::from_secs(2);
            match flapped.take() {
                Some(i) => {
                    if let Some(r) = &replicas[i].0 {
                        r.set_fault(Fault::None);
                    }
                }
                None => {
                    let i = rng.random_range(0..replicas.len());
                    let fault = [
                        Fault::Error500,
                        Fault::Health500,
                        Fault::Hang,
                        Fault::Failing,
                    ][rng.random_range(0..4)];
                    if let Some(r) = &replicas[i].0 {
                        r.set_fault(fault);
                        flapped = Some(i);
                        flaps += 1;
                        println!(
                            "  t={:>4.1}s flap: {} {fault:?}",
                            now.as_secs_f64(),
                            replicas[i].1
                        );
                    }
                }
            }
        }

        // Zone a fails, then comes back on the same ports.
        if !zone_down && now >= zone_down_at {
            zone_down = true;
            if let Some(i) = flapped.take() {
                if let Some(r) = &replicas[i].0 {
                    r.set_fault(Fault::None);
                }
            }
            for r in replicas.iter_mut().filter(|r| r.2 == "a") {
                if let Some(rep) = r.0.take() {
                    rep.shutdown().await;
                }
            }
            println!(
                "  t={:>4.1}s zone a down (replicas killed)",
                now.as_secs_f64()
            );
        }
        if zone_down && !zone_restored && now >= zone_up_at {
            zone_restored = true;
            for r in replicas.iter_mut().filter(|r| r.2 == "a") {
                match start_replica(&r.1, r.2, Some(r.3)).await {
                    Ok(rep) => r.0 = Some(rep),
                    Err(e) => println!("  cannot restart {}: {e}", r.1),
                }
            }
            println!("  t={:>4.1}s zone a restarted", now.as_secs_f64());
        }

        // Reloads with alternating limits; once, a broken file first.
        if now >= next_reload {
            next_reload += Duration::from_secs(4);
            if !bad_reload_done && now >= bad_reload_at {
                bad_reload_done = true;
                write_config(&path, "[server]\nlisten = []\n[[upstream]]\nname = \"\"\n");
                levee.signal("-HUP");
                tokio::time::sleep(Duration::from_millis(300)).await;
                println!(
                    "  t={:>4.1}s invalid config written and SIGHUP sent",
                    now.as_secs_f64()
                );
            }
            reload_limit = if reload_limit == WORKERS {
                WORKERS - 1
            } else {
                WORKERS
            };
            let qt = if reload_limit == WORKERS { 100 } else { 150 };
            write_config(&path, &config_text(&backends, reload_limit, qt));
            if levee.signal("-HUP") {
                reloads_sent += 1;
            }
        }

        if now >= next_report {
            next_report += Duration::from_secs(10);
            let sample = (now.as_secs(), levee.rss_kib(), levee.fds());
            rss.push(sample);
            let st = status(&admin_client, levee.admin).await;
            let (ok, shed, done) = (
                counts.ok.load(Ordering::Relaxed),
                counts.shed.load(Ordering::Relaxed),
                counts.done.load(Ordering::Relaxed),
            );
            let (dok, dshed, ddone) = (
                ok - last_counts.0,
                shed - last_counts.1,
                done - last_counts.2,
            );
            last_counts = (ok, shed, done);
            println!(
                "t={:>4}s sent={} done={} | last 10 s: {:.0} answers/s, 2xx {:.0}/s, 503 {:.0}/s | 5xx {} transport {} hung {} | levee rss {} fds {} | status {:?}",
                now.as_secs(),
                counts.sent.load(Ordering::Relaxed),
                done,
                ddone as f64 / 10.0,
                dok as f64 / 10.0,
                dshed as f64 / 10.0,
                counts.clean_5xx.load(Ordering::Relaxed),
                counts.transport.load(Ordering::Relaxed),
                counts.hung.load(Ordering::Relaxed),
                mib(sample.1),
                sample.2,
                st
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let load_end = start.elapsed();
    let rss_under_load = (load_end.as_secs(), levee.rss_kib(), levee.fds());
    rss.push(rss_under_load);
    println!(
        "soak: load stopped at {:.1} s; waiting for the last answers",
        load_end.as_secs_f64()
    );

    // Every request must finish (each has its own 15 s deadline).
    let drain_deadline = Instant::now() + REQUEST_DEADLINE + Duration::from_secs(5);
    while !tasks.is_empty() && Instant::now() < drain_deadline {
        let _ = tokio::time::timeout(Duration::from_millis(200), tasks.join_next()).await;
    }
    let unfinished = tasks.len();
    tasks.abort_all();
    for r in replicas.iter().filter_map(|r| r.0.as_ref()) {
        r.set_fault(Fault::None);
    }

    // levee idle again: nothing in flight, nothing queued.
    let mut idle = None;
    let mut last_status = None;
    for _ in 0..50 {
        last_status = status(&admin_client, levee.admin).await;
        if let Some((0, 0, _)) = last_status {
            idle = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = admin_get(&admin_client, levee.admin, "/metrics")
        .await
        .unwrap_or_default();
    let reload_ok =
        metric(&metrics, "levee_config_reloads_total{result=\"success\"}").unwrap_or(0.0);
    let reload_failed =
        metric(&metrics, "levee_config_reloads_total{result=\"failure\"}").unwrap_or(0.0);
    let rss_idle = levee.rss_kib();
    // Without traffic the level must come down once the window and cooldown pass.
    let idle_at = Instant::now();
    let mut level_after = String::new();
    while idle_at.elapsed() < Duration::from_secs(12) {
        if let Some((_, _, level)) = status(&admin_client, levee.admin).await {
            level_after = level;
            if level_after == "safe" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let level_secs = idle_at.elapsed().as_secs_f64();

    // SIGTERM: clean exit within the grace period.
    let alive_before_term = matches!(levee.child.try_wait(), Ok(None));
    levee.signal("-TERM");
    let term_at = Instant::now();
    let mut exit = None;
    while term_at.elapsed() < Duration::from_secs(8) {
        if let Ok(Some(status)) = levee.child.try_wait() {
            exit = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The figures.
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (total, done) = (c(&counts.sent), c(&counts.done));
    let (ok, shed, clean, other) = (
        c(&counts.ok),
        c(&counts.shed),
        c(&counts.clean_5xx),
        c(&counts.other_status),
    );
    let (transport, hung, saturated) =
        (c(&counts.transport), c(&counts.hung), c(&counts.saturated));
    let l = lat.lock().unwrap();
    let q =
        |h: &Histogram<u64>, p: f64| format!("{:.1} ms", h.value_at_quantile(p) as f64 / 1000.0);
    let under_load: Vec<&(u64, u64, usize)> = rss.iter().filter(|s| s.0 >= 10).collect();
    let rss_first = under_load.first().map_or(rss[0].1, |s| s.1);
    let rss_last = rss_under_load.1;
    let rss_max = rss.iter().map(|s| s.1).max().unwrap_or(0);
    let rss_bound = rss_first + rss_first / 5 + 8 * 1024;

    println!();
    println!(
        "=== soak summary ({:.0} s of load at {rate:.0} req/s, {factor}x capacity)",
        load_end.as_secs_f64()
    );
    println!(
        "requests: {total} sent, {done} finished, {unfinished} unfinished | 2xx {ok} ({:.1}/s), 503 {shed}, other 5xx {clean}, other status {other} | transport errors {transport}, hung {hung}, generator saturated {saturated}",
        ok as f64 / load_end.as_secs_f64()
    );
    println!("statuses: {:?}", l.by_status);
    if !l.errors.is_empty() {
        println!("transport errors, first distinct: {:?}", l.errors);
    }
    println!(
        "failures (5xx but 503, transport, hung) by second: {}",
        l.failures_by_second
            .iter()
            .map(|(s, n)| format!("{s}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "latency: 2xx p50 {} p99 {} max {} | 503 p50 {} p99 {}",
        q(&l.ok, 0.5),
        q(&l.ok, 0.99),
        q(&l.ok, 1.0),
        q(&l.shed, 0.5),
        q(&l.shed, 0.99)
    );
    println!(
        "chaos: {flaps} backend flaps, zone a down {:.0}-{:.0} s, {reloads_sent} SIGHUP reloads sent (+1 invalid); levee counted {reload_ok} successful and {reload_failed} failed reloads (the file watcher reloads too)",
        zone_down_at.as_secs_f64(),
        zone_up_at.as_secs_f64()
    );
    println!(
        "levee: in flight/queued/level after the load {:?}; level {level_after} {level_secs:.1} s later; {} panics and {} ERROR lines logged",
        last_status,
        levee.panics.load(Ordering::Relaxed),
        levee.errors_logged.load(Ordering::Relaxed)
    );
    println!(
        "rss (every 10 s: t, VmRSS, fds): {}",
        rss.iter()
            .map(|(t, kib, fds)| format!("{t}s {} {fds}", mib(*kib)))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!(
        "rss: first under load {}, last under load {}, max {}, idle after {}; bound {}",
        mib(rss_first),
        mib(rss_last),
        mib(rss_max),
        mib(rss_idle),
        mib(rss_bound)
    );
    println!(
        "sigterm: {}",
        exit.map_or("did not exit within 8 s".into(), |s| format!(
            "{s} after {} ms",
            term_at.elapsed().as_millis()
        ))
    );

    let checks = [
        ("every request finished", unfinished == 0 && done == total),
        (
            "no request lost (transport error) or hung",
            transport == 0 && hung == 0,
        ),
        ("generator kept up", saturated == 0),
        ("only 2xx, 503 and clean 5xx", other == 0),
        ("requests were served", ok > 0 && shed > 0),
        ("levee idle after the load", idle.is_some()),
        ("level back to safe without traffic", level_after == "safe"),
        (
            "levee alive until SIGTERM, no panic",
            alive_before_term && levee.panics.load(Ordering::Relaxed) == 0,
        ),
        (
            "reloads succeeded",
            reload_ok >= reloads_sent as f64 / 2.0 && reload_failed >= 1.0,
        ),
        ("rss within noise", rss_last <= rss_bound),
        ("clean exit on SIGTERM", exit.is_some_and(|s| s.success())),
    ];
    let mut all = true;
    for (name, pass) in checks {
        println!("check {}: {name}", if pass { "PASS" } else { "FAIL" });
        all &= pass;
    }
    println!("soak {}", if all { "PASSED" } else { "FAILED" });
    Ok(all)
}
