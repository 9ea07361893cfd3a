//! Results of a run: medians over repetitions, the tables printed at the end, the
//! targets judged PASS/MISS, and the same data as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{json, Value};

use crate::proxies::{Kind, LEVEE_BEFORE};

/// Median of `values` (mean of the middle two for an even count); 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

pub fn median_d(values: impl IntoIterator<Item = Duration>) -> Duration {
    let secs = median(values.into_iter().map(|d| d.as_secs_f64()).collect());
    Duration::from_secs_f64(secs.max(0.0))
}

/// `0.41ms` below 10 ms, `21.3ms` below a second, `1.28s` above.
pub fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.2}ms")
    } else if v < 1000.0 {
        format!("{v:.1}ms")
    } else {
        format!("{:.2}s", v / 1000.0)
    }
}

/// `152µs`, `4.6µs` (below 100 with a tenth: a proxy's CPU per request is a few µs on
/// a fast machine, and whole µs would hide a 20 % difference), or `-` when not
/// measured.
pub fn us_opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v < 100.0 {
            format!("{v:.1}µs")
        } else {
            format!("{v:.0}µs")
        }
    })
}

fn us(d: f64) -> String {
    format!("{:+.0}µs", d * 1e6)
}

/// The machine and the tools, for the README.
#[derive(Debug, Clone, Default)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub loadavg: String,
    pub nofile: String,
    pub versions: Vec<(String, String)>,
    pub commit: String,
}

/// Raw cost of one target: wrk (closed loop) and open loop at half load.
#[derive(Debug, Clone)]
pub struct RawRow {
    pub kind: Kind,
    pub runs: usize,
    pub rps: f64,
    pub wrk_p50: Duration,
    pub wrk_p99: Duration,
    pub wrk_errors: f64,
    /// Proxy CPU time per request during the wrk runs, in µs.
    pub wrk_cpu_us: Option<f64>,
    /// The user-space part of it: the proxy's own code (the rest is the kernel's,
    /// loopback TCP on both sides, the same for every proxy).
    pub wrk_user_us: Option<f64>,
    pub open_runs: usize,
    pub open_p50: Duration,
    pub open_p99: Duration,
    pub open_failed: f64,
    /// Proxy CPU time per request at half load (the same offered rate for every
    /// proxy), in µs: the cost figure least disturbed by other load on the machine.
    pub open_cpu_us: Option<f64>,
    /// Median over repetitions of (this target's open-loop p99 - direct's), in seconds.
    pub added_p99: Option<f64>,
    /// The blocking probe's latency (no timer floor), median over runs.
    pub probe_p50: Duration,
    pub probe_p99: Duration,
}

/// One proxy at one overload factor (medians over repetitions).
#[derive(Debug, Clone)]
pub struct OverRow {
    pub kind: Kind,
    pub factor: f64,
    pub runs: usize,
    pub offered: f64,
    pub goodput: f64,
    pub ok_p50: Duration,
    pub ok_p99: Duration,
    pub shed: f64,
    pub shed_rate: f64,
    pub shed_p99: Duration,
    /// p99 of the blocking probe's 503s (no timer floor), when it got any.
    pub probe_shed_p99: Option<Duration>,
    pub other: f64,
    /// Highest in-flight count any replica saw (queued + working), max over runs.
    pub peak: usize,
    /// CPU the proxy used during the step, in cores (CPU seconds per second).
    pub cpu_cores: Option<f64>,
    /// levee only: its 503s by `levee_shed_total` reason, per run.
    pub shed_reasons: String,
}

#[derive(Debug, Clone)]
pub struct MemRow {
    pub kind: Kind,
    pub runs: usize,
    pub base_kib: f64,
    pub idle_kib: f64,
    pub conns: f64,
    pub failed: f64,
    pub closed: f64,
}

/// One proxy on one thread: proxied, and shedding with every slot held. levee sheds
/// with `queue_depth = 0`; nginx answers its `max_conns` refusal (502, "no live
/// upstreams") with a 503 through `error_page`; HAProxy queues past `maxconn` and
/// answers 503 when `timeout queue` (1 ms) runs out.
#[derive(Debug, Clone)]
pub struct ShedRow {
    pub kind: Kind,
    pub runs: usize,
    pub proxied_rps: f64,
    pub proxied_p99: Duration,
    pub proxied_cpu_us: Option<f64>,
    pub shed_rps: f64,
    pub shed_p50: Duration,
    pub shed_p99: Duration,
    pub shed_cpu_us: Option<f64>,
    /// The user-space part of `shed_cpu_us`; the rest is the kernel's.
    pub shed_user_us: Option<f64>,
    /// Share of wrk's responses that were not 2xx/3xx (should be 1.0).
    pub non2xx_share: f64,
    /// Did the held slots stay held for the whole run?
    pub held: bool,
}

/// The fresh section's replicas, measured once, directly, at a low rate.
#[derive(Debug, Clone)]
pub struct FreshBase {
    pub slots: usize,
    /// slots / nominal service time.
    pub nominal: f64,
    /// The rate of the measurement, and the answers it got.
    pub rate: f64,
    pub samples: u64,
    pub p50: Duration,
    /// The unloaded p99: the reference for admitted latency through a proxy.
    pub p99: Duration,
    /// C = slots / p50.
    pub cap: f64,
}

/// One proxy at one load factor, each run on a freshly started process.
#[derive(Debug, Clone)]
pub struct FreshRow {
    pub over: OverRow,
    /// Requests the generator actually sent per second (below the offered rate when it
    /// could not keep up).
    pub sent_rate: f64,
    /// From spawn to the proxy's first 2xx answer.
    pub ready: Duration,
}

/// A burst on a fresh, idle proxy (medians over runs).
#[derive(Debug, Clone)]
pub struct BurstRow {
    pub kind: Kind,
    pub runs: usize,
    pub rate: f64,
    pub millis: u64,
    /// The most requests the limits can admit from such a burst: every slot starts a
    /// request each service time (p50) from the burst's first request until its last
    /// one's queue timeout runs out.
    pub admit_max: f64,
    pub sent: f64,
    pub ok: f64,
    pub shed: f64,
    /// 503s per run.
    pub shed_each: Vec<u64>,
    pub other: f64,
    pub ok_p99: Duration,
    /// levee only: its 503s by reason, per run.
    pub shed_reasons: String,
}

/// One proxy while a zone fails (medians over runs).
#[derive(Debug, Clone)]
pub struct ZoneRow {
    pub kind: Kind,
    pub runs: usize,
    pub sent: f64,
    pub ok: f64,
    pub shed: f64,
    pub other: f64,
    /// Requests the client saw fail: errors and non-2xx, except levee's own 503 sheds.
    pub failed: f64,
    /// The same, per run.
    pub failed_each: Vec<u64>,
    pub ok_p99: Duration,
    /// Requests zone a answered (500) from the fault on.
    pub zone_a_hits: f64,
    /// When, after the fault, zone a answered its last request (median over runs).
    pub last_hit: Option<Duration>,
    /// levee only: `levee_retries_total` by kind, and its 503s by reason, per run.
    pub retries: String,
    pub sheds: String,
    /// Per run, the seconds with failures (`s6 12, s7 3` or `none`), ` / ` between runs.
    pub when: String,
}

/// One shadow-mode run of levee (issue 11).
#[derive(Debug, Clone)]
pub struct ShadowRow {
    /// Offered, req/s.
    pub rate: f64,
    pub sent: f64,
    pub ok: f64,
    /// 503s the client got (the replica never answers 503: all levee's).
    pub shed: f64,
    pub other: f64,
    pub ok_p99: Duration,
    /// `levee_would_shed_total` gained over the run; `None` when unreadable.
    pub would_shed: Option<f64>,
    pub would_reasons: String,
    /// `levee_shed_total` gained over the run; `None` when unreadable.
    pub levee_sheds: Option<f64>,
    /// The replica's highest in-flight count, and levee's `max_inflight` for it.
    pub peak: usize,
    pub max_inflight: usize,
}

impl ShadowRow {
    /// No 503 from levee, and would-be sheds counted.
    pub fn verdict(&self) -> Verdict {
        Verdict::of(
            self.shed == 0.0
                && self.levee_sheds == Some(0.0)
                && self.would_shed.is_some_and(|w| w > 0.0),
        )
    }
}

/// One run of the two tenants (issue 12), with fairness or without (reference).
#[derive(Debug, Clone)]
pub struct FairRow {
    pub fairness: bool,
    /// The replica's capacity C, req/s.
    pub cap: f64,
    pub secs: f64,
    pub a_rate: f64,
    pub b_rate: f64,
    pub a_sent: f64,
    pub a_ok: f64,
    pub a_p99: Duration,
    pub b_sent: f64,
    pub b_ok: f64,
    pub b_p99: Duration,
    /// Errors and answers other than 2xx and 503, both tenants.
    pub other: f64,
    /// levee's 503s by reason over the run.
    pub reasons: String,
}

/// Issue 12's targets: the light tenant served, the replica kept busy.
pub const FAIR_LIGHT_SERVED: f64 = 0.98;
pub const FAIR_GOODPUT: f64 = 0.95;
/// The key flood may grow levee's RSS by at most this much.
pub const FLOOD_RSS_GROWTH_MIB: f64 = 16.0;

impl FairRow {
    pub fn b_share(&self) -> f64 {
        self.b_ok / self.b_sent.max(1.0)
    }

    /// 2xx per second, both tenants.
    pub fn goodput(&self) -> f64 {
        (self.a_ok + self.b_ok) / self.secs.max(1e-3)
    }

    pub fn verdict(&self) -> Verdict {
        Verdict::of(
            self.b_share() >= FAIR_LIGHT_SERVED && self.goodput() >= FAIR_GOODPUT * self.cap,
        )
    }
}

/// One key flood through levee with fairness.
#[derive(Debug, Clone)]
pub struct FloodRow {
    /// Distinct keys meant, over `secs`.
    pub keys: u64,
    pub secs: f64,
    pub took: Duration,
    pub sent: u64,
    pub ok: u64,
    pub shed: u64,
    pub other: u64,
    pub rss_before_kib: f64,
    pub rss_after_kib: f64,
}

impl FloodRow {
    pub fn growth_mib(&self) -> f64 {
        (self.rss_after_kib - self.rss_before_kib) / 1024.0
    }

    /// Every key sent, and RSS grew by at most [`FLOOD_RSS_GROWTH_MIB`].
    pub fn verdict(&self) -> Verdict {
        Verdict::of(
            self.sent >= self.keys
                && self.rss_before_kib > 0.0
                && self.growth_mib() <= FLOOD_RSS_GROWTH_MIB,
        )
    }
}

/// Shadow mode's load, in multiples of the replica's capacity (for the target's name).
const SHADOW: f64 = crate::SHADOW_FACTOR;
/// The fairness section's tenants, in multiples of the replica's capacity.
const HEAVY: f64 = crate::HEAVY_FACTOR;
const LIGHT: f64 = crate::LIGHT_FACTOR;

/// Issue 10's fresh-start targets.
pub const FRESH_GOODPUT: f64 = 0.99;
pub const FRESH_P99_RATIO: f64 = 1.2;
pub const FRESH_SHED_P99: Duration = Duration::from_millis(1);
/// Below this share of the offered rate actually sent, a row is marked as limited by
/// the generator.
pub const GENERATOR_KEPT_UP: f64 = 0.95;

/// Everything one run measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub command: String,
    pub quick: bool,
    pub reps: usize,
    pub elapsed: Duration,
    pub machine: Machine,
    pub raw: Vec<RawRow>,
    pub half_rate: Option<f64>,
    /// Measured capacity C: (slots, p50 at half load, req/s).
    pub capacity: Option<(usize, Duration, f64)>,
    /// The overload backends, e.g. `4 replicas x 8 workers x 50 ms`.
    pub overload_shape: String,
    /// Length of one overload step, in seconds.
    pub step_secs: u64,
    pub overload: Vec<OverRow>,
    /// Generator + fast backend, direct, at the 10x rate: (p50, p99).
    pub floor: Option<(f64, Duration, Duration)>,
    pub memory: Vec<MemRow>,
    pub idle_target: usize,
    /// One row per levee kind that ran the shed section.
    pub shed: Vec<ShedRow>,
    /// The fresh section: its replicas unloaded, its shape and run length, its rows.
    pub fresh_base: Option<FreshBase>,
    pub fresh_shape: String,
    pub fresh_step: Duration,
    pub fresh: Vec<FreshRow>,
    /// Generator alone at the fresh section's 10x rate: (rate, sent/s, p50, p99).
    pub fresh_floor: Option<(f64, f64, Duration, Duration)>,
    pub burst: Vec<BurstRow>,
    pub zonefail_shape: String,
    pub zonefail: Vec<ZoneRow>,
    /// The tls section's rows, and how many idle connections it held.
    pub tls: Vec<crate::tls::TlsRow>,
    pub tls_idle: usize,
    /// One row per shadow-mode run.
    pub shadow: Vec<ShadowRow>,
    /// One row per tenants run (with and without fairness), and per key flood.
    pub fairness: Vec<FairRow>,
    pub flood: Vec<FloodRow>,
    /// The adaptive section (levee only).
    pub adaptive: Option<crate::adaptive::AdaptiveResults>,
    /// The edge section (levee and levee-before).
    pub edge: Option<crate::edge::EdgeResults>,
    /// The grpc section's rows, and its client and backend in words.
    pub grpc: Vec<crate::grpc::GrpcRow>,
    pub grpc_shape: String,
    /// The priority section (levee and levee-before).
    pub priority: Option<crate::priority::PriorityResults>,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Miss,
    Skip,
}

impl Verdict {
    pub fn of(ok: bool) -> Verdict {
        if ok {
            Verdict::Pass
        } else {
            Verdict::Miss
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Miss => "MISS",
            Verdict::Skip => "SKIP",
        }
    }
}

/// One target: levee's value and verdict, and the other proxies' for context.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub levee: String,
    pub verdict: Verdict,
    pub others: Vec<(Kind, String)>,
}

/// One measure of levee beside levee-before's (the older build), formatted.
#[derive(Debug, Clone)]
pub struct Compare {
    pub measure: String,
    pub levee: String,
    pub before: String,
    /// `1.12x` (levee over levee-before), or a difference where a ratio means nothing.
    pub vs: String,
}

/// `measure` when both figures exist, as a ratio of levee's over levee-before's.
fn compare(
    measure: impl Into<String>,
    levee: Option<f64>,
    before: Option<f64>,
    fmt: impl Fn(f64) -> String,
) -> Option<Compare> {
    let (l, b) = (levee?, before?);
    Some(Compare {
        measure: measure.into(),
        levee: fmt(l),
        before: fmt(b),
        vs: ratio(Some(l), Some(b)),
    })
}

/// `a / b` as `1.23x`; `-` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// Goodput share of C, admitted p99 ratio, 503 p99 of one row.
fn overload_checks(r: &OverRow, base_p99: Option<Duration>, cap: f64) -> [(String, bool); 3] {
    let share = r.goodput / cap;
    let ratio = base_p99.map(|b| r.ok_p99.as_secs_f64() / b.as_secs_f64().max(1e-9));
    [
        (format!("{:.1}%", share * 100.0), share >= 0.97),
        match ratio {
            Some(x) => (format!("{} ({x:.2}x)", ms(r.ok_p99)), x <= 1.5),
            None => ("-".into(), false),
        },
        shed_p99_check(r, Duration::from_millis(1)),
    ]
}

/// 503 p99 of one row against `limit`: the probe's when it got 503s (it has no timer
/// floor; the generator's figure is shown beside it), else the generator's.
fn shed_p99_check(r: &OverRow, limit: Duration) -> (String, bool) {
    if r.shed <= 0.0 {
        return ("no 503".into(), true);
    }
    match r.probe_shed_p99 {
        Some(p) => (
            format!("{} (generator {})", ms(p), ms(r.shed_p99)),
            p <= limit,
        ),
        None => (
            format!("{} (generator)", ms(r.shed_p99)),
            r.shed_p99 <= limit,
        ),
    }
}

/// Goodput share of C, admitted p99 over the replicas' unloaded p99, 503 p99 of one
/// fresh row, against issue 10's targets.
/// When the generator fell behind (sent less than [`GENERATOR_KEPT_UP`] of the offered
/// rate) each value says so: its own delay is then in every latency.
fn fresh_checks(r: &FreshRow, base: &FreshBase) -> [(String, bool); 3] {
    let o = &r.over;
    let share = o.goodput / base.cap;
    let ratio = o.ok_p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9);
    let behind = if r.sent_rate < GENERATOR_KEPT_UP * o.offered {
        format!(
            " [generator sent {:.0}/s of {:.0}/s]",
            r.sent_rate, o.offered
        )
    } else {
        String::new()
    };
    let (shed, shed_ok) = shed_p99_check(o, FRESH_SHED_P99);
    [
        (
            format!("{:.0}/s, {:.1}%{behind}", o.goodput, share * 100.0),
            share >= FRESH_GOODPUT,
        ),
        if o.goodput > 0.0 {
            (
                format!("{} ({ratio:.2}x {}){behind}", ms(o.ok_p99), ms(base.p99)),
                ratio <= FRESH_P99_RATIO,
            )
        } else {
            ("no 2xx".into(), false)
        },
        (format!("{shed}{behind}"), shed_ok),
    ]
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "pass"
    } else {
        "miss"
    }
}

impl Results {
    fn raw_row(&self, kind: Kind) -> Option<&RawRow> {
        self.raw.iter().find(|r| r.kind == kind)
    }

    fn over_row(&self, kind: Kind, factor: f64) -> Option<&OverRow> {
        self.overload
            .iter()
            .find(|r| r.kind == kind && r.factor == factor)
    }

    fn added_p99(&self, kind: Kind) -> Option<f64> {
        self.raw_row(kind)?.added_p99
    }

    fn fresh_row(&self, kind: Kind, factor: f64) -> Option<&FreshRow> {
        self.fresh
            .iter()
            .find(|r| r.over.kind == kind && r.over.factor == factor)
    }

    /// Issue 10's targets: fresh start (goodput, admitted p99, 503 p99, the burst) and
    /// a failing zone.
    fn fresh_targets(&self, out: &mut Vec<Target>) {
        let skip = |name: String| Target {
            name,
            levee: "-".into(),
            verdict: Verdict::Skip,
            others: Vec::new(),
        };
        let judged =
            |name: String, check: &dyn Fn(Kind) -> Option<(String, bool)>| match check(Kind::Levee)
            {
                Some((value, ok)) => Target {
                    name,
                    levee: value,
                    verdict: Verdict::of(ok),
                    others: [Kind::Haproxy, Kind::Nginx]
                        .into_iter()
                        .filter_map(|k| {
                            let (v, ok) = check(k)?;
                            Some((k, format!("{v} {}", mark(ok))))
                        })
                        .collect(),
                },
                None => skip(name),
            };
        let names = [
            format!("goodput >= {:.0}% of C", FRESH_GOODPUT * 100.0),
            format!("admitted p99 <= {FRESH_P99_RATIO}x unloaded p99"),
            format!("503 p99 <= {}", ms(FRESH_SHED_P99)),
        ];
        for (factor, wanted) in [
            (1.0, &[0][..]),
            (2.0, &[0, 1][..]),
            (5.0, &[0, 1, 2][..]),
            (10.0, &[0, 1][..]),
        ] {
            for &i in wanted {
                let name = format!("fresh {factor:.0}x C: {}", names[i]);
                out.push(judged(name, &|kind| {
                    let row = self.fresh_row(kind, factor)?;
                    Some(fresh_checks(row, self.fresh_base.as_ref()?)[i].clone())
                }));
            }
        }
        let name = format!(
            "fresh: {:.0}x C for {} ms on an idle upstream: 0 shed",
            crate::BURST_FACTOR,
            crate::BURST.as_millis()
        );
        out.push(judged(name, &|kind| {
            let b = self.burst.iter().find(|b| b.kind == kind)?;
            let each: Vec<String> = b.shed_each.iter().map(u64::to_string).collect();
            let other = if b.other > 0.0 {
                format!(", {:.0} other", b.other)
            } else {
                String::new()
            };
            Some((
                format!(
                    "{:.0} shed of {:.0} (runs: {}){other}; the limits admit at most ~{:.0}",
                    b.shed,
                    b.sent,
                    each.join(", "),
                    b.admit_max
                ),
                b.shed_each.iter().all(|&n| n == 0),
            ))
        }));
        let name = "zonefail: 0 failed requests".to_owned();
        out.push(judged(name, &|kind| {
            let z = self.zonefail.iter().find(|z| z.kind == kind)?;
            let each: Vec<String> = z.failed_each.iter().map(u64::to_string).collect();
            let shed = if kind.is_levee() && z.shed > 0.0 {
                format!(", {:.0} shed", z.shed)
            } else {
                String::new()
            };
            Some((
                format!(
                    "{:.0} of {:.0} (runs: {}{shed})",
                    z.failed,
                    z.sent,
                    each.join(", ")
                ),
                z.failed_each.iter().all(|&n| n == 0),
            ))
        }));
    }

    /// Every target of the issue, judged on levee; other proxies shown for context.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let skip = |name: String| Target {
            name,
            levee: "-".into(),
            verdict: Verdict::Skip,
            others: Vec::new(),
        };
        for other in [Kind::Haproxy, Kind::Nginx] {
            let name = format!("req/s >= 1.1x {}", other.name());
            match (self.raw_row(Kind::Levee), self.raw_row(other)) {
                (Some(l), Some(o)) if l.runs > 0 && o.runs > 0 => {
                    let x = l.rps / o.rps;
                    out.push(Target {
                        name,
                        levee: format!("{:.0} vs {:.0} ({x:.2}x)", l.rps, o.rps),
                        verdict: Verdict::of(x >= 1.1),
                        others: Vec::new(),
                    });
                }
                _ => out.push(skip(name)),
            }
        }
        let name = "added p99 at half load <= 200µs".to_string();
        match self.added_p99(Kind::Levee) {
            Some(a) => out.push(Target {
                name,
                levee: us(a),
                verdict: Verdict::of(a <= 200e-6),
                others: [Kind::Haproxy, Kind::Nginx]
                    .into_iter()
                    .filter_map(|k| {
                        let a = self.added_p99(k)?;
                        Some((k, format!("{} {}", us(a), mark(a <= 200e-6))))
                    })
                    .collect(),
            }),
            None => out.push(skip(name)),
        }
        let cap = self.capacity.map(|c| c.2);
        let names = [
            "goodput >= 97% of C",
            "admitted p99 <= 1.5x p99 at 1x",
            "503 p99 <= 1ms",
        ];
        for factor in [2.0, 5.0, 10.0] {
            for (i, what) in names.iter().enumerate() {
                let name = format!("{factor:.0}x C: {what}");
                let check = |kind: Kind| {
                    let row = self.over_row(kind, factor)?;
                    let base = self.over_row(kind, 1.0).map(|r| r.ok_p99);
                    Some(overload_checks(row, base, cap?)[i].clone())
                };
                match check(Kind::Levee) {
                    Some((value, ok)) => out.push(Target {
                        name,
                        levee: value,
                        verdict: Verdict::of(ok),
                        others: [Kind::Haproxy, Kind::Nginx]
                            .into_iter()
                            .filter_map(|k| {
                                let (v, ok) = check(k)?;
                                Some((k, format!("{v} {}", mark(ok))))
                            })
                            .collect(),
                    }),
                    None => out.push(skip(name)),
                }
            }
        }
        let name = format!(
            "RSS with {} idle conns <= 64 MiB",
            thousands(self.idle_target)
        );
        let mem = |kind: Kind| {
            let r = self.memory.iter().find(|r| r.kind == kind)?;
            let mib = r.idle_kib / 1024.0;
            let complete = r.conns >= self.idle_target as f64 && r.closed == 0.0;
            let note = if complete { "" } else { " (incomplete)" };
            Some((format!("{mib:.1} MiB{note}"), mib <= 64.0 && complete))
        };
        match mem(Kind::Levee) {
            Some((value, ok)) => out.push(Target {
                name,
                levee: value,
                verdict: Verdict::of(ok),
                others: [Kind::Haproxy, Kind::Nginx]
                    .into_iter()
                    .filter_map(|k| {
                        let (v, ok) = mem(k)?;
                        Some((k, format!("{v} {}", mark(ok))))
                    })
                    .collect(),
            }),
            None => out.push(skip(name)),
        }
        self.fresh_targets(&mut out);
        crate::tls::targets(self, &mut out);
        crate::grpc::targets(self, &mut out);
        let name = format!("shadow {SHADOW}x C: 0 levee 503s, would-sheds counted");
        if self.shadow.is_empty() {
            out.push(skip(name));
        } else {
            let verdicts: Vec<&str> = self.shadow.iter().map(|r| r.verdict().as_str()).collect();
            let shed: f64 = self.shadow.iter().map(|r| r.shed).sum();
            let would: f64 = self.shadow.iter().filter_map(|r| r.would_shed).sum();
            out.push(Target {
                name,
                levee: format!(
                    "{shed:.0} 503s, {would:.0} would-sheds (runs: {})",
                    verdicts.join(", ")
                ),
                verdict: Verdict::of(self.shadow.iter().all(|r| r.verdict() == Verdict::Pass)),
                others: Vec::new(),
            });
        }
        self.fairness_targets(&mut out);
        if let Some(a) = &self.adaptive {
            out.extend(a.targets());
        }
        if let Some(e) = &self.edge {
            out.extend(e.targets());
        }
        if let Some(p) = &self.priority {
            out.extend(p.targets());
        }
        out
    }

    /// Issue 12's targets, on the runs with fairness (every repetition must pass).
    fn fairness_targets(&self, out: &mut Vec<Target>) {
        let fair: Vec<&FairRow> = self.fairness.iter().filter(|r| r.fairness).collect();
        let reference = self
            .fairness
            .iter()
            .filter(|r| !r.fairness)
            .map(|r| format!("{:.1} %", r.b_share() * 100.0))
            .collect::<Vec<_>>();
        let without = if reference.is_empty() {
            String::new()
        } else {
            format!("; without fairness {}", reference.join(", "))
        };
        let judged = |name: String,
                      value: &dyn Fn(&FairRow) -> String,
                      ok: &dyn Fn(&FairRow) -> bool,
                      extra: &str| {
            if fair.is_empty() {
                return Target {
                    name,
                    levee: "-".into(),
                    verdict: Verdict::Skip,
                    others: Vec::new(),
                };
            }
            let values: Vec<String> = fair.iter().map(|r| value(r)).collect();
            Target {
                name,
                levee: format!("{}{extra}", values.join(", ")),
                verdict: Verdict::of(fair.iter().all(|r| ok(r))),
                others: Vec::new(),
            }
        };
        out.push(judged(
            format!(
                "fairness: tenant b ({LIGHT}x C) beside a ({HEAVY}x C) >= {:.0}% served",
                FAIR_LIGHT_SERVED * 100.0
            ),
            &|r| format!("{:.1} %", r.b_share() * 100.0),
            &|r| r.b_share() >= FAIR_LIGHT_SERVED,
            &without,
        ));
        out.push(judged(
            format!("fairness: goodput >= {:.0}% of C", FAIR_GOODPUT * 100.0),
            &|r| {
                format!(
                    "{:.0}/s = {:.1} %",
                    r.goodput(),
                    r.goodput() / r.cap * 100.0
                )
            },
            &|r| r.goodput() >= FAIR_GOODPUT * r.cap,
            "",
        ));
        let name = format!("fairness: key flood, RSS growth <= {FLOOD_RSS_GROWTH_MIB:.0} MiB");
        if self.flood.is_empty() {
            out.push(Target {
                name,
                levee: "-".into(),
                verdict: Verdict::Skip,
                others: Vec::new(),
            });
        } else {
            let values: Vec<String> = self
                .flood
                .iter()
                .map(|f| {
                    format!(
                        "+{:.1} MiB ({} keys in {:.0} s)",
                        f.growth_mib(),
                        f.sent,
                        f.secs
                    )
                })
                .collect();
            out.push(Target {
                name,
                levee: values.join(", "),
                verdict: Verdict::of(self.flood.iter().all(|f| f.verdict() == Verdict::Pass)),
                others: Vec::new(),
            });
        }
    }

    /// levee against levee-before on the figures both have (raw, overload, memory,
    /// shed); empty when levee-before did not run. Not judged: the targets stay on levee.
    pub fn before_comparison(&self) -> Vec<Compare> {
        let (l, b) = (Kind::Levee, Kind::LeveeBefore);
        let secs = |d: Duration| d.as_secs_f64();
        let dur = |v: f64| ms(Duration::from_secs_f64(v.max(0.0)));
        let num = |v: f64| format!("{v:.0}");
        let usf = |v: f64| us_opt(Some(v));
        let mut out = Vec::new();
        if let (Some(lr), Some(br)) = (self.raw_row(l), self.raw_row(b)) {
            let wrk = lr.runs > 0 && br.runs > 0;
            let open = lr.open_runs > 0 && br.open_runs > 0;
            out.extend(compare(
                "wrk req/s",
                wrk.then_some(lr.rps),
                wrk.then_some(br.rps),
                num,
            ));
            out.extend(compare("CPU/req (wrk)", lr.wrk_cpu_us, br.wrk_cpu_us, usf));
            out.extend(compare(
                "user CPU/req (wrk)",
                lr.wrk_user_us,
                br.wrk_user_us,
                usf,
            ));
            let rate = self.half_rate.map_or("-".into(), |r| format!("{r:.0}"));
            out.extend(compare(
                format!("open loop p99 @ {rate} req/s"),
                open.then(|| secs(lr.open_p99)),
                open.then(|| secs(br.open_p99)),
                dur,
            ));
            out.extend(compare(
                "CPU/req (open loop)",
                lr.open_cpu_us,
                br.open_cpu_us,
                usf,
            ));
            if let (Some(la), Some(ba)) = (lr.added_p99, br.added_p99) {
                out.push(Compare {
                    measure: "added p99 vs direct".into(),
                    levee: us(la),
                    before: us(ba),
                    vs: us(la - ba),
                });
            }
        }
        let cap = self.capacity.map(|c| c.2);
        for lr in self.overload.iter().filter(|r| r.kind == l) {
            let Some(br) = self.over_row(b, lr.factor) else {
                continue;
            };
            let f = lr.factor;
            let pct = |v: f64| match cap {
                Some(c) if c > 0.0 => format!("{v:.0} ({:.1}%)", 100.0 * v / c),
                _ => format!("{v:.0}"),
            };
            out.extend(compare(
                format!("{f:.0}x C: goodput/s"),
                Some(lr.goodput),
                Some(br.goodput),
                pct,
            ));
            out.extend(compare(
                format!("{f:.0}x C: 2xx p99"),
                Some(secs(lr.ok_p99)),
                Some(secs(br.ok_p99)),
                dur,
            ));
            out.extend(compare(
                format!("{f:.0}x C: 503 p99 (probe)"),
                lr.probe_shed_p99.map(secs),
                br.probe_shed_p99.map(secs),
                dur,
            ));
            out.extend(compare(
                format!("{f:.0}x C: proxy CPU (cores)"),
                lr.cpu_cores,
                br.cpu_cores,
                |v| format!("{v:.2}"),
            ));
        }
        let mem = |kind: Kind| self.memory.iter().find(|r| r.kind == kind);
        if let (Some(lm), Some(bm)) = (mem(l), mem(b)) {
            let per = |r: &MemRow| (r.conns > 0.0).then(|| (r.idle_kib - r.base_kib) / r.conns);
            out.extend(compare(
                format!("RSS with {} idle conns", thousands(self.idle_target)),
                Some(lm.idle_kib),
                Some(bm.idle_kib),
                |v| format!("{:.1} MiB", v / 1024.0),
            ));
            out.extend(compare("RSS per idle conn", per(lm), per(bm), |v| {
                format!("{v:.1} KiB")
            }));
        }
        let shed = |kind: Kind| self.shed.iter().find(|r| r.kind == kind);
        if let (Some(ls), Some(bs)) = (shed(l), shed(b)) {
            out.extend(compare(
                "1 thread: proxied req/s",
                Some(ls.proxied_rps),
                Some(bs.proxied_rps),
                num,
            ));
            out.extend(compare(
                "1 thread: CPU/req",
                ls.proxied_cpu_us,
                bs.proxied_cpu_us,
                usf,
            ));
            out.extend(compare(
                "1 thread: 503/s, all slots held",
                Some(ls.shed_rps),
                Some(bs.shed_rps),
                num,
            ));
            out.extend(compare(
                "1 thread: CPU/503",
                ls.shed_cpu_us,
                bs.shed_cpu_us,
                usf,
            ));
        }
        out
    }

    /// The tables printed at the end of a run (Markdown, pasteable into the README).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(s, "## levee load benchmark");
        let _ = writeln!(s);
        let _ = writeln!(s, "- command: `{}`", self.command);
        let _ = writeln!(
            s,
            "- mode: {}, {} repetition(s) per measurement, medians shown; took {:.0} s",
            if self.quick { "quick" } else { "full" },
            self.reps,
            self.elapsed.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "- machine: {} CPUs, {}, kernel {}, load average at start {}, open files limit {}",
            m.cpus, m.cpu_model, m.kernel, m.loadavg, m.nofile
        );
        if !m.commit.is_empty() {
            let _ = writeln!(s, "- levee commit: {}", m.commit);
        }
        for (tool, version) in &m.versions {
            let _ = writeln!(s, "- {tool}: {version}");
        }
        for note in &self.notes {
            let _ = writeln!(s, "- note: {note}");
        }

        if !self.raw.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "### Raw cost: fast backend (service time 0), keep-alive, ~40-byte responses"
            );
            let _ = writeln!(s);
            let rate = self
                .half_rate
                .map_or("-".into(), |r| format!("{r:.0} req/s"));
            let _ = writeln!(
                s,
                "| target | wrk req/s | wrk p50 | wrk p99 | wrk errors | CPU/req (wrk) | open loop @ {rate}: p50 | p99 | added p99 vs direct (paired median) | CPU/req | probe p50 | probe p99 |"
            );
            let _ = writeln!(
                s,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for r in &self.raw {
                let (rps, p50, p99, errs) = if r.runs > 0 {
                    (
                        format!("{:.0}", r.rps),
                        ms(r.wrk_p50),
                        ms(r.wrk_p99),
                        format!("{:.0}", r.wrk_errors),
                    )
                } else {
                    ("-".into(), "-".into(), "-".into(), "-".into())
                };
                let (op50, op99) = if r.open_runs > 0 {
                    (ms(r.open_p50), ms(r.open_p99))
                } else {
                    ("-".into(), "-".into())
                };
                let added = match (r.kind, self.added_p99(r.kind)) {
                    (Kind::Direct, _) => "(baseline)".into(),
                    (_, Some(a)) => us(a),
                    _ => "-".into(),
                };
                let failed = if r.open_failed > 0.0 {
                    format!(" ({:.0} failed)", r.open_failed)
                } else {
                    String::new()
                };
                let (pp50, pp99) = if r.open_runs > 0 {
                    (ms(r.probe_p50), ms(r.probe_p99))
                } else {
                    ("-".into(), "-".into())
                };
                let _ = writeln!(
                    s,
                    "| {} | {rps} | {p50} | {p99} | {errs} | {} | {op50} | {op99}{failed} | {added} | {} | {pp50} | {pp99} |",
                    r.kind.name(),
                    match (r.wrk_cpu_us, r.wrk_user_us) {
                        (Some(c), Some(u)) => {
                            format!("{} (user {})", us_opt(Some(c)), us_opt(Some(u)))
                        }
                        (c, _) => us_opt(c),
                    },
                    us_opt(r.open_cpu_us),
                );
            }
        }

        if let Some((slots, p50, cap)) = self.capacity {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "### Overload: {}; C = {slots} slots / {} (p50 at half load, direct) = {cap:.0} req/s",
                self.overload_shape,
                ms(p50)
            );
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| proxy | load | offered/s | goodput/s | % of C | 2xx p50 | 2xx p99 | 503/s | 503 p99 | 503 p99 (probe) | other | replica peak in flight | proxy CPU (cores) |"
            );
            let _ = writeln!(
                s,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for r in &self.overload {
                let _ = writeln!(
                    s,
                    "| {} | {:.0}x | {:.0} | {:.0} | {:.1}% | {} | {} | {:.0} | {} | {} | {:.0} | {} | {} |",
                    r.kind.name(),
                    r.factor,
                    r.offered,
                    r.goodput,
                    100.0 * r.goodput / cap,
                    ms(r.ok_p50),
                    ms(r.ok_p99),
                    r.shed_rate,
                    if r.shed > 0.0 {
                        ms(r.shed_p99)
                    } else {
                        "-".into()
                    },
                    r.probe_shed_p99.map_or("-".into(), ms),
                    r.other,
                    r.peak,
                    r.cpu_cores.map_or("-".into(), |c| format!("{c:.2}"))
                );
            }
            if let Some((rate, p50, p99)) = self.floor {
                let _ = writeln!(s);
                let _ = writeln!(
                    s,
                    "Generator floor (direct to a fast backend at {rate:.0} req/s, no proxy): p50 {}, p99 {}. \
                     The open-loop generator sends on tokio's 1 ms timer, so each request leaves up to ~1 ms \
                     after its scheduled time and that delay counts in its latencies; the probe column is a \
                     blocking client on its own thread ({} req/s, one request at a time) without that floor, \
                     and the 503 target is judged on it.",
                    ms(p50),
                    ms(p99),
                    crate::probe::Probe::RATE
                );
            }
        }

        let reasons: Vec<String> = self
            .overload
            .iter()
            .filter(|r| !r.shed_reasons.is_empty())
            .map(|r| format!("{} {:.0}x: {}", r.kind.name(), r.factor, r.shed_reasons))
            .collect();
        if !reasons.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "levee's 503s by reason (`levee_shed_total`, per {}-s step): {}.",
                self.step_secs,
                reasons.join("; ")
            );
        }

        if !self.memory.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "### Memory: RSS with {} idle keep-alive client connections (each did one request)",
                thousands(self.idle_target)
            );
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| proxy | RSS before | RSS with conns | per conn | conns open | failed | closed by proxy |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
            for r in &self.memory {
                let per = if r.conns > 0.0 {
                    (r.idle_kib - r.base_kib) / r.conns
                } else {
                    0.0
                };
                let _ = writeln!(
                    s,
                    "| {} | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.0} | {:.0} | {:.0} |",
                    r.kind.name(),
                    r.base_kib / 1024.0,
                    r.idle_kib / 1024.0,
                    per,
                    r.conns,
                    r.failed,
                    r.closed
                );
            }
        }

        if !self.shed.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "### Shed cost: one thread each (wrk -t2 -c64)");
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| target, 1 thread | proxied req/s | proxied p99 | CPU/req | 503/s | 503 p50 | 503 p99 | CPU/503 | of it user | non-2xx | slots held | 503/s vs proxied |"
            );
            let _ = writeln!(
                s,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"
            );
            for sh in &self.shed {
                let _ = writeln!(
                    s,
                    "| {} | {:.0} | {} | {} | {:.0} | {} | {} | {} | {} | {:.1}% | {} | {:.2}x |",
                    sh.kind.name(),
                    sh.proxied_rps,
                    ms(sh.proxied_p99),
                    us_opt(sh.proxied_cpu_us),
                    sh.shed_rps,
                    ms(sh.shed_p50),
                    ms(sh.shed_p99),
                    us_opt(sh.shed_cpu_us),
                    us_opt(sh.shed_user_us),
                    sh.non2xx_share * 100.0,
                    if sh.held { "yes" } else { "NO" },
                    sh.shed_rps / sh.proxied_rps.max(1.0)
                );
            }
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "Proxied: fast backend, free slots. 503: every slot held, so every answer is a 503: levee with `queue_depth = 0`, nginx's `max_conns` refusal turned into a 503 by `error_page`, HAProxy after `timeout queue 1ms`."
            );
        }

        self.render_fresh(&mut s);
        self.render_zonefail(&mut s);
        crate::tls::render(self, &mut s);
        self.render_shadow(&mut s);
        self.render_fairness(&mut s);
        if let Some(a) = &self.adaptive {
            a.render(&mut s);
        }
        if let Some(e) = &self.edge {
            e.render(&mut s);
        }
        crate::grpc::render(self, &mut s);
        if let Some(p) = &self.priority {
            p.render(&mut s);
        }

        let before = self.before_comparison();
        if !before.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "### levee vs levee-before (the older build of `{LEVEE_BEFORE}`, same config)"
            );
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| measure | levee | levee-before | levee vs levee-before |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|");
            for c in &before {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} |",
                    c.measure, c.levee, c.before, c.vs
                );
            }
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "`x`: levee's figure over levee-before's, so above 1 is better for req/s and goodput, worse for latency, CPU and memory; added p99 shows the difference."
            );
        }

        let targets = self.targets();
        let _ = writeln!(s);
        let _ = writeln!(s, "### Targets (levee; HAProxy and nginx for context)");
        let _ = writeln!(s);
        let _ = writeln!(s, "| target | levee | verdict | haproxy | nginx |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for t in &targets {
            let other = |k: Kind| {
                t.others
                    .iter()
                    .find(|(kind, _)| *kind == k)
                    .map_or("-".to_string(), |(_, v)| v.clone())
            };
            let _ = writeln!(
                s,
                "| {} | {} | **{}** | {} | {} |",
                t.name,
                t.levee,
                t.verdict.as_str(),
                other(Kind::Haproxy),
                other(Kind::Nginx)
            );
        }
        let count = |v: Verdict| targets.iter().filter(|t| t.verdict == v).count();
        let _ = writeln!(
            s,
            "\n{} PASS, {} MISS, {} SKIP",
            count(Verdict::Pass),
            count(Verdict::Miss),
            count(Verdict::Skip)
        );
        s
    }

    fn render_fresh(&self, s: &mut String) {
        let Some(base) = &self.fresh_base else {
            return;
        };
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "### Fresh start: {}; each run on a new proxy process, open-loop load from {} ms after its spawn for {} s",
            self.fresh_shape,
            crate::FRESH_DELAY.as_millis(),
            self.fresh_step.as_secs_f64()
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Replicas unloaded (direct to one, {:.0} req/s, {} answers): p50 {}, **p99 {}**; C = {} slots / {} = {:.0} req/s (nominal {:.0}).",
            base.rate,
            base.samples,
            ms(base.p50),
            ms(base.p99),
            base.slots,
            ms(base.p50),
            base.cap,
            base.nominal
        );
        if !self.fresh.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| proxy | load | offered/s | sent/s | goodput/s | % of C | 2xx p50 | 2xx p99 | 2xx p99 / unloaded p99 | 503/s | 503 p99 | 503 p99 (probe) | other | replica peak in flight | first answer after spawn |"
            );
            let _ = writeln!(
                s,
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for f in &self.fresh {
                let r = &f.over;
                let _ = writeln!(
                    s,
                    "| {} | {:.0}x | {:.0} | {:.0} | {:.0} | {:.1}% | {} | {} | {:.2}x | {:.0} | {} | {} | {:.0} | {} | {} |",
                    r.kind.name(),
                    r.factor,
                    r.offered,
                    f.sent_rate,
                    r.goodput,
                    100.0 * r.goodput / base.cap,
                    ms(r.ok_p50),
                    ms(r.ok_p99),
                    r.ok_p99.as_secs_f64() / base.p99.as_secs_f64().max(1e-9),
                    r.shed_rate,
                    if r.shed > 0.0 {
                        ms(r.shed_p99)
                    } else {
                        "-".into()
                    },
                    r.probe_shed_p99.map_or("-".into(), ms),
                    r.other,
                    r.peak,
                    ms(f.ready)
                );
            }
        }
        if let Some((rate, sent, p50, p99)) = self.fresh_floor {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "Generator floor (direct to a fast backend at {rate:.0} req/s, no proxy): sent {sent:.0}/s, p50 {}, p99 {}. \
                 \"sent/s\" below \"offered/s\" means the generator could not keep up on this machine: its own delay is then in \
                 every latency of that row.",
                ms(p50),
                ms(p99)
            );
        }
        let reasons: Vec<String> = self
            .fresh
            .iter()
            .filter(|r| !r.over.shed_reasons.is_empty())
            .map(|r| {
                format!(
                    "{} {:.0}x: {}",
                    r.over.kind.name(),
                    r.over.factor,
                    r.over.shed_reasons
                )
            })
            .collect();
        if !reasons.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "levee's 503s by reason (`levee_shed_total`, per run): {}.",
                reasons.join("; ")
            );
        }
        if !self.burst.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "Burst on an idle upstream (a new proxy process, {} ms after its spawn):",
                crate::FRESH_DELAY.as_millis()
            );
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| proxy | burst | sent | limits admit at most | 2xx | 2xx p99 | 503 | 503 per run | other | levee's 503s by reason |"
            );
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|---:|---|");
            let admit = self.burst.first().map_or(0.0, |b| b.admit_max);
            for b in &self.burst {
                let each: Vec<String> = b.shed_each.iter().map(u64::to_string).collect();
                let _ = writeln!(
                    s,
                    "| {} | {:.0} req/s for {} ms | {:.0} | ~{:.0} | {:.0} | {} | {:.0} | {} | {:.0} | {} |",
                    b.kind.name(),
                    b.rate,
                    b.millis,
                    b.sent,
                    b.admit_max,
                    b.ok,
                    ms(b.ok_p99),
                    b.shed,
                    each.join(", "),
                    b.other,
                    if b.shed_reasons.is_empty() {
                        "-"
                    } else {
                        &b.shed_reasons
                    }
                );
            }
            let _ = writeln!(
                s,
                "\n\"Limits admit at most\": the slots start a request every p50 from the burst's first request until the last one's queue timeout ({} ms) runs out, about {admit:.0}; the rest of a burst of this size is shed by any proxy that keeps these limits, so the 0-shed target cannot be met with them.",
                crate::ZONE_QUEUE_TIMEOUT.as_millis()
            );
        }
    }

    fn render_zonefail(&self, s: &mut String) {
        if self.zonefail.is_empty() {
            return;
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "### Zone failure: {}", self.zonefail_shape);
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| proxy | sent | 2xx | 2xx p99 | 503 | other | failed (client saw) | failed per run | when (second of the load: failures) | zone a answered after the fault | its last answer after the fault | levee retries | levee's 503s by reason |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---|---|"
        );
        for z in &self.zonefail {
            let each: Vec<String> = z.failed_each.iter().map(u64::to_string).collect();
            let dash = |v: &str| {
                if v.is_empty() {
                    "-".to_owned()
                } else {
                    v.to_owned()
                }
            };
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | **{:.0}** | {} | {} | {:.0} | {} | {} | {} |",
                z.kind.name(),
                z.sent,
                z.ok,
                ms(z.ok_p99),
                z.shed,
                z.other,
                z.failed,
                each.join(", "),
                z.when,
                z.zone_a_hits,
                z.last_hit.map_or("-".into(), ms),
                dash(&z.retries),
                dash(&z.sheds)
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Failed: transport errors, timeouts and every non-2xx answer, except levee's own 503 sheds (the replicas never answer 503, so every 503 through levee is levee's; HAProxy's and nginx's 503s, \"no server available\" or \"no live upstreams\", count as failed)."
        );
    }

    fn render_shadow(&self, s: &mut String) {
        if self.shadow.is_empty() {
            return;
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "### Shadow mode: levee with `limits.mode = \"shadow\"`, {SHADOW}x the capacity of 1 replica x {} workers x {} ms",
            crate::SOLO_WORKERS,
            crate::SOLO_SERVICE_TIME.as_millis()
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| run | offered | sent | 2xx | 2xx p99 | 503 | other | would shed | by reason | replica peak in flight | verdict |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|");
        for (i, r) in self.shadow.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {:.0}/s | {:.0} | {:.0} | {} | {:.0} | {:.0} | {} | {} | {} (max_inflight {}) | **{}** |",
                i + 1,
                r.rate,
                r.sent,
                r.ok,
                ms(r.ok_p99),
                r.shed,
                r.other,
                r.would_shed.map_or("?".into(), |w| format!("{w:.0}")),
                r.would_reasons,
                r.peak,
                r.max_inflight,
                r.verdict().as_str()
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Shadow mode queues and sheds nothing and does not enforce max_inflight: the replica gets everything and queues the excess itself, so its latency grows through the run. PASS: no 503 and would-be sheds counted."
        );
    }

    fn render_fairness(&self, s: &mut String) {
        if self.fairness.is_empty() && self.flood.is_empty() {
            return;
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "### Fairness: 1 replica x {} workers x {} ms; tenant a at {HEAVY}x C, tenant b at {LIGHT}x C, together",
            crate::SOLO_WORKERS,
            crate::SOLO_SERVICE_TIME.as_millis()
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| run | levee | C | a offered | a 2xx | a 2xx p99 | b offered | b 2xx | b served | b 2xx p99 | goodput | other | levee's 503s by reason | verdict |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"
        );
        for (i, r) in self.fairness.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {:.0}/s | {:.0}/s | {:.0} | {} | {:.0}/s | {:.0} | **{:.1} %** | {} | {:.0}/s ({:.1} % of C) | {:.0} | {} | {} |",
                i / 2 + 1,
                if r.fairness { "with fairness" } else { "without (reference)" },
                r.cap,
                r.a_rate,
                r.a_ok,
                ms(r.a_p99),
                r.b_rate,
                r.b_ok,
                r.b_share() * 100.0,
                ms(r.b_p99),
                r.goodput(),
                r.goodput() / r.cap * 100.0,
                r.other,
                r.reasons,
                if r.fairness { r.verdict().as_str() } else { "-" }
            );
        }
        if !self.flood.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "| key flood | keys sent | over | 2xx | 503 | other | levee RSS before | after | growth | verdict |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
            for (i, f) in self.flood.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} s (took {}) | {} | {} | {} | {:.1} MiB | {:.1} MiB | **{:+.1} MiB** | {} |",
                    i + 1,
                    f.sent,
                    f.secs,
                    ms(f.took),
                    f.ok,
                    f.shed,
                    f.other,
                    f.rss_before_kib / 1024.0,
                    f.rss_after_kib / 1024.0,
                    f.growth_mib(),
                    f.verdict().as_str()
                );
            }
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "Targets: b served >= {:.0} % and goodput >= {:.0} % of C with fairness; the key flood (every request a new key of `x-tenant`) grows levee's RSS by at most {FLOOD_RSS_GROWTH_MIB:.0} MiB.",
            FAIR_LIGHT_SERVED * 100.0,
            FAIR_GOODPUT * 100.0
        );
    }

    pub fn to_json(&self) -> Value {
        let d = |d: Duration| d.as_secs_f64() * 1e3;
        json!({
            "command": self.command,
            "quick": self.quick,
            "reps": self.reps,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "machine": {
                "cpus": self.machine.cpus,
                "cpu_model": self.machine.cpu_model,
                "kernel": self.machine.kernel,
                "loadavg": self.machine.loadavg,
                "commit": self.machine.commit,
            },
            "raw": self.raw.iter().map(|r| json!({
                "target": r.kind.name(), "runs": r.runs, "rps": r.rps,
                "wrk_p50_ms": d(r.wrk_p50), "wrk_p99_ms": d(r.wrk_p99), "wrk_cpu_us": r.wrk_cpu_us, "wrk_user_us": r.wrk_user_us, "open_cpu_us": r.open_cpu_us,
                "open_rate": self.half_rate, "added_p99_us": r.added_p99.map(|a| a * 1e6), "open_p50_ms": d(r.open_p50), "open_p99_ms": d(r.open_p99),
                "probe_p50_ms": d(r.probe_p50), "probe_p99_ms": d(r.probe_p99),
            })).collect::<Vec<_>>(),
            "capacity": self.capacity.map(|(slots, p50, c)| json!({"slots": slots, "p50_ms": d(p50), "rps": c})),
            "overload": self.overload.iter().map(|r| json!({
                "proxy": r.kind.name(), "runs": r.runs, "factor": r.factor, "offered": r.offered,
                "goodput": r.goodput, "ok_p50_ms": d(r.ok_p50), "ok_p99_ms": d(r.ok_p99),
                "shed_per_s": r.shed_rate, "shed_p99_ms": d(r.shed_p99), "probe_shed_p99_ms": r.probe_shed_p99.map(d), "other": r.other, "peak_inflight": r.peak, "cpu_cores": r.cpu_cores, "shed_reasons": r.shed_reasons,
            })).collect::<Vec<_>>(),
            "memory": self.memory.iter().map(|r| json!({
                "proxy": r.kind.name(), "runs": r.runs, "base_kib": r.base_kib, "idle_kib": r.idle_kib,
                "conns": r.conns, "failed": r.failed, "closed": r.closed,
            })).collect::<Vec<_>>(),
            "shed": self.shed.iter().map(|s| json!({
                "target": s.kind.name(), "runs": s.runs, "proxied_rps": s.proxied_rps, "shed_rps": s.shed_rps,
                "shed_p50_ms": d(s.shed_p50), "shed_p99_ms": d(s.shed_p99), "held": s.held,
                "proxied_cpu_us": s.proxied_cpu_us, "shed_cpu_us": s.shed_cpu_us, "shed_user_us": s.shed_user_us,
            })).collect::<Vec<_>>(),
            "fresh_base": self.fresh_base.as_ref().map(|b| json!({
                "slots": b.slots, "nominal_rps": b.nominal, "rate": b.rate, "samples": b.samples,
                "p50_ms": d(b.p50), "unloaded_p99_ms": d(b.p99), "capacity_rps": b.cap,
            })),
            "fresh_shape": self.fresh_shape,
            "fresh_step_s": self.fresh_step.as_secs_f64(),
            "fresh": self.fresh.iter().map(|f| {
                let r = &f.over;
                json!({
                    "proxy": r.kind.name(), "runs": r.runs, "factor": r.factor, "offered": r.offered,
                    "sent_per_s": f.sent_rate, "goodput": r.goodput,
                    "goodput_share": self.fresh_base.as_ref().map(|b| r.goodput / b.cap),
                    "ok_p50_ms": d(r.ok_p50), "ok_p99_ms": d(r.ok_p99),
                    "ok_p99_over_unloaded": self.fresh_base.as_ref().map(|b| r.ok_p99.as_secs_f64() / b.p99.as_secs_f64().max(1e-9)),
                    "shed_per_s": r.shed_rate, "shed_p99_ms": d(r.shed_p99), "probe_shed_p99_ms": r.probe_shed_p99.map(d),
                    "other": r.other, "peak_inflight": r.peak, "cpu_cores": r.cpu_cores, "shed_reasons": r.shed_reasons,
                    "ready_ms": d(f.ready),
                })
            }).collect::<Vec<_>>(),
            "fresh_floor": self.fresh_floor.map(|(rate, sent, p50, p99)| json!({
                "rate": rate, "sent_per_s": sent, "p50_ms": d(p50), "p99_ms": d(p99),
            })),
            "fresh_burst": self.burst.iter().map(|b| json!({
                "proxy": b.kind.name(), "runs": b.runs, "rate": b.rate, "ms": b.millis, "admit_max": b.admit_max, "sent": b.sent,
                "ok": b.ok, "ok_p99_ms": d(b.ok_p99), "shed": b.shed, "shed_each": b.shed_each,
                "other": b.other, "shed_reasons": b.shed_reasons,
            })).collect::<Vec<_>>(),
            "zonefail_shape": self.zonefail_shape,
            "zonefail": self.zonefail.iter().map(|z| json!({
                "proxy": z.kind.name(), "runs": z.runs, "sent": z.sent, "ok": z.ok, "ok_p99_ms": d(z.ok_p99),
                "shed": z.shed, "other": z.other, "failed": z.failed, "failed_each": z.failed_each,
                "failures_by_second": z.when, "zone_a_hits_after_fault": z.zone_a_hits,
                "zone_a_last_hit_ms": z.last_hit.map(d), "levee_retries": z.retries, "levee_sheds": z.sheds,
            })).collect::<Vec<_>>(),
            "tls": crate::tls::to_json(self),
            "shadow": self.shadow.iter().map(|r| json!({
                "rate": r.rate, "sent": r.sent, "ok": r.ok, "ok_p99_ms": d(r.ok_p99), "shed": r.shed,
                "other": r.other, "would_shed": r.would_shed, "would_shed_reasons": r.would_reasons,
                "levee_sheds": r.levee_sheds, "peak_inflight": r.peak, "max_inflight": r.max_inflight,
                "verdict": r.verdict().as_str(),
            })).collect::<Vec<_>>(),
            "fairness": self.fairness.iter().map(|r| json!({
                "fairness": r.fairness, "capacity_rps": r.cap, "secs": r.secs,
                "a_rate": r.a_rate, "a_sent": r.a_sent, "a_ok": r.a_ok, "a_ok_p99_ms": d(r.a_p99),
                "b_rate": r.b_rate, "b_sent": r.b_sent, "b_ok": r.b_ok, "b_ok_p99_ms": d(r.b_p99),
                "b_served_share": r.b_share(), "goodput": r.goodput(), "other": r.other,
                "levee_sheds": r.reasons, "verdict": r.verdict().as_str(),
            })).collect::<Vec<_>>(),
            "key_flood": self.flood.iter().map(|f| json!({
                "keys": f.keys, "secs": f.secs, "took_ms": d(f.took), "sent": f.sent, "ok": f.ok,
                "shed": f.shed, "other": f.other, "rss_before_kib": f.rss_before_kib,
                "rss_after_kib": f.rss_after_kib, "growth_mib": f.growth_mib(), "verdict": f.verdict().as_str(),
            })).collect::<Vec<_>>(),
            "adaptive": self.adaptive.as_ref().map(|a| a.to_json()),
            "edge": self.edge.as_ref().map(|e| e.to_json()),
            "grpc": crate::grpc::to_json(self),
            "priority": self.priority.as_ref().map(|p| p.to_json()),
            "levee_vs_before": self.before_comparison().iter().map(|c| json!({
                "measure": c.measure, "levee": c.levee, "levee_before": c.before, "vs": c.vs,
            })).collect::<Vec<_>>(),
            "targets": self.targets().iter().map(|t| json!({
                "target": t.name, "levee": t.levee, "verdict": t.verdict.as_str(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// `10,000`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
