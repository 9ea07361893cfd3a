//! A client connection on levee's own HTTP/1.1 codec: read a head, hand the request to
//! the forwarding path, write its answer, and again, in order (pipelined requests
//! wait in the read buffer and are answered one after the other).
//!
//! The socket and its read buffer sit behind one lock ([`Socket`]) that the driver and
//! the request's body share: the body reads the client's upload from it while the
//! request is forwarded (and writes `100 Continue` when it is first asked for), the
//! driver reads heads and writes answers. Both run in the connection's one task, so
//! the lock is never contended; it is never held across a poll of anything else.
//!
//! Timers: none per request in the steady state. One [`Alarm`] bounds the wait for a
//! head (`client_idle` between requests, `client_header` once a head has begun) and a
//! stalled write (`write`); it is re-armed only when it fires or when a deadline
//! earlier than the armed one is needed. While a request is in progress a second
//! alarm ticks every [`TICK`], so the forwarding path's own deadlines (the wait for a
//! backend's head) are checked on the connection's polls without a timer of their own.
//!
//! An idle keep-alive connection holds no buffer and no timer: once it has waited
//! [`TICK`] for its next request, it drops its buffers and its alarm and enters the
//! idle set ([`super::idle`]), which wakes it at its `client_idle` deadline or on
//! shutdown.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, EXPECT, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Version};
use hyper::body::{Body as _, Frame, SizeHint};
use parking_lot::Mutex;
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::time::Sleep;

use super::client::itoa;
use super::framing::{self, Decoded, Decoder};
use super::parse::{self, HeadError};
use super::rewrite;
use super::{list, poll_read_in, put_field};
use crate::clock;
use crate::http::body::ResBody;
use crate::http::forward::{self, Conn, Proxy};
use crate::http::identity::X_REQUEST_ID;
use crate::http::io::{ClientIo, ClientStream};
use crate::http::server::Settings;
use crate::http::upload::BoxError;

/// How often a request in progress is polled without a wake-up of its own, and how
/// long an idle connection keeps its read buffer.
pub const TICK: Duration = Duration::from_millis(100);

/// Frames up to this size are copied next to their framing and written with it;
/// larger ones are written on their own.
const COPY_MAX: usize = 16 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the driver and the request's body share.
struct Socket {
    stream: ClientStream,
    buf: BytesMut,
    /// The request body still to be read.
    body: Decoder,
    /// `100 Continue` is owed before the body is read.
    expect: bool,
}

type Shared = Arc<Mutex<Socket>>;

/// A deadline timer re-armed only when it fires or must fire earlier (see the module
/// documentation).
#[derive(Default)]
struct Alarm {
    sleep: Option<Pin<Box<Sleep>>>,
    armed: Option<Instant>,
}

impl Alarm {
    /// Ready once `deadline` has passed (by the [`clock::recent`] time, or by the
    /// timer armed for it).
    fn poll(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        loop {
            if clock::recent() >= deadline {
                return Poll::Ready(());
            }
            if self.armed.is_none_or(|a| a > deadline) {
                let at = tokio::time::Instant::from_std(deadline);
                match self.sleep.as_mut() {
                    Some(s) => s.as_mut().reset(at),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                }
                self.armed = Some(deadline);
            }
            let Some(s) = self.sleep.as_mut() else {
                return Poll::Pending;
            };
            ready!(s.as_mut().poll(cx));
            // The timer read the clock itself: armed for this deadline (or a later
            // one), it has passed, whatever a recent reading says.
            if self.armed.take().is_some_and(|a| a >= deadline) {
                return Poll::Ready(());
            }
        }
    }
}

/// The request body, read from the client's connection as the backend's side asks.
pub struct RequestBody {
    /// The request's head as it came, until the forwarding path takes it.
    raw_head: Option<Bytes>,
    socket: Shared,
    conn: Arc<Conn>,
    /// The connection's read buffer broke framing: the body fails.
    done: bool,
}

impl RequestBody {
    /// The request's head as it came (once).
    pub fn take_raw_head(&mut self) -> Option<Bytes> {
        self.raw_head.take()
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut guard = this.socket.lock();
        let s = &mut *guard;
        if s.expect {
            if s.buf.is_empty() {
                // The client waits for this before it sends the body.
                let mut sent = 0;
                while sent < CONTINUE.len() {
                    match Pin::new(&mut s.stream).poll_write(cx, &CONTINUE[sent..]) {
                        Poll::Ready(Ok(n)) if n > 0 => sent += n,
                        Poll::Ready(_) => return Poll::Ready(Some(Err(gone()))),
                        // A 25-byte write to a fresh connection: rare; the driver's
                        // write timeout covers the response that follows.
                        Poll::Pending if sent == 0 => return Poll::Pending,
                        Poll::Pending => return Poll::Ready(Some(Err(gone()))),
                    }
                }
                if let Poll::Ready(Err(_)) = Pin::new(&mut s.stream).poll_flush(cx) {
                    return Poll::Ready(Some(Err(gone())));
                }
            }
            s.expect = false;
        }
        loop {
            match s.body.decode(&mut s.buf) {
                Ok(Decoded::Data(d)) => {
                    if s.body.is_done() {
                        this.done = true;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(d))));
                }
                Ok(Decoded::Trailers(t)) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Decoded::End) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(e) => {
                    this.done = true;
                    this.conn
                        .shared
                        .framing_violation
                        .store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e,
                    )))));
                }
            }
            match ready!(poll_read_in(&mut s.stream, cx, &mut s.buf)) {
                Ok(0) | Err(_) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(gone())));
                }
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.socket.lock().body.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.socket.lock().body.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

fn gone() -> BoxError {
    Box::new(io::Error::from(io::ErrorKind::UnexpectedEof))
}

/// What the driver needs of a request's head, read in one pass over its fields: how
/// its body is framed (by the rules levee enforces; the forwarding path's check
/// refuses the same heads with its JSON answer), whether the client keeps the
/// connection, and whether it waits for `100 Continue`.
struct ClientAsks {
    /// `None`: ambiguous framing, answered 400 here, and the connection closes.
    body: Option<Decoder>,
    keep_alive: bool,
    expect: bool,
}

fn read_head(parts: &http::request::Parts) -> ClientAsks {
    let v11 = parts.version == Version::HTTP_11;
    let (mut lengths, mut codings) = (0u32, 0u32);
    let (mut cl, mut te) = (None, None);
    let mut keep_alive = v11;
    let mut close = false;
    let mut expect = false;
    for (name, value) in &parts.headers {
        if *name == CONTENT_LENGTH {
            lengths += 1;
            cl = Some(value);
        } else if *name == TRANSFER_ENCODING {
            codings += 1;
            te = Some(value);
        } else if *name == CONNECTION {
            for t in list(value.as_bytes()) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if *name == EXPECT {
            expect = v11 && value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        }
    }
    let body = match (cl, te) {
        _ if lengths > 1 || codings > 1 => None,
        (None, None) => Some(Decoder::Done),
        (Some(v), None) => parse::parse_length(v.as_bytes()).map(Decoder::length),
        (None, Some(v)) if v11 && v.as_bytes().eq_ignore_ascii_case(b"chunked") => {
            Some(Decoder::chunked())
        }
        _ => None,
    };
    ClientAsks {
        body,
        keep_alive: keep_alive && !close,
        expect,
    }
}

/// Pre-encoded answers for heads levee cannot read (no request id: there is no
/// request yet to give one to).
fn refusal(e: HeadError) -> &'static [u8] {
    match e {
        HeadError::TooLarge | HeadError::TooManyFields => {
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
        HeadError::Syntax(_) => {
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        }
    }
}

const BAD_FRAMING: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// The connection's driver.
struct Driver {
    socket: Shared,
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
    alarm: Alarm,
    tick: Alarm,
    out: BytesMut,
    wait: HeadWait,
}

/// Where the wait for the next head is (see [`Driver::poll_head`]).
struct HeadWait {
    /// When the head's first bytes came.
    begun: Option<Instant>,
    /// The end of this phase of the wait (before the head begins).
    until: Instant,
    /// The end of the keep-alive wait (`client_idle` after the last answer).
    idle_end: Instant,
    /// The connection has waited [`TICK`] and holds no buffer.
    idling: bool,
    /// Idling, its place in the set of idle connections, which wakes it at its idle
    /// deadline and on shutdown: it holds no timer of its own meanwhile.
    idle: Option<super::idle::Entry>,
}

impl HeadWait {
    /// A wait that starts now (see [`Driver::begin_wait`]).
    fn new(first: bool, client_idle: Duration) -> HeadWait {
        let start = clock::recent();
        let idle_end = start + client_idle;
        HeadWait {
            begun: first.then_some(start),
            until: (start + TICK).min(idle_end),
            idle_end,
            idling: false,
            idle: None,
        }
    }
}

/// How waiting for a head ended.
#[allow(clippy::large_enum_variant)]
enum Wait {
    Head(parse::RequestHead),
    Closed,
    Deadline,
    Refused(HeadError),
}

/// Serves one HTTP/1.x client connection until it closes, idles out, or `shutdown`
/// turns true (the request in progress finishes first).
///
/// This future is what an idle keep-alive connection costs, so it holds the driver
/// and little else: the driver's fields are used in place (an `async fn` would keep
/// its arguments beside the driver they are moved into), the wait for a head is a
/// poll of the driver's own state, and a run of requests ([`Driver::run`]), a
/// refusal's write and a tunnel are boxed.
pub fn serve(
    proxy: Arc<Proxy>,
    conn: Arc<Conn>,
    stream: ClientStream,
    settings: Settings,
    shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send {
    let mut d = Driver {
        socket: Arc::new(Mutex::new(Socket {
            stream,
            buf: BytesMut::new(),
            body: Decoder::Done,
            expect: false,
        })),
        proxy,
        conn,
        settings,
        shutdown,
        alarm: Alarm::default(),
        tick: Alarm::default(),
        out: BytesMut::new(),
        wait: HeadWait::new(true, settings.client_idle()),
    };
    async move {
        d.begin_wait(true);
        // The loop ends with the answer to an unreadable head (out of the `match`, so
        // the wait's outcome is not kept while the answer is written).
        let refused = loop {
            let head = match std::future::poll_fn(|cx| d.poll_head(cx)).await {
                Wait::Head(h) => h,
                Wait::Refused(e) => break refusal(e),
                Wait::Closed | Wait::Deadline => return,
            };
            // Boxed, one allocation a run of requests: a request's future is kilobytes
            // (the forwarding path, the backend's exchange, the answer's writing), and
            // inline it would be part of every connection's future for as long as the
            // connection lives, idle or not.
            match Box::pin(d.run(head)).await {
                // The wait for the next head goes on past the tick, without buffers.
                Run::Idle => {}
                Run::Closed => return,
                Run::Tunnel => return Box::pin(d.into_tunnel()).await,
                Run::Refused(e) => break refusal(e),
            }
        };
        let _ = Box::pin(d.write_raw(refused)).await;
    }
}

/// How a run of requests ([`Driver::run`]) ended.
enum Run {
    /// No head came within [`TICK`] of the last answer; the connection stays open.
    Idle,
    Closed,
    /// The last answer was a `101`: the connection becomes a tunnel.
    Tunnel,
    Refused(HeadError),
}

impl Driver {
    /// Serves `head`'s request, and each next one whose head comes within [`TICK`] of
    /// the answer before it (a busy keep-alive client, or pipelined requests). The run
    /// is boxed once for all of them: boxing each request's future would copy its
    /// kilobytes into a new allocation for every request.
    async fn run(&mut self, mut head: parse::RequestHead) -> Run {
        loop {
            let stop = *self.shutdown.borrow();
            match self.exchange(head, stop).await {
                Ok(true) if !*self.shutdown.borrow() => {}
                Ok(_) | Err(_) => return Run::Closed,
            }
            if self.upgrade_pending() {
                return Run::Tunnel;
            }
            self.begin_wait(false);
            head = match std::future::poll_fn(|cx| self.poll_wait(cx)).await {
                Wait::Head(h) => h,
                Wait::Refused(e) => return Run::Refused(e),
                // The tick passed before a head began: the idle part of the wait is
                // [`Driver::poll_head`]'s, outside the run.
                Wait::Deadline if self.wait.begun.is_none() => return Run::Idle,
                Wait::Closed | Wait::Deadline => return Run::Closed,
            };
        }
    }

    /// Starts the wait for the next head: between requests for at most `client_idle`
    /// (the read buffer goes after [`TICK`], and from then a shutdown closes the
    /// connection at once), then at most `client_header` from its first byte. The
    /// opening wait already saw the first bytes of a new connection.
    fn begin_wait(&mut self, first: bool) {
        self.wait = HeadWait::new(first, self.settings.client_idle());
    }

    /// The wait [`Driver::begin_wait`] started: a tick with the buffers kept (most
    /// next requests come in it), then without them until `client_idle`.
    fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Wait> {
        loop {
            let r = ready!(self.poll_wait(cx));
            let w = &mut self.wait;
            let idle = matches!(r, Wait::Deadline)
                && !w.idling
                && w.begun.is_none()
                && clock::recent() < w.idle_end;
            if !idle {
                w.idle = None;
                return Poll::Ready(r);
            }
            // In the set before the signal is read: a shutdown after this read wakes
            // the connection.
            w.idling = true;
            w.idle = super::idle::Entry::new(cx.waker(), w.idle_end);
            if *self.shutdown.borrow() {
                w.idle = None;
                return Poll::Ready(Wait::Closed);
            }
            self.socket.lock().buf = BytesMut::new();
            self.out = BytesMut::new();
            self.tick = Alarm::default();
            if w.idle.is_some() {
                self.alarm = Alarm::default();
            }
            w.until = w.idle_end;
        }
    }

    /// Reads until a head is complete, the client leaves, the wait's `until` passes (or
    /// `client_header` after the head began), or, idle before a head began, the
    /// shutdown signal is on.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<Wait> {
        let s = self.settings;
        let w = &mut self.wait;
        let mut guard = self.socket.lock();
        let sock = &mut *guard;
        loop {
            if !sock.buf.is_empty() {
                if w.begun.is_none() {
                    w.begun = Some(clock::recent());
                }
                match parse::request(&mut sock.buf, s.max_header_bytes as usize) {
                    Ok(Some(head)) => return Poll::Ready(Wait::Head(head)),
                    Ok(None) => {}
                    Err(e) => return Poll::Ready(Wait::Refused(e)),
                }
            }
            let idle = w.begun.is_none() && sock.buf.capacity() == 0;
            let read = if idle {
                // Without a buffer, only the socket's readiness is watched until
                // it has bytes.
                match sock.stream.tcp().poll_read_ready(cx) {
                    Poll::Ready(Ok(())) => poll_read_in(&mut sock.stream, cx, &mut sock.buf),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            } else {
                poll_read_in(&mut sock.stream, cx, &mut sock.buf)
            };
            match read {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(Wait::Closed),
                Poll::Ready(Ok(_)) => continue,
                Poll::Pending => {}
            }
            if let (None, Some(entry)) = (w.begun, &w.idle) {
                // Idle: the idle set wakes the connection on shutdown and, through
                // its sweeper, at its deadline.
                entry.update(cx.waker());
                return if *self.shutdown.borrow() {
                    Poll::Ready(Wait::Closed)
                } else if clock::recent() >= w.until {
                    Poll::Ready(Wait::Deadline)
                } else {
                    Poll::Pending
                };
            }
            let deadline = match w.begun {
                Some(b) => b + s.client_header(),
                None => w.until,
            };
            return match self.alarm.poll(cx, deadline) {
                Poll::Ready(()) => Poll::Ready(Wait::Deadline),
                Poll::Pending => Poll::Pending,
            };
        }
    }

    /// One request: its body's framing, the forwarding path, the answer. `Ok(true)`
    /// when the connection may carry another request.
    async fn exchange(&mut self, head: parse::RequestHead, stop: bool) -> io::Result<bool> {
        // The head's fields are used in place: moved out of it, they would take room
        // of their own beside it in this future.
        let head_request = head.parts.method == Method::HEAD;
        let version = head.parts.version;
        let facts = read_head(&head.parts);
        let mut keep = facts.keep_alive && !stop;
        let Some(decoder) = facts.body else {
            self.write_raw(BAD_FRAMING).await?;
            return Ok(false);
        };
        let bodiless = decoder.is_done();
        let expect = !bodiless && facts.expect;
        {
            let mut s = self.socket.lock();
            s.body = decoder;
            s.expect = expect;
        }
        let body = RequestBody {
            raw_head: Some(head.raw),
            socket: self.socket.clone(),
            conn: self.conn.clone(),
            done: bodiless,
        };
        let req = Request::from_parts(head.parts, http_body_util::Either::Left(body));
        // Polled here, not in a future of its own that would hold it beside this one
        // (every byte of a future is room in the run's box). In a block of its own, so
        // that its room is free again (and shared with the answer's writing) once it
        // is done.
        let (resp, id) = {
            let serve = forward::serve_with_id(self.proxy.clone(), self.conn.clone(), req);
            tokio::pin!(serve);
            ticked(&mut self.tick, serve).await
        };
        let (rparts, rbody) = resp.into_parts();
        let upgrade = rparts.status == http::StatusCode::SWITCHING_PROTOCOLS
            && self.conn.upgrade.lock().is_some();
        if !upgrade && has_token(&rparts.headers, b"close") {
            keep = false;
        }
        let answer = Answer {
            head_request,
            version,
            upgrade,
            request_id: id.as_bytes(),
        };
        self.write_response(rparts, rbody, &answer, &mut keep)
            .await?;
        if upgrade {
            return Ok(true);
        }
        // Another request can follow only once this one's body was read to its end.
        let s = self.socket.lock();
        if !s.body.is_done() {
            return Ok(false);
        }
        Ok(keep)
    }

    fn upgrade_pending(&self) -> bool {
        self.conn.upgrade.lock().is_some()
    }

    /// The connection becomes a tunnel to the backend's upgraded side.
    async fn into_tunnel(self) {
        let Some(tunnel) = self.conn.upgrade.lock().take() else {
            return;
        };
        let Ok(socket) = Arc::try_unwrap(self.socket) else {
            return;
        };
        let socket = socket.into_inner();
        let mut io = ClientIo::new(socket.stream, self.settings.write());
        io.unread(socket.buf.freeze());
        crate::http::server::splice(io, tunnel).await;
    }

    /// Writes an answer: its head (status line, fields, the framing levee writes the
    /// body with, `Date` when it has none, `Connection` as the connection goes on),
    /// then its body frame by frame, each written as it comes (streams are not held
    /// back), the first with the head when it is ready at once.
    async fn write_response(
        &mut self,
        parts: http::response::Parts,
        mut body: ResBody,
        answer: &Answer<'_>,
        keep: &mut bool,
    ) -> io::Result<()> {
        let (head_request, version, upgrade) =
            (answer.head_request, answer.version, answer.upgrade);
        let status = parts.status.as_u16();
        let bodiless =
            head_request || status == 204 || status == 304 || (100..200).contains(&status);
        let v11 = version == Version::HTTP_11;
        let out = &mut self.out;
        out.clear();
        out.put_slice(b"HTTP/1.1 ");
        out.put_slice(parts.status.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
        out.put_slice(b"\r\n");
        let (mut length, mut coded, mut date) = (None, false, false);
        if let Some(head) = body.take_backend_head() {
            // A backend's head: its field lines as they came, less the hop-by-hop ones.
            rewrite::response_head(&head, upgrade, !v11 || bodiless, out);
            let f = head.facts;
            (length, coded, date) = (f.length, f.coded, f.date);
        }
        for (name, value) in &parts.headers {
            if *name == CONTENT_LENGTH {
                length = parse::parse_length(value.as_bytes());
            } else if *name == TRANSFER_ENCODING {
                coded = true;
                if !v11 || bodiless {
                    continue;
                }
            } else if *name == CONNECTION && !upgrade {
                continue;
            } else if *name == DATE {
                date = true;
            } else if *name == X_REQUEST_ID {
                continue;
            }
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(own) = body.prebuilt_fields() {
            out.put_slice(own.fields);
            if let Some(secs) = own.retry_after {
                out.put_slice(b"retry-after: ");
                out.put_slice(itoa(u64::from(secs), &mut [0; 20]));
                out.put_slice(b"\r\n");
            }
            if own.close {
                *keep = false;
            }
        }
        put_field(out, b"x-request-id", answer.request_id);
        if !date {
            put_date(out);
        }
        let mut framing = if bodiless {
            Framing::None
        } else if let Some(n) = length {
            Framing::Length(n)
        } else if coded && v11 {
            Framing::Chunked
        } else if let Some(n) = body.size_hint().exact() {
            out.put_slice(b"content-length: ");
            out.put_slice(itoa(n, &mut [0; 20]));
            out.put_slice(b"\r\n");
            Framing::Length(n)
        } else if v11 {
            out.put_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        } else {
            *keep = false;
            Framing::Close
        };
        if !upgrade {
            if !*keep {
                out.put_slice(b"connection: close\r\n");
            } else if !v11 {
                out.put_slice(b"connection: keep-alive\r\n");
            }
        }
        out.put_slice(b"\r\n");
        if matches!(framing, Framing::None) {
            drop(body);
            return self.write_out().await;
        }
        loop {
            // Frames that are ready join what is waiting to be written; the socket is
            // written when none is (a stream's events go out as they come).
            let frame = {
                let pending = !self.out.is_empty();
                std::future::poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(f) => Poll::Ready(Some(f)),
                    Poll::Pending if pending => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                })
                .await
            };
            let Some(frame) = frame else {
                self.write_out().await?;
                continue;
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let data = match &mut framing {
                            Framing::Length(left) => {
                                let n = (*left).min(data.len() as u64) as usize;
                                *left -= n as u64;
                                data.slice(..n)
                            }
                            _ => data,
                        };
                        if data.is_empty() {
                            continue;
                        }
                        if matches!(framing, Framing::Chunked) {
                            self.out
                                .put_slice(framing::chunk_head(data.len(), &mut [0; 18]));
                        }
                        if data.len() <= COPY_MAX {
                            self.out.put_slice(&data);
                        } else {
                            self.write_out().await?;
                            self.write_raw(&data).await?;
                        }
                        if matches!(framing, Framing::Chunked) {
                            self.out.put_slice(framing::CRLF);
                        }
                    }
                    Err(frame) => {
                        if let (Framing::Chunked, Ok(t)) = (&framing, frame.into_trailers()) {
                            framing::encode_trailers(&t, &mut self.out);
                            framing = Framing::Ended;
                        }
                    }
                },
                Some(Err(_)) => {
                    // The backend's body broke off: what came goes out, and the
                    // connection ends so the client sees the answer cut.
                    let _ = self.write_out().await;
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                None => {
                    match framing {
                        Framing::Chunked => self.out.put_slice(framing::LAST_CHUNK),
                        Framing::Length(left) if left > 0 => {
                            let _ = self.write_out().await;
                            return Err(io::ErrorKind::UnexpectedEof.into());
                        }
                        Framing::Close => *keep = false,
                        _ => {}
                    }
                    return self.write_out().await;
                }
            }
        }
    }

    /// Writes `out` and flushes.
    async fn write_out(&mut self) -> io::Result<()> {
        let out = std::mem::take(&mut self.out);
        let r = self.write_raw(&out).await;
        self.out = out;
        self.out.clear();
        r
    }

    /// Writes `bytes` and flushes, failing a write that makes no progress for `write`.
    async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let socket = &self.socket;
        let alarm = &mut self.alarm;
        let limit = self.settings.write();
        let mut at = 0;
        let mut stalled: Option<Instant> = None;
        std::future::poll_fn(|cx| {
            let mut s = socket.lock();
            loop {
                let polled = if at < bytes.len() {
                    Pin::new(&mut s.stream).poll_write(cx, &bytes[at..])
                } else {
                    match Pin::new(&mut s.stream).poll_flush(cx) {
                        Poll::Ready(Ok(())) => {
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => Poll::Pending,
                    }
                };
                match polled {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => {
                        at += n;
                        stalled = None;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        let since = *stalled.get_or_insert_with(Instant::now);
                        ready!(alarm.poll(cx, since + limit));
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "client did not read for the write timeout",
                        )));
                    }
                }
            }
        })
        .await
    }
}

/// What the head of an answer depends on beyond the answer itself.
struct Answer<'a> {
    /// The request was HEAD: no body is written.
    head_request: bool,
    /// The request's version (an HTTP/1.0 client gets no chunked body).
    version: Version,
    /// An accepted upgrade: `Connection` and `Upgrade` go as the backend sent them.
    upgrade: bool,
    request_id: &'a [u8],
}

/// How an answer's body is written.
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Chunked, trailers written.
    Ended,
    Close,
}

/// Polls `fut` to its end, and at least every [`TICK`] while it waits.
async fn ticked<F: Future>(tick: &mut Alarm, mut fut: Pin<&mut F>) -> F::Output {
    let mut next = clock::recent() + TICK;
    std::future::poll_fn(|cx| loop {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        if tick.poll(cx, next).is_pending() {
            return Poll::Pending;
        }
        next = clock::recent() + TICK;
    })
    .await
}

fn has_token(headers: &HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .any(|v| list(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(token)))
}

/// `Date: …`, formatted once a second per thread.
fn put_date(out: &mut BytesMut) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, [u8; 29])> = const { std::cell::RefCell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                d.1.copy_from_slice(text.as_bytes());
                d.0 = secs;
            }
        }
        out.put_slice(b"date: ");
        out.put_slice(&d.1);
        out.put_slice(b"\r\n");
    });
}
