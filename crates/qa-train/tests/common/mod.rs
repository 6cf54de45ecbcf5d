//! A small training run from a tiny committed fixture, on any backend: what the backend and
//! precision tests compare.

#![allow(dead_code)] // each test binary uses part of this

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::backend::AutodiffBackend;
use qa_train::{RunOptions, TrainConfig};

#[path = "../../../../tests/support/mod.rs"]
pub mod support;

/// The tiny random BERT fixture with dropout off, saved to `dir`: one starting point for runs
/// on several backends (each draws its own span head otherwise; this one has one).
pub fn start_model(dir: &Path) -> PathBuf {
    let fixture = support::family_fixtures().join("bert");
    let loaded = qa_model::load_pretrained::<Flex>(&fixture, &Default::default()).unwrap();
    assert!(!loaded.report.head_initialized);
    let mut config = loaded.config;
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    let start = dir.join("start");
    let tokenizer = fixture.join("tokenizer.json");
    qa_model::save_pretrained(&loaded.model, &config, Some(&tokenizer), &start).unwrap();
    start
}

/// A config training `model` on the fixtures' twelve questions: batches of 4, one update each,
/// the loss logged after every update. `extra` adds or overrides keys.
pub fn config(model: &Path, dir: &Path, extra: &str) -> TrainConfig {
    let data = support::family_fixtures().join("questions.json");
    let text = format!(
        r#"model = "{model}"
train_data = "{data}"
eval_data = "{data}"
output_dir = "{out}"
max_seq_length = 96
doc_stride = 24
max_query_length = 32
train_batch_size = 4
eval_batch_size = 8
learning_rate = 1e-3
warmup_ratio = 0.0
save_steps = 0
save_eval_checkpoints = false
save_model_every_epoch = false
logging_steps = 1
manual_seed = 3
{extra}
"#,
        model = model.display(),
        data = data.display(),
        out = dir.join("out").display(),
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    TrainConfig::load(&path, &[]).unwrap()
}

/// Trains `config` on backend `B` on `device`: the loss after every update. Each progress line
/// is printed with the seconds since the run began (`--nocapture` shows them).
pub fn losses<B: AutodiffBackend>(config: &TrainConfig, device: B::Device) -> Vec<f64> {
    let started = Instant::now();
    let say = |line: String| eprintln!("[{:7.2} s] {line}", started.elapsed().as_secs_f64());
    let summary = qa_train::trainer::train::<B>(config, &RunOptions::default(), device, &say)
        .unwrap_or_else(|e| panic!("{e:#}"));
    summary.losses.iter().map(|r| r.loss).collect()
}

/// Within `tolerance` of `b`, relative above 1.
pub fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance * b.abs().max(1.0)
}
