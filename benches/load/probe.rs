//! A latency probe beside the open-loop load: one keep-alive connection on its own OS
//! thread with blocking I/O, one request at a time, timed from the write of the
//! request to the last byte of the response.
//!
//! The open-loop generator schedules sends on tokio's 1 ms timer, so every latency it
//! reports carries up to ~1 ms of send delay; that hides whether a `503` takes 50 µs
//! or 900 µs. The probe has no such floor: a blocking read returns as soon as the
//! kernel has the bytes. It sends [`Probe::rate`] requests per second, a small
//! addition to the offered load.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest wait for one response.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Latencies the probe saw, by status class.
#[derive(Debug, Clone, Default)]
pub struct ProbeStats {
    pub ok: Vec<Duration>,
    pub shed: Vec<Duration>,
    /// Other statuses, I/O errors and timeouts.
    pub failed: u64,
}

impl ProbeStats {
    /// The `q` quantile of `v` (nearest rank); `None` when empty.
    pub fn quantile(v: &[Duration], q: f64) -> Option<Duration> {
        if v.is_empty() {
            return None;
        }
        let mut sorted = v.to_vec();
        sorted.sort();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }
}

/// A running probe; [`Probe::finish`] stops it and returns what it saw.
pub struct Probe {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ProbeStats>,
}

impl Probe {
    /// Requests per second the probe sends (at most; fewer when responses are slow).
    pub const RATE: f64 = 50.0;

    /// Starts probing `GET path` on `addr`; stops by itself after `limit`.
    pub fn start(addr: SocketAddr, path: &str, limit: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let request = format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n").into_bytes();
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || run(addr, &request, &flag, limit))
            .expect("spawn the probe thread");
        Probe { stop, thread }
    }

    pub fn finish(self) -> ProbeStats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

fn run(addr: SocketAddr, request: &[u8], stop: &AtomicBool, limit: Duration) -> ProbeStats {
    let interval = Duration::from_secs_f64(1.0 / Probe::RATE);
    let start = Instant::now();
    let mut stats = ProbeStats::default();
    let mut conn: Option<TcpStream> = None;
    let mut next = start;
    while !stop.load(Ordering::SeqCst) && start.elapsed() < limit {
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
            continue;
        }
        next += interval;
        if conn.is_none() {
            conn = connect(addr).ok();
        }
        let Some(stream) = conn.as_mut() else {
            stats.failed += 1;
            continue;
        };
        let t0 = Instant::now();
        match exchange(stream, request) {
            Ok((status, keep)) => {
                let took = t0.elapsed();
                match status {
                    200..=299 => stats.ok.push(took),
                    503 => stats.shed.push(took),
                    _ => stats.failed += 1,
                }
                if !keep {
                    conn = None;
                }
            }
            Err(_) => {
                stats.failed += 1;
                conn = None;
            }
        }
    }
    stats
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(READ_TIMEOUT))?;
    s.set_write_timeout(Some(READ_TIMEOUT))?;
    Ok(s)
}

/// One request and its whole response: the status and whether the connection stays open.
fn exchange(stream: &mut TcpStream, request: &[u8]) -> std::io::Result<(u16, bool)> {
    stream.write_all(request)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")?
            .trim()
            .parse::<usize>()
            .ok()
    });
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &buf[head_end..];
        let done = match length {
            Some(len) => body.len() >= len,
            None if chunked => body.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            if length.is_none() && !chunked {
                // Delimited by close: complete, and the connection is gone.
                return Ok((status, false));
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, !head.contains("connection: close")))
}
