//! What local pods send, seen by a tc (tcx) ingress program on each pod's host-side
//! interface: replies of backends that are pods of this node to flows the XDP program
//! translated (an external client to a NodePort, a load-balancer or an external IP), and
//! their passive-health signals.
//!
//! Why tc and not XDP here: a pod's veth, as a CNI leaves it, has TX checksum offload
//! on, so the pod's TCP/UDP leave with a partial checksum (pseudo-header only) that XDP
//! cannot see; tc sees the socket buffer, and the kernel's checksum helpers
//! (`bpf_l3/l4_csum_replace`, `BPF_F_PSEUDO_HDR`) are right for both checksum states.
//! And a veth whose peer has no XDP program and no GRO would need one just to run XDP.
//!
//! Everything else a pod sends (its own connections to Services included: the socket
//! programs translated them already) passes untouched: `TC_ACT_OK` (no classification).

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LOOKUP_SKIP_NEIGH,
        bpf_fib_lookup as FibParams,
    },
    helpers::generated::{bpf_csum_diff, bpf_fib_lookup, bpf_redirect_neigh},
    programs::TcContext,
};
use lb_common::{Addr, Family, Proto, stats::Event};

use crate::{
    conntrack,
    frame::MAX_OFFSET,
    fwd::NextHop,
    parse::{self, Packet, TCP_RST},
    passive,
    stats::{self, Counters},
    trust,
};

const TC_ACT_OK: i32 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const TC_ACT_SHOT: i32 = 2;

/// Handles one packet a pod sent.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    let mut pkt = Packet::EMPTY;
    if parse::parse_into(ctx, &mut pkt) != u32::MAX {
        // The parser reads the linear part only. A socket's packets carry their headers
        // there already, so the pull (which copies, and may reallocate the head) happens
        // only when the headers did not parse and the packet has more than its linear
        // part; pulling more than the packet holds fails, hence the bound.
        let linear = ctx.data_end().saturating_sub(ctx.data()) as u32;
        if linear >= ctx.len() || ctx.pull_data(ctx.len().min(MAX_OFFSET as u32)).is_err() {
            return TC_ACT_OK;
        }
        pkt = Packet::EMPTY;
        if parse::parse_into(ctx, &mut pkt) != u32::MAX {
            // Not TCP/UDP, or nothing the pipeline parses: not ours.
            return TC_ACT_OK;
        }
    }
    let counters = Counters::get();
    if pkt.icmp_unreachable {
        passive::unreachable(ctx, &counters, &pkt);
        return TC_ACT_OK;
    }
    let key = pkt.key;
    let Some(entry) = conntrack::lookup(&key) else {
        return TC_ACT_OK;
    };
    if !entry.is_reply() {
        return TC_ACT_OK;
    }
    if pkt.has_tcp_flag(TCP_RST) && passive::refused(ctx, &counters, &key, entry, &pkt) != 0 {
        return TC_ACT_SHOT;
    }
    let (vip, vip_port, backend_id) = {
        let e = entry.value();
        (e.nat_addr, e.nat_port_be, e.backend_id)
    };
    if rewrite_source(ctx, &pkt, &vip, vip_port).is_err() {
        // A packet the helpers refuse (too short, cloned and unwritable): as it is.
        return TC_ACT_OK;
    }
    let trusted =
        !conntrack::closes(&pkt) || trust::via_backend_interface(ctx, &key.src, key.family);
    conntrack::refresh_reply(&key, entry, &pkt, conntrack::now(), &NextHop::NONE, trusted);
    stats::backend(backend_id, pkt.ip_len, false, true);
    counters.event(Event::POD_REPLY);
    pkt.key.src = vip;
    pkt.key.sport_be = vip_port;
    send_on(ctx, &pkt)
}

/// Sends a translated reply straight to its egress interface.
///
/// Why not back through the kernel's routing: the reply's source is now the VIP, which
/// for a NodePort is this node's own address, and a packet arriving on an interface with
/// a local source address is dropped as martian. So it is routed here (FIB, the
/// neighbour resolved by `bpf_redirect_neigh`), as a forwarding router would: TTL
/// decremented. When the FIB has no answer, or the TTL would expire, the kernel decides.
#[inline(never)]
fn send_on(ctx: &TcContext, pkt: &Packet) -> i32 {
    if pkt.ttl <= 1 {
        return TC_ACT_OK;
    }
    // SAFETY: an all-zero bpf_fib_lookup is a valid request template (integers and
    // unions of integers).
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.l4_protocol = pkt.proto().0;
    fib.sport = pkt.key.sport_be;
    fib.dport = pkt.key.dport_be;
    fib.__bindgen_anon_1.tot_len = pkt.ip_len;
    // SAFETY: the context the kernel passed.
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let l3 = pkt.l3_off as usize;
    if pkt.family() == Family::V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = pkt.key.src.raw[0];
        fib.__bindgen_anon_4.ipv4_dst = pkt.key.dst.raw[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = pkt.key.src.raw;
        fib.__bindgen_anon_4.ipv6_dst = pkt.key.dst.raw;
    }
    // SAFETY: the program's context and a valid, writable parameter block.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.skb.skb as *mut _,
            &mut fib,
            size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    if rc != 0 {
        return TC_ACT_OK;
    }
    let ttl_ok = if pkt.family() == Family::V4 {
        // TTL and protocol form one 16-bit word of the checksummed header.
        let old = u16::from_ne_bytes([pkt.ttl, pkt.proto().0]);
        let new = u16::from_ne_bytes([pkt.ttl - 1, pkt.proto().0]);
        ctx.store(l3 + 8, &new, 0).is_ok()
            && ctx
                .l3_csum_replace(l3 + 10, old as u64, new as u64, 2)
                .is_ok()
    } else {
        ctx.store(l3 + 7, &(pkt.ttl - 1), 0).is_ok()
    };
    if !ttl_ok {
        return TC_ACT_OK;
    }
    // SAFETY: plain helper: no parameters block (the kernel resolves the neighbour).
    unsafe { bpf_redirect_neigh(fib.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Rewrites the source address and port (a reply's source back to the VIP), fixing the
/// IPv4 header checksum and the TCP/UDP checksum whatever its state (complete, or
/// partial with the pseudo-header only).
#[inline(always)]
fn rewrite_source(ctx: &TcContext, pkt: &Packet, addr: &Addr, port_be: u16) -> Result<(), i64> {
    let l3 = pkt.l3_off as usize;
    let l4 = pkt.l4_off as usize;
    let tcp = pkt.proto() == Proto::TCP;
    let check = l4 + if tcp { 16 } else { 6 };
    // A UDP checksum of zero (IPv4: none) stays zero; a computed zero becomes 0xffff.
    let mangled = if tcp { 0 } else { BPF_F_MARK_MANGLED_0 as u64 };
    let pseudo = BPF_F_PSEUDO_HDR as u64;
    if pkt.family() == Family::V4 {
        let (old, new) = (pkt.key.src.raw[0], addr.raw[0]);
        ctx.store(l3 + 12, &new, 0)?;
        ctx.l3_csum_replace(l3 + 10, old as u64, new as u64, 4)?;
        ctx.l4_csum_replace(check, old as u64, new as u64, pseudo | mangled | 4)?;
    } else {
        let mut old = pkt.key.src.raw;
        let mut new = addr.raw;
        ctx.store(l3 + 8, &new, 0)?;
        // SAFETY: two 16-byte buffers on the stack; the helper only reads them.
        let diff = unsafe { bpf_csum_diff(old.as_mut_ptr(), 16, new.as_mut_ptr(), 16, 0) };
        ctx.l4_csum_replace(check, 0, diff as u64, pseudo | mangled)?;
    }
    ctx.store(l4, &port_be, 0)?;
    ctx.l4_csum_replace(check, pkt.key.sport_be as u64, port_be as u64, mangled | 2)?;
    Ok(())
}
