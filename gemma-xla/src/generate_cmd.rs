//! `gemma-xla generate`: text or token continuations of an HF Gemma checkpoint, with a key/
//! value cache kept on the devices (`decode::Generator`), or an interactive chat
//! (`decode::ChatSession`).
use crate::args::{model_config, with_adapter, AdapterArg, Dtype, DtypeArg, MeshArgs, PluginArgs, ScanArg};
use anyhow::{bail, Context, Result};
use data::npy;
use decode::text::{ModelText, Stream, TextTokenizer};
use decode::{bucket, generate, ChatSession, Generator, Placement, Sampler};
use runtime::{HostArray, Mesh};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "tokens", "chat"])))]
pub struct GenerateArgs {
    /// HF model directory: config.json, model.safetensors (or shards), tokenizer.json, tokenizer_config.json
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Prompt text (tokenized with the model's tokenizer, BOS as its tokenizer_config.json says)
    #[arg(long)]
    prompt: Option<String>,
    /// Prompt token ids, int32 or int64 [batch, len]; every row is continued
    #[arg(long, value_name = "PROMPT.npy")]
    tokens: Option<PathBuf>,
    /// Interactive chat (instruction-tuned models): one user turn per line on stdin
    #[arg(long)]
    chat: bool,
    /// Tokens to generate per row (fewer when a row stops at EOS)
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// 0: greedy (the most likely token); otherwise the logits are divided by it and sampled
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Sample only among the K most likely tokens (0: all)
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sample only among the most likely tokens whose probabilities reach P, in (0, 1]
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampling (each row has its own stream)
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write int32 [batch, len + N]: each prompt and its new tokens (rows that stopped early are padded with pad_token_id)
    #[arg(long, value_name = "GEN.npy")]
    out: Option<PathBuf>,
    /// Keep generating after EOS (exactly --max-new-tokens per row)
    #[arg(long)]
    ignore_eos: bool,
    /// tokenizer.json to use instead of the model directory's
    #[arg(long, value_name = "tokenizer.json")]
    tokenizer: Option<PathBuf>,
    // --mesh default: one device (e.g. model=2, or data=2 to split the rows).
    #[command(flatten)]
    mesh: MeshArgs,
    // --dtype default: f32 (with bf16, softmax stays f32).
    #[command(flatten)]
    dtype: DtypeArg,
    #[command(flatten)]
    plugin: PluginArgs,
    #[command(flatten)]
    adapter: AdapterArg,
    #[command(flatten)]
    scan: ScanArg,
}

/// Prompt ids from a .npy: int32/int64 [batch, len], len >= 1, every id in the vocabulary.
fn read_prompts(path: &Path, vocab: i64) -> Result<Vec<Vec<i32>>> {
    let t = npy::read_token_ids(path, vocab, 1)?;
    let width = t.dims()[1] as usize;
    Ok(t.to_vec::<i32>()?.chunks(width).map(<[i32]>::to_vec).collect())
}

fn check_context(prompt: usize, new: usize, context: usize, what: &str) -> Result<()> {
    if prompt >= context {
        bail!("{what} has {prompt} tokens but the model's context is {context} (max_position_embeddings); shorten it");
    }
    if prompt.saturating_add(new) > context {
        bail!(
            "{what} has {prompt} tokens and --max-new-tokens is {new}: {} tokens exceed the model's context of {context}; use --max-new-tokens {} or less",
            prompt.saturating_add(new),
            context - prompt
        );
    }
    Ok(())
}

pub fn generate_cmd(a: &GenerateArgs) -> Result<()> {
    let (config_path, cfg) = model_config(&a.model, "")?;
    let info = ModelText::load(&a.model)?;
    let text = TextTokenizer::load(&a.model, a.tokenizer.as_deref())?;
    if text.is_none() && (a.prompt.is_some() || a.chat) {
        bail!(
            "{} has no tokenizer.json, so --{} cannot be tokenized: pass --tokenizer FILE, or token ids with --tokens PROMPT.npy",
            a.model.display(),
            if a.chat { "chat" } else { "prompt" }
        );
    }
    if let Some(t) = &text {
        if t.tokenizer.vocab_size() as i64 > cfg.vocab_size {
            bail!(
                "{}: the tokenizer has {} tokens but the model's vocabulary is {}",
                t.path.display(),
                t.tokenizer.vocab_size(),
                cfg.vocab_size
            );
        }
    }
    let mut sampler = Sampler::new(a.temperature, a.top_k, a.top_p, a.seed)?;
    let mesh = match &a.mesh.mesh {
        Some(m) => Mesh::parse(m)?,
        None => Mesh::single(),
    };
    gemma::rules::check_mesh(&mesh)?;
    let dtype = a.dtype.or(Dtype::F32).dtype();

    let prompts: Vec<Vec<i32>> = match (&a.tokens, &a.prompt) {
        (Some(path), _) => read_prompts(path, cfg.vocab_size)?,
        (None, Some(p)) => vec![text.as_ref().expect("checked above").encode(p, true)?],
        (None, None) => Vec::new(),
    };
    let ck = data::checkpoint::open(&a.model)?;
    ck.validate(&cfg)?;
    if let Some(out) = &a.out {
        if a.chat {
            bail!("--out writes the tokens of --prompt or --tokens, not of a --chat session");
        }
        let mut inputs: Vec<&Path> = ck.files();
        inputs.push(config_path.as_path());
        inputs.extend(a.tokens.as_deref());
        let adapter_files = a.adapter.files();
        inputs.extend(adapter_files.iter().map(PathBuf::as_path));
        data::files::refuse_input_as_output(out, &inputs)?;
        data::files::require_parent_dir(out)?;
    }
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    if !a.chat {
        if longest == 0 {
            bail!("the prompt is empty: it has no tokens");
        }
        check_context(longest, a.max_new_tokens, info.context, "the prompt")?;
    }
    let batch = if a.chat { 1 } else { prompts.len() };
    // The cache: room for the prompt's bucket and the new tokens (a chat gets the whole context).
    let cache_len = if a.chat { info.context.min(8192) } else { (bucket(longest).max(longest + a.max_new_tokens)).min(info.context) };

    ck.check_unchanged()?;
    let client = a.plugin.open(Some(mesh.num_devices() as usize))?;
    let adapter = a.adapter.load(&cfg)?;
    let params = with_adapter(data::checkpoint::param_views(&ck, &cfg)?, &adapter)?;
    let placement = Placement { dtype, mesh: mesh.clone(), fsdp: a.mesh.fsdp, scan: a.scan.scan() };
    let lora = adapter.as_ref().map(|(l, _)| l);
    let mut g = Generator::with_adapters(&client, &cfg, &params, placement, batch, cache_len, lora)?;
    drop(params);
    let mut stop: Vec<i32> = if a.ignore_eos { Vec::new() } else { info.eos.clone() };
    if a.chat {
        let t = text.as_ref().expect("checked above");
        stop.extend(t.token_id("<end_of_turn>"));
        return chat_loop(&mut g, t, &mut sampler, &stop, a.max_new_tokens, info.context.min(cache_len));
    }

    let refs: Vec<&[i32]> = prompts.iter().map(Vec::as_slice).collect();
    let streaming = text.is_some() && batch == 1;
    let mut stream = Stream::default();
    let out = std::io::stdout();
    let result = generate(&mut g, &refs, &vec![0; batch], a.max_new_tokens, &mut sampler, &stop, |_, id| {
        if streaming && !stop.contains(&id) {
            let piece = stream.push(text.as_ref().expect("streaming needs text"), id)?;
            let mut o = out.lock();
            let _ = write!(o, "{piece}");
            let _ = o.flush();
        }
        Ok(false)
    })?;
    if streaming {
        println!("{}", stream.finish(text.as_ref().expect("streaming needs text"))?);
    } else {
        for (b, row) in result.new_tokens.iter().enumerate() {
            let shown = match &text {
                Some(t) => format!(" {:?}", t.decode(row)?),
                None => String::new(),
            };
            println!("row {b}: {row:?}{shown}");
        }
    }
    if let Some(path) = &a.out {
        let width = longest + a.max_new_tokens;
        let mut all = Vec::with_capacity(batch * width);
        for (p, new) in prompts.iter().zip(&result.new_tokens) {
            let start = all.len();
            all.extend_from_slice(p);
            all.extend_from_slice(new);
            all.resize(start + width, info.pad);
        }
        let array = HostArray::from_vec(&[batch as i64, width as i64], all)?;
        data::files::write_atomic(path, &npy::encode_array(&array)?).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote int32 [{batch}, {width}] to {}", path.display());
    }
    report(&g);
    Ok(())
}

fn report(g: &Generator) {
    let t = g.timing;
    eprintln!(
        "prefill: {} tokens in {:.1} ms ({:.1} tokens/s); decode: {} tokens in {:.1} ms ({:.1} tokens/s); compile {:.2} s ({} programs)",
        t.prefill_tokens,
        t.prefill.as_secs_f64() * 1e3,
        t.prefill_tokens_per_s(),
        t.decode_tokens,
        t.decode.as_secs_f64() * 1e3,
        t.decode_tokens_per_s(),
        t.compile.as_secs_f64(),
        g.compiles()
    );
}

/// One user turn per stdin line; the reply streams to stdout.
fn chat_loop(g: &mut Generator, t: &TextTokenizer, sampler: &mut Sampler, stop: &[i32], max_new: usize, context: usize) -> Result<()> {
    let mut chat = ChatSession::new(g, t, stop.to_vec(), context);
    let stdin = std::io::stdin();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let out = std::io::stdout();
        chat.turn(line, sampler, max_new, |piece| {
            let mut o = out.lock();
            let _ = write!(o, "{piece}");
            let _ = o.flush();
        })?;
        println!();
        report(chat.generator());
    }
    Ok(())
}
