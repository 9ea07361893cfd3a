//! Reload and lifecycle: 50 reloads under load lose nothing, a broken file keeps the
//! old config, limits change live, the file watcher reloads, SIGTERM drains and exits
//! as soon as the last request is done.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use levee::demo::replica::Replica;

const LIMIT: Duration = Duration::from_secs(10);

/// The queue's interval is longer than any burst here (a test of the limit sends 6
/// requests of 30 ms at one slot): they are bursts to absorb whole, not a standing
/// queue.
fn config_text(backends: &[&Replica], max_inflight: u32, extra_route: Option<&str>) -> String {
    let mut s = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n\n\
         [[upstream]]\nname = \"app\"\nroutes = [\"/\"]\n\
         [upstream.limits]\nmax_inflight = {max_inflight}\nqueue_depth = 200\nqueue_timeout_ms = 2000\n\
         queue_interval_ms = 1000\n\
         [upstream.levels]\ncaution = {{ utilization = 0.99 }}\ndanger = {{ p95_ms = 60000 }}\n"
    );
    for r in backends {
        s.push_str(&format!(
            "[[upstream.backend]]\naddress = \"{}\"\n",
            r.addr()
        ));
    }
    if let Some(route) = extra_route {
        s.push_str(&format!(
            "\n[[upstream]]\nname = \"extra\"\nroutes = [\"{route}\"]\n[[upstream.backend]]\naddress = \"{}\"\n",
            backends[0].addr()
        ));
    }
    s
}

fn write(path: &Path, text: &str) {
    // Write beside and rename, as config managers do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_fail_no_request() {
    let r1 = replica("r1", "a", 8, 2).await;
    let r2 = replica("r2", "a", 8, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    write(&path, &config_text(&[&r1, &r2], 4, None));
    let levee = levee::app::start(levee::config::load(&path).unwrap())
        .await
        .unwrap();
    let addr = levee.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut c = Conn::open(addr).await;
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if c.get("/r").await.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for i in 0..50u32 {
        // Alternate the limit so every reload changes the upstream.
        write(&path, &config_text(&[&r1, &r2], 4 + i % 2, None));
        levee::app::reload(&levee.app, &path).expect("valid config reloads");
        tokio::time::sleep(Duration::from_millis(20)).await; // pacing the reloads, not a condition
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("50 reloads under load: {ok} ok, {failed} failed");
    assert!(ok > 200, "too little load: {ok}");
    assert_eq!(failed, 0);
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
    let metrics = levee.app.metrics.encode();
    assert!(
        metrics.contains("levee_config_reloads_total{result=\"success\"} 51"),
        "{metrics}"
    );
    for r in [&r1, &r2] {
        assert!(
            r.stats().peak_inflight <= 5,
            "cap held across reloads: {:?}",
            r.stats()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_keeps_the_old_config_serving() {
    let r1 = replica("r1", "a", 8, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    write(&path, &config_text(&[&r1], 4, None));
    let levee = levee::app::start(levee::config::load(&path).unwrap())
        .await
        .unwrap();
    std::fs::write(&path, "[server]\nlisten = []\n[[upstream]]\nname = \"\"\n").unwrap();
    let errors = levee::app::reload(&levee.app, &path).unwrap_err();
    assert!(
        errors.0.iter().any(|e| e.path == "server.listen"),
        "{errors}"
    );
    assert_eq!(fetch(levee.addr(), get("/x")).await.status, 200);
    let metrics = levee.app.metrics.encode();
    assert!(
        metrics.contains("levee_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_live_and_state_survives() {
    let r1 = replica("r1", "a", 8, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    write(&path, &config_text(&[&r1], 3, None));
    let levee = levee::app::start(levee::config::load(&path).unwrap())
        .await
        .unwrap();
    let addr = levee.addr();
    assert_eq!(fetch(addr, get("/x")).await.status, 200);
    let before = levee.app.snapshot().upstreams[0].backends[0].clone();

    write(&path, &config_text(&[&r1], 1, None));
    levee::app::reload(&levee.app, &path).unwrap();
    let after = levee.app.snapshot().upstreams[0].backends[0].clone();
    assert!(
        Arc::ptr_eq(&before, &after),
        "an unchanged backend keeps its state"
    );
    assert_eq!(after.limit(), 1);
    assert_eq!(
        after.metrics.requests(levee::config::Class::Normal).get(),
        1,
        "counters survive"
    );

    r1.reset_peak();
    let burst: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { fetch(addr, get("/x?ms=30")).await.status }))
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), 200);
    }
    assert_eq!(r1.stats().peak_inflight, 1, "the new limit holds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_is_reloaded_by_the_watcher() {
    let r1 = replica("r1", "a", 8, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    write(&path, &config_text(&[&r1], 3, None));
    let levee = levee::app::start(levee::config::load(&path).unwrap())
        .await
        .unwrap();
    let (_watcher, _task) = levee::app::watch_config(levee.app.clone(), path.clone()).unwrap();
    write(&path, &config_text(&[&r1], 3, Some("/extra/")));
    eventually(LIMIT, "the new upstream appears", || {
        levee
            .app
            .snapshot()
            .upstreams
            .iter()
            .any(|u| u.name == "extra")
    })
    .await;
}

/// Runs the real binary; returns it and its proxy and admin addresses, read from its log.
fn spawn_levee(config: &Path) -> (std::process::Child, String, String) {
    let (mut child, logs) = start_levee(config, &[]);
    let (proxy, admin) = listening(&logs);
    let _ = &mut child;
    (child, proxy, admin)
}

/// Starts the binary with `extra` arguments after `run -c FILE`; its log lines arrive
/// on the returned channel.
fn start_levee(
    config: &Path,
    extra: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["--log-format", "json", "run", "-c"])
        .arg(config)
        .args(extra)
        .env("LEVEE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Reads the proxy and admin addresses off the log.
fn listening(rx: &std::sync::mpsc::Receiver<String>) -> (String, String) {
    let (mut proxy, mut admin) = (None, None);
    let deadline = Instant::now() + LIMIT;
    let mut seen = Vec::new();
    while proxy.is_none() || admin.is_none() {
        let line = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => line,
            Err(e) => panic!(
                "levee logs its listeners ({e}); it logged:\n{}",
                seen.join("\n")
            ),
        };
        seen.push(line.clone());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let addr = v["fields"]["addr"].as_str().map(str::to_string);
        match v["fields"]["message"].as_str() {
            Some("proxy listening") => proxy = addr,
            Some("admin listening") => admin = addr,
            _ => {}
        }
    }
    (proxy.unwrap(), admin.unwrap())
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    None
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_as_soon_as_idle() {
    let r1 = replica("r1", "a", 8, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    write(&path, &config_text(&[&r1], 4, None));
    let (mut child, proxy, admin) = spawn_levee(&path);
    let proxy: std::net::SocketAddr = proxy.parse().unwrap();
    let admin: std::net::SocketAddr = admin.parse().unwrap();
    assert_eq!(fetch(admin, get("/readyz")).await.status, 200);

    // An idle keep-alive client must not hold the drain up.
    let mut idle = Conn::open(proxy).await;
    assert_eq!(idle.get("/first").await.status, 200);
    let slow = tokio::spawn(async move { fetch(proxy, get("/slow?ms=700")).await.status });
    eventually(LIMIT, "request in flight", || r1.stats().inflight == 1).await;
    let sent = Instant::now();
    signal(&child, "-TERM");
    // While draining, readiness is withdrawn and the request in flight finishes.
    let mut withdrawn = false;
    while sent.elapsed() < Duration::from_millis(600) {
        if fetch(admin, get("/readyz")).await.status == 503 {
            withdrawn = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(withdrawn, "/readyz still 200 while draining");
    assert_eq!(slow.await.unwrap(), 200, "the request in flight finished");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, LIMIT))
        .await
        .unwrap()
        .expect("levee exits");
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        took < Duration::from_secs(3),
        "drained in {took:?}, far below the 10 s grace"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_running_binary() {
    let r1 = replica("r1", "a", 8, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    write(&path, &config_text(&[&r1], 4, None));
    let (mut child, proxy, _admin) = spawn_levee(&path);
    let proxy: std::net::SocketAddr = proxy.parse().unwrap();
    assert_eq!(
        fetch(proxy, get("/extra/x")).await.status,
        200,
        "routed by / for now"
    );
    std::fs::write(&path, config_text(&[&r1], 4, Some("/extra/"))).unwrap();
    signal(&child, "-HUP");
    // Either SIGHUP or the watcher reloads; both are fine. The process keeps serving.
    tokio::time::sleep(Duration::from_millis(500)).await; // let a reload happen, then check it serves
    assert_eq!(fetch(proxy, get("/extra/x")).await.status, 200);
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop levee"
    );
    signal(&child, "-INT");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child, LIMIT))
        .await
        .unwrap();
    assert!(status.is_some(), "SIGINT stops levee");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_hands_the_listeners_over_without_failed_requests() {
    let r1 = replica("r1", "a", 8, 2).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    let sock = dir.path().join("upgrade.sock");
    let text = config_text(&[&r1], 8, None).replace(
        "[server]\n",
        &format!("[server]\nupgrade_sock = \"{}\"\n", sock.display()),
    );
    write(&path, &text);
    let (mut old, proxy, _admin) = spawn_levee(&path);
    let proxy: std::net::SocketAddr = proxy.parse().unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match tokio::time::timeout(LIMIT, fetch(proxy, get("/u"))).await {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    // The new binary waits for the sockets; SIGQUIT makes the old one send them.
    let (mut new, logs) = start_levee(&path, &["--upgrade"]);
    eventually(LIMIT, "upgrade socket ready", || sock.exists()).await;
    signal(&old, "-QUIT");
    let (new_proxy, _) = tokio::task::spawn_blocking(move || listening(&logs))
        .await
        .unwrap();
    assert_eq!(
        new_proxy.parse::<std::net::SocketAddr>().unwrap(),
        proxy,
        "same socket"
    );
    let old_status = tokio::task::spawn_blocking(move || wait_exit(&mut old, LIMIT))
        .await
        .unwrap()
        .expect("the old levee exits after handing over");
    assert!(old_status.success());
    let before = ok.load(Ordering::Relaxed);
    eventually(LIMIT, "the new levee serves", || {
        ok.load(Ordering::Relaxed) > before + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("binary upgrade under load: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    signal(&new, "-TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut new, LIMIT))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_request_when_turned_on() {
    let r1 = replica("r1", "a", 8, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("levee.toml");
    // From a trusted forwarder, the client is the address its X-Forwarded-For names
    // and its request id is kept.
    let text = config_text(&[&r1], 4, None).replace(
        "[server]\n",
        "[server]\naccess_log = true\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    write(&path, &text);
    let (mut child, logs) = start_levee(&path, &[]);
    let (proxy, _) = listening(&logs);
    let proxy: std::net::SocketAddr = proxy.parse().unwrap();
    let forwarded = [
        ("x-forwarded-for", "192.0.2.44"),
        ("x-request-id", "edge-7f3a"),
    ];
    let reply = fetch(proxy, get_with("/logged?x=1", &forwarded)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), Some("edge-7f3a"));
    let line = tokio::task::spawn_blocking(move || loop {
        let line = logs.recv_timeout(LIMIT).expect("an access log line");
        if line.contains("levee::access") {
            return line;
        }
    })
    .await
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let f = &v["fields"];
    assert_eq!(f["path"], "/logged");
    assert_eq!(f["status"], 200);
    assert_eq!(f["upstream"], "app");
    assert_eq!(f["class"], "normal");
    assert_eq!(f["client"], "192.0.2.44", "{line}");
    assert_eq!(f["request_id"], "edge-7f3a", "{line}");
    signal(&child, "-INT");
    let _ = tokio::task::spawn_blocking(move || wait_exit(&mut child, LIMIT)).await;
}
