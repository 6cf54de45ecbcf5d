//! The raw f32 routines both CPU paths share: matrix products with strides, the linear layer,
//! and multi-head attention forward and backward, over plain slices. No burn types here. Every
//! product runs in a [`Precision`]: f32 (the `gemm` crate), or bf16 operands summed in f32
//! ([`super::bf16`]).

use rayon::prelude::*;

use super::{bf16, math};
use crate::precision::Precision;

/// A read-only matrix in memory: element (i, j) is at `ptr + i·row_stride + j·col_stride`, so
/// a transpose or one head's columns are just other strides.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub ptr: *const f32,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Mat {
    /// Row-major with `row_stride` elements from one row to the next.
    pub fn rows(ptr: *const f32, row_stride: usize) -> Self {
        Mat {
            ptr,
            row_stride,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `row_stride`.
    pub fn transposed(ptr: *const f32, row_stride: usize) -> Self {
        Mat {
            ptr,
            row_stride: 1,
            col_stride: row_stride,
        }
    }
}

/// `dst = (dst if accumulate) + scale · a b` for `a: [m, k]`, `b: [k, n]`, `dst: [m, n]` row-major
/// with `dst_row_stride`, the operands in `precision`.
///
/// # Safety
/// `a`, `b` and `dst` must be valid for every element the shapes and strides reach, and `dst`
/// must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn product(
    precision: Precision,
    shape: [usize; 3],
    dst: *mut f32,
    dst_row_stride: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    scale: f32,
    parallel: bool,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        match precision {
            Precision::F32 => matmul(
                shape,
                dst,
                dst_row_stride,
                accumulate,
                a,
                b,
                scale,
                parallel,
            ),
            Precision::Bf16 => bf16::matmul(
                shape,
                dst,
                dst_row_stride,
                accumulate,
                a,
                b,
                scale,
                parallel,
            ),
        }
    }
}

/// [`product`] in f32, on the `gemm` crate.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
    [m, k, n]: [usize; 3],
    dst: *mut f32,
    dst_row_stride: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    scale: f32,
    parallel: bool,
) {
    let parallelism = if parallel && m * n * k >= PARALLEL_GEMM_OPS {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_row_stride as isize,
            accumulate,
            a.ptr,
            a.col_stride as isize,
            a.row_stride as isize,
            b.ptr,
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            scale,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `x W + b` for row-major `x: [m, k]`, `W: [k, n]`: the output starts as the bias in every row
/// and one multi-threaded product in `precision` adds the product to it.
pub(super) fn linear_f32(
    precision: Precision,
    [m, k, n]: [usize; 3],
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(x.len() == m * k && weight.len() == k * n);
    let mut out = Vec::<f32>::with_capacity(m * n);
    if let Some(bias) = bias {
        assert_eq!(bias.len(), n);
        out.spare_capacity_mut().par_chunks_mut(n).for_each(|row| {
            for (dst, &b) in row.iter_mut().zip(bias) {
                dst.write(b);
            }
        });
    }
    // SAFETY: x is [m, k], weight [k, n] and out has room for [m, n], all row-major; when
    // there is no bias, `accumulate` is false and gemm only writes.
    unsafe {
        product(
            precision,
            [m, k, n],
            out.as_mut_ptr(),
            n,
            bias.is_some(),
            Mat::rows(x.as_ptr(), k),
            Mat::rows(weight.as_ptr(), n),
            1.0,
            true,
        );
        out.set_len(m * n);
    }
    out
}

/// Below this many multiply-adds a product runs on one thread (burn-flex's own threshold).
pub(super) const PARALLEL_GEMM_OPS: usize = 192 * 192 * 192;

/// Elements per rayon task for element-wise work: large enough to amortise the task, small
/// enough to split a `[batch·seq, intermediate]` activation across cores.
pub(super) const CHUNK: usize = 16 * 1024;

std::thread_local! {
    /// Two `[seq, seq]` matrices per thread, kept between calls.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// A pointer tasks may share because each writes a disjoint part of what it points to.
#[derive(Clone, Copy)]
pub(super) struct SendPtr(pub *mut f32);
// SAFETY: every user writes disjoint parts through it (see the SAFETY comments at each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    // A method, so closures capture the whole `SendPtr` (Sync), not its raw field.
    pub fn get(self) -> *mut f32 {
        self.0
    }
}

/// Sizes of one multi-head attention over `[batch, seq, hidden]` projections.
#[derive(Clone, Copy, Debug)]
pub(super) struct AttentionShape {
    pub batch: usize,
    pub seq: usize,
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// What the products run in.
    pub precision: Precision,
}

impl AttentionShape {
    pub fn new(batch: usize, seq: usize, hidden: usize, heads: usize) -> Self {
        assert_eq!(
            hidden % heads,
            0,
            "hidden size {hidden} not divisible by {heads} heads"
        );
        AttentionShape {
            batch,
            seq,
            hidden,
            heads,
            head_dim: hidden / heads,
            precision: Precision::F32,
        }
    }

    /// The same shape with its products in `precision`.
    pub fn in_precision(self, precision: Precision) -> Self {
        AttentionShape { precision, ..self }
    }

    fn len(&self) -> usize {
        self.batch * self.seq * self.hidden
    }

    fn scale(&self) -> f32 {
        1.0 / (self.head_dim as f32).sqrt()
    }

    /// Offset of head `h`'s first element in batch `b`'s `[seq, hidden]` block.
    fn head_offset(&self, bh: usize) -> usize {
        let (b, h) = (bh / self.heads, bh % self.heads);
        b * self.seq * self.hidden + h * self.head_dim
    }
}

/// `softmax(Q_h K_hᵀ / √d + mask) V_h` for every (batch, head), over row-major `[batch, seq,
/// hidden]` q, k, v; context comes out in the same layout. One rayon task per (batch, head):
/// two `gemm` calls with strides that pick the head's columns, and a row softmax in between.
///
/// With `dropout`, the probabilities are dropped (and rescaled) before they weight the values, as
/// BERT does while training. With `keep_probs`, the softmax output before dropout comes back too,
/// `[batch, heads, seq, seq]`, for [`attention_backward_f32`]; otherwise that vector is empty.
pub(super) fn attention_f32(
    shape: AttentionShape,
    [q, k, v]: [&[f32]; 3],
    padding: Option<&[bool]>,
    dropout: Option<&math::DropoutMask>,
    keep_probs: bool,
) -> (Vec<f32>, Vec<f32>) {
    let AttentionShape {
        batch,
        seq,
        hidden,
        heads,
        head_dim,
        ..
    } = shape;
    let len = shape.len();
    assert!(q.len() == len && k.len() == len && v.len() == len);
    let block = seq * seq;

    // Each task writes its head's columns of `context` straight through a pointer: the
    // blocks are disjoint but interleaved, so they cannot be handed out as slices.
    let mut context = Vec::<f32>::with_capacity(len);
    let out = SendPtr(context.as_mut_ptr());
    let mut probs = Vec::<f32>::with_capacity(if keep_probs { batch * heads * block } else { 0 });
    let probs_out = SendPtr(probs.as_mut_ptr());
    (0..batch * heads).into_par_iter().for_each(|bh| {
        SCRATCH.with_borrow_mut(|(scores, _)| {
            // Every element is written by the first product before it is read.
            scores.resize(block, 0.0);
            let at = shape.head_offset(bh);
            let b = bh / heads;
            let keys_padded = padding.map(|p| &p[b * seq..(b + 1) * seq]);
            // SAFETY: every read stays inside batch b's [seq, hidden] block of q, k, v (rows <
            // seq, columns h·head_dim .. (h+1)·head_dim ≤ hidden); scores is this task's own
            // [seq, seq] buffer.
            unsafe {
                // scores = scale · Q_h K_hᵀ
                product(
                    shape.precision,
                    [seq, head_dim, seq],
                    scores.as_mut_ptr(),
                    seq,
                    false,
                    Mat::rows(q.as_ptr().add(at), hidden),
                    Mat::transposed(k.as_ptr().add(at), hidden),
                    shape.scale(),
                    false,
                );
            }
            for row in scores.chunks_exact_mut(seq) {
                math::softmax(row, keys_padded);
            }
            if keep_probs {
                // SAFETY: block bh of `probs` (capacity batch·heads·seq²) is this task's alone.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        scores.as_ptr(),
                        probs_out.get().add(bh * block),
                        block,
                    );
                }
            }
            if let Some(mask) = dropout {
                mask.apply(scores, (bh * block) as u64);
            }
            // SAFETY: reads as above; the writes cover exactly rows b·seq .. (b+1)·seq, columns
            // h·head_dim .. (h+1)·head_dim of `context`, which no other task touches, inside its
            // capacity of batch·seq·hidden.
            unsafe {
                // context_h = P V_h
                product(
                    shape.precision,
                    [seq, seq, head_dim],
                    out.get().add(at),
                    hidden,
                    false,
                    Mat::rows(scores.as_ptr(), seq),
                    Mat::rows(v.as_ptr().add(at), hidden),
                    1.0,
                    false,
                );
            }
        })
    });
    // SAFETY: the (batch, head) tasks above wrote every element of both.
    unsafe {
        context.set_len(len);
        if keep_probs {
            probs.set_len(batch * heads * block);
        }
    }
    (context, probs)
}

/// Gradients of [`attention_f32`] with respect to q, k and v, given the gradient of its context
/// and the probabilities it kept (before dropout). Per (batch, head), with `P` the
/// probabilities, `D` the dropout mask (scaled) and `s` = 1/√d:
/// `dV = (P∘D)ᵀ dC`, `dP = (dC Vᵀ)∘D`, `dS = P∘(dP − rowsum(dP∘P))`, `dQ = s dS K`, `dK = s dSᵀ Q`.
pub(super) fn attention_backward_f32(
    shape: AttentionShape,
    [q, k, v]: [&[f32]; 3],
    probs: &[f32],
    dropout: Option<&math::DropoutMask>,
    d_context: &[f32],
) -> [Vec<f32>; 3] {
    let AttentionShape {
        batch,
        seq,
        hidden,
        heads,
        head_dim,
        ..
    } = shape;
    let len = shape.len();
    let block = seq * seq;
    assert!(q.len() == len && k.len() == len && v.len() == len && d_context.len() == len);
    assert_eq!(probs.len(), batch * heads * block);
    let mut grads = [(); 3].map(|_| Vec::<f32>::with_capacity(len));
    let [dq, dk, dv] = grads.each_mut().map(|g| SendPtr(g.as_mut_ptr()));
    (0..batch * heads).into_par_iter().for_each(|bh| {
        SCRATCH.with_borrow_mut(|(dropped, d_probs)| {
            dropped.resize(block, 0.0);
            d_probs.resize(block, 0.0);
            let at = shape.head_offset(bh);
            let p = &probs[bh * block..(bh + 1) * block];
            let p_used: &[f32] = match dropout {
                Some(mask) => {
                    dropped.copy_from_slice(p);
                    mask.apply(dropped, (bh * block) as u64);
                    dropped
                }
                None => p,
            };
            // SAFETY: reads stay inside batch b's [seq, hidden] blocks of q, k, v, d_context
            // (head h's columns) and this task's [seq, seq] buffers; the writes cover head h's
            // columns of batch b's rows of dq, dk, dv, which no other task touches.
            unsafe {
                // dV_h = P_usedᵀ dC_h
                product(
                    shape.precision,
                    [seq, seq, head_dim],
                    dv.get().add(at),
                    hidden,
                    false,
                    Mat::transposed(p_used.as_ptr(), seq),
                    Mat::rows(d_context.as_ptr().add(at), hidden),
                    1.0,
                    false,
                );
                // dP = dC_h V_hᵀ
                product(
                    shape.precision,
                    [seq, head_dim, seq],
                    d_probs.as_mut_ptr(),
                    seq,
                    false,
                    Mat::rows(d_context.as_ptr().add(at), hidden),
                    Mat::transposed(v.as_ptr().add(at), hidden),
                    1.0,
                    false,
                );
            }
            if let Some(mask) = dropout {
                mask.apply(d_probs, (bh * block) as u64);
            }
            for (d_row, p_row) in d_probs.chunks_exact_mut(seq).zip(p.chunks_exact(seq)) {
                math::softmax_backward(d_row, p_row);
            }
            // SAFETY: as above.
            unsafe {
                // dQ_h = s dS K_h
                product(
                    shape.precision,
                    [seq, seq, head_dim],
                    dq.get().add(at),
                    hidden,
                    false,
                    Mat::rows(d_probs.as_ptr(), seq),
                    Mat::rows(k.as_ptr().add(at), hidden),
                    shape.scale(),
                    false,
                );
                // dK_h = s dSᵀ Q_h
                product(
                    shape.precision,
                    [seq, seq, head_dim],
                    dk.get().add(at),
                    hidden,
                    false,
                    Mat::transposed(d_probs.as_ptr(), seq),
                    Mat::rows(q.as_ptr().add(at), hidden),
                    shape.scale(),
                    false,
                );
            }
        })
    });
    for g in &mut grads {
        // SAFETY: the (batch, head) tasks above wrote every element.
        unsafe { g.set_len(len) };
    }
    grads
}
