//! levee: a connection-limiting, load-shedding HTTP reverse proxy.
//!
//! A connection is accepted by [`listen`] and served by [`http::server`] (HTTP/1.1 on
//! levee's own codec, [`http1`]; HTTP/2 on hyper); each
//! request passes through [`http::forward`]: it is routed and classified against the
//! current [`state::Snapshot`], admitted by [`admission`] (a backend slot, a bounded
//! wait, or a 503), sent to the backend [`balance`] picked over a pooled connection,
//! and releases its slot when its [`admission::Permit`] drops at the backend's end of
//! stream.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod admin;
pub mod admission;
pub mod alloc;
pub mod app;
pub mod balance;
pub mod clock;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod error;
pub mod fds;
pub mod handover;
pub mod hash;
pub mod health;
pub mod http;
pub mod http1;
pub mod limits;
pub mod listen;
pub mod metrics;
pub mod proxy_protocol;
pub mod route;
pub mod scaling;
pub mod state;
pub mod tls;
pub mod trace;
pub mod workers;
