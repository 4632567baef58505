//! The Gemma 1 transformer as a function of traced parameters (HF tensor names).
//! Shapes use fixed letters: B batch, T query, S key, N heads, K kv heads, G = N/K,
//! H head_dim, D model, F MLP width, V vocab.
use crate::config::Config;
use graph::{DType, DotDims, Tensor, TensorType};
use std::collections::BTreeMap;

/// Checkpoint tensor names and shapes, in a fixed order (HF layout; the output embedding is
/// tied to `model.embed_tokens.weight`).
pub fn param_shapes(cfg: &Config) -> Vec<(String, Vec<i64>)> {
    let (d, f, h) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (nh, kh) = (cfg.num_attention_heads * h, cfg.num_key_value_heads * h);
    let mut v = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, d])];
    for i in 0..cfg.num_hidden_layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        v.push((p("input_layernorm.weight"), vec![d]));
        v.push((p("self_attn.q_proj.weight"), vec![nh, d]));
        v.push((p("self_attn.k_proj.weight"), vec![kh, d]));
        v.push((p("self_attn.v_proj.weight"), vec![kh, d]));
        v.push((p("self_attn.o_proj.weight"), vec![d, nh]));
        v.push((p("post_attention_layernorm.weight"), vec![d]));
        v.push((p("mlp.gate_proj.weight"), vec![f, d]));
        v.push((p("mlp.up_proj.weight"), vec![f, d]));
        v.push((p("mlp.down_proj.weight"), vec![d, f]));
    }
    v.push(("model.norm.weight".to_string(), vec![d]));
    v
}

/// Parameter types for tracing, all in `dtype`.
pub fn param_types(cfg: &Config, dtype: DType) -> Vec<(String, TensorType)> {
    param_shapes(cfg).into_iter().map(|(n, s)| (n, TensorType::new(dtype, &s))).collect()
}

/// Traced parameters by name.
pub struct Params<'a> {
    map: BTreeMap<&'a str, &'a Tensor>,
}

impl<'a> Params<'a> {
    pub fn new(names: &'a [(String, TensorType)], tensors: &'a [Tensor]) -> Params<'a> {
        Params { map: names.iter().map(|(n, _)| n.as_str()).zip(tensors).collect() }
    }

    fn get(&self, name: &str) -> &'a Tensor {
        self.map.get(name).copied().unwrap_or_else(|| panic!("internal: no parameter {name}"))
    }

    fn layer(&self, i: usize, name: &str) -> &'a Tensor {
        self.get(&format!("model.layers.{i}.{name}"))
    }
}

/// x [B, T, D] times a torch-layout weight [out, D]: [B, T, out].
#[track_caller]
fn linear(x: &Tensor, w: &Tensor) -> Tensor {
    x.dot_general(w, &DotDims { lhs_contract: vec![2], rhs_contract: vec![1], ..Default::default() })
}

/// Intermediate values of one forward pass, for per-layer checks.
pub struct Trace {
    pub embeddings: Tensor,
    /// Per layer: the attention output and the MLP output (before their residual adds).
    pub attention: Vec<Tensor>,
    pub mlp: Vec<Tensor>,
    pub final_norm: Tensor,
    pub logits: Tensor,
}

/// Logits [B, T, V] (in the parameters' dtype) for int tokens [B, T]. `attention_mask`
/// [B, T] (nonzero = real token) hides padded keys in addition to the causal mask.
pub fn forward(cfg: &Config, p: &Params, tokens: &Tensor, attention_mask: Option<&Tensor>) -> Trace {
    let embed = p.get("model.embed_tokens.weight");
    let dtype = embed.dtype();
    let (b, t) = (tokens.dims()[0], tokens.dims()[1]);
    // Embedding lookup scaled by sqrt(D), the scale rounded to the activation dtype.
    let scale = embed.constant(&TensorType::scalar(DType::F64), vec![(cfg.hidden_size as f64).sqrt()]).convert(dtype);
    let mut x = embed.gather(tokens) * &scale;
    let embeddings = x.clone();
    let positions = tokens.iota(&TensorType::new(DType::S32, &[b, t]), 1);
    let mut allowed = tokens.causal_mask(t, t, 0).broadcast_in_dim(&[b, t, t], &[1, 2]); // [B, T, S]
    if let Some(m) = attention_mask {
        let keys = m.ne(&m.full_like(0.0)).broadcast_in_dim(&[b, t, t], &[0, 2]);
        allowed = allowed.and(&keys);
    }
    let (mut attention, mut mlp) = (Vec::new(), Vec::new());
    for i in 0..cfg.num_hidden_layers {
        let h = x.rms_norm(p.layer(i, "input_layernorm.weight"), cfg.rms_norm_eps);
        let a = attend(cfg, p, i, &h, &positions, &allowed);
        x = &x + &a;
        attention.push(a);
        let h = x.rms_norm(p.layer(i, "post_attention_layernorm.weight"), cfg.rms_norm_eps);
        let gate = linear(&h, p.layer(i, "mlp.gate_proj.weight")).gelu_tanh();
        let up = linear(&h, p.layer(i, "mlp.up_proj.weight"));
        let m = linear(&(gate * up), p.layer(i, "mlp.down_proj.weight"));
        x = &x + &m;
        mlp.push(m);
    }
    let final_norm = x.rms_norm(p.get("model.norm.weight"), cfg.rms_norm_eps);
    let logits = linear(&final_norm, embed); // tied output embedding
    Trace { embeddings, attention, mlp, final_norm, logits }
}

/// Causal self-attention of layer `i` with grouped KV heads; softmax in f32 (f64 for f64).
fn attend(cfg: &Config, p: &Params, i: usize, x: &Tensor, positions: &Tensor, allowed: &Tensor) -> Tensor {
    let (b, t) = (x.dims()[0], x.dims()[1]);
    let (n, k, h) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let g = n / k;
    let q = linear(x, p.layer(i, "self_attn.q_proj.weight")).reshape(&[b, t, n, h]).rope(positions, cfg.rope_theta);
    let kk = linear(x, p.layer(i, "self_attn.k_proj.weight")).reshape(&[b, t, k, h]).rope(positions, cfg.rope_theta);
    let v = linear(x, p.layer(i, "self_attn.v_proj.weight")).reshape(&[b, t, k, h]);
    // Query head n = kv head * G + group member, as HF's repeat_kv pairs them.
    let q = q.reshape(&[b, t, k, g, h]);
    // scores [B, K, T, G, S]
    let scores = q.dot_general(&kk, &DotDims { lhs_batch: vec![0, 2], rhs_batch: vec![0, 2], lhs_contract: vec![4], rhs_contract: vec![3] });
    let wide = if x.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let scores = scores.convert(wide) * (h as f64).powf(-0.5);
    let shape = [b, k, t, g, t];
    let mask = allowed.broadcast_in_dim(&shape, &[0, 2, 4]);
    let lowest = scores.full_like(f32::MIN as f64);
    let probs = Tensor::select(&mask, &scores, &lowest).softmax(4).convert(x.dtype());
    // out [B, K, T, G, H] -> [B, T, K, G, H] -> [B, T, N*H]
    let out = probs.dot_general(&v, &DotDims { lhs_batch: vec![0, 1], rhs_batch: vec![0, 2], lhs_contract: vec![4], rhs_contract: vec![1] });
    let out = out.transpose(&[0, 2, 1, 3, 4]).reshape(&[b, t, n * h]);
    linear(&out, p.layer(i, "self_attn.o_proj.weight"))
}

/// Mean next-token cross-entropy of logits[:, :-1] against tokens[:, 1:] (what transformers
/// computes with labels=input_ids), in f32 (f64 for f64 logits); `loss_mask` [B, T] weights the target tokens.
pub fn loss(logits: &Tensor, tokens: &Tensor, loss_mask: Option<&Tensor>) -> Tensor {
    let d = logits.dims();
    let (b, t, v) = (d[0], d[1], d[2]);
    let pred = logits.slice(&[0, 0, 0], &[b, t - 1, v], &[1, 1, 1]);
    let target = tokens.slice(&[0, 1], &[b, t], &[1, 1]);
    let mask = loss_mask.map(|m| m.slice(&[0, 1], &[b, t], &[1, 1]));
    pred.cross_entropy(&target, mask.as_ref())
}

/// What `trace_model` adds to the plain loss-and-logits function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Outputs `layer.embeddings`, `layer.<i>.attention`, `layer.<i>.mlp`, `layer.final_norm`.
    pub layers: bool,
    /// Takes a `mask` [B, T] parameter after the tokens (nonzero = real token): padded keys are
    /// hidden from attention and padded targets are left out of the loss.
    pub mask: bool,
}

/// Traces `loss(forward(params, tokens))` with parameters first (checkpoint order), then
/// `tokens` [B, T] (s32) and, with `opts.mask`, `mask` [B, T] (s32). Outputs: `loss`,
/// `logits` (f32, or f64 for f64 models), then the per-layer values if asked for.
pub fn trace_model(cfg: &Config, dtype: DType, batch: i64, seq: i64, opts: ModelOptions) -> Result<graph::Function, graph::Error> {
    let mut params = param_types(cfg, dtype);
    params.push(("tokens".into(), TensorType::new(DType::S32, &[batch, seq])));
    if opts.mask {
        params.push(("mask".into(), TensorType::new(DType::S32, &[batch, seq])));
    }
    let named: Vec<(&str, TensorType)> = params.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let n = param_shapes(cfg).len();
    let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let mut names = vec!["loss".to_string(), "logits".to_string()];
    let f = graph::trace("gemma", &named, |a| {
        let p = Params::new(&params[..n], &a[..n]);
        let mask = opts.mask.then(|| &a[n + 1]);
        let out = forward(cfg, &p, &a[n], mask);
        let mut outs = vec![loss(&out.logits, &a[n], mask), out.logits.convert(wide)];
        if opts.layers {
            names.push("layer.embeddings".into());
            outs.push(out.embeddings.convert(wide));
            for (i, (att, mlp)) in out.attention.iter().zip(&out.mlp).enumerate() {
                names.push(format!("layer.{i}.attention"));
                outs.push(att.convert(wide));
                names.push(format!("layer.{i}.mlp"));
                outs.push(mlp.convert(wide));
            }
            names.push("layer.final_norm".into());
            outs.push(out.final_norm.convert(wide));
        }
        outs
    })?;
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(f.rename_outputs(&refs))
}

/// `trace_model` without the per-layer outputs.
pub fn trace_loss(cfg: &Config, dtype: DType, batch: i64, seq: i64) -> Result<graph::Function, graph::Error> {
    trace_model(cfg, dtype, batch, seq, ModelOptions::default())
}
