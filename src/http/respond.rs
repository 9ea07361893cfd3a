//! levee's own responses (sheds, errors, refusals): status, headers, JSON body.

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONNECTION, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::body::ResBody;
use super::io::Active;
use crate::admission::Shed;
use crate::error::{error_body, shed_body, Failure};

/// A small JSON answer. `close`: the connection ends after it, and says so.
pub fn json(
    status: u16,
    body: Bytes,
    retry_after: Option<u32>,
    close: bool,
    active: Option<Active>,
) -> Response<ResBody> {
    let mut resp = Response::new(ResBody::full(body, active));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    // Sized once for what follows, rather than grown on the first insert.
    // (The request id is added by the caller, as on every answer.)
    *resp.headers_mut() = HeaderMap::with_capacity(5);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(secs) = retry_after {
        h.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if close {
        h.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The 503 of a shed; the connection stays usable.
pub fn shed(
    upstream: &str,
    shed: &Shed,
    request_id: &str,
    active: Option<Active>,
) -> Response<ResBody> {
    json(
        503,
        shed_body(upstream, shed, request_id),
        Some(shed.retry_after),
        false,
        active,
    )
}

/// The answer to a failed exchange: the connection closes after it (how much of the
/// request is left unread on it is not known). A 503 says when to come back.
pub fn failure(
    f: Failure,
    upstream: Option<&str>,
    request_id: &str,
    active: Option<Active>,
) -> Response<ResBody> {
    let (status, label) = f.status_and_label();
    let status = if status == 0 { 400 } else { status };
    let retry_after = (status == 503).then_some(1);
    json(
        status,
        error_body(label, upstream, request_id),
        retry_after,
        true,
        active,
    )
}
