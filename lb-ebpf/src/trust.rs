//! What a packet claims is checked before it changes state. A passive-health signal (a
//! RST refusing a connection, an ICMP destination unreachable about a flow) ejects a
//! backend after a few of them, so anyone who can send a packet with a backend's source
//! address could otherwise eject backends at will. A signal counts only when:
//!
//! - it arrived on the interface the backend is reached through (a FIB lookup of the
//!   backend's address from that interface leads back out of it): a client spoofing a
//!   backend from its own side of the node is not believed;
//! - its checksum is right (the TCP checksum of a RST over the pseudo-header; the ICMP
//!   checksum over the whole message, with the pseudo-header for ICMPv6);
//! - for TCP, it answers the SYN it claims to: a RST must acknowledge exactly the SYN's
//!   sequence number + 1 (RFC 9293 3.10.7.3: the only acceptable RST in SYN-SENT), and an
//!   ICMP error must quote that sequence number. An off-path sender does not know it.
//!
//! UDP has no sequence number: an ICMP error about a UDP flow is believed on the first
//! two checks. Off the per-packet path: only RSTs and ICMP errors get here.

use aya_ebpf::{
    bindings::{BPF_FIB_LOOKUP_SKIP_NEIGH, bpf_fib_lookup as FibParams},
    helpers::generated::bpf_fib_lookup,
};
use lb_common::{
    Addr, Family,
    csum::fold,
    maps::{CT_F_SYN_SEQ, CtValue},
};

use crate::{
    frame::{CHUNK, Frame},
    fwd::Zeroed as _,
    parse::{Packet, TCP_ACK},
};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
/// The longest message whose checksum is verified (an ICMPv6 error quotes at most 1232
/// bytes, an ICMPv4 one usually 548): longer ones are not believed.
const MAX_SUMMED: usize = 24 * CHUNK;
const IPPROTO_ICMPV6: u8 = 58;

/// Where a packet came in, as the checks need it: XDP on node devices, tc on pods'
/// interfaces.
pub trait Origin: Frame {
    /// The program's context, for helpers.
    fn raw(&self) -> *mut core::ffi::c_void;
    /// The interface the packet arrived on.
    fn ingress(&self) -> u32;
    /// Whether L4 checksums are complete here. Not on a pod's interface: a pod's stack
    /// leaves TX checksums partial (offload), and its packets are its own kernel's, not
    /// the wire's.
    fn checksums_complete(&self) -> bool;
}

impl Origin for aya_ebpf::programs::XdpContext {
    #[inline(always)]
    fn raw(&self) -> *mut core::ffi::c_void {
        self.ctx.cast()
    }

    #[inline(always)]
    fn ingress(&self) -> u32 {
        // SAFETY: the context the kernel passed.
        unsafe { (*self.ctx).ingress_ifindex }
    }

    #[inline(always)]
    fn checksums_complete(&self) -> bool {
        true
    }
}

impl Origin for aya_ebpf::programs::TcContext {
    #[inline(always)]
    fn raw(&self) -> *mut core::ffi::c_void {
        self.skb.skb.cast()
    }

    #[inline(always)]
    fn ingress(&self) -> u32 {
        // SAFETY: the socket buffer the kernel passed.
        unsafe { (*self.skb.skb).ifindex }
    }

    #[inline(always)]
    fn checksums_complete(&self) -> bool {
        false
    }
}

/// Whether the packet came in on the interface `backend` is reached through.
#[inline(always)]
pub fn via_backend_interface(ctx: &impl Origin, backend: &Addr, family: Family) -> bool {
    via_interface(ctx.raw(), ctx.ingress(), backend, family)
}

/// The FIB lookup of [`via_backend_interface`]: not inlined, its 64-byte parameter block
/// gets a frame of its own.
#[inline(never)]
fn via_interface(
    ctx: *mut core::ffi::c_void,
    ingress: u32,
    backend: &Addr,
    family: Family,
) -> bool {
    let mut fib = FibParams::default_zeroed();
    fib.ifindex = ingress;
    if family == Family::V4 {
        fib.family = AF_INET;
        fib.__bindgen_anon_4.ipv4_dst = backend.raw[0];
    } else {
        fib.family = AF_INET6;
        fib.__bindgen_anon_4.ipv6_dst = backend.raw;
    }
    // SAFETY: the program's context and a valid, writable parameter block. The neighbour
    // is not needed (only the egress interface is), hence SKIP_NEIGH.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx,
            &mut fib,
            size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_SKIP_NEIGH,
        )
    };
    rc == BPF_FIB_LKUP_RET_SUCCESS && fib.ifindex == ingress
}

/// Whether a RST (`pkt`) acknowledges the SYN that opened its flow (`forward`: the
/// flow's forward entry).
#[inline(always)]
pub fn answers_syn(forward: &CtValue, pkt: &Packet) -> bool {
    forward.flags & CT_F_SYN_SEQ != 0
        && pkt.has_tcp_flag(TCP_ACK)
        && u32::from_be(pkt.tcp_ack_be) == u32::from_be(forward.syn_seq_be).wrapping_add(1)
}

/// Whether an ICMP error (`pkt`) quotes the SYN that opened its flow.
#[inline(always)]
pub fn quotes_syn(forward: &CtValue, pkt: &Packet) -> bool {
    forward.flags & CT_F_SYN_SEQ != 0 && pkt.tcp_seq_be == forward.syn_seq_be
}

/// Whether the checksum of the L4 message `pkt` describes (TCP, or the outer ICMP
/// message of an ICMP error) is right. `pseudo` adds the IP pseudo-header (TCP,
/// ICMPv6); `proto` is the protocol it names.
#[inline(never)]
pub fn checksum_ok(ctx: &impl Frame, pkt: &Packet, pseudo: bool, proto: u8) -> bool {
    let (l3, l4) = (pkt.l3_off as usize, pkt.l4_off as usize);
    let ip_len = pkt.ip_len as usize;
    if l4 < l3 || ip_len < l4 - l3 {
        return false;
    }
    let len = ip_len - (l4 - l3);
    if len > MAX_SUMMED {
        return false;
    }
    let mut sum: u64 = 0;
    if pseudo {
        // Source and destination as they lie in the packet: for an ICMP error `key` holds
        // the quoted tuple reversed, which is the outer one (see icmp.rs).
        let (s, d) = (pkt.key.src.raw, pkt.key.dst.raw);
        let words = if pkt.family() == Family::V4 { 1 } else { 4 };
        for i in 0..4 {
            if i < words {
                sum += (s[i] & 0xffff) as u64 + (s[i] >> 16) as u64;
                sum += (d[i] & 0xffff) as u64 + (d[i] >> 16) as u64;
            }
        }
        // Length and protocol, as 16-bit words in network order (the same sum for the
        // IPv4 and IPv6 pseudo-headers).
        sum += u16::from_ne_bytes((len as u16).to_be_bytes()) as u64;
        sum += u16::from_ne_bytes([0, proto]) as u64;
    }
    for chunk in 0..MAX_SUMMED / CHUNK {
        let done = chunk * CHUNK;
        if done >= len {
            break;
        }
        let n = if len - done < CHUNK {
            len - done
        } else {
            CHUNK
        };
        // Zeroed each time: a short last chunk is summed with zero padding.
        let mut buf = [0u8; CHUNK];
        if !ctx.load(l4 + done, &mut buf, n) {
            return false;
        }
        // A trailing odd byte is summed padded with zero, as the checksum defines.
        for w in 0..CHUNK / 2 {
            sum += u16::from_ne_bytes([buf[2 * w], buf[2 * w + 1]]) as u64;
        }
    }
    fold(sum) == 0xffff
}

/// [`checksum_ok`] for the outer ICMP message of an ICMP error.
#[inline(always)]
pub fn icmp_checksum_ok(ctx: &impl Frame, pkt: &Packet) -> bool {
    if pkt.family() == Family::V4 {
        checksum_ok(ctx, pkt, false, 0)
    } else {
        checksum_ok(ctx, pkt, true, IPPROTO_ICMPV6)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use xlb_tests::packet::*;

    use super::*;
    use crate::{frame::Bytes, parse};

    fn parsed(frame: &mut [u8]) -> Packet {
        let mut pkt = Packet::EMPTY;
        assert_eq!(parse::parse_into(&Bytes(frame), &mut pkt), u32::MAX);
        pkt
    }

    fn addrs(v6: bool) -> (IpAddr, IpAddr) {
        if v6 {
            ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap())
        } else {
            ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap())
        }
    }

    #[test]
    fn tcp_checksums_are_verified_with_the_pseudo_header() {
        for v6 in [false, true] {
            let (a, b) = addrs(v6);
            // Odd lengths and more than one chunk.
            for payload in [&b""[..], b"x", &[7u8; 150][..]] {
                let mut f = frame(true, a, b, 8080, 40000, payload);
                f.set_tcp_flags(tcp::RST | tcp::ACK)
                    .set_tcp_ack(TCP_SEQ + 1);
                let pkt = parsed(&mut f);
                assert!(checksum_ok(&Bytes(&mut f), &pkt, true, 6), "v6={v6}");
                // The last byte: payload, or the header's urgent pointer.
                let last = f.len() - 1;
                f[last] ^= 0x40;
                let pkt = parsed(&mut f);
                assert!(!checksum_ok(&Bytes(&mut f), &pkt, true, 6), "v6={v6}");
            }
        }
    }

    #[test]
    fn icmp_checksums_are_verified() {
        for v6 in [false, true] {
            let (a, b) = addrs(v6);
            // A datagram from b to a, and a's port unreachable about it.
            for payload in [&b"q"[..], &[1u8; 300][..]] {
                let quoted = frame(false, b, a, 40000, 5353, payload);
                let mut f = unreachable_from(a, b, &quoted);
                let pkt = parsed(&mut f);
                assert!(pkt.icmp_unreachable, "v6={v6}");
                assert!(icmp_checksum_ok(&Bytes(&mut f), &pkt), "v6={v6}");
                let last = f.len() - 1;
                f[last] ^= 1;
                let pkt = parsed(&mut f);
                assert!(!icmp_checksum_ok(&Bytes(&mut f), &pkt), "v6={v6}");
            }
        }
    }
}
