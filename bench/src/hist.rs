//! A small log-linear latency histogram (the HDR idea, by hand): exact below 512 µs, then 256
//! sub-buckets per power of two, so any recorded value is within 0.4% of the truth. Fixed
//! size, no allocation while recording, cheap to merge across connections.

/// Sub-bucket bits: 2^8 buckets per power of two.
const SUB_BITS: u32 = 8;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two above the exact range that we keep; 2^(SUB_BITS + 1 + 24) µs is over 4 hours.
const MAX_SHIFT: u32 = 24;
const BUCKETS: usize = (2 * SUB + MAX_SHIFT as u64 * SUB) as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max_us: 0,
        }
    }
}

fn index(us: u64) -> usize {
    if us < 2 * SUB {
        return us as usize;
    }
    // Shift so the value keeps SUB_BITS + 1 significant bits: `us >> shift` is in [SUB, 2 SUB).
    let shift = (63 - us.leading_zeros()) - SUB_BITS;
    if shift > MAX_SHIFT {
        return BUCKETS - 1;
    }
    (2 * SUB + u64::from(shift - 1) * SUB + ((us >> shift) - SUB)) as usize
}

/// The largest value that falls into bucket `i` (reporting the upper edge never flatters).
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < 2 * SUB {
        return i;
    }
    let k = i - 2 * SUB;
    let shift = k / SUB + 1;
    let mantissa = k % SUB + SUB;
    ((mantissa + 1) << shift) - 1
}

impl Histogram {
    pub fn record(&mut self, us: u64) {
        self.counts[index(us)] += 1;
        self.total += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max_us = self.max_us.max(other.max_us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max_us(&self) -> u64 {
        self.max_us
    }

    /// The value at quantile `q` (0..=1) in µs; 0 for an empty histogram.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        // The rank of the q-th value, 1-based (nearest-rank method).
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper(i).min(self.max_us);
            }
        }
        self.max_us
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_tight() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            511,
            512,
            513,
            1000,
            4096,
            123_456,
            9_999_999,
            1 << 40,
        ] {
            let i = index(us);
            assert!(i >= last, "index must not decrease");
            last = i;
            if us < 1 << 32 {
                assert!(
                    upper(i) >= us,
                    "{us} above its bucket's upper edge {}",
                    upper(i)
                );
                assert!(
                    (upper(i) - us) as f64 <= us as f64 * 0.004 + 1.0,
                    "{us}: {}",
                    upper(i)
                );
            }
        }
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for us in 1..=1000 {
            h.record(us);
        }
        assert_eq!(h.quantile_us(0.5), 500);
        let p99 = h.quantile_us(0.99);
        assert!((990..=994).contains(&p99), "{p99}");
        assert_eq!(h.quantile_us(1.0), 1000);
        let mut other = Histogram::default();
        other.record(5000);
        h.merge(&other);
        assert_eq!(h.count(), 1001);
        assert_eq!(h.max_us(), 5000);
    }
}
