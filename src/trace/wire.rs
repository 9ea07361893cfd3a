//! The protobuf bytes of one export, written straight from the span records.
//!
//! The messages are the official OpenTelemetry ones (`ExportTraceServiceRequest` of
//! `opentelemetry-proto`); [`super::export::encode`] builds them as prost structs, and
//! the tests check that these bytes decode to exactly that. Writing them directly
//! skips building about twenty owned strings per span and prost's repeated length
//! passes over nested messages: measured under callgrind, that was most of what a
//! sampled request cost (7,500 instructions of encoding per span, against about 1,000
//! here).

use prost::encoding::encoded_len_varint;

use super::span::SpanRecord;

/// Protobuf wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `Span.kind` SPAN_KIND_SERVER.
const KIND_SERVER: u64 = 2;
/// `Status.code` STATUS_CODE_ERROR.
const STATUS_ERROR: u64 = 2;
/// `Span.flags`: sampled, and whether the parent is remote.
const FLAGS_SAMPLED: u32 = 0x01;
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

/// A varint, a byte at a time (most are one byte: tags, short lengths).
#[inline]
fn encode_varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

#[inline]
fn key(buf: &mut Vec<u8>, tag: u32, wire: u32) {
    encode_varint(u64::from(tag << 3 | wire), buf);
}

/// Length of a length-delimited field of `len` bytes (tags below 16: one byte).
fn field_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

/// A `bytes` or `string` field; proto3 leaves an empty one out.
#[inline]
fn bytes(buf: &mut Vec<u8>, tag: u32, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    key(buf, tag, LEN);
    encode_varint(data.len() as u64, buf);
    buf.extend_from_slice(data);
}

fn fixed64(buf: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        key(buf, tag, FIXED64);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

fn varint(buf: &mut Vec<u8>, tag: u32, v: u64) {
    if v != 0 {
        key(buf, tag, VARINT);
        encode_varint(v, buf);
    }
}

/// An attribute's value (`AnyValue`'s oneof: a member is written even when zero).
#[derive(Clone, Copy)]
enum Value<'a> {
    Text(&'a str),
    Int(i64),
    Double(f64),
}

/// One `KeyValue` as field `tag` of its parent.
#[inline]
fn attribute(buf: &mut Vec<u8>, tag: u32, name: &str, value: Value<'_>) {
    let any = match value {
        Value::Text(s) => field_len(s.len()),
        Value::Int(i) => 1 + encoded_len_varint(i as u64),
        Value::Double(_) => 9,
    };
    let kv = field_len(name.len()) + field_len(any);
    buf.reserve(field_len(kv));
    key(buf, tag, LEN);
    encode_varint(kv as u64, buf);
    bytes(buf, 1, name.as_bytes());
    key(buf, 2, LEN);
    encode_varint(any as u64, buf);
    match value {
        Value::Text(s) => {
            key(buf, 1, LEN);
            encode_varint(s.len() as u64, buf);
            buf.extend_from_slice(s.as_bytes());
        }
        Value::Int(i) => {
            key(buf, 3, VARINT);
            encode_varint(i as u64, buf);
        }
        Value::Double(d) => {
            key(buf, 4, FIXED64);
            buf.extend_from_slice(&d.to_bits().to_le_bytes());
        }
    }
}

/// The body of one `Span` message: the same fields and attributes, in the same
/// cases, as [`super::export::otlp_span`].
fn span(buf: &mut Vec<u8>, r: &SpanRecord) {
    // Room for all but the variable texts, which `attribute` reserves for.
    buf.reserve(600);
    bytes(buf, 1, &r.trace_id);
    bytes(buf, 2, &r.span_id);
    bytes(buf, 3, r.trace_state.as_deref().unwrap_or("").as_bytes());
    if let Some(p) = &r.parent_span_id {
        bytes(buf, 4, p);
    }
    let flags = FLAGS_SAMPLED
        | FLAGS_HAS_IS_REMOTE
        | if r.parent_span_id.is_some() {
            FLAGS_IS_REMOTE
        } else {
            0
        };
    // Tag 16 takes two bytes of key.
    key(buf, 16, FIXED32);
    buf.extend_from_slice(&flags.to_le_bytes());
    bytes(buf, 5, r.method.as_bytes());
    varint(buf, 6, KIND_SERVER);
    fixed64(buf, 7, r.start_unix_nanos);
    fixed64(buf, 8, r.end_unix_nanos);
    attribute(buf, 9, "http.request.method", Value::Text(&r.method));
    attribute(buf, 9, "url.path", Value::Text(&r.path));
    if r.status != 0 {
        attribute(
            buf,
            9,
            "http.response.status_code",
            Value::Int(i64::from(r.status)),
        );
    }
    if let Some(u) = &r.upstream {
        attribute(buf, 9, "levee.upstream", Value::Text(u));
    }
    if let Some(b) = &r.backend {
        attribute(buf, 9, "levee.backend", Value::Text(b));
    }
    if let Some(c) = r.class {
        attribute(buf, 9, "levee.class", Value::Text(c));
    }
    if let Some(l) = r.level {
        attribute(buf, 9, "levee.level", Value::Text(l));
    }
    if let Some(q) = r.queue_wait {
        attribute(
            buf,
            9,
            "levee.queue_wait_ms",
            Value::Double(q.as_secs_f64() * 1000.0),
        );
    }
    if r.backend.is_some() {
        attribute(buf, 9, "levee.retries", Value::Int(i64::from(r.retries)));
    }
    if let Some(s) = r.shed_reason {
        attribute(buf, 9, "levee.shed_reason", Value::Text(s));
    }
    // Status, always present (empty: UNSET).
    let error = r.status >= 500;
    let message = if error {
        r.shed_reason.unwrap_or_default()
    } else {
        ""
    };
    let status_len = if message.is_empty() {
        0
    } else {
        field_len(message.len())
    } + if error { 2 } else { 0 };
    key(buf, 15, LEN);
    encode_varint(status_len as u64, buf);
    bytes(buf, 2, message.as_bytes());
    if error {
        varint(buf, 3, STATUS_ERROR);
    }
}

/// The `ExportTraceServiceRequest` of `records`, as service `service_name`: one
/// resource (`service.name`, `service.version`), one scope (`levee`).
pub fn encode(records: &[SpanRecord], service_name: &str) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let mut spans = Vec::with_capacity(records.len() * 320);
    let mut one = Vec::with_capacity(512);
    for r in records {
        one.clear();
        span(&mut one, r);
        key(&mut spans, 2, LEN);
        encode_varint(one.len() as u64, &mut spans);
        spans.extend_from_slice(&one);
    }
    let mut scope = Vec::with_capacity(32);
    bytes(&mut scope, 1, b"levee");
    bytes(&mut scope, 2, version.as_bytes());
    let mut resource = Vec::with_capacity(64);
    attribute(&mut resource, 1, "service.name", Value::Text(service_name));
    attribute(&mut resource, 1, "service.version", Value::Text(version));

    let scope_spans = field_len(scope.len()) + spans.len();
    let resource_spans = field_len(resource.len()) + field_len(scope_spans);
    let mut out = Vec::with_capacity(field_len(resource_spans));
    key(&mut out, 1, LEN);
    encode_varint(resource_spans as u64, &mut out);
    key(&mut out, 1, LEN);
    encode_varint(resource.len() as u64, &mut out);
    out.extend_from_slice(&resource);
    key(&mut out, 2, LEN);
    encode_varint(scope_spans as u64, &mut out);
    key(&mut out, 1, LEN);
    encode_varint(scope.len() as u64, &mut out);
    out.extend_from_slice(&scope);
    out.extend_from_slice(&spans);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    use std::time::Duration;

    fn records() -> Vec<SpanRecord> {
        let shed = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            trace_state: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into()),
            method: "GET".into(),
            path: "/a/very/long/path/".repeat(20),
            status: 503,
            upstream: Some("app".into()),
            class: Some("low"),
            level: Some("critical"),
            shed_reason: Some("low_priority"),
            start_unix_nanos: 1_700_000_000_000_000_000,
            end_unix_nanos: 1_700_000_000_000_100_000,
            ..SpanRecord::default()
        };
        let served = SpanRecord {
            trace_id: [0xfe; 16],
            span_id: [0x7f; 8],
            method: "PATCH".into(),
            path: "/x".into(),
            status: 200,
            upstream: Some("app".into()),
            backend: Some("[2001:db8::1]:8080".into()),
            class: Some("normal"),
            level: Some("safe"),
            queue_wait: Some(Duration::from_nanos(1_234_567)),
            retries: 2,
            start_unix_nanos: 5,
            end_unix_nanos: 9,
            ..SpanRecord::default()
        };
        let failed = SpanRecord {
            status: 502,
            backend: Some("10.0.0.1:80".into()),
            queue_wait: Some(Duration::ZERO),
            shed_reason: None,
            ..served.clone()
        };
        let gone = SpanRecord {
            status: 0,
            queue_wait: None,
            backend: None,
            ..served.clone()
        };
        vec![shed, served, failed, gone, SpanRecord::default()]
    }

    #[test]
    fn the_bytes_decode_to_the_official_messages() {
        let all = records();
        for n in 0..=all.len() {
            let batch = &all[..n];
            let bytes = encode(batch, "edge levee");
            let decoded = ExportTraceServiceRequest::decode(&bytes[..]).expect("valid protobuf");
            assert_eq!(
                decoded,
                super::super::export::encode(batch, "edge levee"),
                "{n} spans"
            );
        }
    }

    #[test]
    fn a_large_batch_decodes_too() {
        let batch: Vec<SpanRecord> = records().into_iter().cycle().take(600).collect();
        let bytes = encode(&batch, "levee");
        let decoded = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 600);
        assert_eq!(decoded, super::super::export::encode(&batch, "levee"));
    }
}
