//! The issue's end-to-end check: a small MLP's loss and gradients through
//! trace -> value_and_grad -> StableHLO -> CPU plugin, against hand-written backprop in
//! Rust and against central differences; and the compile cache (no retrace, no recompile,
//! and a reason for each miss).
use anyhow::Result;
use graph::{Tensor, Tree};
use jit::Jit;
use runtime::{Client, HostArray, PluginSpec};

const B: usize = 4;
const I: usize = 3;
const H: usize = 5;
const O: usize = 2;

/// The MLP's loss over the tree {x, params.{w1, b1, w2}, y}, and its gradient with respect
/// to `params` (traced inside: value_and_grad of the loss, called on the arguments).
fn loss(a: &Tree<Tensor>) -> Tree<Tensor> {
    let p = |n: &str| a.get(n).expect("argument").clone();
    let h = (p("x").matmul(&p("params.w1")) + p("params.b1")).tanh();
    let err = h.matmul(&p("params.w2")) - p("y");
    Tree::new().with("loss", (&err * &err).mean(&[0, 1])).expect("path")
}

fn loss_and_grads(a: &Tree<Tensor>) -> Result<Tree<Tensor>, graph::Error> {
    let types = a.map(|_, t| t.ty());
    let f = graph::trace_tree("mlp", &types, loss)?;
    let g = graph::value_and_grad_tree(&f, "loss", "params")?;
    Ok(g.call_tree(a))
}

fn args(x: Vec<f64>, w1: Vec<f64>, b1: Vec<f64>, w2: Vec<f64>, y: Vec<f64>, b: i64, h: i64) -> Tree<HostArray> {
    Tree::from_leaves([
        ("x", HostArray::from_vec(&[b, I as i64], x).unwrap()),
        ("params.w1", HostArray::from_vec(&[I as i64, h], w1).unwrap()),
        ("params.b1", HostArray::from_vec(&[h], b1).unwrap()),
        ("params.w2", HostArray::from_vec(&[h, O as i64], w2).unwrap()),
        ("y", HostArray::from_vec(&[b, O as i64], y).unwrap()),
    ])
    .unwrap()
}

fn f64s(t: &Tree<HostArray>, path: &str) -> Vec<f64> {
    t.get(path).unwrap_or_else(|| panic!("no output {path}")).to_vec::<f64>().unwrap()
}

fn data(n: usize, seed: f64) -> Vec<f64> {
    (0..n).map(|i| (i as f64 * 0.37 + seed).sin() * 1.3).collect()
}

/// Forward and backward by hand, in f64 loops: returns loss, dW1, db1, dW2.
fn by_hand(x: &[f64], w1: &[f64], b1: &[f64], w2: &[f64], y: &[f64]) -> (f64, Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut h = [0.0; B * H];
    for b in 0..B {
        for j in 0..H {
            let z: f64 = (0..I).map(|i| x[b * I + i] * w1[i * H + j]).sum::<f64>() + b1[j];
            h[b * H + j] = z.tanh();
        }
    }
    let mut dout = [0.0; B * O];
    let mut loss = 0.0;
    for b in 0..B {
        for o in 0..O {
            let e = (0..H).map(|j| h[b * H + j] * w2[j * O + o]).sum::<f64>() - y[b * O + o];
            loss += e * e / (B * O) as f64;
            dout[b * O + o] = 2.0 * e / (B * O) as f64;
        }
    }
    let mut dw2 = vec![0.0; H * O];
    let mut dz = [0.0; B * H];
    for b in 0..B {
        for j in 0..H {
            let mut dh = 0.0;
            for o in 0..O {
                dw2[j * O + o] += h[b * H + j] * dout[b * O + o];
                dh += w2[j * O + o] * dout[b * O + o];
            }
            dz[b * H + j] = dh * (1.0 - h[b * H + j] * h[b * H + j]);
        }
    }
    let mut dw1 = vec![0.0; I * H];
    let mut db1 = vec![0.0; H];
    for b in 0..B {
        for j in 0..H {
            db1[j] += dz[b * H + j];
            for i in 0..I {
                dw1[i * H + j] += x[b * I + i] * dz[b * H + j];
            }
        }
    }
    (loss, dw1, db1, dw2)
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * y.abs().max(1.0), "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn mlp_loss_and_gradients_match_hand_backprop_and_finite_differences() -> Result<()> {
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
    let (x, w1, b1, w2, y) = (data(B * I, 0.1), data(I * H, 1.7), data(H, 2.9), data(H * O, 4.2), data(B * O, 5.5));
    let args = args(x.clone(), w1.clone(), b1.clone(), w2.clone(), y.clone(), B as i64, H as i64);
    let step = Jit::new("mlp_grad", &client, loss_and_grads);
    let out = step.call_host(&args)?;
    assert_eq!(out.paths().collect::<Vec<_>>(), ["grad.params.b1", "grad.params.w1", "grad.params.w2", "loss"]);
    let (loss, dw1, db1, dw2) = by_hand(&x, &w1, &b1, &w2, &y);
    close(&f64s(&out, "loss"), &[loss], 1e-14, "loss");
    close(&f64s(&out, "grad.params.w1"), &dw1, 1e-13, "dW1");
    close(&f64s(&out, "grad.params.b1"), &db1, 1e-13, "db1");
    close(&f64s(&out, "grad.params.w2"), &dw2, 1e-13, "dW2");

    // Central differences on every weight of W1.
    let eps = 1e-6;
    for k in 0..w1.len() {
        let mut wp = w1.clone();
        wp[k] += eps;
        let mut wm = w1.clone();
        wm[k] -= eps;
        let fd = (by_hand(&x, &wp, &b1, &w2, &y).0 - by_hand(&x, &wm, &b1, &w2, &y).0) / (2.0 * eps);
        let g = f64s(&out, "grad.params.w1")[k];
        assert!((g - fd).abs() < 1e-8, "dW1[{k}]: {g} vs finite difference {fd}");
    }

    // The same call again: no trace, no compile.
    assert_eq!((step.stats().hits, step.stats().compiles), (0, 1));
    assert_eq!(step.explain_miss_host(&args), None);
    step.call_host(&args)?;
    assert_eq!((step.stats().hits, step.stats().compiles), (1, 1));
    // A new batch size misses, and says why.
    let bigger = args_with_batch(8);
    assert_eq!(
        step.explain_miss_host(&bigger).unwrap(),
        "mlp_grad: argument x is f64[8,3], compiled for f64[4,3]; argument y is f64[8,2], compiled for f64[4,2]"
    );
    step.call_host(&bigger)?;
    assert_eq!((step.stats().hits, step.stats().compiles), (1, 2));
    // f32 also works (a third signature).
    let f32_args = args.map(|_, a| HostArray::from_vec(a.dims(), a.to_vec::<f64>().unwrap().iter().map(|&v| v as f32).collect()).unwrap());
    let out32 = step.call_host(&f32_args)?;
    assert!((out32.get("loss").unwrap().to_vec::<f32>()?[0] as f64 - loss).abs() < 1e-5);
    assert_eq!(step.stats().compiles, 3);
    Ok(())
}

fn args_with_batch(b: usize) -> Tree<HostArray> {
    let h = H as i64;
    args(data(b * I, 0.3), data(I * H, 1.7), data(H, 2.9), data(H * O, 4.2), data(b * O, 0.4), b as i64, h)
}

#[test]
fn the_same_gradients_sharded_over_a_data_model_mesh_of_eight_devices() -> Result<()> {
    use sharding::{Mesh, PartitionSpec};
    let client = Client::open(&PluginSpec::Cpu, Some(8))?;
    // Batch 4 over data=2, hidden 8 over model=4.
    let (b, h) = (4i64, 8i64);
    let args = args(data(4 * I, 0.1), data(I * 8, 1.7), data(8, 2.9), data(8 * O, 4.2), data(4 * O, 5.5), b, h);
    let plain = Jit::new("plain", &client, loss_and_grads);
    let spec = |d: &[&[&str]]| PartitionSpec::new(d);
    let sharded = Jit::new("sharded", &client, loss_and_grads).with_mesh(Mesh::parse("data=2,model=4")?).with_rule(move |path, _| {
        Some(match path.strip_prefix("grad.").unwrap_or(path) {
            "x" | "y" => spec(&[&["data"], &[]]),
            "params.w1" => spec(&[&[], &["model"]]),
            "params.b1" => spec(&[&["model"]]),
            "params.w2" => spec(&[&["model"], &[]]),
            _ => return None,
        })
    });
    let want = plain.call_host(&args)?;
    let got = sharded.call_host(&args)?;
    let text = sharded.last_function().unwrap().to_stablehlo()?;
    assert!(text.contains("mhlo.num_partitions = 8"), "{text}");
    assert!(text.contains(r#"sdy.sharding = #sdy.sharding<@mesh, [{}, {"model"}]>"#), "{text}");
    for ((p, g), (_, w)) in got.iter().zip(want.iter()) {
        assert_eq!(g.dims(), w.dims());
        close(&g.to_vec::<f64>()?, &w.to_vec::<f64>()?, 1e-13, p);
    }
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}
