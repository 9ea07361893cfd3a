//! What each way a request can fail becomes: its status, its JSON body, its metric
//! label, and whether it says anything about the backend's health. One match per
//! question, so the mapping is reviewed in one place.

use bytes::Bytes;

use crate::admission::Shed;

/// Why a proxied request failed. Built by the data path (`crate::http`), mapped here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The request's framing or form is invalid (levee's rules or hyper's parser).
    #[error("bad request")]
    BadRequest,
    /// The client's request body is larger than `server.max_request_body_bytes`.
    #[error("request body too large")]
    BodyTooLarge,
    /// The client stopped sending its body for longer than `client_header`.
    #[error("client timed out sending its request")]
    ClientTimeout,
    /// The client left (closed or reset) before the exchange ended.
    #[error("client gone")]
    ClientGone,
    /// levee could not make a socket (out of descriptors or memory): not the backend's
    /// fault, and another backend would fail the same way.
    #[error("levee is out of local resources (descriptors or memory)")]
    LocalResources,
    /// TCP connect to the backend did not finish within `connect`.
    #[error("connect to the backend timed out")]
    ConnectTimeout,
    /// The backend refused or could not be reached.
    #[error("connect to the backend failed")]
    ConnectError,
    /// A connect failed and every other backend was full.
    #[error("connect failed and no other backend has a free slot")]
    NoRetrySlot,
    /// No response head, or no body bytes, within `read` (or the whole response past
    /// `response`).
    #[error("backend timed out")]
    UpstreamTimeout,
    /// The backend's response was not valid HTTP/1.1 (or too large a head).
    #[error("backend sent an invalid response")]
    UpstreamBadResponse,
    /// The backend closed or reset the connection mid-exchange.
    #[error("backend connection failed")]
    UpstreamError,
}

/// Label of a request that failed to connect while every other backend was full.
pub const NO_RETRY_SLOT: &str = "no_retry_slot";

impl Failure {
    /// The status levee answers (0: nobody is left to answer) and the label of the
    /// JSON body and the access log.
    pub fn status_and_label(self) -> (u16, &'static str) {
        match self {
            Failure::BadRequest => (400, "bad_request"),
            Failure::BodyTooLarge => (413, "body_too_large"),
            Failure::ClientTimeout => (408, "client_timeout"),
            Failure::ClientGone => (0, "client_gone"),
            Failure::LocalResources => (503, "local_resources"),
            Failure::ConnectTimeout => (502, "connect_timeout"),
            Failure::ConnectError => (502, "connect_error"),
            Failure::NoRetrySlot => (503, NO_RETRY_SLOT),
            Failure::UpstreamTimeout => (504, "upstream_timeout"),
            Failure::UpstreamBadResponse => (502, "upstream_bad_response"),
            Failure::UpstreamError => (502, "upstream_error"),
        }
    }

    /// Does this failure count against the backend's health? Client aborts, bad
    /// client requests and levee's own shortages do not.
    pub fn is_backend_failure(self) -> bool {
        matches!(
            self,
            Failure::ConnectTimeout
                | Failure::ConnectError
                | Failure::UpstreamTimeout
                | Failure::UpstreamBadResponse
                | Failure::UpstreamError
        )
    }

    /// Is this a timeout on the backend's side (counted in the backend's timeouts)?
    pub fn is_backend_timeout(self) -> bool {
        matches!(self, Failure::ConnectTimeout | Failure::UpstreamTimeout)
    }

    /// The failure a connect error is: levee's own shortage, or the backend's.
    pub fn of_connect(e: &std::io::Error) -> Failure {
        if is_local_io_failure(e) {
            Failure::LocalResources
        } else if e.kind() == std::io::ErrorKind::TimedOut {
            Failure::ConnectTimeout
        } else {
            Failure::ConnectError
        }
    }
}

/// Is this I/O error levee's own shortage (no socket could be made)?
pub fn is_local_io_failure(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The JSON body of a shed:
/// `{"error":"overloaded","upstream":…,"level":…,"reason":…,"retry_after":N,"request_id":…}`.
/// Written byte by byte rather than with `format!`: a shed is the answer levee gives
/// most often under a flood, and the formatting machinery was a tenth of its cost.
pub fn shed_body(upstream: &str, shed: &Shed, request_id: &str) -> Bytes {
    let mut out = Vec::with_capacity(128 + upstream.len() + request_id.len());
    out.extend_from_slice(b"{\"error\":\"overloaded\",\"upstream\":");
    push_json_string(&mut out, upstream);
    out.extend_from_slice(b",\"level\":\"");
    out.extend_from_slice(shed.level.as_str().as_bytes());
    out.extend_from_slice(b"\",\"reason\":\"");
    out.extend_from_slice(shed.reason.as_str().as_bytes());
    out.extend_from_slice(b"\",\"retry_after\":");
    push_decimal(&mut out, shed.retry_after);
    out.extend_from_slice(b",\"request_id\":");
    push_json_string(&mut out, request_id);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// `s` as a JSON string literal: as it is between quotes when nothing in it needs an
/// escape (upstream names from config never do), else through serde_json.
fn push_json_string(out: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(json_string(s).as_bytes());
    }
}

fn push_decimal(out: &mut Vec<u8>, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// The JSON body of an error response levee writes itself:
/// `{"error":…,"upstream":…,"request_id":…}` (`upstream` when one was chosen).
pub fn error_body(error: &str, upstream: Option<&str>, request_id: &str) -> Bytes {
    let mut out = Vec::with_capacity(64 + error.len() + request_id.len());
    out.extend_from_slice(b"{\"error\":");
    push_json_string(&mut out, error);
    if let Some(u) = upstream {
        out.extend_from_slice(b",\"upstream\":");
        push_json_string(&mut out, u);
    }
    out.extend_from_slice(b",\"request_id\":");
    push_json_string(&mut out, request_id);
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// A JSON string literal (names come from config, which restricts them; escape anyway).
fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{level::Level, ShedReason};
    use crate::config::Class;

    #[test]
    fn shed_body_is_json_with_the_design_fields() {
        let shed = Shed {
            reason: ShedReason::QueueTimeout,
            level: Level::Danger,
            class: Class::Normal,
            retry_after: 3,
        };
        let v: serde_json::Value = serde_json::from_slice(&shed_body("mcp", &shed, "r-1")).unwrap();
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["error"], "overloaded");
        assert_eq!(v["upstream"], "mcp");
        assert_eq!(v["level"], "danger");
        assert_eq!(v["reason"], "queue_timeout");
        assert_eq!(v["retry_after"], 3);
        // Every retry-after a config allows, and a name that needs escaping.
        for (secs, name) in [(0, "a"), (10, "up \"q\" \\ é"), (4_294_967_295, "x")] {
            let shed = Shed {
                retry_after: secs,
                ..shed.clone()
            };
            let v: serde_json::Value =
                serde_json::from_slice(&shed_body(name, &shed, "a \"quoted\" \\ id")).unwrap();
            assert_eq!(v["retry_after"], secs);
            assert_eq!(v["upstream"], name);
            assert_eq!(v["request_id"], "a \"quoted\" \\ id");
        }
    }

    #[test]
    fn error_bodies_are_json() {
        let v: serde_json::Value =
            serde_json::from_slice(&error_body("no_route", None, "id\"1")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "no_route", "request_id": "id\"1"})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&error_body("upstream_timeout", Some("a"), "x")).unwrap();
        assert_eq!(v["upstream"], "a");
    }

    #[test]
    fn failures_map_to_statuses() {
        assert_eq!(
            Failure::ConnectError.status_and_label(),
            (502, "connect_error")
        );
        assert_eq!(
            Failure::UpstreamTimeout.status_and_label(),
            (504, "upstream_timeout")
        );
        assert_eq!(Failure::ClientGone.status_and_label().0, 0);
        assert_eq!(Failure::BodyTooLarge.status_and_label().0, 413);
        assert!(!Failure::ClientGone.is_backend_failure());
        assert!(!Failure::LocalResources.is_backend_failure());
        assert!(Failure::UpstreamError.is_backend_failure());
    }

    #[test]
    fn running_out_of_descriptors_is_levee_s_failure_not_the_backend_s() {
        for code in [libc::EMFILE, libc::ENFILE] {
            let e = std::io::Error::from_raw_os_error(code);
            let f = Failure::of_connect(&e);
            assert_eq!(f, Failure::LocalResources);
            assert!(!f.is_backend_failure());
            assert_eq!(f.status_and_label(), (503, "local_resources"));
        }
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(Failure::of_connect(&refused), Failure::ConnectError);
        assert!(Failure::of_connect(&refused).is_backend_failure());
    }
}
