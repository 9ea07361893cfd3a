//! Which upstream serves a request: by its host first (exact names, then wildcards,
//! then the upstreams that name no host), then by the longest path prefix among the
//! upstreams of that host. Built once per snapshot; a lookup allocates nothing.
//!
//! A host an upstream claims is served by its upstreams only: a path none of them
//! routes is unrouted (404), not passed to the upstreams without hosts, as a virtual
//! host of nginx or HAProxy would not pass it to another site either.

use std::collections::HashMap;

/// Longest host name looked up; longer ones are no name levee was given.
const MAX_HOST: usize = 253;

/// Routes of one host group: (prefix, upstream index), longest prefix first.
type Routes = Vec<(String, usize)>;

/// Host names (lower case, bytes) to their group. A few are looked up by a scan that
/// compares lengths first (cheaper than hashing the name); many, in a hash map.
#[derive(Debug, Default)]
struct Names {
    small: Vec<(Box<[u8]>, usize)>,
    map: HashMap<Box<[u8]>, usize>,
}

/// Up to this many names are scanned rather than hashed.
const SCAN_MAX: usize = 32;

impl Names {
    fn get(&self, name: &[u8]) -> Option<usize> {
        if self.map.is_empty() {
            self.small
                .iter()
                .find(|(k, _)| k.len() == name.len() && **k == *name)
                .map(|(_, g)| *g)
        } else {
            self.map.get(name).copied()
        }
    }

    fn insert(&mut self, name: &[u8], group: usize) {
        self.small.push((name.into(), group));
        match self.small.len() {
            n if n <= SCAN_MAX => {}
            // Past the scan's size: the map takes every name from now on.
            n if n == SCAN_MAX + 1 => self.map.extend(self.small.iter().cloned()),
            _ => {
                self.map.insert(name.into(), group);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.small.is_empty()
    }

    fn len(&self) -> usize {
        self.small.len()
    }
}

/// Host and path to upstream index.
#[derive(Debug, Default)]
pub struct Router {
    /// Exact names to their group.
    exact: Names,
    /// Wildcards by the suffix they match (`*.example.com` as `.example.com`); their
    /// scan list is longest first, so a scan's first match is the longest.
    wildcard: Names,
    /// The group of the upstreams without hosts.
    any: Option<usize>,
    groups: Vec<Routes>,
}

impl Router {
    /// Builds the router from each upstream's hosts (empty: any host) and routes, in
    /// upstream order. Routes claimed twice for one host (which validation refuses)
    /// go to the first upstream.
    pub fn new<'a>(upstreams: impl IntoIterator<Item = (&'a [String], &'a [String])>) -> Router {
        let mut r = Router::default();
        for (i, (hosts, routes)) in upstreams.into_iter().enumerate() {
            if hosts.is_empty() {
                let g = *r.any.get_or_insert_with(|| new_group(&mut r.groups));
                add(&mut r.groups[g], routes, i);
            }
            for host in hosts {
                let host = host.to_ascii_lowercase();
                let (names, key) = match host.strip_prefix('*') {
                    Some(suffix) => (&mut r.wildcard, suffix.as_bytes()),
                    None => (&mut r.exact, host.as_bytes()),
                };
                let g = match names.get(key) {
                    Some(g) => g,
                    None => {
                        let g = new_group(&mut r.groups);
                        names.insert(key, g);
                        g
                    }
                };
                add(&mut r.groups[g], routes, i);
            }
        }
        for g in &mut r.groups {
            g.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
            g.dedup_by(|later, first| later.0 == first.0);
        }
        r.wildcard
            .small
            .sort_by_key(|s| std::cmp::Reverse(s.0.len()));
        r
    }

    /// Whether any upstream names a host (if none does, the host is never read).
    pub fn by_host(&self) -> bool {
        !(self.exact.is_empty() && self.wildcard.is_empty())
    }

    /// The upstream index for a request to `host` (as the request gave it: any case,
    /// with or without a port; `None`: no host) and `path`.
    pub fn route(&self, host: Option<&[u8]>, path: &str) -> Option<usize> {
        let group = if self.by_host() {
            host.and_then(|h| self.host_group(h)).or(self.any)?
        } else {
            self.any?
        };
        self.groups[group]
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, i)| *i)
    }

    /// The group that claims `host`: its exact name, else the longest wildcard suffix.
    fn host_group(&self, host: &[u8]) -> Option<usize> {
        let name = strip_port(host);
        let name = name.strip_suffix(b".").unwrap_or(name);
        if name.is_empty() || name.len() > MAX_HOST {
            return None;
        }
        let mut buf = [0u8; MAX_HOST];
        let lower = &mut buf[..name.len()];
        lower.copy_from_slice(name);
        lower.make_ascii_lowercase();
        let lower = &*lower;
        if let Some(g) = self.exact.get(lower) {
            return Some(g);
        }
        if self.wildcard.len() <= SCAN_MAX {
            // Longest first; a suffix matches at a label boundary (it starts with '.').
            return self
                .wildcard
                .small
                .iter()
                .find(|(suffix, _)| suffix.len() < lower.len() && lower.ends_with(suffix))
                .map(|(_, g)| *g);
        }
        // `a.b.example.com`: `.b.example.com`, then `.example.com`, then `.com`.
        (0..lower.len())
            .filter(|&at| lower[at] == b'.')
            .find_map(|at| self.wildcard.get(&lower[at..]))
    }
}

fn new_group(groups: &mut Vec<Routes>) -> usize {
    groups.push(Vec::new());
    groups.len() - 1
}

fn add(group: &mut Routes, routes: &[String], upstream: usize) {
    group.extend(routes.iter().map(|r| (r.clone(), upstream)));
}

/// `host` without its port: `example.com:8080` → `example.com`, `[::1]:443` → `[::1]`.
/// (Host names are short: a plain scan from the end beats a search call.)
fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match host.iter().position(|&b| b == b']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.iter().rposition(|&b| b == b':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn router(ups: &[(&[&str], &[&str])]) -> Router {
        let owned: Vec<(Vec<String>, Vec<String>)> =
            ups.iter().map(|(h, r)| (strings(h), strings(r))).collect();
        Router::new(owned.iter().map(|(h, r)| (h.as_slice(), r.as_slice())))
    }

    #[test]
    fn exact_beats_wildcard_beats_any_and_ports_and_case_are_ignored() {
        let r = router(&[
            (&["api.example.com"], &["/"]),
            (&["*.example.com"], &["/"]),
            (&[], &["/", "/static/"]),
            (&["api.example.com"], &["/v2/"]),
            (&["*.b.example.com"], &["/"]),
        ]);
        let at = |host: &str, path: &str| r.route(Some(host.as_bytes()), path);
        assert_eq!(at("api.example.com", "/x"), Some(0));
        assert_eq!(at("API.Example.COM:8443", "/x"), Some(0));
        assert_eq!(at("api.example.com.", "/x"), Some(0));
        assert_eq!(at("api.example.com", "/v2/x"), Some(3));
        assert_eq!(at("www.example.com", "/x"), Some(1));
        assert_eq!(at("a.www.example.com", "/x"), Some(1));
        assert_eq!(at("a.b.example.com", "/x"), Some(4), "longest wildcard");
        assert_eq!(at("example.com", "/x"), Some(2), "a wildcard needs a label");
        assert_eq!(at("other.org", "/static/y"), Some(2));
        assert_eq!(at("[::1]:8080", "/"), Some(2));
        assert_eq!(r.route(None, "/"), Some(2));
        // A claimed host does not fall through to the upstreams without hosts.
        let r = router(&[(&["api.example.com"], &["/api/"]), (&[], &["/"])]);
        assert_eq!(r.route(Some(b"api.example.com"), "/other"), None);
        assert_eq!(r.route(Some(b"x.org"), "/other"), Some(1));
    }

    #[test]
    fn without_hosts_only_paths_count() {
        let r = router(&[(&[], &["/a/"]), (&[], &["/"])]);
        assert!(!r.by_host());
        assert_eq!(r.route(Some(b"anything"), "/a/b"), Some(0));
        assert_eq!(r.route(None, "/b"), Some(1));
        // Only named hosts and nobody for the rest: unknown hosts are unrouted.
        let r = router(&[(&["a.test"], &["/"])]);
        assert_eq!(r.route(Some(b"b.test"), "/"), None);
        assert_eq!(r.route(None, "/"), None);
        assert_eq!(r.route(Some("x".repeat(300).as_bytes()), "/"), None);
    }

    #[test]
    fn many_names_are_hashed_with_the_same_answers() {
        let owned: Vec<(Vec<String>, Vec<String>)> = (0..40)
            .map(|i| {
                (
                    vec![format!("site{i}.test"), format!("*.w{i}.test")],
                    vec!["/".to_string()],
                )
            })
            .collect();
        let r = Router::new(owned.iter().map(|(h, r)| (h.as_slice(), r.as_slice())));
        assert!(r.exact.len() > SCAN_MAX && !r.exact.map.is_empty());
        for i in 0..40 {
            let site = format!("SITE{i}.test:80");
            assert_eq!(r.route(Some(site.as_bytes()), "/"), Some(i));
            let under = format!("a.b.w{i}.test");
            assert_eq!(r.route(Some(under.as_bytes()), "/"), Some(i));
        }
        assert_eq!(r.route(Some(b"w1.test"), "/"), None);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port(b"a.test:80"), b"a.test");
        assert_eq!(strip_port(b"a.test"), b"a.test");
        assert_eq!(strip_port(b"[::1]:80"), b"[::1]");
        assert_eq!(strip_port(b"[::1"), b"[::1");
    }
}
