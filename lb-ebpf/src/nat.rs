//! Address and port translation with incremental checksum updates.
//!
//! Forward packets get their destination rewritten (VIP:port -> backend:port), replies their
//! source (backend:port -> VIP:port). The IPv4 header checksum and the TCP/UDP checksum
//! (whose pseudo-header covers the addresses) are updated with `lb_common::csum`.
//! A UDP/IPv4 checksum of zero means "none" and stays zero; a computed zero is sent as
//! 0xffff (RFC 768), which IPv6 requires since its UDP checksum is mandatory.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, Family, Proto, csum::CsumDelta, stats::Reason};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{parse::Packet, ptr};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites one end's address and port to `addr`/`port_be`, fixing checksums.
#[inline(always)]
pub fn rewrite(
    ctx: &XdpContext,
    pkt: &mut Packet,
    end: End,
    addr: &Addr,
    port_be: u16,
) -> Result<(), Reason> {
    let (old_addr, old_port) = match end {
        End::Source => (pkt.src, pkt.sport_be),
        End::Destination => (pkt.dst, pkt.dport_be),
    };
    let mut delta = CsumDelta::new().replace_u16(old_port, port_be);

    if pkt.family == Family::V4 {
        let ip: *mut Ipv4Hdr = ptr::at_mut(ctx, pkt.l3_off).ok_or(Reason::MALFORMED_IPV4)?;
        // SAFETY: the header was bounds-checked by ptr::at_mut; fields through that pointer.
        let ip = unsafe { &mut *ip };
        let new = addr.raw[0].to_ne_bytes();
        match end {
            End::Source => ip.src_addr = new,
            End::Destination => ip.dst_addr = new,
        }
        let ip_delta = CsumDelta::new().replace_u32(old_addr.raw[0], addr.raw[0]);
        ip.check = ip_delta.apply(u16::from_ne_bytes(ip.check)).to_ne_bytes();
        delta = delta.replace_u32(old_addr.raw[0], addr.raw[0]);
    } else {
        let ip: *mut Ipv6Hdr = ptr::at_mut(ctx, pkt.l3_off).ok_or(Reason::MALFORMED_IPV6)?;
        // SAFETY: as above.
        let ip = unsafe { &mut *ip };
        let new = addr.octets();
        match end {
            End::Source => ip.src_addr = new,
            End::Destination => ip.dst_addr = new,
        }
        delta = delta.replace_words(&old_addr.raw, &addr.raw);
    }

    let port = port_be.to_ne_bytes();
    if pkt.proto == Proto::TCP {
        let tcp: *mut TcpHdr = ptr::at_mut(ctx, pkt.l4_off).ok_or(Reason::MALFORMED_L4)?;
        // SAFETY: the header was bounds-checked by ptr::at_mut.
        let tcp = unsafe { &mut *tcp };
        match end {
            End::Source => tcp.source = port,
            End::Destination => tcp.dest = port,
        }
        tcp.check = delta.apply(u16::from_ne_bytes(tcp.check)).to_ne_bytes();
    } else {
        let udp: *mut UdpHdr = ptr::at_mut(ctx, pkt.l4_off).ok_or(Reason::MALFORMED_L4)?;
        // SAFETY: the header was bounds-checked by ptr::at_mut.
        let udp = unsafe { &mut *udp };
        match end {
            End::Source => udp.src = port,
            End::Destination => udp.dst = port,
        }
        let old = u16::from_ne_bytes(udp.check);
        if !(old == 0 && pkt.family == Family::V4) {
            let new = delta.apply(old);
            udp.check = if new == 0 { 0xffff } else { new }.to_ne_bytes();
        }
    }

    match end {
        End::Source => {
            pkt.src = *addr;
            pkt.sport_be = port_be;
        }
        End::Destination => {
            pkt.dst = *addr;
            pkt.dport_be = port_be;
        }
    }
    Ok(())
}
