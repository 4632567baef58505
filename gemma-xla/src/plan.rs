//! `gemma-xla plan`: how a Gemma config would be laid out on a device mesh and what one
//! training step needs per device (`inspect::plan`), as a table or JSON. Loads no plugin.
use crate::args::{emit, ConfigArg, Dtype, DtypeArg, MeshArgs, RematArg, ShapeArgs};
use anyhow::{bail, Context, Result};
use gemma::rules;
use inspect::plan::{parse_bytes, Plan, PlanRequest};
use sharding::Mesh;

#[derive(clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    config: ConfigArg,
    // --mesh: required, e.g. data=2,model=4 (known axes: data, model).
    #[command(flatten)]
    mesh: MeshArgs,
    // --seq default: 1024.
    #[command(flatten)]
    shape: ShapeArgs,
    // --dtype default: bf16 (master weights, gradients and AdamW m and v are f32).
    #[command(flatten)]
    dtype: DtypeArg,
    /// Memory per device: 16GiB, 80GB, 512MiB, 1000000 (bytes); the default is a TPU v5e's HBM
    #[arg(long, default_value = "16GiB", value_parser = parse_bytes)]
    memory: u64,
    /// Refuse a mesh that does not have exactly this many devices
    #[arg(long, value_parser = crate::args::device_count)]
    devices: Option<usize>,
    /// Print one JSON object (every tensor, integer bytes) instead of the table
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    remat: RematArg,
    #[command(flatten)]
    lora: crate::args::LoraArgs,
}

pub fn plan(a: &PlanArgs) -> Result<()> {
    let (name, cfg) = a.config.required()?;
    let Some(mesh_flag) = &a.mesh.mesh else { bail!("give --mesh, e.g. data=2,model=4") };
    let mesh = Mesh::parse(mesh_flag).with_context(|| format!("--mesh {mesh_flag}"))?;
    rules::check_mesh(&mesh)?;
    if let Some(n) = a.devices {
        if mesh.num_devices() != n as i64 {
            bail!(
                "--mesh {mesh} has {} devices but there are {n} (--devices); {}",
                mesh.num_devices(),
                rules::suggest_meshes(&cfg, n as i64, a.mesh.fsdp)
            );
        }
    }
    let req = PlanRequest {
        config: name,
        fsdp: a.mesh.fsdp,
        batch: a.shape.batch as i64,
        seq: a.shape.seq.unwrap_or(1024) as i64,
        dtype: a.dtype.or(Dtype::Bf16).name().to_string(),
        memory: a.memory,
        remat: a.remat.remat(),
        lora: a.lora.lora(&cfg)?,
    };
    let plan = Plan::new(&cfg, &mesh, req)?;
    let text = if a.json { serde_json::to_string_pretty(&plan.to_json())? + "\n" } else { plan.table() };
    emit(&text)
}
