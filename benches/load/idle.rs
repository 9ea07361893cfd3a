//! Idle keep-alive client connections: each one connects, sends one request, reads
//! its whole response, and is then held open without traffic, as a browser or an
//! SDK's pool leaves it. The memory section counts what a proxy pays for them (and the
//! tls section for TLS sessions, whose streams come from its own connect).

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Longest one connection may take to connect and get its response.
const PER_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Open connections, and how many could not be opened.
pub struct Idle<S = TcpStream> {
    pub streams: Vec<S>,
    pub failed: usize,
    pub first_error: Option<String>,
    pub took: Duration,
}

impl<S> Idle<S> {
    /// Connections the peer has closed since (a read of the TCP socket `tcp` finds
    /// would return EOF or an error). Only for the end of a measurement: on a TLS
    /// stream, a read of the socket under it would take the session's bytes.
    pub fn closed_by(&self, tcp: impl Fn(&S) -> &TcpStream) -> usize {
        let mut buf = [0u8; 64];
        self.streams
            .iter()
            .filter(|s| !matches!(tcp(s).try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
            .count()
    }
}

impl Idle {
    /// Connections the peer has closed since (a read would return EOF or an error).
    pub fn closed(&self) -> usize {
        self.closed_by(|s| s)
    }
}

/// Opens `n` keep-alive connections to `addr`, at most `parallel` at a time, and
/// gives up on opening more after `budget`.
pub async fn open(addr: SocketAddr, n: usize, parallel: usize, budget: Duration) -> Idle {
    open_with(n, parallel, budget, move || one(addr)).await
}

/// [`open`] with connections that `connect` makes (each with its one exchange done).
pub async fn open_with<S, F, Fut>(
    n: usize,
    parallel: usize,
    budget: Duration,
    connect: F,
) -> Idle<S>
where
    S: Send + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S, String>> + Send + 'static,
{
    let start = Instant::now();
    let mut idle = Idle {
        streams: Vec::with_capacity(n),
        failed: 0,
        first_error: None,
        took: Duration::ZERO,
    };
    let mut tasks = JoinSet::new();
    let mut started = 0;
    while idle.streams.len() + idle.failed < n {
        while started < n && tasks.len() < parallel && start.elapsed() < budget {
            tasks.spawn(tokio::time::timeout(PER_CONNECTION_TIMEOUT, connect()));
            started += 1;
        }
        let Some(joined) = tasks.join_next().await else {
            break;
        };
        let error = match joined {
            Ok(Ok(Ok(stream))) => {
                idle.streams.push(stream);
                continue;
            }
            Ok(Ok(Err(e))) => e,
            Ok(Err(_)) => "timed out".to_owned(),
            Err(e) => e.to_string(),
        };
        idle.failed += 1;
        idle.first_error.get_or_insert(error);
    }
    idle.took = start.elapsed();
    idle
}

/// One connection with one finished exchange (`GET /idle`, 2xx, body read).
pub async fn one(addr: SocketAddr) -> Result<TcpStream, String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    exchange(&mut stream).await?;
    Ok(stream)
}

/// One keep-alive exchange on `stream`: `GET /idle`, a 2xx, its body read, and no
/// `connection: close`.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<(), String> {
    stream
        .write_all(b"GET /idle HTTP/1.1\r\nhost: bench\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too long".into());
        }
        read_more(stream, &mut buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 2") {
        let line = head.lines().next().unwrap_or_default().to_owned();
        return Err(format!("status line {line:?}"));
    }
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(len) => {
            while buf.len() < head_end + len {
                read_more(stream, &mut buf).await?;
            }
        }
        None if head.contains("transfer-encoding: chunked") => {
            while find(&buf[head_end..], b"0\r\n\r\n").is_none() {
                read_more(stream, &mut buf).await?;
            }
        }
        None => return Err("response without a length: not keep-alive".into()),
    }
    if head.contains("connection: close") {
        return Err("proxy closed the connection after the response".into());
    }
    Ok(())
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> Result<(), String> {
    let mut chunk = [0u8; 4096];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("closed before the response ended".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
