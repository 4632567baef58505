//! Every primitive with a VJP rule, checked against central differences in f64 through the
//! reference evaluator (`graph::eval`), no plugin. The table must have an entry for each
//! differentiable primitive: adding a primitive without adding its check fails
//! `the_table_covers_every_differentiable_primitive`. Run with --nocapture to see the
//! largest error per primitive.
use graph::{eval, DType, DotDims, Function, Tensor, TensorType};
use ndarray::ArrayD;

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

fn with_ints(mut c: Case, ints: &[(&[i64], &[i64])]) -> Case {
    c.ints = ints.iter().map(|(s, v)| (s.to_vec(), v.to_vec())).collect();
    c
}

fn table() -> Vec<Case> {
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
    t
}

/// Deterministic pseudo-random numbers in [lo, hi) (a 64-bit LCG).
fn values(n: usize, lo: f64, hi: f64, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

fn array(dims: &[i64], v: Vec<f64>) -> ArrayD<f64> {
    let shape: Vec<usize> = dims.iter().map(|&d| d as usize).collect();
    ArrayD::from_shape_vec(shape, v).unwrap()
}

/// The case as a traced function of its float inputs (f64), then its integer inputs (s32).
fn traced(c: &Case) -> Function {
    let mut types: Vec<TensorType> = c.inputs.iter().map(|(s, _, _)| TensorType::new(DType::F64, s)).collect();
    types.extend(c.ints.iter().map(|(s, _)| TensorType::new(DType::S32, s)));
    let names: Vec<String> = (0..types.len()).map(|i| format!("x{i}")).collect();
    let params: Vec<(&str, TensorType)> = names.iter().map(|n| n.as_str()).zip(types).collect();
    graph::trace(c.prim, &params, |x| vec![(c.build)(x)]).unwrap()
}

/// Checks the VJP of every float input against central differences of the forward pass,
/// both evaluated by `graph::eval`. Returns the largest error |g - fd| / max(|g|, 1), or a
/// message naming the first gradient out of tolerance.
fn check(c: &Case, seed: u64) -> Result<f64, String> {
    let f = traced(c);
    if f.count(c.prim) == 0 {
        return Err(format!("the case for {} does not use it", c.prim));
    }
    let nf = c.inputs.len();
    let back = graph::vjp(&f, &(0..nf).collect::<Vec<_>>()).map_err(|e| e.to_string())?;
    let mut args: Vec<ArrayD<f64>> = c
        .inputs
        .iter()
        .enumerate()
        .map(|(i, (s, lo, hi))| array(s, values(s.iter().product::<i64>() as usize, *lo, *hi, seed + i as u64)))
        .collect();
    args.extend(c.ints.iter().map(|(s, v)| array(s, v.iter().map(|&i| i as f64).collect())));
    let y_ty = &f.output_types()[0];
    let ct = array(&y_ty.dims, values(y_ty.num_elements() as usize, -1.0, 1.0, 99));
    // loss = sum(y * ct): its gradient is the VJP with cotangent ct.
    let loss = |a: &[ArrayD<f64>]| -> Result<f64, String> {
        let y = eval(&f, a).map_err(|e| e.to_string())?.remove(0);
        Ok((y * &ct).sum())
    };
    let mut back_args = args.clone();
    back_args.push(ct.clone());
    let out = eval(&back, &back_args).map_err(|e| e.to_string())?;
    if out[0] != eval(&f, &args).map_err(|e| e.to_string())?[0] {
        return Err(format!("{}: the VJP's forward output differs from the function's", c.prim));
    }
    let mut worst = 0.0f64;
    for i in 0..nf {
        let g: Vec<f64> = out[1 + i].iter().copied().collect();
        for (k, &gk) in g.iter().enumerate() {
            let mut probe = args.clone();
            let x = probe[i].as_slice_mut().expect("standard layout");
            let x0 = x[k];
            x[k] = x0 + c.eps;
            let up = loss(&probe)?;
            probe[i].as_slice_mut().expect("standard layout")[k] = x0 - c.eps;
            let down = loss(&probe)?;
            let fd = (up - down) / (2.0 * c.eps);
            let err = (gk - fd).abs() / gk.abs().max(1.0);
            worst = worst.max(err);
            if err > c.tol {
                return Err(format!("{}: d loss / d x{i}[{k}] is {gk} by the VJP but {fd} by central differences", c.prim));
            }
        }
    }
    Ok(worst)
}

#[test]
fn every_vjp_matches_central_differences() {
    let mut failures = Vec::new();
    for (i, c) in table().iter().enumerate() {
        match check(c, 1000 + 17 * i as u64) {
            Ok(worst) => println!("{:<22} max error {worst:.2e} (tolerance {:.0e})", c.prim, c.tol),
            Err(e) => {
                println!("{:<22} FAILED: {e}", c.prim);
                failures.push(e);
            }
        }
    }
    assert!(failures.is_empty(), "{} VJP checks failed:\n{}", failures.len(), failures.join("\n"));
}

/// Differentiable primitives with no case among `covered`.
fn missing(covered: &[&str]) -> Vec<&'static str> {
    graph::all_primitives().iter().filter(|p| p.is_differentiable()).map(|p| p.name()).filter(|n| !covered.contains(n)).collect()
}

#[test]
fn the_table_covers_every_differentiable_primitive() {
    let covered: Vec<&str> = table().iter().map(|c| c.prim).collect();
    assert_eq!(missing(&covered), Vec::<&str>::new(), "no gradient check for these primitives");
    // And the check notices a gap: without the exp case, exp is reported.
    let fewer: Vec<&str> = covered.iter().copied().filter(|&n| n != "exp").collect();
    assert_eq!(missing(&fewer), ["exp"]);
}
