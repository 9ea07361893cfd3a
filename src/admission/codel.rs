//! Standing-queue control: when the queue stops absorbing a burst and starts holding
//! latency, as a state machine with no clock and no lock of its own (every call takes
//! `now`; [`super::queue::WaitQueue`] keeps one under its lock and drives it).
//!
//! A queue absorbs bursts: a request may wait up to `queue_timeout`. It **stands** by
//! CoDel's rule: every request that left it over a whole `interval` had waited longer
//! than `target` (the smallest wait seen over an interval stayed above target). From
//! then on the allowed wait is `target`, so a queue under sustained overload holds
//! about `target` worth of requests instead of `queue_timeout` worth.
//!
//! It stands until it has **drained**: it is empty, and for a whole `interval` no
//! request was turned away for want of capacity (see
//! [`crate::metrics::ShedReason::is_capacity`]). The queue merely being empty is not
//! enough: a standing queue is short, and it is emptied every time its waiters are shed
//! at `target`, while the backends stay as overloaded as before. Falling back to
//! `queue_timeout` on every such moment would let waits climb again for an interval
//! each time. Requests shed for their priority or for lack of healthy backends do not
//! count, so the standing state cannot feed itself through the level (a standing queue
//! is at least caution, which sheds `low`).
//!
//! What each call looks at:
//! - [`Codel::on_wait`]: the wait of a request leaving the queue, served or shed when
//!   its allowed wait passed (the sojourn time CoDel measures at dequeue);
//! - [`Codel::on_burst`]: a request joined an empty queue: what the previous burst's
//!   waits said is forgotten;
//! - [`Codel::settle`]: whether a standing queue has drained.

use std::time::{Duration, Instant};

/// The two durations the rule uses (`upstream.limits.queue_target_ms` and
/// `queue_interval_ms`); passed on each call so that a reload takes effect at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub target: Duration,
    pub interval: Duration,
}

/// A change of the standing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The queue stands: the allowed wait is now the target.
    Began,
    /// The queue drained: it absorbs bursts again.
    Ended,
}

/// The standing state of one queue.
#[derive(Debug, Default, Clone)]
pub struct Codel {
    /// Since when every wait seen was above target; `None` when the last one was not,
    /// or a new burst began since.
    above_since: Option<Instant>,
    /// `Some(since)` while the queue stands.
    standing_since: Option<Instant>,
}

impl Codel {
    pub fn is_standing(&self) -> bool {
        self.standing_since.is_some()
    }

    /// The wait a request may take in the queue now: `target` while it stands, else
    /// `timeout`.
    pub fn allowed_wait(&self, timeout: Duration, target: Duration) -> Duration {
        if self.is_standing() {
            target
        } else {
            timeout
        }
    }

    /// A request left the queue after waiting `wait`. Returns [`Change::Began`] when
    /// this wait completes an interval of waits all above target.
    pub fn on_wait(&mut self, wait: Duration, now: Instant, p: Params) -> Option<Change> {
        if self.is_standing() {
            // Waits of a standing queue are bounded by the target it enforces: they say
            // nothing about its end, which `settle` judges.
            return None;
        }
        if wait <= p.target {
            self.above_since = None;
            return None;
        }
        let since = *self.above_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= p.interval {
            self.above_since = None;
            self.standing_since = Some(now);
            return Some(Change::Began);
        }
        None
    }

    /// A request joined the queue while it was empty: a new burst, to be judged on its
    /// own waits. (While the queue stands, an empty moment is no news: see `settle`.)
    pub fn on_burst(&mut self) {
        if !self.is_standing() {
            self.above_since = None;
        }
    }

    /// Ends the standing state once the queue has drained: `empty` now, and no request
    /// turned away for want of capacity since `last_pressure` (if any) for a whole
    /// interval, counted from when it began standing at the earliest.
    pub fn settle(
        &mut self,
        empty: bool,
        last_pressure: Option<Instant>,
        now: Instant,
        p: Params,
    ) -> Option<Change> {
        let since = self.standing_since?;
        if !empty {
            return None;
        }
        let quiet_since = last_pressure.map_or(since, |t| t.max(since));
        if now.saturating_duration_since(quiet_since) < p.interval {
            return None;
        }
        self.standing_since = None;
        self.above_since = None;
        Some(Change::Ended)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params {
        target: Duration::from_millis(5),
        interval: Duration::from_millis(100),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds waits of `wait_ms` every `every_ms` from `from_ms` to `to_ms` (exclusive);
    /// returns the time of the first change, if any.
    fn feed(
        c: &mut Codel,
        t0: Instant,
        span: (u64, u64, u64),
        wait_ms: u64,
    ) -> Option<(u64, Change)> {
        feed_with(c, t0, span, wait_ms, P)
    }

    #[test]
    fn stands_once_waits_stay_above_target_for_an_interval() {
        let t0 = Instant::now();
        let mut c = Codel::default();
        assert_eq!(c.allowed_wait(ms(250), P.target), ms(250));
        // Waits above target from t = 10 ms, one every 10 ms: at 110 ms an interval
        // of them has passed.
        assert_eq!(
            feed(&mut c, t0, (10, 300, 10), 30),
            Some((110, Change::Began))
        );
        assert!(c.is_standing());
        assert_eq!(c.allowed_wait(ms(250), P.target), P.target);
        // Once standing, waits (bounded by the target now) change nothing.
        assert_eq!(c.on_wait(ms(1), t0 + ms(120), P), None);
        assert!(c.is_standing());
    }

    #[test]
    fn one_wait_at_or_below_target_restarts_the_interval() {
        let t0 = Instant::now();
        let mut c = Codel::default();
        assert_eq!(feed(&mut c, t0, (0, 90, 10), 50), None);
        // Exactly the target is not above it.
        assert_eq!(c.on_wait(P.target, t0 + ms(95), P), None);
        assert_eq!(
            feed(&mut c, t0, (100, 200, 10), 50),
            None,
            "restarted at 100"
        );
        assert_eq!(
            c.on_wait(ms(50), t0 + ms(200), P),
            Some(Change::Began),
            "a full interval after the restart"
        );
    }

    #[test]
    fn a_single_long_wait_is_a_burst_not_a_standing_queue() {
        let t0 = Instant::now();
        let mut c = Codel::default();
        // One request waited far longer than the interval: one sample, not an interval
        // of them.
        assert_eq!(c.on_wait(ms(1_000), t0, P), None);
        assert!(!c.is_standing());
    }

    #[test]
    fn a_new_burst_forgets_the_previous_one() {
        let t0 = Instant::now();
        let mut c = Codel::default();
        // A burst whose waits were all above target, but drained within the interval.
        assert_eq!(feed(&mut c, t0, (0, 60, 10), 40), None);
        // Much later, a request joins the empty queue: a new burst.
        c.on_burst();
        assert_eq!(c.on_wait(ms(40), t0 + ms(1_000), P), None);
        assert_eq!(c.on_wait(ms(40), t0 + ms(1_050), P), None);
        assert!(!c.is_standing());
        // Without the reset, the first sample of the second burst would have stood.
        let mut stale = Codel::default();
        assert_eq!(feed(&mut stale, t0, (0, 60, 10), 40), None);
        assert_eq!(
            stale.on_wait(ms(40), t0 + ms(1_000), P),
            Some(Change::Began)
        );
    }

    #[test]
    fn drains_only_when_empty_and_quiet_for_an_interval() {
        let t0 = Instant::now();
        let mut c = Codel::default();
        assert_eq!(
            feed(&mut c, t0, (0, 200, 10), 20),
            Some((100, Change::Began))
        );
        // Not before an interval has passed since it began, even empty and quiet.
        assert_eq!(c.settle(true, None, t0 + ms(150), P), None);
        // Sheds for capacity keep it standing, however often it is empty.
        let shed_at = t0 + ms(180);
        assert_eq!(c.settle(true, Some(shed_at), t0 + ms(200), P), None);
        assert_eq!(c.settle(true, Some(shed_at), t0 + ms(279), P), None);
        // Quiet for an interval, but requests still waiting: it stands.
        assert_eq!(c.settle(false, Some(shed_at), t0 + ms(300), P), None);
        assert!(c.is_standing());
        // Empty and quiet for an interval: a burst queue again.
        assert_eq!(
            c.settle(true, Some(shed_at), t0 + ms(300), P),
            Some(Change::Ended)
        );
        assert!(!c.is_standing());
        assert_eq!(c.allowed_wait(ms(250), P.target), ms(250));
        assert_eq!(c.settle(true, None, t0 + ms(400), P), None, "once");
    }

    #[test]
    fn after_draining_it_takes_a_whole_interval_to_stand_again() {
        let t0 = Instant::now();
        let mut c = Codel::default();
        feed(&mut c, t0, (0, 200, 10), 20);
        assert_eq!(c.settle(true, None, t0 + ms(300), P), Some(Change::Ended));
        // Waits above target at once: the interval starts over.
        assert_eq!(feed(&mut c, t0, (300, 400, 10), 20), None);
        assert_eq!(c.on_wait(ms(20), t0 + ms(400), P), Some(Change::Began));
    }

    #[test]
    fn changed_params_apply_at_the_next_call() {
        let t0 = Instant::now();
        let slow = Params {
            target: ms(5),
            interval: ms(500),
        };
        let mut c = Codel::default();
        // With a 500 ms interval, 110 ms of waits above target are not enough.
        assert_eq!(feed_with(&mut c, t0, (0, 120, 10), 20, slow), None);
        // A reload raised the target above these waits: they no longer count as above,
        // and the interval starts over.
        let high = Params {
            target: ms(30),
            interval: ms(100),
        };
        assert_eq!(c.on_wait(ms(20), t0 + ms(600), high), None);
        assert_eq!(c.on_wait(ms(20), t0 + ms(700), slow), None, "restarted");
        assert_eq!(c.on_wait(ms(20), t0 + ms(1_200), slow), Some(Change::Began));
    }

    fn feed_with(
        c: &mut Codel,
        t0: Instant,
        (from_ms, to_ms, every_ms): (u64, u64, u64),
        wait_ms: u64,
        p: Params,
    ) -> Option<(u64, Change)> {
        (from_ms..to_ms)
            .step_by(every_ms as usize)
            .find_map(|t| c.on_wait(ms(wait_ms), t0 + ms(t), p).map(|ch| (t, ch)))
    }
}
