//! The data path on hyper: client connections ([`server`]) over levee's socket type
//! ([`io`]), framing rules ([`validate`]), one request top to bottom ([`forward`]),
//! its hold on a backend ([`exchange`]), the bodies both ways ([`body`]), levee's own
//! answers ([`respond`]) and the per-backend connection pool ([`pool`]).

pub mod body;
pub mod exchange;
pub mod forward;
pub mod io;
pub mod pool;
pub mod respond;
pub mod server;
pub mod validate;
