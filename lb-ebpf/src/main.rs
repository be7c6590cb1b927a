//! The xlb datapath's programs: entry points, panic handler and license only.
//! - `xlb` (XDP): the node's devices, for traffic from outside the node;
//! - `xlb_from_pod` (tc ingress): local pods' interfaces, for their replies;
//! - `xlb_connect4` ... `xlb_getpeername6` (cgroup sock_addr): what starts on the node.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb_ebpf::sock;

/// Attached to the node's devices: Service traffic from outside the node, and replies.
#[xdp]
pub fn xlb(ctx: XdpContext) -> u32 {
    lb_ebpf::pipeline::run(&ctx)
}

/// Attached (tcx ingress) to every local pod's host-side interface.
#[classifier]
pub fn xlb_from_pod(ctx: TcContext) -> i32 {
    lb_ebpf::pod::from_pod(&ctx)
}

#[cgroup_sock_addr(connect4)]
pub fn xlb_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn xlb_connect6(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn xlb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn xlb_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn xlb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, false)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn xlb_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, true)
}

#[cgroup_sock_addr(getpeername4)]
pub fn xlb_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, false)
}

#[cgroup_sock_addr(getpeername6)]
pub fn xlb_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx, true)
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
