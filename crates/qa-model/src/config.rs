//! `BertConfig` mirrors a Hugging Face `config.json`, so any BERT-family checkpoint (bert-base-cased,
//! multilingual BERT, MiniLM, ...) loads without code changes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// The activation of the feed-forward block, by its Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// Exact erf GELU, what BERT uses.
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluApproximate,
    #[serde(rename = "relu")]
    Relu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: Activation,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "defaults::initializer_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    /// Everything else in config.json (architectures, model_type, ...), kept when saving.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod defaults {
    use super::Activation;
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn hidden_act() -> Activation {
        Activation::Gelu
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn initializer_range() -> f64 {
        0.02
    }
}

impl BertConfig {
    /// Reads and checks a `config.json`.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| ModelError::Config {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Some(kind) = config.extra.get("model_type").and_then(|v| v.as_str())
            && !matches!(kind, "bert" | "distilbert_as_bert")
        {
            return Err(ModelError::Config {
                path: path.to_path_buf(),
                message: format!(
                    "model_type '{kind}' is not supported; this crate implements BERT \
                     (model_type \"bert\": bert-base, multilingual BERT, MiniLM, ...)"
                ),
            });
        }
        config.validate().map_err(|message| ModelError::Config {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.num_attention_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} {p} is not a probability in [0, 1)"));
            }
        }
        Ok(())
    }

    /// Rejects windows longer than the model's position table: the one check every path that
    /// feeds this model (training, evaluation, answering) makes.
    pub fn check_window(&self, window: &qa_data::WindowConfig) -> Result<(), String> {
        if window.max_seq_length > self.max_position_embeddings {
            return Err(format!(
                "max_seq_length {} exceeds the model's max_position_embeddings {}; lower \
                 max_seq_length",
                window.max_seq_length, self.max_position_embeddings
            ));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The JSON written next to a fine-tuned model: what transformers needs to load it as
    /// `BertForQuestionAnswering`.
    pub fn to_question_answering_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config serialises");
        let map = value.as_object_mut().expect("config is an object");
        map.insert(
            "architectures".into(),
            serde_json::json!(["BertForQuestionAnswering"]),
        );
        map.insert("model_type".into(), "bert".into());
        map.remove("_name_or_path");
        serde_json::to_string_pretty(&value).expect("config serialises")
    }

    /// A tiny configuration for tests and smoke runs.
    pub fn tiny(vocab_size: usize) -> Self {
        BertConfig {
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 128,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            initializer_range: 0.02,
            pad_token_id: 0,
            extra: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hf_config_and_keeps_unknown_keys() {
        let json = r#"{"architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 384,
            "intermediate_size": 1536, "model_type": "bert", "num_attention_heads": 12,
            "num_hidden_layers": 6, "vocab_size": 30522, "layer_norm_eps": 1e-12,
            "gradient_checkpointing": false}"#;
        let c: BertConfig = serde_json::from_str(json).unwrap();
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.max_position_embeddings, 512);
        assert_eq!(c.hidden_act, Activation::Gelu);
        let out = c.to_question_answering_json();
        assert!(out.contains("BertForQuestionAnswering"));
        assert!(out.contains("gradient_checkpointing"));
        let back: BertConfig = serde_json::from_str(&out).unwrap();
        assert_eq!(back.hidden_size, 384);
    }

    #[test]
    fn rejects_bad_shapes() {
        let mut c = BertConfig::tiny(10);
        c.num_attention_heads = 5;
        assert!(c.validate().unwrap_err().contains("multiple"));
    }

    #[test]
    fn approximate_gelu_aliases() {
        let a: Activation = serde_json::from_str("\"gelu_new\"").unwrap();
        assert_eq!(a, Activation::GeluApproximate);
    }
}
