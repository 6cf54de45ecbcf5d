//! Training on the CPU with the real pretrained MiniLM: the model learns, a resumed run equals an
//! uninterrupted one, early stopping stops, a damaged checkpoint is refused, a diverging run stops,
//! and burn's own operations (what CUDA runs) train like our CPU kernels.
//!
//! Needs the shared assets (`QA_SHARED_DIR`, see tests/support): ignored without them.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use burn::backend::{Autodiff, Flex, NdArray};
use burn::tensor::backend::{AutodiffBackend, Backend};
use qa_train::log::EvalRecord;
use qa_train::{RunOptions, TrainConfig};

#[path = "../../../tests/support/mod.rs"]
mod support;

/// Six short questions whose answers a model can memorise.
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

fn setup(model: &Path, extra: &str) -> (tempfile::TempDir, TrainConfig) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.json");
    std::fs::write(&data, DATA).unwrap();
    // Check the offsets above: every answer is where it says.
    let ds = qa_data::Dataset::load(
        &data,
        qa_data::LoadOptions {
            misaligned: qa_data::MisalignedPolicy::Error,
        },
    )
    .unwrap();
    assert_eq!(ds.examples.len(), 6);
    let config = format!(
        r#"model = "{model}"
train_data = "{data}"
eval_data = "{data}"
output_dir = "{out}"
max_seq_length = 64
doc_stride = 16
max_query_length = 24
eval_batch_size = 6
n_best_size = 10
max_answer_length = 10
save_steps = 0
save_eval_checkpoints = false
save_model_every_epoch = false
device = "cpu"
{extra}
"#,
        model = model.display(),
        data = data.display(),
        out = dir.path().join("out").display(),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let config = TrainConfig::load(&path, &[]).unwrap();
    (dir, config)
}

fn quiet(_: String) {}

/// Dropout masks come from the backend's global generator, seeded before each step: a run on
/// another test thread drawing in between would change them. Training tests take turns.
fn one_run_at_a_time() -> MutexGuard<'static, ()> {
    static TRAINING: Mutex<()> = Mutex::new(());
    TRAINING.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn minilm_overfits_six_questions() {
    let model = support::shared_minilm();
    let _turn = one_run_at_a_time();
    let (_dir, config) = setup(
        &model,
        "num_train_epochs = 25\nlearning_rate = 2e-4\nwarmup_ratio = 0.0\nevaluate_during_training = true\nevaluate_during_training_steps = 0\n",
    );
    let summary = qa_train::train(&config, &RunOptions::default(), &quiet).unwrap();
    let first = &summary.evaluations[0];
    let last = summary.evaluations.last().unwrap();
    assert!(
        last.eval_loss < first.eval_loss / 4.0,
        "{:?}",
        summary.evaluations
    );
    assert_eq!(last.exact, 100.0, "{:?}", summary.evaluations);
    // The best model was exported in Hugging Face layout and loads back.
    let reloaded = qa_model::load_pretrained::<qa_model::CpuBackend>(
        &summary.best_model_dir,
        &Default::default(),
    )
    .unwrap();
    assert!(!reloaded.report.head_initialized);
    let csv =
        std::fs::read_to_string(summary.output_dir.join("training_progress_scores.csv")).unwrap();
    assert_eq!(csv.lines().count(), summary.evaluations.len() + 1);
    let jsonl =
        std::fs::read_to_string(summary.output_dir.join(qa_train::log::LOSS_JSONL)).unwrap();
    let logged: Vec<qa_train::log::LossRecord> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!logged.is_empty());
    assert_eq!(logged, summary.losses);
}

/// The largest difference between two safetensors files of the same tensors.
fn describe_difference(a: &[u8], b: &[u8]) -> String {
    let (a, b) = (
        safetensors::SafeTensors::deserialize(a).unwrap(),
        safetensors::SafeTensors::deserialize(b).unwrap(),
    );
    let mut worst = (0.0f32, String::new());
    for (name, ta) in a.tensors() {
        let tb = b.tensor(&name).unwrap();
        for (x, y) in ta.data().chunks_exact(4).zip(tb.data().chunks_exact(4)) {
            let d = (f32::from_le_bytes(x.try_into().unwrap())
                - f32::from_le_bytes(y.try_into().unwrap()))
            .abs();
            if d > worst.0 {
                worst = (d, name.clone());
            }
        }
    }
    format!("max abs difference {} in {}", worst.0, worst.1)
}

fn final_weights(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("model.safetensors")).unwrap()
}

#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn resumed_run_equals_uninterrupted_run() {
    let model = support::shared_minilm();
    let _turn = one_run_at_a_time();
    // Dropout is on (MiniLM's config says 0.1), weight decay and clipping too; batches are
    // grouped by length.
    let extra = "max_steps = 6\nlearning_rate = 1e-4\nwarmup_ratio = 0.2\nweight_decay = 0.01\nmax_grad_norm = 0.5\nevaluate_during_training = false\nnum_train_epochs = 5\ngradient_accumulation_steps = 2\ntrain_batch_size = 2\ngroup_by_length = true\n";
    let (_a, straight) = setup(&model, extra);
    let summary = qa_train::train(&straight, &RunOptions::default(), &quiet).unwrap();
    assert_eq!(summary.global_step, 6);
    let expected = final_weights(&straight.output_dir);

    let (_b, interrupted) = setup(&model, extra);
    let halted = qa_train::train(
        &interrupted,
        &RunOptions {
            resume: false,
            halt_after_steps: Some(3),
        },
        &quiet,
    )
    .unwrap();
    assert!(halted.halted);
    assert_eq!(halted.global_step, 3);
    let resumed = qa_train::train(
        &interrupted,
        &RunOptions {
            resume: true,
            halt_after_steps: None,
        },
        &quiet,
    )
    .unwrap();
    assert_eq!(resumed.global_step, 6);
    let got = final_weights(&interrupted.output_dir);
    assert!(
        got == expected,
        "resumed weights differ: {}",
        describe_difference(&got, &expected)
    );

    // Damage the checkpoint: resuming refuses it.
    let ckpt_root = interrupted.output_dir.join("checkpoints");
    let latest = std::fs::read_to_string(ckpt_root.join("latest")).unwrap();
    let record = ckpt_root.join(latest.trim()).join("model.bin");
    let mut bytes = std::fs::read(&record).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&record, bytes).unwrap();
    let err = qa_train::train(
        &interrupted,
        &RunOptions {
            resume: true,
            halt_after_steps: None,
        },
        &quiet,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn early_stopping_stops_after_patience() {
    let model = support::shared_minilm();
    let _turn = one_run_at_a_time();
    // No evaluation can improve on the first by more than the delta: with patience 1 the run
    // stops at the third evaluation.
    let (_dir, config) = setup(
        &model,
        "num_train_epochs = 10\nevaluate_during_training = true\nevaluate_during_training_steps = 1\nuse_early_stopping = true\nearly_stopping_patience = 1\nearly_stopping_delta = 1e9\n",
    );
    let summary = qa_train::train(&config, &RunOptions::default(), &quiet).unwrap();
    assert!(summary.stopped_early);
    assert_eq!(summary.global_step, 3);
    assert_eq!(summary.evaluations.len(), 3);
    assert_eq!(summary.best.map(|(step, _)| step), Some(1));
}

#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn existing_output_dir_is_not_touched_without_permission() {
    let model = support::shared_minilm();
    let _turn = one_run_at_a_time();
    let (_dir, mut config) = setup(&model, "evaluate_during_training = false\n");
    std::fs::create_dir_all(&config.output_dir).unwrap();
    std::fs::write(config.output_dir.join("keep.txt"), "mine").unwrap();
    config.overwrite_output_dir = false;
    let err = qa_train::train(&config, &RunOptions::default(), &quiet)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("overwrite_output_dir"), "{err}");
    assert_eq!(
        std::fs::read_to_string(config.output_dir.join("keep.txt")).unwrap(),
        "mine"
    );
}

#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn a_diverging_run_stops_and_keeps_its_last_checkpoint() {
    let model = support::shared_minilm();
    let _turn = one_run_at_a_time();
    // A learning rate no model survives: the loss turns NaN after the first updates.
    let (_dir, mut config) = setup(
        &model,
        "max_steps = 6\nnum_train_epochs = 6\ntrain_batch_size = 2\nlearning_rate = 1e9\nwarmup_ratio = 0.0\nevaluate_during_training = false\n",
    );
    config.save_steps = 1;
    let err = qa_train::train(&config, &RunOptions::default(), &quiet)
        .expect_err("a run at learning rate 1e9 fails")
        .to_string();
    assert!(err.contains("training loss became NaN at step "), "{err}");
    let failed_at: usize = err
        .split("at step ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in: {err}"));
    // The checkpoint the message names is the one `latest` points at, it is intact and it holds
    // the update before the failing step.
    let latest = qa_train::checkpoint::latest(&config.output_dir).unwrap();
    assert!(
        err.contains(&format!(
            "the last good checkpoint, {}, is kept",
            latest.display()
        )),
        "{err}"
    );
    let kept = qa_train::checkpoint::load_latest(&config.output_dir).unwrap();
    assert_eq!(kept.state.global_step + 1, failed_at, "{err}");
}

/// The shared MiniLM with a span head drawn once and dropout off, saved to `dir` in Hugging Face
/// layout: one starting point for runs on two backends (each has its own generator, so a head
/// drawn by each would differ).
fn start_model(minilm: &Path, dir: &Path) -> PathBuf {
    let device = Default::default();
    Flex::seed(&device, 5);
    let loaded = qa_model::load_pretrained::<Flex>(minilm, &device).unwrap();
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

/// Trains `config` on backend `B`: the loss after every update, and the evaluations.
fn losses_and_evaluations<B: AutodiffBackend>(config: &TrainConfig) -> (Vec<f64>, Vec<EvalRecord>) {
    let summary =
        qa_train::trainer::train::<B>(config, &RunOptions::default(), Default::default(), &quiet)
            .unwrap();
    let losses = summary.losses.iter().map(|r| r.loss).collect();
    (losses, summary.evaluations)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3 * b.abs().max(1.0)
}

/// The same run on `Autodiff<NdArray>` (burn's own operations for every layer, as on CUDA) and on
/// `Autodiff<Flex>` (our training kernels, whose steps equal PyTorch's: `torch_parity`) reports
/// the same loss after every update and the same evaluations. Without dropout, so that nothing
/// random is left once both start from one model.
#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn burn_operations_train_like_our_cpu_kernels() {
    let model = support::shared_minilm();
    let _turn = one_run_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let start = start_model(&model, dir.path());
    // Warmup, decay, weight decay and clipping on; batches of 3 over 6 features, 4 epochs.
    let extra = "train_batch_size = 3\nnum_train_epochs = 4\nlearning_rate = 1e-4\nwarmup_ratio = 0.25\nweight_decay = 0.01\nmax_grad_norm = 0.5\nlogging_steps = 1\nevaluate_during_training = true\nevaluate_during_training_steps = 0\nmanual_seed = 3\n";
    let (_a, on_flex) = setup(&start, extra);
    let (_b, on_ndarray) = setup(&start, extra);
    let (kernels, kernel_evals) = losses_and_evaluations::<Autodiff<Flex>>(&on_flex);
    let (generic, generic_evals) = losses_and_evaluations::<Autodiff<NdArray>>(&on_ndarray);
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
    assert_eq!(kernel_evals.len(), 4, "{kernel_evals:?}");
    assert_eq!(generic_evals.len(), kernel_evals.len(), "{generic_evals:?}");
    for (g, k) in generic_evals.iter().zip(&kernel_evals) {
        assert_eq!(g.global_step, k.global_step);
        assert!(close(g.eval_loss, k.eval_loss), "{g:?} vs {k:?}");
        assert_eq!((g.exact, g.f1), (k.exact, k.f1), "{g:?} vs {k:?}");
    }
}
