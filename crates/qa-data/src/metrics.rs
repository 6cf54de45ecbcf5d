//! The official SQuAD metrics, computed the way `evaluate-v1.1.py` and `evaluate-v2.0.py` compute
//! them (same normalisation, same order of floating point operations), so the numbers are equal.

use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

use crate::error::{DataError, Result};
use crate::squad::{Dataset, SquadVersion};

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

static ARTICLES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b(a|an|the)\b").expect("valid regex"));

/// Python's `str.isspace()`: Unicode White_Space plus the four ASCII separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Lower text and remove punctuation, articles and extra whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower
        .chars()
        .filter(|c| !PUNCTUATION.contains(*c))
        .collect();
    let no_articles = ARTICLES.replace_all(&no_punc, " ");
    no_articles
        .split(is_python_space)
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn tokens(normalized: &str) -> Vec<&str> {
    normalized
        .split(is_python_space)
        .filter(|t| !t.is_empty())
        .collect()
}

/// Token-overlap F1 between two normalised answers; `None` where they share no token.
fn overlap_f1(prediction: &[&str], gold: &[&str]) -> Option<f64> {
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in gold {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0usize;
    for t in prediction {
        if let Some(c) = counts.get_mut(t)
            && *c > 0
        {
            *c -= 1;
            same += 1;
        }
    }
    if same == 0 {
        return None;
    }
    let precision = 1.0 * same as f64 / prediction.len() as f64;
    let recall = 1.0 * same as f64 / gold.len() as f64;
    Some((2.0 * precision * recall) / (precision + recall))
}

/// v1.1 `f1_score`.
pub fn f1_v1(prediction: &str, gold: &str) -> f64 {
    let (p, g) = (normalize_answer(prediction), normalize_answer(gold));
    overlap_f1(&tokens(&p), &tokens(&g)).unwrap_or(0.0)
}

/// v2.0 `compute_f1`: two empty answers agree.
pub fn f1_v2(prediction: &str, gold: &str) -> f64 {
    let (p, g) = (normalize_answer(prediction), normalize_answer(gold));
    let (pt, gt) = (tokens(&p), tokens(&g));
    if pt.is_empty() || gt.is_empty() {
        return (pt == gt) as i32 as f64;
    }
    overlap_f1(&pt, &gt).unwrap_or(0.0)
}

pub fn exact_match(prediction: &str, gold: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(gold)
}

/// `evaluate-v1.1.py`'s output, plus how many questions had no prediction (scored 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SquadV1Scores {
    pub exact_match: f64,
    pub f1: f64,
    #[serde(skip)]
    pub total: usize,
    #[serde(skip)]
    pub missing: usize,
}

/// `evaluate-v2.0.py`'s output, keys in its order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SquadV2Scores {
    pub exact: f64,
    pub f1: f64,
    pub total: usize,
    #[serde(rename = "HasAns_exact", skip_serializing_if = "Option::is_none")]
    pub has_ans_exact: Option<f64>,
    #[serde(rename = "HasAns_f1", skip_serializing_if = "Option::is_none")]
    pub has_ans_f1: Option<f64>,
    #[serde(rename = "HasAns_total", skip_serializing_if = "Option::is_none")]
    pub has_ans_total: Option<usize>,
    #[serde(rename = "NoAns_exact", skip_serializing_if = "Option::is_none")]
    pub no_ans_exact: Option<f64>,
    #[serde(rename = "NoAns_f1", skip_serializing_if = "Option::is_none")]
    pub no_ans_f1: Option<f64>,
    #[serde(rename = "NoAns_total", skip_serializing_if = "Option::is_none")]
    pub no_ans_total: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_exact: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_exact_thresh: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_f1: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best_f1_thresh: Option<f64>,
}

/// Either version's scores; which one applies follows the dataset.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SquadScores {
    V1(SquadV1Scores),
    V2(SquadV2Scores),
}

impl SquadScores {
    /// Exact match and F1 in percent, whichever version.
    pub fn exact_and_f1(&self) -> (f64, f64) {
        match self {
            SquadScores::V1(s) => (s.exact_match, s.f1),
            SquadScores::V2(s) => (s.exact, s.f1),
        }
    }
}

/// Scores predictions against a dataset with the rules of its version.
pub fn evaluate(
    dataset: &Dataset,
    predictions: &HashMap<String, String>,
    na_probs: Option<&[(String, f64)]>,
    na_prob_thresh: f64,
) -> Result<SquadScores> {
    match dataset.version {
        SquadVersion::V1 => Ok(SquadScores::V1(evaluate_v1(dataset, predictions))),
        SquadVersion::V2 => {
            evaluate_v2(dataset, predictions, na_probs, na_prob_thresh).map(SquadScores::V2)
        }
    }
}

/// `evaluate-v1.1.py`: every question counts; a missing prediction scores 0.
pub fn evaluate_v1(dataset: &Dataset, predictions: &HashMap<String, String>) -> SquadV1Scores {
    let (mut em, mut f1, mut total, mut missing) = (0usize, 0.0f64, 0usize, 0usize);
    for example in &dataset.examples {
        total += 1;
        let Some(prediction) = predictions.get(&example.id) else {
            missing += 1;
            continue;
        };
        let golds = example.answers.iter().map(|a| a.text.as_str());
        em += golds.clone().any(|g| exact_match(prediction, g)) as usize;
        f1 += golds.map(|g| f1_v1(prediction, g)).fold(0.0, f64::max);
    }
    SquadV1Scores {
        exact_match: 100.0 * em as f64 / total as f64,
        f1: 100.0 * f1 / total as f64,
        total,
        missing,
    }
}

/// `evaluate-v2.0.py`. Like the official script, it needs a prediction for every question.
pub fn evaluate_v2(
    dataset: &Dataset,
    predictions: &HashMap<String, String>,
    na_probs: Option<&[(String, f64)]>,
    na_prob_thresh: f64,
) -> Result<SquadV2Scores> {
    // Python dicts: a repeated id keeps its first position and its last value.
    let mut order: Vec<&str> = Vec::new();
    let mut per_id: HashMap<&str, (bool, f64, f64)> = HashMap::new();
    let mut missing = Vec::new();
    for example in &dataset.examples {
        let id = example.id.as_str();
        let Some(prediction) = predictions.get(id) else {
            missing.push(id);
            continue;
        };
        let has_ans = !example.answers.is_empty();
        let mut golds: Vec<&str> = example
            .answers
            .iter()
            .map(|a| a.text.as_str())
            .filter(|t| !normalize_answer(t).is_empty())
            .collect();
        if golds.is_empty() {
            golds.push("");
        }
        let exact = golds
            .iter()
            .map(|g| exact_match(prediction, g) as i32 as f64)
            .fold(f64::MIN, f64::max);
        let f1 = golds
            .iter()
            .map(|g| f1_v2(prediction, g))
            .fold(f64::MIN, f64::max);
        if per_id.insert(id, (has_ans, exact, f1)).is_none() {
            order.push(id);
        }
    }
    if !missing.is_empty() {
        return Err(DataError::Predictions {
            path: dataset.report.file.clone(),
            what: "set of predictions for SQuAD v2.0",
            message: format!(
                "{} questions have no prediction (first: '{}'); evaluate-v2.0.py requires one for \
                 every question (use \"\" for no answer)",
                missing.len(),
                missing[0]
            ),
        });
    }

    let default_probs: Vec<(String, f64)>;
    let probs: &[(String, f64)] = match na_probs {
        Some(p) => p,
        None => {
            default_probs = predictions.keys().map(|k| (k.clone(), 0.0)).collect();
            &default_probs
        }
    };
    let prob_of: HashMap<&str, f64> = probs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let thresholded = |i: usize| -> (f64, f64) {
        let id = order[i];
        let (has_ans, exact, f1) = per_id[id];
        let prob = prob_of.get(id).copied().ok_or(id);
        match prob {
            Ok(p) if p > na_prob_thresh => {
                let s = (!has_ans) as i32 as f64;
                (s, s)
            }
            _ => (exact, f1),
        }
    };
    if let Some(id) = order.iter().find(|id| !prob_of.contains_key(**id)) {
        return Err(DataError::Predictions {
            path: dataset.report.file.clone(),
            what: "no-answer probability file",
            message: format!("no probability for question '{id}'"),
        });
    }
    let scored: Vec<(f64, f64)> = (0..order.len()).map(thresholded).collect();
    let mean = |ids: &mut dyn Iterator<Item = usize>| -> (f64, f64, usize) {
        let (mut e, mut f, mut n) = (0.0, 0.0, 0usize);
        for i in ids {
            e += scored[i].0;
            f += scored[i].1;
            n += 1;
        }
        (100.0 * e / n as f64, 100.0 * f / n as f64, n)
    };
    let (exact, f1, total) = mean(&mut (0..order.len()));
    let has: Vec<usize> = (0..order.len()).filter(|&i| per_id[order[i]].0).collect();
    let no: Vec<usize> = (0..order.len()).filter(|&i| !per_id[order[i]].0).collect();
    let subset = |ids: &[usize]| (!ids.is_empty()).then(|| mean(&mut ids.iter().copied()));
    let (has_ans, no_ans) = (subset(&has), subset(&no));

    let mut scores = SquadV2Scores {
        exact,
        f1,
        total,
        has_ans_exact: has_ans.map(|s| s.0),
        has_ans_f1: has_ans.map(|s| s.1),
        has_ans_total: has_ans.map(|s| s.2),
        no_ans_exact: no_ans.map(|s| s.0),
        no_ans_f1: no_ans.map(|s| s.1),
        no_ans_total: no_ans.map(|s| s.2),
        best_exact: None,
        best_exact_thresh: None,
        best_f1: None,
        best_f1_thresh: None,
    };
    if na_probs.is_some() {
        let index: HashMap<&str, usize> =
            order.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let best = |pick: fn(&(bool, f64, f64)) -> f64| {
            find_best_thresh(&order, &per_id, &index, probs, predictions, pick)
        };
        let (be, bet) = best(|s| s.1);
        let (bf, bft) = best(|s| s.2);
        scores.best_exact = Some(be);
        scores.best_exact_thresh = Some(bet);
        scores.best_f1 = Some(bf);
        scores.best_f1_thresh = Some(bft);
    }
    Ok(scores)
}

/// `find_best_thresh`: sweeps the no-answer threshold over the probabilities, sorted stably.
fn find_best_thresh(
    order: &[&str],
    per_id: &HashMap<&str, (bool, f64, f64)>,
    index: &HashMap<&str, usize>,
    probs: &[(String, f64)],
    predictions: &HashMap<String, String>,
    pick: fn(&(bool, f64, f64)) -> f64,
) -> (f64, f64) {
    let no_answers = order.iter().filter(|id| !per_id[**id].0).count();
    let mut current = no_answers as f64;
    let mut best = current;
    let mut best_thresh = 0.0;
    let mut sorted: Vec<&(String, f64)> = probs.iter().collect();
    sorted.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (id, prob) in sorted {
        if !index.contains_key(id.as_str()) {
            continue;
        }
        let entry = &per_id[id.as_str()];
        let diff = if entry.0 {
            pick(entry)
        } else if predictions.get(id).is_some_and(|p| !p.is_empty()) {
            -1.0
        } else {
            0.0
        };
        current += diff;
        if current > best {
            best = current;
            best_thresh = *prob;
        }
    }
    (100.0 * best / order.len() as f64, best_thresh)
}

/// Reads a `predictions.json` (question id -> answer text).
pub fn load_predictions(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| DataError::Predictions {
        path: path.to_path_buf(),
        what: "predictions file (a JSON object of question id -> answer text)",
        message: e.to_string(),
    })
}

/// Reads a `null_odds.json` / na-prob file keeping its order (the official threshold search
/// sorts stably, so ties keep file order).
pub fn load_na_probs(path: &Path) -> Result<Vec<(String, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let ordered: OrderedProbs =
        serde_json::from_str(&text).map_err(|e| DataError::Predictions {
            path: path.to_path_buf(),
            what: "no-answer probability file (a JSON object of question id -> number)",
            message: e.to_string(),
        })?;
    Ok(ordered.0)
}

struct OrderedProbs(Vec<(String, f64)>);

impl<'de> serde::Deserialize<'de> for OrderedProbs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedProbs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of question id -> number")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, f64)> = Vec::new();
                let mut seen: HashMap<String, usize> = HashMap::new();
                while let Some((k, v)) = map.next_entry::<String, f64>()? {
                    match seen.get(&k) {
                        Some(&i) => out[i].1 = v,
                        None => {
                            seen.insert(k.clone(), out.len());
                            out.push((k, v));
                        }
                    }
                }
                Ok(OrderedProbs(out))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squad::LoadOptions;

    #[test]
    fn normalisation_matches_official_rules() {
        assert_eq!(normalize_answer("The  Eiffel Tower!"), "eiffel tower");
        assert_eq!(normalize_answer("an apple, a day"), "apple day");
        assert_eq!(normalize_answer("Theatre"), "theatre");
        assert_eq!(normalize_answer("a\u{1f}b"), "b");
        assert_eq!(normalize_answer("“quoted”"), "“quoted”");
    }

    #[test]
    fn f1_versions_differ_only_on_empty() {
        assert_eq!(f1_v1("", ""), 0.0);
        assert_eq!(f1_v2("", ""), 1.0);
        assert_eq!(f1_v2("the", ""), 1.0);
        let f = f1_v1("big red dog", "red dog barked");
        assert!((f - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(f1_v1("red red", "red"), 2.0 * 0.5 * 1.0 / 1.5);
    }

    fn dataset(json: &str) -> Dataset {
        Dataset::parse(json, Path::new("gold.json"), LoadOptions::default()).unwrap()
    }

    #[test]
    fn v1_scores_missing_as_zero() {
        let ds = dataset(
            r#"{"version": "1.1", "data": [{"paragraphs": [{"context": "Paris is big", "qas": [
            {"id": "1", "question": "q", "answers": [{"text": "Paris", "answer_start": 0}, {"text": "Paris is", "answer_start": 0}]},
            {"id": "2", "question": "q", "answers": [{"text": "big", "answer_start": 9}]}]}]}]}"#,
        );
        let preds: HashMap<_, _> = [("1".to_string(), "paris is".to_string())].into();
        let s = evaluate_v1(&ds, &preds);
        assert_eq!(s.exact_match, 50.0);
        assert_eq!(s.f1, 50.0);
        assert_eq!(s.missing, 1);
    }

    #[test]
    fn v2_scores_and_thresholds() {
        let ds = dataset(
            r#"{"version": "v2.0", "data": [{"paragraphs": [{"context": "Paris is big", "qas": [
            {"id": "a", "question": "q", "is_impossible": false, "answers": [{"text": "Paris", "answer_start": 0}]},
            {"id": "b", "question": "q", "is_impossible": true, "answers": []},
            {"id": "c", "question": "q", "is_impossible": false, "answers": [{"text": "big", "answer_start": 9}]}]}]}]}"#,
        );
        let preds: HashMap<_, _> = [("a", "Paris"), ("b", "big"), ("c", "")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        let probs = vec![("a".into(), 0.1), ("b".into(), 0.9), ("c".into(), 0.5)];
        let s = evaluate_v2(&ds, &preds, Some(&probs), 1.0).unwrap();
        assert!((s.exact - 100.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.has_ans_total, Some(2));
        assert_eq!(s.no_ans_exact, Some(0.0));
        // Sorted by prob: a (+1) -> 2, c (+0) -> 2, b (-1 as "big" is predicted) -> 1.
        assert!((s.best_exact.unwrap() - 200.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.best_exact_thresh, Some(0.1));
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.starts_with(r#"{"exact":"#), "{json}");
        assert!(json.contains(r#""HasAns_exact""#), "{json}");
    }

    #[test]
    fn v2_requires_every_prediction() {
        let ds = dataset(
            r#"[{"context": "x", "qas": [{"id": "a", "question": "q", "is_impossible": true, "answers": []}]}]"#,
        );
        let err = evaluate_v2(&ds, &HashMap::new(), None, 1.0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("first: 'a'"), "{err}");
    }
}
