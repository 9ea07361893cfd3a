//! A tonic server with the standard health service, and levee with an h2 upstream in
//! front of servers like it; shared by the gRPC tests (`#[path]`-included, so the other
//! tests do not build tonic's server).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use levee::app::Running;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;

use super::common::Setup;

/// A tonic server with the standard health service on `127.0.0.1:0`; it stops when
/// dropped, or gracefully with [`GrpcServer::shut_down`].
pub struct GrpcServer {
    pub addr: SocketAddr,
    pub reporter: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl GrpcServer {
    pub async fn start() -> GrpcServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                })
                .await;
        });
        GrpcServer {
            addr,
            reporter,
            stop: Some(stop),
            task,
        }
    }

    /// Stops gracefully: GOAWAY on every connection, calls in progress finish
    /// (waiting at most `limit`).
    pub async fn shut_down(mut self, limit: Duration) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(limit, &mut self.task).await;
    }
}

/// levee with one h2 upstream over `backends` and `extra` in the upstream table.
pub async fn levee_h2(backends: &[SocketAddr], extra: &str) -> Running {
    let setup = Setup {
        upstream: format!("protocol = \"h2\"\n{extra}\n"),
        backends: backends.iter().map(|a| (*a, "a".to_string())).collect(),
        server: String::new(),
        tail: String::new(),
    };
    setup.start().await
}
