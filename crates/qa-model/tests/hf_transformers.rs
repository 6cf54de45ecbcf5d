//! A saved model loads in Hugging Face transformers as it is, and gives our logits.
//!
//! Needs `QA_SHARED_DIR` (the shared MiniLM) and `QA_TORCH_PYTHON`, a Python with torch and
//! transformers (see tests/support): ignored without them. CI has no torch and skips
//! `with_torch::`, so this runs on machines that have it (the result is in the issue notes).

use std::process::Command;

use qa_model::{BertInput, CpuBackend, MASKED_LOGIT, load_pretrained, save_pretrained};

#[path = "../../../tests/support/mod.rs"]
mod support;

/// `.ci/run` skips this module unless `QA_TORCH_PYTHON` is set.
mod with_torch {
    use super::*;

    #[test]
    #[ignore = "needs QA_TORCH_PYTHON and QA_SHARED_DIR"]
    fn saved_model_loads_in_transformers_with_the_same_logits() {
        let python = support::torch_python();
        let source = support::shared_minilm();
        let device = Default::default();
        // The base encoder gets a freshly drawn span head: saving must carry it over exactly.
        let loaded = load_pretrained::<CpuBackend>(&source, &device).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("model");
        save_pretrained(
            &loaded.model,
            &loaded.config,
            Some(&source.join("tokenizer.json")),
            &saved,
        )
        .unwrap();

        // Two rows, the second padded, so the mask is exercised on both sides.
        let input_ids = vec![
            vec![
                101, 2054, 2003, 1996, 3007, 102, 1996, 3007, 2003, 3000, 1012, 102,
            ],
            vec![
                101, 2040, 2001, 2009, 102, 2009, 2001, 2032, 1012, 102, 0, 0,
            ],
        ];
        let token_type_ids = vec![
            vec![0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1],
            vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0],
        ];
        let attention_mask: Vec<Vec<i32>> = input_ids
            .iter()
            .enumerate()
            .map(|(row, ids)| {
                (0..ids.len())
                    .map(|i| i32::from(row == 0 || i < 10))
                    .collect()
            })
            .collect();
        let inputs = dir.path().join("inputs.json");
        std::fs::write(
            &inputs,
            serde_json::json!({
                "input_ids": input_ids,
                "token_type_ids": token_type_ids,
                "attention_mask": attention_mask,
            })
            .to_string(),
        )
        .unwrap();
        let script = support::repo_root().join("tests/parity/hf_load_saved.py");
        let output = Command::new(&python)
            .arg(&script)
            .arg(&saved)
            .arg(&inputs)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "transformers could not load the saved directory:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let theirs: serde_json::Value = serde_json::from_str(
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .last()
                .unwrap(),
        )
        .unwrap();

        let (batch, seq) = (input_ids.len(), input_ids[0].len());
        let flat = |rows: &Vec<Vec<i32>>| rows.iter().flatten().copied().collect::<Vec<i32>>();
        let padding = flat(&attention_mask).iter().map(|&m| m == 0).collect();
        let x = BertInput::<CpuBackend>::from_host(
            flat(&input_ids),
            flat(&token_type_ids),
            padding,
            [batch, seq],
            &device,
        );
        let ours = loaded.model.forward(&x);
        let mut worst = 0.0f32;
        for (name, ours) in [("start_logits", ours.start), ("end_logits", ours.end)] {
            let ours: Vec<f32> = ours.into_data().to_vec().unwrap();
            let theirs: Vec<f32> = theirs[name]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|row| row.as_array().unwrap().iter())
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(ours.len(), theirs.len());
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                // Padding positions: we mask them, transformers leaves them as computed.
                if *a == MASKED_LOGIT {
                    assert!(i % seq >= 10, "{name}[{i}] masked but not padding");
                    continue;
                }
                worst = worst.max((a - b).abs());
            }
        }
        eprintln!("max abs difference of span logits to transformers: {worst:e}");
        assert!(
            worst < 1e-4,
            "span logits differ from transformers by {worst}"
        );
    }
}
