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

pub fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(MAC_A, MAC_B)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 64000)
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
        .tcp(sport, dport, 1000, 64000)
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
