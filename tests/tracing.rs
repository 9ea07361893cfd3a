//! Traces through real sockets: an OTLP/HTTP receiver inside the test decodes what
//! levee sends (`ExportTraceServiceRequest`, protobuf) and checks parentage and
//! attributes of proxied and shed requests; the backends echo the `traceparent` they
//! got. A collector that is down, and one that answers after 2 s, delay no request,
//! and the spans they lose are counted.

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use levee::trace::context::hex;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

const LIMIT: Duration = Duration::from_secs(15);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER: &str = "00f067aa0ba902b7";

/// What the receiver got: the spans, each with its resource's `service.name`, and the
/// paths it was posted to.
#[derive(Default)]
struct Received {
    spans: Vec<(String, Span)>,
    posts: Vec<String>,
}

/// An OTLP/HTTP receiver on `127.0.0.1:0` that answers each export after `delay`.
struct Receiver {
    addr: SocketAddr,
    got: Arc<parking_lot::Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(delay: Duration) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(parking_lot::Mutex::new(Received::default()));
        let shared = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let got = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: http::Request<Incoming>| {
                        let got = got.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let ok_type = req
                                .headers()
                                .get("content-type")
                                .is_some_and(|v| v == "application/x-protobuf");
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let export = ExportTraceServiceRequest::decode(body).unwrap();
                            {
                                let mut g = got.lock();
                                g.posts.push(path);
                                assert!(ok_type, "content-type is application/x-protobuf");
                                for rs in export.resource_spans {
                                    let service = rs
                                        .resource
                                        .iter()
                                        .flat_map(|r| &r.attributes)
                                        .find(|kv| kv.key == "service.name")
                                        .and_then(|kv| kv.value.as_ref())
                                        .and_then(|v| match &v.value {
                                            Some(Value::StringValue(s)) => Some(s.clone()),
                                            _ => None,
                                        })
                                        .unwrap_or_default();
                                    for ss in rs.scope_spans {
                                        for s in ss.spans {
                                            g.spans.push((service.clone(), s));
                                        }
                                    }
                                }
                            }
                            tokio::time::sleep(delay).await;
                            let answer = ExportTraceServiceResponse::default().encode_to_vec();
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Receiver { addr, got, task }
    }

    fn spans(&self) -> Vec<Span> {
        self.got
            .lock()
            .spans
            .iter()
            .map(|(_, s)| s.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.got.lock().spans.len()
    }
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a Value> {
    s.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn text<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(s, key) {
        Some(Value::StringValue(v)) => Some(v.as_str()),
        _ => None,
    }
}

fn int(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key) {
        Some(Value::IntValue(v)) => Some(*v),
        _ => None,
    }
}

async fn scrape(levee: &levee::app::Running) -> String {
    let reply = fetch(levee.admin_addr.unwrap(), get("/metrics")).await;
    String::from_utf8_lossy(&reply.body).into_owned()
}

fn metric(body: &str, name: &str) -> f64 {
    samples(body, name).values().sum()
}

/// The `traceparent` the backend got, from its `?echo=1` body.
fn echoed_traceparent(reply: &Reply) -> Option<String> {
    reply.json()["headers"]["traceparent"]
        .as_str()
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_requests_with_one_traceparent_are_forty_children_of_the_callers_span() {
    let receiver = Receiver::start(Duration::ZERO).await;
    let r1 = replica("r1", "a", 4, 0).await;
    let r2 = replica("r2", "a", 4, 0).await;
    // The base URL: levee appends /v1/traces. A ratio of 0: only the caller's decision
    // samples these requests.
    let levee = Setup::new(&[&r1, &r2])
        .server(&format!(
            "[server.tracing]\notlp_endpoint = \"http://{}\"\nsample_ratio = 0.0\nservice_name = \"edge-levee\"",
            receiver.addr
        ))
        .start()
        .await;
    let parent = format!("00-{TRACE}-{CALLER}-01");
    let mut conn = Conn::open(levee.addrs[0]).await;
    let mut backend_parents = BTreeSet::new();
    for _ in 0..40 {
        let reply = conn
            .request(get_with(
                "/items?echo=1",
                &[
                    ("traceparent", &parent),
                    ("tracestate", "congo=t61rcWkgMzE"),
                ],
            ))
            .await;
        assert_eq!(reply.status, 200);
        let tp = echoed_traceparent(&reply).expect("the backend got a traceparent");
        let fields: Vec<&str> = tp.split('-').collect();
        assert_eq!(fields.len(), 4, "{tp}");
        assert_eq!(fields[0], "00");
        assert_eq!(fields[1], TRACE, "same trace");
        assert_ne!(fields[2], CALLER, "levee's span is the backend's parent");
        assert_eq!(fields[3], "01");
        assert_eq!(
            reply.json()["headers"]["tracestate"].as_str(),
            Some("congo=t61rcWkgMzE"),
            "tracestate is passed on"
        );
        backend_parents.insert(fields[2].to_string());
    }
    assert_eq!(backend_parents.len(), 40, "one span per request");

    eventually(LIMIT, "40 spans at the receiver", || receiver.count() >= 40).await;
    // A little longer: no 41st.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 40);
    {
        let got = receiver.got.lock();
        assert!(
            got.posts.iter().all(|p| p == "/v1/traces"),
            "{:?}",
            got.posts
        );
        assert!(got.spans.iter().all(|(svc, _)| svc == "edge-levee"));
    }
    let backends: BTreeSet<String> = [r1.addr().to_string(), r2.addr().to_string()].into();
    let mut ids = BTreeSet::new();
    for s in &spans {
        assert_eq!(hex(&s.trace_id), TRACE);
        assert_eq!(
            hex(&s.parent_span_id),
            CALLER,
            "the caller's span is the parent"
        );
        assert_eq!(s.kind, SpanKind::Server as i32);
        assert_eq!(s.name, "GET");
        assert_eq!(s.trace_state, "congo=t61rcWkgMzE");
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        assert!(s.start_time_unix_nano > 0);
        assert_eq!(text(s, "http.request.method"), Some("GET"));
        assert_eq!(text(s, "url.path"), Some("/items"));
        assert_eq!(int(s, "http.response.status_code"), Some(200));
        assert_eq!(text(s, "levee.upstream"), Some("app"));
        assert!(backends.contains(text(s, "levee.backend").unwrap()));
        assert_eq!(text(s, "levee.class"), Some("normal"));
        assert_eq!(text(s, "levee.level"), Some("safe"));
        assert!(matches!(attr(s, "levee.queue_wait_ms"), Some(Value::DoubleValue(w)) if *w >= 0.0));
        assert_eq!(int(s, "levee.retries"), Some(0));
        assert!(attr(s, "levee.shed_reason").is_none());
        assert_ne!(
            s.status.as_ref().map(|st| st.code),
            Some(StatusCode::Error as i32)
        );
        ids.insert(hex(&s.span_id));
    }
    assert_eq!(
        ids, backend_parents,
        "every backend request's parent is a levee span"
    );
    let m = scrape(&levee).await;
    assert_eq!(metric(&m, "levee_trace_spans_dropped_total"), 0.0);
    assert_eq!(metric(&m, "levee_trace_spans_exported_total"), 40.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shed_span_says_why_and_unsampled_callers_pass_through_untouched() {
    let receiver = Receiver::start(Duration::ZERO).await;
    let r1 = replica("r1", "a", 1, 0).await;
    let levee = Setup::new(&[&r1])
        .server(&format!(
            "[server.tracing]\notlp_endpoint = \"http://{}/v1/traces\"\nsample_ratio = 1.0",
            receiver.addr
        ))
        .upstream("[upstream.limits]\nmax_inflight = 1\nqueue_depth = 0")
        .start()
        .await;
    // The only slot is held by a slow request (a new trace: no traceparent, ratio 1).
    let addr = levee.addrs[0];
    let hold = tokio::spawn(async move { fetch(addr, get("/slow?ms=1500")).await });
    eventually(LIMIT, "the slot is taken", || {
        levee.app.snapshot().upstreams[0].inflight() == 1
    })
    .await;
    let parent = format!("00-{TRACE}-{CALLER}-01");
    let shed = fetch(addr, get_with("/shed", &[("traceparent", &parent)])).await;
    assert_eq!(shed.status, 503);
    let reason = shed.json()["reason"].as_str().unwrap().to_string();
    assert_eq!(hold.await.unwrap().status, 200);

    // The caller did not sample: no span, and the backend gets the caller's value.
    let unsampled = format!("00-{TRACE}-{CALLER}-00");
    let reply = fetch(
        addr,
        get_with("/quiet?echo=1", &[("traceparent", &unsampled)]),
    )
    .await;
    assert_eq!(
        echoed_traceparent(&reply).as_deref(),
        Some(unsampled.as_str())
    );

    eventually(LIMIT, "2 spans", || receiver.count() >= 2).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let shed_span = spans
        .iter()
        .find(|s| text(s, "url.path") == Some("/shed"))
        .expect("the shed's span");
    assert_eq!(hex(&shed_span.trace_id), TRACE);
    assert_eq!(hex(&shed_span.parent_span_id), CALLER);
    assert_eq!(int(shed_span, "http.response.status_code"), Some(503));
    assert_eq!(text(shed_span, "levee.shed_reason"), Some(reason.as_str()));
    assert_eq!(text(shed_span, "levee.upstream"), Some("app"));
    assert!(text(shed_span, "levee.level").is_some());
    assert!(text(shed_span, "levee.backend").is_none());
    let status = shed_span.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);

    let root = spans
        .iter()
        .find(|s| text(s, "url.path") == Some("/slow"))
        .expect("the slow request's span");
    assert!(root.parent_span_id.is_empty(), "a new trace has no parent");
    assert_ne!(hex(&root.trace_id), TRACE);
    assert_eq!(
        text(root, "levee.backend"),
        Some(r1.addr().to_string().as_str())
    );
    assert!(root.end_time_unix_nano - root.start_time_unix_nano >= 1_400_000_000);
}

/// Sends `n` traced requests one after another; returns the slowest.
async fn slowest_of(addr: SocketAddr, n: usize) -> Duration {
    let mut conn = Conn::open(addr).await;
    let mut worst = Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(conn.get("/x").await.status, 200);
        worst = worst.max(t.elapsed());
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_slow_delays_no_request_and_lost_spans_are_counted() {
    let r1 = replica("r1", "a", 4, 0).await;
    // Down: a port nothing listens on.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let slow = Receiver::start(Duration::from_secs(2)).await;
    for (what, endpoint) in [("down", down), ("slow", slow.addr)] {
        let levee = Setup::new(&[&r1])
            .server(&format!(
                "[server.tracing]\notlp_endpoint = \"http://{endpoint}\"\nsample_ratio = 1.0"
            ))
            .start()
            .await;
        let n = 200;
        let worst = slowest_of(levee.addrs[0], n).await;
        // The export timeout is 1 s and the collector takes 2: a request that waited
        // for it would show.
        assert!(
            worst < Duration::from_millis(500),
            "{what}: a request took {worst:?}"
        );
        let mut m = String::new();
        let start = Instant::now();
        while start.elapsed() < LIMIT {
            m = scrape(&levee).await;
            if metric(&m, "levee_trace_spans_dropped_total") >= n as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            metric(&m, "levee_trace_spans_dropped_total"),
            n as f64,
            "{what}: every span lost is counted"
        );
        assert_eq!(
            metric(&m, "levee_trace_spans_exported_total"),
            0.0,
            "{what}"
        );
    }
    assert!(
        !slow.got.lock().posts.is_empty(),
        "the slow collector was asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_off_sends_nothing_and_a_reload_turns_it_on() {
    let receiver = Receiver::start(Duration::ZERO).await;
    let r1 = replica("r1", "a", 4, 0).await;
    let setup = Setup::new(&[&r1]);
    let (levee, path, _dir) = setup.start_from_file().await;
    let parent = format!("00-{TRACE}-{CALLER}-01");
    let reply = fetch(
        levee.addrs[0],
        get_with("/a?echo=1", &[("traceparent", &parent)]),
    )
    .await;
    // Off: the caller's traceparent goes through as it came.
    assert_eq!(echoed_traceparent(&reply).as_deref(), Some(parent.as_str()));

    let on = setup.server(&format!(
        "[server.tracing]\notlp_endpoint = \"http://{}\"",
        receiver.addr
    ));
    std::fs::write(&path, on.toml()).unwrap();
    levee::app::reload(&levee.app, &path).expect("reload");
    let reply = fetch(
        levee.addrs[0],
        get_with("/b?echo=1", &[("traceparent", &parent)]),
    )
    .await;
    let tp = echoed_traceparent(&reply).unwrap();
    assert!(tp.starts_with(&format!("00-{TRACE}-")) && !tp.contains(CALLER));
    eventually(LIMIT, "1 span", || receiver.count() >= 1).await;
    let spans = receiver.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(text(&spans[0], "url.path"), Some("/b"));
    // The default service name.
    assert_eq!(receiver.got.lock().spans[0].0, "levee");
}
