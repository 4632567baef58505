//! A LoRA adapter changes the model exactly as merging it does: the loss with adapters
//! (A, B) equals the loss of the base with W + (alpha/r) B A in place of W, and its gradient
//! with respect to A and B is that of the merged weight pulled back (checked with finite
//! differences), in f64 through `graph::eval` (no plugin); the remat path gives the same.
use gemma::lora::Lora;
use gemma::{Config, ModelOptions};
use graph::{DType, Remat, Tensor, TensorType, Tree};
use ndarray::{ArrayD, Ix2, IxDyn};

fn values(dims: &[i64], seed: u64, scale: f64) -> ArrayD<f64> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    ArrayD::from_shape_fn(IxDyn(&shape), |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * scale
    })
}

/// The loss of the model over `params` (base weights and, with `lora`, adapters), and its
/// gradients with respect to every parameter.
fn loss_and_grads(
    cfg: &Config,
    lora: Option<&Lora>,
    params: &[(String, ArrayD<f64>)],
    tokens: &ArrayD<f64>,
    remat: Remat,
) -> Vec<(String, ArrayD<f64>)> {
    let mut types: Tree<TensorType> = Tree::new();
    for (n, a) in params {
        let dims: Vec<i64> = a.shape().iter().map(|&d| d as i64).collect();
        types.insert(format!("params.{n}"), TensorType::new(DType::F64, &dims)).unwrap();
    }
    types.insert("tokens", TensorType::new(DType::S32, &[2, 6])).unwrap();
    let opts = ModelOptions { remat, ..ModelOptions::default() };
    let f = graph::trace_tree("lora", &types, |a: &Tree<Tensor>| gemma::model_with_adapters(cfg, a, opts, None, lora).unwrap()).unwrap();
    let g = graph::value_and_grad_tree(&f, "loss", "params").unwrap();
    let args: Vec<ArrayD<f64>> = g
        .params
        .iter()
        .map(|p| match p.name.strip_prefix("params.") {
            Some(n) => params.iter().find(|(m, _)| m == n).unwrap().1.clone(),
            None => tokens.clone(),
        })
        .collect();
    g.outputs.iter().map(|o| o.name.clone()).zip(graph::eval(&g, &args).unwrap()).collect()
}

#[test]
fn adapters_act_as_their_merged_weight() {
    let cfg = Config::preset("tiny").unwrap();
    let targets: Vec<String> = ["q_proj", "v_proj", "o_proj", "down_proj"].iter().map(|s| s.to_string()).collect();
    let lora = Lora::new(&cfg, 3, 6.0, &targets).unwrap();
    let base: Vec<(String, ArrayD<f64>)> =
        gemma::param_shapes(&cfg).into_iter().enumerate().map(|(i, (n, d))| (n, values(&d, i as u64 + 1, 0.2))).collect();
    let adapters: Vec<(String, ArrayD<f64>)> =
        lora.shapes(&cfg).into_iter().enumerate().map(|(i, (n, d))| (n, values(&d, 100 + i as u64, 0.3))).collect();
    let tokens = values(&[2, 6], 7, 1.0).mapv(|v| ((v + 1.0) * 120.0).floor());
    // The merged weights.
    let merged: Vec<(String, ArrayD<f64>)> = base
        .iter()
        .map(|(n, w)| {
            let a = adapters.iter().find(|(m, _)| *m == n.replace(".weight", ".lora_A.weight"));
            let b = adapters.iter().find(|(m, _)| *m == n.replace(".weight", ".lora_B.weight"));
            match (a, b) {
                (Some((_, a)), Some((_, b))) => {
                    let (a, b) = (a.clone().into_dimensionality::<Ix2>().unwrap(), b.clone().into_dimensionality::<Ix2>().unwrap());
                    (n.clone(), w + &(b.dot(&a) * lora.scale()).into_dyn())
                }
                _ => (n.clone(), w.clone()),
            }
        })
        .collect();
    let with: Vec<(String, ArrayD<f64>)> = base.iter().chain(&adapters).cloned().collect();
    let lora_out = loss_and_grads(&cfg, Some(&lora), &with, &tokens, Remat::None);
    let merged_out = loss_and_grads(&cfg, None, &merged, &tokens, Remat::None);
    let get = |out: &[(String, ArrayD<f64>)], n: &str| out.iter().find(|(m, _)| m == n).unwrap_or_else(|| panic!("no {n}")).1.clone();
    let (l1, l2) = (get(&lora_out, "loss"), get(&merged_out, "loss"));
    assert!((l1.sum() - l2.sum()).abs() <= 1e-12 * l2.sum().abs(), "{l1} vs {l2}");
    // dL/dB = scale * dL/dW' A^T, dL/dA = scale * B^T dL/dW'.
    for t in ["self_attn.q_proj", "mlp.down_proj"] {
        let w = format!("model.layers.1.{t}.weight");
        let gw = get(&merged_out, &format!("grad.params.{w}")).into_dimensionality::<Ix2>().unwrap();
        let a = adapters
            .iter()
            .find(|(m, _)| *m == w.replace(".weight", ".lora_A.weight"))
            .unwrap()
            .1
            .clone()
            .into_dimensionality::<Ix2>()
            .unwrap();
        let b = adapters
            .iter()
            .find(|(m, _)| *m == w.replace(".weight", ".lora_B.weight"))
            .unwrap()
            .1
            .clone()
            .into_dimensionality::<Ix2>()
            .unwrap();
        let gb = get(&lora_out, &format!("grad.params.{}", w.replace(".weight", ".lora_B.weight")));
        let ga = get(&lora_out, &format!("grad.params.{}", w.replace(".weight", ".lora_A.weight")));
        let want_b = (gw.dot(&a.t()) * lora.scale()).into_dyn();
        let want_a = (b.t().dot(&gw) * lora.scale()).into_dyn();
        let err = |x: &ArrayD<f64>, y: &ArrayD<f64>| {
            (x - y).mapv(f64::abs).fold(0.0f64, |m, &v| m.max(v)) / y.mapv(f64::abs).fold(1e-30f64, |m, &v| m.max(v))
        };
        assert!(err(&gb, &want_b) <= 1e-10, "{t} B: {}", err(&gb, &want_b));
        assert!(err(&ga, &want_a) <= 1e-10, "{t} A: {}", err(&ga, &want_a));
    }
    // Recomputing layers in the backward pass carries the adapters along.
    let remat = loss_and_grads(&cfg, Some(&lora), &with, &tokens, Remat::Full);
    for ((n, x), (_, y)) in remat.iter().zip(&lora_out) {
        assert!((x - y).mapv(f64::abs).fold(0.0f64, |m, &v| m.max(v)) <= 1e-12, "{n}");
    }
}

#[test]
fn adapters_must_be_stacked_like_their_weights() {
    let cfg = Config::preset("tiny").unwrap();
    let lora = Lora::new(&cfg, 2, 4.0, &["q_proj".to_string()]).unwrap();
    let stacking = gemma::stack::Stacking::of(&cfg);
    let types = |weights: Vec<(String, Vec<i64>)>, adapters: Vec<(String, Vec<i64>)>| {
        let mut t: Tree<TensorType> = Tree::new();
        for (n, d) in weights.into_iter().chain(adapters) {
            t.insert(format!("params.{n}"), TensorType::new(DType::F32, &d)).unwrap();
        }
        t.insert("tokens", TensorType::new(DType::S32, &[1, 4])).unwrap();
        t
    };
    let model = |t: &Tree<TensorType>| {
        let mut err = None;
        let _ = graph::trace_tree("lora", t, |a: &Tree<Tensor>| {
            match gemma::model_with_adapters(&cfg, a, ModelOptions::default(), None, Some(&lora)) {
                Ok(out) => out,
                Err(e) => {
                    err = Some(e.to_string());
                    Tree::new().with("loss", a.leaf("tokens").unwrap().convert(DType::F32)).unwrap()
                }
            }
        });
        err
    };
    // Both stacked, and both per layer: fine.
    assert_eq!(model(&types(stacking.shapes(&cfg), stacking.stack_shapes(lora.shapes(&cfg)))), None);
    assert_eq!(model(&types(gemma::param_shapes(&cfg), lora.shapes(&cfg))), None);
    // Stacked adapters on per-layer weights: a clear error, not a lookup that fails later.
    let err = model(&types(gemma::param_shapes(&cfg), stacking.stack_shapes(lora.shapes(&cfg)))).unwrap();
    assert!(err.contains("stacked") && err.contains("per layer"), "{err}");
    // Per-layer adapters on stacked weights: named as missing.
    let err = model(&types(stacking.shapes(&cfg), lora.shapes(&cfg))).unwrap();
    assert!(err.contains("model.stacked.0.self_attn.q_proj.lora_A.weight"), "{err}");
}
