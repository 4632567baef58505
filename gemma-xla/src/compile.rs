//! `gemma-xla compile`: compiles a Gemma program for a TPU slice this machine does not have
//! (libtpu makes the topology, e.g. `v5e:2x4`; PJRT_Compile needs no TPU) and reports what XLA
//! made of it: memory per chip against the chip's HBM, the collectives of the partitioned
//! program, FLOPs per step and the step time and tokens/s they allow. Exits non-zero, saying
//! why and which meshes `plan` would try, when the program does not fit.
use crate::dump::{self, summary};
use crate::plan;
use crate::setup::{load_config, Setup};
use anyhow::{bail, Context, Result};
use gemma::rules;
use runtime::{AotExecutable, CompileOptions, Mesh, PluginSpec, Program, Topology, XlaDump};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// TPU v5e: HBM per chip and peak bf16 FLOP/s per chip (public figures).
pub const V5E_HBM: u64 = 16 << 30;
pub const V5E_PEAK_FLOPS: f64 = 197e12;

#[derive(clap::Args)]
pub struct CompileArgs {
    /// The TPU slice to compile for: v5e:2x2 (4 chips, 1 host), v5e:2x4 (8 chips, 2 hosts), v5e:16x16 (256 chips, 64 hosts), ...
    #[arg(long)]
    topology: String,
    /// Model config: tiny, 2b, 7b or an HF config.json
    #[arg(long, value_name = "tiny|2b|7b|CONFIG.json")]
    config: String,
    /// Device mesh over all of the topology's chips, e.g. data=2,model=4 (model inside a host where it fits)
    #[arg(long)]
    mesh: String,
    /// Also split every weight and optimizer state over `data` (as `train --fsdp`)
    #[arg(long)]
    fsdp: bool,
    /// Sequences per step (divisible by the mesh's data axis)
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    batch: u32,
    /// Tokens per sequence (prefill: the new tokens per row of one call)
    #[arg(long, default_value_t = gemma_xla::data::DEFAULT_SEQ as u32, value_parser = clap::value_parser!(u32).range(2..))]
    seq: u32,
    /// prefill and decode: the KV cache's slots per row [default: twice --seq]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    cache_len: Option<u32>,
    /// Compute dtype (train-step keeps f32 master weights and optimizer states)
    #[arg(long, default_value = "bf16", value_parser = ["bf16", "f32"])]
    dtype: String,
    /// The program to compile
    #[arg(long, default_value = "train-step", value_parser = dump::PROGRAMS)]
    what: String,
    /// train-step: recompute each decoder layer in the backward pass (as `train --remat`)
    #[arg(long, default_value = "none", value_parser = ["none", "full", "save-dots"])]
    remat: String,
    /// Also write what `gemma-xla dump` writes (StableHLO, XLA's stages, summary.txt) into DIR
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
    /// Write the serialized TPU executable to EXE (atomically)
    #[arg(long, value_name = "EXE")]
    out: Option<PathBuf>,
    /// The plugin that makes the topology [default: tpu, i.e. libtpu; installed into the cache if missing]
    #[arg(long)]
    plugin: Option<String>,
}

pub fn compile(a: &CompileArgs) -> Result<()> {
    let cfg = load_config(&a.config)?;
    let inputs: Vec<PathBuf> = if a.config.ends_with(".json") { vec![PathBuf::from(&a.config)] } else { Vec::new() };
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    if let Some(out) = &a.out {
        gemma_xla::files::refuse_input_as_output(out, &input_refs)?;
        if out.is_dir() {
            bail!("--out {} is a directory; give the path of the executable file to write", out.display());
        }
    }
    if let Some(d) = &a.dump {
        gemma_xla::files::refuse_input_as_output(d, &input_refs)?;
    }
    let mesh = Mesh::parse(&a.mesh).with_context(|| format!("--mesh {}", a.mesh))?;
    rules::check_mesh(&mesh)?;
    rules::param_specs(&cfg, &mesh, a.fsdp)?;
    rules::check_batch(a.batch as i64, &mesh)?;

    let spec = PluginSpec::parse(a.plugin.as_deref().unwrap_or("tpu"))?;
    let topo = Topology::open(&spec, &a.topology).with_context(|| format!("--topology {}", a.topology))?;
    let chips = topo.devices().len();
    let ids = topo
        .mesh_device_ids(&mesh)
        .map_err(|e| anyhow::anyhow!("--mesh {}: {e}; {}", a.mesh, rules::suggest_meshes(&cfg, chips as i64, a.fsdp)))?;
    println!(
        "topology {}: {chips} x {} on {} host(s) ({} {})",
        topo.name(),
        topo.chip_kind(),
        topo.num_processes(),
        topo.plugin().path.display(),
        topo.platform_version()?.lines().next().unwrap_or("")
    );
    println!("mesh {mesh}{}: device ids {}", if a.fsdp { " fsdp" } else { "" }, layout_text(&topo, &mesh, &ids));

    let setup = Setup { cfg, mesh: mesh.clone(), fsdp: a.fsdp, batch: a.batch as usize, seq: a.seq as usize };
    let started = Instant::now();
    let lowered = dump::lower(None, &setup, &a.what, &a.dtype, &a.remat, a.cache_len)?;
    let traced = started.elapsed();
    let what = format!("{} ({}; batch {} x seq {}, {})", a.what, a.config, a.batch, a.seq, a.dtype);
    let params = rules::param_count(&setup.cfg);
    println!("program: {what}, {params} parameters");

    // XLA's optimised HLO is read from its dump: into --dump DIR, else a temporary directory.
    let mut compiled: Option<(AotExecutable, f64)> = None;
    let mut compile_with = |program: &Program, options: &CompileOptions| -> Result<()> {
        let t = Instant::now();
        let exe = match topo.compile(program, options) {
            Ok(exe) => exe,
            Err(e) => {
                // XLA's TPU compiler refuses outright a program whose temporaries cannot fit:
                // say so as for a program that compiles but does not fit, with plan's advice.
                if let Some((needed, available)) = hbm_oom(&e.to_string()) {
                    bail!(
                        "{} does not fit a v5e chip: XLA's TPU compiler stopped (out of HBM): its temporaries alone need \
                         {needed} per chip, more than the {available} it can use{}",
                        a.what,
                        fit_advice(a, &setup, chips)?
                    );
                }
                return Err(anyhow::Error::new(e).context(format!("compiling {} for {}", a.what, topo.name())));
            }
        };
        compiled = Some((exe, t.elapsed().as_secs_f64()));
        Ok(())
    };
    let tmp = std::env::temp_dir().join(format!(".gemma-xla-compile-{}", std::process::id()));
    let (after, before) = match &a.dump {
        Some(dir) => {
            dump::write_dump(dir, &lowered, &setup, &what, &mut compile_with)?;
            let read = |n: &str| std::fs::read_to_string(dir.join(n)).with_context(|| format!("cannot read {}", dir.join(n).display()));
            (read(dump::AFTER)?, read(dump::BEFORE)?)
        }
        None => {
            let program = Program::from_text(&lowered.stablehlo)?;
            let xla_dump = XlaDump { dir: tmp.clone(), pass_re: None, module_re: None };
            let result = compile_with(&program, &lowered.options.clone().with_dump(xla_dump)).and_then(|()| {
                let files = summary::XlaFiles::find(&tmp, false)?;
                let read = |p: &Path| std::fs::read_to_string(p).with_context(|| format!("cannot read XLA's dump {}", p.display()));
                Ok((read(&files.after)?, read(&files.before)?))
            });
            let _ = std::fs::remove_dir_all(&tmp);
            result?
        }
    };
    let Some((exe, seconds)) = compiled else { bail!("the program was not compiled") };
    println!("compiled in {seconds:.1} s (tracing and lowering {:.1} s)", traced.as_secs_f64());

    let m = exe.memory_stats()?;
    let used = (m.arguments + m.outputs - m.alias + m.temp + m.generated_code).max(0) as u64;
    let human = |b: i64| plan::human_bytes(b.max(0) as u64);
    println!("\nmemory per chip (XLA's compiled memory statistics):");
    println!("  arguments       {:>12}", human(m.arguments));
    println!("  outputs         {:>12}", human(m.outputs));
    println!("  aliased         {:>12}  (outputs written into donated arguments; counted once)", human(m.alias));
    println!("  temporaries     {:>12}", human(m.temp));
    println!("  generated code  {:>12}", human(m.generated_code));
    println!(
        "  total           {:>12}  of {} HBM per v5e chip ({:.1}%)",
        plan::human_bytes(used),
        plan::human_bytes(V5E_HBM),
        100.0 * used as f64 / V5E_HBM as f64
    );

    let lines = summary::collectives(&after, &before, &mesh);
    println!(
        "\ncollectives in the partitioned, optimised HLO: {} (by kind and mesh axes; each one is in --dump's summary.txt)",
        lines.len() / 2
    );
    for (n, kind, example) in group_collectives(&lines) {
        println!("  {n:>5} {kind}  (e.g. {example})");
    }

    let cost = exe.cost_analysis()?;
    let tokens = match a.what.as_str() {
        "decode" => a.batch as f64,
        _ => a.batch as f64 * a.seq as f64,
    };
    match cost.flops() {
        Some(per_chip) => {
            let total = per_chip * chips as f64;
            println!(
                "\nFLOPs per step: {} per chip (XLA's cost analysis of one chip's partitioned program), {} for all {chips} chips",
                flops_text(per_chip),
                flops_text(total)
            );
            if a.what == "train-step" {
                let model = expected_train_flops(&setup.cfg, a.seq as f64) * tokens;
                println!(
                    "  {:.0} FLOPs per token; 6 x parameters x tokens + attention (12 x layers x seq x heads x head_dim per token) = {}, compiled {:.2}x of it",
                    total / tokens,
                    flops_text(model),
                    total / model
                );
                if total < 0.9 * model {
                    println!(
                        "  (below the formula: XLA's cost analysis counts a while loop's body once, and the TPU compiler puts \
                         some sharded matmuls into loops of collective-permutes; step times below use the compiled count)"
                    );
                }
            }
            for share in [1.0, 0.5] {
                let step = per_chip / (V5E_PEAK_FLOPS * share);
                println!(
                    "  at {:.0}% of 197 TFLOP/s per chip: step {}, {:.0} tokens/s ({:.0} per chip)",
                    share * 100.0,
                    seconds_text(step),
                    tokens / step,
                    tokens / step / chips as f64
                );
            }
        }
        None => println!("\nFLOPs per step: the plugin's cost analysis has no `flops`"),
    }

    if let Some(out) = &a.out {
        let bytes = exe.serialize()?;
        gemma_xla::files::write_atomic(out, &bytes)?;
        println!("\nwrote {} ({} bytes, the serialized executable)", out.display(), bytes.len());
    }
    if let Some(d) = &a.dump {
        println!("wrote {}", d.display());
    }
    if used > V5E_HBM {
        bail!("{}", does_not_fit(a, &setup, chips, used)?);
    }
    Ok(())
}

/// Counts of summary.txt's collective lines by opcode and mesh axes, in order of first
/// appearance, each with its first op's name and shape as an example.
fn group_collectives(lines: &[String]) -> Vec<(usize, String, String)> {
    let mut groups: Vec<(usize, String, String)> = Vec::new();
    for l in lines.iter().step_by(2) {
        let l = l.trim_start();
        let (Some((op, rest)), Some(over)) = (l.split_once(' '), l.rfind(" over ")) else { continue };
        let axes = l[over + 6..].split(", replica_groups").next().unwrap_or("?");
        let kind = format!("{op} over {axes}");
        let (name, shape) = rest[..over.saturating_sub(op.len() + 1).min(rest.len())].split_once(": ").unwrap_or((rest, ""));
        let shape = if shape.len() > 60 { format!("a tuple of {} arrays", shape.matches('[').count()) } else { shape.to_string() };
        match groups.iter_mut().find(|g| g.1 == kind) {
            Some(g) => g.0 += 1,
            None => groups.push((1, kind, format!("{name}: {shape}"))),
        }
    }
    groups
}

/// The two figures of XLA's TPU out-of-memory refusal ("... the total memory required for HLO
/// temporaries (17.16G) exceeds available HBM (15.75G) ..."), when `text` is one.
fn hbm_oom(text: &str) -> Option<(String, String)> {
    if !text.contains("CompileTimeHbmOom") && !text.contains("Ran out of memory on HBM") {
        return None;
    }
    let needed = text.split_once("required for ")?.1.split_once('(')?.1.split_once(')')?.0;
    let available = text.split_once("available HBM (")?.1.split_once(')')?.0;
    Some((needed.to_string(), available.to_string()))
}

/// Why a program needs more than a chip's HBM, and the meshes to try.
fn does_not_fit(a: &CompileArgs, setup: &Setup, chips: usize, used: u64) -> Result<String> {
    Ok(format!(
        "{} does not fit a v5e chip: it needs {} per chip, {} more than its {} HBM{}",
        a.what,
        plan::human_bytes(used),
        plan::human_bytes(used - V5E_HBM),
        plan::human_bytes(V5E_HBM),
        fit_advice(a, setup, chips)?
    ))
}

/// `. gemma-xla plan's estimate per chip: ...; X dominate (...). Meshes plan estimates to fit
/// at this batch: ...` (or why none does), for a program that does not fit.
fn fit_advice(a: &CompileArgs, setup: &Setup, chips: usize) -> Result<String> {
    let c = if a.dtype == "bf16" { 2 } else { 4 };
    let (cfg, batch, seq) = (&setup.cfg, a.batch as i64, a.seq as i64);
    let mut s = String::new();
    let step = |fsdp| plan::Step { fsdp, batch, seq, c, remat: &a.remat };
    let est = plan::estimate(cfg, &setup.mesh, &step(setup.fsdp))?;
    let parts = [
        ("weights (compute copy, f32 master, gradients, FSDP gathers)", est.weights + est.master_weights + est.gradients + est.fsdp_gather),
        ("optimizer state (AdamW m and v)", est.adam_m + est.adam_v),
        ("activations", est.activations),
    ];
    let (name, most) = parts.iter().max_by_key(|(_, b)| *b).map(|(n, b)| (*n, *b)).unwrap_or(("?", 0));
    s += &format!(
        ". gemma-xla plan's estimate per chip: {}; {name} dominate ({})",
        parts.iter().map(|(n, b)| format!("{n} {}", plan::human_bytes(*b))).collect::<Vec<_>>().join(", "),
        plan::human_bytes(most)
    );
    let fits: Vec<String> = [a.fsdp, true]
        .iter()
        .flat_map(|&fsdp| rules::working_meshes(cfg, chips as i64, fsdp).into_iter().map(move |m| (m, fsdp)))
        .filter_map(|(m, fsdp)| {
            let t = plan::estimate(cfg, &m, &step(fsdp)).ok()?.total();
            (t <= V5E_HBM && rules::check_batch(batch, &m).is_ok())
                .then(|| format!("{m}{} ({})", if fsdp { " --fsdp" } else { "" }, plan::human_bytes(t)))
        })
        .collect();
    let mut unique = fits.clone();
    unique.dedup();
    if unique.is_empty() {
        s += &format!(
            ". No data,model mesh of {chips} chips fits by plan's estimate at batch {batch} x seq {seq}; {}. Use a larger slice or a smaller batch",
            rules::suggest_meshes(cfg, chips as i64, true)
        );
    } else {
        s += &format!(". Meshes plan estimates to fit at this batch: {}", unique.join(", "));
    }
    Ok(s)
}

/// `[0,1,2,3 | 4,5,6,7]`: the mesh's device ids in mesh order, `|` between hosts.
fn layout_text(topo: &Topology, mesh: &Mesh, ids: &[i64]) -> String {
    let process = |id: i64| topo.devices().iter().find(|d| i64::from(d.id) == id).map_or(-1, |d| d.process_index);
    let mut s = String::from("[");
    for (i, &id) in ids.iter().enumerate() {
        if i > 0 {
            s += if process(ids[i - 1]) != process(id) { " | " } else { "," };
        }
        if ids.len() > 32 && i == 16 {
            s += &format!("... ({} more)", ids.len() - 16);
            break;
        }
        s += &id.to_string();
    }
    let model = mesh.axis_size("model").unwrap_or(1) as usize;
    let per_host = ids.len() / topo.num_processes().max(1);
    let within = model <= per_host && per_host.checked_rem(model) == Some(0);
    format!("{s}] (model={model} {} a host's {per_host} chips)", if within { "inside" } else { "spans more than" })
}

/// Training FLOPs per token by the usual count: 6 per parameter (forward 2, backward 4; the
/// tied embedding counted once, as the unembedding matmul) plus attention's scores and
/// weighted sum, 12 x layers x seq x heads x head_dim (causal masking not discounted).
pub fn expected_train_flops(cfg: &gemma::Config, seq: f64) -> f64 {
    let attention = 12.0 * cfg.num_hidden_layers as f64 * seq * (cfg.num_attention_heads * cfg.head_dim) as f64;
    6.0 * rules::param_count(cfg) as f64 + attention
}

fn seconds_text(s: f64) -> String {
    match s {
        s if s >= 1.0 => format!("{s:.2} s"),
        s if s >= 1e-3 => format!("{:.2} ms", s * 1e3),
        s => format!("{:.2} us", s * 1e6),
    }
}

fn flops_text(f: f64) -> String {
    let units = [(1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")];
    match units.iter().find(|(u, _)| f >= *u) {
        Some((u, name)) => format!("{:.3} {name}", f / u),
        None => format!("{f:.0} FLOP"),
    }
}

#[cfg(test)]
mod tests {
    use super::hbm_oom;

    #[test]
    fn reads_xla_tpu_out_of_memory_refusals() {
        // As libtpu 0.0.52 words it (7B, v5e:2x4, data=2,model=4 --fsdp --remat full, batch 8 x 2048).
        let text = "compiling train-step for v5e:2x4: PJRT_Compile failed with RESOURCE_EXHAUSTED (8): E1000: CompileTimeHbmOom: \
                    Ran out of memory on HBM, the total memory required for HLO temporaries (17.16G) exceeds available HBM \
                    (15.75G). HLO module: train_step.";
        assert_eq!(hbm_oom(text), Some(("17.16G".to_string(), "15.75G".to_string())));
        assert_eq!(hbm_oom("PJRT_Compile failed with INVALID_ARGUMENT (3): bad mesh"), None);
        // Recognised but not in the expected words: no figures, the error stays XLA's own.
        assert_eq!(hbm_oom("CompileTimeHbmOom: something else"), None);
    }
}
