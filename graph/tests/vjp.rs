//! Every primitive with a VJP rule, checked against central differences in f64 through the
//! reference evaluator (`graph::eval`), no plugin. The table must have an entry for each
//! differentiable primitive: adding a primitive without adding its check fails
//! `the_table_covers_every_differentiable_primitive`. Run with --nocapture to see the
//! largest error per primitive.
#[path = "support/vjp_cases.rs"]
mod vjp_cases;

use graph::{eval, DType, Function, TensorType};
use ndarray::ArrayD;
use vjp_cases::{table, values, Case};

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
