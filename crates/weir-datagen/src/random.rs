//! Deterministic random numbers: Java's `SplittableRandom` (the generator the Nexmark reference
//! implementation draws from), bit for bit, seeded per row so that every generated value is a pure
//! function of (seed, row) and any row can be produced again without producing the ones before it.
//!
//! That is what makes the generator sources replayable: a restored source starts at the row its
//! checkpoint names and produces exactly the rows the interrupted run would have produced, whatever
//! the parallelism and however the rows are split.

/// The increment of `SplittableRandom`'s default stream (the golden ratio in 64 bits).
pub(crate) const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// splitmix64's finaliser (Stafford's variant 13), as `SplittableRandom.mix64`.
#[inline]
pub(crate) fn mix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `SplittableRandom.mix32`: 32 well-mixed bits.
#[inline]
fn mix32(z: u64) -> i32 {
    let z = (z ^ (z >> 33)).wrapping_mul(0x62a9_d9ed_7997_05f5);
    ((z ^ (z >> 28)).wrapping_mul(0xcb24_d0a5_c88c_35b3) >> 32) as i32
}

/// The seed of row `row` in the stream `stream` of a generator seeded with `seed`: two rounds of
/// mixing, so neighbouring rows and streams start far apart.
#[inline]
pub(crate) fn row_seed(seed: u64, stream: u64, row: u64) -> u64 {
    mix64(mix64(seed ^ stream.wrapping_mul(GOLDEN_GAMMA)) ^ row)
}

/// Java's `java.util.SplittableRandom` with the default gamma: same seed, same numbers (checked
/// against values printed by Java 17 in the tests below).
#[derive(Debug, Clone)]
pub(crate) struct SplittableRandom {
    seed: u64,
}

impl SplittableRandom {
    /// `new SplittableRandom(seed)`.
    #[inline]
    pub(crate) fn new(seed: u64) -> Self {
        SplittableRandom { seed }
    }

    #[inline]
    fn next_seed(&mut self) -> u64 {
        self.seed = self.seed.wrapping_add(GOLDEN_GAMMA);
        self.seed
    }

    /// `nextLong()`.
    #[inline]
    pub(crate) fn next_u64(&mut self) -> u64 {
        mix64(self.next_seed())
    }

    /// `nextInt()`.
    #[inline]
    pub(crate) fn next_i32(&mut self) -> i32 {
        mix32(self.next_seed())
    }

    /// `nextInt(bound)`: uniform in `0..bound` (rejection sampling, as Java does). `bound` must be
    /// positive; a non-positive bound answers 0 instead of throwing.
    #[inline]
    pub(crate) fn next_below(&mut self, bound: i32) -> i32 {
        if bound <= 0 {
            return 0;
        }
        let mut r = self.next_i32();
        let m = bound - 1;
        if bound & m == 0 {
            return r & m;
        }
        let mut u = ((r as u32) >> 1) as i32;
        loop {
            r = u % bound;
            if u.wrapping_add(m).wrapping_sub(r) >= 0 {
                return r;
            }
            u = ((self.next_i32() as u32) >> 1) as i32;
        }
    }

    /// `nextDouble()`: uniform in `[0, 1)` with 53 random bits.
    #[inline]
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// The reference generator's `LongGenerator.nextLong(random, n)`: uniform in `0..n` through
    /// `nextInt` when `n` fits an int (its skewed `abs(nextLong() % n)` otherwise, as there).
    #[inline]
    pub(crate) fn next_long_below(&mut self, n: i64) -> i64 {
        if n < i32::MAX as i64 {
            self.next_below(n as i32) as i64
        } else {
            ((self.next_u64() as i64) % n).abs()
        }
    }
}

/// A uniform draw in `0..span` from one 64-bit value (multiply-shift: one multiplication, no
/// rejection, so every row costs the same; the bias is below `span / 2^64`). `span == 0` means the
/// whole 64-bit range.
#[inline]
pub(crate) fn below(x: u64, span: u64) -> u64 {
    if span == 0 {
        return x;
    }
    ((x as u128 * span as u128) >> 64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Printed by Java 17: `r = new SplittableRandom(42)`, then `r.nextLong()`, `r.nextInt()`,
    /// `r.nextInt(13)`, `r.nextInt(100)`, `r.nextInt(10000)`, `r.nextInt(64)`, `r.nextDouble()`;
    /// and five `nextInt(26)` of `new SplittableRandom(0)`.
    #[test]
    fn matches_java_splittable_random() {
        let mut r = SplittableRandom::new(42);
        assert_eq!(r.next_u64() as i64, -4767286540954276203);
        assert_eq!(r.next_i32(), 909395113);
        assert_eq!(r.next_below(13), 9);
        assert_eq!(r.next_below(100), 72);
        assert_eq!(r.next_below(10000), 6781);
        assert_eq!(r.next_below(64), 15);
        assert_eq!(r.next_f64(), 0.21840519371218436);
        let mut z = SplittableRandom::new(0);
        let drawn: Vec<i32> = (0..5).map(|_| z.next_below(26)).collect();
        assert_eq!(drawn, vec![24, 16, 7, 7, 13]);
    }

    #[test]
    fn below_stays_in_range_and_spreads() {
        let mut counts = [0u32; 10];
        for i in 0..100_000u64 {
            let v = below(mix64(i), 10);
            counts[v as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
        assert_eq!(below(u64::MAX, 7), 6);
        assert_eq!(below(0, 7), 0);
    }

    #[test]
    fn row_seeds_differ_by_seed_stream_and_row() {
        let a = row_seed(1, 0, 0);
        assert_ne!(a, row_seed(2, 0, 0));
        assert_ne!(a, row_seed(1, 1, 0));
        assert_ne!(a, row_seed(1, 0, 1));
        assert_eq!(a, row_seed(1, 0, 0));
    }
}
