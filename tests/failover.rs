//! Zone failover figures: 2 zones x 2 backends under steady load, zone a (the local
//! zone) fails in three ways, then recovers. Each scenario reports the failed requests
//! and the time until all traffic is on zone b, and back. Run with `--nocapture` to see
//! the figures.
//!
//! Health checks every 200 ms, fall 2, rise 2; backend read timeout 500 ms. Targets:
//! (a) processes killed: no failed idempotent request; (b) health failing and requests
//! erroring: moved within interval x fall + interval = 600 ms; (c) accepting but never
//! answering: within the read timeout + 600 ms = 1100 ms.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use levee::demo::replica::{Fault, Replica, ReplicaConfig};
use tokio::net::TcpListener;

const INTERVAL_MS: u64 = 200;
const READ_MS: u64 = 500;
/// Slack for a loaded 2-core machine on top of each target.
const SLACK: Duration = Duration::from_millis(400);

#[derive(Clone, Copy)]
struct Sample {
    at: Duration,
    ok: bool,
    zone_a: bool,
}

/// Steady closed-loop load: `workers` connections, each sending GETs back to back with
/// a short pause, recording every answer.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    t0: Instant,
}

impl Load {
    fn start(addr: SocketAddr, workers: usize) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let t0 = Instant::now();
        let tasks = (0..workers)
            .map(|_| {
                let samples = samples.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    // Bounded: at most 20,000 requests a worker, and the stop flag.
                    for _ in 0..20_000 {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let reply =
                            tokio::time::timeout(Duration::from_secs(5), fetch_once(addr)).await;
                        let (ok, zone_a) = match reply {
                            Ok(Some((status, replica))) => {
                                (status == 200, replica.starts_with('a'))
                            }
                            _ => (false, false),
                        };
                        samples.lock().unwrap().push(Sample {
                            at: t0.elapsed(),
                            ok,
                            zone_a,
                        });
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
            })
            .collect();
        Load {
            samples,
            stop,
            tasks,
            t0,
        }
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    async fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        Arc::try_unwrap(self.samples)
            .map(|m| m.into_inner().unwrap())
            .unwrap_or_default()
    }
}

/// One GET on a fresh connection (a killed backend must not break a pooled client).
async fn fetch_once(addr: SocketAddr) -> Option<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .ok()?;
    tokio::spawn(conn);
    let resp = sender.send_request(get("/f")).await.ok()?;
    let replica = resp
        .headers()
        .get("x-replica")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let status = resp.status().as_u16();
    http_body_util::BodyExt::collect(resp.into_body())
        .await
        .ok()?;
    Some((status, replica))
}

struct Figures {
    failed: usize,
    total: usize,
    moved: Duration,
    back: Duration,
}

/// Reads the figures from the samples: failures after the fault, the last zone-a
/// answer after the fault (when traffic had left a) and the first zone-a answer after
/// recovery.
fn figures(samples: &[Sample], fault_at: Duration, recover_at: Duration) -> Figures {
    let after_fault = samples.iter().filter(|s| s.at >= fault_at);
    let failed = after_fault.clone().filter(|s| !s.ok).count();
    let last_a = samples
        .iter()
        .filter(|s| s.at >= fault_at && s.at < recover_at && s.zone_a)
        .map(|s| s.at)
        .max()
        .unwrap_or(fault_at);
    let first_a_back = samples
        .iter()
        .filter(|s| s.at >= recover_at && s.zone_a)
        .map(|s| s.at)
        .min()
        .unwrap_or(Duration::MAX);
    Figures {
        failed,
        total: after_fault.count(),
        moved: last_a.saturating_sub(fault_at),
        back: first_a_back.saturating_sub(recover_at),
    }
}

async fn zone(name: &str) -> [Replica; 2] {
    [
        replica(&format!("{name}1"), name, 16, 1).await,
        replica(&format!("{name}2"), name, 16, 1).await,
    ]
}

async fn levee_for(a: &[Replica; 2], b: &[Replica; 2]) -> levee::app::Running {
    let mut setup = Setup::new(&[]);
    for (r, z) in [(&a[0], "a"), (&a[1], "a"), (&b[0], "b"), (&b[1], "b")] {
        setup.backends.push((r.addr(), z.into()));
    }
    setup
        .server(&format!(
            "zone = \"a\"\n[server.timeouts]\nread_ms = {READ_MS}"
        ))
        .upstream(&format!(
            "retry_on_connect_failure = 2\nretry_budget = 0.5\n\
             [upstream.health]\npath = \"/health\"\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 150\n\
             rise = 2\nfall = 2\neject_after_failures = 5\neject_ms = 1000\nslow_start_ms = 0"
        ))
        .start()
        .await
}

fn report(name: &str, f: &Figures) {
    println!(
        "failover {name}: failed {}/{} requests, traffic off zone a after {} ms, back {} ms after recovery",
        f.failed,
        f.total,
        f.moved.as_millis(),
        if f.back == Duration::MAX { "never".into() } else { f.back.as_millis().to_string() }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_a_killed_loses_no_idempotent_request() {
    let a = zone("a").await;
    let b = zone("b").await;
    let addrs = [a[0].addr(), a[1].addr()];
    let levee = levee_for(&a, &b).await;
    let load = Load::start(levee.addr(), 6);
    tokio::time::sleep(Duration::from_millis(700)).await; // steady state (load, not a condition)
    let fault_at = load.now();
    let [a1, a2] = a;
    a1.shutdown().await;
    a2.shutdown().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Restart zone a on the same ports.
    let mut restarted = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let l = TcpListener::bind(addr).await.expect("port free again");
        let cfg = ReplicaConfig {
            name: format!("a{}", i + 1),
            zone: "a".into(),
            workers: 16,
            service_time: Duration::from_millis(1),
        };
        restarted.push(Replica::start_on(cfg, l).await.unwrap());
    }
    let recover_at = load.now();
    let up = levee.app.snapshot().upstreams[0].clone();
    eventually(Duration::from_secs(10), "zone a preferred again", || {
        up.prefers_local()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = load.stop().await;
    let f = figures(&samples, fault_at, recover_at);
    report("(a) zone a killed", &f);
    assert!(f.total > 100, "too little load: {}", f.total);
    assert_eq!(
        f.failed, 0,
        "idempotent requests failed while zone a was killed"
    );
    assert!(f.back < Duration::from_secs(3));
    eventually(Duration::from_secs(10), "idle", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_a_failing_is_left_within_interval_times_fall_plus_one() {
    let a = zone("a").await;
    let b = zone("b").await;
    let levee = levee_for(&a, &b).await;
    let load = Load::start(levee.addr(), 6);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fault_at = load.now();
    for r in &a {
        r.set_fault(Fault::Failing);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for r in &a {
        r.set_fault(Fault::None);
    }
    let recover_at = load.now();
    let up = levee.app.snapshot().upstreams[0].clone();
    eventually(Duration::from_secs(10), "zone a preferred again", || {
        up.prefers_local()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = load.stop().await;
    let f = figures(&samples, fault_at, recover_at);
    report("(b) zone a failing", &f);
    let target = Duration::from_millis(INTERVAL_MS * 2 + INTERVAL_MS);
    assert!(
        f.moved <= target + SLACK,
        "moved after {:?}, target {target:?}",
        f.moved
    );
    assert!(f.back < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_a_frozen_is_left_within_the_timeout_plus_detection() {
    let a = zone("a").await;
    let b = zone("b").await;
    let levee = levee_for(&a, &b).await;
    let up = levee.app.snapshot().upstreams[0].clone();
    let load = Load::start(levee.addr(), 6);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let fault_at = load.now();
    let frozen_at = Instant::now();
    for r in &a {
        r.set_fault(Fault::Frozen);
    }
    // Frozen backends answer nothing, so read the move off levee's own state.
    eventually(Duration::from_secs(10), "zone a out", || {
        !up.backends[0].is_healthy() && !up.backends[1].is_healthy()
    })
    .await;
    let moved = frozen_at.elapsed();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for r in &a {
        r.set_fault(Fault::None);
    }
    let recover_at = load.now();
    eventually(Duration::from_secs(10), "zone a preferred again", || {
        up.prefers_local()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let samples = load.stop().await;
    let mut f = figures(&samples, fault_at, recover_at);
    f.moved = moved;
    report("(c) zone a frozen", &f);
    let target = Duration::from_millis(READ_MS + INTERVAL_MS * 3);
    assert!(
        moved <= target + SLACK,
        "moved after {moved:?}, target {target:?}"
    );
    assert!(f.back < Duration::from_secs(3));
}
