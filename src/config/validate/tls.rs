//! Validation of `[server.tls]`: addresses apart from the plain and admin listeners,
//! a certificate pair, and server names that are DNS names, each listed once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use super::super::tls::{server_name, CertPair, SniCert, Tls};
use super::{file, Validator};

impl Validator {
    /// `plain` maps each `server.listen` address to its index.
    pub(super) fn tls(
        &mut self,
        t: &file::Tls,
        plain: &HashMap<SocketAddr, usize>,
        admin: Option<SocketAddr>,
    ) -> Tls {
        let mut listen = Vec::new();
        let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
        if t.listen.as_ref().is_none_or(Vec::is_empty) {
            self.error(
                "server.tls.listen",
                "required: at least one address for TLS clients",
            );
        }
        for (i, text) in t.listen.iter().flatten().enumerate() {
            let path = format!("server.tls.listen[{i}]");
            let Some(addr) = self.socket_addr(&path, text) else {
                continue;
            };
            // Port 0 asks the kernel for a free port, so two of them never clash.
            let fixed = addr.port() != 0;
            if let Some(first) = seen.get(&addr).filter(|_| fixed) {
                self.error(
                    path,
                    format!("duplicate TLS listen address {addr} (also tls.listen[{first}])"),
                );
                continue;
            }
            if let Some(j) = plain.get(&addr).filter(|_| fixed) {
                self.error(
                    path,
                    format!("{addr} is also server.listen[{j}]: one address speaks either plain HTTP or TLS"),
                );
                continue;
            }
            if admin == Some(addr) && fixed {
                self.error(
                    path,
                    format!("{addr} is also server.admin_listen: the admin listener needs its own address"),
                );
                continue;
            }
            seen.insert(addr, i);
            listen.push(addr);
        }
        let default = self.cert_pair("server.tls", t.cert.as_deref(), t.key.as_deref());
        let mut sni = Vec::new();
        let mut owners: HashMap<String, usize> = HashMap::new();
        for (i, s) in t.sni.iter().flatten().enumerate() {
            let prefix = format!("server.tls.sni[{i}]");
            let mut names = Vec::new();
            if s.names.as_ref().is_none_or(Vec::is_empty) {
                self.error(
                    format!("{prefix}.names"),
                    "required: at least one server name",
                );
            }
            for (j, text) in s.names.iter().flatten().enumerate() {
                let path = format!("{prefix}.names[{j}]");
                match server_name(text) {
                    Err(e) => self.error(path, e),
                    Ok(name) => match owners.get(&name) {
                        Some(&other) => self.error(
                            path,
                            format!("{name:?} is already served by server.tls.sni[{other}]"),
                        ),
                        None => {
                            owners.insert(name.clone(), i);
                            names.push(name);
                        }
                    },
                }
            }
            let pair = self.cert_pair(&prefix, s.cert.as_deref(), s.key.as_deref());
            sni.push(SniCert { names, pair });
        }
        Tls {
            listen,
            default,
            sni,
        }
    }

    /// `cert` and `key` of the table at `prefix`: both required.
    fn cert_pair(&mut self, prefix: &str, cert: Option<&str>, key: Option<&str>) -> CertPair {
        let mut path = |name: &str, value: Option<&str>| match value {
            Some(p) if !p.is_empty() && !p.contains('\0') => PathBuf::from(p),
            Some(p) => {
                self.error(
                    format!("{prefix}.{name}"),
                    format!("{p:?} is not a file path"),
                );
                PathBuf::new()
            }
            None => {
                let what = if name == "cert" {
                    "a PEM certificate chain file"
                } else {
                    "the PEM private key file of cert"
                };
                self.error(format!("{prefix}.{name}"), format!("required: {what}"));
                PathBuf::new()
            }
        };
        CertPair {
            cert: path("cert", cert),
            key: path("key", key),
        }
    }
}
