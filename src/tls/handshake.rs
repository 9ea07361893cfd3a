//! One TLS handshake on an accepted connection, bounded by `client_header_ms` and
//! counted by result (`levee_tls_handshakes_total{result}`).
//!
//! A client that opens TCP and sends nothing, or part of a ClientHello, is closed when
//! the bound passes. One that speaks plain HTTP to a TLS port gets a `400` saying so
//! (as nginx does) instead of a bare close. Any other bytes that are not TLS end the
//! handshake with an error: rustls parses them, nothing here trusts them.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::Acceptor;
pub use crate::metrics::{TlsHandshake as Handshake, TlsHandshakes as HandshakeMetrics};

/// The first byte of every TLS record that carries a handshake, the ClientHello's
/// included.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Most bytes of a plain HTTP request read before answering it `400`.
const PLAIN_HTTP_READ: usize = 16 * 1024;

/// The answer to plain HTTP on a TLS port.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 54\r\n\r\n{\"error\":\"tls_required\",\"reason\":\"plain_http_on_tls\"}\n";

/// Runs the server side of a handshake on `tcp` for at most `timeout`. `None`: the
/// connection is closed (and counted by why).
pub async fn accept(
    acceptor: &Acceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
) -> Option<TlsStream<TcpStream>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let result = match tokio::time::timeout_at(deadline, first_byte(&tcp)).await {
        Err(_) => Err(Handshake::Timeout),
        Ok(None) => Err(Handshake::Closed),
        Ok(Some(b)) if b != HANDSHAKE_RECORD && b.is_ascii_uppercase() => {
            answer_plain_http(tcp, deadline).await;
            Err(Handshake::PlainHttp)
        }
        Ok(Some(_)) => {
            match tokio::time::timeout_at(deadline, acceptor.acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    Err(match e.kind() {
                        std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe => Handshake::Closed,
                        _ => Handshake::Error,
                    })
                }
                Err(_) => Err(Handshake::Timeout),
            }
        }
    };
    match result {
        Ok(stream) => {
            acceptor.metrics.count(Handshake::Ok);
            Some(stream)
        }
        Err(why) => {
            if why == Handshake::Timeout {
                tracing::debug!(%peer, "TLS handshake not finished within client_header_ms");
            }
            acceptor.metrics.count(why);
            None
        }
    }
}

/// The first byte the client sent, without consuming it; `None` if it closed first.
async fn first_byte(tcp: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match tcp.peek(&mut b).await {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

/// Reads the request head (so the answer is not cut by a reset for unread bytes),
/// answers `400`, and closes; all by `deadline`.
async fn answer_plain_http(mut tcp: TcpStream, deadline: tokio::time::Instant) {
    let mut buf = vec![0u8; 4096];
    let mut seen = 0;
    while seen < PLAIN_HTTP_READ {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                seen += n;
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Ok(_) => return,
            Err(_) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(PLAIN_HTTP_ANSWER)).await;
    let _ = tokio::time::timeout(Duration::from_millis(100), tcp.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_says_its_length() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "tls_required");
    }
}
