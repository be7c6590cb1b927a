//! Sending a translated packet on: a FIB lookup gives the egress interface and the next
//! hop's MAC; the packet is then transmitted back out (XDP_TX) or redirected. When the FIB
//! cannot give a complete answer (no neighbour entry yet, no route, MTU, VLAN-tagged
//! ingress), the translated packet goes to the kernel, which forwards it itself.

use aya_ebpf::{
    bindings::bpf_fib_lookup as FibParams,
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext as _,
};
use lb_common::{
    Family,
    csum::CsumDelta,
    stats::{Reason, XDP_PASS, XDP_TX},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{frame::Frame as _, parse::Packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// The verdict for a packet and why it got it.
pub struct Outcome {
    pub action: u32,
    pub reason: Reason,
}

impl Outcome {
    #[inline(always)]
    pub const fn new(action: u32, reason: Reason) -> Self {
        Self { action, reason }
    }
}

/// Forwards a translated packet; `reason` is what to count when it leaves directly.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Packet, reason: Reason) -> Result<Outcome, Reason> {
    if pkt.vlan {
        // The egress would need the tag of the VLAN device the FIB picks; the kernel's VLAN
        // device does that correctly, so tagged frames are handed to it after translation.
        return Ok(Outcome::new(XDP_PASS, Reason::STACK_VLAN));
    }
    let ingress = ctx.ingress_ifindex() as u32;
    // SAFETY: an all-zero bpf_fib_lookup is a valid request template.
    let mut fib: FibParams = unsafe { core::mem::zeroed() };
    fib.l4_protocol = pkt.proto.0;
    fib.sport = pkt.sport_be;
    fib.dport = pkt.dport_be;
    fib.__bindgen_anon_1.tot_len = pkt.ip_len;
    fib.ifindex = ingress;
    if pkt.family == Family::V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = pkt.src.raw[0];
        fib.__bindgen_anon_4.ipv4_dst = pkt.dst.raw[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = pkt.src.raw;
        fib.__bindgen_anon_4.ipv6_dst = pkt.dst.raw;
    }
    // SAFETY: ctx is the program's context and `fib` a valid, writable parameter block.
    let rc = unsafe {
        bpf_fib_lookup(ctx.as_ptr(), &mut fib, size_of::<FibParams>() as i32, 0)
    };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => return Ok(Outcome::new(XDP_PASS, Reason::STACK_NO_NEIGH)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => {
            return Ok(Outcome::new(XDP_PASS, Reason::STACK_FRAG_NEEDED));
        }
        _ => return Ok(Outcome::new(XDP_PASS, Reason::STACK_NO_ROUTE)),
    }

    decrement_ttl(ctx, pkt)?;
    let eth: *mut EthHdr = ctx.at_mut(0).ok_or(Reason::MALFORMED_ETH)?;
    // SAFETY: bounds-checked by Frame::at_mut.
    unsafe {
        (*eth).dst_addr = fib.dmac;
        (*eth).src_addr = fib.smac;
    }
    if fib.ifindex == ingress {
        return Ok(Outcome::new(XDP_TX, reason));
    }
    // SAFETY: plain helper call; flags 0.
    let action = unsafe { bpf_redirect(fib.ifindex, 0) } as u32;
    Ok(Outcome::new(action, reason))
}

/// Routers decrement the TTL; the caller has made sure it is above 1.
#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, pkt: &Packet) -> Result<(), Reason> {
    if pkt.family == Family::V4 {
        let ip: *mut Ipv4Hdr = ctx.at_mut(pkt.l3_off).ok_or(Reason::MALFORMED_IPV4)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut.
        let ip = unsafe { &mut *ip };
        // TTL and protocol form one 16-bit word of the checksummed header.
        let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
        ip.ttl = ip.ttl.wrapping_sub(1);
        let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
        ip.check = CsumDelta::new().replace_u16(old, new).apply(u16::from_ne_bytes(ip.check)).to_ne_bytes();
    } else {
        let ip: *mut Ipv6Hdr = ctx.at_mut(pkt.l3_off).ok_or(Reason::MALFORMED_IPV6)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut. No IPv6 header checksum.
        unsafe { (*ip).hop_limit = (*ip).hop_limit.wrapping_sub(1) };
    }
    Ok(())
}
