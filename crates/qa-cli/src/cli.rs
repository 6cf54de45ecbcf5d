//! The command line, declared with clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use qa_data::MisalignedPolicy;
use qa_train::DeviceChoice;

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
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Validate a file and, with a tokenizer, count features and answers lost to windowing.
    Check(DataCheckArgs),
}

#[derive(Args)]
pub struct WindowArgs {
    /// Tokens per feature, special tokens included.
    #[arg(long, default_value_t = 384)]
    pub max_seq_length: usize,
    /// Tokens shared by consecutive windows of a long context.
    #[arg(long, default_value_t = 128)]
    pub doc_stride: usize,
    /// Question tokens beyond this are cut.
    #[arg(long, default_value_t = 64)]
    pub max_query_length: usize,
}

impl WindowArgs {
    pub fn config(&self) -> qa_data::WindowConfig {
        qa_data::WindowConfig {
            max_seq_length: self.max_seq_length,
            doc_stride: self.doc_stride,
            max_query_length: self.max_query_length,
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
    /// What a misaligned answer gets: realign, skip or error.
    #[arg(long, default_value = "realign")]
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
    #[arg(long, default_value_t = 20)]
    pub n_best: usize,
    #[arg(long, default_value_t = 30)]
    pub max_answer_length: usize,
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Seeds the span head drawn for a model without one (a base encoder), as training's
    /// manual_seed does: the same seed gives the same untrained baseline.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
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
    /// Print the final summary as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ModelArgs {
    /// A model directory (Hugging Face layout, as training writes it).
    #[arg(long)]
    pub model: PathBuf,
    /// How many candidate answers to report.
    #[arg(long, default_value_t = 3)]
    pub n_best: usize,
    #[arg(long, default_value_t = 30)]
    pub max_answer_length: usize,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceChoice,
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
    /// Longest accepted context, in characters.
    #[arg(long, default_value_t = 100_000)]
    pub max_context_chars: usize,
    /// Most questions per request.
    #[arg(long, default_value_t = 32)]
    pub max_questions: usize,
}
