//! BERT (Devlin et al., 2019) with a span head, written against burn's `Backend` so the same code
//! runs on the CPU and on CUDA, with or without autodiff.
//!
//! Field names follow the Hugging Face checkpoint layout (`embeddings.word_embeddings`,
//! `encoder.layer.N.attention.self.query`, ...) so [`crate::hf`] maps tensors one to one.
//! DeBERTa's relative attention, the one family whose layers differ, is in [`deberta`].

pub mod deberta;

use std::sync::Arc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig,
    Linear, LinearConfig,
};
use burn::tensor::activation::{gelu_approximate, relu};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::config::{Activation, BertConfig, RelativeAttention};
use crate::int8::{self, Int8Matrix, Int8Weights};
use crate::kernels::{self, Products};
use crate::precision::Precision;
use deberta::{Relative, RelativeEmbeddings};

/// One batch of model inputs, padded to a common length.
#[derive(Debug, Clone)]
pub struct BertInput<B: Backend> {
    /// `[batch, seq]` word-piece ids.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]` 0 for `[CLS] question [SEP]`, 1 for the context part.
    pub token_type_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]` true at padding positions; `None` when nothing is padded, which spares the
    /// attention its mask.
    pub padding_mask: Option<Tensor<B, 2, Bool>>,
}

impl<B: Backend> BertInput<B> {
    /// Builds a batch from host rows of equal length `shape[1]`.
    pub fn from_host(
        input_ids: Vec<i32>,
        token_type_ids: Vec<i32>,
        padding: Vec<bool>,
        shape: [usize; 2],
        device: &B::Device,
    ) -> Self {
        let padded = padding.iter().any(|&p| p);
        BertInput {
            input_ids: Tensor::from_data(TensorData::new(input_ids, shape), device),
            token_type_ids: Tensor::from_data(TensorData::new(token_type_ids, shape), device),
            padding_mask: padded
                .then(|| Tensor::from_data(TensorData::new(padding, shape), device)),
        }
    }
}

/// Start and end logits, `[batch, seq]` each; padding positions hold [`MASKED_LOGIT`].
#[derive(Debug, Clone)]
pub struct SpanLogits<B: Backend> {
    pub start: Tensor<B, 2>,
    pub end: Tensor<B, 2>,
}

/// What padding positions get as span logits, so they never win and add nothing to a softmax.
pub const MASKED_LOGIT: f32 = -1.0e4;

/// Word, position and token-type embeddings, summed and normalised (and projected to the
/// layers' width where the family has narrower embeddings).
#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    /// Absolute positions (at most one table): DeBERTa-v3 has none.
    pub position_embeddings: Vec<Embedding<B>>,
    /// Empty where the family has no token types (DistilBERT); a table with one row where every
    /// token has type 0 (RoBERTa, XLM-R). Optional parts are `Vec`s of at most one: burn 0.21's
    /// `Option::load_record` counts parameters, which draws every lazily initialised one, so a
    /// load would consume random numbers (tests/random_draws.rs).
    pub token_type_embeddings: Vec<Embedding<B>>,
    pub layer_norm: LayerNorm<B>,
    /// ELECTRA's `embeddings_project` or DeBERTa's `embed_proj` (at most one), when the
    /// embeddings are narrower than the layers.
    pub projection: Vec<Linear<B>>,
    dropout: Dropout,
    #[module(skip)]
    layer_norm_eps: f64,
    /// DeBERTa's order: project, normalise, zero the padding; otherwise normalise, project.
    #[module(skip)]
    projects_before_norm: bool,
    /// The position id of the first token (RoBERTa counts from `padding_idx + 1`).
    #[module(skip)]
    position_offset: usize,
}

impl<B: Backend> Embeddings<B> {
    fn forward(&self, input: &BertInput<B>, products: Products<'_>) -> Tensor<B, 3> {
        let input_ids = input.input_ids.clone();
        let token_type_ids = input.token_type_ids.clone();
        if self.projects_before_norm {
            return self.forward_projecting_first(
                input_ids,
                token_type_ids,
                input.padding_mask.as_ref(),
                products,
            );
        }
        let [_, seq] = input_ids.dims();
        let mut positions = self
            .positions(seq)
            .expect("BERT-style embeddings have positions");
        let mut x = self.word_embeddings.forward(input_ids);
        match self.token_type_embeddings.first() {
            Some(types) if types.weight.dims()[0] == 1 => {
                let [_, _, width] = positions.dims();
                let row = types.weight.val().unsqueeze::<3>();
                positions = positions + row.expand([1, seq, width]);
            }
            Some(types) => x = x + types.forward(token_type_ids),
            None => {}
        }
        let x = kernels::add_layer_norm(&self.layer_norm, x, positions, self.layer_norm_eps);
        let x = kernels::dropout(&self.dropout, x);
        match self.projection.first() {
            Some(projection) => kernels::linear(projection, x, products),
            None => x,
        }
    }

    /// `[1, seq, width]`: the same positions for every sequence of the batch.
    fn positions(&self, seq: usize) -> Option<Tensor<B, 3>> {
        let table = self.position_embeddings.first()?;
        let start = self.position_offset;
        Some(
            table
                .weight
                .val()
                .slice(start..start + seq)
                .unsqueeze::<3>(),
        )
    }

    /// DeBERTa's embeddings: the sum projected, normalised, zero at padding positions.
    fn forward_projecting_first(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
        padding: Option<&Tensor<B, 2, Bool>>,
        products: Products<'_>,
    ) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let mut x = self.word_embeddings.forward(input_ids);
        if let Some(positions) = self.positions(seq) {
            x = x + positions;
        }
        if let Some(types) = self.token_type_embeddings.first() {
            x = x + types.forward(token_type_ids);
        }
        if let Some(projection) = self.projection.first() {
            x = kernels::linear(projection, x, products);
        }
        let x = kernels::layer_norm(&self.layer_norm, x, self.layer_norm_eps);
        let width = x.dims()[2];
        let x = match padding {
            Some(p) => x.mask_fill(
                p.clone()
                    .reshape([batch, seq, 1])
                    .expand([batch, seq, width]),
                0.0,
            ),
            None => x,
        };
        kernels::dropout(&self.dropout, x)
    }
}

/// Multi-head self-attention with its output projection and the residual LayerNorm (post-norm).
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    /// DeBERTa without `share_att_key`: the relative positions' own key projection (at most one).
    pub position_key: Vec<Linear<B>>,
    /// ... and their own query projection.
    pub position_query: Vec<Linear<B>>,
    pub output: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    attention_dropout: Dropout,
    /// DeBERTa's dropout on the relative position table.
    position_dropout: Dropout,
    dropout: Dropout,
    heads: usize,
    #[module(skip)]
    layer_norm_eps: f64,
}

impl<B: Backend> Attention<B> {
    fn forward(
        &self,
        x: Tensor<B, 3>,
        padding: Option<&Tensor<B, 2, Bool>>,
        relative: Option<&Relative<B>>,
        products: Products<'_>,
    ) -> Tensor<B, 3> {
        let q = kernels::linear(&self.query, x.clone(), products);
        let k = kernels::linear(&self.key, x.clone(), products);
        let v = kernels::linear(&self.value, x.clone(), products);

        let (heads, dropout) = (self.heads, &self.attention_dropout);
        let context = match relative {
            Some(relative) => self.disentangled([q, k, v], padding, relative, products),
            None => kernels::attention(q, k, v, padding, heads, dropout, products.precision),
        };
        let out = kernels::linear(&self.output, context, products);
        let out = kernels::dropout(&self.dropout, out);
        kernels::add_layer_norm(&self.layer_norm, out, x, self.layer_norm_eps)
    }
}

/// The position-wise feed-forward block with its residual LayerNorm.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub intermediate: Linear<B>,
    pub output: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    dropout: Dropout,
    #[module(skip)]
    activation: Activation,
    #[module(skip)]
    layer_norm_eps: f64,
}

impl<B: Backend> FeedForward<B> {
    fn forward(&self, x: Tensor<B, 3>, products: Products<'_>) -> Tensor<B, 3> {
        let h = kernels::linear(&self.intermediate, x.clone(), products);
        let h = match self.activation {
            Activation::Gelu => kernels::gelu(h),
            Activation::GeluApproximate => gelu_approximate(h),
            Activation::Relu => relu(h),
        };
        let out = kernels::linear(&self.output, h, products);
        let out = kernels::dropout(&self.dropout, out);
        kernels::add_layer_norm(&self.layer_norm, out, x, self.layer_norm_eps)
    }
}

#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    pub attention: Attention<B>,
    pub feed_forward: FeedForward<B>,
}

/// The encoder: embeddings and N transformer layers.
#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    pub embeddings: Embeddings<B>,
    pub layers: Vec<Layer<B>>,
    /// DeBERTa's relative position table (at most one), shared by all layers.
    pub relative: Vec<RelativeEmbeddings<B>>,
    /// What the matrix products run in; not saved with the weights.
    #[module(skip)]
    pub precision: Precision,
    /// A quantized model's int8 weights (see [`BertForQuestionAnswering::quantized`]).
    #[module(skip)]
    pub int8: Option<Arc<Int8Weights>>,
}

impl<B: Backend> BertModel<B> {
    /// The embedding tables [`BertForQuestionAnswering::quantized`] stores as int8.
    fn tables(&mut self) -> impl Iterator<Item = &mut Embedding<B>> {
        let e = &mut self.embeddings;
        std::iter::once(&mut e.word_embeddings)
            .chain(e.position_embeddings.iter_mut())
            .chain(e.token_type_embeddings.iter_mut())
            .chain(self.relative.iter_mut().map(|r| &mut r.table))
    }

    /// The linear layers [`BertForQuestionAnswering::quantized`] makes int8.
    fn quantizable(&mut self) -> impl Iterator<Item = &mut Linear<B>> {
        self.layers.iter_mut().flat_map(|layer| {
            let (a, f) = (&mut layer.attention, &mut layer.feed_forward);
            [&mut a.query, &mut a.key, &mut a.value, &mut a.output]
                .into_iter()
                .chain(a.position_key.iter_mut())
                .chain(a.position_query.iter_mut())
                .chain([&mut f.intermediate, &mut f.output])
        })
    }

    /// Last hidden states, `[batch, seq, hidden]`.
    pub fn forward(&self, input: &BertInput<B>) -> Tensor<B, 3> {
        let products = Products {
            precision: self.precision,
            int8: self.int8.as_deref(),
        };
        let mut x = self.embeddings.forward(input, products);
        let seq = x.dims()[1];
        let relative = self.relative.first().map(|r| r.for_length(seq));
        let padding = input.padding_mask.as_ref();
        for layer in &self.layers {
            x = layer
                .attention
                .forward(x, padding, relative.as_ref(), products);
            x = layer.feed_forward.forward(x, products);
        }
        x
    }
}

/// A parameter's values on the host, as f32.
fn host_values<B: Backend, const D: usize>(param: &Param<Tensor<B, D>>) -> Vec<f32> {
    param
        .val()
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("f32 values")
}

/// `param` with new values of the same shape, on the same device, under the same id.
fn replaced<B: Backend, const D: usize>(
    param: &Param<Tensor<B, D>>,
    values: Vec<f32>,
) -> Param<Tensor<B, D>> {
    let data = TensorData::new(values, param.dims());
    Param::initialized(param.id, Tensor::from_data(data, &param.device()))
}

/// The encoder with a `Linear(hidden, 2)` span head, as transformers' `XForQuestionAnswering`.
#[derive(Module, Debug)]
pub struct BertForQuestionAnswering<B: Backend> {
    pub bert: BertModel<B>,
    /// DistilBERT's `qa_dropout` on the last hidden states; other families have none.
    head_dropout: Dropout,
    pub qa_outputs: Linear<B>,
}

impl<B: Backend> BertForQuestionAnswering<B> {
    /// A randomly initialised model (N(0, initializer_range) weights as BERT's initialiser, zero
    /// biases, unit LayerNorms).
    pub fn init(config: &BertConfig, device: &B::Device) -> Self {
        let model = Self::init_lazy(config, device);
        materialize(&model);
        model
    }

    /// Like [`Self::init`], but parameters are drawn only when first used, so loading a
    /// checkpoint over them costs nothing. Clones of an undrawn parameter draw independently:
    /// call [`materialize`] before cloning.
    pub(crate) fn init_lazy(config: &BertConfig, device: &B::Device) -> Self {
        let normal = Initializer::Normal {
            mean: 0.0,
            std: config.initializer_range,
        };
        let h = config.hidden_size;
        let width = config.embedding_width();
        let linear = |d_in: usize, d_out: usize| {
            // A zero bias built lazily: drawing burn's default bias and zeroing it would use up
            // random numbers, so loading a checkpoint would shift every later draw.
            let mut l = LinearConfig::new(d_in, d_out)
                .with_initializer(normal.clone())
                .with_bias(false)
                .init(device);
            l.bias = Some(Initializer::Zeros.init([d_out], device));
            l
        };
        let unbiased = |d_in: usize, d_out: usize| {
            LinearConfig::new(d_in, d_out)
                .with_initializer(normal.clone())
                .with_bias(false)
                .init(device)
        };
        let projects_first = config.projects_before_norm();
        let layer_norm = |width: usize| {
            LayerNormConfig::new(width)
                .with_epsilon(config.layer_norm_eps)
                .init(device)
        };
        let embedding = |n: usize| {
            EmbeddingConfig::new(n, width)
                .with_initializer(normal.clone())
                .init(device)
        };
        let hidden_dropout = DropoutConfig::new(config.hidden_dropout_prob).init();
        let relative = config.relative_attention();
        // DeBERTa's own position projections, where they are not the query's and key's.
        let own = |term: fn(&RelativeAttention) -> bool| {
            relative
                .filter(|r| term(r) && !r.shared_projections)
                .map(|_| linear(h, h))
                .into_iter()
                .collect::<Vec<_>>()
        };
        let layers = (0..config.num_hidden_layers)
            .map(|_| Layer {
                attention: Attention {
                    query: linear(h, h),
                    key: linear(h, h),
                    value: linear(h, h),
                    position_key: own(|r| r.content_to_position),
                    position_query: own(|r| r.position_to_content),
                    output: linear(h, h),
                    layer_norm: layer_norm(h),
                    attention_dropout: DropoutConfig::new(config.attention_probs_dropout_prob)
                        .init(),
                    position_dropout: hidden_dropout.clone(),
                    dropout: hidden_dropout.clone(),
                    heads: config.num_attention_heads,
                    layer_norm_eps: config.layer_norm_eps,
                },
                feed_forward: FeedForward {
                    intermediate: linear(h, config.intermediate_size),
                    output: linear(config.intermediate_size, h),
                    layer_norm: layer_norm(h),
                    dropout: hidden_dropout.clone(),
                    activation: config.hidden_act,
                    layer_norm_eps: config.layer_norm_eps,
                },
            })
            .collect();
        BertForQuestionAnswering {
            bert: BertModel {
                embeddings: Embeddings {
                    word_embeddings: embedding(config.vocab_size),
                    position_embeddings: config
                        .position_biased_input()
                        .then(|| embedding(config.max_position_embeddings))
                        .into_iter()
                        .collect(),
                    token_type_embeddings: (config.type_vocab_size > 0)
                        .then(|| embedding(config.type_vocab_size))
                        .into_iter()
                        .collect(),
                    layer_norm: layer_norm(if projects_first { h } else { width }),
                    projection: (width != h)
                        .then(|| match projects_first {
                            true => unbiased(width, h),
                            false => linear(width, h),
                        })
                        .into_iter()
                        .collect(),
                    dropout: hidden_dropout.clone(),
                    layer_norm_eps: config.layer_norm_eps,
                    position_offset: config.position_offset(),
                    projects_before_norm: projects_first,
                },
                layers,
                relative: relative
                    .map(|spec| RelativeEmbeddings {
                        table: EmbeddingConfig::new(2 * spec.span, h)
                            .with_initializer(normal.clone())
                            .init(device),
                        layer_norm: spec.normalized.then(|| layer_norm(h)).into_iter().collect(),
                        spec,
                        layer_norm_eps: config.layer_norm_eps,
                    })
                    .into_iter()
                    .collect(),
                precision: Precision::F32,
                int8: None,
            },
            head_dropout: DropoutConfig::new(config.head_dropout()).init(),
            qa_outputs: linear(h, 2),
        }
    }

    /// The model with its matrix products in `precision` (see [`Precision`]).
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.bert.precision = precision;
        self
    }

    /// The model with int8 weights in its encoder's linear layers (attention and feed-forward;
    /// embeddings, layer norms and the span head stay f32): int8 products on the CPU. Each f32
    /// weight becomes the one its codes stand for, so other backends run the same model.
    pub fn quantized(mut self) -> Self {
        let mut weights = Int8Weights::default();
        for layer in self.bert.quantizable() {
            let [inputs, outputs] = layer.weight.dims();
            let matrix = Int8Matrix::quantize(&host_values(&layer.weight), inputs, outputs);
            let id = layer.weight.id;
            layer.weight = replaced(&layer.weight, matrix.dequantized());
            weights.insert(id, matrix);
        }
        // Tables stay f32 in memory but hold what their int8 codes stand for, so the model saves
        // as int8 at about a quarter of the size and loads back the same.
        for table in self.bert.tables() {
            let width = table.weight.dims()[1];
            let (codes, scales) = int8::quantize_table(&host_values(&table.weight), width);
            let id = table.weight.id;
            table.weight = replaced(
                &table.weight,
                int8::dequantize_table(&codes, &scales, width),
            );
            weights.insert_table(id);
        }
        self.bert.int8 = Some(Arc::new(weights));
        self
    }

    /// The int8 weights of a [`Self::quantized`] model.
    pub fn int8(&self) -> Option<&Int8Weights> {
        self.bert.int8.as_deref()
    }

    /// Start and end logits with padding positions masked.
    pub fn forward(&self, input: &BertInput<B>) -> SpanLogits<B> {
        let hidden = kernels::dropout(&self.head_dropout, self.bert.forward(input));
        let [batch, seq, _] = hidden.dims();
        let products = Products {
            precision: self.bert.precision,
            int8: None,
        };
        let logits = kernels::linear(&self.qa_outputs, hidden, products);
        let pick = |i: usize| {
            let l = logits
                .clone()
                .slice([0..batch, 0..seq, i..i + 1])
                .reshape([batch, seq]);
            match &input.padding_mask {
                Some(p) => l.mask_fill(p.clone(), MASKED_LOGIT),
                None => l,
            }
        };
        SpanLogits {
            start: pick(0),
            end: pick(1),
        }
    }
}

/// Draws every lazily initialised parameter of `module`, in field order, so clones share values.
pub(crate) fn materialize<B: Backend, M: Module<B>>(module: &M) {
    struct Draw;
    impl<B: Backend> ModuleVisitor<B> for Draw {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            drop(param.val());
        }
    }
    module.visit(&mut Draw);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    fn input(device: &burn::tensor::Device<CpuBackend>) -> BertInput<CpuBackend> {
        let mut pad = vec![false; 12];
        pad[11] = true;
        BertInput::from_host(
            vec![2, 5, 6, 3, 7, 3, 2, 5, 3, 8, 3, 0],
            vec![0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0],
            pad,
            [2, 6],
            device,
        )
    }

    #[test]
    fn shapes_and_padding_mask() {
        let device = Default::default();
        let model = BertForQuestionAnswering::<CpuBackend>::init(&BertConfig::tiny(16), &device);
        let out = model.forward(&input(&device));
        assert_eq!(out.start.dims(), [2, 6]);
        let start: Vec<f32> = out.start.into_data().to_vec().unwrap();
        assert_eq!(start[11], MASKED_LOGIT);
        assert!(
            start[..11]
                .iter()
                .all(|v| v.is_finite() && *v != MASKED_LOGIT)
        );
    }

    #[test]
    fn padding_does_not_change_real_positions() {
        // The second sequence padded by one more token must give the same logits.
        let device = Default::default();
        let model = BertForQuestionAnswering::<CpuBackend>::init(&BertConfig::tiny(16), &device);
        let short = BertInput::<CpuBackend>::from_host(
            vec![2, 5, 3, 8, 3],
            vec![0, 0, 0, 1, 1],
            vec![false; 5],
            [1, 5],
            &device,
        );
        assert!(short.padding_mask.is_none());
        let long = input(&device);
        let a: Vec<f32> = model.forward(&short).start.into_data().to_vec().unwrap();
        let b: Vec<f32> = model
            .forward(&long)
            .start
            .slice([1..2, 0..5])
            .into_data()
            .to_vec()
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }
}
