//! The floor under levee's raw cost: a bare pingora 0.9 HTTP proxy with nothing of
//! levee in it (pingora's own `Server`, listener and connection pool; one backend, no
//! routing, admission, metrics or header changes). Measured beside levee, HAProxy and
//! nginx in `benches/README.md` ("What pingora costs").
//!
//!     cargo run --release --example bare_pingora -- 127.0.0.1:18084 127.0.0.1:18080 2
//!
//! Arguments: listen address, backend address, worker threads.

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

struct Bare {
    backend: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.backend.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, backend, threads] = args.as_slice() else {
        eprintln!("usage: bare_pingora LISTEN BACKEND THREADS");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: threads.parse().unwrap_or(2),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        Bare {
            backend: backend.clone(),
        },
    );
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever();
}
