//! Framing rules: a request whose framing is ambiguous never reaches a backend.
//!
//! [`check_head`] judges a parsed request head (HTTP/1.1 from levee's own codec, or
//! HTTP/2 from hyper) against levee's rules: 400 for both `Content-Length` and
//! `Transfer-Encoding`, any `Transfer-Encoding` but exactly `chunked`, a
//! `Content-Length` that is repeated, list-valued or not digits only, HTTP/1.1 without
//! `Host`, a target that is not origin-form (or a matching absolute-form, or `OPTIONS
//! *`). The HTTP/1.1 codec refuses what cannot be parsed at all (bare CR, NUL,
//! obs-fold, bad versions: 400; oversized heads: 431), and its chunked decoder the
//! body framing other servers would read differently (see [`crate::http1::framing`]).

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
    /// A `traceparent`: a head forwarded as bytes for a traced request drops it for
    /// levee's (an untraced request's goes on as it came).
    pub traceparent: bool,
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
        } else if *name == X_FORWARDED_PROTO || *name == X_REQUEST_ID {
            facts.replaced = true;
        } else if *name == CONNECTION || HOP_BY_HOP.contains(name) {
            facts.hop_by_hop = true;
        } else if *name == crate::trace::TRACEPARENT_NAME {
            facts.traceparent = true;
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

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Is the target origin-form (`/path?query`), `*` for OPTIONS, or absolute-form naming
/// the Host the request carries, without userinfo?
fn origin_form(req: &Parts) -> bool {
    let uri = &req.uri;
    match (uri.scheme(), uri.authority()) {
        (None, None) => {
            uri.path().starts_with('/') || (uri.path() == "*" && req.method == Method::OPTIONS)
        }
        (Some(_), Some(authority)) => {
            let host = super::find_header(&req.headers, &HOST).map(|v| v.as_bytes());
            !authority.as_str().contains('@')
                && host.is_some_and(|h| h.eq_ignore_ascii_case(authority.as_str().as_bytes()))
        }
        _ => false,
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
}
