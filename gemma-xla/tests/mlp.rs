//! The issue's end-to-end check: a small MLP's loss and gradients through
//! trace -> value_and_grad -> StableHLO -> CPU plugin, against hand-written backprop in
//! Rust and against central differences; and the compile cache (no retrace, no recompile,
//! and a reason for each miss).
use anyhow::Result;
use gemma_xla::{Jit, JitStats};
use graph::{Function, TensorType};
use runtime::{Client, HostArray, PluginSpec};

const B: usize = 4;
const I: usize = 3;
const H: usize = 5;
const O: usize = 2;

fn mlp(types: &[TensorType]) -> Result<Function, graph::Error> {
    let names = ["x", "w1", "b1", "w2", "y"];
    let params: Vec<(&str, TensorType)> = names.iter().copied().zip(types.iter().cloned()).collect();
    graph::trace("mlp", &params, |a| {
        let h = (a[0].matmul(&a[1]) + &a[2]).tanh();
        let err = h.matmul(&a[3]) - &a[4];
        vec![(&err * &err).mean(&[0, 1])]
    })
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
    let args = vec![
        HostArray::from_vec(&[B as i64, I as i64], x.clone())?,
        HostArray::from_vec(&[I as i64, H as i64], w1.clone())?,
        HostArray::from_vec(&[H as i64], b1.clone())?,
        HostArray::from_vec(&[H as i64, O as i64], w2.clone())?,
        HostArray::from_vec(&[B as i64, O as i64], y.clone())?,
    ];
    let step = Jit::new("mlp_grad", &client, |t: &[TensorType]| graph::value_and_grad(&mlp(t)?, &[1, 2, 3]));
    let out = step.call(&args)?;
    let (loss, dw1, db1, dw2) = by_hand(&x, &w1, &b1, &w2, &y);
    close(&out[0].to_vec::<f64>()?, &[loss], 1e-14, "loss");
    close(&out[1].to_vec::<f64>()?, &dw1, 1e-13, "dW1");
    close(&out[2].to_vec::<f64>()?, &db1, 1e-13, "db1");
    close(&out[3].to_vec::<f64>()?, &dw2, 1e-13, "dW2");

    // Central differences on every weight of W1.
    let eps = 1e-6;
    for k in 0..w1.len() {
        let mut wp = w1.clone();
        wp[k] += eps;
        let mut wm = w1.clone();
        wm[k] -= eps;
        let fd = (by_hand(&x, &wp, &b1, &w2, &y).0 - by_hand(&x, &wm, &b1, &w2, &y).0) / (2.0 * eps);
        let g = out[1].to_vec::<f64>()?[k];
        assert!((g - fd).abs() < 1e-8, "dW1[{k}]: {g} vs finite difference {fd}");
    }

    // The same call again: no trace, no compile.
    assert_eq!(step.stats(), JitStats { hits: 0, compiles: 1 });
    assert_eq!(step.explain_miss(&args), None);
    step.call(&args)?;
    assert_eq!(step.stats(), JitStats { hits: 1, compiles: 1 });
    // A new batch size misses, and says why.
    let mut bigger = args.clone();
    bigger[0] = HostArray::from_vec(&[8, I as i64], data(8 * I, 0.3))?;
    bigger[4] = HostArray::from_vec(&[8, O as i64], data(8 * O, 0.4))?;
    assert_eq!(
        step.explain_miss(&bigger).unwrap(),
        "mlp_grad: argument 0 is f64[8,3], compiled for f64[4,3]; argument 4 is f64[8,2], compiled for f64[4,2]"
    );
    step.call(&bigger)?;
    assert_eq!(step.stats(), JitStats { hits: 1, compiles: 2 });
    // f32 also works (a third signature).
    let f32_args: Vec<HostArray> = args
        .iter()
        .map(|a| HostArray::from_vec(a.dims(), a.to_vec::<f64>().unwrap().iter().map(|&v| v as f32).collect()).unwrap())
        .collect();
    let out32 = step.call(&f32_args)?;
    assert!((out32[0].to_vec::<f32>()?[0] as f64 - loss).abs() < 1e-5);
    assert_eq!(step.stats().compiles, 3);
    Ok(())
}

#[test]
fn the_same_gradients_sharded_over_a_data_model_mesh_of_eight_devices() -> Result<()> {
    use sharding::{Mesh, PartitionSpec};
    let client = Client::open(&PluginSpec::Cpu, Some(8))?;
    // Batch 4 over data=2, hidden 8 over model=4.
    let (b, h) = (4i64, 8i64);
    let args = vec![
        HostArray::from_vec(&[b, I as i64], data(4 * I, 0.1))?,
        HostArray::from_vec(&[I as i64, h], data(I * 8, 1.7))?,
        HostArray::from_vec(&[h], data(8, 2.9))?,
        HostArray::from_vec(&[h, O as i64], data(8 * O, 4.2))?,
        HostArray::from_vec(&[b, O as i64], data(4 * O, 5.5))?,
    ];
    let plain = Jit::new("plain", &client, |t: &[TensorType]| graph::value_and_grad(&mlp(t)?, &[1, 2, 3]));
    let sharded = Jit::new("sharded", &client, |t: &[TensorType]| {
        let mesh = Mesh::parse("data=2,model=4").expect("mesh");
        let spec = |d: &[&[&str]]| PartitionSpec::new(d);
        let g = graph::value_and_grad(&mlp(t)?, &[1, 2, 3])?
            .with_mesh(mesh)
            .shard_param(0, spec(&[&["data"], &[]]))
            .shard_param(1, spec(&[&[], &["model"]]))
            .shard_param(2, spec(&[&["model"]]))
            .shard_param(3, spec(&[&["model"], &[]]))
            .shard_param(4, spec(&[&["data"], &[]]))
            .shard_output(1, spec(&[&[], &["model"]]));
        Ok(g)
    });
    let want = plain.call(&args)?;
    let got = sharded.call(&args)?;
    let text = sharded.function_for(&args).unwrap().to_stablehlo();
    assert!(text.contains("mhlo.num_partitions = 8"), "{text}");
    assert!(text.contains(r#"sdy.sharding = #sdy.sharding<@mesh, [{}, {"model"}]>"#), "{text}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.dims(), w.dims());
        close(&g.to_vec::<f64>()?, &w.to_vec::<f64>()?, 1e-13, "sharded vs single device");
    }
    Ok(())
}
