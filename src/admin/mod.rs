//! The admin listener: `/metrics` (Prometheus text), `/status` (JSON), `/healthz`,
//! `/readyz` and the status page at `/`. It is a separate listener and service from the
//! proxy, so it is never shed and never waits behind client requests.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::state::Snapshot;

/// What the admin endpoints read. The assembly (`app`) provides it; the admin listener
/// depends only on this, not on how levee is put together.
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> Arc<Snapshot>;
    /// False once draining: `/readyz` answers 503.
    fn is_ready(&self) -> bool;
    fn open_connections(&self) -> usize;
    fn metrics(&self) -> &Metrics;
}

/// The status page: one self-contained HTML file, compiled in.
const STATUS_PAGE: &str = include_str!("status.html");

/// Serves the admin endpoints on `listener` until the task is aborted.
pub async fn serve<S: Source>(listener: TcpListener, app: Arc<S>) {
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                let logged = crate::fds::accept_warnings().check();
                if let Some(left_out) = logged {
                    tracing::warn!(error = %e, left_out, "admin accept failed");
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(route(&*app, &req)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = "no-store".parse() {
        resp.headers_mut().insert(hyper::header::CACHE_CONTROL, v);
    }
    resp
}

fn route(app: &impl Source, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => {
            app.snapshot()
                .refresh_metrics(app.metrics(), app.is_ready(), app.open_connections());
            reply(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                app.metrics().encode(),
            )
        }
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            status_json(&app.snapshot(), app.is_ready()).to_string(),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if app.is_ready() => reply(StatusCode::OK, "text/plain", "ready\n"),
        "/readyz" => reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n"),
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", STATUS_PAGE),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Everything the status page shows, as JSON.
pub fn status_json(snapshot: &Snapshot, ready: bool) -> serde_json::Value {
    let upstreams: Vec<_> = snapshot
        .upstreams
        .iter()
        .zip(&snapshot.config.upstreams)
        .map(|(up, config)| {
            let backends: Vec<_> = up
                .backends
                .iter()
                .map(|b| {
                    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
                    let adaptive = up.adaptive.map(|_| {
                        let r = b.adaptive.reading();
                        json!({
                            "limit": b.adaptive.limit(),
                            "p95_ms": ms(r.p95),
                            "p50_ms": ms(r.p50),
                            "floor_ms": ms(r.floor),
                            "queue": r.queue,
                            "load": r.load,
                            "probing": r.probing,
                        })
                    });
                    json!({
                        "address": b.label,
                        "zone": b.zone,
                        "healthy": b.health.state() == crate::health::State::Healthy,
                        "routable": b.is_healthy(),
                        "state": b.health.state().as_str(),
                        "ejected": b.health.is_ejected(),
                        "ejections": b.health.ejections(),
                        "failures": b.health.failures(),
                        "local": b.local,
                        "inflight": b.inflight(),
                        "limit": b.limit(),
                        "max_inflight": b.max_inflight(),
                        "adaptive": adaptive,
                        "requests": crate::metrics::CLASSES.iter().map(|c| b.metrics.requests(*c).get()).sum::<u64>(),
                    })
                })
                .collect();
            let shed: u64 = crate::admission::ShedReason::ALL
                .iter()
                .flat_map(|r| crate::metrics::CLASSES.iter().map(move |c| (*r, *c)))
                .map(|(r, c)| up.metrics.shed(r, c).get())
                .sum();
            let would_shed: serde_json::Map<String, serde_json::Value> =
                crate::admission::ShedReason::ALL
                    .iter()
                    .map(|r| (r.as_str().to_owned(), up.metrics.would_shed(*r).get().into()))
                    .filter(|(_, n)| n != &serde_json::Value::from(0u64))
                    .collect();
            let would_shed_total: u64 = crate::admission::ShedReason::ALL
                .iter()
                .map(|r| up.metrics.would_shed(*r).get())
                .sum();
            let requests: u64 = up
                .backends
                .iter()
                .flat_map(|b| crate::metrics::CLASSES.map(|c| b.metrics.requests(c).get()))
                .sum();
            let window = up.window.stats();
            let class_waits = up.window.waits_by_class();
            let standing = up.queue.is_standing();
            let signal = up.scaling.reading();
            json!({
                "name": up.name,
                "hosts": config.hosts,
                "names": config.named.iter().map(|n| {
                    let label = n.label();
                    let addresses: Vec<String> = config
                        .backends
                        .iter()
                        .filter(|b| b.from.as_deref() == Some(label.as_str()))
                        .map(|b| b.address.to_string())
                        .collect();
                    json!({ "name": label, "zone": n.zone, "addresses": addresses })
                }).collect::<Vec<_>>(),
                "routes": config.routes,
                "level": up.level().as_str(),
                "queue": up.queue.len(),
                "queue_depth": up.limits.queue_depth,
                "queue_standing": standing,
                "queue_allowed_wait_ms": up.allowed_wait(standing).as_secs_f64() * 1000.0,
                "queue_timeout_ms": up.limits.queue_timeout.as_secs_f64() * 1000.0,
                "queue_target_ms": up.limits.queue_target.as_secs_f64() * 1000.0,
                "queue_standing_started_total": up.metrics.queue_standing_started.get(),
                // Waiters are served in class order: each class's queue, highest first.
                "queue_classes": crate::metrics::CLASSES.iter().rev().map(|c| {
                    let standing = up.queue.is_standing_for(*c);
                    json!({
                        "class": c.as_str(),
                        "waiting": up.queue.len_of(*c),
                        "standing": standing,
                        "allowed_wait_ms": up.allowed_wait(standing).as_secs_f64() * 1000.0,
                        "waited": class_waits[*c as usize].0,
                        "wait_p95_ms": class_waits[*c as usize].1
                            .map(|d| d.as_secs_f64() * 1000.0),
                    })
                }).collect::<Vec<_>>(),
                "inflight": up.inflight(),
                "capacity": up.capacity(),
                "requests_total": requests,
                "shed_total": shed,
                "mode": up.limits.mode.as_str(),
                "fairness": up.fairness.as_ref().map(|f| json!({
                    "key": f.key.to_string(),
                    "clients_present": f.shares.present(),
                    "held": f.shares.total(),
                })),
                "would_shed_total": would_shed_total,
                "would_shed": would_shed,
                "drain_per_sec": up.drain_per_sec(),
                "scaling": {
                    "demand_rps": signal.demand_rps,
                    "capacity_rps": signal.capacity_rps,
                    "desired_backends": signal.desired_backends,
                    "target_utilization": up.scaling_config.target_utilization,
                },
                "panic": up.in_panic(),
                "prefer_local": up.prefers_local(),
                "zone_spill_total": up.metrics.spill.get(),
                "p95_ms": window.p95.map(|d| d.as_secs_f64() * 1000.0),
                "window_requests": window.done,
                "window_errors": window.errors,
                "backends": backends,
            })
        })
        .collect();
    json!({ "ready": ready, "version": env!("CARGO_PKG_VERSION"), "upstreams": upstreams })
}
