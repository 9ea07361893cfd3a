//! Fairness between clients through real sockets: a replica with a slow service time,
//! levee on `127.0.0.1:0` with `[upstream.fairness] key = "header:x-tenant"`. A light
//! tenant is served nearly whole while a heavy one floods the upstream and is shed as
//! `fair_share`; a flood of distinct keys leaves the key table as it was; a key alone
//! uses every slot.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use levee::admission::ShedReason;
use levee::config::Class;

const LIMIT: Duration = Duration::from_secs(10);
const FAIR: &str =
    "[upstream.limits]\nmax_inflight = 4\nqueue_depth = 16\nqueue_timeout_ms = 100\n\
                    [upstream.fairness]\nkey = \"header:x-tenant\"";

async fn scrape(admin: SocketAddr) -> String {
    let reply = fetch(admin, get("/metrics")).await;
    assert_eq!(reply.status, 200);
    String::from_utf8(reply.body.to_vec()).expect("utf-8 metrics")
}

/// A tenant: `clients` closed-loop clients whose requests carry `x-tenant: name`,
/// at most `max` requests each.
fn tenant(addr: SocketAddr, name: &str, clients: usize, max: u32, backoff: Duration) -> Load {
    Load::start_with(
        addr,
        clients,
        backoff,
        LIMIT,
        max,
        &[("x-tenant", name)],
        |_| {},
    )
}

/// One replica of 4 workers x 20 ms (about 200 requests/s). Tenant a keeps 24
/// requests going (6x the slots); tenant b sends 80, one at a time. b is served
/// nearly whole (at least 95 %), a gets the rest and its excess is shed as
/// `fair_share`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_tenant_is_served_while_a_heavy_one_is_shed_for_its_share() {
    let r = replica("r1", "a", 4, 20).await;
    let levee = Setup::new(&[&r]).upstream(FAIR).start().await;
    let (addr, admin) = (levee.addr(), levee.admin_addr.expect("admin listener"));
    let up = levee.app.snapshot().upstreams[0].clone();

    let heavy = tenant(addr, "a", 24, 10_000, Duration::from_millis(10));
    eventually(LIMIT, "every slot taken", || up.inflight() == 4).await;
    let light = tenant(addr, "b", 1, 80, Duration::from_millis(10));
    let (b_ok, b_shed) = light.finish(false).await;
    let (a_ok, a_shed) = heavy.finish(true).await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    eprintln!("light: {b_ok} served, {b_shed} shed; heavy: {a_ok} served, {a_shed} shed");
    // All 80 unless the machine is so slow that the light client's time ran out.
    let b_sent = b_ok + b_shed;
    assert!(b_sent >= 30, "the light tenant sent only {b_sent}");
    assert!(
        f64::from(b_ok) >= 0.95 * f64::from(b_sent),
        "the light tenant got {b_ok} of {b_sent} served"
    );
    assert!(
        a_ok >= 20 && a_shed >= 100,
        "heavy: served {a_ok}, shed {a_shed}"
    );
    let metrics = scrape(admin).await;
    let fair_share: f64 = samples(&metrics, "levee_shed_total")
        .iter()
        .filter(|(l, _)| l.contains("reason=\"fair_share\""))
        .map(|(_, v)| v)
        .sum();
    assert!(
        fair_share >= 0.5 * f64::from(a_shed),
        "{fair_share} of the heavy tenant's {a_shed} sheds were fair_share:\n{metrics}"
    );
    // Metrics name no key.
    assert!(!metrics.contains("tenant"), "a key value in the metrics");
    let shares = &up.fairness.as_ref().expect("fairness").shares;
    assert_eq!((shares.total(), shares.present()), (0, 0));
    assert!(r.stats().peak_inflight <= 4);
}

/// 10,000 requests, each with its own key, from 32 clients at once: the key table
/// keeps its size, and once the requests are done it holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_distinct_keys_leaves_the_key_table_as_it_was() {
    const KEYS: u32 = 10_000;
    const CLIENTS: u32 = 32;
    let r = replica("r1", "a", 8, 1).await;
    let levee = Setup::new(&[&r]).upstream(FAIR).start().await;
    let addr = levee.addr();
    let up = levee.app.snapshot().upstreams[0].clone();
    let shares = up.fairness.as_ref().expect("fairness").shares.clone();
    let size = shares.footprint();
    assert!(size <= 64 * 1024, "{size} bytes");

    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await;
                let mut answered = 0u32;
                for k in (c..KEYS).step_by(CLIENTS as usize) {
                    if started.elapsed() > 3 * LIMIT {
                        break;
                    }
                    let key = format!("tenant-{k}");
                    let status = conn
                        .request(get_with("/k", &[("x-tenant", &key)]))
                        .await
                        .status;
                    assert!(status == 200 || status == 503, "status {status}");
                    answered += 1;
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for c in clients {
        answered += c.await.expect("client task");
    }
    assert_eq!(answered, KEYS);
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
    assert_eq!(shares.footprint(), size, "the table did not grow");
    assert_eq!(
        (shares.total(), shares.present()),
        (0, 0),
        "and holds nothing"
    );
}

/// One tenant alone, 12 requests at a time on 4 slots: it uses every slot (nothing
/// is kept back for keys that are not there), and its sheds are ordinary ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_alone_uses_every_slot() {
    let r = replica("r1", "a", 4, 40).await;
    let levee = Setup::new(&[&r]).upstream(FAIR).start().await;
    let admin = levee.admin_addr.expect("admin listener");
    let up = levee.app.snapshot().upstreams[0].clone();

    let alone = tenant(levee.addr(), "a", 12, 30, Duration::from_millis(10));
    eventually(LIMIT, "every slot taken", || up.inflight() == 4).await;
    let (ok, _) = alone.finish(false).await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    assert!(ok >= 30, "served {ok}");
    assert_eq!(r.stats().peak_inflight, 4, "every slot, never more");
    assert_eq!(
        up.metrics.shed(ShedReason::FairShare, Class::Normal).get(),
        0
    );
    let metrics = scrape(admin).await;
    assert!(
        samples(&metrics, "levee_shed_total")
            .iter()
            .all(|(l, v)| !l.contains("fair_share") || *v == 0.0),
        "{metrics}"
    );
}
