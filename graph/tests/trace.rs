//! Tracing, printing and lowering without a plugin: golden snapshots of the printed graph
//! and of the StableHLO text (regenerate with UPDATE_GOLDEN=1 and review the diff), shape
//! errors that name the op, the input types and the caller's line, and autodiff errors.
use graph::{trace, value_and_grad, DType, Error, Function, LowerOptions, TensorType};
use std::path::PathBuf;

fn f32t(dims: &[i64]) -> TensorType {
    TensorType::new(DType::F32, dims)
}

/// Compares `text` with tests/golden/NAME, or rewrites the file when UPDATE_GOLDEN is set.
fn golden(name: &str, text: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert_eq!(text, want, "{name} changed; rerun with UPDATE_GOLDEN=1 and review the diff");
}

/// StableHLO without source locations: golden files must not change when a test moves.
fn stable(f: &Function) -> String {
    f.to_stablehlo_with(LowerOptions { locations: false }).unwrap()
}

fn mlp() -> Function {
    trace("mlp", &[("x", f32t(&[4, 3])), ("w1", f32t(&[3, 5])), ("w2", f32t(&[5, 2])), ("y", f32t(&[4, 2]))], |a| {
        let h = a[0].matmul(&a[1]).tanh();
        let out = h.matmul(&a[2]);
        let err = &out - &a[3];
        vec![(&err * &err).mean(&[0, 1])]
    })
    .unwrap()
    .rename_outputs(&["loss"])
}

#[test]
fn printed_graph_and_stablehlo_of_an_mlp_and_its_gradient() {
    let f = mlp();
    golden("mlp.graph.txt", &format!("{f}\n"));
    golden("mlp.stablehlo.mlir", &stable(&f));
    let g = value_and_grad(&f, &[1, 2]).unwrap();
    assert_eq!(g.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), ["loss", "grad.w1", "grad.w2"]);
    golden("mlp_value_and_grad.graph.txt", &format!("{g}\n"));
    golden("mlp_value_and_grad.stablehlo.mlir", &stable(&g));
}

#[test]
fn composites_lower_to_primitives() {
    let f = trace("block", &[("x", f32t(&[1, 4, 2, 8])), ("w", f32t(&[8])), ("pos", TensorType::new(DType::S32, &[1, 4]))], |a| {
        let x = a[0].rms_norm(&a[1].broadcast_to(&[8]), 1e-6).rope(&a[2], 10000.0).gelu_tanh();
        let mask = x.tracer().causal_mask(4, 4, 0);
        vec![x.softmax(3), mask]
    })
    .unwrap();
    golden("block.graph.txt", &format!("{f}\n"));
    golden("block.stablehlo.mlir", &stable(&f));
}

#[test]
fn ops_carry_the_callers_source_location() {
    let f = trace("loc", &[("x", f32t(&[2]))], |a| vec![a[0].exp()]).unwrap();
    let line = line!() - 1;
    let text = f.to_stablehlo().unwrap();
    let want = format!("loc(\"graph/tests/trace.rs\":{line}:");
    assert!(text.contains(&want), "{want} not in\n{text}");
    // Backward ops point at the forward op they differentiate.
    let f = trace("loc", &[("x", f32t(&[2]))], |a| vec![a[0].tanh().sum_all()]).unwrap();
    let line = line!() - 1;
    let g = value_and_grad(&f, &[0]).unwrap();
    let at_line = g.to_stablehlo().unwrap().matches(&format!("trace.rs\":{line}:")).count();
    assert!(at_line >= 5, "forward and backward ops should all point at line {line}");
}

#[test]
fn shape_errors_name_the_op_the_inputs_and_the_line() {
    let err = trace("bad", &[("a", f32t(&[4, 3])), ("b", f32t(&[4, 2]))], |a| vec![a[0].matmul(&a[1])]).unwrap_err();
    let line = line!() - 1;
    assert_eq!(
        err.to_string(),
        format!(
            "dot_general at graph/tests/trace.rs:{line}:89: lhs dimension 1 (size 3) does not match rhs \
             dimension 0 (size 4) (inputs: f32[4,3], f32[4,2])"
        )
    );
    // The first error wins even if tracing goes on.
    let err = trace("bad", &[("a", f32t(&[4, 3]))], |a| {
        let r = a[0].reshape(&[5]);
        vec![r.exp().transpose(&[1, 0])]
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("reshape at graph/tests/trace.rs:"), "{err}");
    assert!(err.to_string().contains("cannot reshape 12 elements to [5]"), "{err}");
    let err = trace("bad", &[("a", f32t(&[2]))], |a| vec![a[0].add(&a[0].convert(DType::F64))]).unwrap_err();
    assert!(err.to_string().contains("add at"), "{err}");
    assert!(err.to_string().contains("(inputs: f32[2], f64[2])"), "{err}");
    let err = trace("bad", &[("a", f32t(&[2, 3]))], |a| vec![a[0].add(&a[0].transpose(&[1, 0]))]).unwrap_err();
    assert!(err.to_string().contains("(inputs: f32[2,3], f32[3,2])"), "{err}");
    let err = trace("bad", &[("ids", TensorType::new(DType::S32, &[2]))], |a| vec![a[0].exp()]).unwrap_err();
    assert!(err.to_string().contains("needs a float operand, got s32"), "{err}");
}

#[test]
fn numpy_broadcasting_and_scalars() {
    let f = trace("bc", &[("x", f32t(&[2, 3])), ("b", f32t(&[3]))], |a| vec![(&a[0] + &a[1]) * 2.0]).unwrap();
    assert_eq!(f.output_types(), vec![f32t(&[2, 3])]);
    assert_eq!(f.count("broadcast_in_dim"), 2);
}

#[test]
fn autodiff_errors_are_clear() {
    let f = mlp();
    let err = value_and_grad(&f, &[7]).unwrap_err();
    assert_eq!(err.to_string(), "mlp has no parameter 7 (it has 4)");
    assert!(matches!(err, Error::NoSuchParam { index: 7, count: 4, .. }));
    let g = trace("vec", &[("x", f32t(&[3]))], |a| vec![a[0].exp()]).unwrap();
    let err = value_and_grad(&g, &[0]).unwrap_err();
    assert_eq!(err.to_string(), "vec: output 0 (out0) must be a float scalar to take its gradient, it is f32[3]");
    let h = trace("ints", &[("i", TensorType::new(DType::S32, &[3]))], |a| vec![a[0].sum_all()]).unwrap();
    let err = value_and_grad(&h, &[0]).unwrap_err();
    assert_eq!(err.to_string(), "ints: cannot differentiate with respect to parameter 0 (i: s32[3]): not a float");
    assert!(matches!(err, Error::Invalid(_)));
}

#[test]
fn stop_gradient_blocks_and_unused_params_get_zeros() {
    let f = trace("sg", &[("x", f32t(&[3])), ("unused", f32t(&[2]))], |a| vec![(a[0].stop_gradient() * &a[0]).sum_all()]).unwrap();
    let g = value_and_grad(&f, &[0, 1]).unwrap();
    // d/dx (sg(x) * x) = sg(x): one multiply by the cotangent, no second term.
    let text = format!("{g}");
    assert_eq!(g.outputs.len(), 3);
    assert!(text.contains("grad.unused="), "{text}");
}

#[test]
fn donated_parameters_are_marked_for_the_compiler() {
    let f = mlp().donate_param(1).unwrap();
    let text = f.to_stablehlo().unwrap();
    assert!(text.contains(r#"%arg1: tensor<3x5xf32> {mhlo.frontend_attributes = {name = "w1"}, jax.buffer_donor = true}"#), "{text}");
    assert_eq!(text.matches("jax.buffer_donor").count(), 1);
}

#[test]
fn complex_values_are_refused_by_the_tracer() {
    // DType has c64/c128 for programs from elsewhere (JAX's linear algebra); traced ones
    // cannot hold them, as a parameter or as the result of an op.
    let c64 = TensorType::new(DType::C64, &[2]);
    let err = trace("p", &[("z", c64)], |a| vec![a[0].clone()]).unwrap_err();
    assert!(err.to_string().contains("parameter 0 (z): c64 values are not supported by the tracer"), "{err}");
    let err = trace("c", &[("a", f32t(&[2]))], |a| vec![a[0].convert(DType::C128)]).unwrap_err();
    assert!(err.to_string().contains("c128 values are not supported by the tracer"), "{err}");
}
