//! The xlb XDP program: entry point, panic handler and license only.
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// Attached to every interface of the node that carries Service traffic.
#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    lb_ebpf::pipeline::run(&ctx)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: every index is bounds-checked before use.
    loop {}
}

/// GPL-compatible: bpf_fib_lookup and bpf_ktime_get_coarse_ns are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
