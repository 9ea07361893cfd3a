//! The data path through real sockets: proxying, streaming, bodies, the hard cap,
//! the queue, shedding by level and class, and slots released after every outcome.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use levee::demo::replica::Fault;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_with_forwarded_headers_and_without_hop_by_hop() {
    let r = replica("r1", "a", 4, 1).await;
    let levee = Setup::new(&[&r]).start().await;
    let mut c = Conn::open(levee.addr()).await;
    let reply = c
        .request(get_with(
            "/echo?echo=1",
            &[
                ("connection", "keep-alive, x-secret"),
                ("x-secret", "hop"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "end-to-end"),
            ],
        ))
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-replica"), Some("r1"));
    let v = reply.json();
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{v}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-kept"], "end-to-end");
    for hop in ["x-secret", "keep-alive", "te", "proxy-connection"] {
        assert!(h.get(hop).is_none(), "{hop} was forwarded: {v}");
    }
    // The same connection serves a second request.
    assert_eq!(c.get("/again").await.status, 200);
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_routes_and_unknown_paths_get_404() {
    let a = replica("a1", "a", 2, 1).await;
    let b = replica("b1", "a", 2, 1).await;
    let toml = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[upstream]]\nname = \"api\"\nroutes = [\"/api/\"]\n[[upstream.backend]]\naddress = \"{}\"\n\n[[upstream]]\nname = \"v2\"\nroutes = [\"/api/v2/\"]\n[[upstream.backend]]\naddress = \"{}\"\n",
        a.addr(),
        b.addr()
    );
    let levee = levee::app::start(levee::config::parse(&toml).unwrap())
        .await
        .unwrap();
    assert_eq!(
        fetch(levee.addr(), get("/api/x")).await.header("x-replica"),
        Some("a1")
    );
    assert_eq!(
        fetch(levee.addr(), get("/api/v2/x"))
            .await
            .header("x-replica"),
        Some("b1")
    );
    let miss = fetch(levee.addr(), get("/other")).await;
    assert_eq!(miss.status, 404);
    assert_eq!(miss.json()["error"], "no_route");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_arrive_intact() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r]).start().await;
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut fnv: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &body {
        fnv ^= u64::from(*b);
        fnv = fnv.wrapping_mul(0x0100_0000_01b3);
    }
    let req = http::Request::post("/rpc")
        .header("host", "t")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let reply = fetch(levee.addr(), req).await;
    assert_eq!(reply.status, 200);
    let v = reply.json();
    assert_eq!(v["bytes"], body.len() as u64);
    assert_eq!(v["fnv1a"], format!("{fnv:016x}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_reach_the_client_event_by_event_and_hold_a_slot() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r]).start().await;
    let mut c = Conn::open(levee.addr()).await;
    let start = Instant::now();
    let resp = c.send(get("/sse?events=4&interval_ms=150")).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut arrivals = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Some(data) = frame.data_ref() {
            if !data.is_empty() {
                arrivals.push((start.elapsed(), String::from_utf8_lossy(data).to_string()));
                if arrivals.len() == 1 {
                    let up = &levee.app.snapshot().upstreams[0];
                    assert_eq!(up.inflight(), 1, "a live stream holds its slot");
                }
            }
        }
    }
    let text: String = arrivals.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(text.matches("data:").count(), 4, "{text}");
    let first = arrivals.first().unwrap().0;
    let last = arrivals.last().unwrap().0;
    assert!(
        last - first >= Duration::from_millis(300),
        "events arrived together ({first:?} .. {last:?}): buffered"
    );
    eventually(LIMIT, "stream slot released", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_never_see_more_than_their_cap_under_ten_times_concurrency() {
    // 20 ms of service: long enough that the first burst fills every slot even on a
    // loaded machine (with 5 ms, a replica could finish before levee sent its 4th).
    let r1 = replica("r1", "a", 4, 20).await;
    let r2 = replica("r2", "a", 4, 20).await;
    let levee = Setup::new(&[&r1, &r2])
        .upstream("[upstream.limits]\nmax_inflight = 4\nqueue_depth = 100\nqueue_timeout_ms = 5000")
        .start()
        .await;
    let addr = levee.addr();
    // 80 clients against 8 slots, 5 requests each.
    let clients: Vec<_> = (0..80)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Conn::open(addr).await;
                let mut codes = Vec::new();
                for _ in 0..5 {
                    codes.push(c.get("/work").await.status);
                }
                codes
            })
        })
        .collect();
    let mut ok = 0;
    let mut shed = 0;
    for c in clients {
        for code in c.await.unwrap() {
            match code {
                200 => ok += 1,
                503 => shed += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    assert_eq!(ok + shed, 400);
    assert!(ok > 0);
    for r in [&r1, &r2] {
        let peak = r.stats().peak_inflight;
        assert!(
            peak <= 4,
            "replica saw {peak} concurrent requests, cap is 4"
        );
    }
    assert_eq!(
        r1.stats().peak_inflight.max(r2.stats().peak_inflight),
        4,
        "cap was reached"
    );
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_is_bounded_and_times_out_with_retry_after() {
    let r = replica("r1", "a", 1, 0).await;
    let levee = Setup::new(&[&r])
        .upstream(
            "[upstream.limits]\nmax_inflight = 1\nqueue_depth = 2\nqueue_timeout_ms = 300\n\
             [upstream.levels]\ncaution = { utilization = 0.99 }\ndanger = { p95_ms = 60000 }",
        )
        .start()
        .await;
    let addr = levee.addr();
    let up = levee.app.snapshot().upstreams[0].clone();
    let holder = tokio::spawn(async move { fetch(addr, get("/hold?ms=1500")).await.status });
    eventually(LIMIT, "slot taken", || up.inflight() == 1).await;
    let waiters: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { (Instant::now(), fetch(addr, get("/x")).await) }))
        .collect();
    eventually(LIMIT, "two waiting", || up.queue.len() == 2).await;
    let started = Instant::now();
    let full = fetch(addr, get("/x")).await;
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "a full queue sheds at once"
    );
    assert_eq!(full.status, 503);
    assert_eq!(full.json()["reason"], "queue_full");
    assert_eq!(
        full.json()["level"],
        "critical",
        "a full queue is the critical level"
    );
    for w in waiters {
        let (sent, reply) = w.await.unwrap();
        assert_eq!(reply.status, 503);
        let v = reply.json();
        assert_eq!(v["reason"], "queue_timeout");
        assert_eq!(v["upstream"], "app");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let waited = sent.elapsed();
        assert!(
            waited >= Duration::from_millis(280),
            "shed before the queue timeout: {waited:?}"
        );
        let ra: u32 = reply
            .header("retry-after")
            .expect("retry-after")
            .parse()
            .unwrap();
        assert!((1..=30).contains(&ra), "retry-after {ra}");
    }
    assert_eq!(holder.await.unwrap(), 200);
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

/// A request that would wait past `queue_timeout` at the rate the backend finishes
/// requests gets its 503 at once instead of after the wait; one that would be served
/// in time still waits and is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_longer_than_the_queue_timeout_is_shed_at_once() {
    let r = replica("r1", "a", 2, 0).await;
    let levee = Setup::new(&[&r])
        .upstream(
            "[upstream.limits]\nmax_inflight = 1\nqueue_depth = 8\nqueue_timeout_ms = 400\n\
             [upstream.levels]\nmin_samples = 2\nwindow_ms = 3000\ncaution = { utilization = 0.99 }\n\
             danger = { p95_ms = 60000 }",
        )
        .start()
        .await;
    let addr = levee.addr();
    let up = levee.app.snapshot().upstreams[0].clone();

    // Requests take ~150 ms: one waiting request is served within 400 ms.
    for _ in 0..3 {
        assert_eq!(fetch(addr, get("/x?ms=150")).await.status, 200);
    }
    eventually(LIMIT, "service rate known", || up.service_rate() > 0.0).await;
    let holder = tokio::spawn(async move { fetch(addr, get("/x?ms=150")).await.status });
    eventually(LIMIT, "slot taken", || up.inflight() == 1).await;
    assert_eq!(
        fetch(addr, get("/x?ms=150")).await.status,
        200,
        "queued and served"
    );
    assert_eq!(holder.await.unwrap(), 200);

    // Requests now take ~1 s: waiting for the slot would outlast the 400 ms timeout.
    for _ in 0..4 {
        assert_eq!(fetch(addr, get("/x?ms=1000")).await.status, 200);
    }
    eventually(LIMIT, "service rate updated", || {
        up.service_rate() > 0.0 && up.service_rate() < 1.0 / 0.4
    })
    .await;
    let holder = tokio::spawn(async move { fetch(addr, get("/x?ms=1000")).await.status });
    eventually(LIMIT, "slot taken", || up.inflight() == 1).await;
    let started = Instant::now();
    let shed = fetch(addr, get("/x")).await;
    let took = started.elapsed();
    assert_eq!(shed.status, 503);
    assert_eq!(shed.json()["reason"], "queue_timeout");
    assert!(
        took < Duration::from_millis(400),
        "shed after {took:?}: it waited instead of being shed at once"
    );
    assert_eq!(holder.await.unwrap(), 200);
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_shed_by_class_and_the_connection_stays_usable() {
    let r = replica("r1", "a", 1, 0).await;
    let levee = Setup::new(&[&r])
        .upstream(
            "[upstream.limits]\nmax_inflight = 1\nqueue_depth = 10\nqueue_timeout_ms = 5000\n\
             [upstream.levels]\ncaution = { queue = 1 }\ndanger = { queue = 3 }",
        )
        .tail(
            "[[priority]]\nmatch = { header = \"x-priority:low\" }\nclass = \"low\"\n\
               [[priority]]\nmatch = { header = \"x-priority:high\" }\nclass = \"high\"",
        )
        .start()
        .await;
    let addr = levee.addr();
    let up = levee.app.snapshot().upstreams[0].clone();
    let holder = tokio::spawn(async move { fetch(addr, get("/hold?ms=1500")).await.status });
    eventually(LIMIT, "slot taken", || up.inflight() == 1).await;

    // Safe: low may wait. It joins the queue, which raises the level to caution.
    let low_waiter = tokio::spawn(async move {
        fetch(addr, get_with("/x", &[("x-priority", "low")]))
            .await
            .status
    });
    eventually(LIMIT, "low queued", || up.queue.len() == 1).await;

    // Caution: a new low is shed at once, on a connection that stays usable.
    let mut c = Conn::open(addr).await;
    let shed = c.request(get_with("/x", &[("x-priority", "low")])).await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.json()["level"], "caution");
    assert_eq!(shed.json()["reason"], "low_priority");
    let health_of_conn = c.request(get_with("/x", &[("x-priority", "low")])).await;
    assert_eq!(
        health_of_conn.status, 503,
        "second request on the same connection answered"
    );

    // Normal still waits at caution.
    let normals: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { fetch(addr, get("/x")).await.status }))
        .collect();
    eventually(LIMIT, "three queued", || up.queue.len() == 3).await;

    // Danger: normal may not wait, high may.
    let no_queue = c.get("/x").await;
    assert_eq!(no_queue.status, 503);
    assert_eq!(no_queue.json()["level"], "danger");
    assert_eq!(no_queue.json()["reason"], "level_no_queue");
    let high = tokio::spawn(async move {
        fetch(addr, get_with("/x", &[("x-priority", "high")]))
            .await
            .status
    });
    eventually(LIMIT, "high queued", || up.queue.len() == 4).await;

    assert_eq!(holder.await.unwrap(), 200);
    // Everyone who waited is served in turn.
    assert_eq!(low_waiter.await.unwrap(), 200);
    for n in normals {
        assert_eq!(n.await.unwrap(), 200);
    }
    assert_eq!(high.await.unwrap(), 200);
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
    let metrics = levee.app.metrics.encode();
    assert!(
        metrics.contains(
            "levee_shed_total{priority=\"low\",reason=\"low_priority\",upstream=\"app\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_return_to_zero_after_every_outcome() {
    let good = replica("good", "a", 4, 0).await;
    let levee = Setup::new(&[&good])
        .server("[server.timeouts]\nread_ms = 300\nresponse_ms = 2000")
        .upstream("[upstream.limits]\nmax_inflight = 2\nqueue_depth = 0")
        .start()
        .await;
    let addr = levee.addr();

    // Success.
    assert_eq!(fetch(addr, get("/ok")).await.status, 200);
    eventually(LIMIT, "idle after success", || all_idle(&levee)).await;

    // Backend error status passes through.
    assert_eq!(fetch(addr, get("/e?status=500")).await.status, 500);
    eventually(LIMIT, "idle after 500", || all_idle(&levee)).await;

    // Backend timeout: the replica hangs.
    good.set_fault(Fault::Hang);
    let t = fetch(addr, get("/hang")).await;
    assert_eq!(t.status, 504, "{:?}", String::from_utf8_lossy(&t.body));
    eventually(LIMIT, "idle after timeout", || all_idle(&levee)).await;
    good.set_fault(Fault::None);

    // Client abort mid-request.
    let up = levee.app.snapshot().upstreams[0].clone();
    let aborted = tokio::spawn(async move { fetch(addr, get("/slow?ms=2000")).await });
    eventually(LIMIT, "slot taken", || up.inflight() == 1).await;
    aborted.abort();
    eventually(LIMIT, "idle after client abort", || all_idle(&levee)).await;

    // Shed: both slots held, no queue.
    let holders: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { fetch(addr, get("/hold?ms=150")).await.status }))
        .collect();
    eventually(LIMIT, "both slots taken", || up.inflight() == 2).await;
    assert_eq!(fetch(addr, get("/x")).await.status, 503);
    for h in holders {
        assert_eq!(h.await.unwrap(), 200);
    }
    eventually(LIMIT, "idle after shed", || all_idle(&levee)).await;
}

/// The slot is released at the backend's end of stream, before the last bytes reach
/// the client: a client holding its whole response never finds that slot still taken,
/// so back-to-back requests over one connection to a backend with one slot never queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slot_is_free_once_the_client_has_its_response() {
    let r = replica("r", "a", 1, 0).await;
    let levee = Setup::new(&[&r])
        .upstream("[upstream.limits]\nmax_inflight = 1\nqueue_depth = 0")
        .start()
        .await;
    let up = levee.app.snapshot().upstreams[0].clone();
    let mut conn = Conn::open(levee.addr()).await;
    for i in 0..200 {
        let path = if i % 2 == 0 { "/x" } else { "/x?status=500" };
        let reply = conn.get(path).await;
        assert_ne!(reply.status, 503, "request {i} was shed: {:?}", reply.body);
        assert_eq!(up.inflight(), 0, "slot still taken after response {i}");
    }
}

/// A connect that fails while every other backend is full is an overload, not a bad
/// gateway: 503 with Retry-After, and nothing reached a backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_connect_with_every_other_backend_full_gets_503() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = replica("live", "b", 4, 0).await;
    let mut setup = Setup::new(&[&live]).upstream(
        "retry_on_connect_failure = 1\n[upstream.limits]\nmax_inflight = 1\nqueue_depth = 0",
    );
    setup.backends.insert(0, (dead, "a".into()));
    let levee = setup.start().await;
    let addr = levee.addr();
    let up = levee.app.snapshot().upstreams[0].clone();
    let holder = tokio::spawn(async move { fetch(addr, get("/hold?ms=1500")).await });
    eventually(LIMIT, "the live slot taken", || {
        up.backends[1].inflight() == 1
    })
    .await;
    let reply = fetch(addr, get("/x")).await;
    assert_eq!(
        reply.status,
        503,
        "{:?}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["error"], "no_retry_slot");
    assert!(reply.header("retry-after").is_some());
    let held = holder.await.unwrap();
    assert_eq!(held.status, 200);
    assert_eq!(held.header("x-replica"), Some("live"));
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_retry_on_another_backend() {
    // A port that refuses connections: bind, note the address, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let live = replica("live", "b", 4, 0).await;
    let mut setup =
        Setup::new(&[&live]).upstream("retry_on_connect_failure = 1\nbalance = \"round_robin\"");
    setup.backends.insert(0, (dead, "a".into()));
    let levee = setup.start().await;
    for _ in 0..6 {
        let reply = fetch(levee.addr(), get("/x")).await;
        assert_eq!(
            reply.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(reply.header("x-replica"), Some("live"));
    }
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_that_ends_the_connection_says_so() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let r = replica("r1", "a", 1, 0).await;
    let mut setup = Setup::new(&[&r]).upstream("retry_on_connect_failure = 0");
    setup.backends = vec![(dead, "a".into())];
    let levee = setup.start().await;
    let reply = fetch(levee.addr(), get("/x")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(
        reply.header("connection").map(|v| v.to_ascii_lowercase()),
        Some("close".to_string()),
        "a client must not reuse a connection levee is about to close"
    );
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}
