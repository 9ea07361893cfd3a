//! An in-process HTTP/1.1 replica with finite capacity, for `levee demo` and tests.
//!
//! A [`Replica`] behaves like a naive application server: it accepts every
//! connection and every request, queues requests without bound in front of a
//! fixed pool of workers, and so, past capacity, its latency grows without
//! bound. That is the server levee exists to protect, and [`ReplicaStats`]
//! shows from the replica's side whether levee kept it inside its limits.
//!
//! Capacity model: every request other than `/health` counts into `inflight`
//! when it *arrives* (queued or working: the concurrency levee must cap), waits
//! for one of `workers` permits, holds it for the service time, then answers.
//! Streams (`/sse`) count as in flight for their whole life but hold no worker,
//! like an async server that parks idle streams.
//!
//! Routes (any method unless noted):
//! - `/health`: `200 ok` at once, not counted in flight; `500` under [`Fault::Health500`].
//! - `/sse?events=N&interval_ms=M`: `text/event-stream` of `N` events `data: {i}\n\n`,
//!   the first at once, then one every `M` ms (defaults 10 events, 100 ms).
//! - `POST` on any other path: reads the whole body as it streams and answers
//!   `{"replica":…,"zone":…,"bytes":LEN,"fnv1a":"HEX"}` (see [`fnv1a`]).
//! - anything else: `{"replica":…,"zone":…,"path":…}`; with `?echo=1` every
//!   request header is added as `"headers":{name:value}`, so tests can check what
//!   a proxy forwarded and which hop-by-hop headers it removed.
//!
//! On the last two, `?ms=N` overrides the service time and `?status=NNN` sets the
//! answer's status; a malformed value gets `400`. Every answer carries `x-replica: NAME`.
//!
//! Load reports ([`Replica::set_load_report`]): with [`LoadReport::Utilization`] the
//! last two answer with the ORCA header `endpoint-load-metrics: TEXT
//! application_utilization=U`, where U is the replica's own in flight (busy workers and
//! its queue, this request included) over its workers, as it finishes the request: 1.0
//! at capacity, more when it queues. [`LoadReport::Fixed`] sends a fixed value instead
//! (tests of malformed reports). The service time can change at run time
//! ([`Replica::set_service_time`]), and [`ReplicaStats::queued`] is the replica's own
//! queue: requests waiting for a worker (exact: a worker passed on counts at once, even
//! before the request it went to runs).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Interval, MissedTickBehavior};

/// Path answered by the health check; never counted in flight.
pub const HEALTH_PATH: &str = "/health";
/// Path of the server-sent-events stream.
pub const SSE_PATH: &str = "/sse";
/// Events sent by `/sse` when the query gives no `events`.
pub const DEFAULT_SSE_EVENTS: u64 = 10;
/// Gap between `/sse` events when the query gives no `interval_ms`.
pub const DEFAULT_SSE_INTERVAL_MS: u64 = 100;
/// Pause after a failed `accept` (for example `EMFILE`), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const X_REPLICA: &str = "x-replica";
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// What a replica is called, where it runs, and how much it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// Name reported in bodies and in `x-replica`; must be a valid header value.
    pub name: String,
    /// Failure zone reported in bodies.
    pub zone: String,
    /// Requests served at once; more wait in an unbounded queue. `0` counts as `1`.
    pub workers: usize,
    /// Time one request holds a worker, unless `?ms=` overrides it.
    pub service_time: Duration,
}

/// A behaviour injected at run time with [`Replica::set_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Fault {
    /// Serve normally.
    #[default]
    None,
    /// `/health` answers `500`; other requests are served normally.
    Health500,
    /// Every request but `/health` answers `500` as soon as its body is read,
    /// without waiting for a worker, like a server whose dependency is down.
    Error500,
    /// Every request but `/health` is read and never answered; it stays in
    /// flight until the client closes the connection.
    Hang,
    /// Down: `/health` and every request answer `500`.
    Failing,
    /// Frozen: every request, `/health` included, is read and never answered, as
    /// a process that accepts connections but is stuck.
    Frozen,
}

impl Fault {
    fn from_u8(v: u8) -> Self {
        [
            Fault::None,
            Fault::Health500,
            Fault::Error500,
            Fault::Hang,
            Fault::Failing,
            Fault::Frozen,
        ]
        .get(usize::from(v))
        .copied()
        .unwrap_or_default()
    }
}

/// A snapshot of a replica's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplicaStats {
    /// Requests (not health checks) arrived and not yet finished, queued or working.
    pub inflight: usize,
    /// Highest `inflight` since start or the last [`Replica::reset_peak`].
    pub peak_inflight: usize,
    /// Requests waiting for a worker now: the replica's own queue.
    pub queued: usize,
    /// Highest `queued` since start or the last [`Replica::reset_peak`].
    pub peak_queued: usize,
    /// Requests (not health checks) answered, whatever the status.
    pub served: u64,
    /// Every request head received, health checks included.
    pub requests_seen: u64,
}

/// Whether (and what) a replica reports in `endpoint-load-metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LoadReport {
    /// No header.
    #[default]
    Off,
    /// `TEXT application_utilization=U`, U = (busy workers + queue) / workers.
    Utilization,
    /// This value, whatever the load.
    Fixed(HeaderValue),
}

/// The ORCA load report header.
const LOAD_HEADER: &str = "endpoint-load-metrics";

/// A running replica; serves until [`Replica::shutdown`] or drop.
///
/// Dropping the handle aborts the server task and, with it, every connection.
#[derive(Debug)]
pub struct Replica {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Replica {
    /// Binds `127.0.0.1:0` and serves on it in a spawned task.
    pub async fn start(cfg: ReplicaConfig) -> std::io::Result<Replica> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        Self::start_on(cfg, listener).await
    }

    /// Serves on an already bound listener in a spawned task.
    ///
    /// Fails with `InvalidInput` if the name is not a valid header value.
    pub async fn start_on(cfg: ReplicaConfig, listener: TcpListener) -> std::io::Result<Replica> {
        let addr = listener.local_addr()?;
        let name_header = HeaderValue::from_str(&cfg.name).map_err(|_| {
            let msg = format!("replica name {:?} is not a valid header value", cfg.name);
            std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
        })?;
        let workers = cfg.workers.clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            workers: Semaphore::new(workers),
            worker_count: workers,
            service_nanos: AtomicU64::new(
                u64::try_from(cfg.service_time.as_nanos()).unwrap_or(u64::MAX),
            ),
            demand: AtomicUsize::new(0),
            peak_demand: AtomicUsize::new(0),
            load_report: std::sync::Mutex::new(LoadReport::Off),
            name: cfg.name,
            zone: cfg.zone,
            name_header,
            inflight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            fault: AtomicU8::new(Fault::None as u8),
        });
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        Ok(Replica { addr, shared, task })
    }

    /// The address the replica listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reads the counters. Each is read atomically, but not all at the same instant.
    pub fn stats(&self) -> ReplicaStats {
        let s = &self.shared;
        ReplicaStats {
            inflight: s.inflight.load(Ordering::SeqCst),
            peak_inflight: s.peak.load(Ordering::SeqCst),
            queued: s
                .demand
                .load(Ordering::SeqCst)
                .saturating_sub(s.worker_count),
            peak_queued: s
                .peak_demand
                .load(Ordering::SeqCst)
                .saturating_sub(s.worker_count),
            served: s.served.load(Ordering::SeqCst),
            requests_seen: s.seen.load(Ordering::SeqCst),
        }
    }

    /// Restarts peak tracking from the current in-flight count.
    ///
    /// An arrival racing with the call may be missing from the new peak.
    pub fn reset_peak(&self) {
        let now = self.shared.inflight.load(Ordering::SeqCst);
        self.shared.peak.store(now, Ordering::SeqCst);
        let demand = self.shared.demand.load(Ordering::SeqCst);
        self.shared.peak_demand.store(demand, Ordering::SeqCst);
    }

    /// Changes the service time of requests that get a worker from now on (those
    /// already working keep theirs).
    pub fn set_service_time(&self, service_time: Duration) {
        let nanos = u64::try_from(service_time.as_nanos()).unwrap_or(u64::MAX);
        self.shared.service_nanos.store(nanos, Ordering::SeqCst);
    }

    /// The service time of a request without `?ms=`.
    pub fn service_time(&self) -> Duration {
        Duration::from_nanos(self.shared.service_nanos.load(Ordering::SeqCst))
    }

    /// Changes the load report of answers from now on.
    pub fn set_load_report(&self, report: LoadReport) {
        if let Ok(mut r) = self.shared.load_report.lock() {
            *r = report;
        }
    }

    /// Changes behaviour for requests that arrive from now on.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.store(fault as u8, Ordering::SeqCst);
    }

    /// Stops accepting and closes every connection, cutting requests in progress
    /// (their clients see the connection close).
    ///
    /// Returns once the listener is closed; connection tasks are aborted at the
    /// same moment and close their sockets at their next poll.
    pub async fn shutdown(mut self) {
        // The accept task owns the listener and, in a `JoinSet`, every connection
        // task: aborting it drops them all.
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// 64-bit FNV-1a of `data`: the digest the replica reports for `POST` bodies.
pub fn fnv1a(data: &[u8]) -> u64 {
    fnv1a_update(FNV_OFFSET, data)
}

fn fnv1a_update(hash: u64, data: &[u8]) -> u64 {
    data.iter()
        .fold(hash, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME))
}

#[derive(Debug)]
struct Shared {
    name: String,
    zone: String,
    name_header: HeaderValue,
    /// The service time, in nanoseconds (it may change at run time).
    service_nanos: AtomicU64,
    workers: Semaphore,
    worker_count: usize,
    /// Requests waiting for a worker or holding one: past `worker_count`, they queue.
    /// Counted from arrival at the workers to the release of the worker, so the queue
    /// it gives is exact when a worker passes to the next waiter (which need not have
    /// run yet).
    demand: AtomicUsize,
    peak_demand: AtomicUsize,
    load_report: std::sync::Mutex<LoadReport>,
    inflight: AtomicUsize,
    peak: AtomicUsize,
    served: AtomicU64,
    seen: AtomicU64,
    fault: AtomicU8,
}

type ReplicaBody = BoxBody<Bytes, Infallible>;

impl Shared {
    fn respond(
        &self,
        status: StatusCode,
        ctype: &'static str,
        body: ReplicaBody,
    ) -> Response<ReplicaBody> {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        headers.insert(X_REPLICA, self.name_header.clone());
        resp
    }

    fn text(&self, status: StatusCode, text: impl Into<Bytes>) -> Response<ReplicaBody> {
        self.respond(status, "text/plain", Full::new(text.into()).boxed())
    }
}

/// Counts a request in flight from arrival until drop, so the count falls on
/// every way out: answer, error, end of stream, or client disconnect.
struct InflightGuard(Arc<Shared>);

impl InflightGuard {
    fn arrive(shared: &Arc<Shared>) -> Self {
        let now = shared.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak.fetch_max(now, Ordering::SeqCst);
        InflightGuard(Arc::clone(shared))
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request in the workers' demand from its arrival at them until it releases
/// its worker or goes away.
struct DemandGuard<'a>(&'a Shared);

impl<'a> DemandGuard<'a> {
    fn arrive(shared: &'a Shared) -> Self {
        let now = shared.demand.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_demand.fetch_max(now, Ordering::SeqCst);
        DemandGuard(shared)
    }
}

impl Drop for DemandGuard<'_> {
    fn drop(&mut self) {
        self.0.demand.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// The load report to send now, if any: (busy workers + queue) / workers.
    fn load_header(&self) -> Option<HeaderValue> {
        let report = self.load_report.lock().ok()?.clone();
        match report {
            LoadReport::Off => None,
            LoadReport::Fixed(v) => Some(v),
            LoadReport::Utilization => {
                let load = self.demand.load(Ordering::SeqCst);
                let u = load as f64 / self.worker_count as f64;
                HeaderValue::try_from(format!("TEXT application_utilization={u:.4}")).ok()
            }
        }
    }
}

/// Accepts until aborted; dropping this future drops the listener and the
/// `JoinSet`, which aborts every connection task.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, Arc::clone(&shared)));
                }
                Err(error) => {
                    tracing::warn!(%error, replica = %shared.name, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Serves one keep-alive connection. No header-read or idle timeout is set:
/// like a naive server, it keeps idle connections until the client closes them.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Small answers and SSE events must leave at once, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| handle(Arc::clone(&shared), req));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(error) = conn.await {
        tracing::debug!(%error, "replica connection ended with an error");
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<ReplicaBody>, Infallible> {
    shared.seen.fetch_add(1, Ordering::SeqCst);
    let fault = Fault::from_u8(shared.fault.load(Ordering::SeqCst));
    if req.uri().path() == HEALTH_PATH {
        return Ok(match fault {
            Fault::Health500 | Fault::Failing => {
                shared.text(StatusCode::INTERNAL_SERVER_ERROR, "unhealthy")
            }
            Fault::Frozen => std::future::pending().await,
            _ => shared.text(StatusCode::OK, "ok"),
        });
    }
    let inflight = InflightGuard::arrive(&shared);
    let resp = match fault {
        Fault::Hang | Fault::Frozen => {
            let _ = read_digest(req.into_body()).await;
            // hyper drops this future, and the guard with it, when the client leaves.
            std::future::pending().await
        }
        Fault::Error500 | Fault::Failing => {
            let _ = read_digest(req.into_body()).await;
            shared.text(StatusCode::INTERNAL_SERVER_ERROR, "injected fault")
        }
        Fault::None | Fault::Health500 => serve(&shared, req, inflight).await,
    };
    shared.served.fetch_add(1, Ordering::SeqCst);
    Ok(resp)
}

async fn serve(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    inflight: InflightGuard,
) -> Response<ReplicaBody> {
    let query = match Query::parse(req.uri().query().unwrap_or("")) {
        Ok(query) => query,
        Err(msg) => return shared.text(StatusCode::BAD_REQUEST, msg),
    };
    if req.uri().path() == SSE_PATH {
        return sse(shared, &query, inflight);
    }
    let (parts, body) = req.into_parts();
    let (len, digest) = match read_digest(body).await {
        Ok(read) => read,
        Err(e) => return shared.text(StatusCode::BAD_REQUEST, format!("reading body: {e}")),
    };
    let load = {
        let demand = DemandGuard::arrive(shared);
        // The semaphore is never closed, so `acquire` cannot fail.
        let worker = shared.workers.acquire().await.ok();
        let service_time = query.ms.map_or_else(
            || Duration::from_nanos(shared.service_nanos.load(Ordering::SeqCst)),
            Duration::from_millis,
        );
        if !service_time.is_zero() {
            tokio::time::sleep(service_time).await;
        }
        // While this request still holds its worker: it counts in the load.
        let load = shared.load_header();
        // Out of the demand first, then the worker to the next waiter: the count never
        // holds both.
        drop(demand);
        drop(worker);
        load
    };
    let mut json = String::with_capacity(128);
    json.push_str("{\"replica\":");
    push_json_str(&mut json, &shared.name);
    json.push_str(",\"zone\":");
    push_json_str(&mut json, &shared.zone);
    if parts.method == Method::POST {
        let _ = write!(json, ",\"bytes\":{len},\"fnv1a\":\"{digest:016x}\"");
    } else {
        json.push_str(",\"path\":");
        push_json_str(&mut json, parts.uri.path());
        if query.echo {
            json.push_str(",\"headers\":");
            push_json_headers(&mut json, &parts.headers);
        }
    }
    json.push('}');
    drop(inflight);
    let body = Full::new(Bytes::from(json)).boxed();
    let mut resp = shared.respond(
        query.status.unwrap_or(StatusCode::OK),
        "application/json",
        body,
    );
    if let Some(v) = load {
        resp.headers_mut().insert(LOAD_HEADER, v);
    }
    resp
}

fn sse(shared: &Arc<Shared>, query: &Query, inflight: InflightGuard) -> Response<ReplicaBody> {
    let mut interval = tokio::time::interval(Duration::from_millis(query.interval_ms.max(1)));
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let body = SseBody {
        next: 0,
        events: query.events,
        interval,
        _inflight: inflight,
    };
    let mut resp = shared.respond(StatusCode::OK, "text/event-stream", body.boxed());
    let no_cache = HeaderValue::from_static("no-cache");
    resp.headers_mut().insert(header::CACHE_CONTROL, no_cache);
    resp
}

/// Streams `data: {i}\n\n` events on a timer; holds the in-flight guard until
/// hyper drops it, at the end of the stream or when the client goes away.
struct SseBody {
    next: u64,
    events: u64,
    interval: Interval,
    _inflight: InflightGuard,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.next >= this.events {
            return Poll::Ready(None);
        }
        ready!(this.interval.poll_tick(cx));
        let event = Bytes::from(format!("data: {}\n\n", this.next));
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(event))))
    }

    fn is_end_stream(&self) -> bool {
        self.next >= self.events
    }
}

/// Reads a body to its end, frame by frame, returning its length and FNV-1a.
async fn read_digest(mut body: Incoming) -> Result<(u64, u64), hyper::Error> {
    let (mut len, mut hash) = (0u64, FNV_OFFSET);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            hash = fnv1a_update(hash, &data);
        }
    }
    Ok((len, hash))
}

/// The query parameters the replica understands; others are ignored.
struct Query {
    ms: Option<u64>,
    status: Option<StatusCode>,
    echo: bool,
    events: u64,
    interval_ms: u64,
}

impl Query {
    fn parse(raw: &str) -> Result<Query, String> {
        let (events, interval_ms) = (DEFAULT_SSE_EVENTS, DEFAULT_SSE_INTERVAL_MS);
        let mut q = Query {
            ms: None,
            status: None,
            echo: false,
            events,
            interval_ms,
        };
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let bad = || format!("bad query parameter {key}={value}");
            let number = || value.parse::<u64>().map_err(|_| bad());
            match key {
                "ms" => q.ms = Some(number()?),
                "events" => q.events = number()?,
                "interval_ms" => q.interval_ms = number()?,
                "echo" => q.echo = value != "0" && value != "false",
                "status" => {
                    let code = u16::try_from(number()?).map_err(|_| bad())?;
                    q.status = Some(StatusCode::from_u16(code).map_err(|_| bad())?);
                }
                _ => {}
            }
        }
        Ok(q)
    }
}

/// Writes every header as a JSON object; repeated headers are joined with `", "`.
fn push_json_headers(out: &mut String, headers: &HeaderMap) {
    out.push('{');
    for (i, name) in headers.keys().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, name.as_str());
        out.push(':');
        let values: Vec<_> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()))
            .collect();
        push_json_str(out, &values.join(", "));
    }
    out.push('}');
}

fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::TokioExecutor;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::{timeout, Instant};

    type TestClient = Client<HttpConnector, Full<Bytes>>;
    type Answer = (StatusCode, HeaderMap, String);

    fn start(workers: usize, service_ms: u64) -> impl std::future::Future<Output = Replica> {
        let service_time = Duration::from_millis(service_ms);
        let cfg = ReplicaConfig {
            name: "r1".into(),
            zone: "a".into(),
            workers,
            service_time,
        };
        async move { Replica::start(cfg).await.unwrap() }
    }

    fn client() -> TestClient {
        Client::builder(TokioExecutor::new()).build_http()
    }

    async fn send(c: &TestClient, method: Method, r: &Replica, path: &str, body: Bytes) -> Answer {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", r.addr()));
        let req = req
            .header("x-forwarded-for", "10.0.0.7")
            .body(Full::new(body))
            .unwrap();
        let resp = timeout(Duration::from_secs(5), c.request(req))
            .await
            .unwrap()
            .unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    async fn get(c: &TestClient, r: &Replica, path: &str) -> Answer {
        send(c, Method::GET, r, path, Bytes::new()).await
    }

    /// Polls until nothing is in flight; bounded to one second.
    async fn wait_idle(r: &Replica) {
        for _ in 0..200 {
            if r.stats().inflight == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("replica still has {} in flight", r.stats().inflight);
    }

    #[test]
    fn fnv1a_matches_reference_vectors() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[tokio::test]
    async fn counts_arrivals_and_queues_past_capacity() {
        let r = Arc::new(start(2, 50).await);
        let (c, t0) = (client(), Instant::now());
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let (c, r) = (c.clone(), Arc::clone(&r));
                tokio::spawn(async move { (get(&c, &r, "/work").await, t0.elapsed()) })
            })
            .collect();
        let mut last = Duration::ZERO;
        for call in calls {
            let ((status, headers, body), at) = call.await.unwrap();
            assert_eq!(
                (status, &headers[X_REPLICA]),
                (StatusCode::OK, &HeaderValue::from_static("r1"))
            );
            assert_eq!(body, r#"{"replica":"r1","zone":"a","path":"/work"}"#);
            last = last.max(at);
        }
        // 8 requests on 2 workers take 4 service times; all 8 were counted on arrival.
        assert!(
            last >= Duration::from_millis(150),
            "last answer after {last:?}"
        );
        wait_idle(&r).await;
        let stats = r.stats();
        assert_eq!(
            (stats.peak_inflight, stats.served, stats.requests_seen),
            (8, 8, 8)
        );
        r.reset_peak();
        assert_eq!(r.stats().peak_inflight, 0);
    }

    #[tokio::test]
    async fn reports_its_own_load_and_queue_and_changes_speed() {
        let r = Arc::new(start(2, 100).await);
        let c = client();
        let (_, headers, _) = get(&c, &r, "/x?ms=0").await;
        assert!(!headers.contains_key(LOAD_HEADER), "off by default");
        r.set_load_report(LoadReport::Utilization);
        // Alone: its worker busy, nobody waiting: 1 of 2.
        let (_, headers, _) = get(&c, &r, "/x?ms=0").await;
        assert_eq!(headers[LOAD_HEADER], "TEXT application_utilization=0.5000");
        // 4 at once on 2 workers: 2 wait; the first answers see 4 of 2.
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let (c, r) = (c.clone(), Arc::clone(&r));
                tokio::spawn(async move { get(&c, &r, "/work").await })
            })
            .collect();
        let mut reports = Vec::new();
        for call in calls {
            let (_, headers, _) = call.await.unwrap();
            reports.push(headers[LOAD_HEADER].to_str().unwrap().to_owned());
        }
        assert!(
            reports.contains(&"TEXT application_utilization=2.0000".to_owned()),
            "{reports:?}"
        );
        assert_eq!(r.stats().peak_queued, 2);
        assert_eq!(r.stats().queued, 0);
        r.set_load_report(LoadReport::Fixed(HeaderValue::from_static("TEXT x")));
        let (_, headers, _) = get(&c, &r, "/x?ms=0").await;
        assert_eq!(headers[LOAD_HEADER], "TEXT x");
        // Faster from now on.
        r.set_service_time(Duration::ZERO);
        assert_eq!(r.service_time(), Duration::ZERO);
        let t0 = Instant::now();
        get(&c, &r, "/x").await;
        assert!(t0.elapsed() < Duration::from_millis(90));
        r.reset_peak();
        assert_eq!(r.stats().peak_queued, 0);
    }

    #[tokio::test]
    async fn post_body_arrives_intact() {
        let r = start(2, 0).await;
        let body: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        let digest = fnv1a(&body);
        let (status, _, answer) = send(&client(), Method::POST, &r, "/up", body.into()).await;
        assert_eq!(status, StatusCode::OK);
        let expected =
            format!(r#"{{"replica":"r1","zone":"a","bytes":3000000,"fnv1a":"{digest:016x}"}}"#);
        assert_eq!(answer, expected);
    }

    #[tokio::test]
    async fn sse_streams_events_one_at_a_time() {
        let r = start(1, 0).await;
        let uri = format!("http://{}/sse?events=5&interval_ms=100", r.addr());
        let t0 = Instant::now();
        let resp = client()
            .request(Request::get(uri).body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut body = resp.into_body();
        let (mut text, mut first) = (String::new(), None);
        while let Some(frame) = timeout(Duration::from_secs(2), body.frame()).await.unwrap() {
            let data = frame.unwrap().into_data().unwrap();
            if first.is_none() {
                first = Some(t0.elapsed());
                assert_eq!(
                    r.stats().inflight,
                    1,
                    "a stream is in flight while it lasts"
                );
            }
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        let total = t0.elapsed();
        assert_eq!(
            text,
            "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"
        );
        assert!(
            first.unwrap() < total.mul_f64(0.8),
            "first {first:?} of {total:?}"
        );
        assert!(
            total >= Duration::from_millis(350),
            "events not spaced: {total:?}"
        );
        wait_idle(&r).await;
    }

    #[tokio::test]
    async fn query_sets_status_and_echo_shows_headers() {
        let (r, c) = (start(1, 1000).await, client());
        assert_eq!(
            get(&c, &r, "/x?status=418&ms=0").await.0,
            StatusCode::IM_A_TEAPOT
        );
        assert_eq!(
            get(&c, &r, "/x?status=abc").await.0,
            StatusCode::BAD_REQUEST
        );
        let (status, _, body) = get(&c, &r, "/x?ms=0&echo=1").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(r#","headers":{"x-forwarded-for":"10.0.0.7","#),
            "{body}"
        );
    }

    #[tokio::test]
    async fn faults_change_behaviour_at_run_time() {
        let (r, c) = (start(1, 0).await, client());
        assert_eq!(get(&c, &r, HEALTH_PATH).await.0, StatusCode::OK);
        r.set_fault(Fault::Health500);
        assert_eq!(
            get(&c, &r, HEALTH_PATH).await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(get(&c, &r, "/x").await.0, StatusCode::OK);
        r.set_fault(Fault::Error500);
        assert_eq!(get(&c, &r, HEALTH_PATH).await.0, StatusCode::OK);
        assert_eq!(get(&c, &r, "/x").await.0, StatusCode::INTERNAL_SERVER_ERROR);
        let stats = r.stats();
        assert_eq!(
            (stats.served, stats.requests_seen, stats.inflight),
            (2, 5, 0)
        );
    }

    #[tokio::test]
    async fn hang_holds_request_until_client_leaves() {
        let r = start(1, 0).await;
        r.set_fault(Fault::Hang);
        let mut conn = TcpStream::connect(r.addr()).await.unwrap();
        conn.write_all(b"GET /x HTTP/1.1\r\nhost: r1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let read = timeout(Duration::from_millis(200), conn.read(&mut buf)).await;
        assert!(read.is_err(), "a hanging replica answered");
        assert_eq!(r.stats().inflight, 1);
        drop(conn);
        wait_idle(&r).await;
        assert_eq!(r.stats().served, 0);
    }

    #[tokio::test]
    async fn shutdown_closes_listener_and_connections() {
        let r = start(1, 0).await;
        let addr = r.addr();
        let mut conn = TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /x HTTP/1.1\r\nhost: r1\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(conn.read(&mut buf).await.unwrap() > 0);
        r.shutdown().await;
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
        let closed = timeout(Duration::from_secs(1), conn.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(closed, Ok(0) | Err(_)), "connection left open");
    }
}
