//! `qa`: the command line of the extractive question answering pipeline.
//!
//! Every command prints its result (or `--json` for machines) and exits 0; bad input prints a
//! message naming the file and the problem and exits 1.
//!
//! | command | module | built on |
//! |---|---|---|
//! | the command line itself | `cli` | clap |
//! | `qa data check` | `data` | `qa_data` |
//! | `qa train` | `train` | `qa_train::train` |
//! | `qa evaluate` | `evaluate` | `qa_data::metrics`, `qa_model::QuestionAnswerer` |
//! | `qa predict` | `predict` | `qa_model::QuestionAnswerer` |
//! | `qa chat` | `chat` | `qa_model::QuestionAnswerer` |
//! | `qa serve` | `serve` (and `page.html`) | `qa_model::QuestionAnswerer`, axum |
//! | `qa quantize` | `quantize` | `qa_model::int8` |

mod chat;
mod cli;
mod data;
mod evaluate;
mod predict;
mod quantize;
mod serve;
mod train;

use std::process::ExitCode;

use clap::Parser;

/// Large tensors are allocated and freed on every forward pass; mimalloc keeps the memory
/// instead of returning it to the kernel each time (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage_error = e.use_stderr();
            let _ = e.print();
            return if usage_error {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<()> {
    use cli::Command;
    match cli.command {
        Command::Data(cli::DataCommand::Check(args)) => data::check(&args),
        Command::Evaluate(args) => evaluate::run(&args),
        Command::Train(args) => train::run(&args),
        Command::Predict(args) => predict::run(&args),
        Command::Chat(args) => chat::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Quantize(args) => quantize::run(&args),
    }
}
