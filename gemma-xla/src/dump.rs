//! `gemma-xla dump`: a Gemma program through every compiler stage into one directory
//! (`inspect::dump`), with the summary printed.
use crate::args::{model_config, ConfigArg, Dtype, DtypeArg, MeshArgs, PluginArgs, RematArg, ShapeArgs};
use anyhow::{bail, Context, Result};
use gemma::rules;
use gemma::Config;
use inspect::dump::{self, PROGRAMS};
use std::path::{Path, PathBuf};
use train::Setup;

#[derive(clap::Args)]
pub struct DumpArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// An HF model directory (only its config.json is read)
    #[arg(long, value_name = "DIR", conflicts_with = "config")]
    model: Option<PathBuf>,
    /// The program to compile
    #[arg(long, value_parser = PROGRAMS)]
    what: String,
    // --mesh default: data=2,model=2 on 4 devices, or data=N with --devices N.
    #[command(flatten)]
    mesh: MeshArgs,
    // --seq default: 64.
    #[command(flatten)]
    shape: ShapeArgs,
    /// prefill and decode: the KV cache's slots per row [default: twice --seq]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    cache_len: Option<u32>,
    // --dtype default: f32.
    #[command(flatten)]
    dtype: DtypeArg,
    #[command(flatten)]
    remat: RematArg,
    /// Output directory (created; an earlier dump in it is replaced)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    #[command(flatten)]
    plugin: PluginArgs,
}

pub fn dump(a: &DumpArgs) -> Result<()> {
    let (name, cfg, inputs) = config(a)?;
    let input_refs: Vec<&Path> = inputs.iter().map(PathBuf::as_path).collect();
    data::files::refuse_input_as_output(&a.out, &input_refs)?;
    for file in [dump::STABLEHLO, dump::SUMMARY] {
        data::files::refuse_input_as_output(&a.out.join(file), &input_refs)?;
    }
    let mesh = train::resolve_mesh(a.mesh.mesh.as_deref(), a.plugin.devices).with_context(|| "--mesh")?;
    rules::check_mesh(&mesh)?;
    rules::param_specs(&cfg, &mesh, a.mesh.fsdp)?; // every split must divide its dimension
    rules::check_batch(a.shape.batch as i64, &mesh)?;
    let seq = a.shape.seq_or(data::DEFAULT_SEQ as u32, 2)?;
    let dtype = a.dtype.or(Dtype::F32);
    if a.out.exists() && !a.out.is_dir() {
        bail!("--out {} is a file, not a directory", a.out.display());
    }
    // One run per output directory, for the whole dump.
    let _lock = data::files::OutputLock::acquire(&a.out, "gemma-xla dump").with_context(|| format!("--out {}", a.out.display()))?;
    let client = a.plugin.open(Some(mesh.num_devices() as usize))?;
    let setup = Setup {
        cfg,
        mesh,
        fsdp: a.mesh.fsdp,
        batch: a.shape.batch as usize,
        seq: seq as usize,
        weights: false,
        lora: None,
        base_dtype: graph::DType::F32,
        stacked: a.remat.scan(),
    };
    let phase = crate::progress::Phase::start(&format!("dump: tracing and lowering {}", a.what));
    let lowered = dump::lower(Some(&client), &setup, &a.what, dtype.dtype(), a.remat.remat(), a.remat.scan(), a.cache_len)?;
    phase.done();

    let what = format!("{} ({name}; batch {} x seq {seq}, {})", a.what, a.shape.batch, dtype.name());
    let text = dump::write_dump(&a.out, &lowered, &setup, &what, |program, options| {
        let phase = crate::progress::Phase::start(&format!("dump: XLA compiling {}", a.what));
        client.compile(program, options).map_err(|e| inspect::Error::from(e).context(format!("compiling {}", a.what)))?;
        phase.done();
        Ok(())
    })?;
    print!("{text}");
    println!("wrote {}", a.out.display());
    Ok(())
}

/// The config's name, the config, and the files it was read from.
fn config(a: &DumpArgs) -> Result<(String, Config, Vec<PathBuf>)> {
    match (&a.config.config, &a.model) {
        (_, Some(dir)) => {
            let (path, cfg) = model_config(dir, "--model ")?;
            Ok((dir.display().to_string(), cfg, vec![path]))
        }
        (Some(_), None) => {
            let (name, cfg) = a.config.required()?;
            Ok((name, cfg, a.config.file().into_iter().collect()))
        }
        (None, None) => bail!("give --config or --model"),
    }
}
