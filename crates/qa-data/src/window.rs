//! Cutting examples into model inputs, exactly as Hugging Face `run_qa.py` does with a fast
//! tokenizer: `[CLS] question [SEP] context-window [SEP]`, the context split into windows of
//! `max_seq_length - len(question) - 3` tokens that overlap by `doc_stride` tokens.
//!
//! Each context is tokenized once and shared by all of its questions; a [`Feature`] stores only
//! where its window lies, and [`FeatureSet::input_ids`] assembles the sequence when a batch is
//! built. One deliberate difference from `run_qa.py`: when an answer starts in the last context
//! token of a window, `run_qa.py`'s label loop runs into `[SEP]` and padding and labels the last
//! position of the sequence; here the start is the token the answer starts in.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::squad::{Dataset, Example};
use crate::tokenize::{QaTokenizer, SpecialTokens, TokenizedText};

/// `[CLS]`, `[SEP]` after the question and `[SEP]` after the context: BERT's layout, which
/// configs are checked against before a tokenizer is known (RoBERTa's has one more).
pub const SPECIAL_TOKENS_PER_FEATURE: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowConfig {
    /// Total tokens per feature, special tokens included.
    pub max_seq_length: usize,
    /// How many context tokens consecutive windows share (run_qa's meaning of `doc_stride`).
    pub doc_stride: usize,
    /// Question tokens beyond this are cut.
    pub max_query_length: usize,
}

impl Default for WindowConfig {
    /// run_qa.py's defaults.
    fn default() -> Self {
        WindowConfig {
            max_seq_length: 384,
            doc_stride: 128,
            max_query_length: 64,
        }
    }
}

impl WindowConfig {
    /// run_qa.py's defaults scaled down to fit a model that accepts at most `max_positions`
    /// tokens: a quarter of the length for the question at most, half the rest as overlap.
    pub fn fitting(max_positions: usize) -> Self {
        let d = WindowConfig::default();
        let max_seq_length = d.max_seq_length.min(max_positions);
        let max_query_length = d.max_query_length.min(max_seq_length / 4);
        let room = max_seq_length.saturating_sub(max_query_length + SPECIAL_TOKENS_PER_FEATURE);
        WindowConfig {
            max_seq_length,
            doc_stride: d.doc_stride.min(room / 2),
            max_query_length,
        }
    }

    /// Rejects parameters that could leave a window no room to advance, for BERT's layout.
    pub fn validate(&self) -> Result<()> {
        self.validate_for(SPECIAL_TOKENS_PER_FEATURE)
    }

    /// Rejects parameters that could leave a window no room to advance, with `special` special
    /// tokens per feature (the tokenizer's [`SpecialTokens::per_feature`]).
    pub fn validate_for(&self, special: usize) -> Result<()> {
        let fixed = self.max_query_length + special;
        if self.max_seq_length <= fixed {
            return Err(DataError::WindowConfig(format!(
                "max_seq_length {} leaves no room for context after a question of up to \
                 max_query_length {} tokens and {special} special tokens; \
                 raise max_seq_length above {fixed} or lower max_query_length",
                self.max_seq_length, self.max_query_length
            )));
        }
        let room = self.max_seq_length - fixed;
        if self.doc_stride >= room {
            return Err(DataError::WindowConfig(format!(
                "doc_stride {} leaves no room for progress: with max_seq_length {} and \
                 max_query_length {}, a window may hold only {room} context tokens, and \
                 doc_stride (the overlap between windows) must be smaller than that; set \
                 doc_stride to at most {} (e.g. {}) or raise max_seq_length",
                self.doc_stride,
                self.max_seq_length,
                self.max_query_length,
                room - 1,
                room / 2
            )));
        }
        Ok(())
    }
}

/// One window of one example: what the model sees once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Index of the example in its [`Dataset`].
    pub example: u32,
    /// First context token of the window, as an index into the context's tokens.
    pub context_start: u32,
    /// Context tokens in the window.
    pub context_len: u32,
    /// Start and end token positions in the assembled sequence (0, 0 = `[CLS]`: no answer in
    /// this window). `None` when the example is answerable but none of its answers could be
    /// aligned, so it can be evaluated but not trained on.
    pub label: Option<(u32, u32)>,
}

/// Counts that tell how much the windowing lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WindowStats {
    pub examples: usize,
    pub features: usize,
    /// Answerable examples whose answer is not fully inside any window: every one of their
    /// features is labelled `[CLS]`, so training teaches the model that they have no answer.
    pub answers_outside_every_window: usize,
    /// Answerable examples with no aligned answer (no label at all).
    pub unlabelled_examples: usize,
    /// Questions cut to `max_query_length`.
    pub truncated_questions: usize,
    /// Examples cut into more than one window.
    pub split_examples: usize,
}

/// All features of a dataset plus the token data they point into.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSet {
    pub config: WindowConfig,
    pub special: SpecialTokens,
    /// Per dataset context.
    pub contexts: Vec<TokenizedText>,
    /// Per example: question token ids, already truncated.
    pub questions: Vec<Vec<u32>>,
    /// Per example: index of its context.
    pub example_context: Vec<u32>,
    pub features: Vec<Feature>,
    pub stats: WindowStats,
}

impl FeatureSet {
    /// Tokenizes and windows a whole dataset in parallel; the order is that of the examples.
    pub fn build(dataset: &Dataset, tokenizer: &QaTokenizer, config: WindowConfig) -> Result<Self> {
        let special = tokenizer.special_tokens();
        config.validate_for(special.per_feature())?;
        // One batch for contexts and questions: they share most of their words.
        // run_qa.py strips leading whitespace from questions; the BERT normaliser would too.
        let texts: Vec<&str> = dataset
            .contexts
            .iter()
            .map(String::as_str)
            .chain(dataset.examples.iter().map(|e| e.question.trim_start()))
            .collect();
        let mut encoded = tokenizer.encode_batch(&texts)?;
        let questions: Vec<Vec<u32>> = encoded
            .split_off(dataset.contexts.len())
            .into_iter()
            .map(|t| t.ids)
            .collect();
        let contexts = encoded;
        let per_example: Vec<(Vec<Feature>, ExampleStats)> = dataset
            .examples
            .par_iter()
            .enumerate()
            .map(|(i, example)| {
                let question_len = questions[i].len().min(config.max_query_length);
                window_example(
                    i as u32,
                    example,
                    &contexts[example.context],
                    question_len,
                    &config,
                    special,
                )
            })
            .collect();

        let mut stats = WindowStats {
            examples: dataset.examples.len(),
            ..Default::default()
        };
        let mut features = Vec::with_capacity(per_example.iter().map(|(f, _)| f.len()).sum());
        for (f, s) in per_example {
            stats.answers_outside_every_window += s.answer_lost as usize;
            stats.unlabelled_examples += s.unlabelled as usize;
            stats.split_examples += (f.len() > 1) as usize;
            features.extend(f);
        }
        stats.features = features.len();
        let questions: Vec<Vec<u32>> = questions
            .into_iter()
            .map(|mut q| {
                if q.len() > config.max_query_length {
                    stats.truncated_questions += 1;
                    q.truncate(config.max_query_length);
                }
                q
            })
            .collect();
        Ok(FeatureSet {
            config,
            special,
            contexts,
            questions,
            example_context: dataset.examples.iter().map(|e| e.context as u32).collect(),
            features,
            stats,
        })
    }

    /// Where the window's first context token sits in the assembled sequence.
    pub fn context_offset(&self, feature: &Feature) -> usize {
        self.special
            .context_offset(self.questions[feature.example as usize].len())
    }

    /// Length of the assembled sequence (no padding).
    pub fn seq_len(&self, feature: &Feature) -> usize {
        self.context_offset(feature) + feature.context_len as usize + 1
    }

    /// Appends `[CLS] question [SEP] window [SEP]` to `ids` (RoBERTa's `<s> question </s></s>
    /// window </s>`: the tokenizer's template).
    pub fn input_ids(&self, feature: &Feature, ids: &mut Vec<u32>) {
        let question = &self.questions[feature.example as usize];
        let context = self.context_tokens(feature);
        ids.push(self.special.cls);
        ids.extend_from_slice(question);
        ids.extend(std::iter::repeat_n(
            self.special.sep,
            self.special.separators as usize,
        ));
        ids.extend_from_slice(&context.ids[self.window_range(feature)]);
        ids.push(self.special.sep);
    }

    /// Token type ids: 0 for `[CLS] question [SEP]`, 1 for the rest (as BERT was pre-trained;
    /// models with a single token type read them all as 0).
    pub fn token_type_ids(&self, feature: &Feature, types: &mut Vec<u32>) {
        let first = self.context_offset(feature);
        types.extend(std::iter::repeat_n(0, first));
        types.extend(std::iter::repeat_n(1, self.seq_len(feature) - first));
    }

    /// Character spans in the context of the window's context tokens, in sequence order.
    pub fn window_offsets(&self, feature: &Feature) -> &[(u32, u32)] {
        &self.context_tokens(feature).offsets[self.window_range(feature)]
    }

    fn context_tokens(&self, feature: &Feature) -> &TokenizedText {
        &self.contexts[self.example_context[feature.example as usize] as usize]
    }

    fn window_range(&self, feature: &Feature) -> std::ops::Range<usize> {
        let start = feature.context_start as usize;
        start..start + feature.context_len as usize
    }

    /// Indices of features that can be trained on.
    pub fn labelled(&self) -> impl Iterator<Item = usize> + '_ {
        self.features
            .iter()
            .enumerate()
            .filter(|(_, f)| f.label.is_some())
            .map(|(i, _)| i)
    }
}

struct ExampleStats {
    answer_lost: bool,
    unlabelled: bool,
}

fn window_example(
    index: u32,
    example: &Example,
    context: &TokenizedText,
    question_len: usize,
    config: &WindowConfig,
    special: SpecialTokens,
) -> (Vec<Feature>, ExampleStats) {
    let budget = config.max_seq_length - question_len - special.per_feature();
    let total = context.ids.len();
    let step = budget - config.doc_stride; // > 0: validate() guarantees it
    let answer = example.training_answer().map(|a| {
        let start = a.start.expect("training answers are aligned");
        (start, start + a.text.chars().count())
    });
    let mut features = Vec::new();
    let mut start = 0;
    loop {
        let stop = (start + budget).min(total);
        let offsets = &context.offsets[start..stop];
        let label = if example.is_impossible {
            Some((0, 0))
        } else {
            answer.map(|(s, e)| {
                let first = special.context_offset(question_len);
                label_window(offsets, s, e).map_or((0, 0), |(ls, le)| {
                    ((first + ls) as u32, (first + le) as u32)
                })
            })
        };
        features.push(Feature {
            example: index,
            context_start: start as u32,
            context_len: (stop - start) as u32,
            label,
        });
        if stop == total {
            break;
        }
        start += step;
    }
    let answer_lost = answer.is_some() && features.iter().all(|f| f.label == Some((0, 0)));
    let unlabelled = !example.is_impossible && answer.is_none();
    (
        features,
        ExampleStats {
            answer_lost,
            unlabelled,
        },
    )
}

/// run_qa.py's labelling within one window: `None` when the answer `[start_char, end_char)` is not
/// fully inside, else the first and last token (window-relative) of the answer.
fn label_window(
    offsets: &[(u32, u32)],
    start_char: usize,
    end_char: usize,
) -> Option<(usize, usize)> {
    let (first, last) = (offsets.first()?, offsets.last()?);
    if !(first.0 as usize <= start_char && last.1 as usize >= end_char) {
        return None;
    }
    let mut s = 0;
    while s < offsets.len() && offsets[s].0 as usize <= start_char {
        s += 1;
    }
    let mut e = offsets.len() as isize - 1;
    while e >= 0 && offsets[e as usize].1 as usize >= end_char {
        e -= 1;
    }
    Some((s - 1, (e + 1) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squad::{LoadOptions, MisalignedPolicy};
    use crate::tokenize::tests::tiny_tokenizer;
    use std::path::Path;

    fn dataset(json: &str) -> Dataset {
        Dataset::parse(
            json,
            Path::new("t.json"),
            LoadOptions {
                misaligned: MisalignedPolicy::Error,
            },
        )
        .unwrap()
    }

    #[test]
    fn short_example_is_one_labelled_feature() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tiny_tokenizer(dir.path());
        let ds = dataset(
            r#"[{"context": "the cat sat on the mat.", "qas": [
            {"id": "1", "question": "where did the cat sat?", "answers": [{"text": "the mat", "answer_start": 15}]}]}]"#,
        );
        let fs = FeatureSet::build(&ds, &tok, WindowConfig::default()).unwrap();
        assert_eq!(fs.features.len(), 1);
        let f = &fs.features[0];
        let mut ids = Vec::new();
        fs.input_ids(f, &mut ids);
        let pieces: Vec<_> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        assert_eq!(
            pieces.join(" "),
            "[CLS] where did the cat sat ? [SEP] the cat sat on the mat . [SEP]"
        );
        // question: 6 tokens -> context starts at 8; "the mat" = context tokens 4..=5.
        assert_eq!(fs.context_offset(f), 8);
        assert_eq!(f.label, Some((12, 13)));
        let mut types = Vec::new();
        fs.token_type_ids(f, &mut types);
        assert_eq!(types.len(), ids.len());
        assert_eq!(types.iter().filter(|&&t| t == 0).count(), 8);
    }

    #[test]
    fn long_context_windows_overlap_by_doc_stride() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tiny_tokenizer(dir.path());
        // 20 context tokens "the cat ..." x; question "who" = 1 token.
        let context = "a dog ran in the park . ".repeat(3) + "the red sky";
        let start = context.find("red").unwrap();
        let ds = dataset(&format!(
            r#"[{{"context": "{context}", "qas": [
            {{"id": "1", "question": "what is red?", "answers": [{{"text": "red sky", "answer_start": {start}}}]}}]}}]"#
        ));
        let config = WindowConfig {
            max_seq_length: 15,
            doc_stride: 3,
            max_query_length: 2,
        };
        let fs = FeatureSet::build(&ds, &tok, config).unwrap();
        // question truncated to 2 tokens -> budget 15 - 2 - 3 = 10, step 7, 24 context tokens:
        // windows [0,10) [7,17) [14,24).
        let windows: Vec<_> = fs
            .features
            .iter()
            .map(|f| (f.context_start, f.context_len))
            .collect();
        assert_eq!(windows, [(0, 10), (7, 10), (14, 10)]);
        assert_eq!(fs.stats.truncated_questions, 1);
        assert_eq!(fs.stats.split_examples, 1);
        // Answer = last two tokens (22, 23): only in the last window, at positions 4 + 8, 4 + 9.
        let labels: Vec<_> = fs.features.iter().map(|f| f.label).collect();
        assert_eq!(labels, [Some((0, 0)), Some((0, 0)), Some((12, 13))]);
        assert_eq!(fs.stats.answers_outside_every_window, 0);
    }

    #[test]
    fn answer_across_window_boundary_is_counted_lost() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tiny_tokenizer(dir.path());
        let ds = dataset(
            r#"[{"context": "a dog ran in the park", "qas": [
            {"id": "1", "question": "who", "answers": [{"text": "ran in the", "answer_start": 6}]}]}]"#,
        );
        let config = WindowConfig {
            max_seq_length: 7,
            doc_stride: 0,
            max_query_length: 1,
        };
        // budget 3, no overlap: [a dog ran] [in the park]: the answer straddles both.
        let fs = FeatureSet::build(&ds, &tok, config).unwrap();
        assert_eq!(fs.features.len(), 2);
        assert_eq!(fs.stats.answers_outside_every_window, 1);
    }

    #[test]
    fn fitting_windows_are_valid_and_default_for_bert() {
        assert_eq!(WindowConfig::fitting(512), WindowConfig::default());
        for n in [16, 64, 128, 200] {
            let w = WindowConfig::fitting(n);
            assert!(w.max_seq_length <= n);
            w.validate().unwrap();
        }
    }

    #[test]
    fn stride_without_progress_is_rejected_with_advice() {
        let err = WindowConfig {
            max_seq_length: 128,
            doc_stride: 128,
            max_query_length: 64,
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(err.contains("set doc_stride to at most 60"), "{err}");
    }

    #[test]
    fn unaligned_answerable_example_has_no_label() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tiny_tokenizer(dir.path());
        let ds = Dataset::parse(
            r#"[{"context": "the cat", "qas": [
            {"id": "1", "question": "who", "answers": [{"text": "dog", "answer_start": 0}]},
            {"id": "2", "question": "who", "is_impossible": true, "answers": []}]}]"#,
            Path::new("t.json"),
            LoadOptions::default(),
        )
        .unwrap();
        let fs = FeatureSet::build(&ds, &tok, WindowConfig::default()).unwrap();
        assert_eq!(fs.features[0].label, None);
        assert_eq!(fs.features[1].label, Some((0, 0)));
        assert_eq!(fs.labelled().collect::<Vec<_>>(), [1]);
        assert_eq!(fs.stats.unlabelled_examples, 1);
    }

    #[test]
    fn label_window_matches_run_qa_rules() {
        let offsets = [(0, 3), (4, 7), (8, 11), (12, 15)];
        assert_eq!(label_window(&offsets, 4, 11), Some((1, 2)));
        // Start inside a token: that token.
        assert_eq!(label_window(&offsets, 5, 7), Some((1, 1)));
        // Answer in the last token: the last token (run_qa.py would run past the window).
        assert_eq!(label_window(&offsets, 12, 15), Some((3, 3)));
        // Not fully inside.
        assert_eq!(label_window(&offsets, 12, 16), None);
        assert_eq!(label_window(&[], 0, 1), None);
    }
}
