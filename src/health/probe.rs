//! Active health probes: one task per backend, `GET path` expecting 2xx (over HTTP/1.1,
//! or h2c for an h2 upstream), the gRPC health check, or a TCP connect, every
//! `interval` with ±10 % jitter so probes of many backends and many levee instances
//! spread out. Probes run on their own connections, never wait behind client requests
//! and are never shed.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::config::{Check, Protocol};
use crate::state::{SharedSnapshot, Upstream};

/// The gRPC health check's request: `grpc.health.v1.HealthCheckRequest{service: ""}`
/// in gRPC's framing (no compression, length 0: an empty message).
const GRPC_HEALTH_REQUEST: &[u8] = &[0, 0, 0, 0, 0];
/// `HealthCheckResponse{status: SERVING}` in gRPC's framing (field 1, varint 1).
const GRPC_SERVING: &[u8] = &[0, 0, 0, 0, 2, 0x08, 0x01];

/// One probe of `addr`: true when it passed within `timeout`.
pub async fn probe(
    check: Check,
    protocol: Protocol,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> bool {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        if check == Check::Tcp {
            return Some(true);
        }
        let _ = tcp.set_nodelay(true);
        let req = if check == Check::Grpc {
            http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::TE, "trailers")
                .header(http::header::USER_AGENT, "levee-health-check")
                .body(Full::new(Bytes::from_static(GRPC_HEALTH_REQUEST)))
                .ok()?
        } else {
            let target = match protocol {
                Protocol::H1 => path.to_owned(),
                Protocol::H2 => format!("http://{addr}{path}"),
            };
            let mut b =
                http::Request::get(target).header(http::header::USER_AGENT, "levee-health-check");
            if protocol == Protocol::H1 {
                b = b
                    .header(http::header::HOST, addr.to_string())
                    .header(http::header::CONNECTION, "close");
            }
            b.body(Full::new(Bytes::new())).ok()?
        };
        let (resp, driver) = match protocol {
            Protocol::H1 => {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .ok()?;
                let driver = tokio::spawn(conn);
                (sender.send_request(req).await, driver)
            }
            Protocol::H2 => {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                        .await
                        .ok()?;
                let driver = tokio::spawn(conn);
                (sender.send_request(req).await, driver)
            }
        };
        let ok = match resp {
            Ok(resp) if check == Check::Grpc => serving(resp).await,
            Ok(resp) => resp.status().is_success(),
            Err(_) => false,
        };
        driver.abort();
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Whether a gRPC health check's answer says `SERVING` with `grpc-status: 0` (in the
/// trailers, or in the headers of a trailers-only answer).
async fn serving(resp: hyper::Response<hyper::body::Incoming>) -> bool {
    if !resp.status().is_success() {
        return false;
    }
    let status_ok = |h: &http::HeaderMap| h.get("grpc-status").is_some_and(|v| v == "0");
    let in_head = status_ok(resp.headers());
    let Ok(collected) = resp.into_body().collect().await else {
        return false;
    };
    let trailers_ok = collected.trailers().is_some_and(status_ok);
    (in_head || trailers_ok) && collected.to_bytes().as_ref() == GRPC_SERVING
}

/// Spawns the probe task of every backend of `upstream` (none without checks). Each
/// task holds only a weak reference, and ends once a reload replaced this version of
/// the upstream (the new version probes its backends itself).
pub fn spawn_probes(upstream: &Arc<Upstream>, shared: &SharedSnapshot) {
    let health = &upstream.health;
    if health.check == Check::None {
        return;
    }
    for index in 0..upstream.backends.len() {
        let weak = Arc::downgrade(upstream);
        tokio::spawn(probe_loop(weak, shared.clone(), index));
    }
}

async fn probe_loop(upstream: Weak<Upstream>, shared: SharedSnapshot, index: usize) {
    loop {
        let Some(up) = upstream.upgrade() else { return };
        if !shared.load().upstreams.iter().any(|u| Arc::ptr_eq(u, &up)) {
            return;
        }
        let cfg = up.health.clone();
        let protocol = up.protocol;
        let addr = up.backends[index].address;
        drop(up); // never keep the upstream alive across a probe
        let path = cfg.path.as_deref().unwrap_or("/");
        let ok = probe(cfg.check, protocol, addr, path, cfg.timeout).await;
        let Some(up) = upstream.upgrade() else { return };
        let now = Instant::now();
        up.backends[index].health.record_probe(ok, now, &cfg);
        up.refresh_health(now);
        drop(up);
        let jitter = 0.9 + 0.2 * (rand::random::<u32>() as f64 / u32::MAX as f64);
        tokio::time::sleep(cfg.interval.mul_f64(jitter)).await;
    }
}
