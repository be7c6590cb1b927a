//! Address and port translation with incremental checksum updates.
//!
//! Forward packets get their destination rewritten (VIP:port -> backend:port), replies their
//! source (backend:port -> VIP:port). The IPv4 header checksum and the TCP/UDP checksum
//! (whose pseudo-header covers the addresses) are updated with `lb_common::csum`.
//! A UDP/IPv4 checksum of zero means "none" and stays zero; a computed zero is sent as
//! 0xffff (RFC 768), which IPv6 requires since its UDP checksum is mandatory.

use core::ptr::addr_of_mut;

use lb_common::{Addr, Family, Proto, csum::CsumDelta, stats::Reason};
use network_types::{
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    frame::{Frame, load_u16, store_addr6, store_u16, store_u32},
    parse::Packet,
};

/// Which end of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum End {
    Source,
    Destination,
}

/// Rewrites one end's address and port to `addr`/`port_be`, fixing checksums, and updates
/// `pkt` to match.
#[inline(always)]
pub fn rewrite(
    ctx: &impl Frame,
    pkt: &mut Packet,
    end: End,
    addr: &Addr,
    port_be: u16,
) -> Result<(), Reason> {
    let (old_addr, old_port) = match end {
        End::Source => (pkt.key.src, pkt.key.sport_be),
        End::Destination => (pkt.key.dst, pkt.key.dport_be),
    };
    let mut delta = CsumDelta::new().replace_u16(old_port, port_be);

    if pkt.family() == Family::V4 {
        let ip: *mut Ipv4Hdr = ctx
            .at_mut(pkt.l3_off as usize)
            .ok_or(Reason::MALFORMED_IPV4)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut; fields through that pointer.
        unsafe {
            let field = match end {
                End::Source => addr_of_mut!((*ip).src_addr),
                End::Destination => addr_of_mut!((*ip).dst_addr),
            };
            store_u32(field, addr.raw[0]);
            let check = addr_of_mut!((*ip).check);
            let ip_delta = CsumDelta::new().replace_u32(old_addr.raw[0], addr.raw[0]);
            store_u16(check, ip_delta.apply(load_u16(check)));
        }
        delta = delta.replace_u32(old_addr.raw[0], addr.raw[0]);
    } else {
        let ip: *mut Ipv6Hdr = ctx
            .at_mut(pkt.l3_off as usize)
            .ok_or(Reason::MALFORMED_IPV6)?;
        // SAFETY: as above.
        unsafe {
            let field = match end {
                End::Source => addr_of_mut!((*ip).src_addr),
                End::Destination => addr_of_mut!((*ip).dst_addr),
            };
            store_addr6(field, &addr.raw);
        }
        delta = delta.replace_words(&old_addr.raw, &addr.raw);
    }

    if pkt.proto() == Proto::TCP {
        let tcp: *mut TcpHdr = ctx
            .at_mut(pkt.l4_off as usize)
            .ok_or(Reason::MALFORMED_L4)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut.
        unsafe {
            let port = match end {
                End::Source => addr_of_mut!((*tcp).source),
                End::Destination => addr_of_mut!((*tcp).dest),
            };
            store_u16(port, port_be);
            let check = addr_of_mut!((*tcp).check);
            store_u16(check, delta.apply(load_u16(check)));
        }
    } else {
        let udp: *mut UdpHdr = ctx
            .at_mut(pkt.l4_off as usize)
            .ok_or(Reason::MALFORMED_L4)?;
        // SAFETY: the header was bounds-checked by Frame::at_mut.
        unsafe {
            let port = match end {
                End::Source => addr_of_mut!((*udp).src),
                End::Destination => addr_of_mut!((*udp).dst),
            };
            store_u16(port, port_be);
            let check = addr_of_mut!((*udp).check);
            let old = load_u16(check);
            if !(old == 0 && pkt.family() == Family::V4) {
                let new = delta.apply(old);
                store_u16(check, if new == 0 { 0xffff } else { new });
            }
        }
    }

    match end {
        End::Source => {
            pkt.key.src = *addr;
            pkt.key.sport_be = port_be;
        }
        End::Destination => {
            pkt.key.dst = *addr;
            pkt.key.dport_be = port_be;
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
            for f in [
                tcp4(CLIENT4, VIP4, 40000, 80, payload),
                udp4(CLIENT4, VIP4, 40000, 53, payload),
            ] {
                let out = translate(f, End::Destination, b4, 8080);
                assert_checksums(&out);
                assert_eq!(&out[30..34], &BACKEND4);
                assert_eq!(&out[36..38], &8080u16.to_be_bytes());
            }
            for f in [
                tcp6(CLIENT6, VIP6, 40000, 80, payload),
                udp6(CLIENT6, VIP6, 40000, 53, payload),
            ] {
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
        assert_eq!(
            (&out[26..30], &out[34..36]),
            (&VIP4[..], &80u16.to_be_bytes()[..])
        );
        let vip6 = Addr::from_v6_octets(VIP6);
        let out = translate(
            udp6(BACKEND6, CLIENT6, 5353, 40000, b"a"),
            End::Source,
            vip6,
            53,
        );
        assert_checksums(&out);
        assert_eq!(&out[22..38], &VIP6);
    }

    #[test]
    fn udp_ipv4_without_checksum_stays_without() {
        let mut f = udp4(CLIENT4, VIP4, 40000, 53, b"q");
        f.raw_udp_checksum(0);
        let out = translate(f, End::Destination, Addr::from_v4_octets(BACKEND4), 5353);
        assert_eq!(&out[40..42], &[0, 0]);
        assert_checksums(&out);
    }
}
