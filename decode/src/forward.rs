//! One forward pass of a checkpoint on a batch of tokens: logits, the next-token loss, and
//! optionally the gradient of the loss for every checkpoint tensor and per-layer values (what
//! `gemma-xla forward` writes, and what the HF parity tests compare).
use crate::Result;
use gemma::Config;
use graph::{DType, Tensor, Tree};
use jit::Jit;
use runtime::{AsHostView, Client, HostArray, HostView};

/// What to compute besides logits and loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ForwardOptions {
    /// The gradient of the loss for every checkpoint tensor, as `grad.<name>`.
    pub grads: bool,
    /// Per-layer values: `layer.embeddings`, `layer.<i>.attention`, `layer.<i>.mlp`,
    /// `layer.final_norm`.
    pub layers: bool,
    /// The compute dtype (f32, or bf16 with norms, softmax and loss in f32).
    pub dtype: DType,
    /// Run the decoder layers as one loop over their stacked weights (`ModelOptions::scan`);
    /// the same values.
    pub scan: bool,
}

impl Default for ForwardOptions {
    fn default() -> Self {
        ForwardOptions { grads: false, layers: false, dtype: DType::F32, scan: false }
    }
}

/// Runs the model on one device of `client`: `params` by checkpoint name (any float dtype;
/// converted to `opts.dtype`), `tokens` s32 [B, T], `mask` an optional s32 0/1 padding mask
/// of the same shape. Returns every output as f32 (f64 when `opts.dtype` is f64), by name:
/// `logits`, `loss`, and what `opts` adds.
pub fn forward<A: AsHostView>(
    client: &Client,
    cfg: &Config,
    params: &Tree<A>,
    tokens: &HostArray,
    mask: Option<&HostArray>,
    opts: ForwardOptions,
) -> Result<Vec<(String, HostArray)>> {
    forward_with_adapters(client, cfg, params, tokens, mask, opts, None)
}

/// [`forward`] where `params` also holds `lora`'s adapters, applied without merging (the
/// gradients then include the adapters').
pub fn forward_with_adapters<A: AsHostView>(
    client: &Client,
    cfg: &Config,
    params: &Tree<A>,
    tokens: &HostArray,
    mask: Option<&HostArray>,
    opts: ForwardOptions,
    lora: Option<&gemma::lora::Lora>,
) -> Result<Vec<(String, HostArray)>> {
    let dtype = opts.dtype;
    // Parameters as given where the dtype matches, else converted.
    let converted: Vec<(String, Option<HostArray>)> = params
        .iter()
        .map(|(name, v)| {
            let v = v.host_view();
            Ok((name.to_string(), (v.dtype != dtype).then(|| v.convert_float(dtype)).transpose()?))
        })
        .collect::<Result<_>>()?;
    let mut args: Tree<HostView> = Tree::new();
    for ((name, v), (_, c)) in params.iter().zip(&converted) {
        args.insert(format!("params.{name}"), c.as_ref().map_or_else(|| v.host_view(), |h| h.host_view())).map_err(internal)?;
    }
    args.insert("tokens", tokens.host_view()).map_err(internal)?;
    if let Some(m) = mask {
        args.insert("mask", m.host_view()).map_err(internal)?;
    }
    let model_opts = gemma::ModelOptions { layers: opts.layers, mask: mask.is_some(), scan: opts.scan, ..Default::default() };
    let jit = Jit::new("gemma_forward", client, |args: &Tree<Tensor>| -> Result<Tree<Tensor>, graph::Error> {
        if !opts.grads {
            return gemma::model_with_adapters(cfg, args, model_opts, None, lora);
        }
        let types = args.map(|_, t| t.ty());
        let mut failed = None;
        let f = graph::trace_tree("gemma", &types, |a| {
            gemma::model_with_adapters(cfg, a, model_opts, None, lora).unwrap_or_else(|e| {
                failed = Some(e);
                Tree::new()
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Ok(graph::value_and_grad_tree(&f?, "loss", "params")?.call_tree(args))
    });
    let outputs = jit.call_host(&args)?;
    let mut saved = Vec::new();
    for (name, value) in outputs.into_leaves() {
        // Gradients are named as the checkpoint names them: grad.<name>.
        let name = name.strip_prefix("grad.params.").map_or(name.clone(), |n| format!("grad.{n}"));
        // f32 (f64 for an f64 run, so that float64 checks see every digit).
        let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
        let out = if value.dtype() == wide { value } else { value.host_view().convert_float(wide)? };
        saved.push((name, out));
    }
    Ok(saved)
}

fn internal(e: graph::Error) -> crate::Error {
    crate::Error::Unsupported(format!("internal: {e}"))
}
