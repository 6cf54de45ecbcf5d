//! Running a model over windowed features on the host's behalf: batches sorted by length, logits
//! back per feature, decoding, and the official scores of a whole dataset.

use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use qa_data::decode::{FeatureLogits, decode};
use qa_data::metrics::{SquadScores, evaluate};
use qa_data::{DataError, Dataset, DecodeConfig, FeatureSet, Predictions};

use crate::batch::{HostBatch, Window, span_loss};
use crate::bert::{BertForQuestionAnswering, SpanLogits};

/// Per-feature logits (unpadded) and, when asked, the mean span loss.
pub struct FeatureOutputs {
    pub start: Vec<Vec<f32>>,
    pub end: Vec<Vec<f32>>,
    pub loss: Option<f64>,
}

/// One window's start and end logits, without padding.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowLogits {
    pub start: Vec<f32>,
    pub end: Vec<f32>,
}

impl FeatureOutputs {
    /// Outputs assembled from per-window logits in feature order.
    pub fn from_windows(windows: Vec<WindowLogits>) -> Self {
        let (start, end) = windows.into_iter().map(|w| (w.start, w.end)).unzip();
        FeatureOutputs {
            start,
            end,
            loss: None,
        }
    }
}

/// How features go through the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub batch_size: usize,
    /// Pad every batch to this length (fixed shapes) instead of to its longest feature.
    pub pad_to: Option<usize>,
}

/// Runs `model` over every feature, longest first so batches carry little padding.
pub fn run_features<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    features: &FeatureSet,
    batching: Batching,
    with_loss: bool,
    device: &B::Device,
) -> FeatureOutputs {
    let n = features.features.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(features.seq_len(&features.features[i])));
    let mut start = vec![Vec::new(); n];
    let mut end = vec![Vec::new(); n];
    let (mut loss_sum, mut loss_count) = (0.0f64, 0usize);
    for chunk in order.chunks(batching.batch_size.max(1)) {
        let batch = HostBatch::new(features, chunk, batching.pad_to);
        let logits = model.forward(&batch.input(device));
        if with_loss {
            let (s, e) = batch.labels(device);
            let loss: f32 = span_loss(&logits, s, e).into_scalar().elem();
            loss_sum += loss as f64 * chunk.len() as f64;
            loss_count += chunk.len();
        }
        let lens = chunk
            .iter()
            .map(|&i| features.seq_len(&features.features[i]));
        for (&i, w) in chunk.iter().zip(unpad(logits, batch.len, lens)) {
            start[i] = w.start;
            end[i] = w.end;
        }
    }
    FeatureOutputs {
        start,
        end,
        loss: (with_loss && loss_count > 0).then(|| loss_sum / loss_count as f64),
    }
}

/// One forward pass over windows of any requests, padded to the longest; logits per window.
pub fn run_windows<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    windows: &[&Window],
    pad: u32,
    device: &B::Device,
) -> Vec<WindowLogits> {
    let batch = HostBatch::of_windows(windows, pad);
    let logits = model.forward(&batch.input(device));
    unpad(logits, batch.len, windows.iter().map(|w| w.len()))
}

/// Each row's first `len` logits of a batch padded to `padded`.
fn unpad<B: Backend>(
    logits: SpanLogits<B>,
    padded: usize,
    lens: impl Iterator<Item = usize>,
) -> Vec<WindowLogits> {
    let (s, e) = (host(logits.start), host(logits.end));
    lens.enumerate()
        .map(|(row, len)| {
            let at = row * padded;
            WindowLogits {
                start: s[at..at + len].to_vec(),
                end: e[at..at + len].to_vec(),
            }
        })
        .collect()
}

fn host<B: Backend>(t: burn::tensor::Tensor<B, 2>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32")
}

/// Decodes outputs into predictions.
pub fn predictions(
    dataset: &Dataset,
    features: &FeatureSet,
    outputs: &FeatureOutputs,
    config: &DecodeConfig,
) -> Predictions {
    let logits: Vec<FeatureLogits<'_>> = outputs
        .start
        .iter()
        .zip(&outputs.end)
        .map(|(s, e)| FeatureLogits { start: s, end: e })
        .collect();
    decode(dataset, features, &logits, config)
}

/// What an evaluation produced.
pub struct Evaluation {
    pub scores: SquadScores,
    pub eval_loss: Option<f64>,
    pub predictions: Predictions,
}

/// Predicts every example of `dataset` and scores the predictions with the official metric of
/// its SQuAD version; the mean span loss comes along.
pub fn evaluate_features<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    dataset: &Dataset,
    features: &FeatureSet,
    decode_config: &DecodeConfig,
    batching: Batching,
    device: &B::Device,
) -> Result<Evaluation, DataError> {
    let outputs = run_features(model, features, batching, true, device);
    let predictions = predictions(dataset, features, &outputs, decode_config);
    let answers = predictions
        .examples
        .iter()
        .map(|p| (p.id.clone(), p.answer.clone()))
        .collect();
    let odds: Vec<(String, f64)> = predictions
        .examples
        .iter()
        .filter_map(|p| p.null_score_diff.map(|d| (p.id.clone(), d as f64)))
        .collect();
    let na_probs = (!odds.is_empty()).then_some(odds.as_slice());
    let scores = evaluate(dataset, &answers, na_probs, 1.0)?;
    Ok(Evaluation {
        scores,
        eval_loss: outputs.loss,
        predictions,
    })
}
