//! The persistent compilation cache on the CPU plugin: a second client loads what the first
//! compiled (an SPMD program with donation and shardings), the loaded executable computes the
//! same, damaged entries are rejected and rewritten, other programs and options miss.
use anyhow::Result;
use runtime::{
    Arg, CacheStats, Client, CompileCache, CompileOptions, DeviceArray, HostArray, Mesh, NamedSharding, PartitionSpec, PluginSpec, Program,
};
use std::path::Path;

/// x' = x * 0.5 + 1 and its sum, x split by rows over 4 devices and donated.
const STEP: &str = r#"module @step attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["x"=4]>
  func.func public @main(%x: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x"}, {}]>, jax.buffer_donor = true})
      -> (tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"x"}, {}]>}, tensor<f32> {sdy.sharding = #sdy.sharding<@mesh, []>}) {
    %half = stablehlo.constant dense<0.5> : tensor<8x4xf32>
    %one = stablehlo.constant dense<1.0> : tensor<8x4xf32>
    %0 = stablehlo.multiply %x, %half : tensor<8x4xf32>
    %1 = stablehlo.add %0, %one : tensor<8x4xf32>
    %zero = stablehlo.constant dense<0.0> : tensor<f32>
    %2 = stablehlo.reduce(%1 init: %zero) applies stablehlo.add across dimensions = [0, 1] : (tensor<8x4xf32>, tensor<f32>) -> tensor<f32>
    return %1, %2 : tensor<8x4xf32>, tensor<f32>
  }
}"#;

fn client(dir: &Path) -> Client {
    let mut c = Client::open(&PluginSpec::Cpu, Some(4)).expect("CPU plugin");
    c.set_compile_cache(Some(CompileCache::new(dir)));
    c
}

/// Compiles STEP (through the cache) and runs it once; returns the outputs and the cache's counts.
fn run(dir: &Path, text: &str) -> Result<(Vec<f32>, f32, CacheStats)> {
    let c = client(dir);
    let mesh = Mesh::parse("x=4")?;
    let exe = c.compile(&Program::from_text(text)?, &CompileOptions::for_mesh(&mesh))?;
    assert_eq!(exe.donated(), &[true], "donation survives the cache");
    let rows = NamedSharding::new(mesh, PartitionSpec::new(&[&["x"], &[]]))?;
    let x = DeviceArray::place(&c, &HostArray::from_vec(&[8, 4], (0..32).map(|i| i as f32).collect::<Vec<_>>())?, &rows)?;
    let mut out = exe.call(vec![Arg::Donate(x)])?.into_iter();
    let y = out.next().unwrap();
    assert_eq!(y.sharding(), &rows, "output shardings survive the cache");
    let sum = out.next().unwrap().fetch()?.to_vec::<f32>()?[0];
    Ok((y.fetch()?.to_vec::<f32>()?, sum, c.compile_cache().unwrap().stats()))
}

#[test]
fn a_second_client_loads_what_the_first_compiled() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("gemma-xla-compile-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (y, sum, cold) = run(&dir, STEP)?;
    assert_eq!(cold, CacheStats { hits: 0, misses: 1, stores: 1, rejected: 0 });
    let want: Vec<f32> = (0..32).map(|i| i as f32 * 0.5 + 1.0).collect();
    assert_eq!((y.clone(), sum), (want.clone(), want.iter().sum()));
    let (y2, sum2, warm) = run(&dir, STEP)?;
    assert_eq!(warm, CacheStats { hits: 1, misses: 0, stores: 0, rejected: 0 });
    assert_eq!((y2, sum2), (y.clone(), sum));

    // Damage the entry: it is rejected, the program compiled again and the entry rewritten.
    let entries: Vec<_> = std::fs::read_dir(&dir)?.map(|e| e.unwrap().path()).collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let mut bytes = std::fs::read(&entries[0])?;
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&entries[0], &bytes)?;
    let (y3, _, damaged) = run(&dir, STEP)?;
    assert_eq!(damaged, CacheStats { hits: 0, misses: 1, stores: 1, rejected: 1 });
    assert_eq!(y3, y);
    assert_eq!(run(&dir, STEP)?.2.hits, 1, "the rewritten entry loads");

    // Another program (one constant changed) is another entry.
    let other = STEP.replace("dense<1.0>", "dense<2.0>");
    let (y4, _, miss) = run(&dir, &other)?;
    assert_eq!((miss.hits, miss.misses), (0, 1));
    assert_eq!(y4[0], 2.0);
    assert_eq!(std::fs::read_dir(&dir)?.count(), 2);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
