//! Header parsing: Ethernet (at most one 802.1Q tag), IPv4 (with options) or IPv6 (with a
//! bounded walk of extension headers), then TCP or UDP. The only family-specific part of
//! the ingress side: everything after works on the family-neutral [`Packet`].
//!
//! Malformed headers end parsing with a `MALFORMED_*` reason (dropped), valid headers that
//! are out of scope with a pass reason; the policy is documented in `lb_common::stats`.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr, Family, Proto, stats::Reason};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::ptr;

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
const ETH_P_8021AD_BE: u16 = 0x88a8u16.to_be();

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before giving up (passing the packet).
const MAX_IPV6_EXT: usize = 4;
/// Bound on the offset of the L4 header. Keeps every offset the verifier tracks small; a
/// longer chain of extension headers is passed to the kernel.
const MAX_L4_OFFSET: usize = 256;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the rest of the pipeline needs to know about a TCP/UDP packet.
pub struct Packet {
    pub family: Family,
    pub proto: Proto,
    /// The frame carries an 802.1Q tag.
    pub vlan: bool,
    /// A first fragment (more fragments follow): it has ports, its followers do not.
    pub first_fragment: bool,
    /// TTL or hop limit.
    pub ttl: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    pub l3_off: usize,
    pub l4_off: usize,
    /// Length of the IP packet (header included), for the FIB lookup and byte counters.
    pub ip_len: u16,
    pub src: Addr,
    pub dst: Addr,
    pub sport_be: u16,
    pub dport_be: u16,
}

impl Packet {
    #[inline(always)]
    pub fn has_tcp_flag(&self, flag: u8) -> bool {
        self.tcp_flags & flag != 0
    }
}

#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Reason> {
    let eth: *const EthHdr = ptr::at(ctx, 0).ok_or(Reason::MALFORMED_ETH)?;
    // SAFETY: `eth` was bounds-checked by ptr::at.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3_off = EthHdr::LEN;
    let mut vlan = false;
    if ether_type == ETH_P_8021Q_BE {
        let tag: *const VlanHdr = ptr::at(ctx, l3_off).ok_or(Reason::MALFORMED_VLAN)?;
        // SAFETY: bounds-checked by ptr::at.
        ether_type = unsafe { (*tag).ether_type };
        l3_off += VlanHdr::LEN;
        vlan = true;
    }
    match ether_type {
        ETH_P_IP_BE => parse_ipv4(ctx, l3_off, vlan),
        ETH_P_IPV6_BE => parse_ipv6(ctx, l3_off, vlan),
        // A second tag (QinQ) or any other protocol is not ours to look into.
        ETH_P_8021Q_BE | ETH_P_8021AD_BE => Err(Reason::NOT_IP),
        _ => Err(Reason::NOT_IP),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_off: usize, vlan: bool) -> Result<Packet, Reason> {
    let ip: *const Ipv4Hdr = ptr::at(ctx, l3_off).ok_or(Reason::MALFORMED_IPV4)?;
    // SAFETY: the 20-byte fixed header was bounds-checked by ptr::at.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Reason::MALFORMED_IPV4);
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ihl < Ipv4Hdr::LEN || tot_len < ihl || !ptr::frame_holds(ctx, l3_off + tot_len) {
        return Err(Reason::MALFORMED_IPV4);
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & 0x1fff != 0 {
        return Err(Reason::FRAGMENT);
    }
    let proto = Proto(ip.proto);
    if proto != Proto::TCP && proto != Proto::UDP {
        return Err(Reason::NOT_TCP_UDP);
    }
    let mut pkt = Packet {
        family: Family::V4,
        proto,
        vlan,
        first_fragment: frags & 0x2000 != 0,
        ttl: ip.ttl,
        tcp_flags: 0,
        l3_off,
        l4_off: l3_off + ihl,
        ip_len: tot_len as u16,
        src: Addr { raw: [u32::from_ne_bytes(ip.src_addr), 0, 0, 0] },
        dst: Addr { raw: [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0] },
        sport_be: 0,
        dport_be: 0,
    };
    parse_l4(ctx, &mut pkt, l3_off + tot_len)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_off: usize, vlan: bool) -> Result<Packet, Reason> {
    let ip: *const Ipv6Hdr = ptr::at(ctx, l3_off).ok_or(Reason::MALFORMED_IPV6)?;
    // SAFETY: the 40-byte fixed header was bounds-checked by ptr::at.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Reason::MALFORMED_IPV6);
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let end = l3_off + Ipv6Hdr::LEN + payload_len;
    if !ptr::frame_holds(ctx, end) {
        return Err(Reason::MALFORMED_IPV6);
    }
    let mut next = ip.next_hdr;
    let mut off = l3_off + Ipv6Hdr::LEN;
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let h: *const [u8; 2] = ptr::at(ctx, off).ok_or(Reason::MALFORMED_IPV6)?;
                // SAFETY: bounds-checked by ptr::at.
                let h = unsafe { *h };
                let this = next;
                next = h[0];
                if this == IPPROTO_AH {
                    // AH counts its length in 4-byte units, minus 2 (RFC 4302).
                    (h[1] as usize + 2) * 4
                } else {
                    (h[1] as usize + 1) * 8
                }
            }
            IPPROTO_FRAGMENT => {
                let h: *const [u8; 8] = ptr::at(ctx, off).ok_or(Reason::MALFORMED_IPV6)?;
                // SAFETY: bounds-checked by ptr::at.
                let h = unsafe { *h };
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Err(Reason::FRAGMENT);
                }
                first_fragment = h[3] & 1 != 0;
                next = h[0];
                8
            }
            _ => break,
        };
        off += len;
        // Verifier: keeps the offset's range small and known (see MAX_L4_OFFSET).
        if off > MAX_L4_OFFSET {
            return Err(Reason::IPV6_EXTENSIONS);
        }
    }
    let proto = Proto(next);
    if proto != Proto::TCP && proto != Proto::UDP {
        return Err(match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH
            | IPPROTO_FRAGMENT => Reason::IPV6_EXTENSIONS,
            _ => Reason::NOT_TCP_UDP,
        });
    }
    if off > end {
        return Err(Reason::MALFORMED_IPV6);
    }
    let mut pkt = Packet {
        family: Family::V6,
        proto,
        vlan,
        first_fragment,
        ttl: ip.hop_limit,
        tcp_flags: 0,
        l3_off,
        l4_off: off,
        ip_len: (Ipv6Hdr::LEN + payload_len) as u16,
        src: Addr::from_v6_octets(ip.src_addr),
        dst: Addr::from_v6_octets(ip.dst_addr),
        sport_be: 0,
        dport_be: 0,
    };
    parse_l4(ctx, &mut pkt, end)?;
    Ok(pkt)
}

/// Reads the ports (and TCP flags); `l4_end` is where the IP packet ends.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, pkt: &mut Packet, l4_end: usize) -> Result<(), Reason> {
    let off = pkt.l4_off;
    if off > MAX_L4_OFFSET {
        // Verifier: an IPv4 header is at most 60 bytes after at most 18 of L2, so this only
        // bounds the range the verifier sees.
        return Err(Reason::MALFORMED_IPV4);
    }
    if pkt.proto == Proto::TCP {
        let tcp: *const TcpHdr = ptr::at(ctx, off).ok_or(Reason::MALFORMED_L4)?;
        // SAFETY: the 20-byte fixed header was bounds-checked by ptr::at.
        let tcp = unsafe { &*tcp };
        let doff = tcp.doff() as usize * 4;
        if doff < TcpHdr::LEN || off + doff > l4_end {
            return Err(Reason::MALFORMED_L4);
        }
        pkt.sport_be = u16::from_ne_bytes(tcp.source);
        pkt.dport_be = u16::from_ne_bytes(tcp.dest);
        // Byte 13 of the TCP header: CWR ECE URG ACK PSH RST SYN FIN.
        // SAFETY: inside the 20 bytes checked above, through the same pointer.
        pkt.tcp_flags = unsafe { *(tcp as *const TcpHdr as *const u8).add(13) };
    } else {
        let udp: *const UdpHdr = ptr::at(ctx, off).ok_or(Reason::MALFORMED_L4)?;
        if off + UdpHdr::LEN > l4_end {
            return Err(Reason::MALFORMED_L4);
        }
        // SAFETY: bounds-checked by ptr::at.
        let udp = unsafe { &*udp };
        pkt.sport_be = u16::from_ne_bytes(udp.src);
        pkt.dport_be = u16::from_ne_bytes(udp.dst);
    }
    Ok(())
}
