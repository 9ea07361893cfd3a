//! Request and response heads from bytes, on `httparse`, and the framing facts each
//! side needs from them.
//!
//! A head is parsed in place in the connection's read buffer, then split off it and
//! frozen: the target and every header value are slices of that one allocation
//! (`Bytes::slice_ref`), not copies. httparse refuses what levee refuses at this layer:
//! bad tokens, bare CR, NUL and other controls in values, obs-fold, whitespace before a
//! colon, versions other than 1.0 and 1.1. The framing rules that need the whole head
//! (both `Content-Length` and `Transfer-Encoding`, a list-valued length, a coding other
//! than `chunked`) are [`crate::http::validate::check_head`]'s for requests and
//! [`response_framing`]'s for responses.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Uri, Version};

use super::framing::Decoder;
use crate::config::MAX_HEADER_FIELDS;

/// Why a head cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed head: {0}")]
    Syntax(&'static str),
    #[error("head larger than allowed")]
    TooLarge,
    #[error("more header fields than allowed")]
    TooManyFields,
}

impl From<httparse::Error> for HeadError {
    fn from(e: httparse::Error) -> Self {
        match e {
            httparse::Error::TooManyHeaders => HeadError::TooManyFields,
            httparse::Error::HeaderName => HeadError::Syntax("header name"),
            httparse::Error::HeaderValue => HeadError::Syntax("header value"),
            httparse::Error::NewLine => HeadError::Syntax("line ending"),
            httparse::Error::Status => HeadError::Syntax("status"),
            httparse::Error::Token => HeadError::Syntax("token"),
            httparse::Error::Version => HeadError::Syntax("version"),
        }
    }
}

/// A request head, split off the read buffer.
pub struct RequestHead {
    pub parts: http::request::Parts,
    /// The head's bytes as they came (request line to the empty line).
    pub raw: Bytes,
}

/// Offsets of a field inside the head's bytes (a head is at most a few hundred KiB).
#[derive(Clone, Copy, Default)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
}

fn span(base: &[u8], part: &[u8]) -> (u32, u32) {
    let start = part.as_ptr() as usize - base.as_ptr() as usize;
    (start as u32, (start + part.len()) as u32)
}

/// httparse's field slots, left uninitialised: it writes the ones it fills, and
/// zeroing a hundred of them per head cost more than parsing the head.
fn slots<'b>() -> [MaybeUninit<httparse::Header<'b>>; MAX_HEADER_FIELDS] {
    [const { MaybeUninit::uninit() }; MAX_HEADER_FIELDS]
}

/// Reads a request head from the front of `buf`: `Ok(None)` while it is incomplete
/// (and no larger than `max_bytes`). Empty lines before the request line are skipped
/// (RFC 9112 §2.2).
pub fn request(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<RequestHead>, HeadError> {
    // Empty lines are CRLF or a bare LF; a bare CR is not one (and what follows it
    // would be read differently by different servers).
    let mut skip = 0;
    loop {
        match &buf[skip..] {
            [b'\n', ..] => skip += 1,
            [b'\r', b'\n', ..] => skip += 2,
            _ => break,
        }
    }
    if skip > 0 {
        let _ = buf.split_to(skip);
    }
    let mut headers = slots();
    let mut req = httparse::Request::new(&mut []);
    let parsed = req.parse_with_uninit_headers(buf, &mut headers);
    let Some(len) = head_len(parsed, buf.len(), max_bytes)? else {
        return Ok(None);
    };
    if len > max_bytes || len > u32::MAX as usize {
        return Err(HeadError::TooLarge);
    }
    let method = req.method.unwrap_or_default();
    let target = span(buf, req.path.unwrap_or_default().as_bytes());
    let target = (target.0 as usize, target.1 as usize);
    let version = version(req.version);
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Syntax("method"))?;
    let mut fields = [Field::default(); MAX_HEADER_FIELDS];
    let count = field_spans(buf, req.headers, &mut fields);
    let raw = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(raw.slice(target.0..target.1))
        .map_err(|_| HeadError::Syntax("target"))?;
    let headers = header_map(&raw, &fields[..count])?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead { parts, raw }))
}

/// The length of a complete head; `None` while it is incomplete and no larger than
/// `max_bytes` (with `buffered` bytes read so far).
fn head_len(
    parsed: httparse::Result<usize>,
    buffered: usize,
    max_bytes: usize,
) -> Result<Option<usize>, HeadError> {
    match parsed {
        Ok(httparse::Status::Complete(n)) => Ok(Some(n)),
        Ok(httparse::Status::Partial) if buffered > max_bytes => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// HTTP/1.1 for httparse's minor version 1, else HTTP/1.0 (it reads no other).
fn version(minor: Option<u8>) -> Version {
    if minor == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    }
}

/// Where each parsed field's name and value lie in `base` (the head's bytes), written
/// into `out`; how many there are.
fn field_spans(base: &[u8], headers: &[httparse::Header<'_>], out: &mut [Field]) -> usize {
    for (f, h) in out.iter_mut().zip(headers) {
        f.name = span(base, h.name.as_bytes());
        f.value = span(base, h.value);
    }
    headers.len()
}

fn header_map(raw: &Bytes, fields: &[Field]) -> Result<HeaderMap, HeadError> {
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        let name = HeaderName::from_bytes(&raw[f.name.0 as usize..f.name.1 as usize])
            .map_err(|_| HeadError::Syntax("header name"))?;
        let value =
            HeaderValue::from_maybe_shared(raw.slice(f.value.0 as usize..f.value.1 as usize))
                .map_err(|_| HeadError::Syntax("header value"))?;
        map.append(name, value);
    }
    Ok(map)
}

/// A response head, split off the read buffer.
pub struct ResponseHead {
    pub parts: http::response::Parts,
}

/// Reads a response head from the front of `buf`: `Ok(None)` while it is incomplete.
pub fn response(buf: &mut BytesMut, max_bytes: usize) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = slots();
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut headers,
    );
    let Some(len) = head_len(parsed, buf.len(), max_bytes)? else {
        return Ok(None);
    };
    let status = StatusCode::from_u16(res.code.unwrap_or_default())
        .map_err(|_| HeadError::Syntax("status"))?;
    let version = version(res.version);
    let mut fields = [Field::default(); MAX_HEADER_FIELDS];
    let count = field_spans(buf, res.headers, &mut fields);
    let raw = buf.split_to(len).freeze();
    let headers = header_map(&raw, &fields[..count])?;
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(ResponseHead { parts }))
}

/// How a response's body is framed (RFC 9112 §6.3), and whether the connection may
/// carry another request after it. `head`: the request was HEAD. A response whose
/// framing is ambiguous (both lengths, a coding other than chunked last, a list of
/// differing lengths) is an error: a proxy must not guess.
pub fn response_framing(
    parts: &http::response::Parts,
    head: bool,
) -> Result<(Decoder, bool), HeadError> {
    let mut keep_alive = parts.version == Version::HTTP_11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    for (name, value) in &parts.headers {
        if *name == CONTENT_LENGTH {
            for v in super::list(value.as_bytes()) {
                let n = parse_length(v).ok_or(HeadError::Syntax("content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Syntax("content-length"));
                }
                length = Some(n);
            }
        } else if *name == TRANSFER_ENCODING {
            coded = true;
            // The last element that is not empty (RFC 9110 §5.6.1).
            chunked = super::list(value.as_bytes())
                .rfind(|e| !e.is_empty())
                .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"));
        } else if *name == CONNECTION {
            for t in super::list(value.as_bytes()) {
                if t.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if t.eq_ignore_ascii_case(b"keep-alive") && parts.version == Version::HTTP_10
                {
                    keep_alive = true;
                }
            }
        }
    }
    let status = parts.status.as_u16();
    if head || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((Decoder::Done, keep_alive));
    }
    if coded {
        if length.is_some() {
            return Err(HeadError::Syntax("content-length with transfer-encoding"));
        }
        if parts.version == Version::HTTP_10 {
            // RFC 9112 §6.1: faulty framing.
            return Err(HeadError::Syntax("transfer-encoding on HTTP/1.0"));
        }
        if chunked {
            return Ok((Decoder::chunked(), keep_alive));
        }
        // A coding other than chunked last: the body runs to the close.
        return Ok((Decoder::Eof, false));
    }
    match length {
        Some(n) => Ok((Decoder::length(n), keep_alive)),
        None => Ok((Decoder::Eof, false)),
    }
}

/// A `Content-Length` value: 1–19 decimal digits, nothing else.
pub fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_split_off_and_its_values_share_its_bytes() {
        let mut buf = BytesMut::from(
            &b"\r\nGET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Long: v v\r\nX-Long: w\r\n\r\nNEXT"[..],
        );
        let head = request(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(&buf[..], b"NEXT");
        assert_eq!(head.parts.method, Method::GET);
        assert_eq!(head.parts.uri, "/a?b=1");
        assert_eq!(head.parts.version, Version::HTTP_11);
        assert_eq!(head.parts.headers["host"], "x");
        let all: Vec<_> = head.parts.headers.get_all("x-long").iter().collect();
        assert_eq!(all, ["v v", "w"]);
        assert!(head.raw.starts_with(b"GET /a?b=1 HTTP/1.1\r\n"));
        assert!(head.raw.ends_with(b"\r\n\r\n"));
    }

    #[test]
    fn partial_oversized_and_malformed_heads() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n"[..]);
        assert!(request(&mut buf, 8192).unwrap().is_none());
        assert_eq!(request(&mut buf, 10).err(), Some(HeadError::TooLarge));
        for bad in [
            &b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n y\r\n\r\n",
            b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                request(&mut buf, 8192).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    fn framing(raw: &[u8], head: bool) -> Result<(Decoder, bool), HeadError> {
        let mut buf = BytesMut::from(raw);
        let parsed = response(&mut buf, 8192).unwrap().unwrap();
        response_framing(&parsed.parts, head)
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            Ok((Decoder::Length(5), true))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", false),
            Ok((Decoder::Length(5), true))
        );
        assert!(framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n", false).is_err());
        assert!(framing(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            false
        )
        .is_err());
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                false
            ),
            Ok((Decoder::chunked(), true))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", false),
            Ok((Decoder::Eof, false))
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Ok((Decoder::Length(1), false))
        );
        assert_eq!(
            framing(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Ok((Decoder::Length(1), true))
        );
        for bodiless in [
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        ] {
            assert_eq!(framing(bodiless, false), Ok((Decoder::Done, true)));
        }
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true),
            Ok((Decoder::Done, true))
        );
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"0"), Some(0));
        assert_eq!(parse_length(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+1",
            b"-1",
            b"1 2",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_length(bad), None);
        }
    }
}
