//! Running a model over features: evaluation (official metrics and loss) and answering questions
//! about a context.

use std::path::Path;

use burn::tensor::ElementConversion;
use burn::tensor::backend::Backend;
use qa_data::decode::{FeatureLogits, decode};
use qa_data::metrics::{SquadScores, evaluate};
use qa_data::{
    Answer, Casing, Dataset, DecodeConfig, Example, ExamplePrediction, FeatureSet, Predictions,
    QaTokenizer, SquadVersion, WindowConfig,
};
use qa_model::BertForQuestionAnswering;

use crate::batch::{HostBatch, span_loss};

/// Per-feature logits (unpadded) and, when asked, the mean span loss.
pub struct FeatureOutputs {
    pub start: Vec<Vec<f32>>,
    pub end: Vec<Vec<f32>>,
    pub loss: Option<f64>,
}

/// Runs `model` over every feature, longest first so batches carry little padding.
pub fn run_features<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    features: &FeatureSet,
    batch_size: usize,
    pad_to: Option<usize>,
    with_loss: bool,
    device: &B::Device,
) -> FeatureOutputs {
    let n = features.features.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(features.seq_len(&features.features[i])));
    let mut start = vec![Vec::new(); n];
    let mut end = vec![Vec::new(); n];
    let (mut loss_sum, mut loss_count) = (0.0f64, 0usize);
    for chunk in order.chunks(batch_size.max(1)) {
        let batch = HostBatch::new(features, chunk, pad_to);
        let logits = model.forward(&batch.input(device));
        if with_loss {
            let (s, e) = batch.labels(device);
            let loss: f32 = span_loss(&logits, s, e).into_scalar().elem();
            loss_sum += loss as f64 * chunk.len() as f64;
            loss_count += chunk.len();
        }
        let s: Vec<f32> = logits
            .start
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32");
        let e: Vec<f32> = logits
            .end
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32");
        for (row, &i) in chunk.iter().enumerate() {
            let len = features.seq_len(&features.features[i]);
            let at = row * batch.len;
            start[i] = s[at..at + len].to_vec();
            end[i] = e[at..at + len].to_vec();
        }
    }
    FeatureOutputs {
        start,
        end,
        loss: (with_loss && loss_count > 0).then(|| loss_sum / loss_count as f64),
    }
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
/// its SQuAD version.
pub fn evaluate_model<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    dataset: &Dataset,
    features: &FeatureSet,
    decode_config: &DecodeConfig,
    batch_size: usize,
    pad_to: Option<usize>,
    device: &B::Device,
) -> Result<Evaluation, qa_data::DataError> {
    let outputs = run_features(model, features, batch_size, pad_to, true, device);
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

/// A loaded model with its tokenizer, answering questions about a context.
pub struct Predictor<B: Backend> {
    pub model: BertForQuestionAnswering<B>,
    pub tokenizer: QaTokenizer,
    pub window: WindowConfig,
    pub decode: DecodeConfig,
    pub batch_size: usize,
    pub device: B::Device,
}

impl<B: Backend> Predictor<B> {
    /// Loads a model directory (burn record or HF weights, plus its tokenizer).
    pub fn load(dir: &Path, device: B::Device) -> anyhow::Result<Self> {
        let loaded = qa_model::load_model::<B>(dir, &device)?;
        let tokenizer = QaTokenizer::from_path(dir, Casing::Auto)?;
        let window = WindowConfig::fitting(loaded.config.max_position_embeddings);
        Ok(Predictor {
            model: loaded.model,
            tokenizer,
            window,
            decode: DecodeConfig::default(),
            batch_size: 16,
            device,
        })
    }

    /// Answers each question about `context`; all questions go through the model together.
    pub fn answer(
        &self,
        context: &str,
        questions: &[String],
    ) -> anyhow::Result<Vec<ExamplePrediction>> {
        self.answer_with(context, questions, &self.decode)
    }

    /// Like [`Self::answer`] with other decoding settings (e.g. a request's n-best size).
    pub fn answer_with(
        &self,
        context: &str,
        questions: &[String],
        decode: &DecodeConfig,
    ) -> anyhow::Result<Vec<ExamplePrediction>> {
        let dataset = adhoc_dataset(context, questions);
        let features = FeatureSet::build(&dataset, &self.tokenizer, self.window)?;
        let outputs = run_features(
            &self.model,
            &features,
            self.batch_size,
            None,
            false,
            &self.device,
        );
        Ok(predictions(&dataset, &features, &outputs, decode).examples)
    }
}

/// A dataset of one context and some questions, for answering outside any file.
fn adhoc_dataset(context: &str, questions: &[String]) -> Dataset {
    let examples = questions
        .iter()
        .enumerate()
        .map(|(i, q)| Example {
            id: format!("q{i}"),
            question: q.clone(),
            context: 0,
            answers: Vec::<Answer>::new(),
            is_impossible: false,
            location: qa_data::squad::Location {
                article: None,
                paragraph: 0,
                qa: i as u32,
            },
        })
        .collect();
    Dataset {
        version: SquadVersion::V1,
        contexts: vec![context.to_string()],
        examples,
        report: Default::default(),
    }
}
