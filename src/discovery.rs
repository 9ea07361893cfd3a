//! DNS discovery of backends given by name (`address = "name:port"`): every address a
//! name resolves to (A and AAAA) is a backend with its entry's zone and limit.
//!
//! This module only looks names up and remembers the answers; the snapshot is built
//! and published by `crate::app` (the one writer), from the config with each name
//! expanded ([`crate::config::Config::expand`]) by the answers held here. An address
//! that stays keeps its backend's state across the rebuild (health, ejection, adaptive
//! limit, counters); one that appears is added with slow start; one that disappears
//! takes no new request, and its requests in flight finish on the old snapshot.
//!
//! A failed lookup (timeout, SERVFAIL, NXDOMAIN, no nameserver) keeps the last
//! addresses the name had: a resolver outage must not empty an upstream. Each outcome
//! is counted in `levee_dns_lookups_total{upstream,result}` and logged when it
//! changes, not at every refresh.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::xfer::Protocol as Transport;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::config::{Config, Dns};

/// How one lookup ended; each is a `result` label of `levee_dns_lookups_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// At least one address.
    Ok,
    /// The name does not exist.
    NxDomain,
    /// The name exists but has no A or AAAA record.
    NoRecords,
    /// The nameserver failed to answer (SERVFAIL, REFUSED).
    ServFail,
    /// No answer within `server.dns.timeout_ms`.
    Timeout,
    /// Anything else: no nameserver reachable, a malformed answer.
    Error,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::Ok,
        Outcome::NxDomain,
        Outcome::NoRecords,
        Outcome::ServFail,
        Outcome::Timeout,
        Outcome::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NxDomain => "nxdomain",
            Outcome::NoRecords => "no_records",
            Outcome::ServFail => "servfail",
            Outcome::Timeout => "timeout",
            Outcome::Error => "error",
        }
    }

    fn of(e: &ResolveError) -> Outcome {
        let Some(proto) = e.proto() else {
            return Outcome::Error;
        };
        match proto.kind() {
            ProtoErrorKind::NoRecordsFound { response_code, .. } => match *response_code {
                ResponseCode::NXDomain => Outcome::NxDomain,
                ResponseCode::NoError => Outcome::NoRecords,
                _ => Outcome::ServFail,
            },
            ProtoErrorKind::Timeout => Outcome::Timeout,
            _ if e.is_nx_domain() => Outcome::NxDomain,
            _ => Outcome::Error,
        }
    }
}

/// What is known of one name.
#[derive(Debug, Clone, Default)]
struct Name {
    /// The last addresses it resolved to (kept through failed lookups).
    addresses: Vec<IpAddr>,
    /// How its last lookup ended (`None`: never looked up).
    last: Option<Outcome>,
}

/// The resolver and the answers of every name, shared by the refresh loop, reloads
/// and `/status`.
pub struct Discovery {
    resolver: parking_lot::Mutex<Option<(Dns, Arc<TokioResolver>)>>,
    names: parking_lot::Mutex<HashMap<String, Name>>,
    lookups: prometheus::IntCounterVec,
}

impl Discovery {
    pub fn new(metrics: &crate::metrics::Metrics) -> Discovery {
        Discovery {
            resolver: parking_lot::Mutex::new(None),
            names: parking_lot::Mutex::new(HashMap::new()),
            lookups: metrics.dns_lookups.clone(),
        }
    }

    /// Makes every `levee_dns_lookups_total` series of the upstreams of `config` that
    /// have names exist (at 0), so the first failure is an increase a rule can see.
    pub fn register(&self, config: &Config) {
        for up in config.upstreams.iter().filter(|u| !u.named.is_empty()) {
            for outcome in Outcome::ALL {
                self.lookups
                    .with_label_values(&[up.name.as_str(), outcome.as_str()]);
            }
        }
    }

    /// The addresses `host` resolved to last (empty: none yet).
    pub fn addresses(&self, host: &str) -> Vec<IpAddr> {
        self.names
            .lock()
            .get(host)
            .map(|n| n.addresses.clone())
            .unwrap_or_default()
    }

    /// `config` with each name expanded by the answers held now.
    pub fn expand(&self, config: &Config) -> Config {
        config.expand(&|host| self.addresses(host))
    }

    /// Each name with its current addresses and last outcome, for `/status`.
    pub fn report(&self) -> BTreeMap<String, (Vec<IpAddr>, Option<&'static str>)> {
        self.names
            .lock()
            .iter()
            .map(|(k, n)| {
                (
                    k.clone(),
                    (n.addresses.clone(), n.last.map(Outcome::as_str)),
                )
            })
            .collect()
    }

    /// Looks up every name of `config` (only those never looked up when `new_only`),
    /// all at once; returns whether any name's addresses changed. Names the config no
    /// longer has are forgotten.
    pub async fn refresh(&self, config: &Config, new_only: bool) -> bool {
        self.register(config);
        let hosts: Vec<String> = config
            .backend_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        {
            let mut names = self.names.lock();
            names.retain(|k, _| hosts.contains(k));
        }
        let wanted: Vec<String> = {
            let names = self.names.lock();
            hosts
                .into_iter()
                .filter(|h| !new_only || names.get(h).is_none_or(|n| n.last.is_none()))
                .collect()
        };
        if wanted.is_empty() {
            return false;
        }
        let resolver = self.resolver(&config.server.dns);
        let mut lookups = tokio::task::JoinSet::new();
        for host in wanted {
            let resolver = resolver.clone();
            let limit = config.server.dns.timeout;
            lookups.spawn(async move {
                let answer = tokio::time::timeout(limit, resolver.lookup_ip(host.as_str())).await;
                let result = match answer {
                    Ok(Ok(lookup)) => {
                        let ips: Vec<IpAddr> = lookup.iter().collect();
                        if ips.is_empty() {
                            Err(Outcome::NoRecords)
                        } else {
                            Ok(ips)
                        }
                    }
                    Ok(Err(e)) => Err(Outcome::of(&e)),
                    Err(_) => Err(Outcome::Timeout),
                };
                (host, result)
            });
        }
        let mut changed = false;
        while let Some(joined) = lookups.join_next().await {
            let Ok((host, result)) = joined else { continue };
            changed |= self.record(config, &host, result);
        }
        changed
    }

    /// Keeps one lookup's result; true when the name's addresses changed.
    fn record(&self, config: &Config, host: &str, result: Result<Vec<IpAddr>, Outcome>) -> bool {
        let outcome = result.as_ref().err().copied().unwrap_or(Outcome::Ok);
        for up in config
            .upstreams
            .iter()
            .filter(|u| u.named.iter().any(|n| n.host == host))
        {
            self.lookups
                .with_label_values(&[up.name.as_str(), outcome.as_str()])
                .inc();
        }
        let mut names = self.names.lock();
        let name = names.entry(host.to_owned()).or_default();
        let was = name.last.replace(outcome);
        let mut changed = false;
        match result {
            Ok(mut ips) => {
                ips.sort_unstable();
                ips.dedup();
                if ips != name.addresses {
                    tracing::info!(name = host, from = ?name.addresses, to = ?ips, "backend name resolves to new addresses");
                    name.addresses = ips;
                    changed = true;
                }
                if was.is_some_and(|w| w != Outcome::Ok) {
                    tracing::info!(name = host, "backend name resolves again");
                }
            }
            Err(outcome) if was != Some(outcome) => {
                tracing::warn!(
                    name = host,
                    result = outcome.as_str(),
                    keeping = ?name.addresses,
                    "backend name lookup failed; keeping its last addresses"
                );
            }
            Err(_) => {}
        }
        changed
    }

    /// The resolver for `dns`, made anew when the settings changed.
    fn resolver(&self, dns: &Dns) -> Arc<TokioResolver> {
        let mut current = self.resolver.lock();
        if let Some((settings, r)) = current.as_ref() {
            if settings == dns {
                return r.clone();
            }
        }
        let r = Arc::new(build_resolver(dns));
        *current = Some((dns.clone(), r.clone()));
        r
    }
}

/// A resolver asking `dns.nameservers` (UDP, TCP for truncated answers), or the
/// system's configuration when there are none. Answers are not cached: every refresh
/// asks, so a change is seen within one refresh period whatever its TTL says.
pub fn build_resolver(dns: &Dns) -> TokioResolver {
    let provider = TokioConnectionProvider::default();
    let (config, mut opts) = if dns.nameservers.is_empty() {
        match hickory_resolver::system_conf::read_system_conf() {
            Ok(system) => system,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the system's resolver configuration; backend names will not resolve");
                (ResolverConfig::new(), ResolverOpts::default())
            }
        }
    } else {
        let mut group = NameServerConfigGroup::new();
        for addr in &dns.nameservers {
            group.push(NameServerConfig::new(*addr, Transport::Udp));
            group.push(NameServerConfig::new(*addr, Transport::Tcp));
        }
        (
            ResolverConfig::from_parts(None, Vec::new(), group),
            ResolverOpts::default(),
        )
    };
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = 0;
    opts.timeout = dns.timeout;
    opts.attempts = 1;
    TokioResolver::builder_with_config(config, provider)
        .with_options(opts)
        .build()
}

/// Looks every name of `config` up once, for `levee check`: a warning for each that
/// does not resolve now (it stays empty until it does; that is not an error).
pub async fn check(config: &Config) -> Vec<String> {
    let names = config.backend_names();
    if names.is_empty() {
        return Vec::new();
    }
    let resolver = build_resolver(&config.server.dns);
    let mut warnings = Vec::new();
    for host in names {
        let limit = config.server.dns.timeout;
        let answer = tokio::time::timeout(limit, resolver.lookup_ip(host)).await;
        let problem = match answer {
            Ok(Ok(lookup)) if lookup.iter().next().is_some() => None,
            Ok(Ok(_)) => Some(Outcome::NoRecords),
            Ok(Err(e)) => Some(Outcome::of(&e)),
            Err(_) => Some(Outcome::Timeout),
        };
        if let Some(p) = problem {
            warnings.push(format!(
                "backend name {host} does not resolve now ({}): its entries have no backend until it does",
                p.as_str()
            ));
        }
    }
    warnings
}
