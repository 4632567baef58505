//! A short sample from the trained model: tokens drawn one at a time at temperature 0.8 from
//! the logits of a fixed [1, seq] window (causal, so later slots do not matter), starting
//! from the first tokens of the training data. One program, compiled once.
use crate::{Result, Setup};
use data::Dataset;
use graph::{Tensor, Tree};
use jit::Jit;
use runtime::{Arg, Client, DeviceArray, HostArray, NamedSharding, PartitionSpec};

pub(crate) fn generate(
    client: &Client,
    setup: &Setup,
    params: &Tree<DeviceArray>,
    data: &Dataset,
    n: usize,
    seed: u64,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let seq = setup.seq;
    let cfg = &setup.cfg;
    let next = Jit::new("sample", client, |a: &Tree<Tensor>| -> Result<Tree<Tensor>, graph::Error> {
        let mut args = a.subtree("state").subtree("params").prefixed("params")?;
        args.insert("tokens", a.leaf("tokens")?.clone())?;
        let logits = gemma::model(cfg, &args, gemma::ModelOptions::default())?.leaf("logits")?.clone();
        let pos = a.leaf("pos")?.clone();
        let zero = pos.scalar_like(0.0);
        let row = logits.dynamic_slice(&[zero.clone(), pos, zero], &[1, 1, cfg.vocab_size]).reshape(&[cfg.vocab_size]);
        Tree::new().with("next", row)
    })
    .with_mesh(setup.mesh.clone())
    .with_rule(|path, _| setup.spec(path));
    let replicated = |rank| NamedSharding { mesh: setup.mesh.clone(), spec: PartitionSpec::replicated(rank) };
    let first = data.batch(0, 1, None)?.to_vec::<i32>()?;
    let mut window: Vec<i32> = first[..(seq / 4).max(1)].to_vec();
    let prompt = window.len();
    let mut rng = gemma::rng::SplitMix64(seed.wrapping_add(0x5eed));
    let mut out: Vec<u32> = Vec::new();
    for _ in 0..n {
        let pos = window.len().min(seq) - 1;
        let mut padded = window[window.len().saturating_sub(seq)..].to_vec();
        padded.resize(seq, 0);
        let tokens = DeviceArray::place(client, &HostArray::from_vec(&[1, seq as i64], padded)?, &replicated(2))?;
        let at = DeviceArray::place(client, &HostArray::from_vec(&[], vec![pos as i32])?, &replicated(0))?;
        let mut args: Tree<Arg> = Tree::new();
        for (name, a) in params.iter() {
            args.insert(format!("state.params.{name}"), Arg::Keep(a))?;
        }
        args.insert("tokens", Arg::Donate(tokens))?;
        args.insert("pos", Arg::Donate(at))?;
        let logits = next.call(args)?.leaf("next")?.fetch()?.to_f64_vec();
        let id = draw(&logits, 0.8, &mut rng);
        window.push(id as i32);
        out.push(id);
    }
    Ok((first[..prompt].iter().map(|&t| t as u32).collect(), out))
}

/// A token drawn from softmax(logits / temperature) with a SplitMix64 stream.
fn draw(logits: &[f64], temperature: f64, state: &mut gemma::rng::SplitMix64) -> u32 {
    let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = logits.iter().map(|l| ((l - max) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let u = state.next_f64() * total;
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if u < acc {
            return i as u32;
        }
    }
    (weights.len() - 1) as u32
}
