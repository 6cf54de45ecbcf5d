//! What the integration tests that need more than the repository share: the shared assets
//! (`QA_SHARED_DIR`: real MiniLM weights, SQuAD files, golden outputs) and a Python with PyTorch
//! (`QA_TORCH_PYTHON`). Each crate's test files include this with `#[path]`.
//!
//! Such a test is marked `#[ignore = "needs QA_SHARED_DIR"]` (or `QA_TORCH_PYTHON`): a plain
//! `cargo test` lists it as ignored, `.ci/run` runs it with `--include-ignored` when the assets
//! are there, and run without them it fails saying what is missing; it never passes unchecked.

#![allow(dead_code)] // each test binary uses part of this

use std::path::PathBuf;

/// The shared assets folder (`../shared` beside the checkout).
pub fn shared_dir() -> PathBuf {
    required("QA_SHARED_DIR", "the shared assets folder (../shared)")
}

/// The shared all-MiniLM-L6-v2 (real BERT weights, no QA head).
pub fn shared_minilm() -> PathBuf {
    shared_dir().join("models/all-MiniLM-L6-v2")
}

/// A Python that has torch and transformers.
pub fn torch_python() -> PathBuf {
    required("QA_TORCH_PYTHON", "a Python with torch and transformers")
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn required(name: &str, what: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(value) => PathBuf::from(value),
        None => panic!("{name} is not set: this test needs {what}"),
    }
}

/// The model families with a fixture in tests/fixtures/families (tests/parity/family_fixtures.py).
pub const FAMILIES: [&str; 6] = [
    "bert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "electra",
    "deberta-v2",
];

/// The fixture folder of each family.
pub fn family_fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/families")
}

/// A family's fixture folder.
pub fn family(name: &str) -> PathBuf {
    family_fixtures().join(name)
}
