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
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::generated::bpf_csum_diff,
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
};

const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;

/// Handles one packet a pod sent.
#[inline(always)]
pub fn from_pod(ctx: &TcContext) -> i32 {
    // The headers must be in the linear part for direct access; pulling more than the
    // packet holds fails, hence the bound.
    let _ = ctx.pull_data(ctx.len().min(MAX_OFFSET as u32));
    let mut pkt = Packet::EMPTY;
    if parse::parse_into(ctx, &mut pkt) != u32::MAX {
        // Not TCP/UDP, or nothing the pipeline parses: not ours.
        return TC_ACT_OK;
    }
    let counters = Counters::get();
    if pkt.icmp_unreachable {
        passive::unreachable(&counters, &pkt.key);
        return TC_ACT_OK;
    }
    let key = pkt.key;
    let Some(entry) = conntrack::lookup(&key) else {
        return TC_ACT_OK;
    };
    if !entry.is_reply() {
        return TC_ACT_OK;
    }
    if pkt.has_tcp_flag(TCP_RST) && passive::refused(&counters, &key, entry) != 0 {
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
    conntrack::refresh_reply(&key, entry, &pkt, conntrack::now(), &NextHop::NONE);
    stats::backend(backend_id, pkt.ip_len, false, true);
    counters.event(Event::POD_REPLY);
    TC_ACT_OK
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
