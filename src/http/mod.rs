//! What both protocols share on the data path: client connections ([`server`]; HTTP/1.1
//! itself is [`crate::http1`], HTTP/2 is hyper) over levee's socket type ([`io`]),
//! framing rules ([`validate`]), one request top to bottom ([`forward`]),
//! its hold on a backend ([`exchange`]), the request body ([`upload`]) and the
//! response body ([`body`]), levee's own answers ([`respond`]) and the per-backend
//! connection pool ([`pool`]).

pub mod body;
pub mod exchange;
pub mod forward;
pub mod identity;
pub mod io;
pub mod pool;
pub mod respond;
pub mod server;
pub mod upload;
pub mod validate;
