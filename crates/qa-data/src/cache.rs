//! Features on disk, so a second run (or every evaluation during training) skips tokenization.
//!
//! A cache file is named by a SHA-256 key over the dataset content, the tokenizer definition and
//! the window parameters, and carries a checksum of its payload: a file for other inputs, a
//! truncated or corrupt file, or one from another format version is rebuilt, never trusted.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::atomic;
use crate::binio::{Reader, Writer};
use crate::checksum::hex;
use crate::error::Result;
use crate::squad::Dataset;
use crate::tokenize::{QaTokenizer, SpecialTokens, TokenizedText};
use crate::window::{Feature, FeatureSet, WindowConfig, WindowStats};

const MAGIC: &[u8; 8] = b"QAFEAT03";

/// What to do with an existing cache file (Simple Transformers' `reprocess_input_data` and
/// `use_cached_eval_features` map onto this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    /// Use a valid cache file, else build and store.
    Reuse,
    /// Always build, and store the result for later runs.
    Rebuild,
}

/// Whether features came from disk, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit(PathBuf),
    Built { path: PathBuf, reason: String },
}

pub struct FeatureCache {
    pub dir: PathBuf,
    pub policy: CachePolicy,
}

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>, policy: CachePolicy) -> Self {
        FeatureCache {
            dir: dir.into(),
            policy,
        }
    }

    /// The features of `dataset`, from the cache when it holds them, else built and stored.
    pub fn features(
        &self,
        dataset: &Dataset,
        tokenizer: &QaTokenizer,
        config: WindowConfig,
    ) -> Result<(FeatureSet, CacheOutcome)> {
        config.validate()?;
        let key = cache_key(dataset, tokenizer, &config);
        let path = self.dir.join(format!("features-{}.bin", hex(&key[..12])));
        let reason = match self.policy {
            CachePolicy::Rebuild => "rebuild requested".to_string(),
            CachePolicy::Reuse => match read(&path, &key, config) {
                Ok(features) => return Ok((features, CacheOutcome::Hit(path))),
                Err(reason) => reason,
            },
        };
        let features = FeatureSet::build(dataset, tokenizer, config)?;
        atomic::write(&path, &encode(&features, &key))?;
        Ok((features, CacheOutcome::Built { path, reason }))
    }
}

fn cache_key(dataset: &Dataset, tokenizer: &QaTokenizer, config: &WindowConfig) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(MAGIC);
    h.update(tokenizer.fingerprint());
    for v in [
        config.max_seq_length,
        config.doc_stride,
        config.max_query_length,
    ] {
        h.update((v as u64).to_le_bytes());
    }
    let field = |h: &mut Sha256, s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    h.update((dataset.contexts.len() as u64).to_le_bytes());
    for c in &dataset.contexts {
        field(&mut h, c);
    }
    for e in &dataset.examples {
        field(&mut h, &e.id);
        field(&mut h, &e.question);
        h.update((e.context as u64).to_le_bytes());
        h.update([e.is_impossible as u8]);
        h.update((e.answers.len() as u64).to_le_bytes());
        for a in &e.answers {
            field(&mut h, &a.text);
            h.update(a.start.map_or(u64::MAX, |s| s as u64).to_le_bytes());
        }
    }
    h.finalize().into()
}

fn encode(fs: &FeatureSet, key: &[u8; 32]) -> Vec<u8> {
    let mut w = Writer::new();
    let special = fs.special;
    w.u32s(&[special.cls, special.sep, special.pad, special.separators]);
    w.u64(fs.contexts.len() as u64);
    for c in &fs.contexts {
        w.u32s(&c.ids);
        let flat: Vec<u32> = c.offsets.iter().flat_map(|&(s, e)| [s, e]).collect();
        w.u32s(&flat);
    }
    w.u64(fs.questions.len() as u64);
    for q in &fs.questions {
        w.u32s(q);
    }
    w.u32s(&fs.example_context);
    let mut flat = Vec::with_capacity(fs.features.len() * 6);
    for f in &fs.features {
        let (has, s, e) = match f.label {
            Some((s, e)) => (1, s, e),
            None => (0, 0, 0),
        };
        flat.extend([f.example, f.context_start, f.context_len, has, s, e]);
    }
    w.u32s(&flat);
    let s = &fs.stats;
    let stats = [
        s.examples,
        s.features,
        s.answers_outside_every_window,
        s.unlabelled_examples,
        s.truncated_questions,
        s.split_examples,
    ];
    w.u32s(&stats.map(|v| v as u32));

    let payload = w.bytes;
    let mut out = Vec::with_capacity(payload.len() + 80);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(key);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&payload));
    out.extend_from_slice(&payload);
    out
}

/// Reads a cache file; `Err` says why it cannot be used.
fn read(path: &Path, key: &[u8; 32], config: WindowConfig) -> Result<FeatureSet, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err("no cache yet".into()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let header = 8 + 32 + 8 + 32;
    if bytes.len() < header || &bytes[..8] != MAGIC {
        return Err("cache file has another format; rebuilt".into());
    }
    if &bytes[8..40] != key {
        return Err("cache file belongs to other inputs; rebuilt".into());
    }
    let len = u64::from_le_bytes(bytes[40..48].try_into().expect("8 bytes")) as usize;
    let payload = &bytes[header..];
    if payload.len() != len || Sha256::digest(payload).as_slice() != &bytes[48..80] {
        return Err("cache file is truncated or corrupt; rebuilt".into());
    }
    decode(payload, config).ok_or_else(|| "cache file is inconsistent; rebuilt".into())
}

fn decode(payload: &[u8], config: WindowConfig) -> Option<FeatureSet> {
    let mut r = Reader::new(payload);
    let special = match r.u32s()?.as_slice() {
        &[cls, sep, pad, separators] => SpecialTokens {
            cls,
            sep,
            pad,
            separators,
        },
        _ => return None,
    };
    let n = r.len()?;
    let mut contexts = Vec::with_capacity(n.min(1 << 24));
    for _ in 0..n {
        let ids = r.u32s()?;
        let flat = r.u32s()?;
        if flat.len() != 2 * ids.len() {
            return None;
        }
        let offsets = flat.chunks_exact(2).map(|c| (c[0], c[1])).collect();
        contexts.push(TokenizedText { ids, offsets });
    }
    let n = r.len()?;
    let mut questions = Vec::with_capacity(n.min(1 << 24));
    for _ in 0..n {
        questions.push(r.u32s()?);
    }
    let example_context = r.u32s()?;
    let flat = r.u32s()?;
    if flat.len() % 6 != 0 {
        return None;
    }
    let features: Vec<Feature> = flat
        .chunks_exact(6)
        .map(|c| Feature {
            example: c[0],
            context_start: c[1],
            context_len: c[2],
            label: (c[3] == 1).then_some((c[4], c[5])),
        })
        .collect();
    let stats = match r.u32s()?.as_slice() {
        &[examples, features, lost, unlabelled, truncated, split] => WindowStats {
            examples: examples as usize,
            features: features as usize,
            answers_outside_every_window: lost as usize,
            unlabelled_examples: unlabelled as usize,
            truncated_questions: truncated as usize,
            split_examples: split as usize,
        },
        _ => return None,
    };
    // Every index must point inside what was read.
    let consistent = r.is_empty()
        && example_context.len() == questions.len()
        && example_context
            .iter()
            .all(|&c| (c as usize) < contexts.len())
        && features.iter().all(|f| {
            let Some(&c) = example_context.get(f.example as usize) else {
                return false;
            };
            (f.context_start as usize + f.context_len as usize) <= contexts[c as usize].ids.len()
        });
    consistent.then_some(FeatureSet {
        config,
        special,
        contexts,
        questions,
        example_context,
        features,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::squad::LoadOptions;
    use crate::tokenize::tests::tiny_tokenizer;

    const DATA: &str = r#"[{"context": "the cat sat on the mat.", "qas": [
        {"id": "1", "question": "who sat?", "answers": [{"text": "the cat", "answer_start": 0}]},
        {"id": "2", "question": "where?", "is_impossible": true, "answers": []}]}]"#;

    #[test]
    fn second_call_hits_and_corruption_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tiny_tokenizer(dir.path());
        let ds = Dataset::parse(DATA, Path::new("d.json"), LoadOptions::default()).unwrap();
        let cache = FeatureCache::new(dir.path().join("cache"), CachePolicy::Reuse);
        let config = WindowConfig::default();

        let (built, outcome) = cache.features(&ds, &tok, config).unwrap();
        let CacheOutcome::Built { path, .. } = outcome else {
            panic!("first call must build")
        };
        let (hit, outcome) = cache.features(&ds, &tok, config).unwrap();
        assert_eq!(outcome, CacheOutcome::Hit(path.clone()));
        assert_eq!(hit, built);

        // Flip one payload byte: the checksum catches it.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (again, outcome) = cache.features(&ds, &tok, config).unwrap();
        assert!(
            matches!(outcome, CacheOutcome::Built { ref reason, .. } if reason.contains("corrupt"))
        );
        assert_eq!(again, built);

        // Truncated file.
        std::fs::write(&path, &bytes[..20]).unwrap();
        let (_, outcome) = cache.features(&ds, &tok, config).unwrap();
        assert!(matches!(outcome, CacheOutcome::Built { .. }));
    }

    #[test]
    fn other_parameters_use_another_file_and_rebuild_policy_rebuilds() {
        let dir = tempfile::tempdir().unwrap();
        let tok = tiny_tokenizer(dir.path());
        let ds = Dataset::parse(DATA, Path::new("d.json"), LoadOptions::default()).unwrap();
        let cache = FeatureCache::new(dir.path().join("cache"), CachePolicy::Reuse);
        let a = WindowConfig::default();
        let b = WindowConfig {
            max_seq_length: 128,
            doc_stride: 32,
            max_query_length: 64,
        };
        cache.features(&ds, &tok, a).unwrap();
        let (_, outcome) = cache.features(&ds, &tok, b).unwrap();
        assert!(matches!(outcome, CacheOutcome::Built { .. }));
        let rebuild = FeatureCache::new(dir.path().join("cache"), CachePolicy::Rebuild);
        let (_, outcome) = rebuild.features(&ds, &tok, a).unwrap();
        assert!(
            matches!(outcome, CacheOutcome::Built { ref reason, .. } if reason == "rebuild requested")
        );
    }
}
