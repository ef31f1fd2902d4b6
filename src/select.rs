//! Pure upstream selection: functions of the plan and a random source, no host involved.

use rand_core::Rng;

/// Weighted random choice over a fixed list of weights, built once at configure time.
///
/// Each pick is one random number and a binary search over the cumulative weights, so the cost
/// does not depend on the total weight and zero-weight (drained) entries can never be chosen.
#[derive(Debug, Clone)]
pub struct WeightedPicker {
    /// `cumulative[i]` is the sum of weights `0..=i`; the last entry is the total.
    cumulative: Box<[u64]>,
    /// Set when exactly one entry has a positive weight: no random number is needed then.
    single: Option<usize>,
}

impl WeightedPicker {
    /// Returns `None` when the weights sum to zero (nothing could ever be picked).
    pub fn new(weights: &[u32]) -> Option<Self> {
        let mut total = 0u64;
        let cumulative: Box<[u64]> = weights
            .iter()
            .map(|&w| {
                total += u64::from(w);
                total
            })
            .collect();
        if total == 0 {
            return None;
        }
        let mut positive = weights.iter().enumerate().filter(|(_, &w)| w > 0);
        let single = match (positive.next(), positive.next()) {
            (Some((index, _)), None) => Some(index),
            _ => None,
        };
        Some(Self { cumulative, single })
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Index of the chosen entry; entry `i` is chosen with probability `weight[i] / total`.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> usize {
        if let Some(index) = self.single {
            return index;
        }
        // Map a 64-bit random number onto [0, total) by multiply-shift. The bias is at most
        // total / 2^64 (total <= 1e6 per upstream), far below anything measurable.
        let point = ((u128::from(rng.next_u64()) * u128::from(self.total())) >> 64) as u64;
        self.cumulative.partition_point(|&c| c <= point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn counts(weights: &[u32], draws: usize) -> Vec<usize> {
        let picker = WeightedPicker::new(weights).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut counts = vec![0; weights.len()];
        for _ in 0..draws {
            counts[picker.pick(&mut rng)] += 1;
        }
        counts
    }

    /// Pearson chi-square statistic of observed counts against the weights.
    fn chi_square(observed: &[usize], weights: &[u32]) -> f64 {
        let n: usize = observed.iter().sum();
        let total: u32 = weights.iter().sum();
        observed
            .iter()
            .zip(weights)
            .filter(|(_, &w)| w > 0)
            .map(|(&o, &w)| {
                let expected = n as f64 * f64::from(w) / f64::from(total);
                (o as f64 - expected).powi(2) / expected
            })
            .sum()
    }

    #[test]
    fn all_zero_weights_have_no_picker() {
        assert!(WeightedPicker::new(&[0, 0]).is_none());
        assert!(WeightedPicker::new(&[]).is_none());
    }

    #[test]
    fn single_positive_weight_is_always_picked() {
        assert_eq!(counts(&[0, 5, 0], 1000), vec![0, 1000, 0]);
    }

    #[test]
    fn zero_weight_entries_are_never_picked() {
        let c = counts(&[0, 90, 0, 10, 0], 50_000);
        assert_eq!((c[0], c[2], c[4]), (0, 0, 0));
    }

    #[test]
    fn ninety_ten_split_follows_weights() {
        let weights = [90, 10];
        let c = counts(&weights, 100_000);
        // Critical value of chi-square with 1 degree of freedom at p = 0.001.
        assert!(chi_square(&c, &weights) < 10.83, "{c:?}");
    }

    #[test]
    fn three_way_split_follows_weights() {
        let weights = [50, 30, 20];
        let c = counts(&weights, 100_000);
        // Critical value of chi-square with 2 degrees of freedom at p = 0.001.
        assert!(chi_square(&c, &weights) < 13.82, "{c:?}");
    }

    #[test]
    fn extreme_weights_still_reach_the_small_entry() {
        let c = counts(&[1_000_000, 1], 4_000_000);
        assert!(c[1] > 0 && c[1] < 20, "{c:?}");
    }

    #[test]
    fn same_seed_gives_same_sequence() {
        assert_eq!(counts(&[3, 2, 1], 1000), counts(&[3, 2, 1], 1000));
    }
}
