//! Differential tests of levee's HTTP/1.1 request framing against hyper's server
//! parser: where the two read a byte stream as different requests (how many, or any
//! body's bytes), levee must refuse the disputed request (a 4xx and a close), and the
//! backend must get no complete copy of it.
//!
//! - `corpus_against_real_levee`: a corpus of raw requests (the hostile inputs of
//!   `tests/hostile.rs` and more: Content-Length and Transfer-Encoding variants,
//!   line endings, control bytes, chunk-size and extension edge cases, trailers,
//!   pipelining after bodies). Each is read by hyper 1.x's own HTTP/1 server on an
//!   in-memory pipe, with a service that records every request and its whole body; and
//!   sent over loopback to a real levee in front of a recording backend (a raw TCP
//!   server here that keeps every request it gets). levee's forwarded requests must be
//!   a prefix of hyper's, byte for byte; past that prefix levee answers 4xx and closes.
//! - `generated_requests_against_the_codec`: generated and mutated requests, read by
//!   hyper and by levee's codec the way its client driver reads (`parse::request`,
//!   `check_head`, the driver's framing rule, `Decoder`), with the same assertion.
//!
//! `cargo test --test codec_differential -- --nocapture` prints the corpus table.

mod common;
#[path = "common/rfc9112.rs"]
mod rfc9112;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{eventually, Setup};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Version;
use http_body_util::{BodyExt, Full};
use levee::http::validate::check_head;
use levee::http1::framing::{Decoded, Decoder};
use levee::http1::parse;
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bound on any one exchange; levee's own waits are 1 s in these tests.
const LIMIT: Duration = Duration::from_secs(5);
/// Cases run at once (each with its own levee and backend).
const PARALLEL: usize = 8;

/// levee's timeouts in these tests: every wait on a request is 1 s; a pooled backend
/// connection is closed at the pool's next sweep (so the backend sees every
/// connection end, and what it got is final).
const SERVER: &str = "[server.timeouts]\nclient_header_ms = 1000\nclient_idle_ms = 30000\n\
                      read_ms = 2000\nresponse_ms = 3000\nupstream_idle_ms = 1";

/// One request as a reader framed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Req {
    method: String,
    /// Origin form (what levee forwards of an absolute-form target).
    target: String,
    body: Vec<u8>,
    /// The body was read to its end.
    complete: bool,
}

impl Req {
    fn describe(&self) -> String {
        let target = if self.target.len() > 24 {
            format!("{}…", &self.target[..16])
        } else {
            self.target.clone()
        };
        format!(
            "{} {target} body={}{}",
            self.method,
            self.body.len(),
            if self.complete { "" } else { " (cut)" }
        )
    }
}

fn describe_all(reqs: &[Req]) -> String {
    if reqs.is_empty() {
        return "nothing".into();
    }
    reqs.iter()
        .map(Req::describe)
        .collect::<Vec<_>>()
        .join("; ")
}

// ---------------------------------------------------------------------------------
// hyper's reading: its HTTP/1 server on an in-memory pipe.

async fn hyper_reads(bytes: &[u8]) -> Vec<Req> {
    let (client, server) = tokio::io::duplex(4 << 20);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            let method = req.method().to_string();
            let target = req
                .uri()
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string());
            // The head is recorded at once: hyper may drop this future when the
            // body breaks.
            let index = {
                let mut seen = record.lock().expect("lock");
                seen.push(Req {
                    method,
                    target,
                    body: Vec::new(),
                    complete: false,
                });
                seen.len() - 1
            };
            let mut body = req.into_body();
            loop {
                match body.frame().await {
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            record.lock().expect("lock")[index]
                                .body
                                .extend_from_slice(&d);
                        }
                    }
                    Some(Err(_)) => break,
                    None => {
                        record.lock().expect("lock")[index].complete = true;
                        break;
                    }
                }
            }
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                b"ok",
            ))))
        }
    });
    // Half-closes are kept open: the end of the input is read after the requests
    // before it are served.
    let conn = hyper::server::conn::http1::Builder::new()
        .half_close(true)
        .serve_connection(hyper_util::rt::TokioIo::new(server), service);
    let (mut rd, mut wr) = tokio::io::split(client);
    let write = async {
        let _ = wr.write_all(bytes).await;
        let _ = wr.shutdown().await;
        wr
    };
    let read = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
    };
    let done = tokio::time::timeout(LIMIT, async { tokio::join!(conn, write, read) }).await;
    assert!(done.is_ok(), "hyper did not finish reading in time");
    let reqs = seen.lock().expect("lock").clone();
    reqs
}

// ---------------------------------------------------------------------------------
// levee's codec, read the way its client driver reads (`src/http1/conn.rs`).

/// Why levee's codec stopped reading the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Every byte read (or the rest is an incomplete head).
    End,
    /// A request refused: its head, its framing, or its body.
    Refused,
    /// The connection is not kept after the last request.
    Close,
}

fn wants_keep_alive(parts: &http::request::Parts) -> bool {
    let mut keep = parts.version == Version::HTTP_11;
    for v in parts.headers.get_all(CONNECTION) {
        for t in v.as_bytes().split(|&b| b == b',') {
            let t = t.trim_ascii();
            if t.eq_ignore_ascii_case(b"close") {
                return false;
            }
            if t.eq_ignore_ascii_case(b"keep-alive") {
                keep = true;
            }
        }
    }
    keep
}

/// The driver's framing rule (private in `conn.rs`; the corpus test checks the real
/// one end to end).
fn driver_decoder(parts: &http::request::Parts) -> Option<Decoder> {
    let mut lengths = parts.headers.get_all(CONTENT_LENGTH).iter();
    let mut codings = parts.headers.get_all(TRANSFER_ENCODING).iter();
    let (cl, te) = (lengths.next(), codings.next());
    if lengths.next().is_some() || codings.next().is_some() {
        return None;
    }
    match (cl, te) {
        (None, None) => Some(Decoder::Done),
        (Some(v), None) => parse::parse_length(v.as_bytes()).map(Decoder::length),
        (None, Some(v))
            if parts.version == Version::HTTP_11
                && v.as_bytes().eq_ignore_ascii_case(b"chunked") =>
        {
            Some(Decoder::chunked())
        }
        _ => None,
    }
}

/// The requests levee's codec reads from `bytes`, as the client connection's driver
/// reads them, and how the reading stopped.
fn levee_codec_reads(bytes: &[u8]) -> (Vec<Req>, Stop) {
    let mut buf = BytesMut::from(bytes);
    let mut reqs = Vec::new();
    loop {
        let head = match parse::request(&mut buf, 16 * 1024) {
            Ok(Some(h)) => h,
            Ok(None) => return (reqs, Stop::End),
            Err(_) => return (reqs, Stop::Refused),
        };
        let parts = head.parts;
        if check_head(&parts).is_err() {
            return (reqs, Stop::Refused);
        }
        let Some(mut decoder) = driver_decoder(&parts) else {
            return (reqs, Stop::Refused);
        };
        let mut req = Req {
            method: parts.method.to_string(),
            target: parts
                .uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
            body: Vec::new(),
            complete: false,
        };
        loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(d)) => req.body.extend_from_slice(&d),
                Ok(Decoded::Trailers(_) | Decoded::End) => {
                    req.complete = true;
                    break;
                }
                Ok(Decoded::NeedMore) => {
                    reqs.push(req);
                    return (reqs, Stop::End);
                }
                Err(_) => {
                    reqs.push(req);
                    return (reqs, Stop::Refused);
                }
            }
        }
        reqs.push(req);
        if !wants_keep_alive(&parts) {
            return (reqs, Stop::Close);
        }
    }
}

/// levee's requests against hyper's: complete ones are a prefix of hyper's, equal
/// byte for byte; past it, levee refused, or both stopped.
fn compare_codec(hyper: &[Req], levee: &[Req], stop: Stop) -> Result<(), String> {
    let done = levee.iter().take_while(|r| r.complete).count();
    for (i, l) in levee.iter().enumerate() {
        match hyper.get(i) {
            None => return Err(format!("levee read request {} that hyper did not", i + 1)),
            Some(h) if h.method != l.method || h.target != l.target => {
                return Err(format!(
                    "request {}: levee read {}, hyper {}",
                    i + 1,
                    l.describe(),
                    h.describe()
                ))
            }
            Some(h) if l.complete && (!h.complete || h.body != l.body) => {
                return Err(format!(
                    "request {}: levee read {} ({:?}), hyper {} ({:?})",
                    i + 1,
                    l.describe(),
                    Bytes::from(l.body.clone()),
                    h.describe(),
                    Bytes::from(h.body.clone()),
                ))
            }
            _ => {}
        }
    }
    let hyper_done = hyper.iter().take_while(|r| r.complete).count();
    if hyper_done > done && stop != Stop::Refused {
        return Err(format!(
            "hyper read {hyper_done} complete requests, levee {done} and did not refuse the next ({stop:?})"
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// The recording backend: a raw TCP server that reads requests strictly (RFC 9112, as
// `common/rfc9112.rs` reads them) and answers each with a keep-alive `200`.

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Req>>>,
    problems: Arc<Mutex<Vec<String>>>,
    open: Arc<AtomicUsize>,
}

const BACKEND_REPLY: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Backend: recorder\r\n\r\nok";

impl Recorder {
    async fn start() -> (Recorder, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let rec = Recorder::default();
        let r = rec.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                r.open.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                tokio::spawn(async move {
                    r.serve(tcp).await;
                    r.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        (rec, addr)
    }

    fn problem(&self, p: String) {
        self.problems.lock().expect("lock").push(p);
    }

    async fn serve(&self, mut tcp: TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut eof = false;
        loop {
            // Whole requests at the front of the buffer.
            loop {
                let head = match rfc9112::head(&buf) {
                    Ok(h) => h,
                    Err(true) if eof && !buf.is_empty() => {
                        self.problem(format!("a cut head of {} bytes", buf.len()));
                        return;
                    }
                    Err(true) => break,
                    Err(false) => {
                        self.problem(format!(
                            "an invalid head: {:?}",
                            Bytes::from(buf[..buf.len().min(80)].to_vec())
                        ));
                        return;
                    }
                };
                let start = String::from_utf8_lossy(&head.start).into_owned();
                let mut words = start.split(' ');
                let method = words.next().unwrap_or("").to_string();
                let target = words.next().unwrap_or("").to_string();
                let framing =
                    rfc9112::request_framing(start.ends_with("HTTP/1.1"), &head.field_refs());
                let rest = &buf[head.len..];
                let (body, used, complete) = match framing {
                    rfc9112::Framing::None => (Vec::new(), 0, true),
                    rfc9112::Framing::Length(n) if rest.len() as u64 >= n => {
                        (rest[..n as usize].to_vec(), n as usize, true)
                    }
                    rfc9112::Framing::Length(_) => (rest.to_vec(), rest.len(), false),
                    rfc9112::Framing::Chunked => match rfc9112::chunked(rest) {
                        rfc9112::Chunked::Complete(b) => (b.data, b.consumed, true),
                        rfc9112::Chunked::Incomplete => (Vec::new(), rest.len(), false),
                        rfc9112::Chunked::Invalid => {
                            self.problem(format!("an invalid chunked body for {start}"));
                            return;
                        }
                    },
                    f => {
                        self.problem(format!("framing {f:?} for {start}"));
                        return;
                    }
                };
                if !complete && !eof {
                    break;
                }
                self.seen.lock().expect("lock").push(Req {
                    method,
                    target,
                    body,
                    complete,
                });
                if !complete {
                    return;
                }
                buf.drain(..head.len + used);
                let reply = tokio::time::timeout(LIMIT, tcp.write_all(BACKEND_REPLY)).await;
                if !matches!(reply, Ok(Ok(()))) {
                    return;
                }
            }
            if eof {
                return;
            }
            match tokio::time::timeout(Duration::from_secs(20), tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => eof = true,
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// levee's answers.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Closed,
    Reset,
    /// Neither a close nor all answers within `LIMIT`.
    Hang,
}

struct Answer {
    /// Final statuses, in order (1xx left out), and whether the backend gave each
    /// (its `X-Backend` field) or levee answered itself.
    statuses: Vec<(u16, bool)>,
    end: End,
    /// Bytes after the last complete response, or a response levee framed badly.
    garbage: usize,
}

/// Complete responses at the front of `buf` (levee writes strict heads).
fn responses(buf: &[u8]) -> (Vec<(u16, bool)>, usize) {
    let (mut statuses, mut pos) = (Vec::new(), 0);
    while let Ok(head) = rfc9112::head(&buf[pos..]) {
        let start = String::from_utf8_lossy(&head.start).into_owned();
        let status: u16 = start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let rest = &buf[pos + head.len..];
        let used = match rfc9112::response_framing(status, false, true, &head.field_refs()) {
            rfc9112::Framing::None => 0,
            rfc9112::Framing::Length(n) if rest.len() as u64 >= n => n as usize,
            rfc9112::Framing::Chunked => match rfc9112::chunked(rest) {
                rfc9112::Chunked::Complete(b) => b.consumed,
                _ => break,
            },
            _ => break,
        };
        pos += head.len + used;
        let backend = head
            .fields
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(b"x-backend") && v == b"recorder");
        if !(100..200).contains(&status) {
            statuses.push((status, backend));
        }
    }
    (statuses, pos)
}

/// Writes `bytes`, half-closes (so levee reads the end of the stream after them), and
/// reads until levee closes.
async fn exchange(addr: SocketAddr, bytes: Vec<u8>) -> Answer {
    let tcp = tokio::time::timeout(LIMIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(LIMIT, async {
            wr.write_all(&bytes).await?;
            wr.shutdown().await
        })
        .await;
        wr
    });
    let deadline = Instant::now() + LIMIT;
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rd.read(&mut chunk)).await {
            Err(_) => break End::Hang,
            Ok(Ok(0)) => break End::Closed,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break End::Reset,
            Ok(Err(_)) => break End::Closed,
        }
    };
    let _ = tokio::time::timeout(LIMIT, writer).await;
    let (statuses, used) = responses(&buf);
    Answer {
        statuses,
        end,
        garbage: buf.len() - used,
    }
}

// ---------------------------------------------------------------------------------
// The corpus.

const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
const NEXT: &str = "GET /next HTTP/1.1\r\nHost: x\r\n\r\n";

fn post(lines: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!("POST / HTTP/1.1\r\nHost: x\r\n{lines}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

fn chunked(lines: &str, body: &str) -> Vec<u8> {
    post(
        &format!("Transfer-Encoding: chunked\r\n{lines}"),
        body.as_bytes(),
    )
}

fn one_chunk(data: &str) -> String {
    format!("{:x}\r\n{data}\r\n0\r\n\r\n", data.len())
}

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let smuggled_cl = format!("0\r\n\r\n{SMUGGLED}");
    let with_next = |b: &str| format!("{b}{NEXT}");
    let hello_next = format!("hello{NEXT}");
    let ext = |n: usize| format!("5;x={}\r\nhello\r\n0\r\n\r\n{NEXT}", "a".repeat(n));
    let many = |n: usize| -> String { (0..n).map(|i| format!("X-H{i}: v\r\n")).collect() };
    vec![
        // --- Content-Length and Transfer-Encoding together, or repeated
        ("cl_te", post(&format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", smuggled_cl.len()), smuggled_cl.as_bytes())),
        ("te_cl", post("Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", one_chunk(SMUGGLED).as_bytes())),
        ("cl_te_http10", format!("POST / HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n{}", one_chunk("hello")).into_bytes()),
        ("cl_cl_same", post("Content-Length: 5\r\nContent-Length: 5\r\n", hello_next.as_bytes())),
        ("cl_cl_conflict", post("Content-Length: 5\r\nContent-Length: 7\r\n", format!("hello{SMUGGLED}").as_bytes())),
        ("cl_list_same", post("Content-Length: 5, 5\r\n", hello_next.as_bytes())),
        ("cl_list_conflict", post("Content-Length: 5, 7\r\n", format!("hello{SMUGGLED}").as_bytes())),
        // --- Content-Length values
        ("cl_plain", post("Content-Length: 5\r\n", hello_next.as_bytes())),
        ("cl_leading_zeros", post("Content-Length: 005\r\n", hello_next.as_bytes())),
        ("cl_zero", post("Content-Length: 0\r\n", NEXT.as_bytes())),
        ("cl_negative", post("Content-Length: -1\r\n", b"hello")),
        ("cl_plus", post("Content-Length: +5\r\n", b"hello")),
        ("cl_hex", post("Content-Length: 0x5\r\n", b"hello")),
        ("cl_junk", post("Content-Length: 5abc\r\n", b"hello")),
        ("cl_inner_space", post("Content-Length: 1 0\r\n", b"hello world")),
        ("cl_space_around", post("Content-Length:   5   \r\n", hello_next.as_bytes())),
        ("cl_tab", post("Content-Length:\t5\t\r\n", hello_next.as_bytes())),
        ("cl_empty", post("Content-Length: \r\n", b"hello")),
        ("cl_overflow", post("Content-Length: 1180591620717411303424\r\n", b"hello")),
        ("cl_u64_max", post("Content-Length: 18446744073709551615\r\n", b"hello")),
        ("cl_short_body", post("Content-Length: 100\r\n", b"hello")),
        ("cl_underscore_name", post("Content_Length: 5\r\n", hello_next.as_bytes())),
        ("get_with_body", format!("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello{NEXT}").into_bytes()),
        // --- Transfer-Encoding values
        ("te_chunked", chunked("", &with_next(&one_chunk("hello")))),
        ("te_case", post("Transfer-Encoding: Chunked\r\n", with_next(&one_chunk("hello")).as_bytes())),
        ("te_upper", post("Transfer-Encoding: CHUNKED\r\n", with_next(&one_chunk("hello")).as_bytes())),
        ("te_leading_space", post("Transfer-Encoding:  chunked\r\n", with_next(&one_chunk("hello")).as_bytes())),
        ("te_trailing_space", post("Transfer-Encoding: chunked \r\n", with_next(&one_chunk("hello")).as_bytes())),
        ("te_trailing_tab", post("Transfer-Encoding: chunked\t\r\n", with_next(&one_chunk("hello")).as_bytes())),
        ("te_leading_tab", post("Transfer-Encoding:\tchunked\r\n", with_next(&one_chunk("hello")).as_bytes())),
        ("te_chunked_chunked", post("Transfer-Encoding: chunked, chunked\r\n", one_chunk("hello").as_bytes())),
        ("te_identity", post("Transfer-Encoding: identity\r\n", one_chunk("hello").as_bytes())),
        ("te_identity_cl", post("Transfer-Encoding: identity\r\nContent-Length: 5\r\n", hello_next.as_bytes())),
        ("te_chunked_identity", post("Transfer-Encoding: chunked, identity\r\n", one_chunk("hello").as_bytes())),
        ("te_identity_chunked", post("Transfer-Encoding: identity, chunked\r\n", one_chunk("hello").as_bytes())),
        ("te_gzip_chunked", post("Transfer-Encoding: gzip, chunked\r\n", one_chunk("hello").as_bytes())),
        ("te_xchunked_cl", post("Transfer-Encoding: xchunked\r\nContent-Length: 5\r\n", format!("hello{SMUGGLED}").as_bytes())),
        ("te_comma_after", post("Transfer-Encoding: chunked,\r\n", one_chunk("hello").as_bytes())),
        ("te_comma_before", post("Transfer-Encoding: ,chunked\r\n", one_chunk("hello").as_bytes())),
        ("te_quoted", post("Transfer-Encoding: \"chunked\"\r\n", one_chunk("hello").as_bytes())),
        ("te_param", post("Transfer-Encoding: chunked;q=1\r\n", one_chunk("hello").as_bytes())),
        ("te_vtab", post("Transfer-Encoding: \x0bchunked\r\n", one_chunk("hello").as_bytes())),
        ("te_nul", post("Transfer-Encoding: chunked\0\r\n", one_chunk("hello").as_bytes())),
        ("te_twice_chunked", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", one_chunk("hello").as_bytes())),
        ("te_twice_identity_chunked", post("Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n", one_chunk("hello").as_bytes())),
        ("te_twice_chunked_identity", post("Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n", one_chunk("hello").as_bytes())),
        ("te_obs_fold", post("Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n", one_chunk(SMUGGLED).as_bytes())),
        ("te_folded_into_other", post("X-Foo: bar\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", format!("hello{SMUGGLED}").as_bytes())),
        ("te_space_before_colon", post("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", format!("hello{SMUGGLED}").as_bytes())),
        ("te_underscore_name", post("Transfer_Encoding: chunked\r\nContent-Length: 5\r\n", hello_next.as_bytes())),
        ("te_http10", format!("POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}", one_chunk(SMUGGLED)).into_bytes()),
        // --- chunk sizes
        ("chunk_empty_size_line", chunked("", &format!("5\r\nhello\r\n\r\n0\r\n\r\n{SMUGGLED}"))),
        ("chunk_empty_first", chunked("", &format!("\r\n\r\n{SMUGGLED}"))),
        ("chunk_not_hex", chunked("", "zz\r\nhello\r\n0\r\n\r\n")),
        ("chunk_0x", chunked("", "0x5\r\nhello\r\n0\r\n\r\n")),
        ("chunk_negative", chunked("", "-5\r\nhello\r\n0\r\n\r\n")),
        ("chunk_plus", chunked("", "+5\r\nhello\r\n0\r\n\r\n")),
        ("chunk_upper_hex", chunked("", &with_next("A\r\n0123456789\r\n0\r\n\r\n"))),
        ("chunk_leading_zeros_16", chunked("", &with_next("0000000000000005\r\nhello\r\n0\r\n\r\n"))),
        ("chunk_leading_zeros_20", chunked("", &with_next("00000000000000000005\r\nhello\r\n0\r\n\r\n"))),
        ("chunk_17_digits", chunked("", "11111111111111111\r\nhello\r\n0\r\n\r\n")),
        ("chunk_overflow", chunked("", "fffffffffffffffffff5\r\nhello\r\n0\r\n\r\n")),
        ("chunk_huge_then_stall", chunked("", "7fffffff\r\nhello")),
        ("chunk_last_000", chunked("", &with_next("5\r\nhello\r\n000\r\n\r\n"))),
        ("chunk_size_space", chunked("", &with_next("5 \r\nhello\r\n0\r\n\r\n"))),
        ("chunk_size_tab", chunked("", &with_next("5\t\r\nhello\r\n0\r\n\r\n"))),
        ("chunk_size_inner_space", chunked("", "5 5\r\nhello\r\n0\r\n\r\n")),
        // --- chunk extensions
        ("chunk_ext", chunked("", &with_next("5;name=value\r\nhello\r\n0\r\n\r\n"))),
        ("chunk_ext_bws", chunked("", &with_next("5 ; name = value\r\nhello\r\n0\r\n\r\n"))),
        ("chunk_ext_quoted", chunked("", &with_next("5;a=\"b;c=d\"\r\nhello\r\n0\r\n\r\n"))),
        ("chunk_ext_quoted_escape", chunked("", &with_next("5;a=\"b\\\"c\"\r\nhello\r\n0\r\n\r\n"))),
        ("chunk_ext_no_name", chunked("", &with_next("5;\r\nhello\r\n0\r\n\r\n"))),
        ("chunk_ext_bare_lf", chunked("", &format!("5;a\nb\r\nhello\r\n0\r\n\r\n{SMUGGLED}"))),
        ("chunk_ext_bare_cr", chunked("", &format!("5;a\rb\r\nhello\r\n0\r\n\r\n{SMUGGLED}"))),
        ("chunk_ext_nul", chunked("", "5;a\0b\r\nhello\r\n0\r\n\r\n")),
        ("chunk_ext_4k", chunked("", &ext(4000))),
        ("chunk_ext_5k", chunked("", &ext(5000))),
        ("chunk_ext_20k", chunked("", &ext(20000))),
        ("chunk_ext_on_last", chunked("", &with_next("5\r\nhello\r\n0;last=1\r\n\r\n"))),
        // --- chunk data and line endings
        ("chunk_data_too_long", chunked("", &format!("5\r\nhelloXX\r\n0\r\n\r\n{SMUGGLED}"))),
        ("chunk_data_short", chunked("", &format!("5\r\nhell\r\n0\r\n\r\n{SMUGGLED}"))),
        ("chunk_no_crlf_after_data", chunked("", &format!("5\r\nhello0\r\n\r\n{SMUGGLED}"))),
        ("chunk_lf_after_data", chunked("", &format!("5\r\nhello\n0\r\n\r\n{SMUGGLED}"))),
        ("chunk_cr_after_data", chunked("", &format!("5\r\nhello\r0\r\n\r\n{SMUGGLED}"))),
        ("chunk_lf_after_size", chunked("", &format!("5\nhello\r\n0\r\n\r\n{SMUGGLED}"))),
        ("chunk_lf_only", chunked("", &format!("5\nhello\n0\n\n{SMUGGLED}"))),
        ("chunk_unterminated", chunked("", "5\r\nhello\r\n")),
        ("chunk_last_without_end", chunked("", "5\r\nhello\r\n0\r\n")),
        // --- trailers
        ("trailer_field", chunked("", &with_next("5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"))),
        ("trailer_content_length", chunked("", &with_next("5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"))),
        ("trailer_transfer_encoding", chunked("", &with_next("5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"))),
        ("trailer_host", chunked("", &with_next("5\r\nhello\r\n0\r\nHost: evil\r\n\r\n"))),
        ("trailer_obs_fold", chunked("", &format!("5\r\nhello\r\n0\r\nX: 1\r\n y\r\n\r\n{SMUGGLED}"))),
        ("trailer_not_a_field", chunked("", &format!("5\r\nhello\r\n0\r\nbad trailer\r\n\r\n{SMUGGLED}"))),
        ("trailer_bare_lf", chunked("", &with_next("5\r\nhello\r\n0\r\nX: 1\nY: 2\r\n\r\n"))),
        ("trailer_lf_end", chunked("", &format!("5\r\nhello\r\n0\r\n\n{SMUGGLED}"))),
        ("trailer_request_inside", chunked("", &format!("0\r\nX: 1\r\n\n{SMUGGLED}"))),
        ("trailer_space_before_colon", chunked("", &format!("0\r\nX : 1\r\n\r\n{SMUGGLED}"))),
        ("trailers_40_fields", chunked("", &format!("0\r\n{}\r\n{NEXT}", many(40)))),
        ("trailers_10k", chunked("", &format!("0\r\nX-Big: {}\r\n\r\n{NEXT}", "b".repeat(10_000)))),
        // --- heads: line endings, control bytes, syntax
        ("bare_lf_head", format!("GET / HTTP/1.1\nHost: x\nX-Pad: padding\n\n{NEXT}").into_bytes()),
        ("bare_lf_head_body", format!("POST / HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello{NEXT}").into_bytes()),
        ("bare_cr_head", b"GET / HTTP/1.1\rHost: x\r\nX-Pad: padding\r\n\r\n".to_vec()),
        ("cr_in_value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\rb\r\n\r\n".to_vec()),
        ("obs_fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\r\n b\r\n\r\n".to_vec()),
        ("nul_in_value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\0b\r\n\r\n".to_vec()),
        ("nul_in_name", b"GET / HTTP/1.1\r\nHost: x\r\nX\0Foo: a\r\n\r\n".to_vec()),
        ("nul_in_target", b"GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("ctl_in_value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\x01b\r\n\r\n".to_vec()),
        ("del_in_value", b"GET / HTTP/1.1\r\nHost: x\r\nX-Foo: a\x7fb\r\n\r\n".to_vec()),
        ("obs_text_in_value", format!("GET / HTTP/1.1\r\nHost: x\r\nX-Foo: caf\u{e9}\r\n\r\n{NEXT}").into_bytes()),
        ("space_before_colon", b"GET / HTTP/1.1\r\nHost : x\r\n\r\n".to_vec()),
        ("space_in_name", b"GET / HTTP/1.1\r\nHost: x\r\nX Foo: a\r\n\r\n".to_vec()),
        ("empty_name", b"GET / HTTP/1.1\r\nHost: x\r\n: a\r\n\r\n".to_vec()),
        ("no_colon", b"GET / HTTP/1.1\r\nHost: x\r\nX-Foo\r\n\r\n".to_vec()),
        ("leading_crlf", format!("\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n{NEXT}").into_bytes()),
        ("leading_lf", format!("\nGET / HTTP/1.1\r\nHost: x\r\n\r\n{NEXT}").into_bytes()),
        ("leading_bare_cr", format!("\rGET / HTTP/1.1\r\nHost: x\r\n\r\n{NEXT}").into_bytes()),
        ("leading_cr_cr_lf", format!("\r\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n{NEXT}").into_bytes()),
        ("bare_cr_between_requests", post("Content-Length: 5\r\n", format!("hello\r{SMUGGLED}").as_bytes())),
        ("crlf_between_requests", post("Content-Length: 5\r\n", format!("hello\r\n{NEXT}").as_bytes())),
        ("request_line_double_space", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("request_line_tab", b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("request_line_trailing_space", b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n".to_vec()),
        ("version_lowercase", b"GET / http/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("version_1_2", b"GET / HTTP/1.2\r\nHost: x\r\n\r\n".to_vec()),
        ("version_2_0", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".to_vec()),
        ("version_0_9", b"GET /\r\n\r\n".to_vec()),
        ("method_space", b"G ET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("method_paren", b"GE(T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("method_lowercase", format!("get / HTTP/1.1\r\nHost: x\r\n\r\n{NEXT}").into_bytes()),
        // --- targets and Host
        ("absolute_form", format!("GET http://x/p?q HTTP/1.1\r\nHost: x\r\n\r\n{NEXT}").into_bytes()),
        ("absolute_form_other_host", b"GET http://y/p HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("absolute_form_userinfo", b"GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("authority_form", b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n".to_vec()),
        ("asterisk_options", format!("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n{NEXT}").into_bytes()),
        ("asterisk_get", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("double_slash_target", format!("GET //x/y HTTP/1.1\r\nHost: x\r\n\r\n{NEXT}").into_bytes()),
        ("no_host", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("no_host_http10", format!("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n{NEXT}").into_bytes()),
        ("two_hosts", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".to_vec()),
        ("host_userinfo", b"GET / HTTP/1.1\r\nHost: u@x\r\n\r\n".to_vec()),
        // --- sizes
        ("headers_100", format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", many(99)).into_bytes()),
        ("headers_101", format!("GET / HTTP/1.1\r\nHost: x\r\n{}\r\n", many(100)).into_bytes()),
        ("header_20k", format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "v".repeat(20_000)).into_bytes()),
        // --- connection management and pipelining
        ("pipelined_gets", format!("GET / HTTP/1.1\r\nHost: x\r\n\r\n{NEXT}{NEXT}").into_bytes()),
        ("pipelined_after_chunked_trailers", chunked("", &format!("5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n{}{NEXT}", String::from_utf8_lossy(&post("Content-Length: 3\r\n", b"abc"))))),
        ("connection_close_then_next", format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n{NEXT}").into_bytes()),
        ("http10_then_next", format!("GET / HTTP/1.0\r\nHost: x\r\n\r\n{NEXT}").into_bytes()),
        ("http10_keep_alive_then_next", format!("GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n{NEXT}").into_bytes()),
        ("http10_body", format!("POST / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello{NEXT}").into_bytes()),
        ("expect_continue", post("Content-Length: 5\r\nExpect: 100-continue\r\n", hello_next.as_bytes())),
        ("expect_continue_chunked", chunked("Expect: 100-continue\r\n", &with_next(&one_chunk("hello")))),
        ("upgrade_then_next", format!("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n{NEXT}").into_bytes()),
        ("head_with_body", format!("HEAD / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello{NEXT}").into_bytes()),
        ("broken_second_request", format!("GET / HTTP/1.1\r\nHost: x\r\n\r\nGE(T / HTTP/1.1\r\nHost: x\r\n\r\n{SMUGGLED}").into_bytes()),
        ("second_request_cl_te", format!("GET / HTTP/1.1\r\nHost: x\r\n\r\n{}", String::from_utf8_lossy(&post("Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nX"))).into_bytes()),
    ]
}

// ---------------------------------------------------------------------------------

struct Outcome {
    name: &'static str,
    hyper: Vec<Req>,
    answer: String,
    backend: Vec<Req>,
    failures: Vec<String>,
}

fn same_head(a: &Req, b: &Req) -> bool {
    a.method == b.method && a.target == b.target
}

/// Checks what levee answered and forwarded against hyper's reading: each answer
/// the backend gave is for a request the backend got exactly as hyper read it; levee's
/// own answers may stand for requests it did not forward (a copy cut short may have
/// reached the backend); and where levee stopped before hyper did, or read on past
/// hyper, it refused with a 4xx.
fn judge(hyper: &[Req], backend: &[Req], answer: &Answer, problems: &[String]) -> Vec<String> {
    let mut failures: Vec<String> = problems
        .iter()
        .map(|p| format!("the backend got {p}"))
        .collect();
    if answer.end == End::Hang {
        failures.push("levee neither answered everything nor closed in time".into());
    }
    if answer.garbage > 0 {
        failures.push(format!(
            "{} bytes of levee's answer unreadable",
            answer.garbage
        ));
    }
    let mut got = backend.iter().peekable();
    for (i, &(status, from_backend)) in answer.statuses.iter().enumerate() {
        let h = hyper.get(i);
        if from_backend {
            let Some(b) = got.next() else {
                failures.push(format!(
                    "answer {} came from the backend, which got no request for it",
                    i + 1
                ));
                continue;
            };
            match h {
                None => failures.push(format!(
                    "levee forwarded {} which hyper did not read",
                    b.describe()
                )),
                Some(h) if b != h => failures.push(format!(
                    "request {}: the backend got {} ({:?}), hyper read {} ({:?})",
                    i + 1,
                    b.describe(),
                    Bytes::from(b.body.clone()),
                    h.describe(),
                    Bytes::from(h.body.clone())
                )),
                _ => {}
            }
        } else {
            if status >= 500 {
                failures.push(format!("answer {}: levee answered {status}", i + 1));
            }
            // levee answered itself; it may have forwarded a copy it then cut.
            if let Some(b) = got.next_if(|b| !b.complete) {
                if !h.is_some_and(|h| same_head(b, h)) {
                    failures.push(format!(
                        "the backend got {} (cut), hyper read {:?}",
                        b.describe(),
                        h.map(Req::describe)
                    ));
                }
            }
        }
    }
    for b in got {
        let i = answer.statuses.len();
        if b.complete {
            failures.push(format!(
                "the backend got {} which levee did not answer",
                b.describe()
            ));
        } else if !hyper.get(i).is_some_and(|h| same_head(b, h)) {
            failures.push(format!(
                "the backend got {} (cut), hyper read no such request",
                b.describe()
            ));
        }
    }
    let hyper_done = hyper.iter().take_while(|r| r.complete).count();
    let n = answer.statuses.len();
    let refused = |a: &(u16, bool)| !a.1 && (400..500).contains(&a.0);
    if n < hyper_done && !answer.statuses.last().is_some_and(refused) {
        failures.push(format!(
            "hyper read {hyper_done} complete requests; levee answered {n}, the last not a refusal"
        ));
    }
    if n > hyper_done && (n > hyper_done + 1 || !answer.statuses.last().is_some_and(refused)) {
        failures.push(format!(
            "hyper read {hyper_done} complete requests; levee answered {n}, past them {:?}",
            &answer.statuses[hyper_done..]
        ));
    }
    failures
}

async fn run(name: &'static str, bytes: Vec<u8>) -> Outcome {
    let hyper = hyper_reads(&bytes).await;
    let (rec, backend_addr) = Recorder::start().await;
    let setup = Setup {
        upstream: String::new(),
        backends: vec![(backend_addr, "a".to_string())],
        server: format!("{SERVER}\n"),
        tail: String::new(),
    };
    let levee = tokio::time::timeout(LIMIT, setup.start())
        .await
        .expect("levee starts in time");
    let answer = exchange(levee.addr(), bytes).await;
    // levee has closed the client's connection; its backend connections are closed
    // once idle (or at once, when cut), and then what the backend got is final.
    let open = rec.open.clone();
    eventually(LIMIT, "the backend's connections close", || {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
    drop(levee);
    let backend = rec.seen.lock().expect("lock").clone();
    let problems = rec.problems.lock().expect("lock").clone();
    let failures = judge(&hyper, &backend, &answer, &problems);
    let end = match answer.end {
        End::Closed => "closed",
        End::Reset => "reset",
        End::Hang => "HANG",
    };
    let statuses: Vec<String> = answer
        .statuses
        .iter()
        .map(|(s, backend)| format!("{s}{}", if *backend { "" } else { "*" }))
        .collect();
    Outcome {
        name,
        hyper,
        answer: format!("{} {end}", statuses.join(" ")),
        backend,
        failures,
    }
}

/// Corpus cases that once showed a levee bug (fixed), with the test that runs them
/// again on their own (the corpus tests run them too).
const FIXED_BUGS: &[(&str, &str)] = &[
    (
        "leading_bare_cr",
        "a_bare_cr_before_a_request_line_is_refused",
    ),
    (
        "leading_cr_cr_lf",
        "a_bare_cr_before_a_request_line_is_refused",
    ),
    (
        "bare_cr_between_requests",
        "a_bare_cr_before_a_request_line_is_refused",
    ),
    (
        "trailer_bare_lf",
        "a_bare_lf_in_a_trailer_section_is_refused",
    ),
];

fn fixed_bug(name: &str) -> Option<&'static str> {
    FIXED_BUGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bug)| *bug)
}

async fn run_corpus(cases: Vec<(&'static str, Vec<u8>)>) -> Vec<Outcome> {
    common::count_worker_panics();
    let gate = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = Vec::new();
    for (name, bytes) in cases {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            tokio::time::timeout(Duration::from_secs(30), run(name, bytes)).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.expect("case task").expect("case finishes in time"));
    }
    println!(
        "\n| case | hyper read | levee answered (* its own) | the backend got |\n|---|---|---|---|"
    );
    for o in &outcomes {
        let mark = if o.failures.is_empty() {
            ""
        } else {
            " **FAIL**"
        };
        println!(
            "| {}{mark} | {} | {} | {} |",
            o.name,
            describe_all(&o.hyper),
            o.answer,
            describe_all(&o.backend)
        );
    }
    assert_eq!(common::worker_panics(), 0, "a tokio worker panicked");
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_against_real_levee() {
    let outcomes = run_corpus(corpus()).await;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.failures.is_empty())
        .map(|o| format!("{}: {}", o.name, o.failures.join("; ")))
        .collect();
    assert!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
}

/// The corpus through levee's codec (as the driver reads) against hyper, too.
#[tokio::test]
async fn corpus_against_the_codec() {
    let mut failed = Vec::new();
    for (name, bytes) in corpus() {
        let hyper = hyper_reads(&bytes).await;
        let (levee, stop) = levee_codec_reads(&bytes);
        if let Err(e) = compare_codec(&hyper, &levee, stop) {
            failed.push(format!("{name}: {e}"));
        }
    }
    assert!(failed.is_empty(), "failing cases:\n{}", failed.join("\n"));
}

/// Runs the corpus cases marked with `bug`, end to end and through the codec, and
/// asserts they all pass.
async fn assert_fixed(bug: &str) {
    let cases: Vec<(&'static str, Vec<u8>)> = corpus()
        .into_iter()
        .filter(|(name, _)| fixed_bug(name) == Some(bug))
        .collect();
    assert!(!cases.is_empty(), "no case is marked with {bug}");
    let mut failed = Vec::new();
    for (name, bytes) in &cases {
        let hyper = hyper_reads(bytes).await;
        let (levee, stop) = levee_codec_reads(bytes);
        if let Err(e) = compare_codec(&hyper, &levee, stop) {
            failed.push(format!("{name} (codec): {e}"));
        }
    }
    for o in run_corpus(cases).await {
        if !o.failures.is_empty() {
            failed.push(format!("{}: {}", o.name, o.failures.join("; ")));
        }
    }
    assert!(failed.is_empty(), "still failing:\n{}", failed.join("\n"));
}

/// `parse::request` once skipped every CR and LF before a request line, a bare CR too,
/// where hyper (httparse's own skip of empty lines) refuses a bare CR. So
/// `hello\rGET /smuggled ...` after a 5-byte body was a second request to levee and an
/// error to hyper: a reading two HTTP/1 parsers disagree on, which levee must refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_cr_before_a_request_line_is_refused() {
    assert_fixed("a_bare_cr_before_a_request_line_is_refused").await;
}

/// The chunked decoder's trailer section is read by `httparse::parse_headers`, which
/// takes a bare LF for a line's end; hyper refuses the body (RFC 9112 §7.1: every line
/// of a chunked body ends in CRLF). levee once forwarded the request whole; its decoder
/// now checks the line ends itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lf_in_a_trailer_section_is_refused() {
    assert_fixed("a_bare_lf_in_a_trailer_section_is_refused").await;
}

// ---------------------------------------------------------------------------------
// Generated requests, read by hyper and by levee's codec.

/// Bytes, shown escaped when a case fails.
#[derive(Clone)]
struct Wire(Vec<u8>);

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

fn pick(items: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    proptest::sample::select(items)
}

/// One request: framing fields from hostile variants, a body that may or may not
/// match them.
fn generated_request() -> impl Strategy<Value = Vec<u8>> {
    let framing = proptest::collection::vec(
        pick(&[
            "Content-Length: 5",
            "Content-Length: 0",
            "Content-Length: 3",
            "Content-Length: 05",
            "Content-Length: 5, 5",
            "Content-Length: +5",
            "content-length:5",
            "Transfer-Encoding: chunked",
            "transfer-encoding: Chunked",
            "Transfer-Encoding: chunked, chunked",
            "Transfer-Encoding: identity",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding:  chunked ",
            "Transfer-Encoding: chunked,",
            "Connection: close",
            "Connection: keep-alive",
            "Expect: 100-continue",
            "X-A: b",
        ]),
        0..3,
    );
    let body = pick(&[
        "",
        "hello",
        "5\r\nhello\r\n0\r\n\r\n",
        "5;a=b\r\nhello\r\n0\r\nX: 1\r\n\r\n",
        "3\r\nabc\r\n\r\n0\r\n\r\n",
        "0\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",
        "05\r\nhello\r\n00\r\n\r\n",
        "5\nhello\n0\n\n",
        "0\r\nX: 1\nY: 2\r\n\r\n",
        "\r\n",
    ]);
    (
        (
            pick(&["", "", "", "\r\n", "\n", "\r"]),
            pick(&["GET", "POST", "PUT", "HEAD", "OPTIONS"]),
        ),
        pick(&["/", "/a?b", "*", "http://x/p"]),
        pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.0"]),
        proptest::option::weighted(0.9, Just("Host: x")),
        framing,
        pick(&["\r\n", "\r\n", "\r\n", "\n"]),
        body,
    )
        .prop_map(
            |((lead, method), target, version, host, fields, eol, body)| {
                let mut v = format!("{lead}{method} {target} {version}{eol}");
                for f in host.into_iter().chain(fields) {
                    v.push_str(f);
                    v.push_str(eol);
                }
                v.push_str(eol);
                v.push_str(body);
                v.into_bytes()
            },
        )
}

/// One to three requests on a connection, then a few bytes replaced, inserted or
/// removed.
fn generated_stream() -> impl Strategy<Value = Wire> {
    let edit = (
        any::<usize>(),
        0..3u8,
        proptest::sample::select(&b"\r\n \t0;:,a\x00"[..]),
    );
    (
        proptest::collection::vec(generated_request(), 1..4),
        proptest::collection::vec(edit, 0..3),
    )
        .prop_map(|(reqs, edits)| {
            let mut bytes = reqs.concat();
            for (at, op, b) in edits {
                let len = bytes.len();
                match op {
                    0 => bytes.insert(at % (len + 1), b),
                    1 if len > 0 => bytes[at % len] = b,
                    _ if len > 0 => {
                        bytes.remove(at % len);
                    }
                    _ => {}
                }
            }
            Wire(bytes)
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn generated_requests_against_the_codec(input in generated_stream()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let hyper = runtime.block_on(hyper_reads(&input.0));
        let (levee, stop) = levee_codec_reads(&input.0);
        if let Err(e) = compare_codec(&hyper, &levee, stop) {
            prop_assert!(false, "{}", e);
        }
    }
}
