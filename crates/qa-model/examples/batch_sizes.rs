//! How the speed of a forward pass per token changes with the batch size, on real windows:
//! the first question of each SQuAD paragraph, windows sorted by length (little padding), run in
//! batches of 1 to 64. Evidence for `qa serve`'s batch defaults (docs/benchmarks.md, "Serving").
//!
//!     cargo run --release -p qa-model --example batch_sizes -- MODEL_DIR SQUAD_DEV_JSON

use std::time::Instant;

use qa_model::{CpuBackend, QuestionAnswerer, Window};

const WINDOWS: usize = 128;
const BATCH_SIZES: [usize; 6] = [1, 2, 4, 8, 16, 64];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, dev] = args.as_slice() else {
        return Err("usage: batch_sizes MODEL_DIR SQUAD_DEV_JSON".into());
    };
    let answerer = QuestionAnswerer::<CpuBackend>::load(model.as_ref(), Default::default())?;
    let windows = first_windows(&answerer, dev)?;
    let mut sorted: Vec<&Window> = windows.iter().collect();
    sorted.sort_by_key(|w| w.len());
    let real: usize = windows.iter().map(Window::len).sum();
    println!("{} windows, {real} tokens", windows.len());
    for size in BATCH_SIZES {
        let batches: Vec<&[&Window]> = sorted.chunks(size).collect();
        let padded: usize = batches
            .iter()
            .map(|b| b.iter().map(|w| w.len()).max().unwrap_or(0) * b.len())
            .sum();
        let started = Instant::now();
        for batch in &batches {
            answerer.forward_windows(batch);
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "batch {size:>2}: {:6.1} windows/s, {:6.0} padded tokens/s ({padded} padded tokens)",
            windows.len() as f64 / seconds,
            padded as f64 / seconds
        );
    }
    Ok(())
}

/// The windows of the first question of each paragraph, until there are enough.
fn first_windows(
    answerer: &QuestionAnswerer<CpuBackend>,
    dev: &str,
) -> Result<Vec<Window>, Box<dyn std::error::Error>> {
    let data: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dev)?)?;
    let mut windows = Vec::new();
    let articles = data["data"].as_array().ok_or("no data array")?;
    for p in articles
        .iter()
        .flat_map(|a| a["paragraphs"].as_array().into_iter().flatten())
    {
        let (Some(context), Some(question)) =
            (p["context"].as_str(), p["qas"][0]["question"].as_str())
        else {
            continue;
        };
        windows.extend(answerer.prepare(context, &[question], 1)?.windows());
        if windows.len() >= WINDOWS {
            break;
        }
    }
    Ok(windows)
}
