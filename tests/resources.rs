//! Resource exhaustion on the real `levee` binary.
//!
//! - **File descriptors**: levee runs under a limit of 64 open files (`prlimit
//!   --nofile=64:64`, or `ulimit -n 64` in `sh` when prlimit is missing), then 150 client
//!   connections each send a request at once and hold their connection: far more than it
//!   can hold. With the default cap (derived from the limit) every client gets an answer
//!   (served, or 503 at once) and `/healthz` stays reachable; with a cap set above what
//!   the limit holds, `accept` fails and levee answers the waiting clients 503 through a
//!   reserved descriptor. Either way it stays up, warns at most once a second, blames no
//!   backend, and serves normally again once the excess connections close.
//! - **Header flood**: 32 connections send requests with the largest headers levee
//!   takes, with `server.max_header_bytes` raised to 128 KiB — 96 headers of 1 KiB
//!   (forwarded), 250 of 1 KiB (431: over the head size), 300 headers (431: over 100
//!   fields) and one 1.1 MiB header (431) — for 6 s. levee must stay up, answer every
//!   request with a status, and keep its resident memory (VmRSS, sampled every 100 ms,
//!   and the kernel's high-water mark VmHWM) under 200 MiB.
//!
//! Figures are printed; run with `--nocapture` to see them.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::{admin_json, LeveeProcess};
use common::*;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FD_LIMIT: u32 = 64;
const CLIENTS: usize = 150;
const RSS_BOUND_KIB: u64 = 200 * 1024;

/// The real binary, killed (by its id) on drop, with its log collected.
fn write_config(
    dir: &tempfile::TempDir,
    backends: &[SocketAddr],
    extra_server: &str,
    extra_upstream: &str,
) -> std::path::PathBuf {
    let path = dir.path().join("levee.toml");
    let mut text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n{extra_server}\n\
         [[upstream]]\nname = \"app\"\nroutes = [\"/\"]\n\
         [upstream.limits]\nmax_inflight = 64\nqueue_depth = 256\nqueue_timeout_ms = 2000\n\
         [upstream.levels]\ncaution = {{ utilization = 0.99 }}\ndanger = {{ queue = 250 }}\n{extra_upstream}\n"
    );
    for b in backends {
        text.push_str(&format!("[[upstream.backend]]\naddress = \"{b}\"\n"));
    }
    std::fs::write(&path, text).expect("write config");
    path
}

/// One GET on a fresh connection with a deadline: the status, or `None`.
async fn try_get(addr: SocketAddr, path: &str, limit: Duration) -> Option<u16> {
    tokio::time::timeout(limit, async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .ok()?;
        tokio::spawn(conn);
        let resp = sender.send_request(get(path)).await.ok()?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.ok()?;
        Some(status)
    })
    .await
    .ok()
    .flatten()
}

/// How one of the excess clients fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fate {
    /// An HTTP answer with this status.
    Answered(u16),
    /// The connection was refused, reset or closed without an answer.
    Closed,
    /// Connected (the kernel queued it) but no answer within the wait.
    Waiting,
}

/// Connects, sends one GET and waits up to `wait` for the status line; keeps the
/// connection open (returned) so that it holds its descriptor in levee.
async fn excess_client(addr: SocketAddr, wait: Duration) -> (Fate, Option<TcpStream>) {
    let Ok(Ok(mut tcp)) = tokio::time::timeout(wait, TcpStream::connect(addr)).await else {
        return (Fate::Closed, None);
    };
    if tcp
        .write_all(b"GET /fd?ms=50 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .is_err()
    {
        return (Fate::Closed, None);
    }
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return (Fate::Waiting, Some(tcp)),
            Ok(Ok(0)) | Ok(Err(_)) => return (Fate::Closed, None),
            Ok(Ok(n)) => {
                got.extend_from_slice(&buf[..n]);
                if let Some(line) = got
                    .split(|&b| b == b'\n')
                    .next()
                    .filter(|_| got.contains(&b'\n'))
                {
                    let status = std::str::from_utf8(line)
                        .ok()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    return (Fate::Answered(status), Some(tcp));
                }
            }
        }
    }
}

/// The command that runs levee with at most `FD_LIMIT` descriptors.
fn fd_limit_wrapper(limit: u32) -> Vec<String> {
    let prlimit = Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if prlimit {
        vec![
            "prlimit".into(),
            format!("--nofile={limit}:{limit}"),
            "--".into(),
        ]
    } else {
        vec![
            "sh".into(),
            "-c".into(),
            format!("ulimit -n {limit} && exec \"$0\" \"$@\""),
        ]
    }
}

/// The soft open-files limit of process `pid`, as /proc writes it.
fn open_files_limit(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .map(|l| l.split_whitespace().nth(3).unwrap_or("?").to_owned())
        })
        .unwrap_or_default()
}

/// What happened to levee and its clients in one descriptor-exhaustion run.
struct Exhaustion {
    fates: std::collections::BTreeMap<Fate, usize>,
    health_during: Option<u16>,
    recovered: Option<Duration>,
    after: Vec<Option<u16>>,
    health_after: Option<u16>,
    ejections: Vec<u64>,
    idle_fds: usize,
    fds_after: usize,
    warnings: usize,
    secs: f64,
}

/// Runs levee under `FD_LIMIT` descriptors with `extra_server` in its config, sends
/// `CLIENTS` clients at once (each holds its connection), then lets them go and checks
/// that levee serves normally again.
async fn exhaust(label: &str, extra_server: &str) -> Exhaustion {
    let r1 = replica("r1", "a", 64, 1).await;
    let r2 = replica("r2", "a", 64, 1).await;
    let dir = tempfile::tempdir().unwrap();
    // A short client-header timeout so that silent connections give their descriptor
    // back, and a short pool idle time so that the backend connections opened for the
    // burst close soon after it (or they would look like a leak); passive ejection after 3 failures, for 10 s, to see whether levee blames
    // the backends for its own lack of descriptors.
    let config = write_config(
        &dir,
        &[r1.addr(), r2.addr()],
        &format!(
            "{extra_server}\n[server.timeouts]\nclient_header_ms = 3000\nupstream_idle_ms = 500"
        ),
        "[upstream.health]\neject_after_failures = 3\neject_ms = 10000",
    );
    let wrapper = fd_limit_wrapper(FD_LIMIT);
    let mut levee = LeveeProcess::spawn(&config, &wrapper);
    let limit = open_files_limit(levee.pid());
    assert_eq!(
        limit,
        FD_LIMIT.to_string(),
        "the limit did not apply ({wrapper:?})"
    );
    assert_eq!(
        try_get(levee.proxy, "/warm", Duration::from_secs(5)).await,
        Some(200)
    );
    let idle_fds = levee.fds();

    // More clients than descriptors, all at once.
    let t0 = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = levee.proxy;
            tokio::spawn(async move { excess_client(addr, Duration::from_secs(3)).await })
        })
        .collect();
    let mut fates = std::collections::BTreeMap::new();
    let mut held = Vec::new();
    for c in clients {
        let (fate, conn) = c.await.unwrap();
        *fates.entry(fate).or_insert(0usize) += 1;
        held.extend(conn);
    }
    let peak_fds = levee.fds();
    let health_during = try_get(levee.admin, "/healthz", Duration::from_secs(1)).await;
    let alive_during = levee.alive();
    println!(
        "{label}: fd limit {FD_LIMIT}: levee used {idle_fds} descriptors idle, {peak_fds} with {CLIENTS} clients; their fates after at most 3 s: {fates:?}; /healthz during: {health_during:?}"
    );

    // The excess leaves; levee must serve normally again.
    drop(held);
    let released = Instant::now();
    let mut recovered = None;
    while released.elapsed() < Duration::from_secs(15) {
        if try_get(levee.proxy, "/again", Duration::from_secs(1)).await == Some(200) {
            recovered = Some(released.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut after = Vec::new();
    for i in 0..20 {
        after.push(try_get(levee.proxy, &format!("/after{i}"), Duration::from_secs(2)).await);
    }
    let health_after = try_get(levee.admin, "/healthz", Duration::from_secs(2)).await;
    let status = admin_json(levee.admin, "/status").await;
    let ejections: Vec<u64> = status
        .as_ref()
        .and_then(|s| s["upstreams"][0]["backends"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|b| b["ejections"].as_u64().unwrap_or(0))
        .collect();
    // Descriptors come back once levee has closed what the clients left and the pooled
    // backend connections have idled out.
    let mut fds_after = levee.fds();
    for _ in 0..100 {
        if fds_after <= idle_fds + 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        fds_after = levee.fds();
    }
    let warnings = levee.log_count("accept failed");
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{label}: serving again {} after the excess closed; next 20 requests {:?}; /healthz {:?}; backend ejections {ejections:?}; descriptors back to {fds_after}; {warnings} 'accept failed' warnings over {secs:.1} s",
        recovered.map_or("never".into(), |d| format!("{} ms", d.as_millis())),
        after.iter().fold(std::collections::BTreeMap::new(), |mut m, s| {
            *m.entry(*s).or_insert(0) += 1;
            m
        }),
        health_after,
    );
    assert!(alive_during && levee.alive(), "{label}: levee exited");
    assert_eq!(levee.log_count("panicked"), 0, "{label}: levee panicked");
    Exhaustion {
        fates,
        health_during,
        recovered,
        after,
        health_after,
        ejections,
        idle_fds,
        fds_after,
        warnings,
        secs,
    }
}

impl Exhaustion {
    /// What must hold whatever the cap: levee recovers, serves normally, leaks no
    /// descriptor, never blames the backends, and does not log in a loop.
    fn assert_recovered(&self, label: &str) {
        assert!(
            self.recovered.is_some(),
            "{label}: levee did not serve again after the excess closed"
        );
        assert!(
            self.after.iter().all(|s| *s == Some(200)),
            "{label}: not normal after recovery: {:?}",
            self.after
        );
        assert_eq!(self.health_after, Some(200), "{label}");
        assert!(
            self.fds_after <= self.idle_fds + 8,
            "{label}: descriptors leaked: {} idle before, {} after",
            self.idle_fds,
            self.fds_after
        );
        assert!(
            self.ejections.iter().all(|&n| n == 0),
            "{label}: a healthy backend was ejected for levee's own lack of descriptors: {:?}",
            self.ejections
        );
        // At most one warning a second (plus the first), not one per failed accept.
        assert!(
            (self.warnings as f64) <= self.secs + 2.0,
            "{label}: {} accept warnings in {:.1} s",
            self.warnings,
            self.secs
        );
    }

    fn count(&self, pred: impl Fn(&Fate) -> bool) -> usize {
        self.fates
            .iter()
            .filter(|(f, _)| pred(f))
            .map(|(_, n)| n)
            .sum()
    }
}

/// With the default cap (from the open-files limit), every client gets an answer:
/// those within the cap are served, the rest get a 503 at once; the admin listener
/// stays reachable meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_with_the_default_cap_every_client_is_answered() {
    let run = exhaust("default cap", "").await;
    run.assert_recovered("default cap");
    assert_eq!(
        run.count(|f| matches!(f, Fate::Answered(_))),
        CLIENTS,
        "every client answered: {:?}",
        run.fates
    );
    assert!(
        run.fates.get(&Fate::Answered(200)).copied().unwrap_or(0) > 0
            && run.fates.get(&Fate::Answered(503)).copied().unwrap_or(0) > 0,
        "some served, the rest refused: {:?}",
        run.fates
    );
    assert_eq!(run.health_during, Some(200), "/healthz while at the cap");
}

/// With a cap above what the limit holds, `accept` itself fails (EMFILE): levee takes
/// waiting clients off the queue through its reserved descriptor and answers them 503,
/// rather than leave them hanging, and warns at most once a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_past_a_too_high_cap_the_excess_is_refused() {
    let run = exhaust("cap 1000", "max_connections = 1000").await;
    run.assert_recovered("cap 1000");
    assert!(
        run.fates.get(&Fate::Answered(200)).copied().unwrap_or(0) > 0,
        "some served: {:?}",
        run.fates
    );
    // Under EMFILE a client may also be cut (levee could not open its backend
    // connection, or the refusal lost its race with the client's request); what must
    // not happen is a queue of clients that nobody answers.
    let waiting = run.fates.get(&Fate::Waiting).copied().unwrap_or(0);
    assert!(
        waiting <= CLIENTS / 10,
        "{waiting} clients left waiting without an answer: {:?}",
        run.fates
    );
}

/// levee sizes its descriptor table for its client cap before it serves: a table that
/// grows while clients arrive stalls every thread that opens a descriptor (a
/// multi-threaded process's table grows a doubling at a time, each step waiting for an
/// RCU grace period). So `FDSize` covers two descriptors per allowed client from the
/// start, and 250 clients held open at once through a backend do not grow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_descriptor_table_is_sized_for_the_cap_before_clients_come() {
    const LIMIT: u32 = 1024;
    const CAP: u64 = 300;
    const HELD: usize = 250;
    let r1 = replica("r1", "a", 300, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &[r1.addr()], &format!("max_connections = {CAP}"), "");
    let levee = LeveeProcess::spawn(&config, &fd_limit_wrapper(LIMIT));
    assert_eq!(
        open_files_limit(levee.pid()),
        LIMIT.to_string(),
        "the limit did not apply"
    );
    // Two per client and levee's reserve (128 at this limit), within the limit.
    let wanted = (2 * CAP + 128).min(u64::from(LIMIT));
    let table = levee.status_kib("FDSize");
    let open_at_start = levee.fds();
    assert!(
        table >= wanted,
        "descriptor table of {table} slots at start, {wanted} wanted ({open_at_start} open)"
    );

    // Clients that each get an answer through the backend and keep their connection.
    let mut held = Vec::new();
    for i in 0..HELD {
        let mut conn = Conn::open(levee.proxy).await;
        let reply = tokio::time::timeout(Duration::from_secs(5), conn.get(&format!("/c{i}")))
            .await
            .unwrap_or_else(|_| panic!("client {i}: no answer in 5 s"));
        assert_eq!(reply.status, 200, "client {i}");
        held.push(conn);
    }
    let open_with_clients = levee.fds();
    assert!(
        open_with_clients >= open_at_start + HELD,
        "{open_with_clients} descriptors open with {HELD} clients, {open_at_start} at start"
    );
    assert_eq!(
        levee.status_kib("FDSize"),
        table,
        "the table grew while {HELD} clients came ({open_with_clients} descriptors open)"
    );
    println!(
        "descriptor table: {table} slots at start ({open_at_start} open), the same with {HELD} clients held ({open_with_clients} open)"
    );
}

/// A request with `count` headers of `size` bytes each.
fn big_request(count: usize, size: usize, path: &str) -> http::Request<Full<Bytes>> {
    let value = "v".repeat(size);
    let mut b = http::Request::get(path).header("host", "t");
    for i in 0..count {
        b = b.header(format!("x-h{i}"), value.as_str());
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_flood_keeps_memory_bounded() {
    let backend = replica("r1", "a", 64, 0).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&dir, &[backend.addr()], "max_header_bytes = 131072", "");
    let mut levee = LeveeProcess::spawn(&config, &[]);
    assert_eq!(
        try_get(levee.proxy, "/warm", Duration::from_secs(5)).await,
        Some(200)
    );
    let rss_start = levee.status_kib("VmRSS");

    // Request shapes: (headers, bytes each, label).
    const SHAPES: [(usize, usize, &str); 4] = [
        (96, 1024, "96 x 1 KiB"),
        (250, 1024, "250 x 1 KiB"),
        (300, 16, "300 headers"),
        (1, 1_100_000, "1 x 1.1 MiB"),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let statuses: Arc<Mutex<std::collections::BTreeMap<(&str, u16), u64>>> =
        Arc::new(Mutex::new(Default::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..32usize)
        .map(|w| {
            let (stop, statuses, sent) = (stop.clone(), statuses.clone(), sent.clone());
            let addr = levee.proxy;
            tokio::spawn(async move {
                // Mostly the forwarded 96-header shape; every 4th worker the others in turn.
                let mut conn = None;
                for i in 0..100_000usize {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (count, size, label) = if w % 4 == 0 {
                        SHAPES[1 + i % 3]
                    } else {
                        SHAPES[0]
                    };
                    let req = big_request(count, size, "/flood");
                    sent.fetch_add(1, Ordering::Relaxed);
                    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
                        if conn.is_none() {
                            let tcp = TcpStream::connect(addr).await.ok()?;
                            let (sender, c) = hyper::client::conn::http1::handshake(
                                hyper_util::rt::TokioIo::new(tcp),
                            )
                            .await
                            .ok()?;
                            tokio::spawn(c);
                            conn = Some(sender);
                        }
                        let sender = conn.as_mut()?;
                        sender.ready().await.ok()?;
                        let resp = sender.send_request(req).await.ok()?;
                        let status = resp.status().as_u16();
                        resp.into_body().collect().await.ok()?;
                        Some(status)
                    })
                    .await;
                    let status = match outcome {
                        Ok(Some(s)) => s,
                        Ok(None) => 0,
                        Err(_) => 1, // hung
                    };
                    if status != 200 {
                        conn = None; // levee may close after refusing a request
                    }
                    *statuses.lock().unwrap().entry((label, status)).or_default() += 1;
                }
            })
        })
        .collect();

    let t0 = Instant::now();
    let mut rss_max = 0;
    let mut samples = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        rss_max = rss_max.max(levee.status_kib("VmRSS"));
        samples += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let alive = levee.alive();
    let hwm = levee.status_kib("VmHWM");
    let rss_end = levee.status_kib("VmRSS");
    let after = try_get(levee.proxy, "/after", Duration::from_secs(5)).await;
    let statuses = statuses.lock().unwrap().clone();
    let total = sent.load(Ordering::Relaxed);
    println!(
        "header flood: {total} requests in {secs:.1} s ({:.0}/s), outcomes (shape, status; 0 = no answer, 1 = hung): {statuses:?}",
        total as f64 / secs
    );
    println!(
        "header flood: levee VmRSS {} MiB before, max {} MiB over {samples} samples, {} MiB after; VmHWM {} MiB (bound {} MiB); alive {alive}; next request {after:?}",
        rss_start / 1024,
        rss_max / 1024,
        rss_end / 1024,
        hwm / 1024,
        RSS_BOUND_KIB / 1024
    );

    assert!(alive, "levee exited under the header flood");
    assert_eq!(levee.log_count("panicked"), 0, "levee panicked");
    assert!(
        hwm < RSS_BOUND_KIB && rss_max < RSS_BOUND_KIB,
        "memory not bounded"
    );
    assert_eq!(after, Some(200), "not serving normally after the flood");
    let hung: u64 = statuses
        .iter()
        .filter(|((_, s), _)| *s == 1)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(hung, 0, "requests hung: {statuses:?}");
    let forwarded: u64 = statuses
        .iter()
        .filter(|((label, s), _)| *label == SHAPES[0].2 && *s == 200)
        .map(|(_, n)| n)
        .sum();
    assert!(
        forwarded > 100,
        "too few large requests served: {statuses:?}"
    );
    for shape in &SHAPES[1..] {
        let refused: u64 = statuses
            .iter()
            .filter(|((label, s), _)| *label == shape.2 && *s == 431)
            .map(|(_, n)| n)
            .sum();
        assert!(refused > 0, "{} never answered 431: {statuses:?}", shape.2);
    }
}
