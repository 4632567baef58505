//! The gemma-xla command line: flags into the model runtime's types (`train`, `decode`,
//! `eval`, `inspect`), progress and printing, exit codes and the Ctrl-C handler; nothing else.
#![forbid(unsafe_code)]
// The flags' doc comments are clap's --help text, where `<name>` means a placeholder, not HTML.
#![allow(rustdoc::invalid_html_tags)]

mod args;
mod compile;
mod dump;
mod eval_cmd;
mod forward;
mod generate_cmd;
mod launch;
mod plan;
mod plugin;
mod progress;
mod report;
mod run;
mod tokenize;
mod train;

use anyhow::Result;
use args::PluginArgs;
use clap::{Parser, Subcommand};
use runtime::NamedValue;
use std::process::ExitCode;

/// `--version`: the version, the commit the binary was built from, and the pinned plugins.
const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit: ",
    env!("GEMMA_XLA_GIT_COMMIT"),
    "\nCPU plugin: lammps-jax-pjrt-cpu ",
    "0.11.2",
    "\nTPU plugin: libtpu ",
    "0.0.52",
    "\nPJRT C API bindings: 0.114"
);

#[derive(Parser)]
#[command(name = "gemma-xla", version, long_version = LONG_VERSION, about = "Gemma on XLA from Rust: compile and run StableHLO through PJRT plugins")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the plugin, its PJRT C API and StableHLO versions, and its devices.
    Devices {
        #[command(flatten)]
        plugin: PluginArgs,
    },
    /// Run a StableHLO (.mlir, .mlirbc) or HloModuleProto (.pb) program on .npy arguments.
    Run(run::RunArgs),
    /// Logits, loss and (--grads) gradients of an HF Gemma checkpoint on a token file.
    Forward(forward::ForwardArgs),
    /// Continue prompts (text or token ids) or chat with an HF Gemma checkpoint, with a KV cache on the devices.
    Generate(Box<generate_cmd::GenerateArgs>),
    /// Score a checkpoint on benchmark items (multiple choice by log-likelihood, generation by exact match) as lm-eval-harness does.
    Eval(Box<eval_cmd::EvalArgs>),
    /// Train Gemma with AdamW (one compiled, sharded step); with no flags, the tiny model on the built-in corpus.
    Train(Box<train::TrainArgs>),
    /// Run `train` on every worker of a Cloud TPU VM slice (one process per host) through gcloud: `launch --tpu NAME --zone ZONE -- train ...`.
    Launch(Box<launch::LaunchArgs>),
    /// Tokenize a corpus (text, jsonl, jsonl.gz/zst, parquet) once into memory-mapped .npy shards that `train --data DIR` streams.
    Tokenize(Box<tokenize::TokenizeArgs>),
    /// Per-tensor shardings and bytes per device of a Gemma config on a mesh, before compiling.
    Plan(plan::PlanArgs),
    /// Compile a Gemma program without running it and write each compiler stage (StableHLO, XLA's HLO) and a summary.
    Dump(Box<dump::DumpArgs>),
    /// Compile a Gemma program for a TPU slice (e.g. --topology v5e:2x4) without a TPU: memory per chip, collectives, FLOPs, step time.
    Compile(Box<compile::CompileArgs>),
    /// Install (`install [--force]`) or verify (`check`) the CPU PJRT plugin in the gemma-xla cache.
    Plugin(plugin::PluginCommand),
}

fn main() -> ExitCode {
    // glibc's huge-page tunable for XLA's host memory (runtime::host_malloc); re-executes
    // once, before anything else runs.
    runtime::host_malloc::reexec_with_huge_pages();
    // The plugins log INFO lines through absl; keep warnings and errors unless the user
    // chose a level. Set before any thread exists or any plugin is loaded.
    if std::env::var_os("TF_CPP_MIN_LOG_LEVEL").is_none() {
        std::env::set_var("TF_CPP_MIN_LOG_LEVEL", "1");
    }
    // The runtime's notes (a plugin being installed, ...) go to stderr.
    runtime::notes::set_handler(|text| eprintln!("{text}"));
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Devices { plugin } => devices(&plugin),
        Command::Run(args) => run::run(&args),
        Command::Forward(args) => forward::forward(&args),
        Command::Train(args) => train::train(&args),
        Command::Launch(args) => launch::launch(&args),
        Command::Generate(args) => generate_cmd::generate_cmd(&args),
        Command::Eval(args) => eval_cmd::eval_cmd(&args),
        Command::Tokenize(args) => tokenize::tokenize(&args),
        Command::Plan(args) => plan::plan(&args),
        Command::Dump(args) => dump::dump(&args),
        Command::Compile(args) => compile::compile(&args),
        Command::Plugin(args) => plugin::plugin(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn devices(args: &PluginArgs) -> Result<()> {
    let client = args.open(None)?;
    let info = client.plugin();
    let attr = |name: &str| info.attribute(name).map(NamedValue::to_string).unwrap_or_else(|| "unknown".into());
    println!("plugin: {}", info.path.display());
    println!("platform: {} ({})", client.platform_name()?, client.platform_version()?);
    println!("pjrt_c_api: {}.{} (gemma-xla bindings: 0.{})", info.api_version.0, info.api_version.1, runtime::BINDINGS_MINOR);
    println!("xla_version: {}", attr("xla_version"));
    println!("stablehlo: {} to {} (minimum to current)", attr("stablehlo_minimum_version"), attr("stablehlo_current_version"));
    println!("host malloc: {}", runtime::host_malloc::describe());
    match &info.ffi_targets {
        Ok(t) => println!("ffi targets: {} ({})", t.len(), t.join(" ")),
        Err(why) => println!("ffi targets: none ({why})"),
    }
    let devices = client.devices()?;
    println!("devices: {}", devices.len());
    for d in &devices {
        println!(
            "  device {}: kind={} process={} local_hardware_id={} {}",
            d.id()?,
            d.kind()?,
            d.process_index()?,
            d.local_hardware_id()?,
            d.debug_string()?
        );
    }
    Ok(())
}

#[cfg(test)]
mod version_tests {
    #[test]
    fn the_long_version_names_the_pinned_plugins() {
        // concat! takes literals only: check them against the pins the runtime installs.
        assert!(super::LONG_VERSION.contains(&format!("lammps-jax-pjrt-cpu {}\n", runtime::cpu_cache::CPU_VERSION)));
        assert!(super::LONG_VERSION.contains(&format!("libtpu {}\n", runtime::cpu_cache::TPU_VERSION)));
        assert!(super::LONG_VERSION.ends_with(&format!("bindings: 0.{}", runtime::BINDINGS_MINOR)));
    }
}
