//! The pseudo-random byte streams shared by the test harness (tests/common/bytes.rs) and the
//! namespaced test peer (examples/test_peer.rs), which includes this file with `#[path]`: the
//! two ends of a transfer must generate exactly the same bytes.

pub fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `buf` with bytes `offset..offset+buf.len()` of the pseudo-random stream `seed`.
/// Random access and fast (~GB/s): a writer and a reader of a long transfer generate the same
/// bytes independently, so neither holds the whole stream. Different seeds give unrelated
/// streams; a lost, repeated, reordered or foreign chunk shows up at its offset.
pub fn pattern_fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let key = splitmix64(seed);
    let mut pos = offset;
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix64(key ^ (pos / 8)).to_le_bytes();
        let start = (pos % 8) as usize;
        let n = (8 - start).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[start..start + n]);
        i += n;
        pos += n as u64;
    }
}
