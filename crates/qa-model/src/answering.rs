//! Answering questions with a trained model, as a library: load a model directory on a device,
//! ask questions about a context, score a dataset. `qa predict`, `qa chat` and `qa serve` are thin
//! shells around [`QuestionAnswerer`].
//!
//! ```no_run
//! use qa_model::{CpuBackend, QuestionAnswerer};
//!
//! let answerer = QuestionAnswerer::<CpuBackend>::load("runs/quickstart/best_model".as_ref(), Default::default())?;
//! let answers = answerer.answer("The tower was built in 1889.", &["When was it built?"], 3)?;
//! println!("{} ({:.0} %)", answers[0].answer, answers[0].probability * 100.0);
//! # Ok::<(), qa_model::ModelError>(())
//! ```

mod run;
mod sentence;
mod settings;

use std::path::Path;

use burn::tensor::backend::Backend;
use qa_data::squad::Location;
use qa_data::{
    Casing, Dataset, DecodeConfig, Example, ExamplePrediction, FeatureSet, QaTokenizer,
    SquadVersion,
};
use serde::Serialize;

pub use run::{
    Batching, Evaluation, FeatureOutputs, WindowLogits, evaluate_features, predictions,
    run_features, run_windows,
};
pub use sentence::sentence_around;
pub use settings::{AnsweringSettings, SETTINGS_FILE};

use crate::batch::Window;
use crate::bert::BertForQuestionAnswering;
use crate::config::BertConfig;
use crate::error::ModelError;
use crate::hf::{LoadReport, load_model};
use crate::precision::Precision;

/// A model with its tokenizer and answering settings, ready to answer on its device.
pub struct QuestionAnswerer<B: Backend> {
    model: BertForQuestionAnswering<B>,
    config: BertConfig,
    tokenizer: QaTokenizer,
    settings: AnsweringSettings,
    report: LoadReport,
    /// Features per forward pass.
    pub batch_size: usize,
    device: B::Device,
}

/// Questions about one context, checked, tokenized and cut into windows: what
/// [`QuestionAnswerer::prepare`] hands to the model and [`QuestionAnswerer::finish`] decodes.
pub struct Prepared {
    dataset: Dataset,
    features: FeatureSet,
    top_k: usize,
}

impl Prepared {
    /// Every window of every question, in order.
    pub fn windows(&self) -> Vec<Window> {
        (0..self.features.features.len())
            .map(|i| Window::of(&self.features, i))
            .collect()
    }
}

/// One answer, with its place in the context and the runners-up.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    pub question: String,
    /// The answer text ("" when the model finds none).
    pub answer: String,
    /// Softmax probability of the answer among the n-best candidates.
    pub probability: f32,
    /// start_logit + end_logit.
    pub score: f32,
    /// Character span `[start, end)` in the context.
    pub start: usize,
    pub end: usize,
    /// The sentence of the context the answer sits in, with its span.
    pub sentence: String,
    pub sentence_start: usize,
    pub candidates: Vec<Candidate>,
}

/// A candidate answer span.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub text: String,
    pub probability: f32,
    pub score: f32,
    pub start: usize,
    pub end: usize,
}

impl<B: Backend> QuestionAnswerer<B> {
    /// Loads a model directory (burn record or Hugging Face weights, its tokenizer and its
    /// `answering.json`). A checkpoint without a span head gets one drawn from the backend's
    /// generator: see [`Self::load_seeded`].
    pub fn load(dir: &Path, device: B::Device) -> Result<Self, ModelError> {
        let loaded = load_model::<B>(dir, &device)?;
        let tokenizer = QaTokenizer::from_path(dir, Casing::Auto)?;
        loaded
            .config
            .check_tokenizer(&tokenizer)
            .map_err(ModelError::Input)?;
        let settings = AnsweringSettings::for_model(dir, &loaded.config)?;
        Ok(QuestionAnswerer {
            model: loaded.model,
            config: loaded.config,
            tokenizer,
            settings,
            report: loaded.report,
            batch_size: 16,
            device,
        })
    }

    /// [`Self::load`] with the backend's generator seeded first, so a missing span head is drawn
    /// the same way for the same seed (a repeatable untrained baseline).
    pub fn load_seeded(dir: &Path, device: B::Device, seed: u64) -> Result<Self, ModelError> {
        B::seed(&device, seed);
        Self::load(dir, device)
    }

    /// What loading did (weights file, whether a new span head was drawn, unused tensors).
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    pub fn settings(&self) -> &AnsweringSettings {
        &self.settings
    }

    /// Answers with other settings; windows must fit the model.
    pub fn with_settings(mut self, settings: AnsweringSettings) -> Result<Self, ModelError> {
        settings
            .check(&self.config)
            .map_err(|message| ModelError::Input(format!("answering settings: {message}")))?;
        self.settings = settings;
        Ok(self)
    }

    /// Answers with the model's matrix products in `precision`; refused where the backend
    /// cannot run it.
    pub fn with_precision(mut self, precision: Precision) -> Result<Self, ModelError> {
        precision
            .check::<B>(&self.device)
            .map_err(ModelError::Input)?;
        self.model = self.model.with_precision(precision);
        Ok(self)
    }

    /// Answers each question about `context` with up to `top_k` candidates each; all questions
    /// go through the model together. Empty contexts or questions are errors.
    pub fn answer(
        &self,
        context: &str,
        questions: &[impl AsRef<str>],
        top_k: usize,
    ) -> Result<Vec<Answer>, ModelError> {
        let prepared = self.prepare(context, questions, top_k)?;
        let outputs = run_features(
            &self.model,
            &prepared.features,
            self.batching(),
            false,
            &self.device,
        );
        Ok(self.finish(&prepared, &outputs))
    }

    /// The first step of [`Self::answer`], which needs no model: checks the request, tokenizes
    /// it and cuts it into windows. A server runs it beside the model and batches the windows of
    /// many requests through [`Self::forward_windows`].
    pub fn prepare(
        &self,
        context: &str,
        questions: &[impl AsRef<str>],
        top_k: usize,
    ) -> Result<Prepared, ModelError> {
        check_request(context, questions, top_k)?;
        let dataset = adhoc_dataset(context, questions);
        let features = FeatureSet::build(&dataset, &self.tokenizer, self.settings.window)?;
        Ok(Prepared {
            dataset,
            features,
            top_k,
        })
    }

    /// One forward pass over windows of any prepared requests (padded to the longest).
    pub fn forward_windows(&self, windows: &[&Window]) -> Vec<WindowLogits> {
        let pad = self.tokenizer.special_tokens().pad;
        run_windows(&self.model, windows, pad, &self.device)
    }

    /// The last step of [`Self::answer`]: decodes the logits of every window of `prepared` (in
    /// the order of [`Prepared::windows`]) into answers.
    pub fn finish(&self, prepared: &Prepared, outputs: &FeatureOutputs) -> Vec<Answer> {
        let decode = DecodeConfig {
            n_best_size: self.settings.decode.n_best_size.max(prepared.top_k),
            ..self.settings.decode
        };
        let predictions = predictions(&prepared.dataset, &prepared.features, outputs, &decode);
        let context = &prepared.dataset.contexts[0];
        predictions
            .examples
            .iter()
            .zip(&prepared.dataset.examples)
            .map(|(p, e)| Answer::new(context, &e.question, p, prepared.top_k))
            .collect()
    }

    /// Predicts every question of `dataset` and scores the answers with the official metric of
    /// its SQuAD version (which also decides whether "no answer" competes).
    pub fn evaluate(&self, dataset: &Dataset) -> Result<Evaluation, ModelError> {
        let features = FeatureSet::build(dataset, &self.tokenizer, self.settings.window)?;
        let decode = DecodeConfig {
            version_2_with_negative: dataset.version == SquadVersion::V2,
            ..self.settings.decode
        };
        Ok(evaluate_features(
            &self.model,
            dataset,
            &features,
            &decode,
            self.batching(),
            &self.device,
        )?)
    }

    fn batching(&self) -> Batching {
        Batching {
            batch_size: self.batch_size,
            pad_to: None,
        }
    }
}

/// The checks every request gets, wherever it comes from.
fn check_request(
    context: &str,
    questions: &[impl AsRef<str>],
    top_k: usize,
) -> Result<(), ModelError> {
    if context.trim().is_empty() {
        return Err(ModelError::Input("the context is empty".into()));
    }
    if questions.is_empty() {
        return Err(ModelError::Input("no question was asked".into()));
    }
    if let Some(i) = questions.iter().position(|q| q.as_ref().trim().is_empty()) {
        return Err(ModelError::Input(format!("question {} is empty", i + 1)));
    }
    if top_k == 0 {
        return Err(ModelError::Input(
            "the number of candidates must be at least 1".into(),
        ));
    }
    Ok(())
}

impl Answer {
    /// The answer to `question` with at most `shown` candidates. A best "candidate" with an empty
    /// span is run_qa.py's placeholder for "no valid span": shown as no answer.
    fn new(context: &str, question: &str, p: &ExamplePrediction, shown: usize) -> Self {
        let best = &p.nbest[0];
        let answer = if best.end > best.start {
            p.answer.clone()
        } else {
            String::new()
        };
        let (s_start, s_end) = sentence_around(context, best.start, best.end);
        Answer {
            question: question.to_string(),
            answer,
            probability: best.probability,
            score: best.start_logit + best.end_logit,
            start: best.start,
            end: best.end,
            sentence: context
                .chars()
                .skip(s_start)
                .take(s_end - s_start)
                .collect(),
            sentence_start: s_start,
            candidates: p
                .nbest
                .iter()
                .filter(|c| c.end > c.start)
                .take(shown)
                .map(|c| Candidate {
                    text: c.text.clone(),
                    probability: c.probability,
                    score: c.start_logit + c.end_logit,
                    start: c.start,
                    end: c.end,
                })
                .collect(),
        }
    }
}

/// A dataset of one context and some questions, for answering outside any file.
fn adhoc_dataset(context: &str, questions: &[impl AsRef<str>]) -> Dataset {
    let examples = questions
        .iter()
        .enumerate()
        .map(|(i, q)| Example {
            id: format!("q{i}"),
            question: q.as_ref().to_string(),
            context: 0,
            answers: Vec::new(),
            is_impossible: false,
            location: Location {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    /// A tiny random model with a word-piece vocabulary, saved as a model directory.
    fn tiny_model_dir() -> tempfile::TempDir {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "tower", "was", "built", "in",
            "1889", "when", "what", "is", "paris", "a", "city", ".", "?",
        ];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vocab.txt"), words.join("\n")).unwrap();
        let config = BertConfig::tiny(words.len());
        let model = BertForQuestionAnswering::<CpuBackend>::init(&config, &Default::default());
        crate::save_pretrained(&model, &config, None, dir.path()).unwrap();
        dir
    }

    const CONTEXT: &str = "Paris is a city. The tower was built in 1889.";

    #[test]
    fn answers_are_spans_of_the_context_with_their_sentence() {
        let dir = tiny_model_dir();
        let answerer =
            QuestionAnswerer::<CpuBackend>::load(dir.path(), Default::default()).unwrap();
        let questions = ["When was the tower built?", "What is Paris?"];
        let answers = answerer.answer(CONTEXT, &questions, 2).unwrap();
        assert_eq!(answers.len(), 2);
        for (a, q) in answers.iter().zip(questions) {
            assert_eq!(a.question, q);
            let span: String = CONTEXT
                .chars()
                .skip(a.start)
                .take(a.end - a.start)
                .collect();
            assert_eq!(a.answer, span);
            assert!(a.candidates.len() <= 2 && !a.candidates.is_empty());
            assert!((0.0..=1.0).contains(&a.probability));
            let sentence: String = CONTEXT
                .chars()
                .skip(a.sentence_start)
                .take(a.sentence.chars().count())
                .collect();
            assert_eq!(a.sentence, sentence);
            assert!(a.sentence_start <= a.start && a.end <= a.sentence_start + sentence.len());
        }
    }

    #[test]
    fn windows_of_several_requests_batched_together_give_the_same_answers() {
        let dir = tiny_model_dir();
        let mut answerer =
            QuestionAnswerer::<CpuBackend>::load(dir.path(), Default::default()).unwrap();
        // Short windows, so a request has several and they differ in length.
        let mut settings = *answerer.settings();
        settings.window.max_seq_length = 16;
        settings.window.max_query_length = 8;
        settings.window.doc_stride = 4;
        answerer = answerer.with_settings(settings).unwrap();
        let requests = [
            (CONTEXT, vec!["When was the tower built?", "What is Paris?"]),
            ("The tower was built in 1889.", vec!["What was built?"]),
        ];
        let alone: Vec<Vec<Answer>> = requests
            .iter()
            .map(|(c, q)| answerer.answer(c, q, 3).unwrap())
            .collect();
        let prepared: Vec<Prepared> = requests
            .iter()
            .map(|(c, q)| answerer.prepare(c, q, 3).unwrap())
            .collect();
        let windows: Vec<Vec<Window>> = prepared.iter().map(Prepared::windows).collect();
        assert!(windows[0].len() > 2, "{} windows", windows[0].len());
        // Every window of both requests in one forward pass, interleaved.
        let mut all: Vec<(usize, usize)> = Vec::new();
        for (r, w) in windows.iter().enumerate() {
            all.extend((0..w.len()).map(|i| (r, i)));
        }
        all.reverse();
        let batch: Vec<&Window> = all.iter().map(|&(r, i)| &windows[r][i]).collect();
        let logits = answerer.forward_windows(&batch);
        for (r, p) in prepared.iter().enumerate() {
            let mut mine: Vec<(usize, WindowLogits)> = all
                .iter()
                .zip(&logits)
                .filter(|((rr, _), _)| *rr == r)
                .map(|(&(_, i), l)| (i, l.clone()))
                .collect();
            mine.sort_by_key(|(i, _)| *i);
            let outputs = FeatureOutputs::from_windows(mine.into_iter().map(|(_, l)| l).collect());
            let batched = answerer.finish(p, &outputs);
            for (a, b) in alone[r].iter().zip(&batched) {
                assert_eq!((&a.answer, a.start, a.end), (&b.answer, b.start, b.end));
                assert!(
                    (a.score - b.score).abs() < 1e-5,
                    "{} vs {}",
                    a.score,
                    b.score
                );
                assert_eq!(a.candidates.len(), b.candidates.len());
            }
        }
    }

    #[test]
    fn bad_requests_are_refused_with_what_is_wrong() {
        let dir = tiny_model_dir();
        let answerer =
            QuestionAnswerer::<CpuBackend>::load(dir.path(), Default::default()).unwrap();
        let err = |c: &str, q: &[&str], k| answerer.answer(c, q, k).unwrap_err().to_string();
        assert_eq!(err(" ", &["q"], 1), "the context is empty");
        assert_eq!(err(CONTEXT, &["q", "  "], 1), "question 2 is empty");
        assert_eq!(err(CONTEXT, &[], 1), "no question was asked");
        assert!(err(CONTEXT, &["q"], 0).contains("at least 1"));
    }

    #[test]
    fn a_trained_models_settings_are_used_and_checked() {
        let dir = tiny_model_dir();
        let config = BertConfig::load(&dir.path().join("config.json")).unwrap();
        let mut settings = AnsweringSettings::defaults_for(&config);
        settings.decode.max_answer_length = 1;
        settings.save(dir.path()).unwrap();
        let answerer =
            QuestionAnswerer::<CpuBackend>::load(dir.path(), Default::default()).unwrap();
        assert_eq!(answerer.settings(), &settings);
        for a in answerer
            .answer(CONTEXT, &["When was the tower built?"], 5)
            .unwrap()
        {
            // One token at most: a single word of the context.
            assert!(a.candidates.iter().all(|c| !c.text.contains(' ')), "{a:?}");
        }
        let mut too_long = settings;
        too_long.window.max_seq_length = 129;
        let err = answerer.with_settings(too_long).err().unwrap().to_string();
        assert!(
            err.contains("exceeds the model's max_position_embeddings 128"),
            "{err}"
        );
    }
}
