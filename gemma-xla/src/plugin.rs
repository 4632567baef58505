//! `gemma-xla plugin install [--force]` and `gemma-xla plugin check`: the CPU PJRT plugin in
//! the gemma-xla cache, (re)installed whatever state the cache is in, or verified in full.
use anyhow::{bail, Result};
use runtime::cpu_cache::{self, CPU_SO_SHA256, CPU_SO_SIZE, REPAIR_COMMAND};
use runtime::discovery;
use runtime::CacheState;

#[derive(clap::Args)]
pub struct PluginCommand {
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// Install the CPU plugin into the cache (pip, pinned by sha256; or from $GEMMA_XLA_PLUGIN_SOURCE)
    Install {
        /// Reinstall even if the cached plugin looks fine
        #[arg(long)]
        force: bool,
    },
    /// Check the cached CPU plugin: its file, size and sha256 (exit 1 if missing or damaged)
    Check,
}

pub fn plugin(cmd: &PluginCommand) -> Result<()> {
    match cmd.action {
        Action::Install { force } => install(force),
        Action::Check => check(),
    }
}

fn install(force: bool) -> Result<()> {
    if !force {
        match discovery::check_cpu_plugin(false) {
            CacheState::Good { path, .. } => {
                println!("the CPU plugin is already installed: {} (use --force to reinstall)", path.display());
                return Ok(());
            }
            CacheState::Damaged { path, reason } => {
                eprintln!("gemma-xla: the cached CPU plugin at {} is damaged ({reason})", path.display())
            }
            CacheState::Absent => {}
        }
    }
    let path = discovery::install_cpu_plugin()?;
    println!("installed the CPU plugin: {}", path.display());
    Ok(())
}

fn check() -> Result<()> {
    let dir = discovery::cpu_install_dir();
    println!("install directory: {}", dir.display());
    let record = match cpu_cache::read_record(&dir) {
        Some(r) => format!("{} (from {})", r.package, r.source),
        None => format!("missing or unreadable ({}/{})", dir.display(), cpu_cache::RECORD),
    };
    match discovery::check_cpu_plugin(true) {
        CacheState::Absent => bail!("the CPU plugin is not installed in the cache; run `gemma-xla plugin install`"),
        CacheState::Damaged { path, reason } => {
            println!("plugin: {}", path.display());
            println!("record: {record}");
            bail!("the cached CPU plugin at {} is damaged ({reason}); run `{REPAIR_COMMAND}`", path.display())
        }
        CacheState::Good { path, size, .. } => {
            println!("plugin: {}", path.display());
            println!("record: {record}");
            println!("size: {size} bytes (expected {CPU_SO_SIZE})");
            println!("sha256: {CPU_SO_SHA256} (ok)");
            println!("ok");
            Ok(())
        }
    }
}
