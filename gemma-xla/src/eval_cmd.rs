//! `gemma-xla eval`: scores an HF Gemma checkpoint on a task file (see `gemma_xla::eval`) as
//! lm-evaluation-harness does, with the weights and the key/value cache on the devices.
use crate::forward::{map_file, param_views};
use crate::PluginArgs;
use anyhow::{bail, Context, Result};
use gemma::{Checkpoint, Config};
use gemma_xla::eval::{self, Kind};
use gemma_xla::generate::{Generator, Placement};
use gemma_xla::text::{ModelText, TextTokenizer};
use graph::DType;
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
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
    batch: u64,
    /// tokenizer.json to use instead of the model directory's
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    /// Device mesh, e.g. model=2 or data=2 (the batch goes over data) [default: one device]
    #[arg(long)]
    mesh: Option<String>,
    /// Compute dtype: f32, or bf16 (log-softmax in f32)
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    dtype: String,
    #[command(flatten)]
    plugin: PluginArgs,
}

/// `scores.jsonl` -> `scores.summary.json`.
fn summary_path(out: &Path) -> PathBuf {
    let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "scores".into());
    out.with_file_name(format!("{stem}.summary.json"))
}

pub fn eval_cmd(a: &EvalArgs) -> Result<()> {
    let config_path = a.model.join("config.json");
    if !config_path.is_file() {
        bail!("{}: no config.json in the model directory", a.model.display());
    }
    let cfg = Config::from_json_file(&config_path)?;
    let info = ModelText::load(&a.model)?;
    let tok = TextTokenizer::load(&a.model, a.tokenizer.as_deref())?;
    let text = std::fs::read_to_string(&a.tasks).with_context(|| format!("cannot read {}", a.tasks.display()))?;
    let items = eval::parse(&a.tasks.display().to_string(), &text, tok.as_ref(), cfg.vocab_size, info.context)?;
    let ck = Checkpoint::open_with(&a.model, &map_file)?;
    ck.validate(&cfg)?;
    if let Some(out) = &a.out {
        let mut inputs: Vec<&Path> = ck.files();
        inputs.extend([config_path.as_path(), a.tasks.as_path()]);
        inputs.extend(a.tokenizer.as_deref());
        gemma_xla::files::refuse_input_as_output(out, &inputs)?;
        gemma_xla::files::refuse_input_as_output(&summary_path(out), &inputs)?;
        gemma_xla::files::require_parent_dir(out)?;
    }
    let mesh = match &a.mesh {
        Some(m) => Mesh::parse(m)?,
        None => Mesh::single(),
    };
    gemma::rules::check_mesh(&mesh)?;
    let dtype = if a.dtype == "bf16" { DType::Bf16 } else { DType::F32 };
    ck.check_unchanged()?;
    let client = a.plugin.open(Some(mesh.num_devices() as usize))?;
    let params = param_views(&ck, &cfg)?;
    let mut g = Generator::new(
        &client,
        &cfg,
        &params,
        Placement { dtype, mesh, fsdp: false },
        a.batch as usize,
        eval::cache_len(&items, info.context),
    )?;
    drop(params);

    let choice: Vec<usize> = (0..items.len()).filter(|&i| matches!(items[i].kind, Kind::Choice { .. })).collect();
    let gen: Vec<usize> = (0..items.len()).filter(|&i| matches!(items[i].kind, Kind::Generate { .. })).collect();
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let rows: usize =
            choice.iter().map(|&i| if let Kind::Choice { continuations, .. } = &items[i].kind { continuations.len() } else { 0 }).sum();
        indicatif::ProgressBar::new((rows + gen.len()) as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let began = Instant::now();
    let mut outcomes = eval::score_choices(&mut g, &items, &choice, |n| bar.inc(n as u64))?;
    if !gen.is_empty() {
        let tok = tok.as_ref().context("generation items need a tokenizer")?;
        outcomes.extend(eval::run_generation(&mut g, tok, &items, &gen, &info.eos, |n| bar.inc(n as u64))?);
    }
    bar.finish_and_clear();
    outcomes.sort_by_key(|(i, _)| *i);
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
        gemma_xla::files::write_atomic(out, lines.as_bytes())?;
        let json = serde_json::json!({
            "model": a.model.display().to_string(),
            "tasks_file": a.tasks.display().to_string(),
            "tasks": summary,
            "tokens_per_s": tokens as f64 / run.max(1e-9),
        });
        let path = summary_path(out);
        gemma_xla::files::write_atomic(&path, (serde_json::to_string_pretty(&json)? + "\n").as_bytes())?;
        eprintln!("wrote {} and {}", out.display(), path.display());
    }
    Ok(())
}
