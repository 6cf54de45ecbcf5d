//! Linear layers, self-attention and the exact GELU, with a multi-threaded f32 path for the CPU
//! backend.
//!
//! burn-flex 0.21 runs its fused attention one (batch, head) pair at a time and its GELU with a
//! scalar `erf`, both on one core, and a linear layer as a zero-filled matrix product followed by
//! a separate bias pass: together about half of a MiniLM forward pass (profile in
//! docs/benchmarks.md). On `Flex` with f32 tensors these functions run the same mathematics
//! spread over rayon's threads: one `gemm` call per linear layer that starts from the bias,
//! vectorised `exp` and `erf`, and attention that reads the heads straight out of the `[batch,
//! seq, hidden]` projections instead of copying them into `[batch, heads, seq, head_dim]`. Every
//! other backend, and autodiff (training), gets burn's own operations.

use burn::nn::{Dropout, Linear};
use burn::tensor::activation::{gelu as burn_gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention as burn_attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Tensor};

/// `x W + b` over `[batch, seq, features]`, as one 2-D matrix product (burn's `Linear` broadcasts
/// the weight to the batch, which costs a copy on the CPU).
pub fn linear<B: Backend>(layer: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [batch, seq, features] = x.dims();
    let x = x.reshape([batch * seq, features]);
    #[cfg(feature = "flex")]
    let y = flex::linear(layer, x).unwrap_or_else(|x| layer.forward(x));
    #[cfg(not(feature = "flex"))]
    let y = layer.forward(x);
    let out = y.dims()[1];
    y.reshape([batch, seq, out])
}

/// Scaled dot-product attention, `softmax(Q Kᵀ / √d + mask) V`, for `heads` heads packed in the
/// last dimension of `[batch, seq, hidden]` projections. Padded keys (`true` in the `[batch, seq]`
/// mask) get no weight. While training, `dropout` drops attention probabilities as BERT does;
/// burn's fused attention and ours have no dropout, so that path is spelled out.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    padding: Option<&Tensor<B, 2, Bool>>,
    heads: usize,
    dropout: &Dropout,
) -> Tensor<B, 3> {
    let [batch, seq, hidden] = q.dims();
    let head_dim = hidden / heads;
    let split = |t: Tensor<B, 3>| t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
    let merge = |t: Tensor<B, 4>| t.swap_dims(1, 2).reshape([batch, seq, hidden]);
    let mask = || {
        padding.map(|p| {
            p.clone()
                .reshape([batch, 1, 1, seq])
                .expand([batch, heads, seq, seq])
        })
    };

    if B::ad_enabled(&q.device()) && dropout.prob > 0.0 {
        let scores = split(q).matmul(split(k).swap_dims(2, 3)) / (head_dim as f64).sqrt();
        let scores = match mask() {
            Some(mask) => scores.mask_fill(mask, f32::NEG_INFINITY),
            None => scores,
        };
        let probs = dropout.forward(softmax(scores, 3));
        return merge(probs.matmul(split(v)));
    }
    #[cfg(feature = "flex")]
    if let Some(out) = flex::attention(&q, &k, &v, padding, heads) {
        return out;
    }
    merge(burn_attention(
        split(q),
        split(k),
        split(v),
        mask(),
        None,
        AttentionModuleOptions::default(),
    ))
}

/// The exact GELU, `x Φ(x) = x/2 (1 + erf(x/√2))`, as BERT uses it.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "flex")]
    let x = match flex::gelu(x) {
        Ok(out) => return out,
        Err(x) => x,
    };
    burn_gelu(x)
}

#[cfg(feature = "flex")]
mod flex {
    //! The `Flex` + f32 path. Backend generics are resolved by `TypeId`: the model stays generic
    //! over `Backend`, and only tensors that really are `FlexTensor`s take this path.

    use std::any::{Any, TypeId};

    use burn::backend::Flex;
    use burn::nn::Linear;
    use burn::tensor::backend::Backend;
    use burn::tensor::{Bool, DType, Tensor, TensorData, TensorPrimitive};
    use burn_flex::FlexTensor;
    use rayon::prelude::*;

    use super::math;

    fn is_flex<B: Backend>() -> bool {
        TypeId::of::<B>() == TypeId::of::<Flex>()
    }

    /// The tensor's storage when `B` is `Flex` and the tensor is f32.
    fn flex_tensor<B: Backend, const D: usize>(
        t: Tensor<B, D>,
    ) -> Result<FlexTensor, Tensor<B, D>> {
        if !is_flex::<B>() || t.dtype() != DType::F32 {
            return Err(t);
        }
        let primitive: Box<dyn Any> = Box::new(t.into_primitive().tensor());
        Ok(*primitive
            .downcast::<FlexTensor>()
            .expect("B is Flex, so its float primitive is FlexTensor"))
    }

    fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
        let primitive: Box<dyn Any> = Box::new(t);
        let primitive = *primitive
            .downcast::<B::FloatTensorPrimitive>()
            .expect("B is Flex, so its float primitive is FlexTensor");
        Tensor::from_primitive(TensorPrimitive::Float(primitive))
    }

    pub(super) fn gelu<B: Backend, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<Tensor<B, D>, Tensor<B, D>> {
        // Contiguous over its whole buffer, and the only owner of it when the caller was (the
        // view `flex_tensor` gave is dropped here): then the activation is computed in place.
        let mut x = flex_tensor(x)?.to_contiguous();
        match x.try_storage_mut::<f32>() {
            Some(values) => values.par_chunks_mut(CHUNK).for_each(math::gelu_in_place),
            None => {
                let shape = x.layout().shape().clone();
                let mut values = x.as_slice::<f32>().expect("contiguous f32").to_vec();
                values.par_chunks_mut(CHUNK).for_each(math::gelu_in_place);
                x = FlexTensor::from_data(TensorData::new(values, shape));
            }
        }
        Ok(from_flex(x))
    }

    /// `x W + b` for `x: [m, k]`, `W: [k, n]`: the output starts as the bias in every row and
    /// `gemm` adds the product to it.
    pub(super) fn linear<B: Backend>(
        layer: &Linear<B>,
        x: Tensor<B, 2>,
    ) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
        let weight = layer.weight.val();
        if !is_flex::<B>() || x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
            return Err(x);
        }
        let [m, k] = x.dims();
        let [_, n] = weight.dims();
        let x = flex_tensor(x)?.to_contiguous();
        let weight = flex_tensor(weight)
            .unwrap_or_else(|_| unreachable!("checked above"))
            .to_contiguous();
        let bias = layer.bias.as_ref().map(|b| {
            flex_tensor(b.val())
                .unwrap_or_else(|_| panic!("a {:?} bias beside an f32 weight", b.val().dtype()))
                .to_contiguous()
        });
        let (x, weight) = (
            x.as_slice::<f32>().expect("contiguous f32"),
            weight.as_slice::<f32>().expect("contiguous f32"),
        );
        let bias = bias
            .as_ref()
            .map(|b| b.as_slice::<f32>().expect("contiguous f32"));

        let mut out = Vec::<f32>::with_capacity(m * n);
        if let Some(bias) = bias {
            out.spare_capacity_mut().par_chunks_mut(n).for_each(|row| {
                for (dst, &b) in row.iter_mut().zip(bias) {
                    dst.write(b);
                }
            });
        }
        let parallelism = if m * n * k >= PARALLEL_GEMM_OPS {
            gemm::Parallelism::Rayon(0)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: x is [m, k], weight [k, n] and out has room for [m, n], all row-major; when
        // there is no bias, `read_dst` is false and gemm only writes.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                out.as_mut_ptr(),
                1,
                n as isize,
                bias.is_some(),
                x.as_ptr(),
                1,
                k as isize,
                weight.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
            out.set_len(m * n);
        }
        Ok(from_flex(FlexTensor::from_data(TensorData::new(
            out,
            [m, n],
        ))))
    }

    /// Below this many multiply-adds a product runs on one thread (burn-flex's own threshold).
    const PARALLEL_GEMM_OPS: usize = 192 * 192 * 192;

    /// Elements per rayon task for element-wise work: large enough to amortise the task, small
    /// enough to split a `[batch·seq, intermediate]` activation across cores.
    const CHUNK: usize = 16 * 1024;

    pub(super) fn attention<B: Backend>(
        q: &Tensor<B, 3>,
        k: &Tensor<B, 3>,
        v: &Tensor<B, 3>,
        padding: Option<&Tensor<B, 2, Bool>>,
        heads: usize,
    ) -> Option<Tensor<B, 3>> {
        let [batch, seq, hidden] = q.dims();
        let (q, k, v) = (
            flex_tensor(q.clone()).ok()?,
            flex_tensor(k.clone()).ok()?,
            flex_tensor(v.clone()).ok()?,
        );
        let (q, k, v) = (q.to_contiguous(), k.to_contiguous(), v.to_contiguous());
        let padding: Option<Vec<bool>> = padding.map(|p| {
            p.clone()
                .into_data()
                .to_vec()
                .expect("a bool tensor reads back as bool")
        });
        let context = attention_f32(
            Shape {
                batch,
                seq,
                hidden,
                heads,
            },
            [q.as_slice()?, k.as_slice()?, v.as_slice()?],
            padding.as_deref(),
        );
        Some(from_flex(FlexTensor::from_data(TensorData::new(
            context,
            [batch, seq, hidden],
        ))))
    }

    std::thread_local! {
        /// One `[seq, seq]` score matrix per thread, kept between calls.
        static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// A pointer tasks may share because each writes a disjoint part of what it points to.
    #[derive(Clone, Copy)]
    struct SendPtr(*mut f32);
    // SAFETY: see `attention_f32`, the only user: writes through it never overlap.
    unsafe impl Send for SendPtr {}
    unsafe impl Sync for SendPtr {}
    impl SendPtr {
        // A method, so closures capture the whole `SendPtr` (Sync), not its raw field.
        fn get(self) -> *mut f32 {
            self.0
        }
    }

    #[derive(Clone, Copy)]
    pub(super) struct Shape {
        pub batch: usize,
        pub seq: usize,
        pub hidden: usize,
        pub heads: usize,
    }

    /// `[batch, seq, hidden]` row-major q, k, v in, context in the same layout out. One rayon
    /// task per (batch, head): two matrix products through `gemm` with strides that pick the
    /// head's columns, and a row softmax in between.
    pub(super) fn attention_f32(
        shape: Shape,
        [q, k, v]: [&[f32]; 3],
        padding: Option<&[bool]>,
    ) -> Vec<f32> {
        let Shape {
            batch,
            seq,
            hidden,
            heads,
        } = shape;
        assert_eq!(
            hidden % heads,
            0,
            "hidden size {hidden} not divisible by {heads} heads"
        );
        let head_dim = hidden / heads;
        let len = batch * seq * hidden;
        assert!(q.len() == len && k.len() == len && v.len() == len);
        let scale = 1.0 / (head_dim as f32).sqrt();

        // Each task writes its head's columns of `context` straight through a pointer: the
        // blocks are disjoint but interleaved, so they cannot be handed out as slices.
        let mut context = Vec::<f32>::with_capacity(len);
        let out = SendPtr(context.as_mut_ptr());
        (0..batch * heads).into_par_iter().for_each(|bh| {
            SCORES.with_borrow_mut(|scores| {
                // Every element is written by the first product before it is read.
                scores.resize(seq * seq, 0.0);
                let (b, h) = (bh / heads, bh % heads);
                let at = b * seq * hidden + h * head_dim;
                let keys_padded = padding.map(|p| &p[b * seq..(b + 1) * seq]);
                // SAFETY: every read stays inside batch b's [seq, hidden] block of q, k, v
                // (rows < seq, columns h·head_dim .. (h+1)·head_dim ≤ hidden), the scores are
                // this task's own [seq, seq] buffer.
                unsafe {
                    // scores = scale · Q_h K_hᵀ
                    gemm::gemm(
                        seq,
                        seq,
                        head_dim,
                        scores.as_mut_ptr(),
                        1,
                        seq as isize,
                        false,
                        q.as_ptr().add(at),
                        1,
                        hidden as isize,
                        k.as_ptr().add(at),
                        hidden as isize,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                for row in scores.chunks_exact_mut(seq) {
                    math::softmax(row, keys_padded);
                }
                // SAFETY: reads as above; the writes cover exactly rows b·seq .. (b+1)·seq,
                // columns h·head_dim .. (h+1)·head_dim of `context`, which no other task
                // touches, inside its capacity of batch·seq·hidden.
                unsafe {
                    // context_h = P V_h
                    gemm::gemm(
                        seq,
                        head_dim,
                        seq,
                        out.get().add(at),
                        1,
                        hidden as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        seq as isize,
                        v.as_ptr().add(at),
                        1,
                        hidden as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            })
        });
        // SAFETY: the (batch, head) tasks above wrote every element.
        unsafe { context.set_len(len) };
        context
    }
}

/// Vectorisable `exp`, `erf`, softmax and GELU over f32 slices. The bodies are plain loops that
/// LLVM vectorises; [`dispatch`] compiles them once more for AVX-512 and AVX2 and picks the best
/// the processor has at run time.
mod math {
    /// `e^x` (Cephes' `expf` polynomial after range reduction by powers of two), within 2 ulp of
    /// the true value on [-87, 88]; below -87 it returns 0, NaN stays NaN.
    #[inline(always)]
    pub fn exp(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // `max`/`min` map NaN to a bound, so `n` below is always a small finite integer.
        #[expect(
            clippy::manual_clamp,
            reason = "clamp keeps NaN, which must not reach `n`"
        )]
        let r0 = x.max(-87.0).min(88.0);
        let n = (r0 * LOG2E + 0.5).floor();
        let r = r0 - n * LN2_HI - n * LN2_LO;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 1.666_666_5e-1;
        p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        // SAFETY: n is finite and within [-126, 127] (r0 is clamped above). The unchecked
        // conversion is a single vector instruction; `as` would add saturation checks that stop
        // LLVM from vectorising the loop.
        let n = unsafe { n.to_int_unchecked::<i32>() };
        let two_n = f32::from_bits(((n + 127) as u32) << 23);
        if x < -87.0 {
            0.0
        } else if x.is_nan() {
            x
        } else {
            y * two_n
        }
    }

    /// `erf(x)` as a rational function on [-4, 4] (the approximation Eigen and XLA use for the
    /// exact GELU), within a few ulp of the true value; `erf(±4)` already rounds to ±1 in f32.
    #[inline(always)]
    pub fn erf(x: f32) -> f32 {
        let x = x.clamp(-4.0, 4.0);
        let x2 = x * x;
        let mut p = -2.726_142_3e-10f32;
        p = p * x2 + 2.770_681_4e-8;
        p = p * x2 - 2.101_024e-6;
        p = p * x2 - 5.692_506_4e-5;
        p = p * x2 - 7.349_906_3e-4;
        p = p * x2 - 2.954_6e-3;
        p = p * x2 - 1.609_603_3e-2;
        let mut q = -1.456_607_2e-5f32;
        q = q * x2 - 2.133_740_6e-4;
        q = q * x2 - 1.682_827e-3;
        q = q * x2 - 7.373_329e-3;
        q = q * x2 - 1.426_474e-2;
        x * p / q
    }

    /// Numerically stable softmax of one row in place; masked positions get exactly 0.
    #[inline(always)]
    fn softmax_row(row: &mut [f32], masked: Option<&[bool]>) {
        if let Some(masked) = masked {
            for (x, &m) in row.iter_mut().zip(masked) {
                if m {
                    *x = f32::NEG_INFINITY;
                }
            }
        }
        // Per-lane accumulators: a single running max or sum would be a serial chain that
        // keeps LLVM from vectorising the loop.
        const LANES: usize = 16;
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for (m, &x) in lanes.iter_mut().zip(c) {
                *m = if x > *m { x } else { *m };
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(&lanes)
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        if max == f32::NEG_INFINITY {
            // Every position masked: no weight anywhere rather than NaN.
            row.fill(0.0);
            return;
        }
        let mut lanes = [0.0f32; LANES];
        let mut chunks = row.chunks_exact_mut(LANES);
        for c in &mut chunks {
            for (s, x) in lanes.iter_mut().zip(c) {
                *x = exp(*x - max);
                *s += *x;
            }
        }
        let mut sum: f32 = lanes.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp(*x - max);
            sum += *x;
        }
        let inv = 1.0 / sum;
        for x in row.iter_mut() {
            *x *= inv;
        }
    }

    #[inline(always)]
    fn gelu_slice(values: &mut [f32]) {
        const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
        for x in values {
            *x = 0.5 * *x * (1.0 + erf(*x * FRAC_1_SQRT_2));
        }
    }

    /// Defines `pub fn $name` that runs `$body` compiled for the best instruction set present.
    macro_rules! dispatch {
        ($(#[$doc:meta])* $name:ident($($arg:ident: $ty:ty),*) => $body:ident) => {
            $(#[$doc])*
            pub fn $name($($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    fn avx512($($arg: $ty),*) { $body($($arg),*) }
                    #[target_feature(enable = "avx2,fma")]
                    fn avx2($($arg: $ty),*) { $body($($arg),*) }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the processor has AVX-512F (checked above), and with it AVX2 and FMA.
                        return unsafe { avx512($($arg),*) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: both features checked above.
                        return unsafe { avx2($($arg),*) };
                    }
                }
                $body($($arg),*)
            }
        };
    }

    dispatch!(
        /// Softmax of `row` in place, ignoring positions where `masked` is true.
        softmax(row: &mut [f32], masked: Option<&[bool]>) => softmax_row
    );
    dispatch!(
        /// `x = gelu(x)` for every value.
        gelu_in_place(values: &mut [f32]) => gelu_slice
    );
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
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= tol, "max abs difference {worst}");
    }

    #[test]
    fn linear_matches_burn_with_and_without_bias() {
        let x = random([3, 5, 24]);
        for bias in [true, false] {
            let layer = LinearConfig::new(24, 40)
                .with_bias(bias)
                .init::<B>(&Default::default());
            let want = layer.forward(x.clone());
            assert_close(linear(&layer, x.clone()), want, 1e-5);
        }
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
            let got = attention(q.clone(), k.clone(), v.clone(), padding, heads, &no_dropout);
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
