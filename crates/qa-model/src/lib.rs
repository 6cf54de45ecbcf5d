//! `qa-model`: BERT with a span head in burn, and Hugging Face checkpoints in and out.
//!
//! | what | module |
//! |---|---|
//! | `config.json` as a typed struct | [`config`] |
//! | the encoder and span head, generic over the backend | [`bert`] |
//! | loading and saving HF directories and burn records | [`hf`] |
//! | attention and GELU, multi-threaded on the CPU backend | [`kernels`] |
//! | which CPU backend we run on | [`CpuBackend`] |

pub mod bert;
pub mod config;
pub mod error;
pub mod hf;
pub mod kernels;

pub use bert::{BertForQuestionAnswering, BertInput, BertModel, MASKED_LOGIT, SpanLogits};
pub use config::{Activation, BertConfig};
pub use error::ModelError;
pub use hf::{
    LoadReport, LoadedModel, ParamInfo, load_model, load_pretrained, parameters, save_pretrained,
};

/// The CPU backend, chosen by measurement (see docs/benchmarks.md).
#[cfg(feature = "flex")]
pub type CpuBackend = burn::backend::Flex;
#[cfg(all(not(feature = "flex"), feature = "ndarray"))]
pub type CpuBackend = burn::backend::NdArray;
