//! The `Autodiff<Flex>` + f32 path: training on the CPU.
//!
//! Under autodiff, burn 0.21 records every elementary operation of a layer (a linear layer is a
//! broadcast weight, a matrix product and a bias add; attention a dozen reshapes, transposes and
//! a softmax; dropout a mask drawn one number at a time on one thread) and runs their backward
//! passes one by one. Here each layer is one autodiff operation with its own backward pass, both
//! built from the f32 routines of [`super::routines`] and [`super::math`]: the same arithmetic as the
//! inference path, multi-threaded, without the copies.

use std::sync::{Arc, Mutex, MutexGuard};

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::nn::{LayerNorm, Linear};
use burn::tensor::backend::{Backend, BackendTypes};
use burn::tensor::{Bool, DType, Distribution, Tensor, TensorMetadata};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::flex::{f32_tensor, f32s, host_mask, map_chunks};
use super::math::{self, DropoutMask};
use super::routines::{
    AttentionShape, CHUNK, Mat, attention_backward_f32, attention_f32, linear_f32, product,
};
use super::{DrawnMask, Qkv, native};
use crate::precision::Precision;

type Ad = Autodiff<Flex>;
/// The float tensor of `Autodiff<Flex>`: a `FlexTensor` and its node in the autodiff graph.
type AdTensor = <Ad as BackendTypes>::FloatTensorPrimitive;

/// An input and two f32 parameters of a layer as `Autodiff<Flex>` tensors, with their values
/// made contiguous; the input back when the backend or a dtype is another.
struct Operands {
    tensors: [AdTensor; 3],
    values: [FlexTensor; 3],
}

fn operands<B: Backend, const D: usize, const P: usize, const Q: usize>(
    x: Tensor<B, D>,
    a: Tensor<B, P>,
    b: Tensor<B, Q>,
) -> Result<Operands, Tensor<B, D>> {
    if a.dtype() != DType::F32 || b.dtype() != DType::F32 {
        return Err(x);
    }
    let x = native::take::<Ad, _, _>(x)?;
    let a = native::take::<Ad, _, _>(a).unwrap_or_else(|_| unreachable!("B and dtype checked"));
    let b = native::take::<Ad, _, _>(b).unwrap_or_else(|_| unreachable!("B and dtype checked"));
    let tensors = [x, a, b];
    let values = tensors.each_ref().map(|t| t.primitive.to_contiguous());
    Ok(Operands { tensors, values })
}

/// Registers `output`, computed from `parents`, in the graph with `backward` and its state
/// (the state is only built when some parent needs a gradient).
fn record<const N: usize, Op: Backward<Flex, N>>(
    op: Op,
    parents: [&AdTensor; N],
    state: impl FnOnce() -> Op::State,
    output: FlexTensor,
) -> AdTensor {
    match op
        .prepare::<NoCheckpointing>(parents.map(|p| p.node.clone()))
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state(), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

fn dims<const D: usize>(t: &FlexTensor) -> [usize; D] {
    t.shape().dims::<D>()
}

/// The incoming gradient of `node`, contiguous.
fn output_grad<S, const N: usize>(ops: &Ops<S, N>, grads: &mut Gradients) -> FlexTensor {
    grads.consume::<Flex>(&ops.node).to_contiguous()
}

// ---------------------------------------------------------------------------------------------
// Linear

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    /// x `[m, k]` and W `[k, n]`, contiguous, and the precision of the forward product (the
    /// backward ones run in it too, as autocast's do).
    type State = (FlexTensor, FlexTensor, Precision);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = output_grad(&ops, grads);
        let (x, weight, precision) = &ops.state;
        let [m, k] = dims(x);
        let [_, n] = dims(weight);
        let (x, weight, dy_v) = (f32s(x), f32s(weight), f32s(&dy));
        let [x_node, w_node, b_node] = &ops.parents;
        let product = |shape: [usize; 3], a: Mat, b: Mat| {
            let [rows, _, cols] = shape;
            let mut out = Vec::<f32>::with_capacity(rows * cols);
            // SAFETY: the callers' strides describe x [m, k], W [k, n] and dy [m, n] (or their
            // transposes) within their slices; out has room for [rows, cols] and is only written.
            unsafe {
                product(
                    *precision,
                    shape,
                    out.as_mut_ptr(),
                    cols,
                    false,
                    a,
                    b,
                    1.0,
                    true,
                );
                out.set_len(rows * cols);
            }
            out
        };
        if let Some(node) = x_node {
            // dx = dy Wᵀ
            let dx = product(
                [m, n, k],
                Mat::rows(dy_v.as_ptr(), n),
                Mat::transposed(weight.as_ptr(), n),
            );
            grads.register::<Flex>(node.id, f32_tensor(dx, [m, k]));
        }
        if let Some(node) = w_node {
            // dW = xᵀ dy
            let dw = product(
                [k, m, n],
                Mat::transposed(x.as_ptr(), k),
                Mat::rows(dy_v.as_ptr(), n),
            );
            grads.register::<Flex>(node.id, f32_tensor(dw, [k, n]));
        }
        if let Some(node) = b_node {
            grads.register::<Flex>(node.id, f32_tensor(column_sums(dy_v, n), [n]));
        }
    }
}

/// Sums of the columns of a row-major matrix with `width` columns, in parallel over row blocks.
fn column_sums(values: &[f32], width: usize) -> Vec<f32> {
    let rows_per_task = (CHUNK / width).max(1);
    let partials: Vec<Vec<f32>> = values
        .par_chunks(rows_per_task * width)
        .map(|block| {
            let mut acc = vec![0.0f32; width];
            for row in block.chunks_exact(width) {
                for (a, &x) in acc.iter_mut().zip(row) {
                    *a += x;
                }
            }
            acc
        })
        .collect();
    sum_in_order(partials, width)
}

/// The element-wise sum of per-block partial sums, added in block order. Rayon's `reduce`
/// combines partials in an order that depends on which thread stole what, and float addition is
/// not associative: the same seed would not give the same weights twice.
fn sum_in_order(partials: Vec<Vec<f32>>, width: usize) -> Vec<f32> {
    partials
        .into_iter()
        .fold(vec![0.0f32; width], |mut acc, partial| {
            for (a, x) in acc.iter_mut().zip(partial) {
                *a += x;
            }
            acc
        })
}

/// `x W + b` for `x: [m, k]` as one autodiff operation, the products in `precision` (layers
/// without a bias take burn's path).
pub(super) fn linear<B: Backend>(
    layer: &Linear<B>,
    x: Tensor<B, 2>,
    precision: Precision,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let Some(bias) = &layer.bias else {
        return Err(x);
    };
    let Operands {
        tensors: [x, weight, bias],
        values: [xs, ws, bs],
    } = operands(x, layer.weight.val(), bias.val())?;
    let [m, k] = dims(&xs);
    let [_, n] = dims(&ws);
    let y = linear_f32(precision, [m, k, n], f32s(&xs), f32s(&ws), Some(f32s(&bs)));
    Ok(native::give::<Ad, _, _>(record(
        LinearBackward,
        [&x, &weight, &bias],
        || (xs, ws, precision),
        f32_tensor(y, [m, n]),
    )))
}

// ---------------------------------------------------------------------------------------------
// GELU

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    /// The input, contiguous.
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = output_grad(&ops, grads);
        let [Some(node)] = &ops.parents else {
            return;
        };
        let x = f32s(&ops.state);
        let dx = map_chunks(dy, |d, at| math::gelu_grad(&x[at..at + d.len()], d));
        grads.register::<Flex>(node.id, dx);
    }
}

pub(super) fn gelu<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let x = native::take::<Ad, _, _>(x)?;
    let input = x.primitive.to_contiguous();
    // The input stays shared (backward needs it), so this maps a copy.
    let y = map_chunks(input.clone(), |values, _| math::gelu_in_place(values));
    Ok(native::give::<Ad, _, _>(record(
        GeluBackward,
        [&x],
        || input,
        y,
    )))
}

// ---------------------------------------------------------------------------------------------
// Dropout

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    type State = DropoutMask;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = output_grad(&ops, grads);
        let [Some(node)] = &ops.parents else {
            return;
        };
        let mask = ops.state;
        let dx = map_chunks(dy, |d, at| mask.apply(d, at as u64));
        grads.register::<Flex>(node.id, dx);
    }
}

/// A dropout key drawn from the backend's generator, so `B::seed` decides the masks as it
/// decides burn's own.
fn dropout_key() -> u64 {
    let draws: Vec<f32> =
        Tensor::<Flex, 1>::random([4], Distribution::Uniform(0.0, 1.0), &Default::default())
            .into_data()
            .to_vec()
            .expect("f32 draws");
    draws.iter().fold(0x9E37_79B9_7F4A_7C15u64, |key, d| {
        (key ^ u64::from(d.to_bits())).wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// The masks drawn while [`recording_dropout_masks`] runs; `None` when nothing records.
static RECORDED: Mutex<Option<Vec<DrawnMask>>> = Mutex::new(None);

fn recorded() -> MutexGuard<'static, Option<Vec<DrawnMask>>> {
    RECORDED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The mask of one dropout call over a tensor of `elements` elements.
fn draw_mask(prob: f64, elements: usize) -> DropoutMask {
    let key = dropout_key();
    if let Some(record) = recorded().as_mut() {
        record.push(DrawnMask { elements, key });
    }
    DropoutMask::new(prob, key)
}

/// See [`super::recording_dropout_masks`].
pub(super) fn recording_dropout_masks<T>(f: impl FnOnce() -> T) -> (T, Vec<DrawnMask>) {
    /// Ends the recording when dropped, also when `f` panics.
    struct Recording;
    impl Drop for Recording {
        fn drop(&mut self) {
            recorded().take();
        }
    }
    {
        let mut record = recorded();
        assert!(record.is_none(), "dropout masks are already being recorded");
        *record = Some(Vec::new());
    }
    let _recording = Recording;
    let out = f();
    let masks = recorded().take().unwrap_or_default();
    (out, masks)
}

pub(super) fn dropout<B: Backend, const D: usize>(
    prob: f64,
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    if !native::is::<Ad, B>() || x.dtype() != DType::F32 {
        return Err(x);
    }
    let mask = draw_mask(prob, x.shape().num_elements());
    dropout_with(mask, x)
}

fn dropout_with<B: Backend, const D: usize>(
    mask: DropoutMask,
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let x = native::take::<Ad, _, _>(x)?;
    let y = map_chunks(x.primitive.clone(), |c, at| mask.apply(c, at as u64));
    Ok(native::give::<Ad, _, _>(record(
        DropoutBackward,
        [&x],
        || mask,
        y,
    )))
}

// ---------------------------------------------------------------------------------------------
// Layer normalisation

#[derive(Debug)]
struct LayerNormBackward;

#[derive(Clone, Debug)]
struct LayerNormState {
    /// The normalised input `x̂`, `[rows, width]`.
    x_hat: Arc<Vec<f32>>,
    /// `1/σ` per row.
    inv_std: Arc<Vec<f32>>,
    gamma: FlexTensor,
    shape: burn::tensor::Shape,
}

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = output_grad(&ops, grads);
        let state = &ops.state;
        let gamma = f32s(&state.gamma);
        let width = gamma.len();
        let dy = f32s(&dy);
        let rows_per_task = (CHUNK / width).max(1);
        let mut dx = vec![0.0f32; dy.len()];
        let (d_gamma, d_beta) = dx
            .par_chunks_mut(rows_per_task * width)
            .zip(dy.par_chunks(rows_per_task * width))
            .zip(state.x_hat.par_chunks(rows_per_task * width))
            .zip(state.inv_std.par_chunks(rows_per_task))
            .map(|(((dx, dy), x_hat), inv_std)| {
                let (mut dg, mut db) = (vec![0.0f32; width], vec![0.0f32; width]);
                math::layer_norm_backward(dy, x_hat, inv_std, gamma, dx, &mut dg, &mut db);
                (dg, db)
            })
            .unzip::<_, _, Vec<_>, Vec<_>>();
        let (d_gamma, d_beta) = (sum_in_order(d_gamma, width), sum_in_order(d_beta, width));
        let [x_node, g_node, b_node] = &ops.parents;
        if let Some(node) = x_node {
            let dx = FlexTensor::from_data(burn::tensor::TensorData::new(dx, state.shape.clone()));
            grads.register::<Flex>(node.id, dx);
        }
        if let Some(node) = g_node {
            grads.register::<Flex>(node.id, f32_tensor(d_gamma, [width]));
        }
        if let Some(node) = b_node {
            grads.register::<Flex>(node.id, f32_tensor(d_beta, [width]));
        }
    }
}

/// Layer normalisation over the last dimension as one autodiff operation (layers without β take
/// burn's path).
pub(super) fn layer_norm<B: Backend, const D: usize>(
    layer: &LayerNorm<B>,
    x: Tensor<B, D>,
    eps: f64,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let Some(beta) = &layer.beta else {
        return Err(x);
    };
    let Operands {
        tensors: [x, gamma, beta],
        values: [xs, gs, bs],
    } = operands(x, layer.gamma.val(), beta.val())?;
    let shape = xs.shape();
    let (xv, gv, bv) = (f32s(&xs), f32s(&gs), f32s(&bs));
    let width = gv.len();
    let rows = xv.len() / width;
    let rows_per_task = (CHUNK / width).max(1);
    let (mut y, mut x_hat, mut inv_std) = (
        vec![0.0f32; xv.len()],
        vec![0.0f32; xv.len()],
        vec![0.0f32; rows],
    );
    y.par_chunks_mut(rows_per_task * width)
        .zip(x_hat.par_chunks_mut(rows_per_task * width))
        .zip(inv_std.par_chunks_mut(rows_per_task))
        .zip(xv.par_chunks(rows_per_task * width))
        .for_each(|(((y, x_hat), inv_std), x)| {
            math::layer_norm(x, gv, bv, eps as f32, y, x_hat, inv_std)
        });
    let y = FlexTensor::from_data(burn::tensor::TensorData::new(y, shape.clone()));
    let state = || LayerNormState {
        x_hat: Arc::new(x_hat),
        inv_std: Arc::new(inv_std),
        gamma: gs,
        shape,
    };
    Ok(native::give::<Ad, _, _>(record(
        LayerNormBackward,
        [&x, &gamma, &beta],
        state,
        y,
    )))
}

// ---------------------------------------------------------------------------------------------
// Attention

#[derive(Debug)]
struct AttentionBackward;

#[derive(Clone)]
struct AttentionState {
    shape: AttentionShape,
    qkv: [FlexTensor; 3],
    /// Softmax output before dropout, `[batch, heads, seq, seq]`.
    probs: Arc<Vec<f32>>,
    dropout: Option<DropoutMask>,
}

impl std::fmt::Debug for AttentionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttentionState")
            .field("shape", &self.shape)
            .field("dropout", &self.dropout)
            .finish_non_exhaustive()
    }
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let d_context = output_grad(&ops, grads);
        let s = &ops.state;
        let [q, k, v] = s.qkv.each_ref().map(f32s);
        let dqkv = attention_backward_f32(
            s.shape,
            [q, k, v],
            &s.probs,
            s.dropout.as_ref(),
            f32s(&d_context),
        );
        let shape = [s.shape.batch, s.shape.seq, s.shape.hidden];
        for (node, grad) in ops.parents.iter().zip(dqkv) {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, f32_tensor(grad, shape));
            }
        }
    }
}

/// Multi-head attention with dropout on the probabilities, as one autodiff operation, the
/// products in `precision`.
pub(super) fn attention<B: Backend>(
    qkv: Qkv<B>,
    padding: Option<&Tensor<B, 2, Bool>>,
    heads: usize,
    dropout_prob: f64,
    precision: Precision,
) -> Result<Tensor<B, 3>, Qkv<B>> {
    if !native::is::<Ad, B>()
        || [&qkv.q, &qkv.k, &qkv.v]
            .iter()
            .any(|t| t.dtype() != DType::F32)
    {
        return Err(qkv);
    }
    let [batch, seq, _] = qkv.q.dims();
    let dropout = (dropout_prob > 0.0).then(|| draw_mask(dropout_prob, batch * heads * seq * seq));
    Ok(attention_with(qkv, padding, heads, dropout, precision))
}

/// [`attention`] with its dropout mask given; `B` must be `Autodiff<Flex>` and `qkv` f32.
fn attention_with<B: Backend>(
    qkv: Qkv<B>,
    padding: Option<&Tensor<B, 2, Bool>>,
    heads: usize,
    dropout: Option<DropoutMask>,
    precision: Precision,
) -> Tensor<B, 3> {
    let [batch, seq, hidden] = qkv.q.dims();
    let [q, k, v] = [qkv.q, qkv.k, qkv.v]
        .map(|t| native::take::<Ad, _, _>(t).unwrap_or_else(|_| unreachable!("checked")));
    let values = [&q, &k, &v].map(|t| t.primitive.to_contiguous());
    let padding = padding.map(host_mask);
    let shape = AttentionShape::new(batch, seq, hidden, heads).in_precision(precision);
    let [qs, ks, vs] = values.each_ref().map(f32s);
    let (context, probs) = attention_f32(
        shape,
        [qs, ks, vs],
        padding.as_deref(),
        dropout.as_ref(),
        true,
    );
    let state = || AttentionState {
        shape,
        qkv: values,
        probs: Arc::new(probs),
        dropout,
    };
    native::give::<Ad, _, _>(record(
        AttentionBackward,
        [&q, &k, &v],
        state,
        f32_tensor(context, [batch, seq, hidden]),
    ))
}

#[cfg(test)]
mod tests {
    //! Each operation against burn's own composition of the same mathematics on
    //! `Autodiff<Flex>`: outputs and every gradient.

    use burn::nn::{LayerNormConfig, LinearConfig};
    use burn::tensor::TensorData;
    use burn::tensor::activation::{gelu as burn_gelu, softmax};

    use super::*;

    type B = Ad;

    fn random<const D: usize>(shape: [usize; D]) -> Tensor<B, D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: lengths");
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= tol, "{what}: max abs difference {worst}");
    }

    /// `Σ y ∘ r` for a fixed random `r`: a loss whose gradient reaches every output element.
    fn weighted_sum<const D: usize>(y: Tensor<B, D>, r: &Tensor<B, D>) -> Tensor<B, 1> {
        (y * r.clone()).sum()
    }

    /// Runs `f` on fresh leaves made from `inputs` and returns its output and the gradients
    /// of the weighted sum with respect to every input.
    fn output_and_grads<const D: usize, const O: usize>(
        inputs: &[Tensor<B, D>],
        r: &Tensor<B, O>,
        f: impl Fn(&[Tensor<B, D>]) -> Tensor<B, O>,
    ) -> (Vec<f32>, Vec<Vec<f32>>) {
        let leaves: Vec<_> = inputs
            .iter()
            .map(|t| t.clone().detach().require_grad())
            .collect();
        let y = f(&leaves);
        let grads = weighted_sum(y.clone(), r).backward();
        let grads = leaves
            .iter()
            .map(|l| values(l.grad(&grads).unwrap()))
            .collect();
        (values(y), grads)
    }

    #[test]
    fn linear_forward_and_gradients_match_burn() {
        let layer = LinearConfig::new(24, 40).init::<B>(&Default::default());
        let x = random([37, 24]);
        let r = random([37, 40]);
        let (want_y, want) = output_and_grads(std::slice::from_ref(&x), &r, |t| {
            layer.forward(t[0].clone())
        });
        let (got_y, got) = output_and_grads(&[x], &r, |t| {
            linear(&layer, t[0].clone(), Precision::F32).unwrap_or_else(|_| panic!("not taken"))
        });
        assert_close(&got_y, &want_y, 1e-5, "output");
        assert_close(&got[0], &want[0], 1e-5, "dx");

        // Parameter gradients, through the module.
        let grads_of = |y: Tensor<B, 2>| {
            let g = weighted_sum(y, &r).backward();
            let w = values(layer.weight.val().grad(&g).unwrap());
            let b = values(layer.bias.as_ref().unwrap().val().grad(&g).unwrap());
            (w, b)
        };
        let x = random([37, 24]);
        let (want_w, want_b) = grads_of(layer.forward(x.clone()));
        let (got_w, got_b) =
            grads_of(linear(&layer, x, Precision::F32).unwrap_or_else(|_| panic!()));
        assert_close(&got_w, &want_w, 1e-4, "dW");
        assert_close(&got_b, &want_b, 1e-4, "db");
    }

    #[test]
    fn gelu_forward_and_gradient_match_burn() {
        let x = random([5, 333]) * 3.0;
        let r = random([5, 333]);
        let (want_y, want) =
            output_and_grads(std::slice::from_ref(&x), &r, |t| burn_gelu(t[0].clone()));
        let (got_y, got) = output_and_grads(&[x], &r, |t| {
            gelu(t[0].clone()).unwrap_or_else(|_| panic!("not taken"))
        });
        assert_close(&got_y, &want_y, 1e-5, "output");
        assert_close(&got[0], &want[0], 1e-5, "dx");
    }

    #[test]
    fn layer_norm_forward_and_gradients_match_burn() {
        let eps = 1e-12;
        let mut layer = LayerNormConfig::new(48)
            .with_epsilon(eps)
            .init::<B>(&Default::default());
        // γ and β away from their initial ones and zeros, so their gradients matter.
        layer.gamma = layer.gamma.map(|g| g + random([48]) * 0.5);
        layer.beta = layer.beta.map(|b| b.map(|b| b + random([48])));
        let x = random([3, 11, 48]) * 2.0 + 1.0;
        let r = random([3, 11, 48]);
        let (want_y, want) = output_and_grads(std::slice::from_ref(&x), &r, |t| {
            layer.forward(t[0].clone())
        });
        let (got_y, got) = output_and_grads(std::slice::from_ref(&x), &r, |t| {
            layer_norm(&layer, t[0].clone(), eps).unwrap_or_else(|_| panic!("not taken"))
        });
        assert_close(&got_y, &want_y, 1e-5, "output");
        assert_close(&got[0], &want[0], 1e-4, "dx");

        let param_grads = |y: Tensor<B, 3>| {
            let g = weighted_sum(y, &r).backward();
            let gamma = values(layer.gamma.val().grad(&g).unwrap());
            let beta = values(layer.beta.as_ref().unwrap().val().grad(&g).unwrap());
            (gamma, beta)
        };
        let (want_g, want_b) = param_grads(layer.forward(x.clone()));
        let (got_g, got_b) = param_grads(layer_norm(&layer, x, eps).unwrap_or_else(|_| panic!()));
        assert_close(&got_g, &want_g, 1e-4, "dγ");
        assert_close(&got_b, &want_b, 1e-4, "dβ");
    }

    /// Attention spelled out in burn operations, with an explicit (already scaled) dropout
    /// multiplier on the probabilities.
    fn reference_attention(
        qkv: &[Tensor<B, 3>],
        padding: Option<&Tensor<B, 2, Bool>>,
        heads: usize,
        dropout: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 3> {
        let [batch, seq, hidden] = qkv[0].dims();
        let head_dim = hidden / heads;
        let split = |t: Tensor<B, 3>| t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let scores = split(qkv[0].clone()).matmul(split(qkv[1].clone()).swap_dims(2, 3))
            / (head_dim as f64).sqrt();
        let scores = match padding {
            Some(p) => scores.mask_fill(
                p.clone()
                    .reshape([batch, 1, 1, seq])
                    .expand([batch, heads, seq, seq]),
                f32::NEG_INFINITY,
            ),
            None => scores,
        };
        let mut probs = softmax(scores, 3);
        if let Some(d) = dropout {
            probs = probs * d;
        }
        probs
            .matmul(split(qkv[2].clone()))
            .swap_dims(1, 2)
            .reshape([batch, seq, hidden])
    }

    #[test]
    fn attention_forward_and_gradients_match_burn_with_padding_and_dropout() {
        let (batch, seq, heads, head_dim) = (2, 9, 3, 8);
        let hidden = heads * head_dim;
        let qkv: Vec<_> = (0..3).map(|_| random([batch, seq, hidden])).collect();
        let r = random([batch, seq, hidden]);
        let padded: Vec<bool> = (0..batch * seq).map(|i| i >= seq + 5).collect();
        let padding = Tensor::<B, 2, Bool>::from_data(
            TensorData::new(padded, [batch, seq]),
            &Default::default(),
        );
        let prob = 0.3;
        for (padding, prob) in [(None, 0.0), (Some(&padding), 0.0), (Some(&padding), prob)] {
            let dropout = (prob > 0.0).then(|| DropoutMask::new(prob, 0x5EED));
            let mask = dropout.map(|mask| {
                let scale = 1.0 / (1.0 - prob as f32);
                let m: Vec<f32> = (0..batch * heads * seq * seq)
                    .map(|i| if mask.keeps(i as u32) { scale } else { 0.0 })
                    .collect();
                Tensor::<B, 4>::from_data(
                    TensorData::new(m, [batch, heads, seq, seq]),
                    &Default::default(),
                )
            });
            let dropped = mask.as_ref().map(|m| {
                let zeros: f32 = values(m.clone().equal_elem(0.0).float().sum())[0];
                zeros / m.dims().iter().product::<usize>() as f32
            });
            if let Some(share) = dropped {
                assert!((share - prob as f32).abs() < 0.1, "dropped {share}");
            }
            let (want_y, want) = output_and_grads(&qkv, &r, |t| {
                reference_attention(t, padding, heads, mask.clone())
            });
            let (got_y, got) = output_and_grads(&qkv, &r, |t| {
                let qkv = Qkv {
                    q: t[0].clone(),
                    k: t[1].clone(),
                    v: t[2].clone(),
                };
                attention_with(qkv, padding, heads, dropout, Precision::F32)
            });
            assert_close(&got_y, &want_y, 1e-5, "output");
            for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                assert_close(g, w, 1e-5, name);
            }
        }
    }

    /// The largest difference relative to the largest f32 value: bf16 keeps 8 significant bits
    /// (a relative error of at most 2⁻⁹ per operand), and sums of a few dozen such products
    /// stay within 1 % of the largest value.
    fn assert_tracks(got: &[f32], want: &[f32], what: &str) {
        let range = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst > 0.0, "{what}: bf16 changed nothing");
        assert!(worst <= 1e-2 * range, "{what}: {worst} of {range}");
    }

    #[test]
    fn bf16_products_track_f32_in_linear_and_attention() {
        let layer = LinearConfig::new(48, 40).init::<B>(&Default::default());
        let x = random([37, 48]);
        let r = random([37, 40]);
        let run = |p| {
            output_and_grads(std::slice::from_ref(&x), &r, |t| {
                linear(&layer, t[0].clone(), p).unwrap_or_else(|_| panic!("not taken"))
            })
        };
        let ((want_y, want), (got_y, got)) = (run(Precision::F32), run(Precision::Bf16));
        assert_tracks(&got_y, &want_y, "linear output");
        assert_tracks(&got[0], &want[0], "linear dx");

        let (batch, seq, heads) = (2, 19, 3);
        let qkv: Vec<_> = (0..3).map(|_| random([batch, seq, heads * 16])).collect();
        let r = random([batch, seq, heads * 16]);
        let run = |p| {
            output_and_grads(&qkv, &r, |t| {
                let qkv = Qkv {
                    q: t[0].clone(),
                    k: t[1].clone(),
                    v: t[2].clone(),
                };
                attention_with(qkv, None, heads, Some(DropoutMask::new(0.1, 7)), p)
            })
        };
        let ((want_y, want), (got_y, got)) = (run(Precision::F32), run(Precision::Bf16));
        assert_tracks(&got_y, &want_y, "attention output");
        for (name, (g, w)) in ["dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
            assert_tracks(g, w, name);
        }
    }

    #[test]
    fn dropout_keeps_the_expected_share_and_its_gradient_follows_the_mask() {
        let prob = 0.1;
        let x = random([64, 1000]);
        let r = random([64, 1000]);
        let (y, grads) = output_and_grads(std::slice::from_ref(&x), &r, |t| {
            dropout_with(DropoutMask::new(prob, 3), t[0].clone())
                .unwrap_or_else(|_| panic!("not taken"))
        });
        let (x, r) = (values(x), values(r));
        let scale = 1.0 / (1.0 - prob as f32);
        let mut dropped = 0usize;
        for i in 0..x.len() {
            if y[i] == 0.0 {
                dropped += 1;
                assert_eq!(grads[0][i], 0.0);
            } else {
                assert!((y[i] - x[i] * scale).abs() < 1e-6);
                assert!((grads[0][i] - r[i] * scale).abs() < 1e-6);
            }
        }
        let share = dropped as f64 / x.len() as f64;
        assert!((share - prob).abs() < 0.005, "dropped {share}");

        // The same key gives the same mask, another key another.
        let again = |key| {
            let ones = Tensor::<B, 2>::ones([64, 1000], &Default::default());
            values(dropout_with(DropoutMask::new(prob, key), ones).unwrap_or_else(|_| panic!()))
        };
        assert_eq!(again(5), again(5));
        assert_ne!(again(5), again(6));
    }

    /// `DrawnMask`'s documented rule, written out on its own: element `i` is dropped when
    /// `lowbias32(lowbias32(i ^ k0) ^ k1) < p · 2³²`.
    fn documented_drop(key: u64, prob: f64, i: u32) -> bool {
        let lowbias32 = |mut x: u32| {
            x ^= x >> 16;
            x = x.wrapping_mul(0x7feb_352d);
            x ^= x >> 15;
            x = x.wrapping_mul(0x846c_a68b);
            x ^ (x >> 16)
        };
        lowbias32(lowbias32(i ^ key as u32) ^ (key >> 32) as u32) < (prob * 4_294_967_296.0) as u32
    }

    // No other test in this binary draws masks from the generator (they hand their masks over),
    // so nothing else can land in this recording.
    #[test]
    fn recorded_masks_are_the_ones_applied_in_call_order() {
        let prob = 0.1;
        let device = Default::default();
        let ones = |shape: [usize; 3]| Tensor::<B, 3>::ones(shape, &device).require_grad();
        let (outputs, masks) = recording_dropout_masks(|| {
            let first = dropout(prob, ones([3, 50, 40])).unwrap_or_else(|_| panic!("not taken"));
            let qkv = [0, 1, 2].map(|_| random([2, 9, 8]));
            let [q, k, v] = qkv;
            let attended = attention(Qkv { q, k, v }, None, 2, prob, Precision::F32);
            assert!(attended.is_ok());
            let second = dropout(prob, ones([7, 11, 1])).unwrap_or_else(|_| panic!("not taken"));
            [values(first), values(second)]
        });
        let elements: Vec<usize> = masks.iter().map(|m| m.elements).collect();
        assert_eq!(elements, [3 * 50 * 40, 2 * 2 * 9 * 9, 7 * 11]);
        for (out, mask) in outputs.iter().zip([masks[0], masks[2]]) {
            let dropped: Vec<bool> = out.iter().map(|&v| v == 0.0).collect();
            let documented: Vec<bool> = (0..out.len() as u32)
                .map(|i| documented_drop(mask.key, prob, i))
                .collect();
            assert_eq!(dropped, documented);
        }
        assert_ne!(masks[0].key, masks[2].key);

        // Outside a recording nothing is kept, and the next recording starts empty.
        let _ = dropout(prob, ones([2, 2, 2]));
        let ((), masks) = recording_dropout_masks(|| ());
        assert!(masks.is_empty());
    }
}
