//! burn's own binary record of a model, saved beside the Hugging Face weights: this project
//! reloads a model it wrote from it, faster than from safetensors.

use std::path::Path;

use burn::module::Module;
use burn::record::{BinBytesRecorder, BurnRecord, FullPrecisionSettings, Record, Recorder};
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
    let record = decode_record(&bytes, device).map_err(|e| ModelError::Record {
        path: path.clone(),
        message: format!("not a model record for this version and config: {e}"),
    })?;
    let model = BertForQuestionAnswering::init_lazy(&config, device).load_record(record);
    Ok((model, config))
}

/// Decodes bytes `BinBytesRecorder<FullPrecisionSettings>` wrote, as burn does, but returns an
/// error for bytes of another layout (a record from another version of this crate), where
/// burn 0.21's recorder panics.
pub fn decode_record<B: Backend, R: Record<B>>(
    bytes: &[u8],
    device: &B::Device,
) -> Result<R, String> {
    let (record, read): (BurnRecord<R::Item<FullPrecisionSettings>, B>, usize) =
        bincode::serde::decode_from_slice(bytes, bincode::config::standard())
            .map_err(|e| e.to_string())?;
    if read != bytes.len() {
        return Err(format!(
            "{} bytes past the end of the record",
            bytes.len() - read
        ));
    }
    Ok(R::from_item(record.item, device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    /// Bytes of another layout are an error, not burn's panic.
    #[test]
    fn a_record_of_another_layout_is_an_error() {
        let device = Default::default();
        let model = BertForQuestionAnswering::<CpuBackend>::init(&BertConfig::tiny(16), &device);
        let bytes = BinBytesRecorder::<FullPrecisionSettings>::default()
            .record(model.into_record(), ())
            .unwrap();
        type Model = BertForQuestionAnswering<CpuBackend>;
        let decoded: Result<<Model as Module<CpuBackend>>::Record, _> =
            decode_record(&bytes, &device);
        assert!(decoded.is_ok());
        for damaged in [&bytes[..bytes.len() / 2], &bytes[7..]] {
            let decoded: Result<<Model as Module<CpuBackend>>::Record, _> =
                decode_record(damaged, &device);
            assert!(decoded.is_err());
        }
    }
}
