//! `[server.tls]`: which listeners speak TLS and the certificates they serve.
//!
//! The config names files only; reading, parsing and matching the certificates and
//! keys is `crate::tls`'s job, at start, on `levee check` and on every reload, so a
//! broken certificate never makes the rest of a config file invalid.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// `[server.tls]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// At least one; none of them is in `server.listen` or `server.admin_listen`.
    pub listen: Vec<SocketAddr>,
    /// The certificate served when the client sends no server name or one that no
    /// [`SniCert`] lists.
    pub default: CertPair,
    /// In file order; every name appears once across all of them.
    pub sni: Vec<SniCert>,
}

/// A certificate chain file and its private key file (PEM). Relative paths in the
/// file are made relative to the config file's directory by [`super::load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One `[[server.tls.sni]]`: a certificate for the server names it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SniCert {
    /// Lower case DNS names; `*.example.com` matches exactly one label in front of
    /// `example.com` (as browsers match wildcard certificates), not `example.com`.
    pub names: Vec<String>,
    pub pair: CertPair,
}

impl Tls {
    /// Every certificate pair with the key path it came from (`server.tls`,
    /// `server.tls.sni[0]`), the default first.
    pub fn pairs(&self) -> impl Iterator<Item = (String, &CertPair)> {
        std::iter::once(("server.tls".to_owned(), &self.default)).chain(
            self.sni
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("server.tls.sni[{i}]"), &s.pair)),
        )
    }

    /// Makes relative certificate and key paths relative to `dir` (the config file's
    /// directory).
    pub fn resolve_paths(&mut self, dir: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        resolve(&mut self.default.cert);
        resolve(&mut self.default.key);
        for s in &mut self.sni {
            resolve(&mut s.pair.cert);
            resolve(&mut s.pair.key);
        }
    }
}

impl fmt::Display for Tls {
    /// For `levee check`: `tls 0.0.0.0:8443 (h2, http/1.1): default cert.pem; sni
    /// api.example.com -> api.pem`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listen: Vec<String> = self.listen.iter().map(ToString::to_string).collect();
        writeln!(
            f,
            "tls {} (ALPN h2, http/1.1): default certificate {}",
            listen.join(", "),
            self.default.cert.display()
        )?;
        for s in &self.sni {
            writeln!(
                f,
                "  sni {} -> {}",
                s.names.join(", "),
                s.pair.cert.display()
            )?;
        }
        Ok(())
    }
}

/// A server name as `[[server.tls.sni]]` takes it, lower-cased: DNS labels of
/// letters, digits and `-` (1 to 63 bytes, not starting or ending with `-`), 253 bytes
/// at most, at least two labels, optionally `*.` in front. `Err` says what is wrong.
pub fn server_name(text: &str) -> Result<String, String> {
    let name = text.to_ascii_lowercase();
    let rest = name.strip_prefix("*.").unwrap_or(&name);
    if rest.is_empty() || name.len() > 253 {
        return Err(format!("{text:?} is not a DNS name"));
    }
    if rest.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{text:?} is an IP address: clients send only DNS names in SNI"
        ));
    }
    let labels: Vec<&str> = rest.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if !labels.iter().all(label_ok) {
        return Err(format!(
            "{text:?} is not a DNS name (labels of letters, digits and '-'; a wildcard only as a leading \"*.\")"
        ));
    }
    if labels.len() < 2 {
        return Err(format!(
            "{text:?} needs at least two labels (e.g. \"api.example.com\")"
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_are_dns_names_with_an_optional_leading_wildcard() {
        assert_eq!(server_name("API.Example.com").unwrap(), "api.example.com");
        assert_eq!(server_name("*.example.com").unwrap(), "*.example.com");
        for bad in [
            "",
            "*.",
            "localhost",
            "*.com",
            "a..b",
            "-a.b",
            "a-.b",
            "a.*.b",
            "a_b.c",
            "127.0.0.1",
            "::1",
            "a.b.",
            "é.com",
        ] {
            assert!(server_name(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(server_name(&long).is_err());
    }

    fn doc(server: &str, tls: &str) -> String {
        format!(
            "[server]\n{server}\nadmin_listen = \"127.0.0.1:9901\"\n[server.tls]\n{tls}\n\
             [[upstream]]\nname = \"a\"\nroutes = [\"/\"]\n\
             [[upstream.backend]]\naddress = \"127.0.0.1:3000\"\n"
        )
    }

    fn errors(text: &str) -> Vec<String> {
        match crate::config::parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_tls_table_parses_with_sni_entries() {
        let text = doc(
            "listen = [\"0.0.0.0:8080\"]",
            "listen = [\"0.0.0.0:8443\", \"[::]:8443\"]\ncert = \"/etc/levee/cert.pem\"\nkey = \"/etc/levee/key.pem\"\n\
             [[server.tls.sni]]\nnames = [\"API.example.com\", \"*.api.example.com\"]\ncert = \"api.pem\"\nkey = \"api.key\"\n",
        );
        let config = crate::config::parse(&text).unwrap();
        let tls = config.server.tls.clone().unwrap();
        assert_eq!(tls.listen.len(), 2);
        assert_eq!(tls.default.cert, PathBuf::from("/etc/levee/cert.pem"));
        assert_eq!(tls.sni[0].names, ["api.example.com", "*.api.example.com"]);
        let keys: Vec<String> = tls.pairs().map(|(k, _)| k).collect();
        assert_eq!(keys, ["server.tls", "server.tls.sni[0]"]);
        let explained = config.explain();
        assert!(
            explained.contains("tls 0.0.0.0:8443, [::]:8443 (ALPN h2, http/1.1): default certificate /etc/levee/cert.pem"),
            "{explained}"
        );
        assert!(
            explained.contains("sni api.example.com, *.api.example.com -> api.pem"),
            "{explained}"
        );
    }

    #[test]
    fn tls_alone_is_enough_to_listen() {
        let text = doc("", "listen = [\"0.0.0.0:8443\"]\ncert = \"c\"\nkey = \"k\"");
        let config = crate::config::parse(&text).unwrap();
        assert!(config.server.listen.is_empty());
        assert!(config.explain().starts_with("listen none but TLS"));
        let none = doc("", "cert = \"c\"\nkey = \"k\"");
        let e = errors(&none);
        assert!(
            e.iter().any(|e| e.starts_with("server.listen: required")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|e| e.starts_with("server.tls.listen: required")),
            "{e:?}"
        );
    }

    #[test]
    fn every_tls_mistake_is_named_by_its_key_path() {
        let text = doc(
            "listen = [\"127.0.0.1:8080\"]",
            "listen = [\"127.0.0.1:8080\", \"127.0.0.1:9901\", \"127.0.0.1:8443\", \"127.0.0.1:8443\", \"nowhere:1\"]\n\
             [[server.tls.sni]]\nnames = [\"a.example.com\", \"10.0.0.1\"]\ncert = \"\"\n\
             [[server.tls.sni]]\nnames = [\"A.example.com\"]\ncert = \"b\"\nkey = \"b\"\n\
             [[server.tls.sni]]\ncert = \"c\"\nkey = \"c\"\n",
        );
        let e = errors(&text);
        for needle in [
            "server.tls.listen[0]: 127.0.0.1:8080 is also server.listen[0]",
            "server.tls.listen[1]: 127.0.0.1:9901 is also server.admin_listen",
            "server.tls.listen[3]: duplicate TLS listen address 127.0.0.1:8443",
            "server.tls.listen[4]: \"nowhere:1\" is not a literal IP:port",
            "server.tls.cert: required",
            "server.tls.key: required",
            "server.tls.sni[0].names[1]: \"10.0.0.1\" is an IP address",
            "server.tls.sni[0].cert: \"\" is not a file path",
            "server.tls.sni[0].key: required",
            "server.tls.sni[1].names[0]: \"a.example.com\" is already served by server.tls.sni[0]",
            "server.tls.sni[2].names: required",
        ] {
            assert!(
                e.iter().any(|e| e.starts_with(needle)),
                "missing {needle:?} in {e:#?}"
            );
        }
        let unknown = doc(
            "listen = [\"127.0.0.1:80\"]",
            "listen = [\"127.0.0.1:443\"]\ncert = \"c\"\nkey = \"k\"\nciphers = \"x\"",
        );
        let e = errors(&unknown);
        assert!(
            e.iter().any(|e| e.starts_with("server.tls.ciphers")),
            "{e:?}"
        );
    }

    #[test]
    fn relative_paths_are_taken_from_the_config_directory() {
        let pair = |c: &str, k: &str| CertPair {
            cert: PathBuf::from(c),
            key: PathBuf::from(k),
        };
        let mut tls = Tls {
            listen: Vec::new(),
            default: pair("tls/cert.pem", "/abs/key.pem"),
            sni: vec![SniCert {
                names: vec!["a.example.com".into()],
                pair: pair("a.pem", "a.key"),
            }],
        };
        tls.resolve_paths(Path::new("/etc/levee"));
        assert_eq!(tls.default, pair("/etc/levee/tls/cert.pem", "/abs/key.pem"));
        assert_eq!(
            tls.sni[0].pair,
            pair("/etc/levee/a.pem", "/etc/levee/a.key")
        );
    }
}
