//! levee's own pool of connections to each backend: HTTP/1.1, one request at a time
//! per connection, or HTTP/2 (h2c with prior knowledge), many streams per connection.
//!
//! HTTP/2 connections are shared: each request takes a stream on the least busy open
//! connection, and a new connection is opened only when every one carries
//! [`H2_STREAMS`] streams (levee's slots, not the connection, bound how many streams a
//! backend gets; a backend's own `SETTINGS_MAX_CONCURRENT_STREAMS` below that makes
//! further streams wait in the connection until one ends). A connection the backend
//! sent GOAWAY on is seen closing and not chosen again; a request it had not started
//! comes back unsent and goes on another connection.
//!
//! Requests hold a backend slot (their `Permit`) while they use a connection, so the
//! connections in use never exceed the backend's limit in force; idle ones are kept up
//! to [`IDLE_ALLOWANCE`] past `max_inflight` and for at most `upstream_idle`. A pooled
//! connection the backend closed is seen closed (an HTTP/1.1 one by its socket's
//! readiness and one non-blocking read; an HTTP/2 one's hyper task ends when it reads
//! the close) and never handed out; one that closes in the instant between the check
//! and the send gives its request back unsent, and the request goes on a fresh
//! connection.
//!
//! A connection's socket is registered with the worker thread that opened it, so idle
//! connections are kept apart by worker: a request takes one of its own worker's
//! first, and another worker's only when its own has none (one cross-thread hop is
//! still cheaper than a new connection).

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hyper::body::Incoming;
use hyper::client::conn::{http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::upload::ForwardBody;
use crate::config::Protocol;
use crate::error::Failure;

/// Streams an HTTP/2 backend connection carries before another is opened.
pub const H2_STREAMS: u32 = 100;

/// Most HTTP/2 connections to one backend.
pub const H2_MAX_CONNECTIONS: usize = 16;

/// The sending half of a backend connection.
pub enum Sender {
    /// levee's own HTTP/1.1 connection: the request's future drives it, no task.
    H1(crate::http1::client::Connection),
    H2(http2::SendRequest<ForwardBody>),
}

impl Sender {
    pub fn is_closed(&self) -> bool {
        match self {
            Sender::H1(tx) => tx.is_closed(),
            Sender::H2(tx) => tx.is_closed(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(_) => true,
            Sender::H2(tx) => tx.is_ready(),
        }
    }
}

/// What sending a request on an HTTP/2 connection gives: the response head, or the
/// error with the request when it never left.
pub type Sent = Result<hyper::Response<Incoming>, TrySendError<hyper::Request<ForwardBody>>>;

/// Idle connections kept beyond a backend's `max_inflight`, so a burst that ends and
/// starts again does not reconnect.
pub const IDLE_ALLOWANCE: u32 = 2;

/// Idle lists per pool; workers share them modulo this beyond it.
const SLOTS: usize = 16;

/// How often idle connections past `upstream_idle` are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Every backend's pool, by address: pools outlive config reloads, so a reload keeps
/// the connections of backends it keeps. A pool, once made, stays for as long as the
/// `Pools`.
pub struct Pools {
    by_addr: DashMap<(SocketAddr, Protocol), Arc<Pool>>,
    /// Tells this set's entries in a worker's [`RECENT`] from another's.
    id: u64,
}

impl Default for Pools {
    fn default() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Pools {
            by_addr: DashMap::new(),
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }
}

/// Slots of a worker's [`RECENT`] lookups.
const RECENT_SLOTS: usize = 16;

/// One remembered lookup. Weak: the memory of a lookup never keeps a pool, and its
/// idle connections, alive.
struct Recent {
    pools: u64,
    addr: SocketAddr,
    protocol: Protocol,
    pool: std::sync::Weak<Pool>,
}

thread_local! {
    /// A worker's recent pool lookups, one slot per address hash: a lookup that hits
    /// costs a comparison instead of the map's hash and shard lock, a few hundred
    /// instructions on every request.
    static RECENT: RefCell<[Option<Recent>; RECENT_SLOTS]> =
        const { RefCell::new([const { None }; RECENT_SLOTS]) };
}

/// The [`RECENT`] slot of an address.
fn recent_slot(addr: &SocketAddr) -> usize {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => u32::from(ip),
        IpAddr::V6(ip) => {
            let o = ip.octets();
            u32::from_be_bytes([o[12], o[13], o[14], o[15]])
        }
    };
    let mixed = (ip ^ u32::from(addr.port()).rotate_left(16)).wrapping_mul(0x9e37_79b9);
    (mixed >> 28) as usize % RECENT_SLOTS
}

impl Pools {
    pub fn get(&self, addr: SocketAddr, protocol: Protocol) -> Arc<Pool> {
        let slot = recent_slot(&addr);
        let hit = RECENT.with_borrow(|recent| {
            recent[slot]
                .as_ref()
                .filter(|r| r.pools == self.id && r.addr == addr && r.protocol == protocol)
                .and_then(|r| r.pool.upgrade())
        });
        if let Some(pool) = hit {
            return pool;
        }
        let pool = self.lookup(addr, protocol);
        RECENT.with_borrow_mut(|recent| {
            recent[slot] = Some(Recent {
                pools: self.id,
                addr,
                protocol,
                pool: Arc::downgrade(&pool),
            });
        });
        pool
    }

    fn lookup(&self, addr: SocketAddr, protocol: Protocol) -> Arc<Pool> {
        if let Some(p) = self.by_addr.get(&(addr, protocol)) {
            return p.clone();
        }
        self.by_addr
            .entry((addr, protocol))
            .or_insert_with(|| Arc::new(Pool::new(addr, protocol)))
            .clone()
    }

    /// Closes idle connections older than `max_idle`, every second, until aborted.
    pub fn spawn_sweeper(
        self: &Arc<Self>,
        max_idle: impl Fn() -> Duration + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let pools = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(pools) = pools.upgrade() else { return };
                let max = max_idle();
                for p in pools.by_addr.iter() {
                    p.prune(max);
                }
            }
        })
    }

    /// Open connections to `addr` (in use and idle), of either protocol.
    pub fn open(&self, addr: SocketAddr) -> u32 {
        [Protocol::H1, Protocol::H2]
            .iter()
            .filter_map(|p| self.by_addr.get(&(addr, *p)))
            .map(|p| p.open.load(Ordering::Relaxed))
            .sum()
    }
}

/// The connections to one backend.
pub struct Pool {
    addr: SocketAddr,
    protocol: Protocol,
    /// HTTP/2: the shared connections.
    h2: parking_lot::Mutex<Vec<H2Conn>>,
    /// HTTP/2: held while a connection is being opened; the last failed connect.
    h2_connect: tokio::sync::Mutex<Option<(Instant, Failure)>>,
    /// By worker slot ([`slot`]); oldest first, taken from the back (the most
    /// recently used is the warmest).
    idle: [parking_lot::Mutex<Vec<Idle>>; SLOTS],
    /// Connections open, counted by [`Open`] guards.
    open: AtomicU32,
    /// Connections in the idle lists, so a miss does not lock every list.
    idle_count: AtomicU32,
}

struct Idle {
    conn: BackendConn,
    since: Instant,
}

/// One shared HTTP/2 connection.
struct H2Conn {
    tx: http2::SendRequest<ForwardBody>,
    /// Streams taken on it now (one per [`BackendConn`] checked out).
    streams: Arc<AtomicU32>,
    /// Counts the connection open while the pool holds it.
    _open: Arc<Open>,
    /// When its last stream ended (for `upstream_idle`).
    since: Instant,
}

/// A stream's hold on its HTTP/2 connection, released on drop.
struct Stream(Arc<AtomicU32>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one open connection until dropped.
struct Open(Arc<Pool>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection to a backend, checked out for one request (on HTTP/2, one stream of
/// a shared connection).
pub struct BackendConn {
    pub tx: Sender,
    /// Taken from the pool rather than made for this request.
    pub reused: bool,
    /// The worker slot whose runtime drives the connection.
    home: usize,
    /// Its pool, counting it open until it drops (HTTP/2: while the pool or any of
    /// its streams holds it).
    open: Arc<Open>,
    /// HTTP/2: the stream's count on its connection.
    _stream: Option<Stream>,
}

impl BackendConn {
    /// The pool the connection goes back to.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.open.0
    }
}

impl Pool {
    fn new(addr: SocketAddr, protocol: Protocol) -> Pool {
        Pool {
            addr,
            protocol,
            h2: parking_lot::Mutex::new(Vec::new()),
            h2_connect: tokio::sync::Mutex::new(None),
            idle: std::array::from_fn(|_| parking_lot::Mutex::new(Vec::new())),
            open: AtomicU32::new(0),
            idle_count: AtomicU32::new(0),
        }
    }

    /// An idle connection that is still open and younger than `max_idle`, or a new one
    /// (connect bounded by `connect`). `cap` is the backend's `max_inflight`.
    pub async fn checkout(
        self: &Arc<Self>,
        connect: Duration,
        max_idle: Duration,
        cap: u32,
    ) -> Result<BackendConn, Failure> {
        if self.protocol == Protocol::H2 {
            // Boxed: HTTP/1's checkout future stays as small as it was.
            return Box::pin(self.checkout_h2(connect, cap)).await;
        }
        if let Some(c) = self.take_idle(max_idle) {
            return Ok(c);
        }
        if self.open.load(Ordering::Relaxed) >= cap + IDLE_ALLOWANCE {
            // Make room: the oldest idle connection goes first, this worker's if it
            // has one.
            for s in own_slot_first() {
                let mut idle = self.idle[s].lock();
                if !idle.is_empty() {
                    idle.remove(0);
                    self.idle_count.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        self.connect(connect).await
    }

    /// This worker's warmest usable idle connection, else another worker's.
    fn take_idle(&self, max_idle: Duration) -> Option<BackendConn> {
        if self.idle_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        own_slot_first().find_map(|s| {
            let mut idle = self.idle[s].lock();
            while let Some(entry) = idle.pop() {
                self.idle_count.fetch_sub(1, Ordering::Relaxed);
                let usable = !entry.conn.tx.is_closed()
                    && crate::clock::recent().saturating_duration_since(entry.since) < max_idle
                    && entry.conn.tx.is_ready();
                if usable {
                    let mut c = entry.conn;
                    c.reused = true;
                    return Some(c);
                }
            }
            None
        })
    }

    /// A stream on the least busy open HTTP/2 connection, or on a new one when each
    /// carries [`H2_STREAMS`] (and fewer than the connections `cap` streams need are
    /// open).
    async fn checkout_h2(
        self: &Arc<Self>,
        connect: Duration,
        cap: u32,
    ) -> Result<BackendConn, Failure> {
        let wanted = (cap.div_ceil(H2_STREAMS) as usize).clamp(1, H2_MAX_CONNECTIONS);
        if let Some(c) = self.take_stream(wanted) {
            return Ok(c);
        }
        // One connect at a time per backend: a burst at start shares the connection
        // the first request opens instead of opening one each. Requests that waited
        // behind a connect that failed fail with it, rather than each trying in turn.
        let asked = Instant::now();
        let mut last_failure = self.h2_connect.lock().await;
        if let Some((at, f)) = *last_failure {
            if at >= asked {
                return Err(f);
            }
        }
        if let Some(c) = self.take_stream(wanted) {
            return Ok(c);
        }
        let conn = match self.connect(connect).await {
            Ok(c) => c,
            Err(f) => {
                *last_failure = Some((Instant::now(), f));
                return Err(f);
            }
        };
        drop(last_failure);
        let Sender::H2(tx) = &conn.tx else {
            return Ok(conn);
        };
        let streams = Arc::new(AtomicU32::new(1));
        self.h2.lock().push(H2Conn {
            tx: tx.clone(),
            streams: streams.clone(),
            _open: conn.open.clone(),
            since: Instant::now(),
        });
        Ok(BackendConn {
            _stream: Some(Stream(streams)),
            ..conn
        })
    }

    /// A stream on an open connection: the least busy one, unless it is full and fewer
    /// than `wanted` are open (then `None`: open another).
    fn take_stream(&self, wanted: usize) -> Option<BackendConn> {
        let mut conns = self.h2.lock();
        conns.retain(|c| !c.tx.is_closed());
        let best = conns
            .iter()
            .min_by_key(|c| c.streams.load(Ordering::Relaxed))?;
        if best.streams.load(Ordering::Relaxed) >= H2_STREAMS && conns.len() < wanted {
            return None;
        }
        best.streams.fetch_add(1, Ordering::Relaxed);
        Some(BackendConn {
            tx: Sender::H2(best.tx.clone()),
            reused: true,
            home: slot(),
            open: best._open.clone(),
            _stream: Some(Stream(best.streams.clone())),
        })
    }

    /// Takes an HTTP/2 connection out of the pool: a request on it failed or came back
    /// unsent (GOAWAY), so no new stream goes to it; its streams in progress finish.
    pub fn forget(&self, conn: &BackendConn) {
        self.h2
            .lock()
            .retain(|c| !Arc::ptr_eq(&c._open, &conn.open));
    }

    /// Returns a connection whose exchange ended cleanly (HTTP/2: the stream ends; the
    /// connection stays in the pool).
    pub fn checkin(&self, conn: BackendConn, cap: u32) {
        if let Sender::H2(_) = conn.tx {
            if let Some(c) = self
                .h2
                .lock()
                .iter_mut()
                .find(|c| Arc::ptr_eq(&c._open, &conn.open))
            {
                c.since = crate::clock::recent();
            }
            return;
        }
        if conn.tx.is_closed() || self.open.load(Ordering::Relaxed) > cap + IDLE_ALLOWANCE {
            return;
        }
        self.idle[conn.home].lock().push(Idle {
            conn,
            since: crate::clock::recent(),
        });
        self.idle_count.fetch_add(1, Ordering::Relaxed);
    }

    fn prune(&self, max_idle: Duration) {
        // HTTP/2: connections without streams for `max_idle` close (the pool's handle
        // is the last one left).
        self.h2.lock().retain(|c| {
            !c.tx.is_closed()
                && (c.streams.load(Ordering::Relaxed) > 0 || c.since.elapsed() < max_idle)
        });
        for idle in &self.idle {
            let mut idle = idle.lock();
            let before = idle.len();
            idle.retain(|i| !i.conn.tx.is_closed() && i.since.elapsed() < max_idle);
            let pruned = (before - idle.len()) as u32;
            self.idle_count.fetch_sub(pruned, Ordering::Relaxed);
        }
    }

    async fn connect(self: &Arc<Self>, timeout: Duration) -> Result<BackendConn, Failure> {
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Err(_) => return Err(Failure::ConnectTimeout),
            Ok(Err(e)) => return Err(Failure::of_connect(&e)),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        self.open.fetch_add(1, Ordering::Relaxed);
        let open = Arc::new(Open(self.clone()));
        let tx = match self.protocol {
            Protocol::H1 => Sender::H1(crate::http1::client::Connection::new(tcp)),
            Protocol::H2 => {
                let (tx, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|_| Failure::ConnectError)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::trace!(error = %e, "backend h2 connection ended");
                    }
                });
                Sender::H2(tx)
            }
        };
        Ok(BackendConn {
            tx,
            reused: false,
            home: slot(),
            open,
            _stream: None,
        })
    }
}

/// The idle-list slot of the current worker thread.
fn slot() -> usize {
    crate::workers::current() % SLOTS
}

/// Every idle-list slot, the current worker's first.
fn own_slot_first() -> impl Iterator<Item = usize> {
    let own = slot();
    (0..SLOTS).map(move |i| (own + i) % SLOTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_lookup_is_the_sets_own_and_never_keeps_a_pool_alive() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let b: SocketAddr = "[::1]:8080".parse().unwrap();
        let one = Pools::default();
        let two = Pools::default();
        let p = one.get(a, Protocol::H1);
        assert!(Arc::ptr_eq(&p, &one.get(a, Protocol::H1)));
        assert!(
            !Arc::ptr_eq(&p, &two.get(a, Protocol::H1)),
            "another set's pool"
        );
        assert!(
            !Arc::ptr_eq(&p, &one.get(a, Protocol::H2)),
            "another protocol's pool"
        );
        assert_eq!(one.get(b, Protocol::H1).addr, b);
        // Addresses that share a slot each get their own pool, every time.
        for port in 0..64 {
            let addr = SocketAddr::from(([10, 0, 0, 1], port));
            let q = one.get(addr, Protocol::H1);
            assert_eq!(q.addr, addr);
            assert!(Arc::ptr_eq(&q, &one.get(addr, Protocol::H1)));
        }
        assert!(Arc::ptr_eq(&p, &one.get(a, Protocol::H1)));
        let weak = Arc::downgrade(&p);
        drop(p);
        drop(one);
        assert!(
            weak.upgrade().is_none(),
            "a remembered lookup kept the pool alive"
        );
    }
}
