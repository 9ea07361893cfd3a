//! An open-loop HTTP load generator, for `levee demo`, benches and overload tests.
//!
//! Request `i` is *scheduled* at `start + i / rate` whatever happened to the
//! requests before it, and its latency is measured from that scheduled instant
//! to the end of its response body. A closed-loop generator (send, wait, send)
//! slows down with the server and so hides the very queueing it should show
//! ("coordinated omission"); here a slow target, or a generator that fell
//! behind, shows up as latency, never as a lower offered rate. tokio's timers
//! tick in milliseconds, so a request may leave up to about 1 ms after its
//! scheduled instant; that delay is part of its measured latency.
//!
//! Concurrency is capped at [`LoadConfig::connections`]: a request scheduled
//! while that many are outstanding is not delayed but counted as `other` with
//! the error `generator saturated`, so the schedule stays honest and memory stays
//! bounded. Sending stops at [`LoadConfig::duration`]; stragglers get until
//! `duration + timeout`, then are dropped and counted as timeouts.
//!
//! Requests go through [`super::client`] (HTTP/1.1, a keep-alive pool of up to
//! `connections` idle connections): the generator shares the machine with what it
//! measures, so it must cost far less per request than a proxy does.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::client::Client;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;

/// Default cap on concurrent requests (and on pooled connections).
pub const DEFAULT_CONNECTIONS: usize = 512;
/// Default per-request deadline, counted from the scheduled send time.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Distinct error messages kept in [`Report::errors_sample`].
const ERRORS_SAMPLE_CAP: usize = 8;
/// Highest latency the histograms resolve, in microseconds (one hour); above it they saturate.
const HISTOGRAM_MAX_US: u64 = 3_600_000_000;

/// What to send, where, and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadConfig {
    /// Address of the proxy (or replica) under test.
    pub target: SocketAddr,
    /// Path and query of every request, starting with `/`.
    pub path: String,
    /// Requests per second, scheduled evenly; must be finite and positive.
    pub rate: f64,
    /// How long to keep sending.
    pub duration: Duration,
    /// Most requests outstanding at once, and most idle connections kept; `0` counts as `1`.
    pub connections: usize,
    /// Per-request deadline from its scheduled time; also the grace for stragglers.
    pub timeout: Duration,
    /// Extra request headers, e.g. `("x-priority", "low")`.
    pub headers: Vec<(String, String)>,
}

impl LoadConfig {
    /// `GET /` at `rate` for `duration`, with the default cap and timeout and no extra headers.
    pub fn new(target: SocketAddr, rate: f64, duration: Duration) -> Self {
        LoadConfig {
            target,
            path: "/".to_owned(),
            rate,
            duration,
            connections: DEFAULT_CONNECTIONS,
            timeout: DEFAULT_TIMEOUT,
            headers: Vec::new(),
        }
    }
}

/// One second of a run. `sent` counts requests scheduled in that second; the
/// outcomes count responses that *completed* in it, so under overload a tick
/// reports answers to requests sent earlier. The last tick may be shorter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    /// Seconds since start at the end of this tick (1 for the first).
    pub second: u64,
    /// Requests scheduled, including those refused as `generator saturated`.
    pub sent: u64,
    /// `2xx` responses.
    pub ok: u64,
    /// `503` responses.
    pub shed: u64,
    /// Other statuses, transport errors, timeouts and saturation.
    pub other: u64,
    /// Median latency of `2xx` responses (zero if none).
    pub ok_p50: Duration,
    /// 99th percentile latency of `2xx` responses (zero if none).
    pub ok_p99: Duration,
    /// 99th percentile latency of `503` responses (zero if none).
    pub shed_p99: Duration,
    /// The last `"level"` seen in a `503` JSON body during this tick.
    pub level: Option<String>,
}

/// The whole run. `sent == ok + shed + other`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Requests scheduled, including those refused as `generator saturated`.
    pub sent: u64,
    /// `2xx` responses.
    pub ok: u64,
    /// `503` responses.
    pub shed: u64,
    /// Other statuses, transport errors, timeouts and saturation.
    pub other: u64,
    /// Median latency of `2xx` responses.
    pub ok_p50: Duration,
    /// 99th percentile latency of `2xx` responses.
    pub ok_p99: Duration,
    /// Highest latency of a `2xx` response.
    pub ok_max: Duration,
    /// Median latency of `503` responses.
    pub shed_p50: Duration,
    /// 99th percentile latency of `503` responses.
    pub shed_p99: Duration,
    /// Requests actually issued (not refused as saturated) per second of sending.
    pub achieved_rate: f64,
    /// `2xx` responses per second of sending.
    pub ok_rate: f64,
    /// Up to 8 distinct error messages, in order of first appearance.
    pub errors_sample: Vec<String>,
}

/// Runs the load described by `cfg`, calling `on_tick` once per second of the
/// run (and once more for a last partial second), and returns the totals.
///
/// Returns within about `duration + timeout`. A bad `path`, header or `rate`
/// sends nothing and returns a report whose `errors_sample` says why.
pub async fn run(cfg: LoadConfig, mut on_tick: impl FnMut(&Tick) + Send) -> Report {
    let mut sender = match Sender::new(&cfg) {
        Ok(sender) => sender,
        Err(error) => {
            return Report {
                errors_sample: vec![error],
                ..Report::default()
            }
        }
    };
    let mut rec = Recorder::new();
    let start = Instant::now();
    let schedule = Schedule {
        start,
        rate: cfg.rate,
        duration: cfg.duration,
    };
    let hard_stop = start + cfg.duration + cfg.timeout;
    let (mut next, mut second, mut last_send) = (0u64, 1u64, start);
    let sleep = tokio::time::sleep_until(start);
    tokio::pin!(sleep);
    loop {
        let next_send = schedule.at(next);
        if next_send.is_none() && sender.tasks.is_empty() {
            break;
        }
        let wake = next_send
            .unwrap_or(hard_stop)
            .min(schedule.tick_end(second))
            .min(hard_stop);
        if sleep.deadline() != wake {
            sleep.as_mut().reset(wake);
        }
        tokio::select! {
            Some(joined) = sender.tasks.join_next(), if !sender.tasks.is_empty() => {
                rec.record(joined_outcome(joined));
                continue;
            }
            () = &mut sleep => {}
        }
        let now = Instant::now();
        // Send what is due, each counted in the tick it was scheduled in.
        loop {
            let tick_end = schedule.tick_end(second);
            while let Some(at) = schedule.at(next).filter(|&at| at <= now && at < tick_end) {
                sender.send(at, &mut rec);
                (next, last_send) = (next + 1, now);
            }
            if tick_end > now {
                break;
            }
            on_tick(&rec.take_tick(second));
            second += 1;
        }
        if now >= hard_stop {
            sender.abandon(&mut rec);
            break;
        }
    }
    if rec.tick.count() > 0 {
        on_tick(&rec.take_tick(second));
    }
    rec.report((last_send - start).max(cfg.duration).as_secs_f64())
}

/// When each request is due: request `i` at `start + i / rate`, while before `start + duration`.
struct Schedule {
    start: Instant,
    rate: f64,
    duration: Duration,
}

impl Schedule {
    fn at(&self, i: u64) -> Option<Instant> {
        let offset = Duration::try_from_secs_f64(i as f64 / self.rate).ok()?;
        (offset < self.duration).then(|| self.start + offset)
    }

    fn tick_end(&self, second: u64) -> Instant {
        self.start + Duration::from_secs(second)
    }
}

/// Issues requests, each in its own task holding one of `connections` slots.
///
/// The pool keeps up to `connections` idle connections; open sockets can briefly
/// exceed that while a connect that lost the race to a freed connection completes.
struct Sender {
    client: Arc<Client>,
    slots: Arc<Semaphore>,
    timeout: Duration,
    tasks: JoinSet<Outcome>,
}

impl Sender {
    fn new(cfg: &LoadConfig) -> Result<Self, String> {
        if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
            return Err(format!(
                "invalid rate {}: must be finite and positive",
                cfg.rate
            ));
        }
        if !cfg.path.starts_with('/') || PathAndQuery::try_from(cfg.path.as_str()).is_err() {
            return Err(format!(
                "invalid path {:?}: must be a path and query",
                cfg.path
            ));
        }
        let mut headers = Vec::with_capacity(cfg.headers.len());
        for (name, value) in &cfg.headers {
            let bad = |e: &dyn std::fmt::Display| format!("invalid header {name:?}: {e}");
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| bad(&e))?;
            headers.push((name, HeaderValue::from_str(value).map_err(|e| bad(&e))?));
        }
        let client = Client::new(cfg.target, &cfg.path, &headers, cfg.connections);
        let slots = Arc::new(Semaphore::new(
            cfg.connections.clamp(1, Semaphore::MAX_PERMITS),
        ));
        Ok(Sender {
            client: Arc::new(client),
            slots,
            timeout: cfg.timeout,
            tasks: JoinSet::new(),
        })
    }

    /// Issues the request scheduled `at`, or counts it saturated if no slot is free.
    fn send(&mut self, at: Instant, rec: &mut Recorder) {
        let slot = Arc::clone(&self.slots).try_acquire_owned().ok();
        rec.sent(slot.is_some());
        if let Some(slot) = slot {
            let deadline = at + self.timeout;
            self.tasks
                .spawn(issue(self.client.clone(), at, deadline, slot));
        }
    }

    /// Records what finished, counts the rest as timeouts, and aborts them.
    fn abandon(&mut self, rec: &mut Recorder) {
        while let Some(joined) = self.tasks.try_join_next() {
            rec.record(joined_outcome(joined));
        }
        for _ in 0..self.tasks.len() {
            rec.record(Outcome::Failed(Failure::Timeout));
        }
        self.tasks.abort_all();
    }
}

/// How one request ended; latencies run from the scheduled send time.
enum Outcome {
    Ok(Duration),
    Shed(Duration, Option<String>),
    Failed(Failure),
}

enum Failure {
    Saturated,
    Timeout,
    Status(StatusCode),
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Saturated => f.write_str("generator saturated"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Status(status) => write!(f, "status {status}"),
            Failure::Transport(error) => f.write_str(error),
        }
    }
}

/// Sends one request and reads its whole response; the slot is held until the end.
async fn issue(
    client: Arc<Client>,
    scheduled: Instant,
    deadline: Instant,
    _slot: OwnedSemaphorePermit,
) -> Outcome {
    const SHED: u16 = StatusCode::SERVICE_UNAVAILABLE.as_u16();
    match tokio::time::timeout_at(deadline, client.get(&[SHED])).await {
        Err(_) => Outcome::Failed(Failure::Timeout),
        Ok(Err(message)) => Outcome::Failed(Failure::Transport(message)),
        Ok(Ok(answer)) => match StatusCode::from_u16(answer.status) {
            Ok(status) if status.is_success() => Outcome::Ok(scheduled.elapsed()),
            Ok(StatusCode::SERVICE_UNAVAILABLE) => Outcome::Shed(
                scheduled.elapsed(),
                answer.body.as_deref().and_then(parse_level),
            ),
            Ok(status) => Outcome::Failed(Failure::Status(status)),
            Err(_) => Outcome::Failed(Failure::Transport(format!(
                "invalid status {}",
                answer.status
            ))),
        },
    }
}

fn joined_outcome(joined: Result<Outcome, JoinError>) -> Outcome {
    joined.unwrap_or_else(|e| Outcome::Failed(Failure::Transport(format!("request task: {e}"))))
}

/// Finds `"level":"X"` in a shed body without a JSON parser: sheds must stay cheap to count.
fn parse_level(body: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"level\"";
    let at = body.windows(KEY.len()).position(|w| w == KEY)?;
    let rest = body[at + KEY.len()..]
        .trim_ascii_start()
        .strip_prefix(b":")?;
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok().map(str::to_owned)
}

/// Counts and latency histograms (microseconds) for a tick or a whole run.
struct Window {
    sent: u64,
    ok: u64,
    shed: u64,
    other: u64,
    ok_us: Histogram<u64>,
    shed_us: Histogram<u64>,
    level: Option<String>,
}

impl Window {
    fn new() -> Self {
        // Constant bounds that `new_with_bounds` accepts; it cannot fail.
        let hist = || Histogram::new_with_bounds(1, HISTOGRAM_MAX_US, 3).expect("valid bounds");
        Window {
            sent: 0,
            ok: 0,
            shed: 0,
            other: 0,
            ok_us: hist(),
            shed_us: hist(),
            level: None,
        }
    }

    fn count(&self) -> u64 {
        self.sent + self.ok + self.shed + self.other
    }

    fn record(&mut self, outcome: &Outcome) {
        let micros = |d: &Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        match outcome {
            Outcome::Ok(latency) => {
                self.ok += 1;
                self.ok_us.saturating_record(micros(latency));
            }
            Outcome::Shed(latency, level) => {
                self.shed += 1;
                self.shed_us.saturating_record(micros(latency));
                if level.is_some() {
                    self.level.clone_from(level);
                }
            }
            Outcome::Failed(_) => self.other += 1,
        }
    }
}

fn quantile(hist: &Histogram<u64>, q: f64) -> Duration {
    Duration::from_micros(hist.value_at_quantile(q))
}

/// Folds outcomes into the current tick and the whole run.
struct Recorder {
    tick: Window,
    total: Window,
    saturated: u64,
    errors: Vec<String>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            tick: Window::new(),
            total: Window::new(),
            saturated: 0,
            errors: Vec::new(),
        }
    }

    /// Counts a scheduled request; one refused for want of a slot fails at once.
    fn sent(&mut self, issued: bool) {
        self.tick.sent += 1;
        self.total.sent += 1;
        if !issued {
            self.saturated += 1;
            self.record(Outcome::Failed(Failure::Saturated));
        }
    }

    fn record(&mut self, outcome: Outcome) {
        self.tick.record(&outcome);
        self.total.record(&outcome);
        if let Outcome::Failed(failure) = outcome {
            if self.errors.len() < ERRORS_SAMPLE_CAP {
                let msg = failure.to_string();
                if !self.errors.contains(&msg) {
                    self.errors.push(msg);
                }
            }
        }
    }

    fn take_tick(&mut self, second: u64) -> Tick {
        let t = &mut self.tick;
        let tick = Tick {
            second,
            sent: t.sent,
            ok: t.ok,
            shed: t.shed,
            other: t.other,
            ok_p50: quantile(&t.ok_us, 0.5),
            ok_p99: quantile(&t.ok_us, 0.99),
            shed_p99: quantile(&t.shed_us, 0.99),
            level: t.level.take(),
        };
        (t.sent, t.ok, t.shed, t.other) = (0, 0, 0, 0);
        t.ok_us.reset();
        t.shed_us.reset();
        tick
    }

    fn report(self, window_secs: f64) -> Report {
        let t = &self.total;
        let per_second = |n: u64| {
            if window_secs > 0.0 {
                n as f64 / window_secs
            } else {
                0.0
            }
        };
        Report {
            sent: t.sent,
            ok: t.ok,
            shed: t.shed,
            other: t.other,
            ok_p50: quantile(&t.ok_us, 0.5),
            ok_p99: quantile(&t.ok_us, 0.99),
            ok_max: Duration::from_micros(t.ok_us.max()),
            shed_p50: quantile(&t.shed_us, 0.5),
            shed_p99: quantile(&t.shed_us, 0.99),
            achieved_rate: per_second(t.sent - self.saturated),
            ok_rate: per_second(t.ok),
            errors_sample: self.errors,
        }
    }
}

/// `12.1ms` below a second, `1.28s` above, `-` when nothing was measured.
fn fmt_latency(d: Duration, count: u64) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if count == 0 {
        "-".to_owned()
    } else if ms < 1000.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

/// One aligned line per tick, e.g.
/// `t=3s    rate=2000/s   2xx=1000    503=998     other=2      p99(2xx)=12.1ms    p99(503)=0.4ms     level=danger`.
pub fn format_tick(t: &Tick) -> String {
    format!(
        "{:<7} {:<13} {:<11} {:<11} {:<12} {:<18} {:<18} level={}",
        format!("t={}s", t.second),
        format!("rate={}/s", t.sent),
        format!("2xx={}", t.ok),
        format!("503={}", t.shed),
        format!("other={}", t.other),
        format!("p99(2xx)={}", fmt_latency(t.ok_p99, t.ok)),
        format!("p99(503)={}", fmt_latency(t.shed_p99, t.shed)),
        t.level.as_deref().unwrap_or("-"),
    )
}

/// A short multi-line summary of a run.
pub fn format_report(r: &Report) -> String {
    let mut out = format!(
        "sent={} ({:.1}/s)  2xx={} ({:.1}/s)  503={}  other={}\n\
         2xx latency: p50={} p99={} max={}\n\
         503 latency: p50={} p99={}",
        r.sent,
        r.achieved_rate,
        r.ok,
        r.ok_rate,
        r.shed,
        r.other,
        fmt_latency(r.ok_p50, r.ok),
        fmt_latency(r.ok_p99, r.ok),
        fmt_latency(r.ok_max, r.ok),
        fmt_latency(r.shed_p50, r.shed),
        fmt_latency(r.shed_p99, r.shed),
    );
    if !r.errors_sample.is_empty() {
        let _ = write!(out, "\nerrors: {}", r.errors_sample.join("; "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::replica::{Fault, Replica, ReplicaConfig};

    /// The load tests measure latency on a shared 2-core machine: run them one at a time.
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    async fn replica(workers: usize, service_ms: u64) -> Replica {
        let service_time = Duration::from_millis(service_ms);
        let cfg = ReplicaConfig {
            name: "r1".into(),
            zone: "a".into(),
            workers,
            service_time,
        };
        Replica::start(cfg).await.unwrap()
    }

    fn load(r: &Replica, rate: f64, duration_ms: u64) -> LoadConfig {
        let mut cfg = LoadConfig::new(r.addr(), rate, Duration::from_millis(duration_ms));
        cfg.path = "/work".into();
        cfg.timeout = Duration::from_secs(2);
        cfg
    }

    fn assert_sums(report: &Report) {
        assert_eq!(
            report.sent,
            report.ok + report.shed + report.other,
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn under_capacity_every_request_is_fast() {
        let _serial = SERIAL.lock().await;
        let r = replica(4, 10).await; // 400 req/s of capacity
        let mut ticks = Vec::new();
        let report = run(load(&r, 200.0, 1000), |t| ticks.push(t.clone())).await;
        assert_sums(&report);
        assert_eq!(
            (report.sent, report.ok),
            (200, 200),
            "{}",
            format_report(&report)
        );
        assert!(
            report.ok_p99 < Duration::from_millis(50),
            "{}",
            format_report(&report)
        );
        assert!(
            report.ok_p50 >= Duration::from_millis(10),
            "{}",
            format_report(&report)
        );
        assert!((report.achieved_rate - 200.0).abs() < 20.0, "{report:?}");
        assert_eq!(ticks.iter().map(|t| t.sent).sum::<u64>(), 200, "{ticks:?}");
        assert_eq!(ticks.iter().map(|t| t.ok).sum::<u64>(), 200, "{ticks:?}");
        assert_eq!(ticks[0].second, 1);
    }

    #[tokio::test]
    async fn overload_shows_as_latency_not_as_a_lower_rate() {
        let _serial = SERIAL.lock().await;
        let r = replica(4, 10).await;
        let mut cfg = load(&r, 2000.0, 500);
        cfg.connections = 256;
        let t0 = Instant::now();
        let report = run(cfg, |_| {}).await;
        assert_sums(&report);
        assert_eq!(report.sent, 1000);
        // The replica queues: answers wait for ~256 / 400 req/s, far above the 10 ms service time.
        assert!(
            report.ok_p99 > Duration::from_millis(100),
            "{}",
            format_report(&report)
        );
        assert!(
            report
                .errors_sample
                .contains(&"generator saturated".to_owned()),
            "{report:?}"
        );
        assert!(
            t0.elapsed() < Duration::from_millis(2600),
            "took {:?}",
            t0.elapsed()
        );
        assert!(r.stats().peak_inflight <= 256, "{:?}", r.stats());
    }

    #[tokio::test]
    async fn latency_counts_from_the_schedule_when_the_generator_falls_behind() {
        let _serial = SERIAL.lock().await;
        let r = replica(4, 1).await;
        // Freeze this single-threaded runtime for 200 ms, generator and replica alike:
        // the ~40 requests due meanwhile go out late and must report that delay.
        let freeze = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::thread::sleep(Duration::from_millis(200));
        });
        let report = run(load(&r, 200.0, 500), |_| {}).await;
        freeze.await.unwrap();
        assert_eq!(
            (report.sent, report.ok),
            (100, 100),
            "{}",
            format_report(&report)
        );
        assert!(
            report.ok_max >= Duration::from_millis(150),
            "{}",
            format_report(&report)
        );
    }

    #[tokio::test]
    async fn stragglers_are_bounded_and_saturation_is_counted() {
        let _serial = SERIAL.lock().await;
        let r = replica(1, 0).await;
        r.set_fault(Fault::Hang);
        let mut cfg = load(&r, 100.0, 200);
        (cfg.connections, cfg.timeout) = (4, Duration::from_millis(200));
        let t0 = Instant::now();
        let report = run(cfg, |_| {}).await;
        assert!(
            t0.elapsed() < Duration::from_millis(700),
            "took {:?}",
            t0.elapsed()
        );
        assert_eq!(
            (report.sent, report.other, report.ok),
            (20, 20, 0),
            "{report:?}"
        );
        let errors = ["generator saturated".to_owned(), "timeout".to_owned()];
        assert_eq!(report.errors_sample, errors);
        assert_eq!(report.achieved_rate, 4.0 / 0.2);
        // Abandoned requests close their connections, so the replica sees them leave.
        for _ in 0..200 {
            if r.stats().inflight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(r.stats().inflight, 0);
    }

    #[tokio::test]
    async fn bad_config_sends_nothing() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let report = run(LoadConfig::new(addr, 0.0, Duration::from_secs(1)), |_| {}).await;
        assert_eq!(report.sent, 0);
        assert!(
            report.errors_sample[0].contains("invalid rate"),
            "{report:?}"
        );
        let mut cfg = LoadConfig::new(addr, 10.0, Duration::from_secs(1));
        cfg.headers.push(("bad header".into(), "x".into()));
        assert!(run(cfg, |_| {}).await.errors_sample[0].contains("invalid header"));
    }

    #[test]
    fn level_is_read_from_shed_bodies() {
        let body =
            br#"{"error":"overloaded","upstream":"mcp","level" : "danger","reason":"queue"}"#;
        assert_eq!(parse_level(body).as_deref(), Some("danger"));
        assert_eq!(parse_level(b"overloaded"), None);
        assert_eq!(parse_level(br#"{"level":"#), None);
    }

    #[test]
    fn formats_ticks_and_reports() {
        let tick = Tick {
            second: 3,
            sent: 2000,
            ok: 1000,
            shed: 998,
            other: 2,
            ok_p99: Duration::from_micros(12_100),
            shed_p99: Duration::from_micros(400),
            level: Some("danger".into()),
            ..Tick::default()
        };
        let line = format_tick(&tick);
        let words: Vec<_> = line.split_whitespace().collect();
        let expected =
            "t=3s rate=2000/s 2xx=1000 503=998 other=2 p99(2xx)=12.1ms p99(503)=0.4ms level=danger";
        assert_eq!(words.join(" "), expected);
        assert_eq!(
            line.find("rate="),
            format_tick(&Tick::default()).find("rate=")
        );
        let report = Report {
            ok: 1,
            ok_max: Duration::from_millis(1280),
            ..Report::default()
        };
        assert!(
            format_report(&report).contains("max=1.28s"),
            "{}",
            format_report(&report)
        );
    }

    #[test]
    fn run_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let cfg = LoadConfig::new("127.0.0.1:9".parse().unwrap(), 1.0, Duration::ZERO);
        assert_send(&run(cfg, |_| {}));
    }
}
