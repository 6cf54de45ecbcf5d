//! The training configuration: a TOML file whose keys are the Simple Transformers argument names
//! people already know. Unknown keys are errors that name the key; combinations that cannot work
//! are errors that say what to change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use qa_data::{DecodeConfig, MisalignedPolicy, WindowConfig};

use crate::early_stopping::StoppingRule;
use crate::log::EvalRecord;

pub use qa_model::{DeviceChoice, Precision};

/// What early stopping and "best model" watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EarlyStoppingMetric {
    Exact,
    F1,
    EvalLoss,
}

impl EarlyStoppingMetric {
    /// The key's value in configs and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::F1 => "f1",
            Self::EvalLoss => "eval_loss",
        }
    }

    /// This metric's value in an evaluation.
    pub fn of(self, evaluation: &EvalRecord) -> f64 {
        match self {
            Self::Exact => evaluation.exact,
            Self::F1 => evaluation.f1,
            Self::EvalLoss => evaluation.eval_loss,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// A Hugging Face model directory (config.json, weights, tokenizer), or a name that
    /// `cargo xtask download --model NAME` fetched into the model cache (e.g. "minilm",
    /// "bert-base-cased").
    pub model: String,
    /// Training data: official SQuAD v1.1/v2.0 JSON or the flat list format.
    pub train_data: PathBuf,
    /// Evaluation data (needed for evaluate_during_training and early stopping).
    #[serde(default)]
    pub eval_data: Option<PathBuf>,

    /// Tokens per feature, special tokens included.
    #[serde(default = "d::max_seq_length")]
    pub max_seq_length: usize,
    /// Tokens shared by consecutive windows of a long context (run_qa.py's meaning).
    #[serde(default = "d::doc_stride")]
    pub doc_stride: usize,
    /// Question tokens beyond this are cut.
    #[serde(default = "d::max_query_length")]
    pub max_query_length: usize,
    /// Pad every batch to max_seq_length (fixed shapes, as run_qa.py) instead of to its longest
    /// feature (faster on the CPU).
    #[serde(default)]
    pub pad_to_max_length: bool,
    /// Batch features of similar length together (shuffled within mega-batches of 50 batches,
    /// then the batches shuffled), so each pads to little more than its own length: about 2.4x
    /// fewer tokens on SQuAD at 384. Needs pad_to_max_length = false.
    #[serde(default)]
    pub group_by_length: bool,

    /// Passes over the training features.
    #[serde(default = "d::num_train_epochs")]
    pub num_train_epochs: usize,
    /// Stop after this many optimizer steps (0 = no limit); for smoke runs.
    #[serde(default)]
    pub max_steps: usize,
    /// Features per micro-batch (an optimizer step takes gradient_accumulation_steps of them).
    #[serde(default = "d::train_batch_size")]
    pub train_batch_size: usize,
    /// Features per batch when evaluating.
    #[serde(default = "d::eval_batch_size")]
    pub eval_batch_size: usize,
    /// AdamW's peak learning rate, reached after warmup and then decayed linearly to 0.
    #[serde(default = "d::learning_rate")]
    pub learning_rate: f64,
    /// AdamW weight decay, not applied to biases and LayerNorm parameters.
    #[serde(default)]
    pub weight_decay: f64,
    /// AdamW's epsilon (added to the root of the second moment).
    #[serde(default = "d::adam_epsilon")]
    pub adam_epsilon: f64,
    /// Fraction of all optimizer steps spent warming the learning rate up from 0.
    #[serde(default = "d::warmup_ratio")]
    pub warmup_ratio: f64,
    /// Clip the global gradient norm to this (0 = no clipping).
    #[serde(default = "d::max_grad_norm")]
    pub max_grad_norm: f64,
    /// Micro-batches per optimizer step.
    #[serde(default = "d::one")]
    pub gradient_accumulation_steps: usize,

    /// Evaluate on eval_data (official EM/F1 over whole examples, and eval loss) while training.
    #[serde(default = "d::yes")]
    pub evaluate_during_training: bool,
    /// Evaluate every this many optimizer steps (and at each epoch end); 0 = epoch ends only.
    #[serde(default = "d::evaluate_during_training_steps")]
    pub evaluate_during_training_steps: usize,
    /// Stop when early_stopping_metric has not improved for early_stopping_patience evaluations.
    #[serde(default)]
    pub use_early_stopping: bool,
    /// What early stopping and the best model are judged by: exact, f1 or eval_loss.
    #[serde(default = "d::early_stopping_metric")]
    pub early_stopping_metric: EarlyStoppingMetric,
    /// Whether lower is better for early_stopping_metric (true for eval_loss only).
    #[serde(default = "d::yes")]
    pub early_stopping_metric_minimize: bool,
    /// Evaluations without improvement tolerated before stopping.
    #[serde(default = "d::early_stopping_patience")]
    pub early_stopping_patience: usize,
    /// Smallest change that counts as an improvement.
    #[serde(default)]
    pub early_stopping_delta: f64,

    /// Where the final model, checkpoints, metric logs, plots and the feature cache go.
    #[serde(default = "d::output_dir")]
    pub output_dir: PathBuf,
    /// Where the best model (by early_stopping_metric) is written, in Hugging Face layout;
    /// default: `<output_dir>/best_model`.
    #[serde(default)]
    pub best_model_dir: Option<PathBuf>,
    /// Allow training into an output_dir that already has content.
    #[serde(default)]
    pub overwrite_output_dir: bool,
    /// Write a model directory (`<output_dir>/checkpoint-STEP-epoch-N`) at every epoch end.
    #[serde(default = "d::yes")]
    pub save_model_every_epoch: bool,
    /// Write a model directory (`<output_dir>/checkpoint-STEP`) at every evaluation.
    #[serde(default = "d::yes")]
    pub save_eval_checkpoints: bool,
    /// Write a resumable checkpoint every this many optimizer steps (0 = only at evaluations and
    /// epoch ends).
    #[serde(default = "d::save_steps")]
    pub save_steps: usize,
    /// Print a progress line every this many optimizer steps when not on a terminal.
    #[serde(default = "d::logging_steps")]
    pub logging_steps: usize,

    /// Start and end candidates per window considered when decoding an answer span.
    #[serde(default = "d::n_best_size")]
    pub n_best_size: usize,
    /// Longest answer span, in tokens.
    #[serde(default = "d::max_answer_length")]
    pub max_answer_length: usize,
    /// SQuAD v2.0: predict no answer when null score - best span score exceeds this.
    #[serde(default)]
    pub null_score_diff_threshold: f32,

    /// Seeds the span head's initialisation, the batch order and the dropout masks.
    #[serde(default = "d::manual_seed")]
    pub manual_seed: u64,
    /// Rebuild features even when the cache has them.
    #[serde(default)]
    pub reprocess_input_data: bool,
    /// Reuse cached evaluation features (when false they are rebuilt once per run).
    #[serde(default = "d::yes")]
    pub use_cached_eval_features: bool,
    /// Feature cache; default `<output_dir>/cache`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// What a misaligned answer gets: realign, skip or error.
    #[serde(default)]
    pub misaligned_answers: MisalignedPolicy,
    /// Use only the first N training / evaluation examples (0 = all); for quick runs.
    #[serde(default)]
    pub max_train_examples: usize,
    #[serde(default)]
    pub max_eval_examples: usize,

    /// auto (CUDA when a GPU is usable, else a hardware wgpu adapter, else the CPU), cuda, wgpu
    /// or cpu.
    #[serde(default)]
    pub device: DeviceChoice,
    /// f32, or bf16 mixed precision: matrix products in bf16, weights, optimizer state, layer
    /// norms, softmax and loss in f32. Refused on a backend without bf16 (wgpu).
    #[serde(default)]
    pub precision: Precision,
}

mod d {
    use super::EarlyStoppingMetric;
    use qa_data::WindowConfig;
    // Windows default to run_qa.py's, which live in WindowConfig.
    pub fn max_seq_length() -> usize {
        WindowConfig::default().max_seq_length
    }
    pub fn doc_stride() -> usize {
        WindowConfig::default().doc_stride
    }
    pub fn max_query_length() -> usize {
        WindowConfig::default().max_query_length
    }
    pub fn num_train_epochs() -> usize {
        1
    }
    pub fn train_batch_size() -> usize {
        8
    }
    pub fn eval_batch_size() -> usize {
        8
    }
    pub fn learning_rate() -> f64 {
        4e-5
    }
    pub fn adam_epsilon() -> f64 {
        1e-8
    }
    pub fn warmup_ratio() -> f64 {
        0.06
    }
    pub fn max_grad_norm() -> f64 {
        1.0
    }
    pub fn one() -> usize {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn evaluate_during_training_steps() -> usize {
        2000
    }
    pub fn early_stopping_metric() -> EarlyStoppingMetric {
        EarlyStoppingMetric::EvalLoss
    }
    pub fn early_stopping_patience() -> usize {
        3
    }
    pub fn output_dir() -> std::path::PathBuf {
        "outputs".into()
    }
    pub fn save_steps() -> usize {
        2000
    }
    pub fn logging_steps() -> usize {
        50
    }
    pub fn n_best_size() -> usize {
        20
    }
    pub fn max_answer_length() -> usize {
        100
    }
    pub fn manual_seed() -> u64 {
        42
    }
}

/// A config problem, naming the key when there is one.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub message: String,
}

impl TrainConfig {
    /// Reads a TOML file, applies `key=value` overrides, resolves relative paths against the
    /// current directory and validates. A wrong key or value is reported at its line in the file,
    /// or as the override it came from.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self, ConfigError> {
        use std::borrow::Cow;
        use toml::Spanned;
        use toml::de::{DeTable, DeValue};

        let err = |message: String| ConfigError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut root = DeTable::parse(&text).map_err(|e| err(e.to_string()))?;
        let whole = root.span();
        let sets: Vec<(&str, String)> = overrides
            .iter()
            .map(|o| {
                o.split_once('=')
                    .map(|(key, value)| (key.trim(), format!("v = {value}")))
                    .ok_or_else(|| err(format!("override '{o}' is not key=value")))
            })
            .collect::<Result<_, _>>()?;
        for (i, (key, doc)) in sets.iter().enumerate() {
            // Values parse as TOML (numbers, booleans, quoted strings); anything else is a
            // string. Spans past the end of the file mark the value as the i-th override's.
            let value = DeTable::parse(doc)
                .ok()
                .and_then(|t| t.into_inner().into_iter().next())
                .map(|(_, v)| v.into_inner())
                .unwrap_or_else(|| DeValue::String(Cow::Borrowed(&doc["v = ".len()..])));
            let span = text.len() + i..text.len() + i + 1;
            root.get_mut().insert(
                Spanned::new(span.clone(), Cow::Borrowed(*key)),
                Spanned::new(span, value),
            );
        }
        let config = TrainConfig::deserialize(toml::de::Deserializer::from(root)).map_err(
            |mut e: toml::de::Error| match e.span() {
                Some(s) if s == whole => err(e.message().to_string()),
                Some(s) if s.end <= text.len() => {
                    e.set_input(Some(&text));
                    err(e.to_string().trim_end().to_string())
                }
                Some(s) => err(format!(
                    "--set {}: {}",
                    overrides[s.start - text.len()],
                    e.message()
                )),
                None => err(e.message().to_string()),
            },
        )?;
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Checks combinations; the message says what to change.
    pub fn validate(&self) -> Result<(), String> {
        self.window().validate().map_err(|e| e.to_string())?;
        let positive = [
            ("train_batch_size", self.train_batch_size),
            ("eval_batch_size", self.eval_batch_size),
            (
                "gradient_accumulation_steps",
                self.gradient_accumulation_steps,
            ),
            ("num_train_epochs", self.num_train_epochs),
            ("n_best_size", self.n_best_size),
            ("max_answer_length", self.max_answer_length),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(format!(
                "warmup_ratio {} must be in [0, 1)",
                self.warmup_ratio
            ));
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(format!(
                "learning_rate {} must be positive",
                self.learning_rate
            ));
        }
        if self.group_by_length && self.pad_to_max_length {
            return Err(
                "group_by_length saves padding only when batches are padded to their \
                        longest feature; set pad_to_max_length = false"
                    .into(),
            );
        }
        if self.eval_data.is_none() {
            if self.evaluate_during_training {
                return Err(
                    "evaluate_during_training needs eval_data; set eval_data = \"FILE\" \
                            or evaluate_during_training = false"
                        .into(),
                );
            }
            if self.use_early_stopping {
                return Err(
                    "use_early_stopping needs eval_data to measure progress; set \
                            eval_data = \"FILE\" or use_early_stopping = false"
                        .into(),
                );
            }
        }
        if self.use_early_stopping && !self.evaluate_during_training {
            return Err(
                "use_early_stopping works on evaluations during training; set \
                        evaluate_during_training = true"
                    .into(),
            );
        }
        let minimize = self.early_stopping_metric == EarlyStoppingMetric::EvalLoss;
        if self.use_early_stopping && minimize != self.early_stopping_metric_minimize {
            return Err(format!(
                "early_stopping_metric {:?} should be {} (set early_stopping_metric_minimize = {minimize})",
                self.early_stopping_metric,
                if minimize { "minimized" } else { "maximized" }
            ));
        }
        Ok(())
    }

    pub fn window(&self) -> WindowConfig {
        WindowConfig {
            max_seq_length: self.max_seq_length,
            doc_stride: self.doc_stride,
            max_query_length: self.max_query_length,
        }
    }

    pub fn decode(&self, version_2_with_negative: bool) -> DecodeConfig {
        DecodeConfig {
            n_best_size: self.n_best_size,
            max_answer_length: self.max_answer_length,
            null_score_diff_threshold: self.null_score_diff_threshold,
            version_2_with_negative,
        }
    }

    pub fn stopping_rule(&self) -> StoppingRule {
        StoppingRule {
            minimize: self.early_stopping_metric_minimize,
            delta: self.early_stopping_delta,
            patience: self.early_stopping_patience,
            stop_early: self.use_early_stopping,
        }
    }

    pub fn best_model_dir(&self) -> PathBuf {
        self.best_model_dir
            .clone()
            .unwrap_or_else(|| self.output_dir.join("best_model"))
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.output_dir.join("cache"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const MINIMAL: &str =
        "model = \"m\"\ntrain_data = \"t.json\"\nevaluate_during_training = false\n";

    /// The original's knobs, with its English model and with a Spanish one.
    #[test]
    fn seed_configs_load_and_match_the_original() {
        for (file, model) in [
            ("seed.toml", "bert-base-cased"),
            ("spanish-beto.toml", "dccuchile/bert-base-spanish-wwm-cased"),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../configs")
                .join(file);
            let c = TrainConfig::load(&path, &[]).unwrap();
            assert_eq!(c.model, model);
            assert_eq!(c.max_seq_length, 128);
            assert_eq!(c.num_train_epochs, 50);
            assert_eq!(c.evaluate_during_training_steps, 1000);
            assert_eq!(c.n_best_size, 3);
            assert!(c.use_early_stopping);
            assert_eq!((c.train_batch_size, c.eval_batch_size), (128, 64));
            assert_eq!(c.manual_seed, 4);
        }
    }

    #[test]
    fn every_shipped_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let (_d, path) = write(&format!("{MINIMAL}learning_rat = 1e-5\n"));
        let err = TrainConfig::load(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("unknown field `learning_rat`"), "{err}");
        assert!(err.contains("at line 4, column 1"), "{err}");
    }

    #[test]
    fn overrides_apply_and_are_typed() {
        let (_d, path) = write(MINIMAL);
        let c = TrainConfig::load(
            &path,
            &[
                "learning_rate=1e-5".into(),
                "output_dir=out/x".into(),
                "pad_to_max_length=true".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.learning_rate, 1e-5);
        assert_eq!(c.output_dir, PathBuf::from("out/x"));
        assert!(c.pad_to_max_length);
        let err = TrainConfig::load(&path, &["num_train_epochs=two".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--set num_train_epochs=two: invalid type: string \"two\""),
            "{err}"
        );
        let err = TrainConfig::load(&path, &["learning_rat=1".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--set learning_rat=1: unknown field `learning_rat`"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_value_is_shown_at_its_line() {
        let (_d, path) = write(&format!(
            "{MINIMAL}# the original's\nmax_seq_length = \"long\"\n"
        ));
        let err = TrainConfig::load(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("c.toml: TOML parse error at line 5"), "{err}");
        assert!(err.contains("max_seq_length = \"long\""), "{err}");
        assert!(
            err.contains("invalid type: string \"long\", expected usize"),
            "{err}"
        );
        // An override replaces the file's value, and its mistakes are the override's.
        let err = TrainConfig::load(&path, &["max_seq_length=384".into(), "device=gpu".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--set device=gpu: unknown variant `gpu`"),
            "{err}"
        );
    }

    #[test]
    fn impossible_combinations_say_what_to_change() {
        let (_d, path) = write("model = \"m\"\ntrain_data = \"t.json\"\n");
        let err = TrainConfig::load(&path, &[]).unwrap_err().to_string();
        assert!(
            err.contains("evaluate_during_training needs eval_data"),
            "{err}"
        );
        let (_d, path) = write(&format!("{MINIMAL}max_seq_length = 128\n"));
        let err = TrainConfig::load(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("set doc_stride to at most 60"), "{err}");
        let grouped = "group_by_length = true\npad_to_max_length = true\n";
        let (_d, path) = write(&format!("{MINIMAL}{grouped}"));
        let err = TrainConfig::load(&path, &[]).unwrap_err().to_string();
        assert!(err.contains("set pad_to_max_length = false"), "{err}");
    }
}
