//! Arrays that stay on the devices: placement and fetch over a mesh, calls that take and
//! return `DeviceArray`s with no host round trip, donation, and the errors of a bad call.
use anyhow::Result;
use runtime::{Arg, Client, CompileOptions, DType, DeviceArray, Error, HostArray, Mesh, NamedSharding, PartitionSpec, PluginSpec, Program};

fn cpu(devices: usize) -> Client {
    Client::open(&PluginSpec::Cpu, Some(devices)).expect("CPU plugin")
}

/// state' = state * 0.5 + x, with `state` [8, 4] split by rows over a 4-device mesh and
/// donated; `x` [8, 4] split by columns over the same mesh (so XLA reshards it).
const STEP: &str = r#"module @step attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["x"=2, "y"=2]>
  func.func public @main(%state: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x", "y"}, {}]>, jax.buffer_donor = true},
                         %x: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {"y"}]>})
      -> (tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x", "y"}, {}]>}, tensor<f32> {sdy.sharding = #sdy.sharding<@mesh, []>}) {
    %half = stablehlo.constant dense<0.5> : tensor<8x4xf32>
    %0 = stablehlo.multiply %state, %half : tensor<8x4xf32>
    %1 = stablehlo.add %0, %x : tensor<8x4xf32>
    %zero = stablehlo.constant dense<0.0> : tensor<f32>
    %2 = stablehlo.reduce(%1 init: %zero) applies stablehlo.add across dimensions = [0, 1] : (tensor<8x4xf32>, tensor<f32>) -> tensor<f32>
    return %1, %2 : tensor<8x4xf32>, tensor<f32>
  }
}"#;

#[test]
fn a_sharded_state_stays_on_the_devices_across_ten_donating_calls() -> Result<()> {
    let client = cpu(4);
    let mesh = Mesh::parse("x=2,y=2")?;
    let exe = client.compile(&Program::from_text(STEP)?, &CompileOptions::for_mesh(&mesh))?;
    assert_eq!(exe.donated(), &[true, false]);
    let rows = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&["x", "y"], &[]]))?;
    let cols = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&[], &["y"]]))?;
    let s0: Vec<f32> = (0..32).map(|i| i as f32).collect();
    let xs: Vec<f32> = (0..32).map(|i| (i % 5) as f32 - 2.0).collect();
    let mut state = DeviceArray::place(&client, &HostArray::from_vec(&[8, 4], s0.clone())?, &rows)?;
    let x = DeviceArray::place(&client, &HostArray::from_vec(&[8, 4], xs.clone())?, &cols)?;
    assert_eq!(state.buffers().len(), 4);
    assert_eq!(state.buffers()[1].dims()?, vec![2, 4], "each device holds two rows");
    assert_eq!(x.buffers()[0].dims()?, vec![8, 2], "and two columns of x");
    let (uploads, downloads, live) = (client.uploads(), client.downloads(), client.live_buffers());
    assert_eq!(live, 8);
    let mut sums = Vec::new();
    for _ in 0..10 {
        let mut out = exe.call(vec![Arg::Donate(state), Arg::Keep(&x)])?.into_iter();
        state = out.next().unwrap();
        sums.push(out.next().unwrap());
        // The old state was consumed; the new one replaces it one for one.
        assert_eq!(client.live_buffers(), live + 4 * sums.len());
        assert_eq!(state.sharding(), &rows);
    }
    assert_eq!((client.uploads(), client.downloads()), (uploads, downloads), "nothing crossed to or from the host");
    drop(sums);
    assert_eq!(client.live_buffers(), live, "nothing leaked");

    let mut want = s0;
    for _ in 0..10 {
        want = want.iter().zip(&xs).map(|(s, x)| s * 0.5 + x).collect();
    }
    let got = state.fetch()?;
    assert_eq!(client.downloads(), downloads + 4, "one download per row block");
    assert_eq!(got.to_vec::<f32>()?, want);
    drop((state, x, exe));
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

#[test]
fn bad_calls_are_typed_errors() -> Result<()> {
    let client = cpu(4);
    let mesh = Mesh::parse("x=2,y=2")?;
    let exe = client.compile(&Program::from_text(STEP)?, &CompileOptions::for_mesh(&mesh))?;
    let rows = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&["x", "y"], &[]]))?;
    let cols = NamedSharding::new(mesh.clone(), PartitionSpec::new(&[&[], &["y"]]))?;
    let host = HostArray::from_vec(&[8, 4], vec![1f32; 32])?;
    let state = DeviceArray::place(&client, &host, &rows)?;
    let x = DeviceArray::place(&client, &host, &cols)?;

    // A donated parameter lent instead of moved.
    let err = exe.call(vec![Arg::Keep(&state), Arg::Keep(&x)]).unwrap_err();
    assert!(matches!(err, Error::MustDonate { index: 0 }), "{err}");
    // Wrong placement: x placed by rows.
    let x_rows = DeviceArray::place(&client, &host, &rows)?;
    let err = exe.call(vec![Arg::Donate(DeviceArray::place(&client, &host, &rows)?), Arg::Keep(&x_rows)]).unwrap_err();
    assert!(matches!(err, Error::ArgumentSharding { index: 1, .. }), "{err}");
    assert!(err.to_string().contains(r#"[{}, {"y"}] over x=2,y=2"#), "{err}");
    // Wrong type.
    let ints = DeviceArray::place(&client, &HostArray::from_vec(&[8, 4], vec![1i32; 32])?, &cols)?;
    let err = exe.call(vec![Arg::Donate(DeviceArray::place(&client, &host, &rows)?), Arg::Keep(&ints)]).unwrap_err();
    match &err {
        Error::ArgumentType { index, expected, actual } => {
            assert_eq!(*index, 1);
            assert_eq!(expected.dtype, DType::F32);
            assert_eq!(actual.dtype, DType::S32);
        }
        other => panic!("{other}"),
    }
    // Wrong count.
    let err = exe.call(vec![Arg::Keep(&x)]).unwrap_err();
    assert!(matches!(err, Error::ArgumentCount { expected: 2, actual: 1 }), "{err}");
    // A spec naming an axis the mesh does not have.
    let err = NamedSharding::new(mesh, PartitionSpec::new(&[&["model"], &[]])).unwrap_err();
    assert_eq!(err.to_string(), r#"axis "model" is not in the mesh x=2,y=2"#);
    drop((state, x, x_rows, ints, exe));
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

#[test]
fn impossible_sizes_are_errors_before_the_plugin_sees_them() {
    let err = Client::open(&PluginSpec::Cpu, Some(100_000)).err().unwrap();
    assert!(err.to_string().contains("at most 4096"), "{err}");
    let client = cpu(1);
    let huge = "func.func public @main(%a: tensor<1152921504606846976xf32>) -> tensor<1152921504606846976xf32> {\n  return %a : tensor<1152921504606846976xf32>\n}";
    let err = client.compile(&Program::from_text(huge).unwrap(), &CompileOptions::single_device()).err().unwrap();
    assert!(err.to_string().contains("parameter 0 is f32[1152921504606846976], larger than the supported"), "{err}");
}
