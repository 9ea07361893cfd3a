//! Where client connections are served: the runtime layout (`server.runtime`).
//!
//! - `per_thread`: `threads` worker threads, each running a single-threaded tokio
//!   runtime with its own `SO_REUSEPORT` listening socket per address. The kernel
//!   spreads new connections over the sockets, and each connection lives on one thread
//!   from accept to close: no work stealing, and no wake-up crosses threads on the
//!   request path unless a request waits in a queue that another thread releases.
//! - `multi_thread`: every listener is served by the runtime levee was started on.
//!
//! The control plane (health probes, the level ticker, the admin listener, reloads,
//! signals) always runs on the runtime levee was started on.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::net::TcpSocket;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The kernel's accept queue per listening socket.
const BACKLOG: u32 = 1024;

thread_local! {
    /// The worker this thread is (0 outside the workers).
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// What a thread of levee's runtimes runs when it has nothing to do, at most once per
/// [`IDLE_HOOK_EVERY`]: the binary gives its allocator's "return free memory to the
/// OS" here, so that memory a burst used goes back once the burst is over.
static IDLE_HOOK: OnceLock<fn()> = OnceLock::new();

/// Least time between two runs of the idle hook on one thread.
pub const IDLE_HOOK_EVERY: Duration = Duration::from_secs(1);

/// Sets the idle hook (first call wins); see [`on_park`].
pub fn set_idle_hook(hook: fn()) {
    let _ = IDLE_HOOK.set(hook);
}

/// A runtime builder with levee's hooks ([`with_hooks`]), one thread.
pub fn runtime_builder() -> tokio::runtime::Builder {
    let mut b = tokio::runtime::Builder::new_current_thread();
    with_hooks(&mut b);
    b
}

/// Every runtime levee builds has its drivers and these hooks: [`on_park`], and
/// [`crate::clock::woke`] on unpark.
pub fn with_hooks(b: &mut tokio::runtime::Builder) -> &mut tokio::runtime::Builder {
    b.enable_all()
        .on_thread_park(on_park)
        .on_thread_unpark(crate::clock::woke)
}

/// For `on_thread_park` of every runtime levee builds: the thread's recent clock
/// reading is dropped ([`crate::clock::parking`]), and the idle hook runs when this
/// thread last ran it [`IDLE_HOOK_EVERY`] ago or more.
pub fn on_park() {
    crate::clock::parking();
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let Some(hook) = IDLE_HOOK.get() else { return };
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= IDLE_HOOK_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        hook();
    }
}

/// The worker the current thread is: 0 outside the per-thread workers (and for the
/// first of them). Backend pools keep each worker's idle connections apart with it.
pub fn current() -> usize {
    WORKER.with(Cell::get)
}

/// Worker threads, each running its own single-threaded runtime until dropped.
pub struct Workers {
    handles: Vec<Handle>,
    /// Dropping these stops the workers: each runtime then drops its tasks (and so
    /// closes their connections) and its thread ends.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// Starts `n` worker threads.
    pub fn start(n: usize) -> io::Result<Workers> {
        let mut handles = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        for i in 0..n {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("levee-w{i}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(i));
                    let rt = match runtime_builder().build() {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(rt.handle().clone()));
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                })?;
            let handle = handle_rx.recv().map_err(|_| {
                io::Error::other("worker thread ended before its runtime started")
            })??;
            handles.push(handle);
            stop.push(stop_tx);
        }
        Ok(Workers {
            handles,
            _stop: stop,
        })
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }
}

/// A listening socket with `SO_REUSEPORT`, so that each worker can have its own on the
/// same address (and a binary upgrade's new process can add more). Must be called
/// inside a tokio runtime; the socket is returned unregistered.
pub fn bind_reuseport(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(BACKLOG)?.into_std()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The sockets of one listen address, one per worker: those given (inherited from a
/// previous levee, or the first one bound) plus new `SO_REUSEPORT` siblings up to
/// `workers`. When a sibling cannot be bound (a socket inherited without
/// `SO_REUSEPORT`), the workers share the first socket instead.
pub fn siblings(
    mut sockets: Vec<std::net::TcpListener>,
    workers: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    let Some(first) = sockets.first() else {
        return Ok(sockets);
    };
    let addr = first.local_addr()?;
    while sockets.len() < workers {
        match bind_reuseport(addr) {
            Ok(l) => sockets.push(l),
            Err(e) => {
                tracing::info!(%addr, error = %e, "cannot add an SO_REUSEPORT listener; workers share one socket");
                while sockets.len() < workers {
                    let shared = sockets[0].try_clone()?;
                    sockets.push(shared);
                }
            }
        }
    }
    Ok(sockets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn siblings_share_the_address_and_each_accepts() {
        let first = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let sockets = siblings(vec![first], 3).unwrap();
        assert_eq!(sockets.len(), 3);
        for s in &sockets {
            assert_eq!(s.local_addr().unwrap(), addr);
        }
        // Connections spread over the group by the kernel's hash; with enough of
        // them, every socket gets some.
        let mut clients = Vec::new();
        for _ in 0..64 {
            clients.push(std::net::TcpStream::connect(addr).unwrap());
        }
        let mut accepted = 0;
        let mut used = 0;
        for s in &sockets {
            let mut here = 0;
            while s.accept().is_ok() {
                here += 1;
            }
            accepted += here;
            used += usize::from(here > 0);
        }
        assert_eq!(accepted, 64);
        assert!(used >= 2, "64 connections all went to one of 3 sockets");
    }

    #[tokio::test]
    async fn a_socket_without_reuseport_is_shared_by_the_workers() {
        // As a listener inherited from an older levee: bound without SO_REUSEPORT, so
        // no sibling can join it; the workers then share it.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        plain.set_nonblocking(true).unwrap();
        let addr = plain.local_addr().unwrap();
        let sockets = siblings(vec![plain], 3).unwrap();
        assert_eq!(sockets.len(), 3);
        let inode = |s: &std::net::TcpListener| {
            use std::os::unix::io::AsRawFd;
            // SAFETY: fstat on a descriptor this test owns, into a zeroed struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            assert_eq!(unsafe { libc::fstat(s.as_raw_fd(), &mut st) }, 0);
            st.st_ino
        };
        assert!(
            sockets.iter().all(|s| inode(s) == inode(&sockets[0])),
            "the workers share the one socket"
        );
        let _client = std::net::TcpStream::connect(addr).unwrap();
        // One queue behind every descriptor: whichever accepts first gets it.
        let accepted: usize = sockets.iter().filter(|s| s.accept().is_ok()).count();
        assert_eq!(accepted, 1);
    }

    #[test]
    fn the_idle_hook_runs_at_most_once_a_second_per_thread() {
        thread_local! {
            static RUNS_HERE: Cell<usize> = const { Cell::new(0) };
        }
        fn count() {
            RUNS_HERE.with(|r| r.set(r.get() + 1));
        }
        set_idle_hook(count);
        // Counted per thread: other tests' runtimes park on their own threads.
        std::thread::spawn(|| {
            for _ in 0..100 {
                on_park();
            }
            assert_eq!(RUNS_HERE.with(Cell::get), 1);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn workers_run_tasks_on_their_own_threads() {
        let workers = Workers::start(2).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for h in workers.handles() {
            let tx = tx.clone();
            h.spawn(async move {
                let _ = tx.send(current());
            });
        }
        let mut seen: Vec<usize> = (0..2)
            .map(|_| rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, vec![0, 1]);
    }
}
