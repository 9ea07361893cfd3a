//! Choosing a backend and taking one of its slots.
//!
//! Choice and acquisition go together: a backend is only "picked" once a slot on it
//! was taken with a compare-and-swap, so two requests never count on the same free
//! slot. The randomness of power-of-two-choices comes in as an argument, so tests can
//! seed it.

use crate::config::Balance;
use crate::hash::mix;
use crate::state::{Backend, Upstream};

/// What an attempt to take a slot found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A slot on this backend was taken.
    Slot(usize),
    /// Every backend the request may use is full; `target` is the one backend it is
    /// bound to (affinity), `None` when any backend will do.
    Full { target: Option<usize> },
    /// No backend the request may use is healthy.
    NoBackend,
}

/// Rendezvous (highest random weight) hashing: the healthy backend with the highest
/// score for this key. When a backend fails only its own keys move, each to the
/// backend with the next-highest score, so the moved share is 1/N.
pub fn rendezvous(
    backends: &[std::sync::Arc<Backend>],
    key: u64,
    exclude: &[usize],
) -> Option<usize> {
    backends
        .iter()
        .enumerate()
        .filter(|(i, b)| b.is_healthy() && !exclude.contains(i))
        .max_by_key(|(_, b)| mix(key ^ b.hash_seed))
        .map(|(i, _)| i)
}

/// Load of a backend as a share of its limit, comparable across different limits
/// (in thousandths, to stay in integers).
fn load(b: &Backend) -> u64 {
    let limit = u64::from(b.limit().max(1));
    u64::from(b.inflight()) * 1000 / limit
}

/// Takes a slot for a request of `up`. `key` is the affinity hash (consistent hashing
/// only), `exclude` the backends already tried, `random` a fresh random number.
///
/// Zones: when the upstream prefers its local zone (this instance's `server.zone` is
/// healthy enough), a slot there is taken first; only when every local backend is full
/// or down does the request spill to the other zones, so no request waits while a slot
/// it may use is free anywhere. Affinity ignores zones: the key's backend wins.
pub fn take_slot(up: &Upstream, key: Option<u64>, exclude: &[usize], random: u64) -> Take {
    let backends = &up.backends;
    if let (Balance::ConsistentHash, Some(key)) = (up.balance, key) {
        return match rendezvous(backends, key, exclude) {
            Some(i) if backends[i].try_acquire() => Take::Slot(i),
            Some(i) => Take::Full { target: Some(i) },
            None => Take::NoBackend,
        };
    }
    if up.prefers_local() {
        let local = pick_among(up, &up.local, exclude, random);
        if matches!(local, Take::Slot(_)) {
            return local;
        }
        let remote = pick_among(up, &up.remote, exclude, random);
        return match (local, remote) {
            (_, Take::Slot(i)) => {
                up.metrics.spill.inc();
                Take::Slot(i)
            }
            (Take::NoBackend, Take::NoBackend) => Take::NoBackend,
            _ => Take::Full { target: None },
        };
    }
    pick_among(up, &up.all, exclude, random)
}

/// A slot among `candidates` by the upstream's balance (consistent hashing without a
/// key falls back to least in-flight).
fn pick_among(up: &Upstream, candidates: &[usize], exclude: &[usize], random: u64) -> Take {
    match up.balance {
        Balance::RoundRobin => {
            let start = up.cursor.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            scan(&up.backends, candidates, exclude, start, |_| 0)
        }
        _ => power_of_two(&up.backends, candidates, exclude, random),
    }
}

/// A slot for a retry after a failed attempt: a backend not tried yet, in a zone not
/// tried yet if there is one with room.
pub fn take_retry_slot(up: &Upstream, key: Option<u64>, tried: &[usize], random: u64) -> Take {
    if let (Balance::ConsistentHash, Some(_)) = (up.balance, key) {
        // The next backend in the key's ranking: where the key moves when its own fails.
        return take_slot(up, key, tried, random);
    }
    let fresh_zone: Vec<usize> = up
        .all
        .iter()
        .copied()
        .filter(|&i| {
            !tried.contains(&i)
                && !tried
                    .iter()
                    .any(|&t| up.backends[t].zone == up.backends[i].zone)
        })
        .collect();
    match pick_among(up, &fresh_zone, tried, random) {
        Take::Slot(i) => Take::Slot(i),
        _ => pick_among(up, &up.all, tried, random),
    }
}

/// Shadow mode, where limits are not enforced: a slot past the limits for a request
/// that found every backend it may use full. It goes to `target` (affinity), or to
/// the less loaded (in-flight over limit) of two random backends that may take
/// traffic, in any zone: a full local zone spills, as it would for a freed slot.
/// `None` when no backend outside `exclude` may take traffic.
pub fn take_slot_over_limit(
    up: &Upstream,
    target: Option<usize>,
    exclude: &[usize],
    random: u64,
) -> Option<usize> {
    let backends = &up.backends;
    let pick = match target {
        Some(i) => Some(i),
        None => {
            let open = |i: &usize| backends[*i].is_healthy() && !exclude.contains(i);
            let n = up.all.iter().filter(|i| open(i)).count() as u64;
            if n == 0 {
                return None;
            }
            let nth = |k: u64| up.all.iter().copied().filter(|i| open(i)).nth(k as usize);
            let first = random % n;
            let a = nth(first);
            let b = if n > 1 {
                nth((first + 1 + (random >> 32) % (n - 1)) % n)
            } else {
                a
            };
            match (a, b) {
                (Some(a), Some(b)) if load(&backends[b]) < load(&backends[a]) => Some(b),
                (a, _) => a,
            }
        }
    };
    let i = pick?;
    backends[i].acquire_over_limit();
    Some(i)
}

fn usable(backends: &[std::sync::Arc<Backend>], exclude: &[usize], i: usize) -> bool {
    !exclude.contains(&i) && backends[i].has_free_slot()
}

/// Power of two choices: two random candidates, the less loaded first; if neither has
/// room (or both lose the race for it), the least loaded candidate that has room.
fn power_of_two(
    backends: &[std::sync::Arc<Backend>],
    candidates: &[usize],
    exclude: &[usize],
    random: u64,
) -> Take {
    let n = candidates.len();
    if n >= 2 {
        let a = (random % n as u64) as usize;
        let b = (a + 1 + ((random >> 32) % (n as u64 - 1)) as usize) % n;
        let (a, b) = (candidates[a], candidates[b]);
        let (first, second) = if load(&backends[a]) <= load(&backends[b]) {
            (a, b)
        } else {
            (b, a)
        };
        for i in [first, second] {
            if usable(backends, exclude, i) && backends[i].try_acquire() {
                return Take::Slot(i);
            }
        }
    }
    scan(backends, candidates, exclude, random as usize, load)
}

/// Tries every usable candidate from `start` on, lowest `score` first; a few passes
/// because a compare-and-swap can lose a race for the last slot.
fn scan(
    backends: &[std::sync::Arc<Backend>],
    candidates: &[usize],
    exclude: &[usize],
    start: usize,
    score: impl Fn(&Backend) -> u64,
) -> Take {
    let n = candidates.len();
    if n == 0 {
        return Take::NoBackend;
    }
    for _ in 0..3 {
        let best = (0..n)
            .map(|k| candidates[(start + k) % n])
            .filter(|&i| usable(backends, exclude, i))
            .min_by_key(|&i| score(&backends[i]));
        match best {
            Some(i) if backends[i].try_acquire() => return Take::Slot(i),
            Some(_) => continue,
            None => break,
        }
    }
    let any_healthy = candidates
        .iter()
        .any(|&i| backends[i].is_healthy() && !exclude.contains(&i));
    if any_healthy {
        Take::Full { target: None }
    } else {
        Take::NoBackend
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;
    use crate::hash::hash_bytes;
    use crate::metrics::Metrics;
    use std::sync::Arc;

    fn backends(n: usize, limit: u32) -> Vec<Arc<Backend>> {
        let m = Metrics::new();
        (0..n)
            .map(|i| {
                let cfg = config::Backend {
                    address: format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    zone: "a".into(),
                    max_inflight: limit,
                    from: None,
                };
                Arc::new(Backend::new(
                    &cfg,
                    config::Check::None,
                    m.backend("u", &i.to_string()),
                ))
            })
            .collect()
    }

    fn all(bs: &[Arc<Backend>]) -> Vec<usize> {
        (0..bs.len()).collect()
    }

    #[test]
    fn p2c_fills_every_slot_and_no_more() {
        let bs = backends(4, 3);
        let mut taken = 0;
        for r in 0..100u64 {
            match power_of_two(&bs, &all(&bs), &[], r.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
                Take::Slot(_) => taken += 1,
                Take::Full { target: None } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(taken, 12);
        assert!(bs.iter().all(|b| b.inflight() == 3));
    }

    #[test]
    fn p2c_prefers_the_less_loaded() {
        let bs = backends(2, 10);
        for _ in 0..5 {
            assert!(bs[0].try_acquire());
        }
        for r in 0..4 {
            assert_eq!(power_of_two(&bs, &all(&bs), &[], r), Take::Slot(1));
        }
    }

    #[test]
    fn excluded_and_unhealthy_backends_are_skipped() {
        let bs = backends(3, 1);
        bs[1].set_healthy(false);
        let c = all(&bs);
        assert_eq!(scan(&bs, &c, &[0], 0, load), Take::Slot(2));
        assert_eq!(scan(&bs, &c, &[0], 0, load), Take::Full { target: None });
        bs[2].set_healthy(false);
        assert_eq!(scan(&bs, &c, &[0], 0, load), Take::NoBackend);
    }

    #[test]
    fn over_the_limit_goes_to_a_healthy_backend_and_counts() {
        let m = Metrics::new();
        let text = "[server]\nlisten = [\"127.0.0.1:0\"]\n[[upstream]]\nname = \"u\"\n\
                    routes = [\"/\"]\n[upstream.limits]\nmax_inflight = 1\n\
                    [[upstream.backend]]\naddress = \"127.0.0.1:1001\"\n\
                    [[upstream.backend]]\naddress = \"127.0.0.1:1002\"\n";
        let cfg = config::parse(text).unwrap();
        let up = crate::state::Upstream::new(&cfg.upstreams[0], &cfg.server, &m);
        for r in 0..6u64 {
            let i = take_slot_over_limit(&up, None, &[], r.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            assert!(i.is_some());
        }
        // Spread by load: neither backend took them all.
        assert_eq!(up.inflight(), 6);
        assert!(up.backends.iter().all(|b| b.inflight() >= 2), "spread");
        assert_eq!(take_slot_over_limit(&up, Some(1), &[], 0), Some(1));
        assert_eq!(take_slot_over_limit(&up, None, &[0], 7), Some(1));
        up.backends[1].set_healthy(false);
        assert_eq!(take_slot_over_limit(&up, None, &[0], 7), None);
        for b in &up.backends {
            while b.inflight() > 0 {
                b.release_slot();
            }
        }
    }

    #[test]
    fn rendezvous_moves_only_the_failed_backends_keys() {
        let bs = backends(5, 1);
        let before: Vec<usize> = (0..1000u64)
            .map(|k| rendezvous(&bs, hash_bytes(&k.to_le_bytes()), &[]).unwrap())
            .collect();
        bs[2].set_healthy(false);
        let mut moved = 0;
        for (k, was) in before.iter().enumerate() {
            let now = rendezvous(&bs, hash_bytes(&(k as u64).to_le_bytes()), &[]).unwrap();
            if *was == 2 {
                assert_ne!(now, 2);
                moved += 1;
            } else {
                assert_eq!(now, *was, "a key of a healthy backend moved");
            }
        }
        assert!(
            (120..=280).contains(&moved),
            "moved {moved} of 1000, expected ~200"
        );
    }
}
