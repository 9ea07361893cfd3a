//! The PROXY protocol (HAProxy's spec, versions 1 and 2): the header an L4 balancer
//! sends before anything else on a connection, naming the client it accepted.
//!
//! levee reads exactly the header's bytes and nothing past them, so whatever follows
//! (an HTTP request, an HTTP/2 preface, a TLS ClientHello) is read by the layer above
//! as if the header had never been there. Version 1 is a text line ending in CRLF of
//! at most 107 bytes; version 2 is a 16-byte binary preamble and the length it gives.
//! Addresses of v2 `LOCAL` (a balancer's own health check), v1 `UNKNOWN`, and
//! families other than TCP/UDP over IPv4/IPv6 leave the peer as the client. TLVs are
//! skipped unread.
//!
//! The whole header is bounded by one deadline (`client_header`), so a balancer that
//! stalls, or a client that connects without the header, cannot hold a connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature: the first 12 bytes of every version 2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the spec's bound).
pub const V1_MAX: usize = 107;

/// Who the header says the client is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client's address and port, as the balancer saw them.
    Address(SocketAddr),
    /// The balancer speaks for itself (v2 `LOCAL`, v1 `UNKNOWN`, a family without an
    /// IP address): the peer is the client.
    Local,
}

/// Why a connection's header was refused; each is a `reason` label of
/// `levee_proxy_protocol_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyProtocolError {
    /// The first bytes are not a PROXY header (e.g. a client connected directly).
    #[error("no PROXY protocol header")]
    Missing,
    /// A PROXY header that breaks the spec (bad version, command, family, address,
    /// port, length, or a v1 line without its CRLF within 107 bytes).
    #[error("malformed PROXY protocol header")]
    Malformed,
    /// The header was not complete within `client_header`.
    #[error("PROXY protocol header not complete in time")]
    Timeout,
    /// The peer closed or reset the connection before the header was complete.
    #[error("connection closed before the PROXY protocol header was complete")]
    Closed,
}

impl ProxyProtocolError {
    /// Every reason, in the order of [`ProxyProtocolError::index`].
    pub const ALL: [ProxyProtocolError; 4] = [
        ProxyProtocolError::Missing,
        ProxyProtocolError::Malformed,
        ProxyProtocolError::Timeout,
        ProxyProtocolError::Closed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocolError::Missing => "missing",
            ProxyProtocolError::Malformed => "malformed",
            ProxyProtocolError::Timeout => "timeout",
            ProxyProtocolError::Closed => "closed",
        }
    }

    /// Position in [`ProxyProtocolError::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Reads one PROXY header (v1 or v2) from `tcp`, consuming exactly its bytes, within
/// `limit`.
pub async fn read_header(
    tcp: &mut TcpStream,
    limit: Duration,
) -> Result<Source, ProxyProtocolError> {
    match tokio::time::timeout(limit, read(tcp)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyProtocolError::Timeout),
    }
}

async fn read(tcp: &mut TcpStream) -> Result<Source, ProxyProtocolError> {
    // Both versions are at least 15 bytes long, so the first 8 are always the
    // header's own: enough to tell v1 ("PROXY ") from v2 (the signature).
    let mut head = [0u8; 16];
    read_exact(tcp, &mut head[..8]).await?;
    if head[..6] == *b"PROXY " {
        if head[..8].contains(&b'\n') {
            // The line ended already: reading on would take the client's bytes.
            return Err(ProxyProtocolError::Malformed);
        }
        let mut line = [0u8; V1_MAX];
        line[..8].copy_from_slice(&head[..8]);
        let len = read_line(tcp, &mut line, 8).await?;
        return parse_v1(&line[..len]);
    }
    if head[..8] != V2_SIGNATURE[..8] {
        return Err(ProxyProtocolError::Missing);
    }
    read_exact(tcp, &mut head[8..]).await?;
    let (source, rest) = parse_v2_preamble(&head)?;
    let mut addresses = [0u8; 36];
    let wanted = rest.min(addresses.len());
    read_exact(tcp, &mut addresses[..wanted]).await?;
    // TLVs (and anything else the length covers) are read and dropped.
    let mut left = rest - wanted;
    let mut scratch = [0u8; 256];
    while left > 0 {
        let n = left.min(scratch.len());
        read_exact(tcp, &mut scratch[..n]).await?;
        left -= n;
    }
    source.resolve(&addresses[..wanted])
}

async fn read_exact(tcp: &mut TcpStream, buf: &mut [u8]) -> Result<(), ProxyProtocolError> {
    tcp.read_exact(buf)
        .await
        .map(|_| ())
        .map_err(|_| ProxyProtocolError::Closed)
}

/// Reads the rest of a v1 line into `line` (which holds `have` bytes), never past its
/// LF: what is available is peeked and only the line's part of it consumed. Returns
/// the line's length, CRLF included.
async fn read_line(
    tcp: &mut TcpStream,
    line: &mut [u8; V1_MAX],
    mut have: usize,
) -> Result<usize, ProxyProtocolError> {
    loop {
        if have == V1_MAX {
            return Err(ProxyProtocolError::Malformed);
        }
        let n = tcp
            .peek(&mut line[have..])
            .await
            .map_err(|_| ProxyProtocolError::Closed)?;
        if n == 0 {
            return Err(ProxyProtocolError::Closed);
        }
        let take = memchr::memchr(b'\n', &line[have..have + n]).map_or(n, |i| i + 1);
        // The peeked bytes are consumed as they are: this read returns them at once.
        read_exact(tcp, &mut line[have..have + take]).await?;
        have += take;
        if line[have - 1] == b'\n' {
            return Ok(have);
        }
    }
}

/// Parses a whole v1 line: `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n` or
/// `PROXY UNKNOWN…\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<Source, ProxyProtocolError> {
    let bad = ProxyProtocolError::Malformed;
    let body = line
        .strip_prefix(b"PROXY ")
        .and_then(|l| l.strip_suffix(b"\r\n"))
        .ok_or(bad)?;
    let text = std::str::from_utf8(body).map_err(|_| bad)?;
    let mut fields = text.split(' ');
    let family = fields.next().ok_or(bad)?;
    if family == "UNKNOWN" {
        // The rest of the line is to be ignored (spec: "whatever follows").
        return Ok(Source::Local);
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(bad),
    };
    let src: IpAddr = fields.next().ok_or(bad)?.parse().map_err(|_| bad)?;
    let dst: IpAddr = fields.next().ok_or(bad)?.parse().map_err(|_| bad)?;
    let sport = port(fields.next().ok_or(bad)?)?;
    port(fields.next().ok_or(bad)?)?;
    if fields.next().is_some() || src.is_ipv6() != v6 || dst.is_ipv6() != v6 {
        return Err(bad);
    }
    Ok(Source::Address(SocketAddr::new(src, sport)))
}

/// A v1 port: 1 to 5 decimal digits, no sign or leading zero, at most 65535.
fn port(text: &str) -> Result<u16, ProxyProtocolError> {
    let digits = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    digits
        .then(|| text.parse().ok())
        .flatten()
        .ok_or(ProxyProtocolError::Malformed)
}

/// What a v2 preamble says about the addresses that follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V2Source {
    /// Take the address block as IPv4 (12 bytes) or IPv6 (36 bytes).
    Inet { v6: bool },
    /// The peer is the client (LOCAL, or a family without an IP address).
    Local,
}

impl V2Source {
    /// The client from the start of the address block.
    pub fn resolve(self, addresses: &[u8]) -> Result<Source, ProxyProtocolError> {
        let bad = ProxyProtocolError::Malformed;
        match self {
            V2Source::Local => Ok(Source::Local),
            V2Source::Inet { v6: false } => {
                let a: [u8; 12] = addresses
                    .get(..12)
                    .ok_or(bad)?
                    .try_into()
                    .map_err(|_| bad)?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                let port = u16::from_be_bytes([a[8], a[9]]);
                Ok(Source::Address(SocketAddr::new(IpAddr::V4(ip), port)))
            }
            V2Source::Inet { v6: true } => {
                let a: [u8; 36] = addresses
                    .get(..36)
                    .ok_or(bad)?
                    .try_into()
                    .map_err(|_| bad)?;
                let mut ip = [0u8; 16];
                ip.copy_from_slice(&a[..16]);
                let port = u16::from_be_bytes([a[32], a[33]]);
                Ok(Source::Address(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(ip)),
                    port,
                )))
            }
        }
    }
}

/// Parses the 16-byte v2 preamble: what to take from the addresses, and how many
/// bytes follow it.
pub fn parse_v2_preamble(head: &[u8; 16]) -> Result<(V2Source, usize), ProxyProtocolError> {
    let bad = ProxyProtocolError::Malformed;
    if head[..12] != V2_SIGNATURE {
        return Err(ProxyProtocolError::Missing);
    }
    let (version, command) = (head[12] >> 4, head[12] & 0x0f);
    if version != 2 {
        return Err(bad);
    }
    let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
    let (family, transport) = (head[13] >> 4, head[13] & 0x0f);
    let source = match command {
        0 => V2Source::Local,
        1 => match (family, transport) {
            // TCP or UDP over IPv4 / IPv6; the address block must fit in the length.
            (1, 1 | 2) if len >= 12 => V2Source::Inet { v6: false },
            (2, 1 | 2) if len >= 36 => V2Source::Inet { v6: true },
            (1 | 2, 1 | 2) => return Err(bad),
            // UNSPEC, or a Unix socket: no IP address to give.
            (0, _) | (3, _) => V2Source::Local,
            _ => return Err(bad),
        },
        _ => return Err(bad),
    };
    Ok((source, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Source {
        Source::Address(s.parse().unwrap())
    }

    #[test]
    fn v1_lines() {
        let ok = [
            (
                &b"PROXY TCP4 192.0.2.44 10.0.0.1 51234 8080\r\n"[..],
                addr("192.0.2.44:51234"),
            ),
            (
                b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8443\r\n",
                addr("[2001:db8::7]:443"),
            ),
            (b"PROXY UNKNOWN\r\n", Source::Local),
            (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", Source::Local),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n", addr("1.2.3.4:0")),
        ];
        for (line, want) in ok {
            assert_eq!(
                parse_v1(line),
                Ok(want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        let bad: [&[u8]; 10] = [
            b"PROXY TCP4 192.0.2.44 10.0.0.1 51234 8080\n",
            b"PROXY TCP4 192.0.2.44 10.0.0.1 51234\r\n",
            b"PROXY TCP4 192.0.2.44 10.0.0.1 51234 8080 9\r\n",
            b"PROXY TCP4 2001:db8::7 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.44 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.44 10.0.0.1 65536 2\r\n",
            b"PROXY TCP4 192.0.2.44 10.0.0.1 01 2\r\n",
            b"PROXY TCP4  192.0.2.44 10.0.0.1 1 2\r\n",
            b"PROXY UDP4 192.0.2.44 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.444 10.0.0.1 1 2\r\n",
        ];
        for line in bad {
            assert_eq!(
                parse_v1(line),
                Err(ProxyProtocolError::Malformed),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    fn preamble(ver_cmd: u8, fam: u8, len: u16) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[..12].copy_from_slice(&V2_SIGNATURE);
        h[12] = ver_cmd;
        h[13] = fam;
        h[14..].copy_from_slice(&len.to_be_bytes());
        h
    }

    #[test]
    fn v2_preambles_and_addresses() {
        let (s, len) = parse_v2_preamble(&preamble(0x21, 0x11, 12)).unwrap();
        assert_eq!((s, len), (V2Source::Inet { v6: false }, 12));
        let block = [192, 0, 2, 44, 10, 0, 0, 1, 0xc8, 0x22, 0x1f, 0x90];
        assert_eq!(s.resolve(&block), Ok(addr("192.0.2.44:51234")));

        // TLVs after the addresses are counted in the length.
        let (s, len) = parse_v2_preamble(&preamble(0x21, 0x21, 36 + 7)).unwrap();
        assert_eq!((s, len), (V2Source::Inet { v6: true }, 43));
        let mut block = [0u8; 36];
        block[..16].copy_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        block[32..34].copy_from_slice(&443u16.to_be_bytes());
        assert_eq!(s.resolve(&block), Ok(addr("[2001:db8::7]:443")));

        // LOCAL, whatever the family; UNSPEC and Unix sockets.
        for (vc, fam) in [(0x20, 0x00), (0x20, 0x11), (0x21, 0x00), (0x21, 0x31)] {
            let (s, _) = parse_v2_preamble(&preamble(vc, fam, 0)).unwrap();
            assert_eq!(s.resolve(&[]), Ok(Source::Local));
        }

        let bad = ProxyProtocolError::Malformed;
        assert_eq!(
            parse_v2_preamble(&preamble(0x11, 0x11, 12)),
            Err(bad),
            "v1 nibble"
        );
        assert_eq!(
            parse_v2_preamble(&preamble(0x22, 0x11, 12)),
            Err(bad),
            "command"
        );
        assert_eq!(
            parse_v2_preamble(&preamble(0x21, 0x11, 11)),
            Err(bad),
            "short"
        );
        assert_eq!(
            parse_v2_preamble(&preamble(0x21, 0x21, 12)),
            Err(bad),
            "short v6"
        );
        assert_eq!(
            parse_v2_preamble(&preamble(0x21, 0x41, 12)),
            Err(bad),
            "family"
        );
        let mut h = preamble(0x21, 0x11, 12);
        h[3] = b'x';
        assert_eq!(parse_v2_preamble(&h), Err(ProxyProtocolError::Missing));
    }

    #[test]
    fn labels_follow_the_order_of_all() {
        for (i, e) in ProxyProtocolError::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
    }
}
