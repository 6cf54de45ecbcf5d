//! The answering settings a trained model carries in `answering.json` beside its `config.json`:
//! the windows and decoding it was evaluated with, so every later use of the model (evaluate,
//! predict, chat, serve) answers the way training scored it.

use std::path::Path;

use qa_data::{DecodeConfig, WindowConfig};
use serde::{Deserialize, Serialize};

use crate::config::BertConfig;
use crate::error::{ModelError, write_atomic};

/// The file beside `config.json`.
pub const SETTINGS_FILE: &str = "answering.json";

/// How a model cuts contexts into windows and turns logits into answers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnsweringSettings {
    pub window: WindowConfig,
    pub decode: DecodeConfig,
}

impl AnsweringSettings {
    /// What a model without `answering.json` gets: run_qa.py's windows fitted to the model's
    /// positions and run_qa.py's decoding.
    pub fn defaults_for(config: &BertConfig) -> Self {
        AnsweringSettings {
            window: WindowConfig::fitting(config.max_sequence_length()),
            decode: DecodeConfig::default(),
        }
    }

    /// The settings of the model in `dir`: its `answering.json`, else [`Self::defaults_for`].
    pub fn for_model(dir: &Path, config: &BertConfig) -> Result<Self, ModelError> {
        let path = dir.join(SETTINGS_FILE);
        if !path.is_file() {
            return Ok(Self::defaults_for(config));
        }
        let invalid = |message: String| ModelError::Settings {
            path: path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::io(&path, e))?;
        let settings: AnsweringSettings =
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        settings.check(config).map_err(invalid)?;
        Ok(settings)
    }

    /// Rejects windows that cannot advance or do not fit the model, and an empty search.
    pub fn check(&self, config: &BertConfig) -> Result<(), String> {
        self.window.validate().map_err(|e| e.to_string())?;
        config.check_window(&self.window)?;
        for (name, value) in [
            ("n_best_size", self.decode.n_best_size),
            ("max_answer_length", self.decode.max_answer_length),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }

    /// Writes `answering.json` into `dir` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), ModelError> {
        let text = serde_json::to_string_pretty(self).expect("settings serialise");
        write_atomic(&dir.join(SETTINGS_FILE), text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_settings_come_back_and_missing_ones_are_the_fitted_defaults() {
        let config = BertConfig::tiny(16);
        let dir = tempfile::tempdir().unwrap();
        let defaults = AnsweringSettings::for_model(dir.path(), &config).unwrap();
        assert_eq!(defaults.window, WindowConfig::fitting(128));
        assert_eq!(defaults.decode, DecodeConfig::default());

        let mut trained = defaults;
        trained.window.max_seq_length = 100;
        trained.decode.max_answer_length = 100;
        trained.decode.version_2_with_negative = true;
        trained.save(dir.path()).unwrap();
        assert_eq!(
            AnsweringSettings::for_model(dir.path(), &config).unwrap(),
            trained
        );
    }

    #[test]
    fn a_bad_file_is_named_with_what_is_wrong() {
        let config = BertConfig::tiny(16);
        let dir = tempfile::tempdir().unwrap();
        let mut settings = AnsweringSettings::defaults_for(&config);
        settings.window.max_seq_length = 512;
        settings.save(dir.path()).unwrap();
        let err = AnsweringSettings::for_model(dir.path(), &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains(SETTINGS_FILE), "{err}");
        assert!(
            err.contains("max_seq_length 512 exceeds the model's max_position_embeddings 128"),
            "{err}"
        );

        std::fs::write(dir.path().join(SETTINGS_FILE), r#"{"window": {}}"#).unwrap();
        let err = AnsweringSettings::for_model(dir.path(), &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field"), "{err}");
    }
}
