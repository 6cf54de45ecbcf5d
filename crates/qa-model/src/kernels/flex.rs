//! The `Flex` + f32 path: inference on the CPU. Each function takes the generic operands and
//! hands them back unless the backend is `Flex` and the tensors hold f32. The tensor helpers here
//! (views of a `FlexTensor`'s values, parallel in-place maps) serve the training path too.

use burn::backend::Flex;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use crate::int8::{self, Int8Matrix, Isa};
use crate::precision::Precision;

use super::routines::{AttentionShape, CHUNK, attention_f32, linear_f32};
use super::{Qkv, math, native};

pub(super) fn gelu<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    // In place when the caller held the only reference (the view `native::take` gave is moved).
    let x = map_chunks(native::take::<Flex, _, _>(x)?, |values, _| {
        math::gelu_in_place(values)
    });
    Ok(native::give::<Flex, _, _>(x))
}

/// `t` with `f` applied to its values in parallel chunks of [`CHUNK`] elements; `f` also gets the
/// index of the chunk's first element. In place when `t` owns its buffer alone and covers all of
/// it (a view into part of a buffer, even an unshared one, must leave the rest alone and count
/// its indices from its own start), on a copy otherwise.
pub(super) fn map_chunks(t: FlexTensor, f: impl Fn(&mut [f32], usize) + Sync) -> FlexTensor {
    map_blocks(t, CHUNK, f)
}

/// [`map_chunks`] with blocks of `block` elements (whole rows, say).
fn map_blocks(t: FlexTensor, block: usize, f: impl Fn(&mut [f32], usize) + Sync) -> FlexTensor {
    // `to_contiguous` borrows and returns a clone when nothing needs copying: the original must
    // go before the clone can be the buffer's only owner.
    let mut t = {
        let contiguous = t.to_contiguous();
        drop(t);
        contiguous
    };
    let whole_buffer = t.layout().contiguous_offsets() == Some((0, t.storage::<f32>().len()));
    if whole_buffer && let Some(values) = t.try_storage_mut::<f32>() {
        values
            .par_chunks_mut(block)
            .enumerate()
            .for_each(|(i, c)| f(c, i * block));
        return t;
    }
    let shape = t.layout().shape().clone();
    let mut values = f32s(&t).to_vec();
    values
        .par_chunks_mut(block)
        .enumerate()
        .for_each(|(i, c)| f(c, i * block));
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `LayerNorm(x + residual)`, one parallel pass over rows, in place when `x` is not shared.
/// `residual` has `x`'s shape or a leading dimension of 1 (one sequence for every batch entry).
pub(super) fn add_layer_norm<B: Backend, const D: usize>(
    layer: &LayerNorm<B>,
    x: Tensor<B, D>,
    residual: Tensor<B, D>,
    eps: f64,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    let (xd, rd) = (x.dims(), residual.dims());
    let fits = rd[1..] == xd[1..] && (rd[0] == xd[0] || rd[0] == 1);
    let f32s_only = [x.dtype(), residual.dtype(), layer.gamma.val().dtype()]
        .iter()
        .all(|&d| d == DType::F32);
    let Some(beta) = layer.beta.as_ref().map(|b| b.val()) else {
        return Err((x, residual));
    };
    if !native::is::<Flex, B>() || !fits || !f32s_only || beta.dtype() != DType::F32 {
        return Err((x, residual));
    }
    let flex = |t: Tensor<B, D>| {
        native::take::<Flex, _, _>(t).unwrap_or_else(|_| unreachable!("checked above"))
    };
    let residual = flex(residual).to_contiguous();
    let flex1 = |t: Tensor<B, 1>| {
        native::take::<Flex, _, _>(t).unwrap_or_else(|_| unreachable!("checked above"))
    };
    let (gamma, beta) = (
        flex1(layer.gamma.val()).to_contiguous(),
        flex1(beta).to_contiguous(),
    );
    let (gamma, beta, residual) = (f32s(&gamma), f32s(&beta), f32s(&residual));
    let width = gamma.len();
    let rows_per_task = (CHUNK / width).max(1);
    let y = map_blocks(flex(x), rows_per_task * width, |rows, at| {
        math::add_layer_norm(rows, at / width, residual, gamma, beta, eps as f32)
    });
    Ok(native::give::<Flex, _, _>(y))
}

/// `x W + b` for `x: [m, k]`, `W: [k, n]`, through [`linear_f32`] in `precision`.
pub(super) fn linear<B: Backend>(
    layer: &Linear<B>,
    x: Tensor<B, 2>,
    precision: Precision,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let weight = layer.weight.val();
    if !native::is::<Flex, B>() || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return Err(x);
    }
    let [m, k] = x.dims();
    let [_, n] = weight.dims();
    let x = native::take::<Flex, _, _>(x)?.to_contiguous();
    let weight = native::take::<Flex, _, _>(weight)
        .unwrap_or_else(|_| unreachable!("checked above"))
        .to_contiguous();
    let bias = layer.bias.as_ref().map(|b| {
        native::take::<Flex, _, _>(b.val())
            .unwrap_or_else(|_| panic!("a {:?} bias beside an f32 weight", b.val().dtype()))
            .to_contiguous()
    });
    let out = linear_f32(
        precision,
        [m, k, n],
        f32s(&x),
        f32s(&weight),
        bias.as_ref().map(f32s),
    );
    Ok(native::give::<Flex, _, _>(f32_tensor(out, [m, n])))
}

/// `x W + b` with int8 products (see [`crate::int8`]) for a layer that has int8 weights.
pub(super) fn linear_int8<B: Backend>(
    layer: &Linear<B>,
    int8: Option<&Int8Matrix>,
    x: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    let Some(w) = int8 else { return Err(x) };
    if !native::is::<Flex, B>() || x.dtype() != DType::F32 {
        return Err(x);
    }
    let [m, k] = x.dims();
    assert_eq!(
        k, w.inputs,
        "int8 weights of another shape than the layer's input"
    );
    let x = native::take::<Flex, _, _>(x)?.to_contiguous();
    let bias = layer.bias.as_ref().map(|b| {
        native::take::<Flex, _, _>(b.val())
            .unwrap_or_else(|_| panic!("a {:?} bias beside int8 weights", b.val().dtype()))
            .to_contiguous()
    });
    let out = int8::linear(f32s(&x), m, w, bias.as_ref().map(f32s), Isa::best());
    Ok(native::give::<Flex, _, _>(f32_tensor(out, [m, w.outputs])))
}

/// The values of a contiguous f32 tensor.
pub(super) fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("a contiguous f32 tensor")
}

pub(super) fn f32_tensor<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Multi-head attention without dropout (there is none at inference), the products in
/// `precision`.
pub(super) fn attention<B: Backend>(
    qkv: Qkv<B>,
    padding: Option<&Tensor<B, 2, Bool>>,
    heads: usize,
    precision: Precision,
) -> Result<Tensor<B, 3>, Qkv<B>> {
    if !native::is::<Flex, B>()
        || [&qkv.q, &qkv.k, &qkv.v]
            .iter()
            .any(|t| t.dtype() != DType::F32)
    {
        return Err(qkv);
    }
    let [batch, seq, hidden] = qkv.q.dims();
    let [q, k, v] = [qkv.q, qkv.k, qkv.v].map(|t| {
        native::take::<Flex, _, _>(t)
            .unwrap_or_else(|_| unreachable!("checked above"))
            .to_contiguous()
    });
    let padding = padding.map(host_mask);
    let shape = AttentionShape::new(batch, seq, hidden, heads).in_precision(precision);
    let (context, _) = attention_f32(
        shape,
        [f32s(&q), f32s(&k), f32s(&v)],
        padding.as_deref(),
        None,
        false,
    );
    Ok(native::give::<Flex, _, _>(f32_tensor(
        context,
        [batch, seq, hidden],
    )))
}

/// A `[batch, seq]` padding mask read back to the host.
pub(super) fn host_mask<B: Backend>(padding: &Tensor<B, 2, Bool>) -> Vec<bool> {
    padding
        .clone()
        .into_data()
        .to_vec()
        .expect("a bool tensor reads back as bool")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value becomes its own index within the tensor, so a chunk's offset shows.
    fn indices(t: FlexTensor) -> Vec<f32> {
        let t = map_chunks(t, |values, at| {
            for (i, v) in values.iter_mut().enumerate() {
                *v = (at + i) as f32;
            }
        });
        f32s(&t.to_contiguous()).to_vec()
    }

    #[test]
    fn map_chunks_counts_from_the_view_and_leaves_the_rest_of_the_buffer() {
        let len = 3 * CHUNK + 5;
        let values: Vec<f32> = (0..2 * len).map(|i| -(i as f32)).collect();
        let whole = f32_tensor(values, [2, len]);
        // The second row: contiguous, at an offset, and (once `whole` is gone) unshared.
        let row = whole.narrow(0, 1, 1);
        drop(whole);
        let want: Vec<f32> = (0..len).map(|i| i as f32).collect();
        assert_eq!(indices(row), want);
        // A tensor that owns its whole buffer, changed in place.
        assert_eq!(indices(f32_tensor(vec![7.0; len], [len])), want);
    }

    #[test]
    fn map_chunks_changes_an_unshared_tensor_in_place_and_a_shared_one_on_a_copy() {
        let add_one = |values: &mut [f32], _| values.iter_mut().for_each(|x| *x += 1.0);
        let t = f32_tensor(vec![1.0; 2 * CHUNK], [2, CHUNK]);
        let buffer = f32s(&t).as_ptr();
        let t = map_chunks(t, add_one);
        assert_eq!(f32s(&t).as_ptr(), buffer, "the only owner is not copied");
        let shared = t.clone();
        let mapped = map_chunks(t, add_one);
        assert_ne!(f32s(&mapped).as_ptr(), buffer);
        assert!(
            f32s(&shared).iter().all(|&x| x == 2.0),
            "the other owner's values stay"
        );
        assert!(f32s(&mapped).iter().all(|&x| x == 3.0));
    }
}
