//! Every primitive's lowered program, run on the CPU plugin, against `graph::eval` (the
//! plain-Rust reference evaluator): a second oracle for lowering, independent of XLA. The
//! table must cover every primitive (parameters aside; rng_bit_generator's bits are
//! implementation-defined, so only its shape is checked).
use anyhow::Result;
use graph::{DType, DotDims, Tensor, TensorType};
use ndarray::{ArrayD, IxDyn};
use runtime::{Client, HostArray, PluginSpec};

struct Case {
    prim: &'static str,
    inputs: Vec<(DType, Vec<i64>, Vec<f64>)>,
    build: fn(&[Tensor]) -> Tensor,
}

fn lcg(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 11) as f64 / (1u64 << 53) as f64)
        })
        .collect()
}

fn f(dims: &[i64], seed: u64) -> (DType, Vec<i64>, Vec<f64>) {
    (DType::F64, dims.to_vec(), lcg(dims.iter().product::<i64>() as usize, seed, -2.0, 2.0))
}

fn pos(dims: &[i64], seed: u64) -> (DType, Vec<i64>, Vec<f64>) {
    (DType::F64, dims.to_vec(), lcg(dims.iter().product::<i64>() as usize, seed, 0.25, 3.0))
}

fn int(dtype: DType, dims: &[i64], v: &[i64]) -> (DType, Vec<i64>, Vec<f64>) {
    (dtype, dims.to_vec(), v.iter().map(|&x| x as f64).collect())
}

fn case(prim: &'static str, inputs: Vec<(DType, Vec<i64>, Vec<f64>)>, build: fn(&[Tensor]) -> Tensor) -> Case {
    Case { prim, inputs, build }
}

fn scanned(x: &[Tensor], reverse: bool) -> Tensor {
    let count = x[0].tracer().scalar(DType::S32, 0.0);
    let opts = graph::ScanOptions { reverse, remat: graph::Remat::None };
    let (c, ys) = graph::scan("step", &[x[0].clone(), count], &[x[1].clone()], &[x[2].clone()], opts, |c, xs, k| {
        let h = (c[0].matmul(&k[0]) * 0.5 + &xs[0]).tanh();
        (vec![h.clone(), &c[1] + 1.0], vec![&h * &xs[0]])
    })
    .expect("a valid scan");
    &c[0] + &ys[0].sum(&[0]) + c[1].convert(DType::F64)
}

fn table() -> Vec<Case> {
    let a = || f(&[2, 3], 1);
    let b = || f(&[2, 3], 2);
    let ints = |v: &[i64]| int(DType::S32, &[2, 3], v);
    vec![
        case("constant", vec![a()], |x| &x[0] + &x[0].tracer().constant(&x[0].ty(), vec![1.0, -2.0, 3.5, 0.0, 1e-3, -7.25])),
        case("iota", vec![a()], |x| &x[0] + &x[0].tracer().iota(&x[0].ty(), 1)),
        case("neg", vec![a()], |x| -&x[0]),
        case("exp", vec![a()], |x| x[0].exp()),
        case("log", vec![pos(&[2, 3], 3)], |x| x[0].log()),
        case("sqrt", vec![pos(&[2, 3], 4)], |x| x[0].sqrt()),
        case("rsqrt", vec![pos(&[2, 3], 5)], |x| x[0].rsqrt()),
        case("tanh", vec![a()], |x| x[0].tanh()),
        case("logistic", vec![a()], |x| x[0].logistic()),
        case("abs", vec![a()], |x| x[0].abs()),
        case("sign", vec![ints(&[-3, 0, 5, -1, 2, 0])], |x| x[0].sign()),
        case("sin", vec![a()], |x| x[0].sin()),
        case("cos", vec![a()], |x| x[0].cos()),
        case("convert", vec![a()], |x| x[0].convert(DType::F32).convert(DType::S32)),
        case("bitcast_convert", vec![int(DType::U32, &[2], &[0x3f80_0000, 0x4049_0fdb])], |x| x[0].bitcast(DType::F32)),
        case("stop_gradient", vec![a()], |x| x[0].stop_gradient() * 2.0),
        case("add", vec![a(), b()], |x| &x[0] + &x[1]),
        case("sub", vec![a(), b()], |x| &x[0] - &x[1]),
        case("mul", vec![a(), b()], |x| &x[0] * &x[1]),
        case("div", vec![a(), pos(&[2, 3], 6)], |x| &x[0] / &x[1]),
        case("pow", vec![pos(&[2, 3], 7), a()], |x| x[0].pow(&x[1])),
        case("max", vec![a(), b()], |x| x[0].max(&x[1])),
        case("min", vec![a(), b()], |x| x[0].min(&x[1])),
        case("and", vec![ints(&[12, 7, -1, 0, 5, 3]), ints(&[10, 3, 6, 9, -8, 1])], |x| x[0].and(&x[1])),
        case("or", vec![ints(&[12, 7, -1, 0, 5, 3]), ints(&[10, 3, 6, 9, -8, 1])], |x| x[0].or(&x[1])),
        case("shift_right_logical", vec![int(DType::U32, &[3], &[0xffff_ffff, 1024, 7])], |x| {
            x[0].shift_right_logical(&x[0].tracer().constant_int(&TensorType::new(DType::U32, &[3]), vec![4, 3, 0]))
        }),
        case("compare", vec![a(), b()], |x| x[0].lt(&x[1]).convert(DType::F64) + x[0].eq(&x[0]).convert(DType::F64)),
        case("select", vec![a(), b()], |x| Tensor::select(&x[0].gt(&x[1]), &x[0], &(&x[1] * 3.0))),
        case("dot_general", vec![f(&[2, 3, 4], 8), f(&[2, 4, 5], 9)], |x| {
            x[0].dot_general(&x[1], &DotDims { lhs_batch: vec![0], rhs_batch: vec![0], lhs_contract: vec![2], rhs_contract: vec![1] })
        }),
        case("broadcast_in_dim", vec![f(&[3, 1], 10)], |x| x[0].broadcast_in_dim(&[2, 3, 4], &[1, 2])),
        case("reshape", vec![a()], |x| x[0].reshape(&[3, 2])),
        case("transpose", vec![f(&[2, 3, 4], 11)], |x| x[0].transpose(&[2, 0, 1])),
        case("slice", vec![f(&[4, 5], 12)], |x| x[0].slice(&[1, 0], &[4, 5], &[2, 2])),
        case("dynamic_slice", vec![f(&[4, 3], 13), int(DType::S32, &[], &[3]), int(DType::S32, &[], &[-1])], |x| {
            x[0].dynamic_slice(&[x[1].clone(), x[2].clone()], &[2, 2]) // clamped to fit
        }),
        case("dynamic_update_slice", vec![f(&[4, 3], 14), f(&[2, 2], 15), int(DType::S32, &[], &[1]), int(DType::S32, &[], &[5])], |x| {
            x[0].dynamic_update_slice(&x[1], &[x[2].clone(), x[3].clone()])
        }),
        case("concatenate", vec![a(), f(&[2, 2], 16)], |x| x[0].concat(&[&x[1]], 1)),
        case("pad", vec![a(), f(&[], 17)], |x| x[0].pad(&x[1], &[1, 0], &[0, 2], &[1, 1])),
        case("reduce_sum", vec![f(&[2, 3, 4], 18)], |x| x[0].sum(&[0, 2])),
        case("reduce_max", vec![f(&[2, 3, 4], 19)], |x| x[0].max_over(&[1])),
        case("optimization_barrier", vec![a(), a()], |x| x[0].barrier(&[&x[1]]).exp() + &x[1]),
        case("cotangent_barrier", vec![a()], |x| x[0].cotangent_barrier().exp() * &x[0]),
        // A loop carrying a matrix and a step count, over stacked inputs with an invariant
        // weight; run backwards, reading a stacked output (scan_result) and the final carry.
        case("scan", vec![a(), f(&[4, 2, 3], 7), f(&[3, 3], 8)], |x| scanned(x, true)),
        case("scan_result", vec![a(), f(&[4, 2, 3], 9), f(&[3, 3], 10)], |x| scanned(x, false)),
        case("sharding_constraint", vec![a()], |x| x[0].with_sharding_constraint(&runtime::PartitionSpec::new(&[&["data"], &[]])).exp()),
        case("gather", vec![f(&[5, 3], 20), int(DType::S32, &[2, 2], &[4, 0, 7, -1])], |x| x[0].gather(&x[1])),
        case("scatter_add", vec![f(&[4, 3], 21), int(DType::S32, &[3], &[1, 9, 1]), f(&[3, 3], 22)], |x| x[0].scatter_add(&x[1], &x[2])),
        case("rng_bit_generator", vec![int(DType::U64, &[2], &[1, 2])], |x| x[0].random_bits(&[3, 4])),
    ]
}

fn host(dtype: DType, dims: &[i64], v: &[f64]) -> HostArray {
    match dtype {
        DType::F64 => HostArray::from_vec(dims, v.to_vec()),
        DType::S32 => HostArray::from_vec(dims, v.iter().map(|&x| x as i32).collect()),
        DType::U32 => HostArray::from_vec(dims, v.iter().map(|&x| x as u32).collect()),
        DType::U64 => HostArray::from_vec(dims, v.iter().map(|&x| x as u64).collect()),
        other => panic!("no host inputs of {other} in this table"),
    }
    .unwrap()
}

#[test]
fn every_primitive_lowers_to_what_the_evaluator_computes() -> Result<()> {
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
    for c in table() {
        let types: Vec<(String, TensorType)> =
            c.inputs.iter().enumerate().map(|(i, (d, dims, _))| (format!("x{i}"), TensorType::new(*d, dims))).collect();
        let named: Vec<(&str, TensorType)> = types.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let build = c.build;
        let function = graph::trace(c.prim, &named, |x| vec![build(x)])?;
        assert!(function.count(c.prim) > 0, "the case for {} does not use it", c.prim);
        let args: Vec<HostArray> = c.inputs.iter().map(|(d, dims, v)| host(*d, dims, v)).collect();
        let got = jit::flat(c.prim, &client, move |x: &[Tensor]| vec![build(x)]).call_flat(&args)?.remove(0);
        if c.prim == "rng_bit_generator" {
            assert_eq!(got.dims(), &[3, 4]);
            let err = graph::eval(&function, &[ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0, 2.0])?]).unwrap_err();
            assert!(err.to_string().contains("implementation-defined"), "{err}");
            continue;
        }
        let inputs: Vec<ArrayD<f64>> = c
            .inputs
            .iter()
            .map(|(_, dims, v)| ArrayD::from_shape_vec(IxDyn(&dims.iter().map(|&d| d as usize).collect::<Vec<_>>()), v.clone()).unwrap())
            .collect();
        let want = graph::eval(&function, &inputs)?.remove(0);
        assert_eq!(got.dims().iter().map(|&d| d as usize).collect::<Vec<_>>(), want.shape(), "{}", c.prim);
        for (i, (g, w)) in got.to_f64_vec().iter().zip(want.iter()).enumerate() {
            assert!((g - w).abs() <= 1e-12 * w.abs().max(1.0), "{}[{i}]: the plugin gives {g}, the evaluator {w}", c.prim);
        }
    }
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

#[test]
fn the_table_covers_every_primitive() {
    let covered: Vec<&str> = table().iter().map(|c| c.prim).collect();
    let missing: Vec<&str> = graph::all_primitives().iter().map(|p| p.name()).filter(|n| *n != "param" && !covered.contains(n)).collect();
    assert!(missing.is_empty(), "no lowering check for: {missing:?}");
}
