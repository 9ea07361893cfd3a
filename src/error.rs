//! What each way a request can fail becomes: its status, its JSON body, its metric
//! label. One match per direction, so the mapping is reviewed in one place.

use bytes::Bytes;
use pingora::{Error, ErrorSource, ErrorType};

use crate::admission::Shed;

/// The status and label a proxy error becomes. Status 0: the client is gone, nothing
/// can be written.
pub fn classify_error(e: &Error) -> (u16, &'static str) {
    use ErrorType::*;
    if is_local_failure(e) {
        return (503, "local_resources");
    }
    match (e.esource(), e.etype()) {
        (_, HTTPStatus(code)) => (*code, "status"),
        (_, Custom(crate::proxy::NO_RETRY_SLOT)) => (503, crate::proxy::NO_RETRY_SLOT),
        (ErrorSource::Upstream, ConnectTimedout) => (502, "connect_timeout"),
        (ErrorSource::Upstream, ConnectRefused | ConnectNoRoute | ConnectError) => {
            (502, "connect_error")
        }
        (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => (504, "upstream_timeout"),
        (ErrorSource::Upstream, InvalidHTTPHeader | H1Error | InvalidH2) => {
            (502, "upstream_bad_response")
        }
        (ErrorSource::Upstream, _) => (502, "upstream_error"),
        (
            ErrorSource::Downstream | ErrorSource::Unset,
            ReadError | WriteError | ConnectionClosed,
        ) => (0, "client_gone"),
        (ErrorSource::Downstream, ReadTimedout | WriteTimedout) => (408, "client_timeout"),
        (ErrorSource::Downstream, _) => (400, "bad_request"),
        (_, ConnectTimedout) => (502, "connect_timeout"),
        (_, ReadTimedout) => (504, "upstream_timeout"),
        _ => (502, "internal"),
    }
}

/// Did this error say anything about the backend's health? Client aborts and bad
/// client requests do not count against a backend.
pub fn is_backend_failure(e: &Error) -> bool {
    !is_local_failure(e) && *e.esource() == ErrorSource::Upstream
        || matches!(
            e.etype(),
            ErrorType::ConnectTimedout | ErrorType::ConnectRefused | ErrorType::ReadTimedout
        ) && *e.esource() != ErrorSource::Downstream
}

/// Did levee fail on its own side (no socket could be made: out of descriptors or
/// memory)? Such failures are not the backend's, and retrying elsewhere would not help.
pub fn is_local_failure(e: &Error) -> bool {
    if *e.etype() == ErrorType::SocketError {
        return true;
    }
    // pingora wraps a failed connect as `InternalError` caused by `SocketError` caused
    // by the `io::Error`: look down the chain.
    let mut cause = e.cause.as_deref();
    while let Some(c) = cause {
        let inner = c
            .downcast_ref::<Error>()
            .or_else(|| c.downcast_ref::<Box<Error>>().map(|b| &**b));
        if let Some(inner) = inner {
            if *inner.etype() == ErrorType::SocketError {
                return true;
            }
            cause = inner.cause.as_deref();
        } else if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            );
        } else {
            return false;
        }
    }
    false
}

/// The JSON body of a shed: `{"error":"overloaded","upstream":…,"level":…,"reason":…}`.
pub fn shed_body(upstream: &str, shed: &Shed) -> Bytes {
    Bytes::from(format!(
        "{{\"error\":\"overloaded\",\"upstream\":{},\"level\":\"{}\",\"reason\":\"{}\",\"retry_after\":{}}}\n",
        json_string(upstream),
        shed.level.as_str(),
        shed.reason.as_str(),
        shed.retry_after
    ))
}

/// The JSON body of an error response levee writes itself.
pub fn error_body(error: &str, upstream: Option<&str>) -> Bytes {
    match upstream {
        Some(u) => Bytes::from(format!(
            "{{\"error\":\"{error}\",\"upstream\":{}}}\n",
            json_string(u)
        )),
        None => Bytes::from(format!("{{\"error\":\"{error}\"}}\n")),
    }
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
        let v: serde_json::Value = serde_json::from_slice(&shed_body("mcp", &shed)).unwrap();
        assert_eq!(v["error"], "overloaded");
        assert_eq!(v["upstream"], "mcp");
        assert_eq!(v["level"], "danger");
        assert_eq!(v["reason"], "queue_timeout");
    }

    #[test]
    fn errors_map_to_statuses() {
        let e = Error::new(ErrorType::ConnectRefused).into_up();
        assert_eq!(classify_error(&e), (502, "connect_error"));
        let e = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(classify_error(&e), (504, "upstream_timeout"));
        let e = Error::new(ErrorType::ConnectionClosed).into_down();
        assert_eq!(classify_error(&e).0, 0);
        let e = Error::new(ErrorType::HTTPStatus(413));
        assert_eq!(classify_error(&e).0, 413);
    }

    /// The chain pingora builds when it cannot make the socket for a connect.
    fn wrapped(os_error: i32) -> Box<Error> {
        let io = std::io::Error::from_raw_os_error(os_error);
        let socket = Error::because(ErrorType::SocketError, "failed to create socket", io);
        Error::because(ErrorType::InternalError, "Fail to connect", socket).into_up()
    }

    #[test]
    fn running_out_of_descriptors_is_levee_s_failure_not_the_backend_s() {
        for code in [libc::EMFILE, libc::ENFILE] {
            let e = wrapped(code);
            assert!(is_local_failure(&e), "{e}");
            assert!(!is_backend_failure(&e), "{e}");
            assert_eq!(classify_error(&e), (503, "local_resources"), "{e}");
        }
        let plain = Error::because(
            ErrorType::ConnectRefused,
            "refused",
            std::io::Error::from_raw_os_error(libc::ECONNREFUSED),
        )
        .into_up();
        assert!(!is_local_failure(&plain));
        assert!(is_backend_failure(&plain));
    }
}
