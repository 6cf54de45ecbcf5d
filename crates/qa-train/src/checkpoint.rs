//! Resumable checkpoints that survive a crash.
//!
//! A checkpoint is a directory `checkpoints/step-N` holding the model and optimizer records and a
//! `state.json` with the loop position, early-stopping state, metric history and a SHA-256 of
//! every record. It is written under a temporary name and renamed into place, and only then does
//! `checkpoints/latest` (itself replaced atomically) point at it: at every moment `latest` names a
//! complete checkpoint. Loading verifies every checksum, so a damaged file is reported, not used.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use burn::module::Module;
use burn::optim::Optimizer;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Record, Recorder};
use burn::tensor::backend::AutodiffBackend;
use qa_data::checksum::sha256_hex;
use qa_model::BertForQuestionAnswering;
use serde::{Deserialize, Serialize};

use crate::early_stopping::EarlyStopping;
use crate::learner::GroupedAdamW;
use crate::log::{EvalRecord, LossRecord};

pub const CHECKPOINTS_DIR: &str = "checkpoints";
const LATEST: &str = "latest";
const STATE: &str = "state.json";
const MODEL_RECORD: &str = "model.bin";
const OPTIM_DECAY_RECORD: &str = "optimizer-decay.bin";
const OPTIM_NO_DECAY_RECORD: &str = "optimizer-no-decay.bin";

/// Where the loop is and what it has seen: everything besides the records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    pub global_step: usize,
    pub epoch: usize,
    /// Micro-batches of `epoch` already consumed.
    pub micro_in_epoch: usize,
    /// Micro-batches consumed over the whole run (seeds dropout).
    pub micro_total: usize,
    pub early_stopping: EarlyStopping,
    pub evaluations: Vec<EvalRecord>,
    pub losses: Vec<LossRecord>,
    /// The training configuration as JSON, to refuse resuming with different settings.
    pub config: serde_json::Value,
}

impl LoopState {
    /// The state before the first step of a run configured as `config` (see [`LoopState::config`]).
    pub fn start(config: serde_json::Value) -> Self {
        LoopState {
            global_step: 0,
            epoch: 0,
            micro_in_epoch: 0,
            micro_total: 0,
            early_stopping: EarlyStopping::default(),
            evaluations: Vec::new(),
            losses: Vec::new(),
            config,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    state: LoopState,
    /// File name -> SHA-256 (hex) of each record.
    records: Vec<(String, String)>,
}

/// The directory of the checkpoint `checkpoints/latest` names.
pub fn latest(output_dir: &Path) -> std::io::Result<PathBuf> {
    let root = output_dir.join(CHECKPOINTS_DIR);
    let name = std::fs::read_to_string(root.join(LATEST))?;
    Ok(root.join(name.trim()))
}

/// Writes a checkpoint of `records` (file name, bytes) and `state`, then prunes older ones.
pub fn save(
    output_dir: &Path,
    state: &LoopState,
    records: &[(&str, Vec<u8>)],
) -> anyhow::Result<PathBuf> {
    let root = output_dir.join(CHECKPOINTS_DIR);
    let name = format!("step-{:09}", state.global_step);
    let tmp = root.join(format!(".{name}.tmp"));
    let dir = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut sums = Vec::new();
    for (file, bytes) in records {
        qa_data::atomic::write(&tmp.join(file), bytes)?;
        sums.push((file.to_string(), sha256_hex(bytes)));
    }
    let state_file = StateFile {
        state: state.clone(),
        records: sums,
    };
    qa_data::atomic::write(&tmp.join(STATE), &serde_json::to_vec_pretty(&state_file)?)?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::rename(&tmp, &dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    qa_data::atomic::write(&root.join(LATEST), name.as_bytes())?;
    // Older checkpoints are only removed once `latest` points at the new one.
    for entry in std::fs::read_dir(&root)? {
        let path = entry?.path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if path.is_dir() && file.starts_with("step-") && file != name {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(dir)
}

/// A verified checkpoint: its state and record bytes by file name.
pub struct Loaded {
    pub dir: PathBuf,
    pub state: LoopState,
    pub records: Vec<(String, Vec<u8>)>,
}

impl Loaded {
    pub fn record(&self, name: &str) -> anyhow::Result<&[u8]> {
        self.records
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.as_slice())
            .with_context(|| format!("checkpoint {} has no {name}", self.dir.display()))
    }
}

/// The checkpoint `latest` points at, with every checksum verified.
pub fn load_latest(output_dir: &Path) -> anyhow::Result<Loaded> {
    let dir = latest(output_dir).with_context(|| {
        format!(
            "no checkpoint to resume from: {} does not exist",
            output_dir.join(CHECKPOINTS_DIR).join(LATEST).display()
        )
    })?;
    let state_path = dir.join(STATE);
    let text =
        std::fs::read(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let state_file: StateFile = serde_json::from_slice(&text).with_context(|| {
        format!(
            "checkpoint is corrupt: {} is not a valid state file",
            state_path.display()
        )
    })?;
    let mut records = Vec::new();
    for (file, sum) in state_file.records {
        let path = dir.join(&file);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        if sha256_hex(&bytes) != sum {
            bail!(
                "checkpoint is corrupt: {} does not match the checksum recorded when it was written",
                path.display()
            );
        }
        records.push((file, bytes));
    }
    Ok(Loaded {
        dir,
        state: state_file.state,
        records,
    })
}

/// Writes a checkpoint of a training run: the model, both optimizer groups and `state`.
pub(crate) fn save_training<B: AutodiffBackend>(
    output_dir: &Path,
    state: &LoopState,
    model: &BertForQuestionAnswering<B>,
    optim: &GroupedAdamW<B>,
) -> anyhow::Result<()> {
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let model_bytes = recorder.record(model.clone().into_record(), ())?;
    let (decay, no_decay) = optim.to_record();
    let decay_bytes = recorder.record(decay, ())?;
    let no_decay_bytes = recorder.record(no_decay, ())?;
    save(
        output_dir,
        state,
        &[
            (MODEL_RECORD, model_bytes),
            (OPTIM_DECAY_RECORD, decay_bytes),
            (OPTIM_NO_DECAY_RECORD, no_decay_bytes),
        ],
    )?;
    Ok(())
}

/// The model and optimizer of a checkpoint [`save_training`] wrote, loaded into `model` and
/// `optim` on `device`.
pub(crate) fn restore<B: AutodiffBackend>(
    checkpoint: &Loaded,
    model: BertForQuestionAnswering<B>,
    optim: GroupedAdamW<B>,
    device: &B::Device,
) -> anyhow::Result<(BertForQuestionAnswering<B>, GroupedAdamW<B>)> {
    let model_record = decode(checkpoint, MODEL_RECORD, device)?;
    let optim = optim.load_record((
        decode(checkpoint, OPTIM_DECAY_RECORD, device)?,
        decode(checkpoint, OPTIM_NO_DECAY_RECORD, device)?,
    ));
    Ok((model.load_record(model_record), optim))
}

/// A record of the checkpoint, decoded without burn's recorder, which panics on a record of
/// another layout (one from another version of this crate).
fn decode<B: AutodiffBackend, R: Record<B>>(
    checkpoint: &Loaded,
    name: &str,
    device: &B::Device,
) -> anyhow::Result<R> {
    qa_model::record::decode_record(checkpoint.record(name)?, device)
        .map_err(|e| anyhow::anyhow!("the checkpoint's {name} does not fit this version: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> LoopState {
        LoopState {
            global_step: step,
            micro_in_epoch: step,
            micro_total: step,
            ..LoopState::start(serde_json::json!({"a": 1}))
        }
    }

    #[test]
    fn latest_wins_old_ones_are_pruned_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &state(1), &[("model.bin", vec![1, 2, 3])]).unwrap();
        let second = save(dir.path(), &state(2), &[("model.bin", vec![4, 5, 6])]).unwrap();
        let loaded = load_latest(dir.path()).unwrap();
        assert_eq!(loaded.state.global_step, 2);
        assert_eq!(loaded.record("model.bin").unwrap(), [4, 5, 6]);
        let dirs: Vec<_> = std::fs::read_dir(dir.path().join(CHECKPOINTS_DIR))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .collect();
        assert_eq!(dirs.len(), 1);

        std::fs::write(second.join("model.bin"), [4, 5, 7]).unwrap();
        let err = load_latest(dir.path()).err().unwrap().to_string();
        assert!(
            err.contains("corrupt") && err.contains("model.bin"),
            "{err}"
        );
    }

    #[test]
    fn missing_checkpoint_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_latest(dir.path()).err().unwrap().to_string();
        assert!(err.contains("no checkpoint to resume from"), "{err}");
    }
}
