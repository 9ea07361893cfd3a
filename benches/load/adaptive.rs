//! The adaptive section (issue 11): limits that find themselves, judged from the
//! replicas' side.
//!
//! - **one**: the replica, 16 workers x 20 ms, behind levee with
//!   `max_inflight = 64`, at 2x its capacity: first with that static limit (the issue's
//!   complaint: the replica queues 48 inside itself), then with `[upstream.adaptive]
//!   target_p95_ms = 30`. In the second half of the run: the replica's own queue (its
//!   exact peak, and samples every 10 ms), goodput, and admitted p99 against the
//!   replica's unloaded p99.
//! - **shared**: two such replicas reporting their own load (`endpoint-load-metrics`),
//!   three levee processes (`max_inflight = 32` each, `load_target` set) sharing them,
//!   1.9x the replicas' capacity offered across the three: each replica's own queue in
//!   the second half, and goodput.
//! - **recover**: the one-replica setup at 2x; the replica then takes 40 ms a request
//!   for a while (the limit falls), then 20 ms again: how long until the limit is back
//!   within 10 % of what it was before.
//!
//! Each run's load is two open-loop runs back to back (the second starts as the first
//! stops sending), so the second half's latencies and goodput are its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use levee::demo::load::{self, Report};
use levee::demo::replica::{LoadReport, Replica};
use serde_json::{json, Value};

use crate::proxies::{self, Kind, Running, Setup, Tools};
use crate::report::{median, ms, Results, Target, Verdict};
use crate::{open_loop, replica_in, settle, start, Opts, Plan};

/// The replica: 16 workers x 20 ms.
pub const WORKERS: usize = 16;
pub const SERVICE_TIME: Duration = Duration::from_millis(20);
/// What the replica takes a request while it is slow (the recover case).
pub const SLOW_SERVICE_TIME: Duration = Duration::from_millis(40);
/// The one and recover cases: a static limit far above the replica's 16 workers.
pub const MAX_INFLIGHT: u32 = 64;
pub const TARGET_P95_MS: u64 = 30;
pub const MIN_INFLIGHT: u32 = 4;
pub const FACTOR: f64 = 2.0;
/// The shared case.
pub const SHARED_REPLICAS: usize = 2;
pub const INSTANCES: usize = 3;
pub const SHARED_MAX_INFLIGHT: u32 = 32;
pub const SHARED_FACTOR: f64 = 1.9;
/// Reported utilization the shared case holds each replica at: 1.2 x 16 = 19 in
/// flight, 3 of them waiting.
pub const LOAD_TARGET: f64 = 1.2;
/// levee's own queue, as in the overload section: small and short, shed early.
const QUEUE_DEPTH: u32 = 8;
const QUEUE_TIMEOUT: Duration = Duration::from_millis(10);
/// The replica's unloaded latency is measured at this rate, directly.
const UNLOADED_RATE: f64 = 200.0;
/// How often the replicas' queues and levee's limits are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
const STATUS_EVERY: u32 = 10;

/// Targets.
pub const ONE_QUEUE_MAX: usize = 4;
pub const SHARED_QUEUE_MAX: usize = 8;
pub const GOODPUT: f64 = 0.9;
pub const P99_RATIO: f64 = 1.5;
pub const RECOVER_WITHIN: Duration = Duration::from_secs(10);
pub const RECOVER_SHARE: f64 = 0.9;

/// Run lengths.
#[derive(Debug, Clone, Copy)]
pub struct Lengths {
    /// A whole one or shared run (two halves).
    pub run: Duration,
    /// The recover case: fast, slow, then at most this long to recover.
    pub steady: Duration,
    pub slow: Duration,
    pub watch: Duration,
}

impl Lengths {
    pub fn new(quick: bool) -> Lengths {
        if quick {
            Lengths {
                run: Duration::from_secs(6),
                steady: Duration::from_secs(4),
                slow: Duration::from_secs(2),
                watch: RECOVER_WITHIN + Duration::from_secs(2),
            }
        } else {
            Lengths {
                run: Duration::from_secs(20),
                steady: Duration::from_secs(10),
                slow: Duration::from_secs(5),
                watch: RECOVER_WITHIN + Duration::from_secs(5),
            }
        }
    }
}

/// The replica measured directly, unloaded.
#[derive(Debug, Clone, Copy)]
pub struct Base {
    pub p50: Duration,
    pub p99: Duration,
    /// One replica's capacity: workers / p50.
    pub capacity: f64,
}

/// The second half of one run.
#[derive(Debug, Clone)]
pub struct Half {
    pub offered: f64,
    /// 2xx per second of sending.
    pub goodput: f64,
    pub ok_p50: Duration,
    pub ok_p99: Duration,
    pub shed_rate: f64,
    pub other: u64,
    /// Per replica: exact peak of its own queue, and the 99th percentile and mean of
    /// the samples.
    pub queue_peak: Vec<usize>,
    pub queue_p99: Vec<usize>,
    pub queue_mean: Vec<f64>,
    /// levee's limits in force (median of the samples), per instance and backend.
    pub limits: Vec<Vec<f64>>,
}

/// One run of the one-replica case.
#[derive(Debug, Clone)]
pub struct OneRun {
    pub rep: usize,
    pub adaptive: bool,
    pub half: Half,
}

#[derive(Debug, Clone)]
pub struct RecoverRun {
    pub rep: usize,
    /// The limit before the replica slowed (median, probes left out).
    pub before: f64,
    /// Lowest while slow.
    pub slow_low: u64,
    /// From the replica's speed-up until the limit was within 10 % of `before`.
    pub recovered_after: Option<Duration>,
    /// The limit at the end of the watch.
    pub after: u64,
}

#[derive(Debug, Clone, Default)]
pub struct AdaptiveResults {
    pub lengths: Option<Lengths>,
    pub base: Option<Base>,
    pub one: Vec<OneRun>,
    /// (repetition, its second half).
    pub shared: Vec<(usize, Half)>,
    pub recover: Vec<RecoverRun>,
}

fn adaptive_toml(load_target: Option<f64>) -> String {
    let mut t = format!(
        "[upstream.adaptive]\ntarget_p95_ms = {TARGET_P95_MS}\nmin_inflight = {MIN_INFLIGHT}\n"
    );
    if let Some(l) = load_target {
        t.push_str(&format!("load_target = {l}\n"));
    }
    t
}

fn setup(backends: &[&Replica], max: u32, adaptive: Option<String>) -> Setup {
    Setup {
        backends: backends.iter().map(|r| r.addr()).collect(),
        threads: crate::THREADS,
        max_conns: Some(max),
        queue_depth: QUEUE_DEPTH,
        queue_timeout: QUEUE_TIMEOUT,
        max_clients: 8192,
        zones: Vec::new(),
        health: None,
        retry_5xx: false,
        early_levels: true,
        tls: None,
        levee_extra: String::new(),
        levee_upstream: adaptive.unwrap_or_default(),
        grpc: false,
    }
}

/// Each replica's queue samples, and each levee's samples of its backends' limits.
type Samples = (Vec<Vec<usize>>, Vec<Vec<Vec<u64>>>);

/// Samples the replicas' queues every 10 ms, and levee's limits every 100 ms, until
/// stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Samples>,
}

impl Sampler {
    fn start(replicas: Vec<Arc<Replica>>, admins: Vec<std::net::SocketAddr>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut queues = vec![Vec::new(); replicas.len()];
            let mut limits: Vec<Vec<Vec<u64>>> = vec![Vec::new(); admins.len()];
            let mut every = tokio::time::interval(SAMPLE_EVERY);
            // Bounded: a run is at most a minute.
            for i in 0..6000u32 {
                every.tick().await;
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                for (q, r) in queues.iter_mut().zip(&replicas) {
                    q.push(r.stats().queued);
                }
                if i % STATUS_EVERY == 0 {
                    for (l, admin) in limits.iter_mut().zip(&admins) {
                        if let Some(v) = backend_limits(*admin).await {
                            l.push(v);
                        }
                    }
                }
            }
            (queues, limits)
        });
        Sampler { stop, task }
    }

    async fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or_default()
    }
}

/// The limit in force of each backend, from levee's `/status`; a backend whose limit is
/// halved for a floor probe reads as 0 (left out of medians).
async fn backend_limits(admin: std::net::SocketAddr) -> Option<Vec<u64>> {
    let status = proxies::admin_json(admin, "/status").await?;
    let backends = status["upstreams"][0]["backends"].as_array()?.clone();
    Some(
        backends
            .iter()
            .map(|b| {
                if b["adaptive"]["probing"] == true {
                    0
                } else {
                    b["limit"].as_u64().unwrap_or(0)
                }
            })
            .collect(),
    )
}

fn quantile(v: &[usize], q: f64) -> usize {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0)
}

/// Medians of the limit samples of each instance and backend (probes left out).
fn limit_medians(samples: &[Vec<Vec<u64>>]) -> Vec<Vec<f64>> {
    samples
        .iter()
        .map(|per_instance| {
            let backends = per_instance.iter().map(Vec::len).max().unwrap_or(0);
            (0..backends)
                .map(|b| {
                    let v: Vec<f64> = per_instance
                        .iter()
                        .filter_map(|s| s.get(b).copied())
                        .filter(|&l| l > 0)
                        .map(|l| l as f64)
                        .collect();
                    if v.is_empty() {
                        0.0
                    } else {
                        median(v)
                    }
                })
                .collect()
        })
        .collect()
}

/// Runs `rate` split evenly over `targets` for `run`, in two halves; returns the
/// second halves' reports and what the sampler saw during them.
async fn two_halves(
    targets: &[std::net::SocketAddr],
    admins: &[std::net::SocketAddr],
    replicas: &[Arc<Replica>],
    rate: f64,
    run: Duration,
) -> (Vec<Report>, Vec<Vec<usize>>, Vec<Vec<Vec<u64>>>) {
    let half = run / 2;
    let each = rate / targets.len() as f64;
    let first: Vec<_> = targets
        .iter()
        .map(|&t| tokio::spawn(load::run(open_loop(t, "/work", each, half), |_| {})))
        .collect();
    tokio::time::sleep(half).await;
    for r in replicas {
        r.reset_peak();
    }
    let sampler = Sampler::start(replicas.to_vec(), admins.to_vec());
    let second: Vec<_> = targets
        .iter()
        .map(|&t| tokio::spawn(load::run(open_loop(t, "/work", each, half), |_| {})))
        .collect();
    let mut reports = Vec::new();
    for s in second {
        reports.push(s.await.unwrap_or_default());
    }
    let (queues, limits) = sampler.finish().await;
    for f in first {
        let _ = f.await;
    }
    (reports, queues, limits)
}

fn half_of(
    reports: &[Report],
    replicas: &[Arc<Replica>],
    (queues, limits): (&[Vec<usize>], &[Vec<Vec<u64>>]),
    offered: f64,
    secs: f64,
) -> Half {
    Half {
        offered,
        goodput: reports.iter().map(|r| r.ok_rate).sum(),
        ok_p50: reports.iter().map(|r| r.ok_p50).max().unwrap_or_default(),
        ok_p99: reports.iter().map(|r| r.ok_p99).max().unwrap_or_default(),
        shed_rate: reports.iter().map(|r| r.shed as f64).sum::<f64>() / secs.max(1e-9),
        other: reports.iter().map(|r| r.other).sum(),
        queue_peak: replicas.iter().map(|r| r.stats().peak_queued).collect(),
        queue_p99: queues.iter().map(|q| quantile(q, 0.99)).collect(),
        queue_mean: queues
            .iter()
            .map(|q| q.iter().sum::<usize>() as f64 / q.len().max(1) as f64)
            .collect(),
        limits: limit_medians(limits),
    }
}

fn print_half(label: &str, h: &Half, capacity: f64) {
    println!(
        "  {label:<26} offered {:>5.0}/s  goodput {:>5.0}/s ({:.1}% of C)  2xx p50 {} p99 {}  503/s {:.0}  other {}  replica queue peak {:?} p99 {:?} mean {}  limits {:?}",
        h.offered,
        h.goodput,
        100.0 * h.goodput / capacity,
        ms(h.ok_p50),
        ms(h.ok_p99),
        h.shed_rate,
        h.other,
        h.queue_peak,
        h.queue_p99,
        h.queue_mean
            .iter()
            .map(|m| format!("{m:.1}"))
            .collect::<Vec<_>>()
            .join("/"),
        h.limits
    );
}

pub async fn section(plan: &Plan, opts: &Opts, tools: &Tools, kinds: &[Kind], res: &mut Results) {
    let _ = plan;
    println!(
        "\n== adaptive: replicas of {WORKERS} workers x {} ms; levee `max_inflight = {MAX_INFLIGHT}`, `target_p95_ms = {TARGET_P95_MS}` (one, recover) and 3 instances x `max_inflight = {SHARED_MAX_INFLIGHT}`, `load_target = {LOAD_TARGET}` over 2 reporting replicas (shared)",
        SERVICE_TIME.as_millis()
    );
    if !kinds.contains(&Kind::Levee) {
        let msg = "adaptive section: levee is not among the targets (--only); skipped".to_owned();
        println!("SKIP {msg}");
        res.notes.push(msg);
        return;
    }
    let lengths = Lengths::new(opts.quick);
    let mut out = AdaptiveResults {
        lengths: Some(lengths),
        ..AdaptiveResults::default()
    };
    let r = Arc::new(replica_in("ad1", "a", WORKERS, SERVICE_TIME).await);
    let unloaded = load::run(
        open_loop(
            r.addr(),
            "/work",
            UNLOADED_RATE,
            lengths.run.min(Duration::from_secs(3)),
        ),
        |_| {},
    )
    .await;
    let p50 = if unloaded.ok_p50.is_zero() {
        SERVICE_TIME
    } else {
        unloaded.ok_p50
    };
    let base = Base {
        p50,
        p99: unloaded.ok_p99,
        capacity: WORKERS as f64 / p50.as_secs_f64(),
    };
    println!(
        "  unloaded (direct, {UNLOADED_RATE:.0} req/s): p50 {} p99 {}; C = {WORKERS} / {} = {:.0} req/s a replica",
        ms(base.p50),
        ms(base.p99),
        ms(base.p50),
        base.capacity
    );
    out.base = Some(base);

    for rep in 1..=opts.reps {
        // One replica at 2x: static, then adaptive.
        for adaptive in [false, true] {
            settle(std::slice::from_ref(&*r)).await;
            let toml = adaptive.then(|| adaptive_toml(None));
            let Some(p) = start(Kind::Levee, &setup(&[&*r], MAX_INFLIGHT, toml), tools, res).await
            else {
                return;
            };
            let rate = FACTOR * base.capacity;
            let admins: Vec<_> = p.admin.into_iter().collect();
            let (reports, queues, limits) = two_halves(
                &[p.addr],
                &admins,
                std::slice::from_ref(&r),
                rate,
                lengths.run,
            )
            .await;
            p.stop().await;
            let secs = (lengths.run / 2).as_secs_f64();
            let half = half_of(
                &reports,
                std::slice::from_ref(&r),
                (&queues, &limits),
                rate,
                secs,
            );
            let label = format!(
                "rep {rep} one, {}",
                if adaptive { "adaptive" } else { "static 64" }
            );
            print_half(&label, &half, base.capacity);
            out.one.push(OneRun {
                rep,
                adaptive,
                half,
            });
        }

        // Two reporting replicas, three levee instances.
        let shared: Vec<Arc<Replica>> = {
            let mut v = Vec::new();
            for i in 0..SHARED_REPLICAS {
                v.push(Arc::new(
                    replica_in(&format!("sh{}", i + 1), "a", WORKERS, SERVICE_TIME).await,
                ));
            }
            v
        };
        for s in &shared {
            s.set_load_report(LoadReport::Utilization);
        }
        let refs: Vec<&Replica> = shared.iter().map(|s| &**s).collect();
        let shared_setup = setup(
            &refs,
            SHARED_MAX_INFLIGHT,
            Some(adaptive_toml(Some(LOAD_TARGET))),
        );
        let mut levees: Vec<Running> = Vec::new();
        for _ in 0..INSTANCES {
            if let Some(p) = start(Kind::Levee, &shared_setup, tools, res).await {
                levees.push(p);
            }
        }
        if levees.len() == INSTANCES {
            let capacity = SHARED_REPLICAS as f64 * base.capacity;
            let rate = SHARED_FACTOR * capacity;
            let addrs: Vec<_> = levees.iter().map(|p| p.addr).collect();
            let admins: Vec<_> = levees.iter().filter_map(|p| p.admin).collect();
            let (reports, queues, limits) =
                two_halves(&addrs, &admins, &shared, rate, lengths.run).await;
            let secs = (lengths.run / 2).as_secs_f64();
            let half = half_of(&reports, &shared, (&queues, &limits), rate, secs);
            print_half(&format!("rep {rep} shared, 3 instances"), &half, capacity);
            out.shared.push((rep, half));
        }
        for p in levees {
            p.stop().await;
        }
        drop(refs);
        drop(shared);

        // Recovery after a slow spell.
        settle(std::slice::from_ref(&*r)).await;
        let Some(p) = start(
            Kind::Levee,
            &setup(&[&*r], MAX_INFLIGHT, Some(adaptive_toml(None))),
            tools,
            res,
        )
        .await
        else {
            return;
        };
        if let Some(mut run) = recover(&p, &r, base, lengths).await {
            run.rep = rep;
            println!(
                "  rep {rep} recover                limit before {:.0}, lowest while slow {}, back within 10% after {}, at the end {}",
                run.before,
                run.slow_low,
                run.recovered_after.map_or("never".into(), ms),
                run.after
            );
            out.recover.push(run);
        }
        p.stop().await;
        r.set_service_time(SERVICE_TIME);
    }
    res.adaptive = Some(out);
}

/// The recover case on a started levee: 2x load; slow the replica; speed it up; watch.
async fn recover(p: &Running, r: &Arc<Replica>, base: Base, l: Lengths) -> Option<RecoverRun> {
    let admin = p.admin?;
    let total = l.steady + l.slow + l.watch;
    let load = tokio::spawn(load::run(
        open_loop(p.addr, "/work", FACTOR * base.capacity, total),
        |_| {},
    ));
    let started = Instant::now();
    let mut before = Vec::new();
    let mut slow_low = u64::MAX;
    let mut sped_up: Option<Instant> = None;
    let mut recovered_after = None;
    let mut after = 0;
    let mut slowed = false;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    // Bounded: at most `total` in 100 ms steps.
    for _ in 0..(total.as_millis() / 100 + 1) {
        every.tick().await;
        let t = started.elapsed();
        if t >= total {
            break;
        }
        let Some(limit) = backend_limits(admin).await.and_then(|v| v.first().copied()) else {
            continue;
        };
        if t < l.steady {
            if t >= l.steady / 2 && limit > 0 {
                before.push(limit as f64);
            }
            continue;
        }
        if t < l.steady + l.slow {
            if !slowed {
                r.set_service_time(SLOW_SERVICE_TIME);
                slowed = true;
            }
            if limit > 0 {
                slow_low = slow_low.min(limit);
            }
            continue;
        }
        let since = *sped_up.get_or_insert_with(|| {
            r.set_service_time(SERVICE_TIME);
            Instant::now()
        });
        if limit > 0 {
            after = limit;
        }
        let old = if before.is_empty() {
            0.0
        } else {
            median(before.clone())
        };
        if recovered_after.is_none() && limit as f64 >= RECOVER_SHARE * old && old > 0.0 {
            recovered_after = Some(since.elapsed());
        }
    }
    r.set_service_time(SERVICE_TIME);
    let _ = load.await;
    Some(RecoverRun {
        rep: 0,
        before: if before.is_empty() {
            0.0
        } else {
            median(before)
        },
        slow_low: if slow_low == u64::MAX { 0 } else { slow_low },
        recovered_after,
        after,
    })
}

impl AdaptiveResults {
    fn one_runs(&self, adaptive: bool) -> impl Iterator<Item = &Half> {
        self.one
            .iter()
            .filter(move |o| o.adaptive == adaptive)
            .map(|o| &o.half)
    }

    /// The targets, judged on every repetition.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let Some(base) = self.base else {
            return out;
        };
        let target = |name: String, values: Vec<(String, bool)>| {
            let verdict = if values.is_empty() {
                Verdict::Skip
            } else {
                Verdict::of(values.iter().all(|(_, ok)| *ok))
            };
            let levee = if values.is_empty() {
                "-".to_owned()
            } else {
                values
                    .iter()
                    .map(|(v, _)| v.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            Target {
                name,
                levee,
                verdict,
                others: Vec::new(),
            }
        };
        let one: Vec<&Half> = self.one_runs(true).collect();
        out.push(target(
            format!("adaptive one: replica's own queue <= {ONE_QUEUE_MAX} (second half)"),
            one.iter()
                .map(|h| {
                    let peak = h.queue_peak.first().copied().unwrap_or(0);
                    (
                        format!(
                            "peak {peak}, p99 {}",
                            h.queue_p99.first().copied().unwrap_or(0)
                        ),
                        peak <= ONE_QUEUE_MAX,
                    )
                })
                .collect(),
        ));
        out.push(target(
            format!("adaptive one: goodput >= {:.0}% of C", GOODPUT * 100.0),
            one.iter()
                .map(|h| {
                    let share = h.goodput / base.capacity;
                    (format!("{:.1}%", share * 100.0), share >= GOODPUT)
                })
                .collect(),
        ));
        out.push(target(
            format!("adaptive one: admitted p99 <= {P99_RATIO}x unloaded p99"),
            one.iter()
                .map(|h| {
                    let ratio = h.ok_p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9);
                    (
                        format!("{} ({ratio:.2}x of {})", ms(h.ok_p99), ms(base.p99)),
                        ratio <= P99_RATIO,
                    )
                })
                .collect(),
        ));
        let capacity = SHARED_REPLICAS as f64 * base.capacity;
        out.push(target(
            format!(
                "adaptive shared: each replica's own queue <= {SHARED_QUEUE_MAX} (second half)"
            ),
            self.shared
                .iter()
                .map(|(_, h)| {
                    let worst = h.queue_peak.iter().copied().max().unwrap_or(0);
                    (
                        format!("peaks {:?}", h.queue_peak),
                        worst <= SHARED_QUEUE_MAX,
                    )
                })
                .collect(),
        ));
        out.push(target(
            format!("adaptive shared: goodput >= {:.0}% of C", GOODPUT * 100.0),
            self.shared
                .iter()
                .map(|(_, h)| {
                    let share = h.goodput / capacity;
                    (format!("{:.1}%", share * 100.0), share >= GOODPUT)
                })
                .collect(),
        ));
        out.push(target(
            format!(
                "adaptive recover: limit within {:.0}% of before within {} s",
                (1.0 - RECOVER_SHARE) * 100.0,
                RECOVER_WITHIN.as_secs()
            ),
            self.recover
                .iter()
                .map(|r| {
                    (
                        format!(
                            "{:.0} -> {} -> {} after {}",
                            r.before,
                            r.slow_low,
                            r.after,
                            r.recovered_after.map_or("never".into(), ms)
                        ),
                        r.recovered_after.is_some_and(|d| d <= RECOVER_WITHIN),
                    )
                })
                .collect(),
        ));
        out
    }

    pub fn render(&self, s: &mut String) {
        use std::fmt::Write as _;
        let Some(base) = self.base else {
            return;
        };
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "### Adaptive limits: replicas of {WORKERS} workers x {} ms; C = {WORKERS} / {} (unloaded p50, direct) = {:.0} req/s a replica, unloaded p99 {}",
            SERVICE_TIME.as_millis(),
            ms(base.p50),
            base.capacity,
            ms(base.p99)
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| rep | case | offered/s | goodput/s (% of C) | 2xx p50 | 2xx p99 (x unloaded) | 503/s | replica queue: peak | p99 | mean | levee limits in force (median) |"
        );
        let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---|---|---|---|");
        let row = |s: &mut String, rep: usize, name: &str, h: &Half, capacity: f64| {
            let _ = writeln!(
                s,
                "| {rep} | {name} | {:.0} | {:.0} ({:.1}%) | {} | {} ({:.2}x) | {:.0} | {:?} | {:?} | {} | {:?} |",
                h.offered,
                h.goodput,
                100.0 * h.goodput / capacity,
                ms(h.ok_p50),
                ms(h.ok_p99),
                h.ok_p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9),
                h.shed_rate,
                h.queue_peak,
                h.queue_p99,
                h.queue_mean
                    .iter()
                    .map(|m| format!("{m:.1}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                h.limits
            );
        };
        for o in &self.one {
            let name = if o.adaptive {
                format!("one replica, {FACTOR}x, `target_p95_ms = {TARGET_P95_MS}`")
            } else {
                format!("one replica, {FACTOR}x, static `max_inflight = {MAX_INFLIGHT}`")
            };
            row(s, o.rep, &name, &o.half, base.capacity);
        }
        for (rep, h) in &self.shared {
            row(
                s,
                *rep,
                &format!("{SHARED_REPLICAS} reporting replicas, {INSTANCES} levees, {SHARED_FACTOR}x, `load_target = {LOAD_TARGET}`"),
                h,
                SHARED_REPLICAS as f64 * base.capacity,
            );
        }
        if let Some(l) = self.lengths {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "Second half of {} s runs (each half its own open-loop run). Recover: {FACTOR}x for {} s, the replica at {} ms a request for {} s, then {} ms again:",
                l.run.as_secs(),
                l.steady.as_secs(),
                SLOW_SERVICE_TIME.as_millis(),
                l.slow.as_secs(),
                SERVICE_TIME.as_millis()
            );
        }
        for r in &self.recover {
            let _ = writeln!(
                s,
                "- rep {}: limit {:.0} before, {} at its lowest while slow, back within {:.0}% after {}, {} at the end",
                r.rep,
                r.before,
                r.slow_low,
                (1.0 - RECOVER_SHARE) * 100.0,
                r.recovered_after.map_or("never".into(), ms),
                r.after
            );
        }
    }

    pub fn to_json(&self) -> Value {
        let d = |d: Duration| d.as_secs_f64() * 1e3;
        let half = |h: &Half| {
            json!({
                "offered": h.offered, "goodput": h.goodput, "ok_p50_ms": d(h.ok_p50), "ok_p99_ms": d(h.ok_p99),
                "shed_per_s": h.shed_rate, "other": h.other, "queue_peak": h.queue_peak,
                "queue_p99": h.queue_p99, "queue_mean": h.queue_mean, "limits": h.limits,
            })
        };
        json!({
            "base": self.base.map(|b| json!({"p50_ms": d(b.p50), "p99_ms": d(b.p99), "capacity_rps": b.capacity})),
            "one": self.one.iter().map(|o| json!({"rep": o.rep, "adaptive": o.adaptive, "second_half": half(&o.half)})).collect::<Vec<_>>(),
            "shared": self.shared.iter().map(|(rep, h)| json!({"rep": rep, "second_half": half(h)})).collect::<Vec<_>>(),
            "recover": self.recover.iter().map(|r| json!({
                "rep": r.rep, "before": r.before, "slow_low": r.slow_low,
                "recovered_after_ms": r.recovered_after.map(d), "after": r.after,
            })).collect::<Vec<_>>(),
        })
    }
}
