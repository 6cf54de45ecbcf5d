//! Errors of loading, saving and answering; each names the file and, for tensors, the tensor.

use std::path::{Path, PathBuf};

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

    #[error("{path}: invalid answering settings: {message}")]
    Settings { path: PathBuf, message: String },

    /// Reading, tokenizing or windowing text (the tokenizer file, a dataset).
    #[error(transparent)]
    Data(#[from] qa_data::DataError),

    /// A request that cannot be answered as asked: the message says why.
    #[error("{0}")]
    Input(String),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            error: source,
        }
    }
}

/// Writes `bytes` to `path` atomically (see [`qa_data::atomic`]), as a model error.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    qa_data::atomic::write(path, bytes).map_err(|e| match e {
        qa_data::DataError::Io { path, error } => ModelError::Io { path, error },
        other => ModelError::Record {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    })
}
