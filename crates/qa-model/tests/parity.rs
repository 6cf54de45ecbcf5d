//! Parity with Hugging Face transformers: the last hidden states of all-MiniLM-L6-v2 for three
//! question/context pairs must match `BertModel` (fp32, CPU) within 1e-4.
//!
//! Needs the shared assets (`QA_SHARED_DIR`, see tests/support): ignored without them.

use qa_model::{BertInput, CpuBackend, load_pretrained};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    input_ids: Vec<Vec<i32>>,
    token_type_ids: Vec<Vec<i32>>,
    attention_mask: Vec<Vec<i32>>,
    last_hidden_state: Vec<Vec<Vec<f32>>>,
}

#[path = "../../../tests/support/mod.rs"]
mod support;

use support::shared_dir;

#[test]
#[ignore = "needs QA_SHARED_DIR"]
fn minilm_hidden_states_match_transformers() {
    let shared = shared_dir();
    let golden: Golden = serde_json::from_str(
        &std::fs::read_to_string(shared.join("golden/minilm-l6-hidden-states.json")).unwrap(),
    )
    .unwrap();
    let device = Default::default();
    let loaded =
        load_pretrained::<CpuBackend>(&shared.join("models/all-MiniLM-L6-v2"), &device).unwrap();
    assert!(
        loaded.report.head_initialized,
        "the base encoder has no QA head"
    );

    let (b, s) = (golden.input_ids.len(), golden.input_ids[0].len());
    let padding: Vec<bool> = golden
        .attention_mask
        .iter()
        .flatten()
        .map(|&m| m == 0)
        .collect();
    let flat = |rows: &[Vec<i32>]| rows.iter().flatten().copied().collect::<Vec<i32>>();
    let input = BertInput::<CpuBackend>::from_host(
        flat(&golden.input_ids),
        flat(&golden.token_type_ids),
        padding,
        [b, s],
        &device,
    );
    let hidden: Vec<f32> = loaded
        .model
        .bert
        .forward(&input)
        .into_data()
        .to_vec()
        .unwrap();

    let mut max_diff = 0.0f32;
    for (i, seq) in golden.last_hidden_state.iter().enumerate() {
        for (t, row) in seq.iter().enumerate() {
            // Hidden states at padding positions are not meaningful: compare real tokens.
            if golden.attention_mask[i][t] == 0 {
                continue;
            }
            for (h, &want) in row.iter().enumerate() {
                let got = hidden[(i * s + t) * row.len() + h];
                max_diff = max_diff.max((got - want).abs());
            }
        }
    }
    println!("max abs difference to transformers: {max_diff:e}");
    assert!(max_diff < 1e-4, "max abs difference {max_diff}");
}
