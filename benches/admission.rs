//! Microbenchmarks of the hot path: admit + release, backend pick (power of two
//! choices, consistent hash), and loading the snapshot; on one thread and on two.
//!
//! `cargo bench --bench admission`

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use levee::admission::Admit;
use levee::config::Class;
use levee::metrics::Metrics;
use levee::state::Snapshot;

fn snapshot(balance: &str) -> Snapshot {
    let mut toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[[upstream]]\nname = \"b\"\nroutes = [\"/\"]\nbalance = \"{balance}\"\naffinity = \"header:x-session\"\n[upstream.limits]\nmax_inflight = 1000000\n"
    );
    for i in 0..8 {
        toml.push_str(&format!(
            "[[upstream.backend]]\naddress = \"10.0.0.{}:80\"\nzone = \"{}\"\n",
            i + 1,
            if i < 4 { "a" } else { "b" }
        ));
    }
    let config = levee::config::parse(&toml).expect("bench config");
    Snapshot::build(config, &Metrics::new())
}

/// Runs `f` `iters` times split over `threads` threads; returns the wall time.
fn on_threads(threads: usize, iters: u64, f: impl Fn(u64) + Sync) -> Duration {
    let per = iters / threads as u64;
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            s.spawn(move || {
                for i in 0..per {
                    f(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t as u64);
                }
            });
        }
    });
    start.elapsed()
}

fn admission(c: &mut Criterion) {
    for threads in [1usize, 2] {
        let snap = snapshot("least_inflight");
        let up = snap.upstreams[0].clone();
        c.bench_function(&format!("admit+release p2c/{threads}t"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |r| {
                    match up.try_admit(Class::Normal, None, r) {
                        Admit::Permit(p) => drop(black_box(p)),
                        other => panic!("{other:?}"),
                    }
                })
            })
        });
        let snap = snapshot("consistent_hash");
        let up = snap.upstreams[0].clone();
        c.bench_function(&format!("admit+release consistent_hash/{threads}t"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |r| {
                    match up.try_admit(Class::Normal, Some(r), r) {
                        Admit::Permit(p) => drop(black_box(p)),
                        other => panic!("{other:?}"),
                    }
                })
            })
        });
        let shared = Arc::new(ArcSwap::from_pointee(snapshot("least_inflight")));
        c.bench_function(&format!("snapshot load+route/{threads}t"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |_| {
                    let s = shared.load();
                    black_box(s.route(None, "/mcp/x"));
                })
            })
        });
    }
}

criterion_group!(benches, admission);
criterion_main!(benches);
