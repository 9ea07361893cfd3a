//! A client's request head forwarded as bytes: the head that passed validation goes
//! to an HTTP/1.1 backend as it came, with the request line in origin form, the
//! hop-by-hop fields removed (`Connection` and the fields it names, `Keep-Alive`,
//! `Proxy-Connection`, `TE`, `Trailer`, `Upgrade` unless upgrading), `Expect` removed
//! (levee answered it), and levee's fields in place of the client's: `Host` for an
//! absolute-form target, `X-Forwarded-For` (the incoming list, every line of it, with
//! the peer appended), `X-Forwarded-Proto` and `X-Request-Id`, and for a traced
//! request `traceparent` (levee's span as the backend's parent; `tracestate` goes on
//! as it came, as W3C Trace Context asks).
//!
//! The common head needs none of the removals: its field lines are copied in one
//! piece. Otherwise each line is looked at once, by its name only.

use bytes::{BufMut, Bytes, BytesMut};
use http::request::Parts;

use crate::http::validate::HeadFacts;

/// Fields levee writes itself, so the client's are dropped.
const REPLACED: [&[u8]; 3] = [b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"];

/// Fields that are hop-by-hop whatever `Connection` says (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&[u8]; 6] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
];

/// What levee adds to a forwarded head.
pub struct Added<'a> {
    /// The peer's address, appended to `X-Forwarded-For`.
    pub peer: &'a [u8],
    /// `http` or `https`.
    pub proto: &'a str,
    pub request_id: &'a [u8],
    /// The request is an upgrade levee forwards as one.
    pub upgrade: bool,
    /// A traced request's `traceparent`, in place of the client's.
    pub traceparent: Option<&'a [u8]>,
}

/// The backend's head for a request whose raw head is `raw` (request line to the
/// empty line, as read) and parsed form `parts`.
pub fn request_head(raw: &[u8], parts: &Parts, facts: &HeadFacts, added: &Added<'_>) -> Bytes {
    let traced = added.traceparent.is_some();
    let mut out = BytesMut::with_capacity(raw.len() + if traced { 230 } else { 160 });
    super::put_request_line(&mut out, parts);
    let fields = match memchr::memchr(b'\n', raw) {
        Some(i) => &raw[i + 1..],
        None => &[][..],
    };
    // Without the empty line that ends the head.
    let fields = fields
        .strip_suffix(b"\r\n")
        .or_else(|| fields.strip_suffix(b"\n"))
        .unwrap_or(fields);
    let absolute = parts.uri.authority();
    let mut forwarded: Vec<&[u8]> = Vec::new();
    // Lines ended by a bare LF (which the parser accepts) are rewritten with CRLF.
    let crlf = memchr::memchr_iter(b'\n', fields).all(|i| i > 0 && fields[i - 1] == b'\r');
    // A traced request's own traceparent is one more line to drop.
    let drops_traceparent = traced && facts.traceparent;
    let plain = crlf
        && !facts.hop_by_hop
        && !facts.expect
        && !facts.replaced
        && !drops_traceparent
        && absolute.is_none();
    if plain {
        out.put_slice(fields);
    } else {
        let named = connection_names(parts, added.upgrade);
        for line in lines(fields) {
            let (name, value) = split_field(line);
            let drop = (facts.hop_by_hop
                && (HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
                    && !(added.upgrade
                        && (name.eq_ignore_ascii_case(b"connection")
                            || name.eq_ignore_ascii_case(b"upgrade")))
                    || named.iter().any(|n| name.eq_ignore_ascii_case(n))))
                || (facts.expect && name.eq_ignore_ascii_case(b"expect"))
                || (absolute.is_some() && name.eq_ignore_ascii_case(b"host"))
                || REPLACED.iter().any(|r| name.eq_ignore_ascii_case(r))
                || (traced && name.eq_ignore_ascii_case(b"traceparent"));
            if name.eq_ignore_ascii_case(b"x-forwarded-for") && !value.is_empty() {
                forwarded.push(value);
            }
            if !drop {
                out.put_slice(line);
                out.put_slice(b"\r\n");
            }
        }
    }
    if let Some(a) = absolute {
        // The target's authority is the host the request was routed by.
        out.put_slice(b"host: ");
        out.put_slice(a.as_str().as_bytes());
        out.put_slice(b"\r\n");
    }
    out.put_slice(b"x-forwarded-for: ");
    for prior in forwarded {
        out.put_slice(prior);
        out.put_slice(b", ");
    }
    out.put_slice(added.peer);
    out.put_slice(b"\r\nx-forwarded-proto: ");
    out.put_slice(added.proto.as_bytes());
    out.put_slice(b"\r\nx-request-id: ");
    out.put_slice(added.request_id);
    if let Some(tp) = added.traceparent {
        out.put_slice(b"\r\ntraceparent: ");
        out.put_slice(tp);
    }
    out.put_slice(b"\r\n\r\n");
    out.freeze()
}

/// The fields a request's `Connection` names, beyond `keep-alive` and `close` (and
/// `upgrade` on an upgrade), and never the framing fields.
fn connection_names(parts: &Parts, upgrade: bool) -> Vec<&[u8]> {
    parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| super::list(v.as_bytes()))
        .filter(|t| {
            // The body's framing fields stay: levee frames the body as they say.
            !(t.is_empty()
                || t.eq_ignore_ascii_case(b"transfer-encoding")
                || t.eq_ignore_ascii_case(b"content-length")
                || t.eq_ignore_ascii_case(b"keep-alive")
                || t.eq_ignore_ascii_case(b"close")
                || upgrade && t.eq_ignore_ascii_case(b"upgrade"))
        })
        .collect()
}

/// The field lines of a head, without their line ends (CRLF, or a bare LF, which the
/// parser accepts).
fn lines(fields: &[u8]) -> impl Iterator<Item = &[u8]> {
    fields
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
}

/// A field line's name and its value without surrounding whitespace.
fn split_field(line: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memchr(b':', line) {
        Some(i) => (&line[..i], line[i + 1..].trim_ascii()),
        None => (line, &[]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewrite(raw: &str, upgrade: bool) -> String {
        rewrite_traced(raw, upgrade, None)
    }

    fn rewrite_traced(raw: &str, upgrade: bool, traceparent: Option<&[u8]>) -> String {
        let mut buf = BytesMut::from(raw.as_bytes());
        let head = crate::http1::parse::request(&mut buf, 8192)
            .unwrap()
            .unwrap();
        let facts = crate::http::validate::check_head(&head.parts).unwrap();
        let added = Added {
            peer: b"10.0.0.9",
            proto: "http",
            request_id: b"abc",
            upgrade,
            traceparent,
        };
        let out = request_head(&head.raw, &head.parts, &facts, &added);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn a_plain_head_goes_as_it_came_with_levees_fields() {
        assert_eq!(
            rewrite(
                "GET /a?b HTTP/1.1\r\nHost: x\r\nX-Custom:  v \r\n\r\n",
                false
            ),
            "GET /a?b HTTP/1.1\r\nHost: x\r\nX-Custom:  v \r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-request-id: abc\r\n\r\n"
        );
        // HTTP/1.0 goes on as 1.1; bare LF line ends become CRLF.
        assert!(rewrite("GET / HTTP/1.0\r\n\r\n", false)
            .starts_with("GET / HTTP/1.1\r\nx-forwarded-for"));
        assert!(rewrite("GET / HTTP/1.1\nHost: x\nA: b\r\n\n", false)
            .starts_with("GET / HTTP/1.1\r\nHost: x\r\nA: b\r\nx-forwarded-for"));
    }

    #[test]
    fn hop_by_hop_and_replaced_fields_go() {
        let out = rewrite(
            "POST /u HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\n\
             Keep-Alive: 5\r\nTE: trailers\r\nExpect: 100-continue\r\nX-Forwarded-For: 1.1.1.1\r\n\
             X-Forwarded-For: 2.2.2.2\r\nX-Request-Id: theirs\r\nX-Forwarded-Proto: https\r\n\
             Content-Length: 0\r\n\r\n",
            false,
        );
        assert_eq!(
            out,
            "POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\
             x-forwarded-for: 1.1.1.1, 2.2.2.2, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-request-id: abc\r\n\r\n"
        );
    }

    #[test]
    fn an_absolute_target_becomes_origin_form_and_the_host() {
        let out = rewrite(
            "GET http://api.example.com:8080/p?q HTTP/1.1\r\nHost: api.example.com:8080\r\n\r\n",
            false,
        );
        assert!(
            out.starts_with("GET /p?q HTTP/1.1\r\nhost: api.example.com:8080\r\n"),
            "{out}"
        );
        assert_eq!(out.matches("ost: ").count(), 1);
    }

    #[test]
    fn connection_never_removes_the_framing_fields() {
        let out = rewrite(
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: Transfer-Encoding, Content-Length\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert!(out.contains("\r\nTransfer-Encoding: chunked\r\n"), "{out}");
        assert!(!out.contains("Connection"), "{out}");
    }

    #[test]
    fn an_upgrade_keeps_connection_and_upgrade() {
        let out = rewrite(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            true,
        );
        assert!(
            out.contains("Connection: Upgrade\r\nUpgrade: websocket\r\n"),
            "{out}"
        );
        let out = rewrite(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            false,
        );
        assert!(!out.contains("pgrade"), "{out}");
    }

    const LEVEES: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_traced_request_carries_levees_traceparent_in_place_of_the_clients() {
        let out = rewrite_traced(
            "GET /t HTTP/1.1\r\nHost: x\r\n\
             TraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
             tracestate: congo=t61rcWkgMzE\r\nX-Custom: v\r\n\r\n",
            false,
            Some(LEVEES),
        );
        assert_eq!(
            out,
            "GET /t HTTP/1.1\r\nHost: x\r\ntracestate: congo=t61rcWkgMzE\r\nX-Custom: v\r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-request-id: abc\r\n\
             traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
        );
        // A traced request without a traceparent of its own keeps the one-piece copy
        // and gets levee's.
        let out = rewrite_traced(
            "GET /t HTTP/1.1\r\nHost: x\r\ntracestate: a=b\r\n\r\n",
            false,
            Some(LEVEES),
        );
        assert_eq!(
            out,
            "GET /t HTTP/1.1\r\nHost: x\r\ntracestate: a=b\r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-request-id: abc\r\n\
             traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
        );
    }

    #[test]
    fn an_untraced_request_keeps_the_clients_traceparent_in_the_plain_copy() {
        let raw = "GET /t HTTP/1.1\r\nHost: x\r\n\
                   traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n\r\n";
        let mut buf = BytesMut::from(raw.as_bytes());
        let head = crate::http1::parse::request(&mut buf, 8192)
            .unwrap()
            .unwrap();
        let facts = crate::http::validate::check_head(&head.parts).unwrap();
        assert!(facts.traceparent && !facts.replaced);
        assert_eq!(
            rewrite(raw, false),
            "GET /t HTTP/1.1\r\nHost: x\r\n\
             traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\r\n\
             x-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: http\r\nx-request-id: abc\r\n\r\n"
        );
    }
}
