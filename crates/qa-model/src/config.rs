//! `BertConfig` mirrors a Hugging Face `config.json` of an encoder built from BERT's layers: BERT
//! itself (bert-base, multilingual BERT, BETO, MiniLM, ...) and the [`Family`]s that are BERT's
//! layers under other names (DistilBERT), with positions counted from an offset (RoBERTa, XLM-R)
//! or with an embedding projection (ELECTRA).

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

/// The checkpoint families, by `model_type` in config.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    Bert,
    DistilBert,
    Roberta,
    XlmRoberta,
    Electra,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::Bert,
        Family::DistilBert,
        Family::Roberta,
        Family::XlmRoberta,
        Family::Electra,
    ];

    /// config.json's `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::DistilBert => "distilbert",
            Family::Roberta => "roberta",
            Family::XlmRoberta => "xlm-roberta",
            Family::Electra => "electra",
        }
    }

    /// The transformers class a saved model loads as.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Bert => "BertForQuestionAnswering",
            Family::DistilBert => "DistilBertForQuestionAnswering",
            Family::Roberta => "RobertaForQuestionAnswering",
            Family::XlmRoberta => "XLMRobertaForQuestionAnswering",
            Family::Electra => "ElectraForQuestionAnswering",
        }
    }

    /// The attribute the encoder sits under in a question-answering checkpoint: tensor names
    /// start with it and a dot (a bare encoder checkpoint has no prefix).
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::DistilBert => "distilbert",
            Family::Roberta | Family::XlmRoberta => "roberta",
            Family::Electra => "electra",
        }
    }

    fn from_model_type(model_type: &str) -> Option<Family> {
        // "distilbert_as_bert": DistilBERT weights renamed to BERT's, as some conversions write.
        if model_type == "distilbert_as_bert" {
            return Some(Family::Bert);
        }
        Family::ALL
            .into_iter()
            .find(|f| f.model_type() == model_type)
    }

    fn supported() -> String {
        Family::ALL.map(Family::model_type).join(", ")
    }
}

/// DistilBERT's config.json names for BERT's keys.
const DISTILBERT_KEYS: [(&str, &str); 7] = [
    ("hidden_size", "dim"),
    ("num_hidden_layers", "n_layers"),
    ("num_attention_heads", "n_heads"),
    ("intermediate_size", "hidden_dim"),
    ("hidden_dropout_prob", "dropout"),
    ("attention_probs_dropout_prob", "attention_dropout"),
    ("hidden_act", "activation"),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// Which checkpoint family (from `model_type`); decides tensor names and the position offset.
    #[serde(skip)]
    pub family: Family,
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
    /// ELECTRA: the width of the embeddings, projected to `hidden_size` when it differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
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
    /// Reads and checks a `config.json` of any supported [`Family`].
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let invalid = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let mut map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let family = match map.get("model_type").and_then(|v| v.as_str()) {
            None => Family::Bert,
            Some(kind) => Family::from_model_type(kind).ok_or_else(|| {
                invalid(format!(
                    "model_type '{kind}' is not supported; supported model types: {}",
                    Family::supported()
                ))
            })?,
        };
        if family == Family::DistilBert {
            from_distilbert_keys(&mut map);
        }
        let mut config: BertConfig = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| invalid(e.to_string()))?;
        config.family = family;
        config.validate().map_err(invalid)?;
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

    /// Where position ids start: RoBERTa and XLM-R count real tokens from `padding_idx + 1`.
    pub fn position_offset(&self) -> usize {
        match self.family {
            Family::Roberta | Family::XlmRoberta => self.pad_token_id + 1,
            _ => 0,
        }
    }

    /// The longest sequence the position table covers.
    pub fn max_sequence_length(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    /// Rejects a tokenizer that does not belong to this model: ids past the embedding table, or
    /// another pair layout than the family's (`[SEP]` once, or `</s></s>` for RoBERTa and XLM-R).
    pub fn check_tokenizer(&self, tokenizer: &qa_data::QaTokenizer) -> Result<(), String> {
        let source = tokenizer.source().display();
        if tokenizer.vocab_size() > self.vocab_size {
            return Err(format!(
                "{source}: the tokenizer has {} tokens but the model's vocab_size is {}: they do \
                 not belong together",
                tokenizer.vocab_size(),
                self.vocab_size
            ));
        }
        let separators = match self.family {
            Family::Roberta | Family::XlmRoberta => 2,
            _ => 1,
        };
        let found = tokenizer.special_tokens().separators;
        if found != separators {
            return Err(format!(
                "{source}: the tokenizer puts {found} separator(s) between question and context, \
                 a {} model expects {separators}: it is not this model's tokenizer",
                self.family.model_type()
            ));
        }
        Ok(())
    }

    /// Dropout on the last hidden states before the span head: DistilBERT's `qa_dropout`.
    pub fn head_dropout(&self) -> f64 {
        match self.family {
            Family::DistilBert => self
                .extra
                .get("qa_dropout")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.1),
            _ => 0.0,
        }
    }

    /// The width of the embedding tables (ELECTRA's may be narrower than the layers).
    pub fn embedding_width(&self) -> usize {
        self.embedding_size.unwrap_or(self.hidden_size)
    }

    /// Rejects windows longer than the model's position table: the one check every path that
    /// feeds this model (training, evaluation, answering) makes.
    pub fn check_window(&self, window: &qa_data::WindowConfig) -> Result<(), String> {
        if window.max_seq_length <= self.max_sequence_length() {
            return Ok(());
        }
        let positions = match self.position_offset() {
            0 => format!("max_position_embeddings {}", self.max_position_embeddings),
            offset => format!(
                "{} positions (max_position_embeddings {} less the {offset} before the first \
                 token)",
                self.max_sequence_length(),
                self.max_position_embeddings
            ),
        };
        Err(format!(
            "max_seq_length {} exceeds the model's {positions}; lower max_seq_length",
            window.max_seq_length
        ))
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// The JSON written next to a fine-tuned model, in its family's own keys: what transformers
    /// needs to load it as the family's question-answering model.
    pub fn to_question_answering_json(&self) -> String {
        let value = serde_json::to_value(self).expect("config serialises");
        let serde_json::Value::Object(mut map) = value else {
            unreachable!("a struct serialises as an object")
        };
        map.insert(
            "architectures".into(),
            serde_json::json!([self.family.architecture()]),
        );
        map.insert("model_type".into(), self.family.model_type().into());
        map.remove("_name_or_path");
        // The weights are saved in f32, whatever the checkpoint they came from stored.
        for key in ["dtype", "torch_dtype"] {
            if map.contains_key(key) {
                map.insert(key.into(), "float32".into());
            }
        }
        if self.family == Family::DistilBert {
            to_distilbert_keys(&mut map);
        }
        serde_json::to_string_pretty(&map).expect("config serialises")
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
            embedding_size: None,
            family: Family::Bert,
            extra: Default::default(),
        }
    }
}

/// DistilBERT's keys renamed to BERT's; it has no token types and LayerNorm eps 1e-12.
fn from_distilbert_keys(map: &mut serde_json::Map<String, serde_json::Value>) {
    for (bert, distilbert) in DISTILBERT_KEYS {
        if let Some(v) = map.remove(distilbert) {
            map.insert(bert.into(), v);
        }
    }
    map.insert("type_vocab_size".into(), 0.into());
    map.insert("layer_norm_eps".into(), 1e-12.into());
}

/// The inverse of [`from_distilbert_keys`].
fn to_distilbert_keys(map: &mut serde_json::Map<String, serde_json::Value>) {
    for (bert, distilbert) in DISTILBERT_KEYS {
        if let Some(v) = map.remove(bert) {
            map.insert(distilbert.into(), v);
        }
    }
    map.remove("type_vocab_size");
    map.remove("layer_norm_eps");
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
