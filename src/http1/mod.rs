//! HTTP/1.1 on levee's own codec (no hyper here): heads parsed with `httparse`
//! ([`parse`]), body framing ([`framing`]), a request head forwarded as bytes
//! ([`rewrite`]), the client connection's driver ([`conn`]) and backend connections
//! ([`client`]). It is levee's one hand-written protocol layer, for speed: a proxy's
//! HTTP/1.1 forwards heads as bytes and keeps no per-request header work it does not
//! need, which a general HTTP library's server and client cannot offer.

pub mod client;
pub mod conn;
pub mod framing;
pub mod parse;
pub mod rewrite;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncRead;

/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;

/// Reads what the peer sent into `buf` (grown by [`READ_CHUNK`] when nearly full);
/// `Ok(0)` when it closed. Through `AsyncRead`, whose short read marks a socket
/// drained: the next look at its readiness then costs no `recv` that would find
/// nothing.
fn poll_read_in<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}
