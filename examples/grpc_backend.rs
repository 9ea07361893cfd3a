//! A gRPC backend for benchmarks: tonic over h2c (prior knowledge) serving the standard
//! health service (`grpc.health.v1.Health`, Check and Watch) with the whole server
//! (service `""`) SERVING. `benches/load.rs` runs it behind levee's `protocol = "h2"`
//! upstream and nginx's `grpc_pass` in its grpc section.
//!
//! ```sh
//! cargo run --release --example grpc_backend -- 127.0.0.1:0 [WORKERS]
//! ```
//!
//! WORKERS is the tokio runtime's worker threads (multi-threaded runtime; default 1).
//! It prints `listening <addr>` once it accepts connections.

use std::net::SocketAddr;

use tonic::transport::server::TcpIncoming;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = || -> ! {
        eprintln!("usage: grpc_backend <listen addr> [worker threads, default 1]");
        std::process::exit(2);
    };
    let Some(listen) = args.next() else { usage() };
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        usage()
    };
    let workers = match args.next() {
        None => 1,
        Some(n) => match n.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => usage(),
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("grpc-backend")
        .enable_all()
        .build()?;
    rt.block_on(serve(listen))
}

async fn serve(listen: SocketAddr) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    // health_reporter's service starts with "" SERVING.
    let (_reporter, service) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .map_err(std::io::Error::other)
}
