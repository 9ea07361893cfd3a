//! Client connections: HTTP/2 prior knowledge, silent clients, keep-alive.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use levee::app::Running;
use levee::demo::replica::Replica;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r]).start().await;
    let mut sender = h2_client(levee.addr()).await;
    for i in 0..3 {
        let req = http::Request::get(format!("http://test/h2/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 response");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-replica"], "r1");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains(&format!("/h2/{i}")));
    }
    eventually(Duration::from_secs(10), "idle", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_is_closed_after_the_header_timeout() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server("[server.timeouts]\nclient_header_ms = 1000")
        .start()
        .await;
    let mut silent = TcpStream::connect(levee.addr()).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("levee closes the silent connection")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    // Other clients were served meanwhile and still are.
    assert_eq!(fetch(levee.addr(), get("/x")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_never_reach_a_backend() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r]).start().await;
    let mut tcp = TcpStream::connect(levee.addr()).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 400"),
        "unexpected answer: {text}"
    );
    assert_eq!(
        r.stats().requests_seen,
        0,
        "the backend saw an ambiguous request"
    );
    assert_eq!(fetch(levee.addr(), get("/x")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_http10_request_is_answered_at_once() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server("[server.timeouts]\nclient_header_ms = 5000")
        .start()
        .await;
    let mut tcp = TcpStream::connect(levee.addr()).await.unwrap();
    let started = Instant::now();
    // 18 bytes: shorter than the HTTP/2 preface levee looks for.
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut out))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.0 200")
            || String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_after_the_idle_timeout_and_serve_until_then() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server("[server.timeouts]\nclient_idle_ms = 1000")
        .start()
        .await;
    let mut tcp = TcpStream::connect(levee.addr()).await.unwrap();
    let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..3 {
        tcp.write_all(req).await.unwrap();
        let head = read_response(&mut tcp).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        tokio::time::sleep(Duration::from_millis(300)).await; // idle, but under the timeout
    }
    // Idle since the last answer, 300 ms ago.
    let idle_from = Instant::now() - Duration::from_millis(300);
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("closed by levee")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let idle = idle_from.elapsed();
    assert!(
        idle >= Duration::from_millis(800) && idle < Duration::from_secs(4),
        "{idle:?}"
    );
}

/// Reads one response with a Content-Length body; returns its head.
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(n > 0, "closed mid-response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head;
            }
        }
    }
}

/// levee with a cap of two (`server` sets it) and two served connections holding it.
async fn at_a_cap_of_two(server: &str) -> (Replica, Running, Conn, Conn) {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r]).server(server).start().await;
    let mut a = Conn::open(levee.addr()).await;
    let mut b = Conn::open(levee.addr()).await;
    assert_eq!(a.get("/a").await.status, 200);
    assert_eq!(b.get("/b").await.status, 200);
    (r, levee, a, b)
}

/// Once `a` closes, a new connection is served, `b` never noticed, and the one refusal
/// is counted under `reason`.
async fn after_one_closes(levee: &Running, a: Conn, mut b: Conn, reason: &str) {
    drop(a);
    eventually(Duration::from_secs(5), "a closed", || {
        levee.app.connections.open() == 1
    })
    .await;
    assert_eq!(fetch(levee.addr(), get("/d")).await.status, 200);
    assert_eq!(b.get("/b2").await.status, 200);
    let metrics = levee.app.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "levee_connections_refused_total{{reason=\"{reason}\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_per_ip_cap_are_closed_and_others_served() {
    let (_r, levee, a, b) = at_a_cap_of_two("max_connections_per_ip = 2").await;
    let mut third = TcpStream::connect(levee.addr()).await.unwrap();
    let _ = third.write_all(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "the third connection from one address is closed");
    after_one_closes(&levee, a, b, "per_ip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_new_ones_get_503_until_one_closes() {
    let (r, levee, a, b) = at_a_cap_of_two("max_connections = 2").await;

    // The third is answered at once with a 503 that says why, and closed.
    let seen = r.stats().requests_seen;
    let mut third = TcpStream::connect(levee.addr()).await.unwrap();
    third
        .write_all(b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut answer))
        .await
        .expect("answered and closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("retry-after: 1\r\n"), "{answer}");
    assert!(
        answer.contains("\"reason\":\"max_connections\""),
        "{answer}"
    );
    assert_eq!(
        r.stats().requests_seen,
        seen,
        "the refused request reached the backend"
    );
    after_one_closes(&levee, a, b, "max_connections").await;
}
