//! Output partition choice, compatible with the Java client's default
//! partitioner: `toPositive(murmur2(key)) % partitions`, so a key lands on
//! the same partition whichever client produced it and per-key order holds
//! end to end.

/// Kafka's murmur2 (seed `0x9747b28c`), as `Utils.murmur2` in the Java
/// client.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client picks for `key` among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the Java client's `UtilsTest.testMurmur2`.
    #[test]
    fn matches_the_java_client() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, expected) in cases {
            assert_eq!(murmur2(key), *expected, "{}", String::from_utf8_lossy(key));
        }
    }

    /// The Java client's `Utils.toPositive(murmur2(key)) % partitions`: the
    /// sign bit is cleared, not the absolute value taken, so the keys whose
    /// hash is negative land where the Java client puts them.
    #[test]
    fn partitions_follow_the_java_formula() {
        let cases: &[(&[u8], i32)] = &[(b"21", -973_932_308), (b"foobar", -790_332_482)];
        for (key, hash) in cases {
            for n in [3, 6, 7] {
                assert_eq!(partition_for_key(key, n), (hash & 0x7fff_ffff) % n);
                assert_ne!(
                    partition_for_key(key, n),
                    hash.unsigned_abs() as i32 % n,
                    "abs() would differ for {} and {n} partitions",
                    String::from_utf8_lossy(key)
                );
            }
        }
        let mut hit = [false; 6];
        for i in 0..1000 {
            hit[partition_for_key(format!("user-{i}").as_bytes(), 6) as usize] = true;
        }
        assert!(hit.iter().all(|h| *h), "1000 keys reach all six partitions");
    }
}
