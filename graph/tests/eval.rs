//! The reference evaluator against hand-computed values, a few cases per family.
use graph::{eval, trace, DType, DotDims, Error, Tensor, TensorType};
use ndarray::ArrayD;

fn arr(dims: &[usize], v: &[f64]) -> ArrayD<f64> {
    ArrayD::from_shape_vec(dims, v.to_vec()).unwrap()
}

fn ty(dtype: DType, dims: &[i64]) -> TensorType {
    TensorType::new(dtype, dims)
}

/// Traces `build` over parameters of types `types` and evaluates it at `args`.
fn run(types: &[TensorType], args: &[ArrayD<f64>], build: impl FnOnce(&[Tensor]) -> Vec<Tensor>) -> Vec<ArrayD<f64>> {
    let names: Vec<String> = (0..types.len()).map(|i| format!("x{i}")).collect();
    let params: Vec<(&str, TensorType)> = names.iter().map(|n| n.as_str()).zip(types.iter().cloned()).collect();
    let f = trace("t", &params, build).unwrap();
    eval(&f, args).unwrap()
}

/// Evaluates a one-output function of one parameter.
fn run1(t: TensorType, x: ArrayD<f64>, build: impl FnOnce(&Tensor) -> Tensor) -> ArrayD<f64> {
    run(&[t], &[x], |a| vec![build(&a[0])]).remove(0)
}

fn flat(a: &ArrayD<f64>) -> Vec<f64> {
    a.iter().copied().collect()
}

#[test]
fn dot_general_with_batch_dims_anywhere() {
    // lhs [b=2, m=1, k=2]; rhs [k=2, b=2, n=1]: out[b] = sum_k lhs[b, 0, k] * rhs[k, b, 0].
    let dims = DotDims { lhs_batch: vec![0], rhs_batch: vec![1], lhs_contract: vec![2], rhs_contract: vec![0] };
    let out = run(
        &[ty(DType::F64, &[2, 1, 2]), ty(DType::F64, &[2, 2, 1])],
        &[arr(&[2, 1, 2], &[1.0, 2.0, 3.0, 4.0]), arr(&[2, 2, 1], &[5.0, 6.0, 7.0, 8.0])],
        |x| vec![x[0].dot_general(&x[1], &dims)],
    );
    assert_eq!(out[0].shape(), [2, 1, 1]);
    assert_eq!(flat(&out[0]), [1.0 * 5.0 + 2.0 * 7.0, 3.0 * 6.0 + 4.0 * 8.0]);
}

#[test]
fn matmul_of_two_matrices() {
    let out = run(
        &[ty(DType::F32, &[2, 3]), ty(DType::F32, &[3, 2])],
        &[arr(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), arr(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0])],
        |x| vec![x[0].matmul(&x[1])],
    );
    assert_eq!(flat(&out[0]), [4.0, 5.0, 10.0, 11.0]);
}

#[test]
fn gather_clamps_ids_and_scatter_add_skips_them() {
    let table = arr(&[3, 2], &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0]);
    let ids = arr(&[4], &[2.0, -1.0, 5.0, 1.0]);
    let g = run(&[ty(DType::F32, &[3, 2]), ty(DType::S32, &[4])], &[table, ids.clone()], |x| vec![x[0].gather(&x[1])]);
    assert_eq!(g[0].shape(), [4, 2]);
    assert_eq!(flat(&g[0]), [20.0, 21.0, 0.0, 1.0, 20.0, 21.0, 10.0, 11.0]);

    let upd = arr(&[4, 2], &[1.0, 2.0, 100.0, 100.0, 100.0, 100.0, 3.0, 4.0]);
    let ids = arr(&[4], &[1.0, -1.0, 3.0, 1.0]);
    let s = run(&[ty(DType::F32, &[3, 2]), ty(DType::S32, &[4]), ty(DType::F32, &[4, 2])], &[ArrayD::zeros(vec![3, 2]), ids, upd], |x| {
        vec![x[0].scatter_add(&x[1], &x[2])]
    });
    assert_eq!(flat(&s[0]), [0.0, 0.0, 4.0, 6.0, 0.0, 0.0]);
}

#[test]
fn pad_low_high_and_interior() {
    let out = run(&[ty(DType::F32, &[2]), ty(DType::F32, &[])], &[arr(&[2], &[1.0, 2.0]), arr(&[], &[9.0])], |x| {
        vec![x[0].pad(&x[1], &[1], &[2], &[2])]
    });
    assert_eq!(flat(&out[0]), [9.0, 1.0, 9.0, 9.0, 2.0, 9.0, 9.0]);
    // 2-D: interior padding only between rows.
    let out = run(&[ty(DType::F32, &[2, 2]), ty(DType::F32, &[])], &[arr(&[2, 2], &[1.0, 2.0, 3.0, 4.0]), arr(&[], &[0.0])], |x| {
        vec![x[0].pad(&x[1], &[0, 0], &[0, 1], &[1, 0])]
    });
    assert_eq!(out[0].shape(), [3, 3]);
    assert_eq!(flat(&out[0]), [1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0, 0.0]);
}

#[test]
fn dynamic_slice_and_update_clamp_their_starts() {
    let x = arr(&[4], &[0.0, 1.0, 2.0, 3.0]);
    let s32 = ty(DType::S32, &[]);
    let types = [ty(DType::F32, &[4]), s32.clone()];
    let at = |i: f64| run(&types, &[x.clone(), arr(&[], &[i])], |a| vec![a[0].dynamic_slice(&[a[1].clone()], &[2])]);
    assert_eq!(flat(&at(1.0)[0]), [1.0, 2.0]);
    assert_eq!(flat(&at(3.0)[0]), [2.0, 3.0]);
    assert_eq!(flat(&at(-5.0)[0]), [0.0, 1.0]);
    let types = [ty(DType::F32, &[4]), ty(DType::F32, &[2]), s32];
    let out = run(&types, &[x, arr(&[2], &[7.0, 8.0]), arr(&[], &[10.0])], |a| vec![a[0].dynamic_update_slice(&a[1], &[a[2].clone()])]);
    assert_eq!(flat(&out[0]), [0.0, 1.0, 7.0, 8.0]);
}

#[test]
fn convert_truncates_and_saturates_to_integers() {
    let x = arr(&[5], &[-1.7, 1.7, 2.5, -0.5, 3e9]);
    let out = run1(ty(DType::F32, &[5]), x.clone(), |t| t.convert(DType::S32));
    assert_eq!(flat(&out), [-1.0, 1.0, 2.0, 0.0, 2147483647.0]);
    let out = run1(ty(DType::F32, &[5]), x, |t| t.convert(DType::Pred));
    assert_eq!(flat(&out), [1.0; 5]);
    // Integer to narrower integer wraps around.
    let out = run1(ty(DType::S64, &[2]), arr(&[2], &[4294967297.0, -1.0]), |t| t.convert(DType::U32));
    assert_eq!(flat(&out), [1.0, 4294967295.0]);
}

#[test]
fn reduce_max_and_sum_over_axes() {
    let x = arr(&[2, 3], &[1.0, 5.0, 3.0, -2.0, -1.0, -7.0]);
    assert_eq!(flat(&run1(ty(DType::F32, &[2, 3]), x.clone(), |t| t.max_over(&[1]))), [5.0, -1.0]);
    assert_eq!(flat(&run1(ty(DType::F32, &[2, 3]), x.clone(), |t| t.max_over(&[0]))), [1.0, 5.0, 3.0]);
    assert_eq!(flat(&run1(ty(DType::S32, &[2, 3]), x.clone(), |t| t.max_over(&[0, 1]))), [5.0]);
    assert_eq!(flat(&run1(ty(DType::F32, &[2, 3]), x, |t| t.sum(&[0]))), [-1.0, 4.0, -4.0]);
    // An empty reduction gives the initial value.
    let out = run1(ty(DType::F32, &[2, 0]), ArrayD::zeros(vec![2, 0]), |t| t.max_over(&[1]));
    assert_eq!(flat(&out), [f64::NEG_INFINITY; 2]);
}

#[test]
fn bitcast_reinterprets_bits() {
    let u32s = ty(DType::U32, &[]);
    let one = run1(u32s.clone(), arr(&[], &[0x3f80_0000 as f64]), |t| t.bitcast(DType::F32));
    assert_eq!(flat(&one), [1.0]);
    let back = run1(ty(DType::F32, &[2]), arr(&[2], &[1.0, -0.0]), |t| t.bitcast(DType::S32));
    assert_eq!(flat(&back), [0x3f80_0000 as f64, i32::MIN as f64]);
    let minus_one = run1(u32s, arr(&[], &[u32::MAX as f64]), |t| t.bitcast(DType::S32));
    assert_eq!(flat(&minus_one), [-1.0]);
}

#[test]
fn float_results_are_rounded_to_their_dtype() {
    let out = run1(ty(DType::F32, &[]), arr(&[], &[0.1]), |t| t.clone());
    assert_eq!(flat(&out), [0.1f32 as f64]);
    let out = run1(ty(DType::F32, &[]), arr(&[], &[0.1]), |t| t + 0.2);
    assert_eq!(flat(&out), [(0.1f32 + 0.2f32) as f64]);
    let out = run1(ty(DType::F64, &[]), arr(&[], &[0.1]), |t| t + 0.2);
    assert_eq!(flat(&out), [0.1 + 0.2]);
    // 1 + 2^-9 is below bf16's resolution at 1 (2^-7).
    let out = run1(ty(DType::F32, &[]), arr(&[], &[1.0 + 1.0 / 512.0]), |t| t.convert(DType::Bf16));
    assert_eq!(flat(&out), [1.0]);
}

#[test]
fn integer_division_shifts_and_bit_ops() {
    let s32 = ty(DType::S32, &[4]);
    let out = run(&[s32.clone(), s32.clone()], &[arr(&[4], &[-7.0, 7.0, 5.0, i32::MIN as f64]), arr(&[4], &[2.0, -2.0, 0.0, -1.0])], |x| {
        vec![&x[0] / &x[1]]
    });
    assert_eq!(flat(&out[0]), [-3.0, -3.0, -1.0, i32::MIN as f64]);
    let out = run(&[s32.clone(), s32], &[arr(&[4], &[-1.0, 8.0, 12.0, -8.0]), arr(&[4], &[28.0, 1.0, 40.0, 0.0])], |x| {
        vec![x[0].shift_right_logical(&x[1]), x[0].and(&x[1]), x[0].or(&x[1])]
    });
    assert_eq!(flat(&out[0]), [15.0, 4.0, 0.0, -8.0]);
    assert_eq!(flat(&out[1]), [28.0, 0.0, 8.0, 0.0]);
    assert_eq!(flat(&out[2]), [-1.0, 9.0, 44.0, -8.0]);
    let out = run(&[ty(DType::U32, &[])], &[arr(&[], &[2147483648.0])], |x| {
        vec![x[0].shift_right_logical(&x[0].tracer().constant_int(&ty(DType::U32, &[]), vec![31]))]
    });
    assert_eq!(flat(&out[0]), [1.0]);
    // Integer arithmetic wraps around.
    let out = run1(ty(DType::S32, &[]), arr(&[], &[i32::MAX as f64]), |t| t + 1.0);
    assert_eq!(flat(&out), [i32::MIN as f64]);
}

#[test]
fn compare_select_iota_and_movement() {
    let x = arr(&[2, 3], &[1.0, 5.0, 3.0, -2.0, -1.0, -7.0]);
    let f32s = ty(DType::F32, &[2, 3]);
    let out = run1(f32s.clone(), x.clone(), |t| Tensor::select(&t.gt(&t.scalar_like(0.0)), t, &t.scalar_like(0.0)));
    assert_eq!(flat(&out), [1.0, 5.0, 3.0, 0.0, 0.0, 0.0]);
    let out = run1(f32s.clone(), x.clone(), |t| t.tracer().iota(&ty(DType::S32, &[2, 3]), 1));
    assert_eq!(flat(&out), [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
    assert_eq!(flat(&run1(f32s.clone(), x.clone(), |t| t.transpose(&[1, 0]))), [1.0, -2.0, 5.0, -1.0, 3.0, -7.0]);
    assert_eq!(flat(&run1(f32s.clone(), x.clone(), |t| t.slice(&[0, 0], &[2, 3], &[1, 2]))), [1.0, 3.0, -2.0, -7.0]);
    assert_eq!(flat(&run1(f32s.clone(), x.clone(), |t| t.reshape(&[3, 2]))), flat(&x));
    let out = run1(f32s.clone(), x.clone(), |t| t.concat(&[&t.slice_axis(1, 0, 1)], 1));
    assert_eq!(flat(&out), [1.0, 5.0, 3.0, 1.0, -2.0, -1.0, -7.0, -2.0]);
    let out = run1(ty(DType::F32, &[2, 1]), arr(&[2, 1], &[1.0, 2.0]), |t| t.broadcast_in_dim(&[3, 2, 2], &[1, 2]));
    assert_eq!(flat(&out), [1.0, 1.0, 2.0, 2.0].repeat(3));
    let out = run1(f32s, x, |t| t.sign());
    assert_eq!(flat(&out), [1.0, 1.0, 1.0, -1.0, -1.0, -1.0]);
}

#[test]
fn rng_bit_generator_has_no_reference() {
    let f = trace("rng", &[("key", ty(DType::U64, &[2]))], |x| vec![x[0].random_bits(&[3])]).unwrap();
    let err = eval(&f, &[arr(&[2], &[1.0, 2.0])]).unwrap_err();
    assert!(matches!(err, Error::Eval { op: "rng_bit_generator", .. }), "{err}");
    assert!(err.to_string().contains("implementation-defined"), "{err}");
}

#[test]
fn argument_errors_name_the_parameter() {
    let f = trace("f", &[("x", ty(DType::F32, &[2])), ("w", ty(DType::F32, &[3]))], |x| vec![x[1].sum_all()]).unwrap();
    let err = eval(&f, &[arr(&[2], &[0.0, 0.0])]).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)) && err.to_string().contains("x, w"), "{err}");
    let err = eval(&f, &[arr(&[2], &[0.0, 0.0]), arr(&[2], &[0.0, 0.0])]).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)) && err.to_string().contains("argument 1 (w: f32[3])"), "{err}");
}

#[test]
fn malformed_functions_are_errors_not_panics() {
    let good = trace("f", &[("x", ty(DType::F32, &[4]))], |x| vec![x[0].dynamic_slice(&[x[0].tracer().index(1)], &[2]).exp()]).unwrap();
    let x = [arr(&[4], &[0.0; 4])];
    assert!(eval(&good, &x).is_ok());
    let slice = good.nodes.iter().position(|n| n.prim.name() == "dynamic_slice").unwrap();
    let mut f = good.clone();
    f.nodes[slice].inputs.clear();
    assert!(matches!(eval(&f, &x), Err(Error::Eval { op: "dynamic_slice", .. })));
    let mut f = good.clone();
    f.nodes[slice].inputs[0] = slice + 1;
    assert!(matches!(eval(&f, &x), Err(Error::Eval { .. })));
    let mut f = good.clone();
    f.nodes[slice].ty = ty(DType::F32, &[3]);
    assert!(matches!(eval(&f, &x), Err(Error::Eval { op: "dynamic_slice", .. })));
    let mut f = good;
    f.outputs[0].id = 999;
    assert!(matches!(eval(&f, &x), Err(Error::Invalid(_))));
}
