//! Features into padded tensors, and the span loss that training and evaluation share.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use qa_data::FeatureSet;

use crate::bert::{BertInput, SpanLogits};

/// A batch on the host, padded to a common length.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub size: usize,
    pub len: usize,
    input_ids: Vec<i32>,
    token_type_ids: Vec<i32>,
    padding: Vec<bool>,
    starts: Vec<i32>,
    ends: Vec<i32>,
}

impl HostBatch {
    /// Assembles `indices` of `features`, padded to the longest or to `pad_to` when given.
    pub fn new(features: &FeatureSet, indices: &[usize], pad_to: Option<usize>) -> Self {
        let longest = indices
            .iter()
            .map(|&i| features.seq_len(&features.features[i]))
            .max()
            .unwrap_or(0);
        let len = pad_to.unwrap_or(longest).max(longest);
        let pad = features.special.pad as i32;
        let size = indices.len();
        let mut batch = HostBatch {
            size,
            len,
            input_ids: Vec::with_capacity(size * len),
            token_type_ids: Vec::with_capacity(size * len),
            padding: Vec::with_capacity(size * len),
            starts: Vec::with_capacity(size),
            ends: Vec::with_capacity(size),
        };
        let (mut ids, mut types) = (Vec::new(), Vec::new());
        for &i in indices {
            let f = &features.features[i];
            ids.clear();
            types.clear();
            features.input_ids(f, &mut ids);
            features.token_type_ids(f, &mut types);
            let real = ids.len();
            batch.input_ids.extend(ids.iter().map(|&t| t as i32));
            batch.input_ids.extend(std::iter::repeat_n(pad, len - real));
            batch.token_type_ids.extend(types.iter().map(|&t| t as i32));
            batch
                .token_type_ids
                .extend(std::iter::repeat_n(0, len - real));
            batch.padding.extend(std::iter::repeat_n(false, real));
            batch.padding.extend(std::iter::repeat_n(true, len - real));
            // Features without a label (unaligned answers) are never trained on; in evaluation
            // loss they count as "no answer here".
            let (s, e) = f.label.unwrap_or((0, 0));
            batch.starts.push(s as i32);
            batch.ends.push(e as i32);
        }
        batch
    }

    pub fn input<B: Backend>(&self, device: &B::Device) -> BertInput<B> {
        BertInput::from_host(
            self.input_ids.clone(),
            self.token_type_ids.clone(),
            self.padding.clone(),
            [self.size, self.len],
            device,
        )
    }

    /// Start and end label positions, `[batch]` each.
    pub fn labels<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 1, Int>, Tensor<B, 1, Int>) {
        let t = |v: &Vec<i32>| Tensor::from_data(TensorData::new(v.clone(), [self.size]), device);
        (t(&self.starts), t(&self.ends))
    }
}

/// BERT's span loss: the mean of the start and end cross-entropies over sequence positions.
pub fn span_loss<B: Backend>(
    logits: &SpanLogits<B>,
    starts: Tensor<B, 1, Int>,
    ends: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    (cross_entropy(logits.start.clone(), starts) + cross_entropy(logits.end.clone(), ends)) / 2.0
}

fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [batch, _] = logits.dims();
    let picked = log_softmax(logits, 1).gather(1, targets.reshape([batch, 1]));
    picked.mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    #[test]
    fn cross_entropy_matches_hand_computation() {
        let device = Default::default();
        let logits = Tensor::<CpuBackend, 2>::from_data(
            TensorData::new(vec![0.0f32, 1.0, 2.0, 1.0, 1.0, 1.0], [2, 3]),
            &device,
        );
        let targets =
            Tensor::<CpuBackend, 1, Int>::from_data(TensorData::new(vec![2i32, 0], [2]), &device);
        let got: f32 = cross_entropy(logits, targets).into_scalar();
        let first = -(2.0f32.exp() / (1.0 + 1.0f32.exp() + 2.0f32.exp())).ln();
        let second = 3.0f32.ln();
        assert!((got - (first + second) / 2.0).abs() < 1e-5, "{got}");
    }
}
