//! Who a request is from and what it is called: the client's address (the peer, or
//! from a trusted forwarder the address its `X-Forwarded-For` names) and the request
//! id carried in `X-Request-Id` to the backend, back to the client, into the access
//! log and into levee's own answers.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};

use http::header::{HeaderMap, HeaderValue};

use crate::config::TrustedProxies;

pub use super::validate::X_REQUEST_ID;

/// Longest incoming request id kept; a longer one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// The client of a request from `peer`: the peer itself unless it is a trusted
/// forwarder; then the right-most address of `X-Forwarded-For` that is not trusted
/// (each trusted hop is skipped, as nginx's `real_ip_recursive` does). Every address
/// trusted: the left-most. An entry that is not an address ends the walk at the last
/// address read, since nothing left of it can be vouched for. Entries may carry a
/// port (`192.0.2.1:5000`, `[2001:db8::1]:443`), which is dropped.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if trusted.is_empty() || !trusted.contains(peer) {
        return peer;
    }
    client_behind(peer, headers, trusted)
}

/// [`client_ip`] for a `peer` already known to be trusted (the request path checks
/// that once, for the request id as well).
pub fn client_behind(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer;
    // Header lines right to left, each line's entries right to left.
    for line in headers
        .get_all(&super::validate::X_FORWARDED_FOR)
        .iter()
        .rev()
    {
        for entry in line.as_bytes().rsplit(|&b| b == b',') {
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                continue;
            }
            let Some(ip) = parse_entry(entry) else {
                return client;
            };
            client = ip;
            if !trusted.contains(ip) {
                return ip;
            }
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, with or without a port.
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

/// Whether an incoming `X-Request-Id` may be kept: 1 to [`MAX_REQUEST_ID`] bytes of
/// printable ASCII (space included, which a log line quotes).
pub fn well_formed(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&id.len()) && id.iter().all(|b| (0x20..0x7f).contains(b))
}

/// The request's id: the incoming `X-Request-Id` when `trusted` and well-formed, else a
/// new one.
///
/// The value is marked sensitive: HTTP/2's HPACK then sends it as a literal that is
/// never indexed, so a value seen once does not push reusable fields out of the
/// connection's header table (measured on gRPC calls through an h2 upstream).
pub fn request_id(headers: &HeaderMap, trusted: bool) -> HeaderValue {
    // An untrusted peer's id is never kept, so its map is not searched.
    let kept = match trusted {
        true => super::find_header(headers, &X_REQUEST_ID).filter(|v| well_formed(v.as_bytes())),
        false => None,
    };
    let mut id = kept.cloned().unwrap_or_else(new_request_id);
    id.set_sensitive(true);
    id
}

thread_local! {
    /// This thread's id stream: a random 64-bit prefix drawn when the thread first
    /// makes an id, and a counter.
    static IDS: Cell<(u64, u64)> = Cell::new((rand::random::<u64>() | 1, 0));
}

/// A new request id: 32 lower-case hex digits, a random 64-bit prefix per thread and
/// process start, then that thread's count. Unique without coordination: two of the
/// fleet's threads share a prefix with odds of about n²/2⁶⁵ for n threads ever
/// started (a million threads: 3 in 10⁸), and within a thread the count never
/// repeats. The form is a W3C trace id's (never all zeros), so the two can be one.
/// Costs a thread-local read, 32 table look-ups and the header value's copy.
pub fn new_request_id() -> HeaderValue {
    let (prefix, n) = IDS.with(|ids| {
        let (prefix, n) = ids.get();
        ids.set((prefix, n.wrapping_add(1)));
        (prefix, n)
    });
    let mut out = [0u8; 32];
    hex(prefix, &mut out[..16]);
    hex(n, &mut out[16..]);
    // Hex digits are valid header bytes.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// `v` as 16 lower-case hex digits into `out`, two digits per byte from a table.
fn hex(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_address_from_a_trusted_peer() {
        let t = trusted(&["10.0.0.0/8", "::1/128"]);
        let lb = ip("10.0.0.5");
        let h = xff(&["198.51.100.1, 192.0.2.44, 10.1.1.1"]);
        assert_eq!(client_ip(lb, &h, &t), ip("192.0.2.44"));
        // Lines are one list, in order.
        let h = xff(&["198.51.100.1", "192.0.2.44:5000, 10.1.1.1"]);
        assert_eq!(client_ip(lb, &h, &t), ip("192.0.2.44"));
        // From a peer that is not trusted, the header is not believed.
        assert_eq!(client_ip(ip("192.0.2.9"), &h, &t), ip("192.0.2.9"));
        // No list, or nobody trusted.
        assert_eq!(client_ip(lb, &HeaderMap::new(), &t), lb);
        assert_eq!(client_ip(lb, &h, &trusted(&[])), lb);
        // All trusted: the left-most.
        assert_eq!(
            client_ip(lb, &xff(&["10.9.9.9, 10.1.1.1"]), &t),
            ip("10.9.9.9")
        );
        // Garbage stops the walk at the last address read.
        assert_eq!(
            client_ip(lb, &xff(&["192.0.2.1, unknown, 10.1.1.1"]), &t),
            ip("10.1.1.1")
        );
        assert_eq!(client_ip(lb, &xff(&["nonsense"]), &t), lb);
        // IPv6, with a port, and a mapped IPv4 peer.
        let h = xff(&["[2001:db8::7]:443, ::1"]);
        assert_eq!(client_ip(ip("::1"), &h, &t), ip("2001:db8::7"));
        let mapped = ip("::ffff:10.0.0.5");
        assert_eq!(
            client_ip(mapped, &xff(&["192.0.2.44"]), &t),
            ip("192.0.2.44")
        );
    }

    #[test]
    fn request_ids_are_kept_only_when_trusted_and_well_formed() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h, true), "abc-123");
        assert_ne!(request_id(&h, false), "abc-123");
        let long = "x".repeat(MAX_REQUEST_ID + 1);
        h.insert(&X_REQUEST_ID, HeaderValue::from_str(&long).unwrap());
        assert_ne!(request_id(&h, true), long.as_str());
        let tab = HeaderValue::from_bytes(b"a\tb").unwrap();
        assert!(!well_formed(tab.as_bytes()));
        assert!(well_formed(b"a b"));
        assert!(!well_formed(b""));
    }

    #[test]
    fn new_ids_are_hex_and_distinct() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [&a, &b] {
            let s = id.to_str().unwrap();
            assert_eq!(s.len(), 32);
            assert!(s
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        // Same thread: same prefix, the next count.
        assert_eq!(a.as_bytes()[..16], b.as_bytes()[..16]);
        let count = |v: &HeaderValue| u64::from_str_radix(&v.to_str().unwrap()[16..], 16);
        assert_eq!(count(&b).unwrap(), count(&a).unwrap() + 1);
    }
}
