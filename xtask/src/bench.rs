//! `cargo xtask bench`: every benchmark in one run, the figures written into the generated part
//! of `docs/benchmarks.md` (between its markers) with machine, commands and date.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::{cargo, qa, run_json, say, shared_dir, target_dir, workspace_root};

/// The generated blocks of docs/benchmarks.md: (begin, end) markers.
const KERNELS: (&str, &str) = ("<!-- xtask bench: begin -->", "<!-- xtask bench: end -->");
const SERVING: (&str, &str) = (
    "<!-- xtask bench serving: begin -->",
    "<!-- xtask bench serving: end -->",
);

/// A criterion benchmark: its group and function names, what it measures, and the reference on
/// this machine.
struct CriterionBench {
    group: &'static str,
    function: &'static str,
    what: &'static str,
    reference: &'static str,
}

const fn bench(
    group: &'static str,
    function: &'static str,
    what: &'static str,
    reference: &'static str,
) -> CriterionBench {
    CriterionBench {
        group,
        function,
        what,
        reference,
    }
}

const CRITERION: &[CriterionBench] = &[
    bench(
        "squad-v1.1-train",
        "load",
        "parse + validate SQuAD v1.1 train (30 MB)",
        "-",
    ),
    bench(
        "squad-v1.1-train",
        "tokenize+window 384/128",
        "tokenize + window SQuAD v1.1 train, MiniLM tokenizer, 384/128",
        "63.9 s (HF fast tokenizer, run_qa recipe)",
    ),
    bench(
        "minilm-qa-forward/flex",
        "bs1-seq128",
        "MiniLM QA forward, bs 1, seq 128 (Flex)",
        "21.6 ms",
    ),
    bench(
        "minilm-qa-forward/flex",
        "bs1-seq384",
        "MiniLM QA forward, bs 1, seq 384 (Flex)",
        "55.7 ms",
    ),
    bench(
        "minilm-qa-forward/flex",
        "bs8-seq384",
        "MiniLM QA forward, bs 8, seq 384 (Flex)",
        "384.5 ms",
    ),
    bench(
        "minilm-qa-forward/int8",
        "bs1-seq128",
        "MiniLM QA forward, bs 1, seq 128, int8 (`qa quantize`)",
        "-",
    ),
    bench(
        "minilm-qa-forward/int8",
        "bs1-seq384",
        "MiniLM QA forward, bs 1, seq 384, int8",
        "-",
    ),
    bench(
        "minilm-qa-forward/int8",
        "bs8-seq384",
        "MiniLM QA forward, bs 8, seq 384, int8",
        "-",
    ),
    bench(
        "minilm-qa-forward/ndarray",
        "bs1-seq128",
        "MiniLM QA forward, bs 1, seq 128 (NdArray)",
        "21.6 ms",
    ),
    bench(
        "minilm-qa-forward/ndarray",
        "bs1-seq384",
        "MiniLM QA forward, bs 1, seq 384 (NdArray)",
        "55.7 ms",
    ),
    bench(
        "minilm-qa-forward/ndarray",
        "bs8-seq384",
        "MiniLM QA forward, bs 8, seq 384 (NdArray)",
        "384.5 ms",
    ),
];

impl CriterionBench {
    /// Where criterion keeps the estimates: one folder for the group and one for the function,
    /// each with `/` replaced by `_`.
    fn estimates_path(&self, criterion_dir: &Path) -> PathBuf {
        criterion_dir
            .join(self.group.replace('/', "_"))
            .join(self.function.replace('/', "_"))
            .join("new/estimates.json")
    }
}

/// Every benchmark, or only the serving section; each block written into docs/benchmarks.md
/// when `write`.
pub fn run(write: bool, serving_only: bool) -> anyhow::Result<()> {
    let shared = shared_dir("benchmarks")?;
    if !serving_only {
        let table = kernels_and_training(&shared)?;
        publish(&table, KERNELS, write)?;
    }
    let serving = crate::serving::run(&shared)?;
    publish(&serving, SERVING, write)
}

fn publish(block: &str, markers: (&str, &str), write: bool) -> anyhow::Result<()> {
    println!("{block}");
    if write {
        let path = workspace_root().join("docs/benchmarks.md");
        replace_generated(&path, markers, block)?;
        say(format!("updated {}", path.display()));
    }
    Ok(())
}

/// The criterion benchmarks and the training throughput, each beside its PyTorch reference.
fn kernels_and_training(shared: &Path) -> anyhow::Result<String> {
    for (package, bench) in [("qa-data", "windowing"), ("qa-model", "inference")] {
        say(format!("cargo bench -p {package} --bench {bench}"));
        let status = cargo()
            .args(["bench", "-p", package, "--bench", bench])
            .env("QA_SHARED_DIR", shared)
            .stdout(Stdio::inherit())
            .status()?;
        if !status.success() {
            bail!("cargo bench -p {package} failed");
        }
    }
    let model = shared.join("models/all-MiniLM-L6-v2");
    let torch = torch_reference("torch_latency.py", &[model.as_os_str()])?;
    let mut rows = Vec::new();
    let target = target_dir();
    for bench in CRITERION {
        let path = bench.estimates_path(&target.join("criterion"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let ns = v["mean"]["point_estimate"]
            .as_f64()
            .context("criterion mean")?;
        let reference = if bench.group.starts_with("minilm-qa-forward/") {
            forward_reference(bench, torch.as_ref())
        } else {
            bench.reference.to_string()
        };
        rows.push((bench.what.to_string(), human(ns), reference));
    }

    say("training throughput: qa train --config configs/bench-train-cpu.toml".into());
    let summary = run_json(
        qa().args([
            "train",
            "--json",
            "--config",
            "configs/bench-train-cpu.toml",
            "--set",
        ])
        .arg(format!("model={}", model.display())),
    )
    .context("the training benchmark failed")?;
    let fps = summary["train_features_per_second"].as_f64().unwrap_or(0.0);
    let steps = summary["global_step"].as_u64().unwrap_or(0).to_string();
    let torch_train = torch_reference(
        "torch_train_throughput.py",
        &[model.as_os_str(), steps.as_ref()],
    )?;
    let measured = torch_train
        .as_ref()
        .and_then(|t| Some((t["torch"].as_str()?, t["features_per_second"].as_f64()?)));
    rows.push((
        "MiniLM training, seq 384, batch 8 (features/s)".into(),
        format!("{fps:.2} features/s"),
        match measured {
            Some((version, torch_fps)) => format!(
                "{torch_fps:.2} features/s (PyTorch {version} CPU, 2 threads, this run); brief: 2.41 features/s"
            ),
            None => "2.41 features/s (PyTorch CPU, from the brief)".into(),
        },
    ));

    Ok(render(&rows))
}

/// The references of a forward-pass row: PyTorch and ONNX Runtime fp32 (and, for int8, ONNX
/// Runtime's dynamic int8 and the goal of half the best fp32) measured in this run by
/// `torch_latency.py`; the brief's PyTorch figure without it.
fn forward_reference(bench: &CriterionBench, measured: Option<&serde_json::Value>) -> String {
    let shape = bench.function;
    let Some(m) = measured else {
        return format!(
            "{} (PyTorch 2.15 CPU, 2 threads, from the brief)",
            bench.reference
        );
    };
    let torch = m[shape].as_f64().unwrap_or(f64::NAN);
    let version = m["torch"].as_str().unwrap_or("?");
    let ort_fp32 = m["ort-fp32"][shape].as_f64();
    let ort_int8 = m["ort-int8"][shape].as_f64();
    let fp32 = match ort_fp32 {
        Some(ort) => format!(
            "PyTorch {version} {torch:.1} ms, ONNX Runtime {} fp32 {ort:.1} ms",
            m["ort"].as_str().unwrap_or("?")
        ),
        None => format!("PyTorch {version} {torch:.1} ms"),
    };
    if !bench.group.ends_with("/int8") {
        return format!("{fp32} (CPU, 2 threads, this run)");
    }
    let best = ort_fp32.map_or(torch, |ort| ort.min(torch));
    match ort_int8 {
        Some(int8) => format!(
            "ONNX Runtime dynamic int8 {int8:.1} ms; goal at most {:.1} ms, half the best fp32 ({fp32}; this run)",
            best / 2.0
        ),
        None => format!(
            "goal at most {:.1} ms, half of {fp32} (this run; no onnxruntime)",
            best / 2.0
        ),
    }
}

/// A PyTorch reference measured now by `tests/parity/<script>` when `QA_TORCH_PYTHON` names a
/// Python with torch and transformers: the JSON object on the script's last line. `None` (and the
/// brief's figures) otherwise.
fn torch_reference(
    script: &str,
    args: &[&std::ffi::OsStr],
) -> anyhow::Result<Option<serde_json::Value>> {
    let Some(python) = std::env::var_os("QA_TORCH_PYTHON") else {
        say("QA_TORCH_PYTHON not set: the PyTorch references are the brief's figures".into());
        return Ok(None);
    };
    say(format!("PyTorch reference: tests/parity/{script}"));
    let output = Command::new(&python)
        .arg(workspace_root().join("tests/parity").join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", python.to_string_lossy()))?;
    if !output.status.success() {
        bail!("tests/parity/{script} failed");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    Ok(Some(serde_json::from_str(last).with_context(|| {
        format!("{script} printed {last:?}, not a JSON line")
    })?))
}

fn human(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else {
        format!("{:.1} ms", ns / 1e6)
    }
}

/// "Last `COMMAND`: date, CPU, cores." for the head of a generated block.
pub fn machine_line(command: &str) -> String {
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("Last `{command}`: {date}, {cpu}, {cores} cores.")
}

fn render(rows: &[(String, String, String)]) -> String {
    let mut s = format!(
        "{}\n\n| benchmark | this project | reference (same machine) |\n|---|---|---|\n",
        machine_line("cargo xtask bench")
    );
    for (what, ours, reference) in rows {
        s.push_str(&format!("| {what} | {ours} | {reference} |\n"));
    }
    s
}

/// Replaces the text between the markers of `path` (appending them when missing).
fn replace_generated(path: &Path, (begin, end): (&str, &str), table: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n{table}{end}");
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => format!("{}{block}{}", &old[..b], &old[e + end.len()..]),
        _ => format!("{old}\n{block}\n"),
    };
    crate::download::write_atomic(path, new.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_are_found_where_criterion_writes_them() {
        // Folder names as criterion 0.7 wrote them for our benchmarks.
        let root = Path::new("c");
        let path = |group, function| bench(group, function, "", "").estimates_path(root);
        assert_eq!(
            path("minilm-qa-forward/flex", "bs8-seq384"),
            root.join("minilm-qa-forward_flex/bs8-seq384/new/estimates.json")
        );
        assert_eq!(
            path("squad-v1.1-train", "tokenize+window 384/128"),
            root.join("squad-v1.1-train/tokenize+window 384_128/new/estimates.json")
        );
    }

    const BEGIN: &str = KERNELS.0;
    const END: &str = KERNELS.1;

    #[test]
    fn generated_block_is_replaced_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.md");
        std::fs::write(
            &path,
            format!("# Bench\nintro\n{BEGIN}\nold\n{END}\noutro\n"),
        )
        .unwrap();
        replace_generated(&path, KERNELS, "new\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("# Bench\nintro\n{BEGIN}\nnew\n{END}\noutro\n")
        );
        // Another block goes after it, and leaves it alone.
        replace_generated(&path, SERVING, "served\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&format!("# Bench\nintro\n{BEGIN}\nnew\n{END}\noutro\n")));
        assert!(text.ends_with(&format!("{}\nserved\n{}\n", SERVING.0, SERVING.1)));
        assert_eq!(human(2.5e9), "2.50 s");
        assert_eq!(human(21.6e6), "21.6 ms");
    }
}
