//! Runs the MiniLM QA forward pass in a loop, for profiling (perf record).
//! cargo run --release -p qa-model --example forward_loop -- MODEL_DIR BATCH SEQ ITERS

use qa_model::{BertInput, CpuBackend, load_pretrained};

/// The same allocator as the `qa` binary, so the timings match what users get.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, batch, seq, iters] = args.as_slice() else {
        eprintln!("usage: forward_loop MODEL_DIR BATCH SEQ ITERS");
        std::process::exit(2);
    };
    let (batch, seq, iters): (usize, usize, usize) = (
        batch.parse().unwrap(),
        seq.parse().unwrap(),
        iters.parse().unwrap(),
    );
    let device = Default::default();
    let model = load_pretrained::<CpuBackend>(std::path::Path::new(dir), &device)
        .unwrap()
        .model;
    let ids: Vec<i32> = (0..batch * seq)
        .map(|i| 1000 + (i * 7919 % 20000) as i32)
        .collect();
    let x = BertInput::<CpuBackend>::from_host(
        ids,
        vec![0; batch * seq],
        vec![false; batch * seq],
        [batch, seq],
        &device,
    );
    let t = std::time::Instant::now();
    for _ in 0..iters {
        let _ = model.forward(&x).start.into_data();
    }
    println!(
        "{:.1} ms per forward",
        t.elapsed().as_secs_f64() * 1000.0 / iters as f64
    );
}
