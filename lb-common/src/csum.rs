//! Incremental Internet checksum updates (RFC 1071 sums, RFC 1624 updates).
//!
//! The datapath rewrites addresses and ports and must fix the IPv4 header checksum and the
//! TCP/UDP checksum without summing the whole packet. Every value here is taken *as it lies
//! in memory* (network byte order, read with native loads): the ones'-complement sum is
//! byte-order independent as long as the checksum field is read and written the same way.

/// Accumulates the changes to a checksummed region, then applies them to a checksum.
///
/// For each replaced 16-bit word m -> m', RFC 1624 eq. 3 gives HC' = ~(~HC + ~m + m').
/// The sum of `~m + m'` terms is kept in a 64-bit accumulator and folded once at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CsumDelta {
    acc: u64,
}

impl CsumDelta {
    pub const fn new() -> Self {
        Self { acc: 0 }
    }

    /// Records that the 16-bit word `old` became `new`.
    #[inline(always)]
    pub const fn replace_u16(mut self, old: u16, new: u16) -> Self {
        self.acc += (!old) as u64 + new as u64;
        self
    }

    /// Records that the 32-bit word `old` became `new` (two adjacent 16-bit words).
    #[inline(always)]
    pub const fn replace_u32(mut self, old: u32, new: u32) -> Self {
        self.acc += (!old >> 16) as u64 + (!old & 0xffff) as u64;
        self.acc += (new >> 16) as u64 + (new & 0xffff) as u64;
        self
    }

    /// Records that a 128-bit (IPv6-sized) field `old` became `new`.
    #[inline(always)]
    pub const fn replace_words(self, old: &[u32; 4], new: &[u32; 4]) -> Self {
        self.replace_u32(old[0], new[0])
            .replace_u32(old[1], new[1])
            .replace_u32(old[2], new[2])
            .replace_u32(old[3], new[3])
    }

    /// Returns `check` updated for every recorded change.
    #[inline(always)]
    pub const fn apply(self, check: u16) -> u16 {
        let sum = (!check) as u64 + self.acc;
        !fold(sum)
    }
}

/// Folds a ones'-complement sum held in 64 bits down to 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u64) -> u16 {
    // Four rounds suffice for any 64-bit input: each halves the width of the carry.
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The full Internet checksum of `data` (plus an initial partial sum), for tests and tools.
///
/// Words are read in memory order with native loads, matching [`CsumDelta`].
pub fn checksum(data: &[u8], initial: u64) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_ne_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += u16::from_ne_bytes([*last, 0]) as u64;
    }
    !fold(sum)
}

/// Partial sum of a byte slice (not complemented, not folded), for pseudo-headers.
pub fn partial_sum(data: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_ne_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += u16::from_ne_bytes([*last, 0]) as u64;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20-byte IPv4 header (checksum field zeroed at bytes 10..12).
    fn ipv4_header(src: [u8; 4], dst: [u8; 4]) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&60u16.to_be_bytes());
        h[8] = 64;
        h[9] = 6;
        h[12..16].copy_from_slice(&src);
        h[16..20].copy_from_slice(&dst);
        let c = checksum(&h, 0);
        h[10..12].copy_from_slice(&c.to_ne_bytes());
        h
    }

    #[test]
    fn full_checksum_of_valid_header_verifies_to_zero() {
        let h = ipv4_header([10, 0, 0, 1], [10, 96, 0, 10]);
        assert_eq!(checksum(&h, 0), 0);
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        let before = ipv4_header([10, 0, 0, 1], [10, 96, 0, 10]);
        let after = ipv4_header([10, 0, 0, 1], [192, 168, 7, 200]);
        let old = u32::from_ne_bytes([10, 96, 0, 10]);
        let new = u32::from_ne_bytes([192, 168, 7, 200]);
        let check = u16::from_ne_bytes([before[10], before[11]]);
        let updated = CsumDelta::new().replace_u32(old, new).apply(check);
        assert_eq!(updated.to_ne_bytes(), [after[10], after[11]]);
    }

    #[test]
    fn incremental_update_over_many_random_changes() {
        // A deterministic pseudo-random walk over headers, ports and addresses.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..10_000 {
            let mut data = [0u8; 40];
            for b in data.iter_mut() {
                *b = next() as u8;
            }
            let check = checksum(&data, 0);
            // Replace a 32-bit word at offset 8 and a 16-bit word at offset 30.
            let old32 = u32::from_ne_bytes(data[8..12].try_into().unwrap());
            let new32 = next() as u32;
            let old16 = u16::from_ne_bytes(data[30..32].try_into().unwrap());
            let new16 = next() as u16;
            data[8..12].copy_from_slice(&new32.to_ne_bytes());
            data[30..32].copy_from_slice(&new16.to_ne_bytes());
            let incremental = CsumDelta::new()
                .replace_u32(old32, new32)
                .replace_u16(old16, new16)
                .apply(check);
            // Both 0x0000 and 0xffff are valid encodings of the same sum; compare sums.
            let full = checksum(&data, 0);
            assert_eq!(
                fold(incremental as u64) % 0xffff,
                fold(full as u64) % 0xffff
            );
        }
    }

    #[test]
    fn replace_words_equals_four_u32_replacements() {
        let old = [1u32, 2, 3, 0xffff_ffff];
        let new = [0xdead_beefu32, 0, 7, 9];
        let a = CsumDelta::new().replace_words(&old, &new).apply(0x1234);
        let mut d = CsumDelta::new();
        for i in 0..4 {
            d = d.replace_u32(old[i], new[i]);
        }
        assert_eq!(a, d.apply(0x1234));
    }
}
