//! Shadow mode through real sockets: replicas with a slow service time, levee on
//! `127.0.0.1:0` with `limits.mode = "shadow"`. At twice the capacity levee answers no
//! 503 of its own, sends everything on (past `max_inflight`), and counts what it would
//! have shed in `levee_would_shed_total`; a reload to `enforce` makes it shed the next
//! requests while those already in flight finish.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use levee::demo::load::{self, LoadConfig};
use levee::demo::replica::Replica;

const LIMIT: Duration = Duration::from_secs(10);
/// 2 replicas x 4 workers x 40 ms: about 200 requests/s.
const SERVICE_MS: u64 = 40;
const CAPACITY: f64 = 200.0;
const SHADOW: &str = "[upstream.limits]\nmax_inflight = 4\nqueue_depth = 8\n\
                      queue_timeout_ms = 100\nmode = \"shadow\"";

async fn replicas() -> [Replica; 2] {
    [
        replica("r1", "a", 4, SERVICE_MS).await,
        replica("r2", "a", 4, SERVICE_MS).await,
    ]
}

fn total(metrics: &str, name: &str) -> f64 {
    samples(metrics, name).values().sum()
}

async fn scrape(admin: SocketAddr) -> String {
    let reply = fetch(admin, get("/metrics")).await;
    assert_eq!(reply.status, 200);
    String::from_utf8(reply.body.to_vec()).expect("utf-8 metrics")
}

/// 2x the capacity, open loop, for 1.5 s: every request is answered by a replica
/// (levee queues and sheds nothing), the replicas get more than `max_inflight` at
/// once, and the sheds enforcing would have made are counted by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_at_twice_capacity_sheds_nothing_and_counts_would_sheds() {
    let [r1, r2] = replicas().await;
    let levee = Setup::new(&[&r1, &r2]).upstream(SHADOW).start().await;
    let (addr, admin) = (levee.addr(), levee.admin_addr.expect("admin listener"));

    let mut cfg = LoadConfig::new(addr, 2.0 * CAPACITY, Duration::from_millis(1_500));
    cfg.path = "/work".into();
    cfg.timeout = LIMIT;
    let report = load::run(cfg, |_| {}).await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    assert!(report.sent >= 500, "sent {}", report.sent);
    assert_eq!(report.shed, 0, "levee answered 503s in shadow mode");
    assert_eq!(report.other, 0, "{:?}", report.errors_sample);
    assert_eq!(report.ok, report.sent);
    let peak = r1.stats().peak_inflight.max(r2.stats().peak_inflight);
    assert!(
        peak > 4,
        "max_inflight is not enforced in shadow: peak {peak}"
    );

    let metrics = scrape(admin).await;
    assert_eq!(total(&metrics, "levee_shed_total"), 0.0, "{metrics}");
    let would = samples(&metrics, "levee_would_shed_total");
    let would_total: f64 = would.values().sum();
    assert!(
        would_total >= 0.1 * report.sent as f64,
        "{would_total} would-sheds of {} sent: {would:?}",
        report.sent
    );
    assert!(
        would.keys().all(|l| l.contains("upstream=\"app\"")),
        "{would:?}"
    );
    assert!(
        would
            .iter()
            .any(|(l, n)| *n > 0.0 && l.contains("reason=\"queue_full\"")),
        "past a full queue: {would:?}"
    );
    // Every request was admitted and sent on.
    assert_eq!(total(&metrics, "levee_requests_total"), report.sent as f64);

    let status = fetch(admin, get("/status")).await.json();
    let app = &status["upstreams"][0];
    assert_eq!(app["mode"], "shadow", "{app}");
    assert_eq!(app["would_shed_total"], would_total as u64, "{app}");
    assert_eq!(app["shed_total"], 0, "{app}");
}

const CLIENTS: usize = 24;

/// 24 clients on 8 slots in shadow mode: no 503, would-sheds counted. A reload to
/// `enforce` while requests are in flight past the limits: those finish (200), and the
/// next requests are shed; would-sheds stop (but for the few requests that had read
/// the old config just before the reload, at most one per client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_from_shadow_to_enforce_starts_shedding() {
    let [r1, r2] = replicas().await;
    let setup = Setup::new(&[&r1, &r2]).upstream(SHADOW);
    let (levee, path, _dir) = setup.start_from_file().await;
    let (addr, admin) = (levee.addr(), levee.admin_addr.expect("admin listener"));
    let shadow = levee.app.snapshot().upstreams[0].clone();

    let load = Load::start(addr, CLIENTS, Duration::from_millis(25), LIMIT);
    eventually(LIMIT, "requests past the limits", || {
        shadow.inflight() > shadow.capacity()
    })
    .await;
    eventually(LIMIT, "would-sheds counted", || {
        levee::admission::ShedReason::ALL
            .iter()
            .any(|r| shadow.metrics.would_shed(*r).get() > 0)
    })
    .await;
    let before = scrape(admin).await;
    assert_eq!(
        total(&before, "levee_shed_total"),
        0.0,
        "shadow sheds nothing"
    );
    let would_before = total(&before, "levee_would_shed_total");
    assert!(would_before > 0.0);

    let text = setup
        .toml()
        .replace("mode = \"shadow\"", "mode = \"enforce\"");
    assert_ne!(text, setup.toml());
    std::fs::write(&path, text).expect("write config");
    levee::app::reload(&levee.app, &path).expect("valid config reloads");
    let enforce = levee.app.snapshot().upstreams[0].clone();
    assert_eq!(enforce.limits.mode, levee::config::Mode::Enforce);
    assert!(
        Arc::ptr_eq(&shadow.backends[0], &enforce.backends[0]),
        "the backends and their in-flight counts carry over"
    );

    eventually(LIMIT, "enforcing sheds", || {
        levee::admission::ShedReason::ALL
            .iter()
            .any(|r| enforce.metrics.shed(*r, levee::config::Class::Normal).get() > 0)
    })
    .await;
    // Once the requests sent past the limits have finished, the cap holds again.
    eventually(LIMIT, "back within the limits", || {
        enforce.inflight() <= enforce.capacity()
    })
    .await;
    r1.reset_peak();
    r2.reset_peak();
    let served = || -> u64 {
        enforce
            .backends
            .iter()
            .map(|b| b.metrics.requests(levee::config::Class::Normal).get())
            .sum()
    };
    let enforced_from = served();
    eventually(LIMIT, "enforcing for a while", || {
        served() > enforced_from + 40
    })
    .await;
    let (ok, shed) = load.stop().await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    let after = scrape(admin).await;
    assert!(total(&after, "levee_shed_total") > 20.0, "{after}");
    let would_after = total(&after, "levee_would_shed_total");
    assert!(
        would_after - would_before <= CLIENTS as f64,
        "would-sheds went on after the reload: {would_before} -> {would_after}"
    );
    assert!(ok > 60 && shed > 20, "served {ok}, shed {shed}");
    for r in [&r1, &r2] {
        assert!(r.stats().peak_inflight <= 4, "enforced again");
    }
    let status = fetch(admin, get("/status")).await.json();
    assert_eq!(status["upstreams"][0]["mode"], "enforce");
}
