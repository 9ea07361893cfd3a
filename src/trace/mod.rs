//! Distributed tracing: one OTLP SERVER span per sampled request, with W3C trace
//! context continued from the caller and passed on to the backend.
//!
//! The request path calls a narrow interface, each call one branch when the request
//! is not traced:
//! - [`Tracer::start`] (or [`Tracer::start_from`] with an [`Incoming`] read from raw
//!   header bytes): the sampling decision; `Some(Span)` only for a sampled request;
//! - [`Span::traceparent`]: the value the backend's `traceparent` gets (levee's span as
//!   parent), in a fixed buffer;
//! - [`Span::routed`], [`Span::shed`], [`Span::served`], then [`Span::end`], which hands
//!   the finished record to the bounded, batched exporter ([`export`]) and never waits.
//!
//! Why not the OpenTelemetry SDK: its batch span processor runs its own background
//! thread or needs a runtime it can spawn on at will, and its `Tracer`/`Context`
//! machinery allocates per span and keeps context in thread-locals; levee serves on
//! one current-thread runtime per worker and wants an unsampled request to cost one
//! branch. So levee uses the official protobuf types (`opentelemetry-proto`) and its
//! own small exporter on levee's runtime.

pub mod context;
pub mod export;
pub mod span;
pub mod wire;

pub use context::{
    Incoming, Sampler, TraceParent, TRACEPARENT, TRACEPARENT_NAME, TRACESTATE, TRACESTATE_NAME,
};
pub use export::{Queue, Tracer};
pub use span::{Span, SpanRecord};
