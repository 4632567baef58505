//! The runtime on the real CPU plugin: dtypes, single-device and SPMD execution (Shardy and
//! GSPMD, 2 and 8 devices), donation, leaks, and the errors a user can cause.
use anyhow::Result;
use half::{bf16, f16};
use runtime::{download, Client, CompileOptions, DType, Element, Error, HostArray, OpSharding, Partitioner, PluginSpec, Program};

fn cpu(devices: usize) -> Client {
    Client::open(&PluginSpec::Cpu, Some(devices)).expect("CPU plugin")
}

fn f32s(a: &HostArray) -> Vec<f32> {
    a.to_vec::<f32>().unwrap()
}

const ADD: &str = r#"
func.func public @main(%a: tensor<2x3xf32>, %b: tensor<2x3xf32>) -> tensor<2x3xf32> {
  %0 = stablehlo.add %a, %b : tensor<2x3xf32>
  %1 = stablehlo.multiply %0, %b : tensor<2x3xf32>
  return %1 : tensor<2x3xf32>
}"#;

#[test]
fn single_device_program_computes_and_frees_everything() -> Result<()> {
    let client = cpu(1);
    assert_eq!(client.platform_name()?, "cpu");
    let exe = client.compile(&Program::from_text(ADD)?, &CompileOptions::single_device())?;
    let a = HostArray::from_vec(&[2, 3], vec![1f32, 2., 3., 4., 5., 6.])?;
    let b = HostArray::from_vec(&[2, 3], vec![0.5f32, -1., 2., 0., 10., -3.])?;
    let out = exe.run(&client, &[a, b])?;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dims(), &[2, 3]);
    assert_eq!(f32s(&out[0]), vec![0.75, -1., 10., 0., 150., -9.]);
    let nd = out[0].to_ndarray::<f32>()?;
    assert_eq!(nd.shape(), &[2, 3]);
    assert_eq!(nd[[1, 1]], 150.);
    drop(out);
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

fn round_trip<T: Element + PartialEq + std::fmt::Debug>(client: &Client, values: Vec<T>) -> Result<()> {
    let device = &client.devices()?[0];
    let host = HostArray::from_vec(&[values.len() as i64 / 2, 2], values.clone())?;
    let buf = client.upload(&host, device)?;
    assert_eq!(buf.element_type()?, T::TYPE);
    assert_eq!(buf.dims()?, vec![values.len() as i64 / 2, 2]);
    let back = download(&buf)?;
    assert_eq!(back.to_vec::<T>()?, values, "{:?}", T::TYPE);
    Ok(())
}

#[test]
fn every_dtype_round_trips_through_a_device() -> Result<()> {
    let client = cpu(1);
    round_trip(&client, vec![1.5f32, -2.0, 3.25, f32::MAX])?;
    round_trip(&client, vec![1.5f64, -2.0, 1e300, -0.0])?;
    round_trip(&client, vec![bf16::from_f32(1.5), bf16::from_f32(-2.0), bf16::from_f32(3e38), bf16::ZERO])?;
    round_trip(&client, vec![f16::from_f32(1.5), f16::from_f32(-2.0), f16::MAX, f16::ZERO])?;
    round_trip(&client, vec![1i32, -2, i32::MAX, i32::MIN])?;
    round_trip(&client, vec![1i64, -2, i64::MAX, i64::MIN])?;
    round_trip(&client, vec![0u8, 1, 254, 255])?;
    round_trip(&client, vec![true, false, false, true])?;
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

#[test]
fn a_bf16_program_runs_on_bf16_buffers() -> Result<()> {
    let client = cpu(1);
    let text = r#"func.func public @main(%a: tensor<4xbf16>) -> tensor<4xf32> {
  %0 = stablehlo.multiply %a, %a : tensor<4xbf16>
  %1 = stablehlo.convert %0 : (tensor<4xbf16>) -> tensor<4xf32>
  return %1 : tensor<4xf32>
}"#;
    let exe = client.compile(&Program::from_text(text)?, &CompileOptions::single_device())?;
    let a = HostArray::from_vec(&[4], [1.5f32, -2., 3., 0.25].map(bf16::from_f32).to_vec())?;
    let out = exe.run(&client, &[a])?;
    assert_eq!(f32s(&out[0]), vec![2.25, 4., 9., 0.0625]);
    Ok(())
}

const SHARDY_2: &str = r#"
module @rows attributes {mhlo.num_partitions = 2 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["x"=2]>
  func.func public @main(%a: tensor<4x2xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x"}, {}]>},
                         %b: tensor<4x2xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x"}, {}]>})
      -> (tensor<4x2xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x"}, {}]>},
          tensor<f32> {sdy.sharding = #sdy.sharding<@mesh, []>}) {
    %0 = stablehlo.add %a, %b : tensor<4x2xf32>
    %z = stablehlo.constant dense<0.0> : tensor<f32>
    %1 = stablehlo.reduce(%0 init: %z) applies stablehlo.add across dimensions = [0, 1]
        : (tensor<4x2xf32>, tensor<f32>) -> tensor<f32>
    return %0, %1 : tensor<4x2xf32>, tensor<f32>
  }
}"#;

#[test]
fn spmd_over_two_devices_with_shardy() -> Result<()> {
    let client = cpu(2);
    let program = Program::from_text(SHARDY_2)?;
    assert_eq!(program.num_partitions, Some(2));
    let exe = client.compile(&program, &CompileOptions::spmd(2, Partitioner::Shardy))?;
    assert_eq!(exe.devices().len(), 2);
    let rows = OpSharding::Tiled { tile_dims: vec![2, 1], devices: vec![0, 1], replicated_copies: 1 };
    assert_eq!(exe.parameter_shardings().expect("shardings extension"), &[rows.clone(), rows.clone()]);
    let a = HostArray::from_vec(&[4, 2], (0..8).map(|x| x as f32).collect())?;
    let b = HostArray::from_vec(&[4, 2], vec![10f32; 8])?;
    let out = exe.run_sharded(&client, &[a, b])?;
    assert_eq!(out[0].sharding, rows);
    // Device 0 computed rows 0-1, device 1 rows 2-3.
    assert_eq!(f32s(&out[0].shards[0]), vec![10., 11., 12., 13.]);
    assert_eq!(f32s(&out[0].shards[1]), vec![14., 15., 16., 17.]);
    assert_eq!(f32s(&out[0].array), (10..18).map(|x| x as f32).collect::<Vec<_>>());
    // The replicated sum is whole on both devices.
    assert_eq!(out[1].sharding, OpSharding::Replicated);
    assert_eq!(f32s(&out[1].shards[0]), vec![108.]);
    assert_eq!(f32s(&out[1].shards[1]), vec![108.]);
    drop(out);
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

const SHARDY_8: &str = r#"
module @mlp attributes {mhlo.num_partitions = 8 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["data"=2, "model"=4]>
  func.func public @main(%x: tensor<4x8xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {"model"}]>},
                         %w: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"model"}, {}]>})
      -> (tensor<4x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {}]>}) {
    %0 = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<4x8xf32>, tensor<8x4xf32>) -> tensor<4x4xf32>
    return %0 : tensor<4x4xf32>
  }
}"#;

#[test]
fn spmd_over_eight_devices_on_a_data_model_mesh() -> Result<()> {
    let client = cpu(8);
    let exe = client.compile(&Program::from_text(SHARDY_8)?, &CompileOptions::spmd(8, Partitioner::Shardy))?;
    assert_eq!(exe.devices().len(), 8);
    let x: Vec<f32> = (0..32).map(|i| (i % 7) as f32 - 3.0).collect();
    let w: Vec<f32> = (0..32).map(|i| (i % 5) as f32 * 0.5).collect();
    let mut expect = vec![0f32; 16];
    for i in 0..4 {
        for j in 0..4 {
            expect[i * 4 + j] = (0..8).map(|k| x[i * 8 + k] * w[k * 4 + j]).sum();
        }
    }
    let sx = &exe.parameter_shardings().unwrap()[0];
    // x is cut into 2x4 tiles: every device holds a [2,2] block.
    assert!(matches!(sx, OpSharding::Tiled { tile_dims, .. } if tile_dims == &vec![2, 4]), "{sx:?}");
    let out = exe.run_sharded(&client, &[HostArray::from_vec(&[4, 8], x)?, HostArray::from_vec(&[4, 8], w)?]).err().map(|e| e.to_string());
    // w is [8,4], not [4,8]: the argument check catches it before anything runs.
    assert!(out.unwrap().contains("argument 1: the program expects f32[8,4], got f32[4,8]"));
    let x = HostArray::from_vec(&[4, 8], (0..32).map(|i| (i % 7) as f32 - 3.0).collect())?;
    let w = HostArray::from_vec(&[8, 4], (0..32).map(|i| (i % 5) as f32 * 0.5).collect())?;
    let out = exe.run_sharded(&client, &[x, w])?;
    assert_eq!(f32s(&out[0].array), expect);
    // Rows 0-1 (data=0) live on the four devices of the first mesh row, replicated over model.
    let OpSharding::Tiled { devices, replicated_copies, .. } = &out[0].sharding else { panic!() };
    assert_eq!(*replicated_copies, 4);
    for (k, &d) in devices.iter().enumerate() {
        let rows = if k < 4 { &expect[..8] } else { &expect[8..] };
        assert_eq!(f32s(&out[0].shards[d as usize]), rows, "device {d}");
    }
    drop(out);
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

#[test]
fn spmd_with_gspmd_strings() -> Result<()> {
    let client = cpu(2);
    let text = r#"
module @g attributes {mhlo.num_partitions = 2 : i32, mhlo.num_replicas = 1 : i32} {
  func.func public @main(%a: tensor<4x2xf32> {mhlo.sharding = "{devices=[2,1]<=[2]}"})
      -> (tensor<4x2xf32> {mhlo.sharding = "{devices=[2,1]<=[2]}"}) {
    %0 = stablehlo.multiply %a, %a : tensor<4x2xf32>
    return %0 : tensor<4x2xf32>
  }
}"#;
    let program = Program::from_text(text)?;
    assert_eq!(program.annotations, Some(Partitioner::Gspmd));
    let exe = client.compile(&program, &CompileOptions::spmd(2, Partitioner::Gspmd))?;
    let a = HostArray::from_vec(&[4, 2], (0..8).map(|x| x as f32).collect())?;
    let out = exe.run_sharded(&client, &[a])?;
    assert_eq!(f32s(&out[0].shards[1]), vec![16., 25., 36., 49.]);
    assert_eq!(f32s(&out[0].array), (0..8).map(|x| (x * x) as f32).collect::<Vec<_>>());
    Ok(())
}

#[test]
fn a_donated_input_cannot_be_used_again() -> Result<()> {
    let client = cpu(1);
    let text = r#"func.func public @main(%a: tensor<4xf32> {tf.aliasing_output = 0 : i32}, %b: tensor<4xf32>) -> tensor<4xf32> {
  %0 = stablehlo.add %a, %b : tensor<4xf32>
  return %0 : tensor<4xf32>
}"#;
    let exe = client.compile(&Program::from_text(text)?, &CompileOptions::single_device())?;
    let device = &client.devices()?[0];
    let a = client.upload(&HostArray::from_vec(&[4], vec![1f32, 2., 3., 4.])?, device)?;
    let b = client.upload(&HostArray::from_vec(&[4], vec![1f32; 4])?, device)?;
    // Without donation both inputs survive.
    let kept = exe.execute(&[vec![&a, &b]], &[])?;
    assert!(!a.is_deleted()? && !b.is_deleted()?);
    assert_eq!(f32s(&download(&kept[0][0])?), vec![2., 3., 4., 5.]);
    // Donating input 0 consumes it.
    let out = exe.execute(&[vec![&a, &b]], &[0])?;
    assert_eq!(f32s(&download(&out[0][0])?), vec![2., 3., 4., 5.]);
    assert!(a.is_deleted()?);
    assert!(!b.is_deleted()?);
    let err = download(&a).unwrap_err().to_string();
    assert!(err.contains("donated"), "{err}");
    let err = exe.execute(&[vec![&a, &b]], &[0]).err().unwrap().to_string();
    assert!(err.contains("argument 0 (device 0) was donated"), "{err}");
    drop((a, b, kept, out));
    assert_eq!(client.live_buffers(), 0);
    Ok(())
}

#[test]
fn a_syntax_error_is_reported_and_the_process_survives() -> Result<()> {
    let client = cpu(1);
    let bad = "func.func public @main(%a: tensor<2xf32>) -> tensor<2xf32> {\n  %0 = stablehlo.bogus %a\n}";
    let err = client.compile(&Program::from_text(bad)?, &CompileOptions::single_device()).err().unwrap();
    match &err {
        Error::Pjrt(xla_sys_err) => {
            let text = xla_sys_err.to_string();
            assert!(text.starts_with("PJRT_Client_Compile failed with"), "{text}");
            assert!(text.contains("'stablehlo.bogus' is unknown"), "{text}");
        }
        other => panic!("expected a PJRT error, got {other}"),
    }
    // The client still works.
    let exe = client.compile(&Program::from_text(ADD)?, &CompileOptions::single_device())?;
    assert_eq!(exe.num_outputs()?, 1);
    Ok(())
}

#[test]
fn more_partitions_than_devices_is_an_error() -> Result<()> {
    let client = cpu(1);
    let err = client.compile(&Program::from_text(SHARDY_2)?, &CompileOptions::spmd(2, Partitioner::Shardy)).err().unwrap().to_string();
    assert_eq!(err, "the program needs 2 devices but the client has 1 (ask for more with --devices 2)");
    Ok(())
}

#[test]
fn bad_plugin_files_are_clear_errors() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("gemma-xla-plugin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let missing = dir.join("nope.so");
    let err = Client::open(&PluginSpec::Path(missing.clone()), None).err().unwrap().to_string();
    assert_eq!(err, format!("PJRT plugin file {} does not exist", missing.display()));

    let text = dir.join("text.so");
    std::fs::write(&text, "not an ELF file")?;
    let err = Client::open(&PluginSpec::Path(text.clone()), None).err().unwrap().to_string();
    assert!(err.starts_with(&format!("cannot load PJRT plugin {}", text.display())), "{err}");

    // A real shared library that is not a PJRT plugin.
    let src = dir.join("lib.c");
    std::fs::write(&src, "int not_pjrt(void) { return 7; }\n")?;
    let so = dir.join("libnotpjrt.so");
    let status = std::process::Command::new("cc").args(["-shared", "-fPIC", "-o"]).arg(&so).arg(&src).status()?;
    assert!(status.success());
    let err = Client::open(&PluginSpec::Path(so.clone()), None).err().unwrap().to_string();
    assert!(err.starts_with(&format!("{} is not a PJRT plugin: it does not export GetPjrtApi", so.display())), "{err}");
    std::fs::remove_dir_all(&dir)?;

    let err = PluginSpec::parse("rocm").unwrap_err().to_string();
    assert!(err.contains("expected cpu, cuda, tpu or a path"), "{err}");
    Ok(())
}

#[test]
fn the_cpu_plugin_reports_its_facts() -> Result<()> {
    let client = cpu(4);
    let info = client.plugin();
    assert_eq!(info.api_version.0, 0);
    assert!(info.api_version.1 >= 114, "{:?}", info.api_version);
    assert!(info.attribute("stablehlo_current_version").is_some());
    let devices = client.devices()?;
    assert_eq!(devices.len(), 4);
    let ids: Vec<i32> = devices.iter().map(|d| d.id().unwrap()).collect();
    assert_eq!(ids, vec![0, 1, 2, 3]);
    assert_eq!(devices[0].kind()?, "cpu");
    assert_eq!(DType::from_name("i1"), Some(DType::Pred));
    Ok(())
}

#[test]
fn an_uneven_split_still_gives_the_whole_result() -> Result<()> {
    // 3 rows over 2 devices: whatever layout XLA settles on, the assembled array is right.
    let client = cpu(2);
    let text = r#"
module @u attributes {mhlo.num_partitions = 2 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["x"=2]>
  func.func public @main(%a: tensor<3x2xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x"}, {}]>})
      -> (tensor<3x2xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x"}, {}]>}) {
    %0 = stablehlo.add %a, %a : tensor<3x2xf32>
    return %0 : tensor<3x2xf32>
  }
}"#;
    let exe = client.compile(&Program::from_text(text)?, &CompileOptions::spmd(2, Partitioner::Shardy))?;
    let a = HostArray::from_vec(&[3, 2], (0..6).map(|x| x as f32).collect())?;
    let out = exe.run(&client, &[a])?;
    assert_eq!(f32s(&out[0]), vec![0., 2., 4., 6., 8., 10.]);
    Ok(())
}

#[test]
fn parameter_types_are_read_back_from_the_compiled_program() -> Result<()> {
    use runtime::{CompiledType, TensorType};
    let f32_of = |dims: &[i64]| CompiledType { element_type: 11, dims: dims.to_vec() };
    // A serialized HloModuleProto has no text signature: the types come from XLA.
    let client = cpu(2);
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fixtures");
    let exe = client.compile(&Program::from_file(&fixtures.join("affine.pb"))?, &CompileOptions::single_device())?;
    let sig = exe.compiled_signature().expect("the CPU plugin reports the optimized program");
    assert_eq!(sig.params, vec![f32_of(&[2, 3]), f32_of(&[3, 2])]);
    assert_eq!(sig.results, vec![f32_of(&[2, 2])]);
    let swapped = [HostArray::from_vec(&[3, 2], vec![0f32; 6])?, HostArray::from_vec(&[2, 3], vec![0f32; 6])?];
    match exe.check_args(&swapped) {
        Err(Error::ArgumentType { index: 0, expected, actual }) => {
            assert_eq!((expected, actual), (TensorType::new(DType::F32, &[2, 3]), TensorType::new(DType::F32, &[3, 2])))
        }
        other => panic!("{other:?}"),
    }
    // SPMD: the compiled types are each device's shard.
    let exe = client.compile(&Program::from_text(SHARDY_2)?, &CompileOptions::spmd(2, Partitioner::Shardy))?;
    let sig = exe.compiled_signature().expect("optimized program");
    assert_eq!(sig.params, vec![f32_of(&[2, 2]), f32_of(&[2, 2])]);
    assert_eq!(sig.results, vec![f32_of(&[2, 2]), f32_of(&[])]);
    let wrong = [HostArray::from_vec(&[4, 2], vec![0i32; 8])?, HostArray::from_vec(&[4, 2], vec![0f32; 8])?];
    assert!(exe.check_args(&wrong).unwrap_err().to_string().contains("argument 0: the program expects f32[4,2], got s32[4,2]"));
    Ok(())
}
