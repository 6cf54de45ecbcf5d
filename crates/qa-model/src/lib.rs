//! `qa-model`: BERT-style encoders (BERT, DistilBERT, RoBERTa, XLM-R, ELECTRA, DeBERTa-v2/v3) with a
//! span head in burn, Hugging Face checkpoints in and out, and answering
//! questions with a trained model.
//!
//! | what | module |
//! |---|---|
//! | `config.json` as a typed struct | [`config`] |
//! | the encoder and span head, generic over the backend (DeBERTa's relative attention in [`bert::deberta`]) | [`bert`] |
//! | features -> padded tensors, the span loss | [`batch`] |
//! | linear, attention, GELU, dropout, layer norm: one dispatch over the CPU paths and burn's ops | [`kernels`] |
//! | int8 linear layers for CPU inference: quantized weights, kernels per instruction set | [`int8`] |
//! | each parameter's Hugging Face name | [`params`] |
//! | f32, or bf16 matrix products with f32 weights (mixed precision) | [`precision`] |
//! | Hugging Face directories in and out | [`hf`] |
//! | burn's own record beside them | [`record`] |
//! | where to run: `auto`/`cuda`/`wgpu`/`cpu`, the CUDA and wgpu probes, the backend chosen at run time | [`device`] |
//! | answering questions and scoring datasets with a model directory | [`answering`] |
//!
//! This crate depends on `qa-data` (no burn) for what the answering API needs anyway: the
//! tokenizer, windowing, span decoding and the official metrics, and its atomic file writes.

pub mod answering;
pub mod batch;
pub mod bert;
pub mod config;
pub mod device;
pub mod error;
pub mod hf;
pub mod int8;
pub mod kernels;
pub mod params;
pub mod precision;
pub mod record;

pub use answering::{
    Answer, AnsweringSettings, Candidate, FeatureOutputs, Prepared, QuestionAnswerer, WindowLogits,
};
pub use batch::Window;
pub use bert::{BertForQuestionAnswering, BertInput, BertModel, MASKED_LOGIT, SpanLogits};
pub use config::{Activation, BertConfig, Family, Quantization, RelativeAttention};
pub use device::{DeviceChoice, OnBackend, run_on};
pub use error::ModelError;
pub use hf::{LoadReport, LoadedModel, load_model, load_pretrained, save_pretrained};
pub use params::{ParamInfo, parameters};
pub use precision::Precision;

/// The CPU backend, chosen by measurement (see docs/benchmarks.md).
pub type CpuBackend = burn::backend::Flex;
