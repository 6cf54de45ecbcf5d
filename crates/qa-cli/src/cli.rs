//! The command line, declared with clap.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use qa_data::{MisalignedPolicy, WindowConfig};
use qa_model::{AnsweringSettings, DeviceChoice, Precision};

#[derive(Parser)]
#[command(
    name = "qa",
    version,
    about = "Extractive question answering with BERT: data checks, training, evaluation, answers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Inspect SQuAD-format data.
    #[command(subcommand)]
    Data(DataCommand),
    /// Score predictions with the official SQuAD metrics, or predict and score with a model.
    Evaluate(EvaluateArgs),
    /// Fine-tune a model from a TOML config.
    Train(TrainArgs),
    /// Answer questions about a context.
    Predict(PredictArgs),
    /// Ask questions about a context interactively (works with piped input too).
    Chat(ChatArgs),
    /// Serve a JSON API and a chat page over HTTP.
    Serve(ServeArgs),
    /// Write an int8 copy of a fine-tuned model for faster CPU inference.
    Quantize(QuantizeArgs),
}

#[derive(Args)]
pub struct QuantizeArgs {
    /// The fine-tuned model directory (f32 or f16 weights).
    #[arg(long)]
    pub model: PathBuf,
    /// Where the int8 model goes (a new or empty directory).
    #[arg(long)]
    pub output: PathBuf,
    /// Replace the model files in a non-empty --output.
    #[arg(long)]
    pub overwrite: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Validate a file and, with a tokenizer, count features and answers lost to windowing.
    Check(DataCheckArgs),
}

/// `--device auto|cuda|wgpu|cpu`, its values listed in `--help`.
fn device_parser() -> impl TypedValueParser<Value = DeviceChoice> {
    PossibleValuesParser::new(DeviceChoice::ALL.map(DeviceChoice::name))
        .map(|name| name.parse().expect("a listed device"))
}

/// `--precision f32|bf16`, its values listed in `--help`.
fn precision_parser() -> impl TypedValueParser<Value = Precision> {
    PossibleValuesParser::new(Precision::ALL.map(Precision::name))
        .map(|name| name.parse().expect("a listed precision"))
}

/// `--misaligned realign|skip|error`, its values listed in `--help`.
fn misaligned_parser() -> impl TypedValueParser<Value = MisalignedPolicy> {
    PossibleValuesParser::new(MisalignedPolicy::ALL.map(MisalignedPolicy::name))
        .map(|name| name.parse().expect("a listed policy"))
}

/// Window sizes; each one not given keeps its value from the model's answering settings (or,
/// without a model, run_qa.py's 384 / 128 / 64).
#[derive(Args)]
pub struct WindowArgs {
    /// Tokens per feature, special tokens included [default: the model's, else 384].
    #[arg(long)]
    pub max_seq_length: Option<usize>,
    /// Tokens shared by consecutive windows of a long context [default: the model's, else 128].
    #[arg(long)]
    pub doc_stride: Option<usize>,
    /// Question tokens beyond this are cut [default: the model's, else 64].
    #[arg(long)]
    pub max_query_length: Option<usize>,
}

impl WindowArgs {
    /// `base` with the sizes given on the command line.
    pub fn over(&self, base: WindowConfig) -> WindowConfig {
        WindowConfig {
            max_seq_length: self.max_seq_length.unwrap_or(base.max_seq_length),
            doc_stride: self.doc_stride.unwrap_or(base.doc_stride),
            max_query_length: self.max_query_length.unwrap_or(base.max_query_length),
        }
    }
}

#[derive(Args)]
pub struct DataCheckArgs {
    /// SQuAD v1.1/v2.0 JSON or the flat list format.
    #[arg(long)]
    pub data: PathBuf,
    /// A tokenizer.json, a vocab.txt or a model directory.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub window: WindowArgs,
    /// What a misaligned answer gets.
    #[arg(long, default_value = "realign", value_parser = misaligned_parser())]
    pub misaligned: MisalignedPolicy,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// The gold data.
    #[arg(long)]
    pub data: PathBuf,
    /// An existing predictions.json to score (question id -> answer text).
    #[arg(long, conflicts_with = "model")]
    pub predictions: Option<PathBuf>,
    /// A model directory to predict with.
    #[arg(long, requires = "output_dir")]
    pub model: Option<PathBuf>,
    /// Where the model's predictions.json, nbest_predictions.json and null_odds.json go.
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Replace existing prediction files in --output-dir.
    #[arg(long)]
    pub overwrite: bool,
    /// No-answer probabilities (null_odds.json) for SQuAD v2.0's threshold search.
    #[arg(long)]
    pub na_probs: Option<PathBuf>,
    /// Predict "" when the no-answer probability exceeds this (v2.0).
    #[arg(long, default_value_t = 1.0)]
    pub na_prob_thresh: f64,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Start and end candidates searched per window [default: the model's, else 20].
    #[arg(long)]
    pub n_best: Option<usize>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Seeds the span head drawn for a model without one (a base encoder), as training's
    /// manual_seed does: the same seed gives the same untrained baseline.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value = "auto", value_parser = device_parser())]
    pub device: DeviceChoice,
    /// Matrix products in f32, or in bf16 with f32 weights (a GPU with bf16: CUDA on Ampere+).
    #[arg(long, default_value = "f32", value_parser = precision_parser())]
    pub precision: Precision,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct TrainArgs {
    /// The TOML training configuration (see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config key, e.g. --set learning_rate=3e-5 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Continue the run in output_dir from its latest checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// The config's `precision` for this run: f32, or bf16 matrix products with f32 weights.
    #[arg(long, value_parser = precision_parser())]
    pub precision: Option<Precision>,
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Decoding settings; each one not given keeps the model's (see `answering.json`).
#[derive(Args)]
pub struct DecodeArgs {
    /// Longest answer, in tokens [default: the model's, else 30].
    #[arg(long)]
    pub max_answer_length: Option<usize>,
    /// SQuAD v2.0: answer "" when the null score beats the best span by more than this
    /// [default: the model's, else 0].
    #[arg(long)]
    pub null_score_diff_threshold: Option<f32>,
}

impl DecodeArgs {
    /// `settings` with the values given on the command line.
    pub fn over(&self, mut settings: AnsweringSettings) -> AnsweringSettings {
        let decode = &mut settings.decode;
        decode.max_answer_length = self.max_answer_length.unwrap_or(decode.max_answer_length);
        decode.null_score_diff_threshold = self
            .null_score_diff_threshold
            .unwrap_or(decode.null_score_diff_threshold);
        settings
    }
}

#[derive(Args)]
pub struct ModelArgs {
    /// A model directory (Hugging Face layout, as training writes it).
    #[arg(long)]
    pub model: PathBuf,
    /// How many candidate answers to report.
    #[arg(long, default_value_t = 3)]
    pub n_best: usize,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Where the model runs: CUDA when a GPU is usable under auto, else a hardware wgpu adapter.
    #[arg(long, default_value = "auto", value_parser = device_parser())]
    pub device: DeviceChoice,
    /// Matrix products in f32, or in bf16 with f32 weights (a GPU with bf16: CUDA on Ampere+).
    #[arg(long, default_value = "f32", value_parser = precision_parser())]
    pub precision: Precision,
}

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The context text.
    #[arg(
        long,
        conflicts_with = "context_file",
        required_unless_present = "context_file"
    )]
    pub context: Option<String>,
    /// A file holding the context.
    #[arg(long)]
    pub context_file: Option<PathBuf>,
    /// One question (repeatable).
    #[arg(
        long,
        conflicts_with = "questions_file",
        required_unless_present = "questions_file"
    )]
    pub question: Vec<String>,
    /// Questions as JSON lines: a string or {"question": ...} per line.
    #[arg(long)]
    pub questions_file: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Start with the context in this file.
    #[arg(long)]
    pub context_file: Option<PathBuf>,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Longest accepted context, in characters (longer: 413).
    #[arg(long, default_value_t = 100_000)]
    pub max_context_chars: usize,
    /// Most questions per request (more: 422).
    #[arg(long, default_value_t = 32)]
    pub max_questions: usize,
    /// Answer requests admitted at once, from arrival to answer; beyond it: 429 with
    /// Retry-After, before the body is read.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// Windows waiting for the model, all requests together; a request that would pass it gets
    /// 429 (413 when it alone needs more). Work the model could not finish within
    /// --request-timeout at its measured speed is refused with 429 too.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queued_windows: u32,
    /// Windows per forward pass, from any requests (1: no batching across requests)
    /// [default: 1 on the CPU, where batching does not pay, 64 on a GPU].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_windows: Option<u32>,
    /// Padded tokens per forward pass (longest window x windows); a longer window runs alone
    /// [default: 2048 on the CPU, 16384 on a GPU].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: Option<u32>,
    /// Padding allowed in a forward pass, as a fraction of its real tokens: windows far from
    /// the oldest in length wait for a batch of their own.
    #[arg(long, default_value_t = 0.25, value_parser = non_negative)]
    pub max_batch_padding: f64,
    /// How long an idle model waits for a batch to fill (e.g. 2ms, 0ms).
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    pub max_batch_delay: Duration,
    /// A request not answered within this gets 503 and its queued windows are dropped.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// On SIGTERM or Ctrl-C: stop accepting, answer what is in flight for at most this long,
    /// then exit 0.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

fn non_negative(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{text:?} is not a number >= 0")),
    }
}

/// A duration with its unit: `250ms`, `2s`, `1.5s`, `1m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{text:?} has no unit; write e.g. 250ms, 2s or 1m"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        other => return Err(format!("{text:?}: unknown unit {other:?}; use ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("3h").unwrap_err().contains("unknown unit"));
        assert!(
            parse_duration("1.2.3s")
                .unwrap_err()
                .contains("not a number")
        );
    }
}
