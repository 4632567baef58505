//! `gemma-xla plan`: how a Gemma config would be laid out on a device mesh (every tensor's
//! partition spec and shard) and what one training step needs per device (weights, f32 master
//! weights, gradients, AdamW states, an activation estimate) against a memory budget. Loads no
//! plugin and compiles nothing; bad meshes and batches are refused with the meshes that work.
use crate::setup::load_config;
use anyhow::{bail, Context, Result};
use gemma::rules::{self, Logical};
use gemma::Config;
use serde_json::json;
use sharding::{Mesh, PartitionSpec};

#[derive(clap::Args)]
pub struct PlanArgs {
    /// tiny, 2b, 7b, or the path of an HF config.json
    #[arg(long, value_name = "tiny|2b|7b|CONFIG.json")]
    config: String,
    /// The device mesh, e.g. data=2,model=4 (known axes: data, model)
    #[arg(long)]
    mesh: String,
    /// Also split every weight, gradient and AdamW state over data (ZeRO-3; XLA gathers each layer's weights when used)
    #[arg(long)]
    fsdp: bool,
    /// Global batch (sequences per step), split over data
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..))]
    batch: i64,
    /// Tokens per sequence
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(i64).range(1..))]
    seq: i64,
    /// Compute dtype of weights and activations; master weights, gradients and AdamW m and v are f32
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
    dtype: String,
    /// Memory per device: 16GiB, 80GB, 512MiB, 1000000 (bytes); the default is a TPU v5e's HBM
    #[arg(long, default_value = "16GiB", value_parser = parse_bytes)]
    memory: u64,
    /// Refuse a mesh that does not have exactly this many devices
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    devices: Option<i64>,
    /// Print one JSON object (every tensor, integer bytes) instead of the table
    #[arg(long)]
    json: bool,
    /// Rematerialisation of the decoder layers (as `train --remat`): what the activation estimate keeps
    #[arg(long, default_value = "none", value_parser = ["none", "full", "save-dots"])]
    remat: String,
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
pub(crate) struct PerDevice {
    pub(crate) weights: u64,
    pub(crate) master_weights: u64,
    pub(crate) gradients: u64,
    pub(crate) adam_m: u64,
    pub(crate) adam_v: u64,
    pub(crate) activations: u64,
    pub(crate) fsdp_gather: u64,
}

impl PerDevice {
    pub(crate) fn total(&self) -> u64 {
        self.weights + self.master_weights + self.gradients + self.adam_m + self.adam_v + self.activations + self.fsdp_gather
    }
}

/// One layer's saved values without rematerialisation (also the layer being recomputed in
/// the backward pass with it), and the logits; the activation formulas print these names.
const LAYER_FORMULA: &str = "P = Bl*T*((4*D + 2*(Nl+Kl)*H + 4*Fl)*c + Nl*T*(4+c))";

/// The activation estimate's formula for `--remat`, as printed.
fn activation_formula(remat: &str) -> String {
    let kept = match remat {
        "full" => "L*Bl*T*D*c + P",
        "save-dots" => "L*Bl*T*((3*D + 2*(Nl+Kl)*H + 2*Fl)*c + Nl*T*4) + P",
        _ => "L*P",
    };
    format!("{kept} + Bl*T*Vl*(c+8), {LAYER_FORMULA}")
}

const ACTIVATION_LEGEND: &str = "  Bl = B/data, Nl = N/model, Kl = K/model (K when K = 1), Fl = F/model, Vl = V/model, c = dtype bytes.
  Per layer, saved for the backward pass (no rematerialisation): the input, the residual after attention
  and their norms (4D); q, k, v and the attention output; gate, gelu(gate), up and their product (4Fl);
  f32 scores and c-byte probabilities (Nl*T per token). Then the logits in c and f32, and their f32 gradient.
  --remat full keeps only each layer's input (D) and recomputes one layer at a time (P); save-dots keeps
  the input and every matmul result (q, k, v, f32 scores, attention output, o_proj, gate, up, down).";

pub fn plan(args: &PlanArgs) -> Result<()> {
    let cfg = load_config(&args.config)?;
    let mesh = Mesh::parse(&args.mesh).with_context(|| format!("--mesh {}", args.mesh))?;
    rules::check_mesh(&mesh)?;
    if let Some(n) = args.devices {
        if mesh.num_devices() != n {
            bail!(
                "--mesh {mesh} has {} devices but there are {n} (--devices); {}",
                mesh.num_devices(),
                rules::suggest_meshes(&cfg, n, args.fsdp)
            );
        }
    }
    let specs = rules::param_specs(&cfg, &mesh, args.fsdp)?;
    rules::check_batch(args.batch, &mesh)?;
    let c: u64 = if args.dtype == "bf16" { 2 } else { 4 };
    let shapes = gemma::param_shapes(&cfg);
    let tensors: Vec<TensorPlan> = shapes
        .into_iter()
        .zip(specs)
        .map(|((name, shape), (_, spec))| {
            let shard = rules::shard_shape(&shape, &spec, &mesh);
            let bytes = elements(&shard) * c;
            TensorPlan { name, shape, spec, shard, bytes }
        })
        .collect();
    let sharded = tensors.iter().map(|t| elements(&t.shard)).sum::<u64>();
    let step = Step { fsdp: args.fsdp, batch: args.batch, seq: args.seq, c, remat: &args.remat };
    let per = per_device(&cfg, &mesh, &step, sharded)?;
    let text = if args.json {
        serde_json::to_string_pretty(&to_json(args, &cfg, &mesh, &tensors, &per))? + "\n"
    } else {
        table(args, &cfg, &mesh, &tensors, &per)
    };
    emit(&text)
}

/// The per-device bytes of a training step, given the elements of one device's weight shards.
/// The shape of a training step, for the estimates.
pub(crate) struct Step<'a> {
    pub fsdp: bool,
    pub batch: i64,
    pub seq: i64,
    /// Bytes of the compute dtype.
    pub c: u64,
    /// `none`, `full` or `save-dots` (as `--remat`).
    pub remat: &'a str,
}

fn per_device(cfg: &Config, mesh: &Mesh, step: &Step, sharded: u64) -> Result<PerDevice> {
    let (c, fsdp) = (step.c, step.fsdp);
    Ok(PerDevice {
        weights: sharded * c,
        master_weights: if c == 4 { 0 } else { sharded * 4 },
        gradients: sharded * 4,
        adam_m: sharded * 4,
        adam_v: sharded * 4,
        activations: activations(cfg, mesh, step.batch, step.seq, c, step.remat),
        fsdp_gather: if fsdp { fsdp_gather(cfg, mesh, c)? } else { 0 },
    })
}

/// What `plan` estimates one device needs for a training step of `cfg` on `mesh` (compute
/// dtype of `c` bytes); errors as `plan`'s when a split does not divide.
pub(crate) fn estimate(cfg: &Config, mesh: &Mesh, step: &Step) -> Result<PerDevice> {
    let specs = rules::param_specs(cfg, mesh, step.fsdp)?;
    let sharded =
        gemma::param_shapes(cfg).iter().zip(&specs).map(|((_, shape), (_, spec))| elements(&rules::shard_shape(shape, spec, mesh))).sum();
    per_device(cfg, mesh, step, sharded)
}

/// `human(bytes)` for other commands.
pub(crate) fn human_bytes(bytes: u64) -> String {
    human(bytes)
}

/// Writes to stdout; a reader that stops early (`| head`) is not an error.
fn emit(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
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
fn activations(cfg: &Config, mesh: &Mesh, batch: i64, seq: i64, c: u64, remat: &str) -> u64 {
    let bl = local(batch, Logical::Batch, mesh);
    let t = seq.max(0) as u64;
    let nl = local(cfg.num_attention_heads, Logical::Heads, mesh);
    let kl = local(cfg.num_key_value_heads, rules::kv_axis(cfg), mesh);
    let fl = local(cfg.intermediate_size, Logical::Mlp, mesh);
    let vl = local(cfg.vocab_size, Logical::Vocab, mesh);
    let (d, h, l) = (cfg.hidden_size as u64, cfg.head_dim as u64, cfg.num_hidden_layers as u64);
    let per_layer = bl * t * ((4 * d + 2 * (nl + kl) * h + 4 * fl) * c + nl * t * (4 + c));
    let logits = bl * t * vl * (c + 8);
    match remat {
        "full" => l * bl * t * d * c + per_layer + logits,
        "save-dots" => l * bl * t * ((3 * d + 2 * (nl + kl) * h + 2 * fl) * c + nl * t * 4) + per_layer + logits,
        _ => l * per_layer + logits,
    }
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

/// `16GiB`, `16 GB`, `512MiB`, `1.5GiB`, `1000` (bytes).
fn parse_bytes(text: &str) -> Result<u64, String> {
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
    let units = [("TiB", 1u64 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    match units.iter().find(|(_, size)| bytes >= *size) {
        Some((name, size)) => format!("{:.2} {name}", bytes as f64 / *size as f64),
        None => format!("{bytes} B"),
    }
}

fn to_json(args: &PlanArgs, cfg: &Config, mesh: &Mesh, tensors: &[TensorPlan], per: &PerDevice) -> serde_json::Value {
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
            "total": total,
        },
        "activation_formula": activation_formula(&args.remat),
        "remat": args.remat,
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

fn table(args: &PlanArgs, cfg: &Config, mesh: &Mesh, tensors: &[TensorPlan], per: &PerDevice) -> String {
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
    let lines = [
        (format!("weights ({c})"), per.weights),
        ("master weights (f32)".into(), per.master_weights),
        ("gradients (f32)".into(), per.gradients),
        ("AdamW m (f32)".into(), per.adam_m),
        ("AdamW v (f32)".into(), per.adam_v),
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
    let with = if args.remat == "none" { String::new() } else { format!(" (--remat {})", args.remat) };
    let _ = writeln!(out, "activations{with} = {}\n{ACTIVATION_LEGEND}", activation_formula(&args.remat));
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
}
