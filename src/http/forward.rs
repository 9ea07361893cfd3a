//! One request, top to bottom: validate, route, classify, admit, pick a backend,
//! connect (another backend on a failed connect), send, wait for the response head
//! (replaying an idempotent request elsewhere when the backend failed before
//! answering), and stream the response back; the slot is released by the response
//! body at the backend's end of stream (see [`Exchange`]).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};

use crate::http1::client as h1_client;
use crate::http1::rewrite;

use http_body_util::Either;

use super::body::{BackendIncoming, ResBody};
use super::exchange::{AccessLog, Exchange};
use super::identity::{self, X_REQUEST_ID};
use super::io::{Active, ConnShared};
use super::pool::{BackendConn, Pools, Sender};
use super::respond;
use super::upload::{ClientIncoming, ForwardBody, Upload};
use super::validate::{self, HeadFacts, HOP_BY_HOP, HOP_BY_HOP_COUNT, X_FORWARDED_FOR};
use crate::admission::Permit;
use crate::config::{Affinity, Class, Protocol};
use crate::error::Failure;
use crate::hash::hash_bytes;
use crate::state::{SharedSnapshot, Snapshot, Upstream};
use crate::trace::{Span, Tracer, TRACEPARENT_NAME};

/// Most retries of one idempotent request that may have reached a backend.
const MAX_REPLAYS: u32 = 2;

use super::validate::X_FORWARDED_PROTO;

/// What every request of the process shares: the live snapshot and the backend pools.
pub struct Proxy {
    pub shared: SharedSnapshot,
    pub pools: Arc<Pools>,
    /// Starts the spans of sampled requests and takes them when they end.
    pub tracer: Tracer,
}

/// What the requests of one client connection share.
pub struct Conn {
    pub peer: SocketAddr,
    /// The peer's IP as a header value, made once for `X-Forwarded-For`.
    peer_ip: HeaderValue,
    pub shared: Arc<ConnShared>,
    /// `"http"` or `"https"`, for `X-Forwarded-Proto`.
    pub scheme: &'static str,
    /// The connection's driver polls each request's future at least every
    /// [`crate::http1::conn::TICK`] while it waits (levee's HTTP/1 driver does; an
    /// HTTP/2 stream runs in a task of its own): the wait for a backend's head is then
    /// checked on those polls instead of with a timer per request.
    pub ticked: bool,
    /// Where an accepted upgrade (101) leaves the backend's side of the tunnel for the
    /// connection's driver to splice.
    pub upgrade: parking_lot::Mutex<Option<Box<Tunnel>>>,
}

impl Conn {
    pub fn new(
        peer: SocketAddr,
        shared: Arc<ConnShared>,
        scheme: &'static str,
        ticked: bool,
    ) -> Conn {
        let peer_ip = HeaderValue::try_from(peer.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Conn {
            peer,
            peer_ip,
            shared,
            scheme,
            ticked,
            upgrade: parking_lot::Mutex::new(None),
        }
    }
}

/// The backend's side of an upgraded connection and the slot it holds.
pub struct Tunnel {
    pub backend: crate::http1::client::Upgraded,
    pub exchange: Exchange,
}

/// Serves one request of a client connection. Every answer, the backend's or levee's
/// own, carries the request's `X-Request-Id`.
pub async fn serve(
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    req: Request<ClientIncoming>,
) -> Result<Response<ResBody>, Infallible> {
    let (mut resp, id) = serve_with_id(proxy, conn, req).await;
    resp.headers_mut().insert(X_REQUEST_ID.clone(), id);
    Ok(resp)
}

/// Serves one request and gives its answer and its request id apart: levee's HTTP/1.1
/// codec writes the id straight into the answer's head (the answer's own
/// `X-Request-Id`, a backend's, is not written).
pub async fn serve_with_id(
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    req: Request<ClientIncoming>,
) -> (Response<ResBody>, HeaderValue) {
    let active = Active::new(&conn.shared);
    let snapshot = proxy.shared.load_full();
    let trusted = snapshot
        .config
        .server
        .trusted_proxies
        .contains(conn.peer.ip());
    let id = identity::request_id(req.headers(), trusted);
    let mut span = proxy
        .tracer
        .start(snapshot.config.server.tracing.as_ref(), &req);
    let resp = handle(
        &proxy, &conn, snapshot, req, active, &id, trusted, &mut span,
    )
    .await;
    // Still here: levee answered itself (an admitted request's span went with its
    // exchange and ends at the backend's end of stream).
    if let Some(span) = span {
        span.end(resp.status().as_u16());
    }
    (resp, id)
}

/// The host a request is for: the authority of an absolute-form target or of HTTP/2's
/// `:authority`, else the `Host` header.
fn request_host(parts: &http::request::Parts) -> Option<&[u8]> {
    match parts.uri.authority() {
        Some(a) => Some(a.host().as_bytes()),
        None => super::find_header(&parts.headers, &header::HOST).map(HeaderValue::as_bytes),
    }
}

/// The request's affinity key hash, when its upstream has affinity and the request
/// carries the key.
fn affinity_key(headers: &HeaderMap, affinity: &Affinity) -> Option<u64> {
    match affinity {
        Affinity::Header(name) => headers.get(name.as_str()).map(|v| hash_bytes(v.as_bytes())),
        Affinity::Cookie(name) => headers.get_all(header::COOKIE).iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|pair| {
                let (k, val) = pair.trim().split_once('=')?;
                (k == name).then(|| hash_bytes(val.as_bytes()))
            })
        }),
    }
}

/// Removes `connection`, every header it names, and the fixed hop-by-hop set. An
/// upgrade keeps `connection` and `upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // One pass (comparisons, no hashing) finds what is present: most messages have
    // none of these, and most of the rest only `Connection: keep-alive` or `close`.
    let mut connection = false;
    let mut names_others = false;
    let mut fixed = [false; HOP_BY_HOP_COUNT];
    for (k, v) in headers.iter() {
        if *k == header::CONNECTION {
            connection = true;
            names_others |= v
                .as_bytes()
                .split(|&b| b == b',')
                .any(|t| names(t, upgrade));
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            fixed[i] = true;
        }
    }
    if names_others {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter(|t| names(t, upgrade))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    if connection && !upgrade {
        headers.remove(header::CONNECTION);
    }
    for (name, present) in HOP_BY_HOP.iter().zip(fixed) {
        if present && !(upgrade && *name == header::UPGRADE) {
            headers.remove(name);
        }
    }
}

/// Does a `Connection` token name a header to remove beyond the fixed set? Not
/// `keep-alive` or `close`, nor `upgrade` on an upgrade.
fn names(token: &[u8], upgrade: bool) -> bool {
    let t = token.trim_ascii();
    !(t.is_empty()
        || t.eq_ignore_ascii_case(b"keep-alive")
        || t.eq_ignore_ascii_case(b"close")
        || upgrade && t.eq_ignore_ascii_case(b"upgrade"))
}

/// Own answer written to the access log when it is on.
fn log_own(log: Option<&AccessLog>, status: u16, outcome: &str, error: Option<Failure>) {
    if let Some(l) = log {
        l.write(status, outcome, None, None, error);
    }
}

#[allow(clippy::too_many_arguments)]
async fn handle(
    proxy: &Proxy,
    conn: &Arc<Conn>,
    snapshot: Arc<Snapshot>,
    req: Request<ClientIncoming>,
    active: Active,
    id: &HeaderValue,
    peer_trusted: bool,
    span: &mut Option<Span>,
) -> Response<ResBody> {
    let server = &snapshot.config.server;
    let (mut parts, mut body) = req.into_parts();
    // An HTTP/1.1 client's head as it came, to go to an HTTP/1.1 backend as bytes.
    let raw_head = match &mut body {
        Either::Left(b) => b.take_raw_head(),
        Either::Right(_) => None,
    };
    let client_ip = if peer_trusted {
        identity::client_behind(conn.peer.ip(), &parts.headers, &server.trusted_proxies)
    } else {
        conn.peer.ip()
    };
    let log = server.access_log.then(|| {
        Box::new(AccessLog {
            client: client_ip,
            request_id: id.clone(),
            method: parts.method.clone(),
            path: parts.uri.path().to_string(),
            class: Class::Normal,
            upstream: None,
            started: Instant::now(),
            would_shed: None,
        })
    });

    let own = respond::Own {
        request_id: id,
        grpc: respond::is_grpc(&parts.headers),
        h2: parts.version == Version::HTTP_2,
    };
    let framing_broken = conn
        .shared
        .framing_violation
        .load(std::sync::atomic::Ordering::Acquire);
    let head = match validate::check_head(&parts) {
        Ok(head) if !framing_broken => head,
        _ => {
            log_own(log.as_deref(), 400, "bad_request", None);
            return own.error(400, "bad_request", None, true, Some(active));
        }
    };
    let host = if snapshot.routes_by_host() {
        request_host(&parts)
    } else {
        None
    };
    let Some(upstream) = snapshot.route(host, parts.uri.path()).cloned() else {
        snapshot.unrouted.inc();
        log_own(log.as_deref(), 404, "no_route", None);
        return own.error(404, "no_route", None, false, Some(active));
    };
    let limit = server.max_request_body_bytes;
    let declared = head.content_length;
    if limit > 0 && declared.is_some_and(|n| n > limit) {
        log_own(log.as_deref(), 413, "body_too_large", None);
        return own.error(
            413,
            "body_too_large",
            Some(&upstream.name),
            true,
            Some(active),
        );
    }
    let class = snapshot.classify(parts.uri.path(), &parts.headers);
    let key = upstream
        .affinity
        .as_ref()
        .and_then(|a| affinity_key(&parts.headers, a));
    // An HTTP/2 upstream takes no HTTP/1 upgrade: the request goes as a plain one.
    let upgrade =
        parts.version < Version::HTTP_2 && head.upgrade && upstream.protocol == Protocol::H1;
    let may_stream = upgrade || head.accepts_event_stream;
    let mut log = log;
    if let Some(l) = log.as_mut() {
        l.class = class;
        l.upstream = Some(upstream.name.clone());
    }
    if let Some(s) = span.as_mut() {
        s.routed(&upstream.name, class.as_str());
    }

    let client = upstream
        .fairness
        .as_ref()
        .map(|f| f.key_of(&parts.headers, client_ip));
    let permit = match upstream.admit(class, key, client, rand::random()).await {
        Ok(permit) => permit,
        Err(shed) => {
            if let Some(s) = span.as_mut() {
                s.shed(shed.reason.as_str(), shed.level.as_str());
            }
            log_own(log.as_deref(), 503, shed.reason.as_str(), None);
            return own.shed(&upstream.name, &shed, Some(active));
        }
    };
    if let (Some(l), Some(reason)) = (log.as_mut(), permit.would_shed) {
        l.would_shed = Some(reason.as_str());
    }
    permit.backend().metrics.requests(class).inc();
    upstream.retry_budget.deposit();
    let mut exchange = Exchange::new(permit, log);

    // The backend's parent is levee's span; the span ends with the exchange.
    let span = span.take();
    let traceparent = span.as_ref().map(Span::traceparent);
    let wire = match raw_head {
        Some(raw) if upstream.protocol == Protocol::H1 => {
            let added = rewrite::Added {
                peer: conn.peer_ip.as_bytes(),
                proto: conn.scheme,
                request_id: id.as_bytes(),
                upgrade,
                traceparent: traceparent.as_ref().map(|t| t.as_bytes()),
            };
            Some(rewrite::request_head(&raw, &parts, &head, &added))
        }
        _ => {
            prepare_head(&mut parts, &head, conn, upgrade);
            if upstream.protocol == Protocol::H2 {
                for_h2(&mut parts, own.grpc);
            }
            parts.headers.insert(X_REQUEST_ID.clone(), id.clone());
            if let Some(t) = &traceparent {
                if let Ok(v) = HeaderValue::from_bytes(t.as_bytes()) {
                    parts.headers.insert(TRACEPARENT_NAME.clone(), v);
                }
            }
            None
        }
    };
    if let Some(s) = span {
        exchange.trace(s);
    }
    // A small body to an HTTP/2 upstream is kept, to be sent again if the backend
    // refuses the stream unprocessed.
    let upload = Arc::new(if upstream.protocol == Protocol::H2 {
        Upload::replayable()
    } else {
        Upload::default()
    });
    let body = ForwardBody::client(
        body,
        limit,
        server.timeouts.client_header,
        conn.shared.clone(),
        upload.clone(),
    );
    let bodiless = matches!(body, ForwardBody::Empty);
    let ctx = Attempt {
        snapshot: &snapshot,
        upstream: &upstream,
        pools: &proxy.pools,
        class,
        key,
        upload: &upload,
        may_stream,
        ticked: conn.ticked,
        wire: wire.as_deref(),
    };
    let (resp, backend_conn) = match ctx.send(&mut exchange, parts, body, bodiless).await {
        Ok(r) => r,
        Err(f) => {
            let (status, _) = f.status_and_label();
            exchange.status = status;
            exchange.finish(Some(f));
            return own.failure(f, Some(&upstream.name), Some(active));
        }
    };
    let (mut rparts, mut rbody) = resp.into_parts();
    let status = rparts.status.as_u16();
    exchange.status = status;
    exchange.backend_status = status;
    let switching = status == 101;
    // An HTTP/1.1 backend's head goes to an HTTP/1.1 client as the bytes that came
    // (the codec drops the hop-by-hop lines as it writes them); an HTTP/2 client's
    // answer, and a load report to take out, need the fields as a map.
    let mut raw_head = match &mut rbody {
        Either::Left(b) => b.take_head(),
        Either::Right(_) => None,
    };
    let reads_reports = upstream.reads_load_reports();
    if own.h2 || reads_reports {
        if let Some(head) = raw_head.take() {
            rparts.headers = crate::http1::parse::field_map(&head.raw);
        }
    }
    if reads_reports {
        if let Some(p) = exchange.permit() {
            upstream.take_load_report(p.backend_index(), &mut rparts.headers);
        }
    }
    strip_hop_by_hop(&mut rparts.headers, switching && upgrade);
    if let Some(c) = backend_conn {
        exchange.hold_connection(c);
    }

    if switching && upgrade {
        exchange.unmeasured();
        let Either::Left(body) = rbody else {
            exchange.finish(Some(Failure::UpstreamBadResponse));
            return own.failure(
                Failure::UpstreamBadResponse,
                Some(&upstream.name),
                Some(active),
            );
        };
        let Some(backend) = body.into_upgraded() else {
            exchange.finish(Some(Failure::UpstreamBadResponse));
            return own.failure(
                Failure::UpstreamBadResponse,
                Some(&upstream.name),
                Some(active),
            );
        };
        *conn.upgrade.lock() = Some(Box::new(Tunnel { backend, exchange }));
        return Response::from_parts(rparts, ResBody::empty(Some(active)));
    }

    let t = &server.timeouts;
    let event_stream = match &raw_head {
        Some(head) => head.facts.event_stream,
        None => rparts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| crate::http1::parse::is_event_stream(v.as_bytes())),
    };
    let streaming = switching || event_stream;
    if streaming {
        exchange.unmeasured();
    }
    // A gRPC call's answer may stream for as long as the call lasts (its deadline is
    // the client's `grpc-timeout`): each read is bounded, the whole is not. A unary
    // call's latency still counts for the backend's limit and the level.
    let streaming = streaming || own.grpc;
    let (wait, deadline) = if streaming {
        (t.read.max(t.stream_idle), None)
    } else {
        let from = upload
            .done
            .get()
            .map_or(exchange.admitted_at(), |d| (*d).max(exchange.admitted_at()));
        let wait = if may_stream {
            t.read.max(t.stream_idle)
        } else {
            t.read
        };
        (wait, Some(from + t.response))
    };
    let mut body = ResBody::backend(rbody, exchange, wait, deadline, Some(active));
    if let Some(head) = raw_head {
        body.keep_backend_head(head);
    }
    Response::from_parts(rparts, body)
}

/// Turns the client's head into the backend's: origin-form target, HTTP/1.1, no
/// hop-by-hop headers, `Host` (from the target's authority when it has one), and the
/// forwarding headers.
fn prepare_head(parts: &mut http::request::Parts, head: &HeadFacts, conn: &Conn, upgrade: bool) {
    // The target's authority (absolute form, or HTTP/2's `:authority`) is the host the
    // request was routed by, so it is the `Host` the backend sees.
    if let Some(v) = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, v);
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        parts.uri = Uri::try_from(pq).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.version = Version::HTTP_11;
    if head.hop_by_hop {
        strip_hop_by_hop(&mut parts.headers, upgrade);
    }
    if head.expect {
        // Levee read the client's `Expect: 100-continue` itself.
        parts.headers.remove(header::EXPECT);
    }
    let prior = head
        .forwarded_for
        .then(|| parts.headers.get(&X_FORWARDED_FOR))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let xff = match prior {
        Some(prior) => HeaderValue::try_from(format!("{prior}, {}", conn.peer.ip())).ok(),
        None => Some(conn.peer_ip.clone()),
    };
    if let Some(v) = xff {
        parts.headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    parts.headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(conn.scheme),
    );
}

/// Turns a prepared HTTP/1.1 head into an HTTP/2 one for an h2 upstream: the target
/// carries the scheme and authority (`:scheme`, `:authority`, from `Host`), and a gRPC
/// call keeps `TE: trailers`, which gRPC servers ask for and HTTP/2 allows.
fn for_h2(parts: &mut http::request::Parts, grpc: bool) {
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok());
    // A request without a host (HTTP/1.0) still needs an `:authority`.
    let authority = authority.unwrap_or(http::uri::Authority::from_static("localhost"));
    {
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority);
        if uri.path_and_query.is_none() {
            uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
    }
    parts.headers.remove(header::HOST);
    parts.version = Version::HTTP_2;
    if grpc {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// What sending one request needs.
struct Attempt<'a> {
    snapshot: &'a Snapshot,
    upstream: &'a Arc<Upstream>,
    pools: &'a Pools,
    class: Class,
    key: Option<u64>,
    upload: &'a Upload,
    may_stream: bool,
    /// See [`Conn::ticked`].
    ticked: bool,
    /// The request's head as bytes for an HTTP/1.1 backend (see [`rewrite`]).
    wire: Option<&'a [u8]>,
}

/// How a send failed.
enum SendError {
    /// The connection was closed before the request went out: the request is back.
    NotSent(Box<Request<ForwardBody>>),
    /// An HTTP/2 backend refused the stream (REFUSED_STREAM, or above a GOAWAY's last
    /// stream): it did not process the request, but the request went with it.
    Refused,
    Failed(Failure),
}

/// Most times one request is sent again after a backend dropped its stream
/// unprocessed: a backend that refuses every stream must not hold it forever. (A
/// request given back unsent needs no bound: each time, the connection that gave it
/// back leaves the pool, and a new connection never gives one back.)
const MAX_REFUSED: u32 = 4;

impl Attempt<'_> {
    /// Connects (retrying a failed connect on another backend), sends, and waits for
    /// the response head, replaying an idempotent bodiless request on another backend
    /// within the retry budget when the backend failed before answering.
    async fn send(
        &self,
        exchange: &mut Exchange,
        parts: http::request::Parts,
        body: ForwardBody,
        bodiless: bool,
    ) -> Result<(Response<BackendIncoming>, Option<BackendConn>), Failure> {
        let t = &self.snapshot.config.server.timeouts;
        let up = self.upstream;
        let mut tried: Vec<usize> = Vec::new();
        let mut connect_retries = 0u32;
        let mut replays = 0u32;
        let idempotent = parts.method.is_idempotent()
            || up
                .idempotency_header
                .as_ref()
                .is_some_and(|h| parts.headers.contains_key(h));
        let replayable = bodiless && idempotent && up.backends.len() > 1;
        // An HTTP/2 backend may refuse a stream it did not process; the request can
        // then go again, whatever its method, so its head is kept.
        let spare = (replayable || up.protocol == Protocol::H2).then(|| parts.clone());
        let mut refused = 0u32;
        let mut req = Some(Request::from_parts(parts, body));
        loop {
            let Some(permit) = exchange.permit() else {
                return Err(Failure::ClientGone);
            };
            let index = permit.backend_index();
            let backend = permit.backend().clone();
            let pool = self.pools.get(backend.address, up.protocol);
            let conn = match pool
                .checkout(t.connect, t.upstream_idle, backend.max_inflight())
                .await
            {
                Ok(c) => c,
                Err(Failure::LocalResources) => return Err(Failure::LocalResources),
                Err(f) => {
                    if f == Failure::ConnectTimeout {
                        backend.metrics.timeouts.inc();
                    } else {
                        backend.metrics.connect_errors.inc();
                    }
                    tried.push(index);
                    connect_retries += 1;
                    // Nothing reached the backend, so any method may go elsewhere.
                    let retry = connect_retries <= up.retry_on_connect_failure
                        && up.backends.len() > tried.len();
                    if !retry {
                        return Err(f);
                    }
                    up.record_outcome(index, true);
                    up.metrics.connect_retries.inc();
                    self.move_to_another(exchange, &tried)?;
                    continue;
                }
            };
            let Some(request) = req.take() else {
                return Err(Failure::UpstreamError);
            };
            if up.adaptive.is_some() {
                exchange.mark_sent();
            }
            match self.send_on(conn, request, backend.max_inflight()).await {
                Ok((resp, conn)) => {
                    let status = resp.status().as_u16();
                    let retry = up.retry_on_status.contains(&status)
                        && self.may_replay(replays, replayable, tried.len());
                    if !retry {
                        return Ok((resp, conn));
                    }
                    // Only with a slot elsewhere and a token in the budget is this
                    // answer let go; otherwise the client gets it as it is.
                    let mut skip = tried.clone();
                    skip.push(index);
                    let Some(permit) = self.another_slot(&skip) else {
                        return Ok((resp, conn));
                    };
                    if !up.retry_budget.try_withdraw() {
                        return Ok((resp, conn));
                    }
                    // Nothing of it reached the client; its unread body closes the
                    // connection as both are dropped.
                    drop((resp, conn));
                    up.record_outcome(index, true);
                    up.metrics.status_retries.inc();
                    tried = skip;
                    replays += 1;
                    self.take_over(exchange, permit);
                    let head = spare.clone().ok_or(Failure::UpstreamError)?;
                    req = Some(Request::from_parts(head, ForwardBody::Empty));
                }
                Err(SendError::NotSent(back)) => {
                    // A pooled connection closed under us: not the backend's fault;
                    // the same request goes on a fresh connection.
                    req = Some(*back);
                }
                Err(SendError::Refused) => {
                    // Nothing was processed: the request goes again (its head from
                    // `spare`, its body from the upload's kept copy), on another backend
                    // like after a failed connect, or on this one when it is the only
                    // one left (a GOAWAY refuses streams of a backend still up).
                    let body = if bodiless {
                        Some(ForwardBody::Empty)
                    } else {
                        ForwardBody::replay(self.upload)
                    };
                    refused += 1;
                    let (Some(head), Some(body)) = (spare.clone(), body) else {
                        return Err(Failure::UpstreamError);
                    };
                    if refused > MAX_REFUSED {
                        return Err(Failure::UpstreamError);
                    }
                    if connect_retries < up.retry_on_connect_failure
                        && up.backends.len() > tried.len() + 1
                    {
                        tried.push(index);
                        connect_retries += 1;
                        up.metrics.connect_retries.inc();
                        self.move_to_another(exchange, &tried)?;
                    }
                    req = Some(Request::from_parts(head, body));
                }
                Err(SendError::Failed(f)) => {
                    if let Some(client) = self.upload.failure.get() {
                        return Err(*client);
                    }
                    let retry = f.is_backend_failure()
                        && self.may_replay(replays, replayable, tried.len())
                        && up.retry_budget.try_withdraw();
                    if !retry {
                        return Err(f);
                    }
                    // The request may have reached the backend: its outcome counts
                    // against this backend now, and it moves on.
                    up.record_outcome(index, true);
                    up.metrics.replays.inc();
                    tried.push(index);
                    replays += 1;
                    self.move_to_another(exchange, &tried)?;
                    let head = spare.clone().ok_or(f)?;
                    req = Some(Request::from_parts(head, ForwardBody::Empty));
                }
            }
        }
    }

    /// May a request that may have reached a backend go to another one: it can be sent
    /// again (idempotent, bodiless: a `spare` head), it has not used its replays, and a
    /// backend it has not tried remains (besides the one it is on).
    fn may_replay(&self, replays: u32, spare: bool, tried: usize) -> bool {
        replays < MAX_REPLAYS && spare && self.upstream.backends.len() > tried + 1
    }

    /// A slot on a backend not in `tried` (another zone first), never waiting for one.
    fn another_slot(&self, tried: &[usize]) -> Option<Permit> {
        self.upstream
            .take_retry_slot(self.key, tried, rand::random())
    }

    /// The exchange goes on with `permit` (the previous slot is released).
    fn take_over(&self, exchange: &mut Exchange, permit: Permit) {
        permit.backend().metrics.requests(self.class).inc();
        exchange.replace_permit(permit);
    }

    /// Takes a slot on another backend (another zone first), never waiting for one.
    fn move_to_another(&self, exchange: &mut Exchange, tried: &[usize]) -> Result<(), Failure> {
        // The connect failed (or the backend failed) and every other backend is full:
        // the upstream is out of room, an overload answer, not a bad gateway.
        let permit = self.another_slot(tried).ok_or(Failure::NoRetrySlot)?;
        self.take_over(exchange, permit);
        Ok(())
    }

    /// Sends on one connection and waits for the response head, at most `read` after
    /// the request (or the end of its upload) went out.
    async fn send_on(
        &self,
        mut conn: BackendConn,
        req: Request<ForwardBody>,
        cap: u32,
    ) -> Result<(Response<BackendIncoming>, Option<BackendConn>), SendError> {
        // The HTTP/2 wait is boxed so that the HTTP/1 request's future (moved into its
        // parent's state at each await) does not carry HTTP/2's larger one.
        let r = match &mut conn.tx {
            Sender::H1(_) => {
                let sent = std::pin::pin!(h1_client::send(conn, req, cap, self.wire));
                return match self.head(sent).await {
                    None => Err(SendError::Failed(Failure::UpstreamTimeout)),
                    Some(Ok(resp)) => Ok((resp.map(Either::Left), None)),
                    Some(Err(h1_client::SendError::NotSent(back))) => Err(SendError::NotSent(back)),
                    Some(Err(h1_client::SendError::Failed(f))) => Err(SendError::Failed(f)),
                };
            }
            Sender::H2(tx) => {
                Box::pin(async {
                    let sent = std::pin::pin!(tx.try_send_request(req));
                    self.head(sent).await
                })
                .await
            }
        };
        match r {
            None => Err(SendError::Failed(Failure::UpstreamTimeout)),
            Some(Ok(resp)) => Ok((resp.map(Either::Right), Some(conn))),
            Some(Err(mut e)) => {
                let unsent = e.take_message();
                let err = e.into_error();
                if unsent.is_some() && matches!(conn.tx, Sender::H2(_)) {
                    // That connection takes no new stream (GOAWAY, or it broke): no
                    // request is given to it again.
                    conn.pool().clone().forget(&conn);
                }
                match unsent {
                    Some(back) if conn.reused => Err(SendError::NotSent(Box::new(back))),
                    _ if refused_stream(&err) => Err(SendError::Refused),
                    _ => Err(SendError::Failed(classify(&err))),
                }
            }
        }
    }
}

impl Attempt<'_> {
    /// Waits for the response head of a request being sent (`sent`), at most `read`
    /// after its last progress; `None` when that passed. Generic over each protocol's
    /// send future, so neither is boxed; the caller pins it (taken by value, it would
    /// be kept twice in this future: as the argument, and pinned).
    async fn head<T, F: Future<Output = T>>(&self, mut sent: Pin<&mut F>) -> Option<T> {
        let t = &self.snapshot.config.server.timeouts;
        let read = if self.may_stream {
            t.read.max(t.stream_idle)
        } else {
            t.read
        };
        let started = crate::clock::recent();
        // The wait for the head counts from the request's last progress: a slow upload
        // is bounded by `client_header` per read, not by the backend's `read`, while a
        // backend that stops reading it is bounded by `read`.
        let deadline = || {
            let last = self
                .upload
                .last_progress()
                .map_or(started, |p| p.max(started));
            last + read
        };
        if self.ticked {
            // Checked when the driver polls: on a wake-up, and at least every tick. The
            // first poll (the request just went out) cannot be overdue.
            let mut first = true;
            std::future::poll_fn(|cx| {
                if let Poll::Ready(r) = sent.as_mut().poll(cx) {
                    return Poll::Ready(Some(r));
                }
                if !std::mem::take(&mut first) && crate::clock::recent() >= deadline() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        } else {
            let mut until = started + read;
            loop {
                tokio::select! {
                    biased;
                    r = &mut sent => break Some(r),
                    _ = tokio::time::sleep_until(until.into()) => {
                        until = deadline();
                        if crate::clock::recent() >= until {
                            break None;
                        }
                    }
                }
            }
        }
    }
}

/// Whether an HTTP/2 backend dropped the stream unprocessed: `REFUSED_STREAM`
/// (RFC 9113 §8.7), or a GOAWAY whose last stream is below it (§6.8); either way the
/// request may go again.
fn refused_stream(e: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        source = err.source();
    }
    false
}

/// The failure a hyper client error is.
fn classify(e: &hyper::Error) -> Failure {
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        Failure::UpstreamBadResponse
    } else if e.is_timeout() {
        Failure::UpstreamTimeout
    } else {
        Failure::UpstreamError
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        list.iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        n.sort_unstable();
        n
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["content-type"]);

        let mut h = headers(&[("connection", "close"), ("server", "s")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["server"]);

        // An upgrade keeps `connection: upgrade` and `upgrade`.
        let mut h = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("proxy-connection", "x"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "upgrade"]);
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty());
    }
}
