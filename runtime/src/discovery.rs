//! Finding a PJRT plugin the way a user expects: `cpu`, `cuda`, `tpu` or a path, from a flag
//! or `GEMMA_XLA_PLUGIN`. The CPU plugin is taken from an installed
//! lammps-jax-pjrt-cpu==0.11.2 or installed on first use with pip (pinned by sha256) into
//! a per-user cache, via a temporary directory renamed into place.
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming the plugin when no flag is given.
pub const PLUGIN_ENV: &str = "GEMMA_XLA_PLUGIN";
/// Overrides the cache directory (default `$XDG_CACHE_HOME/gemma-xla` or `~/.cache/gemma-xla`).
pub const CACHE_ENV: &str = "GEMMA_XLA_CACHE";

pub const CPU_PACKAGE: &str = "lammps-jax-pjrt-cpu";
pub const CPU_VERSION: &str = "0.11.2";
/// sha256 of lammps_jax_pjrt_cpu-0.11.2-py3-none-manylinux_2_27_x86_64.whl, the wheel we test.
pub const CPU_WHEEL_SHA256: &str = "1319390d948b39f69f7dade496b7c385149d9ca6097a6b62114da113216d9ad1";
const CPU_SO: &str = "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so";

/// Which plugin the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginSpec {
    Cpu,
    Cuda,
    Tpu,
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

    pub fn is_cpu(&self) -> bool {
        matches!(self, PluginSpec::Cpu)
    }

    /// The plugin file to load, installing the CPU plugin if needed.
    pub fn resolve(&self) -> Result<PathBuf> {
        match self {
            PluginSpec::Path(p) if p.is_file() => Ok(p.clone()),
            PluginSpec::Path(p) => Err(Error::PluginMissing(p.clone())),
            PluginSpec::Cpu => find_or_install_cpu(),
            PluginSpec::Cuda => find_in_python(
                "CUDA",
                &["jax_plugins/xla_cuda13/xla_cuda_plugin.so", "jax_plugins/xla_cuda12/xla_cuda_plugin.so"],
                "pip install jax-cuda12-pjrt (or jax-cuda13-pjrt)",
            ),
            PluginSpec::Tpu => {
                if let Ok(p) = std::env::var("TPU_LIBRARY_PATH") {
                    if Path::new(&p).is_file() {
                        return Ok(PathBuf::from(p));
                    }
                }
                find_in_python("TPU", &["libtpu/libtpu.so"], "pip install libtpu")
            }
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

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

fn find_or_install_cpu() -> Result<PathBuf> {
    // One install at a time in this process; other processes are handled by the rename.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let cached = cpu_install_dir().join(CPU_SO);
    if cached.is_file() {
        return Ok(cached);
    }
    if let Some(p) = installed_cpu_plugin() {
        return Ok(p);
    }
    install_cpu_plugin(&cpu_install_dir())?;
    Ok(cached)
}

/// The plugin of an installed lammps-jax-pjrt-cpu, if python3 finds exactly our version.
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
    (out.status.success() && version == CPU_VERSION && path.is_file()).then_some(path)
}

/// The command a user can run by hand to put the plugin where we look for it.
pub fn manual_install_command(dest: &Path) -> String {
    format!("python3 -m pip install --no-deps --target {} {CPU_PACKAGE}=={CPU_VERSION}", dest.display())
}

/// pip-installs the pinned wheel into a temporary sibling of `dest`, then renames it into
/// place, so a half-finished install is never found at `dest`.
pub fn install_cpu_plugin(dest: &Path) -> Result<()> {
    let manual = manual_install_command(dest);
    let fail = |reason: String| Error::Install { reason, command: manual.clone() };
    let parent = dest.parent().expect("internal: install dir has a parent");
    std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
    let pip_ok = Command::new(python()).args(["-m", "pip", "--version"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !pip_ok {
        return Err(fail(format!("pip is not available (tried `{} -m pip`)", python())));
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let tmp = parent.join(format!(".tmp-{CPU_PACKAGE}-{}-{nanos}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| fail(format!("cannot create {}: {e}", tmp.display())))?;
    let req = tmp.join("requirements.txt");
    std::fs::write(&req, format!("{CPU_PACKAGE}=={CPU_VERSION} --hash=sha256:{CPU_WHEEL_SHA256}\n"))
        .map_err(|e| fail(format!("cannot write {}: {e}", req.display())))?;
    eprintln!(
        "gemma-xla: installing the CPU PJRT plugin {CPU_PACKAGE}=={CPU_VERSION} (about 63 MB) \
         with pip into {}",
        dest.display()
    );
    let target = tmp.join("pkg");
    let status = Command::new(python())
        .args(["-m", "pip", "install", "--quiet", "--no-deps", "--require-hashes", "--target"])
        .arg(&target)
        .arg("-r")
        .arg(&req)
        .status();
    let result = match status {
        Ok(s) if s.success() && target.join(CPU_SO).is_file() => {
            match std::fs::rename(&target, dest) {
                Ok(()) => Ok(()),
                // Another process finished first: its complete install is as good as ours.
                Err(_) if dest.join(CPU_SO).is_file() => Ok(()),
                Err(e) => Err(fail(format!("cannot move the install into {}: {e}", dest.display()))),
            }
        }
        Ok(s) if s.success() => Err(fail(format!("pip succeeded but {CPU_SO} is missing"))),
        Ok(s) => Err(fail(format!("pip failed ({s})"))),
        Err(e) => Err(fail(format!("cannot run pip: {e}"))),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    result
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
