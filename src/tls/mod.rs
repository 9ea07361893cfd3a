//! TLS on levee's listeners (rustls, ring provider): the server settings every TLS
//! listener shares ([`Acceptor`]), the certificates it serves ([`CertStore`], swapped
//! whole on reload), and the handshake itself ([`handshake`]).
//!
//! One [`rustls::ServerConfig`] lives for the life of the process; its certificate
//! resolver reads the current [`Certs`] from an `ArcSwap` at each handshake. A reload
//! builds a whole new set and stores it (one writer: reloads hold the app's reload
//! lock), so a new connection gets the new certificates and an open one keeps the
//! session it has.

pub mod certs;
pub mod handshake;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

pub use certs::{CertError, Certs, Expiry, Warnings};
pub use handshake::{Handshake, HandshakeMetrics};

use crate::config::Tls;
use crate::metrics::Metrics;

/// ALPN protocols offered, in levee's order of preference: a client that offers both
/// gets HTTP/2.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider of every TLS listener: ring (no cmake, no C toolchain beyond
/// what `ring` builds).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads every certificate pair of `tls` as `levee check` and start-up do; `Err`
/// holds every problem, each naming its config key and file. The warnings include
/// certificates expired or expiring within [`certs::EXPIRY_WARNING`].
pub fn check(tls: &Tls) -> Result<Warnings, Vec<CertError>> {
    Certs::load(tls, &provider()).map(|(_, warnings)| warnings)
}

/// The certificates in force, read by every handshake.
pub struct CertStore {
    current: ArcSwap<Certs>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    reload_errors: prometheus::IntCounter,
    /// `levee_tls_cert_expiry_seconds`: written only where `current` is stored, so it
    /// describes the set in force.
    cert_expiry: prometheus::IntGaugeVec,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("current", &self.current.load())
            .finish()
    }
}

/// What a reload of the certificates did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Every file read as before: nothing swapped.
    Unchanged,
    /// A new set is in force for new connections.
    Reloaded,
    /// A file could not be used: the set in force stays, and the errors were logged
    /// and counted (`levee_tls_reload_errors_total`).
    Failed(Vec<CertError>),
}

impl CertStore {
    /// The store with the certificates of `tls`, or every problem found.
    pub fn load(tls: &Tls, metrics: &Metrics) -> Result<CertStore, Vec<CertError>> {
        let provider = provider();
        let (certs, warnings) = Certs::load(tls, &provider)?;
        log_warnings(&warnings);
        let store = CertStore {
            current: ArcSwap::from_pointee(certs),
            provider,
            reload_errors: metrics.tls_reload_errors.clone(),
            cert_expiry: metrics.tls_cert_expiry.clone(),
        };
        store.publish_expiry(&store.current.load());
        Ok(store)
    }

    /// Re-reads every file of `tls` and swaps the new set in if all of it loads. A
    /// failure keeps the set in force (and its `levee_tls_cert_expiry_seconds`), logs
    /// each problem with its file, and counts one reload error.
    pub fn reload(&self, tls: &Tls) -> Reload {
        match Certs::load(tls, &self.provider) {
            Ok((certs, _)) if certs.same_files(&self.current.load()) => {
                // Time has moved since the set was loaded: a certificate near its end
                // is worth a line at every reload, even of the same files.
                log_warnings(&certs.expiry_warnings(certs::unix_now()));
                Reload::Unchanged
            }
            Ok((certs, warnings)) => {
                log_warnings(&warnings);
                self.publish_expiry(&certs);
                self.current.store(Arc::new(certs));
                tracing::info!("TLS certificates reloaded; new connections use them");
                Reload::Reloaded
            }
            Err(errors) => {
                self.reload_errors.inc();
                for e in &errors {
                    tracing::error!(
                        key = %e.key,
                        file = %e.path.display(),
                        error = %e.problem,
                        "TLS certificate reload failed; keeping the certificates in force"
                    );
                }
                Reload::Failed(errors)
            }
        }
    }

    /// Replaces every series of `levee_tls_cert_expiry_seconds` with those of
    /// `certs`, so an SNI entry a reload removed leaves no series behind. A scrape
    /// between the reset and the sets may miss a series for that instant; reloads are
    /// rare and one at a time (the app's reload lock), and the next scrape has them.
    fn publish_expiry(&self, certs: &Certs) {
        self.cert_expiry.reset();
        for e in certs.expiry() {
            self.cert_expiry
                .with_label_values(&[e.name.as_str()])
                .set(e.not_after);
        }
    }
}

fn log_warnings(warnings: &Warnings) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().resolve(hello.server_name()))
    }
}

/// What every TLS listener shares: rustls' server settings (ALPN, session tickets,
/// the certificate store) and the handshake counters.
pub struct Acceptor {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub store: Arc<CertStore>,
    pub metrics: HandshakeMetrics,
}

impl Acceptor {
    /// Loads the certificates of `tls`; `Err` holds every problem found.
    pub fn new(tls: &Tls, metrics: &Metrics) -> Result<Acceptor, Vec<CertError>> {
        let store = Arc::new(CertStore::load(tls, metrics)?);
        let error = |e: rustls::Error| {
            vec![CertError {
                key: "server.tls".into(),
                path: Default::default(),
                problem: format!("TLS settings: {e}"),
            }]
        };
        let mut config = ServerConfig::builder_with_provider(store.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(error)?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Stateless resumption, as nginx and HAProxy offer by default: a returning
        // client skips the certificate signature. Keys live in this process only (a
        // binary upgrade starts a new set, and clients fall back to a full handshake).
        match rustls::crypto::ring::Ticketer::new() {
            Ok(ticketer) => config.ticketer = ticketer,
            Err(e) => tracing::warn!(error = %e, "no TLS session tickets"),
        }
        Ok(Acceptor {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            store,
            metrics: HandshakeMetrics::new(metrics),
        })
    }
}
