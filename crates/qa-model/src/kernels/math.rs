//! Vectorisable `exp`, `erf`, softmax, GELU and dropout over f32 slices. The bodies are plain
//! loops that LLVM vectorises; [`dispatch`] compiles them once more for AVX-512 and AVX2 and picks
//! the best the processor has at run time.

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

/// Lanes of the per-lane accumulators below: one running sum would be a serial chain that keeps
/// LLVM from vectorising a reduction.
const LANES: usize = 16;

/// `Σ a_i b_i`.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in lanes.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a_i b_i c_i`.
#[inline(always)]
fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
        .map(|((x, y), z)| x * y * z)
        .sum();
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for (((s, x), y), z) in lanes.iter_mut().zip(x).zip(y).zip(z) {
            *s += x * y * z;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The gradient of a softmax row: `d` holds the gradient of its output `p` and becomes the
/// gradient of its input, `p ∘ (d − Σ d∘p)`.
#[inline(always)]
fn softmax_backward_row(d: &mut [f32], p: &[f32]) {
    let c = dot(d, p);
    for (d, &p) in d.iter_mut().zip(p) {
        *d = p * (*d - c);
    }
}

/// `d = d · gelu'(x)`, with `gelu'(x) = Φ(x) + x φ(x)`.
#[inline(always)]
fn gelu_grad_slice(x: &[f32], d: &mut [f32]) {
    const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
    // 1/√(2π)
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    for (d, &x) in d.iter_mut().zip(x) {
        let cdf = 0.5 * (1.0 + erf(x * FRAC_1_SQRT_2));
        let pdf = FRAC_1_SQRT_2PI * exp(-0.5 * x * x);
        *d *= cdf + x * pdf;
    }
}

/// Layer normalisation of each `width`-long row of `x`: `y = x̂ γ + β` with `x̂ = (x − mean) / σ`,
/// `σ = √(var + eps)`. `x̂` and `1/σ` per row are kept for [`layer_norm_backward`].
#[inline(always)]
fn layer_norm_rows(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    y: &mut [f32],
    x_hat: &mut [f32],
    inv_std: &mut [f32],
) {
    let width = gamma.len();
    for (((x, y), x_hat), inv_std) in x
        .chunks_exact(width)
        .zip(y.chunks_exact_mut(width))
        .zip(x_hat.chunks_exact_mut(width))
        .zip(inv_std)
    {
        let mean = sum(x) / width as f32;
        for (h, &x) in x_hat.iter_mut().zip(x) {
            *h = x - mean;
        }
        let var = dot(x_hat, x_hat) / width as f32;
        let r = 1.0 / (var + eps).sqrt();
        *inv_std = r;
        for (((y, h), &g), &b) in y.iter_mut().zip(x_hat.iter_mut()).zip(gamma).zip(beta) {
            *h *= r;
            *y = *h * g + b;
        }
    }
}

/// Layer normalisation of `x + residual` in place, for the whole rows of `x` (inference: nothing
/// is kept for a backward pass). Row `i` of `x` is row `first_row + i` of its tensor and gets row
/// `(first_row + i) % residual rows` of `residual`, so a residual without a batch dimension (the
/// position embeddings) applies to every sequence.
#[inline(always)]
fn add_layer_norm_rows(
    x: &mut [f32],
    first_row: usize,
    residual: &[f32],
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
) {
    let width = gamma.len();
    let residual_rows = residual.len() / width;
    for (i, x) in x.chunks_exact_mut(width).enumerate() {
        let at = (first_row + i) % residual_rows * width;
        for (x, &r) in x.iter_mut().zip(&residual[at..at + width]) {
            *x += r;
        }
        let mean = sum(x) / width as f32;
        let var = squared_deviations(x, mean) / width as f32;
        let r = 1.0 / (var + eps).sqrt();
        for ((x, &g), &b) in x.iter_mut().zip(gamma).zip(beta) {
            *x = (*x - mean) * r * g + b;
        }
    }
}

/// `Σ (a_i − mean)²`.
#[inline(always)]
fn squared_deviations(a: &[f32], mean: f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let tail: f32 = ca.remainder().iter().map(|x| (x - mean) * (x - mean)).sum();
    for x in ca {
        for (s, x) in lanes.iter_mut().zip(x) {
            *s += (x - mean) * (x - mean);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `Σ a_i`.
#[inline(always)]
fn sum(a: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let tail: f32 = ca.remainder().iter().sum();
    for x in ca {
        for (s, x) in lanes.iter_mut().zip(x) {
            *s += x;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The gradients of [`layer_norm_rows`] for the rows of `dy`: `dx` is written,
/// `d_gamma` and `d_beta` are added to.
/// `dx = (g − mean(g) − x̂ mean(g x̂)) / σ` with `g = dy γ`; `dγ += Σ dy x̂`, `dβ += Σ dy`.
#[inline(always)]
fn layer_norm_backward_rows(
    dy: &[f32],
    x_hat: &[f32],
    inv_std: &[f32],
    gamma: &[f32],
    dx: &mut [f32],
    d_gamma: &mut [f32],
    d_beta: &mut [f32],
) {
    let width = gamma.len();
    for (((dy, x_hat), dx), &r) in dy
        .chunks_exact(width)
        .zip(x_hat.chunks_exact(width))
        .zip(dx.chunks_exact_mut(width))
        .zip(inv_std)
    {
        let mean_g = dot(dy, gamma) / width as f32;
        let mean_gx = dot3(dy, gamma, x_hat) / width as f32;
        for ((((dx, &dy), &h), &g), (dg, db)) in dx
            .iter_mut()
            .zip(dy)
            .zip(x_hat)
            .zip(gamma)
            .zip(d_gamma.iter_mut().zip(d_beta.iter_mut()))
        {
            *dx = r * (dy * g - mean_g - h * mean_gx);
            *dg += dy * h;
            *db += dy;
        }
    }
}

/// Which elements dropout keeps, as a pure function of a key and the element's index: masks are
/// drawn in parallel, and the backward pass draws the same mask again instead of storing it.
#[derive(Clone, Copy, Debug)]
pub struct DropoutMask {
    key: [u32; 2],
    /// An element is dropped when its hash is below this (`prob · 2³²`).
    threshold: u32,
    /// `1 / (1 − prob)`, so the expected value is unchanged.
    scale: f32,
}

impl DropoutMask {
    pub fn new(prob: f64, key: u64) -> Self {
        assert!(
            (0.0..1.0).contains(&prob),
            "dropout probability {prob} is not in [0, 1)"
        );
        DropoutMask {
            key: [key as u32, (key >> 32) as u32],
            threshold: (prob * 4_294_967_296.0) as u32,
            scale: (1.0 / (1.0 - prob)) as f32,
        }
    }

    /// Whether the element at `index` is kept.
    #[inline(always)]
    pub fn keeps(&self, index: u32) -> bool {
        hash32(hash32(index ^ self.key[0]) ^ self.key[1]) >= self.threshold
    }

    /// `values[i] = values[i] · mask(start + i) · scale`, for an element range of one
    /// tensor that starts at index `start`.
    pub fn apply(&self, values: &mut [f32], start: u64) {
        assert!(
            start + values.len() as u64 <= u64::from(u32::MAX),
            "dropout over more than 2³² elements"
        );
        apply_dropout(self, values, start as u32);
    }
}

/// Chris Wellons' `lowbias32`, a bijective integer hash with good avalanche.
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

#[inline(always)]
fn dropout_slice(mask: &DropoutMask, values: &mut [f32], start: u32) {
    for (i, x) in values.iter_mut().enumerate() {
        let keep = mask.keeps(start.wrapping_add(i as u32));
        *x = if keep { *x * mask.scale } else { 0.0 };
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
dispatch!(
    /// `d = d · gelu'(x)`.
    gelu_grad(x: &[f32], d: &mut [f32]) => gelu_grad_slice
);
dispatch!(
    /// Softmax gradient of one row in place (see `softmax_backward_row`).
    softmax_backward(d: &mut [f32], p: &[f32]) => softmax_backward_row
);
dispatch!(
    /// Layer normalisation of whole rows (see `layer_norm_rows`).
    layer_norm(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32,
        y: &mut [f32],
        x_hat: &mut [f32],
        inv_std: &mut [f32]
    ) => layer_norm_rows
);
dispatch!(
    /// Layer normalisation of `x + residual` in place (see `add_layer_norm_rows`).
    add_layer_norm(
        x: &mut [f32],
        first_row: usize,
        residual: &[f32],
        gamma: &[f32],
        beta: &[f32],
        eps: f32
    ) => add_layer_norm_rows
);
dispatch!(
    /// Layer normalisation gradients of whole rows (see `layer_norm_backward_rows`).
    layer_norm_backward(
        dy: &[f32],
        x_hat: &[f32],
        inv_std: &[f32],
        gamma: &[f32],
        dx: &mut [f32],
        d_gamma: &mut [f32],
        d_beta: &mut [f32]
    ) => layer_norm_backward_rows
);
dispatch!(
    /// Dropout in place (see [`DropoutMask::apply`]).
    apply_dropout(mask: &DropoutMask, values: &mut [f32], start: u32) => dropout_slice
);
