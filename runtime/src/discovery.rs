//! Finding a PJRT plugin the way a user expects: `cpu`, `cuda`, `tpu` or a path, from a flag
//! or `GEMMA_XLA_PLUGIN`. The CPU plugin is taken from the per-user cache (checked before it
//! is loaded, reinstalled when damaged; see `cpu_cache`), else from an installed
//! lammps-jax-pjrt-cpu==0.11.2, else installed on first use with pip (pinned by sha256) into
//! the cache, via a temporary directory renamed into place. libtpu is `TPU_LIBRARY_PATH`, else
//! an installed `libtpu` Python package, else the pinned libtpu==0.0.52 in the cache (installed
//! with pip on first use, the same way).
use crate::cpu_cache::{self, CacheState};
pub use crate::cpu_cache::{CPU_PACKAGE, CPU_SO, CPU_VERSION, CPU_WHEEL_SHA256, REPAIR_COMMAND, SOURCE_ENV};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::process::Command;

/// Environment variable naming the plugin when no flag is given.
pub const PLUGIN_ENV: &str = "GEMMA_XLA_PLUGIN";
/// Overrides the cache directory (default `$XDG_CACHE_HOME/gemma-xla` or `~/.cache/gemma-xla`).
pub const CACHE_ENV: &str = "GEMMA_XLA_CACHE";

/// Which plugin the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSpec {
    /// The pinned CPU plugin (`cpu`): from the cache, else an installed package, else installed
    /// on first use.
    Cpu,
    /// The CUDA plugin (`cuda` or `gpu`) of an installed `jax-cuda12-pjrt` or `jax-cuda13-pjrt`.
    Cuda,
    /// libtpu (`tpu`): `TPU_LIBRARY_PATH`, else an installed libtpu package, else the pinned one
    /// in the cache.
    Tpu,
    /// A plugin file given by path.
    Path(PathBuf),
}

impl PluginSpec {
    /// Parses `cpu|cuda|tpu|PATH`; anything containing '/' or ending in `.so` is a path.
    pub fn parse(s: &str) -> Result<PluginSpec> {
        match s {
            "cpu" => Ok(PluginSpec::Cpu),
            "cuda" | "gpu" => Ok(PluginSpec::Cuda),
            "tpu" => Ok(PluginSpec::Tpu),
            p if p.contains('/') || p.ends_with(".so") => Ok(PluginSpec::Path(PathBuf::from(p))),
            other => Err(Error::BadPluginSpec(other.to_string())),
        }
    }

    /// The flag's value if given, else `GEMMA_XLA_PLUGIN`, else `cpu`.
    pub fn from_flag_or_env(flag: Option<&str>) -> Result<PluginSpec> {
        match flag {
            Some(f) => PluginSpec::parse(f),
            None => match std::env::var(PLUGIN_ENV) {
                Ok(v) if !v.is_empty() => PluginSpec::parse(&v),
                _ => Ok(PluginSpec::Cpu),
            },
        }
    }

    /// Whether this is [`PluginSpec::Cpu`] (a path to a CPU plugin is not).
    pub fn is_cpu(&self) -> bool {
        matches!(self, PluginSpec::Cpu)
    }

    /// The plugin file to load, installing the CPU plugin if needed.
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            PluginSpec::Path(p) if p.is_file() => Ok(p.clone()),
            PluginSpec::Path(p) if p.is_dir() => Err(Error::PluginIsDirectory(p.clone())),
            PluginSpec::Path(p) => Err(Error::PluginMissing(p.clone())),
            PluginSpec::Cpu => find_or_install_cpu(),
            PluginSpec::Cuda => find_in_python(
                "CUDA",
                &["jax_plugins/xla_cuda13/xla_cuda_plugin.so", "jax_plugins/xla_cuda12/xla_cuda_plugin.so"],
                "pip install jax-cuda12-pjrt (or jax-cuda13-pjrt)",
            ),
            PluginSpec::Tpu => find_or_install_tpu(),
        }
    }
}

/// The per-user cache directory of gemma-xla.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("gemma-xla");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("gemma-xla")
}

/// Where the pinned CPU plugin lives once installed into the cache.
pub fn cpu_install_dir() -> PathBuf {
    cache_dir().join("plugins").join(format!("{CPU_PACKAGE}-{CPU_VERSION}"))
}

use cpu_cache::python;

/// Names the libtpu.so to load, as JAX reads it.
pub const TPU_LIBRARY_ENV: &str = "TPU_LIBRARY_PATH";

/// Where the pinned libtpu lives once installed into the cache.
pub fn tpu_install_dir() -> PathBuf {
    cache_dir().join("plugins").join(format!("{}-{}", cpu_cache::TPU.package, cpu_cache::TPU.version))
}

/// `TPU_LIBRARY_PATH`, else `libtpu/libtpu.so` of an installed libtpu package, else the
/// pinned libtpu in the cache (installed on first use with pip, a note on stderr).
fn find_or_install_tpu() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(TPU_LIBRARY_ENV).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return match p.is_file() {
            true => Ok(p),
            false => Err(Error::Argument(format!("{TPU_LIBRARY_ENV}={} is not a file; unset it or point it at a libtpu.so", p.display()))),
        };
    }
    if let Ok(p) = find_in_python("TPU", &[cpu_cache::TPU_SO], "") {
        return Ok(p);
    }
    let _guard = install_lock();
    let dir = tpu_install_dir();
    match cpu_cache::TPU.check(&dir, false) {
        CacheState::Good { path, .. } => return Ok(path),
        CacheState::Absent => {}
        CacheState::Damaged { path, reason } => {
            crate::notes::note(&format!("gemma-xla: the cached libtpu at {} is damaged ({reason}); reinstalling", path.display()));
        }
    }
    cpu_cache::TPU.install(&dir)
}

/// One install at a time in this process; other processes are handled by the rename.
fn install_lock() -> std::sync::MutexGuard<'static, ()> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    INSTALL.lock().unwrap_or_else(|p| p.into_inner())
}

fn find_or_install_cpu() -> Result<PathBuf> {
    let _guard = install_lock();
    let dir = cpu_install_dir();
    match cpu_cache::check(&dir, false) {
        CacheState::Good { path, .. } => return Ok(path),
        CacheState::Absent => {
            if let Some(p) = installed_cpu_plugin() {
                return Ok(p);
            }
        }
        CacheState::Damaged { path, reason } => {
            crate::notes::note(&format!("gemma-xla: the cached CPU plugin at {} is damaged ({reason}); reinstalling", path.display()));
        }
    }
    cpu_cache::install(&dir)
}

/// The plugin of an installed lammps-jax-pjrt-cpu, if python3 finds exactly our version and
/// its file has the pinned size and sound ELF headers.
fn installed_cpu_plugin() -> Option<PathBuf> {
    let script = format!(
        "import importlib.metadata as m\n\
         d = m.distribution('{CPU_PACKAGE}')\n\
         print(d.version)\n\
         print(d.locate_file('{CPU_SO}'))"
    );
    let out = Command::new(python()).args(["-c", &script]).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    let (version, path) = (lines.next()?, PathBuf::from(lines.next()?));
    let sound =
        || std::fs::metadata(&path).is_ok_and(|m| m.len() == cpu_cache::CPU_SO_SIZE) && xla_sys::elf::check_shared_library(&path).is_ok();
    (out.status.success() && version == CPU_VERSION && sound()).then_some(path)
}

/// Installs (or reinstalls) the pinned CPU plugin into the cache, whatever state it is in;
/// returns the plugin file.
pub fn install_cpu_plugin() -> Result<PathBuf> {
    let _guard = install_lock();
    cpu_cache::install(&cpu_install_dir())
}

/// The state of the CPU plugin in the cache; `always_hash` verifies its sha256 even when the
/// record vouches for it.
pub fn check_cpu_plugin(always_hash: bool) -> CacheState {
    cpu_cache::check(&cpu_install_dir(), always_hash)
}

/// Looks for `relative` under every entry of python3's sys.path.
fn find_in_python(what: &'static str, relative: &[&str], install: &str) -> Result<PathBuf> {
    let out = Command::new(python()).args(["-c", "import sys\nfor p in sys.path: print(p)"]).output();
    let dirs: Vec<PathBuf> = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).lines().filter(|l| !l.is_empty()).map(PathBuf::from).collect(),
        _ => Vec::new(),
    };
    for dir in &dirs {
        for rel in relative {
            let p = dir.join(rel);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let looked = if dirs.is_empty() {
        format!("python3's sys.path (python3 could not be run) for {}", relative.join(", "))
    } else {
        format!("{} under {}", relative.join(" or "), dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":"))
    };
    Err(Error::PluginNotFound { what, looked, hint: format!("Install it with `{install}`, or pass --plugin PATH.") })
}
