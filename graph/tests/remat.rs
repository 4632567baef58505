//! Rematerialisation (`Function::call_remat`): the backward pass recomputes a block from its
//! inputs behind optimization barriers instead of keeping its values; gradients are the same
//! values exactly, and the program has the recomputed ops. No plugin (graph::eval).
use graph::{eval, trace, value_and_grad, DType, Function, Remat, TensorType};
use ndarray::{ArrayD, IxDyn};

fn f64t(dims: &[i64]) -> TensorType {
    TensorType::new(DType::F64, dims)
}

/// A two-layer tanh MLP block called twice (weights shared), then a loss; `policy` says how
/// the block is called.
fn model(policy: Remat) -> Function {
    let block = trace("block", &[("x", f64t(&[4, 3])), ("w", f64t(&[3, 3]))], |a| {
        let h = a[0].matmul(&a[1]).tanh();
        vec![(h.matmul(&a[1]) * &a[0]).tanh() + &a[0]]
    })
    .unwrap();
    trace("loss", &[("x", f64t(&[4, 3])), ("w", f64t(&[3, 3]))], |a| {
        let y = block.call_remat(&[a[0].clone(), a[1].clone()], policy).remove(0);
        let z = block.call_remat(&[y, a[1].clone()], policy).remove(0);
        vec![(&z * &z).sum_all()]
    })
    .unwrap()
}

fn arr(dims: &[usize], seed: u64) -> ArrayD<f64> {
    let mut s = seed;
    ArrayD::from_shape_fn(IxDyn(dims), |_| {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 1.6
    })
}

#[test]
fn remat_keeps_values_and_gradients_exactly() {
    let args = [arr(&[4, 3], 1), arr(&[3, 3], 2)];
    let plain = value_and_grad(&model(Remat::None), &[0, 1]).unwrap();
    let want = eval(&plain, &args).unwrap();
    for policy in [Remat::Full, Remat::SaveDots] {
        let g = value_and_grad(&model(policy), &[0, 1]).unwrap();
        let got = eval(&g, &args).unwrap();
        assert_eq!(got, want, "{policy}: loss and gradients differ");
    }
}

#[test]
fn the_backward_pass_recomputes_behind_barriers() {
    let plain = value_and_grad(&model(Remat::None), &[0, 1]).unwrap();
    let full = value_and_grad(&model(Remat::Full), &[0, 1]).unwrap();
    let dots = value_and_grad(&model(Remat::SaveDots), &[0, 1]).unwrap();
    assert_eq!(plain.count("optimization_barrier"), 0);
    // Two blocks, each with inputs x and w behind a barrier.
    assert_eq!(full.count("optimization_barrier"), 4);
    // Full recomputes both matmuls and both tanh of each block; save-dots only the tanh.
    assert_eq!(full.count("dot_general"), plain.count("dot_general") + 4);
    assert_eq!(dots.count("dot_general"), plain.count("dot_general"));
    assert_eq!(full.count("tanh"), plain.count("tanh") + 4);
    assert_eq!(dots.count("tanh"), plain.count("tanh") + 4);
    let text = full.to_stablehlo().unwrap();
    assert_eq!(text.matches("\"stablehlo.optimization_barrier\"").count(), 4, "{text}");
}

#[test]
fn a_cotangent_barrier_fences_the_cotangent_and_changes_no_value() {
    let f = |fenced: bool| {
        trace("f", &[("x", f64t(&[4, 3])), ("w", f64t(&[3, 3]))], move |a| {
            let y = a[0].matmul(&a[1]);
            let y = if fenced { y.cotangent_barrier() } else { y };
            // The cotangent of y is elementwise work read by both matmuls of the backward pass.
            vec![(y.tanh() * 0.5).exp().sum_all()]
        })
        .unwrap()
    };
    let (plain, fenced) = (f(false), f(true));
    // The forward program has nothing for it; the backward one one barrier, on y's cotangent.
    assert_eq!(fenced.to_stablehlo().unwrap().matches("optimization_barrier").count(), 0);
    let g = value_and_grad(&fenced, &[0, 1]).unwrap();
    let text = g.to_stablehlo().unwrap();
    assert_eq!(text.matches("\"stablehlo.optimization_barrier\"").count(), 1, "{text}");
    assert_eq!(g.count("dot_general"), value_and_grad(&plain, &[0, 1]).unwrap().count("dot_general"));
    let args = [arr(&[4, 3], 3), arr(&[3, 3], 4)];
    assert_eq!(eval(&g, &args).unwrap(), eval(&value_and_grad(&plain, &[0, 1]).unwrap(), &args).unwrap());
    assert_eq!(eval(&fenced, &args).unwrap(), eval(&plain, &args).unwrap());
}
