//! The training loop, as a small state machine over a burn-train `Learner` (see [`crate::learner`]
//! for why the loop is ours): epochs of micro-batches, an optimizer update every
//! `gradient_accumulation_steps` of them, and after each update the logging, evaluation,
//! early-stopping and checkpoint decisions. A resumed run takes exactly the steps an
//! uninterrupted one takes: the batch order and dropout masks depend only on the seed and the
//! position in the run, and checkpoints carry the whole loop state.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use burn::module::AutodiffModule;
use burn::optim::GradientsAccumulator;
use burn::optim::lr_scheduler::LrScheduler;
use burn::tensor::backend::AutodiffBackend;
use qa_model::ParamInfo;
use qa_model::answering::{Batching, evaluate_features};
use qa_model::batch::HostBatch;

use crate::checkpoint::{self, LoopState};
use crate::config::TrainConfig;
use crate::early_stopping::{StoppingRule, Verdict};
use crate::grads::{clip_global_norm, scale_grads};
use crate::learner::{GroupedAdamW, SpanBatch, SpanLearner, SpanModel, WarmupLinearDecay};
use crate::log::{self, EvalRecord, LossRecord};
use crate::order::{BatchPlan, mean_padded_length};
use crate::progress::Progress;
use crate::setup::{self, ModelExport, Plan, Split};

/// Options of one invocation (not part of the experiment's configuration).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the latest checkpoint in output_dir.
    pub resume: bool,
    /// Stop (with a checkpoint) after this many optimizer steps in total, as if interrupted.
    pub halt_after_steps: Option<usize>,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub global_step: usize,
    pub total_steps: usize,
    pub stopped_early: bool,
    pub halted: bool,
    pub evaluations: Vec<EvalRecord>,
    /// The training loss log (one record every `logging_steps` updates), as in `training_loss.jsonl`.
    pub losses: Vec<LossRecord>,
    pub best: Option<(usize, f64)>,
    pub output_dir: PathBuf,
    pub best_model_dir: PathBuf,
    pub train_features: usize,
    /// Training features per second over the steps this invocation ran (evaluation excluded).
    pub features_per_second: f64,
    pub seconds: f64,
}

/// Trains on backend `B` (autodiff) on `device`; `say` receives the progress lines.
pub fn train<B: AutodiffBackend>(
    config: &TrainConfig,
    options: &RunOptions,
    device: B::Device,
    say: &dyn Fn(String),
) -> anyhow::Result<TrainSummary> {
    // The backend's random generator (head init, dropout masks) is one per process: two runs
    // in one process would interleave their draws and neither would be reproducible, so runs
    // in one process take turns.
    static BACKEND_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _rng_turn = BACKEND_RNG.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let prepared = setup::prepare::<B>(config, options, &device, say)?;
    let mut trainer = Trainer::new(config, options, prepared, device);
    let end = trainer.run(say)?;
    trainer.finish(end, started, say)
}

/// Where the loop goes after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    /// Early stopping ended the run.
    StoppedEarly,
    /// `halt_after_steps` interrupted the run before its last step.
    Halted,
    /// The planned steps are done.
    Done,
}

/// A mean of losses since it was last taken.
#[derive(Debug, Default)]
struct RunningMean {
    sum: f64,
    count: usize,
}

impl RunningMean {
    fn add(&mut self, value: f64) {
        self.sum += value;
        self.count += 1;
    }

    fn take(&mut self) -> f64 {
        let mean = self.sum / self.count.max(1) as f64;
        *self = RunningMean::default();
        mean
    }
}

struct Trainer<'a, B: AutodiffBackend> {
    config: &'a TrainConfig,
    halt_after_steps: Option<usize>,
    device: B::Device,
    train: Split,
    labelled: Vec<usize>,
    eval: Option<Split>,
    export: ModelExport,
    rule: StoppingRule,
    plan: Plan,
    learner: SpanLearner<B>,
    /// A handle on the learner's optimizer: its state goes into every checkpoint.
    optim: GroupedAdamW<B>,
    schedule: WarmupLinearDecay,
    params: Vec<ParamInfo>,
    state: LoopState,
    accumulator: GradientsAccumulator<SpanModel<B>>,
    /// Micro-batches in the accumulator.
    pending: usize,
    since_log: RunningMean,
    since_eval: RunningMean,
    last_eval_step: Option<usize>,
    /// Features and seconds of the updates this invocation ran.
    trained: (usize, f64),
    progress: Progress,
}

impl<'a, B: AutodiffBackend> Trainer<'a, B> {
    fn new(
        config: &'a TrainConfig,
        options: &RunOptions,
        prepared: setup::Prepared<B>,
        device: B::Device,
    ) -> Self {
        let setup::Prepared {
            train,
            labelled,
            eval,
            model,
            optim,
            state,
            plan,
            export,
        } = prepared;
        // Parameter ids come from the checkpoint's record on resume: list them after loading it.
        let params = qa_model::parameters(&model);
        let schedule = WarmupLinearDecay::new(config.learning_rate, plan.warmup, plan.total_steps)
            .load_record::<B>(state.global_step);
        let learner = SpanLearner::<B>::new(SpanModel { model }, optim.clone(), schedule.clone());
        Trainer {
            config,
            halt_after_steps: options.halt_after_steps,
            device,
            train,
            labelled,
            eval,
            export,
            rule: config.stopping_rule(),
            plan,
            learner,
            optim,
            schedule,
            params,
            last_eval_step: state.evaluations.last().map(|e| e.global_step),
            progress: Progress::new(plan.total_steps, state.global_step),
            state,
            accumulator: GradientsAccumulator::new(),
            pending: 0,
            since_log: RunningMean::default(),
            since_eval: RunningMean::default(),
            trained: (0, 0.0),
        }
    }

    /// Epochs until the plan, early stopping or a halt ends the run.
    fn run(&mut self, say: &dyn Fn(String)) -> anyhow::Result<Flow> {
        while self.state.epoch < self.config.num_train_epochs
            && self.state.global_step < self.plan.total_steps
        {
            let flow = self.run_epoch(say)?;
            if flow != Flow::Continue {
                return Ok(flow);
            }
        }
        Ok(Flow::Done)
    }

    /// The rest of the current epoch: micro-batches, an update after every accumulation, then
    /// the epoch's end.
    fn run_epoch(&mut self, say: &dyn Fn(String)) -> anyhow::Result<Flow> {
        let batches = self.epoch_batches(say);
        while self.state.micro_in_epoch < batches.len() {
            let started = Instant::now();
            let indices = &batches[self.state.micro_in_epoch];
            self.train_micro_batch(indices)?;
            let epoch_done = self.state.micro_in_epoch == batches.len();
            if self.pending == self.config.gradient_accumulation_steps || epoch_done {
                self.optimizer_update();
                self.trained.0 += indices.len();
                self.trained.1 += started.elapsed().as_secs_f64();
                let flow = self.after_update(epoch_done, say)?;
                if flow != Flow::Continue {
                    return Ok(flow);
                }
            }
        }
        self.end_epoch(say)
    }

    /// The current epoch's micro-batches, announced with the length they pad to.
    fn epoch_batches(&self, say: &dyn Fn(String)) -> Vec<Vec<usize>> {
        let plan = BatchPlan {
            batch_size: self.config.train_batch_size,
            group_by_length: self.config.group_by_length,
        };
        let features = &self.train.features;
        let length = |i: usize| features.seq_len(&features.features[i]);
        let batches = plan.batches(
            &self.labelled,
            length,
            self.config.manual_seed,
            self.state.epoch,
        );
        say(format!(
            "epoch {}: {} batches{}, padded to {:.1} tokens per feature on average",
            self.state.epoch + 1,
            batches.len(),
            if plan.group_by_length {
                " grouped by length"
            } else {
                ""
            },
            mean_padded_length(&batches, length, self.pad_to()),
        ));
        batches
    }

    /// Forward and backward over one micro-batch; its gradients join the accumulator.
    fn train_micro_batch(&mut self, indices: &[usize]) -> anyhow::Result<()> {
        // Dropout masks depend only on the seed and the position in the run, so a resumed
        // run draws the same masks as an uninterrupted one.
        let seed = (self.config.manual_seed)
            .wrapping_add(self.state.micro_total as u64)
            .wrapping_mul(0x2545_F491_4F6C_DD1D);
        B::seed(&self.device, seed);
        let batch = HostBatch::new(&self.train.features, indices, self.pad_to());
        let weight = 1.0 / self.config.gradient_accumulation_steps as f64;
        let output = self
            .learner
            .train_step(SpanBatch::new(&batch, weight, &self.device));
        let loss = output.item.0;
        self.refuse_non_finite(loss)?;
        self.accumulator
            .accumulate(&self.learner.model(), output.grads);
        self.pending += 1;
        self.state.micro_in_epoch += 1;
        self.state.micro_total += 1;
        self.since_log.add(loss);
        self.since_eval.add(loss);
        Ok(())
    }

    /// A NaN or infinite loss stops the run, keeping the last checkpoint.
    fn refuse_non_finite(&self, loss: f64) -> anyhow::Result<()> {
        if loss.is_finite() {
            return Ok(());
        }
        let kept = match checkpoint::latest(&self.config.output_dir) {
            Ok(dir) => format!("the last good checkpoint, {}, is kept", dir.display()),
            Err(_) => "no checkpoint had been written yet".to_string(),
        };
        bail!(
            "training loss became {loss} at step {} (epoch {}); stopped: {kept}. Lower \
             learning_rate or check the data",
            self.state.global_step + 1,
            self.state.epoch + 1,
        );
    }

    /// One optimizer step from the accumulated gradients (averaged over a short final
    /// accumulation, clipped to the global norm).
    fn optimizer_update(&mut self) {
        let accumulation = self.config.gradient_accumulation_steps;
        let mut grads = self.accumulator.grads();
        if self.pending < accumulation {
            let factor = accumulation as f64 / self.pending as f64;
            scale_grads::<B>(&mut grads, &self.params, factor);
        }
        self.pending = 0;
        if self.config.max_grad_norm > 0.0 {
            clip_global_norm::<B>(&mut grads, &self.params, self.config.max_grad_norm);
        }
        self.learner.lr_step();
        self.learner.optimizer_step(grads);
        self.state.global_step += 1;
    }

    /// What follows an update: the loss log, an evaluation when due, a checkpoint when due, and
    /// whether the run goes on. At an epoch's last update the epoch's end decides the rest.
    fn after_update(&mut self, epoch_done: bool, say: &dyn Fn(String)) -> anyhow::Result<Flow> {
        let step = self.state.global_step;
        let lr = self.learner.lr_current();
        self.log_loss(lr, say);
        self.progress.tick(step);
        let steps = self.config.evaluate_during_training_steps;
        let eval_due =
            self.config.evaluate_during_training && steps > 0 && step.is_multiple_of(steps);
        let mut stop = false;
        if eval_due {
            stop = self.evaluate(self.state.epoch, lr, say)?;
            if self.config.save_eval_checkpoints {
                let dir = self.config.output_dir.join(format!("checkpoint-{step}"));
                self.export.save(&self.model(), &dir)?;
            }
        }
        let save_due = self.config.save_steps > 0 && step.is_multiple_of(self.config.save_steps);
        let at_end = step >= self.plan.total_steps || self.halt_reached();
        // The epoch's end writes its own checkpoint, unless the run stops here.
        if (save_due || eval_due || stop || at_end) && (stop || !epoch_done) {
            self.save_checkpoint()?;
        }
        Ok(if stop {
            Flow::StoppedEarly
        } else if epoch_done {
            Flow::Continue
        } else {
            self.planned_end().unwrap_or(Flow::Continue)
        })
    }

    /// Records the mean loss every `logging_steps` updates and at the last one.
    fn log_loss(&mut self, lr: f64, say: &dyn Fn(String)) {
        let step = self.state.global_step;
        if !step.is_multiple_of(self.config.logging_steps.max(1)) && step != self.plan.total_steps {
            return;
        }
        let loss = self.since_log.take();
        self.state.losses.push(LossRecord {
            global_step: step,
            loss,
            lr,
        });
        self.progress.log(step, loss, lr, self.state.epoch, say);
    }

    /// The end of an epoch: an evaluation unless one just ran, the epoch's model directory,
    /// a checkpoint.
    fn end_epoch(&mut self, say: &dyn Fn(String)) -> anyhow::Result<Flow> {
        let finished = self.state.epoch;
        self.state.epoch += 1;
        self.state.micro_in_epoch = 0;
        let stop = if self.evaluation_pending() {
            self.evaluate(finished, self.latest_lr(), say)?
        } else {
            false
        };
        if self.config.save_model_every_epoch {
            let name = format!(
                "checkpoint-{}-epoch-{}",
                self.state.global_step,
                finished + 1
            );
            self.export
                .save(&self.model(), &self.config.output_dir.join(name))?;
        }
        self.save_checkpoint()?;
        Ok(if stop {
            Flow::StoppedEarly
        } else {
            self.planned_end()
                .filter(|_| self.halt_reached())
                .unwrap_or(Flow::Continue)
        })
    }

    /// Evaluates the current model (as of epoch `epoch`), records the scores, lets early
    /// stopping judge them and exports a new best model. True when training should stop.
    fn evaluate(&mut self, epoch: usize, lr: f64, say: &dyn Fn(String)) -> anyhow::Result<bool> {
        let Some(eval) = &self.eval else {
            return Ok(false);
        };
        let model = self.model();
        let started = Instant::now();
        let evaluation = evaluate_features(
            &model.valid(),
            &eval.dataset,
            &eval.features,
            &self.export.settings.decode,
            Batching {
                batch_size: self.config.eval_batch_size,
                pad_to: self.pad_to(),
            },
            &self.device,
        )?;
        let (exact, f1) = evaluation.scores.exact_and_f1();
        let record = EvalRecord {
            global_step: self.state.global_step,
            epoch,
            exact,
            f1,
            train_loss: self.since_eval.take(),
            eval_loss: evaluation.eval_loss.unwrap_or(f64::NAN),
            lr,
        };
        say(format!(
            "eval at step {}: exact {exact:.2}, f1 {f1:.2}, eval_loss {:.4}, train_loss {:.4} ({:.1} s)",
            record.global_step,
            record.eval_loss,
            record.train_loss,
            started.elapsed().as_secs_f64()
        ));
        self.last_eval_step = Some(record.global_step);
        let stop = self.judge(&record, &model, say)?;
        self.state.evaluations.push(record);
        log::write_tables(
            &self.config.output_dir,
            &self.state.evaluations,
            &self.state.losses,
        )?;
        Ok(stop)
    }

    /// Early stopping's verdict on an evaluation; a new best model is exported.
    fn judge(
        &mut self,
        record: &EvalRecord,
        model: &qa_model::BertForQuestionAnswering<B>,
        say: &dyn Fn(String),
    ) -> anyhow::Result<bool> {
        let metric = self.config.early_stopping_metric;
        let value = metric.of(record);
        let verdict = self
            .state
            .early_stopping
            .update(&self.rule, record.global_step, value);
        match verdict {
            Verdict::Improved => {
                let best_dir = self.config.best_model_dir();
                self.export.save(model, &best_dir)?;
                say(format!(
                    "best {} so far ({value:.4}): model written to {}",
                    metric.name(),
                    best_dir.display()
                ));
            }
            Verdict::Stop => say(format!(
                "early stopping: {} did not improve by more than {} for {} evaluations",
                metric.name(),
                self.config.early_stopping_delta,
                self.config.early_stopping_patience + 1
            )),
            Verdict::NoImprovement => {}
        }
        Ok(verdict == Verdict::Stop)
    }

    /// The end of the run after the loop: a final evaluation when the last step had none, the
    /// final (and, without evaluations, best) model, the logs and plots.
    fn finish(
        mut self,
        end: Flow,
        started: Instant,
        say: &dyn Fn(String),
    ) -> anyhow::Result<TrainSummary> {
        self.progress.finish();
        if end == Flow::Done && self.evaluation_pending() {
            self.evaluate(self.state.epoch, self.latest_lr(), say)?;
            self.save_checkpoint()?;
        }
        let halted = end == Flow::Halted;
        if !halted {
            let model = self.model();
            self.export.save(&model, &self.config.output_dir)?;
            if self.state.early_stopping.best.is_none() {
                // Without evaluations the final model is the best we know.
                self.export.save(&model, &self.config.best_model_dir())?;
            }
        }
        let out = &self.config.output_dir;
        log::write_tables(out, &self.state.evaluations, &self.state.losses)?;
        log::write_plots(out, &self.state.evaluations, &self.state.losses)?;
        let es = &self.state.early_stopping;
        Ok(TrainSummary {
            global_step: self.state.global_step,
            total_steps: self.plan.total_steps,
            stopped_early: end == Flow::StoppedEarly,
            halted,
            best: es.best.zip(es.best_step).map(|(v, s)| (s, v)),
            evaluations: self.state.evaluations,
            losses: self.state.losses,
            output_dir: out.clone(),
            best_model_dir: self.config.best_model_dir(),
            train_features: self.labelled.len(),
            features_per_second: self.trained.0 as f64 / self.trained.1.max(1e-9),
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// How the run ends when the planned steps are done or a halt was asked for; `None` while
    /// neither holds.
    fn planned_end(&self) -> Option<Flow> {
        let step = self.state.global_step;
        if self.halt_reached() && step < self.plan.total_steps {
            Some(Flow::Halted)
        } else if self.halt_reached() || step >= self.plan.total_steps {
            Some(Flow::Done)
        } else {
            None
        }
    }

    fn halt_reached(&self) -> bool {
        self.halt_after_steps
            .is_some_and(|h| self.state.global_step >= h)
    }

    /// Evaluation during training is on and the model has changed since the last one.
    fn evaluation_pending(&self) -> bool {
        self.config.evaluate_during_training && self.last_eval_step != Some(self.state.global_step)
    }

    /// The rate of the latest update, also right after a resume (when the learner has none yet).
    fn latest_lr(&self) -> f64 {
        self.schedule.at(self.state.global_step.saturating_sub(1))
    }

    fn pad_to(&self) -> Option<usize> {
        self.config
            .pad_to_max_length
            .then_some(self.config.max_seq_length)
    }

    fn model(&self) -> qa_model::BertForQuestionAnswering<B> {
        self.learner.model().model
    }

    fn save_checkpoint(&self) -> anyhow::Result<()> {
        checkpoint::save_training(
            &self.config.output_dir,
            &self.state,
            &self.model(),
            &self.optim,
        )
    }
}
