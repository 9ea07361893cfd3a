//! File descriptors: the budget levee's default connection cap comes from, the reserve
//! that lets it refuse a client cleanly when the process has run out anyway, and the
//! refusal itself.
//!
//! Every client connection takes a descriptor, and one that is being proxied a second
//! one towards its backend. Without a cap, a flood of clients uses up the process's
//! open-files limit: `accept` fails with `EMFILE`, the excess waits in the kernel's
//! accept queue with no answer, and health probes, new backend connections and the
//! admin listener fail with it. So levee (1) raises its soft limit to the hard one at
//! start, (2) caps client connections at half of what is left after a reserve for its
//! own use, unless `server.max_connections` says otherwise, (3) answers connections
//! past the cap with a 503 and closes them, and (4) if `accept` still runs out, frees a
//! descriptor kept for that purpose to take one connection off the queue, answer it
//! the same way, and take the descriptor back.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Descriptors kept for levee itself (listeners, the admin listener and its clients,
/// health probes and pooled backend connections, log and config-watch files, the
/// refusals below): a quarter of the limit, at least 32 and at most 128. (An idle
/// levee with two backends holds about 20.)
pub fn reserved(limit: u64) -> u64 {
    (limit / 4).clamp(32, 128)
}

/// The open-files limit in force (soft), after raising it to the hard limit the first
/// time it is asked for. `None` where it cannot be read.
pub fn open_files_limit() -> Option<u64> {
    static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(raise_open_files_limit)
}

fn raise_open_files_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// The client-connection cap for an open-files limit: half of what is left after
/// [`reserved`], since a proxied connection also holds one towards its backend; at
/// least 1. `RLIM_INFINITY` and huge limits give a huge cap, which is no cap.
pub fn connections_for(limit: u64) -> usize {
    let usable = limit.saturating_sub(reserved(limit)) / 2;
    usize::try_from(usable).unwrap_or(usize::MAX).max(1)
}

/// The client-connection cap in force: `server.max_connections` when set, else the
/// one the open-files limit allows (0, no cap, where the limit cannot be read).
pub fn max_connections(configured: u32) -> usize {
    if configured > 0 {
        configured as usize
    } else {
        open_files_limit().map_or(0, connections_for)
    }
}

/// Most descriptors [`presize_table`] sizes the table for: 65,536 slots take about
/// 520 KiB of kernel memory. A larger cap still works; past this the table grows under
/// load, a doubling at a time.
pub const PRESIZE_MAX: u64 = 65_536;

/// The descriptors levee may hold at once under a client cap of `cap` (0: none):
/// two per proxied connection, plus its own [`reserved`] ones.
pub fn descriptors_for(cap: usize, limit: u64) -> u64 {
    let cap = if cap == 0 { usize::MAX } else { cap };
    u64::try_from(cap)
        .unwrap_or(u64::MAX)
        .saturating_mul(2)
        .saturating_add(reserved(limit))
}

/// Grows the process's descriptor table, once, to hold the descriptors the client cap
/// `configured` (`server.max_connections`, 0: from the open-files limit) may need,
/// within the open-files limit and [`PRESIZE_MAX`]. Returns the size asked for (0 when
/// nothing was done).
///
/// The kernel grows a process's descriptor table by doubling it when a new descriptor
/// does not fit, and in a process with more than one thread each growth waits for an
/// RCU grace period (`synchronize_rcu` in `expand_files`) while every thread that
/// opens a descriptor meanwhile waits behind it. A fresh levee hit by a burst grew its
/// table from 64 to 1,024 slots in four such steps on its accept path, one `accept4`
/// blocked for 11 ms, and its first 40 ms of answers came that much late. A
/// single-threaded server never pays this. The table never shrinks, so growing it
/// before clients come takes the waits off the request path for good.
pub fn presize_table(configured: u32) -> std::io::Result<u64> {
    let Some(limit) = open_files_limit() else {
        return Ok(0);
    };
    let wanted = descriptors_for(max_connections(configured), limit)
        .min(limit)
        .min(PRESIZE_MAX);
    // The table's first 64 slots come with the process.
    let Ok(highest) = libc::c_int::try_from(wanted.saturating_sub(1)) else {
        return Ok(0);
    };
    if highest < 64 {
        return Ok(0);
    }
    let null = std::fs::File::open("/dev/null")?;
    // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor this function owns onto the
    // lowest free number at or above `highest` (growing the table to hold it) and
    // touches no other descriptor.
    let dup = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&null),
            libc::F_DUPFD_CLOEXEC,
            highest,
        )
    };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` was just returned by fcntl and nothing else owns it; closing it
    // frees the slot, and the table keeps its size.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) });
    Ok(wanted)
}

/// Was `accept` refused for lack of descriptors (the process's or the system's)?
pub fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// One descriptor held back (on `/dev/null`) for when `accept` fails with `EMFILE`.
pub struct Reserve(Option<std::fs::File>);

/// Most connections [`Reserve::refuse_waiting`] refuses in one go, so the accept loop
/// still looks at its shutdown signal and warnings in between.
pub const REFUSE_AT_ONCE: u64 = 64;

impl Default for Reserve {
    fn default() -> Self {
        Reserve(std::fs::File::open("/dev/null").ok())
    }
}

impl Reserve {
    /// Frees the reserved descriptor, takes waiting connections off `listener`'s queue
    /// (the first waited for up to 5 ms, then those already there, at most
    /// [`REFUSE_AT_ONCE`]), refuses each with a 503 and closes it, which frees the
    /// descriptor for the next, and takes the descriptor back. Returns how many were
    /// refused. One at a time, a queue of clients that arrived together outlasted
    /// their patience while the loop paused between refusals.
    pub async fn refuse_waiting(&mut self, listener: &TcpListener) -> u64 {
        self.0 = None;
        let mut refused = 0;
        let mut wait = Duration::from_millis(5);
        while refused < REFUSE_AT_ONCE {
            match tokio::time::timeout(wait, listener.accept()).await {
                Ok(Ok((tcp, _))) => {
                    refuse_now(&tcp, "no_descriptors");
                    refused += 1;
                }
                _ => break,
            }
            // The timeout polls the accept first: a zero wait takes only a
            // connection that is already waiting.
            wait = Duration::ZERO;
        }
        *self = Reserve::default();
        refused
    }
}

/// The answer to a connection levee will not serve: a 503 that names the reason,
/// asks the client to come back in a second, and closes the connection.
fn refusal(reason: &str) -> Vec<u8> {
    let body = format!("{{\"error\":\"overloaded\",\"reason\":\"{reason}\"}}\n");
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Refuses at once, without waiting: consumes what the client already sent (so the
/// close is a FIN, not a reset that could destroy the answer before it is read),
/// writes the 503 if the socket takes it, and closes.
pub fn refuse_now(tcp: &TcpStream, reason: &str) {
    let mut sink = [0u8; 4096];
    let _ = tcp.try_read(&mut sink);
    let _ = tcp.try_write(&refusal(reason));
}

/// Refuses politely: waits up to `wait` for the request header to arrive (so the
/// answer is not cut by a reset), answers 503, and closes.
pub async fn refuse(mut tcp: TcpStream, reason: &'static str, wait: Duration) {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    let mut seen = 0usize;
    loop {
        let read =
            tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut tcp, &mut buf))
                .await;
        match read {
            Ok(Ok(n)) if n > 0 => {
                let chunk = &buf[..n];
                seen += n;
                if chunk.windows(4).any(|w| w == b"\r\n\r\n") || seen > 64 * 1024 {
                    break;
                }
            }
            Ok(Ok(_)) | Ok(Err(_)) => return,
            Err(_) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(&refusal(reason))).await;
    let _ = tokio::time::timeout(Duration::from_millis(100), tcp.shutdown()).await;
}

/// A warning that repeats at most once per interval, with the count it left out.
/// Failed accepts are logged at most once a second for the whole process: every accept
/// loop (each worker's, each listener's, the admin listener's) counts here.
pub fn accept_warnings() -> parking_lot::MutexGuard<'static, Throttled> {
    static ACCEPT: parking_lot::Mutex<Throttled> =
        parking_lot::const_mutex(Throttled::new(Duration::from_secs(1)));
    ACCEPT.lock()
}

pub struct Throttled {
    every: Duration,
    last: Option<std::time::Instant>,
    left_out: u64,
}

impl Throttled {
    pub const fn new(every: Duration) -> Throttled {
        Throttled {
            every,
            last: None,
            left_out: 0,
        }
    }

    /// Returns `Some(left out since the last one)` when this occurrence should be
    /// logged, `None` when it is counted and left out.
    pub fn check(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_half_of_what_the_reserve_leaves() {
        assert_eq!(connections_for(1024), 448);
        assert_eq!(connections_for(65_536), 32_704);
        assert_eq!(connections_for(64), 16);
        assert_eq!(connections_for(10), 1);
        assert!(connections_for(u64::MAX) > 1 << 30);
    }

    #[test]
    fn a_cap_needs_two_descriptors_a_client_and_the_reserve() {
        assert_eq!(descriptors_for(300, 1024), 728);
        assert_eq!(descriptors_for(448, 1024), 1024);
        // No cap: as many as can be; the table is then sized for PRESIZE_MAX.
        assert_eq!(descriptors_for(0, 1024), u64::MAX);
        assert_eq!(descriptors_for(usize::MAX, 65_536), u64::MAX);
    }

    #[test]
    fn throttled_warnings_count_what_they_leave_out() {
        let mut t = Throttled::new(Duration::from_secs(3600));
        assert_eq!(t.check(), Some(0));
        assert_eq!(t.check(), None);
        assert_eq!(t.check(), None);
        t.last = Some(std::time::Instant::now() - Duration::from_secs(3601));
        assert_eq!(t.check(), Some(2));
    }

    #[test]
    fn emfile_and_enfile_are_out_of_descriptors() {
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(
            libc::EMFILE
        )));
        assert!(out_of_descriptors(&std::io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!out_of_descriptors(&std::io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
    }

    #[tokio::test]
    async fn a_refused_client_reads_the_whole_503() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut c, &mut got)
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let (tcp, _) = listener.accept().await.unwrap();
        refuse(tcp, "max_connections", Duration::from_secs(2)).await;
        let got = client.await.unwrap();
        assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
        assert!(got.contains("retry-after: 1\r\n"), "{got}");
        assert!(
            got.ends_with("{\"error\":\"overloaded\",\"reason\":\"max_connections\"}\n"),
            "{got}"
        );
    }
}
