//! Pinned plugins in the gemma-xla cache (the CPU plugin, and libtpu for compiling TPU
//! programs ahead of time): installing one (pip with `--require-hashes`, or for the CPU plugin
//! a local wheel or .so named by `GEMMA_XLA_PLUGIN_SOURCE`) into a temporary directory renamed
//! into place, the record written next to it (`plugin.json`: file, size, sha256, package,
//! wheel), and the check made before every load, so a damaged cache is reinstalled instead of
//! crashing the process. A `Pinned` says which package, wheel and file; `CPU` and `TPU` are
//! the two we pin.
//!
//! Layout: `CACHE/plugins/lammps-jax-pjrt-cpu-0.11.2/{plugin.json,
//! lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so}` (and `CACHE/plugins/libtpu-0.0.52/{plugin.json,
//! libtpu/libtpu.so}`); temporary siblings `.tmp-*` (an install under way) and `.old-*` (a
//! replaced install being removed) carry the package and the pid of their process.
use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyPI package that ships the pinned CPU plugin.
pub const CPU_PACKAGE: &str = "lammps-jax-pjrt-cpu";
/// The pinned version of [`CPU_PACKAGE`].
pub const CPU_VERSION: &str = "0.11.2";
/// sha256 of lammps_jax_pjrt_cpu-0.11.2-py3-none-manylinux_2_27_x86_64.whl, the wheel we test.
pub const CPU_WHEEL_SHA256: &str = "1319390d948b39f69f7dade496b7c385149d9ca6097a6b62114da113216d9ad1";
/// The plugin inside the wheel (and inside the install directory).
pub const CPU_SO: &str = "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so";
/// Size and sha256 of that file as the pinned wheel installs it.
pub const CPU_SO_SIZE: u64 = 201_600_336;
/// sha256 (hex) of [`CPU_SO`] as the pinned wheel installs it.
pub const CPU_SO_SHA256: &str = "ad1309ac822b1b24d51b7f9947c7c9fa9ef5d67f390584cbc3d1fa2428fed9c2";
/// The record written next to the installed plugin.
pub const RECORD: &str = "plugin.json";
/// A local `lammps_jax_pjrt_cpu-0.11.2-*.whl` or its `pjrt_c_api_cpu_plugin.so` to install
/// from instead of PyPI (machines without network, tests); checked against the pinned sha256.
pub const SOURCE_ENV: &str = "GEMMA_XLA_PLUGIN_SOURCE";
/// The command that (re)installs the CPU plugin whatever state the cache is in.
pub const REPAIR_COMMAND: &str = "gemma-xla plugin install --force";

/// libtpu, the TPU PJRT plugin, pinned for compiling against TPU topologies without a TPU.
pub const TPU_PACKAGE: &str = "libtpu";
/// The pinned version of libtpu.
pub const TPU_VERSION: &str = "0.0.52";
/// sha256 of libtpu-0.0.52-cp311-cp311-manylinux_2_31_x86_64.whl. libtpu's wheels are tagged
/// per Python version but hold the same library; pip is told to fetch exactly this one
/// (`--python-version 3.11 --platform manylinux_2_31_x86_64`) whatever python3 runs it.
pub const TPU_WHEEL_SHA256: &str = "f5e2e596eaea9357fbb5a6755a7a9007c6ab75bfde4a55191b03eff402971140";
/// The plugin inside the libtpu wheel (and inside the install directory).
pub const TPU_SO: &str = "libtpu/libtpu.so";
/// Size in bytes of [`TPU_SO`] as the pinned wheel installs it.
pub const TPU_SO_SIZE: u64 = 467_479_448;
/// sha256 (hex) of [`TPU_SO`] as the pinned wheel installs it.
pub const TPU_SO_SHA256: &str = "f86de4d04a058e6b5101f73e0824b95f27e2cec996d2b9191d9cffda75c03077";

/// A plugin pinned by package, version, wheel and file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pinned {
    /// For messages: `CPU PJRT plugin`.
    pub what: &'static str,
    /// The PyPI package name.
    pub package: &'static str,
    /// The pinned version of `package`.
    pub version: &'static str,
    /// sha256 (hex) of the wheel pip must install (`--require-hashes`).
    pub wheel_sha256: &'static str,
    /// The plugin file inside the wheel (and inside the install directory).
    pub so: &'static str,
    /// Size in bytes of `so` as the pinned wheel installs it.
    pub so_size: u64,
    /// sha256 (hex) of `so` as the pinned wheel installs it.
    pub so_sha256: &'static str,
    /// Extra `pip install` arguments that pick the pinned wheel.
    pub pip_args: &'static [&'static str],
    /// The wheel's size, for the note printed while installing.
    pub download: &'static str,
    /// Where a local file may be named to install from (None: PyPI only).
    pub source_env: Option<&'static str>,
    /// What a user runs to (re)install it, or how else to get it.
    pub repair: &'static str,
}

/// The pinned CPU PJRT plugin (lammps-jax-pjrt-cpu 0.11.2), installed from PyPI or from the
/// local file named by [`SOURCE_ENV`].
pub const CPU: Pinned = Pinned {
    what: "CPU PJRT plugin",
    package: CPU_PACKAGE,
    version: CPU_VERSION,
    wheel_sha256: CPU_WHEEL_SHA256,
    so: CPU_SO,
    so_size: CPU_SO_SIZE,
    so_sha256: CPU_SO_SHA256,
    pip_args: &[],
    download: "about 63 MB",
    source_env: Some(SOURCE_ENV),
    repair: REPAIR_COMMAND,
};

/// The pinned libtpu 0.0.52, installed from PyPI only; used to compile TPU programs ahead of
/// time.
pub const TPU: Pinned = Pinned {
    what: "TPU PJRT plugin (libtpu)",
    package: TPU_PACKAGE,
    version: TPU_VERSION,
    wheel_sha256: TPU_WHEEL_SHA256,
    so: TPU_SO,
    so_size: TPU_SO_SIZE,
    so_sha256: TPU_SO_SHA256,
    pip_args: &["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_31_x86_64"],
    download: "about 137 MB",
    source_env: None,
    repair: "rerun the command (a damaged install is replaced), or point TPU_LIBRARY_PATH at a libtpu.so",
};

/// What is known about a pinned plugin in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheState {
    /// No install directory.
    Absent,
    /// Fit to load: its size and ELF headers are right, and its sha256 was checked
    /// (`hashed`) or the record written at install time vouches for it.
    Good {
        /// The plugin file.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
        /// Whether this check computed its sha256 (false: the record vouched for it).
        hashed: bool,
    },
    /// Must not be loaded; `reason` says why.
    Damaged {
        /// The plugin file (which may be missing).
        path: PathBuf,
        /// Why it must not be loaded.
        reason: String,
    },
}

/// Where the pinned CPU plugin lives once installed into `cache`'s plugin directory.
pub fn plugin_file(install_dir: &Path) -> PathBuf {
    CPU.plugin_file(install_dir)
}

/// `CPU.check(dir, always_hash)`.
pub fn check(dir: &Path, always_hash: bool) -> CacheState {
    CPU.check(dir, always_hash)
}

/// `CPU.install(dest)`.
pub fn install(dest: &Path) -> Result<PathBuf> {
    CPU.install(dest)
}

impl Pinned {
    /// Where the plugin lives in an install directory.
    pub fn plugin_file(&self, install_dir: &Path) -> PathBuf {
        install_dir.join(self.so)
    }

    /// `package==version`.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }

    /// Checks the install in `dir` without loading it. The size and the ELF headers are always
    /// checked; the sha256 when `always_hash`, or when the record is missing, unreadable or does
    /// not describe the pinned file.
    pub fn check(&self, dir: &Path, always_hash: bool) -> CacheState {
        let path = self.plugin_file(dir);
        let damaged = |reason: String| CacheState::Damaged { path: path.clone(), reason };
        if !dir.exists() {
            return CacheState::Absent;
        }
        let size = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return damaged("it is not a file".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return damaged("the plugin file is missing".into()),
            Err(e) => return damaged(format!("cannot read it: {e}")),
        };
        if size != self.so_size {
            return damaged(format!("it is {size} bytes, expected {}", self.so_size));
        }
        if let Err(reason) = xla_sys::elf::check_shared_library(&path) {
            return damaged(reason);
        }
        let record = read_record(dir).filter(|r| r.describes(self));
        let stamp = stamp_of(&path);
        if !always_hash && record.as_ref().is_some_and(|r| r.stamp.is_some() && r.stamp == stamp) {
            return CacheState::Good { path, size, hashed: false };
        }
        match sha256_file(&path) {
            Ok(sum) if sum == self.so_sha256 => {
                // Vouch for these bytes (this mtime and inode) from now on, so later starts
                // need not hash 200 MB again (best effort; without the record we just hash).
                if record.as_ref().is_none_or(|r| r.stamp != stamp) {
                    let record = Record {
                        file: self.so.to_string(),
                        size,
                        sha256: sum,
                        package: self.requirement(),
                        wheel_sha256: record.as_ref().and_then(|r| r.wheel_sha256.clone()),
                        source: record.map_or_else(|| "an earlier install, verified by its sha256".into(), |r| r.source),
                        stamp,
                    };
                    let tmp = dir.join(format!(".plugin.json.tmp-{}", std::process::id()));
                    if std::fs::write(&tmp, record.to_json()).and_then(|()| std::fs::rename(&tmp, dir.join("plugin.json"))).is_err() {
                        let _ = std::fs::remove_file(&tmp);
                    }
                }
                CacheState::Good { path, size, hashed: true }
            }
            Ok(sum) => damaged(format!("its sha256 is {sum}, expected {}", self.so_sha256)),
            Err(e) => damaged(format!("cannot read it: {e}")),
        }
    }
}

/// The record of an install, as written to `plugin.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The plugin file, relative to the install directory.
    pub file: String,
    /// Size in bytes of the plugin file.
    pub size: u64,
    /// sha256 (hex) of the plugin file.
    pub sha256: String,
    /// `lammps-jax-pjrt-cpu==0.11.2`.
    pub package: String,
    /// The wheel's sha256 (pip checked it), or null when a plain .so was copied in.
    pub wheel_sha256: Option<String>,
    /// `pypi`, or the local file it was installed from.
    pub source: String,
    /// The file's modification time (ns) and inode when it was last hashed: while both are
    /// unchanged the record vouches for the bytes; any change means hashing again.
    pub stamp: Option<(u128, u64)>,
}

/// The modification time (ns since the epoch) and inode of `path`.
fn stamp_of(path: &Path) -> Option<(u128, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    let mtime = m.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some((mtime, m.ino()))
}

impl Record {
    fn describes(&self, p: &Pinned) -> bool {
        self.file == p.so && self.size == p.so_size && self.sha256 == p.so_sha256 && self.package == p.requirement()
    }

    fn to_json(&self) -> String {
        let value = serde_json::json!({
            "file": self.file,
            "size": self.size,
            "sha256": self.sha256,
            "package": self.package,
            "wheel_sha256": self.wheel_sha256,
            "source": self.source,
            "mtime_ns": self.stamp.map(|(t, _)| t.to_string()),
            "inode": self.stamp.map(|(_, i)| i),
        });
        // A json! object of strings and numbers always serializes.
        serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
    }

    fn from_json(text: &str) -> Option<Record> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
        Some(Record {
            file: s("file")?,
            size: v.get("size")?.as_u64()?,
            sha256: s("sha256")?,
            package: s("package")?,
            wheel_sha256: s("wheel_sha256"),
            source: s("source").unwrap_or_default(),
            stamp: s("mtime_ns").and_then(|t| t.parse().ok()).zip(v.get("inode").and_then(|i| i.as_u64())),
        })
    }
}

/// The record in `dir`, if it is there and readable.
pub fn read_record(dir: &Path) -> Option<Record> {
    Record::from_json(&std::fs::read_to_string(dir.join(RECORD)).ok()?)
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

impl Pinned {
    /// Installs the pinned plugin into `dest` (replacing whatever is there): pip (or the
    /// local file of `source_env`) installs into a temporary sibling, the record is
    /// written, the result is checked and renamed into place, so `dest` never holds half an
    /// install. Leftovers of killed installs are removed first. Returns the plugin file.
    pub fn install(&self, dest: &Path) -> Result<PathBuf> {
        let source = self.source_env.and_then(std::env::var_os).filter(|s| !s.is_empty()).map(PathBuf::from);
        let fail = |reason: String| Error::Install { what: self.what, reason, hint: self.repair_hint(source.is_some()) };
        let parent = dest.parent().ok_or_else(|| fail(format!("{} has no parent directory", dest.display())))?;
        std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create {}: {e}", parent.display())))?;
        self.remove_leftovers(parent);
        let tmp = self.temporary(parent, "tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| fail(format!("cannot create {}: {e}", tmp.display())))?;
        let target = tmp.join("pkg");
        let result = self
            .fill(&target, &tmp, source.as_deref(), dest)
            .map_err(fail)
            .and_then(|record| {
                let text = record.to_json();
                std::fs::write(target.join(RECORD), text).map_err(|e| fail(format!("cannot write the record: {e}")))
            })
            .and_then(|()| match self.check(&target, false) {
                CacheState::Good { .. } => Ok(()),
                CacheState::Damaged { reason, .. } => Err(fail(format!("the freshly installed plugin is damaged ({reason})"))),
                CacheState::Absent => Err(fail("the install vanished".into())),
            })
            .and_then(|()| self.replace(&target, dest, parent).map_err(fail));
        let _ = std::fs::remove_dir_all(&tmp);
        result.map(|()| self.plugin_file(dest))
    }

    /// What to tell a user whose install failed.
    fn repair_hint(&self, from_source: bool) -> String {
        if *self != CPU {
            return format!("Fix that and {}; or `python3 -m pip install {}` where python3 finds it.", self.repair, self.requirement());
        }
        let mut hint = format!("Fix that, then run `{REPAIR_COMMAND}`.");
        if !from_source {
            hint.push_str(&format!(
                " Without pip or network: on another machine `python3 -m pip download --no-deps {CPU_PACKAGE}=={CPU_VERSION}`, \
             unzip {CPU_SO} from the wheel, and run `{SOURCE_ENV}=/path/to/pjrt_c_api_cpu_plugin.so {REPAIR_COMMAND}`."
            ));
        }
        hint
    }

    /// A fresh temporary sibling name: `.KIND-PACKAGE-PID-NANOS`.
    fn temporary(&self, parent: &Path, kind: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        parent.join(format!(".{kind}-{}-{}-{nanos}", self.package, std::process::id()))
    }

    /// Removes `.tmp-*` / `.old-*` siblings left by installs whose process is gone.
    fn remove_leftovers(&self, parent: &Path) {
        let Ok(entries) = std::fs::read_dir(parent) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(".tmp-").or_else(|| name.strip_prefix(".old-")) else { continue };
            let Some(rest) = rest.strip_prefix(self.package).and_then(|r| r.strip_prefix('-')) else { continue };
            let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = pid.is_some_and(|p| p == std::process::id() || Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    /// Puts the plugin into `target` (inside `tmp`) and says what was installed.
    fn fill(&self, target: &Path, tmp: &Path, source: Option<&Path>, dest: &Path) -> std::result::Result<Record, String> {
        let began = std::time::Instant::now();
        let so = target.join(self.so);
        let pinned_package = || self.requirement();
        let (wheel_sha256, from) = match source {
            Some(src) if src.extension().is_some_and(|e| e == "whl") => {
                let src = std::fs::canonicalize(src).map_err(|e| format!("{SOURCE_ENV}={}: {e}", src.display()))?;
                crate::notes::note(&format!(
                    "gemma-xla: installing the CPU PJRT plugin {} from {} into {}",
                    pinned_package(),
                    src.display(),
                    dest.display()
                ));
                self.pip_install(target, tmp, &format!("{} --hash=sha256:{}\n", src.display(), self.wheel_sha256), true)?;
                (Some(self.wheel_sha256.to_string()), src.display().to_string())
            }
            Some(src) => {
                crate::notes::note(&format!("gemma-xla: installing the CPU PJRT plugin from {} into {}", src.display(), dest.display()));
                let sum = copy_hashed(src, &so, self.so_size).map_err(|e| format!("cannot copy {SOURCE_ENV}={}: {e}", src.display()))?;
                if sum != self.so_sha256 {
                    return Err(format!(
                        "{SOURCE_ENV}={} is not the plugin of {}: its sha256 is {sum}, expected {}",
                        src.display(),
                        pinned_package(),
                        self.so_sha256
                    ));
                }
                (None, src.display().to_string())
            }
            None => {
                crate::notes::note(&format!(
                    "gemma-xla: installing the {} {} ({}) with pip into {}",
                    self.what,
                    pinned_package(),
                    self.download,
                    dest.display()
                ));
                self.pip_install(target, tmp, &format!("{} --hash=sha256:{}\n", pinned_package(), self.wheel_sha256), false)?;
                (Some(self.wheel_sha256.to_string()), "pypi".to_string())
            }
        };
        let size = std::fs::metadata(&so).map_err(|e| format!("{} is missing after the install ({e})", self.so))?.len();
        crate::notes::note(&format!("gemma-xla: installed the {} in {:.1} s", self.what, began.elapsed().as_secs_f64()));
        let sha256 = sha256_file(&so).map_err(|e| format!("cannot read {}: {e}", so.display()))?;
        Ok(Record { file: self.so.to_string(), size, sha256, package: pinned_package(), wheel_sha256, source: from, stamp: stamp_of(&so) })
    }

    /// Runs `pip install --no-deps --require-hashes --target TARGET -r REQUIREMENTS`. pip runs
    /// under a tiny Python wrapper that asks the kernel to kill it if this process dies, so a
    /// killed install leaves no pip behind; on every path here the child is waited for.
    fn pip_install(&self, target: &Path, tmp: &Path, requirement: &str, offline: bool) -> std::result::Result<(), String> {
        let pip_ok = Command::new(python()).args(["-m", "pip", "--version"]).output().is_ok_and(|o| o.status.success());
        if !pip_ok {
            return Err(format!("pip is not available (tried `{} -m pip`)", python()));
        }
        let req = tmp.join("requirements.txt");
        std::fs::write(&req, requirement).map_err(|e| format!("cannot write {}: {e}", req.display()))?;
        // PR_SET_PDEATHSIG (1) = SIGKILL, on Linux; elsewhere pip simply runs.
        let wrapper = "import runpy, signal, sys\n\
                   try:\n    import ctypes\n    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))\n\
                   except Exception:\n    pass\n\
                   sys.argv = ['pip'] + sys.argv[1:]\n\
                   runpy.run_module('pip', run_name='__main__', alter_sys=True)\n";
        let mut cmd = Command::new(python());
        cmd.args(["-c", wrapper, "install", "--quiet", "--no-deps", "--require-hashes", "--target"]).arg(target).arg("-r").arg(&req);
        cmd.args(self.pip_args);
        // No advice on stderr (running as root, a newer pip): through the environment, which
        // a pip too old for these options ignores.
        cmd.env("PIP_ROOT_USER_ACTION", "ignore").env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
        if offline {
            cmd.arg("--no-index");
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot run pip: {e}"))?;
        let status = match child.wait() {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("lost track of pip: {e}"));
            }
        };
        if !status.success() {
            return Err(format!("pip failed ({status})"));
        }
        if !target.join(self.so).is_file() {
            return Err(format!("pip succeeded but {} is missing", self.so));
        }
        Ok(())
    }

    /// Renames the finished install `target` to `dest`, moving an old `dest` aside first.
    fn replace(&self, target: &Path, dest: &Path, parent: &Path) -> std::result::Result<(), String> {
        let old = self.temporary(parent, "old");
        let moved_old = dest.exists() && std::fs::rename(dest, &old).is_ok();
        let result = match std::fs::rename(target, dest) {
            Ok(()) => Ok(()),
            // Another process finished first: its complete install is as good as ours.
            Err(_) if matches!(self.check(dest, false), CacheState::Good { .. }) => Ok(()),
            Err(e) => Err(format!("cannot move the install into {}: {e}", dest.display())),
        };
        if moved_old {
            let _ = std::fs::remove_dir_all(&old);
        }
        result
    }
}

/// Copies `src` to `dst` (creating its directory), returning the sha256 of what was copied;
/// a source longer than `limit` bytes (`/dev/zero`, a wrong file) is refused at `limit + 1`.
fn copy_hashed(src: &Path, dst: &Path, limit: u64) -> std::io::Result<String> {
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut input = File::open(src)?.take(limit.saturating_add(1));
    let mut output = File::create(dst)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        match input.read(&mut buf)? {
            0 => break,
            n => {
                copied += n as u64;
                if copied > limit {
                    return Err(std::io::Error::other(format!("it is larger than the pinned plugin's {limit} bytes")));
                }
                hasher.update(&buf[..n]);
                output.write_all(&buf[..n])?;
            }
        }
    }
    output.sync_all()?;
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_only_the_pinned_one_vouches() {
        let r = Record {
            file: CPU_SO.into(),
            size: CPU_SO_SIZE,
            sha256: CPU_SO_SHA256.into(),
            package: CPU.requirement(),
            wheel_sha256: None,
            source: "/x/pjrt_c_api_cpu_plugin.so".into(),
            stamp: Some((1_764_900_000_123_456_789, 4242)),
        };
        assert_eq!(Record::from_json(&r.to_json()), Some(r.clone()));
        let unstamped = Record { stamp: None, ..r.clone() };
        assert_eq!(Record::from_json(&unstamped.to_json()), Some(unstamped));
        assert!(r.describes(&CPU));
        assert!(!r.describes(&TPU));
        assert!(!Record { size: 5, ..r.clone() }.describes(&CPU));
        assert_eq!(Record::from_json("{\"file\": 3}"), None);
        assert_eq!(Record::from_json("garbage"), None);
    }

    #[test]
    fn states_of_a_cache_directory() {
        let dir = std::env::temp_dir().join(format!("runtime-cpu-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(check(&dir, false), CacheState::Absent);
        std::fs::create_dir_all(dir.join("lammps_jax_pjrt_cpu")).unwrap();
        let so = plugin_file(&dir);
        assert_eq!(check(&dir, false), CacheState::Damaged { path: so.clone(), reason: "the plugin file is missing".into() });
        std::fs::write(&so, "garbage").unwrap();
        assert_eq!(check(&dir, false), CacheState::Damaged { path: so.clone(), reason: format!("it is 7 bytes, expected {CPU_SO_SIZE}") });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn leftovers_of_dead_processes_are_removed() {
        let dir = std::env::temp_dir().join(format!("runtime-cpu-leftovers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let dead = dir.join(format!(".tmp-{CPU_PACKAGE}-4294967295-1"));
        let ours = dir.join(format!(".old-{CPU_PACKAGE}-{}-1", std::process::id()));
        let other = dir.join(".tmp-something-else-4294967295-1");
        for d in [&dead, &ours, &other] {
            std::fs::create_dir_all(d.join("pkg")).unwrap();
        }
        CPU.remove_leftovers(&dir);
        assert!(!dead.exists());
        assert!(ours.exists() && other.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
