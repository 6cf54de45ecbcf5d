//! Word-piece tokenization with character offsets, through the `tokenizers` crate.
//!
//! A Hugging Face `tokenizer.json` is used as it is, except that any truncation or padding baked
//! into it is switched off: windowing decides lengths. A bare WordPiece `vocab.txt` is turned into
//! the same pipeline `BertTokenizerFast` builds (BERT normaliser, BERT pre-tokeniser, WordPiece).

use std::path::{Path, PathBuf};

use std::collections::HashMap;

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tokenizers::AddedToken;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{DataError, Result};

/// Whether a `vocab.txt` tokenizer lowercases. A `tokenizer.json` carries its own setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Casing {
    /// `do_lower_case` from a `tokenizer_config.json` beside the vocabulary, else lowercase
    /// unless the vocabulary has capitalised words (as bert-base-cased's does).
    #[default]
    Auto,
    Lower,
    Cased,
}

/// Token ids and, for each token, its `[start, end)` span in code points of the input text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizedText {
    pub ids: Vec<u32>,
    pub offsets: Vec<(u32, u32)>,
}

/// The special tokens a question-context pair is built from, as the tokenizer's own pair
/// template puts them: `cls question sep×separators context sep` (`[CLS] q [SEP] c [SEP]` for
/// BERT, DistilBERT, ELECTRA and DeBERTa; `<s> q </s></s> c </s>` for RoBERTa and XLM-R).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
    /// Separators between the question and the context.
    pub separators: u32,
}

impl SpecialTokens {
    /// Special tokens in one feature.
    pub fn per_feature(&self) -> usize {
        2 + self.separators as usize
    }

    /// Where the context starts after a question of `question_len` tokens.
    pub fn context_offset(&self, question_len: usize) -> usize {
        1 + question_len + self.separators as usize
    }
}

pub struct QaTokenizer {
    inner: Tokenizer,
    special: SpecialTokens,
    source: PathBuf,
    fingerprint: [u8; 32],
    /// True for BERT pipelines (BERT normaliser, BERT pre-tokeniser, WordPiece), where no token
    /// crosses a space and a word's tokens do not depend on its neighbours: then each distinct
    /// space-separated chunk of a batch is tokenized once (see [`QaTokenizer::encode_batch`]).
    space_local: bool,
}

impl std::fmt::Debug for QaTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QaTokenizer")
            .field("source", &self.source)
            .field("special", &self.special)
            .finish()
    }
}

/// The files of a model directory a tokenizer is read from: `tokenizer.json`, or RoBERTa's
/// `vocab.json` + `merges.txt`, or `vocab.txt`, with what `tokenizer_config.json` states;
/// copying these copies the tokenizer.
pub const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// SentencePiece models, which the Rust tokenizers library cannot read: a directory with only
/// one of these needs a tokenizer.json made once by transformers.
const SENTENCEPIECE_FILES: [&str; 2] = ["spm.model", "sentencepiece.bpe.model"];

impl QaTokenizer {
    /// Loads from a model directory (its `tokenizer.json`, else RoBERTa's `vocab.json` +
    /// `merges.txt`, else its `vocab.txt`), a `tokenizer.json` file or a `vocab.txt` file.
    pub fn from_path(path: impl AsRef<Path>, casing: Casing) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            Self::from_dir(path, casing)
        } else if path.extension().is_some_and(|e| e == "txt") {
            Self::from_vocab(path, casing)
        } else if path.exists() {
            Self::from_tokenizer_json(path)
        } else {
            Err(DataError::Tokenizer {
                path: path.to_path_buf(),
                message: "no such file or directory".into(),
            })
        }
    }

    /// A model directory's tokenizer, from the first of its files that describes one.
    fn from_dir(dir: &Path, casing: Casing) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (bpe_vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let vocab = dir.join("vocab.txt");
        if json.is_file() {
            return Self::from_tokenizer_json(&json);
        }
        if bpe_vocab.is_file() && merges.is_file() {
            return Self::from_byte_level_bpe(dir);
        }
        if vocab.is_file() {
            return Self::from_vocab(&vocab, casing);
        }
        let message = match SENTENCEPIECE_FILES.iter().find(|f| dir.join(f).is_file()) {
            Some(spm) => format!(
                "only a SentencePiece model ({spm}) is here, which this program cannot read; \
                 write tokenizer.json beside it once with transformers: python -c \"from \
                 transformers import AutoTokenizer as T; T.from_pretrained('{d}').save_pretrained('{d}')\"",
                d = dir.display()
            ),
            None => "directory has no tokenizer.json, vocab.json + merges.txt or vocab.txt".into(),
        };
        Err(DataError::Tokenizer {
            path: dir.to_path_buf(),
            message,
        })
    }

    /// RoBERTa's byte-level BPE from `vocab.json` and `merges.txt`, put together as transformers'
    /// `RobertaConverter` does (prefix space as `tokenizer_config.json` says, offsets trimmed,
    /// `<s> q </s></s> c </s>`).
    pub fn from_byte_level_bpe(dir: &Path) -> Result<Self> {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let model = BPE::from_file(utf8(&vocab)?, utf8(&merges)?)
            .build()
            .map_err(|e| tokenizer_error(&vocab, e))?;
        let settings = RobertaSettings::read(dir)?;
        let id =
            |token: &str| {
                model.get_vocab().get(token).copied().ok_or_else(|| {
                    tokenizer_error(&vocab, format!("the vocabulary has no {token}"))
                })
            };
        let processing = RobertaProcessing::new(
            (settings.sep.clone(), id(&settings.sep)?),
            (settings.cls.clone(), id(&settings.cls)?),
        )
        .trim_offsets(true)
        .add_prefix_space(settings.add_prefix_space);
        let byte_level = ByteLevel::new(settings.add_prefix_space, true, true);
        let mut inner = Tokenizer::new(model);
        inner
            .with_pre_tokenizer(Some(byte_level))
            .with_decoder(Some(byte_level))
            .with_post_processor(Some(processing));
        let specials: Vec<AddedToken> = settings
            .specials()
            .into_iter()
            .map(|t| AddedToken::from(t, true))
            .collect();
        inner.add_special_tokens(&specials);
        Self::finish(inner, &vocab)
    }

    pub fn from_tokenizer_json(path: &Path) -> Result<Self> {
        let inner = Tokenizer::from_file(path).map_err(|e| tokenizer_error(path, e))?;
        Self::finish(inner, path)
    }

    pub fn from_vocab(path: &Path, casing: Casing) -> Result<Self> {
        let vocab_file = utf8(path)?;
        let lowercase = match casing {
            Casing::Lower => true,
            Casing::Cased => false,
            Casing::Auto => detect_lowercase(path)?,
        };
        let model = WordPiece::from_file(vocab_file)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tokenizer_error(path, e))?;
        let mut inner = Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .with_pre_tokenizer(Some(BertPreTokenizer));
        Self::finish(inner, path)
    }

    fn finish(mut inner: Tokenizer, path: &Path) -> Result<Self> {
        inner
            .with_truncation(None::<TruncationParams>)
            .map_err(|e| tokenizer_error(path, e))?;
        inner.with_padding(None);
        let definition = inner
            .to_string(false)
            .map_err(|e| tokenizer_error(path, e))?;
        let special = special_tokens(&inner, &definition).map_err(|m| tokenizer_error(path, m))?;
        let fingerprint = Sha256::digest(definition.as_bytes()).into();
        let space_local = is_space_local(&definition);
        Ok(QaTokenizer {
            inner,
            special,
            source: path.to_path_buf(),
            fingerprint,
            space_local,
        })
    }

    /// Tokenizes many texts in parallel, in order. Equal to calling [`Self::encode`] on each.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<TokenizedText>> {
        if !self.space_local {
            return texts.par_iter().map(|t| self.encode(t)).collect();
        }
        // Distinct chunks between ASCII spaces, in first-seen order.
        let mut index: HashMap<&str, u32> = HashMap::new();
        let mut chunks: Vec<&str> = Vec::new();
        for text in texts {
            for chunk in text.split(' ').filter(|c| !c.is_empty()) {
                index.entry(chunk).or_insert_with(|| {
                    chunks.push(chunk);
                    (chunks.len() - 1) as u32
                });
            }
        }
        let pieces = chunks
            .par_iter()
            .map(|c| self.encode(c))
            .collect::<Result<Vec<_>>>()?;
        Ok(texts
            .par_iter()
            .map(|text| {
                let mut out = TokenizedText::default();
                let mut position = 0u32;
                for chunk in text.split(' ') {
                    if !chunk.is_empty() {
                        let piece = &pieces[index[chunk] as usize];
                        out.ids.extend_from_slice(&piece.ids);
                        out.offsets.extend(
                            piece
                                .offsets
                                .iter()
                                .map(|&(s, e)| (s + position, e + position)),
                        );
                    }
                    let chars = if chunk.is_ascii() {
                        chunk.len()
                    } else {
                        chunk.chars().count()
                    };
                    position += chars as u32 + 1;
                }
                out
            })
            .collect())
    }

    /// Tokenizes one text without special tokens.
    pub fn encode(&self, text: &str) -> Result<TokenizedText> {
        let encoding = self
            .inner
            .encode_char_offsets(text, false)
            .map_err(|e| tokenizer_error(&self.source, e))?;
        Ok(TokenizedText {
            ids: encoding.get_ids().to_vec(),
            offsets: encoding
                .get_offsets()
                .iter()
                .map(|&(s, e)| (s as u32, e as u32))
                .collect(),
        })
    }

    pub fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// SHA-256 of the tokenizer's full definition (after our overrides), for cache keys.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Writes the tokenizer as a `tokenizer.json` (used when saving a model directory).
    pub fn save(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, false)
            .map_err(|e| tokenizer_error(path, e))
    }
}

/// What `tokenizer_config.json` says of a RoBERTa tokenizer built from its files: its special
/// tokens and whether a space is put before the first word (transformers' defaults otherwise).
struct RobertaSettings {
    cls: String,
    sep: String,
    others: Vec<String>,
    add_prefix_space: bool,
}

impl RobertaSettings {
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| tokenizer_error(&path, e))?,
            Err(_) => serde_json::Value::Null,
        };
        // A token is a string or, in older files, {"content": ...}.
        let token = |key: &str, default: &str| {
            let v = &config[key];
            v.as_str()
                .or_else(|| v["content"].as_str())
                .unwrap_or(default)
                .to_string()
        };
        Ok(RobertaSettings {
            cls: token("cls_token", "<s>"),
            sep: token("sep_token", "</s>"),
            others: [
                "bos_token",
                "eos_token",
                "unk_token",
                "pad_token",
                "mask_token",
            ]
            .iter()
            .zip(["<s>", "</s>", "<unk>", "<pad>", "<mask>"])
            .map(|(key, default)| token(key, default))
            .collect(),
            add_prefix_space: config["add_prefix_space"].as_bool().unwrap_or(false),
        })
    }

    fn specials(&self) -> Vec<String> {
        let mut all = vec![self.cls.clone(), self.sep.clone()];
        for t in &self.others {
            if !all.contains(t) {
                all.push(t.clone());
            }
        }
        all
    }
}

/// The pair layout and special tokens of a tokenizer, from its post-processor (BERT's, RoBERTa's,
/// or a template of that shape) and its vocabulary; a tokenizer without a post-processor (one
/// built from `vocab.txt`) gets BERT's.
fn special_tokens(
    inner: &Tokenizer,
    definition: &str,
) -> std::result::Result<SpecialTokens, String> {
    let value: serde_json::Value = serde_json::from_str(definition).map_err(|e| e.to_string())?;
    let id = |name: &str| inner.token_to_id(name);
    let pad = ["[PAD]", "<pad>"]
        .into_iter()
        .find_map(id)
        .ok_or("the vocabulary has no padding token ([PAD] or <pad>)")?;
    let (cls, sep, separators) = match pair_layout(&value["post_processor"])? {
        Some(layout) => layout,
        None => (
            id("[CLS]").ok_or("the vocabulary has no [CLS] token")?,
            id("[SEP]").ok_or("the vocabulary has no [SEP] token")?,
            1,
        ),
    };
    Ok(SpecialTokens {
        cls,
        sep,
        pad,
        separators,
    })
}

/// `(cls, sep, separators between the pair)` from a serialised post-processor; `None` when there
/// is none. Sequences of processors (byte-level offsets, then a template) are searched.
fn pair_layout(
    processor: &serde_json::Value,
) -> std::result::Result<Option<(u32, u32, u32)>, String> {
    let token_id =
        |pair: &serde_json::Value| pair.get(1).and_then(|v| v.as_u64()).map(|v| v as u32);
    let pair_of =
        |p: &serde_json::Value, separators| match (token_id(&p["cls"]), token_id(&p["sep"])) {
            (Some(cls), Some(sep)) => Ok(Some((cls, sep, separators))),
            _ => Err(format!("post-processor without cls/sep ids: {p}")),
        };
    match processor.get("type").and_then(|t| t.as_str()) {
        None => Ok(None),
        Some("BertProcessing") => pair_of(processor, 1),
        Some("RobertaProcessing") => pair_of(processor, 2),
        Some("TemplateProcessing") => template_layout(processor).map(Some),
        Some("Sequence") => {
            let mut found = None;
            for p in processor["processors"].as_array().into_iter().flatten() {
                if let Some(layout) = pair_layout(p)? {
                    found = Some(layout);
                }
            }
            Ok(found)
        }
        Some("ByteLevel") => Ok(None),
        Some(other) => Err(format!("unsupported post-processor {other}")),
    }
}

/// A pair template of the form `CLS $A SEP... $B SEP`.
fn template_layout(processor: &serde_json::Value) -> std::result::Result<(u32, u32, u32), String> {
    let unsupported = || {
        format!(
            "unsupported pair template {}: expected one special token, the question, one or \
             more separators, the context and a separator",
            processor["pair"]
        )
    };
    let items = processor["pair"].as_array().ok_or_else(unsupported)?;
    let special_id = |item: &serde_json::Value| {
        let name = item.get("SpecialToken")?.get("id")?.as_str()?;
        let ids = processor["special_tokens"]
            .get(name)?
            .get("ids")?
            .as_array()?;
        (ids.len() == 1)
            .then(|| ids[0].as_u64())
            .flatten()
            .map(|v| v as u32)
    };
    fn sequence(item: &serde_json::Value) -> Option<&str> {
        item.get("Sequence")?.get("id")?.as_str()
    }
    let [first, question, middle @ .., context, last] = items.as_slice() else {
        return Err(unsupported());
    };
    let cls = special_id(first).ok_or_else(unsupported)?;
    let sep = special_id(last).ok_or_else(unsupported)?;
    let separators_ok = !middle.is_empty() && middle.iter().all(|m| special_id(m) == Some(sep));
    if sequence(question) != Some("A") || sequence(context) != Some("B") || !separators_ok {
        return Err(unsupported());
    }
    Ok((cls, sep, middle.len() as u32))
}

/// Whether a serialised tokenizer is a plain BERT pipeline, where tokenizing space-separated
/// chunks separately gives exactly the same tokens and offsets as tokenizing the whole text.
fn is_space_local(definition: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(definition) else {
        return false;
    };
    let kind = |key: &str| {
        value
            .get(key)
            .and_then(|v| v.get("type"))
            .and_then(|t| t.as_str())
    };
    let added_tokens_without_spaces = value
        .get("added_tokens")
        .and_then(|a| a.as_array())
        .is_some_and(|tokens| {
            tokens.iter().all(|t| {
                t.get("content")
                    .and_then(|c| c.as_str())
                    .is_some_and(|c| !c.contains(' '))
            })
        });
    let normalizer_ok = match value.get("normalizer") {
        None | Some(serde_json::Value::Null) => true,
        Some(_) => kind("normalizer") == Some("BertNormalizer"),
    };
    normalizer_ok
        && kind("pre_tokenizer") == Some("BertPreTokenizer")
        && kind("model") == Some("WordPiece")
        && added_tokens_without_spaces
}

/// The path as the tokenizers library takes file names.
fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| tokenizer_error(path, "path is not valid UTF-8"))
}

fn tokenizer_error(path: &Path, e: impl std::fmt::Display) -> DataError {
    DataError::Tokenizer {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// `do_lower_case` from `tokenizer_config.json` next to the vocabulary, else a guess from the
/// vocabulary itself: cased BERT vocabularies contain capitalised words.
fn detect_lowercase(vocab: &Path) -> Result<bool> {
    if let Some(dir) = vocab.parent() {
        let config = dir.join("tokenizer_config.json");
        if let Ok(text) = std::fs::read_to_string(&config) {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| DataError::Tokenizer {
                    path: config.clone(),
                    message: e.to_string(),
                })?;
            if let Some(lower) = value.get("do_lower_case").and_then(|v| v.as_bool()) {
                return Ok(lower);
            }
        }
    }
    let text = std::fs::read_to_string(vocab).map_err(|e| DataError::io(vocab, e))?;
    let capitalised = text
        .lines()
        .filter(|t| !t.starts_with('['))
        .any(|t| t.chars().next().is_some_and(|c| c.is_uppercase()));
    Ok(!capitalised)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny uncased WordPiece vocabulary, enough for unit tests without downloaded files.
    pub(crate) fn tiny_tokenizer(dir: &Path) -> QaTokenizer {
        let words = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat",
            "where", "did", "?", ".", "a", "dog", "##s", "ran", "in", "park", "who", "what", "is",
            "red", "blue", "sky", "caf", "##e",
        ];
        let vocab = dir.join("vocab.txt");
        std::fs::write(&vocab, words.join("\n")).unwrap();
        QaTokenizer::from_vocab(&vocab, Casing::Lower).unwrap()
    }

    #[test]
    fn vocab_tokenizer_gives_char_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tiny_tokenizer(dir.path());
        let t = tok.encode("Café  Dogs sat.").unwrap();
        let pieces: Vec<_> = t.ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
        assert_eq!(pieces, ["caf", "##e", "dog", "##s", "sat", "."]);
        assert_eq!(
            t.offsets,
            [(0, 3), (3, 4), (6, 9), (9, 10), (11, 14), (14, 15)]
        );
        assert_eq!(tok.special_tokens().cls, 2);
    }

    #[test]
    fn batch_encoding_equals_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tiny_tokenizer(dir.path());
        assert!(tok.space_local);
        let texts = [
            "  the cat  sat. ",
            "Café\tdogs\nran in the park",
            "",
            " ",
            "the cat the cat",
            "wh\u{e9}re is the red sky?",
        ];
        let batch = tok.encode_batch(&texts).unwrap();
        for (text, got) in texts.iter().zip(&batch) {
            assert_eq!(got, &tok.encode(text).unwrap(), "{text:?}");
        }
    }

    #[test]
    fn casing_is_detected_from_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let vocab = dir.path().join("vocab.txt");
        std::fs::write(&vocab, "[PAD]\n[UNK]\n[CLS]\n[SEP]\nThe\nthe\n").unwrap();
        assert!(!detect_lowercase(&vocab).unwrap());
        std::fs::write(&vocab, "[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n").unwrap();
        assert!(detect_lowercase(&vocab).unwrap());
    }

    #[test]
    fn missing_tokenizer_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = QaTokenizer::from_path(dir.path(), Casing::Auto).unwrap_err();
        assert!(
            err.to_string()
                .contains("no tokenizer.json, vocab.json + merges.txt or vocab.txt"),
            "{err}"
        );
    }
}
