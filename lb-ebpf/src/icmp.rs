//! ICMP errors about TCP/UDP flows, parsed: today, a destination unreachable sent by the
//! host its quoted packet was addressed to (passive health). The quoted packet's tuple
//! becomes the tuple of a reply to it, i.e. the key of the reply entry of the flow the
//! error is about.

use core::ptr::addr_of;

use lb_common::{Addr, Family, Proto, stats::Reason};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    frame::{Frame, load_addr6, load_u16, load_u32},
    parse::{MAX_L4_OFFSET, Packet},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMPV6_DEST_UNREACH: u8 = 1;
/// Bytes of an ICMP header before the quoted packet.
const ICMP_HDR_LEN: usize = 8;

/// An ICMP destination unreachable (any code) about a TCP/UDP packet, sent by that
/// packet's destination (`from`): fills `pkt.key` with the tuple of a reply to it. Any
/// other ICMP message, or one cut short, is passed as it always was (`NOT_TCP_UDP`).
#[inline(always)]
pub(crate) fn parse_icmp4(
    ctx: &impl Frame,
    off: usize,
    from: u32,
    pkt: &mut Packet,
) -> Result<(), Reason> {
    // Verifier: IPv4 header at most 60 bytes after at most 18 of L2; bounds every offset.
    if off > MAX_L4_OFFSET {
        return Err(Reason::NOT_TCP_UDP);
    }
    let icmp: *const [u8; ICMP_HDR_LEN] = ctx.at(off).ok_or(Reason::NOT_TCP_UDP)?;
    // SAFETY: bounds-checked by Frame::at.
    if unsafe { (*icmp)[0] } != ICMP_DEST_UNREACH {
        return Err(Reason::NOT_TCP_UDP);
    }
    let inner_off = off + ICMP_HDR_LEN;
    let inner: *const Ipv4Hdr = ctx.at(inner_off).ok_or(Reason::NOT_TCP_UDP)?;
    // SAFETY: the quoted packet's fixed header was bounds-checked by Frame::at.
    let inner = unsafe { &*inner };
    let ihl = ((inner.vihl & 0x0f) as usize) * 4;
    if inner.vihl >> 4 != 4
        || ihl < Ipv4Hdr::LEN
        || (inner.proto != Proto::TCP.0 && inner.proto != Proto::UDP.0)
    {
        return Err(Reason::NOT_TCP_UDP);
    }
    // SAFETY: inside the checked header.
    let (src, dst) = unsafe {
        (
            load_u32(addr_of!(inner.src_addr)),
            load_u32(addr_of!(inner.dst_addr)),
        )
    };
    if dst != from {
        return Err(Reason::NOT_TCP_UDP);
    }
    pkt.key.family = Family::V4;
    pkt.key.proto = Proto(inner.proto);
    pkt.key._pad = [0; 2];
    pkt.key.src = Addr {
        raw: [dst, 0, 0, 0],
    };
    pkt.key.dst = Addr {
        raw: [src, 0, 0, 0],
    };
    quoted_ports(ctx, inner_off + ihl, pkt)
}

/// [`parse_icmp4`] for ICMPv6 (destination unreachable: type 1). The quoted packet's
/// extension headers are not walked.
#[inline(always)]
pub(crate) fn parse_icmp6(
    ctx: &impl Frame,
    off: usize,
    from: [u32; 4],
    pkt: &mut Packet,
) -> Result<(), Reason> {
    if off > MAX_L4_OFFSET {
        return Err(Reason::NOT_TCP_UDP);
    }
    let icmp: *const [u8; ICMP_HDR_LEN] = ctx.at(off).ok_or(Reason::NOT_TCP_UDP)?;
    // SAFETY: bounds-checked by Frame::at.
    if unsafe { (*icmp)[0] } != ICMPV6_DEST_UNREACH {
        return Err(Reason::NOT_TCP_UDP);
    }
    let inner_off = off + ICMP_HDR_LEN;
    let inner: *const Ipv6Hdr = ctx.at(inner_off).ok_or(Reason::NOT_TCP_UDP)?;
    // SAFETY: bounds-checked by Frame::at.
    let inner = unsafe { &*inner };
    if inner.vcf[0] >> 4 != 6 || (inner.next_hdr != Proto::TCP.0 && inner.next_hdr != Proto::UDP.0)
    {
        return Err(Reason::NOT_TCP_UDP);
    }
    // SAFETY: inside the checked header.
    let (src, dst) = unsafe {
        (
            load_addr6(addr_of!(inner.src_addr)),
            load_addr6(addr_of!(inner.dst_addr)),
        )
    };
    if dst != from {
        return Err(Reason::NOT_TCP_UDP);
    }
    pkt.key.family = Family::V6;
    pkt.key.proto = Proto(inner.next_hdr);
    pkt.key._pad = [0; 2];
    pkt.key.src = Addr { raw: dst };
    pkt.key.dst = Addr { raw: src };
    quoted_ports(ctx, inner_off + Ipv6Hdr::LEN, pkt)
}

/// The ports of a quoted packet (swapped like its addresses) and its TCP sequence number:
/// its first 8 L4 bytes, which ICMP always quotes.
#[inline(always)]
fn quoted_ports(ctx: &impl Frame, off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    // Verifier: see MAX_L4_OFFSET (an ICMP error quoting options can go beyond it; such
    // a message is simply passed).
    if off > MAX_L4_OFFSET {
        return Err(Reason::NOT_TCP_UDP);
    }
    // Ports and (TCP) the sequence number: the 8 bytes ICMP always quotes.
    let quoted: *const [[u8; 2]; 4] = ctx.at(off).ok_or(Reason::NOT_TCP_UDP)?;
    // SAFETY: bounds-checked by Frame::at.
    unsafe {
        pkt.key.sport_be = load_u16(addr_of!((*quoted)[1]));
        pkt.key.dport_be = load_u16(addr_of!((*quoted)[0]));
        pkt.tcp_seq_be = load_u32(addr_of!((*quoted)[2]).cast());
    }
    pkt.tcp_ack_be = 0;
    pkt.tcp_flags = 0;
    pkt.icmp_unreachable = true;
    Ok(())
}
