//! The x86 int8 kernels. VNNI has its own register-blocked kernel ([`super::vnni`]); one tile loop
//! ([`tiles`]) over [`ROWS`] x [`COLS`] sums serves the `vpmaddwd` paths, and each [`Lanes`]
//! implementation supplies the operations that differ
//! (load activations, load weights, multiply-accumulate, sum the lanes). The `vpmaddwd` paths
//! read weights widened to i16 once ([`Int8Matrix::wide`]): widening them in the loop cost a
//! shuffle per load.
//!
//! The tile loop is `#[inline(always)]` into one `#[target_feature]` entry point per instruction
//! set, and the lane operations carry the same features, so each entry point compiles to that
//! instruction set alone.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{COLS, Int8Matrix, Isa, QuantizedRows, ROWS};

/// The sums of `rows` on `isa` into `out`, `[rows.len(), w.outputs]`.
pub(super) fn sums(
    isa: Isa,
    a: &QuantizedRows,
    w: &Int8Matrix,
    rows: Range<usize>,
    out: &mut [i32],
) {
    // SAFETY: `isa` came from `Isa::available`, which checked the CPU for its features; the
    // tile loop reads only within the padded rows (strides are a multiple of every step).
    unsafe {
        match isa {
            Isa::Avx512Vnni => sums_vnni(a, w, rows, out),
            Isa::Avx512Bw => sums_avx512bw(a, w, rows, out),
            Isa::Avx2 => sums_avx2(a, w, rows, out),
            Isa::Scalar => unreachable!("the scalar path is not x86-specific"),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn sums_vnni(a: &QuantizedRows, w: &Int8Matrix, rows: Range<usize>, out: &mut [i32]) {
    unsafe { super::vnni::sums(a, w, rows, out) }
}

#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn sums_avx512bw(a: &QuantizedRows, w: &Int8Matrix, rows: Range<usize>, out: &mut [i32]) {
    unsafe { tiles::<Avx512Bw, i16, i16>(&a.wide, w.wide(), a.stride, w.outputs, rows, out) }
}

#[target_feature(enable = "avx2")]
unsafe fn sums_avx2(a: &QuantizedRows, w: &Int8Matrix, rows: Range<usize>, out: &mut [i32]) {
    unsafe { tiles::<Avx2, i16, i16>(&a.wide, w.wide(), a.stride, w.outputs, rows, out) }
}

/// What differs between instruction sets: `STEP` inputs per operation on `A` activations and
/// `W` weights.
trait Lanes<A, W> {
    type V: Copy;
    const STEP: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load_activations(p: *const A) -> Self::V;
    unsafe fn load_weights(p: *const W) -> Self::V;
    unsafe fn multiply_add(acc: Self::V, a: Self::V, w: Self::V) -> Self::V;
    unsafe fn sum(v: Self::V) -> i32;
}

/// Column blocks outermost, so a block of weight rows stays in L1 while the task's activation
/// rows pass under it; edge tiles are computed at their own, smaller sizes.
#[inline(always)]
unsafe fn tiles<L: Lanes<A, W>, A, W>(
    x: &[A],
    weights: &[W],
    stride: usize,
    n: usize,
    rows: Range<usize>,
    out: &mut [i32],
) {
    let steps = stride / L::STEP;
    let mut c = 0;
    while c < n {
        let cols = COLS.min(n - c);
        let mut r = rows.start;
        while r < rows.end {
            let tile_rows = ROWS.min(rows.end - r);
            let x = x[r * stride..].as_ptr();
            let wp = weights[c * stride..].as_ptr();
            let sums = unsafe {
                match (tile_rows, cols) {
                    (ROWS, COLS) => {
                        let full = tile::<L, A, W, ROWS, COLS>(x, wp, stride, steps);
                        let mut sums = [0; ROWS * COLS];
                        sums.copy_from_slice(full.as_flattened());
                        sums
                    }
                    _ => edge_tile::<L, A, W>(x, wp, stride, steps, tile_rows, cols),
                }
            };
            for i in 0..tile_rows {
                let row = (r - rows.start + i) * n + c;
                out[row..row + cols].copy_from_slice(&sums[i * COLS..i * COLS + cols]);
            }
            r += tile_rows;
        }
        c += cols;
    }
}

/// A partial tile, one sum at a time.
#[inline(always)]
unsafe fn edge_tile<L: Lanes<A, W>, A, W>(
    x: *const A,
    w: *const W,
    stride: usize,
    steps: usize,
    rows: usize,
    cols: usize,
) -> [i32; ROWS * COLS] {
    let mut sums = [0; ROWS * COLS];
    for i in 0..rows {
        for j in 0..cols {
            let [[s]] = unsafe {
                tile::<L, A, W, 1, 1>(x.add(i * stride), w.add(j * stride), stride, steps)
            };
            sums[i * COLS + j] = s;
        }
    }
    sums
}

/// `R` x `C` sums over `steps` steps of `L::STEP` inputs: activation rows from `x`, weight rows
/// from `w`, both `stride` apart.
#[inline(always)]
unsafe fn tile<L: Lanes<A, W>, A, W, const R: usize, const C: usize>(
    x: *const A,
    w: *const W,
    stride: usize,
    steps: usize,
) -> [[i32; C]; R] {
    unsafe {
        let mut acc = [[L::zero(); C]; R];
        for s in 0..steps {
            let k = s * L::STEP;
            let mut xs = [L::zero(); R];
            for (i, v) in xs.iter_mut().enumerate() {
                *v = L::load_activations(x.add(i * stride + k));
            }
            for j in 0..C {
                let wv = L::load_weights(w.add(j * stride + k));
                for (row, &xv) in acc.iter_mut().zip(&xs) {
                    row[j] = L::multiply_add(row[j], xv, wv);
                }
            }
        }
        let mut sums = [[0; C]; R];
        for (sum_row, acc_row) in sums.iter_mut().zip(&acc) {
            for (sum, &v) in sum_row.iter_mut().zip(acc_row) {
                *sum = L::sum(v);
            }
        }
        sums
    }
}

struct Avx2;

impl Lanes<i16, i16> for Avx2 {
    type V = __m256i;
    const STEP: usize = 16;
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn zero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load_activations(p: *const i16) -> __m256i {
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn load_weights(p: *const i16) -> __m256i {
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn multiply_add(acc: __m256i, a: __m256i, w: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, w))
    }
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn sum(v: __m256i) -> i32 {
        let half = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let pairs = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0b01_00_11_10));
        let one = _mm_add_epi32(pairs, _mm_shuffle_epi32(pairs, 0b10_11_00_01));
        _mm_cvtsi128_si32(one)
    }
}

struct Avx512Bw;

impl Lanes<i16, i16> for Avx512Bw {
    type V = __m512i;
    const STEP: usize = 32;
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn load_activations(p: *const i16) -> __m512i {
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn load_weights(p: *const i16) -> __m512i {
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn multiply_add(acc: __m512i, a: __m512i, w: __m512i) -> __m512i {
        _mm512_add_epi32(acc, _mm512_madd_epi16(a, w))
    }
    #[target_feature(enable = "avx512f,avx512bw")]
    #[inline]
    unsafe fn sum(v: __m512i) -> i32 {
        _mm512_reduce_add_epi32(v)
    }
}
