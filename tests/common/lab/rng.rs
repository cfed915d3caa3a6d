//! Random choices that can be replayed: a splitmix64 generator seeded from `SHUNT_FAULT_SEED`
//! (else the clock), with the seed printed so a failing run can be run again exactly.

use super::super::pattern::splitmix64;

#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// From `SHUNT_FAULT_SEED`, else from the clock; the seed is printed for a replay.
    pub fn seeded(test: &str) -> Rng {
        let seed = std::env::var("SHUNT_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
        eprintln!("{test}: SHUNT_FAULT_SEED={seed}");
        Rng(seed)
    }

    /// An independent generator for stream `k` (a client thread), derived from this one.
    pub fn fork(&mut self, k: u64) -> Rng {
        Rng(splitmix64(self.next() ^ k))
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix64(self.0)
    }

    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// 0..=max, spread evenly over orders of magnitude (as many 10-byte as 1-MiB sizes).
    pub fn size(&mut self, max: u64) -> u64 {
        let bits = 64 - max.leading_zeros() as u64;
        let b = self.below(bits + 1);
        if b == 0 {
            return 0;
        }
        self.range(1 << (b - 1), (1u64 << b) - 1).min(max)
    }
}
