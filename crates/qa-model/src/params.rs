//! The table from each parameter of [`BertForQuestionAnswering`] to its Hugging Face tensor name.
//! Loading and saving checkpoints walk it ([`crate::hf`]), and training lists parameters by it
//! (weight decay and gradient clipping need names and ids).

use burn::module::Param;
use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use crate::bert::BertForQuestionAnswering;
use crate::error::ModelError;

/// Names of the span head's tensors start with this.
pub(crate) const HEAD_PREFIX: &str = "qa_outputs.";
/// Names of the encoder's tensors start with this in a `BertForQuestionAnswering` checkpoint (a
/// bare `BertModel` checkpoint has no prefix).
pub(crate) const ENCODER_PREFIX: &str = "bert.";

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

/// Calls `f` with the HF name (with `bert.` prefix) of every parameter, in checkpoint order.
pub(crate) fn visit_parameters<B: Backend>(
    model: &mut BertForQuestionAnswering<B>,
    f: &mut ParamVisitor<'_, B>,
) -> Result<(), ModelError> {
    let e = &mut model.bert.embeddings;
    f(
        "bert.embeddings.word_embeddings.weight",
        Slot::Table(&mut e.word_embeddings.weight),
    )?;
    f(
        "bert.embeddings.position_embeddings.weight",
        Slot::Table(&mut e.position_embeddings.weight),
    )?;
    f(
        "bert.embeddings.token_type_embeddings.weight",
        Slot::Table(&mut e.token_type_embeddings.weight),
    )?;
    layer_norm("bert.embeddings.LayerNorm", &mut e.layer_norm, f)?;
    for (i, layer) in model.bert.layers.iter_mut().enumerate() {
        let p = format!("bert.encoder.layer.{i}");
        let a = &mut layer.attention;
        linear(&format!("{p}.attention.self.query"), &mut a.query, f)?;
        linear(&format!("{p}.attention.self.key"), &mut a.key, f)?;
        linear(&format!("{p}.attention.self.value"), &mut a.value, f)?;
        linear(&format!("{p}.attention.output.dense"), &mut a.output, f)?;
        layer_norm(
            &format!("{p}.attention.output.LayerNorm"),
            &mut a.layer_norm,
            f,
        )?;
        let ff = &mut layer.feed_forward;
        linear(&format!("{p}.intermediate.dense"), &mut ff.intermediate, f)?;
        linear(&format!("{p}.output.dense"), &mut ff.output, f)?;
        layer_norm(&format!("{p}.output.LayerNorm"), &mut ff.layer_norm, f)?;
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

/// Every parameter of `model`, in checkpoint order.
pub fn parameters<B: Backend>(model: &BertForQuestionAnswering<B>) -> Vec<ParamInfo> {
    let mut out = Vec::new();
    let mut copy = model.clone();
    visit_parameters(&mut copy, &mut |name, slot| {
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
