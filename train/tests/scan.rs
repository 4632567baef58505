//! The layers as a loop (`--scan-layers`, the default) train like the unrolled layers: 30
//! steps of the tiny model on data=2,model=2 give the same losses and end at the same weights
//! and optimizer moments (f32; bit-exact is not expected: XLA fuses the two programs
//! differently).
use anyhow::Result;
use data::{Dataset, Tokenizer};
use gemma::Hyper;
use runtime::{HostArray, Mesh};
use train::{TrainSpec, Trainer};

/// The losses of `steps` steps and the final state by checkpoint name.
fn train(client: &runtime::Client, scan: bool, steps: u64) -> Result<(Vec<f64>, graph::Tree<HostArray>)> {
    let mut spec = TrainSpec::tiny(Mesh::parse("data=2,model=2")?)?;
    spec.batch = 4;
    spec.hyper = Hyper { steps, scan_layers: scan, ..Hyper::default() };
    let data = Dataset::load(None, &Tokenizer::Bytes, Some(16), spec.config.vocab_size)?;
    let mut trainer = Trainer::new(client, spec, data)?;
    let mut losses = Vec::new();
    trainer.run(|_, m| {
        losses.push(m.loss()?);
        Ok(())
    })?;
    Ok((losses, trainer.fetch_state()?))
}

#[test]
fn thirty_scanned_steps_match_thirty_unrolled_ones() -> Result<()> {
    let (client, _cache) = testkit::cpu_client(4);
    let (want, want_state) = train(&client, false, 30)?;
    let (got, state) = train(&client, true, 30)?;
    assert_eq!(got.len(), 30);
    let mut worst_loss = 0f64;
    for (step, (g, w)) in got.iter().zip(&want).enumerate() {
        let rel = (g - w).abs() / w.abs();
        worst_loss = worst_loss.max(rel);
        assert!(rel <= 1e-5, "step {step}: loss {g} (scanned) vs {w} (unrolled)");
    }
    // Training moved: the last loss is well below the first.
    assert!(want[29] < 0.8 * want[0], "losses {want:?}");
    let paths: Vec<&str> = want_state.paths().collect();
    assert_eq!(state.paths().collect::<Vec<_>>(), paths, "the state's names");
    let mut worst = 0f64;
    for path in paths {
        let (a, b) = (state.get(path).unwrap().to_f64_vec(), want_state.get(path).unwrap().to_f64_vec());
        let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
        let d = a.iter().zip(&b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale;
        worst = worst.max(d);
        assert!(d <= 1e-4, "{path} differs by {d} of its largest value");
    }
    eprintln!(
        "30 steps: worst loss difference {worst_loss:e} (relative), worst state difference {worst:e} (of each tensor's largest value)"
    );
    Ok(())
}
