//! Gemma's sharding rules: every tensor dimension has a logical axis (named like MaxText's),
//! and one table says which mesh axes each logical axis is split over, with and without FSDP.
//!
//! Batch goes over `data`; heads, MLP hidden and vocab over `model` (tensor parallel); with
//! FSDP the `embed` dimension of every weight (and so of its gradient and optimizer state) is
//! also split over `data` (ZeRO-3 style; XLA gathers a layer's weights when it needs them).
//! A single kv head (2B) is never split: its projections stay replicated over `model`.
//! The rules depend on the config and the mesh only; random initialisation must not depend on
//! them (it depends on the seed alone).
use crate::{param_shapes, Config, Error};
use sharding::{Mesh, PartitionSpec};

/// What a tensor dimension means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Logical {
    /// Sequences of a batch.
    Batch,
    /// Positions within a sequence.
    Seq,
    /// Token ids of the vocabulary (rows of the tied embedding).
    Vocab,
    /// The model width D (the residual stream).
    Embed,
    /// Query heads times head_dim (N x H), split by whole heads.
    Heads,
    /// Key/value heads times head_dim (K x H) when K > 1, split by whole heads.
    KvHeads,
    /// One head's width H: the head_dim of a single key/value head (K = 1), Gemma 3's QK-norm
    /// weights. Never split.
    KvHeadDim,
    /// The MLP hidden width F.
    Mlp,
}

use Logical::*;

/// The mesh axes these rules know.
pub const MESH_AXES: [&str; 2] = ["data", "model"];

/// The rules. A mesh axis the mesh lacks is skipped (a mesh `model=8` splits nothing over `data`).
const RULES: &[(Logical, &[&str], &[&str])] = &[
    // logical    split over      also with --fsdp
    (Batch, &["data"], &[]),
    (Seq, &[], &[]),
    (Vocab, &["model"], &[]),
    (Embed, &[], &["data"]),
    (Heads, &["model"], &[]),
    (KvHeads, &["model"], &[]),
    (KvHeadDim, &[], &[]),
    (Mlp, &["model"], &[]),
];

/// The logical axes of the checkpoint tensors outside the layers (HF names).
const GLOBAL_TENSORS: &[(&str, &[Logical])] = &[("model.embed_tokens.weight", &[Vocab, Embed]), ("model.norm.weight", &[Embed])];

/// The logical axes of each layer's tensors (names after `model.layers.{i}.`; torch layout [out, in]).
const LAYER_TENSORS: &[(&str, &[Logical])] = &[
    ("input_layernorm.weight", &[Embed]),
    ("self_attn.q_proj.weight", &[Heads, Embed]),
    ("self_attn.k_proj.weight", &[KvHeads, Embed]),
    ("self_attn.v_proj.weight", &[KvHeads, Embed]),
    ("self_attn.o_proj.weight", &[Embed, Heads]),
    ("post_attention_layernorm.weight", &[Embed]),
    // Gemma 2 and 3: the norms around the MLP; Gemma 3: QK-norm over one head's width.
    ("pre_feedforward_layernorm.weight", &[Embed]),
    ("post_feedforward_layernorm.weight", &[Embed]),
    ("self_attn.q_norm.weight", &[KvHeadDim]),
    ("self_attn.k_norm.weight", &[KvHeadDim]),
    ("mlp.gate_proj.weight", &[Mlp, Embed]),
    ("mlp.up_proj.weight", &[Mlp, Embed]),
    ("mlp.down_proj.weight", &[Embed, Mlp]),
];

impl Logical {
    /// The axis's snake_case name, as in messages (`batch`, `kv_heads`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Batch => "batch",
            Seq => "seq",
            Vocab => "vocab",
            Embed => "embed",
            Heads => "heads",
            KvHeads => "kv_heads",
            KvHeadDim => "kv_head_dim",
            Mlp => "mlp",
        }
    }

    /// The mesh axes this logical axis is split over (before dropping those a mesh lacks).
    pub fn mesh_axes(self, fsdp: bool) -> Vec<&'static str> {
        let (_, always, with_fsdp) = RULES.iter().find(|r| r.0 == self).copied().unwrap_or((self, &[], &[]));
        let mut axes = always.to_vec();
        if fsdp {
            axes.extend(with_fsdp.iter().copied());
        }
        axes
    }

    /// How many units a dimension of `size` holds for divisibility: whole heads for the
    /// head axes, single elements otherwise.
    fn units(self, cfg: &Config, size: i64) -> i64 {
        match self {
            Heads => cfg.num_attention_heads,
            KvHeads => cfg.num_key_value_heads,
            _ => size,
        }
    }
}

/// The logical axis of each dimension of checkpoint tensor `name` (HF names, as
/// `param_shapes` lists them). Key/value projections of a single kv head get `KvHeadDim`.
pub fn logical_axes(cfg: &Config, name: &str) -> Result<Vec<Logical>, Error> {
    let unknown = || Error::UnknownTensor { name: name.to_string() };
    let axes = match layer_suffix(cfg, name) {
        Some(rest) => LAYER_TENSORS.iter().find(|t| t.0 == rest),
        None => GLOBAL_TENSORS.iter().find(|t| t.0 == name),
    }
    .ok_or_else(unknown)?
    .1;
    Ok(axes.iter().map(|&l| if l == KvHeads { kv_axis(cfg) } else { l }).collect())
}

/// The logical axis of the key/value projections' output dimension: `KvHeads`, or
/// `KvHeadDim` for a single kv head (multi-query attention, as in 2B).
pub fn kv_axis(cfg: &Config) -> Logical {
    if cfg.num_key_value_heads > 1 {
        KvHeads
    } else {
        KvHeadDim
    }
}

/// `self_attn.q_proj.weight` for `model.layers.3.self_attn.q_proj.weight` (layer in range).
fn layer_suffix<'a>(cfg: &Config, name: &'a str) -> Option<&'a str> {
    let (layer, rest) = name.strip_prefix("model.layers.")?.split_once('.')?;
    let i: usize = layer.parse().ok()?;
    (i < cfg.num_hidden_layers && layer == i.to_string()).then_some(rest)
}

/// Refuses mesh axes that no rule knows, naming the known ones.
pub fn check_mesh(mesh: &Mesh) -> Result<(), Error> {
    match mesh.axes().iter().find(|(a, _)| !MESH_AXES.contains(&a.as_str())) {
        Some((axis, _)) => Err(Error::UnknownMeshAxis { axis: axis.clone(), known: MESH_AXES.join(", ") }),
        None => Ok(()),
    }
}

/// The mesh axes of `mesh` that `logical` is split over, and the product of their sizes.
pub fn split(logical: Logical, mesh: &Mesh, fsdp: bool) -> (Vec<String>, i64) {
    let axes: Vec<String> = logical.mesh_axes(fsdp).into_iter().filter(|a| mesh.axis_size(a).is_some()).map(String::from).collect();
    let size = axes.iter().filter_map(|a| mesh.axis_size(a)).product();
    (axes, size)
}

/// Dimension `dim` of `tensor` (`size` elements: `units` of `logical`) is split over mesh
/// axes `axis` (sizes multiplied: `axis_size`), which do not divide `units`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{tensor}: dimension {dim} ({}) is split over mesh axis {axis}={axis_size}, which does not divide {units}{}; {suggestion}",
    describe_dim(*.size, *.units, logical), also_text(also)
)]
pub struct ShardingError {
    /// The checkpoint tensor's name.
    pub tensor: String,
    /// The dimension's index in the tensor (0-based).
    pub dim: usize,
    /// The dimension's size in elements.
    pub size: i64,
    /// The dimension's logical axis (`Logical::name`).
    pub logical: &'static str,
    /// What must divide evenly: the number of heads for the head axes, else the size.
    pub units: i64,
    /// The mesh axes the dimension is split over, comma-separated.
    pub axis: String,
    /// The product of those mesh axes' sizes.
    pub axis_size: i64,
    /// Other logical axes this mesh cannot split, one tensor each.
    pub also: Vec<String>,
    /// The meshes of the same device count that would work.
    pub suggestion: String,
}

/// "size 4096: 16 heads" or "size 3072, embed".
fn describe_dim(size: i64, units: i64, logical: &str) -> String {
    if size == units {
        format!("size {size}, {logical}")
    } else {
        format!("size {size}: {units} {logical}")
    }
}

fn also_text(also: &[String]) -> String {
    if also.is_empty() {
        String::new()
    } else {
        format!("; also not divisible: {}", also.join("; "))
    }
}

/// A dimension that its axes do not divide (before suggestions are worked out).
struct Failure {
    tensor: String,
    dim: usize,
    size: i64,
    logical: Logical,
    units: i64,
    axis: String,
    axis_size: i64,
}

/// The spec of one tensor of shape `dims`, or the first dimension its axes do not divide.
fn spec_of(cfg: &Config, name: &str, dims: &[i64], mesh: &Mesh, fsdp: bool) -> Result<Result<PartitionSpec, Failure>, Error> {
    let logical = logical_axes(cfg, name)?;
    let mut spec = PartitionSpec::replicated(dims.len());
    for (dim, (&size, &l)) in dims.iter().zip(&logical).enumerate() {
        let (axes, split_size) = split(l, mesh, fsdp);
        let units = l.units(cfg, size);
        if units % split_size != 0 {
            let axis = axes.join(",");
            return Ok(Err(Failure { tensor: name.to_string(), dim, size, logical: l, units, axis, axis_size: split_size }));
        }
        spec.dims[dim] = axes;
    }
    Ok(Ok(spec))
}

/// Every tensor's spec, or the failures (the first, then one per other logical axis at fault).
type Specs = Result<Vec<(String, PartitionSpec)>, (Failure, Vec<Failure>)>;

fn try_specs(cfg: &Config, mesh: &Mesh, fsdp: bool) -> Result<Specs, Error> {
    let mut specs = Vec::new();
    let mut failures: Vec<Failure> = Vec::new();
    for (name, dims) in param_shapes(cfg) {
        match spec_of(cfg, &name, &dims, mesh, fsdp)? {
            Ok(spec) => specs.push((name, spec)),
            Err(f) => {
                if !failures.iter().any(|g| g.logical == f.logical) {
                    failures.push(f);
                }
            }
        }
    }
    let mut failures = failures.into_iter();
    Ok(match failures.next() {
        None => Ok(specs),
        Some(first) => Err((first, failures.collect())),
    })
}

/// The spec of checkpoint tensor `name` over `mesh` (with `fsdp`, also over `data`).
pub fn param_spec(cfg: &Config, name: &str, mesh: &Mesh, fsdp: bool) -> Result<PartitionSpec, Error> {
    check_mesh(mesh)?;
    // A stacked weight (`model.stacked.<j>.<name>`, see `stack`): its layers' split, the
    // layer axis never split.
    if let Some(first) = crate::stack::Stacking::of(cfg).layer_name(name, 0) {
        let inner = param_spec(cfg, &first, mesh, fsdp)?;
        let mut dims = vec![Vec::new()];
        dims.extend(inner.dims);
        return Ok(PartitionSpec { dims });
    }
    let dims = param_shapes(cfg).into_iter().find(|(n, _)| n == name).ok_or_else(|| Error::UnknownTensor { name: name.into() })?.1;
    spec_of(cfg, name, &dims, mesh, fsdp)?.map_err(|f| sharding_error(cfg, mesh, fsdp, f, Vec::new()))
}

/// Every checkpoint tensor's spec, in `param_shapes` order. A dimension its axes do not
/// divide is an error naming the tensor, dimension and axis, and the meshes that would work.
pub fn param_specs(cfg: &Config, mesh: &Mesh, fsdp: bool) -> Result<Vec<(String, PartitionSpec)>, Error> {
    check_mesh(mesh)?;
    try_specs(cfg, mesh, fsdp)?.map_err(|(first, rest)| sharding_error(cfg, mesh, fsdp, first, rest))
}

fn sharding_error(cfg: &Config, mesh: &Mesh, fsdp: bool, f: Failure, rest: Vec<Failure>) -> Error {
    let also = rest.iter().map(|g| format!("{} dimension {} ({} {})", g.tensor, g.dim, g.units, g.logical.name())).collect();
    let suggestion = suggest_meshes(cfg, mesh.num_devices(), fsdp);
    Error::Sharding(Box::new(ShardingError {
        tensor: f.tensor,
        dim: f.dim,
        size: f.size,
        logical: f.logical.name(),
        units: f.units,
        axis: f.axis,
        axis_size: f.axis_size,
        also,
        suggestion,
    }))
}

/// The meshes `data=a,model=b` with a x b = `devices` on which every tensor's split divides.
pub fn working_meshes(cfg: &Config, devices: i64, fsdp: bool) -> Vec<Mesh> {
    let small: Vec<i64> = (1..).take_while(|a| a * a <= devices).filter(|a| devices % a == 0).collect();
    let large = small.iter().rev().map(|a| devices / a).filter(|b| b * b != devices);
    small
        .iter()
        .copied()
        .chain(large)
        .filter_map(|a| Mesh::new(&[("data", a), ("model", devices / a)]).ok())
        .filter(|m| matches!(try_specs(cfg, m, fsdp), Ok(Ok(_))))
        .collect()
}

/// "meshes of 8 devices that work: data=8,model=1, data=4,model=2" (or that none does).
pub fn suggest_meshes(cfg: &Config, devices: i64, fsdp: bool) -> String {
    let ok = working_meshes(cfg, devices, fsdp);
    if ok.is_empty() {
        return format!("no data=A,model=B mesh of {devices} devices divides every tensor");
    }
    let names: Vec<String> = ok.iter().map(|m| m.to_string()).collect();
    format!("meshes of {devices} devices that work: {}", names.join(", "))
}

/// How the model lays out its activations over a mesh: sharding constraints at the points
/// where the partitioner would otherwise pick a poor layout (with FSDP-split weights it
/// would rather split activations by features and gather the batch than gather a layer's
/// weights). Activations keep the batch over `data`; heads, MLP hidden and vocab go over
/// `model`; the model width is never split in activations.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// The mesh the activations are laid out over.
    pub mesh: Mesh,
    /// Whether the weights are split FSDP-style (see `param_specs`); the activation specs do not
    /// depend on it.
    pub fsdp: bool,
}

impl Layout {
    /// The spec of an activation whose dimensions mean `dims` (`None`: not split).
    pub fn spec(&self, dims: &[Option<Logical>]) -> PartitionSpec {
        PartitionSpec { dims: dims.iter().map(|d| d.map_or_else(Vec::new, |l| split(l, &self.mesh, false).0)).collect() }
    }
}

/// The spec of the tokens [B, T]: batch over `data` when the mesh has it.
pub fn batch_spec(mesh: &Mesh) -> PartitionSpec {
    let (axes, _) = split(Batch, mesh, false);
    PartitionSpec { dims: vec![axes, Vec::new()] }
}

/// The batch must be a positive multiple of the data axes' size.
pub fn check_batch(batch: i64, mesh: &Mesh) -> Result<(), Error> {
    let (axes, size) = split(Batch, mesh, false);
    if batch >= 1 && batch % size == 0 {
        return Ok(());
    }
    let up = (batch.max(1) + size - 1) / size * size;
    let suggestion = format!("use a batch that is a multiple of {size} (e.g. {up}), or a mesh whose data axis divides {batch}");
    Err(Error::Batch { batch, axis: axes.join(","), axis_size: size, suggestion })
}

/// The shape of one device's shard of `dims` under `spec` (ceiling division).
pub fn shard_shape(dims: &[i64], spec: &PartitionSpec, mesh: &Mesh) -> Vec<i64> {
    dims.iter()
        .enumerate()
        .map(|(i, &d)| {
            let n: i64 = spec.dims.get(i).map_or(1, |axes| axes.iter().filter_map(|a| mesh.axis_size(a)).product());
            (d + n - 1) / n.max(1)
        })
        .collect()
}

/// The logical axes of a cache tensor: rows over the batch axis, kv heads over `model` when
/// there are several (a single kv head is small and stays whole).
pub(crate) fn cache_logical(cfg: &Config) -> [Option<Logical>; 4] {
    let heads = (cfg.num_key_value_heads > 1).then_some(Logical::KvHeads);
    [Some(Logical::Batch), None, heads, None]
}

/// How a cache tensor is split over `mesh`.
pub fn cache_spec(cfg: &Config, mesh: &Mesh) -> PartitionSpec {
    Layout { mesh: mesh.clone(), fsdp: false }.spec(&cache_logical(cfg))
}

/// The spec of `extend`'s argument or output at `path` on `mesh` (None: replicated).
pub fn extend_spec(cfg: &Config, path: &str, mesh: &Mesh, fsdp: bool) -> Option<PartitionSpec> {
    if let Some(name) = path.strip_prefix("params.") {
        return adapter_spec(cfg, name, mesh, fsdp).or_else(|| param_spec(cfg, name, mesh, fsdp).ok());
    }
    if let Some(rest) = path.strip_prefix("cache.") {
        let spec = cache_spec(cfg, mesh);
        // A stacked cache (`decode::cache_types_with`): the layer axis first, never split.
        if rest.starts_with("stacked.") {
            let mut dims = vec![Vec::new()];
            dims.extend(spec.dims);
            return Some(PartitionSpec { dims });
        }
        return Some(spec);
    }
    let batch = batch_spec(mesh);
    match path {
        "tokens" | "weights" => Some(batch),
        "start" | "lengths" => Some(PartitionSpec { dims: vec![batch.dims[0].clone()] }),
        _ => None,
    }
}

/// The spec of a train-step argument or output at `path` over `mesh`: the state
/// (`state.params.<name>`, `state.opt.m.<name>`, `state.opt.v.<name>`: each optimizer moment
/// split like its weight) and `batch.tokens`; None (replicated) for `state.step` and metrics.
pub fn state_spec(cfg: &Config, path: &str, mesh: &Mesh, fsdp: bool) -> Option<PartitionSpec> {
    if path == "batch.tokens" || path == "batch.weights" {
        return Some(batch_spec(mesh));
    }
    // LoRA: the frozen base weights split as when they train.
    if let Some(name) = path.strip_prefix("frozen.") {
        return param_spec(cfg, name, mesh, fsdp).ok();
    }
    let name = ["state.params.", "state.opt.m.", "state.opt.v."].iter().find_map(|p| path.strip_prefix(p))?;
    adapter_spec(cfg, name, mesh, fsdp).or_else(|| param_spec(cfg, name, mesh, fsdp).ok())
}

/// The spec of a LoRA adapter tensor (`...q_proj.lora_A.weight`, `...lora_B.weight`; None for
/// any other name): B [out, r] split over the axes of its weight's out dimension, A [r, in]
/// replicated. So the adapter runs on every mesh its weight trains on, and B A has W's layout.
pub fn adapter_spec(cfg: &Config, name: &str, mesh: &Mesh, fsdp: bool) -> Option<PartitionSpec> {
    // A stacked adapter (`model.stacked.<j>...lora_B.weight`): its layers' split, the layer
    // axis never split.
    if let Some(first) = crate::stack::Stacking::of(cfg).layer_name(name, 0) {
        let inner = adapter_spec(cfg, &first, mesh, fsdp)?;
        let mut dims = vec![Vec::new()];
        dims.extend(inner.dims);
        return Some(PartitionSpec { dims });
    }
    let (base, is_b) = crate::lora::adapter_base(name)?;
    let w = param_spec(cfg, &base, mesh, fsdp).ok()?;
    let out = if is_b { w.dims.first().cloned().unwrap_or_default() } else { Vec::new() };
    Some(PartitionSpec { dims: vec![out, Vec::new()] })
}

/// The number of parameters of the checkpoint (the tied output embedding counted once).
pub fn param_count(cfg: &Config) -> i64 {
    param_shapes(cfg).iter().map(|(_, dims)| dims.iter().product::<i64>()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mesh(text: &str) -> Mesh {
        Mesh::parse(text).unwrap()
    }

    #[test]
    fn a_stacked_adapter_splits_like_its_layers_with_the_layer_axis_whole() {
        let cfg = Config::preset("2b").unwrap();
        let m = mesh("data=2,model=2");
        for name in ["self_attn.q_proj.lora_A.weight", "self_attn.q_proj.lora_B.weight", "mlp.down_proj.lora_B.weight"] {
            let per = adapter_spec(&cfg, &format!("model.layers.0.{name}"), &m, true).unwrap();
            let stacked = adapter_spec(&cfg, &format!("model.stacked.0.{name}"), &m, true).unwrap();
            assert_eq!(stacked.dims.len(), 3, "{name}");
            assert!(stacked.dims[0].is_empty(), "{name}: the layer axis is split");
            assert_eq!(stacked.dims[1..], per.dims[..], "{name}");
        }
        assert!(adapter_spec(&cfg, "model.stacked.0.self_attn.q_proj.lora_B.weight", &m, false).unwrap().dims[1] == ["model"]);
    }

    fn spec_text(cfg: &Config, name: &str, m: &Mesh, fsdp: bool) -> String {
        param_spec(cfg, name, m, fsdp).unwrap().to_string()
    }

    #[test]
    fn parameter_counts_of_the_checkpoints() {
        assert_eq!(param_count(&Config::preset("2b").unwrap()), 2_506_172_416);
        assert_eq!(param_count(&Config::preset("7b").unwrap()), 8_537_680_896);
    }

    #[test]
    fn gemma_2b_keeps_its_single_kv_head_replicated() {
        let cfg = Config::preset("2b").unwrap();
        let m = mesh("data=2,model=4");
        let layer = |s: &str| format!("model.layers.17.{s}");
        assert_eq!(spec_text(&cfg, "model.embed_tokens.weight", &m, false), r#"[{"model"}, {}]"#);
        assert_eq!(spec_text(&cfg, &layer("self_attn.q_proj.weight"), &m, false), r#"[{"model"}, {}]"#);
        assert_eq!(spec_text(&cfg, &layer("self_attn.k_proj.weight"), &m, false), "[{}, {}]");
        assert_eq!(spec_text(&cfg, &layer("self_attn.v_proj.weight"), &m, false), "[{}, {}]");
        assert_eq!(spec_text(&cfg, &layer("self_attn.o_proj.weight"), &m, false), r#"[{}, {"model"}]"#);
        assert_eq!(spec_text(&cfg, &layer("mlp.down_proj.weight"), &m, false), r#"[{}, {"model"}]"#);
        assert_eq!(spec_text(&cfg, "model.norm.weight", &m, false), "[{}]");
        // FSDP adds data to every embed dimension; the single kv head stays off model.
        assert_eq!(spec_text(&cfg, &layer("self_attn.k_proj.weight"), &m, true), r#"[{}, {"data"}]"#);
        assert_eq!(spec_text(&cfg, "model.embed_tokens.weight", &m, true), r#"[{"model"}, {"data"}]"#);
        assert_eq!(spec_text(&cfg, &layer("input_layernorm.weight"), &m, true), r#"[{"data"}]"#);
        assert_eq!(param_specs(&cfg, &m, true).unwrap().len(), 2 + 9 * 18);
    }

    #[test]
    fn gemma_7b_splits_kv_heads_over_model() {
        let cfg = Config::preset("7b").unwrap();
        let m = mesh("data=2,model=4");
        for (name, plain, fsdp) in [
            ("model.layers.0.self_attn.k_proj.weight", r#"[{"model"}, {}]"#, r#"[{"model"}, {"data"}]"#),
            ("model.layers.0.self_attn.o_proj.weight", r#"[{}, {"model"}]"#, r#"[{"data"}, {"model"}]"#),
            ("model.layers.27.mlp.gate_proj.weight", r#"[{"model"}, {}]"#, r#"[{"model"}, {"data"}]"#),
            ("model.norm.weight", "[{}]", r#"[{"data"}]"#),
        ] {
            assert_eq!(spec_text(&cfg, name, &m, false), plain, "{name}");
            assert_eq!(spec_text(&cfg, name, &m, true), fsdp, "{name} with fsdp");
        }
        let specs = param_specs(&cfg, &m, true).unwrap();
        assert_eq!(specs.len(), 2 + 9 * 28);
        for ((name, dims), (_, spec)) in param_shapes(&cfg).iter().zip(&specs) {
            // Matrices split over all 8 devices; norms (embed only) over data.
            let ways = if dims.len() == 2 { 8 } else { 2 };
            assert_eq!(shard_shape(dims, spec, &m).iter().product::<i64>() * ways, dims.iter().product::<i64>(), "{name}");
        }
    }

    #[test]
    fn gemma_7b_heads_do_not_split_three_ways() {
        let cfg = Config::preset("7b").unwrap();
        let err = param_specs(&cfg, &mesh("model=3"), false).unwrap_err();
        let text = err.to_string();
        assert!(matches!(&err, Error::Sharding(e) if e.axis == "model" && e.axis_size == 3), "{text}");
        assert!(text.contains("model.layers.0.self_attn.q_proj.weight dimension 0 (16 heads)"), "{text}");
        assert!(text.contains("meshes of 3 devices that work: data=3,model=1"), "{text}");
        let one = param_spec(&cfg, "model.layers.4.self_attn.o_proj.weight", &mesh("data=1,model=3"), false).unwrap_err();
        assert!(one.to_string().starts_with("model.layers.4.self_attn.o_proj.weight: dimension 1 (size 4096: 16 heads)"), "{one}");
        assert_eq!(working_meshes(&cfg, 8, false).len(), 4);
    }

    #[test]
    fn meshes_and_batches_that_do_not_fit() {
        let cfg = Config::preset("tiny").unwrap();
        let err = param_specs(&cfg, &mesh("data=2,expert=4"), false).unwrap_err();
        assert_eq!(err.to_string(), "mesh axis \"expert\" has no sharding rule (known axes: data, model)");
        assert!(param_spec(&cfg, "model.layers.2.mlp.up_proj.weight", &mesh("model=2"), false).is_err(), "tiny has 2 layers");
        assert!(logical_axes(&cfg, "lm_head.weight").is_err());
        assert_eq!(batch_spec(&mesh("data=2,model=4")).to_string(), r#"[{"data"}, {}]"#);
        assert_eq!(batch_spec(&mesh("model=4")).to_string(), "[{}, {}]");
        assert!(check_batch(8, &mesh("data=4,model=2")).is_ok());
        assert!(check_batch(3, &mesh("model=8")).is_ok());
        let err = check_batch(6, &mesh("data=4,model=2")).unwrap_err().to_string();
        assert!(err.contains("batch 6 cannot be split over data=4"), "{err}");
        assert!(err.contains("multiple of 4 (e.g. 8)"), "{err}");
        // A mesh axis of size 1 never fails.
        assert!(param_specs(&Config::preset("7b").unwrap(), &mesh("data=1,model=1"), true).is_ok());
    }
}
