//! Programs for `cargo xtask bench`, in an object of their own (the agent never loads it):
//! the two floors the datapath is compared with, a per-run frame preparation for
//! BPF_PROG_TEST_RUN measurements, a live-frames traffic generator and a sink.
#![no_std]
#![no_main]

use aya_ebpf::{
    btf_maps::{Array, PerCpuArray, ProgramArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{
    bench::{BenchConfig, TEMPLATE_LEN},
    stats::{XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX},
};
use lb_ebpf::{frame::Frame as _, parse};

#[btf_map]
static BENCH_CONFIG: Array<BenchConfig, 1> = Array::new();
#[btf_map]
static BENCH_TEMPLATE: Array<[u8; TEMPLATE_LEN], 1> = Array::new();
#[btf_map]
static BENCH_NEXT: ProgramArray<1> = ProgramArray::new();
/// Per-CPU: [0] rotation counter of prep/gen, [1] packets seen by the sink.
#[btf_map]
static BENCH_COUNT: PerCpuArray<u64, 2> = PerCpuArray::new();

/// Floor: the cheapest XDP program there is.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Floor: the datapath's own parser (Ethernet, VLAN, IPv4/IPv6, TCP/UDP), inlined, then
/// XDP_TX.
#[xdp]
pub fn bench_parse_tx(ctx: XdpContext) -> u32 {
    let mut p = parse::Packet::EMPTY;
    match parse::parse_headers(&ctx, &mut p) {
        // Fold the parsed fields into the verdict so the parse cannot be optimised away.
        Ok(())
            if (p.key.sport_be ^ p.key.dport_be) as u32 ^ p.key.src.raw[0] ^ p.key.dst.raw[3]
                != 0x5eed_f00d =>
        {
            XDP_TX
        }
        Ok(()) => XDP_PASS,
        Err(_) => XDP_DROP,
    }
}

/// The next value of this CPU's rotation counter.
#[inline(always)]
fn next_count() -> u64 {
    match BENCH_COUNT.get_ptr_mut(0) {
        // SAFETY: per-CPU slot returned by the map.
        Some(c) => unsafe {
            *c += 1;
            *c
        },
        None => 0,
    }
}

/// Writes the rotating source port, if configured.
#[inline(always)]
fn rotate(ctx: &XdpContext, cfg: &BenchConfig) {
    if cfg.flows == 0 || cfg.sport_offset > 128 {
        return;
    }
    let port = (cfg.sport_base + (next_count() % cfg.flows as u64) as u32) as u16;
    if let Some(p) = ctx.at_mut::<[u8; 2]>(cfg.sport_offset as usize) {
        // SAFETY: bounds-checked by Frame::at_mut.
        unsafe { *p = port.to_be_bytes() };
    }
}

/// Restores the frame's first bytes from the template and gives it the next source port
/// of the configured range. Returns false if the frame is shorter than the template.
#[inline(always)]
fn restore(ctx: &XdpContext) -> bool {
    let (Some(tpl), Some(cfg)) = (BENCH_TEMPLATE.get(0), BENCH_CONFIG.get(0)) else {
        return false;
    };
    let Some(frame) = ctx.at_mut::<[u64; TEMPLATE_LEN / 8]>(0) else {
        return false;
    };
    let words = tpl as *const [u8; TEMPLATE_LEN] as *const [u64; TEMPLATE_LEN / 8];
    // Word by word: a whole-array assignment goes through an 80-byte stack temporary,
    // which exceeds the BPF stack together with the rest.
    for i in 0..TEMPLATE_LEN / 8 {
        // SAFETY: bounds-checked by Frame::at_mut; the template is a map value of that
        // size, 8-byte aligned as every map value.
        unsafe { (*frame)[i] = (*words)[i] };
    }
    rotate(ctx, cfg);
    true
}

/// BPF_PROG_TEST_RUN reuses the frame across repeats, rewritten by the previous run. This
/// restores it from the template (optionally with a new source port, so that every run is
/// a new flow) and tail-calls the program under test. Its own cost is measured by
/// tail-calling `bench_pass` and subtracted.
#[xdp]
pub fn bench_prep(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return XDP_ABORTED;
    }
    // SAFETY: a tail call; on failure control returns here.
    unsafe { BENCH_NEXT.tail_call(&ctx, 0) };
    XDP_ABORTED
}

/// Live-frames generator (xdp-trafficgen's technique). The kernel recycles the frames'
/// pages without copying the frame again, and whoever forwarded a frame has rewritten its
/// headers in place (MACs, TTL, NAT), so every frame is restored from the template first;
/// then it leaves with the next source port of the configured range.
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    if !restore(&ctx) {
        return XDP_ABORTED;
    }
    XDP_TX
}

/// Sink for the backends of the throughput benchmark: counts and drops.
#[xdp]
pub fn bench_sink(_ctx: XdpContext) -> u32 {
    if let Some(c) = BENCH_COUNT.get_ptr_mut(1) {
        // SAFETY: per-CPU slot returned by the map.
        unsafe { *c += 1 };
    }
    XDP_DROP
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
