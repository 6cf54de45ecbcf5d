//! `BertConfig` mirrors a Hugging Face `config.json` of an encoder built from BERT's layers: BERT
//! itself (bert-base, multilingual BERT, BETO, MiniLM, ...) and the [`Family`]s that are BERT's
//! layers under other names (DistilBERT), with positions counted from an offset (RoBERTa, XLM-R)
//! or with an embedding projection (ELECTRA), and DeBERTa-v2/v3, whose attention adds
//! disentangled relative-position terms ([`RelativeAttention`]).

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
    /// DeBERTa-v2, and DeBERTa-v3 whose checkpoints use the same `model_type`.
    DebertaV2,
}

impl Family {
    pub const ALL: [Family; 6] = [
        Family::Bert,
        Family::DistilBert,
        Family::Roberta,
        Family::XlmRoberta,
        Family::Electra,
        Family::DebertaV2,
    ];

    /// config.json's `model_type`.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Bert => "bert",
            Family::DistilBert => "distilbert",
            Family::Roberta => "roberta",
            Family::XlmRoberta => "xlm-roberta",
            Family::Electra => "electra",
            Family::DebertaV2 => "deberta-v2",
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
            Family::DebertaV2 => "DebertaV2ForQuestionAnswering",
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
            Family::DebertaV2 => "deberta",
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

/// DeBERTa's disentangled attention (He et al., 2021): scores gain content-to-position and
/// position-to-content terms read from a table of relative distances, shared by all layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelativeAttention {
    /// Distances map to rows `0..2 span` of the table (`position_buckets`, or
    /// `max_relative_positions` without buckets).
    pub span: usize,
    /// Distances past `span / 2` share logarithmically wider buckets up to `max_position`.
    pub log_buckets: bool,
    pub max_position: usize,
    /// `c2p` in `pos_att_type`: queries read the position keys.
    pub content_to_position: bool,
    /// `p2c` in `pos_att_type`: keys read the position queries.
    pub position_to_content: bool,
    /// `share_att_key`: positions go through the query and key projections; otherwise through
    /// their own `pos_query_proj` / `pos_key_proj`.
    pub shared_projections: bool,
    /// `norm_rel_ebd = "layer_norm"`: the table is layer-normalised before use.
    pub normalized: bool,
}

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
    /// ELECTRA and DeBERTa: the width of the embeddings, projected to `hidden_size` when it
    /// differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_size: Option<usize>,
    /// Set in a model `qa quantize` wrote: its linear layers hold int8 weights.
    #[serde(
        default,
        rename = "quantization_config",
        skip_serializing_if = "Option::is_none"
    )]
    pub quantization: Option<Quantization>,
    /// Everything else in config.json (architectures, model_type, ...), kept when saving.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// `quantization_config` of an int8 model (see [`crate::int8`]): what was quantized and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    pub quant_method: String,
    #[serde(default)]
    pub bits: u32,
    #[serde(default)]
    pub weights: String,
    #[serde(default)]
    pub activations: String,
    #[serde(default)]
    pub modules: String,
}

impl Quantization {
    /// The one method this crate writes and reads.
    pub const METHOD: &str = "qa-int8";

    pub fn int8() -> Self {
        Quantization {
            quant_method: Self::METHOD.into(),
            bits: 8,
            weights: "int8, symmetric, one scale per output channel".into(),
            activations: "int8, symmetric, one scale per row, computed at run time".into(),
            modules: "attention and feed-forward linear layers; embeddings, layer norms and the \
                      span head stay f32"
                .into(),
        }
    }
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
        match family {
            Family::DistilBert => from_distilbert_keys(&mut map),
            Family::DebertaV2 => with_deberta_defaults(&mut map),
            _ => {}
        }
        let mut config: BertConfig = serde_json::from_value(serde_json::Value::Object(map))
            .map_err(|e| invalid(e.to_string()))?;
        config.family = family;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(q) = &self.quantization
            && (q.quant_method != Quantization::METHOD || q.bits != 8)
        {
            return Err(format!(
                "quantization_config: quant_method '{}' with {} bits is not supported (this \
                 crate reads the 8-bit '{}' models `qa quantize` writes)",
                q.quant_method,
                q.bits,
                Quantization::METHOD
            ));
        }
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
        if self.family == Family::DebertaV2 {
            self.check_deberta()?;
        }
        Ok(())
    }

    /// What of DeBERTa-v2 this crate does not implement, named by its config key.
    fn check_deberta(&self) -> Result<(), String> {
        let conv = self.integer("conv_kernel_size").unwrap_or(0);
        if conv > 0 {
            return Err(format!(
                "conv_kernel_size {conv}: DeBERTa-v2's convolution after the first layer (as in \
                 deberta-v2-xlarge) is not supported; DeBERTa-v3 checkpoints have none"
            ));
        }
        if let Some(size) = self.integer("attention_head_size")
            && size != self.head_dim() as i64
        {
            return Err(format!(
                "attention_head_size {size} differs from hidden_size / num_attention_heads = {}; \
                 only equal sizes are supported",
                self.head_dim()
            ));
        }
        self.read_relative_attention().map(|_| ())
    }

    /// DeBERTa's disentangled attention, or `None` for every other family and for DeBERTa
    /// without `relative_attention`. The configuration must have passed [`Self::validate`].
    pub fn relative_attention(&self) -> Option<RelativeAttention> {
        self.read_relative_attention()
            .unwrap_or_else(|e| panic!("an unchecked DeBERTa config: {e}"))
    }

    fn read_relative_attention(&self) -> Result<Option<RelativeAttention>, String> {
        let on = self
            .extra
            .get("relative_attention")
            .and_then(|v| v.as_bool());
        if self.family != Family::DebertaV2 || on != Some(true) {
            return Ok(None);
        }
        let max_position = match self.integer("max_relative_positions").unwrap_or(-1) {
            m if m < 1 => self.max_position_embeddings,
            m => m as usize,
        };
        let buckets = self.integer("position_buckets").unwrap_or(-1);
        let kinds = match self.extra.get("pos_att_type") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => {
                s.split('|').map(|k| k.trim().to_lowercase()).collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|k| k.as_str().unwrap_or("").trim().to_lowercase())
                .collect(),
            Some(other) => return Err(format!("pos_att_type {other} is not a list of c2p, p2c")),
        };
        if let Some(k) = kinds.iter().find(|k| !matches!(k.as_str(), "c2p" | "p2c")) {
            return Err(format!(
                "pos_att_type '{k}' is not supported; DeBERTa-v2 takes c2p and p2c"
            ));
        }
        let norm = self.extra.get("norm_rel_ebd").and_then(|v| v.as_str());
        Ok(Some(RelativeAttention {
            span: if buckets > 0 {
                buckets as usize
            } else {
                max_position
            },
            log_buckets: buckets > 0,
            max_position,
            content_to_position: kinds.iter().any(|k| k == "c2p"),
            position_to_content: kinds.iter().any(|k| k == "p2c"),
            shared_projections: self.flag("share_att_key").unwrap_or(false),
            normalized: norm.is_some_and(|n| n.split('|').any(|p| p.trim() == "layer_norm")),
        }))
    }

    /// Whether absolute position embeddings are added to the input (DeBERTa-v3 has none).
    pub fn position_biased_input(&self) -> bool {
        self.family != Family::DebertaV2 || self.flag("position_biased_input").unwrap_or(true)
    }

    /// Whether the embedding projection comes before the LayerNorm and has no bias (DeBERTa's
    /// `embed_proj`), rather than after it with one (ELECTRA's `embeddings_project`).
    pub fn projects_before_norm(&self) -> bool {
        self.family == Family::DebertaV2
    }

    fn integer(&self, key: &str) -> Option<i64> {
        self.extra.get(key).and_then(|v| v.as_i64())
    }

    fn flag(&self, key: &str) -> Option<bool> {
        self.extra.get(key).and_then(|v| v.as_bool())
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
            quantization: None,
            family: Family::Bert,
            extra: Default::default(),
        }
    }
}

/// DeBERTa-v2's own defaults where config.json leaves a key out (transformers writes them all).
fn with_deberta_defaults(map: &mut serde_json::Map<String, serde_json::Value>) {
    map.entry("type_vocab_size").or_insert(0.into());
    map.entry("layer_norm_eps").or_insert(1e-7.into());
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

    fn deberta(extra: &str) -> Result<BertConfig, ModelError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let json = format!(
            r#"{{"model_type": "deberta-v2", "vocab_size": 128100, "hidden_size": 768,
            "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
            "max_position_embeddings": 512, "relative_attention": true, "position_buckets": 256,
            "max_relative_positions": -1, "norm_rel_ebd": "layer_norm", "share_att_key": true,
            "position_biased_input": false {extra}}}"#
        );
        std::fs::write(&path, json).unwrap();
        BertConfig::load(&path)
    }

    #[test]
    fn deberta_v3_settings_are_read_with_its_defaults() {
        let c = deberta(r#", "pos_att_type": ["p2c", "c2p"]"#).unwrap();
        assert_eq!(c.family, Family::DebertaV2);
        assert_eq!((c.type_vocab_size, c.layer_norm_eps), (0, 1e-7));
        assert!(!c.position_biased_input() && c.projects_before_norm());
        let r = c.relative_attention().unwrap();
        assert_eq!((r.span, r.max_position), (256, 512));
        assert!(r.log_buckets && r.content_to_position && r.position_to_content);
        assert!(r.shared_projections && r.normalized);
        // DeBERTa-v2's configs write the terms as one string.
        let v2 = deberta(r#", "pos_att_type": "c2p|p2c""#).unwrap();
        assert_eq!(v2.relative_attention(), Some(r));
    }

    #[test]
    fn deberta_parts_not_implemented_are_named() {
        for (extra, named) in [
            (r#", "conv_kernel_size": 3"#, "conv_kernel_size 3"),
            (r#", "pos_att_type": ["p2p"]"#, "pos_att_type 'p2p'"),
            (r#", "attention_head_size": 32"#, "attention_head_size 32"),
        ] {
            let err = deberta(extra).unwrap_err().to_string();
            assert!(err.contains("config.json") && err.contains(named), "{err}");
        }
    }

    #[test]
    fn approximate_gelu_aliases() {
        let a: Activation = serde_json::from_str("\"gelu_new\"").unwrap();
        assert_eq!(a, Activation::GeluApproximate);
    }
}
