//! `gemma-xla compile`: compiles a Gemma program for a TPU slice this machine does not have
//! (libtpu makes the topology, e.g. `v5e:2x4`; PJRT_Compile needs no TPU) and reports what XLA
//! made of it: memory per chip against the chip's HBM, the collectives of the partitioned
//! program, FLOPs per step and the step time and tokens/s they allow. Exits non-zero, saying
//! why and which meshes `plan` would try, when the program does not fit.
use crate::args::{ConfigArg, Dtype, DtypeArg, MeshArgs, RematArg, ShapeArgs};
use anyhow::{bail, Context, Result};
use gemma::rules;
use inspect::tpu::{does_not_fit, expected_train_flops, fit_advice, flops_text, group_collectives, hbm_oom, layout_text, seconds_text};
use inspect::tpu::{V5E_HBM, V5E_PEAK_FLOPS};
use inspect::{dump, human_bytes, summary};
use runtime::{AotExecutable, CompileOptions, Mesh, PluginSpec, Program, Topology, XlaDump};
use std::path::{Path, PathBuf};
use train::Setup;

#[derive(clap::Args)]
pub struct CompileArgs {
    /// The TPU slice to compile for: v5e:2x2 (4 chips, 1 host), v5e:2x4 (8 chips, 2 hosts), v5e:16x16 (256 chips, 64 hosts), ...
    #[arg(long)]
    topology: String,
    #[command(flatten)]
    config: ConfigArg,
    // --mesh: over all of the topology's chips, e.g. data=2,model=4 (model inside a host where it fits); required.
    #[command(flatten)]
    mesh: MeshArgs,
    // --seq default: 64.
    #[command(flatten)]
    shape: ShapeArgs,
    /// prefill and decode: the KV cache's slots per row [default: twice --seq]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    cache_len: Option<u32>,
    // --dtype default: bf16.
    #[command(flatten)]
    dtype: DtypeArg,
    /// The program to compile
    #[arg(long, default_value = "train-step", value_parser = dump::PROGRAMS)]
    what: String,
    #[command(flatten)]
    remat: RematArg,
    /// Also write what `gemma-xla dump` writes (StableHLO, XLA's stages, summary.txt) into DIR
    #[arg(long, value_name = "DIR")]
    dump: Option<PathBuf>,
    /// Write the serialized TPU executable to EXE (atomically)
    #[arg(long, value_name = "EXE")]
    out: Option<PathBuf>,
    /// The plugin that makes the topology [default: tpu, i.e. libtpu; installed into the cache if missing]
    #[arg(long)]
    plugin: Option<String>,
    /// train-step: the LoRA step (adapters train, the base frozen in --dtype)
    #[command(flatten)]
    lora: crate::args::LoraArgs,
}

pub fn compile(a: &CompileArgs) -> Result<()> {
    let (config_name, cfg) = a.config.required()?;
    let inputs: Vec<PathBuf> = a.config.file().into_iter().collect();
    let Some(mesh_flag) = &a.mesh.mesh else { bail!("give --mesh over the topology's chips, e.g. data=2,model=4") };
    let seq = a.shape.seq_or(data::DEFAULT_SEQ as u32, 2)?;
    let (batch, fsdp, dtype, remat) = (a.shape.batch, a.mesh.fsdp, a.dtype.or(Dtype::Bf16), a.remat.remat());
    let c = if dtype == Dtype::Bf16 { 2 } else { 4 };
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    if let Some(out) = &a.out {
        data::files::refuse_input_as_output(out, &input_refs)?;
        if out.is_dir() {
            bail!("--out {} is a directory; give the path of the executable file to write", out.display());
        }
    }
    if let Some(d) = &a.dump {
        data::files::refuse_input_as_output(d, &input_refs)?;
    }
    let mesh = Mesh::parse(mesh_flag).with_context(|| format!("--mesh {mesh_flag}"))?;
    rules::check_mesh(&mesh)?;
    rules::param_specs(&cfg, &mesh, fsdp)?;
    rules::check_batch(batch as i64, &mesh)?;

    let spec = PluginSpec::parse(a.plugin.as_deref().unwrap_or("tpu"))?;
    let topo = Topology::open(&spec, &a.topology).with_context(|| format!("--topology {}", a.topology))?;
    let chips = topo.devices().len();
    let ids = topo
        .mesh_device_ids(&mesh)
        .map_err(|e| anyhow::anyhow!("--mesh {mesh_flag}: {e}; {}", rules::suggest_meshes(&cfg, chips as i64, fsdp)))?;
    println!(
        "topology {}: {chips} x {} on {} host(s) ({} {})",
        topo.name(),
        topo.chip_kind(),
        topo.num_processes(),
        topo.plugin().path.display(),
        topo.platform_version()?.lines().next().unwrap_or("")
    );
    println!("mesh {mesh}{}: device ids {}", if fsdp { " fsdp" } else { "" }, layout_text(&topo, &mesh, &ids));

    let lora = a.lora.lora(&cfg)?;
    if lora.is_some() && a.what != "train-step" {
        bail!("--lora-rank applies to --what train-step (forward, prefill and decode take no adapters here)");
    }
    let setup = Setup {
        cfg,
        mesh: mesh.clone(),
        fsdp,
        batch: batch as usize,
        seq: seq as usize,
        weights: false,
        lora,
        base_dtype: dtype.dtype(),
        stacked: a.remat.scan(),
    };
    if topo.num_processes() > 1 {
        for line in host_layout(&topo, &setup, &ids)? {
            println!("{line}");
        }
    }
    let phase = crate::progress::Phase::start(&format!("compile: tracing and lowering {}", a.what));
    let lowered = dump::lower(None, &setup, &a.what, dtype.dtype(), remat, a.remat.scan(), a.cache_len)?;
    let traced = phase.done();
    let what = format!("{} ({config_name}; batch {batch} x seq {seq}, {})", a.what, dtype.name());
    let params = rules::param_count(&setup.cfg);
    println!("program: {what}, {params} parameters");

    // XLA's optimised HLO is read from its dump: into --dump DIR, else a temporary directory.
    let mut compiled: Option<(AotExecutable, f64)> = None;
    let mut compile_with = |program: &Program, options: &CompileOptions| -> Result<()> {
        let phase = crate::progress::Phase::start(&format!("compile: XLA compiling {} for {}", a.what, topo.name()));
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
                        fit_advice(&setup, c, remat, chips)?
                    );
                }
                return Err(anyhow::Error::new(e).context(format!("compiling {} for {}", a.what, topo.name())));
            }
        };
        compiled = Some((exe, phase.done().as_secs_f64()));
        Ok(())
    };
    let tmp = std::env::temp_dir().join(format!(".gemma-xla-compile-{}", std::process::id()));
    let (after, before) = match &a.dump {
        Some(dir) => {
            if dir.exists() && !dir.is_dir() {
                bail!("--dump {} is a file, not a directory", dir.display());
            }
            let _lock =
                data::files::OutputLock::acquire(dir, "gemma-xla compile --dump").with_context(|| format!("--dump {}", dir.display()))?;
            dump::write_dump(dir, &lowered, &setup, &what, |p, o| {
                compile_with(p, o).map_err(|e| inspect::Error::Invalid(format!("{e:#}")))
            })?;
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
    let human = |b: i64| human_bytes(b.max(0) as u64);
    println!("\nmemory per chip (XLA's compiled memory statistics):");
    println!("  arguments       {:>12}", human(m.arguments));
    println!("  outputs         {:>12}", human(m.outputs));
    println!("  aliased         {:>12}  (outputs written into donated arguments; counted once)", human(m.alias));
    println!("  temporaries     {:>12}", human(m.temp));
    println!("  generated code  {:>12}", human(m.generated_code));
    println!(
        "  total           {:>12}  of {} HBM per v5e chip ({:.1}%)",
        human_bytes(used),
        human_bytes(V5E_HBM),
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
    let step = inspect::cost::step_cost(&after, &mesh);
    if !step.loops.is_empty() {
        let trips: Vec<String> = step
            .loops
            .iter()
            .map(|l| {
                let t = l.trips.map_or_else(|| "unknown (counted once)".to_string(), |n| n.to_string());
                if l.runs > 1 {
                    format!("{t} x {} runs", l.runs)
                } else {
                    t
                }
            })
            .collect();
        println!("while loops: {} (trip counts {})", step.loops.len(), trips.join(", "));
    }
    if !step.collectives.is_empty() {
        println!("collectives per step, loop trips included (bytes per chip; sent: the ring algorithms' count):");
        for c in &step.collectives {
            println!(
                "  {:<19} over {:<10} {:>4} ops {:>7} runs  {:>11} data  {:>11} sent",
                c.op,
                c.axes,
                c.instructions,
                c.runs,
                human_bytes(c.bytes),
                human_bytes(c.sent)
            );
        }
        println!("  total sent per chip per step: {}", human_bytes(step.sent()));
    }

    let cost = exe.cost_analysis()?;
    let tokens = match a.what.as_str() {
        "decode" => batch as f64,
        _ => batch as f64 * seq as f64,
    };
    match cost.flops() {
        Some(xla) => {
            let per_chip = step.flops_with_trips(xla);
            let total = per_chip * chips as f64;
            println!(
                "\nFLOPs per step: {} per chip (XLA's cost analysis of one chip's partitioned program{}), {} for all {chips} chips",
                flops_text(per_chip),
                if per_chip > xla {
                    format!(
                        ", which counts a loop body once, plus {} of loop-body matmuls for their other trips",
                        flops_text(per_chip - xla)
                    )
                } else {
                    String::new()
                },
                flops_text(total)
            );
            if a.what == "train-step" {
                let model = expected_train_flops(&setup.cfg, seq as f64) * tokens;
                println!(
                    "  {:.0} FLOPs per token; 6 x parameters x tokens + attention (12 x layers x seq x heads x head_dim per token) = {}, compiled {:.2}x of it",
                    total / tokens,
                    flops_text(model),
                    total / model
                );
                if total < 0.9 * model {
                    println!(
                        "  (below the formula: loops whose trip count was not found are counted once; step times below use the compiled count)"
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
        data::files::write_atomic(out, &bytes)?;
        println!("\nwrote {} ({} bytes, the serialized executable)", out.display(), bytes.len());
    }
    if let Some(d) = &a.dump {
        println!("wrote {}", d.display());
    }
    if used > V5E_HBM {
        bail!("{}", does_not_fit(&a.what, &setup, c, remat, chips, used)?);
    }
    Ok(())
}

/// What each host of a multi-host slice holds, as `train` run by `gemma-xla launch` places it:
/// its mesh devices (each process owns the chips the topology says are on its host) and the
/// rows of each global batch it reads (`train::hosts::host_rows`). Checks that each host's
/// devices are a block of consecutive mesh positions, as placement assumes.
fn host_layout(topo: &Topology, setup: &Setup, ids: &[i64]) -> Result<Vec<String>> {
    let (mesh, batch, seq) = (&setup.mesh, setup.batch as i64, setup.seq as i64);
    let owner_of: std::collections::HashMap<i64, usize> =
        topo.devices().iter().map(|d| (i64::from(d.id), d.process_index as usize)).collect();
    let owners: Vec<usize> = ids.iter().map(|id| owner_of[id]).collect();
    let hosts = topo.num_processes();
    let blocks = runtime::Ownership::with_stand_ins(0, hosts, owners.len())?;
    if blocks.owners() != owners.as_slice() {
        bail!("the topology's hosts do not hold consecutive mesh devices ({owners:?}); multi-host placement assumes they do");
    }
    let spec = setup.sharding("batch.tokens", 2).spec;
    let mut lines =
        vec![format!("hosts: {hosts}, each holding {} consecutive mesh devices and the batch rows its devices hold", owners.len() / hosts)];
    for h in 0..hosts {
        let mine: Vec<usize> = (0..owners.len()).filter(|&d| owners[d] == h).collect();
        let rows = train::hosts::host_rows(batch, seq, mesh, &spec, &owners, h)?;
        let rows: Vec<String> = rows.iter().map(|r| format!("{}..{}", r.start, r.end)).collect();
        lines.push(format!("  host {h}: mesh devices {}-{}, batch rows {}", mine[0], mine[mine.len() - 1], rows.join(",")));
    }
    Ok(lines)
}
