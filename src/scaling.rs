//! The scaling signal of one upstream: the load offered to it, what its backends can
//! serve, and how many backends it needs, for an autoscaler (an HPA through
//! prometheus-adapter, KEDA) to act on.
//!
//! Computed by the level ticker from counters the request path keeps anyway, never
//! per request:
//! - **demand** (req/s): requests offered, shed ones included (admitted requests less
//!   retries, plus sheds), as an exponentially weighted rate with time constant
//!   [`DEMAND_TAU`]: a step in load shows 63 % of itself after one `DEMAND_TAU` and 95 %
//!   after three.
//! - **capacity** (req/s): what the backends that may take traffic finish when all
//!   their slots are busy: the sum of their limits in force over the upstream's recent
//!   median latency (the level ticker's service rate).
//! - **desired backends**: `ceil(demand / (capacity per backend × target_utilization))`,
//!   at least 1, where capacity per backend is capacity over the backends taking
//!   traffic (the last figure known is kept while none is measured; before the first
//!   one, the configured backend count is desired). It rises at once and falls only
//!   after [`SCALE_DOWN_WINDOW`]: the published figure is the highest raw one of that
//!   window, like an HPA's scale-down stabilization.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default `[upstream.scaling] target_utilization`.
pub const DEFAULT_TARGET_UTILIZATION: f64 = 0.8;
/// Time constant of the demand average.
pub const DEMAND_TAU: Duration = Duration::from_secs(1);
/// How long a higher desired figure holds before a lower one is published (the HPA's
/// default scale-down stabilization window).
pub const SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);
/// Granularity of the window: one highest figure kept per bucket, so memory is
/// `SCALE_DOWN_WINDOW / BUCKET + 1` entries whatever the tick rate.
const BUCKET: Duration = Duration::from_secs(10);

/// One reading of the signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub demand_rps: f64,
    pub capacity_rps: f64,
    pub desired_backends: u32,
}

/// What the ticker knows of the upstream at one tick.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Requests offered since the process started (a counter; a drop is a reset).
    pub offered: u64,
    /// Requests per second the backends taking traffic finish when busy; 0: unknown.
    pub capacity_rps: f64,
    /// Backends taking traffic now.
    pub healthy: usize,
    /// Backends configured (the figure desired before any capacity is known).
    pub configured: usize,
    pub target_utilization: f64,
}

/// The signal's state; carried over reloads with the upstream. Only the level ticker
/// writes it (the lock is never contended); the figures are read from atomics.
#[derive(Debug, Default)]
pub struct Scaling {
    state: parking_lot::Mutex<State>,
    demand: AtomicU64,
    capacity: AtomicU64,
    desired: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    last: Option<(Instant, u64)>,
    demand: f64,
    /// Capacity of one backend, as last measured.
    per_backend: Option<f64>,
    /// (bucket start, highest raw figure in it), oldest first.
    window: VecDeque<(Instant, u32)>,
}

impl Scaling {
    /// Takes one tick's sample and publishes the new reading.
    pub fn update(&self, now: Instant, s: Sample) -> Reading {
        let mut st = self.state.lock();
        match st.last {
            Some((at, offered)) if now > at => {
                let dt = now.duration_since(at).as_secs_f64();
                // A counter that went down was reset (its series removed): no rate this
                // tick, count from the new value.
                let rate = s.offered.saturating_sub(offered) as f64 / dt;
                let alpha = 1.0 - (-dt / DEMAND_TAU.as_secs_f64()).exp();
                st.demand += alpha * (rate - st.demand);
                st.last = Some((now, s.offered));
            }
            Some(_) => {}
            None => st.last = Some((now, s.offered)),
        }
        if s.capacity_rps > 0.0 && s.healthy > 0 {
            st.per_backend = Some(s.capacity_rps / s.healthy as f64);
        }
        let published = match st.per_backend {
            Some(per) => {
                let raw = desired(st.demand, per, s.target_utilization);
                st.hold(now, raw)
            }
            // Nothing measured yet: the status quo, not held (the first measurement
            // replaces it).
            None => u32::try_from(s.configured.max(1)).unwrap_or(u32::MAX),
        };
        let reading = Reading {
            demand_rps: st.demand,
            capacity_rps: s.capacity_rps,
            desired_backends: published,
        };
        self.demand
            .store(reading.demand_rps.to_bits(), Ordering::Relaxed);
        self.capacity
            .store(reading.capacity_rps.to_bits(), Ordering::Relaxed);
        self.desired
            .store(u64::from(reading.desired_backends), Ordering::Relaxed);
        reading
    }

    /// The reading of the last tick.
    pub fn reading(&self) -> Reading {
        Reading {
            demand_rps: f64::from_bits(self.demand.load(Ordering::Relaxed)),
            capacity_rps: f64::from_bits(self.capacity.load(Ordering::Relaxed)),
            desired_backends: u32::try_from(self.desired.load(Ordering::Relaxed))
                .unwrap_or(u32::MAX),
        }
    }
}

impl State {
    /// Records `raw` at `now` and returns the highest figure of the window.
    fn hold(&mut self, now: Instant, raw: u32) -> u32 {
        match self.window.back_mut() {
            Some((start, high)) if now.saturating_duration_since(*start) < BUCKET => {
                *high = (*high).max(raw);
            }
            _ => self.window.push_back((now, raw)),
        }
        while self
            .window
            .front()
            .is_some_and(|(start, _)| now.saturating_duration_since(*start) > SCALE_DOWN_WINDOW)
        {
            self.window.pop_front();
        }
        self.window.iter().map(|(_, h)| *h).max().unwrap_or(raw)
    }
}

/// Backends needed to serve `demand` when each serves `per_backend` at
/// `target_utilization`: at least 1.
pub fn desired(demand: f64, per_backend: f64, target_utilization: f64) -> u32 {
    let each = per_backend * target_utilization;
    // NaN fails both comparisons.
    if each.is_nan() || each <= 0.0 || !demand.is_finite() {
        return 1;
    }
    // A hair under a whole number stays there (2.0000001 from float noise is 2).
    let n = (demand / each - 1e-9).ceil();
    if n >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        (n as u32).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(offered: u64) -> Sample {
        Sample {
            offered,
            capacity_rps: 1600.0,
            healthy: 2,
            configured: 2,
            target_utilization: 0.8,
        }
    }

    /// Ticks every 100 ms for `secs` at `rps`, from `t` and `offered`; returns both.
    fn run(s: &Scaling, t: &mut Instant, offered: &mut u64, rps: u64, secs: u64) -> Reading {
        let mut last = s.reading();
        for _ in 0..secs * 10 {
            *t += Duration::from_millis(100);
            *offered += rps / 10;
            last = s.update(*t, sample(*offered));
        }
        last
    }

    #[test]
    fn the_formula() {
        // Two backends of 800 req/s at 80 %: 640 each.
        assert_eq!(desired(2400.0, 800.0, 0.8), 4);
        assert_eq!(desired(400.0, 800.0, 0.8), 1);
        assert_eq!(desired(1280.0, 800.0, 0.8), 2);
        assert_eq!(desired(1281.0, 800.0, 0.8), 3);
        assert_eq!(desired(0.0, 800.0, 0.8), 1);
        assert_eq!(desired(10.0, 0.0, 0.8), 1);
        assert_eq!(desired(f64::INFINITY, 800.0, 0.8), 1);
    }

    #[test]
    fn it_rises_within_seconds_and_falls_after_the_window() {
        let s = Scaling::default();
        let mut t = Instant::now();
        let mut offered = 0;
        s.update(t, sample(0));
        let quiet = run(&s, &mut t, &mut offered, 400, 10);
        assert_eq!(quiet.desired_backends, 1, "{quiet:?}");
        assert!((quiet.demand_rps - 400.0).abs() < 20.0, "{quiet:?}");
        // A surge to 2,400 req/s: 3 within 2 s, 4 within 5 s.
        let r = run(&s, &mut t, &mut offered, 2400, 2);
        assert!(r.desired_backends >= 3, "{r:?}");
        let r = run(&s, &mut t, &mut offered, 2400, 3);
        assert_eq!(r.desired_backends, 4, "{r:?}");
        // Back to 400: the figure holds for the window, then falls.
        let r = run(&s, &mut t, &mut offered, 400, 60);
        assert_eq!(r.desired_backends, 4, "{r:?}");
        assert!(r.demand_rps < 450.0, "{r:?}");
        let r = run(&s, &mut t, &mut offered, 400, 240);
        assert_eq!(r.desired_backends, 1, "{r:?}");
        assert_eq!(s.reading(), r);
    }

    #[test]
    fn without_a_capacity_the_configured_count_is_desired() {
        let s = Scaling::default();
        let t = Instant::now();
        let r = s.update(
            t,
            Sample {
                capacity_rps: 0.0,
                configured: 3,
                ..sample(0)
            },
        );
        assert_eq!(r.desired_backends, 3);
        // A counter reset reads as no traffic, not as a negative rate.
        let r = s.update(t + Duration::from_millis(100), sample(5));
        s.update(t + Duration::from_millis(200), sample(0));
        assert!(r.demand_rps >= 0.0);
        assert!(s.reading().demand_rps >= 0.0);
    }
}
