//! HTTP/1.1 on levee's own codec (no hyper here): heads parsed with `httparse`
//! ([`parse`]), body framing ([`framing`]), a request head forwarded as bytes
//! ([`rewrite`]), the client connection's driver ([`conn`]) and backend connections
//! ([`client`]). It is levee's one hand-written protocol layer, for speed: a proxy's
//! HTTP/1.1 forwards heads as bytes and keeps no per-request header work it does not
//! need, which a general HTTP library's server and client cannot offer.

pub mod client;
pub mod conn;
pub mod framing;
pub mod idle;
pub mod parse;
pub mod rewrite;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, BytesMut};
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

/// A request line for an HTTP/1.1 backend: the method, the origin-form target (`/`
/// when the request named none), `HTTP/1.1`.
fn put_request_line(out: &mut BytesMut, parts: &http::request::Parts) {
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    out.put_slice(if target.is_empty() {
        b"/"
    } else {
        target.as_bytes()
    });
    out.put_slice(b" HTTP/1.1\r\n");
}

/// One field line: `name: value` and CRLF.
fn put_field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// Fields that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&[u8]; 6] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
];

/// The elements of a comma-separated field value, without the whitespace around them
/// (empty ones included: each reader says what an empty element means to it).
fn list(value: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// A field line's name and its value without surrounding whitespace.
fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b':', line) {
        Some(i) => (&line[..i], line[i + 1..].trim_ascii()),
        None => (line, &[]),
    }
}
