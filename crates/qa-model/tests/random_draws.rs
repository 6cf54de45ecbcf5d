//! Loading a checkpoint must not consume the backend's random numbers: training seeds that
//! generator once for the span head and once per step for dropout, and a load in between (the
//! same or another thread) would silently change what a seeded run draws.
//!
//! Its own test binary, so no other test draws from the process-wide generator meanwhile.

use burn::tensor::{Distribution, Tensor, backend::Backend};
use qa_model::{BertConfig, BertForQuestionAnswering, CpuBackend};

type Device = burn::tensor::Device<CpuBackend>;

fn draw(device: &Device) -> Vec<f32> {
    Tensor::<CpuBackend, 1>::random([8], Distribution::Default, device)
        .into_data()
        .to_vec()
        .unwrap()
}

#[test]
fn loading_a_checkpoint_draws_no_random_numbers() {
    let device = Default::default();
    let config = BertConfig::tiny(16);
    let model = BertForQuestionAnswering::<CpuBackend>::init(&config, &device);
    let dir = tempfile::tempdir().unwrap();
    qa_model::save_pretrained(&model, &config, None, dir.path()).unwrap();

    CpuBackend::seed(&device, 7);
    let expected = draw(&device);

    CpuBackend::seed(&device, 7);
    let loaded = qa_model::load_pretrained::<CpuBackend>(dir.path(), &device).unwrap();
    assert!(!loaded.report.head_initialized);
    let (_record, _) = qa_model::record::load_record::<CpuBackend>(dir.path(), &device).unwrap();
    assert_eq!(draw(&device), expected);
}
