//! `qa-data`: everything between a SQuAD-format JSON file and the tensors a model sees, and back
//! from logits to scored answers. No deep-learning framework is involved here.
//!
//! The pipeline, one module per step:
//!
//! | step | module |
//! |---|---|
//! | raw JSON (official v1.1/v2.0 or the flat list) -> [`Dataset`] of [`Example`]s, with a [`ValidationReport`] | [`squad`] |
//! | text -> word pieces with character offsets | [`tokenize`] |
//! | examples -> overlapping [`Feature`] windows, exactly as `run_qa.py` cuts them | [`window`] |
//! | features on disk, keyed by data, tokenizer and window parameters | [`cache`] |
//! | start/end logits -> n-best [`SpanPrediction`]s per example | [`decode`] |
//! | predictions -> official SQuAD v1.1 / v2.0 scores | [`metrics`] |
//!
//! and two utilities the other crates share: files written so a crash never leaves half of one
//! ([`atomic`]), and SHA-256 digests in hex ([`checksum`]).

pub mod atomic;
pub mod cache;
pub mod checksum;
pub mod decode;
pub mod error;
pub mod metrics;
pub mod squad;
pub mod tokenize;
pub mod window;

mod binio;

pub use cache::{CacheOutcome, CachePolicy, FeatureCache};
pub use decode::{DecodeConfig, ExamplePrediction, FeatureLogits, Predictions, SpanPrediction};
pub use error::DataError;
pub use metrics::{SquadScores, SquadV1Scores, SquadV2Scores};
pub use squad::{
    Answer, Dataset, Example, LoadOptions, MisalignedPolicy, SquadVersion, ValidationReport,
};
pub use tokenize::{Casing, QaTokenizer, SpecialTokens, TokenizedText};
pub use window::{Feature, FeatureSet, WindowConfig, WindowStats};
