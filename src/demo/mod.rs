//! `levee demo`: embedded replicas in two zones, the proxy in front, and an open-loop
//! load generator, for a first look at shedding.

pub mod load;
pub mod replica;
