//! HTTP/1.1 on levee's own codec (no hyper here): heads parsed with `httparse`
//! ([`parse`]), body framing ([`framing`]), and backend connections ([`client`]).

pub mod client;
pub mod conn;
pub mod framing;
pub mod parse;
pub mod rewrite;
