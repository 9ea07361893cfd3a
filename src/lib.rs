//! levee: a connection-limiting, load-shedding HTTP reverse proxy on pingora.
//!
//! A request passes through [`proxy`] (pingora's `ProxyHttp` glue), is routed and
//! classified against the current [`state::Snapshot`], admitted by [`admission`]
//! (a backend slot, a bounded wait, or a 503), sent to the backend [`balance`] picked,
//! and releases its slot when its [`admission::Permit`] drops.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod balance;
pub mod config;
pub mod demo;
pub mod error;
pub mod fds;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod state;
pub mod stream;
