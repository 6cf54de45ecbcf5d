//! Windowing SQuAD v1.1 train (87,599 questions) with the MiniLM tokenizer at 384/128: loading,
//! tokenization and windowing, everything `FeatureSet::build` does. Reference on the same 2-core
//! machine: Hugging Face's fast tokenizer with run_qa.py's recipe, 63.9 s.
//!
//! QA_SHARED_DIR=../shared cargo bench -p qa-data
//!
//! With `QA_BENCH_TOKENIZERS=name=DIR,...` the windowing also runs with those tokenizers (other
//! families' kinds at realistic sizes: `tests/parity/bench_tokenizers.py`).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use qa_data::{Casing, Dataset, FeatureSet, LoadOptions, QaTokenizer, WindowConfig};

fn windowing(c: &mut Criterion) {
    let Some(shared) = std::env::var_os("QA_SHARED_DIR").map(PathBuf::from) else {
        eprintln!("skipped: set QA_SHARED_DIR to the shared assets folder");
        return;
    };
    let train = shared.join("data/squad/train-v1.1.json");
    let tok = QaTokenizer::from_path(shared.join("models/all-MiniLM-L6-v2"), Casing::Auto).unwrap();
    let mut group = c.benchmark_group("squad-v1.1-train");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(30));
    group.bench_function("load", |b| {
        b.iter(|| Dataset::load(&train, LoadOptions::default()).unwrap())
    });
    let ds = Dataset::load(&train, LoadOptions::default()).unwrap();
    group.bench_function("tokenize+window 384/128", |b| {
        b.iter(|| FeatureSet::build(&ds, &tok, WindowConfig::default()).unwrap())
    });
    let others = std::env::var("QA_BENCH_TOKENIZERS").unwrap_or_default();
    for entry in others.split(',').filter(|e| !e.is_empty()) {
        let (name, dir) = entry
            .split_once('=')
            .expect("QA_BENCH_TOKENIZERS entries are name=DIR");
        let tok = QaTokenizer::from_path(dir, Casing::Auto).unwrap();
        let features = FeatureSet::build(&ds, &tok, WindowConfig::default()).unwrap();
        eprintln!("{name}: {} features", features.features.len());
        group.bench_function(format!("tokenize+window 384/128 {name}"), |b| {
            b.iter(|| FeatureSet::build(&ds, &tok, WindowConfig::default()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, windowing);
criterion_main!(benches);
