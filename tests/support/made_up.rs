//! A made-up model input for the tests that compare two ways of running the fixture models
//! (int8 against f32, wgpu against the CPU). Apart from `mod.rs`, which tests without burn
//! include too.

/// Two rows of made-up ids below every fixture's vocabulary size, the second one padded.
pub fn made_up_input<B: burn::tensor::backend::Backend>(
    pad_id: usize,
    device: &B::Device,
) -> qa_model::BertInput<B> {
    let len = 24;
    let real = [24usize, 17];
    let (mut ids, mut types, mut padding) = (Vec::new(), Vec::new(), Vec::new());
    for (row, &n) in real.iter().enumerate() {
        for i in 0..len {
            let id = 5 + ((i * 37 + row * 11) % 90) as i32;
            ids.push(if i < n { id } else { pad_id as i32 });
            types.push(i32::from(i >= 9 && i < n));
            padding.push(i >= n);
        }
    }
    qa_model::BertInput::from_host(ids, types, padding, [real.len(), len], device)
}
