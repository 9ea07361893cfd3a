//! Active health probes: one task per backend, `GET path` expecting 2xx (or a TCP
//! connect), every `interval` with ±10 % jitter so probes of many backends and many
//! levee instances spread out. Probes run on their own connections, never wait behind
//! client requests and are never shed.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::Check;
use crate::state::{SharedSnapshot, Upstream};

/// One probe of `addr`: true when it passed within `timeout`.
pub async fn probe(check: Check, addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        if check == Check::Tcp {
            return Some(true);
        }
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                .await
                .ok()?;
        let driver = tokio::spawn(conn);
        let req = http::Request::get(path)
            .header(http::header::HOST, addr.to_string())
            .header(http::header::USER_AGENT, "levee-health-check")
            .header(http::header::CONNECTION, "close")
            .body(Empty::new())
            .ok()?;
        let ok = sender
            .send_request(req)
            .await
            .is_ok_and(|resp| resp.status().is_success());
        driver.abort();
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
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
        let addr = up.backends[index].address;
        drop(up); // never keep the upstream alive across a probe
        let path = cfg.path.as_deref().unwrap_or("/");
        let ok = probe(cfg.check, addr, path, cfg.timeout).await;
        let Some(up) = upstream.upgrade() else { return };
        let now = Instant::now();
        up.backends[index].health.record_probe(ok, now, &cfg);
        up.refresh_health(now);
        drop(up);
        let jitter = 0.9 + 0.2 * (rand::random::<u32>() as f64 / u32::MAX as f64);
        tokio::time::sleep(cfg.interval.mul_f64(jitter)).await;
    }
}
