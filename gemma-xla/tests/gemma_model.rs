//! The tiny Gemma's loss and gradients, end to end on the CPU plugin in f64, against central
//! differences of the same loss (a self-consistency check of model + autodiff; the
//! comparison with transformers lives with the checkpoint fixtures).
use anyhow::Result;
use gemma_xla::Jit;
use graph::{DType, TensorType};
use runtime::{Client, HostArray, PluginSpec};

fn lcg(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * scale
        })
        .collect()
}

#[test]
fn tiny_gemma_gradients_match_central_differences() -> Result<()> {
    let cfg = gemma::Config::preset("tiny")?;
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
    let shapes = gemma::param_shapes(&cfg);
    let mut args: Vec<HostArray> = shapes
        .iter()
        .enumerate()
        .map(|(i, (_, s))| {
            let n = s.iter().product::<i64>() as usize;
            HostArray::from_vec(s, lcg(n, 7 + i as u64, 0.3)).unwrap()
        })
        .collect();
    let tokens: Vec<i32> = lcg(2 * 6, 3, 1.0).iter().map(|v| ((v + 1.0) * 127.0) as i32).collect();
    args.push(HostArray::from_vec(&[2, 6], tokens)?);
    let n = shapes.len();
    let step = Jit::new("tiny_step", &client, |_: &[TensorType]| {
        let f = gemma::trace_loss(&cfg, DType::F64, 2, 6)?;
        graph::value_and_grad(&f, &(0..n).collect::<Vec<_>>())
    });
    let forward = Jit::new("tiny_loss", &client, |_: &[TensorType]| gemma::trace_loss(&cfg, DType::F64, 2, 6));
    let out = step.call(&args)?;
    let loss = out[0].to_vec::<f64>()?[0];
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    assert_eq!(out.len(), 2 + n);
    let eps = 1e-5;
    // A few elements of embedding, attention, MLP and norm weights of both layers.
    for (name, k) in [
        ("model.embed_tokens.weight", 130),
        ("model.layers.0.self_attn.q_proj.weight", 17),
        ("model.layers.0.self_attn.k_proj.weight", 5),
        ("model.layers.1.self_attn.v_proj.weight", 40),
        ("model.layers.1.self_attn.o_proj.weight", 99),
        ("model.layers.0.mlp.gate_proj.weight", 3),
        ("model.layers.1.mlp.down_proj.weight", 77),
        ("model.layers.0.input_layernorm.weight", 9),
        ("model.norm.weight", 33),
    ] {
        let i = shapes.iter().position(|(s, _)| s == name).unwrap();
        let x = args[i].to_vec::<f64>()?;
        let mut probe = args.clone();
        let mut at = |v: f64| -> Result<f64> {
            let mut xp = x.clone();
            xp[k] = v;
            probe[i] = HostArray::from_vec(args[i].dims(), xp)?;
            Ok(forward.call(&probe)?[0].to_vec::<f64>()?[0])
        };
        let fd = (at(x[k] + eps)? - at(x[k] - eps)?) / (2.0 * eps);
        let g = out[2 + i].to_vec::<f64>()?[k];
        assert!((g - fd).abs() < 1e-8 * g.abs().max(1.0), "{name}[{k}]: autodiff {g} vs central difference {fd}");
    }
    Ok(())
}
