//! grpcio, gRPC's C-core client (here its Python package), through levee to a tonic
//! server behind an h2 upstream: a unary call and a server stream pass, and a shed is
//! UNAVAILABLE carrying levee's reason. `tests/grpc.rs` does the same with tonic's
//! client; the calls themselves are in `tests/grpcio_check.py`. Without python3 or
//! its `grpcio` and `grpcio-health-checking` packages (`scripts/setup.sh --all`
//! installs them) the tests print `skipped: …` and pass.

mod common;
#[path = "common/grpc.rs"]
mod grpc_server;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use grpc_server::{levee_h2, GrpcServer};
use levee::app::Running;

const LIMIT: Duration = Duration::from_secs(10);
/// Longest the script may run (its every call has a 10 s deadline).
const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

/// levee with one h2 upstream over `backend` and `extra` in the upstream table.
async fn levee(backend: SocketAddr, extra: &str) -> Running {
    levee_h2(&[backend], extra).await
}

/// Whether python3 can import grpcio and the health stubs; prints `skipped: …` when
/// not.
fn grpcio_available(test: &str) -> bool {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import grpc; from grpc_health.v1 import health_pb2, health_pb2_grpc",
        ])
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) => {
            eprintln!("skipped: python3 not found ({e}); {test} needs it");
            false
        }
        Ok(o) if !o.status.success() => {
            eprintln!(
                "skipped: python3 cannot import grpcio ({test} needs `pip install grpcio grpcio-health-checking`, or scripts/setup.sh --all): {}",
                String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("")
            );
            false
        }
        Ok(_) => true,
    }
}

/// Runs `tests/grpcio_check.py MODE ADDR`; panics with its output unless it passed.
async fn script(mode: &str, addr: SocketAddr) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpcio_check.py");
    let child = tokio::process::Command::new("python3")
        .arg(&path)
        .arg(mode)
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn python3");
    let out = tokio::time::timeout(SCRIPT_LIMIT, child.wait_with_output())
        .await
        .expect("grpcio_check.py within its limit")
        .expect("grpcio_check.py output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "grpcio_check.py {mode} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", stdout.trim());
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_unary_and_streaming_calls_pass() {
    if !grpcio_available("grpcio_unary_and_streaming_calls_pass") {
        return;
    }
    let server = GrpcServer::start().await;
    let levee = levee(server.addr, "").await;
    let out = script("serve", levee.addr()).await;
    assert!(out.starts_with("ok: "), "{out}");
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_sees_a_shed_as_unavailable_with_levee_s_reason() {
    if !grpcio_available("grpcio_sees_a_shed_as_unavailable_with_levee_s_reason") {
        return;
    }
    let server = GrpcServer::start().await;
    let levee = levee(
        server.addr,
        "[upstream.limits]\nmax_inflight = 1\nqueue_depth = 0",
    )
    .await;
    let out = script("shed", levee.addr()).await;
    assert!(out.contains("overloaded"), "{out}");
    // The one Check was shed, and counted as the 503 would be.
    let admin = levee.admin_addr.unwrap();
    let metrics = String::from_utf8_lossy(&fetch(admin, get("/metrics")).await.body).into_owned();
    let shed: f64 = samples(&metrics, "levee_shed_total").values().sum();
    assert_eq!(shed, 1.0, "{metrics}");
    eventually(LIMIT, "the watch's slot released", || all_idle(&levee)).await;
}
