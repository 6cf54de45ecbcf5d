//! The AVX-512 VNNI path: a register-blocked product over weights packed for it, without the
//! horizontal sums the dot-product tiles of [`super::x86`] end every output with.
//!
//! Weights are packed once into panels of [`PANEL`] output columns with the inputs in groups of
//! four (`[panel][k / 4][PANEL][4]` bytes), so one 64-byte load holds four inputs of sixteen
//! outputs: exactly what `vpdpbusd` multiplies by four activation bytes broadcast to every lane.
//! A block of [`MR`] activation rows x one panel keeps `2·MR` sums in registers for the whole of
//! `k`.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Int8Matrix, QuantizedRows};

/// Output columns per panel: two 512-bit registers of i32 sums.
pub(super) const PANEL: usize = 32;
/// Activation rows a block computes at once (16 of the 32 vector registers hold sums).
const MR: usize = 8;

/// `[outputs][stride]` codes as VNNI panels; columns past `outputs` are zero.
pub(super) fn pack(codes: &[i8], stride: usize, outputs: usize) -> Vec<i8> {
    let quads = stride / 4;
    let panels = outputs.div_ceil(PANEL);
    let mut packed = vec![0i8; panels * quads * PANEL * 4];
    for c in 0..outputs {
        let (panel, lane) = (c / PANEL, c % PANEL);
        let row = &codes[c * stride..(c + 1) * stride];
        for (q, four) in row.chunks_exact(4).enumerate() {
            let at = ((panel * quads + q) * PANEL + lane) * 4;
            packed[at..at + 4].copy_from_slice(four);
        }
    }
    packed
}

/// The sums of activation `rows` (bytes shifted by 128) with `w` into `out`,
/// `[rows.len(), w.outputs]`.
///
/// # Safety
/// The CPU must have AVX-512F, AVX-512BW and AVX-512 VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn sums(a: &QuantizedRows, w: &Int8Matrix, rows: Range<usize>, out: &mut [i32]) {
    assert_eq!(a.stride % 4, 0, "rows are padded to whole groups of four");
    assert!(a.shifted.len() >= rows.end * a.stride && out.len() >= rows.len() * w.outputs);
    let quads = a.stride / 4;
    let packed = w.panels();
    for panel in 0..w.outputs.div_ceil(PANEL) {
        let weights = packed[panel * quads * PANEL * 4..].as_ptr();
        let cols = PANEL.min(w.outputs - panel * PANEL);
        let mut r = rows.start;
        while r < rows.end {
            let block = MR.min(rows.end - r);
            let x = a.shifted[r * a.stride..].as_ptr();
            let dst = out[(r - rows.start) * w.outputs + panel * PANEL..].as_mut_ptr();
            let tile = Tile {
                x,
                stride: a.stride,
                weights,
                quads,
                dst,
                n: w.outputs,
                cols,
            };
            // SAFETY: `x` has `block` rows of `stride` bytes, the panel `quads` groups, `dst`
            // `block` rows of `n` with `cols` left in this panel (asserted above).
            unsafe { tile.run(block) };
            r += block;
        }
    }
}

/// One block of activation rows against one panel.
struct Tile {
    x: *const u8,
    stride: usize,
    weights: *const i8,
    quads: usize,
    dst: *mut i32,
    n: usize,
    cols: usize,
}

impl Tile {
    /// The block at its row count, each a separate instantiation so the sums stay in registers.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn run(&self, rows: usize) {
        unsafe {
            match rows {
                8 => self.rows::<8>(),
                7 => self.rows::<7>(),
                6 => self.rows::<6>(),
                5 => self.rows::<5>(),
                4 => self.rows::<4>(),
                3 => self.rows::<3>(),
                2 => self.rows::<2>(),
                1 => self.rows::<1>(),
                _ => unreachable!("a block has 1..={MR} rows"),
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn rows<const R: usize>(&self) {
        unsafe {
            let mut acc = [[_mm512_setzero_si512(); 2]; R];
            for q in 0..self.quads {
                let w = self.weights.add(q * PANEL * 4);
                let (w0, w1) = (
                    _mm512_loadu_si512(w.cast()),
                    _mm512_loadu_si512(w.add(64).cast()),
                );
                for (i, sums) in acc.iter_mut().enumerate() {
                    let four = self
                        .x
                        .add(i * self.stride + q * 4)
                        .cast::<i32>()
                        .read_unaligned();
                    let a = _mm512_set1_epi32(four);
                    sums[0] = _mm512_dpbusd_epi32(sums[0], a, w0);
                    sums[1] = _mm512_dpbusd_epi32(sums[1], a, w1);
                }
            }
            self.store(&acc);
        }
    }

    /// Writes the block's sums; a last, narrower panel only its `cols` columns.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn store<const R: usize>(&self, acc: &[[__m512i; 2]; R]) {
        let low = (1u32 << self.cols.min(16)) - 1;
        let high = (1u32 << (self.cols.max(16) - 16)) - 1;
        for (i, sums) in acc.iter().enumerate() {
            unsafe {
                let row = self.dst.add(i * self.n);
                _mm512_mask_storeu_epi32(row, low as u16, sums[0]);
                _mm512_mask_storeu_epi32(row.add(16), high as u16, sums[1]);
            }
        }
    }
}
