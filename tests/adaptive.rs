//! Adaptive limits through real sockets: real replicas, levee on `127.0.0.1:0`, bounded
//! closed-loop clients. The limit falls when the replica slows and queues inside
//! itself, and recovers when it speeds up again; load reports lower and raise it;
//! reports levee cannot use are counted and ignored, and never reach the client; and
//! three levee processes sharing two replicas that report their load hold each
//! replica's own queue down without talking to each other.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{admin_json, LeveeProcess};
use common::*;
use http::HeaderValue;
use levee::demo::replica::LoadReport;
use levee::state::Upstream;

const LIMIT: Duration = Duration::from_secs(20);

/// The tests of this file run one at a time: each drives replicas at or past their
/// capacity and measures latency, which tests next to it would disturb.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Closed-loop clients, each on its own keep-alive connection: send, and after a 503
/// back off 10 ms. Each stops when stopped, after `MAX_PER_CLIENT` requests, or at
/// `LIMIT` (plus the time to reconnect), whichever comes first. No reply may carry a
/// backend's load report.
fn load(addr: SocketAddr, clients: usize) -> Load {
    Load::start_with(
        addr,
        clients,
        Duration::from_millis(10),
        LIMIT,
        MAX_PER_CLIENT,
        &[],
        |reply| {
            assert!(
                reply.header("endpoint-load-metrics").is_none(),
                "a load report reached the client"
            )
        },
    )
}

const MAX_PER_CLIENT: u32 = 2000;

fn limit(up: &Upstream) -> u32 {
    up.backends[0].limit()
}

/// One replica of 4 workers x 20 ms behind levee with `max_inflight = 16`: at first
/// levee lets 16 in and the replica queues 12 inside itself (p95 near 80 ms against a
/// target of 60); the limit falls until the replica's own queue is a few requests. When
/// the replica slows to 80 ms a request, no limit meets the target and it falls to
/// `min_inflight`; when it is fast again the limit climbs back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_falls_when_the_replica_slows_and_recovers_when_it_speeds_up() {
    let _serial = SERIAL.lock().await;
    let r = replica("r1", "a", 4, 20).await;
    let levee = Setup::new(&[&r])
        .upstream(
            "[upstream.limits]\nmax_inflight = 16\nqueue_depth = 100\nqueue_timeout_ms = 2000\n\
             [upstream.adaptive]\ntarget_p95_ms = 60\nmin_inflight = 2",
        )
        .start()
        .await;
    let up = levee.app.snapshot().upstreams[0].clone();
    assert_eq!(limit(&up), 16, "a fresh levee starts at max_inflight");
    let load = load(levee.addr(), 24);

    // The replica queued inside itself; the limit comes down to about its workers.
    eventually(LIMIT, "the limit falls to the replica's size", || {
        limit(&up) <= 7
    })
    .await;
    // Two seconds to settle (the first floor probe, then the queue estimate), then one
    // to watch: the replica's own queue stays a few requests, and what the limit
    // learned is its most common value (a floor probe may halve it for a moment).
    let fell = Instant::now();
    eventually(LIMIT, "two seconds to settle", || {
        fell.elapsed() >= Duration::from_secs(2)
    })
    .await;
    r.reset_peak();
    let mut seen = [0u32; 17];
    let watch = Instant::now();
    eventually(LIMIT, "two seconds of the fast replica", || {
        if !up.backends[0].adaptive.reading().probing {
            seen[limit(&up) as usize] += 1;
        }
        watch.elapsed() >= Duration::from_secs(2)
    })
    .await;
    let peak = r.stats().peak_queued;
    let learned = (0..seen.len()).max_by_key(|&l| seen[l]).unwrap_or(0) as u32;
    assert!(
        peak <= 6,
        "the replica's own queue peaked at {peak}; limits {seen:?}"
    );
    assert!((3..=8).contains(&learned), "learned {learned}: {seen:?}");

    // Four times slower: even one request at a time misses the target.
    r.set_service_time(Duration::from_millis(80));
    eventually(LIMIT, "the limit falls to min_inflight", || limit(&up) == 2).await;
    let decreases = up.backends[0].metrics.limit_decreases[0].get();
    assert!(decreases >= 2, "latency decreases counted: {decreases}");

    // Fast again: back up to about its old value.
    r.set_service_time(Duration::from_millis(20));
    eventually(LIMIT, "the limit recovers", || {
        limit(&up) + 1 >= learned.max(5)
    })
    .await;
    eprintln!(
        "learned {learned} (limits {seen:?}), recovered to {}",
        limit(&up)
    );

    let (ok, _) = load.stop().await;
    assert!(ok > 200, "served {ok}");
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

/// A replica that never queues (64 workers for a limit of 16) and reports a fixed load:
/// reports levee cannot use are counted by reason and leave the limit alone; a report
/// above `load_target` brings it down to `min_inflight`, one below lets it climb back
/// to `max_inflight`. No report reaches a client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_lower_and_raise_the_limit_and_bad_ones_are_counted_and_ignored() {
    let _serial = SERIAL.lock().await;
    let r = replica("r1", "a", 64, 40).await;
    let levee = Setup::new(&[&r])
        .upstream(
            "[upstream.limits]\nmax_inflight = 16\nqueue_depth = 100\nqueue_timeout_ms = 2000\n\
             [upstream.adaptive]\ntarget_p95_ms = 5000\nmin_inflight = 2\nload_target = 1.0",
        )
        .start()
        .await;
    let up = levee.app.snapshot().upstreams[0].clone();
    let report =
        |v: &'static str| r.set_load_report(LoadReport::Fixed(HeaderValue::from_static(v)));
    let counted = |result: usize| up.metrics.load_reports[result].get();
    let decreases = &up.backends[0].metrics.limit_decreases;

    report("TEXT application_utilization=lots");
    let load = load(levee.addr(), 24);
    for (value, result) in [
        ("TEXT application_utilization=lots", 1),
        ("TEXT application_utilization=-1", 2),
        ("TEXT application_utilization=NaN", 2),
        ("TEXT application_utilization=250", 2),
        ("JSON {\"application_utilization\":3}", 3),
    ] {
        report(value);
        let before = counted(result);
        eventually(LIMIT, value, || counted(result) >= before + 60).await;
        // No report moved the limit. (Without a report it can use, levee estimates
        // the replica's queue from its latency, which may nudge the limit on a busy
        // machine, and halves it for a moment to measure the unloaded latency.)
        assert_eq!(decreases[2].get(), 0, "{value}: a load cut");
    }
    assert_eq!(counted(0), 0, "none accepted");
    eventually(LIMIT, "the limit at max_inflight", || limit(&up) == 16).await;

    // Over the target: down to the floor.
    report("TEXT application_utilization=2.0");
    eventually(LIMIT, "the limit falls to min_inflight", || limit(&up) == 2).await;
    assert!(up.backends[0].metrics.limit_decreases[2].get() >= 2);
    assert!(counted(0) > 0);
    // Under it, and every slot in use: back up to max_inflight.
    report("TEXT cpu_utilization=0.5");
    eventually(LIMIT, "the limit climbs back to max_inflight", || {
        limit(&up) == 16
    })
    .await;

    let (ok, _) = load.stop().await;
    assert!(ok > 100, "served {ok}");
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
    // Without load_target, reports are neither read nor stripped.
    let plain = replica("r2", "a", 4, 0).await;
    plain.set_load_report(LoadReport::Utilization);
    let levee = Setup::new(&[&plain])
        .upstream("[upstream.adaptive]\ntarget_p95_ms = 100\nmin_inflight = 1")
        .start()
        .await;
    let reply = fetch(levee.addr(), get("/x")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.header("endpoint-load-metrics").is_some());
}

/// Three levee processes, each with `max_inflight = 32` per replica, in front of the
/// same two replicas (8 workers x 50 ms each), which report their own load; 1.9x the
/// replicas' capacity offered across the three, open loop. Without coordination each
/// replica could get 96 in flight, 88 of them queued inside it; with load reports every
/// levee backs off on its own and, in the second half, each replica's own queue stays
/// within twice its workers (about 2 on average; a debug build on a shared machine
/// gives it spikes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_levee_processes_share_two_replicas_without_talking() {
    let _serial = SERIAL.lock().await;
    const WORKERS: usize = 8;
    const SERVICE_MS: u64 = 50;
    const RUN: Duration = Duration::from_secs(16);
    let replicas = [
        replica("r1", "a", WORKERS, SERVICE_MS).await,
        replica("r2", "a", WORKERS, SERVICE_MS).await,
    ];
    for r in &replicas {
        r.set_load_report(LoadReport::Utilization);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 1\n\
         [[upstream]]\nname = \"app\"\nroutes = [\"/\"]\n\
         [upstream.limits]\nmax_inflight = 32\nqueue_depth = 64\nqueue_timeout_ms = 200\n\
         [upstream.adaptive]\ntarget_p95_ms = 1000\nmin_inflight = 1\nload_target = 1.2\n",
    );
    for r in &replicas {
        config.push_str(&format!(
            "[[upstream.backend]]\naddress = \"{}\"\n",
            r.addr()
        ));
    }
    let path = dir.path().join("levee.toml");
    std::fs::write(&path, &config).expect("write config");
    let mut levees: Vec<LeveeProcess> = (0..3).map(|_| LeveeProcess::spawn(&path, &[])).collect();

    let capacity = 2.0 * WORKERS as f64 * 1000.0 / SERVICE_MS as f64;
    let runs: Vec<_> = levees
        .iter()
        .map(|l| {
            let mut cfg = levee::demo::load::LoadConfig::new(l.proxy, 1.9 * capacity / 3.0, RUN);
            cfg.path = "/work".into();
            cfg.timeout = Duration::from_secs(3);
            tokio::spawn(levee::demo::load::run(cfg, |_| {}))
        })
        .collect();
    let started = Instant::now();
    eventually(LIMIT, "the first half", || started.elapsed() >= RUN / 2).await;
    for r in &replicas {
        r.reset_peak();
    }
    let mut reports = Vec::new();
    for run in runs {
        reports.push(run.await.expect("load task"));
    }
    let peaks: Vec<usize> = replicas.iter().map(|r| r.stats().peak_queued).collect();
    let mut limits = Vec::new();
    for l in &levees {
        let status = admin_json(l.admin, "/status").await.expect("/status");
        let backends = status["upstreams"][0]["backends"].as_array().cloned();
        limits.push(
            backends
                .unwrap_or_default()
                .iter()
                .map(|b| b["limit"].as_u64().unwrap_or(0))
                .collect::<Vec<_>>(),
        );
    }
    let ok: u64 = reports.iter().map(|r| r.ok).sum();
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    for l in &mut levees {
        assert!(l.alive() && !l.panicked(), "a levee died");
    }
    let detail = format!("peak queues {peaks:?}, limits {limits:?}, {ok} of {sent} served");
    for peak in &peaks {
        assert!(
            *peak <= 2 * WORKERS,
            "a replica queued inside itself: {detail}"
        );
    }
    // Goodput: most of the replicas' capacity over the run (its start included; the
    // load bench measures it properly, in a release build).
    assert!(
        ok as f64 >= 0.6 * capacity * RUN.as_secs_f64(),
        "goodput: {detail}"
    );
    eprintln!("{detail}");
}

/// A reload keeps what each kept backend learned: a backend whose limit fell stays
/// low when the target changes and another backend joins (which starts at its
/// `max_inflight`, ramped up by slow start); a lower `max_inflight` caps it at once;
/// and without `[upstream.adaptive]` the limit is `max_inflight` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_learned_limit_of_each_kept_backend() {
    let _serial = SERIAL.lock().await;
    let r1 = replica("r1", "a", 64, 40).await;
    let r2 = replica("r2", "a", 64, 40).await;
    r1.set_load_report(LoadReport::Fixed(HeaderValue::from_static(
        "TEXT application_utilization=2",
    )));
    let limits =
        "[upstream.limits]\nmax_inflight = 16\nqueue_depth = 100\nqueue_timeout_ms = 2000\n";
    let adaptive =
        "[upstream.adaptive]\ntarget_p95_ms = 5000\nmin_inflight = 2\nload_target = 1.0\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("levee.toml");
    let write = |text: String| std::fs::write(&path, text).expect("write config");
    write(
        Setup::new(&[&r1])
            .upstream(limits)
            .upstream(adaptive)
            .toml(),
    );
    let levee = levee::app::start(levee::config::load(&path).expect("valid"))
        .await
        .expect("levee starts");
    let load = load(levee.addr(), 24);
    let first = levee.app.snapshot().upstreams[0].clone();
    eventually(LIMIT, "the limit falls", || limit(&first) == 2).await;
    r1.set_load_report(LoadReport::Off);

    // Another target and a second backend.
    write(
        Setup::new(&[&r1, &r2])
            .upstream(limits)
            .upstream(&adaptive.replace("5000", "4000"))
            .toml(),
    );
    levee::app::reload(&levee.app, &path).expect("valid config reloads");
    let up = levee.app.snapshot().upstreams[0].clone();
    assert!(!Arc::ptr_eq(&first, &up), "the upstream was renewed");
    assert!(Arc::ptr_eq(&first.backends[0], &up.backends[0]), "r1 kept");
    assert_eq!(
        up.backends[0].adaptive.limit(),
        2,
        "r1 kept what it learned"
    );
    assert_eq!(
        up.backends[1].adaptive.limit(),
        16,
        "r2 starts at max_inflight"
    );
    assert!(up.backends[1].limit() < 16, "r2 ramps up (slow start)");

    // A lower ceiling applies at once; without the table the limit is the ceiling.
    write(
        Setup::new(&[&r1, &r2])
            .upstream(&limits.replace("max_inflight = 16", "max_inflight = 12"))
            .upstream(adaptive)
            .toml(),
    );
    levee::app::reload(&levee.app, &path).expect("valid config reloads");
    let up = levee.app.snapshot().upstreams[0].clone();
    assert_eq!(up.backends[0].adaptive.limit(), 2);
    assert_eq!(up.backends[1].adaptive.limit(), 12);
    write(Setup::new(&[&r1, &r2]).upstream(limits).toml());
    levee::app::reload(&levee.app, &path).expect("valid config reloads");
    let up = levee.app.snapshot().upstreams[0].clone();
    assert_eq!(up.backends[0].adaptive.limit(), 16);
    assert_eq!(
        up.backends[0].limit(),
        16,
        "r1 takes its full limit at once"
    );

    load.stop().await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}
