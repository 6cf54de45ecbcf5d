//! Errors of model loading and saving; each names the file and, for tensors, the tensor.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The cause is part of the message (not a `source`), so it is printed once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    #[error("{path}: invalid model config: {message}")]
    Config { path: PathBuf, message: String },

    #[error("{path}: cannot read weights: {message}")]
    Weights { path: PathBuf, message: String },

    #[error("{path}: missing tensors the encoder needs: {}", names.join(", "))]
    MissingTensors { path: PathBuf, names: Vec<String> },

    #[error("{path}: tensor {name} has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error(
        "{path}: no model.safetensors or pytorch_model.bin (and no config.json?) in this directory"
    )]
    NoWeights { path: PathBuf },

    #[error("{path}: {message}")]
    Record { path: PathBuf, message: String },
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            error: source,
        }
    }
}
