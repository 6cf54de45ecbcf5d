//! bf16 mixed precision on the CPU: where the CPU has AVX-512 BF16, the CPU kernels multiply
//! bf16 operands with `vdpbf16ps` and sum in f32; elsewhere `precision = "bf16"` is refused (its
//! products, emulated, would be slower than f32). burn's bf16 operations, what a GPU runs, are
//! checked at the operation level in qa-model (`precision`, `kernels` tests).

use burn::backend::{Autodiff, Flex};

mod common;

use common::{close, config, losses, start_model};

/// Eight updates from one starting model in f32 and in bf16: the bf16 run learns, and its loss
/// stays within 1% of the f32 run's after every update (bf16 keeps 8 significant bits, so each
/// product is off by about 0.4% of its terms; the weights and their updates stay f32).
///
/// Where the CPU lacks AVX-512 BF16, the same config is refused before training, saying why.
#[test]
fn a_bf16_run_tracks_the_f32_run_where_the_cpu_has_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let start = start_model(dir.path());
    let extra = "max_steps = 8\nnum_train_epochs = 4\n";
    let f32_config = config(&start, &dir.path().join("f32"), extra);
    let bf16_config = config(
        &start,
        &dir.path().join("bf16"),
        &format!("{extra}precision = \"bf16\"\n"),
    );
    if !qa_model::kernels::bf16_native() {
        let options = qa_train::RunOptions::default();
        let err = qa_train::trainer::train::<Autodiff<Flex>>(
            &bf16_config,
            &options,
            Default::default(),
            &|_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("AVX-512 BF16"), "{err}");
        assert!(
            !bf16_config.output_dir.exists(),
            "refused after creating the output"
        );
        return;
    }
    let exact = losses::<Autodiff<Flex>>(&f32_config, Default::default());
    let mixed = losses::<Autodiff<Flex>>(&bf16_config, Default::default());
    eprintln!("losses, f32: {exact:?}\nlosses, bf16: {mixed:?}");
    assert_eq!(exact.len(), 8, "{exact:?}");
    assert_eq!(mixed.len(), exact.len(), "{mixed:?}");
    assert!(
        mixed[7] < mixed[0] * 0.9,
        "the bf16 run does not learn: {mixed:?}"
    );
    assert_ne!(
        mixed, exact,
        "bf16 changed nothing: is the precision applied?"
    );
    for (step, (m, e)) in mixed.iter().zip(&exact).enumerate() {
        assert!(
            close(*m, *e, 1e-2),
            "update {}: bf16 {m}, f32 {e}",
            step + 1
        );
    }
}

/// `qa train --precision` and the config key reach the run: an unknown value names the key.
#[test]
fn an_unknown_precision_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "model = \"m\"\ntrain_data = \"t.json\"\nprecision = \"fp8\"\n",
    )
    .unwrap();
    let err = qa_train::TrainConfig::load(&path, &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("precision") && err.contains("fp8"), "{err}");
}
