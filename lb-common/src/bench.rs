//! Names and the configuration of the benchmark object (`lb-ebpf/src/bin/bench.rs`), which
//! `cargo xtask bench` loads beside the datapath. The agent never loads it.

use bytemuck::{Pod, Zeroable};

/// The floors: a program that only returns XDP_PASS, and one that parses Ethernet/IP/L4
/// with the datapath's own parser and returns XDP_TX.
pub const PROG_PASS: &str = "bench_pass";
pub const PROG_PARSE_TX: &str = "bench_parse_tx";
/// Restores the frame from the template (and rotates its source port if configured), then
/// tail-calls the program in `NEXT` slot 0.
pub const PROG_PREP: &str = "bench_prep";
/// Live-frames traffic generator: rotates the source port, then XDP_TX.
pub const PROG_GEN: &str = "bench_gen";
/// Backend-side sink: counts and drops.
pub const PROG_SINK: &str = "bench_sink";

pub const MAP_CONFIG: &str = "BENCH_CONFIG";
pub const MAP_TEMPLATE: &str = "BENCH_TEMPLATE";
pub const MAP_NEXT: &str = "BENCH_NEXT";
pub const MAP_COUNT: &str = "BENCH_COUNT";

/// Bytes of the frame the prep program restores from the template.
pub const TEMPLATE_LEN: usize = 80;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BenchConfig {
    /// Offset of the L4 source port in the frame.
    pub sport_offset: u32,
    /// Source ports to rotate over (0: do not rotate). The port is `base + n % flows`.
    pub flows: u32,
    pub sport_base: u32,
    pub _pad: u32,
}
crate::pod!(BenchConfig);
const _: () = assert!(core::mem::size_of::<BenchConfig>() == 16);
