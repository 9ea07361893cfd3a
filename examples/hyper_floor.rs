//! The floor under levee's data path: the least a proxy on hyper 1.x can do. One
//! current-thread runtime, a hyper server connection per client, pooled hyper client
//! connections to one backend, nothing else (no limits, no routing, no header
//! rewriting, no timeouts). `benches/load.rs` runs it as the target "hyper-floor" to
//! show what levee's own work costs over hyper's.
//!
//! ```sh
//! cargo run --release --example hyper_floor -- 127.0.0.1:8000 127.0.0.1:9000
//! ```
//!
//! It prints `listening <addr>` once it accepts connections.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(backend)) = (args.next(), args.next()) else {
        eprintln!("usage: hyper_floor <listen addr> <backend addr>");
        std::process::exit(2);
    };
    let parse = |s: &str| {
        s.parse::<SocketAddr>()
            .map_err(|e| std::io::Error::other(format!("{s}: {e}")))
    };
    let (listen, backend) = (parse(&listen)?, parse(&backend)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, serve(listen, backend))
}

async fn serve(listen: SocketAddr, backend: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    let pool: Pool = Rc::default();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let pool = pool.clone();
        tokio::task::spawn_local(async move {
            let svc = service_fn(move |req| forward(pool.clone(), backend, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

async fn forward(
    pool: Pool,
    backend: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, hyper::Error> {
    let idle = take_ready(&pool);
    let mut tx = match idle {
        Some(tx) => tx,
        None => connect(backend).await?,
    };
    let resp = tx.send_request(req).await?;
    // Back to the pool once the response head is in; it is taken again only when
    // ready (its body ended).
    pool.borrow_mut().push(tx);
    Ok(resp)
}

/// A pooled connection ready for a request; busy ones (a body still in flight) stay.
fn take_ready(pool: &Pool) -> Option<SendRequest<Incoming>> {
    let mut pool = pool.borrow_mut();
    pool.retain(|tx| !tx.is_closed());
    let i = pool.iter().rposition(SendRequest::is_ready)?;
    Some(pool.swap_remove(i))
}

async fn connect(backend: SocketAddr) -> Result<SendRequest<Incoming>, hyper::Error> {
    let tcp = loop {
        match TcpStream::connect(backend).await {
            Ok(t) => break t,
            Err(e) => eprintln!("connect {backend}: {e}"),
        }
    };
    let _ = tcp.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::task::spawn_local(async move {
        let _ = conn.await;
    });
    Ok(tx)
}
