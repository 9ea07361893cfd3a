//! An independent reading of RFC 9112's message framing, written from the RFC's text
//! and not from levee's code: the codec tests compare levee's decisions with it.
//!
//! Included by path (`#[path = "common/rfc9112.rs"] mod rfc9112;`) by the test files
//! that need it.
#![allow(dead_code)]

/// How a message's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
    /// The length cannot be determined: the RFC has the recipient refuse the message
    /// (400 and close for a request; an error for a response).
    Invalid,
}

/// `tchar` (RFC 9110 §5.6.2).
pub fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if !is_ows(*first) {
            break;
        }
        v = rest;
    }
    while let [rest @ .., last] = v {
        if !is_ows(*last) {
            break;
        }
        v = rest;
    }
    v
}

/// The elements of a list-valued field, over all its lines (RFC 9110 §5.6.1: empty
/// elements do not count).
fn list<'a>(values: &[&'a [u8]]) -> Vec<&'a [u8]> {
    values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim_ows)
        .filter(|e| !e.is_empty())
        .collect()
}

fn values<'a>(fields: &[(&[u8], &'a [u8])], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| *v)
        .collect()
}

/// `Content-Length` (RFC 9110 §8.6): 1*DIGIT, or a list of one value repeated, which a
/// recipient may read as that value.
fn content_length(values: &[&[u8]]) -> Option<u64> {
    let mut all = values
        .iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(trim_ows);
    let first = all.next()?;
    let n = digits(first)?;
    all.all(|e| digits(e) == Some(n)).then_some(n)
}

fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Transfer codings (RFC 9112 §6.1, §6.3 items 3–4): chunked once, last.
fn codings(values: &[&[u8]]) -> Option<()> {
    let codings = list(values);
    let chunked = |c: &&[u8]| {
        // A coding may carry parameters; `chunked` has none.
        c.eq_ignore_ascii_case(b"chunked")
    };
    let last = codings.last()?;
    (chunked(last) && codings.iter().filter(|c| chunked(c)).count() == 1).then_some(())
}

/// A request's framing (RFC 9112 §6.1, §6.3): `Transfer-Encoding` over
/// `Content-Length`; on HTTP/1.0, `Transfer-Encoding` means faulty framing.
pub fn request_framing(http11: bool, fields: &[(&[u8], &[u8])]) -> Framing {
    let te = values(fields, "transfer-encoding");
    let cl = values(fields, "content-length");
    if !te.is_empty() {
        if !http11 {
            return Framing::Invalid;
        }
        return match codings(&te) {
            Some(()) => Framing::Chunked,
            None => Framing::Invalid,
        };
    }
    if cl.is_empty() {
        return Framing::None;
    }
    content_length(&cl).map_or(Framing::Invalid, Framing::Length)
}

/// A response's framing (RFC 9112 §6.3), to a request that was `HEAD` or not.
pub fn response_framing(
    status: u16,
    head_request: bool,
    http11: bool,
    fields: &[(&[u8], &[u8])],
) -> Framing {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Framing::None;
    }
    let te = values(fields, "transfer-encoding");
    let cl = values(fields, "content-length");
    if !te.is_empty() {
        if !http11 {
            return Framing::Invalid;
        }
        let codings = list(&te);
        return match codings.last() {
            Some(last) if last.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::Close,
        };
    }
    if cl.is_empty() {
        return Framing::Close;
    }
    content_length(&cl).map_or(Framing::Invalid, Framing::Length)
}

/// A chunked body read by RFC 9112 §7.1's grammar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunked {
    Complete(ChunkedBody),
    /// A valid beginning: more bytes needed.
    Incomplete,
    Invalid,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChunkedBody {
    pub data: Vec<u8>,
    /// Trailer fields: name as sent, value without surrounding whitespace.
    pub trailers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Bytes of the body, last CRLF included.
    pub consumed: usize,
    /// The most hex digits in one chunk-size.
    pub max_digits: usize,
    /// The longest chunk-ext (from its first byte after the size to the CR).
    pub max_ext: usize,
    /// Bytes of the trailer section with its final CRLF (2 when empty).
    pub trailer_bytes: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// `Err(true)`: more bytes could make it valid; `Err(false)`: invalid.
type Step<T> = Result<T, bool>;

impl Cursor<'_> {
    fn peek(&self) -> Step<u8> {
        self.buf.get(self.pos).copied().ok_or(true)
    }

    fn eat(&mut self, b: u8) -> Step<bool> {
        if self.peek()? == b {
            self.pos += 1;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    fn crlf(&mut self) -> Step<()> {
        if !self.eat(b'\r')? || !self.eat(b'\n')? {
            return Err(false);
        }
        Ok(())
    }

    fn bws(&mut self) -> Step<()> {
        while is_ows(self.peek()?) {
            self.pos += 1;
        }
        Ok(())
    }

    fn token(&mut self) -> Step<()> {
        let start = self.pos;
        while is_tchar(self.peek()?) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(false);
        }
        Ok(())
    }

    /// `quoted-string` (RFC 9110 §5.6.4), its opening quote already eaten.
    fn quoted(&mut self) -> Step<()> {
        loop {
            match self.peek()? {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\\' => {
                    self.pos += 1;
                    let b = self.peek()?;
                    if !(b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80) {
                        return Err(false);
                    }
                    self.pos += 1;
                }
                b if b == b'\t' || b == b' ' || b == 0x21 || (0x23..=0x7e).contains(&b) => {
                    self.pos += 1;
                }
                b if b >= 0x80 => self.pos += 1,
                _ => return Err(false),
            }
        }
    }

    /// `chunk-ext`, up to (not including) the CRLF.
    fn ext(&mut self) -> Step<()> {
        loop {
            let mark = self.pos;
            self.bws()?;
            if !self.eat(b';')? {
                // No more extensions; BWS is only allowed before one.
                self.pos = mark;
                return Ok(());
            }
            self.bws()?;
            self.token()?;
            let before_eq = self.pos;
            self.bws()?;
            if self.eat(b'=')? {
                self.bws()?;
                if self.eat(b'"')? {
                    self.quoted()?;
                } else {
                    self.token()?;
                }
            } else {
                self.pos = before_eq;
            }
        }
    }

    /// One `field-line CRLF` of a trailer section, or the final CRLF (`None`).
    fn field(&mut self) -> Step<Option<(Vec<u8>, Vec<u8>)>> {
        if self.peek()? == b'\r' {
            self.crlf()?;
            return Ok(None);
        }
        let start = self.pos;
        self.token()?;
        let name = self.buf[start..self.pos].to_vec();
        if !self.eat(b':')? {
            return Err(false);
        }
        let vstart = self.pos;
        loop {
            match self.peek()? {
                b'\r' => break,
                b if b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80 => self.pos += 1,
                _ => return Err(false),
            }
        }
        let value = trim_ows(&self.buf[vstart..self.pos]).to_vec();
        self.crlf()?;
        Ok(Some((name, value)))
    }
}

/// Reads a chunked body from the front of `buf`.
pub fn chunked(buf: &[u8]) -> Chunked {
    let mut c = Cursor { buf, pos: 0 };
    let mut body = ChunkedBody::default();
    match chunked_steps(&mut c, &mut body) {
        Ok(()) => {
            body.consumed = c.pos;
            Chunked::Complete(body)
        }
        Err(true) => Chunked::Incomplete,
        Err(false) => Chunked::Invalid,
    }
}

fn chunked_steps(c: &mut Cursor<'_>, body: &mut ChunkedBody) -> Step<()> {
    loop {
        let start = c.pos;
        let mut size: Option<u64> = Some(0);
        while c.peek()?.is_ascii_hexdigit() {
            let d = (c.peek()? as char).to_digit(16).unwrap_or(0);
            size = size
                .and_then(|s| s.checked_mul(16))
                .and_then(|s| s.checked_add(u64::from(d)));
            c.pos += 1;
        }
        let digits = c.pos - start;
        if digits == 0 {
            return Err(false);
        }
        // A size past u64 cannot be read by anyone; call it invalid.
        let size = size.ok_or(false)?;
        body.max_digits = body.max_digits.max(digits);
        let ext_start = c.pos;
        c.ext()?;
        body.max_ext = body.max_ext.max(c.pos - ext_start);
        c.crlf()?;
        if size == 0 {
            let trailers_start = c.pos;
            while let Some(f) = c.field()? {
                body.trailers.push(f);
            }
            body.trailer_bytes = c.pos - trailers_start;
            return Ok(());
        }
        let end = c.pos as u64 + size;
        if (c.buf.len() as u64) < end {
            return Err(true);
        }
        let end = end as usize;
        body.data.extend_from_slice(&c.buf[c.pos..end]);
        c.pos = end;
        c.crlf()?;
    }
}

/// A strict head (CRLF line endings, no obs-fold, tokens where tokens belong): its
/// start line, fields and length; `Err(true)` while incomplete.
pub struct Head {
    pub start: Vec<u8>,
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub len: usize,
}

impl Head {
    pub fn field_refs(&self) -> Vec<(&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|(n, v)| (n.as_slice(), v.as_slice()))
            .collect()
    }
}

pub fn head(buf: &[u8]) -> Result<Head, bool> {
    let mut c = Cursor { buf, pos: 0 };
    let start = c.pos;
    loop {
        match c.peek()? {
            b'\r' => break,
            b if b == b'\t' || (0x20..=0x7e).contains(&b) || b >= 0x80 => c.pos += 1,
            _ => return Err(false),
        }
    }
    let start_line = buf[start..c.pos].to_vec();
    c.crlf()?;
    let mut fields = Vec::new();
    while let Some(f) = c.field()? {
        fields.push(f);
    }
    Ok(Head {
        start: start_line,
        fields,
        len: c.pos,
    })
}
