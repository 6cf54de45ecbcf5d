//! `qa evaluate`: the official SQuAD metrics for a predictions file, or for a model's predictions.

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use qa_data::metrics::{self, SquadScores};
use qa_data::{Dataset, LoadOptions};
use qa_model::{AnsweringSettings, OnBackend, QuestionAnswerer};

use crate::cli::EvaluateArgs;

pub fn run(args: &EvaluateArgs) -> anyhow::Result<()> {
    let dataset = Dataset::load(&args.data, LoadOptions::default())?;
    let scores = match (&args.predictions, &args.model) {
        (Some(pred), None) => {
            let predictions = metrics::load_predictions(pred)?;
            let na_probs = args
                .na_probs
                .as_deref()
                .map(metrics::load_na_probs)
                .transpose()?;
            metrics::evaluate(
                &dataset,
                &predictions,
                na_probs.as_deref(),
                args.na_prob_thresh,
            )?
        }
        (None, Some(_)) => qa_model::run_on(
            args.device,
            ModelEvaluation {
                args,
                dataset: &dataset,
            },
            &|l| eprintln!("{l}"),
        )?,
        _ => bail!(
            "give either --predictions FILE to score, or --model DIR --output-dir DIR to predict and score"
        ),
    };
    print_scores(&scores, args.json)
}

/// Prints scores: the official scripts' JSON with --json, else one line per number.
pub fn print_scores(scores: &SquadScores, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(scores)?);
        return Ok(());
    }
    let value = serde_json::to_value(scores)?;
    for (key, v) in value.as_object().into_iter().flatten() {
        match v.as_f64() {
            Some(f) if v.is_f64() => println!("{key:>18}: {f:.4}"),
            _ => println!("{key:>18}: {v}"),
        }
    }
    if let SquadScores::V1(s) = scores
        && s.missing > 0
    {
        println!(
            "({} of {} questions had no prediction and scored 0)",
            s.missing, s.total
        );
    }
    Ok(())
}

struct ModelEvaluation<'a> {
    args: &'a EvaluateArgs,
    dataset: &'a Dataset,
}

impl OnBackend for ModelEvaluation<'_> {
    type Output = SquadScores;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<SquadScores> {
        let args = self.args;
        let model_dir = args.model.as_ref().expect("checked by the caller");
        let out = args
            .output_dir
            .as_ref()
            .context("--model needs --output-dir for the prediction files")?;
        let answerer = QuestionAnswerer::<B>::load_seeded(model_dir, device, args.seed)
            .with_context(|| format!("loading the model in {}", model_dir.display()))?;
        if answerer.report().head_initialized {
            eprintln!(
                "{} (seed {}): these are the scores of an untrained span head",
                answerer.report(),
                args.seed
            );
        }
        let settings = settings(args, *answerer.settings());
        let mut answerer = answerer
            .with_settings(settings)?
            .with_precision(args.precision)?;
        answerer.batch_size = args.batch_size;
        let evaluation = answerer.evaluate(self.dataset)?;
        let written = evaluation.predictions.write(out, args.overwrite)?;
        for path in written {
            eprintln!("wrote {}", path.display());
        }
        Ok(evaluation.scores)
    }
}

/// The model's answering settings with what the command line overrides.
fn settings(args: &EvaluateArgs, model: AnsweringSettings) -> AnsweringSettings {
    let mut settings = args.decode.over(model);
    settings.window = args.window.over(settings.window);
    settings.decode.n_best_size = args.n_best.unwrap_or(settings.decode.n_best_size);
    settings
}
