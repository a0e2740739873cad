//! Stable hashing of keys to points in [0, 10,000).
//!
//! A key's point never changes (not across processes, releases or machines: FNV-1a with a fixed
//! finalizer, no random seed), and a request goes to the candidate when its point is below the
//! candidate's weight. Raising the weight therefore only moves keys from stable to candidate.

/// The point of a sticky key for one model (`salt`: the model name, so that two models split
/// independently).
pub fn point(key: &[u8], salt: &str) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in salt.as_bytes().iter().chain([0xffu8].iter()).chain(key) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    reduce(mix(h))
}

/// The point of a request without a sticky key, from a per-request nonce (a counter works: the
/// mixing spreads consecutive values evenly).
pub fn point_of_nonce(nonce: u64, stream: u64) -> u16 {
    reduce(mix(nonce ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// SplitMix64's finalizer: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Maps 64 uniform bits onto [0, 10,000) without modulo bias (multiply-shift).
fn reduce(h: u64) -> u16 {
    ((u128::from(h) * 10_000) >> 64) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_are_stable_and_in_range() {
        // Fixed values: a change here would move every user's assignment in production.
        assert_eq!(point(b"user-1", "fraud"), point(b"user-1", "fraud"));
        assert_ne!(point(b"user-1", "fraud"), point(b"user-1", "churn"));
        assert_eq!([point(b"user-1", "fraud"), point(b"", "fraud"), point_of_nonce(1, 1)], [755, 6341, 8939]);
        for n in 0..100_000u64 {
            assert!(point_of_nonce(n, 0) < 10_000);
        }
    }
}
