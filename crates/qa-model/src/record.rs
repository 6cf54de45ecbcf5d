//! burn's own binary record of a model, saved beside the Hugging Face weights: this project
//! reloads a model it wrote from it, faster than from safetensors.

use std::path::Path;

use burn::module::Module;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;

use crate::bert::BertForQuestionAnswering;
use crate::config::BertConfig;
use crate::error::{ModelError, write_atomic};
use crate::hf::CONFIG_FILE;

/// burn's binary record of the model, in a directory [`crate::save_pretrained`] wrote.
pub const BURN_RECORD_FILE: &str = "model.burn.bin";

/// burn's binary record of `model`, written atomically.
pub fn save_record<B: Backend>(
    model: &BertForQuestionAnswering<B>,
    path: &Path,
) -> Result<(), ModelError> {
    let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
        .record(model.clone().into_record(), ())
        .map_err(|e| ModelError::Record {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Loads a model saved by [`crate::save_pretrained`] from burn's record, with the config from the
/// same directory.
pub fn load_record<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(BertForQuestionAnswering<B>, BertConfig), ModelError> {
    let config = BertConfig::load(&dir.join(CONFIG_FILE))?;
    let path = dir.join(BURN_RECORD_FILE);
    let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
    let record = BinBytesRecorder::<FullPrecisionSettings>::default()
        .load(bytes, device)
        .map_err(|e| ModelError::Record {
            path: path.clone(),
            message: format!("not a model record for this config: {e}"),
        })?;
    let model = BertForQuestionAnswering::init_lazy(&config, device).load_record(record);
    Ok((model, config))
}
