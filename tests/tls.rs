//! TLS listeners through real sockets: certificates made here (rcgen, one test CA),
//! rustls clients trusting only that CA, plain replicas behind levee.
//!
//! HTTPS to a plain replica with `X-Forwarded-Proto: https`; h2 or HTTP/1.1 by ALPN;
//! SNI picking the certificate; a keep-alive TLS connection released when idle and
//! serving again; certificates reloaded when their files change and by `reload` (what
//! SIGHUP runs) and in the running binary; a bad pair keeping the certificates in
//! force and counted; `levee_tls_cert_expiry_seconds` following the certificates in
//! force; half-open handshakes closed after `client_header_ms`; garbage and plain HTTP
//! on the TLS port; `levee check` naming the bad file and a certificate near its end;
//! a binary upgrade handing the TLS listener over under HTTPS load.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

const LIMIT: Duration = Duration::from_secs(10);

/// A test CA and the leaf certificates it signs, written into a temp dir.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// A certificate pair on disk.
#[derive(Clone)]
struct Leaf {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "levee test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki {
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A certificate for `names` (DNS names or IPs) as `{file}.pem` and `{file}.key`.
    fn leaf(&self, file: &str, names: &[&str]) -> Leaf {
        self.leaf_until(file, names, None)
    }

    /// As [`Pki::leaf`], valid until `not_after` (Unix seconds) when given.
    fn leaf_until(&self, file: &str, names: &[&str], not_after: Option<u64>) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, file);
        if let Some(t) = not_after {
            params.not_after = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(t);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let leaf = Leaf {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
            der: cert.der().clone(),
        };
        std::fs::write(&leaf.cert, cert.pem()).unwrap();
        std::fs::write(&leaf.key, key.serialize_pem()).unwrap();
        leaf
    }

    /// A client trusting only the test CA, offering `alpn`.
    fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}

/// Copies `from` beside `path` and renames it over, as certificate managers do.
fn replace(path: &Path, from: &Path) {
    let tmp = path.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// `[server.tls]` on a free port with `default` and `extra` (SNI entries).
fn tls_table(default: &Leaf, extra: &str) -> String {
    format!(
        "[server.tls]\nlisten = [\"127.0.0.1:0\"]\ncert = \"{}\"\nkey = \"{}\"\n{extra}",
        default.cert.display(),
        default.key.display()
    )
}

fn sni_entry(names: &[&str], leaf: &Leaf) -> String {
    let names: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    format!(
        "[[server.tls.sni]]\nnames = [{}]\ncert = \"{}\"\nkey = \"{}\"\n",
        names.join(", "),
        leaf.cert.display(),
        leaf.key.display()
    )
}

async fn connect(
    connector: &TlsConnector,
    addr: SocketAddr,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(LIMIT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

fn peer_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate")[0]
        .clone()
}

fn alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

/// An HTTP/1.1 client over a TLS session.
struct H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl H1 {
    async fn over(stream: TlsStream<TcpStream>) -> H1 {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        H1(sender)
    }

    async fn get(&mut self, path: &str) -> (u16, serde_json::Value) {
        self.0.ready().await.expect("connection usable");
        let resp = self.0.send_request(get(path)).await.expect("response");
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&body).unwrap_or_default())
    }
}

/// One HTTPS GET on a new connection; the status.
async fn https_get(connector: &TlsConnector, addr: SocketAddr, path: &str) -> Option<u16> {
    let stream = connect(connector, addr, "localhost").await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let resp = sender.send_request(get(path)).await.ok()?;
    let status = resp.status().as_u16();
    resp.into_body().collect().await.ok()?;
    Some(status)
}

/// The value of the series `series` (name and labels as exposed) in levee's metrics.
fn metric(app: &levee::app::App, series: &str) -> f64 {
    app.metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

fn handshakes(app: &levee::app::App, result: &str) -> f64 {
    metric(
        app,
        &format!("levee_tls_handshakes_total{{result=\"{result}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_reaches_a_plain_replica_with_x_forwarded_proto_https() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server(&tls_table(&default, ""))
        .start()
        .await;
    let tls_addr = levee.tls_addrs[0];
    assert_ne!(tls_addr, levee.addr(), "plain and TLS listeners both serve");

    let stream = connect(&pki.client(&[b"http/1.1"]), tls_addr, "localhost")
        .await
        .expect("handshake");
    assert_eq!(peer_cert(&stream), default.der);
    assert_eq!(alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let mut c = H1::over(stream).await;
    let (status, body) = c.get("/x?echo=1").await;
    assert_eq!(status, 200);
    assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1", "{body}");

    // A request body crosses TLS intact.
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let req = http::Request::post("/rpc")
        .header("host", "t")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    c.0.ready().await.unwrap();
    let resp = c.0.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["bytes"], payload.len() as u64);

    // The plain listener still says http.
    let plain = fetch(levee.addr(), get("/x?echo=1")).await.json();
    assert_eq!(plain["headers"]["x-forwarded-proto"], "http");
    assert_eq!(handshakes(&levee.app, "ok"), 1.0);
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_chooses_h2_or_http1() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server(&tls_table(&default, ""))
        .start()
        .await;
    let addr = levee.tls_addrs[0];

    // Offered both, h2 is chosen and served by the HTTP/2 path.
    let stream = connect(&pki.client(&[b"h2", b"http/1.1"]), addr, "localhost")
        .await
        .unwrap();
    assert_eq!(alpn(&stream).as_deref(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    let mut seen = Vec::new();
    for i in 0..3 {
        let req = http::Request::get(format!("https://localhost/h2/{i}?echo=1"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = h2.send_request(req).await.expect("h2 response");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["headers"]["x-forwarded-proto"], "https", "{v}");
        assert_eq!(v["headers"]["host"], "localhost", "{v}");
        seen.push(v["path"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(seen, ["/h2/0", "/h2/1", "/h2/2"]);

    // No ALPN at all: HTTP/1.1.
    let stream = connect(&pki.client(&[]), addr, "localhost").await.unwrap();
    assert_eq!(alpn(&stream), None);
    let (status, v) = H1::over(stream).await.get("/none?echo=1").await;
    assert_eq!(status, 200);
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");

    // Only a protocol levee does not speak: the handshake fails, counted as an error.
    let err = connect(&pki.client(&[b"spdy/3"]), addr, "localhost").await;
    assert!(err.is_err(), "no ALPN protocol in common must fail");
    eventually(LIMIT, "the failed handshake counted", || {
        handshakes(&levee.app, "error") == 1.0
    })
    .await;
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate() {
    let pki = Pki::new();
    // The default covers the names no SNI entry takes, so the client can verify it.
    let default = pki.leaf(
        "default",
        &["localhost", "unknown.test", "a.b.wild.test", "127.0.0.1"],
    );
    let api = pki.leaf("api", &["api.test"]);
    let wild = pki.leaf("wild", &["*.wild.test"]);
    let r = replica("r1", "a", 4, 0).await;
    let sni = format!(
        "{}{}",
        sni_entry(&["api.test"], &api),
        sni_entry(&["*.wild.test"], &wild)
    );
    let levee = Setup::new(&[&r])
        .server(&tls_table(&default, &sni))
        .start()
        .await;
    let addr = levee.tls_addrs[0];
    let client = pki.client(&[b"http/1.1"]);
    for (name, want, which) in [
        ("api.test", &api, "api"),
        ("API.Test", &api, "api"),
        ("x.wild.test", &wild, "wild"),
        ("unknown.test", &default, "default"),
        (
            "a.b.wild.test",
            &default,
            "default: a wildcard covers one label",
        ),
        ("localhost", &default, "default"),
        // An IP address: the client sends no SNI at all.
        ("127.0.0.1", &default, "default without SNI"),
    ] {
        let stream = connect(&client, addr, name)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(peer_cert(&stream) == want.der, "{name}: expected {which}");
        let (status, _) = H1::over(stream).await.get("/sni").await;
        assert_eq!(status, 200, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_connection_is_released_and_serves_again() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server(&tls_table(&default, ""))
        .start()
        .await;
    let stream = connect(&pki.client(&[b"http/1.1"]), levee.tls_addrs[0], "localhost")
        .await
        .unwrap();
    let mut c = H1::over(stream).await;
    for i in 0..3 {
        assert_eq!(c.get(&format!("/r{i}")).await.0, 200);
        // Idle past the release (the time itself is what is tested): levee takes the
        // session back from hyper and waits on the socket; the next request gets a
        // new hyper connection over the same session.
        tokio::time::sleep(levee::http1::conn::TICK * 3).await;
    }
    assert_eq!(c.get("/after").await.0, 200);
    assert_eq!(handshakes(&levee.app, "ok"), 1.0, "one session throughout");
    eventually(LIMIT, "slots released", || all_idle(&levee)).await;
}

/// A levee started from a config file (for `reload` and the watcher), with its TLS
/// certificate paths fixed: reloads replace the files' contents.
async fn start_from_file(
    pki: &Pki,
    default: &Leaf,
    r: &levee::demo::replica::Replica,
    server: &str,
) -> (levee::app::Running, PathBuf) {
    let text = Setup::new(&[r])
        .server(&format!("{server}\n{}", tls_table(default, "")))
        .toml();
    let path = pki.dir.path().join("levee.toml");
    std::fs::write(&path, text).unwrap();
    let config = levee::config::load(&path).unwrap();
    (levee::app::start(config).await.unwrap(), path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_certificate_files_are_served_to_new_connections() {
    let pki = Pki::new();
    let live = pki.leaf("live", &["localhost"]);
    let next = pki.leaf("next", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    let (levee, path) = start_from_file(&pki, &live, &r, "").await;
    let (_watch, _task) = levee::app::watch_config(levee.app.clone(), path).unwrap();
    let addr = levee.tls_addrs[0];
    let client = pki.client(&[b"http/1.1"]);
    let old = connect(&client, addr, "localhost").await.unwrap();
    assert!(peer_cert(&old) == live.der);
    let mut old = H1::over(old).await;

    // A certificate manager replaces both files (key first, then the certificate).
    replace(&live.key, &next.key);
    replace(&live.cert, &next.cert);
    let started = Instant::now();
    loop {
        let s = connect(&client, addr, "localhost").await;
        if s.as_ref().is_ok_and(|s| peer_cert(s) == next.der) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the new certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The connection opened before keeps its session and serves on.
    assert_eq!(old.get("/still").await.0, 200);
    assert_eq!(metric(&levee.app, "levee_tls_reload_errors_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_reload_keeps_the_one_in_force_and_is_counted() {
    let pki = Pki::new();
    let live = pki.leaf("live", &["localhost"]);
    let other = pki.leaf("other", &["localhost"]);
    let good = pki.leaf("good", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    let (levee, path) = start_from_file(&pki, &live, &r, "").await;
    let addr = levee.tls_addrs[0];
    let client = pki.client(&[b"http/1.1"]);
    let app = levee.app.clone();
    let serves = |der: CertificateDer<'static>| {
        let client = client.clone();
        async move {
            let s = connect(&client, addr, "localhost")
                .await
                .expect("handshake");
            peer_cert(&s) == der
        }
    };

    // Not PEM at all; then a key that belongs to another certificate; then a file
    // that is gone. Each reload (what SIGHUP runs) keeps the certificate in force and
    // counts one error; the config itself reloads fine.
    let original_cert = std::fs::read(&live.cert).unwrap();
    let original_key = std::fs::read(&live.key).unwrap();
    std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\nnot base64 !\n").unwrap();
    assert!(levee::app::reload(&app, &path).is_ok());
    assert!(serves(live.der.clone()).await);
    assert_eq!(metric(&app, "levee_tls_reload_errors_total"), 1.0);

    std::fs::write(&live.cert, &original_cert).unwrap();
    std::fs::copy(&other.key, &live.key).unwrap();
    let reload = levee::app::reload_certs(&app).expect("levee serves TLS");
    match reload {
        levee::tls::Reload::Failed(errors) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].path, live.key);
            assert!(
                errors[0].to_string().contains("does not match"),
                "{}",
                errors[0]
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(serves(live.der.clone()).await);
    assert_eq!(metric(&app, "levee_tls_reload_errors_total"), 2.0);

    std::fs::remove_file(&live.key).unwrap();
    assert!(matches!(
        levee::app::reload_certs(&app),
        Some(levee::tls::Reload::Failed(_))
    ));
    assert_eq!(metric(&app, "levee_tls_reload_errors_total"), 3.0);

    // Restored: nothing changed from what is in force, so nothing is swapped.
    std::fs::write(&live.key, &original_key).unwrap();
    assert_eq!(
        levee::app::reload_certs(&app),
        Some(levee::tls::Reload::Unchanged)
    );
    // A good new pair is taken.
    std::fs::copy(&good.cert, &live.cert).unwrap();
    std::fs::copy(&good.key, &live.key).unwrap();
    assert_eq!(
        levee::app::reload_certs(&app),
        Some(levee::tls::Reload::Reloaded)
    );
    assert!(serves(good.der.clone()).await);
    assert_eq!(metric(&app, "levee_tls_reload_errors_total"), 3.0);
    assert_eq!(
        metric(&app, "levee_config_reloads_total{result=\"failure\"}"),
        0.0
    );
}

/// `levee_tls_cert_expiry_seconds` as the admin listener serves it: value by label text.
async fn cert_expiry(admin: SocketAddr) -> std::collections::BTreeMap<String, f64> {
    let reply = fetch(admin, get("/metrics")).await;
    assert_eq!(reply.status, 200);
    samples(
        &String::from_utf8_lossy(&reply.body),
        "levee_tls_cert_expiry_seconds",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_expiry_follows_the_certificates_in_force() {
    // 2033-05-18 03:35:23 UTC; 2052-05-22 14:13:27 UTC (past 2049: a GeneralizedTime);
    // 2036-07-18 13:20:00 UTC.
    const DEFAULT: u64 = 2_000_000_123;
    const API: u64 = 2_600_000_007;
    const RENEWED: u64 = 2_100_000_000;
    let pki = Pki::new();
    let live = pki.leaf_until("live", &["localhost"], Some(DEFAULT));
    let api = pki.leaf_until("api", &["api.test", "*.api.test"], Some(API));
    let renewed = pki.leaf_until("renewed", &["localhost"], Some(RENEWED));
    let r = replica("r1", "a", 4, 0).await;
    let config = |sni: &str| Setup::new(&[&r]).server(&tls_table(&live, sni)).toml();
    let path = pki.dir.path().join("levee.toml");
    std::fs::write(&path, config(&sni_entry(&["api.test", "*.api.test"], &api))).unwrap();
    let levee = levee::app::start(levee::config::load(&path).unwrap())
        .await
        .unwrap();
    let (app, admin) = (levee.app.clone(), levee.admin_addr.expect("admin listener"));
    let series = |pairs: &[(&str, u64)]| {
        pairs
            .iter()
            .map(|(name, t)| (format!("{{name=\"{name}\"}}"), *t as f64))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    assert_eq!(
        cert_expiry(admin).await,
        series(&[("default", DEFAULT), ("api.test,*.api.test", API)])
    );

    // The default pair renewed and the SNI entry dropped from the config: one reload
    // (what SIGHUP runs) and the entry's series is gone, the default's moved.
    replace(&live.key, &renewed.key);
    replace(&live.cert, &renewed.cert);
    std::fs::write(&path, config("")).unwrap();
    assert!(levee::app::reload(&app, &path).is_ok());
    assert_eq!(cert_expiry(admin).await, series(&[("default", RENEWED)]));
    let s = connect(&pki.client(&[b"http/1.1"]), levee.tls_addrs[0], "localhost")
        .await
        .expect("handshake");
    assert!(
        peer_cert(&s) == renewed.der,
        "the renewed certificate is served"
    );

    // A bad file keeps the certificates in force, and the metric with them.
    std::fs::write(&live.cert, "-----BEGIN CERTIFICATE-----\nnot base64 !\n").unwrap();
    assert!(matches!(
        levee::app::reload_certs(&app),
        Some(levee::tls::Reload::Failed(_))
    ));
    assert_eq!(metric(&app, "levee_tls_reload_errors_total"), 1.0);
    assert_eq!(cert_expiry(admin).await, series(&[("default", RENEWED)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_are_closed_after_client_header_ms() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server("[server.timeouts]\nclient_header_ms = 300")
        .server(&tls_table(&default, ""))
        .start()
        .await;
    let addr = levee.tls_addrs[0];
    // Silent after the TCP handshake; then the first bytes of a ClientHello only.
    let silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    let opened = Instant::now();
    for (what, mut tcp) in [("silent", silent), ("partial ClientHello", partial)] {
        let mut buf = [0u8; 64];
        let end = tokio::time::timeout(LIMIT, tcp.read(&mut buf)).await;
        let took = opened.elapsed();
        assert!(
            matches!(end, Ok(Ok(0)) | Ok(Err(_))),
            "{what}: expected a close, got {end:?}"
        );
        assert!(
            took >= Duration::from_millis(250),
            "{what}: closed after {took:?}, before client_header_ms"
        );
        assert!(
            took < Duration::from_secs(3),
            "{what}: closed after {took:?}"
        );
    }
    eventually(LIMIT, "both counted as timeouts", || {
        handshakes(&levee.app, "timeout") == 2.0
    })
    .await;
    eventually(LIMIT, "their connections closed", || {
        levee.app.connections.open() == 0
    })
    .await;

    // After a handshake, a silent client is bounded the same way for its first head.
    let stream = connect(&pki.client(&[b"http/1.1"]), addr, "localhost")
        .await
        .unwrap();
    let mut stream = stream;
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(LIMIT, stream.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "{end:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "a silent TLS client closed after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_plain_http_on_the_tls_port_are_answered_without_harm() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    // Random bytes may announce a record longer than what follows: rustls then waits
    // for the rest, and the handshake bound closes the connection.
    let levee = Setup::new(&[&r])
        .server("[server.timeouts]\nclient_header_ms = 1000")
        .server(&tls_table(&default, ""))
        .start()
        .await;
    let addr = levee.tls_addrs[0];

    // Plain HTTP gets a 400 that says why.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, tcp.read_to_end(&mut answer))
        .await
        .expect("closed after the answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("tls_required"), "{answer}");

    // Garbage of every shape: a TLS-looking record that is not a ClientHello, random
    // bytes, a huge record length; each connection closes.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    let mut inputs: Vec<Vec<u8>> = vec![
        [&[0x16, 0x03, 0x01, 0x00, 0x20][..], &[0xff; 32]].concat(),
        [&[0x16, 0x03, 0x03, 0xff, 0xff][..], &noise(512)].concat(),
        [&[0x17, 0x03, 0x03, 0x00, 0x10][..], &noise(16)].concat(),
        vec![0u8; 100],
    ];
    for _ in 0..8 {
        let len = 1 + (noise(1)[0] as usize) * 4;
        let mut bytes = noise(len);
        bytes[0] = 0x16;
        inputs.push(bytes);
    }
    for (i, bytes) in inputs.iter().enumerate() {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(bytes).await;
        let mut sink = Vec::new();
        let end = tokio::time::timeout(LIMIT, tcp.read_to_end(&mut sink)).await;
        assert!(end.is_ok(), "input {i}: connection left open");
    }
    eventually(LIMIT, "every garbage connection closed", || {
        levee.app.connections.open() == 0
    })
    .await;
    assert_eq!(handshakes(&levee.app, "plain_http"), 1.0);
    assert!(handshakes(&levee.app, "error") >= 1.0);
    assert_eq!(
        handshakes(&levee.app, "error") + handshakes(&levee.app, "timeout"),
        inputs.len() as f64,
        "every garbage connection counted"
    );
    assert_eq!(handshakes(&levee.app, "ok"), 0.0);

    // And levee serves on.
    let client = pki.client(&[b"http/1.1"]);
    assert_eq!(https_get(&client, addr, "/after").await, Some(200));
}

#[test]
fn levee_check_names_the_file_that_is_wrong() {
    let pki = Pki::new();
    let good = pki.leaf("good", &["localhost"]);
    let other = pki.leaf("other", &["api.test"]);
    let config = |cert: &Path, key: &Path, sni: &str| {
        let path = pki.dir.path().join("check.toml");
        std::fs::write(
            &path,
            format!(
                "[server]\nlisten = [\"127.0.0.1:8080\"]\n[server.tls]\nlisten = [\"127.0.0.1:8443\"]\ncert = \"{}\"\nkey = \"{}\"\n{sni}\
                 [[upstream]]\nname = \"a\"\nroutes = [\"/\"]\n[[upstream.backend]]\naddress = \"127.0.0.1:3000\"\n",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_levee"))
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = config(&good.cert, &good.key, &sni_entry(&["api.test"], &other));
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("ok"), "{out}");
    assert!(out.contains("tls 127.0.0.1:8443"), "{out}");
    assert!(out.contains("sni api.test"), "{out}");

    let missing = pki.dir.path().join("missing.pem");
    let (code, _, err) = config(&missing, &good.key, "");
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "server.tls.cert: {}: cannot open",
            missing.display()
        )),
        "{err}"
    );

    let (code, _, err) = config(&good.cert, &other.key, "");
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "server.tls.key: {}: this private key does not match the certificate {}",
            other.key.display(),
            good.cert.display()
        )),
        "{err}"
    );

    let junk = pki.dir.path().join("junk.pem");
    std::fs::write(&junk, "hello\n").unwrap();
    let (code, _, err) = config(
        &good.cert,
        &junk,
        &sni_entry(
            &["api.test"],
            &Leaf {
                cert: junk.clone(),
                key: other.key.clone(),
                der: other.der.clone(),
            },
        ),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("2 TLS certificate error(s)"), "{err}");
    assert!(
        err.contains(&format!(
            "server.tls.key: {}: no private key",
            junk.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "server.tls.sni[0].cert: {}: no certificate",
            junk.display()
        )),
        "{err}"
    );

    // A name the certificate does not cover passes with a warning.
    let (code, _, err) = config(&good.cert, &good.key, &sni_entry(&["www.test"], &other));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("warning: server.tls.sni[0]: certificate")
            && err.contains("does not cover www.test"),
        "{err}"
    );

    // A certificate near its end, or past it, passes with a warning naming its key,
    // file and date.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let soon = pki.leaf_until("soon", &["localhost"], Some(now + 5 * 86_400 + 3_600));
    let (code, _, err) = config(&soon.cert, &soon.key, "");
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "warning: server.tls.cert: {}: the certificate expires on ",
            soon.cert.display()
        )) && err.contains("(in 5 days)"),
        "{err}"
    );
    let gone = pki.leaf_until("gone", &["api.test"], Some(1_700_000_000));
    let (code, _, err) = config(&good.cert, &good.key, &sni_entry(&["api.test"], &gone));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains(&format!(
            "warning: server.tls.sni[0].cert: {}: the certificate expired on 2023-11-14 22:13:20 UTC",
            gone.cert.display()
        )),
        "{err}"
    );
}

/// The binary: started with `run -c FILE` and `extra`; its log lines arrive on the
/// returned channel.
fn spawn_levee(
    config: &Path,
    extra: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(["--log-format", "json", "run", "-c"])
        .arg(config)
        .args(extra)
        .env("LEVEE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// Reads log lines until one whose message is `message`; returns its `addr` field
/// when it has one, and every line read.
fn wait_log(
    rx: &std::sync::mpsc::Receiver<String>,
    message: &str,
    seen: &mut Vec<String>,
) -> Option<String> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|e| panic!("no {message:?} in the log ({e}):\n{}", seen.join("\n")));
        seen.push(line.clone());
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["fields"]["message"].as_str() == Some(message) {
            return v["fields"]["addr"].as_str().map(str::to_owned);
        }
    }
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_exit(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    None
}

/// The config of the binary tests: TLS on a free port, `extra` in `[server]`.
fn binary_config(
    pki: &Pki,
    leaf: &Leaf,
    r: &levee::demo::replica::Replica,
    extra: &str,
) -> PathBuf {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin_listen = \"127.0.0.1:0\"\n{extra}\n{}\n\
         [[upstream]]\nname = \"app\"\nroutes = [\"/\"]\n[[upstream.backend]]\naddress = \"{}\"\n",
        tls_table(leaf, ""),
        r.addr()
    );
    let path = pki.dir.path().join("levee.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_binary_reloads_certificates_and_logs_a_bad_one_with_its_path() {
    let pki = Pki::new();
    let live = pki.leaf("live", &["localhost"]);
    let next = pki.leaf("next", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    let path = binary_config(&pki, &live, &r, "");
    let (mut child, logs) = spawn_levee(&path, &[]);
    let mut seen = Vec::new();
    let addr: SocketAddr = wait_log(&logs, "tls listening", &mut seen)
        .expect("addr")
        .parse()
        .unwrap();
    let client = pki.client(&[b"http/1.1"]);
    let s = connect(&client, addr, "localhost").await.unwrap();
    assert!(peer_cert(&s) == live.der);
    drop(s);

    // New files, then SIGHUP (the watcher may see the change first: either reloads).
    std::fs::copy(&next.key, &live.key).unwrap();
    std::fs::copy(&next.cert, &live.cert).unwrap();
    signal(&child, "-HUP");
    let started = Instant::now();
    loop {
        let s = connect(&client, addr, "localhost").await;
        if s.as_ref().is_ok_and(|s| peer_cert(s) == next.der) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the new certificate is never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A broken certificate: logged with its file, and the one in force stays.
    std::fs::write(&live.cert, "garbage\n").unwrap();
    signal(&child, "-HUP");
    wait_log(
        &logs,
        "TLS certificate reload failed; keeping the certificates in force",
        &mut seen,
    );
    let failed = seen.last().unwrap();
    assert!(
        failed.contains(&live.cert.display().to_string()) && failed.contains("server.tls.cert"),
        "{failed}"
    );
    let s = connect(&client, addr, "localhost").await.unwrap();
    assert!(peer_cert(&s) == next.der, "the certificate in force stays");
    assert_eq!(
        H1::over(s).await.get("/x").await.0,
        200,
        "and levee serves with it"
    );
    assert!(child.try_wait().unwrap().is_none(), "levee still runs");
    signal(&child, "-TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut child))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()));
    assert!(
        !seen.iter().any(|l| l.contains("panicked")),
        "{}",
        seen.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upgrade_hands_the_tls_listener_over_without_failed_requests() {
    let pki = Pki::new();
    let live = pki.leaf("live", &["localhost"]);
    let r = replica("r1", "a", 8, 2).await;
    let sock = pki.dir.path().join("upgrade.sock");
    let path = binary_config(
        &pki,
        &live,
        &r,
        &format!("upgrade_sock = \"{}\"", sock.display()),
    );
    let (mut old, old_logs) = spawn_levee(&path, &[]);
    let mut seen = Vec::new();
    let addr: SocketAddr = wait_log(&old_logs, "tls listening", &mut seen)
        .expect("addr")
        .parse()
        .unwrap();

    // HTTPS clients, a new connection (and handshake) per request, throughout.
    let client = pki.client(&[b"http/1.1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, failed, client) =
                (stop.clone(), ok.clone(), failed.clone(), client.clone());
            tokio::spawn(async move {
                for _ in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match https_get(&client, addr, "/u").await {
                        Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    eventually(LIMIT, "the old levee serves HTTPS", || {
        ok.load(Ordering::Relaxed) > 20
    })
    .await;

    let (mut new, new_logs) = spawn_levee(&path, &["--upgrade"]);
    eventually(LIMIT, "upgrade socket ready", || sock.exists()).await;
    signal(&old, "-QUIT");
    let mut new_seen = Vec::new();
    let new_addr = tokio::task::spawn_blocking(move || {
        let addr = wait_log(&new_logs, "tls listening", &mut new_seen);
        (addr, new_seen)
    })
    .await
    .unwrap();
    let (new_addr, new_seen) = new_addr;
    assert_eq!(
        new_addr.and_then(|a| a.parse::<SocketAddr>().ok()),
        Some(addr),
        "the same TLS socket"
    );
    assert!(
        new_seen
            .iter()
            .any(|l| l.contains("listener taken over from the previous levee")),
        "{}",
        new_seen.join("\n")
    );
    let old_status = tokio::task::spawn_blocking(move || wait_exit(&mut old))
        .await
        .unwrap()
        .expect("the old levee exits after handing over");
    assert!(old_status.success());
    let before = ok.load(Ordering::Relaxed);
    eventually(LIMIT, "the new levee serves HTTPS", || {
        ok.load(Ordering::Relaxed) > before + 20
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("TLS binary upgrade under load: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    signal(&new, "-TERM");
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut new))
        .await
        .unwrap();
    assert!(status.is_some_and(|s| s.success()));
}

/// A backend that answers `Upgrade: echo` with 101 and then echoes bytes.
async fn upgrading_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match tcp.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
                    .await;
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_over_tls_is_spliced_both_ways() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["localhost"]);
    let mut setup = Setup::new(&[]).server(&tls_table(&default, ""));
    setup.backends.push((upgrading_backend().await, "a".into()));
    let levee = setup.start().await;
    let mut tls = connect(&pki.client(&[b"http/1.1"]), levee.tls_addrs[0], "localhost")
        .await
        .unwrap();
    tls.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, tls.read(&mut chunk))
            .await
            .expect("101 in time")
            .unwrap();
        assert!(n > 0, "closed before the 101");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    for msg in [&b"ping"[..], &[7u8; 40_000][..]] {
        tls.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(LIMIT, tls.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(back, msg);
    }
    drop(tls);
    eventually(LIMIT, "the tunnel's slot released", || all_idle(&levee)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_tls_client_is_closed_before_its_handshake() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server("max_connections = 1")
        .server(&tls_table(&default, ""))
        .start()
        .await;
    let addr = levee.tls_addrs[0];
    let client = pki.client(&[b"http/1.1"]);
    let first = connect(&client, addr, "localhost").await.unwrap();
    let mut first = H1::over(first).await;
    assert_eq!(first.get("/one").await.0, 200);
    assert!(
        connect(&client, addr, "localhost").await.is_err(),
        "a second connection past the cap must not get a session"
    );
    assert_eq!(
        metric(
            &levee.app,
            "levee_connections_refused_total{reason=\"max_connections\"}"
        ),
        1.0
    );
    assert_eq!(handshakes(&levee.app, "ok"), 1.0);
    // The first one is served on.
    assert_eq!(first.get("/two").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_header_comes_before_the_tls_handshake() {
    let pki = Pki::new();
    let default = pki.leaf("default", &["localhost"]);
    let r = replica("r1", "a", 4, 0).await;
    let levee = Setup::new(&[&r])
        .server(&format!(
            "proxy_protocol = true\n{}",
            tls_table(&default, "")
        ))
        .start()
        .await;
    let tls_addr = levee.tls_addrs[0];
    let connector = pki.client(&[b"http/1.1"]);
    // v1, then v2 with a TLV, each written on its own before the ClientHello.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x10".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 10, 0, 0, 1, 0x9c, 0x40, 0x01, 0xbb]);
    v2.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]); // PP2_TYPE_NOOP, one byte
    for (header, client) in [
        (
            &b"PROXY TCP4 192.0.2.44 10.0.0.1 51234 443\r\n"[..],
            "192.0.2.44",
        ),
        (&v2[..], "198.51.100.9"),
    ] {
        let mut tcp = TcpStream::connect(tls_addr).await.unwrap();
        tcp.write_all(header).await.unwrap();
        let name = ServerName::try_from("localhost".to_owned()).unwrap();
        let stream = tokio::time::timeout(LIMIT, connector.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake");
        let mut c = H1::over(stream).await;
        let (status, body) = c.get("/x?echo=1").await;
        assert_eq!(status, 200);
        assert_eq!(body["headers"]["x-forwarded-for"], client, "{body}");
        assert_eq!(body["headers"]["x-forwarded-proto"], "https", "{body}");
    }
    // A TLS client without the header: the ClientHello is no PROXY header, and the
    // connection is closed before any handshake.
    assert!(connect(&connector, tls_addr, "localhost").await.is_err());
    assert_eq!(
        metric(
            &levee.app,
            "levee_proxy_protocol_errors_total{reason=\"missing\"}"
        ),
        1.0
    );
    assert_eq!(handshakes(&levee.app, "ok"), 2.0);
}
