//! What burn-train's [`Learner`] holds while a span model trains: the model as a [`TrainStep`],
//! AdamW in two parameter groups, and the warmup-then-linear-decay schedule.
//!
//! Why a `Learner` but not burn-train's training loop: [`crate::trainer`] drives the learner one
//! optimizer step at a time (`train_step`, `lr_step`, `optimizer_step`) instead of handing it to
//! `SupervisedTraining::launch`, because in burn 0.21 that loop validates and checkpoints per
//! epoch only, keeps the optimizer state private (so a step-level, crash-safe checkpoint could not
//! include it), panics on checkpoint I/O errors, overwrites epoch 1's metric logs after a resume
//! (burn #1312) and returns the last model rather than the best.
//!
//! What the `Learner` requires, and nothing more: the model as a module that is both a
//! [`TrainStep`] and (without autodiff) an [`InferenceStep`] whose outputs are [`ItemLazy`]
//! ([`SpanModel`], [`StepLoss`]), an [`Optimizer`] ([`GroupedAdamW`]) and an [`LrScheduler`]
//! ([`WarmupLinearDecay`]).

use std::sync::{Arc, Mutex, MutexGuard};

use burn::module::Module;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, MultiGradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor};
use burn::train::{InferenceStep, ItemLazy, LearningComponentsMarker, TrainOutput, TrainStep};
use qa_model::{BertForQuestionAnswering, BertInput, ParamInfo};

use qa_model::batch::{HostBatch, span_loss};

/// The learner this crate trains with.
pub type SpanLearner<B> = burn::train::Learner<
    LearningComponentsMarker<B, WarmupLinearDecay, SpanModel<B>, GroupedAdamW<B>>,
>;

/// The model as burn-train sees it. burn-train's step traits and qa-model's type are both foreign
/// to this crate, so the learner trains this one-field wrapper.
#[derive(Module, Debug)]
pub struct SpanModel<B: Backend> {
    pub model: BertForQuestionAnswering<B>,
}

/// One micro-batch on the device.
#[derive(Debug, Clone)]
pub struct SpanBatch<B: Backend> {
    pub input: BertInput<B>,
    pub starts: Tensor<B, 1, Int>,
    pub ends: Tensor<B, 1, Int>,
    /// The loss is multiplied by this before the backward pass: 1 / gradient_accumulation_steps,
    /// so that the accumulated gradients are a mean over the micro-batches.
    pub loss_weight: f64,
}

impl<B: Backend> SpanBatch<B> {
    pub fn new(host: &HostBatch, loss_weight: f64, device: &B::Device) -> Self {
        let (starts, ends) = host.labels(device);
        SpanBatch {
            input: host.input(device),
            starts,
            ends,
            loss_weight,
        }
    }
}

impl<B: Backend> SpanModel<B> {
    /// The mean span loss of `batch` (unweighted).
    fn loss(&self, batch: SpanBatch<B>) -> Tensor<B, 1> {
        let logits = self.model.forward(&batch.input);
        span_loss(&logits, batch.starts, batch.ends)
    }
}

/// The loss of one micro-batch, as a host number (before `loss_weight`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLoss(pub f64);

impl ItemLazy for StepLoss {
    type ItemSync = StepLoss;

    fn sync(self) -> StepLoss {
        self
    }
}

impl<B: AutodiffBackend> TrainStep for SpanModel<B> {
    type Input = SpanBatch<B>;
    type Output = StepLoss;

    fn step(&self, batch: SpanBatch<B>) -> TrainOutput<StepLoss> {
        let weight = batch.loss_weight;
        let loss = self.loss(batch);
        let value: f64 = loss.clone().into_scalar().elem();
        let grads = (loss * weight).backward();
        TrainOutput::new(self, grads, StepLoss(value))
    }
}

impl<B: Backend> InferenceStep for SpanModel<B> {
    type Input = SpanBatch<B>;
    type Output = StepLoss;

    fn step(&self, batch: SpanBatch<B>) -> StepLoss {
        StepLoss(self.loss(batch).into_scalar().elem())
    }
}

type Adam<B> = OptimizerAdaptor<AdamW, SpanModel<B>, B>;
type AdamRecord<B> = <Adam<B> as Optimizer<SpanModel<B>, B>>::Record;

/// AdamW in BERT's two parameter groups: weight decay on weight matrices and embeddings, none on
/// biases and LayerNorm.
///
/// A handle: clones share one state. burn-train's `Learner` keeps its optimizer private, and the
/// training loop still has to write the optimizer state into its step checkpoints, so it keeps a
/// clone of the handle it gave the learner.
pub struct GroupedAdamW<B: AutodiffBackend> {
    groups: Arc<Mutex<Groups<B>>>,
}

struct Groups<B: AutodiffBackend> {
    decay: Adam<B>,
    no_decay: Adam<B>,
}

impl<B: AutodiffBackend> Clone for GroupedAdamW<B> {
    fn clone(&self) -> Self {
        GroupedAdamW {
            groups: Arc::clone(&self.groups),
        }
    }
}

impl<B: AutodiffBackend> GroupedAdamW<B> {
    /// torch's AdamW defaults (betas 0.9/0.999) with the given epsilon and decay.
    pub fn new(weight_decay: f64, epsilon: f64) -> Self {
        let adam = |decay: f64| {
            AdamWConfig::new()
                .with_beta_1(0.9)
                .with_beta_2(0.999)
                .with_epsilon(epsilon as f32)
                .with_weight_decay(decay as f32)
                .init::<B, SpanModel<B>>()
        };
        GroupedAdamW {
            groups: Arc::new(Mutex::new(Groups {
                decay: adam(weight_decay),
                no_decay: adam(0.0),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Groups<B>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<B: AutodiffBackend> Optimizer<SpanModel<B>, B> for GroupedAdamW<B> {
    /// (decay group, no-decay group)
    type Record = (AdamRecord<B>, AdamRecord<B>);

    fn step(&mut self, lr: f64, module: SpanModel<B>, mut grads: GradientsParams) -> SpanModel<B> {
        // Parameter ids are listed per step: loading a record replaces them.
        let params = qa_model::parameters(&module.model);
        let no_decay = split_no_decay::<B>(&mut grads, &params);
        let mut groups = self.lock();
        let module = groups.decay.step(lr, module, grads);
        groups.no_decay.step(lr, module, no_decay)
    }

    fn step_multi(
        &mut self,
        lr: f64,
        module: SpanModel<B>,
        mut grads: MultiGradientsParams,
    ) -> SpanModel<B> {
        let params = qa_model::parameters(&module.model);
        let no_decay = MultiGradientsParams {
            grads: grads
                .grads
                .iter_mut()
                .map(|(g, device)| (split_no_decay::<B>(g, &params), *device))
                .collect(),
        };
        let mut groups = self.lock();
        let module = groups.decay.step_multi(lr, module, grads);
        groups.no_decay.step_multi(lr, module, no_decay)
    }

    fn to_record(&self) -> Self::Record {
        let groups = self.lock();
        (groups.decay.to_record(), groups.no_decay.to_record())
    }

    fn load_record(self, (decay, no_decay): Self::Record) -> Self {
        {
            let mut groups = self.lock();
            groups.decay = groups.decay.clone().load_record(decay);
            groups.no_decay = groups.no_decay.clone().load_record(no_decay);
        }
        self
    }
}

/// BERT's recipe: weight matrices and embeddings are weight-decayed, biases and LayerNorm
/// parameters are not.
pub fn decays(param: &ParamInfo) -> bool {
    !(param.name.ends_with(".bias") || param.name.contains("LayerNorm"))
}

/// Moves the gradients of parameters without weight decay into their own set.
fn split_no_decay<B: AutodiffBackend>(
    grads: &mut GradientsParams,
    params: &[ParamInfo],
) -> GradientsParams {
    let mut no_decay = GradientsParams::new();
    for p in params.iter().filter(|p| !decays(p)) {
        match p.rank {
            1 => {
                if let Some(t) = grads.remove::<B::InnerBackend, 1>(p.id) {
                    no_decay.register(p.id, t);
                }
            }
            _ => {
                if let Some(t) = grads.remove::<B::InnerBackend, 2>(p.id) {
                    no_decay.register(p.id, t);
                }
            }
        }
    }
    no_decay
}

/// Linear warmup from 0 then linear decay to 0, as transformers' `get_linear_schedule_with_warmup`;
/// one [`LrScheduler::step`] per optimizer update (not per micro-batch).
#[derive(Debug, Clone)]
pub struct WarmupLinearDecay {
    base: f64,
    warmup: usize,
    total: usize,
    /// Updates made so far.
    done: usize,
}

impl WarmupLinearDecay {
    pub fn new(base: f64, warmup: usize, total: usize) -> Self {
        WarmupLinearDecay {
            base,
            warmup,
            total,
            done: 0,
        }
    }

    /// The learning rate of optimizer update `step` (0-based).
    pub fn at(&self, step: usize) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            ((self.total as f64 - step as f64) / (self.total - self.warmup).max(1) as f64).max(0.0)
        };
        self.base * factor
    }
}

impl LrScheduler for WarmupLinearDecay {
    /// Updates made so far.
    type Record<B: Backend> = usize;

    fn step(&mut self) -> f64 {
        let lr = self.at(self.done);
        self.done += 1;
        lr
    }

    fn to_record<B: Backend>(&self) -> usize {
        self.done
    }

    fn load_record<B: Backend>(mut self, done: usize) -> Self {
        self.done = done;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use qa_model::BertConfig;

    type Ad = burn::backend::Autodiff<qa_model::CpuBackend>;

    fn batch(device: &burn::tensor::Device<Ad>, loss_weight: f64) -> SpanBatch<Ad> {
        let label = |i: i32| Tensor::from_data(TensorData::new(vec![i], [1]), device);
        SpanBatch {
            input: BertInput::from_host(
                vec![2, 5, 3, 8, 9, 3],
                vec![0, 0, 0, 1, 1, 1],
                vec![false; 6],
                [1, 6],
                device,
            ),
            starts: label(3),
            ends: label(4),
            loss_weight,
        }
    }

    fn values<const D: usize>(t: Tensor<Ad, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    #[test]
    fn learner_decays_weights_but_not_layer_norms_and_shares_its_optimizer_state() {
        let device = Default::default();
        let model = SpanModel {
            model: BertForQuestionAnswering::<Ad>::init(&BertConfig::tiny(16), &device),
        };
        let word = values(model.model.bert.embeddings.word_embeddings.weight.val());
        let gamma = values(model.model.bert.layers[0].attention.layer_norm.gamma.val());
        let optim = GroupedAdamW::<Ad>::new(0.5, 1e-8);
        let schedule = WarmupLinearDecay::new(0.1, 0, 10);
        let mut learner = SpanLearner::<Ad>::new(model, optim.clone(), schedule);

        // A zero loss weight gives zero gradients: only the decoupled weight decay moves a
        // parameter, by lr * decay = 5 %.
        let output = learner.train_step(batch(&device, 0.0));
        assert!(output.item.0 > 0.0, "the reported loss is unweighted");
        learner.lr_step();
        assert_eq!(learner.lr_current(), 0.1);
        learner.optimizer_step(output.grads);
        let trained = learner.model().model;

        let word_after = values(trained.bert.embeddings.word_embeddings.weight.val());
        for (a, b) in word.iter().zip(&word_after) {
            assert!((a * 0.95 - b).abs() <= 1e-7, "{a} -> {b}");
        }
        let gamma_after = values(trained.bert.layers[0].attention.layer_norm.gamma.val());
        assert_eq!(gamma, gamma_after, "LayerNorm is not weight-decayed");

        // The handle kept outside the learner sees the state of the step the learner made.
        let params = qa_model::parameters(&trained);
        let decayed = params.iter().filter(|p| decays(p)).count();
        let (decay, no_decay) = optim.to_record();
        assert_eq!(decay.len(), decayed);
        assert_eq!(no_decay.len(), params.len() - decayed);
        assert!(decayed > 0 && !no_decay.is_empty());
    }

    #[test]
    fn schedule_warms_up_then_decays_like_transformers() {
        let s = WarmupLinearDecay::new(1.0, 10, 100);
        assert_eq!(s.at(0), 0.0);
        assert_eq!(s.at(5), 0.5);
        assert_eq!(s.at(10), 1.0);
        assert_eq!(s.at(55), 0.5);
        assert_eq!(s.at(100), 0.0);
        assert_eq!(WarmupLinearDecay::new(2.0, 0, 4).at(0), 2.0);
    }

    #[test]
    fn schedule_steps_once_per_update_and_resumes_from_its_record() {
        let mut s = WarmupLinearDecay::new(1.0, 2, 4);
        let first: Vec<f64> = (0..4).map(|_| LrScheduler::step(&mut s)).collect();
        assert_eq!(first, vec![0.0, 0.5, 1.0, 0.5]);
        let resumed = WarmupLinearDecay::new(1.0, 2, 4)
            .load_record::<qa_model::CpuBackend>(s.to_record::<qa_model::CpuBackend>() - 1);
        let mut resumed = resumed;
        assert_eq!(LrScheduler::step(&mut resumed), 0.5);
    }
}
