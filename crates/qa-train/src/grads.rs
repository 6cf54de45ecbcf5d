//! Gradients between the backward pass and the optimizer: averaging a short accumulation and
//! clipping their global norm.

use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use qa_model::ParamInfo;

/// Multiplies every gradient by `factor`.
pub(crate) fn scale_grads<B: AutodiffBackend>(
    grads: &mut GradientsParams,
    params: &[ParamInfo],
    factor: f64,
) {
    for p in params {
        match p.rank {
            1 => {
                if let Some(t) = grads.remove::<B::InnerBackend, 1>(p.id) {
                    grads.register(p.id, t * factor);
                }
            }
            _ => {
                if let Some(t) = grads.remove::<B::InnerBackend, 2>(p.id) {
                    grads.register(p.id, t * factor);
                }
            }
        }
    }
}

/// Clips the norm of all gradients together to `max_norm` (torch's `clip_grad_norm_`); burn's
/// built-in clipping works per tensor. Returns the norm before clipping.
pub(crate) fn clip_global_norm<B: AutodiffBackend>(
    grads: &mut GradientsParams,
    params: &[ParamInfo],
    max_norm: f64,
) -> f64 {
    let mut squares: Vec<Tensor<B::InnerBackend, 1>> = Vec::with_capacity(params.len());
    for p in params {
        let sq = match p.rank {
            1 => grads
                .get::<B::InnerBackend, 1>(p.id)
                .map(|t| t.powi_scalar(2).sum()),
            // Row sums first: burn-flex sums a tensor of 4M+ elements (the word embeddings)
            // with a rayon reduction whose order varies from run to run, which made resumed
            // runs differ from uninterrupted ones; per-row sums are computed in a fixed order.
            _ => grads
                .get::<B::InnerBackend, 2>(p.id)
                .map(|t| t.powi_scalar(2).sum_dim(1).sum()),
        };
        squares.extend(sq);
    }
    if squares.is_empty() {
        return 0.0;
    }
    let total: f64 = Tensor::cat(squares, 0)
        .sum()
        .into_scalar()
        .elem::<f64>()
        .sqrt();
    let coef = max_norm / (total + 1e-6);
    if coef < 1.0 {
        scale_grads::<B>(grads, params, coef);
    }
    total
}
