//! Writes every feature of a SQuAD file as JSON lines (input ids and labels), for comparing the
//! windowing with Hugging Face's (`tests/parity/hf_windowing.py`).
//!
//! cargo run --release -p qa-data --example dump_features -- DATA TOKENIZER OUT [MAX_LEN STRIDE]

use std::io::Write;

use qa_data::{Casing, Dataset, FeatureSet, LoadOptions, QaTokenizer, WindowConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, tokenizer, out, rest @ ..] = args.as_slice() else {
        return Err("usage: dump_features DATA TOKENIZER OUT [MAX_LEN STRIDE]".into());
    };
    let mut config = WindowConfig::default();
    if let [len, stride] = rest {
        config.max_seq_length = len.parse()?;
        config.doc_stride = stride.parse()?;
    }
    let ds = Dataset::load(data, LoadOptions::default())?;
    let tok = QaTokenizer::from_path(tokenizer, Casing::Auto)?;
    let fs = FeatureSet::build(&ds, &tok, config)?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut ids = Vec::new();
    for f in &fs.features {
        ids.clear();
        fs.input_ids(f, &mut ids);
        let (s, e) = f.label.unwrap_or((0, 0));
        let id = &ds.examples[f.example as usize].id;
        writeln!(
            w,
            "{}",
            serde_json::json!({"id": id, "input_ids": ids, "start": s, "end": e})
        )?;
    }
    Ok(())
}
