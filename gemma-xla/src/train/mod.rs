//! `gemma-xla train`: one compiled AdamW step (forward, backward, clipping, schedule, update),
//! sharded over a device mesh, its state donated and kept on the devices; metrics fetched only
//! when logged; checkpoints written atomically and resumed exactly.
mod checkpoints;
mod report;
mod sample;

pub(crate) use crate::setup::Setup;
use crate::setup::{load_config, resolve_mesh, train_step_jit};
use crate::PluginArgs;
use anyhow::{bail, Context, Result};
use checkpoints::{HostState, Meta};
use gemma::{Config, Hyper, Schedule};
use gemma_xla::data::{Dataset, Tokenizer};
use graph::{DType, Tree};
use runtime::{Arg, Client, DeviceArray, HostArray};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Model config: tiny, 2b, 7b or a config.json [default: tiny, or --init's]
    #[arg(long)]
    config: Option<String>,
    /// Start from this HF checkpoint directory (its config.json is the config)
    #[arg(long, value_name = "DIR")]
    init: Option<PathBuf>,
    /// Training data: a text file, a directory of .txt/.jsonl files, or a token .npy [N, T] [default: the built-in corpus]
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// HF tokenizer.json [default: bytes]
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    /// Device mesh, e.g. data=2,model=2 [default: data=2,model=2 on 4 devices, or data=N with --devices N]
    #[arg(long)]
    mesh: Option<String>,
    /// Also split every weight and optimizer state over `data` (ZeRO-3 style)
    #[arg(long)]
    fsdp: bool,
    #[command(flatten)]
    plugin: PluginArgs,
    /// Sequences per step (divisible by the mesh's data axis)
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence (a token .npy sets it)
    #[arg(long)]
    seq: Option<usize>,
    /// Updates to apply in all (the cosine schedule's length)
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Peak learning rate
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Warmup steps: lr (s+1)/W for s < W
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "constant"])]
    schedule: String,
    /// The cosine's final learning rate
    #[arg(long, default_value_t = 3e-4)]
    min_lr: f64,
    /// Decoupled weight decay on tensors of rank >= 2
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f64,
    /// Global gradient-norm clipping threshold (0 = off)
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    #[arg(long, default_value_t = 0.9)]
    b1: f64,
    #[arg(long, default_value_t = 0.95)]
    b2: f64,
    #[arg(long, default_value_t = 1e-8)]
    eps: f64,
    /// Recompute each decoder layer in the backward pass: none, full (keep only layer inputs) or save-dots (keep matmul results too)
    #[arg(long, default_value = "none", value_parser = ["none", "full", "save-dots"])]
    remat: String,
    /// Compute dtype: f32, or bf16 (f32 master weights and optimizer states)
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    /// Fetch and log the metrics every N steps
    #[arg(long, default_value_t = 50)]
    log_every: u64,
    /// Save a checkpoint every N steps (0: only at the end)
    #[arg(long, default_value_t = 250)]
    save_every: u64,
    /// Checkpoints to keep
    #[arg(long, default_value_t = 3)]
    keep: usize,
    /// Output directory: metrics.jsonl, loss.png, checkpoints/, the final config.json + model.safetensors
    #[arg(long, default_value = "out/train")]
    out: PathBuf,
    /// Continue from the newest complete checkpoint in --out
    #[arg(long)]
    resume: bool,
    /// Seed of the initialisation, of --shuffle and of the sample
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Visit the rows in a seeded random order per epoch
    #[arg(long)]
    shuffle: bool,
    /// Bytes (tokens) of the sample generated at the end (0: none)
    #[arg(long, default_value_t = 160)]
    sample: usize,
}

/// The config, and the checkpoint to start from.
fn resolve_config(a: &TrainArgs) -> Result<Config> {
    let config = a.config.as_deref().unwrap_or("tiny");
    match &a.init {
        None => load_config(config),
        Some(dir) => {
            let path = dir.join("config.json");
            if !path.is_file() {
                bail!("--init {}: no config.json in the directory", dir.display());
            }
            let cfg = Config::from_json_file(&path)?;
            if a.config.is_some() && load_config(config)? != cfg {
                bail!("--init {} has another config than --config {config} (see {})", dir.display(), path.display());
            }
            Ok(cfg)
        }
    }
}

/// `train`'s hyperparameters with every flag at its default but `--dtype` (what `dump`
/// compiles for the train step).
pub(crate) fn default_hyper(dtype: &str, remat: &str) -> Result<Hyper> {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        a: TrainArgs,
    }
    let d = <Defaults as clap::Parser>::try_parse_from(["train", "--dtype", dtype, "--remat", remat])?;
    Ok(hyper(&d.a))
}

pub fn hyper(a: &TrainArgs) -> Hyper {
    Hyper {
        lr: a.lr,
        warmup: a.warmup,
        steps: a.steps,
        schedule: if a.schedule == "constant" { Schedule::Constant } else { Schedule::Cosine },
        min_lr: a.min_lr,
        weight_decay: a.weight_decay,
        clip: a.clip,
        b1: a.b1,
        b2: a.b2,
        eps: a.eps,
        compute: if a.dtype == "bf16" { DType::Bf16 } else { DType::F32 },
        remat: a.remat.parse().unwrap_or_default(),
    }
}

pub fn train(a: &TrainArgs) -> Result<()> {
    let role = gemma_xla::hosts::HostRole::from_env(|k| std::env::var(k).ok())?;
    if role.count > 1 {
        bail!(
            "this process is host {} of {} ({}); a multi-host run needs every process to place only its own devices' \
             shards of each array (gemma_xla::hosts::host_rows says which rows of a batch those are), and the runtime \
             still places whole arrays on the devices of one process; run on one host (v5e-1, -4 or -8) for now, see docs/tpu-v5e.md",
            role.index,
            role.count,
            role.source
        );
    }
    let cfg = resolve_config(a)?;
    if let Some(init) = &a.init {
        if same_path(init, &a.out) {
            bail!("--out {} is the --init directory; the run would overwrite its input", a.out.display());
        }
    }
    // Nothing this run writes may be one of its inputs.
    let written =
        ["model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "metrics.jsonl", "loss.png"].map(|f| a.out.join(f));
    let mut inputs: Vec<&Path> = a.data.iter().chain(&a.tokenizer).map(PathBuf::as_path).collect();
    let init_files: Vec<PathBuf> = a.init.iter().flat_map(|d| ["config.json", "model.safetensors"].map(|f| d.join(f))).collect();
    inputs.extend(init_files.iter().map(PathBuf::as_path));
    for w in &written {
        gemma_xla::files::refuse_input_as_output(w, &inputs)?;
    }
    let hp = hyper(a);
    let tokenizer = Tokenizer::load(a.tokenizer.as_deref())?;
    let token_file = a.data.as_deref().is_some_and(|p| p.extension().is_some_and(|e| e == "npy"));
    if !token_file && tokenizer.vocab_size() as i64 > cfg.vocab_size {
        bail!("the tokenizer has {} tokens but the model's vocabulary is {}", tokenizer.vocab_size(), cfg.vocab_size);
    }
    let data = Dataset::load(a.data.as_deref(), &tokenizer, a.seq, cfg.vocab_size)?;
    let mesh = resolve_mesh(a.mesh.as_deref(), a.plugin.devices)?;
    gemma::rules::check_batch(a.batch as i64, &mesh)?;
    gemma::rules::param_specs(&cfg, &mesh, a.fsdp)?; // every split must divide its dimension
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let setup = Setup { cfg, mesh, fsdp: a.fsdp, batch: a.batch, seq: data.seq() };
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create --out {}", a.out.display()))?;
    let client = a.plugin.open(Some(setup.mesh.num_devices() as usize))?;
    check_host_memory(&setup.cfg)?;
    let (host, resumed_from) = initial_state(a, &setup)?;
    let start = host.step;
    if start >= a.steps {
        bail!("the checkpoint is at step {start}, which is not before --steps {}", a.steps);
    }
    let mut state = place_state(&client, &setup, &host)?;
    drop(host);

    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // A second Ctrl-C while saving interrupts for real (the handler is set once per process).
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });

    let layout = setup.layout();
    let jit = train_step_jit(Some(&client), &setup, &hp, &layout);
    let mut log = report::Log::open(&a.out, start, a.steps, resumed_from.as_deref(), &setup, &data)?;
    let meta = |step: u64| Meta {
        seed: a.seed,
        batch: a.batch,
        seq: setup.seq,
        shuffle: a.shuffle,
        rows_consumed: step * a.batch as u64,
        mesh: setup.mesh.to_string(),
        dtype: a.dtype.clone(),
    };
    let shuffle = a.shuffle.then_some(a.seed);
    let mut step = start;
    // Host overhead is measured from the end of the first step (which traces and compiles).
    let mut loop_started = std::time::Instant::now();
    let mut device_before = std::time::Duration::ZERO;
    let mut saved = 0.0; // seconds spent saving, not counted as time between steps
    while step < a.steps {
        let tokens = data.batch(step, a.batch, shuffle)?;
        let tokens = DeviceArray::place(&client, &tokens, &setup.sharding("batch.tokens", 2))?;
        let mut args: Tree<Arg> = Tree::new();
        for (path, array) in state.into_leaves() {
            args.insert(path, Arg::Donate(array))?;
        }
        args.insert("batch.tokens", Arg::Donate(tokens))?;
        let mut out = jit.call(args)?;
        step += 1;
        if step == start + 1 {
            loop_started = std::time::Instant::now();
            device_before = jit.execute_time();
            let from = match client.compile_cache().map(|c| c.stats()) {
                Some(s) if s.hits > 0 => format!(
                    " (loaded from the compilation cache {})",
                    client.compile_cache().map_or(String::new(), |c| c.dir().display().to_string())
                ),
                Some(_) => " (compiled; stored in the compilation cache)".to_string(),
                None => String::new(),
            };
            eprintln!("train step: traced, lowered and compiled in {:.2} s{from}", jit.stats().compile_time.as_secs_f64());
        }
        let metrics = out.take_subtree("metrics");
        state = out;
        let last = step == a.steps || stop.load(Ordering::SeqCst);
        if step % a.log_every.max(1) == 0 || last {
            log.record(step, &metrics, a.batch * setup.seq)?;
        } else {
            log.tick(step);
        }
        drop(metrics);
        if (a.save_every > 0 && step % a.save_every == 0) || last {
            let saving = std::time::Instant::now();
            checkpoints::save(&a.out, &setup.cfg, &state, step, &meta(step), a.keep)?;
            if step == a.steps {
                // The final weights where `forward --model OUT` finds them.
                let params = checkpoints::entries(&setup.cfg, "params", "");
                checkpoints::write_from_devices(&a.out.join("model.safetensors"), &state, &params)?;
                gemma::write_atomic(&a.out.join("config.json"), setup.cfg.to_hf_json().as_bytes())?;
                // The tokenizer too, so that `generate --model OUT --prompt ...` works.
                let (tokenizer_json, tokenizer_config) = tokenizer.hf_files()?;
                gemma::write_atomic(&a.out.join("tokenizer.json"), tokenizer_json.as_bytes())?;
                gemma::write_atomic(&a.out.join("tokenizer_config.json"), tokenizer_config.as_bytes())?;
            }
            saved += saving.elapsed().as_secs_f64();
        }
        if stop.load(Ordering::SeqCst) {
            log.finish(true)?;
            eprintln!("interrupted: saved {} at step {step}; continue with --resume", a.out.join("checkpoints").display());
            std::process::exit(130);
        }
    }
    let (wall, device) = (loop_started.elapsed().as_secs_f64() - saved, (jit.execute_time() - device_before).as_secs_f64());
    let timed = (step - start - 1).max(1);
    log.finish(false)?;
    println!(
        "host time between steps: {:.2}% of the loop ({:.2} ms per step on the host, {:.2} ms executing)",
        100.0 * (wall - device).max(0.0) / wall.max(1e-9),
        1e3 * (wall - device).max(0.0) / timed as f64,
        1e3 * device / timed as f64
    );
    if a.sample > 0 {
        let text = sample::generate(&client, &setup, &state, &tokenizer, &data, a.sample, a.seed)?;
        println!("sample: {text}");
    }
    Ok(())
}

/// The state is built on the host before it is placed (f32 weights and both AdamW moments):
/// refuse, before allocating, a model whose state does not fit in the memory available now.
fn check_host_memory(cfg: &Config) -> Result<()> {
    let bytes = 3 * 4 * gemma::rules::param_count(cfg) as u128;
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemAvailable:"))?.to_string();
        Some(line.split_whitespace().nth(1)?.parse::<u128>().ok()? * 1024)
    });
    if let Some(avail) = available.filter(|&avail| bytes > avail) {
        bail!(
            "the training state (f32 weights, AdamW m and v: {:.1} GiB) does not fit in the {:.1} GiB of memory available; \
             see `gemma-xla plan` for what each device needs",
            bytes as f64 / (1u64 << 30) as f64,
            avail as f64 / (1u64 << 30) as f64
        );
    }
    Ok(())
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

/// The state to start from: a checkpoint to resume, an HF checkpoint (--init), or a seeded
/// random initialisation; and the checkpoint resumed from, if any.
fn initial_state(a: &TrainArgs, setup: &Setup) -> Result<(HostState, Option<PathBuf>)> {
    let cfg = &setup.cfg;
    let zeros = |params: &[(String, HostArray)]| -> Vec<(String, HostArray)> {
        params.iter().map(|(n, p)| (n.clone(), HostArray::from_vec(p.dims(), vec![0f32; p.len()]).expect("internal: same shape"))).collect()
    };
    if !a.resume && checkpoints::any(&a.out)? {
        bail!(
            "{} already holds checkpoints of an earlier run: continue it with --resume, or choose another --out",
            a.out.join("checkpoints").display()
        );
    }
    if a.resume {
        let Some((path, state, meta)) = checkpoints::load_latest(&a.out, cfg)? else {
            bail!("--resume: there is no checkpoint in {}", a.out.join("checkpoints").display());
        };
        if meta.batch != a.batch || meta.seq != setup.seq {
            bail!(
                "--resume: {} was trained with --batch {} --seq {}, this run has --batch {} --seq {}",
                path.display(),
                meta.batch,
                meta.seq,
                a.batch,
                setup.seq
            );
        }
        return Ok((state, Some(path)));
    }
    let params: Vec<(String, HostArray)> = match &a.init {
        Some(dir) => {
            let ck = gemma::Checkpoint::open_with(dir, &crate::forward::map_file)?;
            ck.validate(cfg)?;
            ck.check_unchanged()?;
            gemma::param_shapes(cfg)
                .iter()
                .map(|(n, _)| {
                    let t = ck.get(n).expect("internal: validated");
                    let v = runtime::HostView { dtype: t.dtype, dims: t.shape, bytes: t.bytes };
                    Ok((
                        n.clone(),
                        if t.dtype == DType::F32 {
                            HostArray::from_bytes(DType::F32, t.shape, t.bytes.to_vec())?
                        } else {
                            v.convert_float(DType::F32)?
                        },
                    ))
                })
                .collect::<Result<_>>()?
        }
        None => gemma::init_params(cfg, a.seed)
            .into_iter()
            .map(|(n, dims, v)| Ok((n, HostArray::from_vec(&dims, v)?)))
            .collect::<Result<_>>()?,
    };
    let (m, v) = (zeros(&params), zeros(&params));
    Ok((HostState { params, m, v, step: 0 }, None))
}

/// Places the host state on the devices as the rules split it.
fn place_state(client: &Client, setup: &Setup, host: &HostState) -> Result<Tree<DeviceArray>> {
    let mut tree = Tree::new();
    for (part, list) in [("params", &host.params), ("opt.m", &host.m), ("opt.v", &host.v)] {
        for (name, array) in list.iter() {
            let path = format!("state.{part}.{name}");
            let sharding = setup.sharding(&path, array.dims().len());
            tree.insert(path, DeviceArray::place(client, array, &sharding)?)?;
        }
    }
    let step = HostArray::from_vec(&[], vec![host.step as i32])?;
    tree.insert("state.step", DeviceArray::place(client, &step, &setup.sharding("state.step", 0))?)?;
    Ok(tree)
}
