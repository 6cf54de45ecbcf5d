//! The order in which an epoch visits the training features.

use rand::SeedableRng;
use rand::seq::SliceRandom;

/// The order in which epoch `epoch` (0-based) visits `features`: a shuffle that depends only on
/// the seed and the epoch, so a resumed run visits them as an uninterrupted one does.
pub fn epoch_order(features: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = features.to_vec();
    let mut rng = rand::rngs::StdRng::seed_from_u64(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    order.shuffle(&mut rng);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_permutation_fixed_by_seed_and_epoch() {
        let features: Vec<usize> = (10..110).collect();
        let first = epoch_order(&features, 42, 0);
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, features);
        assert_ne!(first, features);
        assert_eq!(first, epoch_order(&features, 42, 0));
        assert_ne!(first, epoch_order(&features, 42, 1));
        assert_ne!(first, epoch_order(&features, 43, 0));
    }
}
