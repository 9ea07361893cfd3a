//! A flood of distinct client keys: `keys` requests, each with its own value of a
//! header, spread evenly over `duration` from a fixed set of keep-alive connections.
//! The fairness section sends it through levee to see what a key table costs when
//! every request is a new client.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Longest one request may take; a connection whose request failed is reopened.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the flood got back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flood {
    pub sent: u64,
    pub ok: u64,
    pub shed: u64,
    pub other: u64,
    pub took: Duration,
}

/// Sends `keys` requests `GET path` with `header: flood-<i>` (i = 0..keys) at an even
/// rate over `duration`, from `connections` connections (each sends its share in turn,
/// at once when behind its schedule). Ends by `duration` + [`REQUEST_TIMEOUT`] plus a
/// second at the latest; requests not sent by then are not counted as sent.
pub async fn run(
    addr: SocketAddr,
    path: &str,
    header: &'static str,
    keys: u64,
    duration: Duration,
    connections: u64,
) -> Flood {
    let start = Instant::now();
    let stop = start + duration + REQUEST_TIMEOUT + Duration::from_secs(1);
    let connections = connections.clamp(1, keys.max(1));
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let path = path.to_owned();
            tokio::spawn(async move {
                let mut got = Flood::default();
                let mut conn = None;
                for i in (c..keys).step_by(connections as usize) {
                    let due = start + duration.mul_f64(i as f64 / keys as f64);
                    if Instant::now() >= stop {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    got.sent += 1;
                    match one(&mut conn, addr, &path, header, i).await {
                        Some(200..=299) => got.ok += 1,
                        Some(503) => got.shed += 1,
                        _ => {
                            got.other += 1;
                            conn = None;
                        }
                    }
                }
                got
            })
        })
        .collect();
    let mut all = Flood::default();
    for t in tasks {
        if let Ok(got) = t.await {
            all.sent += got.sent;
            all.ok += got.ok;
            all.shed += got.shed;
            all.other += got.other;
        }
    }
    all.took = start.elapsed();
    all
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One request on `conn` (opened first if need be); its status, `None` on failure.
async fn one(
    conn: &mut Option<Sender>,
    addr: SocketAddr,
    path: &str,
    header: &'static str,
    i: u64,
) -> Option<u16> {
    let attempt = async {
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            let tcp = TcpStream::connect(addr).await.ok()?;
            let _ = tcp.set_nodelay(true);
            let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                .await
                .ok()?;
            tokio::spawn(driver);
            *conn = Some(sender);
        }
        let sender = conn.as_mut()?;
        sender.ready().await.ok()?;
        let req = http::Request::get(path)
            .header("host", "bench")
            .header(header, format!("flood-{i}"))
            .body(Empty::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.ok()?;
        Some(status)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}
