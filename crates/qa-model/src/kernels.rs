//! Linear layers, self-attention, the exact GELU, dropout and layer normalisation: each public
//! function is one dispatch over three execution paths, tried in this order.
//!
//! | op | `Autodiff<Flex>`: training on the CPU ([`autodiff`]) | `Flex`: inference on the CPU ([`flex`]) | any other backend (CUDA, NdArray) |
//! |---|---|---|---|
//! | [`linear`] | one op, `gemm` from the bias, hand-written backward | one `gemm` starting from the bias | burn's `Linear` |
//! | [`attention`] | one op, heads read in place, dropout on the probabilities, hand-written backward | per-head `gemm`s, heads read in place | burn's fused attention; spelled out when dropout is on |
//! | [`gelu`] | one op, vectorised `erf` | vectorised `erf`, in place | burn's `gelu` |
//! | [`dropout`] | hashed mask (recordable), hand-written backward | identity (no autodiff) | burn's `Dropout` |
//! | [`layer_norm`] | one op, hand-written backward | burn's `LayerNorm` | burn's `LayerNorm` |
//! | [`add_layer_norm`] | the sum, then [`layer_norm`] | one fused parallel pass | the sum, then burn's `LayerNorm` |
//!
//! Under [`Precision::Bf16`] both CPU paths run the same functions with bf16 operands summed in
//! f32 ([`bf16`]: `vdpbf16ps` where the CPU has AVX-512 BF16); other backends run burn's
//! operations on bf16 casts. An int8 model's layers run int8 products only in f32 precision.
//!
//! Why: burn-flex 0.21 runs its fused attention one (batch, head) pair at a time and its GELU with
//! a scalar `erf`, both on one core, and a linear layer as a zero-filled matrix product followed by
//! a separate bias pass: together about half of a MiniLM forward pass (profile in
//! docs/benchmarks.md). Under autodiff it is worse: every elementary operation is recorded and
//! differentiated on its own, and dropout draws its mask one number at a time on one thread.
//!
//! Every path function takes its operands by value and returns `Ok(output)` when the backend and
//! dtype are its own, or `Err(operands)` to hand them to the next path. The f32 arithmetic both
//! CPU paths share is in [`routines`] and [`math`]; [`native`] is how a generic tensor steps out to
//! a concrete backend's primitive and back.

use burn::nn::{Dropout, LayerNorm, Linear};
use burn::tensor::activation::{gelu as burn_gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

use crate::int8::Int8Weights;
use crate::precision::Precision;

mod autodiff;
mod bf16;
mod flex;
mod math;
mod routines;

/// How a forward pass computes its matrix products: their precision and, for a quantized
/// model, the int8 weights of its linear layers (see [`crate::int8`]).
#[derive(Debug, Clone, Copy)]
pub struct Products<'a> {
    pub precision: Precision,
    pub int8: Option<&'a Int8Weights>,
}

impl Products<'_> {
    /// f32 products, no int8 weights.
    pub const F32: Products<'static> = Products {
        precision: Precision::F32,
        int8: None,
    };
}

/// `x W + b` over `[batch, seq, features]`, as one 2-D matrix product (burn's `Linear` broadcasts
/// the weight to the batch, which costs a copy on the CPU).
/// Under bf16 the product runs on burn's operations with bf16 operands (see [`Precision`]); a
/// layer with int8 weights runs int8 products on the CPU (`Flex`), its dequantized f32 weight
/// elsewhere.
pub fn linear<B: Backend>(
    layer: &Linear<B>,
    x: Tensor<B, 3>,
    products: Products<'_>,
) -> Tensor<B, 3> {
    let [batch, seq, features] = x.dims();
    let x = x.reshape([batch * seq, features]);
    let precision = products.precision;
    // int8 products stand in for f32 ones only; under bf16 the layer's f32 weight runs.
    let int8 = (products.int8)
        .filter(|_| precision == Precision::F32)
        .and_then(|w| w.get(layer.weight.id));
    let y = autodiff::linear(layer, x, precision)
        .or_else(|x| flex::linear_int8(layer, int8, x))
        .or_else(|x| flex::linear(layer, x, precision))
        .unwrap_or_else(|x| match precision {
            Precision::F32 => layer.forward(x),
            Precision::Bf16 => linear_in(precision, layer, x),
        });
    let out = y.dims()[1];
    y.reshape([batch, seq, out])
}

/// `x W + b` with the product in `precision`, the bias added in f32.
fn linear_in<B: Backend>(precision: Precision, layer: &Linear<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
    let y = precision.matmul(x, layer.weight.val());
    match &layer.bias {
        Some(bias) => y + bias.val().unsqueeze(),
        None => y,
    }
}

/// The query, key and value projections attention reads, `[batch, seq, hidden]` each, with the
/// heads packed in the last dimension.
pub(crate) struct Qkv<B: Backend> {
    pub q: Tensor<B, 3>,
    pub k: Tensor<B, 3>,
    pub v: Tensor<B, 3>,
}

/// Scaled dot-product attention, `softmax(Q Kᵀ / √d + mask) V`, for `heads` heads packed in the
/// last dimension of `[batch, seq, hidden]` projections. Padded keys (`true` in the `[batch, seq]`
/// mask) get no weight. While training, `dropout` drops attention probabilities as BERT does.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    padding: Option<&Tensor<B, 2, Bool>>,
    heads: usize,
    dropout: &Dropout,
    precision: Precision,
) -> Tensor<B, 3> {
    let qkv = Qkv { q, k, v };
    autodiff::attention(qkv, padding, heads, dropout.prob, precision)
        .or_else(|qkv| flex::attention(qkv, padding, heads, precision))
        .unwrap_or_else(|qkv| match precision {
            Precision::F32 => attention_with_burn_ops(qkv, padding, heads, dropout),
            Precision::Bf16 => attention_spelled_out(qkv, padding, heads, dropout, precision),
        })
}

/// Attention on any backend. burn's fused attention has no dropout, so while training with
/// dropout the operations are spelled out.
fn attention_with_burn_ops<B: Backend>(
    qkv: Qkv<B>,
    padding: Option<&Tensor<B, 2, Bool>>,
    heads: usize,
    dropout: &Dropout,
) -> Tensor<B, 3> {
    if B::ad_enabled(&qkv.q.device()) && dropout.prob > 0.0 {
        return attention_spelled_out(qkv, padding, heads, dropout, Precision::F32);
    }
    let Qkv { q, k, v } = qkv;
    let split = |t| split_heads(t, heads);
    merge_heads(burn_attention(
        split(q),
        split(k),
        split(v),
        padded_keys(padding, heads),
        None,
        AttentionModuleOptions::default(),
    ))
}

/// `softmax(Q Kᵀ / √d + mask) V` as separate operations: both products in `precision`, the
/// scores, softmax and dropout in f32.
fn attention_spelled_out<B: Backend>(
    Qkv { q, k, v }: Qkv<B>,
    padding: Option<&Tensor<B, 2, Bool>>,
    heads: usize,
    dropout: &Dropout,
    precision: Precision,
) -> Tensor<B, 3> {
    let head_dim = q.dims()[2] / heads;
    let split = |t| split_heads(t, heads);
    let scores = precision.matmul(split(q), split(k).swap_dims(2, 3)) / (head_dim as f64).sqrt();
    let scores = match padded_keys(padding, heads) {
        Some(mask) => scores.mask_fill(mask, f32::NEG_INFINITY),
        None => scores,
    };
    let probs = self::dropout(dropout, softmax(scores, 3));
    merge_heads(precision.matmul(probs, split(v)))
}

/// `[batch, seq, hidden]` with `heads` heads packed in the last dimension as
/// `[batch, heads, seq, head_dim]`.
pub(crate) fn split_heads<B: Backend>(t: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [batch, seq, hidden] = t.dims();
    t.reshape([batch, seq, heads, hidden / heads])
        .swap_dims(1, 2)
}

/// `[batch, heads, seq, head_dim]` back to `[batch, seq, hidden]`.
pub(crate) fn merge_heads<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 3> {
    let [batch, heads, seq, head_dim] = t.dims();
    t.swap_dims(1, 2).reshape([batch, seq, heads * head_dim])
}

/// The `[batch, seq]` padding mask as `[batch, heads, seq, seq]` attention scores see it: true
/// where the key is padding, for every head and query.
pub(crate) fn padded_keys<B: Backend>(
    padding: Option<&Tensor<B, 2, Bool>>,
    heads: usize,
) -> Option<Tensor<B, 4, Bool>> {
    let padding = padding?;
    let [batch, seq] = padding.dims();
    Some(
        padding
            .clone()
            .reshape([batch, 1, 1, seq])
            .expand([batch, heads, seq, seq]),
    )
}

/// The exact GELU, `x Φ(x) = x/2 (1 + erf(x/√2))`, as BERT uses it.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    autodiff::gelu(x)
        .or_else(flex::gelu)
        .unwrap_or_else(burn_gelu)
}

/// Dropout as burn's [`Dropout::forward`]: the identity unless the backend records gradients.
/// Masks come from the backend's generator either way, so `B::seed` makes them repeatable.
pub fn dropout<B: Backend, const D: usize>(dropout: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    if dropout.prob == 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    autodiff::dropout(dropout.prob, x).unwrap_or_else(|x| dropout.forward(x))
}

/// One dropout mask that training on the CPU drew: the number of elements of the tensor it
/// covered (row-major; attention probabilities as `[batch, heads, seq, seq]`) and its key.
/// Element `i` is dropped when `lowbias32(lowbias32(i ^ k0) ^ k1) < p · 2³²`, with `k0` and `k1`
/// the low and high halves of the key and `lowbias32` Chris Wellons' integer hash; kept elements
/// are scaled by `1 / (1 − p)`. Serialises as `{"elements": …, "key": …}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DrawnMask {
    pub elements: usize,
    pub key: u64,
}

/// Runs `f` and returns its result with the dropout masks that training on the CPU drew
/// meanwhile, in the order drawn, so that another implementation can drop the same elements
/// (crates/qa-train/tests/torch_parity.rs replays them in PyTorch). Other backends use burn's
/// dropout, whose masks are not recorded. Not reentrant.
pub fn recording_dropout_masks<T>(f: impl FnOnce() -> T) -> (T, Vec<DrawnMask>) {
    autodiff::recording_dropout_masks(f)
}

/// Layer normalisation over the last dimension with `layer`'s γ and β. `eps` must be the one
/// `layer` was built with (burn keeps it private).
pub fn layer_norm<B: Backend, const D: usize>(
    layer: &LayerNorm<B>,
    x: Tensor<B, D>,
    eps: f64,
) -> Tensor<B, D> {
    autodiff::layer_norm(layer, x, eps).unwrap_or_else(|x| layer.forward(x))
}

/// `LayerNorm(x + residual)`: BERT's residual connections, and its embeddings with the position
/// table as `residual` (leading dimension 1, the same positions for every sequence). On `Flex`
/// the sum and the normalisation are one parallel pass.
pub fn add_layer_norm<B: Backend, const D: usize>(
    layer: &LayerNorm<B>,
    x: Tensor<B, D>,
    residual: Tensor<B, D>,
    eps: f64,
) -> Tensor<B, D> {
    flex::add_layer_norm(layer, x, residual, eps)
        .unwrap_or_else(|(x, residual)| layer_norm(layer, x + residual, eps))
}

/// Whether `B` runs this module's CPU paths (burn-flex, with or without autodiff).
pub(crate) fn on_cpu_kernels<B: Backend>() -> bool {
    native::is::<burn::backend::Flex, B>()
        || native::is::<burn::backend::Autodiff<burn::backend::Flex>, B>()
}

/// Whether this CPU runs bf16 products natively (AVX-512 BF16); elsewhere the CPU paths emulate
/// them (same rounding, f32 speed or slower), and `precision = "bf16"` is refused.
pub fn bf16_native() -> bool {
    bf16::native()
}

/// A generic tensor as the float primitive of a concrete backend `N`, and back: how the CPU
/// paths step out of the generic model code. Backends are told apart by `TypeId`.
mod native {
    use std::any::{Any, TypeId};

    use burn::tensor::backend::Backend;
    use burn::tensor::{DType, Tensor, TensorPrimitive};

    /// Whether `B` is `N`.
    pub fn is<N: Backend, B: Backend>() -> bool {
        TypeId::of::<B>() == TypeId::of::<N>()
    }

    /// `t`'s primitive when `B` is `N` and `t` holds f32; `t` back otherwise.
    pub fn take<N: Backend, B: Backend, const D: usize>(
        t: Tensor<B, D>,
    ) -> Result<N::FloatTensorPrimitive, Tensor<B, D>> {
        if !is::<N, B>() || t.dtype() != DType::F32 {
            return Err(t);
        }
        let primitive: Box<dyn Any> = Box::new(t.into_primitive().tensor());
        Ok(*primitive
            .downcast::<N::FloatTensorPrimitive>()
            .expect("B is N, so their float primitives are one type"))
    }

    /// A primitive of `N` as a tensor of `B`, which must be `N`.
    pub fn give<N: Backend, B: Backend, const D: usize>(
        t: N::FloatTensorPrimitive,
    ) -> Tensor<B, D> {
        let primitive: Box<dyn Any> = Box::new(t);
        let primitive = *primitive
            .downcast::<B::FloatTensorPrimitive>()
            .expect("B is N, so their float primitives are one type");
        Tensor::from_primitive(TensorPrimitive::Float(primitive))
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::LinearConfig;
    use burn::tensor::{Distribution, TensorData};

    use super::*;
    use crate::CpuBackend as B;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn assert_close<const D: usize>(got: Tensor<B, D>, want: Tensor<B, D>, tol: f32) {
        assert_eq!(got.dims(), want.dims());
        let (got, want): (Vec<f32>, Vec<f32>) = (
            got.into_data().to_vec().unwrap(),
            want.into_data().to_vec().unwrap(),
        );
        // Absolute below 1, relative above: at |y| = 8 one f32 step is already 9.5e-7.
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst <= tol, "max difference {worst} (relative above 1)");
    }

    #[test]
    fn linear_matches_burn_with_and_without_bias() {
        let x = random([3, 5, 24]);
        for bias in [true, false] {
            let layer = LinearConfig::new(24, 40)
                .with_bias(bias)
                .init::<B>(&Default::default());
            let want = layer.forward(x.clone());
            assert_close(linear(&layer, x.clone(), Products::F32), want, 1e-5);
        }
    }

    /// Our bf16 products (`bf16::matmul`) against burn's bf16 operations (what a GPU runs): the
    /// operands are rounded alike, but burn's product comes back rounded to bf16 (8 bits), ours
    /// in f32, so they differ by up to about 2⁻⁸ of a value.
    #[test]
    fn bf16_products_match_burns_bf16_operations() {
        let bf16 = Products {
            precision: Precision::Bf16,
            int8: None,
        };
        let x = random([3, 5, 48]);
        let layer = LinearConfig::new(48, 40).init::<B>(&Default::default());
        let [batch, seq, _] = x.dims();
        let burns = linear_in(
            Precision::Bf16,
            &layer,
            x.clone().reshape([batch * seq, 48]),
        );
        assert_close(
            linear(&layer, x, bf16),
            burns.reshape([batch, seq, 40]),
            2e-2,
        );

        let qkv = [0, 1, 2].map(|_| random([2, 9, 24]));
        let none = Dropout { prob: 0.0 };
        let [q, k, v] = qkv.clone();
        let ours = attention(q, k, v, None, 3, &none, Precision::Bf16);
        let [q, k, v] = qkv;
        let burns = attention_spelled_out(Qkv { q, k, v }, None, 3, &none, Precision::Bf16);
        assert_close(ours, burns, 2e-2);
    }

    #[test]
    fn attention_matches_burn_with_padded_keys() {
        let (batch, seq, heads, head_dim) = (2, 7, 3, 8);
        let hidden = heads * head_dim;
        let (q, k, v) = (
            random([batch, seq, hidden]),
            random([batch, seq, hidden]),
            random([batch, seq, hidden]),
        );
        let padded: Vec<bool> = (0..batch * seq).map(|i| i >= seq + 4).collect();
        let padding = Tensor::<B, 2, Bool>::from_data(
            TensorData::new(padded, [batch, seq]),
            &Default::default(),
        );
        let split = |t: Tensor<B, 3>| t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        for padding in [None, Some(&padding)] {
            let mask = padding.map(|p| {
                p.clone()
                    .reshape([batch, 1, 1, seq])
                    .expand([batch, heads, seq, seq])
            });
            let want = burn_attention(
                split(q.clone()),
                split(k.clone()),
                split(v.clone()),
                mask,
                None,
                AttentionModuleOptions::default(),
            )
            .swap_dims(1, 2)
            .reshape([batch, seq, hidden]);
            let no_dropout = burn::nn::DropoutConfig::new(0.0).init();
            let (q, k, v) = (q.clone(), k.clone(), v.clone());
            let got = attention(q, k, v, padding, heads, &no_dropout, Precision::F32);
            assert_close(got, want, 1e-5);
        }
    }

    #[test]
    fn gelu_matches_burn_in_place_or_not() {
        let x = random([4, 33]) * 3.0;
        let want = burn_gelu(x.clone());
        // `x` still held here: the kernel must copy, not overwrite it.
        assert_close(gelu(x.clone()), want.clone(), 1e-6);
        assert_close(gelu(x), want, 1e-6);
    }

    #[test]
    fn add_layer_norm_matches_burn_for_a_full_or_a_per_sequence_residual() {
        let device = Default::default();
        // 320 rows of 614 (not a multiple of the vector width); a parallel task takes 26 rows,
        // so task boundaries fall inside a sequence of 40 rows.
        let width = 614;
        let mut layer = burn::nn::LayerNormConfig::new(width)
            .with_epsilon(1e-12)
            .init::<B>(&device);
        layer.gamma = layer.gamma.map(|g| g + random([width]));
        layer.beta = layer.beta.map(|b| b.map(|b| b + random([width])));
        let x = random([8, 40, width]);
        for residual in [random([8, 40, width]), random([1, 40, width])] {
            let want = layer.forward(x.clone() + residual.clone());
            let before = x.to_data();
            assert_close(
                add_layer_norm(&layer, x.clone(), residual, 1e-12),
                want,
                1e-5,
            );
            // `x` was shared (this function still holds it): its values must not have changed.
            assert_eq!(x.to_data(), before);
        }
    }

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in -86_900..=87_900 {
            let x = i as f32 * 1e-3;
            let (got, want) = (math::exp(x) as f64, (x as f64).exp());
            worst = worst.max(((got - want) / want).abs());
        }
        assert!(
            worst < 4.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
        assert_eq!(math::exp(-100.0), 0.0);
        assert_eq!(math::exp(f32::NEG_INFINITY), 0.0);
        assert!(math::exp(f32::NAN).is_nan());
    }

    #[test]
    fn erf_matches_libm_to_float_precision() {
        let mut worst = 0.0f64;
        for i in -6_000..=6_000 {
            let x = i as f32 * 1e-3;
            let (got, want) = (math::erf(x) as f64, libm::erf(x as f64));
            worst = worst.max((got - want).abs());
        }
        assert!(worst < 1e-6, "worst absolute error {worst:e}");
    }

    #[test]
    fn softmax_sums_to_one_and_skips_masked_positions() {
        let mut row = vec![1.0f32, 2.0, 3.0, 1000.0];
        math::softmax(&mut row, Some(&[false, false, false, true]));
        let e: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|x| (x - 3.0).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (got, want) in row.iter().zip(&e) {
            assert!((*got as f64 - want / sum).abs() < 1e-6, "{row:?}");
        }
        assert_eq!(row[3], 0.0);
    }
}
