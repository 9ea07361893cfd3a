//! Body framing of HTTP/1.1 messages (RFC 9112 §6–7): a body is `Content-Length`
//! bytes, chunked, or everything until the sender closes (responses only).
//!
//! [`Decoder`] reads a body out of a connection's read buffer, frame by frame, without
//! copying data: each data frame is split off the buffer. The chunked decoder is strict
//! where readers disagree (the source of request smuggling): a chunk size is 1–16 hex
//! digits and nothing else before its optional extensions, every line ends in CRLF, a
//! chunk's data is followed by exactly CRLF, and extensions and trailers are bounded.
//! Anything else is an error, and the connection it came on is not read any further.
//!
//! The encoding side is [`chunk_head`] and the constant pieces around it.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

/// Longest chunk extension levee reads past on one chunk-size line.
pub const MAX_CHUNK_EXT: usize = 4096;

/// Largest trailer section levee accepts.
pub const MAX_TRAILERS: usize = 8192;

/// Most fields in a trailer section.
const MAX_TRAILER_FIELDS: usize = 32;

/// The last chunk of a chunked body without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// What ends each chunk's data.
pub const CRLF: &[u8] = b"\r\n";

/// Why a body's framing is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("chunk extension too long or invalid")]
    ChunkExt,
    #[error("invalid or too large trailer section")]
    Trailers,
    #[error("connection closed before the end of the body")]
    Incomplete,
}

/// One step of reading a body.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body is complete (nothing of it remains in the buffer).
    End,
    /// The buffer holds no more of the body: read more and call again.
    NeedMore,
}

/// How a body is framed, and how far it has been read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    /// Until the sender closes the connection (a response without length).
    Eof,
    /// Complete.
    Done,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunked {
    state: Chunk,
    size: u64,
    digits: u8,
    ext: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the chunk size's hex digits.
    Size,
    /// After the digits: optional whitespace, then `;` extensions or CR.
    AfterSize,
    /// In the extensions, up to CR.
    Ext,
    /// CR seen at the end of a size line; LF must follow.
    SizeLf,
    /// Reading `size` bytes of data.
    Data,
    /// After the data: CR, then LF.
    DataCr,
    DataLf,
    /// After the last chunk: the trailer section, up to its empty line.
    Trailers,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: Chunk::Size,
            size: 0,
            digits: 0,
            ext: 0,
        }
    }
}

impl Decoder {
    pub fn chunked() -> Decoder {
        Decoder::Chunked(Chunked::default())
    }

    /// A `Content-Length` body (`Done` at once when empty).
    pub fn length(n: u64) -> Decoder {
        if n == 0 {
            Decoder::Done
        } else {
            Decoder::Length(n)
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Decoder::Done)
    }

    /// Bytes still to come, when the framing says (for a size hint).
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body out of `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        match self {
            Decoder::Done => Ok(Decoded::End),
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                let data = buf.split_to(n).freeze();
                if *left == 0 {
                    *self = Decoder::Done;
                }
                Ok(Decoded::Data(data))
            }
            Decoder::Eof => {
                if buf.is_empty() {
                    Ok(Decoded::NeedMore)
                } else {
                    Ok(Decoded::Data(buf.split().freeze()))
                }
            }
            Decoder::Chunked(c) => {
                let r = c.decode(buf);
                if matches!(r, Ok(Decoded::End | Decoded::Trailers(_))) {
                    *self = Decoder::Done;
                }
                r
            }
        }
    }

    /// The sender closed the connection: the end of a close-delimited body, an error
    /// for any other that is not complete.
    pub fn eof(&mut self) -> Result<Decoded, FramingError> {
        match self {
            Decoder::Eof | Decoder::Done => {
                *self = Decoder::Done;
                Ok(Decoded::End)
            }
            _ => Err(FramingError::Incomplete),
        }
    }
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, FramingError> {
        loop {
            if self.state == Chunk::Data {
                if buf.is_empty() {
                    return Ok(Decoded::NeedMore);
                }
                let n = self.size.min(buf.len() as u64) as usize;
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = Chunk::DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(n).freeze()));
            }
            if self.state == Chunk::Trailers {
                return trailers(buf);
            }
            let Some(&b) = buf.first() else {
                return Ok(Decoded::NeedMore);
            };
            buf.advance(1);
            self.state = match (self.state, b) {
                (Chunk::Size, _) if b.is_ascii_hexdigit() => {
                    if self.digits == 16 {
                        return Err(FramingError::ChunkSize);
                    }
                    self.digits += 1;
                    self.size = self.size << 4 | u64::from(hex(b));
                    Chunk::Size
                }
                (Chunk::Size | Chunk::AfterSize, b' ' | b'\t') if self.digits > 0 => {
                    Chunk::AfterSize
                }
                (Chunk::Size | Chunk::AfterSize, b';') if self.digits > 0 => Chunk::Ext,
                (Chunk::Size | Chunk::AfterSize | Chunk::Ext, b'\r') if self.digits > 0 => {
                    Chunk::SizeLf
                }
                (Chunk::Ext, _) => {
                    self.ext += 1;
                    // Extension bytes: visible ASCII, whitespace and obs-text; no
                    // control characters (a bare LF would end the line for some
                    // readers and not others).
                    if self.ext > MAX_CHUNK_EXT || (b < 0x20 && b != b'\t') || b == 0x7f {
                        return Err(FramingError::ChunkExt);
                    }
                    Chunk::Ext
                }
                (Chunk::SizeLf, b'\n') => {
                    self.digits = 0;
                    self.ext = 0;
                    if self.size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data
                    }
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size,
                (Chunk::DataCr | Chunk::DataLf, _) => return Err(FramingError::ChunkEnd),
                _ => return Err(FramingError::ChunkSize),
            };
        }
    }
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// The trailer section after the last chunk: an empty line, or fields up to one.
fn trailers(buf: &mut BytesMut) -> Result<Decoded, FramingError> {
    if buf.len() < 2 {
        return Ok(Decoded::NeedMore);
    }
    if buf.starts_with(CRLF) {
        buf.advance(2);
        return Ok(Decoded::End);
    }
    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_TRAILERS {
            return Err(FramingError::Trailers);
        }
        return Ok(Decoded::NeedMore);
    };
    let len = end + 4;
    if len > MAX_TRAILERS {
        return Err(FramingError::Trailers);
    }
    // Every line ends in CRLF (httparse would take a bare LF for a line's end).
    if memchr::memchr_iter(b'\n', &buf[..len]).any(|i| i == 0 || buf[i - 1] != b'\r') {
        return Err(FramingError::Trailers);
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    let parsed = match httparse::parse_headers(&buf[..len], &mut fields) {
        Ok(httparse::Status::Complete((n, fields))) if n == len => fields,
        _ => return Err(FramingError::Trailers),
    };
    let mut map = HeaderMap::with_capacity(parsed.len());
    for f in parsed {
        let name =
            http::HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| FramingError::Trailers)?;
        let value = http::HeaderValue::from_bytes(f.value).map_err(|_| FramingError::Trailers)?;
        map.append(name, value);
    }
    buf.advance(len);
    Ok(Decoded::Trailers(map))
}

/// The size line of a chunk of `len` bytes (`len` in hex, CRLF), written into `out`.
pub fn chunk_head(len: usize, out: &mut [u8; 18]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    let mut n = len;
    loop {
        i -= 1;
        out[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out[16] = b'\r';
    out[17] = b'\n';
    &out[i..]
}

/// Appends a trailer section (after the last chunk's `0\r\n`) and its empty line.
pub fn encode_trailers(trailers: &HeaderMap, out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers {
        super::put_field(out, name.as_str().as_bytes(), value.as_bytes());
    }
    out.extend_from_slice(CRLF);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; the data, the trailers' count,
    /// and whether it ended.
    fn run(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool, usize), FramingError> {
        let mut d = Decoder::chunked();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut trailers = 0;
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match d.decode(&mut buf)? {
                    Decoded::Data(b) => data.extend_from_slice(&b),
                    Decoded::Trailers(t) => {
                        trailers = t.len();
                        return Ok((data, trailers, true, buf.len()));
                    }
                    Decoded::End => return Ok((data, trailers, true, buf.len())),
                    Decoded::NeedMore => break,
                }
            }
        }
        Ok((data, trailers, false, buf.len()))
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let body = b"5\r\nhello\r\n6;name=v\r\n world\r\nA \r\n0123456789\r\n0\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (data, trailers, ended, left) = run(body, step).unwrap();
            assert_eq!(data, b"hello world0123456789", "step {step}");
            assert_eq!((trailers, ended), (0, true));
            // What follows the body stays in the buffer for the next message.
            assert!(left <= 4);
        }
        let with_trailers = b"3\r\nabc\r\n0\r\nx-sum: 1\r\ny: 2\r\n\r\n";
        for step in 1..with_trailers.len() {
            assert_eq!(
                run(with_trailers, step).unwrap(),
                (b"abc".to_vec(), 2, true, 0)
            );
        }
    }

    #[test]
    fn ambiguous_chunk_framing_is_an_error() {
        let bad: &[&[u8]] = &[
            b"\r\nhello",                       // empty size line
            b";ext\r\n",                        // no digits
            b"0x5\r\nhello\r\n0\r\n\r\n",       // a prefix
            b"+5\r\nhello\r\n",                 // a sign
            b"5\nhello\r\n",                    // bare LF after the size
            b"5\r\nhelloXX0\r\n\r\n",           // data longer than its size
            b"5\r\nhello\n0\r\n\r\n",           // bare LF after the data
            b"5 5\r\nhello\r\n",                // whitespace inside the size
            b"11111111111111111\r\n",           // 17 digits
            b"5;a\x00b\r\nhello\r\n",           // NUL in an extension
            b"5;a\nb\r\nhello\r\n",             // bare LF in an extension
            b"0\r\nbad trailer\r\n\r\n",        // a trailer that is not a field
            b"0\r\nx: 1\r\n y: folded\r\n\r\n", // obs-fold in trailers
        ];
        for input in bad {
            assert!(
                run(input, input.len()).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(input)
            );
        }
        let long_ext = [b"1;".as_slice(), &[b'a'; MAX_CHUNK_EXT + 1], b"\r\nx\r\n"].concat();
        assert_eq!(run(&long_ext, 512), Err(FramingError::ChunkExt));
    }

    #[test]
    fn lengths_and_close_delimited_bodies() {
        let mut d = Decoder::length(5);
        let mut buf = BytesMut::from(&b"helloGET"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"hello")))
        );
        assert_eq!(d.decode(&mut buf), Ok(Decoded::End));
        assert_eq!(&buf[..], b"GET");
        assert!(Decoder::length(0).is_done());
        let mut d = Decoder::length(3);
        assert_eq!(d.eof(), Err(FramingError::Incomplete));
        let mut d = Decoder::Eof;
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert_eq!(
            d.decode(&mut buf),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert_eq!(d.decode(&mut buf), Ok(Decoded::NeedMore));
        assert_eq!(d.eof(), Ok(Decoded::End));
    }

    #[test]
    fn chunk_heads_are_lowercase_hex() {
        let mut out = [0u8; 18];
        assert_eq!(chunk_head(0, &mut out), b"0\r\n");
        assert_eq!(chunk_head(255, &mut out), b"ff\r\n");
        assert_eq!(chunk_head(0x10000, &mut out), b"10000\r\n");
    }
}
