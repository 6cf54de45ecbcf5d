//! The order in which an epoch visits the training features, and how it cuts them into
//! micro-batches: a plain shuffle, or grouped by length so a batch padded to its longest feature
//! pays for few padding tokens (Hugging Face's `group_by_length`).

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// Batches per mega-batch, the span within which grouping sorts by length (Hugging Face's 50):
/// wide enough to find features of similar length, narrow enough to keep the epoch random.
const MEGABATCH_BATCHES: usize = 50;

/// How an epoch cuts its features into micro-batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchPlan {
    pub batch_size: usize,
    pub group_by_length: bool,
}

impl BatchPlan {
    /// The micro-batches of epoch `epoch` (0-based), as indices into the features; `length`
    /// gives a feature's token count. Depends only on the seed and the epoch, so a resumed run
    /// visits the batches an uninterrupted one does.
    pub fn batches(
        self,
        features: &[usize],
        length: impl Fn(usize) -> usize,
        seed: u64,
        epoch: usize,
    ) -> Vec<Vec<usize>> {
        let order = epoch_order(features, seed, epoch);
        if !self.group_by_length {
            return order
                .chunks(self.batch_size)
                .map(<[usize]>::to_vec)
                .collect();
        }
        let mut batches = self.grouped(order, &length);
        shuffle_longest_first(&mut batches, &length, seed, epoch);
        batches
    }

    /// Mega-batches of the shuffled order, each sorted longest first and cut into batches. As
    /// Hugging Face does, a small set uses fewer batches per mega-batch (at least four of them).
    fn grouped(self, order: Vec<usize>, length: &impl Fn(usize) -> usize) -> Vec<Vec<usize>> {
        let per_megabatch = (order.len() / (self.batch_size * 4)).clamp(1, MEGABATCH_BATCHES);
        let mut batches = Vec::with_capacity(order.len().div_ceil(self.batch_size));
        for megabatch in order.chunks(per_megabatch * self.batch_size) {
            let mut megabatch = megabatch.to_vec();
            megabatch.sort_by_key(|&i| std::cmp::Reverse(length(i)));
            batches.extend(megabatch.chunks(self.batch_size).map(<[usize]>::to_vec));
        }
        batches
    }
}

/// Shuffles the batches (sorting left them in runs of decreasing length), then moves the one
/// with the longest feature to the front, so a run that would run out of memory does so at once.
fn shuffle_longest_first(
    batches: &mut [Vec<usize>],
    length: &impl Fn(usize) -> usize,
    seed: u64,
    epoch: usize,
) {
    batches.shuffle(&mut epoch_rng(seed.rotate_left(17), epoch));
    let longest = |b: &Vec<usize>| b.iter().map(|&i| length(i)).max().unwrap_or(0);
    let first = (0..batches.len()).max_by_key(|&i| (longest(&batches[i]), std::cmp::Reverse(i)));
    if let Some(first) = first {
        batches.swap(0, first);
    }
}

/// The mean length the batches are padded to, per feature: a batch pads to its longest feature,
/// or every batch to `pad_to` when given.
pub fn mean_padded_length(
    batches: &[Vec<usize>],
    length: impl Fn(usize) -> usize,
    pad_to: Option<usize>,
) -> f64 {
    let (mut tokens, mut features) = (0usize, 0usize);
    for batch in batches {
        let longest = batch.iter().map(|&i| length(i)).max().unwrap_or(0);
        tokens += batch.len() * pad_to.unwrap_or(longest).max(longest);
        features += batch.len();
    }
    tokens as f64 / features.max(1) as f64
}

/// The order in which epoch `epoch` (0-based) visits `features`: a shuffle that depends only on
/// the seed and the epoch.
pub fn epoch_order(features: &[usize], seed: u64, epoch: usize) -> Vec<usize> {
    let mut order = features.to_vec();
    order.shuffle(&mut epoch_rng(seed, epoch));
    order
}

fn epoch_rng(seed: u64, epoch: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAIN: BatchPlan = BatchPlan {
        batch_size: 8,
        group_by_length: false,
    };
    const GROUPED: BatchPlan = BatchPlan {
        batch_size: 8,
        group_by_length: true,
    };

    /// A made-up length per feature index: spread over 20..400, not in index order.
    fn length(i: usize) -> usize {
        20 + (i * 7919) % 380
    }

    fn flat(batches: &[Vec<usize>]) -> Vec<usize> {
        let mut all: Vec<usize> = batches.concat();
        all.sort_unstable();
        all
    }

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

    #[test]
    fn plain_batches_are_the_shuffle_cut_in_order() {
        let features: Vec<usize> = (0..101).collect();
        let batches = PLAIN.batches(&features, length, 4, 0);
        assert_eq!(batches.concat(), epoch_order(&features, 4, 0));
        assert_eq!(batches.len(), 13);
        assert!(batches[..12].iter().all(|b| b.len() == 8));
    }

    #[test]
    fn grouped_batches_cover_every_feature_once_and_are_fixed_by_seed_and_epoch() {
        let features: Vec<usize> = (0..2003).collect();
        let batches = GROUPED.batches(&features, length, 4, 1);
        assert_eq!(flat(&batches), features);
        assert_eq!(batches.len(), PLAIN.batches(&features, length, 4, 1).len());
        assert_eq!(batches.iter().filter(|b| b.len() != 8).count(), 1);
        assert_eq!(batches, GROUPED.batches(&features, length, 4, 1));
        assert_ne!(batches, GROUPED.batches(&features, length, 4, 2));
        assert_ne!(batches, GROUPED.batches(&features, length, 5, 1));
    }

    #[test]
    fn grouping_pads_less_and_puts_the_longest_batch_first() {
        let features: Vec<usize> = (0..2003).collect();
        let grouped = GROUPED.batches(&features, length, 4, 0);
        let plain = PLAIN.batches(&features, length, 4, 0);
        let padded = |b: &[Vec<usize>]| mean_padded_length(b, length, None);
        let mean = features.iter().map(|&i| length(i)).sum::<usize>() as f64 / 2003.0;
        // Lengths are spread evenly over 20..400: plain batches of 8 pad to near the top,
        // grouped ones to near the mean.
        assert!(padded(&plain) > 330.0, "{}", padded(&plain));
        assert!(
            padded(&grouped) < mean + 20.0,
            "{} vs {mean}",
            padded(&grouped)
        );
        let longest = features.iter().map(|&i| length(i)).max().unwrap();
        assert!(grouped[0].iter().any(|&i| length(i) == longest));
        // The batches are shuffled, not left in runs of decreasing length.
        let firsts: Vec<usize> = grouped.iter().map(|b| length(b[0])).collect();
        let descending = firsts.windows(2).filter(|w| w[0] >= w[1]).count();
        assert!(
            descending < firsts.len() * 3 / 4,
            "{descending} of {}",
            firsts.len()
        );
    }

    #[test]
    fn padding_to_a_fixed_length_is_that_length() {
        let batches = vec![vec![0, 1, 2], vec![3]];
        assert_eq!(mean_padded_length(&batches, length, Some(400)), 400.0);
        let each = [length(0), length(1), length(2)].into_iter().max().unwrap();
        let expected = (3 * each + length(3)) as f64 / 4.0;
        assert_eq!(mean_padded_length(&batches, length, None), expected);
    }
}
