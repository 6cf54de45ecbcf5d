//! `qa-train`: fine-tuning a BERT span model with a burn-train learner.
//!
//! | what | module |
//! |---|---|
//! | the TOML training configuration (Simple Transformers' knob names) | [`config`] |
//! | output dir and resume checks, data, model and step plan before the first step | `setup` |
//! | the order an epoch visits the features in | [`order`] |
//! | what burn-train's `Learner` holds: the model as a `TrainStep`, AdamW in two parameter groups, warmup then linear decay | [`learner`] |
//! | averaging and global-norm clipping of gradients | `grads` |
//! | the loop driving the learner: accumulation, evaluation every N steps, checkpoints | [`trainer`] |
//! | early stopping and the best model, on metric values alone | [`early_stopping`] |
//! | crash-safe, verifiable checkpoints | [`checkpoint`] |
//! | the metrics log and plots | [`log`] |
//!
//! Answering and evaluating with a trained model is `qa_model::answering`; choosing the device
//! is `qa_model::device`. [`train`] runs a configuration on the device it names.

pub mod checkpoint;
pub mod config;
pub mod early_stopping;
mod grads;
pub mod learner;
pub mod log;
pub mod order;
mod setup;
pub mod trainer;

mod progress;

pub use config::{DeviceChoice, TrainConfig};
pub use trainer::{RunOptions, TrainSummary};

use burn::backend::Autodiff;
use qa_model::OnBackend;

/// Trains `config` on the device it asks for (CUDA first under `auto`).
pub fn train(
    config: &TrainConfig,
    options: &RunOptions,
    say: &dyn Fn(String),
) -> anyhow::Result<TrainSummary> {
    struct Job<'a> {
        config: &'a TrainConfig,
        options: &'a RunOptions,
        say: &'a dyn Fn(String),
    }
    impl OnBackend for Job<'_> {
        type Output = TrainSummary;
        fn run<B: burn::tensor::backend::Backend>(
            self,
            device: B::Device,
        ) -> anyhow::Result<TrainSummary> {
            trainer::train::<Autodiff<B>>(self.config, self.options, device, self.say)
        }
    }
    qa_model::run_on(
        config.device,
        Job {
            config,
            options,
            say,
        },
        say,
    )
}
