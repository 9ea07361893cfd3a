//! Backend health: active probes, passive ejection, probation and slow start, and the
//! decision each backend's routing flag follows.
//!
//! Writers: the probe task of each backend ([`probe`]), the request path (one atomic
//! add per failed request, and an ejection when a streak reaches the threshold), and
//! the upstream's control tick ([`crate::state::Upstream::tick`]). The only thing
//! requests read is [`crate::state::Backend::is_healthy`], one relaxed load: the
//! health state never blocks a request.

pub mod probe;

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{Check, Health};

/// What a backend's health says, for status and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes traffic (possibly still ramping up its limit).
    Healthy = 0,
    /// Waiting for a passing probe before it takes traffic (new, or back from ejection).
    Probation = 1,
    /// Failed `fall` probes in a row.
    Unhealthy = 2,
    /// Ejected after failed requests, until its ejection time passes.
    Ejected = 3,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Probation => "probation",
            State::Unhealthy => "unhealthy",
            State::Ejected => "ejected",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Healthy,
            1 => State::Probation,
            2 => State::Unhealthy,
            _ => State::Ejected,
        }
    }
}

/// Share of `max_inflight` a backend starts with when it ramps up.
pub const SLOW_START_FLOOR: f64 = 0.1;

/// The inner state, changed only by probes, ejections and the control tick.
#[derive(Debug)]
struct Inner {
    /// Result of the active checks (always true without checks).
    probe_up: bool,
    ok_streak: u32,
    fail_streak: u32,
    /// When the last passing probe finished.
    last_probe_ok: Option<Instant>,
    /// Whether any probe has finished yet.
    probed: bool,
    /// Whether the probes ever found it up (then coming back takes `rise` passes).
    ever_up: bool,
    /// Ejected until then.
    ejected_until: Option<Instant>,
    /// Ejections in a row (the ejection time doubles with each).
    ejections: u32,
    last_ejected: Option<Instant>,
    /// Set when the backend must pass a probe finished after this time to take traffic.
    probation_since: Option<Instant>,
    /// Ramp-up of the limit started then.
    ramp_from: Option<Instant>,
    /// The next time it turns healthy, its limit ramps up over `slow_start`: it is
    /// coming back from failure (it was healthy, or a probe failed, or it was ejected),
    /// or a reload added it to a running upstream. Never for a backend found healthy
    /// when levee starts (or takes over from the levee before it).
    ramp_on_up: bool,
    /// Added by a reload to a running upstream: ramps up even if already healthy.
    joined: bool,
}

/// The health of one backend.
pub struct BackendHealth {
    check: Check,
    /// Requests in a row that failed (connect error, timeout, 5xx when counted).
    failures: AtomicU32,
    state: AtomicU8,
    inner: Mutex<Inner>,
}

/// A change worth logging and acting on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
}

impl BackendHealth {
    /// A new backend: with active checks it is in probation until its first probe
    /// passes; without, it is healthy at once.
    pub fn new(check: Check, now: Instant) -> BackendHealth {
        let probing = check != Check::None;
        BackendHealth {
            check,
            failures: AtomicU32::new(0),
            state: AtomicU8::new(if probing {
                State::Probation as u8
            } else {
                State::Healthy as u8
            }),
            inner: Mutex::new(Inner {
                probe_up: !probing,
                ok_streak: 0,
                fail_streak: 0,
                last_probe_ok: None,
                probed: false,
                ever_up: !probing,
                ejected_until: None,
                ejections: 0,
                last_ejected: None,
                probation_since: probing.then_some(now),
                ramp_from: None,
                ramp_on_up: false,
                joined: false,
            }),
        }
    }

    /// A reload added this backend to an upstream that is already serving: its limit
    /// ramps up over `slow_start` once it is healthy (the next [`Self::evaluate`]).
    pub fn join_running(&self) {
        let mut s = self.inner.lock();
        s.ramp_on_up = true;
        s.joined = true;
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn is_ejected(&self) -> bool {
        self.state() == State::Ejected
    }

    /// Failed requests in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn ejections(&self) -> u32 {
        self.inner.lock().ejections
    }

    /// Whether the first probe has finished (always true without checks).
    pub fn probed(&self) -> bool {
        self.check == Check::None || self.inner.lock().probed
    }

    /// Records one probe result.
    pub fn record_probe(&self, ok: bool, now: Instant, cfg: &Health) {
        let mut s = self.inner.lock();
        s.probed = true;
        if ok {
            s.fail_streak = 0;
            s.ok_streak = s.ok_streak.saturating_add(1);
            s.last_probe_ok = Some(now);
            // A new backend needs one passing probe; one that went down needs `rise`.
            let needed = if s.ever_up { cfg.rise } else { 1 };
            if s.ok_streak >= needed {
                s.probe_up = true;
                s.ever_up = true;
            }
        } else {
            s.ok_streak = 0;
            s.fail_streak = s.fail_streak.saturating_add(1);
            if s.probe_up && s.fail_streak >= cfg.fall {
                s.probe_up = false;
                // Back up only through `rise` passing probes.
                s.probation_since = Some(now);
            }
        }
    }

    /// Records a request's outcome; true when this failure completes a streak that
    /// calls for ejection (the caller decides whether the upstream allows it).
    pub fn record_request(&self, failed: bool, cfg: &Health) -> bool {
        if !failed {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            return false;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        cfg.eject_after_failures > 0 && n >= cfg.eject_after_failures && !self.is_ejected()
    }

    /// Ejects the backend: `eject` the first time, doubling for each ejection in a row,
    /// capped at `eject_max`. Returns how long, or `None` if it already was ejected.
    pub fn eject(&self, now: Instant, cfg: &Health) -> Option<Duration> {
        let mut s = self.inner.lock();
        if s.ejected_until.is_some_and(|t| t > now) {
            return None;
        }
        let factor = 1u32 << s.ejections.min(16);
        let time = cfg.eject.saturating_mul(factor).min(cfg.eject_max);
        s.ejected_until = Some(now + time);
        s.ejections = s.ejections.saturating_add(1);
        s.last_ejected = Some(now);
        self.failures.store(0, Ordering::Relaxed);
        self.state.store(State::Ejected as u8, Ordering::Relaxed);
        Some(time)
    }

    /// Re-evaluates the state at `now`: ends ejections that ran out (into probation
    /// when the upstream probes), starts and ends slow start. Returns the state change,
    /// if any, and the limit the backend should have now.
    pub fn evaluate(&self, now: Instant, cfg: &Health, max_inflight: u32) -> (Option<Change>, u32) {
        let mut s = self.inner.lock();
        if let Some(until) = s.ejected_until {
            if now >= until {
                s.ejected_until = None;
                if self.check != Check::None {
                    s.probation_since = Some(now);
                }
            }
        }
        // An ejection streak is forgotten after a calm period as long as the longest ejection.
        if s.ejected_until.is_none()
            && s.last_ejected
                .is_some_and(|t| now.duration_since(t) > cfg.eject_max)
        {
            s.ejections = 0;
            s.last_ejected = None;
        }
        let passed_probation = match s.probation_since {
            None => true,
            Some(since) => s.probe_up && s.last_probe_ok.is_some_and(|ok| ok >= since),
        };
        if passed_probation {
            s.probation_since = None;
        }
        let next = if s.ejected_until.is_some() {
            State::Ejected
        } else if !s.probe_up && s.fail_streak > 0 {
            State::Unhealthy
        } else if !passed_probation || !s.probe_up {
            State::Probation
        } else {
            State::Healthy
        };
        let prev = self.state();
        let turns_up = next == State::Healthy && (prev != State::Healthy || s.joined);
        if turns_up {
            if s.ramp_on_up && !cfg.slow_start.is_zero() {
                s.ramp_from = Some(now);
            }
            s.ramp_on_up = false;
            s.joined = false;
        }
        if next != State::Healthy {
            s.ramp_from = None;
            // Anything but the probation of a backend not yet probed at start is a
            // failure to come back from.
            if prev == State::Healthy || next != State::Probation || s.fail_streak > 0 {
                s.ramp_on_up = true;
            }
        }
        let limit = match s.ramp_from {
            Some(from) => {
                let share = now.duration_since(from).as_secs_f64() / cfg.slow_start.as_secs_f64();
                if share >= 1.0 {
                    s.ramp_from = None;
                    max_inflight
                } else {
                    let share = share.max(SLOW_START_FLOOR);
                    ((f64::from(max_inflight) * share).ceil() as u32).clamp(1, max_inflight)
                }
            }
            None => max_inflight,
        };
        self.state.store(next as u8, Ordering::Relaxed);
        let change = (next != prev).then_some(Change {
            from: prev,
            to: next,
        });
        (change, limit)
    }
}

/// A process-wide clock origin, so times can live in atomics as milliseconds.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> Health {
        Health {
            path: Some("/health".into()),
            check: Check::Http,
            rise: 2,
            fall: 2,
            eject_after_failures: 3,
            eject: Duration::from_secs(1),
            eject_max: Duration::from_secs(4),
            slow_start: Duration::from_secs(10),
            ..Health::DEFAULT
        }
    }

    #[test]
    fn a_new_backend_waits_for_one_passing_probe() {
        let t0 = Instant::now();
        let h = BackendHealth::new(Check::Http, t0);
        assert_eq!(h.evaluate(t0, &cfg(), 10).0, None);
        assert_eq!(h.state(), State::Probation);
        h.record_probe(true, t0, &cfg());
        let (change, limit) = h.evaluate(t0, &cfg(), 10);
        assert_eq!(
            change,
            Some(Change {
                from: State::Probation,
                to: State::Healthy
            })
        );
        assert_eq!(limit, 10, "found healthy at start: no slow start");
    }

    #[test]
    fn slow_start_only_after_a_failure_or_when_added_by_a_reload() {
        let t0 = Instant::now();
        let c = cfg();
        // Down at start: its first probe fails, so coming up later ramps.
        let h = BackendHealth::new(Check::Http, t0);
        h.record_probe(false, t0, &c);
        h.evaluate(t0, &c, 10);
        h.record_probe(true, t0, &c);
        let (change, limit) = h.evaluate(t0, &c, 10);
        assert_eq!(change.map(|c| c.to), Some(State::Healthy));
        assert_eq!(limit, 1, "slow start begins at the floor");
        let (_, limit) = h.evaluate(t0 + Duration::from_secs(5), &c, 10);
        assert_eq!(limit, 5);
        let (_, limit) = h.evaluate(t0 + Duration::from_secs(11), &c, 10);
        assert_eq!(limit, 10);

        // Healthy, then unhealthy, then back: ramps.
        let t1 = t0 + Duration::from_secs(20);
        for _ in 0..2 {
            h.record_probe(false, t1, &c);
            h.evaluate(t1, &c, 10);
        }
        assert_eq!(h.state(), State::Unhealthy);
        for i in 0..2 {
            h.record_probe(true, t1 + Duration::from_millis(i), &c);
        }
        let (_, limit) = h.evaluate(t1 + Duration::from_millis(2), &c, 10);
        assert_eq!(h.state(), State::Healthy);
        assert_eq!(limit, 1);

        // Added by a reload, without checks (healthy at once): ramps.
        let n = BackendHealth::new(Check::None, t0);
        assert_eq!(
            n.evaluate(t0, &c, 10).1,
            10,
            "no checks at start: full limit"
        );
        let added = BackendHealth::new(Check::None, t0);
        added.join_running();
        assert_eq!(added.evaluate(t0, &c, 10).1, 1);
        // ...and with checks, once its first probe passes.
        let probed = BackendHealth::new(Check::Http, t0);
        probed.join_running();
        probed.evaluate(t0, &c, 10);
        probed.record_probe(true, t0, &c);
        assert_eq!(probed.evaluate(t0, &c, 10).1, 1);
    }

    #[test]
    fn fall_then_rise() {
        let t0 = Instant::now();
        let c = cfg();
        let h = BackendHealth::new(Check::Http, t0);
        h.record_probe(true, t0, &c);
        h.evaluate(t0, &c, 10);
        h.record_probe(false, t0, &c);
        assert_eq!(h.evaluate(t0, &c, 10).0, None, "one failure is not enough");
        h.record_probe(false, t0, &c);
        assert_eq!(
            h.evaluate(t0, &c, 10).0.map(|c| c.to),
            Some(State::Unhealthy)
        );
        h.record_probe(true, t0, &c);
        assert_eq!(
            h.evaluate(t0, &c, 10).0.map(|c| c.to),
            Some(State::Probation),
            "rise is 2: passing, not yet up"
        );
        h.record_probe(true, t0 + Duration::from_millis(1), &c);
        assert_eq!(
            h.evaluate(t0 + Duration::from_millis(1), &c, 10)
                .0
                .map(|c| c.to),
            Some(State::Healthy)
        );
    }

    #[test]
    fn ejection_doubles_up_to_the_cap_and_ends_in_probation() {
        let t0 = Instant::now();
        let c = cfg();
        let h = BackendHealth::new(Check::Http, t0);
        h.record_probe(true, t0, &c);
        h.evaluate(t0, &c, 10);
        assert!(!h.record_request(true, &c));
        assert!(!h.record_request(true, &c));
        assert!(h.record_request(true, &c), "third failure in a row");
        assert_eq!(h.eject(t0, &c), Some(Duration::from_secs(1)));
        assert_eq!(h.eject(t0, &c), None, "already ejected");
        assert_eq!(h.evaluate(t0, &c, 10).1, 10);
        assert_eq!(h.state(), State::Ejected);
        let t1 = t0 + Duration::from_secs(1);
        h.evaluate(t1, &c, 10);
        assert_eq!(
            h.state(),
            State::Probation,
            "needs a probe after the ejection"
        );
        h.record_probe(true, t1, &c);
        h.evaluate(t1, &c, 10);
        assert_eq!(h.state(), State::Healthy);
        assert_eq!(h.eject(t1, &c), Some(Duration::from_secs(2)));
        let t2 = t1 + Duration::from_secs(2);
        h.evaluate(t2, &c, 10);
        assert_eq!(h.eject(t2, &c), Some(Duration::from_secs(4)));
        let t3 = t2 + Duration::from_secs(4);
        h.evaluate(t3, &c, 10);
        assert_eq!(h.eject(t3, &c), Some(Duration::from_secs(4)), "capped");
    }

    #[test]
    fn successes_reset_the_failure_streak() {
        let c = cfg();
        let h = BackendHealth::new(Check::None, Instant::now());
        assert_eq!(h.state(), State::Healthy);
        h.record_request(true, &c);
        h.record_request(true, &c);
        h.record_request(false, &c);
        assert_eq!(h.failures(), 0);
        assert!(!h.record_request(true, &c));
    }
}
