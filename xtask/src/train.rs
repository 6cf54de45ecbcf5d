//! `cargo xtask train`: the main job end to end.
//!
//! 1. fetch the model when the config names one (`minilm`, `bert-base-cased`),
//! 2. train with `qa train` (release build; CUDA when a GPU is present),
//! 3. evaluate the best model and, for comparison, the untrained one (pretrained encoder with a
//!    fresh span head) on the evaluation data,
//! 4. write `report.md` in the output directory with both rows and the training plots.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{cache_dir, download_named, qa, run_json, say};

pub fn run(config_path: &Path, overrides: &[String], mirror: Option<&str>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let mut table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is not valid TOML", config_path.display()))?;
    for o in overrides {
        if let Some((k, v)) = o.split_once('=') {
            table.insert(k.trim().into(), toml::Value::String(v.to_string()));
        }
    }
    let get = |key: &str| table.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let model = get("model").context("the config has no model")?;
    let output_dir = PathBuf::from(get("output_dir").unwrap_or_else(|| "outputs".into()));
    let eval_data = get("eval_data").map(PathBuf::from);

    let model_dir = if Path::new(&model).join("config.json").is_file() {
        PathBuf::from(&model)
    } else if crate::download::MODELS.contains(&model.as_str())
        || crate::download::hub_repo(&model).is_some()
    {
        download_named(&[], std::slice::from_ref(&model), mirror)?;
        cache_dir().join("models").join(&model)
    } else {
        bail!(
            "model '{model}' is not a directory with config.json, a known name ({}) nor a Hugging \
             Face repository (owner/name)",
            crate::download::MODELS.join(", ")
        );
    };
    for key in ["train_data", "eval_data"] {
        if let Some(p) = get(key)
            && !Path::new(&p).is_file()
        {
            bail!(
                "{key} {p} does not exist; `cargo xtask download --dataset squad-v1.1` fetches SQuAD into {}",
                cache_dir().display()
            );
        }
    }

    say(format!(
        "building qa (release) and training {}",
        config_path.display()
    ));
    let mut train = qa();
    train
        .arg("train")
        .arg("--config")
        .arg(config_path)
        .arg("--json");
    for o in overrides {
        train.arg("--set").arg(o);
    }
    let summary = run_json(&mut train)?;

    let mut rows = Vec::new();
    if let Some(eval) = &eval_data {
        let window: Vec<String> = ["max_seq_length", "doc_stride", "max_query_length"]
            .iter()
            .filter_map(|k| {
                table
                    .get(*k)
                    .map(|v| (k, v.to_string().trim_matches('"').to_string()))
            })
            .flat_map(|(k, v)| [format!("--{}", k.replace('_', "-")), v])
            .collect();
        // The baseline's span head is drawn with the training's seed: the very model training
        // started from.
        let seed: Vec<String> = table
            .get("manual_seed")
            .map(|v| vec!["--seed".into(), v.to_string().trim_matches('"').to_string()])
            .unwrap_or_default();
        let best = PathBuf::from(
            summary["best_model_dir"]
                .as_str()
                .context("summary names the best model")?,
        );
        for (label, dir, out) in [
            (
                "untrained (pretrained encoder, new span head)",
                model_dir.clone(),
                output_dir.join("eval-baseline"),
            ),
            (
                "fine-tuned (best model)",
                best,
                output_dir.join("eval-best"),
            ),
        ] {
            say(format!("evaluating {label}"));
            let mut cmd = qa();
            cmd.arg("evaluate")
                .arg("--json")
                .arg("--overwrite")
                .arg("--data")
                .arg(eval)
                .arg("--model")
                .arg(&dir)
                .arg("--output-dir")
                .arg(&out)
                .args(&window)
                .args(&seed);
            let scores = run_json(&mut cmd)?;
            rows.push((label, scores));
        }
    }
    let report = render(config_path, &summary, &rows);
    let path = output_dir.join("report.md");
    crate::download::write_atomic(&path, report.as_bytes())?;
    println!("{report}");
    say(format!("report written to {}", path.display()));
    Ok(())
}

fn score(v: &Value, keys: &[&str]) -> String {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_f64))
        .map_or("-".into(), |f| format!("{f:.2}"))
}

fn render(config: &Path, summary: &Value, rows: &[(&str, Value)]) -> String {
    let mut s = format!("# Training report\n\nConfig: `{}`\n\n", config.display());
    s.push_str(&format!(
        "- optimizer steps: {} of {}{}\n- training features: {}, {:.2} features/s\n- wall time: {:.0} s\n\n",
        summary["global_step"],
        summary["total_steps"],
        if summary["stopped_early"].as_bool() == Some(true) { " (early stopping)" } else { "" },
        summary["train_features"],
        summary["train_features_per_second"].as_f64().unwrap_or(0.0),
        summary["seconds"].as_f64().unwrap_or(0.0),
    ));
    if !rows.is_empty() {
        s.push_str("| model | exact match | F1 |\n|---|---|---|\n");
        for (label, v) in rows {
            s.push_str(&format!(
                "| {label} | {} | {} |\n",
                score(v, &["exact_match", "exact"]),
                score(v, &["f1"])
            ));
        }
        s.push('\n');
    }
    s.push_str("![loss](loss.svg)\n\n![dev scores](f1.svg)\n\nScores per evaluation: `training_progress_scores.csv`.\n");
    s
}
