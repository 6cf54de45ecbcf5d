//! The `qa` binary end to end: exit codes, messages and files. The HTTP server has its own
//! file, `serve.rs`. A tiny randomly initialised model stands in for a trained one, so these run
//! anywhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{CONTEXT, qa, run, stderr, stdout, tiny_model};

#[path = "../../../tests/support/mod.rs"]
mod support;
use support::FAMILIES;

#[test]
fn evaluate_equals_the_official_scripts() {
    let fixtures = support::repo_root().join("tests/fixtures");
    let cases = [
        (
            "datasets/squad-sample/dev.json",
            "sample-dev-predictions.json",
            None,
            None,
            "sample-dev-expected.json",
        ),
        (
            "datasets/test.json",
            "test-predictions.json",
            Some("test-na-probs.json"),
            None,
            "test-expected.json",
        ),
        (
            "datasets/test.json",
            "test-predictions.json",
            Some("test-na-probs.json"),
            Some("0.5"),
            "test-expected-thresh-0.5.json",
        ),
    ];
    for (data, preds, na, thresh, expected) in cases {
        let mut cmd = qa();
        cmd.args(["evaluate", "--json", "--data"])
            .arg(support::repo_root().join(data))
            .arg("--predictions")
            .arg(fixtures.join(preds));
        if let Some(na) = na {
            cmd.arg("--na-probs").arg(fixtures.join(na));
        }
        if let Some(t) = thresh {
            cmd.args(["--na-prob-thresh", t]);
        }
        let out = run(&mut cmd);
        assert!(out.status.success(), "{}", stderr(&out));
        let got: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let want: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures.join(expected)).unwrap())
                .unwrap();
        assert_eq!(got, want, "{data} with {preds}");
    }
}

#[test]
fn bad_input_exits_1_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "a", "question": 3}]}]}]}"#,
    )
    .unwrap();
    let out = run(qa().args(["data", "check", "--data"]).arg(&bad));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("data[0].paragraphs[0].qas[0].question"),
        "{}",
        stderr(&out)
    );

    let out = run(qa().args(["data", "check", "--data", "/no/such/file.json"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/no/such/file.json"),
        "{}",
        stderr(&out)
    );

    let out = run(qa()
        .args(["evaluate", "--data"])
        .arg(support::repo_root().join("datasets/test.json")));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--predictions"), "{}", stderr(&out));

    let out = run(qa().args(["frobnicate"]));
    assert_eq!(out.status.code(), Some(1));

    let out = run(qa().args(["data", "check", "--help"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("--max-seq-length"));
}

#[test]
fn data_check_counts_answers_lost_to_short_windows() {
    let data = support::repo_root().join("datasets/train.json");
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out = run(qa()
        .args([
            "data",
            "check",
            "--json",
            "--max-seq-length",
            "32",
            "--doc-stride",
            "0",
            "--max-query-length",
            "8",
            "--data",
        ])
        .arg(&data)
        .arg("--tokenizer")
        .arg(&model));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let stats = &v["windowing"]["stats"];
    assert!(stats["features"].as_u64().unwrap() > v["report"]["questions"].as_u64().unwrap());
    assert!(
        stats["answers_outside_every_window"].as_u64().unwrap() > 0,
        "{stats}"
    );
}

#[test]
fn predict_answers_with_spans_in_the_context() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let questions = dir.path().join("q.jsonl");
    std::fs::write(
        &questions,
        "\"When was the tower built?\"\n{\"question\": \"What is Paris?\"}\n",
    )
    .unwrap();
    let out = run(qa()
        .args([
            "predict",
            "--json",
            "--n-best",
            "2",
            "--context",
            CONTEXT,
            "--model",
        ])
        .arg(&model)
        .arg("--questions-file")
        .arg(&questions));
    assert!(out.status.success(), "{}", stderr(&out));
    let answers: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(answers.len(), 2);
    for a in &answers {
        let (s, e) = (
            a["start"].as_u64().unwrap() as usize,
            a["end"].as_u64().unwrap() as usize,
        );
        let span: String = CONTEXT.chars().skip(s).take(e - s).collect();
        assert_eq!(a["answer"].as_str().unwrap(), span);
        assert!(a["candidates"].as_array().unwrap().len() <= 2);
        let p = a["probability"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&p));
    }
    let out = run(qa()
        .args([
            "predict",
            "--context",
            CONTEXT,
            "--question",
            " ",
            "--model",
        ])
        .arg(&model));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("empty"), "{}", stderr(&out));
}

/// `--precision bf16` answers on a CPU with AVX-512 BF16 and is refused on one without, saying
/// why; `--device wgpu` in a build without the feature is an error saying so, not a crash.
#[test]
fn precision_and_device_flags_reach_the_model_or_say_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let predict = |extra: &[&str]| {
        run(qa()
            .args(["predict", "--json", "--context", CONTEXT])
            .args(["--question", "When was the tower built?", "--model"])
            .arg(&model)
            .args(extra))
    };
    let bf16_native = qa_model::kernels::bf16_native();
    if !bf16_native {
        let out = predict(&["--device", "cpu", "--precision", "bf16"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(stderr(&out).contains("AVX-512 BF16"), "{}", stderr(&out));
    }
    let precisions: &[&str] = if bf16_native {
        &["f32", "bf16"]
    } else {
        &["f32"]
    };
    for &precision in precisions {
        let out = predict(&["--device", "cpu", "--precision", precision]);
        assert!(out.status.success(), "{precision}: {}", stderr(&out));
        let answers: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(answers.len(), 1, "{precision}");
        assert!(answers[0]["answer"].is_string(), "{precision}");
    }
    if cfg!(not(feature = "wgpu")) {
        let out = predict(&["--device", "wgpu"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("built without the `wgpu` feature"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn evaluate_with_a_model_writes_prediction_files_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let out_dir = dir.path().join("eval");
    let args = |cmd: &mut Command| {
        cmd.args([
            "evaluate",
            "--device",
            "cpu",
            "--max-seq-length",
            "64",
            "--doc-stride",
            "16",
            "--max-query-length",
            "16",
            "--data",
        ])
        .arg(support::repo_root().join("datasets/test.json"))
        .arg("--model")
        .arg(&model)
        .arg("--output-dir")
        .arg(&out_dir);
    };
    let mut cmd = qa();
    args(&mut cmd);
    let out = run(cmd.arg("--json"));
    assert!(out.status.success(), "{}", stderr(&out));
    let scores: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(scores["total"], 144);
    for f in [
        "predictions.json",
        "nbest_predictions.json",
        "null_odds.json",
    ] {
        assert!(out_dir.join(f).is_file(), "{f} missing");
    }
    let preds: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("predictions.json")).unwrap())
            .unwrap();
    assert_eq!(preds.len(), 144);
    let mut cmd = qa();
    args(&mut cmd);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
}

#[test]
fn chat_reads_piped_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let mut child = qa()
        .args(["chat", "--model"])
        .arg(&model)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let script =
        format!("{CONTEXT}\n\nWhen was the tower built?\n/nbest 2\n/frob\nWhat is Paris?\n/quit\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(text.matches("answer: ").count(), 2, "{text}");
    assert!(text.contains("from: ") && text.contains("**"), "{text}");
    assert!(text.contains("showing 2 candidates"), "{text}");
    assert!(text.contains("unknown command /frob"), "{text}");
}

/// The tiny model without its span head (and without the burn record beside the weights), as a
/// base encoder checkpoint comes.
fn tiny_encoder(dir: &Path) -> PathBuf {
    let model_dir = tiny_model(dir);
    std::fs::remove_file(model_dir.join(qa_model::record::BURN_RECORD_FILE)).unwrap();
    let file = model_dir.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<_> = tensors
        .tensors()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("qa_outputs."))
        .collect();
    assert!(kept.len() < tensors.len(), "the tiny model had a head");
    safetensors::serialize_to_file(kept, None, &file).unwrap();
    model_dir
}

#[test]
fn evaluate_draws_a_missing_head_from_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_encoder(dir.path());
    let nbest = |seed: &str, out: &str| {
        let out_dir = dir.path().join(out);
        let result = run(qa()
            .args(["evaluate", "--device", "cpu", "--max-seq-length", "64"])
            .args([
                "--doc-stride",
                "16",
                "--max-query-length",
                "16",
                "--seed",
                seed,
            ])
            .arg("--data")
            .arg(support::repo_root().join("datasets/test.json"))
            .arg("--model")
            .arg(&model)
            .arg("--output-dir")
            .arg(&out_dir));
        assert!(result.status.success(), "{}", stderr(&result));
        assert!(
            stderr(&result).contains("initialised a new one"),
            "{}",
            stderr(&result)
        );
        std::fs::read_to_string(out_dir.join("nbest_predictions.json")).unwrap()
    };
    let first = nbest("3", "a");
    assert_eq!(first, nbest("3", "b"), "same seed, same head");
    assert_ne!(first, nbest("4", "c"), "another seed, another head");
}

#[test]
fn training_on_data_with_no_usable_answer_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = dir.path().join("train.json");
    std::fs::write(
        &data,
        r#"[{"context": "Paris is a city of France.", "qas": [{"id": "a", "question": "What is Paris?", "is_impossible": false, "answers": [{"text": "Lyon", "answer_start": 3}]}]}]"#,
    )
    .unwrap();
    let config = dir.path().join("train.toml");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\ntrain_data = {:?}\noutput_dir = {:?}\nmax_seq_length = 32\ndoc_stride = 8\nmax_query_length = 8\nevaluate_during_training = false\ndevice = \"cpu\"\n",
            model,
            data,
            dir.path().join("out")
        ),
    )
    .unwrap();
    let out = run(qa().args(["train", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("no trainable features"), "{err}");
    assert!(err.contains("does not occur in the context"), "{err}");
}

#[test]
fn help_lists_the_values_of_every_choice() {
    for command in ["predict", "chat", "serve", "evaluate"] {
        let out = run(qa().args([command, "--help"]));
        assert!(out.status.success());
        let help = stdout(&out);
        assert!(
            help.contains("[default: auto]")
                && help.contains("[possible values: auto, cuda, wgpu, cpu]")
                && help.contains("[default: f32]")
                && help.contains("[possible values: f32, bf16]"),
            "qa {command} --help:\n{help}"
        );
    }
    let help = stdout(&run(qa().args(["train", "--help"])));
    assert!(help.contains("[possible values: f32, bf16]"), "{help}");
    let help = stdout(&run(qa().args(["data", "check", "--help"])));
    assert!(
        help.contains("[possible values: realign, skip, error]"),
        "{help}"
    );
}

/// A flat-list dataset of one context whose two answers the tiny vocabulary spells (scored as
/// SQuAD v2.0, as every file with `is_impossible` keys is).
fn tiny_dataset(dir: &Path) -> PathBuf {
    let data = dir.join("data.json");
    std::fs::write(
        &data,
        format!(
            r#"[{{"context": {CONTEXT:?}, "qas": [
  {{"id": "a", "question": "When was the tower built?", "is_impossible": false, "answers": [{{"text": "1889", "answer_start": 50}}]}},
  {{"id": "b", "question": "What is Paris?", "is_impossible": false, "answers": [{{"text": "a city of France", "answer_start": 9}}]}}]}}]"#
        ),
    )
    .unwrap();
    data
}

/// Training writes the windows and decoding it used into the model directories, and `qa
/// evaluate` answers with them: the same predictions as the same values given as flags to the
/// same weights without the file.
#[test]
fn a_trained_model_answers_with_the_settings_it_was_trained_with() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let data = tiny_dataset(dir.path());
    let out = dir.path().join("out");
    let config = dir.path().join("train.toml");
    std::fs::write(
        &config,
        format!(
            "model = {model:?}\ntrain_data = {data:?}\noutput_dir = {out:?}\nmax_seq_length = 40\ndoc_stride = 8\nmax_query_length = 10\nn_best_size = 5\nmax_answer_length = 3\nnull_score_diff_threshold = 0.5\nevaluate_during_training = false\nsave_model_every_epoch = false\nsave_steps = 0\ndevice = \"cpu\"\n"
        ),
    )
    .unwrap();
    let trained = run(qa().args(["train", "--config"]).arg(&config));
    assert!(trained.status.success(), "{}", stderr(&trained));
    for model_dir in [out.clone(), out.join("best_model")] {
        let settings: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(model_dir.join("answering.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            settings,
            serde_json::json!({
                "window": {"max_seq_length": 40, "doc_stride": 8, "max_query_length": 10},
                "decode": {"n_best_size": 5, "max_answer_length": 3,
                           "null_score_diff_threshold": 0.5, "version_2_with_negative": true}
            }),
            "{}",
            model_dir.display()
        );
    }

    let nbest = |model: &Path, flags: &[&str], name: &str| {
        let eval_dir = dir.path().join(name);
        let result = run(qa()
            .args(["evaluate", "--device", "cpu", "--data"])
            .arg(&data)
            .arg("--model")
            .arg(model)
            .arg("--output-dir")
            .arg(&eval_dir)
            .args(flags));
        assert!(result.status.success(), "{}", stderr(&result));
        let read = |f: &str| std::fs::read_to_string(eval_dir.join(f)).unwrap();
        read("nbest_predictions.json") + &read("predictions.json")
    };
    let with_file = nbest(&out, &[], "with-file");
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors", "vocab.txt"] {
        let from = if f == "vocab.txt" {
            model.join(f)
        } else {
            out.join(f)
        };
        std::fs::copy(from, bare.join(f)).unwrap();
    }
    let flags = [
        "--max-seq-length",
        "40",
        "--doc-stride",
        "8",
        "--max-query-length",
        "10",
        "--n-best",
        "5",
        "--max-answer-length",
        "3",
        "--null-score-diff-threshold",
        "0.5",
    ];
    assert_eq!(with_file, nbest(&bare, &flags, "with-flags"));
    assert_ne!(
        with_file,
        nbest(&bare, &[], "defaults"),
        "run_qa's defaults (n-best 20, answers up to 30 tokens) give other candidates"
    );
    // Answers are at most 3 tokens long, as the model's settings say.
    let nbest_file = dir.path().join("with-file/nbest_predictions.json");
    let candidates: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(nbest_file).unwrap()).unwrap();
    for c in candidates["a"].as_array().unwrap() {
        let words = c["text"].as_str().unwrap().split_whitespace().count();
        assert!(words <= 3, "{c}");
    }
}

/// Every family's tiny model (tests/fixtures/families) fine-tunes with `qa train` on the CPU
/// kernels, its training loss falls, and the model it writes is the family's own layout, which
/// `qa evaluate` then answers with.
#[test]
fn every_family_trains_saves_in_its_own_layout_and_evaluates() {
    let fixtures = support::family_fixtures();
    let data = fixtures.join("questions.json");
    for family in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let config = dir.path().join("train.toml");
        std::fs::write(
            &config,
            format!(
                "model = {:?}\ntrain_data = {data:?}\noutput_dir = {out:?}\nmax_seq_length = 96\ndoc_stride = 24\nmax_query_length = 32\nnum_train_epochs = 8\ntrain_batch_size = 16\nlearning_rate = 1e-3\nwarmup_ratio = 0.0\nlogging_steps = 1\nevaluate_during_training = false\nsave_model_every_epoch = false\nsave_steps = 0\ndevice = \"cpu\"\n",
                fixtures.join(family)
            ),
        )
        .unwrap();
        let trained = run(qa().args(["train", "--json", "--config"]).arg(&config));
        assert!(trained.status.success(), "{family}: {}", stderr(&trained));
        let losses: Vec<f64> = std::fs::read_to_string(out.join("training_loss.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect();
        assert!(losses.len() >= 8, "{family}: {losses:?}");
        assert!(
            losses.last().unwrap() < &(losses[0] * 0.9),
            "{family}: the loss does not fall: {losses:?}"
        );
        let saved: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap())
                .unwrap();
        let original: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixtures.join(family).join("config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(saved["model_type"], original["model_type"], "{family}");
        assert_eq!(
            saved["architectures"], original["architectures"],
            "{family}"
        );
        let eval_dir = dir.path().join("eval");
        let evaluated = run(qa()
            .args(["evaluate", "--json", "--device", "cpu", "--data"])
            .arg(&data)
            .arg("--model")
            .arg(&out)
            .arg("--output-dir")
            .arg(&eval_dir));
        assert!(
            evaluated.status.success(),
            "{family}: {}",
            stderr(&evaluated)
        );
        let scores: serde_json::Value = serde_json::from_str(&stdout(&evaluated)).unwrap();
        let predictions: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(eval_dir.join("predictions.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(predictions.len(), 12, "{family}");
        // Trained on these very questions: it has learnt some of them.
        assert!(scores["f1"].as_f64().unwrap() > 0.0, "{family}: {scores}");
        eprintln!(
            "{family}: losses {:.3} -> {:.3}, {scores}",
            losses[0],
            losses.last().unwrap()
        );
    }
}

/// `qa quantize` writes an int8 copy that `qa predict` loads like any model and training
/// refuses; it never writes over a directory without `--overwrite`, nor over its own input.
#[test]
fn quantize_writes_an_int8_model_that_answers_and_is_not_trained() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let int8 = dir.path().join("int8");
    let quantize = |output: &Path, extra: &[&str]| {
        run(qa()
            .args(["quantize", "--json", "--model"])
            .arg(&model)
            .arg("--output")
            .arg(output)
            .args(extra))
    };
    let out = quantize(&int8, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(summary["int8_layers"], 12, "{summary}");
    assert!(summary["weights_bytes"].as_u64() < summary["source_weights_bytes"].as_u64());
    let config = std::fs::read_to_string(int8.join("config.json")).unwrap();
    assert!(config.contains("qa-int8"), "{config}");

    let out = run(qa()
        .args(["predict", "--json", "--device", "cpu", "--context", CONTEXT])
        .args(["--question", "When was the tower built?", "--model"])
        .arg(&int8));
    assert!(out.status.success(), "{}", stderr(&out));
    let answers: Vec<serde_json::Value> = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(answers[0]["answer"].is_string());

    let again = quantize(&int8, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--overwrite"), "{}", stderr(&again));
    assert!(quantize(&int8, &["--overwrite"]).status.success());
    let onto_itself = quantize(&model, &["--overwrite"]);
    assert_eq!(onto_itself.status.code(), Some(1));
    assert!(stderr(&onto_itself).contains("the model being quantized"));
    let twice = run(qa()
        .args(["quantize", "--model"])
        .arg(&int8)
        .arg("--output")
        .arg(dir.path().join("twice")));
    assert!(
        stderr(&twice).contains("int8 already"),
        "{}",
        stderr(&twice)
    );

    let config = dir.path().join("train.toml");
    let out_dir = dir.path().join("out");
    std::fs::write(
        &config,
        format!(
            "model = {:?}\ntrain_data = {:?}\noutput_dir = {:?}\ndevice = \"cpu\"\nevaluate_during_training = false\n",
            int8,
            support::repo_root().join("datasets/train.json"),
            out_dir
        ),
    )
    .unwrap();
    let out = run(qa().args(["train", "--config"]).arg(&config));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("int8 model"), "{}", stderr(&out));
    assert!(!out_dir.exists(), "training created its output dir");
}
