//! The bounded queue where requests wait for a backend slot, and its standing state.
//!
//! Waiters are kept in class order: every `critical` waiter ahead of every `high` one,
//! then `normal`, then `low`; oldest first within a class (with fairness, lighter
//! clients first within a class, see [`FairJoin`]). A waiter is handed its slot
//! directly by the request that frees it (see [`crate::admission::dispatch`]): a freed
//! slot goes to the first waiter in that order that may use it instead of being raced
//! for, so the queue never waits while a slot it could use is free. A lower class may
//! wait behind a steady stream of higher ones: that starvation is intended, and bounded
//! by the allowed wait and the levels, which shed the lower classes first. The lock is
//! held only to push, remove or hand over, never across an `.await`.
//!
//! Each class has its own [`Codel`] state under the same lock, fed with the waits of
//! that class's requests as they leave, so the class whose waits stand (the one behind
//! the others) gets the short allowed wait, not the classes served ahead of it. The
//! standing flags and the per-class lengths are mirrored in atomics for the request
//! path.
//!
//! The queue is generic over what it queues for (`U`, the upstream) and what it hands
//! over (`P`, a permit), so it depends on neither: `state` holds one, `admission`
//! drives it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
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

/// What the lock guards: the waiters in class order, and the standing state they feed.
pub(crate) struct Inner<U, P> {
    pub waiters: VecDeque<Waiter<U, P>>,
    /// Waiters of each class, indexed by `Class as usize`.
    counts: [u32; 4],
    /// The standing state of each class, indexed by `Class as usize`.
    codel: [Codel; 4],
}

/// Changes of the per-class standing states, as bit sets by `Class as usize`: what a
/// call under the lock reports, to be acted on after it (log, count, wake).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    pub began: u8,
    pub ended: u8,
}

impl Changes {
    fn of(class: Class, change: Option<Change>) -> Changes {
        let bit = 1 << class as u8;
        match change {
            Some(Change::Began) => Changes {
                began: bit,
                ended: 0,
            },
            Some(Change::Ended) => Changes {
                began: 0,
                ended: bit,
            },
            None => Changes::default(),
        }
    }

    /// Both sets of changes.
    pub fn and(self, other: Changes) -> Changes {
        Changes {
            began: self.began | other.began,
            ended: self.ended | other.ended,
        }
    }

    pub fn is_none(&self) -> bool {
        self.began == 0 && self.ended == 0
    }

    /// The classes whose queue began standing (or, with `began = false`, drained).
    pub fn classes(&self, began: bool) -> impl Iterator<Item = Class> {
        let set = if began { self.began } else { self.ended };
        Class::ALL
            .into_iter()
            .filter(move |c| set & (1 << *c as u8) != 0)
    }
}

pub struct WaitQueue<U, P> {
    inner: Mutex<Inner<U, P>>,
    /// Mirror of `waiters.len()`, written under the lock, read without it.
    len: AtomicU32,
    /// Mirror of `counts`, written under the lock, read without it.
    class_len: [AtomicU32; 4],
    /// Highest length since the ticker last read it.
    peak: AtomicU32,
    /// Requests that would have waited but were turned away (by the level or a full
    /// queue) since the ticker last read it, counted up to the queue depth.
    turned_away: AtomicU32,
    next_id: AtomicU64,
    /// Mirror of each class's `codel.is_standing()` as a bit set by `Class as usize`,
    /// written under the lock, read without it.
    standing: AtomicU8,
    /// Last shed of each class for want of capacity while its queue stood, in
    /// nanoseconds after `epoch` (0: none). Written without the lock: sheds are the
    /// flood's path.
    pressure: [AtomicU64; 4],
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
                counts: [0; 4],
                codel: Default::default(),
            }),
            len: AtomicU32::new(0),
            class_len: Default::default(),
            peak: AtomicU32::new(0),
            turned_away: AtomicU32::new(0),
            next_id: AtomicU64::new(0),
            standing: AtomicU8::new(0),
            pressure: Default::default(),
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

    /// Requests of `class` waiting now.
    pub fn len_of(&self, class: Class) -> u32 {
        self.class_len[class as usize].load(Ordering::Relaxed)
    }

    /// Requests that a new request of `class` would wait behind: those of its class
    /// and of the classes above it. Read without the lock, one class at a time, so
    /// it may be off by the requests joining or leaving meanwhile.
    pub fn ahead_of(&self, class: Class) -> u32 {
        Class::ALL[class as usize..]
            .iter()
            .map(|c| self.len_of(*c))
            .fold(0, u32::saturating_add)
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

    /// Whether the queue stands for some class (the level's signal).
    pub fn is_standing(&self) -> bool {
        self.standing.load(Ordering::Relaxed) != 0
    }

    /// Whether the queue stands for `class`: its allowed wait is the target, not the
    /// timeout.
    pub fn is_standing_for(&self, class: Class) -> bool {
        self.standing.load(Ordering::Relaxed) & (1 << class as u8) != 0
    }

    /// Notes a request of `class` turned away for want of capacity at `now`: a
    /// class's standing queue drains only after an interval without any. A no-op
    /// unless that class stands. Kept to [`PRESSURE_RESOLUTION`], so that a flood of
    /// sheds on several threads writes the shared word about once per resolution, not
    /// once per shed.
    pub fn note_pressure(&self, class: Class, now: Instant) {
        if !self.is_standing_for(class) {
            return;
        }
        let pressure = &self.pressure[class as usize];
        let ns = now.saturating_duration_since(self.epoch).as_nanos();
        let ns = u64::try_from(ns).unwrap_or(u64::MAX).max(1);
        let resolution = PRESSURE_RESOLUTION.as_nanos() as u64;
        if ns >= pressure.load(Ordering::Relaxed).saturating_add(resolution) {
            pressure.fetch_max(ns, Ordering::Relaxed);
        }
    }

    fn last_pressure(&self, class: Class) -> Option<Instant> {
        match self.pressure[class as usize].load(Ordering::Relaxed) {
            0 => None,
            ns => self.epoch.checked_add(Duration::from_nanos(ns)),
        }
    }

    /// Ends the standing state of each class whose queue has drained (see
    /// [`Codel::settle`]). Takes the lock only when the lock-free reads say one may
    /// have: not on every shed of a flood.
    pub fn settle(&self, now: Instant, params: Params) -> Changes {
        let drained = |c: &Class| {
            self.is_standing_for(*c)
                && self.len_of(*c) == 0
                && self
                    .last_pressure(*c)
                    .is_none_or(|t| now.saturating_duration_since(t) >= params.interval)
        };
        if !self.is_standing() || !Class::ALL.iter().any(drained) {
            return Changes::default();
        }
        let mut q = self.lock();
        let mut changes = Changes::default();
        for c in Class::ALL {
            let empty = q.inner.counts[c as usize] == 0;
            let change =
                q.inner.codel[c as usize].settle(empty, self.last_pressure(c), now, params);
            changes = changes.and(Changes::of(c, change));
        }
        q.sync_standing();
        changes
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

    /// Joins the queue at `now`: behind every waiter of its class and the classes
    /// above, ahead of the classes below; with `fair` at its client's place within its
    /// class (see [`FairJoin`]). When it is full, a `critical` request displaces the
    /// newest waiter of the lowest class below critical (the tail), and with `fair` a
    /// lighter client's request the tail if its client is heavier and its class not
    /// higher; the displaced waiter is returned to be told.
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
        if q.inner.counts[class as usize] == 0 {
            q.inner.codel[class as usize].on_burst();
        }
        let held = fair.as_ref().map(|f| f.shares.held(&f.client));
        let heavier = |w: &Waiter<U, P>| match (&fair, w.client, held) {
            (Some(f), Some(c), Some(mine)) => f.shares.held(&c) > mine,
            _ => false,
        };
        // Its place: behind its class and the classes above (the counts say where that
        // ends, with no scan), and with fairness ahead of its own class's waiters whose
        // client holds more than its own.
        let end = q.inner.counts[class as usize..]
            .iter()
            .map(|n| *n as usize)
            .sum::<usize>()
            .min(q.inner.waiters.len());
        let mut at = end;
        if fair.is_some() {
            let stop = at.saturating_sub(FAIR_SCAN);
            while at > stop
                && q.inner.waiters[at - 1].class == class
                && heavier(&q.inner.waiters[at - 1])
            {
                at -= 1;
            }
        }
        let full = q.inner.waiters.len() >= depth as usize;
        let displace = if !full {
            None
        } else if class == Class::Critical {
            // In class order, the newest waiter of the lowest class is the tail.
            let last = q.inner.waiters.len().checked_sub(1);
            let lower = last.filter(|&i| q.inner.waiters[i].class < Class::Critical);
            Some(lower.ok_or(Refused::Full)?)
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
        // Ahead of older waiters of its own class; passing lower classes is no jump.
        let jumped = at < end;
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
        q.inner.counts[class as usize] += 1;
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
    ) -> (bool, Changes) {
        let mut q = self.lock();
        let Some(i) = q.inner.waiters.iter().position(|w| w.id == id) else {
            return (false, Changes::default());
        };
        let Some(w) = q.remove_at(i) else {
            return (false, Changes::default());
        };
        (true, q.record_wait(w.class, wait, now, params))
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
        let w = self.inner.waiters.remove(i)?;
        let n = &mut self.inner.counts[w.class as usize];
        *n = n.saturating_sub(1);
        self.sync_len();
        Some(w)
    }

    /// Whether the queue stands for `class` (under the lock: exact).
    pub fn is_standing_for(&self, class: Class) -> bool {
        self.inner.codel[class as usize].is_standing()
    }

    /// Feeds the wait of a request of `class` that left the queue to its class's
    /// standing state.
    pub fn record_wait(
        &mut self,
        class: Class,
        wait: Duration,
        now: Instant,
        params: Params,
    ) -> Changes {
        let change = self.inner.codel[class as usize].on_wait(wait, now, params);
        self.sync_standing();
        Changes::of(class, change)
    }

    fn sync_len(&mut self) {
        let n = self.inner.waiters.len() as u32;
        for (mirror, n) in self.queue.class_len.iter().zip(self.inner.counts) {
            mirror.store(n, Ordering::Relaxed);
        }
        self.queue.len.store(n, Ordering::SeqCst);
        self.queue.peak.fetch_max(n, Ordering::Relaxed);
    }

    fn sync_standing(&mut self) {
        let standing = Class::ALL
            .iter()
            .filter(|c| self.inner.codel[**c as usize].is_standing())
            .fold(0u8, |set, c| set | 1 << *c as u8);
        self.queue.standing.store(standing, Ordering::Relaxed);
    }
}
