//! Address family, protocol and address representations shared by both sides.
//!
//! An [`Addr`] is 16 bytes whose memory image is the address in network byte order:
//! an IPv6 address fills all of it, an IPv4 address the first four bytes with the rest
//! zero. The family is always carried next to it, so the two cannot be confused.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytemuck::{Pod, Zeroable};

/// Address family as it crosses into maps (not the kernel's AF_* numbering).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Family(pub u8);

impl Family {
    pub const V4: Self = Self(4);
    pub const V6: Self = Self(6);

    pub const fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    pub const fn name(self) -> &'static str {
        match self.0 {
            4 => "ipv4",
            6 => "ipv6",
            _ => "unknown",
        }
    }
}

/// IP protocol number (IANA), as it crosses into maps.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Proto(pub u8);

impl Proto {
    pub const ICMP: Self = Self(1);
    pub const TCP: Self = Self(6);
    pub const UDP: Self = Self(17);
    pub const ICMPV6: Self = Self(58);

    pub const fn name(self) -> &'static str {
        match self.0 {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            58 => "icmpv6",
            _ => "other",
        }
    }
}

/// An IPv4 or IPv6 address, stored as its network-order bytes (see the module docs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Addr {
    /// Network-order bytes viewed as four words; only byte order in memory is meaningful.
    pub raw: [u32; 4],
}
crate::pod!(Addr);
const _: () = assert!(core::mem::size_of::<Addr>() == 16);

impl Addr {
    pub const fn from_v4_octets(o: [u8; 4]) -> Self {
        Self {
            raw: [u32::from_ne_bytes(o), 0, 0, 0],
        }
    }

    pub const fn from_v6_octets(o: [u8; 16]) -> Self {
        Self {
            raw: [
                u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
                u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
                u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
                u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
            ],
        }
    }

    pub const fn from_ip(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self::from_v4_octets(a.octets()),
            IpAddr::V6(a) => Self::from_v6_octets(a.octets()),
        }
    }

    pub const fn octets(&self) -> [u8; 16] {
        let a = self.raw[0].to_ne_bytes();
        let b = self.raw[1].to_ne_bytes();
        let c = self.raw[2].to_ne_bytes();
        let d = self.raw[3].to_ne_bytes();
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    /// The address as a `core::net` value, given the family it was stored with.
    pub fn to_ip(&self, family: Family) -> IpAddr {
        let o = self.octets();
        if family.0 == Family::V4.0 {
            IpAddr::V4(Ipv4Addr::new(o[0], o[1], o[2], o[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        let v4: IpAddr = "10.96.0.10".parse().unwrap();
        let v6: IpAddr = "fd00:96::10".parse().unwrap();
        assert_eq!(Addr::from_ip(&v4).to_ip(Family::V4), v4);
        assert_eq!(Addr::from_ip(&v6).to_ip(Family::V6), v6);
        // IPv4 occupies the first four bytes in network order, the rest stays zero.
        assert_eq!(Addr::from_ip(&v4).octets()[..5], [10, 96, 0, 10, 0]);
    }
}
