//! Prints the order in which `qa train` visits its training features, one JSON list per epoch,
//! for `tests/parity/torch_finetune.py --order FILE`: PyTorch then sees the same batches.
//!
//! cargo run --release -p qa-train --example epoch_order -- FEATURES SEED EPOCHS > order.json
//!
//! FEATURES is the number of trainable features `qa train` reports; this assumes every feature
//! is trainable (true when no answer is misaligned with its context), so the indices are those
//! of run_qa.py's features too.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [features, seed, epochs] = args.as_slice() else {
        return Err("usage: epoch_order FEATURES SEED EPOCHS".into());
    };
    let features: Vec<usize> = (0..features.parse()?).collect();
    let (seed, epochs): (u64, usize) = (seed.parse()?, epochs.parse()?);
    let orders: Vec<Vec<usize>> = (0..epochs)
        .map(|epoch| qa_train::order::epoch_order(&features, seed, epoch))
        .collect();
    println!("{}", serde_json::to_string(&orders)?);
    Ok(())
}
