//! The time for deadlines, read from the clock less often than once per use.
//!
//! A proxied request checks a dozen deadlines (the wait for its head, the backend's
//! head and body, the pool's idle limit, the tick of its connection), and each check
//! read the clock: about 14 reads a request, some 6 % of levee's user time on a VM
//! whose clock costs 30 ns a read. A deadline does not need the exact time, only one
//! that is never later than the clock's and not much earlier, as nginx's cached time
//! (updated once per turn of its event loop) shows.
//!
//! So a runtime thread that is awake serves [`recent`] from one reading for up to
//! [`REUSE`] reads, then reads the clock again. Its runtime's park hook
//! ([`parking`]) drops the reading before the thread sleeps, and its unpark hook
//! ([`woke`]) turns the reuse back on, so no reading outlives a sleep: a reading is
//! at most [`REUSE`] reads old, and those reads are the work of the same busy stretch.
//! On any other thread (a runtime without the hooks, a test's, the blocking pool)
//! [`recent`] reads the clock each time.
//!
//! Latencies (the exchange's admission, its end, the access log's duration) read the
//! clock itself: they are measurements, not deadlines.

use std::cell::Cell;
use std::time::Instant;

/// Reads served from one clock reading, the first included.
pub const REUSE: u8 = 8;

#[derive(Clone, Copy)]
enum Recent {
    /// Not a runtime thread with the hooks, or one about to sleep: read the clock.
    Off,
    /// Awake, no reading yet since it woke.
    Stale,
    /// Awake: this reading, served this many times.
    At(Instant, u8),
}

thread_local! {
    static RECENT: Cell<Recent> = const { Cell::new(Recent::Off) };
}

/// The time to check a deadline against or start one from: never later than
/// [`Instant::now`], and on an awake runtime thread at most [`REUSE`] reads older.
pub fn recent() -> Instant {
    RECENT.with(|r| match r.get() {
        Recent::Off => Instant::now(),
        Recent::At(t, n) if n < REUSE => {
            r.set(Recent::At(t, n + 1));
            t
        }
        Recent::Stale | Recent::At(..) => {
            let t = Instant::now();
            r.set(Recent::At(t, 1));
            t
        }
    })
}

/// For `on_thread_unpark`: the thread woke; readings may be reused until it parks.
pub fn woke() {
    RECENT.with(|r| r.set(Recent::Stale));
}

/// For `on_thread_park`: the thread is about to sleep; its reading is dropped, and
/// until it wakes the clock is read each time.
pub fn parking() {
    RECENT.with(|r| r.set(Recent::Off));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs `f` on a new thread: the reading is per thread, and a test's own thread
    /// may have run others first.
    fn on_a_new_thread(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(f).join().unwrap();
    }

    #[test]
    fn a_thread_without_the_hooks_reads_the_clock_each_time() {
        on_a_new_thread(|| {
            let a = recent();
            std::thread::sleep(Duration::from_millis(2));
            assert!(recent() >= a + Duration::from_millis(2));
        });
    }

    #[test]
    fn an_awake_thread_reuses_a_reading_at_most_reuse_times() {
        on_a_new_thread(|| {
            woke();
            let first = recent();
            std::thread::sleep(Duration::from_millis(2));
            for _ in 1..REUSE {
                assert_eq!(recent(), first);
            }
            let next = recent();
            assert!(next >= first + Duration::from_millis(2));
            assert!(next <= Instant::now());
        });
    }

    #[test]
    fn no_reading_outlives_a_park() {
        on_a_new_thread(|| {
            woke();
            let first = recent();
            parking();
            std::thread::sleep(Duration::from_millis(2));
            assert!(recent() >= first + Duration::from_millis(2));
            woke();
            assert!(recent() >= first + Duration::from_millis(2));
        });
    }

    #[test]
    fn runtimes_levee_builds_turn_it_on_and_off() {
        let rt = crate::workers::runtime_builder().build().unwrap();
        let (on_runtime, after_sleep) = rt.block_on(async {
            // The first poll comes before the runtime ever parked; a sleep parks it.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let a = recent();
            let on_runtime = recent() == a;
            // Sleeping parks the thread: the next reading is new.
            tokio::time::sleep(Duration::from_millis(2)).await;
            (on_runtime, recent() >= a + Duration::from_millis(2))
        });
        assert!(on_runtime, "an awake runtime thread reuses its reading");
        assert!(after_sleep, "a reading never outlives a park");
    }
}
