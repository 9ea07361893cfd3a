//! A discrete-event simulation of adaptive limits, to compare algorithms on the very
//! controller levee runs, without a shared machine's noise.
//!
//! ```sh
//! cargo run --example adaptive_sim            # every case, 60 s of simulated time each
//! cargo run --example adaptive_sim -- 30 7    # 30 s, seed 7
//! ```
//!
//! Model: open-loop Poisson arrivals; levee instances that admit a request when one of
//! their backends has a free slot under its limit (the less loaded by in flight over
//! limit; no queue: the rest is shed); replicas with `W` workers and a FIFO queue, whose
//! service time is `S` plus 0.2 to 1.5 ms (tokio's timer, as the demo replicas); a
//! latency is measured from admission to completion plus 0.1 ms. Each backend of each
//! instance has its own limiter, ticked every 100 ms with the most requests it had in
//! flight since the last tick. Load reports, when on, are the replica's (busy + queue)
//! / W as it finishes a request.
//!
//! Limiters compared:
//! - `levee`: `levee::limits::adaptive::Controller` itself (AIMD on the p95 target and load
//!   reports, Vegas queue estimate with a floor probe);
//! - `aimd-p95`: AIMD on the p95 target alone: cut by target / p95 (in [0.5, 0.9]) and
//!   wait one p95, else +1 when the backend used 90 % of its limit;
//! - `gradient2`: Netflix concurrency-limits' `Gradient2Limit` with its defaults
//!   (initial limit 20, tolerance 1.5, smoothing 0.2, queue size 4, long window of 600
//!   samples), fed one window's mean latency per 100 ms (started at `max_inflight`, as
//!   levee starts, it never comes down: its long-term latency is the overloaded one from
//!   the first sample);
//! - `static`: the limit stays at `max_inflight`.
//!
//! Reported over the second half of each run: each replica's own queue (mean, p99, max
//! of 1 ms samples), goodput as a share of the replicas' capacity, the p50 and p99 of
//! admitted requests, and the limits.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use levee::limits::adaptive::{Controller, Params};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MS: f64 = 1e-3;
const TICK: f64 = 0.1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Static,
    Levee,
    AimdP95,
    Gradient2,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Static => "static",
            Kind::Levee => "levee",
            Kind::AimdP95 => "aimd-p95",
            Kind::Gradient2 => "gradient2",
        }
    }
}

/// One limiter of one backend of one instance.
enum Limiter {
    Static(u32),
    Levee(Box<Controller>, Params),
    Aimd {
        limit: f64,
        window: Vec<f64>,
        since: f64,
        settle: f64,
        p: Params,
    },
    Gradient2 {
        limit: f64,
        long: f64,
        samples: u64,
        window: Vec<f64>,
        since: f64,
        p: Params,
    },
}

impl Limiter {
    fn new(kind: Kind, p: Params, t0: Instant) -> Limiter {
        match kind {
            Kind::Static => Limiter::Static(p.max),
            Kind::Levee => Limiter::Levee(Box::new(Controller::new(p.max, t0)), p),
            Kind::AimdP95 => Limiter::Aimd {
                limit: f64::from(p.max),
                window: Vec::new(),
                since: 0.0,
                settle: 0.0,
                p,
            },
            // Its library's default initial limit: started at max_inflight it would keep
            // it, having never seen the backend less loaded.
            Kind::Gradient2 => Limiter::Gradient2 {
                limit: f64::from(p.max.min(20)),
                long: 0.0,
                samples: 0,
                window: Vec::new(),
                since: 0.0,
                p,
            },
        }
    }

    fn limit(&self) -> u32 {
        match self {
            Limiter::Static(l) => *l,
            Limiter::Levee(c, _) => c.limit(),
            Limiter::Aimd { limit, .. } | Limiter::Gradient2 { limit, .. } => {
                limit.round().max(1.0) as u32
            }
        }
    }

    fn record(&mut self, latency: f64, load: Option<f64>) {
        match self {
            Limiter::Static(_) => {}
            Limiter::Levee(c, _) => {
                c.record(Duration::from_secs_f64(latency));
                if let Some(u) = load {
                    c.record_load(u);
                }
            }
            Limiter::Aimd { window, .. } | Limiter::Gradient2 { window, .. } => {
                window.push(latency)
            }
        }
    }

    fn tick(&mut self, t0: Instant, now: f64, peak: u32, in_force: u32) {
        match self {
            Limiter::Static(_) => {}
            Limiter::Levee(c, p) => {
                c.tick(t0 + Duration::from_secs_f64(now), p, peak, in_force);
            }
            Limiter::Aimd {
                limit,
                window,
                since,
                settle,
                p,
            } => {
                if now < *settle {
                    window.clear();
                    *since = now;
                    return;
                }
                if window.len() < 40 || now - *since < TICK {
                    return;
                }
                window.sort_by(f64::total_cmp);
                let p95 = window[((window.len() as f64 * 0.95).ceil() as usize).max(1) - 1];
                window.clear();
                *since = now;
                let target = p.target_p95.as_secs_f64();
                if p95 > target {
                    let had = limit.min(f64::from(peak.max(1)));
                    *limit = had * (target / p95).clamp(0.5, 0.9);
                    *settle = now + p95.min(2.0);
                } else if f64::from(peak) >= (0.9 * limit.round()).ceil() {
                    *limit += 1.0;
                }
                *limit = limit.clamp(f64::from(p.min), f64::from(p.max));
            }
            Limiter::Gradient2 {
                limit,
                long,
                samples,
                window,
                since,
                p,
            } => {
                if window.len() < 10 || now - *since < TICK {
                    return;
                }
                let short = window.iter().sum::<f64>() / window.len() as f64;
                window.clear();
                *since = now;
                // Exponential average over 600 samples (a plain mean while warming up).
                *samples += 1;
                let n = (*samples).min(600) as f64;
                *long = if *samples == 1 {
                    short
                } else {
                    *long + (short - *long) * (2.0 / (n + 1.0)).max(2.0 / 601.0)
                };
                if *long / short > 2.0 {
                    *long *= 0.95;
                }
                if f64::from(peak) < *limit / 2.0 {
                    return;
                }
                let gradient = (1.5 * *long / short).clamp(0.5, 1.0);
                let next = *limit * gradient + 4.0;
                *limit = (*limit * 0.8 + next * 0.2).clamp(f64::from(p.min), f64::from(p.max));
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Event {
    /// An arrival at instance i.
    Arrival(usize),
    /// Replica r finishes the request in worker slot (id).
    Done(usize, u64),
    Tick,
    Sample,
}

struct Request {
    id: u64,
    instance: usize,
    sent: f64,
}

struct Replica {
    workers: usize,
    service: f64,
    busy: Vec<(u64, usize, f64)>, // (id, instance, sent)
    queue: VecDeque<Request>,
}

struct Backend {
    inflight: u32,
    peak: u32,
    limiter: Limiter,
}

struct Case {
    name: &'static str,
    instances: usize,
    replicas: usize,
    workers: usize,
    service_ms: f64,
    factor: f64,
    max: u32,
    target_ms: u64,
    min: u32,
    load_target: Option<f64>,
    reports: bool,
    /// (from, to, service ms) of the run's time, as shares of it.
    slow: Option<(f64, f64, f64)>,
    /// A mixed workload: this share of requests takes this many ms instead.
    mix: Option<(f64, f64)>,
}

#[derive(Default)]
struct Outcome {
    queue_mean: Vec<f64>,
    queue_p99: Vec<usize>,
    queue_max: Vec<usize>,
    goodput: f64,
    p50: f64,
    p99: f64,
    limits: Vec<f64>,
    /// Recover cases: limit before the slow spell, lowest in it, seconds to be back
    /// within 10 % after it.
    recover: Option<(f64, u32, Option<f64>)>,
}

/// One request's service time: the replica's, or the mix's other one, plus the timer.
fn service(base: f64, mix: Option<(f64, f64)>, rng: &mut StdRng) -> f64 {
    let s = match mix {
        Some((share, ms)) if rng.random::<f64>() < share => ms * MS,
        _ => base,
    };
    s + rng.random_range(0.2..1.5) * MS
}

fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q).ceil() as usize).max(1) - 1]
}

fn run(case: &Case, kind: Kind, secs: f64, seed: u64) -> Outcome {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let params = Params {
        target_p95: Duration::from_millis(case.target_ms),
        min: case.min,
        max: case.max,
        load_target: case.load_target,
    };
    let mut replicas: Vec<Replica> = (0..case.replicas)
        .map(|_| Replica {
            workers: case.workers,
            service: case.service_ms * MS,
            busy: Vec::new(),
            queue: VecDeque::new(),
        })
        .collect();
    let mut backends: Vec<Vec<Backend>> = (0..case.instances)
        .map(|_| {
            (0..case.replicas)
                .map(|_| Backend {
                    inflight: 0,
                    peak: 0,
                    limiter: Limiter::new(kind, params, t0),
                })
                .collect()
        })
        .collect();
    // Capacity: workers over the mean service time (S + 0.85 ms of timer).
    let mean_service = match case.mix {
        Some((share, ms)) => (1.0 - share) * case.service_ms + share * ms,
        None => case.service_ms,
    } * MS
        + 0.85 * MS;
    let capacity = (case.replicas * case.workers) as f64 / mean_service;
    let rate = case.factor * capacity / case.instances as f64;
    let mut events: BinaryHeap<Reverse<(u64, u64, Event)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let ns = |t: f64| (t * 1e9) as u64;
    let mut push = |events: &mut BinaryHeap<_>, t: f64, e: Event| {
        seq += 1;
        events.push(Reverse((ns(t), seq, e)));
    };
    for i in 0..case.instances {
        push(&mut events, 0.0, Event::Arrival(i));
    }
    push(&mut events, TICK, Event::Tick);
    push(&mut events, 0.001, Event::Sample);
    let half = secs / 2.0;
    let mut next_id = 0u64;
    let mut queue_samples: Vec<Vec<usize>> = vec![Vec::new(); case.replicas];
    let mut latencies: Vec<f64> = Vec::new();
    let mut done_second_half = 0u64;
    let mut limit_trace: Vec<(f64, Vec<u32>)> = Vec::new();
    while let Some(Reverse((t_ns, _, event))) = events.pop() {
        let now = t_ns as f64 / 1e9;
        if now > secs {
            break;
        }
        if let Some((from, to, slow_ms)) = case.slow {
            let slow = now >= from * secs && now < to * secs;
            for r in &mut replicas {
                r.service = if slow { slow_ms } else { case.service_ms } * MS;
            }
        }
        match event {
            Event::Arrival(i) => {
                let gap = -(1.0 - rng.random::<f64>()).ln() / rate;
                push(&mut events, now + gap, Event::Arrival(i));
                // The less loaded backend with a free slot; none: shed.
                let pick = backends[i]
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.inflight < b.limiter.limit())
                    .min_by(|(_, a), (_, b)| {
                        let la = f64::from(a.inflight) / f64::from(a.limiter.limit());
                        let lb = f64::from(b.inflight) / f64::from(b.limiter.limit());
                        la.total_cmp(&lb)
                    })
                    .map(|(k, _)| k);
                let Some(k) = pick else { continue };
                let b = &mut backends[i][k];
                b.inflight += 1;
                b.peak = b.peak.max(b.inflight);
                next_id += 1;
                let r = &mut replicas[k];
                let req = Request {
                    id: next_id,
                    instance: i,
                    sent: now,
                };
                if r.busy.len() < r.workers {
                    let s = service(r.service, case.mix, &mut rng);
                    r.busy.push((req.id, i, now));
                    push(&mut events, now + s, Event::Done(k, req.id));
                } else {
                    r.queue.push_back(req);
                }
            }
            Event::Done(k, id) => {
                let r = &mut replicas[k];
                let load = (r.busy.len() + r.queue.len()) as f64 / r.workers as f64;
                let Some(pos) = r.busy.iter().position(|(rid, _, _)| *rid == id) else {
                    continue;
                };
                let (_, i, sent) = r.busy.swap_remove(pos);
                if let Some(next) = r.queue.pop_front() {
                    let s = service(r.service, case.mix, &mut rng);
                    r.busy.push((next.id, next.instance, next.sent));
                    push(&mut events, now + s, Event::Done(k, next.id));
                }
                let latency = now - sent + 0.1 * MS;
                let b = &mut backends[i][k];
                b.inflight -= 1;
                b.limiter.record(latency, case.reports.then_some(load));
                if sent >= half {
                    latencies.push(latency);
                    done_second_half += 1;
                }
            }
            Event::Tick => {
                push(&mut events, now + TICK, Event::Tick);
                for inst in &mut backends {
                    for b in inst.iter_mut() {
                        let peak = b.peak;
                        b.peak = b.inflight;
                        let in_force = b.limiter.limit();
                        b.limiter.tick(t0, now, peak, in_force);
                    }
                }
                limit_trace.push((
                    now,
                    backends
                        .iter()
                        .flat_map(|inst| inst.iter().map(|b| b.limiter.limit()))
                        .collect(),
                ));
            }
            Event::Sample => {
                push(&mut events, now + 0.001, Event::Sample);
                if now >= half {
                    for (q, r) in queue_samples.iter_mut().zip(&replicas) {
                        q.push(r.queue.len());
                    }
                }
            }
        }
    }
    let mut out = Outcome {
        goodput: done_second_half as f64 / half / capacity,
        p50: quantile(&mut latencies, 0.5),
        p99: quantile(&mut latencies, 0.99),
        ..Outcome::default()
    };
    for q in &queue_samples {
        let mut f: Vec<f64> = q.iter().map(|&n| n as f64).collect();
        out.queue_mean
            .push(f.iter().sum::<f64>() / f.len().max(1) as f64);
        out.queue_p99.push(quantile(&mut f, 0.99) as usize);
        out.queue_max.push(q.iter().copied().max().unwrap_or(0));
    }
    let second: Vec<&Vec<u32>> = limit_trace
        .iter()
        .filter(|(t, _)| *t >= half)
        .map(|(_, l)| l)
        .collect();
    let n = second.first().map_or(0, |l| l.len());
    out.limits = (0..n)
        .map(|j| {
            let mut v: Vec<f64> = second.iter().map(|l| f64::from(l[j])).collect();
            quantile(&mut v, 0.5)
        })
        .collect();
    if let Some((from, to, _)) = case.slow {
        let (from, to) = (from * secs, to * secs);
        let mut before: Vec<f64> = limit_trace
            .iter()
            .filter(|(t, _)| *t >= from / 2.0 && *t < from)
            .map(|(_, l)| f64::from(l[0]))
            .collect();
        let old = quantile(&mut before, 0.5);
        let low = limit_trace
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, l)| l[0])
            .min()
            .unwrap_or(0);
        let back = limit_trace
            .iter()
            .find(|(t, l)| *t >= to && f64::from(l[0]) >= 0.9 * old)
            .map(|(t, _)| t - to);
        out.recover = Some((old, low, back));
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: f64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(60.0);
    let seed: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let one = Case {
        name: "one replica 16 x 20 ms, max 64, target 30 ms, 2x",
        instances: 1,
        replicas: 1,
        workers: 16,
        service_ms: 20.0,
        factor: 2.0,
        max: 64,
        target_ms: 30,
        min: 4,
        load_target: None,
        reports: false,
        slow: None,
        mix: None,
    };
    let cases = [
        Case { ..one },
        Case {
            name: "the same at 0.6x (idle limit must not climb)",
            factor: 0.6,
            ..one
        },
        Case {
            name: "the same, target 60 ms",
            target_ms: 60,
            ..one
        },
        Case {
            name:
                "a mixed workload: 1 request in 5 takes 60 ms, the others 10 ms (20 ms on average)",
            service_ms: 10.0,
            mix: Some((0.2, 60.0)),
            target_ms: 80,
            ..one
        },
        Case {
            name: "recover: 20 ms, 40 ms from 40 % to 60 % of the run, 20 ms",
            slow: Some((0.4, 0.6, 40.0)),
            ..one
        },
        Case {
            name: "3 instances x 2 replicas, max 32, 1.9x, no reports",
            instances: 3,
            replicas: 2,
            max: 32,
            factor: 1.9,
            ..one
        },
        Case {
            name: "3 instances x 2 replicas, max 32, 1.9x, reports, load_target 1.2",
            instances: 3,
            replicas: 2,
            max: 32,
            factor: 1.9,
            load_target: Some(1.2),
            reports: true,
            ..one
        },
    ];
    println!("{secs} s simulated per run, seed {seed}; the second half measured\n");
    for case in &cases {
        println!("## {}", case.name);
        println!(
            "| limiter | replica queue mean | p99 | max | goodput (of capacity) | admitted p50 | p99 | limits (median) | recover: before → lowest → back within 10 % after |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---|---|");
        for kind in [Kind::Static, Kind::AimdP95, Kind::Gradient2, Kind::Levee] {
            if kind != Kind::Levee && case.reports {
                continue;
            }
            let o = run(case, kind, secs, seed);
            let fmt_f = |v: &[f64]| {
                v.iter()
                    .map(|x| format!("{x:.1}"))
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let fmt_u = |v: &[usize]| {
                v.iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(" / ")
            };
            let recover = o.recover.map_or("-".to_owned(), |(old, low, back)| {
                format!(
                    "{old:.0} → {low} → {}",
                    back.map_or("never".to_owned(), |s| format!("{s:.1} s"))
                )
            });
            println!(
                "| {} | {} | {} | {} | {:.1} % | {:.1} ms | {:.1} ms | {} | {} |",
                kind.name(),
                fmt_f(&o.queue_mean),
                fmt_u(&o.queue_p99),
                fmt_u(&o.queue_max),
                o.goodput * 100.0,
                o.p50 / MS,
                o.p99 / MS,
                fmt_f(&o.limits),
                recover
            );
        }
        println!();
    }
}
