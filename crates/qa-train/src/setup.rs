//! Everything a run needs before its first step: the output directory and resume checks, the
//! model directory and tokenizer, the training and evaluation features, the model with its
//! optimizer (from a checkpoint when resuming) and the step plan.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::tensor::backend::AutodiffBackend;
use qa_data::{
    CacheOutcome, CachePolicy, Casing, Dataset, FeatureCache, FeatureSet, LoadOptions, QaTokenizer,
    SquadVersion,
};
use qa_model::{AnsweringSettings, BertConfig, BertForQuestionAnswering, Precision};

use crate::checkpoint::{self, LoopState};
use crate::config::TrainConfig;
use crate::learner::GroupedAdamW;
use crate::trainer::RunOptions;

/// A dataset and its windowed features.
pub(crate) struct Split {
    pub dataset: Dataset,
    pub features: FeatureSet,
}

/// How many steps a run makes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub micro_per_epoch: usize,
    pub total_steps: usize,
    pub warmup: usize,
}

impl Plan {
    fn new(config: &TrainConfig, trainable: usize) -> Self {
        let micro_per_epoch = trainable.div_ceil(config.train_batch_size);
        let steps_per_epoch = micro_per_epoch.div_ceil(config.gradient_accumulation_steps);
        let total_steps = if config.max_steps > 0 {
            config.max_steps
        } else {
            steps_per_epoch * config.num_train_epochs
        };
        Plan {
            micro_per_epoch,
            total_steps,
            warmup: (total_steps as f64 * config.warmup_ratio).ceil() as usize,
        }
    }
}

/// How a model directory is written: the HF files, the tokenizer it was trained with (copied from
/// the directory it started from), and the answering settings it is evaluated with.
pub(crate) struct ModelExport {
    pub model_config: BertConfig,
    pub source_dir: PathBuf,
    pub settings: AnsweringSettings,
}

impl ModelExport {
    pub fn save<B: AutodiffBackend>(
        &self,
        model: &BertForQuestionAnswering<B>,
        dir: &Path,
    ) -> anyhow::Result<()> {
        use burn::module::AutodiffModule;
        qa_model::save_pretrained(
            &model.valid(),
            &self.model_config,
            Some(&self.source_dir),
            dir,
        )
        .and_then(|()| self.settings.save(dir))
        .with_context(|| format!("saving the model to {}", dir.display()))
    }
}

/// A run ready for its first (or next) step.
pub(crate) struct Prepared<B: AutodiffBackend> {
    pub train: Split,
    /// Indices of the features with a label: what training visits.
    pub labelled: Vec<usize>,
    pub eval: Option<Split>,
    pub model: BertForQuestionAnswering<B>,
    pub optim: GroupedAdamW<B>,
    pub state: LoopState,
    pub plan: Plan,
    pub export: ModelExport,
}

/// Checks, loads and builds everything in the order that fails before anything is written
/// where it can: a resume reads and verifies its checkpoint first, so a failed one leaves the
/// output dir as it was.
pub(crate) fn prepare<B: AutodiffBackend>(
    config: &TrainConfig,
    options: &RunOptions,
    device: &B::Device,
    say: &dyn Fn(String),
) -> anyhow::Result<Prepared<B>> {
    config
        .precision
        .check::<B>(device)
        .map_err(anyhow::Error::msg)?;
    let model_dir = resolve_model(&config.model)?;
    refuse_int8(&model_dir)?;
    prepare_output_dir(config, options)?;
    let resume_from = options
        .resume
        .then(|| checkpoint::load_latest(&config.output_dir))
        .transpose()?;
    let tokenizer = QaTokenizer::from_path(&model_dir, Casing::Auto)?;
    let (train, labelled, eval) = load_data(config, &tokenizer, say)?;

    // A new span head is drawn from the backend's generator: seed it so runs are repeatable.
    B::seed(device, config.manual_seed);
    let loaded = qa_model::load_pretrained::<B>(&model_dir, device)?;
    say(loaded.report.to_string());
    loaded
        .config
        .check_tokenizer(&tokenizer)
        .and_then(|()| loaded.config.check_window(&config.window()))
        .map_err(anyhow::Error::msg)?;
    let plan = Plan::new(config, labelled.len());
    say(format!(
        "{} trainable features, {} batches of {} per epoch, {} optimizer steps ({} warmup)",
        labelled.len(),
        plan.micro_per_epoch,
        config.train_batch_size,
        plan.total_steps,
        plan.warmup
    ));

    let mut model = loaded.model.with_precision(config.precision);
    if config.precision != Precision::F32 {
        say(format!(
            "precision: {} matrix products, f32 weights, optimizer state, norms and loss",
            config.precision
        ));
    }
    let mut optim = GroupedAdamW::<B>::new(config.weight_decay, config.adam_epsilon);
    let mut state = LoopState::start(comparable(config));
    if let Some(ckpt) = resume_from {
        check_same_config(&ckpt.state.config, &state.config)?;
        (model, optim) = checkpoint::restore(&ckpt, model, optim, device)?;
        state = ckpt.state;
        say(format!(
            "resumed from {} at step {} (epoch {}, batch {})",
            ckpt.dir.display(),
            state.global_step,
            state.epoch + 1,
            state.micro_in_epoch
        ));
    }
    let export = ModelExport {
        model_config: loaded.config,
        source_dir: model_dir,
        settings: answering_settings(config, &train, eval.as_ref()),
    };
    Ok(Prepared {
        train,
        labelled,
        eval,
        model,
        optim,
        state,
        plan,
        export,
    })
}

/// The settings a model trained by `config` is evaluated with, and so answers with later.
fn answering_settings(
    config: &TrainConfig,
    train: &Split,
    eval: Option<&Split>,
) -> AnsweringSettings {
    let data = eval.unwrap_or(train);
    AnsweringSettings {
        window: config.window(),
        decode: config.decode(data.dataset.version == SquadVersion::V2),
    }
}

/// The training split (with the features training can use) and the evaluation split.
fn load_data(
    config: &TrainConfig,
    tokenizer: &QaTokenizer,
    say: &dyn Fn(String),
) -> anyhow::Result<(Split, Vec<usize>, Option<Split>)> {
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
    let train = load_split(
        &config.train_data,
        tokenizer,
        config,
        train_policy,
        config.max_train_examples,
        say,
    )?;
    let labelled: Vec<usize> = train.features.labelled().collect();
    if labelled.is_empty() {
        bail!(
            "{}: no trainable features: no answer could be used as a training label (the report \
             above says why)",
            config.train_data.display()
        );
    }
    let eval = match &config.eval_data {
        Some(p) => Some(load_split(
            p,
            tokenizer,
            config,
            eval_policy,
            config.max_eval_examples,
            say,
        )?),
        None => None,
    };
    Ok((train, labelled, eval))
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

/// An int8 model (`qa quantize`) answers questions; its weights cannot be trained.
fn refuse_int8(model_dir: &Path) -> anyhow::Result<()> {
    let path = model_dir.join("config.json");
    if BertConfig::load(&path)?.quantization.is_some() {
        bail!(
            "{}: an int8 model (written by `qa quantize`) answers questions but cannot be \
             trained; train the f32 model it was quantized from",
            model_dir.display()
        );
    }
    Ok(())
}

/// `$QA_CACHE_DIR/models`, or `.cache/models` under the current directory.
pub fn model_cache_dir() -> PathBuf {
    std::env::var_os("QA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("models")
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

/// The config as a checkpoint records it: without the fields a resume may change.
fn comparable(config: &TrainConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(config).expect("config serialises");
    if let Some(map) = v.as_object_mut() {
        for key in RESUMABLE_CHANGES {
            map.remove(*key);
        }
    }
    v
}

/// Refuses a resume whose settings differ from the checkpoint's. Keys the checkpoint's version did
/// not know yet count as their defaults (read back through [`TrainConfig`]).
fn check_same_config(saved: &serde_json::Value, now: &serde_json::Value) -> anyhow::Result<()> {
    let saved = serde_json::from_value::<TrainConfig>(saved.clone())
        .map(|c| comparable(&c))
        .unwrap_or_else(|_| saved.clone());
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

    #[test]
    fn a_checkpoint_without_a_newer_key_resumes_with_its_default() {
        let config: TrainConfig =
            toml::from_str("model = \"m\"\ntrain_data = \"t.json\"\n").unwrap();
        let now = comparable(&config);
        let mut older = now.clone();
        older.as_object_mut().unwrap().remove("group_by_length");
        check_same_config(&older, &now).unwrap();
        let grouped = TrainConfig {
            group_by_length: true,
            ..config
        };
        let err = check_same_config(&older, &comparable(&grouped))
            .unwrap_err()
            .to_string();
        assert!(err.contains("group_by_length"), "{err}");
    }
}
