//! The exporter: finished spans go into a bounded queue without waiting, and one task
//! off the request path sends them in batches as OTLP/HTTP protobuf POSTs
//! (`ExportTraceServiceRequest` from the official OpenTelemetry definitions) to
//! `{otlp_endpoint}/v1/traces`.
//!
//! Bounds: at most [`QUEUE_CAPACITY`] spans wait and one batch of at most [`MAX_BATCH`]
//! (gathered for [`BATCH_DELAY`] after its first span) is in flight, so memory stays under about 1 MiB whatever the collector does. A full
//! queue drops the new span; a batch the collector refuses, or does not accept within
//! [`EXPORT_TIMEOUT`] (down, slow, unreachable), is dropped whole. Both count in
//! `levee_trace_spans_dropped_total`; nothing is retried, so a collector that is down
//! or slow never holds memory, and never a request: the request path only ever tries
//! to put a span in the queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span as OtlpSpan, Status,
};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::context::{Incoming, Sampler};
use super::span::{Span, SpanRecord};
use crate::config::{OtlpEndpoint, Tracing};

/// Most finished spans waiting for the exporter; past it new ones are dropped.
pub const QUEUE_CAPACITY: usize = 2048;
/// Most spans in one export request.
pub const MAX_BATCH: usize = 512;
/// How long the exporter gathers spans after the first of a batch (unless a whole
/// batch is already queued). At most [`QUEUE_CAPACITY`] spans arrive meanwhile, so
/// up to about 10,000 sampled requests a second are exported without a drop.
pub const BATCH_DELAY: Duration = Duration::from_millis(200);
/// Longest one export (connect, send, answer) may take; past it the batch is dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest answer body read from the collector (its content is not needed).
const MAX_ANSWER: usize = 64 * 1024;

/// Starts spans and takes finished ones; cloned into every sampled span. Cheap to
/// clone (one `Arc`).
#[derive(Clone)]
pub struct Tracer(Arc<Shared>);

struct Shared {
    tx: mpsc::Sender<SpanRecord>,
    dropped: IntCounter,
}

/// The exporter's end of the queue; [`spawn`] consumes it.
pub struct Queue {
    rx: mpsc::Receiver<SpanRecord>,
    dropped: IntCounter,
    exported: IntCounter,
}

impl Tracer {
    /// A tracer and its queue. `dropped` counts spans lost (a full queue, a failed
    /// export), `exported` those a collector accepted.
    pub fn new(dropped: IntCounter, exported: IntCounter) -> (Tracer, Queue) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let tracer = Tracer(Arc::new(Shared {
            tx,
            dropped: dropped.clone(),
        }));
        (
            tracer,
            Queue {
                rx,
                dropped,
                exported,
            },
        )
    }

    /// The span of a request, when tracing is on (`settings`) and the request is
    /// sampled; `None` otherwise. With tracing off this is one branch: nothing of the
    /// request is read.
    #[inline]
    pub fn start<B>(&self, settings: Option<&Tracing>, req: &http::Request<B>) -> Option<Span> {
        let settings = settings?;
        self.start_from(
            settings,
            Incoming::from_headers(req.headers()),
            req.method().as_str(),
            req.uri().path(),
        )
    }

    /// [`Tracer::start`] from a trace context already read (see
    /// [`Incoming::from_fields`] for a codec without a header map).
    pub fn start_from(
        &self,
        settings: &Tracing,
        incoming: Incoming<'_>,
        method: &str,
        path: &str,
    ) -> Option<Span> {
        let sampled = match &incoming.parent {
            Some(p) => p.sampled(),
            None => Sampler::new(settings.sample_ratio).sample(None, super::context::random_u64()),
        };
        sampled.then(|| Span::start(self, incoming.parent, incoming.state, method, path))
    }

    /// Queues a finished span, never waiting; a full queue drops it (counted).
    pub(super) fn submit(&self, record: SpanRecord) {
        if self.0.tx.try_send(record).is_err() {
            self.0.dropped.inc();
        }
    }
}

impl Queue {
    /// Moves queued spans into `batch`, up to [`MAX_BATCH`], never waiting.
    fn drain_into(&mut self, batch: &mut Vec<SpanRecord>) {
        while batch.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => return,
            }
        }
    }

    /// The next finished span, if one is waiting (unit tests).
    #[cfg(test)]
    pub(crate) fn try_recv_for_tests(&mut self) -> Option<SpanRecord> {
        self.rx.try_recv().ok()
    }
}

/// Runs the exporter until every [`Tracer`] is gone or the task is aborted.
/// `settings` gives the tracing config in force at each batch (a reload may change the
/// endpoint or the service name, or turn tracing off: the spans already finished are
/// then dropped and counted).
pub fn spawn<F>(queue: Queue, settings: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Option<Tracing> + Send + 'static,
{
    tokio::spawn(run(queue, settings))
}

async fn run<F>(mut queue: Queue, settings: F)
where
    F: Fn() -> Option<Tracing>,
{
    let mut client = Client::default();
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(MAX_BATCH);
    loop {
        let Some(first) = queue.rx.recv().await else {
            return;
        };
        batch.push(first);
        // Whatever else is queued, then, unless that filled a batch, what comes within
        // BATCH_DELAY: taken after a sleep rather than span by span, so a request's
        // span costs its sender no wake-up of this task (only the first of a batch
        // does).
        queue.drain_into(&mut batch);
        if batch.len() < MAX_BATCH {
            tokio::time::sleep(BATCH_DELAY).await;
            queue.drain_into(&mut batch);
        }
        let n = batch.len() as u64;
        let Some(settings) = settings() else {
            queue.dropped.inc_by(n);
            batch.clear();
            continue;
        };
        let body = super::wire::encode(&batch, &settings.service_name);
        batch.clear();
        let sent = tokio::time::timeout(
            EXPORT_TIMEOUT,
            client.post(&settings.otlp_endpoint, Bytes::from(body)),
        )
        .await
        .unwrap_or(Err(ExportError::Timeout));
        match sent {
            Ok(()) => {
                queue.exported.inc_by(n);
                if std::mem::take(&mut client.failing) {
                    tracing::info!(endpoint = %settings.otlp_endpoint, "trace export recovered");
                }
            }
            Err(e) => {
                queue.dropped.inc_by(n);
                // A timed-out or failed connection is not used again.
                client.conn = None;
                if !std::mem::replace(&mut client.failing, true) {
                    tracing::warn!(endpoint = %settings.otlp_endpoint, error = %e, spans = n,
                        "trace export failed; spans are dropped until the collector answers");
                }
            }
        }
    }
}

/// Why one export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    #[error("collector answered {0}")]
    Status(u16),
    #[error("no answer within {}ms", EXPORT_TIMEOUT.as_millis())]
    Timeout,
}

/// One HTTP/1.1 connection to the collector, kept between batches.
#[derive(Default)]
struct Client {
    conn: Option<(String, hyper::client::conn::http1::SendRequest<Full<Bytes>>)>,
    failing: bool,
}

impl Client {
    /// Posts `body`, on the kept connection if there is one. A kept connection the
    /// collector closed meanwhile (an idle timeout) fails before any answer: the
    /// batch then goes once more, on a new connection.
    async fn post(&mut self, to: &OtlpEndpoint, body: Bytes) -> Result<(), ExportError> {
        let kept = matches!(&self.conn, Some((a, s)) if *a == to.authority && !s.is_closed());
        if kept {
            match self.send(to, body.clone()).await {
                Err(ExportError::Http(_)) => {}
                done => return done,
            }
        }
        let tcp = tokio::net::TcpStream::connect((to.host.as_str(), to.port))
            .await
            .map_err(ExportError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.conn = Some((to.authority.clone(), sender));
        self.send(to, body).await
    }

    /// One POST on the kept connection, its answer read (bounded) so the connection
    /// can carry the next one.
    async fn send(&mut self, to: &OtlpEndpoint, body: Bytes) -> Result<(), ExportError> {
        let Some((_, sender)) = self.conn.as_mut() else {
            return Err(ExportError::Timeout);
        };
        let sent = async {
            sender.ready().await?;
            let req = http::Request::post(to.path.as_str())
                .header(http::header::HOST, to.authority.as_str())
                .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                .body(Full::new(body))
                .map_err(|_| ExportError::Status(0))?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut read = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame?.into_data() {
                    read += data.len();
                    if read > MAX_ANSWER {
                        return Ok((status, false));
                    }
                }
            }
            Ok::<_, ExportError>((status, true))
        }
        .await;
        let (status, reusable) = match sent {
            Ok(r) => r,
            Err(e) => {
                self.conn = None;
                return Err(e);
            }
        };
        if !reusable {
            self.conn = None;
        }
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(ExportError::Status(status))
        }
    }
}

fn text(key: &str, value: impl Into<String>) -> KeyValue {
    attribute(key, any_value::Value::StringValue(value.into()))
}

fn int(key: &str, value: i64) -> KeyValue {
    attribute(key, any_value::Value::IntValue(value))
}

fn double(key: &str, value: f64) -> KeyValue {
    attribute(key, any_value::Value::DoubleValue(value))
}

fn attribute(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

/// `Span.flags`: the W3C trace flags (sampled), and whether the parent is remote.
const FLAGS_SAMPLED: u32 = 0x01;
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

/// The OTLP span of one record: a SERVER span named by the method, with
/// OpenTelemetry's HTTP attributes and levee's own; status ERROR for a 5xx.
pub fn otlp_span(r: &SpanRecord) -> OtlpSpan {
    let mut attributes = vec![
        text("http.request.method", r.method.as_str()),
        text("url.path", r.path.as_str()),
    ];
    if r.status != 0 {
        attributes.push(int("http.response.status_code", i64::from(r.status)));
    }
    if let Some(u) = &r.upstream {
        attributes.push(text("levee.upstream", u.as_str()));
    }
    if let Some(b) = &r.backend {
        attributes.push(text("levee.backend", b.as_str()));
    }
    if let Some(c) = r.class {
        attributes.push(text("levee.class", c));
    }
    if let Some(l) = r.level {
        attributes.push(text("levee.level", l));
    }
    if let Some(q) = r.queue_wait {
        attributes.push(double("levee.queue_wait_ms", q.as_secs_f64() * 1000.0));
    }
    if r.backend.is_some() {
        attributes.push(int("levee.retries", i64::from(r.retries)));
    }
    if let Some(s) = r.shed_reason {
        attributes.push(text("levee.shed_reason", s));
    }
    let error = r.status >= 500;
    OtlpSpan {
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        trace_state: r.trace_state.clone().unwrap_or_default(),
        parent_span_id: r.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: FLAGS_SAMPLED
            | FLAGS_HAS_IS_REMOTE
            | if r.parent_span_id.is_some() {
                FLAGS_IS_REMOTE
            } else {
                0
            },
        name: r.method.clone(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: r.start_unix_nanos,
        end_time_unix_nano: r.end_unix_nanos,
        attributes,
        status: Some(Status {
            message: if error {
                r.shed_reason.unwrap_or_default().to_string()
            } else {
                String::new()
            },
            code: if error {
                StatusCode::Error as i32
            } else {
                StatusCode::Unset as i32
            },
        }),
        ..OtlpSpan::default()
    }
}

/// One export request for `records`, as service `service_name`, as the official prost
/// messages. The exporter writes the same bytes directly ([`super::wire::encode`]);
/// this is their reference.
pub fn encode(records: &[SpanRecord], service_name: &str) -> ExportTraceServiceRequest {
    let version = env!("CARGO_PKG_VERSION");
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text("service.name", service_name),
                    text("service.version", version),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "levee".to_string(),
                    version: version.to_string(),
                    ..InstrumentationScope::default()
                }),
                spans: records.iter().map(otlp_span).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn record() -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            trace_state: Some("a=b".into()),
            method: "GET".into(),
            path: "/x".into(),
            status: 503,
            upstream: Some("app".into()),
            class: Some("normal"),
            level: Some("danger"),
            shed_reason: Some("queue_full"),
            start_unix_nanos: 10,
            end_unix_nanos: 20,
            ..SpanRecord::default()
        }
    }

    fn attr<'a>(s: &'a OtlpSpan, key: &str) -> Option<&'a any_value::Value> {
        s.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    #[test]
    fn a_shed_is_an_error_server_span_with_its_reason() {
        let req = encode(&[record()], "edge");
        let bytes = req.encode_to_vec();
        let back = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        assert_eq!(back, req);
        let rs = &back.resource_spans[0];
        let service = &rs.resource.as_ref().unwrap().attributes[0];
        assert_eq!(service.key, "service.name");
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.kind, SpanKind::Server as i32);
        assert_eq!(s.name, "GET");
        assert_eq!(s.parent_span_id, vec![3; 8]);
        assert_eq!(s.trace_state, "a=b");
        assert_eq!(s.status.as_ref().unwrap().code, StatusCode::Error as i32);
        assert_eq!(
            attr(s, "levee.shed_reason"),
            Some(&any_value::Value::StringValue("queue_full".into()))
        );
        assert_eq!(
            attr(s, "http.response.status_code"),
            Some(&any_value::Value::IntValue(503))
        );
        // Not served: no backend, queue wait or retries.
        assert!(attr(s, "levee.backend").is_none());
        assert!(attr(s, "levee.retries").is_none());
    }

    #[test]
    fn a_served_request_carries_its_backend_wait_and_retries() {
        let r = SpanRecord {
            status: 200,
            shed_reason: None,
            parent_span_id: None,
            backend: Some("10.0.0.1:80".into()),
            queue_wait: Some(Duration::from_micros(2500)),
            retries: 1,
            ..record()
        };
        let s = otlp_span(&r);
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.flags, FLAGS_SAMPLED | FLAGS_HAS_IS_REMOTE);
        assert_eq!(s.status.as_ref().unwrap().code, StatusCode::Unset as i32);
        assert_eq!(
            attr(&s, "levee.queue_wait_ms"),
            Some(&any_value::Value::DoubleValue(2.5))
        );
        assert_eq!(
            attr(&s, "levee.retries"),
            Some(&any_value::Value::IntValue(1))
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        let dropped = IntCounter::new("d", "d").unwrap();
        let exported = IntCounter::new("e", "e").unwrap();
        let (tracer, _queue) = Tracer::new(dropped.clone(), exported);
        for _ in 0..QUEUE_CAPACITY + 5 {
            tracer.submit(record());
        }
        assert_eq!(dropped.get(), 5);
    }
}
