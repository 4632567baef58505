//! Generation with a key/value cache. One function, [`extend`], appends `T` tokens to each
//! row of a cache of `S` slots and returns the next-token logits: prefill is `extend` with `T`
//! the prompt's length bucket, decode is `extend` with `T = 1`, so the two programs share
//! every line of the model with `forward`.
//!
//! Row `b` writes its `T` new keys and values at slots `start[b] .. start[b] + T` and its
//! query `t` (at position `start[b] + t`) sees slots `0 ..= start[b] + t`. Only the first
//! `lengths[b]` of the `T` tokens are real: the padding after them writes slots that no real
//! query sees and that the next call overwrites before anything can see them. Writes past the
//! last slot are dropped.
//!
//! The cache of a sliding-window layer (Gemma 2 and 3) holds only `min(window, S)` slots, a
//! ring: position p lives in slot p mod R. Its queries attend to the ring's earlier
//! positions and to the new tokens themselves (so a prefill longer than the window works),
//! within the window; then the last R real new tokens are written into the ring. A long
//! generation's memory on local layers is so bounded by the window.
use crate::config::{Config, LayerKind};
use crate::model::{attention_output, embed, finish_block, project_qkv, unembed, Params};
use crate::rules::{self, Layout};
use graph::{DType, Tensor, TensorType, Tree};

/// The cache's shape for `batch` rows of `cache_len` slots: [B, S, K, H].
pub fn cache_dims(cfg: &Config, batch: i64, cache_len: i64) -> Vec<i64> {
    vec![batch, cache_len, cfg.num_key_value_heads, cfg.head_dim]
}

/// The slots of layer `i`'s cache in a cache of `cache_len`: `min(sliding_window, cache_len)`
/// for a sliding-window layer (a ring), `cache_len` otherwise.
pub fn layer_slots(cfg: &Config, i: usize, cache_len: i64) -> i64 {
    match cfg.layer_types.get(i) {
        Some(LayerKind::Sliding) => cfg.sliding_window.min(cache_len),
        _ => cache_len,
    }
}

/// The cache's tensors by path: `cache.<layer>.k` and `cache.<layer>.v`, in `dtype`, each
/// [B, slots, K, H] (see [`layer_slots`]).
pub fn cache_types(cfg: &Config, dtype: DType, batch: i64, cache_len: i64) -> Vec<(String, TensorType)> {
    (0..cfg.num_hidden_layers)
        .flat_map(|i| {
            let ty = TensorType::new(dtype, &cache_dims(cfg, batch, layer_slots(cfg, i, cache_len)));
            [(format!("cache.{i}.k"), ty.clone()), (format!("cache.{i}.v"), ty)]
        })
        .collect()
}

pub use crate::rules::{cache_spec, extend_spec};

/// Which logits `extend` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `logits` [B, V] at each row's last real token (position `start + lengths - 1`).
    Last,
    /// `logits` [B, T, V] at every new token.
    All,
}

/// The argument types of `extend`: `params.<checkpoint name>` and the cache in `dtype`,
/// `tokens` `[B, T]`, `start` `[B]` and `lengths` `[B]` (s32).
pub fn extend_args(cfg: &Config, dtype: DType, batch: i64, tokens: i64, cache_len: i64) -> Tree<TensorType> {
    let mut t = Tree::new();
    for (name, ty) in crate::model::param_types(cfg, dtype) {
        t.insert(format!("params.{name}"), ty).expect("internal: checkpoint names are distinct paths");
    }
    for (path, ty) in cache_types(cfg, dtype, batch, cache_len) {
        t.insert(path, ty).expect("internal: distinct cache paths");
    }
    t.insert("tokens", TensorType::new(DType::S32, &[batch, tokens])).expect("internal: fixed name");
    t.insert("start", TensorType::new(DType::S32, &[batch])).expect("internal: fixed name");
    t.insert("lengths", TensorType::new(DType::S32, &[batch])).expect("internal: fixed name");
    t
}

fn invalid(message: String) -> graph::Error {
    graph::Error::Invalid(message)
}

/// Appends `tokens` to the cache (see the module docs). Outputs: the new `cache.<i>.k` /
/// `cache.<i>.v` and `logits` (f32, f64 for f64 models) as `head` says.
pub fn extend(cfg: &Config, args: &Tree<Tensor>, head: Head, layout: Option<Layout>) -> Result<Tree<Tensor>, graph::Error> {
    extend_with(cfg, args, head, layout, None)
}

/// [`extend`] where `params` also holds `lora`'s adapters, applied without merging.
pub fn extend_with(
    cfg: &Config,
    args: &Tree<Tensor>,
    head: Head,
    layout: Option<Layout>,
    lora: Option<&crate::lora::Lora>,
) -> Result<Tree<Tensor>, graph::Error> {
    let p = Params::of_args(cfg, args, lora)?.with_layout(layout);
    let tokens = args.leaf("tokens")?;
    let (start, lengths) = (args.leaf("start")?, args.leaf("lengths")?);
    if tokens.rank() != 2 || !tokens.dtype().is_int() {
        return Err(invalid(format!("tokens must be integer [batch, new tokens], got {}", tokens.ty())));
    }
    let (b, t) = (tokens.dims()[0], tokens.dims()[1]);
    for (name, x) in [("start", start), ("lengths", lengths)] {
        if x.dims() != [b] || x.dtype() != DType::S32 {
            return Err(invalid(format!("{name} must be s32[{b}] (one per row of tokens), got {}", x.ty())));
        }
    }
    let dtype = p.get("model.embed_tokens.weight").dtype();
    // S: the slots of a global layer's cache (every layer's, when none slides).
    let full = (0..cfg.num_hidden_layers).find(|&i| cfg.layer_types.get(i) != Some(&LayerKind::Sliding)).unwrap_or(0);
    let s = args.leaf(&format!("cache.{full}.k")).map(|c| c.dims().get(1).copied().unwrap_or(0)).unwrap_or(0);
    if s < 1 {
        return Err(invalid("the cache needs at least one slot".into()));
    }
    for (path, want) in cache_types(cfg, dtype, b, s) {
        let c = args.leaf(&path)?;
        if c.ty() != want {
            return Err(invalid(format!("{path} must be {want} (for a cache of {s} slots), got {}", c.ty())));
        }
    }
    if args.subtree("cache").len() != 2 * cfg.num_hidden_layers {
        return Err(invalid(format!("the cache must hold exactly cache.<0..{}>.k and .v", cfg.num_hidden_layers)));
    }

    let tr = tokens.tracer();
    let s32 = |dims: &[i64]| TensorType::new(DType::S32, dims);
    let tokens = tokens.convert(DType::S32);
    // positions [B, T] = start + t
    let positions = &start.broadcast_in_dim(&[b, t], &[0]) + &tr.iota(&s32(&[b, t]), 1);
    // query t of row b sees slots s <= its position: [B, T, S]
    let slot = tr.iota(&s32(&[b, t, s]), 2);
    let allowed = slot.le(&positions.broadcast_in_dim(&[b, t, s], &[0, 1]));
    // Rows of the cache flattened to [B*S, K*H]: new token (b, t) goes to row b*S + position,
    // or nowhere (row B*S, out of range, dropped by the scatter) past the last slot.
    let inside = positions.lt(&positions.scalar_like(s as f64));
    let row = &tr.iota(&s32(&[b, t]), 0) * (s as f64) + &positions;
    let rows = Tensor::select(&inside, &row, &row.scalar_like((b * s) as f64));
    // The slots being written, [B, S]: start <= s < start + T.
    let slot_bs = tr.iota(&s32(&[b, s]), 1);
    let first = start.broadcast_in_dim(&[b, s], &[0]);
    let written = slot_bs.ge(&first).and(&slot_bs.lt(&(&first + (t as f64))));
    let (k, h) = (cfg.num_key_value_heads, cfg.head_dim);
    let cache_dims = [b, s, k, h];
    let cache_axes = rules::cache_logical(cfg);
    let write = |cache: &Tensor, new: &Tensor| -> Tensor {
        let keep = written.broadcast_in_dim(&cache_dims, &[0, 1]);
        let cleared = Tensor::select(&keep, &cache.scalar_like(0.0), cache);
        let flat = cleared.reshape(&[b * s, k * h]);
        let updates = new.convert(cache.dtype()).reshape(&[b, t, k * h]);
        p.constrain(flat.scatter_add(&rows, &updates).reshape(&cache_dims), &cache_axes)
    };

    // Sliding layers: a ring of R slots (position p in slot p mod R). Their keys are the
    // ring's earlier positions then the T new tokens, masked by position: valid, causal and
    // within the window.
    let ring = cfg.layer_types.contains(&LayerKind::Sliding).then(|| {
        let r = cfg.sliding_window.min(s);
        let last = start - 1.0; // [B]: the last position already in the cache (-1: none)
        let slot = tr.iota(&s32(&[b, r]), 1);
        // The position in slot j: the largest p <= last with p = j mod R (negative: empty).
        let x = &last.broadcast_in_dim(&[b, r], &[0]) - &slot + (r as f64); // >= 0
        let d = &x - &(&x.div(&x.scalar_like(r as f64)) * (r as f64));
        let old_pos = &last.broadcast_in_dim(&[b, r], &[0]) - &d;
        let key_pos = old_pos.concat(&[&positions], 1); // [B, R + T]
        let valid = old_pos.ge(&old_pos.scalar_like(0.0)).concat(&[&positions.ge(&positions.scalar_like(0.0))], 1);
        let dims = [b, t, r + t];
        let kp = key_pos.broadcast_in_dim(&dims, &[0, 2]);
        let qp = positions.broadcast_in_dim(&dims, &[0, 1]);
        let mask = valid.broadcast_in_dim(&dims, &[0, 2]).and(&kp.le(&qp)).and(&(&qp - &kp).lt(&qp.scalar_like(cfg.sliding_window as f64)));
        // What is written: the real new tokens among the last R of them, at p mod R.
        let tt = tr.iota(&s32(&[b, t]), 1);
        let len = lengths.broadcast_in_dim(&[b, t], &[0]);
        let keep = tt.lt(&len).and(&tt.ge(&(&len - (r as f64))));
        let p_mod = &positions - &(&positions.div(&positions.scalar_like(r as f64)) * (r as f64));
        let row = &tr.iota(&s32(&[b, t]), 0) * (r as f64) + &p_mod;
        let rows = Tensor::select(&keep, &row, &row.scalar_like((b * r) as f64));
        let ones = Tensor::select(&keep, &row.scalar_like(1.0), &row.scalar_like(0.0)).convert(DType::F32).reshape(&[b, t, 1]);
        let hit = tr.scalar(DType::F32, 0.0).broadcast_in_dim(&[b * r, 1], &[]).scatter_add(&rows, &ones).reshape(&[b, r]);
        let written = hit.gt(&hit.scalar_like(0.0));
        (r, mask, rows, written)
    });
    let ring_write = |old: &Tensor, new: &Tensor, r: i64, rows: &Tensor, written: &Tensor| -> Tensor {
        let dims = [b, r, k, h];
        let fresh = old.zeros_like().reshape(&[b * r, k * h]).scatter_add(rows, &new.convert(old.dtype()).reshape(&[b, t, k * h]));
        let put = Tensor::select(&written.broadcast_in_dim(&dims, &[0, 1]), &fresh.reshape(&dims), old);
        p.constrain(put, &cache_axes)
    };
    let mut out = Tree::new();
    let mut x = embed(cfg, &p, &tokens);
    for i in 0..cfg.num_hidden_layers {
        let normed = x.rms_norm(p.layer(i, "input_layernorm.weight"), cfg.rms_norm_eps);
        let (q, k_new, v_new) = project_qkv(cfg, &p, i, &normed, &positions);
        let (k_old, v_old) = (args.leaf(&format!("cache.{i}.k"))?, args.leaf(&format!("cache.{i}.v"))?);
        let (attention, k_all, v_all) = match (&ring, cfg.layer_types[i]) {
            (Some((r, mask, rows, written)), LayerKind::Sliding) => {
                let keys = k_old.concat(&[&k_new.convert(k_old.dtype())], 1);
                let values = v_old.concat(&[&v_new.convert(v_old.dtype())], 1);
                let attention = attention_output(cfg, &p, i, &q, &keys, &values, mask);
                (attention, ring_write(k_old, &k_new, *r, rows, written), ring_write(v_old, &v_new, *r, rows, written))
            }
            _ => {
                let (k_all, v_all) = (write(k_old, &k_new), write(v_old, &v_new));
                let attention = attention_output(cfg, &p, i, &q, &k_all, &v_all, &allowed);
                (attention, k_all, v_all)
            }
        };
        x = finish_block(cfg, &p, i, &x, attention).x;
        out.insert(format!("cache.{i}.k"), k_all)?;
        out.insert(format!("cache.{i}.v"), v_all)?;
    }
    let wide = if dtype == DType::F64 { DType::F64 } else { DType::F32 };
    let d = cfg.hidden_size;
    let logits = match head {
        Head::All => unembed(cfg, &p, &x).1,
        Head::Last => {
            // x at t = lengths - 1 of each row (clamped into the row): [B, 1, D]
            let last = (lengths - 1.0).max(&lengths.scalar_like(0.0)).min(&lengths.scalar_like((t - 1) as f64));
            let ids = &tr.iota(&s32(&[b]), 0) * (t as f64) + &last;
            let x_last = x.reshape(&[b * t, d]).gather(&ids).reshape(&[b, 1, d]);
            unembed(cfg, &p, &x_last).1.reshape(&[b, cfg.vocab_size])
        }
    };
    out.insert("logits", logits.convert(wide))?;
    Ok(out)
}

/// `extend` that scores the new tokens instead of returning logits: with `targets` [B, T]
/// (s32, the token that should follow each new token), outputs the new cache, `logprob`
/// [B, T] (f32 log-softmax of the logits at the target, as lm-eval-harness computes it) and
/// `greedy` [B, T] (s32, 1 where the target has the largest logit).
pub fn score(cfg: &Config, args: &Tree<Tensor>, layout: Option<Layout>) -> Result<Tree<Tensor>, graph::Error> {
    score_with(cfg, args, layout, None)
}

/// [`score`] where `params` also holds `lora`'s adapters, applied without merging.
pub fn score_with(
    cfg: &Config,
    args: &Tree<Tensor>,
    layout: Option<Layout>,
    lora: Option<&crate::lora::Lora>,
) -> Result<Tree<Tensor>, graph::Error> {
    let targets = args.leaf("targets")?;
    let tokens = args.leaf("tokens")?;
    if targets.dims() != tokens.dims() || !targets.dtype().is_int() {
        return Err(invalid(format!("targets must be integer {:?} like tokens, got {}", tokens.dims(), targets.ty())));
    }
    let mut inner = args.clone();
    inner.remove("targets");
    let mut out = extend_with(cfg, &inner, Head::All, layout, lora)?;
    let logits = out.remove("logits").expect("internal: extend returns logits").convert(DType::F32);
    let logp = logits.log_softmax(2);
    let dims = logp.dims();
    let one_hot = targets.convert(DType::S32).one_hot(dims[2], DType::S32);
    let hit = one_hot.ne(&one_hot.scalar_like(0.0));
    let picked = Tensor::select(&hit, &logp, &logp.scalar_like(0.0)).sum(&[2]);
    let greedy = picked.ge(&logp.max_over(&[2])).convert(DType::S32);
    out.insert("logprob", picked)?;
    out.insert("greedy", greedy)?;
    Ok(out)
}

/// The cache with row `b` replaced by row `source[b]` (`source` `[B]`, s32): shares a computed
/// prefix (a few-shot prompt, a question's context) with the rows that continue it.
pub fn copy_rows(args: &Tree<Tensor>) -> Result<Tree<Tensor>, graph::Error> {
    let source = args.leaf("source")?;
    let mut out = Tree::new();
    for (path, c) in args.subtree("cache").iter() {
        if source.rank() != 1 || source.dims()[0] != c.dims()[0] {
            return Err(invalid(format!("source must be [{}] (one row index per cache row), got {}", c.dims()[0], source.ty())));
        }
        out.insert(format!("cache.{path}"), c.gather(source))?;
    }
    Ok(out)
}
