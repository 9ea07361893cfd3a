//! Load levels: the sliding window of request outcomes an upstream keeps, and the
//! hysteresis that turns its signals into one [`Level`].
//!
//! Requests only add to the window (a few relaxed atomic adds); the level ticker
//! ([`crate::state::spawn_level_ticker`]) rotates the window, reads the signals and
//! stores a new level every tick. The one other writer is a request that sees the
//! queue call for a higher level than the published one: it raises the level at once
//! ([`LevelState::raise`]), and from then on the level falls only through the ticker's
//! hysteresis. So the queue's part of the level is held for the cooldown like every
//! other signal instead of following each request in and out of the queue.
//!
//! The queue's part of the level ([`queue_reading`]) is where flapping came from: a
//! level the queue raised keeps requests out of the queue, which empties it, and read
//! by length alone the level then falls, lets them in, and rises again as they refill
//! it. So the requests the level turned away from the queue since the last tick count
//! as waiting at that tick, and a standing queue ([`super::codel`]), whose length is
//! held near what `queue_target` allows, reads as at least caution, its length not
//! counted (full is always critical).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{Class, Levels, Thresholds};

/// How loaded an upstream is; ordered, so `level >= Level::Danger` reads naturally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Safe = 0,
    Caution = 1,
    Danger = 2,
    Critical = 3,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Safe => "safe",
            Level::Caution => "caution",
            Level::Danger => "danger",
            Level::Critical => "critical",
        }
    }

    fn from_u8(v: u8) -> Level {
        match v {
            0 => Level::Safe,
            1 => Level::Caution,
            2 => Level::Danger,
            _ => Level::Critical,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Number of slots the window is cut into; it moves one slot at a time.
pub const WINDOW_SLOTS: usize = 10;
/// Log-linear latency buckets: 4 per power of two of microseconds, up to ~16.7 s.
const BUCKETS: usize = 96;

/// Bucket of a duration in microseconds: within 19 % of the true value.
fn bucket_of(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let octave = 63 - us.leading_zeros() as usize; // >= 2
    let sub = ((us >> (octave - 2)) & 3) as usize;
    (octave * 4 + sub).min(BUCKETS - 1)
}

/// Upper bound, in microseconds, of the values a bucket holds.
fn bucket_upper(idx: usize) -> u64 {
    if idx < 4 {
        return idx as u64 + 1;
    }
    let octave = idx / 4;
    let sub = (idx % 4) as u64;
    (4 + sub + 1) << (octave - 2)
}

struct Slot {
    /// Requests that finished (with any outcome) in this slot.
    done: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; BUCKETS],
    waited: AtomicU64,
    wait: [AtomicU32; BUCKETS],
    /// `wait` by class, indexed `[Class as usize][bucket]`: read only for the status
    /// page, so the ticker's reading of the window stays what it was.
    class_wait: [[AtomicU32; BUCKETS]; 4],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            done: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
            waited: AtomicU64::new(0),
            wait: std::array::from_fn(|_| AtomicU32::new(0)),
            class_wait: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU32::new(0))),
        }
    }

    fn clear(&self) {
        self.done.store(0, Relaxed);
        self.errors.store(0, Relaxed);
        self.waited.store(0, Relaxed);
        let waits = self.wait.iter().chain(self.class_wait.iter().flatten());
        for b in self.latency.iter().chain(waits) {
            b.store(0, Relaxed);
        }
    }
}

/// Sliding window of request outcomes and queue waits.
///
/// Race window: a request that read the current slot index just before a rotation adds
/// into the slot that just became the oldest; it still counts, one slot longer. A request
/// that adds into a slot while the ticker clears it may be lost. Both shift the signals by
/// at most a handful of samples, which the `min_samples` floor makes irrelevant.
pub struct Window {
    slots: Box<[Slot]>,
    current: AtomicUsize,
    slot_len: Duration,
}

/// Totals of the whole window, as the ticker reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WindowStats {
    pub done: u64,
    pub errors: u64,
    pub p50: Option<Duration>,
    pub p95: Option<Duration>,
    pub waited: u64,
    pub wait_p95: Option<Duration>,
    /// Requests finished per second over the window: the queue's drain rate.
    pub drain_per_sec: f64,
}

impl Window {
    pub fn new(length: Duration) -> Window {
        Window {
            slots: (0..WINDOW_SLOTS).map(|_| Slot::new()).collect(),
            current: AtomicUsize::new(0),
            slot_len: length / WINDOW_SLOTS as u32,
        }
    }

    pub fn slot_len(&self) -> Duration {
        self.slot_len
    }

    fn slot(&self) -> &Slot {
        &self.slots[self.current.load(Relaxed) % WINDOW_SLOTS]
    }

    /// Records one finished request: its backend time and whether it failed.
    pub fn record(&self, latency: Duration, failed: bool) {
        let slot = self.slot();
        slot.done.fetch_add(1, Relaxed);
        if failed {
            slot.errors.fetch_add(1, Relaxed);
        }
        slot.latency[bucket_of(latency.as_micros() as u64)].fetch_add(1, Relaxed);
    }

    /// Records the time one admitted request of `class` spent in the queue.
    pub fn record_wait(&self, wait: Duration, class: Class) {
        let slot = self.slot();
        let bucket = bucket_of(wait.as_micros() as u64);
        slot.waited.fetch_add(1, Relaxed);
        slot.wait[bucket].fetch_add(1, Relaxed);
        slot.class_wait[class as usize][bucket].fetch_add(1, Relaxed);
    }

    /// Admitted requests that waited over the window, and the 95th percentile of
    /// their waits, by `Class as usize` (for the status page).
    pub fn waits_by_class(&self) -> [(u64, Option<Duration>); 4] {
        std::array::from_fn(|c| {
            let mut wait = [0u64; BUCKETS];
            for slot in self.slots.iter() {
                for (i, n) in wait.iter_mut().enumerate() {
                    *n += u64::from(slot.class_wait[c][i].load(Relaxed));
                }
            }
            (wait.iter().sum(), quantile(&wait, 0.95))
        })
    }

    /// Moves the window on by one slot, clearing the oldest. Only the ticker calls this.
    pub fn rotate(&self) {
        let next = (self.current.load(Relaxed) + 1) % WINDOW_SLOTS;
        self.slots[next].clear();
        self.current.store(next, Relaxed);
    }

    pub fn stats(&self) -> WindowStats {
        let mut latency = [0u64; BUCKETS];
        let mut wait = [0u64; BUCKETS];
        let mut s = WindowStats::default();
        for slot in self.slots.iter() {
            s.done += slot.done.load(Relaxed);
            s.errors += slot.errors.load(Relaxed);
            s.waited += slot.waited.load(Relaxed);
            for i in 0..BUCKETS {
                latency[i] += u64::from(slot.latency[i].load(Relaxed));
                wait[i] += u64::from(slot.wait[i].load(Relaxed));
            }
        }
        s.p50 = quantile(&latency, 0.5);
        s.p95 = quantile(&latency, 0.95);
        s.wait_p95 = quantile(&wait, 0.95);
        // The current slot is partly filled: count it as half a slot on average.
        let span = self.slot_len.as_secs_f64() * (WINDOW_SLOTS as f64 - 0.5);
        s.drain_per_sec = if span > 0.0 {
            s.done as f64 / span
        } else {
            0.0
        };
        s
    }
}

fn quantile(buckets: &[u64; BUCKETS], q: f64) -> Option<Duration> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(Duration::from_micros(bucket_upper(i)));
        }
    }
    Some(Duration::from_micros(bucket_upper(BUCKETS - 1)))
}

/// The instantaneous signals of one upstream, as the ticker sees them.
#[derive(Debug, Clone, Copy)]
pub struct Signals {
    pub utilization: f64,
    /// Largest queue length since the previous tick.
    pub queue: u32,
    pub queue_depth: u32,
    /// The queue stands now: its length thresholds do not apply, it is caution.
    pub standing: bool,
    /// Requests that would have waited but were turned away by the level or a full
    /// queue (`level_no_queue`, `queue_full`) since the previous tick, counted up to
    /// the queue depth.
    pub turned_away: u32,
    pub window: WindowStats,
}

impl Default for Signals {
    fn default() -> Self {
        Signals {
            utilization: 0.0,
            queue: 0,
            queue_depth: 0,
            standing: false,
            turned_away: 0,
            window: WindowStats::default(),
        }
    }
}

/// Whether the signals other than the queue reach the thresholds `t`.
fn exceeds(t: &Thresholds, s: &Signals, min_samples: u32) -> bool {
    let enough = s.window.done >= u64::from(min_samples);
    let waited_enough = s.window.waited >= u64::from(min_samples);
    t.utilization.is_some_and(|u| s.utilization >= u)
        || (waited_enough
            && t.queue_wait
                .zip(s.window.wait_p95)
                .is_some_and(|(t, v)| v >= t))
        || (enough && t.p95.zip(s.window.p95).is_some_and(|(t, v)| v >= t))
        || (enough
            && t.error_rate
                .is_some_and(|e| s.window.errors as f64 / s.window.done as f64 >= e))
}

/// The level a queue of `queued` requests calls for by the `queue` thresholds alone.
fn length_level(levels: &Levels, queue_depth: u32, queued: u32) -> Level {
    if queue_depth > 0 && queued >= queue_depth {
        Level::Critical
    } else if levels.danger.queue.is_some_and(|q| queued >= q) {
        Level::Danger
    } else if levels.caution.queue.is_some_and(|q| queued >= q) {
        Level::Caution
    } else {
        Level::Safe
    }
}

/// The level the queue calls for at a tick.
///
/// - Full (its peak length since the last tick): critical.
/// - Else by its peak length plus the requests turned away from it since the last
///   tick, up to danger. A level the queue raised keeps `normal` (danger) or `high`
///   (critical) out of the queue, which empties it; read by length alone, the level
///   would fall after the cooldown, let them in, and rise again as they refill it.
///   Counted as waiting, they hold the level while they come as fast as they would
///   have filled the queue to its threshold; at lower loads, where a few find every
///   slot busy now and then, they do not.
/// - While the queue stands, at least caution, and its length does not count: it is
///   held near what `queue_target` allows and says nothing more.
pub fn queue_reading(levels: &Levels, s: &Signals) -> Level {
    if length_level(levels, s.queue_depth, s.queue) == Level::Critical {
        return Level::Critical;
    }
    let length = if s.standing { 0 } else { s.queue };
    let demand = length_level(levels, s.queue_depth, length.saturating_add(s.turned_away));
    let floor = if s.standing {
        Level::Caution
    } else {
        Level::Safe
    };
    demand.min(Level::Danger).max(floor)
}

/// The level the signals call for, without hysteresis.
pub fn raw_level(levels: &Levels, s: &Signals) -> Level {
    let others = if exceeds(&levels.danger, s, levels.min_samples) {
        Level::Danger
    } else if exceeds(&levels.caution, s, levels.min_samples) {
        Level::Caution
    } else {
        Level::Safe
    };
    others.max(queue_reading(levels, s))
}

/// Level from the queue alone (its length now, and whether it stands), read on the
/// request path so that a burst raises the level at once instead of at the next tick.
pub fn queue_level(levels: &Levels, queue_depth: u32, queued: u32, standing: bool) -> Level {
    match length_level(levels, queue_depth, queued) {
        Level::Critical => Level::Critical,
        _ if standing => Level::Caution,
        by_length => by_length,
    }
}

struct Hysteresis {
    /// When the raw level first fell below the current one, and the highest raw level
    /// seen since then.
    below: Option<(Instant, Level)>,
}

/// An upstream's published level with the hysteresis that keeps it from flapping:
/// a higher level is taken at once; a lower one only after the signals stay below the
/// current level for `cooldown`, and then the highest level seen during that time.
pub struct LevelState {
    current: AtomicU8,
    /// Level changes since start, for metrics and tests.
    changes: AtomicU64,
    hysteresis: Mutex<Hysteresis>,
}

impl Default for LevelState {
    fn default() -> Self {
        LevelState {
            current: AtomicU8::new(Level::Safe as u8),
            changes: AtomicU64::new(0),
            hysteresis: Mutex::new(Hysteresis { below: None }),
        }
    }
}

impl LevelState {
    pub fn get(&self) -> Level {
        Level::from_u8(self.current.load(Relaxed))
    }

    pub fn changes(&self) -> u64 {
        self.changes.load(Relaxed)
    }

    /// Raises the level to `level` at once if it is higher (a request saw the queue
    /// call for it); never lowers it. Returns `Some((old, new))` when it changed. From
    /// here the ticker's hysteresis decides when it falls, as for any reading.
    pub fn raise(&self, level: Level) -> Option<(Level, Level)> {
        let mut h = self.hysteresis.lock();
        let current = self.get();
        if level <= current {
            return None;
        }
        h.below = None;
        self.current.store(level as u8, Relaxed);
        self.changes.fetch_add(1, Relaxed);
        Some((current, level))
    }

    /// Feeds one raw reading; returns `Some((old, new))` when the level changed.
    pub fn update(&self, raw: Level, now: Instant, cooldown: Duration) -> Option<(Level, Level)> {
        let mut h = self.hysteresis.lock();
        let current = self.get();
        let next = if raw >= current {
            h.below = None;
            raw
        } else {
            let (since, highest) = match h.below {
                Some((since, highest)) => (since, highest.max(raw)),
                None => (now, raw),
            };
            if now.duration_since(since) >= cooldown {
                h.below = None;
                highest
            } else {
                h.below = Some((since, highest));
                current
            }
        };
        if next != current {
            self.current.store(next as u8, Relaxed);
            self.changes.fetch_add(1, Relaxed);
            Some((current, next))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels() -> Levels {
        Levels {
            caution: Thresholds {
                utilization: Some(0.8),
                queue: Some(10),
                p95: Some(Duration::from_millis(150)),
                error_rate: Some(0.01),
                ..Default::default()
            },
            danger: Thresholds {
                queue: Some(50),
                p95: Some(Duration::from_millis(250)),
                queue_wait: Some(Duration::from_millis(50)),
                ..Default::default()
            },
            cooldown: Duration::from_secs(1),
            window: Duration::from_secs(5),
            min_samples: 20,
        }
    }

    #[test]
    fn buckets_bound_values_within_a_fifth() {
        for us in [1u64, 3, 4, 5, 7, 8, 100, 999, 1000, 150_000, 9_999_999] {
            let upper = bucket_upper(bucket_of(us));
            assert!(upper > us, "{us} -> {upper}");
            assert!(
                (upper as f64) <= (us as f64) * 1.26 + 1.0,
                "{us} -> {upper}"
            );
        }
    }

    #[test]
    fn window_p95_and_drain_rate() {
        let w = Window::new(Duration::from_secs(5));
        for _ in 0..95 {
            w.record(Duration::from_millis(10), false);
        }
        for _ in 0..5 {
            w.record(Duration::from_millis(900), true);
        }
        let s = w.stats();
        assert_eq!((s.done, s.errors), (100, 5));
        let p95 = s.p95.unwrap();
        assert!(
            p95 >= Duration::from_millis(10) && p95 < Duration::from_millis(13),
            "{p95:?}"
        );
        assert!(s.drain_per_sec > 19.0 && s.drain_per_sec < 22.0);
        for _ in 0..WINDOW_SLOTS {
            w.rotate();
        }
        assert_eq!(w.stats().done, 0, "a full turn forgets everything");
    }

    #[test]
    fn window_keeps_waits_by_class_beside_the_total() {
        let w = Window::new(Duration::from_secs(5));
        for _ in 0..10 {
            w.record_wait(Duration::from_millis(1), Class::Critical);
            w.record_wait(Duration::from_millis(40), Class::Normal);
        }
        let s = w.stats();
        assert_eq!(s.waited, 20);
        let by = w.waits_by_class();
        assert_eq!(by[Class::Low as usize], (0, None));
        assert_eq!(by[Class::Critical as usize].0, 10);
        assert_eq!(by[Class::Normal as usize].0, 10);
        let p95 = |c: Class| by[c as usize].1.unwrap();
        assert!(p95(Class::Critical) < Duration::from_millis(2));
        assert!(p95(Class::Normal) >= Duration::from_millis(40));
        assert_eq!(s.wait_p95, Some(p95(Class::Normal)));
        for _ in 0..WINDOW_SLOTS {
            w.rotate();
        }
        assert_eq!(w.waits_by_class()[Class::Normal as usize], (0, None));
    }

    #[test]
    fn utilization_alone_is_at_most_caution() {
        let s = Signals {
            utilization: 1.0,
            queue_depth: 100,
            ..Default::default()
        };
        assert_eq!(raw_level(&levels(), &s), Level::Caution);
    }

    #[test]
    fn latency_counts_only_with_enough_samples() {
        let mut s = Signals {
            queue_depth: 100,
            ..Default::default()
        };
        s.window.p95 = Some(Duration::from_millis(300));
        s.window.done = 5;
        assert_eq!(raw_level(&levels(), &s), Level::Safe);
        s.window.done = 20;
        assert_eq!(raw_level(&levels(), &s), Level::Danger);
    }

    #[test]
    fn full_queue_is_critical() {
        let s = Signals {
            queue: 100,
            queue_depth: 100,
            ..Default::default()
        };
        assert_eq!(raw_level(&levels(), &s), Level::Critical);
        assert_eq!(queue_level(&levels(), 100, 100, false), Level::Critical);
        assert_eq!(queue_level(&levels(), 100, 50, false), Level::Danger);
        assert_eq!(queue_level(&levels(), 100, 10, false), Level::Caution);
        assert_eq!(queue_level(&levels(), 100, 9, false), Level::Safe);
    }

    #[test]
    fn a_standing_queue_is_caution_whatever_its_length_short_of_full() {
        let mut s = Signals {
            queue: 60,
            queue_depth: 100,
            ..Default::default()
        };
        assert_eq!(raw_level(&levels(), &s), Level::Danger, "a burst of 60");
        s.standing = true;
        assert_eq!(raw_level(&levels(), &s), Level::Caution);
        s.queue = 0;
        assert_eq!(raw_level(&levels(), &s), Level::Caution, "even when empty");
        s.queue = 100;
        assert_eq!(raw_level(&levels(), &s), Level::Critical, "full is full");
        // Other danger signals still count.
        s.queue = 3;
        s.window.p95 = Some(Duration::from_millis(300));
        s.window.done = 20;
        assert_eq!(raw_level(&levels(), &s), Level::Danger);

        assert_eq!(queue_level(&levels(), 100, 60, true), Level::Caution);
        assert_eq!(queue_level(&levels(), 100, 0, true), Level::Caution);
        assert_eq!(queue_level(&levels(), 100, 100, true), Level::Critical);
    }

    #[test]
    fn a_level_the_queue_raised_holds_while_it_turns_requests_away() {
        let lv = levels();
        let st = LevelState::default();
        let t0 = Instant::now();
        let cd = lv.cooldown;
        // One tick of the ticker at `ms`: the queue's peak length, and how many were
        // turned away from it since the previous tick.
        let tick = |ms: u64, queue: u32, turned_away: u32| {
            let s = Signals {
                queue,
                queue_depth: 100,
                turned_away,
                ..Default::default()
            };
            st.update(raw_level(&lv, &s), t0 + Duration::from_millis(ms), cd);
            st.get()
        };
        // A queue of 60 is danger; danger keeps `normal` out, so the queue empties,
        // while the overload goes on turning 80 a tick away.
        assert_eq!(tick(0, 60, 0), Level::Danger);
        for ms in (100..3_000).step_by(100) {
            assert_eq!(tick(ms, 2, 80), Level::Danger, "at {ms} ms");
        }
        // The overload ends: a few find every slot busy now and then, far fewer than
        // would fill the queue; after the cooldown the level follows the queue down.
        for ms in (3_000..4_000).step_by(100) {
            assert_eq!(tick(ms, 2, 3), Level::Danger, "cooldown, at {ms} ms");
        }
        assert_eq!(tick(4_000, 2, 3), Level::Safe);
        assert_eq!(st.changes(), 2, "one rise and one fall, no flapping");

        // Turned-away requests raise at most danger: critical is a full queue.
        let mut s = Signals {
            queue: 2,
            queue_depth: 100,
            turned_away: 500,
            ..Default::default()
        };
        assert_eq!(queue_reading(&lv, &s), Level::Danger);
        s.turned_away = 10;
        assert_eq!(queue_reading(&lv, &s), Level::Caution, "2 + 10 waiting");
        // A standing queue is at least caution, whatever its length; requests turned
        // away from it still count.
        s.standing = true;
        s.queue = 60;
        s.turned_away = 0;
        assert_eq!(queue_reading(&lv, &s), Level::Caution);
        s.turned_away = 500;
        assert_eq!(queue_reading(&lv, &s), Level::Danger);
    }

    #[test]
    fn a_raise_holds_until_the_cooldown_has_passed() {
        let st = LevelState::default();
        let t0 = Instant::now();
        let cd = Duration::from_secs(1);
        assert_eq!(st.raise(Level::Danger), Some((Level::Safe, Level::Danger)));
        assert_eq!(st.raise(Level::Caution), None, "never lowers");
        assert_eq!(st.raise(Level::Danger), None);
        // The queue emptied at once: the ticker's readings fall, the level holds.
        assert_eq!(st.update(Level::Safe, t0, cd), None);
        assert_eq!(
            st.update(Level::Safe, t0 + Duration::from_millis(900), cd),
            None
        );
        // Refilled before the cooldown ended: nothing to raise, and the ticker's next
        // reading (the queue's peak since the last tick) restarts the cooldown.
        assert_eq!(st.raise(Level::Danger), None);
        assert_eq!(
            st.update(Level::Danger, t0 + Duration::from_millis(950), cd),
            None
        );
        assert_eq!(
            st.update(Level::Caution, t0 + Duration::from_millis(1_000), cd),
            None
        );
        assert_eq!(
            st.update(Level::Caution, t0 + Duration::from_millis(2_000), cd),
            Some((Level::Danger, Level::Caution))
        );
        assert_eq!(st.changes(), 2);
    }

    #[test]
    fn hysteresis_rises_at_once_and_falls_after_cooldown() {
        let st = LevelState::default();
        let t0 = Instant::now();
        let cd = Duration::from_secs(1);
        assert_eq!(
            st.update(Level::Danger, t0, cd),
            Some((Level::Safe, Level::Danger))
        );
        assert_eq!(
            st.update(Level::Safe, t0 + Duration::from_millis(100), cd),
            None
        );
        assert_eq!(
            st.update(Level::Caution, t0 + Duration::from_millis(600), cd),
            None
        );
        // A spike back to danger restarts the cooldown.
        assert_eq!(
            st.update(Level::Danger, t0 + Duration::from_millis(700), cd),
            None
        );
        assert_eq!(
            st.update(Level::Safe, t0 + Duration::from_millis(800), cd),
            None
        );
        assert_eq!(
            st.update(Level::Caution, t0 + Duration::from_millis(1500), cd),
            None
        );
        assert_eq!(
            st.update(Level::Safe, t0 + Duration::from_millis(1800), cd),
            Some((Level::Danger, Level::Caution)),
            "falls to the highest level seen during the cooldown"
        );
        assert_eq!(st.get(), Level::Caution);
        assert_eq!(st.changes(), 2);
    }
}
