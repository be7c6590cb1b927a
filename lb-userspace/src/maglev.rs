//! Maglev lookup tables (Eisenbud et al., NSDI 2016), with weights.
//!
//! Each backend walks its own permutation of the M slots (an offset and a skip derived from
//! a hash of its identity) and claims the next free slot on its turn, until the table is
//! full. Every backend therefore owns M/N slots (+-1) and removing one backend reassigns
//! mostly that backend's slots. Weights scale the turns: a backend of weight w claims a
//! slot on w of every `max_weight` rounds.
//!
//! The identity hashed is the backend's address, port and protocol, so the same backend set
//! gives the same table on every node and after every restart.

use lb_common::{
    flow::{MAGLEV_OFFSET_SEED, MAGLEV_SKIP_SEED, murmur3},
    maps::MAX_TABLE_SIZE,
};

use crate::model::BackendKey;

/// Smallest table size for `backends` backends: the least prime >= 100 x backends (so that
/// each backend's share is within 1% of fair), at least 101, at most the largest prime
/// <= `max` (so memory stays bounded for very large services).
pub fn table_size(backends: usize, max: u32) -> u32 {
    let max = largest_prime_at_most(max.max(2));
    let want = (backends as u64 * 100).max(101).min(max as u64) as u32;
    let mut m = want;
    while !is_prime(m) {
        m += 1;
    }
    m.min(max)
}

fn largest_prime_at_most(n: u32) -> u32 {
    let mut m = n;
    while m > 2 && !is_prime(m) {
        m -= 1;
    }
    m
}

pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// A backend as the table builder sees it: a stable identity and a weight (>= 1).
pub struct Entry<'a> {
    pub identity: &'a [u8],
    pub weight: u32,
}

/// Builds a table of `size` slots (a prime, >= 2), each holding an index into `entries`.
/// Returns an empty table when there are no entries or no weight.
pub fn build(entries: &[Entry<'_>], size: u32) -> Vec<u32> {
    let n = entries.len();
    let max_weight = entries.iter().map(|e| e.weight).max().unwrap_or(0);
    if n == 0 || max_weight == 0 || size < 2 {
        return Vec::new();
    }
    const EMPTY: u32 = u32::MAX;
    let m = size as u64;
    let mut pos = Vec::with_capacity(n);
    let mut skip = Vec::with_capacity(n);
    for e in entries {
        pos.push(murmur3(e.identity, MAGLEV_OFFSET_SEED) as u64 % m);
        skip.push(murmur3(e.identity, MAGLEV_SKIP_SEED) as u64 % (m - 1) + 1);
    }
    let mut credit = vec![0u32; n];
    let mut table = vec![EMPTY; size as usize];
    let mut filled = 0u64;
    loop {
        for i in 0..n {
            // Weighted turns: a backend claims on this round once its credit reaches the
            // largest weight; the heaviest backends claim every round.
            credit[i] += entries[i].weight;
            if credit[i] < max_weight {
                continue;
            }
            credit[i] -= max_weight;
            let mut p = pos[i];
            while table[p as usize] != EMPTY {
                p += skip[i];
                if p >= m {
                    p -= m;
                }
            }
            table[p as usize] = i as u32;
            p += skip[i];
            if p >= m {
                p -= m;
            }
            pos[i] = p;
            filled += 1;
            if filled == m {
                return table;
            }
        }
    }
}

/// The Maglev table (as backend indices into `members`) for a set of members.
pub fn table_for(members: &[(BackendKey, u32)], max_table_size: u32) -> (u32, Vec<u32>) {
    let size = table_size(members.len(), max_table_size.min(MAX_TABLE_SIZE));
    (size, table_slots(members, size))
}

/// The slots (indices into `members`) of a table of `size` slots.
pub fn table_slots(members: &[(BackendKey, u32)], size: u32) -> Vec<u32> {
    let identities: Vec<[u8; 20]> = members.iter().map(|(k, _)| k.identity()).collect();
    let entries: Vec<Entry<'_>> = identities
        .iter()
        .zip(members)
        .map(|(id, (_, w))| Entry {
            identity: id,
            weight: *w,
        })
        .collect();
    build(&entries, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identities(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("10.{}.{}.{}:8080/tcp", i >> 16, (i >> 8) & 255, i & 255).into_bytes())
            .collect()
    }

    fn entries(ids: &[Vec<u8>]) -> Vec<Entry<'_>> {
        ids.iter()
            .map(|id| Entry {
                identity: id,
                weight: 1,
            })
            .collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &t in table {
            c[t as usize] += 1;
        }
        c
    }

    #[test]
    fn table_sizes_are_primes_of_at_least_100_slots_per_backend() {
        assert_eq!(table_size(0, 65_537), 101);
        assert_eq!(table_size(1, 65_537), 101);
        assert_eq!(table_size(3, 65_537), 307);
        assert_eq!(table_size(10, 65_537), 1009);
        assert_eq!(table_size(1000, 65_537), 65_537);
        for n in [1usize, 2, 7, 50, 99, 500] {
            let m = table_size(n, 1_048_573);
            assert!(is_prime(m) && m as usize >= 100 * n, "n={n} m={m}");
        }
    }

    #[test]
    fn every_backend_gets_its_fair_share_within_one_percent() {
        for n in [1usize, 2, 3, 10, 37, 100] {
            let ids = identities(n);
            let m = table_size(n, 1_048_573);
            let table = build(&entries(&ids), m);
            assert_eq!(table.len(), m as usize);
            let fair = m as f64 / n as f64;
            for (i, s) in shares(&table, n).into_iter().enumerate() {
                let err = (s as f64 - fair).abs() / fair;
                assert!(
                    err <= 0.01,
                    "n={n} backend {i}: {s} slots vs fair {fair:.1}"
                );
            }
        }
    }

    #[test]
    fn removing_one_backend_moves_about_one_nth_of_slots() {
        for n in [3usize, 10, 50] {
            let ids = identities(n);
            let m = table_size(n, 1_048_573);
            let before = build(&entries(&ids), m);
            // Remove the backend in the middle; map the remaining indices back.
            let removed = n / 2;
            let rest: Vec<Vec<u8>> = ids
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != removed)
                .map(|(_, v)| v.clone())
                .collect();
            let after = build(&entries(&rest), m);
            let original = |j: u32| if (j as usize) < removed { j } else { j + 1 };
            let moved = before
                .iter()
                .zip(after.iter())
                .filter(|(b, a)| **b != original(**a))
                .count();
            let fraction = moved as f64 / m as f64;
            let ideal = 1.0 / n as f64;
            // The removed backend's slots must move; Maglev moves a few more.
            assert!(fraction >= ideal * 0.98, "n={n}: moved {fraction:.4}");
            assert!(
                fraction <= ideal * 1.5 + 0.01,
                "n={n}: moved {fraction:.4}, ideal {ideal:.4}"
            );
        }
    }

    #[test]
    fn weights_scale_shares() {
        let ids = identities(3);
        let e = vec![
            Entry {
                identity: &ids[0],
                weight: 1,
            },
            Entry {
                identity: &ids[1],
                weight: 2,
            },
            Entry {
                identity: &ids[2],
                weight: 1,
            },
        ];
        let m = table_size(4 * 3, 1_048_573);
        let s = shares(&build(&e, m), 3);
        let total = m as f64;
        assert!((s[1] as f64 / total - 0.5).abs() < 0.01, "{s:?}");
        assert!((s[0] as f64 / total - 0.25).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn same_backends_same_table_in_any_order_of_calls() {
        let ids = identities(5);
        let a = build(&entries(&ids), 503);
        let b = build(&entries(&ids), 503);
        assert_eq!(a, b);
    }

    #[test]
    fn empty_input_gives_empty_table() {
        assert!(build(&[], 101).is_empty());
    }
}
