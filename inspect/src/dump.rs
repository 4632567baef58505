//! A Gemma program (forward, train step, prefill, decode) traced and lowered exactly as
//! `train` and `generate` build it, then compiled with XLA's dump options so that every
//! compiler stage lands in one directory with a `summary.txt`.
use crate::summary;
use crate::{bail, Error, Result};
use gemma::rules::{self, Logical};
use gemma::{Hyper, ModelOptions};
use graph::{DType, Remat, Tensor, TensorType, Tree};
use jit::{Jit, Lowered};
use runtime::{Client, PartitionSpec, Program, XlaDump};
use std::path::Path;
use train::Setup;

/// The programs a dump can show.
pub const PROGRAMS: [&str; 4] = ["forward", "train-step", "prefill", "decode"];
/// Our StableHLO, as handed to the plugin.
pub const STABLEHLO: &str = "stablehlo.mlir";
/// XLA's HLO before optimisation.
pub const BEFORE: &str = "before_optimizations.hlo";
/// XLA's HLO after SPMD partitioning.
pub const AFTER_SPMD: &str = "after_spmd_partitioning.hlo";
/// XLA's optimised HLO.
pub const AFTER: &str = "after_optimizations.hlo";
/// The summary: ops, fusions, collectives, buffers, memory, source lines.
pub const SUMMARY: &str = "summary.txt";
/// XLA's own dump files.
pub const RAW: &str = "xla";

/// Writes a dump of `lowered` into `out` (emptying an earlier dump there): our StableHLO, then
/// `compile` is asked to compile it with XLA's dump options pointing into `out/xla`, then the
/// stages and the summary (returned) are written. `compile` is the client's or a topology's.
pub fn write_dump(
    out: &Path,
    lowered: &Lowered,
    setup: &Setup,
    what: &str,
    compile: impl FnOnce(&Program, &runtime::CompileOptions) -> Result<()>,
) -> Result<String> {
    prepare_out(out)?;
    let raw = out.join(RAW);
    data::files::write_atomic(&out.join(STABLEHLO), lowered.stablehlo.as_bytes())?;
    let program = Program::from_text(&lowered.stablehlo)?;
    let dump = XlaDump { dir: raw.clone(), pass_re: Some(summary::SPMD_PASS_RE.to_string()), module_re: None };
    compile(&program, &lowered.options.clone().with_dump(dump))?;
    let files = summary::XlaFiles::find(&raw, setup.mesh.num_devices() > 1)?;
    let text = summary::write_stages(out, &files, what, &setup.mesh, setup.fsdp)?;
    data::files::write_atomic(&out.join(SUMMARY), text.as_bytes())?;
    Ok(text)
}

/// Traces and lowers the program `what` (one of [`PROGRAMS`]) for `setup` in the compute
/// dtype `dtype`, without compiling: the StableHLO and the compile options that `train` and
/// `generate` would use. `client` may be None (compiling ahead of time for a topology); the
/// train step uses `Hyper::default()` (what `train` runs with no flags) with `dtype` and
/// `remat`; `scan` runs the decoder layers of the train step, forward, prefill and decode as
/// one loop (`--scan-layers`); `cache_len` is the KV cache of prefill and decode (default twice `seq`).
pub fn lower(
    client: Option<&Client>,
    setup: &Setup,
    what: &str,
    dtype: DType,
    remat: Remat,
    scan: bool,
    cache_len: Option<u32>,
) -> Result<Lowered> {
    let (batch, seq) = (setup.batch as i64, setup.seq as i64);
    let layout = setup.layout();
    let sharded = setup.mesh.num_devices() > 1;
    // One arm per program: the traced function, its argument types and their shardings;
    // `Jit::lower` adds donation and output shardings exactly as a call would.
    Ok(match what {
        "forward" => {
            let jit = Jit::with_client("forward", client, |args: &Tree<Tensor>| {
                let opts = ModelOptions { scan, remat, ..ModelOptions::default() };
                gemma::model_with_layout(&setup.cfg, args, opts, sharded.then(|| layout.clone()))
            })
            .with_mesh(setup.mesh.clone())
            .with_rule(|path, _| forward_spec(setup, path));
            let types = gemma::model_args(&setup.cfg, dtype, batch, seq, ModelOptions::default());
            jit.lower(&with_specs(&types, |p| forward_spec(setup, p)))?
        }
        "train-step" => {
            let hp = Hyper { compute: dtype, remat, scan_layers: scan, ..Hyper::default() };
            train::train_step_jit(client, setup, &hp).lower(&setup.train_args())?
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
            .with_rule(|path, _| rules::extend_spec(cfg, path, mesh, fsdp));
            // With `scan`, weights and cache stacked by layer, as `generate` places them.
            let types = gemma::decode::extend_args_with(cfg, dtype, batch, new, cache_len, scan);
            jit.lower(&with_specs(&types, |p| rules::extend_spec(cfg, p, mesh, fsdp)))?
        }
        other => bail!("--what {other}: unknown program (one of {})", PROGRAMS.join(", ")),
    })
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

/// Creates `out`, or empties an earlier dump there (a directory with our marker); refuses a
/// file, or any other non-empty directory, naming what is in the way. Only a dump's own files
/// are removed.
fn prepare_out(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        bail!("--out {} is a file, not a directory", out.display());
    }
    let ours = [STABLEHLO, BEFORE, AFTER_SPMD, AFTER, SUMMARY, RAW];
    // Only a directory with our marker is an earlier dump: names alone prove nothing (a
    // `summary.txt` or `xla/` of the user's own must survive).
    data::files::claim_dir(out, "gemma-xla dump", |_| false).map_err(|e| Error::from(e).context("--out"))?;
    for name in ours {
        let p = out.join(name);
        let r = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) => continue,
        };
        r.map_err(|e| Error::from(e).context(format!("cannot remove the earlier dump's {}", p.display())))?;
    }
    data::files::ensure_writable_dir(out)?;
    Ok(())
}
