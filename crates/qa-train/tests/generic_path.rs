//! The path a GPU runs trains like the CPU path: the same run on `Autodiff<NdArray>` (burn's own
//! operations for every layer, as on CUDA) and on `Autodiff<Flex>` (our training kernels, whose
//! steps equal PyTorch's: `torch_parity`) reports the same loss after every update and the same
//! evaluation. Without dropout, so that nothing random is left once both start from one model.
//!
//! Needs `QA_SHARED_DIR` (the shared MiniLM); skipped, saying so, without it.

use std::path::{Path, PathBuf};

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::{AutodiffBackend, Backend};
use qa_train::log::EvalRecord;
use qa_train::{RunOptions, TrainConfig};

/// Six questions on three short paragraphs.
const DATA: &str = r#"[
 {"context": "The Eiffel Tower was completed in 1889 in Paris. It was designed by the company of Gustave Eiffel.",
  "qas": [
   {"id": "a1", "question": "When was the Eiffel Tower completed?", "is_impossible": false, "answers": [{"text": "1889", "answer_start": 34}]},
   {"id": "a2", "question": "Whose company designed the tower?", "is_impossible": false, "answers": [{"text": "Gustave Eiffel", "answer_start": 83}]}]},
 {"context": "Marie Curie won the Nobel Prize in Physics in 1903 and the Nobel Prize in Chemistry in 1911.",
  "qas": [
   {"id": "b1", "question": "When did Curie win the chemistry prize?", "is_impossible": false, "answers": [{"text": "1911", "answer_start": 87}]},
   {"id": "b2", "question": "Who won the Nobel Prize in Physics in 1903?", "is_impossible": false, "answers": [{"text": "Marie Curie", "answer_start": 0}]}]},
 {"context": "The Amazon river flows through Brazil, Peru and Colombia before reaching the Atlantic Ocean.",
  "qas": [
   {"id": "c1", "question": "Which ocean does the Amazon reach?", "is_impossible": false, "answers": [{"text": "Atlantic Ocean", "answer_start": 77}]},
   {"id": "c2", "question": "Which river flows through Peru?", "is_impossible": false, "answers": [{"text": "Amazon", "answer_start": 4}]}]}
]"#;

/// The shared MiniLM with a span head drawn once and dropout off, saved to `dir` in Hugging Face
/// layout: one starting point for both runs (each backend has its own generator, so a head drawn
/// by each would differ).
fn start_model(shared: &Path, dir: &Path) -> PathBuf {
    let minilm = shared.join("models/all-MiniLM-L6-v2");
    let device = Default::default();
    Flex::seed(&device, 5);
    let loaded = qa_model::load_pretrained::<Flex>(&minilm, &device).unwrap();
    assert!(loaded.report.head_initialized);
    let mut config = loaded.config;
    config.hidden_dropout_prob = 0.0;
    config.attention_probs_dropout_prob = 0.0;
    let start = dir.join("start");
    qa_model::save_pretrained(
        &loaded.model,
        &config,
        Some(&minilm.join("tokenizer.json")),
        &start,
    )
    .unwrap();
    start
}

/// Trains from `model` on backend `B`: the loss after every update, and the evaluations.
fn run<B: AutodiffBackend>(model: &Path, dir: &Path, name: &str) -> (Vec<f64>, Vec<EvalRecord>) {
    let data = dir.join("data.json");
    std::fs::write(&data, DATA).unwrap();
    let out = dir.join(name);
    // Warmup, decay, weight decay and clipping on; batches of 3 over 6 features.
    let config = format!(
        r#"model = "{model}"
train_data = "{data}"
eval_data = "{data}"
output_dir = "{out}"
max_seq_length = 64
doc_stride = 16
max_query_length = 24
train_batch_size = 3
eval_batch_size = 6
num_train_epochs = 4
learning_rate = 1e-4
warmup_ratio = 0.25
weight_decay = 0.01
max_grad_norm = 0.5
n_best_size = 10
max_answer_length = 10
logging_steps = 1
evaluate_during_training = true
evaluate_during_training_steps = 0
use_early_stopping = false
save_steps = 0
save_eval_checkpoints = false
save_model_every_epoch = false
manual_seed = 3
device = "cpu"
"#,
        model = model.display(),
        data = data.display(),
        out = out.display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    let config = TrainConfig::load(&path, &[]).unwrap();
    let summary =
        qa_train::trainer::train::<B>(&config, &RunOptions::default(), Default::default(), &|_| {})
            .unwrap();
    let log = std::fs::read_to_string(out.join("training_loss.jsonl")).unwrap();
    let losses = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    (losses, summary.evaluations)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3 * b.abs().max(1.0)
}

#[test]
fn burn_operations_train_like_our_cpu_kernels() {
    let Some(shared) = std::env::var_os("QA_SHARED_DIR") else {
        eprintln!("skipped: QA_SHARED_DIR is not set (it points at the shared MiniLM weights)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let start = start_model(Path::new(&shared), dir.path());
    let (kernels, kernel_evals) = run::<Autodiff<Flex>>(&start, dir.path(), "flex");
    let (generic, generic_evals) = run::<Autodiff<NdArray>>(&start, dir.path(), "ndarray");

    eprintln!("losses, our kernels: {kernels:?}\nlosses, burn's operations: {generic:?}");
    assert_eq!(kernels.len(), 8, "updates: {kernels:?}");
    // The run learns, so the comparison covers moving weights.
    assert!(kernels[7] < kernels[0] * 0.8, "{kernels:?}");
    assert_eq!(generic.len(), kernels.len(), "{generic:?}");
    for (step, (g, k)) in generic.iter().zip(&kernels).enumerate() {
        assert!(
            close(*g, *k),
            "update {}: burn's operations {g}, our kernels {k}\n{generic:?}\n{kernels:?}",
            step + 1
        );
    }
    eprintln!(
        "evaluations, our kernels: {kernel_evals:?}\nevaluations, burn's operations: {generic_evals:?}"
    );
    assert_eq!(generic_evals.len(), 4);
    assert_eq!(generic_evals.len(), kernel_evals.len());
    for (g, k) in generic_evals.iter().zip(&kernel_evals) {
        assert_eq!(g.global_step, k.global_step);
        assert!(close(g.eval_loss, k.eval_loss), "{g:?} vs {k:?}");
        assert_eq!((g.exact, g.f1), (k.exact, k.f1), "{g:?} vs {k:?}");
    }
}
