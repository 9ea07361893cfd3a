//! W3C trace context (<https://www.w3.org/TR/trace-context/>): what a request's
//! `traceparent` and `tracestate` say, read from raw header bytes so that any codec can
//! call it (a thin [`HeaderMap`] convenience sits beside), the sampling decision, and
//! the `traceparent` value levee sends to the backend, formatted into a fixed buffer.

use http::header::{HeaderMap, HeaderName};

/// The header that carries the caller's trace and span.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries vendors' trace state; levee forwards it untouched.
pub const TRACESTATE: &str = "tracestate";
/// [`TRACEPARENT`] as a header name (a lookup by it neither parses nor lowercases).
pub static TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT);
/// [`TRACESTATE`] as a header name.
pub static TRACESTATE_NAME: HeaderName = HeaderName::from_static(TRACESTATE);

/// Length of a version-00 `traceparent` value: `00-` 32 hex `-` 16 hex `-` 2 hex.
pub const TRACEPARENT_LEN: usize = 55;

/// Longest `tracestate` kept for the span (the W3C limit of 32 entries fits in 512
/// characters in practice; a longer one still goes to the backend as it came).
pub const MAX_TRACESTATE: usize = 512;

/// The `sampled` bit of `trace-flags`.
const SAMPLED: u8 = 0x01;

/// A parsed `traceparent`: the trace, the caller's span, and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span (levee's parent).
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value. `None` for anything the W3C rules call invalid: a
    /// version other than two lowercase hex digits, version `ff`, a version-00 value of
    /// other than 55 characters, a higher version without a `-` after its first 55, an
    /// all-zero trace id or parent id, uppercase hex. Such a header is treated as absent.
    pub fn parse(value: &[u8]) -> Option<TraceParent> {
        let v = value.trim_ascii();
        if v.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&v[0..2])?;
        match version {
            0xff => return None,
            0x00 if v.len() != TRACEPARENT_LEN => return None,
            // A later version may add fields after a `-`.
            _ if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' => return None,
            _ => {}
        }
        if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&v[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, b) in span_id.iter_mut().enumerate() {
            *b = hex_byte(&v[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&v[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Did the caller sample this trace (`trace-flags` bit 0)?
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// This context as a version-00 `traceparent` value.
    pub fn encode(&self) -> Encoded {
        let mut buf = [0u8; TRACEPARENT_LEN];
        buf[0] = b'0';
        buf[1] = b'0';
        buf[2] = b'-';
        write_hex(&mut buf[3..35], &self.trace_id);
        buf[35] = b'-';
        write_hex(&mut buf[36..52], &self.span_id);
        buf[52] = b'-';
        write_hex(&mut buf[53..55], &[self.flags]);
        Encoded(buf)
    }
}

/// A `traceparent` value in a fixed buffer (no allocation to format it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Encoded([u8; TRACEPARENT_LEN]);

impl Encoded {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and '-' are ever written.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request's head says of its trace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Incoming<'a> {
    /// The caller's context; `None` when absent, invalid or given more than once
    /// (W3C: such a request starts a new trace).
    pub parent: Option<TraceParent>,
    /// The caller's `tracestate` (the first field when repeated), kept only with a
    /// valid parent and when at most [`MAX_TRACESTATE`] bytes long.
    pub state: Option<&'a [u8]>,
}

impl<'a> Incoming<'a> {
    /// Reads `traceparent` and `tracestate` from a request's header fields as raw
    /// (name, value) bytes; names compare without case. One pass, no allocation.
    pub fn from_fields<I>(fields: I) -> Incoming<'a>
    where
        I: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    {
        let mut parent = None;
        let mut parents = 0u32;
        let mut state = None;
        for (name, value) in fields {
            if name.eq_ignore_ascii_case(TRACEPARENT.as_bytes()) {
                parents += 1;
                parent = TraceParent::parse(value);
            } else if state.is_none() && name.eq_ignore_ascii_case(TRACESTATE.as_bytes()) {
                state = Some(value);
            }
        }
        Incoming::of(if parents == 1 { parent } else { None }, state)
    }

    /// From the values a codec found while parsing a head: the `traceparent` value
    /// (`None` when absent or repeated) and the first `tracestate` value.
    pub fn new(traceparent: Option<&[u8]>, tracestate: Option<&'a [u8]>) -> Incoming<'a> {
        Incoming::of(traceparent.and_then(TraceParent::parse), tracestate)
    }

    /// [`Incoming::from_fields`] for a [`HeaderMap`] (two lookups by name).
    pub fn from_headers(headers: &'a HeaderMap) -> Incoming<'a> {
        let mut all = headers.get_all(&TRACEPARENT_NAME).iter();
        let parent = match (all.next(), all.next()) {
            (Some(v), None) => TraceParent::parse(v.as_bytes()),
            _ => None,
        };
        let state = headers.get(&TRACESTATE_NAME).map(|v| v.as_bytes());
        Incoming::of(parent, state)
    }

    fn of(parent: Option<TraceParent>, state: Option<&'a [u8]>) -> Incoming<'a> {
        let state = state
            .map(<[u8]>::trim_ascii)
            .filter(|s| parent.is_some() && !s.is_empty() && s.len() <= MAX_TRACESTATE);
        Incoming { parent, state }
    }
}

/// The sampling rule: a caller's decision is honoured (parent-based); a request without
/// a context starts a sampled trace with probability `ratio`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// A random `u64` below this samples; `u64::MAX` with `always`.
    threshold: u64,
    always: bool,
}

impl Sampler {
    /// `ratio` is clamped to [0, 1].
    pub fn new(ratio: f64) -> Sampler {
        let ratio = if ratio.is_nan() { 0.0 } else { ratio };
        let ratio = ratio.clamp(0.0, 1.0);
        Sampler {
            // 2^64 as f64; the product stays below it for ratio < 1.
            threshold: (ratio * 18_446_744_073_709_551_616.0) as u64,
            always: ratio >= 1.0,
        }
    }

    /// Whether a request with `parent` (or none) is sampled, given a uniformly random
    /// `draw`.
    pub fn sample(&self, parent: Option<&TraceParent>, draw: u64) -> bool {
        match parent {
            Some(p) => p.sampled(),
            None => self.always || draw < self.threshold,
        }
    }
}

thread_local! {
    /// wyrand state of this thread, seeded from the OS-seeded thread RNG.
    static WYRAND: std::cell::Cell<u64> = std::cell::Cell::new(rand::random());
}

/// A fast random `u64` (wyrand, per thread) for sampling draws and trace and span
/// ids: ids need to be unique and unguessable enough to spread, not secret, and this
/// costs a few instructions where the thread RNG costs a hundred.
pub fn random_u64() -> u64 {
    WYRAND.with(|s| {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x).wrapping_mul(u128::from(x ^ 0xe703_7ed1_a0b4_28db));
        ((t >> 64) as u64) ^ (t as u64)
    })
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    Some(hex_digit(two[0])? << 4 | hex_digit(two[1])?)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// Lowercase hex of `bytes` (logs and tests).
pub fn hex(bytes: &[u8]) -> String {
    let mut out = vec![0u8; bytes.len() * 2];
    write_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_round_trips() {
        let p = TraceParent::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.span_id), "00f067aa0ba902b7");
        assert!(p.sampled());
        assert_eq!(p.encode().as_str(), GOOD);
        let unsampled = GOOD.replace("-01", "-00");
        assert!(!TraceParent::parse(unsampled.as_bytes()).unwrap().sampled());
    }

    #[test]
    fn invalid_traceparents_are_absent() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad:?}");
        }
        // A later version may carry more after a dash.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what";
        assert!(TraceParent::parse(later.as_bytes()).is_some());
    }

    #[test]
    fn fields_and_header_maps_read_the_same() {
        let fields: Vec<(&[u8], &[u8])> = vec![
            (b"Host", b"x"),
            (b"TraceParent", GOOD.as_bytes()),
            (b"tracestate", b"congo=t61rcWkgMzE"),
        ];
        let a = Incoming::from_fields(fields.iter().copied());
        let mut map = HeaderMap::new();
        map.insert("traceparent", GOOD.parse().unwrap());
        map.insert("tracestate", "congo=t61rcWkgMzE".parse().unwrap());
        let b = Incoming::from_headers(&map);
        assert_eq!(a, b);
        assert!(a.parent.is_some());
        assert_eq!(a.state, Some(&b"congo=t61rcWkgMzE"[..]));

        // Two traceparents: invalid, and the state goes with it.
        let twice: Vec<(&[u8], &[u8])> = vec![
            (b"traceparent", GOOD.as_bytes()),
            (b"traceparent", GOOD.as_bytes()),
            (b"tracestate", b"a=b"),
        ];
        assert_eq!(Incoming::from_fields(twice), Incoming::default());
        map.append("traceparent", GOOD.parse().unwrap());
        assert_eq!(Incoming::from_headers(&map), Incoming::default());
    }

    #[test]
    fn the_caller_decides_and_otherwise_the_ratio_does() {
        let p = TraceParent::parse(GOOD.as_bytes()).unwrap();
        let unsampled = TraceParent { flags: 0, ..p };
        let none = Sampler::new(0.0);
        let all = Sampler::new(1.0);
        assert!(none.sample(Some(&p), u64::MAX));
        assert!(!all.sample(Some(&unsampled), 0));
        assert!(!none.sample(None, 0));
        assert!(all.sample(None, u64::MAX));
        let tenth = Sampler::new(0.1);
        assert!(tenth.sample(None, u64::MAX / 11));
        assert!(!tenth.sample(None, u64::MAX / 9));
        assert_eq!(Sampler::new(f64::NAN), none);
        assert_eq!(Sampler::new(7.0), all);
        // The draws spread: about a tenth of 10,000 sample at 0.1.
        let n = (0..10_000)
            .filter(|_| tenth.sample(None, random_u64()))
            .count();
        assert!((800..1200).contains(&n), "{n}");
        assert_ne!(random_u64(), random_u64());
    }
}
