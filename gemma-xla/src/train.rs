//! `gemma-xla train`: flags into a `train::Trainer`, then the loop's cadence (log, save),
//! progress, the Ctrl-C handler, the final weights and the sample.
use crate::args::{load_config, model_config, ConfigArg, Dtype, DtypeArg, MeshArgs, PluginArgs, RematArg, ShapeArgs};
use crate::report;
use anyhow::{bail, Context, Result};
use data::{Dataset, Tokenizer};
use gemma::{Config, Hyper, Schedule};
use std::path::{Path, PathBuf};
use train::{Init, RunEnd, TrainSpec, Trainer};

#[derive(clap::Args)]
pub struct TrainArgs {
    // --config default: tiny, or --init's.
    #[command(flatten)]
    config: ConfigArg,
    /// Start from this HF checkpoint directory (its config.json is the config)
    #[arg(long, value_name = "DIR")]
    init: Option<PathBuf>,
    /// Training data: a text file, a directory of .txt/.jsonl files, a token .npy [N, T], or a directory `gemma-xla tokenize` wrote (memory-mapped) [default: the built-in corpus]
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// HF tokenizer.json [default: the --init directory's for conversations, else bytes]
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    /// Conversations (.jsonl lines of {"messages": [...]}) are rendered with this Jinja chat template [default: the --init directory's chat_template.jinja, else its tokenizer_config.json's chat_template, else Gemma's turn format]
    #[arg(long, value_name = "FILE")]
    chat_template: Option<PathBuf>,
    // --mesh default: data=2,model=2 on 4 devices, or data=N with --devices N.
    #[command(flatten)]
    mesh: MeshArgs,
    #[command(flatten)]
    plugin: PluginArgs,
    // --seq default: a token .npy's width, else 64.
    #[command(flatten)]
    shape: ShapeArgs,
    /// Updates to apply in all (the cosine schedule's length)
    #[arg(long, default_value_t = Hyper::default().steps)]
    steps: u64,
    /// Peak learning rate
    #[arg(long, default_value_t = Hyper::default().lr)]
    lr: f64,
    /// Warmup steps: lr (s+1)/W for s < W
    #[arg(long, default_value_t = Hyper::default().warmup)]
    warmup: u64,
    #[arg(long, default_value = "cosine", value_parser = ["cosine", "constant"])]
    schedule: String,
    /// The cosine's final learning rate
    #[arg(long, default_value_t = Hyper::default().min_lr)]
    min_lr: f64,
    /// Decoupled weight decay on tensors of rank >= 2
    #[arg(long, default_value_t = Hyper::default().weight_decay)]
    weight_decay: f64,
    /// Global gradient-norm clipping threshold (0 = off)
    #[arg(long, default_value_t = Hyper::default().clip)]
    clip: f64,
    #[arg(long, default_value_t = Hyper::default().b1)]
    b1: f64,
    #[arg(long, default_value_t = Hyper::default().b2)]
    b2: f64,
    #[arg(long, default_value_t = Hyper::default().eps)]
    eps: f64,
    #[command(flatten)]
    remat: RematArg,
    #[command(flatten)]
    dtype: DtypeArg,
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
    /// Continue from the newest complete checkpoint in --out (its run's settings must be this run's)
    #[arg(long)]
    resume: bool,
    /// With --resume: continue although FLAG (lr, data, mesh, steps, ...) differs from the checkpoint's run (repeatable)
    #[arg(long, value_name = "FLAG", requires = "resume")]
    resume_override: Vec<String>,
    /// Seed of the initialisation, of --shuffle and of the sample
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Visit the rows in a seeded random order per epoch
    #[arg(long)]
    shuffle: bool,
    /// Bytes (tokens) of the sample generated at the end (0: none; single-host runs only)
    #[arg(long, default_value_t = 160)]
    sample: usize,
    /// LoRA: train rank-R adapters on the projections of --lora-targets, the base weights frozen (may be bf16 with --dtype bf16)
    #[arg(long, value_name = "R")]
    lora_rank: Option<i64>,
    /// LoRA: the adapters' scale is alpha / R [default: 8]
    #[arg(long, value_name = "A")]
    lora_alpha: Option<f64>,
    /// LoRA: comma-separated projections to adapt (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj) [default: q_proj,v_proj]
    #[arg(long, value_name = "LIST")]
    lora_targets: Option<String>,
    /// LoRA: start from this PEFT adapter directory (its rank, alpha and targets; turns LoRA on)
    #[arg(long, value_name = "DIR")]
    lora_init: Option<PathBuf>,
    /// LoRA: also write OUT/model.safetensors + config.json with the adapters merged into the base weights
    #[arg(long)]
    merge: bool,
    /// Multi-host runs: the longest any host waits for the others (connecting, agreeing, checkpoint barriers); a host silent for half of it is declared failed
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    coordination_timeout: u64,
}

/// The config, and the checkpoint to start from.
fn resolve_config(a: &TrainArgs) -> Result<Config> {
    let config = a.config.config.as_deref().unwrap_or("tiny");
    match &a.init {
        None => load_config(config),
        Some(dir) => {
            let (path, cfg) = model_config(dir, "--init ")?;
            if a.config.config.is_some() && load_config(config)? != cfg {
                bail!("--init {} has another config than --config {config} (see {})", dir.display(), path.display());
            }
            Ok(cfg)
        }
    }
}

/// How conversations are rendered: the template (--chat-template, else --init's), BOS and EOS
/// from the tokenizer's tokenizer_config.json (beside it, or in --init), the pad id from
/// --init's config.json, else the tokenizer's `<pad>`, else 0.
fn chat_format(a: &TrainArgs, tokenizer: &Tokenizer) -> Result<data::sft::ChatFormat> {
    let template = match (&a.chat_template, &a.init) {
        (Some(f), _) => Some(std::fs::read_to_string(f).with_context(|| format!("--chat-template {}", f.display()))?),
        (None, Some(dir)) => data::chat::find_template(dir)?,
        (None, None) => None,
    };
    let config_dir = a.tokenizer.as_ref().and_then(|t| t.parent().map(Path::to_path_buf)).or_else(|| a.init.clone());
    let tok_config: serde_json::Value = config_dir
        .map(|d| d.join("tokenizer_config.json"))
        .filter(|f| f.is_file())
        .map(|f| -> Result<serde_json::Value> {
            let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", f.display()))
        })
        .transpose()?
        .unwrap_or(serde_json::Value::Null);
    let token = |key: &str, default: &str| -> String {
        match tok_config.get(key) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.get("content").and_then(|c| c.as_str()).unwrap_or(default).to_string(),
            None => default.to_string(),
        }
    };
    let init_pad = a
        .init
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("config.json")).ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|c| c.get("pad_token_id").and_then(|p| p.as_i64()));
    let vocab_pad = match tokenizer {
        Tokenizer::Hf(t, _) => t.token_to_id("<pad>").map(i64::from),
        Tokenizer::Bytes => None,
    };
    let pad_id = init_pad.or(vocab_pad).unwrap_or(0);
    Ok(data::sft::ChatFormat {
        template,
        bos: token("bos_token", "<bos>"),
        eos: token("eos_token", "<eos>"),
        end_of_turn: "<end_of_turn>".to_string(),
        pad_id: i32::try_from(pad_id).map_err(|_| anyhow::anyhow!("pad_token_id {pad_id} is not a token id"))?,
    })
}

/// The LoRA settings of the flags (None: full training). `--lora-init`'s own settings win;
/// a flag given with it that disagrees is an error (targets compare as sets).
fn lora_of(a: &TrainArgs, cfg: &Config) -> Result<Option<gemma::lora::Lora>> {
    let targets: Option<Vec<String>> =
        a.lora_targets.as_ref().map(|t| t.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect());
    if let Some(dir) = &a.lora_init {
        let lora = data::peft::read_config(dir, cfg).with_context(|| format!("--lora-init {}", dir.display()))?;
        if let Some(r) = a.lora_rank.filter(|&r| r != lora.rank) {
            bail!("--lora-rank {r} disagrees with --lora-init {}'s r {}", dir.display(), lora.rank);
        }
        if let Some(al) = a.lora_alpha.filter(|&al| al != lora.alpha) {
            bail!("--lora-alpha {al} disagrees with --lora-init {}'s lora_alpha {}", dir.display(), lora.alpha);
        }
        if let Some(t) = &targets {
            let mut given: Vec<&str> = t.iter().map(String::as_str).collect();
            let mut have: Vec<&str> = lora.targets.iter().map(String::as_str).collect();
            given.sort();
            given.dedup();
            have.sort();
            if given != have {
                bail!(
                    "--lora-targets {} disagrees with --lora-init {}'s target_modules {}",
                    t.join(","),
                    dir.display(),
                    lora.targets.join(",")
                );
            }
        }
        return Ok(Some(lora));
    }
    let Some(rank) = a.lora_rank else {
        if a.lora_alpha.is_some() || targets.is_some() {
            bail!("--lora-alpha and --lora-targets need --lora-rank R (or --lora-init DIR)");
        }
        if a.merge {
            bail!("--merge applies to LoRA runs (--lora-rank or --lora-init)");
        }
        return Ok(None);
    };
    let targets = targets.unwrap_or_else(|| gemma::lora::DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect());
    Ok(Some(gemma::lora::Lora::new(cfg, rank, a.lora_alpha.unwrap_or(8.0), &targets)?))
}

/// The optimizer settings the flags give.
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
        compute: a.dtype.or(Dtype::F32).dtype(),
        remat: a.remat.remat(),
        scan_layers: a.remat.scan(),
    }
}

pub fn train(a: &TrainArgs) -> Result<()> {
    let role = train::hosts::HostRole::from_env(|k| std::env::var(k).ok())?;
    // In a multi-host run host 0 writes the run's files; the others write only their pieces
    // of each checkpoint.
    let writer = role.writes();
    if a.coordination_timeout == 0 || a.coordination_timeout > 86_400 {
        bail!("--coordination-timeout {}: expected 1 to 86400 seconds", a.coordination_timeout);
    }
    let cfg = resolve_config(a)?;
    let lora = lora_of(a, &cfg)?;
    if let Some(init) = &a.init {
        if same_path(init, &a.out) {
            bail!("--out {} is the --init directory; the run would overwrite its input", a.out.display());
        }
    }
    // Nothing this run writes may be one of its inputs.
    let written = [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "metrics.jsonl",
        "loss.png",
        "loss.svg",
        "adapter_model.safetensors",
        "adapter_config.json",
    ]
    .map(|f| a.out.join(f));
    let mut inputs: Vec<&Path> = a.data.iter().chain(&a.tokenizer).chain(&a.chat_template).map(PathBuf::as_path).collect();
    let init_files: Vec<PathBuf> = (a.init.iter().flat_map(|d| ["config.json", "model.safetensors"].map(|f| d.join(f))))
        .chain(a.lora_init.iter().flat_map(|d| ["adapter_config.json", "adapter_model.safetensors"].map(|f| d.join(f))))
        .collect();
    inputs.extend(init_files.iter().map(PathBuf::as_path));
    for w in &written {
        data::files::refuse_input_as_output(w, &inputs)?;
    }
    let dirs: Vec<(&str, &Path)> = (a.data.iter().map(|d| ("--data", d.as_path())))
        .chain(a.init.iter().map(|d| ("--init", d.as_path())))
        .chain(a.lora_init.iter().map(|d| ("--lora-init", d.as_path())))
        .collect();
    data::files::refuse_output_dir_over_inputs(&a.out, "--out", &dirs)?;
    // The run deletes checkpoints beyond --keep: none of its inputs may live among them.
    let all_inputs: Vec<(&str, &Path)> = dirs
        .iter()
        .copied()
        .chain(a.tokenizer.iter().map(|t| ("--tokenizer", t.as_path())))
        .chain(a.chat_template.iter().map(|t| ("--chat-template", t.as_path())))
        .collect();
    data::files::refuse_inputs_inside(&a.out.join("checkpoints"), "where this run keeps and deletes its checkpoints", &all_inputs)?;
    let chat = match &a.data {
        Some(d) => data::sft::is_chat(d)?,
        None => false,
    };
    if a.chat_template.is_some() && !chat {
        bail!("--chat-template applies to conversations (--data FILE.jsonl whose lines hold \"messages\")");
    }
    // Conversations need the model's own tokenizer: --tokenizer, else --init's.
    let tokenizer_file = match (&a.tokenizer, &a.init) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(dir)) if chat && dir.join("tokenizer.json").is_file() => Some(dir.join("tokenizer.json")),
        (None, _) if chat => bail!(
            "--data {} holds conversations, which need the model's tokenizer: give --tokenizer FILE, or --init DIR with a tokenizer.json",
            a.data.as_ref().map_or(String::new(), |d| d.display().to_string())
        ),
        (None, _) => None,
    };
    let tokenizer = Tokenizer::load(tokenizer_file.as_deref())?;
    let token_file = a.data.as_deref().is_some_and(|p| p.extension().is_some_and(|e| e == "npy"));
    if !token_file && tokenizer.vocab_size() as i64 > cfg.vocab_size {
        bail!("the tokenizer has {} tokens but the model's vocabulary is {}", tokenizer.vocab_size(), cfg.vocab_size);
    }
    let seq = a.shape.seq.map(|s| s as usize);
    let dataset = match (&a.data, chat) {
        (Some(path), true) => Dataset::load_chat(path, &chat_format(a, &tokenizer)?, &tokenizer, seq, cfg.vocab_size)?,
        _ => Dataset::load(a.data.as_deref(), &tokenizer, seq, cfg.vocab_size)?,
    };
    let mesh = train::resolve_mesh(a.mesh.mesh.as_deref(), a.plugin.devices)?;
    gemma::rules::check_batch(a.shape.batch as i64, &mesh)?;
    gemma::rules::param_specs(&cfg, &mesh, a.mesh.fsdp)?; // every split must divide its dimension
    if let Err(e) = hyper(a).check() {
        bail!("{e}");
    }
    // One run per output directory: held until the process ends, however it ends (by host 0
    // of a multi-host run, for all of them).
    let _lock = if writer {
        let lock = data::files::OutputLock::acquire(&a.out, "gemma-xla train").with_context(|| format!("--out {}", a.out.display()))?;
        // Ours (marked), or a train output of a version that wrote no marker (it has checkpoints).
        data::files::claim_dir(&a.out, "gemma-xla train", |names| names.iter().any(|n| n == "checkpoints"))?;
        if !a.resume && train::checkpoints::any(&a.out)? {
            bail!(
                "{} already holds checkpoints of an earlier run: continue it with --resume, or choose another --out",
                a.out.join("checkpoints").display()
            );
        }
        Some(lock)
    } else {
        None
    };
    let devices = mesh.num_devices() as usize;
    let (client, cluster) = if role.count > 1 {
        let timeout = std::time::Duration::from_secs(a.coordination_timeout);
        let settings = coord::Settings::from_env(|k| std::env::var(k).ok(), role.index, role.count, timeout)?;
        let coordinator = train::Cluster::coordinate(settings)?;
        let store = train::cluster::plugin_store(&coordinator);
        let client = a.plugin.open_as(Some(devices), Some(role.index), Some(store))?;
        let cluster = train::Cluster::new(&client, devices, &role, coordinator)?;
        if cluster.ownership().has_stand_ins() {
            eprintln!(
                "host {} of {}: the plugin has no other hosts' devices, so this process computes the whole step on stand-ins for them \
                 (the CPU plugin); it reads, places and writes only its own devices' parts",
                role.index, role.count
            );
        }
        (client, cluster)
    } else {
        (a.plugin.open(Some(devices))?, train::Cluster::single(devices))
    };
    let spec = TrainSpec {
        config: cfg,
        mesh,
        fsdp: a.mesh.fsdp,
        batch: a.shape.batch as usize,
        hyper: hyper(a),
        seed: a.seed,
        shuffle: a.shuffle,
        init: a.init.clone().map_or(Init::Random, Init::Hf),
        lora,
        lora_init: a.lora_init.clone(),
    };
    let mut trainer = if a.resume {
        Trainer::resume_in(&client, spec, dataset, &a.out, &a.resume_override, cluster)?
    } else {
        Trainer::new_in(&client, spec, dataset, cluster)?
    };
    for c in trainer.changed() {
        eprintln!("resuming with {} {} (--resume-override; the checkpoint's run had {})", c.flag, c.new, c.old);
    }
    let start = trainer.step_count();
    for f in trainer.skipped_checkpoints() {
        eprintln!("skipping the incomplete checkpoint {} (it lacks {})", f.path.display(), f.missing.join(", "));
    }

    // Ctrl-C asks the trainer to stop after the current step (it then saves); a second Ctrl-C
    // while saving interrupts for real. The handler is set once per process.
    // A multi-host run cannot stop one host between steps (the others would wait for it at
    // the next checkpoint): Ctrl-C ends it at once, and --resume continues from the last
    // committed checkpoint.
    // The handler only records the request; the step loop reads it once per step and then
    // both saves and stops the trainer itself, so a Ctrl-C that lands while a step's metrics
    // are being logged cannot end the run with that step unsaved.
    let interrupt = train::StopHandle::default();
    let multi = trainer.cluster().is_multi();
    let handler = interrupt.clone();
    let _ = ctrlc::set_handler(move || {
        if multi || handler.stop() {
            std::process::exit(130);
        }
    });

    if trainer.is_done() {
        // A run that saved its last checkpoint but was stopped before its final files.
        write_final(&trainer, &a.out, &tokenizer, a.merge)?;
        if writer {
            println!(
                "{} is at the last step ({start}); wrote the final model to {}",
                trainer.resumed_from().map_or(String::new(), |p| p.display().to_string()),
                a.out.display()
            );
        }
        trainer.close()?;
        return Ok(());
    }
    let mut log = if writer {
        Some(report::Log::open(&a.out, start, a.steps, trainer.resumed_from(), trainer.setup(), trainer.data())?)
    } else {
        None
    };
    let tokens_per_step = trainer.setup().batch * trainer.setup().seq;
    // Host overhead is measured from the end of the first step (which traces and compiles).
    let mut loop_started = std::time::Instant::now();
    let mut device_before = std::time::Duration::ZERO;
    let mut saved = 0.0; // seconds spent saving, not counted as time between steps
    let end = trainer.run(|t, metrics| {
        let step = metrics.step;
        if step == start + 1 {
            loop_started = std::time::Instant::now();
            device_before = t.device_time();
            eprintln!("train step: traced, lowered and compiled in {:.2} s{}", t.compile_time().as_secs_f64(), cache_note(t.client()));
        }
        let interrupted = interrupt.is_stopped();
        let last = t.is_done() || interrupted;
        let keep_going = |r: Result<()>| r.map_err(|e| train::Error::Invalid(format!("{e:#}")));
        if let Some(log) = log.as_mut() {
            if step % a.log_every.max(1) == 0 || last {
                keep_going(log.record(metrics, tokens_per_step))?;
            } else {
                log.tick(step);
            }
        }
        if (a.save_every > 0 && step % a.save_every == 0) || last {
            let saving = std::time::Instant::now();
            t.save(&a.out, a.keep)?;
            if t.is_done() {
                keep_going(write_final(t, &a.out, &tokenizer, a.merge))?;
            }
            saved += saving.elapsed().as_secs_f64();
        }
        if interrupted {
            // Saved above: the run ends after this step.
            t.stop_handle().stop();
        }
        Ok(())
    })?;
    if let RunEnd::Stopped { step } = end {
        if let Some(mut log) = log {
            log.finish(true)?;
        }
        eprintln!("interrupted: saved {} at step {step}; continue with --resume", a.out.join("checkpoints").display());
        std::process::exit(130);
    }
    let step = trainer.step_count();
    let (wall, device) = (loop_started.elapsed().as_secs_f64() - saved, (trainer.device_time() - device_before).as_secs_f64());
    let timed = (step - start - 1).max(1);
    let Some(mut log) = log else {
        trainer.close()?;
        return Ok(());
    };
    log.finish(false)?;
    println!(
        "host time between steps: {:.2}% of the loop ({:.2} ms per step on the host, {:.2} ms executing)",
        100.0 * (wall - device).max(0.0) / wall.max(1e-9),
        1e3 * (wall - device).max(0.0) / timed as f64,
        1e3 * device / timed as f64
    );
    if trainer.cluster().is_multi() {
        trainer.close()?;
        return Ok(());
    }
    if a.sample > 0 && trainer.setup().lora.is_some() {
        println!("sample: none for a LoRA run; try `gemma-xla generate --model BASE --adapter {}`", a.out.display());
    } else if a.sample > 0 {
        let (prompt, new) = trainer.sample_ids(a.sample, a.seed)?;
        let decoded =
            (!bytes_short(&tokenizer, &trainer.setup().cfg)).then(|| Some((tokenizer.decode(&prompt).ok()?, tokenizer.decode(&new).ok()?)));
        match decoded.flatten() {
            Some((p, n)) => println!("sample: {p}|{n}"),
            None => println!("sample (token ids: no tokenizer decodes the model's vocabulary): {prompt:?}|{new:?}"),
        }
    }
    Ok(())
}

/// The final weights where `forward --model OUT` finds them, and the tokenizer, so that
/// `generate --model OUT --prompt ...` works.
fn write_final(t: &Trainer, out: &Path, tokenizer: &Tokenizer, merge: bool) -> Result<()> {
    t.export(out)?;
    if merge {
        t.export_merged(out)?;
    }
    if !t.cluster().writes() || bytes_short(tokenizer, &t.setup().cfg) {
        // A token file with a larger vocabulary and no --tokenizer: the byte tokenizer would
        // not decode the model's ids, so none is written beside the weights.
        return Ok(());
    }
    let (tokenizer_json, tokenizer_config) = tokenizer.hf_files()?;
    gemma::write_atomic(&out.join("tokenizer.json"), tokenizer_json.as_bytes())?;
    gemma::write_atomic(&out.join("tokenizer_config.json"), tokenizer_config.as_bytes())?;
    Ok(())
}

/// The byte tokenizer (no --tokenizer) for a model whose vocabulary is larger than 256 (a
/// token file's): it cannot decode the model's ids.
fn bytes_short(tokenizer: &Tokenizer, cfg: &Config) -> bool {
    matches!(tokenizer, Tokenizer::Bytes) && cfg.vocab_size > 256
}

/// Where the first step's executable came from.
fn cache_note(client: &runtime::Client) -> String {
    match client.compile_cache() {
        Some(c) if c.stats().hits > 0 => format!(" (loaded from the compilation cache {})", c.dir().display()),
        Some(_) => " (compiled; stored in the compilation cache)".to_string(),
        None => String::new(),
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    #[test]
    fn hyper_default_is_what_train_uses_with_no_flags() {
        let cli = Cli::try_parse_from(["train"]).unwrap();
        assert_eq!(hyper(&cli.train), Hyper::default());
        assert_eq!(Hyper::default().min_lr, 3e-4);
        let cli = Cli::try_parse_from(["train", "--dtype", "bf16", "--remat", "save-dots", "--min-lr", "0"]).unwrap();
        let hp = hyper(&cli.train);
        assert_eq!((hp.compute, hp.remat, hp.min_lr), (graph::DType::Bf16, graph::Remat::SaveDots, 0.0));
    }
}
