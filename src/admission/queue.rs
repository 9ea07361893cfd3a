//! The bounded FIFO where requests wait for a backend slot, and its standing state.
//!
//! A waiter is handed its slot directly by the request that frees it (see
//! [`crate::admission::dispatch`]): a freed slot goes to the oldest waiter that may use
//! it instead of being raced for, so the queue is fair and never waits while a slot it
//! could use is free. The lock is held only to push, remove or hand over, never across
//! an `.await`.
//!
//! The queue keeps its [`Codel`] state under the same lock, fed with the wait of every
//! request that leaves it, so a standing queue is seen where waits are measured; the
//! standing flag is mirrored in an atomic for the request path.
//!
//! The queue is generic over what it queues for (`U`, the upstream) and what it hands
//! over (`P`, a permit), so it depends on neither: `state` holds one, `admission`
//! drives it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{futures::Notified, oneshot, Notify};

use super::codel::{Change, Codel, Params};
use super::fairness::{Client, Shares};
use crate::config::Class;

/// How precisely the last shed for want of capacity is kept: a standing queue may
/// drain up to this much early.
pub const PRESSURE_RESOLUTION: Duration = Duration::from_millis(1);

/// What a waiter receives.
pub enum Grant<P> {
    /// A slot, already counted on its backend.
    Permit(P),
    /// A `critical` request took this waiter's place in a full queue.
    Displaced,
    /// A slot came free for this waiter, but the queue stands and it had waited past
    /// the target: the slot went on to the next waiter.
    Expired,
    /// A request of a lighter client took this waiter's place in a full queue
    /// (fairness): this one's client held more.
    Outweighed,
}

pub(crate) struct Waiter<U, P> {
    pub id: u64,
    pub class: Class,
    /// The upstream version the request was admitted under: its backend list is the
    /// one `target` indexes, and the slot is taken there. Versions share the queue.
    pub upstream: Arc<U>,
    /// The one backend this waiter can use (affinity), or any backend.
    pub target: Option<usize>,
    /// When it joined: its wait, when it leaves, feeds the standing state.
    pub since: Instant,
    /// Its client key's counters, when the upstream has fairness.
    pub client: Option<Client>,
    /// Joined ahead of older waiters (a lighter client): its wait, when it is served,
    /// says how light its client is, not how long the queue holds requests, so it does
    /// not feed the standing state.
    pub jumped: bool,
    pub tx: oneshot::Sender<Grant<P>>,
}

/// Why a request could not join the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// It is full (and the request may displace nobody).
    Full,
    /// Its place would be too far back to be served within the allowed wait.
    Late,
}

/// How a request of an upstream with fairness joins the queue: ahead of the waiters
/// of clients that hold more than its own (by [`Shares::held`]), FIFO among the
/// rest; in a full queue, in place of the newest waiter (the tail) when that one's
/// client holds more and its class is not higher.
pub(crate) struct FairJoin<'a> {
    pub shares: &'a Shares,
    pub client: Client,
    /// Refuse the place (`Refused::Late`) when this many or more would be ahead.
    pub max_ahead: Option<usize>,
}

/// Most waiters a light request passes when it joins: bounds the work under the lock
/// (it is then that far ahead, which is most of any queue the target allows).
pub const FAIR_SCAN: usize = 1024;

/// What the lock guards: the waiters, oldest first, and the standing state they feed.
pub(crate) struct Inner<U, P> {
    pub waiters: VecDeque<Waiter<U, P>>,
    codel: Codel,
}

pub struct WaitQueue<U, P> {
    inner: Mutex<Inner<U, P>>,
    /// Mirror of `waiters.len()`, written under the lock, read without it.
    len: AtomicU32,
    /// Highest length since the ticker last read it.
    peak: AtomicU32,
    /// Requests that would have waited but were turned away (by the level or a full
    /// queue) since the ticker last read it, counted up to the queue depth.
    turned_away: AtomicU32,
    next_id: AtomicU64,
    /// Mirror of `codel.is_standing()`, written under the lock, read without it.
    standing: AtomicBool,
    /// Last shed for want of capacity while standing, in nanoseconds after `epoch`
    /// (0: none). Written without the lock: sheds are the flood's path.
    pressure: AtomicU64,
    epoch: Instant,
    /// Woken when the queue begins standing, so that waiters take the shorter wait
    /// at once.
    began: Notify,
}

impl<U, P> Default for WaitQueue<U, P> {
    fn default() -> Self {
        WaitQueue {
            inner: Mutex::new(Inner {
                waiters: VecDeque::new(),
                codel: Codel::default(),
            }),
            len: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            turned_away: AtomicU32::new(0),
            next_id: AtomicU64::new(0),
            standing: AtomicBool::new(false),
            pressure: AtomicU64::new(0),
            epoch: Instant::now(),
            began: Notify::new(),
        }
    }
}

/// A new place in the queue, and the waiter a `critical` request displaced to get it.
pub(crate) type Joined<U, P> = (Ticket<P>, Option<Waiter<U, P>>);

/// A place in the queue: the waiter's id and where its grant arrives.
pub(crate) struct Ticket<P> {
    pub id: u64,
    pub rx: oneshot::Receiver<Grant<P>>,
}

impl<U, P> WaitQueue<U, P> {
    /// Requests waiting now.
    pub fn len(&self) -> u32 {
        self.len.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Highest length since the previous call (the ticker's view of bursts between ticks).
    pub fn take_peak(&self) -> u32 {
        self.peak.swap(self.len(), Ordering::Relaxed)
    }

    /// Counts a request that would have waited but was turned away by the level or a
    /// full queue, up to `cap` (the queue depth: more says nothing more, and past it a
    /// flood of sheds only reads the shared word).
    pub fn note_turned_away(&self, cap: u32) {
        if self.turned_away.load(Ordering::Relaxed) < cap {
            self.turned_away.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many were turned away since the previous call (the ticker's).
    pub fn take_turned_away(&self) -> u32 {
        self.turned_away.swap(0, Ordering::Relaxed)
    }

    /// Whether the queue stands: its allowed wait is the target, not the timeout.
    pub fn is_standing(&self) -> bool {
        self.standing.load(Ordering::Relaxed)
    }

    /// Notes a request turned away for want of capacity at `now`: a standing queue
    /// drains only after an interval without any. A no-op unless it stands. Kept to
    /// [`PRESSURE_RESOLUTION`], so that a flood of sheds on several threads writes the
    /// shared word about once per resolution, not once per shed.
    pub fn note_pressure(&self, now: Instant) {
        if !self.is_standing() {
            return;
        }
        let ns = now.saturating_duration_since(self.epoch).as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX).max(1);
        let resolution = PRESSURE_RESOLUTION.as_nanos() as u64;
        if ns
            >= self
                .pressure
                .load(Ordering::Relaxed)
                .saturating_add(resolution)
        {
            self.pressure.fetch_max(ns, Ordering::Relaxed);
        }
    }

    fn last_pressure(&self) -> Option<Instant> {
        match self.pressure.load(Ordering::Relaxed) {
            0 => None,
            ns => self.epoch.checked_add(Duration::from_nanos(ns)),
        }
    }

    /// Ends the standing state if the queue has drained (see [`Codel::settle`]). Takes
    /// the lock only when the lock-free reads say it may have: not on every shed of
    /// a flood.
    pub fn settle(&self, now: Instant, params: Params) -> Option<Change> {
        if !self.is_standing() || !self.is_empty() {
            return None;
        }
        let recent = self
            .last_pressure()
            .is_some_and(|t| now.saturating_duration_since(t) < params.interval);
        if recent {
            return None;
        }
        let mut q = self.lock();
        let empty = q.inner.waiters.is_empty();
        let change = q
            .inner
            .codel
            .settle(empty, self.last_pressure(), now, params);
        q.sync_standing();
        change
    }

    /// A future that completes the next time the queue begins standing. Enable it
    /// (`Notified::enable`) before reading [`Self::is_standing`], so that no start is
    /// missed in between.
    pub fn began_standing(&self) -> Notified<'_> {
        self.began.notified()
    }

    /// Wakes every waiter after the queue began standing (call without the lock).
    pub fn wake_waiters(&self) {
        self.began.notify_waiters();
    }

    pub(crate) fn lock(&self) -> QueueGuard<'_, U, P> {
        QueueGuard {
            queue: self,
            inner: self.inner.lock(),
        }
    }

    /// Joins the queue at `now`: at its tail, or with `fair` at its client's place
    /// (see [`FairJoin`]). When it is full, a `critical` request displaces the newest
    /// waiter of the lowest class below critical, and with `fair` a lighter client's
    /// request the newest waiter if its client is heavier; the displaced waiter is
    /// returned to be told.
    pub(crate) fn push(
        &self,
        upstream: &Arc<U>,
        class: Class,
        target: Option<usize>,
        depth: u32,
        now: Instant,
        fair: Option<FairJoin<'_>>,
    ) -> Result<Joined<U, P>, Refused> {
        let mut q = self.lock();
        if q.inner.waiters.is_empty() {
            q.inner.codel.on_burst();
        }
        let held = fair.as_ref().map(|f| f.shares.held(&f.client));
        let heavier = |w: &Waiter<U, P>| match (&fair, w.client, held) {
            (Some(f), Some(c), Some(mine)) => f.shares.held(&c) > mine,
            _ => false,
        };
        // Its place: behind every waiter whose client holds no more than its own.
        let mut at = q.inner.waiters.len();
        if fair.is_some() {
            let stop = at.saturating_sub(FAIR_SCAN);
            while at > stop && heavier(&q.inner.waiters[at - 1]) {
                at -= 1;
            }
        }
        let full = q.inner.waiters.len() >= depth as usize;
        let displace = if !full {
            None
        } else if class == Class::Critical {
            let lowest = q
                .inner
                .waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| w.class < Class::Critical)
                .min_by_key(|(i, w)| (w.class, std::cmp::Reverse(*i)))
                .map(|(i, _)| i);
            Some(lowest.ok_or(Refused::Full)?)
        } else {
            let last = q.inner.waiters.len().checked_sub(1);
            let outweighed = last.filter(|&i| {
                let w = &q.inner.waiters[i];
                w.class <= class && heavier(w)
            });
            Some(outweighed.ok_or(Refused::Full)?)
        };
        let max_ahead = fair.as_ref().and_then(|f| f.max_ahead);
        let ahead = at - usize::from(displace.is_some_and(|i| i < at));
        if max_ahead.is_some_and(|max| ahead >= max) {
            return Err(Refused::Late);
        }
        let displaced = displace.and_then(|i| q.remove_at(i));
        let jumped = ahead < q.inner.waiters.len();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        q.inner.waiters.insert(
            ahead,
            Waiter {
                id,
                class,
                upstream: upstream.clone(),
                target,
                since: now,
                client: fair.map(|f| f.client),
                jumped,
                tx,
            },
        );
        q.sync_len();
        Ok((Ticket { id, rx }, displaced))
    }

    /// Takes a waiter out of the queue; false when it is no longer there (it was
    /// granted a slot or displaced, and the grant is in its channel).
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut q = self.lock();
        match q.inner.waiters.iter().position(|w| w.id == id) {
            Some(i) => {
                q.remove_at(i);
                true
            }
            None => false,
        }
    }

    /// Takes a waiter out of the queue because its allowed wait passed after `wait`,
    /// which counts toward the standing state. Returns whether it was still there (if
    /// not, it was granted a slot or displaced meanwhile, and the grant is in its
    /// channel) and the change of the standing state, if any.
    pub(crate) fn expire(
        &self,
        id: u64,
        wait: Duration,
        now: Instant,
        params: Params,
    ) -> (bool, Option<Change>) {
        let mut q = self.lock();
        let Some(i) = q.inner.waiters.iter().position(|w| w.id == id) else {
            return (false, None);
        };
        q.remove_at(i);
        (true, q.record_wait(wait, now, params))
    }
}

pub(crate) struct QueueGuard<'a, U, P> {
    queue: &'a WaitQueue<U, P>,
    pub inner: MutexGuard<'a, Inner<U, P>>,
}

impl<U, P> QueueGuard<'_, U, P> {
    pub fn waiters(&self) -> &VecDeque<Waiter<U, P>> {
        &self.inner.waiters
    }

    pub fn remove_at(&mut self, i: usize) -> Option<Waiter<U, P>> {
        let w = self.inner.waiters.remove(i);
        self.sync_len();
        w
    }

    /// Whether the queue stands (under the lock: exact).
    pub fn is_standing(&self) -> bool {
        self.inner.codel.is_standing()
    }

    /// Feeds the wait of a request that left the queue to the standing state.
    pub fn record_wait(&mut self, wait: Duration, now: Instant, params: Params) -> Option<Change> {
        let change = self.inner.codel.on_wait(wait, now, params);
        self.sync_standing();
        change
    }

    fn sync_len(&mut self) {
        let n = self.inner.waiters.len() as u32;
        self.queue.len.store(n, Ordering::SeqCst);
        self.queue.peak.fetch_max(n, Ordering::Relaxed);
    }

    fn sync_standing(&mut self) {
        let standing = self.inner.codel.is_standing();
        self.queue.standing.store(standing, Ordering::Relaxed);
    }
}
