//! xlb: the XDP datapath, one concern per module. The entry point is in `main.rs`; the
//! pipeline in [`pipeline`]. A library so that the benchmark object (`bin/bench.rs`) can
//! reuse the parser without carrying the datapath's maps.
#![cfg_attr(not(test), no_std)]

pub mod config;
pub mod conntrack;
pub mod frame;
pub mod fwd;
pub mod icmp;
pub mod maps;
pub mod nat;
pub mod parse;
pub mod passive;
pub mod pipeline;
pub mod pod;
pub mod select;
pub mod sock;
pub mod stats;
pub mod trust;
