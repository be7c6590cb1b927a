//! Address and port translation with incremental checksum updates.
//!
//! Forward packets get their destination rewritten (VIP:port -> backend:port), replies their
//! source (backend:port -> VIP:port). The IPv4 header checksum and the TCP/UDP checksum
//! (whose pseudo-header covers the addresses) are updated with `lb_common::csum`.
//! A UDP/IPv4 checksum of zero means "none" and stays zero; a computed zero is sent as
//! 0xffff (RFC 768), which IPv6 requires since its UDP checksum is mandatory.

use lb_common::{Addr, Family, Proto, csum::CsumDelta, stats::Reason};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{frame::Frame, parse::Packet};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites one end's address and port to `addr`/`port_be`, fixing checksums.
#[inline(always)]
pub fn rewrite(
    ctx: &impl Frame,
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
        let ip: *mut Ipv4Hdr = ctx.at_mut(pkt.l3_off).ok_or(Reason::MALFORMED_IPV4)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut; fields through that pointer.
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
        let ip: *mut Ipv6Hdr = ctx.at_mut(pkt.l3_off).ok_or(Reason::MALFORMED_IPV6)?;
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
        let tcp: *mut TcpHdr = ctx.at_mut(pkt.l4_off).ok_or(Reason::MALFORMED_L4)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut.
        let tcp = unsafe { &mut *tcp };
        match end {
            End::Source => tcp.source = port,
            End::Destination => tcp.dest = port,
        }
        tcp.check = delta.apply(u16::from_ne_bytes(tcp.check)).to_ne_bytes();
    } else {
        let udp: *mut UdpHdr = ctx.at_mut(pkt.l4_off).ok_or(Reason::MALFORMED_L4)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut.
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

#[cfg(test)]
mod tests {
    use lb_common::Addr;

    use super::*;
    use xlb_tests::packet::*;

    use crate::{frame::Bytes, parse::parse};

    const BACKEND4: [u8; 4] = [192, 168, 7, 200];
    const BACKEND6: [u8; 16] = [0xfd, 0, 2, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn translate(mut frame: Vec<u8>, end: End, addr: Addr, port: u16) -> Vec<u8> {
        let f = Bytes(&mut frame);
        let mut pkt = parse(&f).unwrap();
        rewrite(&f, &mut pkt, end, &addr, port.to_be()).unwrap();
        frame
    }

    #[test]
    fn dnat_keeps_every_checksum_valid() {
        let b4 = Addr::from_v4_octets(BACKEND4);
        let b6 = Addr::from_v6_octets(BACKEND6);
        for payload in [&b""[..], b"x", b"hello world, odd length!"] {
            for f in [tcp4(CLIENT4, VIP4, 40000, 80, payload), udp4(CLIENT4, VIP4, 40000, 53, payload)] {
                let out = translate(f, End::Destination, b4, 8080);
                assert_checksums(&out);
                assert_eq!(&out[30..34], &BACKEND4);
                assert_eq!(&out[36..38], &8080u16.to_be_bytes());
            }
            for f in [tcp6(CLIENT6, VIP6, 40000, 80, payload), udp6(CLIENT6, VIP6, 40000, 53, payload)] {
                let out = translate(f, End::Destination, b6, 8080);
                assert_checksums(&out);
                assert_eq!(&out[38..54], &BACKEND6);
            }
        }
    }

    #[test]
    fn reverse_nat_restores_the_vip_as_source() {
        let vip = Addr::from_v4_octets(VIP4);
        let reply = tcp4(BACKEND4, CLIENT4, 8080, 40000, b"answer");
        let out = translate(reply, End::Source, vip, 80);
        assert_checksums(&out);
        assert_eq!((&out[26..30], &out[34..36]), (&VIP4[..], &80u16.to_be_bytes()[..]));
        let vip6 = Addr::from_v6_octets(VIP6);
        let out = translate(udp6(BACKEND6, CLIENT6, 5353, 40000, b"a"), End::Source, vip6, 53);
        assert_checksums(&out);
        assert_eq!(&out[22..38], &VIP6);
    }

    #[test]
    fn udp_ipv4_without_checksum_stays_without() {
        let mut f = udp4(CLIENT4, VIP4, 40000, 53, b"q");
        f[40..42].copy_from_slice(&[0, 0]);
        let out = translate(f, End::Destination, Addr::from_v4_octets(BACKEND4), 5353);
        assert_eq!(&out[40..42], &[0, 0]);
        assert_checksums(&out);
    }
}
