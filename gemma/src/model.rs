//! The Gemma 1 transformer as a function of traced parameters (HF tensor names).
//! Shapes use fixed letters: B batch, T query, S key, N heads, K kv heads, G = N/K,
//! H head_dim, D model, F MLP width, V vocab.
use crate::config::{Config, Family, LayerKind};
use crate::rules::{Layout, Logical};
use graph::{DType, DotDims, Tensor, TensorType, Tree};

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
        if cfg.family == Family::Gemma3 {
            v.push((p("self_attn.q_norm.weight"), vec![h]));
            v.push((p("self_attn.k_norm.weight"), vec![h]));
        }
        v.push((p("post_attention_layernorm.weight"), vec![d]));
        if cfg.family != Family::Gemma {
            v.push((p("pre_feedforward_layernorm.weight"), vec![d]));
            v.push((p("post_feedforward_layernorm.weight"), vec![d]));
        }
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

/// The model's traced parameters, by checkpoint name, checked against the config once so
/// that the model code can look them up without failing.
pub struct Params {
    tree: Tree<Tensor>,
    layout: Option<Layout>,
    remat: graph::Remat,
    /// LoRA adapters in `tree` beside the weights they adapt, and their scale alpha / r.
    lora: Option<crate::lora::Lora>,
    /// Run the decoder layers as a loop over their stacked weights (`graph::scan`).
    scan: bool,
    /// With `scan`: also return each layer's attention and MLP outputs.
    layers: bool,
    /// The layer weights come stacked (`model.stacked.<j>.<name>`, see `stack`); the layers
    /// then always run as a loop.
    stacked: bool,
}

impl Params {
    /// Checks that `tree` holds every tensor of `cfg` (checkpoint names, e.g.
    /// `model.layers.0.mlp.up_proj.weight`) with its shape; extra leaves are refused too.
    pub fn new(cfg: &Config, tree: Tree<Tensor>) -> Result<Params, graph::Error> {
        // Stacked layer weights (`stack`) when the tree has any.
        let stacking = crate::stack::Stacking::of(cfg);
        let stacked = tree.paths().any(|p| stacking.parse(p).is_some());
        let shapes = if stacked { stacking.shapes(cfg) } else { param_shapes(cfg) };
        for (name, dims) in &shapes {
            let t = tree.get(name).ok_or_else(|| graph::Error::Tree(format!("the model parameters have no {name}")))?;
            if &t.dims() != dims {
                return Err(graph::Error::Tree(format!("parameter {name} is {}, the config needs {dims:?}", t.ty())));
            }
        }
        if tree.len() != shapes.len() {
            let extra: Vec<&str> = tree.paths().filter(|p| !shapes.iter().any(|(n, _)| n == p)).collect();
            return Err(graph::Error::Tree(format!("unexpected model parameters: {}", extra.join(", "))));
        }
        Ok(Params { tree, layout: None, remat: graph::Remat::None, lora: None, scan: false, layers: false, stacked })
    }

    /// [`Params::new`] for a tree that also holds `lora`'s adapters (`lora.shapes(cfg)`
    /// names and shapes), applied on their projections.
    /// With the layer weights stacked (`stack`), the adapters of the stacked layers come
    /// stacked the same way (`model.stacked.<j>.<module>.lora_A.weight` `[groups, r, in]`).
    pub fn with_adapters(cfg: &Config, tree: Tree<Tensor>, lora: &crate::lora::Lora) -> Result<Params, graph::Error> {
        let stacking = crate::stack::Stacking::of(cfg);
        let stacked = tree.paths().any(|p| stacking.parse(p).is_some());
        let adapters = if stacked { stacking.stack_shapes(lora.shapes(cfg)) } else { lora.shapes(cfg) };
        let mut base = Tree::new();
        for (path, t) in tree.iter() {
            match adapters.iter().find(|(n, _)| n == path) {
                Some((_, dims)) if &t.dims() != dims => {
                    return Err(graph::Error::Tree(format!("adapter {path} is {}, LoRA rank {} needs {dims:?}", t.ty(), lora.rank)))
                }
                Some(_) => {}
                None => base.insert(path.to_string(), t.clone())?,
            }
        }
        if let Some((missing, _)) = adapters.iter().find(|(n, _)| tree.get(n).is_none()) {
            return Err(graph::Error::Tree(format!("the model parameters have no adapter {missing}")));
        }
        // Stacked adapters on per-layer weights (the other way round, the weights' stacked
        // names are left over in `base` and refused by `Params::new`).
        if Params::new(cfg, base)?.stacked != stacked {
            return Err(graph::Error::Invalid(
                "the LoRA adapters are stacked (model.stacked.<j>...) but the weights they adapt are per layer: stack both or neither"
                    .into(),
            ));
        }
        Ok(Params { tree, layout: None, remat: graph::Remat::None, lora: Some(lora.clone()), scan: false, layers: false, stacked })
    }

    /// The `params` subtree of `args`, with `lora`'s adapters when given.
    pub fn of_args(cfg: &Config, args: &Tree<Tensor>, lora: Option<&crate::lora::Lora>) -> Result<Params, graph::Error> {
        match lora {
            Some(l) => Params::with_adapters(cfg, args.subtree("params"), l),
            None => Params::new(cfg, args.subtree("params")),
        }
    }

    /// x [B, T, in] through layer `i`'s projection `module` (`self_attn.q_proj`): x W^T, plus
    /// (alpha / r) (x A^T) B^T where the module has an adapter.
    #[track_caller]
    pub(crate) fn proj(&self, x: &Tensor, i: usize, module: &str) -> Tensor {
        let y = linear(x, self.layer(i, &format!("{module}.weight")));
        match &self.lora {
            Some(l) if l.targets_module(module) => {
                let a = self.layer(i, &format!("{module}.lora_A.weight"));
                let b = self.layer(i, &format!("{module}.lora_B.weight"));
                y + linear(&linear(x, a), b) * l.scale()
            }
            _ => y,
        }
    }

    /// Decoder layers are recomputed in the backward pass as `remat` says.
    pub fn with_remat(mut self, remat: graph::Remat) -> Params {
        self.remat = remat;
        self
    }

    /// Runs the decoder layers as one loop over their weights stacked `[layers, ...]`
    /// (`graph::scan`), so the program's size does not grow with depth; `layers` also
    /// collects each layer's attention and MLP outputs (`Activations`). Values are those of
    /// the unrolled layers.
    pub fn with_scan(mut self, scan: bool, layers: bool) -> Params {
        self.scan = scan;
        self.layers = layers;
        self
    }

    /// Constrains the model's activations to `layout` (see `rules::Layout`).
    pub fn with_layout(mut self, layout: Option<Layout>) -> Params {
        self.layout = layout;
        self
    }

    /// `x` constrained to the layout of dimensions `dims`, when there is a layout.
    #[track_caller]
    pub(crate) fn constrain(&self, x: Tensor, dims: &[Option<Logical>]) -> Tensor {
        match &self.layout {
            Some(l) if l.mesh.num_devices() > 1 => x.with_sharding_constraint(&l.spec(dims)),
            _ => x,
        }
    }

    pub(crate) fn get(&self, name: &str) -> &Tensor {
        self.tree.get(name).expect("internal: checked by Params::new")
    }

    pub(crate) fn layer(&self, i: usize, name: &str) -> &Tensor {
        self.get(&format!("model.layers.{i}.{name}"))
    }

    /// Whether the layer weights come stacked (`model.stacked.<j>.<name>`, see `stack`).
    pub(crate) fn is_stacked(&self) -> bool {
        self.stacked
    }

    /// The stacked weights of position `j` in the period: (name within the layer, tensor
    /// `[groups, ...]`). Empty unless the weights come stacked.
    pub(crate) fn stacked_at(&self, j: usize) -> Vec<(String, Tensor)> {
        if !self.stacked {
            return Vec::new();
        }
        self.tree.subtree(&format!("{}.{j}", crate::stack::STACKED)).iter().map(|(name, t)| (name.to_string(), t.clone())).collect()
    }

    /// The weights of one step of a layer loop, with this model's layout and adapters: the
    /// next slices of `slices` named, in order, `model.layers.<j>.<name>` for each `name` of
    /// `names[j]` (`j` the position in the period).
    pub(crate) fn step_params<'a>(&self, names: &[Vec<String>], slices: &mut impl Iterator<Item = &'a Tensor>) -> Params {
        let mut tree = Tree::new();
        for (j, layer) in names.iter().enumerate() {
            for name in layer {
                let w = slices.next().expect("internal: one slice per stacked weight").clone();
                tree.insert(format!("model.layers.{j}.{name}"), w).expect("internal: checkpoint names are distinct paths");
            }
        }
        Params {
            tree,
            layout: self.layout.clone(),
            remat: graph::Remat::None,
            lora: self.lora.clone(),
            scan: false,
            layers: false,
            stacked: false,
        }
    }
}

/// x [B, T, D] times a torch-layout weight [out, D]: [B, T, out].
#[track_caller]
pub(crate) fn linear(x: &Tensor, w: &Tensor) -> Tensor {
    x.dot_general(w, &DotDims { lhs_contract: vec![2], rhs_contract: vec![1], ..Default::default() })
}

/// Intermediate values of one forward pass, for per-layer checks.
pub struct Activations {
    /// The scaled token embeddings `[B, T, D]`, the input of the first layer.
    pub embeddings: Tensor,
    /// Per layer: the attention output (before its residual add). With layers run as a loop
    /// (`Params::with_scan`) and not asked for, only the layers outside the loop.
    pub attention: Vec<Tensor>,
    /// Per layer: the MLP output `[B, T, D]` (before its residual add), like `attention`.
    pub mlp: Vec<Tensor>,
    /// The residual stream after the final RMSNorm, `[B, T, D]`.
    pub final_norm: Tensor,
    /// The logits `[B, T, V]`, in the parameters' dtype.
    pub logits: Tensor,
}

/// Token embeddings scaled by sqrt(D) (the scale rounded to the activation dtype, as HF
/// does): tokens [B, T] -> x [B, T, D] in the parameters' dtype.
pub fn embed(cfg: &Config, p: &Params, tokens: &Tensor) -> Tensor {
    let table = p.get("model.embed_tokens.weight");
    let scale = table.tracer().scalar(DType::F64, (cfg.hidden_size as f64).sqrt()).convert(table.dtype());
    p.constrain(table.gather(tokens) * &scale, &[Some(Logical::Batch), None, None])
}

/// The attention mask [B, T, S] (true = query t may see key s) of a causal pass over T new
/// tokens whose keys are the same T tokens; `padding` [B, T] (nonzero = real token) also
/// hides padded keys.
pub fn causal_attention_mask(tokens: &Tensor, padding: Option<&Tensor>) -> Tensor {
    let (b, t) = (tokens.dims()[0], tokens.dims()[1]);
    let mut allowed = tokens.tracer().causal_mask(t, t, 0).broadcast_in_dim(&[b, t, t], &[1, 2]);
    if let Some(m) = padding {
        let keys = m.ne(&m.scalar_like(0.0)).broadcast_in_dim(&[b, t, t], &[0, 2]);
        allowed = allowed.and(&keys);
    }
    allowed
}

/// Positions 0..T of every row: s32 [B, T].
pub fn default_positions(tokens: &Tensor) -> Tensor {
    let d = tokens.dims();
    tokens.tracer().iota(&TensorType::new(DType::S32, &[d[0], d[1]]), 1)
}

/// What one decoder layer returns.
pub struct BlockOutput {
    /// The residual stream after the layer, [B, T, D].
    pub x: Tensor,
    /// The attention and MLP outputs before their residual adds.
    pub attention: Tensor,
    /// The MLP output `[B, T, D]` (before its residual add).
    pub mlp: Tensor,
}

/// Decoder layer `i`: x [B, T, D] at integer `positions` [B, T], attending where `mask`
/// [B, T, S] (pred) is true, keys and values from x itself (S = T).
pub fn block(cfg: &Config, p: &Params, i: usize, x: &Tensor, positions: &Tensor, mask: &Tensor) -> BlockOutput {
    let h = x.rms_norm(p.layer(i, "input_layernorm.weight"), cfg.rms_norm_eps);
    let attention = attend(cfg, p, i, &h, positions, mask);
    finish_block(cfg, p, i, x, attention)
}

/// The rest of layer `i` once its attention output [B, T, D] is known: residual add, norm,
/// gated MLP, residual add.
pub(crate) fn finish_block(cfg: &Config, p: &Params, i: usize, x: &Tensor, attention: Tensor) -> BlockOutput {
    if cfg.family != Family::Gemma {
        return finish_block_sandwich(cfg, p, i, x, attention);
    }
    let x = x + &attention;
    let h = x.rms_norm(p.layer(i, "post_attention_layernorm.weight"), cfg.rms_norm_eps);
    let hidden = [Some(Logical::Batch), None, Some(Logical::Mlp)];
    let gate = p.constrain(p.proj(&h, i, "mlp.gate_proj"), &hidden).gelu_tanh();
    let up = p.constrain(p.proj(&h, i, "mlp.up_proj"), &hidden);
    let mlp = p.proj(&(gate * up), i, "mlp.down_proj");
    let x = p.constrain(&x + &mlp, &[Some(Logical::Batch), None, None]);
    BlockOutput { x, attention, mlp }
}

/// Gemma 2 and 3: a norm after attention and one before and after the MLP
/// (`post_attention_layernorm`, `pre_feedforward_layernorm`, `post_feedforward_layernorm`).
/// The returned attention and MLP outputs are those before their post-norms.
fn finish_block_sandwich(cfg: &Config, p: &Params, i: usize, x: &Tensor, attention: Tensor) -> BlockOutput {
    let eps = cfg.rms_norm_eps;
    let x = x + &attention.rms_norm(p.layer(i, "post_attention_layernorm.weight"), eps);
    let h = x.rms_norm(p.layer(i, "pre_feedforward_layernorm.weight"), eps);
    let hidden = [Some(Logical::Batch), None, Some(Logical::Mlp)];
    let gate = p.constrain(p.proj(&h, i, "mlp.gate_proj"), &hidden).gelu_tanh();
    let up = p.constrain(p.proj(&h, i, "mlp.up_proj"), &hidden);
    let mlp = p.proj(&(gate * up), i, "mlp.down_proj");
    let x = p.constrain(&x + &mlp.rms_norm(p.layer(i, "post_feedforward_layernorm.weight"), eps), &[Some(Logical::Batch), None, None]);
    BlockOutput { x, attention, mlp }
}

/// `allowed` [B, T, S] narrowed to a sliding window: query position q sees key position k
/// only if q - k < `window` (q_pos [B, T], k_pos [B, S]).
pub fn window_mask(allowed: &Tensor, q_pos: &Tensor, k_pos: &Tensor, window: i64) -> Tensor {
    let d = allowed.dims();
    let q = q_pos.convert(DType::S32).broadcast_in_dim(&d, &[0, 1]);
    let k = k_pos.convert(DType::S32).broadcast_in_dim(&d, &[0, 2]);
    let near = (&q - &k).lt(&q.scalar_like(window as f64));
    allowed.and(&near)
}

/// `block` traced as a function of (x, positions, mask, the layer's weights) and called with
/// `Function::call_remat`, so the backward pass recomputes it as `p.remat` says.
fn remat_block(cfg: &Config, p: &Params, i: usize, x: &Tensor, positions: &Tensor, mask: &Tensor) -> BlockOutput {
    let prefix = format!("model.layers.{i}");
    let weights = p.tree.subtree(&prefix);
    let mut types: Tree<TensorType> = Tree::new();
    let mut args: Tree<Tensor> = Tree::new();
    for (name, t) in [("x", x), ("positions", positions), ("mask", mask)] {
        types.insert(name, t.ty()).expect("internal: fixed names");
        args.insert(name, t.clone()).expect("internal: fixed names");
    }
    for (name, w) in weights.iter() {
        types.insert(format!("w.{name}"), w.ty()).expect("internal: checkpoint names are distinct paths");
        args.insert(format!("w.{name}"), w.clone()).expect("internal: checkpoint names are distinct paths");
    }
    let traced = graph::trace_tree(&format!("layer_{i}"), &types, |a| {
        let layer = a.subtree("w").prefixed(&prefix).expect("internal: a valid prefix");
        let inner = Params {
            tree: layer,
            layout: p.layout.clone(),
            remat: graph::Remat::None,
            lora: p.lora.clone(),
            scan: false,
            layers: false,
            stacked: false,
        };
        let out = block(
            cfg,
            &inner,
            i,
            a.leaf("x").expect("internal"),
            a.leaf("positions").expect("internal"),
            a.leaf("mask").expect("internal"),
        );
        Tree::from_leaves([("x", out.x), ("attention", out.attention), ("mlp", out.mlp)]).expect("internal: fixed names")
    });
    match traced {
        Ok(f) => {
            let flat: Vec<Tensor> =
                f.params.iter().map(|q| args.get(&q.name).expect("internal: traced from these paths").clone()).collect();
            let out = f.call_remat(&flat, p.remat);
            let named = |name: &str| f.outputs.iter().position(|o| o.name == name).and_then(|k| out.get(k).cloned());
            match (named("x"), named("attention"), named("mlp")) {
                (Some(y), Some(attention), Some(mlp)) => BlockOutput { x: y, attention, mlp },
                _ => block(cfg, p, i, x, positions, mask),
            }
        }
        // Tracing the block failed: trace it inline, where the same error is recorded and reported.
        Err(_) => block(cfg, p, i, x, positions, mask),
    }
}

/// The smallest period of the layer kinds: layer i is of the kind of layer i mod period
/// (1 for Gemma 1, 2 for Gemma 2's alternation, 6 for Gemma 3's five local layers per global).
pub fn layer_period(cfg: &Config) -> usize {
    let kinds = &cfg.layer_types[..cfg.num_hidden_layers.min(cfg.layer_types.len())];
    (1..=kinds.len().max(1)).find(|&per| kinds.iter().enumerate().all(|(i, k)| *k == kinds[i % per])).unwrap_or(1)
}

/// What `scan_layers` computed.
struct Scanned {
    /// The residual stream after the looped layers.
    x: Tensor,
    /// How many layers the loop ran (the first `count`).
    count: usize,
    /// Their attention and MLP outputs, when collected.
    attention: Vec<Tensor>,
    mlp: Vec<Tensor>,
}

/// Runs the first `groups * period` layers as a loop: each step runs one period of layers
/// (`layer_period`: one layer for Gemma 1), on weights stacked over the groups. The layers
/// after the last whole period are left to the caller. `None` when there is nothing to loop
/// or the loop body fails to trace (the caller then traces the layers inline, where the same
/// error is recorded and reported).
fn scan_layers(cfg: &Config, p: &Params, x: &Tensor, positions: &Tensor, mask: &Tensor, local: Option<&Tensor>) -> Option<Scanned> {
    let per = layer_period(cfg);
    let groups = cfg.num_hidden_layers / per;
    if groups == 0 {
        return None;
    }
    // Weights by position in the period: names under `model.layers.<j>` (adapters included),
    // or under `model.stacked.<j>` when they come stacked.
    let root = if p.stacked { crate::stack::STACKED } else { "model.layers" };
    let names: Vec<Vec<String>> = (0..per).map(|j| p.tree.subtree(&format!("{root}.{j}")).paths().map(str::to_string).collect()).collect();
    let mut stacked = Vec::new();
    for (j, layer) in names.iter().enumerate() {
        for name in layer {
            if p.stacked {
                stacked.push(p.get(&format!("{root}.{j}.{name}")).clone());
                continue;
            }
            let parts: Vec<Tensor> = (0..groups)
                .map(|g| {
                    let w = p.layer(g * per + j, name);
                    let mut dims = vec![1];
                    dims.extend(w.dims());
                    w.reshape(&dims)
                })
                .collect();
            let rest: Vec<&Tensor> = parts[1..].iter().collect();
            let all = if rest.is_empty() { parts[0].clone() } else { parts[0].concat(&rest, 0) };
            stacked.push(constrain_stacked(cfg, p, &format!("model.layers.{j}.{name}"), all));
        }
    }
    let mut consts = vec![positions.clone(), mask.clone()];
    consts.extend(local.cloned());
    let opts = graph::ScanOptions { reverse: false, remat: p.remat };
    let collect = p.layers;
    let traced = graph::scan("layers", std::slice::from_ref(x), &stacked, &consts, opts, |carry, w, k| {
        let inner = p.step_params(&names, &mut w.iter());
        let (positions, global) = (&k[0], &k[1]);
        let mut x = carry[0].clone();
        let mut ys = Vec::new();
        for j in 0..per {
            let mask = match (k.get(2), cfg.layer_types[j]) {
                (Some(l), LayerKind::Sliding) => l,
                _ => global,
            };
            let out = block(cfg, &inner, j, &x, positions, mask);
            x = out.x;
            if collect {
                ys.push(out.attention);
                ys.push(out.mlp);
            }
        }
        (vec![x], ys)
    });
    let (carry, ys) = traced.ok()?;
    let (mut attention, mut mlp) = (Vec::new(), Vec::new());
    if collect {
        for g in 0..groups as i64 {
            for j in 0..per {
                let at = |y: &Tensor| {
                    let d = y.dims();
                    let mut start = vec![0; d.len()];
                    let mut limit = d.clone();
                    start[0] = g;
                    limit[0] = g + 1;
                    y.slice(&start, &limit, &vec![1; d.len()]).reshape(&d[1..])
                };
                attention.push(at(&ys[2 * j]));
                mlp.push(at(&ys[2 * j + 1]));
            }
        }
    }
    Some(Scanned { x: carry[0].clone(), count: groups * per, attention, mlp })
}

/// A layer weight stacked `[groups, ...]`, constrained (with a layout) to the split of the
/// per-layer weight `name` on the other dimensions: the layer axis is never split.
fn constrain_stacked(cfg: &Config, p: &Params, name: &str, stacked: Tensor) -> Tensor {
    let Some(l) = p.layout.as_ref().filter(|l| l.mesh.num_devices() > 1) else { return stacked };
    let spec = match crate::lora::adapter_base(name) {
        Some(_) => crate::rules::adapter_spec(cfg, name, &l.mesh, l.fsdp),
        None => crate::rules::param_spec(cfg, name, &l.mesh, l.fsdp).ok(),
    };
    match spec {
        Some(spec) => {
            let mut dims = vec![Vec::new()];
            dims.extend(spec.dims);
            stacked.with_sharding_constraint(&sharding::PartitionSpec { dims })
        }
        None => stacked,
    }
}

/// The final norm and the tied output embedding: x [B, T, D] -> (normed x, logits [B, T, V]).
pub fn unembed(cfg: &Config, p: &Params, x: &Tensor) -> (Tensor, Tensor) {
    let normed = x.rms_norm(p.get("model.norm.weight"), cfg.rms_norm_eps);
    // The loss's gradient over the vocabulary (softmax, one-hot and soft-capping terms) is
    // computed once, into memory, and read by both matmuls of the backward pass: fused
    // into each instead, XLA's TPU compile of the train step took about 2 s longer.
    let logits = linear(&normed, p.get("model.embed_tokens.weight")).cotangent_barrier();
    let logits = match cfg.final_logit_softcapping {
        Some(cap) => (logits * (1.0 / cap)).tanh() * cap,
        None => logits,
    };
    (normed, p.constrain(logits, &[Some(Logical::Batch), None, Some(Logical::Vocab)]))
}

/// Logits [B, T, V] (in the parameters' dtype) for int tokens [B, T] at `positions` [B, T],
/// attending where `mask` [B, T, T] allows, with every intermediate value.
pub fn forward(cfg: &Config, p: &Params, tokens: &Tensor, positions: &Tensor, mask: &Tensor) -> Activations {
    let mut x = embed(cfg, p, tokens);
    let embeddings = x.clone();
    let (mut attention, mut mlp) = (Vec::new(), Vec::new());
    let local = cfg.layer_types.contains(&LayerKind::Sliding).then(|| window_mask(mask, positions, positions, cfg.sliding_window));
    let mut first = 0;
    if p.scan || p.stacked {
        if let Some(done) = scan_layers(cfg, p, &x, positions, mask, local.as_ref()) {
            x = done.x;
            first = done.count;
            attention = done.attention;
            mlp = done.mlp;
        }
    }
    for i in first..cfg.num_hidden_layers {
        let mask = match (&local, cfg.layer_types[i]) {
            (Some(l), LayerKind::Sliding) => l,
            _ => mask,
        };
        let out =
            if p.remat == graph::Remat::None { block(cfg, p, i, &x, positions, mask) } else { remat_block(cfg, p, i, &x, positions, mask) };
        x = out.x;
        attention.push(out.attention);
        mlp.push(out.mlp);
    }
    let (final_norm, logits) = unembed(cfg, p, &x);
    Activations { embeddings, attention, mlp, final_norm, logits }
}

/// Causal self-attention of layer `i` with grouped KV heads; softmax in f32 (f64 for f64).
fn attend(cfg: &Config, p: &Params, i: usize, x: &Tensor, positions: &Tensor, allowed: &Tensor) -> Tensor {
    let (q, k, v) = project_qkv(cfg, p, i, x, positions);
    attention_output(cfg, p, i, &q, &k, &v, allowed)
}

/// Layer `i`'s queries [B, T, N, H] and keys and values [B, T, K, H] of x [B, T, D] at
/// `positions` [B, T], RoPE applied to queries and keys.
pub(crate) fn project_qkv(cfg: &Config, p: &Params, i: usize, x: &Tensor, positions: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (b, t) = (x.dims()[0], x.dims()[1]);
    let (n, k, h) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let q = p.proj(x, i, "self_attn.q_proj").reshape(&[b, t, n, h]);
    let q = p.constrain(q, &[Some(Logical::Batch), None, Some(Logical::Heads), None]);
    let kk = p.proj(x, i, "self_attn.k_proj").reshape(&[b, t, k, h]);
    // Gemma 3: RMSNorm (1 + w) over each head's width, before RoPE.
    let (q, kk) = if cfg.family == Family::Gemma3 {
        (
            q.rms_norm(p.layer(i, "self_attn.q_norm.weight"), cfg.rms_norm_eps),
            kk.rms_norm(p.layer(i, "self_attn.k_norm.weight"), cfg.rms_norm_eps),
        )
    } else {
        (q, kk)
    };
    // Local layers have their own RoPE base; global ones may scale positions linearly.
    let (theta, factor) =
        if cfg.layer_types[i] == LayerKind::Sliding { (cfg.rope_local_theta, 1.0) } else { (cfg.rope_theta, cfg.rope_scaling_factor) };
    let (q, kk) = (q.rope_scaled(positions, theta, factor), kk.rope_scaled(positions, theta, factor));
    let v = p.proj(x, i, "self_attn.v_proj").reshape(&[b, t, k, h]);
    (q, kk, v)
}

/// Attention of queries q [B, T, N, H] over keys and values [B, S, K, H] where `allowed`
/// [B, T, S] (pred) is true, then layer `i`'s output projection: [B, T, D].
pub(crate) fn attention_output(cfg: &Config, p: &Params, i: usize, q: &Tensor, kk: &Tensor, v: &Tensor, allowed: &Tensor) -> Tensor {
    let (b, t) = (q.dims()[0], q.dims()[1]);
    let s = allowed.dims()[2];
    let (n, k, h) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
    let g = n / k;
    // Query head n = kv head * G + group member, as HF's repeat_kv pairs them.
    let q = q.reshape(&[b, t, k, g, h]);
    // scores [B, K, T, G, S]
    let scores = q.dot_general(kk, &DotDims { lhs_batch: vec![0, 2], rhs_batch: vec![0, 2], lhs_contract: vec![4], rhs_contract: vec![3] });
    let wide = if q.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let scores = scores.convert(wide) * cfg.query_pre_attn_scalar.powf(-0.5);
    // Gemma 2: soft-capped scores, before the mask.
    let scores = match cfg.attn_logit_softcapping {
        Some(cap) => (scores * (1.0 / cap)).tanh() * cap,
        None => scores,
    };
    let shape = [b, k, t, g, s];
    let mask = allowed.broadcast_in_dim(&shape, &[0, 2, 4]);
    let lowest = scores.scalar_like(f32::MIN as f64);
    let probs = Tensor::select(&mask, &scores, &lowest).softmax(4).convert(q.dtype());
    // out [B, K, T, G, H] -> [B, T, K, G, H] -> [B, T, N*H]
    let out = probs.dot_general(v, &DotDims { lhs_batch: vec![0, 1], rhs_batch: vec![0, 2], lhs_contract: vec![4], rhs_contract: vec![1] });
    let out = out.transpose(&[0, 2, 1, 3, 4]).reshape(&[b, t, n * h]);
    p.proj(&out, i, "self_attn.o_proj")
}

/// Mean next-token cross-entropy of logits[:, :-1] against tokens[:, 1:] (what transformers
/// computes with labels=input_ids), in f32 (f64 for f64 logits); `loss_mask` [B, T] weights the target tokens.
///
/// The logits are not sliced to [B, T-1, V] (a copy forward and a padding copy backward of
/// the largest activation): every position gets a target (the next token, and token 0 at the
/// last position) and the last position a weight of zero, so the mean is still over the
/// B*(T-1) (masked) targets.
pub fn loss(logits: &Tensor, tokens: &Tensor, loss_mask: Option<&Tensor>) -> Tensor {
    let d = logits.dims();
    let (b, t) = (d[0], d[1]);
    let shift = |x: &Tensor| x.slice(&[0, 1], &[b, t], &[1, 1]).concat(&[&x.slice(&[0, 0], &[b, 1], &[1, 1]).zeros_like()], 1);
    let weight = match loss_mask {
        None => shift(&(tokens.zeros_like() + 1.0)),
        Some(m) => shift(m),
    };
    logits.cross_entropy(&shift(tokens), Some(&weight))
}

/// What `trace_model` adds to the plain loss-and-logits function.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelOptions {
    /// Outputs `layer.embeddings`, `layer.<i>.attention`, `layer.<i>.mlp`, `layer.final_norm`.
    pub layers: bool,
    /// Takes a `mask` [B, T] argument (nonzero = real token): padded keys are hidden from
    /// attention and padded targets are left out of the loss.
    pub mask: bool,
    /// Recompute each decoder layer in the backward pass (`graph::Remat`); values unchanged.
    pub remat: graph::Remat,
    /// Takes a `weights` [B, T] argument (f32): the loss weight of each token as a target
    /// (token t+1's weight counts for the prediction made at t); the loss is
    /// sum(w * CE) / sum(w) over the whole batch. Replaces `mask` as the loss's weights.
    pub weights: bool,
    /// Run the decoder layers as one loop over their stacked weights (`graph::scan`, one
    /// period of layer kinds per step) instead of one copy of the layer per layer in the
    /// program (`--scan-layers`); values are unchanged, and `remat` applies to the loop body.
    pub scan: bool,
    /// The parameters' layer weights are stacked (`model.stacked.<j>.<name>` `[groups, ...]`,
    /// see `stack`), as a train state for `scan` holds them; implies `scan`.
    pub stacked: bool,
}

/// The argument types of `trace_model`: `params.<checkpoint name>` in `dtype`, `tokens`
/// [B, T] (s32) and, with `opts.mask`, `mask` [B, T] (s32).
pub fn model_args(cfg: &Config, dtype: DType, batch: i64, seq: i64, opts: ModelOptions) -> Tree<TensorType> {
    let mut t = Tree::new();
    let shapes = if opts.stacked { crate::stack::Stacking::of(cfg).shapes(cfg) } else { param_shapes(cfg) };
    for (name, dims) in shapes {
        t.insert(format!("params.{name}"), TensorType::new(dtype, &dims)).expect("internal: checkpoint names are distinct paths");
    }
    let ids = TensorType::new(DType::S32, &[batch, seq]);
    t.insert("tokens", ids.clone()).expect("internal: fixed name");
    if opts.mask {
        t.insert("mask", ids).expect("internal: fixed name");
    }
    if opts.weights {
        t.insert("weights", TensorType::new(DType::F32, &[batch, seq])).expect("internal: fixed name");
    }
    t
}

/// `loss(forward(params, tokens))` over a tree of arguments (see `model_args`). Outputs:
/// `loss`, `logits` (f32, or f64 for f64 models), then the per-layer values if asked for.
pub fn model(cfg: &Config, args: &Tree<Tensor>, opts: ModelOptions) -> Result<Tree<Tensor>, graph::Error> {
    model_with_layout(cfg, args, opts, None)
}

/// `model` with its activations constrained to `layout` (for sharded training).
pub fn model_with_layout(
    cfg: &Config,
    args: &Tree<Tensor>,
    opts: ModelOptions,
    layout: Option<Layout>,
) -> Result<Tree<Tensor>, graph::Error> {
    model_with_adapters(cfg, args, opts, layout, None)
}

/// [`model_with_layout`] where `params` also holds `lora`'s adapters (see `lora::Lora::shapes`).
pub fn model_with_adapters(
    cfg: &Config,
    args: &Tree<Tensor>,
    opts: ModelOptions,
    layout: Option<Layout>,
    lora: Option<&crate::lora::Lora>,
) -> Result<Tree<Tensor>, graph::Error> {
    let p = Params::of_args(cfg, args, lora)?.with_layout(layout).with_remat(opts.remat).with_scan(opts.scan, opts.layers);
    let tokens = args.leaf("tokens")?;
    let mask = if opts.mask { Some(args.leaf("mask")?) } else { None };
    for (name, t) in [("tokens", Some(tokens)), ("mask", mask)] {
        match t {
            Some(t) if t.rank() != 2 || t.dims()[1] < 2 || !t.dtype().is_int() || t.dims() != tokens.dims() => {
                return Err(graph::Error::Invalid(format!("{name} must be integer [batch, seq] with seq >= 2, got {}", t.ty())));
            }
            _ => {}
        }
    }
    let weights = if opts.weights { Some(args.leaf("weights")?) } else { None };
    if let Some(w) = weights.filter(|w| w.dims() != tokens.dims()) {
        return Err(graph::Error::Invalid(format!("weights must be [batch, seq] like tokens {}, got {}", tokens.ty(), w.ty())));
    }
    let out = forward(cfg, &p, tokens, &default_positions(tokens), &causal_attention_mask(tokens, mask));
    let wide = if out.logits.dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let mut t = Tree::new().with("loss", loss(&out.logits, tokens, weights.or(mask)))?.with("logits", out.logits.convert(wide))?;
    if opts.layers {
        t.insert("layer.embeddings", out.embeddings.convert(wide))?;
        for (i, (att, mlp)) in out.attention.iter().zip(&out.mlp).enumerate() {
            t.insert(format!("layer.{i}.attention"), att.convert(wide))?;
            t.insert(format!("layer.{i}.mlp"), mlp.convert(wide))?;
        }
        t.insert("layer.final_norm", out.final_norm.convert(wide))?;
    }
    Ok(t)
}

/// `model` traced for these sizes into a `Function`.
pub fn trace_model(cfg: &Config, dtype: DType, batch: i64, seq: i64, opts: ModelOptions) -> Result<graph::Function, graph::Error> {
    let args = model_args(cfg, dtype, batch, seq, opts);
    let mut failed = None;
    let f = graph::trace_tree("gemma", &args, |a| {
        model(cfg, a, opts).unwrap_or_else(|e| {
            failed = Some(e);
            Tree::new()
        })
    });
    match failed {
        Some(e) => Err(e),
        None => f,
    }
}

/// `trace_model` without the per-layer outputs.
pub fn trace_loss(cfg: &Config, dtype: DType, batch: i64, seq: i64) -> Result<graph::Function, graph::Error> {
    trace_model(cfg, dtype, batch, seq, ModelOptions::default())
}
