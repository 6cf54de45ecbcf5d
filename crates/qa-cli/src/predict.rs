//! `qa predict`: answers to questions about one context, all questions in one batched pass.

use std::path::Path;

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use qa_model::{Answer, OnBackend, QuestionAnswerer};

use crate::cli::{ModelArgs, PredictArgs};

/// Loads the model of `args` on backend `B`, with the decoding settings the command line gives.
pub fn load_answerer<B: Backend>(
    args: &ModelArgs,
    device: B::Device,
) -> anyhow::Result<QuestionAnswerer<B>> {
    let load = || {
        let answerer = QuestionAnswerer::<B>::load(&args.model, device)?;
        let settings = args.decode.over(*answerer.settings());
        answerer
            .with_settings(settings)?
            .with_precision(args.precision)
    };
    load().with_context(|| format!("loading the model in {}", args.model.display()))
}

fn read_questions(args: &PredictArgs) -> anyhow::Result<Vec<String>> {
    let Some(path) = &args.questions_file else {
        return Ok(args.question.clone());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut questions = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: line {}: not JSON", path.display(), i + 1))?;
        let question = match &value {
            serde_json::Value::String(s) => s.clone(),
            other => other
                .get("question")
                .and_then(|q| q.as_str())
                .map(str::to_string)
                .with_context(|| {
                    format!(
                        "{}: line {}: expected a string or {{\"question\": ...}}",
                        path.display(),
                        i + 1
                    )
                })?,
        };
        questions.push(question);
    }
    if questions.is_empty() {
        bail!("{}: no questions", path.display());
    }
    Ok(questions)
}

pub fn read_context(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if text.trim().is_empty() {
        bail!("{}: the context is empty", path.display());
    }
    Ok(text)
}

pub fn run(args: &PredictArgs) -> anyhow::Result<()> {
    let context = match (&args.context, &args.context_file) {
        (Some(c), _) => c.clone(),
        (None, Some(path)) => read_context(path)?,
        (None, None) => bail!("give --context TEXT or --context-file FILE"),
    };
    let questions = read_questions(args)?;
    struct Job<'a> {
        args: &'a ModelArgs,
        context: &'a str,
        questions: &'a [String],
    }
    impl OnBackend for Job<'_> {
        type Output = Vec<Answer>;
        fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Vec<Answer>> {
            let answerer = load_answerer::<B>(self.args, device)?;
            Ok(answerer.answer(self.context, self.questions, self.args.n_best)?)
        }
    }
    let job = Job {
        args: &args.model,
        context: &context,
        questions: &questions,
    };
    let answers = qa_model::run_on(args.model.device, job, &|l| eprintln!("{l}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answers)?);
        return Ok(());
    }
    for a in &answers {
        println!("Q: {}", a.question);
        println!(
            "A: {}  (probability {:.1} %, score {:.2}, characters {}..{})",
            a.answer,
            a.probability * 100.0,
            a.score,
            a.start,
            a.end
        );
        for c in a.candidates.iter().skip(1) {
            println!("   also: {}  ({:.1} %)", c.text, c.probability * 100.0);
        }
    }
    Ok(())
}
