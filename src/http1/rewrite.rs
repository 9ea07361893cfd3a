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

use bytes::{BufMut, BytesMut};
use http::request::Parts;

use super::parse::ResponseHead;
use super::HOP_BY_HOP;
use crate::http::validate::HeadFacts;

/// Fields levee writes itself, so the client's are dropped.
const REPLACED: [&[u8]; 3] = [b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"];

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
pub fn request_head(raw: &[u8], parts: &Parts, facts: &HeadFacts, added: &Added<'_>) -> BytesMut {
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
        for line in super::parse::field_lines(raw) {
            let (name, value) = super::split_field(line);
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
    // Not frozen: a Vec-backed buffer frozen below its capacity allocates a shared
    // header, and the head is only ever borrowed.
    out
}

/// The fields a request's `Connection` names, to drop (see [`names_a_field`]).
fn connection_names(parts: &Parts, upgrade: bool) -> Vec<&[u8]> {
    parts
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| super::list(v.as_bytes()))
        .filter(|t| names_a_field(t, upgrade))
        .collect()
}

/// Does a `Connection` token name a field to drop? Not `keep-alive` or `close`, nor
/// `upgrade` on an upgrade, and never a framing field: levee frames the body as they
/// say.
fn names_a_field(token: &[u8], upgrade: bool) -> bool {
    !(token.is_empty()
        || token.eq_ignore_ascii_case(b"transfer-encoding")
        || token.eq_ignore_ascii_case(b"content-length")
        || token.eq_ignore_ascii_case(b"keep-alive")
        || token.eq_ignore_ascii_case(b"close")
        || upgrade && token.eq_ignore_ascii_case(b"upgrade"))
}

/// Writes the field lines of a backend's response head for the client, as they came,
/// without the hop-by-hop ones (`Connection` and the fields it names, `Keep-Alive`,
/// `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`; an accepted upgrade keeps
/// `Connection` and `Upgrade`) and the backend's `X-Request-Id` (levee writes the
/// request's own). `drop_coding`: the body is not written chunked (an HTTP/1.0
/// client, or no body), so `Transfer-Encoding` goes too. Framing fields stay whatever
/// `Connection` names: levee writes the body as they say.
///
/// The parser marked the lines to drop in most heads (`Connection: keep-alive`, as a
/// rule): the lines between them are copied in pieces, not looked at again.
pub fn response_head(head: &ResponseHead, upgrade: bool, drop_coding: bool, out: &mut BytesMut) {
    let f = &head.facts;
    if f.plain && !upgrade && !(f.coded && drop_coding) {
        let (start, end) = head.field_block();
        let mut at = start;
        for &(from, to) in f.drops() {
            out.put_slice(&head.raw[at..from as usize]);
            at = to as usize;
        }
        out.put_slice(&head.raw[at..end]);
    } else {
        response_fields(&head.raw, upgrade, drop_coding, out);
    }
}

/// [`response_head`]'s line by line path.
fn response_fields(raw: &[u8], upgrade: bool, drop_coding: bool, out: &mut BytesMut) {
    // The fields `Connection` names beyond keep-alive and close: most answers have
    // none, and then nothing is collected.
    let mut named: Vec<&[u8]> = Vec::new();
    for (name, value) in super::parse::fields(raw) {
        if name.eq_ignore_ascii_case(b"connection") {
            named.extend(super::list(value).filter(|t| names_a_field(t, upgrade)));
        }
    }
    for line in super::parse::field_lines(raw) {
        let (name, _) = super::split_field(line);
        let keep = if name.eq_ignore_ascii_case(b"transfer-encoding") {
            !drop_coding
        } else if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            upgrade
                && (name.eq_ignore_ascii_case(b"connection")
                    || name.eq_ignore_ascii_case(b"upgrade"))
        } else {
            !(name.eq_ignore_ascii_case(b"x-request-id")
                || named.iter().any(|n| name.eq_ignore_ascii_case(n)))
        };
        if keep {
            out.put_slice(line);
            out.put_slice(b"\r\n");
        }
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

    /// A backend's head through [`response_head`]: the field lines written, and
    /// whether they went in one piece.
    fn answer(raw: &str, upgrade: bool, drop_coding: bool) -> (String, bool) {
        let mut buf = BytesMut::from(raw.as_bytes());
        let head = crate::http1::parse::response(&mut buf, 8192)
            .unwrap()
            .unwrap();
        let mut out = BytesMut::new();
        response_head(&head, upgrade, drop_coding, &mut out);
        (String::from_utf8(out.to_vec()).unwrap(), head.facts.plain)
    }

    #[test]
    fn a_plain_answer_keeps_its_lines_as_they_came() {
        let (out, plain) = answer(
            "HTTP/1.1 200 OK\r\nServer: b\r\nConnection: keep-alive\r\n\
             Content-Type: text/plain\r\nContent-Length: 5\r\nX-Request-Id: b\r\n\
             Date: Mon, 07 Dec 2026 08:00:00 GMT\r\nKeep-Alive: timeout=5\r\n\r\n",
            false,
            false,
        );
        assert_eq!(
            out,
            "Server: b\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\
             Date: Mon, 07 Dec 2026 08:00:00 GMT\r\n"
        );
        assert!(plain);
    }

    #[test]
    fn an_answers_hop_by_hop_lines_and_request_id_go() {
        let (out, plain) = answer(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\
             Keep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\n\
             Trailer: x-sum\r\nUpgrade: h2c\r\nX-Request-Id: backends\r\n\
             Transfer-Encoding: chunked\r\nServer: b\r\n\r\n",
            false,
            false,
        );
        assert_eq!(out, "Transfer-Encoding: chunked\r\nServer: b\r\n");
        assert!(!plain);
    }

    #[test]
    fn an_answer_without_a_chunked_body_loses_its_coding() {
        let (out, plain) = answer(
            "HTTP/1.1 200 OK\nTransfer-Encoding: chunked\nServer: b\n\n",
            false,
            true,
        );
        // Bare LF line ends are written as CRLF.
        assert_eq!(out, "Server: b\r\n");
        assert!(!plain);
        // A plain head whose coding goes is written line by line too.
        let (out, plain) = answer(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nServer: b\r\n\r\n",
            false,
            true,
        );
        assert_eq!(out, "Server: b\r\n");
        assert!(plain);
    }

    #[test]
    fn connection_never_drops_an_answers_framing() {
        let (out, plain) = answer(
            "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n",
            false,
            false,
        );
        assert_eq!(out, "Content-Length: 2\r\n");
        assert!(!plain);
    }

    #[test]
    fn an_accepted_upgrade_keeps_connection_and_upgrade() {
        let (out, _) = answer(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
             Upgrade: websocket\r\nKeep-Alive: 1\r\n\r\n",
            true,
            true,
        );
        assert_eq!(out, "Connection: Upgrade\r\nUpgrade: websocket\r\n");
    }
}
