//! `gemma-xla eval`: scores an HF Gemma checkpoint on a task file (the `eval` crate) as
//! lm-evaluation-harness does, with the weights and the key/value cache on the devices.
use crate::args::{model_config, with_adapter, AdapterArg, Dtype, DtypeArg, MeshArgs, PluginArgs, ScanArg};
use anyhow::{Context, Result};
use decode::text::{ModelText, TextTokenizer};
use decode::{Generator, Placement};
use runtime::Mesh;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// HF model directory: config.json, model.safetensors (or shards), tokenizer.json, tokenizer_config.json
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Items, one JSON object a line (multiple choice or generation; see the README)
    #[arg(long, value_name = "FILE.jsonl")]
    tasks: PathBuf,
    /// Per-item results; the per-task summary goes next to it as <name>.summary.json
    #[arg(long, value_name = "SCORES.jsonl")]
    out: Option<PathBuf>,
    /// Rows scored together (choices of several items); results do not depend on it
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// tokenizer.json to use instead of the model directory's
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    // --mesh default: one device (e.g. model=2, or data=2 to split the rows).
    #[command(flatten)]
    mesh: MeshArgs,
    // --dtype default: f32 (with bf16, log-softmax stays f32).
    #[command(flatten)]
    dtype: DtypeArg,
    #[command(flatten)]
    plugin: PluginArgs,
    #[command(flatten)]
    adapter: AdapterArg,
    #[command(flatten)]
    scan: ScanArg,
}

/// `scores.jsonl` -> `scores.summary.json`.
fn summary_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "scores".into());
    out.with_file_name(format!("{stem}.summary.json"))
}

pub fn eval_cmd(a: &EvalArgs) -> Result<()> {
    let (config_path, cfg) = model_config(&a.model, "")?;
    let info = ModelText::load(&a.model)?;
    let tok = TextTokenizer::load(&a.model, a.tokenizer.as_deref())?;
    let text = std::fs::read_to_string(&a.tasks).with_context(|| format!("cannot read {}", a.tasks.display()))?;
    let items = eval::parse(&a.tasks.display().to_string(), &text, tok.as_ref(), cfg.vocab_size, info.context)?;
    let ck = data::checkpoint::open(&a.model)?;
    ck.validate(&cfg)?;
    if let Some(out) = &a.out {
        let mut inputs: Vec<&Path> = ck.files();
        inputs.extend([config_path.as_path(), a.tasks.as_path()]);
        inputs.extend(a.tokenizer.as_deref());
        let adapter_files = a.adapter.files();
        inputs.extend(adapter_files.iter().map(PathBuf::as_path));
        data::files::refuse_input_as_output(out, &inputs)?;
        if !data::files::is_stream(out) {
            data::files::refuse_input_as_output(&summary_path(out), &inputs)?;
        }
        data::files::require_parent_dir(out)?;
    }
    let mesh = match &a.mesh.mesh {
        Some(m) => Mesh::parse(m)?,
        None => Mesh::single(),
    };
    gemma::rules::check_mesh(&mesh)?;
    let dtype = a.dtype.or(Dtype::F32).dtype();
    ck.check_unchanged()?;
    let client = a.plugin.open(Some(mesh.num_devices() as usize))?;
    let adapter = a.adapter.load(&cfg)?;
    let params = with_adapter(data::checkpoint::param_views(&ck, &cfg)?, &adapter)?;
    let placement = Placement { dtype, mesh, fsdp: a.mesh.fsdp, scan: a.scan.scan() };
    let lora = adapter.as_ref().map(|(l, _)| l);
    let mut g = Generator::with_adapters(&client, &cfg, &params, placement, a.batch as usize, eval::cache_len(&items, info.context), lora)?;
    drop(params);

    // Progress: a bar with the scoring rate on a terminal, else a plain line every 10 seconds.
    let total = eval::sequences(&items) as u64;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if terminal {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} sequences, {msg}, ETA {eta}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let began = Instant::now();
    let (mut done, mut said) = (0u64, Instant::now());
    eprintln!("eval: {} items, {total} sequences to score", items.len());
    let outcomes = eval::evaluate(&mut g, &items, tok.as_ref(), &info.eos, |n, tokens| {
        bar.inc(n as u64);
        done += n as u64;
        let tokens_per_s = tokens as f64 / began.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{tokens_per_s:.0} tokens/s"));
        if !terminal && said.elapsed().as_secs() >= 10 {
            said = Instant::now();
            eprintln!("eval: {done}/{total} sequences scored, {tokens_per_s:.0} tokens/s");
        }
    })?;
    bar.finish_and_clear();
    let wall = began.elapsed().as_secs_f64();

    let summary = eval::summarize(&items, &outcomes);
    println!("{:<24} {:>6} {:>18} {:>18} {:>18}", "task", "items", "acc", "acc_norm", "exact_match");
    for (task, m) in &summary {
        let cell = |k: &str| match (m.get(k).and_then(|v| v.as_f64()), m.get(format!("{k}_stderr")).and_then(|v| v.as_f64())) {
            (Some(v), Some(se)) => format!("{v:.4} ± {se:.4}"),
            (Some(v), None) => format!("{v:.4}"),
            _ => "-".into(),
        };
        println!("{task:<24} {:>6} {:>18} {:>18} {:>18}", m["items"], cell("acc"), cell("acc_norm"), cell("exact_match"));
    }
    let t = g.timing;
    let tokens = t.prefill_tokens + t.decode_tokens;
    let run = (t.prefill + t.decode).as_secs_f64();
    eprintln!(
        "{} items in {wall:.2} s: {tokens} tokens through the model, {:.1} tokens/s (compile {:.2} s, {} programs)",
        items.len(),
        tokens as f64 / run.max(1e-9),
        t.compile.as_secs_f64(),
        g.compiles()
    );
    if let Some(out) = &a.out {
        let mut lines = String::new();
        for (i, o) in &outcomes {
            lines.push_str(&eval::outcome_json(*i, &items[*i], o).to_string());
            lines.push('\n');
        }
        data::files::write_atomic(out, lines.as_bytes())?;
        let json = serde_json::json!({
            "model": a.model.display().to_string(),
            "tasks_file": a.tasks.display().to_string(),
            "tasks": summary,
            "tokens_per_s": tokens as f64 / run.max(1e-9),
        });
        if data::files::is_stream(out) {
            // A device or pipe gets the scores; no summary file is made beside it (in /dev).
            eprintln!("wrote {} (a stream: no summary file beside it)", out.display());
        } else {
            let path = summary_path(out);
            data::files::write_atomic(&path, (serde_json::to_string_pretty(&json)? + "\n").as_bytes())?;
            // The per-task metrics for TensorBoard too, beside the scores: `<task>/<metric>`.
            let board = out.parent().map_or_else(|| PathBuf::from("tensorboard"), |d| d.join("tensorboard"));
            let mut events = data::tensorboard::EventWriter::create(&board)?;
            let mut values: Vec<(String, f64)> = Vec::new();
            for (task, m) in &summary {
                for metric in ["acc", "acc_norm", "exact_match"] {
                    if let Some(v) = m.get(metric).and_then(|v| v.as_f64()) {
                        values.push((format!("{task}/{metric}"), v));
                    }
                }
            }
            let refs: Vec<(&str, f64)> = values.iter().map(|(t, v)| (t.as_str(), *v)).collect();
            events.scalars(0, &refs)?;
            events.sync()?;
            eprintln!("wrote {}, {} and {}", out.display(), path.display(), events.path().display());
        }
    }
    Ok(())
}
