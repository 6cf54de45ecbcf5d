//! What the `qa` binary's tests share: running it, and a tiny random model to run it on.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qa_model::{BertConfig, BertForQuestionAnswering, CpuBackend, save_pretrained};

pub fn qa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_qa"))
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("qa runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "qa panicked: {stderr}");
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tiny BERT with a word-piece vocabulary, saved as a model directory.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let words = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "tower", "was", "built", "in", "1889",
        "when", "what", "is", "paris", "a", "city", "of", "france", ".", "?", ",",
    ];
    let model_dir = dir.join("tiny-model");
    std::fs::create_dir_all(&model_dir).unwrap();
    std::fs::write(model_dir.join("vocab.txt"), words.join("\n")).unwrap();
    let config = BertConfig::tiny(words.len());
    // Seeded, so every test run sees the same model.
    <CpuBackend as burn::tensor::backend::Backend>::seed(&Default::default(), 7);
    let model = BertForQuestionAnswering::<CpuBackend>::init(&config, &Default::default());
    save_pretrained(&model, &config, None, &model_dir).unwrap();
    model_dir
}

pub const CONTEXT: &str = "Paris is a city of France. The tower was built in 1889.";
