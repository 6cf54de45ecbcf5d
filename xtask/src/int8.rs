//! `cargo xtask int8-accuracy`: how much a model loses to `qa quantize`. Quantizes the model,
//! evaluates both on the same data with `qa evaluate` (the model's own answering settings, on the
//! CPU) and compares: EM/F1 of each, and the share of questions whose int8 answer is the f32 one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::{qa, run_json, say};

pub fn run(model: &Path, data: &Path, out: &Path) -> anyhow::Result<()> {
    let int8 = out.join("model-int8");
    say(format!(
        "quantizing {} into {}",
        model.display(),
        int8.display()
    ));
    let quantized = run_json(
        qa().args(["quantize", "--json", "--overwrite", "--model"])
            .arg(model)
            .arg("--output")
            .arg(&int8),
    )?;
    let mut scores = Vec::new();
    for (label, dir) in [("f32", model.to_path_buf()), ("int8", int8.clone())] {
        say(format!(
            "evaluating the {label} model on {}",
            data.display()
        ));
        let predictions = out.join(format!("eval-{label}"));
        let s = run_json(
            qa().args([
                "evaluate",
                "--json",
                "--overwrite",
                "--device",
                "cpu",
                "--data",
            ])
            .arg(data)
            .arg("--model")
            .arg(&dir)
            .arg("--output-dir")
            .arg(&predictions),
        )?;
        scores.push((label, s, read_predictions(&predictions)?));
    }
    let [(_, f32_scores, f32_answers), (_, int8_scores, int8_answers)] = &scores[..] else {
        unreachable!("two evaluations")
    };
    let same = f32_answers
        .iter()
        .filter(|(id, a)| int8_answers.get(*id) == Some(a))
        .count();
    let total = f32_answers.len();
    let line = |label: &str, s: &Value| {
        format!(
            "{label}: EM {:.2} / F1 {:.2}",
            s["exact_match"].as_f64().unwrap_or(f64::NAN),
            s["f1"].as_f64().unwrap_or(f64::NAN)
        )
    };
    println!("{}", line("f32", f32_scores));
    println!("{}", line("int8", int8_scores));
    println!(
        "int8 answers equal f32's on {same} of {total} questions ({:.1}%); weights {:.1} MB -> {:.1} MB",
        100.0 * same as f64 / total.max(1) as f64,
        quantized["source_weights_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        quantized["weights_bytes"].as_f64().unwrap_or(0.0) / 1e6,
    );
    Ok(())
}

/// `predictions.json` of an evaluation: question id -> answer.
fn read_predictions(dir: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let path: PathBuf = dir.join("predictions.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not id -> answer", path.display()))
}
