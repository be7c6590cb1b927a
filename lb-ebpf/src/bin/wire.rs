//! An XDP program that passes every frame, for the lab's wire (`tests/src/cluster.rs`):
//! attached to the underlay side of each node's veth, it gives that end NAPI, as a NIC's
//! driver has, so that XDP frames the node sends (XDP_TX, redirects) are received at
//! once. No maps: iproute2 loads it (`ip link set dev X xdp obj wire sec xdp`).
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};

#[xdp]
pub fn wire(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
