//! The table from each parameter of [`BertForQuestionAnswering`] to its Hugging Face tensor name,
//! in the layout of the model's [`Family`]. Loading and saving checkpoints walk it
//! ([`crate::hf`]), and training lists parameters by it (weight decay and gradient clipping need
//! names and ids).

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::bert::BertForQuestionAnswering;
use crate::config::Family;
use crate::error::ModelError;

/// Names of the span head's tensors start with this.
pub(crate) const HEAD_PREFIX: &str = "qa_outputs.";

/// Where a family keeps each part of a layer, below its prefix.
struct Layout {
    layer: &'static str,
    query: &'static str,
    key: &'static str,
    value: &'static str,
    attention_output: &'static str,
    attention_norm: &'static str,
    intermediate: &'static str,
    output: &'static str,
    output_norm: &'static str,
}

/// BERT's names, which RoBERTa, XLM-R and ELECTRA share.
const BERT_LAYOUT: Layout = Layout {
    layer: "encoder.layer",
    query: "attention.self.query",
    key: "attention.self.key",
    value: "attention.self.value",
    attention_output: "attention.output.dense",
    attention_norm: "attention.output.LayerNorm",
    intermediate: "intermediate.dense",
    output: "output.dense",
    output_norm: "output.LayerNorm",
};

const DEBERTA_LAYOUT: Layout = Layout {
    query: "attention.self.query_proj",
    key: "attention.self.key_proj",
    value: "attention.self.value_proj",
    ..BERT_LAYOUT
};

const DISTILBERT_LAYOUT: Layout = Layout {
    layer: "transformer.layer",
    query: "attention.q_lin",
    key: "attention.k_lin",
    value: "attention.v_lin",
    attention_output: "attention.out_lin",
    attention_norm: "sa_layer_norm",
    intermediate: "ffn.lin1",
    output: "ffn.lin2",
    output_norm: "output_layer_norm",
};

/// A parameter and how its HF tensor relates to it.
pub(crate) enum Slot<'a, B: Backend> {
    /// Biases and LayerNorm scales: same shape in both.
    Vector(&'a mut Param<Tensor<B, 1>>),
    /// Embedding tables: `[rows, hidden]` in both.
    Table(&'a mut Param<Tensor<B, 2>>),
    /// Linear weights: HF stores `[out, in]`, burn `[in, out]`.
    LinearWeight(&'a mut Param<Tensor<B, 2>>),
}

/// What [`visit_parameters`] calls for each parameter.
pub(crate) type ParamVisitor<'f, B> = dyn FnMut(&str, Slot<'_, B>) -> Result<(), ModelError> + 'f;

/// Calls `f` with the HF name (with the family's prefix, e.g. `bert.`) of every parameter, in
/// checkpoint order.
pub(crate) fn visit_parameters<B: Backend>(
    model: &mut BertForQuestionAnswering<B>,
    family: Family,
    f: &mut ParamVisitor<'_, B>,
) -> Result<(), ModelError> {
    let prefix = family.prefix();
    let layout = match family {
        Family::DistilBert => &DISTILBERT_LAYOUT,
        Family::DebertaV2 => &DEBERTA_LAYOUT,
        _ => &BERT_LAYOUT,
    };
    let e = &mut model.bert.embeddings;
    let table = |name: &str| format!("{prefix}.embeddings.{name}.weight");
    f(
        &table("word_embeddings"),
        Slot::Table(&mut e.word_embeddings.weight),
    )?;
    if let Some(positions) = e.position_embeddings.first_mut() {
        f(
            &table("position_embeddings"),
            Slot::Table(&mut positions.weight),
        )?;
    }
    if let Some(types) = e.token_type_embeddings.first_mut() {
        f(
            &table("token_type_embeddings"),
            Slot::Table(&mut types.weight),
        )?;
    }
    layer_norm(
        &format!("{prefix}.embeddings.LayerNorm"),
        &mut e.layer_norm,
        f,
    )?;
    if let Some(projection) = e.projection.first_mut() {
        let name = match family {
            Family::DebertaV2 => "embeddings.embed_proj",
            _ => "embeddings_project",
        };
        linear(&format!("{prefix}.{name}"), projection, f)?;
    }
    for (i, layer) in model.bert.layers.iter_mut().enumerate() {
        let name = |part: &str| format!("{prefix}.{}.{i}.{part}", layout.layer);
        let a = &mut layer.attention;
        linear(&name(layout.query), &mut a.query, f)?;
        linear(&name(layout.key), &mut a.key, f)?;
        linear(&name(layout.value), &mut a.value, f)?;
        for projection in &mut a.position_key {
            linear(&name("attention.self.pos_key_proj"), projection, f)?;
        }
        for projection in &mut a.position_query {
            linear(&name("attention.self.pos_query_proj"), projection, f)?;
        }
        linear(&name(layout.attention_output), &mut a.output, f)?;
        layer_norm(&name(layout.attention_norm), &mut a.layer_norm, f)?;
        let ff = &mut layer.feed_forward;
        linear(&name(layout.intermediate), &mut ff.intermediate, f)?;
        linear(&name(layout.output), &mut ff.output, f)?;
        layer_norm(&name(layout.output_norm), &mut ff.layer_norm, f)?;
    }
    for relative in &mut model.bert.relative {
        f(
            &format!("{prefix}.encoder.rel_embeddings.weight"),
            Slot::Table(&mut relative.table.weight),
        )?;
        for norm in &mut relative.layer_norm {
            layer_norm(&format!("{prefix}.encoder.LayerNorm"), norm, f)?;
        }
    }
    linear("qa_outputs", &mut model.qa_outputs, f)
}

fn linear<B: Backend>(
    name: &str,
    l: &mut Linear<B>,
    f: &mut ParamVisitor<'_, B>,
) -> Result<(), ModelError> {
    f(&format!("{name}.weight"), Slot::LinearWeight(&mut l.weight))?;
    if let Some(b) = l.bias.as_mut() {
        f(&format!("{name}.bias"), Slot::Vector(b))?;
    }
    Ok(())
}

fn layer_norm<B: Backend>(
    name: &str,
    n: &mut LayerNorm<B>,
    f: &mut ParamVisitor<'_, B>,
) -> Result<(), ModelError> {
    f(&format!("{name}.weight"), Slot::Vector(&mut n.gamma))?;
    if let Some(b) = n.beta.as_mut() {
        f(&format!("{name}.bias"), Slot::Vector(b))?;
    }
    Ok(())
}

/// One parameter: its Hugging Face name, its id in the module, and its rank.
#[derive(Debug, Clone)]
pub struct ParamInfo {
    pub name: String,
    pub id: burn::module::ParamId,
    pub rank: usize,
}

/// Every parameter of `model`, in checkpoint order, named as in a BERT checkpoint (training's
/// rules go by these names, whatever the family).
pub fn parameters<B: Backend>(model: &BertForQuestionAnswering<B>) -> Vec<ParamInfo> {
    let mut out = Vec::new();
    let mut copy = model.clone();
    visit_parameters(&mut copy, Family::Bert, &mut |name, slot| {
        let (id, rank) = match slot {
            Slot::Vector(p) => (p.id, 1),
            Slot::Table(p) | Slot::LinearWeight(p) => (p.id, 2),
        };
        out.push(ParamInfo {
            name: name.to_string(),
            id,
            rank,
        });
        Ok(())
    })
    .expect("listing cannot fail");
    out
}
