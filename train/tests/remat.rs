//! Rematerialisation (`--remat full|save-dots`) changes memory and FLOPs, never values: the
//! loss and every gradient of the transformers-made fixture equal the plain ones, a few
//! sharded train steps end at the same weights, and the compiled step has the barriers.
use anyhow::Result;
use data::{Dataset, Tokenizer};
use gemma::{Checkpoint, Config, Hyper, ModelOptions};
use graph::{DType, Remat, Tensor, Tree};
use jit::Jit;
use runtime::{Client, HostArray, Mesh};
use std::path::PathBuf;
use train::{Setup, TrainSpec, Trainer};

fn fixture(name: &str) -> PathBuf {
    testkit::fixtures("gemma").join(name)
}

/// Loss and gradients of the gqa fixture (f32) with the decoder layers called as `remat` says.
fn loss_and_grads(client: &Client, remat: Remat) -> Result<Vec<(String, Vec<f32>)>> {
    let dir = fixture("gqa");
    let cfg = Config::from_json_file(&dir.join("config.json"))?;
    let ck = Checkpoint::open(&dir)?;
    let tokens = data::npy::read(&dir.join("tokens.npy"))?;
    let ids: Vec<i32> = tokens.to_vec::<i64>()?.into_iter().map(|i| i as i32).collect();
    let (b, t) = (tokens.dims()[0], tokens.dims()[1]);
    let mut args: Tree<HostArray> = Tree::new();
    for (name, _) in gemma::param_shapes(&cfg) {
        let r = ck.get(&name).unwrap();
        args.insert(format!("params.{name}"), HostArray::from_bytes(r.dtype, r.shape, r.bytes.to_vec())?)?;
    }
    args.insert("tokens", HostArray::from_vec(&[b, t], ids)?)?;
    let opts = ModelOptions { remat, ..ModelOptions::default() };
    let jit = Jit::new("grads", client, |a: &Tree<Tensor>| -> Result<Tree<Tensor>, graph::Error> {
        let f = gemma::trace_model(&cfg, DType::F32, b, t, opts)?;
        Ok(graph::value_and_grad_tree(&f, "loss", "params")?.call_tree(a))
    });
    let out = jit.call_host(&args)?;
    let text = jit.last_function().unwrap().to_stablehlo()?;
    // One barrier is the logits' cotangent's (gemma::unembed); remat adds its own.
    let barriers = text.matches("stablehlo.optimization_barrier").count();
    assert_eq!(barriers > 1, remat != Remat::None, "{remat}: {barriers} barriers");
    assert!(barriers >= 1, "{remat}: no barrier on the logits' cotangent");
    Ok(out.into_leaves().into_iter().filter(|(n, _)| n != "logits").map(|(n, v)| (n, v.to_vec::<f32>().unwrap())).collect())
}

#[test]
fn remat_leaves_the_loss_and_every_gradient_unchanged() -> Result<()> {
    let (client, _cache) = testkit::cpu_client(1);
    let plain = loss_and_grads(&client, Remat::None)?;
    assert_eq!(plain.len(), 1 + gemma::param_shapes(&Config::from_json_file(&fixture("gqa").join("config.json"))?).len());
    for remat in [Remat::Full, Remat::SaveDots] {
        for ((name, x), (_, y)) in loss_and_grads(&client, remat)?.iter().zip(&plain) {
            let scale = y.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
            let worst = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
            assert!(worst <= 1e-6 * scale, "{remat}: {name} differs by {worst} (scale {scale})");
        }
    }
    Ok(())
}

/// The losses of `steps` train steps of the tiny model on data=2,model=2 (batch 4 x 16 of
/// the built-in corpus) and the final weights, with `remat`.
fn train(client: &Client, remat: Remat, steps: u64) -> Result<(Vec<f64>, Vec<Vec<f32>>)> {
    let mut spec = TrainSpec::tiny(Mesh::parse("data=2,model=2")?)?;
    spec.batch = 4;
    spec.hyper = Hyper { steps, remat, ..Hyper::default() };
    let data = Dataset::load(None, &Tokenizer::Bytes, Some(16), spec.config.vocab_size)?;
    let mut trainer = Trainer::new(client, spec, data)?;
    let mut losses = Vec::new();
    trainer.run(|_, m| {
        losses.push(m.loss()?);
        Ok(())
    })?;
    let params = trainer.state()?.params.values().map(|a| a.fetch().unwrap().to_vec::<f32>().unwrap()).collect();
    Ok((losses, params))
}

#[test]
fn sharded_train_steps_with_remat_match_and_the_program_has_barriers() -> Result<()> {
    let (client, _cache) = testkit::cpu_client(4);
    let (want, want_params) = train(&client, Remat::None, 3)?;
    assert_eq!(want.len(), 3);
    for remat in [Remat::Full, Remat::SaveDots] {
        let (got, params) = train(&client, remat, 3)?;
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() <= 1e-6 * w.abs(), "{remat}: loss {g} vs {w}");
        }
        for (p, q) in params.iter().zip(&want_params) {
            let worst = p.iter().zip(q).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-5, "{remat}: weights differ by {worst}");
        }
    }
    // The step `train` compiles with --remat full: two layers, each recomputed from its input,
    // positions, mask and nine weights behind barriers.
    let setup = Setup {
        cfg: Config::preset("tiny")?,
        mesh: Mesh::parse("data=2,model=2")?,
        fsdp: false,
        batch: 8,
        seq: 64,
        weights: false,
        lora: None,
        base_dtype: graph::DType::F32,
        stacked: false,
    };
    let hp = Hyper { remat: Remat::Full, scan_layers: false, ..Hyper::default() };
    let lowered = train::train_step_jit(None, &setup, &hp).lower(&setup.train_args())?;
    assert!(lowered.stablehlo.matches("stablehlo.optimization_barrier").count() >= 2 * 10, "too few barriers");
    // With the layers as a loop (the default), remat is the loop's: the forward loop saves
    // fewer values per layer for the backward loop (results of its stablehlo.while).
    let forward_results = |remat| -> Result<usize> {
        let hp = Hyper { remat, ..Hyper::default() };
        let setup = Setup { stacked: true, ..setup.clone() };
        let text = train::train_step_jit(None, &setup, &hp).lower(&setup.train_args())?.stablehlo;
        let line = text.lines().find(|l| l.contains("\"stablehlo.while\"")).expect("a loop");
        Ok(line.split(':').nth(1).and_then(|n| n.split_whitespace().next()).and_then(|n| n.parse().ok()).expect("%w:N"))
    };
    let (none, full, dots) = (forward_results(Remat::None)?, forward_results(Remat::Full)?, forward_results(Remat::SaveDots)?);
    assert!(full < dots && dots < none, "results of the forward loop: full {full}, save-dots {dots}, none {none}");
    Ok(())
}
