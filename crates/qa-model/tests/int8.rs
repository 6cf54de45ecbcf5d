//! int8 models (`qa quantize`) on every family's fixture: close to f32, saved and loaded as
//! int8, answering like f32, runnable on a backend without int8 products, and a damaged file
//! named.

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use qa_data::{Dataset, LoadOptions};
use qa_model::{
    BertForQuestionAnswering, CpuBackend, MASKED_LOGIT, ModelError, QuestionAnswerer,
    load_pretrained, save_pretrained,
};
use safetensors::SafeTensors;

#[path = "../../../tests/support/made_up.rs"]
mod made_up;
#[path = "../../../tests/support/mod.rs"]
mod support;

use made_up::made_up_input;
use support::{FAMILIES, family};

/// Start then end logits of the unpadded positions.
fn logits<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    pad_id: usize,
    device: &B::Device,
) -> Vec<f32> {
    let out = model.forward(&made_up_input::<B>(pad_id, device));
    let mut values: Vec<f32> = out.start.into_data().to_vec().unwrap();
    values.extend(out.end.into_data().to_vec::<f32>().unwrap());
    values.retain(|&v| v != MASKED_LOGIT);
    values
}

/// The largest difference between `a` and `b`, and the largest |a|.
fn worst_and_range(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0.0f32, 0.0f32), |(w, r), (x, y)| {
        (w.max((x - y).abs()), r.max(x.abs()))
    })
}

/// int8 weights, activations and embedding tables keep every family's logits within 2% of their
/// f32 range (two 8-bit roundings per product, through every layer of a random model).
#[test]
fn int8_logits_stay_close_to_f32_for_every_family() {
    let device = Default::default();
    for name in FAMILIES {
        let loaded = load_pretrained::<CpuBackend>(&family(name), &device).unwrap();
        let pad = loaded.config.pad_token_id;
        let exact = logits(&loaded.model, pad, &device);
        let int8 = loaded.model.quantized();
        let layers = int8.int8().map_or(0, |w| w.len());
        assert!(
            layers >= 6 * loaded.config.num_hidden_layers,
            "{name}: {layers} int8 layers"
        );
        let (worst, range) = worst_and_range(&exact, &logits(&int8, pad, &device));
        eprintln!("{name}: int8 differs by {worst:e} at most, logits up to {range:e}");
        assert!(worst > 0.0, "{name}: int8 changed nothing");
        assert!(worst <= 0.02 * range, "{name}: {worst} of {range}");
    }
}

fn answers(dir: &Path, dataset: &Dataset) -> BTreeMap<String, String> {
    let answerer = QuestionAnswerer::<CpuBackend>::load(dir, Default::default()).unwrap();
    let evaluation = answerer.evaluate(dataset).unwrap();
    evaluation
        .predictions
        .answers()
        .into_iter()
        .map(|(id, a)| (id.to_string(), a.to_string()))
        .collect()
}

/// A saved int8 model says so in config.json, stores int8 codes with one scale per output
/// channel, is about a quarter of the f32 file, loads as int8 with the same logits, and answers
/// most of the fixture questions as f32 does (random tiny models have near ties).
#[test]
fn a_saved_int8_model_loads_as_int8_and_answers_like_f32() {
    let device = Default::default();
    let dataset = Dataset::load(
        support::family_fixtures().join("questions.json"),
        LoadOptions::default(),
    )
    .unwrap();
    let (mut agree, mut total) = (0, 0);
    for name in FAMILIES {
        let dir = tempfile::tempdir().unwrap();
        let loaded = load_pretrained::<CpuBackend>(&family(name), &device).unwrap();
        let pad = loaded.config.pad_token_id;
        let int8 = loaded.model.clone().quantized();
        let (f32_dir, int8_dir) = (dir.path().join("f32"), dir.path().join("int8"));
        save_pretrained(&loaded.model, &loaded.config, Some(&family(name)), &f32_dir).unwrap();
        save_pretrained(&int8, &loaded.config, Some(&family(name)), &int8_dir).unwrap();

        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(int8_dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            config["quantization_config"]["quant_method"], "qa-int8",
            "{name}"
        );
        let bytes = std::fs::read(int8_dir.join("model.safetensors")).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let names = file.names();
        let int8_tensors: Vec<_> = names
            .iter()
            .filter(|n| file.tensor(n).unwrap().dtype() == safetensors::Dtype::I8)
            .collect();
        // Every linear layer of the encoder and the embedding tables, each with its scales.
        assert!(int8_tensors.len() > int8.int8().unwrap().len(), "{name}");
        for tensor in &int8_tensors {
            let scale = format!("{tensor}_scale");
            assert!(names.iter().any(|n| **n == scale), "{name}: {tensor}");
        }
        assert!(
            !int8_dir.join("model.burn.bin").exists(),
            "{name}: an f32 record beside int8"
        );
        let f32_size = std::fs::metadata(f32_dir.join("model.safetensors"))
            .unwrap()
            .len();
        eprintln!("{name}: int8 file {} bytes, f32 {f32_size}", bytes.len());
        // About a quarter: layer norms, biases, the span head and ELECTRA's embedding projection
        // stay f32, a larger share of a tiny model than of a real one.
        assert!((bytes.len() as f64) < 0.4 * f32_size as f64, "{name}");

        let reloaded = load_pretrained::<CpuBackend>(&int8_dir, &device).unwrap();
        assert!(reloaded.report.dtypes.contains(&"I8".to_string()), "{name}");
        assert!(reloaded.model.int8().is_some(), "{name}: loaded as f32");
        let (worst, range) = worst_and_range(
            &logits(&int8, pad, &device),
            &logits(&reloaded.model, pad, &device),
        );
        assert!(
            worst <= 1e-5 * range.max(1.0),
            "{name}: reloaded differs by {worst}"
        );

        let (ours, theirs) = (answers(&int8_dir, &dataset), answers(&f32_dir, &dataset));
        total += theirs.len();
        agree += theirs
            .iter()
            .filter(|(id, a)| ours.get(*id) == Some(a))
            .count();
    }
    eprintln!("int8 answers equal f32's for {agree} of {total} fixture questions");
    assert!(agree * 10 >= total * 8, "{agree} of {total}");
}

/// A backend without int8 products (NdArray, as CUDA and wgpu) runs the weights the codes stand
/// for, in f32: within the same bound of the int8 CPU path.
#[test]
fn an_int8_model_runs_on_other_backends_with_its_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load_pretrained::<CpuBackend>(&family("bert"), &Default::default()).unwrap();
    let pad = loaded.config.pad_token_id;
    let int8 = loaded.model.quantized();
    save_pretrained(&int8, &loaded.config, Some(&family("bert")), dir.path()).unwrap();
    let other = load_pretrained::<NdArray>(dir.path(), &Default::default()).unwrap();
    let on_other = logits(&other.model, pad, &Default::default());
    let (worst, range) = worst_and_range(&on_other, &logits(&int8, pad, &Default::default()));
    assert!(worst > 0.0 && worst <= 0.02 * range, "{worst} of {range}");
}

/// An int8 tensor without its scales is refused, naming the file and the tensor.
#[test]
fn int8_codes_without_scales_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let loaded = load_pretrained::<CpuBackend>(&family("bert"), &Default::default()).unwrap();
    save_pretrained(&loaded.model.quantized(), &loaded.config, None, dir.path()).unwrap();
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let dropped = "bert.encoder.layer.0.attention.self.query.weight_scale";
    let kept: Vec<_> = file
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != dropped)
        .collect();
    assert_eq!(kept.len() + 1, file.len(), "{dropped} was saved");
    std::fs::write(&path, safetensors::serialize(kept, None).unwrap()).unwrap();
    let err = match load_pretrained::<CpuBackend>(dir.path(), &Default::default()) {
        Err(e @ ModelError::Weights { .. }) => e.to_string(),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("loaded without scales"),
    };
    assert!(
        err.contains("model.safetensors") && err.contains(dropped),
        "{err}"
    );
}
