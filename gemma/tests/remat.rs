//! Rematerialised decoder layers give the same loss and gradients as plain ones, in f64
//! through `graph::eval` (no plugin).
use gemma::{Config, ModelOptions};
use graph::{DType, Remat};
use ndarray::{ArrayD, IxDyn};

fn values(dims: &[i64], seed: u64, scale: f64) -> ArrayD<f64> {
    let mut s = seed;
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    ArrayD::from_shape_fn(IxDyn(&shape), |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * scale
    })
}

#[test]
fn remat_gives_the_same_loss_and_gradients() {
    let cfg = Config::preset("tiny").unwrap();
    let grads = |remat| {
        let f = gemma::trace_model(&cfg, DType::F64, 2, 6, ModelOptions { remat, ..ModelOptions::default() }).unwrap();
        let g = graph::value_and_grad_tree(&f, "loss", "params").unwrap();
        let args: Vec<ArrayD<f64>> = g
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if p.name == "tokens" {
                    values(&p.ty.dims, 9, 1.0).mapv(|v| ((v + 1.0) * 100.0).floor())
                } else {
                    values(&p.ty.dims, i as u64, 0.3)
                }
            })
            .collect();
        let names: Vec<String> = g.outputs.iter().map(|o| o.name.clone()).collect();
        names.into_iter().zip(graph::eval(&g, &args).unwrap()).collect::<Vec<_>>()
    };
    let plain = grads(Remat::None);
    for remat in [Remat::Full, Remat::SaveDots] {
        for ((name, x), (_, y)) in grads(remat).iter().zip(&plain) {
            let worst = (x - y).mapv(f64::abs).fold(0.0, |m: f64, &v| m.max(v));
            assert!(worst <= 1e-12, "{remat}: {name} differs by {worst}");
        }
    }
}
