//! Standing-queue control through real sockets: real replicas with a slow service
//! time, levee on `127.0.0.1:0`, and bounded closed-loop clients. A burst on an idle
//! upstream is absorbed whole; sustained overload makes the queue stand, after which
//! admitted requests wait about `queue_target_ms` instead of up to `queue_timeout_ms`;
//! and the level holds still while the overload lasts.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use levee::demo::replica::Replica;

const LIMIT: Duration = Duration::from_secs(10);
/// Replica service time: 2 replicas x 4 slots of 40 ms serve about 200 requests/s.
const SERVICE_MS: u64 = 40;
/// The queue absorbs bursts for up to 500 ms, and holds waits to 20 ms once it stands.
const LIMITS: &str = "[upstream.limits]\nmax_inflight = 4\nqueue_depth = 200\n\
                      queue_timeout_ms = 500\nqueue_target_ms = 20\nqueue_interval_ms = 100";

async fn replicas() -> [Replica; 2] {
    [
        replica("r1", "a", 4, SERVICE_MS).await,
        replica("r2", "a", 4, SERVICE_MS).await,
    ]
}

/// One value of a family: the sample whose labels contain every `needle`.
fn value(metrics: &str, name: &str, needles: &[&str]) -> f64 {
    samples(metrics, name)
        .into_iter()
        .find(|(labels, _)| needles.iter().all(|n| labels.contains(n)))
        .map_or(0.0, |(_, v)| v)
}

async fn scrape(admin: SocketAddr) -> String {
    let reply = fetch(admin, get("/metrics")).await;
    assert_eq!(reply.status, 200);
    String::from_utf8(reply.body.to_vec()).expect("utf-8 metrics")
}

/// Cumulative counts of `levee_queue_wait_seconds` by bucket bound (seconds), summed
/// over the classes.
fn wait_buckets(metrics: &str) -> Vec<(f64, f64)> {
    wait_buckets_of(metrics, "")
}

/// [`wait_buckets`] of the series whose labels contain `needle` (all: "").
fn wait_buckets_of(metrics: &str, needle: &str) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = samples(metrics, "levee_queue_wait_seconds_bucket")
        .into_iter()
        .filter(|(labels, _)| labels.contains(needle))
        .filter_map(|(labels, n)| {
            let le = labels.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets.dedup_by(|next, kept| {
        let same = next.0 == kept.0;
        if same {
            kept.1 += next.1;
        }
        same
    });
    buckets
}

/// 24 requests at once on an idle upstream of 8 slots: 16 wait (up to two service
/// times, beyond the target), all within the interval, so the queue never stands and
/// every one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_burst_on_an_idle_upstream_is_absorbed_whole() {
    let [r1, r2] = replicas().await;
    let levee = Setup::new(&[&r1, &r2]).upstream(LIMITS).start().await;
    let (addr, admin) = (levee.addr(), levee.admin_addr.expect("admin listener"));
    let up = levee.app.snapshot().upstreams[0].clone();

    let burst: Vec<_> = (0..24)
        .map(|_| tokio::spawn(async move { fetch(addr, get("/burst")).await.status }))
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), 200, "a burst is absorbed, not shed");
    }
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    let metrics = scrape(admin).await;
    let shed: f64 = samples(&metrics, "levee_shed_total").values().sum();
    assert_eq!(shed, 0.0, "{metrics}");
    let waited: f64 = samples(&metrics, "levee_queue_wait_seconds_count")
        .values()
        .sum();
    assert!(waited >= 8.0, "the burst did queue: {waited} waited");
    assert_eq!(
        value(&metrics, "levee_queue_standing_started_total", &[]),
        0.0
    );
    assert_eq!(value(&metrics, "levee_queue_standing", &[]), 0.0);
    assert!(!up.queue.is_standing());
    for r in [&r1, &r2] {
        assert!(r.stats().peak_inflight <= 4);
    }
}

/// About 4x the upstream's capacity from 24 clients: at first the queue absorbs it
/// as a burst, with waits far above the target; once they have stayed above it for
/// the interval the queue stands, and from then on admitted requests wait about the
/// target (20 ms) rather than up to the timeout (500 ms), the excess gets 503
/// `queue_standing`, and the level holds still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sustained_overload_admitted_waits_fall_to_the_target() {
    let [r1, r2] = replicas().await;
    let levee = Setup::new(&[&r1, &r2]).upstream(LIMITS).start().await;
    let (addr, admin) = (levee.addr(), levee.admin_addr.expect("admin listener"));
    let up = levee.app.snapshot().upstreams[0].clone();

    let load = Load::start(addr, 24, Duration::from_millis(25), LIMIT);
    eventually(LIMIT, "the queue stands", || up.queue.is_standing()).await;
    // Let the waits of the burst phase leave the window, then measure a steady phase.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = scrape(admin).await;
    let phase = Instant::now();
    let mut stood_throughout = true;
    while phase.elapsed() < Duration::from_millis(1_500) {
        stood_throughout &= up.queue.is_standing();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = scrape(admin).await;
    let status = fetch(admin, get("/status")).await.json();
    let (ok, shed) = load.stop().await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    assert!(stood_throughout, "the queue stood for the whole phase");
    assert_eq!(
        value(&after, "levee_queue_standing_started_total", &[]),
        1.0,
        "it began standing once"
    );
    assert_eq!(value(&after, "levee_queue_standing", &[]), 1.0);
    let app = &status["upstreams"][0];
    assert_eq!(app["queue_standing"], true, "{app}");
    assert_eq!(app["queue_allowed_wait_ms"], 20.0, "{app}");

    // The queue waits of requests admitted during the phase.
    let (b0, b1) = (wait_buckets(&before), wait_buckets(&after));
    let count = |b: &[(f64, f64)], le: f64| {
        b.iter()
            .find(|(bound, _)| *bound >= le)
            .map_or(0.0, |(_, n)| *n)
    };
    let delta = |le: f64| count(&b1, le) - count(&b0, le);
    let waited = delta(f64::INFINITY);
    assert!(waited >= 30.0, "{waited} requests waited in the phase");
    let within_target = delta(0.025) / waited;
    let within_twice = delta(0.05) / waited;
    assert!(
        within_target >= 0.9 && within_twice >= 0.98,
        "admitted waits: {:.0} % within 25 ms, {:.0} % within 50 ms (target 20 ms, timeout \
         500 ms); buckets before {b0:?} after {b1:?}",
        within_target * 100.0,
        within_twice * 100.0
    );

    // The excess was shed for the standing queue, not after waiting out the timeout.
    let shed_by = |m: &str, reason: &str| {
        value(
            m,
            "levee_shed_total",
            &[&format!("reason=\"{reason}\""), "priority=\"normal\""],
        )
    };
    assert!(shed_by(&after, "queue_standing") - shed_by(&before, "queue_standing") > 20.0);
    assert_eq!(
        shed_by(&after, "queue_timeout") - shed_by(&before, "queue_timeout"),
        0.0
    );
    // The level held still through the phase.
    assert_eq!(
        value(&after, "levee_load_level_changes_total", &[])
            - value(&before, "levee_load_level_changes_total", &[]),
        0.0,
        "level changes during the phase"
    );
    assert!(ok > 100 && shed > 100, "served {ok}, shed {shed}");
    for r in [&r1, &r2] {
        assert!(r.stats().peak_inflight <= 4);
    }
}

/// Danger at a queue of 4 in front of 8 slots, and 24 clients: danger keeps `normal`
/// out of the queue, which empties it. Read by length alone, the level would fall
/// after every cooldown, let them in and rise again as they refill it; counting those
/// it turns away as waiting, it holds at danger while the overload lasts, and falls
/// once it is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_the_queue_raised_holds_while_the_overload_lasts() {
    let [r1, r2] = replicas().await;
    let levee = Setup::new(&[&r1, &r2])
        .upstream(
            "[upstream.limits]\nmax_inflight = 4\nqueue_depth = 8\nqueue_timeout_ms = 100\n\
             [upstream.levels]\ncaution = { queue = 2 }\ndanger = { queue = 4 }\ncooldown_ms = 200",
        )
        .start()
        .await;
    let (addr, admin) = (levee.addr(), levee.admin_addr.expect("admin listener"));
    let up = levee.app.snapshot().upstreams[0].clone();

    let load = Load::start(addr, 24, Duration::from_millis(25), LIMIT);
    eventually(LIMIT, "danger", || {
        up.level_state.get() >= levee::admission::level::Level::Danger
    })
    .await;
    // Past a cooldown or two (critical, when the queue filled, falls to danger).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = scrape(admin).await;
    let phase = Instant::now();
    let mut levels = Vec::new();
    while phase.elapsed() < Duration::from_millis(1_500) {
        levels.push(up.level_state.get());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = scrape(admin).await;
    let (ok, _) = load.stop().await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
    // Once the overload is over, the level follows the queue down.
    eventually(LIMIT, "back to safe", || {
        up.level_state.get() == levee::admission::level::Level::Safe
    })
    .await;

    let changes = value(&after, "levee_load_level_changes_total", &[])
        - value(&before, "levee_load_level_changes_total", &[]);
    assert_eq!(changes, 0.0, "the level flapped: {levels:?}");
    assert!(
        levels
            .iter()
            .all(|l| *l == levee::admission::level::Level::Danger),
        "{levels:?}"
    );
    assert!(ok > 100, "served {ok}");
}

/// `queue_target_ms` and `queue_interval_ms` reload like every limit: a standing queue
/// stays standing across the reload (the queue carries over) and allows the new target
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_a_standing_queue_and_applies_the_new_target() {
    let [r1, r2] = replicas().await;
    let setup = Setup::new(&[&r1, &r2]).upstream(LIMITS);
    let (levee, path, _dir) = setup.start_from_file().await;
    let (addr, admin) = (levee.addr(), levee.admin_addr.expect("admin listener"));
    let before = levee.app.snapshot().upstreams[0].clone();

    let load = Load::start(addr, 24, Duration::from_millis(25), LIMIT);
    eventually(LIMIT, "the queue stands", || before.queue.is_standing()).await;

    let text = setup
        .toml()
        .replace("queue_target_ms = 20", "queue_target_ms = 10")
        .replace("queue_interval_ms = 100", "queue_interval_ms = 150");
    assert_ne!(text, setup.toml());
    std::fs::write(&path, text).expect("write config");
    levee::app::reload(&levee.app, &path).expect("valid config reloads");
    let after = levee.app.snapshot().upstreams[0].clone();
    assert!(!Arc::ptr_eq(&before, &after), "the upstream was renewed");
    assert!(
        Arc::ptr_eq(&before.queue, &after.queue),
        "its queue carried over"
    );
    assert_eq!(after.limits.queue_target, Duration::from_millis(10));
    assert_eq!(after.limits.queue_interval, Duration::from_millis(150));
    assert!(after.queue.is_standing(), "still standing after the reload");
    let app = fetch(admin, get("/status")).await.json()["upstreams"][0].clone();
    assert_eq!(app["queue_standing"], true, "{app}");
    assert_eq!(app["queue_allowed_wait_ms"], 10.0, "{app}");
    assert_eq!(app["queue_standing_started_total"], 1, "{app}");

    load.stop().await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
    // Idle: the ticker ends the standing state once it has drained.
    eventually(LIMIT, "the queue drained", || !after.queue.is_standing()).await;
    let app = fetch(admin, get("/status")).await.json()["upstreams"][0].clone();
    assert_eq!(app["queue_standing"], false, "{app}");
    assert_eq!(app["queue_allowed_wait_ms"], 500.0, "{app}");
}
