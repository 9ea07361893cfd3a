//! Framing rules: a request whose framing is ambiguous never reaches a backend.
//!
//! Two halves. [`check_head`] judges a parsed request head (what hyper accepted) against
//! levee's rules: 400 for both `Content-Length` and `Transfer-Encoding`, any
//! `Transfer-Encoding` but exactly `chunked`, repeated or list-valued `Content-Length`,
//! HTTP/1.1 without `Host`, a target that is not origin-form (or a matching
//! absolute-form, or `OPTIONS *`). hyper itself answers 400 for what its parser refuses
//! (bare CR, NUL, obs-fold, bad versions) and 431 for oversized heads.
//!
//! [`FramingScan`] watches the raw bytes of an HTTP/1 connection as they are read,
//! for the rules a parsed request cannot show: a chunk-size line with no digits, which
//! hyper reads as the last chunk (so what follows would be read as a new request)
//! where other servers read an error; and `Content-Length` repeated, list-valued or
//! beside `Transfer-Encoding`, which hyper folds into one framing and drops from the
//! parsed head. It keeps a few bytes of state and no
//! buffer, and stops watching a connection whose framing it cannot follow (an
//! upgrade, a head levee rejects anyway), which then closes or becomes a tunnel.

use http::header::{
    HeaderName, ACCEPT, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE,
};
use http::request::Parts;
use http::{Method, Version};

/// Why a request head is refused (all answered 400 and a close).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    #[error("Transfer-Encoding other than exactly `chunked`")]
    TransferEncoding,
    #[error("repeated or list-valued Content-Length")]
    ContentLength,
    #[error("HTTP/1.1 request without Host")]
    NoHost,
    #[error("more than one Host, or a Host with userinfo")]
    Host,
    #[error("request target is not origin-form")]
    Target,
}

/// What the forwarding path needs to know of a request's headers, gathered by
/// [`check_head`]'s one pass over them (so the request path looks nothing up twice).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadFacts {
    /// `Content-Length`, when present and a number.
    pub content_length: Option<u64>,
    /// An `Upgrade` header.
    pub upgrade: bool,
    /// An `Accept` naming `text/event-stream` (the response may be a stream).
    pub accepts_event_stream: bool,
    /// `Connection` or another hop-by-hop header (`keep-alive`, `proxy-connection`,
    /// `te`, `trailer`, `upgrade`) to strip.
    pub hop_by_hop: bool,
    pub expect: bool,
    pub forwarded_for: bool,
    /// A field levee writes itself (`X-Forwarded-For`, `X-Forwarded-Proto`,
    /// `X-Request-Id`): a head forwarded as bytes drops the client's.
    pub replaced: bool,
}

/// Checks a parsed request head against levee's framing rules, in one pass over its
/// headers, and says what else the forwarding path needs of them.
pub fn check_head(req: &Parts) -> Result<HeadFacts, Invalid> {
    let mut facts = HeadFacts::default();
    let (mut lengths, mut cl) = (0u32, None);
    let (mut encodings, mut te) = (0u32, None);
    let (mut hosts, mut host) = (0u32, None);
    for (name, value) in &req.headers {
        if *name == CONTENT_LENGTH {
            lengths += 1;
            cl = Some(value);
        } else if *name == TRANSFER_ENCODING {
            encodings += 1;
            te = Some(value);
        } else if *name == HOST {
            hosts += 1;
            host = Some(value);
        } else if *name == ACCEPT {
            facts.accepts_event_stream |= value
                .to_str()
                .is_ok_and(|v| v.contains("text/event-stream"));
        } else if *name == UPGRADE {
            facts.upgrade = true;
            facts.hop_by_hop = true;
        } else if *name == EXPECT {
            facts.expect = true;
        } else if *name == X_FORWARDED_FOR {
            facts.forwarded_for = true;
            facts.replaced = true;
        } else if *name == X_FORWARDED_PROTO || *name == super::identity::X_REQUEST_ID {
            facts.replaced = true;
        } else if *name == CONNECTION || HOP_BY_HOP.contains(name) {
            facts.hop_by_hop = true;
        }
    }
    if lengths > 1 || cl.is_some_and(|v| v.as_bytes().contains(&b',')) {
        return Err(Invalid::ContentLength);
    }
    if let Some(te) = te {
        if cl.is_some() {
            return Err(Invalid::LengthAndChunked);
        }
        if encodings > 1 || !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err(Invalid::TransferEncoding);
        }
    }
    match (hosts, host) {
        (0, _) if req.version == Version::HTTP_11 => return Err(Invalid::NoHost),
        (2.., _) => return Err(Invalid::Host),
        (_, Some(host)) if host.as_bytes().contains(&b'@') => return Err(Invalid::Host),
        _ => {}
    }
    if req.version < Version::HTTP_2 && !origin_form(req) {
        return Err(Invalid::Target);
    }
    facts.content_length = match cl {
        Some(v) => {
            Some(crate::http1::parse::parse_length(v.as_bytes()).ok_or(Invalid::ContentLength)?)
        }
        None => None,
    };
    Ok(facts)
}

pub const HOP_BY_HOP_COUNT: usize = 5;

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded. `connection` and the
/// headers it names are handled separately; framing (`transfer-encoding`,
/// `content-length`) is hyper's on each side.
pub static HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    TE,
    TRAILER,
    UPGRADE,
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Is the target origin-form (`/path?query`), `*` for OPTIONS, or absolute-form naming
/// the Host the request carries, without userinfo?
fn origin_form(req: &Parts) -> bool {
    let uri = &req.uri;
    match (uri.scheme(), uri.authority()) {
        (None, None) => {
            uri.path().starts_with('/') || (uri.path() == "*" && req.method == Method::OPTIONS)
        }
        (Some(_), Some(authority)) => {
            let host = req.headers.get(HOST).map(|v| v.as_bytes());
            !authority.as_str().contains('@')
                && host.is_some_and(|h| h.eq_ignore_ascii_case(authority.as_str().as_bytes()))
        }
        _ => false,
    }
}

/// Longest part of a header line kept to read `Content-Length` and
/// `Transfer-Encoding` values; a longer such line is refused anyway.
const LINE_KEEP: usize = 64;

/// Watches the bytes of an HTTP/1 request stream for empty chunk-size lines.
#[derive(Debug)]
pub struct FramingScan {
    state: Scan,
    /// The current head line (its first [`LINE_KEEP`] bytes) and its full length.
    line: [u8; LINE_KEEP],
    line_len: usize,
    head: Head,
}

#[derive(Debug, Default, Clone, Copy)]
struct Head {
    /// A request line was seen (empty lines before it are skipped, as hyper does).
    started: bool,
    content_length: Option<u64>,
    chunked: bool,
    /// `Content-Length` repeated or list-valued.
    lengths: bool,
    /// Framing this scan cannot follow; levee refuses or tunnels such requests.
    opaque: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    Head,
    Body(u64),
    ChunkSize {
        digits: u32,
        after: bool,
    },
    ChunkData(u64),
    ChunkDataEnd,
    Trailers {
        empty: bool,
    },
    /// Not watching any more.
    Off,
}

impl Default for FramingScan {
    fn default() -> Self {
        FramingScan {
            state: Scan::Head,
            line: [0; LINE_KEEP],
            line_len: 0,
            head: Head::default(),
        }
    }
}

impl FramingScan {
    /// Feeds bytes just read from the client. True when they hold an empty chunk-size
    /// line (a violation; the scan then stops).
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self.state {
                Scan::Off => return false,
                Scan::Body(left) => {
                    let n = (bytes.len() as u64).min(left);
                    bytes = &bytes[n as usize..];
                    self.state = if n == left {
                        Scan::Head
                    } else {
                        Scan::Body(left - n)
                    };
                }
                Scan::ChunkData(left) => {
                    let n = (bytes.len() as u64).min(left);
                    bytes = &bytes[n as usize..];
                    self.state = if n == left {
                        Scan::ChunkDataEnd
                    } else {
                        Scan::ChunkData(left - n)
                    };
                }
                Scan::Head => {
                    // A head line at a time: most bytes are only kept (the first
                    // `LINE_KEEP` of the line), and only the end of a line is looked at.
                    let Some(end) = memchr::memchr(b'\n', bytes) else {
                        self.keep(bytes);
                        return false;
                    };
                    self.keep(&bytes[..end]);
                    bytes = &bytes[end + 1..];
                    if self.end_head_line() {
                        self.state = Scan::Off;
                        return true;
                    }
                }
                _ => {
                    let b = bytes[0];
                    bytes = &bytes[1..];
                    if self.byte(b) {
                        self.state = Scan::Off;
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Part of the current head line, up to its end.
    fn keep(&mut self, part: &[u8]) {
        if self.line_len < LINE_KEEP {
            let n = part.len().min(LINE_KEEP - self.line_len);
            self.line[self.line_len..self.line_len + n].copy_from_slice(&part[..n]);
        }
        self.line_len += part.len();
    }

    /// One byte of a head, a chunk-size line, a chunk's end or the trailers.
    fn byte(&mut self, b: u8) -> bool {
        match self.state {
            Scan::ChunkSize { digits, after } => match b {
                b'\r' if digits == 0 => return true,
                b'\r' => {}
                b'\n' => self.state = self.chunk_len().map_or(Scan::Off, |n| n),
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if !after => {
                    let digit = (b as char).to_digit(16).unwrap_or(0) as usize;
                    match self
                        .line_len
                        .checked_mul(16)
                        .and_then(|n| n.checked_add(digit))
                    {
                        Some(n) => {
                            self.line_len = n;
                            self.state = Scan::ChunkSize {
                                digits: digits.saturating_add(1),
                                after,
                            };
                        }
                        None => self.state = Scan::Off, // hyper refuses it too
                    }
                }
                _ if digits == 0 => self.state = Scan::Off, // hyper refuses it
                _ => {
                    self.state = Scan::ChunkSize {
                        digits,
                        after: true,
                    }
                }
            },
            Scan::ChunkDataEnd => match b {
                b'\r' => {}
                b'\n' => self.start_chunk(),
                _ => self.state = Scan::Off,
            },
            Scan::Trailers { empty } => match b {
                b'\r' => {}
                b'\n' if empty => self.end_message(),
                b'\n' => self.state = Scan::Trailers { empty: true },
                _ => self.state = Scan::Trailers { empty: false },
            },
            Scan::Head | Scan::Body(_) | Scan::ChunkData(_) | Scan::Off => {}
        }
        false
    }

    fn start_chunk(&mut self) {
        self.line_len = 0;
        self.state = Scan::ChunkSize {
            digits: 0,
            after: false,
        };
    }

    /// After a chunk-size line: its data, or the trailers after the last chunk.
    fn chunk_len(&mut self) -> Option<Scan> {
        let n = self.line_len as u64;
        self.line_len = 0;
        Some(if n == 0 {
            Scan::Trailers { empty: true }
        } else {
            Scan::ChunkData(n)
        })
    }

    fn end_message(&mut self) {
        self.head = Head::default();
        self.line_len = 0;
        self.state = Scan::Head;
    }

    /// The end of a head line (its `\n`): true when the head, now complete, breaks a
    /// framing rule.
    fn end_head_line(&mut self) -> bool {
        let len = self.line_len;
        self.line_len = 0;
        let kept = &self.line[..len.min(LINE_KEEP)];
        let line = kept.strip_suffix(b"\r").unwrap_or(kept);
        if !self.head.started {
            if !line.is_empty() {
                self.head.started = true;
                self.head.opaque |= line.starts_with(b"CONNECT ");
            }
            return false;
        }
        if line.is_empty() && len <= 1 {
            let head = self.head;
            self.head = Head::default();
            if head.lengths || head.chunked && head.content_length.is_some() {
                return true;
            }
            self.state = if head.opaque {
                Scan::Off
            } else if head.chunked {
                self.start_chunk();
                return false;
            } else {
                match head.content_length {
                    Some(n) if n > 0 => Scan::Body(n),
                    _ => Scan::Head,
                }
            };
            return false;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            return false;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        let whole = len <= LINE_KEEP;
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            if self.head.content_length.is_some() || value.contains(&b',') {
                self.head.lengths = true;
            }
            match (whole, n) {
                (true, Some(n)) => self.head.content_length = Some(n),
                _ => self.head.opaque = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if whole && !self.head.chunked && value.eq_ignore_ascii_case(b"chunked") {
                self.head.chunked = true;
            } else {
                self.head.opaque = true;
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.head.opaque = true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(raw: &str) -> Parts {
        let mut lines = raw.split("\r\n");
        let mut first = lines.next().unwrap().split(' ');
        let method = first.next().unwrap();
        let target = first.next().unwrap();
        let version = match first.next().unwrap() {
            "HTTP/1.0" => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        let mut b = http::Request::builder()
            .method(method)
            .uri(target)
            .version(version);
        for l in lines.filter(|l| !l.is_empty()) {
            let (k, v) = l.split_once(':').unwrap();
            b = b.header(k.trim(), v.trim());
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn the_head_check_says_what_forwarding_needs() {
        let facts = |raw: &str| check_head(&parts(raw)).unwrap();
        assert_eq!(facts("GET / HTTP/1.1\r\nHost: x"), HeadFacts::default());
        let f = facts(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nExpect: 100-continue\r\n\
             Accept: text/html, text/event-stream\r\nX-Forwarded-For: 10.0.0.1",
        );
        assert_eq!(f.content_length, Some(12));
        assert!(f.expect && f.accepts_event_stream && f.forwarded_for);
        assert!(!f.hop_by_hop && !f.upgrade);
        let f = facts("GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket");
        assert!(f.upgrade && f.hop_by_hop);
        for h in [
            "Connection: close",
            "Keep-Alive: 5",
            "TE: trailers",
            "Proxy-Connection: x",
        ] {
            assert!(
                facts(&format!("GET / HTTP/1.1\r\nHost: x\r\n{h}")).hop_by_hop,
                "{h}"
            );
        }
        assert!(!facts("GET / HTTP/1.1\r\nHost: x\r\nAccept: */*").accepts_event_stream);
    }

    #[test]
    fn heads_follow_the_framing_rules() {
        let ok = |raw| check_head(&parts(raw)).map(|_| ());
        assert_eq!(ok("GET / HTTP/1.1\r\nHost: x"), Ok(()));
        assert_eq!(ok("GET / HTTP/1.0"), Ok(()));
        assert_eq!(ok("GET / HTTP/1.1"), Err(Invalid::NoHost));
        assert_eq!(
            ok("GET / HTTP/1.1\r\nHost: x\r\nHost: y"),
            Err(Invalid::Host)
        );
        assert_eq!(ok("GET / HTTP/1.1\r\nHost: a@x"), Err(Invalid::Host));
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked"),
            Err(Invalid::LengthAndChunked)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked"),
            Err(Invalid::TransferEncoding)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
            Err(Invalid::TransferEncoding)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5"),
            Err(Invalid::ContentLength)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5"),
            Err(Invalid::ContentLength)
        );
        assert_eq!(
            ok("GET http://a/ HTTP/1.1\r\nHost: a"),
            Ok(()),
            "absolute-form naming its Host"
        );
        assert_eq!(
            ok("GET http://a/ HTTP/1.1\r\nHost: b"),
            Err(Invalid::Target)
        );
        assert_eq!(ok("GET * HTTP/1.1\r\nHost: b"), Err(Invalid::Target));
        assert_eq!(ok("OPTIONS * HTTP/1.1\r\nHost: b"), Ok(()));
    }

    fn scan(chunks: &[&[u8]]) -> bool {
        let mut s = FramingScan::default();
        chunks.iter().any(|c| s.feed(c))
    }

    #[test]
    fn an_empty_chunk_size_line_is_seen_however_the_bytes_are_split() {
        let bad = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\r\n0\r\n\r\n";
        assert!(scan(&[bad]));
        for cut in 1..bad.len() {
            assert!(scan(&[&bad[..cut], &bad[cut..]]), "split at {cut}");
        }
        let byte_by_byte: Vec<&[u8]> = bad.chunks(1).collect();
        assert!(scan(&byte_by_byte));
    }

    #[test]
    fn valid_streams_pass_and_keep_their_place() {
        let good = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhe\r\n\r\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n\
GET / HTTP/1.1\r\nHost: x\r\n\r\n\
POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n\r\n\r\n\r\n\
POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(!scan(&[good]));
        for cut in 1..good.len() {
            assert!(!scan(&[&good[..cut], &good[cut..]]), "split at {cut}");
        }
        // The second message's chunk-size line is empty: still seen after all that.
        let mut later = good.to_vec();
        later.extend_from_slice(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\r\n",
        );
        assert!(scan(&[&later]));
    }

    #[test]
    fn lengths_hyper_folds_are_seen_in_the_raw_head() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            assert!(scan(&[head]), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn an_upgrade_stops_the_scan() {
        let tunnel = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\r\n\r\n";
        assert!(!scan(&[tunnel]));
    }
}
