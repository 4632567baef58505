//! `gemma-xla run`: compile a program file, place .npy arguments on the devices as the
//! program's shardings say, execute, and write each whole output as DIR/out_<i>.npy, with a
//! DIR/manifest.json listing them (replacing every output of an earlier run).
use crate::args::PluginArgs;
use anyhow::{bail, Context, Result};
use data::{files, npy};
use runtime::{CompileOptions, HostArray, Partitioner, Program};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The program: StableHLO text (.mlir), MLIR bytecode (.mlirbc) or a serialized HloModuleProto (.pb)
    program: PathBuf,
    /// An argument as a .npy file, in parameter order (repeat for each parameter)
    #[arg(long = "arg", value_name = "FILE.npy")]
    args: Vec<PathBuf>,
    /// Directory for out_<i>.npy
    #[arg(long, default_value = "out")]
    out: PathBuf,
    /// SPMD partitions, for programs whose text does not say (`mhlo.num_partitions`)
    #[arg(long)]
    partitions: Option<i64>,
    /// Partitioner for the sharding annotations [default: from the annotations found]
    #[arg(long, value_parser = ["shardy", "gspmd"])]
    partitioner: Option<String>,
    #[command(flatten)]
    plugin: PluginArgs,
}

pub fn run(a: &RunArgs) -> Result<()> {
    let program = Program::from_file(&a.program)?;
    if program.num_replicas.unwrap_or(1) != 1 {
        bail!(
            "{}: mhlo.num_replicas = {} is not supported; express data parallelism with partitions",
            a.program.display(),
            program.num_replicas.unwrap_or(1)
        );
    }
    let partitions = match (a.partitions, program.num_partitions) {
        (Some(flag), Some(text)) if flag != text => {
            bail!("--partitions {flag} disagrees with mhlo.num_partitions = {text} in {}", a.program.display())
        }
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => 1,
    };
    if partitions < 1 {
        bail!("the number of partitions must be at least 1, got {partitions}");
    }
    let options = if partitions == 1 {
        CompileOptions::single_device()
    } else {
        let partitioner = match a.partitioner.as_deref() {
            Some("gspmd") => Partitioner::Gspmd,
            Some(_) => Partitioner::Shardy,
            None => program.annotations.unwrap_or(Partitioner::Shardy),
        };
        CompileOptions::spmd(partitions, partitioner)
    };
    // Read everything the user named before the (slow) compile, so bad input fails fast.
    let args: Vec<HostArray> = a.args.iter().map(|p| npy::read(p)).collect::<Result<_, _>>()?;
    files::ensure_writable_dir(&a.out)?;
    // The outputs replace every out_*.npy and the manifest in --out: none may be an input.
    let mut inputs: Vec<&std::path::Path> = a.args.iter().map(|p| p.as_path()).collect();
    inputs.push(&a.program);
    for entry in std::fs::read_dir(&a.out).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if files::is_output_name(&name) || name == files::MANIFEST {
            files::refuse_input_as_output(&entry.path(), &inputs)?;
        }
    }
    let client = a.plugin.open(Some(partitions as usize))?;
    let exe = client.compile(&program, &options).with_context(|| format!("cannot compile {}", a.program.display()))?;
    if let Err(e) = exe.check_args(&args) {
        bail!("{}", name_argument(&e.to_string(), &a.args));
    }
    if let Err(e) = exe.check_outputs() {
        bail!("{}: {e}", a.program.display());
    }
    let outputs = exe.run_sharded(&client, &args).with_context(|| format!("cannot run {}", a.program.display()))?;
    let mut encoded = Vec::new();
    let mut listed = Vec::new();
    for (i, out) in outputs.iter().enumerate() {
        let bytes = npy::encode_array(&out.array)?;
        let name = format!("out_{i}.npy");
        // What the file holds (bf16 is saved as f32).
        let dtype = if out.array.dtype() == runtime::DType::Bf16 { runtime::DType::F32 } else { out.array.dtype() };
        listed.push(serde_json::json!({"file": name, "dtype": dtype.name(), "shape": out.array.dims()}));
        encoded.push((name, bytes));
    }
    let manifest = serde_json::json!({"program": a.program.display().to_string(), "outputs": listed});
    files::replace_outputs(&a.out, &encoded, format!("{manifest:#}\n").as_bytes())?;
    println!("{}: {} output(s) on {} device(s)", a.program.display(), outputs.len(), exe.devices().len());
    for (i, out) in outputs.iter().enumerate() {
        let path = a.out.join(format!("out_{i}.npy"));
        let note = if out.array.dtype() == runtime::DType::Bf16 { " (saved as f32)" } else { "" };
        let sharding = if exe.devices().len() > 1 { format!(" sharding={}", out.sharding.describe()) } else { String::new() };
        println!("  {} {}{note}{sharding} {}", path.display(), out.array.type_string(), first_values(&out.array));
    }
    Ok(())
}

/// Puts the file name into an "argument i: ..." message.
fn name_argument(message: &str, files: &[PathBuf]) -> String {
    if let Some(rest) = message.strip_prefix("argument ") {
        if let Some((index, tail)) = rest.split_once(':') {
            if let Some(path) = index.parse::<usize>().ok().and_then(|i| files.get(i)) {
                return format!("--arg {} (argument {index}):{tail}", path.display());
            }
        }
    }
    message.to_string()
}

fn first_values(a: &HostArray) -> String {
    let values = a.to_f64_vec();
    let shown: Vec<String> = if a.dtype().is_complex() {
        // Real and imaginary parts come interleaved.
        values.chunks(2).take(6).map(|c| format!("{}{:+}j", c[0], c[1])).collect()
    } else {
        values.iter().take(6).map(|v| format!("{v}")).collect()
    };
    let more = if a.len() > 6 { ", ..." } else { "" };
    format!("[{}{more}]", shown.join(", "))
}
