//! The training loop.
//!
//! The model, optimizer and schedule live in a burn-train [`Learner`](burn::train::Learner)
//! ([`crate::learner`]); this loop drives it one optimizer step at a time. It does not hand the
//! learner to burn-train's `SupervisedTraining::launch`, because in burn 0.21 that loop validates
//! and checkpoints per epoch only, keeps the optimizer state private (so a step-level,
//! crash-safe checkpoint could not include it), panics on checkpoint I/O errors, overwrites
//! epoch 1's metric logs after a resume (burn #1312) and returns the last model rather than the
//! best. This loop adds what the original project had: evaluation every N steps with the
//! official metrics, early stopping, best-model export, and checkpoints from which a resumed run
//! equals an uninterrupted one.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use burn::module::{AutodiffModule, Module};
use burn::optim::lr_scheduler::LrScheduler;
use burn::optim::{GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use qa_data::metrics::SquadScores;
use qa_data::{
    CacheOutcome, CachePolicy, Casing, Dataset, FeatureCache, FeatureSet, LoadOptions, QaTokenizer,
    SquadVersion,
};
use qa_model::{BertConfig, BertForQuestionAnswering, ParamInfo};

use crate::batch::{HostBatch, epoch_order};
use crate::checkpoint::{self, EarlyStopping, LoopState};
use crate::config::{EarlyStoppingMetric, TrainConfig};
use crate::infer::evaluate_model;
use crate::learner::{GroupedAdamW, SpanBatch, SpanLearner, SpanModel, WarmupLinearDecay};
use crate::log::{self, EvalRecord, LossRecord};

const MODEL_RECORD: &str = "model.bin";
const OPTIM_DECAY_RECORD: &str = "optimizer-decay.bin";
const OPTIM_NO_DECAY_RECORD: &str = "optimizer-no-decay.bin";

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

/// Where a model name points: an existing directory, or the download cache.
pub fn resolve_model(name: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(name);
    if path.join("config.json").is_file() {
        return Ok(path);
    }
    let cache = model_cache_dir().join(name);
    if cache.join("config.json").is_file() {
        return Ok(cache);
    }
    bail!(
        "model '{name}' is neither a model directory (with config.json) nor in the model cache \
         ({}); fetch it with `cargo xtask download --model {name}`",
        cache.display()
    )
}

/// `$QA_CACHE_DIR/models`, or `.cache/models` under the current directory.
pub fn model_cache_dir() -> PathBuf {
    std::env::var_os("QA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("models")
}

struct Split {
    dataset: Dataset,
    features: FeatureSet,
}

fn load_split(
    path: &Path,
    tokenizer: &QaTokenizer,
    config: &TrainConfig,
    policy: CachePolicy,
    limit: usize,
    say: &dyn Fn(String),
) -> anyhow::Result<Split> {
    let mut dataset = Dataset::load(
        path,
        LoadOptions {
            misaligned: config.misaligned_answers,
        },
    )?;
    if limit > 0 && dataset.examples.len() > limit {
        dataset.examples.truncate(limit);
    }
    let issues: usize = dataset.report.issues.iter().map(|i| i.count).sum();
    if issues > 0 {
        say(format!("{}", dataset.report).trim_end().to_string());
    }
    let cache = FeatureCache::new(config.cache_dir(), policy);
    let (features, outcome) = cache.features(&dataset, tokenizer, config.window())?;
    let how = match outcome {
        CacheOutcome::Hit(p) => format!("from cache {}", p.display()),
        CacheOutcome::Built { reason, .. } => format!("built ({reason})"),
    };
    say(format!(
        "{}: {} examples -> {} features, {how}; {} answers fall outside every window",
        path.display(),
        dataset.examples.len(),
        features.features.len(),
        features.stats.answers_outside_every_window
    ));
    Ok(Split { dataset, features })
}

/// Config fields that do not change the trajectory, so a resumed run may change them.
const RESUMABLE_CHANGES: &[&str] = &[
    "logging_steps",
    "save_steps",
    "device",
    "overwrite_output_dir",
    "reprocess_input_data",
    "use_cached_eval_features",
    "cache_dir",
    "save_model_every_epoch",
    "save_eval_checkpoints",
];

fn comparable(config: &TrainConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(config).expect("config serialises");
    if let Some(map) = v.as_object_mut() {
        for key in RESUMABLE_CHANGES {
            map.remove(*key);
        }
    }
    v
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
    let out = &config.output_dir;
    prepare_output_dir(config, options)?;
    // A resume reads and verifies its checkpoint before anything is written, so that a failed
    // one leaves the output dir as it was.
    let resume_from = options
        .resume
        .then(|| checkpoint::load_latest(out))
        .transpose()?;

    let model_dir = resolve_model(&config.model)?;
    let tokenizer = QaTokenizer::from_path(&model_dir, Casing::Auto)?;
    let train_policy = if config.reprocess_input_data {
        CachePolicy::Rebuild
    } else {
        CachePolicy::Reuse
    };
    let eval_policy = if config.use_cached_eval_features && !config.reprocess_input_data {
        CachePolicy::Reuse
    } else {
        CachePolicy::Rebuild
    };
    let train_split = load_split(
        &config.train_data,
        &tokenizer,
        config,
        train_policy,
        config.max_train_examples,
        say,
    )?;
    let labelled: Vec<usize> = train_split.features.labelled().collect();
    if labelled.is_empty() {
        bail!(
            "{}: no trainable features: no answer could be used as a training label (the report \
             above says why)",
            config.train_data.display()
        );
    }
    let eval_split = match &config.eval_data {
        Some(p) => Some(load_split(
            p,
            &tokenizer,
            config,
            eval_policy,
            config.max_eval_examples,
            say,
        )?),
        None => None,
    };

    // A new span head is drawn from the backend's generator: seed it so runs are repeatable.
    B::seed(&device, config.manual_seed);
    let loaded = qa_model::load_pretrained::<B>(&model_dir, &device)?;
    say(loaded.report.to_string());
    let model_config = loaded.config.clone();
    if config.max_seq_length > model_config.max_position_embeddings {
        bail!(
            "max_seq_length {} exceeds the model's max_position_embeddings {}; lower max_seq_length",
            config.max_seq_length,
            model_config.max_position_embeddings
        );
    }
    let mut model = loaded.model;
    let mut optim = GroupedAdamW::<B>::new(config.weight_decay, config.adam_epsilon);

    let micro_per_epoch = labelled.len().div_ceil(config.train_batch_size);
    let steps_per_epoch = micro_per_epoch.div_ceil(config.gradient_accumulation_steps);
    let total_steps = if config.max_steps > 0 {
        config.max_steps
    } else {
        steps_per_epoch * config.num_train_epochs
    };
    let warmup = (total_steps as f64 * config.warmup_ratio).ceil() as usize;
    say(format!(
        "{} trainable features, {micro_per_epoch} batches of {} per epoch, {total_steps} optimizer steps ({warmup} warmup)",
        labelled.len(),
        config.train_batch_size
    ));

    let mut state = LoopState {
        global_step: 0,
        epoch: 0,
        micro_in_epoch: 0,
        micro_total: 0,
        early_stopping: EarlyStopping::default(),
        evaluations: Vec::new(),
        losses: Vec::new(),
        config: comparable(config),
    };
    if let Some(ckpt) = resume_from {
        check_same_config(&ckpt.state.config, &state.config)?;
        let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
        let model_record = recorder
            .load(ckpt.record(MODEL_RECORD)?.to_vec(), &device)
            .context("checkpoint model record does not fit this model")?;
        model = model.load_record(model_record);
        optim = optim.load_record((
            recorder.load(ckpt.record(OPTIM_DECAY_RECORD)?.to_vec(), &device)?,
            recorder.load(ckpt.record(OPTIM_NO_DECAY_RECORD)?.to_vec(), &device)?,
        ));
        state = ckpt.state;
        say(format!(
            "resumed from {} at step {} (epoch {}, batch {})",
            ckpt.dir.display(),
            state.global_step,
            state.epoch + 1,
            state.micro_in_epoch
        ));
    }

    // Parameter ids come from the checkpoint's record on resume: list them after loading it.
    let params = qa_model::parameters(&model);
    let decode = config.decode(
        eval_split
            .as_ref()
            .is_some_and(|s| s.dataset.version == SquadVersion::V2),
    );
    let pad_to = config.pad_to_max_length.then_some(config.max_seq_length);
    let tokenizer_json = model_dir.join(qa_model::hf::TOKENIZER_FILE);
    let tokenizer_json = tokenizer_json.is_file().then_some(tokenizer_json);
    let best_dir = config.best_model_dir();
    let accumulation = config.gradient_accumulation_steps;

    let schedule = WarmupLinearDecay::new(config.learning_rate, warmup, total_steps)
        .load_record::<B>(state.global_step);
    // The rate of the latest update, also right after a resume (when the learner has none yet).
    let last_lr = |global_step: usize| schedule.at(global_step.saturating_sub(1));
    // The loop keeps a handle on the optimizer: its state goes into every checkpoint.
    let mut learner = SpanLearner::<B>::new(SpanModel { model }, optim.clone(), schedule.clone());
    let progress = Progress::new(total_steps, state.global_step, config.logging_steps);
    let mut accumulator = GradientsAccumulator::<SpanModel<B>>::new();
    let mut pending = 0usize; // micro-batches in the accumulator
    let (mut loss_since_log, mut micro_since_log) = (0.0f64, 0usize);
    let (mut loss_since_eval, mut micro_since_eval) = (0.0f64, 0usize);
    let (mut trained_features, mut train_seconds) = (0usize, 0.0f64);
    let mut last_eval_step = state.evaluations.last().map(|e| e.global_step);
    let mut stopped_early = false;
    let mut halted = false;

    let ctx = EvalContext {
        config,
        split: eval_split.as_ref(),
        decode: &decode,
        pad_to,
        device: &device,
        model_config: &model_config,
        tokenizer_json: tokenizer_json.as_deref(),
        best_dir: &best_dir,
    };

    'epochs: while state.epoch < config.num_train_epochs && state.global_step < total_steps {
        let order = epoch_order(&labelled, config.manual_seed, state.epoch);
        let batches: Vec<&[usize]> = order.chunks(config.train_batch_size).collect();
        while state.micro_in_epoch < batches.len() {
            let t0 = Instant::now();
            let indices = batches[state.micro_in_epoch];
            // Dropout masks depend only on the seed and the position in the run, so a resumed
            // run draws the same masks as an uninterrupted one.
            B::seed(
                &device,
                config
                    .manual_seed
                    .wrapping_add(state.micro_total as u64)
                    .wrapping_mul(0x2545_F491_4F6C_DD1D),
            );
            let batch = HostBatch::new(&train_split.features, indices, pad_to);
            let output =
                learner.train_step(SpanBatch::new(&batch, 1.0 / accumulation as f64, &device));
            let value = output.item.0;
            if !value.is_finite() {
                let kept = match checkpoint::latest(out) {
                    Ok(dir) => format!("the last good checkpoint, {}, is kept", dir.display()),
                    Err(_) => "no checkpoint had been written yet".to_string(),
                };
                bail!(
                    "training loss became {value} at step {} (epoch {}); stopped: {kept}. Lower \
                     learning_rate or check the data",
                    state.global_step + 1,
                    state.epoch + 1,
                );
            }
            accumulator.accumulate(&learner.model(), output.grads);
            pending += 1;
            state.micro_in_epoch += 1;
            state.micro_total += 1;
            loss_since_log += value;
            micro_since_log += 1;
            loss_since_eval += value;
            micro_since_eval += 1;

            let epoch_done = state.micro_in_epoch == batches.len();
            if pending == accumulation || epoch_done {
                let mut grads = accumulator.grads();
                if pending < accumulation {
                    // A short final accumulation: average over what it holds.
                    scale_grads::<B>(&mut grads, &params, accumulation as f64 / pending as f64);
                }
                pending = 0;
                if config.max_grad_norm > 0.0 {
                    clip_global_norm::<B>(&mut grads, &params, config.max_grad_norm);
                }
                learner.lr_step();
                let lr = learner.lr_current();
                learner.optimizer_step(grads);
                state.global_step += 1;
                trained_features += indices.len();
                train_seconds += t0.elapsed().as_secs_f64();

                if state
                    .global_step
                    .is_multiple_of(config.logging_steps.max(1))
                    || state.global_step == total_steps
                {
                    let mean = loss_since_log / micro_since_log.max(1) as f64;
                    state.losses.push(LossRecord {
                        global_step: state.global_step,
                        loss: mean,
                        lr,
                    });
                    (loss_since_log, micro_since_log) = (0.0, 0);
                    progress.log(state.global_step, mean, lr, state.epoch, say);
                }
                progress.tick(state.global_step);

                let eval_due = config.evaluate_during_training
                    && config.evaluate_during_training_steps > 0
                    && state
                        .global_step
                        .is_multiple_of(config.evaluate_during_training_steps);
                let mut checkpoint_due =
                    config.save_steps > 0 && state.global_step.is_multiple_of(config.save_steps);
                if eval_due {
                    let train_loss = loss_since_eval / micro_since_eval.max(1) as f64;
                    (loss_since_eval, micro_since_eval) = (0.0, 0);
                    let stop =
                        ctx.evaluate(&learner.model().model, &mut state, train_loss, lr, say)?;
                    last_eval_step = Some(state.global_step);
                    if config.save_eval_checkpoints {
                        ctx.save_model(
                            &learner.model().model,
                            &out.join(format!("checkpoint-{}", state.global_step)),
                        )?;
                    }
                    checkpoint_due = true;
                    if stop {
                        stopped_early = true;
                    }
                }
                let at_end = state.global_step >= total_steps
                    || options
                        .halt_after_steps
                        .is_some_and(|h| state.global_step >= h);
                if stopped_early || at_end {
                    checkpoint_due = true;
                }
                if epoch_done && !stopped_early {
                    // Epoch bookkeeping below writes its own checkpoint.
                    checkpoint_due = false;
                }
                if checkpoint_due {
                    save_checkpoint(out, &state, &learner.model().model, &optim)?;
                }
                if stopped_early {
                    say(format!(
                        "early stopping: {} did not improve by more than {} for {} evaluations",
                        metric_name(config.early_stopping_metric),
                        config.early_stopping_delta,
                        config.early_stopping_patience + 1
                    ));
                    break 'epochs;
                }
                if options
                    .halt_after_steps
                    .is_some_and(|h| state.global_step >= h)
                    && !epoch_done
                {
                    halted = state.global_step < total_steps;
                    break 'epochs;
                }
                if state.global_step >= total_steps && !epoch_done {
                    break 'epochs;
                }
            }
        }
        // End of epoch.
        let finished_epoch = state.epoch;
        state.epoch += 1;
        state.micro_in_epoch = 0;
        if config.evaluate_during_training && last_eval_step != Some(state.global_step) {
            let train_loss = loss_since_eval / micro_since_eval.max(1) as f64;
            (loss_since_eval, micro_since_eval) = (0.0, 0);
            let lr = last_lr(state.global_step);
            let mut record_state = state.clone();
            record_state.epoch = finished_epoch;
            let stop = ctx.evaluate(
                &learner.model().model,
                &mut record_state,
                train_loss,
                lr,
                say,
            )?;
            state.evaluations = record_state.evaluations;
            state.early_stopping = record_state.early_stopping;
            last_eval_step = Some(state.global_step);
            stopped_early |= stop;
        }
        if config.save_model_every_epoch {
            ctx.save_model(
                &learner.model().model,
                &out.join(format!(
                    "checkpoint-{}-epoch-{}",
                    state.global_step,
                    finished_epoch + 1
                )),
            )?;
        }
        save_checkpoint(out, &state, &learner.model().model, &optim)?;
        if stopped_early {
            break;
        }
        if options
            .halt_after_steps
            .is_some_and(|h| state.global_step >= h)
        {
            halted = state.global_step < total_steps;
            break;
        }
    }
    progress.finish();

    // A run cut short by max_steps ends between epoch boundaries: evaluate its final model too.
    if !halted
        && !stopped_early
        && config.evaluate_during_training
        && last_eval_step != Some(state.global_step)
    {
        let train_loss = loss_since_eval / micro_since_eval.max(1) as f64;
        let lr = last_lr(state.global_step);
        ctx.evaluate(&learner.model().model, &mut state, train_loss, lr, say)?;
        save_checkpoint(out, &state, &learner.model().model, &optim)?;
    }
    let model = learner.model().model;
    if !halted {
        ctx.save_model(&model, out)?;
        if state.early_stopping.best.is_none() {
            // Without evaluations the final model is the best we know.
            ctx.save_model(&model, &best_dir)?;
        }
    }
    log::write_tables(out, &state.evaluations, &state.losses)?;
    log::write_plots(out, &state.evaluations, &state.losses)?;
    Ok(TrainSummary {
        global_step: state.global_step,
        total_steps,
        stopped_early,
        halted,
        evaluations: state.evaluations.clone(),
        losses: state.losses.clone(),
        best: state
            .early_stopping
            .best
            .zip(state.early_stopping.best_step)
            .map(|(v, s)| (s, v)),
        output_dir: out.clone(),
        best_model_dir: best_dir,
        train_features: labelled.len(),
        features_per_second: trained_features as f64 / train_seconds.max(1e-9),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn prepare_output_dir(config: &TrainConfig, options: &RunOptions) -> anyhow::Result<()> {
    let out = &config.output_dir;
    if options.resume {
        return Ok(());
    }
    let has_content = out.is_dir() && std::fs::read_dir(out)?.next().is_some();
    if has_content && !config.overwrite_output_dir {
        bail!(
            "output_dir {} already has content; set overwrite_output_dir = true to train into it \
             anyway, or pass --resume to continue its run",
            out.display()
        );
    }
    // A fresh run must not leave an older run's checkpoints for a later --resume to pick up.
    let old = out.join(checkpoint::CHECKPOINTS_DIR);
    if old.exists() {
        std::fs::remove_dir_all(&old).with_context(|| format!("removing {}", old.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    Ok(())
}

fn check_same_config(saved: &serde_json::Value, now: &serde_json::Value) -> anyhow::Result<()> {
    let (Some(a), Some(b)) = (saved.as_object(), now.as_object()) else {
        return Ok(());
    };
    let differing: Vec<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !differing.is_empty() {
        bail!(
            "cannot resume: the configuration differs from the checkpoint's in {:?}; a resumed \
             run must use the same settings to continue the same training",
            differing
        );
    }
    Ok(())
}

fn save_checkpoint<B: AutodiffBackend>(
    out: &Path,
    state: &LoopState,
    model: &BertForQuestionAnswering<B>,
    optim: &GroupedAdamW<B>,
) -> anyhow::Result<()> {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let model_bytes = recorder.record(model.clone().into_record(), ())?;
    let (decay, no_decay) = optim.to_record();
    let decay_bytes = recorder.record(decay, ())?;
    let no_decay_bytes = recorder.record(no_decay, ())?;
    checkpoint::save(
        out,
        state,
        &[
            (MODEL_RECORD, model_bytes),
            (OPTIM_DECAY_RECORD, decay_bytes),
            (OPTIM_NO_DECAY_RECORD, no_decay_bytes),
        ],
    )?;
    Ok(())
}

fn metric_name(m: EarlyStoppingMetric) -> &'static str {
    match m {
        EarlyStoppingMetric::Exact => "exact",
        EarlyStoppingMetric::F1 => "f1",
        EarlyStoppingMetric::EvalLoss => "eval_loss",
    }
}

/// What evaluation during training needs.
struct EvalContext<'a, B: AutodiffBackend> {
    config: &'a TrainConfig,
    split: Option<&'a Split>,
    decode: &'a qa_data::DecodeConfig,
    pad_to: Option<usize>,
    device: &'a B::Device,
    model_config: &'a BertConfig,
    tokenizer_json: Option<&'a Path>,
    best_dir: &'a Path,
}

impl<B: AutodiffBackend> EvalContext<'_, B> {
    /// Evaluates, records, updates early stopping and the best model; true = stop training.
    fn evaluate(
        &self,
        model: &BertForQuestionAnswering<B>,
        state: &mut LoopState,
        train_loss: f64,
        lr: f64,
        say: &dyn Fn(String),
    ) -> anyhow::Result<bool> {
        let Some(split) = self.split else {
            return Ok(false);
        };
        let t0 = Instant::now();
        let inner = model.valid();
        let evaluation = evaluate_model(
            &inner,
            &split.dataset,
            &split.features,
            self.decode,
            self.config.eval_batch_size,
            self.pad_to,
            self.device,
        )?;
        let (exact, f1) = match &evaluation.scores {
            SquadScores::V1(s) => (s.exact_match, s.f1),
            SquadScores::V2(s) => (s.exact, s.f1),
        };
        let eval_loss = evaluation.eval_loss.unwrap_or(f64::NAN);
        state.evaluations.push(EvalRecord {
            global_step: state.global_step,
            epoch: state.epoch,
            exact,
            f1,
            train_loss,
            eval_loss,
            lr,
        });
        say(format!(
            "eval at step {}: exact {exact:.2}, f1 {f1:.2}, eval_loss {eval_loss:.4}, train_loss {train_loss:.4} ({:.1} s)",
            state.global_step,
            t0.elapsed().as_secs_f64()
        ));
        let value = match self.config.early_stopping_metric {
            EarlyStoppingMetric::Exact => exact,
            EarlyStoppingMetric::F1 => f1,
            EarlyStoppingMetric::EvalLoss => eval_loss,
        };
        let es = &mut state.early_stopping;
        let delta = self.config.early_stopping_delta;
        let improved = match es.best {
            None => true,
            Some(best) if self.config.early_stopping_metric_minimize => best - value > delta,
            Some(best) => value - best > delta,
        };
        let mut stop = false;
        if improved {
            es.best = Some(value);
            es.best_step = Some(state.global_step);
            es.counter = 0;
            self.save_model(model, self.best_dir)?;
            say(format!(
                "best {} so far ({value:.4}): model written to {}",
                metric_name(self.config.early_stopping_metric),
                self.best_dir.display()
            ));
        } else if self.config.use_early_stopping {
            // Simple Transformers' rule: stop at the first non-improvement after `patience` ones.
            if es.counter < self.config.early_stopping_patience {
                es.counter += 1;
            } else {
                stop = true;
            }
        }
        log::write_tables(&self.config.output_dir, &state.evaluations, &state.losses)?;
        Ok(stop)
    }

    fn save_model(&self, model: &BertForQuestionAnswering<B>, dir: &Path) -> anyhow::Result<()> {
        qa_model::save_pretrained(&model.valid(), self.model_config, self.tokenizer_json, dir)
            .with_context(|| format!("saving the model to {}", dir.display()))
    }
}

/// Multiplies every gradient by `factor`.
fn scale_grads<B: AutodiffBackend>(grads: &mut GradientsParams, params: &[ParamInfo], factor: f64) {
    for p in params {
        match p.rank {
            1 => {
                if let Some(t) = grads.remove::<B::InnerBackend, 1>(p.id) {
                    grads.register(p.id, t * factor);
                }
            }
            _ => {
                if let Some(t) = grads.remove::<B::InnerBackend, 2>(p.id) {
                    grads.register(p.id, t * factor);
                }
            }
        }
    }
}

/// Clips the norm of all gradients together to `max_norm` (torch's `clip_grad_norm_`); burn's
/// built-in clipping works per tensor. Returns the norm before clipping.
fn clip_global_norm<B: AutodiffBackend>(
    grads: &mut GradientsParams,
    params: &[ParamInfo],
    max_norm: f64,
) -> f64 {
    let mut squares: Vec<Tensor<B::InnerBackend, 1>> = Vec::with_capacity(params.len());
    for p in params {
        let sq = match p.rank {
            1 => grads
                .get::<B::InnerBackend, 1>(p.id)
                .map(|t| t.powi_scalar(2).sum()),
            // Row sums first: burn-flex sums a tensor of 4M+ elements (the word embeddings)
            // with a rayon reduction whose order varies from run to run, which made resumed
            // runs differ from uninterrupted ones; per-row sums are computed in a fixed order.
            _ => grads
                .get::<B::InnerBackend, 2>(p.id)
                .map(|t| t.powi_scalar(2).sum_dim(1).sum()),
        };
        squares.extend(sq);
    }
    if squares.is_empty() {
        return 0.0;
    }
    let total: f64 = Tensor::cat(squares, 0)
        .sum()
        .into_scalar()
        .elem::<f64>()
        .sqrt();
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        scale_grads::<B>(grads, params, coef);
    }
    total
}

/// A progress bar on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total: usize, done: usize, _logging_steps: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            bar.set_position(done as u64);
            bar
        });
        Progress { bar }
    }

    fn tick(&self, step: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
        }
    }

    fn log(&self, step: usize, loss: f64, lr: f64, epoch: usize, say: &dyn Fn(String)) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("loss {loss:.4} lr {lr:.2e} epoch {}", epoch + 1)),
            None => say(format!(
                "step {step}: loss {loss:.4}, lr {lr:.3e}, epoch {}",
                epoch + 1
            )),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_refuses_changed_settings() {
        let a = serde_json::json!({"learning_rate": 1e-5, "model": "m"});
        let b = serde_json::json!({"learning_rate": 2e-5, "model": "m"});
        let err = check_same_config(&a, &b).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        check_same_config(&a, &a).unwrap();
    }
}
