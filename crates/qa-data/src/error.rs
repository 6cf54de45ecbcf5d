//! One error type for the crate. Every variant that concerns a file names it, and where the problem
//! sits inside JSON it names the JSON path (`data[3].paragraphs[0].qas[7]...`).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The cause is part of the message (not a `source`), so it is printed once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The file is not valid JSON, or a value has the wrong type or is missing.
    #[error("{path}: at {json_path} (line {line}, column {column}): {message}")]
    Json {
        path: PathBuf,
        json_path: String,
        line: usize,
        column: usize,
        message: String,
    },

    /// Valid JSON whose content cannot be used, with the policy that made it fatal.
    #[error("{path}: at {json_path}: {message}")]
    Invalid {
        path: PathBuf,
        json_path: String,
        message: String,
    },

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    /// Window parameters that cannot work together.
    #[error("invalid windowing parameters: {0}")]
    WindowConfig(String),

    #[error("{path}: not a usable {what}: {message}")]
    Predictions {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            error: source,
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
