//! The hyper data path's own guarantees, through real sockets: levee's backend pool
//! stays within the backend's limit plus the idle allowance, a pooled connection the
//! backend closed is never used for a request that then fails, a websocket-style
//! upgrade is spliced both ways and holds its slot, `Expect: 100-continue` uploads
//! arrive whole, and idle keep-alive connections keep being served after levee took
//! them back from hyper.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use levee::http::pool::IDLE_ALLOWANCE;
use levee::http1::conn::TICK as IDLE_RELEASE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

/// Reads one request head (and a Content-Length body) from `tcp`; `None` at EOF.
async fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = tcp.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            buf.drain(..end + 4 + len);
            return Some(head);
        }
        let mut chunk = [0u8; 4096];
        let n = tcp.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A keep-alive backend that counts the connections it has open, answers each request
/// after `delay`, and closes each connection after `per_conn` requests (0: never).
struct Counting {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

async fn counting(delay: Duration, per_conn: usize) -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (o, p, a) = (open.clone(), peak.clone(), accepted.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let (o, p) = (o.clone(), p.clone());
            a.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                let mut buf = Vec::new();
                let mut served = 0;
                while let Some(head) = read_request(&mut tcp, &mut buf).await {
                    tokio::time::sleep(delay).await;
                    served += 1;
                    let last = per_conn > 0 && served >= per_conn;
                    let health = head.starts_with("GET /health");
                    let body = if health { "ok" } else { "hello" };
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{}\r\n{body}",
                        body.len(),
                        if last { "connection: close\r\n" } else { "" }
                    );
                    if tcp.write_all(reply.as_bytes()).await.is_err() || last {
                        break;
                    }
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Counting {
        addr,
        open,
        peak,
        accepted,
    }
}

fn setup_for(addr: SocketAddr, upstream: &str) -> Setup {
    let mut s = Setup::new(&[]).upstream(upstream);
    s.backends = vec![(addr, "a".into())];
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_stay_within_the_limit_plus_the_idle_allowance() {
    let backend = counting(Duration::from_millis(20), 0).await;
    // Every wave is a burst the queue absorbs whole, however slow the machine: its
    // interval is longer than the test, so it never stands.
    let levee = setup_for(
        backend.addr,
        "[upstream.limits]\nmax_inflight = 4\nqueue_depth = 64\nqueue_timeout_ms = 5000\n\
         queue_interval_ms = 60000",
    )
    .start()
    .await;
    // Three waves of 16 concurrent clients, each on its own connection.
    for _ in 0..3 {
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let addr = levee.addr();
                tokio::spawn(async move { fetch(addr, get(&format!("/wave/{i}"))).await.status })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("task"), 200);
        }
    }
    let peak = backend.peak.load(Ordering::SeqCst);
    println!(
        "backend connections: peak {peak}, accepted {} (max_inflight 4, allowance {IDLE_ALLOWANCE})",
        backend.accepted.load(Ordering::SeqCst)
    );
    assert!(peak >= 1);
    assert!(
        peak <= 4 + IDLE_ALLOWANCE as usize,
        "peak {peak} backend connections for max_inflight 4"
    );
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}

/// Both runtime layouts serve many keep-alive clients at once, and the backend pool,
/// shared by the per-thread workers, stays within its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_runtime_layouts_serve_concurrent_keep_alive_clients() {
    for layout in ["per_thread", "multi_thread"] {
        let backend = counting(Duration::from_millis(2), 0).await;
        // 24 clients on 6 slots keep the queue full for the whole test: it would stand
        // (and shed) on a slow machine; this test is about serving them all, so the
        // queue's interval is longer than the test.
        let mut setup = setup_for(
            backend.addr,
            "[upstream.limits]\nmax_inflight = 6\nqueue_depth = 64\nqueue_timeout_ms = 5000\n\
             queue_interval_ms = 60000",
        );
        setup = setup.server(&format!("runtime = \"{layout}\""));
        let levee = setup.start().await;
        let clients: Vec<_> = (0..24)
            .map(|i| {
                let addr = levee.addr();
                tokio::spawn(async move {
                    let mut conn = Conn::open(addr).await;
                    let mut statuses = Vec::new();
                    for j in 0..5 {
                        statuses.push(conn.get(&format!("/c{i}/r{j}")).await.status);
                    }
                    statuses
                })
            })
            .collect();
        for c in clients {
            let statuses = tokio::time::timeout(LIMIT, c)
                .await
                .expect("clients finish")
                .expect("task");
            assert_eq!(statuses, vec![200; 5], "{layout}");
        }
        let peak = backend.peak.load(Ordering::SeqCst);
        assert!(
            (1..=6 + IDLE_ALLOWANCE as usize).contains(&peak),
            "{layout}: peak {peak} backend connections for max_inflight 6"
        );
        eventually(LIMIT, "idle", || all_idle(&levee)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_is_never_used() {
    // Every backend connection serves one request, then the backend closes it.
    let backend = counting(Duration::ZERO, 1).await;
    let levee = setup_for(backend.addr, "retry_on_connect_failure = 0")
        .start()
        .await;
    let mut conn = Conn::open(levee.addr()).await;
    for i in 0..50 {
        let reply = conn.get(&format!("/n/{i}")).await;
        assert_eq!(reply.status, 200, "request {i}: {:?}", reply.body);
        // Give the close time to arrive, as it would on an idle pooled connection.
        if i % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let backend_state = &levee.app.snapshot().upstreams[0].backends[0];
    assert_eq!(
        backend_state.metrics.responses[0].get(),
        0,
        "no request failed on the backend"
    );
    eventually(LIMIT, "closed connections leave the count", || {
        backend.open.load(Ordering::SeqCst) == 0
    })
    .await;
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}

/// A backend that accepts `Upgrade: echo` with 101 and then echoes bytes.
async fn upgrading_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let Some(head) = read_request(&mut tcp, &mut buf).await else {
                    return;
                };
                if !head.to_ascii_lowercase().contains("upgrade: echo") {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let _ = tcp
                    .write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
                    )
                    .await;
                if !buf.is_empty() && tcp.write_all(&buf).await.is_err() {
                    return;
                }
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_spliced_both_ways_and_holds_its_slot() {
    let backend = upgrading_backend().await;
    let levee = setup_for(backend, "").start().await;
    let mut tcp = TcpStream::connect(levee.addr()).await.expect("connect");
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, tcp.read(&mut chunk))
            .await
            .expect("101 in time")
            .expect("read");
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    let upstream = levee.app.snapshot().upstreams[0].clone();
    assert_eq!(upstream.inflight(), 1, "the tunnel holds its slot");
    for msg in [&b"ping"[..], b"a longer message over the tunnel"] {
        tcp.write_all(msg).await.expect("write");
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(LIMIT, tcp.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("echo");
        assert_eq!(back, msg);
    }
    drop(tcp);
    eventually(LIMIT, "the slot is released when the tunnel closes", || {
        all_idle(&levee)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_uploads_arrive_whole() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r]).start().await;
    let body = "x".repeat(100_000);
    let req = http::Request::post("/echo")
        .header("host", "test")
        .header("expect", "100-continue")
        .body(Full::new(Bytes::from(body.clone())))
        .expect("request");
    let reply = fetch(levee.addr(), req).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.json()["bytes"],
        body.len() as u64,
        "the replica read the whole body"
    );
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_that_released_its_buffer_keeps_serving() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r]).start().await;
    let mut conn = Conn::open(levee.addr()).await;
    for i in 0..4 {
        assert_eq!(conn.get(&format!("/a/{i}")).await.status, 200);
        // Long enough for levee to release the connection's buffers between requests.
        tokio::time::sleep(IDLE_RELEASE * 3).await;
    }
    // A request with a body, then idle: the next request on the connection is served.
    let post = http::Request::post("/a/post")
        .header("host", "levee.test")
        .body(Full::new(Bytes::from_static(b"0123456789")))
        .expect("request");
    assert_eq!(conn.request(post).await.status, 200);
    tokio::time::sleep(IDLE_RELEASE * 3).await;
    assert_eq!(conn.get("/a/after-post").await.status, 200);
    // Pipelined requests across a release: both answered, in order.
    let mut tcp = TcpStream::connect(levee.addr()).await.expect("connect");
    tcp.write_all(b"GET /p/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /p/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + LIMIT;
    while got.windows(12).filter(|w| w == b"HTTP/1.1 200").count() < 2 {
        let n = tokio::time::timeout_at(deadline, tcp.read(&mut chunk))
            .await
            .expect("both answers in time")
            .expect("read");
        assert!(n > 0, "closed before both answers");
        got.extend_from_slice(&chunk[..n]);
    }
    eventually(LIMIT, "idle", || all_idle(&levee)).await;
}
