//! Sending a translated packet on: a FIB lookup gives the egress interface and the next
//! hop's MACs (the connection table caches them per flow direction); the packet is then
//! transmitted back out (XDP_TX) or redirected. When the FIB cannot give a complete answer
//! (no neighbour entry yet, no route, MTU, VLAN-tagged ingress), the translated packet goes
//! to the kernel, which forwards it itself.

use aya_ebpf::{
    EbpfContext as _,
    bindings::bpf_fib_lookup as FibParams,
    helpers::generated::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{
    Family,
    csum::CsumDelta,
    maps::{TX_F_REDIRECT, TX_F_TX},
    stats::{Reason, XDP_PASS, XDP_TX},
};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{frame::Frame as _, maps, parse::Packet};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;
const BPF_FIB_LKUP_RET_FRAG_NEEDED: i64 = 8;

/// A bpf_fib_lookup parameter block on an 8-byte boundary (see `forward`).
#[repr(C, align(8))]
struct AlignedFib(FibParams);

pub(crate) trait Zeroed {
    fn default_zeroed() -> Self;
}

impl Zeroed for FibParams {
    #[inline(always)]
    fn default_zeroed() -> Self {
        // SAFETY: an all-zero bpf_fib_lookup is a valid request template (plain integers
        // and unions of integers).
        unsafe { core::mem::zeroed() }
    }
}

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

    /// The outcome of a stage that stopped with `Err(reason)`: the policy's verdict.
    #[inline(always)]
    pub const fn of(result: Result<Self, Reason>) -> Self {
        match result {
            Ok(o) => o,
            Err(reason) => Self::new(reason.action(), reason),
        }
    }

    /// Packed into one register, for the non-inlined stages.
    ///
    /// Verifier: a BPF subprogram that returns a struct does so through a hidden pointer,
    /// and may exit with that stack pointer still in R0, which the verifier rejects
    /// ("cannot return stack pointer to the caller"). Subprograms return scalars only.
    #[inline(always)]
    pub const fn pack(self) -> u64 {
        ((self.action as u64) << 32) | self.reason.0 as u64
    }

    #[inline(always)]
    pub const fn unpack(v: u64) -> Self {
        Self {
            action: (v >> 32) as u32,
            reason: Reason(v as u32),
        }
    }
}

/// Where a translated packet leaves: egress interface and the MACs to write.
///
/// "None" is [`NextHop::NONE`] (ifindex 0), not an `Option`. Verifier: copying a `None`
/// copies its undefined payload, which LLVM emits as a store from a register it never
/// wrote, and the verifier rejects reading an uninitialised register.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    pub ifindex: u32,
    /// Destination then source MAC: the first 12 bytes of the Ethernet header to write,
    /// as 16-bit words (memory order), so that writing them is six stores.
    pub macs: [u16; 6],
}

/// The `ifindex` of [`NextHop::STACK`].
const STACK_IFINDEX: u32 = u32::MAX;

impl NextHop {
    pub const NONE: Self = Self {
        ifindex: 0,
        macs: [0; 6],
    };
    /// The packet's egress interface cannot take XDP-redirected frames: the kernel
    /// forwards it (cached like any next hop, so established packets skip the FIB too).
    pub const STACK: Self = Self {
        ifindex: STACK_IFINDEX,
        macs: [0; 6],
    };

    #[inline(always)]
    pub const fn is_some(&self) -> bool {
        self.ifindex != 0
    }
}

/// Asks the FIB where a translated packet goes. `Err` carries the reason the kernel must
/// forward it instead (the packet is then passed, translated).
#[inline(always)]
pub fn lookup(ctx: &XdpContext, pkt: &Packet) -> Result<NextHop, Reason> {
    let mut nh = NextHop::NONE;
    match fib_lookup(ctx, pkt, &mut nh) {
        0 => Ok(nh),
        reason => Err(Reason(reason)),
    }
}

/// The FIB lookup proper: fills `nh` and returns 0, or returns the pass reason.
///
/// Not inlined: it runs for new flows and once a second per established flow, and its
/// 64-byte parameter block gets a stack frame of its own. It returns a scalar (see
/// `Outcome::pack` for why subprograms do).
#[inline(never)]
fn fib_lookup(ctx: &XdpContext, pkt: &Packet, nh: &mut NextHop) -> u32 {
    if pkt.vlan {
        // The egress would need the tag of the VLAN device the FIB picks; the kernel's VLAN
        // device does that correctly, so tagged frames are handed to it after translation.
        return Reason::STACK_VLAN.0;
    }
    // Codegen: zeroing a plain bpf_fib_lookup (align 4) can become a memset call; 8-byte
    // alignment keeps it a few 8-byte stores.
    let mut params = AlignedFib(FibParams::default_zeroed());
    let fib = &mut params.0;
    fib.l4_protocol = pkt.proto().0;
    fib.sport = pkt.key.sport_be;
    fib.dport = pkt.key.dport_be;
    fib.__bindgen_anon_1.tot_len = pkt.ip_len;
    fib.ifindex = ctx.ingress_ifindex() as u32;
    if pkt.family() == Family::V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_3.ipv4_src = pkt.key.src.raw[0];
        fib.__bindgen_anon_4.ipv4_dst = pkt.key.dst.raw[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_3.ipv6_src = pkt.key.src.raw;
        fib.__bindgen_anon_4.ipv6_dst = pkt.key.dst.raw;
    }
    // SAFETY: ctx is the program's context and `fib` a valid, writable parameter block.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, size_of::<FibParams>() as i32, 0) };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => {
            let (d, s) = (fib.dmac, fib.smac);
            let word = |a: u8, b: u8| u16::from_ne_bytes([a, b]);
            *nh = NextHop {
                ifindex: fib.ifindex,
                macs: [
                    word(d[0], d[1]),
                    word(d[2], d[3]),
                    word(d[4], d[5]),
                    word(s[0], s[1]),
                    word(s[2], s[3]),
                    word(s[4], s[5]),
                ],
            };
            // Never blackhole: a redirect into an interface that cannot take XDP frames
            // (a pod's veth whose peer has neither NAPI nor an XDP program) is counted as a
            // redirect and silently dropped there. Only interfaces the agent vouches for
            // are sent to; the kernel forwards the rest.
            let how = if fib.ifindex == ctx.ingress_ifindex() as u32 {
                TX_F_TX
            } else {
                TX_F_REDIRECT
            };
            if !maps::takes_xdp_frames(fib.ifindex, how) {
                *nh = NextHop::STACK;
            }
            0
        }
        BPF_FIB_LKUP_RET_NO_NEIGH => Reason::STACK_NO_NEIGH.0,
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Reason::STACK_FRAG_NEEDED.0,
        _ => Reason::STACK_NO_ROUTE.0,
    }
}

/// Sends a translated packet to `nh`: TTL decrement, MAC rewrite, then XDP_TX (same
/// interface) or a redirect. `reason` is what the outcome counts.
#[inline(always)]
pub fn transmit(
    ctx: &XdpContext,
    pkt: &Packet,
    nh: &NextHop,
    reason: Reason,
) -> Result<Outcome, Reason> {
    if nh.ifindex == STACK_IFINDEX {
        // Translated, TTL untouched: the kernel's forwarding decrements it.
        return Ok(Outcome::new(XDP_PASS, Reason::STACK_NO_XDP_TARGET));
    }
    decrement_ttl(ctx, pkt)?;
    // Both MAC addresses as six 16-bit stores (the frame is 2-byte aligned).
    let macs: *mut [u16; 6] = ctx.at_mut(0).ok_or(Reason::MALFORMED_ETH)?;
    // SAFETY: bounds-checked by Frame::at_mut; the Ethernet header starts the frame.
    unsafe { *macs = nh.macs };
    if nh.ifindex == ctx.ingress_ifindex() as u32 {
        return Ok(Outcome::new(XDP_TX, reason));
    }
    // SAFETY: plain helper call; flags 0.
    let action = unsafe { bpf_redirect(nh.ifindex, 0) } as u32;
    Ok(Outcome::new(action, reason))
}

/// Routers decrement the TTL; the caller has made sure it is above 1.
#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, pkt: &Packet) -> Result<(), Reason> {
    if pkt.family() == Family::V4 {
        let ip: *mut Ipv4Hdr = ctx
            .at_mut(pkt.l3_off as usize)
            .ok_or(Reason::MALFORMED_IPV4)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut.
        let ip = unsafe { &mut *ip };
        // TTL and protocol form one 16-bit word of the checksummed header.
        let old = u16::from_ne_bytes([ip.ttl, ip.proto]);
        ip.ttl = ip.ttl.wrapping_sub(1);
        let new = u16::from_ne_bytes([ip.ttl, ip.proto]);
        ip.check = CsumDelta::new()
            .replace_u16(old, new)
            .apply(u16::from_ne_bytes(ip.check))
            .to_ne_bytes();
    } else {
        let ip: *mut Ipv6Hdr = ctx
            .at_mut(pkt.l3_off as usize)
            .ok_or(Reason::MALFORMED_IPV6)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut. No IPv6 header checksum.
        unsafe { (*ip).hop_limit = (*ip).hop_limit.wrapping_sub(1) };
    }
    Ok(())
}
