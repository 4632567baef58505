//! A persistent compilation cache: executables serialized by the plugin
//! (PJRT_Executable_Serialize), one file per program, keyed by the SHA-256 of everything the
//! compiled code depends on: the program's bytes and format, the serialized compile options,
//! the plugin (path, size, modification time, PJRT API and platform versions, XLA version)
//! and the number of devices the client has.
//!
//! An entry is `<key>.xlaexe`: the magic `gemma-xla exe 1\n`, the key (64 hex digits), the
//! payload's length (u64 little-endian) and SHA-256, then the payload. A file that is short,
//! damaged, made for another key, or that the plugin refuses to load is counted as rejected,
//! ignored and rewritten after compiling. Entries are written atomically (temporary file in
//! the same directory, fsync, rename), so concurrent processes at worst compile twice.
use crate::client::PluginInfo;
use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8] = b"gemma-xla exe 1\n";
/// Bump when anything about the key or the entry format changes.
const KEY_VERSION: &str = "gemma-xla compile cache v3";
/// Entries larger than this are not read (no compiled program of ours comes close).
const MAX_ENTRY: u64 = 8 << 30;

/// What the cache did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Executables loaded from the cache instead of compiled.
    pub hits: usize,
    /// Programs compiled because the cache had no usable entry.
    pub misses: usize,
    /// Entries written.
    pub stores: usize,
    /// Entries found but not used (damaged, foreign, or refused by the plugin).
    pub rejected: usize,
}

/// A directory of serialized executables.
#[derive(Debug)]
pub struct CompileCache {
    dir: PathBuf,
    stats: Cell<CacheStats>,
}

/// The key of one compilation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey(String);

impl CompileCache {
    /// A cache in `dir` (created when the first entry is written).
    pub fn new(dir: impl Into<PathBuf>) -> CompileCache {
        CompileCache { dir: dir.into(), stats: Cell::new(CacheStats::default()) }
    }

    /// `<per-user cache>/compile` (see `discovery::cache_dir`).
    pub fn default_dir() -> PathBuf {
        crate::discovery::cache_dir().join("compile")
    }

    /// The directory the entries are read from and written to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hits, misses, stores and rejected entries counted by this value so far.
    pub fn stats(&self) -> CacheStats {
        self.stats.get()
    }

    fn bump(&self, f: impl FnOnce(&mut CacheStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    pub(crate) fn count_hit(&self) {
        self.bump(|s| s.hits += 1);
    }

    pub(crate) fn count_miss(&self) {
        self.bump(|s| s.misses += 1);
    }

    pub(crate) fn count_rejected(&self) {
        self.bump(|s| s.rejected += 1);
    }

    /// The environment the compiler reads flags from (`XLA_FLAGS`; libtpu also reads
    /// `LIBTPU_INIT_ARGS`): part of the key, since the same program and options compile
    /// differently under other flags.
    pub fn compiler_env() -> String {
        ["XLA_FLAGS", "LIBTPU_INIT_ARGS"].iter().map(|v| format!("{v}={}\n", std::env::var(v).unwrap_or_default())).collect()
    }

    /// The key of compiling `code` (in `format`) with `options` for this plugin and the devices
    /// (their ids) it will run on.
    /// It is the SHA-256 of those, of the plugin file's path, size and modification time, its
    /// PJRT API, platform and XLA versions, and `compiler_env` (see [`CompileCache::compiler_env`]).
    pub fn key(
        plugin: &PluginInfo,
        platform_version: &str,
        devices: &[i64],
        format: &str,
        code: &[u8],
        options: &[u8],
        compiler_env: &str,
    ) -> CacheKey {
        let mut h = Sha256::new();
        let mut field = |name: &str, bytes: &[u8]| {
            h.update(name.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field("version", KEY_VERSION.as_bytes());
        field("plugin", plugin.path.to_string_lossy().as_bytes());
        if let Ok(meta) = std::fs::metadata(&plugin.path) {
            field("plugin size", &meta.len().to_le_bytes());
            let mtime = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
            field("plugin mtime", &mtime.to_le_bytes());
        }
        field("api", format!("{}.{}", plugin.api_version.0, plugin.api_version.1).as_bytes());
        field("platform", platform_version.as_bytes());
        let xla = plugin.attribute("xla_version").map(|v| v.to_string()).unwrap_or_default();
        field("xla", xla.as_bytes());
        // The ids of the devices it runs on: an executable is bound to them (processes of a
        // multi-host run have different ones and share no executable).
        let ids: Vec<u8> = devices.iter().flat_map(|d| d.to_le_bytes()).collect();
        field("devices", &ids);
        field("format", format.as_bytes());
        field("code", code);
        field("options", options);
        field("compiler env", compiler_env.as_bytes());
        CacheKey(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.xlaexe", key.0))
    }

    /// The payload stored for `key`, if a sound entry exists (else None; a present but
    /// unsound entry counts as rejected).
    pub(crate) fn load(&self, key: &CacheKey) -> Option<Vec<u8>> {
        let path = self.path(key);
        let len = std::fs::metadata(&path).ok()?.len();
        if len > MAX_ENTRY {
            self.count_rejected();
            return None;
        }
        let bytes = std::fs::read(&path).ok()?;
        match parse(&bytes, key) {
            Some(payload) => Some(payload.to_vec()),
            None => {
                self.count_rejected();
                None
            }
        }
    }

    /// Writes the entry for `key`; failures are noted (`notes`) and otherwise ignored
    /// (the cache only saves time).
    pub(crate) fn store(&self, key: &CacheKey, payload: &[u8]) {
        match self.write(key, payload) {
            Ok(()) => self.bump(|s| s.stores += 1),
            Err(e) => crate::notes::note(&format!("note: the compilation cache in {} was not written: {e}", self.dir.display())),
        }
    }

    fn write(&self, key: &CacheKey, payload: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(key);
        let tmp = self.dir.join(format!(".{}.tmp-{}", key.0, std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(key.0.as_bytes())?;
            f.write_all(&(payload.len() as u64).to_le_bytes())?;
            f.write_all(&Sha256::digest(payload))?;
            f.write_all(payload)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// The payload of a sound entry for `key`.
fn parse<'a>(bytes: &'a [u8], key: &CacheKey) -> Option<&'a [u8]> {
    let rest = bytes.strip_prefix(MAGIC)?;
    let (stored_key, rest) = rest.split_at_checked(64)?;
    if stored_key != key.0.as_bytes() {
        return None;
    }
    let (len, rest) = rest.split_at_checked(8)?;
    let len = u64::from_le_bytes(len.try_into().ok()?);
    let (digest, payload) = rest.split_at_checked(32)?;
    if payload.len() as u64 != len || Sha256::digest(payload).as_slice() != digest {
        return None;
    }
    Some(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> CacheKey {
        CacheKey(format!("{:0>64}", s))
    }

    #[test]
    fn the_key_covers_the_compilers_flags() {
        let plugin = PluginInfo {
            path: "/nonexistent/plugin.so".into(),
            api_version: (0, 115),
            attributes: vec![],
            ffi_targets: Err("none".into()),
        };
        let k = |env: &str, options: &[u8]| CompileCache::key(&plugin, "cpu 1", &[0, 1, 2, 3], "mlir", b"module {}", options, env);
        let base = k("XLA_FLAGS=\nLIBTPU_INIT_ARGS=\n", b"o");
        assert_eq!(base, k("XLA_FLAGS=\nLIBTPU_INIT_ARGS=\n", b"o"));
        assert_ne!(base, k("XLA_FLAGS=--xla_cpu_enable_fast_math=true\nLIBTPU_INIT_ARGS=\n", b"o"));
        assert_ne!(base, k("XLA_FLAGS=\nLIBTPU_INIT_ARGS=--xla_tpu_enable_latency_hiding_scheduler=false\n", b"o"));
        assert_ne!(base, k("XLA_FLAGS=\nLIBTPU_INIT_ARGS=\n", b"p"));
        assert!(CompileCache::compiler_env().starts_with("XLA_FLAGS="));
    }

    #[test]
    fn entries_round_trip_and_damage_is_rejected() {
        let dir = std::env::temp_dir().join(format!("gemma-xla-cc-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = CompileCache::new(&dir);
        let k = key("ab");
        assert_eq!(cache.load(&k), None);
        cache.store(&k, b"executable bytes");
        assert_eq!(cache.load(&k).as_deref(), Some(&b"executable bytes"[..]));
        // A flipped payload byte, a truncated file, another key's entry under this name.
        let path = cache.path(&k);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(cache.load(&k), None);
        std::fs::write(&path, &bytes[..20]).unwrap();
        assert_eq!(cache.load(&k), None);
        cache.store(&key("cd"), b"other");
        std::fs::copy(cache.path(&key("cd")), &path).unwrap();
        assert_eq!(cache.load(&k), None);
        assert_eq!(cache.stats(), CacheStats { hits: 0, misses: 0, stores: 2, rejected: 3 });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
