//! A training loop written by hand, as a JAX user writes one with optax: the state is a tree
//! of arrays on the devices, `gemma::train_step` (value_and_grad of the loss, global-norm
//! clipping, AdamW with warmup + cosine) is traced and compiled by `jit::Jit` once, and every
//! step donates the old state and gets the new one back. Sharded over 2 CPU devices by
//! `gemma::rules` (batch over `data`).
//!
//! `cargo run --release --example custom_loop -- [STEPS]` (default 60).
use anyhow::{ensure, Result};
use data::{Dataset, Tokenizer};
use gemma::rules::{state_spec, Layout};
use gemma::{Config, Hyper};
use graph::{Tensor, Tree};
use jit::Jit;
use runtime::{Arg, Client, DeviceArray, HostArray, Mesh, NamedSharding, PartitionSpec, PluginSpec};

fn main() -> Result<()> {
    let steps: u64 = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(60);
    let (batch, seq) = (8usize, 32usize);
    let cfg = Config::preset("tiny")?;
    let mesh = Mesh::parse("data=2")?;
    let client = Client::open(&PluginSpec::from_flag_or_env(None)?, Some(2))?;
    let hp = Hyper { steps, lr: 3e-3, warmup: 10, ..Hyper::default() };
    let sharding = |path: &str, rank: usize| NamedSharding {
        mesh: mesh.clone(),
        spec: state_spec(&cfg, path, &mesh, false).unwrap_or_else(|| PartitionSpec::replicated(rank)),
    };

    // init: seeded weights, zero AdamW moments, step 0, placed as the rules split them.
    let mut state: Tree<DeviceArray> = Tree::new();
    for (name, dims, values) in gemma::init_params(&cfg, 0) {
        let zeros = HostArray::from_vec(&dims, vec![0f32; values.len()])?;
        let path = format!("state.params.{name}");
        state.insert(&path, DeviceArray::place(&client, &HostArray::from_vec(&dims, values)?, &sharding(&path, dims.len()))?)?;
        for moment in ["m", "v"] {
            let path = format!("state.opt.{moment}.{name}");
            state.insert(&path, DeviceArray::place(&client, &zeros, &sharding(&path, dims.len()))?)?;
        }
    }
    state.insert("state.step", DeviceArray::place(&client, &HostArray::from_vec(&[], vec![0i32])?, &sharding("state.step", 0))?)?;

    // The step, jitted: traced on the first call, compiled once, state donated.
    let layout = Layout { mesh: mesh.clone(), fsdp: false };
    let step = Jit::new("train_step", &client, |args: &Tree<Tensor>| gemma::train_step(&cfg, &hp, Some(&layout), args))
        .with_mesh(mesh.clone())
        .donate("state")
        .with_rule(|path, _| state_spec(&cfg, path, &mesh, false));

    let data = Dataset::load(None, &Tokenizer::Bytes, Some(seq), cfg.vocab_size)?;
    let mut losses = Vec::new();
    for s in 0..steps {
        let tokens = DeviceArray::place(&client, &data.batch(s, batch, None)?, &sharding("batch.tokens", 2))?;
        let mut args: Tree<Arg> = Tree::new();
        for (path, array) in state.into_leaves() {
            args.insert(path, Arg::Donate(array))?;
        }
        args.insert("batch.tokens", Arg::Donate(tokens))?;
        let mut out = step.call(args)?;
        let metrics = out.take_subtree("metrics");
        state = out;
        if s % 10 == 0 || s + 1 == steps {
            let loss = metrics.leaf("loss")?.fetch()?.to_f64_vec()[0];
            println!("step {:>4}  loss {loss:.4}  grad_norm {:.3}", s + 1, metrics.leaf("grad_norm")?.fetch()?.to_f64_vec()[0]);
            losses.push(loss);
        }
    }
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    ensure!(last < first, "the loss did not fall: {first:.4} -> {last:.4}");
    println!("loss {first:.4} -> {last:.4}; compiled once in {:.2} s", step.stats().compile_time.as_secs_f64());
    Ok(())
}
