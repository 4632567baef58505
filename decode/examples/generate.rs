//! Greedy text from a checkpoint directory (config.json, model.safetensors, tokenizer.json)
//! with the key/value cache on the devices: `decode::Generator` and `decode::generate`.
//!
//! `cargo run --release --example generate -- [MODEL_DIR] [PROMPT] [NEW_TOKENS]` (defaults:
//! target/examples/tiny, which the `train_tiny` example writes; "The "; 48).
use anyhow::{Context, Result};
use decode::text::{ModelText, Stream, TextTokenizer};
use decode::{bucket, generate, Generator, Placement, Sampler};
use gemma::Config;
use graph::DType;
use runtime::{Client, PluginSpec};
use std::io::Write;
use std::path::PathBuf;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or_else(|| PathBuf::from("target/examples/tiny"), PathBuf::from);
    let prompt = args.next().unwrap_or_else(|| "The ".to_string());
    let new_tokens: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(48);

    let cfg = Config::from_json_file(&dir.join("config.json"))?;
    let info = ModelText::load(&dir)?;
    let tok = TextTokenizer::load(&dir, None)?.with_context(|| format!("{} has no tokenizer.json", dir.display()))?;
    let ids = tok.encode(&prompt, true)?;
    let checkpoint = data::checkpoint::open(&dir)?;
    checkpoint.validate(&cfg)?;
    let params = data::checkpoint::param_views(&checkpoint, &cfg)?;

    // One row, a cache with room for the prompt's bucket and the new tokens, on one device.
    let client = Client::open(&PluginSpec::from_flag_or_env(None)?, Some(1))?;
    let cache = bucket(ids.len()).max(ids.len() + new_tokens);
    let mut g = Generator::new(&client, &cfg, &params, Placement::single(DType::F32), 1, cache)?;
    let mut sampler = Sampler::greedy();
    let mut stream = Stream::default();
    print!("{prompt}");
    generate(&mut g, &[&ids], &[0], new_tokens, &mut sampler, &info.eos, |_, id| {
        print!("{}", stream.push(&tok, id)?);
        let _ = std::io::stdout().flush();
        Ok(false)
    })?;
    println!("{}", stream.finish(&tok)?);
    let t = g.timing;
    eprintln!("prefill {} tokens, decode {} tokens at {:.0} tokens/s", t.prefill_tokens, t.decode_tokens, t.decode_tokens_per_s());
    Ok(())
}
