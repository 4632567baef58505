//! `gemma-xla dump`: compiles one of the Gemma programs (without weights, without running it)
//! and writes what each stage of the compiler made of it: our StableHLO, XLA's HLO before
//! optimisation, after SPMD partitioning and after optimisation, XLA's raw dump, and a
//! summary (ops, fusions, collectives, buffers, memory per device, source lines).
pub(crate) mod summary;

use crate::setup::{load_config, resolve_mesh, train_step_jit, Setup};
use crate::PluginArgs;
use anyhow::{bail, Context, Result};
use gemma::rules::{self, Logical};
use gemma::{Config, ModelOptions};
use graph::{DType, Tensor, TensorType, Tree};
use jit::{Jit, Lowered};
use runtime::{Client, PartitionSpec, Program, XlaDump};
use std::path::{Path, PathBuf};

/// The programs `dump` knows (the `--what` values).
pub const PROGRAMS: [&str; 4] = ["forward", "train-step", "prefill", "decode"];

#[derive(clap::Args)]
pub struct DumpArgs {
    /// Model config: tiny, 2b, 7b or an HF config.json
    #[arg(long, value_name = "tiny|2b|7b|CONFIG.json", required_unless_present = "model", conflicts_with = "model")]
    config: Option<String>,
    /// An HF model directory (only its config.json is read)
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// The program to compile
    #[arg(long, value_parser = PROGRAMS)]
    what: String,
    /// Device mesh, e.g. data=2,model=2 [default: data=2,model=2 on 4 devices, or data=N with --devices N]
    #[arg(long)]
    mesh: Option<String>,
    /// Also split every weight and optimizer state over `data` (as `train --fsdp`)
    #[arg(long)]
    fsdp: bool,
    /// Sequences per step (divisible by the mesh's data axis)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Tokens per sequence (for prefill: the prompt bucket, the new tokens per row of one call)
    #[arg(long, default_value_t = gemma_xla::data::DEFAULT_SEQ as u32, value_parser = clap::value_parser!(u32).range(2..))]
    seq: u32,
    /// prefill and decode: the KV cache's slots per row [default: twice --seq]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    cache_len: Option<u32>,
    /// Compute dtype: f32, or bf16 (train-step keeps f32 master weights and optimizer states)
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// train-step: recompute each decoder layer in the backward pass (as `train --remat`)
    #[arg(long, default_value = "none", value_parser = ["none", "full", "save-dots"])]
    remat: String,
    /// Output directory (created; an earlier dump in it is replaced)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    plugin: PluginArgs,
}

/// The files of a dump directory, as README documents them.
pub const STABLEHLO: &str = "stablehlo.mlir";
pub const BEFORE: &str = "before_optimizations.hlo";
pub const AFTER_SPMD: &str = "after_spmd_partitioning.hlo";
pub const AFTER: &str = "after_optimizations.hlo";
pub const SUMMARY: &str = "summary.txt";
pub const RAW: &str = "xla";

pub fn dump(a: &DumpArgs) -> Result<()> {
    let (cfg, inputs) = config(a)?;
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    gemma_xla::files::refuse_input_as_output(&a.out, &input_refs)?;
    for name in [STABLEHLO, SUMMARY] {
        gemma_xla::files::refuse_input_as_output(&a.out.join(name), &input_refs)?;
    }
    let mesh = resolve_mesh(a.mesh.as_deref(), a.plugin.devices).with_context(|| "--mesh")?;
    rules::check_mesh(&mesh)?;
    rules::param_specs(&cfg, &mesh, a.fsdp)?; // every split must divide its dimension
    rules::check_batch(a.batch as i64, &mesh)?;
    let client = a.plugin.open(Some(mesh.num_devices() as usize))?;
    let setup = Setup { cfg, mesh, fsdp: a.fsdp, batch: a.batch as usize, seq: a.seq as usize };
    let lowered = lower(Some(&client), &setup, &a.what, &a.dtype, &a.remat, a.cache_len)?;

    let what = format!("{} ({}; batch {} x seq {}, {})", a.what, config_name(a), a.batch, a.seq, a.dtype);
    let text = write_dump(&a.out, &lowered, &setup, &what, |program, options| {
        client.compile(program, options).with_context(|| format!("compiling {}", a.what))?;
        Ok(())
    })?;
    print!("{text}");
    println!("wrote {}", a.out.display());
    Ok(())
}

/// Writes a dump of `lowered` into `out` (emptying an earlier dump there): our StableHLO, then
/// `compile` is asked to compile it with XLA's dump options pointing into `out/xla`, then the
/// stages and the summary (returned) are written. `compile` is the client's or a topology's.
pub(crate) fn write_dump(
    out: &Path,
    lowered: &Lowered,
    setup: &Setup,
    what: &str,
    compile: impl FnOnce(&Program, &runtime::CompileOptions) -> Result<()>,
) -> Result<String> {
    prepare_out(out)?;
    let raw = out.join(RAW);
    gemma_xla::files::write_atomic(&out.join(STABLEHLO), lowered.stablehlo.as_bytes())?;
    let program = Program::from_text(&lowered.stablehlo)?;
    let dump = XlaDump { dir: raw.clone(), pass_re: Some(summary::SPMD_PASS_RE.to_string()), module_re: None };
    compile(&program, &lowered.options.clone().with_dump(dump))?;
    let files = summary::XlaFiles::find(&raw, setup.mesh.num_devices() > 1)?;
    let text = summary::write_stages(out, &files, what, &setup.mesh, setup.fsdp)?;
    gemma_xla::files::write_atomic(&out.join(SUMMARY), text.as_bytes())?;
    Ok(text)
}

/// Traces and lowers the program `what` (one of `PROGRAMS`) for `setup` in the compute dtype
/// `dtype` (`f32` or `bf16`), without compiling: the StableHLO and the compile options that
/// `train` and `generate` would use. `client` may be None (compiling ahead of time for a
/// topology); `remat` as `train --remat`; `cache_len` is the KV cache of prefill and decode (default twice `seq`).
pub(crate) fn lower(
    client: Option<&Client>,
    setup: &Setup,
    what: &str,
    dtype_name: &str,
    remat: &str,
    cache_len: Option<u32>,
) -> Result<Lowered> {
    let dtype = if dtype_name == "bf16" { DType::Bf16 } else { DType::F32 };
    let (batch, seq) = (setup.batch as i64, setup.seq as i64);
    let layout = setup.layout();
    let sharded = setup.mesh.num_devices() > 1;
    // One arm per program: the traced function, its argument types and their shardings;
    // `Jit::lower` adds donation and output shardings exactly as a call would.
    Ok(match what {
        "forward" => {
            let jit = Jit::with_client("forward", client, |args: &Tree<Tensor>| {
                gemma::model_with_layout(&setup.cfg, args, ModelOptions::default(), sharded.then(|| layout.clone()))
            })
            .with_mesh(setup.mesh.clone())
            .with_rule(|path, _| forward_spec(setup, path));
            let types = gemma::model_args(&setup.cfg, dtype, batch, seq, ModelOptions::default());
            jit.lower(&with_specs(&types, |p| forward_spec(setup, p)))?
        }
        "train-step" => {
            let hp = crate::train::default_hyper(dtype_name, remat)?;
            let lowered = train_step_jit(client, setup, &hp, &layout).lower(&setup.train_args()?)?;
            lowered
        }
        "prefill" | "decode" => {
            // What `generate` compiles: extend over the cache, `seq` new tokens per row for
            // prefill, one for decode; the cache donated.
            let cache_len = cache_len.map_or(2 * seq, i64::from);
            let new = if what == "decode" { 1 } else { seq };
            let (cfg, mesh, fsdp) = (&setup.cfg, &setup.mesh, setup.fsdp);
            let jit = Jit::with_client(what, client, |args: &Tree<Tensor>| {
                gemma::decode::extend(cfg, args, gemma::decode::Head::Last, sharded.then(|| layout.clone()))
            })
            .with_mesh(mesh.clone())
            .donate("cache")
            .with_rule(|path, _| gemma::decode::extend_spec(cfg, path, mesh, fsdp));
            let types = gemma::decode::extend_args(cfg, dtype, batch, new, cache_len);
            jit.lower(&with_specs(&types, |p| gemma::decode::extend_spec(cfg, p, mesh, fsdp)))?
        }
        other => bail!("--what {other}: unknown program (one of {})", PROGRAMS.join(", ")),
    })
}

fn config_name(a: &DumpArgs) -> String {
    match (&a.config, &a.model) {
        (Some(c), _) => c.clone(),
        (None, Some(m)) => m.display().to_string(),
        (None, None) => "tiny".into(),
    }
}

/// The config and the files it was read from.
fn config(a: &DumpArgs) -> Result<(Config, Vec<PathBuf>)> {
    match (&a.config, &a.model) {
        (_, Some(dir)) => {
            let path = dir.join("config.json");
            if !path.is_file() {
                bail!("--model {}: no config.json in the directory", dir.display());
            }
            Ok((Config::from_json_file(&path)?, vec![path]))
        }
        (Some(c), None) => {
            let files = if c.ends_with(".json") { vec![PathBuf::from(c)] } else { Vec::new() };
            Ok((load_config(c)?, files))
        }
        (None, None) => bail!("give --config or --model"),
    }
}

/// Types of a tree with the spec of each path (replicated where `spec` says nothing).
fn with_specs(types: &Tree<TensorType>, spec: impl Fn(&str) -> Option<PartitionSpec>) -> Tree<(TensorType, PartitionSpec)> {
    types.map(|path, ty| (ty.clone(), spec(path).unwrap_or_else(|| PartitionSpec::replicated(ty.rank()))))
}

/// The forward program's specs: weights as the rules split them, tokens over `data`, the
/// logits [B, T, V] as the activation layout (batch over data, vocab over model).
fn forward_spec(setup: &Setup, path: &str) -> Option<PartitionSpec> {
    if path == "tokens" {
        return Some(rules::batch_spec(&setup.mesh));
    }
    if path == "logits" {
        return Some(setup.layout().spec(&[Some(Logical::Batch), None, Some(Logical::Vocab)]));
    }
    let name = path.strip_prefix("params.")?;
    rules::param_spec(&setup.cfg, name, &setup.mesh, setup.fsdp).ok()
}

/// Creates `out`, or empties an earlier dump there; refuses a file, or a directory holding
/// anything but a dump's files.
fn prepare_out(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} is a file, not a directory", out.display());
    }
    if out.is_dir() {
        let ours = [STABLEHLO, BEFORE, AFTER_SPMD, AFTER, SUMMARY, RAW];
        let entries: Vec<String> = std::fs::read_dir(out)
            .with_context(|| format!("cannot list --out {}", out.display()))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot list --out {}", out.display()))?;
        if let Some(other) = entries.iter().find(|n| !ours.contains(&n.as_str()) && !n.starts_with(".gemma-xla")) {
            bail!(
                "--out {} holds {other}, which is not part of a dump; choose a new or empty directory (an earlier dump there is replaced)",
                out.display()
            );
        }
        for name in &entries {
            let p = out.join(name);
            let r = if p.is_dir() && !p.is_symlink() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            r.with_context(|| format!("cannot remove the earlier dump's {}", p.display()))?;
        }
    }
    gemma_xla::files::ensure_writable_dir(out)?;
    Ok(())
}
