//! A backend connection of the pool on levee's own codec: send a request head and its
//! body, read the response head, then the response body frame by frame.
//!
//! No task per connection: the request's own future drives the socket (through
//! `&TcpStream` readiness, so one state can write the upload and read the answer at
//! once), and the response body, which owns the connection while it streams, checks
//! it back into the pool at its clean end. A connection goes back only when both
//! messages ended cleanly, the response allowed keep-alive, and nothing was read past
//! the response; anything else closes it.
//!
//! A backend may answer before it has read the whole upload (a 413, an early error,
//! or a full-duplex stream): the upload then goes on from the response body's polls,
//! and a connection whose upload did not finish is closed rather than reused.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::net::TcpStream;

use super::framing::{self, Decoded, Decoder};
use super::parse;
use super::poll_read_in;
use crate::error::Failure;
use crate::http::find_header;
use crate::http::pool::{BackendConn, Sender};
use crate::http::upload::{BoxError, ForwardBody};

/// Largest response head levee reads from a backend.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// One open HTTP/1.1 connection to a backend.
pub struct Connection {
    tcp: TcpStream,
    /// Bytes read and not yet taken (empty between exchanges).
    buf: BytesMut,
}

impl Connection {
    pub fn new(tcp: TcpStream) -> Connection {
        Connection {
            tcp,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection was closed by the backend (or sent something
    /// unasked, which makes it unusable). Free when the socket has had no event since
    /// its last read (`try_read` then looks at the readiness tokio keeps and makes no
    /// call, nor registers a waker); otherwise one non-blocking read.
    pub fn is_closed(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// Why a request got no response head.
pub enum SendError {
    /// Nothing of the request reached a live backend (a reused connection the backend
    /// had closed): it may go again on a fresh connection.
    NotSent(Box<Request<ForwardBody>>),
    Failed(Failure),
}

/// The backend's side of an accepted upgrade (101): the connection, with any bytes the
/// backend sent after its head.
pub struct Upgraded {
    conn: BackendConn,
}

impl Upgraded {
    /// The socket and what was read past the 101's head.
    pub fn io(&mut self) -> Option<(&mut TcpStream, &mut BytesMut)> {
        match &mut self.conn.tx {
            Sender::H1(c) => Some((&mut c.tcp, &mut c.buf)),
            Sender::H2(_) => None,
        }
    }
}

fn connection(conn: &mut BackendConn) -> &mut Connection {
    match &mut conn.tx {
        Sender::H1(c) => c,
        // A pool of an HTTP/1.1 backend holds HTTP/1.1 connections only.
        Sender::H2(_) => unreachable!("HTTP/2 connection in the HTTP/1.1 client"),
    }
}

/// The request's head as the backend gets it: the request line in origin form, the
/// fields as they are, and the framing levee sends the body with.
fn encode_head(parts: &http::request::Parts, body: &ForwardBody, out: &mut BytesMut) -> bool {
    super::put_request_line(out, parts);
    let (mut length, mut chunked) = (false, false);
    for (name, value) in &parts.headers {
        if *name == CONTENT_LENGTH {
            length = true;
        } else if *name == TRANSFER_ENCODING {
            chunked = true;
        }
        super::put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let empty = matches!(body, ForwardBody::Empty);
    if !length && !chunked {
        if !empty {
            match body.size_hint().exact() {
                Some(n) => {
                    out.put_slice(b"content-length: ");
                    out.put_slice(itoa(n, &mut [0; 20]));
                    out.put_slice(b"\r\n");
                }
                None => {
                    out.put_slice(b"transfer-encoding: chunked\r\n");
                    chunked = true;
                }
            }
        } else if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) {
            out.put_slice(b"content-length: 0\r\n");
        }
    }
    out.put_slice(b"\r\n");
    if empty && chunked {
        out.put_slice(framing::LAST_CHUNK);
    }
    chunked
}

/// `n` in decimal, written into `buf`.
pub fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Writes `bytes[*at..]` to the socket.
fn poll_write_slice(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    bytes: &[u8],
    at: &mut usize,
) -> Poll<io::Result<()>> {
    while *at < bytes.len() {
        ready!(tcp.poll_write_ready(cx))?;
        match tcp.try_write(&bytes[*at..]) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => *at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    Poll::Ready(Ok(()))
}

/// Writes `out` to the socket until it is empty (what went is taken off it, also
/// when the write has to wait).
fn poll_write_out(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    out: &mut BytesMut,
) -> Poll<io::Result<()>> {
    let mut at = 0;
    let polled = poll_write_slice(tcp, cx, out, &mut at);
    out.advance(at);
    polled
}

/// The request body on its way out, framed.
struct Outgoing {
    body: ForwardBody,
    chunked: bool,
    /// Framed bytes not yet written.
    out: BytesMut,
    /// No more frames: what is in `out` is the end.
    last: bool,
}

impl Outgoing {
    /// Writes the body until it is all out (`Ready(Ok)`) or a side fails.
    fn poll(&mut self, cx: &mut Context<'_>, tcp: &TcpStream) -> Poll<Result<(), Failure>> {
        loop {
            if !self.out.is_empty() {
                ready!(poll_write_out(tcp, cx, &mut self.out))
                    .map_err(|_| Failure::UpstreamError)?;
            }
            if self.last {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        if data.is_empty() {
                            continue;
                        }
                        if self.chunked {
                            self.out
                                .put_slice(framing::chunk_head(data.len(), &mut [0; 18]));
                            self.out.put_slice(&data);
                            self.out.put_slice(framing::CRLF);
                        } else {
                            self.out.put_slice(&data);
                        }
                    }
                    Err(frame) => {
                        if self.chunked {
                            match frame.into_trailers() {
                                Ok(t) => framing::encode_trailers(&t, &mut self.out),
                                Err(_) => self.out.put_slice(framing::LAST_CHUNK),
                            }
                        }
                        self.last = true;
                    }
                },
                None => {
                    if self.chunked {
                        self.out.put_slice(framing::LAST_CHUNK);
                    }
                    self.last = true;
                }
                // The client's side failed (the upload records why).
                Some(Err(_)) => return Poll::Ready(Err(Failure::UpstreamError)),
            }
        }
    }
}

/// Sends `req` on `conn` (an HTTP/1.1 connection) and waits for the response head.
/// `wire`: the head as bytes, already rewritten from the client's (else it is encoded
/// from `req`'s parts). The response's body owns the connection and its head's bytes
/// (`Body::take_head`; the response's header map is empty but for a 101's); `cap` is
/// the backend's `max_inflight`, for the check-in at its end.
pub async fn send(
    mut conn: BackendConn,
    req: Request<ForwardBody>,
    cap: u32,
    wire: Option<&[u8]>,
) -> Result<Response<Body>, SendError> {
    let reused = conn.reused;
    let (parts, body) = req.into_parts();
    let head_request = parts.method == Method::HEAD;
    let upgrade = find_header(&parts.headers, &http::header::UPGRADE).is_some();
    let bodiless = matches!(body, ForwardBody::Empty);
    let mut out = BytesMut::new();
    let chunked = match wire {
        Some(_) => {
            let chunked = find_header(&parts.headers, &TRANSFER_ENCODING).is_some();
            if bodiless && chunked {
                out.put_slice(framing::LAST_CHUNK);
            }
            chunked
        }
        None => {
            out.reserve(512);
            encode_head(&parts, &body, &mut out)
        }
    };
    let mut outgoing = (!bodiless).then(|| Outgoing {
        body,
        chunked,
        out: BytesMut::new(),
        last: false,
    });
    let c = connection(&mut conn);
    c.buf.clear();
    // The head first, alone: a reused connection the backend closed fails here or on
    // the first read, and the request (not yet consumed) can go again.
    let head: &[u8] = wire.unwrap_or_default();
    let mut at = 0;
    let wrote = std::future::poll_fn(|cx| {
        ready!(poll_write_slice(&c.tcp, cx, head, &mut at))?;
        poll_write_out(&c.tcp, cx, &mut out)
    })
    .await;
    let not_sent = |parts: http::request::Parts, outgoing: Option<Outgoing>| {
        let body = outgoing.map_or(ForwardBody::Empty, |o| o.body);
        SendError::NotSent(Box::new(Request::from_parts(parts, body)))
    };
    if wrote.is_err() {
        return Err(if reused {
            not_sent(parts, outgoing)
        } else {
            SendError::Failed(Failure::UpstreamError)
        });
    }
    let mut upload_started = false;
    let head = std::future::poll_fn(|cx| {
        if let Some(o) = outgoing.as_mut() {
            upload_started = true;
            match o.poll(cx, &c.tcp) {
                Poll::Ready(Ok(())) => outgoing = None,
                Poll::Ready(Err(f)) => return Poll::Ready(Err(f)),
                Poll::Pending => {}
            }
        }
        loop {
            // Nothing read yet (the first look, and a wake with nothing new from the
            // backend's side): nothing to parse.
            if !c.buf.is_empty() {
                match parse::response(&mut c.buf, MAX_RESPONSE_HEAD) {
                    Ok(Some(head)) => {
                        let status = head.status.as_u16();
                        // Informational answers (100 Continue, 103) are not forwarded;
                        // a 101 is the answer to an upgrade.
                        if (100..200).contains(&status) && status != 101 {
                            continue;
                        }
                        return Poll::Ready(Ok(head));
                    }
                    Ok(None) => {}
                    Err(_) => return Poll::Ready(Err(Failure::UpstreamBadResponse)),
                }
            }
            match ready!(poll_read_in(&mut c.tcp, cx, &mut c.buf)) {
                Ok(0) | Err(_) if c.buf.is_empty() => {
                    return Poll::Ready(Err(Failure::UpstreamError));
                }
                Ok(0) => return Poll::Ready(Err(Failure::UpstreamBadResponse)),
                Ok(_) => {}
                Err(_) => return Poll::Ready(Err(Failure::UpstreamError)),
            }
        }
    })
    .await;
    let head = match head {
        Ok(h) => h,
        Err(Failure::UpstreamError) if reused && !upload_started && c.buf.is_empty() => {
            // Closed before a byte of an answer, and the request had no body in
            // flight: the backend closed the idle connection as it was reused.
            return Err(not_sent(parts, outgoing));
        }
        Err(f) => return Err(SendError::Failed(f)),
    };
    let (mut rparts, ()) = Response::new(()).into_parts();
    rparts.status = head.status;
    rparts.version = head.version;
    if head.status == StatusCode::SWITCHING_PROTOCOLS {
        if !upgrade {
            return Err(SendError::Failed(Failure::UpstreamBadResponse));
        }
        // An upgrade's answer (rare) goes with its fields as a map.
        rparts.headers = parse::field_map(&head.raw);
        let body = Body {
            conn: Some(conn),
            decoder: Decoder::Done,
            keep_alive: false,
            outgoing: None,
            cap,
            upgraded: true,
            head: None,
        };
        return Ok(Response::from_parts(rparts, body));
    }
    let (decoder, keep_alive) = parse::response_framing(&head, head_request)
        .map_err(|_| SendError::Failed(Failure::UpstreamBadResponse))?;
    let mut body = Body {
        conn: Some(conn),
        decoder,
        keep_alive,
        outgoing: outgoing.map(Box::new),
        cap,
        upgraded: false,
        head: Some(head),
    };
    if body.decoder.is_done() {
        body.finish();
    }
    Ok(Response::from_parts(rparts, body))
}

/// A backend's response body, read off its connection; the connection goes back to
/// the pool at the body's clean end.
pub struct Body {
    conn: Option<BackendConn>,
    decoder: Decoder,
    keep_alive: bool,
    /// The rest of an upload the backend answered before reading it all.
    outgoing: Option<Box<Outgoing>>,
    cap: u32,
    upgraded: bool,
    /// The response head as it came, until taken: the answer's fields are written
    /// from it (or a map built from it, [`parse::field_map`]); the returned
    /// response's own header map is empty.
    head: Option<parse::ResponseHead>,
}

impl Body {
    /// The response head (its bytes and what its fields say), once.
    pub fn take_head(&mut self) -> Option<parse::ResponseHead> {
        self.head.take()
    }

    /// The response ended: the connection goes back to the pool when it can carry
    /// another exchange, else it closes.
    fn finish(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let clean = self.keep_alive && self.outgoing.is_none() && {
            let c = connection(&mut conn);
            // An idle connection holds no buffer: a backend may have as many idle
            // connections as its limit allows.
            let empty = c.buf.is_empty();
            c.buf = BytesMut::new();
            empty
        };
        if clean {
            let pool = conn.pool().clone();
            pool.checkin(conn, self.cap);
        }
    }

    fn fail(&mut self, e: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(e.into())))
    }

    /// The backend's side of an accepted upgrade.
    pub fn into_upgraded(mut self) -> Option<Upgraded> {
        if !self.upgraded {
            return None;
        }
        self.conn.take().map(|conn| Upgraded { conn })
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if this.upgraded {
            return Poll::Ready(None);
        }
        let c = connection(conn);
        if let Some(o) = this.outgoing.as_mut() {
            match o.poll(cx, &c.tcp) {
                Poll::Ready(Ok(())) => this.outgoing = None,
                // The upload broke off: the answer is still read to its end, and the
                // connection is not reused.
                Poll::Ready(Err(_)) => {
                    this.outgoing = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            match this.decoder.decode(&mut c.buf) {
                Ok(Decoded::Data(data)) => {
                    if this.decoder.is_done() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::Trailers(t)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(e),
            }
            match ready!(poll_read_in(&mut c.tcp, cx, &mut c.buf)) {
                Ok(0) => match this.decoder.eof() {
                    Ok(_) => {
                        this.conn = None;
                        return Poll::Ready(None);
                    }
                    Err(e) => return this.fail(e),
                },
                Ok(_) => {}
                Err(e) => return this.fail(e),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_in_decimal() {
        assert_eq!(itoa(0, &mut [0; 20]), b"0");
        assert_eq!(itoa(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), b"18446744073709551615");
    }
}
