//! levee's SERVER span of one sampled request: started from the request's trace
//! context, filled in as the request goes (upstream and class, then a shed or the
//! backend that served it), and handed to the exporter when it ends.
//!
//! A [`Span`] exists only for a sampled request: the request path holds an
//! `Option<Span>` (one pointer), so an unsampled request pays one branch at each site.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::HeaderValue;

use super::context::{random_u64, Encoded, TraceParent};
use super::export::Tracer;

/// What the exporter turns into one OTLP span: everything levee knows of the request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// The caller's span; `None` for a trace levee started.
    pub parent_span_id: Option<[u8; 8]>,
    /// The caller's `tracestate`, as it came.
    pub trace_state: Option<String>,
    pub method: String,
    pub path: String,
    /// The status the client was sent (0: none, the client left first).
    pub status: u16,
    pub upstream: Option<String>,
    pub backend: Option<String>,
    pub class: Option<&'static str>,
    pub level: Option<&'static str>,
    /// Time spent waiting in the upstream's queue (admitted requests).
    pub queue_wait: Option<Duration>,
    /// Times the request went to another backend.
    pub retries: u32,
    pub shed_reason: Option<&'static str>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

/// One sampled request's span, in progress. Ending it ([`Span::end`]) hands it to the
/// exporter. A span dropped without ending (the client left while its request waited
/// in the queue, say) is exported too, without a status.
pub struct Span(Option<Box<Open>>);

struct Open {
    record: SpanRecord,
    tracer: Tracer,
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// A random id of `N` bytes (8 or 16), never all zero (W3C: all-zero ids are
/// invalid).
fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        for chunk in id.chunks_mut(8) {
            let r = random_u64().to_be_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        if id != [0u8; N] {
            return id;
        }
    }
}

impl Span {
    /// A span continuing `parent` (same trace, the caller's span as parent) or starting
    /// a new trace. Only called for a sampled request.
    pub(super) fn start(
        tracer: &Tracer,
        parent: Option<TraceParent>,
        state: Option<&[u8]>,
        method: &str,
        path: &str,
    ) -> Span {
        let record = SpanRecord {
            trace_id: parent.map_or_else(random_id, |p| p.trace_id),
            span_id: random_id(),
            parent_span_id: parent.map(|p| p.span_id),
            trace_state: state.map(|s| String::from_utf8_lossy(s).into_owned()),
            method: method.to_string(),
            path: path.to_string(),
            start_unix_nanos: unix_nanos(),
            ..SpanRecord::default()
        };
        Span(Some(Box::new(Open {
            record,
            tracer: tracer.clone(),
        })))
    }

    fn open(&mut self) -> Option<&mut SpanRecord> {
        self.0.as_mut().map(|o| &mut o.record)
    }

    /// The `traceparent` the backend gets: this trace, levee's span as parent, sampled.
    pub fn traceparent(&self) -> Encoded {
        let r = self.record();
        TraceParent {
            trace_id: r.trace_id,
            span_id: r.span_id,
            flags: 0x01,
        }
        .encode()
    }

    /// [`Span::traceparent`] as a header value.
    pub fn traceparent_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.traceparent().as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// The request was routed to `upstream` with priority `class`.
    pub fn routed(&mut self, upstream: &str, class: &'static str) {
        let Some(r) = self.open() else { return };
        r.upstream = Some(upstream.to_string());
        r.class = Some(class);
    }

    /// The request was shed for `reason` at `level`.
    pub fn shed(&mut self, reason: &'static str, level: &'static str) {
        let Some(r) = self.open() else { return };
        r.shed_reason = Some(reason);
        r.level = Some(level);
    }

    /// The request was admitted and served by `backend` (the last one, after
    /// `retries` moves), after waiting `queued`; the upstream was at `level`.
    pub fn served(&mut self, backend: &str, queued: Duration, retries: u32, level: &'static str) {
        let Some(r) = self.open() else { return };
        r.backend = Some(backend.to_string());
        r.queue_wait = Some(queued);
        r.retries = retries;
        r.level = Some(level);
    }

    /// Ends the span with the status the client was sent and hands it to the exporter
    /// (never waiting: a full queue drops it and counts the drop).
    pub fn end(mut self, status: u16) {
        self.finish(status);
    }

    fn finish(&mut self, status: u16) {
        let Some(open) = self.0.take() else { return };
        let Open { mut record, tracer } = *open;
        record.status = status;
        record.end_unix_nanos = unix_nanos().max(record.start_unix_nanos);
        tracer.submit(record);
    }

    /// What the span holds so far.
    pub fn record(&self) -> &SpanRecord {
        static ENDED: SpanRecord = SpanRecord {
            trace_id: [0; 16],
            span_id: [0; 8],
            parent_span_id: None,
            trace_state: None,
            method: String::new(),
            path: String::new(),
            status: 0,
            upstream: None,
            backend: None,
            class: None,
            level: None,
            queue_wait: None,
            retries: 0,
            shed_reason: None,
            start_unix_nanos: 0,
            end_unix_nanos: 0,
        };
        self.0.as_ref().map_or(&ENDED, |o| &o.record)
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        // Not ended: the request's future was dropped (the client left first).
        self.finish(0);
    }
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Span").field(self.record()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::context::hex;
    use prometheus::IntCounter;

    fn tracer() -> (Tracer, crate::trace::Queue, IntCounter) {
        let dropped = IntCounter::new("d", "d").unwrap();
        let (t, q) = Tracer::new(dropped.clone(), IntCounter::new("e", "e").unwrap());
        (t, q, dropped)
    }

    #[test]
    fn a_span_continues_its_parent_and_names_itself_to_the_backend() {
        let (t, mut q, _) = tracer();
        let parent =
            TraceParent::parse(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let mut s = Span::start(&t, Some(parent), Some(b"a=b"), "GET", "/x");
        let tp = s.traceparent();
        let r = s.record();
        assert_eq!(
            tp.as_str(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", hex(&r.span_id))
        );
        assert_ne!(r.span_id, parent.span_id);
        assert_eq!(s.traceparent_value().as_bytes(), tp.as_bytes());
        s.routed("app", "high");
        s.served("10.0.0.1:80", Duration::from_millis(3), 1, "caution");
        s.end(200);
        let got = q.try_recv_for_tests().expect("queued");
        assert_eq!(got.parent_span_id, Some(parent.span_id));
        assert_eq!(got.trace_state.as_deref(), Some("a=b"));
        assert_eq!(got.status, 200);
        assert_eq!(got.class, Some("high"));
        assert_eq!(got.retries, 1);
        assert!(got.end_unix_nanos >= got.start_unix_nanos);
        assert!(q.try_recv_for_tests().is_none(), "ended once");
    }

    #[test]
    fn a_span_dropped_unended_is_exported_without_a_status() {
        let (t, mut q, dropped) = tracer();
        let s = Span::start(&t, None, None, "POST", "/y");
        assert_eq!(s.record().parent_span_id, None);
        drop(s);
        let got = q.try_recv_for_tests().expect("queued");
        assert_eq!(got.status, 0);
        assert_eq!(got.method, "POST");
        assert_eq!(dropped.get(), 0);
    }
}
