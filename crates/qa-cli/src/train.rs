//! `qa train`: fine-tune from a TOML config.

use qa_train::{RunOptions, TrainConfig};

use crate::cli::TrainArgs;

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    let mut overrides = args.overrides.clone();
    if let Some(precision) = args.precision {
        overrides.push(format!("precision=\"{precision}\""));
    }
    let config = TrainConfig::load(&args.config, &overrides)?;
    let options = RunOptions {
        resume: args.resume,
        halt_after_steps: None,
    };
    let summary = qa_train::train(&config, &options, &|line| eprintln!("{line}"))?;
    let last = summary.evaluations.last();
    if args.json {
        let value = serde_json::json!({
            "global_step": summary.global_step,
            "total_steps": summary.total_steps,
            "stopped_early": summary.stopped_early,
            "output_dir": summary.output_dir,
            "best_model_dir": summary.best_model_dir,
            "train_features": summary.train_features,
            "train_features_per_second": summary.features_per_second,
            "seconds": summary.seconds,
            "best": summary.best.map(|(step, value)| serde_json::json!({"global_step": step, "value": value})),
            "last_evaluation": last,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "trained {} of {} steps in {:.0} s ({:.2} training features/s){}",
        summary.global_step,
        summary.total_steps,
        summary.seconds,
        summary.features_per_second,
        if summary.stopped_early {
            ", stopped early"
        } else {
            ""
        }
    );
    if let Some(e) = last {
        println!(
            "last evaluation (step {}): exact {:.2}, f1 {:.2}, eval_loss {:.4}",
            e.global_step, e.exact, e.f1, e.eval_loss
        );
    }
    println!(
        "model: {}\nbest model: {}",
        summary.output_dir.display(),
        summary.best_model_dir.display()
    );
    Ok(())
}
