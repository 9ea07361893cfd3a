//! levee at the edge of a real site, through real sockets: virtual hosts, the PROXY
//! protocol (headers built byte by byte here), trusted forwarders and request ids.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use levee::demo::replica::{Fault, Replica};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(10);

fn backend(r: &Replica) -> String {
    format!("[[upstream.backend]]\naddress = \"{}\"\n", r.addr())
}

async fn start(text: &str) -> levee::app::Running {
    let config = levee::config::parse(text)
        .unwrap_or_else(|e| panic!("test config invalid:\n{e}\n---\n{text}"));
    levee::app::start(config).await.expect("levee starts")
}

const SERVER: &str =
    "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\nthreads = 2\n";

async fn scrape(
    levee: &levee::app::Running,
    name: &str,
) -> std::collections::BTreeMap<String, f64> {
    let admin = levee.admin_addr.expect("admin listener");
    let reply = fetch(admin, get("/metrics")).await;
    samples(&String::from_utf8_lossy(&reply.body), name)
}

/// Which replica answered a request with this `Host` (and `uri`).
async fn served_by(addr: SocketAddr, host: &str, uri: &str) -> Reply {
    let req = http::Request::get(uri)
        .header("host", host)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    fetch(addr, req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_routed_by_host_then_by_longest_prefix() {
    let (api, www, v2, rest) = (
        replica("api", "a", 2, 0).await,
        replica("www", "a", 2, 0).await,
        replica("v2", "a", 2, 0).await,
        replica("rest", "a", 2, 0).await,
    );
    let text = format!(
        "{SERVER}\
         [[upstream]]\nname = \"api\"\nhosts = [\"api.example.com\"]\nroutes = [\"/\"]\n{}\
         [[upstream]]\nname = \"www\"\nhosts = [\"*.example.com\"]\nroutes = [\"/\"]\n{}\
         [[upstream]]\nname = \"v2\"\nhosts = [\"api.example.com\"]\nroutes = [\"/v2/\"]\n{}\
         [[upstream]]\nname = \"rest\"\nroutes = [\"/\"]\n{}",
        backend(&api),
        backend(&www),
        backend(&v2),
        backend(&rest)
    );
    let levee = start(&text).await;
    let addr = levee.addr();
    for (host, path, want) in [
        ("api.example.com", "/x", "api"),
        ("API.Example.COM:8080", "/x", "api"),
        ("api.example.com", "/v2/x", "v2"),
        ("www.example.com", "/v2/x", "www"),
        ("a.b.example.com", "/", "www"),
        ("example.com", "/", "rest"),
        ("other.org", "/x", "rest"),
    ] {
        let reply = served_by(addr, host, path).await;
        assert_eq!(reply.status, 200, "{host}{path}");
        assert_eq!(reply.header("x-replica"), Some(want), "{host}{path}");
    }
    // An absolute-form target is routed by its authority (levee refuses one whose
    // `Host` names another), which is the `Host` the backend sees.
    let reply = served_by(addr, "API.example.com", "http://api.example.com/x?echo=1").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("x-replica"), Some("api"));
    assert_eq!(reply.json()["headers"]["host"], "api.example.com");
    // HTTP/2's :authority.
    let mut h2 = h2_client(addr).await;
    let req = http::Request::get("http://www.example.com/x")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = h2.send_request(req).await.expect("h2 response");
    assert_eq!(resp.headers()["x-replica"], "www");

    // /status shows each upstream's hosts.
    let status = fetch(levee.admin_addr.unwrap(), get("/status"))
        .await
        .json();
    let ups = status["upstreams"].as_array().unwrap();
    assert_eq!(ups[0]["hosts"], serde_json::json!(["api.example.com"]));
    assert_eq!(ups[3]["hosts"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_gets_404_and_reaches_no_backend() {
    let api = replica("api", "a", 2, 0).await;
    let text = format!(
        "{SERVER}[[upstream]]\nname = \"api\"\nhosts = [\"api.example.com\"]\nroutes = [\"/api/\"]\n{}",
        backend(&api)
    );
    let levee = start(&text).await;
    for (host, path) in [("nowhere.test", "/api/x"), ("api.example.com", "/other")] {
        let reply = served_by(levee.addr(), host, path).await;
        assert_eq!(reply.status, 404, "{host}{path}");
        let v = reply.json();
        assert_eq!(v["error"], "no_route");
        assert_eq!(
            v["request_id"].as_str(),
            reply.header("x-request-id"),
            "{v}"
        );
    }
    assert_eq!(scrape(&levee, "levee_unrouted_total").await[""], 2.0);
    assert_eq!(api.stats().requests_seen, 0, "no backend touched");
    assert_eq!(
        served_by(levee.addr(), "api.example.com", "/api/x")
            .await
            .status,
        200
    );
}

/// A PROXY v1 line for TCP over IPv4.
fn v1(src: &str, sport: u16) -> Vec<u8> {
    format!("PROXY TCP4 {src} 10.0.0.1 {sport} 8080\r\n").into_bytes()
}

/// A PROXY v2 header: `command` 0 (LOCAL) or 1 (PROXY), the address block for `src`
/// (IPv4 or IPv6), and one TLV (which levee must skip).
fn v2(command: u8, src: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x20 | command);
    let mut block = Vec::new();
    let family = match src {
        SocketAddr::V4(a) => {
            block.extend_from_slice(&a.ip().octets());
            block.extend_from_slice(&[10, 0, 0, 1]);
            block.extend_from_slice(&a.port().to_be_bytes());
            block.extend_from_slice(&8080u16.to_be_bytes());
            0x11
        }
        SocketAddr::V6(a) => {
            block.extend_from_slice(&a.ip().octets());
            block.extend_from_slice(
                &"2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            block.extend_from_slice(&a.port().to_be_bytes());
            block.extend_from_slice(&8080u16.to_be_bytes());
            0x21
        }
    };
    out.push(family);
    // PP2_TYPE_AUTHORITY ("lb.test"), as balancers send.
    block.extend_from_slice(&[0x02, 0x00, 0x07]);
    block.extend_from_slice(b"lb.test");
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

const ECHO: &[u8] = b"GET /x?echo=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

/// Sends `parts` one write each (a pause of nothing between them but the writes), then
/// reads until levee closes. Returns everything read. A write that fails because levee
/// already closed the connection (a refused header, with bytes left unread, resets it)
/// ends the writing: what was read, nothing, is the answer.
async fn exchange(addr: SocketAddr, parts: &[&[u8]]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    for p in parts {
        let written = tcp.write_all(p).await.and(tcp.flush().await);
        if let Err(e) = written {
            assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "write: {e}"
            );
            break;
        }
    }
    read_to_close(&mut tcp).await
}

async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    match tokio::time::timeout(LIMIT, s.read_to_end(&mut out)).await {
        Ok(_) => out,
        Err(_) => panic!("levee did not close the connection within {LIMIT:?}"),
    }
}

/// The echoed request headers of a raw HTTP/1.1 answer.
fn echoed(raw: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(raw);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &text[text.find("\r\n\r\n").expect("head") + 4..];
    serde_json::from_str::<serde_json::Value>(body.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
        ["headers"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_header_names_the_client() {
    let r = replica("r", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server("proxy_protocol = true")
        .start()
        .await;
    let addr = levee.addr();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (v1("192.0.2.44", 51234), "192.0.2.44"),
        (
            b"PROXY TCP6 2001:db8::7 2001:db8::1 443 8443\r\n".to_vec(),
            "2001:db8::7",
        ),
        (b"PROXY UNKNOWN\r\n".to_vec(), "127.0.0.1"),
        (v2(1, "198.51.100.9:40000".parse().unwrap()), "198.51.100.9"),
        (v2(1, "[2001:db8::9]:40000".parse().unwrap()), "2001:db8::9"),
        // LOCAL: the balancer's own health check; the peer is the client.
        (v2(0, "198.51.100.9:40000".parse().unwrap()), "127.0.0.1"),
    ];
    for (header, client) in &cases {
        // In one write with the request, and split (the header across two writes,
        // then the request alone), levee reads exactly the header.
        let together = [header.as_slice(), ECHO].concat();
        let h = echoed(&exchange(addr, &[&together]).await);
        assert_eq!(h["x-forwarded-for"], *client, "{h}");
        let (a, b) = header.split_at(header.len() / 2);
        let h = echoed(&exchange(addr, &[a, b, ECHO]).await);
        assert_eq!(h["x-forwarded-for"], *client, "{h}");
    }
    // Keep-alive after the header: the next requests on the connection are served.
    let mut c = after_header(addr, &v1("192.0.2.50", 1)).await;
    for _ in 0..3 {
        let v = c.request(get("/x?echo=1")).await.json();
        assert_eq!(v["headers"]["x-forwarded-for"], "192.0.2.50");
    }
    let errors = scrape(&levee, "levee_proxy_protocol_errors_total").await;
    assert!(errors.values().all(|n| *n == 0.0), "{errors:?}");
}

/// An HTTP/1.1 client on a new connection to `addr` that begins with `header`.
async fn after_header(addr: SocketAddr, header: &[u8]) -> Conn {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(header).await.expect("write the PROXY header");
    Conn::over(tcp).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_malformed_or_slow_proxy_header_closes_without_an_answer() {
    let r = replica("r", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server("proxy_protocol = true\n[server.timeouts]\nclient_header_ms = 300")
        .start()
        .await;
    let addr = levee.addr();
    // A client that connects directly, without the header.
    assert_eq!(exchange(addr, &[ECHO]).await, b"", "missing");
    // Malformed lines and binary headers.
    for bad in [
        &b"PROXY TCP4 192.0.2.444 10.0.0.1 1 2\r\n"[..],
        b"PROXY TCP4 192.0.2.4 10.0.0.1 1 2\n",
        b"PROXY \r\n",
        &[b"\r\n\r\n\0\r\nQUIT\n\x31\x11\x00\x0c".as_slice(), &[0; 12]].concat(),
    ] {
        let sent = [bad, ECHO].concat();
        assert_eq!(
            exchange(addr, &[&sent]).await,
            b"",
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let too_long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
    assert_eq!(exchange(addr, &[too_long.as_bytes(), ECHO]).await, b"");
    // A header that stops half way: closed once client_header_ms has passed.
    let started = std::time::Instant::now();
    assert_eq!(exchange(addr, &[b"PROXY TCP4 192.0"]).await, b"");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // A header cut short by the client.
    {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(&v2(1, "192.0.2.1:1".parse().unwrap())[..20])
            .await
            .unwrap();
        tcp.shutdown().await.unwrap();
        assert_eq!(read_to_close(&mut tcp).await, b"");
    }
    let errors = scrape(&levee, "levee_proxy_protocol_errors_total").await;
    assert_eq!(errors["{reason=\"missing\"}"], 1.0, "{errors:?}");
    assert_eq!(errors["{reason=\"malformed\"}"], 5.0, "{errors:?}");
    assert_eq!(errors["{reason=\"timeout\"}"], 1.0, "{errors:?}");
    assert_eq!(errors["{reason=\"closed\"}"], 1.0, "{errors:?}");
    assert_eq!(r.stats().requests_seen, 0, "no backend touched");
    eventually(LIMIT, "connections closed", || {
        levee.app.connections.open() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_ip_cap_counts_the_proxy_source() {
    let r = replica("r", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server("proxy_protocol = true\nmax_connections_per_ip = 1")
        .start()
        .await;
    let addr = levee.addr();
    let mut first = after_header(addr, &v1("192.0.2.1", 1)).await;
    assert_eq!(first.get("/x").await.status, 200);
    // Same source behind the same balancer address: over the cap, closed unanswered.
    assert_eq!(exchange(addr, &[&v1("192.0.2.1", 2), ECHO]).await, b"");
    // Another source through the same balancer is its own client.
    let h = echoed(&exchange(addr, &[&v1("192.0.2.2", 3), ECHO]).await);
    assert_eq!(h["x-forwarded-for"], "192.0.2.2");
    let refused = scrape(&levee, "levee_connections_refused_total").await;
    assert_eq!(refused["{reason=\"per_ip\"}"], 1.0, "{refused:?}");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_and_request_ids_are_believed_from_trusted_peers_only() {
    let r = replica("r", "a", 4, 0).await;
    let incoming = [
        ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
        ("x-request-id", "edge-7f3a"),
    ];
    for (trusted, keeps_id) in [
        ("[\"127.0.0.0/8\", \"10.0.0.0/8\"]", true),
        ("[\"10.0.0.0/8\"]", false),
    ] {
        let levee = Setup::new(&[&r])
            .server(&format!("trusted_proxies = {trusted}"))
            .start()
            .await;
        let reply = fetch(levee.addr(), get_with("/x?echo=1", &incoming)).await;
        let v = reply.json();
        let h = &v["headers"];
        // Either way the backend gets the list with the peer appended.
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.1.1, 127.0.0.1");
        let id = reply.header("x-request-id").expect("a request id");
        assert_eq!(h["x-request-id"], id, "the same id at both ends");
        assert_eq!(id == "edge-7f3a", keeps_id, "{trusted}: {id}");
        if !keeps_id {
            assert_eq!(id.len(), 32, "{id}");
        }
        // A malformed id is replaced even from a trusted peer.
        let long = "x".repeat(129);
        let reply = fetch(
            levee.addr(),
            get_with("/x?echo=1", &[("x-request-id", &long)]),
        )
        .await;
        assert_ne!(reply.header("x-request-id"), Some(long.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_carries_the_request_id() {
    // Proxied: the same id at the client and at the backend, a new one each time.
    let r = replica("r", "a", 1, 300).await;
    let levee = Setup::new(&[&r])
        .upstream("[upstream.limits]\nmax_inflight = 1\nqueue_depth = 0")
        .start()
        .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..3 {
        let reply = fetch(levee.addr(), get("/x?echo=1&ms=0")).await;
        let id = reply.header("x-request-id").expect("id").to_owned();
        assert_eq!(reply.json()["headers"]["x-request-id"], id.as_str());
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        assert!(seen.insert(id), "ids are unique");
    }
    // Shed: the 503's header and body name the same id.
    let addr = levee.addr();
    let held = tokio::spawn(async move { fetch(addr, get("/slow")).await.status });
    eventually(LIMIT, "the one slot taken", || {
        levee.app.snapshot().upstreams[0].inflight() == 1
    })
    .await;
    let shed = fetch(addr, get("/x")).await;
    assert_eq!(shed.status, 503);
    let id = shed.header("x-request-id").expect("id on a shed");
    assert_eq!(shed.json()["request_id"], id);
    assert_eq!(held.await.unwrap(), 200);

    // 502 (nothing listens at the backend's address) and 504 (a backend that hangs).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let hung = replica("hung", "a", 2, 0).await;
    hung.set_fault(Fault::Hang);
    for (addr, status) in [(dead, 502), (hung.addr(), 504)] {
        let text = format!(
            "{SERVER}[server.timeouts]\nread_ms = 200\n[[upstream]]\nname = \"app\"\nroutes = [\"/\"]\n\
             retry_on_connect_failure = 0\n[[upstream.backend]]\naddress = \"{addr}\"\n"
        );
        let levee = start(&text).await;
        let reply = fetch(levee.addr(), get("/x")).await;
        assert_eq!(reply.status, status);
        let id = reply.header("x-request-id").expect("id");
        assert_eq!(reply.json()["request_id"], id, "{status}");
    }
}
