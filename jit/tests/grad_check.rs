//! Every primitive with a VJP rule, checked against central differences in f64 on the CPU
//! plugin (the lowered programs; `graph`'s own tests check the rules through its evaluator). The table must have an entry for each differentiable primitive: adding a
//! primitive without adding its check fails `the_table_covers_every_differentiable_primitive`.
use anyhow::Result;
use graph::{DType, DotDims, Tensor, TensorType};
use runtime::{Client, HostArray, PluginSpec};

struct Case {
    prim: &'static str,
    /// Float (f64) inputs: shape and value range; they are differentiated.
    inputs: Vec<(Vec<i64>, f64, f64)>,
    /// Integer (s32) inputs appended after the float ones: shape and values.
    ints: Vec<(Vec<i64>, Vec<i64>)>,
    build: fn(&[Tensor]) -> Tensor,
    eps: f64,
    tol: f64,
}

fn case(prim: &'static str, inputs: &[(&[i64], f64, f64)], build: fn(&[Tensor]) -> Tensor) -> Case {
    Case { prim, inputs: inputs.iter().map(|(s, lo, hi)| (s.to_vec(), *lo, *hi)).collect(), ints: vec![], build, eps: 1e-6, tol: 1e-6 }
}

fn table() -> Vec<Case> {
    const A: &[i64] = &[2, 3];
    let any = (A, -2.0, 2.0);
    let pos = (A, 0.5, 2.0);
    let mut t = vec![
        case("neg", &[any], |x| -&x[0]),
        case("exp", &[any], |x| x[0].exp()),
        case("log", &[pos], |x| x[0].log()),
        case("sqrt", &[pos], |x| x[0].sqrt()),
        case("rsqrt", &[pos], |x| x[0].rsqrt()),
        case("tanh", &[any], |x| x[0].tanh()),
        case("logistic", &[any], |x| x[0].logistic()),
        case("abs", &[(A, 0.2, 2.0)], |x| (&x[0] - 1.1).abs()),
        case("sin", &[any], |x| x[0].sin()),
        case("cos", &[any], |x| x[0].cos()),
        case("add", &[any, any], |x| &x[0] + &x[1]),
        case("sub", &[any, any], |x| &x[0] - &x[1]),
        case("mul", &[any, any], |x| &x[0] * &x[1]),
        case("div", &[any, pos], |x| &x[0] / &x[1]),
        case("pow", &[pos, any], |x| x[0].pow(&x[1])),
        case("max", &[any, any], |x| x[0].max(&x[1])),
        case("min", &[any, any], |x| x[0].min(&x[1])),
        case("select", &[any, any], |x| Tensor::select(&x[0].gt(&x[1]), &(&x[0] * 2.0), &x[1].exp())),
        case("dot_general", &[(&[2, 3, 4], -1.0, 1.0), (&[2, 4, 3], -1.0, 1.0)], |x| {
            // Batch 0, contract lhs 2 with rhs 1: exercises the transposes in the rule.
            x[0].dot_general(&x[1], &DotDims { lhs_batch: vec![0], rhs_batch: vec![0], lhs_contract: vec![2], rhs_contract: vec![1] })
        }),
        case("broadcast_in_dim", &[(&[3, 1], -1.0, 1.0)], |x| x[0].broadcast_in_dim(&[2, 3, 4], &[1, 2])),
        case("reshape", &[any], |x| x[0].reshape(&[3, 2]) * x[0].reshape(&[3, 2]).exp()),
        case("transpose", &[(&[2, 3, 2], -1.0, 1.0)], |x| x[0].transpose(&[2, 0, 1]).exp()),
        case("slice", &[(&[4, 5], -1.0, 1.0)], |x| x[0].slice(&[1, 0], &[4, 5], &[2, 2]).exp()),
        case("concatenate", &[any, (&[2, 2], -1.0, 1.0)], |x| x[0].concat(&[&x[1].exp()], 1)),
        case("pad", &[any, (&[], -1.0, 1.0)], |x| x[0].pad(&x[1], &[1, 0], &[0, 2], &[1, 1]).exp()),
        case("reduce_sum", &[(&[2, 3, 2], -1.0, 1.0)], |x| x[0].exp().sum(&[0, 2])),
        case("reduce_max", &[(&[2, 3, 2], -1.0, 1.0)], |x| x[0].max_over(&[1])),
    ];
    let mut convert = case("convert", &[any], |x| x[0].convert(DType::F32).exp().convert(DType::F64));
    // Through f32 the function is only f32-accurate: a larger step and tolerance.
    convert.eps = 1e-3;
    convert.tol = 1e-4;
    t.push(convert);
    let mut ds = case("dynamic_slice", &[(&[4, 3], -1.0, 1.0)], |x| x[0].dynamic_slice(&[x[1].clone(), x[2].clone()], &[2, 2]).exp());
    ds.ints = vec![(vec![], vec![1]), (vec![], vec![1])];
    t.push(ds);
    let mut dus = case("dynamic_update_slice", &[(&[4, 3], -1.0, 1.0), (&[2, 2], -1.0, 1.0)], |x| {
        x[0].dynamic_update_slice(&x[1].exp(), &[x[2].clone(), x[3].clone()]).exp()
    });
    dus.ints = vec![(vec![], vec![2]), (vec![], vec![0])];
    t.push(dus);
    let mut gather = case("gather", &[(&[5, 3], -1.0, 1.0)], |x| x[0].gather(&x[1]).exp());
    gather.ints = vec![(vec![2, 2], vec![4, 0, 4, 2])]; // a repeated id accumulates
    t.push(gather);
    let mut scatter = case("scatter_add", &[(&[4, 3], -1.0, 1.0), (&[3, 3], -1.0, 1.0)], |x| x[0].scatter_add(&x[2], &x[1].exp()).exp());
    scatter.ints = vec![(vec![3], vec![1, 3, 1])];
    t.push(scatter);
    t
}

/// Deterministic pseudo-random numbers in [lo, hi).
fn values(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

fn check(client: &Client, c: &Case, seed: u64) -> Result<()> {
    let nf = c.inputs.len();
    let build = c.build;
    // loss = sum(build(x) * weights): a scalar whose gradient exercises every output element.
    let loss = move |x: &[Tensor]| {
        let y = build(x);
        let w = y.tracer().constant(&y.ty(), values(y.ty().num_elements() as usize, -1.0, 1.0, 99));
        vec![(y * w).sum_all()]
    };
    let loss_fn = move |types: &[TensorType]| {
        let names: Vec<String> = (0..types.len()).map(|i| format!("x{i}")).collect();
        let params: Vec<(&str, TensorType)> = names.iter().map(|n| n.as_str()).zip(types.iter().cloned()).collect();
        graph::trace("check", &params, loss)
    };
    let forward = jit::flat(c.prim, client, loss);
    let wrt: Vec<usize> = (0..nf).collect();
    // The gradient program calls the traced loss's value_and_grad inside its own trace.
    let grads = jit::flat(c.prim, client, move |x: &[Tensor]| -> Result<Vec<Tensor>, graph::Error> {
        let types: Vec<TensorType> = x.iter().map(Tensor::ty).collect();
        Ok(graph::value_and_grad(&loss_fn(&types)?, &wrt)?.call(x))
    });

    let mut args: Vec<HostArray> = c
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (shape, lo, hi))| {
            let n = shape.iter().product::<i64>() as usize;
            HostArray::from_vec(shape, values(n, *lo, *hi, seed + i as u64)).unwrap()
        })
        .collect();
    for (shape, v) in &c.ints {
        args.push(HostArray::from_vec(shape, v.iter().map(|&x| x as i32).collect())?);
    }
    let out = grads.call_flat(&args)?;
    let traced = loss_fn(&args.iter().map(|a| a.ty()).collect::<Vec<_>>())?;
    assert!(traced.count(c.prim) > 0, "the case for {} does not use it", c.prim);

    let loss_at = |args: &[HostArray]| -> Result<f64> { Ok(forward.call_flat(args)?[0].to_vec::<f64>()?[0]) };
    assert!((loss_at(&args)? - out[0].to_vec::<f64>()?[0]).abs() < 1e-12);
    for i in 0..nf {
        let g = out[1 + i].to_vec::<f64>()?;
        let x = args[i].to_vec::<f64>()?;
        for k in 0..x.len() {
            let mut probe = args.clone();
            let mut xp = x.clone();
            xp[k] = x[k] + c.eps;
            probe[i] = HostArray::from_vec(args[i].dims(), xp.clone())?;
            let up = loss_at(&probe)?;
            xp[k] = x[k] - c.eps;
            probe[i] = HostArray::from_vec(args[i].dims(), xp)?;
            let down = loss_at(&probe)?;
            let fd = (up - down) / (2.0 * c.eps);
            assert!(
                (g[k] - fd).abs() <= c.tol * g[k].abs().max(1.0),
                "{}: d loss / d x{i}[{k}] is {} by autodiff but {fd} by central differences",
                c.prim,
                g[k]
            );
        }
    }
    Ok(())
}

#[test]
fn every_vjp_matches_central_differences() -> Result<()> {
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
    for (i, c) in table().iter().enumerate() {
        check(&client, c, 1000 + 17 * i as u64)?;
    }
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

#[test]
fn the_table_covers_every_differentiable_primitive() {
    let covered: Vec<&str> = table().iter().map(|c| c.prim).collect();
    let missing: Vec<&str> =
        graph::all_primitives().iter().filter(|p| p.is_differentiable()).map(|p| p.name()).filter(|n| !covered.contains(n)).collect();
    assert!(missing.is_empty(), "no gradient check for: {missing:?}");
}
