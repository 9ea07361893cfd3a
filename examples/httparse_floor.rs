//! The floor under levee's HTTP/1.1 codec: the least forwarder on tokio and httparse.
//! One current-thread runtime, keep-alive on both sides, a pool of idle connections to
//! one backend, request and response heads parsed with httparse and forwarded as they
//! came. Nothing else: no limits, no routing, no header rewriting, no timeouts, and
//! bodies framed by `Content-Length` only (a chunked message closes the connection);
//! `Connection: close` from either side closes that side after the exchange.
//! `benches/load.rs` runs it as the target "httparse-floor", and
//! `scripts/callgrind.sh` counts its instructions, to show what levee's own work costs
//! over the codec's least.
//!
//! ```sh
//! cargo run --release --example httparse_floor -- 127.0.0.1:8000 127.0.0.1:9000
//! ```
//!
//! It prints `listening <addr>` once it accepts connections.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Idle backend connections, newest last.
type Pool = Rc<RefCell<Vec<TcpStream>>>;

/// Most header fields a head may have.
const FIELDS: usize = 64;

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: httparse_floor <listen addr> <backend addr>");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().map_err(io::Error::other)?;
    let backend: SocketAddr = backend.parse().map_err(io::Error::other)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind(listen).await?;
        println!("listening {}", listener.local_addr()?);
        let pool = Pool::default();
        loop {
            let (client, _) = listener.accept().await?;
            client.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let _ = serve(client, backend, pool).await;
            });
        }
    })
}

/// Forwards the client's requests one at a time, each on a pooled backend connection.
async fn serve(mut client: TcpStream, backend: SocketAddr, pool: Pool) -> io::Result<()> {
    let mut req = Vec::with_capacity(4096);
    let mut res = Vec::with_capacity(4096);
    loop {
        let Some((len, client_close)) = read_message(&mut client, &mut req, request_len).await?
        else {
            return Ok(());
        };
        let idle = pool.borrow_mut().pop();
        let mut up = match idle {
            Some(up) => up,
            None => {
                let up = TcpStream::connect(backend).await?;
                up.set_nodelay(true)?;
                up
            }
        };
        up.write_all(&req[..len]).await?;
        req.drain(..len);
        res.clear();
        let Some((len, backend_close)) = read_message(&mut up, &mut res, response_len).await?
        else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        client.write_all(&res[..len]).await?;
        if res.len() == len && !backend_close {
            pool.borrow_mut().push(up);
        }
        if client_close {
            return Ok(());
        }
    }
}

/// Reads from `stream` into `buf` until it holds a whole message (head and body), and
/// returns the message's length and whether it asked to close; `None` when the peer
/// closed before a message began.
async fn read_message(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    message_len: fn(&[u8]) -> io::Result<Option<Framing>>,
) -> io::Result<Option<Framing>> {
    loop {
        if let Some((len, close)) = message_len(buf)? {
            if buf.len() >= len {
                return Ok(Some((len, close)));
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
    }
}

/// A message's whole length (head and body), and whether it asked to close.
type Framing = (usize, bool);

/// A request's framing once its head is in `buf`.
fn request_len(buf: &[u8]) -> io::Result<Option<Framing>> {
    let mut fields = [httparse::EMPTY_HEADER; FIELDS];
    let mut head = httparse::Request::new(&mut fields);
    match head.parse(buf).map_err(io::Error::other)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(n) => framing(n, head.headers).map(Some),
    }
}

/// A response's framing once its head is in `buf`.
fn response_len(buf: &[u8]) -> io::Result<Option<Framing>> {
    let mut fields = [httparse::EMPTY_HEADER; FIELDS];
    let mut head = httparse::Response::new(&mut fields);
    match head.parse(buf).map_err(io::Error::other)? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(n) => framing(n, head.headers).map(Some),
    }
}

/// The framing of a message whose head is `head_len` bytes: the body's length from
/// `Content-Length` (0 without one; a chunked body is refused), and `Connection: close`.
fn framing(head_len: usize, fields: &[httparse::Header<'_>]) -> io::Result<Framing> {
    let (mut len, mut close) = (0, false);
    for f in fields {
        if f.name.eq_ignore_ascii_case("content-length") {
            len = std::str::from_utf8(f.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| io::Error::other("bad content-length"))?;
        } else if f.name.eq_ignore_ascii_case("connection") {
            close |= f.value.eq_ignore_ascii_case(b"close");
        } else if f.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(io::Error::other("chunked bodies are not forwarded"));
        }
    }
    Ok((head_len + len, close))
}
