//! Limits that find themselves: each backend's limit in force moves between
//! `adaptive.min_inflight` and its `max_inflight` ([`adaptive`]), fed by the latency of
//! its own responses and, when it sends them, its own load reports ([`orca`]).
//!
//! No I/O here: the request path records samples into atomics
//! ([`adaptive::AdaptiveLimit::record`]), the upstream's control tick
//! ([`crate::state::Upstream::tick`]) runs the controller and publishes the limit, and
//! [`crate::state::Upstream::refresh_health`] composes it with slow start (the lower of
//! the two is in force).

pub mod adaptive;
pub mod orca;
