//! One admitted request's hold on a backend, from admission to the backend's end of
//! stream: its slot ([`Permit`]), its backend connection, and what gets recorded when
//! it ends. [`Exchange::finish`] runs exactly once, at the backend's end of stream, on
//! an error, or when the exchange is dropped (the client left): the slot goes back, the
//! connection goes back to the pool only after a clean end, and the outcome reaches the
//! metrics, the passive health check and the access log.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::admission::Permit;
use crate::config::Class;
use crate::error::Failure;
use crate::trace::Span;

use super::pool::BackendConn;

/// What the access log says of a request (kept only when the log is on).
pub struct AccessLog {
    /// The client: the peer, or from a trusted forwarder the address it names.
    pub client: IpAddr,
    pub request_id: http::HeaderValue,
    pub method: http::Method,
    pub path: String,
    pub class: Class,
    pub upstream: Option<String>,
    pub started: Instant,
    /// Shadow mode: the shed reason enforcing would have given (`would_shed`).
    pub would_shed: Option<&'static str>,
}

impl AccessLog {
    /// One line at info, target `levee::access`.
    pub fn write(
        &self,
        status: u16,
        outcome: &str,
        backend: Option<&str>,
        queued: Option<Duration>,
        error: Option<Failure>,
    ) {
        tracing::info!(
            target: "levee::access",
            client = %self.client,
            request_id = self.request_id.to_str().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            status,
            upstream = self.upstream.as_deref(),
            backend,
            class = self.class.as_str(),
            outcome,
            queued_ms = queued.map(|q| q.as_secs_f64() * 1000.0),
            ms = self.started.elapsed().as_secs_f64() * 1000.0,
            error = error.map(|e| e.status_and_label().1),
            would_shed = self.would_shed,
            "request"
        );
    }
}

/// An admitted request's slot and connection, released once.
pub struct Exchange {
    permit: Option<Permit>,
    admitted_at: Instant,
    /// The status the client was sent.
    pub status: u16,
    /// The backend's status, 0 before its response head arrived.
    pub backend_status: u16,
    conn: Option<BackendConn>,
    log: Option<Box<AccessLog>>,
    /// When the request last went to its backend: a clean end records the latency
    /// from then for the backend's adaptive limit. `None` without `[upstream.adaptive]`
    /// (no clock read), and for streams and upgrades, whose length says nothing of the
    /// backend's load.
    sent_at: Option<Instant>,
    /// The request's span when it is traced; ends with the exchange.
    span: Option<Span>,
    /// Times the request moved to another backend.
    retries: u32,
}

impl Exchange {
    pub fn new(permit: Permit, log: Option<Box<AccessLog>>) -> Exchange {
        Exchange {
            permit: Some(permit),
            admitted_at: Instant::now(),
            status: 0,
            backend_status: 0,
            conn: None,
            log,
            sent_at: None,
            span: None,
            retries: 0,
        }
    }

    /// Traces this exchange: `span` ends when it does, with its backend, queue wait,
    /// retries and status.
    pub fn trace(&mut self, span: Span) {
        self.span = Some(span);
    }

    /// The request goes to its backend now (again after a retry, to another one).
    pub fn mark_sent(&mut self) {
        self.sent_at = Some(Instant::now());
    }

    /// The response is a stream or an upgrade: its length is not a latency.
    pub fn unmeasured(&mut self) {
        self.sent_at = None;
    }

    pub fn permit(&self) -> Option<&Permit> {
        self.permit.as_ref()
    }

    /// Moves the request to another backend's slot (a retry); the old slot is released
    /// without counting an outcome (the caller has counted it).
    pub fn replace_permit(&mut self, mut permit: Permit) {
        if let Some(old) = self.permit.as_mut() {
            permit.inherit(old);
        }
        self.permit = Some(permit);
        self.retries += 1;
    }

    pub fn admitted_at(&self) -> Instant {
        self.admitted_at
    }

    /// Keeps the backend connection, to go back to its pool after a clean end.
    pub fn hold_connection(&mut self, conn: BackendConn) {
        self.conn = Some(conn);
    }

    /// Records the outcome and frees the slot. `None`: the backend's response ended
    /// cleanly. Only the first call counts.
    pub fn finish(&mut self, failure: Option<Failure>) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let conn = self.conn.take();
        let upstream = permit.upstream();
        let backend = permit.backend();
        if let Some(conn) = conn {
            if failure.is_none() {
                conn.pool().clone().checkin(conn, backend.max_inflight());
            }
        }
        let elapsed = self.admitted_at.elapsed();
        let failed_backend = failure.is_some_and(Failure::is_backend_failure);
        if let (Some(sent), Some(_)) = (self.sent_at, upstream.adaptive) {
            // Clean ends below 5xx, and timeouts (the backend took at least that long);
            // not connect failures, errors, nor a client that left first.
            let measured = match failure {
                None => self.backend_status < 500,
                Some(f) => f == Failure::UpstreamTimeout,
            };
            if measured {
                backend.adaptive.record(sent.elapsed());
            }
        }
        let failed = failed_backend || self.status >= 500;
        upstream.window.record(elapsed, failed);
        upstream.metrics.duration.observe(elapsed.as_secs_f64());
        let client_gone = failure == Some(Failure::ClientGone);
        let code_class = if failed_backend {
            0
        } else if self.backend_status == 0 && client_gone {
            6
        } else {
            (self.status / 100).min(5) as usize
        };
        backend.metrics.responses[code_class].inc();
        let backend_5xx = self.backend_status >= 500 && upstream.health.eject_on_5xx;
        if !client_gone {
            upstream.record_outcome(permit.backend_index(), failed_backend || backend_5xx);
        }
        if failure.is_some_and(Failure::is_backend_timeout) {
            backend.metrics.timeouts.inc();
        }
        if let Some(log) = self.log.take() {
            let outcome = match failure {
                Some(f) => f.status_and_label().1,
                None => "proxied",
            };
            log.write(
                self.status,
                outcome,
                Some(backend.label.as_str()),
                Some(permit.queued),
                failure,
            );
        }
        if let Some(mut span) = self.span.take() {
            let level = upstream.level_state.get().as_str();
            span.served(&backend.label, permit.queued, self.retries, level);
            span.end(self.status);
        }
        drop(permit);
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // Dropped before the backend's end of stream: the client left (or hyper gave
        // up on writing to it).
        self.finish(Some(Failure::ClientGone));
    }
}
