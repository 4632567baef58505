//! The train step (forward, backward, clipping, AdamW in one program) with its state kept on
//! the devices, as `gemma-xla train` runs it: `jit` over `gemma::train_step`, the state
//! donated, every tensor split as `gemma::rules` says. Peer: benches/jax_train_step.py.
//!
//! ```text
//! train_step step CONFIG BATCH SEQ MESH STEPS [f32|bf16]
//!                                               one JSON line: median step time (wall, with the
//!                                               loss fetched every step), host time between steps
//! train_step matmul N REPS                      one JSON line: an N x N x N f32 matmul through jit
//! train_step startup CONFIG BATCH SEQ CACHE_DIR  one JSON line: trace + lower + compile of the
//!                                               one-device f32 step, with the persistent
//!                                               compilation cache in CACHE_DIR (cold or warm)
//! train_step specs CONFIG MESH [fsdp]           the rules' PartitionSpec of every parameter (JSON)
//! train_step trace PRESET REPS                   trace + lower the whole bf16-compute train step
//!                                               (batch 8 x 2048), shapes only: one JSON line
//! ```
//! CONFIG is a preset (tiny, 2b, 7b) or an HF config.json; MESH e.g. `data=1` or `data=2,model=2`.
//! `--no-scan-layers` anywhere: step and startup with the layers unrolled (default: a loop).
use anyhow::{bail, Context, Result};
use gemma::{Config, Hyper};
use graph::{DType, Tensor, TensorType, Tree};
use runtime::{Arg, Client, DeviceArray, HostArray, Mesh, NamedSharding, PartitionSpec, PluginSpec};
use std::path::Path;
use std::time::Instant;

fn config(name: &str) -> Result<Config> {
    Ok(if name.ends_with(".json") { Config::from_json_file(Path::new(name))? } else { Config::preset(name)? })
}

fn client(devices: usize) -> Result<Client> {
    Ok(Client::open(&PluginSpec::from_flag_or_env(None)?, Some(devices))?)
}

/// CPU time (user + system) of this process so far, in seconds, from /proc/self/stat (Linux;
/// 0 elsewhere): less disturbed than wall time by other processes on a shared machine.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = after.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the command name; 100 Hz.
    f.get(11).zip(f.get(12)).map(|(u, s)| (u + s) / 100.0).unwrap_or(0.0)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Multiply-adds x 2 of one train step: 3x the forward's (the backward does two products per
/// forward product), embedding lookups not counted.
fn step_flops(cfg: &Config, batch: i64, seq: i64) -> f64 {
    let (d, f, v) = (cfg.hidden_size as f64, cfg.intermediate_size as f64, cfg.vocab_size as f64);
    let (n, k, h) = (cfg.num_attention_heads as f64, cfg.num_key_value_heads as f64, cfg.head_dim as f64);
    let per_layer = d * n * h * 2.0 + 2.0 * d * k * h + 3.0 * d * f;
    let tokens = (batch * seq) as f64;
    let dense = 2.0 * tokens * (per_layer * cfg.num_hidden_layers as f64 + d * v);
    let attention = 4.0 * batch as f64 * (seq * seq) as f64 * n * h * cfg.num_hidden_layers as f64;
    3.0 * (dense + attention)
}

/// `cache`: measure start-up instead: the first call only (trace + lower + compile, or the
/// executable loaded from a persistent compilation cache in that directory).
/// `hp`: the compute dtype and whether the layers run as a loop (the rest is `Hyper::default()`).
fn step(cfg_name: &str, batch: i64, seq: i64, mesh: &str, steps: usize, hp: Hyper, cache: Option<&Path>) -> Result<()> {
    let cfg = config(cfg_name)?;
    let mesh = Mesh::parse(mesh)?;
    let mut client = client(mesh.num_devices() as usize)?;
    if let Some(dir) = cache {
        client.set_compile_cache(Some(runtime::CompileCache::new(dir)));
    }
    let steps = if cache.is_some() { 0 } else { steps };
    // Exactly the step `gemma-xla train` runs with no flags but --dtype: the same program,
    // the same shardings (train::Setup over gemma::rules::state_spec).
    let setup = train::Setup {
        cfg: cfg.clone(),
        mesh: mesh.clone(),
        fsdp: false,
        batch: batch as usize,
        seq: seq as usize,
        weights: false,
        lora: None,
        base_dtype: graph::DType::F32,
        stacked: hp.scan_layers,
    };
    let sharding = |path: &str, rank: usize| setup.sharding(path, rank);
    let jit = train::train_step_jit(Some(&client), &setup, &hp);
    let mut state: Tree<DeviceArray> = Tree::new();
    // The state as `train` holds it: layer weights stacked when the layers run as a loop.
    let stacking = gemma::stack::Stacking::of(&cfg);
    let init: std::collections::HashMap<String, Vec<f32>> = gemma::init_params(&cfg, 0).into_iter().map(|(n, _, v)| (n, v)).collect();
    for (name, dims) in setup.trainable() {
        let values: Vec<f32> = stacking.members(&name).iter().flat_map(|m| init[m].iter().copied()).collect();
        let zeros = HostArray::from_vec(&dims, vec![0f32; values.len()])?;
        let p = format!("state.params.{name}");
        state.insert(&p, DeviceArray::place(&client, &HostArray::from_vec(&dims, values)?, &sharding(&p, dims.len()))?)?;
        for part in ["m", "v"] {
            let p = format!("state.opt.{part}.{name}");
            state.insert(&p, DeviceArray::place(&client, &zeros, &sharding(&p, dims.len()))?)?;
        }
    }
    let s = HostArray::from_vec(&[], vec![0i32])?;
    state.insert("state.step", DeviceArray::place(&client, &s, &sharding("state.step", 0))?)?;
    let v = cfg.vocab_size as i64;
    let batches: Vec<HostArray> = (0..4)
        .map(|b| HostArray::from_vec(&[batch, seq], (0..batch * seq).map(|i| ((i * 7919 + b * 104729 + 1) % (v - 1) + 1) as i32).collect()))
        .collect::<Result<_, _>>()?;
    let tok_sharding = sharding("batch.tokens", 2);
    let (mut wall, mut exec) = (Vec::new(), Vec::new());
    let mut compile = 0.0;
    let mut loss = 0.0;
    let mut losses = Vec::new();
    let mut cpu0 = 0.0;
    for i in 0..steps + 1 {
        let t0 = Instant::now();
        let exec0 = jit.execute_time();
        let tokens = DeviceArray::place(&client, &batches[i % batches.len()], &tok_sharding)?;
        let mut args: Tree<Arg> = Tree::new();
        for (path, array) in state.into_leaves() {
            args.insert(path, Arg::Donate(array))?;
        }
        args.insert("batch.tokens", Arg::Donate(tokens))?;
        let mut out = jit.call(args)?;
        let metrics = out.take_subtree("metrics");
        state = out;
        // Logging every step: the three metrics come back to the host.
        let m: Vec<(String, f64)> =
            metrics.iter().map(|(k, a)| a.fetch().map(|h| (k.to_string(), h.to_f64_vec()[0]))).collect::<Result<_, _>>()?;
        loss = m.iter().find(|(k, _)| k.ends_with("loss")).context("no metrics.loss")?.1;
        losses.push(format!("{loss:.4}"));
        let dt = t0.elapsed().as_secs_f64();
        if i == 0 {
            compile = dt;
            cpu0 = cpu_seconds();
        } else {
            wall.push(dt);
            exec.push((jit.execute_time() - exec0).as_secs_f64());
        }
    }
    if !loss.is_finite() {
        bail!("the loss is {loss}");
    }
    if let Some(cache) = client.compile_cache() {
        let c = cache.stats();
        println!(
            "{{\"side\": \"gemma-xla\", \"startup_ms\": {:.1}, \"cache_hits\": {}, \"cache_misses\": {}, \"cache_stores\": {}}}",
            jit.stats().compile_time.as_secs_f64() * 1e3,
            c.hits,
            c.misses,
            c.stores
        );
        return Ok(());
    }
    let cpu = (cpu_seconds() - cpu0) / wall.len() as f64;
    let host: Vec<f64> = wall.iter().zip(&exec).map(|(w, e)| w - e).collect();
    let flops = step_flops(&cfg, batch, seq);
    println!(
        "{{\"side\": \"gemma-xla\", \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"cpu_ms\": {:.1}, \"exec_median_ms\": {:.3}, \"host_median_us\": {:.1}, \"first_step_s\": {:.2}, \"steps\": {}, \"gflop\": {:.3}, \"loss\": {loss:.6}, \"losses\": [{}]}}",
        1e3 * median(&wall),
        1e3 * wall.iter().cloned().fold(f64::INFINITY, f64::min),
        1e3 * cpu,
        1e3 * median(&exec),
        1e6 * median(&host),
        compile,
        wall.len(),
        flops / 1e9,
        losses.join(", ")
    );
    Ok(())
}

fn matmul(n: i64, reps: usize) -> Result<()> {
    let client = client(1)?;
    let jit = jit::flat("matmul", &client, |a: &[Tensor]| vec![a[0].matmul(&a[1])]);
    let ty = TensorType::new(DType::F32, &[n, n]);
    let host = HostArray::from_vec(&ty.dims, (0..n * n).map(|i| ((i % 17) as f32 - 8.0) / 16.0).collect())?;
    let one = NamedSharding { mesh: Mesh::parse("data=1")?, spec: PartitionSpec::replicated(2) };
    let a = DeviceArray::place(&client, &host, &one)?;
    let b = DeviceArray::place(&client, &host, &one)?;
    let mut times = Vec::new();
    for i in 0..reps + 1 {
        let before = jit.execute_time();
        let out = jit.call(Tree::from_leaves([("0", Arg::Keep(&a)), ("1", Arg::Keep(&b))])?)?;
        drop(out);
        if i > 0 {
            times.push((jit.execute_time() - before).as_secs_f64());
        }
    }
    let t = median(&times);
    let flops = 2.0 * (n * n * n) as f64;
    println!("{{\"side\": \"gemma-xla\", \"n\": {n}, \"median_ms\": {:.3}, \"gflops\": {:.1}}}", 1e3 * t, flops / t / 1e9);
    Ok(())
}

fn specs(cfg_name: &str, mesh: &str, fsdp: bool) -> Result<()> {
    let cfg = config(cfg_name)?;
    let mesh = Mesh::parse(mesh)?;
    let mut parts = Vec::new();
    for (name, spec) in gemma::rules::param_specs(&cfg, &mesh, fsdp)? {
        let dims: Vec<String> =
            spec.dims.iter().map(|axes| format!("[{}]", axes.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", "))).collect();
        parts.push(format!("\"{name}\": [{}]", dims.join(", ")));
    }
    let batch: Vec<String> = gemma::rules::batch_spec(&mesh).dims[0].iter().map(|a| format!("\"{a}\"")).collect();
    println!("{{\"params\": {{{}}}, \"batch\": [{}]}}", parts.join(", "), batch.join(", "));
    Ok(())
}

/// Trace (the model, its value_and_grad, clipping and AdamW: `gemma::train_step`) and lower to
/// StableHLO text, as `Jit::lower` does on one device, `reps` times.
fn trace(preset: &str, reps: usize) -> Result<()> {
    let cfg = config(preset)?;
    let hp = Hyper { compute: DType::Bf16, ..Hyper::default() };
    let types = gemma::train_args(&cfg, 8, 2048);
    let (mut total, mut traced, mut lowered) = (Vec::new(), Vec::new(), Vec::new());
    let (mut nodes, mut bytes) = (0, 0);
    for _ in 0..reps {
        let t0 = Instant::now();
        let mut failed = None;
        let f = graph::trace_tree("train_step", &types, |a| {
            gemma::train_step(&cfg, &hp, None, a).unwrap_or_else(|e| {
                failed = Some(e);
                Tree::new()
            })
        })?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        let t1 = Instant::now();
        let text = f.to_stablehlo()?;
        let t2 = Instant::now();
        traced.push((t1 - t0).as_secs_f64() * 1e3);
        lowered.push((t2 - t1).as_secs_f64() * 1e3);
        total.push((t2 - t0).as_secs_f64() * 1e3);
        (nodes, bytes) = (f.nodes.len(), text.len());
        drop((f, text));
    }
    let list = |v: &[f64]| v.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>().join(", ");
    println!(
        "{{\"side\": \"gemma-xla\", \"preset\": \"{preset}\", \"median_ms\": {:.1}, \"trace_ms\": {:.1}, \"lower_ms\": {:.1}, \"times_ms\": [{}], \"nodes\": {nodes}, \"bytes\": {bytes}}}",
        median(&total),
        median(&traced),
        median(&lowered),
        list(&total)
    );
    Ok(())
}

fn main() -> Result<()> {
    // As the gemma-xla binary does (`GLIBC_TUNABLES=` turns it off).
    runtime::host_malloc::reexec_with_huge_pages();
    // `--no-scan-layers` anywhere: the layers unrolled (step, startup), as `train` would run them.
    let all: Vec<String> = std::env::args().skip(1).collect();
    let scan = !all.iter().any(|x| x == "--no-scan-layers");
    let a: Vec<String> = all.into_iter().filter(|x| x != "--no-scan-layers").collect();
    let arg = |i: usize| a.get(i).map(String::as_str).with_context(|| format!("missing argument {i} (see the file's header)"));
    let num = |i: usize| -> Result<i64> { Ok(arg(i)?.parse()?) };
    match arg(0)? {
        "step" => {
            let compute = match a.get(6).map(String::as_str) {
                None | Some("f32") => DType::F32,
                Some("bf16") => DType::Bf16,
                Some(other) => bail!("compute dtype {other:?}: f32 or bf16"),
            };
            step(arg(1)?, num(2)?, num(3)?, arg(4)?, num(5)? as usize, Hyper { compute, scan_layers: scan, ..Hyper::default() }, None)
        }
        "startup" => {
            let hp = Hyper { compute: DType::F32, scan_layers: scan, ..Hyper::default() };
            step(arg(1)?, num(2)?, num(3)?, "data=1", 0, hp, Some(Path::new(arg(4)?)))
        }
        "matmul" => matmul(num(1)?, num(2)? as usize),
        "specs" => specs(arg(1)?, arg(2)?, a.get(3).map(String::as_str) == Some("fsdp")),
        "trace" => trace(arg(1)?, num(2)? as usize),
        other => bail!("unknown command {other:?}: step, startup, matmul, specs or trace"),
    }
}
