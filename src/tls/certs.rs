//! Certificates and keys read from their PEM files into what rustls serves: one
//! [`Certs`] is a whole set (the default pair and every SNI entry), loaded together
//! and swapped in together, so a handshake never sees half of a rotation.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

use crate::config::{CertPair, Tls};

/// Largest certificate or key file read: a chain of a few certificates is a few KiB;
/// anything past this is not one, and reading it whole would only cost memory.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// One problem with one file of a certificate pair.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {}: {problem}", .path.display())]
pub struct CertError {
    /// The config key naming the file: `server.tls.cert`, `server.tls.sni[1].key`.
    pub key: String,
    pub path: PathBuf,
    pub problem: String,
}

/// A complete set of certificates, ready to serve.
pub struct Certs {
    default: Arc<CertifiedKey>,
    /// By lower-case server name.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// A hash of every file's path and bytes: an unchanged set is not swapped (nor
    /// logged) again when a reload reads the same files.
    fingerprint: u64,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("sni", &(self.exact.len() + self.wildcard.len()))
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// What loading a set found besides errors: names an SNI entry lists that its
/// certificate does not cover (clients would refuse it), for the log and `levee check`.
pub type Warnings = Vec<String>;

impl Certs {
    /// Reads every pair of `tls`. `Err` holds every problem found, each naming its
    /// config key and file.
    pub fn load(tls: &Tls, provider: &CryptoProvider) -> Result<(Certs, Warnings), Vec<CertError>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut loaded = Vec::new();
        for (key, pair) in tls.pairs() {
            match load_pair(&key, pair, provider, &mut hasher) {
                Ok(certified) => loaded.push(Some(Arc::new(certified))),
                Err(e) => {
                    errors.extend(e);
                    loaded.push(None);
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut loaded = loaded.into_iter().flatten();
        let Some(default) = loaded.next() else {
            return Err(Vec::new());
        };
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for ((i, sni), certified) in tls.sni.iter().enumerate().zip(loaded) {
            for name in &sni.names {
                if !covers(&certified, name) {
                    warnings.push(format!(
                        "server.tls.sni[{i}]: certificate {} does not cover {name}: clients asking for it will refuse it",
                        sni.pair.cert.display()
                    ));
                }
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.insert(parent.to_owned(), certified.clone()),
                    None => exact.insert(name.clone(), certified.clone()),
                };
            }
        }
        Ok((
            Certs {
                default,
                exact,
                wildcard,
                fingerprint: hasher.finish(),
            },
            warnings,
        ))
    }

    /// The certificate for a client that asked for `server_name` (rustls hands it
    /// over lower-cased): an exact SNI name, else a wildcard one level up, else the
    /// default.
    pub fn resolve(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        if let Some(name) = server_name {
            if let Some(c) = self.exact.get(name) {
                return c.clone();
            }
            if let Some(c) = name
                .split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
            {
                return c.clone();
            }
        }
        self.default.clone()
    }

    /// Whether `other` was loaded from the same paths with the same bytes.
    pub fn same_files(&self, other: &Certs) -> bool {
        self.fingerprint == other.fingerprint
    }
}

/// Whether the end-entity certificate of `certified` is valid for `name`; for
/// `*.example.com`, whether it covers a name under `example.com`.
fn covers(certified: &CertifiedKey, name: &str) -> bool {
    let probe = match name.strip_prefix("*.") {
        Some(parent) => format!("levee-sni-check.{parent}"),
        None => name.to_owned(),
    };
    let Ok(server_name) = ServerName::try_from(probe) else {
        return false;
    };
    certified
        .end_entity_cert()
        .ok()
        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&server_name).is_ok())
}

/// Reads, parses and matches one pair.
fn load_pair(
    key: &str,
    pair: &CertPair,
    provider: &CryptoProvider,
    hasher: &mut impl Hasher,
) -> Result<CertifiedKey, Vec<CertError>> {
    let cert_key = format!("{key}.cert");
    let key_key = format!("{key}.key");
    let error = |k: &str, path: &Path, problem: String| CertError {
        key: k.to_owned(),
        path: path.to_path_buf(),
        problem,
    };
    let cert_bytes = read_pem(&pair.cert).map_err(|p| error(&cert_key, &pair.cert, p));
    let key_bytes = read_pem(&pair.key).map_err(|p| error(&key_key, &pair.key, p));
    let chain = cert_bytes.and_then(|bytes| {
        (&pair.cert, &bytes).hash(hasher);
        chain(&bytes).map_err(|p| error(&cert_key, &pair.cert, p))
    });
    let signing = key_bytes.and_then(|bytes| {
        (&pair.key, &bytes).hash(hasher);
        let der = private_key(&bytes).map_err(|p| error(&key_key, &pair.key, p))?;
        provider.key_provider.load_private_key(der).map_err(|e| {
            error(
                &key_key,
                &pair.key,
                format!("unsupported private key ({e}): use RSA, ECDSA P-256/P-384 or Ed25519"),
            )
        })
    });
    let (chain, signing) = match (chain, signing) {
        (Ok(c), Ok(s)) => (c, s),
        (c, s) => return Err([c.err(), s.err()].into_iter().flatten().collect()),
    };
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        // `Unknown`: the key type cannot tell its public key; rustls serves it anyway.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(vec![error(
                &key_key,
                &pair.key,
                format!(
                    "this private key does not match the certificate {}",
                    pair.cert.display()
                ),
            )])
        }
        Err(e) => Err(vec![error(
            &cert_key,
            &pair.cert,
            format!("the first certificate cannot be parsed: {e}"),
        )]),
    }
}

/// The whole file, at most [`MAX_PEM_BYTES`].
fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "larger than {} KiB: not a PEM certificate or key file",
            MAX_PEM_BYTES / 1024
        ));
    }
    Ok(bytes)
}

/// Every `CERTIFICATE` block, the end-entity certificate first.
fn chain(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(
            "no certificate in it (expected -----BEGIN CERTIFICATE----- blocks, the server's first)"
                .into(),
        );
    }
    Ok(chain)
}

/// The first private key block (PKCS#8, PKCS#1 RSA or SEC1 EC).
fn private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no private key in it (expected -----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)"
                .to_owned()
        }
        e => format!("not a PEM private key: {e}"),
    })
}
