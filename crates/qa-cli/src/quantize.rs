//! `qa quantize`: an int8 copy of a fine-tuned model directory for CPU inference, which `qa
//! predict`, `chat`, `serve` and `evaluate` load like any model.

use std::path::Path;

use anyhow::{Context, bail};
use qa_model::{AnsweringSettings, CpuBackend, load_model, save_pretrained};

use crate::cli::QuantizeArgs;

pub fn run(args: &QuantizeArgs) -> anyhow::Result<()> {
    check_output(args)?;
    let device = Default::default();
    let loaded = load_model::<CpuBackend>(&args.model, &device)
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    if loaded.config.quantization.is_some() {
        bail!("{}: the model is int8 already", args.model.display());
    }
    if loaded.report.head_initialized {
        bail!(
            "{}: no span head (qa_outputs) in the weights: quantize a fine-tuned model",
            args.model.display()
        );
    }
    let settings = AnsweringSettings::for_model(&args.model, &loaded.config)?;
    let model = loaded.model.quantized();
    let layers = model.int8().map_or(0, |w| w.len());
    save_pretrained(&model, &loaded.config, Some(&args.model), &args.output)?;
    settings.save(&args.output)?;
    let (before, after) = (weights_bytes(&args.model), weights_bytes(&args.output));
    if args.json {
        let summary = serde_json::json!({
            "output": args.output,
            "int8_layers": layers,
            "weights_bytes": after,
            "source_weights_bytes": before,
        });
        println!("{summary}");
    } else {
        println!(
            "wrote {}: {layers} linear layers in int8; weights {:.1} MB (from {:.1} MB)",
            args.output.display(),
            after as f64 / 1e6,
            before as f64 / 1e6
        );
    }
    Ok(())
}

/// Refuses to write over a model directory (or anything else) unless `--overwrite`, and never
/// over the model being read.
fn check_output(args: &QuantizeArgs) -> anyhow::Result<()> {
    let out = &args.output;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(out, &args.model) {
        bail!("--output {} is the model being quantized", out.display());
    }
    let occupied = match std::fs::read_dir(out) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", out.display())),
    };
    if occupied && !args.overwrite {
        bail!(
            "--output {} is not empty; pass --overwrite to replace the model files in it",
            out.display()
        );
    }
    Ok(())
}

/// The size of the weight files in `dir` (safetensors, and burn's record beside them).
fn weights_bytes(dir: &Path) -> u64 {
    ["model.safetensors", "pytorch_model.bin"]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|m| m.len())
        .sum()
}
