//! `graph::scan`: a loop over stacked operands. Its values, gradients (every remat policy,
//! both directions, second order) and errors, checked through the reference evaluator
//! against the same computation written out step by step, and against central differences.
use graph::{eval, scan, trace, value_and_grad, vjp, DType, Function, Remat, ScanOptions, Tensor, TensorType};
use ndarray::{ArrayD, IxDyn};

const STEPS: i64 = 5;

fn f64t(dims: &[i64]) -> TensorType {
    TensorType::new(DType::F64, dims)
}

fn arr(dims: &[usize], seed: u64) -> ArrayD<f64> {
    let mut s = seed;
    ArrayD::from_shape_fn(IxDyn(dims), |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 1.6
    })
}

/// One step: h' = tanh(h W_x + h * c) + x, y = sum(h' * x) over the last axis, a step
/// counter carried as an integer; W_x is this step's slice of a stacked weight.
fn step(h: &Tensor, count: &Tensor, x: &Tensor, w: &Tensor, c: &Tensor) -> (Tensor, Tensor, Tensor) {
    let h2 = (h.matmul(w) + h * c).tanh() + x;
    let y = (&h2 * x).sum(&[1]);
    (h2, count + 1.0, y)
}

/// loss(h0, xs [STEPS, 4, 3], ws [STEPS, 3, 3], c [4, 3]) with the steps in a scan.
fn scanned(opts: ScanOptions) -> Function {
    trace("scanned", &[("h0", f64t(&[4, 3])), ("xs", f64t(&[STEPS, 4, 3])), ("ws", f64t(&[STEPS, 3, 3])), ("c", f64t(&[4, 3]))], |a| {
        let count = a[0].tracer().scalar(DType::S32, 0.0);
        let (carry, ys) = scan("step", &[a[0].clone(), count], &[a[1].clone(), a[2].clone()], &[a[3].clone()], opts, |c, x, k| {
            let (h, n, y) = step(&c[0], &c[1], &x[0], &x[1], &k[0]);
            (vec![h, n], vec![y])
        })
        .unwrap();
        let weights = a[0].tracer().iota(&f64t(&[STEPS, 4]), 0) + 1.0;
        vec![(&carry[0] * &carry[0]).sum_all() + (&ys[0] * &weights).sum_all(), carry[1].clone(), ys[0].clone()]
    })
    .unwrap()
}

/// The same loss with the steps written out (in reverse order when `reverse`).
fn unrolled(reverse: bool) -> Function {
    trace("unrolled", &[("h0", f64t(&[4, 3])), ("xs", f64t(&[STEPS, 4, 3])), ("ws", f64t(&[STEPS, 3, 3])), ("c", f64t(&[4, 3]))], |a| {
        let mut h = a[0].clone();
        let mut n = a[0].tracer().scalar(DType::S32, 0.0);
        let mut ys: Vec<Option<Tensor>> = vec![None; STEPS as usize];
        for s in 0..STEPS {
            let i = if reverse { STEPS - 1 - s } else { s };
            let x = a[1].slice(&[i, 0, 0], &[i + 1, 4, 3], &[1, 1, 1]).reshape(&[4, 3]);
            let w = a[2].slice(&[i, 0, 0], &[i + 1, 3, 3], &[1, 1, 1]).reshape(&[3, 3]);
            let (h2, n2, y) = step(&h, &n, &x, &w, &a[3]);
            h = h2;
            n = n2;
            ys[i as usize] = Some(y.reshape(&[1, 4]));
        }
        let ys: Vec<Tensor> = ys.into_iter().map(|y| y.unwrap()).collect();
        let rest: Vec<&Tensor> = ys[1..].iter().collect();
        let stacked = ys[0].concat(&rest, 0);
        let weights = a[0].tracer().iota(&f64t(&[STEPS, 4]), 0) + 1.0;
        vec![(&h * &h).sum_all() + (&stacked * &weights).sum_all(), n, stacked]
    })
    .unwrap()
}

fn args() -> Vec<ArrayD<f64>> {
    vec![arr(&[4, 3], 1), arr(&[STEPS as usize, 4, 3], 2), arr(&[STEPS as usize, 3, 3], 3), arr(&[4, 3], 4)]
}

fn close(a: &ArrayD<f64>, b: &ArrayD<f64>, tol: f64) -> bool {
    a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol * x.abs().max(1.0))
}

#[test]
fn a_scan_computes_what_its_steps_written_out_compute() {
    for reverse in [false, true] {
        let s = scanned(ScanOptions { reverse, remat: Remat::None });
        assert_eq!(s.count("scan"), 1);
        assert_eq!(s.count("dot_general"), 0, "the body's ops live in the body, not the program");
        let got = eval(&s, &args()).unwrap();
        let want = eval(&unrolled(reverse), &args()).unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(close(g, w, 1e-14), "reverse={reverse}: {g} vs {w}");
        }
        assert_eq!(got[1].iter().next(), Some(&(STEPS as f64)), "the integer carry counts the steps");
    }
}

#[test]
fn scan_gradients_equal_the_unrolled_gradients_under_every_policy() {
    for reverse in [false, true] {
        let want = eval(&value_and_grad(&unrolled(reverse), &[0, 1, 2, 3]).unwrap(), &args()).unwrap();
        for remat in [Remat::None, Remat::Full, Remat::SaveDots] {
            let g = value_and_grad(&scanned(ScanOptions { reverse, remat }), &[0, 1, 2, 3]).unwrap();
            // The forward loop and one backward loop.
            assert_eq!(g.count("scan"), 2, "{remat}");
            let got = eval(&g, &args()).unwrap();
            assert_eq!(got.len(), want.len());
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(close(a, b, 1e-12), "reverse={reverse} {remat}: output {k} ({}) differs", g.outputs[k].name);
            }
        }
    }
}

#[test]
fn remat_policies_decide_what_the_forward_loop_saves() {
    // Saved values are extra results of the forward scan: count its results per policy.
    let results = |remat| {
        let g = value_and_grad(&scanned(ScanOptions { reverse: false, remat }), &[0, 1, 2, 3]).unwrap();
        let forward = g.nodes.iter().find_map(|n| match &n.prim {
            graph::Prim::Scan(s) if !s.reverse => Some(s.result_types().len()),
            _ => None,
        });
        forward.unwrap()
    };
    // Carries (2) and ys (1), then: Full saves only the float carry h, SaveDots the carry and
    // the dot; None what the backward step reads but for layout ops and simple arithmetic:
    // the carry h and the tanh (its VJP reads it; h' = tanh + x is redone from it).
    let (none, full, dots) = (results(Remat::None), results(Remat::Full), results(Remat::SaveDots));
    assert_eq!(full, 3 + 1, "full: only the carry h is saved");
    assert_eq!(dots, 3 + 2, "save-dots: the carry h and the dot");
    assert_eq!(none, 3 + 2, "none: the carry h and the tanh");
    // With remat the backward step recomputes behind optimization barriers (so XLA keeps the
    // recomputation apart, as for a rematerialised block outside a loop); without, none.
    let barriers = |remat| {
        let g = value_and_grad(&scanned(ScanOptions { reverse: false, remat }), &[0, 1, 2, 3]).unwrap();
        g.to_stablehlo().unwrap().matches("stablehlo.optimization_barrier").count()
    };
    assert_eq!(barriers(Remat::None), 0);
    assert!(barriers(Remat::Full) > 0 && barriers(Remat::SaveDots) > 0);
}

#[test]
fn scan_gradients_match_central_differences() {
    let f = scanned(ScanOptions::default());
    let g = value_and_grad(&f, &[0, 1, 2, 3]).unwrap();
    let a = args();
    let out = eval(&g, &a).unwrap();
    let loss = |a: &[ArrayD<f64>]| eval(&f, a).unwrap()[0].iter().next().copied().unwrap();
    let eps = 1e-6;
    for i in 0..4 {
        let grad = &out[3 + i];
        for k in 0..a[i].len() {
            let mut p = a.clone();
            p[i].as_slice_mut().unwrap()[k] += eps;
            let up = loss(&p);
            p[i].as_slice_mut().unwrap()[k] -= 2.0 * eps;
            let down = loss(&p);
            let fd = (up - down) / (2.0 * eps);
            let gk = grad.as_slice().unwrap()[k];
            assert!((gk - fd).abs() <= 1e-6 * gk.abs().max(1.0), "d loss / d arg{i}[{k}]: {gk} vs {fd}");
        }
    }
}

#[test]
fn a_scan_differentiates_twice() {
    // The gradient of (d loss / d c) . v with respect to h0: a Hessian-vector product through
    // two levels of loops, against the unrolled program's.
    let second = |f: &Function| {
        let g = graph::grad(f, &[3]).unwrap();
        let gv =
            trace("gv", &[("h0", f64t(&[4, 3])), ("xs", f64t(&[STEPS, 4, 3])), ("ws", f64t(&[STEPS, 3, 3])), ("c", f64t(&[4, 3]))], |a| {
                let dc = g.call(a).remove(0);
                vec![(&dc * &a[3].sin()).sum_all()]
            })
            .unwrap();
        eval(&graph::grad(&gv, &[0]).unwrap(), &args()).unwrap()
    };
    let want = second(&unrolled(false));
    for remat in [Remat::None, Remat::Full] {
        let got = second(&scanned(ScanOptions { reverse: false, remat }));
        assert!(close(&got[0], &want[0], 1e-11), "{remat}: {} vs {}", got[0], want[0]);
    }
}

#[test]
fn the_vjp_takes_cotangents_of_every_result() {
    let f = scanned(ScanOptions::default());
    let u = unrolled(false);
    let (vs, vu) = (vjp(&f, &[0, 1, 2, 3]).unwrap(), vjp(&u, &[0, 1, 2, 3]).unwrap());
    let mut a = args();
    a.push(arr(&[], 5));
    a.push(ArrayD::zeros(IxDyn(&[])));
    a.push(arr(&[STEPS as usize, 4], 6));
    let (gs, gu) = (eval(&vs, &a).unwrap(), eval(&vu, &a).unwrap());
    for (k, (x, y)) in gs.iter().zip(&gu).enumerate() {
        assert!(close(x, y, 1e-12), "output {k} differs");
    }
}

#[test]
fn a_scan_lowers_to_one_while_loop() {
    let g = value_and_grad(&scanned(ScanOptions::default()), &[0, 1, 2, 3]).unwrap();
    let text = g.to_stablehlo().unwrap();
    assert_eq!(text.matches("\"stablehlo.while\"").count(), 2, "forward and backward loops");
    // The body's ops carry this file's locations.
    assert!(text.contains("scan.rs"), "{text}");
    let once = scanned(ScanOptions::default()).to_stablehlo().unwrap();
    assert_eq!(once.matches("stablehlo.dot_general").count(), 1, "one matmul, in the body");
}

#[test]
fn bad_scans_are_refused_with_what_is_wrong() {
    let params = [("h", f64t(&[4, 3])), ("xs", f64t(&[STEPS, 4, 3])), ("ys", f64t(&[STEPS + 1, 4, 3]))];
    let err = |f: &dyn Fn(&[Tensor]) -> graph::Error| {
        let mut msg = String::new();
        let _ = trace("bad", &params, |a| {
            msg = f(a).to_string();
            vec![a[0].clone()]
        });
        msg
    };
    let m = err(&|a| {
        scan("s", &[a[0].clone()], &[a[1].clone(), a[2].clone()], &[], ScanOptions::default(), |c, _, _| (c.to_vec(), vec![])).unwrap_err()
    });
    assert!(m.contains("stacked input 1") && m.contains("length 5"), "{m}");
    let m = err(&|a| {
        scan("s", &[a[0].clone()], &[a[1].clone()], &[], ScanOptions::default(), |c, _, _| (vec![c[0].sum_all()], vec![])).unwrap_err()
    });
    assert!(m.contains("carry 0") && m.contains("f64[4,3]") && m.contains("f64[]"), "{m}");
    let m = err(&|a| scan("s", &[a[0].clone()], &[a[1].clone()], &[], ScanOptions::default(), |_, _, _| (vec![], vec![])).unwrap_err());
    assert!(m.contains("returns 0 carries for 1"), "{m}");
    let m = err(&|a| scan("s", &[a[0].clone()], &[], &[], ScanOptions::default(), |c, _, _| (c.to_vec(), vec![])).unwrap_err());
    assert!(m.contains("at least one stacked input"), "{m}");
    // A body that uses a value of the enclosing trace.
    let m = err(&|a| {
        let outer = a[0].clone();
        scan("s", &[a[0].clone()], &[a[1].clone()], &[], ScanOptions::default(), move |c, _, _| (vec![&c[0] + &outer], vec![])).unwrap_err()
    });
    assert!(m.contains("different traces"), "{m}");
}
