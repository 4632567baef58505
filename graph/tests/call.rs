//! Functions calling functions, trees of named arguments, and the errors of both; no plugin.
use graph::{grad, trace, trace_tree, value_and_grad, DType, Error, TensorType, Tracer, Tree};

fn f32t(dims: &[i64]) -> TensorType {
    TensorType::new(DType::F32, dims)
}

#[test]
fn a_called_function_is_inlined_with_its_own_locations() {
    let inner = trace("inner", &[("x", f32t(&[3]))], |a| vec![a[0].exp().sum_all(), a[0].tanh()]).unwrap();
    let outer = trace("outer", &[("y", f32t(&[3]))], |a| {
        let out = inner.call(&[&a[0] * 2.0]);
        vec![&out[0] + 1.0, out[1].clone()]
    })
    .unwrap();
    assert_eq!(outer.count("exp"), 1);
    assert_eq!(outer.count("tanh"), 1);
    assert_eq!(outer.output_types(), vec![TensorType::scalar(DType::F32), f32t(&[3])]);
    let text = outer.to_stablehlo().unwrap();
    let inner_line = line!() - 10;
    assert!(text.contains(&format!("graph/tests/call.rs\":{inner_line}:")), "{text}");
}

#[test]
fn grad_of_a_function_that_calls_functions_and_grad_inside_a_trace() {
    // loss(w) = sum(tanh(w * x)); its gradient traced as a function, then called inside
    // another trace, then differentiated again (a Hessian-vector-like second derivative).
    let loss = trace("loss", &[("w", f32t(&[2])), ("x", f32t(&[2]))], |a| vec![(&a[0] * &a[1]).tanh().sum_all()]).unwrap();
    let dloss = grad(&loss, &[0]).unwrap();
    assert_eq!(dloss.outputs[0].name, "grad.w");
    let wrapped = trace("wrapped", &[("w", f32t(&[2])), ("x", f32t(&[2]))], |a| {
        let g = dloss.call(&[a[0].clone(), a[1].clone()]);
        vec![g[0].sum_all()]
    })
    .unwrap();
    let second = grad(&wrapped, &[0]).unwrap();
    assert_eq!(second.outputs.len(), 1);
    // d/dw_i sum_j x_j (1 - tanh^2(w_j x_j)) = -2 x_i^2 tanh(w_i x_i) (1 - tanh^2(w_i x_i))
    let f64s = |f: &[f32]| ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[2]), f.iter().map(|&v| v as f64).collect()).unwrap();
    let (w, x) = ([0.3f32, -0.7], [1.5f32, 0.4]);
    let got = graph::eval(&second, &[f64s(&w), f64s(&x)]).unwrap().remove(0);
    for i in 0..2 {
        let t = ((w[i] * x[i]) as f64).tanh();
        let want = -2.0 * (x[i] as f64).powi(2) * t * (1.0 - t * t);
        assert!((got[i] - want).abs() < 1e-6, "second derivative {i}: {} vs {want}", got[i]);
    }
}

#[test]
fn bad_calls_are_trace_errors_naming_the_function() {
    let inner = trace("inner", &[("x", f32t(&[3]))], |a| vec![a[0].exp()]).unwrap();
    let err = trace("outer", &[("y", f32t(&[4]))], |a| inner.call(&[a[0].clone()])).unwrap_err();
    let line = line!() - 1;
    assert!(matches!(err, Error::Call { .. }), "{err}");
    assert_eq!(err.to_string(), format!("call of inner at graph/tests/call.rs:{line}:62: argument 0 (x) must be f32[3], got f32[4]"));
    let err = trace("outer", &[("y", f32t(&[3]))], |a| inner.call(&[a[0].clone(), a[0].clone()])).unwrap_err();
    assert!(err.to_string().contains("takes 1 arguments, got 2"), "{err}");
    // With no arguments the innermost trace is used.
    let konst = trace("konst", &[], |_| vec![Tracer::current().unwrap().scalar(DType::F32, 2.0)]).unwrap();
    let f = trace("uses", &[("y", f32t(&[]))], |a| vec![&a[0] * &konst.call(&[])[0]]).unwrap();
    assert_eq!(f.count("mul"), 1);
    assert!(Tracer::current().is_none(), "no trace is active outside trace()");
}

#[test]
fn trees_flatten_in_a_fixed_printed_order_and_name_the_program() {
    let types = Tree::from_leaves([
        ("params.layers.10.w", f32t(&[2])),
        ("params.layers.2.w", f32t(&[2])),
        ("batch.x", f32t(&[2])),
        ("step", TensorType::scalar(DType::S32)),
    ])
    .unwrap();
    assert_eq!(
        types.to_string(),
        "   0 batch.x: f32[2]\n   1 params.layers.2.w: f32[2]\n   2 params.layers.10.w: f32[2]\n   3 step: s32[]\n"
    );
    let f = trace_tree("tree", &types, |a| {
        let x = a.get("batch.x").unwrap();
        let mut out = Tree::new();
        for (path, w) in a.subtree("params").iter() {
            out.insert(format!("params.{path}"), w * x).unwrap();
        }
        out.insert("step", a.get("step").unwrap() + 1.0).unwrap();
        out
    })
    .unwrap();
    let names: Vec<&str> = f.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["batch.x", "params.layers.2.w", "params.layers.10.w", "step"]);
    let outs: Vec<&str> = f.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, ["params.layers.2.w", "params.layers.10.w", "step"]);
    assert_eq!(f.params_under("params"), vec![1, 2]);
    let g = value_and_grad(
        &trace_tree("l", &types, |a| Tree::new().with("loss", a.get("params.layers.2.w").unwrap().sum_all()).unwrap()).unwrap(),
        &[1],
    )
    .unwrap();
    assert_eq!(g.outputs[1].name, "grad.params.layers.2.w");
    // call_tree matches arguments by name.
    let h = trace_tree("h", &types, |a| f.call_tree(a)).unwrap();
    assert_eq!(h.output_tree().paths().collect::<Vec<_>>(), outs);
}

#[test]
fn shardings_and_donation_that_do_not_fit_are_errors() {
    let f = trace("f", &[("x", f32t(&[4, 2]))], |a| vec![a[0].exp()]).unwrap();
    let mesh = sharding::Mesh::parse("data=2").unwrap();
    let err = f.clone().donate_param(3).unwrap_err();
    assert!(matches!(err, Error::NoSuchParam { index: 3, count: 1, .. }), "{err}");
    let err = f.clone().shard_param(0, sharding::PartitionSpec::new(&[&["data"], &[]])).unwrap_err();
    assert!(err.to_string().contains("set a mesh"), "{err}");
    let meshed = f.clone().with_mesh(mesh.clone()).unwrap();
    let err = meshed.clone().shard_param(0, sharding::PartitionSpec::new(&[&["model"], &[]])).unwrap_err();
    assert_eq!(err.to_string(), "sharding of parameter 0 (x): axis \"model\" is not in the mesh data=2");
    let err = meshed.clone().shard_param(0, sharding::PartitionSpec::new(&[&["data"]])).unwrap_err();
    assert!(err.to_string().contains("has 1 entries"), "{err}");
    let err = meshed.shard_output(1, sharding::PartitionSpec::replicated(2)).unwrap_err();
    assert!(err.to_string().contains("no output 1"), "{err}");
}

#[test]
fn composites_on_wrong_shapes_are_trace_errors_not_panics() {
    let err = trace("r", &[("x", f32t(&[2, 3])), ("p", TensorType::new(DType::S32, &[2]))], |a| vec![a[0].rope(&a[1], 1e4)]).unwrap_err();
    assert!(err.to_string().starts_with("rope at graph/tests/call.rs:"), "{err}");
    let err = trace("n", &[("x", f32t(&[])), ("w", f32t(&[]))], |a| vec![a[0].rms_norm(&a[1], 1e-6)]).unwrap_err();
    assert!(err.to_string().contains("rms_norm"), "{err}");
    let err =
        trace("c", &[("x", f32t(&[])), ("l", TensorType::new(DType::S32, &[]))], |a| vec![a[0].cross_entropy(&a[1], None)]).unwrap_err();
    assert!(err.to_string().contains("cross_entropy"), "{err}");
}

#[test]
fn sharding_constraints_lower_to_shardy_on_a_mesh_and_to_nothing_without() {
    use sharding::{Mesh, PartitionSpec};
    let spec = PartitionSpec::new(&[&["data"], &["model"]]);
    let f = trace("c", &[("x", f32t(&[4, 8]))], |a| vec![a[0].exp().with_sharding_constraint(&spec).sum_all()]).unwrap();
    assert!(format!("{f}").contains(r#"sharding_constraint[[{"data"}, {"model"}]]"#), "{f}");
    let plain = f.to_stablehlo().unwrap();
    assert!(!plain.contains("sdy."), "{plain}");
    let meshed = f.clone().with_mesh(Mesh::parse("data=2,model=4").unwrap()).unwrap().to_stablehlo().unwrap();
    assert!(
        meshed.contains(r#""sdy.sharding_constraint"(%0) {sharding = #sdy.sharding<@mesh, [{"data"}, {"model"}]>} : (tensor<4x8xf32>) -> tensor<4x8xf32>"#),
        "{meshed}"
    );
    // The cotangent gets the same constraint.
    let g = value_and_grad(&f, &[0]).unwrap();
    assert_eq!(g.count("sharding_constraint"), 2);
    // An axis the mesh lacks is a lowering error naming the op's location.
    let err = f.clone().with_mesh(Mesh::parse("data=8").unwrap()).unwrap().to_stablehlo().unwrap_err();
    assert!(err.to_string().starts_with("sharding of sharding_constraint at graph/tests/call.rs:"), "{err}");
    assert!(err.to_string().contains(r#"axis "model" is not in the mesh data=8"#), "{err}");
    let err = trace("c", &[("x", f32t(&[4]))], |a| vec![a[0].with_sharding_constraint(&spec)]).unwrap_err();
    assert!(err.to_string().contains("has 2 entries for an operand of rank 1"), "{err}");
    let x = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[4, 8]), (0..32).map(|v| v as f64 / 32.0).collect()).unwrap();
    let want: f64 = x.iter().map(|v| (*v as f32 as f64).exp() as f32 as f64).sum();
    let got = graph::eval(&f, &[x]).unwrap()[0].iter().next().copied().unwrap();
    assert!((got - want).abs() < 1e-4, "{got} vs {want}");
}
