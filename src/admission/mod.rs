//! Admission: whether a request may go to a backend now, wait for one, or be shed.
//!
//! [`Upstream::admit`] reads the upstream's level once, takes a free backend slot if
//! there is one, else waits in the bounded queue when the level lets the request's
//! class wait, else sheds. What each level does to each class:
//!
//! | level    | low  | normal   | high     | critical |
//! |----------|------|----------|----------|----------|
//! | safe     | queue| queue    | queue    | queue    |
//! | caution  | 503  | queue    | queue    | queue    |
//! | danger   | 503  | no queue | queue    | queue    |
//! | critical | 503  | no queue | no queue | queue, may displace a lower class |
//!
//! "queue" means take a free slot, else wait; "no queue" means take a free slot, else
//! 503. Admission is work-conserving: only `low` at caution and above is shed while a
//! slot is free. A slot is held by a [`Permit`] and released when it drops, exactly once.
//!
//! Waiters are served in class order (`critical`, `high`, `normal`, `low`; oldest
//! first within a class): a freed slot goes to the first waiter in that order that
//! may use it ([`queue`]). How long a request may wait is its class's *allowed wait*:
//! `queue_timeout` while the queue absorbs a burst, `queue_target` once the waits of
//! its class stand ([`codel`], one state per class, so a `critical` request keeps the
//! longer wait while `normal` ones are the reason the queue stands). A request that
//! would not be served within it, at the rate the backends finish requests, counting
//! only the waiters ahead of it in class order, is shed at once; one whose wait passes
//! it is shed then, also when its class begins standing while it waits.
//!
//! With fairness (`[upstream.fairness]`, [`fairness`]) each request counts toward its
//! client key while it holds a slot or a queue place. A request shed for want of
//! capacity whose key holds more than the mean of the keys present is shed as
//! `fair_share`; one whose key holds less (a *light* key) may wait even where the
//! level keeps others out of the queue, waits ahead of heavier keys' waiters, and in
//! a full queue takes the place of the newest waiter when that one's key is heavier.
//! A key alone is under the ordinary rules: it may use every slot.
//!
//! In shadow mode (`limits.mode = "shadow"`) the same decisions are made and counted
//! (`levee_would_shed_total`), but a request that would wait or be shed goes to a
//! backend at once, past its limit if need be; see [`Upstream::admit_shadow`].

pub mod codel;
pub mod fairness;
pub mod level;
pub mod queue;

use std::mem::ManuallyDrop;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::balance::{take_slot, take_slot_over_limit, Take};
use crate::config::{Class, Mode};
pub use crate::state::Permit;
use crate::state::{Backend, Upstream};
use codel::Params;
use fairness::{Charge, Weight};
use level::Level;
use queue::{Changes, FairJoin, Grant, Refused, Ticket};

pub use crate::metrics::ShedReason;

/// A request that will not be sent to a backend: the 503 it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shed {
    pub reason: ShedReason,
    pub level: Level,
    pub class: Class,
    /// Seconds the client should wait before trying again.
    pub retry_after: u32,
}

/// The outcome of [`Upstream::try_admit`].
#[derive(Debug)]
pub enum Admit {
    Permit(Permit),
    Shed(Shed),
    /// No free slot, and the request may wait in the queue at this level.
    Wait {
        level: Level,
        target: Option<usize>,
    },
}

/// May a request of `class` wait in the queue at `level`?
pub fn may_wait(level: Level, class: Class) -> bool {
    match level {
        Level::Safe => true,
        Level::Caution => class >= Class::Normal,
        Level::Danger => class >= Class::High,
        Level::Critical => class == Class::Critical,
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("upstream", &self.upstream.name)
            .field("backend", &self.backend().label)
            .field("queued", &self.queued)
            .finish()
    }
}

impl Permit {
    fn new(upstream: Arc<Upstream>, backend: usize) -> Permit {
        Permit {
            upstream: ManuallyDrop::new(upstream),
            backend,
            queued: Duration::ZERO,
            would_shed: None,
            charge: None,
        }
    }

    /// Takes over `from`'s hold on its client key (a retry moved the request to this
    /// slot; `from` is about to be released).
    pub fn inherit(&mut self, from: &mut Permit) {
        if self.charge.is_none() {
            self.charge = from.charge.take();
        }
    }

    pub fn backend_index(&self) -> usize {
        self.backend
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.upstream.backends[self.backend]
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Gives the slot back without handing it on: for use under the queue lock only,
    /// where handing on would take the lock again.
    fn release_quietly(mut self) {
        drop(self.charge.take());
        self.upstream.backends[self.backend].release_slot();
        // SAFETY: `self` is forgotten right after, so the Arc is dropped exactly once.
        unsafe { ManuallyDrop::drop(&mut self.upstream) };
        std::mem::forget(self);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // SAFETY: taken once, here; `release_quietly` forgets `self` so never both.
        let upstream = unsafe { ManuallyDrop::take(&mut self.upstream) };
        upstream.backends[self.backend].release_slot();
        // The count fell before this read of the queue length (both SeqCst), so a
        // request that joins the queue concurrently either sees the free slot on its
        // re-check, or is seen here and handed a slot.
        if !upstream.queue.is_empty() {
            dispatch(&upstream);
        }
    }
}

/// Hands free slots to waiters in queue order (class order, oldest first within a
/// class). Called after a slot of `upstream` was released while the queue was not
/// empty. Each waiter takes its slot in the upstream version it was admitted under
/// (versions share backends, so the counts stay one). The wait of each waiter served
/// counts toward its class's standing state.
pub(crate) fn dispatch(upstream: &Upstream) {
    let now = clock();
    let params = upstream.codel_params();
    let mut change = Changes::default();
    let mut q = upstream.queue.lock();
    let mut i = 0;
    let mut any_full = false;
    while i < q.waiters().len() {
        let target = q.waiters()[i].target;
        if target.is_none() && any_full {
            i += 1;
            continue;
        }
        let up = q.waiters()[i].upstream.clone();
        let slot = match target {
            Some(b) => up.backends[b].try_acquire().then_some(b),
            None => match take_slot(&up, None, &[], i as u64) {
                Take::Slot(b) => Some(b),
                _ => None,
            },
        };
        let Some(b) = slot else {
            any_full |= target.is_none();
            i += 1;
            continue;
        };
        let Some(waiter) = q.remove_at(i) else { break };
        let wait = now.saturating_duration_since(waiter.since);
        if !waiter.jumped {
            change = change.and(q.record_wait(waiter.class, wait, now, params));
        }
        if q.is_standing_for(waiter.class) && wait > params.target {
            // A standing class gives no slot to a request that waited past the target
            // (its timer is due, or the class stands from this very wait): it is shed,
            // and the loop offers the slot to the next waiter.
            up.backends[b].release_slot();
            let _ = waiter.tx.send(Grant::Expired);
            continue;
        }
        if let Err(Grant::Permit(p)) = waiter.tx.send(Grant::Permit(Permit::new(up, b))) {
            // The waiter is gone (timed out or its client left): the slot goes back,
            // and the loop offers it to the next waiter.
            p.release_quietly();
        }
    }
    drop(q);
    upstream.standing_changed(change);
}

/// Now, for queue waits: tokio's clock, so that tests with paused time see the waits
/// they advance through (outside tests it is the system's monotonic clock).
fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Leaves the queue when dropped (timeout, client gone): a grant that arrived in the
/// meantime is dropped too, which hands its slot on.
struct Waiting<'a> {
    upstream: &'a Upstream,
    ticket: Option<Ticket<Permit>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(mut ticket) = self.ticket.take() {
            if !self.upstream.queue.remove(ticket.id) {
                // Granted (or displaced) while leaving; the grant is in the channel.
                // It is dropped here, after the queue lock was released.
                drop(ticket.rx.try_recv());
            }
        }
    }
}

impl Upstream {
    /// The decision that needs no waiting: a slot now, a shed now, or "may wait" (with
    /// the one backend the request is bound to, if any). Never blocks. Without a
    /// client key (see [`Self::admit`] for fairness).
    pub fn try_admit(self: &Arc<Self>, class: Class, key: Option<u64>, random: u64) -> Admit {
        self.decide(class, key, None, random)
    }

    /// [`Self::try_admit`] for a request holding `charge` on its client key.
    fn decide(
        self: &Arc<Self>,
        class: Class,
        key: Option<u64>,
        charge: Option<&Charge>,
        random: u64,
    ) -> Admit {
        let level = self.level();
        if class == Class::Low && level >= Level::Caution {
            return Admit::Shed(self.shed(ShedReason::LowPriority, level, class));
        }
        let target = match take_slot(self, key, &[], random) {
            Take::Slot(i) => return Admit::Permit(Permit::new(self.clone(), i)),
            Take::NoBackend => {
                return Admit::Shed(self.shed(ShedReason::NoHealthyBackend, level, class))
            }
            Take::Full { target } => target,
        };
        // A light client waits ahead of heavier ones even where the level keeps
        // others out of the queue: the heavier ones are turned away in its stead.
        let light = charge.is_some_and(|c| c.weigh() == Weight::Light);
        if !may_wait(level, class) && !light {
            let reason = if level == Level::Critical {
                ShedReason::QueueFull
            } else {
                ShedReason::LevelNoQueue
            };
            return Admit::Shed(self.shed_for(reason, level, class, charge));
        }
        Admit::Wait { level, target }
    }

    /// The hold a request with client key hash `client` takes on its key's count, when
    /// the upstream has fairness.
    fn charge(&self, client: Option<u64>) -> Option<Charge> {
        let fairness = self.fairness.as_ref()?;
        let shares = &fairness.shares;
        Some(shares.charge(shares.client(client.unwrap_or(0))))
    }

    /// Admits a request of `class` (with the affinity hash `key`, when the upstream has
    /// affinity, and the hash of its client key `client`, when it has fairness): a
    /// [`Permit`] at once, after waiting in the queue, or a [`Shed`]. `random` feeds
    /// power-of-two-choices.
    pub async fn admit(
        self: &Arc<Self>,
        class: Class,
        key: Option<u64>,
        client: Option<u64>,
        random: u64,
    ) -> Result<Permit, Shed> {
        let charge = self.charge(client);
        if self.limits.mode == Mode::Shadow {
            return self.admit_shadow(class, key, charge, random);
        }
        let (level, target) = match self.decide(class, key, charge.as_ref(), random) {
            Admit::Permit(mut p) => {
                p.charge = charge;
                return Ok(p);
            }
            Admit::Shed(s) => return Err(s),
            Admit::Wait { level, target } => (level, target),
        };
        self.wait_in_queue(class, level, target, charge, random)
            .await
    }

    /// The rest of [`Self::admit`] for a request that found no free slot and may
    /// wait at `level`: join the queue (or be shed at once), then wait for a grant.
    /// Its own function, so that a request that takes a free slot runs only the
    /// decision.
    async fn wait_in_queue(
        self: &Arc<Self>,
        class: Class,
        level: Level,
        target: Option<usize>,
        charge: Option<Charge>,
        random: u64,
    ) -> Result<Permit, Shed> {
        let now = clock();
        // A standing queue that has drained absorbs this request as a burst again.
        self.settle_queue(now);
        let standing = self.queue.is_standing_for(class);
        let allowed = self.allowed_wait(standing);
        // A request that would wait past its allowed wait at the rate the backends
        // finish requests gets its 503 now rather than after the wait: the answer is
        // the same, and the client and the queue are spared the delay. Only the
        // waiters ahead of it in class order count. (Only for requests waiting for any
        // backend: an affinity target's own rate is unknown.) With fairness its place
        // depends on the clients of the waiters, so the queue judges it where it would
        // stand.
        let rate = self.service_rate();
        let timed = target.is_none() && rate > 0.0;
        if timed && charge.is_none() {
            let expected = (f64::from(self.queue.ahead_of(class)) + 1.0) / rate;
            if expected > allowed.as_secs_f64() {
                return Err(self.shed(late(standing), level, class));
            }
        }
        let fair = charge.as_ref().map(|c| FairJoin {
            shares: c.shares(),
            client: *c.client(),
            max_ahead: timed.then_some((allowed.as_secs_f64() * rate) as usize),
        });
        let joined = self
            .queue
            .push(self, class, target, self.limits.queue_depth, now, fair);
        let (ticket, displaced) = match joined {
            Ok(joined) => joined,
            Err(Refused::Full) => {
                return Err(self.shed_for(ShedReason::QueueFull, level, class, charge.as_ref()))
            }
            Err(Refused::Late) => {
                return Err(self.shed_for(late(standing), level, class, charge.as_ref()))
            }
        };
        if let Some(w) = displaced {
            let _ = w.tx.send(if class == Class::Critical {
                Grant::Displaced
            } else {
                Grant::Outweighed
            });
        }
        let mut waiting = Waiting {
            upstream: self,
            ticket: Some(ticket),
        };
        // Re-check after joining: a slot freed between the first try and the push was
        // released by a request that saw an empty queue.
        let retry = match target {
            Some(i) => self.backends[i].try_acquire().then_some(i),
            None => match take_slot(self, None, &[], random.rotate_left(17)) {
                Take::Slot(i) => Some(i),
                _ => None,
            },
        };
        if let Some(i) = retry {
            drop(waiting); // leaves the queue; a grant that raced in is handed on
            let mut p = Permit::new(self.clone(), i);
            p.charge = charge;
            return Ok(p);
        }
        let grant = self.wait_for_grant(&mut waiting, class, now).await;
        match grant {
            Ok(Grant::Permit(mut p)) => {
                p.queued = clock().saturating_duration_since(now);
                self.window.record_wait(p.queued, class);
                self.metrics.queue_wait[class as usize].observe(p.queued.as_secs_f64());
                p.charge = charge;
                Ok(p)
            }
            Ok(Grant::Displaced) => Err(self.shed(ShedReason::Displaced, self.level(), class)),
            Ok(Grant::Outweighed) => Err(self.shed(ShedReason::FairShare, self.level(), class)),
            Ok(Grant::Expired) => Err(self.shed_for(
                ShedReason::QueueStanding,
                self.level(),
                class,
                charge.as_ref(),
            )),
            Err(reason) => Err(self.shed_for(reason, self.level(), class, charge.as_ref())),
        }
    }

    /// Waits in the queue (joined at `since`) for a grant until the allowed wait of
    /// `class` has passed; `Err` is the shed reason then. The allowed wait is read
    /// again whenever a class begins standing (so a request of that class that has
    /// waited longer than the target by then is shed at once), and when the deadline
    /// passes (a class that drained meanwhile allows the longer wait).
    async fn wait_for_grant(
        &self,
        waiting: &mut Waiting<'_>,
        class: Class,
        since: Instant,
    ) -> Result<Grant<Permit>, ShedReason> {
        loop {
            let began = self.queue.began_standing();
            tokio::pin!(began);
            // Registered before the state is read: a start in between still wakes us.
            began.as_mut().enable();
            let standing = self.queue.is_standing_for(class);
            let deadline = since + self.allowed_wait(standing);
            let Some(ticket) = waiting.ticket.as_mut() else {
                return Err(late(standing));
            };
            tokio::select! {
                biased;
                outcome = &mut ticket.rx => {
                    waiting.ticket = None; // the grant was taken; nothing to leave
                    // Sender dropped without a grant: only when the upstream itself is
                    // dropped.
                    return outcome.map_err(|_| late(standing));
                }
                () = &mut began => continue,
                () = tokio::time::sleep_until(deadline.into()) => {
                    if self.queue.is_standing_for(class) != standing {
                        continue; // the allowed wait changed while the timer ran
                    }
                }
            }
            let now = clock();
            let Some(mut ticket) = waiting.ticket.take() else {
                return Err(late(standing));
            };
            let wait = now.saturating_duration_since(since);
            let (left, change) = self.queue.expire(ticket.id, wait, now, self.codel_params());
            self.standing_changed(change);
            if left {
                return Err(late(standing));
            }
            // Granted (or displaced) just as the wait ran out: take what was sent.
            return ticket.rx.try_recv().map_err(|_| late(standing));
        }
    }

    /// The standing-queue parameters of this upstream version.
    pub(crate) fn codel_params(&self) -> Params {
        Params {
            target: self.limits.queue_target,
            interval: self.limits.queue_interval,
        }
    }

    /// The wait a request may take in the queue: the target while it stands, else
    /// the timeout.
    pub fn allowed_wait(&self, standing: bool) -> Duration {
        if standing {
            self.limits.queue_target
        } else {
            self.limits.queue_timeout
        }
    }

    /// Ends the standing state of each class that has drained by `now`. Called by
    /// requests about to wait, and by the level ticker so that it ends without
    /// traffic too.
    pub(crate) fn settle_queue(&self, now: Instant) {
        let change = self.queue.settle(now, self.codel_params());
        self.standing_changed(change);
    }

    /// Acts on changes of the classes' standing states: counts and logs them, and on a
    /// start wakes the waiters so that those of that class take the shorter wait.
    pub(crate) fn standing_changed(&self, changes: Changes) {
        if changes.is_none() {
            return;
        }
        for class in changes.classes(true) {
            self.metrics.queue_standing_started.inc();
            tracing::info!(
                upstream = %self.name,
                class = class.as_str(),
                queue = self.queue.len(),
                class_queue = self.queue.len_of(class),
                allowed_wait_ms = self.limits.queue_target.as_millis() as u64,
                "queue standing for this class: its waits stayed above queue_target_ms for queue_interval_ms"
            );
        }
        if changes.began != 0 {
            self.queue.wake_waiters();
        }
        for class in changes.classes(false) {
            tracing::info!(
                upstream = %self.name,
                class = class.as_str(),
                allowed_wait_ms = self.limits.queue_timeout.as_millis() as u64,
                "queue drained for this class: it absorbs bursts again"
            );
        }
    }

    /// A slot on another backend, for a retry after a failed connect: never waits.
    pub fn take_retry_slot(
        self: &Arc<Self>,
        key: Option<u64>,
        tried: &[usize],
        random: u64,
    ) -> Option<Permit> {
        match take_slot(self, key, tried, random) {
            Take::Slot(i) => Some(Permit::new(self.clone(), i)),
            // Shadow mode enforces no limit: a full upstream still takes the retry.
            Take::Full { target } if self.limits.mode == Mode::Shadow => {
                take_slot_over_limit(self, target, tried, random)
                    .map(|i| Permit::new(self.clone(), i))
            }
            _ => None,
        }
    }

    /// Shadow mode: the decision [`Self::admit`] would make, counted in
    /// `levee_would_shed_total` when it is a shed, and a slot at once whatever it is:
    /// a free one if there is one, else one past the limits (see
    /// [`take_slot_over_limit`]). Nobody waits, so the queue the decisions read is
    /// [`Self::waiting`]: the requests in flight beyond the limits stand for those that
    /// would be waiting. Its allowed wait is `queue_timeout` (waits are not measured,
    /// so the queue never stands). Only a request no backend may take is shed
    /// (`no_healthy_backend`): health is not a limit, and there is nowhere to send it.
    fn admit_shadow(
        self: &Arc<Self>,
        class: Class,
        key: Option<u64>,
        charge: Option<Charge>,
        random: u64,
    ) -> Result<Permit, Shed> {
        let level = self.level();
        let low =
            (class == Class::Low && level >= Level::Caution).then_some(ShedReason::LowPriority);
        let (slot, would) = match take_slot(self, key, &[], random) {
            Take::Slot(i) => (Some(i), low),
            Take::NoBackend => {
                return Err(self.shed(ShedReason::NoHealthyBackend, level, class));
            }
            Take::Full { target } => {
                let would =
                    low.or_else(|| self.wait_verdict(level, class, target, charge.as_ref()));
                (take_slot_over_limit(self, target, &[], random), would)
            }
        };
        let Some(i) = slot else {
            return Err(self.shed(ShedReason::NoHealthyBackend, level, class));
        };
        if let Some(reason) = would {
            self.metrics.would_shed(reason).inc();
            if matches!(reason, ShedReason::LevelNoQueue | ShedReason::QueueFull) {
                self.queue.note_turned_away(self.limits.queue_depth);
            }
        }
        let mut permit = Permit::new(self.clone(), i);
        permit.would_shed = would;
        permit.charge = charge;
        Ok(permit)
    }

    /// For a request that found no free slot: why it would be shed instead of
    /// waiting, or `None` if it would wait. The same rules as [`Self::admit`], read
    /// without the queue's lock from [`Self::waiting`] (shadow mode, where nobody
    /// waits). A `critical` request at a full queue would wait, displacing another; so
    /// would a light client's (fairness), ahead of the heavier clients' waiters.
    fn wait_verdict(
        &self,
        level: Level,
        class: Class,
        target: Option<usize>,
        charge: Option<&Charge>,
    ) -> Option<ShedReason> {
        let waiting = self.waiting();
        let standing = self.queue.is_standing_for(class);
        let rate = self.service_rate();
        let reason = if !may_wait(level, class) {
            Some(if level == Level::Critical {
                ShedReason::QueueFull
            } else {
                ShedReason::LevelNoQueue
            })
        } else if target.is_none()
            && rate > 0.0
            && (f64::from(waiting) + 1.0) / rate > self.allowed_wait(standing).as_secs_f64()
        {
            Some(late(standing))
        } else {
            (waiting >= self.limits.queue_depth && class != Class::Critical)
                .then_some(ShedReason::QueueFull)
        };
        match (reason, charge.map(Charge::weigh)) {
            (Some(_), Some(Weight::Light)) => None,
            (Some(_), Some(Weight::Heavy)) => Some(ShedReason::FairShare),
            (reason, _) => reason,
        }
    }

    /// Requests waiting for a slot: the queue's length. In shadow mode, where nobody
    /// waits, also the requests in flight beyond the limits of the backends that may
    /// take traffic: enforcing the limits, those would be waiting. The level's queue
    /// signal reads this.
    pub fn waiting(&self) -> u32 {
        let queued = self.queue.len();
        match self.limits.mode {
            Mode::Enforce => queued,
            Mode::Shadow => queued.saturating_add(self.inflight().saturating_sub(self.capacity())),
        }
    }

    /// The 503 a request gets, with its `Retry-After`, counted in the metrics.
    pub fn shed(&self, reason: ShedReason, level: Level, class: Class) -> Shed {
        self.shed_labelled(reason, reason, level, class)
    }

    /// [`Self::shed`] for a request holding `charge` on its client key: shed for want
    /// of capacity while its key holds more than the mean of the keys present, it is
    /// shed as `fair_share` (the level and the queue count it by `reason` still).
    fn shed_for(
        &self,
        reason: ShedReason,
        level: Level,
        class: Class,
        charge: Option<&Charge>,
    ) -> Shed {
        let heavy = charge.is_some_and(|c| c.weigh() == Weight::Heavy);
        let label = if heavy && reason.is_capacity() && reason != ShedReason::Displaced {
            ShedReason::FairShare
        } else {
            reason
        };
        self.shed_labelled(reason, label, level, class)
    }

    /// A shed counted and answered as `label`, and acted on as `reason` by the queue
    /// and the level.
    fn shed_labelled(
        &self,
        reason: ShedReason,
        label: ShedReason,
        level: Level,
        class: Class,
    ) -> Shed {
        self.metrics.shed(label, class).inc();
        if reason.is_capacity() && self.queue.is_standing_for(class) {
            self.queue.note_pressure(class, clock());
        }
        if matches!(reason, ShedReason::LevelNoQueue | ShedReason::QueueFull) {
            self.queue.note_turned_away(self.limits.queue_depth);
        }
        Shed {
            reason: label,
            level,
            class,
            retry_after: self.retry_after(level),
        }
    }

    /// Seconds until this upstream can likely take the request: the time its queue
    /// (plus this request) takes to drain at the rate requests have been finishing,
    /// plus the cooldown a raised level must wait out, stretched by up to half again at
    /// random so that shed clients do not all come back in the same second. Clamped to
    /// `[1, retry_after_max]`; the maximum when nothing has been finishing at all.
    pub fn retry_after(&self, level: Level) -> u32 {
        let max = self.retry_after_max.max(1);
        let drain = self.drain_per_sec();
        if drain <= 0.0 {
            return max;
        }
        let backlog = f64::from(self.queue.len()) + 1.0;
        let mut secs = backlog / drain;
        if level > Level::Safe {
            secs += self.levels.cooldown.as_secs_f64();
        }
        let jitter = 1.0 + 0.5 * (rand::random::<u32>() as f64 / u32::MAX as f64);
        (secs * jitter).ceil().clamp(1.0, f64::from(max)) as u32
    }
}

/// The reason a request gets when its allowed wait passes (or would): the queue's
/// target while it stands, else its timeout.
fn late(standing: bool) -> ShedReason {
    if standing {
        ShedReason::QueueStanding
    } else {
        ShedReason::QueueTimeout
    }
}

#[cfg(test)]
mod tests;
