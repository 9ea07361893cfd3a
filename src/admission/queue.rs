//! The bounded FIFO where requests wait for a backend slot.
//!
//! A waiter is handed its slot directly by the request that frees it (see
//! [`crate::state::Upstream::dispatch`]): a freed slot goes to the oldest waiter that may use
//! it instead of being raced for, so the queue is fair and never waits while a slot it
//! could use is free. The lock is held only to push, remove or hand over, never across
//! an `.await`.
//!
//! The queue is generic over what it queues for (`U`, the upstream) and what it hands
//! over (`P`, a permit), so it depends on neither: `state` holds one, `admission`
//! drives it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::oneshot;

use std::sync::Arc;

use crate::config::Class;

/// What a waiter receives.
pub enum Grant<P> {
    /// A slot, already counted on its backend.
    Permit(P),
    /// A `critical` request took this waiter's place in a full queue.
    Displaced,
}

pub(crate) struct Waiter<U, P> {
    pub id: u64,
    pub class: Class,
    /// The upstream version the request was admitted under: its backend list is the
    /// one `target` indexes, and the slot is taken there. Versions share the queue.
    pub upstream: Arc<U>,
    /// The one backend this waiter can use (affinity), or any backend.
    pub target: Option<usize>,
    pub tx: oneshot::Sender<Grant<P>>,
}

/// Why a request could not join the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

pub struct WaitQueue<U, P> {
    waiters: Mutex<VecDeque<Waiter<U, P>>>,
    /// Mirror of `waiters.len()`, written under the lock, read without it.
    len: AtomicU32,
    /// Highest length since the ticker last read it.
    peak: AtomicU32,
    next_id: AtomicU64,
}

impl<U, P> Default for WaitQueue<U, P> {
    fn default() -> Self {
        WaitQueue {
            waiters: Mutex::new(VecDeque::new()),
            len: AtomicU32::new(0),
            peak: AtomicU32::new(0),
            next_id: AtomicU64::new(0),
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

    pub(crate) fn lock(&self) -> QueueGuard<'_, U, P> {
        QueueGuard {
            queue: self,
            waiters: self.waiters.lock(),
        }
    }

    /// Joins the queue at its tail. When it is full, a `critical` request displaces the
    /// newest waiter of the lowest class below critical, which is returned to be told.
    pub(crate) fn push(
        &self,
        upstream: &Arc<U>,
        class: Class,
        target: Option<usize>,
        depth: u32,
    ) -> Result<Joined<U, P>, Full> {
        let mut q = self.lock();
        let mut displaced = None;
        if q.waiters.len() >= depth as usize {
            if class != Class::Critical {
                return Err(Full);
            }
            let lowest = q
                .waiters
                .iter()
                .enumerate()
                .filter(|(_, w)| w.class < Class::Critical)
                .min_by_key(|(i, w)| (w.class, std::cmp::Reverse(*i)))
                .map(|(i, _)| i);
            match lowest {
                Some(i) => displaced = q.remove_at(i),
                None => return Err(Full),
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        q.waiters.push_back(Waiter {
            id,
            class,
            upstream: upstream.clone(),
            target,
            tx,
        });
        q.sync_len();
        Ok((Ticket { id, rx }, displaced))
    }

    /// Takes a waiter out of the queue; false when it is no longer there (it was
    /// granted a slot or displaced, and the grant is in its channel).
    pub(crate) fn remove(&self, id: u64) -> bool {
        let mut q = self.lock();
        match q.waiters.iter().position(|w| w.id == id) {
            Some(i) => {
                q.remove_at(i);
                true
            }
            None => false,
        }
    }
}

pub(crate) struct QueueGuard<'a, U, P> {
    queue: &'a WaitQueue<U, P>,
    pub waiters: MutexGuard<'a, VecDeque<Waiter<U, P>>>,
}

impl<U, P> QueueGuard<'_, U, P> {
    pub fn remove_at(&mut self, i: usize) -> Option<Waiter<U, P>> {
        let w = self.waiters.remove(i);
        self.sync_len();
        w
    }

    fn sync_len(&mut self) {
        let n = self.waiters.len() as u32;
        self.queue.len.store(n, Ordering::SeqCst);
        self.queue.peak.fetch_max(n, Ordering::Relaxed);
    }
}
