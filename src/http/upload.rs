//! [`ForwardBody`]: the client's request body on its way to the backend, streamed
//! frame by frame. It counts bytes against `max_request_body_bytes`, bounds each wait
//! for the client by `client_header`, notes when the upload ended (the response
//! deadline counts from there), and refuses to end a body whose raw framing broke a
//! rule.
//!
//! For an HTTP/2 upstream it also keeps a copy of a small body (at most
//! [`REPLAY_MAX`] bytes) as it goes: a stream the backend refused or dropped unprocessed
//! (REFUSED_STREAM, or above a GOAWAY's last stream) can then be sent again, from
//! [`ForwardBody::replay`], once the client's whole body was read.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::io::ConnShared;
use crate::error::Failure;
use crate::health::epoch;

/// The error type of both bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest request body kept for sending again (HTTP/2 upstreams): gRPC unary calls
/// and small API requests; a larger body streams through without a copy.
pub const REPLAY_MAX: usize = 64 * 1024;

/// The copy of a body kept for sending again.
#[derive(Debug, Default)]
pub struct Replay {
    data: Vec<Bytes>,
    trailers: Option<http::HeaderMap>,
    size: usize,
    /// The client's whole body is here.
    complete: bool,
    /// The body outgrew [`REPLAY_MAX`]: nothing is kept.
    overflow: bool,
}

impl Replay {
    fn keep(&mut self, frame: &Frame<Bytes>) {
        if self.overflow {
            return;
        }
        if let Some(data) = frame.data_ref() {
            self.size += data.len();
            if self.size > REPLAY_MAX {
                *self = Replay {
                    overflow: true,
                    ..Replay::default()
                };
                return;
            }
            self.data.push(data.clone());
        } else if let Some(t) = frame.trailers_ref() {
            self.trailers = Some(t.clone());
        }
    }
}

/// How a client's upload went, read by the request's forwarder.
#[derive(Debug, Default)]
pub struct Upload {
    /// When the body ended (set once).
    pub done: std::sync::OnceLock<Instant>,
    /// Why the body failed, when it did on the client's side.
    pub failure: std::sync::OnceLock<Failure>,
    /// When a body frame last went on, in microseconds after [`epoch`] (0: never).
    progress_us: std::sync::atomic::AtomicU64,
    /// The body's copy, when one is kept (see [`ForwardBody::client`]).
    replay: Option<parking_lot::Mutex<Replay>>,
}

impl Upload {
    /// An upload whose body (up to [`REPLAY_MAX`]) is kept for sending again.
    pub fn replayable() -> Upload {
        Upload {
            replay: Some(parking_lot::Mutex::new(Replay::default())),
            ..Upload::default()
        }
    }

    fn keep(&self, frame: &Frame<Bytes>) {
        if let Some(r) = &self.replay {
            r.lock().keep(frame);
        }
    }

    fn kept_all(&self) {
        if let Some(r) = &self.replay {
            r.lock().complete = true;
        }
    }

    fn progressed(&self) {
        self.progressed_at(crate::clock::recent());
    }

    fn progressed_at(&self, at: Instant) {
        let us = at.saturating_duration_since(epoch()).as_micros() as u64;
        self.progress_us.store(us.max(1), Ordering::Relaxed);
    }

    /// The body ended: its end is its last progress too, from one clock reading.
    fn ended(&self) {
        let now = crate::clock::recent();
        let _ = self.done.set(now);
        self.progressed_at(now);
    }

    /// When the body last made progress (a frame went on, or it ended).
    pub fn last_progress(&self) -> Option<Instant> {
        match self.progress_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(epoch() + Duration::from_micros(us)),
        }
    }
}

/// A client's request body: from levee's own HTTP/1.1 codec (`Left`), or hyper's
/// HTTP/2 stream (`Right`).
pub type ClientIncoming = http_body_util::Either<crate::http1::conn::RequestBody, Incoming>;

/// The request body sent to a backend.
pub enum ForwardBody {
    Empty,
    Client(Box<ClientBody>),
    /// A kept body sent again: its data in order, then its trailers (boxed: the
    /// request moves through hyper by value, and this is rare).
    Replay(Box<(std::collections::VecDeque<Bytes>, Option<http::HeaderMap>)>),
}

pub struct ClientBody {
    incoming: ClientIncoming,
    limit: u64,
    seen: u64,
    wait: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    conn: Arc<ConnShared>,
    upload: Arc<Upload>,
}

impl ForwardBody {
    /// The client's body (`limit` 0: no limit), or nothing when it has none.
    pub fn client(
        incoming: ClientIncoming,
        limit: u64,
        wait: Duration,
        conn: Arc<ConnShared>,
        upload: Arc<Upload>,
    ) -> ForwardBody {
        if incoming.is_end_stream() {
            upload.ended();
            return ForwardBody::Empty;
        }
        ForwardBody::Client(Box::new(ClientBody {
            incoming,
            limit,
            seen: 0,
            wait,
            sleep: None,
            conn,
            upload,
        }))
    }
}

impl ForwardBody {
    /// The client's whole body again, when `upload` kept all of it.
    pub fn replay(upload: &Upload) -> Option<ForwardBody> {
        let r = upload.replay.as_ref()?.lock();
        if !r.complete || r.overflow {
            return None;
        }
        Some(ForwardBody::Replay(Box::new((
            r.data.iter().cloned().collect(),
            r.trailers.clone(),
        ))))
    }
}

impl ClientBody {
    fn fail(&mut self, f: Failure) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let _ = self.upload.failure.set(f);
        Poll::Ready(Some(Err(Box::new(f))))
    }

    fn ended(&mut self) -> Option<Failure> {
        if self.conn.framing_violation.load(Ordering::Acquire) {
            return Some(Failure::BadRequest);
        }
        self.upload.kept_all();
        self.upload.ended();
        None
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = match self.get_mut() {
            ForwardBody::Empty => return Poll::Ready(None),
            ForwardBody::Client(b) => b,
            ForwardBody::Replay(kept) => {
                let (data, trailers) = &mut **kept;
                let frame = match data.pop_front() {
                    Some(d) => Frame::data(d),
                    None => match trailers.take() {
                        Some(t) => Frame::trailers(t),
                        None => return Poll::Ready(None),
                    },
                };
                return Poll::Ready(Some(Ok(frame)));
            }
        };
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.sleep = None;
                this.upload.progressed();
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.limit > 0 && this.seen > this.limit {
                        return this.fail(Failure::BodyTooLarge);
                    }
                }
                this.upload.keep(&frame);
                if this.incoming.is_end_stream() {
                    if let Some(f) = this.ended() {
                        return this.fail(f);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => match this.ended() {
                Some(f) => this.fail(f),
                None => Poll::Ready(None),
            },
            Poll::Ready(Some(Err(e))) => {
                let f =
                    if this.conn.framing_violation.load(Ordering::Acquire) || is_invalid_data(&e) {
                        Failure::BadRequest
                    } else {
                        Failure::ClientGone
                    };
                this.fail(f)
            }
            Poll::Pending => {
                let wait = this.wait;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                ready!(sleep.as_mut().poll(cx));
                this.fail(Failure::ClientTimeout)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ForwardBody::Empty => true,
            ForwardBody::Client(b) => b.incoming.is_end_stream(),
            ForwardBody::Replay(kept) => kept.0.is_empty() && kept.1.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ForwardBody::Empty => SizeHint::with_exact(0),
            ForwardBody::Client(b) => b.incoming.size_hint(),
            ForwardBody::Replay(kept) => {
                SizeHint::with_exact(kept.0.iter().map(|d| d.len() as u64).sum())
            }
        }
    }
}

/// Did the body fail because its framing was invalid (bad chunk syntax)?
fn is_invalid_data(e: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput
            );
        }
        source = s.source();
    }
    false
}
