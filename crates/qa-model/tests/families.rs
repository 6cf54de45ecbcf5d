//! Every supported model family against Hugging Face transformers, from the fixtures
//! `tests/parity/family_fixtures.py` wrote: tiny random `XForQuestionAnswering` models and
//! tokenizers trained with the `tokenizers` library on SQuAD text, each with its family's
//! pipeline, and what transformers and run_qa.py made of a dozen SQuAD questions (weights in
//! f16, computed in f32). No torch
//! is needed here, so CI checks every family.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qa_data::{Casing, Dataset, FeatureSet, LoadOptions, QaTokenizer, WindowConfig};
use qa_model::{
    AnsweringSettings, BertInput, CpuBackend, MASKED_LOGIT, Precision, QuestionAnswerer,
    load_pretrained, save_pretrained,
};
use serde::Deserialize;

#[path = "../../../tests/support/mod.rs"]
mod support;

use support::FAMILIES;

#[derive(Deserialize)]
struct Expected {
    model_type: String,
    window: WindowConfig,
    features: Vec<ExpectedFeature>,
    train_labels: Vec<ExpectedLabel>,
    predictions: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ExpectedFeature {
    example_id: String,
    input_ids: Vec<u32>,
    token_type_ids: Option<Vec<u32>>,
    offsets: Vec<Option<(u32, u32)>>,
    start_logits: Vec<f32>,
    end_logits: Vec<f32>,
}

#[derive(Deserialize)]
struct ExpectedLabel {
    example_id: String,
    start_position: usize,
    end_position: usize,
}

fn fixtures() -> PathBuf {
    support::family_fixtures()
}

fn expected(family: &str) -> Expected {
    let path = fixtures().join(family).join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn questions() -> Dataset {
    Dataset::load(fixtures().join("questions.json"), LoadOptions::default()).unwrap()
}

fn features(family: &str, window: WindowConfig) -> FeatureSet {
    let tokenizer = QaTokenizer::from_path(fixtures().join(family), Casing::Auto).unwrap();
    FeatureSet::build(&questions(), &tokenizer, window).unwrap()
}

#[test]
fn windows_are_run_qas_for_every_family() {
    let dataset = questions();
    for family in FAMILIES {
        let expected = expected(family);
        let ours = features(family, expected.window);
        assert_eq!(
            ours.features.len(),
            expected.features.len(),
            "{family}: feature count"
        );
        let mut ids = Vec::new();
        for (i, (f, e)) in ours.features.iter().zip(&expected.features).enumerate() {
            assert_eq!(
                dataset.examples[f.example as usize].id, e.example_id,
                "{family} {i}"
            );
            ids.clear();
            ours.input_ids(f, &mut ids);
            assert_eq!(ids, e.input_ids, "{family}: feature {i} ({})", e.example_id);
            let context: Vec<(u32, u32)> = e.offsets.iter().flatten().copied().collect();
            assert_eq!(
                ours.window_offsets(f),
                context.as_slice(),
                "{family}: offsets of feature {i} ({})",
                e.example_id
            );
        }
    }
}

/// A RoBERTa directory whose tokenizer is `vocab.json` + `merges.txt` (as many hub repositories
/// hold it) gives the same windows, ids and offsets as the same vocabulary in tokenizer.json.
#[test]
fn a_roberta_tokenizer_from_vocab_and_merges_windows_as_its_tokenizer_json() {
    let source = fixtures().join("roberta");
    let text = std::fs::read_to_string(source.join("tokenizer.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let vocab = json["model"]["vocab"].to_string();
    std::fs::write(dir.path().join("vocab.json"), vocab).unwrap();
    let mut merges = String::from("#version: 0.2\n");
    for pair in json["model"]["merges"].as_array().unwrap() {
        let [a, b] = [0, 1].map(|i| pair[i].as_str().unwrap());
        merges.push_str(&format!("{a} {b}\n"));
    }
    std::fs::write(dir.path().join("merges.txt"), merges).unwrap();
    std::fs::copy(
        source.join("tokenizer_config.json"),
        dir.path().join("tokenizer_config.json"),
    )
    .unwrap();

    let from_files = QaTokenizer::from_path(dir.path(), Casing::Auto).unwrap();
    let from_json = QaTokenizer::from_path(&source, Casing::Auto).unwrap();
    assert_eq!(from_files.special_tokens(), from_json.special_tokens());
    let window = expected("roberta").window;
    let ours = FeatureSet::build(&questions(), &from_files, window).unwrap();
    let reference = FeatureSet::build(&questions(), &from_json, window).unwrap();
    assert_eq!(ours.features.len(), reference.features.len());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (f, g) in ours.features.iter().zip(&reference.features) {
        a.clear();
        b.clear();
        ours.input_ids(f, &mut a);
        reference.input_ids(g, &mut b);
        assert_eq!(a, b);
        assert_eq!(ours.window_offsets(f), reference.window_offsets(g));
    }
}

/// A directory with only a SentencePiece model gets an error that says how to make the
/// tokenizer.json this program reads.
#[test]
fn a_sentencepiece_only_tokenizer_is_refused_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spm.model"), b"not read").unwrap();
    let err = QaTokenizer::from_path(dir.path(), Casing::Auto)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("spm.model") && err.contains("save_pretrained"),
        "{err}"
    );
}

/// run_qa's labels, except where it runs past the window (an answer starting in a window's last
/// context token): qa-data labels that token (see qa-data's window module).
#[test]
fn training_labels_are_run_qas_for_every_family() {
    for family in FAMILIES {
        let expected = expected(family);
        let ours = features(family, expected.window);
        assert_eq!(ours.features.len(), expected.train_labels.len(), "{family}");
        for (i, (f, e)) in ours.features.iter().zip(&expected.train_labels).enumerate() {
            let last_context = ours.context_offset(f) + f.context_len as usize - 1;
            let theirs = (e.start_position.min(last_context), e.end_position);
            let (s, t) = f
                .label
                .expect("every question of the fixture has an answer");
            assert_eq!(
                (s as usize, t as usize),
                theirs,
                "{family}: label of feature {i} ({})",
                e.example_id
            );
        }
    }
}

/// All features in one padded batch, as transformers ran them: the logits of real positions
/// agree, padded ones are masked.
/// The fixture's features as one padded batch, and its length.
fn fixture_input(
    expected: &Expected,
    pad_token_id: usize,
    device: &burn::tensor::Device<CpuBackend>,
) -> (BertInput<CpuBackend>, usize) {
    let len = expected
        .features
        .iter()
        .map(|f| f.input_ids.len())
        .max()
        .unwrap();
    let (mut ids, mut types, mut padding) = (Vec::new(), Vec::new(), Vec::new());
    for f in &expected.features {
        let pad = len - f.input_ids.len();
        ids.extend(f.input_ids.iter().map(|&t| t as i32));
        ids.extend(std::iter::repeat_n(pad_token_id as i32, pad));
        match &f.token_type_ids {
            Some(t) => types.extend(t.iter().map(|&t| t as i32)),
            None => types.extend(std::iter::repeat_n(0, f.input_ids.len())),
        }
        types.extend(std::iter::repeat_n(0, pad));
        padding.extend(std::iter::repeat_n(false, f.input_ids.len()));
        padding.extend(std::iter::repeat_n(true, pad));
    }
    let batch = [expected.features.len(), len];
    (
        BertInput::from_host(ids, types, padding, batch, device),
        len,
    )
}

#[test]
fn span_logits_equal_transformers_for_every_family() {
    let device = Default::default();
    for family in FAMILIES {
        let expected = expected(family);
        let loaded = load_pretrained::<CpuBackend>(&fixtures().join(family), &device).unwrap();
        assert_eq!(loaded.config.family.model_type(), expected.model_type);
        assert!(
            !loaded.report.head_initialized,
            "{family}: {}",
            loaded.report
        );
        assert!(
            loaded.report.unused.is_empty(),
            "{family}: {}",
            loaded.report
        );
        let (input, len) = fixture_input(&expected, loaded.config.pad_token_id, &device);
        let logits = loaded.model.forward(&input);
        let start: Vec<f32> = logits.start.into_data().to_vec().unwrap();
        let end: Vec<f32> = logits.end.into_data().to_vec().unwrap();
        let mut worst = 0.0f32;
        for (row, f) in expected.features.iter().enumerate() {
            let at = row * len;
            for (ours, theirs) in [(&start, &f.start_logits), (&end, &f.end_logits)] {
                for (i, want) in theirs.iter().enumerate() {
                    worst = worst.max((ours[at + i] - want).abs());
                }
                assert!(
                    ours[at + theirs.len()..at + len]
                        .iter()
                        .all(|&v| v == MASKED_LOGIT)
                );
            }
        }
        eprintln!("{family}: largest logit difference to transformers {worst:e}");
        assert!(worst < 1e-4, "{family}: logits differ by {worst}");
    }
}

/// bf16 matrix products (weights, norms and softmax in f32) keep every family's logits within
/// 2% of their f32 range: each product carries bf16's 2⁻⁹ relative rounding of its operands.
/// Checked on burn-flex, which runs bf16 arithmetic; GPUs are unverified until one runs it.
#[test]
fn bf16_logits_stay_close_to_f32_for_every_family() {
    let device = Default::default();
    for family in FAMILIES {
        let expected = expected(family);
        let loaded = load_pretrained::<CpuBackend>(&fixtures().join(family), &device).unwrap();
        let (input, _) = fixture_input(&expected, loaded.config.pad_token_id, &device);
        let exact = loaded.model.forward(&input);
        let mixed = loaded.model.with_precision(Precision::Bf16).forward(&input);
        let mut range = 0.0f32;
        let mut worst = 0.0f32;
        for (e, m) in [(exact.start, mixed.start), (exact.end, mixed.end)] {
            let (e, m): (Vec<f32>, Vec<f32>) = (
                e.into_data().to_vec().unwrap(),
                m.into_data().to_vec().unwrap(),
            );
            for (a, b) in e.iter().zip(&m).filter(|(a, _)| **a != MASKED_LOGIT) {
                range = range.max(a.abs());
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("{family}: bf16 differs by {worst:e} at most, logits up to {range:e}");
        assert!(worst > 0.0, "{family}: bf16 changed nothing");
        assert!(worst <= 0.02 * range, "{family}: {worst} of {range}");
    }
}

/// `QuestionAnswerer` on the fixture's questions gives the answers of run_qa's post-processing
/// (n-best 20, answers of at most 30 tokens) over transformers' logits.
#[test]
fn answers_are_run_qas_for_every_family() {
    let dataset = questions();
    for family in FAMILIES {
        let expected = expected(family);
        let answerer =
            QuestionAnswerer::<CpuBackend>::load(&fixtures().join(family), Default::default())
                .unwrap();
        let mut settings = *answerer.settings();
        settings.window = expected.window;
        settings.decode.n_best_size = 20;
        settings.decode.max_answer_length = 30;
        let answerer = answerer.with_settings(settings).unwrap();
        let evaluation = answerer.evaluate(&dataset).unwrap();
        let ours: BTreeMap<String, String> = evaluation
            .predictions
            .answers()
            .into_iter()
            .map(|(id, a)| (id.to_string(), a.to_string()))
            .collect();
        assert_eq!(ours, expected.predictions, "{family}");
    }
}

/// A saved model is the family's own Hugging Face layout: the tensor names and shapes
/// transformers wrote, the family's model_type and architecture, and the same logits back.
#[test]
fn saving_writes_each_familys_own_layout() {
    let device = Default::default();
    for family in FAMILIES {
        let source = fixtures().join(family);
        let loaded = load_pretrained::<CpuBackend>(&source, &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&loaded.model, &loaded.config, Some(&source), dir.path()).unwrap();
        assert_eq!(
            tensor_shapes(&dir.path().join("model.safetensors")),
            tensor_shapes(&source.join("model.safetensors")),
            "{family}"
        );
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        let original: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(config["model_type"], original["model_type"], "{family}");
        assert_eq!(
            config["architectures"], original["architectures"],
            "{family}"
        );
        for key in original.as_object().unwrap().keys() {
            assert!(
                config.get(key).is_some(),
                "{family}: config.json lost {key}"
            );
        }
        assert!(dir.path().join("tokenizer.json").is_file());
        let back = load_pretrained::<CpuBackend>(dir.path(), &device).unwrap();
        assert_eq!(back.config.family, loaded.config.family);
        let settings = AnsweringSettings::defaults_for(&back.config);
        assert!(back.config.check_window(&settings.window).is_ok());
    }
}

fn tensor_shapes(path: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    file.tensors()
        .into_iter()
        .map(|(name, view)| (name, view.shape().to_vec()))
        .collect()
}

/// Another family's tokenizer, or a checkpoint that does not fit its config, gets an error that
/// names the file and what was expected.
#[test]
fn mismatched_tokenizers_and_checkpoints_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let roberta = fixtures().join("roberta");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(roberta.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::copy(
        fixtures().join("bert/tokenizer.json"),
        dir.path().join("tokenizer.json"),
    )
    .unwrap();
    let err = QuestionAnswerer::<CpuBackend>::load(dir.path(), Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");
    assert!(
        err.contains("separator") || err.contains("vocab_size"),
        "{err}"
    );

    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(roberta.join("config.json")).unwrap())
            .unwrap();
    config["model_type"] = "bert".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = load_pretrained::<CpuBackend>(dir.path(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(
        err.contains("missing tensors") && err.contains("embeddings"),
        "{err}"
    );

    config["model_type"] = "gpt2".into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = load_pretrained::<CpuBackend>(dir.path(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("config.json") && err.contains("'gpt2' is not supported"),
        "{err}"
    );
    assert!(
        err.contains("bert, distilbert, roberta, xlm-roberta, electra, deberta-v2"),
        "{err}"
    );
}
