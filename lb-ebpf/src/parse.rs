//! Header parsing: Ethernet (at most one 802.1Q tag), IPv4 (with options) or IPv6 (with a
//! bounded walk of extension headers), then TCP or UDP. The only family-specific part of
//! the ingress side: everything after works on the family-neutral [`Packet`].
//!
//! Malformed headers end parsing with a `MALFORMED_*` reason (dropped), valid headers that
//! are out of scope with a pass reason; the policy is documented in `lb_common::stats`.

use core::ptr::addr_of;

use lb_common::{Addr, Family, Proto, maps::CtKey, stats::Reason};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::{
    frame::{Frame, load_addr6, load_u16, load_u32},
    icmp,
};

const ETH_P_IP_BE: u16 = 0x0800u16.to_be();
const ETH_P_IPV6_BE: u16 = 0x86ddu16.to_be();
const ETH_P_8021Q_BE: u16 = 0x8100u16.to_be();
const ETH_P_8021AD_BE: u16 = 0x88a8u16.to_be();

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers walked before giving up (passing the packet).
const MAX_IPV6_EXT: usize = 4;
/// Bound on the offset of the L4 header. Keeps every offset the verifier tracks small; a
/// longer chain of extension headers is passed to the kernel.
pub(crate) const MAX_L4_OFFSET: usize = 256;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the rest of the pipeline needs to know about a TCP/UDP packet.
pub struct Packet {
    /// The tuple as it travels, laid out as a connection-table key so that the lookup uses
    /// it as it is (addresses and ports in network byte order).
    pub key: CtKey,
    pub l3_off: u16,
    pub l4_off: u16,
    /// Length of the IP packet (header included), for the FIB lookup and byte counters.
    pub ip_len: u16,
    /// TTL or hop limit.
    pub ttl: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// TCP sequence and acknowledgement numbers, network byte order (0 for UDP). For an
    /// ICMP error about a TCP packet, `tcp_seq_be` is the quoted packet's sequence number.
    pub tcp_seq_be: u32,
    pub tcp_ack_be: u32,
    /// The frame carries an 802.1Q tag.
    pub vlan: bool,
    /// A first fragment (more fragments follow): it has ports, its followers do not.
    pub first_fragment: bool,
    /// An ICMP destination unreachable sent by the host its inner packet was addressed
    /// to; `key` is then the tuple of a reply to that inner packet (from that host), i.e.
    /// the key of the reply entry of the flow it is about.
    pub icmp_unreachable: bool,
}

impl Packet {
    pub const EMPTY: Self = Self {
        key: CtKey {
            src: Addr { raw: [0; 4] },
            dst: Addr { raw: [0; 4] },
            sport_be: 0,
            dport_be: 0,
            proto: Proto(0),
            family: Family(0),
            _pad: [0; 2],
        },
        l3_off: 0,
        l4_off: 0,
        ip_len: 0,
        ttl: 0,
        tcp_flags: 0,
        tcp_seq_be: 0,
        tcp_ack_be: 0,
        vlan: false,
        first_fragment: false,
        icmp_unreachable: false,
    };

    #[inline(always)]
    pub fn has_tcp_flag(&self, flag: u8) -> bool {
        self.tcp_flags & flag != 0
    }

    #[inline(always)]
    pub fn family(&self) -> Family {
        self.key.family
    }

    #[inline(always)]
    pub fn proto(&self) -> Proto {
        self.key.proto
    }
}

/// Parses the frame.
#[inline(always)]
pub fn parse(ctx: &impl Frame) -> Result<Packet, Reason> {
    let mut pkt = Packet::EMPTY;
    match parse_into(ctx, &mut pkt) {
        u32::MAX => Ok(pkt),
        reason => Err(Reason(reason)),
    }
}

/// Parses into `pkt`; returns `u32::MAX`, or the reason parsing stopped.
///
/// Not inlined: the parser's temporaries and register spills get a stack frame of their
/// own, which keeps the pipeline within the 512-byte BPF stack. It returns a scalar (see
/// `fwd::Outcome::pack` for why subprograms do).
#[inline(never)]
pub fn parse_into(ctx: &impl Frame, pkt: &mut Packet) -> u32 {
    match parse_headers(ctx, pkt) {
        Ok(()) => u32::MAX,
        Err(reason) => reason.0,
    }
}

/// Parses the frame into `pkt`, inlined into the caller (the benchmark floor uses this
/// form: the cheapest way to run this parser).
#[inline(always)]
pub fn parse_headers(ctx: &impl Frame, pkt: &mut Packet) -> Result<(), Reason> {
    let eth: *const EthHdr = ctx.at(0).ok_or(Reason::MALFORMED_ETH)?;
    // SAFETY: `eth` was bounds-checked by Frame::at.
    let mut ether_type = unsafe { (*eth).ether_type };
    let mut l3_off = EthHdr::LEN;
    pkt.vlan = false;
    if ether_type == ETH_P_8021Q_BE {
        let tag: *const VlanHdr = ctx.at(l3_off).ok_or(Reason::MALFORMED_VLAN)?;
        // SAFETY: bounds-checked by Frame::at.
        ether_type = unsafe { (*tag).ether_type };
        l3_off += VlanHdr::LEN;
        pkt.vlan = true;
    }
    match ether_type {
        ETH_P_IP_BE => parse_ipv4(ctx, l3_off, pkt),
        ETH_P_IPV6_BE => parse_ipv6(ctx, l3_off, pkt),
        // A second tag (QinQ) or any other protocol is not ours to look into.
        ETH_P_8021Q_BE | ETH_P_8021AD_BE => Err(Reason::NOT_IP),
        _ => Err(Reason::NOT_IP),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &impl Frame, l3_off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    let ip: *const Ipv4Hdr = ctx.at(l3_off).ok_or(Reason::MALFORMED_IPV4)?;
    // SAFETY: the 20-byte fixed header was bounds-checked by Frame::at.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Reason::MALFORMED_IPV4);
    }
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    if ihl < Ipv4Hdr::LEN || tot_len < ihl || !ctx.holds(l3_off + tot_len) {
        return Err(Reason::MALFORMED_IPV4);
    }
    let frags = u16::from_be_bytes(ip.frags);
    if frags & 0x1fff != 0 {
        return Err(Reason::FRAGMENT);
    }
    let proto = Proto(ip.proto);
    if ip.proto == IPPROTO_ICMP {
        pkt.icmp_unreachable = false;
        // SAFETY: inside the checked header.
        let from = unsafe { load_u32(addr_of!(ip.src_addr)) };
        // The message's place, for its checksum (verified before it counts as a signal).
        pkt.l3_off = l3_off as u16;
        pkt.l4_off = (l3_off + ihl) as u16;
        pkt.ip_len = tot_len as u16;
        return icmp::parse_icmp4(ctx, l3_off + ihl, from, pkt);
    }
    if proto != Proto::TCP && proto != Proto::UDP {
        return Err(Reason::NOT_TCP_UDP);
    }
    pkt.icmp_unreachable = false;
    pkt.key.family = Family::V4;
    pkt.key.proto = proto;
    pkt.key._pad = [0; 2];
    // SAFETY: both addresses are inside the checked header.
    unsafe {
        pkt.key.src = Addr {
            raw: [load_u32(addr_of!(ip.src_addr)), 0, 0, 0],
        };
        pkt.key.dst = Addr {
            raw: [load_u32(addr_of!(ip.dst_addr)), 0, 0, 0],
        };
    }
    pkt.first_fragment = frags & 0x2000 != 0;
    pkt.ttl = ip.ttl;
    pkt.l3_off = l3_off as u16;
    pkt.l4_off = (l3_off + ihl) as u16;
    pkt.ip_len = tot_len as u16;
    parse_l4(ctx, pkt, l3_off + tot_len)
}

#[inline(always)]
fn parse_ipv6(ctx: &impl Frame, l3_off: usize, pkt: &mut Packet) -> Result<(), Reason> {
    let ip: *const Ipv6Hdr = ctx.at(l3_off).ok_or(Reason::MALFORMED_IPV6)?;
    // SAFETY: the 40-byte fixed header was bounds-checked by Frame::at.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Reason::MALFORMED_IPV6);
    }
    let payload_len = u16::from_be_bytes(ip.payload_len) as usize;
    let end = l3_off + Ipv6Hdr::LEN + payload_len;
    if !ctx.holds(end) {
        return Err(Reason::MALFORMED_IPV6);
    }
    let mut next = ip.next_hdr;
    let mut off = l3_off + Ipv6Hdr::LEN;
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let h: *const [u8; 2] = ctx.at(off).ok_or(Reason::MALFORMED_IPV6)?;
                // SAFETY: bounds-checked by Frame::at.
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
                let h: *const [u8; 8] = ctx.at(off).ok_or(Reason::MALFORMED_IPV6)?;
                // SAFETY: bounds-checked by Frame::at.
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
    if next == IPPROTO_ICMPV6 {
        pkt.icmp_unreachable = false;
        // SAFETY: inside the checked header.
        let from = unsafe { load_addr6(addr_of!(ip.src_addr)) };
        // As for ICMPv4.
        pkt.l3_off = l3_off as u16;
        pkt.l4_off = off as u16;
        pkt.ip_len = (Ipv6Hdr::LEN + payload_len) as u16;
        return icmp::parse_icmp6(ctx, off, from, pkt);
    }
    if proto != Proto::TCP && proto != Proto::UDP {
        return Err(match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT => {
                Reason::IPV6_EXTENSIONS
            }
            _ => Reason::NOT_TCP_UDP,
        });
    }
    if off > end {
        return Err(Reason::MALFORMED_IPV6);
    }
    pkt.icmp_unreachable = false;
    pkt.key.family = Family::V6;
    pkt.key.proto = proto;
    pkt.key._pad = [0; 2];
    // SAFETY: both addresses are inside the checked header.
    unsafe {
        pkt.key.src = Addr {
            raw: load_addr6(addr_of!(ip.src_addr)),
        };
        pkt.key.dst = Addr {
            raw: load_addr6(addr_of!(ip.dst_addr)),
        };
    }
    pkt.first_fragment = first_fragment;
    pkt.ttl = ip.hop_limit;
    pkt.l3_off = l3_off as u16;
    pkt.l4_off = off as u16;
    pkt.ip_len = (Ipv6Hdr::LEN + payload_len) as u16;
    parse_l4(ctx, pkt, end)
}

/// Reads the ports (and TCP flags); `l4_end` is where the IP packet ends.
#[inline(always)]
fn parse_l4(ctx: &impl Frame, pkt: &mut Packet, l4_end: usize) -> Result<(), Reason> {
    let off = pkt.l4_off as usize;
    if off > MAX_L4_OFFSET {
        // Verifier: an IPv4 header is at most 60 bytes after at most 18 of L2, so this only
        // bounds the range the verifier sees.
        return Err(Reason::MALFORMED_IPV4);
    }
    if pkt.key.proto == Proto::TCP {
        let tcp: *const TcpHdr = ctx.at(off).ok_or(Reason::MALFORMED_L4)?;
        // SAFETY: the 20-byte fixed header was bounds-checked by Frame::at.
        let tcp = unsafe { &*tcp };
        let doff = tcp.doff() as usize * 4;
        if doff < TcpHdr::LEN || off + doff > l4_end {
            return Err(Reason::MALFORMED_L4);
        }
        // SAFETY: inside the 20 bytes checked above, through the same pointer. Byte 13 of
        // the TCP header holds the flags: CWR ECE URG ACK PSH RST SYN FIN.
        unsafe {
            pkt.key.sport_be = load_u16(addr_of!(tcp.source));
            pkt.key.dport_be = load_u16(addr_of!(tcp.dest));
            pkt.tcp_flags = *(tcp as *const TcpHdr as *const u8).add(13);
            pkt.tcp_seq_be = load_u32(addr_of!(tcp.seq));
            pkt.tcp_ack_be = load_u32(addr_of!(tcp.ack_seq));
        }
    } else {
        let udp: *const UdpHdr = ctx.at(off).ok_or(Reason::MALFORMED_L4)?;
        if off + UdpHdr::LEN > l4_end {
            return Err(Reason::MALFORMED_L4);
        }
        // SAFETY: bounds-checked by Frame::at.
        unsafe {
            pkt.key.sport_be = load_u16(addr_of!((*udp).src));
            pkt.key.dport_be = load_u16(addr_of!((*udp).dst));
        }
        pkt.tcp_flags = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use lb_common::{Addr, Family, Proto, stats::Reason};

    use super::*;
    use xlb_tests::packet::*;

    use crate::frame::Bytes;

    fn parse_bytes(mut v: Vec<u8>) -> Result<Packet, Reason> {
        parse(&Bytes(&mut v))
    }

    #[test]
    fn ipv4_tcp() {
        let p = parse_bytes(tcp4(CLIENT4, VIP4, 40000, 80, b"hi")).unwrap();
        assert_eq!(
            (p.family(), p.proto(), p.l3_off, p.l4_off),
            (Family::V4, Proto::TCP, 14, 34)
        );
        assert_eq!(p.key.src, Addr::from_v4_octets(CLIENT4));
        assert_eq!(p.key.dst, Addr::from_v4_octets(VIP4));
        assert_eq!(
            (u16::from_be(p.key.sport_be), u16::from_be(p.key.dport_be)),
            (40000, 80)
        );
        assert!(p.has_tcp_flag(TCP_SYN) && !p.has_tcp_flag(TCP_ACK));
        assert_eq!(
            (p.ttl, p.ip_len, p.vlan, p.first_fragment),
            (64, 42, false, false)
        );
    }

    #[test]
    fn ipv4_with_options_and_vlan() {
        let mut v = udp4(CLIENT4, VIP4, 5000, 53, b"q");
        v.add_ipv4_options(8);
        let p = parse_bytes(vlan(&v, 42)).unwrap();
        assert_eq!(
            (p.l3_off, p.l4_off, p.vlan, p.proto()),
            (18, 46, true, Proto::UDP)
        );
        assert_eq!(u16::from_be(p.key.dport_be), 53);
    }

    #[test]
    fn ipv6_tcp_and_udp() {
        let p = parse_bytes(tcp6(CLIENT6, VIP6, 1234, 80, b"")).unwrap();
        assert_eq!(
            (p.family(), p.proto(), p.l4_off, p.ip_len),
            (Family::V6, Proto::TCP, 54, 60)
        );
        assert_eq!(p.key.dst, Addr::from_v6_octets(VIP6));
        let p = parse_bytes(udp6(CLIENT6, VIP6, 1234, 53, b"abc")).unwrap();
        assert_eq!((p.proto(), u16::from_be(p.key.dport_be)), (Proto::UDP, 53));
    }

    fn with_ext(mut v: Vec<u8>, exts: &[(u8, Vec<u8>)]) -> Vec<u8> {
        v.add_ipv6_extensions(exts);
        v
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let hop = (0u8, vec![0, 0, 1, 4, 0, 0, 0, 0]); // Hop-by-hop, 8 bytes (PadN).
        let dst = (60u8, vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // 16 bytes.
        let p = parse_bytes(with_ext(tcp6(CLIENT6, VIP6, 1, 80, b""), &[hop, dst])).unwrap();
        assert_eq!((p.proto(), p.l4_off), (Proto::TCP, 54 + 24));
    }

    #[test]
    fn ipv6_fragments() {
        // First fragment (offset 0, M=1): has ports, flagged.
        let first = (44u8, vec![0, 0, 0, 1, 0, 0, 0, 7]);
        let p = parse_bytes(with_ext(udp6(CLIENT6, VIP6, 1, 53, b"x"), &[first])).unwrap();
        assert!(p.first_fragment);
        // Later fragment: passed.
        let later = (44u8, vec![0, 0, 0, 0x10, 0, 0, 0, 7]);
        assert_eq!(
            parse_bytes(with_ext(udp6(CLIENT6, VIP6, 1, 53, b"x"), &[later])).err(),
            Some(Reason::FRAGMENT)
        );
    }

    #[test]
    fn ipv6_long_extension_chain_is_passed() {
        let e = || (60u8, vec![0, 0, 1, 4, 0, 0, 0, 0]);
        let v = with_ext(tcp6(CLIENT6, VIP6, 1, 80, b""), &[e(), e(), e(), e(), e()]);
        assert_eq!(parse_bytes(v).err(), Some(Reason::IPV6_EXTENSIONS));
    }

    #[test]
    fn ipv4_fragments() {
        let mut v = udp4(CLIENT4, VIP4, 1, 53, b"x");
        v.set_fragment(true, 0);
        assert!(parse_bytes(v.clone()).unwrap().first_fragment);
        v.set_fragment(false, 16);
        assert_eq!(parse_bytes(v).err(), Some(Reason::FRAGMENT));
    }

    #[test]
    fn out_of_scope_traffic_gets_a_pass_reason() {
        let mut arp = tcp4(CLIENT4, VIP4, 1, 80, b"");
        arp.set_ethertype(0x0806);
        assert_eq!(parse_bytes(arp).err(), Some(Reason::NOT_IP));
        let qinq = vlan(&vlan(&tcp4(CLIENT4, VIP4, 1, 80, b""), 1), 2);
        assert_eq!(parse_bytes(qinq).err(), Some(Reason::NOT_IP));
        let mut gre = tcp4(CLIENT4, VIP4, 1, 80, b"");
        gre.set_protocol(47);
        assert_eq!(parse_bytes(gre).err(), Some(Reason::NOT_TCP_UDP));
        let mut icmp6 = udp6(CLIENT6, VIP6, 1, 80, b"");
        icmp6.set_protocol(58);
        assert_eq!(parse_bytes(icmp6).err(), Some(Reason::NOT_TCP_UDP));
    }

    #[test]
    fn bad_ipv4_headers_are_malformed() {
        let good = tcp4(CLIENT4, VIP4, 1, 80, b"");
        let mut ihl4 = good.clone();
        ihl4.raw_ihl(4);
        assert_eq!(parse_bytes(ihl4).err(), Some(Reason::MALFORMED_IPV4));
        let mut version = good.clone();
        version.raw_version(6);
        assert_eq!(parse_bytes(version).err(), Some(Reason::MALFORMED_IPV4));
        let mut short_total = good.clone();
        short_total.set_total_length(10);
        assert_eq!(parse_bytes(short_total).err(), Some(Reason::MALFORMED_IPV4));
        let mut doff = good.clone();
        doff.raw_tcp_data_offset(4);
        assert_eq!(parse_bytes(doff).err(), Some(Reason::MALFORMED_L4));
    }

    /// Cuts a frame at every length below its own: each prefix must be rejected with the
    /// reason of the header it cuts into.
    fn assert_truncations(frame: Vec<u8>, l3_reason: Reason) {
        for n in 0..frame.len() {
            let want = if n < 14 {
                Reason::MALFORMED_ETH
            } else {
                l3_reason
            };
            assert_eq!(
                parse_bytes(frame[..n].to_vec()).err(),
                Some(want),
                "cut at {n} bytes"
            );
        }
    }

    #[test]
    fn every_truncation_is_malformed() {
        assert_truncations(tcp4(CLIENT4, VIP4, 1, 80, b"data"), Reason::MALFORMED_IPV4);
        assert_truncations(udp4(CLIENT4, VIP4, 1, 53, b"data"), Reason::MALFORMED_IPV4);
        assert_truncations(tcp6(CLIENT6, VIP6, 1, 80, b"data"), Reason::MALFORMED_IPV6);
        assert_truncations(udp6(CLIENT6, VIP6, 1, 53, b"data"), Reason::MALFORMED_IPV6);
        let tagged = vlan(&tcp4(CLIENT4, VIP4, 1, 80, b""), 7);
        assert_eq!(
            parse_bytes(tagged[..16].to_vec()).err(),
            Some(Reason::MALFORMED_VLAN)
        );
    }

    #[test]
    fn l4_header_shorter_than_the_ip_packet_says_is_malformed() {
        // A consistent IP packet whose payload is too short for a TCP/UDP header.
        for mut v in [
            tcp4(CLIENT4, VIP4, 1, 80, b""),
            udp4(CLIENT4, VIP4, 1, 53, b""),
        ] {
            v.truncate(14 + 20 + 4);
            v.set_total_length(24);
            assert_eq!(parse_bytes(v).err(), Some(Reason::MALFORMED_L4));
        }
        let mut v6 = udp6(CLIENT6, VIP6, 1, 53, b"");
        v6.truncate(54 + 4);
        v6.set_payload_length(4);
        assert_eq!(parse_bytes(v6).err(), Some(Reason::MALFORMED_L4));
    }
}
