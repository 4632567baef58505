//! Six AdamW steps of `Trainer` from the transformers-made mqa checkpoint against JAX + optax
//! in float64 (fixtures/train/make_reference.py): per-step loss, grad_norm and lr, and the
//! final weights and both moments, on one device and on a data=2,model=2 mesh.
use anyhow::Result;
use data::{Dataset, Tokenizer};
use gemma::{Config, Hyper, Schedule};
use runtime::Mesh;
use train::{Init, TrainSpec, Trainer};

fn check_against_reference(mesh: &str) -> Result<()> {
    let init = testkit::fixtures("gemma").join("mqa");
    let config = Config::from_json_file(&init.join("config.json"))?;
    let hyper = Hyper {
        steps: 6,
        lr: 1e-2,
        warmup: 2,
        schedule: Schedule::Cosine,
        min_lr: 1e-3,
        weight_decay: 0.1,
        clip: 0.5,
        b1: 0.9,
        b2: 0.95,
        eps: 1e-8,
        ..Hyper::default()
    };
    let mesh = Mesh::parse(mesh)?;
    let (client, _cache) = testkit::cpu_client(mesh.num_devices() as usize);
    let data = Dataset::load(Some(&testkit::fixtures("train").join("tokens.npy")), &Tokenizer::Bytes, None, config.vocab_size)?;
    let spec = TrainSpec {
        config,
        mesh: mesh.clone(),
        fsdp: false,
        batch: 4,
        hyper,
        seed: 0,
        shuffle: false,
        init: Init::Hf(init),
        lora: None,
        lora_init: None,
    };
    let mut trainer = Trainer::new(&client, spec, data)?;
    let mut got = Vec::new();
    trainer.run(|_, m| {
        got.push((m.step, m.loss()?, m.grad_norm()?, m.lr()?));
        Ok(())
    })?;

    let want = testkit::safetensors_f64(&testkit::fixtures("train").join("reference.safetensors"));
    let f64s = |name: &str| want.get(name).unwrap_or_else(|| panic!("the reference has no {name}")).1.clone();
    let (loss, norm, lr) = (f64s("loss"), f64s("grad_norm"), f64s("lr"));
    assert_eq!(got.iter().map(|m| m.0).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    for (k, m) in got.iter().enumerate() {
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
        assert!(rel(m.1, loss[k]) < 2e-5, "{mesh} step {k}: loss {} vs optax {}", m.1, loss[k]);
        assert!(rel(m.2, norm[k]) < 2e-5, "{mesh} step {k}: grad_norm {} vs optax {}", m.2, norm[k]);
        assert!(rel(m.3, lr[k]) < 1e-6, "{mesh} step {k}: lr {} vs {}", m.3, lr[k]);
    }
    // By checkpoint name, whether the devices hold the layers stacked (the default) or not.
    let state = trainer.fetch_state()?;
    let scale = want.iter().filter(|(n, _)| n.starts_with("params.")).flat_map(|(_, t)| &t.1).fold(1.0f64, |a, v| a.max(v.abs()));
    let mut checked = 0;
    for name in want.keys().filter_map(|n| n.strip_prefix("params.")) {
        for prefix in ["params.", "opt.m.", "opt.v."] {
            let g = state.leaf(&format!("state.{prefix}{name}"))?.to_f64_vec();
            let w = f64s(&format!("{prefix}{name}"));
            let tol = if prefix == "params." { 1e-4 * scale } else { 1e-4 * w.iter().fold(1e-12f64, |a, v| a.max(v.abs())) };
            let worst = g.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(worst <= tol, "{mesh}: {prefix}{name} differs from optax by {worst} (tolerance {tol})");
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * gemma::param_shapes(&trainer.setup().cfg).len());
    Ok(())
}

#[test]
fn adamw_steps_match_jax_and_optax_on_one_device() -> Result<()> {
    check_against_reference("data=1")
}

#[test]
fn adamw_steps_match_jax_and_optax_on_a_data_model_mesh() -> Result<()> {
    check_against_reference("data=2,model=2")
}
