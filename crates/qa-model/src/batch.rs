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

/// One window's tokens as the model reads them, cut from a request's features: the unit a
/// server batches across requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
}

impl Window {
    /// The window of `features.features[index]`.
    pub fn of(features: &FeatureSet, index: usize) -> Self {
        let f = &features.features[index];
        let mut window = Window {
            input_ids: Vec::new(),
            token_type_ids: Vec::new(),
        };
        features.input_ids(f, &mut window.input_ids);
        features.token_type_ids(f, &mut window.token_type_ids);
        window
    }

    pub fn len(&self) -> usize {
        self.input_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

impl HostBatch {
    /// Assembles `indices` of `features`, padded to the longest or to `pad_to` when given.
    pub fn new(features: &FeatureSet, indices: &[usize], pad_to: Option<usize>) -> Self {
        let longest = indices
            .iter()
            .map(|&i| features.seq_len(&features.features[i]))
            .max()
            .unwrap_or(0);
        let mut batch = Self::empty(indices.len(), pad_to.unwrap_or(longest).max(longest));
        let (mut ids, mut types) = (Vec::new(), Vec::new());
        for &i in indices {
            let f = &features.features[i];
            ids.clear();
            types.clear();
            features.input_ids(f, &mut ids);
            features.token_type_ids(f, &mut types);
            // Features without a label (unaligned answers) are never trained on; in evaluation
            // loss they count as "no answer here".
            batch.push(
                &ids,
                &types,
                f.label.unwrap_or((0, 0)),
                features.special.pad,
            );
        }
        batch
    }

    /// Windows of any requests, padded with `pad` to the longest; unlabelled.
    pub fn of_windows(windows: &[&Window], pad: u32) -> Self {
        let longest = windows.iter().map(|w| w.len()).max().unwrap_or(0);
        let mut batch = Self::empty(windows.len(), longest);
        for w in windows {
            batch.push(&w.input_ids, &w.token_type_ids, (0, 0), pad);
        }
        batch
    }

    fn empty(size: usize, len: usize) -> Self {
        HostBatch {
            size,
            len,
            input_ids: Vec::with_capacity(size * len),
            token_type_ids: Vec::with_capacity(size * len),
            padding: Vec::with_capacity(size * len),
            starts: Vec::with_capacity(size),
            ends: Vec::with_capacity(size),
        }
    }

    /// Appends one row, padded to the batch's length.
    fn push(&mut self, ids: &[u32], types: &[u32], label: (u32, u32), pad: u32) {
        let (real, len) = (ids.len(), self.len);
        self.input_ids.extend(ids.iter().map(|&t| t as i32));
        self.input_ids
            .extend(std::iter::repeat_n(pad as i32, len - real));
        self.token_type_ids.extend(types.iter().map(|&t| t as i32));
        self.token_type_ids
            .extend(std::iter::repeat_n(0, len - real));
        self.padding.extend(std::iter::repeat_n(false, real));
        self.padding.extend(std::iter::repeat_n(true, len - real));
        self.starts.push(label.0 as i32);
        self.ends.push(label.1 as i32);
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
