//! Load benchmark: levee against HAProxy, nginx and a direct connection (written next).
fn main() {}
