//! Matrix products with bf16 operands and f32 sums: the CPU side of [`Precision::Bf16`].
//!
//! [`matmul`] has the signature and strides of [`routines::matmul`]; it rounds each operand to
//! bf16 (round to nearest even) and sums the products in f32. Two paths give that result:
//!
//! - AVX-512 BF16 (`vdpbf16ps`, [`native`]): a packed GEMM in the BLIS style. Blocks of B are
//!   packed into panels of `NR` = 32 columns and blocks of A into panels of `MR` = 14 rows,
//!   both already rounded and with k taken in pairs, since `vdpbf16ps` multiplies a pair of bf16
//!   from each side into one f32 lane. A microkernel keeps an `MR x NR` tile of sums in registers.
//!   A bf16 multiply-add does twice the work of an f32 one per instruction, and the packed
//!   operands are half the bytes.
//! - Anywhere else: the operands rounded to bf16 (kept as f32) into contiguous copies, then the
//!   f32 product. Slow, but the same numbers, so the semantics can be tested on any CPU.
//!
//! Both paths treat f32 subnormals as bf16 rounding does; the native instructions flush
//! subnormal inputs and sums to zero, which the model's values never reach.
//!
//! [`Precision::Bf16`]: crate::precision::Precision::Bf16

use super::routines::{self, Mat};

/// Whether this CPU runs the bf16 products natively (AVX-512 BF16, `vdpbf16ps`).
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static NATIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *NATIVE.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bf16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `dst = (dst if accumulate) + scale · bf16(a) bf16(b)` for `a: [m, k]`, `b: [k, n]`,
/// `dst: [m, n]` row-major with `dst_row_stride`: each operand rounded to bf16 (round to nearest
/// even), the products summed in f32. With `accumulate` false `dst` is only written.
///
/// # Safety
/// `a`, `b` and `dst` must be valid for every element the shapes and strides reach, and `dst`
/// must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn matmul(
    shape: [usize; 3],
    dst: *mut f32,
    dst_row_stride: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    scale: f32,
    parallel: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if native() {
        // SAFETY: forwarded to the caller; `native` checked the CPU.
        unsafe {
            native_matmul(
                shape,
                dst,
                dst_row_stride,
                accumulate,
                a,
                b,
                scale,
                parallel,
            )
        };
        return;
    }
    // SAFETY: forwarded to the caller.
    unsafe {
        portable_matmul(
            shape,
            dst,
            dst_row_stride,
            accumulate,
            a,
            b,
            scale,
            parallel,
        )
    }
}

/// [`matmul`] on AVX-512 BF16.
///
/// # Safety
/// As [`matmul`], and [`native`] must be true.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
unsafe fn native_matmul(
    [m, k, n]: [usize; 3],
    dst: *mut f32,
    dst_row_stride: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    scale: f32,
    parallel: bool,
) {
    debug_assert!(native());
    let product = x86::Product {
        m,
        k,
        n,
        dst,
        dst_row_stride,
        accumulate,
        a,
        b,
        scale,
    };
    // SAFETY: the caller vouches for the pointers and for the CPU.
    unsafe { x86::matmul(product, parallel) }
}

/// [`matmul`] as the f32 product of rounded copies.
///
/// # Safety
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
unsafe fn portable_matmul(
    [m, k, n]: [usize; 3],
    dst: *mut f32,
    dst_row_stride: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    scale: f32,
    parallel: bool,
) {
    // SAFETY: the caller vouches that the strides stay inside `a` and `b`.
    let (a, b) = unsafe { (rounded_copy(a, m, k), rounded_copy(b, k, n)) };
    // SAFETY: the copies are row-major [m, k] and [k, n]; `dst` is the caller's.
    unsafe {
        routines::matmul(
            [m, k, n],
            dst,
            dst_row_stride,
            accumulate,
            Mat::rows(a.as_ptr(), k),
            Mat::rows(b.as_ptr(), n),
            scale,
            parallel,
        )
    }
}

/// `x` as a contiguous row-major `[rows, cols]` copy, each value rounded to bf16.
///
/// # Safety
/// `x` must be valid for `rows` x `cols` elements.
unsafe fn rounded_copy(x: Mat, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * cols);
    for i in 0..rows {
        for j in 0..cols {
            // SAFETY: (i, j) is inside the matrix.
            let v = unsafe { *x.ptr.add(i * x.row_stride + j * x.col_stride) };
            out.push(half::bf16::from_f32(v).to_f32());
        }
    }
    out
}

/// The bits of `x` rounded to bf16, to nearest even.
fn bf16_bits(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The AVX-512 BF16 GEMM. Loop order (BLIS): column blocks of at most [`NC`], depth blocks
    //! of at most [`KC`] (B packed for each), row blocks of at most [`MC`] (A packed for each),
    //! then `NR`-column panels and, innermost, `MR`-row panels, so one packed B panel stays in L1
    //! while the packed A block (in L2) streams under it.

    use std::arch::x86_64::*;
    use std::cell::Cell;
    use std::mem::transmute;
    use std::ops::Range;

    use rayon::prelude::*;

    use super::super::routines::{Mat, PARALLEL_GEMM_OPS};
    use super::bf16_bits;

    /// Rows of a microkernel tile: 2 x MR accumulators + 2 B vectors + 1 broadcast fit the 32
    /// zmm registers.
    pub(super) const MR: usize = 14;
    /// Columns of a microkernel tile: two zmm of 16 f32 sums.
    pub(super) const NR: usize = 32;
    /// Most depth in a packed block: a B panel of `KC/2 · NR` pairs (24 KiB) stays in L1. Each
    /// further depth block is one more pass over `dst`.
    const KC: usize = 384;
    /// Most rows in a packed A block: `MC · KC` bf16 (378 KiB) stay in L2.
    const MC: usize = MR * 36;
    /// Most columns in a packed B block (`KC · NC` bf16, 1.5 MiB, in L3): wider than the
    /// model's layers, so A is packed once per depth block.
    const NC: usize = NR * 64;

    /// The size of the blocks that cut `len` into as few as `max` allows, all near equal and a
    /// multiple of `unit` (`max` is one too): no thin last block costing a whole pass.
    fn block_size(len: usize, max: usize, unit: usize) -> usize {
        len.div_ceil(len.div_ceil(max).max(1))
            .next_multiple_of(unit)
            .max(unit)
    }

    /// One product: a whole call, or the block of its output one task computes.
    #[derive(Clone, Copy)]
    pub(super) struct Product {
        pub m: usize,
        pub k: usize,
        pub n: usize,
        pub dst: *mut f32,
        pub dst_row_stride: usize,
        pub accumulate: bool,
        pub a: Mat,
        pub b: Mat,
        pub scale: f32,
    }

    // SAFETY: tasks only read `a` and `b`, and each writes its own block of `dst` (see `split`).
    unsafe impl Send for Product {}
    unsafe impl Sync for Product {}

    impl Product {
        /// Rows `rows` of the output: the same rows of `a`.
        ///
        /// # Safety
        /// `rows` must lie inside `0..m`.
        unsafe fn rows(self, rows: Range<usize>) -> Product {
            // SAFETY: row `rows.start` is inside both matrices (caller).
            unsafe {
                Product {
                    m: rows.len(),
                    dst: self.dst.add(rows.start * self.dst_row_stride),
                    a: Mat {
                        ptr: self.a.ptr.add(rows.start * self.a.row_stride),
                        ..self.a
                    },
                    ..self
                }
            }
        }

        /// Columns `cols` of the output: the same columns of `b`.
        ///
        /// # Safety
        /// `cols` must lie inside `0..n`.
        unsafe fn cols(self, cols: Range<usize>) -> Product {
            // SAFETY: column `cols.start` is inside both matrices (caller).
            unsafe {
                Product {
                    n: cols.len(),
                    dst: self.dst.add(cols.start),
                    b: Mat {
                        ptr: self.b.ptr.add(cols.start * self.b.col_stride),
                        ..self.b
                    },
                    ..self
                }
            }
        }
    }

    /// Runs `p`, split across rayon's threads when `parallel` and it is large enough.
    ///
    /// # Safety
    /// As [`super::matmul`], and the CPU must have the features of [`serial`].
    pub(super) unsafe fn matmul(p: Product, parallel: bool) {
        if p.m == 0 || p.n == 0 {
            return;
        }
        // SAFETY: forwarded to the caller.
        unsafe {
            if parallel && p.m * p.n * p.k >= PARALLEL_GEMM_OPS {
                split(p)
            } else {
                serial(p)
            }
        }
    }

    /// Runs `p` as independent blocks of output rows (or columns, when it is wider than tall),
    /// a few per thread so a busy thread does not hold the others up. Each block packs its own
    /// operands: the repeated packing costs far less than the products at these sizes.
    ///
    /// # Safety
    /// As [`matmul`].
    unsafe fn split(p: Product) {
        let tasks = 2 * rayon::current_num_threads();
        let (len, align) = if p.m >= p.n { (p.m, MR) } else { (p.n, NR) };
        let step = len.div_ceil(tasks).next_multiple_of(align);
        (0..len.div_ceil(step)).into_par_iter().for_each(|t| {
            let range = t * step..(t * step + step).min(len);
            // SAFETY: the blocks are inside the output and disjoint; the caller vouches for the
            // rest.
            unsafe {
                if p.m >= p.n {
                    serial(p.rows(range))
                } else {
                    serial(p.cols(range))
                }
            }
        });
    }

    std::thread_local! {
        /// Packed A and B blocks, kept between calls (taken out while in use, so a nested call
        /// only allocates its own).
        static PACKED: Cell<(Vec<u32>, Vec<u32>)> = const { Cell::new((Vec::new(), Vec::new())) };
    }

    /// Runs `p` on this thread.
    ///
    /// # Safety
    /// As [`matmul`].
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn serial(p: Product) {
        let [mc_max, kc_max, nc_max] = [
            block_size(p.m, MC, MR),
            block_size(p.k, KC, 2),
            block_size(p.n, NC, NR),
        ];
        let (mut a_buf, mut b_buf) = PACKED.take();
        let a_pack = aligned(&mut a_buf, mc_max * kc_max / 2);
        let b_pack = aligned(&mut b_buf, nc_max * kc_max / 2);
        for jc in (0..p.n).step_by(nc_max) {
            let nc = nc_max.min(p.n - jc);
            // k = 0 still runs one (empty) depth block, which writes `scale · 0` or keeps dst.
            for pc in (0..p.k.max(1)).step_by(kc_max) {
                let kc = kc_max.min(p.k - pc);
                // SAFETY: the blocks lie inside the operands (caller) and the buffers hold a
                // full block each.
                unsafe {
                    pack_b(p.b, [pc, jc], [kc, nc], b_pack);
                    for ic in (0..p.m).step_by(mc_max) {
                        let mc = mc_max.min(p.m - ic);
                        pack_a(p.a, [ic, pc], [mc, kc], a_pack);
                        let dst = Tile {
                            dst: p.dst.add(ic * p.dst_row_stride + jc),
                            stride: p.dst_row_stride,
                            add: p.accumulate || pc > 0,
                            scale: p.scale,
                        };
                        block_product([mc, kc, nc], a_pack, b_pack, dst);
                    }
                }
            }
        }
        PACKED.set((a_buf, b_buf));
    }

    /// A pointer to `len` elements of `buf` starting on a 64-byte boundary (one cache line, so
    /// a packed B row of 16 pairs is one aligned load).
    fn aligned(buf: &mut Vec<u32>, len: usize) -> *mut u32 {
        if buf.len() < len + 16 {
            buf.resize(len + 16, 0);
        }
        let offset = buf.as_ptr().align_offset(64);
        buf[offset..].as_mut_ptr()
    }

    /// Where a tile of sums goes: `dst` (row-major with `stride`) gets `scale · sums`, added to
    /// what it holds when `add`.
    #[derive(Clone, Copy)]
    struct Tile {
        dst: *mut f32,
        stride: usize,
        add: bool,
        scale: f32,
    }

    /// Packs rows `row .. + kc` and columns `col .. + nc` of `b` as `NR`-column panels.
    ///
    /// # Safety
    /// The block must lie inside `b`; `out` must hold `nc.div_ceil(NR) · NR · kc.div_ceil(2)`
    /// pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_b(b: Mat, [row, col]: [usize; 2], [kc, nc]: [usize; 2], out: *mut u32) {
        let panel_len = NR * kc.div_ceil(2);
        if panel_len == 0 {
            return; // no depth: nothing to read (and `b` may have no rows to point into)
        }
        for (i, c) in (0..nc).step_by(NR).enumerate() {
            // SAFETY: panel i starts inside the block and fits in `out` (caller).
            unsafe {
                let src = b.ptr.add(row * b.row_stride + (col + c) * b.col_stride);
                let lines = Lines {
                    src,
                    line_stride: b.col_stride,
                    depth_stride: b.row_stride,
                };
                pack_panel::<NR>(lines, NR.min(nc - c), kc, out.add(i * panel_len));
            }
        }
    }

    /// Packs rows `row .. + mc` and columns `col .. + kc` of `a` as `MR`-row panels.
    ///
    /// # Safety
    /// The block must lie inside `a`; `out` must hold `mc.div_ceil(MR) · MR · kc.div_ceil(2)`
    /// pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_a(a: Mat, [row, col]: [usize; 2], [mc, kc]: [usize; 2], out: *mut u32) {
        let panel_len = MR * kc.div_ceil(2);
        if panel_len == 0 {
            return; // no depth: nothing to read (and `a` may have no columns to point into)
        }
        for (i, r) in (0..mc).step_by(MR).enumerate() {
            // SAFETY: panel i starts inside the block and fits in `out` (caller).
            unsafe {
                let src = a.ptr.add((row + r) * a.row_stride + col * a.col_stride);
                let lines = Lines {
                    src,
                    line_stride: a.row_stride,
                    depth_stride: a.col_stride,
                };
                pack_panel::<MR>(lines, MR.min(mc - r), kc, out.add(i * panel_len));
            }
        }
    }

    /// The lines (rows of A, columns of B) of one panel as they lie in memory: element `d` of
    /// line `l` is at `src + l · line_stride + d · depth_stride`.
    #[derive(Clone, Copy)]
    struct Lines {
        src: *const f32,
        line_stride: usize,
        depth_stride: usize,
    }

    impl Lines {
        /// Element `d` of line `l`, rounded: its bf16 bits, or 0 past the end.
        ///
        /// # Safety
        /// Element (l, d) must be readable when `l < lines` and `d < depth`.
        unsafe fn bits(self, [l, d]: [usize; 2], [lines, depth]: [usize; 2]) -> u32 {
            if l >= lines || d >= depth {
                return 0;
            }
            // SAFETY: inside the panel (caller).
            let x = unsafe { *self.src.add(l * self.line_stride + d * self.depth_stride) };
            u32::from(bf16_bits(x))
        }
    }

    /// Packs `lines` (≤ W) lines of `depth` as `[depth.div_ceil(2)][W]` pairs of bf16: the even
    /// element in the low half, the odd one (0 past the end) in the high half, lines past
    /// `lines` zero. Contiguous lines and contiguous depth each have a vector path.
    ///
    /// # Safety
    /// The panel must be readable; `out` must hold `W · depth.div_ceil(2)` pairs.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_panel<const W: usize>(src: Lines, lines: usize, depth: usize, out: *mut u32) {
        // SAFETY: forwarded to the caller.
        unsafe {
            if src.line_stride == 1 {
                pack_across_lines::<W>(src, lines, depth, out)
            } else if src.depth_stride == 1 {
                pack_along_lines::<W>(src, lines, depth, out)
            } else {
                pack_scalar::<W>(src, lines, depth, out)
            }
        }
    }

    /// [`pack_panel`] one element at a time, for strides no vector path handles.
    ///
    /// # Safety
    /// As [`pack_panel`].
    unsafe fn pack_scalar<const W: usize>(src: Lines, lines: usize, depth: usize, out: *mut u32) {
        let size = [lines, depth];
        for p in 0..depth.div_ceil(2) {
            for l in 0..W {
                // SAFETY: `bits` reads inside the panel only; (p, l) is inside `out` (caller).
                unsafe {
                    let even = src.bits([l, 2 * p], size);
                    let odd = src.bits([l, 2 * p + 1], size);
                    *out.add(p * W + l) = even | odd << 16;
                }
            }
        }
    }

    /// A lane mask for the first `n` (at most 16) of 16 lanes.
    fn lanes(n: usize) -> __mmask16 {
        ((1u32 << n.min(16)) - 1) as __mmask16
    }

    /// [`pack_panel`] for lines next to each other (B row-major, A transposed): per pair, the
    /// two depths of 16 lines are two loads, rounded together and interleaved into pairs.
    ///
    /// # Safety
    /// As [`pack_panel`], with `src.line_stride` 1.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_across_lines<const W: usize>(
        src: Lines,
        lines: usize,
        depth: usize,
        out: *mut u32,
    ) {
        // Word 2i of a pair vector is word i (even depth) of the rounded vector, word 2i + 1
        // its word 16 + i (odd depth).
        const INTERLEAVE: [u16; 32] = {
            let mut idx = [0; 32];
            let mut i = 0;
            while i < 16 {
                idx[2 * i] = i as u16;
                idx[2 * i + 1] = 16 + i as u16;
                i += 1;
            }
            idx
        };
        // SAFETY: a 64-byte read of a 64-byte array.
        let interleave = unsafe { _mm512_loadu_si512(INTERLEAVE.as_ptr().cast()) };
        let load = |d: usize, first: usize| {
            if d >= depth || first >= lines {
                return _mm512_setzero_ps();
            }
            // SAFETY: lines `first ..` up to `lines` at depth d are inside the panel (caller);
            // the mask keeps the read to them.
            unsafe {
                let at = src.src.add(d * src.depth_stride + first);
                _mm512_maskz_loadu_ps(lanes(lines - first), at)
            }
        };
        for p in 0..depth.div_ceil(2) {
            for first in (0..W).step_by(16) {
                let rounded = _mm512_cvtne2ps_pbh(load(2 * p + 1, first), load(2 * p, first));
                // SAFETY: both are 512-bit vectors.
                let rounded: __m512i = unsafe { transmute(rounded) };
                let pairs = _mm512_permutexvar_epi16(interleave, rounded);
                // SAFETY: pairs `first .. W` of pair p are inside `out` (caller).
                unsafe {
                    let at = out.add(p * W + first).cast();
                    _mm512_mask_storeu_epi32(at, lanes(W - first), pairs);
                }
            }
        }
    }

    /// [`pack_panel`] for lines each contiguous in depth (B transposed, A row-major): 32 depths
    /// of a line are two loads that round to its next 16 pairs in order, so 16 lines make a
    /// 16 x 16 block of pairs, which [`transpose`] turns into 16 rows of the panel. (64-bit
    /// gathers of the pairs of 8 lines at a time were the slower way on Zen 4.) Masked loads
    /// give zeros past the end, which also completes the last pair of an odd depth.
    ///
    /// # Safety
    /// As [`pack_panel`], with `src.depth_stride` 1.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn pack_along_lines<const W: usize>(
        src: Lines,
        lines: usize,
        depth: usize,
        out: *mut u32,
    ) {
        for d in (0..depth).step_by(32) {
            let pairs = 16.min((depth - d).div_ceil(2));
            for first in (0..W).step_by(16) {
                let mut block = [_mm512_setzero_si512(); 16];
                for (l, row) in block.iter_mut().enumerate() {
                    if first + l >= lines {
                        break;
                    }
                    let [lo, hi] = [d, d + 16].map(|from| {
                        if from >= depth {
                            return _mm512_setzero_ps();
                        }
                        // SAFETY: the masked lanes are depths `from ..` up to `depth` of line
                        // first + l, inside the panel (caller).
                        unsafe {
                            let at = src.src.add((first + l) * src.line_stride + from);
                            _mm512_maskz_loadu_ps(lanes(depth - from), at)
                        }
                    });
                    // SAFETY: both are 512-bit vectors.
                    *row = unsafe { transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo)) };
                }
                let block = transpose(block);
                for (p, row) in block.iter().enumerate().take(pairs) {
                    // SAFETY: pairs `first .. W` of pair d/2 + p are inside `out` (caller).
                    unsafe {
                        let at = out.add((d / 2 + p) * W + first).cast();
                        _mm512_mask_storeu_epi32(at, lanes(W - first), *row);
                    }
                }
            }
        }
    }

    /// The transpose of a 16 x 16 block of 32-bit elements: interleave pairs of rows, then
    /// pairs of those, within 128-bit lanes, then exchange the lanes in two steps.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    fn transpose(rows: [__m512i; 16]) -> [__m512i; 16] {
        // Row 2i and 2i + 1 interleaved: columns 4L, 4L + 1 (lo) and 4L + 2, 4L + 3 (hi) of
        // lane L.
        let mut t = [_mm512_setzero_si512(); 16];
        for i in 0..8 {
            t[2 * i] = _mm512_unpacklo_epi32(rows[2 * i], rows[2 * i + 1]);
            t[2 * i + 1] = _mm512_unpackhi_epi32(rows[2 * i], rows[2 * i + 1]);
        }
        // s[4g + c], lane L: column 4L + c of rows 4g .. 4g + 4.
        let mut s = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let [t0, t1, t2, t3] = [t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]];
            s[4 * g] = _mm512_unpacklo_epi64(t0, t2);
            s[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
            s[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
            s[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
        }
        // Column 4L + c gathers lane L of s[c], s[4 + c], s[8 + c], s[12 + c]: even lanes
        // (0x88) and odd lanes (0xDD) first, then the same again.
        let mut out = [_mm512_setzero_si512(); 16];
        for c in 0..4 {
            let x = _mm512_shuffle_i32x4::<0x88>(s[c], s[4 + c]);
            let y = _mm512_shuffle_i32x4::<0xDD>(s[c], s[4 + c]);
            let z = _mm512_shuffle_i32x4::<0x88>(s[8 + c], s[12 + c]);
            let w = _mm512_shuffle_i32x4::<0xDD>(s[8 + c], s[12 + c]);
            out[c] = _mm512_shuffle_i32x4::<0x88>(x, z);
            out[8 + c] = _mm512_shuffle_i32x4::<0xDD>(x, z);
            out[4 + c] = _mm512_shuffle_i32x4::<0x88>(y, w);
            out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(y, w);
        }
        out
    }

    /// `dst` block `[mc, nc]` from packed A `[mc, kc]` and packed B `[kc, nc]`, one tile at a
    /// time: B panels outer, so each stays in L1 while the A panels pass under it.
    ///
    /// # Safety
    /// The packed blocks must be as [`pack_a`] and [`pack_b`] wrote them, and `dst` valid for
    /// `[mc, nc]` with its stride.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn block_product(
        [mc, kc, nc]: [usize; 3],
        a_pack: *const u32,
        b_pack: *const u32,
        dst: Tile,
    ) {
        let pairs = kc.div_ceil(2);
        for (j, c) in (0..nc).step_by(NR).enumerate() {
            for (i, r) in (0..mc).step_by(MR).enumerate() {
                // SAFETY: panels i and j are inside the packed blocks; tile (r, c) is inside
                // `dst` (caller).
                unsafe {
                    let a = a_pack.add(i * MR * pairs);
                    let b = b_pack.add(j * NR * pairs);
                    let tile = Tile {
                        dst: dst.dst.add(r * dst.stride + c),
                        ..dst
                    };
                    prefetch(tile, [MR.min(mc - r), NR.min(nc - c)]);
                    let sums = microkernel(pairs, a, b);
                    store(&sums, tile, [MR.min(mc - r), NR.min(nc - c)]);
                }
            }
        }
    }

    /// The `MR x NR` sums of one A panel and one B panel: per pair, two loads of B, and for
    /// each row one broadcast of its pair and two `vdpbf16ps`.
    ///
    /// # Safety
    /// `a` must hold `pairs · MR` pairs and `b` `pairs · NR`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    unsafe fn microkernel(pairs: usize, a: *const u32, b: *const u32) -> [[__m512; 2]; MR] {
        let mut sums = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..pairs {
            // SAFETY: pair p of both panels is inside them (caller); the vectors are all
            // 512-bit.
            unsafe {
                let b0: __m512bh = transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
                let b1: __m512bh = transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
                for (r, row) in sums.iter_mut().enumerate() {
                    let a: __m512bh = transmute(_mm512_set1_epi32(*a.add(p * MR + r) as i32));
                    row[0] = _mm512_dpbf16_ps(row[0], a, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], a, b1);
                }
            }
        }
        sums
    }

    /// Starts fetching the tile's rows of `dst` into L1, so the loads and stores of [`store`]
    /// do not wait on memory after the sums: they overlap the microkernel instead.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    fn prefetch(tile: Tile, [rows, cols]: [usize; 2]) {
        for r in 0..rows {
            // A row of the tile spans at most three cache lines: those of its first, 17th and
            // last element. Prefetching never faults, and the addresses stay inside `dst`.
            for c in [0, 16.min(cols - 1), cols - 1] {
                let at = tile.dst.wrapping_add(r * tile.stride + c);
                _mm_prefetch::<_MM_HINT_T0>(at.cast());
            }
        }
    }

    /// Writes the first `rows x cols` of a tile's sums to `tile`, with masked stores for the
    /// columns, so edge tiles never touch memory past the output.
    ///
    /// # Safety
    /// `tile.dst` must be valid for `[rows, cols]` with its stride.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    unsafe fn store(sums: &[[__m512; 2]; MR], tile: Tile, [rows, cols]: [usize; 2]) {
        let scale = _mm512_set1_ps(tile.scale);
        let masks = [lanes(cols), lanes(cols.saturating_sub(16))];
        for (r, row) in sums.iter().enumerate().take(rows) {
            for (half, (&sum, &mask)) in row.iter().zip(&masks).enumerate() {
                if mask == 0 {
                    continue;
                }
                // SAFETY: the masked lanes are the tile's columns inside `dst` (caller).
                unsafe {
                    let at = tile.dst.add(r * tile.stride + 16 * half);
                    let value = if tile.add {
                        _mm512_fmadd_ps(sum, scale, _mm512_maskz_loadu_ps(mask, at))
                    } else {
                        _mm512_mul_ps(sum, scale)
                    };
                    _mm512_mask_storeu_ps(at, mask, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::routines::PARALLEL_GEMM_OPS;

    /// One implementation of [`matmul`].
    type Path = unsafe fn([usize; 3], *mut f32, usize, bool, Mat, Mat, f32, bool);

    /// Every path this CPU runs, by name. The native one is left out (with a note on stderr)
    /// only where the CPU lacks AVX-512 BF16.
    fn paths() -> Vec<(&'static str, Path)> {
        let mut paths: Vec<(&'static str, Path)> = vec![("portable", portable_matmul)];
        #[cfg(target_arch = "x86_64")]
        if native() {
            paths.push(("avx512bf16", native_matmul));
        }
        if !native() {
            eprintln!("bf16: this CPU lacks AVX-512 BF16; testing the portable path only");
        }
        paths
    }

    /// Values in [-1, 1) from a seed, most of them not exact in bf16.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn round(x: f32) -> f64 {
        f64::from(half::bf16::from_f32(x).to_f32())
    }

    /// An operand `[rows, cols]` stored row-major or transposed, its elements `spread` apart
    /// along a line (neither stride 1 when 2), inside lines `2 · pad` elements wider than it,
    /// starting `pad` elements in (a head's columns in a wider row).
    struct Operand {
        /// What `mat` points into, owned.
        _data: Vec<f32>,
        mat: Mat,
    }

    impl Operand {
        fn new([rows, cols]: [usize; 2], case: &Case, transposed: bool, seed: u64) -> Self {
            let (pad, spread) = (case.pad, case.spread);
            let (outer, inner) = if transposed {
                (cols, rows)
            } else {
                (rows, cols)
            };
            let stride = inner * spread + 2 * pad;
            let data = values(outer * stride + pad, seed);
            let ptr = data[pad..].as_ptr();
            let mat = if transposed {
                Mat {
                    ptr,
                    row_stride: spread,
                    col_stride: stride,
                }
            } else {
                Mat {
                    ptr,
                    row_stride: stride,
                    col_stride: spread,
                }
            };
            Operand { _data: data, mat }
        }

        fn get(&self, i: usize, j: usize) -> f32 {
            let at = i * self.mat.row_stride + j * self.mat.col_stride;
            // SAFETY: `mat` points into `data`, which `new` sized for every (i, j) in the shape.
            unsafe { *self.mat.ptr.add(at) }
        }
    }

    #[derive(Clone, Copy, Debug)]
    struct Case {
        shape: [usize; 3],
        a_transposed: bool,
        b_transposed: bool,
        pad: usize,
        spread: usize,
        accumulate: bool,
        scale: f32,
        parallel: bool,
    }

    impl Case {
        fn new(shape: [usize; 3]) -> Self {
            Case {
                shape,
                a_transposed: false,
                b_transposed: false,
                pad: 0,
                spread: 1,
                accumulate: false,
                scale: 1.0,
                parallel: false,
            }
        }
    }

    /// Runs `case` on `path` and compares every element with an f64 sum of the rounded
    /// products. The f32 sums may differ from it by rounding: a sum of k products carries at
    /// most about k·u relative to the sum of their magnitudes (u = 2⁻²⁴; the products
    /// themselves are exact in f32), plus one rounding for the scale and one for the add. The
    /// tolerance allows (k + 2)·2u of `|scale|·Σ|a b| + |dst|`, and 1e-6 absolute. Columns of
    /// `dst` outside the output must keep their sentinel.
    fn check(name: &str, path: Path, case: Case, seed: u64) {
        let [m, k, n] = case.shape;
        let a = Operand::new([m, k], &case, case.a_transposed, seed);
        let b = Operand::new([k, n], &case, case.b_transposed, seed + 1);
        let stride = n + 3;
        const SENTINEL: f32 = 1234.5;
        let mut dst = vec![SENTINEL; m * stride];
        let before: Vec<f32> = values(m * n, seed + 2);
        for i in 0..m {
            for j in 0..n {
                // NaN where the output must not be read.
                dst[i * stride + j] = if case.accumulate {
                    before[i * n + j]
                } else {
                    f32::NAN
                };
            }
        }
        // SAFETY: the operands hold their shapes; `dst` is [m, stride] with stride ≥ n.
        unsafe {
            path(
                case.shape,
                dst.as_mut_ptr(),
                stride,
                case.accumulate,
                a.mat,
                b.mat,
                case.scale,
                case.parallel,
            );
        }
        let scale = f64::from(case.scale);
        for i in 0..m {
            for j in 0..n {
                let (mut sum, mut magnitude) = (0.0, 0.0);
                for l in 0..k {
                    let product = round(a.get(i, l)) * round(b.get(l, j));
                    sum += product;
                    magnitude += product.abs();
                }
                let start = if case.accumulate {
                    f64::from(before[i * n + j])
                } else {
                    0.0
                };
                let expected = start + scale * sum;
                let bound = scale.abs() * magnitude + start.abs();
                let tolerance = (k + 2) as f64 * f64::from(f32::EPSILON) * bound + 1e-6;
                let got = f64::from(dst[i * stride + j]);
                assert!(
                    (got - expected).abs() <= tolerance,
                    "{name} {case:?}: ({i}, {j}) is {got}, expected {expected} ± {tolerance}"
                );
            }
            for j in n..stride {
                assert_eq!(
                    dst[i * stride + j],
                    SENTINEL,
                    "{name} {case:?}: wrote ({i}, {j})"
                );
            }
        }
    }

    #[test]
    fn odd_shapes_in_every_layout() {
        const SIZES: [usize; 6] = [1, 3, 13, 33, 70, 129];
        for (name, path) in paths() {
            let mut seed = 0;
            for m in SIZES {
                for k in SIZES {
                    for n in SIZES {
                        for layout in 0..4 {
                            seed += 1;
                            let case = Case {
                                a_transposed: layout & 1 != 0,
                                b_transposed: layout & 2 != 0,
                                accumulate: seed % 2 == 0,
                                scale: if seed % 3 == 0 { -0.37 } else { 1.0 },
                                ..Case::new([m, k, n])
                            };
                            check(name, path, case, seed);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn heads_inside_wider_rows() {
        for (name, path) in paths() {
            for (seed, shape) in [[13, 64, 33], [70, 32, 70], [33, 7, 129]]
                .into_iter()
                .enumerate()
            {
                for layout in 0..4 {
                    let case = Case {
                        a_transposed: layout & 1 != 0,
                        b_transposed: layout & 2 != 0,
                        pad: 5,
                        accumulate: layout == 3,
                        scale: 0.125,
                        ..Case::new(shape)
                    };
                    check(name, path, case, seed as u64);
                }
            }
        }
    }

    /// Elements two apart along rows and columns: no stride is 1, so no vector packing applies.
    #[test]
    fn no_unit_stride() {
        for (name, path) in paths() {
            for (seed, shape) in [[13, 33, 70], [1, 3, 129], [70, 13, 3]]
                .into_iter()
                .enumerate()
            {
                for layout in 0..4 {
                    let case = Case {
                        a_transposed: layout & 1 != 0,
                        b_transposed: layout & 2 != 0,
                        pad: 1,
                        spread: 2,
                        accumulate: layout == 1,
                        scale: -2.0,
                        ..Case::new(shape)
                    };
                    check(name, path, case, seed as u64);
                }
            }
        }
    }

    /// Shapes past the block sizes (KC, MC, NC), so blocks of depth add up, with and without an
    /// initial `dst`.
    #[test]
    fn shapes_past_one_block() {
        for (name, path) in paths() {
            for (seed, shape) in [[5, 513, 40], [520, 70, 33], [20, 9, 2100], [3, 1, 2081]]
                .into_iter()
                .enumerate()
            {
                for accumulate in [false, true] {
                    let case = Case {
                        accumulate,
                        scale: 2.5,
                        ..Case::new(shape)
                    };
                    check(name, path, case, seed as u64);
                }
            }
        }
    }

    #[test]
    fn parallel_above_the_threshold() {
        for shape in [[257, 193, 161], [97, 301, 330]] {
            assert!(shape.iter().product::<usize>() >= PARALLEL_GEMM_OPS);
        }
        for (name, path) in paths() {
            for (seed, shape) in [[257, 193, 161], [97, 301, 330]].into_iter().enumerate() {
                for layout in 0..4 {
                    let case = Case {
                        a_transposed: layout & 1 != 0,
                        b_transposed: layout & 2 != 0,
                        pad: 2,
                        accumulate: layout % 2 == 0,
                        scale: 0.5,
                        parallel: true,
                        ..Case::new(shape)
                    };
                    check(name, path, case, seed as u64);
                }
            }
        }
    }

    #[test]
    fn empty_depth_writes_zero_or_keeps_dst() {
        for (name, path) in paths() {
            for accumulate in [false, true] {
                let case = Case {
                    accumulate,
                    ..Case::new([3, 0, 17])
                };
                check(name, path, case, 0);
            }
        }
    }

    /// Rounding is to nearest, ties to even, on both operands and both halves of a pair.
    #[test]
    fn rounds_to_nearest_even() {
        let one = 1.0f32.to_bits();
        let cases = [
            (one + 0x8000, one),              // halfway above 1, 1 is even: down
            (one + 0x1_8000, one + 0x2_0000), // halfway, lower odd: up
            (one + 0x8001, one + 0x1_0000),   // just past halfway: up
            (one + 0x7FFF, one),              // just below halfway: down
            (0xBF80_8000, 0xBF80_0000),       // -(1 + 2⁻⁸): down in magnitude
            (0xBF81_8000, 0xBF82_0000),       // negative halfway, lower odd: up
            (0x4049_0FDB, 0x4049_0000),       // π
            (0x3E4C_CCCD, 0x3E4D_0000),       // 0.2
        ];
        for (name, path) in paths() {
            for (x, expected) in cases {
                let (x, expected) = (f32::from_bits(x), f32::from_bits(expected));
                // [x] times [1], [1] times [x], and x as the odd half of a pair on each side.
                let products: [([f32; 2], [f32; 2], usize); 4] = [
                    ([x, 0.0], [1.0, 0.0], 1),
                    ([1.0, 0.0], [x, 0.0], 1),
                    ([0.0, x], [0.0, 1.0], 2),
                    ([0.0, 1.0], [0.0, x], 2),
                ];
                for (a, b, k) in products {
                    let mut dst = [f32::NAN];
                    // SAFETY: a is [1, k], b [k, 1], dst [1, 1].
                    unsafe {
                        path(
                            [1, k, 1],
                            dst.as_mut_ptr(),
                            1,
                            false,
                            Mat::rows(a.as_ptr(), k),
                            Mat::rows(b.as_ptr(), 1),
                            1.0,
                            false,
                        );
                    }
                    assert_eq!(
                        dst[0].to_bits(),
                        expected.to_bits(),
                        "{name}: {x:e} from {a:?} {b:?}"
                    );
                }
            }
        }
    }
}
