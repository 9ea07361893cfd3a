//! The bounded FIFO where requests wait for a backend slot.
//!
//! A waiter is handed its slot directly by the request that frees it (see
//! [`crate::state::Upstream::dispatch`]): a freed slot goes to the oldest waiter that may use
//! it instead of being raced for, so the queue is fair and never waits while a slot it
//! could use is free. The lock is held only to push, remove or hand over, never across
//! an `.await`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::oneshot;

use std::sync::Arc;

use super::Permit;
use crate::config::Class;
use crate::state::Upstream;

/// What a waiter receives.
pub enum Grant {
    /// A slot, already counted on its backend.
    Permit(Permit),
    /// A `critical` request took this waiter's place in a full queue.
    Displaced,
}

pub(crate) struct Waiter {
    pub id: u64,
    pub class: Class,
    /// The upstream version the request was admitted under: its backend list is the
    /// one `target` indexes, and the slot is taken there. Versions share the queue.
    pub upstream: Arc<Upstream>,
    /// The one backend this waiter can use (affinity), or any backend.
    pub target: Option<usize>,
    pub tx: oneshot::Sender<Grant>,
}

/// Why a request could not join the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

#[derive(Default)]
pub struct WaitQueue {
    waiters: Mutex<VecDeque<Waiter>>,
    /// Mirror of `waiters.len()`, written under the lock, read without it.
    len: AtomicU32,
    /// Highest length since the ticker last read it.
    peak: AtomicU32,
    next_id: AtomicU64,
}

/// A place in the queue: the waiter's id and where its grant arrives.
pub(crate) struct Ticket {
    pub id: u64,
    pub rx: oneshot::Receiver<Grant>,
}

impl WaitQueue {
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

    pub(crate) fn lock(&self) -> QueueGuard<'_> {
        QueueGuard {
            queue: self,
            waiters: self.waiters.lock(),
        }
    }

    /// Joins the queue at its tail. When it is full, a `critical` request displaces the
    /// newest waiter of the lowest class below critical, which is returned to be told.
    pub(crate) fn push(
        &self,
        upstream: &Arc<Upstream>,
        class: Class,
        target: Option<usize>,
        depth: u32,
    ) -> Result<(Ticket, Option<Waiter>), Full> {
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

pub(crate) struct QueueGuard<'a> {
    queue: &'a WaitQueue,
    pub waiters: MutexGuard<'a, VecDeque<Waiter>>,
}

impl QueueGuard<'_> {
    pub fn remove_at(&mut self, i: usize) -> Option<Waiter> {
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
