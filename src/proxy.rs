//! pingora's `ProxyHttp` for levee: glue between pingora's request phases and
//! admission. Each phase is short; the decisions live in [`crate::admission`],
//! [`crate::balance`] and [`crate::error`].
//!
//! A request's slot is its [`Permit`], kept in the request context [`Ctx`]: it is
//! released when the context drops at the end of the request, whatever ended it
//! (response sent, backend error, timeout, client gone). A response stream
//! (`text/event-stream`) holds its slot for its whole life.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::admission::Permit;
use crate::balance::hash_bytes;
use crate::config::{Affinity, Class};
use crate::error::{classify_error, error_body, is_backend_failure, shed_body};
use crate::state::{Backend, SharedSnapshot, Snapshot, Upstream};

/// Hop-by-hop headers (RFC 9110 §7.6.1) that are never forwarded. `connection` itself
/// and the headers it names are handled separately; `transfer-encoding` is framing,
/// which pingora owns on both sides.
const HOP_BY_HOP: &[&str] = &["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// The proxy service: reads the current snapshot once per request.
pub struct Levee {
    shared: SharedSnapshot,
}

impl Levee {
    pub fn new(shared: SharedSnapshot) -> Levee {
        Levee { shared }
    }
}

/// Per-request state.
pub struct Ctx {
    snapshot: Option<Arc<Snapshot>>,
    upstream: Option<Arc<Upstream>>,
    class: Class,
    key: Option<u64>,
    permit: Option<Permit>,
    /// Backends whose connect failed, not to be tried again.
    tried: Vec<usize>,
    admitted_at: Option<Instant>,
    /// Whole-response deadline, for responses that are not streams.
    deadline: Option<Instant>,
    /// When the client's request body ended.
    body_done: Option<Instant>,
    status: u16,
    body_bytes: u64,
    /// Is this a websocket-style upgrade (Connection/Upgrade must pass through)?
    upgrade: bool,
    /// Did the client say it accepts a stream (or ask for an upgrade)? Then reads from
    /// the backend may be as far apart as `stream_idle`, not just `read`.
    may_stream: bool,
    /// Status of the backend's response header, 0 before one arrived.
    backend_status: u16,
    connect_retries: u32,
    /// Retries of a request that may have reached a backend.
    replays: u32,
    /// When the request header had been read, and whether to log the request.
    started: Option<Instant>,
    access_log: bool,
    /// What levee answered itself (shed reason, no_route, ...), for the access log.
    outcome: &'static str,
    /// For the access log, once the slot is released: who served it, how long it queued.
    served: Option<(Arc<Backend>, Duration)>,
}

/// The error (and body label) of a request whose connect failed while every other
/// backend was full.
pub const NO_RETRY_SLOT: &str = "no_retry_slot";

/// Most retries of one idempotent request that may have reached a backend.
const MAX_REPLAYS: u32 = 2;

fn new_error(etype: ErrorType, why: &'static str) -> Box<Error> {
    Error::explain(etype, why)
}

/// The request's affinity key hash, when its upstream has affinity and the request
/// carries the key.
fn affinity_key(req: &RequestHeader, affinity: &Affinity) -> Option<u64> {
    match affinity {
        Affinity::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| hash_bytes(v.as_bytes())),
        Affinity::Cookie(name) => req.headers.get_all("cookie").iter().find_map(|v| {
            v.to_str().ok()?.split(';').find_map(|pair| {
                let (k, val) = pair.trim().split_once('=')?;
                (k == name).then(|| hash_bytes(val.as_bytes()))
            })
        }),
    }
}

/// Writes a small JSON response levee makes itself (shed, no route, errors).
async fn respond(
    session: &mut Session,
    status: u16,
    body: Bytes,
    retry_after: Option<u32>,
) -> Result<()> {
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header("content-type", "application/json")?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    if let Some(secs) = retry_after {
        resp.insert_header("retry-after", secs.to_string())?;
    }
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(body), true).await
}

/// Like [`respond`]; when the client is gone (the write fails) the connection is
/// simply not kept: there is nobody left to tell.
async fn respond_or_close(
    session: &mut Session,
    status: u16,
    body: Bytes,
    retry_after: Option<u32>,
) {
    if let Err(e) = respond(session, status, body, retry_after).await {
        tracing::debug!(error = %e, status, "client gone before levee's own response was written");
        session.set_keepalive(None);
    }
}

/// One line per request at info, target `levee::access`, when `server.access_log` is on.
fn access_log(session: &Session, e: Option<&Error>, ctx: &Ctx) {
    let req = session.req_header();
    let client = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let served = ctx
        .permit
        .as_ref()
        .map(|p| (p.backend(), p.queued))
        .or(ctx.served.as_ref().map(|(b, q)| (b, *q)));
    let backend = served.map(|(b, _)| b.label.as_str());
    tracing::info!(
        target: "levee::access",
        client = %client,
        method = %req.method,
        path = %req.uri.path(),
        status = ctx.status,
        upstream = ctx.upstream.as_ref().map(|u| u.name.as_str()),
        backend,
        class = ctx.class.as_str(),
        outcome = ctx.outcome,
        queued_ms = served.map(|(_, q)| q.as_secs_f64() * 1000.0),
        ms = ctx.started.map(|t| t.elapsed().as_secs_f64() * 1000.0),
        error = e.map(|e| classify_error(e).1),
        "request"
    );
}

/// Records how the backend did and frees its slot, exactly once: at the backend's end
/// of stream, or in `logging` when the request ended without one (an error, or a
/// response without a body).
fn release(ctx: &mut Ctx, e: Option<&Error>) {
    let Some(permit) = ctx.permit.take() else {
        return;
    };
    let elapsed = ctx.admitted_at.map(|t| t.elapsed()).unwrap_or_default();
    let failed_backend = e.is_some_and(is_backend_failure);
    let failed = failed_backend || ctx.status >= 500;
    let upstream = permit.upstream();
    upstream.window.record(elapsed, failed);
    upstream.metrics.duration.observe(elapsed.as_secs_f64());
    let client_gone = e.is_some_and(|e| *e.esource() == pingora::ErrorSource::Downstream);
    let code_class = if failed_backend {
        0
    } else if ctx.backend_status == 0 && client_gone {
        6
    } else {
        (ctx.status / 100).min(5) as usize
    };
    permit.backend().metrics.responses[code_class].inc();
    let backend_5xx = ctx.backend_status >= 500 && upstream.health.eject_on_5xx;
    if !client_gone {
        upstream.record_outcome(permit.backend_index(), failed_backend || backend_5xx);
    }
    if e.is_some_and(|e| {
        matches!(
            e.etype(),
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
        )
    }) {
        permit.backend().metrics.timeouts.inc();
    }
    if ctx.access_log {
        ctx.served = Some((permit.backend().clone(), permit.queued));
    }
    drop(permit);
}

/// The headers to drop when forwarding: `connection`, every header it names, and the
/// fixed hop-by-hop set. An upgrade keeps `connection` and `upgrade`. Only names that are
/// present are returned, so a request without hop-by-hop headers allocates nothing.
fn hop_by_hop(headers: &http::HeaderMap, upgrade: bool) -> Vec<String> {
    let mut names = Vec::new();
    let listed = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for token in listed {
        let keep = token.is_empty() || upgrade && token.eq_ignore_ascii_case("upgrade");
        if !keep && headers.contains_key(token) {
            names.push(token.to_ascii_lowercase());
        }
    }
    let fixed = HOP_BY_HOP
        .iter()
        .copied()
        .filter(|n| !(upgrade && *n == "upgrade"))
        .chain((!upgrade).then_some("connection"));
    for name in fixed {
        if headers.contains_key(name) && !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

#[async_trait]
impl ProxyHttp for Levee {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snapshot: None,
            upstream: None,
            class: Class::Normal,
            key: None,
            permit: None,
            tried: Vec::new(),
            admitted_at: None,
            deadline: None,
            body_done: None,
            status: 0,
            body_bytes: 0,
            upgrade: false,
            may_stream: false,
            backend_status: 0,
            connect_retries: 0,
            replays: 0,
            started: None,
            access_log: false,
            outcome: "proxied",
            served: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let snapshot = self.shared.load_full();
        let server = &snapshot.config.server;
        ctx.started = Some(Instant::now());
        ctx.access_log = server.access_log;
        // Keep-alive idle time before the next request on this connection; body reads
        // are bounded by the client header timeout.
        // Only lengthen keep-alive where pingora kept it: it turns it off for HTTP/1.0
        // without keep-alive, `Connection: close`, and CL together with TE (RFC 9112 6.1).
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(server.timeouts.client_idle.as_secs().max(1)));
        }
        session.set_write_timeout(Some(server.timeouts.write));
        session.set_read_timeout(Some(server.timeouts.client_header));

        let req = session.req_header();
        let mut cls = req.headers.get_all(http::header::CONTENT_LENGTH).iter();
        let dup_cl = match (cls.next(), cls.next()) {
            (Some(_), Some(_)) => true,
            (Some(v), None) => v.as_bytes().contains(&b','),
            _ => false,
        };
        let raw = req.raw_path();
        let target_ok = raw.first() == Some(&b'/')
            || (req.uri.scheme().is_some() && req.uri.authority().is_some())
            || (raw == b"*" && req.method == http::Method::OPTIONS);
        let no_host =
            req.version == http::Version::HTTP_11 && !req.headers.contains_key(http::header::HOST);
        if dup_cl || !target_ok || no_host {
            session.set_keepalive(None);
            respond_or_close(session, 400, error_body("bad_request", None), None).await;
            ctx.status = 400;
            return Ok(true);
        }
        let req = session.req_header();
        let Some(upstream) = snapshot.route(req.uri.path()).cloned() else {
            respond_or_close(session, 404, error_body("no_route", None), None).await;
            ctx.status = 404;
            ctx.outcome = "no_route";
            return Ok(true);
        };
        let limit = server.max_request_body_bytes;
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if limit > 0 && declared.is_some_and(|n| n > limit) {
            session.set_keepalive(None);
            let body = error_body("body_too_large", Some(&upstream.name));
            respond_or_close(session, 413, body, None).await;
            ctx.status = 413;
            ctx.outcome = "body_too_large";
            return Ok(true);
        }
        ctx.class = snapshot.classify(req);
        ctx.key = upstream
            .affinity
            .as_ref()
            .and_then(|a| affinity_key(req, a));
        ctx.upgrade = req.headers.contains_key(http::header::UPGRADE);
        ctx.may_stream = ctx.upgrade
            || req
                .headers
                .get_all(http::header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("text/event-stream")));
        let class = ctx.class;
        ctx.snapshot = Some(snapshot);

        match upstream.admit(class, ctx.key, rand::random()).await {
            Ok(permit) => {
                permit.backend().metrics.requests(class).inc();
                upstream.retry_budget.deposit();
                ctx.permit = Some(permit);
                ctx.admitted_at = Some(Instant::now());
                ctx.upstream = Some(upstream);
                Ok(false)
            }
            Err(shed) => {
                let body = shed_body(&upstream.name, &shed);
                respond_or_close(session, 503, body, Some(shed.retry_after)).await;
                ctx.status = 503;
                ctx.outcome = shed.reason.as_str();
                ctx.upstream = Some(upstream);
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(snapshot), Some(upstream)) = (ctx.snapshot.as_ref(), ctx.upstream.as_ref())
        else {
            return Err(new_error(ErrorType::InternalError, "no upstream chosen"));
        };
        let current = ctx.permit.as_ref().map(|p| p.backend_index());
        if current.is_some_and(|i| ctx.tried.contains(&i)) {
            // A retry: another backend (another zone first), never waiting for it.
            let permit = upstream
                .take_retry_slot(ctx.key, &ctx.tried, rand::random())
                .ok_or_else(|| {
                    // The connect failed and every other backend is full: nothing
                    // reached a backend, and the upstream is out of room, so this is an
                    // overload answer (503 + Retry-After), not a bad gateway.
                    new_error(
                        ErrorType::Custom(NO_RETRY_SLOT),
                        "connect failed and no other backend has a free slot",
                    )
                })?;
            permit.backend().metrics.requests(ctx.class).inc();
            ctx.permit = Some(permit); // drops the failed backend's slot
        }
        let Some(permit) = ctx.permit.as_ref() else {
            return Err(new_error(ErrorType::InternalError, "request has no slot"));
        };
        let t = &snapshot.config.server.timeouts;
        let mut peer = HttpPeer::new(permit.backend().address, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(t.connect);
        o.total_connection_timeout = Some(t.connect);
        o.read_timeout = Some(if ctx.may_stream {
            t.read.max(t.stream_idle)
        } else {
            t.read
        });
        o.write_timeout = Some(t.write);
        o.idle_timeout = Some(t.upstream_idle);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if crate::error::is_local_failure(&e) {
            // levee could not even make a socket (out of descriptors, memory): not the
            // backend's fault, and another backend would fail the same way
            // (`classify_error` answers it 503 `local_resources`).
            e.set_retry(false);
            return e;
        }
        if let (Some(permit), Some(upstream)) = (ctx.permit.as_ref(), ctx.upstream.as_ref()) {
            let backend = permit.backend();
            if e.etype() == &ErrorType::ConnectTimedout {
                backend.metrics.timeouts.inc();
            } else {
                backend.metrics.connect_errors.inc();
            }
            ctx.tried.push(permit.backend_index());
            ctx.connect_retries += 1;
            // Nothing reached the backend, so any method may go elsewhere.
            let retry = ctx.connect_retries <= upstream.retry_on_connect_failure
                && upstream.backends.len() > ctx.tried.len();
            if retry {
                // Without a retry, `logging` counts the failure.
                upstream.record_outcome(permit.backend_index(), true);
                upstream.metrics.connect_retries.inc();
            }
            e.set_retry(retry);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("backend {}", peer._address));
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && ctx.backend_status == 0;
        if !replayable || *e.esource() == pingora::ErrorSource::Downstream {
            e.set_retry(false);
            return e;
        }
        e.retry.decide_reuse(client_reused);
        if client_reused && e.retry() {
            // A pooled connection the backend had closed: not the backend's fault, and
            // a fresh connection to it is as good as another backend.
            return e;
        }
        let (Some(permit), Some(upstream)) = (ctx.permit.as_ref(), ctx.upstream.as_ref()) else {
            e.set_retry(false);
            return e;
        };
        // The request may have reached the backend: retry elsewhere only within the
        // upstream's retry budget, so retries never multiply an overload.
        let others = upstream.backends.len() > ctx.tried.len() + 1;
        let retry = others && ctx.replays < MAX_REPLAYS && upstream.retry_budget.try_withdraw();
        if retry {
            // The request moves on; its outcome here counts against this backend now
            // (without a retry, `logging` counts it).
            upstream.record_outcome(permit.backend_index(), true);
            upstream.metrics.replays.inc();
            ctx.tried.push(permit.backend_index());
            ctx.replays += 1;
        }
        e.set_retry(retry);
        e
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if end_of_stream {
            ctx.body_done = Some(Instant::now());
        }
        if let (Some(chunk), Some(snapshot)) = (body.as_ref(), ctx.snapshot.as_ref()) {
            ctx.body_bytes += chunk.len() as u64;
            let limit = snapshot.config.server.max_request_body_bytes;
            if limit > 0 && ctx.body_bytes > limit {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body too large",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for name in hop_by_hop(&upstream_request.headers, ctx.upgrade) {
            upstream_request.remove_header(&name);
        }
        if let Some(addr) = session.client_addr().and_then(|a| a.as_inet()) {
            let ip = addr.ip().to_string();
            let xff = match upstream_request
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prior) if !prior.is_empty() => format!("{prior}, {ip}"),
                _ => ip,
            };
            upstream_request.insert_header("x-forwarded-for", xff)?;
        }
        upstream_request.insert_header("x-forwarded-proto", "http")?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.status = upstream_response.status.as_u16();
        ctx.backend_status = ctx.status;
        for name in hop_by_hop(&upstream_response.headers, ctx.status == 101) {
            upstream_response.remove_header(&name);
        }
        let streaming = ctx.status == 101
            || upstream_response
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim_start().starts_with("text/event-stream"));
        if !streaming {
            if let (Some(at), Some(s)) = (ctx.admitted_at, ctx.snapshot.as_ref()) {
                let from = ctx.body_done.map_or(at, |b| b.max(at));
                ctx.deadline = Some(from + s.config.server.timeouts.response);
            }
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if ctx.deadline.is_some_and(|d| Instant::now() > d) {
            return Err(
                Error::explain(ErrorType::ReadTimedout, "response deadline passed").into_up(),
            );
        }
        if end_of_stream {
            // The backend is done: its slot frees now, before the last bytes go to the
            // client, so a waiting request starts while this one is still being
            // written, and a client holding its whole response never finds that
            // response's slot still taken.
            release(ctx, None);
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, label) = classify_error(e);
        if status > 0 && ctx.status == 0 {
            // The connection is closed after this answer (pingora cannot tell how much of
            // the exchange is left on it), so the answer must not promise keep-alive.
            session.set_keepalive(None);
            let upstream = ctx.upstream.as_ref().map(|u| u.name.as_str());
            let retry_after = (status == 503).then_some(1);
            let _ = respond(session, status, error_body(label, upstream), retry_after).await;
        }
        ctx.status = status;
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.access_log {
            access_log(session, e, ctx);
        }
        release(ctx, e);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // Clients leaving is routine; everything else is logged by pingora at error.
        classify_error(e).0 == 0
    }
}
