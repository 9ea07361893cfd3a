//! [`ResBody`]: what goes back to the client, streamed frame by frame: levee's own
//! small answer, or the backend's body, which bounds each wait by `read` (or
//! `stream_idle` for streams) and the whole by the response deadline, and ends the
//! [`Exchange`] (frees the slot) at the backend's end of stream, before the last bytes
//! are written to the client.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

use super::exchange::Exchange;
use super::io::Active;
use super::upload::BoxError;
use crate::error::Failure;

/// The response body sent to a client.
pub struct ResBody {
    kind: Kind,
    /// Keeps the request counted on its connection until hyper drops the body.
    _active: Option<Active>,
}

enum Kind {
    Full(Option<Bytes>),
    /// levee's own answer to an HTTP/1.1 request: its fields pre-encoded, its body.
    Prebuilt(super::respond::Prebuilt, Option<Bytes>),
    Backend(Box<BackendBody>),
}

/// A backend's response body: levee's HTTP/1.1 codec's (`Left`), or hyper's HTTP/2
/// stream (`Right`).
pub type BackendIncoming = http_body_util::Either<crate::http1::client::Body, Incoming>;

struct BackendBody {
    incoming: BackendIncoming,
    exchange: Exchange,
    /// Longest wait for the next frame.
    wait: Duration,
    /// Whole-response deadline (not for streams).
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// An HTTP/1.1 backend's head as it came, for levee's HTTP/1.1 codec to write
    /// the answer's fields from (the answer's header map is then empty).
    head: Option<crate::http1::parse::ResponseHead>,
}

impl ResBody {
    pub fn full(bytes: Bytes, active: Option<Active>) -> ResBody {
        ResBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            _active: active,
        }
    }

    /// levee's own answer with pre-encoded fields (HTTP/1.1).
    pub fn prebuilt(
        fields: super::respond::Prebuilt,
        bytes: Bytes,
        active: Option<Active>,
    ) -> ResBody {
        ResBody {
            kind: Kind::Prebuilt(fields, (!bytes.is_empty()).then_some(bytes)),
            _active: active,
        }
    }

    /// The pre-encoded fields of levee's own answer, when it is one.
    pub fn prebuilt_fields(&self) -> Option<super::respond::Prebuilt> {
        match &self.kind {
            Kind::Prebuilt(f, _) => Some(*f),
            _ => None,
        }
    }

    /// Keeps a backend's head as bytes with its body (see [`ResBody::take_backend_head`]).
    pub fn keep_backend_head(&mut self, head: crate::http1::parse::ResponseHead) {
        if let Kind::Backend(b) = &mut self.kind {
            b.head = Some(head);
        }
    }

    /// The backend's head as it came, once, when the answer's fields were left as
    /// bytes: they are written from it.
    pub fn take_backend_head(&mut self) -> Option<crate::http1::parse::ResponseHead> {
        match &mut self.kind {
            Kind::Backend(b) => b.head.take(),
            _ => None,
        }
    }

    pub fn empty(active: Option<Active>) -> ResBody {
        ResBody::full(Bytes::new(), active)
    }

    /// The backend's body. An empty one ends the exchange at once.
    pub fn backend(
        incoming: BackendIncoming,
        mut exchange: Exchange,
        wait: Duration,
        deadline: Option<Instant>,
        active: Option<Active>,
    ) -> ResBody {
        if incoming.is_end_stream() {
            exchange.finish(None);
        }
        ResBody {
            kind: Kind::Backend(Box::new(BackendBody {
                incoming,
                exchange,
                wait,
                deadline,
                sleep: None,
                head: None,
            })),
            _active: active,
        }
    }
}

impl BackendBody {
    fn fail(&mut self, f: Failure) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.exchange.finish(Some(f));
        Poll::Ready(Some(Err(Box::new(f))))
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let b = match &mut self.get_mut().kind {
            Kind::Full(bytes) | Kind::Prebuilt(_, bytes) => {
                return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b))))
            }
            Kind::Backend(b) => b,
        };
        if b.deadline.is_some_and(|d| crate::clock::recent() >= d) {
            return b.fail(Failure::UpstreamTimeout);
        }
        match Pin::new(&mut b.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                b.sleep = None;
                if b.incoming.is_end_stream() {
                    b.exchange.finish(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                b.exchange.finish(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                tracing::debug!(error = %e, "backend response body failed");
                b.fail(Failure::UpstreamError)
            }
            Poll::Pending => {
                if b.sleep.is_none() {
                    let mut until = tokio::time::Instant::from_std(crate::clock::recent()) + b.wait;
                    if let Some(d) = b.deadline {
                        until = until.min(tokio::time::Instant::from_std(d));
                    }
                    b.sleep = Some(Box::pin(tokio::time::sleep_until(until)));
                }
                if let Some(s) = b.sleep.as_mut() {
                    ready!(s.as_mut().poll(cx));
                }
                b.fail(Failure::UpstreamTimeout)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) | Kind::Prebuilt(_, b) => b.is_none(),
            Kind::Backend(b) => b.incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) | Kind::Prebuilt(_, b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Backend(b) => b.incoming.size_hint(),
        }
    }
}
