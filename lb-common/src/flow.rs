//! The flow hash and the Maglev slot choice, computed identically by kernel and agent.
//!
//! The datapath hashes a new flow's 5-tuple and indexes the service's Maglev table with it.
//! The agent runs the very same code to predict, explain (`xlb trace`) and test that choice.
//! The hash is MurmurHash3 (x86, 32-bit) over fixed-size words: no loops over variable
//! lengths, so it stays cheap and verifier-friendly in BPF.
//!
//! The inputs are the raw, network-order words of the addresses and ports. An IPv4 flow
//! hashes its zero-extended address words like an IPv6 one; the family is mixed in so the
//! two never collide by construction.

use crate::{Addr, Family, Proto};

/// Seed of the flow hash. Changing it re-shuffles every new-flow decision, so it is fixed.
pub const FLOW_HASH_SEED: u32 = 0x786c_6231;
/// Seeds of the two Maglev permutation hashes (offset and skip) of a backend's name.
pub const MAGLEV_OFFSET_SEED: u32 = 0x6d61_676f;
pub const MAGLEV_SKIP_SEED: u32 = 0x6d61_6773;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// One MurmurHash3 body round.
#[inline(always)]
pub const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

/// MurmurHash3 finalisation (avalanche) with the input length in bytes.
#[inline(always)]
pub const fn finish(h: u32, len: u32) -> u32 {
    let mut h = h ^ len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The flow hash of a (client, service) 5-tuple in the forward direction.
///
/// `sport_be`/`dport_be` are the ports exactly as they lie in the packet.
#[inline(always)]
pub const fn flow_hash(
    family: Family,
    src: &Addr,
    dst: &Addr,
    sport_be: u16,
    dport_be: u16,
    proto: Proto,
) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = mix(h, src.raw[0]);
    h = mix(h, src.raw[1]);
    h = mix(h, src.raw[2]);
    h = mix(h, src.raw[3]);
    h = mix(h, dst.raw[0]);
    h = mix(h, dst.raw[1]);
    h = mix(h, dst.raw[2]);
    h = mix(h, dst.raw[3]);
    h = mix(h, ((sport_be as u32) << 16) | dport_be as u32);
    h = mix(h, ((family.0 as u32) << 8) | proto.0 as u32);
    finish(h, 40)
}

/// The hash used for `sessionAffinity: ClientIP`: the client address alone.
#[inline(always)]
pub const fn client_hash(family: Family, src: &Addr) -> u32 {
    let mut h = FLOW_HASH_SEED;
    h = mix(h, src.raw[0]);
    h = mix(h, src.raw[1]);
    h = mix(h, src.raw[2]);
    h = mix(h, src.raw[3]);
    h = mix(h, family.0 as u32);
    finish(h, 20)
}

/// The hash a socket's new flow is placed by (socket-level translation, at connect or
/// sendmsg time): the source port is not chosen yet, so the socket cookie stands in for
/// the client's address and port. The same mixing as [`flow_hash`], over the VIP and
/// port.
#[inline(always)]
pub const fn socket_hash(
    family: Family,
    cookie: u64,
    dst: &Addr,
    dport_be: u16,
    proto: Proto,
) -> u32 {
    let src = Addr {
        raw: [cookie as u32, (cookie >> 32) as u32, 0, 0],
    };
    flow_hash(family, &src, dst, 0, dport_be, proto)
}

/// The Maglev slot for a hash in a table of `size` slots (0 when the table is empty).
#[inline(always)]
pub const fn maglev_slot(hash: u32, size: u32) -> u32 {
    if size == 0 { 0 } else { hash % size }
}

/// MurmurHash3 (x86, 32-bit) of a byte string, for the agent's permutation hashing.
pub fn murmur3(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h = mix(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, b) in tail.iter().enumerate() {
            k |= (*b as u32) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    finish(h, data.len() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(murmur3(b"", 0), 0);
        assert_eq!(murmur3(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3(b"hello", 0), 0x248b_fa47);
        assert_eq!(murmur3(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3(b"The quick brown fox jumps over the lazy dog", 0x9747_b28c),
            0x2fa8_26cd
        );
    }

    #[test]
    fn flow_hash_spreads_source_ports_evenly() {
        // 100k flows that differ only in the source port, into 101 buckets: each bucket
        // should be within 10% of fair.
        let src = Addr::from_v4_octets([10, 200, 0, 2]);
        let dst = Addr::from_v4_octets([10, 96, 0, 10]);
        let buckets = 101u32;
        let mut counts = [0u32; 101];
        let n = 101_000u32;
        for i in 0..n {
            let sport = ((i % 60000) as u16 + 1024).to_be();
            let h = flow_hash(
                Family::V4,
                &src,
                &dst,
                sport ^ ((i / 60000) as u16),
                80u16.to_be(),
                Proto::TCP,
            );
            counts[maglev_slot(h, buckets) as usize] += 1;
        }
        let fair = n / buckets;
        for c in counts {
            assert!(c.abs_diff(fair) < fair / 10, "bucket {c} vs fair {fair}");
        }
    }

    #[test]
    fn flow_hash_depends_on_every_field() {
        let a = Addr::from_v6_octets([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let b = Addr::from_v6_octets([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let base = flow_hash(Family::V6, &a, &b, 1, 2, Proto::TCP);
        assert_ne!(base, flow_hash(Family::V6, &b, &a, 1, 2, Proto::TCP));
        assert_ne!(base, flow_hash(Family::V6, &a, &b, 2, 1, Proto::TCP));
        assert_ne!(base, flow_hash(Family::V6, &a, &b, 1, 2, Proto::UDP));
        assert_ne!(base, flow_hash(Family::V4, &a, &b, 1, 2, Proto::TCP));
    }

    #[test]
    fn empty_table_has_slot_zero() {
        assert_eq!(maglev_slot(12345, 0), 0);
        assert_eq!(maglev_slot(12345, 101), 12345 % 101);
    }
}
