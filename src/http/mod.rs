//! What both protocols share on the data path: client connections ([`server`]; HTTP/1.1
//! itself is [`crate::http1`], HTTP/2 is hyper) over levee's socket type ([`io`]),
//! framing rules ([`validate`]), one request top to bottom ([`forward`]),
//! its hold on a backend ([`exchange`]), the request body ([`upload`]) and the
//! response body ([`body`]), levee's own answers ([`respond`]) and the per-backend
//! connection pool ([`pool`]).

pub mod body;
pub mod exchange;
pub mod forward;
pub mod identity;
pub mod io;
pub mod pool;
pub mod respond;
pub mod server;
pub mod upload;
pub mod validate;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Up to this many names, [`find_header`] compares names instead of hashing one.
const FEW_NAMES: usize = 8;

/// A header's first value, as [`HeaderMap::get`] gives it. A request's map usually
/// holds a handful of names, and comparing a standard name with each costs less than
/// hashing it (callgrind: 110-170 instructions a lookup, about a third of that
/// compared), so small maps are searched in order.
pub fn find_header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() > FEW_NAMES {
        return headers.get(name);
    }
    headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_header_gives_the_first_value_as_get_does_in_small_and_large_maps() {
        for extra in [0, FEW_NAMES + 4] {
            let mut h = HeaderMap::new();
            for i in 0..extra {
                h.insert(
                    HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("f"),
                );
            }
            h.append(http::header::HOST, HeaderValue::from_static("a"));
            h.append("x-request-id", HeaderValue::from_static("first"));
            h.append(http::header::ACCEPT, HeaderValue::from_static("b"));
            h.append("x-request-id", HeaderValue::from_static("second"));
            for name in [
                http::header::HOST,
                http::header::ACCEPT,
                HeaderName::from_static("x-request-id"),
                http::header::UPGRADE,
                HeaderName::from_static("x-absent"),
            ] {
                assert_eq!(
                    find_header(&h, &name),
                    h.get(&name),
                    "{name} with {extra} more"
                );
            }
            assert_eq!(
                find_header(&h, &HeaderName::from_static("x-request-id")).unwrap(),
                "first"
            );
        }
    }
}
