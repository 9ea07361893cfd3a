//! The tls section: HTTPS through levee and nginx side by side, both serving the same
//! certificate (ECDSA P-256, made with the openssl CLI into a temp dir), nginx with
//! `ssl_protocols TLSv1.3` (levee offers 1.2 and 1.3; wrk negotiates 1.3 with both),
//! in front of the fast backend:
//!
//! - keep-alive: `wrk -t2 -c64` on `https://`, requests/s, p99 and proxy CPU per
//!   request, each repetition running the proxies in mirrored order (A B B A);
//! - new handshakes: the same with `connection: close`, so every request opens a new
//!   connection and does a TLS handshake: connections/s and CPU per connection;
//! - idle: RSS per idle keep-alive connection, plain and over TLS (each connection did
//!   one request; the growth from a second batch, see [`two_batches`]), to show what a
//!   TLS session adds to a waiting connection.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::proxies::{Kind, TlsFiles, Tools};
use crate::report::{median, median_d, ms, ratio, us_opt, Results, Target, Verdict};
use crate::{
    cpu_per_request, fast_setup, idle, replica, start, warm_up, wrk, Opts, Plan, FAST_WORKERS,
    THREADS, WRK_CONNECTIONS, WRK_THREADS,
};

/// The target: levee's HTTPS keep-alive requests/s at least this share of nginx's.
pub const KEEPALIVE_VS_NGINX: f64 = 0.9;

/// One proxy's HTTPS figures (medians over repetitions).
#[derive(Debug, Clone)]
pub struct TlsRow {
    pub kind: Kind,
    pub runs: usize,
    pub keepalive_rps: f64,
    pub keepalive_p99: Duration,
    pub keepalive_cpu_us: Option<f64>,
    pub keepalive_errors: f64,
    /// Requests (each on a new connection, so handshakes) per second.
    pub handshake_rps: f64,
    pub handshake_p99: Duration,
    pub handshake_cpu_us: Option<f64>,
    pub handshake_errors: f64,
    /// RSS per idle keep-alive connection, plain and TLS, in KiB.
    pub idle_plain_kib: Option<f64>,
    pub idle_tls_kib: Option<f64>,
}

/// A self-signed ECDSA P-256 certificate for `localhost` and 127.0.0.1, made with
/// the openssl CLI; the directory goes when dropped.
struct Certificate {
    _dir: tempfile::TempDir,
    files: TlsFiles,
}

fn make_certificate() -> Result<Certificate, String> {
    let dir = tempfile::Builder::new()
        .prefix("levee-bench-tls-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let files = TlsFiles {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
    };
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .output()
        .map_err(|e| format!("openssl not found ({e}); apt-get install openssl"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(Certificate { _dir: dir, files })
}

/// A rustls client that takes any certificate (the bench measures the servers, not
/// the trust chain) and offers HTTP/1.1 only, as wrk does.
fn client() -> tokio_rustls::TlsConnector {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("rustls protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One TLS keep-alive connection with one finished exchange.
async fn one_tls(
    connector: tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    idle::exchange(&mut stream).await?;
    Ok(stream)
}

/// Settling time before RSS is read: levee's threads return freed memory when they go
/// idle, at most once a second.
const SETTLE: Duration = Duration::from_millis(1500);

/// What holding idle connections cost one proxy process.
struct IdleCost {
    opened: usize,
    failed: usize,
    closed: usize,
    error: Option<String>,
    /// RSS with the first batch open, and with both.
    first_kib: f64,
    both_kib: f64,
}

/// Opens two batches of `n` idle connections made by `connect`, reading the proxy's
/// RSS after each: the second batch's growth is the cost per connection, without the
/// fixed costs the first one pays (buffers of the burst of connects, allocator caches),
/// which at a few thousand connections would otherwise swamp it.
async fn two_batches<S, F, Fut>(
    p: &crate::proxies::Running,
    n: usize,
    parallel: usize,
    connect: F,
    tcp: fn(&S) -> &TcpStream,
) -> IdleCost
where
    S: Send + 'static,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<S, String>> + Send + 'static,
{
    let budget = Duration::from_secs(60);
    let first = idle::open_with(n, parallel, budget, &connect).await;
    tokio::time::sleep(SETTLE).await;
    let first_kib = p.rss_kib().unwrap_or(0) as f64;
    let second = idle::open_with(n, parallel, budget, &connect).await;
    tokio::time::sleep(SETTLE).await;
    let both_kib = p.rss_kib().unwrap_or(0) as f64;
    IdleCost {
        opened: second.streams.len(),
        failed: first.failed + second.failed,
        closed: first.closed_by(tcp) + second.closed_by(tcp),
        error: first.first_error.or(second.first_error),
        first_kib,
        both_kib,
    }
}

/// RSS per idle keep-alive connection (KiB) of a fresh `kind`, plain or TLS; `None`
/// when fewer than 90 % of the second batch opened or the proxy closed some.
async fn idle_cost(
    kind: Kind,
    setup: &crate::proxies::Setup,
    tools: &Tools,
    res: &mut Results,
    n: usize,
    tls: bool,
) -> Option<f64> {
    let p = start(kind, setup, tools, res).await?;
    warm_up(p.addr).await;
    let c = if tls {
        let (connector, addr) = (client(), p.tls_addr?);
        let connect = move || one_tls(connector.clone(), addr);
        two_batches(&p, n, 64, connect, |s| s.get_ref().0).await
    } else {
        let addr = p.addr;
        two_batches(&p, n, 256, move || idle::one(addr), |s| s).await
    };
    p.stop().await;
    let per = (c.both_kib - c.first_kib) / c.opened.max(1) as f64;
    println!(
        "    {:<6} idle {}: 2 x {n} ({} failed{}, {} closed by the proxy), RSS {:.1} -> {:.1} MiB for the second {}: {per:.1} KiB each",
        kind.name(),
        if tls { "TLS  " } else { "plain" },
        c.failed,
        c.error.map_or(String::new(), |e| format!(": {e}")),
        c.closed,
        c.first_kib / 1024.0,
        c.both_kib / 1024.0,
        c.opened,
    );
    (c.opened * 10 >= n * 9 && c.closed == 0).then_some(per)
}

pub async fn section(plan: &Plan, opts: &Opts, tools: &Tools, kinds: &[Kind], res: &mut Results) {
    println!("\n== tls: HTTPS keep-alive and new-handshake rates, idle TLS connections");
    let kinds: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| matches!(k, Kind::Levee | Kind::Nginx))
        .collect();
    let Some(wrk_bin) = &tools.wrk else {
        let msg = "tls section skipped: wrk not found (apt-get install wrk)".to_owned();
        println!("SKIP {msg}");
        res.notes.push(msg);
        return;
    };
    let certificate = match make_certificate() {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("tls section skipped: {e}");
            println!("SKIP {msg}");
            res.notes.push(msg);
            return;
        }
    };
    let fast = replica("fast", FAST_WORKERS, Duration::ZERO).await;
    let mut setup = fast_setup(fast.addr(), THREADS, 2 * plan.tls_idle as u32 + 4096);
    setup.tls = Some(certificate.files.clone());
    type Run = (wrk::WrkResult, Option<f64>);
    let mut keepalive: BTreeMap<Kind, Vec<Run>> = BTreeMap::new();
    let mut handshakes: BTreeMap<Kind, Vec<Run>> = BTreeMap::new();
    let mut idle_plain: BTreeMap<Kind, Vec<f64>> = BTreeMap::new();
    let mut idle_tls: BTreeMap<Kind, Vec<f64>> = BTreeMap::new();
    let idle_ok = proxies_nofile_ok(plan.tls_idle, res);
    // Each repetition runs the proxies forward and then backward (levee, nginx, nginx,
    // levee): on this shared machine whichever ran second often came out slower, and
    // the mirrored order cancels such a drift out of the medians.
    let mirrored: Vec<Kind> = kinds.iter().chain(kinds.iter().rev()).copied().collect();
    for rep in 1..=opts.reps {
        for &kind in &mirrored {
            let Some(p) = start(kind, &setup, tools, res).await else {
                continue;
            };
            let Some(tls_addr) = p.tls_addr else {
                continue;
            };
            warm_up(p.addr).await;
            let url = format!("https://{tls_addr}/");
            for (what, headers, runs) in [
                ("keep-alive", &[][..], &mut keepalive),
                ("new conns ", &["connection: close"][..], &mut handshakes),
            ] {
                let cpu0 = p.cpu_time();
                let r = wrk::run_with(
                    wrk_bin,
                    &url,
                    WRK_THREADS,
                    WRK_CONNECTIONS,
                    plan.wrk,
                    headers,
                )
                .await;
                let done = r.as_ref().map_or(0, |r| r.requests);
                let cpu = cpu_per_request(cpu0, p.cpu_time(), done);
                match r {
                    Ok(r) => {
                        println!(
                            "  rep {rep} {:<6} https {what} {:>8.0} req/s  p50 {}  p99 {}  errors {}  CPU/req {}",
                            kind.name(),
                            r.rps,
                            ms(r.p50),
                            ms(r.p99),
                            r.non2xx + r.socket_errors,
                            us_opt(cpu)
                        );
                        runs.entry(kind).or_default().push((r, cpu));
                    }
                    Err(e) => println!(
                        "  rep {rep} {:<6} https {what} wrk failed: {e}",
                        kind.name()
                    ),
                }
            }
            if kind == Kind::Levee {
                if let Some(counts) = p
                    .levee_counter("levee_tls_handshakes_total", "result")
                    .await
                {
                    let counts: Vec<String> =
                        counts.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
                    println!("    levee handshakes: {}", counts.join(", "));
                }
            }
            p.stop().await;
        }
    }
    // After every rate: a proxy's rates measured right after another's thousands of
    // idle connections closed came out far lower (the order showed, not the proxy).
    for _ in 1..=opts.reps {
        for &kind in kinds.iter().filter(|_| idle_ok) {
            if let Some(kib) = idle_cost(kind, &setup, tools, res, plan.tls_idle, false).await {
                idle_plain.entry(kind).or_default().push(kib);
            }
            if let Some(kib) = idle_cost(kind, &setup, tools, res, plan.tls_idle, true).await {
                idle_tls.entry(kind).or_default().push(kib);
            }
        }
    }
    res.tls_idle = plan.tls_idle;
    for &kind in &kinds {
        let k = keepalive.get(&kind).map(Vec::as_slice).unwrap_or_default();
        let h = handshakes.get(&kind).map(Vec::as_slice).unwrap_or_default();
        if k.is_empty() && h.is_empty() {
            continue;
        }
        let rps = |v: &[Run]| median(v.iter().map(|(r, _)| r.rps).collect());
        let p99 = |v: &[Run]| median_d(v.iter().map(|(r, _)| r.p99));
        let cpu = |v: &[Run]| {
            let c: Vec<f64> = v.iter().filter_map(|(_, c)| *c).collect();
            (!c.is_empty()).then(|| median(c))
        };
        let errors = |v: &[Run]| {
            median(
                v.iter()
                    .map(|(r, _)| (r.non2xx + r.socket_errors) as f64)
                    .collect(),
            )
        };
        let idle = |m: &BTreeMap<Kind, Vec<f64>>| m.get(&kind).map(|v| median(v.clone()));
        res.tls.push(TlsRow {
            kind,
            runs: k.len().max(h.len()),
            keepalive_rps: rps(k),
            keepalive_p99: p99(k),
            keepalive_cpu_us: cpu(k),
            keepalive_errors: errors(k),
            handshake_rps: rps(h),
            handshake_p99: p99(h),
            handshake_cpu_us: cpu(h),
            handshake_errors: errors(h),
            idle_plain_kib: idle(&idle_plain),
            idle_tls_kib: idle(&idle_tls),
        });
    }
}

/// Whether the open-files limit holds two batches of `n` idle connections (with a
/// note when not).
fn proxies_nofile_ok(n: usize, res: &mut Results) -> bool {
    let need = 2 * n as u64 + 1024;
    match crate::proxies::nofile_limit() {
        Some(limit) if limit >= need => true,
        limit => {
            let msg = format!(
                "tls idle connections skipped: open files limit {} < {need} (scripts/bench.sh raises it)",
                limit.map_or("?".into(), |l| l.to_string())
            );
            println!("SKIP {msg}");
            res.notes.push(msg);
            false
        }
    }
}

fn row(res: &Results, kind: Kind) -> Option<&TlsRow> {
    res.tls.iter().find(|r| r.kind == kind && r.runs > 0)
}

/// The tls target: levee's HTTPS keep-alive req/s against nginx's.
pub fn targets(res: &Results, out: &mut Vec<Target>) {
    let name = format!("HTTPS keep-alive req/s >= {KEEPALIVE_VS_NGINX}x nginx");
    match (row(res, Kind::Levee), row(res, Kind::Nginx)) {
        (Some(l), Some(n)) if l.keepalive_rps > 0.0 && n.keepalive_rps > 0.0 => {
            let x = l.keepalive_rps / n.keepalive_rps;
            out.push(Target {
                name,
                levee: format!("{:.0} vs {:.0} ({x:.2}x)", l.keepalive_rps, n.keepalive_rps),
                verdict: if x >= KEEPALIVE_VS_NGINX {
                    Verdict::Pass
                } else {
                    Verdict::Miss
                },
                others: Vec::new(),
            });
        }
        _ if res.tls.is_empty() => {}
        _ => out.push(Target {
            name,
            levee: "-".into(),
            verdict: Verdict::Skip,
            others: Vec::new(),
        }),
    }
}

fn kib(v: Option<f64>) -> String {
    v.map_or("-".into(), |k| format!("{k:.1} KiB"))
}

/// The section's table, with levee over nginx where both ran.
pub fn render(res: &Results, s: &mut String) {
    if res.tls.is_empty() {
        return;
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "### TLS: HTTPS to the fast backend (TLS 1.3, the same ECDSA P-256 certificate), wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS}; idle: RSS growth over a second batch of {} connections",
        crate::report::thousands(res.tls_idle)
    );
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| target | keep-alive req/s | p99 | CPU/req | errors | new connections/s (one request each) | p99 | CPU/conn | errors | idle KiB/conn plain | idle KiB/conn TLS |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let line = |name: &str, r: &TlsRow| {
        format!(
            "| {name} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {} | {:.0} | {} | {} |",
            r.keepalive_rps,
            ms(r.keepalive_p99),
            us_opt(r.keepalive_cpu_us),
            r.keepalive_errors,
            r.handshake_rps,
            ms(r.handshake_p99),
            us_opt(r.handshake_cpu_us),
            r.handshake_errors,
            kib(r.idle_plain_kib),
            kib(r.idle_tls_kib),
        )
    };
    for r in &res.tls {
        let _ = writeln!(s, "{}", line(r.kind.name(), r));
    }
    if let (Some(l), Some(n)) = (row(res, Kind::Levee), row(res, Kind::Nginx)) {
        let x = |a: f64, b: f64| ratio(Some(a), Some(b));
        let xo = ratio;
        let _ = writeln!(
            s,
            "| levee / nginx | {} | | {} | | {} | | {} | | {} | {} |",
            x(l.keepalive_rps, n.keepalive_rps),
            xo(l.keepalive_cpu_us, n.keepalive_cpu_us),
            x(l.handshake_rps, n.handshake_rps),
            xo(l.handshake_cpu_us, n.handshake_cpu_us),
            xo(l.idle_plain_kib, n.idle_plain_kib),
            xo(l.idle_tls_kib, n.idle_tls_kib),
        );
    }
    let _ = writeln!(
        s,
        "\nNew connections: wrk with `connection: close`, so each request pays a TCP connect and a TLS handshake; CPU/conn is the proxy's CPU per such request. Target: levee's keep-alive req/s at least {KEEPALIVE_VS_NGINX}x nginx's."
    );
}

pub fn to_json(res: &Results) -> Value {
    let d = |d: Duration| d.as_secs_f64() * 1e3;
    json!(res
        .tls
        .iter()
        .map(|r| json!({
            "proxy": r.kind.name(), "runs": r.runs,
            "keepalive_rps": r.keepalive_rps, "keepalive_p99_ms": d(r.keepalive_p99),
            "keepalive_cpu_us": r.keepalive_cpu_us, "keepalive_errors": r.keepalive_errors,
            "handshake_rps": r.handshake_rps, "handshake_p99_ms": d(r.handshake_p99),
            "handshake_cpu_us": r.handshake_cpu_us, "handshake_errors": r.handshake_errors,
            "idle_conns": res.tls_idle, "idle_plain_kib": r.idle_plain_kib, "idle_tls_kib": r.idle_tls_kib,
        }))
        .collect::<Vec<_>>())
}
