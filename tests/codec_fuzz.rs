//! Property tests (a bounded fuzz run on stable Rust) for levee's HTTP/1.1 codec:
//! the head parsers (`http1::parse`) and the body decoders (`http1::framing`).
//!
//! - Never a panic, on arbitrary bytes and on structured requests and responses with
//!   random mutations (inserted, deleted and replaced bytes, odd line endings, hostile
//!   framing fields).
//! - Splitting invariance: the same bytes read in different pieces give the same head,
//!   the same body data, trailers, end, error and leftover bytes.
//! - Generated valid chunked bodies (random sizes, hex case, leading zeros,
//!   extensions, trailers) decode to the data they carry, and the bytes after the body
//!   are left untouched.
//! - Every request levee accepts (parsed, `check_head` passed, and the client driver's
//!   body framing rule) is framed as an independent reading of RFC 9112 reads it
//!   (`common/rfc9112.rs`); so is every response, and every chunked body both accept.
//!
//! The case budget is fixed (see `CASES`): the whole file runs in seconds in a debug
//! build. `PROPTEST_CASES` raises it for a longer local run.

#[path = "common/rfc9112.rs"]
mod rfc9112;

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Version;
use levee::http::validate::check_head;
use levee::http1::framing::{Decoded, Decoder, FramingError, MAX_CHUNK_EXT, MAX_TRAILERS};
use levee::http1::parse::{self, HeadError};
use proptest::prelude::*;
use proptest::test_runner::Config;
use rfc9112::Framing;

/// Cases per property (each case is a few parses or decodes of at most a few KB).
const CASES: u32 = 1000;

fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------
// Generators.

/// Bytes, shown escaped when a case fails.
#[derive(Clone)]
struct Wire(Vec<u8>);

impl std::fmt::Debug for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

fn wire(s: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Wire> {
    s.prop_map(Wire)
}

/// Bytes drawn mostly from what HTTP/1 heads and chunked bodies are made of.
fn http_byte() -> impl Strategy<Value = u8> {
    const ALPHABET: &[u8] =
        b"GETPOSHAD /?*:;,=\"\\\r\n\t\x00\x0b\x7f\xff0123456789abcdefABCDEFxX-.HTTP/1.01chunked";
    prop_oneof![
        3 => proptest::sample::select(ALPHABET),
        1 => any::<u8>(),
    ]
}

fn arbitrary_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max),
        proptest::collection::vec(http_byte(), 0..max),
    ]
}

fn pick(items: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(items).prop_map(str::to_string)
}

/// A line ending: mostly CRLF, sometimes one a parser might read otherwise.
fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        12 => Just("\r\n"),
        1 => Just("\n"),
        1 => Just("\r"),
        1 => Just(" \r\n"),
        1 => Just("\r\r\n"),
    ]
}

fn field() -> impl Strategy<Value = (String, String)> {
    let cl = pick(&[
        "0",
        "5",
        "05",
        "+5",
        "-1",
        " 5",
        "5 ",
        "5, 5",
        "5,5",
        "5, 6",
        "0x5",
        "5a",
        "",
        "99999999999999999999",
        "18446744073709551615",
        "1 2",
    ]);
    let te = pick(&[
        "chunked",
        "Chunked",
        "CHUNKED",
        "chunked, chunked",
        "gzip, chunked",
        "chunked, gzip",
        "identity",
        " chunked",
        "chunked\t",
        "\"chunked\"",
        "chunked,",
        ",chunked",
        "",
        "xchunked",
        "chunked;q=1",
    ]);
    let cl_name = pick(&[
        "Content-Length",
        "content-length",
        "CONTENT-LENGTH",
        "Content-Length ",
        "Content_Length",
    ]);
    let te_name = pick(&[
        "Transfer-Encoding",
        "transfer-encoding",
        "Transfer-Encoding ",
        " Transfer-Encoding",
        "Transfer-Encodin",
    ]);
    let other = (
        pick(&[
            "Host",
            "host",
            "Connection",
            "Expect",
            "Upgrade",
            "TE",
            "Trailer",
            "X-A",
            "Keep-Alive",
        ]),
        pick(&[
            "x",
            "a@b",
            "",
            "close",
            "keep-alive",
            "100-continue",
            "websocket",
            "trailers",
            "v v",
            "caf\u{e9}",
        ]),
    );
    prop_oneof![
        2 => (cl_name, cl),
        2 => (te_name, te),
        3 => other,
    ]
}

/// A request head with framing fields drawn from hostile variants, then mutated.
fn mutated_request() -> impl Strategy<Value = Vec<u8>> {
    (
        pick(&["", "", "", "\r\n", "\n", "\r", "\r\r\n", "\n\r\n"]),
        pick(&[
            "GET", "POST", "PUT", "HEAD", "OPTIONS", "CONNECT", "get", "G ET", "PO(ST",
        ]),
        pick(&[
            "/",
            "/a?b=1",
            "*",
            "http://x/p",
            "x:443",
            "//x",
            "/a b",
            "/%00",
        ]),
        pick(&[
            "HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.2", "http/1.1",
        ]),
        proptest::option::weighted(0.9, Just(("Host".to_string(), "x".to_string()))),
        proptest::collection::vec((field(), eol()), 0..6),
        eol(),
        body_bytes(),
        mutations(),
    )
        .prop_map(
            |(lead, method, target, version, host, fields, last, body, muts)| {
                let mut v = format!("{lead}{method} {target} {version}\r\n");
                if let Some((n, h)) = host {
                    v.push_str(&format!("{n}: {h}\r\n"));
                }
                for ((name, value), eol) in fields {
                    v.push_str(&format!("{name}: {value}{eol}"));
                }
                v.push_str(last);
                let mut bytes = v.into_bytes();
                bytes.extend_from_slice(&body);
                mutate(bytes, &muts)
            },
        )
}

/// What may follow a head: nothing, bytes, a chunked body, another request.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        arbitrary_bytes(32),
        valid_chunked().prop_map(|c| c.wire),
        Just(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Insert(usize, u8),
    Delete(usize),
    Replace(usize, u8),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let byte = prop_oneof![
        proptest::sample::select(&b"\r\n\0 \t:,;\x0b\x7f\xff\"0aF"[..]),
        any::<u8>(),
    ];
    let m = prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Replace(i, b)),
    ];
    prop_oneof![
        2 => Just(Vec::new()),
        3 => proptest::collection::vec(m, 1..4),
    ]
}

fn mutate(mut bytes: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = bytes.len();
        match *m {
            Mutation::Insert(i, b) => bytes.insert(i % (len + 1), b),
            Mutation::Delete(i) if len > 0 => {
                bytes.remove(i % len);
            }
            Mutation::Replace(i, b) if len > 0 => bytes[i % len] = b,
            _ => {}
        }
    }
    bytes
}

fn mutated_response() -> impl Strategy<Value = Vec<u8>> {
    (
        pick(&["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0"]),
        pick(&[
            "200 OK",
            "204 No Content",
            "304 Not Modified",
            "101 Switching",
            "100 Continue",
            "404 ",
            "999 X",
            "20 X",
        ]),
        proptest::collection::vec((field(), eol()), 0..6),
        eol(),
        body_bytes(),
        mutations(),
    )
        .prop_map(|(version, status, fields, last, body, muts)| {
            let mut v = format!("{version} {status}\r\n");
            for ((name, value), eol) in fields {
                v.push_str(&format!("{name}: {value}{eol}"));
            }
            v.push_str(last);
            let mut bytes = v.into_bytes();
            bytes.extend_from_slice(&body);
            mutate(bytes, &muts)
        })
}

/// Cut points for splitting `len` bytes into pieces.
fn splits() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(any::<usize>(), 0..8)
}

fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    if input.is_empty() {
        return vec![input];
    }
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.push(0);
    at.push(input.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &input[w[0]..w[1]]).collect()
}

/// A valid chunked body, what it carries, and its wire form.
#[derive(Debug, Clone)]
struct ValidChunked {
    data: Vec<u8>,
    trailers: Vec<(String, String)>,
    wire: Vec<u8>,
}

fn chunk_ext() -> impl Strategy<Value = String> {
    let name = "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,8}";
    let quoted = "[ !#-\\[\\]-~]{0,10}".prop_map(|s| format!("\"{s}\""));
    let value = prop_oneof![
        Just(None),
        "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,8}".prop_map(Some),
        quoted.prop_map(Some),
        Just(Some("\"a;b=\\\"c\\\"\"".to_string())),
    ];
    (name, value, pick(&["", " ", "\t"])).prop_map(|(n, v, ws)| match v {
        Some(v) => format!("{ws};{ws}{n}{ws}={ws}{v}"),
        None => format!("{ws};{n}"),
    })
}

fn valid_chunked() -> impl Strategy<Value = ValidChunked> {
    let chunk = (
        prop_oneof![
            8 => proptest::collection::vec(any::<u8>(), 1..64),
            1 => proptest::collection::vec(any::<u8>(), 64..3000),
            // Data that looks like framing.
            1 => Just(b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n".to_vec()),
        ],
        0..4usize,     // leading zeros
        any::<bool>(), // upper-case hex
        proptest::collection::vec(chunk_ext(), 0..3),
    );
    let trailer = (
        "[a-zA-Z0-9!#$%&'*+.^_`|~-]{1,12}",
        "[ -~]{0,20}".prop_map(|s| s.trim().to_string()),
    );
    (
        proptest::collection::vec(chunk, 0..6),
        0..3usize,
        proptest::collection::vec(chunk_ext(), 0..2),
        proptest::collection::vec(trailer, 0..4),
    )
        .prop_map(|(chunks, last_zeros, last_ext, trailers)| {
            let mut wire = Vec::new();
            let mut data = Vec::new();
            for (bytes, zeros, upper, exts) in chunks {
                let size = if upper {
                    format!("{:X}", bytes.len())
                } else {
                    format!("{:x}", bytes.len())
                };
                wire.extend_from_slice("0".repeat(zeros).as_bytes());
                wire.extend_from_slice(size.as_bytes());
                for e in exts {
                    wire.extend_from_slice(e.as_bytes());
                }
                wire.extend_from_slice(b"\r\n");
                wire.extend_from_slice(&bytes);
                wire.extend_from_slice(b"\r\n");
                data.extend_from_slice(&bytes);
            }
            wire.extend_from_slice("0".repeat(last_zeros + 1).as_bytes());
            for e in last_ext {
                wire.extend_from_slice(e.as_bytes());
            }
            wire.extend_from_slice(b"\r\n");
            for (n, v) in &trailers {
                wire.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
            }
            wire.extend_from_slice(b"\r\n");
            ValidChunked {
                data,
                trailers,
                wire,
            }
        })
}

// ---------------------------------------------------------------------------------
// Heads.

/// What `parse::request` made of some bytes, comparable across runs.
#[derive(Debug, PartialEq)]
enum HeadOutcome {
    Partial,
    Head {
        method: String,
        uri: String,
        version: Version,
        headers: Vec<(String, Vec<u8>)>,
        raw: Vec<u8>,
        /// Bytes of the input consumed (skipped empty lines and the head).
        consumed: usize,
    },
    Error(HeadError),
}

fn headers_of(map: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    map.iter()
        .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn request_whole(input: &[u8], max: usize) -> (HeadOutcome, Option<parse::RequestHead>) {
    let mut buf = BytesMut::from(input);
    match parse::request(&mut buf, max) {
        Ok(None) => (HeadOutcome::Partial, None),
        Err(e) => (HeadOutcome::Error(e), None),
        Ok(Some(head)) => {
            let consumed = input.len() - buf.len();
            // What is left is exactly the input after the head.
            assert_eq!(&buf[..], &input[consumed..]);
            // The head's bytes are the input's, after skipped empty lines only.
            let skipped = consumed - head.raw.len();
            assert_eq!(&head.raw[..], &input[skipped..consumed]);
            assert!(input[..skipped].iter().all(|b| *b == b'\r' || *b == b'\n'));
            let outcome = HeadOutcome::Head {
                method: head.parts.method.to_string(),
                uri: head.parts.uri.to_string(),
                version: head.parts.version,
                headers: headers_of(&head.parts.headers),
                raw: head.raw.to_vec(),
                consumed,
            };
            (outcome, Some(head))
        }
    }
}

/// As the client driver reads: each piece appended, the parser called again.
fn request_pieces(pieces: &[&[u8]], max: usize) -> HeadOutcome {
    let mut buf = BytesMut::new();
    let mut fed = 0;
    for piece in pieces {
        buf.extend_from_slice(piece);
        fed += piece.len();
        match parse::request(&mut buf, max) {
            Ok(None) => {}
            Err(e) => return HeadOutcome::Error(e),
            Ok(Some(head)) => {
                return HeadOutcome::Head {
                    method: head.parts.method.to_string(),
                    uri: head.parts.uri.to_string(),
                    version: head.parts.version,
                    headers: headers_of(&head.parts.headers),
                    raw: head.raw.to_vec(),
                    consumed: fed - buf.len(),
                }
            }
        }
    }
    HeadOutcome::Partial
}

/// The client driver's rule for a request body's framing (`request_framing` in
/// `src/http1/conn.rs`, private there; the differential test checks the real one end
/// to end): one `Content-Length` of digits only, or exactly one
/// `Transfer-Encoding: chunked` on HTTP/1.1 without `Content-Length`.
fn driver_framing(parts: &http::request::Parts) -> Framing {
    let mut lengths = parts.headers.get_all(CONTENT_LENGTH).iter();
    let mut codings = parts.headers.get_all(TRANSFER_ENCODING).iter();
    let (cl, te) = (lengths.next(), codings.next());
    if lengths.next().is_some() || codings.next().is_some() {
        return Framing::Invalid;
    }
    match (cl, te) {
        (None, None) => Framing::None,
        (Some(v), None) => {
            parse::parse_length(v.as_bytes()).map_or(Framing::Invalid, Framing::Length)
        }
        (None, Some(v))
            if parts.version == Version::HTTP_11
                && v.as_bytes().eq_ignore_ascii_case(b"chunked") =>
        {
            Framing::Chunked
        }
        _ => Framing::Invalid,
    }
}

/// Checks a request levee parsed: when levee accepts it, RFC 9112 frames it the same.
fn check_request_framing(head: &parse::RequestHead) -> Result<(), TestCaseError> {
    let parts = &head.parts;
    let driver = driver_framing(parts);
    let checked = check_head(parts);
    let fields: Vec<(&[u8], &[u8])> = parts
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect();
    let rfc = rfc9112::request_framing(parts.version == Version::HTTP_11, &fields);
    let Ok(facts) = checked else {
        return Ok(());
    };
    if driver == Framing::Invalid {
        return Ok(());
    }
    prop_assert_ne!(
        rfc,
        Framing::Invalid,
        "levee accepted a request RFC 9112 cannot frame"
    );
    prop_assert_eq!(
        driver,
        rfc,
        "levee frames an accepted request otherwise than RFC 9112"
    );
    if let Framing::Length(n) = driver {
        prop_assert_eq!(facts.content_length, Some(n));
    }
    // The fields that decide framing are ones RFC 9112 reads the same way: a single
    // Content-Length or a lone `chunked`, never both.
    prop_assert!(
        !(parts.headers.contains_key(CONTENT_LENGTH)
            && parts.headers.contains_key(TRANSFER_ENCODING))
    );
    Ok(())
}

fn request_properties(input: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
    for max in [64, 16 * 1024] {
        let (whole, head) = request_whole(input, max);
        let split = request_pieces(&pieces(input, cuts), max);
        // A head too large is refused when the limit is passed; one also malformed
        // past the limit is refused for either reason, by how much had arrived.
        let either_refusal = matches!(
            (&whole, &split),
            (
                HeadOutcome::Error(_),
                HeadOutcome::Error(HeadError::TooLarge)
            ) | (
                HeadOutcome::Error(HeadError::TooLarge),
                HeadOutcome::Error(_)
            )
        );
        if !either_refusal {
            prop_assert_eq!(&whole, &split, "the head reads otherwise when split");
        }
        if let Some(head) = head {
            check_request_framing(&head)?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn request_heads_from_arbitrary_bytes(input in wire(arbitrary_bytes(400)), cuts in splits()) {
        request_properties(&input.0, &cuts)?;
    }

    #[test]
    fn request_heads_mutated(input in wire(mutated_request()), cuts in splits()) {
        request_properties(&input.0, &cuts)?;
    }

    #[test]
    fn response_heads_from_arbitrary_bytes(input in wire(arbitrary_bytes(400)), head in any::<bool>()) {
        response_properties(&input.0, head)?;
    }

    #[test]
    fn response_heads_mutated(input in wire(mutated_response()), head in any::<bool>()) {
        response_properties(&input.0, head)?;
    }
}

fn response_properties(input: &[u8], head_request: bool) -> Result<(), TestCaseError> {
    let mut buf = BytesMut::from(input);
    let Ok(Some(head)) = parse::response(&mut buf, 16 * 1024) else {
        return Ok(());
    };
    let consumed = input.len() - buf.len();
    prop_assert_eq!(&buf[..], &input[consumed..]);
    let fields: Vec<(&[u8], &[u8])> = head.fields().collect();
    let rfc = rfc9112::response_framing(
        head.status.as_u16(),
        head_request,
        head.version == Version::HTTP_11,
        &fields,
    );
    let Ok((decoder, _keep)) = parse::response_framing(&head, head_request) else {
        return Ok(());
    };
    let levee = match decoder {
        Decoder::Done => Framing::None,
        Decoder::Length(n) => Framing::Length(n),
        Decoder::Chunked(_) => Framing::Chunked,
        Decoder::Eof => Framing::Close,
    };
    let rfc = match rfc {
        Framing::Length(0) => Framing::None,
        r => r,
    };
    prop_assert_eq!(
        levee,
        rfc,
        "levee frames a response otherwise than RFC 9112"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Bodies.

/// Everything a decoder made of some input, comparable across splits.
#[derive(Debug, PartialEq)]
struct BodyOutcome {
    data: Vec<u8>,
    trailers: Option<Vec<(String, Vec<u8>)>>,
    ended: bool,
    error: Option<FramingError>,
    /// What is left in the buffer once decoding stopped (later pieces appended).
    left: Vec<u8>,
    /// `Decoder::eof()` at the end, when the body had not ended.
    eof: Option<Result<(), FramingError>>,
}

fn decode_pieces(mut d: Decoder, pieces: &[&[u8]]) -> BodyOutcome {
    let mut buf = BytesMut::new();
    let mut out = BodyOutcome {
        data: Vec::new(),
        trailers: None,
        ended: false,
        error: None,
        left: Vec::new(),
        eof: None,
    };
    let mut stopped = false;
    for piece in pieces {
        buf.extend_from_slice(piece);
        while !stopped {
            match d.decode(&mut buf) {
                Ok(Decoded::Data(b)) => {
                    assert!(!b.is_empty(), "an empty data frame");
                    out.data.extend_from_slice(&b);
                }
                Ok(Decoded::Trailers(t)) => {
                    out.trailers = Some(headers_of(&t));
                    out.ended = true;
                    stopped = true;
                }
                Ok(Decoded::End) => {
                    out.ended = true;
                    stopped = true;
                }
                Ok(Decoded::NeedMore) => break,
                Err(e) => {
                    out.error = Some(e);
                    stopped = true;
                }
            }
        }
    }
    if out.ended {
        assert!(d.is_done());
        assert_eq!(d.decode(&mut BytesMut::new()), Ok(Decoded::End));
    }
    if !stopped {
        out.eof = Some(d.eof().map(|_| ()));
    }
    out.left = buf.to_vec();
    out
}

fn split_invariance(
    d: Decoder,
    input: &[u8],
    cuts: &[usize],
) -> Result<BodyOutcome, TestCaseError> {
    let whole = decode_pieces(d.clone(), &[input]);
    let split = decode_pieces(d.clone(), &pieces(input, cuts));
    prop_assert_eq!(&whole, &split, "the body reads otherwise when split");
    if input.len() <= 256 {
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let byte_by_byte = decode_pieces(d, &bytes);
        prop_assert_eq!(
            &whole,
            &byte_by_byte,
            "the body reads otherwise byte by byte"
        );
    }
    Ok(whole)
}

/// Checks levee's chunked decoder against the RFC's grammar on the same bytes.
fn against_rfc(input: &[u8], levee: &BodyOutcome) -> Result<(), TestCaseError> {
    let rfc = rfc9112::chunked(input);
    match &rfc {
        rfc9112::Chunked::Complete(body) => {
            let within_limits = body.max_digits <= 16
                && body.max_ext <= MAX_CHUNK_EXT
                && body.trailer_bytes <= MAX_TRAILERS
                && body.trailers.len() <= 32;
            if levee.ended {
                prop_assert_eq!(
                    &levee.data,
                    &body.data,
                    "decoded data differs from RFC 9112's"
                );
                prop_assert_eq!(
                    &levee.left[..],
                    &input[body.consumed..],
                    "the body ends elsewhere than RFC 9112's"
                );
                // Compared name by name, each name's values in order: levee keeps
                // trailers in a header map, which lists a repeated name's values
                // together, and the order of different names carries no meaning.
                let mut ours: Vec<(String, Vec<u8>)> = body
                    .trailers
                    .iter()
                    .map(|(n, v)| (String::from_utf8_lossy(n).to_ascii_lowercase(), v.clone()))
                    .collect();
                let mut theirs = levee.trailers.clone().unwrap_or_default();
                ours.sort_by(|a, b| a.0.cmp(&b.0));
                theirs.sort_by(|a, b| a.0.cmp(&b.0));
                prop_assert_eq!(ours, theirs, "trailers differ from RFC 9112's");
            } else {
                prop_assert!(
                    !within_limits,
                    "a valid chunked body levee refused: {:?}",
                    levee
                );
            }
        }
        rfc9112::Chunked::Incomplete => {
            // The RFC reads on: levee must not have found an end.
            prop_assert!(
                !levee.ended,
                "levee ended a body that RFC 9112 reads on: {:?}",
                levee
            );
        }
        // Stricter than levee (extension syntax, whitespace, bare LF in trailers):
        // levee may accept, but then it ended where the grammar's own framing would.
        rfc9112::Chunked::Invalid => {}
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn chunked_decoder_on_arbitrary_bytes(input in wire(arbitrary_bytes(600)), cuts in splits()) {
        let out = split_invariance(Decoder::chunked(), &input.0, &cuts)?;
        against_rfc(&input.0, &out)?;
    }

    #[test]
    fn chunked_decoder_on_mutated_bodies(
        body in valid_chunked(),
        suffix in arbitrary_bytes(40),
        muts in mutations(),
        cuts in splits(),
    ) {
        let mut input = body.wire.clone();
        input.extend_from_slice(&suffix);
        let input = mutate(input, &muts);
        let out = split_invariance(Decoder::chunked(), &input, &cuts)?;
        against_rfc(&input, &out)?;
    }

    #[test]
    fn valid_chunked_bodies_decode_to_their_data(
        body in valid_chunked(),
        suffix in arbitrary_bytes(40),
        cuts in splits(),
    ) {
        let mut input = body.wire.clone();
        input.extend_from_slice(&suffix);
        let out = split_invariance(Decoder::chunked(), &input, &cuts)?;
        prop_assert!(out.ended && out.error.is_none(), "valid body not read: {:?}", out);
        prop_assert_eq!(&out.data, &body.data);
        prop_assert_eq!(&out.left, &suffix, "bytes after the body were touched");
        // Name by name, each name's values in order: levee's header map lists a
        // repeated name's values together.
        let mut trailers: Vec<(String, Vec<u8>)> = body
            .trailers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        trailers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut got = out.trailers.unwrap_or_default();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        prop_assert_eq!(got, trailers);
        against_rfc(&input, &decode_pieces(Decoder::chunked(), &[&input]))?;
    }

    #[test]
    fn length_decoder_on_arbitrary_bytes(
        n in prop_oneof![0..700u64, Just(u64::MAX)],
        input in arbitrary_bytes(600),
        cuts in splits(),
    ) {
        let out = split_invariance(Decoder::length(n), &input, &cuts)?;
        let take = (n.min(input.len() as u64)) as usize;
        prop_assert_eq!(&out.data, &input[..take]);
        prop_assert_eq!(out.ended, input.len() as u64 >= n);
        prop_assert_eq!(&out.left, &input[take..]);
        prop_assert!(out.error.is_none());
        if !out.ended {
            prop_assert_eq!(out.eof, Some(Err(FramingError::Incomplete)));
        }
    }
}

// ---------------------------------------------------------------------------------
// Deviations the properties once found, each kept as a test.

/// `parse::request` skips every CR and LF before a request line; a bare CR there is
/// not an empty line (RFC 9112 §2.2 allows CRLF, and LF alone), and hyper refuses it.
#[test]
fn a_bare_cr_before_a_request_line_is_refused() {
    for input in [
        &b"\rGET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"\r\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\n\rGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(input);
        assert!(
            parse::request(&mut buf, 8192).is_err(),
            "{:?} accepted",
            input.escape_ascii().to_string()
        );
    }
    // Empty lines proper are still skipped, and a CR at the end waits for its LF.
    let mut buf = BytesMut::from(&b"\r\n\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
    assert!(parse::request(&mut buf, 8192).unwrap().is_some());
    let mut buf = BytesMut::from(&b"\r"[..]);
    assert!(parse::request(&mut buf, 8192).unwrap().is_none());
}

/// The trailer section is read by `httparse::parse_headers`, which takes a bare LF for
/// a line's end; RFC 9112 §7.1 ends every line of a chunked body in CRLF, and hyper
/// refuses such a body.
#[test]
fn a_bare_lf_in_a_trailer_section_is_refused() {
    for input in [
        &b"0\r\nX: 1\nY: 2\r\n\r\n"[..],
        b"5\r\nhello\r\n0\r\nX: 1\n\r\n",
    ] {
        let out = decode_pieces(Decoder::chunked(), &[input]);
        assert!(
            !out.ended,
            "{:?} read as {out:?}",
            input.escape_ascii().to_string()
        );
    }
}

/// RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing, and
/// `response_framing` refuses it (it once read it as chunked, or to the close).
#[test]
fn http10_response_with_transfer_encoding_is_refused() {
    for input in [
        &b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: identity\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(input);
        let head = parse::response(&mut buf, 8192).unwrap().unwrap();
        assert!(
            parse::response_framing(&head, false).is_err(),
            "{:?} accepted",
            input.escape_ascii().to_string()
        );
    }
}

/// RFC 9110 §5.6.1: empty list elements are ignored, so `Transfer-Encoding: chunked,`
/// ends in chunked (`response_framing` once read the last element as empty and the body
/// as close-delimited, so the client got the chunk framing as data).
#[test]
fn a_response_transfer_encoding_list_skips_empty_elements() {
    for input in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked, \r\n\r\n",
    ] {
        let mut buf = BytesMut::from(input);
        let head = parse::response(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(
            parse::response_framing(&head, false),
            Ok((Decoder::chunked(), true)),
            "{:?}",
            input.escape_ascii().to_string()
        );
    }
}
