//! gRPC through levee, through real sockets: tonic servers behind an h2 upstream
//! (`protocol = "h2"`), tonic clients in front; unary and server-streaming calls,
//! levee's own answers as gRPC statuses, the gRPC health check, and a backend that
//! goes away (GOAWAY) under load.

mod common;
#[path = "common/grpc.rs"]
mod grpc_server;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use grpc_server::{levee_h2, GrpcServer};
use levee::app::Running;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const LIMIT: Duration = Duration::from_secs(10);

/// levee with one h2 upstream over `backends` and `extra` in the upstream table.
async fn levee(backends: &[SocketAddr], extra: &str) -> Running {
    levee_h2(backends, extra).await
}

async fn client(addr: SocketAddr) -> HealthClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to levee");
    HealthClient::new(channel)
}

fn whole_server() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_pass_and_the_grpc_health_check_follows_the_server() {
    let server = GrpcServer::start().await;
    let levee = levee(
        &[server.addr],
        "[upstream.health]\ncheck = \"grpc\"\ninterval_ms = 50\ntimeout_ms = 50\nrise = 1\nfall = 1",
    )
    .await;
    let mut c = client(levee.addr()).await;
    let answer = c.check(whole_server()).await.expect("unary call");
    assert_eq!(answer.get_ref().status, ServingStatus::Serving as i32);
    let rid = answer.metadata().get("x-request-id").expect("a request id");
    assert_eq!(rid.len(), 32);

    // Server streaming: each change of status arrives on the open call.
    let mut watch = c.watch(whole_server()).await.expect("watch").into_inner();
    let first = watch.message().await.expect("stream").expect("a message");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    server
        .reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let next = tokio::time::timeout(LIMIT, watch.message())
        .await
        .expect("in time")
        .expect("stream")
        .expect("a message");
    assert_eq!(next.status, ServingStatus::NotServing as i32);

    // levee's own probe (grpc.health.v1.Health/Check) sees the server not serving.
    let up = levee.app.snapshot().upstreams[0].clone();
    eventually(LIMIT, "backend down by the gRPC check", || {
        up.backends[0].health.state() != levee::health::State::Healthy
    })
    .await;
    server
        .reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    eventually(LIMIT, "backend up again", || {
        up.backends[0].health.state() == levee::health::State::Healthy
    })
    .await;
    drop(watch);
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_call_is_unavailable_with_levee_s_reason() {
    let server = GrpcServer::start().await;
    let levee = levee(
        &[server.addr],
        "[upstream.limits]\nmax_inflight = 1\nqueue_depth = 0",
    )
    .await;
    let mut c = client(levee.addr()).await;
    // A watch call holds the one slot while it streams.
    let mut watch = c.watch(whole_server()).await.expect("watch").into_inner();
    assert!(watch.message().await.unwrap().is_some());
    let status = c.check(whole_server()).await.expect_err("shed");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("overloaded") && status.message().contains("app"),
        "{status:?}"
    );
    let pushback = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("pushback");
    assert!(pushback.to_str().unwrap().parse::<u64>().unwrap() >= 1000);
    assert!(status.metadata().get("x-request-id").is_some());
    // Counted as the 503 would be.
    let admin = levee.admin_addr.unwrap();
    let metrics = String::from_utf8_lossy(&fetch(admin, get("/metrics")).await.body).into_owned();
    let shed: f64 = samples(&metrics, "levee_shed_total").values().sum();
    assert_eq!(shed, 1.0, "{metrics}");
    drop(watch);
    eventually(LIMIT, "slot released", || all_idle(&levee)).await;
    assert!(c.check(whole_server()).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_silent_backends_are_grpc_statuses() {
    // Nothing listens: UNAVAILABLE.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let levee_dead = levee(&[dead], "retry_on_connect_failure = 0").await;
    let status = client(levee_dead.addr())
        .await
        .check(whole_server())
        .await
        .expect_err("no backend");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("connect_error"), "{status:?}");

    // A backend that accepts and never answers: DEADLINE_EXCEEDED after read_ms.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            open.push(s);
        }
    });
    let mut setup = Setup {
        upstream: "protocol = \"h2\"\n".into(),
        backends: vec![(silent_addr, "a".into())],
        server: "[server.timeouts]\nread_ms = 300".into(),
        tail: String::new(),
    };
    setup.server.push('\n');
    let levee_silent = setup.start().await;
    let status = client(levee_silent.addr())
        .await
        .check(whole_server())
        .await
        .expect_err("no answer");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_reach_h2_upstreams() {
    let server = GrpcServer::start().await;
    let levee = levee(&[server.addr], "").await;
    // Many requests share a few connections to the backend: a burst of concurrent
    // ones too, which waits for the one connection the first opens.
    let addr = levee.addr();
    let burst: Vec<_> = (0..32)
        .map(|_| tokio::spawn(async move { fetch(addr, get("/x")).await.status }))
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), 200);
    }
    // tonic answers a path it does not serve with a trailers-only UNIMPLEMENTED: it
    // came from the backend, over HTTP/2, to an HTTP/1.1 client.
    let reply = fetch(levee.addr(), get("/no.such.Service/Method")).await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("grpc-status"), Some("12"));
    assert!(reply.header("x-request-id").is_some());
    for _ in 0..20 {
        assert_eq!(fetch(levee.addr(), get("/x")).await.status, 200);
    }
    assert!(
        levee.app.proxy.pools.open(server.addr) <= 2,
        "{}",
        levee.app.proxy.pools.open(server.addr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_going_away_under_load_fails_no_call() {
    let (a, b) = (GrpcServer::start().await, GrpcServer::start().await);
    let levee = levee(&[a.addr, b.addr], "retry_on_connect_failure = 1").await;
    let addr = levee.addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = client(addr).await;
                let (mut ok, mut failed) = (0u32, Vec::new());
                let started = std::time::Instant::now();
                for _ in 0..400 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) || started.elapsed() > LIMIT
                    {
                        break;
                    }
                    match c.check(whole_server()).await {
                        Ok(_) => ok += 1,
                        Err(s) => failed.push(format!("{:?}: {}", s.code(), s.message())),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    // Once calls flow through both backends, `a` goes away gracefully (GOAWAY).
    let up = levee.app.snapshot().upstreams[0].clone();
    eventually(LIMIT, "calls on both backends", || {
        up.backends.iter().all(|b| {
            levee::metrics::CLASSES
                .iter()
                .map(|c| b.metrics.requests(*c).get())
                .sum::<u64>()
                > 20
        })
    })
    .await;
    let requests = |i: usize| -> u64 {
        levee::metrics::CLASSES
            .iter()
            .map(|c| up.backends[i].metrics.requests(*c).get())
            .sum()
    };
    a.shut_down(LIMIT).await;
    let b_then = requests(1);
    let mut ok = 0;
    let mut failed = Vec::new();
    for c in callers {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(ok > 100, "{ok} calls");
    assert!(
        requests(1) > b_then + 50,
        "calls went on after the GOAWAY, to b"
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    drop(b);
}

/// An HTTP/2 server that refuses every stream (RST_STREAM REFUSED_STREAM), as a
/// server at its stream limit or going away does.
async fn refusing_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(socket).await else {
                    return;
                };
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_goes_to_another_backend() {
    let refusing = refusing_server().await;
    let good = GrpcServer::start().await;
    let levee = levee(
        &[refusing, good.addr],
        "balance = \"round_robin\"\nretry_on_connect_failure = 1\n\
         [upstream.health]\neject_after_failures = 0",
    )
    .await;
    for i in 0..12 {
        // Whatever the method, with a body or without: the refused ones were not
        // processed, and a small body was kept to be sent again.
        let (method, body) = match i % 3 {
            0 => ("GET", ""),
            1 => ("DELETE", ""),
            _ => ("POST", "a body that goes twice"),
        };
        let req = http::Request::builder()
            .method(method)
            .uri("/x")
            .header("host", "t")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let reply = fetch(levee.addr(), req).await;
        assert_eq!(reply.status, 200, "{method}: {:?}", reply.body);
        assert_eq!(
            reply.header("grpc-status"),
            Some("12"),
            "served by the tonic server"
        );
    }
    let metrics =
        String::from_utf8_lossy(&fetch(levee.admin_addr.unwrap(), get("/metrics")).await.body)
            .into_owned();
    let retries = samples(&metrics, "levee_retries_total");
    let connect: f64 = retries
        .iter()
        .filter(|(k, _)| k.contains("kind=\"connect\""))
        .map(|(_, v)| v)
        .sum();
    assert!(connect >= 6.0, "{retries:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_health_probes_go_over_h2c() {
    let good = GrpcServer::start().await;
    let refusing = refusing_server().await;
    let levee = levee(
        &[good.addr, refusing],
        "[upstream.health]\npath = \"/health\"\ninterval_ms = 50\ntimeout_ms = 50\nrise = 1\nfall = 1",
    )
    .await;
    let up = levee.app.snapshot().upstreams[0].clone();
    // The tonic server answers any path over h2c with 200 (a gRPC status inside); the
    // other resets every stream, which no probe passes.
    eventually(LIMIT, "one probed up, one down", || {
        up.backends[0].health.state() == levee::health::State::Healthy
            && up.backends[1].health.probed()
            && up.backends[1].health.state() != levee::health::State::Healthy
    })
    .await;
}
