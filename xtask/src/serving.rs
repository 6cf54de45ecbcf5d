//! The serving section of `cargo xtask bench`: `qa serve` under load over loopback, batching
//! across requests on and off, against the Python answerer (`tests/parity/python_answerer.py`) on
//! the same SQuAD dev requests in the same run, and a flood of long requests with the server's
//! peak memory. Every scenario is a fixed number of requests, so the section ends by itself.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{cargo, say, target_dir};

/// (concurrency, requests) per load level.
const LEVELS: [(usize, usize); 3] = [(1, 64), (8, 128), (32, 256)];
/// The flood: this many requests at once, each with a context of this many characters.
const FLOOD: (usize, usize) = (32, 24_000);

/// A server under test: its process and base URL; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `command`, which prints `listening on URL` on its first stdout line when ready.
    fn start(mut command: Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the server")?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .context("reading the server's address")?;
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            bail!("the server said {line:?} instead of its address");
        };
        Ok(Server {
            base: base.to_string(),
            child,
        })
    }

    /// Peak resident memory so far, in MiB (Linux).
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
    }
}

/// What one load level measured.
struct Measured {
    seconds: f64,
    latencies: Vec<Duration>,
    failed: usize,
    refused: usize,
    timed_out: usize,
}

impl Measured {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Answers per second, and the latency of answers (200s).
    fn cell(&self) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut cell = format!(
            "{:.1} answers/s, p50 {:.0} ms, p99 {:.0} ms",
            self.latencies.len() as f64 / self.seconds,
            ms(self.percentile(0.5)),
            ms(self.percentile(0.99))
        );
        if self.refused > 0 {
            cell.push_str(&format!(", {} refused (429)", self.refused));
        }
        if self.timed_out > 0 {
            cell.push_str(&format!(", {} timed out (503)", self.timed_out));
        }
        if self.failed > 0 {
            cell.push_str(&format!(", {} FAILED", self.failed));
        }
        cell
    }
}

/// Posts `count` of `bodies` (round robin) from `concurrency` clients at once.
fn load(base: &str, bodies: &[String], concurrency: usize, count: usize) -> Measured {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(count));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..concurrency {
            scope.spawn(|| {
                let agent = agent();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let sent = Instant::now();
                    let status = post(&agent, base, &bodies[i % bodies.len()]);
                    results.lock().unwrap().push((status, sent.elapsed()));
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let results = results.into_inner().unwrap();
    Measured {
        seconds,
        latencies: results
            .iter()
            .filter(|(s, _)| *s == 200)
            .map(|(_, d)| *d)
            .collect(),
        failed: results
            .iter()
            .filter(|(s, _)| !matches!(s, 200 | 429 | 503))
            .count(),
        refused: results.iter().filter(|(s, _)| *s == 429).count(),
        timed_out: results.iter().filter(|(s, _)| *s == 503).count(),
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// The status of one answer request (0 when the connection failed).
fn post(agent: &ureq::Agent, base: &str, body: &str) -> u16 {
    agent
        .post(&format!("{base}/v1/answer"))
        .header("content-type", "application/json")
        .send(body)
        .map(|mut r| {
            let _ = r.body_mut().read_to_string();
            r.status().as_u16()
        })
        .unwrap_or(0)
}

/// One request per SQuAD dev paragraph (its first question), and the flood's long requests:
/// consecutive paragraphs joined to the flood's length.
fn requests(dev: &Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let text =
        std::fs::read_to_string(dev).with_context(|| format!("reading {}", dev.display()))?;
    let data: serde_json::Value = serde_json::from_str(&text)?;
    let mut pairs = Vec::new();
    for article in data["data"].as_array().context("SQuAD's data")? {
        for p in article["paragraphs"].as_array().context("paragraphs")? {
            let context = p["context"].as_str().context("context")?;
            let question = p["qas"][0]["question"].as_str().context("question")?;
            pairs.push((context.to_string(), question.to_string()));
        }
    }
    let body = |c: &str, q: &str| serde_json::json!({"context": c, "question": q}).to_string();
    let short = pairs.iter().take(256).map(|(c, q)| body(c, q)).collect();
    let (floods, chars) = FLOOD;
    let mut long = Vec::new();
    let mut at = 0;
    while long.len() < floods {
        let mut context = String::new();
        let question = &pairs[at].1;
        while context.chars().count() < chars {
            context.push_str(&pairs[at % pairs.len()].0);
            context.push(' ');
            at += 1;
        }
        let cut: String = context.chars().take(chars).collect();
        long.push(body(&cut, question));
    }
    Ok((short, long))
}

/// A table row for a server: one cell per load level.
fn row(name: &str, base: &str, bodies: &[String]) -> Vec<String> {
    for body in bodies.iter().take(8) {
        post(&agent(), base, body);
    }
    let mut cells = vec![name.to_string()];
    for (concurrency, count) in LEVELS {
        say(format!(
            "  {name}: concurrency {concurrency}, {count} requests"
        ));
        cells.push(load(base, bodies, concurrency, count).cell());
    }
    cells
}

fn qa_serve(qa: &Path, model: &Path, extra: &[&str]) -> anyhow::Result<Server> {
    let mut command = Command::new(qa);
    command
        .args([
            "serve",
            "--device",
            "cpu",
            "--addr",
            "127.0.0.1:0",
            "--model",
        ])
        .arg(model)
        .args(extra);
    Server::start(command)
}

/// Builds `qa`, measures, and returns the section's markdown.
pub fn run(shared: &Path) -> anyhow::Result<String> {
    say("cargo build --release -p qa-cli --bin qa".into());
    let status = cargo()
        .args(["build", "--release", "-p", "qa-cli", "--bin", "qa"])
        .status()?;
    if !status.success() {
        bail!("building qa failed");
    }
    let qa: PathBuf = target_dir().join("release/qa");
    let model = shared.join("models/all-MiniLM-L6-v2");
    let (short, long) = requests(&shared.join("data/squad/dev-v1.1.json"))?;
    let mut rows = Vec::new();

    say("serving: qa serve --max-batch-windows 8 (batching across requests)".into());
    let server = qa_serve(&qa, &model, &["--max-batch-windows", "8"])?;
    rows.push(row(
        "`qa serve --max-batch-windows 8` (batching across requests)",
        &server.base,
        &short,
    ));
    drop(server);
    say("serving: qa serve (the CPU default, one window per forward pass)".into());
    let server = qa_serve(&qa, &model, &[])?;
    rows.push(row(
        "`qa serve` (CPU default: `--max-batch-windows 1`)",
        &server.base,
        &short,
    ));
    drop(server);
    rows.push(python_row(&model, &short)?);

    say(format!(
        "serving: flood of {} requests of {} characters",
        FLOOD.0, FLOOD.1
    ));
    let server = qa_serve(&qa, &model, &[])?;
    let flood = load(&server.base, &long, FLOOD.0, FLOOD.0);
    let peak = server
        .peak_rss_mib()
        .map_or("unknown".into(), |m| format!("{m:.0} MiB"));
    drop(server);
    Ok(render(&rows, &flood, &peak))
}

/// The Python answerer's row, when `QA_TORCH_PYTHON` names a Python with torch and transformers.
fn python_row(model: &Path, bodies: &[String]) -> anyhow::Result<Vec<String>> {
    let name = "Python answerer (transformers, ThreadingHTTPServer)";
    let Some(python) = std::env::var_os("QA_TORCH_PYTHON") else {
        say("QA_TORCH_PYTHON not set: no Python answerer in this run".into());
        let mut cells = vec![name.to_string()];
        cells.extend(LEVELS.map(|_| "not measured (QA_TORCH_PYTHON not set)".to_string()));
        return Ok(cells);
    };
    say("serving: tests/parity/python_answerer.py".into());
    let mut command = Command::new(python);
    command
        .arg(crate::workspace_root().join("tests/parity/python_answerer.py"))
        .arg(model);
    let server = Server::start(command)?;
    Ok(row(name, &server.base, bodies))
}

fn render(rows: &[Vec<String>], flood: &Measured, peak: &str) -> String {
    let mut s = format!(
        "{}\n\nMiniLM (random span head), one SQuAD v1.1 dev question per paragraph, windows \
         384/128, loopback, `--device cpu`; each client sends its next request when the last is \
         answered.\n\n| server |",
        crate::bench::machine_line("cargo xtask bench --serving-only")
    );
    for (concurrency, count) in LEVELS {
        s.push_str(&format!(" concurrency {concurrency} ({count} requests) |"));
    }
    s.push_str("\n|---|---|---|---|\n");
    for cells in rows {
        s.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    s.push_str(&format!(
        "\nFlood, `qa serve` with its defaults: {} requests of {} characters at once: {}; \
         server peak RSS {peak}.\n",
        FLOOD.0,
        FLOOD.1,
        flood.cell()
    ));
    s
}
