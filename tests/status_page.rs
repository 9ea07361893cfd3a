//! The status page in a real browser: Debian's headless Chromium loads the admin
//! listener's `/`, runs the page's poll loop against `/status`, and the tests read the
//! DOM it rendered (`--dump-dom`) through the page's stable `data-*` hooks. One test
//! drives load and saves a screenshot to `tests/artifacts/status-page.png` for people
//! to look at.
//!
//! Chromium runs under virtual time (`--virtual-time-budget`): timers fire as fast as
//! the page's fetches come back, so "a few seconds" of polling take well under one
//! real second. Every browser run is killed, with its whole process group, after
//! [`BROWSER_DEADLINE`] ([`SCREENSHOT_DEADLINE`] for the screenshot). Without
//! Chromium the tests print `skipped: …` and pass.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use levee::app::Running;
use levee::demo::replica::{Fault, Replica};
use tokio::net::TcpListener;
use tokio::process::Command;

/// Longest a `--dump-dom` run may take before Chromium is killed.
const BROWSER_DEADLINE: Duration = Duration::from_secs(30);
/// The screenshot polls for a minute of virtual time under load: each poll costs a
/// real fetch and render, which a busy CI machine slows down.
const SCREENSHOT_DEADLINE: Duration = Duration::from_secs(90);
/// Virtual time the screenshot run gives the page, so its charts show a minute.
const SCREENSHOT_BUDGET_MS: u32 = 60_000;
/// Virtual time a `--dump-dom` run gives the page: a few polls.
const DOM_BUDGET_MS: u32 = 4_000;
/// The page, as the admin listener serves it; the stub server serves it too.
const PAGE: &str = include_str!("../src/admin/status.html");
const LIMIT: Duration = Duration::from_secs(10);
/// Fast active checks, so a replica failing `/health` shows within a few probes.
const FAST_HEALTH: &str = "[upstream.health]\npath = \"/health\"\ninterval_ms = 50\ntimeout_ms = 50\nrise = 1\nfall = 1\nslow_start_ms = 0";

/// Debian's headless Chromium, or `None` (and a `skipped:` line) when it is missing.
fn chromium(test: &str) -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin/chromium");
    let found = if fixed.is_file() {
        Some(fixed.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
                .find(|p| p.is_file())
        })
    };
    if found.is_none() {
        eprintln!(
            "skipped: chromium not installed ({test} needs /usr/bin/chromium or chromium on PATH)"
        );
    }
    found
}

/// Runs Chromium headless on `url` with `extra` flags and a fresh profile; returns
/// its stdout. Panics, with the end of its stderr, if it fails or outlives
/// `deadline` (then its whole process group is killed).
async fn browse(bin: &Path, url: &str, extra: &[String], deadline: Duration) -> String {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so a stuck browser goes with its renderer and zygote.
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd.spawn().expect("chromium starts");
    let pgid = child.id();
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success(),
                "chromium failed ({}) on {url}; stderr ends:\n{}",
                out.status,
                tail(&stderr, 3000)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Ok(Err(e)) => panic!("waiting for chromium: {e}"),
        Err(_) => {
            if let Some(pgid) = pgid {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pgid}")])
                    .status();
            }
            panic!("chromium did not finish {url} within {deadline:?}");
        }
    }
}

fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The DOM after `budget_ms` of the page's virtual time.
async fn dump_dom(bin: &Path, url: &str, budget_ms: u32) -> String {
    let dom = browse(
        bin,
        url,
        &[
            format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom".to_string(),
        ],
        BROWSER_DEADLINE,
    )
    .await;
    assert!(dom.contains("</html>"), "no DOM dumped:\n{dom}");
    dom
}

/// The opening tag of the first element with `attr="value"`.
fn tag<'a>(dom: &'a str, attr: &str, value: &str) -> Option<&'a str> {
    let at = dom.find(&format!(r#" {attr}="{value}""#))?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

/// Like [`tag`], but panics with the DOM when there is none.
fn must_tag<'a>(dom: &'a str, attr: &str, value: &str) -> &'a str {
    tag(dom, attr, value).unwrap_or_else(|| panic!("no element with {attr}={value:?} in:\n{dom}"))
}

/// From the first element with `attr="value"` up to the first `close` after it
/// (a closing tag, so nested elements of another kind are included).
fn element<'a>(dom: &'a str, attr: &str, value: &str, close: &str) -> &'a str {
    let open = must_tag(dom, attr, value);
    let start = open.as_ptr() as usize - dom.as_ptr() as usize;
    let end = dom[start..]
        .find(close)
        .map_or(dom.len(), |i| start + i + close.len());
    &dom[start..end]
}

/// The first stat tile `data-field="name"`, up to the next tile.
fn field<'a>(dom: &'a str, name: &str) -> &'a str {
    let open = must_tag(dom, "data-field", name);
    let start = open.as_ptr() as usize - dom.as_ptr() as usize;
    let rest = &dom[start + open.len()..];
    let end = rest.find(" data-field=").unwrap_or(rest.len());
    &dom[start..start + open.len() + end]
}

/// The value of `name` in an opening tag.
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!(r#" {name}=""#);
    let at = tag.find(&needle)? + needle.len();
    let len = tag[at..].find('"')?;
    Some(&tag[at..at + len])
}

fn body_tag(dom: &str) -> &str {
    let start = dom.find("<body").expect("a body");
    let end = start + dom[start..].find('>').expect("body tag ends");
    &dom[start..=end]
}

/// The page is polling, rendered without a caught error, and shows levee's data.
fn assert_live(dom: &str) {
    let body = body_tag(dom);
    assert_eq!(attr(body, "data-connection"), Some("live"), "{body}\n{dom}");
    assert_eq!(
        attr(body, "data-render-errors"),
        None,
        "render errors:\n{dom}"
    );
}

/// Waits until every backend of the first upstream takes traffic.
async fn all_healthy(levee: &Running) {
    let snapshot = levee.app.snapshot();
    eventually(LIMIT, "every backend healthy", || {
        snapshot.upstreams[0]
            .backends
            .iter()
            .all(|b| b.is_healthy())
    })
    .await;
}

/// Makes backend `index` of the first upstream unhealthy, the way it happens in
/// production: its replica fails `/health`. The routing flag is also cleared at once,
/// for builds without active checks; then waits until levee says so, steadily.
async fn make_unhealthy(levee: &Running, replica: &Replica, index: usize) {
    replica.set_fault(Fault::Health500);
    let backend = levee.app.snapshot().upstreams[0].backends[index].clone();
    backend.set_healthy(false);
    eventually(LIMIT, "backend unhealthy", || !backend.is_healthy()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !backend.is_healthy(),
        "backend {index} became healthy again"
    );
}

fn page_url(admin: SocketAddr) -> String {
    format!("http://{admin}/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_upstream_level_and_backends_and_follows_health() {
    let Some(bin) = chromium("page_shows_upstream_level_and_backends_and_follows_health") else {
        return;
    };
    let r1 = replica("r1", "a", 4, 1).await;
    let r2 = replica("r2", "a", 4, 1).await;
    let r3 = replica("r3", "b", 4, 1).await;
    let mut setup = Setup::new(&[&r1, &r2, &r3])
        .upstream("[upstream.limits]\nmax_inflight = 4")
        .upstream(FAST_HEALTH);
    setup.backends[2].1 = "b".into();
    let levee = setup.start().await;
    all_healthy(&levee).await;
    for i in 0..12 {
        let reply = fetch(levee.addr(), get(&format!("/warm/{i}"))).await;
        assert_eq!(reply.status, 200);
    }
    let url = page_url(levee.admin_addr.expect("admin listener"));
    let addrs = [r1.addr(), r2.addr(), r3.addr()].map(|a| a.to_string());

    let dom = dump_dom(&bin, &url, DOM_BUDGET_MS).await;
    assert_live(&dom);
    assert_eq!(
        attr(must_tag(&dom, "id", "ready"), "data-ready"),
        Some("true")
    );
    let version = element(&dom, "id", "version", "</small>");
    assert!(
        version.contains(env!("CARGO_PKG_VERSION")),
        "version: {version}"
    );
    let app = must_tag(&dom, "data-upstream", "app");
    assert_eq!(attr(app, "data-level"), Some("safe"), "{app}");
    assert_eq!(
        attr(must_tag(&dom, "data-field", "queue"), "data-standing"),
        Some("false"),
        "an idle queue does not stand"
    );
    // Waits by class, in the order waiters are served.
    let waits = element(&dom, "data-field", "waits", "served in class order");
    let at = |class: &str| waits.find(&format!(r#"data-class="{class}""#));
    let order = ["critical", "high", "normal", "low"].map(at);
    assert!(
        order.iter().all(Option::is_some) && order.windows(2).all(|w| w[0] < w[1]),
        "{waits}"
    );
    assert_eq!(
        attr(must_tag(&dom, "data-class", "critical"), "data-standing"),
        Some("false")
    );
    let card = element(&dom, "data-upstream", "app", "</svg>");
    assert!(
        card.contains(r#"data-level="safe">safe</span>"#),
        "the level is written out, not only coloured: {card}"
    );
    let chart = must_tag(&dom, "data-chart", "rates");
    let points: u32 = attr(chart, "data-points")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    assert!(points >= 1, "no rate computed between polls: {chart}");
    for addr in &addrs {
        let row = must_tag(&dom, "data-backend", addr);
        assert_eq!(attr(row, "data-healthy"), Some("true"), "{row}");
        assert_eq!(attr(row, "data-routable"), Some("true"), "{row}");
        assert_eq!(attr(row, "data-state"), Some("healthy"), "{row}");
    }
    // Backends are grouped by zone.
    let zone_a = element(&dom, "data-zone", "a", "</section>");
    let zone_b = element(&dom, "data-zone", "b", "</section>");
    assert!(
        zone_a.contains(&addrs[0]) && zone_a.contains(&addrs[1]) && !zone_a.contains(&addrs[2])
    );
    assert!(zone_b.contains(&addrs[2]) && !zone_b.contains(&addrs[0]));
    assert!(zone_a.contains("2/2 healthy"), "{zone_a}");

    // r2 fails its health checks; the next page load shows it.
    make_unhealthy(&levee, &r2, 1).await;
    let dom = dump_dom(&bin, &url, DOM_BUDGET_MS).await;
    assert_live(&dom);
    let down = must_tag(&dom, "data-backend", &addrs[1]);
    assert_eq!(attr(down, "data-healthy"), Some("false"), "{down}");
    assert_eq!(attr(down, "data-routable"), Some("false"), "{down}");
    assert_eq!(attr(down, "data-state"), Some("unhealthy"), "{down}");
    for addr in [&addrs[0], &addrs[2]] {
        let row = must_tag(&dom, "data-backend", addr);
        assert_eq!(attr(row, "data-healthy"), Some("true"), "{row}");
    }
    let zone_a = element(&dom, "data-zone", "a", "</section>");
    assert!(zone_a.contains("1/2 healthy"), "{zone_a}");
    assert!(
        element(&dom, "data-upstream", "app", "</div>").contains("1 unhealthy"),
        "the card's header counts unhealthy backends"
    );
}

/// An upstream in shadow mode: the card says so, and a *Would shed* tile counts what
/// enforcing would have shed (none of which was).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_shadow_mode_and_would_sheds() {
    let Some(bin) = chromium("page_shows_shadow_mode_and_would_sheds") else {
        return;
    };
    let r1 = replica("r1", "a", 8, 1).await;
    let levee = Setup::new(&[&r1])
        // (The test client's requests name the host "test".)
        .upstream("hosts = [\"test\", \"*.example.com\"]")
        .upstream(
            "[upstream.limits]\nmax_inflight = 1\nqueue_depth = 1\nqueue_timeout_ms = 5000\n\
             mode = \"shadow\"",
        )
        .start()
        .await;
    let addr = levee.addr();
    let up = levee.app.snapshot().upstreams[0].clone();
    // One slot, one place in the queue as enforcing would have it, then two past it.
    let held: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { fetch(addr, get("/hold?ms=300")).await.status }))
        .collect();
    eventually(LIMIT, "four in flight", || up.inflight() == 4).await;
    for h in held {
        assert_eq!(h.await.unwrap(), 200, "shadow mode sheds nothing");
    }
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    let url = page_url(levee.admin_addr.expect("admin listener"));
    let dom = dump_dom(&bin, &url, DOM_BUDGET_MS).await;
    assert_live(&dom);
    let app = must_tag(&dom, "data-upstream", "app");
    assert_eq!(attr(app, "data-mode"), Some("shadow"), "{app}");
    let would = field(&dom, "would_shed");
    assert!(would.contains("2 total"), "{would}");
    let shed = field(&dom, "shed");
    assert!(shed.contains("0 total"), "{shed}");
    // The card's header lists the upstream's hosts.
    let head = element(&dom, "data-upstream", "app", "</div>");
    assert!(
        head.contains(r#"<span class="hosts""#) && head.contains("test, *.example.com"),
        "{head}"
    );
}

/// A scripted stand-in for the admin listener: `/` is the page, and `/status`
/// answers the `answers` in turn, repeating the last one forever.
async fn stub_admin(answers: Vec<(u16, String)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind stub");
    let addr = listener.local_addr().expect("stub addr");
    let answers = Arc::new(answers);
    let polls = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (answers, polls) = (answers.clone(), polls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (status, ctype, body) = match req.uri().path() {
                        "/" => (200, "text/html; charset=utf-8", PAGE.to_string()),
                        "/status" => {
                            let i = polls.fetch_add(1, Ordering::SeqCst);
                            let (status, body) = &answers[i.min(answers.len() - 1)];
                            (*status, "application/json", body.clone())
                        }
                        _ => (404, "text/plain", "not found\n".to_string()),
                    };
                    let resp = hyper::Response::builder()
                        .status(status)
                        .header("content-type", ctype)
                        .header("cache-control", "no-store")
                        .body(Full::new(Bytes::from(body)))
                        .expect("stub response");
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_survives_odd_status_and_shows_connection_lost() {
    let Some(bin) = chromium("page_survives_odd_status_and_shows_connection_lost") else {
        return;
    };
    // Wrong types and missing fields (an older or broken levee) must not stop the
    // loop; fields of a newer levee (health `state`, `ejected`) are shown.
    let odd = r#"{"ready":"maybe","upstreams":[null,5,{"name":7,"level":"overload","queue":"x","backends":[null,{"address":9},{"zone":{}}]},{"backends":"none"}]}"#;
    let newer = r#"{"ready":false,"version":"9.9.9","upstreams":[{"name":"api","level":"critical","queue":100,"queue_depth":100,"requests_total":50,"shed_total":10,"panic":true,"queue_standing":true,"queue_allowed_wait_ms":5,"future_field":{"x":1},"names":[{"name":"api.svc:80","zone":"a","addresses":["10.0.0.1:80","10.0.0.3:80"]},{"name":"gone.svc:80","addresses":[]},7],"backends":[
        {"address":"10.0.0.1:80","zone":"a","local":true,"healthy":false,"routable":false,"state":"probation","inflight":1,"limit":2,"max_inflight":8,"requests":3,"adaptive":{"limit":2,"p95_ms":24.5,"load":1.125,"queue":null,"probing":false}},
        {"address":"10.0.0.2:80","zone":"b","healthy":false,"routable":false,"ejected":true,"ejections":2,"failures":5,"state":"ejected"},
        {"address":"10.0.0.4:80","zone":"b","healthy":false,"routable":true,"state":"unhealthy"},
        {"address":"10.0.0.3:80"}]}]}"#;
    let newer_later = newer
        .replace(r#""requests_total":50"#, r#""requests_total":80"#)
        .replace(r#""shed_total":10"#, r#""shed_total":30"#);
    let answers = vec![
        (200, odd.to_string()),
        (200, "not json".to_string()),
        (200, "[1,2]".to_string()),
        (200, newer.to_string()),
        (200, newer_later.clone()),
        (200, newer_later),
    ];

    // The loop goes on after odd answers and renders the last good one.
    let live = stub_admin(answers.clone()).await;
    let dom = dump_dom(&bin, &page_url(live), 8_000).await;
    assert_live(&dom);
    assert_eq!(
        attr(must_tag(&dom, "id", "ready"), "data-ready"),
        Some("false")
    );
    let api = must_tag(&dom, "data-upstream", "api");
    assert_eq!(attr(api, "data-level"), Some("critical"), "{api}");
    assert!(dom.contains("9.9.9"), "version shown");
    assert!(
        element(&dom, "data-upstream", "api", "</div>").contains("panic mode"),
        "panic mode shown when /status has it"
    );
    // Backends by name: each name with how many addresses it has now.
    let head = element(&dom, "data-upstream", "api", "</div>");
    assert!(head.contains("api.svc:80: 2 addresses"), "{head}");
    assert!(head.contains("no address</span>"), "{head}");
    let probation = must_tag(&dom, "data-backend", "10.0.0.1:80");
    assert_eq!(attr(probation, "data-state"), Some("probation"));
    assert_eq!(attr(probation, "data-healthy"), Some("false"));
    assert_eq!(
        attr(must_tag(&dom, "data-zone", "a"), "data-local"),
        Some("true")
    );
    assert_eq!(
        attr(must_tag(&dom, "data-zone", "b"), "data-local"),
        Some("false")
    );
    let ejected = must_tag(&dom, "data-backend", "10.0.0.2:80");
    assert_eq!(attr(ejected, "data-state"), Some("ejected"));
    assert_eq!(attr(ejected, "data-healthy"), Some("false"));
    assert!(
        element(&dom, "data-backend", "10.0.0.2:80", "</tr>").contains("ejected 2×"),
        "ejection count shown"
    );
    let panicked = must_tag(&dom, "data-backend", "10.0.0.4:80");
    assert_eq!(attr(panicked, "data-healthy"), Some("false"));
    assert_eq!(attr(panicked, "data-routable"), Some("true"));
    assert!(element(&dom, "data-backend", "10.0.0.4:80", "</tr>").contains("panic mode"));
    let bare = must_tag(&dom, "data-backend", "10.0.0.3:80");
    assert_eq!(attr(bare, "data-state"), Some("unknown"));
    assert_eq!(attr(bare, "data-healthy"), Some("unknown"));
    assert!(
        element(&dom, "data-zone", "default", "</section>").contains("10.0.0.3:80"),
        "a backend without a zone is listed under the default zone"
    );
    // The limit in force beside its ceiling, and what the adaptive controller saw.
    assert!(
        element(&dom, "data-backend", "10.0.0.1:80", "</tr>")
            .contains("limit 2 of 8 · adaptive · p95 24.5 ms · load 1.13"),
        "{dom}"
    );
    assert!(field(&dom, "shed").contains("30 total"), "{dom}");
    // A standing queue says so, with the wait it allows.
    assert_eq!(
        attr(must_tag(&dom, "data-field", "queue"), "data-standing"),
        Some("true")
    );
    assert!(
        field(&dom, "queue").contains("standing · waits ≤ 5.00 ms"),
        "{}",
        field(&dom, "queue")
    );
    assert!(field(&dom, "rate").contains("80 total"), "{dom}");
    assert!(
        field(&dom, "p95").contains('—'),
        "a missing p95 shows as a dash"
    );

    // Good answers, then /status fails: the page says so and keeps the last data.
    let mut failing = answers[3..5].to_vec();
    failing.push((503, "draining".to_string()));
    let lost = stub_admin(failing).await;
    let dom = dump_dom(&bin, &page_url(lost), DOM_BUDGET_MS).await;
    let body = body_tag(&dom);
    assert_eq!(attr(body, "data-connection"), Some("lost"), "{body}");
    assert_eq!(
        attr(body, "data-render-errors"),
        None,
        "render errors:\n{dom}"
    );
    let banner = element(&dom, "id", "lost", "</div>");
    assert!(banner.contains("HTTP 503"), "{banner}");
    assert!(
        tag(&dom, "data-upstream", "api").is_some(),
        "the last data stays on screen"
    );
    assert!(
        dom.contains("<title>levee · connection lost</title>"),
        "title"
    );

    // Nothing ever answers: still a page, saying it has no data.
    let page = stub_admin(vec![(500, "{}".to_string())]).await;
    let dom = dump_dom(&bin, &page_url(page), DOM_BUDGET_MS).await;
    assert_eq!(attr(body_tag(&dom), "data-connection"), Some("lost"));
    assert!(element(&dom, "id", "lost", "</div>").contains("No data received yet"));
}

/// Load with some shedding while the browser watches, then a screenshot for people.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshot_under_load() {
    let Some(bin) = chromium("screenshot_under_load") else {
        return;
    };
    let replicas = [
        replica("a1", "a", 2, 15).await,
        replica("a2", "a", 2, 15).await,
        replica("b1", "b", 2, 15).await,
        replica("b2", "b", 2, 15).await,
    ];
    let batch = replica("batch1", "a", 1, 20).await;
    let mut setup = Setup::new(&replicas.iter().collect::<Vec<_>>())
        .upstream("[upstream.limits]\nmax_inflight = 3\nqueue_depth = 3\nqueue_timeout_ms = 50")
        .upstream(FAST_HEALTH)
        .tail(&format!(
            "[[upstream]]\nname = \"batch\"\nroutes = [\"/batch/\"]\n[upstream.limits]\nmax_inflight = 1\nqueue_depth = 2\nqueue_timeout_ms = 20\n[[upstream.backend]]\naddress = \"{}\"\nzone = \"a\"\n",
            batch.addr()
        ));
    setup.backends[2].1 = "b".into();
    setup.backends[3].1 = "b".into();
    let levee = setup.start().await;
    all_healthy(&levee).await;
    let addr = levee.addr();
    let url = page_url(levee.admin_addr.expect("admin listener"));

    // Load runs until the screenshot is taken: a steady stream on "app" with bursts
    // past its capacity (queue, then 503), and a trickle over the tiny "batch" limit.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let shed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..16 {
        let (stop, sent, shed) = (stop.clone(), sent.clone(), shed.clone());
        clients.push(tokio::spawn(async move {
            let path = if i % 6 == 5 { "/batch/job" } else { "/work" };
            while !stop.load(Ordering::Relaxed) {
                let reply = fetch(addr, get(path)).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if reply.status == 503 {
                    shed.fetch_add(1, Ordering::Relaxed);
                }
                // Most clients pause now and then, so the offered load (and the
                // shedding) rises and falls.
                if i >= 6 && sent.load(Ordering::Relaxed) % 97 < 40 {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            }
        }));
    }
    eventually(LIMIT, "a few hundred requests, some shed", || {
        sent.load(Ordering::Relaxed) >= 300 && shed.load(Ordering::Relaxed) >= 10
    })
    .await;

    // One replica fails its health checks, so the screenshot shows that state too.
    make_unhealthy(&levee, &replicas[3], 3).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let png = dir.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let started = std::time::Instant::now();
    browse(
        &bin,
        &url,
        &[
            format!("--virtual-time-budget={SCREENSHOT_BUDGET_MS}"),
            "--window-size=1280,900".to_string(),
            format!("--screenshot={}", png.display()),
        ],
        SCREENSHOT_DEADLINE,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    let image = std::fs::read(&png).expect("screenshot written");
    assert!(
        image.starts_with(b"\x89PNG\r\n\x1a\n") && image.len() > 20_000,
        "screenshot is not a plausible PNG ({} bytes)",
        image.len()
    );
    eprintln!(
        "screenshot: {} ({} requests, {} shed; browser ran {:?})",
        png.display(),
        sent.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed),
        started.elapsed()
    );
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;

    // With the counters still, the page's totals are levee's, to the request.
    let status = fetch(levee.admin_addr.expect("admin"), get("/status"))
        .await
        .json();
    let dom = dump_dom(&bin, &url, DOM_BUDGET_MS).await;
    assert_live(&dom);
    let upstreams = status["upstreams"].as_array().expect("upstreams");
    assert_eq!(upstreams.len(), 2);
    let mut shed_total = 0;
    for up in upstreams {
        let name = up["name"].as_str().expect("name");
        let card = element(&dom, "data-upstream", name, "</svg>");
        for (key, field_name) in [("requests_total", "rate"), ("shed_total", "shed")] {
            let n = up[key].as_u64().expect("a count");
            let shown = format!("{} total", thousands(n));
            assert!(
                field(card, field_name).contains(&shown),
                "{name}: {key} {n} not shown as {shown:?}: {card}"
            );
        }
        shed_total += up["shed_total"].as_u64().unwrap_or(0);
    }
    assert!(shed_total > 0, "no shedding to show: {status}");
}

/// `1234567` as the page writes it: `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
