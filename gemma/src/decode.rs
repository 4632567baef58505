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
use crate::stack::Stacking;
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
    cache_types_with(cfg, dtype, batch, cache_len, false)
}

/// The prefix of a cache stacked by layer (see [`cache_types_with`]).
pub const CACHE_STACKED: &str = "cache.stacked";

/// [`cache_types`]; with `stacked` (the layer weights stacked, `stack::Stacking`) the layers
/// of the whole periods share `cache.stacked.<j>.k` and `.v` [groups, B, slots, K, H] by
/// their position `j` in the period (entry `g` is layer `g * period + j`'s), so the layer
/// loop reads and writes its slice; the layers after the last whole period keep their own.
pub fn cache_types_with(cfg: &Config, dtype: DType, batch: i64, cache_len: i64, stacked: bool) -> Vec<(String, TensorType)> {
    let st = Stacking::of(cfg);
    let mut out = Vec::new();
    let first = if stacked && st.any() {
        for j in 0..st.period {
            let mut dims = vec![st.groups as i64];
            dims.extend(cache_dims(cfg, batch, layer_slots(cfg, j, cache_len)));
            let ty = TensorType::new(dtype, &dims);
            out.push((format!("{CACHE_STACKED}.{j}.k"), ty.clone()));
            out.push((format!("{CACHE_STACKED}.{j}.v"), ty));
        }
        st.groups * st.period
    } else {
        0
    };
    for i in first..cfg.num_hidden_layers {
        let ty = TensorType::new(dtype, &cache_dims(cfg, batch, layer_slots(cfg, i, cache_len)));
        out.push((format!("cache.{i}.k"), ty.clone()));
        out.push((format!("cache.{i}.v"), ty));
    }
    out
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
    extend_args_with(cfg, dtype, batch, tokens, cache_len, false)
}

/// [`extend_args`]; with `stacked` the layer weights are stacked (`stack::Stacking`) and the
/// cache with them ([`cache_types_with`]): `extend` then runs the layers as a loop.
pub fn extend_args_with(cfg: &Config, dtype: DType, batch: i64, tokens: i64, cache_len: i64, stacked: bool) -> Tree<TensorType> {
    let mut t = Tree::new();
    let shapes = if stacked { Stacking::of(cfg).shapes(cfg) } else { crate::model::param_shapes(cfg) };
    for (name, dims) in shapes {
        t.insert(format!("params.{name}"), TensorType::new(dtype, &dims)).expect("internal: checkpoint names are distinct paths");
    }
    for (path, ty) in cache_types_with(cfg, dtype, batch, cache_len, stacked && Stacking::of(cfg).any()) {
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
    // Stacked weights come with a stacked cache, and the layers of the whole periods run as
    // one loop over both.
    let st = Stacking::of(cfg);
    let stacked = p.is_stacked();
    // S: the slots of a global layer's cache (every layer's, when none slides).
    let full = (0..cfg.num_hidden_layers).find(|&i| cfg.layer_types.get(i) != Some(&LayerKind::Sliding)).unwrap_or(0);
    let (full_path, slot_axis) = match stacked && full < st.groups * st.period {
        true => (format!("{CACHE_STACKED}.{}.k", full % st.period), 2),
        false => (format!("cache.{full}.k"), 1),
    };
    let s = args.leaf(&full_path).map(|c| c.dims().get(slot_axis).copied().unwrap_or(0)).unwrap_or(0);
    if s < 1 {
        return Err(invalid("the cache needs at least one slot".into()));
    }
    let types = cache_types_with(cfg, dtype, b, s, stacked);
    for (path, want) in &types {
        let c = args.leaf(path)?;
        if &c.ty() != want {
            return Err(invalid(format!("{path} must be {want} (for a cache of {s} slots), got {}", c.ty())));
        }
    }
    if args.subtree("cache").len() != types.len() {
        let names: Vec<&str> = types.iter().map(|(n, _)| n.as_str()).collect();
        return Err(invalid(format!("the cache must hold exactly {} tensors: {}", types.len(), names.join(", "))));
    }

    let geo = Geometry { b, t, s, k: cfg.num_key_value_heads, h: cfg.head_dim };
    let masks = Masks::new(cfg, tokens, start, lengths, &geo);
    let tokens = tokens.convert(DType::S32);
    let mut out = Tree::new();
    let mut x = embed(cfg, &p, &tokens);
    let first = if stacked && st.any() {
        // One loop step runs a period of layers: its weights' and its caches' slices.
        let mut names = Vec::new();
        let mut xs = Vec::new();
        for j in 0..st.period {
            let weights = p.stacked_at(j);
            names.push(weights.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>());
            xs.extend(weights.into_iter().map(|(_, w)| w));
        }
        for j in 0..st.period {
            xs.push(args.leaf(&format!("{CACHE_STACKED}.{j}.k"))?.clone());
            xs.push(args.leaf(&format!("{CACHE_STACKED}.{j}.v"))?.clone());
        }
        let opts = graph::ScanOptions { reverse: false, remat: graph::Remat::None };
        let r = masks.ring.as_ref().map(|g| g.r);
        let (carry, ys) = graph::scan("layers", std::slice::from_ref(&x), &xs, &masks.to_vec(), opts, |carry, sl, consts| {
            let mut it = sl.iter();
            let inner = p.step_params(&names, &mut it);
            let m = Masks::from_vec(consts, r);
            let mut x = carry[0].clone();
            let mut ys = Vec::new();
            for j in 0..st.period {
                let (k_old, v_old) = (it.next().expect("internal: a k cache per position"), it.next().expect("internal: a v cache"));
                let (next, k_all, v_all) = layer_step(cfg, &inner, j, &x, k_old, v_old, &m, &geo);
                x = next;
                ys.push(k_all);
                ys.push(v_all);
            }
            (vec![x], ys)
        })?;
        x = carry[0].clone();
        for j in 0..st.period {
            out.insert(format!("{CACHE_STACKED}.{j}.k"), ys[2 * j].clone())?;
            out.insert(format!("{CACHE_STACKED}.{j}.v"), ys[2 * j + 1].clone())?;
        }
        st.groups * st.period
    } else {
        0
    };
    for i in first..cfg.num_hidden_layers {
        let (k_old, v_old) = (args.leaf(&format!("cache.{i}.k"))?, args.leaf(&format!("cache.{i}.v"))?);
        let (next, k_all, v_all) = layer_step(cfg, &p, i, &x, k_old, v_old, &masks, &geo);
        x = next;
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
            let ids = &x.tracer().iota(&TensorType::new(DType::S32, &[b]), 0) * (t as f64) + &last;
            let x_last = x.reshape(&[b * t, d]).gather(&ids).reshape(&[b, 1, d]);
            unembed(cfg, &p, &x_last).1.reshape(&[b, cfg.vocab_size])
        }
    };
    out.insert("logits", logits.convert(wide))?;
    Ok(out)
}

/// The sizes `extend` works with: B rows of T new tokens, S slots per global layer's cache,
/// K kv heads of H dims.
#[derive(Clone, Copy)]
struct Geometry {
    b: i64,
    t: i64,
    s: i64,
    k: i64,
    h: i64,
}

/// What every layer of one `extend` call shares: where the new tokens are and which slots
/// each query sees.
struct Masks {
    /// [B, T] s32: start + t.
    positions: Tensor,
    /// [B, T, S]: query t of row b sees slot s of a global cache (s <= its position).
    allowed: Tensor,
    /// [B, T] s32: the row of the flattened [B*S, K*H] global cache each new token goes to
    /// (B*S, dropped by the scatter, past the last slot).
    rows: Tensor,
    /// [B, S]: the slots being written (start <= s < start + T).
    written: Tensor,
    /// Sliding layers' ring of R slots, when any layer slides.
    ring: Option<Ring>,
}

struct Ring {
    r: i64,
    /// [B, T, R + T]: the ring's earlier positions then the new tokens, valid, causal and
    /// within the window.
    mask: Tensor,
    /// [B, T] s32: the ring row each real new token among the last R goes to (or B*R).
    rows: Tensor,
    /// [B, R]: the ring slots written.
    written: Tensor,
}

impl Masks {
    fn new(cfg: &Config, tokens: &Tensor, start: &Tensor, lengths: &Tensor, g: &Geometry) -> Masks {
        let Geometry { b, t, s, .. } = *g;
        let tr = tokens.tracer();
        let s32 = |dims: &[i64]| TensorType::new(DType::S32, dims);
        let positions = &start.broadcast_in_dim(&[b, t], &[0]) + &tr.iota(&s32(&[b, t]), 1);
        let slot = tr.iota(&s32(&[b, t, s]), 2);
        let allowed = slot.le(&positions.broadcast_in_dim(&[b, t, s], &[0, 1]));
        let inside = positions.lt(&positions.scalar_like(s as f64));
        let row = &tr.iota(&s32(&[b, t]), 0) * (s as f64) + &positions;
        let rows = Tensor::select(&inside, &row, &row.scalar_like((b * s) as f64));
        let slot_bs = tr.iota(&s32(&[b, s]), 1);
        let first = start.broadcast_in_dim(&[b, s], &[0]);
        let written = slot_bs.ge(&first).and(&slot_bs.lt(&(&first + (t as f64))));
        // Sliding layers: a ring of R slots (position p in slot p mod R). Their keys are the
        // ring's earlier positions then the T new tokens, masked by position: valid, causal
        // and within the window.
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
            let window = qp.scalar_like(cfg.sliding_window as f64);
            let mask = valid.broadcast_in_dim(&dims, &[0, 2]).and(&kp.le(&qp)).and(&(&qp - &kp).lt(&window));
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
            Ring { r, mask, rows, written }
        });
        Masks { positions, allowed, rows, written, ring }
    }

    /// The tensors, in the order [`Masks::from_vec`] reads them (a layer loop's constants).
    fn to_vec(&self) -> Vec<Tensor> {
        let mut v = vec![self.positions.clone(), self.allowed.clone(), self.rows.clone(), self.written.clone()];
        if let Some(g) = &self.ring {
            v.extend([g.mask.clone(), g.rows.clone(), g.written.clone()]);
        }
        v
    }

    fn from_vec(v: &[Tensor], r: Option<i64>) -> Masks {
        let ring = r.map(|r| Ring { r, mask: v[4].clone(), rows: v[5].clone(), written: v[6].clone() });
        Masks { positions: v[0].clone(), allowed: v[1].clone(), rows: v[2].clone(), written: v[3].clone(), ring }
    }
}

/// Layer `i` of `p` (the weights `model.layers.<i>.*`, the kind `cfg.layer_types[i]`) over
/// x [B, T, D] with its caches: the layer's output and the new caches.
#[allow(clippy::too_many_arguments)]
fn layer_step(
    cfg: &Config,
    p: &Params,
    i: usize,
    x: &Tensor,
    k_old: &Tensor,
    v_old: &Tensor,
    m: &Masks,
    g: &Geometry,
) -> (Tensor, Tensor, Tensor) {
    let Geometry { b, t, s, k, h } = *g;
    let cache_axes = rules::cache_logical(cfg);
    // A global cache: the slots being written cleared, then the new rows added.
    let write = |cache: &Tensor, new: &Tensor| -> Tensor {
        let dims = [b, s, k, h];
        let keep = m.written.broadcast_in_dim(&dims, &[0, 1]);
        let cleared = Tensor::select(&keep, &cache.scalar_like(0.0), cache);
        let flat = cleared.reshape(&[b * s, k * h]);
        let updates = new.convert(cache.dtype()).reshape(&[b, t, k * h]);
        p.constrain(flat.scatter_add(&m.rows, &updates).reshape(&dims), &cache_axes)
    };
    let ring_write = |old: &Tensor, new: &Tensor, ring: &Ring| -> Tensor {
        let dims = [b, ring.r, k, h];
        let fresh =
            old.zeros_like().reshape(&[b * ring.r, k * h]).scatter_add(&ring.rows, &new.convert(old.dtype()).reshape(&[b, t, k * h]));
        let put = Tensor::select(&ring.written.broadcast_in_dim(&dims, &[0, 1]), &fresh.reshape(&dims), old);
        p.constrain(put, &cache_axes)
    };
    let normed = x.rms_norm(p.layer(i, "input_layernorm.weight"), cfg.rms_norm_eps);
    let (q, k_new, v_new) = project_qkv(cfg, p, i, &normed, &m.positions);
    let (attention, k_all, v_all) = match (&m.ring, cfg.layer_types[i]) {
        (Some(ring), LayerKind::Sliding) => {
            let keys = k_old.concat(&[&k_new.convert(k_old.dtype())], 1);
            let values = v_old.concat(&[&v_new.convert(v_old.dtype())], 1);
            let attention = attention_output(cfg, p, i, &q, &keys, &values, &ring.mask);
            (attention, ring_write(k_old, &k_new, ring), ring_write(v_old, &v_new, ring))
        }
        _ => {
            let (k_all, v_all) = (write(k_old, &k_new), write(v_old, &v_new));
            let attention = attention_output(cfg, p, i, &q, &k_all, &v_all, &m.allowed);
            (attention, k_all, v_all)
        }
    };
    (finish_block(cfg, p, i, x, attention).x, k_all, v_all)
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
        // A stacked cache (`cache.stacked.*`) has its rows on dimension 1.
        let row_axis = usize::from(path.starts_with("stacked."));
        let rows = c.dims().get(row_axis).copied().unwrap_or(0);
        if source.rank() != 1 || source.dims()[0] != rows {
            return Err(invalid(format!("source must be [{rows}] (one row index per row of cache.{path}), got {}", source.ty())));
        }
        let copied = match row_axis {
            0 => c.gather(source),
            _ => {
                let mut perm: Vec<usize> = (0..c.rank()).collect();
                perm.swap(0, 1);
                c.transpose(&perm).gather(source).transpose(&perm)
            }
        };
        out.insert(format!("cache.{path}"), copied)?;
    }
    Ok(out)
}
