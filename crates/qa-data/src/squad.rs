//! SQuAD-format input: the official v1.1/v2.0 JSON (`{"version", "data": [{"paragraphs": ...}]}`)
//! and the flat list used by Simple Transformers (`[{"context", "qas": [...]}]`).
//!
//! Loading is validation: a fatal problem (bad JSON, a missing or mistyped field) is a
//! [`DataError`] naming the file and the JSON path; recoverable problems are counted in a
//! [`ValidationReport`] with the first few places where they occur. Nothing is dropped silently.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Which scoring rules apply: v2.0 has unanswerable questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SquadVersion {
    V1,
    V2,
}

/// A gold answer. `start` is a Unicode code point offset into the context, as in the official
/// files; `None` when the text could not be found where the file says (and the policy did not
/// realign it), so the answer still counts for scoring but not as a training label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub text: String,
    pub start: Option<usize>,
}

/// Where a question sits in its file, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// `None` for the flat list format, which has no articles.
    pub article: Option<u32>,
    pub paragraph: u32,
    pub qa: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.article {
            Some(a) => write!(
                f,
                "data[{a}].paragraphs[{}].qas[{}]",
                self.paragraph, self.qa
            ),
            None => write!(f, "[{}].qas[{}]", self.paragraph, self.qa),
        }
    }
}

/// One question about one context.
#[derive(Debug, Clone)]
pub struct Example {
    pub id: String,
    pub question: String,
    /// Index into [`Dataset::contexts`]; questions about the same paragraph share it.
    pub context: usize,
    /// All gold answers, texts exactly as in the file (the official metrics score against them).
    pub answers: Vec<Answer>,
    /// True when the question has no answer in the context (v2.0 `is_impossible`, or no answers).
    pub is_impossible: bool,
    pub location: Location,
}

impl Example {
    /// The answer a training feature is labelled with: the first one that is aligned, as
    /// `run_qa.py` labels with `answers["answer_start"][0]`.
    pub fn training_answer(&self) -> Option<&Answer> {
        if self.is_impossible {
            return None;
        }
        self.answers.iter().find(|a| a.start.is_some())
    }
}

/// What a misaligned answer (its text is not at `answer_start`) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MisalignedPolicy {
    /// Move `answer_start` to the occurrence of the text nearest to it; if the text does not
    /// occur at all the answer is kept for scoring but not used as a training label.
    #[default]
    Realign,
    /// Keep the answer for scoring but do not use it as a training label.
    Skip,
    /// Fail with an error naming the answer.
    Error,
}

impl MisalignedPolicy {
    /// Every policy, in the order help texts list them.
    pub const ALL: [MisalignedPolicy; 3] = [Self::Realign, Self::Skip, Self::Error];

    /// The name configs and command lines use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Realign => "realign",
            Self::Skip => "skip",
            Self::Error => "error",
        }
    }
}

impl std::str::FromStr for MisalignedPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!("unknown misaligned-answer policy '{s}': use realign, skip or error")
            })
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub misaligned: MisalignedPolicy,
}

/// A recoverable problem found while loading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// The answer text was not at `answer_start` but occurs elsewhere; moved to the nearest one.
    MisalignedRealigned,
    /// The answer text was not at `answer_start`; not used as a training label.
    MisalignedSkipped,
    /// `answer_start` is negative or past the end of the context.
    AnswerStartOutOfRange,
    /// An answer with empty text; not used as a training label.
    EmptyAnswerText,
    /// The same question id appears more than once; predictions are keyed by id, so the later
    /// question's prediction replaces the earlier one's.
    DuplicateId,
    EmptyQuestion,
    EmptyContext,
    /// `is_impossible: true` with answers; treated as unanswerable for training, while the
    /// official v2.0 metric (which looks only at `answers`) scores it as answerable.
    ImpossibleWithAnswers,
    /// Not marked impossible but has no answers; treated as unanswerable.
    AnswerableWithoutAnswers,
}

impl IssueKind {
    pub fn describe(self) -> &'static str {
        match self {
            IssueKind::MisalignedRealigned => {
                "answers whose text was not at answer_start, realigned to the nearest occurrence"
            }
            IssueKind::MisalignedSkipped => {
                "answers whose text is not at answer_start, kept for scoring but not used as training labels"
            }
            IssueKind::AnswerStartOutOfRange => "answers whose answer_start is outside the context",
            IssueKind::EmptyAnswerText => "answers with empty text, not used as training labels",
            IssueKind::DuplicateId => {
                "questions whose id was already used (predictions are keyed by id)"
            }
            IssueKind::EmptyQuestion => "questions with empty text",
            IssueKind::EmptyContext => "paragraphs with an empty context",
            IssueKind::ImpossibleWithAnswers => {
                "questions marked is_impossible that still list answers (trained as unanswerable)"
            }
            IssueKind::AnswerableWithoutAnswers => {
                "questions not marked is_impossible with no answers (trained as unanswerable)"
            }
        }
    }
}

/// How many places to remember per kind of issue.
const SAMPLES_PER_ISSUE: usize = 5;

#[derive(Debug, Clone, Serialize)]
pub struct IssueSummary {
    pub kind: IssueKind,
    pub count: usize,
    pub description: &'static str,
    /// The first few places, as JSON paths with a short explanation.
    pub examples: Vec<String>,
}

/// What loading found: sizes, and every recoverable problem counted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ValidationReport {
    pub file: PathBuf,
    pub format: &'static str,
    pub articles: usize,
    pub paragraphs: usize,
    pub questions: usize,
    pub answerable: usize,
    pub impossible: usize,
    /// Answerable questions with no aligned answer: they cannot be training labels.
    pub unlabelled_answerable: usize,
    pub issues: Vec<IssueSummary>,
}

impl ValidationReport {
    fn record(&mut self, kind: IssueKind, place: impl FnOnce() -> String) {
        let summary = match self.issues.iter_mut().find(|s| s.kind == kind) {
            Some(s) => s,
            None => {
                self.issues.push(IssueSummary {
                    kind,
                    count: 0,
                    description: kind.describe(),
                    examples: Vec::new(),
                });
                self.issues.last_mut().expect("just pushed")
            }
        };
        summary.count += 1;
        if summary.examples.len() < SAMPLES_PER_ISSUE {
            summary.examples.push(place());
        }
    }

    pub fn count(&self, kind: IssueKind) -> usize {
        self.issues
            .iter()
            .find(|s| s.kind == kind)
            .map_or(0, |s| s.count)
    }
}

impl fmt::Display for ValidationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.file.display(), self.format)?;
        if self.articles > 0 {
            write!(f, "  {} articles,", self.articles)?;
        }
        writeln!(
            f,
            "  {} paragraphs, {} questions ({} answerable, {} impossible)",
            self.paragraphs, self.questions, self.answerable, self.impossible
        )?;
        if self.issues.is_empty() {
            writeln!(f, "  no problems found")?;
        }
        for issue in &self.issues {
            writeln!(f, "  {:>7}  {}", issue.count, issue.description)?;
            for place in &issue.examples {
                writeln!(f, "             e.g. {place}")?;
            }
        }
        if self.unlabelled_answerable > 0 {
            writeln!(
                f,
                "  {} answerable questions have no usable answer and will not be trained on",
                self.unlabelled_answerable
            )?;
        }
        Ok(())
    }
}

/// A loaded, validated SQuAD-format file.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub version: SquadVersion,
    /// Each paragraph's context once; examples point into this.
    pub contexts: Vec<String>,
    pub examples: Vec<Example>,
    pub report: ValidationReport,
}

impl Dataset {
    /// Reads and validates a file in either supported format.
    pub fn load(path: impl AsRef<Path>, options: LoadOptions) -> Result<Dataset> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        Self::parse(&text, path, options)
    }

    /// Parses text already in memory; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path, options: LoadOptions) -> Result<Dataset> {
        let first = text.trim_start().chars().next();
        let (paragraphs, version_field, articles, format) = match first {
            Some('[') => {
                let flat: Vec<RawParagraph> = parse_json(text, path)?;
                let paragraphs = flat.into_iter().map(|p| (None, p)).collect::<Vec<_>>();
                (paragraphs, None, 0, "flat list")
            }
            Some('{') => {
                let official: RawOfficial = parse_json(text, path)?;
                let articles = official.data.len();
                let mut paragraphs = Vec::new();
                for (a, article) in official.data.into_iter().enumerate() {
                    for p in article.paragraphs {
                        paragraphs.push((Some(a as u32), p));
                    }
                }
                (paragraphs, official.version, articles, "official SQuAD")
            }
            _ => {
                return Err(DataError::Invalid {
                    path: path.to_path_buf(),
                    json_path: "$".into(),
                    message: "expected a JSON object with \"data\" (official SQuAD) or a list of \
                              {\"context\", \"qas\"} paragraphs"
                        .into(),
                });
            }
        };
        let mut builder = Builder::new(path, options, format);
        builder.report.articles = articles;
        builder.build(paragraphs, version_field)
    }

    /// The context an example is asked about.
    pub fn context_of(&self, example: &Example) -> &str {
        &self.contexts[example.context]
    }
}

struct Builder<'a> {
    path: &'a Path,
    options: LoadOptions,
    report: ValidationReport,
    seen_ids: HashMap<String, Location>,
    any_impossible_field: bool,
}

impl<'a> Builder<'a> {
    fn new(path: &'a Path, options: LoadOptions, format: &'static str) -> Self {
        Builder {
            path,
            options,
            report: ValidationReport {
                file: path.to_path_buf(),
                format,
                ..Default::default()
            },
            seen_ids: HashMap::new(),
            any_impossible_field: false,
        }
    }

    fn build(
        mut self,
        paragraphs: Vec<(Option<u32>, RawParagraph)>,
        version_field: Option<String>,
    ) -> Result<Dataset> {
        let mut contexts = Vec::with_capacity(paragraphs.len());
        let mut examples = Vec::new();
        let mut last_article = None;
        let mut paragraph_in_article = 0u32;
        for (flat_index, (article, paragraph)) in paragraphs.into_iter().enumerate() {
            if article.is_some() && article == last_article {
                paragraph_in_article += 1;
            } else {
                paragraph_in_article = if article.is_some() {
                    0
                } else {
                    flat_index as u32
                };
                last_article = article;
            }
            self.report.paragraphs += 1;
            let context_index = contexts.len();
            let context = CharIndex::new(&paragraph.context);
            if paragraph.context.trim().is_empty() {
                self.report
                    .record(IssueKind::EmptyContext, || match article {
                        Some(a) => format!("data[{a}].paragraphs[{paragraph_in_article}]"),
                        None => format!("[{paragraph_in_article}]"),
                    });
            }
            for (q, qa) in paragraph.qas.into_iter().enumerate() {
                let location = Location {
                    article,
                    paragraph: paragraph_in_article,
                    qa: q as u32,
                };
                examples.push(self.example(qa, &context, context_index, location)?);
            }
            contexts.push(paragraph.context);
        }
        let version = match version_field.as_deref() {
            Some(v) if v.starts_with("v2") || v.starts_with('2') => SquadVersion::V2,
            _ if self.any_impossible_field => SquadVersion::V2,
            _ => SquadVersion::V1,
        };
        self.report.issues.sort_by_key(|s| s.kind);
        Ok(Dataset {
            version,
            contexts,
            examples,
            report: self.report,
        })
    }

    fn example(
        &mut self,
        qa: RawQa,
        context: &CharIndex<'_>,
        context_index: usize,
        location: Location,
    ) -> Result<Example> {
        let id = qa.id.into_string();
        self.report.questions += 1;
        if let Some(first) = self.seen_ids.get(&id) {
            let first = *first;
            self.report.record(IssueKind::DuplicateId, || {
                format!("{location}: id '{id}' first used at {first}")
            });
        } else {
            self.seen_ids.insert(id.clone(), location);
        }
        if qa.question.trim().is_empty() {
            self.report
                .record(IssueKind::EmptyQuestion, || format!("{location}.question"));
        }
        self.any_impossible_field |= qa.is_impossible.is_some();

        let mut answers = Vec::with_capacity(qa.answers.len());
        for (i, raw) in qa.answers.into_iter().enumerate() {
            let place = || format!("{location}.answers[{i}]");
            answers.push(self.align(raw, context, &place)?);
        }

        let is_impossible = match qa.is_impossible {
            Some(true) => {
                if !answers.is_empty() {
                    self.report
                        .record(IssueKind::ImpossibleWithAnswers, || location.to_string());
                }
                true
            }
            _ if answers.is_empty() => {
                self.report
                    .record(IssueKind::AnswerableWithoutAnswers, || location.to_string());
                true
            }
            _ => false,
        };
        let example = Example {
            id,
            question: qa.question,
            context: context_index,
            answers,
            is_impossible,
            location,
        };
        if is_impossible {
            self.report.impossible += 1;
        } else {
            self.report.answerable += 1;
            if example.training_answer().is_none() {
                self.report.unlabelled_answerable += 1;
            }
        }
        Ok(example)
    }

    /// Checks that the answer text sits at `answer_start` and applies the misaligned policy.
    fn align(
        &mut self,
        raw: RawAnswer,
        context: &CharIndex<'_>,
        place: &dyn Fn() -> String,
    ) -> Result<Answer> {
        if raw.text.is_empty() {
            self.report.record(IssueKind::EmptyAnswerText, place);
            return Ok(Answer {
                text: raw.text,
                start: None,
            });
        }
        let given = usize::try_from(raw.answer_start)
            .ok()
            .filter(|&s| s < context.char_len());
        if given.is_none() {
            self.report.record(IssueKind::AnswerStartOutOfRange, || {
                format!(
                    "{}.answer_start = {} (context has {} characters)",
                    place(),
                    raw.answer_start,
                    context.char_len()
                )
            });
        }
        if let Some(start) = given
            && context.text_at(start, &raw.text)
        {
            return Ok(Answer {
                text: raw.text,
                start: Some(start),
            });
        }
        let describe = || {
            format!(
                "{}: text {:?} is not at answer_start {}",
                place(),
                raw.text,
                raw.answer_start
            )
        };
        match self.options.misaligned {
            MisalignedPolicy::Error => Err(DataError::Invalid {
                path: self.path.to_path_buf(),
                json_path: format!("{}.answer_start", place()),
                message: format!(
                    "answer text {:?} is not at answer_start {} (use the realign or skip policy \
                     to accept such answers)",
                    raw.text, raw.answer_start
                ),
            }),
            MisalignedPolicy::Skip => {
                self.report.record(IssueKind::MisalignedSkipped, describe);
                Ok(Answer {
                    text: raw.text,
                    start: None,
                })
            }
            MisalignedPolicy::Realign => {
                let nearest = context.nearest_occurrence(&raw.text, raw.answer_start);
                let kind = if nearest.is_some() {
                    IssueKind::MisalignedRealigned
                } else {
                    IssueKind::MisalignedSkipped
                };
                self.report.record(kind, || match nearest {
                    Some(n) => format!("{}, moved to {n}", describe()),
                    None => format!("{}, and does not occur in the context", describe()),
                });
                Ok(Answer {
                    text: raw.text,
                    start: nearest,
                })
            }
        }
    }
}

/// Code point offsets over a context (the official files count code points, Rust strings bytes).
pub(crate) struct CharIndex<'a> {
    text: &'a str,
    /// Byte offset of each char, plus the total length; empty for ASCII text, where they agree.
    byte_of_char: Vec<usize>,
}

impl<'a> CharIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let byte_of_char = if text.is_ascii() {
            Vec::new()
        } else {
            text.char_indices()
                .map(|(b, _)| b)
                .chain(std::iter::once(text.len()))
                .collect()
        };
        CharIndex { text, byte_of_char }
    }

    pub(crate) fn char_len(&self) -> usize {
        if self.byte_of_char.is_empty() {
            self.text.len()
        } else {
            self.byte_of_char.len() - 1
        }
    }

    pub(crate) fn byte(&self, char_offset: usize) -> usize {
        if self.byte_of_char.is_empty() {
            char_offset
        } else {
            self.byte_of_char[char_offset]
        }
    }

    fn char_of_byte(&self, byte: usize) -> usize {
        if self.byte_of_char.is_empty() {
            byte
        } else {
            self.byte_of_char
                .binary_search(&byte)
                .expect("byte offsets from str::match_indices fall on char boundaries")
        }
    }

    fn text_at(&self, start: usize, needle: &str) -> bool {
        let b = self.byte(start);
        self.text[b..].starts_with(needle)
    }

    fn nearest_occurrence(&self, needle: &str, around: i64) -> Option<usize> {
        self.text
            .match_indices(needle)
            .map(|(b, _)| self.char_of_byte(b))
            .min_by_key(|&c| (c as i128 - around as i128).unsigned_abs())
    }
}

fn parse_json<'de, T: Deserialize<'de>>(text: &'de str, path: &Path) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let json_path = err.path().to_string();
        let inner = err.into_inner();
        DataError::Json {
            path: path.to_path_buf(),
            json_path,
            line: inner.line(),
            column: inner.column(),
            message: strip_position(&inner.to_string()),
        }
    })?;
    de.end().map_err(|inner| DataError::Json {
        path: path.to_path_buf(),
        json_path: "$".into(),
        line: inner.line(),
        column: inner.column(),
        message: strip_position(&inner.to_string()),
    })?;
    Ok(value)
}

/// serde_json appends " at line L column C"; we print the position ourselves.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

#[derive(Deserialize)]
struct RawOfficial {
    #[serde(default)]
    version: Option<String>,
    data: Vec<RawArticle>,
}

#[derive(Deserialize)]
struct RawArticle {
    paragraphs: Vec<RawParagraph>,
}

#[derive(Deserialize)]
struct RawParagraph {
    context: String,
    qas: Vec<RawQa>,
}

#[derive(Deserialize)]
struct RawQa {
    id: RawId,
    question: String,
    #[serde(default)]
    answers: Vec<RawAnswer>,
    #[serde(default)]
    is_impossible: Option<bool>,
}

#[derive(Deserialize)]
struct RawAnswer {
    text: String,
    answer_start: i64,
}

/// Ids are strings in the official files; flat-list files sometimes use numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawId {
    Text(String),
    Number(serde_json::Number),
}

impl RawId {
    fn into_string(self) -> String {
        match self {
            RawId::Text(s) => s,
            RawId::Number(n) => n.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, policy: MisalignedPolicy) -> Result<Dataset> {
        Dataset::parse(
            text,
            Path::new("test.json"),
            LoadOptions { misaligned: policy },
        )
    }

    #[test]
    fn official_v1_with_unicode_offsets() {
        let text = r#"{"version": "1.1", "data": [{"title": "t", "paragraphs": [
            {"context": "Café au lait in Zürich.", "qas": [
                {"id": "a", "question": "Where?", "answers": [{"text": "Zürich", "answer_start": 16}]}
            ]}]}]}"#;
        let ds = load(text, MisalignedPolicy::Error).unwrap();
        assert_eq!(ds.version, SquadVersion::V1);
        assert_eq!(ds.examples.len(), 1);
        assert_eq!(ds.examples[0].answers[0].start, Some(16));
        assert!(ds.report.issues.is_empty());
    }

    #[test]
    fn flat_list_with_numeric_ids_is_v2() {
        let text = r#"[{"context": "abc def", "qas": [
            {"id": 7, "question": "q", "is_impossible": false, "answers": [{"text": "def", "answer_start": 4}]},
            {"id": "8", "question": "q2", "is_impossible": true, "answers": []}]}]"#;
        let ds = load(text, MisalignedPolicy::Error).unwrap();
        assert_eq!(ds.version, SquadVersion::V2);
        assert_eq!(ds.examples[0].id, "7");
        assert!(ds.examples[1].is_impossible);
        assert_eq!(ds.report.answerable, 1);
        assert_eq!(ds.report.impossible, 1);
    }

    #[test]
    fn type_error_names_the_json_path() {
        let text = r#"{"data": [{"paragraphs": [{"context": "x", "qas": [
            {"id": "a", "question": "q", "answers": [{"text": "x", "answer_start": "zero"}]}]}]}]}"#;
        let err = load(text, MisalignedPolicy::Realign)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data[0].paragraphs[0].qas[0].answers[0].answer_start"),
            "{err}"
        );
        assert!(err.starts_with("test.json: "), "{err}");
    }

    #[test]
    fn missing_field_names_the_json_path() {
        let text = r#"[{"context": "x", "qas": [{"id": "a", "answers": []}]}]"#;
        let err = load(text, MisalignedPolicy::Realign)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[0].qas[0]"), "{err}");
        assert!(err.contains("missing field `question`"), "{err}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = load(
            "[{\"context\": \"x\",\n \"qas\": [}]",
            MisalignedPolicy::Realign,
        )
        .unwrap_err();
        match err {
            DataError::Json { line, .. } => assert_eq!(line, 2),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn neither_format_is_a_clear_error() {
        let err = load("42", MisalignedPolicy::Realign)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a JSON object"), "{err}");
        let err = load("", MisalignedPolicy::Realign).unwrap_err().to_string();
        assert!(err.contains("expected a JSON object"), "{err}");
    }

    const MISALIGNED: &str = r#"[{"context": "one two three two", "qas": [
        {"id": "a", "question": "q", "answers": [{"text": "two", "answer_start": 12}]},
        {"id": "b", "question": "q", "answers": [{"text": "four", "answer_start": 0}]}]}]"#;

    #[test]
    fn realign_moves_to_nearest_occurrence_and_counts() {
        let ds = load(MISALIGNED, MisalignedPolicy::Realign).unwrap();
        assert_eq!(ds.examples[0].answers[0].start, Some(14));
        assert_eq!(ds.examples[1].answers[0].start, None);
        assert_eq!(ds.report.count(IssueKind::MisalignedRealigned), 1);
        assert_eq!(ds.report.count(IssueKind::MisalignedSkipped), 1);
        assert_eq!(ds.report.unlabelled_answerable, 1);
        // The answer text stays for scoring.
        assert_eq!(ds.examples[1].answers[0].text, "four");
    }

    #[test]
    fn skip_policy_keeps_answer_unlabelled() {
        let ds = load(MISALIGNED, MisalignedPolicy::Skip).unwrap();
        assert_eq!(ds.examples[0].answers[0].start, None);
        assert_eq!(ds.report.count(IssueKind::MisalignedSkipped), 2);
    }

    #[test]
    fn error_policy_names_the_answer() {
        let err = load(MISALIGNED, MisalignedPolicy::Error)
            .unwrap_err()
            .to_string();
        assert!(err.contains("[0].qas[0].answers[0].answer_start"), "{err}");
    }

    #[test]
    fn mutated_input_never_panics() {
        let valid = r#"{"version": "v2.0", "data": [{"paragraphs": [{"context": "Zürich is a city.", "qas": [
            {"id": "a", "question": "Where?", "is_impossible": false, "answers": [{"text": "Zürich", "answer_start": 0}]},
            {"id": "b", "question": "What?", "is_impossible": true, "answers": []}]}]}]}"#;
        let bytes = valid.as_bytes();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"{}[]\":,0123456789-e.abc \\u00e9";
        for _ in 0..3000 {
            let mut m = bytes.to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % m.len() as u64) as usize;
                match next() % 3 {
                    0 => m[at] = alphabet[(next() % alphabet.len() as u64) as usize],
                    1 => {
                        m.remove(at);
                    }
                    _ => m.insert(at, alphabet[(next() % alphabet.len() as u64) as usize]),
                }
            }
            if let Ok(text) = std::str::from_utf8(&m) {
                for policy in [
                    MisalignedPolicy::Realign,
                    MisalignedPolicy::Skip,
                    MisalignedPolicy::Error,
                ] {
                    let _ = load(text, policy);
                }
            }
        }
    }

    #[test]
    fn recoverable_problems_are_counted() {
        let text = r#"[{"context": "", "qas": [
            {"id": "a", "question": " ", "answers": []},
            {"id": "a", "question": "q", "is_impossible": true, "answers": [{"text": "x", "answer_start": -3}]}
        ]}]"#;
        let ds = load(text, MisalignedPolicy::Realign).unwrap();
        let r = &ds.report;
        assert_eq!(r.count(IssueKind::EmptyContext), 1);
        assert_eq!(r.count(IssueKind::EmptyQuestion), 1);
        assert_eq!(r.count(IssueKind::DuplicateId), 1);
        assert_eq!(r.count(IssueKind::AnswerableWithoutAnswers), 1);
        assert_eq!(r.count(IssueKind::ImpossibleWithAnswers), 1);
        assert_eq!(r.count(IssueKind::AnswerStartOutOfRange), 1);
        assert_eq!(r.questions, 2);
        let shown = r.to_string();
        assert!(shown.contains("id 'a' first used at [0].qas[0]"), "{shown}");
    }
}
