//! Test packets: builders for Ethernet frames, accessors, and checksum verification with
//! etherparse (an implementation independent of xlb's incremental checksum code).
//! Used by the eBPF crate's host unit tests and by the BPF_PROG_TEST_RUN packet tables.

use std::net::IpAddr;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

pub const CLIENT4: [u8; 4] = [10, 200, 0, 2];
pub const VIP4: [u8; 4] = [10, 96, 0, 10];
pub const CLIENT6: [u8; 16] = [0xfd, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const VIP6: [u8; 16] = [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
pub const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
pub const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

/// TCP flags (the byte at offset 13 of the header).
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// The sequence number of every TCP frame built here.
pub const TCP_SEQ: u32 = 1000;

pub fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, TCP_SEQ, 64000)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(src, dst, 64)
        .tcp(sport, dport, TCP_SEQ, 64000)
        .ack(1);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

pub fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv6(src, dst, 64)
        .udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// Inserts an 802.1Q tag after the MAC addresses.
pub fn vlan(frame: &[u8], vid: u16) -> Vec<u8> {
    let mut v = frame[..12].to_vec();
    v.extend_from_slice(&[0x81, 0x00]);
    v.extend_from_slice(&vid.to_be_bytes());
    v.extend_from_slice(&frame[12..]);
    v
}

/// Asserts that every checksum of an Ethernet frame is correct, recomputing from scratch.
pub fn assert_checksums(frame: &[u8]) {
    let p = SlicedPacket::from_ethernet(frame).expect("parsable frame");
    let payload_of = |t: &TransportSlice| -> Vec<u8> {
        match t {
            TransportSlice::Tcp(t) => t.payload().to_vec(),
            TransportSlice::Udp(u) => u.payload().to_vec(),
            _ => vec![],
        }
    };
    match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(t)) => {
            let h = ip.header().to_header();
            assert_eq!(
                h.calc_header_checksum(),
                h.header_checksum,
                "IPv4 header checksum"
            );
            let payload = payload_of(t);
            match t {
                TransportSlice::Tcp(tcp) => {
                    let want = tcp.to_header().calc_checksum_ipv4(&h, &payload).unwrap();
                    assert_eq!(tcp.checksum(), want, "TCP/IPv4 checksum");
                }
                TransportSlice::Udp(udp) => {
                    if udp.checksum() != 0 {
                        let want = udp.to_header().calc_checksum_ipv4(&h, &payload).unwrap();
                        assert_eq!(udp.checksum(), want, "UDP/IPv4 checksum");
                    }
                }
                _ => panic!("not TCP/UDP"),
            }
        }
        (Some(NetSlice::Ipv6(ip)), Some(t)) => {
            let h = ip.header().to_header();
            let payload = payload_of(t);
            match t {
                TransportSlice::Tcp(tcp) => {
                    let want = tcp.to_header().calc_checksum_ipv6(&h, &payload).unwrap();
                    assert_eq!(tcp.checksum(), want, "TCP/IPv6 checksum");
                }
                TransportSlice::Udp(udp) => {
                    let want = udp.to_header().calc_checksum_ipv6(&h, &payload).unwrap();
                    assert_ne!(udp.checksum(), 0, "UDP/IPv6 must carry a checksum");
                    assert_eq!(udp.checksum(), want, "UDP/IPv6 checksum");
                }
                _ => panic!("not TCP/UDP"),
            }
        }
        other => panic!("unexpected frame {other:?}"),
    }
}

/// A TCP or UDP frame between two addresses of the same family (the builder for tables).
pub fn frame(
    tcp: bool,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    match (src, dst, tcp) {
        (IpAddr::V4(s), IpAddr::V4(d), true) => tcp4(s.octets(), d.octets(), sport, dport, payload),
        (IpAddr::V4(s), IpAddr::V4(d), false) => {
            udp4(s.octets(), d.octets(), sport, dport, payload)
        }
        (IpAddr::V6(s), IpAddr::V6(d), true) => tcp6(s.octets(), d.octets(), sport, dport, payload),
        (IpAddr::V6(s), IpAddr::V6(d), false) => {
            udp6(s.octets(), d.octets(), sport, dport, payload)
        }
        _ => panic!("mixed address families"),
    }
}

/// What the tests look at in a frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
}

/// Reads the addresses, ports and TTL of a TCP/UDP frame.
pub fn summary(frame: &[u8]) -> Summary {
    let p = SlicedPacket::from_ethernet(frame).expect("parsable frame");
    let (src_mac, dst_mac) = match &p.link {
        Some(etherparse::LinkSlice::Ethernet2(e)) => (e.source(), e.destination()),
        other => panic!("not Ethernet: {other:?}"),
    };
    let (src, dst, ttl) = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            (
                IpAddr::from(h.source()),
                IpAddr::from(h.destination()),
                h.ttl(),
            )
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            (
                IpAddr::from(h.source()),
                IpAddr::from(h.destination()),
                h.hop_limit(),
            )
        }
        other => panic!("not IP: {other:?}"),
    };
    let (sport, dport) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
        other => panic!("not TCP/UDP: {other:?}"),
    };
    Summary {
        src_mac,
        dst_mac,
        src,
        dst,
        sport,
        dport,
        ttl,
    }
}

/// Edits of a built frame (Ethernet, at most one 802.1Q tag, IPv4 or IPv6, TCP or UDP),
/// by field rather than by byte offset. Each edit keeps every checksum right unless its
/// name says otherwise (`raw_*`: for frames meant to be broken).
pub trait Mutate {
    /// Offset of the IP header.
    fn l3(&self) -> usize;
    fn is_ipv4(&self) -> bool;
    /// Offset of the TCP/UDP header (IPv6: right after the fixed header).
    fn l4(&self) -> usize;
    fn set_ethertype(&mut self, ether_type: u16) -> &mut Self;
    fn set_ttl(&mut self, ttl: u8) -> &mut Self;
    /// The IPv4 protocol or the IPv6 next header.
    fn set_protocol(&mut self, proto: u8) -> &mut Self;
    /// IPv4 fragment flags and offset (in 8-byte units).
    fn set_fragment(&mut self, more: bool, offset: u16) -> &mut Self;
    /// The IPv4 total length (for frames cut short on purpose).
    fn set_total_length(&mut self, len: u16) -> &mut Self;
    /// The IPv4 IHL without touching the rest of the header (a broken header).
    fn raw_ihl(&mut self, ihl: u8) -> &mut Self;
    fn set_tcp_flags(&mut self, flags: u8) -> &mut Self;
    /// The TCP acknowledgement number (frames are built with sequence number
    /// [`TCP_SEQ`]).
    fn set_tcp_ack(&mut self, ack: u32) -> &mut Self;
    /// The TCP checksum field as given (a broken checksum).
    fn raw_tcp_checksum(&mut self, check: u16) -> &mut Self;
    /// The IP version nibble (a broken header).
    fn raw_version(&mut self, version: u8) -> &mut Self;
    /// The TCP data offset, in 4-byte words (a broken header).
    fn raw_tcp_data_offset(&mut self, words: u8) -> &mut Self;
    /// The UDP checksum field as given (0: none, which IPv4 allows).
    fn raw_udp_checksum(&mut self, check: u16) -> &mut Self;
    /// The IPv6 payload length.
    fn set_payload_length(&mut self, len: u16) -> &mut Self;
    /// Grows the IPv4 header by `len` bytes of NOP options (a multiple of 4).
    fn add_ipv4_options(&mut self, len: usize) -> &mut Self;
    /// Inserts IPv6 extension headers before the L4 header: (next-header value naming the
    /// header, its bytes, already sized; their next-header bytes are filled in).
    fn add_ipv6_extensions(&mut self, exts: &[(u8, Vec<u8>)]) -> &mut Self;
    /// Recomputes the IPv4 header checksum.
    fn fix_ipv4_checksum(&mut self) -> &mut Self;
    /// Recomputes the TCP/UDP checksum over the pseudo-header and the segment.
    fn fix_l4_checksum(&mut self) -> &mut Self;
}

impl Mutate for Vec<u8> {
    fn l3(&self) -> usize {
        if self[12..14] == [0x81, 0x00] { 18 } else { 14 }
    }

    fn is_ipv4(&self) -> bool {
        self[self.l3()] >> 4 == 4
    }

    fn l4(&self) -> usize {
        let l3 = self.l3();
        if self.is_ipv4() {
            l3 + (self[l3] & 0x0f) as usize * 4
        } else {
            l3 + 40
        }
    }

    fn set_ethertype(&mut self, ether_type: u16) -> &mut Self {
        let at = self.l3() - 2;
        self[at..at + 2].copy_from_slice(&ether_type.to_be_bytes());
        self
    }

    fn set_ttl(&mut self, ttl: u8) -> &mut Self {
        let l3 = self.l3();
        if self.is_ipv4() {
            self[l3 + 8] = ttl;
            self.fix_ipv4_checksum()
        } else {
            self[l3 + 7] = ttl;
            self
        }
    }

    fn set_protocol(&mut self, proto: u8) -> &mut Self {
        let l3 = self.l3();
        if self.is_ipv4() {
            self[l3 + 9] = proto;
            self.fix_ipv4_checksum()
        } else {
            self[l3 + 6] = proto;
            self
        }
    }

    fn set_fragment(&mut self, more: bool, offset: u16) -> &mut Self {
        let l3 = self.l3();
        let word = (u16::from(more) << 13) | (offset & 0x1fff);
        self[l3 + 6..l3 + 8].copy_from_slice(&word.to_be_bytes());
        self.fix_ipv4_checksum()
    }

    fn set_total_length(&mut self, len: u16) -> &mut Self {
        let l3 = self.l3();
        self[l3 + 2..l3 + 4].copy_from_slice(&len.to_be_bytes());
        self.fix_ipv4_checksum()
    }

    fn raw_ihl(&mut self, ihl: u8) -> &mut Self {
        let l3 = self.l3();
        self[l3] = 0x40 | (ihl & 0x0f);
        self
    }

    fn set_tcp_flags(&mut self, flags: u8) -> &mut Self {
        let l4 = self.l4();
        self[l4 + 13] = flags;
        self.fix_l4_checksum()
    }

    fn set_tcp_ack(&mut self, ack: u32) -> &mut Self {
        let l4 = self.l4();
        self[l4 + 8..l4 + 12].copy_from_slice(&ack.to_be_bytes());
        self.fix_l4_checksum()
    }

    fn raw_tcp_checksum(&mut self, check: u16) -> &mut Self {
        let l4 = self.l4();
        self[l4 + 16..l4 + 18].copy_from_slice(&check.to_be_bytes());
        self
    }

    fn raw_version(&mut self, version: u8) -> &mut Self {
        let l3 = self.l3();
        self[l3] = (version << 4) | (self[l3] & 0x0f);
        self
    }

    fn raw_tcp_data_offset(&mut self, words: u8) -> &mut Self {
        let l4 = self.l4();
        self[l4 + 12] = (words << 4) | (self[l4 + 12] & 0x0f);
        self
    }

    fn raw_udp_checksum(&mut self, check: u16) -> &mut Self {
        let l4 = self.l4();
        self[l4 + 6..l4 + 8].copy_from_slice(&check.to_be_bytes());
        self
    }

    fn set_payload_length(&mut self, len: u16) -> &mut Self {
        let l3 = self.l3();
        self[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
        self
    }

    fn add_ipv4_options(&mut self, len: usize) -> &mut Self {
        assert!(
            len.is_multiple_of(4) && len <= 40,
            "IPv4 options come in words, at most 40 bytes"
        );
        let (l3, l4) = (self.l3(), self.l4());
        self.splice(l4..l4, std::iter::repeat_n(1u8, len));
        let ihl = (self[l3] & 0x0f) + (len / 4) as u8;
        self[l3] = 0x40 | ihl;
        let total = u16::from_be_bytes([self[l3 + 2], self[l3 + 3]]) + len as u16;
        self.set_total_length(total)
    }

    fn add_ipv6_extensions(&mut self, exts: &[(u8, Vec<u8>)]) -> &mut Self {
        let (l3, l4) = (self.l3(), self.l4());
        let mut next = self[l3 + 6];
        let mut inserted = Vec::new();
        for (kind, body) in exts.iter().rev() {
            let mut h = body.clone();
            h[0] = next;
            next = *kind;
            inserted.splice(0..0, h);
        }
        self[l3 + 6] = next;
        let len = u16::from_be_bytes([self[l3 + 4], self[l3 + 5]]) + inserted.len() as u16;
        self.set_payload_length(len);
        self.splice(l4..l4, inserted);
        self
    }

    fn fix_ipv4_checksum(&mut self) -> &mut Self {
        let l3 = self.l3();
        let ihl = (self[l3] & 0x0f) as usize * 4;
        let end = (l3 + ihl.max(20)).min(self.len());
        self[l3 + 10..l3 + 12].copy_from_slice(&[0, 0]);
        let sum = lb_common::csum::checksum(&self[l3..end], 0);
        self[l3 + 10..l3 + 12].copy_from_slice(&sum.to_ne_bytes());
        self
    }

    fn fix_l4_checksum(&mut self) -> &mut Self {
        let (l3, l4) = (self.l3(), self.l4());
        let (proto, end, mut pseudo) = if self.is_ipv4() {
            let total = u16::from_be_bytes([self[l3 + 2], self[l3 + 3]]) as usize;
            let mut p = self[l3 + 12..l3 + 20].to_vec();
            p.extend_from_slice(&[0, self[l3 + 9]]);
            (self[l3 + 9], l3 + total, p)
        } else {
            let payload = u16::from_be_bytes([self[l3 + 4], self[l3 + 5]]) as usize;
            let mut p = self[l3 + 8..l3 + 40].to_vec();
            p.extend_from_slice(&[0, self[l3 + 6]]);
            (self[l3 + 6], l3 + 40 + payload, p)
        };
        let end = end.min(self.len());
        pseudo.extend_from_slice(&((end - l4) as u16).to_be_bytes());
        let at = l4 + if proto == 6 { 16 } else { 6 };
        self[at..at + 2].copy_from_slice(&[0, 0]);
        let mut sum =
            lb_common::csum::checksum(&self[l4..end], lb_common::csum::partial_sum(&pseudo));
        if proto == 17 && sum == 0 {
            sum = 0xffff;
        }
        self[at..at + 2].copy_from_slice(&sum.to_ne_bytes());
        self
    }
}

/// An ICMP destination unreachable from `from` quoting `quoted` (an Ethernet frame).
pub fn unreachable_from(from: IpAddr, to: IpAddr, quoted: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B);
    let inner = &quoted[14..];
    let mut v = Vec::new();
    match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => b
            .ipv4(s.octets(), d.octets(), 64)
            .icmpv4_raw(3, 3, [0; 4])
            .write(&mut v, inner),
        (IpAddr::V6(s), IpAddr::V6(d)) => b
            .ipv6(s.octets(), d.octets(), 64)
            .icmpv6_raw(1, 4, [0; 4])
            .write(&mut v, inner),
        _ => panic!("mixed families"),
    }
    .unwrap();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_keep_checksums_right() {
        for mut f in [
            tcp4(CLIENT4, VIP4, 1, 80, b"data"),
            udp4(CLIENT4, VIP4, 1, 53, b"q"),
            tcp6(CLIENT6, VIP6, 1, 80, b"data"),
            vlan(&tcp4(CLIENT4, VIP4, 1, 80, b""), 7),
        ] {
            f.set_ttl(9);
            if f[f.l3() + 9] == 6 || f[f.l3() + 6] == 6 {
                f.set_tcp_flags(0x10);
            }
            if f.is_ipv4() {
                f.set_fragment(false, 0);
            }
            assert_checksums(&f);
            assert_eq!(summary(&f).ttl, 9);
        }
    }
}
