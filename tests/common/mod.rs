//! Test kit: real replicas and a real levee on `127.0.0.1:0`, and a small HTTP/1.1
//! client over one connection.
#![allow(dead_code)]

pub mod process;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use levee::app::Running;
use levee::demo::replica::{Replica, ReplicaConfig};
use tokio::net::TcpStream;

pub async fn replica(name: &str, zone: &str, workers: usize, service_ms: u64) -> Replica {
    Replica::start(ReplicaConfig {
        name: name.into(),
        zone: zone.into(),
        workers,
        service_time: Duration::from_millis(service_ms),
    })
    .await
    .expect("replica starts")
}

/// A levee config around `backends`, with `extra` TOML appended to the upstream table
/// (limits, levels...) and `tail` after everything (priority rules).
pub struct Setup {
    pub upstream: String,
    pub backends: Vec<(SocketAddr, String)>,
    pub server: String,
    pub tail: String,
}

impl Setup {
    pub fn new(backends: &[&Replica]) -> Setup {
        Setup {
            upstream: String::new(),
            backends: backends
                .iter()
                .map(|r| (r.addr(), "a".to_string()))
                .collect(),
            server: String::new(),
            tail: String::new(),
        }
    }

    pub fn upstream(mut self, toml: &str) -> Setup {
        self.upstream.push_str(toml);
        self.upstream.push('\n');
        self
    }

    pub fn server(mut self, toml: &str) -> Setup {
        self.server.push_str(toml);
        self.server.push('\n');
        self
    }

    pub fn tail(mut self, toml: &str) -> Setup {
        self.tail.push_str(toml);
        self.tail.push('\n');
        self
    }

    pub fn toml(&self) -> String {
        let mut s = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n{}\n[[upstream]]\nname = \"app\"\nroutes = [\"/\"]\n{}\n",
            self.server, self.upstream
        );
        for (addr, zone) in &self.backends {
            s.push_str(&format!(
                "[[upstream.backend]]\naddress = \"{addr}\"\nzone = \"{zone}\"\n"
            ));
        }
        s.push_str(&self.tail);
        s
    }

    pub async fn start(self) -> Running {
        let text = self.toml();
        let config = levee::config::parse(&text)
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
        levee::app::start(config).await.expect("levee starts")
    }

    /// Starts levee from this setup written to `levee.toml` in a new temporary
    /// directory, for tests that rewrite the file and reload it: the running levee, the
    /// file's path, and the directory (removed when dropped).
    pub async fn start_from_file(&self) -> (Running, std::path::PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("levee.toml");
        std::fs::write(&path, self.toml()).expect("write config");
        let levee = levee::app::start(levee::config::load(&path).expect("valid"))
            .await
            .expect("levee starts");
        (levee, path, dir)
    }
}

/// One client connection, kept alive across requests.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Conn::over(tcp).await
    }

    /// A client on a connection already open (after a PROXY header, say).
    pub async fn over(tcp: TcpStream) -> Conn {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Conn { sender }
    }

    pub async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> hyper::Response<hyper::body::Incoming> {
        self.sender.ready().await.expect("connection usable");
        self.sender.send_request(req).await.expect("response")
    }

    pub async fn request(&mut self, req: http::Request<Full<Bytes>>) -> Reply {
        let resp = self.send(req).await;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.request(get(path)).await
    }
}

pub fn get(path: &str) -> http::Request<Full<Bytes>> {
    get_with(path, &[])
}

pub fn get_with(path: &str, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::get(path).header("host", "test");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).expect("request")
}

/// One request on a fresh connection.
pub async fn fetch(addr: SocketAddr, req: http::Request<Full<Bytes>>) -> Reply {
    Conn::open(addr).await.request(req).await
}

/// An HTTP/2 (h2c, prior knowledge) client connection to `addr`, its driver spawned.
pub async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

/// Waits (polling, bounded) until `cond` holds; panics with `what` after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every slot released and nobody queued, in every upstream.
pub fn all_idle(running: &Running) -> bool {
    running
        .app
        .snapshot()
        .upstreams
        .iter()
        .all(|u| u.inflight() == 0 && u.queue.is_empty())
}

/// Closed-loop clients, each on its own keep-alive connection: send `GET /work`, and
/// after a 503 back off `backoff` before the next. Each stops at `stop`, after
/// [`Load::MAX_PER_CLIENT`] requests, or at `limit`, whichever comes first. Any answer
/// but 200 or 503 fails the test.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<(u32, u32)>>,
}

impl Load {
    pub const MAX_PER_CLIENT: u32 = 400;

    pub fn start(addr: SocketAddr, clients: usize, backoff: Duration, limit: Duration) -> Load {
        Load::start_with(
            addr,
            clients,
            backoff,
            limit,
            Load::MAX_PER_CLIENT,
            &[],
            |_| {},
        )
    }

    /// As [`Load::start`], with at most `max` requests per client, each carrying
    /// `headers`, and `check` run on every reply (it panics to fail the test).
    pub fn start_with(
        addr: SocketAddr,
        clients: usize,
        backoff: Duration,
        limit: Duration,
        max: u32,
        headers: &[(&str, &str)],
        check: fn(&Reply),
    ) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let clients = (0..clients)
            .map(|_| {
                let (stop, headers) = (stop.clone(), headers.clone());
                tokio::spawn(async move {
                    let headers: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let started = Instant::now();
                    let mut c = Conn::open(addr).await;
                    let (mut ok, mut shed) = (0, 0);
                    for _ in 0..max {
                        if stop.load(Ordering::Relaxed) || started.elapsed() > limit {
                            break;
                        }
                        let reply = c.request(get_with("/work", &headers)).await;
                        check(&reply);
                        match reply.status {
                            200 => ok += 1,
                            503 => {
                                shed += 1;
                                tokio::time::sleep(backoff).await;
                            }
                            other => panic!("unexpected status {other}"),
                        }
                    }
                    (ok, shed)
                })
            })
            .collect();
        Load { stop, clients }
    }

    /// Stops every client; returns (answered 200, answered 503).
    pub async fn stop(self) -> (u32, u32) {
        self.finish(true).await
    }

    /// Waits for every client to end (or stops them first); returns (answered 200,
    /// answered 503).
    pub async fn finish(self, stop: bool) -> (u32, u32) {
        if stop {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let mut total = (0, 0);
        for c in self.clients {
            let (ok, shed) = c.await.expect("client task");
            total.0 += ok;
            total.1 += shed;
        }
        total
    }
}

/// The samples of one metric family in a Prometheus scrape, by label text (`""` for
/// a series without labels).
pub fn samples(metrics: &str, name: &str) -> std::collections::BTreeMap<String, f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let labels = series.strip_prefix(name)?;
            if !(labels.is_empty() || labels.starts_with('{')) {
                return None;
            }
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

static WORKER_PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts every panic on a tokio runtime worker thread from now on (once per test
/// binary): tokio swallows panics in levee's tasks (the task ends, the connection
/// drops), so tests that feed levee hostile input read [`worker_panics`].
pub fn count_worker_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() == Some("tokio-runtime-worker") {
                WORKER_PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

/// Panics on runtime worker threads since [`count_worker_panics`].
pub fn worker_panics() -> usize {
    WORKER_PANICS.load(std::sync::atomic::Ordering::SeqCst)
}
