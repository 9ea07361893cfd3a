//! levee's own pool of HTTP/1.1 connections to each backend.
//!
//! Requests hold a backend slot (their `Permit`) while they use a connection, so the
//! connections in use never exceed the backend's limit in force; idle ones are kept up
//! to [`IDLE_ALLOWANCE`] past `max_inflight` and for at most `upstream_idle`. A pooled
//! connection the backend closed is seen closed (hyper's connection task ends when it
//! reads the close) and never handed out; one that closes in the instant between the
//! check and the send gives its request back unsent (`try_send_request`), and the
//! request goes on a fresh connection.
//!
//! A connection's driver task runs on the worker thread that opened it, so idle
//! connections are kept apart by worker: a request takes one of its own worker's
//! first, and another worker's only when its own has none (one cross-thread hop is
//! still cheaper than a new connection).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::upload::ForwardBody;
use crate::error::Failure;

/// Idle connections kept beyond a backend's `max_inflight`, so a burst that ends and
/// starts again does not reconnect.
pub const IDLE_ALLOWANCE: u32 = 2;

/// Idle lists per pool; workers share them modulo this beyond it.
const SLOTS: usize = 16;

/// How often idle connections past `upstream_idle` are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Every backend's pool, by address: pools outlive config reloads, so a reload keeps
/// the connections of backends it keeps.
#[derive(Default)]
pub struct Pools {
    by_addr: DashMap<SocketAddr, Arc<Pool>>,
}

impl Pools {
    pub fn get(&self, addr: SocketAddr) -> Arc<Pool> {
        if let Some(p) = self.by_addr.get(&addr) {
            return p.clone();
        }
        self.by_addr
            .entry(addr)
            .or_insert_with(|| Arc::new(Pool::new(addr)))
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

    /// Open connections to `addr` (in use and idle).
    pub fn open(&self, addr: SocketAddr) -> u32 {
        self.by_addr
            .get(&addr)
            .map_or(0, |p| p.open.load(Ordering::Relaxed))
    }
}

/// The connections to one backend.
pub struct Pool {
    addr: SocketAddr,
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

/// Counts one open connection until dropped.
struct Open(Arc<Pool>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection to a backend, checked out for one request.
pub struct BackendConn {
    pub tx: SendRequest<ForwardBody>,
    /// Taken from the pool rather than made for this request.
    pub reused: bool,
    /// The worker slot whose runtime drives the connection.
    home: usize,
    /// Its pool, counting it open until it drops.
    open: Open,
}

impl BackendConn {
    /// The pool the connection goes back to.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.open.0
    }
}

impl Pool {
    fn new(addr: SocketAddr) -> Pool {
        Pool {
            addr,
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
                    && entry.since.elapsed() < max_idle
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

    /// Returns a connection whose exchange ended cleanly.
    pub fn checkin(&self, conn: BackendConn, cap: u32) {
        if conn.tx.is_closed() || self.open.load(Ordering::Relaxed) > cap + IDLE_ALLOWANCE {
            return;
        }
        self.idle[conn.home].lock().push(Idle {
            conn,
            since: Instant::now(),
        });
        self.idle_count.fetch_add(1, Ordering::Relaxed);
    }

    fn prune(&self, max_idle: Duration) {
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
        let open = Open(self.clone());
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|_| Failure::ConnectError)?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::trace!(error = %e, "backend connection ended");
            }
        });
        Ok(BackendConn {
            tx,
            reused: false,
            home: slot(),
            open,
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
