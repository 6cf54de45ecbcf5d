//! CPU inference latency of MiniLM-L6 with the span head, on both CPU backends burn 0.21 offers
//! (the faster one is `qa_model::CpuBackend`), and with int8 linear layers (`qa quantize`). Reference, PyTorch 2.15 CPU with 2 threads on the
//! same model and machine: bs1/128 21.6 ms, bs1/384 55.7 ms, bs8/384 384.5 ms.
//!
//! QA_SHARED_DIR=../shared cargo bench -p qa-model
//!
//! With `QA_BENCH_MODELS=name=DIR,...` the same shapes also run on those model directories, on the
//! CPU backend only (base-size DistilBERT and RoBERTa with random weights:
//! `tests/parity/random_family_model.py`; PyTorch's figures: `tests/parity/torch_latency.py DIR`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::backend::{Flex, NdArray};
use burn::tensor::backend::Backend;
use criterion::{Criterion, criterion_group, criterion_main};
use qa_model::{BertForQuestionAnswering, BertInput, load_pretrained};

/// The same allocator as the `qa` binary, so the timings match what users get.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn input<B: Backend>(batch: usize, seq: usize, device: &B::Device) -> BertInput<B> {
    let ids: Vec<i32> = (0..batch * seq)
        .map(|i| 1000 + (i * 7919 % 20000) as i32)
        .collect();
    let types: Vec<i32> = (0..batch * seq)
        .map(|i| ((i % seq) >= seq / 4) as i32)
        .collect();
    BertInput::from_host(ids, types, vec![false; batch * seq], [batch, seq], device)
}

fn bench_backend<B: Backend>(c: &mut Criterion, group: &str, model_dir: &Path) {
    let device = B::Device::default();
    let model = load_pretrained::<B>(model_dir, &device).unwrap().model;
    bench_model(c, group, &model, &device);
}

fn bench_model<B: Backend>(
    c: &mut Criterion,
    group: &str,
    model: &BertForQuestionAnswering<B>,
    device: &B::Device,
) {
    let mut group = c.benchmark_group(group);
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(10));
    for (batch, seq) in [(1, 128), (1, 384), (8, 384)] {
        let x = input::<B>(batch, seq, device);
        group.bench_function(format!("bs{batch}-seq{seq}"), |b| {
            b.iter(|| {
                let out = model.forward(&x);
                // Reading the result back makes the timing include all the work.
                out.start.into_data()
            })
        });
    }
    group.finish();
}

fn inference(c: &mut Criterion) {
    let Some(shared) = std::env::var_os("QA_SHARED_DIR").map(PathBuf::from) else {
        eprintln!("skipped: set QA_SHARED_DIR to the shared assets folder");
        return;
    };
    let model_dir = shared.join("models/all-MiniLM-L6-v2");
    bench_backend::<Flex>(c, "minilm-qa-forward/flex", &model_dir);
    // int8 linear layers (`qa quantize`) on the CPU backend.
    let device = Default::default();
    let int8 = load_pretrained::<Flex>(&model_dir, &device)
        .unwrap()
        .model
        .quantized();
    bench_model(c, "minilm-qa-forward/int8", &int8, &device);
    bench_backend::<NdArray>(c, "minilm-qa-forward/ndarray", &model_dir);
    let others = std::env::var("QA_BENCH_MODELS").unwrap_or_default();
    for entry in others.split(',').filter(|e| !e.is_empty()) {
        let (name, dir) = entry
            .split_once('=')
            .expect("QA_BENCH_MODELS entries are name=DIR");
        bench_backend::<Flex>(c, &format!("{name}-qa-forward/flex"), Path::new(dir));
    }
}

criterion_group!(benches, inference);
criterion_main!(benches);
