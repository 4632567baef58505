//! The tiny Gemma's loss and gradients, end to end on the CPU plugin in f64, against central
//! differences of the same loss (a self-consistency check of model + autodiff; the
//! comparison with transformers lives with the checkpoint fixtures).
use anyhow::Result;
use graph::{DType, Tensor, Tree};
use jit::Jit;
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
    let mut args: Tree<HostArray> = Tree::new();
    for (i, (name, s)) in shapes.iter().enumerate() {
        let n = s.iter().product::<i64>() as usize;
        args.insert(format!("params.{name}"), HostArray::from_vec(s, lcg(n, 7 + i as u64, 0.3))?)?;
    }
    let tokens: Vec<i32> = lcg(2 * 6, 3, 1.0).iter().map(|v| ((v + 1.0) * 127.0) as i32).collect();
    args.insert("tokens", HostArray::from_vec(&[2, 6], tokens)?)?;
    let opts = gemma::ModelOptions::default();
    let step = Jit::new("tiny_step", &client, |a: &Tree<Tensor>| -> Result<Tree<Tensor>, graph::Error> {
        let f = gemma::trace_loss(&cfg, DType::F64, 2, 6)?;
        Ok(graph::value_and_grad_tree(&f, "loss", "params")?.call_tree(a))
    });
    let forward = Jit::new("tiny_loss", &client, |a: &Tree<Tensor>| gemma::model(&cfg, a, opts));
    let out = step.call_host(&args)?;
    let loss = out.leaf("loss")?.to_vec::<f64>()?[0];
    assert!(loss.is_finite() && loss > 0.0, "{loss}");
    assert_eq!(out.len(), 2 + shapes.len());
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
        let path = format!("params.{name}");
        let x = args.leaf(&path)?.to_vec::<f64>()?;
        let at = |v: f64| -> Result<f64> {
            let mut xp = x.clone();
            xp[k] = v;
            let probe = args.map(|p, a| if p == path { HostArray::from_vec(a.dims(), xp.clone()).unwrap() } else { a.clone() });
            Ok(forward.call_host(&probe)?.leaf("loss")?.to_vec::<f64>()?[0])
        };
        let fd = (at(x[k] + eps)? - at(x[k] - eps)?) / (2.0 * eps);
        let g = out.leaf(&format!("grad.{path}"))?.to_vec::<f64>()?[k];
        assert!((g - fd).abs() < 1e-8 * g.abs().max(1.0), "{name}[{k}]: autodiff {g} vs central difference {fd}");
    }
    Ok(())
}
