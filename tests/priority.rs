//! Priority under overload through real sockets: real replicas with a slow service
//! time, levee on `127.0.0.1:0` with `[[priority]]` rules on an `x-priority` header,
//! and bounded closed-loop clients. Waiters are served in class order, so a trickle of
//! `critical` requests is served whole through a queue that stands for `normal`
//! ones, and with every class overloading the upstream the served shares follow the
//! classes.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use levee::config::Class;
use levee::demo::replica::Replica;

const LIMIT: Duration = Duration::from_secs(10);
/// Replica service time: 2 replicas x 4 slots of 40 ms serve about 200 requests/s.
const SERVICE_MS: u64 = 40;
const SLOTS: usize = 8;
/// The queue absorbs bursts for up to 500 ms, and holds waits to 20 ms once a class
/// stands.
const LIMITS: &str = "[upstream.limits]\nmax_inflight = 4\nqueue_depth = 200\n\
                      queue_timeout_ms = 500\nqueue_target_ms = 20\nqueue_interval_ms = 100";
const CLASSES: [(&str, Class); 4] = [
    ("critical", Class::Critical),
    ("high", Class::High),
    ("normal", Class::Normal),
    ("low", Class::Low),
];

fn rules() -> String {
    CLASSES
        .iter()
        .filter(|(_, c)| *c != Class::Normal)
        .map(|(name, _)| {
            format!(
                "[[priority]]\nmatch = {{ header = \"x-priority:{name}\" }}\nclass = \"{name}\"\n"
            )
        })
        .collect()
}

async fn replicas() -> [Replica; 2] {
    [
        replica("r1", "a", 4, SERVICE_MS).await,
        replica("r2", "a", 4, SERVICE_MS).await,
    ]
}

/// levee in front of `backends` with this file's limits and class rules.
async fn levee_on(backends: &[&Replica]) -> levee::app::Running {
    Setup::new(backends)
        .upstream(LIMITS)
        .tail(&rules())
        .start()
        .await
}

async fn scrape(admin: SocketAddr) -> String {
    let reply = fetch(admin, get("/metrics")).await;
    assert_eq!(reply.status, 200);
    String::from_utf8(reply.body.to_vec()).expect("utf-8 metrics")
}

/// The sum of a family's samples whose labels contain every `needle`.
fn sum(metrics: &str, name: &str, needles: &[&str]) -> f64 {
    samples(metrics, name)
        .into_iter()
        .filter(|(labels, _)| needles.iter().all(|n| labels.contains(n)))
        .map(|(_, v)| v)
        .sum()
}

/// `clients` closed-loop clients of class `name`, at most `max` requests each.
fn class_load(addr: SocketAddr, name: &str, clients: usize, max: u32) -> Load {
    Load::start_with(
        addr,
        clients,
        Duration::from_millis(25),
        LIMIT,
        max,
        &[("x-priority", name)],
        |_| {},
    )
}

/// About 4x the upstream's capacity of `normal` requests from 24 clients makes the
/// queue stand for `normal`; then 60 `critical` requests, one at a time, go through
/// it. Every one is served, after waiting at most about a service time (they wait
/// only for a slot, ahead of every normal waiter), while normal's excess is shed
/// at its short allowed wait; the critical class never stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_of_critical_requests_is_served_through_a_standing_queue() {
    let [r1, r2] = replicas().await;
    let levee = levee_on(&[&r1, &r2]).await;
    let (addr, admin) = (levee.addr(), levee.admin_addr.expect("admin listener"));
    let up = levee.app.snapshot().upstreams[0].clone();

    let normal = Load::start(addr, 24, Duration::from_millis(25), LIMIT);
    eventually(LIMIT, "the queue stands for normal", || {
        up.queue.is_standing_for(Class::Normal)
    })
    .await;
    let before = scrape(admin).await;
    let mut c = Conn::open(addr).await;
    let mut statuses = Vec::new();
    let mut critical_stood = false;
    let mut normal_stood = true;
    for _ in 0..60 {
        let reply = c
            .request(get_with("/critical", &[("x-priority", "critical")]))
            .await;
        statuses.push(reply.status);
        critical_stood |= up.queue.is_standing_for(Class::Critical);
        normal_stood &= up.queue.is_standing_for(Class::Normal);
    }
    let status = fetch(admin, get("/status")).await.json();
    let after = scrape(admin).await;
    let (ok, shed) = normal.stop().await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    assert!(
        statuses.iter().all(|s| *s == 200),
        "every critical request served: {statuses:?}"
    );
    assert!(!critical_stood, "the critical class never stood");
    assert!(normal_stood, "normal stood throughout");
    assert!(ok > 100 && shed > 100, "normal: served {ok}, shed {shed}");
    let critical = "priority=\"critical\"";
    assert_eq!(sum(&after, "levee_shed_total", &[critical]), 0.0);
    // The normal excess went at normal's short allowed wait.
    let standing = ["reason=\"queue_standing\"", "priority=\"normal\""];
    assert!(
        sum(&after, "levee_shed_total", &standing) > sum(&before, "levee_shed_total", &standing)
    );
    // The critical requests' waits: counted under their class, none longer than two
    // service times (the 500 ms timeout is what a FIFO behind normal would allow).
    let class = "class=\"critical\"";
    let count = |m: &str, le: &str| {
        sum(
            m,
            "levee_queue_wait_seconds_bucket",
            &[class, &format!("le=\"{le}\"")],
        )
    };
    let waited = count(&after, "+Inf") - count(&before, "+Inf");
    let within = count(&after, "0.1") - count(&before, "0.1");
    assert!(waited >= 30.0, "{waited} critical requests waited");
    assert_eq!(within, waited, "critical waits within 100 ms");
    // The status page's view by class, highest class first.
    let classes = &status["upstreams"][0]["queue_classes"];
    assert_eq!(classes[0]["class"], "critical", "{classes}");
    assert_eq!(classes[0]["standing"], false, "{classes}");
    assert_eq!(classes[0]["allowed_wait_ms"], 500.0, "{classes}");
    assert_eq!(classes[2]["class"], "normal", "{classes}");
    assert_eq!(classes[2]["standing"], true, "{classes}");
    assert_eq!(classes[2]["allowed_wait_ms"], 20.0, "{classes}");
    assert!(classes[0]["waited"].as_u64().unwrap_or(0) >= 1, "{classes}");
    for r in [&r1, &r2] {
        assert!(r.stats().peak_inflight <= 4);
    }
}

/// Every class at once, in equal shares, 5x the slots in all (10 closed-loop clients
/// a class on 8 slots): the share of each class's requests served follows the class
/// order, and every critical request is served. (Critical alone keeps more requests
/// going than there are slots, so the lower classes get what it leaves: little.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_four_classes_at_five_times_are_served_in_class_order() {
    let [r1, r2] = replicas().await;
    let levee = levee_on(&[&r1, &r2]).await;
    let addr = levee.addr();
    let up = levee.app.snapshot().upstreams[0].clone();
    let per_class = 5 * SLOTS / CLASSES.len();

    // The critical clients first, so that which class the first slots go to is not
    // a race; bounded: their requests end the run, and the others stop then.
    let critical = class_load(addr, "critical", per_class, 30);
    eventually(LIMIT, "every slot taken", || up.inflight() == SLOTS as u32).await;
    let others: Vec<Load> = CLASSES[1..]
        .iter()
        .map(|(name, _)| class_load(addr, name, per_class, 10_000))
        .collect();
    let (c_ok, c_shed) = critical.finish(false).await;
    let mut shares = vec![(c_ok, c_shed)];
    for load in others {
        shares.push(load.stop().await);
    }
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    let served: Vec<f64> = shares
        .iter()
        .map(|(ok, shed)| f64::from(*ok) / f64::from((ok + shed).max(1)))
        .collect();
    eprintln!("served (ok, shed) critical, high, normal, low: {shares:?} = {served:.3?}");
    assert_eq!(c_shed, 0, "every critical request served");
    assert!(c_ok >= 100, "critical: {c_ok} served");
    assert!(
        served.windows(2).all(|w| w[0] >= w[1]),
        "served shares follow the classes: {served:.3?} ({shares:?})"
    );
    for r in [&r1, &r2] {
        assert!(r.stats().peak_inflight <= 4);
    }
}
