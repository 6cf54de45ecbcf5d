//! `cargo xtask gpu-kit`: everything a run on the lent GPU machine needs, in one git-ignored
//! folder that the device tool can carry (64 MiB a call). That machine has CUDA but no cargo, no
//! network and no `../shared`, so the kit holds the release binary (debug info stripped,
//! xz-compressed), the shared MiniLM converted to f16 (half the bytes; `qa` loads f16) and
//! xz-compressed, and the compressed SQuAD v1.1 files. `xtask/gpu-run.sh` runs there from the checkout's root.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::download::write_atomic;
use crate::{cargo, shared_dir, target_dir};

/// What the device tool carries at most, less room for the rest of the working tree.
const LIMIT: u64 = 60 << 20;

/// The MiniLM files besides the weights.
const MODEL_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

/// The SQuAD files, as `../shared` holds them compressed.
const DATA_FILES: [&str; 2] = ["train-v1.1.json.xz", "dev-v1.1.json.xz"];

pub fn run(out: &Path, force: bool) -> anyhow::Result<()> {
    let shared = shared_dir("GPU kits")?;
    let model = shared.join("models/all-MiniLM-L6-v2");
    let data = shared.join("data/squad");
    if let Some(missing) = DATA_FILES
        .iter()
        .map(|f| data.join(f))
        .find(|p| !p.is_file())
    {
        bail!("{} is missing", missing.display());
    }
    if out.exists() {
        if !force {
            bail!("{} exists; pass --force to rebuild it", out.display());
        }
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    std::fs::create_dir_all(out.join("model"))?;

    eprintln!("building qa (release, with CUDA)");
    command(cargo().args(["build", "--release", "-p", "qa-cli", "--bin", "qa"]))?;
    let stripped = out.join("qa");
    command(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(target_dir().join("release/qa"))
            .arg(&stripped),
    )?;
    command(Command::new("xz").args(["-6", "-T2"]).arg(&stripped))?;

    let weights = model.join("model.safetensors");
    let bytes =
        std::fs::read(&weights).with_context(|| format!("reading {}", weights.display()))?;
    let f16 = to_f16(&bytes).with_context(|| format!("converting {}", weights.display()))?;
    // xz saves a tenth of the f16 weights (4.6 MB), which the kit needs since the CUDA binary
    // carries burn's fusion and autotuning (62.5 MiB uncompressed, over the limit).
    let kit_weights = out.join("model/model.safetensors");
    write_atomic(&kit_weights, &f16)?;
    command(Command::new("xz").args(["-6", "-T2"]).arg(&kit_weights))?;
    for name in MODEL_FILES {
        copy(&model.join(name), &out.join("model").join(name))?;
    }
    for name in DATA_FILES {
        copy(&data.join(name), &out.join(name))?;
    }

    let size = folder_size(out)?;
    eprintln!(
        "{}: {:.1} MiB",
        out.display(),
        size as f64 / (1 << 20) as f64
    );
    if size > LIMIT {
        bail!(
            "{} holds {size} bytes, more than the {LIMIT} a device call can carry with the tree",
            out.display()
        );
    }
    Ok(())
}

/// A safetensors file with every f32 tensor stored as f16 (others unchanged).
pub fn to_f16(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let file = SafeTensors::deserialize(bytes)?;
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        let (dtype, data) = match view.dtype() {
            Dtype::F32 => {
                let halves = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| half::f16::from_f32(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .flat_map(|h| h.to_le_bytes())
                    .collect();
                (Dtype::F16, halves)
            }
            other => (other, view.data().to_vec()),
        };
        tensors.push((name, dtype, view.shape().to_vec(), data));
    }
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            Ok((name.as_str(), TensorView::new(*dtype, shape.clone(), data)?))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(safetensors::serialize(views, file_metadata(bytes))?)
}

/// The `__metadata__` of a safetensors file (transformers wants `format`).
fn file_metadata(bytes: &[u8]) -> Option<std::collections::HashMap<String, String>> {
    let (_, metadata) = SafeTensors::read_metadata(bytes).ok()?;
    metadata.metadata().clone()
}

fn command(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn folder_size(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            } else {
                total += entry.metadata()?.len();
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_copy_keeps_names_shapes_metadata_and_values_to_half_precision() {
        let values: Vec<f32> = vec![0.0, 1.0, -2.5, 0.333_333, 65504.0, 1e-3];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ids: Vec<u8> = [7i64, -1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let original = safetensors::serialize(
            [
                (
                    "w",
                    TensorView::new(Dtype::F32, vec![2, 3], &bytes).unwrap(),
                ),
                ("ids", TensorView::new(Dtype::I64, vec![2], &ids).unwrap()),
            ],
            Some([("format".to_string(), "pt".to_string())].into()),
        )
        .unwrap();

        let converted = to_f16(&original).unwrap();
        let file = SafeTensors::deserialize(&converted).unwrap();
        let w = file.tensor("w").unwrap();
        assert_eq!((w.dtype(), w.shape()), (Dtype::F16, &[2, 3][..]));
        let back: Vec<f32> = w
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect();
        for (a, b) in values.iter().zip(&back) {
            assert!((a - b).abs() <= a.abs() * 1e-3, "{a} became {b}");
        }
        let kept = file.tensor("ids").unwrap();
        assert_eq!((kept.dtype(), kept.data()), (Dtype::I64, &ids[..]));
        assert_eq!(
            file_metadata(&converted)
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
        assert!(converted.len() < original.len());
    }
}
