//! Trains the tiny Gemma on the built-in corpus over 4 CPU devices (`data=2,model=2`) through
//! `train::Trainer`, prints the loss as it falls, and saves a checkpoint and the final weights
//! (with a byte tokenizer) that the `generate` example continues.
//!
//! `cargo run --release --example train_tiny -- [STEPS] [OUT]` (defaults: 200,
//! target/examples/tiny).
use anyhow::{ensure, Result};
use data::{Dataset, Tokenizer};
use runtime::{Client, Mesh, PluginSpec};
use std::path::PathBuf;
use train::{TrainSpec, Trainer};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let steps: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(200);
    let out = args.next().map_or_else(|| PathBuf::from("target/examples/tiny"), PathBuf::from);

    // The CPU plugin (or $GEMMA_XLA_PLUGIN) with 4 devices, a 2 x 2 mesh over them.
    let client = Client::open(&PluginSpec::from_flag_or_env(None)?, Some(4))?;
    let mut spec = TrainSpec::tiny(Mesh::parse("data=2,model=2")?)?;
    spec.hyper.steps = steps;
    let data = Dataset::load(None, &Tokenizer::Bytes, None, spec.config.vocab_size)?;
    let mut trainer = Trainer::new(&client, spec, data)?;

    // The loop is the library's; what happens after each step is ours. Metrics stay on the
    // devices unless read, so only the logged steps fetch their loss.
    let mut logged = Vec::new();
    trainer.run(|t, m| {
        if m.step == 1 || m.step % 20 == 0 || t.is_done() {
            let loss = m.loss()?;
            println!("step {:>4}  loss {loss:.4}  lr {:.2e}", m.step, m.lr()?);
            logged.push(loss);
        }
        Ok(())
    })?;
    let (first, last) = (logged[0], logged[logged.len() - 1]);
    ensure!(last < first, "the loss did not fall: {first:.4} -> {last:.4}");
    println!("loss {first:.4} -> {last:.4} in {steps} steps");

    let checkpoint = trainer.save(&out, 1)?;
    trainer.export(&out)?;
    let (tokenizer, tokenizer_config) = Tokenizer::Bytes.hf_files()?;
    std::fs::write(out.join("tokenizer.json"), tokenizer)?;
    std::fs::write(out.join("tokenizer_config.json"), tokenizer_config)?;
    println!("saved {} and the weights in {}", checkpoint.display(), out.display());
    println!("sample: {}", trainer.sample(&Tokenizer::Bytes, 60, 0)?);
    Ok(())
}
