//! Certificates and keys read from their PEM files into what rustls serves: one
//! [`Certs`] is a whole set (the default pair and every SNI entry), loaded together
//! and swapped in together, so a handshake never sees half of a rotation.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

use crate::config::{CertPair, Tls};

/// Largest certificate or key file read: a chain of a few certificates is a few KiB;
/// anything past this is not one, and reading it whole would only cost memory.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A certificate that expires within this long (or has expired) is warned about at
/// load, on reload and by `levee check`: two weeks leaves time to renew by hand after
/// a renewal job has failed unnoticed, and matches `LeveeTlsCertExpiresSoon`.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

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
    /// logged as reloaded) again when a reload reads the same files.
    fingerprint: u64,
    /// One per pair, the default first, in config order.
    expiry: Vec<Expiry>,
}

/// When the end-entity certificate of one loaded pair expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    /// The label of `levee_tls_cert_expiry_seconds`: `default`, or an SNI entry's
    /// names joined with `,`. Unique in a set: names appear once across entries, and
    /// `default` is no server name (those have at least two labels).
    pub name: String,
    /// The config key of the certificate file: `server.tls.cert`,
    /// `server.tls.sni[1].cert`.
    pub key: String,
    pub path: PathBuf,
    /// notAfter, in Unix seconds.
    pub not_after: i64,
}

impl Expiry {
    /// A warning if the certificate has expired at `now` (Unix seconds) or expires
    /// within [`EXPIRY_WARNING`], naming its key, file and date.
    pub fn warning(&self, now: i64) -> Option<String> {
        let left = self.not_after.saturating_sub(now);
        let date = utc_date(self.not_after);
        let (key, path) = (&self.key, self.path.display());
        let days = |seconds: i64| match seconds / 86_400 {
            0 => "less than a day".to_owned(),
            1 => "1 day".to_owned(),
            n => format!("{n} days"),
        };
        if left <= 0 {
            Some(format!(
                "{key}: {path}: the certificate expired on {date} ({} ago): clients refuse it",
                days(-left)
            ))
        } else if left < EXPIRY_WARNING.as_secs() as i64 {
            Some(format!(
                "{key}: {path}: the certificate expires on {date} (in {}): renew it",
                days(left)
            ))
        } else {
            None
        }
    }
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("sni", &(self.exact.len() + self.wildcard.len()))
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

/// What loading a set found besides errors, for the log and `levee check`: names an
/// SNI entry lists that its certificate does not cover, and certificates that have
/// expired or expire within [`EXPIRY_WARNING`] (clients would refuse either).
pub type Warnings = Vec<String>;

impl Certs {
    /// Reads every pair of `tls`. `Err` holds every problem found, each naming its
    /// config key and file.
    pub fn load(tls: &Tls, provider: &CryptoProvider) -> Result<(Certs, Warnings), Vec<CertError>> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let mut loaded = Vec::new();
        let mut expiry = Vec::new();
        let labels = std::iter::once("default".to_owned())
            .chain(tls.sni.iter().map(|sni| sni.names.join(",")));
        for ((key, pair), name) in tls.pairs().zip(labels) {
            match load_pair(&key, pair, provider, &mut hasher) {
                Ok((certified, not_after)) => {
                    expiry.push(Expiry {
                        name,
                        key: format!("{key}.cert"),
                        path: pair.cert.clone(),
                        not_after,
                    });
                    loaded.push(Some(Arc::new(certified)));
                }
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
        let certs = Certs {
            default,
            exact,
            wildcard,
            fingerprint: hasher.finish(),
            expiry,
        };
        warnings.extend(certs.expiry_warnings(unix_now()));
        Ok((certs, warnings))
    }

    /// When each pair's certificate expires, the default first.
    pub fn expiry(&self) -> &[Expiry] {
        &self.expiry
    }

    /// A warning for each certificate expired at `now` (Unix seconds) or expiring
    /// within [`EXPIRY_WARNING`].
    pub fn expiry_warnings(&self, now: i64) -> Warnings {
        self.expiry.iter().filter_map(|e| e.warning(now)).collect()
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

/// Reads, parses and matches one pair; with the end-entity certificate's notAfter
/// (Unix seconds).
fn load_pair(
    key: &str,
    pair: &CertPair,
    provider: &CryptoProvider,
    hasher: &mut impl Hasher,
) -> Result<(CertifiedKey, i64), Vec<CertError>> {
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
        // The validity is read after the match so that a certificate webpki cannot
        // parse keeps its error below.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            let validity = certified
                .end_entity_cert()
                .map_err(|e| format!("the first certificate cannot be parsed: {e}"))
                .and_then(not_after);
            validity
                .map(|t| (certified, t))
                .map_err(|p| vec![error(&cert_key, &pair.cert, p)])
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

/// The notAfter of the certificate `der`, in Unix seconds.
pub fn not_after(der: &CertificateDer<'_>) -> Result<i64, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, cert)| cert.validity().not_after.timestamp())
        .map_err(|e| format!("the first certificate's validity cannot be read: {e}"))
}

/// `2025-03-01 12:00:00 UTC`, for warnings: an unambiguous date in every locale.
fn utc_date(unix: i64) -> String {
    match x509_parser::time::ASN1Time::from_timestamp(unix) {
        Ok(t) => {
            let t = t.to_datetime();
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        }
        // Only outside the years -9999..=9999, which no parsed certificate holds.
        Err(_) => format!("{unix} (Unix time)"),
    }
}

/// Seconds since the Unix epoch; 0 on a clock set before 1970 (every certificate
/// then looks valid, and the metric still says when it expires).
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// 2033-05-18 03:35:23 UTC: encoded as UTCTime.
    const IN_2033: i64 = 2_000_000_123;
    /// 2052-05-22 14:13:27 UTC: past 2049, encoded as GeneralizedTime.
    const IN_2052: i64 = 2_600_000_007;

    /// A self-signed certificate for localhost valid until `not_after`, and its key.
    fn cert_until(not_after: i64) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(1970, 1, 1)
            + Duration::from_secs(u64::try_from(not_after).unwrap());
        let key = rcgen::KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    #[test]
    fn not_after_is_the_leaf_certificates_expiry_in_unix_seconds() {
        for t in [IN_2033, IN_2052] {
            let (cert, _) = cert_until(t);
            assert_eq!(not_after(cert.der()), Ok(t));
        }
        let junk = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01]);
        let e = not_after(&junk).unwrap_err();
        assert!(e.contains("validity cannot be read"), "{e}");
    }

    #[test]
    fn dates_are_written_in_utc() {
        assert_eq!(utc_date(IN_2033), "2033-05-18 03:35:23 UTC");
        assert_eq!(utc_date(IN_2052), "2052-05-22 14:13:27 UTC");
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
    }

    #[test]
    fn a_certificate_within_two_weeks_of_its_end_is_warned_about() {
        let expiry = Expiry {
            name: "default".into(),
            key: "server.tls.cert".into(),
            path: "/etc/levee/tls/cert.pem".into(),
            not_after: IN_2033,
        };
        let day = 86_400;
        let window = EXPIRY_WARNING.as_secs() as i64;
        assert_eq!(expiry.warning(IN_2033 - window), None);
        assert_eq!(expiry.warning(IN_2033 - 300 * day), None);
        assert_eq!(
            expiry.warning(IN_2033 - window + 1).as_deref(),
            Some("server.tls.cert: /etc/levee/tls/cert.pem: the certificate expires on 2033-05-18 03:35:23 UTC (in 13 days): renew it")
        );
        assert_eq!(
            expiry.warning(IN_2033 + 2 * day + 5).as_deref(),
            Some("server.tls.cert: /etc/levee/tls/cert.pem: the certificate expired on 2033-05-18 03:35:23 UTC (2 days ago): clients refuse it")
        );
        assert!(expiry
            .warning(IN_2033)
            .is_some_and(|w| w.contains("expired on")));
        assert!(expiry
            .warning(IN_2033 - day - 1)
            .is_some_and(|w| w.ends_with("(in 1 day): renew it")));
        assert!(expiry
            .warning(IN_2033 - 60)
            .is_some_and(|w| w.ends_with("(in less than a day): renew it")));
    }

    /// A pair on disk for `Certs::load`; `mangle` edits the certificate's DER.
    fn pair_on_disk(
        dir: &Path,
        file: &str,
        not_after: i64,
        mangle: impl FnOnce(&mut Vec<u8>),
    ) -> CertPair {
        let (cert, key) = cert_until(not_after);
        let mut der = cert.der().to_vec();
        mangle(&mut der);
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64_encode(&der)
        );
        let pair = CertPair {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        };
        std::fs::write(&pair.cert, pem).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }

    /// Standard base64 with padding, in 64-column lines, as PEM wants.
    fn base64_encode(bytes: &[u8]) -> String {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        let lines: Vec<&str> = out
            .as_bytes()
            .chunks(64)
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        lines.join("\n")
    }

    #[test]
    fn a_set_records_each_pairs_expiry_and_an_unreadable_validity_is_a_load_error() {
        let dir = tempfile::tempdir().unwrap();
        let default = pair_on_disk(dir.path(), "default", IN_2033, |_| {});
        let api = pair_on_disk(dir.path(), "api", IN_2052, |_| {});
        let mut tls = Tls {
            listen: vec!["127.0.0.1:8443".parse().unwrap()],
            default,
            sni: vec![crate::config::SniCert {
                names: vec!["api.test".into(), "*.api.test".into()],
                pair: api.clone(),
            }],
        };
        let provider = crate::tls::provider();
        let (certs, _) = Certs::load(&tls, &provider).unwrap();
        let got: Vec<(&str, &str, i64)> = certs
            .expiry()
            .iter()
            .map(|e| (e.name.as_str(), e.key.as_str(), e.not_after))
            .collect();
        assert_eq!(
            got,
            [
                ("default", "server.tls.cert", IN_2033),
                ("api.test,*.api.test", "server.tls.sni[0].cert", IN_2052),
            ]
        );

        // notAfter's month made 13: webpki still takes the certificate apart (it reads
        // the dates only when verifying), but its validity is no date.
        tls.sni[0].pair = pair_on_disk(dir.path(), "bad", IN_2033, |der| {
            let at = der
                .windows(13)
                .position(|w| w == b"330518033523Z")
                .expect("notAfter in the DER");
            der[at + 2..at + 4].copy_from_slice(b"13");
        });
        let errors = Certs::load(&tls, &provider).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "server.tls.sni[0].cert");
        assert_eq!(errors[0].path, tls.sni[0].pair.cert);
        assert!(
            errors[0].problem.contains("validity cannot be read"),
            "{}",
            errors[0]
        );
    }
}
