//! The table of VJP cases shared by graph's evaluator check (graph/tests/vjp.rs) and jit's
//! plugin check (jit/tests/grad_check.rs): one table, two oracles. Each test includes this
//! file with `#[path]`.
#![allow(dead_code)]
use graph::{DType, DotDims, Tensor};

pub struct Case {
    pub prim: &'static str,
    /// Float (f64) inputs: shape and value range; they are differentiated.
    pub inputs: Vec<(Vec<i64>, f64, f64)>,
    /// Integer (s32) inputs appended after the float ones: shape and values.
    pub ints: Vec<(Vec<i64>, Vec<i64>)>,
    pub build: fn(&[Tensor]) -> Tensor,
    pub eps: f64,
    pub tol: f64,
}

pub fn case(prim: &'static str, inputs: &[(&[i64], f64, f64)], build: fn(&[Tensor]) -> Tensor) -> Case {
    Case { prim, inputs: inputs.iter().map(|(s, lo, hi)| (s.to_vec(), *lo, *hi)).collect(), ints: vec![], build, eps: 1e-6, tol: 1e-6 }
}

pub fn with_ints(mut c: Case, ints: &[(&[i64], &[i64])]) -> Case {
    c.ints = ints.iter().map(|(s, v)| (s.to_vec(), v.to_vec())).collect();
    c
}

pub fn table() -> Vec<Case> {
    const A: &[i64] = &[2, 3];
    let any = (A, -2.0, 2.0);
    let pos = (A, 0.5, 2.0);
    let m43 = (&[4, 3][..], -1.0, 1.0);
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
            let dims = DotDims { lhs_batch: vec![0], rhs_batch: vec![0], lhs_contract: vec![2], rhs_contract: vec![1] };
            x[0].dot_general(&x[1], &dims)
        }),
        case("broadcast_in_dim", &[(&[3, 1], -1.0, 1.0)], |x| x[0].broadcast_in_dim(&[2, 3, 4], &[1, 2])),
        case("reshape", &[any], |x| x[0].reshape(&[3, 2]) * x[0].reshape(&[3, 2]).exp()),
        case("transpose", &[(&[2, 3, 2], -1.0, 1.0)], |x| x[0].transpose(&[2, 0, 1]).exp()),
        case("slice", &[(&[4, 5], -1.0, 1.0)], |x| x[0].slice(&[1, 0], &[4, 5], &[2, 2]).exp()),
        case("concatenate", &[any, (&[2, 2], -1.0, 1.0)], |x| x[0].concat(&[&x[1].exp()], 1)),
        case("pad", &[any, (&[], -1.0, 1.0)], |x| x[0].pad(&x[1], &[1, 0], &[0, 2], &[1, 1]).exp()),
        case("reduce_sum", &[(&[2, 3, 2], -1.0, 1.0)], |x| x[0].exp().sum(&[0, 2])),
        case("reduce_max", &[(&[2, 3, 2], -1.0, 1.0)], |x| x[0].max_over(&[1])),
        case("optimization_barrier", &[any, any], |x| x[0].barrier(&[&x[1]]).exp() * &x[1]),
        case("cotangent_barrier", &[any], |x| (x[0].cotangent_barrier().exp() * &x[0]).tanh()),
        case("sharding_constraint", &[any], |x| x[0].with_sharding_constraint(&sharding::PartitionSpec::new(&[&["data"], &[]])).exp()),
    ];
    let mut convert = case("convert", &[any], |x| x[0].convert(DType::F32).exp().convert(DType::F64));
    // Through f32 the function is only f32-accurate: a larger step and tolerance.
    convert.eps = 1e-3;
    convert.tol = 1e-4;
    t.push(convert);
    t.push(with_ints(
        case("dynamic_slice", &[m43], |x| x[0].dynamic_slice(&[x[1].clone(), x[2].clone()], &[2, 2]).exp()),
        &[(&[], &[1]), (&[], &[1])],
    ));
    t.push(with_ints(
        case("dynamic_update_slice", &[m43, (&[2, 2], -1.0, 1.0)], |x| {
            x[0].dynamic_update_slice(&x[1].exp(), &[x[2].clone(), x[3].clone()]).exp()
        }),
        &[(&[], &[2]), (&[], &[0])],
    ));
    // A repeated id accumulates.
    t.push(with_ints(case("gather", &[(&[5, 3], -1.0, 1.0)], |x| x[0].gather(&x[1]).exp()), &[(&[2, 2], &[4, 0, 4, 2])]));
    t.push(with_ints(
        case("scatter_add", &[m43, (&[3, 3], -1.0, 1.0)], |x| x[0].scatter_add(&x[2], &x[1].exp()).exp()),
        &[(&[3], &[1, 3, 1])],
    ));
    // Out-of-range ids: gather clamps them, scatter drops their rows; the rules must agree.
    t.push(with_ints(case("gather", &[(&[5, 3], -1.0, 1.0)], |x| x[0].gather(&x[1]).exp()), &[(&[4], &[7, 0, -2, 2])]));
    t.push(with_ints(
        case("scatter_add", &[m43, (&[3, 3], -1.0, 1.0)], |x| x[0].scatter_add(&x[2], &x[1].exp()).exp()),
        &[(&[3], &[1, 9, -1])],
    ));
    // A loop: a carry through tanh steps over stacked inputs with a loop-invariant operand;
    // the loss reads the final carry and the stacked outputs (both kinds of result).
    for (prim, remat) in [("scan", graph::Remat::None), ("scan_result", graph::Remat::Full)] {
        let build: fn(&[Tensor]) -> Tensor = match remat {
            graph::Remat::None => |x| scan_case(x, graph::Remat::None),
            _ => |x| scan_case(x, graph::Remat::Full),
        };
        t.push(case(prim, &[(&[2, 3], -1.0, 1.0), (&[4, 2, 3], -1.0, 1.0), (&[3, 3], -1.0, 1.0)], build));
    }
    t
}

fn scan_case(x: &[Tensor], remat: graph::Remat) -> Tensor {
    let opts = graph::ScanOptions { reverse: false, remat };
    let (h, ys) = graph::scan("step", &[x[0].clone()], &[x[1].clone()], &[x[2].clone()], opts, |c, xs, k| {
        let h = (c[0].matmul(&k[0]) + &xs[0]).tanh();
        let y = (&h * &xs[0]).exp();
        (vec![h.clone()], vec![y])
    })
    .expect("a valid scan");
    (&h[0] * 2.0).concat(&[&ys[0].sum(&[0])], 0)
}

/// Deterministic pseudo-random numbers in [lo, hi) (a 64-bit LCG).
pub fn values(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}
