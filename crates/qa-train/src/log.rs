//! The experiment log: `training_progress_scores.csv` (Simple Transformers' file), the same rows
//! as JSON lines, the training-loss curve, and SVG plots of loss and F1. Everything is rewritten
//! atomically from the in-memory history, which checkpoints carry, so a resumed run continues the
//! same files instead of overwriting earlier rows.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

/// One evaluation during training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub global_step: usize,
    pub epoch: usize,
    pub exact: f64,
    pub f1: f64,
    /// Mean training loss since the previous evaluation.
    pub train_loss: f64,
    pub eval_loss: f64,
    pub lr: f64,
}

/// Training loss averaged over `logging_steps` optimizer steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossRecord {
    pub global_step: usize,
    pub loss: f64,
    pub lr: f64,
}

pub const SCORES_CSV: &str = "training_progress_scores.csv";
pub const SCORES_JSONL: &str = "training_progress_scores.jsonl";
pub const LOSS_JSONL: &str = "training_loss.jsonl";
pub const LOSS_SVG: &str = "loss.svg";
pub const F1_SVG: &str = "f1.svg";

/// Rewrites the CSV and JSON lines files.
pub fn write_tables(
    dir: &Path,
    evaluations: &[EvalRecord],
    losses: &[LossRecord],
) -> anyhow::Result<()> {
    let mut csv = String::from("global_step,exact,f1,train_loss,eval_loss,lr\n");
    let mut jsonl = String::new();
    for e in evaluations {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            e.global_step, e.exact, e.f1, e.train_loss, e.eval_loss, e.lr
        ));
        jsonl.push_str(&serde_json::to_string(e)?);
        jsonl.push('\n');
    }
    let mut loss_lines = String::new();
    for l in losses {
        loss_lines.push_str(&serde_json::to_string(l)?);
        loss_lines.push('\n');
    }
    qa_data::atomic::write(&dir.join(SCORES_CSV), csv.as_bytes())?;
    qa_data::atomic::write(&dir.join(SCORES_JSONL), jsonl.as_bytes())?;
    qa_data::atomic::write(&dir.join(LOSS_JSONL), loss_lines.as_bytes())?;
    Ok(())
}

/// Draws `loss.svg` (training and evaluation loss) and `f1.svg` (EM and F1) over steps.
pub fn write_plots(
    dir: &Path,
    evaluations: &[EvalRecord],
    losses: &[LossRecord],
) -> anyhow::Result<()> {
    let train: Vec<(f64, f64)> = losses
        .iter()
        .map(|l| (l.global_step as f64, l.loss))
        .collect();
    let eval: Vec<(f64, f64)> = evaluations
        .iter()
        .map(|e| (e.global_step as f64, e.eval_loss))
        .collect();
    plot(
        &dir.join(LOSS_SVG),
        "Loss",
        &[("train loss", &train), ("eval loss", &eval)],
    )?;
    let f1: Vec<(f64, f64)> = evaluations
        .iter()
        .map(|e| (e.global_step as f64, e.f1))
        .collect();
    let em: Vec<(f64, f64)> = evaluations
        .iter()
        .map(|e| (e.global_step as f64, e.exact))
        .collect();
    plot(
        &dir.join(F1_SVG),
        "Dev scores",
        &[("F1", &f1), ("exact match", &em)],
    )
}

fn plot(path: &Path, title: &str, series: &[(&str, &[(f64, f64)])]) -> anyhow::Result<()> {
    let points = series.iter().flat_map(|(_, s)| s.iter());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in points {
        x_max = x_max.max(x);
        if y.is_finite() {
            y_min = y_min.min(y);
            y_max = y_max.max(y);
        }
    }
    if !y_min.is_finite() {
        (y_min, y_max) = (0.0, 1.0);
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, (y_min - pad)..(y_max + pad))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        chart
            .configure_mesh()
            .x_desc("optimizer step")
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let colors = [BLUE, RED, GREEN, BLACK];
        for (i, (name, data)) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(data.iter().copied(), color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    qa_data::atomic::write(path, svg.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_plots_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let evals = vec![
            EvalRecord {
                global_step: 10,
                epoch: 0,
                exact: 10.0,
                f1: 20.0,
                train_loss: 3.0,
                eval_loss: 2.5,
                lr: 1e-5,
            },
            EvalRecord {
                global_step: 20,
                epoch: 1,
                exact: 30.0,
                f1: 40.0,
                train_loss: 2.0,
                eval_loss: 2.0,
                lr: 5e-6,
            },
        ];
        let losses = vec![LossRecord {
            global_step: 5,
            loss: 4.0,
            lr: 1e-5,
        }];
        write_tables(dir.path(), &evals, &losses).unwrap();
        write_plots(dir.path(), &evals, &losses).unwrap();
        let csv = std::fs::read_to_string(dir.path().join(SCORES_CSV)).unwrap();
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.contains("\n20,30,40,2,2,0.000005\n"), "{csv}");
        let svg = std::fs::read_to_string(dir.path().join(F1_SVG)).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.contains("polyline"),
            "{}",
            &svg[..200.min(svg.len())]
        );
    }
}
