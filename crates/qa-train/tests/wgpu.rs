//! The GPU code path (burn's cubecl kernels, fusion and autotuning: what CUDA runs) through
//! wgpu, against the CPU path: every family's span logits, answers and five training updates on
//! a wgpu adapter equal those on `Flex` and `Autodiff<Flex>`. In CI the adapter is Mesa's
//! lavapipe, a Vulkan device on the CPU; on a machine with a GPU it is the GPU.
//!
//! One test binary for the whole path, here because it needs the trainer. It is built by a plain
//! `cargo test` (burn's wgpu backend is a dev-dependency), so CI compiles the trainer once, not a
//! second time with the `wgpu` feature; the tests are ignored there, as a plain `cargo test`
//! cannot assume a Vulkan device. `.ci/run` installs lavapipe and runs them with
//! `--include-ignored`. The progress lines (`--nocapture`) carry the seconds since each run
//! began, which show what the first calls spend compiling and autotuning kernels.

use std::collections::BTreeMap;
use std::time::Instant;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Flex, Wgpu};
use burn::tensor::backend::Backend;
use qa_data::{Dataset, LoadOptions};
use qa_model::{Precision, QuestionAnswerer, load_pretrained};

mod common;
#[path = "../../../tests/support/made_up.rs"]
mod made_up;

use common::support::{self, FAMILIES, family};
use common::{close, config, losses, start_model};
use made_up::made_up_input;

/// burn's wgpu backend with fusion and autotuning, as `--device wgpu` runs it.
type WgpuBackend = Wgpu;

/// cubecl's default adapter: a GPU where there is one, else (in CI) lavapipe. Which adapter
/// `--device wgpu` and `auto` choose is tested in `qa_model::device` with stand-in probes.
fn gpu_device() -> WgpuDevice {
    WgpuDevice::default()
}

/// A family's start and end logits for [`input`], on backend `B`.
fn logits<B: Backend>(name: &str, device: &B::Device) -> Vec<f32> {
    let loaded = load_pretrained::<B>(&family(name), device).unwrap();
    let out = loaded
        .model
        .forward(&made_up_input::<B>(loaded.config.pad_token_id, device));
    let mut values: Vec<f32> = out.start.into_data().to_vec().unwrap();
    values.extend(out.end.into_data().to_vec::<f32>().unwrap());
    values
}

#[test]
#[ignore = "needs a wgpu adapter (CI: Mesa lavapipe, apt-get install mesa-vulkan-drivers)"]
fn every_familys_logits_on_wgpu_equal_the_cpu_path() {
    let gpu = gpu_device();
    for name in FAMILIES {
        let started = Instant::now();
        let on_gpu = logits::<WgpuBackend>(name, &gpu);
        let took = started.elapsed();
        let on_cpu = logits::<Flex>(name, &Default::default());
        assert_eq!(on_gpu.len(), on_cpu.len());
        let worst = on_gpu
            .iter()
            .zip(&on_cpu)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{name}: largest difference {worst:e}; first wgpu forward {took:.2?}");
        assert!(worst <= 1e-4, "{name}: logits differ by {worst}");
    }
}

#[test]
#[ignore = "needs a wgpu adapter (CI: Mesa lavapipe, apt-get install mesa-vulkan-drivers)"]
fn answers_on_wgpu_equal_the_cpu_path() {
    let gpu = gpu_device();
    let questions = support::family_fixtures().join("questions.json");
    let dataset = Dataset::load(&questions, LoadOptions::default()).unwrap();
    let answers = |evaluation: qa_model::answering::Evaluation| -> BTreeMap<String, String> {
        let answers = evaluation.predictions.answers();
        answers
            .into_iter()
            .map(|(id, a)| (id.to_string(), a.to_string()))
            .collect()
    };
    for name in ["bert", "deberta-v2"] {
        let on_gpu = QuestionAnswerer::<WgpuBackend>::load(&family(name), gpu.clone()).unwrap();
        let on_cpu = QuestionAnswerer::<Flex>::load(&family(name), Default::default()).unwrap();
        let gpu_answers = answers(on_gpu.evaluate(&dataset).unwrap());
        assert_eq!(gpu_answers.len(), dataset.examples.len(), "{name}");
        assert_eq!(
            gpu_answers,
            answers(on_cpu.evaluate(&dataset).unwrap()),
            "{name}"
        );
    }
}

/// Five updates without dropout from one starting model, with weight decay and clipping, on
/// wgpu and on our CPU training kernels: the same loss after every update, within 1e-3.
#[test]
#[ignore = "needs a wgpu adapter (CI: Mesa lavapipe, apt-get install mesa-vulkan-drivers)"]
fn five_updates_on_wgpu_equal_our_cpu_kernels() {
    let gpu = gpu_device();
    let dir = tempfile::tempdir().unwrap();
    let start = start_model(dir.path());
    let extra = "max_steps = 5\nnum_train_epochs = 3\nweight_decay = 0.01\nmax_grad_norm = 1.0\n";
    let on_cpu = config(&start, &dir.path().join("cpu"), extra);
    let on_gpu = config(&start, &dir.path().join("wgpu"), extra);
    let cpu = losses::<Autodiff<Flex>>(&on_cpu, Default::default());
    let gpu = losses::<Autodiff<WgpuBackend>>(&on_gpu, gpu);
    eprintln!("losses, CPU kernels: {cpu:?}\nlosses, wgpu: {gpu:?}");
    assert_eq!(cpu.len(), 5, "{cpu:?}");
    assert!(cpu[4] < cpu[0], "the run does not learn: {cpu:?}");
    assert_eq!(gpu.len(), cpu.len(), "{gpu:?}");
    for (step, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(
            close(*g, *c, 1e-3),
            "update {}: wgpu {g}, CPU {c}",
            step + 1
        );
    }
}

/// bf16 is refused on wgpu, saying why: by the trainer before anything is written, and by the
/// answerer.
#[test]
#[ignore = "needs a wgpu adapter (CI: Mesa lavapipe, apt-get install mesa-vulkan-drivers)"]
fn bf16_on_wgpu_is_refused_with_the_reason() {
    let gpu = gpu_device();
    let dir = tempfile::tempdir().unwrap();
    let start = start_model(dir.path());
    let config = config(&start, dir.path(), "precision = \"bf16\"\nmax_steps = 1\n");
    let err = qa_train::trainer::train::<Autodiff<WgpuBackend>>(
        &config,
        &Default::default(),
        gpu.clone(),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("bf16") && err.contains("wgpu"), "{err}");
    assert!(
        !dir.path().join("out").exists(),
        "the output dir was created"
    );
    let answerer = QuestionAnswerer::<WgpuBackend>::load(&family("bert"), gpu).unwrap();
    let err = answerer
        .with_precision(Precision::Bf16)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("bf16"), "{err}");
}
