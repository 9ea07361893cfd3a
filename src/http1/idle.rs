//! Idle keep-alive connections: the set of HTTP/1.1 connections that have waited
//! [`super::conn::TICK`] for their next request and hold no buffer and no timer.
//!
//! An idle connection waits on its socket only. Rather than each one also holding a
//! timer for its idle deadline and a wait on the shutdown signal (some 250 bytes
//! between them, for as long as it idles), it leaves its waker and deadline here:
//! - one sweeper thread wakes, every [`SWEEP`], the connections whose deadline has
//!   passed (so `client_idle` holds to within [`SWEEP`]);
//! - [`wake_all`] wakes every one after the shutdown signal is sent.
//!
//! A woken connection reads its deadline and the signal and closes, or waits on. One
//! set for the process: a wake-up that was not meant for a connection (another
//! instance of levee in the same process, in tests) finds its signal unchanged and
//! its deadline ahead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::task::Waker;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use slab::Slab;

/// How often the sweeper looks for idle connections past their deadline.
pub const SWEEP: Duration = Duration::from_millis(100);

struct Idle {
    waker: Waker,
    until: Instant,
}

static IDLE: Mutex<Slab<Idle>> = parking_lot::const_mutex(Slab::new());
static START: Once = Once::new();
static SWEEPING: AtomicBool = AtomicBool::new(false);

/// A connection's place in the set, left when dropped.
pub struct Entry(usize);

impl Entry {
    /// Enters the set with the waker of the connection's task and its idle deadline.
    /// `None` when there is no sweeper (its thread could not start): the connection
    /// keeps a timer of its own instead.
    pub fn new(waker: &Waker, until: Instant) -> Option<Entry> {
        START.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("levee-idle".into())
                .spawn(sweep);
            match spawned {
                Ok(_) => SWEEPING.store(true, Ordering::Release),
                Err(e) => tracing::warn!(
                    error = %e,
                    "idle connections keep a timer each: the idle sweeper did not start"
                ),
            }
        });
        if !SWEEPING.load(Ordering::Acquire) {
            return None;
        }
        let idle = Idle {
            waker: waker.clone(),
            until,
        };
        Some(Entry(IDLE.lock().insert(idle)))
    }

    /// Keeps the waker current (a task polled with another waker).
    pub fn update(&self, waker: &Waker) {
        if let Some(e) = IDLE.lock().get_mut(self.0) {
            if !e.waker.will_wake(waker) {
                e.waker.clone_from(waker);
            }
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        IDLE.lock().try_remove(self.0);
    }
}

/// Wakes every idle connection (after the shutdown signal was sent).
pub fn wake_all() {
    wake(|_| true);
}

fn wake(due: impl Fn(&Idle) -> bool) {
    // Woken outside the lock: a woken connection may leave the set at once.
    let wakers: Vec<Waker> = IDLE
        .lock()
        .iter()
        .filter(|(_, e)| due(e))
        .map(|(_, e)| e.waker.clone())
        .collect();
    for w in wakers {
        w.wake();
    }
}

fn sweep() {
    loop {
        std::thread::sleep(SWEEP);
        let now = Instant::now();
        wake(|e| e.until <= now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn count() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    // The set is the process's: these tests take turns on it (one's wake-all would
    // otherwise reach another's entries), and their checks allow for wake-ups from
    // elsewhere in the process (a drain), never for missing ones or for a left entry's.
    static TURN: Mutex<()> = parking_lot::const_mutex(());

    #[test]
    fn entries_are_woken_until_they_leave() {
        let _turn = TURN.lock();
        let far = Instant::now() + Duration::from_secs(3600);
        let (a, wa) = count();
        let (b, wb) = count();
        let ea = Entry::new(&wa, far).expect("the sweeper runs");
        let eb = Entry::new(&wb, far).expect("the sweeper runs");
        wake_all();
        assert!(a.0.load(Ordering::SeqCst) >= 1);
        assert!(b.0.load(Ordering::SeqCst) >= 1);
        drop(ea);
        let a_left = a.0.load(Ordering::SeqCst);
        // A new waker replaces the old one.
        let (c, wc) = count();
        eb.update(&wc);
        let b_replaced = b.0.load(Ordering::SeqCst);
        wake_all();
        assert_eq!(a.0.load(Ordering::SeqCst), a_left);
        assert_eq!(b.0.load(Ordering::SeqCst), b_replaced);
        assert!(c.0.load(Ordering::SeqCst) >= 1);
        drop(eb);
        let c_left = c.0.load(Ordering::SeqCst);
        wake_all();
        assert_eq!(c.0.load(Ordering::SeqCst), c_left);
    }

    #[test]
    fn the_sweeper_wakes_an_entry_once_its_deadline_passes() {
        let _turn = TURN.lock();
        let (due, wd) = count();
        let _d = Entry::new(&wd, Instant::now()).expect("the sweeper runs");
        let deadline = Instant::now() + Duration::from_secs(10);
        while due.0.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(due.0.load(Ordering::SeqCst) >= 1, "not woken within 10 s");
    }

    #[test]
    fn the_sweeper_leaves_an_entry_before_its_deadline_alone() {
        let _turn = TURN.lock();
        let (later, wl) = count();
        let _l = Entry::new(&wl, Instant::now() + Duration::from_secs(3600));
        let before = later.0.load(Ordering::SeqCst);
        let now = Instant::now();
        wake(|e| e.until <= now);
        assert_eq!(later.0.load(Ordering::SeqCst), before);
    }
}
