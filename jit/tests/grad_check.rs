//! Every primitive with a VJP rule, checked against central differences in f64 on the CPU
//! plugin (the lowered programs), with the same table as graph's own evaluator check. The
//! table must have an entry for each differentiable primitive: adding a primitive without
//! adding its check fails `the_table_covers_every_differentiable_primitive`.
#[path = "../../graph/tests/support/vjp_cases.rs"]
mod vjp_cases;

use anyhow::Result;
use graph::{Tensor, TensorType};
use runtime::{Client, HostArray, PluginSpec};
use vjp_cases::{table, values, Case};

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
    let (plain, with_grad) = (loss_at(&args)?, out[0].to_vec::<f64>()?[0]);
    // The same loss in both programs: to f64 rounding, or to f32 rounding for the cases that
    // go through f32 (XLA may fuse the f32 round trip differently in the two programs).
    let same = if c.eps > 1e-6 { 1e-7 } else { 1e-12 };
    assert!((plain - with_grad).abs() < same * plain.abs().max(1.0), "{}: loss {plain} alone, {with_grad} with its gradient", c.prim);
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
