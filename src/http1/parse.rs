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
use http::header::{HeaderName, HeaderValue};
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

/// A response head, split off the read buffer. Its fields stay as the bytes that
/// came: an HTTP/1.1 client's answer is written from them ([`super::rewrite`]), and
/// only a reader that needs a map (an HTTP/2 client, a load report) builds one
/// ([`field_map`]).
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// The head's bytes as they came (status line to the empty line).
    pub raw: Bytes,
    /// What its fields say, read in the parser's one pass over them.
    pub facts: ResponseFacts,
}

/// What a response's fields say about its framing and about how it is written on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseFacts {
    /// `Content-Length`, every value and element of it the same.
    pub length: Option<u64>,
    /// A `Content-Length` that is not one valid length.
    bad_length: bool,
    /// A `Transfer-Encoding` field came.
    pub coded: bool,
    /// The last `Transfer-Encoding` ends in `chunked`.
    chunked: bool,
    /// `Connection` says `close`.
    close: bool,
    /// `Connection` says `keep-alive`.
    keep_alive: bool,
    /// `Content-Type` is `text/event-stream`.
    pub event_stream: bool,
    /// A `Date` field came.
    pub date: bool,
    /// The lines go on by [`Self::dropped`] alone: `Connection` names no other field
    /// and every line ends in CRLF (else they are rewritten one by one).
    pub plain: bool,
    /// How many of [`Self::drops`] are set.
    dropped: u8,
    /// Byte ranges of the head (line start to after its LF) of the lines a client
    /// must not get: `Connection`, the fixed hop-by-hop set, `X-Request-Id`. More
    /// than fit make the head not plain.
    drops: [(u32, u32); MAX_DROPS],
}

/// Lines dropped from a plain response head (`Connection: keep-alive` is the usual
/// one).
const MAX_DROPS: usize = 4;

impl ResponseFacts {
    /// Reads one field into the facts; `true` when its line does not go to a client.
    /// Names are told apart by length first: most fields are none of these, and cost
    /// one comparison.
    fn read(&mut self, name: &[u8], value: &[u8]) -> bool {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        match name.len() {
            14 if is(b"content-length") => {
                for v in super::list(value) {
                    match parse_length(v) {
                        Some(n) if self.length.is_none_or(|l| l == n) => self.length = Some(n),
                        _ => self.bad_length = true,
                    }
                }
            }
            17 if is(b"transfer-encoding") => {
                self.coded = true;
                // The last element that is not empty (RFC 9110 §5.6.1).
                self.chunked = super::list(value)
                    .rfind(|e| !e.is_empty())
                    .is_some_and(|last| last.eq_ignore_ascii_case(b"chunked"));
            }
            10 if is(b"connection") => {
                for t in super::list(value) {
                    if t.eq_ignore_ascii_case(b"close") {
                        self.close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        self.keep_alive = true;
                    } else if !(t.is_empty()
                        || super::HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h)))
                    {
                        // It names another field, to go too (`Connection: Upgrade`
                        // names one that goes anyway).
                        self.plain = false;
                    }
                }
                return true;
            }
            12 if is(b"content-type") => self.event_stream = is_event_stream(value),
            4 if is(b"date") => self.date = true,
            _ => return is(b"x-request-id") || super::HOP_BY_HOP.iter().any(|h| is(h)),
        }
        false
    }

    /// Marks the line from `start` to `end` (after its LF) as one a client does not
    /// get.
    fn drop_line(&mut self, start: usize, end: usize) {
        match self.drops.get_mut(usize::from(self.dropped)) {
            Some(d) => {
                *d = (start as u32, end as u32);
                self.dropped += 1;
            }
            None => self.plain = false,
        }
    }

    /// The ranges of the lines a client does not get, in order.
    pub fn drops(&self) -> &[(u32, u32)] {
        &self.drops[..usize::from(self.dropped)]
    }
}

impl ResponseHead {
    /// The fields, name and value, in the order they came.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        fields(&self.raw)
    }

    /// Where the field lines lie in [`Self::raw`]: after the status line, before the
    /// empty line (CRLF in a plain head).
    pub fn field_block(&self) -> (usize, usize) {
        let start = memchr::memchr(b'\n', &self.raw).map_or(self.raw.len(), |i| i + 1);
        let end = self.raw.len().saturating_sub(2).max(start);
        (start, end)
    }
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
    let mut facts = ResponseFacts {
        plain: true,
        ..ResponseFacts::default()
    };
    // Every line ends in CRLF when the head does and each field's line follows a CRLF
    // (a line ended by a bare LF makes the head's lines written one by one).
    let mut crlf = buf[..len].ends_with(b"\r\n\r\n");
    for h in res.headers.iter() {
        let start = h.name.as_ptr() as usize - buf.as_ptr() as usize;
        crlf &= start >= 2 && &buf[start - 2..start] == b"\r\n";
        if facts.read(h.name.as_bytes(), h.value) {
            // The line runs from its name to the LF after it (a name holds no LF,
            // a value neither; the parser checked both).
            let after = start + h.name.len();
            let end = memchr::memchr(b'\n', &buf[after..]).map_or(buf.len(), |i| after + i + 1);
            facts.drop_line(start, end);
        }
    }
    facts.plain &= crlf;
    let raw = buf.split_to(len).freeze();
    Ok(Some(ResponseHead {
        status,
        version,
        raw,
        facts,
    }))
}

/// Is a response with this `Content-Type` a stream of events (each read may wait
/// `stream_idle`, no whole deadline)?
pub fn is_event_stream(content_type: &[u8]) -> bool {
    content_type.starts_with(b"text/event-stream")
}

/// The field lines of a parsed head (after its first line, up to the empty line),
/// without their line ends: CRLF, or a bare LF, which the parser accepts.
pub fn field_lines(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    let rest = memchr::memchr(b'\n', raw).map_or(&[][..], |i| &raw[i + 1..]);
    rest.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .take_while(|l| !l.is_empty())
}

/// The fields of a parsed head, name and value (without the whitespace around it).
pub fn fields(raw: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    field_lines(raw).map(super::split_field)
}

/// The fields of a parsed head as a header map, the values sharing the head's bytes.
/// The parser already refused what a map would (its token and value rules are the
/// same), so nothing is left out.
pub fn field_map(raw: &Bytes) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields(raw) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(raw.slice_ref(value)),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// How a response's body is framed (RFC 9112 §6.3), and whether the connection may
/// carry another request after it. `head`: the request was HEAD. A response whose
/// framing is ambiguous (both lengths, a coding other than chunked last, a list of
/// differing lengths) is an error: a proxy must not guess.
pub fn response_framing(
    head: &ResponseHead,
    head_request: bool,
) -> Result<(Decoder, bool), HeadError> {
    let f = &head.facts;
    let keep_alive = !f.close
        && (head.version == Version::HTTP_11 || f.keep_alive && head.version == Version::HTTP_10);
    if f.bad_length {
        return Err(HeadError::Syntax("content-length"));
    }
    let (length, coded, chunked) = (f.length, f.coded, f.chunked);
    let status = head.status.as_u16();
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok((Decoder::Done, keep_alive));
    }
    if coded {
        if length.is_some() {
            return Err(HeadError::Syntax("content-length with transfer-encoding"));
        }
        if head.version == Version::HTTP_10 {
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
        response_framing(&parsed, head)
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
    fn a_response_heads_facts_come_from_its_fields() {
        let facts = |raw: &[u8]| {
            let mut buf = BytesMut::from(raw);
            response(&mut buf, 8192).unwrap().unwrap().facts
        };
        let f = facts(
            b"HTTP/1.1 200 OK\r\nCONTENT-TYPE: text/event-stream\r\nDate: x\r\n\
              Content-Length: 7\r\n\r\n",
        );
        assert!(f.event_stream && f.date && f.plain && !f.coded);
        assert_eq!(f.length, Some(7));
        let f = facts(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n");
        assert!(!f.event_stream && !f.date && f.plain && f.length.is_none());
        for hop in [
            &b"Connection: keep-alive"[..],
            b"Keep-Alive: timeout=5",
            b"Proxy-Connection: close",
            b"TE: trailers",
            b"Trailer: x",
            b"Upgrade: h2c",
            b"X-Request-Id: 1",
        ] {
            let raw = [
                &b"HTTP/1.1 200 OK\r\nA: 1\r\n"[..],
                hop,
                b"\r\nB: 2\r\n\r\n",
            ]
            .concat();
            let f = facts(&raw);
            assert!(f.plain, "{}", hop.escape_ascii());
            let line = (23, 23 + hop.len() + 2);
            assert_eq!(
                f.drops(),
                [(line.0 as u32, line.1 as u32)],
                "{}",
                hop.escape_ascii()
            );
        }
        // A Connection that names another field, or more lines to drop than are
        // kept track of: line by line.
        assert!(!facts(b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nX-A: 1\r\n\r\n").plain);
        // One that names only fields that go anyway does not.
        let f = facts(b"HTTP/1.1 200 OK\r\nConnection: Upgrade, Keep-Alive\r\nUpgrade: h2\r\n\r\n");
        assert!(f.plain && f.keep_alive && f.drops().len() == 2);
        assert!(
            !facts(b"HTTP/1.1 200 OK\r\nTE: a\r\nTE: b\r\nTE: c\r\nTE: d\r\nTE: e\r\n\r\n").plain
        );
        // A bare LF line end, anywhere, is rewritten line by line.
        for bare in [
            &b"HTTP/1.1 200 OK\r\nServer: b\n\r\n"[..],
            b"HTTP/1.1 200 OK\nServer: b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nServer: b\r\nA: c\nB: d\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nServer: b\r\n\n",
            b"HTTP/1.1 204 No Content\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\n",
        ] {
            assert!(!facts(bare).plain, "{}", bare.escape_ascii());
        }
        let mut buf = BytesMut::from(&b"HTTP/1.1 204 No Content\r\n\r\n"[..]);
        let (start, end) = response(&mut buf, 8192).unwrap().unwrap().field_block();
        assert_eq!(start, end);
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
