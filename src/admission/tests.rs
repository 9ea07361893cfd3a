use std::sync::Arc;
use std::time::Duration;

use super::level::Level;
use super::*;
use crate::config::{self, Balance, Class, Levels, Limits, Protocol, Thresholds};
use crate::metrics::Metrics;
use crate::state::Upstream;

fn server() -> config::Server {
    config::Server {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        tls: None,
        threads: 1,
        runtime: config::RuntimeLayout::default(),
        zone: None,
        admin_listen: None,
        grace_period: Duration::from_secs(1),
        timeouts: config::Timeouts {
            connect: Duration::from_secs(1),
            read: Duration::from_secs(1),
            write: Duration::from_secs(1),
            response: Duration::from_secs(1),
            stream_idle: Duration::from_secs(1),
            client_header: Duration::from_secs(1),
            client_idle: Duration::from_secs(1),
            upstream_idle: Duration::from_secs(1),
        },
        max_request_body_bytes: 0,
        max_header_bytes: config::DEFAULT_MAX_HEADER_BYTES,
        retry_after_max_secs: 30,
        upgrade_sock: config::DEFAULT_UPGRADE_SOCK.into(),
        max_connections: 0,
        max_connections_per_ip: 0,
        access_log: false,
        proxy_protocol: false,
        trusted_proxies: Default::default(),
        dns: Default::default(),
        tracing: None,
    }
}

/// An upstream of `n` backends with `per` slots each.
fn upstream(n: usize, per: u32, queue_depth: u32, timeout_ms: u64) -> Arc<Upstream> {
    upstream_in(config::Mode::Enforce, n, per, queue_depth, timeout_ms)
}

/// [`upstream`] with fairness between clients.
fn fair(n: usize, per: u32, queue_depth: u32, mode: config::Mode) -> Arc<Upstream> {
    let up = upstream_in(mode, n, per, queue_depth, 10_000);
    let mut next = Upstream::renew(&cfg_of(&up, true), &server(), &Metrics::new(), &up);
    next.limits.mode = mode;
    Arc::new(next)
}

/// The config `up` was built from, with fairness by header `x-tenant` when `fair`.
fn cfg_of(up: &Upstream, fair: bool) -> config::Upstream {
    config::Upstream {
        name: up.name.clone(),
        hosts: Vec::new(),
        routes: vec!["/".into()],
        protocol: Protocol::H1,
        balance: up.balance,
        affinity: None,
        retry_on_connect_failure: 1,
        retry_budget: 0.2,
        retry_on_status: config::DEFAULT_RETRY_ON_STATUS.to_vec(),
        idempotency_header: None,
        limits: up.limits,
        levels: up.levels,
        health: up.health.clone(),
        fairness: fair.then(|| config::Fairness {
            key: config::ClientKey::Header("x-tenant".into()),
        }),
        scaling: Default::default(),
        adaptive: None,
        named: Vec::new(),
        backends: up
            .backends
            .iter()
            .map(|b| config::Backend {
                address: b.address,
                zone: b.zone.clone(),
                max_inflight: b.max_inflight(),
                from: None,
            })
            .collect(),
    }
}

async fn admit_as(up: &Arc<Upstream>, client: u64) -> Result<Permit, Shed> {
    up.admit(Class::Normal, None, Some(client), rand::random())
        .await
}

const A: u64 = 0xa;
const B: u64 = 0xb;

fn upstream_in(
    mode: config::Mode,
    n: usize,
    per: u32,
    queue_depth: u32,
    timeout_ms: u64,
) -> Arc<Upstream> {
    let cfg = config::Upstream {
        name: "u".into(),
        hosts: Vec::new(),
        routes: vec!["/".into()],
        protocol: Protocol::H1,
        balance: Balance::LeastInflight,
        affinity: None,
        retry_on_connect_failure: 1,
        retry_budget: 0.2,
        retry_on_status: config::DEFAULT_RETRY_ON_STATUS.to_vec(),
        idempotency_header: None,
        limits: Limits {
            max_inflight: per,
            queue_depth,
            queue_timeout: Duration::from_millis(timeout_ms),
            queue_target: Duration::from_millis(5).min(Duration::from_millis(timeout_ms)),
            queue_interval: Duration::from_millis(100),
            mode,
        },
        levels: Levels {
            caution: Thresholds {
                queue: Some(4),
                ..Default::default()
            },
            danger: Thresholds {
                queue: Some(8),
                ..Default::default()
            },
            cooldown: Duration::from_millis(1000),
            window: Duration::from_secs(5),
            min_samples: 20,
        },
        health: config::Health {
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
            eject_after_failures: 0,
            eject: Duration::from_secs(1),
            slow_start: Duration::ZERO,
            ..config::Health::DEFAULT
        },
        fairness: None,
        scaling: Default::default(),
        adaptive: None,
        named: Vec::new(),
        backends: (0..n)
            .map(|i| config::Backend {
                address: format!("127.0.0.1:{}", 2000 + i).parse().unwrap(),
                zone: "a".into(),
                max_inflight: per,
                from: None,
            })
            .collect(),
    };
    Arc::new(Upstream::new(&cfg, &server(), &Metrics::new()))
}

/// [`upstream`] with `limits.mode = "shadow"`.
fn shadow(n: usize, per: u32, queue_depth: u32, timeout_ms: u64) -> Arc<Upstream> {
    upstream_in(config::Mode::Shadow, n, per, queue_depth, timeout_ms)
}

async fn admit(up: &Arc<Upstream>, class: Class) -> Result<Permit, Shed> {
    up.admit(class, None, None, rand::random()).await
}

/// Polls (without sleeping through time) until `n` requests wait in the queue.
async fn until_queued(up: &Upstream, n: u32) {
    for _ in 0..10_000 {
        if up.queue.len() == n {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("queue never reached {n} (at {})", up.queue.len());
}

#[tokio::test]
async fn slots_then_queue_then_handoff_in_order() {
    let up = upstream(2, 1, 10, 10_000);
    let a = admit(&up, Class::Normal).await.unwrap();
    let b = admit(&up, Class::Normal).await.unwrap();
    assert_ne!(a.backend_index(), b.backend_index(), "p2c spreads");
    assert_eq!(up.inflight(), 2);

    let (u1, u2) = (up.clone(), up.clone());
    let w1 = tokio::spawn(async move { admit(&u1, Class::Normal).await });
    until_queued(&up, 1).await;
    let w2 = tokio::spawn(async move { admit(&u2, Class::Normal).await });
    until_queued(&up, 2).await;

    let freed = a.backend_index();
    drop(a);
    let p1 = w1.await.unwrap().expect("first waiter gets the freed slot");
    assert_eq!(p1.backend_index(), freed);
    assert_eq!(up.queue.len(), 1, "second still waits");
    assert_eq!(up.inflight(), 2, "handed over, never above the cap");
    drop(b);
    let p2 = w2.await.unwrap().unwrap();
    drop((p1, p2));
    assert_eq!(up.inflight(), 0);
    assert!(up.queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn queue_is_bounded_and_times_out() {
    let up = upstream(1, 1, 2, 250);
    let held = admit(&up, Class::High).await.unwrap();
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let u = up.clone();
            tokio::spawn(async move { admit(&u, Class::High).await })
        })
        .collect();
    until_queued(&up, 2).await;
    let full = admit(&up, Class::High).await.unwrap_err();
    assert_eq!(full.reason, ShedReason::QueueFull);
    for w in waiters {
        let shed = w.await.unwrap().unwrap_err();
        assert_eq!(shed.reason, ShedReason::QueueTimeout);
    }
    assert!(up.queue.is_empty());
    drop(held);
    assert_eq!(up.inflight(), 0);
}

#[tokio::test]
async fn dropped_waiter_leaves_the_queue_and_its_slot_goes_on() {
    let up = upstream(1, 1, 10, 10_000);
    let held = admit(&up, Class::Normal).await.unwrap();
    let u = up.clone();
    let gone = tokio::spawn(async move { admit(&u, Class::Normal).await });
    until_queued(&up, 1).await;
    let u = up.clone();
    let next = tokio::spawn(async move { admit(&u, Class::Normal).await });
    until_queued(&up, 2).await;
    gone.abort(); // the client went away while waiting
    let _ = gone.await;
    assert_eq!(up.queue.len(), 1);
    drop(held);
    let p = next.await.unwrap().unwrap();
    assert_eq!(up.inflight(), 1);
    drop(p);
    assert_eq!(up.inflight(), 0);
}

#[tokio::test]
async fn low_is_shed_from_caution_even_with_free_slots() {
    let up = upstream(2, 1, 10, 10_000);
    up.level_state
        .update(Level::Caution, std::time::Instant::now(), Duration::ZERO);
    let shed = admit(&up, Class::Low).await.unwrap_err();
    assert_eq!(
        (shed.reason, shed.level),
        (ShedReason::LowPriority, Level::Caution)
    );
    assert!(shed.retry_after >= 1 && shed.retry_after <= 30);
    // Work-conserving: normal takes the free slots at caution.
    let _a = admit(&up, Class::Normal).await.unwrap();
    let _b = admit(&up, Class::Normal).await.unwrap();
}

#[tokio::test]
async fn danger_stops_normal_from_waiting_but_not_high() {
    let up = upstream(1, 1, 10, 10_000);
    up.level_state
        .update(Level::Danger, std::time::Instant::now(), Duration::ZERO);
    let held = admit(&up, Class::Normal)
        .await
        .expect("a free slot is always used");
    let shed = admit(&up, Class::Normal).await.unwrap_err();
    assert_eq!(shed.reason, ShedReason::LevelNoQueue);
    let u = up.clone();
    let high = tokio::spawn(async move { admit(&u, Class::High).await });
    until_queued(&up, 1).await;
    drop(held);
    drop(high.await.unwrap().unwrap());
    assert_eq!(up.inflight(), 0);
}

#[tokio::test]
async fn critical_displaces_the_lowest_class_from_a_full_queue() {
    let up = upstream(1, 1, 2, 10_000);
    let held = admit(&up, Class::Normal).await.unwrap();
    let u = up.clone();
    let high = tokio::spawn(async move { admit(&u, Class::High).await });
    until_queued(&up, 1).await;
    let u = up.clone();
    let normal = tokio::spawn(async move { admit(&u, Class::Normal).await });
    until_queued(&up, 2).await;
    assert_eq!(up.level(), Level::Critical, "a full queue is critical");
    assert_eq!(
        admit(&up, Class::High).await.unwrap_err().reason,
        ShedReason::QueueFull
    );
    let u = up.clone();
    let critical = tokio::spawn(async move { admit(&u, Class::Critical).await });
    let displaced = normal.await.unwrap().unwrap_err();
    assert_eq!(displaced.reason, ShedReason::Displaced);
    drop(held);
    // Class order among those left: critical first, though high joined earlier.
    let c = critical.await.unwrap().unwrap();
    assert_eq!(up.queue.len(), 1, "high still waits");
    drop(c);
    drop(high.await.unwrap().unwrap());
    assert_eq!(up.inflight(), 0);
    assert!(up.queue.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cap_holds_under_ten_times_concurrency() {
    let up = upstream(3, 4, 200, 5_000);
    let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let tasks: Vec<_> = (0..120)
        .map(|_| {
            let up = up.clone();
            let peak = peak.clone();
            tokio::spawn(async move {
                let p = admit(&up, Class::High).await?;
                let per_backend = p.backend().inflight();
                assert!(per_backend <= 4, "backend over its cap: {per_backend}");
                peak.fetch_max(up.inflight(), std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                drop(p);
                Ok::<_, Shed>(())
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            admitted += 1;
        }
    }
    assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 12);
    assert_eq!(
        admitted, 120,
        "all fit through the queue within its timeout"
    );
    assert_eq!(up.inflight(), 0);
    assert!(up.queue.is_empty());
}

#[test]
fn may_wait_follows_the_design_table() {
    let table = [
        (Level::Safe, [true, true, true, true]),
        (Level::Caution, [false, true, true, true]),
        (Level::Danger, [false, false, true, true]),
        (Level::Critical, [false, false, false, true]),
    ];
    let classes = [Class::Low, Class::Normal, Class::High, Class::Critical];
    for (level, row) in table {
        for (class, want) in classes.into_iter().zip(row) {
            assert_eq!(may_wait(level, class), want, "{level:?} {class:?}");
        }
    }
}

/// What one request of a simulated load met: when it arrived and finished (virtual
/// milliseconds from the start), and its wait or its shed reason.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    class: Class,
    arrived: u64,
    finished: u64,
    result: Result<Duration, ShedReason>,
}

/// Arrivals of class high every `every_ms` for `count` requests on `up`, each holding
/// its slot `service_ms` once admitted (a backend of that service time), in paused
/// time. Returns every outcome and when the queue began standing, if it did.
async fn drive(
    up: &Arc<Upstream>,
    count: u64,
    every_ms: u64,
    service_ms: u64,
) -> (Vec<Outcome>, Option<u64>) {
    drive_classes(up, count, every_ms, service_ms, |_| Class::High).await
}

/// [`drive`] with the class of the `n`th arrival given by `class_of(n)`.
async fn drive_classes(
    up: &Arc<Upstream>,
    count: u64,
    every_ms: u64,
    service_ms: u64,
    class_of: impl Fn(u64) -> Class,
) -> (Vec<Outcome>, Option<u64>) {
    let start = tokio::time::Instant::now();
    let at = move || start.elapsed().as_millis() as u64;
    let mut began = None;
    let mut tasks = Vec::new();
    for n in 0..count {
        let u = up.clone();
        let class = class_of(n);
        tasks.push(tokio::spawn(async move {
            let arrived = at();
            let result = match admit(&u, class).await {
                Ok(p) => {
                    let waited = p.queued;
                    tokio::time::sleep(Duration::from_millis(service_ms)).await;
                    drop(p);
                    Ok(waited)
                }
                Err(shed) => Err(shed.reason),
            };
            Outcome {
                class,
                arrived,
                finished: at(),
                result,
            }
        }));
        for _ in 0..every_ms {
            tokio::time::sleep(Duration::from_millis(1)).await;
            if began.is_none() && up.queue.is_standing() {
                began = Some(at());
            }
        }
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    (outcomes, began)
}

/// Sustained overload (a request every 2 ms on one slot of 20 ms: 10x): the queue
/// absorbs it as a burst at first, stands once an interval of waits above the target
/// has passed, sheds at once every waiter already past the target, and from then on
/// admitted requests wait at most the target.
#[tokio::test(start_paused = true)]
async fn under_sustained_overload_the_queue_stands_and_waits_fall_to_the_target() {
    let up = upstream(1, 1, 500, 1_000);
    let target = up.limits.queue_target;
    assert_eq!(target, Duration::from_millis(5));
    let (outcomes, began) = drive(&up, 200, 2, 20).await;
    let began = began.expect("the queue stood");
    // The first waiter is served at 20 ms, and every one after waited longer than the
    // target: the interval (100 ms) is complete at the grant of 120 ms.
    assert!((118..=124).contains(&began), "stood at {began} ms");
    assert_eq!(up.metrics.queue_standing_started.get(), 1);
    assert!(up.queue.is_standing(), "still overloaded at the end");

    let before: Vec<&Outcome> = outcomes.iter().filter(|o| o.arrived < began).collect();
    let after: Vec<&Outcome> = outcomes.iter().filter(|o| o.arrived > began).collect();
    let longest_before = before.iter().filter_map(|o| o.result.ok()).max().unwrap();
    assert!(
        longest_before >= Duration::from_millis(80),
        "a burst waits longer than the target: {longest_before:?}"
    );
    let admitted_after: Vec<Duration> = after.iter().filter_map(|o| o.result.ok()).collect();
    assert!(admitted_after.len() >= 10, "{admitted_after:?}");
    // Granted at or after the start, whenever it arrived: the very grant that
    // completed the interval goes to the next waiter within the target, if any.
    for o in &outcomes {
        if let Ok(wait) = o.result {
            if o.arrived + wait.as_millis() as u64 >= began {
                assert!(
                    wait <= target,
                    "once standing, waited past the target: {o:?}"
                );
            }
        }
    }
    for o in &outcomes {
        if let Err(reason) = o.result {
            assert_eq!(reason, ShedReason::QueueStanding, "{o:?}");
            // Shed at the target, or at once when the queue began standing: never
            // after waiting out the 1 s timeout.
            let limit = (o.arrived + 5).max(began) + 1;
            assert!(o.finished <= limit, "shed late: {o:?} (stood at {began})");
        }
    }
    let shed = outcomes.iter().filter(|o| o.result.is_err()).count();
    assert!(shed > 100, "10x overload sheds most: {shed}");
    assert_eq!(
        up.metrics
            .shed(ShedReason::QueueStanding, Class::High)
            .get(),
        shed as u64
    );
    assert_eq!(up.inflight(), 0);
    assert!(up.queue.is_empty());
}

/// A burst on an idle upstream is absorbed whole: its waits pass the target, but it
/// drains within the interval, so the queue never stands.
#[tokio::test(start_paused = true)]
async fn a_short_burst_is_absorbed_whole() {
    let up = upstream(1, 1, 500, 1_000);
    // Six requests at once on one slot of 20 ms: waits of 0 to 100 ms.
    let (outcomes, began) = drive(&up, 6, 0, 20).await;
    assert_eq!(began, None);
    let waits: Vec<Duration> = outcomes.iter().map(|o| o.result.unwrap()).collect();
    assert_eq!(waits.iter().max(), Some(&Duration::from_millis(100)));
    assert_eq!(up.metrics.queue_standing_started.get(), 0);
    assert!(!up.queue.is_standing());
}

/// Once the overload is over and the queue has drained (empty, nobody shed for an
/// interval), it absorbs bursts again with the full timeout.
#[tokio::test(start_paused = true)]
async fn a_drained_queue_absorbs_bursts_again() {
    let up = upstream(1, 1, 500, 1_000);
    let (_, began) = drive(&up, 100, 2, 20).await;
    assert!(began.is_some());
    assert!(up.queue.is_standing());
    // The overload ends; a burst arriving within the interval still meets the target.
    let (early, _) = drive(&up, 3, 0, 20).await;
    assert_eq!(
        early.iter().filter(|o| o.result.is_err()).count(),
        2,
        "the queue had not drained yet: {early:?}"
    );
    tokio::time::sleep(up.limits.queue_interval).await;
    // Quiet for an interval: the next request that waits finds a burst queue.
    let (burst, began) = drive(&up, 6, 0, 20).await;
    assert_eq!(began, None);
    assert!(!up.queue.is_standing());
    assert!(
        burst.iter().all(|o| o.result.is_ok()),
        "absorbed whole: {burst:?}"
    );
    assert_eq!(up.metrics.queue_standing_started.get(), 1);
}

/// A request waiting for a grant when the queue begins standing, that has waited
/// less than the target, keeps waiting up to the target from when it joined.
#[tokio::test(start_paused = true)]
async fn a_waiter_that_is_short_of_the_target_when_the_queue_stands_keeps_its_place() {
    let up = upstream(1, 1, 500, 1_000);
    let held = admit(&up, Class::High).await.unwrap();
    // Stand the queue by hand: waits of 50 ms, over an interval.
    {
        let p = up.codel_params();
        let t0 = clock();
        let mut q = up.queue.lock();
        let wait = Duration::from_millis(50);
        assert!(q.record_wait(Class::High, wait, t0, p).is_none());
        let change = q.record_wait(Class::High, wait, t0 + p.interval, p);
        assert_eq!(change.classes(true).collect::<Vec<_>>(), [Class::High]);
    }
    let u = up.clone();
    let waiter = tokio::spawn(async move { admit(&u, Class::High).await });
    until_queued(&up, 1).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    drop(held);
    let p = waiter.await.unwrap().expect("served within the target");
    assert_eq!(p.queued, Duration::from_millis(3));
}

#[tokio::test]
async fn shadow_sends_past_the_limits_and_counts_what_it_would_shed() {
    let up = shadow(2, 1, 2, 10_000);
    let mut held = Vec::new();
    // Two free slots, then the queue as it would be (2 beyond the limits), then a
    // full one: nothing waits, nothing is shed, and every slot is counted.
    for _ in 0..6 {
        let p = admit(&up, Class::Normal)
            .await
            .expect("shadow sheds nothing");
        held.push(p);
    }
    assert_eq!(up.inflight(), 6);
    assert!(up.queue.is_empty(), "nobody waits in shadow mode");
    assert_eq!(up.waiting(), 4, "in flight beyond the limits");
    let would: Vec<_> = held.iter().map(|p| p.would_shed).collect();
    let full = Some(ShedReason::QueueFull);
    // Two free slots, two that would wait, two that would find the queue full.
    assert_eq!(would, [None, None, None, None, full, full]);
    let counted: u64 = ShedReason::ALL
        .iter()
        .map(|r| up.metrics.would_shed(*r).get())
        .sum();
    assert_eq!(counted, 2);
    assert_eq!(up.metrics.would_shed(ShedReason::QueueFull).get(), 2);
    let shed: u64 = ShedReason::ALL
        .iter()
        .flat_map(|r| crate::metrics::CLASSES.map(|c| up.metrics.shed(*r, c).get()))
        .sum();
    assert_eq!(shed, 0);
    // The level follows the queue enforcing would have: 4 waiting is caution here.
    assert!(up.level() >= Level::Caution);
    // `low` at caution would be shed even with a free slot, and still goes.
    held.clear();
    assert_eq!(up.inflight(), 0);
    let low = admit(&up, Class::Low).await.expect("shadow sheds nothing");
    assert_eq!(low.would_shed, Some(ShedReason::LowPriority));
    drop(low);
    assert_eq!(up.inflight(), 0);
}

#[tokio::test]
async fn shadow_retries_take_a_slot_past_the_limits() {
    let up = shadow(2, 1, 2, 10_000);
    let a = admit(&up, Class::Normal).await.unwrap();
    let b = admit(&up, Class::Normal).await.unwrap();
    let tried = [a.backend_index()];
    let retry = up
        .take_retry_slot(None, &tried, 3)
        .expect("no limit is enforced");
    assert_eq!(retry.backend_index(), b.backend_index());
    assert_eq!(up.inflight(), 3);
    // Enforcing, the same retry finds no room.
    let enforcing = upstream(2, 1, 2, 10_000);
    let c = admit(&enforcing, Class::Normal).await.unwrap();
    let d = admit(&enforcing, Class::Normal).await.unwrap();
    assert!(enforcing
        .take_retry_slot(None, &[c.backend_index()], 3)
        .is_none());
    drop((a, b, retry, c, d));
    assert_eq!(up.inflight(), 0);
    assert_eq!(enforcing.inflight(), 0);
}

#[tokio::test]
async fn shadow_sheds_only_when_no_backend_may_take_traffic() {
    let up = shadow(1, 1, 2, 10_000);
    up.backends[0].set_healthy(false);
    let shed = admit(&up, Class::Normal).await.unwrap_err();
    assert_eq!(shed.reason, ShedReason::NoHealthyBackend);
    assert_eq!(up.inflight(), 0);
}

#[tokio::test]
async fn a_light_client_waits_ahead_of_a_heavy_one_and_is_served_first() {
    let up = fair(1, 2, 10, config::Mode::Enforce);
    let shares = up.fairness.as_ref().unwrap().shares.clone();
    let a1 = admit_as(&up, A).await.unwrap();
    let a2 = admit_as(&up, A).await.unwrap();
    let u = up.clone();
    let a3 = tokio::spawn(async move { admit_as(&u, A).await });
    until_queued(&up, 1).await;
    let u = up.clone();
    let b1 = tokio::spawn(async move { admit_as(&u, B).await });
    until_queued(&up, 2).await;
    assert_eq!((shares.total(), shares.present()), (4, 2));
    drop(a1);
    let b1 = b1.await.unwrap().expect("the light client is served first");
    assert_eq!(up.queue.len(), 1, "the heavy client's request still waits");
    drop(a2);
    let a3 = a3.await.unwrap().unwrap();
    drop((b1, a3));
    assert_eq!(up.inflight(), 0);
    assert_eq!(
        (shares.total(), shares.present()),
        (0, 0),
        "every charge released"
    );
}

#[tokio::test]
async fn the_heavy_client_is_shed_as_fair_share_and_gives_way_in_a_full_queue() {
    let up = fair(1, 2, 2, config::Mode::Enforce);
    let shares = up.fairness.as_ref().unwrap().shares.clone();
    let held = [
        admit_as(&up, A).await.unwrap(),
        admit_as(&up, A).await.unwrap(),
    ];
    let waiters: Vec<_> = (0..2)
        .map(|_| {
            let u = up.clone();
            tokio::spawn(async move { admit_as(&u, A).await })
        })
        .collect();
    until_queued(&up, 2).await;
    // The queue is full of the heavy client's requests: its next one is shed for its
    // share, not merely for the full queue.
    let shed = admit_as(&up, A).await.unwrap_err();
    assert_eq!(
        shed.reason,
        ShedReason::QueueFull,
        "a key alone is no unfair share"
    );
    // A light client takes the place of the heavy client's newest waiter.
    let u = up.clone();
    let b = tokio::spawn(async move { admit_as(&u, B).await });
    let [w1, w2]: [_; 2] = waiters.try_into().ok().unwrap();
    let outweighed = w2.await.unwrap().unwrap_err();
    assert_eq!(outweighed.reason, ShedReason::FairShare);
    until_queued(&up, 2).await;
    // Now two clients are present and A holds more than its share.
    let shed = admit_as(&up, A).await.unwrap_err();
    assert_eq!(shed.reason, ShedReason::FairShare);
    let [h1, h2] = held;
    drop(h1);
    let b = b
        .await
        .unwrap()
        .expect("the light client's waiter is served first");
    drop(h2);
    let w1 = w1.await.unwrap().unwrap();
    drop((b, w1));
    assert_eq!((up.inflight(), shares.total()), (0, 0));

    // At danger a heavy request may not wait, a light one may.
    let held = [
        admit_as(&up, A).await.unwrap(),
        admit_as(&up, A).await.unwrap(),
    ];
    up.level_state
        .update(Level::Danger, std::time::Instant::now(), Duration::ZERO);
    let alone = admit_as(&up, A).await.unwrap_err();
    assert_eq!(alone.reason, ShedReason::LevelNoQueue, "a key alone");
    let u = up.clone();
    let b = tokio::spawn(async move { admit_as(&u, B).await });
    until_queued(&up, 1).await;
    let heavy = admit_as(&up, A).await.unwrap_err();
    assert_eq!(heavy.reason, ShedReason::FairShare, "heavy at danger");
    let [h1, h2] = held;
    drop(h1);
    let b = b.await.unwrap().expect("light waits even at danger");
    assert_eq!(
        up.metrics.shed(ShedReason::FairShare, Class::Normal).get(),
        3,
        "two heavy arrivals and one outweighed waiter"
    );
    drop((b, h2));
    assert_eq!(up.inflight(), 0);
    assert_eq!(shares.total(), 0);
}

#[tokio::test]
async fn a_client_alone_uses_every_slot_and_gets_the_ordinary_sheds() {
    let up = fair(2, 3, 2, config::Mode::Enforce);
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(admit_as(&up, A).await.expect("every slot is used"));
    }
    assert_eq!(up.inflight(), 6);
    up.level_state
        .update(Level::Danger, std::time::Instant::now(), Duration::ZERO);
    let shed = admit_as(&up, A).await.unwrap_err();
    assert_eq!(shed.reason, ShedReason::LevelNoQueue);
    assert_eq!(
        up.metrics.shed(ShedReason::FairShare, Class::Normal).get(),
        0
    );
    held.clear();
    assert_eq!(up.fairness.as_ref().unwrap().shares.total(), 0);
}

#[tokio::test]
async fn shadow_mode_counts_fair_share_without_shedding() {
    let up = fair(1, 1, 4, config::Mode::Shadow);
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(admit_as(&up, A).await.unwrap());
    }
    held.push(admit_as(&up, B).await.expect("shadow sheds nothing"));
    assert_eq!(held[6].would_shed, None, "a light client would wait");
    held.push(admit_as(&up, A).await.unwrap());
    assert_eq!(held[7].would_shed, Some(ShedReason::FairShare));
    held.clear();
    assert_eq!(up.inflight(), 0);
    assert_eq!(up.fairness.as_ref().unwrap().shares.total(), 0);
}

/// Waiters of every class queued in arrival order are served critical, high, normal,
/// low, oldest first within a class, one freed slot at a time.
#[tokio::test]
async fn waiters_are_served_in_class_order() {
    let up = upstream(1, 1, 100, 10_000);
    let held = admit(&up, Class::Normal).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let arrivals = [
        ("low", Class::Low),
        ("normal 1", Class::Normal),
        ("high 1", Class::High),
        ("normal 2", Class::Normal),
        ("critical 1", Class::Critical),
        ("high 2", Class::High),
        ("critical 2", Class::Critical),
    ];
    for (n, (name, class)) in arrivals.into_iter().enumerate() {
        let (u, tx) = (up.clone(), tx.clone());
        tokio::spawn(async move {
            let permit = admit(&u, class).await.expect("waits at safe");
            let _ = tx.send((name, permit));
        });
        until_queued(&up, n as u32 + 1).await;
    }
    assert_eq!(up.queue.len_of(Class::Critical), 2);
    assert_eq!(up.queue.ahead_of(Class::High), 4);
    assert_eq!(up.queue.ahead_of(Class::Low), 7);
    drop(held);
    let mut served = Vec::new();
    for _ in 0..arrivals.len() {
        let (name, permit) = rx.recv().await.unwrap();
        served.push(name);
        drop(permit); // frees the one slot for the next waiter
    }
    assert_eq!(
        served,
        [
            "critical 1",
            "critical 2",
            "high 1",
            "high 2",
            "normal 1",
            "normal 2",
            "low"
        ]
    );
    assert_eq!(up.inflight(), 0);
    assert!(up.queue.is_empty());
    assert_eq!(up.queue.ahead_of(Class::Low), 0);
}

/// A freed slot goes to the first waiter in class order that may use it: a critical
/// waiter bound to a full backend (affinity) does not hold up the high waiter behind
/// it that may use any backend.
#[tokio::test]
async fn a_freed_slot_goes_to_the_first_waiter_that_may_use_it() {
    let up = upstream(2, 1, 100, 10_000);
    let a = admit(&up, Class::Normal).await.unwrap();
    let b = admit(&up, Class::Normal).await.unwrap();
    let (held, other) = if a.backend_index() == 0 {
        (a, b)
    } else {
        (b, a)
    };
    // A critical waiter bound to backend 0 (held), then a high one for any backend.
    let u = up.clone();
    let bound = tokio::spawn(async move {
        let Admit::Wait { .. } = u.try_admit(Class::Critical, None, 0) else {
            panic!("no slot is free");
        };
        let pushed = u
            .queue
            .push(&u, Class::Critical, Some(0), 100, clock(), None);
        let Ok((ticket, _)) = pushed else {
            panic!("joins");
        };
        ticket.rx.await.ok()
    });
    until_queued(&up, 1).await;
    let u = up.clone();
    let high = tokio::spawn(async move { admit(&u, Class::High).await });
    until_queued(&up, 2).await;
    drop(other); // frees backend 1: only the high waiter may use it
    let p = high.await.unwrap().unwrap();
    assert_eq!(p.backend_index(), 1);
    assert_eq!(
        up.queue.len_of(Class::Critical),
        1,
        "still waits for backend 0"
    );
    drop(held);
    let Some(Grant::Permit(c)) = bound.await.unwrap() else {
        panic!("the critical waiter gets backend 0");
    };
    assert_eq!(c.backend_index(), 0);
    drop((c, p));
    assert_eq!(up.inflight(), 0);
    assert!(up.queue.is_empty());
}

/// Sustained overload of normal requests (one every 2 ms on one slot of 20 ms: 10x)
/// with a trickle of critical ones (every 50 ms): the queue stands for normal, whose
/// admitted waits fall to the target, while every critical request is served after
/// waiting at most for the next free slot, and its class never stands.
#[tokio::test(start_paused = true)]
async fn critical_requests_are_served_through_a_standing_queue_of_normal_ones() {
    let up = upstream(1, 1, 500, 1_000);
    let target = up.limits.queue_target;
    let (outcomes, began) = drive_classes(&up, 400, 2, 20, |n| {
        if n % 25 == 12 {
            Class::Critical
        } else {
            Class::Normal
        }
    })
    .await;
    let began = began.expect("the queue stood");
    assert!(up.queue.is_standing_for(Class::Normal));
    assert!(!up.queue.is_standing_for(Class::Critical));
    let critical: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.class == Class::Critical)
        .collect();
    assert_eq!(critical.len(), 16);
    for o in &critical {
        let wait = o
            .result
            .unwrap_or_else(|r| panic!("critical shed: {r:?} {o:?}"));
        assert!(wait <= Duration::from_millis(20), "{o:?}");
    }
    for o in outcomes.iter().filter(|o| o.class == Class::Normal) {
        match o.result {
            Ok(wait) if o.arrived > began => assert!(wait <= target, "{o:?}"),
            Ok(_) => {}
            // Queued up to the target, or kept out of the queue by the level the
            // long queue of the burst raised.
            Err(reason) => assert!(
                matches!(reason, ShedReason::QueueStanding | ShedReason::LevelNoQueue),
                "{o:?}"
            ),
        }
    }
    assert_eq!(up.inflight(), 0);
    assert!(up.queue.is_empty());
}
