//! int8 linear layers for CPU inference: weights quantized symmetrically per output channel
//! once, activations per row at run time (dynamic), products accumulated exactly in `i32`.
//!
//! `y[r][c] = Σ_k qx[r][k]·qw[c][k] · sx[r]·sw[c] + b[c]`. The sum runs on what the CPU has,
//! chosen at run time ([`Isa`]): AVX-512 VNNI (`vpdpbusd`, 64 products per instruction),
//! AVX-512BW and AVX2 (`vpmaddwd` on operands widened to i16: exact, where `vpmaddubsw` would
//! saturate), or plain Rust. Every path computes the same integers; tests check each one the
//! machine has against a naive reference.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;

use burn::module::ParamId;
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
mod vnni;
#[cfg(target_arch = "x86_64")]
mod x86;

/// The largest int8 code; -127..=127 keeps the range symmetric.
const QMAX: f32 = 127.0;

/// Weight rows and activation rows are zero-padded to a multiple of this many values: the
/// widest step of any kernel (VNNI reads 64 bytes at a time).
const ROW_PAD: usize = 64;

/// Output rows and columns a kernel computes together (a tile of `ROWS` x `COLS` sums).
const ROWS: usize = 1;
const COLS: usize = 8;

/// The instruction set a product runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// `vpdpbusd`: unsigned activations (shifted by 128) times signed weights, 4 per lane.
    Avx512Vnni,
    /// `vpmaddwd` on 512-bit registers.
    Avx512Bw,
    /// `vpmaddwd` on 256-bit registers.
    Avx2,
    /// Plain Rust, for any CPU.
    Scalar,
}

impl Isa {
    /// The fastest path this CPU runs.
    pub fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| Isa::available()[0])
    }

    /// Every path this CPU runs, fastest first; [`Isa::Scalar`] always.
    pub fn available() -> Vec<Isa> {
        let mut paths = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            let bw = is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw");
            if bw && is_x86_feature_detected!("avx512vnni") {
                paths.push(Isa::Avx512Vnni);
            }
            if bw {
                paths.push(Isa::Avx512Bw);
            }
            if is_x86_feature_detected!("avx2") {
                paths.push(Isa::Avx2);
            }
        }
        paths.push(Isa::Scalar);
        paths
    }

    /// What an activation code is stored as: VNNI multiplies unsigned bytes, so its codes are
    /// shifted by 128 (and the weights' column sums take the shift back out).
    fn unsigned_activations(self) -> bool {
        self == Isa::Avx512Vnni
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isa::Avx512Vnni => "AVX-512 VNNI",
            Isa::Avx512Bw => "AVX-512BW",
            Isa::Avx2 => "AVX2",
            Isa::Scalar => "scalar",
        })
    }
}

/// A `[k, n]` weight (burn's `Linear` layout) as int8 codes, one scale per output column.
#[derive(Clone)]
pub struct Int8Matrix {
    /// Inputs (`k`) and outputs (`n`).
    pub inputs: usize,
    pub outputs: usize,
    /// `[outputs][stride]`: one row per output channel, zero-padded past `inputs`.
    codes: Vec<i8>,
    /// The codes as i16, made on first use by a `vpmaddwd` path.
    wide: std::sync::OnceLock<Vec<i16>>,
    /// The codes in the VNNI path's panels, made on its first use.
    panels: std::sync::OnceLock<Vec<i8>>,
    stride: usize,
    /// `w ≈ code · scale`, per output channel.
    scales: Vec<f32>,
    /// Σ_k code, per output channel: what VNNI's shifted activations add to each sum.
    sums: Vec<i32>,
}

impl PartialEq for Int8Matrix {
    fn eq(&self, other: &Self) -> bool {
        (self.inputs, self.outputs, &self.codes, &self.scales)
            == (other.inputs, other.outputs, &other.codes, &other.scales)
    }
}

impl fmt::Debug for Int8Matrix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Int8Matrix[{}, {}]", self.inputs, self.outputs)
    }
}

impl Int8Matrix {
    /// Quantizes a row-major `[inputs, outputs]` f32 weight, each output column on its own
    /// scale `max |w| / 127`.
    pub fn quantize(weight: &[f32], inputs: usize, outputs: usize) -> Self {
        assert_eq!(
            weight.len(),
            inputs * outputs,
            "weight is [inputs, outputs]"
        );
        // Output channels as rows, each on its own scale: a table's quantization.
        let channels: Vec<f32> = (0..outputs)
            .flat_map(|c| (0..inputs).map(move |k| weight[k * outputs + c]))
            .collect();
        let (rows, scales) = quantize_table(&channels, inputs);
        Self::from_rows(&rows, scales, inputs, outputs)
    }

    /// From `[outputs][inputs]` codes and their scales (a saved model's layout).
    pub fn from_rows(rows: &[i8], scales: Vec<f32>, inputs: usize, outputs: usize) -> Self {
        assert_eq!(rows.len(), inputs * outputs, "codes are [outputs, inputs]");
        assert_eq!(scales.len(), outputs, "one scale per output");
        let stride = inputs.div_ceil(ROW_PAD).max(1) * ROW_PAD;
        let mut codes = vec![0i8; outputs * stride];
        for (dst, src) in codes.chunks_mut(stride).zip(rows.chunks(inputs.max(1))) {
            dst[..inputs].copy_from_slice(src);
        }
        let sums = codes
            .chunks(stride)
            .map(|row| row.iter().map(|&c| c as i32).sum())
            .collect();
        Int8Matrix {
            inputs,
            outputs,
            codes,
            wide: Default::default(),
            panels: Default::default(),
            stride,
            scales,
            sums,
        }
    }

    /// `[outputs][inputs]` codes, as saved.
    pub fn rows(&self) -> Vec<i8> {
        self.codes
            .chunks(self.stride)
            .flat_map(|row| row[..self.inputs].iter().copied())
            .collect()
    }

    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The weight these codes stand for, `[inputs, outputs]` row-major: what a backend without
    /// int8 products multiplies by, so every backend runs the same model.
    pub fn dequantized(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.inputs * self.outputs];
        for (c, row) in self.codes.chunks(self.stride).enumerate() {
            for (k, &code) in row[..self.inputs].iter().enumerate() {
                out[k * self.outputs + c] = code as f32 * self.scales[c];
            }
        }
        out
    }

    /// The codes widened to i16, as the `vpmaddwd` paths read them.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn wide(&self) -> &[i16] {
        self.wide
            .get_or_init(|| self.codes.iter().map(|&c| c as i16).collect())
    }

    /// The codes packed for the VNNI path.
    #[cfg(target_arch = "x86_64")]
    fn panels(&self) -> &[i8] {
        self.panels
            .get_or_init(|| vnni::pack(&self.codes, self.stride, self.outputs))
    }

    fn row(&self, c: usize) -> &[i8] {
        &self.codes[c * self.stride..(c + 1) * self.stride]
    }
}

/// Codes of one activation row into `dst` (each code, a whole number in -127..=127 held in an
/// f32, stored by `code`); returns the row's scale.
#[inline]
fn quantize_row<T>(row: &[f32], dst: &mut [T], code: impl Fn(f32) -> T) -> f32 {
    let amax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        dst.iter_mut().for_each(|d| *d = code(0.0));
        return 0.0;
    }
    let inv = QMAX / amax;
    for (d, &v) in dst.iter_mut().zip(row) {
        *d = code(round_small(v * inv));
    }
    amax / QMAX
}

/// Round to nearest (ties to even) for |x| < 2^22, in two additions that vectorise on any x86
/// (`f32::round` is a library call without SSE4.1).
#[inline(always)]
fn round_small(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 · 2^23
    (x + SHIFTER) - SHIFTER
}

fn quantize_value(x: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        return 0;
    }
    (x / scale).round().clamp(-QMAX, QMAX) as i8
}

/// Activation rows as int8 codes with one scale each, in the layout `isa` reads: i16 for the
/// `vpmaddwd` paths and plain Rust, bytes shifted by 128 for VNNI.
pub struct QuantizedRows {
    rows: usize,
    stride: usize,
    wide: Vec<i16>,
    shifted: Vec<u8>,
    scales: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `[rows, inputs]` f32 values, each row on its own scale `max |x| / 127`.
    pub fn quantize(x: &[f32], rows: usize, inputs: usize, isa: Isa) -> Self {
        assert_eq!(x.len(), rows * inputs, "activations are [rows, inputs]");
        let stride = inputs.div_ceil(ROW_PAD).max(1) * ROW_PAD;
        let inputs = inputs.max(1);
        let mut scales = vec![0.0f32; rows];
        let (mut wide, mut shifted) = (Vec::new(), Vec::new());
        if isa.unsigned_activations() {
            // Padding codes are 0, i.e. 128 shifted; the padded weights are 0 anyway.
            shifted = vec![128u8; rows * stride];
            shifted
                .par_chunks_mut(stride)
                .zip(x.par_chunks(inputs))
                .zip(scales.par_iter_mut())
                .for_each(|((dst, row), scale)| {
                    *scale = quantize_row(row, &mut dst[..row.len()], |q| (q + 128.0) as u8)
                });
        } else {
            wide = vec![0i16; rows * stride];
            wide.par_chunks_mut(stride)
                .zip(x.par_chunks(inputs))
                .zip(scales.par_iter_mut())
                .for_each(|((dst, row), scale)| {
                    *scale = quantize_row(row, &mut dst[..row.len()], |q| q as i16)
                });
        }
        QuantizedRows {
            rows,
            stride,
            wide,
            shifted,
            scales,
        }
    }

    /// The code at row `r`, input `k`, unshifted.
    pub fn code(&self, r: usize, k: usize) -> i32 {
        match self.wide.is_empty() {
            false => self.wide[r * self.stride + k] as i32,
            true => self.shifted[r * self.stride + k] as i32 - 128,
        }
    }
}

/// `x W + b` with int8 products on `isa`: `x` is `[rows, w.inputs]`, the result
/// `[rows, w.outputs]`. Each task sums a block of rows, then scales its block.
pub fn linear(x: &[f32], rows: usize, w: &Int8Matrix, bias: Option<&[f32]>, isa: Isa) -> Vec<f32> {
    let a = QuantizedRows::quantize(x, rows, w.inputs, isa);
    let offset = if isa.unsigned_activations() { 128 } else { 0 };
    let n = w.outputs.max(1);
    let block = rows_per_task(rows);
    let mut out = vec![0.0f32; rows * w.outputs];
    out.par_chunks_mut(block * n)
        .enumerate()
        .for_each(|(t, out)| {
            let first = t * block;
            let rows = first..first + out.len() / n;
            let mut sums = vec![0i32; out.len()];
            block_sums(&a, w, isa, rows.clone(), &mut sums);
            for ((out, sums), r) in out.chunks_mut(n).zip(sums.chunks(n)).zip(rows) {
                scale_row(out, sums, a.scales[r], w, offset, bias);
            }
        });
    out
}

/// One output row from its sums: `(sum − offset·Σw) · sx · sw + b`.
fn scale_row(
    out: &mut [f32],
    sums: &[i32],
    sx: f32,
    w: &Int8Matrix,
    offset: i32,
    bias: Option<&[f32]>,
) {
    for (((o, &sum), &w_sum), &sw) in out.iter_mut().zip(sums).zip(&w.sums).zip(&w.scales) {
        *o = (sum - offset * w_sum) as f32 * (sx * sw);
    }
    if let Some(bias) = bias {
        out.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
    }
}

/// The raw i32 sums `Σ_k a[r][k]·w[c][k]` (`[rows, outputs]`; VNNI's still include the shift).
pub fn sums(a: &QuantizedRows, w: &Int8Matrix, isa: Isa) -> Vec<i32> {
    let n = w.outputs.max(1);
    let block = rows_per_task(a.rows);
    let mut out = vec![0i32; a.rows * w.outputs];
    out.par_chunks_mut(block * n)
        .enumerate()
        .for_each(|(t, out)| {
            let first = t * block;
            block_sums(a, w, isa, first..first + out.len() / n, out)
        });
    out
}

/// The sums of `rows` into `out` (`[rows.len(), w.outputs]`) on `isa`.
fn block_sums(a: &QuantizedRows, w: &Int8Matrix, isa: Isa, rows: Range<usize>, out: &mut [i32]) {
    assert_eq!(a.stride, w.stride, "activations and weights padded alike");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni | Isa::Avx512Bw | Isa::Avx2 => x86::sums(isa, a, w, rows, out),
        _ => scalar_sums(a, w, rows, out),
    }
}

/// Enough tasks for every core to get several, in whole tiles, at most 48 rows (whose
/// activations stay in cache while the weight streams past).
fn rows_per_task(rows: usize) -> usize {
    let tasks = rayon::current_num_threads() * 4;
    rows.div_ceil(tasks).div_ceil(ROWS).clamp(1, 48 / ROWS) * ROWS
}

/// The plain-Rust path: the same sums, one at a time.
fn scalar_sums(a: &QuantizedRows, w: &Int8Matrix, rows: Range<usize>, out: &mut [i32]) {
    let n = w.outputs;
    for (i, r) in rows.enumerate() {
        let x = &a.wide[r * a.stride..(r + 1) * a.stride];
        for c in 0..n {
            out[i * n + c] = x
                .iter()
                .zip(w.row(c))
                .map(|(&x, &w)| x as i32 * w as i32)
                .sum();
        }
    }
}

/// A `[rows, width]` table (embeddings) as int8 codes with one scale per row: how a quantized
/// model stores its tables, which it computes with in f32.
pub fn quantize_table(values: &[f32], width: usize) -> (Vec<i8>, Vec<f32>) {
    let width = width.max(1);
    let scales: Vec<f32> = values
        .chunks(width)
        .map(|row| row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / QMAX)
        .collect();
    let codes = values
        .chunks(width)
        .zip(&scales)
        .flat_map(|(row, &scale)| row.iter().map(move |&v| quantize_value(v, scale)))
        .collect();
    (codes, scales)
}

/// The values a [`quantize_table`] result stands for.
pub fn dequantize_table(codes: &[i8], scales: &[f32], width: usize) -> Vec<f32> {
    codes
        .chunks(width.max(1))
        .zip(scales)
        .flat_map(|(row, &scale)| row.iter().map(move |&c| c as f32 * scale))
        .collect()
}

/// A quantized model's int8 parts: the linear layers' matrices by their weight's parameter id,
/// and the tables saved as int8 (see [`quantize_table`]).
#[derive(Default)]
pub struct Int8Weights {
    matrices: HashMap<ParamId, Int8Matrix>,
    tables: HashSet<ParamId>,
}

impl fmt::Debug for Int8Weights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Int8Weights({} matrices, {} tables)",
            self.matrices.len(),
            self.tables.len()
        )
    }
}

impl Int8Weights {
    pub fn insert(&mut self, weight: ParamId, matrix: Int8Matrix) {
        self.matrices.insert(weight, matrix);
    }

    pub fn get(&self, weight: ParamId) -> Option<&Int8Matrix> {
        self.matrices.get(&weight)
    }

    /// Marks a table whose values are those of its int8 codes, to be saved as int8.
    pub fn insert_table(&mut self, table: ParamId) {
        self.tables.insert(table);
    }

    pub fn stores_table(&self, table: ParamId) -> bool {
        self.tables.contains(&table)
    }

    pub fn len(&self) -> usize {
        self.matrices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.matrices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1) with a few large ones, as activations have.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((s >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0;
                if i % 97 == 0 { v * 8.0 } else { v }
            })
            .collect()
    }

    /// Σ_k code(x)·code(w) in i64, from the codes alone: no padding, tiles or shifts.
    fn reference(a: &QuantizedRows, w: &Int8Matrix) -> Vec<i64> {
        let rows = w.rows();
        let mut out = Vec::new();
        for r in 0..a.rows {
            for c in 0..w.outputs {
                let sum: i64 = (0..w.inputs)
                    .map(|k| a.code(r, k) as i64 * rows[c * w.inputs + k] as i64)
                    .sum();
                out.push(sum);
            }
        }
        out
    }

    #[test]
    fn every_path_this_cpu_has_matches_the_reference() {
        // Odd shapes: rows and columns that do not fill a tile, inputs that do not fill a step.
        for (rows, inputs, outputs) in [
            (1, 1, 1),
            (5, 37, 7),
            (13, 130, 9),
            (19, 200, 70),
            (64, 384, 33),
        ] {
            let w = Int8Matrix::quantize(&values(inputs * outputs, 1), inputs, outputs);
            let x = values(rows * inputs, 2);
            for isa in Isa::available() {
                let a = QuantizedRows::quantize(&x, rows, inputs, isa);
                let sums = sums(&a, &w, isa);
                let shift = if isa.unsigned_activations() { 128 } else { 0 };
                let got: Vec<i64> = sums
                    .iter()
                    .enumerate()
                    .map(|(i, &s)| s as i64 - shift * w.sums[i % outputs] as i64)
                    .collect();
                assert_eq!(got, reference(&a, &w), "{isa} at {rows}x{inputs}x{outputs}");
            }
        }
    }

    #[test]
    fn extreme_codes_do_not_saturate() {
        // Every product at ±127·±127: where a saturating 16-bit pair sum would clip.
        let (rows, inputs, outputs) = (4, 256, 8);
        let w = Int8Matrix::quantize(&vec![-1.0; inputs * outputs], inputs, outputs);
        let x: Vec<f32> = (0..rows * inputs)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        for isa in Isa::available() {
            let y = linear(&x, rows, &w, None, isa);
            assert!(y.iter().all(|&v| v.abs() < 1e-3), "{isa}: {:?}", &y[..4]);
            let y = linear(&vec![-1.0; rows * inputs], rows, &w, None, isa);
            assert!(
                y.iter().all(|&v| (v - 256.0).abs() < 1e-2),
                "{isa}: {:?}",
                &y[..4]
            );
        }
    }

    #[test]
    fn int8_linear_is_close_to_f32() {
        let (rows, inputs, outputs) = (6, 384, 40);
        let weight = values(inputs * outputs, 3);
        let bias = values(outputs, 4);
        let x = values(rows * inputs, 5);
        let w = Int8Matrix::quantize(&weight, inputs, outputs);
        let exact: Vec<f32> = (0..rows * outputs)
            .map(|i| {
                let (r, c) = (i / outputs, i % outputs);
                bias[c]
                    + (0..inputs)
                        .map(|k| x[r * inputs + k] * weight[k * outputs + c])
                        .sum::<f32>()
            })
            .collect();
        let range = exact.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for isa in Isa::available() {
            let y = linear(&x, rows, &w, Some(&bias), isa);
            let worst = y
                .iter()
                .zip(&exact)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            // Two 8-bit roundings per product: about 1% of the output's range.
            assert!(worst < 0.02 * range, "{isa}: off by {worst} of {range}");
        }
    }

    #[test]
    fn tables_are_quantized_per_row_and_come_back() {
        let width = 9;
        let values = values(5 * width, 7);
        let (codes, scales) = quantize_table(&values, width);
        assert_eq!((codes.len(), scales.len()), (values.len(), 5));
        let back = dequantize_table(&codes, &scales, width);
        for (row, (v, b)) in values.chunks(width).zip(back.chunks(width)).enumerate() {
            let worst = v
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst <= scales[row] / 2.0 + 1e-7, "row {row}: {worst}");
        }
        assert_eq!(quantize_table(&back, width).0, codes, "idempotent");
    }

    #[test]
    fn saved_codes_give_back_the_same_matrix() {
        let (inputs, outputs) = (70, 5);
        let w = Int8Matrix::quantize(&values(inputs * outputs, 6), inputs, outputs);
        let again = Int8Matrix::from_rows(&w.rows(), w.scales().to_vec(), inputs, outputs);
        assert_eq!(again, w);
        // Quantizing the dequantized weight gives the same codes (a saved model reloads exactly).
        let requantized = Int8Matrix::quantize(&w.dequantized(), inputs, outputs);
        assert_eq!(requantized.rows(), w.rows());
    }
}
