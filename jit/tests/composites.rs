//! graph's composite ops (softmax, log_softmax, rms_norm, gelu, rope, causal mask,
//! cross-entropy) traced in f64, run on the CPU plugin, and compared with numpy's values
//! from fixtures/composites.py.
use anyhow::Result;
use graph::{DType, Tensor, TensorType};
use runtime::{Client, HostArray, PluginSpec};
use std::path::PathBuf;

/// A fixture .npy (f8, i4 or b1, C order, as composites.py writes them).
fn fixture(name: &str) -> HostArray {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/composites").join(format!("{name}.npy"));
    let bytes = std::fs::read(&p).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let dims: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    match npy.dtype().descr().as_str() {
        "'<f8'" => HostArray::from_vec(&dims, npy.into_vec::<f64>().unwrap()).unwrap(),
        "'<i4'" => HostArray::from_vec(&dims, npy.into_vec::<i32>().unwrap()).unwrap(),
        "'|b1'" => HostArray::from_vec(&dims, npy.into_vec::<bool>().unwrap()).unwrap(),
        other => panic!("{name}: unexpected dtype {other}"),
    }
}

/// Runs `f` on the named fixture inputs and compares output 0 with the fixture `expected`.
fn check(client: &Client, expected: &str, inputs: &[&str], f: fn(&[Tensor]) -> Tensor) -> Result<()> {
    let args: Vec<HostArray> = inputs.iter().map(|n| fixture(n)).collect();
    let jit = jit::flat(expected, client, move |a: &[Tensor]| vec![f(a)]);
    let got = &jit.call_flat(&args)?[0];
    let want = fixture(expected);
    assert_eq!(got.dims(), want.dims(), "{expected}");
    let (g, w) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{expected}[{i}]: {a} vs numpy {b}");
    }
    Ok(())
}

#[test]
fn composites_match_numpy() -> Result<()> {
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
    check(&client, "softmax", &["in_logits"], |a| a[0].softmax(2))?;
    check(&client, "log_softmax", &["in_logits"], |a| a[0].log_softmax(2))?;
    check(&client, "rms_norm", &["in_x", "in_w"], |a| a[0].rms_norm(&a[1], 1e-6))?;
    check(&client, "gelu_tanh", &["in_x"], |a| a[0].gelu_tanh())?;
    check(&client, "rope", &["in_x", "in_pos"], |a| a[0].rope(&a[1], 10000.0))?;
    check(&client, "causal_mask", &["in_x"], |a| a[0].tracer().causal_mask(3, 5, 2))?;
    check(&client, "cross_entropy", &["in_logits", "in_labels"], |a| a[0].cross_entropy(&a[1], None))?;
    check(&client, "cross_entropy_masked", &["in_logits", "in_labels", "in_mask"], |a| a[0].cross_entropy(&a[1], Some(&a[2])))?;
    Ok(())
}

#[test]
fn rms_norm_of_bf16_computes_in_f32_and_returns_bf16() -> Result<()> {
    let f = graph::trace("n", &[("x", TensorType::new(DType::Bf16, &[2, 4])), ("w", TensorType::new(DType::Bf16, &[4]))], |a| {
        vec![a[0].rms_norm(&a[1], 1e-6)]
    })?;
    assert_eq!(f.output_types()[0].dtype, DType::Bf16);
    assert!(format!("{f}").contains("convert[f32]"));
    Ok(())
}

#[test]
fn random_numbers_are_deterministic_per_key_and_well_distributed() -> Result<()> {
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
    let jit = jit::flat("rng", &client, |a: &[Tensor]| vec![a[0].uniform(&[100, 100], DType::F32), a[0].normal(&[100, 100], DType::F32)]);
    let key = |k: u64| HostArray::from_vec(&[2], vec![k, 0u64]).unwrap();
    let a = jit.call_flat(&[key(1)])?;
    let b = jit.call_flat(&[key(1)])?;
    let c = jit.call_flat(&[key(2)])?;
    assert_eq!(a, b, "the same key gives the same numbers");
    assert_ne!(a[0], c[0], "another key gives other numbers");
    let u = a[0].to_vec::<f32>()?;
    assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    let mean = u.iter().map(|&x| x as f64).sum::<f64>() / u.len() as f64;
    assert!((mean - 0.5).abs() < 0.01, "uniform mean {mean}");
    let n = a[1].to_vec::<f32>()?;
    let m = n.iter().map(|&x| x as f64).sum::<f64>() / n.len() as f64;
    let var = n.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / n.len() as f64;
    assert!(m.abs() < 0.03 && (var - 1.0).abs() < 0.05, "normal mean {m}, variance {var}");
    Ok(())
}
