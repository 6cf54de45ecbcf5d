//! `qa data check`: the validation report, and with a tokenizer what windowing makes of the data.

use anyhow::Context;
use qa_data::{Casing, Dataset, FeatureSet, LoadOptions, QaTokenizer, WindowConfig};
use serde_json::json;

use crate::cli::DataCheckArgs;

pub fn check(args: &DataCheckArgs) -> anyhow::Result<()> {
    let dataset = Dataset::load(
        &args.data,
        LoadOptions {
            misaligned: args.misaligned,
        },
    )?;
    let windowing = match &args.tokenizer {
        Some(path) => {
            let tokenizer = QaTokenizer::from_path(path, Casing::Auto)?;
            let config = args.window.over(WindowConfig::default());
            let features = FeatureSet::build(&dataset, &tokenizer, config)
                .with_context(|| format!("windowing {}", args.data.display()))?;
            Some((config, features.stats))
        }
        None => None,
    };
    if args.json {
        let mut value = json!({
            "version": format!("{:?}", dataset.version),
            "report": dataset.report,
        });
        if let Some((config, stats)) = &windowing {
            value["windowing"] = json!({"config": config, "stats": stats});
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    print!("{}", dataset.report);
    println!(
        "  scored as SQuAD {}",
        match dataset.version {
            qa_data::SquadVersion::V1 => "v1.1",
            qa_data::SquadVersion::V2 => "v2.0",
        }
    );
    if let Some((config, stats)) = windowing {
        println!(
            "windowing at max_seq_length {}, doc_stride {}, max_query_length {}:",
            config.max_seq_length, config.doc_stride, config.max_query_length
        );
        println!(
            "  {} features from {} examples ({} split into several windows)",
            stats.features, stats.examples, stats.split_examples
        );
        println!(
            "  {} questions cut to max_query_length",
            stats.truncated_questions
        );
        let answerable = dataset.report.answerable.max(1);
        println!(
            "  {} answers fall outside every window ({:.2} % of answerable questions): training labels them 'no answer'",
            stats.answers_outside_every_window,
            100.0 * stats.answers_outside_every_window as f64 / answerable as f64
        );
        if stats.unlabelled_examples > 0 {
            println!(
                "  {} answerable questions have no usable answer and are not trained on",
                stats.unlabelled_examples
            );
        }
    }
    Ok(())
}
