//! The adaptive limit of one backend: AIMD on the backend's own signals, with a Vegas
//! estimate of the queue inside it.
//!
//! Every response that ends cleanly adds its latency (send to end of response) to the
//! backend's [`Intake`], a pair of lock-free histograms; a load report adds its
//! utilization. The upstream's control tick (every 100 ms) drains the intake into the
//! [`Controller`], which decides once it holds [`MIN_SAMPLES`] responses over at least
//! [`MIN_INTERVAL`]:
//!
//! 1. **p95 above `target_p95`**: multiplicative decrease, by `target / p95` clamped to
//!    `[0.5, 0.9]`, from what the backend actually used (its peak in flight, when below
//!    the limit), then the controller waits one p95 for the responses to requests sent
//!    under the old limit to pass (TCP's one cut per round trip).
//! 2. **with load reports** (`load_target` set and the backend sends them): reported
//!    utilization above the target cuts the same way, by `load_target / load` clamped
//!    to `[0.1, 0.9]` (a report measures the backend's whole queue, every levee's
//!    share, so every instance cutting by it brings the backend to its target at once);
//!    below it, the limit rises by one.
//! 3. **without them**: the queue inside the backend is estimated as Vegas does, by
//!    Little's law: responses per second × (p50 − the backend's unloaded p50, its
//!    *floor*, less twice the latency's noise: how much an interval's p50 moves while the
//!    limit holds still). Above `2·max(1, log10 limit)` requests ([`QUEUE_HIGH`]) the
//!    limit falls by half the excess, below `max(1, log10 limit)` it rises by one,
//!    between it holds (1.3 to 2.6 requests at a limit of 20, so that the queue's
//!    moments above the mean stay within 4). This keeps the backend's own queue at a few requests
//!    where the p95 target alone would let it grow until the p95 reaches the target;
//!    the band is narrow so that a limit that recovers comes back to where it was
//!    (within 10 %). Compared in `examples/adaptive_sim.rs`.
//!
//! The limit only rises when the backend used at least 90 % of it in the interval, so an
//! idle backend's limit does not climb to `max_inflight` for nothing.
//!
//! **The floor** is the lowest interval p50 seen, refreshed whenever an interval in which
//! levee did not fill the limit comes within 5 % of it. When it is older than
//! [`FLOOR_WINDOW`] (or unknown) and the limit is full, the controller probes as BBR's
//! ProbeRTT does: it halves the limit for one p95 (the backend's queue drains) and one
//! interval (the p50 then is the floor), then restores the limit. So a backend that
//! became slower for good is seen as slower, not as queueing, within a floor window.
//!
//! Bounds and races: the intake's histograms resolve latencies to 1/32 of an octave
//! (about 2 %); a request recording while the tick flips the halves lands in the other
//! half and counts in the next interval. The controller's state is under a mutex that
//! only the tick (and a reload) takes, never a request.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Fewest responses a decision is made on.
pub const MIN_SAMPLES: u32 = 40;
/// Shortest interval a decision is made on.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// An interval that gathered fewer than [`MIN_SAMPLES`] responses in this long is
/// dropped: too little traffic to say anything.
pub const MAX_WINDOW: Duration = Duration::from_secs(5);
/// The floor is probed again once it is older than this (or than
/// [`FLOOR_WINDOW_LATENCIES`] p50s, for slow backends).
pub const FLOOR_WINDOW: Duration = Duration::from_secs(10);
pub const FLOOR_WINDOW_LATENCIES: u32 = 50;
/// Bounds of a multiplicative decrease: at most halved, at least cut by a tenth.
pub const LARGEST_CUT: f64 = 0.5;
pub const SMALLEST_CUT: f64 = 0.9;
/// A load report measures the backend's whole queue (every levee's share of it), so a
/// cut by `load_target / load` brings it to the target at once: it may go down to a
/// tenth in one step (the mean of at least [`MIN_SAMPLES`] reports, not one report).
pub const LARGEST_LOAD_CUT: f64 = 0.1;
/// Longest wait after a cut before deciding again.
pub const MAX_SETTLE: Duration = Duration::from_secs(2);
/// Share of the limit the backend must have used for the limit to rise.
pub const USED_SHARE: f64 = 0.9;
/// The limit during a floor probe, as a share of the limit.
pub const PROBE_SHARE: f64 = 0.5;
/// An interval p50 within this factor of the floor refreshes it.
pub const FLOOR_SLACK: f64 = 1.05;
/// The top of the queue band, in multiples of its bottom (`max(1, log10 limit)`). At
/// 2.5 the one-replica bench held a mean of 1.6 waiting but peaks of 5; at 2 the band
/// is still wide enough that a steady backend's limit holds still.
pub const QUEUE_HIGH: f64 = 2.0;
/// Weight of the newest difference in the latency noise's average.
pub const NOISE_WEIGHT: f64 = 0.2;
/// Noise widths of p50 above the floor not counted as a queue: the floor is a minimum,
/// and the mean absolute difference of two noisy p50s is about 1.13 of their
/// deviation, so two cancel the minimum's bias of about two deviations.
pub const NOISE_MARGIN: f64 = 2.0;

/// What the controller is held to: `[upstream.adaptive]` and the backend's ceiling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub target_p95: Duration,
    /// In `[1, max]`.
    pub min: u32,
    /// The backend's `max_inflight`.
    pub max: u32,
    pub load_target: Option<f64>,
}

/// What made the limit fall. Each is a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// p95 above `target_p95`.
    Latency = 0,
    /// The Vegas estimate of the backend's own queue.
    Queue = 1,
    /// The backend's load report above `load_target`.
    Load = 2,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Latency, Signal::Queue, Signal::Load];

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Latency => "latency",
            Signal::Queue => "queue",
            Signal::Load => "load",
        }
    }
}

/// Why the limit moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Down(Signal),
    Up,
    /// A floor probe began (the limit is halved for a moment).
    Probe,
    /// A floor probe ended (the limit is restored).
    ProbeDone,
    /// A reload changed `min_inflight` or `max_inflight`.
    Config,
}

/// A change of the published limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: u32,
    pub to: u32,
    pub cause: Cause,
}

/// What the controller saw at its last decision, for the status page.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reading {
    pub p95: Option<Duration>,
    pub p50: Option<Duration>,
    pub floor: Option<Duration>,
    /// Vegas estimate of the requests waiting inside the backend (without load reports).
    pub queue: Option<f64>,
    /// Mean reported utilization.
    pub load: Option<f64>,
    pub probing: bool,
}

// ---- latency histograms ----------------------------------------------------------

const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;
/// Up to 2^26 µs (67 s); longer latencies count in the last bucket.
const BUCKETS: usize = (26 - SUB_BITS as usize + 1) * SUB;

/// Bucket of a latency in microseconds: exact below 64 µs, then 32 per octave.
fn bucket_of(us: u64) -> usize {
    if us < 2 * SUB as u64 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros(); // >= SUB_BITS + 1
    let sub = ((us >> (octave - SUB_BITS)) as usize) & (SUB - 1);
    ((octave - SUB_BITS + 1) as usize * SUB + sub).min(BUCKETS - 1)
}

/// The middle of a bucket.
fn bucket_mid(idx: usize) -> Duration {
    if idx < 2 * SUB {
        return Duration::from_micros(idx as u64);
    }
    let octave = (idx / SUB) as u32 + SUB_BITS - 1;
    let sub = (idx % SUB) as u64;
    let width = 1u64 << (octave - SUB_BITS);
    let lower = (SUB as u64 + sub) << (octave - SUB_BITS);
    Duration::from_micros(lower + width / 2)
}

/// A latency histogram the controller owns.
#[derive(Debug, Clone)]
struct Counts {
    buckets: Box<[u32]>,
    n: u32,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            buckets: vec![0; BUCKETS].into_boxed_slice(),
            n: 0,
        }
    }

    fn add(&mut self, idx: usize, k: u32) {
        self.buckets[idx] = self.buckets[idx].saturating_add(k);
        self.n = self.n.saturating_add(k);
    }

    fn clear(&mut self) {
        if self.n > 0 {
            self.buckets.fill(0);
            self.n = 0;
        }
    }

    fn quantile(&self, q: f64) -> Option<Duration> {
        if self.n == 0 {
            return None;
        }
        let rank = ((f64::from(self.n) * q).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &k) in self.buckets.iter().enumerate() {
            seen += u64::from(k);
            if seen >= rank {
                return Some(bucket_mid(i));
            }
        }
        Some(bucket_mid(BUCKETS - 1))
    }
}

/// One half of the intake.
struct Half {
    buckets: Box<[AtomicU32]>,
    n: AtomicU32,
}

impl Half {
    fn new() -> Half {
        Half {
            buckets: (0..BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            n: AtomicU32::new(0),
        }
    }
}

/// What the request path records: latencies into the current half of a pair of
/// histograms (the tick flips them and drains the other), load reports into a sum and
/// a count. Two relaxed atomic adds per response, never a lock.
struct Intake {
    halves: [Half; 2],
    current: AtomicUsize,
    /// Sum of reported utilizations, in millionths.
    load_micros: AtomicU64,
    load_n: AtomicU32,
}

impl Intake {
    fn new() -> Intake {
        Intake {
            halves: [Half::new(), Half::new()],
            current: AtomicUsize::new(0),
            load_micros: AtomicU64::new(0),
            load_n: AtomicU32::new(0),
        }
    }

    fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let half = &self.halves[self.current.load(Relaxed) & 1];
        half.buckets[bucket_of(us)].fetch_add(1, Relaxed);
        half.n.fetch_add(1, Relaxed);
    }

    fn record_load(&self, utilization: f64) {
        // `utilization` is in [0, 100] (checked by the parser).
        self.load_micros
            .fetch_add((utilization * 1e6) as u64, Relaxed);
        self.load_n.fetch_add(1, Relaxed);
    }

    /// Moves what was recorded since the last drain into `c`.
    fn drain_into(&self, c: &mut Controller) {
        let old = &self.halves[self.current.fetch_add(1, Relaxed) & 1];
        if old.n.swap(0, Relaxed) > 0 {
            for (i, b) in old.buckets.iter().enumerate() {
                let k = b.swap(0, Relaxed);
                if k > 0 {
                    c.window.add(i, k);
                }
            }
        }
        let n = self.load_n.swap(0, Relaxed);
        let micros = self.load_micros.swap(0, Relaxed);
        if n > 0 {
            c.load_sum += micros as f64 / 1e6;
            c.load_n = c.load_n.saturating_add(n);
        }
    }
}

// ---- the controller ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Probe {
    Off,
    /// The limit is lowered; the backend's queue drains until `until`.
    Draining {
        resume: f64,
        until: Instant,
    },
    /// The next interval's p50 is the floor; then the limit goes back to `resume`.
    Measuring {
        resume: f64,
    },
}

/// The decisions of one backend's limit. Pure: time comes in as an argument.
#[derive(Debug, Clone)]
pub struct Controller {
    limit: f64,
    /// The limit as last published.
    published: u32,
    window: Counts,
    window_since: Instant,
    load_sum: f64,
    load_n: u32,
    /// Highest in flight since the window began.
    peak: u32,
    floor: Option<Duration>,
    /// When the floor was last confirmed (an unsaturated interval near it, or a probe).
    floor_at: Option<Instant>,
    /// Samples are discarded until then (after a cut).
    settle_until: Option<Instant>,
    probe: Probe,
    reading: Reading,
    /// The previous decision's p50, when it held the limit still.
    held_p50: Option<Duration>,
    /// How much an interval's p50 moves while the limit holds still (exponential
    /// average of the differences, in seconds): latency noise the queue estimate does
    /// not act on.
    noise: f64,
}

impl Controller {
    /// Starts at `max`: a fresh levee serves at full capacity from its first second.
    pub fn new(max: u32, now: Instant) -> Controller {
        Controller {
            limit: f64::from(max),
            published: max,
            window: Counts::new(),
            window_since: now,
            load_sum: 0.0,
            load_n: 0,
            peak: 0,
            floor: None,
            floor_at: None,
            settle_until: None,
            probe: Probe::Off,
            reading: Reading::default(),
            held_p50: None,
            noise: 0.0,
        }
    }

    /// The limit, as last published.
    pub fn limit(&self) -> u32 {
        self.published
    }

    pub fn reading(&self) -> Reading {
        self.reading
    }

    /// Adds one response's latency (tests; production drains the [`Intake`]).
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.window.add(bucket_of(us), 1);
    }

    /// Adds one load report (tests; production drains the [`Intake`]).
    pub fn record_load(&mut self, utilization: f64) {
        self.load_sum += utilization;
        self.load_n = self.load_n.saturating_add(1);
    }

    /// One control tick at `now`: `peak` is the most requests in flight on the backend
    /// since the previous tick, `in_force` its limit in force (slow start may hold it
    /// below this controller's). Returns the change of the published limit, if any.
    pub fn tick(&mut self, now: Instant, p: &Params, peak: u32, in_force: u32) -> Option<Change> {
        let (min, max) = (f64::from(p.min.max(1)), f64::from(p.max.max(p.min).max(1)));
        self.limit = self.limit.clamp(min, max);
        self.peak = self.peak.max(peak);
        let cause = self.step(now, p, in_force).unwrap_or(Cause::Config);
        self.limit = self.limit.clamp(min, max);
        let to = (self.limit.round() as u32).clamp(p.min.max(1), p.max.max(1));
        let from = std::mem::replace(&mut self.published, to);
        (to != from).then_some(Change { from, to, cause })
    }

    /// Restarts the window at `now`, dropping what it held.
    fn restart(&mut self, now: Instant) {
        self.window.clear();
        self.window_since = now;
        self.load_sum = 0.0;
        self.load_n = 0;
        self.peak = 0;
    }

    fn step(&mut self, now: Instant, p: &Params, in_force: u32) -> Option<Cause> {
        if let Some(until) = self.settle_until {
            self.restart(now);
            if now >= until {
                self.settle_until = None;
            }
            return None;
        }
        let age = now.saturating_duration_since(self.window_since);
        let ready = self.window.n >= MIN_SAMPLES && age >= MIN_INTERVAL;
        match self.probe {
            Probe::Off => {}
            Probe::Draining { resume, until } => {
                self.restart(now);
                if now >= until {
                    self.probe = Probe::Measuring { resume };
                }
                return None;
            }
            Probe::Measuring { resume } => {
                if !ready && age < MAX_WINDOW {
                    return None;
                }
                // Too little traffic to measure gives up until a floor window later.
                if let Some(p50) = self.window.quantile(0.5).filter(|_| ready) {
                    self.floor = Some(p50);
                }
                self.floor_at = Some(now);
                self.reading.floor = self.floor;
                self.reading.probing = false;
                self.limit = resume;
                self.probe = Probe::Off;
                self.restart(now);
                return Some(Cause::ProbeDone);
            }
        }
        if !ready {
            if age >= MAX_WINDOW {
                self.restart(now);
            }
            return None;
        }
        let (Some(p95), Some(p50)) = (self.window.quantile(0.95), self.window.quantile(0.5)) else {
            self.restart(now);
            return None;
        };
        let throughput = f64::from(self.window.n) / age.as_secs_f64();
        let load = (self.load_n > 0).then(|| self.load_sum / f64::from(self.load_n));
        let peak = self.peak;
        self.restart(now);

        // Levee filled the limit in force: the backend's queue may be levee's doing.
        let saturated = peak >= in_force;
        match self.floor {
            Some(f) if p50 >= f.mul_f64(FLOOR_SLACK) => {}
            _ => {
                self.floor = Some(self.floor.map_or(p50, |f| f.min(p50)));
                if !saturated {
                    self.floor_at = Some(now);
                }
            }
        }
        // The noise: how far p50 moved since a decision that held the limit still.
        if let Some(prev) = self.held_p50.take() {
            let moved = (p50.as_secs_f64() - prev.as_secs_f64()).abs();
            self.noise += NOISE_WEIGHT * (moved - self.noise);
        }
        let reports = load.zip(p.load_target);
        // The floor is a minimum, about two noise widths below a typical p50 of an
        // unqueued backend: that much excess is not counted as a queue.
        let margin = NOISE_MARGIN * self.noise;
        let queue = match (reports, self.floor) {
            (None, Some(f)) => {
                let excess = p50.as_secs_f64() - f.as_secs_f64() - margin;
                Some(throughput * excess.max(0.0))
            }
            _ => None,
        };
        self.reading = Reading {
            p95: Some(p95),
            p50: Some(p50),
            floor: self.floor,
            queue,
            load,
            probing: false,
        };

        let limit = self.limit;
        let used = f64::from(peak) >= (USED_SHARE * limit.round()).ceil();
        // Cuts start from what the backend had: the limit in force, or less if it used less.
        let had = limit.min(f64::from(in_force)).min(f64::from(peak.max(1)));
        let cut = |share: f64, signal: Signal, this: &mut Self| {
            let largest = match signal {
                Signal::Load => LARGEST_LOAD_CUT,
                _ => LARGEST_CUT,
            };
            this.settle_until = Some(now + p95.min(MAX_SETTLE));
            this.limit = had * share.clamp(largest, SMALLEST_CUT);
            Some(Cause::Down(signal))
        };
        let target = p.target_p95.as_secs_f64();
        let cause = if p95 > p.target_p95 {
            cut(target / p95.as_secs_f64(), Signal::Latency, self)
        } else if let Some((load, load_target)) = reports {
            if load > load_target {
                cut(load_target / load, Signal::Load, self)
            } else if load < load_target && used {
                self.limit = limit + 1.0;
                Some(Cause::Up)
            } else {
                None
            }
        } else if let Some(queue) = queue {
            let alpha = limit.log10().max(1.0);
            let beta = QUEUE_HIGH * alpha;
            if queue > beta {
                self.limit = limit.min(f64::from(in_force)) - ((queue - beta) / 2.0).max(1.0);
                Some(Cause::Down(Signal::Queue))
            } else if queue < alpha && used {
                self.limit = limit + 1.0;
                Some(Cause::Up)
            } else {
                None
            }
        } else {
            None
        };
        if cause.is_none() {
            self.held_p50 = Some(p50);
        }
        if reports.is_some() || matches!(cause, Some(Cause::Down(_))) || !saturated {
            return cause;
        }
        // Probe the floor when it is unknown or old and the limit is full.
        let window = FLOOR_WINDOW.max(p50.saturating_mul(FLOOR_WINDOW_LATENCIES));
        let stale = self
            .floor_at
            .is_none_or(|t| now.saturating_duration_since(t) >= window);
        let lowered = (self.limit * PROBE_SHARE)
            .floor()
            .max(f64::from(p.min.max(1)));
        if stale && lowered < self.limit {
            self.probe = Probe::Draining {
                resume: self.limit,
                until: now + p95.min(MAX_SETTLE),
            };
            self.limit = lowered;
            self.reading.probing = true;
            return Some(Cause::Probe);
        }
        cause
    }

    /// Back to `max`, forgetting what was learned (the upstream's adaptive table went away).
    fn reset(&mut self, max: u32, now: Instant) {
        *self = Controller::new(max, now);
    }
}

/// One backend's adaptive limit: the intake the request path writes, the controller
/// the tick runs, and the published limit everyone reads.
pub struct AdaptiveLimit {
    intake: Intake,
    controller: Mutex<Controller>,
    limit: AtomicU32,
}

impl std::fmt::Debug for AdaptiveLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("limit", &self.limit())
            .finish()
    }
}

impl AdaptiveLimit {
    pub fn new(max: u32) -> AdaptiveLimit {
        AdaptiveLimit {
            intake: Intake::new(),
            controller: Mutex::new(Controller::new(max, Instant::now())),
            limit: AtomicU32::new(max),
        }
    }

    /// The adaptive limit (`max_inflight` when the upstream has none). The limit in
    /// force is the lower of this and the slow-start ramp.
    pub fn limit(&self) -> u32 {
        self.limit.load(Relaxed)
    }

    /// Records a response's latency, from send to end of response (request path).
    pub fn record(&self, latency: Duration) {
        self.intake.record(latency);
    }

    /// Records a utilization the backend reported, in [0, 100] (request path).
    pub fn record_load(&self, utilization: f64) {
        self.intake.record_load(utilization);
    }

    /// One control tick (see [`Controller::tick`]).
    pub fn tick(&self, now: Instant, p: &Params, peak: u32, in_force: u32) -> Option<Change> {
        let mut c = self.controller.lock();
        self.intake.drain_into(&mut c);
        let change = c.tick(now, p, peak, in_force);
        self.limit.store(c.limit(), Relaxed);
        change
    }

    /// Applies new params at once (a reload), keeping what was learned: the limit is
    /// only clamped into `[min, max]`. `None`: adaptive limits are off, the limit is
    /// `max` and what was learned is forgotten.
    pub fn configure(&self, p: Option<&Params>, max: u32) {
        let mut c = self.controller.lock();
        match p {
            None => {
                if c.limit() != max {
                    c.reset(max, Instant::now());
                }
            }
            Some(p) => {
                c.limit = c
                    .limit
                    .clamp(f64::from(p.min.max(1)), f64::from(p.max.max(1)));
                c.published = (c.limit.round() as u32).clamp(p.min.max(1), p.max.max(1));
            }
        }
        self.limit.store(c.limit(), Relaxed);
    }

    pub fn reading(&self) -> Reading {
        self.controller.lock().reading()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn params() -> Params {
        Params {
            target_p95: 30 * MS,
            min: 4,
            max: 64,
            load_target: None,
        }
    }

    /// A controller at `limit` whose floor (21 ms) was confirmed at `t0`.
    fn settled(limit: u32, t0: Instant) -> Controller {
        let mut c = Controller::new(limit, t0);
        c.floor = Some(21 * MS);
        c.floor_at = Some(t0);
        c
    }

    /// `n` responses of `ms` each, then a tick `step` later.
    fn interval(
        c: &mut Controller,
        now: &mut Instant,
        n: u32,
        ms: u64,
        peak: u32,
        in_force: u32,
    ) -> Option<Change> {
        for _ in 0..n {
            c.record(Duration::from_millis(ms));
        }
        *now += 100 * MS;
        c.tick(*now, &params(), peak, in_force)
    }

    #[test]
    fn buckets_resolve_a_latency_within_two_percent() {
        for us in [
            0u64, 1, 63, 64, 65, 1000, 20_000, 21_337, 1_000_000, 60_000_000,
        ] {
            let mid = bucket_mid(bucket_of(us)).as_micros() as f64;
            let err = (mid - us as f64).abs() / (us as f64).max(1.0);
            assert!(err <= 0.02, "{us} µs → {mid} µs");
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        let mut h = Counts::new();
        for ms in 1..=100u64 {
            h.add(bucket_of(ms * 1000), 1);
        }
        let p95 = h.quantile(0.95).unwrap().as_secs_f64() * 1000.0;
        assert!((94.0..=96.5).contains(&p95), "{p95}");
        assert_eq!(Counts::new().quantile(0.5), None);
    }

    #[test]
    fn p95_above_target_cuts_in_proportion_and_waits_a_round_trip() {
        let mut now = Instant::now();
        let mut c = settled(64, now);
        // 80 ms against 30: cut by the most, a half.
        let change = interval(&mut c, &mut now, 50, 80, 64, 64).unwrap();
        assert_eq!((change.from, change.to), (64, 32));
        assert_eq!(change.cause, Cause::Down(Signal::Latency));
        // Until one p95 has passed, responses (to requests sent under 64) do not count.
        assert_eq!(interval(&mut c, &mut now, 50, 80, 32, 32), None);
        assert_eq!(c.limit(), 32);
        // 36 ms (36.35, as the histogram resolves it): cut by 30/36.35.
        now += 100 * MS;
        c.tick(now, &params(), 32, 32);
        let change = interval(&mut c, &mut now, 50, 36, 32, 32).unwrap();
        assert_eq!(change.to, 26);
    }

    #[test]
    fn cuts_start_from_what_the_backend_used_and_stop_at_min() {
        let mut now = Instant::now();
        let mut c = settled(64, now);
        // Only 10 in flight at most: the cut is from 10, not 64.
        let change = interval(&mut c, &mut now, 50, 45, 10, 64).unwrap();
        assert_eq!(change.to, 7);
        for _ in 0..20 {
            now += 3000 * MS;
            c.tick(now, &params(), 7, 7);
            interval(&mut c, &mut now, 50, 200, 7, 7);
        }
        assert_eq!(c.limit(), 4, "never below min_inflight");
    }

    #[test]
    fn rises_only_while_used_and_below_every_target() {
        let mut now = Instant::now();
        let mut c = settled(20, now);
        // Fast, but the backend had at most 10 of its 20: no rise (an idle backend's
        // limit does not climb to max_inflight).
        for _ in 0..5 {
            assert_eq!(interval(&mut c, &mut now, 50, 21, 10, 20), None);
        }
        assert_eq!(c.limit(), 20);
        // Used (18 of 20 is 90 %) and no queue: one up per decision.
        let change = interval(&mut c, &mut now, 50, 21, 18, 20).unwrap();
        assert_eq!((change.from, change.to, change.cause), (20, 21, Cause::Up));
        interval(&mut c, &mut now, 50, 21, 21, 21);
        assert_eq!(c.limit(), 22);
        // Too few responses: no decision, however long.
        for _ in 0..10 {
            assert_eq!(interval(&mut c, &mut now, 3, 21, 22, 22), None);
        }
        // Never above max.
        let mut c = settled(64, now);
        interval(&mut c, &mut now, 50, 21, 64, 64);
        assert_eq!(c.limit(), 64);
    }

    #[test]
    fn the_queue_inside_the_backend_is_held_to_a_few_requests() {
        let mut now = Instant::now();
        let mut c = settled(24, now);
        // 100 responses in 100 ms at a p50 of 29 ms over a floor of 21: 1000/s x 8 ms =
        // 8 waiting inside, above 2 log10(24): down by half the excess.
        let change = interval(&mut c, &mut now, 100, 29, 24, 24).unwrap();
        assert_eq!(change.cause, Cause::Down(Signal::Queue));
        let q = c.reading().queue.unwrap();
        assert!((7.5..=8.5).contains(&q), "{q}");
        assert_eq!(
            change.to,
            (24.0 - (q - QUEUE_HIGH * 24f64.log10()) / 2.0).round() as u32
        );
        // 1.8 waiting (a p50 of 22.8 ms at 1000/s): between the bounds, held even when used.
        let before = c.limit();
        assert_eq!(interval(&mut c, &mut now, 100, 23, before, before), None);
        // Below 1: up.
        let change = interval(&mut c, &mut now, 100, 21, before, before).unwrap();
        assert_eq!(change.cause, Cause::Up);
    }

    #[test]
    fn load_reports_lower_and_raise_the_limit() {
        let mut now = Instant::now();
        let p = Params {
            load_target: Some(1.0),
            ..params()
        };
        let mut c = settled(32, now);
        for _ in 0..50 {
            c.record(21 * MS);
            c.record_load(2.0);
        }
        now += 100 * MS;
        let change = c.tick(now, &p, 32, 32).unwrap();
        assert_eq!((change.to, change.cause), (16, Cause::Down(Signal::Load)));
        assert_eq!(c.reading().load, Some(2.0));
        // Reports far over the target cut by more than a latency could: 64 x 1/8.
        let mut far = settled(64, now);
        for _ in 0..50 {
            far.record(21 * MS);
            far.record_load(8.0);
        }
        let change = far.tick(now + 100 * MS, &p, 64, 64).unwrap();
        assert_eq!(change.to, 8);
        assert_eq!(c.reading().load, Some(2.0));
        assert_eq!(c.reading().queue, None, "reports replace the estimate");
        // Settle, then below the target and used: up, one per decision.
        now += 100 * MS;
        c.tick(now, &p, 16, 16);
        for _ in 0..50 {
            c.record(28 * MS); // a queue by the estimate; the reports say otherwise
            c.record_load(0.8);
        }
        now += 100 * MS;
        let change = c.tick(now, &p, 16, 16).unwrap();
        assert_eq!((change.to, change.cause), (17, Cause::Up));
        // Latency still rules: above target_p95 it cuts whatever the reports say.
        for _ in 0..50 {
            c.record(60 * MS);
            c.record_load(0.5);
        }
        now += 100 * MS;
        let change = c.tick(now, &p, 17, 17).unwrap();
        assert_eq!(change.cause, Cause::Down(Signal::Latency));
    }

    #[test]
    fn a_stale_floor_is_probed_with_half_the_limit() {
        let mut now = Instant::now();
        let mut c = Controller::new(20, now);
        // Saturated from the start: the floor (the first p50, 29 ms) is unconfirmed, so
        // the first decision that does not cut (it rises, to 21) probes.
        let change = interval(&mut c, &mut now, 50, 29, 20, 20).unwrap();
        assert_eq!((change.to, change.cause), (10, Cause::Probe));
        assert!(c.reading().probing);
        // Draining for one p95, then one interval at the lower limit measures the floor.
        assert_eq!(interval(&mut c, &mut now, 20, 29, 10, 10), None);
        assert_eq!(interval(&mut c, &mut now, 0, 21, 10, 10), None);
        let change = interval(&mut c, &mut now, 50, 21, 10, 10).unwrap();
        assert_eq!((change.to, change.cause), (21, Cause::ProbeDone));
        assert_eq!(c.reading().floor, Some(bucket_mid(bucket_of(21_000))));
        // Confirmed: no probe for a floor window, then one again.
        for _ in 0..20 {
            interval(&mut c, &mut now, 50, 23, 20, 20);
        }
        assert!(!matches!(c.probe, Probe::Draining { .. }));
        now += FLOOR_WINDOW;
        let change = interval(&mut c, &mut now, 50, 23, 20, 20).unwrap();
        assert_eq!(change.cause, Cause::Probe);
    }

    #[test]
    fn an_unsaturated_interval_near_the_floor_confirms_it() {
        let mut now = Instant::now();
        let mut c = Controller::new(20, now);
        assert_eq!(interval(&mut c, &mut now, 50, 21, 12, 20), None);
        assert!(c.floor_at.is_some());
        now += FLOOR_WINDOW / 2;
        // Saturated and slower: the floor stays, no probe yet.
        let change = interval(&mut c, &mut now, 50, 22, 20, 20);
        assert_ne!(change.map(|c| c.cause), Some(Cause::Probe));
    }

    #[test]
    fn slow_start_holds_the_limit_in_force_and_the_learned_limit_waits() {
        let mut now = Instant::now();
        let mut c = settled(40, now);
        // The ramp holds the backend at 10: it is full, but 10 is not 90 % of 40.
        assert_eq!(interval(&mut c, &mut now, 50, 21, 10, 10), None);
        // A cut starts from the 10 in force, not the learned 40.
        let change = interval(&mut c, &mut now, 50, 60, 10, 10).unwrap();
        assert_eq!(change.to, 5);
    }

    #[test]
    fn configure_keeps_what_was_learned_within_new_bounds() {
        let a = AdaptiveLimit::new(64);
        let p = params();
        a.configure(Some(&p), 64);
        assert_eq!(a.limit(), 64);
        a.controller.lock().limit = 30.0;
        a.configure(Some(&Params { max: 20, ..p }), 20);
        assert_eq!(a.limit(), 20);
        a.configure(
            Some(&Params {
                min: 25,
                max: 40,
                ..p
            }),
            40,
        );
        assert_eq!(a.limit(), 25);
        a.configure(None, 50);
        assert_eq!(a.limit(), 50);
    }

    #[test]
    fn the_intake_feeds_the_tick() {
        let a = AdaptiveLimit::new(32);
        let p = params();
        let t0 = Instant::now();
        for _ in 0..60 {
            a.record(90 * MS);
        }
        let change = a.tick(t0 + 200 * MS, &p, 32, 32).unwrap();
        assert_eq!(
            (change.to, change.cause),
            (16, Cause::Down(Signal::Latency))
        );
        assert_eq!(a.limit(), 16);
        let r = a.reading();
        assert!(r.p95.unwrap() > 85 * MS);
    }
}
