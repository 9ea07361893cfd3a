//! Fairness between clients (`[upstream.fairness]`): how many of an upstream's slots
//! and queue places each client key holds, in memory that does not grow with the
//! number of keys.
//!
//! Each request of an upstream with fairness holds a [`Charge`] on its key from the
//! moment it asks for a slot until its slot is released (or it leaves the queue, or
//! is shed): the count goes up once when it is taken and down once when it drops.
//! Admission compares a key's count with the mean over the keys present
//! ([`Shares::weigh`]): a key above the mean is *heavy* and is shed first (reason
//! `fair_share`); a key below it is *light*, waits ahead of heavier keys' waiters,
//! and may take the place of the heaviest key's newest waiter in a full queue. A key
//! alone is neither: it may use every slot, and is shed only as any request would be.
//!
//! # Why a fixed table of hashed keys
//!
//! The counts live in a count-min sketch of [`ROWS`] x [`WIDTH`] counters (32 KiB per
//! upstream, allocated once): a key's count is the smallest of its [`ROWS`] counters,
//! one per row, each picked by the key's 64-bit hash mixed with that row's random
//! seed. A flood of distinct keys therefore costs no memory at all: it only raises
//! counters, and every count falls back as the requests end. The error is one-sided:
//! a key is never counted below what it holds, and above only when every one of its
//! counters is shared with other keys present at the same time (with `n` keys present,
//! about `(n / WIDTH)^ROWS`: 0.06 % at 100 keys). The number of keys present is the
//! number of non-zero counters of the first row, which can only undercount (two keys
//! on one counter count once).
//!
//! `pingora-limits`' `Estimator` is the same structure, but it rehashes the key for
//! each row on every read and does not expose where a key's counters are. Admission
//! reads the counts of many waiters under the queue's lock, so here a key's counters
//! are found once, when the request arrives ([`Client`], two indexes), and each read is
//! then two atomic loads; and the table also keeps the totals a fair share needs.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::config::{self, ClientKey};
use crate::hash::mix;

/// Rows of the count-min sketch: a key is over-counted only if every row collides.
pub const ROWS: usize = 2;
/// Counters per row (a power of two).
pub const WIDTH: usize = 4096;

/// Where one key's counters are: one index per row. Found once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    cells: [u32; ROWS],
}

/// The slots and queue places each client key holds in one upstream, in fixed memory.
pub struct Shares {
    counters: Box<[AtomicU32]>,
    seeds: [u64; ROWS],
    /// Charges held now (every key).
    total: AtomicU32,
    /// Non-zero counters of row 0: the keys present (two keys on one counter count once).
    present: AtomicU32,
}

/// How a key's count compares with the mean over the keys present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weight {
    /// Below the mean: served first, never shed while a heavier key waits.
    Light,
    /// At the mean, or the only key present: the ordinary rules.
    Even,
    /// Above the mean: shed first (`fair_share`).
    Heavy,
}

impl Default for Shares {
    fn default() -> Self {
        Shares::with_seeds([rand::random(), rand::random()])
    }
}

impl Shares {
    /// A table whose rows hash with `seeds` (random by default, so that nobody can
    /// pick keys that share a light key's counters).
    pub fn with_seeds(seeds: [u64; ROWS]) -> Shares {
        Shares {
            counters: (0..ROWS * WIDTH).map(|_| AtomicU32::new(0)).collect(),
            seeds,
            total: AtomicU32::new(0),
            present: AtomicU32::new(0),
        }
    }

    /// The memory the table holds, whatever the keys: it never grows.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Shares>() + self.counters.len() * std::mem::size_of::<AtomicU32>()
    }

    /// Where the key whose hash is `key` is counted.
    pub fn client(&self, key: u64) -> Client {
        let mut cells = [0u32; ROWS];
        for (row, cell) in cells.iter_mut().enumerate() {
            let column = (mix(key ^ self.seeds[row]) as usize) & (WIDTH - 1);
            *cell = (row * WIDTH + column) as u32;
        }
        Client { cells }
    }

    fn counter(&self, cell: u32) -> &AtomicU32 {
        // Cells come from `client`, always inside the table; an index from elsewhere
        // reads the first counter rather than panic.
        self.counters
            .get(cell as usize)
            .unwrap_or(&self.counters[0])
    }

    /// Slots and queue places the client holds (never less than it really holds).
    pub fn held(&self, c: &Client) -> u32 {
        c.cells
            .iter()
            .map(|&cell| self.counter(cell).load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Charges held now, every key.
    pub fn total(&self) -> u32 {
        self.total.load(Ordering::Relaxed)
    }

    /// Keys holding something now (an undercount when keys share a counter).
    pub fn present(&self) -> u32 {
        self.present.load(Ordering::Relaxed)
    }

    /// How `c` compares with the mean over the keys present. With fewer than two keys
    /// present nobody is heavy or light: a key alone uses all the capacity.
    pub fn weigh(&self, c: &Client) -> Weight {
        let present = u64::from(self.present());
        if present < 2 {
            return Weight::Even;
        }
        let held = u64::from(self.held(c)) * present;
        let total = u64::from(self.total());
        match held.cmp(&total) {
            std::cmp::Ordering::Greater => Weight::Heavy,
            std::cmp::Ordering::Less => Weight::Light,
            std::cmp::Ordering::Equal => Weight::Even,
        }
    }

    /// Counts one more slot or queue place for `c`, until the charge drops.
    pub fn charge(self: &Arc<Self>, c: Client) -> Charge {
        for (row, &cell) in c.cells.iter().enumerate() {
            let before = self.counter(cell).fetch_add(1, Ordering::Relaxed);
            if row == 0 && before == 0 {
                self.present.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Charge {
            shares: self.clone(),
            client: c,
        }
    }
}

/// One request's hold on its key's count: taken when it asks for a slot, dropped
/// with its slot (it travels in the [`crate::admission::Permit`]) or when it leaves
/// the queue or is shed. The only way the count falls.
pub struct Charge {
    shares: Arc<Shares>,
    client: Client,
}

impl Charge {
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn shares(&self) -> &Shares {
        &self.shares
    }

    /// How this request's key compares with the others present (its own charge
    /// included).
    pub fn weigh(&self) -> Weight {
        self.shares.weigh(&self.client)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let s = &self.shares;
        s.total.fetch_sub(1, Ordering::Relaxed);
        for (row, &cell) in self.client.cells.iter().enumerate() {
            let before = s.counter(cell).fetch_sub(1, Ordering::Relaxed);
            if row == 0 && before == 1 {
                s.present.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// An upstream's fairness: where its client keys come from, and their counts. The
/// counts carry over a reload that keeps fairness on, so the requests in flight stay
/// counted.
pub struct Fairness {
    pub key: ClientKey,
    pub shares: Arc<Shares>,
}

impl Fairness {
    pub fn new(cfg: &config::Fairness) -> Fairness {
        Fairness {
            key: cfg.key.clone(),
            shares: Arc::new(Shares::default()),
        }
    }

    /// For the next version of an upstream: keeps `previous`'s counts (the charges in
    /// flight release into them).
    pub fn carry(next: &mut Option<Fairness>, previous: &Option<Fairness>) {
        if let (Some(n), Some(p)) = (next.as_mut(), previous.as_ref()) {
            n.shares = p.shares.clone();
        }
    }

    /// The hash of a request's client key: the header's value (requests without it
    /// share the empty key), or the peer's address.
    pub fn key_of(&self, headers: &http::HeaderMap, peer: std::net::IpAddr) -> u64 {
        match &self.key {
            ClientKey::Header(name) => headers
                .get(name.as_str())
                .map_or(crate::hash::hash_bytes(b""), |v| {
                    crate::hash::hash_bytes(v.as_bytes())
                }),
            ClientKey::ClientIp => match peer {
                std::net::IpAddr::V4(ip) => crate::hash::hash_bytes(&ip.octets()),
                std::net::IpAddr::V6(ip) => crate::hash::hash_bytes(&ip.octets()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rise_and_fall_with_charges_and_weigh_against_the_mean() {
        let s = Arc::new(Shares::with_seeds([1, 2]));
        let (a, b) = (s.client(10), s.client(20));
        assert_ne!(a, b);
        let held_a: Vec<_> = (0..6).map(|_| s.charge(a)).collect();
        assert_eq!(s.weigh(&a), Weight::Even, "a key alone is never heavy");
        let held_b = s.charge(b);
        assert_eq!(
            (s.held(&a), s.held(&b), s.total(), s.present()),
            (6, 1, 7, 2)
        );
        assert_eq!(s.weigh(&a), Weight::Heavy);
        assert_eq!(s.weigh(&b), Weight::Light);
        assert_eq!(held_b.weigh(), Weight::Light);
        drop(held_a);
        assert_eq!(s.weigh(&b), Weight::Even, "b alone now");
        drop(held_b);
        assert_eq!((s.total(), s.present(), s.held(&a)), (0, 0, 0));
    }

    #[test]
    fn a_flood_of_keys_takes_no_memory_and_leaves_nothing_behind() {
        let s = Arc::new(Shares::default());
        let size = s.footprint();
        assert!(size <= 40 * 1024, "{size} bytes");
        let mut held = Vec::new();
        for k in 0..100_000u64 {
            held.push(s.charge(s.client(crate::hash::mix(k))));
            if held.len() == 1_000 {
                held.clear();
            }
        }
        held.clear();
        assert_eq!(s.footprint(), size);
        assert_eq!((s.total(), s.present()), (0, 0));
        assert!(s.counters.iter().all(|c| c.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn a_light_key_among_many_is_rarely_counted_heavier_than_it_is() {
        let s = Arc::new(Shares::with_seeds([7, 11]));
        let _others: Vec<_> = (0..100u64)
            .flat_map(|k| {
                let c = s.client(crate::hash::mix(k + 1_000));
                [s.charge(c), s.charge(c)]
            })
            .collect();
        let over = (0..1_000u64)
            .filter(|k| s.held(&s.client(crate::hash::mix(*k))) > 0)
            .count();
        assert!(over <= 10, "{over} of 1000 absent keys look present");
    }
}
