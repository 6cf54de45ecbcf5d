//! What DeBERTa-v2/v3 (He et al., 2021) adds to BERT's layers: a table of relative-distance
//! embeddings shared by all layers, and attention scores with content-to-position and
//! position-to-content terms read from it. Written in burn's own operations, so it runs (and
//! trains) on every backend; the CPU kernels cover the linear layers, not this attention.

use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::Attention;
use crate::config::RelativeAttention;
use crate::kernels;
use crate::kernels::Products;

/// `encoder.rel_embeddings`, with `encoder.LayerNorm` where `norm_rel_ebd` asks for it.
#[derive(Module, Debug)]
pub struct RelativeEmbeddings<B: Backend> {
    pub table: Embedding<B>,
    pub layer_norm: Vec<LayerNorm<B>>,
    #[module(skip)]
    pub(crate) spec: RelativeAttention,
    #[module(skip)]
    pub(crate) layer_norm_eps: f64,
}

/// What every layer's attention reads for one batch: the (normalised) table and, for each query
/// and key, its row in it.
pub(crate) struct Relative<B: Backend> {
    table: Tensor<B, 2>,
    /// `[seq, seq]`: the table row of query `i` and key `j`.
    rows: Tensor<B, 2, Int>,
    spec: RelativeAttention,
}

impl<B: Backend> RelativeEmbeddings<B> {
    pub(crate) fn for_length(&self, seq: usize) -> Relative<B> {
        let spec = self.spec;
        let weight = self.table.weight.val();
        let device = weight.device();
        let mut table = weight.slice(0..2 * spec.span);
        if let Some(norm) = self.layer_norm.first() {
            table = kernels::layer_norm(norm, table, self.layer_norm_eps);
        }
        let rows = TensorData::new(table_rows(seq, &spec), [seq, seq]);
        Relative {
            table,
            rows: Tensor::from_data(rows, &device),
            spec,
        }
    }
}

/// The table row of each (query `i`, key `j`) pair, row-major: `bucket(i - j) + span`, clamped to
/// the table. One index serves both terms because buckets are odd: transformers' p2c index
/// `span - bucket(j - i)` is the same number.
pub(crate) fn table_rows(seq: usize, spec: &RelativeAttention) -> Vec<i32> {
    let span = spec.span as i64;
    let mut rows = Vec::with_capacity(seq * seq);
    for i in 0..seq as i64 {
        for j in 0..seq as i64 {
            rows.push((bucket(i - j, spec) + span).clamp(0, 2 * span - 1) as i32);
        }
    }
    rows
}

/// transformers' `make_log_bucket_position`: distances within `span / 2` stay exact, longer ones
/// share logarithmically wider buckets reaching `max_position`. Computed in f32, as there.
pub(crate) fn bucket(distance: i64, spec: &RelativeAttention) -> i64 {
    let mid = (spec.span / 2) as i64;
    if !spec.log_buckets || distance.abs() <= mid {
        return distance;
    }
    let (abs, mid_f) = (distance.abs() as f32, mid as f32);
    let reach = ((spec.max_position - 1) as f32 / mid_f).ln();
    let log_position = ((abs / mid_f).ln() / reach * (mid - 1) as f32).ceil() + mid_f;
    log_position as i64 * distance.signum()
}

impl<B: Backend> Attention<B> {
    /// Disentangled attention: `softmax((q·k + q·P_k[row] + k·P_q[row]) / √(d · terms)) v`, with
    /// `P_k`, `P_q` the position table through the key and query projections (or their own).
    pub(super) fn disentangled(
        &self,
        [q, k, v]: [Tensor<B, 3>; 3],
        padding: Option<&Tensor<B, 2, Bool>>,
        relative: &Relative<B>,
        products: Products<'_>,
    ) -> Tensor<B, 3> {
        let [batch, seq, hidden] = q.dims();
        let (heads, d) = (self.heads, hidden / self.heads);
        let split = |t| kernels::split_heads(t, heads);
        let (q, k, v) = (split(q), split(k), split(v));
        let spec = relative.spec;

        let table = kernels::dropout(&self.position_dropout, relative.table.clone());
        let rows2 = table.dims()[0];
        let table = table.unsqueeze::<3>();
        // `[batch, heads, 2 span, d]`: the table through one of the projections.
        let positions = |projection: &Linear<B>| {
            kernels::linear(projection, table.clone(), products)
                .reshape([1, rows2, heads, d])
                .swap_dims(1, 2)
                .expand([batch, heads, rows2, d])
        };
        let rows =
            |t: Tensor<B, 2, Int>| t.reshape([1, 1, seq, seq]).expand([batch, heads, seq, seq]);

        let mut scores = products
            .precision
            .matmul(q.clone(), k.clone().swap_dims(2, 3));
        let mut terms = 1;
        if spec.content_to_position {
            let key = self.position_key.first().unwrap_or(&self.key);
            let by_distance = products.precision.matmul(q, positions(key).swap_dims(2, 3));
            scores = scores + by_distance.gather(3, rows(relative.rows.clone()));
            terms += 1;
        }
        if spec.position_to_content {
            let query = self.position_query.first().unwrap_or(&self.query);
            // Row `j` (a key) against every distance, read at (key j, query i), then turned.
            let by_distance = products
                .precision
                .matmul(k, positions(query).swap_dims(2, 3));
            let turned = rows(relative.rows.clone().swap_dims(0, 1));
            scores = scores + by_distance.gather(3, turned).swap_dims(2, 3);
            terms += 1;
        }
        let scores = scores / ((d * terms) as f64).sqrt();
        let scores = match kernels::padded_keys(padding, heads) {
            Some(mask) => scores.mask_fill(mask, f32::NEG_INFINITY),
            None => scores,
        };
        let probs = kernels::dropout(&self.attention_dropout, softmax(scores, 3));
        kernels::merge_heads(products.precision.matmul(probs, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(span: usize, max_position: usize) -> RelativeAttention {
        RelativeAttention {
            span,
            log_buckets: true,
            max_position,
            content_to_position: true,
            position_to_content: true,
            shared_projections: true,
            normalized: true,
        }
    }

    #[test]
    fn buckets_as_transformers_makes_them() {
        // transformers 5.24: make_log_bucket_position(torch.tensor(distances), 256, 512).
        let s = spec(256, 512);
        let expected = [
            (0, 0),
            (1, 1),
            (-127, -127),
            (128, 128),
            (129, 129),
            (130, 130),
            (200, 169),
            (-200, -169),
            (300, 207),
            (511, 255),
            (600, 270),
            (-1000, -317),
        ];
        for (distance, b) in expected {
            assert_eq!(bucket(distance, &s), b, "distance {distance}");
        }
    }

    #[test]
    fn rows_stay_inside_the_table_and_are_odd() {
        let s = spec(16, 128);
        let rows = table_rows(96, &s);
        assert!(rows.iter().all(|&r| (0..32).contains(&r)));
        for i in 0..96 {
            for j in 0..96 {
                let (a, b) = (rows[i * 96 + j] - 16, rows[j * 96 + i] - 16);
                assert_eq!(a, -b, "({i}, {j})");
            }
        }
        assert_eq!(rows[0], 16);
        assert_eq!(rows[5], 16 - 5);
    }
}
