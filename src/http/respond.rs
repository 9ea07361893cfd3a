//! levee's own responses (sheds, errors, refusals): status, headers, JSON body; or,
//! to a gRPC call, the trailers-only answer gRPC clients expect.
//!
//! A gRPC client reads an HTTP status other than 200 as a transport failure, with its
//! own mapping and none of levee's reason or retry delay. So a request whose
//! `content-type` is `application/grpc…` gets HTTP 200 with `grpc-status`,
//! `grpc-message` (levee's reason) and, when levee knows when to come back,
//! `grpc-retry-pushback-ms`, all in the one HEADERS frame that ends the stream.

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER,
};
use http::{Response, StatusCode};

use super::body::ResBody;
use super::io::Active;
use crate::admission::Shed;
use crate::error::{error_body, shed_body, Failure};

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_PUSHBACK: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// gRPC status codes levee answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcCode {
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl GrpcCode {
    /// The gRPC status of an answer levee would give as `status`: sheds, failures to
    /// reach a backend and levee's own shortages are UNAVAILABLE (the client may retry,
    /// after the pushback when there is one); a backend that did not answer in time is
    /// DEADLINE_EXCEEDED; the rest follow gRPC's own HTTP-to-gRPC mapping.
    pub fn of_status(status: u16) -> GrpcCode {
        match status {
            504 | 408 => GrpcCode::DeadlineExceeded,
            413 => GrpcCode::ResourceExhausted,
            404 => GrpcCode::Unimplemented,
            502 | 503 => GrpcCode::Unavailable,
            _ => GrpcCode::Internal,
        }
    }
}

/// Whether a request is a gRPC call: `content-type: application/grpc`, with or without
/// a `+format` or `;parameters` (gRPC-Web, which carries its status in the body, is
/// not).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    super::find_header(headers, &CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= 16
            && v[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(v.get(16), None | Some(b'+' | b';'))
    })
}

/// The fields of one of levee's own answers to an HTTP/1.1 request, pre-encoded: the
/// codec writes them after the status line, with `Retry-After` when there is one, and
/// ends the connection after the answer when `close`.
#[derive(Debug, Clone, Copy)]
pub struct Prebuilt {
    pub fields: &'static [u8],
    pub retry_after: Option<u32>,
    pub close: bool,
}

/// How levee's own answers to one request are written.
#[derive(Debug, Clone, Copy)]
pub struct Own<'a> {
    /// The request's id, for the JSON body (the header is added to every answer).
    pub request_id: &'a HeaderValue,
    /// A gRPC call: a trailers-only gRPC answer instead of a JSON one.
    pub grpc: bool,
    /// An HTTP/2 request: a stream ends, never the connection, and HTTP/2 has no
    /// `Connection` header.
    pub h2: bool,
}

impl Own<'_> {
    /// The id as the JSON bodies write it (made only for an answer that has a body).
    fn id(&self) -> &str {
        self.request_id.to_str().unwrap_or("-")
    }

    /// A small JSON answer (or its gRPC form). `close`: an HTTP/1 connection ends after
    /// it, and says so.
    pub fn json(
        &self,
        status: u16,
        label: &str,
        body: Bytes,
        retry_after: Option<u32>,
        close: bool,
        active: Option<Active>,
    ) -> Response<ResBody> {
        if self.grpc {
            return grpc(
                GrpcCode::of_status(status),
                label,
                retry_after,
                close && !self.h2,
                active,
            );
        }
        if !self.h2 {
            // HTTP/1.1: the fields are bytes written as they are (no header map).
            let fields = Prebuilt {
                fields: b"content-type: application/json\r\ncache-control: no-store\r\n",
                retry_after,
                close,
            };
            let mut resp = Response::new(ResBody::prebuilt(fields, body, active));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            return resp;
        }
        let mut resp = Response::new(ResBody::full(body, active));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        // Sized once for what follows (the request id comes after), rather than grown
        // on the first insert.
        *resp.headers_mut() = HeaderMap::with_capacity(5);
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = retry_after {
            h.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if close && !self.h2 {
            h.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }

    /// An error levee answers before or without a backend: `{"error":label,…}`.
    pub fn error(
        &self,
        status: u16,
        label: &str,
        upstream: Option<&str>,
        close: bool,
        active: Option<Active>,
    ) -> Response<ResBody> {
        let body = if self.grpc {
            Bytes::new()
        } else {
            error_body(label, upstream, self.id())
        };
        self.json(status, label, body, None, close, active)
    }

    /// The 503 of a shed; the connection stays usable.
    pub fn shed(&self, upstream: &str, shed: &Shed, active: Option<Active>) -> Response<ResBody> {
        if self.grpc {
            let message = format!(
                "overloaded: {} (upstream {upstream}, level {})",
                shed.reason.as_str(),
                shed.level.as_str()
            );
            return grpc(
                GrpcCode::Unavailable,
                &message,
                Some(shed.retry_after),
                false,
                active,
            );
        }
        self.json(
            503,
            "overloaded",
            shed_body(upstream, shed, self.id()),
            Some(shed.retry_after),
            false,
            active,
        )
    }

    /// The answer to a failed exchange: the connection closes after it (how much of the
    /// request is left unread on it is not known). A 503 says when to come back.
    pub fn failure(
        &self,
        f: Failure,
        upstream: Option<&str>,
        active: Option<Active>,
    ) -> Response<ResBody> {
        let (status, label) = f.status_and_label();
        let status = if status == 0 { 400 } else { status };
        let retry_after = (status == 503).then_some(1);
        let body = if self.grpc {
            Bytes::new()
        } else {
            error_body(label, upstream, self.id())
        };
        self.json(status, label, body, retry_after, true, active)
    }
}

/// A trailers-only gRPC answer: HTTP 200 and the status in the one HEADERS frame that
/// ends the stream. `retry_after` (seconds) becomes `grpc-retry-pushback-ms`.
fn grpc(
    code: GrpcCode,
    message: &str,
    retry_after: Option<u32>,
    close: bool,
    active: Option<Active>,
) -> Response<ResBody> {
    let mut resp = Response::new(ResBody::empty(active));
    *resp.headers_mut() = HeaderMap::with_capacity(6);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(GRPC_STATUS.clone(), HeaderValue::from(code as u16));
    // levee's messages are printable ASCII without '%', so they need no
    // percent-encoding; anything else is left out rather than sent malformed.
    if let Ok(v) = HeaderValue::from_str(message) {
        if !message.contains('%') {
            h.insert(GRPC_MESSAGE.clone(), v);
        }
    }
    if let Some(secs) = retry_after {
        h.insert(
            GRPC_PUSHBACK.clone(),
            HeaderValue::from(u64::from(secs) * 1000),
        );
    }
    if close {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_calls_are_told_by_their_content_type() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/grpc-web+proto"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn statuses_map_to_grpc_codes() {
        assert_eq!(GrpcCode::of_status(503), GrpcCode::Unavailable);
        assert_eq!(GrpcCode::of_status(502), GrpcCode::Unavailable);
        assert_eq!(GrpcCode::of_status(504), GrpcCode::DeadlineExceeded);
        assert_eq!(GrpcCode::of_status(404), GrpcCode::Unimplemented);
        assert_eq!(GrpcCode::of_status(400), GrpcCode::Internal);
    }

    #[test]
    fn a_grpc_answer_is_trailers_only() {
        let own = Own {
            request_id: &HeaderValue::from_static("r"),
            grpc: true,
            h2: true,
        };
        let resp = own.failure(Failure::UpstreamTimeout, Some("a"), None);
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["grpc-status"], "4");
        assert_eq!(h["grpc-message"], "upstream_timeout");
        assert!(
            !h.contains_key("connection"),
            "no Connection header in HTTP/2"
        );
        assert!(hyper::body::Body::is_end_stream(resp.body()));
        let resp = own.failure(Failure::NoRetrySlot, None, None);
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(resp.headers()["grpc-retry-pushback-ms"], "1000");
    }
}
