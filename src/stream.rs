//! levee's client connections: a TCP stream with a small write buffer and a
//! read-ahead for kept-alive connections.
//!
//! pingora writes a response's header and its body in separate calls and flushes at
//! the end. On an unbuffered stream that is one `send` per call: for a small response,
//! two system calls, two TCP segments and two wake-ups of the client where one would
//! do. pingora's own listeners put a buffer under each accepted stream, but the call
//! that does so is private to pingora, and levee runs its own accept loop
//! (`server.rs`). So levee hands pingora this type, which holds the first small write
//! after a flush (a response's header) and sends it with the next write or flush, in
//! one vectored call. Only that first write waits: a body dripped by a slow backend
//! still reaches the client as it comes, and a held header is sent even when the
//! response is cut by an error (on drop). Nothing is buffered between responses, so an
//! idle keep-alive connection holds no buffer.
//!
//! Between two requests, `next_request` waits for readiness without reading, then
//! reads what has arrived in one call; pingora parses it from there. (pingora's own
//! stream would need a one-byte read to wait, and a second read for the rest.)

use std::io::{self, IoSlice};
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, UniqueID, UniqueIDType,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Writes up to this size are collected: one MSS on loopback-sized links, the same
/// size pingora's own listeners use.
pub const WRITE_BUFFER: usize = 1460;

/// The first read of a kept-alive connection's next request takes up to this much.
const READAHEAD: usize = 4096;

/// Largest request header levee waits for as a whole before handing the connection to
/// pingora (which then bounds each read only).
pub const WHOLE_HEADER_MAX: usize = 16 * 1024;

/// Do these first bytes of a request hold its whole header (an empty line)?
pub fn header_complete(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// A client connection whose small writes are sent together at the next flush.
#[derive(Debug)]
pub struct ClientStream {
    tcp: TcpStream,
    /// The held write (at most one, smaller than `WRITE_BUFFER`), not yet sent.
    pending: Vec<u8>,
    /// May the next write be held? True after a flush: only the first write of a
    /// response (its header) waits, to go out with the next one.
    may_hold: bool,
    /// Bytes read while waiting for the next request, served before the socket.
    readahead: Bytes,
    socket_digest: Option<Arc<SocketDigest>>,
    proxy_digest: Option<Arc<ProxyDigest>>,
}

impl ClientStream {
    /// Wraps an accepted connection from `peer`; the socket digest is where pingora
    /// (and X-Forwarded-For) finds the client's address.
    pub fn new(tcp: TcpStream, peer: std::net::SocketAddr) -> ClientStream {
        let digest = SocketDigest::from_raw_fd(tcp.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        ClientStream {
            tcp,
            pending: Vec::new(),
            may_hold: true,
            readahead: Bytes::new(),
            socket_digest: Some(Arc::new(digest)),
            proxy_digest: None,
        }
    }

    /// Bytes buffered and not yet handed to the socket.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Waits up to `idle` for the next request on a kept-alive connection, holding no
    /// buffer meanwhile; then reads its header, which must arrive whole within
    /// `header` of its first byte (or fill `WHOLE_HEADER_MAX`), so a header dripped
    /// byte by byte cannot hold the connection. What was read is left for pingora to
    /// parse; usually the whole request arrives in one read. False when the client
    /// closed, stayed silent, or was too slow.
    pub async fn next_request(&mut self, idle: Duration, header: Duration) -> bool {
        let mut deadline = tokio::time::Instant::now() + idle;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            if !matches!(
                tokio::time::timeout_at(deadline, self.tcp.readable()).await,
                Ok(Ok(()))
            ) {
                return false;
            }
            if buf.is_empty() {
                buf.reserve_exact(READAHEAD);
            } else if buf.len() == buf.capacity() {
                buf.reserve(buf.len());
            }
            let start = buf.len();
            let room = buf.capacity() - start;
            buf.resize(start + room, 0);
            match self.tcp.try_read(&mut buf[start..]) {
                Ok(0) => return false,
                Ok(n) => {
                    buf.truncate(start + n);
                    if start == 0 {
                        // The first bytes: from now on the header has `header` to
                        // arrive whole.
                        deadline = tokio::time::Instant::now() + header;
                    }
                    if header_complete(&buf) || buf.len() >= WHOLE_HEADER_MAX {
                        self.readahead = Bytes::from(buf);
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf.truncate(start),
                Err(_) => return false,
            }
        }
    }

    /// Sends everything buffered; frees the buffer once it is empty.
    fn poll_send_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.drain(..n);
        }
        self.pending = Vec::new();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.readahead.is_empty() {
            let n = self.readahead.len().min(buf.remaining());
            buf.put_slice(&self.readahead[..n]);
            self.readahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl ClientStream {
    /// Writes `bufs` after whatever is held, in one vectored call where possible.
    /// Returns how many bytes of `bufs` (not of the held write) went out.
    fn poll_write_after_pending(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.may_hold && self.pending.is_empty() && total > 0 && total < WRITE_BUFFER {
            // The first write since a flush: hold it for the next one.
            self.may_hold = false;
            self.pending.reserve_exact(total);
            for b in bufs {
                self.pending.extend_from_slice(b);
            }
            return Poll::Ready(Ok(total));
        }
        self.may_hold = false;
        while !self.pending.is_empty() {
            let held = self.pending.len();
            let mut all = Vec::with_capacity(bufs.len() + 1);
            all.push(IoSlice::new(&self.pending));
            all.extend(bufs.iter().map(|b| IoSlice::new(b)));
            let n = ready!(Pin::new(&mut self.tcp).poll_write_vectored(cx, &all))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if n >= held {
                self.pending = Vec::new();
                return Poll::Ready(Ok(n - held));
            }
            self.pending.drain(..n);
        }
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_after_pending(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_after_pending(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_pending(cx))?;
        self.may_hold = true;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send_pending(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Drop for ClientStream {
    /// A response cut by an error may leave its header held: send it if the socket
    /// takes it at once, so the client sees a cut response rather than none.
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let _ = self.tcp.try_write(&self.pending);
        }
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        // Through AsyncWrite, so whatever is buffered goes out first.
        let _ = tokio::io::AsyncWriteExt::shutdown(self).await;
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.tcp.as_raw_fd() as UniqueIDType
    }
}

impl Ssl for ClientStream {}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        Vec::new()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.proxy_digest.clone()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.proxy_digest = Some(Arc::new(digest));
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket_digest.clone()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.socket_digest = Some(Arc::new(digest));
    }
}

#[async_trait]
impl Peek for ClientStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if !self.readahead.is_empty() {
            let n = self.readahead.len().min(buf.len());
            buf[..n].copy_from_slice(&self.readahead[..n]);
            return Ok(true);
        }
        self.tcp.peek(buf).await?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (ClientStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (tcp, peer) = accepted.unwrap();
        (ClientStream::new(tcp, peer), client.unwrap())
    }

    /// Reads whatever has arrived, waiting briefly for the first byte.
    async fn available(peer: &mut tokio::net::TcpStream) -> Vec<u8> {
        let mut buf = vec![0u8; 1 << 16];
        match tokio::time::timeout(std::time::Duration::from_millis(200), peer.read(&mut buf)).await
        {
            Ok(Ok(n)) => buf[..n].to_vec(),
            _ => Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_header_waits_for_its_body_and_they_leave_together() {
        let (mut s, mut peer) = pair().await;
        s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
            .await
            .unwrap();
        assert!(s.pending() > 0);
        assert!(available(&mut peer).await.is_empty(), "header sent alone");
        s.write_all(b"ok").await.unwrap();
        assert_eq!(s.pending(), 0);
        assert_eq!(s.pending.capacity(), 0, "buffer kept once sent");
        let got = available(&mut peer).await;
        assert_eq!(got, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
    }

    #[tokio::test]
    async fn after_the_first_write_small_writes_go_out_at_once() {
        let (mut s, mut peer) = pair().await;
        s.write_all(b"head").await.unwrap();
        s.write_all(b"1").await.unwrap();
        assert_eq!(available(&mut peer).await, b"head1");
        // A slow body, byte by byte: each byte leaves when written.
        for b in [b"2", b"3"] {
            s.write_all(b).await.unwrap();
            assert_eq!(s.pending(), 0);
            assert_eq!(available(&mut peer).await, b);
        }
        // A flush starts the next response: its first write is held again.
        s.flush().await.unwrap();
        s.write_all(b"next").await.unwrap();
        assert!(s.pending() > 0);
        s.flush().await.unwrap();
        assert_eq!(available(&mut peer).await, b"next");
    }

    #[tokio::test]
    async fn a_held_write_is_sent_when_the_stream_is_dropped() {
        let (mut s, mut peer) = pair().await;
        s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        drop(s);
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\n");
    }

    #[tokio::test]
    async fn large_writes_go_out_in_order_after_what_was_buffered() {
        let (mut s, mut peer) = pair().await;
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        s.write_all(b"head").await.unwrap();
        s.write_all(&big).await.unwrap();
        s.write_all(b"tail").await.unwrap();
        AsyncWriteExt::shutdown(&mut s).await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        let mut want = b"head".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"tail");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "bytes reordered or lost");
    }
}
