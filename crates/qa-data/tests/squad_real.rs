//! Checks on the real SQuAD files and the real MiniLM tokenizer.
//!
//! Needs the shared assets (`QA_SHARED_DIR`, see tests/support): ignored without them.

use std::collections::HashMap;

use qa_data::metrics::{evaluate_v1, evaluate_v2};
use qa_data::squad::IssueKind;
use qa_data::{Casing, Dataset, FeatureSet, LoadOptions, QaTokenizer, SquadVersion, WindowConfig};

#[path = "../../../tests/support/mod.rs"]
mod support;

use support::shared_dir;

fn gold_predictions(ds: &Dataset) -> HashMap<String, String> {
    ds.examples
        .iter()
        .map(|e| {
            let text = e
                .answers
                .first()
                .map(|a| a.text.clone())
                .unwrap_or_default();
            (e.id.clone(), text)
        })
        .collect()
}

#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn dev_v11_windows_like_the_hf_fast_tokenizer() {
    let shared = shared_dir();
    let ds = Dataset::load(
        shared.join("data/squad/dev-v1.1.json"),
        LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(ds.version, SquadVersion::V1);
    assert_eq!(ds.examples.len(), 10_570);
    let tok = QaTokenizer::from_path(shared.join("models/all-MiniLM-L6-v2"), Casing::Auto).unwrap();
    let fs = FeatureSet::build(&ds, &tok, WindowConfig::default()).unwrap();
    // What transformers' run_qa.py gets from the fast tokenizer for the same file and settings.
    assert_eq!(fs.features.len(), 10_784);
    // Every feature fits, and labels point into the context part of the sequence.
    for f in &fs.features {
        assert!(fs.seq_len(f) <= 384);
        if let Some((s, e)) = f.label
            && (s, e) != (0, 0)
        {
            let first = fs.context_offset(f) as u32;
            assert!(s >= first && e >= s && e < first + f.context_len);
        }
    }
}

#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn official_gold_answers_score_100() {
    let shared = shared_dir();
    let v1 = Dataset::load(
        shared.join("data/squad/dev-v1.1.json"),
        LoadOptions::default(),
    )
    .unwrap();
    let s = evaluate_v1(&v1, &gold_predictions(&v1));
    assert_eq!((s.exact_match, s.f1, s.missing), (100.0, 100.0, 0));

    let v2 = Dataset::load(
        shared.join("data/squad/dev-v2.0.json"),
        LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(v2.version, SquadVersion::V2);
    assert_eq!(v2.report.impossible, 5_945);
    let s = evaluate_v2(&v2, &gold_predictions(&v2), None, 1.0).unwrap();
    assert_eq!((s.exact, s.f1, s.total), (100.0, 100.0, 11_873));
    assert_eq!(s.has_ans_total, Some(5_928));
}

#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn train_answers_are_all_at_their_start() {
    let shared = shared_dir();
    let ds = Dataset::load(
        shared.join("data/squad/train-v1.1.json"),
        LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(ds.examples.len(), 87_599);
    // Some answer_start values point at another occurrence of the same text: still aligned, so
    // nothing is realigned or lost.
    assert_eq!(ds.report.count(IssueKind::MisalignedRealigned), 0);
    assert_eq!(ds.report.count(IssueKind::MisalignedSkipped), 0);
    assert_eq!(ds.report.unlabelled_answerable, 0);
    assert_eq!(ds.report.answerable, 87_599);
}
