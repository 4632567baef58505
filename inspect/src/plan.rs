//! `gemma-xla plan`: how a Gemma config would be laid out on a device mesh (every tensor's
//! partition spec and shard) and what one training step needs per device (weights, f32 master
//! weights, gradients, AdamW states, an activation estimate) against a memory budget. Loads no
//! plugin and compiles nothing; bad meshes and batches are refused with the meshes that work.
use crate::{bail, Result};
use gemma::rules::{self, Logical};
use gemma::Config;
use graph::Remat;
use serde_json::json;
use sharding::{Mesh, PartitionSpec};

/// What to plan for: the step's shape and the memory budget (the `plan` flags).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    /// The config's name as given (`7b`, a path): printed in the report.
    pub config: String,
    /// Also split every weight, gradient and AdamW state over `data`.
    pub fsdp: bool,
    /// Global batch (sequences per step).
    pub batch: i64,
    /// Tokens per sequence.
    pub seq: i64,
    /// Compute dtype name: `bf16` or `f32` (master weights, gradients, m and v are f32).
    pub dtype: String,
    /// Memory per device in bytes.
    pub memory: u64,
    /// Rematerialisation of the decoder layers.
    pub remat: Remat,
    /// LoRA: only these adapters train (f32, with gradients and AdamW moments); the base
    /// weights are frozen in the compute dtype, without gradients or optimizer state.
    pub lora: Option<gemma::lora::Lora>,
}

/// `none`, `full`, `save-dots`: the `--remat` spelling.
pub fn remat_name(remat: Remat) -> &'static str {
    match remat {
        Remat::None => "none",
        Remat::Full => "full",
        Remat::SaveDots => "save-dots",
    }
}

/// Every tensor's split and shard on the mesh and what one device needs for a step.
pub struct Plan {
    req: PlanRequest,
    cfg: Config,
    mesh: Mesh,
    tensors: Vec<TensorPlan>,
    per: PerDevice,
}

/// One checkpoint tensor on the mesh.
struct TensorPlan {
    name: String,
    shape: Vec<i64>,
    spec: PartitionSpec,
    shard: Vec<i64>,
    /// Bytes of one device's shard in the compute dtype.
    bytes: u64,
}

/// What one device holds during a training step, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerDevice {
    /// Weights in the compute dtype.
    pub weights: u64,
    /// f32 master weights (0 when the compute dtype is f32).
    pub master_weights: u64,
    /// f32 gradients.
    pub gradients: u64,
    /// AdamW's first moments (f32).
    pub adam_m: u64,
    /// AdamW's second moments (f32).
    pub adam_v: u64,
    /// Saved activations (an estimate).
    pub activations: u64,
    /// Weights gathered over `data` at a time with FSDP (an estimate).
    pub fsdp_gather: u64,
    /// LoRA adapters (f32; 0 without LoRA). Gradients and AdamW moments are then the
    /// adapters', and `weights` is the frozen base.
    pub adapters: u64,
}

impl PerDevice {
    /// Everything together.
    pub fn total(&self) -> u64 {
        [self.master_weights, self.gradients, self.adam_m, self.adam_v, self.activations, self.fsdp_gather, self.adapters]
            .into_iter()
            .fold(self.weights, u64::saturating_add)
    }
}

/// One layer's saved values without rematerialisation (also the layer being recomputed in
/// the backward pass with it), and the logits; the activation formulas print these names.
const LAYER_FORMULA: &str = "P = Bl*T*((4*D + 2*(Nl+Kl)*H + 4*Fl)*c + Nl*T*(4+c))";

/// The activation estimate's formula for `--remat`, as printed.
fn activation_formula(remat: Remat) -> String {
    let kept = match remat {
        Remat::Full => "L*Bl*T*D*c + P",
        Remat::SaveDots => "L*Bl*T*((3*D + 2*(Nl+Kl)*H + 2*Fl)*c + Nl*T*4) + P",
        Remat::None => "L*P",
    };
    format!("{kept} + Bl*T*Vl*(c+8), {LAYER_FORMULA}")
}

const ACTIVATION_LEGEND: &str = "  Bl = B/data, Nl = N/model, Kl = K/model (K when K = 1), Fl = F/model, Vl = V/model, c = dtype bytes.
  Per layer, saved for the backward pass (no rematerialisation): the input, the residual after attention
  and their norms (4D); q, k, v and the attention output; gate, gelu(gate), up and their product (4Fl);
  f32 scores and c-byte probabilities (Nl*T per token). Then the logits in c and f32, and their f32 gradient.
  --remat full keeps only each layer's input (D) and recomputes one layer at a time (P); save-dots keeps
  the input and every matmul result (q, k, v, f32 scores, attention output, o_proj, gate, up, down).";

impl Plan {
    /// Plans `cfg` on `mesh`; a split that does not divide its dimension, or a batch the data
    /// axis does not divide, is an error naming the tensor (or batch) and the meshes that work.
    pub fn new(cfg: &Config, mesh: &Mesh, req: PlanRequest) -> Result<Plan> {
        rules::check_mesh(mesh)?;
        let specs = rules::param_specs(cfg, mesh, req.fsdp)?;
        rules::check_batch(req.batch, mesh)?;
        if req.dtype != "bf16" && req.dtype != "f32" {
            bail!("dtype {:?}: plan knows bf16 and f32", req.dtype);
        }
        let c: u64 = if req.dtype == "bf16" { 2 } else { 4 };
        let shapes = gemma::param_shapes(cfg);
        let mut tensors: Vec<TensorPlan> = shapes
            .into_iter()
            .zip(specs)
            .map(|((name, shape), (_, spec))| {
                let shard = rules::shard_shape(&shape, &spec, mesh);
                let bytes = elements(&shard) * c;
                TensorPlan { name, shape, spec, shard, bytes }
            })
            .collect();
        let sharded = tensors.iter().map(|t| elements(&t.shard)).sum::<u64>();
        let step = Step { fsdp: req.fsdp, batch: req.batch, seq: req.seq, c, remat: req.remat };
        let mut per = per_device(cfg, mesh, &step, sharded)?;
        if let Some(l) = &req.lora {
            let mut adapters = 0;
            for (name, shape) in l.shapes(cfg) {
                let spec = rules::adapter_spec(cfg, &name, mesh, req.fsdp).unwrap_or_else(|| PartitionSpec::replicated(2));
                let shard = rules::shard_shape(&shape, &spec, mesh);
                adapters += elements(&shard);
                tensors.push(TensorPlan { name, shape, spec, bytes: elements(&shard) * 4, shard });
            }
            // The base is frozen: no master copy, gradients or moments; those are the adapters'.
            per = PerDevice {
                master_weights: 0,
                adapters: adapters * 4,
                gradients: adapters * 4,
                adam_m: adapters * 4,
                adam_v: adapters * 4,
                ..per
            };
        }
        Ok(Plan { req, cfg: cfg.clone(), mesh: mesh.clone(), tensors, per })
    }

    /// What one device holds during a step.
    pub fn per_device(&self) -> &PerDevice {
        &self.per
    }

    /// Whether the step fits the memory budget.
    pub fn fits(&self) -> bool {
        self.per.total() <= self.req.memory
    }

    /// The plan as one JSON object (every tensor, integer bytes): `plan --json`.
    pub fn to_json(&self) -> serde_json::Value {
        to_json(&self.req, &self.cfg, &self.mesh, &self.tensors, &self.per)
    }

    /// The plan as `plan` prints it: the tensor table, the per-device lines, the verdict and
    /// the activation formula.
    pub fn table(&self) -> String {
        table(&self.req, &self.cfg, &self.mesh, &self.tensors, &self.per)
    }
}

/// The per-device bytes of a training step, given the elements of one device's weight shards.
/// The shape of a training step, for the estimates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Weights and optimizer states also split over `data`.
    pub fsdp: bool,
    /// Global batch.
    pub batch: i64,
    /// Tokens per sequence.
    pub seq: i64,
    /// Bytes of the compute dtype.
    pub c: u64,
    /// Rematerialisation of the decoder layers.
    pub remat: Remat,
}

fn per_device(cfg: &Config, mesh: &Mesh, step: &Step, sharded: u64) -> Result<PerDevice> {
    let (c, fsdp) = (step.c, step.fsdp);
    Ok(PerDevice {
        weights: sharded * c,
        master_weights: if c == 4 { 0 } else { sharded * 4 },
        gradients: sharded * 4,
        adam_m: sharded * 4,
        adam_v: sharded * 4,
        activations: activations(cfg, mesh, step.batch, step.seq, c, step.remat)?,
        fsdp_gather: if fsdp { fsdp_gather(cfg, mesh, c)? } else { 0 },
        adapters: 0,
    })
}

/// What `plan` estimates one device needs for a training step of `cfg` on `mesh` (compute
/// dtype of `c` bytes); errors as `plan`'s when a split does not divide.
pub fn estimate(cfg: &Config, mesh: &Mesh, step: &Step) -> Result<PerDevice> {
    let specs = rules::param_specs(cfg, mesh, step.fsdp)?;
    let sharded =
        gemma::param_shapes(cfg).iter().zip(&specs).map(|((_, shape), (_, spec))| elements(&rules::shard_shape(shape, spec, mesh))).sum();
    per_device(cfg, mesh, step, sharded)
}

fn elements(dims: &[i64]) -> u64 {
    dims.iter().map(|&d| d.max(0) as u64).product()
}

/// How many of `count` a device holds when `logical` is split over `mesh` (ceiling).
fn local(count: i64, logical: Logical, mesh: &Mesh) -> u64 {
    let (_, n) = rules::split(logical, mesh, false);
    ((count + n - 1) / n.max(1)).max(0) as u64
}

/// Saved activations of one training step per device (see `activation_formula`).
fn activations(cfg: &Config, mesh: &Mesh, batch: i64, seq: i64, c: u64, remat: Remat) -> Result<u64> {
    // In u128: with --batch and --seq near their u32 limits the bytes pass 2^64 (an error
    // below), and the factors of each term stay far below 2^128.
    let w = |x: u64| x as u128;
    let bl = w(local(batch, Logical::Batch, mesh));
    let t = w(seq.max(0) as u64);
    let nl = w(local(cfg.num_attention_heads, Logical::Heads, mesh));
    let kl = w(local(cfg.num_key_value_heads, rules::kv_axis(cfg), mesh));
    let fl = w(local(cfg.intermediate_size, Logical::Mlp, mesh));
    let vl = w(local(cfg.vocab_size, Logical::Vocab, mesh));
    let (d, h, l, c) = (w(cfg.hidden_size as u64), w(cfg.head_dim as u64), w(cfg.num_hidden_layers as u64), w(c));
    let per_layer = bl * t * ((4 * d + 2 * (nl + kl) * h + 4 * fl) * c + nl * t * (4 + c));
    let logits = bl * t * vl * (c + 8);
    let bytes = match remat {
        Remat::Full => l * bl * t * d * c + per_layer + logits,
        Remat::SaveDots => l * bl * t * ((3 * d + 2 * (nl + kl) * h + 2 * fl) * c + nl * t * 4) + per_layer + logits,
        Remat::None => l * per_layer + logits,
    };
    u64::try_from(bytes).map_err(|_| {
        crate::Error::Invalid(format!("--batch {batch} --seq {seq}: the step's activations alone need more than 2^64 bytes per device"))
    })
}

/// With FSDP, the weights XLA gathers over `data` at a time: two layers (the one in use and
/// the next), each split over `model` only, in the compute dtype.
fn fsdp_gather(cfg: &Config, mesh: &Mesh, c: u64) -> Result<u64> {
    let mut layer = 0;
    for (name, shape) in gemma::param_shapes(cfg).iter().filter(|(n, _)| n.starts_with("model.layers.0.")) {
        let spec = rules::param_spec(cfg, name, mesh, false)?;
        layer += elements(&rules::shard_shape(shape, &spec, mesh)) * c;
    }
    Ok(2 * layer)
}

/// `16GiB`, `16 GB`, `512MiB`, `1.5GiB`, `1000` (bytes): a memory budget.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|ch: char| !(ch.is_ascii_digit() || ch == '.')).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)")),
    };
    let n: f64 = number.parse().map_err(|_| format!("{text:?} is not a size like 16GiB"))?;
    let bytes = (n * scale).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?}: the memory budget must be at least 1 byte"));
    }
    Ok(bytes as u64)
}

/// `(model, data)`, `(-, model)`; several axes on one dimension as `data+model`.
fn spec_text(spec: &PartitionSpec) -> String {
    let dims: Vec<String> = spec.dims.iter().map(|axes| if axes.is_empty() { "-".into() } else { axes.join("+") }).collect();
    format!("({})", dims.join(", "))
}

fn dims_text(dims: &[i64]) -> String {
    format!("[{}]", dims.iter().map(i64::to_string).collect::<Vec<_>>().join(", "))
}

fn human(bytes: u64) -> String {
    crate::human_bytes(bytes)
}

fn to_json(args: &PlanRequest, cfg: &Config, mesh: &Mesh, tensors: &[TensorPlan], per: &PerDevice) -> serde_json::Value {
    let tensors: Vec<serde_json::Value> = tensors
        .iter()
        .map(|t| json!({"name": t.name, "shape": t.shape, "spec": t.spec.dims, "shard_shape": t.shard, "bytes_per_device": t.bytes}))
        .collect();
    let total = per.total();
    json!({
        "config": args.config,
        "parameters": rules::param_count(cfg),
        "mesh": mesh.to_string(),
        "devices": mesh.num_devices(),
        "fsdp": args.fsdp,
        "dtype": args.dtype,
        "batch": args.batch,
        "seq": args.seq,
        "batch_spec": rules::batch_spec(mesh).dims,
        "tensors": tensors,
        "per_device": {
            "weights": per.weights,
            "master_weights": per.master_weights,
            "gradients": per.gradients,
            "adam_m": per.adam_m,
            "adam_v": per.adam_v,
            "activations": per.activations,
            "fsdp_gather": per.fsdp_gather,
            "lora_adapters": per.adapters,
            "total": total,
        },
        "activation_formula": activation_formula(args.remat),
        "remat": remat_name(args.remat),
        "budget": args.memory,
        "fits": total <= args.memory,
    })
}

/// The tensors, layers collapsed into one line per kind, as table rows.
fn table_rows(cfg: &Config, tensors: &[TensorPlan]) -> Vec<[String; 6]> {
    let layers = cfg.num_hidden_layers;
    let mut rows = Vec::new();
    for t in tensors {
        let (name, count) = match t.name.strip_prefix("model.layers.").and_then(|r| r.split_once('.')) {
            Some(("0", rest)) => (format!("model.layers.*.{rest}"), layers),
            Some(_) => continue,
            None => (t.name.clone(), 1),
        };
        let total = t.bytes * count as u64;
        let count = if count == 1 { String::new() } else { format!("x{count}") };
        rows.push([name, dims_text(&t.shape), spec_text(&t.spec), dims_text(&t.shard), count, human(total)]);
    }
    rows
}

fn table(args: &PlanRequest, cfg: &Config, mesh: &Mesh, tensors: &[TensorPlan], per: &PerDevice) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let fsdp = if args.fsdp { ", fsdp" } else { "" };
    let (_, data) = rules::split(Logical::Batch, mesh, false);
    let _ = writeln!(
        out,
        "{}: {} parameters on {mesh} ({} devices{fsdp}), {}, batch {} ({} per data shard) x seq {}",
        args.config,
        rules::param_count(cfg),
        mesh.num_devices(),
        args.dtype,
        args.batch,
        args.batch / data,
        args.seq
    );
    let header = ["tensor", "shape", "spec", "shard", "", "per device"].map(String::from);
    let mut rows = vec![header];
    rows.extend(table_rows(cfg, tensors));
    let widths: Vec<usize> = (0..6).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for r in &rows {
        let cells: Vec<String> =
            r.iter().zip(&widths).enumerate().map(|(i, (s, w))| if i == 5 { format!("{s:>w$}") } else { format!("{s:<w$}") }).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let c = &args.dtype;
    let lora = args.lora.is_some();
    let lines = [
        (if lora { format!("frozen base weights ({c})") } else { format!("weights ({c})") }, per.weights),
        ("master weights (f32)".into(), per.master_weights),
        ("LoRA adapters (f32)".into(), per.adapters),
        (if lora { "adapter gradients (f32)" } else { "gradients (f32)" }.into(), per.gradients),
        (if lora { "adapter AdamW m (f32)" } else { "AdamW m (f32)" }.into(), per.adam_m),
        (if lora { "adapter AdamW v (f32)" } else { "AdamW v (f32)" }.into(), per.adam_v),
        ("activations (estimate)".into(), per.activations),
        ("FSDP layer gathers (estimate)".into(), per.fsdp_gather),
        ("total".into(), per.total()),
    ];
    let _ = writeln!(out, "per device:");
    for (what, bytes) in lines {
        let _ = writeln!(out, "  {what:<30} {:>12}  {bytes:>15} bytes", human(bytes));
    }
    let (total, budget) = (per.total(), args.memory);
    if total <= budget {
        let _ = writeln!(out, "fits in {} per device ({} free)", human(budget), human(budget - total));
    } else {
        let _ = writeln!(out, "does NOT fit in {} per device (over by {})", human(budget), human(total - budget));
    }
    let with = if args.remat == Remat::None { String::new() } else { format!(" (--remat {})", remat_name(args.remat)) };
    let _ = writeln!(out, "activations{with} = {}\n{ACTIVATION_LEGEND}", activation_formula(args.remat));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("16GiB"), Ok(16 << 30));
        assert_eq!(parse_bytes("16 GB"), Ok(16_000_000_000));
        assert_eq!(parse_bytes("1.5MiB"), Ok(3 << 19));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("16 parsecs").is_err());
        assert!(parse_bytes("GiB").is_err());
        assert!(parse_bytes("0").is_err());
        assert_eq!(human(3 << 29), "1.50 GiB");
    }

    #[test]
    fn huge_steps_are_an_error_not_a_wrapped_count() {
        let cfg = Config::preset("7b").unwrap();
        let mesh = Mesh::parse("data=1").unwrap();
        let req = |batch: i64, seq: i64| PlanRequest {
            config: "7b".into(),
            fsdp: false,
            batch,
            seq,
            dtype: "bf16".into(),
            memory: 16 << 30,
            remat: Remat::None,
            lora: None,
        };
        let err = Plan::new(&cfg, &mesh, req(u32::MAX as i64, u32::MAX as i64)).err().expect("2^64 bytes").to_string();
        assert!(err.contains("more than 2^64 bytes"), "{err}");
        // Large but representable: counted exactly, and it does not fit.
        let plan = Plan::new(&cfg, &mesh, req(1 << 20, 1 << 16)).unwrap();
        assert!(!plan.fits() && plan.per_device().activations > 1 << 50);
    }

    #[test]
    fn a_lora_plan_counts_adapters_and_a_frozen_base() {
        let cfg = Config::preset("tiny").unwrap();
        let mesh = Mesh::parse("data=2,model=2").unwrap();
        let targets: Vec<String> = ["q_proj", "v_proj"].iter().map(|s| s.to_string()).collect();
        let lora = gemma::lora::Lora::new(&cfg, 4, 8.0, &targets).unwrap();
        let req = |lora| PlanRequest {
            config: "tiny".into(),
            fsdp: false,
            batch: 8,
            seq: 64,
            dtype: "bf16".into(),
            memory: 16 << 30,
            remat: Remat::None,
            lora,
        };
        let full = Plan::new(&cfg, &mesh, req(None)).unwrap();
        let plan = Plan::new(&cfg, &mesh, req(Some(lora.clone()))).unwrap();
        let (f, p) = (full.per_device(), plan.per_device());
        // The base as before (bf16), no master copy; gradients and moments are the adapters'.
        assert_eq!(p.weights, f.weights);
        assert_eq!(p.master_weights, 0);
        // Per layer: q_proj A [4, 64] replicated, B [64, 4] split over model (2); v_proj A
        // [4, 64], B [16, 4] (one kv head: not split). f32.
        let per_layer = 4 * 64 + 64 * 4 / 2 + 4 * 64 + 16 * 4;
        assert_eq!(p.adapters, 2 * per_layer * 4);
        assert_eq!((p.gradients, p.adam_m, p.adam_v), (p.adapters, p.adapters, p.adapters));
        assert!(p.total() < f.total());
        assert!(plan.table().contains("frozen base weights (bf16)") && plan.table().contains("LoRA adapters (f32)"));
        assert!(plan.table().contains("model.layers.*.self_attn.q_proj.lora_B.weight"), "{}", plan.table());
    }
}
