//! Client connections: HTTP/2 prior knowledge, silent clients, keep-alive.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_are_served() {
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r]).start().await;
    let tcp = TcpStream::connect(levee.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
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
