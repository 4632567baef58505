//! The gemma-xla side of benches/linalg.sh: runs a JAX-lowered linear-algebra program (LAPACK
//! custom calls, served by our FFI handlers) on the CPU plugin and times the executions.
//!
//! cargo run --release -p benches --bin linalg -- PROGRAM.mlir ARG.npy REPS
//! prints "ours NAME median_ms M min_ms M" (compile excluded, as in the peer; the argument is
//! placed on the device once and the results stay there, as JAX's do under block_until_ready).
use anyhow::{Context, Result};
use runtime::{Arg, Client, CompileOptions, DeviceArray, HostArray, Mesh, NamedSharding, PartitionSpec, PluginSpec, Program};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let program = PathBuf::from(args.next().context("PROGRAM.mlir")?);
    let arg = PathBuf::from(args.next().context("ARG.npy")?);
    let reps: usize = args.next().context("REPS")?.parse()?;
    let client = Client::open(&PluginSpec::Cpu, Some(1))?;
    let exe = client.compile(&Program::from_file(&program)?, &CompileOptions::single_device())?;
    let input: HostArray = data::npy::read(&arg)?;
    let one = NamedSharding { mesh: Mesh::parse("data=1")?, spec: PartitionSpec::replicated(input.dims().len()) };
    let on_device = DeviceArray::place(&client, &input, &one)?;
    drop(exe.call(vec![Arg::Keep(&on_device)])?);
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        // Execution is awaited inside call; the outputs are dropped unread.
        drop(exe.call(vec![Arg::Keep(&on_device)])?);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let name = program.file_stem().unwrap_or_default().to_string_lossy();
    println!("ours {name} median_ms {:.2} min_ms {:.2}", times[times.len() / 2], times[0]);
    Ok(())
}
