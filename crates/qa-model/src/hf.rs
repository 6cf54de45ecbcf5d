//! Hugging Face checkpoints in and out.
//!
//! Loading reads `config.json` and `model.safetensors` (or `pytorch_model.bin`) of any supported
//! family, with or without the family's prefix (`bert.`, `roberta.`, ...), with or without a
//! `qa_outputs` head, in f32, f16 or bf16, and reports what it did not use. Saving writes a
//! directory transformers loads as the family's `...ForQuestionAnswering`: `config.json` in the
//! family's keys, `model.safetensors` with the family's tensor names, the tokenizer, and burn's
//! own record.
//!
//! Both walk one table, [`crate::params`], from each parameter to its HF name.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;

use crate::bert::{BertForQuestionAnswering, materialize};
use crate::config::{BertConfig, Family, Quantization};
use crate::error::{ModelError, write_atomic};
use crate::int8;
use crate::params::{HEAD_PREFIX, Slot, visit_parameters};
use crate::record::{BURN_RECORD_FILE, load_record, save_record};

pub const CONFIG_FILE: &str = "config.json";
pub const SAFETENSORS_FILE: &str = "model.safetensors";
pub const PYTORCH_FILE: &str = "pytorch_model.bin";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// An int8 weight `<name>` has its per-output scales in `<name>_scale`.
const INT8_SCALE_SUFFIX: &str = "_scale";

/// What loading did, for the user to read.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub weights_file: PathBuf,
    /// Stored element types, e.g. `["F16"]`.
    pub dtypes: Vec<String>,
    /// Whether tensor names carried the `bert.` prefix.
    pub prefixed: bool,
    pub loaded: usize,
    /// True when the file had no `qa_outputs` head and a fresh one was initialised.
    pub head_initialized: bool,
    /// Tensors in the file this model does not use (pooler, MLM head, position_ids buffer, ...).
    pub unused: Vec<String>,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loaded {} tensors ({}) from {}",
            self.loaded,
            self.dtypes.join(", "),
            self.weights_file.display()
        )?;
        if self.head_initialized {
            write!(
                f,
                "; no qa_outputs head in the checkpoint: initialised a new one"
            )?;
        }
        if !self.unused.is_empty() {
            write!(f, "; unused: {}", self.unused.join(", "))?;
        }
        Ok(())
    }
}

/// A model loaded from a Hugging Face directory.
pub struct LoadedModel<B: Backend> {
    pub model: BertForQuestionAnswering<B>,
    pub config: BertConfig,
    pub report: LoadReport,
}

/// A tensor read from a checkpoint, as f32 on the host.
struct HostTensor {
    shape: Vec<usize>,
    values: Vec<f32>,
    dtype: String,
}

/// Loads `config.json` plus weights from `dir` onto `device`.
pub fn load_pretrained<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    let config = BertConfig::load(&dir.join(CONFIG_FILE))?;
    let (weights_file, tensors) = read_checkpoint(dir)?;
    let model = BertForQuestionAnswering::init_lazy(&config, device);
    let (model, report) = apply_tensors(model, &config, &weights_file, tensors, device)?;
    materialize(&model);
    let model = as_configured(model, &config);
    Ok(LoadedModel {
        model,
        config,
        report,
    })
}

fn read_checkpoint(dir: &Path) -> Result<(PathBuf, HashMap<String, HostTensor>), ModelError> {
    let safetensors = dir.join(SAFETENSORS_FILE);
    let pytorch = dir.join(PYTORCH_FILE);
    if safetensors.is_file() {
        Ok((safetensors.clone(), read_safetensors(&safetensors)?))
    } else if pytorch.is_file() {
        Ok((pytorch.clone(), read_pytorch(&pytorch)?))
    } else {
        Err(ModelError::NoWeights {
            path: dir.to_path_buf(),
        })
    }
}

fn read_safetensors(path: &Path) -> Result<HashMap<String, HostTensor>, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    let weights_error = |message: String| ModelError::Weights {
        path: path.to_path_buf(),
        message,
    };
    let file = SafeTensors::deserialize(&bytes).map_err(|e| weights_error(e.to_string()))?;
    let mut out = HashMap::new();
    for (name, view) in file.tensors() {
        let data = view.data();
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            // An int8 weight's codes, scaled below.
            Dtype::I8 => data.iter().map(|&b| b as i8 as f32).collect(),
            // Integer buffers (position_ids) are not parameters; keep them only to report them.
            _ => Vec::new(),
        };
        let dtype = format!("{:?}", view.dtype());
        out.insert(
            name,
            HostTensor {
                shape: view.shape().to_vec(),
                values,
                dtype,
            },
        );
    }
    scale_int8(&mut out).map_err(weights_error)?;
    Ok(out)
}

/// `model` made int8 again where its config says it was saved so. Its weights were read as the
/// f32 values the codes stand for; quantizing those gives the same codes back (`int8`'s tests).
fn as_configured<B: Backend>(
    model: BertForQuestionAnswering<B>,
    config: &BertConfig,
) -> BertForQuestionAnswering<B> {
    match config.quantization {
        Some(_) => model.quantized(),
        None => model,
    }
}

/// Turns every int8 weight's codes into the f32 values they stand for, `code · scale` per
/// output row, dropping the scales.
fn scale_int8(tensors: &mut HashMap<String, HostTensor>) -> Result<(), String> {
    let int8: Vec<String> = tensors
        .iter()
        .filter(|(_, t)| t.dtype == "I8")
        .map(|(name, _)| name.clone())
        .collect();
    for name in int8 {
        let scale_name = format!("{name}{INT8_SCALE_SUFFIX}");
        let scales = tensors
            .remove(&scale_name)
            .ok_or_else(|| format!("{name}: int8 values without their scales ({scale_name})"))?;
        let weight = tensors.get_mut(&name).expect("listed above");
        let rows = weight.shape.first().copied().unwrap_or(0);
        if weight.shape.len() != 2 || scales.values.len() != rows {
            return Err(format!(
                "{scale_name}: {} scales for an int8 weight of shape {:?} (one per row expected)",
                scales.values.len(),
                weight.shape
            ));
        }
        let cols = weight.shape[1];
        for (row, scale) in weight.values.chunks_mut(cols.max(1)).zip(&scales.values) {
            row.iter_mut().for_each(|v| *v *= scale);
        }
    }
    Ok(())
}

fn read_pytorch(path: &Path) -> Result<HashMap<String, HostTensor>, ModelError> {
    let weights_error = |message: String| ModelError::Weights {
        path: path.to_path_buf(),
        message,
    };
    let reader =
        burn_store::pytorch::PytorchReader::new(path).map_err(|e| weights_error(e.to_string()))?;
    let mut out = HashMap::new();
    for (name, snapshot) in reader.into_tensors() {
        let data = snapshot
            .to_data()
            .map_err(|e| weights_error(format!("{name}: {e:?}")))?;
        let dtype = format!("{:?}", data.dtype);
        let shape = data.shape.to_vec();
        let values = if data.dtype.is_float() {
            data.convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| weights_error(format!("{name}: {e:?}")))?
        } else {
            Vec::new()
        };
        out.insert(
            name,
            HostTensor {
                shape,
                values,
                dtype,
            },
        );
    }
    Ok(out)
}

/// Puts checkpoint tensors into `model`, checking every shape.
fn apply_tensors<B: Backend>(
    mut model: BertForQuestionAnswering<B>,
    config: &BertConfig,
    file: &Path,
    mut tensors: HashMap<String, HostTensor>,
    device: &B::Device,
) -> Result<(BertForQuestionAnswering<B>, LoadReport), ModelError> {
    let prefix = format!("{}.", config.family.prefix());
    let prefixed = tensors.keys().any(|k| k.starts_with(&prefix));
    // Names as the file spells them: without the prefix when it has none.
    let in_file = |name: &str| match name.strip_prefix(&prefix) {
        Some(bare) if !prefixed => bare.to_string(),
        _ => name.to_string(),
    };
    let mut missing = Vec::new();
    let mut dtypes = std::collections::BTreeSet::new();
    let mut loaded = 0;
    visit_parameters(&mut model, config.family, &mut |name, slot| {
        let Some((key, tensor)) = take_tensor(&mut tensors, &in_file(name)) else {
            missing.push(name.to_string());
            return Ok(());
        };
        let expected = match &slot {
            Slot::Vector(p) => p.lazy_shape().to_vec(),
            Slot::Table(p) => p.lazy_shape().to_vec(),
            Slot::LinearWeight(p) => {
                let s = p.lazy_shape().to_vec();
                vec![s[1], s[0]]
            }
        };
        if tensor.shape != expected || tensor.values.len() != expected.iter().product::<usize>() {
            return Err(ModelError::ShapeMismatch {
                path: file.to_path_buf(),
                name: key,
                expected,
                found: tensor.shape,
            });
        }
        dtypes.insert(tensor.dtype);
        loaded += 1;
        match slot {
            Slot::Vector(p) => {
                *p = Param::from_data(TensorData::new(tensor.values, tensor.shape), device)
            }
            Slot::Table(p) => {
                *p = Param::from_data(TensorData::new(tensor.values, tensor.shape), device)
            }
            Slot::LinearWeight(p) => {
                let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
                let data = TensorData::new(transpose(&tensor.values, rows, cols), [cols, rows]);
                *p = Param::from_data(data, device);
            }
        }
        Ok(())
    })?;
    let head_missing: Vec<_> = missing
        .iter()
        .filter(|n| n.starts_with(HEAD_PREFIX))
        .collect();
    let encoder_missing: Vec<String> = missing
        .iter()
        .filter(|n| !n.starts_with(HEAD_PREFIX))
        .map(|n| in_file(n))
        .collect();
    if !encoder_missing.is_empty() {
        return Err(ModelError::MissingTensors {
            path: file.to_path_buf(),
            names: encoder_missing,
        });
    }
    let mut unused: Vec<String> = tensors.into_keys().collect();
    unused.sort();
    Ok((
        model,
        LoadReport {
            weights_file: file.to_path_buf(),
            dtypes: dtypes.into_iter().collect(),
            prefixed,
            loaded,
            head_initialized: !head_missing.is_empty(),
            unused,
        },
    ))
}

/// Takes `base` out of the checkpoint, also under the old TensorFlow-era LayerNorm names
/// `gamma`/`beta`.
fn take_tensor(
    tensors: &mut HashMap<String, HostTensor>,
    base: &str,
) -> Option<(String, HostTensor)> {
    let mut candidates = vec![base.to_string()];
    if base.contains("LayerNorm.") {
        candidates.push(
            base.replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta"),
        );
    }
    candidates
        .into_iter()
        .find_map(|k| tensors.remove(&k).map(|t| (k, t)))
}

fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// Writes `model` as a Hugging Face `BertForQuestionAnswering` directory, every file atomically.
/// `tokenizer`, when given, is a `tokenizer.json` to copy in, or the model directory whose
/// tokenizer files ([`qa_data::tokenize::TOKENIZER_FILES`]) are copied.
pub fn save_pretrained<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    config: &BertConfig,
    tokenizer: Option<&Path>,
    dir: &Path,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let tensors = host_tensors(model, config.family)?;
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(name, (dtype, shape, bytes))| {
            let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                .expect("shape matches byte length");
            (name.clone(), view)
        })
        .collect();
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let safetensors_path = dir.join(SAFETENSORS_FILE);
    let bytes = safetensors::serialize(views, metadata).map_err(|e| ModelError::Weights {
        path: safetensors_path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&safetensors_path, &bytes)?;
    let config = BertConfig {
        quantization: model.int8().map(|_| Quantization::int8()),
        ..config.clone()
    };
    write_atomic(
        &dir.join(CONFIG_FILE),
        config.to_question_answering_json().as_bytes(),
    )?;
    for (from, name) in tokenizer_files(tokenizer) {
        let bytes = std::fs::read(&from).map_err(|e| ModelError::io(&from, e))?;
        write_atomic(&dir.join(name), &bytes)?;
    }
    let record = dir.join(BURN_RECORD_FILE);
    if model.int8().is_none() {
        return save_record(model, &record);
    }
    // burn's record holds f32 weights (four times the size); an int8 model is its safetensors.
    match std::fs::remove_file(&record) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ModelError::io(&record, e)),
        _ => Ok(()),
    }
}

/// A tensor as safetensors stores it: dtype, shape and little-endian bytes.
type SavedTensor = (Dtype, Vec<usize>, Vec<u8>);

/// Every parameter as safetensors wants it: name -> (dtype, Hugging Face shape, bytes). An int8
/// weight is saved as its `[outputs, inputs]` codes with `<name>_scale`, one f32 per output; an
/// int8 table as `[rows, width]` codes with one scale per row.
fn host_tensors<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    family: Family,
) -> Result<BTreeMap<String, SavedTensor>, ModelError> {
    let f32_bytes = |values: &[f32]| values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut tensors = BTreeMap::new();
    let mut copy = model.clone();
    visit_parameters(&mut copy, family, &mut |name, slot| {
        let int8 = model.int8();
        let matrix = match &slot {
            Slot::LinearWeight(p) => int8.and_then(|w| w.get(p.id)),
            _ => None,
        };
        let int8_table = match &slot {
            Slot::Table(p) => int8.is_some_and(|w| w.stores_table(p.id)),
            _ => false,
        };
        let (shape, values) = match slot {
            Slot::Vector(p) => host(p.val()),
            Slot::Table(p) => host(p.val()),
            Slot::LinearWeight(p) => {
                let (shape, values) = host(p.val());
                (
                    vec![shape[1], shape[0]],
                    transpose(&values, shape[0], shape[1]),
                )
            }
        };
        let codes = match matrix {
            Some(matrix) => Some((matrix.rows(), matrix.scales().to_vec())),
            None if int8_table => Some(int8::quantize_table(&values, shape[1])),
            None => None,
        };
        let entry = match codes {
            Some((codes, scales)) => {
                let scale = (Dtype::F32, vec![shape[0]], f32_bytes(&scales));
                tensors.insert(format!("{name}{INT8_SCALE_SUFFIX}"), scale);
                (Dtype::I8, shape, codes.iter().map(|&c| c as u8).collect())
            }
            None => (Dtype::F32, shape, f32_bytes(&values)),
        };
        tensors.insert(name.to_string(), entry);
        Ok(())
    })?;
    Ok(tensors)
}

/// The files to copy for `tokenizer` (see [`save_pretrained`]) and their names in the copy.
fn tokenizer_files(tokenizer: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    match tokenizer {
        None => Vec::new(),
        Some(dir) if dir.is_dir() => qa_data::tokenize::TOKENIZER_FILES
            .iter()
            .map(|name| (dir.join(name), *name))
            .filter(|(path, _)| path.is_file())
            .collect(),
        Some(file) => vec![(file.to_path_buf(), TOKENIZER_FILE)],
    }
}

/// Loads whatever `dir` holds: burn's record when present and readable (one written by another
/// version of this crate may not be), else the Hugging Face weights.
pub fn load_model<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    if dir.join(BURN_RECORD_FILE).is_file() {
        match load_record(dir, device) {
            Ok((model, config)) => {
                let model = as_configured(model, &config);
                let report = LoadReport {
                    weights_file: dir.join(BURN_RECORD_FILE),
                    dtypes: vec!["F32".into()],
                    prefixed: true,
                    loaded: 0,
                    head_initialized: false,
                    unused: Vec::new(),
                };
                return Ok(LoadedModel {
                    model,
                    config,
                    report,
                });
            }
            Err(ModelError::Record { .. }) if read_checkpoint_exists(dir) => {}
            Err(e) => return Err(e),
        }
    }
    load_pretrained(dir, device)
}

fn read_checkpoint_exists(dir: &Path) -> bool {
    dir.join(SAFETENSORS_FILE).is_file() || dir.join(PYTORCH_FILE).is_file()
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> (Vec<usize>, Vec<f32>) {
    let data = t.into_data().convert::<f32>();
    let shape = data.shape.to_vec();
    (shape, data.into_vec::<f32>().expect("converted to f32"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use crate::bert::BertInput;

    fn tiny_input(device: &burn::tensor::Device<CpuBackend>) -> BertInput<CpuBackend> {
        BertInput::from_host(
            vec![2, 5, 3, 8, 9, 3],
            vec![0, 0, 0, 1, 1, 1],
            vec![false; 6],
            [1, 6],
            device,
        )
    }

    fn logits(model: &BertForQuestionAnswering<CpuBackend>) -> Vec<f32> {
        let device = Default::default();
        model
            .forward(&tiny_input(&device))
            .start
            .into_data()
            .to_vec()
            .unwrap()
    }

    #[test]
    fn save_then_load_gives_the_same_model_both_ways() {
        let device = Default::default();
        let config = BertConfig::tiny(16);
        let model = BertForQuestionAnswering::<CpuBackend>::init(&config, &device);
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&model, &config, None, dir.path()).unwrap();

        let from_hf = load_pretrained::<CpuBackend>(dir.path(), &device).unwrap();
        assert!(!from_hf.report.head_initialized);
        assert!(
            from_hf.report.unused.is_empty(),
            "{:?}",
            from_hf.report.unused
        );
        assert!(from_hf.report.prefixed);
        assert_eq!(logits(&from_hf.model), logits(&model));

        let (from_record, _) = load_record::<CpuBackend>(dir.path(), &device).unwrap();
        assert_eq!(logits(&from_record), logits(&model));

        let config_json = std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap();
        assert!(config_json.contains("BertForQuestionAnswering"));
    }

    /// Rewrites a saved checkpoint: tensor names through `rename`, values as f16.
    fn rewrite(dir: &Path, rename: impl Fn(&str) -> Option<String>) {
        let path = dir.join(SAFETENSORS_FILE);
        let bytes = std::fs::read(&path).unwrap();
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut owned = Vec::new();
        for (name, view) in file.tensors() {
            let Some(new) = rename(&name) else { continue };
            let halves: Vec<u8> = view
                .data()
                .chunks_exact(4)
                .flat_map(|c| {
                    half::f16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes()
                })
                .collect();
            owned.push((new, view.shape().to_vec(), halves));
        }
        let views: Vec<_> = owned
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(Dtype::F16, s.clone(), b).unwrap(),
                )
            })
            .collect();
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        std::fs::remove_file(dir.join(BURN_RECORD_FILE)).unwrap();
    }

    #[test]
    fn base_encoder_without_prefix_or_head_in_f16() {
        let device = Default::default();
        let config = BertConfig::tiny(16);
        let model = BertForQuestionAnswering::<CpuBackend>::init(&config, &device);
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&model, &config, None, dir.path()).unwrap();
        rewrite(dir.path(), |n| {
            if n.starts_with("qa_outputs") {
                None
            } else {
                Some(
                    n.trim_start_matches("bert.")
                        .replace("LayerNorm.weight", "LayerNorm.gamma"),
                )
            }
        });
        let loaded = load_model::<CpuBackend>(dir.path(), &device).unwrap();
        assert!(loaded.report.head_initialized);
        assert!(!loaded.report.prefixed);
        assert_eq!(loaded.report.dtypes, ["F16"]);
        assert!(loaded.report.to_string().contains("initialised a new one"));
    }

    #[test]
    fn missing_encoder_tensor_and_bad_shape_are_named() {
        let device = Default::default();
        let config = BertConfig::tiny(16);
        let model = BertForQuestionAnswering::<CpuBackend>::init(&config, &device);
        let dir = tempfile::tempdir().unwrap();
        save_pretrained(&model, &config, None, dir.path()).unwrap();
        rewrite(dir.path(), |n| {
            (n != "bert.encoder.layer.1.output.dense.bias").then(|| n.to_string())
        });
        let err = load_model::<CpuBackend>(dir.path(), &device)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("bert.encoder.layer.1.output.dense.bias"),
            "{err}"
        );

        let mut other = config.clone();
        other.vocab_size = 17;
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            other.to_question_answering_json(),
        )
        .unwrap();
        save_pretrained(&model, &config, None, dir.path()).unwrap();
        std::fs::remove_file(dir.path().join(BURN_RECORD_FILE)).unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            other.to_question_answering_json(),
        )
        .unwrap();
        let err = load_model::<CpuBackend>(dir.path(), &device)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("word_embeddings.weight has shape [16, 32]"),
            "{err}"
        );
    }
}
