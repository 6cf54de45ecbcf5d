//! `qa-train`: fine-tuning a BERT span model, and running it.
//!
//! | what | module |
//! |---|---|
//! | the TOML training configuration (Simple Transformers' knob names) | [`config`] |
//! | CUDA-or-CPU choice, probed before any backend exists | [`device`] |
//! | features -> padded tensors, the span loss | [`batch`] |
//! | what burn-train's `Learner` holds: the model as a `TrainStep`, AdamW in two parameter groups, warmup then linear decay | [`learner`] |
//! | the training loop driving the learner: global-norm clipping, accumulation, evaluation every N steps, early stopping | [`trainer`] |
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
pub mod learner;
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

/// Work that can run on any backend; [`run_on`] picks the backend at run time.
pub trait OnBackend {
    type Output;
    fn run<B: burn::tensor::backend::Backend>(
        self,
        device: B::Device,
    ) -> anyhow::Result<Self::Output>;
}

/// Runs `job` on the device `choice` resolves to (CUDA first under `auto`), saying which and why.
pub fn run_on<J: OnBackend>(
    choice: DeviceChoice,
    job: J,
    say: &dyn Fn(String),
) -> anyhow::Result<J::Output> {
    let decision = device::choose(choice).map_err(anyhow::Error::msg)?;
    say(format!("device: {}", decision.reason));
    match decision.device {
        Device::Cpu => job.run::<CpuBackend>(Default::default()),
        #[cfg(feature = "cuda")]
        Device::Cuda(i) => job.run::<CudaBackend>(burn::backend::cuda::CudaDevice::new(i)),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => unreachable!("device::choose never picks CUDA without the cuda feature"),
    }
}

/// Trains `config` on the device it asks for.
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
    run_on(
        config.device,
        Job {
            config,
            options,
            say,
        },
        say,
    )
}
