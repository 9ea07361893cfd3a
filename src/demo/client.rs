//! The load generator's HTTP/1.1 client: one fixed `GET` over a pool of keep-alive
//! connections, each request read to the end of its response in the task that sent it.
//!
//! Why not hyper-util's client: the generator shares the machine with the proxy it
//! measures (two cores in CI and on the benchmark machines), so every microsecond it
//! spends is taken from what it measures. Under `perf` at 28,000 requests a second the
//! legacy client spent most of the generator's CPU on its pool checkout, the channel to
//! each connection's task, header maps and the allocations behind them; the generator
//! saturated before the proxies did. This client writes prebuilt request bytes and
//! parses the response head in place with `httparse` (hyper's own parser): one task and
//! no channel per request. wrk is hand-made for the same reason.
//!
//! What it handles: `Content-Length`, chunked and close-delimited bodies, interim `1xx`
//! heads, `Connection: close` and HTTP/1.0 answers (the connection is not reused), and a
//! pooled connection the server closed while it was idle (the request goes again on a
//! new connection, once: a `GET` that got no byte of answer was not answered). Bodies
//! are read and dropped, except the first [`KEPT_BODY`] bytes of the statuses the
//! caller asks to keep.

use std::net::SocketAddr;

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of a response head; a longer one is an error.
const MAX_HEAD: usize = 64 * 1024;
/// Most header fields of a response head.
const MAX_HEADERS: usize = 64;
/// Most bytes of a body kept for the caller; the rest is read and dropped.
pub const KEPT_BODY: usize = 64 * 1024;
/// Read buffer of a connection (grown for a longer head).
const READ_CHUNK: usize = 4096;

/// A response: its status and, when its status was to be kept, the start of its body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Option<Bytes>,
}

/// Sends one fixed request to one address over pooled keep-alive connections.
pub struct Client {
    target: SocketAddr,
    request: Bytes,
    idle: parking_lot::Mutex<Vec<Conn>>,
    max_idle: usize,
}

impl Client {
    /// `GET path` to `target`, with `Host: target` and `headers`; at most `max_idle`
    /// idle connections are kept.
    pub fn new(
        target: SocketAddr,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        max_idle: usize,
    ) -> Client {
        let mut req = Vec::with_capacity(64 + path.len());
        req.extend_from_slice(b"GET ");
        req.extend_from_slice(path.as_bytes());
        req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        req.extend_from_slice(target.to_string().as_bytes());
        req.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            req.extend_from_slice(name.as_str().as_bytes());
            req.extend_from_slice(b": ");
            req.extend_from_slice(value.as_bytes());
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        Client {
            target,
            request: Bytes::from(req),
            idle: parking_lot::Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        }
    }

    /// Sends the request and reads its whole response. `keep`: statuses whose body
    /// (up to [`KEPT_BODY`]) is returned. The error is a message for the report.
    pub async fn get(&self, keep: &[u16]) -> Result<Answer, String> {
        loop {
            let pooled = self.idle.lock().pop();
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => Conn::open(self.target).await?,
            };
            match conn.exchange(&self.request, keep).await {
                Ok((answer, reusable)) => {
                    if reusable {
                        let mut idle = self.idle.lock();
                        if idle.len() < self.max_idle {
                            idle.push(conn);
                        }
                    }
                    return Ok(answer);
                }
                // The server closed the idle connection before it saw the request.
                Err(Error::Unanswered) if reused => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

enum Error {
    /// The connection closed (or reset) before any byte of the answer.
    Unanswered,
    /// The connection closed in the middle of the answer.
    Truncated,
    Io(std::io::Error),
    Head(String),
    Chunk,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unanswered => f.write_str("connection closed before the response"),
            Error::Truncated => f.write_str("connection closed in the middle of the response"),
            Error::Io(e) => write!(f, "connection error: {e}"),
            Error::Head(e) => write!(f, "invalid response head: {e}"),
            Error::Chunk => f.write_str("invalid chunked body"),
        }
    }
}

/// How the body of a response ends.
#[derive(Clone, Copy)]
enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// What a response head says.
struct Head {
    status: u16,
    len: usize,
    framing: Framing,
    keep_alive: bool,
}

struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(target: SocketAddr) -> Result<Conn, String> {
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|e| format!("tcp connect error: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(Conn {
            tcp,
            buf: BytesMut::with_capacity(READ_CHUNK),
        })
    }

    /// Reads more into the buffer: `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, Error> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        match self.tcp.read_buf(&mut self.buf).await {
            Ok(n) => Ok(n > 0),
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// One request and its response: the answer, and whether the connection may carry
    /// another request.
    async fn exchange(&mut self, request: &[u8], keep: &[u16]) -> Result<(Answer, bool), Error> {
        self.buf.clear();
        if let Err(e) = self.tcp.write_all(request).await {
            return Err(match e.kind() {
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                    Error::Unanswered
                }
                _ => Error::Io(e),
            });
        }
        let mut got_any = false;
        let head = loop {
            match parse_head(&self.buf)? {
                Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                    // An interim answer: the real one follows.
                    self.buf.advance(head.len);
                    continue;
                }
                Some(head) => break head,
                None if self.buf.len() > MAX_HEAD => {
                    return Err(Error::Head(format!("longer than {MAX_HEAD} bytes")));
                }
                None => {}
            }
            let more = match self.fill().await {
                Ok(more) => more,
                Err(Error::Io(e))
                    if !got_any && e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    return Err(Error::Unanswered)
                }
                Err(e) => return Err(e),
            };
            if !more {
                return Err(if got_any || !self.buf.is_empty() {
                    Error::Truncated
                } else {
                    Error::Unanswered
                });
            }
            got_any = true;
        };
        self.buf.advance(head.len);
        let mut kept = keep.contains(&head.status).then(BytesMut::new);
        let reusable = match head.framing {
            Framing::Empty => true,
            Framing::Length(n) => {
                self.body_of_length(n, &mut kept).await?;
                true
            }
            Framing::Chunked => {
                self.chunked_body(&mut kept).await?;
                true
            }
            Framing::UntilClose => {
                loop {
                    self.take(self.buf.len(), &mut kept);
                    if !self.fill().await? {
                        break;
                    }
                }
                false
            }
        };
        let answer = Answer {
            status: head.status,
            body: kept.map(BytesMut::freeze),
        };
        // Bytes past the response are not an answer to anything this client sent.
        Ok((answer, reusable && head.keep_alive && self.buf.is_empty()))
    }

    /// Drops `n` bytes from the front of the buffer, keeping what fits in `kept`.
    fn take(&mut self, n: usize, kept: &mut Option<BytesMut>) {
        if let Some(k) = kept.as_mut() {
            let room = KEPT_BODY.saturating_sub(k.len()).min(n);
            k.extend_from_slice(&self.buf[..room]);
        }
        self.buf.advance(n);
    }

    async fn body_of_length(
        &mut self,
        mut n: u64,
        kept: &mut Option<BytesMut>,
    ) -> Result<(), Error> {
        loop {
            let here = usize::try_from(n).unwrap_or(usize::MAX).min(self.buf.len());
            self.take(here, kept);
            n -= here as u64;
            if n == 0 {
                return Ok(());
            }
            if !self.fill().await? {
                return Err(Error::Truncated);
            }
        }
    }

    async fn chunked_body(&mut self, kept: &mut Option<BytesMut>) -> Result<(), Error> {
        loop {
            let line = self.line().await?;
            let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size_text.trim_ascii())
                .ok()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or(Error::Chunk)?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            self.body_of_length(size, kept).await?;
            if !self.line().await?.is_empty() {
                return Err(Error::Chunk);
            }
        }
    }

    /// The next line of the buffer, without its CRLF, reading as needed.
    async fn line(&mut self) -> Result<Bytes, Error> {
        loop {
            if let Some(at) = memchr::memchr(b'\n', &self.buf) {
                let mut line = self.buf.split_to(at + 1).freeze();
                line.truncate(at);
                if line.last() == Some(&b'\r') {
                    line.truncate(at - 1);
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(Error::Chunk);
            }
            if !self.fill().await? {
                return Err(Error::Truncated);
            }
        }
    }
}

/// The response head at the start of `buf`, `None` while incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::Head(e.to_string())),
    };
    let status = resp.code.unwrap_or_default();
    let mut keep_alive = resp.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::Head("bad content-length".into()))?;
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = h
                .value
                .split(|&b| b == b',')
                .next_back()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some(Head {
        status,
        len,
        framing,
        keep_alive,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request on a connection with the next canned bytes
    /// and then closes; returns its address.
    async fn canned(answers: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            for a in answers {
                // One request per answer (each fits in one read here).
                let mut seen = 0;
                loop {
                    let n = s.read(&mut buf[seen..]).await.unwrap();
                    seen += n;
                    if n == 0 || buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                s.write_all(a).await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn reads_every_framing_on_one_connection() {
        let addr = canned(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\nt: v\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
        ])
        .await;
        let c = Client::new(addr, "/", &[], 4);
        let a = c.get(&[503]).await.unwrap();
        assert_eq!((a.status, a.body), (200, None));
        let a = c.get(&[503]).await.unwrap();
        assert_eq!(a.status, 503);
        assert_eq!(a.body.as_deref(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(c.get(&[]).await.unwrap().status, 204);
        let a = c.get(&[200]).await.unwrap();
        assert_eq!(a.body.as_deref(), Some(&b"until the end"[..]));
        // That answer said close: nothing is pooled.
        assert!(c.idle.lock().is_empty());
    }

    #[tokio::test]
    async fn a_pooled_connection_the_server_closed_is_replaced() {
        // Answers once and closes: the second request finds the pooled connection
        // closed and goes on a new one (which the listener never accepts: an error
        // from the new connection, not a silent reuse of the dead one).
        let addr = canned(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"]).await;
        let c = Client::new(addr, "/", &[], 4);
        assert_eq!(c.get(&[]).await.unwrap().status, 200);
        assert_eq!(c.idle.lock().len(), 1);
        let second = tokio::time::timeout(std::time::Duration::from_millis(300), c.get(&[])).await;
        // Either the reconnect hangs in the backlog (never accepted) or fails: never an
        // answer on the closed connection.
        assert!(!matches!(second, Ok(Ok(_))), "{second:?}");
    }

    #[tokio::test]
    async fn truncated_and_malformed_answers_are_errors() {
        let addr = canned(vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"]).await;
        let c = Client::new(addr, "/", &[], 4);
        let e = c.get(&[]).await.unwrap_err();
        assert!(e.contains("in the middle"), "{e}");

        let addr = canned(vec![b"NOT HTTP\r\n\r\n"]).await;
        let e = Client::new(addr, "/", &[], 4).get(&[]).await.unwrap_err();
        assert!(e.contains("invalid response head"), "{e}");

        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let e = Client::new(dead, "/", &[], 4).get(&[]).await.unwrap_err();
        assert!(e.contains("tcp connect error"), "{e}");
    }

    #[test]
    fn the_request_is_built_once() {
        let h = [(
            HeaderName::from_static("x-priority"),
            HeaderValue::from_static("low"),
        )];
        let c = Client::new("127.0.0.1:80".parse().unwrap(), "/a?b=1", &h, 1);
        assert_eq!(
            &c.request[..],
            b"GET /a?b=1 HTTP/1.1\r\nhost: 127.0.0.1:80\r\nx-priority: low\r\n\r\n"
        );
    }
}
