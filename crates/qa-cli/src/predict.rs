//! `qa predict`: answers to questions about one context, all questions in one batched pass.

use std::path::Path;

use anyhow::{Context, bail};
use burn::tensor::backend::Backend;
use qa_data::ExamplePrediction;
use qa_train::{OnBackend, Predictor};
use serde::Serialize;

use crate::cli::{ModelArgs, PredictArgs};

/// Loads the model of `args` on backend `B` with its decoding settings.
pub fn load_predictor<B: Backend>(
    args: &ModelArgs,
    device: B::Device,
) -> anyhow::Result<Predictor<B>> {
    if args.n_best == 0 {
        bail!("--n-best must be at least 1");
    }
    let mut predictor = Predictor::<B>::load(&args.model, device)
        .with_context(|| format!("loading the model in {}", args.model.display()))?;
    // Search at least run_qa.py's 20 starts and ends; `--n-best` is how many are shown.
    predictor.decode.n_best_size = args.n_best.max(SEARCH_WIDTH);
    predictor.decode.max_answer_length = args.max_answer_length;
    Ok(predictor)
}

/// Start and end positions searched per window, whatever number of candidates is shown.
pub const SEARCH_WIDTH: usize = 20;

/// One answer as printed and served.
#[derive(Debug, Serialize)]
pub struct AnswerView {
    pub question: String,
    pub answer: String,
    /// Softmax probability of the answer among the n-best candidates.
    pub probability: f32,
    /// start_logit + end_logit.
    pub score: f32,
    /// Character span `[start, end)` in the context.
    pub start: usize,
    pub end: usize,
    /// The sentence of the context the answer sits in, with its span.
    pub sentence: String,
    pub sentence_start: usize,
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Serialize)]
pub struct Candidate {
    pub text: String,
    pub probability: f32,
    pub score: f32,
    pub start: usize,
    pub end: usize,
}

/// The answer to `question` with at most `shown` candidates. A best "candidate" with an empty span
/// is run_qa.py's placeholder for "no valid span": shown as no answer.
pub fn view(context: &str, question: &str, p: &ExamplePrediction, shown: usize) -> AnswerView {
    let best = &p.nbest[0];
    let answer = if best.end > best.start {
        p.answer.clone()
    } else {
        String::new()
    };
    let (s_start, s_end) = sentence_around(context, best.start, best.end);
    AnswerView {
        question: question.to_string(),
        answer,
        probability: best.probability,
        score: best.start_logit + best.end_logit,
        start: best.start,
        end: best.end,
        sentence: context
            .chars()
            .skip(s_start)
            .take(s_end - s_start)
            .collect(),
        sentence_start: s_start,
        candidates: p
            .nbest
            .iter()
            .filter(|c| c.end > c.start)
            .take(shown)
            .map(|c| Candidate {
                text: c.text.clone(),
                probability: c.probability,
                score: c.start_logit + c.end_logit,
                start: c.start,
                end: c.end,
            })
            .collect(),
    }
}

/// The sentence (by `.`, `!`, `?` followed by whitespace, or line breaks) containing the character
/// span `[start, end)`, as character offsets.
pub fn sentence_around(context: &str, start: usize, end: usize) -> (usize, usize) {
    let chars: Vec<char> = context.chars().collect();
    let (start, end) = (start.min(chars.len()), end.min(chars.len()));
    let boundary = |i: usize| {
        // A sentence ends at i when chars[i] ends one and whitespace follows.
        chars[i] == '\n'
            || (matches!(chars[i], '.' | '!' | '?')
                && chars.get(i + 1).is_none_or(|c| c.is_whitespace()))
    };
    let mut s = start;
    while s > 0 && !boundary(s - 1) {
        s -= 1;
    }
    while s < start && chars[s].is_whitespace() {
        s += 1;
    }
    let from = end.max(s + 1).min(chars.len()).saturating_sub(1);
    let mut e = (from..chars.len())
        .find(|&i| boundary(i))
        .map_or(chars.len(), |i| i + 1);
    while e > s && chars[e - 1].is_whitespace() {
        e -= 1;
    }
    (s, e)
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
    if context.trim().is_empty() {
        bail!("the context is empty");
    }
    let questions = read_questions(args)?;
    if let Some(i) = questions.iter().position(|q| q.trim().is_empty()) {
        bail!("question {} is empty", i + 1);
    }
    struct Job<'a> {
        args: &'a PredictArgs,
        context: String,
        questions: Vec<String>,
    }
    impl OnBackend for Job<'_> {
        type Output = Vec<AnswerView>;
        fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Vec<AnswerView>> {
            let predictor = load_predictor::<B>(&self.args.model, device)?;
            let predictions = predictor.answer(&self.context, &self.questions)?;
            Ok(predictions
                .iter()
                .zip(&self.questions)
                .map(|(p, q)| view(&self.context, q, p, self.args.model.n_best))
                .collect())
        }
    }
    let answers = qa_train::run_on(
        args.model.device,
        Job {
            args,
            context: context.clone(),
            questions,
        },
        &|_| {},
    )?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_is_found_around_the_answer() {
        let text = "Paris is big. The tower was built in 1889. It is tall!";
        let start = text.find("1889").unwrap();
        let (s, e) = sentence_around(text, start, start + 4);
        assert_eq!(&text[s..e], "The tower was built in 1889.");
        let (s, e) = sentence_around(text, 0, 5);
        assert_eq!(&text[s..e], "Paris is big.");
        let (s, e) = sentence_around(text, text.len() - 3, text.len() - 1);
        assert_eq!(&text[s..e], "It is tall!");
    }
}
