//! From start/end logits back to answers, as `run_qa.py`'s `postprocess_qa_predictions` does:
//! the `n_best_size` best starts and ends of every window are paired, spans outside the context,
//! reversed or longer than `max_answer_length` are dropped, the best spans over all windows of an
//! example are kept, and for SQuAD v2.0 the null answer (its score the minimum over windows)
//! competes through `null_score_diff_threshold`. Probabilities are a softmax over the n-best.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::atomic;
use crate::error::Result;
use crate::squad::{CharIndex, Dataset};
use crate::window::FeatureSet;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecodeConfig {
    pub n_best_size: usize,
    pub max_answer_length: usize,
    /// Predict "" when `null_score - best_span_score` exceeds this (v2.0 only).
    pub null_score_diff_threshold: f32,
    /// Let "no answer" compete (SQuAD v2.0).
    pub version_2_with_negative: bool,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        DecodeConfig {
            n_best_size: 20,
            max_answer_length: 30,
            null_score_diff_threshold: 0.0,
            version_2_with_negative: false,
        }
    }
}

/// One candidate answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanPrediction {
    pub text: String,
    /// `[start, end)` in code points of the context; (0, 0) for the null answer.
    pub start: usize,
    pub end: usize,
    pub start_logit: f32,
    pub end_logit: f32,
    /// Softmax of `start_logit + end_logit` over the n-best list.
    pub probability: f32,
}

/// The decoded answer of one example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExamplePrediction {
    pub id: String,
    /// The final answer ("" = no answer).
    pub answer: String,
    pub nbest: Vec<SpanPrediction>,
    /// `null_score - best_span_score` (v2.0 only): what `null_odds.json` holds.
    pub null_score_diff: Option<f32>,
}

/// Decoded answers for a whole dataset, in example order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Predictions {
    pub examples: Vec<ExamplePrediction>,
}

/// The model outputs for one feature, one value per token of the (unpadded) sequence.
pub struct FeatureLogits<'a> {
    pub start: &'a [f32],
    pub end: &'a [f32],
}

/// Decodes all examples. `logits[i]` belongs to `features.features[i]`.
pub fn decode(
    dataset: &Dataset,
    features: &FeatureSet,
    logits: &[FeatureLogits<'_>],
    config: &DecodeConfig,
) -> Predictions {
    assert_eq!(
        logits.len(),
        features.features.len(),
        "one set of logits per feature"
    );
    // Features are stored in example order; find each example's run.
    let mut runs: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
    for (i, f) in features.features.iter().enumerate() {
        match runs.last_mut() {
            Some((e, r)) if *e == f.example as usize => r.end = i + 1,
            _ => runs.push((f.example as usize, i..i + 1)),
        }
    }
    let examples = runs
        .into_par_iter()
        .map(|(e, range)| decode_example(dataset, features, e, range, logits, config))
        .collect();
    Predictions { examples }
}

struct Candidate {
    start: usize,
    end: usize,
    start_logit: f32,
    end_logit: f32,
    score: f32,
}

fn decode_example(
    dataset: &Dataset,
    features: &FeatureSet,
    example_index: usize,
    feature_range: std::ops::Range<usize>,
    logits: &[FeatureLogits<'_>],
    config: &DecodeConfig,
) -> ExamplePrediction {
    let example = &dataset.examples[example_index];
    let mut null: Option<Candidate> = None;
    let mut candidates = Vec::new();
    for fi in feature_range {
        let feature = &features.features[fi];
        let FeatureLogits { start, end } = logits[fi];
        let null_score = start[0] + end[0];
        if null.as_ref().is_none_or(|n| n.score > null_score) {
            null = Some(Candidate {
                start: 0,
                end: 0,
                start_logit: start[0],
                end_logit: end[0],
                score: null_score,
            });
        }
        let first = features.context_offset(feature);
        let offsets = features.window_offsets(feature);
        let in_context = |i: usize| i >= first && i < first + offsets.len();
        let starts = top_indices(start, config.n_best_size);
        let ends = top_indices(end, config.n_best_size);
        for &s in &starts {
            for &e in &ends {
                if !in_context(s) || !in_context(e) || e < s || e - s + 1 > config.max_answer_length
                {
                    continue;
                }
                candidates.push(Candidate {
                    start: offsets[s - first].0 as usize,
                    end: offsets[e - first].1 as usize,
                    start_logit: start[s],
                    end_logit: end[e],
                    score: start[s] + end[e],
                });
            }
        }
    }
    let null_score = null.as_ref().map(|n| n.score);
    if config.version_2_with_negative
        && let Some(n) = null.take()
    {
        candidates.push(n);
    }
    // Stable sort: equal scores keep window order, as Python's sorted() does.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates.truncate(config.n_best_size);
    if config.version_2_with_negative
        && let Some(n) = null
        && !candidates.iter().any(|c| (c.start, c.end) == (0, 0))
    {
        candidates.push(n);
    }

    let context = &dataset.contexts[example.context];
    let chars = CharIndex::new(context);
    let mut nbest: Vec<(SpanPrediction, f32)> = candidates
        .into_iter()
        .map(|c| {
            let text = context[chars.byte(c.start)..chars.byte(c.end)].to_string();
            let span = SpanPrediction {
                text,
                start: c.start,
                end: c.end,
                start_logit: c.start_logit,
                end_logit: c.end_logit,
                probability: 0.0,
            };
            (span, c.score)
        })
        .collect();
    if nbest.is_empty() || (nbest.len() == 1 && nbest[0].0.text.is_empty()) {
        let empty = SpanPrediction {
            text: "empty".into(),
            start: 0,
            end: 0,
            start_logit: 0.0,
            end_logit: 0.0,
            probability: 0.0,
        };
        nbest.insert(0, (empty, 0.0));
    }
    let max = nbest
        .iter()
        .map(|(_, s)| *s)
        .fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = nbest.iter().map(|(_, s)| (s - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let nbest: Vec<SpanPrediction> = nbest
        .into_iter()
        .zip(exps)
        .map(|((mut span, _), e)| {
            span.probability = e / sum;
            span
        })
        .collect();

    let (answer, null_score_diff) = if config.version_2_with_negative {
        let best = nbest.iter().find(|p| !p.text.is_empty());
        match (best, null_score) {
            (Some(best), Some(null_score)) => {
                let diff = null_score - best.start_logit - best.end_logit;
                let answer = if diff > config.null_score_diff_threshold {
                    String::new()
                } else {
                    best.text.clone()
                };
                (answer, Some(diff))
            }
            _ => (String::new(), None),
        }
    } else {
        (nbest[0].text.clone(), None)
    };
    ExamplePrediction {
        id: example.id.clone(),
        answer,
        nbest,
        null_score_diff,
    }
}

/// Indices of the `n` largest values, largest first (numpy's `argsort()[-1:-n-1:-1]`).
fn top_indices(values: &[f32], n: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let by_value_desc = |a: &usize, b: &usize| values[*b].total_cmp(&values[*a]).then(b.cmp(a));
    if n < idx.len() {
        idx.select_nth_unstable_by(n, by_value_desc);
        idx.truncate(n);
    }
    idx.sort_unstable_by(by_value_desc);
    idx
}

impl Predictions {
    /// `predictions.json`: question id -> answer text.
    pub fn answers(&self) -> BTreeMap<&str, &str> {
        self.examples
            .iter()
            .map(|e| (e.id.as_str(), e.answer.as_str()))
            .collect()
    }

    /// `nbest_predictions.json`: question id -> candidates.
    pub fn nbest(&self) -> BTreeMap<&str, &[SpanPrediction]> {
        self.examples
            .iter()
            .map(|e| (e.id.as_str(), e.nbest.as_slice()))
            .collect()
    }

    /// `null_odds.json`: question id -> null score difference (empty for v1.1 decoding).
    pub fn null_odds(&self) -> BTreeMap<&str, f32> {
        self.examples
            .iter()
            .filter_map(|e| e.null_score_diff.map(|d| (e.id.as_str(), d)))
            .collect()
    }

    /// Writes `predictions.json`, `nbest_predictions.json` and (v2.0) `null_odds.json` into
    /// `dir`, each atomically; existing files are replaced only with `overwrite`.
    pub fn write(&self, dir: &Path, overwrite: bool) -> Result<Vec<std::path::PathBuf>> {
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            ("predictions.json", to_json(&self.answers())),
            ("nbest_predictions.json", to_json(&self.nbest())),
        ];
        let odds = self.null_odds();
        if !odds.is_empty() {
            files.push(("null_odds.json", to_json(&odds)));
        }
        let paths: Vec<_> = files.iter().map(|(name, _)| dir.join(name)).collect();
        if !overwrite {
            for p in &paths {
                atomic::refuse_existing(p)?;
            }
        }
        for ((_, bytes), path) in files.iter().zip(&paths) {
            atomic::write(path, bytes)?;
        }
        Ok(paths)
    }
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("maps of strings and numbers serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squad::LoadOptions;
    use crate::tokenize::tests::tiny_tokenizer;
    use crate::window::WindowConfig;

    fn setup(json: &str, config: WindowConfig) -> (tempfile::TempDir, Dataset, FeatureSet) {
        let dir = tempfile::tempdir().unwrap();
        let tok = tiny_tokenizer(dir.path());
        let ds = Dataset::parse(json, Path::new("t.json"), LoadOptions::default()).unwrap();
        let fs = FeatureSet::build(&ds, &tok, config).unwrap();
        (dir, ds, fs)
    }

    /// Logits with chosen peaks: `start[s] = hs`, `end[e] = he`, everything else 0.
    fn peaks(len: usize, marks: &[(usize, f32, usize, f32)]) -> (Vec<f32>, Vec<f32>) {
        let (mut s, mut e) = (vec![0.0; len], vec![0.0; len]);
        for &(si, sv, ei, ev) in marks {
            s[si] = sv;
            e[ei] = ev;
        }
        (s, e)
    }

    const ONE: &str = r#"[{"context": "the cat sat on the mat.", "qas": [
        {"id": "q", "question": "who", "answers": [{"text": "cat", "answer_start": 4}]}]}]"#;

    #[test]
    fn best_span_is_decoded_to_context_text() {
        let (_d, ds, fs) = setup(ONE, WindowConfig::default());
        // [CLS] who [SEP] the cat sat on the mat . [SEP]: context starts at 3.
        let len = fs.seq_len(&fs.features[0]);
        let (s, e) = peaks(len, &[(4, 5.0, 8, 4.0), (3, 2.0, 4, 3.0)]);
        let logits = [FeatureLogits { start: &s, end: &e }];
        let p = decode(&ds, &fs, &logits, &DecodeConfig::default());
        let ex = &p.examples[0];
        assert_eq!(ex.answer, "cat sat on the mat");
        assert_eq!((ex.nbest[0].start, ex.nbest[0].end), (4, 22));
        let total: f32 = ex.nbest.iter().map(|c| c.probability).sum();
        assert!((total - 1.0).abs() < 1e-5);
        assert!(ex.null_score_diff.is_none());
    }

    #[test]
    fn max_answer_length_and_order_are_enforced() {
        let (_d, ds, fs) = setup(ONE, WindowConfig::default());
        let len = fs.seq_len(&fs.features[0]);
        // Best pair is reversed (end before start), next is too long for max_answer_length 2.
        let (s, e) = peaks(len, &[(8, 9.0, 4, 9.0), (3, 1.0, 6, 1.0)]);
        let logits = [FeatureLogits { start: &s, end: &e }];
        let config = DecodeConfig {
            max_answer_length: 2,
            ..Default::default()
        };
        let p = decode(&ds, &fs, &logits, &config);
        for c in &p.examples[0].nbest {
            assert!(c.end >= c.start);
            let words = c.text.split_whitespace().count();
            assert!(words <= 2, "{}", c.text);
        }
    }

    #[test]
    fn v2_null_wins_over_weak_span() {
        let (_d, ds, fs) = setup(ONE, WindowConfig::default());
        let len = fs.seq_len(&fs.features[0]);
        let (s, e) = peaks(len, &[(0, 6.0, 0, 6.0), (4, 3.0, 4, 3.0)]);
        let logits = [FeatureLogits { start: &s, end: &e }];
        let config = DecodeConfig {
            version_2_with_negative: true,
            ..Default::default()
        };
        let p = decode(&ds, &fs, &logits, &config);
        let ex = &p.examples[0];
        assert_eq!(ex.answer, "");
        assert_eq!(ex.null_score_diff, Some(12.0 - 6.0));
        assert_eq!(ex.nbest[0].text, "");
        // A threshold above the difference lets the span through.
        let config = DecodeConfig {
            null_score_diff_threshold: 7.0,
            ..config
        };
        assert_eq!(decode(&ds, &fs, &logits, &config).examples[0].answer, "cat");
    }

    #[test]
    fn best_window_wins_and_null_is_minimum_over_windows() {
        let context = "a dog ran in the park . ".repeat(3) + "the red sky";
        let json = format!(
            r#"[{{"context": "{context}", "qas": [{{"id": "q", "question": "who", "answers": []}}]}}]"#
        );
        let config = WindowConfig {
            max_seq_length: 14,
            doc_stride: 2,
            max_query_length: 1,
        };
        let (_d, ds, fs) = setup(&json, config);
        assert!(fs.features.len() > 1);
        let mut owned = Vec::new();
        for (i, f) in fs.features.iter().enumerate() {
            let len = fs.seq_len(f);
            let null = 1.0 + i as f32;
            // In the last window, a strong span on its last two context tokens ("red sky").
            let marks = if i == fs.features.len() - 1 {
                vec![(0, null, 0, 0.0), (len - 3, 8.0, len - 2, 8.0)]
            } else {
                vec![(0, null, 0, 0.0)]
            };
            owned.push(peaks(len, &marks));
        }
        let logits: Vec<_> = owned
            .iter()
            .map(|(s, e)| FeatureLogits { start: s, end: e })
            .collect();
        let config = DecodeConfig {
            version_2_with_negative: true,
            ..Default::default()
        };
        let p = decode(&ds, &fs, &logits, &config);
        let ex = &p.examples[0];
        assert_eq!(ex.answer, "red sky");
        // Minimum null score is the first window's: 1.0.
        assert_eq!(ex.null_score_diff, Some(1.0 - 16.0));
    }

    #[test]
    fn top_indices_is_descending() {
        assert_eq!(top_indices(&[0.1, 3.0, -1.0, 2.0], 2), [1, 3]);
        assert_eq!(top_indices(&[1.0, 2.0], 5), [1, 0]);
    }

    #[test]
    fn outputs_are_written_atomically_and_not_overwritten() {
        let (_d, ds, fs) = setup(ONE, WindowConfig::default());
        let len = fs.seq_len(&fs.features[0]);
        let (s, e) = peaks(len, &[(4, 5.0, 4, 4.0)]);
        let p = decode(
            &ds,
            &fs,
            &[FeatureLogits { start: &s, end: &e }],
            &DecodeConfig::default(),
        );
        let out = tempfile::tempdir().unwrap();
        let written = p.write(out.path(), false).unwrap();
        assert_eq!(written.len(), 2);
        let text = std::fs::read_to_string(out.path().join("predictions.json")).unwrap();
        assert!(text.contains(r#""q": "cat""#), "{text}");
        let err = p.write(out.path(), false).unwrap_err().to_string();
        assert!(err.contains("already exists"), "{err}");
        p.write(out.path(), true).unwrap();
    }
}
