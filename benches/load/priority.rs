//! The priority section (issue 22): priority that holds under overload, levee beside
//! levee-before (the build named by `LEVEE_BEFORE`) with the same config.
//!
//! The replica, 16 workers x 20 ms (C measured as in the shadow section),
//! behind `max_inflight = 16`, `queue_depth = 160`, `queue_timeout_ms = 100` and the
//! default levels, with `[[priority]]` rules on an `x-priority` header:
//!
//! - **trickle**: `normal` at 5x C and `critical` at 7.5 % of C, open loop, together:
//!   the share of critical requests served and their admitted p99 against the
//!   replica's unloaded p99, and the total goodput against C;
//! - **four**: every class at 5x C in all, in equal shares (1.25x C each), open loop:
//!   the share of each class served, which should follow the class order.
//!
//! With `--quick` each run lasts 2 s, else 8 s (the run).

use std::fmt::Write as _;
use std::time::Duration;

use levee::demo::load::{self, Report};
use serde_json::{json, Value};

use crate::proxies::{Kind, Setup, Tools};
use crate::report::{median, ms, Results, Target, Verdict};
use crate::{counter_delta, fmt_reasons, open_loop, replica, settle, start, Opts, Plan};

/// The replica and levee's limits in front of it.
pub const WORKERS: usize = 16;
pub const SERVICE_TIME: Duration = Duration::from_millis(20);
const QUEUE_DEPTH: u32 = 160;
const QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
/// The header the `[[priority]]` rules match.
const HEADER: &str = "x-priority";
/// The trickle case's offered loads, in multiples of C.
pub const NORMAL_FACTOR: f64 = 5.0;
pub const CRITICAL_FACTOR: f64 = 0.075;
/// The four-class case's offered load in all, in multiples of C (a quarter each).
pub const ALL_FACTOR: f64 = 5.0;
/// The replica's unloaded latency is measured at this rate, directly.
const UNLOADED_RATE: f64 = 200.0;

/// Targets.
pub const CRITICAL_SERVED: f64 = 0.999;
pub const P99_RATIO: f64 = 1.3;
pub const GOODPUT: f64 = 0.97;

/// Classes, highest first (the order waiters are served in).
const CLASSES: [&str; 4] = ["critical", "high", "normal", "low"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Case {
    Trickle,
    Four,
}

impl Case {
    const ALL: [Case; 2] = [Case::Trickle, Case::Four];

    fn name(self) -> &'static str {
        match self {
            Case::Trickle => "trickle",
            Case::Four => "four",
        }
    }

    /// Offered rate of each class, in multiples of C.
    fn factors(self) -> [(&'static str, f64); 4] {
        match self {
            Case::Trickle => [
                ("critical", CRITICAL_FACTOR),
                ("high", 0.0),
                ("normal", NORMAL_FACTOR),
                ("low", 0.0),
            ],
            Case::Four => CLASSES.map(|c| (c, ALL_FACTOR / 4.0)),
        }
    }
}

/// What one class met in one run.
#[derive(Debug, Clone)]
pub struct ClassRun {
    pub class: &'static str,
    pub rate: f64,
    pub sent: u64,
    pub ok: u64,
    pub shed: u64,
    pub other: u64,
    pub ok_p99: Duration,
}

impl ClassRun {
    fn of(class: &'static str, rate: f64, r: &Report) -> ClassRun {
        ClassRun {
            class,
            rate,
            sent: r.sent,
            ok: r.ok,
            shed: r.shed,
            other: r.other,
            ok_p99: r.ok_p99,
        }
    }

    /// Share of the class's requests served (2xx of sent).
    pub fn served(&self) -> f64 {
        self.ok as f64 / (self.sent.max(1)) as f64
    }
}

/// One run of one case through one levee build.
#[derive(Debug, Clone)]
pub struct PrioRun {
    pub kind: Kind,
    pub case: Case,
    pub classes: Vec<ClassRun>,
    /// levee's own 503s in the run, by reason and by class.
    pub sheds: String,
}

impl PrioRun {
    fn class(&self, name: &str) -> Option<&ClassRun> {
        self.classes.iter().find(|c| c.class == name)
    }

    fn goodput(&self, secs: f64) -> f64 {
        self.classes.iter().map(|c| c.ok as f64).sum::<f64>() / secs
    }
}

#[derive(Debug, Clone, Default)]
pub struct PriorityResults {
    /// C: the replica's workers over its unloaded p50.
    pub cap: f64,
    pub unloaded_p50: Duration,
    pub unloaded_p99: Duration,
    pub secs: f64,
    pub runs: Vec<PrioRun>,
}

impl PriorityResults {
    fn runs(&self, kind: Kind, case: Case) -> Vec<&PrioRun> {
        self.runs
            .iter()
            .filter(|r| r.kind == kind && r.case == case)
            .collect()
    }

    /// Median over `kind`'s runs of `case` of `f`, if it ran.
    fn med(&self, kind: Kind, case: Case, f: impl Fn(&PrioRun) -> Option<f64>) -> Option<f64> {
        let v: Vec<f64> = self.runs(kind, case).into_iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    }

    /// The trickle case's three measures for `kind`: critical served, critical p99
    /// over the replica's unloaded p99, goodput over C (medians over the runs).
    fn trickle(&self, kind: Kind) -> Option<(f64, f64, f64)> {
        let served = self.med(kind, Case::Trickle, |r| {
            r.class("critical").map(ClassRun::served)
        })?;
        let unloaded = self.unloaded_p99.as_secs_f64().max(1e-6);
        let p99 = self.med(kind, Case::Trickle, |r| {
            r.class("critical")
                .map(|c| c.ok_p99.as_secs_f64() / unloaded)
        })?;
        let goodput = self.med(kind, Case::Trickle, |r| {
            Some(r.goodput(self.secs) / self.cap)
        })?;
        Some((served, p99, goodput))
    }

    /// The four-class case's served shares for `kind`, highest class first (medians).
    fn shares(&self, kind: Kind) -> Option<Vec<f64>> {
        CLASSES
            .iter()
            .map(|c| self.med(kind, Case::Four, |r| r.class(c).map(ClassRun::served)))
            .collect()
    }

    pub fn targets(&self) -> Vec<Target> {
        let pct = |v: f64| format!("{:.1} %", v * 100.0);
        let before = |f: &dyn Fn(Kind) -> Option<String>| {
            f(Kind::LeveeBefore)
                .map(|v| vec![(Kind::LeveeBefore, v)])
                .unwrap_or_default()
        };
        let trickle = |k: Kind| {
            self.trickle(k).map(|(s, p, g)| {
                format!(
                    "critical served {}, p99 {p:.2}x unloaded, goodput {} of C",
                    pct(s),
                    pct(g)
                )
            })
        };
        let shares = |k: Kind| {
            self.shares(k)
                .map(|v| v.iter().map(|s| pct(*s)).collect::<Vec<_>>().join(" ≥ "))
        };
        let mut out = Vec::new();
        out.push(Target {
            name: format!(
                "priority trickle (normal {NORMAL_FACTOR}x C + critical {:.1} % of C): critical served >= {:.1} %, its p99 <= {P99_RATIO}x unloaded p99, goodput >= {:.0} % of C",
                CRITICAL_FACTOR * 100.0,
                CRITICAL_SERVED * 100.0,
                GOODPUT * 100.0
            ),
            levee: trickle(Kind::Levee).unwrap_or_else(|| "-".into()),
            verdict: match self.trickle(Kind::Levee) {
                Some((s, p, g)) => {
                    Verdict::of(s >= CRITICAL_SERVED && p <= P99_RATIO && g >= GOODPUT)
                }
                None => Verdict::Skip,
            },
            others: before(&trickle),
        });
        out.push(Target {
            name: format!(
                "priority four classes at {ALL_FACTOR}x C in equal shares: served critical >= high >= normal >= low, critical >= {:.1} %",
                CRITICAL_SERVED * 100.0
            ),
            levee: shares(Kind::Levee).unwrap_or_else(|| "-".into()),
            verdict: match self.shares(Kind::Levee) {
                Some(v) => Verdict::of(
                    v.windows(2).all(|w| w[0] >= w[1]) && v[0] >= CRITICAL_SERVED,
                ),
                None => Verdict::Skip,
            },
            others: before(&shares),
        });
        out
    }

    pub fn render(&self, s: &mut String) {
        if self.runs.is_empty() {
            return;
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "### Priority under overload: 1 replica x {WORKERS} workers x {} ms (C = {:.0} req/s, unloaded p50 {} p99 {}), max_inflight {WORKERS}, queue {QUEUE_DEPTH} for {} ms, {:.0} s a run; medians over the runs",
            SERVICE_TIME.as_millis(),
            self.cap,
            ms(self.unloaded_p50),
            ms(self.unloaded_p99),
            QUEUE_TIMEOUT.as_millis(),
            self.secs
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "| case | build | class | offered/s | sent | served | 503 | other | served p99 | goodput (all classes) |"
        );
        let _ = writeln!(s, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
        for case in Case::ALL {
            for kind in [Kind::Levee, Kind::LeveeBefore] {
                let runs = self.runs(kind, case);
                if runs.is_empty() {
                    continue;
                }
                let goodput = median(runs.iter().map(|r| r.goodput(self.secs)).collect());
                for (i, (class, factor)) in case.factors().iter().enumerate() {
                    if *factor == 0.0 {
                        continue;
                    }
                    let of = |f: &dyn Fn(&ClassRun) -> f64| {
                        median(runs.iter().filter_map(|r| r.class(class)).map(f).collect())
                    };
                    let _ = writeln!(
                        s,
                        "| {} | {} | {class} | {:.0} | {:.0} | {:.0} ({:.1} %) | {:.0} | {:.0} | {} | {} |",
                        case.name(),
                        kind.name(),
                        factor * self.cap,
                        of(&|c| c.sent as f64),
                        of(&|c| c.ok as f64),
                        of(&|c| c.served()) * 100.0,
                        of(&|c| c.shed as f64),
                        of(&|c| c.other as f64),
                        ms(Duration::from_secs_f64(of(&|c| c.ok_p99.as_secs_f64()))),
                        if i == 0 || (case == Case::Trickle && *class == "normal") {
                            format!("{goodput:.0}/s = {:.1} % of C", goodput / self.cap * 100.0)
                        } else {
                            String::new()
                        },
                    );
                }
            }
        }
        for r in &self.runs {
            let _ = writeln!(
                s,
                "- {} {}: levee's 503s: {}",
                r.case.name(),
                r.kind.name(),
                r.sheds
            );
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cap": self.cap,
            "unloaded_p50_ms": self.unloaded_p50.as_secs_f64() * 1000.0,
            "unloaded_p99_ms": self.unloaded_p99.as_secs_f64() * 1000.0,
            "secs": self.secs,
            "runs": self.runs.iter().map(|r| json!({
                "build": r.kind.name(),
                "case": r.case.name(),
                "levee_sheds": r.sheds,
                "goodput": r.goodput(self.secs),
                "classes": r.classes.iter().map(|c| json!({
                    "class": c.class, "rate": c.rate, "sent": c.sent, "ok": c.ok, "shed": c.shed,
                    "other": c.other, "ok_p99_ms": c.ok_p99.as_secs_f64() * 1000.0,
                    "served": c.served(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// The `[[priority]]` rules: `x-priority: critical|high|low`; anything else is normal.
fn rules() -> String {
    ["critical", "high", "low"]
        .iter()
        .map(|c| {
            format!("[[priority]]\nmatch = {{ header = \"{HEADER}:{c}\" }}\nclass = \"{c}\"\n")
        })
        .collect()
}

fn setup(backend: std::net::SocketAddr) -> Setup {
    Setup {
        backends: vec![backend],
        threads: crate::THREADS,
        max_conns: Some(WORKERS as u32),
        queue_depth: QUEUE_DEPTH,
        queue_timeout: QUEUE_TIMEOUT,
        max_clients: 8192,
        zones: Vec::new(),
        health: None,
        retry_5xx: false,
        early_levels: false,
        tls: None,
        levee_extra: String::new(),
        levee_upstream: rules(),
        grpc: false,
    }
}

pub async fn section(plan: &Plan, opts: &Opts, tools: &Tools, kinds: &[Kind], res: &mut Results) {
    let run_len = if opts.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(8)
    };
    println!(
        "\n== priority: normal {NORMAL_FACTOR}x C + critical {:.1} % of C; then all four classes at {ALL_FACTOR}x C in equal shares; {} ms a run",
        CRITICAL_FACTOR * 100.0,
        run_len.as_millis()
    );
    let builds: Vec<Kind> = [Kind::Levee, Kind::LeveeBefore]
        .into_iter()
        .filter(|k| kinds.contains(k))
        .collect();
    if builds.is_empty() {
        println!("SKIP priority: neither levee nor levee-before selected");
        return;
    }
    let r = replica("prio", WORKERS, SERVICE_TIME).await;
    let unloaded = load::run(
        open_loop(r.addr(), "/work", UNLOADED_RATE, plan.unloaded),
        |_| {},
    )
    .await;
    let p50 = if unloaded.ok_p50.is_zero() {
        SERVICE_TIME
    } else {
        unloaded.ok_p50
    };
    let cap = WORKERS as f64 / p50.as_secs_f64();
    println!(
        "  replica unloaded: p50 {} p99 {}; C = {WORKERS} / p50 = {cap:.0} req/s",
        ms(p50),
        ms(unloaded.ok_p99)
    );
    let mut out = PriorityResults {
        cap,
        unloaded_p50: p50,
        unloaded_p99: unloaded.ok_p99,
        secs: run_len.as_secs_f64(),
        runs: Vec::new(),
    };
    let setup = setup(r.addr());
    for rep in 1..=opts.reps {
        for case in Case::ALL {
            for &kind in &builds {
                settle(std::slice::from_ref(&r)).await;
                let Some(p) = start(kind, &setup, tools, res).await else {
                    continue;
                };
                let sheds0 = p.levee_sheds().await;
                let by_class0 = p.levee_counter("levee_shed_total", "priority").await;
                let loads: Vec<_> = case
                    .factors()
                    .into_iter()
                    .filter(|(_, f)| *f > 0.0)
                    .map(|(class, f)| {
                        let mut cfg = open_loop(p.addr, "/work", f * cap, run_len);
                        cfg.headers = vec![(HEADER.to_owned(), class.to_owned())];
                        (class, f * cap, cfg)
                    })
                    .collect();
                let reports = futures_join(loads.iter().map(|(_, _, c)| c.clone())).await;
                let sheds = counter_delta(sheds0, p.levee_sheds().await);
                let by_class = counter_delta(
                    by_class0,
                    p.levee_counter("levee_shed_total", "priority").await,
                );
                p.stop().await;
                let classes: Vec<ClassRun> = loads
                    .iter()
                    .zip(&reports)
                    .map(|((class, rate, _), r)| ClassRun::of(class, *rate, r))
                    .collect();
                let line = classes
                    .iter()
                    .map(|c| {
                        format!(
                            "{} {:.0}/s: sent {} 2xx {} ({:.1} %, p99 {}) 503 {} other {}",
                            c.class,
                            c.rate,
                            c.sent,
                            c.ok,
                            c.served() * 100.0,
                            ms(c.ok_p99),
                            c.shed,
                            c.other
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" | ");
                let run = PrioRun {
                    kind,
                    case,
                    classes,
                    sheds: format!(
                        "{}; by class: {}",
                        fmt_reasons(&sheds, 1.0),
                        fmt_reasons(&by_class, 1.0)
                    ),
                };
                println!(
                    "  rep {rep} {} {}: {line} | goodput {:.0}/s = {:.1} % of C | levee 503s: {}",
                    case.name(),
                    kind.name(),
                    run.goodput(out.secs),
                    run.goodput(out.secs) / cap * 100.0,
                    run.sheds
                );
                out.runs.push(run);
            }
        }
    }
    res.priority = Some(out);
}

/// Runs every load at once; their reports in the same order.
async fn futures_join(cfgs: impl Iterator<Item = load::LoadConfig>) -> Vec<Report> {
    let tasks: Vec<_> = cfgs
        .map(|cfg| tokio::spawn(load::run(cfg, |_| {})))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap_or_default());
    }
    out
}
