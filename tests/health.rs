//! Health and zones through real sockets: active checks, probation, passive ejection,
//! slow start, zone preference and spill, panic mode, budgeted retries, affinity.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use levee::demo::replica::{Fault, Replica};
use levee::health::State;

const LIMIT: Duration = Duration::from_secs(10);

const CHECKS: &str = "[upstream.health]\npath = \"/health\"\ninterval_ms = 100\ntimeout_ms = 100\nrise = 2\nfall = 2\nslow_start_ms = 0\neject_after_failures = 0";

fn zoned(backends: &[(&Replica, &str)]) -> Setup {
    let mut s = Setup::new(&[]);
    s.backends = backends
        .iter()
        .map(|(r, z)| (r.addr(), z.to_string()))
        .collect();
    s
}

/// Sends `n` GETs one after another on one connection; counts answers by replica
/// (`status:replica`).
async fn spread(addr: SocketAddr, n: usize, path: &str) -> HashMap<String, usize> {
    let mut c = Conn::open(addr).await;
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = c.get(path).await;
        let who = format!("{}:{}", r.status, r.header("x-replica").unwrap_or("-"));
        *seen.entry(who).or_default() += 1;
    }
    seen
}

fn state(levee: &levee::app::Running, i: usize) -> State {
    levee.app.snapshot().upstreams[0].backends[i].health.state()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_checks_take_a_backend_out_and_bring_it_back() {
    let r1 = replica("r1", "a", 8, 0).await;
    let r2 = replica("r2", "a", 8, 0).await;
    let levee = Setup::new(&[&r1, &r2]).upstream(CHECKS).start().await;
    assert_eq!(state(&levee, 1), State::Healthy);
    r2.set_fault(Fault::Health500);
    eventually(LIMIT, "r2 unhealthy", || {
        state(&levee, 1) == State::Unhealthy
    })
    .await;
    let seen = spread(levee.addr(), 30, "/x").await;
    assert_eq!(seen.get("200:r1"), Some(&30), "{seen:?}");
    r2.set_fault(Fault::None);
    eventually(LIMIT, "r2 healthy again", || {
        state(&levee, 1) == State::Healthy
    })
    .await;
    let seen = spread(levee.addr(), 30, "/x").await;
    assert!(seen.get("200:r2").copied().unwrap_or(0) > 0, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_backend_takes_traffic_only_after_a_passing_probe() {
    let r1 = replica("r1", "a", 8, 0).await;
    let r2 = replica("r2", "a", 8, 0).await;
    r2.set_fault(Fault::Health500);
    let levee = Setup::new(&[&r1, &r2]).upstream(CHECKS).start().await;
    assert_ne!(state(&levee, 1), State::Healthy);
    let seen = spread(levee.addr(), 20, "/x").await;
    assert_eq!(seen.get("200:r1"), Some(&20), "{seen:?}");
    assert_eq!(r2.stats().served, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_requests_eject_a_backend_for_a_growing_time_within_the_share_cap() {
    let r1 = replica("r1", "a", 8, 0).await;
    let r2 = replica("r2", "a", 8, 0).await;
    let r3 = replica("r3", "a", 8, 0).await;
    let levee = Setup::new(&[&r1, &r2, &r3])
        .upstream(
            "balance = \"round_robin\"\n[upstream.health]\neject_after_failures = 3\neject_ms = 400\n\
             eject_max_ms = 5000\nmax_ejected_share = 0.34\nslow_start_ms = 0",
        )
        .start()
        .await;
    let up = levee.app.snapshot().upstreams[0].clone();
    r3.set_fault(Fault::Error500);
    let seen = spread(levee.addr(), 30, "/x").await;
    assert_eq!(
        seen.get("500:r3"),
        Some(&3),
        "exactly the streak, then ejected: {seen:?}"
    );
    assert_eq!(state(&levee, 2), State::Ejected);
    assert_eq!(up.backends[2].health.ejections(), 1);

    // The cap: one of three may be ejected, so r2 failing too stays in.
    r2.set_fault(Fault::Error500);
    let seen = spread(levee.addr(), 12, "/x").await;
    assert!(seen.get("500:r2").copied().unwrap_or(0) >= 4, "{seen:?}");
    assert_ne!(state(&levee, 1), State::Ejected);
    r2.set_fault(Fault::None);

    // Back after its time, still failing: ejected again, for longer.
    eventually(LIMIT, "ejection over", || {
        state(&levee, 2) != State::Ejected
    })
    .await;
    let seen = spread(levee.addr(), 30, "/x").await;
    assert_eq!(seen.get("500:r3"), Some(&3), "{seen:?}");
    assert_eq!(up.backends[2].health.ejections(), 2);
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}

/// Slow start is for backends coming back, not for a levee that just started: backends
/// whose first probe passes take their full limit from the first request, and the
/// start is not panic mode. A backend a reload adds to the running upstream ramps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_slow_start_at_process_start_but_for_a_backend_a_reload_adds() {
    let r1 = replica("r1", "a", 8, 0).await;
    let r2 = replica("r2", "a", 8, 0).await;
    let r3 = replica("r3", "a", 8, 0).await;
    let upstream = format!(
        "[upstream.limits]\nmax_inflight = 20\n{}",
        CHECKS.replace("slow_start_ms = 0", "slow_start_ms = 5000")
    );
    let setup = Setup::new(&[&r1, &r2]).upstream(&upstream);
    let levee = setup.start().await;
    // Checked as soon as start returns: the first probe round ran before serving.
    let up = levee.app.snapshot().upstreams[0].clone();
    for b in up.backends.iter() {
        assert_eq!(b.health.state(), State::Healthy, "{}", b.label);
        assert_eq!(b.limit(), 20, "{}: full limit at start", b.label);
    }
    assert!(!up.in_panic(), "a fresh start is not panic mode");
    assert_eq!(fetch(levee.addr(), get("/first")).await.status, 200);

    // Reload with a third backend: it joins the running upstream and ramps.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("levee.toml");
    let more = Setup::new(&[&r1, &r2, &r3]).upstream(&upstream).toml();
    std::fs::write(&path, more).expect("write config");
    levee::app::reload(&levee.app, &path).expect("reload");
    let added = levee.app.snapshot().upstreams[0].backends[2].clone();
    eventually(LIMIT, "added backend healthy", || {
        added.health.state() == State::Healthy
    })
    .await;
    let first = added.limit();
    assert!(
        (1..20).contains(&first),
        "a backend added to a running upstream ramps up: {first}"
    );
    let kept = levee.app.snapshot().upstreams[0].backends[0].clone();
    assert_eq!(
        kept.limit(),
        20,
        "backends the reload kept keep their limit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovered_backend_ramps_its_limit_up() {
    let r1 = replica("r1", "a", 8, 0).await;
    let r2 = replica("r2", "a", 8, 0).await;
    let levee = Setup::new(&[&r1, &r2])
        .upstream(&format!(
            "[upstream.limits]\nmax_inflight = 20\n{}",
            CHECKS.replace("slow_start_ms = 0", "slow_start_ms = 1500")
        ))
        .start()
        .await;
    let b = levee.app.snapshot().upstreams[0].backends[1].clone();
    r2.set_fault(Fault::Health500);
    eventually(LIMIT, "down", || state(&levee, 1) == State::Unhealthy).await;
    r2.set_fault(Fault::None);
    eventually(LIMIT, "up", || state(&levee, 1) == State::Healthy).await;
    let first = b.limit();
    assert!(
        (2..20).contains(&first),
        "starts ramping from a small share: {first}"
    );
    eventually(LIMIT, "full limit", || b.limit() == 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_zone_is_preferred_until_full_or_down() {
    let a1 = replica("a1", "a", 8, 0).await;
    let a2 = replica("a2", "a", 8, 0).await;
    let b1 = replica("b1", "b", 8, 0).await;
    let b2 = replica("b2", "b", 8, 0).await;
    let levee = zoned(&[(&a1, "a"), (&a2, "a"), (&b1, "b"), (&b2, "b")])
        .server("zone = \"a\"")
        .upstream(&format!("[upstream.limits]\nmax_inflight = 2\n{CHECKS}"))
        .start()
        .await;
    let addr = levee.addr();
    let up = levee.app.snapshot().upstreams[0].clone();
    let seen = spread(addr, 20, "/x").await;
    assert_eq!(
        seen.get("200:a1").copied().unwrap_or(0) + seen.get("200:a2").copied().unwrap_or(0),
        20,
        "{seen:?}"
    );

    // Zone a full: the next request spills to b rather than wait.
    let holders: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { fetch(addr, get("/hold?ms=800")).await.status }))
        .collect();
    eventually(LIMIT, "zone a full", || {
        up.backends[0].inflight() == 2 && up.backends[1].inflight() == 2
    })
    .await;
    let spilled = fetch(addr, get("/x")).await;
    assert!(spilled.header("x-replica").unwrap().starts_with('b'));
    assert!(up.metrics.spill.get() >= 1);
    for h in holders {
        assert_eq!(h.await.unwrap(), 200);
    }

    // Zone a down: everything goes to b.
    a1.set_fault(Fault::Health500);
    a2.set_fault(Fault::Health500);
    eventually(LIMIT, "zone a not preferred", || !up.prefers_local()).await;
    let seen = spread(addr, 20, "/x").await;
    assert!(seen.keys().all(|k| k.starts_with("200:b")), "{seen:?}");
    let status = levee::admin::status_json(&levee.app.snapshot(), true);
    assert_eq!(status["upstreams"][0]["prefer_local"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_mode_routes_to_all_when_too_few_are_healthy() {
    let rs = [
        replica("r1", "a", 8, 0).await,
        replica("r2", "a", 8, 0).await,
        replica("r3", "b", 8, 0).await,
        replica("r4", "b", 8, 0).await,
    ];
    let levee = Setup::new(&rs.iter().collect::<Vec<_>>())
        .upstream(&format!("{CHECKS}\npanic_threshold = 0.5"))
        .start()
        .await;
    let up = levee.app.snapshot().upstreams[0].clone();
    for r in &rs[1..] {
        r.set_fault(Fault::Health500);
    }
    eventually(LIMIT, "panic", || up.in_panic()).await;
    let seen = spread(levee.addr(), 40, "/x").await;
    assert!(
        seen.len() >= 3,
        "all backends take traffic in panic mode: {seen:?}"
    );
    for r in &rs[1..] {
        r.set_fault(Fault::None);
    }
    eventually(LIMIT, "panic over", || !up.in_panic()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_elsewhere_within_the_budget() {
    let stuck = replica("stuck", "a", 8, 0).await;
    let good = replica("good", "b", 8, 0).await;
    stuck.set_fault(Fault::Hang);
    let levee = Setup::new(&[&stuck, &good])
        .server("[server.timeouts]\nread_ms = 300")
        .upstream("balance = \"round_robin\"\nretry_budget = 0.5\n[upstream.health]\neject_after_failures = 0")
        .start()
        .await;
    let addr = levee.addr();
    for _ in 0..4 {
        let r = fetch(addr, get("/x")).await;
        assert_eq!(r.status, 200, "GET is retried on the other backend");
        assert_eq!(r.header("x-replica"), Some("good"));
    }
    // POST may have had effects: never replayed.
    let mut posts = Vec::new();
    for _ in 0..2 {
        let req = http::Request::post("/x")
            .header("host", "t")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        posts.push(fetch(addr, req).await.status);
    }
    posts.sort_unstable();
    assert_eq!(
        posts,
        vec![200, 504],
        "one POST hit the stuck backend and was not retried"
    );
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}

/// A status in `retry_on_status` sends an idempotent request (or one with the
/// idempotency header) to another backend; other requests get the answer as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_in_retry_on_status_are_retried_elsewhere() {
    let bad = replica("bad", "a", 8, 0).await;
    let good = replica("good", "b", 8, 0).await;
    bad.set_fault(Fault::Error500);
    let levee = Setup::new(&[&bad, &good])
        .upstream(
            "balance = \"round_robin\"\nretry_budget = 0.5\nretry_on_status = [500, 502, 503, 504]\n\
             idempotency_header = \"Idempotency-Key\"\n[upstream.health]\neject_after_failures = 0",
        )
        .start()
        .await;
    let addr = levee.addr();
    for i in 0..6 {
        let r = fetch(addr, get(&format!("/g{i}"))).await;
        assert_eq!(r.status, 200, "GET retried on the other backend");
        assert_eq!(r.header("x-replica"), Some("good"));
    }
    let up = levee.app.snapshot().upstreams[0].clone();
    assert!(
        up.metrics.status_retries.get() >= 2,
        "round robin hit bad at least twice"
    );
    let post = |key: Option<&str>| {
        let mut b = http::Request::post("/p").header("host", "t");
        if let Some(k) = key {
            b = b.header("idempotency-key", k);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let mut plain = Vec::new();
    for _ in 0..2 {
        plain.push(fetch(addr, post(None)).await.status);
    }
    plain.sort_unstable();
    assert_eq!(plain, vec![200, 500], "a POST is never retried");
    for i in 0..2 {
        let r = fetch(addr, post(Some(&format!("k{i}")))).await;
        assert_eq!(
            r.status, 200,
            "a POST with the idempotency header is retried"
        );
    }

    // With the default list (502, 503, 504) a 500 is the client's answer.
    let plain_levee = Setup::new(&[&bad, &good])
        .upstream("balance = \"round_robin\"\nretry_budget = 0.5\n[upstream.health]\neject_after_failures = 0")
        .start()
        .await;
    let mut seen = Vec::new();
    for i in 0..2 {
        seen.push(
            fetch(plain_levee.addr(), get(&format!("/d{i}")))
                .await
                .status,
        );
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![200, 500]);
    eventually(LIMIT, "idle", || all_idle(&levee) && all_idle(&plain_levee)).await;
}

/// A zone whose replicas start answering 500 under load: with 500 in
/// `retry_on_status`, the requests that hit it go to the other zone until passive
/// ejection takes it out, and no client sees a failure. The retry budget must cover
/// the failures before the ejections (5 per replica here): the default 0.2 starts with
/// 10 tokens and earns 0.2 a request, which is just short in some runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_zone_fails_no_request_with_500_in_retry_on_status() {
    let a1 = replica("a1", "a", 8, 2).await;
    let a2 = replica("a2", "a", 8, 2).await;
    let b1 = replica("b1", "b", 8, 2).await;
    let b2 = replica("b2", "b", 8, 2).await;
    let levee = zoned(&[(&a1, "a"), (&a2, "a"), (&b1, "b"), (&b2, "b")])
        .upstream("retry_on_status = [500, 502, 503, 504]\nretry_budget = 0.5\n[upstream.limits]\nmax_inflight = 8\nqueue_depth = 64\nqueue_timeout_ms = 2000")
        .start()
        .await;
    let addr = levee.addr();
    a1.set_fault(Fault::Error500);
    a2.set_fault(Fault::Error500);
    // 8 clients, 50 keep-alive requests each: zone b has room for all of them, so a
    // retry always finds a slot there (a retry never waits for one).
    let clients: Vec<_> = (0..8)
        .map(|c| {
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await;
                let mut failed = Vec::new();
                for i in 0..50 {
                    let r = conn.get(&format!("/z/{c}/{i}")).await;
                    if r.status != 200 {
                        failed.push(r.status);
                    }
                }
                failed
            })
        })
        .collect();
    let mut failed = Vec::new();
    for c in clients {
        failed.extend(
            tokio::time::timeout(LIMIT, c)
                .await
                .expect("in time")
                .expect("task"),
        );
    }
    let up = levee.app.snapshot().upstreams[0].clone();
    println!(
        "failing zone: {} status retries, {} failed of 400",
        up.metrics.status_retries.get(),
        failed.len()
    );
    assert!(failed.is_empty(), "clients saw {failed:?}");
    assert!(
        up.metrics.status_retries.get() >= 1,
        "zone a was hit and retried"
    );
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_budget_nothing_is_replayed() {
    let stuck = replica("stuck", "a", 8, 0).await;
    let good = replica("good", "b", 8, 0).await;
    stuck.set_fault(Fault::Hang);
    let levee = Setup::new(&[&stuck, &good])
        .server("[server.timeouts]\nread_ms = 200")
        .upstream("balance = \"round_robin\"\nretry_budget = 0\n[upstream.health]\neject_after_failures = 0")
        .start()
        .await;
    let mut codes = Vec::new();
    for _ in 0..2 {
        codes.push(fetch(levee.addr(), get("/x")).await.status);
    }
    codes.sort_unstable();
    assert_eq!(codes, vec![200, 504]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_moves_only_the_failed_backends_keys() {
    let rs = [
        replica("r1", "a", 8, 0).await,
        replica("r2", "a", 8, 0).await,
        replica("r3", "b", 8, 0).await,
        replica("r4", "b", 8, 0).await,
    ];
    let levee = Setup::new(&rs.iter().collect::<Vec<_>>())
        .upstream(&format!(
            "balance = \"consistent_hash\"\naffinity = \"header:x-session\"\n{CHECKS}"
        ))
        .start()
        .await;
    let mut c = Conn::open(levee.addr()).await;
    let mut before = Vec::new();
    for k in 0..1000 {
        let key = format!("session-{k}");
        let r = c.request(get_with("/s", &[("x-session", &key)])).await;
        before.push(r.header("x-replica").unwrap().to_string());
    }
    // Same key, same backend.
    for k in [0usize, 17, 999] {
        let key = format!("session-{k}");
        let r = c.request(get_with("/s", &[("x-session", &key)])).await;
        assert_eq!(r.header("x-replica").unwrap(), before[k]);
    }
    rs[2].set_fault(Fault::Health500);
    eventually(LIMIT, "r3 down", || state(&levee, 2) == State::Unhealthy).await;
    let mut moved = 0;
    for (k, was) in before.iter().enumerate() {
        let key = format!("session-{k}");
        let r = c.request(get_with("/s", &[("x-session", &key)])).await;
        let now = r.header("x-replica").unwrap();
        if was == "r3" {
            assert_ne!(now, "r3");
            moved += 1;
        } else {
            assert_eq!(now, was, "a key of a healthy backend moved");
        }
    }
    println!("affinity: {moved} of 1000 keys moved (1/N = 250)");
    assert!((150..=350).contains(&moved), "moved {moved}");
}
