//! Trains as `qa train` does and writes the dropout masks the run drew, for
//! `tests/parity/torch_finetune.py --dropout-masks FILE` (with `--order` from the `epoch_order`
//! example): PyTorch then drops the same elements and the two runs do the same arithmetic.
//!
//! cargo run --release -p qa-train --example record_dropout -- CONFIG MASKS_JSON [KEY=VALUE ...]
//!
//! KEY=VALUE pairs override the config as `qa train --set` does. Masks are drawn, and recorded,
//! by training on the CPU: set `device = "cpu"` on a machine with a GPU.

use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [config, masks, overrides @ ..] = args.as_slice() else {
        anyhow::bail!("usage: record_dropout CONFIG MASKS_JSON [KEY=VALUE ...]");
    };
    if Path::new(masks).exists() {
        anyhow::bail!("{masks} exists; not replacing it");
    }
    let config = qa_train::TrainConfig::load(Path::new(config), overrides)?;
    let say = |line: String| eprintln!("{line}");
    let (summary, drawn) = qa_model::kernels::recording_dropout_masks(|| {
        qa_train::train(&config, &qa_train::RunOptions::default(), &say)
    });
    let summary = summary?;
    if drawn.is_empty() {
        anyhow::bail!("no dropout masks were drawn: train on the CPU with dropout in the model");
    }
    qa_data::atomic::write(Path::new(masks), serde_json::to_string(&drawn)?.as_bytes())?;
    eprintln!(
        "{} masks over {} steps ({} trainable features) written to {masks}",
        drawn.len(),
        summary.global_step,
        summary.train_features
    );
    Ok(())
}
