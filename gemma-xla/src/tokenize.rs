//! `gemma-xla tokenize`: a corpus tokenized once into memory-mapped `.npy` shards and an
//! `index.json` (`data::tokenize`), with a progress bar; `train --data DIR` streams them.
use anyhow::{bail, Context, Result};
use data::tokenize::{tokenize as run_tokenize, TokenizeOptions, INDEX};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The flags of a tokenizing run, all given.
struct Resolved<'a> {
    data: &'a [PathBuf],
    tokenizer: &'a PathBuf,
    out: &'a PathBuf,
    field: &'a str,
    workers: Option<usize>,
    shard_tokens: u64,
}

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// Corpus files or directories: .txt/.md (a file is a document), .jsonl, .jsonl.gz, .jsonl.zst (a line is a document), .parquet (a row is a document); directories recursively, in sorted path order
    #[arg(long, value_name = "PATH", required_unless_present = "verify", num_args = 1..)]
    data: Vec<PathBuf>,
    /// HF tokenizer.json (its tokenizer_config.json beside it says add_bos_token and eos_token)
    #[arg(long, value_name = "tokenizer.json", required_unless_present = "verify")]
    tokenizer: Option<PathBuf>,
    /// Output directory (new or empty): shard_NNNNN.npy and index.json
    #[arg(long, value_name = "DIR", required_unless_present = "verify")]
    out: Option<PathBuf>,
    /// Instead of tokenizing: read every shard of the tokenized DIR and check its sha256 against index.json
    #[arg(long, value_name = "DIR", conflicts_with_all = ["data", "tokenizer", "out"])]
    verify: Option<PathBuf>,
    /// The string field of .jsonl lines and the string column of parquet files
    #[arg(long, default_value = "text")]
    field: String,
    /// Tokenizing threads [default: all cores]; the output is the same for any number
    #[arg(long, value_parser = crate::args::device_count)]
    workers: Option<usize>,
    /// Tokens per shard
    #[arg(long, default_value_t = 1 << 27, value_parser = clap::value_parser!(u64).range(1..=1 << 31))]
    shard_tokens: u64,
}

pub fn tokenize(a: &TokenizeArgs) -> Result<()> {
    if let Some(dir) = &a.verify {
        let n = data::tokenize::verify(dir)?;
        println!("{}: {n} shards match their sha256 in {INDEX}", dir.display());
        return Ok(());
    }
    let (Some(tokenizer), Some(out)) = (&a.tokenizer, &a.out) else { bail!("give --data, --tokenizer and --out (or --verify DIR)") };
    let a = Resolved { data: &a.data, tokenizer, out, field: &a.field, workers: a.workers, shard_tokens: a.shard_tokens };
    let inputs: Vec<(&str, &Path)> =
        a.data.iter().map(|d| ("--data", d.as_path())).chain([("--tokenizer", a.tokenizer.as_path())]).collect();
    data::files::refuse_output_dir_over_inputs(a.out, "--out", &inputs)?;
    for (_, input) in &inputs {
        data::files::refuse_input_as_output(a.out, &[input])?;
    }
    if a.out.exists() && !a.out.is_dir() {
        bail!("--out {} is a file, not a directory", a.out.display());
    }
    let _lock = data::files::OutputLock::acquire(a.out, "gemma-xla tokenize").with_context(|| format!("--out {}", a.out.display()))?;
    data::files::claim_dir(a.out, "gemma-xla tokenize", |_| false)?;
    if a.out.join(INDEX).exists() || std::fs::read_dir(a.out)?.flatten().any(|e| e.file_name().to_string_lossy().starts_with("shard_")) {
        bail!("--out {} holds a tokenized set already; choose a new or empty directory", a.out.display());
    }
    let workers = a.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let opts = TokenizeOptions { field: a.field.to_string(), workers, shard_tokens: a.shard_tokens as usize };
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = if terminal {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()));
        bar
    } else {
        ProgressBar::hidden()
    };
    let began = Instant::now();
    // Not a terminal: a plain line every 10 seconds instead of the spinner.
    let mut said = Instant::now();
    let summary = run_tokenize(a.data, a.tokenizer, a.out, &opts, |p| {
        let s = began.elapsed().as_secs_f64().max(1e-9);
        let text = format!("{} documents, {:.1} MB/s, {:.0} tokens/s", p.documents, p.bytes as f64 / 1e6 / s, p.tokens as f64 / s);
        if terminal {
            bar.set_message(text);
        } else if said.elapsed().as_secs() >= 10 {
            said = Instant::now();
            eprintln!("tokenize: {text}");
        }
    })?;
    bar.finish_and_clear();
    let s = began.elapsed().as_secs_f64().max(1e-9);
    let p = summary.progress;
    println!(
        "{} documents, {} bytes of text -> {} tokens ({}) in {} shards, {:.1} s ({:.1} MB/s, {:.0} tokens/s, {workers} workers)",
        p.documents,
        p.bytes,
        p.tokens,
        summary.dtype,
        summary.shards,
        s,
        p.bytes as f64 / 1e6 / s,
        p.tokens as f64 / s
    );
    println!("wrote {}", a.out.join(INDEX).display());
    Ok(())
}
