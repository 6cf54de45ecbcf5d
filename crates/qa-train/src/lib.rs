//! `qa-train`: fine-tuning a BERT span model, and running it.
//!
//! | what | module |
//! |---|---|
//! | the TOML training configuration (Simple Transformers' knob names) | [`config`] |
//! | CUDA-or-CPU choice, probed before any backend exists | [`device`] |
//! | features -> padded tensors, the span loss | [`batch`] |
//! | the training loop: AdamW, warmup/decay, global-norm clipping, accumulation, evaluation, early stopping | [`trainer`] |
//! | crash-safe, verifiable checkpoints | [`checkpoint`] |
//! | the metrics log and plots | [`log`] |
//! | evaluation and question answering with a trained model | [`infer`] |
//!
//! [`train`] runs a configuration on the device it names, choosing the backend at run time.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod infer;
pub mod log;
pub mod trainer;

pub use config::{DeviceChoice, TrainConfig};
pub use device::{Device, DeviceDecision};
pub use infer::Predictor;
pub use trainer::{RunOptions, TrainSummary};

use burn::backend::Autodiff;
use qa_model::CpuBackend;

/// The CUDA backend (f32, TF32 tensor cores where the card has them).
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda;

/// Trains `config` on the device it asks for (CUDA first under `auto`), saying which and why.
pub fn train(
    config: &TrainConfig,
    options: &RunOptions,
    say: &dyn Fn(String),
) -> anyhow::Result<TrainSummary> {
    let decision = device::choose(config.device).map_err(anyhow::Error::msg)?;
    say(format!("device: {}", decision.reason));
    match decision.device {
        Device::Cpu => {
            trainer::train::<Autodiff<CpuBackend>>(config, options, Default::default(), say)
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => trainer::train::<Autodiff<CudaBackend>>(
            config,
            options,
            burn::backend::cuda::CudaDevice::new(i),
            say,
        ),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => unreachable!("device::choose never picks CUDA without the cuda feature"),
    }
}
